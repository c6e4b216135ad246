import json
import os

import numpy as np
import pytest
import torch

from bnlib import config, memorization, results, zoo


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    results.atomic_write_json(tmp_path / "a.json", {"x": 1})
    results.atomic_torch_save(tmp_path / "b.pt", {"t": torch.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt"]
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert torch.equal(results.torch_load(tmp_path / "b.pt")["t"], torch.arange(3))


def test_config_hash_is_order_independent():
    assert results.config_hash({"a": 1, "b": (1, 2)}) == results.config_hash({"b": [1, 2], "a": 1})
    assert results.config_hash({"a": 1}) != results.config_hash({"a": 2})


def test_entry_stores_config_and_version():
    entry = results.Entry("unit", {"alpha": 0.5}, code=results.code_of("stats"))
    calls = []
    value = entry.get_or_compute("thing", lambda: calls.append(1) or {"v": torch.ones(2)})
    again = entry.get_or_compute("thing", lambda: calls.append(1) or {"v": torch.zeros(2)})
    assert calls == [1] and torch.equal(value["v"], again["v"])
    meta = json.loads((entry.folder / "config.json").read_text())
    assert meta["config"] == {"alpha": 0.5} and meta["bnlib_version"]
    assert meta["code"]["modules"] == ["stats.py"] and meta["code"]["hash"] == results.code_hash(("stats.py",))


def test_zoo_resumes_without_retraining(smoke_cfg):
    first = zoo.train_zoo(smoke_cfg, "batch", progress=False)
    assert first.keep.shape == (smoke_cfg.n_models, len(first.labels))
    assert (first.keep.sum(0) == smoke_cfg.n_models // 2).all()
    assert first.logits.shape == (smoke_cfg.n_models, len(first.labels), 10)
    # simulate an interrupted run: model 1 missing
    path = first.members.path("model_1")
    stamps = {t: os.stat(first.members.path(f"model_{t}")).st_mtime_ns for t in range(smoke_cfg.n_models)}
    path.unlink()
    second = zoo.train_zoo(smoke_cfg, "batch", progress=False)
    for t in range(smoke_cfg.n_models):
        if t != 1:
            assert os.stat(first.members.path(f"model_{t}")).st_mtime_ns == stamps[t]
    assert torch.allclose(second.logits, first.logits)  # retrained model 1 is bit-identical (seeded)
    model = second.model(0)
    assert not model.training


def test_summary_and_report(smoke_cfg):
    from bnlib import report, stats

    entry = results.metric_entry({"batch": stats.mean_ci([0.3, 0.4]), "none": stats.mean_ci([0.1, 0.2])},
                                 p_value=0.01, test="t", higher_means="more", description="d",
                                 comparison="same_schedule")
    results.write_summary("unit_chapter", {"unit_metric": entry}, smoke_cfg.to_dict())
    table = report.headline()
    assert table["unit_metric"]["batch"]["n"] == 2 and table["unit_metric"]["chapter"] == "unit_chapter"
    parsed = json.loads(report.as_json(table))
    assert parsed["unit_metric"]["p_value"] == 0.01 and "unit_metric" in report.text(table)


def test_a_zoo_storing_the_pool_around_crossings_reads_what_the_dense_zoo_reads():
    """The storage of issue 26: with ``pool_checkpoints="crossings"`` the zoo computes the whole pool only
    where a fit level is crossed (and at the end), yet every reader gets the numbers of the dense zoo: the
    fit and canary curves, hard and soft Feldman-Zhang scores at every level of the grid, and the pool
    logits; the weights stored at those checkpoints give those logits back; the old way's members (the
    plain layout) equal the new way's in the plain layout bit for bit."""
    zoos, members = {}, {}
    for policy in ("every", "crossings"):
        cfg = config.load("smoke", device="cpu", epochs=4, fit_levels=(0.7, 0.75), headline_fit=0.75,
                          pool_checkpoints=policy, memory_format="contiguous", n_models=4)
        zoos[policy] = zoo.train_zoo(cfg, "batch", progress=False)
        members[policy] = cfg
    dense, sparse = zoos["every"], zoos["crossings"]
    assert dense.pool_stored.all() and not sparse.pool_stored.all() and sparse.pool_stored[:, -1].all()
    with pytest.raises(ValueError, match="crossings"):
        _ = sparse.checkpoint_logits
    curves = {policy: memorization.zoo_canary_curves(z) for policy, z in zoos.items()}
    for key, values in curves["every"].items():
        assert np.array_equal(values, curves["crossings"][key]), key
    assert torch.equal(dense.train_accuracy(1), sparse.train_accuracy(1))
    for level in (0.7, 0.75):
        positions = memorization.read_at_level(curves["every"], level)["position"]
        assert np.isfinite(positions).any()
        for score in ("hard", "soft"):
            expected = memorization.signed_scores(dense, positions, score)
            assert np.array_equal(expected, memorization.signed_scores(sparse, positions, score), equal_nan=True)
    assert np.array_equal(memorization.signed_scores(dense), memorization.signed_scores(sparse))
    # the dense zoo read the old (dense) way gives what its reader gives
    values = memorization.true_label_probability(dense.checkpoint_logits.float(), dense.labels).numpy()
    positions = memorization.read_at_level(curves["every"], 0.7)["position"]
    reference = memorization.at_positions(values, positions)
    for t in range(sparse.n_models):
        got = sparse.pool_values_at(t, positions[t], lambda z: memorization.true_label_probability(z, sparse.labels))
        assert np.array_equal(got, reference[t], equal_nan=True)
        for e in sparse.pool_stored[t].nonzero().squeeze(1).tolist():
            assert torch.equal(sparse.pool_logits(t, e), dense.pool_logits(t, e))
            model = sparse.model(t)
            model.load_state_dict(sparse.state_dict_at(t, float(sparse.checkpoint_epochs[e])))
            pool_x = zoo.zoo_inputs(members["crossings"])[1]
            assert torch.equal(model.eval()(pool_x).detach().half(), sparse.pool_logits(t, e))
    with pytest.raises(ValueError, match="'epoch'"):
        sparse.state_dict_at(0, 0.5)
    inputs = zoo.zoo_inputs(members["every"])
    old = zoo.train_members(members["every"], "batch", [0], inputs, old_way=True)[0][1]
    new = dense.members.load(zoo.member_name(0))
    for name in ("logits", "test_logits", "fit_correct", "tracked_logits", "pool_logits", "checkpoint_epochs"):
        assert torch.equal(old[name], new[name]), name


def test_more_checkpoints_than_steps_is_refused():
    cfg = config.load("smoke", device="cpu", snapshots_per_epoch=1000)
    with pytest.raises(ValueError, match="'snapshots_per_epoch'"):
        zoo.train_members(cfg, "none", [0], zoo.zoo_inputs(cfg))
