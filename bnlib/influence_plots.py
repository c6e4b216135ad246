"""The influence chapter's figures: the three definitions over training, the outlier/inlier ratio over epochs and
against fit, and one BatchNorm run's probe samples under two definitions at a time. Each returns its figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import NullFormatter

from . import influence, plots
from .influence_chapter import DEFINITION_LABELS

Tracks = Mapping[str, Sequence[dict[str, Any]]]  # norm -> the tracks of its seeds


def epochs_of(tracks: Tracks) -> list[float]:
    """The checkpoints' epochs (every track has the same)."""
    return [record["epoch"] for record in next(iter(tracks.values()))[0]["records"]]


def definitions_over_training(tracks: Tracks):
    """Per definition, the median influence over training (line) with its interquartile band, for the probe
    inliers (solid) and canaries (dashed) of every norm, all seeds pooled."""
    epochs = epochs_of(tracks)
    fig, axes = plots.subplots(1, 3, height=3.9, sharey=True)
    for ax, name in zip(axes, influence.DEFINITION_NAMES, strict=True):
        for norm, runs in tracks.items():
            values = np.concatenate([t[name].flatten(1).numpy() for t in runs], axis=1)  # (E, samples)
            canary = np.concatenate([t["measured_is_canary"].flatten().numpy() for t in runs])
            for group, style in ((~canary, "-"), (canary, "--")):
                plots.band(ax, epochs, values[:, group].T, norm, quantiles=(0.25, 0.75),
                           label=f"{plots.NORM_LABELS[norm]}, {'canaries' if style == '--' else 'inliers'}")
                ax.lines[-1].set_linestyle(style)
        ax.set(yscale="log", title=DEFINITION_LABELS[name], xlabel="epoch")
    axes[0].set_ylabel("influence (gradient norm)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=plots.MIN_FONT)
    fig.tight_layout(rect=(0, 0.17, 1, 1))
    return fig


def ratios_figure(tracks: Tracks, level: float):
    """Per definition (columns), the outlier/inlier ratio (``influence.outlier_inlier_ratios``) over epochs (top:
    mean over seeds with their range) and against each run's inlier fit (bottom, one line per run; the dotted
    line is the matched-fit ``level``)."""
    epochs = epochs_of(tracks)
    fig, axes = plots.subplots(2, 3, height=5.6, sharey="row")
    for column, name in enumerate(influence.DEFINITION_NAMES):
        for norm, runs in tracks.items():
            ratios = [influence.outlier_inlier_ratios(t, name) for t in runs]
            plots.band(axes[0, column], epochs, ratios, norm)
            for t, ratio in zip(runs, ratios, strict=True):
                fits = [r["inliers_acc"] for r in t["records"]]
                axes[1, column].plot(fits, ratio, color=plots.NORM_COLORS[norm], alpha=0.7, marker=".")
        axes[0, column].set(title=DEFINITION_LABELS[name], xlabel="epoch")
        axes[1, column].axvline(level, color="k", linestyle=":", linewidth=1)
        axes[1, column].set_xlabel("inlier train acc.")
        for row in range(2):
            axes[row, column].axhline(1.0, color="grey", linewidth=0.8)
            axes[row, column].set_yscale("log")
    for row in range(2):
        axes[row, 0].set_ylabel("canary / inlier")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=len(tracks), fontsize=plots.MIN_FONT)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig


def definitions_scatter(final: Mapping[str, np.ndarray], canary: np.ndarray):
    """One run's probe samples at the end of training (``influence_chapter.final_values``): definition 2 against
    1 (left) and 3 against 2 (right), inliers and canaries; on the diagonal two definitions agree."""
    fig, axes = plots.subplots(1, 2, height=3.6)
    for ax, (a, b) in zip(axes, (("eval_mode", "in_batch"), ("in_batch", "counterfactual")), strict=True):
        for group, color, label in ((~canary, plots.NORM_COLORS["none"], "inliers"),
                                    (canary, plots.NORM_COLORS["batch"], "canaries")):
            ax.scatter(final[a][group], final[b][group], s=14, color=color, label=label)
        low, high = min(final[a].min(), final[b].min()), max(final[a].max(), final[b].max())
        ax.plot([low, high], [low, high], color="grey", linewidth=0.8)
        ax.set(xscale="log", yscale="log", xlabel=DEFINITION_LABELS[a], ylabel=DEFINITION_LABELS[b])
        ax.xaxis.set_minor_formatter(NullFormatter())  # a narrow log range labels its minor ticks, on top of each other
    axes[0].legend(fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig
