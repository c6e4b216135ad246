"""Known-answer tests of the membership-inference chapter's pieces (bnlib.mia_chapter, mia_summary, mia_plots) on
synthetic ``measure`` results: zoos whose outlier members score higher by a known shift."""

import dataclasses

import numpy as np
import pytest
from matplotlib import pyplot

from bnlib import chapter, config, metric_registry, mia, mia_chapter, mia_plots, mia_summary, plots, population, zoo

T, N_OUTLIERS, N_INLIERS, B = 8, 40, 400, 200  # targets, pool examples per group, bootstrap resamples
FIT = np.array([0.2, 0.5, 0.8])  # (E,) inlier train accuracy of every target at each checkpoint
ATTACK = "lira_online_global"
PARAMS = mia.ChapterParams(n_bootstrap=B)


def _keep(seed: int = 0) -> np.ndarray:
    """(T, N) complementary pairs, each target a member of exactly half of each group."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(T // 2):
        row = np.concatenate([rng.permutation(n) < n // 2 for n in (N_OUTLIERS, N_INLIERS)])
        rows += [row, ~row]
    return np.array(rows)


KEEP = _keep()
OUTLIER = np.arange(N_OUTLIERS + N_INLIERS) < N_OUTLIERS
GROUPS = {"outliers": OUTLIER, "inliers": ~OUTLIER}
RESAMPLES = {group: mia.Resamples.draw(T, int(mask.sum()), B) for group, mask in GROUPS.items()}


def _stack(estimates: list) -> dict:
    """Estimates at E checkpoints -> one whose arrays have a leading (E,) axis, as ``measure``'s ``fit``."""
    if isinstance(estimates[0], dict):
        return {key: _stack([e[key] for e in estimates]) for key in estimates[0]}
    return np.stack(estimates)


def _measured(shift: float, seed: int, batchnorm: bool) -> dict:
    """A ``mia.measure``-shaped result: every attack's scores are N(0, 1), plus ``shift`` x (fit at the
    checkpoint) for outlier members; the final scores are the last checkpoint's."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(size=(len(FIT), *KEEP.shape))  # (E, T, N)
    scores = noise + shift * FIT[:, None, None] * (KEEP & OUTLIER)
    estimates = [{group: mia.estimate(s, KEEP, mask, RESAMPLES[group]) for group, mask in GROUPS.items()}
                 for s in scores]
    final = estimates[-1]
    pooled = {group: mia.pooled_estimate(scores[-1], KEEP, mask, RESAMPLES[group] if group == "outliers" else None)
              for group, mask in GROUPS.items()}
    return {"attacks": dict.fromkeys(mia.ATTACKS, final), "scores": scores[-1],
            "train_mode": dict.fromkeys(mia.QUERY_MODES[1:], final) if batchnorm else None,
            "train_mode_scores": None,
            "pooled": dict.fromkeys((ATTACK, mia.reference_attack(ATTACK)), pooled),
            "fit": {"epochs": np.arange(1, len(FIT) + 1), "train_accuracy": np.repeat(FIT[:, None], T, 1),
                    **{group: _stack([e[group] for e in estimates]) for group in GROUPS},
                    "scores": scores.astype(np.float32)}}


@pytest.fixture(scope="module")
def measured():
    """BatchNorm: outlier members score higher by 4 x fit; no norm: no membership signal at all."""
    return {"batch": _measured(4.0, 1, True), "none": _measured(0.0, 2, False)}


def _comparison(batch: float, none: float, n: int = T, p_value: float = 0.5) -> dict:
    summary = lambda mean: {"mean": mean, "ci95": [mean - 0.1, mean + 0.1], "n": n}  # noqa: E731
    return {"batch": summary(batch), "none": summary(none),
            "diff": {"mean": batch - none, "ci95": [batch - none - 0.1, batch - none + 0.1], "n": n,
                     "p_value": p_value, "se": 0.05, "unit": "models"}}


# ----------------------------------------------------------------------------- comparisons

def test_compare_is_each_norms_interval_and_the_paired_difference(measured):
    pairs = {norm: mia.pair(m["attacks"][ATTACK]["outliers"], "auc") for norm, m in measured.items()}
    compared = mia_chapter.compare(pairs, RESAMPLES["outliers"])
    assert compared["batch"] == mia.interval(*pairs["batch"], RESAMPLES["outliers"])
    assert compared["diff"]["mean"] == pytest.approx(pairs["batch"][0].mean() - pairs["none"][0].mean())
    assert compared["diff"]["mean"] > 0.3 and compared["diff"]["p_value"] < 0.01  # a shift of 4 SD on members
    same = mia_chapter.compare({"batch": pairs["batch"], "none": pairs["batch"]}, RESAMPLES["outliers"])
    assert same["diff"]["mean"] == 0 and same["diff"]["p_value"] == 1.0


def test_compare_pooled_reads_the_pooled_roc(measured):
    pooled = {norm: m["pooled"][ATTACK]["outliers"] for norm, m in measured.items()}
    compared = mia_chapter.compare_pooled(pooled, "tpr_at_1pct_fpr")
    assert compared["none"] == mia.pooled_interval(pooled["none"], "tpr_at_1pct_fpr")
    assert compared["batch"]["n"] == T and compared["diff"]["mean"] == pytest.approx(
        pooled["batch"]["point"]["tpr_at_1pct_fpr"] - pooled["none"]["point"]["tpr_at_1pct_fpr"])


def test_same_schedule_attack_and_pooled_comparisons_cover_every_metric_and_group(measured):
    same = mia_chapter.same_schedule(measured, ATTACK, RESAMPLES)
    assert set(same) == {(metric, group) for metric in mia.METRICS for group in GROUPS}
    assert mia.direction(same["auc", "outliers"]["diff"]) == "higher with BatchNorm"
    assert mia.direction(same["auc", "inliers"]["diff"]) == "not significantly different"  # no signal on inliers
    attacks = mia_chapter.attack_comparisons(measured, ("loss", "rmia_online"), RESAMPLES["outliers"])
    assert attacks["loss"] == same["auc", "outliers"]  # the synthetic attacks share their scores
    pooled = mia_chapter.pooled_comparisons(measured)
    assert set(pooled) == {(attack, metric) for attack in (ATTACK, mia.reference_attack(ATTACK))
                           for metric in mia_chapter.POOLED_METRICS}


def test_matched_comparisons_read_each_target_at_the_level(measured):
    fits = mia_chapter.checkpoint_fits(config.load("smoke", n_models=T), PARAMS, measured)
    assert fits["batch"] is measured["batch"]["fit"]  # no long schedule: the measured fits themselves
    matched = mia_chapter.matched_comparisons(fits, 0.5, KEEP, OUTLIER, RESAMPLES["outliers"])  # checkpoint 1
    assert set(matched) == {"auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", "tpr_at_0fp", "pooled_tpr_at_1pct_fpr",
                            "pooled_tpr_at_0.1pct_fpr", "pooled_tpr_at_0fp"}
    assert matched["auc"]["batch"]["mean"] == pytest.approx(fits["batch"]["outliers"]["point"]["auc"][1].mean())
    at_checkpoint = mia.pooled_estimate(fits["batch"]["scores"][1].astype(float), KEEP, OUTLIER)
    assert matched["pooled_tpr_at_1pct_fpr"]["batch"]["mean"] == pytest.approx(
        at_checkpoint["point"]["tpr_at_1pct_fpr"])
    unreachable = mia_chapter.matched_comparisons(fits, 0.9, KEEP, OUTLIER, RESAMPLES["outliers"])
    assert unreachable["auc"]["batch"]["n"] == 0 and unreachable["auc"]["diff"]["n"] == 0


def test_annealed_comparisons_query_modes_and_all_pools(measured):
    annealed = mia_chapter.annealed_comparisons(measured, ATTACK, RESAMPLES["outliers"])
    assert set(annealed) == {"auc", "tpr_at_1pct_fpr", "tpr_at_0fp", "pooled_auc", "pooled_tpr_at_1pct_fpr",
                             "pooled_tpr_at_0fp"}
    assert (mia_chapter.annealed_lengths({"batch": 0.0078125, "none": 0.05}, 30)
            == "both 30 epochs; peak learning rate batch 0.00781, none 0.05")
    modes = mia_chapter.query_modes(measured["batch"], ATTACK)
    assert list(modes) == ["eval", "train_shuffled", "train_pool_order"]
    parts = {norm: [(m["scores"], KEEP, OUTLIER)] * 2 for norm, m in measured.items()}
    all_pools = {norm: mia.pooled_over_pools(p, n_bootstrap=50) for norm, p in parts.items()}
    pools_low = mia_chapter.all_pools_comparisons(all_pools)
    assert set(pools_low) == {"tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0fp"}
    assert pools_low["tpr_at_1pct_fpr"]["batch"]["n"] == 2 * T  # every pool's targets


# ----------------------------------------------------------------------------- tables

def _rows(table: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]


def test_tables_have_a_row_per_norm_group_attack_and_mode(measured):
    rows = _rows(mia_chapter.headline_table(measured, ATTACK, RESAMPLES))
    assert [row[:2] for row in rows] == [["BatchNorm", "outliers"], ["BatchNorm", "inliers"], ["no norm", "outliers"],
                                         ["no norm", "inliers"]]
    assert [row[-1] for row in rows] == [str(N_OUTLIERS // 2), str(N_INLIERS // 2)] * 2  # non-members per target
    interval = mia.interval(*mia.pair(measured["batch"]["attacks"][ATTACK]["outliers"], "auc"), RESAMPLES["outliers"])
    assert rows[0][2] == chapter.interval(interval)
    attacks = _rows(mia_chapter.attacks_table(measured, RESAMPLES))
    assert [row[0] for row in attacks] == [f"`{a}`" for a in mia.ATTACKS] and len(attacks[0]) == 1 + 3 * 2
    pooled = _rows(mia_chapter.pooled_table(measured, mia_chapter.pooled_comparisons(measured), RESAMPLES))
    assert [row[:2] for row in pooled] == [[f"`{a}`", n] for a in (ATTACK, mia.reference_attack(ATTACK))
                                           for n in ("BatchNorm", "no norm")]
    modes = _rows(mia_chapter.query_mode_table(mia_chapter.query_modes(measured["batch"], ATTACK), RESAMPLES))
    assert [row[:2] for row in modes] == [[f"`{m}`", g] for m in mia.QUERY_MODES for g in GROUPS]


# ----------------------------------------------------------------------------- glue

def test_comparison_glue_names_and_values():
    values = mia_chapter.comparison_glue("same_auc_outliers", _comparison(0.8, 0.6, p_value=0.001))
    assert values["same_auc_outliers_batch"] == 0.8 and values["same_auc_outliers_none_hi"] == pytest.approx(0.7)
    assert values["same_auc_outliers_direction"] == "higher with BatchNorm"
    assert values["same_auc_outliers_verdict"].startswith(
        "+0.200 (95% CI [+0.100, +0.300], n = 8; paired t over target pairs")
    short = mia_chapter.comparison_glue("ref", _comparison(0.5, 0.6), intervals=False, verdict=False)
    assert set(short) == {"ref_batch", "ref_none", "ref_direction"}


def test_setup_same_schedule_attack_and_pooled_glue(measured):
    cfg = config.load("smoke", n_models=T)
    setup = mia_chapter.setup_glue(cfg, PARAMS, measured, GROUPS, {"all_others": 0.4, "balanced": 0.5})
    assert setup["n_outliers"] == N_OUTLIERS and setup["negatives_outliers"] == N_OUTLIERS // 2
    assert setup["negatives_inliers"] == 200 and setup["fp_1pct_inliers"] == 2 and setup["fp_01pct_inliers"] == 0
    assert setup["pooled_negatives_outliers"] == T * N_OUTLIERS // 2 and setup["fp_01pct_pooled_outliers"] == 0
    assert setup["n_shadows_side"] == T // 2 - 1 and setup["null_auc_balanced"] == 0.5
    same = mia_chapter.same_schedule_glue(mia_chapter.same_schedule(measured, ATTACK, RESAMPLES))
    assert len(same) == len(mia.METRICS) * len(GROUPS) * (3 * 2 + 2) and "same_bacc_inliers_none_lo" in same
    attacks = mia_chapter.attacks_glue(measured)
    assert attacks["n_attacks"] == len(mia.ATTACKS) == attacks["n_attacks_agree"]  # BN's AUC higher for all
    assert attacks["attack_auc_loss_batch"] == pytest.approx(
        measured["batch"]["attacks"]["loss"]["outliers"]["point"]["auc"].mean())
    pooled = mia_chapter.pooled_glue(mia_chapter.pooled_comparisons(measured), ATTACK)
    assert pooled["reference_attack_name"] == "lira_reference_online_global"
    expected = {"pooled_tpr1_outliers_batch_lo", "ref_pooled_auc_outliers_verdict", "pooled_tpr01_outliers_direction"}
    assert expected <= set(pooled)


def test_matched_fit_level_and_query_mode_glue(measured):
    matched = mia_chapter.matched_glue(mia_chapter.matched_comparisons(
        {n: m["fit"] for n, m in measured.items()}, 0.5, KEEP, OUTLIER, RESAMPLES["outliers"]))
    assert {"mf_auc_batch_lo", "mf_tpr01_verdict", "mf_pooled_tpr1_none", "mf_pooled_tpr01_direction"} <= set(matched)
    assert "mf_pooled_tpr1_verdict" not in matched and "mf_pooled_tpr1_batch_lo" not in matched
    cfg = config.load("smoke", n_models=T)
    fits = {n: m["fit"] for n, m in measured.items()}
    level = mia_chapter.fit_level_glue(cfg, PARAMS, fits, 0.5)
    assert level["epochs_to_level_batch"] == 2.0 and level["final_fit_none"] == pytest.approx(0.8)
    assert level["checkpoint_epochs"] == "1, 2, 3" and level["n_checkpoints"] == 3
    assert level["matched_fit_note"].startswith("This level is well below BatchNorm's final fit (0.800)")
    assert mia_chapter.fit_level_glue(cfg, PARAMS, fits, 0.78)["matched_fit_note"].startswith("This level is close")
    assert level["matched_level_how"].startswith("the headline fit level declared in the configuration")
    longer = mia_chapter.fit_level_glue(cfg, dataclasses.replace(PARAMS, long_schedule_factor=3,
                                                                 matched_fit_level=0.5), fits, 0.5)
    assert longer["matched_level_how"] == "as set by the parameter matched_fit_level"
    assert longer["long_schedule_note"].startswith(f"The no-BN zoo was also trained 3× as long ({3 * cfg.epochs} ")
    modes = mia_chapter.query_mode_glue(mia_chapter.query_modes(measured["batch"], ATTACK), RESAMPLES)
    assert len(modes) == 2 * len(GROUPS) * 2 * 2  # train modes x groups x (AUC, TPR at 1%) x (value, verdict)
    eval_auc = measured["batch"]["attacks"][ATTACK]["outliers"]["point"]["auc"].mean()
    assert modes["train_shuffled_auc_outliers"] == pytest.approx(eval_auc)  # the synthetic train modes equal eval
    assert modes["train_pool_order_tpr1_inliers_verdict"].startswith("+0.000")


# ----------------------------------------------------------------------------- the summary

def _findings(matched_n: int = T) -> mia_summary.Findings:
    strong, none = _comparison(0.9, 0.5, p_value=0.001), _comparison(0.5, 0.5, p_value=0.9)
    return mia_summary.Findings(
        same={(m, g): strong if g == "outliers" else none for m in mia.METRICS for g in GROUPS},
        attacks_auc={"loss": strong, "rmia_online": none, "lira_reference_online_global": strong},
        pooled={(a, m): strong for a in (ATTACK, "lira_reference_online_global") for m in mia_chapter.POOLED_METRICS},
        all_pools={m: strong for m in ("tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", mia.ZERO_FP)},
        matched={m: _comparison(0.6, 0.5, n=matched_n, p_value=0.4) for m in (
            "auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", mia.ZERO_FP, "pooled_tpr_at_1pct_fpr",
            "pooled_tpr_at_0.1pct_fpr", "pooled_" + mia.ZERO_FP)},
        annealed={m: none for m in ("auc", "tpr_at_1pct_fpr", mia.ZERO_FP, "pooled_auc", "pooled_tpr_at_1pct_fpr",
                                    "pooled_" + mia.ZERO_FP)},
        # 20 non-members per target allow no false positive at 1% FPR; 1,600 pooled allow 16 at 1% but 1 at 0.1%
        level=0.5, annealed_epochs="both 5 epochs; peak learning rate batch 0.01, none 0.05", negatives=20,
        pooled_negatives=1600, all_pools_targets=16,
        all_pools_negatives=3200)


def test_headline_metrics_names_verdicts_and_units():
    cfg = config.load("smoke", n_models=T)
    metrics = mia_summary.headline_metrics(cfg, PARAMS, _findings())
    assert len(metrics) == 18 and all(name.startswith("mia_") for name in metrics)
    assert mia_summary.family(ATTACK) == "lira" and mia_summary.family("loss") == "loss"
    headline = mia_summary.headline_family(ATTACK)
    assert set(headline) <= set(metrics)
    for name, entry in metrics.items():
        assert entry["unit"] == "models" and entry["higher_means"] == "more membership leakage"
        assert (entry["p_value_holm"] is not None) == (name in headline), name
        assert entry["comparison"] in config.COMPARISONS
    assert metrics["mia_lira_auc_outliers_same_schedule"]["verdict"].startswith("BN higher")
    # an SE of 0.05 detects only 2.8 x 0.05 = 0.14, more than the AUC's equivalence margin 0.05: inconclusive
    assert metrics["mia_lira_auc_inliers_same_schedule"]["verdict"].startswith(
        "inconclusive (could detect only ≥ 0.14, more than the margin ±0.05)")
    assert metrics["mia_lira_auc_outliers_matched_fit"]["verdict"].startswith("inconclusive (could detect only")
    assert metrics["mia_lira_auc_outliers_matched_fit"]["equivalence_margin"] == 0.05
    description = metrics["mia_lira_tpr_at_0fp_outliers_same_schedule"]["description"]
    assert "about 20 non-members per target" in description and description.startswith("TPR at 0 false positives")
    assert "mia_lira_tpr_at_1pct_fpr_outliers_same_schedule" not in metrics  # too few non-members to name 1% FPR
    assert "pooled over 8 targets, 1600 outlier non-members" in metrics[
        "mia_lira_pooled_tpr_at_1pct_fpr_outliers_same_schedule"]["description"]
    assert {"mia_lira_pooled_tpr_at_0fp_outliers_same_schedule",
            "mia_lira_pooled_all_pools_tpr_at_0fp_outliers_same_schedule"} <= set(metrics)
    assert "mia_lira_pooled_tpr_at_0.1pct_fpr_outliers_same_schedule" not in metrics
    assert "both 5 epochs; peak learning rate batch 0.01, none 0.05" in metrics[
        "mia_lira_auc_outliers_equal_exposure"]["description"]
    all_pools = metrics["mia_lira_pooled_all_pools_tpr_at_1pct_fpr_outliers_same_schedule"]
    assert "16 targets of all 2 data pools (3200 outlier non-members)" in all_pools["description"]
    assert all_pools["test"].endswith(", stratified by data pool")
    # ... and with no target at the level it is inconclusive for want of pairs
    unmatched = mia_summary.headline_metrics(cfg, PARAMS, _findings(matched_n=0))
    assert unmatched["mia_lira_auc_outliers_matched_fit"]["verdict"].startswith("inconclusive (0 pairs")


def test_verdict_glue_and_the_summary_table():
    cfg = config.load("smoke", n_models=T)
    metrics = mia_summary.headline_metrics(cfg, PARAMS, _findings(matched_n=2))
    words = mia_summary.verdict_glue(metrics, ATTACK)
    assert words["verdict_auc_same"] == metrics["mia_lira_auc_outliers_same_schedule"]["verdict"]
    assert words["annealed_auc_sentence"].startswith(metrics["mia_lira_auc_outliers_equal_exposure"]["verdict"])
    assert len(words) == 8
    rows = _rows(mia_summary.metrics_table(metrics, cfg.norms))
    assert [row[0] for row in rows] == [f"{metric_registry.name(name)} `{name}`" for name in metrics]
    same = rows[0]
    assert same[2] == "0.900 [0.800, 1.000]" and same[4] == "0.001" and same[-2] == "8 models"
    matched = rows[list(metrics).index("mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit")]
    assert matched[2] == "0.600 (2 models)" and matched[5] != ""  # too few targets for an interval; Holm-adjusted
    assert rows[list(metrics).index("mia_lira_auc_outliers_matched_fit")][5] == ""  # secondary: not in the family


# ----------------------------------------------------------------------------- figures

def test_pooled_roc_curves_one_panel_per_group_down_to_one_pooled_false_positive(measured):
    fig = mia_plots.pooled_roc_curves(measured, KEEP, GROUPS, ATTACK)
    assert fig.get_size_inches()[0] == pytest.approx(plots.COLUMN_INCHES) and len(fig.axes) == 2
    for ax, group in zip(fig.axes, GROUPS, strict=True):
        assert ax.get_xscale() == ax.get_yscale() == "log" and len(ax.lines) == 3  # two norms and chance
        negatives = int(GROUPS[group].sum()) // 2 * T
        assert ax.get_xlim()[0] == pytest.approx(1 / negatives) and ax.get_title().startswith(f"{group}: {ATTACK}")
    fpr, tpr = mia.pooled_roc(measured["batch"]["scores"], KEEP, OUTLIER)
    batch = fig.axes[0].lines[0]
    assert np.array_equal(batch.get_xdata(), fpr) and np.array_equal(batch.get_ydata(), tpr)
    pyplot.close(fig)


def test_fit_curves_show_each_checkpoint_with_its_interval_and_the_level(measured):
    fits = {norm: m["fit"] for norm, m in measured.items()}
    fig = mia_plots.fit_curves(fits, 0.5, RESAMPLES["outliers"])
    auc = fig.axes[0]
    assert len(auc.containers) == 2  # one errorbar per norm
    line = auc.containers[0].lines[0]
    assert np.allclose(line.get_xdata(), FIT)
    assert np.allclose(line.get_ydata(), fits["batch"]["outliers"]["point"]["auc"].mean(1))
    assert any(np.allclose(other.get_xdata(), 0.5) for other in auc.lines)  # the matched level
    assert auc.get_legend_handles_labels()[1] == ["BatchNorm (3 epochs)", "no norm (3 epochs)"]
    pyplot.close(fig)


# ----------------------------------------------------------------------------- on real (smoke) zoos

def test_zoo_accuracy_glue_and_pooling_over_a_population(smoke_cfg):
    zoos = {norm: zoo.train_zoo(smoke_cfg, norm, progress=False) for norm in ("batch", "none")}
    accuracy = mia_chapter.zoo_accuracy_glue(zoos)
    assert set(accuracy) == {"zoo_test_batch", "zoo_test_none", "zoo_fit_batch", "zoo_fit_none"}
    assert accuracy["zoo_fit_none"] == pytest.approx(float(zoos["none"].train_accuracy().mean()))
    assert all(0 <= value <= 1 for value in accuracy.values())
    populations = {norm: population.Population(norm=norm, epochs=smoke_cfg.epochs, pools=(smoke_cfg.seeds[0],),
                                               zoos=[trained], curves=[]) for norm, trained in zoos.items()}
    pooled = mia_chapter.pooled_over_population(populations, smoke_cfg, ATTACK, n_bootstrap=20)
    for norm, trained in zoos.items():  # one pool: the ROC of its targets pooled
        scores = mia.attack_scores(mia.signals_of(trained, smoke_cfg), ATTACK)
        alone = mia.pooled_estimate(scores, trained.keep.numpy(), trained.is_outlier.numpy())
        assert pooled[norm]["point"] == alone["point"] and pooled[norm]["n_targets"] == smoke_cfg.n_models
        assert pooled[norm]["resampled"]["auc"].shape == (20,)
