"""Definition 3 (counterfactual influence) on a chain: the leave-one-out batches as groups of one batched pass,
each with its own BN statistics; the blocks before the first BN are computed once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .chain import Chain, chain_forward, layer_forward
from .gradients import chunks, descend, loss_field


def _group_size(chain: Chain, first: int) -> int:
    """Largest per-sample activation size that each leave-one-out group forms: blocks above the first BN block;
    the first one forms only its pooled output per group when its input is shared and it pools (the shared
    z is pooled once and the lowest conv's gradient is taken after pooling)."""
    tail = chain.blocks[first][1]
    pooled = first == 0 and tail.saved.index is not None and tail.saved.index.shape[0] == 1
    own = math.prod(tail.saved.pooled.shape[2:]) if pooled else chain.sizes[first]
    return max([own, *chain.sizes[first + 1:]])


def counterfactual_groups(chain: Chain, x: torch.Tensor, y: torch.Tensor, indices: Sequence[int],
                           max_elements: int) -> torch.Tensor:
    """Definition 3 with the leave-one-out batches as groups of one batched pass (group-wise statistics); the
    blocks before the first BN are computed once."""
    top, first, n = len(chain.blocks) - 1, chain.bn_blocks[0], len(x)
    z = layer_forward(chain.blocks[first][0], chain_forward(chain, x, "batch", stop=first))  # (1, n, ...): no BN yet
    everyone = torch.ones(1, n, dtype=x.dtype, device=x.device)
    logits = chain_forward(chain, x, "groups", everyone, start=first, z=z)
    full = {b: value for b, value, _ in descend(chain, loss_field(logits, y), top, True)}
    total = torch.zeros(len(indices), dtype=x.dtype, device=x.device)
    for part in chunks(len(indices), max_elements // (n * _group_size(chain, first))):
        chosen = torch.as_tensor(list(indices[part]), device=x.device)
        weights = torch.ones(len(chosen), n, dtype=x.dtype, device=x.device)
        weights[torch.arange(len(chosen)), chosen] = 0.0
        logits = chain_forward(chain, x, "groups", weights, start=first, z=z)
        for b, value, _ in descend(chain, loss_field(logits, y, weights), top, True):
            total[part] += ((full[b] - value) ** 2).sum(1)
    return total.sqrt()
