"""The influence chapter's figures: every model's canary/inlier ratio per comparison and definition, and the
amplification figure (the canaries' influence alone, BN over no norm, beside the toy theory's rho). Each returns
its figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.ticker import FormatStrFormatter, NullFormatter

from . import influence, plots
from .influence_chapter import DEFINITION_LABELS, comparison_label


def tick_label(comparison: str) -> str:
    """A comparison's name on two short lines (``same`` / ``schedule``, ``fit`` / ``0.95``, ``annealed``)."""
    label = comparison_label(comparison).replace("matched fit (annealed)", "annealed")
    return label.replace(" ", "\n", 1)


def _plain_log_ticks(axes) -> None:
    for ax in np.ravel(axes):
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(NullFormatter())


def population_figure(summaries: Mapping[str, Mapping[str, Any]], compared: Mapping[str, Mapping[str, Any]]):
    """Per definition (columns) and comparison (x), every model's canary/inlier ratio (exp of its log ratio;
    dots, BN left, no norm right) and each norm's geometric mean with its 95% interval over models (bars)."""
    comparisons = list(summaries)
    fig, axes = plots.subplots(1, 3, height=3.8, sharey=True)
    rng = np.random.default_rng(0)  # horizontal jitter of the dots only
    for ax, name in zip(axes, influence.DEFINITION_NAMES, strict=True):
        for c, comparison in enumerate(comparisons):
            result = compared[name][comparison]["outlier_inlier"]
            for offset, norm in ((-0.17, "batch"), (0.17, "none")):
                values = np.exp(summaries[comparison][norm][name]["log_ratio"])
                values = values[np.isfinite(values)]
                ax.scatter(c + offset + rng.uniform(-0.06, 0.06, len(values)), values, s=6, alpha=0.45,
                           color=plots.NORM_COLORS[norm], label=plots.NORM_LABELS[norm] if c == 0 else None)
                mean, (low, high) = result[norm]["mean"], result[norm]["ci95"]
                if np.isfinite([mean, low, high]).all():
                    ax.errorbar([c + offset], [mean], yerr=[[mean - low], [high - mean]], color="k", capsize=3,
                                marker="_", markersize=10, linewidth=1.2)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set(yscale="log", title=DEFINITION_LABELS[name], xticks=range(len(comparisons)))
        ax.set_xticklabels([tick_label(c) for c in comparisons], fontsize=plots.MIN_FONT)
    _plain_log_ticks(axes)
    axes[0].set_ylabel("canary / inlier influence")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=plots.MIN_FONT)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def amplification_figure(measured: Mapping[str, Mapping[str, Any]], toy: Mapping[float, np.ndarray],
                         distances: Sequence[float], batch_size: int):
    """Left: the canaries' influence alone, BN over no norm, per definition (geometric mean over model pairs with
    its 95% interval, ``influence_chapter.amplification``). Right: the toy theory's rho at the same batch size
    against the outlier's distance a, one line per residual r. One log y-axis for both."""
    fig, axes = plots.subplots(1, 2, height=3.4, sharey=True)
    names = list(measured)
    for i, name in enumerate(names):
        ratio, (low, high) = measured[name]["ratio"], measured[name]["ci95"]
        if np.isfinite([ratio, low, high]).all():
            axes[0].errorbar([i], [ratio], yerr=[[ratio - low], [high - ratio]], color=plots.NORM_COLORS["batch"],
                             marker="o", capsize=4)
    axes[0].set_xticks(range(len(names)))
    axes[0].set_xticklabels([DEFINITION_LABELS[n].replace(" · ", "\n") for n in names], fontsize=plots.MIN_FONT)
    axes[0].set(ylabel="canary influence, BN / no norm", title="measured (matched fit)", xlim=(-0.5, len(names) - 0.5))
    for r, rho in toy.items():
        axes[1].plot(distances, rho, label=f"r = {r:g}")
    axes[1].set(xlabel="outlier distance a", title=f"toy theory, m = {batch_size}", xscale="log")
    axes[1].legend(fontsize=plots.MIN_FONT)
    for ax in axes:
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.set_yscale("log")
    _plain_log_ticks(axes)
    fig.tight_layout()
    return fig
