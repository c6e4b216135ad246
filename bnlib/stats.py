"""Summary statistics used by every chapter: t confidence intervals (arithmetic and, for ratios, on the
log scale), paired tests, reading a run at a fixed fit level and choosing the levels every run reaches.
Thin wrappers over scipy.stats so that each chapter reports them the same way. The model-level bootstrap,
multiple-testing correction and verdict words live in :mod:`bnlib.verdict`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, two-sided Student-t confidence interval and count of ``values`` (NaNs dropped).

    Returns ``{"mean": float, "ci95": [lo, hi], "n": int}``. With n = 0 everything is NaN; with n = 1 the
    bounds are NaN (one run says nothing about its spread: the page should say "one run", not show a
    zero-width interval). With n >= 2 identical values the t interval is zero-width and is returned as
    such ([mean, mean]): the replicates really agree (e.g. every run at train accuracy 1.0), and ``n``
    says how many stand behind it.
    """
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n <= 1:
        return {"mean": float(array[0]) if n else float("nan"), "ci95": [float("nan"), float("nan")], "n": n}
    mean = float(array.mean())
    if float(array.std()) == 0.0:
        return {"mean": mean, "ci95": [mean, mean], "n": n}
    low, high = scipy_stats.t.interval(confidence, n - 1, loc=mean, scale=scipy_stats.sem(array))
    return {"mean": mean, "ci95": [float(low), float(high)], "n": n}


def geometric_mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Geometric mean of positive ratios with a t interval taken on the log scale, so it stays positive.

    Ratios (e.g. outlier / inlier gradient norms) are summarized as exp(mean(log r)) with bounds
    exp(:func:`mean_ci` bounds of log r): a ratio of 2 and one of 1/2 average to 1, not 1.25.
    Returns the shape of :func:`mean_ci` (NaN bounds for n = 1; NaNs dropped).
    """
    array = np.asarray(values, dtype=float)
    array = array[~np.isnan(array)]
    if np.any(array <= 0) or not np.all(np.isfinite(array)):
        raise ValueError(f"Parameter 'values' holds {array[(array <= 0) | ~np.isfinite(array)][:3].tolist()}; "
                         "a geometric mean needs finite positive ratios.")
    on_log = mean_ci(np.log(array), confidence)
    return {"mean": float(np.exp(on_log["mean"])), "ci95": [float(np.exp(b)) for b in on_log["ci95"]],
            "n": on_log["n"]}


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


def value_at_level(levels: Sequence[float], values: Sequence[float], target: float) -> float:
    """``values`` read where the run's ``levels`` first cross ``target``, linearly interpolated.

    Used to read a measurement (e.g. canary memorization) at a fixed fit level (e.g. inlier train
    accuracy 0.95) along a training run. The crossing is the first point i with levels[i] >= target;
    the value is interpolated between point i-1 and point i on their *actual* levels (a dip in fit
    before the crossing is not hidden by a running maximum, so the measurement is paired with the fit
    it was taken at). NaN if the run never reaches ``target`` or starts above it (no crossing seen).
    """
    levels = np.asarray(levels, dtype=float)
    values = np.asarray(values, dtype=float)
    if levels.shape != values.shape:
        raise ValueError(f"Parameters 'levels' {levels.shape} and 'values' {values.shape} must have one shape.")
    reached = levels >= target
    if not reached.any():
        return float("nan")
    first = int(np.argmax(reached))
    if levels[first] == target:
        return float(values[first])
    if first == 0:
        return float("nan")
    x0, x1 = levels[first - 1], levels[first]  # x0 < target < x1
    weight = (target - x0) / (x1 - x0)
    return float(values[first - 1] + weight * (values[first] - values[first - 1]))


def common_top_level(runs: Mapping[str, Iterable[Sequence[float]]] | Iterable[Sequence[float]],
                     resolution: float = 0.01) -> float:
    """The highest level that every run reaches: min over runs of each run's maximum, floored to
    ``resolution`` (0.01 for train accuracies; 0.001 for test accuracies).

    Args:
        runs: curves of a level along training (e.g. inlier train accuracy per checkpoint), either
            norm -> curves (every run of every norm counts) or one iterable of curves. NaNs are ignored.
    Returns:
        The level; every run reaches it at one of its points. A run whose *first* point already lies
        above the level has no observed crossing, and :func:`value_at_level` gives NaN for it (e.g. a
        fast BN run at its first checkpoint vs a slow run's top): callers report such runs as missing.
    """
    curves = [c for group in runs.values() for c in group] if isinstance(runs, Mapping) else list(runs)
    if not curves:
        raise ValueError("Parameter 'runs' is empty; the common top level needs at least one run.")
    if resolution <= 0:
        raise ValueError(f"Parameter 'resolution' is {resolution!r}; allowed: a positive step such as 0.01.")
    maxima = [np.nanmax(np.asarray(c, dtype=float)) if np.isfinite(np.asarray(c, dtype=float)).any() else np.nan
              for c in curves]
    if np.isnan(maxima).any():
        raise ValueError("Parameter 'runs' holds a run without any finite level.")
    # round before flooring: 0.95 / 0.01 is 94.999..., which must floor to 95
    return float(np.floor(np.round(min(maxima) / resolution, 9)) * resolution)


def matched_levels(runs: Mapping[str, Iterable[Sequence[float]]] | Iterable[Sequence[float]],
                   fractions: Sequence[float] = (0.9, 0.95, 1.0), resolution: float = 0.01) -> list[float]:
    """Fit levels at which norms are compared, by one rule: the :func:`common_top_level` times each of
    ``fractions`` (each in (0, 1]), floored to ``resolution``; ascending, duplicates dropped.

    E.g. a top level 0.99 with the default fractions gives [0.89, 0.94, 0.99].
    """
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"Parameter 'fractions' is {tuple(fractions)!r}; allowed: fractions in (0, 1].")
    top = common_top_level(runs, resolution)
    levels = {float(np.floor(np.round(top * f / resolution, 9)) * resolution) for f in fractions}
    return sorted(round(level, 12) for level in levels)
