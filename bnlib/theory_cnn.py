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
    """The chapter's metric (``verdict.annotate``d, no headline): the BN slopes against 0, a one-sample t-test
    over canaries; and its p-value. Needs both norms. The no-norm slope is 0 by definition (a sample's
    counterfactual influence without BN is its own gradient), so a paired test against no norm IS this
    one-sample test; the no-norm slopes are kept in the entry as the check of that definition."""
    from scipy import stats as scipy_stats

    test = {"t_p_value": float(scipy_stats.ttest_1samp(per_canary["batch"], 0.0).pvalue)}
    metrics = verdict.annotate({
        METRIC: results.metric_entry(
            dict(slope_summary), p_value=test["t_p_value"],
            test="one-sample t-test of the BN slopes against 0 over canaries (the no-norm slope is 0 by definition)",
            higher_means="a canary's per-step influence grows faster with the batch size",
            description="Least-squares slope of log counterfactual influence against log batch size for one "
                        f"inserted canary among random inliers, at the trained weights (seed {seed}).",
            comparison="same_schedule"),
    }, units={METRIC: "canaries (one model)"})
    return metrics, test["t_p_value"]


# ----------------------------------------------------------------------------- a check that can fail: far outliers

SYNTHETIC_A2 = (1_000.0, 10_000.0)  # the toy's a² of the synthetic outliers at the first BN layer (a² >> m)
SYNTHETIC_METRIC = "theory_far_outlier_slope_minus_prediction"


def _layer_input(network: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of ``layer`` when ``network`` runs on ``x`` in eval mode, without gradients (N, C, H, W)."""
    seen: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda module, args, output: seen.__setitem__("z", args[0]))
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            network(x)
    finally:
        hook.remove()
        network.train(was_training)
    return seen["z"]


def first_bn_a2(network: nn.Module, reference_x: torch.Tensor) -> Any:
    """A function x -> (K,) largest channel a² of each image at the network's FIRST BN layer, with that layer's
    per-channel input mean and variance taken once over ``reference_x`` (eval mode; the definition of
    ``theory_checks.squared_standardized_distances``, restricted to the first layer)."""
    layer = next(m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    ref = _layer_input(network, layer, reference_x).transpose(0, 1).flatten(1)  # (C, N·H·W)
    mean, variance = ref.mean(1), ref.var(1, unbiased=False)

    def a2(x: torch.Tensor) -> np.ndarray:
        z = _layer_input(network, layer, x)
        squared = (z - mean.view(1, -1, 1, 1)) ** 2 / variance.view(1, -1, 1, 1)
        return squared.flatten(2).mean(2).max(1).values.double().cpu().numpy()

    return a2


def synthetic_outliers(network: nn.Module, reference_x: torch.Tensor, base_x: torch.Tensor,
                       target_a2: float, iterations: int = 30) -> tuple[torch.Tensor, np.ndarray]:
    """Outliers at a controlled a²: each image of ``base_x`` (K, C, H, W) scaled by the factor s_k >= 1 at which
    its largest channel a² at the network's FIRST BN layer (:func:`first_bn_a2` against ``reference_x``) equals
    ``target_a2`` (bisection on log s in [0, 12]; a² grows with s once the scaled image dominates the layer's
    bias). Returns the outliers and their measured a² (K,)."""
    device = next(network.parameters()).device
    measure = first_bn_a2(network, reference_x.to(device))
    base = base_x.to(device)

    def a2(log_scale: torch.Tensor) -> np.ndarray:
        return measure(base * torch.exp(log_scale).to(device).view(-1, 1, 1, 1))

    low, high = torch.zeros(len(base)), torch.full((len(base),), 12.0)
    if (a2(high) < target_a2).any():
        raise ValueError(f"Parameter 'target_a2' ({target_a2:g}) is not reached by scaling the images up to e^12.")
    for _ in range(iterations):
        middle = (low + high) / 2
        above = torch.from_numpy(a2(middle) >= target_a2)
        high, low = torch.where(above, middle, high), torch.where(above, low, middle)
    return (base * torch.exp(high).to(device).view(-1, 1, 1, 1)).cpu(), a2(high)


def predicted_slopes(batch_sizes: Sequence[int], a2: np.ndarray, slope: float = 1.0, residual: float = 1.0
                     ) -> np.ndarray:
    """The toy's log-log slope of BN influence against m over ``batch_sizes`` for an outlier along w at each a²
    (``theory.numeric_influence``; for a² >> m it tends to 1/2 whatever beta and r)."""
    from .theory import numeric_influence

    sizes = np.asarray(batch_sizes, dtype=float)
    values = numeric_influence("batch", sizes[:, None], np.sqrt(np.asarray(a2, dtype=float))[None, :], 0.0, slope,
                               residual)
    return log_log_slopes(sizes, values)


def far_outlier_check(cnns: TrainedCNNs, params: ChapterParams, seed: int,
                      targets: Sequence[float] = SYNTHETIC_A2) -> dict[str, Any]:
    """The theory's check that can fail: ``params.cnn_batches`` synthetic outliers per a² of ``targets`` (scaled
    canaries, :func:`synthetic_outliers`; the same canaries at every target) measured in the BN network at
    ``params.cnn_batch_sizes`` (``cnn_influence_by_batch_size``: counterfactual influence, same batches for every
    outlier).

    The toy predicts a slope near 1/2 (influence ~ sqrt(m)) for a² >> m; no batch coupling predicts 0. Without
    norm the counterfactual influence of a sample IS its own gradient, which does not depend on its batch-mates,
    so the no-norm slope is 0 by definition: comparing with it is a one-sample test of the BN slope against 0.

    Returns:
        ``a2`` (K,) measured, ``measured`` (K,) and ``predicted`` (K,) slopes, ``difference`` (measured -
        predicted: ``stats.mean_ci``), ``measured_summary`` (``stats.mean_ci``), ``against_zero_p`` (one-sample
        t-test of the measured slopes against 0), ``against_prediction_p`` (paired t-test of measured against
        predicted), ``seconds``. The no-norm network is not measured: its slope is 0 by definition (the tests
        check it on small networks).
    """
    import time

    from scipy import stats as scipy_stats

    if "batch" not in cnns.networks:
        raise ValueError("The far-outlier check needs the BatchNorm network; 'norms' must contain 'batch'.")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(cnns.canary_x), generator=generator)[:params.cnn_batches]
    reference = cnns.inlier_x[:DISTANCE_REFERENCE_SIZE]
    xs, ys, a2s = [], [], []
    for target in targets:
        x, a2 = synthetic_outliers(cnns.networks["batch"], reference, cnns.canary_x[chosen], target)
        xs.append(x), ys.append(cnns.canary_y[chosen]), a2s.append(a2)
    outlier_x, outlier_y, a2 = torch.cat(xs), torch.cat(ys), np.concatenate(a2s)
    measured = cnn_influence_by_batch_size(cnns.networks["batch"], cnns.inlier_x, cnns.inlier_y, outlier_x,
                                           outlier_y, params.cnn_batch_sizes, len(outlier_x), seed=seed)
    # cnn_influence_by_batch_size permutes the outliers with its own generator: restore their order
    order = torch.randperm(len(outlier_x), generator=torch.Generator().manual_seed(seed)).numpy()
    values = np.empty_like(measured["outlier"])
    values[:, order] = measured["outlier"]
    measured_slopes = log_log_slopes(np.asarray(params.cnn_batch_sizes), values)
    predicted = predicted_slopes(params.cnn_batch_sizes, a2)
    return {"a2": a2, "measured": measured_slopes, "predicted": predicted,
            "difference": stats.mean_ci(measured_slopes - predicted),
            "measured_summary": stats.mean_ci(measured_slopes),
            "predicted_mean": float(predicted.mean()),
            "against_zero_p": float(scipy_stats.ttest_1samp(measured_slopes, 0.0).pvalue),
            "against_prediction_p": float(scipy_stats.ttest_rel(measured_slopes, predicted).pvalue),
            "seconds": time.perf_counter() - started}


def far_outlier_values(check: Mapping[str, Any]) -> dict[str, Any]:
    """What the text quotes from :func:`far_outlier_check`: the measured slope with its interval, the prediction,
    the a² range, both p-values and the reading in words (``far_verdict``)."""
    measured, difference = check["measured_summary"], check["difference"]
    low, high = measured["ci95"]
    inside = low <= check["predicted_mean"] <= high
    differs_from_zero = check["against_zero_p"] < 0.05
    if inside and differs_from_zero:
        verdict = "the measured slope agrees with the prediction (inside its interval) and differs from the null's 0"
    elif inside:
        verdict = "inconclusive: the interval holds both the prediction and the null's 0"
    elif differs_from_zero and measured["mean"] > 0:
        verdict = "the slope differs from 0 but its interval excludes the prediction: the theory fails this check"
    elif differs_from_zero:
        verdict = "the slope is negative, against the prediction: the theory fails this check"
    else:
        verdict = "the slope is not distinguishable from the null's 0 and excludes the prediction: the theory fails"
    return {"far_slope": measured["mean"], "far_slope_low": low, "far_slope_high": high, "far_n": measured["n"],
            "far_predicted": check["predicted_mean"], "far_difference": difference["mean"],
            "far_a2_min": float(np.min(check["a2"])), "far_a2_max": float(np.max(check["a2"])),
            "far_p_zero": check["against_zero_p"], "far_p_prediction": check["against_prediction_p"],
            "far_verdict": verdict, "far_seconds": f"{check['seconds']:.0f}"}
