"""Per-sample influence through gradient norms, with three definitions that stay exact under BatchNorm.

With BatchNorm (BN) in training mode a sample's loss depends on every sample of its batch through the
batch's per-channel mean and variance, so "the gradient of sample i" is not one thing. We compute three
named quantities, ℓ = cross-entropy, θ = every trainable parameter, B = the batch (x, y) of m samples:

    eval_mode_grad_norms       ||∇_θ ℓ(x_i, y_i; θ)||          BN uses its running statistics (eval mode):
                                                               samples are independent, the textbook norm.
    in_batch_grad_norms        ||∇_θ ℓ_i(θ; μ_B, σ_B)||        train mode, sample i's loss computed through
                                                               the statistics of the whole batch, the
                                                               gradient flowing through μ_B and σ_B too.
    counterfactual_influence   ||g(B) − g(B∖{i})||             g(S) = Σ_{j∈S} ∇_θ ℓ_j(θ; stats(S)), sum-
                                                               reduced: how much the step on B changes
                                                               because i was in it (its effect on every
                                                               other sample through the statistics included).

Without BN (and without dropout) all three equal the per-sample gradient norm. Running statistics and the
model's train/eval flag are never changed by these functions.

Each has a ``*_reference`` twin that is obviously right (loops of single autograd passes, or two full
batch gradients per sample). The fast paths are exact too and need the network to be a chain of blocks,
each a Conv2d or Linear followed by [BatchNorm][ReLU][MaxPool2d, kernel = stride][AdaptiveAvgPool2d(1)]
[Flatten] (``models.MLP``, ``SmallCNN`` and ``VGG``); other networks (the ResNet) use the reference.
They work without autograd, on fields with a leading row axis (several cotangents or several
leave-one-out batches back-propagated at once), and use the problem's structure:

    eval mode       one forward and one backward pass, chunk by chunk of samples; per-layer per-sample
                    gradient norms from one batched product per layer (for a linear layer the "ghost norm"
                    ||g_i a_iᵀ||² = ||g_i||² ||a_i||²; Gram matrices where they are 4x cheaper).
    in batch        ∇ℓ_i = ∂ℓ_i/∂θ|_stats + Σ_l λ_{i,l}ᵀ ∂s_l/∂θ: the samples are coupled only through the
                    statistics s_l = (μ_l, σ_l) of each BN layer (2 C_l numbers). One backward pass with
                    the statistics held fixed gives every per-sample term; one backward pass per statistic
                    (Σ_l 2 C_l of them, whatever m) gives ∂s/∂θ, the first layer of each in closed form, and
                    the means of a layer, whose seed is the same for every sample, take one pass for all of
                    them through the block below (:func:`_mean_statistics_rows`); λ_i, the total adjoint of
                    the statistics for loss i, is a small triangular recursion. When that costs more
                    multiply-adds than back-propagating the losses asked for together as seeds through the
                    coupled BN backward pass, the latter is used instead (:func:`_structured_is_cheaper`).
    counterfactual  the leave-one-out batches are groups of one batched pass with one set of statistics
                    each; the blocks before the first BN are computed once, and the first BN block's input
                    is pooled once for every group.

BN is a monotone map per channel, so max-pooling commutes with it: a block conv → BN → [ReLU] → max-pool
pools z (by max, or min where γ < 0) and normalizes the pooled values only (:func:`_pooled_batchnorm_forward`);
aten's pooling runs channels-last, and its indices route the backward pass by one scatter (plus BN's
coupling, a dense term with two coefficients per channel). The gradient of the lowest conv layer is taken
after its max-pooling (its input gathered at each window's maximum) rather than at full resolution. Large
temporaries are kept in glibc's heap rather than paged in afresh (:func:`tune_allocator`).
``benchmarks/influence.py`` times each definition against its reference.

The last section holds the chapter's experiment: fixed probe batches measured along a training run
(:func:`track_influence`), outlier/inlier ratios, matched fit and the final comparison.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_lib
from . import models, results, stats, train

Method = Literal["auto", "fast", "reference"]
METHODS = ("auto", "fast", "reference")
_BN = nn.modules.batchnorm._BatchNorm
# Upper bound on the elements of one seed/group-batched activation tensor (float32: 4 bytes each).
DEFAULT_MAX_ELEMENTS = 2 ** 22


# ----------------------------------------------------------------------------- shared helpers

# glibc's heap keeps the batched passes' temporaries (see train.tune_allocator); the fast paths call it
tune_allocator = train.tune_allocator


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def _model_state_preserved(model: nn.Module) -> Iterator[None]:
    """Restore the train/eval flag and every buffer (running statistics) on exit."""
    training = model.training
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        yield
    finally:
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
        model.train(training)


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, minimum: int = 1) -> None:
    if method not in METHODS:
        raise ValueError(f"Parameter 'method' got {method!r}; allowed values: {', '.join(map(repr, METHODS))}.")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"Parameters 'x' and 'y' must be a batch (m, ...) and labels (m,); got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if len(x) < minimum:
        raise ValueError(f"Parameter 'x' holds {len(x)} example(s); this definition needs at least {minimum} "
                         "(the batch without sample i must not be empty).")
    if not _trainable(model):
        raise ValueError("Parameter 'model' has no trainable parameters: there is no gradient to measure.")


def _flat(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def _batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Flat gradient of the sum-reduced cross-entropy of (x, y) in the model's current mode."""
    loss = F.cross_entropy(model(x), y, reduction="sum")
    return _flat(torch.autograd.grad(loss, _trainable(model), allow_unused=True, materialize_grads=True))


# ----------------------------------------------------------------------------- references (slow, obvious)

def eval_mode_grad_norms_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Definition 1 by a loop of m single-example backward passes in eval mode. Returns (m,)."""
    with _model_state_preserved(model):
        model.eval()
        return torch.stack([_batch_gradient(model, x[i:i + 1], y[i:i + 1]).norm() for i in range(len(x))])


def in_batch_grad_norms_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Definition 2 by m backward passes of ℓ_i through one train-mode forward of the whole batch. Returns (m,)."""
    with _model_state_preserved(model):
        model.train()
        losses = F.cross_entropy(model(x), y, reduction="none")
        params = _trainable(model)
        return torch.stack([
            _flat(torch.autograd.grad(losses[i], params, retain_graph=i < len(x) - 1, allow_unused=True,
                                      materialize_grads=True)).norm()
            for i in range(len(x))])


def ghost_virtual_batches(model: nn.Module, m: int) -> list[torch.Tensor] | None:
    """The virtual batches (index tensors) into which ``model``'s ghost BN layers split a batch of m samples in
    training mode, as ``models.GhostBatchNorm`` does (``tests/test_influence.py`` checks the two agree); None when
    the model has no ghost BN layer. A model mixing ghost BN with whole-batch BN has no single split: error."""
    if not any(isinstance(module, models.GhostBatchNorm) for module in model.modules()):
        return None
    if any(isinstance(module, _BN) for module in model.modules()):
        raise ValueError("Parameter 'model' mixes GhostBatchNorm with BatchNorm layers: the counterfactual batch "
                         "without sample i has no single split into virtual batches; use one kind of BN.")
    return list(torch.tensor_split(torch.arange(m), max(1, m // models.GHOST_BATCH_SIZE)))


def counterfactual_influence_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                                       indices: Sequence[int] | None = None) -> torch.Tensor:
    """Definition 3 by two full train-mode batch gradients per sample: on B and on B without i.

    Every pass starts from the model's buffers as given: a BN variant that updates its running statistics in a
    train-mode pass and normalizes with them (``running``) must not see the passes before it. Under ghost BN
    the batch without i keeps B's virtual batches, i dropped from its own: the samples of the other virtual
    batches do not change, so g(B) − g(B∖{i}) = g(C) − g(C∖{i}) with C the virtual batch holding i (each one
    is passed alone, which the model does not split further: its size is below 2 x ``GHOST_BATCH_SIZE``).

    Returns (m,), or (len(indices),) for the samples in ``indices``.
    """
    with _model_state_preserved(model):
        model.train()
        start = {name: buffer.clone() for name, buffer in model.named_buffers()}

        def gradient(keep: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(start[name])
            return _batch_gradient(model, x[keep], y[keep])

        chosen = range(len(x)) if indices is None else indices
        virtual = ghost_virtual_batches(model, len(x))
        if virtual is None:
            every = torch.arange(len(x), device=x.device)
            full = gradient(every)
            return torch.stack([(full - gradient(every[every != i])).norm() for i in chosen])
        own = {int(i): part.to(x.device) for part in virtual for i in part}
        whole: dict[int, torch.Tensor] = {}  # g(C) per virtual batch, keyed by its first sample
        for i in map(int, chosen):
            part = own[i]
            if int(part[0]) not in whole:
                whole[int(part[0])] = gradient(part)
        return torch.stack([(whole[int(own[i][0])] - gradient(own[i][own[i] != i])).norm() for i in map(int, chosen)])


# ----------------------------------------------------------------------------- the chain engine
#
# A supported network is a chain: optional Flatten, then blocks, each a Conv2d or Linear followed by a run
# of [BatchNorm][ReLU][MaxPool2d with kernel = stride][AdaptiveAvgPool2d(1)][Flatten] (each optional, in
# this order; Identity anywhere). A run's backward pass is fused (one routed multiply through ReLU and
# pooling, BN's coupling added as one dense rank-2-per-channel term), and its BN parameter gradients come
# from two sums per channel taken after pooling.
#
# Activations and back-propagated fields carry a leading row axis: (K, n, *features). Rows are seeds
# (cotangents back-propagated together through one forward pass, K = S) or groups (leave-one-out batches
# with their own BN statistics, K = G). Saved tensors have K = 1 (shared by every row, broadcast) or K = G.
# Passes with the BN statistics held fixed treat samples independently and run over chunks of samples so
# that every tensor stays small.

_RUN_ORDER = ("bn", "relu", "pool", "average", "flatten")


@dataclass
class _Run:
    """The modules between two Conv2d/Linear layers, and what their fused backward pass needs."""

    bn: _BN | None = None
    relu: bool = False
    pool: int | None = None  # kernel (= stride) of a non-overlapping MaxPool2d
    average: bool = False  # AdaptiveAvgPool2d(1)
    flatten: bool = False
    saved: dict[str, torch.Tensor] = field(default_factory=dict)  # this forward pass
    shared: dict[str, torch.Tensor] = field(default_factory=dict)  # reused across passes on the same batch

    def add(self, module: nn.Module) -> bool:
        """Append ``module`` if it fits the run's pattern; False if it does not."""
        slot = _run_slot(module)
        filled = [name for name in _RUN_ORDER if getattr(self, name) not in (None, False)]
        if slot is None or (filled and _RUN_ORDER.index(slot) <= _RUN_ORDER.index(filled[-1])):
            return False
        value = {"bn": module, "pool": _pair(getattr(module, "kernel_size", 0))[0]}.get(slot, True)
        setattr(self, slot, value)
        return True


def _run_slot(module: nn.Module) -> str | None:
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


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


@dataclass
class _Chain:
    """A chain network split into blocks (layer, run), and the tensors of its last forward pass."""

    leading_flatten: bool
    blocks: list[tuple[nn.Module, _Run]]
    inputs: list[torch.Tensor] = field(default_factory=list)  # input of each block's layer (K, n, ...)
    sizes: list[int] = field(default_factory=list)  # largest per-sample activation size inside each block

    @property
    def bn_blocks(self) -> list[int]:
        return [b for b, (_, run) in enumerate(self.blocks) if run.bn is not None]

    @classmethod
    def parse(cls, modules: list[nn.Module]) -> _Chain | None:
        leading, blocks = False, []
        for module in modules:
            if isinstance(module, nn.Identity):
                continue
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"
                                                      or isinstance(module.padding, str)):
                    return None
                blocks.append((module, _Run()))
            elif not blocks and isinstance(module, nn.Flatten) and not leading and _run_slot(module):
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
        with _model_state_preserved(model), torch.no_grad():
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


def _rows(t: torch.Tensor) -> torch.Tensor:
    """(K, n, ...) -> (K*n, ...) for functions that want one batch axis."""
    return t.flatten(0, 1)


def _channel_sums(t: torch.Tensor) -> torch.Tensor:
    """(K, n, C, *spatial) -> (K, n, C): sum over spatial positions."""
    return t.sum(tuple(range(3, t.ndim))) if t.ndim > 3 else t  # any memory layout (channels-last too)


def _per_channel(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(K, C) or (K, n, C) -> broadcastable against (K', n, C, *spatial)."""
    v = v.unsqueeze(1) if v.ndim == 2 else v
    return v.reshape(*v.shape, *([1] * (like.ndim - 3)))


# ----------------------------------------------------------------------------- forward pass

def _forward(chain: _Chain, x: torch.Tensor, mode: str, weights: torch.Tensor | None = None, start: int = 0,
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
        layer, run = chain.blocks[b]
        if z is None or b > start:
            chain.inputs[b] = h
            z = _layer_forward(layer, h, run.shared.setdefault("patches", {}))
        chain.sizes[b] = max(math.prod(chain.inputs[b].shape[2:]), math.prod(z.shape[2:]))
        h = _run_forward(run, z, mode, weights)
    if stop < len(chain.blocks):
        chain.inputs[stop] = h
    return h


def _layer_forward(layer: nn.Module, h: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
    if isinstance(layer, nn.Linear):
        return F.linear(h, layer.weight, layer.bias)
    if h.device.type == "cpu" and math.prod(layer.weight.shape[1:]) <= 16:
        # a few input values per output (e.g. a 3x3 conv of a grey image): one matrix product of the unfolded
        # input is several times faster than the CPU's convolution kernel here
        unfolded = F.unfold(_rows(h), layer.weight.shape[2:], layer.dilation, layer.padding, layer.stride)
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
    return F.conv2d(_rows(h), layer.weight, layer.bias, layer.stride, layer.padding,
                    layer.dilation).unflatten(0, h.shape[:2])


def _run_forward(run: _Run, z: torch.Tensor, mode: str, weights: torch.Tensor | None) -> torch.Tensor:
    run.saved = {"input_shape": torch.tensor(z.shape)}
    if run.pool is not None and run.bn is not None and z.ndim == 5 and not (
            run.bn.affine and bool((run.bn.weight == 0).any())):
        return _run_suffix_forward(run, _pooled_batchnorm_forward(run, z, mode, weights))
    h = _batchnorm_forward(run, z, mode, weights) if run.bn is not None else z
    if run.relu:
        h = h.relu_() if h is not z else F.relu(h)
        if run.pool is None:
            run.saved["mask"] = h.sign()  # 1 where ReLU passed, 0 else (faster than a comparison and a cast)
    if run.pool is not None:
        h = _maxpool_forward(run, h)
    return _run_suffix_forward(run, h)


def _statistics(run: _Run, z: torch.Tensor, mode: str, weights: torch.Tensor | None) -> tuple[
        torch.Tensor, torch.Tensor]:
    """BN's (mean, 1/σ) (R, C) of z (K, n, C, *spatial): the running ones, the batch's (R = 1) or one set per
    group (R = G, ``weights`` (G, n) in {0, 1}). Per-sample moments about the batch mean are taken once per z
    (cached in ``run.shared`` when z is shared by the groups) and combined per group by a matrix product."""
    bn, channels = run.bn, z.shape[2]
    if mode == "running":
        return bn.running_mean.view(1, channels), torch.rsqrt(bn.running_var + bn.eps).view(1, channels)
    weights = torch.ones(1, z.shape[1], dtype=z.dtype, device=z.device) if weights is None else weights
    positions = math.prod(z.shape[3:])
    count = weights.sum(1) * positions  # (G,) values per channel
    moments = run.shared.get("moments")
    if moments is None or moments[0] is not z:
        sums = _channel_sums(z)  # (K, n, C)
        shift = sums.sum(1) / (z.shape[1] * positions)  # (K, C) batch mean: a stable origin for the squares
        first = sums - positions * shift.unsqueeze(1)  # Σ_pos (z − shift)
        centered = z - _per_channel(shift, z)
        second = _channel_sums(centered.square_()) if z.ndim > 3 else centered * centered
        moments = (z, shift, first, second)  # (K, n, C) each
        if z.shape[0] == 1:
            run.shared["moments"] = moments
    _, shift, first, second = moments
    if z.shape[0] == 1:
        delta, square = weights @ first[0] / count[:, None], weights @ second[0] / count[:, None]
    else:
        delta = torch.einsum("gn,gnc->gc", weights, first) / count[:, None]
        square = torch.einsum("gn,gnc->gc", weights, second) / count[:, None]
    run.saved.update(weights=weights, count=count)
    return shift + delta, torch.rsqrt((square - delta * delta).clamp_min(0) + bn.eps)


def _pooled_batchnorm_forward(run: _Run, z: torch.Tensor, mode: str, weights: torch.Tensor | None) -> torch.Tensor:
    """BN, [ReLU] and max-pooling of z (K, n, C, H, W) without forming BN's output at full resolution.

    BN is the per-channel map a z + b with a = γ/σ, monotone, so pooling commutes with it: pool(relu(a z + b))
    = relu(a ext(z) + b) with ext the window's max of z where a > 0 and its min where a < 0, taken at the same
    position (ties too: the first in row-major order; where ReLU zeroes a whole window the position does not
    matter, its gradient is zero). z is pooled once, whatever the number of groups (cached in ``run.shared``
    when the groups share it). Saves z, the statistics, the positions of the maxima and the tests of
    :func:`_statistics_tests`; BN's normalized x̂ at full resolution only on demand (:func:`_xhat`).
    """
    bn, channels = run.bn, z.shape[2]
    mean, inv_std = _statistics(run, z, mode, weights)
    gamma = bn.weight.view(1, channels) if bn.affine else torch.ones_like(inv_std[:1])
    pooled = run.shared.get("pooled")
    if pooled is None or pooled[0] is not z:
        rising = gamma[0] > 0
        if bool(rising.all()):
            extreme = _maxpool_forward(run, z)
        else:
            sign = _per_channel(torch.where(rising, 1.0, -1.0).to(z.dtype).unsqueeze(0), z)
            extreme = _maxpool_forward(run, z * sign) * sign
        pooled = (z, extreme, run.saved["index"])
        if z.shape[0] == 1:
            run.shared["pooled"] = pooled
    _, extreme, index = pooled
    scale = gamma * inv_std  # (R, C)
    shift = (bn.bias.view(1, channels) if bn.affine else 0.0) - mean * scale
    out = torch.addcmul(_per_channel(shift, extreme), extreme, _per_channel(scale, extreme))  # BN at the maxima
    xhat_at = torch.addcmul(_per_channel(-mean * inv_std, extreme), extreme, _per_channel(inv_std, extreme))
    if run.relu:
        out = out.relu_()
        keep = out.sign()
    else:
        keep = torch.ones_like(out)
    run.saved.update(z=z, mean=mean, inv_std=inv_std, scale=scale, index=index, pooled=out,
                     tests=(keep, keep * xhat_at))
    return out


def _xhat(run: _Run) -> torch.Tensor:
    """BN's normalized input x̂ = (z − μ)/σ at full resolution (K', n, C, ...), computed on first use."""
    if "xhat" not in run.saved:
        z = run.saved["z"]
        run.saved["xhat"] = (z - _per_channel(run.saved["mean"], z)) * _per_channel(run.saved["inv_std"], z)
    return run.saved["xhat"]


def _run_suffix_forward(run: _Run, h: torch.Tensor) -> torch.Tensor:
    if run.average:
        run.saved["average_shape"] = torch.tensor(h.shape)
        h = h.mean((-2, -1), keepdim=True)
    if run.flatten:
        run.saved["flatten_shape"] = torch.tensor(h.shape)
        h = h.flatten(2)
    return h


def _batchnorm_forward(run: _Run, z: torch.Tensor, mode: str, weights: torch.Tensor | None) -> torch.Tensor:
    """BN of z (K, n, C, *spatial); saves x̂ and the scale γ/σ (R, C) (∂y/∂z with statistics fixed)."""
    bn, channels = run.bn, z.shape[2]
    mean, inv_std = _statistics(run, z, mode, weights)
    xhat = torch.addcmul(_per_channel(-mean * inv_std, z), z, _per_channel(inv_std, z))
    gamma = bn.weight.view(1, channels) if bn.affine else torch.ones_like(inv_std[:1])
    run.saved.update(xhat=xhat, scale=gamma * inv_std, z=z, mean=mean, inv_std=inv_std)
    if not bn.affine:
        return xhat.clone()
    return torch.addcmul(_per_channel(bn.bias.view(1, channels), xhat), xhat, _per_channel(gamma, xhat))


def _maxpool_forward(run: _Run, h: torch.Tensor) -> torch.Tensor:
    """Max over k x k windows of h (K, n, C, H, W); saves the position of each window's first maximum in
    row-major order as aten's flat index into H x W (``index``, int64). aten's kernel on a channels-last
    tensor is an order of magnitude faster on the CPU than on NCHW, so the field is pooled channels-last."""
    k, rows = run.pool, _rows(h)
    if not rows.is_contiguous(memory_format=torch.channels_last):
        rows = rows.contiguous(memory_format=torch.channels_last)
    best, index = F.max_pool2d(rows, k, k, 0, 1, False, True)
    best, index = best.unflatten(0, h.shape[:2]), index.unflatten(0, h.shape[:2])
    run.saved.update(index=index, pooled=best)
    return best


def _unpool(run: _Run, routed: torch.Tensor, samples: slice) -> torch.Tensor:
    """The field at the pooling run's input (S, n_c, C, H, W), laid out channels-last as the convolutions consume
    it: ``routed`` (S, n_c, C, oh, ow) at each window's maximum, zero elsewhere."""
    shape = (routed.shape[0], *routed.shape[1:3], *run.saved["input_shape"].tolist()[3:])
    zeros = routed.new_zeros(*shape[:2], *shape[3:], shape[2]).permute(0, 1, 4, 2, 3)
    return _scatter_at_maxima(run, zeros, routed, samples)


def _scatter_at_maxima(run: _Run, dz: torch.Tensor, values: torch.Tensor, samples: slice) -> torch.Tensor:
    """dz (S', n_c, C, H, W) += values (.., n_c, C, oh, ow) at each window's maximum, in place."""
    index = _slice(run.saved["index"], samples)
    rows = max(dz.shape[0], values.shape[0], index.shape[0])
    # as (rows, n, positions, C): contiguous for channels-last tensors, which scatter fastest that way
    shape = (rows, values.shape[1], values.shape[-2] * values.shape[-1], values.shape[2])
    dz.movedim(2, -1).flatten(2, 3).scatter_add_(2, index.movedim(2, -1).flatten(2, 3).expand(shape),
                                                 values.movedim(2, -1).flatten(2, 3).expand(shape))
    return dz


def _slice(t: torch.Tensor, samples: slice) -> torch.Tensor:
    return t[:, samples]


def _routes(run: _Run) -> list[torch.Tensor]:
    """The factor that carries a field at the run's output (after pooling) to its input with the BN statistics
    held fixed: scale · ReLU mask (at each window's maximum when the run pools); [] for the identity."""
    if "routes" not in run.saved:
        scale = run.saved.get("scale")
        if run.pool is not None:
            routes = [_route_total(run)]
        else:
            mask = run.saved.get("mask")
            if scale is None:
                routes = [mask] if mask is not None else []
            else:
                per_channel = _per_channel(scale, run.saved["xhat"])
                routes = [mask * per_channel if mask is not None else per_channel]
        run.saved["routes"] = routes
    return run.saved["routes"]


def _route_total(run: _Run) -> torch.Tensor:
    """scale · ReLU mask at each window's maximum (pooling runs)."""
    if "route_total" not in run.saved:
        keep = run.saved["tests"][0] if "tests" in run.saved else (
            run.saved["pooled"].sign() if run.relu else 1.0)
        scale = run.saved.get("scale")
        run.saved["route_total"] = keep * _per_channel(scale, run.saved["pooled"]) if scale is not None else (
            keep * torch.ones_like(run.saved["pooled"]))
    return run.saved["route_total"]


def _statistics_tests(run: _Run) -> tuple[torch.Tensor | float, torch.Tensor]:
    """(M1, Mx) at the run's output before average/flatten: Σ_pos d = Σ dy·M1 and Σ_pos d·x̂ = Σ dy·Mx for the
    field d at BN's output (the β and γ gradients), through ReLU and pooling."""
    if "tests" not in run.saved:
        xhat = run.saved["xhat"]
        if run.pool is not None:
            pooled, index = run.saved["pooled"], run.saved["index"]
            keep = pooled.sign() if run.relu else torch.ones_like(pooled)
            rows = max(xhat.shape[0], index.shape[0])
            flat = index.flatten(-2).expand(rows, *index.shape[1:3], -1)
            at_max = xhat.flatten(-2).expand(rows, *xhat.shape[1:3], -1).gather(-1, flat).view(
                rows, *pooled.shape[1:])
            run.saved["tests"] = (keep, keep * at_max)
        else:
            mask = run.saved.get("mask")
            run.saved["tests"] = (mask, mask * xhat) if mask is not None else (1.0, xhat)
    return run.saved["tests"]


def _unshape(run: _Run, dy: torch.Tensor) -> torch.Tensor:
    """Field at the output of the run's fused part (before AdaptiveAvgPool2d/Flatten) from dy at the run's output."""
    if run.flatten:
        dy = dy.reshape(*dy.shape[:2], *run.saved["flatten_shape"].tolist()[2:])
    if run.average:
        shape = run.saved["average_shape"].tolist()
        dy = (dy / (shape[-2] * shape[-1])).expand(*dy.shape[:3], *shape[-2:])
    return dy


def _bn_sums(run: _Run, dy: torch.Tensor, samples: slice) -> torch.Tensor | None:
    """(S, n_c, 2C): [Σ_pos d, Σ_pos d·x̂] of the field d at BN's output (its β and γ gradients), from dy at the
    fused part's output, through ReLU and pooling; None without BN."""
    if run.bn is None:
        return None
    ones, along = (_slice(t, samples) if torch.is_tensor(t) else t for t in _statistics_tests(run))
    return torch.cat([_channel_sums(dy * ones), _channel_sums(dy * along)], -1)


def _coupling(run: _Run, sums: torch.Tensor, samples: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """BN's backward through its statistics adds −γ/σ · w_n/N · (Σ d + x̂ Σ d x̂) to every position:
    returns its (offset, slope) per row, sample and channel (S, n_c, C), sums taken over all samples."""
    channels = sums.shape[-1] // 2
    share = (run.saved["weights"] / run.saved["count"][:, None])[:, samples].unsqueeze(-1)  # (R, n_c, 1)
    scale = run.saved["scale"].unsqueeze(1)  # (R, 1, C)
    totals = sums.sum(1, keepdim=True)  # (S, 1, 2C)
    return -scale * share * totals[..., :channels], -scale * share * totals[..., channels:]


def _affine_in_xhat(run: _Run, offset: torch.Tensor, slope: torch.Tensor, samples: slice) -> torch.Tensor:
    """offset + slope · x̂ at full resolution, offset and slope (S, n_c, C) per row, sample and channel; from z
    and the statistics when x̂ was not formed: (offset − slope μ/σ) + (slope/σ) z."""
    if "xhat" in run.saved:
        xhat = _slice(run.saved["xhat"], samples)
        return torch.addcmul(_per_channel(offset, xhat), xhat, _per_channel(slope, xhat))
    z = _slice(run.saved["z"], samples)
    slope = slope * run.saved["inv_std"].unsqueeze(1)  # (R, 1, C) broadcast against (S, n_c, C)
    offset = offset - slope * run.saved["mean"].unsqueeze(1)
    return torch.addcmul(_per_channel(offset, z), z, _per_channel(slope, z))


def _run_backward(run: _Run, dy: torch.Tensor, coupled: bool, samples: slice = slice(None)) -> tuple[
        torch.Tensor, torch.Tensor | None]:
    """Field at the run's input (its layer's output) from dy (S, n_c, ...) at its output.

    Args:
        coupled: through BN's batch/group statistics; otherwise with the statistics held fixed.
        samples: the samples of dy among the saved ones (frozen passes run on chunks of samples).
    Returns:
        (field (S, n_c, ...), :func:`_bn_sums` or None).
    """
    dy = _unshape(run, dy)
    sums = _bn_sums(run, dy, samples)
    routes = [_slice(r, samples) for r in _routes(run)]
    if coupled and run.bn is not None:
        offset, slope = _coupling(run, sums, samples)
        dz = _affine_in_xhat(run, offset, slope, samples)
        if run.pool is not None:
            return _scatter_at_maxima(run, dz, dy * routes[0], samples), sums
        return (dz.addcmul_(dy, routes[0]) if routes else dz.add_(dy)), sums
    if run.pool is None:
        return (dy * routes[0] if routes else dy), sums
    return _unpool(run, dy * routes[0], samples), sums


# The largest unfolded-input-at-the-maxima (elements) a pooling conv keeps for its gradients (128 MiB in float32)
GATHER_LIMIT = 2 ** 25


def _gathered_fits(layer: nn.Module, run: _Run) -> bool:
    """Whether the conv of a pooling run takes its gradient after pooling (:func:`_pooled_conv_rows`): its input
    must be shared by the rows (one forward pass) and its input gathered at the maxima within GATHER_LIMIT."""
    if not (isinstance(layer, nn.Conv2d) and run.pool is not None and _param_names(layer)
            and run.saved.get("index") is not None and run.saved["index"].shape[0] == 1):
        return False
    index = run.saved["index"]
    return math.prod(index.shape[1:]) * math.prod(layer.weight.shape[1:]) <= GATHER_LIMIT


def _gathered_inputs(layer: nn.Conv2d, run: _Run, inputs: torch.Tensor) -> dict:
    """For the conv of a pooling run whose input (1, n, ...) is shared: its unfolded input u at each
    window's maximum (``gathered``, stored (C, Q, n, oh*ow): a matrix product reads it fastest as the transposed
    operand); for BN's dense term Σ_pos u (``one``, (n, Q)) and Σ_pos z u (``along``, (n, C, Q)). Cached in the
    run while its forward pass stands."""
    index = run.saved["index"]  # (1, n, C, oh, ow)
    cache = run.shared.setdefault("rows", {})
    if cache.get("index") is not index:
        unfolded = F.unfold(inputs[0], layer.weight.shape[2:], layer.dilation, layer.padding, layer.stride)
        channels, queries = index.shape[2], unfolded.shape[1]
        flat = index[0].flatten(-2)  # (n, C, X)
        gathered = unfolded.transpose(1, 2).unsqueeze(1).expand(-1, channels, -1, -1).gather(
            2, flat.unsqueeze(-1).expand(-1, -1, -1, queries))  # (n, C, X, Q)
        cache.clear()
        cache.update(index=index, gathered=gathered.permute(1, 3, 0, 2).contiguous())  # (C, Q, n, X)
        if "z" in run.saved:
            z = run.saved["z"][0].flatten(2)  # (n, C, L)
            cache.update(one=unfolded.sum(-1), along=z @ unfolded.transpose(1, 2), z_sums=z.sum(-1))
    return cache


def _pooled_conv_rows(layer: nn.Conv2d, run: _Run, inputs: torch.Tensor, dy: torch.Tensor,
                      sums: torch.Tensor | None, coupled: bool, samples: slice) -> torch.Tensor:
    """Gradient of a Conv2d whose run max-pools, computed after pooling: the weight gradient is
    Σ_pos dz ⊗ u, and dz is the routed field (non-zero at one position per window: u gathered there) plus,
    when coupled, BN's dense term (offset + slope·x̂: its sums against u are per-sample moments of u).
    Nothing of the size of the layer's output is formed.

    Args:
        inputs: the layer's input (R, n, ...), all samples; dy: field after pooling (S, n_c, C, oh, ow).
    Returns:
        (S, P) gradients summed over the samples of each row.
    """
    names = _param_names(layer)
    cache = _gathered_inputs(layer, run, inputs)
    gathered = cache["gathered"][:, :, samples]
    routed = (dy * _route_total(run)[:, samples]).flatten(3)  # (S, n_c, C, oh*ow): the field at the maxima
    rows = routed.shape[0]
    weight = (routed.permute(2, 0, 1, 3).reshape(routed.shape[2], rows, -1) @ gathered.flatten(2).transpose(1, 2)
              ).transpose(0, 1)
    bias = routed.sum((1, 3))
    if coupled and run.bn is not None:
        # Σ_pos (offset + slope x̂) u with x̂ = (z − μ)/σ: moments of u and z u, per row's statistics
        offset, slope = _coupling(run, sums, samples)  # (S, n_c, C)
        mean, inv_std = run.saved["mean"].unsqueeze(1), run.saved["inv_std"].unsqueeze(1)  # (R, 1, C)
        one, along, z_sums = cache["one"][samples], cache["along"][samples], cache["z_sums"][samples]
        positions = math.prod(run.saved["input_shape"].tolist()[3:])
        slope = slope * inv_std
        weight = weight + torch.einsum("snc,nq->scq", offset - slope * mean, one) + torch.einsum(
            "snc,ncq->scq", slope, along)
        bias = bias + ((offset - slope * mean) * positions + slope * z_sums).sum(1)
    parts = {"weight": weight, "bias": bias}
    return torch.cat([parts[name].reshape(rows, -1) for name in names], 1)



# ----------------------------------------------------------------------------- layers: backward and gradients

def _layer_backward(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """Field at the layer's input (S, n, ...) from dz at its output; x (R, n, ...) is the layer's input."""
    if isinstance(layer, nn.Linear):
        return dz @ layer.weight
    # a transposed convolution, the output size pinned by output_padding (torch.nn.grad.conv2d_input passes an
    # expanded dummy input that the CPU backend copies to full size, and is slower on channels-last fields)
    extra = [x.shape[-2 + i] - ((dz.shape[-2 + i] - 1) * layer.stride[i] - 2 * layer.padding[i]
                                + layer.dilation[i] * (layer.weight.shape[2 + i] - 1) + 1) for i in range(2)]
    return F.conv_transpose2d(_rows(dz), layer.weight, None, layer.stride, layer.padding, extra, 1,
                              layer.dilation).unflatten(0, dz.shape[:2])


def _param_names(module: nn.Module) -> list[str]:
    return [name for name, p in module.named_parameters(recurse=False) if p.requires_grad]


def _layer_rows(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """Gradient of the layer's trainable parameters for each row, summed over its samples: (S, P_layer).

    x (R, n, ...) is the layer's input with R = 1 (shared by the rows) or S; dz (S, n, ...) the field at its
    output. One sample per row (n = 1) gives per-sample gradients.
    """
    rows, names = dz.shape[0], _param_names(layer)
    grads: dict[str, torch.Tensor] = {}
    if "weight" in names:
        grads["weight"] = dz.transpose(1, 2) @ x if isinstance(layer, nn.Linear) else _conv_weight_rows(
            layer, x, dz)  # (S, out, in...)
    if "bias" in names:
        grads["bias"] = dz.sum(1) if isinstance(layer, nn.Linear) else _channel_sums(dz).sum(1)
    return torch.cat([grads[name].reshape(rows, -1) for name in names], 1)


def _conv_weight_rows(conv: nn.Conv2d, x: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
    """(S, C_out, C_in, kh, kw) weight gradients of x (R, n, C_in, H, W) and dz (S, n, C_out, oh, ow)."""
    rows, samples, channels = dz.shape[:3]
    shape = conv.weight.shape
    if x.shape[0] == 1:  # input shared by the rows: the rows become output channels of one call
        # the field copied to (n, oh, ow, S, C_out), i.e. (n, S C_out, oh, ow) channels-last like x: the CPU's
        # convolution kernel then runs without converting either operand (measured 1.3-1.7x faster than one
        # product per row with the unfolded input, and than the kernel on an NCHW copy)
        inputs = x[0] if x[0].is_contiguous(memory_format=torch.channels_last) else x[0].contiguous(
            memory_format=torch.channels_last)
        field = dz.permute(1, 3, 4, 0, 2).contiguous().view(samples, *dz.shape[3:], rows * channels).permute(
            0, 3, 1, 2)
        return torch.nn.grad.conv2d_weight(inputs, (rows * channels, *shape[1:]), field, conv.stride, conv.padding,
                                           conv.dilation).view(rows, *shape)
    if samples == 1:  # one sample per row
        return _per_sample_conv_weights(conv, x[:, 0], dz[:, 0])
    return torch.stack([torch.nn.grad.conv2d_weight(x[r], shape, dz[r], conv.stride, conv.padding, conv.dilation)
                        for r in range(rows)])


def _unfold_channels_last(conv: nn.Conv2d, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
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
    unfolded = _unfold_channels_last(conv, x, (out_h, out_w)) if unfolded is None else unfolded
    field = dz.permute(0, 2, 3, 1).reshape(n, out_h * out_w, c_out)
    if unfolded.shape[-1] < c_out:  # the orientation with the smaller output dimension last runs faster
        weights = torch.bmm(unfolded.transpose(1, 2), field).transpose(1, 2)
    else:
        weights = torch.bmm(field.transpose(1, 2), unfolded)  # (n, C_out, kh * kw * C_in): returned so if ``raw``
    return weights if raw else weights.reshape(n, c_out, kh, kw, c_in).permute(0, 1, 4, 2, 3)


def _layer_squared_norms(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor, cache: dict | None = None
                         ) -> torch.Tensor:
    """||per-sample gradient||² (n,) of a layer from x (1, n, ...) and dz (1, n, ...), without materializing
    the gradients where that is cheaper ("ghost norm")."""
    names = _param_names(layer)
    if isinstance(layer, nn.Linear):  # ||g aᵀ||² = ||g||² ||a||²
        g2 = (dz[0] ** 2).sum(-1)
        return g2 * (x[0] ** 2).sum(-1) * ("weight" in names) + g2 * ("bias" in names)
    kernel, positions = math.prod(layer.weight.shape[1:]), math.prod(dz.shape[3:])
    # Gram matrices over output positions: L²(Q + C) multiply-adds against LCQ, but batched products of small
    # Gram matrices run several times slower per operation than the per-sample product (measured)
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
        total += (_channel_sums(dz) ** 2)[0].sum(-1)
    return total


def _bn_rows(run: _Run, sums: torch.Tensor | None) -> torch.Tensor | None:
    """BN parameter gradients (..., P_bn) from the sums [Σ d, Σ d x̂] (..., 2C): γ ← Σ d x̂, β ← Σ d."""
    if sums is None:
        return None
    channels = sums.shape[-1] // 2
    parts = {"weight": sums[..., channels:], "bias": sums[..., :channels]}
    names = _param_names(run.bn)
    return torch.cat([parts[name] for name in names], -1) if names else None


def _statistics_adjoint(run: _Run, sums: torch.Tensor) -> torch.Tensor:
    """∂/∂(μ, σ) of the loss with everything else fixed, from the sums [Σ d, Σ d x̂] (y = γ x̂ + β with
    x̂ = (z − μ)/σ: ∂y/∂μ = −γ/σ, ∂y/∂σ = −γ x̂/σ)."""
    scale = run.saved["scale"]
    return -sums * torch.cat([scale, scale], -1).reshape(*([1] * (sums.ndim - 1)), -1)


# ----------------------------------------------------------------------------- descending the chain

def _descend(chain: _Chain, field: torch.Tensor, top: int, coupled: bool, samples: slice = slice(None),
             kind: str = "rows", from_layer_output: bool = False) -> Iterator[tuple[int, torch.Tensor,
                                                                                   torch.Tensor | None]]:
    """Back-propagate ``field`` (S, n_c, ...) from the output of block ``top``'s run (or of its layer) to block 0.

    Yields, block by block from the top: (block, gradient of its trainable parameters, its BN sums
    (S, n_c, 2C) or None). The gradient is, by ``kind``: ``rows`` (S, P_b) summed over the samples of each
    row; ``samples`` (n_c, P_b) per sample of a one-row field; ``norms`` (n_c,) their squared norms.
    """
    for b in range(top, -1, -1):
        layer, run = chain.blocks[b]
        x = chain.inputs[b][:, samples]
        if from_layer_output and b == top:
            dz, sums = field, None
            value = _layer_value(layer, x, dz, kind, run.shared.setdefault("patches", {}))
        elif b == 0 and kind == "rows" and _gathered_fits(layer, run):
            # (above block 0 the gathered input, k² times the layer's output, is read once per chunk of rows and
            # costs more memory traffic than the dense product saves: measured)
            dy = _unshape(run, field)
            sums = _bn_sums(run, dy, samples)
            value = _pooled_conv_rows(layer, run, chain.inputs[0], dy, sums, coupled, samples)
        else:
            dz, sums = _run_backward(run, field, coupled, samples)
            value = _layer_value(layer, x, dz, kind, run.shared.setdefault("patches", {}))
        yield b, _with_bn_gradient(run, value, sums, kind), sums
        if b > 0:
            field = _layer_backward(layer, x, dz)


def _layer_value(layer: nn.Module, x: torch.Tensor, dz: torch.Tensor, kind: str, cache: dict | None = None
                 ) -> torch.Tensor:
    """The layer's part of :func:`_descend`'s gradient; ``cache`` holds the forward pass's patches (norms)."""
    if not _param_names(layer):
        return dz.new_zeros(dz.shape[1]) if kind == "norms" else dz.new_zeros(
            dz.shape[0] if kind == "rows" else dz.shape[1], 0)
    if kind == "rows":
        return _layer_rows(layer, x, dz)
    if kind == "samples":
        return _layer_rows(layer, x.transpose(0, 1), dz.transpose(0, 1))
    return _layer_squared_norms(layer, x, dz, cache)


def _with_bn_gradient(run: _Run, value: torch.Tensor, sums: torch.Tensor | None, kind: str) -> torch.Tensor:
    """Append the run's BN parameter gradients to the layer's (``rows``, ``samples``) or add their squares."""
    bn = _bn_rows(run, None if sums is None else (sums.sum(1) if kind == "rows" else sums[0]))
    if bn is None:
        return value
    return value + (bn ** 2).sum(-1) if kind == "norms" else torch.cat([value, bn], 1)


def _loss_field(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """∂(Σ_j w_j ℓ_j)/∂logits for the cross-entropy: softmax − one-hot (K, n, classes)."""
    field = torch.softmax(logits, -1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)
    return field if weights is None else field * weights.unsqueeze(-1)


def _chunks(count: int, size: int) -> list[slice]:
    size = max(1, size)
    return [slice(start, min(start + size, count)) for start in range(0, count, size)]


def _independent_norms(chain: _Chain, x: torch.Tensor, y: torch.Tensor, mode: str, max_elements: int) -> torch.Tensor:
    """Per-sample gradient norms (n,) when samples are independent (BN in eval mode, or no BN), chunk by chunk."""
    norms = []
    for part in _chunks(len(x), max_elements // max(_largest_activation(chain, x), 1)):
        logits = _forward(chain, x[part], mode)
        total = torch.zeros(part.stop - part.start, dtype=logits.dtype, device=logits.device)
        for _, value, _ in _descend(chain, _loss_field(logits, y[part]), len(chain.blocks) - 1, False, kind="norms"):
            total += value
        norms.append(total.sqrt())
    return torch.cat(norms)


def _largest_activation(chain: _Chain, x: torch.Tensor) -> int:
    """Largest per-sample activation size of the chain (one forward pass of two samples)."""
    if not chain.sizes or not any(chain.sizes):
        _forward(chain, x[:2], "running")
    return max(chain.sizes)


# ----------------------------------------------------------------------------- definition 2, fast

def _statistics_seed(chain: _Chain, bn_block: int, seeds: slice, samples: slice,
                     cache: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The statistics r in ``seeds`` of block ``bn_block``'s BN (r < C: μ_r, else σ_{r−C}) taken through the
    block's layer in closed form: ∂μ_c/∂z = 1/N and ∂σ_c/∂z = x̂/N on output channel c only.

    Returns:
        (rows (S, P_block) of ∂s/∂θ for the block (zero for its own BN parameters), summed over ``samples``;
         the field (S, n_c, ...) at the layer's input, for ``samples``; None for block 0). The rows of every
        statistic are formed on the first call for a part of the samples and kept in ``cache``.
    """
    layer, run = chain.blocks[bn_block]
    xhat, x = _xhat(run)[0, samples], chain.inputs[bn_block][0, samples]  # (n_c, C, ...), (n_c, ...)
    count, channels = float(run.saved["count"][0]), xhat.shape[1]
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
            _channel_sums(d_mean.unsqueeze(0))[0].sum(0).expand(channels),
            _channel_sums(d_std.unsqueeze(0))[0].sum(0)]
        blocks, every = [], torch.arange(channels, device=x.device)
        for kind in range(2):  # statistic r of channel c touches output channel c's weights and bias only
            parts = {"weight": x.new_zeros(channels, channels, weight_rows[kind].shape[1]),
                     "bias": x.new_zeros(channels, channels)}
            parts["weight"][every, every] = weight_rows[kind]
            parts["bias"][every, every] = bias_rows[kind]
            blocks.append(torch.cat([parts[name].flatten(1) for name in _param_names(layer)], 1))
        rows = torch.cat(blocks)
        bn_size = len(_param_names(run.bn)) * channels
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
            field = torch.bmm(patches, kernels).view(k, len(seed), *x.shape[2:], x.shape[1]).permute(0, 1, 4, 2, 3)
            fields.append(field.expand(k, n, *x.shape[1:]))
            continue
        # one output channel per seed: a transposed convolution with groups = seeds
        seed = seed.expand(-1, k, *seed.shape[2:]) if seed.shape[1] == 1 and len(seed) == 1 else seed[:, chosen]
        extra = [x.shape[2 + i] - ((seed.shape[2 + i] - 1) * layer.stride[i] - 2 * layer.padding[i]
                                   + layer.dilation[i] * (weight.shape[2 + i] - 1) + 1) for i in range(2)]
        grouped = F.conv_transpose2d(seed, weight[chosen], None, layer.stride, layer.padding, extra, k,
                                     layer.dilation)
        fields.append(grouped.view(len(seed), k, *x.shape[1:]).transpose(0, 1).expand(k, n, *x.shape[1:]))
    return fields[0] if len(fields) == 1 else torch.cat(fields)


def _mean_shortcut_applies(chain: _Chain, bn: int) -> bool:
    """Whether the means of block ``bn``'s BN can take :func:`_mean_statistics_rows`: the block below it is a
    convolution whose run max-pools (without averaging) over a forward pass shared by every seed."""
    if bn < 1:
        return False
    layer, run = chain.blocks[bn - 1]
    return (isinstance(layer, nn.Conv2d) and run.pool is not None and not run.average and "index" in run.saved
            and run.saved["index"].shape[0] == 1)


def _phase_positions(index: torch.Tensor, k: int, width: int) -> torch.Tensor:
    """aten's flat H*W index of each window's maximum (.., oh, ow) -> its offset r * width + c in the window."""
    out_h, out_w = index.shape[-2:]
    corner = (torch.arange(out_h, device=index.device) * (k * width)).unsqueeze(1) + torch.arange(
        out_w, device=index.device) * k
    return index - corner


def _mean_statistics_rows(chain: _Chain, bn: int, field: torch.Tensor, max_elements: int) -> tuple[
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
    conv, run = chain.blocks[below]
    n = run.saved["index"].shape[1]
    dy = _unshape(run, field.unsqueeze(1))[:, 0]  # (C, C1, oh, ow) at the pooled output of the block below
    statistics, channels = dy.shape[:2]
    flat = dy.flatten(2)  # (C, C1, X)
    route = _route_total(run)[0].flatten(2)  # (n, C1, X)
    rows: dict[int, torch.Tensor] = {}
    sums: dict[int, torch.Tensor] = {}
    values, names = {}, _param_names(conv)
    if "weight" in names:
        k, (height, width) = run.pool, run.saved["input_shape"].tolist()[-2:]
        out_h, out_w = run.saved["index"].shape[-2:]
        unfolded = _unfold_channels_last(conv, chain.inputs[below][0], (height, width)).view(n, height, width, -1)
        offset = _phase_positions(run.saved["index"][0], k, width).flatten(2)  # (n, C1, X)
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
    if run.bn is not None:
        ones, along = (t[0] if torch.is_tensor(t) else t for t in _statistics_tests(run))
        summed = [(t.sum(0) if torch.is_tensor(t) else n * t) for t in (ones, along)]
        sums[below] = torch.cat([_channel_sums(dy.unsqueeze(0) * summed[0])[0],
                                 _channel_sums(dy.unsqueeze(0) * summed[1])[0]], -1)
    rows[below] = _with_bn_gradient(run, value, sums[below].unsqueeze(1) if run.bn is not None else None, "rows")
    if below == 0:
        return rows, sums
    size = max(_descent_size(chain, below - 1), math.prod(run.saved["input_shape"].tolist()[2:]))
    for part in _chunks(statistics, max(1, max_elements // (n * size))):
        dz = _unpool(run, dy[part].unsqueeze(1) * _route_total(run), slice(None))  # (S, n, C1, H, W)
        lower = _layer_backward(conv, chain.inputs[below], dz)
        for b, value, block_sums in _descend(chain, lower, below - 1, False):
            rows.setdefault(b, value.new_zeros(statistics, value.shape[1]))[part] += value
            if block_sums is not None:
                sums.setdefault(b, block_sums.new_zeros(statistics, block_sums.shape[-1]))[part] += block_sums.sum(1)
    return rows, sums


def _in_batch_structured(chain: _Chain, logits: torch.Tensor, y: torch.Tensor, max_elements: int) -> torch.Tensor:
    """Definition 2 through the statistics: ∇ℓ_i = own_i + Σ_l λ_{i,l} ∂s_l/∂θ (see the module docstring)."""
    n, top, bn_blocks = len(y), len(chain.blocks) - 1, chain.bn_blocks
    seed = _loss_field(logits, y)  # (1, n, classes)
    own: dict[int, list[torch.Tensor]] = {b: [] for b in range(top + 1)}  # per-sample, statistics fixed
    direct: dict[int, list[torch.Tensor]] = {b: [] for b in bn_blocks}  # ∂ℓ_i/∂(μ, σ), all else fixed
    for part in _chunks(n, max_elements // max(chain.sizes)):
        for b, value, sums in _descend(chain, seed[:, part], top, False, part, kind="samples"):
            own[b].append(value)
            if sums is not None:
                direct[b].append(_statistics_adjoint(chain.blocks[b][1], sums[0]))
    own_rows = {b: torch.cat(v) for b, v in own.items()}
    rows: dict[int, dict[int, torch.Tensor]] = {}  # BN block -> {block: (2C, P_b)}: ∂s/∂θ, other statistics fixed
    coupling: dict[int, dict[int, torch.Tensor]] = {}  # BN block -> {lower BN block: (2C, 2C')}: ∂s/∂s'
    for bn in bn_blocks:
        statistics = 2 * chain.blocks[bn][1].saved["scale"].shape[-1]
        size = max(_descent_size(chain, bn - 1), math.prod(chain.inputs[bn].shape[2:]))
        parts = _chunks(n, max_elements // size)
        closed_form: dict = {}
        rows[bn] = {b: own_rows[b].new_zeros(statistics, own_rows[b].shape[1]) for b in range(bn + 1)}
        coupling[bn] = {b: rows[bn][b].new_zeros(statistics, len(direct[b][0][0])) for b in bn_blocks if b < bn}
        remaining = range(statistics)
        if _mean_shortcut_applies(chain, bn):  # the means: one pass for all of them
            channels = statistics // 2
            first, field = _statistics_seed(chain, bn, slice(0, channels), parts[0], closed_form)
            if len(parts) > 1:  # the closed-form rows sum over every part
                first = sum((_statistics_seed(chain, bn, slice(0, channels), part, closed_form)[0]
                             for part in parts[1:]), first)
            rows[bn][bn][:channels] += first
            shortcut_rows, shortcut_sums = _mean_statistics_rows(chain, bn, field[:, 0], max_elements)
            for b, value in shortcut_rows.items():
                rows[bn][b][:channels] += value
            for b, value in shortcut_sums.items():
                coupling[bn][b][:channels] += _statistics_adjoint(chain.blocks[b][1], value)
            remaining = range(channels, statistics)
        for seeds in _chunks(len(remaining), max_elements // (size * (parts[0].stop - parts[0].start))):
            seeds = slice(remaining.start + seeds.start, remaining.start + seeds.stop)
            for part in parts:
                first, field = _statistics_seed(chain, bn, seeds, part, closed_form)
                rows[bn][bn][seeds] += first
                if bn == 0:
                    continue
                for b, value, sums in _descend(chain, field, bn - 1, False, part):
                    rows[bn][b][seeds] += value
                    if sums is not None:
                        coupling[bn][b][seeds] += _statistics_adjoint(chain.blocks[b][1], sums.sum(1))
    adjoint: dict[int, torch.Tensor] = {}  # BN block -> (n, 2C): total adjoint λ of its statistics
    for bn in reversed(bn_blocks):
        adjoint[bn] = torch.cat(direct[bn]) + sum((adjoint[up] @ coupling[up][bn] for up in bn_blocks if up > bn),
                                                  torch.zeros(()))
    total = torch.zeros(n, dtype=logits.dtype, device=logits.device)
    for b in range(top + 1):
        gradient = own_rows[b] + sum((adjoint[bn] @ rows[bn][b] for bn in bn_blocks if bn >= b), torch.zeros(()))
        total += (gradient ** 2).sum(1)
    return total.sqrt()


def _in_batch_per_loss(chain: _Chain, logits: torch.Tensor, y: torch.Tensor, indices: Sequence[int],
                       max_elements: int) -> torch.Tensor:
    """Definition 2 by back-propagating the losses ℓ_i, i in ``indices``, together as the seeds of one batched
    backward pass through the batch statistics."""
    seed = _loss_field(logits, y)[0]  # (n, classes)
    total = torch.zeros(len(indices), dtype=seed.dtype, device=seed.device)
    for part in _chunks(len(indices), max_elements // (len(y) * max(chain.sizes))):
        chosen = torch.as_tensor(list(indices[part]), device=seed.device)
        field = torch.zeros(len(chosen), *seed.shape, dtype=seed.dtype, device=seed.device)
        field[torch.arange(len(chosen)), chosen] = seed[chosen]
        for _, value, _ in _descend(chain, field, len(chain.blocks) - 1, True):
            total[part] += (value ** 2).sum(1)
    return total.sqrt()


def _structured_is_cheaper(chain: _Chain, losses: int) -> bool:
    """Compare the multiply-adds of the two batched backward passes of definition 2: one seed per loss through
    every block, against one seed per BN statistic through the blocks below its BN."""
    descent = [_backward_cost(chain, b) for b in range(len(chain.blocks))]
    per_loss = losses * sum(descent)
    structured = sum(2 * chain.blocks[bn][1].saved["scale"].shape[-1] * sum(descent[:bn]) for bn in chain.bn_blocks)
    return structured < per_loss


def _backward_cost(chain: _Chain, b: int) -> int:
    """Multiply-adds per sample and seed of back-propagating through block b: its layer's weight gradient and,
    above block 0, its input field (each the size of the layer's forward pass); the lowest block's gradient is
    taken after pooling (k² times fewer positions)."""
    layer, run = chain.blocks[b]
    positions = math.prod(run.saved["input_shape"].tolist()[3:])
    forward = layer.weight.numel() * positions
    if b == 0:
        return forward // (run.pool ** 2 if "index" in run.saved else 1)
    return 2 * forward


# ----------------------------------------------------------------------------- definition 3, fast

def _descent_size(chain: _Chain, top: int) -> int:
    """Largest per-sample size of the fields a descent from block ``top`` to block 0 forms (0 when top < 0): the
    lowest block forms only its pooled output when it pools (its conv's gradient is taken after pooling)."""
    if top < 0:
        return 0
    run = chain.blocks[0][1]
    lowest = math.prod(run.saved["pooled"].shape[2:]) if "index" in run.saved else chain.sizes[0]
    return max([lowest, *chain.sizes[1:top + 1]])


def _group_size(chain: _Chain, first: int) -> int:
    """Largest per-sample activation size that each leave-one-out group forms: blocks above the first BN block;
    the first one forms only its pooled output per group when its input is shared and it pools (the shared
    z is pooled once and the lowest conv's gradient is taken after pooling)."""
    run = chain.blocks[first][1]
    pooled = first == 0 and "index" in run.saved and run.saved["index"].shape[0] == 1
    own = math.prod(run.saved["pooled"].shape[2:]) if pooled else chain.sizes[first]
    return max([own, *chain.sizes[first + 1:]])


def _counterfactual_groups(chain: _Chain, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int],
                           max_elements: int) -> torch.Tensor:
    """Definition 3 with the leave-one-out batches as groups of one batched pass (group-wise statistics); the
    blocks before the first BN are computed once."""
    top, first, n = len(chain.blocks) - 1, chain.bn_blocks[0], len(x)
    z = _layer_forward(chain.blocks[first][0], _forward(chain, x, "batch", stop=first))  # (1, n, ...): no BN yet
    everyone = torch.ones(1, n, dtype=x.dtype, device=x.device)
    logits = _forward(chain, x, "groups", everyone, start=first, z=z)
    full = {b: value for b, value, _ in _descend(chain, _loss_field(logits, y), top, True)}
    total = torch.zeros(len(indices), dtype=x.dtype, device=x.device)
    for part in _chunks(len(indices), max_elements // (n * _group_size(chain, first))):
        chosen = torch.as_tensor(list(indices[part]), device=x.device)
        weights = torch.ones(len(chosen), n, dtype=x.dtype, device=x.device)
        weights[torch.arange(len(chosen)), chosen] = 0.0
        logits = _forward(chain, x, "groups", weights, start=first, z=z)
        for b, value, _ in _descend(chain, _loss_field(logits, y, weights), top, True):
            total[part] += ((full[b] - value) ** 2).sum(1)
    return total.sqrt()


# ----------------------------------------------------------------------------- public API

_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chain_modules_cached(model: nn.Module, x: torch.Tensor) -> list[nn.Module] | None:
    """:func:`chain_modules`, remembered per model while its leaf modules and the input's feature shape stay
    the same (the probe forward pass with hooks costs about a millisecond per call otherwise)."""
    leaves = tuple(m for m in model.modules() if next(m.children(), None) is None)
    key = (tuple(x.shape[1:]), x.device, x.dtype)
    known = _CHAINS.get(model)
    if known is not None and known[0] == key and len(known[1]) == len(leaves) and all(
            a is b for a, b in zip(known[1], leaves, strict=True)):
        return known[2]
    modules = chain_modules(model, x)
    _CHAINS[model] = (key, leaves, modules)
    return modules


def _prepare(model: nn.Module, x: torch.Tensor, method: str) -> _Chain | None:
    """The chain for the fast path, None for the reference; 'fast' on an unsupported model raises."""
    if method == "reference":
        return None
    modules = _chain_modules_cached(model, x)
    chain = _Chain.parse(modules) if modules is not None else None
    if chain is None and method == "fast":
        raise ValueError("Parameter 'method' is 'fast' but the model is not a chain of Conv2d/Linear layers each "
                         "followed by [BatchNorm][ReLU][MaxPool2d (kernel = stride)][AdaptiveAvgPool2d(1)]"
                         "[Flatten]; use 'auto' or 'reference'.")
    if chain is not None and x.device.type == "cpu":
        tune_allocator()
    return chain


def _check_single_example_statistics(chain: _Chain, x: torch.Tensor, samples: int) -> None:
    """BatchNorm refuses statistics of one value per channel in training mode (PyTorch raises); so do we."""
    if samples > 1 or not chain.bn_blocks:
        return
    with torch.no_grad():
        _forward(chain, x[:2], "running")
    for bn in chain.bn_blocks:
        if len(chain.blocks[bn][1].saved["input_shape"]) == 3:
            raise ValueError(f"A BatchNorm layer normalizes each channel over {samples} example(s) with no spatial "
                             "extent: one value per channel has no variance, and PyTorch refuses it in training "
                             "mode. Use a larger batch.")


def _selected(values: torch.Tensor, indices: Sequence[int] | None) -> torch.Tensor:
    return values if indices is None else values[torch.as_tensor(list(indices), device=values.device)]


def eval_mode_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: Method = "auto",
                         indices: Sequence[int] | None = None,
                         max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """Definition 1: ||∇_θ ℓ(x_i, y_i; θ)||₂ with BN using its running statistics (eval mode).

    Args:
        model: any network; BN layers use running statistics, nothing is updated.
        x, y: a batch (m, ...) and its labels (m,), on the model's device.
        method: ``auto`` (fast path when the model is a supported chain, else the reference), ``fast``
            (error if unsupported) or ``reference``.
        indices: only these samples (the others are computed anyway: the cost is one batch).
        max_elements: memory bound of the batched passes (elements of one activation tensor).
    Returns:
        (m,) or (len(indices),) gradient norms, in x's dtype.
    """
    _check_inputs(model, x, y, method)
    chain = _prepare(model, x, method)
    if chain is None:
        return _selected(eval_mode_grad_norms_reference(model, x, y), indices)
    with torch.no_grad():
        return _selected(_independent_norms(chain, x, y, "running", max_elements), indices)


def in_batch_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: Method = "auto",
                        indices: Sequence[int] | None = None,
                        max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """Definition 2: ||∇_θ ℓ_i(θ; μ_B, σ_B)||₂, sample i's train-mode loss through the statistics of the whole
    batch (x, y), the gradient flowing through μ_B and σ_B as well. Running statistics are not updated.

    Args:
        indices: only these samples (saves work when the losses are back-propagated as seeds).
        method, max_elements, x, y: as :func:`eval_mode_grad_norms`.
    Returns:
        (m,) or (len(indices),) gradient norms.
    """
    _check_inputs(model, x, y, method)
    chain = _prepare(model, x, method)
    if chain is None:
        return _selected(in_batch_grad_norms_reference(model, x, y), indices)
    _check_single_example_statistics(chain, x, len(x))
    chosen = list(range(len(x))) if indices is None else list(indices)
    with torch.no_grad():
        if not chain.bn_blocks:
            return _selected(_independent_norms(chain, x, y, "batch", max_elements), indices)
        logits = _forward(chain, x, "batch")
        if _structured_is_cheaper(chain, len(chosen)):
            return _selected(_in_batch_structured(chain, logits, y, max_elements), indices)
        return _in_batch_per_loss(chain, logits, y, chosen, max_elements)


def counterfactual_influence(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: Method = "auto",
                             indices: Sequence[int] | None = None,
                             max_elements: int = DEFAULT_MAX_ELEMENTS) -> torch.Tensor:
    """Definition 3, the counterfactual per-step influence (sum-reduced cross-entropy, train-mode BN):

        I_i = || Σ_{j∈B} ∇_θ ℓ_j(θ; stats(B)) − Σ_{j∈B∖{i}} ∇_θ ℓ_j(θ; stats(B∖{i})) ||₂

    i.e. m × the change of the mean-loss SGD update (both normalized by the same m) divided by the learning
    rate. Without BN it equals the per-sample gradient norm ||∇_θ ℓ_i||. Running statistics are not updated.

    Args:
        indices: only these samples (each costs one leave-one-out batch).
        method, max_elements, x, y: as :func:`eval_mode_grad_norms`; needs m >= 2.
    Returns:
        (m,) or (len(indices),) influences.
    """
    _check_inputs(model, x, y, method, minimum=2)
    chain = _prepare(model, x, method)
    if chain is None:
        return counterfactual_influence_reference(model, x, y, indices)
    _check_single_example_statistics(chain, x, len(x) - 1)
    chosen = list(range(len(x))) if indices is None else list(indices)
    with torch.no_grad():
        if not chain.bn_blocks:
            return _selected(_independent_norms(chain, x, y, "batch", max_elements), indices)
        return _counterfactual_groups(chain, x, y, chosen, max_elements)


# ----------------------------------------------------------------------------- the chapter's experiment

DEFINITION_NAMES = ("eval_mode", "in_batch", "counterfactual")
_DEFINITIONS = dict(zip(DEFINITION_NAMES, (eval_mode_grad_norms, in_batch_grad_norms, counterfactual_influence),
                        strict=True))


@dataclass(frozen=True)
class InfluenceParams:
    """Parameters of the influence chapter (validated by ``config.load(..., extras=InfluenceParams)``)."""

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


def check_params(cfg, params: InfluenceParams) -> None:
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
    missing = [norm for norm in ("batch", "none") if norm not in cfg.norms]
    if missing:
        raise ValueError(f"Parameter 'norms' got {cfg.norms!r}; this chapter compares BatchNorm with no "
                         f"normalization, so it must contain 'batch' and 'none' (missing: {', '.join(missing)}).")


def probe_layout(is_canary: torch.Tensor, batch_size: int, params: InfluenceParams, seed: int) -> tuple[
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


def track_influence(cfg, params: InfluenceParams, norm: str, seed: int, progress: bool = True) -> dict[str, Any]:
    """Train as ``runs.train_run`` does (same data draw, initialization and batches) and measure the three
    definitions on the fixed probe batches at initialization and after every epoch. Cached.

    Returns:
        ``records``: per checkpoint epoch and (eval-mode) ``inliers_acc``/``canaries_acc`` and loss;
        ``measured_is_canary`` (P, k); for each name in ``DEFINITION_NAMES`` a (E, P, k) float tensor.
    """
    key = {k: v for k, v in cfg.to_dict().items() if k not in ("profile", "norms", "seeds", "device", "n_models")}
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]  # how it was measured
    entry = results.Entry("influence_track", {**key, "norm": norm, "seed": seed, "influence_code": source,
                                              **{f"probe_{k}": v for k, v in params.__dict__.items()
                                                 if k != "fit_level"}})
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


def matched_fit_level(tracks: Sequence[dict[str, Any]], params: InfluenceParams) -> float:
    """The chapter's matched-fit level: ``params.fit_level``, or (0) the highest inlier train accuracy that every
    run reaches, rounded down to 0.01."""
    if params.fit_level > 0:
        return params.fit_level
    reached = min(max(r["inliers_acc"] for r in track["records"]) for track in tracks)
    return math.floor(reached * 100) / 100


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
        all seeds pooled, at the last checkpoint).
    """
    from scipy.stats import mannwhitneyu

    rows = []
    for name in DEFINITION_NAMES:
        higher = {}
        for norm, runs in tracks.items():
            values = np.concatenate([t[name][-1].flatten().numpy() for t in runs])
            canary = np.concatenate([t["measured_is_canary"].flatten().numpy() for t in runs])
            higher[norm] = float(mannwhitneyu(values[canary], values[~canary], alternative="greater").pvalue)
        for kind in ("same_schedule", "matched_fit"):
            ratios = {norm: [float(outlier_inlier_ratios(t, name)[-1]) if kind == "same_schedule" else
                             ratio_at_fit(t, name, level) for t in runs] for norm, runs in tracks.items()}
            test = stats.paired_test(np.log(ratios["batch"]), np.log(ratios["none"]))
            rows.append({"definition": name, "comparison": kind, "ratios": ratios,
                         "summary": {norm: stats.mean_ci(v) for norm, v in ratios.items()},
                         "p_value": test["t_p_value"], "outliers_higher_p": higher})
    return rows
