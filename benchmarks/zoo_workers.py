"""Models per minute of the zoo: one worker vs one per core, and through the Dask engine, in one run.

    .venv/bin/python benchmarks/zoo_workers.py                      # quick profile, 6 members, 3 epochs
    .venv/bin/python benchmarks/zoo_workers.py --models 8 --epochs 12

Each side trains the same zoo (quick profile's data and network, BatchNorm) from an empty cache folder of
its own, end to end through the library's entry points, and the script checks that all sides stored the
same bits:

    1 worker      -- ``zoo.train_zoo`` with ``workers=1``: this process, one member after another (one
                     thread each: the bits depend on the thread count, see ``bnlib.zoo``)
    N workers     -- ``zoo.train_zoo`` with ``workers=N`` (default: one per core), spawned processes of one
                     thread each; the time includes starting them (importing torch, drawing the data)
    dask N        -- ``engine.train_zoo`` on a ``LocalCluster`` of N single-thread workers on 127.0.0.1;
                     the cluster's start is timed separately, not counted in models per minute

Ratios > 1 mean more models per minute than one worker.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from bnlib import config, engine, zoo


def _timed_zoo(label: str, train, cfg) -> tuple[float, zoo.Zoo]:
    os.environ["BNLIB_CACHE"] = tempfile.mkdtemp(prefix=f"zoo-bench-{label.replace(' ', '-')}-")
    started = time.perf_counter()
    train()
    seconds = time.perf_counter() - started
    return seconds, zoo.load_zoo(cfg, "batch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=6, help="zoo members trained by each side")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="0 = one per available core")
    args = parser.parse_args()
    base = config.load("quick", device="cpu", n_models=args.models, epochs=args.epochs, norms="batch")
    cores = zoo.local_workers(config.load("quick", device="cpu", workers=args.workers))
    print(f"quick profile, {args.models} members, {args.epochs} epochs, {cores} cores/workers, "
          f"torch {torch.__version__}")

    times, zoos = {}, {}
    for label, workers in (("1 worker", 1), (f"{cores} workers", cores)):
        cfg = config.load("quick", device="cpu", n_models=args.models, epochs=args.epochs, workers=workers)
        times[label], zoos[label] = _timed_zoo(label, lambda cfg=cfg: zoo.train_zoo(cfg, "batch", progress=False),
                                               base)
    from distributed import Client, LocalCluster

    started = time.perf_counter()
    with LocalCluster(n_workers=cores, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as cluster, Client(cluster) as client:
        client.run(lambda: __import__("bnlib.zoo"))  # workers import torch before the clock starts
        startup = time.perf_counter() - started
        label = f"dask {cores}"
        times[label], zoos[label] = _timed_zoo(
            label, lambda: engine.train_zoo(client, base, ["batch"], progress=False), base)

    reference = zoos["1 worker"]
    for label, seconds in times.items():
        same = all(torch.equal(reference.members.load(zoo.member_name(t))["state_dict"][name], tensor)
                   for t in range(args.models)
                   for name, tensor in zoos[label].members.load(zoo.member_name(t))["state_dict"].items())
        rate = 60 * args.models / seconds
        print(f"{label:>12s}: {seconds:7.1f} s  {rate:6.2f} models/min  "
              f"{times['1 worker'] / seconds:5.2f}x  bit-identical to 1 worker: {same}")
    print(f"(dask cluster start, not counted above: {startup:.1f} s)")


if __name__ == "__main__":
    main()
