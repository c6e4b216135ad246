"""Per-layer per-sample gradients and the descent of a field down the chain: per-row sums, per-sample
gradients or their squared norms ("ghost norm" for linear layers, Gram matrices where cheaper), and the
per-sample gradient norms of samples that do not interact (eval-mode BN, or no BN).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backward import bn_sums, gathered_fits, pooled_conv_rows, tail_backward, unshape
from .chain import BlockTail, Chain, chain_forward, channel_sums, merge_rows, param_names


def layer_backward(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """Field at the layer's input (S, n, ...) from dz at its output; x (R, n, ...) is the layer's input."""
    if isinstance(layer, nn.Linear):
        return dz @ layer.weight
    # a transposed convolution, the output size pinned by output_padding (torch.nn.grad.conv2d_input passes an
    # expanded dummy input that the CPU backend copies to full size, and is slower on channels-last fields)
    extra = [x.shape[-2 + i] - ((dz.shape[-2 + i] - 1) * layer.stride[i] - 2 * layer.padding[i]
                                + layer.dilation[i] * (layer.weight.shape[2 + i] - 1) + 1) for i in range(2)]
    return F.conv_transpose2d(merge_rows(dz), layer.weight, None, layer.stride, layer.padding, extra, 1,
                              layer.dilation).unflatten(0, dz.shape[:2])


def _layer_rows(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """Gradient of the layer's trainable parameters for each row, summed over its samples: (S, P_layer).

    x (R, n, ...) is the layer's input with R = 1 (shared by the rows) or S; dz (S, n, ...) the field at its
    output. One sample per row (n = 1) gives per-sample gradients.
    """
    rows, names = dz.shape[0], param_names(layer)
    grads: dict[str, torch.Tensor] = {}
    if "weight" in names:
        grads["weight"] = dz.transpose(1, 2) @ x if isinstance(layer, nn.Linear) else _conv_weight_rows(
            layer, x, dz)  # (S, out, in...)
    if "bias" in names:
        grads["bias"] = dz.sum(1) if isinstance(layer, nn.Linear) else channel_sums(dz).sum(1)
    return torch.cat([grads[name].reshape(rows, -1) for name in names], 1)


def _conv_weight_rows(conv: nn.Conv2d, x: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """(S, C_out, C_in, kh, kw) weight gradients of x (R, n, C_in, H, W) and dz (S, n, C_out, oh, ow)."""
    rows, samples, channels = dz.shape[:3]
    shape = conv.weight.shape
    if x.shape[0] == 1:  # input shared by the rows: the rows become output channels of one call
        # the field copied to (n, oh, ow, S, C_out), i.e. (n, S C_out, oh, ow) channels-last like x: the CPU's
        # convolution kernel then runs without converting either operand (faster than one product per row
        # with the unfolded input, and than the kernel on an NCHW copy: benchmarks/README.md)
        inputs = x[0] if x[0].is_contiguous(memory_format=torch.channels_last) else x[0].contiguous(
            memory_format=torch.channels_last)
        grad_field = dz.permute(1, 3, 4, 0, 2).contiguous().view(samples, *dz.shape[3:], rows * channels).permute(
            0, 3, 1, 2)
        return torch.nn.grad.conv2d_weight(inputs, (rows * channels, *shape[1:]), grad_field, conv.stride, conv.padding,
                                           conv.dilation).view(rows, *shape)
    if samples == 1:  # one sample per row
        return _per_sample_conv_weights(conv, x[:, 0], dz[:, 0])
    return torch.stack([torch.nn.grad.conv2d_weight(x[r], shape, dz[r], conv.stride, conv.padding, conv.dilation)
                        for r in range(rows)])


def unfold_channels_last(conv: nn.Conv2d, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The conv's input patches (n, oh * ow, kh * kw * C_in), channels innermost: a strided view of the padded
    input taken channels-last, copied once."""
    n, c_in = x.shape[:2]
    kh, kw = conv.weight.shape[2:]
    (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
    padded = F.pad(x, (pw, pw, ph, ph)).permute(0, 2, 3, 1).contiguous()  # (n, Hp, Wp, C_in)
    sn, sy, sx, sc = padded.stride()
    patches = padded.as_strided((n, *size, kh, kw, c_in), (sn, sy * sh, sx * sw, sy * dh, sx * dw, sc))
    return patches.reshape(n, size[0] * size[1], kh * kw * c_in)


def _per_sample_conv_weights(conv: nn.Conv2d, x: torch.Tensor, dz: torch.Tensor, raw: bool = False,
                             unfolded: torch.Tensor | None = None) -> torch.Tensor:
    """(n, C_out, C_in, kh, kw) per-sample weight gradients from x (n, C_in, H, W) and dz (n, C_out, oh, ow): one
    batched product of dz with the input unfolded channels-last (a strided view of the padded input, copied
    once), which reads the channels-last fields without conversion; measured faster on the CPU than aten's
    unfold (NCHW) or a convolution with one group per sample."""
    n, c_in = x.shape[:2]
    c_out, kh, kw = conv.weight.shape[0], *conv.weight.shape[2:]
    out_h, out_w = dz.shape[-2:]
    unfolded = unfold_channels_last(conv, x, (out_h, out_w)) if unfolded is None else unfolded
    grad_field = dz.permute(0, 2, 3, 1).reshape(n, out_h * out_w, c_out)
    if unfolded.shape[-1] < c_out:  # the orientation with the smaller output dimension last runs faster
        weights = torch.bmm(unfolded.transpose(1, 2), grad_field).transpose(1, 2)
    else:
        weights = torch.bmm(grad_field.transpose(1, 2), unfolded)  # (n, C_out, kh * kw * C_in): returned so if ``raw``
    return weights if raw else weights.reshape(n, c_out, kh, kw, c_in).permute(0, 1, 4, 2, 3)


def _layer_squared_norms(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor, cache: dict | None = None
                         ) -> torch.Tensor:
    """||per-sample gradient||² (n,) of a layer from x (1, n, ...) and dz (1, n, ...), without materializing
    the gradients where that is cheaper ("ghost norm")."""
    names = param_names(layer)
    if isinstance(layer, nn.Linear):  # ||g aᵀ||² = ||g||² ||a||²
        g2 = (dz[0] ** 2).sum(-1)
        return g2 * (x[0] ** 2).sum(-1) * ("weight" in names) + g2 * ("bias" in names)
    kernel, positions = math.prod(layer.weight.shape[1:]), math.prod(dz.shape[3:])
    # Gram matrices over output positions: L²(Q + C) multiply-adds against LCQ, but batched products of small
    # Gram matrices run slower per operation than the per-sample product (benchmarks/README.md)
    if 4 * positions * (kernel + dz.shape[2]) < kernel * dz.shape[2]:
        unfolded = F.unfold(x[0], layer.weight.shape[2:], layer.dilation, layer.padding, layer.stride)
        g = dz[0].flatten(2)  # (n, C_out, L)
        weight = ((g.transpose(1, 2) @ g) * (unfolded.transpose(1, 2) @ unfolded)).sum((1, 2))
        return weight * ("weight" in names) + (g.sum(-1) ** 2).sum(-1) * ("bias" in names)
    total = dz.new_zeros(dz.shape[1])
    if "weight" in names:
        patches = (cache or {}).get("patches")
        known = patches[1] if patches and patches[0] == (x.data_ptr(), tuple(x.shape), x.stride()) else None
        weights = _per_sample_conv_weights(layer, x[0], dz[0], raw=True, unfolded=known)
        total += (weights * weights).sum((1, 2))
    if "bias" in names:
        total += (channel_sums(dz) ** 2)[0].sum(-1)
    return total


def _bn_rows(tail: BlockTail, sums: torch.Tensor | None) -> torch.Tensor | None:
    """BN parameter gradients (..., P_bn) from the sums [Σ d, Σ d x̂] (..., 2C): γ ← Σ d x̂, β ← Σ d."""
    if sums is None:
        return None
    channels = sums.shape[-1] // 2
    parts = {"weight": sums[..., channels:], "bias": sums[..., :channels]}
    names = param_names(tail.bn)
    return torch.cat([parts[name] for name in names], -1) if names else None


def statistics_adjoint(tail: BlockTail, sums: torch.Tensor) -> torch.Tensor:
    """∂/∂(μ, σ) of the loss with everything else fixed, from the sums [Σ d, Σ d x̂] (y = γ x̂ + β with
    x̂ = (z − μ)/σ: ∂y/∂μ = −γ/σ, ∂y/∂σ = −γ x̂/σ)."""
    scale = tail.saved.scale
    return -sums * torch.cat([scale, scale], -1).reshape(*([1] * (sums.ndim - 1)), -1)


# ----------------------------------------------------------------------------- descending the chain

def descend(chain: Chain, grad_field: torch.Tensor, top: int, coupled: bool, samples: slice = slice(None),
             kind: str = "rows", from_layer_output: bool = False) -> Iterator[tuple[int, torch.Tensor,
                                                                                   torch.Tensor | None]]:
    """Back-propagate ``field`` (S, n_c, ...) from the output of block ``top``'s tail (or of its layer) to block 0.

    Yields, block by block from the top: (block, gradient of its trainable parameters, its BN sums
    (S, n_c, 2C) or None). The gradient is, by ``kind``: ``rows`` (S, P_b) summed over the samples of each
    row; ``samples`` (n_c, P_b) per sample of a one-row field; ``norms`` (n_c,) their squared norms.
    """
    for b in range(top, -1, -1):
        layer, tail = chain.blocks[b]
        x = chain.inputs[b][:, samples]
        if from_layer_output and b == top:
            dz, sums = grad_field, None
            value = _layer_value(layer, x, dz, kind, tail.shared.setdefault("patches", {}))
        elif b == 0 and kind == "rows" and gathered_fits(layer, tail):
            # (above block 0 the gathered input, k² times the layer's output, is read once per chunk of rows and
            # costs more memory traffic than the dense product saves: measured)
            dy = unshape(tail, grad_field)
            sums = bn_sums(tail, dy, samples)
            value = pooled_conv_rows(layer, tail, chain.inputs[0], dy, sums, coupled, samples)
        else:
            dz, sums = tail_backward(tail, grad_field, coupled, samples)
            value = _layer_value(layer, x, dz, kind, tail.shared.setdefault("patches", {}))
        yield b, with_bn_gradient(tail, value, sums, kind), sums
        if b > 0:
            grad_field = layer_backward(layer, x, dz)


def _layer_value(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor, kind: str, cache: dict | None = None
                 ) -> torch.Tensor:
    """The layer's part of :func:`descend`'s gradient; ``cache`` holds the forward pass's patches (norms)."""
    if not param_names(layer):
        return dz.new_zeros(dz.shape[1]) if kind == "norms" else dz.new_zeros(
            dz.shape[0] if kind == "rows" else dz.shape[1], 0)
    if kind == "rows":
        return _layer_rows(layer, x, dz)
    if kind == "samples":
        return _layer_rows(layer, x.transpose(0, 1), dz.transpose(0, 1))
    return _layer_squared_norms(layer, x, dz, cache)


def with_bn_gradient(tail: BlockTail, value: torch.Tensor, sums: torch.Tensor | None, kind: str) -> torch.Tensor:
    """Append the tail's BN parameter gradients to the layer's (``rows``, ``samples``) or add their squares."""
    bn = _bn_rows(tail, None if sums is None else (sums.sum(1) if kind == "rows" else sums[0]))
    if bn is None:
        return value
    return value + (bn ** 2).sum(-1) if kind == "norms" else torch.cat([value, bn], 1)


def loss_field(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """∂(Σ_j w_j ℓ_j)/∂logits for the cross-entropy: softmax − one-hot (K, n, classes)."""
    grad_field = torch.softmax(logits, -1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    return grad_field if weights is None else grad_field * weights.unsqueeze(-1)


def chunks(count: int, size: int) -> list[slice]:
    size = max(1, size)
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def independent_norms(chain: Chain, x: torch.Tensor, y: torch.Tensor, mode: str, max_elements: int) -> torch.Tensor:
    """Per-sample gradient norms (n,) when samples are independent (BN in eval mode, or no BN), chunk by chunk."""
    norms = []
    for part in chunks(len(x), max_elements // max(_largest_activation(chain, x), 1)):
        logits = chain_forward(chain, x[part], mode)
        total = torch.zeros(part.stop - part.start, dtype=logits.dtype, device=logits.device)
        for _, value, _ in descend(chain, loss_field(logits, y[part]), len(chain.blocks) - 1, False, kind="norms"):
            total += value
        norms.append(total.sqrt())
    return torch.cat(norms)


def _largest_activation(chain: Chain, x: torch.Tensor) -> int:
    """Largest per-sample activation size of the chain (one forward pass of two samples)."""
    if not chain.sizes or not any(chain.sizes):
        chain_forward(chain, x[:2], "running")
    return max(chain.sizes)


def descent_size(chain: Chain, top: int) -> int:
    """Largest per-sample size of the fields a descent from block ``top`` to block 0 forms (0 when top < 0): the
    lowest block forms only its pooled output when it pools (its conv's gradient is taken after pooling)."""
    if top < 0:
        return 0
    tail = chain.blocks[0][1]
    lowest = math.prod(tail.saved.pooled.shape[2:]) if tail.saved.index is not None else chain.sizes[0]
    return max([lowest, *chain.sizes[1:top + 1]])
