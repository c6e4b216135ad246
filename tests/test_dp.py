"""DP-SGD (Opacus) and the trade-off measurements of the "what to do" chapter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlib import config, dp, models

ROOT = Path(__file__).resolve().parent.parent


def _group_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.build("small_cnn", "group", 1, 28, 10, width=8)


def _data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("norm", ["batch", "ghost", "running"])
def test_dp_sgd_on_a_batchnorm_model_is_an_error_that_explains_why(norm):
    x, y = _data()
    with pytest.raises(ValueError) as error:
        dp.make_private(models.build("small_cnn", norm, width=8), x, y, batch_size=16, lr=0.1,
                        noise_multiplier=1.0, max_grad_norm=1.0)
    message = str(error.value)
    assert "per-sample gradients" in message and "GroupNorm" in message and "'group'" in message
    with pytest.raises(ValueError, match="per-sample gradients"):
        config.load("smoke", extras=dp.ChapterParams, dp_norms=norm)


@pytest.mark.parametrize("name, value, expected", [
    ("noise_multipliers", "1.0,0", "'noise_multipliers'"),
    ("noise_multipliers", "nan", "'noise_multipliers'"),
    ("max_grad_norm", -1.0, "'max_grad_norm'"),
    ("delta", 1.5, "'delta'"),
    ("delta", -0.1, "'delta'"),
    ("accountant", "gdp2", "'accountant'"),
    ("setting_models", 5, "'setting_models'"),
    ("low_fpr", 1.0, "'low_fpr'"),
])
def test_privacy_parameters_are_validated_before_any_work(name, value, expected):
    with pytest.raises(ValueError, match=expected):
        config.load("smoke", extras=dp.ChapterParams, **{name: value})


def test_epsilon_and_noise_functions_validate_their_input():
    with pytest.raises(ValueError, match="'epsilon'"):
        dp.noise_for_epsilon(0.0, sample_rate=0.1, steps=100, delta=1e-3)
    with pytest.raises(ValueError, match="'delta'"):
        dp.epsilon(1.0, sample_rate=0.1, steps=100, delta=0.0)
    with pytest.raises(ValueError, match="'noise_multipliers'"):
        dp.epsilon(-1.0, sample_rate=0.1, steps=100, delta=1e-3)
    with pytest.raises(ValueError, match="'accountant'"):
        dp.epsilon(1.0, sample_rate=0.1, steps=100, delta=1e-3, accountant="moments")


def test_large_batch_beyond_a_models_training_set_fails_fast():
    cfg, params = config.load("smoke", extras=dp.ChapterParams, large_batch=1000)
    with pytest.raises(ValueError, match="'large_batch'"):
        dp.check_config(cfg, params)


# ----------------------------------------------------------------------------- the DP-SGD step

def test_per_sample_gradients_match_a_loop_and_clipped_norms_are_at_most_c():
    x, y = _data(24)
    reference_model = _group_cnn()
    clip = 0.05  # below the typical per-sample gradient norm, so clipping is active
    private = dp.make_private(_group_cnn(), x, y, batch_size=8, lr=0.1, noise_multiplier=1.0, max_grad_norm=clip)
    xb, yb = x[:8], y[:8]
    private.optimizer.zero_grad(set_to_none=True)
    with dp.quiet_hooks():
        F.cross_entropy(private.module(xb), yb).backward()
    params = [p for p in private.module.parameters() if p.requires_grad]
    per_sample = torch.cat([p.grad_sample.reshape(len(xb), -1) for p in params], dim=1)  # (B, P)

    # slow, obviously right reference: one backward pass per example
    reference = []
    for i in range(len(xb)):
        reference_model.zero_grad()
        F.cross_entropy(reference_model(xb[i:i + 1]), yb[i:i + 1]).backward()
        reference.append(torch.cat([p.grad.reshape(-1) for p in reference_model.parameters()]))
    torch.testing.assert_close(per_sample, torch.stack(reference), rtol=1e-4, atol=1e-6)

    norms = per_sample.norm(dim=1)
    assert (norms > clip).any(), "the test needs some gradients above the clipping norm"
    private.optimizer.clip_and_accumulate()  # Opacus's clipping: summed_grad = sum of clipped per-sample grads
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    clipped = per_sample * factors[:, None]
    assert (clipped.norm(dim=1) <= clip * (1 + 1e-5)).all()
    summed = torch.cat([p.summed_grad.reshape(-1) for p in params])
    torch.testing.assert_close(summed, clipped.sum(0), rtol=1e-4, atol=1e-6)


def test_a_private_step_changes_the_weights_and_uses_poisson_sampling():
    x, y = _data(64)
    model = _group_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    private = dp.train_private(model, x, y, epochs=1, batch_size=16, lr=0.1, noise_multiplier=1.0,
                               max_grad_norm=1.0, max_steps=1)
    assert type(private.loader).__name__ == "DPDataLoader"
    assert private.sample_rate == pytest.approx(16 / 64)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not model.training


def test_epsilon_grows_as_noise_falls_for_both_accountants():
    for accountant in dp.ACCOUNTANTS:
        epsilons = [dp.epsilon(noise, sample_rate=0.05, steps=200, delta=1e-4, accountant=accountant)
                    for noise in (4.0, 2.0, 1.0, 0.7)]
        assert all(np.diff(epsilons) > 0), (accountant, epsilons)


def test_noise_for_epsilon_inverts_epsilon():
    noise = dp.noise_for_epsilon(3.0, sample_rate=0.05, steps=200, delta=1e-4)
    assert dp.epsilon(noise, sample_rate=0.05, steps=200, delta=1e-4) == pytest.approx(3.0, abs=0.05)


def test_one_full_batch_step_without_noise_epsilon_matches_the_gaussian_mechanism_order():
    # sample rate 1, one step: the Gaussian mechanism; at sigma = 1, delta = 1e-5 its exact epsilon is about 4.4
    # (Balle & Wang 2018); RDP's bound must be above it and PRV's close to it
    rdp = dp.epsilon(1.0, sample_rate=1.0, steps=1, delta=1e-5, accountant="rdp")
    prv = dp.epsilon(1.0, sample_rate=1.0, steps=1, delta=1e-5, accountant="prv")
    assert 4.0 < prv < 4.8 and rdp >= prv - 0.05


# ----------------------------------------------------------------------------- the chapter at smoke

@pytest.mark.slow
def test_chapter_executes_at_smoke_and_writes_dp_sgd_rows(tmp_path):
    import papermill

    env_cache = tmp_path / "cache"
    before = os.environ.get("BNLIB_CACHE")
    os.environ["BNLIB_CACHE"] = str(env_cache)
    try:
        papermill.execute_notebook(str(ROOT / "chapters/what_to_do.ipynb"), str(tmp_path / "out.ipynb"),
                                   parameters={"profile": "smoke"}, cwd=str(ROOT / "chapters"), progress_bar=False)
    finally:  # the session's cache (conftest.py) for the tests that follow
        if before is None:
            del os.environ["BNLIB_CACHE"]
        else:
            os.environ["BNLIB_CACHE"] = before
    # a plain papermill run writes its own result set, beside any book's: report that one
    (result_set,) = [folder.name for folder in (env_cache / "summaries").iterdir()]
    completed = subprocess.run([sys.executable, "-m", "bnlib", "report", "--json", "--set", result_set], cwd=ROOT,
                               capture_output=True, text=True, timeout=120,
                               env={**os.environ, "BNLIB_CACHE": str(env_cache)})
    assert completed.returncode == 0, completed.stderr
    table = json.loads(completed.stdout)
    rows = {name: entry for name, entry in table.items() if "dp_sgd" in name}
    assert len(rows) == 3
    for entry in rows.values():
        assert entry["chapter"] == "what_to_do" and entry["accountant"] == "rdp"
        private = [key for key in entry["epsilon"]]
        assert len(private) == 2 and all(entry[key]["epsilon"] > 0 for key in private)
        assert entry["batch"]["epsilon"] is None and entry["batch"]["n"] == 4
        eps = [entry["epsilon"][key] for key in sorted(private, key=lambda k: entry["noise_multiplier"][k])]
        assert eps[0] > eps[1]  # less noise, more epsilon
