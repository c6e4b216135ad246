"""The theory chapter's checks in torch: the toy network, its counterfactual influence by autograd (what the
closed forms of :mod:`bnlib.theory` are verified against), and the measurements on a real CNN that the chapter
sets beside the toy (influence across batch sizes, the toy's a² at every BN layer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import influence
from .theory import MATCHED_TORCH_EPS, NORMS, _check_norm, closed_form_influence, numeric_influence


def toy_network(norm: str, weight: Sequence[float], head: float, bias: float, epsilon: float = 1e-5) -> nn.Sequential:
    """The toy model as torch layers in float64: Linear(2, 1, no bias) -> BatchNorm1d(1, affine=False) or
    identity -> Linear(1, 1), in train mode (BN uses the batch's statistics)."""
    _check_norm(norm)
    unit = nn.Linear(2, 1, bias=False, dtype=torch.float64)
    head_layer = nn.Linear(1, 1, dtype=torch.float64)
    with torch.no_grad():
        unit.weight.copy_(torch.tensor([list(weight)], dtype=torch.float64))
        head_layer.weight.fill_(head)
        head_layer.bias.fill_(bias)
    norm_layer = nn.BatchNorm1d(1, eps=epsilon, affine=False, dtype=torch.float64) if norm == "batch" else nn.Identity()
    return nn.Sequential(unit, norm_layer, head_layer).train()


def _summed_squared_loss_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    loss = 0.5 * ((model(x).squeeze(1) - y) ** 2).sum()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(model.parameters()))])


def toy_influence_by_autograd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> float:
    """Definition 3 (counterfactual influence) on the toy by brute force: the norm of the difference of two
    autograd gradients of the sum-reduced squared loss, on the batch (x (m, 2), y (m,)) and on the batch
    without sample ``index``.

    The parameter order is (w_1, w_2, v, c), as in the closed forms.
    """
    keep = torch.arange(len(y)) != index
    return float((_summed_squared_loss_gradient(model, x, y) - _summed_squared_loss_gradient(model, x[keep], y[keep]))
                 .norm())


def toy_per_sample_gradient_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, index: int) -> float:
    """The textbook per-sample gradient norm ||grad loss_i|| (sample ``index`` alone through the model)."""
    return float(_summed_squared_loss_gradient(model, x[index:index + 1], y[index:index + 1]).norm())


def matched_instance(batch_size: int, along: float, across: float, slope: float, residual: float,
                     generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch that satisfies A1-A2 exactly, with the outlier last.

    The m-1 inliers are random, then centered and whitened (mean 0, biased covariance I); their labels are
    slope * x_1 plus noise orthogonal to (1, x_1, x_2), so that their mean is 0 and their cross-moment with x
    is (slope, 0). The outlier is (along, across) with label slope * along - residual.

    Returns:
        x (m, 2) and y (m,) in float64.
    """
    if batch_size < 4:
        raise ValueError(f"Parameter 'batch_size' got {batch_size}; allowed: >= 4 (3 inliers are needed to "
                         "whiten 2-D inputs exactly).")
    inliers = torch.randn(batch_size - 1, 2, generator=generator, dtype=torch.float64)
    inliers = inliers - inliers.mean(0)
    covariance = inliers.T @ inliers / len(inliers)
    inliers = inliers @ torch.linalg.inv(torch.linalg.cholesky(covariance)).T  # (m-1, 2), covariance I
    design = torch.cat([torch.ones(len(inliers), 1, dtype=torch.float64), inliers], 1)  # (m-1, 3)
    noise = torch.randn(len(inliers), generator=generator, dtype=torch.float64)
    noise = noise - design @ torch.linalg.lstsq(design, noise).solution
    labels = slope * inliers[:, 0] + noise
    x = torch.cat([inliers, torch.tensor([[along, across]], dtype=torch.float64)])
    y = torch.cat([labels, torch.tensor([slope * along - residual], dtype=torch.float64)])
    return x, y


def _relative_error(value: float, reference: float) -> float:
    return abs(value - reference) / max(abs(reference), 1e-300)


# what each key of :func:`verify_against_autograd` checks, as the chapter's table names it
VERIFICATION_CHECKS = {
    "general_batch": "general closed form, BN", "general_none": "general closed form, no norm",
    "matched_batch": "A1–A4 closed form, BN", "matched_none": "A1–A4 closed form, no norm",
    "none_is_per_sample_gradient": "no norm: Definition 3 vs per-sample gradient norm",
}


def verify_against_autograd(instances: int, seed: int = 0) -> dict[str, float]:
    """Largest relative errors of the closed forms against torch autograd on random instances (float64).

    Keys:
        general_batch, general_none -- the general closed form (any batch of 3..40 samples, any sample of it,
            random theta, eps in [1e-5, 1]) vs :func:`toy_influence_by_autograd`.
        matched_batch, matched_none -- the A1-A4 closed forms vs autograd on :func:`matched_instance`
            batches (m in 4..512; BN with eps = 1e-12, as torch needs eps > 0: O(eps) against unit variance).
        none_is_per_sample_gradient -- without BN, the counterfactual influence vs the per-sample gradient norm.
    """
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand(1, generator=generator, dtype=torch.float64))

    errors = {key: 0.0 for key in ("general_batch", "general_none", "matched_batch", "matched_none",
                                   "none_is_per_sample_gradient")}
    for _ in range(instances):
        size = int(torch.randint(3, 41, (1,), generator=generator))  # torch BN refuses a batch of 1
        x = uniform(0.1, 3.0) * torch.randn(size, 2, generator=generator, dtype=torch.float64) + torch.randn(
            2, generator=generator, dtype=torch.float64)
        y = torch.randn(size, generator=generator, dtype=torch.float64)
        theta = torch.randn(4, generator=generator, dtype=torch.float64).tolist()
        epsilon, index = 10 ** uniform(-5.0, 0.0), int(torch.randint(0, size, (1,), generator=generator))
        for norm in NORMS:
            network = toy_network(norm, theta[:2], theta[2], theta[3], epsilon)
            reference = toy_influence_by_autograd(network, x, y, index)
            closed = closed_form_influence(norm, x.numpy(), y.numpy(), index, theta, epsilon)
            errors[f"general_{norm}"] = max(errors[f"general_{norm}"], _relative_error(closed, reference))
            if norm == "none":
                per_sample = toy_per_sample_gradient_norm(network, x, y, index)
                errors["none_is_per_sample_gradient"] = max(errors["none_is_per_sample_gradient"],
                                                            _relative_error(reference, per_sample))
        size = int(torch.randint(4, 513, (1,), generator=generator))
        along, across, slope = uniform(0.0, 20.0), uniform(-5.0, 5.0), uniform(0.1, 3.0)
        residual = uniform(-5.0, 5.0)
        x, y = matched_instance(size, along, across, slope, residual, generator)
        for norm in NORMS:
            network = toy_network(norm, (1.0, 0.0), slope, 0.0, MATCHED_TORCH_EPS)
            reference = toy_influence_by_autograd(network, x, y, size - 1)
            closed = float(numeric_influence(norm, size, along, across, slope, residual))
            errors[f"matched_{norm}"] = max(errors[f"matched_{norm}"], _relative_error(closed, reference))
    return errors


def verification_rows(errors: dict[str, float]) -> list[tuple[str, str]]:
    """(check, largest relative error) rows of the chapter's verification table (:func:`verify_against_autograd`)."""
    return [(VERIFICATION_CHECKS[key], f"{value:.1e}") for key, value in errors.items()]


def verification_values(errors: dict[str, float]) -> dict[str, str]:
    """The errors the text quotes, to one significant digit: ``error_{key}`` for each check and ``error_max``."""
    return {**{f"error_{key}": f"{value:.0e}" for key, value in errors.items()},
            "error_max": f"{max(errors.values()):.0e}"}


def cnn_influence_by_batch_size(model: nn.Module, inlier_x: torch.Tensor, inlier_y: torch.Tensor,
                                outlier_x: torch.Tensor, outlier_y: torch.Tensor, batch_sizes: Sequence[int],
                                n_batches: int, inliers_measured: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Counterfactual influence (``bnlib.influence.counterfactual_influence``, train-mode BN, sum-reduced
    cross-entropy) of one outlier in a batch of m-1 random inliers, at each batch size m, at fixed weights.

    Outlier k (k < n_batches) is the same at every m; its batch-mates are drawn afresh for each m. The draws
    depend only on ``seed`` and the sizes, so two models measured with the same seed see the same batches.

    Args:
        inlier_x, inlier_y: (N, C, H, W), (N,) pool of inliers.
        outlier_x, outlier_y: (K, C, H, W), (K,) outliers, K >= n_batches.
        inliers_measured: inliers per batch whose influence is measured too (the first ones of the batch).

    Returns:
        ``outlier`` (S, n_batches): the outlier's influence; ``inlier`` (S, n_batches): the mean influence of
        ``inliers_measured`` inliers of the same batch; S = len(batch_sizes).
    """
    if n_batches > len(outlier_x):
        raise ValueError(f"Parameter 'cnn_batches' got {n_batches}; allowed: at most {len(outlier_x)} "
                         "(one inserted canary per batch).")
    if max(batch_sizes) > len(inlier_x) + 1:
        raise ValueError(f"Parameter 'cnn_batch_sizes' got {max(batch_sizes)}; allowed: at most {len(inlier_x) + 1}.")
    generator = torch.Generator().manual_seed(seed)
    outliers = torch.randperm(len(outlier_x), generator=generator)[:n_batches]
    device = next(model.parameters()).device
    result = {"outlier": np.zeros((len(batch_sizes), n_batches)), "inlier": np.zeros((len(batch_sizes), n_batches))}
    for s, size in enumerate(batch_sizes):
        measured = min(inliers_measured, size - 1)
        for k, outlier in enumerate(outliers.tolist()):
            mates = torch.randperm(len(inlier_x), generator=generator)[: size - 1]
            x = torch.cat([inlier_x[mates], outlier_x[outlier:outlier + 1]]).to(device)  # (m, C, H, W)
            y = torch.cat([inlier_y[mates], outlier_y[outlier:outlier + 1]]).to(device)
            values = influence.counterfactual_influence(model, x, y, indices=[size - 1, *range(measured)])
            result["outlier"][s, k] = float(values[0])
            result["inlier"][s, k] = float(values[1:].mean())
    return result


def log_log_slopes(batch_sizes: Sequence[int], values: np.ndarray) -> np.ndarray:
    """Least-squares slope of log(value) against log(m) for each column of ``values`` (S, K); returns (K,)."""
    logs = np.log(np.asarray(batch_sizes, dtype=np.float64))
    centered = logs - logs.mean()
    return centered @ (np.log(values) - np.log(values).mean(0)) / (centered @ centered)


def squared_standardized_distances(model: nn.Module, reference_x: torch.Tensor,
                                   probe_x: torch.Tensor) -> list[np.ndarray]:
    """The toy's a^2 measured at every BatchNorm layer of a network: for each probe sample and channel, the
    mean over spatial positions of (z - mu)^2 / sigma^2, where z is the layer's input and mu, sigma^2 its
    per-channel mean and variance over ``reference_x`` (the inliers). This is how much the sample adds to the
    channel's batch variance, in units of one inlier's share (1 on average for an inlier).

    The forward passes run in eval mode (running statistics in the layers before), weights untouched.

    Returns:
        one (len(probe_x), C_l) array per BN layer, in forward order.
    """
    layers = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    inputs: dict[int, torch.Tensor] = {}
    hooks = [layer.register_forward_hook(lambda module, args, output, k=k: inputs.__setitem__(k, args[0]))
             for k, layer in enumerate(layers)]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(reference_x)
            reference = dict(inputs)
            model(probe_x)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    distances = []
    for k in range(len(layers)):
        ref, probe = reference[k].transpose(0, 1).flatten(1), inputs[k]  # (C, N*H*W), (P, C, H, W)
        mean, variance = ref.mean(1), ref.var(1, unbiased=False)  # (C,)
        shape = (1, -1) + (1,) * (probe.dim() - 2)
        squared = (probe - mean.reshape(shape)) ** 2 / variance.reshape(shape)
        distances.append(squared.flatten(2).mean(2).cpu().numpy() if probe.dim() > 2 else squared.cpu().numpy())
    return distances
