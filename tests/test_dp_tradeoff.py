"""The trade-off of the "what to do" chapter (bnlib.dp_tradeoff): measurements, Pareto fronts, the table, the
figure, the values the prose quotes and the summary, on small synthetic inputs with known answers."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlib import config, dp, dp_tradeoff, plots


def _stat(mean: float, half: float = 0.01, n: int = 4) -> dict:
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def _row(key: str, setting: str, norm: str, accuracy: float, memorization: float, tpr: float, seconds: float,
         epsilon: float | None = None, noise: float | None = None, n_negatives: int = 40, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    per_model = {"test_accuracy": accuracy + rng.normal(0, 0.002, 4), "canary_memorization":
                 memorization + rng.normal(0, 0.002, 4), "lira_auc": 0.5 + tpr + rng.normal(0, 0.002, 4)}
    keep = np.zeros((4, 20), bool)
    keep[::2, :10], keep[1::2, 10:] = True, True
    scores = rng.normal(size=(4, 20)) + 4 * tpr * keep
    private = epsilon is not None
    return {"key": key, "setting": setting, "label": setting if not private else f"{setting}, ε = {epsilon:.2g}",
            "norm": norm, "epsilon": epsilon, "epsilons": {"rdp": epsilon, "prv": 0.9 * epsilon} if private else None,
            "noise_multiplier": noise, "delta": 1e-5 if private else None, "dp_lr": 0.5 if private else None,
            "sample_rate": 0.2 if private else None, "steps": 10 if private else None, "target_epsilon": None,
            "tuning": {"grid": [0.2, 0.5, 1.0], "mean": [0.5, 0.6, 0.55], "chosen": 0.5, "n_tuning_models": 1}
            if private else None,
            "n_models": 4, "n_shadow_models": 2, "test_accuracy": _stat(accuracy),
            "canary_memorization": _stat(memorization), "lira_auc": _stat(0.5 + tpr),
            "lira_tpr": {**_stat(tpr), "n_negatives": n_negatives}, "seconds_per_model": seconds,
            "per_model": {k: [float(x) for x in v] for k, v in per_model.items()}, "lira_outliers": (scores, keep)}


def _rows(n_bootstrap: int = 200) -> list[dict]:
    rows = [_row("batch", "BatchNorm", "batch", 0.80, 0.30, 0.20, 2.0, n_negatives=160),
            _row("none", "no norm", "none", 0.70, 0.10, 0.05, 1.0, n_negatives=160, seed=1),
            _row("group", "GroupNorm", "group", 0.75, 0.20, 0.10, 1.5, seed=2),
            _row("group_dp_sgd_noise_1", "GroupNorm + DP-SGD, σ = 1", "group", 0.60, 0.05, 0.02, 6.0, epsilon=8.0,
                 noise=1.0, seed=3),
            _row("group_dp_sgd_noise_4", "GroupNorm + DP-SGD, σ = 4", "group", 0.40, 0.00, 0.03, 5.0, epsilon=0.5,
                 noise=4.0, seed=4)]
    return dp_tradeoff.mark_pareto_fronts(rows, 0.1, n_bootstrap)


# ----------------------------------------------------------------------------- measurements

def test_canary_memorization_known_answer():
    # 2 models, 4 outliers + 2 inliers; model 0 gets its IN outliers right and its OUT ones wrong
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    is_outlier = torch.tensor([True, True, True, True, False, False])
    keep = torch.tensor([[True, True, False, False, True, False], [False, False, True, True, False, True]])
    predictions = torch.tensor([[0, 1, 9, 9, 4, 5], [0, 9, 2, 3, 4, 5]])
    logits = F.one_hot(predictions, 10).float()
    memorization = dp_tradeoff.canary_memorization(keep, logits, labels, is_outlier)
    np.testing.assert_allclose(memorization, [1.0 - 0.0, 1.0 - 0.5])


def test_pooled_tpr_known_answer_and_weights_equal_repetition():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    is_member = np.array([1, 1, 0, 1, 0, 0, 1, 0], bool)
    assert dp_tradeoff.pooled_tpr(scores, is_member, 0.0) == pytest.approx(0.5)
    assert dp_tradeoff.pooled_tpr(scores, is_member, 0.25) == pytest.approx(0.75)
    weights = np.array([2, 1, 1, 0, 3, 1, 1, 1])
    repeated = np.repeat(np.arange(8), weights)
    assert dp_tradeoff.pooled_tpr(scores, is_member, 0.2, weights) == pytest.approx(
        dp_tradeoff.pooled_tpr(scores[repeated], is_member[repeated], 0.2))


def test_pooled_tpr_interval_counts_negatives_and_brackets_the_point():
    rng = np.random.default_rng(0)
    keep = np.zeros((4, 50), bool)
    keep[:2, :25], keep[2:, 25:] = True, True
    scores = rng.normal(size=(4, 50)) + 2.0 * keep
    mask = np.ones(50, bool)
    result = dp_tradeoff.pooled_tpr_interval(scores, keep, mask, 0.1, n_bootstrap=200)
    assert result["n"] == 4 and result["n_negatives"] == 100
    assert result["ci95"][0] <= result["mean"] <= result["ci95"][1]


def test_pareto_front_known_answer():
    accuracy = np.array([0.9, 0.8, 0.85, 0.7, 0.9])
    leakage = np.array([0.5, 0.1, 0.3, 0.2, 0.6])
    np.testing.assert_array_equal(dp_tradeoff.pareto_front(accuracy, leakage), [True, True, True, False, False])



def test_mark_pareto_fronts_known_answer():
    rows = _rows()
    # accuracy against memorization: nothing beats BN's accuracy, none beats 0.0 memorization; none (0.70, 0.10)
    # is beaten by nobody (group has more accuracy but more memorization), group neither, DP at 8 neither
    assert [r["pareto_memorization"] for r in rows] == [True, True, True, True, True]
    # against the TPR: noise 4 (0.40, 0.03) is beaten by noise 1 (0.60, 0.02)
    assert [r["pareto_lira"] for r in rows] == [True, True, True, True, False]


def test_table_markdown_known_text():
    rows = _rows()
    text = dp_tradeoff.table_markdown(rows[:1] + rows[-1:], low_fpr=0.01)
    lines = text.splitlines()
    assert lines[0] == ("| setting | models (shadows) | test accuracy | canary memorization | LiRA TPR at 0.01 FPR "
                        "(outlier negatives) | ε RDP / PRV at δ (σ, lr) | P(front): memorization / LiRA "
                        "| s per model |")
    assert lines[2].startswith("| BatchNorm | 4 (2) | 0.800 [0.790, 0.810] | 0.300 [0.290, 0.310] | "
                               "0.200 [0.190, 0.210] (160) | – | ")
    assert "| 0.5 / 0.45 at 1e-05 (σ = 4, lr = 0.5) |" in lines[3]
    rows[0]["test_accuracy"]["n"] = 2  # too few replicates for an interval: said, not drawn
    assert "| 0.800 (2 models) |" in dp_tradeoff.table_markdown(rows[:1], low_fpr=0.01)


# ----------------------------------------------------------------------------- front probabilities

def test_front_probability_is_one_for_a_setting_that_dominates_by_a_wide_margin():
    rng = np.random.default_rng(0)
    accuracy = np.stack([0.9 + rng.normal(0, 0.01, 500), 0.5 + rng.normal(0, 0.01, 500)], axis=1)
    leakage = np.stack([0.1 + rng.normal(0, 0.01, 500), 0.5 + rng.normal(0, 0.01, 500)], axis=1)
    np.testing.assert_allclose(dp_tradeoff.front_probability(accuracy, leakage), [1.0, 0.0])


def test_front_probability_is_near_one_half_for_two_identical_settings():
    # same accuracy, leakage from one distribution: in each draw the one with less leakage holds the front
    rng = np.random.default_rng(1)
    accuracy = np.full((2000, 2), 0.8)
    leakage = rng.normal(0.3, 0.05, (2000, 2))
    np.testing.assert_allclose(dp_tradeoff.front_probability(accuracy, leakage), [0.5, 0.5], atol=0.04)


def test_front_probabilities_from_rows_on_synthetic_models():
    # identical models in two settings (every per-model value equal): both always on the front together;
    # a setting that beats both on both axes by a wide margin pushes them off it
    base = _row("a", "A", "group", 0.7, 0.3, 0.2, 1.0, seed=5)
    twin = {**base, "key": "b", "setting": "B"}
    probabilities = dp_tradeoff.front_probabilities([base, twin], 0.1, 200)
    np.testing.assert_allclose(probabilities["memorization"], [1.0, 1.0])
    best = _row("c", "C", "none", 0.95, 0.0, 0.0, 1.0, seed=6)
    probabilities = dp_tradeoff.front_probabilities([base, twin, best], 0.1, 200)
    np.testing.assert_allclose(probabilities["memorization"], [0.0, 0.0, 1.0])
    rows = dp_tradeoff.mark_pareto_fronts([base, twin, best], 0.1, 100)
    assert rows[2]["front_probability_memorization"] == 1.0 and rows[0]["front_probability_memorization"] == 0.0
    with pytest.raises(ValueError, match="model counts"):
        dp_tradeoff.front_probabilities([base, {**best, "n_models": 8}], 0.1, 10)


def test_front_text_lists_only_settings_with_a_high_probability():
    rows = _rows()
    for row, probability in zip(rows, (0.95, 0.5, 0.1, 1.0, 0.3), strict=True):
        row["front_probability_lira"] = probability
    assert dp_tradeoff.front_text(rows, "lira", 0.9) == "BatchNorm (0.95), GroupNorm + DP-SGD, σ = 1 (ε = 8) (1.00)"
    assert dp_tradeoff.front_text(rows, "lira", 0.2, 0.9) == ("no norm (0.50), "
                                                              "GroupNorm + DP-SGD, σ = 4 (ε = 0.5) (0.30)")
    assert dp_tradeoff.front_text(rows, "lira", 0.99, 0.995) == "none"


# ----------------------------------------------------------------------------- paired contrasts

def test_paired_contrast_known_answers():
    from bnlib import verdict

    rng = np.random.default_rng(0)
    second = rng.normal(0.5, 0.1, 16)
    found = dp_tradeoff.paired_contrast(second + 0.2 + rng.normal(0, 0.01, 16), second, ("GroupNorm", "GN + DP"))
    assert found["verdict_words"] == "BN higher" and found["verdict_text"].startswith("GroupNorm higher")
    assert found["n"] == 16 and found["unit"] == "model pairs" and found["mean"] == pytest.approx(0.2, abs=0.01)
    d = found["mean"]
    assert found["ci95"][0] < d < found["ci95"][1]
    lower = dp_tradeoff.paired_contrast(second, second + 0.2 + rng.normal(0, 0.01, 16), ("GroupNorm", "GN + DP"))
    assert lower["verdict_text"].startswith("GN + DP higher")
    same = dp_tradeoff.paired_contrast(second + rng.normal(0, 0.01, 16), second, ("A", "B"))
    assert same["verdict_words"] in verdict.VERDICTS
    assert dp_tradeoff.paired_contrast(second, second)["p_value"] == 1.0
    with pytest.raises(ValueError, match="'first'"):
        dp_tradeoff.paired_contrast(np.zeros(3), np.zeros(4))


def test_paired_contrast_p_value_is_scipys_paired_t_test():
    from scipy import stats as scipy_stats

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=12), rng.normal(size=12)
    assert dp_tradeoff.paired_contrast(a, b)["p_value"] == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)


def test_contrasts_pair_each_defence_with_bn_and_groupnorm_with_each_dp_setting():
    found = dp_tradeoff.contrasts(_rows())
    assert list(found) == ["batch_vs_none", "batch_vs_group", "batch_vs_group_dp_sgd_noise_1",
                           "batch_vs_group_dp_sgd_noise_4", "group_vs_group_dp_sgd_noise_1",
                           "group_vs_group_dp_sgd_noise_4"]
    memorization = found["group_vs_group_dp_sgd_noise_1"]["canary_memorization"]
    assert memorization["mean"] == pytest.approx(0.15, abs=0.01) and memorization["verdict_words"] == "BN higher"
    assert memorization["verdict_text"].startswith("GroupNorm higher")


# ----------------------------------------------------------------------------- what epsilon promises

def test_tpr_bound_known_answers():
    assert dp_tradeoff.tpr_bound(0.0, 0.0, 0.01) == pytest.approx(0.01)  # no information: TPR = FPR
    assert dp_tradeoff.tpr_bound(1.0, 1e-5, 0.01) == pytest.approx(np.e * 0.01 + 1e-5)
    assert dp_tradeoff.tpr_bound(17.0, 1e-5, 0.01) == pytest.approx(1.0, abs=1e-6)
    assert "promises nothing" in dp_tradeoff.promise_sentence(17.0, 1e-5, 0.01, 0.1)
    assert "real promise" in dp_tradeoff.promise_sentence(0.5, 1e-5, 0.01, 0.01)


def test_large_batch_at_equal_steps_at_quick():
    cfg, params = config.load("quick", extras=dp.ChapterParams)
    large = dp_tradeoff.large_batch_schedule(cfg, params)
    # n = 1300: batch 128 takes 10 steps an epoch, batch 256 takes 5, so twice the epochs for the same steps
    steps = 10 * cfg.epochs
    assert (large["batch_size"], large["epochs"], large["steps"], large["base_steps"]) == (256, 2 * cfg.epochs, steps,
                                                                                         steps)
    assert large["lr"] == pytest.approx(cfg.lr * 2)  # linear rule
    _, sqrt_params = config.load("quick", extras=dp.ChapterParams, large_batch_lr_rule="sqrt")
    assert dp_tradeoff.large_batch_schedule(cfg, sqrt_params)["lr"] == pytest.approx(cfg.lr * np.sqrt(2))


def test_group_counts_ours_and_opacus_fix():
    cfg, _ = config.load("quick", extras=dp.ChapterParams)
    counts = dp_tradeoff.group_counts(cfg)
    assert counts["ours"] == [8, 8, 8] and counts["opacus_fix"] == [16, 32, 32]  # width 16: 16, 32, 64 channels


def test_chapter_values_known_answers():
    _, params = config.load("smoke", extras=dp.ChapterParams)
    rows = _rows()
    values = dp_tradeoff.chapter_values(rows, params, zoo_models=4)
    assert values["accountant"] == "RDP" and values["n_dp_settings"] == 2 and values["zoo_models"] == 4
    assert values["eps_low"] == 0.5 and values["eps_high"] == 8.0 and values["delta_used"] == 1e-5
    assert values["eps_high_prv"] == pytest.approx(7.2)
    assert values["dp_low_acc"] == 0.40 and values["dp_high_mem"] == 0.05 and values["group_tpr"] == 0.10
    assert values["bn_seconds"] == 2.0 and values["dp_cost_ratio"] == pytest.approx(6.0 / 1.5)
    assert values["shadow_models"] == "2" and values["equal_attack"] == "the same"
    assert values["front_memorization"] == dp_tradeoff.front_text(rows, "memorization", params.front_high)
    assert "GroupNorm higher" in values["group_dp_contrasts"]
    assert "chose 0.5" in values["tuning_text"] and "promises nothing" in values["promise_high"]
    with pytest.raises(ValueError, match="DP-SGD setting"):
        dp_tradeoff.chapter_values(rows[:3], params, zoo_models=4)


def test_tradeoff_figure_is_column_wide_and_readable():
    fig = dp_tradeoff.tradeoff_figure(_rows(), low_fpr=0.01)
    assert len(fig.axes) == 2 and fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES)
    texts = [t for ax in fig.axes for t in ax.texts] + fig.legends[0].get_texts()
    assert len(fig.legends[0].get_texts()) == 6 and min(t.get_fontsize() for t in texts) >= plots.MIN_FONT
    assert "0.01 FPR" in fig.axes[1].get_ylabel()


def test_settings_in_display_order_at_smoke():
    cfg, params = config.load("smoke", extras=dp.ChapterParams)
    found = dp_tradeoff.settings(cfg, params)
    assert [s.key for s in found] == ["batch", "none", "group", "batch_strong_weight_decay",
                                      "batch_large_batch_equal_steps", "group_dp_sgd_noise_1", "group_dp_sgd_noise_4",
                                      "group_dp_sgd_epsilon_8"]
    assert dict(found[4].overrides) == {"batch_size": 64, "epochs": 4, "lr": pytest.approx(0.1)}
    assert found[5].noise_multiplier == 1.0 and found[0].noise_multiplier is None and found[0].private is False
    assert found[-1].target_epsilon == 8.0 and found[-1].private


def test_summary_metrics_carry_privacy_shadows_and_contrasts():
    from bnlib import verdict

    _, params = config.load("smoke", extras=dp.ChapterParams)
    metrics = dp_tradeoff.summary_metrics(_rows(), params)
    assert set(metrics) == {"dp_sgd_tradeoff_test_accuracy_same_schedule",
                            "dp_sgd_tradeoff_canary_memorization_same_schedule",
                            "dp_sgd_tradeoff_outlier_lira_tpr_at_1pct_fpr_same_schedule"}
    entry = metrics["dp_sgd_tradeoff_test_accuracy_same_schedule"]
    assert entry["batch"]["mean"] == 0.80 and entry["batch"]["epsilon"] is None
    # BN vs no norm, paired over models, for the report's columns
    assert entry["difference"]["mean"] == pytest.approx(0.10, abs=0.01) and entry["difference"]["unit"] == "model pairs"
    assert entry["p_value"] == entry["contrasts"]["batch_vs_none"]["p_value"] < 0.05
    assert entry["epsilon"] == {"group_dp_sgd_noise_1": {"rdp": 8.0, "prv": pytest.approx(7.2)},
                                "group_dp_sgd_noise_4": {"rdp": 0.5, "prv": pytest.approx(0.45)}}
    assert entry["delta"] == {"group_dp_sgd_noise_1": 1e-5, "group_dp_sgd_noise_4": 1e-5}
    assert entry["n_shadow_models"] == {key: 2 for key in ("batch", "none", "group", "group_dp_sgd_noise_1",
                                                           "group_dp_sgd_noise_4")}
    assert entry["group_dp_sgd_noise_1"]["front_probability"] is not None
    assert entry["accountant"] == "rdp" and entry["max_grad_norm"] == params.max_grad_norm
    assert {c["verdict_words"] for c in entry["contrasts"].values()} <= set(verdict.VERDICTS)
    assert entry["contrasts"]["group_vs_group_dp_sgd_noise_1"]["first"] == "GroupNorm"
    lira = metrics["dp_sgd_tradeoff_outlier_lira_tpr_at_1pct_fpr_same_schedule"]
    assert lira["p_value"] is None and "difference" not in lira
    assert lira["contrasts"]["batch_vs_none"]["mean"] == pytest.approx(0.15, abs=0.01)  # per-target AUC
    json.dumps(metrics)
