"""Zoo members are tasks: growing a zoo trains only new members, and every way of running the tasks
(the sequential loop, local worker processes, a Dask cluster, one with a worker killed mid-run) gives
the same bits."""

import os
import signal
import time

import pytest
import torch

from bnlib import config, data, engine, zoo


def _cfg(**overrides):
    return config.load("smoke", device="cpu", **overrides)


def _members_equal(first: zoo.Zoo, second: zoo.Zoo, members) -> None:
    for t in members:
        a, b = first.members.load(zoo.member_name(t)), second.members.load(zoo.member_name(t))
        assert a.keys() == b.keys()
        for name in ("keep", "logits", "test_logits", "checkpoint_epochs", "fit_correct", "tracked_index",
                     "tracked_logits", "pool_checkpoints", "pool_logits"):
            assert torch.equal(a[name], b[name]), (t, name)
        for name, tensor in a["state_dict"].items():
            assert torch.equal(tensor, b["state_dict"][name]), (t, name)


@pytest.fixture(scope="module")
def sequential_zoos(tmp_path_factory):
    """The reference: smoke zoos of 6 members trained by today's loop (``workers=1``) in a cache of their own."""
    folder = tmp_path_factory.mktemp("sequential")
    before = os.environ["BNLIB_CACHE"]
    os.environ["BNLIB_CACHE"] = str(folder)
    try:
        return {norm: zoo.train_zoo(_cfg(n_models=6, workers=1), norm, progress=False) for norm in ("batch", "none")}
    finally:
        os.environ["BNLIB_CACHE"] = before


def test_keep_mask_extends_row_by_row_in_complementary_pairs():
    small, large = data.balanced_keep_mask(4, 301, seed=3), data.balanced_keep_mask(10, 301, seed=3)
    assert torch.equal(large[:4], small)  # a grown zoo keeps its members' training sets
    assert torch.equal(large[1::2], ~large[0::2])  # member 2k+1 trains on what member 2k leaves out
    for even in (2, 4, 6, 8, 10):
        assert (large[:even].sum(0) == even // 2).all()
    assert (large[0::2].sum(1) == 301 // 2).all()
    assert not torch.equal(large[0], large[2])  # pairs are drawn independently
    with pytest.raises(ValueError, match="'n_examples'"):
        data.balanced_keep_mask(4, 1, seed=0)


def test_growing_a_zoo_trains_only_the_new_members(monkeypatch, tmp_path, sequential_zoos):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    small = zoo.train_zoo(_cfg(n_models=2), "batch", progress=False)
    stamps = {t: os.stat(small.members.path(zoo.member_name(t))).st_mtime_ns for t in range(2)}
    grown = zoo.train_zoo(_cfg(n_models=6), "batch", progress=False)
    assert grown.members.folder == small.members.folder  # n_models is not part of the members' key
    assert grown.entry.folder != small.entry.folder  # but it is of whole-zoo results (e.g. mia.query_zoo's)
    assert {t: os.stat(grown.members.path(zoo.member_name(t))).st_mtime_ns for t in range(2)} == stamps
    assert torch.equal(grown.logits[:2], small.logits) and torch.equal(grown.keep[:2], small.keep)
    assert (grown.keep.sum(0) == 3).all()
    _members_equal(grown, sequential_zoos["batch"], range(6))  # same bits as a zoo trained at once


def test_local_worker_processes_give_the_sequential_bits(monkeypatch, tmp_path, sequential_zoos):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    cfg = _cfg(n_models=6, workers=2)
    assert zoo.local_workers(cfg) == 2 and zoo.local_workers(_cfg(workers=0)) >= 1
    parallel = zoo.train_zoo(cfg, "batch", progress=False)
    _members_equal(parallel, sequential_zoos["batch"], range(6))
    assert torch.equal(parallel.checkpoint_logits, sequential_zoos["batch"].checkpoint_logits)


def test_a_missing_member_is_named():
    cfg = _cfg(n_models=2, lr=0.0123)  # a configuration nobody trained
    with pytest.raises(FileNotFoundError, match=r"lacks members \[0, 1\]"):
        zoo.load_zoo(cfg, "batch")
    with pytest.raises(ValueError, match="'workers'"):
        config.load("smoke", workers=-1)


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as local, distributed.Client(local) as client:
        yield client


def test_dask_engine_trains_the_sequential_zoo(monkeypatch, tmp_path, cluster, sequential_zoos):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    cfg = _cfg(n_models=6)
    reports = engine.train_zoo(cluster, cfg, ["batch"], progress=False)
    assert sorted(t for r in reports for t in r["trained"]) == list(range(6))
    _members_equal(zoo.load_zoo(cfg, "batch"), sequential_zoos["batch"], range(6))
    assert engine.train_zoo(cluster, cfg, ["batch"], progress=False) == []  # complete: nothing to submit


def test_killing_a_worker_loses_at_most_its_task(monkeypatch, tmp_path, cluster, sequential_zoos):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    cfg = _cfg(n_models=12)  # 12 tasks on 2 workers, so that some are still running when the first is done
    entry = zoo.zoo_entry(cfg, "none")
    submitted = engine.submit_zoo(cluster, cfg, ["none"])
    deadline = time.monotonic() + 120
    while not any(entry.has(zoo.member_name(t)) for t in range(12)):  # let the first member finish
        assert time.monotonic() < deadline, "no member was trained within 2 minutes"
        time.sleep(0.05)
    busy = {address: keys for address, keys in cluster.processing().items() if keys}
    done_before = {t: os.stat(entry.path(zoo.member_name(t))).st_mtime_ns for t in range(12)
                   if entry.has(zoo.member_name(t))}
    assert busy, "every task finished before a worker could be killed"
    victim = next(iter(busy))  # killed in the middle of its task (SIGKILL: no clean-up); its nanny starts anew
    os.kill(cluster.run(os.getpid, workers=[victim])[victim], signal.SIGKILL)
    reports = engine.wait(submitted, progress=False)
    assert len(reports) == 12
    for t, stamp in done_before.items():  # what was finished before the kill is not trained again
        assert os.stat(entry.path(zoo.member_name(t))).st_mtime_ns == stamp
    _members_equal(zoo.load_zoo(cfg, "none"), sequential_zoos["none"], range(6))  # members 0-5 of any zoo size


def test_jobqueue_jobs_hold_one_gpu_each_and_offer_it_as_a_resource():
    pytest.importorskip("dask_jobqueue")
    with pytest.raises(ValueError, match="'jobqueue' got 'lsf'"):
        engine.jobqueue_cluster("lsf")
    with pytest.raises(ValueError, match="'address'"):
        engine.connect("tcp://127.0.0.1:1", jobqueue="slurm")
    cluster = engine.jobqueue_cluster("slurm", queue="gpu", scheduler_options={"host": "127.0.0.1",
                                                                                "dashboard_address": ":0"})
    try:  # the batch script only: no Slurm here
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script and "--resources GPU=1" in script and "-p gpu" in script


def test_cli_trains_the_zoos_a_chapter_then_finds(monkeypatch, tmp_path, capsys, sequential_zoos):
    from bnlib import cli

    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    assert cli.main(["zoo", "--profile", "smoke", "-p", "n_models", "2", "-p", "device", "cpu"]) == 0
    assert "zoo none: 2 members complete" in capsys.readouterr().out
    cfg = _cfg(n_models=2)
    assert zoo.missing_members(cfg, "batch") == zoo.missing_members(cfg, "none") == []
    _members_equal(zoo.load_zoo(cfg, "none"), sequential_zoos["none"], range(2))
    assert cli.main(["zoo", "--profile", "smoke", "-p", "workers", "-1"]) == 2  # a clear error, no training
    assert "'workers'" in capsys.readouterr().err
