"""The per-sample gradient engine: three definitions of a sample's influence that stay exact under BatchNorm.

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
                    them through the block below (:mod:`.statistics`); λ_i, the total adjoint of
                    the statistics for loss i, is a small triangular recursion. When that costs more
                    multiply-adds than back-propagating the losses asked for together as seeds through the
                    coupled BN backward pass, the latter is used instead (:func:`statistics_strategy_is_cheaper`).
    counterfactual  the leave-one-out batches are groups of one batched pass with one set of statistics
                    each; the blocks before the first BN are computed once, and the first BN block's input
                    is pooled once for every group.

BN is a monotone map per channel, so max-pooling commutes with it: a block conv → BN → [ReLU] → max-pool
pools z (by max, or min where γ < 0) and normalizes the pooled values only (:mod:`.chain`);
aten's pooling runs channels-last, and its indices route the backward pass by one scatter (plus BN's
coupling, a dense term with two coefficients per channel). The gradient of the lowest conv layer is taken
after its max-pooling (its input gathered at each window's maximum) rather than at full resolution. Large
temporaries are kept in glibc's heap rather than paged in afresh (:func:`tune_allocator`).
``benchmarks/influence.py`` times each definition against its reference (its README holds the figures).

Modules, in the order they build on each other: :mod:`.reference` (the obviously right definitions),
:mod:`.chain` (layout and forward pass), :mod:`.backward` (the fused backward pass of a block's tail),
:mod:`.gradients` (per-layer per-sample gradients, the descent), :mod:`.statistics` (definition 2 through BN's
statistics), :mod:`.leave_one_out` (definition 3), :mod:`.api` (the public functions). The chapter's experiment
is ``bnlib.influence``.
"""

from .api import (
                  DEFAULT_MAX_ELEMENTS,
                  METHODS,
                  Method,
                  chain_forward,
                  counterfactual_influence,
                  eval_mode_grad_norms,
                  in_batch_by_losses,
                  in_batch_by_statistics,
                  in_batch_grad_norms,
                  prepare_chain,
                  statistics_strategy_is_cheaper,
                  tune_allocator,
)
from .chain import chain_modules
from .reference import (
                  counterfactual_influence_reference,
                  eval_mode_grad_norms_reference,
                  ghost_virtual_batches,
                  in_batch_grad_norms_reference,
)

__all__ = [
    "DEFAULT_MAX_ELEMENTS", "METHODS", "Method", "chain_forward", "chain_modules", "counterfactual_influence",
    "counterfactual_influence_reference", "eval_mode_grad_norms", "eval_mode_grad_norms_reference",
    "ghost_virtual_batches", "in_batch_by_losses", "in_batch_by_statistics", "in_batch_grad_norms",
    "in_batch_grad_norms_reference", "prepare_chain", "statistics_strategy_is_cheaper", "tune_allocator",
]
