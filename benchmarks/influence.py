"""The three per-sample influence definitions: naive (the ``*_reference`` functions) vs fast, timed in one run.

    .venv/bin/python benchmarks/influence.py                      # quick-profile CNN, batch 128, CPU (+ CUDA)
    .venv/bin/python benchmarks/influence.py --width 4 --batch 256 --devices cpu

For each device: the quick profile's small CNN (BatchNorm, width 16 unless --width), random weights and
running statistics, a batch of Fashion-MNIST-shaped inputs. Each definition is timed naive and fast on the
same inputs, alternately (at least ``--repeats`` times and ``--min-seconds`` per side, best of each), so both
sides see the same machine load; the script prints both times, their ratio (> 1: the fast path is faster)
and the largest relative difference of the results. Both sides run with the allocator setting the fast
paths apply (``persample.tune_allocator``). For definition 2 it also times the two fast strategies
(statistics as seeds vs losses as seeds) to show which one the cost model picked.
"""

from __future__ import annotations

import timing
import torch
from timing import devices, timed

from bnlib import models, persample

DEFINITIONS = {
    "1 eval mode": (persample.eval_mode_grad_norms, persample.eval_mode_grad_norms_reference),
    "2 in batch": (persample.in_batch_grad_norms, persample.in_batch_grad_norms_reference),
    "3 counterfactual": (persample.counterfactual_influence, persample.counterfactual_influence_reference),
}


def _network(width: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = models.build("small_cnn", "batch", 1, 28, 10, width).to(device)
    for module in model.modules():  # trained-looking running statistics and affine parameters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.1)
    return model


def benchmark(device: torch.device, width: int, batch: int, repeats: int, min_seconds: float) -> None:
    model = _network(width, device)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 28, 28, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    print(f"\n{device.type}: small CNN width {width} (BatchNorm), batch {batch}; naive and fast alternately, at "
          f"least {repeats} times each and {min_seconds:g} s per side, best of each")
    print(f"  {'definition':18s} {'naive':>9s} {'fast':>9s} {'ratio':>7s}  {'runs':>9s}   max relative difference")
    for name, (fast, naive) in DEFINITIONS.items():
        fast(model, x, y, method="fast")  # warm-up: first-call allocations and the chain layout
        best_fast, best_naive, spent, runs = float("inf"), float("inf"), [0.0, 0.0], 0
        while runs < repeats or min(spent) < min_seconds:
            seconds, result = timed(device, naive, model, x, y)
            best_naive, spent[0] = min(best_naive, seconds), spent[0] + seconds
            seconds, fast_result = timed(device, fast, model, x, y, method="fast")
            best_fast, spent[1] = min(best_fast, seconds), spent[1] + seconds
            runs += 1
        gap = float(((fast_result - result).abs() / result.abs().max()).max())
        print(f"  {name:18s} {best_naive:8.3f}s {best_fast:8.3f}s {best_naive / best_fast:6.2f}x  {runs:4d} each"
              f"   {gap:.1e}")
    chain = persample.prepare_chain(model, x, "fast")
    with torch.no_grad():
        logits = persample.chain_forward(chain, x, "batch")
        limit = persample.DEFAULT_MAX_ELEMENTS
        structured = min(timed(device, persample.in_batch_by_statistics, chain, logits, y, limit)[0]
                         for _ in range(repeats))
        per_loss = min(timed(device, persample.in_batch_by_losses, chain, logits, y, range(batch), limit)[0]
                       for _ in range(repeats))
        chosen = "statistics" if persample.statistics_strategy_is_cheaper(chain, batch) else "losses"
    print(f"  definition 2 strategies: statistics as seeds {structured:.3f}s, losses as seeds {per_loss:.3f}s "
          f"(cost model picks: {chosen})")


def main() -> None:
    parser = timing.parser(__doc__)
    parser.add_argument("--width", type=int, default=16, help="channels of the first conv layer (default 16)")
    parser.add_argument("--batch", type=int, default=128, help="batch size m (default 128)")
    parser.add_argument("--repeats", type=int, default=3, help="least timings per side, best kept (default 3)")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="keep timing until each side has run this long (default 2; short timings are noisy)")
    args = parser.parse_args()
    # both sides run with the allocator setting the fast paths apply (see its docstring)
    print(f"glibc malloc tuned for reuse of large blocks: {persample.tune_allocator()}")
    for device in devices(args.devices):
        benchmark(device, args.width, args.batch, args.repeats, args.min_seconds)


if __name__ == "__main__":
    main()
