"""The verdict pieces against simulations of our own design and known answers.

The simulated population has the shape measured on the quick zoo: 2 data pools x 16 model pairs x 100
canaries, binary outcomes per (model, example) whose paired BN - no-BN difference is dominated by the
model x example residual (SD ~0.7 per cell), example effects on the difference of SD 0.05 and model effects
on it of SD ~0; with and without a difference between the pools. The declared target
(``verdict.TARGET``) is conditional on the data draws and canaries, so each simulation's truth is the mean
over its pools and examples of the true per-example difference, and the test's null is a truth of 0.
"""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bnlib import config, verdict

N_SIMS = 2000
POOLS = np.repeat([0, 1], 16)


def crossed(rng: np.random.Generator, n_sims: int, pool_deltas: tuple[float, ...], n_models: int = 16,
            n_examples: int = 100, sd_example: float = 0.05, sd_model: float = 0.0, missing: float = 0.0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_sims, P T, N) binary outcomes of BN and no-BN (NaN where an example is missing for a pair) and the
    (n_sims,) conditional truth. Per pool p and example e: a shared success probability 0.5 + u_e + m_t (model
    t's effect, shared by both norms), and a BN - no-BN shift delta_p + z_e (z centred within each pool, so the
    truth is exactly the mean of delta_p up to clipping); outcomes are independent given the probabilities."""
    pools = len(pool_deltas)
    shared = rng.normal(0, 0.15, (n_sims, pools, 1, n_examples))
    z = rng.normal(0, sd_example, (n_sims, pools, 1, n_examples))
    shift = np.asarray(pool_deltas)[None, :, None, None] + z - z.mean(-1, keepdims=True)
    shift = shift + rng.normal(0, sd_model, (n_sims, pools, n_models, 1))
    model = rng.normal(0, 0.05, (n_sims, pools, n_models, 1))
    p_batch = np.clip(0.5 + shared + model + shift / 2, 0, 1)
    p_none = np.clip(0.5 + shared + model - shift / 2, 0, 1)
    batch = (rng.random(p_batch.shape) < p_batch).astype(float)
    none = (rng.random(p_none.shape) < p_none).astype(float)
    present = rng.random(p_batch.shape) >= missing
    batch[~present] = none[~present] = np.nan
    truth = (np.where(present, p_batch - p_none, 0).sum(-1) / present.sum(-1)).mean((1, 2))
    shape = (n_sims, pools * n_models, n_examples)
    return batch.reshape(shape), none.reshape(shape), truth


@pytest.mark.parametrize("pool_deltas, missing", [((0.0, 0.0), 0.0), ((0.1, -0.1), 0.0), ((0.0, 0.0), 0.3)],
                         ids=["no pool effect", "pools differ", "examples missing"])
def test_type_one_error_and_coverage_under_the_null(pool_deltas, missing):
    batch, none, truth = crossed(np.random.default_rng(0), N_SIMS, pool_deltas, missing=missing)
    assert np.abs(truth).max() < 5e-3  # the conditional truth is 0 (up to clipping; the SE is ~0.02)
    cells = (batch - none)[np.isfinite(batch - none)]
    assert 0.65 < cells.std() < 0.75  # the residual dominates, as measured
    found = [verdict.paired_difference(batch[s], none[s], pools=POOLS) for s in range(N_SIMS)]
    rejected = np.mean([f["p_value"] < 0.05 for f in found])
    covered = np.mean([f["ci95"][0] <= t <= f["ci95"][1] for f, t in zip(found, truth, strict=True)])
    assert 0.03 <= rejected <= 0.07, rejected
    assert 0.93 <= covered <= 0.97, covered
    assert all(f["df"] == 30 and f["n"] == 32 and f["target"] == verdict.TARGET for f in found[:5])


@pytest.mark.parametrize("pool_deltas", [(0.05, 0.05), (0.1, 0.0)], ids=["same effect", "pools differ"])
def test_coverage_of_a_true_difference(pool_deltas):
    batch, none, truth = crossed(np.random.default_rng(1), N_SIMS, pool_deltas, missing=0.2)
    found = [verdict.paired_difference(batch[s], none[s], pools=POOLS) for s in range(N_SIMS)]
    covered = np.mean([f["ci95"][0] <= t <= f["ci95"][1] for f, t in zip(found, truth, strict=True)])
    assert 0.93 <= covered <= 0.97, covered
    # the t's SE is the spread of the estimates, not 1.9 times it (the bootstrap it replaces)
    spread = np.std([f["mean"] - t for f, t in zip(found, truth, strict=True)])
    assert np.mean([f["se"] for f in found]) == pytest.approx(spread, rel=0.08)


def test_pair_summary_and_stratified_t_by_hand():
    batch = np.array([[1.0, np.nan, 3.0], [4.0, 4.0, np.nan], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    none = np.array([[0.0, 5.0, 1.0], [4.0, 2.0, 7.0], [0.0, 1.0, 0.0], [1.0, 2.0, 3.0]])
    summaries = verdict.pair_summaries(batch, none)
    assert summaries == pytest.approx([1.5, 1.0, -1 / 3, 0.0])  # means over examples finite in both
    out = verdict.stratified_t(summaries, np.array([0, 0, 1, 1]))
    residuals = np.array([0.25, -0.25, -1 / 6, 1 / 6])
    se = math.sqrt(np.sum(residuals**2) / 2 / 4)
    assert out["mean"] == pytest.approx(np.mean(summaries)) and out["df"] == 2 and out["se"] == pytest.approx(se)
    assert out["p_value"] == pytest.approx(2 * scipy_stats.t.sf(abs(out["mean"]) / se, 2))
    # one pool: the ordinary one-sample t (scipy)
    one = verdict.stratified_t(summaries)
    assert one["p_value"] == pytest.approx(scipy_stats.ttest_1samp(summaries, 0).pvalue)
    assert one["ci95"] == pytest.approx(list(scipy_stats.t.interval(0.95, 3, np.mean(summaries),
                                                                    scipy_stats.sem(summaries))))
    with pytest.raises(ValueError, match="'none'"):
        verdict.pair_summaries(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="'pools'"):
        verdict.paired_difference(np.zeros(3), np.zeros(3), pools=np.zeros(4))


def test_sign_flips_enumerate_small_designs_and_start_with_the_identity():
    flips = verdict.sign_flips(4, 100)
    assert flips.shape == (16, 4) and len({tuple(row) for row in flips}) == 16 and not flips[0].any()
    random = verdict.sign_flips(20, 500, seed=3)
    assert random.shape == (500, 20) and not random[0].any() and 0.45 < random[1:].mean() < 0.55
    # the exact sign-flip test of a mean: 5 positive pairs out of 5 -> p = 2 / 32
    values = np.array([0.3, 0.1, 0.2, 0.5, 0.4])
    p = verdict.pair_swap_test(lambda f: np.where(f, -values, values).mean(1), 5, n_permutations=64)
    assert p == pytest.approx(2 / 32)


def test_jackknife_of_a_mean_is_the_t_interval():
    values = np.random.default_rng(2).normal(0.2, 1.0, 12)
    out = verdict.jackknife_interval(lambda kept: (kept * values).sum(1) / kept.sum(1), 12)
    t = verdict.stratified_t(values)
    assert out["se"] == pytest.approx(t["se"]) and out["ci95"] == pytest.approx(t["ci95"])
    assert out["method"] == "pair jackknife"


def test_equivalence_known_answers():
    # normal reference: mean 0.05, se 0.02, margin 0.08 -> upper test z = -1.5, p = Phi(-1.5) = 0.0668
    out = verdict.equivalence(0.05, 0.02, 0.08)
    assert out["p_value"] == pytest.approx(scipy_stats.norm.cdf(-1.5)) and not out["equivalent"]
    assert verdict.equivalence(0.0, 0.02, 0.08)["p_value"] == pytest.approx(scipy_stats.norm.sf(4.0))
    # t reference, and the symmetric case below zero
    out = verdict.equivalence(-0.01, 0.02, 0.08, df=10)
    assert out["p_value"] == pytest.approx(scipy_stats.t.sf(3.5, 10)) and out["equivalent"]
    # equivalence at alpha <=> the 90% interval inside the margin
    for mean in np.linspace(-0.1, 0.1, 41):
        low, high = mean - scipy_stats.norm.ppf(0.95) * 0.02, mean + scipy_stats.norm.ppf(0.95) * 0.02
        assert verdict.equivalence(mean, 0.02, 0.08)["equivalent"] == (-0.08 < low and high < 0.08)
    with pytest.raises(ValueError, match="'margin'"):
        verdict.equivalence(0.0, 0.02, 0.0)


def test_the_five_verdicts():
    assert verdict.verdict(0.1, 0.02, 0.001, 32, df=30).startswith("BN higher")
    assert verdict.verdict(-0.1, 0.02, 0.001, 32, df=30).startswith("no-BN higher")
    assert verdict.verdict(0.01, 0.02, 0.6, 32, margin=0.08, df=30) == "equivalent within ±0.08"
    detectable = verdict.detectable_difference(0.05, df=30)
    assert verdict.verdict(0.01, 0.05, 0.8, 32, df=30) == f"no difference detected (could detect ≥ {detectable:.3g})"
    # a margin smaller than the detectable difference: the design cannot say "no difference"
    assert verdict.verdict(0.01, 0.05, 0.8, 32, margin=0.08, df=30).startswith("inconclusive (could detect only")
    assert verdict.verdict(0.5, 0.01, 0.001, 2).startswith("inconclusive (2 pairs")
    assert verdict.verdict(0.1, float("nan"), 0.01, 10).startswith("inconclusive")
    assert verdict.verdict(0.1, 0.01, None, 10).startswith("inconclusive")
    words = {verdict.leading_words(verdict.verdict(*args, margin=0.08, df=30)) for args in [
        (0.1, 0.02, 0.001, 32), (-0.1, 0.02, 0.001, 32), (0.0, 0.02, 0.9, 32), (0.0, 0.05, 0.9, 32)]}
    assert words == {"BN higher", "no-BN higher", "equivalent within ±0.08", "inconclusive"}


def test_detectable_difference_formula_and_power():
    expected = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * 0.01
    assert verdict.detectable_difference(0.01) == pytest.approx(expected) == pytest.approx(0.028016, abs=1e-6)
    # at the alpha a primary verdict uses (Bonferroni level of a family of 9) it is larger
    assert verdict.detectable_difference(0.01, alpha=0.05 / 9) == pytest.approx(
        (scipy_stats.norm.ppf(1 - 0.05 / 18) + scipy_stats.norm.ppf(0.8)) * 0.01)
    with pytest.raises(ValueError, match="'power'"):
        verdict.detectable_difference(0.01, power=1.5)
    # a true difference equal to the detectable one is found in ~80% of designs
    rng = np.random.default_rng(4)
    se = np.mean([verdict.paired_difference(b, n, pools=POOLS)["se"]
                  for b, n in zip(*crossed(rng, 50, (0.0, 0.0))[:2], strict=True)])
    delta = verdict.detectable_difference(se, df=30)
    batch, none, _ = crossed(rng, 1000, (delta, delta))
    hits = np.mean([verdict.paired_difference(b, n, pools=POOLS)["p_value"] < 0.05
                    for b, n in zip(batch, none, strict=True)])
    assert abs(hits - 0.8) <= 0.05, hits


def test_holm_matches_the_textbook_steps_and_skips_untested():
    # sorted p 0.01, 0.03, 0.04 over m = 3: 3 x 0.01, max(0.03, 2 x 0.03), max(0.06, 1 x 0.04)
    assert verdict.holm([0.04, 0.01, None, 0.03, float("nan")]) == pytest.approx([0.06, 0.03, None, 0.06, None])


def _entry(p_value, difference=None, **extra):
    return {"batch": {"mean": 0.5, "ci95": [0.4, 0.6], "n": 16}, "none": {"mean": 0.3, "ci95": [0.2, 0.4], "n": 16},
            "p_value": p_value, "test": "t", "higher_means": "more", "description": "d",
            "comparison": "same_schedule", **({"difference": difference} if difference else {}), **extra}


def test_annotate_families_margins_and_alpha():
    rng = np.random.default_rng(6)
    batch, none, _ = crossed(rng, 1, (0.2, 0.2))
    difference = verdict.paired_difference(batch[0], none[0], pools=POOLS)
    metrics = {"canary_memorization_same_schedule": _entry(difference["p_value"], difference),
               "canary_memorization_matched_fit": _entry(0.03),
               "canary_memorization_matched_fit_annealed": _entry(None),
               "fz_memorization_outliers_same_schedule": _entry(0.2)}
    out = verdict.annotate(metrics, units={"canary_memorization_matched_fit": "seeds"})
    first = out["canary_memorization_same_schedule"]
    assert set(metrics["fz_memorization_outliers_same_schedule"]) <= set(out["fz_memorization_outliers_same_schedule"])
    assert first["unit"] == "models" and first["verdict"].startswith("BN higher") and first["family"] == "primary"
    assert first["equivalence_margin"] == config.EQUIVALENCE_MARGINS["canary_memorization"]
    # two tested primary p-values: Holm, and power at the Bonferroni level 0.05 / 2
    assert out["canary_memorization_matched_fit"]["p_value_holm"] == pytest.approx(max(2 * difference["p_value"], 0.03))
    assert first["alpha"] == 0.025 and first["detectable_difference"] == pytest.approx(
        verdict.detectable_difference(difference["se"], 0.025, df=30))
    assert out["canary_memorization_matched_fit_annealed"]["p_value_holm"] is None
    assert out["canary_memorization_matched_fit_annealed"]["verdict"].startswith("inconclusive")
    secondary = out["fz_memorization_outliers_same_schedule"]
    assert secondary["family"] == "secondary" and secondary["p_value_holm"] is None and secondary["alpha"] == 0.05
    assert all(o["verdict"].startswith(verdict.VERDICTS) for o in out.values())


def test_book_family_spans_chapters_and_ratios_use_the_log_scale():
    ratio = {"batch": {"mean": 2.0, "ci95": [1.8, 2.2], "n": 5}, "none": {"mean": 1.6, "ci95": [1.4, 1.8], "n": 5},
             "p_value": 0.01, "comparison": "same_schedule", "chapter": "influence"}
    table = {"canary_memorization_same_schedule": {**_entry(0.01), "chapter": "memorization"},
             "influence_eval_mode_outlier_inlier_ratio_same_schedule": ratio,
             "mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit": {**_entry(0.02), "chapter": "mia"},
             "mia_lira_auc_outliers_same_schedule": {**_entry(0.001), "chapter": "mia"},
             "theory_value": {"value": 1.0, "chapter": "theory"}}
    out = verdict.book_family_holm(table)
    primary = [name for name, entry in out.items() if entry["family"] == "primary"]
    assert primary == list(table)[:3]
    assert [out[name]["p_value_holm"] for name in primary] == pytest.approx([0.03, 0.03, 0.03])
    assert out["mia_lira_auc_outliers_same_schedule"]["p_value_holm"] is None
    assert out["mia_lira_auc_outliers_same_schedule"]["equivalence_margin"] == 0.05
    assert out["theory_value"]["family"] == "secondary" and "verdict" not in out["theory_value"]
    assert out["influence_eval_mode_outlier_inlier_ratio_same_schedule"]["equivalence_margin"] == pytest.approx(
        math.log(1.25))
    # on the log scale: SEs of log 2 and log 1.6 from their t intervals
    ses = [0.2 / scipy_stats.t.ppf(0.975, 4) / m for m in (2.0, 1.6)]
    assert out["influence_eval_mode_outlier_inlier_ratio_same_schedule"]["detectable_difference"] == pytest.approx(
        verdict.detectable_difference(math.hypot(*ses), 0.05 / 3, df=4))
    assert all(name.startswith(config.PRIMARY_ENDPOINTS) for name in primary)
    # a level of the fit grid is read by the curve band, not counted again in the family
    assert verdict.is_primary("canary_memorization_matched_fit")
    assert not verdict.is_primary("canary_memorization_matched_fit_0p95")
    assert not verdict.is_primary("fz_memorization_outliers_matched_fit")


def test_curve_band_finds_a_difference_where_it_is_and_only_there():
    rng = np.random.default_rng(7)
    levels = np.array([0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99, 1.0])
    truth = np.where(levels >= 0.97, 0.15, 0.0)  # zero on half the grid, positive on the other half
    none = rng.normal(0.3, 0.05, (32, 8))
    batch = none + truth + rng.normal(0, 0.12, (32, 8))
    batch[:3, -1] = np.nan  # three members never reach fit 1.0
    band = verdict.curve_band(batch, none, POOLS, levels)
    assert band["excludes_zero"] == [0.97, 0.98, 0.99, 1.0]
    assert band["n"][-1] == 29 and band["n"][0] == 32
    for point, simultaneous in zip(band["pointwise"], band["simultaneous"], strict=True):
        assert simultaneous[0] < point[0] and point[1] < simultaneous[1]  # wider than pointwise
    with pytest.raises(ValueError, match="'batch'"):
        verdict.curve_band(batch, none, POOLS, levels[:3])


def test_curve_band_covers_the_whole_curve_at_its_level():
    rng = np.random.default_rng(8)
    levels = np.linspace(0.8, 1.0, 6)
    truth = np.linspace(0.0, 0.1, 6)
    n_sims, covered, pointwise_all = 400, 0, 0
    for _ in range(n_sims):
        # correlated along the grid, as one model's curve is
        noise = rng.normal(0, 0.1, (32, 1)) + rng.normal(0, 0.05, (32, 6))
        band = verdict.curve_band(truth + noise, np.zeros((32, 6)), POOLS, levels, n_permutations=500)
        inside = [low <= t <= high for t, (low, high) in zip(truth, band["simultaneous"], strict=True)]
        covered += all(inside)
        pointwise_all += all(low <= t <= high for t, (low, high) in zip(truth, band["pointwise"], strict=True))
    assert 0.92 <= covered / n_sims <= 0.98, covered / n_sims
    assert pointwise_all < covered  # pointwise bands cover the whole curve less often


def test_design_difference_tests_the_difference_of_designs():
    rng = np.random.default_rng(9)
    first = rng.normal(0.05, 0.05, 32)
    same = first + rng.normal(0, 0.01, 32)
    out = verdict.design_difference(first, same, POOLS)
    assert out["p_value"] > 0.05 and out["n"] == 32 and out["df"] == 30
    shifted = verdict.design_difference(first, same - 0.03, POOLS)
    assert shifted["p_value"] < 0.001 and shifted["mean"] == pytest.approx(0.03, abs=0.01)
    with pytest.raises(ValueError, match="'first'"):
        verdict.design_difference(first, first[:5])


def test_pooled_roc_difference_pair_swap_and_jackknife_are_calibrated():
    # no per-pair summary: LiRA-like scores of 10 target pairs x 80 canaries, members shifted by 1 SD in both
    # norms (no true difference), example effects shared by the norms; the TPR at 1% FPR of the pooled ROC
    from bnlib import data, mia, mia_chapter

    rng = np.random.default_rng(11)
    n_targets, n_examples, n_sims = 10, 80, 300
    keep = data.balanced_keep_mask(n_targets, n_examples, seed=1).numpy()
    everything = np.ones(n_examples, dtype=bool)
    swap_rejected = jackknife_rejected = 0
    for _ in range(n_sims):
        example = rng.normal(0, 0.5, n_examples)
        a, b = (mia.pooled_estimate(rng.normal(size=keep.shape) + example + keep, keep, everything) for _ in "ab")
        found = mia_chapter.pooled_pair_difference(a, b, "tpr_at_1pct_fpr", n_permutations=100)
        swap_rejected += found["p_value"] < 0.05
        jackknife_rejected += found["p_value_t"] < 0.05
    # 300 simulations: a rejection rate's Monte Carlo SE is 0.013
    assert 0.02 <= swap_rejected / n_sims <= 0.08, swap_rejected / n_sims
    assert 0.02 <= jackknife_rejected / n_sims <= 0.09, jackknife_rejected / n_sims
    shifted = mia.pooled_estimate(rng.normal(size=keep.shape) + 2.5 * keep, keep, everything)
    found = mia_chapter.pooled_pair_difference(shifted, a, "tpr_at_1pct_fpr", n_permutations=500)
    assert found["p_value"] < 0.01 and found["ci95"][0] > 0 and found["n"] == n_targets


def test_pooled_pair_difference_reads_the_two_pooled_rocs_and_swaps_antisymmetrically():
    from bnlib import data, mia, mia_chapter

    rng = np.random.default_rng(12)
    keep = data.balanced_keep_mask(6, 40, seed=2).numpy()
    mask = np.arange(40) < 30
    a_scores, b_scores = (np.round(rng.normal(size=(6, 40)) + shift * keep, 1) for shift in (1.5, 0.5))  # ties
    a, b = mia.pooled_estimate(a_scores, keep, mask), mia.pooled_estimate(b_scores, keep, mask)
    for metric in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr"):
        found = mia_chapter.pooled_pair_difference(a, b, metric, n_permutations=64)  # all 2^6 swaps
        assert found["mean"] == pytest.approx(a["point"][metric] - b["point"][metric], abs=1e-12)
        flipped = mia_chapter.pooled_pair_difference(b, a, metric, n_permutations=64)
        assert flipped["mean"] == pytest.approx(-found["mean"]) and flipped["p_value"] == found["p_value"]
    # leaving target 0 out of one zoo (it never reached a fit level) pairs only the other five
    partial = mia.pooled_estimate(a_scores[1:], keep[1:], mask)
    partial.update(mia.pooled_scores(a_scores[1:][:, mask], keep[1:][:, mask], np.arange(1, 6)))
    assert mia_chapter.pooled_pair_difference(partial, b, "auc", n_permutations=32)["n"] == 5


def test_the_report_applies_the_book_family_across_chapters():
    from bnlib import report

    summaries = {"memorization": {"config": {"profile": "quick"}, "metrics": {
                     "canary_memorization_same_schedule": _entry(0.02),
                     "fz_memorization_inliers_same_schedule": _entry(0.01)}},
                 "membership_inference": {"config": {"profile": "quick"}, "metrics": {
                     "mia_lira_pooled_tpr_at_1pct_fpr_outliers_same_schedule": _entry(0.04)}}}
    table = report.headline(summaries)
    assert table["canary_memorization_same_schedule"]["p_value_holm"] == pytest.approx(0.04)
    assert table["mia_lira_pooled_tpr_at_1pct_fpr_outliers_same_schedule"]["p_value_holm"] == pytest.approx(0.04)
    assert table["fz_memorization_inliers_same_schedule"]["family"] == "secondary"
    assert table["fz_memorization_inliers_same_schedule"]["p_value_holm"] is None
    assert table["canary_memorization_same_schedule"]["verdict"].startswith("BN higher")


def test_a_tpr_at_zero_false_positives_stands_in_for_a_missing_primary_tpr_at_one_percent():
    """Where the pooled non-members allow fewer than 10 false positives at 1% FPR the row is renamed to the TPR at
    0 false positives; the claim keeps its low-FPR primary endpoint in that comparison, and only there."""
    table = {"mia_lira_pooled_tpr_at_1pct_fpr_outliers_same_schedule": _entry(0.01),
             "mia_lira_pooled_tpr_at_0fp_outliers_same_schedule": _entry(0.02),  # 0.1% renamed: secondary
             "mia_lira_pooled_tpr_at_0fp_outliers_matched_fit": _entry(0.03),  # 1% renamed: the primary row
             "mia_lira_pooled_all_pools_tpr_at_0fp_outliers_matched_fit": _entry(0.04),  # not a primary name
             "canary_memorization_same_schedule": _entry(0.04)}
    assert verdict.zero_fp_stand_ins(table) == ["mia_lira_pooled_tpr_at_0fp_outliers_matched_fit"]
    out = verdict.book_family_holm(table)
    primary = sorted(name for name, entry in out.items() if entry["family"] == "primary")
    assert primary == ["canary_memorization_same_schedule", "mia_lira_pooled_tpr_at_0fp_outliers_matched_fit",
                       "mia_lira_pooled_tpr_at_1pct_fpr_outliers_same_schedule"]
    assert out["mia_lira_pooled_tpr_at_0fp_outliers_same_schedule"]["p_value_holm"] is None
