"""What a BN vs no-BN comparison may conclude: one calibrated inference on model pairs, equivalence with a
declared margin, the smallest difference the design detects at the alpha the verdict uses, one book-level
family of primary endpoints (Holm), and one verdict in exactly five kinds of words.

Unit and target. The unit of replication is the *model pair*: member t of pool p trained under BN and without
normalization (same data draw, keep mask and seed). Each pair is summarized by one number (the mean over
examples of the paired BN - no-BN difference, or the difference of a per-model metric such as a target's
AUC); canaries of one model are not independent, and a model x example residual that dominates binary
outcomes is then counted once, inside each pair's summary. The inferential target (:data:`TARGET`) is
conditional on the data draws and on the canaries: the pools are fixed strata, and the interval covers the
mean BN - no-BN difference over the possible model pairs (keep masks, seeds, SGD noise) of *these* pools and
*these* examples. It does not generalize to other data draws: two pools cannot estimate a between-pool
variance (a resampling over pools that pretends to had its type-I error hang on it), and the book says so.
The reference is a t on the pair summaries with pools as strata (pool means removed; df = pairs - pools);
where a per-pair summary does not exist (a TPR read off the ROC pooled over every target), a sign-flip of
the BN/no-BN labels within pairs gives the p-value and a pair-level jackknife the interval
(:func:`pair_swap_test`, :func:`jackknife_interval`). ``tests/test_verdict.py`` checks coverage and type-I
error of both on simulated crossed populations of the measured shape.

Shapes:
    batch, none  (T,)     one number per model of each norm (row t of both arrays is pair t)
                 (T, N)   one number per (model, example), NaN where it does not exist; a pair's summary is
                          the mean over the examples finite in both of batch - none
    pools        (T,)     the data-pool label of each pair (the strata)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from . import config

TARGET = ("mean BN - no-BN difference over model pairs, conditional on the data draws and canaries "
          "(pools as fixed strata)")
VERDICTS = ("BN higher", "no-BN higher", "equivalent within", "no difference detected", "inconclusive")
MIN_REPLICATES = 3  # fewer pairs than this: nothing can be said
ALPHA = 0.05
POWER = 0.8


# ----------------------------------------------------------------------------- per-pair summaries

def _as_rows(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim not in (1, 2) or values.size == 0:
        raise ValueError(f"Parameter {name!r} has shape {values.shape}; allowed: (T,) per-model values or "
                         "(T, N) per-(model, example) values, non-empty.")
    return values if values.ndim == 2 else values[:, None]


def _pools(pools: np.ndarray | None, n_pairs: int) -> np.ndarray:
    if pools is None:
        return np.zeros(n_pairs, dtype=int)
    pools = np.asarray(pools)
    if pools.shape != (n_pairs,):
        raise ValueError(f"Parameter 'pools' has shape {pools.shape}; allowed: ({n_pairs},), one data-pool label "
                         "per model pair.")
    return np.unique(pools, return_inverse=True)[1]


def pair_summaries(batch: np.ndarray, none: np.ndarray) -> np.ndarray:
    """(T,) each pair's BN - no-BN difference: the mean over the examples finite in both norms of
    batch - none (for (T,) inputs simply batch - none); NaN for a pair without such an example."""
    a, b = _as_rows(batch, "batch"), _as_rows(none, "none")
    if a.shape != b.shape:
        raise ValueError(f"Parameters 'batch' {a.shape} and 'none' {b.shape} must have one shape: row t of both "
                         "is model pair t, column n the same example.")
    difference = a - b
    finite = np.isfinite(difference)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, difference, 0.0).sum(1) / finite.sum(1)


def model_means(values: np.ndarray) -> np.ndarray:
    """(T,) each model's mean over its finite entries (NaN where it has none)."""
    values = _as_rows(values, "values")
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(finite, values, 0.0).sum(1) / finite.sum(1)


# ----------------------------------------------------------------------------- the stratified t

def _nan_result(n: int, unit: str, method: str) -> dict[str, Any]:
    return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "se": float("nan"), "df": 0,
            "p_value": float("nan"), "n": n, "unit": unit, "pools": 0, "method": method, "target": TARGET}


def stratified_t(values: np.ndarray, pools: np.ndarray | None = None, *, unit: str = "models",
                 confidence: float = 0.95) -> dict[str, Any]:
    """Mean of per-pair (or per-model) values with a Student-t interval and p-value (H0: mean 0), pools as
    fixed strata.

    The estimate is the mean of the finite values (each pool weighted by its count of pairs, so the mean of
    the pool means when pools are equal); its variance is the pooled *within*-pool variance over n, with
    df = n - pools. A difference between pools' means is part of the target, not of the noise.

    Returns:
        ``mean``, ``ci95``, ``se``, ``df``, ``p_value`` (two-sided), ``n`` (finite values), ``unit``,
        ``pools`` (strata with a value), ``method``, ``target`` (:data:`TARGET`).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 1:
        raise ValueError(f"Parameter 'values' has shape {values.shape}; allowed: (T,), one number per pair.")
    labels = _pools(pools, len(values))
    finite = np.isfinite(values)
    values, labels = values[finite], labels[finite]
    n, method = int(values.size), "paired t, pools as strata"
    if n == 0:
        return _nan_result(0, unit, method)
    strata = np.unique(labels)
    pool_means = np.array([values[labels == p].mean() for p in strata])
    residuals = values - pool_means[np.searchsorted(strata, labels)]
    mean, df = float(values.mean()), n - len(strata)
    out = {**_nan_result(n, unit, method), "mean": mean, "df": int(df), "pools": int(len(strata))}
    if df < 1:
        return out
    se = float(math.sqrt(np.sum(residuals**2) / df / n))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df) * se)
    if se == 0:
        p_value = 1.0 if mean == 0 else 0.0
    else:
        p_value = float(2 * scipy_stats.t.sf(abs(mean) / se, df))
    return {**out, "se": se, "ci95": [mean - half, mean + half], "p_value": p_value}


def paired_difference(batch: np.ndarray, none: np.ndarray, *, pools: np.ndarray | None = None,
                      unit: str = "models") -> dict[str, Any]:
    """BN - no-BN on model pairs: :func:`stratified_t` of the :func:`pair_summaries`.

    Replaces the cluster bootstrap over pools x models x examples, which counted the model x example
    residual at every level (its SE was 1.9x the true one, and its type-I error hung on a between-pool
    variance that two pools cannot estimate); ``tests/test_verdict.py`` simulates the design.

    Args:
        batch, none: (T,) or (T, N), row t of both is pair t (same data, keep mask and seed).
        pools: (T,) data-pool label of each pair (strata); None: one pool.
        unit: what ``n`` counts ("models": the pairs).
    Returns:
        the dict of :func:`stratified_t`, its ``target`` saying what the interval is about.
    """
    return stratified_t(pair_summaries(batch, none), pools, unit=unit)


def stratified_mean(values: np.ndarray, pools: np.ndarray | None = None, *, unit: str = "models"
                    ) -> dict[str, Any]:
    """One norm's mean over models of each model's mean over examples, with the interval of
    :func:`stratified_t` (pools as strata): the per-norm value shown beside a difference."""
    return stratified_t(model_means(values), pools, unit=unit)


# ----------------------------------------------------------------------------- sign flips within pairs

def sign_flips(n_pairs: int, n_permutations: int, seed: int = 0) -> np.ndarray:
    """(B, n_pairs) bool: which pairs swap their BN and no-BN labels in each permutation. With 2^n_pairs <=
    n_permutations every assignment is enumerated (an exact test); else B random ones, the first the identity."""
    if n_pairs < 1 or n_permutations < 2:
        raise ValueError(f"Parameters 'n_pairs' ({n_pairs}) and 'n_permutations' ({n_permutations}) must be at least "
                         "1 and 2.")
    if 2**n_pairs <= n_permutations:
        return ((np.arange(2**n_pairs)[:, None] >> np.arange(n_pairs)) & 1).astype(bool)
    flips = np.random.default_rng(seed).random((n_permutations, n_pairs)) < 0.5
    flips[0] = False
    return flips


def pair_swap_test(statistic: Callable[[np.ndarray], np.ndarray], n_pairs: int, *, n_permutations: int = 2000,
                   seed: int = 0) -> float:
    """Two-sided p-value of a BN - no-BN statistic under exchangeable labels within each model pair.

    Args:
        statistic: maps a (B, n_pairs) bool array of swaps (True: pair t's BN and no-BN rows trade places) to
            the (B,) statistic of each relabelled population; row 0 of the swaps is no swap (the observed one).
        n_pairs: pairs; n_permutations: B (all 2^n_pairs assignments if that is fewer).
    Returns:
        (1 + #{|s_b| >= |s_observed|, b >= 1}) / B, the permutation p-value (the identity counts once).
    """
    flips = sign_flips(n_pairs, n_permutations, seed)
    values = np.asarray(statistic(flips), dtype=float)
    observed = values[0]
    if not math.isfinite(observed):
        return float("nan")
    tolerance = 1e-12 * max(1.0, abs(observed))
    return float((1 + np.sum(np.abs(values[1:]) >= abs(observed) - tolerance)) / len(values))


def jackknife_interval(statistic: Callable[[np.ndarray], np.ndarray], n_pairs: int, pools: np.ndarray | None = None,
                       *, unit: str = "models", confidence: float = 0.95) -> dict[str, Any]:
    """A difference whose pairs have no summary of their own (a metric of the ROC pooled over targets), with
    a pair-level jackknife standard error and a t interval (df = pairs - pools).

    Args:
        statistic: maps a (K, n_pairs) bool array of pairs kept to the (K,) statistic; row 0 keeps every pair.
        n_pairs: pairs; pools: (n_pairs,) strata labels (the jackknife deletes one pair at a time).
    Returns:
        the keys of :func:`stratified_t` (``p_value`` from the same t; callers may replace it by
        :func:`pair_swap_test`'s), ``method`` "pair jackknife".
    """
    labels = _pools(pools, n_pairs)
    kept = np.ones((n_pairs + 1, n_pairs), dtype=bool)
    kept[np.arange(1, n_pairs + 1), np.arange(n_pairs)] = False
    values = np.asarray(statistic(kept), dtype=float)
    mean, leave_one_out = float(values[0]), values[1:]
    df = n_pairs - len(np.unique(labels))
    out = {**_nan_result(n_pairs, unit, "pair jackknife"), "mean": mean, "df": int(df),
           "pools": int(len(np.unique(labels)))}
    if df < 1 or not np.all(np.isfinite(leave_one_out)) or not math.isfinite(mean):
        return out
    se = float(math.sqrt((n_pairs - 1) / n_pairs * np.sum((leave_one_out - leave_one_out.mean()) ** 2)))
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df) * se)
    p_value = (1.0 if mean == 0 else 0.0) if se == 0 else float(2 * scipy_stats.t.sf(abs(mean) / se, df))
    return {**out, "se": se, "ci95": [mean - half, mean + half], "p_value": p_value}


# ----------------------------------------------------------------------------- curves and designs

def curve_band(batch: np.ndarray, none: np.ndarray, pools: np.ndarray | None, levels: Sequence[float], *,
               confidence: float = 0.95, n_permutations: int = 4000, seed: int = 0) -> dict[str, Any]:
    """BN - no-BN along a grid of fit levels, with pointwise and simultaneous bands.

    Each level is a :func:`stratified_t` of the pairs that cross it. The simultaneous band is mean +- c se
    at every level, c the ``confidence`` quantile of max over levels of |t| under sign flips of the pairs'
    within-pool residuals, the t recomputed on each flipped population (a studentized max-|t| permutation:
    the band covers the whole curve at once with probability ``confidence``).

    Args:
        batch, none: (n_pairs, n_levels) per-pair summaries at each level, NaN where a member does not
            cross a level; pools: (n_pairs,) strata (None: one pool); levels: (n_levels,) the fit grid.
    Returns:
        ``levels``, ``mean``, ``se``, ``n`` (pairs per level), ``pointwise`` and ``simultaneous`` ([low, high]
        per level), ``critical_value`` c, ``excludes_zero`` (the levels whose simultaneous band excludes 0),
        ``target``, ``method``. Levels with fewer than 2 pairs beyond the pools have NaN bands.
    """
    a, b = np.asarray(batch, dtype=float), np.asarray(none, dtype=float)
    levels = [float(level) for level in levels]
    if a.ndim != 2 or a.shape != b.shape or a.shape[1] != len(levels):
        raise ValueError(f"Parameters 'batch' {a.shape} and 'none' {b.shape} must both be (n_pairs, n_levels) with "
                         f"n_levels = len(levels) = {len(levels)}.")
    labels = _pools(pools, a.shape[0])
    difference = a - b
    per_level = [stratified_t(difference[:, j], labels, confidence=confidence) for j in range(len(levels))]
    mean = np.array([r["mean"] for r in per_level])
    se = np.array([r["se"] for r in per_level])
    finite = np.isfinite(difference)
    one_hot = (labels[:, None] == np.unique(labels)[None, :]).astype(float)  # (n, P)
    counts = finite.T.astype(float) @ one_hot  # (L, P) pairs per level and pool
    with np.errstate(invalid="ignore", divide="ignore"):
        pool_mean = (np.where(finite, difference, 0.0).T @ one_hot) / counts  # (L, P)
    residuals = np.where(finite, difference - np.nan_to_num(pool_mean.T[labels]), 0.0)  # (n, L)
    flips = np.where(sign_flips(a.shape[0], n_permutations, seed), -1.0, 1.0)  # (B, n)
    n = finite.sum(0).astype(float)  # (L,)
    df = n - (counts > 0).sum(1)
    total = flips @ residuals  # (B, L) sum of flipped residuals
    per_pool = np.einsum("bi,il,ip->blp", flips, residuals, one_hot)  # (B, L, P)
    with np.errstate(invalid="ignore", divide="ignore"):
        within = (residuals**2).sum(0) - np.nansum(per_pool**2 / counts[None], axis=2)  # (B, L)
        flipped_t = np.abs(total / n) / np.sqrt(np.maximum(within, 0) / df / n)
    usable = (df >= 1) & np.isfinite(se) & (se > 0)
    critical = float(np.quantile(np.nanmax(np.where(usable, flipped_t, np.nan), axis=1), confidence)
                     ) if usable.any() else float("nan")
    half = critical * se
    simultaneous = [[float(m - h), float(m + h)] if ok else [float("nan")] * 2
                    for m, h, ok in zip(mean, half, usable, strict=True)]
    excludes = [level for level, (low, high) in zip(levels, simultaneous, strict=True) if low > 0 or high < 0]
    return {"levels": levels, "mean": mean.tolist(), "se": se.tolist(), "n": [r["n"] for r in per_level],
            "pointwise": [r["ci95"] for r in per_level], "simultaneous": simultaneous, "critical_value": critical,
            "excludes_zero": excludes, "target": TARGET,
            "method": "studentized max-|t| sign flips of pairs within pools"}


def design_difference(first: np.ndarray, second: np.ndarray, pools: np.ndarray | None = None, *,
                      unit: str = "models") -> dict[str, Any]:
    """Whether two designs agree, as a test of their difference on the same pairs: a :func:`stratified_t` of
    (first - second), where first and second are the (T,) per-pair BN - no-BN summaries of the two designs
    (:func:`pair_summaries`; pair t is the same data, keep mask and seed in both). A "BN higher" in one design
    and "no difference detected" in the other is not a disagreement unless this difference is.

    Returns:
        the dict of :func:`stratified_t` (``mean``: first - second), ``method`` naming the design test.
    """
    first, second = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(f"Parameters 'first' {first.shape} and 'second' {second.shape} must be (T,) per-pair "
                         "differences of the same pairs.")
    return {**stratified_t(first - second, pools, unit=unit), "method": "paired t of the designs' per-pair differences"}


# ----------------------------------------------------------------------------- equivalence, power, verdict

def detectable_difference(se: float, alpha: float = ALPHA, power: float = POWER, df: float | None = None) -> float:
    """(q_{1-alpha/2} + q_power) * se: the smallest true difference a two-sided level-alpha test with standard
    error ``se`` detects with probability ``power``; q from Student's t with ``df`` degrees of freedom (None:
    the normal). Pass the alpha the verdict uses (for a primary endpoint, alpha / family size)."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"Parameters 'alpha' ({alpha!r}) and 'power' ({power!r}) must lie in (0, 1).")
    reference = scipy_stats.norm if df is None or not math.isfinite(df) else scipy_stats.t(df)
    return float((reference.ppf(1 - alpha / 2) + reference.ppf(power)) * se)


def equivalence(mean: float, se: float, margin: float, *, df: float | None = None, alpha: float = ALPHA
                ) -> dict[str, Any]:
    """Two one-sided tests (TOST) of |true difference| < ``margin``.

    H0-: difference <= -margin, rejected by a large (mean + margin) / se; H0+: difference >= margin, by a small
    (mean - margin) / se; the TOST p-value is the larger one-sided p (t with ``df``, None: normal).
    Equivalence at level alpha <=> the (1 - 2 alpha) interval lies inside (-margin, margin).

    Returns:
        ``p_value`` (TOST), ``equivalent`` (p_value < alpha), ``margin``, ``alpha``.
    """
    if not margin > 0:
        raise ValueError(f"Parameter 'margin' is {margin!r}; allowed: a positive equivalence margin.")
    if not (math.isfinite(mean) and math.isfinite(se)) or se < 0:
        return {"p_value": float("nan"), "equivalent": False, "margin": float(margin), "alpha": alpha}
    reference = scipy_stats.norm if df is None or not math.isfinite(df) else scipy_stats.t(df)
    if se == 0:
        p_value = 0.0 if abs(mean) < margin else 1.0
    else:
        p_value = float(max(reference.sf((mean + margin) / se), reference.cdf((mean - margin) / se)))
    return {"p_value": p_value, "equivalent": bool(p_value < alpha), "margin": float(margin), "alpha": alpha}


def verdict(mean: float, se: float, p_value: float | None, n: int, *, alpha: float = ALPHA, power: float = POWER,
            margin: float | None = None, df: float | None = None, test_alpha: float | None = None,
            number_format: str = ".3g") -> str:
    """One of five verdicts on a BN - no-BN difference, each starting with its words (:data:`VERDICTS`).

    Rule, in order:
        1. "inconclusive (...)" with fewer than 3 pairs or a missing/non-finite mean, se or p-value;
        2. "BN higher (...)" / "no-BN higher (...)" if ``p_value`` < ``test_alpha`` (default ``alpha``; pass the
           Holm-adjusted p and 0.05 for a primary endpoint), by the sign of ``mean``;
        3. "equivalent within ±m" if a ``margin`` m is declared and TOST (:func:`equivalence`) at ``alpha``
           rejects both one-sided nulls;
        4. with X = :func:`detectable_difference` (se, ``alpha``, power, df): "inconclusive (...)" if a margin is
           declared and X > m (the design could not even detect a difference the size of the margin);
        5. else "no difference detected (could detect ≥ X)".
    ``alpha`` is the level the power and equivalence are computed at: for a primary endpoint the Bonferroni
    level 0.05 / (family size), the first step of Holm and so never easier than the test itself.
    """
    if n < MIN_REPLICATES:
        return f"inconclusive ({n} pairs; at least {MIN_REPLICATES} needed)"
    if p_value is None or not all(math.isfinite(v) for v in (mean, se, p_value)):
        return "inconclusive (no finite estimate, standard error or p-value)"
    if p_value < (alpha if test_alpha is None else test_alpha):
        return f"{'BN higher' if mean > 0 else 'no-BN higher'} (difference {mean:{number_format}}, p = {p_value:.2g})"
    if margin is not None and equivalence(mean, se, margin, df=df, alpha=alpha)["equivalent"]:
        return f"equivalent within ±{margin:{number_format}}"
    detectable = detectable_difference(se, alpha, power, df)
    if margin is not None and detectable > margin:
        return (f"inconclusive (could detect only ≥ {detectable:{number_format}}, more than the margin "
                f"±{margin:{number_format}})")
    return f"no difference detected (could detect ≥ {detectable:{number_format}})"


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (statsmodels ``multipletests(method="holm")``) of one family.

    None or NaN entries are not tested: they stay None and do not count towards the family's size.
    """
    tested = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    if tested:
        adjusted = multipletests([p_values[i] for i in tested], method="holm")[1]
        for i, p in zip(tested, adjusted, strict=True):
            out[i] = float(p)
    return out


def _longest_prefix(name: str, prefixes: Sequence[str]) -> str | None:
    matches = [prefix for prefix in prefixes if name.startswith(prefix)]
    return max(matches, key=len) if matches else None


FIT_LEVEL_SUFFIX = re.compile(r"_\d+p\d+$")  # ``..._matched_fit_0p95``: one level of the fit grid


def is_primary(name: str) -> bool:
    """Whether a metric belongs to the book's one family of primary endpoints: its name starts with a
    ``config.PRIMARY_ENDPOINTS`` prefix and is not one level of the fit grid (``..._matched_fit_0p95``: the
    curve's levels are read together by :func:`curve_band`'s simultaneous band; the unsuffixed headline level
    carries the primary test, and counting its grid twin too would count one test twice)."""
    return _longest_prefix(name, config.PRIMARY_ENDPOINTS) is not None and not FIT_LEVEL_SUFFIX.search(name)


ZERO_FP_STAND_IN = ("tpr_at_1pct_fpr", "tpr_at_0fp")  # a low-FPR primary endpoint and the row that replaces it


def zero_fp_stand_ins(metrics: Mapping[str, Any]) -> list[str]:
    """The rows that stand in for a primary TPR at 1% FPR where too few non-members made that row a TPR at 0 false
    positives (``mia.low_fpr_metric``): ``..._tpr_at_0fp_...`` named like a primary endpoint whose 1% row is
    absent from ``metrics`` (at quick, 16 targets x 50 held-out canaries allow 8 false positives at 1%). Each
    claim then keeps one low-FPR primary row per comparison, at the lowest FPR its non-members allow."""
    low, zero = ZERO_FP_STAND_IN
    return [name for name in metrics if zero in name and name.replace(zero, low) not in metrics
            and is_primary(name.replace(zero, low))]


def equivalence_margin(name: str) -> float | None:
    """The declared margin of a metric (``config.EQUIVALENCE_MARGINS``, longest matching prefix), on the scale
    of its difference (log scale for a ratio); None if none is declared."""
    prefix = _longest_prefix(name, tuple(config.EQUIVALENCE_MARGINS))
    return None if prefix is None else float(config.EQUIVALENCE_MARGINS[prefix])


def is_ratio(name: str) -> bool:
    """A ratio metric: its difference, margin and detectable difference live on the log scale."""
    return "ratio" in name


def _difference_of(name: str, entry: Mapping[str, Any]) -> tuple[float, float, float | None, int]:
    """(mean, se, df, n) of BN - no-BN: the entry's ``difference`` (a :func:`paired_difference`) if present;
    else from the two norms' 95% t intervals (log scale for a ratio), se = sqrt(se_BN^2 + se_none^2): unpaired,
    so for positively correlated paired norms the SE is overstated and the detectable difference conservative."""
    stored = entry.get("difference") or {}
    # a ratio's stored difference may hold BN / no-BN as ``mean`` and the log difference as ``log_mean``
    mean = stored.get("log_mean") if is_ratio(name) and stored.get("log_mean") is not None else stored.get("mean")
    if stored.get("se") is not None and mean is not None:
        df = stored.get("df")
        return float(mean), float(stored["se"]), None if df is None else float(df), int(stored.get("n", 0))
    norms = [entry.get(norm) or {} for norm in config.COMPARED_NORMS]
    if not all(norm.get("mean") is not None and norm.get("ci95") for norm in norms):
        return float("nan"), float("nan"), None, 0
    n = min(int(norm.get("n", 0)) for norm in norms)
    if n < 2:
        return float("nan"), float("nan"), None, n
    means = [float(norm["mean"]) for norm in norms]
    ses = [(float(norm["ci95"][1]) - float(norm["ci95"][0])) / 2 / scipy_stats.t.ppf(0.975, int(norm["n"]) - 1)
           for norm in norms]
    if is_ratio(name):
        if min(means) <= 0:
            return float("nan"), float("nan"), None, n
        ses = [s / m for s, m in zip(ses, means, strict=True)]
        means = [math.log(m) for m in means]
    return means[0] - means[1], float(math.hypot(*ses)), float(n - 1), n


def annotate(metrics: Mapping[str, Mapping[str, Any]], *, alpha: float = ALPHA, power: float = POWER,
             units: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Copies of ``bnlib.results.metric_entry`` entries with the verdict fields added (nothing removed).

    Every entry gains ``family`` ("primary" if its name starts with a ``config.PRIMARY_ENDPOINTS`` prefix,
    else "secondary"), ``equivalence_margin`` (``config.EQUIVALENCE_MARGINS``; None if none declared),
    ``p_value_holm`` (Holm over the primary entries given here; None on secondary entries, which carry their raw
    ``p_value`` only), ``alpha`` (the level of power and equivalence: 0.05 / primary count for a primary entry),
    ``detectable_difference`` (at that alpha), ``p_equivalence`` (TOST, None without a margin), ``unit`` and
    ``verdict`` (:func:`verdict`). A chapter annotates its own rows; the report re-annotates every chapter's
    rows at once (:func:`book_family_holm`), so there the family is the book's.

    Args:
        metrics: name -> entry (``batch``/``none`` ``{"mean", "ci95", "n"}``, ``p_value``, optionally
            ``difference``: a :func:`paired_difference` result, whose ``mean``, ``se``, ``df``, ``n`` and
            ``unit`` are then used).
        units: name -> what ``n`` counts, where the entry has no ``difference``/``unit`` (default "seeds").
    """
    primary = [name for name in metrics if is_primary(name)] + zero_fp_stand_ins(metrics)
    adjusted = dict(zip(primary, holm([metrics[name].get("p_value") for name in primary]), strict=True))
    family_size = max(1, sum(p is not None for p in adjusted.values()))
    out: dict[str, dict[str, Any]] = {}
    for name, entry in metrics.items():
        mean, se, df, n = _difference_of(name, entry)
        unit = (entry.get("difference") or {}).get("unit") or entry.get("unit") or (units or {}).get(name, "seeds")
        level = alpha / family_size if name in adjusted else alpha
        margin = equivalence_margin(name)
        p_value = adjusted[name] if name in adjusted else entry.get("p_value")
        finite = math.isfinite(se) and math.isfinite(mean)
        detectable = detectable_difference(se, level, power, df) if finite else float("nan")
        tost = equivalence(mean, se, margin, df=df, alpha=level)["p_value"] if margin and finite else None
        out[name] = {**entry, "unit": unit, "family": "primary" if name in adjusted else "secondary",
                     "equivalence_margin": margin, "p_value_holm": adjusted.get(name), "alpha": level,
                     "detectable_difference": detectable, "p_equivalence": tost,
                     "verdict": verdict(mean, se, p_value, n, alpha=level, power=power, margin=margin, df=df,
                                        test_alpha=alpha)}
    return out


def book_family_holm(metrics: Mapping[str, Mapping[str, Any]], *, alpha: float = ALPHA, power: float = POWER
                     ) -> dict[str, dict[str, Any]]:
    """Every chapter's metrics (name -> entry, as ``report.headline`` merges them) re-annotated as one book:
    Holm over every metric whose name starts with a ``config.PRIMARY_ENDPOINTS`` prefix, across chapters
    (``family`` "primary", ``p_value_holm`` set), every other metric "secondary" with its raw p only; verdicts,
    detectable differences and equivalence recomputed at the book family's alpha (:func:`annotate`). Entries
    that compare no BN with no no-BN value are returned unchanged apart from ``family``."""
    compared = {name: entry for name, entry in metrics.items()
                if all(isinstance(entry.get(norm), Mapping) for norm in config.COMPARED_NORMS)}
    annotated = annotate(compared, alpha=alpha, power=power, units={name: str(e.get("unit", "seeds"))
                                                                    for name, e in compared.items()})
    return {name: annotated.get(name) or {**entry, "family": "secondary", "p_value_holm": None,
                                          "equivalence_margin": equivalence_margin(name)}
            for name, entry in metrics.items()}


# ----------------------------------------------------------------------------- words for the pages

def _interval(values: Sequence[float], number_format: str) -> str:
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    return f"[{low:{number_format}}, {high:{number_format}}]"


def sentence(entry: Mapping[str, Any], number_format: str = "+.3f") -> str:
    """One annotated entry in words: the verdict, then the difference, its interval, n with its unit and the
    p-values (raw, and Holm-adjusted where the entry is a primary endpoint)."""
    difference = entry.get("difference", {})
    mean = difference.get("mean", entry["batch"]["mean"] - entry["none"]["mean"])
    interval = _interval(difference.get("ci95", [float("nan")] * 2), number_format)
    p_text = f"p = {entry['p_value']:.2g}" if entry.get("p_value") is not None else "no test"
    if entry.get("p_value_holm") is not None:
        p_text += f", Holm-adjusted {entry['p_value_holm']:.2g}"
    n = difference.get("n", min(entry["batch"]["n"], entry["none"]["n"]))
    return (f"{entry['verdict']}: difference {mean:{number_format}} (95% CI {interval}, n = {n} "
            f"{entry.get('unit', 'replicates')}; {p_text})")


def table(metrics: Mapping[str, Mapping[str, Any]], number_format: str = ".3f") -> str:
    """A Markdown table of annotated entries: metric, comparison, family, BN, no-BN, difference [interval],
    margin, detectable difference, p, Holm p, n with its unit, verdict."""
    lines = ["| metric | comparison | family | BN | no norm | BN − no norm [95% CI] | margin | detectable | p | "
             "p (Holm) | n | verdict |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def p_text(value: float | None) -> str:
        return "–" if value is None or not math.isfinite(value) else f"{value:.2g}"

    for name, entry in metrics.items():
        difference = entry.get("difference", {})
        mean = difference.get("mean", entry["batch"]["mean"] - entry["none"]["mean"])
        interval = _interval(difference.get("ci95", [float("nan")] * 2), "+" + number_format)
        margin = entry.get("equivalence_margin")
        lines.append(
            f"| `{name}` | {entry['comparison'].replace('_', ' ')} | {entry.get('family', '')} | "
            f"{entry['batch']['mean']:{number_format}} | {entry['none']['mean']:{number_format}} | "
            f"{mean:+{number_format}} {interval} | {'–' if margin is None else f'±{margin:.3g}'} | "
            f"{entry['detectable_difference']:{number_format}} | {p_text(entry.get('p_value'))} | "
            f"{p_text(entry.get('p_value_holm'))} | {difference.get('n', entry['batch']['n'])} "
            f"{entry.get('unit', '')} | {entry['verdict']} |")
    return "\n".join(lines)


def leading_words(text: str) -> str:
    """The verdict's words without its parenthesis: "BN higher", "no-BN higher", "equivalent within ±m",
    "no difference detected" or "inconclusive"."""
    if text.startswith("equivalent within"):
        return text.split(" (")[0]
    return next((words for words in VERDICTS if text.startswith(words)), text)
