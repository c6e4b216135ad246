"""The paper profile (GPU, full scale) runs the same code; here at tiny size on the CPU."""

import torch

from bnlib import config, data, models, runs, zoo


def tiny_paper_cfg(**overrides):
    sizes = dict(n_train=128, n_test=64, n_canaries=8, epochs=1, batch_size=32, width=4, n_models=2, seeds="0",
                 device="cpu")
    return config.load("paper", **{**sizes, **overrides})


def test_paper_profile_defaults_are_full_scale():
    cfg = config.load("paper")
    assert cfg.n_train == 60000 and cfg.arch == "resnet" and cfg.n_models >= 64
    assert set(cfg.norms) == {"batch", "group", "layer", "none"}


def test_paper_profile_runs_every_norm_at_tiny_size():
    cfg = tiny_paper_cfg()
    for norm in cfg.norms:
        run = runs.train_run(cfg, norm, seed=0, progress=False)
        assert torch.isfinite(torch.tensor(run.final["test_loss"]))
    population = zoo.train_zoo(cfg, "batch", progress=False)
    assert population.logits.shape == (2, 128 + 8, 10)  # the pool: inliers and the inserted canaries


def test_paper_profile_vgg_learns_its_training_set():
    """The VGG variant with BN trains, not merely runs: its training loss falls and its fit rises."""
    cfg = tiny_paper_cfg(arch="vgg", epochs=6, n_train=96, batch_size=16, lr=0.1)
    run = runs.train_run(cfg, "batch", seed=0, progress=False)
    model = models.build_for(cfg, "batch", data.make_experiment_data(cfg, seed=0))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    first, last = run.records[0], run.records[-1]
    assert last["inliers_loss"] < 0.9 * first["inliers_loss"], (first, last)
    assert last["inliers_acc"] > first["inliers_acc"]
