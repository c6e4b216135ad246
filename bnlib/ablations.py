"""Ablations: how the BN effect moves with batch size, normalizer, schedule and architecture, and what
mitigates it. Every point of every sweep is one cached ``runs.train_run`` measured three ways:

    memorization   canary accuracy, inserted minus held out (``memorization.memorization_curve``), after
                   the schedule and at a fixed inlier-fit level (``stats.value_at_level`` along the run)
    influence      counterfactual per-step influence (``influence.counterfactual_influence``) of a canary
                   over the median of the inliers of the same batch, on probe batches of the run's batch
                   size, at initialization and for the trained model
    membership     a loss-threshold attack (Yeom) with the inserted canaries as members and the held-out
                   ones as non-members: AUC and TPR at a low FPR (few negatives: K), plus the loss gap
                   (held-out minus inserted canary loss) at the fixed fit level

The sweeps share runs: a point already trained for another chapter (same config, norm, seed) is reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from . import config, influence, memorization, mia, models, results, runs, stats
from . import data as data_lib
from .config import ARCHS, NORMS


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the ablations chapter (validated by ``config.load(..., extras=ChapterParams)``)."""

    batch_sizes: tuple[int, ...] = field(default=(32, 128, 512), metadata={"minimum": 2, "doc": "batch-size sweep"})
    variant_norms: tuple[str, ...] = field(
        default=("batch", "ghost", "running", "group", "layer", "none"),
        metadata={"choices": NORMS, "doc": "normalizers of the normalizer sweep"})
    learning_rates: tuple[float, ...] = field(default=(0.02, 0.05, 0.1), metadata={"positive": True,
                                                                                  "doc": "learning-rate sweep"})
    epoch_factors: tuple[int, ...] = field(default=(1, 3), metadata={"positive": True,
                                                                     "doc": "training-length sweep (x epochs)"})
    archs: tuple[str, ...] = field(default=("mlp", "small_cnn"), metadata={"choices": ARCHS,
                                                                          "doc": "architecture sweep"})
    # 0.0385: the quick profile's own rate (100 canaries among 2,500 inliers), so those runs are shared
    canary_rates: tuple[float, ...] = field(default=(0.01, 0.0385, 0.10), metadata={
        "positive": True, "doc": "canary-rate sweep: fraction of canaries in the training set"})
    fit_level: float = field(default=0.95, metadata={"positive": True, "doc": "inlier train accuracy of matched fit"})
    strong_weight_decay: float = field(default=5e-3, metadata={"positive": True,
                                                              "doc": "weight decay of the regularization defence"})
    sweep_seeds: int = field(default=2, metadata={"positive": True, "doc": "seeds per sweep point (the first ones)"})
    probe_batches: int = field(default=4, metadata={"positive": True, "doc": "probe batches per influence value"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(batch_sizes=(16, 32), epoch_factors=(1, 2), variant_norms=("batch", "ghost", "running", "none"),
                      canary_rates=(0.04, 0.1),
                      learning_rates=(0.05, 0.1), archs=("mlp", "small_cnn"), fit_level=0.5, probe_batches=2),
        "quick": dict(variant_norms=("batch", "ghost", "running", "group", "none"), learning_rates=(0.05, 0.1),
                      epoch_factors=(1, 2)),
        "paper": dict(batch_sizes=(8, 32, 128, 512), learning_rates=(0.02, 0.05, 0.1), archs=ARCHS, sweep_seeds=5,
                      probe_batches=16),
    }

    def __post_init__(self) -> None:
        if any(rate >= 0.5 for rate in self.canary_rates):
            raise ValueError(f"Parameter 'canary_rates' got {self.canary_rates!r}; allowed: fractions in (0, 0.5).")
        if self.fit_level > 1:
            raise ValueError(f"Parameter 'fit_level' (an inlier train accuracy) got {self.fit_level!r}; "
                             "allowed: a value in (0, 1].")


def check_config(cfg, params: ChapterParams) -> None:
    """Fail fast on combinations that cannot run (before any training)."""
    if len(cfg.seeds) < params.sweep_seeds:
        raise ValueError(f"Parameter 'sweep_seeds' ({params.sweep_seeds}) exceeds the number of 'seeds' "
                         f"({len(cfg.seeds)}); allowed: 1..{len(cfg.seeds)}.")
    too_large = [b for b in params.batch_sizes if b > cfg.n_train]
    if too_large:
        raise ValueError(f"Parameter 'batch_sizes' has {too_large} larger than n_train ({cfg.n_train}).")


# ----------------------------------------------------------------------------- one point of a sweep

def _probe_batches(experiment: data_lib.ExperimentData, batch_size: int, count: int, seed: int
                   ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of ``batch_size`` training examples: batch_size - 1 inliers and one inserted canary
    (the last), drawn with a seeded generator; inputs normalized like the training data."""
    generator = torch.Generator().manual_seed(30_000 + seed)
    inliers = torch.nonzero(~experiment.is_canary).squeeze(1)
    canaries = torch.nonzero(experiment.is_canary).squeeze(1)
    x = experiment.standardize(experiment.train_x)
    batches = []
    for k in range(count):
        chosen = inliers[torch.randperm(len(inliers), generator=generator)[:batch_size - 1]]
        index = torch.cat([chosen, canaries[k % len(canaries)].reshape(1)])
        batches.append((x[index], experiment.train_y[index]))
    return batches


INFLUENCE_INLIERS = 8  # inliers per probe batch whose influence is computed (each costs a leave-one-out batch)


def influence_ratio(model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Geometric mean over probe batches of I(canary) / median I(inliers), I = counterfactual influence in
    the whole batch, computed for the canary (last) and the first ``INFLUENCE_INLIERS`` inliers (random).

    For the BN variants I comes from ``persample.counterfactual_influence_reference``: under ``ghost`` the batch
    without i keeps the batch's virtual batches (i dropped from its own); under ``running`` both passes start
    from the model's buffers. An untrained ``running`` model has not yet taken its statistics from a batch, so
    each pass takes them from the batch it sees (no gradient flows through them): at initialization its I
    includes the shift of the statistics that removing i causes, as a first training step would."""
    ratios = []
    for x, y in batches:
        indices = [*range(min(INFLUENCE_INLIERS, len(x) - 1)), len(x) - 1]
        values = influence.counterfactual_influence(model, x, y, indices=indices)
        ratios.append(float(values[-1] / values[:-1].median().clamp_min(1e-30)))
    return float(np.exp(np.mean(np.log(ratios))))


def canary_attack(run: runs.Run) -> dict[str, float]:
    """Loss-threshold attack: members = inserted canaries, non-members = held-out canaries (eval-mode BN).

    Returns ``mia.roc_metrics`` (AUC, TPR at low FPRs, balanced accuracy) and ``n_negatives``: with K
    held-out canaries the TPR at an FPR below 1/K is read at FPR 0.
    """
    scores = -torch.cat([F.cross_entropy(run.canary_in_logits, run.canary_in_labels, reduction="none"),
                         F.cross_entropy(run.canary_out_logits, run.canary_out_labels, reduction="none")])
    is_member = np.r_[np.ones(len(run.canary_in_labels), bool), np.zeros(len(run.canary_out_labels), bool)]
    return {**mia.roc_metrics(scores.numpy(), is_member), "n_negatives": int((~is_member).sum())}


def measure_point(cfg, norm: str, seed: int, params: ChapterParams, progress: bool = False,
                  **overrides) -> dict[str, float]:
    """Train (or load) one run and measure it; cached with the run's key plus the measurement settings.

    Args:
        overrides: fields of ``cfg`` changed for this point (``batch_size``, ``lr``, ``arch``, ...).
    Returns:
        ``fit``, ``test``: final inlier-train and test accuracy; ``memorization``: final canary accuracy
        gap; ``memorization_at_fit``, ``loss_gap_at_fit``: read at ``params.fit_level`` (NaN if never
        reached); ``auc``, ``tpr_at_1pct_fpr``, ``tpr_at_0.1pct_fpr``, ``n_negatives``: the canary
        attack; ``influence_ratio_init``, ``influence_ratio_trained``.
    """
    point_cfg = replace(cfg, **overrides)
    key = {**point_cfg.result_key("n_models"), "norm": norm, "seed": seed, "fit_level": params.fit_level,
           "probe_batches": params.probe_batches, "influence_inliers": INFLUENCE_INLIERS}

    def compute() -> dict[str, float]:
        run = runs.train_run(point_cfg, norm, seed, progress=progress)
        curve = memorization.memorization_curve(run)
        experiment = data_lib.make_experiment_data(point_cfg, seed=seed)
        batches = _probe_batches(experiment, min(point_cfg.batch_size, 256), params.probe_batches, seed)
        torch.manual_seed(seed)
        untrained = models.build_for(point_cfg, norm, experiment)
        trained = models.build_for(point_cfg, norm, experiment)
        trained.load_state_dict(run.state_dict)
        attack = canary_attack(run)
        return {
            "fit": float(curve["fit"][-1]), "test": float(curve["test"][-1]),
            "memorization": float(curve["memorization"][-1]),
            "memorization_at_fit": stats.value_at_level(curve["fit"], curve["memorization"], params.fit_level),
            "loss_gap_at_fit": stats.value_at_level(curve["fit"], curve["loss_gap"], params.fit_level),
            **{k: float(v) for k, v in attack.items()},
            "influence_ratio_init": influence_ratio(untrained.eval(), batches),
            "influence_ratio_trained": influence_ratio(trained.eval(), batches),
        }

    return results.cached("ablation_point", key, compute, code=results.code_of("ablations"))


# ----------------------------------------------------------------------------- sweeps

SWEEPS = ("batch_size", "norm", "length", "lr", "arch", "defence", "canary_rate")


def canaries_for_rate(n_train: int, rate: float) -> int:
    """K such that K canaries among ``n_train`` inliers make a fraction ``rate`` of the training set."""
    return max(1, round(rate * n_train / (1 - rate)))


def canary_rate_label(n_train: int, rate: float) -> str:
    """The setting's label: the rate its whole number of canaries really gives."""
    k = canaries_for_rate(n_train, rate)
    return f"{k / (n_train + k):.1%}"


def sweep(cfg, params: ChapterParams, name: str, progress: bool = True) -> list[dict[str, Any]]:
    """Run one sweep; one row per (setting, norm, seed) with the setting, norm, seed, the measurements of
    :func:`measure_point` and ``log10_influence_ratio_{init,trained}``.

    Sweeps: ``batch_size`` (BN vs none over ``params.batch_sizes``), ``norm`` (every ``variant_norms``),
    ``length`` (BN vs none, epochs x ``epoch_factors``), ``lr`` (BN vs none over ``learning_rates``),
    ``arch`` (BN vs none over ``archs``), ``defence`` (BN, BN with strong weight decay, BN with the
    largest batch size, GroupNorm, no norm), ``canary_rate`` (BN vs none with ``n_canaries`` set so that
    canaries make each ``canary_rates`` fraction of the training set).
    """
    if name not in SWEEPS:
        raise ValueError(f"Parameter 'sweep' got {name!r}; allowed values: {', '.join(map(repr, SWEEPS))}.")
    pairs = config.COMPARED_NORMS
    plan: list[tuple[str, str, dict[str, Any]]] = []  # (setting label, norm, overrides)
    if name == "batch_size":
        plan = [(str(b), n, {"batch_size": b}) for b in params.batch_sizes for n in pairs]
    elif name == "norm":
        plan = [(n, n, {}) for n in params.variant_norms]
    elif name == "length":
        plan = [(f"{f}x", n, {"epochs": f * cfg.epochs}) for f in params.epoch_factors for n in pairs]
    elif name == "lr":
        plan = [(f"{lr:g}", n, {"lr": lr}) for lr in params.learning_rates for n in pairs]
    elif name == "arch":
        plan = [(a, n, {"arch": a}) for a in params.archs for n in pairs]
    elif name == "canary_rate":
        plan = [(canary_rate_label(cfg.n_train, rate), n, {"n_canaries": canaries_for_rate(cfg.n_train, rate)})
                for rate in params.canary_rates for n in pairs]
    else:
        plan = [("BatchNorm", "batch", {}),
                ("BN + strong weight decay", "batch", {"weight_decay": params.strong_weight_decay}),
                (f"BN, batch {max(params.batch_sizes)}", "batch", {"batch_size": max(params.batch_sizes)}),
                ("GroupNorm instead of BN", "group", {}), ("no normalization", "none", {})]
    seeds = cfg.seeds[:params.sweep_seeds]
    rows = []
    from tqdm.auto import tqdm

    for label, norm, overrides in tqdm(plan, desc=f"sweep {name}", disable=not progress):
        for seed in seeds:
            point = measure_point(cfg, norm, seed, params, **overrides)
            # influence ratios span orders of magnitude (well-fit inliers have tiny gradients): average logs
            logs = {f"log10_{k}": float(np.log10(point[k]))
                    for k in ("influence_ratio_init", "influence_ratio_trained")}
            rows.append({"setting": label, "norm": norm, "seed": seed, **point, **logs})
    return rows


def summarize(rows: Sequence[dict[str, Any]], measure: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(setting, norm) -> ``stats.mean_ci`` of ``measure`` over seeds, in the order rows were made."""
    grouped: dict[tuple[str, str], list[float]] = {}
    for row in rows:
        grouped.setdefault((row["setting"], row["norm"]), []).append(row[measure])
    return {key: stats.mean_ci(values) for key, values in grouped.items()}


def paired_gap(rows: Sequence[dict[str, Any]], measure: str, setting: str, a: str = "batch", b: str = "none"
               ) -> dict[str, Any]:
    """Paired (by seed) difference a - b of ``measure`` at one setting: ``stats.paired_test``."""
    by = {(r["norm"], r["seed"]): r[measure] for r in rows if r["setting"] == setting}
    seeds = sorted({seed for norm, seed in by if norm == a} & {seed for norm, seed in by if norm == b})
    return stats.paired_test([by[(a, s)] for s in seeds], [by[(b, s)] for s in seeds])
