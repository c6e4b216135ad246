"""Membership inference on a model zoo: the chapter's parameters, querying the zoo, and everything the
membership-inference chapter measures on it (:func:`measure`, cached per zoo by :func:`cached_measure`).

The pieces live in two modules, re-exported here (``mia.X`` works for every name of ``__all__``):
    :mod:`bnlib.mia_attacks` -- signals from logits and the attacks (loss, confidence, LiRA ours and the
        reference code's, RMIA), leave-one-out over the zoo with balanced shadows; its docstring lists
        every way our LiRA departs from the reference code.
    :mod:`bnlib.mia_eval` -- ROC metrics (AUC, TPR at low FPR, balanced accuracy) per target and pooled
        over targets, the two-way bootstrap over targets and examples (:class:`Resamples`), intervals,
        paired differences, and reading checkpoints at a fit level.

Shapes used throughout:

    logits         (T, N, A, C)  T models, N pool examples, A query augmentations, C classes
    keep           (T, N)        bool, example n was in model t's training set
    signals        (T, N, A)     float64, one number per model, example and augmentation
    scores         (T, N)        membership score of each example when model t is the target
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import config, ensemble, results, train
from . import zoo as zoo_lib
from .mia_attacks import (
    ATTACKS,
    MIN_STD,
    RMIA_OFFLINE_A,
    GaussianFit,
    Signals,
    attack_scores,
    balanced_shadows,
    check_zoo_size,
    fit_gaussians,
    lira_reference,
    lira_score,
    logit_scaled_confidence,
    null_leave_one_out_auc,
    pooled_std,
    reference_attack,
    rmia_score,
    true_class_log_probability,
)
from .mia_eval import (
    LOW_FPRS,
    METRICS,
    MIN_FALSE_POSITIVES,
    ZERO_FP,
    Resamples,
    at_fit_level,
    direction,
    epochs_to_fit_level,
    estimate,
    interval,
    low_fpr_metric,
    matched_fit_level,
    pair,
    pooled_at_fit_level,
    pooled_estimate,
    pooled_interval,
    pooled_over_pools,
    pooled_roc,
    pooled_scores,
    roc_metrics,
    weighted_roc_metrics,
)

__all__ = [
    # this module: the chapter's parameters, queries and measurements
    "AUGMENTS", "QUERY_MODES", "TRAINING_AUGMENT", "ChapterParams", "augment_queries", "cached_measure",
    "check_config", "measure", "query_zoo", "resamples_for", "signals_of", "subgroups",
    # bnlib.mia_attacks
    "ATTACKS", "MIN_STD", "RMIA_OFFLINE_A", "GaussianFit", "Signals", "attack_scores", "balanced_shadows",
    "check_zoo_size", "fit_gaussians", "lira_reference", "lira_score", "logit_scaled_confidence",
    "null_leave_one_out_auc", "pooled_std", "reference_attack", "rmia_score", "true_class_log_probability",
    # bnlib.mia_eval
    "LOW_FPRS", "METRICS", "MIN_FALSE_POSITIVES", "ZERO_FP", "Resamples", "at_fit_level", "direction",
    "epochs_to_fit_level", "estimate", "interval", "low_fpr_metric", "matched_fit_level", "pair",
    "pooled_at_fit_level", "pooled_estimate", "pooled_interval", "pooled_over_pools", "pooled_roc", "pooled_scores",
    "roc_metrics", "weighted_roc_metrics",
]

AUGMENTS = ("none", "flip", "flip_shift")
TRAINING_AUGMENT = "none"  # bnlib.train applies no data augmentation; queries must use the same views


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the membership-inference chapter beyond :class:`bnlib.config.ExperimentConfig`."""

    attack: str = field(default="lira_online_global", metadata={
        "choices": ATTACKS[:6], "doc": "the attack behind the headline numbers and the fit curves"})
    query_augment: str = field(default="none", metadata={
        "choices": AUGMENTS, "doc": "queries averaged per example: only what training used (none)"})
    matched_fit_level: float = field(default=0.0, metadata={
        "minimum": 0.0, "doc": "inlier train accuracy at which norms are compared; 0: the config's headline_fit"})
    long_schedule_factor: int = field(default=0, metadata={
        "minimum": 0, "doc": "if > 0, non-BN zoos also trained epochs x this to extend their fit curves"})
    n_bootstrap: int = field(default=1000, metadata={
        "positive": True, "doc": "bootstrap resamples (of targets and examples)"})

    PROFILES: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_bootstrap=200),
        "quick": dict(),
        "paper": dict(),
    }


def check_config(cfg, params: ChapterParams | None = None) -> None:
    """Fail fast unless the zoo can be attacked leave-one-out, both arms (BN, no norm) are present and the
    queries use only the augmentations training used."""
    config.check_compared_norms(cfg)
    check_zoo_size(cfg.n_models)
    if params is not None and params.query_augment != TRAINING_AUGMENT:
        raise ValueError(f"Parameter 'query_augment' is {params.query_augment!r}; allowed: {TRAINING_AUGMENT!r}, the "
                         "augmentation training used (bnlib.train trains on the images as they are). Querying a "
                         "flipped or shifted canary asks about an image no model trained on.")


# ----------------------------------------------------------------------------- querying a zoo

def augment_queries(x: torch.Tensor, augment: str) -> torch.Tensor:
    """(N, C, H, W) -> (A, N, C, H, W) query views: the image itself first, then flips and shifts.

    ``flip``: + horizontal mirror (A = 2). ``flip_shift``: each of those also shifted by 2 pixels up,
    down, left and right (circular shift; the borders of these images are background), A = 10.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"Parameter 'query_augment' got {augment!r}; allowed values: {', '.join(AUGMENTS)}.")
    views = [x] if augment == "none" else [x, x.flip(-1)]
    if augment == "flip_shift":
        views += [view.roll(shift, dims=dim) for view in views for dim in (-2, -1) for shift in (-2, 2)]
    return torch.stack(views)


QUERY_MODES = ("eval", "train_shuffled", "train_pool_order")


def _query_all(zoo: zoo_lib.Zoo, x: torch.Tensor, mode: str, augment: str, query_batch_size: int) -> torch.Tensor:
    """(T, M, A, C) logits of every zoo model on the views of x (M, C, H, W), queried in ``mode``."""
    networks = [zoo.model(t) for t in range(zoo.n_models)]
    views = augment_queries(x, augment)
    if mode == "eval":
        per_view = [ensemble.predict_all(networks, view, bn_mode="eval") for view in views]
    else:  # train mode: each chunk of query_batch_size inputs is normalized by its own statistics
        order = (torch.randperm(len(x), generator=torch.Generator().manual_seed(0)) if mode == "train_shuffled"
                 else torch.arange(len(x)))
        inverse = order.argsort()
        per_view = [torch.stack([train.predict_logits(net, view[order], "train", query_batch_size)[inverse]
                                 for net in networks]) for view in views]
    return torch.stack(per_view, dim=2)


def query_zoo(zoo: zoo_lib.Zoo, cfg, mode: str = "eval", augment: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every zoo model on the pool and the test set, queried as asked, cached in the zoo entry.

    Args:
        mode: ``eval`` (BatchNorm's running statistics: how a deployed model answers); ``train_shuffled``
            (training-mode BN, query batches of ``cfg.batch_size`` shuffled examples, which look like
            training batches); ``train_pool_order`` (training-mode BN, batches in the pool's storage order,
            so the canaries, stored last, are normalized by each other's statistics). The LiRA reference
            code queries in training mode, in chunks of the training set in storage order.
        augment: see :func:`augment_queries`.
    Returns:
        pool logits (T, N, A, C) and test logits (T, n_test, A, C), float32.
    """
    if mode not in QUERY_MODES:
        raise ValueError(f"Parameter 'mode' got {mode!r}; allowed values: {', '.join(map(repr, QUERY_MODES))}.")
    if mode == "eval" and augment == "none":
        return zoo.logits.unsqueeze(2), zoo.test_logits.unsqueeze(2)

    def compute() -> dict[str, torch.Tensor]:
        _, pool_x, test_x = zoo_lib.zoo_inputs(cfg)
        return {"pool": _query_all(zoo, pool_x, mode, augment, cfg.batch_size),
                "test": _query_all(zoo, test_x, mode, augment, cfg.batch_size)}

    stored = zoo.entry.get_or_compute(f"mia_query_{mode}_{augment}", compute)
    return stored["pool"], stored["test"]


def signals_of(zoo: zoo_lib.Zoo, cfg, mode: str = "eval", augment: str = "none",
               checkpoint: int | None = None) -> Signals:
    """:class:`Signals` of a zoo, from its final models queried as asked (:func:`query_zoo`), or from
    checkpoint ``checkpoint`` (an index into ``zoo.checkpoint_epochs``; eval mode, no augmentation; the
    population signal then comes from the final models, so RMIA is not meaningful there)."""
    if checkpoint is None:
        pool, test = query_zoo(zoo, cfg, mode, augment)
    else:
        pool, test = zoo.checkpoint_logits[checkpoint].float(), zoo.test_logits
    return Signals.from_logits(zoo.keep, pool, zoo.labels, test, zoo.test_labels)

# ----------------------------------------------------------------------------- the chapter's measurements

def subgroups(zoo: zoo_lib.Zoo) -> dict[str, np.ndarray]:
    """The pool's subgroups: outliers (canaries, inserted or held out) and inliers; (N,) bool each."""
    outlier = zoo.is_outlier.numpy().astype(bool)
    return {"outliers": outlier, "inliers": ~outlier}


def resamples_for(zoo: zoo_lib.Zoo, n_bootstrap: int) -> dict[str, Resamples]:
    """The bootstrap resamples of each subgroup (the same for every norm: comparisons are paired)."""
    return {group: Resamples.draw(zoo.n_models, int(mask.sum()), n_bootstrap)
            for group, mask in subgroups(zoo).items()}


def _stack(estimates: list[dict[str, Any]]) -> dict[str, Any]:
    """Estimates at E checkpoints -> one estimate whose arrays gain a leading (E,) axis."""
    if isinstance(estimates[0], dict):
        return {key: _stack([e[key] for e in estimates]) for key in estimates[0]}
    return np.stack(estimates)


def measure(zoo: zoo_lib.Zoo, cfg, params: ChapterParams) -> dict[str, Any]:
    """Everything the chapter reports for one zoo (leave-one-out over its models).

    Returns a dict of :func:`estimate` results:
        ``attacks``: attack -> group -> estimate, eval-mode queries (resampled: the headline attack on
            every group, the others on outliers);
        ``scores``: (T, N) of the headline attack, for ROC curves;
        ``train_mode``: query mode (``train_shuffled``, ``train_pool_order``) -> group -> estimate of the
            headline attack queried with train-mode BN, and ``train_mode_scores``: mode -> (T, N) (both
            None for zoos without BatchNorm: their answers do not depend on the mode);
        ``fit``: ``epochs`` (E,), ``train_accuracy`` (E, T) and group -> estimate with an (E, ...) axis,
            from the checkpoints (eval mode, no augmentation; resampled on outliers), and ``scores``
            (E, T, N) float32, the headline attack's scores at each checkpoint;
        ``pooled``: attack -> group -> :func:`pooled_estimate` for the headline attack and its reference
            counterpart (:func:`reference_attack`), resampled on outliers.
    """
    groups, resamples, keep = subgroups(zoo), resamples_for(zoo, params.n_bootstrap), zoo.keep.numpy()

    def resampling(attack: str, group: str) -> Resamples | None:
        return resamples[group] if attack == params.attack or group == "outliers" else None

    eval_signals = signals_of(zoo, cfg, "eval", params.query_augment)
    scores = {attack: attack_scores(eval_signals, attack) for attack in ATTACKS}
    out: dict[str, Any] = {
        "attacks": {attack: {group: estimate(scores[attack], keep, mask, resampling(attack, group))
                             for group, mask in groups.items()} for attack in ATTACKS},
        "scores": scores[params.attack], "train_mode": None, "train_mode_scores": None,
        "pooled": {attack: {group: pooled_estimate(scores[attack], keep, mask,
                                                   resamples[group] if group == "outliers" else None)
                            for group, mask in groups.items()}
                   for attack in dict.fromkeys((params.attack, reference_attack(params.attack)))}}
    if zoo.arch_spec[1] == "batch":
        out["train_mode"], out["train_mode_scores"] = {}, {}
        for mode in QUERY_MODES[1:]:
            train_scores = attack_scores(signals_of(zoo, cfg, mode, params.query_augment), params.attack)
            out["train_mode"][mode] = {group: estimate(train_scores, keep, mask, resamples[group])
                                       for group, mask in groups.items()}
            out["train_mode_scores"][mode] = train_scores
    checkpoints = range(len(zoo.checkpoint_epochs))
    checkpoint_scores = [attack_scores(signals_of(zoo, cfg, checkpoint=e), params.attack) for e in checkpoints]
    out["fit"] = {"epochs": zoo.checkpoint_epochs.numpy(),
                  "train_accuracy": np.stack([zoo.train_accuracy(e).numpy() for e in checkpoints]),
                  **{group: _stack([estimate(s, keep, mask, resampling("", group)) for s in checkpoint_scores])
                     for group, mask in groups.items()},
                  "scores": np.stack(checkpoint_scores).astype(np.float32)}
    return out


def _to_tensors(value: Any) -> Any:
    """numpy arrays -> tensors inside nested dicts (the cache loads with ``weights_only=True``)."""
    if isinstance(value, dict):
        return {k: _to_tensors(v) for k, v in value.items()}
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _to_arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_arrays(v) for k, v in value.items()}
    return value.numpy() if isinstance(value, torch.Tensor) else value


def cached_measure(zoo: zoo_lib.Zoo, cfg, params: ChapterParams) -> dict[str, Any]:
    """:func:`measure`, cached in the zoo's entry under a key of the parameters and this module's code."""
    code = results.code_hash(results.code_of("mia"))
    key = results.config_hash({"attack": params.attack, "augment": params.query_augment,
                               "n_bootstrap": params.n_bootstrap, "code": code})
    return _to_arrays(zoo.entry.get_or_compute(f"mia_{key}", lambda: _to_tensors(measure(zoo, cfg, params))))
