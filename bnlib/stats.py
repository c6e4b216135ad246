"""Summary statistics used by every chapter: t confidence intervals, paired tests, interpolation at a
fixed fit level. Thin wrappers over scipy.stats so that each chapter reports them the same way."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, two-sided Student-t confidence interval and count of ``values`` (NaNs dropped).

    Returns ``{"mean": float, "ci95": [lo, hi], "n": int}``; with n = 1 the interval is [mean, mean]
    widened to nothing (reported, not hidden: n says how much stands behind it).
    """
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0}
    mean = float(array.mean())
    if n == 1 or float(array.std()) == 0.0:
        return {"mean": mean, "ci95": [mean, mean], "n": n}
    low, high = scipy_stats.t.interval(confidence, n - 1, loc=mean, scale=scipy_stats.sem(array))
    return {"mean": mean, "ci95": [float(low), float(high)], "n": n}


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired comparison of a vs b (same units, e.g. the same canaries under two norms).

    Returns the mean difference a - b with its t interval, and the p-values of the paired t-test and
    of the Wilcoxon signed-rank test (two-sided). NaN p-values when there are fewer than 2 pairs or
    all differences are zero.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    diff = a[keep] - b[keep]
    out = {"diff": mean_ci(diff), "t_p_value": float("nan"), "wilcoxon_p_value": float("nan"), "n": int(diff.size)}
    if diff.size >= 2 and np.any(diff != 0):
        out["t_p_value"] = float(scipy_stats.ttest_rel(a[keep], b[keep]).pvalue)
        out["wilcoxon_p_value"] = float(scipy_stats.wilcoxon(diff).pvalue)
    return out


def welch_test(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value for independent samples (NaN if either has < 2 values)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    if a.size < 2 or b.size < 2:
        return float("nan")
    return float(scipy_stats.ttest_ind(a, b, equal_var=False).pvalue)


def value_at_level(levels: Sequence[float], values: Sequence[float], target: float) -> float:
    """Linear interpolation of ``values`` at ``target`` along a monotone-ish curve of ``levels``.

    Used to read a measurement (e.g. canary memorization) at a fixed fit level (e.g. inlier train
    accuracy 0.95) along a training run. The curve is made monotone by a running maximum of
    ``levels`` first; NaN if the run never reaches ``target``.
    """
    levels = np.maximum.accumulate(np.asarray(levels, dtype=float))
    values = np.asarray(values, dtype=float)
    if levels.size == 0 or target > levels[-1] or target < levels[0]:
        return float("nan")
    first = int(np.argmax(levels >= target))
    if first == 0 or levels[first] == target:
        return float(values[first])
    x0, x1 = levels[first - 1], levels[first]
    weight = (target - x0) / (x1 - x0)
    return float(values[first - 1] + weight * (values[first] - values[first - 1]))
