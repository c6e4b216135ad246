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
    ("low_fpr", 1.0, "'low_fpr'"),
    ("front_high", 1.0, "'front_high'"),
    ("dp_lrs", "0.1,0.1", "'dp_lrs'"),
    ("target_epsilons", "8,0", "'target_epsilons'"),
    ("large_batch_lr_rule", "cubic", "'large_batch_lr_rule'"),
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


# ----------------------------------------------------------------------------- delta and epsilon

def test_delta_follows_the_literatures_rule():
    assert dp.model_delta(1300) == 1e-5 and dp.model_delta(100_000) == 1e-5
    assert dp.model_delta(200_000) == pytest.approx(1 / 2_000_000)
    assert dp.model_delta(1300, 1e-4) == 1e-4  # a given delta below 1/n is kept


@pytest.mark.parametrize("delta", [1 / 1300, 0.01, 0.5])
def test_delta_at_or_above_one_over_n_is_refused_naming_the_parameter(delta):
    with pytest.raises(ValueError) as error:
        dp.model_delta(1300, delta)
    assert "'delta'" in str(error.value) and "1/n" in str(error.value) and "promises nothing" in str(error.value)


def test_a_delta_above_one_over_n_fails_before_any_training():
    cfg, params = config.load("smoke", extras=dp.ChapterParams, delta=0.01)  # smoke: n = 136 per model
    with pytest.raises(ValueError, match="'delta'"):
        dp.check_config(cfg, params)


def test_opacus_schedule_is_what_opacus_runs():
    # q = 1/ceil(n/B) (not B/n), int(1/q) steps an epoch: read from Opacus's own objects
    for n, batch in ((1300, 128), (136, 32), (100, 7)):
        x, y = torch.zeros(n, 1, 28, 28), torch.zeros(n, dtype=torch.long)
        private = dp.make_private(_group_cnn(), x, y, batch_size=batch, lr=0.1, noise_multiplier=1.0,
                                  max_grad_norm=1.0)
        rate, steps = dp.opacus_schedule(n, batch, epochs=3)
        assert private.sample_rate == pytest.approx(rate) and 3 * private.steps_per_epoch == steps
        assert len(private.loader) == private.steps_per_epoch
    assert dp.opacus_schedule(1300, 128, 12) == (pytest.approx(1 / 11), 132)


@pytest.mark.parametrize("noise", [0.7, 2.0])
def test_chapter_epsilon_equals_opacus_accountants_called_directly(noise):
    # the quick profile's settings: n per model, Opacus's rate and steps, delta by the rule
    from opacus.accountants import PRVAccountant, RDPAccountant

    cfg, params = config.load("quick", extras=dp.ChapterParams)
    (n,) = set(dp.member_sizes(cfg))
    rate, steps = dp.opacus_schedule(n, cfg.batch_size, cfg.epochs)
    delta = dp.model_delta(n, params.delta)
    assert delta == 1e-5
    found = dp.epsilons(noise, rate, steps, delta)
    for name, accountant in (("rdp", RDPAccountant()), ("prv", PRVAccountant())):
        for _ in range(steps):  # the ordinary use: one step() per optimizer step
            accountant.step(noise_multiplier=noise, sample_rate=rate)
        assert found[name] == pytest.approx(accountant.get_epsilon(delta=delta), rel=1e-6), name
    assert found["prv"] < found["rdp"]  # PRV is the tighter


def test_calibrated_noise_spends_the_target_epsilon():
    cfg, params = config.load("quick", extras=dp.ChapterParams)
    noise = dp.calibrated_noise(cfg, params, 8.0)
    (n,) = set(dp.member_sizes(cfg))
    rate, steps = dp.opacus_schedule(n, cfg.batch_size, cfg.epochs)
    assert dp.epsilon(noise, rate, steps, 1e-5, "rdp") == pytest.approx(8.0, abs=0.05)
    assert dp.epsilon(noise, rate, steps, 1e-5, "rdp") <= 8.0 + 0.01  # Opacus's search stays at or below


def test_private_member_t_trains_on_the_zoo_member_ts_examples():
    from bnlib import data as data_lib
    from bnlib import zoo as zoo_lib

    cfg, _ = config.load("smoke", extras=dp.ChapterParams)
    experiment = data_lib.make_experiment_data(cfg, seed=cfg.seeds[0])
    mask = data_lib.balanced_keep_mask(cfg.n_models, len(experiment.pool_y), seed=cfg.seeds[0],
                                       strata=experiment.pool_is_outlier)
    for t in range(cfg.n_models):
        assert torch.equal(dp.keep_row(experiment, cfg.seeds[0], t), mask[t])
    assert zoo_lib.member_seed(0) == 1000 and dp.TUNING_INIT_SEED != 1000  # tuning models start elsewhere


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
    assert private.sample_rate == pytest.approx(1 / 4)  # 1 / ceil(64 / 16)
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
    rows = {name: entry for name, entry in table.items() if name.startswith("dp_sgd_tradeoff_")}
    assert len(rows) == 3
    from opacus.accountants import PRVAccountant, RDPAccountant

    from bnlib import verdict

    for entry in rows.values():
        assert entry["chapter"] == "what_to_do" and entry["accountant"] == "rdp"
        private = list(entry["epsilon"])
        assert len(private) == 3  # two noise levels and one calibrated to epsilon 8
        assert set(entry["n_shadow_models"].values()) == {2}  # every setting: 4 models, 2 shadows per target
        assert entry["batch"]["epsilon"] is None and entry["batch"]["n"] == 4
        for key in private:
            assert entry[key]["delta"] == entry["delta"][key] == 1e-5
            for name, accountant in (("rdp", RDPAccountant()), ("prv", PRVAccountant())):
                accountant.history = [(entry["noise_multiplier"][key], entry["sample_rate"][key], entry["steps"][key])]
                assert entry["epsilon"][key][name] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-6)
        eps = [entry["epsilon"][key]["rdp"] for key in sorted(private, key=lambda k: entry["noise_multiplier"][k])]
        assert eps == sorted(eps, reverse=True)  # less noise, more epsilon
        assert entry["epsilon"]["group_dp_sgd_epsilon_8"]["rdp"] == pytest.approx(8.0, abs=0.05)
        assert "group_vs_group_dp_sgd_noise_1" in entry["contrasts"]
        for contrast in entry["contrasts"].values():
            assert contrast["verdict_words"] in verdict.VERDICTS and contrast["unit"] == "model pairs"


@pytest.mark.slow
def test_a_private_member_trained_in_a_worker_process_equals_one_trained_here(tmp_path, monkeypatch):
    from bnlib import results

    cfg, params = config.load("smoke", extras=dp.ChapterParams, epochs=1)
    members = {}
    for where, workers in (("here", 1), ("workers", 2)):
        monkeypatch.setenv("BNLIB_CACHE", str(tmp_path / where))
        point = config.load("smoke", extras=dp.ChapterParams, epochs=1, workers=workers)[0]
        entry = dp.member_entry("dp_zoo", point, "group", 1.0, 0.5, params)
        members[where] = [dp.Member(entry, f"model_{t}", point, "group", 1.0, 0.5, 1.0, point.seeds[0], t, 1000 + t)
                          for t in range(2)]
        dp.train_members(point, members[where], "test", progress=False)
        assert results.cache_root() == tmp_path / where
    for here, there in zip(members["here"], members["workers"], strict=True):
        a, b = here.entry.load(here.name), there.entry.load(there.name)
        assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["keep"], b["keep"])
    assert cfg.workers == 1
