"""The reader's numbers: intervals that mean something, verdicts, the forest plot and the findings paragraph,
and result sets that keep a custom run away from the book (known answers on small tables)."""

import math
import os
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from scipy import stats as scipy_stats  # noqa: E402

from bnlib import book, figures, plots, report, results, stats  # noqa: E402


def _entry(chapter: str, comparison: str, batch: list[float], none: list[float], p_value: float | None = 0.004,
           **extra) -> dict:
    return {"chapter": chapter, "comparison": comparison, "higher_means": "more memorization", "test": "paired t",
            "p_value": p_value, "description": "...", "profile": "quick", "result_set": "quick",
            "batch": stats.mean_ci(batch), "none": stats.mean_ci(none), **extra}


FIVE_BN, FIVE_NONE = [0.30, 0.35, 0.28, 0.40, 0.33], [0.10, 0.18, 0.12, 0.15, 0.09]
TABLE = {
    "test_accuracy_same_schedule": _entry("data_and_models", "same_schedule", [0.8, 0.82, 0.81], [0.7, 0.72, 0.7]),
    "mia_lira_auc_inliers_matched_fit": _entry("membership_inference", "matched_fit", [0.5, 0.52, 0.51],
                                               [0.5, 0.5, 0.52], p_value=0.6, unit="models"),
    "mia_lira_auc_outliers_matched_fit": _entry("membership_inference", "matched_fit", FIVE_BN, FIVE_NONE,
                                                unit="models"),
    "canary_memorization_same_schedule": _entry("memorization", "same_schedule", [0.3, 0.5], [0.1, 0.2], unit="seeds"),
    "influence_eval_mode_outlier_inlier_ratio_same_schedule": _entry(
        "influence", "same_schedule", [2.0, 3.0, 2.5, 2.2], [1.0, 1.2, 1.1, 0.9], unit="data draws"),
    "mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit": _entry(
        "membership_inference", "matched_fit", FIVE_BN, FIVE_NONE, unit="models", fit_level=0.95,
        p_value_holm=0.012, verdict="BN higher (difference 0.204, p = 0.012)"),
    "canary_memorization_matched_fit": _entry(
        "memorization", "matched_fit", [0.10, 0.12, 0.11, 0.13], [0.11, 0.12, 0.10, 0.12], unit="models",
        p_value_holm=0.9, verdict="equivalent within ±0.08", description="... where each model's inlier fit first "
        "crosses 0.950 ... at the end of the common 12-epoch schedule"),
    "canary_memorization_matched_fit_0p80": _entry(
        "memorization", "matched_fit", [0.02, 0.03, 0.02], [0.02, 0.02, 0.03], unit="models", fit_level=0.8),
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
    difference = report.difference("mia_lira_auc_outliers_matched_fit", TABLE["mia_lira_auc_outliers_matched_fit"])
    reference = scipy_stats.ttest_ind(FIVE_BN, FIVE_NONE, equal_var=False).confidence_interval(0.95)
    assert difference.mean == pytest.approx(np.mean(FIVE_BN) - np.mean(FIVE_NONE))
    assert (difference.low, difference.high) == pytest.approx((reference.low, reference.high))
    assert difference.scale == "linear" and "unpaired" in difference.note


def test_ratio_difference_is_a_positive_ratio_on_the_log_scale():
    entry = TABLE["influence_eval_mode_outlier_inlier_ratio_same_schedule"]
    difference = report.difference("influence_eval_mode_outlier_inlier_ratio_same_schedule", entry)
    assert difference.scale == "log" and difference.mean == pytest.approx(2.425 / 1.05)
    assert 0 < difference.low < difference.mean < difference.high
    assert difference.mean / difference.low == pytest.approx(difference.high / difference.mean)


def test_stored_difference_is_used_as_is():
    entry = {**TABLE["mia_lira_auc_outliers_matched_fit"], "difference": {"mean": 0.2, "ci95": [0.15, 0.25], "n": 5}}
    difference = report.difference("mia_lira_auc_outliers_matched_fit", entry)
    assert (difference.mean, difference.low, difference.high, difference.note) == (0.2, 0.15, 0.25, "")


# ----------------------------------------------------------------------------- verdicts and units

@pytest.mark.parametrize(("metric", "expected"), [
    ("mia_lira_auc_outliers_matched_fit", "BN higher"),               # p = 0.004, BN above
    ("mia_lira_auc_inliers_matched_fit", "no difference detected"),    # p = 0.6
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
    entry = {**TABLE["mia_lira_auc_inliers_matched_fit"], "verdict": "no difference detected (could detect ≥ 0.04)"}
    assert report.verdict("mia_lira_auc_inliers_matched_fit", entry) == entry["verdict"]
    assert report.verdict_color(entry["verdict"]) == report.VERDICT_COLORS["no difference detected"]


def test_n_says_what_it_counts():
    assert report.count_text(16, {"unit": "models"}) == "16 models"
    assert report.count_text(1, {"unit": "seeds"}) == "1 seed"
    assert report.count_text(32, {"description": "..."}) == "n = 32 (see description)"


# ----------------------------------------------------------------------------- landing page and tables

def _outside_monospace(markdown: str) -> str:
    return re.sub(r"`[^`]*`", "", markdown)


def test_claim_metrics_pick_the_primary_endpoint_of_each_claim_and_comparison_at_the_headline_level():
    assert report.claim_metrics(TABLE) == {
        "memorization": {"same_schedule": "canary_memorization_same_schedule",
                         "matched_fit": "canary_memorization_matched_fit"},  # not the 0p80 grid row
        "influence": {"same_schedule": "influence_eval_mode_outlier_inlier_ratio_same_schedule"},
        "membership": {"matched_fit": "mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit"}}


def test_forest_rows_are_the_primary_endpoints_one_per_claim_and_comparison():
    rows = report.forest_rows(TABLE)
    assert [(r.comparison, r.claim) for r in rows] == [
        ("same_schedule", "memorization"), ("same_schedule", "influence"), ("matched_fit", "memorization"),
        ("matched_fit", "membership")]  # no test accuracy, no secondary AUC, no grid-level row
    assert rows[2].margin == pytest.approx(0.08) and rows[2].fit_level == pytest.approx(0.95)


def test_claim_paragraphs_answer_each_claim_in_words_with_numbers():
    text = report.claim_paragraphs(TABLE)
    memorization, influence, membership, closing = text.split("\n\n")
    assert memorization.startswith("**Memorization of outliers.** The paper claims that BN networks memorize")
    assert "After the same 12-epoch schedule: **inconclusive**, Δ = +0.250, no interval " \
           "(2 seeds per norm), p = 0.004." in memorization
    assert ("At matched fit (each model read where its inlier training accuracy crosses 0.95, on the common "
            "12-epoch schedule): **equivalent within ±0.08**, Δ = ") in memorization
    assert "BN / no-BN = 2.31 [" in influence and "data draws per norm" in influence
    assert "**BN higher**, Δ = +0.204 [+0.142, +0.266], 5 models per norm, Holm p = 0.012." in membership
    assert "4 primary endpoints" in closing and "Result set `quick`" in closing
    for paragraph in (memorization, influence, membership):  # keys only in monospace, no raw words
        outside = _outside_monospace(paragraph)
        assert not re.search(r"[a-z]+_[a-z]+", outside), outside
        assert not re.search(r"(?<![A-Za-z])(pct|fpr)(?![A-Za-z])", outside), outside
    assert "No chapter has stored results" in report.claim_paragraphs({})


def test_claims_table_is_claims_by_comparisons():
    lines = report.claims_table_markdown(TABLE).splitlines()
    assert lines[0] == "| claim | same schedule | matched fit (0.95) |"
    assert len(lines) == 2 + 3 and lines[2].startswith("| **Memorization of outliers**: canary memorization "
                                                       "`canary_memorization` | **inconclusive**; Δ = +0.250")
    assert lines[3].endswith("| – |")  # influence has no matched-fit row here
    assert not re.search(r"[a-z]+_[a-z]+", _outside_monospace(" ".join(lines)))


def test_measurement_rows_show_raw_and_holm_p_in_their_own_columns():
    """Regression: ``entry.get("p_value_holm", entry.get("p_value"))`` returned the stored None of a metric
    outside a Holm family, and its raw p showed as "–"."""
    table = {"train_accuracy_same_schedule": _entry("data_and_models", "same_schedule", [0.9, 0.92, 0.91],
                                                    [0.8, 0.81, 0.8], p_value=0.0051, p_value_holm=None)}
    header, row = report.measurement_rows(table)
    cells = dict(zip(header, row, strict=True))
    assert (cells["p"], cells["p (Holm)"], cells["family"]) == ("0.0051", "–", "secondary")
    assert report.provisional_verdict("train_accuracy_same_schedule", table["train_accuracy_same_schedule"]) \
        == "BN higher"
    assert report.p_values({"p_value": float("nan"), "p_value_holm": 0.2}) == (None, 0.2)


def test_measurements_are_grouped_by_chapter_primary_first_named_in_words():
    order = report.measurement_order(TABLE)
    assert order[:2] == ["test_accuracy_same_schedule", "canary_memorization_same_schedule"]
    assert order[2:4] == ["canary_memorization_matched_fit", "canary_memorization_matched_fit_0p80"]
    header, *body = report.measurement_rows(TABLE)
    assert header == list(report.MEASUREMENT_COLUMNS) and len(body) == len(TABLE)
    canary = dict(zip(header, body[1], strict=True))
    assert canary["measurement"] == "canary memorization" and canary["family"] == "primary"
    assert canary["n"] == "2 seeds" and canary["95% interval"] == "none (fewer than 3)" and canary["BN"] == "0.400"
    grid = dict(zip(header, body[3], strict=True))
    assert grid["comparison"] == "matched fit (0.80)"
    markdown = report.measurements_markdown(TABLE, {"memorization": "chapters/memorization"})
    assert markdown.startswith("All rows come from the result set `quick`.") and "| set |" not in markdown
    assert "**{doc}`Memorization </chapters/memorization>`**" in markdown
    assert "| **canary memorization** `canary_memorization_same_schedule` | primary |" in markdown
    assert "| LiRA AUC on canaries `mia_lira_auc_outliers_matched_fit` | secondary |" in markdown
    assert markdown.index("Data and models") < markdown.index("Memorization") < markdown.index("Influence")


def test_chapter_metrics_table_names_each_metric_and_keeps_raw_and_holm_p():
    entry = {**TABLE["mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit"],
             "difference": {"mean": 0.2, "ci95": [0.15, 0.25], "n": 5}, "detectable_difference": 0.07}
    empty = {**TABLE["canary_memorization_matched_fit"], "batch": {"mean": float("nan"), "ci95": [0, 0], "n": 0}}
    lines = report.chapter_metrics_markdown({"mia_lira_pooled_tpr_at_1pct_fpr_outliers_matched_fit": entry,
                                             "canary_memorization_matched_fit": empty}).splitlines()
    assert lines[2].startswith("| LiRA TPR at 1% FPR on canaries (pooled) `mia_lira_pooled_tpr_at_1pct_fpr_outliers_"
                               "matched_fit` | matched fit | 0.332 | 0.128 | +0.200 [+0.150, +0.250] | 0.070 | 0.004 "
                               "| 0.012 | 5 models | primary | BN higher")
    assert "| canary memorization `canary_memorization_matched_fit` | matched fit | – | 0.112 | – |" in lines[3]


def test_json_adds_the_reader_s_description_and_keeps_the_entry():
    import json

    entry = json.loads(report.as_json(TABLE))["canary_memorization_same_schedule"]
    assert entry["name"] == "canary memorization" and entry["family"] == "primary"
    assert entry["unit"] == "seeds" and entry["measured_in"] == "accuracy difference"  # unit: what n counts


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


def test_forest_plot_ticks_read_as_factors_and_overlap_nothing_and_draws_the_margin():
    figure = plots.forest_plot(report.forest_rows(TABLE))
    linear, log = figure.axes
    figure.canvas.draw()
    assert {"×1/3", "×1", "×3"} <= {t.get_text() for t in log.get_xticklabels()}
    assert figures.label_overlaps(figure) == []
    margin = [c for c in linear.collections if len(c.get_paths())]  # the equivalence band of the matched-fit row
    assert len(margin) == 1
    x = margin[0].get_paths()[0].vertices[:, 0]
    assert (x.min(), x.max()) == pytest.approx((-0.08, 0.08))
    matplotlib.pyplot.close(figure)


def test_a_primary_endpoint_without_a_value_keeps_its_row_and_says_so():
    table = {**TABLE, "canary_memorization_matched_fit_annealed": _entry(
        "memorization", "matched_fit_annealed", [0.1, 0.2, 0.1], [0.1], unit="models")}
    table["canary_memorization_matched_fit_annealed"]["batch"] = {"mean": float("nan"), "ci95": [0, 0], "n": 0}
    rows = report.forest_rows(table)
    empty = [r for r in rows if r.comparison == "matched_fit_annealed"]
    assert len(empty) == 1 and math.isnan(empty[0].difference.mean)
    assert empty[0].difference.n_text == "0 models / 1 model"
    assert report.forest_json(table)[-1]["mean"] is None  # valid JSON
    figure = plots.forest_plot(rows)
    assert "no value (0 models / 1 model)" in [t.get_text() for t in figure.axes[0].texts]
    assert figures.label_overlaps(figure) == []
    matplotlib.pyplot.close(figure)


def test_label_overlaps_finds_the_crowded_log_axis_it_replaced():
    """Known answer: the old ratio axis (ticks at 1, 2, 5 per decade as plain numbers) over four decades of a
    narrow panel runs its labels into each other; two texts drawn on one spot overlap."""
    from matplotlib.ticker import LogLocator, ScalarFormatter

    figure, ax = matplotlib.pyplot.subplots(figsize=(3, 2))
    ax.set_xscale("log")
    ax.set_xlim(0.01, 100)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    assert len(figures.label_overlaps(figure)) > 3
    matplotlib.pyplot.close(figure)
    figure, ax = matplotlib.pyplot.subplots(figsize=(3, 2))
    ax.set_yticks([0.5], ["a long tick label"])
    ax.set_ylabel("label")
    assert figures.label_overlaps(figure) == []
    ax.text(-0.2, 0.5, "on top of it", transform=ax.transAxes, ha="right", va="center")
    assert figures.label_overlaps(figure) == [("a long tick label", "on top of it")]
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
