"""Definition 2 (in-batch gradient norms) through BN's statistics: ∂s/∂θ by one backward pass per statistic
(seeds of the statistics), the means of a layer in one pass for all of them, and the cost model that picks this
strategy or the losses back-propagated together as seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backward import route_total, statistics_tests, unpool, unshape
from .chain import Chain, channel_sums, param_names, xhat_of
from .gradients import (
    chunks,
    descend,
    descent_size,
    layer_backward,
    loss_field,
    statistics_adjoint,
    unfold_channels_last,
    with_bn_gradient,
)


def _statistics_seed(chain: Chain, bn_block: int, seeds: slice, samples: slice,
                     cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics r in ``seeds`` of block ``bn_block``'s BN (r < C: μ_r, else σ_{r−C}) taken through the
    block's layer in closed form: ∂μ_c/∂z = 1/N and ∂σ_c/∂z = x̂/N on output channel c only.

    Returns:
        (rows (S, P_block) of ∂s/∂θ for the block (zero for its own BN parameters), summed over ``samples``;
         the field (S, n_c, ...) at the layer's input, for ``samples``; None for block 0). The rows of every
        statistic are formed on the first call for a part of the samples and kept in ``cache``.
    """
    layer, tail = chain.blocks[bn_block]
    xhat, x = xhat_of(tail)[0, samples], chain.inputs[bn_block][0, samples]  # (n_c, C, ...), (n_c, ...)
    count, channels = float(tail.saved.count[0]), xhat.shape[1]
    means = torch.arange(min(seeds.start, channels), min(seeds.stop, channels), device=x.device)
    stds = torch.arange(max(seeds.start, channels), max(seeds.stop, channels), device=x.device) - channels
    d_mean, d_std = torch.ones_like(xhat[:, :1]) / count, xhat / count  # ∂μ/∂z (n_c, 1, ...), ∂σ/∂z (n_c, C, ...)
    key = (samples.start, samples.stop)
    if cache.get("key") != key:
        if isinstance(layer, nn.Conv2d):
            mean_w = torch.nn.grad.conv2d_weight(x, (1, *layer.weight.shape[1:]), d_mean, layer.stride,
                                                 layer.padding, layer.dilation).flatten(1)
            std_w = torch.nn.grad.conv2d_weight(x, layer.weight.shape, d_std, layer.stride, layer.padding,
                                                layer.dilation).flatten(1)
        else:
            mean_w, std_w = d_mean.flatten(1).T @ x, d_std.flatten(1).T @ x
        weight_rows, bias_rows = [mean_w.expand(channels, -1), std_w], [
            channel_sums(d_mean.unsqueeze(0))[0].sum(0).expand(channels),
            channel_sums(d_std.unsqueeze(0))[0].sum(0)]
        blocks, every = [], torch.arange(channels, device=x.device)
        for kind in range(2):  # statistic r of channel c touches output channel c's weights and bias only
            parts = {"weight": x.new_zeros(channels, channels, weight_rows[kind].shape[1]),
                     "bias": x.new_zeros(channels, channels)}
            parts["weight"][every, every] = weight_rows[kind]
            parts["bias"][every, every] = bias_rows[kind]
            blocks.append(torch.cat([parts[name].flatten(1) for name in param_names(layer)], 1))
        rows = torch.cat(blocks)
        bn_size = len(param_names(tail.bn)) * channels
        cache.clear()
        cache.update(key=key, rows=torch.cat([rows, rows.new_zeros(len(rows), bn_size)], 1))
    if bn_block == 0:  # nothing below the lowest block: no field to descend with
        return cache["rows"][seeds], None
    return cache["rows"][seeds], _statistics_seed_field(layer, x, d_mean, d_std, means, stds, cache)


def _statistics_seed_field(layer: nn.Module, x: torch.Tensor, d_mean: torch.Tensor, d_std: torch.Tensor,
                           means: torch.Tensor, stds: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    """Seeds ∂μ_c/∂z, ∂σ_c/∂z (channel c only) back through the layer: (len(means) + len(stds), n_c, ...).
    ``cache`` keeps the unfolded seeds of every channel between calls on the same samples."""
    n, weight = len(x), layer.weight
    if isinstance(layer, nn.Linear):
        mean_field = (weight[means] * d_mean[0, 0]).unsqueeze(1).expand(-1, n, -1)
        std_field = d_std[:, stds].T.unsqueeze(-1) * weight[stds].unsqueeze(1)
        return torch.cat([mean_field, std_field])
    fields = []
    for kind, (chosen, seed) in enumerate(((means, d_mean[:1]), (stds, d_std))):
        k = len(chosen)
        if k == 0:
            continue
        if layer.stride == (1, 1) and layer.dilation == (1, 1) and all(
                2 * p <= size - 1 for p, size in zip(layer.padding, weight.shape[2:], strict=True)):
            # stride 1: the transposed convolution is a convolution with the flipped kernel and padding
            # k − 1 − p; per seed one input channel, so its unfolded patches times that channel's kernel
            kh, kw = weight.shape[2:]
            cache = {} if cache is None else cache
            if ("patches", kind) not in cache:  # (channels, m L, kh kw): every channel's seed unfolded once
                unfolded = F.unfold(seed, (kh, kw), padding=(kh - 1 - layer.padding[0], kw - 1 - layer.padding[1]))
                cache["patches", kind] = unfolded.view(len(seed), seed.shape[1], kh * kw, -1).permute(
                    1, 0, 3, 2).flatten(1, 2).contiguous()
            patches = cache["patches", kind]
            patches = patches.expand(k, *patches.shape[1:]) if len(patches) == 1 else patches[chosen]
            seed = seed[:1, :1] if kind == 0 else seed
            kernels = weight[chosen].flip(-2, -1).flatten(2).transpose(1, 2)  # (k, kh kw, C_in)
            grad_field = torch.bmm(patches, kernels).view(k, len(seed), *x.shape[2:], x.shape[1]).permute(0, 1, 4, 2, 3)
            fields.append(grad_field.expand(k, n, *x.shape[1:]))
            continue
        # one output channel per seed: a transposed convolution with groups = seeds
        seed = seed.expand(-1, k, *seed.shape[2:]) if seed.shape[1] == 1 and len(seed) == 1 else seed[:, chosen]
        extra = [x.shape[2 + i] - ((seed.shape[2 + i] - 1) * layer.stride[i] - 2 * layer.padding[i]
                                   + layer.dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in range(2)]
        grouped = F.conv_transpose2d(seed, weight[chosen], None, layer.stride, layer.padding, extra, k,
                                     layer.dilation)
        fields.append(grouped.view(len(seed), k, *x.shape[1:]).transpose(0, 1).expand(k, n, *x.shape[1:]))
    return fields[0] if len(fields) == 1 else torch.cat(fields)


def _mean_shortcut_applies(chain: Chain, bn: int) -> bool:
    """Whether the means of block ``bn``'s BN can take :func:`_mean_statistics_rows`: the block below it is a
    convolution whose tail max-pools (without averaging) over a forward pass shared by every seed."""
    if bn < 1:
        return False
    layer, tail = chain.blocks[bn - 1]
    return (isinstance(layer, nn.Conv2d) and tail.pool is not None and not tail.average and tail.saved.index is not None
            and tail.saved.index.shape[0] == 1)


def _phase_positions(index: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """aten's flat H*W index of each window's maximum (.., oh, ow) -> its offset r * width + c in the window."""
    out_h, out_w = index.shape[-2:]
    corner = (torch.arange(out_h, device=index.device) * (k * width)).unsqueeze(1) + torch.arange(
        out_w, device=index.device) * k
    return index - corner


def _mean_statistics_rows(chain: Chain, bn: int, grad_field: torch.Tensor, max_elements: int) -> tuple[
        dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """∂μ_c/∂θ for the blocks below BN block ``bn``, for every channel c at once. The field of μ_c at the
    block's input is the same for every sample (``field`` (C, ...): the layer's transposed kernel applied to
    1/N), so the gradient of the block just below, Σ_j Σ_pos field · route_j · u_j, is field · R with
    R = Σ_j route_j u_j at the maxima: the block's routed input summed over the samples once (per window
    position p, from the samples whose maximum sits at p), instead of one convolution-sized product per
    statistic. The blocks further down take the usual descent.

    Returns ({block: rows (C, P_b)}, {BN block: sums (C, 2C_b)}) as the per-statistic descent would.
    """
    below = bn - 1
    conv, tail = chain.blocks[below]
    n = tail.saved.index.shape[1]
    dy = unshape(tail, grad_field.unsqueeze(1))[:, 0]  # (C, C1, oh, ow) at the pooled output of the block below
    statistics, channels = dy.shape[:2]
    flat = dy.flatten(2)  # (C, C1, X)
    route = route_total(tail)[0].flatten(2)  # (n, C1, X)
    rows: dict[int, torch.Tensor] = {}
    sums: dict[int, torch.Tensor] = {}
    values, names = {}, param_names(conv)
    if "weight" in names:
        k, (height, width) = tail.pool, tail.saved.input_shape.tolist()[-2:]
        out_h, out_w = tail.saved.index.shape[-2:]
        unfolded = unfold_channels_last(conv, chain.inputs[below][0], (height, width)).view(n, height, width, -1)
        offset = _phase_positions(tail.saved.index[0], k, width).flatten(2)  # (n, C1, X)
        total = None
        for r in range(k):
            for c in range(k):
                at = torch.where(offset == r * width + c, route, 0.0)  # (n, C1, X)
                inputs = unfolded[:, r:r + k * out_h:k, c:c + k * out_w:k].reshape(n, out_h * out_w, -1)
                term = torch.bmm(at.permute(2, 1, 0), inputs.transpose(0, 1))  # (X, C1, kh kw C_in)
                total = term if total is None else total.add_(term)
        weight = torch.bmm(flat.transpose(0, 1), total.transpose(0, 1)).transpose(0, 1)  # (C, C1, kh kw C_in)
        weight = weight.view(statistics, channels, *conv.weight.shape[2:], conv.weight.shape[1])
        values["weight"] = weight.permute(0, 1, 4, 2, 3).reshape(statistics, -1)
    if "bias" in names:
        values["bias"] = torch.einsum("scx,cx->sc", flat, route.sum(0))
    value = torch.cat([values[name] for name in names], 1) if names else flat.new_zeros(statistics, 0)
    if tail.bn is not None:
        ones, along = (t[0] if torch.is_tensor(t) else t for t in statistics_tests(tail))
        summed = [(t.sum(0) if torch.is_tensor(t) else n * t) for t in (ones, along)]
        sums[below] = torch.cat([channel_sums(dy.unsqueeze(0) * summed[0])[0],
                                 channel_sums(dy.unsqueeze(0) * summed[1])[0]], -1)
    rows[below] = with_bn_gradient(tail, value, sums[below].unsqueeze(1) if tail.bn is not None else None, "rows")
    if below == 0:
        return rows, sums
    size = max(descent_size(chain, below - 1), math.prod(tail.saved.input_shape.tolist()[2:]))
    for part in chunks(statistics, max(1, max_elements // (n * size))):
        dz = unpool(tail, dy[part].unsqueeze(1) * route_total(tail), slice(None))  # (S, n, C1, H, W)
        lower = layer_backward(conv, chain.inputs[below], dz)
        for b, value, block_sums in descend(chain, lower, below - 1, False):
            rows.setdefault(b, value.new_zeros(statistics, value.shape[1]))[part] += value
            if block_sums is not None:
                sums.setdefault(b, block_sums.new_zeros(statistics, block_sums.shape[-1]))[part] += block_sums.sum(1)
    return rows, sums


def in_batch_by_statistics(chain: Chain, logits: torch.Tensor, y: torch.Tensor, max_elements: int) -> torch.Tensor:
    """Definition 2 through the statistics: ∇ℓ_i = own_i + Σ_l λ_{i,l} ∂s_l/∂θ (see the module docstring)."""
    n, top, bn_blocks = len(y), len(chain.blocks) - 1, chain.bn_blocks
    seed = loss_field(logits, y)  # (1, n, classes)
    own: dict[int, list[torch.Tensor]] = {b: [] for b in range(top + 1)}  # per-sample, statistics fixed
    direct: dict[int, list[torch.Tensor]] = {b: [] for b in bn_blocks}  # ∂ℓ_i/∂(μ, σ), all else fixed
    for part in chunks(n, max_elements // max(chain.sizes)):
        for b, value, sums in descend(chain, seed[:, part], top, False, part, kind="samples"):
            own[b].append(value)
            if sums is not None:
                direct[b].append(statistics_adjoint(chain.blocks[b][1], sums[0]))
    own_rows = {b: torch.cat(v) for b, v in own.items()}
    rows: dict[int, dict[int, torch.Tensor]] = {}  # BN block -> {block: (2C, P_b)}: ∂s/∂θ, other statistics fixed
    coupling: dict[int, dict[int, torch.Tensor]] = {}  # BN block -> {lower BN block: (2C, 2C')}: ∂s/∂s'
    for bn in bn_blocks:
        statistics = 2 * chain.blocks[bn][1].saved.scale.shape[-1]
        size = max(descent_size(chain, bn - 1), math.prod(chain.inputs[bn].shape[2:]))
        parts = chunks(n, max_elements // size)
        closed_form: dict = {}
        rows[bn] = {b: own_rows[b].new_zeros(statistics, own_rows[b].shape[1]) for b in range(bn + 1)}
        coupling[bn] = {b: rows[bn][b].new_zeros(statistics, len(direct[b][0][0])) for b in bn_blocks if b < bn}
        remaining = range(statistics)
        if _mean_shortcut_applies(chain, bn):  # the means: one pass for all of them
            channels = statistics // 2
            first, grad_field = _statistics_seed(chain, bn, slice(0, channels), parts[0], closed_form)
            if len(parts) > 1:  # the closed-form rows sum over every part
                first = sum((_statistics_seed(chain, bn, slice(0, channels), part, closed_form)[0]
                             for part in parts[1:]), first)
            rows[bn][bn][:channels] += first
            shortcut_rows, shortcut_sums = _mean_statistics_rows(chain, bn, grad_field[:, 0], max_elements)
            for b, value in shortcut_rows.items():
                rows[bn][b][:channels] += value
            for b, value in shortcut_sums.items():
                coupling[bn][b][:channels] += statistics_adjoint(chain.blocks[b][1], value)
            remaining = range(channels, statistics)
        for seeds in chunks(len(remaining), max_elements // (size * (parts[0].stop - parts[0].start))):
            seeds = slice(remaining.start + seeds.start, remaining.start + seeds.stop)
            for part in parts:
                first, grad_field = _statistics_seed(chain, bn, seeds, part, closed_form)
                rows[bn][bn][seeds] += first
                if bn == 0:
                    continue
                for b, value, sums in descend(chain, grad_field, bn - 1, False, part):
                    rows[bn][b][seeds] += value
                    if sums is not None:
                        coupling[bn][b][seeds] += statistics_adjoint(chain.blocks[b][1], sums.sum(1))
    adjoint: dict[int, torch.Tensor] = {}  # BN block -> (n, 2C): total adjoint λ of its statistics
    for bn in reversed(bn_blocks):
        adjoint[bn] = torch.cat(direct[bn]) + sum((adjoint[up] @ coupling[up][bn] for up in bn_blocks if up > bn),
                                                  torch.zeros(()))
    total = torch.zeros(n, dtype=logits.dtype, device=logits.device)
    for b in range(top + 1):
        gradient = own_rows[b] + sum((adjoint[bn] @ rows[bn][b] for bn in bn_blocks if bn >= b), torch.zeros(()))
        total += (gradient ** 2).sum(1)
    return total.sqrt()


def in_batch_by_losses(chain: Chain, logits: torch.Tensor, y: torch.Tensor, indices: Sequence[int],
                       max_elements: int) -> torch.Tensor:
    """Definition 2 by back-propagating the losses ℓ_i, i in ``indices``, together as the seeds of one batched
    backward pass through the batch statistics."""
    seed = loss_field(logits, y)[0]  # (n, classes)
    total = torch.zeros(len(indices), dtype=seed.dtype, device=seed.device)
    for part in chunks(len(indices), max_elements // (len(y) * max(chain.sizes))):
        chosen = torch.as_tensor(list(indices[part]), device=seed.device)
        grad_field = torch.zeros(len(chosen), *seed.shape, dtype=seed.dtype, device=seed.device)
        grad_field[torch.arange(len(chosen)), chosen] = seed[chosen]
        for _, value, _ in descend(chain, grad_field, len(chain.blocks) - 1, True):
            total[part] += (value ** 2).sum(1)
    return total.sqrt()


def statistics_strategy_is_cheaper(chain: Chain, losses: int) -> bool:
    """Compare the multiply-adds of the two batched backward passes of definition 2: one seed per loss through
    every block, against one seed per BN statistic through the blocks below its BN."""
    descent = [_backward_cost(chain, b) for b in range(len(chain.blocks))]
    per_loss = losses * sum(descent)
    structured = sum(2 * chain.blocks[bn][1].saved.scale.shape[-1] * sum(descent[:bn]) for bn in chain.bn_blocks)
    return structured < per_loss


def _backward_cost(chain: Chain, b: int) -> int:
    """Multiply-adds per sample and seed of back-propagating through block b: its layer's weight gradient and,
    above block 0, its input field (each the size of the layer's forward pass); the lowest block's gradient is
    taken after pooling (k² times fewer positions)."""
    layer, tail = chain.blocks[b]
    positions = math.prod(tail.saved.input_shape.tolist()[3:])
    forward = layer.weight.numel() * positions
    if b == 0:
        return forward // (tail.pool ** 2 if tail.saved.index is not None else 1)
    return 2 * forward
