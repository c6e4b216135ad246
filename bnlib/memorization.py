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

from . import stats


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the memorization chapter (validated by ``config.load(..., extras=ChapterParams)``)."""

    # 0.98: the highest level that BatchNorm reaches on the common quick schedule in every seed (one of the
    # three ends at 0.988), so that only the slower norms need the longer schedule.
    fit_levels: tuple[float, ...] = field(
        default=(0.90, 0.95, 0.98),
        metadata={"positive": True, "doc": "inlier train accuracies at which memorization is compared (<= 1)"})
    long_schedule_factor: int = field(
        default=3, metadata={"minimum": 1, "doc": "epochs multiplier for norms that do not reach the top fit level"})
    long_schedule_for_all: bool = field(
        default=False, metadata={"doc": "every norm on the longer schedule (matched-fit curves share one schedule)"})
    evals_per_epoch: int = field(default=1, metadata={"positive": True, "doc": "points per epoch on each curve"})
    group_layer_curves: bool = field(
        default=False, metadata={"doc": "add GroupNorm and LayerNorm memorization-vs-fit curves (runs only, no zoo)"})
    long_zoo: bool = field(
        default=False, metadata={"doc": "zoos of the extended norms also on the longer schedule (FZ at high fit)"})
    top_memorized: int = field(default=10, metadata={"positive": True, "doc": "images per row of the grid"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(fit_levels=(0.5, 0.6), evals_per_epoch=2),
        "quick": dict(),
        "paper": dict(fit_levels=(0.90, 0.95, 0.99), long_zoo=True),
    }

    def __post_init__(self) -> None:
        if any(level > 1 for level in self.fit_levels):
            raise ValueError(f"Parameter 'fit_levels' (inlier train accuracies) got {self.fit_levels!r}; "
                             "allowed: values in (0, 1].")
        if list(self.fit_levels) != sorted(set(self.fit_levels)):
            raise ValueError(f"Parameter 'fit_levels' got {self.fit_levels!r}; allowed: distinct increasing values.")


COMPARED = ("batch", "none")  # the two arms of every headline comparison


def check_norms(cfg) -> None:
    """Fail fast unless ``cfg.norms`` holds both arms of the comparison (BN and no normalization)."""
    missing = [norm for norm in COMPARED if norm not in cfg.norms]
    if missing:
        raise ValueError(f"Parameter 'norms' got {cfg.norms!r}; this chapter compares BatchNorm with no "
                         f"normalization, so it must contain {' and '.join(map(repr, COMPARED))} "
                         f"(missing: {', '.join(map(repr, missing))}).")


# ----------------------------------------------------------------------------- canaries of one run

def true_label_probability(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the true label: logits (..., N, C), labels (N,) -> (..., N)."""
    index = labels.expand(*logits.shape[:-1]).unsqueeze(-1)
    return torch.softmax(logits.float(), dim=-1).gather(-1, index).squeeze(-1)


def margins(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example margin: true-label logit minus the largest other logit; logits (N, C) -> (N,).

    Positive means the example is classified as its (random) label.
    """
    logits = logits.float()
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], float("-inf"))
    return true - others.max(1).values


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


def final_canary_scores(run) -> dict[str, torch.Tensor]:
    """Per-canary results of a finished run: correctness, true-label probability and margin of the
    inserted (``in_*``, shape (K,)) and held-out (``out_*``) canaries, eval-mode BN."""
    out = {}
    for half in ("in", "out"):
        logits, labels = getattr(run, f"canary_{half}_logits"), getattr(run, f"canary_{half}_labels")
        out[f"{half}_correct"] = (logits.argmax(1) == labels).float()
        out[f"{half}_probability"] = true_label_probability(logits, labels)
        out[f"{half}_margin"] = margins(logits, labels)
    return out


def paired_canary_test(runs_a: Sequence, runs_b: Sequence, score: str = "in_correct") -> dict[str, Any]:
    """Paired test across canaries: the same inserted canaries (same seeds = same data) in two arms.

    Args:
        runs_a, runs_b: finished ``runs.Run`` of the two arms, seed by seed in the same order.
        score: a key of :func:`final_canary_scores` (``in_correct``, ``in_probability``, ``in_margin``).

    Returns:
        ``stats.paired_test`` of the per-canary scores pooled over seeds (K x n_seeds pairs).
    """
    for run_a, run_b in zip(runs_a, runs_b, strict=True):
        if run_a.seed != run_b.seed or not torch.equal(run_a.canary_in_labels, run_b.canary_in_labels):
            raise ValueError(f"Runs are not paired: seeds {run_a.seed} and {run_b.seed} hold different canaries.")
    pooled_a = torch.cat([final_canary_scores(run)[score] for run in runs_a])
    pooled_b = torch.cat([final_canary_scores(run)[score] for run in runs_b])
    return stats.paired_test(pooled_a.numpy(), pooled_b.numpy())


def values_at_levels(curves: Sequence[dict[str, np.ndarray]], levels: Sequence[float], x: str = "fit",
                     y: str = "memorization") -> np.ndarray:
    """Read ``y`` at fixed values of ``x`` along each curve (linear interpolation, ``stats.value_at_level``).

    Returns:
        (n_curves, n_levels) array; NaN where a curve never reaches a level.
    """
    return np.array([[stats.value_at_level(curve[x], curve[y], level) for level in levels] for curve in curves])


def compare_at_levels(curves_a: Sequence[dict[str, np.ndarray]], curves_b: Sequence[dict[str, np.ndarray]],
                      levels: Sequence[float], x: str = "fit", y: str = "memorization") -> list[dict[str, Any]]:
    """Compare two arms at fixed levels of ``x``, paired by curve index (the same seed = the same data).

    Returns:
        one dict per level: ``level``, ``a`` and ``b`` (``stats.mean_ci`` over curves), ``diff`` (a - b,
        mean_ci over pairs where both reach the level) and ``t_p_value`` (paired t-test over seeds).
    """
    values_a, values_b = values_at_levels(curves_a, levels, x, y), values_at_levels(curves_b, levels, x, y)
    rows = []
    for j, level in enumerate(levels):
        test = stats.paired_test(values_a[:, j], values_b[:, j])
        rows.append({"level": float(level), "a": stats.mean_ci(values_a[:, j]), "b": stats.mean_ci(values_b[:, j]),
                     "diff": test["diff"], "t_p_value": test["t_p_value"]})
    return rows


def common_grid(curves: Sequence[dict[str, np.ndarray]], x: str = "fit", points: int = 60) -> np.ndarray:
    """Grid of ``points`` values of ``x`` covered by every curve (for bands over seeds)."""
    low = max(float(np.min(curve[x])) for curve in curves)
    high = min(float(np.max(curve[x])) for curve in curves)
    return np.linspace(low, high, points) if high > low else np.array([low])


def reaches(curves: Sequence[dict[str, np.ndarray]], level: float, x: str = "fit") -> bool:
    """Whether every curve reaches ``level`` of ``x`` at some evaluation."""
    return all(float(np.max(curve[x])) >= level for curve in curves)


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


def zoo_scores_at_fit(checkpoint_scores: dict[str, np.ndarray], level: float, score: str = "hard") -> np.ndarray:
    """Each example's score read at zoo fit ``level`` along the checkpoints (see :func:`zoo_checkpoint_scores`).

    Returns:
        (N,) array, NaN if the zoo never reaches ``level``.
    """
    per_example = checkpoint_scores[score].T  # (N, E)
    return np.array([stats.value_at_level(checkpoint_scores["fit"], row, level) for row in per_example])


def zoo_checkpoint_scores(population) -> dict[str, np.ndarray]:
    """Feldman-Zhang scores at each checkpoint of a ``zoo.Zoo``, with the fit reached there.

    Returns:
        ``epoch`` (E,), ``fit`` (E,) mean over models of the accuracy on their own training inliers,
        ``hard`` and ``soft`` (E, N) memorization of every pool example at each checkpoint.
    """
    scores = subsampled_memorization(population.checkpoint_logits.float(), population.labels, population.keep)
    fit = [float(population.train_accuracy(e).mean()) for e in range(len(population.checkpoint_epochs))]
    return {"epoch": population.checkpoint_epochs.numpy(), "fit": np.array(fit),
            "hard": scores["hard"].numpy(), "soft": scores["soft"].numpy()}


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
        ``memorization``, ``in_acc``, ``out_acc`` (E, T); ``loss_gap`` (E, T) mean loss on OUT minus on IN
        canaries.
    """
    logits = population.checkpoint_logits.float()  # (E, T, N, C)
    labels, keep, outlier = population.labels, population.keep, population.is_outlier
    correct = (logits.argmax(-1) == labels).float()  # (E, T, N)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2), labels.repeat(logits.shape[0] * logits.shape[1]),
                                             reduction="none").view(correct.shape)

    def mean_over(mask: torch.Tensor, values: torch.Tensor) -> np.ndarray:  # mask (T, N), values (E, T, N)
        mask = mask.float()
        return ((values * mask).sum(-1) / mask.sum(-1)).numpy()

    in_canary, out_canary = keep & outlier, ~keep & outlier
    in_acc, out_acc = mean_over(in_canary, correct), mean_over(out_canary, correct)
    return {"epoch": population.checkpoint_epochs.numpy().astype(float),
            "fit": mean_over(keep & ~outlier, correct), "memorization": in_acc - out_acc,
            "in_acc": in_acc, "out_acc": out_acc,
            "loss_gap": mean_over(out_canary, loss) - mean_over(in_canary, loss)}


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
    one statistic, whose replicates are the models (and examples), ready for ``verdict.cluster_bootstrap_*``.
    """
    logits = population.checkpoint_logits.float()  # (E, T, N, C)
    if score == "hard":
        values = (logits.argmax(-1) == population.labels).float().numpy()
    elif score == "soft":
        values = true_label_probability(logits, population.labels).numpy()
    else:
        raise ValueError(f"Parameter 'score' got {score!r}; allowed values: 'hard', 'soft'.")
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


def fit_levels_below(top: float, fractions: Sequence[float] = (0.9, 0.95, 1.0)) -> tuple[float, ...]:
    """Fit levels by a stated rule: fixed fractions of ``top`` (the highest level every model reaches)."""
    return tuple(round(top * f, 4) for f in fractions)
