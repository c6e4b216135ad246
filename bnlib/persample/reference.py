"""The three definitions, each by an obviously right loop of autograd passes (slow): what the fast paths of this
package are tested against, and what they fall back to on networks that are not a supported chain.

Every function restores the model's train/eval flag and buffers (running statistics) on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import models

_BN = nn.modules.batchnorm._BatchNorm


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@contextlib.contextmanager
def model_state_preserved(model: nn.Module) -> Iterator[None]:
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


def flat(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def batch_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Flat gradient of the sum-reduced cross-entropy of (x, y) in the model's current mode."""
    loss = F.cross_entropy(model(x), y, reduction="sum")
    return flat(torch.autograd.grad(loss, trainable(model), allow_unused=True, materialize_grads=True))


# ----------------------------------------------------------------------------- references (slow, obvious)

def eval_mode_grad_norms_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Definition 1 by a loop of m single-example backward passes in eval mode. Returns (m,)."""
    with model_state_preserved(model):
        model.eval()
        return torch.stack([batch_gradient(model, x[i:i + 1], y[i:i + 1]).norm() for i in range(len(x))])


def in_batch_grad_norms_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Definition 2 by m backward passes of ℓ_i through one train-mode forward of the whole batch. Returns (m,)."""
    with model_state_preserved(model):
        model.train()
        losses = F.cross_entropy(model(x), y, reduction="none")
        params = trainable(model)
        return torch.stack([
            flat(torch.autograd.grad(losses[i], params, retain_graph=i < len(x) - 1, allow_unused=True,
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
    with model_state_preserved(model):
        model.train()
        start = {name: buffer.clone() for name, buffer in model.named_buffers()}

        def gradient(keep: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                for name, buffer in model.named_buffers():
                    buffer.copy_(start[name])
            return batch_gradient(model, x[keep], y[keep])

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
