"""The trade-off of the "what to do" chapter (bnlib.dp_tradeoff): measurements, Pareto fronts, the table, the
figure, the values the prose quotes and the summary, on small synthetic inputs with known answers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlib import config, dp, dp_tradeoff, plots


def _stat(mean: float, half: float = 0.01, n: int = 4) -> dict:
    return {"mean": mean, "ci95": [mean - half, mean + half], "n": n}


def _row(key: str, setting: str, norm: str, accuracy: float, memorization: float, tpr: float, seconds: float,
         epsilon: float | None = None, noise: float | None = None, n_negatives: int = 40) -> dict:
    return {"key": key, "setting": setting, "label": setting if epsilon is None else f"{setting}, ε = {epsilon:.2g}",
            "norm": norm, "epsilon": epsilon, "noise_multiplier": noise, "delta": None if epsilon is None else 0.002,
            "n_models": 4 if key not in ("batch", "none") else 8, "test_accuracy": _stat(accuracy),
            "canary_memorization": _stat(memorization), "lira_tpr": {**_stat(tpr), "n_negatives": n_negatives},
            "seconds_per_model": seconds}


def _rows() -> list[dict]:
    rows = [_row("batch", "BatchNorm", "batch", 0.80, 0.30, 0.20, 2.0, n_negatives=160),
            _row("none", "no norm", "none", 0.70, 0.10, 0.05, 1.0, n_negatives=160),
            _row("group", "GroupNorm", "group", 0.75, 0.20, 0.10, 1.5),
            _row("group_dp_sgd_noise_1", "GroupNorm + DP-SGD", "group", 0.60, 0.05, 0.02, 6.0, epsilon=8.0, noise=1.0),
            _row("group_dp_sgd_noise_4", "GroupNorm + DP-SGD", "group", 0.40, 0.00, 0.03, 5.0, epsilon=0.5, noise=4.0)]
    return dp_tradeoff.mark_pareto_fronts(rows)


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
    assert text.splitlines() == [
        "| setting | models | test accuracy | canary memorization | LiRA TPR at 0.01 FPR (outlier negatives) | ε "
        "| s per model |",
        "|---|---|---|---|---|---|---|",
        "| BatchNorm | 8 | 0.800 [0.790, 0.810] | 0.300 [0.290, 0.310] | 0.200 [0.190, 0.210] (160) | – | 2.0 |",
        "| GroupNorm + DP-SGD | 4 | 0.400 [0.390, 0.410] | 0.000 [-0.010, 0.010] | 0.030 [0.020, 0.040] (40) "
        "| 0.5 (σ = 4) | 5.0 |"]
    rows[0]["test_accuracy"]["n"] = 2  # too few replicates for an interval: said, not drawn
    assert "| 0.800 (2 models) |" in dp_tradeoff.table_markdown(rows[:1], low_fpr=0.01)


def test_front_text_lists_the_front_with_epsilon():
    assert dp_tradeoff.front_text(_rows(), "lira") == "BatchNorm, no norm, GroupNorm, GroupNorm + DP-SGD (ε = 8)"


def test_chapter_values_known_answers():
    _, params = config.load("smoke", extras=dp.ChapterParams)
    values = dp_tradeoff.chapter_values(_rows(), params, zoo_models=8)
    assert values["accountant"] == "RDP" and values["n_dp_settings"] == 2 and values["zoo_models"] == 8
    assert values["eps_low"] == 0.5 and values["eps_high"] == 8.0 and values["delta_used"] == 0.002
    assert values["dp_low_acc"] == 0.40 and values["dp_high_mem"] == 0.05 and values["group_tpr"] == 0.10
    assert values["bn_seconds"] == 2.0 and values["dp_cost_ratio"] == pytest.approx(6.0 / 1.5)
    assert values["n_negatives_small"] == 40 and values["n_negatives_zoo"] == 160
    assert values["false_positives_small"] == int(params.low_fpr * 40)
    assert values["bn_on_front"] == "is" and values["dp_mem_vs_bn"] == "lower" and values["dp_acc_vs_bn"] == "lower"
    assert values["front_lira"] == dp_tradeoff.front_text(_rows(), "lira")
    with pytest.raises(ValueError, match="DP-SGD setting"):
        dp_tradeoff.chapter_values(_rows()[:3], params, zoo_models=8)


def test_tradeoff_figure_is_column_wide_and_readable():
    fig = dp_tradeoff.tradeoff_figure(_rows(), low_fpr=0.01)
    assert len(fig.axes) == 2 and fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES)
    texts = [t for ax in fig.axes for t in ax.texts] + fig.legends[0].get_texts()
    assert len(fig.legends[0].get_texts()) == 6 and min(t.get_fontsize() for t in texts) >= plots.MIN_FONT
    assert "0.01 FPR" in fig.axes[1].get_ylabel()


def test_settings_in_display_order_at_smoke():
    cfg, params = config.load("smoke", extras=dp.ChapterParams)
    found = dp_tradeoff.settings(cfg, params)
    assert [s.key for s in found] == ["batch", "none", "group", "batch_strong_weight_decay", "batch_large_batch",
                                      "group_dp_sgd_noise_1", "group_dp_sgd_noise_4"]
    assert dict(found[4].overrides) == {"n_models": params.setting_models, "batch_size": params.large_batch}
    assert found[-1].noise_multiplier == 4.0 and found[0].noise_multiplier is None


def test_summary_metrics_one_entry_per_setting_with_privacy():
    _, params = config.load("smoke", extras=dp.ChapterParams)
    metrics = dp_tradeoff.summary_metrics(_rows(), params)
    assert set(metrics) == {"dp_sgd_tradeoff_test_accuracy_same_schedule",
                            "dp_sgd_tradeoff_canary_memorization_same_schedule",
                            "dp_sgd_tradeoff_outlier_lira_tpr_at_1pct_fpr_same_schedule"}
    entry = metrics["dp_sgd_tradeoff_test_accuracy_same_schedule"]
    assert entry["batch"]["mean"] == 0.80 and entry["batch"]["epsilon"] is None
    assert entry["epsilon"] == {"group_dp_sgd_noise_1": 8.0, "group_dp_sgd_noise_4": 0.5}
    assert entry["accountant"] == "rdp" and entry["max_grad_norm"] == params.max_grad_norm
