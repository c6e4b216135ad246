"""The paper profile's zoo on a GPU: seconds per epoch of one vmap group of zoo members, as the book trains them.

    .venv/bin/python benchmarks/paper_gpu.py --epochs 1 --members 16            # on a CUDA machine
    .venv/bin/python benchmarks/paper_gpu.py --profile smoke --epochs 1 --members 2 --norms batch   # CPU check

For each norm, ``zoo.run_task`` trains members 0..K-1 of the profile's zoo (pool 0) for ``--epochs`` epochs
(the paper profile's data, architecture, batch size and learning rate; the schedule compressed to those
epochs) with the snapshots and the saved entry the book stores, into a throw-away cache. It prints seconds
per epoch of the group, and extrapolates the profile's full schedule and population (``pools`` x
``n_models`` members x ``norms``) on one GPU. Two epochs separate the first epoch's start-up (cuDNN
autotuning, allocator growth) land in an untimed warm-up run; the extrapolation uses the time of the
extra epochs (the difference of the two timed runs' totals), so fixed costs per task are left out of it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="paper")
    parser.add_argument("--members", type=int, default=16, help="members trained together (one vmap group)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the timed runs (1 and 1 + this)")
    parser.add_argument("--norms", default="batch,none,group,layer")
    args = parser.parse_args()
    os.environ.setdefault("BNLIB_CACHE", tempfile.mkdtemp(prefix="bnlib-gpu-"))
    from bnlib import config, train, zoo

    cfg = config.load(args.profile)
    device = train.resolve_device(cfg.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__} on {name}; profile {args.profile}: {cfg.arch} width {cfg.width}, "
          f"{cfg.n_train} inliers + {cfg.n_canaries} canaries, batch {cfg.batch_size}, {cfg.epochs} epochs; "
          f"{args.members} members per group")
    inputs = zoo.zoo_inputs(cfg)
    members = tuple(range(args.members))
    full_epochs, per_norm = cfg.epochs, {}
    for norm in args.norms.split(","):
        totals = {}
        # warm-up under another cache key (weight decay off by one part in a million): start-up costs land here
        zoo.run_task(replace(cfg, epochs=1, weight_decay=cfg.weight_decay * (1 + 1e-6)), norm, members, inputs=inputs)
        for epochs in (1, 1 + args.epochs):
            short = replace(cfg, epochs=epochs)  # each length is its own cache entry
            start = time.perf_counter()
            zoo.run_task(short, norm, members, inputs=inputs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            totals[epochs] = time.perf_counter() - start
        per_epoch = (totals[1 + args.epochs] - totals[1]) / args.epochs
        per_norm[norm] = per_epoch
        print(f"{norm:>6}: 1 epoch {totals[1]:.1f} s (snapshots, saving included); steady state "
              f"{per_epoch:.2f} s per epoch of the group = {per_epoch / args.members:.3f} s per member-epoch")
    groups = len(cfg.pools) * -(-cfg.n_models // args.members)
    total = sum(per_norm.values()) * full_epochs * groups
    print(f"extrapolated: {len(per_norm)} norms x {len(cfg.pools)} pools x {cfg.n_models} members x {full_epochs} "
          f"epochs on one such GPU = {total / 3600:.2f} h of zoo training")


if __name__ == "__main__":
    main()
