"""The verdict pieces on synthetic populations with known answers (models x examples, paired norms)."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bnlib import verdict


def population(rng: np.random.Generator, n_models: int, n_examples: int, delta: float,
               out_share: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Paired (T, N) values of BN and no-BN: delta + model effects (shared + per norm) + example effects
    (shared + per norm) + noise; NaN where the example is OUT for that model (the same mask for both)."""
    shared_model, shared_example = rng.normal(0, 0.05, (n_models, 1)), rng.normal(0, 0.1, (1, n_examples))

    def norm(shift: float) -> np.ndarray:
        return (shift + shared_model + rng.normal(0, 0.03, (n_models, 1)) + shared_example
                + rng.normal(0, 0.05, (1, n_examples)) + rng.normal(0, 0.1, (n_models, n_examples)))

    batch, none = norm(delta), norm(0.0)
    out = rng.random((n_models, n_examples)) < out_share
    return np.where(out, np.nan, batch), np.where(out, np.nan, none)


def test_point_is_mean_over_models_of_per_model_means():
    batch = np.array([[1.0, np.nan, 3.0], [4.0, 4.0, np.nan], [0.0, 0.0, 0.0]])
    out = verdict.cluster_bootstrap_difference(batch, np.zeros((3, 3)), n_bootstrap=50)
    assert out["mean"] == pytest.approx((2.0 + 4.0 + 0.0) / 3)
    assert out["n"] == 3 and out["unit"] == "models"


def test_resampled_statistic_matches_an_explicit_loop():
    # the matrix-product resample equals drawing indices and recomputing the statistic (slow, obviously right)
    rng = np.random.default_rng(3)
    values = np.where(rng.random((5, 7)) < 0.3, np.nan, rng.normal(size=(5, 7)))
    models = rng.multinomial(5, np.full(5, 0.2), size=4)
    examples = rng.multinomial(7, np.full(7, 1 / 7), size=4).astype(float)
    fast = verdict.resampled_means(values, models, examples)
    for b in range(4):
        rows = np.repeat(np.arange(5), models[b])
        cols = np.repeat(np.arange(7), examples[b].astype(int))
        block = values[np.ix_(rows, cols)]
        with np.errstate(invalid="ignore"):
            per_model = np.nanmean(block, 1) if np.isfinite(block).any() else np.full(len(rows), np.nan)
        assert fast[b] == pytest.approx(np.nanmean(per_model))


def test_interval_covers_the_true_difference_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    delta, n_sims = 0.05, 300
    covered = models_only_covered = 0
    for sim in range(n_sims):
        batch, none = population(rng, 16, 60, delta)
        low, high = verdict.cluster_bootstrap_difference(batch, none, n_bootstrap=400, seed=sim)["ci95"]
        covered += low <= delta <= high
        # resampling models alone ignores the examples' shared effects and should cover too rarely
        low, high = verdict.cluster_bootstrap_difference(np.nanmean(batch, 1), np.nanmean(none, 1), n_bootstrap=400,
                                                         seed=sim)["ci95"]
        models_only_covered += low <= delta <= high
    assert abs(covered / n_sims - 0.95) <= 0.05, covered / n_sims
    assert models_only_covered / n_sims < 0.9, models_only_covered / n_sims


def test_true_effect_is_found_and_no_effect_is_not():
    rng = np.random.default_rng(1)
    batch, none = population(rng, 16, 100, delta=0.15)
    found = verdict.cluster_bootstrap_difference(batch, none, n_bootstrap=1000)
    assert verdict.verdict(found["mean"], found["se"], found["p_value"], found["n"]).startswith("BN higher")
    flipped = verdict.cluster_bootstrap_difference(none, batch, n_bootstrap=1000)
    assert verdict.verdict(flipped["mean"], flipped["se"], flipped["p_value"], flipped["n"]).startswith(
        "no-BN higher")
    batch, none = population(rng, 16, 100, delta=0.0)
    null = verdict.cluster_bootstrap_difference(batch, none, n_bootstrap=1000)
    words = verdict.verdict(null["mean"], null["se"], null["p_value"], null["n"])
    detectable = verdict.detectable_difference(null["se"])
    assert words == f"no difference detected (could detect ≥ {detectable:.3g})"
    # a scale smaller than what the design can detect turns "no difference" into "inconclusive"
    assert verdict.verdict(null["mean"], null["se"], null["p_value"], null["n"], scale=detectable / 2).startswith(
        "inconclusive")


def test_detectable_difference_is_detected_at_the_stated_power():
    # a true difference equal to the detectable difference is found in ~80% of designs; none in ~5%
    rng = np.random.default_rng(2)
    se = np.mean([verdict.cluster_bootstrap_difference(*population(rng, 16, 60, 0.0), n_bootstrap=400)["se"]
                  for _ in range(20)])
    delta = verdict.detectable_difference(se)
    n_sims = 200
    hits = {0.0: 0, delta: 0}
    for true in hits:
        for sim in range(n_sims):
            d = verdict.cluster_bootstrap_difference(*population(rng, 16, 60, true), n_bootstrap=400, seed=sim)
            hits[true] += verdict.verdict(d["mean"], d["se"], d["p_value"], d["n"]).startswith("BN higher")
    assert abs(hits[delta] / n_sims - 0.8) <= 0.1, hits
    assert hits[0.0] / n_sims <= 0.08, hits


def test_tiny_sample_is_inconclusive():
    rng = np.random.default_rng(4)
    batch, none = population(rng, 2, 50, delta=1.0)
    tiny = verdict.cluster_bootstrap_difference(batch, none, n_bootstrap=200)
    assert tiny["n"] == 2
    assert verdict.verdict(tiny["mean"], tiny["se"], tiny["p_value"], tiny["n"]).startswith("inconclusive")
    assert verdict.verdict(0.1, float("nan"), 0.01, 10).startswith("inconclusive")
    assert verdict.verdict(0.1, 0.01, None, 10).startswith("inconclusive")


def test_one_level_and_unpaired_and_pools():
    rng = np.random.default_rng(5)
    per_model = rng.normal(0.3, 0.1, 12)
    one = verdict.cluster_bootstrap_difference(per_model, np.zeros(12), n_bootstrap=2000)
    # one level: the bootstrap SE of a mean over models is ~ sd / sqrt(T) (times sqrt((T-1)/T))
    assert one["se"] == pytest.approx(per_model.std(ddof=0) / math.sqrt(12), rel=0.1)
    unpaired = verdict.cluster_bootstrap_difference(per_model, rng.normal(0, 0.1, 9), paired=False)
    assert unpaired["n"] == 9 and unpaired["p_value"] < 0.01
    # pools: models within a pool share a pool effect, so the SE must count pools, not models
    pool_effect = np.repeat(rng.normal(0, 1.0, 4), 8)  # 4 pools x 8 models
    values = pool_effect + rng.normal(0, 0.01, 32)
    flat = verdict.cluster_bootstrap_difference(values, np.zeros(32), n_bootstrap=2000)
    nested = verdict.cluster_bootstrap_difference(values, np.zeros(32), pools=np.repeat(np.arange(4), 8),
                                                  n_bootstrap=2000, unit="data draws")
    assert nested["se"] > 2 * flat["se"] and nested["unit"] == "data draws"
    with pytest.raises(ValueError, match="'none'"):
        verdict.cluster_bootstrap_difference(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="'pools'"):
        verdict.cluster_bootstrap_difference(np.zeros(3), np.zeros(3), pools=np.zeros(4))


def test_detectable_difference_formula():
    expected = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * 0.01
    assert verdict.detectable_difference(0.01) == pytest.approx(expected) == pytest.approx(0.028016, abs=1e-6)
    with pytest.raises(ValueError, match="'power'"):
        verdict.detectable_difference(0.01, power=1.5)


def test_holm_matches_the_textbook_steps_and_skips_untested():
    # sorted p 0.01, 0.03, 0.04 over m = 3: 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert verdict.holm([0.04, 0.01, None, 0.03, float("nan")]) == pytest.approx([0.06, 0.03, None, 0.06, None])


def test_annotate_fills_fields_and_keeps_the_entry():
    rng = np.random.default_rng(6)
    batch, none = population(rng, 16, 80, delta=0.2)
    difference = verdict.cluster_bootstrap_difference(batch, none, n_bootstrap=500)

    def entry(p_value, **extra):
        return {"batch": {"mean": 0.5, "ci95": [0.4, 0.6], "n": 16}, "none": {"mean": 0.3, "ci95": [0.2, 0.4], "n": 16},
                "p_value": p_value, "test": "t", "higher_means": "more", "description": "d",
                "comparison": "same_schedule", **extra}

    metrics = {"a": entry(difference["p_value"], difference=difference), "b": entry(0.03), "c": entry(None),
               "d": entry(0.2)}
    out = verdict.annotate(metrics, headline=["a", "b", "c"], units={"b": "seeds"})
    assert set(metrics["b"]) <= set(out["b"]) and "verdict" not in metrics["b"]
    assert out["a"]["unit"] == "models" and out["a"]["verdict"].startswith("BN higher")
    assert out["a"]["detectable_difference"] == pytest.approx(verdict.detectable_difference(difference["se"]))
    # family of two tested p-values (c has none): Holm gives b max(2 p_a, 1 x 0.03)
    assert out["b"]["p_value_holm"] == pytest.approx(max(2 * difference["p_value"], 0.03))
    assert out["c"]["p_value_holm"] is None and out["c"]["verdict"].startswith("inconclusive")
    assert out["d"]["p_value_holm"] is None and out["d"]["verdict"].startswith("no difference detected")
    assert all(o["verdict"].startswith(verdict.VERDICTS) for o in out.values())
    with pytest.raises(ValueError, match="'headline'"):
        verdict.annotate(metrics, headline=["zzz"])
