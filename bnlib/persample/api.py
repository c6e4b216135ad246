"""The public functions of the three definitions: input checks, the choice of fast path or reference, and
the fast path's entry points that tests and benchmarks call directly.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from .. import train
from .chain import Chain, chain_forward, chain_modules
from .gradients import independent_norms
from .leave_one_out import counterfactual_groups
from .reference import (
    counterfactual_influence_reference,
    eval_mode_grad_norms_reference,
    in_batch_grad_norms_reference,
    trainable,
)
from .statistics import in_batch_by_losses, in_batch_by_statistics, statistics_strategy_is_cheaper

Method = Literal["auto", "fast", "reference"]
METHODS = ("auto", "fast", "reference")
# Upper bound on the elements of one seed/group-batched activation tensor (float32: 4 bytes each).
DEFAULT_MAX_ELEMENTS = 2 ** 22

# glibc's heap keeps the batched passes' temporaries (see train.tune_allocator); the fast paths call it
tune_allocator = train.tune_allocator


def _check_inputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, method: str, minimum: int = 1) -> None:
    if method not in METHODS:
        raise ValueError(f"Parameter 'method' got {method!r}; allowed values: {', '.join(map(repr, METHODS))}.")
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"Parameters 'x' and 'y' must be a batch (m, ...) and labels (m,); got shapes "
                         f"{tuple(x.shape)} and {tuple(y.shape)}.")
    if len(x) < minimum:
        raise ValueError(f"Parameter 'x' holds {len(x)} example(s); this definition needs at least {minimum} "
                         "(the batch without sample i must not be empty).")
    if not trainable(model):
        raise ValueError("Parameter 'model' has no trainable parameters: there is no gradient to measure.")


# ----------------------------------------------------------------------------- public API

_CHAINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _chain_modules_cached(model: nn.Module, x: torch.Tensor) -> list[nn.Module] | None:
    """:func:`chain_modules`, remembered per model while its leaf modules and the input's feature shape stay
    the same (otherwise every call pays for a probe forward pass with hooks)."""
    leaves = tuple(m for m in model.modules() if next(m.children(), None) is None)
    key = (tuple(x.shape[1:]), x.device, x.dtype)
    known = _CHAINS.get(model)
    if known is not None and known[0] == key and len(known[1]) == len(leaves) and all(
            a is b for a, b in zip(known[1], leaves, strict=True)):
        return known[2]
    modules = chain_modules(model, x)
    _CHAINS[model] = (key, leaves, modules)
    return modules


def prepare_chain(model: nn.Module, x: torch.Tensor, method: str) -> Chain | None:
    """The chain for the fast path, None for the reference; 'fast' on an unsupported model raises."""
    if method not in METHODS:
        raise ValueError(f"Parameter 'method' got {method!r}; allowed values: {', '.join(map(repr, METHODS))}.")
    if method == "reference":
        return None
    modules = _chain_modules_cached(model, x)
    chain = Chain.parse(modules) if modules is not None else None
    if chain is None and method == "fast":
        raise ValueError("Parameter 'method' is 'fast' but the model is not a chain of Conv2d/Linear layers each "
                         "followed by [BatchNorm][ReLU][MaxPool2d (kernel = stride)][AdaptiveAvgPool2d(1)]"
                         "[Flatten]; use 'auto' or 'reference'.")
    if chain is not None and x.device.type == "cpu":
        tune_allocator()
    return chain


def _check_single_example_statistics(chain: Chain, x: torch.Tensor, samples: int) -> None:
    """BatchNorm refuses statistics of one value per channel in training mode (PyTorch raises); so do we."""
    if samples > 1 or not chain.bn_blocks:
        return
    with torch.no_grad():
        chain_forward(chain, x[:2], "running")
    for bn in chain.bn_blocks:
        if len(chain.blocks[bn][1].saved.input_shape) == 3:
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
    chain = prepare_chain(model, x, method)
    if chain is None:
        return _selected(eval_mode_grad_norms_reference(model, x, y), indices)
    with torch.no_grad():
        return _selected(independent_norms(chain, x, y, "running", max_elements), indices)


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
    chain = prepare_chain(model, x, method)
    if chain is None:
        return _selected(in_batch_grad_norms_reference(model, x, y), indices)
    _check_single_example_statistics(chain, x, len(x))
    chosen = list(range(len(x))) if indices is None else list(indices)
    with torch.no_grad():
        if not chain.bn_blocks:
            return _selected(independent_norms(chain, x, y, "batch", max_elements), indices)
        logits = chain_forward(chain, x, "batch")
        if statistics_strategy_is_cheaper(chain, len(chosen)):
            return _selected(in_batch_by_statistics(chain, logits, y, max_elements), indices)
        return in_batch_by_losses(chain, logits, y, chosen, max_elements)


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
    chain = prepare_chain(model, x, method)
    if chain is None:
        return counterfactual_influence_reference(model, x, y, indices)
    _check_single_example_statistics(chain, x, len(x) - 1)
    chosen = list(range(len(x))) if indices is None else list(indices)
    with torch.no_grad():
        if not chain.bn_blocks:
            return _selected(independent_norms(chain, x, y, "batch", max_elements), indices)
        return counterfactual_groups(chain, x, y, chosen, max_elements)
