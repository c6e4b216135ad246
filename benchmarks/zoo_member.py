"""One zoo member as the book trains it, the old way and the new way, timed in one run (issue 26).

    .venv/bin/python benchmarks/zoo_member.py                        # quick profile, BN and no norm, CPU
    .venv/bin/python benchmarks/zoo_member.py --profile smoke --repeats 1      # a self-check in seconds
    .venv/bin/python benchmarks/zoo_member.py --device cuda --profile paper --members 16   # one vmap group

A member is ``zoo.train_members`` (training plus what it stores) and saving its cache entries, with one
intra-op thread as the zoo's workers run it. The ways timed:

    old              the previous version (``old_way=True``): plain NCHW layout, the whole pool's float16
                     logits after every epoch (``train.predict_logits``), the final pool evaluated once more;
                     one entry with the dense (E, N, C) snapshots
    new, plain       the new storage, evaluation in inference mode in chunks of 512, the final pool taken
                     from the last checkpoint, the plain layout: the same bits as ``old`` (tested)
    new              the book's configuration: the new storage and the channels-last layout
    new, crossings   as ``new`` with ``pool_checkpoints="crossings"`` (the pool only around fit-level
                     crossings and at the end)

Each round runs every way once, in turn (the machine may be shared: alternating and keeping the best of
``--repeats`` rounds is fairer than timing one way after the other); the ratio is old / way. Before the
rounds, ``--profile-parts`` (on by default on the CPU) times the parts of one member: its training steps
alone, one evaluation of the whole pool each way, and saving.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import torch

from bnlib import config, data, ensemble, models, results, train, zoo


def _save(folder: Path, stored: list, old_way: bool) -> None:
    """What ``run_task`` writes for these members (the old way: one entry with the dense snapshots)."""
    for k, (weights, member) in enumerate(stored):
        if old_way:
            dense = {name: value for name, value in member.items()
                     if name not in ("fit_correct", "tracked_index", "tracked_logits", "pool_checkpoints",
                                     "pool_logits")}
            dense["checkpoint_logits"] = member["pool_logits"]
            results.atomic_torch_save(folder / f"model_{k}.pt", dense)
        else:
            results.atomic_torch_save(folder / f"model_{k}_weights.pt", weights)
            results.atomic_torch_save(folder / f"model_{k}.pt", member)


def member_seconds(cfg, norm: str, members: list[int], inputs, old_way: bool) -> float:
    device = train.resolve_device(cfg.device)
    with tempfile.TemporaryDirectory() as folder:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        stored = zoo.train_members(cfg, norm, members, inputs, old_way=old_way)
        if device.type == "cuda":
            torch.cuda.synchronize()
        _save(Path(folder), stored, old_way)
        return time.perf_counter() - start


def profile_parts(cfg, norm: str, inputs) -> None:
    """Seconds of the parts of one member (member 0), one thread."""
    experiment, pool_x, _ = inputs
    keep = data.balanced_keep_mask(2, len(experiment.pool_y), seed=cfg.seeds[0], strata=experiment.pool_is_outlier)
    spec = zoo.zoo_spec(cfg, norm, experiment, pool_x)
    settings = dict(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum,
                    weight_decay=cfg.weight_decay, schedule=cfg.schedule)
    line = []
    with zoo.one_thread():
        for memory_format in train.MEMORY_FORMATS:
            torch.manual_seed(zoo.member_seed(0))
            model = models.build(*spec)
            start = time.perf_counter()
            ensemble.train_models([model], pool_x, experiment.pool_y, keep[:1], [zoo.member_seed(0)], progress=False,
                                  memory_format=memory_format, **settings)
            line.append(f"training steps only ({memory_format}) {time.perf_counter() - start:.2f} s")
            if memory_format == "contiguous":
                start = time.perf_counter()
                train.predict_logits(model, pool_x).half()
                line.append(f"one whole-pool snapshot the old way {time.perf_counter() - start:.3f} s")
            start = time.perf_counter()
            ensemble.eval_logits(model, pool_x, memory_format).half()
            line.append(f"one whole-pool snapshot the new way ({memory_format}) {time.perf_counter() - start:.3f} s")
            member = keep[0] & ~experiment.pool_is_outlier | experiment.pool_is_outlier
            start = time.perf_counter()
            ensemble.eval_logits(model, pool_x[member], memory_format).half()
            line.append(f"fit + canaries only ({int(member.sum())} examples, {memory_format}) "
                        f"{time.perf_counter() - start:.3f} s")
        with tempfile.TemporaryDirectory() as folder:
            dense = torch.zeros(cfg.epochs, len(pool_x), experiment.num_classes, dtype=torch.float16)
            start = time.perf_counter()
            results.atomic_torch_save(Path(folder) / "m.pt",
                                      {"state_dict": model.state_dict(), "checkpoint_logits": dense})
            line.append(f"saving a member with dense snapshots {time.perf_counter() - start:.3f} s")
    print(f"  profile ({norm}, {cfg.epochs} epochs, {int(keep[0].sum())} training examples, "
          f"{len(pool_x)} pool examples):")
    for part in line:
        print(f"    {part}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick", choices=config.PROFILE_NAMES)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda trains the members as one vmap group)")
    parser.add_argument("--members", type=int, default=1, help="members trained per task (default 1)")
    parser.add_argument("--norms", default="batch,none")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; the best of each way is kept (default 3)")
    parser.add_argument("--ways", default="old,new plain,new,new crossings", help="comma-separated ways to time")
    parser.add_argument("--no-profile-parts", action="store_true")
    args = parser.parse_args()
    base = config.load(args.profile, device=args.device)
    ways = {"old": (base, True),
            "new plain": (dataclasses.replace(base, memory_format="contiguous"), False),
            "new": (base, False),
            "new crossings": (dataclasses.replace(base, pool_checkpoints="crossings"), False)}
    chosen = [way.strip() for way in args.ways.split(",")]
    unknown = [way for way in chosen if way not in ways]
    if unknown:
        raise SystemExit(f"Parameter '--ways' got {unknown}; allowed values: {', '.join(map(repr, ways))}.")
    inputs = zoo.zoo_inputs(base)
    members = list(range(args.members))
    print(f"torch {torch.__version__}, device {args.device}, profile {args.profile}: {base.arch} width {base.width}, "
          f"{base.epochs} epochs, batch {base.batch_size}, pool {len(inputs[1])}, {args.members} member(s) per task, "
          f"fit levels {base.fit_levels}, one thread; best of {args.repeats} alternating rounds")
    for norm in args.norms.split(","):
        member_seconds(ways["new"][0], norm, members[:1], inputs, False)  # warm-up (first-call overheads)
        if not args.no_profile_parts and args.device == "cpu":
            profile_parts(base, norm, inputs)
        best = {way: float("inf") for way in chosen}
        for _ in range(args.repeats):
            for way in chosen:
                cfg, old_way = ways[way]
                best[way] = min(best[way], member_seconds(cfg, norm, members, inputs, old_way))
        for way in chosen:
            ratio = f"   {best['old'] / best[way]:.2f}x vs old" if "old" in best else ""
            print(f"  {norm:5s} {way:14s} {best[way] / len(members):7.2f} s per member{ratio}")


if __name__ == "__main__":
    main()
