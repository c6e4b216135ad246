"""Evaluating membership scores: ROC metrics, the two-way bootstrap over targets and examples (each norm's
interval), the ROC pooled over targets, and reading a zoo's checkpoints at a fit level. BN-vs-no-BN differences
are tested on target pairs in :mod:`bnlib.mia_chapter` with :mod:`bnlib.verdict` (not here: this module
decides cached measurements).

Metrics come from scikit-learn's ``roc_curve``: AUC, TPR at a fixed low FPR (the largest TPR whose
FPR does not exceed it: with n negatives, a TPR at FPR f allows floor(f n) false positives, so with
fewer than 1/f negatives it is the TPR at zero false positives), and balanced accuracy (the best
threshold's accuracy on balanced classes, as in LiRA's paper). Two ways: per target, averaged over
targets (:func:`estimate`), and from the ROC of all targets' scores pooled (:func:`pooled_estimate`),
as the reference's plotting code does, which is what the literature's low-FPR numbers are; intervals
from a bootstrap over targets and examples (:class:`Resamples`). Shapes as in :mod:`bnlib.mia_attacks`:
scores and keep are (T, N), one row per target model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import auc, roc_curve

from . import stats

LOW_FPRS = (0.001, 0.01)
ZERO_FP = "tpr_at_0fp"  # the TPR at zero false positives (the highest threshold above every non-member)
METRICS = ("auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", ZERO_FP, "balanced_accuracy")
MIN_FALSE_POSITIVES = 10  # a TPR at FPR x is named so only where the non-members allow this many false positives


def roc_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """AUC, TPR at 0.1% and 1% FPR and at 0 false positives, and balanced accuracy of one target, with
    scikit-learn's ``roc_curve``.

    ``drop_intermediate=False``: the default drops collinear ROC points, among them sometimes the one
    with the largest TPR at a fixed FPR (fine for plots, not for reading a TPR off the curve).

    Args:
        scores: (n,) higher = member; is_member: (n,) bool with both classes present.
    """
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    out = {"auc": float(auc(fpr, tpr))}
    for level in LOW_FPRS:
        out[f"tpr_at_{level * 100:g}pct_fpr"] = float(tpr[fpr <= level].max())
    out[ZERO_FP] = float(tpr[fpr <= 0].max())
    out["balanced_accuracy"] = float(np.max(1 - (fpr + (1 - tpr)) / 2))
    return out


def weighted_roc_metrics(scores: np.ndarray, is_member: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The numbers of :func:`roc_metrics` on B reweighted copies of one target's examples at once.

    A bootstrap resample is the same examples with integer multiplicities, so the examples are sorted
    once and each resample only needs weighted cumulative counts; the result equals :func:`roc_metrics`
    on the resampled examples (tested).

    Args:
        scores, is_member: (n,); weights: (B, n) multiplicity of each example in each resample.
    Returns:
        metric -> (B,); NaN for resamples without members or without non-members.
    """
    order = np.argsort(-scores)
    ranked, member, weights = scores[order], is_member[order], weights[:, order]
    last = np.append(ranked[:-1] != ranked[1:], True)  # ROC points: the end of each group of tied scores
    true_positives = np.cumsum(weights * member, axis=1, dtype=np.int32)[:, last]  # (B, G)
    false_positives = np.cumsum(weights, axis=1, dtype=np.int32)[:, last] - true_positives
    positives, negatives = true_positives[:, -1:], false_positives[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = true_positives / positives, false_positives / negatives
        out = {f"tpr_at_{level * 100:g}pct_fpr": np.max(np.where(fpr <= level, tpr, 0), axis=1) for level in LOW_FPRS}
        out[ZERO_FP] = np.max(np.where(fpr <= 0, tpr, 0), axis=1)
        out["balanced_accuracy"] = np.maximum(np.max((1 + tpr - fpr) / 2, axis=1), 0.5)
        previous_tpr = np.concatenate([np.zeros_like(tpr[:, :1]), tpr[:, :-1]], axis=1)
        out["auc"] = np.sum(np.diff(fpr, axis=1, prepend=0) * (tpr + previous_tpr) / 2, axis=1)
    invalid = (positives[:, 0] == 0) | (negatives[:, 0] == 0)
    return {metric: np.where(invalid, np.nan, out[metric]) for metric in METRICS}


def low_fpr_metric(metric: str, n_nonmembers: int) -> str:
    """The name a TPR may carry: ``metric`` (a TPR at FPR x) where the non-members allow at least
    ``MIN_FALSE_POSITIVES`` false positives at x (floor(x n) >= 10), else ``ZERO_FP``: with fewer, the "TPR at
    x FPR" is read at 0 or a handful of false positives and says nothing about the rate x. Other metrics
    are returned as they are."""
    levels = {f"tpr_at_{level * 100:g}pct_fpr": level for level in LOW_FPRS}
    if metric not in levels:
        return metric
    return metric if math.floor(levels[metric] * n_nonmembers + 1e-9) >= MIN_FALSE_POSITIVES else ZERO_FP


@dataclass
class Resamples:
    """A two-way ("pigeonhole") bootstrap: targets and examples resampled independently.

    Targets share their examples (and, leave-one-out, their shadows), so their metrics are correlated
    and resampling targets alone gives intervals that are too narrow for a target that generalizes over
    examples. Resampling examples as well accounts for the shared examples (Owen 2007, crossed random
    effects); it is conservative when the (target, example) interaction is large, and it is used only for
    each norm's own interval: differences between norms are conditional on the examples
    (``bnlib.verdict.TARGET``) and tested on target pairs.

    Attributes:
        targets: (B, T) target indices; weights: (B, n) multiplicity of each of a subgroup's n examples.
    """

    targets: np.ndarray
    weights: np.ndarray

    @classmethod
    def draw(cls, n_targets: int, n_examples: int, n_bootstrap: int, seed: int = 0) -> Resamples:
        rng = np.random.default_rng(seed)
        targets = rng.integers(0, n_targets, (n_bootstrap, n_targets))
        examples = rng.integers(0, n_examples, (n_bootstrap, n_examples))
        weights = np.zeros((n_bootstrap, n_examples), dtype=np.int32)
        np.add.at(weights, (np.arange(n_bootstrap)[:, None], examples), 1)
        return cls(targets, weights)


def estimate(scores: np.ndarray, keep: np.ndarray, mask: np.ndarray, resamples: Resamples | None = None
             ) -> dict[str, Any]:
    """Per-target metrics of one attack on one subgroup, and their values on bootstrap resamples.

    Args:
        scores, keep: (T, N); mask: (N,) the subgroup; resamples: over T targets and the mask's examples.
    Returns:
        ``point``: metric -> (T,); ``resampled``: metric -> (T, B) (absent without ``resamples``);
        ``n_members``, ``n_nonmembers``: (T,) the counts behind each target's ROC.
    """
    scores, keep = scores[:, mask], keep[:, mask]
    rows = [roc_metrics(scores[t], keep[t]) for t in range(len(scores))]
    out: dict[str, Any] = {"point": {m: np.array([row[m] for row in rows]) for m in METRICS},
                           "n_members": keep.sum(1), "n_nonmembers": (~keep).sum(1)}
    if resamples is not None:
        per_target = [weighted_roc_metrics(scores[t], keep[t], resamples.weights) for t in range(len(scores))]
        out["resampled"] = {m: np.stack([row[m] for row in per_target]) for m in METRICS}
    return out


def pair(estimated: dict[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(point (T,), resampled (T, B)) of ``metric`` from an :func:`estimate` result."""
    return estimated["point"][metric], estimated["resampled"][metric]


def _resampled_means(resampled: np.ndarray, resamples: Resamples) -> np.ndarray:
    """(B,) mean over each resample's targets of resampled (T, B)."""
    draws = resampled[resamples.targets, np.arange(len(resamples.targets))[:, None]]  # (B, T)
    present = ~np.isnan(draws)
    with np.errstate(invalid="ignore"):  # a resample without any value gives NaN
        return np.where(present, draws, 0).sum(1) / present.sum(1)


def interval(point: np.ndarray, resampled: np.ndarray, resamples: Resamples, confidence: float = 0.95
             ) -> dict[str, Any]:
    """Mean over targets with its two-way bootstrap 95% interval, shaped like :func:`bnlib.stats.mean_ci`.

    Args:
        point: (T,) per-target values (NaN = not available, e.g. a fit level never reached);
        resampled: (T, B) the same on each resample.
        confidence: of ``ci``, the percentile interval also returned (e.g. Bonferroni-widened for a family);
            ``ci95`` is always the 95% one.
    """
    n = int(np.sum(~np.isnan(point)))
    if n == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "ci": [float("nan")] * 2, "n": 0}
    means = _resampled_means(resampled, resamples)
    tail = (1 - confidence) / 2
    return {"mean": float(np.nanmean(point)), "ci95": [float(q) for q in np.nanquantile(means, [0.025, 0.975])],
            "ci": [float(q) for q in np.nanquantile(means, [tail, 1 - tail])], "n": n}


def direction(difference: dict[str, Any], alpha: float = 0.05) -> str:
    """Words for a paired difference of BN minus another norm (``bnlib.verdict.paired_difference``): higher /
    lower / not different, for the chapter's prose (the verdicts of record are ``bnlib.verdict.verdict``'s)."""
    if difference["n"] == 0 or np.isnan(difference["mean"]):
        return "not measurable"
    if difference["p_value"] >= alpha:
        return "not significantly different"
    return "higher with BatchNorm" if difference["mean"] > 0 else "lower with BatchNorm"


def pooled_roc(scores: np.ndarray, keep: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC (fpr, tpr) of all targets' scores on the examples of ``mask`` taken together (for plots)."""
    fpr, tpr, _ = roc_curve(keep[:, mask].ravel(), scores[:, mask].ravel())
    return fpr, tpr


def pooled_estimate(scores: np.ndarray, keep: np.ndarray, mask: np.ndarray, resamples: Resamples | None = None,
                    chunk: int = 4_000_000) -> dict[str, Any]:
    """The metrics of the ROC of all targets' scores pooled (as the LiRA reference's plots pool its
    targets): the literature's TPR at low FPR, resolved down to 1 / (pooled non-members).

    Args:
        scores, keep: (T, N); mask: (N,) the subgroup; resamples: over the T targets and the mask's
            examples; a resample pools target t's score on example n with multiplicity
            (copies of t) x (copies of n).
        chunk: the most (resample, score) pairs held at once.
    Returns:
        ``point``: metric -> float; ``resampled``: metric -> (B,) (absent without ``resamples``);
        ``n_members``, ``n_nonmembers``: the pooled counts; ``n_targets``; and what a pair-level test of
        two zoos needs (:func:`pooled_scores`): ``scores``, ``members`` and ``target`` (the target index of
        each pooled score, (T n,)) and ``target_pool`` ((T,) zeros: one data pool).
    """
    scores, keep = scores[:, mask], keep[:, mask]  # (T, n)
    out: dict[str, Any] = {"point": roc_metrics(scores.ravel(), keep.ravel()), "n_members": int(keep.sum()),
                           "n_nonmembers": int((~keep).sum()), "n_targets": int(len(scores)),
                           **pooled_scores(scores, keep)}
    if resamples is not None:
        n_targets, size = scores.shape[0], scores.size
        # (B, T) copies of each target; index -1 marks a draw that counts for nothing
        copies = np.stack([np.bincount(row[row >= 0], minlength=n_targets) for row in resamples.targets])
        per_chunk = max(1, chunk // size)
        parts = []
        for start in range(0, len(copies), per_chunk):
            weights = (copies[start:start + per_chunk, :, None]
                       * resamples.weights[start:start + per_chunk, None, :]).reshape(-1, size)  # (b, T n)
            parts.append(weighted_roc_metrics(scores.ravel(), keep.ravel(), weights))
        out["resampled"] = {m: np.concatenate([part[m] for part in parts]) for m in METRICS}
    return out


def pooled_scores(scores: np.ndarray, keep: np.ndarray, target: np.ndarray | None = None,
                  target_pool: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The pooled ROC's inputs, kept so that two zoos' pooled metrics can be compared pair by pair:
    ``scores`` (M,), ``members`` (M,) bool, ``target`` (M,) int (which target each score belongs to: the row of
    ``scores`` (T, n), or ``target`` (T,) where given) and ``target_pool`` int, indexed by target (default: all
    in pool 0)."""
    rows = np.arange(len(scores)) if target is None else np.asarray(target)
    return {"scores": np.asarray(scores, dtype=float).ravel(), "members": np.asarray(keep, dtype=bool).ravel(),
            "target": np.repeat(rows, scores.shape[1]),
            "target_pool": (np.zeros(int(rows.max()) + 1 if rows.size else 0, dtype=int) if target_pool is None
                            else np.asarray(target_pool))}


def pooled_interval(estimated: dict[str, Any], metric: str) -> dict[str, Any]:
    """A :func:`pooled_estimate`'s ``metric`` with its percentile 95% interval, shaped like
    :func:`bnlib.stats.mean_ci` (``n``: targets pooled)."""
    draws = estimated["resampled"][metric]
    if estimated["n_targets"] == 0 or np.isnan(draws).all():
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": estimated["n_targets"]}
    low, high = np.nanquantile(draws, [0.025, 0.975])
    return {"mean": float(estimated["point"][metric]), "ci95": [float(low), float(high)], "n": estimated["n_targets"]}


def pooled_over_pools(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_bootstrap: int | None = None,
                      chunk: int = 4_000_000) -> dict[str, Any]:
    """:func:`pooled_estimate` with the targets of several independent data pools in one ROC: each pool's
    targets are attacked with their own pool's shadows, and their scores pooled.

    Args:
        parts: per pool, ``(scores (T, N), keep (T, N), mask (N,))``.
        n_bootstrap: resamples of a bootstrap stratified by pool (targets and examples resampled within each
            pool, each pool with its own seeded draw, the pool's index); None: the point only.
    Returns:
        like :func:`pooled_estimate`, ``n_targets`` summed over the pools, targets numbered pool by pool and
        ``target_pool`` their pools.
    """
    scores = np.concatenate([s[:, m].ravel() for s, _, m in parts])
    members = np.concatenate([k[:, m].ravel() for _, k, m in parts])
    first_target = np.cumsum([0] + [len(s) for s, _, _ in parts])  # targets numbered pool by pool
    out: dict[str, Any] = {"point": roc_metrics(scores, members), "n_members": int(members.sum()),
                           "n_nonmembers": int((~members).sum()), "n_targets": sum(len(s) for s, _, _ in parts),
                           "scores": scores, "members": members,
                           "target": np.concatenate([np.repeat(np.arange(len(s)) + first_target[p], int(m.sum()))
                                                     for p, (s, _, m) in enumerate(parts)]),
                           "target_pool": np.repeat(np.arange(len(parts)), [len(s) for s, _, _ in parts])}
    if n_bootstrap is not None:
        weights = []  # per pool, (B, T n) multiplicity of each (target, example) score
        for pool, (part_scores, _, mask) in enumerate(parts):
            draw = Resamples.draw(len(part_scores), int(mask.sum()), n_bootstrap, seed=pool)
            copies = np.stack([np.bincount(row, minlength=len(part_scores)) for row in draw.targets])
            weights.append((copies[:, :, None] * draw.weights[:, None, :]).reshape(n_bootstrap, -1))
        per_chunk = max(1, chunk // scores.size)
        parts_out = [weighted_roc_metrics(scores, members,
                                          np.concatenate([w[start:start + per_chunk] for w in weights], 1))
                     for start in range(0, n_bootstrap, per_chunk)]
        out["resampled"] = {m: np.concatenate([part[m] for part in parts_out]) for m in METRICS}
    return out


# ----------------------------------------------------------------------------- at a fit level

def pooled_at_fit_level(fit: dict[str, Any], keep: np.ndarray, mask: np.ndarray, level: float,
                        resamples: Resamples | None = None) -> dict[str, Any]:
    """:func:`pooled_estimate` of the headline attack at inlier train accuracy ``level``: each target's
    scores (N,) read where its fit first crosses the level, interpolated between its two checkpoints
    around it (:func:`bnlib.stats.value_at_level` gives the fractional checkpoint index). Targets that
    never reach the level (or start above it: no crossing seen) get weight 0 in every resample and are
    left out of the point estimate; if none reaches it, every metric is NaN and ``n_targets`` 0.

    Args:
        fit: ``measure(...)["fit"]``; keep: (T, N); mask: (N,) the subgroup.
    """
    accuracy, scores = fit["train_accuracy"], np.asarray(fit["scores"], dtype=float)  # (E, T), (E, T, N)
    position = np.array([stats.value_at_level(accuracy[:, t], np.arange(len(accuracy)), level)
                         for t in range(accuracy.shape[1])])  # (T,) fractional checkpoint index
    reached = ~np.isnan(position)
    if not reached.any():  # nothing to read: NaN metrics, reported as not measurable
        n_resamples = 0 if resamples is None else len(resamples.targets)
        return {"point": dict.fromkeys(METRICS, float("nan")), "n_members": 0, "n_nonmembers": 0, "n_targets": 0,
                **pooled_scores(np.zeros((0, int(mask.sum()))), np.zeros((0, int(mask.sum())), dtype=bool)),
                **({} if resamples is None else {"resampled": {m: np.full(n_resamples, np.nan) for m in METRICS}})}
    lower = np.floor(np.where(reached, position, 0)).astype(int)
    upper = np.minimum(lower + 1, len(accuracy) - 1)
    targets = np.arange(accuracy.shape[1])
    weight = (np.where(reached, position, 0) - lower)[:, None]
    at_level = scores[lower, targets] + weight * (scores[upper, targets] - scores[lower, targets])  # (T, N)
    if resamples is not None:  # a target that never reaches the level is drawn with weight 0
        resamples = Resamples(np.where(reached[resamples.targets], resamples.targets, -1), resamples.weights)
    out = pooled_estimate(at_level[reached], keep[reached], mask, None)
    out.update(pooled_scores(at_level[reached][:, mask], keep[reached][:, mask], np.flatnonzero(reached)))
    if resamples is not None:
        full = pooled_estimate(at_level, keep, mask, resamples)
        out["resampled"] = full["resampled"]
    out["n_targets"] = int(reached.sum())
    return out


def at_fit_level(fit: dict[str, Any], group: str, metric: str, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Each target's ``metric`` interpolated at inlier train accuracy ``level`` along its checkpoints.

    Args:
        fit: ``measure(...)["fit"]``.
    Returns:
        point (T,) and resampled (T, B) values; NaN for targets that never reach ``level``.
    """
    accuracy, estimated = fit["train_accuracy"], fit[group]
    point = np.array([stats.value_at_level(accuracy[:, t], estimated["point"][metric][:, t], level)
                      for t in range(accuracy.shape[1])])
    resampled = estimated["resampled"][metric]  # (E, T, B)
    values = np.array([[stats.value_at_level(accuracy[:, t], resampled[:, t, b], level)
                        for b in range(resampled.shape[2])] for t in range(resampled.shape[1])])
    return point, values


def epochs_to_fit_level(fit: dict[str, Any], level: float) -> float:
    """Mean over targets of the (interpolated) epoch at which a target reaches ``level``; NaN if none does."""
    epochs = np.array([stats.value_at_level(fit["train_accuracy"][:, t], fit["epochs"], level)
                       for t in range(fit["train_accuracy"].shape[1])])
    return float(epochs[~np.isnan(epochs)].mean()) if (~np.isnan(epochs)).any() else float("nan")


def matched_fit_level(fits: dict[str, dict[str, Any]], requested: float = 0.0) -> float:
    """The inlier train accuracy at which norms are compared.

    Args:
        fits: norm -> ``measure(...)["fit"]``.
        requested: a level in (0, 1]; 0 picks the highest level (floored to 0.01) that every target of
            every norm reaches at one of its checkpoints.
    """
    if not 0.0 <= requested <= 1.0:
        raise ValueError(f"Parameter 'matched_fit_level' got {requested!r}; allowed: 0 (automatic) or a train "
                         "accuracy in (0, 1].")
    if requested > 0:
        return float(requested)
    return stats.common_top_level({norm: fit["train_accuracy"].T for norm, fit in fits.items()}, resolution=0.01)
