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
