"""The theory chapter's comparison with a real network: the trained small CNNs of the other chapters (loaded
from the result cache), where their canaries sit as BatchNorm sees them (the toy's a² at every BN layer), and a
canary's counterfactual influence against the batch size, summarized as log-log slopes, BN / no-norm ratios and
the chapter's metric. The measurement primitives are in :mod:`bnlib.theory_checks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import data, models, results, runs, stats, train, verdict
from .theory import ChapterParams
from .theory_checks import cnn_influence_by_batch_size, log_log_slopes, squared_standardized_distances

DISTANCE_REFERENCE_SIZE = 512  # training inliers whose per-channel statistics stand for the inliers' (a² = 1)
METRIC = "theory_canary_influence_slope_in_batch_size"


@dataclass
class TrainedCNNs:
    """The chapter's trained networks and the data they are measured on (inputs normalized as in training).

    Attributes:
        networks: norm -> trained network (``batch`` and ``none`` where ``cfg.norms`` has them), on the device.
        inlier_x, inlier_y: the training inliers; canary_x, canary_y: the inserted canaries; test_x: test images.
    """

    networks: dict[str, nn.Module]
    inlier_x: torch.Tensor
    inlier_y: torch.Tensor
    canary_x: torch.Tensor
    canary_y: torch.Tensor
    test_x: torch.Tensor


def trained_cnns(cfg, seed: int) -> TrainedCNNs:
    """The BN and no-norm networks of ``runs.train_run(cfg, norm, seed)`` (trained there or loaded from the
    cache) and that seed's data, normalized with the inliers' statistics."""
    experiment = data.make_experiment_data(cfg, seed=seed, allow_download=cfg.allow_download)
    is_canary = experiment.is_canary
    reference = experiment.train_x[~is_canary]
    train_x = data.normalize(experiment.train_x, reference)
    device = train.resolve_device(cfg.device)
    networks = {}
    for norm in (norm for norm in ("batch", "none") if norm in cfg.norms):
        networks[norm] = models.build_for(cfg, norm, experiment).to(device)
        networks[norm].load_state_dict(runs.train_run(cfg, norm, seed).state_dict)
    return TrainedCNNs(networks, train_x[~is_canary], experiment.train_y[~is_canary], train_x[is_canary],
                       experiment.train_y[is_canary], data.normalize(experiment.test_x, reference))


def canary_and_test_distances(cnns: TrainedCNNs) -> dict[str, list[np.ndarray]]:
    """The toy's a² of the inserted canaries and of as many test images at every BN layer of the BN network
    (``theory_checks.squared_standardized_distances`` against ``DISTANCE_REFERENCE_SIZE`` inliers); {} when
    there is no BN network."""
    if "batch" not in cnns.networks:
        return {}
    network = cnns.networks["batch"]
    device = next(network.parameters()).device
    reference = cnns.inlier_x[:DISTANCE_REFERENCE_SIZE].to(device)
    probe = {"canaries": cnns.canary_x, "test images": cnns.test_x[: len(cnns.canary_x)]}
    return {name: squared_standardized_distances(network, reference, x.to(device)) for name, x in probe.items()}


def distance_summary(squared: Mapping[str, Sequence[np.ndarray]], batch_sizes: Sequence[int]) -> dict[str, Any]:
    """What the text says about :func:`canary_and_test_distances`: per layer, the median over samples of the
    largest channel a² (``canary_a2``, ``inlier_a2`` for the test images, as text), the 90 % quantile of the
    canaries' largest over all layers (``canary_a2_high``), how the canaries compare with the test images
    (``canary_vs_inlier``) and what the toy then predicts for the measured ``batch_sizes`` (``toy_regime``: flat
    when a² stays below the smallest m)."""
    canary_max = [float(np.median(layer.max(1))) for layer in squared["canaries"]]
    inlier_max = [float(np.median(layer.max(1))) for layer in squared["test images"]]
    high = float(max(np.quantile(layer.max(1), 0.9) for layer in squared["canaries"]))
    comparison = "smaller than" if max(canary_max) < min(inlier_max) else (
        "larger than" if min(canary_max) > max(inlier_max) else "comparable to")
    regime = ("should barely change with m over the measured range, as for the a ≤ 1 curves above"
              if high < min(batch_sizes) else "could grow with m up to m ≈ a², as for the far-outlier curves above")
    return {"canary_a2": ", ".join(f"{value:.2f}" for value in canary_max),
            "inlier_a2": ", ".join(f"{value:.2f}" for value in inlier_max),
            "canary_a2_high": high, "canary_vs_inlier": comparison, "toy_regime": regime}


def influence_by_batch_size(cnns: TrainedCNNs, params: ChapterParams, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """norm -> ``theory_checks.cnn_influence_by_batch_size`` at ``params.cnn_batch_sizes`` with
    ``params.cnn_batches`` canaries; every norm sees the same batches (same ``seed``)."""
    return {norm: cnn_influence_by_batch_size(network, cnns.inlier_x, cnns.inlier_y, cnns.canary_x, cnns.canary_y,
                                              params.cnn_batch_sizes, params.cnn_batches, seed=seed)
            for norm, network in cnns.networks.items()}


def amplification_ratios(measured: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray | None:
    """(S, K) a canary's BN influence over its no-norm influence, same canary and same batch; None without both."""
    if not {"batch", "none"} <= set(measured):
        return None
    return measured["batch"]["outlier"] / measured["none"]["outlier"]


def ratio_summary(ratio: np.ndarray, batch_sizes: Sequence[int], batch_size: int) -> dict[str, Any]:
    """The ratios the text quotes: mean and 95 % t-interval over canaries at the measured batch size closest to
    the chapter's ``batch_size`` (``cnn_ratio_m``, ``cnn_ratio``, ``cnn_ratio_low``, ``cnn_ratio_high``) and the
    smallest and largest mean over the batch sizes (``cnn_ratio_min``, ``cnn_ratio_max``)."""
    sizes = np.asarray(batch_sizes)
    summary = [stats.mean_ci(row) for row in ratio]
    at = int(np.argmin(np.abs(sizes - batch_size)))
    return {"cnn_ratio_m": int(sizes[at]), "cnn_ratio": summary[at]["mean"], "cnn_ratio_low": summary[at]["ci95"][0],
            "cnn_ratio_high": summary[at]["ci95"][1], "cnn_ratio_min": float(min(s["mean"] for s in summary)),
            "cnn_ratio_max": float(max(s["mean"] for s in summary))}


def slopes(measured: Mapping[str, Mapping[str, np.ndarray]], batch_sizes: Sequence[int]) -> dict[str, np.ndarray]:
    """norm -> (K,) per canary, the least-squares slope of log influence against log m."""
    return {norm: log_log_slopes(np.asarray(batch_sizes), values["outlier"]) for norm, values in measured.items()}


def trend_word(summary: Mapping[str, Any]) -> str:
    """The text's reading of a slope's 95 % interval: it grows, shrinks, or shows no detectable trend with m."""
    low, high = summary["ci95"]
    return "grows with m" if low > 0 else ("shrinks with m" if high < 0 else "shows no trend we can detect")


def slope_values(slope_summary: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per norm, ``slope_{norm}`` (mean), ``slope_{norm}_low``/``_high`` (95 % interval) and
    ``slope_{norm}_verdict`` (:func:`trend_word`), from ``stats.mean_ci`` summaries."""
    values = {}
    for norm, summary in slope_summary.items():
        low, high = summary["ci95"]
        values.update({f"slope_{norm}": summary["mean"], f"slope_{norm}_low": low, f"slope_{norm}_high": high,
                       f"slope_{norm}_verdict": trend_word(summary)})
    return values


def slope_rows(slope_summary: Mapping[str, Mapping[str, Any]], labels: Mapping[str, str]) -> list[tuple[str, ...]]:
    """Rows (norm label, mean, 95 % interval, n) of the chapter's slope table (``chapter.markdown_table``)."""
    return [(labels[norm], f"{s['mean']:.3f}", f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]", f"{s['n']}")
            for norm, s in slope_summary.items()]


def slope_metric(per_canary: Mapping[str, np.ndarray], slope_summary: Mapping[str, Mapping[str, Any]],
                 seed: int) -> tuple[dict[str, Any], float]:
    """The chapter's metric (``verdict.annotate``d, no headline): BN against no-norm slopes, paired t-test over
    canaries (same batches); and its p-value. Needs both norms."""
    test = stats.paired_test(per_canary["batch"], per_canary["none"])
    metrics = verdict.annotate({
        METRIC: results.metric_entry(
            dict(slope_summary), p_value=test["t_p_value"], test="paired t-test over canaries (same batches)",
            higher_means="a canary's per-step influence grows faster with the batch size",
            description="Least-squares slope of log counterfactual influence against log batch size for one "
                        f"inserted canary among random inliers, at the trained weights (seed {seed}).",
            comparison="same_schedule"),
    }, units={METRIC: "canaries (one model)"})
    return metrics, test["t_p_value"]
