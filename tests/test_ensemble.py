"""Concurrent (vmap) training of K models equals training them one by one, BatchNorm statistics included."""

import pytest
import torch

from bnlib import ensemble, models

SETTINGS = dict(epochs=2, batch_size=16, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="onecycle")


def _problem(n_models: int, norm: str, arch: str = "small_cnn"):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(240, 1, 16, 16, generator=generator)
    y = torch.randint(0, 10, (240,), generator=generator)
    keep = torch.rand(n_models, 240, generator=generator) < 0.5
    keep[-1, :40] = True  # a model with more data (more steps per epoch): trained in its own group

    def build() -> list[torch.nn.Module]:
        networks = []
        for k in range(n_models):
            torch.manual_seed(100 + k)
            networks.append(models.build(arch, norm, 1, 16, 10, width=4))
        return networks

    return x, y, keep, build


@pytest.mark.parametrize("norm,arch", [("batch", "small_cnn"), ("none", "small_cnn"), ("group", "small_cnn"),
                                       ("batch", "mlp")])
def test_vmap_training_equals_sequential_training(norm, arch):
    x, y, keep, build = _problem(4, norm, arch)
    seeds = [7, 8, 9, 10]
    runs = {path: ensemble.train_models(build(), x, y, keep, seeds, snapshot_x=x[:30], snapshot_epochs=(1, 2),
                                        path=path, progress=False, **SETTINGS) for path in ("sequential", "vmap")}
    assert runs["vmap"].path == "vmap" and runs["sequential"].path == "sequential"
    for one, together in zip(runs["sequential"].models, runs["vmap"].models, strict=True):
        assert not together.training
        for (name, expected), (_, got) in zip(one.state_dict().items(), together.state_dict().items(), strict=True):
            assert torch.allclose(expected.float(), got.float(), atol=2e-5, rtol=1e-4), name
    snapshots = runs["vmap"].snapshots
    assert snapshots.shape == (2, 4, 30, 10)
    assert torch.allclose(snapshots.float(), runs["sequential"].snapshots.float(), atol=2e-3)  # float16 storage


def test_batchnorm_statistics_stay_per_model():
    x, y, keep, build = _problem(3, "batch")
    trained = ensemble.train_models(build(), x, y, keep, [1, 2, 3], path="vmap", progress=False, **SETTINGS)
    means = [dict(m.named_buffers())["features.0.1.running_mean"] for m in trained.models]
    counts = [int(dict(m.named_buffers())["features.0.1.num_batches_tracked"]) for m in trained.models]
    assert not torch.allclose(means[0], means[1])  # each model normalized by its own batches
    assert counts == [2 * (int(keep[k].sum()) // 16) for k in range(3)]


def test_predict_all_paths_agree_and_bad_path_is_rejected():
    x, y, keep, build = _problem(3, "batch")
    networks = [m.eval() for m in build()]
    stacked = ensemble.predict_all(networks, x, path="vmap")
    assert stacked.shape == (3, 240, 10)
    assert torch.allclose(stacked, ensemble.predict_all(networks, x, path="sequential"), atol=1e-5)
    train_mode = ensemble.predict_all(networks, x, bn_mode="train")
    assert not torch.allclose(train_mode, stacked, atol=1e-4)
    with pytest.raises(ValueError, match="'path'"):
        ensemble.train_models(networks, x, y, keep, [1, 2, 3], path="grouped", **SETTINGS)
    with pytest.raises(ValueError, match="'keep'"):
        ensemble.train_models(networks, x, y, keep[:2], [1, 2, 3], **SETTINGS)


def test_the_faster_path_is_chosen_per_device():
    assert ensemble.choose_path("cpu") == "sequential"
    assert ensemble.choose_path("cuda") == "vmap"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_vmap_on_cuda_equals_sequential_on_cuda():
    x, y, keep, build = _problem(4, "batch")
    runs = [ensemble.train_models([m.cuda() for m in build()], x, y, keep, [1, 2, 3, 4], path=path, progress=False,
                                  **SETTINGS).models for path in ("sequential", "vmap")]
    for one, together in zip(*runs, strict=True):
        for (name, expected), (_, got) in zip(one.state_dict().items(), together.state_dict().items(), strict=True):
            assert torch.allclose(expected.float(), got.float(), atol=1e-3, rtol=1e-3), name


def _recorders(keep, y, outlier, policy, levels=(0.3, 0.5, 0.7)):
    return [ensemble.CheckpointRecorder(keep[k], outlier, y, outlier, n_checkpoints=4, fit_levels=levels,
                                        policy=policy) for k in range(len(keep))]


@pytest.mark.parametrize("policy", ["every", "crossings"])
def test_recorders_store_the_same_on_both_paths(policy):
    x, y, keep, build = _problem(3, "batch")
    outlier = torch.zeros(240, dtype=torch.bool)
    outlier[200:] = True
    stored = {}
    for path in ("sequential", "vmap"):
        recorders = _recorders(keep, y, outlier, policy)
        ensemble.train_models(build(), x, y, keep, [1, 2, 3], path=path, progress=False, recorders=recorders,
                              evals_per_epoch=2, **SETTINGS)
        stored[path] = [r.stored() for r in recorders]
    for one, together in zip(stored["sequential"], stored["vmap"], strict=True):
        assert torch.equal(one["checkpoint_epochs"], together["checkpoint_epochs"])  # mid-epoch: after round(S/2) steps
        assert one["checkpoint_epochs"][1::2].tolist() == [1.0, 2.0] and 0 < one["checkpoint_epochs"][0] < 1
        assert torch.equal(one["pool_checkpoints"], together["pool_checkpoints"])
        assert (one["fit_correct"] - together["fit_correct"]).abs().max() <= 1  # float32 rounding near a tie
        assert torch.allclose(one["tracked_logits"].float(), together["tracked_logits"].float(), atol=2e-3)
        assert torch.allclose(one["pool_logits"].float(), together["pool_logits"].float(), atol=2e-3)
        assert one["tracked_logits"].shape == (4, 40, 10) and one["pool_logits"].shape[1:] == (240, 10)
        if policy == "every":
            assert one["pool_checkpoints"].tolist() == [0, 1, 2, 3]


def test_recorder_stores_the_pool_around_each_first_crossing():
    """Known answer: fits 0.25, 0.5, 0.75, 0.75, 1.0 (checkpoints 0-4) and levels 0.1 (starts above: nothing),
    0.5 (reached exactly at 1: only 1), 0.6 (between 1 and 2), 0.8 and 0.9 (between 3 and 4): the pool is
    stored at 1, 2, 3, 4 (4 is also the last), never at 0, and each stored pool, including checkpoint 3's,
    which is seen only at checkpoint 4, holds the logits of the weights of its own checkpoint."""
    labels = torch.arange(8) % 2
    member = torch.tensor([True] * 4 + [False] * 4)
    outlier = torch.tensor([False] * 6 + [True] * 2)
    hits = {0: 1, 1: 2, 2: 3, 3: 3, 4: 4}  # correct training inliers (of 4) at each checkpoint

    def logits_for(checkpoint: int) -> torch.Tensor:  # examples 0..hits-1 of the inliers right, the rest wrong
        right = torch.arange(8) < hits[checkpoint]
        predicted = torch.where(right, labels, 1 - labels)
        return torch.nn.functional.one_hot(predicted, 2).float() + checkpoint / 100

    recorder = ensemble.CheckpointRecorder(member, outlier, labels, outlier, n_checkpoints=5,
                                           fit_levels=(0.1, 0.5, 0.6, 0.8, 0.9), policy="crossings")
    for i in range(5):
        def evaluate(index, state, i=i):
            full = logits_for(i if state is None else state["checkpoint"])
            return full if index is None else full[index]

        recorder.record(i + 1, evaluate, lambda i=i: {"checkpoint": i})
    stored = recorder.stored()
    assert stored["fit_correct"].tolist() == [1, 2, 3, 3, 4]
    assert stored["pool_checkpoints"].tolist() == [1, 2, 3, 4]
    for row, i in enumerate(stored["pool_checkpoints"].tolist()):
        assert torch.equal(stored["pool_logits"][row], logits_for(i).half()), i
        assert recorder.states[i] == {"checkpoint": i}
    assert torch.equal(stored["tracked_logits"], torch.stack([logits_for(i)[6:].half() for i in range(5)]))
    assert torch.equal(recorder.final_logits, logits_for(4))
    with pytest.raises(ValueError, match="'pool_checkpoints'"):
        ensemble.CheckpointRecorder(member, outlier, labels, outlier, n_checkpoints=5, policy="sometimes")


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_eval_logits_of_an_example_do_not_depend_on_its_chunk(memory_format):
    """The pool logits a recorder assembles from parts equal a dense snapshot's bit for bit because an
    example's eval-mode logits do not depend on the chunk it is evaluated in (checked, not assumed)."""
    x, y, keep, build = _problem(1, "batch")
    model = build()[0]
    ensemble.train_models([model], x, y, keep, [1], progress=False, memory_format=memory_format, **SETTINGS)
    whole = ensemble.eval_logits(model, x, memory_format, batch_size=1024)
    subset = torch.randperm(240, generator=torch.Generator().manual_seed(1))[:77]
    for batch_size in (16, 50, 77):
        assert torch.equal(ensemble.eval_logits(model, x[subset], memory_format, batch_size=batch_size), whole[subset])
