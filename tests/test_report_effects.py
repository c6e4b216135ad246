"""The reader's numbers: intervals that mean something, verdicts, the forest plot and the findings paragraph,
and result sets that keep a custom run away from the book (known answers on small tables)."""

import math
import os

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

from bnlib import book, plots, report, results, stats  # noqa: E402


def _entry(chapter: str, comparison: str, batch: list[float], none: list[float], p_value: float | None = 0.004,
           **extra) -> dict:
    return {"chapter": chapter, "comparison": comparison, "higher_means": "more memorization", "test": "paired t",
            "p_value": p_value, "description": "...", "profile": "quick", "result_set": "quick",
            "batch": stats.mean_ci(batch), "none": stats.mean_ci(none), **extra}


FIVE_BN, FIVE_NONE = [0.30, 0.35, 0.28, 0.40, 0.33], [0.10, 0.18, 0.12, 0.15, 0.09]
TABLE = {
    "test_accuracy_same_schedule": _entry("data_and_models", "same_schedule", [0.8, 0.82, 0.81], [0.7, 0.72, 0.7]),
    "mia_auc_inliers_matched_fit": _entry("membership_inference", "matched_fit", [0.5, 0.52, 0.51], [0.5, 0.5, 0.52],
                                          p_value=0.6, unit="models"),
    "mia_auc_outliers_matched_fit": _entry("membership_inference", "matched_fit", FIVE_BN, FIVE_NONE, unit="models"),
    "canary_memorization_same_schedule": _entry("memorization", "same_schedule", [0.3, 0.5], [0.1, 0.2], unit="seeds"),
    "influence_outlier_inlier_ratio_same_schedule": _entry("influence", "same_schedule", [2.0, 3.0, 2.5, 2.2],
                                                           [1.0, 1.2, 1.1, 0.9], unit="data draws"),
}


# ----------------------------------------------------------------------------- intervals

def test_fewer_than_three_replicates_show_no_interval_and_say_how_many():
    shown = report.shown_value("canary_memorization_same_schedule", TABLE["canary_memorization_same_schedule"], "batch")
    assert shown.low is None and shown.high is None and shown.note == "2 seeds: no interval"
    difference = report.difference("canary_memorization_same_schedule", TABLE["canary_memorization_same_schedule"])
    assert difference.low is None and difference.mean == pytest.approx(0.25) and difference.n_text == "2 seeds per norm"


def test_bounded_score_interval_is_clipped_with_a_note():
    entry = {"batch": {"mean": 0.525, "ci95": [-0.936, 1.986], "n": 3}}
    shown = report.shown_value("fz_memorization_outliers", entry, "batch")
    assert (shown.low, shown.high) == (-0.936, 1.0) and shown.note == "interval clipped to [-1, 1]"
    auc = report.shown_value("mia_auc", {"batch": {"mean": 0.1, "ci95": [-0.2, 0.4], "n": 4}}, "batch")
    assert auc.low == 0.0 and "clipped to [0, 1]" in auc.note


def test_ratio_interval_that_reaches_below_zero_is_redrawn_on_the_log_scale():
    entry = {"batch": {"mean": 8.0, "ci95": [-16.6, 32.6], "n": 3}}
    shown = report.shown_value("influence_outlier_inlier_ratio", entry, "batch")
    assert 0 < shown.low < 8.0 < shown.high and shown.note == "interval on the log scale"
    assert math.log(shown.high / 8.0) == pytest.approx(math.log(8.0 / shown.low))  # symmetric in log


def test_fallback_difference_interval_is_welchs():
    """The interval rebuilt from two stored t intervals equals scipy's Welch interval on the raw values."""
    difference = report.difference("mia_auc_outliers_matched_fit", TABLE["mia_auc_outliers_matched_fit"])
    reference = scipy_stats.ttest_ind(FIVE_BN, FIVE_NONE, equal_var=False).confidence_interval(0.95)
    assert difference.mean == pytest.approx(np.mean(FIVE_BN) - np.mean(FIVE_NONE))
    assert (difference.low, difference.high) == pytest.approx((reference.low, reference.high))
    assert difference.scale == "linear" and "unpaired" in difference.note


def test_ratio_difference_is_a_positive_ratio_on_the_log_scale():
    entry = TABLE["influence_outlier_inlier_ratio_same_schedule"]
    difference = report.difference("influence_outlier_inlier_ratio_same_schedule", entry)
    assert difference.scale == "log" and difference.mean == pytest.approx(2.425 / 1.05)
    assert 0 < difference.low < difference.mean < difference.high
    assert difference.mean / difference.low == pytest.approx(difference.high / difference.mean)


def test_stored_difference_is_used_as_is():
    entry = {**TABLE["mia_auc_outliers_matched_fit"], "difference": {"mean": 0.2, "ci95": [0.15, 0.25], "n": 5}}
    difference = report.difference("mia_auc_outliers_matched_fit", entry)
    assert (difference.mean, difference.low, difference.high, difference.note) == (0.2, 0.15, 0.25, "")


# ----------------------------------------------------------------------------- verdicts and units

@pytest.mark.parametrize(("metric", "expected"), [
    ("mia_auc_outliers_matched_fit", "BN higher"),               # p = 0.004, BN above
    ("mia_auc_inliers_matched_fit", "no difference detected"),    # p = 0.6
    ("canary_memorization_same_schedule", "inconclusive"),        # 2 seeds
])
def test_provisional_verdict(metric, expected):
    assert report.provisional_verdict(metric, TABLE[metric]) == expected


def test_provisional_verdict_reads_the_sign_and_holm_and_needs_a_test():
    flipped = _entry("m", "same_schedule", FIVE_NONE, FIVE_BN)
    assert report.provisional_verdict("x", flipped) == "no-BN higher"
    assert report.provisional_verdict("x", {**flipped, "p_value_holm": 0.2}) == "no difference detected"
    assert report.provisional_verdict("x", {**flipped, "p_value": None}) == "inconclusive"


def test_stored_verdict_wins():
    entry = {**TABLE["mia_auc_inliers_matched_fit"], "verdict": "no difference detected (could detect ≥ 0.04)"}
    assert report.verdict("mia_auc_inliers_matched_fit", entry) == entry["verdict"]
    assert report.verdict_color(entry["verdict"]) == report.VERDICT_COLORS["no difference detected"]


def test_n_says_what_it_counts():
    assert report.count_text(16, {"unit": "models"}) == "16 models"
    assert report.count_text(1, {"unit": "seeds"}) == "1 seed"
    assert report.count_text(32, {"description": "..."}) == "n = 32 (see description)"


# ----------------------------------------------------------------------------- landing page and tables

def test_forest_rows_same_schedule_first_then_chapter_order_outliers_first_privacy_effects_only():
    rows = report.forest_rows(TABLE)
    assert [(r.comparison, r.effect) for r in rows] == [
        ("same_schedule", "canary_memorization"), ("same_schedule", "influence_outlier_inlier_ratio"),
        ("matched_fit", "mia_auc_outliers"), ("matched_fit", "mia_auc_inliers")]  # no test accuracy


def test_findings_paragraph_gives_each_comparison_its_verdicts_and_numbers():
    text = report.findings(TABLE)
    same, matched = text.split("At matched fit")
    assert same.startswith("After the same training schedule, the verdict is:\n\n- **inconclusive** for canary "
                           "memorization (Δ = +0.250, 2 seeds per norm)")
    assert "BN / no-BN = 2.31 [" in same
    assert "**BN higher** for mia auc outliers (Δ = +0.204 [+0.142, +0.266])" in matched
    assert "**no difference detected** for mia auc inliers" in matched and "result set `quick`" in matched
    assert "No chapter has stored results" in report.findings({})


def test_measurement_rows_one_per_metric_with_unit_and_set():
    header, *body = report.measurement_rows(TABLE)
    assert header == list(report.MEASUREMENT_COLUMNS) and len(body) == len(TABLE)
    canary = dict(zip(header, body[3], strict=True))
    assert canary["n"] == "2 seeds" and canary["95% interval"] == "none (fewer than 3)" and canary["BN"] == "0.400"
    ratio = dict(zip(header, body[4], strict=True))
    assert ratio["difference"].startswith("×2.31") and ratio["set"] == "quick"
    markdown = report.measurements_markdown(TABLE, {"memorization": "chapters/memorization"})
    assert "{doc}`canary memorization same schedule </chapters/memorization>`" in markdown
    assert "| `test_accuracy_same_schedule` |" in markdown
    assert markdown.startswith("All rows come from the result set `quick`.") and "| set |" not in markdown


def test_forest_plot_draws_one_marker_per_row_hollow_without_an_interval():
    rows = report.forest_rows(TABLE)
    figure = plots.forest_plot(rows)
    linear, log = figure.axes
    assert log.get_xscale() == "log" and linear.get_xscale() == "linear"
    markers = [line for ax in (linear, log) for line in ax.lines if line.get_marker() == "o"]
    assert len(markers) == len(rows)
    hollow = [line for line in markers if line.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and hollow[0].get_xdata()[0] == pytest.approx(0.25)  # the 2-seed canary row
    matplotlib.pyplot.close(figure)


# ----------------------------------------------------------------------------- result sets

def test_result_set_names():
    assert results.result_set_name("quick") == results.result_set_name("quick", {"profile": "quick"}) == "quick"
    custom = results.result_set_name("quick", {"profile": "quick", "batch_size": "64"})
    assert custom.startswith("quick-") and custom != results.result_set_name("quick", {"batch_size": "32"})
    with pytest.raises(ValueError, match="result_set='../x'"):
        results.summary_path("memorization", "../x")


def test_summaries_are_kept_per_set(monkeypatch, tmp_path):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    monkeypatch.setenv(results.RESULT_SET_ENV, "smoke")
    entry = {"batch": stats.mean_ci([0.3, 0.4])}
    results.write_summary("memorization", {"m": entry}, {"profile": "smoke"})
    monkeypatch.delenv(results.RESULT_SET_ENV)
    custom = results.write_summary("memorization", {"m": {"batch": stats.mean_ci([0.9])}},
                                   {"profile": "smoke", "epochs": 9})
    assert custom.parent.name.startswith("smoke-")  # outside a book run: beside the book, never over it
    assert results.read_summaries("smoke")["memorization"]["metrics"]["m"]["batch"]["n"] == 2
    assert set(results.result_sets()) == {"smoke", custom.parent.name}
    table = report.headline(results.read_summaries("smoke"))
    assert table["m"]["result_set"] == "smoke" and "result set 'smoke'" in report.text(table, "smoke")


def test_a_killed_runs_leftover_is_removed(tmp_path):
    output = tmp_path / "memorization.ipynb"
    dead = tmp_path / ".memorization.ipynb.999999999.running.ipynb"  # no such process
    alive = tmp_path / f".memorization.ipynb.{os.getppid()}.running.ipynb"  # a live process (our parent)
    dead.write_text("{}")
    alive.write_text("{}")
    book.remove_stale_runs(output)
    assert not dead.exists() and alive.exists()
