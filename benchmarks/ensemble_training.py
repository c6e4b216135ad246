"""Sequential vs concurrent training of K shadow models, on the same data, timed in one run.

    .venv/bin/python benchmarks/ensemble_training.py                 # K=8, CPU (and CUDA if present)
    .venv/bin/python benchmarks/ensemble_training.py --models 16 --epochs 3 --devices cuda

For each device, K small CNNs (the quick profile's network, BatchNorm) are trained on K random halves
of the quick profile's pool (Fashion-MNIST + canaries) and then queried on the whole pool:

    sequential  -- a plain loop: for each model, cut its subset, ``train.fit``, ``train.predict_logits``
    <path>      -- ``ensemble.train_models`` + ``ensemble.predict_all`` on each path (``auto`` resolves
                   to ``ensemble.choose_path(device)``, the one the zoo uses)

All runs start from the same initial weights and see the same batches, so the script also prints how
far their final logits are apart. The stacked path sums in another order, and SGD at this learning rate
amplifies rounding: after 2 epochs, perturbing the *inputs* of the sequential loop by one part in a
million moves its logits by about 0.3 as well (measured), so gaps of that size are rounding, not a bug
(``tests/test_ensemble.py`` checks parity on short runs to 2e-5). Ratios > 1 mean faster than sequential.
"""

from __future__ import annotations

import timing
import torch
from timing import devices, timed

from bnlib import config, data, ensemble, models, train, zoo


def _initial_models(spec: tuple, count: int, device: torch.device) -> list[torch.nn.Module]:
    networks = []
    for k in range(count):
        torch.manual_seed(1000 + k)
        networks.append(models.build(*spec).to(device))
    return networks


def run_sequential(networks, x, y, keep, settings) -> torch.Tensor:
    """The naive loop; returns (K, N, C) logits on the pool."""
    logits = []
    for k, network in enumerate(networks):
        train.fit(network, x[keep[k]], y[keep[k]], seed=1000 + k, progress=False, **settings)
        logits.append(train.predict_logits(network, x))
    return torch.stack(logits)


def run_ensemble(networks, x, y, keep, settings, path: str) -> torch.Tensor:
    trained = ensemble.train_models(networks, x, y, keep, [1000 + k for k in range(len(networks))], path=path,
                                    progress=False, **settings)
    return ensemble.predict_all(trained.models, x, path=path)


def benchmark(device: torch.device, count: int, epochs: int) -> None:
    cfg = config.load("quick", device=device.type)
    experiment, pool_x, _ = zoo.zoo_inputs(cfg)
    pool_y = experiment.pool_y
    keep = data.balanced_keep_mask(count, len(pool_y), seed=0)
    spec = (cfg.arch, "batch", pool_x.shape[1], pool_x.shape[-1], experiment.num_classes, cfg.width)
    settings = dict(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, schedule=cfg.schedule)
    chosen = ensemble.choose_path(device)
    print(f"\n{device.type}: K={count} {cfg.arch} (width {cfg.width}, BatchNorm), {len(pool_y)} pool examples, "
          f"~{int(keep[0].sum())} per model, {epochs} epochs, batch {cfg.batch_size}; chosen path: {chosen}")
    other = "vmap" if chosen == "sequential" else "sequential"
    runs = {"sequential loop": lambda nets: run_sequential(nets, pool_x, pool_y, keep, settings),
            f"ensemble auto -> {chosen}": lambda nets: run_ensemble(nets, pool_x, pool_y, keep, settings, "auto"),
            f"ensemble {other} (not chosen)": lambda nets: run_ensemble(nets, pool_x, pool_y, keep, settings, other)}
    timings, outputs = {}, {}
    for name, run in runs.items():
        timings[name], outputs[name] = timed(device, run, _initial_models(spec, count, device))
        baseline = "sequential loop"
        gap = (outputs[name] - outputs[baseline]).abs().max().item()
        print(f"  {name:30s} {timings[name]:7.2f} s   x{timings[baseline] / timings[name]:5.2f} vs sequential loop"
              f"   max |logit difference| {gap:.1e}   ({count / timings[name]:.2f} models/s)")


def main() -> None:
    parser = timing.parser(__doc__)
    parser.add_argument("--models", type=int, default=8, help="K, models trained together (default 8)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per model (default 2)")
    args = parser.parse_args()
    for device in devices(args.devices):
        benchmark(device, args.models, args.epochs)


if __name__ == "__main__":
    main()
