"""The membership-inference chapter's figures, in the book's house style (:mod:`bnlib.plots`).

Each function returns the figure; the notebook cell shows it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from . import mia, plots


def pooled_roc_curves(measured: Mapping[str, dict[str, Any]], keep: np.ndarray, groups: Mapping[str, np.ndarray],
                      attack: str):
    """Per group (one panel each), the log-log ROC of the headline attack's scores of all targets pooled, one
    curve per norm, with chance down to one over the pooled non-members.

    Args:
        measured: norm -> :func:`bnlib.mia.measure` (its ``scores`` (T, N) are the headline attack's);
        keep: (T, N) membership; groups: group -> (N,) mask; attack: the headline attack (titles, counts).
    """
    fig, axes = plots.subplots(1, len(groups), height=3.6, sharey=True, squeeze=False)
    for ax, (group, mask) in zip(axes[0], groups.items(), strict=True):
        for norm, m in measured.items():
            fpr, tpr = mia.pooled_roc(m["scores"], keep, mask)
            ax.plot(fpr, tpr, color=plots.NORM_COLORS[norm], label=plots.NORM_LABELS[norm])
        negatives = int(np.round(measured["batch"]["attacks"][attack][group]["n_nonmembers"].mean()))
        floor = 1 / (negatives * keep.shape[0])  # one over the pooled non-members
        ax.plot([floor, 1], [floor, 1], color="grey", linestyle=":", label="chance")
        ax.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1.05), xlabel="false positive rate",
               title=f"{group}: {attack},\nall targets pooled")
    axes[0, 0].set_ylabel("true positive rate")
    axes[0, 0].legend()
    fig.tight_layout()
    return fig


def fit_curves(fits: Mapping[str, dict[str, Any]], level: float, resamples: mia.Resamples):
    """The attack's outlier AUC (left) and TPR at 1% FPR (right) at every checkpoint against the targets' mean
    inlier train accuracy, per norm, with two-way bootstrap 95% intervals; the dashed line is the matched level.

    Args:
        fits: norm -> ``measure(...)["fit"]``; level: the matched fit level; resamples: of the outliers.
    """
    fig, axes = plots.subplots(1, 2, height=3.6)
    for ax, metric, title in zip(axes, ("auc", "tpr_at_1pct_fpr"), ("AUC", "TPR at 1% FPR"), strict=True):
        for norm, fit in fits.items():
            outliers = fit["outliers"]
            summaries = [mia.interval(outliers["point"][metric][e], outliers["resampled"][metric][e], resamples)
                         for e in range(len(fit["epochs"]))]
            means = np.array([s["mean"] for s in summaries])
            errors = np.abs(np.array([s["ci95"] for s in summaries]).T - means)  # (2, E) below and above
            ax.errorbar(fit["train_accuracy"].mean(1), means, yerr=errors, color=plots.NORM_COLORS[norm], marker="o",
                        markersize=3, capsize=2, label=f"{plots.NORM_LABELS[norm]} ({int(fit['epochs'][-1])} epochs)")
        ax.axvline(level, color="grey", linestyle="--", linewidth=1)
        ax.set(xlabel="inlier train accuracy of the target\n(mean over targets)", title=f"outliers: {title}")
    axes[0].legend()
    fig.tight_layout()
    return fig
