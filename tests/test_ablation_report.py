"""What the ablations chapter shows (bnlib.ablation_report): tables, figures, glued values and the summary, on
small synthetic sweep rows with known answers; the batch-size explorer on two smoke runs."""

import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib import ablation_report, ablations, config, plots

MEASURE_KEYS = ("memorization", "memorization_at_fit", "auc", "log10_influence_ratio_trained", "test", "fit")


def _rows(plan: dict[tuple[str, str], dict[str, list[float]]]) -> list[dict]:
    """Sweep rows: (setting, norm) -> measure -> one value per seed (measures not given are 0.5)."""
    rows = []
    for (setting, norm), measures in plan.items():
        n_seeds = len(next(iter(measures.values())))
        for seed in range(n_seeds):
            rows.append({"setting": setting, "norm": norm, "seed": seed,
                         **{m: measures.get(m, [0.5] * n_seeds)[seed] for m in MEASURE_KEYS}})
    return rows


def _batch_rows() -> list[dict]:
    return _rows({("16", "batch"): {"memorization": [0.5, 0.75], "log10_influence_ratio_trained": [1.0, 1.2],
                                    "fit": [0.9, 0.95]},
                  ("16", "none"): {"memorization": [0.25, 0.5], "log10_influence_ratio_trained": [0.1, 0.1],
                                   "fit": [0.8, 0.85]},
                  ("32", "batch"): {"memorization": [0.4, 0.4], "log10_influence_ratio_trained": [0.5, 0.5],
                                    "fit": [0.7, 0.6]},
                  ("32", "none"): {"memorization": [0.3, 0.1], "log10_influence_ratio_trained": [0.5, 0.5],
                                   "fit": [0.4, 0.3]}})


def _fonts(fig) -> list[float]:
    texts = [t for ax in fig.axes for t in (ax.title, *ax.texts)]
    texts += [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    return [t.get_fontsize() for t in texts if t.get_text()]


# ----------------------------------------------------------------------------- tables

def test_interval_cell_says_how_many_seeds_below_three():
    assert ablation_report.interval_cell({"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0}) == "–"
    assert ablation_report.interval_cell({"mean": 0.5, "ci95": [math.nan, math.nan], "n": 1}) == "0.500 (1 seed)"
    assert ablation_report.interval_cell({"mean": 0.5, "ci95": [0.1, 0.9], "n": 2}) == "0.500 (2 seeds)"
    assert ablation_report.interval_cell({"mean": 0.5, "ci95": [0.1, 0.9], "n": 3}) == "0.500 [0.100, 0.900]"


def test_table_markdown_known_text():
    rows = _rows({("16", "batch"): {"memorization": [0.5, 0.5, 0.5]},
                  ("16", "none"): {"memorization": [math.nan] * 3}})  # never reached: no value
    assert ablation_report.table_markdown(rows, {"memorization": "mem"}).splitlines() == [
        "| setting | norm | mem |", "|---|---|---|", "| 16 | BatchNorm | 0.500 [0.500, 0.500] |",
        "| 16 | no norm | – |"]
    header = ablation_report.table_markdown(rows).splitlines()[0]
    assert header.split(" | ")[2:] == [*list(ablation_report.MEASURES.values())[:-1],
                                       ablation_report.MEASURES["test"] + " |"]


def test_defence_table_and_values_against_the_batchnorm_baseline():
    rows = _rows({ablation_report.DEFENCE_BASELINE: {"memorization": [0.4], "auc": [0.7], "test": [0.8]},
                  ablation_report.DEFENCE_GROUP: {"memorization": [0.1], "auc": [0.55], "test": [0.75]}})
    assert ablation_report.defence_table_markdown(rows).splitlines()[2:] == [
        "| BatchNorm | 0.400 | +0.000 | 0.700 | +0.000 | 0.800 | +0.000 |",
        "| GroupNorm instead of BN | 0.100 | +0.300 | 0.550 | +0.150 | 0.750 | -0.050 |"]
    values = ablation_report.defence_values(rows)
    assert values["defence_group_gain"] == pytest.approx(0.3) and values["defence_group_cost"] == pytest.approx(-0.05)


# ----------------------------------------------------------------------------- glued values

def test_influence_amplification_is_the_ratio_of_geometric_means():
    # BN at 16: mean log10 ratio 1.1, none 0.1 -> 10x; at 32 both 0.5 -> 1x
    np.testing.assert_allclose(ablation_report.influence_amplification(_batch_rows(), (16, 32)), [10.0, 1.0])


def test_batch_size_values_known_answers():
    values = ablation_report.batch_size_values(_batch_rows(), (32, 16))
    assert values["bs_small"] == 16 and values["bs_large"] == 32
    assert values["bs_small_gap"] == 0.25  # both seeds differ by exactly 0.25: a zero-width interval
    assert values["bs_small_gap_low"] == 0.25 and values["bs_small_gap_high"] == 0.25
    assert values["bs_large_gap"] == pytest.approx(0.2)
    assert values["bs_large_gap_low"] < 0.2 < values["bs_large_gap_high"]
    assert values["bs_influence_small"] == pytest.approx(10.0) and values["bs_influence_large"] == pytest.approx(1.0)
    assert values["bs_large_fit_bn"] == pytest.approx(0.65) and values["bs_large_fit_none"] == pytest.approx(0.35)


def test_length_values_known_answers():
    rows = _rows({("1x", "batch"): {"memorization": [0.5, 0.6]}, ("1x", "none"): {"memorization": [0.2, 0.3]},
                  ("3x", "batch"): {"memorization": [0.6, 0.6]}, ("3x", "none"): {"memorization": [0.5, 0.4]}})
    values = ablation_report.length_values(rows, (3, 1))
    assert values["length_long"] == "3x" and values["length_gap_short"] == pytest.approx(0.3)
    assert values["length_gap_long"] == pytest.approx(0.15)
    assert values["length_gap_long_low"] < 0.15 < values["length_gap_long_high"]


def test_gap_text_and_canary_rate_values():
    cfg, params = config.load("smoke", extras=ablations.ChapterParams, canary_rates="0.04,0.1")
    labels = [ablations.canary_rate_label(cfg.n_train, rate) for rate in params.canary_rates]
    rows = _rows({(label, norm): {"memorization": values} for label in labels
                  for norm, values in (("batch", [0.5, 0.5]), ("none", [0.25, 0.25]))})
    values = ablation_report.canary_rate_values(rows, cfg, params)
    counts = [ablations.canaries_for_rate(cfg.n_train, rate) for rate in params.canary_rates]
    assert values["canary_rates_text"] == f"{labels[0]} ({counts[0]} canaries), {labels[1]} ({counts[1]} canaries)"
    assert values["book_canary_rate"] == pytest.approx(cfg.n_canaries / (cfg.n_train + cfg.n_canaries))
    assert values["rate_gaps_text"] == "; ".join(
        f"at {label} +0.250 (95% CI [+0.250, +0.250], n = 2 seeds)" for label in labels)


def test_norm_sentence_follows_the_asked_order():
    rows = _rows({("batch", "batch"): {"memorization": [0.25]}, ("none", "none"): {"memorization": [-0.125]}})
    assert ablation_report.norm_sentence(rows, ("none", "batch")) == "no norm -0.125, BatchNorm 0.250"


def test_summary_metrics_one_entry_per_batch_size_and_rate():
    cfg, params = config.load("smoke", extras=ablations.ChapterParams, batch_sizes="16,32", canary_rates="0.04")
    label = ablations.canary_rate_label(cfg.n_train, 0.04)
    rate_rows = _rows({(label, "batch"): {"memorization": [0.5, 0.7]}, (label, "none"): {"memorization": [0.1, 0.2]}})
    metrics = ablation_report.summary_metrics(_batch_rows(), rate_rows, cfg, params)
    assert list(metrics) == ["ablation_canary_memorization_batch16_same_schedule",
                             "ablation_canary_memorization_batch32_same_schedule",
                             "ablation_canary_memorization_rate4pct_same_schedule"]
    entry = metrics["ablation_canary_memorization_batch16_same_schedule"]
    assert entry["batch"]["mean"] == 0.625 and entry["none"]["n"] == 2
    p_value = metrics["ablation_canary_memorization_batch32_same_schedule"]["p_value"]
    assert 0 < p_value < 1 and p_value == ablations.paired_gap(_batch_rows(), "memorization", "32")["t_p_value"]
    rate = metrics["ablation_canary_memorization_rate4pct_same_schedule"]
    assert 0 < rate["p_value"] < 1 and "verdict" in rate
    assert f"making {label} of the training set" in rate["description"]


# ----------------------------------------------------------------------------- figures

def test_panels_numeric_and_text_settings():
    fig = ablation_report.panels(_batch_rows(), [16, 32], "batch size", log_x=True)
    assert len(fig.axes) == 4 and fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES)
    assert fig.axes[0].get_xscale() == "log" and min(_fonts(fig)) >= plots.MIN_FONT
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [0.625, 0.4])  # BN's mean memorization
    plt.close(fig)
    rows = [{**row, "setting": {"16": "0.05", "32": "0.1"}[row["setting"]]} for row in _batch_rows()]
    fig = ablation_report.panels(rows, ["0.05", "0.1"], "peak learning rate")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.05", "0.1"]
    plt.close(fig)


def test_norm_bars_one_bar_per_normalizer():
    rows = _rows({(n, n): {"memorization": [0.1, 0.2]} for n in ("batch", "ghost", "none")})
    fig = ablation_report.norm_bars(rows)
    assert len(fig.axes) == 3 and [len(ax.patches) for ax in fig.axes] == [3, 3, 3]
    assert fig.axes[0].patches[1].get_height() == pytest.approx(0.15) and min(_fonts(fig)) >= plots.MIN_FONT
    plt.close(fig)


def test_amplification_figure_draws_measured_and_theory():
    fig = ablation_report.amplification_figure(_batch_rows(), (16, 32), distances=(2.0,))
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [10.0, 1.0])
    assert len(ax.lines) == 3 and ax.get_yscale() == "log" and min(_fonts(fig)) >= plots.MIN_FONT
    plt.close(fig)


# ----------------------------------------------------------------------------- the batch-size explorer

def test_batch_size_explorer_draws_one_line_per_run(smoke_cfg):
    params = dataclasses.replace(ablations.ChapterParams(), batch_sizes=(16,), sweep_seeds=1)
    fig, ax = plt.subplots()
    ablation_report.draw_memorization_against_fit(ax, smoke_cfg, params, 16)
    assert len(ax.lines) == 3 and ax.get_title() == "batch size 16"  # BN, none, the fit level
    plt.close(fig)
    assert ablation_report.batch_size_png(smoke_cfg, params, 16).startswith(b"\x89PNG")
    box = ablation_report.batch_size_slider(smoke_cfg, params)
    slider, picture = box.children
    assert slider.options == (16,) and bytes(picture.value).startswith(b"\x89PNG")
    html = ablation_report.batch_size_animation(smoke_cfg, params)
    assert "<img" in html or "data:image/png" in html
