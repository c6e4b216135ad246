"""The metric registry: every key the book reports has a reader's name, meaning, unit, direction and family,
keyed by patterns so that new comparisons and fit-grid levels need no new entry."""

import pytest

from bnlib import config, metric_registry

# Every key `python -m bnlib report --json --profile smoke` emitted on 2026-12-04 (all chapters), plus the names
# issue 21 announces (equal exposure, fit-grid levels, TPR at 0 false positives). The website test checks the
# live report of the smoke book against the registry too (tests/test_website.py).
SMOKE_KEYS = """
test_accuracy_same_schedule train_accuracy_same_schedule
influence_eval_mode_outlier_inlier_ratio_matched_fit influence_eval_mode_outlier_inlier_ratio_same_schedule
influence_eval_mode_outlier_inlier_ratio_matched_fit influence_eval_mode_outlier_inlier_ratio_same_schedule
influence_in_batch_outlier_inlier_ratio_matched_fit influence_in_batch_outlier_inlier_ratio_same_schedule
mia_lira_auc_inliers_same_schedule mia_lira_auc_outliers_matched_fit mia_lira_auc_outliers_matched_fit_annealed
mia_lira_auc_outliers_same_schedule mia_lira_pooled_all_pools_tpr_at_0.1pct_fpr_outliers_same_schedule
mia_lira_pooled_all_pools_tpr_at_1pct_fpr_outliers_same_schedule
mia_lira_pooled_tpr_at_0.1pct_fpr_outliers_same_schedule
mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit_annealed
mia_lira_pooled_tpr_at_1pct_fpr_outliers_same_schedule mia_lira_reference_auc_outliers_same_schedule
mia_lira_reference_pooled_tpr_at_0.1pct_fpr_outliers_same_schedule
mia_lira_reference_pooled_tpr_at_1pct_fpr_outliers_same_schedule mia_lira_tpr_at_1pct_fpr_inliers_same_schedule
mia_lira_tpr_at_1pct_fpr_outliers_matched_fit mia_lira_tpr_at_1pct_fpr_outliers_same_schedule
mia_loss_auc_outliers_same_schedule mia_rmia_auc_outliers_same_schedule
canary_memorization_matched_fit canary_memorization_matched_fit_annealed canary_memorization_same_schedule
fz_memorization_inliers_matched_fit fz_memorization_inliers_matched_fit_annealed fz_memorization_inliers_same_schedule
fz_memorization_outliers_matched_fit fz_memorization_outliers_matched_fit_annealed
fz_memorization_outliers_same_schedule
theory_canary_influence_slope_in_batch_size
ablation_canary_memorization_batch16_same_schedule ablation_canary_memorization_rate6pct_same_schedule
dp_sgd_tradeoff_test_accuracy_same_schedule dp_sgd_tradeoff_canary_memorization_same_schedule
dp_sgd_tradeoff_outlier_lira_tpr_at_1pct_fpr_same_schedule
canary_memorization_equal_exposure canary_memorization_matched_fit_0p95 canary_memorization_matched_fit_0p80
mia_lira_pooled_tpr_at_0_false_positives_outliers_equal_exposure
influence_eval_mode_outlier_inlier_ratio_equal_exposure
""".split()


def test_every_reported_key_has_an_entry():
    assert metric_registry.missing(SMOKE_KEYS) == []
    for key in SMOKE_KEYS:
        info = metric_registry.describe(key)
        assert info.name and info.meaning and info.unit and info.direction.startswith("higher = "), key
        assert info.family in ("primary", "secondary"), key
        assert "_" not in info.name and "pct" not in info.name and "fpr" not in info.name, info.name


def test_an_unknown_key_is_named_in_the_error():
    with pytest.raises(KeyError, match="'mia_lira_brand_new_measure_same_schedule'"):
        metric_registry.describe("mia_lira_brand_new_measure_same_schedule")
    assert metric_registry.missing(["canary_memorization_same_schedule", "mystery_same_schedule"]) == [
        "mystery_same_schedule"]
    assert metric_registry.name("mystery") == "mystery"  # a page never breaks on a new key


@pytest.mark.parametrize(("key", "expected"), [
    ("canary_memorization_matched_fit_0p95", ("canary_memorization", "matched_fit", 0.95)),
    ("canary_memorization_matched_fit_annealed", ("canary_memorization", "matched_fit_annealed", None)),
    ("mia_lira_auc_outliers_equal_exposure", ("mia_lira_auc_outliers", "equal_exposure", None)),
    ("theory_canary_influence_slope_in_batch_size", ("theory_canary_influence_slope_in_batch_size", None, None)),
])
def test_keys_split_into_measurement_comparison_and_fit_level(key, expected):
    assert metric_registry.split_key(key) == expected


def test_the_primary_family_is_the_configured_endpoints_in_every_comparison():
    primary = {k for k in SMOKE_KEYS if metric_registry.describe(k).family == "primary"}
    assert {metric_registry.split_key(k)[0] for k in primary} == set(config.PRIMARY_ENDPOINTS)
    assert "canary_memorization_matched_fit_0p80" in primary  # a grid level of a primary endpoint
    assert metric_registry.describe("ablation_canary_memorization_batch16_same_schedule").family == "secondary"
    assert {metric_registry.describe(k).claim for k in primary} == set(metric_registry.CLAIMS)
    entry = {"family": "secondary"}  # a chapter's own declaration wins
    assert metric_registry.family("canary_memorization_same_schedule", entry) == "secondary"


def test_names_and_margins():
    assert metric_registry.name("mia_lira_pooled_tpr_at_0.1pct_fpr_outliers_same_schedule") == \
        "LiRA TPR at 0.1% FPR on canaries (pooled)"
    assert metric_registry.name("ablation_canary_memorization_rate6pct_same_schedule") == \
        "canary memorization with 6% canaries"
    assert metric_registry.equivalence_margin("canary_memorization_matched_fit_0p90") == \
        config.EQUIVALENCE_MARGINS["canary_memorization"]
    assert metric_registry.equivalence_margin("canary_memorization_same_schedule", {"equivalence_margin": 0.1}) == 0.1
    assert metric_registry.equivalence_margin("test_accuracy_same_schedule") is None
    assert metric_registry.comparison_title("matched_fit", 0.95) == "matched fit (0.95)"
