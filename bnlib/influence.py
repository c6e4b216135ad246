"""Influence on the model zoo: the three definitions of :mod:`bnlib.persample` measured on every member of a
population (``population.train_population``: the same members as memorization and membership inference), read
where the comparisons read them, summarized per member and compared BN against no norm over model pairs.

What is measured, for member t of a zoo (its own IN examples only, the weights of one checkpoint):

``eval_mode``
    the per-sample gradient norm with BN's running statistics, of every IN canary and every IN inlier.
``in_batch``, ``counterfactual``
    need a batch. Member t's probe batches are drawn from its own IN examples with a fixed seed per member
    (:func:`member_layout`): ``probe_batches`` batches of ``batch_size`` examples, each holding
    ``probe_canaries`` IN canaries placed among IN inliers (about the canary rate of a training batch); the
    canaries and the first ``probe_inliers`` inliers of each batch are measured. The layout depends only on
    the keep mask and the member index, so member t under BN and without norm (same keep mask) is probed on
    the same batches, at every checkpoint.

Per member and definition, the summary is the mean log influence of the canaries minus that of the inliers
(:func:`log_ratio`; exp of it is the ratio of geometric means); the canaries' mean log influence alone is kept
too (``canary_log``). Comparisons (``influence_chapter.paired_log_comparison``) are on the log scale over model
pairs.

Matched fit reads checkpoint weights (``zoo.Zoo.state_dict_at``): each member's summary is interpolated
linearly, on the log scale, between the two checkpoints that bracket its fractional crossing position, like
memorization (``memorization.at_positions``). Probes are cached per member and checkpoint.

The public functions of the per-sample engine are re-exported here for the chapters and modules that call
them through ``bnlib.influence``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch

from . import config, results
from . import zoo as zoo_lib
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
    "DEFAULT_MAX_ELEMENTS", "DEFINITION_NAMES", "LOG_FLOOR", "METHODS", "ChapterParams", "Method", "chain_modules",
    "check_config", "counterfactual_influence", "counterfactual_influence_reference", "eval_mode_grad_norms",
    "eval_mode_grad_norms_reference", "ghost_virtual_batches", "in_batch_grad_norms", "in_batch_grad_norms_reference",
    "log_ratio", "member_layout", "member_probes", "population_summaries", "probe_entry",
    "probe_name",
    "summarize_probes", "tune_allocator", "zoo_probes",
]

DEFINITION_NAMES = ("eval_mode", "in_batch", "counterfactual")
_BATCHED = {"in_batch": in_batch_grad_norms, "counterfactual": counterfactual_influence}
LOG_FLOOR = 1e-30  # influence values are floored here before the log (an exact zero would give -inf)


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the influence chapter (validated by ``config.load(..., extras=ChapterParams)``)."""

    probe_batches: int = field(default=2, metadata={
        "positive": True, "doc": "probe batches per member for the in-batch and counterfactual definitions"})
    probe_canaries: int = field(default=4, metadata={
        "positive": True, "doc": "IN canaries in each probe batch, the rest IN inliers (a training batch holds ~5)"})
    probe_inliers: int = field(default=8, metadata={
        "positive": True, "doc": "inliers of each probe batch whose influence is measured (all its canaries are)"})
    eval_inliers: int = field(default=256, metadata={
        "minimum": 0, "doc": "IN inliers per member measured in eval mode (a fixed random subset; 0: all)"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(probe_batches=1, probe_canaries=2, probe_inliers=4, eval_inliers=64),
        "quick": dict(),
        "paper": dict(probe_batches=4, probe_inliers=16, eval_inliers=1024),
    }


def check_config(cfg, params: ChapterParams) -> None:
    """Cross-checks of the chapter's parameters against the experiment's, before any work: the probe batches
    must fit in the IN examples every member has (half of the pool's canaries and of its inliers)."""
    if params.probe_canaries + params.probe_inliers > cfg.batch_size:
        raise ValueError(f"Parameters 'probe_canaries' ({params.probe_canaries}) + 'probe_inliers' "
                         f"({params.probe_inliers}) exceed 'batch_size' ({cfg.batch_size}): a probe batch is one "
                         "training batch; allowed: a sum <= batch_size.")
    if params.probe_batches * params.probe_canaries > cfg.n_canaries // 2:
        raise ValueError(f"Parameters 'probe_batches' x 'probe_canaries' ({params.probe_batches} x "
                         f"{params.probe_canaries}) exceed the IN canaries of a member (n_canaries // 2 = "
                         f"{cfg.n_canaries // 2}); allowed: at most that many.")
    if params.probe_batches * (cfg.batch_size - params.probe_canaries) > cfg.n_train // 2:
        raise ValueError(f"Parameter 'probe_batches' ({params.probe_batches}) needs more IN inliers than a member "
                         f"has (n_train // 2 = {cfg.n_train // 2}); allowed: probe_batches * batch_size <= that.")
    config.check_compared_norms(cfg)


def member_layout(keep: torch.Tensor, is_outlier: torch.Tensor, batch_size: int, params: ChapterParams,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Member probe batches from its IN examples (``keep`` (N,) bool), drawn with ``seed``.

    Returns:
        batches (P, batch_size) pool indices (inliers first, ``probe_canaries`` canaries last);
        measured (k,) positions in every batch whose influence is measured (the first ``probe_inliers`` and the
        canaries); measured_is_canary (k,) bool; eval_inliers (L,) pool indices of the IN inliers measured in
        eval mode (``params.eval_inliers`` of them drawn with the same seed, sorted; all when 0).
    """
    generator = torch.Generator().manual_seed(40_000 + seed)
    inliers = torch.nonzero(keep & ~is_outlier).flatten()
    canaries = torch.nonzero(keep & is_outlier).flatten()
    inliers = inliers[torch.randperm(len(inliers), generator=generator)]
    canaries = canaries[torch.randperm(len(canaries), generator=generator)]
    per_batch = batch_size - params.probe_canaries
    if params.probe_batches * params.probe_canaries > len(canaries) or params.probe_batches * per_batch > len(
            inliers):
        raise ValueError(f"Member has {len(canaries)} IN canaries and {len(inliers)} IN inliers, fewer than "
                         f"{params.probe_batches} probe batches of {batch_size} with {params.probe_canaries} "
                         "canaries need; allowed: smaller 'probe_batches' or 'probe_canaries'.")
    batches = torch.stack([torch.cat([inliers[p * per_batch:(p + 1) * per_batch],
                                      canaries[p * params.probe_canaries:(p + 1) * params.probe_canaries]])
                           for p in range(params.probe_batches)])
    measured = torch.cat([torch.arange(params.probe_inliers), torch.arange(per_batch, batch_size)])
    count = len(inliers) if params.eval_inliers == 0 else min(params.eval_inliers, len(inliers))
    eval_inliers = inliers[torch.randperm(len(inliers), generator=generator)[:count]].sort().values
    return batches, measured, measured >= per_batch, eval_inliers


def member_probes(model: torch.nn.Module, pool_x: torch.Tensor, pool_y: torch.Tensor, keep: torch.Tensor,
                  is_outlier: torch.Tensor, layout: tuple[torch.Tensor, ...]) -> dict[str, dict[str, np.ndarray]]:
    """The three definitions for one member at one set of weights.

    Returns:
        definition -> ``{"canaries": (K,), "inliers": (L,)}`` float64: eval mode on every IN canary and on the
        layout's ``eval_inliers`` (in pool order); in batch and counterfactual on the measured positions of the
        probe batches (``layout`` from :func:`member_layout`), canaries and inliers of all batches concatenated.
    """
    device = next(model.parameters()).device
    out: dict[str, dict[str, np.ndarray]] = {}
    batches, measured, measured_is_canary, eval_inliers = layout
    values = {}
    for group, index in (("canaries", torch.nonzero(keep & is_outlier).flatten()), ("inliers", eval_inliers)):
        values[group] = eval_mode_grad_norms(model, pool_x[index].to(device), pool_y[index].to(device)
                                             ).double().cpu().numpy()
    out["eval_mode"] = values
    for name, function in _BATCHED.items():
        taken = torch.stack([function(model, pool_x[b].to(device), pool_y[b].to(device),
                                      indices=measured.tolist()).double().cpu() for b in batches]).numpy()
        out[name] = {"canaries": taken[:, measured_is_canary.numpy()].ravel(),
                     "inliers": taken[:, ~measured_is_canary.numpy()].ravel()}
    return out


def log_ratio(canaries: np.ndarray, inliers: np.ndarray) -> float:
    """Mean log influence of the canaries minus that of the inliers (values floored at ``LOG_FLOOR``); exp of
    it is the ratio of their geometric means."""
    return float(np.mean(np.log(np.maximum(canaries, LOG_FLOOR))) - np.mean(np.log(np.maximum(inliers, LOG_FLOOR))))


def summarize_probes(probes: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, float]]:
    """definition -> ``log_ratio``, ``canary_log`` and ``inlier_log`` (mean logs) of one member's probes."""
    return {name: {"log_ratio": log_ratio(v["canaries"], v["inliers"]),
                   "canary_log": float(np.mean(np.log(np.maximum(v["canaries"], LOG_FLOOR)))),
                   "inlier_log": float(np.mean(np.log(np.maximum(v["inliers"], LOG_FLOOR))))}
            for name, v in probes.items()}


@functools.lru_cache(maxsize=64)
def probe_entry(cfg, norm: str, params: ChapterParams) -> results.Entry:
    """The probes of one zoo (``probe_name`` per member and checkpoint); memoized: its key hashes the source."""
    return results.Entry("influence_probe", {**zoo_lib.zoo_config(cfg, norm), **params.__dict__},
                         code=results.code_of("influence"))


def probe_name(t: int, epoch: int) -> str:
    return f"{zoo_lib.member_name(t)}_epoch_{int(epoch)}"


def zoo_probes(cfg, zoo: zoo_lib.Zoo, params: ChapterParams, epoch: int | None = None,
               members: Sequence[int] | None = None, inputs=None) -> list[dict[str, dict[str, float]]]:
    """:func:`summarize_probes` of every member (or of ``members``) of ``zoo`` (trained with ``cfg``, one pool)
    at checkpoint ``epoch`` (None: the final weights). Cached per member and checkpoint (the raw probe values
    are stored too). ``inputs``: ``zoo.zoo_inputs(cfg)``, or a dict that memoizes it across calls (drawn only
    when a probe is missing from the cache), or None."""
    final = int(zoo.checkpoint_epochs[-1])
    epoch = final if epoch is None else int(epoch)
    entry = probe_entry(cfg, zoo.norm, params)
    out = []
    for t in (range(zoo.n_models) if members is None else members):
        name = probe_name(t, epoch)
        if not entry.has(name):
            memo = {} if inputs is None else inputs
            if isinstance(memo, dict):  # a memo shared by the caller's calls: the data are drawn at most once
                if "value" not in memo:
                    memo["value"] = zoo_lib.zoo_inputs(cfg)
                memo = memo["value"]
            experiment, pool_x, _ = memo
            layout = member_layout(zoo.keep[t], zoo.is_outlier, cfg.batch_size, params, zoo_lib.member_seed(t))
            with zoo_lib.one_thread():
                probes = member_probes(zoo.model(t, None if epoch == final else epoch), pool_x, experiment.pool_y,
                                       zoo.keep[t], zoo.is_outlier, layout)
            entry.save(name, {"probes": {d: {g: torch.from_numpy(v) for g, v in groups.items()}
                                         for d, groups in probes.items()}, "summary": summarize_probes(probes)})
        out.append(entry.load(name)["summary"])
    return out


def population_summaries(cfg, population, params: ChapterParams,
                         positions: Sequence[np.ndarray] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per member of every pool of ``population`` (``population.Population``), the summaries of
    :func:`summarize_probes`, read at the end of its schedule or, per member, at the fractional checkpoint index
    ``positions[pool][t]`` (linear between the two checkpoints that bracket it; NaN where it is NaN).

    Returns:
        definition -> {``log_ratio``, ``canary_log``, ``inlier_log``: (sum T,)}; ``pools``: {``label``: (sum T,)}.
    """

    keys = ("log_ratio", "canary_log", "inlier_log")
    out = {name: {key: [] for key in keys} for name in DEFINITION_NAMES}
    labels = []
    for p, (pool, zoo) in enumerate(zip(population.pools, population.zoos, strict=True)):
        # the configuration that trained this zoo: its schedule length AND peak learning rate (an equal-exposure
        # population is trained at a lowered rate; the probes' cache key must tell it from the common schedule's)
        lr = population.lr if math.isfinite(population.lr) else cfg.lr
        pool_cfg = replace(zoo_lib.pool_config(cfg, pool), epochs=population.epochs, lr=lr)
        epochs = [int(e) for e in zoo.checkpoint_epochs]
        inputs: dict = {}  # the pool's data, drawn only if a probe is missing from the cache
        for t in range(zoo.n_models):
            labels.append(p)
            position = float(len(epochs) - 1) if positions is None else float(positions[p][t])
            if not math.isfinite(position):
                for name in DEFINITION_NAMES:
                    for key in keys:
                        out[name][key].append(float("nan"))
                continue
            low = int(math.floor(position))
            high, weight = min(low + 1, len(epochs) - 1), position - low
            below = zoo_probes(pool_cfg, zoo, params, epochs[low], [t], inputs)[0]
            above = zoo_probes(pool_cfg, zoo, params, epochs[high], [t], inputs)[0] if weight > 0 else below
            for name in DEFINITION_NAMES:
                for key in keys:
                    out[name][key].append(below[name][key] + weight * (above[name][key] - below[name][key]))
    summaries: dict[str, dict[str, np.ndarray]] = {
        name: {key: np.asarray(v, dtype=float) for key, v in values.items()} for name, values in out.items()}
    summaries["pools"] = {"label": np.asarray(labels, dtype=int)}
    return summaries


