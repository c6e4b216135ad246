"""Memorization of outliers, measured two ways, and read at matched fit.

1. Canary in/out memorization of one training run (``runs.Run``): accuracy (or loss) on the K
   inserted canaries minus the same on the K held-out canaries of the same kind. The held-out half is
   what a model that did not memorize scores (chance, or what it guesses from the content).
2. Feldman-Zhang subsampled memorization from the shared model zoo (``zoo.Zoo``): for pool example i,
   ``mem(i) = P[h(x_i) = y_i | i in S] - P[h(x_i) = y_i | i not in S]`` over the T models (hard), and the
   same with the probability of the true label (soft).

A network that fits its training set faster also memorizes its outliers sooner, so memorization is
compared at fixed *fit levels* (inlier training accuracy) read off each run's curve, as well as after
the same schedule. Every function is pure: arrays in, arrays or dicts out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from . import config, stats


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the memorization chapter (validated by ``config.load(..., extras=ChapterParams)``).

    The population (pools, models, schedule, canary rate) and the fit grid of the matched-fit comparisons
    (``fit_levels``, ``headline_fit``, declared before any run) come from :class:`bnlib.config.ExperimentConfig`.
    """

    n_bootstrap: int = field(default=2000, metadata={
        "positive": True, "doc": "cluster-bootstrap resamples (pools, models, examples)"})
    top_memorized: int = field(default=10, metadata={"positive": True, "doc": "images per row of the grid"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_bootstrap=300),
        "quick": dict(),
        "paper": dict(),
    }


COMPARED = config.COMPARED_NORMS  # the two arms of every headline comparison


def check_config(cfg, params: ChapterParams | None = None) -> None:
    """Fail fast unless ``cfg.norms`` holds both arms of the comparison (BN and no normalization)."""
    config.check_compared_norms(cfg)


# ----------------------------------------------------------------------------- canaries of one run

def true_label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the true label: logits (..., N, C), labels (N,) -> (..., N)."""
    index = labels.expand(*logits.shape[:-1]).unsqueeze(-1)
    return torch.softmax(logits.float(), dim=-1).gather(-1, index).squeeze(-1)


def memorization_curve(run) -> dict[str, np.ndarray]:
    """Fit and canary memorization along a ``runs.Run``, one entry per evaluation.

    Returns:
        ``epoch``, ``fit`` (inlier train accuracy), ``fit_loss``, ``test`` (test accuracy),
        ``memorization`` (accuracy on inserted minus held-out canaries) and ``loss_gap`` (loss on held-out
        minus inserted canaries; > 0 means the inserted ones are fit better), each of shape (n_evals,).
    """
    column = {key: np.asarray(run.column(key), dtype=float) for key in run.records[0]}
    return {
        "epoch": column["epoch"], "fit": column["inliers_acc"], "fit_loss": column["inliers_loss"],
        "test": column["test_acc"],
        "memorization": column["canaries_in_acc"] - column["canaries_out_acc"],
        "loss_gap": column["canaries_out_loss"] - column["canaries_in_loss"],
    }


def describe_difference(diff: dict[str, Any], p_value: float, test: str, alpha: float = 0.05) -> str:
    """One sentence fragment for the prose: the difference with its 95% CI, the test and its verdict.

    Args:
        diff: ``stats.mean_ci`` of the paired differences; p_value: of ``test`` (NaN = not testable).
    """
    if diff["n"] == 0:
        return "not measurable (no pair reaches this level)"
    text = f"{diff['mean']:+.3f} (95% CI [{diff['ci95'][0]:+.3f}, {diff['ci95'][1]:+.3f}], n = {diff['n']}"
    if np.isnan(p_value):
        return text + f"; {test} not computable with these pairs)"
    verdict = "significant" if p_value < alpha else "not significant"
    return text + f"; {test} p = {p_value:.2g}, {verdict} at the {alpha:.0%} level)"


# ----------------------------------------------------------------------------- Feldman-Zhang scores

def subsampled_memorization(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """Feldman-Zhang memorization estimate of every pool example from T subsampled models.

    Args:
        logits: (..., T, N, C) eval-mode logits of each model on the pool (leading dims, e.g. checkpoints).
        labels: (N,) pool labels.
        keep: (T, N) bool, example i was in model t's training set.

    Returns:
        ``hard``: (..., N) P[argmax = y | in] - P[argmax = y | out]; ``soft``: the same with the probability
        of the true label; ``in_hard``/``out_hard``/``in_soft``/``out_soft`` the two halves. NaN for an
        example that is never in (or never out).
    """
    keep = keep.float()
    n_in, n_out = keep.sum(0), (1 - keep).sum(0)  # (N,)
    n_in = torch.where(n_in > 0, n_in, torch.nan)
    n_out = torch.where(n_out > 0, n_out, torch.nan)
    scores = {"hard": (logits.argmax(-1) == labels).float(), "soft": true_label_probability(logits, labels)}
    out = {}
    for name, score in scores.items():  # score (..., T, N)
        out[f"in_{name}"] = (score * keep).sum(-2) / n_in
        out[f"out_{name}"] = (score * (1 - keep)).sum(-2) / n_out
        out[name] = out[f"in_{name}"] - out[f"out_{name}"]
    return out


def ecdf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Empirical CDF: sorted values and the fraction of values <= each (NaNs dropped)."""
    values = np.sort(np.asarray(values, dtype=float)[~np.isnan(values)])
    return values, np.arange(1, values.size + 1) / max(values.size, 1)


def most_memorized(hard: torch.Tensor, soft: torch.Tensor, mask: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` examples among ``mask`` (N,) bool with the highest ``hard`` score (N,),
    ties (hard scores are multiples of 2/T) broken by the ``soft`` score."""
    candidates = torch.nonzero(mask).squeeze(1).numpy()
    order = np.lexsort((soft[candidates].nan_to_num(-np.inf).numpy(), hard[candidates].nan_to_num(-np.inf).numpy()))
    return torch.from_numpy(candidates[order[::-1][:count]].copy())


# ----------------------------------------------------------------------------- per-model memorization of a zoo

def zoo_canary_curves(population) -> dict[str, np.ndarray]:
    """Fit and canary memorization of every model of a ``zoo.Zoo`` at every checkpoint.

    Each model trained on its own half of the pool's canaries (IN, its keep mask) and not on the other half
    (OUT), so each model is one replicate of the canary experiment: memorization = acc(IN canaries) -
    acc(OUT canaries), read with eval-mode BN like everything else.

    Returns:
        ``epoch`` (E,) the checkpoint epochs; ``fit`` (E, T) accuracy on the model's own training inliers;
        ``memorization``, ``in_acc``, ``out_acc`` (E, T).
    """
    labels, keep, outlier = population.labels, population.keep, population.is_outlier

    def mean_over(mask: torch.Tensor, values: torch.Tensor) -> np.ndarray:  # mask (T, N), values (E, T, N)
        mask = mask.float()
        return ((values * mask).sum(-1) / mask.sum(-1)).numpy()

    if hasattr(population, "tracked_logits"):  # a zoo.Zoo: the fit and the canaries' logits at every checkpoint
        columns = population.tracked_index
        correct = (population.tracked_logits.float().argmax(-1) == labels[columns]).float()  # (E, T, M)
        fit = (population.fit_correct.float() / population.fit_mask().float().sum(-1)).numpy()
        keep, outlier = keep[:, columns], outlier[columns]
    else:  # dense (E, T, N, C) checkpoint logits
        correct = (population.checkpoint_logits.float().argmax(-1) == labels).float()  # (E, T, N)
        fit = mean_over(keep & ~outlier, correct)
    in_acc, out_acc = mean_over(keep & outlier, correct), mean_over(~keep & outlier, correct)
    return {"epoch": population.checkpoint_epochs.numpy().astype(float),
            "fit": fit, "memorization": in_acc - out_acc, "in_acc": in_acc, "out_acc": out_acc}


def crossing_positions(fit: np.ndarray, level: float) -> np.ndarray:
    """Fractional checkpoint index (T,) where each model's fit (E, T) first crosses ``level`` (linear between
    the two checkpoints around it, ``stats.value_at_level``); NaN for a model that never reaches it or starts
    above it."""
    index = np.arange(fit.shape[0], dtype=float)
    return np.array([stats.value_at_level(fit[:, t], index, level) for t in range(fit.shape[1])])


def at_positions(values: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``values`` (E, T, ...) read for each model t at fractional checkpoint index ``positions[t]`` (linear
    interpolation; NaN position gives NaN). Returns (T, ...)."""
    values = np.asarray(values, dtype=float)
    out = np.full(values.shape[1:], np.nan)
    for t, position in enumerate(positions):
        if np.isfinite(position):
            low = int(np.floor(position))
            high = min(low + 1, values.shape[0] - 1)
            out[t] = values[low, t] + (position - low) * (values[high, t] - values[low, t])
    return out


def signed_scores(population, positions: np.ndarray | None = None, score: str = "hard") -> np.ndarray:
    """Per (model, example): +2 s if the example trained the model, -2 s if not, where s is the hit (``hard``)
    or the probability of the trained label (``soft``), read at the last checkpoint or, per model, at
    ``positions`` (fractional checkpoint indices). Shape (T, N).

    Why this form: with a keep mask balanced per example (every example IN for half of the models) and per
    model (every model IN on half of each group), the mean of these values over a group of examples and all
    models is both the mean Feldman-Zhang score of the group and the mean over models of acc(IN) - acc(OUT):
    one statistic, whose replicates are the models (and examples), ready for ``verdict.paired_difference``.
    """
    if score == "hard":
        def transform(logits):
            return (logits.argmax(-1) == population.labels).float()
    elif score == "soft":
        def transform(logits):
            return true_label_probability(logits, population.labels)
    else:
        raise ValueError(f"Parameter 'score' got {score!r}; allowed values: 'hard', 'soft'.")
    if hasattr(population, "pool_values_at"):  # a zoo.Zoo: the whole pool only where it is stored
        last = len(population.checkpoint_epochs) - 1
        read = (np.stack([transform(population.pool_logits(t, last).float()).numpy()
                          for t in range(population.keep.shape[0])]) if positions is None else
                np.stack([population.pool_values_at(t, p, transform) for t, p in enumerate(positions)]))
    else:  # dense (E, T, N, C) checkpoint logits
        values = transform(population.checkpoint_logits.float()).numpy()
        read = values[-1] if positions is None else at_positions(values, positions)  # (T, N)
    return 2.0 * np.where(population.keep.numpy(), read, -read)


def stack_pools(blocks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Models of independent pools as one (sum T, sum N) array, each pool's models holding values only in
    its own examples' columns (NaN elsewhere), and the (sum T,) pool label of each model."""
    rows, columns = sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)
    stacked, labels = np.full((rows, columns), np.nan), np.zeros(rows, dtype=int)
    row = column = 0
    for p, block in enumerate(blocks):
        stacked[row:row + block.shape[0], column:column + block.shape[1]] = block
        labels[row:row + block.shape[0]] = p
        row, column = row + block.shape[0], column + block.shape[1]
    return stacked, labels


def read_at_level(curves: dict[str, np.ndarray], level: float, key: str = "memorization") -> dict[str, np.ndarray]:
    """Each model's ``key`` and epoch where its own fit first crosses ``level`` (see :func:`crossing_positions`).

    Args:
        curves: from :func:`zoo_canary_curves`, arrays (E, T).
    Returns:
        ``value``, ``epoch`` and ``position`` (fractional checkpoint index), each (T,), NaN where a model never
        reaches the level.
    """
    positions = crossing_positions(curves["fit"], level)
    epochs = np.broadcast_to(curves["epoch"][:, None], curves["fit"].shape)
    return {"value": at_positions(curves[key], positions), "epoch": at_positions(epochs, positions),
            "position": positions}
