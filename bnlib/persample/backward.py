"""The fused backward pass of a block's tail: one routed multiply through ReLU and max-pooling (a scatter at
the maxima), BN's coupling added as one dense rank-2-per-channel term, and BN's parameter gradients from two sums
per channel taken after pooling; plus the lowest pooling conv's gradient taken after pooling.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .chain import BlockTail, channel_sums, param_names, per_channel


def unpool(tail: BlockTail, routed: torch.Tensor, samples: slice) -> torch.Tensor:
    """The field at the pooling tail's input (S, n_c, C, H, W), laid out channels-last as the convolutions consume
    it: ``routed`` (S, n_c, C, oh, ow) at each window's maximum, zero elsewhere."""
    shape = (routed.shape[0], *routed.shape[1:3], *tail.saved.input_shape.tolist()[3:])
    zeros = routed.new_zeros(*shape[:2], *shape[3:], shape[2]).permute(0, 1, 4, 2, 3)
    return _scatter_at_maxima(tail, zeros, routed, samples)


def _scatter_at_maxima(tail: BlockTail, dz: torch.Tensor, values: torch.Tensor, samples: slice) -> torch.Tensor:
    """dz (S', n_c, C, H, W) += values (.., n_c, C, oh, ow) at each window's maximum, in place."""
    index = _slice(tail.saved.index, samples)
    rows = max(dz.shape[0], values.shape[0], index.shape[0])
    # as (rows, n, positions, C): contiguous for channels-last tensors, which scatter fastest that way
    shape = (rows, values.shape[1], values.shape[-2] * values.shape[-1], values.shape[2])
    dz.movedim(2, -1).flatten(2, 3).scatter_add_(2, index.movedim(2, -1).flatten(2, 3).expand(shape),
                                                 values.movedim(2, -1).flatten(2, 3).expand(shape))
    return dz


def _slice(t: torch.Tensor, samples: slice) -> torch.Tensor:
    return t[:, samples]


def _routes(tail: BlockTail) -> list[torch.Tensor]:
    """The factor that carries a field at the tail's output (after pooling) to its input with the BN statistics
    held fixed: scale · ReLU mask (at each window's maximum when the tail pools); [] for the identity."""
    if tail.saved.routes is None:
        scale = tail.saved.scale
        if tail.pool is not None:
            routes = [route_total(tail)]
        else:
            mask = tail.saved.mask
            if scale is None:
                routes = [mask] if mask is not None else []
            else:
                channel_scale = per_channel(scale, tail.saved.xhat)
                routes = [mask * channel_scale if mask is not None else channel_scale]
        tail.saved.routes = routes
    return tail.saved.routes


def route_total(tail: BlockTail) -> torch.Tensor:
    """scale · ReLU mask at each window's maximum (pooling tails)."""
    if tail.saved.route_total is None:
        keep = tail.saved.tests[0] if tail.saved.tests is not None else (
            tail.saved.pooled.sign() if tail.relu else 1.0)
        scale = tail.saved.scale
        tail.saved.route_total = keep * per_channel(scale, tail.saved.pooled) if scale is not None else (
            keep * torch.ones_like(tail.saved.pooled))
    return tail.saved.route_total


def statistics_tests(tail: BlockTail) -> tuple[torch.Tensor | float, torch.Tensor]:
    """(M1, Mx) at the tail's output before average/flatten: Σ_pos d = Σ dy·M1 and Σ_pos d·x̂ = Σ dy·Mx for the
    field d at BN's output (the β and γ gradients), through ReLU and pooling."""
    if tail.saved.tests is None:
        xhat = tail.saved.xhat
        if tail.pool is not None:
            pooled, index = tail.saved.pooled, tail.saved.index
            keep = pooled.sign() if tail.relu else torch.ones_like(pooled)
            rows = max(xhat.shape[0], index.shape[0])
            flat = index.flatten(-2).expand(rows, *index.shape[1:3], -1)
            at_max = xhat.flatten(-2).expand(rows, *xhat.shape[1:3], -1).gather(-1, flat).view(
                rows, *pooled.shape[1:])
            tail.saved.tests = (keep, keep * at_max)
        else:
            mask = tail.saved.mask
            tail.saved.tests = (mask, mask * xhat) if mask is not None else (1.0, xhat)
    return tail.saved.tests


def unshape(tail: BlockTail, dy: torch.Tensor) -> torch.Tensor:
    """Field at the output of the tail's fused part (before AdaptiveAvgPool2d/Flatten) from dy at the tail's output."""
    if tail.flatten:
        dy = dy.reshape(*dy.shape[:2], *tail.saved.flatten_shape.tolist()[2:])
    if tail.average:
        shape = tail.saved.average_shape.tolist()
        dy = (dy / (shape[-2] * shape[-1])).expand(*dy.shape[:3], *shape[-2:])
    return dy


def bn_sums(tail: BlockTail, dy: torch.Tensor, samples: slice) -> torch.Tensor | None:
    """(S, n_c, 2C): [Σ_pos d, Σ_pos d·x̂] of the field d at BN's output (its β and γ gradients), from dy at the
    fused part's output, through ReLU and pooling; None without BN."""
    if tail.bn is None:
        return None
    ones, along = (_slice(t, samples) if torch.is_tensor(t) else t for t in statistics_tests(tail))
    return torch.cat([channel_sums(dy * ones), channel_sums(dy * along)], -1)


def _coupling(tail: BlockTail, sums: torch.Tensor, samples: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """BN's backward through its statistics adds −γ/σ · w_n/N · (Σ d + x̂ Σ d x̂) to every position:
    returns its (offset, slope) per row, sample and channel (S, n_c, C), sums taken over all samples."""
    channels = sums.shape[-1] // 2
    share = (tail.saved.weights / tail.saved.count[:, None])[:, samples].unsqueeze(-1)  # (R, n_c, 1)
    scale = tail.saved.scale.unsqueeze(1)  # (R, 1, C)
    totals = sums.sum(1, keepdim=True)  # (S, 1, 2C)
    return -scale * share * totals[..., :channels], -scale * share * totals[..., channels:]


def _affine_in_xhat(tail: BlockTail, offset: torch.Tensor, slope: torch.Tensor, samples: slice) -> torch.Tensor:
    """offset + slope · x̂ at full resolution, offset and slope (S, n_c, C) per row, sample and channel; from z
    and the statistics when x̂ was not formed: (offset − slope μ/σ) + (slope/σ) z."""
    if tail.saved.xhat is not None:
        xhat = _slice(tail.saved.xhat, samples)
        return torch.addcmul(per_channel(offset, xhat), xhat, per_channel(slope, xhat))
    z = _slice(tail.saved.z, samples)
    slope = slope * tail.saved.inv_std.unsqueeze(1)  # (R, 1, C) broadcast against (S, n_c, C)
    offset = offset - slope * tail.saved.mean.unsqueeze(1)
    return torch.addcmul(per_channel(offset, z), z, per_channel(slope, z))


def tail_backward(tail: BlockTail, dy: torch.Tensor, coupled: bool, samples: slice = slice(None)) -> tuple[
        torch.Tensor, torch.Tensor | None]:
    """Field at the tail's input (its layer's output) from dy (S, n_c, ...) at its output.

    Args:
        coupled: through BN's batch/group statistics; otherwise with the statistics held fixed.
        samples: the samples of dy among the saved ones (frozen passes run on chunks of samples).
    Returns:
        (field (S, n_c, ...), :func:`bn_sums` or None).
    """
    dy = unshape(tail, dy)
    sums = bn_sums(tail, dy, samples)
    routes = [_slice(r, samples) for r in _routes(tail)]
    if coupled and tail.bn is not None:
        offset, slope = _coupling(tail, sums, samples)
        dz = _affine_in_xhat(tail, offset, slope, samples)
        if tail.pool is not None:
            return _scatter_at_maxima(tail, dz, dy * routes[0], samples), sums
        return (dz.addcmul_(dy, routes[0]) if routes else dz.add_(dy)), sums
    if tail.pool is None:
        return (dy * routes[0] if routes else dy), sums
    return unpool(tail, dy * routes[0], samples), sums


# The largest unfolded-input-at-the-maxima (elements) a pooling conv keeps for its gradients (128 MiB in float32)
GATHER_LIMIT = 2 ** 25


def gathered_fits(layer: nn.Module, tail: BlockTail) -> bool:
    """Whether the conv of a pooling tail takes its gradient after pooling (:func:`pooled_conv_rows`): its input
    must be shared by the rows (one forward pass) and its input gathered at the maxima within GATHER_LIMIT."""
    if not (isinstance(layer, nn.Conv2d) and tail.pool is not None and param_names(layer)
            and tail.saved.index is not None and tail.saved.index.shape[0] == 1):
        return False
    index = tail.saved.index
    return math.prod(index.shape[1:]) * math.prod(layer.weight.shape[1:]) <= GATHER_LIMIT


def _gathered_inputs(layer: nn.Conv2d, tail: BlockTail, inputs: torch.Tensor) -> dict:
    """For the conv of a pooling tail whose input (1, n, ...) is shared: its unfolded input u at each
    window's maximum (``gathered``, stored (C, Q, n, oh*ow): a matrix product reads it fastest as the transposed
    operand); for BN's dense term Σ_pos u (``one``, (n, Q)) and Σ_pos z u (``along``, (n, C, Q)). Cached in the
    tail while its forward pass stands."""
    index = tail.saved.index  # (1, n, C, oh, ow)
    cache = tail.shared.setdefault("rows", {})
    if cache.get("index") is not index:
        unfolded = F.unfold(inputs[0], layer.weight.shape[2:], layer.dilation, layer.padding, layer.stride)
        channels, queries = index.shape[2], unfolded.shape[1]
        flat = index[0].flatten(-2)  # (n, C, X)
        gathered = unfolded.transpose(1, 2).unsqueeze(1).expand(-1, channels, -1, -1).gather(
            2, flat.unsqueeze(-1).expand(-1, -1, -1, queries))  # (n, C, X, Q)
        cache.clear()
        cache.update(index=index, gathered=gathered.permute(1, 3, 0, 2).contiguous())  # (C, Q, n, X)
        if tail.saved.z is not None:
            z = tail.saved.z[0].flatten(2)  # (n, C, L)
            cache.update(one=unfolded.sum(-1), along=z @ unfolded.transpose(1, 2), z_sums=z.sum(-1))
    return cache


def pooled_conv_rows(layer: nn.Conv2d, tail: BlockTail, inputs: torch.Tensor, dy: torch.Tensor,
                      sums: torch.Tensor | None, coupled: bool, samples: slice) -> torch.Tensor:
    """Gradient of a Conv2d whose tail max-pools, computed after pooling: the weight gradient is
    Σ_pos dz ⊗ u, and dz is the routed field (non-zero at one position per window: u gathered there) plus,
    when coupled, BN's dense term (offset + slope·x̂: its sums against u are per-sample moments of u).
    Nothing of the size of the layer's output is formed.

    Args:
        inputs: the layer's input (R, n, ...), all samples; dy: field after pooling (S, n_c, C, oh, ow).
    Returns:
        (S, P) gradients summed over the samples of each row.
    """
    names = param_names(layer)
    cache = _gathered_inputs(layer, tail, inputs)
    gathered = cache["gathered"][:, :, samples]
    routed = (dy * route_total(tail)[:, samples]).flatten(3)  # (S, n_c, C, oh*ow): the field at the maxima
    rows = routed.shape[0]
    weight = (routed.permute(2, 0, 1, 3).reshape(routed.shape[2], rows, -1) @ gathered.flatten(2).transpose(1, 2)
              ).transpose(0, 1)
    bias = routed.sum((1, 3))
    if coupled and tail.bn is not None:
        # Σ_pos (offset + slope x̂) u with x̂ = (z − μ)/σ: moments of u and z u, per row's statistics
        offset, slope = _coupling(tail, sums, samples)  # (S, n_c, C)
        mean, inv_std = tail.saved.mean.unsqueeze(1), tail.saved.inv_std.unsqueeze(1)  # (R, 1, C)
        one, along, z_sums = cache["one"][samples], cache["along"][samples], cache["z_sums"][samples]
        positions = math.prod(tail.saved.input_shape.tolist()[3:])
        slope = slope * inv_std
        weight = weight + torch.einsum("snc,nq->scq", offset - slope * mean, one) + torch.einsum(
            "snc,ncq->scq", slope, along)
        bias = bias + ((offset - slope * mean) * positions + slope * z_sums).sum(1)
    parts = {"weight": weight, "bias": bias}
    return torch.cat([parts[name].reshape(rows, -1) for name in names], 1)
