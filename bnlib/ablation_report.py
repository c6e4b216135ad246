"""What the ablations chapter shows, from the rows of ``ablations.sweep``: tables, figures, the batch-size
explorer, the values its prose quotes and its summary metrics.

Apart from :mod:`bnlib.ablations` on purpose: that module's source (with its imports) is in the cache key of
every sweep point (``results.code_of("ablations")``), so a change to a table or a figure here retrains
nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from . import ablations, chapter, config, memorization, plots, results, runs, theory, verdict

Rows = Sequence[dict[str, Any]]

# measure (a key of a sweep row) -> its name in tables and panel titles
MEASURES = {
    "memorization": "canary memorization (final)",
    "memorization_at_fit": "canary memorization at matched fit",
    "auc": "loss-attack AUC on canaries",
    "log10_influence_ratio_trained": "log10 influence ratio canary/inlier (trained)",
    "test": "test accuracy",
}
PANEL_MEASURES = ("memorization", "memorization_at_fit", "auc", "log10_influence_ratio_trained")
DEFENCE_BASELINE = ("BatchNorm", "batch")  # (setting, norm) of the defence sweep's baseline row
DEFENCE_GROUP = ("GroupNorm instead of BN", "group")


# ----------------------------------------------------------------------------- tables

def interval_cell(summary: dict[str, Any]) -> str:
    """A table cell of a ``stats.mean_ci`` summary over seeds: ``chapter.interval`` text (``mean [lo, hi]``, or
    ``mean (2 seeds)`` below three seeds), a bare ``–`` when no seed has a value (e.g. fit level never reached)."""
    if summary["n"] == 0:
        return "–"
    return chapter.interval(summary, ".3f", "seeds")


def table_markdown(rows: Rows, measures: dict[str, str] = MEASURES) -> str:
    """Markdown table of a sweep: one row per (setting, norm), in the order of the sweep, with each measure of
    ``measures`` (key -> column name) as :func:`interval_cell` over seeds."""
    summaries = {m: ablations.summarize(rows, m) for m in measures}
    body = [(setting, plots.NORM_LABELS.get(norm, norm), *(interval_cell(summaries[m][(setting, norm)])
                                                            for m in measures))
            for setting, norm in summaries[next(iter(measures))]]
    return chapter.markdown_table(("setting", "norm", *measures.values()), body)


def defence_table_markdown(rows: Rows) -> str:
    """Markdown table of the defence sweep: per change, mean final canary memorization, loss-attack AUC and
    test accuracy over seeds, each with its difference from the BatchNorm baseline (gain: baseline minus the
    change, positive = less leakage; cost: the change minus baseline, negative = less accurate)."""
    summaries = {m: ablations.summarize(rows, m) for m in ("memorization", "auc", "test")}
    base = {m: s[DEFENCE_BASELINE]["mean"] for m, s in summaries.items()}
    body = []
    for key in summaries["memorization"]:
        mem, auc, test = (summaries[m][key]["mean"] for m in ("memorization", "auc", "test"))
        body.append((key[0], f"{mem:.3f}", f"{base['memorization'] - mem:+.3f}", f"{auc:.3f}",
                     f"{base['auc'] - auc:+.3f}", f"{test:.3f}", f"{test - base['test']:+.3f}"))
    header = ("change", "canary memorization", "gain", "loss-attack AUC", "gain", "test accuracy", "cost")
    return chapter.markdown_table(header, body)


# ----------------------------------------------------------------------------- figures

def panels(rows: Rows, settings: Sequence[Any], xlabel: str, measures: Sequence[str] = PANEL_MEASURES,
           log_x: bool = False):
    """One panel per measure (2 x 2): mean with its 95% interval band over seeds against the setting, one line
    per norm. Numeric ``settings`` (batch sizes) are the x values (``log_x``: base-2 axis); text settings
    (learning rates, canary rates) are evenly spaced and named on the axis."""
    fig, axes = plots.subplots(2, 2, height=5.0)
    text = isinstance(settings[0], str)
    xs = list(range(len(settings))) if text else [float(s) for s in settings]
    missing = {"mean": np.nan, "ci95": [np.nan, np.nan]}
    for ax, m in zip(axes.ravel(), measures, strict=False):
        summary = ablations.summarize(rows, m)
        for norm in dict.fromkeys(n for _, n in summary):
            found = [summary.get((str(s), norm), missing) for s in settings]
            color = plots.NORM_COLORS.get(norm, "k")
            ax.plot(xs, [f["mean"] for f in found], "o-", color=color, label=plots.NORM_LABELS.get(norm, norm))
            ax.fill_between(xs, [f["ci95"][0] for f in found], [f["ci95"][1] for f in found], color=color,
                            alpha=0.2, linewidth=0)
        ax.set_title(MEASURES[m], fontsize=plots.MIN_FONT)
        ax.set_xlabel(xlabel)
        if text:
            ax.set_xticks(xs, list(settings))
        elif log_x:
            ax.set_xscale("log", base=2)
    axes.flat[0].legend(fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


def norm_bars(rows: Rows, measures: Sequence[str] = ("memorization", "memorization_at_fit", "auc")):
    """The normalizer sweep as bars: one panel per measure, one bar per normalizer (mean over seeds, 95%
    interval as the error bar), in the sweep's order."""
    fig, axes = plots.subplots(1, len(measures), height=3.2, squeeze=False)
    for ax, m in zip(axes.flat, measures, strict=True):
        summary = ablations.summarize(rows, m)
        labels = [norm for (_, norm) in summary]
        means = np.array([v["mean"] for v in summary.values()])
        errors = np.array([[v["mean"] - v["ci95"][0], v["ci95"][1] - v["mean"]] for v in summary.values()]).T
        ax.bar(range(len(labels)), means, yerr=errors, capsize=3,
               color=[plots.NORM_COLORS.get(n, "0.6") for n in labels])
        ax.set_xticks(range(len(labels)), labels, rotation=30)
        ax.set_title(MEASURES[m], fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


def influence_amplification(rows: Rows, settings: Sequence[Any]) -> list[float]:
    """Per setting: the influence ratio (canary over inliers, trained; geometric mean over seeds) under BN
    divided by the same under no normalization, 10 ** (mean log10 ratio BN - mean log10 ratio none)."""
    logs = ablations.summarize(rows, "log10_influence_ratio_trained")
    return [10 ** (logs[(str(s), "batch")]["mean"] - logs[(str(s), "none")]["mean"]) for s in settings]


def amplification_figure(rows: Rows, batch_sizes: Sequence[int], distances: Sequence[float] = (2.0, 4.0)):
    """Measured BN/no-BN influence amplification (:func:`influence_amplification`) of the batch-size sweep
    against the theory chapter's toy-model prediction (``theory.amplification``) for an outlier at each
    distance ``a`` along the learned direction, on log-log axes."""
    fig, ax = plots.subplots(height=3.4)
    sizes = np.array(batch_sizes)
    ax.plot(sizes, influence_amplification(rows, batch_sizes), "o-", color=plots.NORM_COLORS["batch"],
            label="measured: CNN (BN ratio / no-BN ratio, geometric means)")
    grid = np.unique(np.geomspace(max(3, sizes.min() / 2), sizes.max() * 2, 40).astype(int))
    for distance in distances:
        ax.plot(grid, theory.amplification(grid, distance), "--", label=f"theory: toy model, a = {distance:g}")
    ax.axhline(1.0, color="0.5", linewidth=0.8)
    ax.set(xscale="log", yscale="log", xlabel="batch size m", ylabel="BN / no-BN influence")
    ax.legend(fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the batch-size explorer

def draw_memorization_against_fit(ax, cfg, params: ablations.ChapterParams, batch_size: int) -> None:
    """Draw on ``ax`` (cleared first) canary memorization against inlier fit along training, one line per run
    of the sweep's seeds, BN and no normalization, at one batch size (runs trained or read from the cache)."""
    ax.clear()
    point = replace(cfg, batch_size=int(batch_size))
    for norm in config.COMPARED_NORMS:
        for k, seed in enumerate(cfg.seeds[:params.sweep_seeds]):
            curve = memorization.memorization_curve(runs.train_run(point, norm, seed, progress=False))
            ax.plot(curve["fit"], curve["memorization"], "-", color=plots.NORM_COLORS[norm], alpha=0.8,
                    label=plots.NORM_LABELS[norm] if k == 0 else None)
    ax.axvline(params.fit_level, color="0.5", linestyle=":", linewidth=0.8)
    ax.set(xlabel="inlier train accuracy (fit)", ylabel="canary memorization", xlim=(0, 1.02), ylim=(-0.1, 1.02),
           title=f"batch size {batch_size}")
    ax.legend(loc="upper left", fontsize=plots.MIN_FONT)


def batch_size_animation(cfg, params: ablations.ChapterParams) -> str:
    """Offline HTML slider over ``params.batch_sizes`` (``plots.offline_jshtml``): each frame is
    :func:`draw_memorization_against_fit` at one batch size, rendered now, so it moves in a static page."""
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    fig, ax = plots.subplots(height=3.6)

    def frame(k: int) -> None:
        draw_memorization_against_fit(ax, cfg, params, params.batch_sizes[k])

    animation = FuncAnimation(fig, frame, frames=len(params.batch_sizes))
    html = plots.offline_jshtml(animation)
    plt.close(fig)
    return html


def batch_size_png(cfg, params: ablations.ChapterParams, batch_size: int) -> bytes:
    """:func:`draw_memorization_against_fit` at one batch size as PNG bytes (the figure is closed)."""
    fig, ax = plots.subplots(height=3.6)
    draw_memorization_against_fit(ax, cfg, params, batch_size)
    fig.tight_layout()
    return plots.figure_png(fig)


def batch_size_slider(cfg, params: ablations.ChapterParams):
    """A live ``ipywidgets`` explorer: a batch-size slider above an Image redrawn (:func:`batch_size_png`) when
    it moves. An Image, not an Output widget: batch execution can deadlock on an Output widget."""
    import ipywidgets as widgets

    slider = widgets.SelectionSlider(options=list(params.batch_sizes), description="batch size",
                                     continuous_update=False)
    picture = widgets.Image(format="png", value=batch_size_png(cfg, params, slider.value))

    def redraw(change: dict[str, Any]) -> None:
        picture.value = batch_size_png(cfg, params, change["new"])

    slider.observe(redraw, "value")
    return widgets.VBox([slider, picture])


# ----------------------------------------------------------------------------- what the prose quotes

def gap_text(label: str, gap: dict[str, Any]) -> str:
    """One ``stats.paired_test`` result over seeds as prose: ``at 4.1% +0.136 (95% CI [-0.1, +0.3], n = 2 seeds)``."""
    low, high = gap["diff"]["ci95"]
    return f"at {label} {gap['diff']['mean']:+.3f} (95% CI [{low:+.3f}, {high:+.3f}], n = {gap['n']} seeds)"


def batch_size_values(rows: Rows, batch_sizes: Sequence[int]) -> dict[str, Any]:
    """The batch-size section's glued values: ``bs_small``/``bs_large`` (smallest and largest batch size) with
    BN − no-BN final memorization paired over seeds (``_gap``, ``_gap_low``, ``_gap_high``), the influence
    amplification at both (``bs_influence_small``, ``_large``) and the inlier fit reached at the largest
    (``bs_large_fit_bn``, ``bs_large_fit_none``)."""
    smallest, largest = str(min(batch_sizes)), str(max(batch_sizes))
    values: dict[str, Any] = {}
    for label, setting in (("small", smallest), ("large", largest)):
        gap = ablations.paired_gap(rows, "memorization", setting)
        values.update({f"bs_{label}": int(setting), f"bs_{label}_gap": gap["diff"]["mean"],
                       f"bs_{label}_gap_low": gap["diff"]["ci95"][0], f"bs_{label}_gap_high": gap["diff"]["ci95"][1]})
    small, large = influence_amplification(rows, (smallest, largest))
    fits = ablations.summarize(rows, "fit")
    return {**values, "bs_influence_small": float(small), "bs_influence_large": float(large),
            "bs_large_fit_bn": fits[(largest, "batch")]["mean"], "bs_large_fit_none": fits[(largest, "none")]["mean"]}


def norm_sentence(rows: Rows, variant_norms: Sequence[str]) -> str:
    """Mean final canary memorization of each normalizer of the normalizer sweep: ``BatchNorm 0.031, ...``."""
    summary = ablations.summarize(rows, "memorization")
    return ", ".join(f"{plots.NORM_LABELS.get(n, n)} {summary[(n, n)]['mean']:.3f}" for n in variant_norms)


def length_values(rows: Rows, epoch_factors: Sequence[int]) -> dict[str, Any]:
    """The training-length section's glued values: BN − no-BN final memorization on the chapter's schedule
    (``length_gap_short``) and on the longest (``length_long``, e.g. ``3x``: ``length_gap_long`` with its
    ``_low`` and ``_high`` paired interval)."""
    long_label = f"{max(epoch_factors)}x"
    gap_long = ablations.paired_gap(rows, "memorization", long_label)
    gap_short = ablations.paired_gap(rows, "memorization", f"{min(epoch_factors)}x")
    return {"length_long": long_label, "length_gap_short": gap_short["diff"]["mean"],
            "length_gap_long": gap_long["diff"]["mean"], "length_gap_long_low": gap_long["diff"]["ci95"][0],
            "length_gap_long_high": gap_long["diff"]["ci95"][1]}


def canary_rate_values(rows: Rows, cfg, params: ablations.ChapterParams) -> dict[str, Any]:
    """The canary-rate section's glued values: each rate as it really is with its number of canaries
    (``canary_rates_text``), the rate of the book's own population (``book_canary_rate``) and BN − no-BN final
    memorization paired over seeds at each rate (``rate_gaps_text``, :func:`gap_text`)."""
    labels = [ablations.canary_rate_label(cfg.n_train, rate) for rate in params.canary_rates]
    counts = [ablations.canaries_for_rate(cfg.n_train, rate) for rate in params.canary_rates]
    gaps = {label: ablations.paired_gap(rows, "memorization", label) for label in labels}
    return {"canary_rates_text": ", ".join(f"{label} ({k} canaries)" for label, k in zip(labels, counts, strict=True)),
            "book_canary_rate": cfg.n_canaries / (cfg.n_train + cfg.n_canaries),
            "rate_gaps_text": "; ".join(gap_text(label, gap) for label, gap in gaps.items())}


def defence_values(rows: Rows) -> dict[str, float]:
    """GroupNorm instead of BN in the defence sweep: its gain in final canary memorization over the BN baseline
    (``defence_group_gain``, positive = less) and its test-accuracy change (``defence_group_cost``)."""
    mem, test = (ablations.summarize(rows, m) for m in ("memorization", "test"))
    return {"defence_group_gain": mem[DEFENCE_BASELINE]["mean"] - mem[DEFENCE_GROUP]["mean"],
            "defence_group_cost": test[DEFENCE_GROUP]["mean"] - test[DEFENCE_BASELINE]["mean"]}


# ----------------------------------------------------------------------------- summary

def summary_metrics(batch_rows: Rows, rate_rows: Rows, cfg, params: ablations.ChapterParams
                    ) -> dict[str, dict[str, Any]]:
    """The chapter's summary (``verdict.annotate``d ``results.metric_entry`` values, no headline family: these
    sweeps describe, raw p-values): BN and no-BN final canary memorization over seeds, with the paired t-test,
    at each batch size (``ablation_canary_memorization_batch{B}_same_schedule``) and each canary rate
    (``..._rate{R}pct_same_schedule``, R the rate asked for, in percent)."""
    metrics = {}
    common = dict(test="paired t-test over seeds", higher_means="more memorization", comparison="same_schedule")
    batch = ablations.summarize(batch_rows, "memorization")
    for b in params.batch_sizes:
        gap = ablations.paired_gap(batch_rows, "memorization", str(b))
        metrics[f"ablation_canary_memorization_batch{b}_same_schedule"] = results.metric_entry(
            {"batch": batch[(str(b), "batch")], "none": batch[(str(b), "none")]}, p_value=gap["t_p_value"],
            description=f"Final canary accuracy, inserted minus held out, at batch size {b} (same epochs).", **common)
    rate = ablations.summarize(rate_rows, "memorization")
    for fraction in params.canary_rates:
        label = ablations.canary_rate_label(cfg.n_train, fraction)
        gap = ablations.paired_gap(rate_rows, "memorization", label)
        metrics[f"ablation_canary_memorization_rate{round(100 * fraction)}pct_same_schedule"] = results.metric_entry(
            {"batch": rate[(label, "batch")], "none": rate[(label, "none")]}, p_value=gap["t_p_value"],
            description=f"Final canary accuracy, inserted minus held out, with canaries making {label} of the "
                        f"training set ({ablations.canaries_for_rate(cfg.n_train, fraction)} canaries; same epochs); "
                        "n counts seeds.", **common)
    return verdict.annotate(metrics)
