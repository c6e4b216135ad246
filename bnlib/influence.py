"""The influence chapter's experiment: fixed probe batches measured along a training run with the three
definitions of :mod:`bnlib.persample` (:func:`track_influence`), outlier/inlier ratios, matched fit and the final
comparison. The per-sample gradient engine lives in :mod:`bnlib.persample`; its public functions are re-exported
here for the chapters and modules that call them through ``bnlib.influence``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from . import config, models, results, stats, train
from . import data as data_lib
from .persample import (
    DEFAULT_MAX_ELEMENTS,
    METHODS,
    Method,
    chain_modules,
    counterfactual_influence,
    counterfactual_influence_reference,
    eval_mode_grad_norms,
    eval_mode_grad_norms_reference,
    ghost_virtual_batches,
    in_batch_grad_norms,
    in_batch_grad_norms_reference,
    tune_allocator,
)

__all__ = [
    "DEFAULT_MAX_ELEMENTS", "DEFINITION_NAMES", "METHODS", "ChapterParams", "Method", "chain_modules",
    "check_config", "comparison", "counterfactual_influence", "counterfactual_influence_reference",
    "eval_mode_grad_norms", "eval_mode_grad_norms_reference", "ghost_virtual_batches", "in_batch_grad_norms",
    "in_batch_grad_norms_reference", "matched_fit_level", "outlier_inlier_ratios", "probe_layout", "ratio_at_fit",
    "track_influence", "tune_allocator",
]

DEFINITION_NAMES = ("eval_mode", "in_batch", "counterfactual")
_DEFINITIONS = dict(zip(DEFINITION_NAMES, (eval_mode_grad_norms, in_batch_grad_norms, counterfactual_influence),
                        strict=True))


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the influence chapter (validated by ``config.load(..., extras=ChapterParams)``)."""

    probe_batches: int = field(default=2, metadata={
        "positive": True, "doc": "fixed probe batches (of batch_size training examples) measured at each checkpoint"})
    probe_canaries: int = field(default=4, metadata={
        "positive": True, "doc": "canaries in each probe batch, the rest are inliers (a training batch holds ~5)"})
    probe_inliers: int = field(default=8, metadata={
        "positive": True, "doc": "inliers of each probe batch whose influence is measured (all its canaries are)"})
    fit_level: float = field(default=0.0, metadata={
        "minimum": 0.0, "doc": "inlier train accuracy of the matched-fit comparison (0: highest all runs reach)"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(probe_batches=1, probe_canaries=2, probe_inliers=4),
        "quick": dict(),
        "paper": dict(probe_batches=4, probe_inliers=16),
    }

    def __post_init__(self) -> None:
        if self.fit_level > 1:
            raise ValueError(f"Parameter 'fit_level' (an inlier train accuracy) got {self.fit_level!r}; "
                             "allowed: 0 (automatic) or a value in (0, 1].")


def check_config(cfg, params: ChapterParams) -> None:
    """Cross-checks of the chapter's parameters against the experiment's, before any work."""
    if params.probe_canaries + params.probe_inliers > cfg.batch_size:
        raise ValueError(f"Parameters 'probe_canaries' ({params.probe_canaries}) + 'probe_inliers' "
                         f"({params.probe_inliers}) exceed 'batch_size' ({cfg.batch_size}): a probe batch is one "
                         "training batch; allowed: a sum <= batch_size.")
    if params.probe_batches * params.probe_canaries > cfg.n_canaries:
        raise ValueError(f"Parameters 'probe_batches' x 'probe_canaries' ({params.probe_batches} x "
                         f"{params.probe_canaries}) exceed 'n_canaries' ({cfg.n_canaries}); allowed: at most "
                         "n_canaries distinct probe canaries.")
    if params.probe_batches * (cfg.batch_size - params.probe_canaries) > cfg.n_train:
        raise ValueError(f"Parameter 'probe_batches' ({params.probe_batches}) needs more distinct inliers than "
                         f"'n_train' ({cfg.n_train}) holds; allowed: probe_batches * batch_size <= n_train.")
    config.check_compared_norms(cfg)


def probe_layout(is_canary: torch.Tensor, batch_size: int, params: ChapterParams, seed: int) -> tuple[
        torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fixed probe batches drawn from the training set like training batches, with ``probe_canaries`` canaries.

    Returns:
        members (P, batch_size) training indices of each probe batch (inliers first, canaries last);
        measured (P, k) positions in the batch whose influence is measured (k = probe_inliers + probe_canaries);
        measured_is_canary (P, k) bool.
    """
    generator = torch.Generator().manual_seed(30_000 + seed)
    inliers = torch.nonzero(~is_canary).flatten()[torch.randperm(int((~is_canary).sum()), generator=generator)]
    canaries = torch.nonzero(is_canary).flatten()[torch.randperm(int(is_canary.sum()), generator=generator)]
    per_batch_inliers = batch_size - params.probe_canaries
    members = torch.stack([torch.cat([inliers[p * per_batch_inliers:(p + 1) * per_batch_inliers],
                                      canaries[p * params.probe_canaries:(p + 1) * params.probe_canaries]])
                           for p in range(params.probe_batches)])
    positions = torch.cat([torch.arange(params.probe_inliers), torch.arange(per_batch_inliers, batch_size)])
    measured = positions.expand(params.probe_batches, -1)
    return members, measured, is_canary[members.gather(1, measured)]


def track_influence(cfg, params: ChapterParams, norm: str, seed: int, progress: bool = True) -> dict[str, Any]:
    """Train as ``runs.train_run`` does (same data draw, initialization and batches) and measure the three
    definitions on the fixed probe batches at initialization and after every epoch. Cached.

    Returns:
        ``records``: per checkpoint epoch and (eval-mode) ``inliers_acc``/``canaries_acc`` and loss;
        ``measured_is_canary`` (P, k); for each name in ``DEFINITION_NAMES`` a (E, P, k) float tensor.
    """
    entry = results.Entry("influence_track", {**cfg.result_key("n_models"), "norm": norm, "seed": seed,
                                              **{f"probe_{k}": v for k, v in params.__dict__.items()
                                                 if k != "fit_level"}}, code=results.code_of("influence"))
    if entry.has("track"):
        return entry.load("track")
    experiment = data_lib.make_experiment_data(cfg, seed=seed)
    train_x = experiment.standardize(experiment.train_x)
    members, measured, measured_is_canary = probe_layout(experiment.is_canary, cfg.batch_size, params, seed)
    device = train.resolve_device(cfg.device)
    probe_x, probe_y = train_x[members].to(device), experiment.train_y[members].to(device)
    sets = {"inliers": (train_x[~experiment.is_canary], experiment.train_y[~experiment.is_canary]),
            "canaries": (train_x[experiment.is_canary], experiment.train_y[experiment.is_canary])}
    values: dict[str, list[torch.Tensor]] = {name: [] for name in DEFINITION_NAMES}

    def measure(model: nn.Module, record: dict[str, float]) -> None:
        for name, function in _DEFINITIONS.items():
            values[name].append(torch.stack([function(model, probe_x[p], probe_y[p], indices=measured[p].tolist())
                                             .float().cpu() for p in range(len(members))]))

    torch.manual_seed(seed)
    model = models.build_for(cfg, norm, experiment).to(device)
    start = {"epoch": 0.0, "step": 0}
    for name, (ex, ey) in sets.items():
        start.update({f"{name}_{k}": v for k, v in train.metrics_from_logits(
            train.predict_logits(model, ex.to(device)), ey).items()})
    measure(model, start)
    history = train.fit(model, train_x, experiment.train_y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                        momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule, seed=seed,
                        eval_sets=sets, on_eval=measure, progress=progress, desc=f"{norm} seed {seed}")
    track = {"records": [start, *history.records], "measured_is_canary": measured_is_canary,
             **{name: torch.stack(v) for name, v in values.items()}}
    entry.save("track", track)
    return track


def outlier_inlier_ratios(track: dict[str, Any], name: str) -> np.ndarray:
    """Per checkpoint (E,): median influence of the probe canaries over that of the probe inliers."""
    values, canary = track[name].flatten(1).numpy(), track["measured_is_canary"].flatten().numpy()
    return np.median(values[:, canary], axis=1) / np.median(values[:, ~canary], axis=1)


def matched_fit_level(tracks: Sequence[dict[str, Any]], params: ChapterParams) -> float:
    """The chapter's matched-fit level: ``params.fit_level``, or (0) the highest inlier train accuracy that every
    run reaches, rounded down to 0.01."""
    if params.fit_level > 0:
        return params.fit_level
    return stats.common_top_level([[r["inliers_acc"] for r in track["records"]] for track in tracks], resolution=0.01)


def ratio_at_fit(track: dict[str, Any], name: str, level: float) -> float:
    """Outlier/inlier ratio read where the run's inlier train accuracy first reaches ``level`` (linear
    interpolation between the two checkpoints around it; NaN if the run never reaches it)."""
    fits = [r["inliers_acc"] for r in track["records"]]
    return stats.value_at_level(fits, outlier_inlier_ratios(track, name), level)


def comparison(tracks: dict[str, list[dict[str, Any]]], level: float) -> list[dict[str, Any]]:
    """The chapter's final comparison, one row per definition and comparison.

    Args:
        tracks: norm -> tracks of the seeds (same seed order for every norm: the pairs of the test).
        level: the matched-fit level (inlier train accuracy).
    Returns:
        rows with ``definition``, ``comparison`` (``same_schedule``: the last checkpoint; ``matched_fit``: at
        ``level``), ``ratios`` (norm -> per-seed outlier/inlier ratios), ``summary`` (norm -> ``stats.mean_ci``),
        ``p_value`` (paired t-test of BN vs no norm on the seeds' log ratios) and ``outliers_higher_p``
        (norm -> one-sided Mann-Whitney p that canaries have larger influence than inliers, probe samples of
        all seeds pooled, at the last checkpoint), ``outliers_pooled_ratio`` (norm -> median canary over median
        inlier influence of those pooled probe samples), ``pooled_counts`` (norm -> (canaries, inliers) pooled).
    """
    from scipy.stats import mannwhitneyu

    rows = []
    for name in DEFINITION_NAMES:
        higher, pooled, counts = {}, {}, {}
        for norm, runs in tracks.items():
            values = np.concatenate([t[name][-1].flatten().numpy() for t in runs])
            canary = np.concatenate([t["measured_is_canary"].flatten().numpy() for t in runs])
            higher[norm] = float(mannwhitneyu(values[canary], values[~canary], alternative="greater").pvalue)
            pooled[norm] = float(np.median(values[canary]) / np.median(values[~canary]))
            counts[norm] = (int(canary.sum()), int((~canary).sum()))
        for comparison in ("same_schedule", "matched_fit"):
            ratios = {norm: [float(outlier_inlier_ratios(t, name)[-1]) if comparison == "same_schedule" else
                             ratio_at_fit(t, name, level) for t in runs] for norm, runs in tracks.items()}
            test = stats.paired_test(np.log(ratios["batch"]), np.log(ratios["none"]))
            rows.append({"definition": name, "comparison": comparison, "ratios": ratios,
                         "summary": {norm: stats.mean_ci(v) for norm, v in ratios.items()},
                         "p_value": test["t_p_value"], "outliers_higher_p": higher,
                         "outliers_pooled_ratio": pooled, "pooled_counts": counts})
    return rows


def canaries_versus_inliers(rows: Sequence[dict[str, Any]], definition_labels: dict[str, str],
                            norm_labels: dict[str, str]) -> str:
    """One sentence per network on whether its canaries have larger influence than its inliers at the end of
    training, read from :func:`comparison`'s rows: the direction word from the pooled median ratio, and
    "not significant" where the one-sided Mann-Whitney p is 0.05 or more.

    Args:
        definition_labels: definition name -> how the text names it; norm_labels: norm -> how it names the network.
    """
    sentences = []
    norms = rows[0]["outliers_higher_p"].keys() if rows else ()
    for norm in norms:
        parts = []
        for row in rows:
            if row["comparison"] != "same_schedule":  # both comparisons share the end-of-training test
                continue
            ratio, p = row["outliers_pooled_ratio"][norm], row["outliers_higher_p"][norm]
            direction = "larger" if ratio > 1 else ("smaller" if ratio < 1 else "the same")
            verdict = "significant" if p < 0.05 else "not significant"
            parts.append(f"{definition_labels[row['definition']]}: {direction} (median ratio {ratio:.2f}, "
                         f"one-sided p = {p:.2g}, {verdict} at the 5% level)")
        canaries, inliers = rows[0]["pooled_counts"][norm]
        sentences.append(f"With {norm_labels[norm]}, {canaries} canaries against {inliers} inliers (probe samples "
                         "of all seeds pooled): " + "; ".join(parts) + ".")
    return " ".join(sentences)
