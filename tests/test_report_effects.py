"""The landing page's table and figure: the headline metrics grouped by effect (known answers on a small table)."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from bnlib import plots, report  # noqa: E402


def _entry(chapter: str, comparison: str, batch: float, none: float, p_value: float | None = 0.004) -> dict:
    return {"chapter": chapter, "comparison": comparison, "higher_means": "more memorization", "test": "paired t",
            "p_value": p_value, "description": "...", "profile": "quick",
            "batch": {"mean": batch, "ci95": [batch - 0.1, batch + 0.1], "n": 3},
            "none": {"mean": none, "ci95": [none - 0.1, none + 0.1], "n": 3}}


TABLE = {
    "mia_tpr_matched_fit": _entry("membership_inference", "matched_fit", 0.2, 0.1),
    "canary_memorization_matched_fit": _entry("memorization", "matched_fit", 0.5, 0.4, p_value=None),
    "canary_memorization_same_schedule": _entry("memorization", "same_schedule", 0.3, 0.1),
}
CHAPTERS = ["intro", "memorization", "membership_inference"]


@pytest.mark.parametrize(("metric", "comparison", "effect"), [
    ("canary_memorization_same_schedule", "same_schedule", "canary_memorization"),
    ("mia_tpr_at_1pct_fpr_matched_fit", "matched_fit", "mia_tpr_at_1pct_fpr"),
    ("test_accuracy", "same_schedule", "test_accuracy"),  # no suffix: the metric is its own effect
])
def test_effect_name_drops_the_comparison_suffix(metric, comparison, effect):
    assert report.effect_name(metric, {"comparison": comparison}) == effect


def test_effects_group_by_effect_in_reading_order_and_comparison_order():
    grouped = report.effects(TABLE, CHAPTERS)
    assert list(grouped) == ["canary_memorization", "mia_tpr"]
    assert list(grouped["canary_memorization"]) == ["same_schedule", "matched_fit"]
    assert grouped["canary_memorization"]["matched_fit"]["metric"] == "canary_memorization_matched_fit"


def test_effects_markdown_has_one_row_per_effect_and_a_column_per_comparison():
    text = report.effects_markdown(TABLE, CHAPTERS, links={"memorization": "chapters/memorization"})
    header, rule, memorization, mia = text.splitlines()
    assert header == "| effect | higher means | same schedule | matched fit |" and rule == "|---|---|---|---|"
    assert memorization.startswith("| {doc}`canary memorization </chapters/memorization>` | more memorization |")
    same, matched = memorization.strip("| ").split(" | ")[2:4]
    assert same == "BN 0.300 [0.200, 0.400] (n=3)<br>none 0.100 [0.000, 0.200] (n=3)<br>Δ = +0.200, p = 0.004"
    assert matched.endswith("Δ = +0.100")  # no test stored: no p-value shown
    assert mia.startswith("| mia tpr | more memorization | – | BN 0.200")  # not linked, no same-schedule entry


def test_effects_markdown_says_when_there_is_nothing_yet():
    assert "No chapter results yet" in report.effects_markdown({})


def test_effects_figure_draws_each_mean_in_its_panel():
    grouped = report.effects(TABLE, CHAPTERS)
    figure = plots.effects_figure(grouped)
    visible = [ax for ax in figure.axes if ax.axison]
    assert len(visible) == 2
    means = sorted(float(container.lines[0].get_ydata()[0]) for container in visible[0].containers)
    assert np.allclose(means, [0.1, 0.3, 0.4, 0.5])  # memorization: none/BN, same schedule and matched fit
    matplotlib.pyplot.close(figure)
