"""The chain layout and its forward pass.

A supported network is a chain: optional Flatten, then blocks, each a Conv2d or Linear layer followed by a tail
of [BatchNorm][ReLU][MaxPool2d with kernel = stride][AdaptiveAvgPool2d(1)][Flatten] (each optional, in this
order; Identity anywhere). The forward pass here saves, per tail, what the fused backward passes need
(:class:`ForwardState`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .reference import model_state_preserved

_BN = nn.modules.batchnorm._BatchNorm


@dataclass
class ForwardState:
    """What one forward pass of a block's tail saves for the backward passes (None: not formed). Shapes: K rows
    (1 when shared by every row), n samples, C channels; R = 1 or G sets of BN statistics."""

    input_shape: torch.Tensor | None = None  # shape of the tail's input z (K, n, C, ...)
    z: torch.Tensor | None = None  # BN's input
    mean: torch.Tensor | None = None  # BN statistics (R, C)
    inv_std: torch.Tensor | None = None  # 1/σ (R, C)
    scale: torch.Tensor | None = None  # γ/σ (R, C): ∂y/∂z with the statistics fixed
    weights: torch.Tensor | None = None  # (R, n) in {0, 1}: the samples of each set of statistics
    count: torch.Tensor | None = None  # (R,) values per channel of each set
    xhat: torch.Tensor | None = None  # BN's normalized input at full resolution (on demand when pooling)
    mask: torch.Tensor | None = None  # ReLU's 0/1 mask (tails without pooling)
    index: torch.Tensor | None = None  # aten's flat H*W index of each window's maximum (int64)
    pooled: torch.Tensor | None = None  # the pooled output
    tests: Any = None  # (M1, Mx) of :func:`backward.statistics_tests`
    routes: list[torch.Tensor] | None = None  # :func:`backward.routes`
    route_total: torch.Tensor | None = None  # :func:`backward.route_total`
    average_shape: torch.Tensor | None = None  # shape before AdaptiveAvgPool2d(1)
    flatten_shape: torch.Tensor | None = None  # shape before Flatten

    def update(self, **values: Any) -> None:
        """Set several fields at once (names checked)."""
        names = {f.name for f in fields(self)}
        for name, value in values.items():
            if name not in names:
                raise AttributeError(f"ForwardState has no field {name!r}")
            setattr(self, name, value)


# Activations and back-propagated fields carry a leading row axis: (K, n, *features). Rows are seeds
# (cotangents back-propagated together through one forward pass, K = S) or groups (leave-one-out batches
# with their own BN statistics, K = G). Saved tensors have K = 1 (shared by every row, broadcast) or K = G.
# Passes with the BN statistics held fixed treat samples independently and run over chunks of samples so
# that every tensor stays small.

_TAIL_ORDER = ("bn", "relu", "pool", "average", "flatten")


@dataclass
class BlockTail:
    """The modules between two Conv2d/Linear layers, and what their fused backward pass needs."""

    bn: _BN | None = None
    relu: bool = False
    pool: int | None = None  # kernel (= stride) of a non-overlapping MaxPool2d
    average: bool = False  # AdaptiveAvgPool2d(1)
    flatten: bool = False
    saved: ForwardState = field(default_factory=ForwardState)  # this forward pass
    shared: dict[str, torch.Tensor] = field(default_factory=dict)  # reused across passes on the same batch

    def add(self, module: nn.Module) -> bool:
        """Append ``module`` if it fits the tail's pattern; False if it does not."""
        slot = tail_slot(module)
        filled = [name for name in _TAIL_ORDER if getattr(self, name) not in (None, False)]
        if slot is None or (filled and _TAIL_ORDER.index(slot) <= _TAIL_ORDER.index(filled[-1])):
            return False
        value = {"bn": module, "pool": _pair(getattr(module, "kernel_size", 0))[0]}.get(slot, True)
        setattr(self, slot, value)
        return True


def tail_slot(module: nn.Module) -> str | None:
    if isinstance(module, _BN):
        return "bn" if module.track_running_stats and module.running_mean is not None else None
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.MaxPool2d):
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        simple = _pair(module.padding) == (0, 0) and _pair(module.dilation) == (1, 1) and not module.ceil_mode
        return "pool" if simple and kernel == stride and kernel[0] == kernel[1] else None
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "average" if module.output_size in (1, (1, 1)) else None
    if isinstance(module, nn.Flatten):
        return "flatten" if (module.start_dim, module.end_dim) == (1, -1) else None
    return None


def param_names(module: nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters(recurse=False) if p.requires_grad]


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@dataclass
class Chain:
    """A chain network split into blocks (layer, tail), and the tensors of its last forward pass."""

    leading_flatten: bool
    blocks: list[tuple[nn.Module, BlockTail]]
    inputs: list[torch.Tensor] = field(default_factory=list)  # input of each block's layer (K, n, ...)
    sizes: list[int] = field(default_factory=list)  # largest per-sample activation size inside each block

    @property
    def bn_blocks(self) -> list[int]:
        return [b for b, (_, tail) in enumerate(self.blocks) if tail.bn is not None]

    @classmethod
    def parse(cls, modules: list[nn.Module]) -> Chain | None:
        leading, blocks = False, []
        for module in modules:
            if isinstance(module, nn.Identity):
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                                      or isinstance(module.padding, str)):
                    return None
                blocks.append((module, BlockTail()))
            elif not blocks and isinstance(module, nn.Flatten) and not leading and tail_slot(module):
                leading = True
            elif not blocks or not blocks[-1][1].add(module):
                return None
        return cls(leading, blocks) if blocks else None


def chain_modules(model: nn.Module, x: torch.Tensor) -> list[nn.Module] | None:
    """The leaf modules of ``model`` in execution order if its forward pass is a chain (each module's input
    is the previous one's output, every leaf called once), else None."""
    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    if not leaves:
        return None
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda module, args, out: calls.append((module, args[0], out))) for m in leaves]
    probe = x[:2]
    try:
        with model_state_preserved(model), torch.no_grad():
            model.eval()
            output = model(probe)
    finally:
        for hook in hooks:
            hook.remove()
    if [c[0] for c in calls] != leaves or calls[0][1] is not probe or calls[-1][2] is not output:
        return None
    if any(calls[k][1] is not calls[k - 1][2] for k in range(1, len(calls))):
        return None
    return leaves


def merge_rows(t: torch.Tensor) -> torch.Tensor:
    """(K, n, ...) -> (K*n, ...) for functions that want one batch axis."""
    return t.flatten(0, 1)


def channel_sums(t: torch.Tensor) -> torch.Tensor:
    """(K, n, C, *spatial) -> (K, n, C): sum over spatial positions."""
    return t.sum(tuple(range(3, t.ndim))) if t.ndim > 3 else t  # any memory layout (channels-last too)


def per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K, C) or (K, n, C) -> broadcastable against (K', n, C, *spatial)."""
    v = v.unsqueeze(1) if v.ndim == 2 else v
    return v.reshape(*v.shape, *([1] * (like.ndim - 3)))


# ----------------------------------------------------------------------------- forward pass

def chain_forward(chain: Chain, x: torch.Tensor, mode: str, weights: torch.Tensor | None = None, start: int = 0,
             stop: int | None = None, z: torch.Tensor | None = None) -> torch.Tensor:
    """Logits (K, n, classes) of the chain on x (n, ...), saving what the backward passes need.

    Args:
        mode: BN statistics: ``running`` (eval mode), ``batch`` (train mode, statistics of x) or ``groups``
            (train mode, one set per row of ``weights`` (G, n) in {0, 1}, the samples each group holds).
        start, z: resume at block ``start`` whose layer output is z (a fresh pass from x when z is None).
        stop: end before block ``stop`` and return its layer's input (saved as such).
    """
    h = None
    if z is None:
        h = x.unsqueeze(0).flatten(2) if chain.leading_flatten else x.unsqueeze(0)
        chain.inputs, chain.sizes = [None] * len(chain.blocks), [0] * len(chain.blocks)
    stop = len(chain.blocks) if stop is None else stop
    for b in range(start, stop):
        layer, tail = chain.blocks[b]
        if z is None or b > start:
            chain.inputs[b] = h
            z = layer_forward(layer, h, tail.shared.setdefault("patches", {}))
        chain.sizes[b] = max(math.prod(chain.inputs[b].shape[2:]), math.prod(z.shape[2:]))
        h = tail_forward(tail, z, mode, weights)
    if stop < len(chain.blocks):
        chain.inputs[stop] = h
    return h


def layer_forward(layer: nn.Module, h: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(h, layer.weight, layer.bias)
    if h.device.type == "cpu" and math.prod(layer.weight.shape[1:]) <= 16:
        # a few input values per output (e.g. a 3x3 conv of a grey image): one matrix product of the unfolded
        # input is faster than the CPU's convolution kernel here (benchmarks/README.md)
        unfolded = F.unfold(merge_rows(h), layer.weight.shape[2:], layer.dilation, layer.padding, layer.stride)
        if cache is not None and h.shape[0] == 1 and (h.shape[2] == 1 or layer.weight.shape[2:] == (1, 1)):
            # the patches (n, L, Q) in the channels-last order the per-sample gradients use: kept for them
            # (h is kept with them, so its memory cannot be reused by another input while the key stands)
            cache["patches"] = ((h.data_ptr(), tuple(h.shape), h.stride()), unfolded.transpose(1, 2), h)
        # (K*n, L, C_out): the output channels-last, as the CPU's convolution kernels produce and prefer
        out = unfolded.transpose(1, 2) @ layer.weight.flatten(1).T
        out = out if layer.bias is None else out + layer.bias
        size = [(h.shape[-2 + i] + 2 * layer.padding[i] - layer.dilation[i] * (layer.weight.shape[2 + i] - 1) - 1)
                // layer.stride[i] + 1 for i in range(2)]
        return out.unflatten(1, size).permute(0, 3, 1, 2).unflatten(0, h.shape[:2])
    return F.conv2d(merge_rows(h), layer.weight, layer.bias, layer.stride, layer.padding,
                    layer.dilation).unflatten(0, h.shape[:2])


def tail_forward(tail: BlockTail, z: torch.Tensor, mode: str, weights: torch.Tensor | None) -> torch.Tensor:
    tail.saved = ForwardState(input_shape=torch.tensor(z.shape))
    if tail.pool is not None and tail.bn is not None and z.ndim == 5 and not (
            tail.bn.affine and bool((tail.bn.weight == 0).any())):
        return tail_suffix_forward(tail, _pooled_batchnorm_forward(tail, z, mode, weights))
    h = _batchnorm_forward(tail, z, mode, weights) if tail.bn is not None else z
    if tail.relu:
        h = h.relu_() if h is not z else F.relu(h)
        if tail.pool is None:
            tail.saved.mask = h.sign()  # 1 where ReLU passed, 0 else (faster than a comparison and a cast)
    if tail.pool is not None:
        h = _maxpool_forward(tail, h)
    return tail_suffix_forward(tail, h)


def _statistics(tail: BlockTail, z: torch.Tensor, mode: str, weights: torch.Tensor | None) -> tuple[
        torch.Tensor, torch.Tensor]:
    """BN's (mean, 1/σ) (R, C) of z (K, n, C, *spatial): the running ones, the batch's (R = 1) or one set per
    group (R = G, ``weights`` (G, n) in {0, 1}). Per-sample moments about the batch mean are taken once per z
    (cached in ``tail.shared`` when z is shared by the groups) and combined per group by a matrix product."""
    bn, channels = tail.bn, z.shape[2]
    if mode == "running":
        return bn.running_mean.view(1, channels), torch.rsqrt(bn.running_var + bn.eps).view(1, channels)
    weights = torch.ones(1, z.shape[1], dtype=z.dtype, device=z.device) if weights is None else weights
    positions = math.prod(z.shape[3:])
    count = weights.sum(1) * positions  # (G,) values per channel
    moments = tail.shared.get("moments")
    if moments is None or moments[0] is not z:
        sums = channel_sums(z)  # (K, n, C)
        shift = sums.sum(1) / (z.shape[1] * positions)  # (K, C) batch mean: a stable origin for the squares
        first = sums - positions * shift.unsqueeze(1)  # Σ_pos (z − shift)
        centered = z - per_channel(shift, z)
        second = channel_sums(centered.square_()) if z.ndim > 3 else centered * centered
        moments = (z, shift, first, second)  # (K, n, C) each
        if z.shape[0] == 1:
            tail.shared["moments"] = moments
    _, shift, first, second = moments
    if z.shape[0] == 1:
        delta, square = weights @ first[0] / count[:, None], weights @ second[0] / count[:, None]
    else:
        delta = torch.einsum("gn,gnc->gc", weights, first) / count[:, None]
        square = torch.einsum("gn,gnc->gc", weights, second) / count[:, None]
    tail.saved.update(weights=weights, count=count)
    return shift + delta, torch.rsqrt((square - delta * delta).clamp_min(0) + bn.eps)


def _pooled_batchnorm_forward(tail: BlockTail, z: torch.Tensor, mode: str,
                              weights: torch.Tensor | None) -> torch.Tensor:
    """BN, [ReLU] and max-pooling of z (K, n, C, H, W) without forming BN's output at full resolution.

    BN is the per-channel map a z + b with a = γ/σ, monotone, so pooling commutes with it: pool(relu(a z + b))
    = relu(a ext(z) + b) with ext the window's max of z where a > 0 and its min where a < 0, taken at the same
    position (ties too: the first in row-major order; where ReLU zeroes a whole window the position does not
    matter, its gradient is zero). z is pooled once, whatever the number of groups (cached in ``tail.shared``
    when the groups share it). Saves z, the statistics, the positions of the maxima and the tests of
    :func:`statistics_tests`; BN's normalized x̂ at full resolution only on demand (:func:`xhat_of`).
    """
    bn, channels = tail.bn, z.shape[2]
    mean, inv_std = _statistics(tail, z, mode, weights)
    gamma = bn.weight.view(1, channels) if bn.affine else torch.ones_like(inv_std[:1])
    pooled = tail.shared.get("pooled")
    if pooled is None or pooled[0] is not z:
        rising = gamma[0] > 0
        if bool(rising.all()):
            extreme = _maxpool_forward(tail, z)
        else:
            sign = per_channel(torch.where(rising, 1.0, -1.0).to(z.dtype).unsqueeze(0), z)
            extreme = _maxpool_forward(tail, z * sign) * sign
        pooled = (z, extreme, tail.saved.index)
        if z.shape[0] == 1:
            tail.shared["pooled"] = pooled
    _, extreme, index = pooled
    scale = gamma * inv_std  # (R, C)
    shift = (bn.bias.view(1, channels) if bn.affine else 0.0) - mean * scale
    out = torch.addcmul(per_channel(shift, extreme), extreme, per_channel(scale, extreme))  # BN at the maxima
    xhat_at = torch.addcmul(per_channel(-mean * inv_std, extreme), extreme, per_channel(inv_std, extreme))
    if tail.relu:
        out = out.relu_()
        keep = out.sign()
    else:
        keep = torch.ones_like(out)
    tail.saved.update(z=z, mean=mean, inv_std=inv_std, scale=scale, index=index, pooled=out,
                     tests=(keep, keep * xhat_at))
    return out


def xhat_of(tail: BlockTail) -> torch.Tensor:
    """BN's normalized input x̂ = (z − μ)/σ at full resolution (K', n, C, ...), computed on first use."""
    if tail.saved.xhat is None:
        z = tail.saved.z
        tail.saved.xhat = (z - per_channel(tail.saved.mean, z)) * per_channel(tail.saved.inv_std, z)
    return tail.saved.xhat


def tail_suffix_forward(tail: BlockTail, h: torch.Tensor) -> torch.Tensor:
    if tail.average:
        tail.saved.average_shape = torch.tensor(h.shape)
        h = h.mean((-2, -1), keepdim=True)
    if tail.flatten:
        tail.saved.flatten_shape = torch.tensor(h.shape)
        h = h.flatten(2)
    return h


def _batchnorm_forward(tail: BlockTail, z: torch.Tensor, mode: str, weights: torch.Tensor | None) -> torch.Tensor:
    """BN of z (K, n, C, *spatial); saves x̂ and the scale γ/σ (R, C) (∂y/∂z with statistics fixed)."""
    bn, channels = tail.bn, z.shape[2]
    mean, inv_std = _statistics(tail, z, mode, weights)
    xhat = torch.addcmul(per_channel(-mean * inv_std, z), z, per_channel(inv_std, z))
    gamma = bn.weight.view(1, channels) if bn.affine else torch.ones_like(inv_std[:1])
    tail.saved.update(xhat=xhat, scale=gamma * inv_std, z=z, mean=mean, inv_std=inv_std)
    if not bn.affine:
        return xhat.clone()
    return torch.addcmul(per_channel(bn.bias.view(1, channels), xhat), xhat, per_channel(gamma, xhat))


def _maxpool_forward(tail: BlockTail, h: torch.Tensor) -> torch.Tensor:
    """Max over k x k windows of h (K, n, C, H, W); saves the position of each window's first maximum in
    row-major order as aten's flat index into H x W (``index``, int64). aten's kernel on a channels-last
    tensor is an order of magnitude faster on the CPU than on NCHW, so the field is pooled channels-last."""
    k, rows = tail.pool, merge_rows(h)
    if not rows.is_contiguous(memory_format=torch.channels_last):
        rows = rows.contiguous(memory_format=torch.channels_last)
    best, index = F.max_pool2d(rows, k, k, 0, 1, False, True)
    best, index = best.unflatten(0, h.shape[:2]), index.unflatten(0, h.shape[:2])
    tail.saved.update(index=index, pooled=best)
    return best
