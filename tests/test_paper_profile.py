"""The paper profile (GPU, full scale) runs the same code; here at tiny size on the CPU."""

import torch

from bnlib import config, runs, zoo


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
    assert population.logits.shape == (2, 128 + 16, 10)


def test_paper_profile_vgg_runs():
    run = runs.train_run(tiny_paper_cfg(arch="vgg"), "batch", seed=0, progress=False)
    assert 0.0 <= run.final["test_acc"] <= 1.0
