"""How long a common schedule must be for every model to reach high fit, and how well per-epoch checkpoints
read memorization at a fit level (issue 21).

Trains a few quick-profile zoo members (pool 0, members 0..M-1, one thread, the zoo's data, keep mask and
seeds) on ``--lengths`` epochs each and prints, per length, each member's final inlier fit (eval mode, on its
own training inliers: the zoo's fit measure) and the epoch at which it first passes each ``--levels`` level.
With ``--evals-per-epoch`` > 1 it also reads each member's canary memorization (acc(IN) - acc(OUT)) at each
level twice: linearly interpolated between per-epoch checkpoints (what the zoo stores) and between the dense
evaluations, and prints the differences (the interpolation error of the per-epoch reading).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/fit_schedule.py --norm none --lengths 24,36 --members 4
    PYTHONPATH=$PWD .venv/bin/python benchmarks/fit_schedule.py --norm none --lengths 36 --members 3 \
        --evals-per-epoch 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bnlib import config, data, models, stats, train, zoo


def member_curve(cfg, norm: str, t: int, epochs: int, evals_per_epoch: int, lr: float) -> dict[str, np.ndarray]:
    """Fit (own inliers) and canary memorization of zoo member t along an ``epochs`` schedule."""
    experiment, pool_x, _ = zoo.zoo_inputs(cfg)
    keep = data.balanced_keep_mask(max(t + 1, 2), len(experiment.pool_y), seed=cfg.seeds[0],
                                   strata=experiment.pool_is_outlier)[t]
    outlier = experiment.pool_is_outlier
    own_inliers, canaries_in, canaries_out = keep & ~outlier, keep & outlier, ~keep & outlier
    probe = own_inliers | outlier
    probe_x, probe_y = pool_x[probe], experiment.pool_y[probe]
    inlier_cols, in_cols, out_cols = (mask[probe] for mask in (own_inliers, canaries_in, canaries_out))
    records: list[tuple[float, float, float]] = []

    def on_eval(model, record):
        correct = (train.predict_logits(model, probe_x).argmax(1) == probe_y).float()
        records.append((record["epoch"], float(correct[inlier_cols].mean()),
                        float(correct[in_cols].mean() - correct[out_cols].mean())))

    torch.manual_seed(zoo.member_seed(t))
    spec = zoo.zoo_spec(cfg, norm, experiment, pool_x)
    model = models.build(*spec)
    index = keep.nonzero().squeeze(1)
    train.fit(model, pool_x[index], experiment.pool_y[index], epochs=epochs, batch_size=cfg.batch_size, lr=lr,
              momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule, seed=zoo.member_seed(t),
              on_eval=on_eval, evals_per_epoch=evals_per_epoch, progress=False)
    epoch, fit, memorization = (np.array(column) for column in zip(*records, strict=True))
    return {"epoch": epoch, "fit": fit, "memorization": memorization}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--norm", default="none")
    parser.add_argument("--lengths", default="24,36")
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--first-member", type=int, default=0)
    parser.add_argument("--pool", type=int, default=0)
    parser.add_argument("--levels", default="0.8,0.85,0.9,0.95")
    parser.add_argument("--evals-per-epoch", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.0, help="peak learning rate (0: the profile's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = config.load(args.profile, pools=(args.pool,), seeds=(args.pool,))
    levels = [float(v) for v in args.levels.split(",")]
    lr = args.lr or cfg.lr
    errors, density_errors = [], {}
    for epochs in [int(v) for v in args.lengths.split(",")]:
        for t in range(args.first_member, args.first_member + args.members):
            started = time.perf_counter()
            curve = member_curve(cfg, args.norm, t, epochs, args.evals_per_epoch, lr)
            per_epoch = np.isclose(curve["epoch"], np.round(curve["epoch"]))
            crossing = {level: stats.value_at_level(curve["fit"][per_epoch], curve["epoch"][per_epoch], level)
                        for level in levels}
            line = (f"{args.norm} lr {lr:g} {epochs:3d} epochs member {t}: final fit {curve['fit'][-1]:.3f}, "
                    f"max {curve['fit'].max():.3f}, final memorization {curve['memorization'][-1]:+.3f}; "
                    "passes " + ", ".join(f"{level:.2f} at epoch {e:.1f}" for level, e in crossing.items())
                    + f" ({time.perf_counter() - started:.0f} s)")
            print(line, flush=True)
            if args.evals_per_epoch > 1:
                steps = np.round(curve["epoch"] * args.evals_per_epoch).astype(int)  # evaluation index, 1-based
                for level in levels:
                    dense = stats.value_at_level(curve["fit"], curve["memorization"], level)
                    line = f"    level {level:.2f}: memorization dense {dense:+.3f}"
                    for per_epoch in [d for d in range(1, args.evals_per_epoch) if args.evals_per_epoch % d == 0]:
                        kept = steps % (args.evals_per_epoch // per_epoch) == 0
                        sparse = stats.value_at_level(curve["fit"][kept], curve["memorization"][kept], level)
                        line += f"; {per_epoch}/epoch {sparse:+.3f} (error {sparse - dense:+.3f})"
                        if per_epoch == 1:
                            errors.append(sparse - dense)
                        density_errors.setdefault(per_epoch, []).append(sparse - dense)
                    print(line, flush=True)
    for per_epoch, found in sorted(density_errors.items()):
        found = np.array(found)[np.isfinite(found)]
        if found.size:
            print(f"checkpoints {per_epoch}/epoch: mean error {found.mean():+.4f}, mean |error| "
                  f"{np.abs(found).mean():.4f}, max |error| {np.abs(found).max():.4f}, n = {found.size}")
    if errors:
        errors = np.array(errors)
        errors = errors[np.isfinite(errors)]
        print(f"interpolation error of per-epoch checkpoints: mean {errors.mean():+.4f}, mean |error| "
              f"{np.abs(errors).mean():.4f}, max |error| {np.abs(errors).max():.4f}, n = {errors.size}; error of a "
              f"mean over {args.members} members per level: "
              f"{np.abs(errors.reshape(-1, len(levels)).mean(0)).max() if errors.size % len(levels) == 0 else 'n/a'}")


if __name__ == "__main__":
    main()
