"""Seconds per zoo member and checkpoint of the influence chapter's probes (``influence.member_probes``) at a
profile's sizes: eval mode on every IN canary and ``eval_inliers`` IN inliers, in batch and counterfactual on
``probe_batches`` probe batches. Weights are the initialization (the cost does not depend on them).

    PYTHONPATH=$PWD python benchmarks/influence_population.py [profile]
"""

import sys
import time

import torch

from bnlib import config, data, influence, models
from bnlib import zoo as zoo_lib


def main(profile: str = "quick") -> None:
    cfg, params = config.load(profile, extras=influence.ChapterParams, device="cpu")
    torch.set_num_threads(1)  # as zoo_probes runs them
    experiment, pool_x, _ = zoo_lib.zoo_inputs(cfg)
    keep = data.balanced_keep_mask(2, len(experiment.pool_y), seed=cfg.seeds[0],
                                   strata=experiment.pool_is_outlier)[0]
    layout = influence.member_layout(keep, experiment.pool_is_outlier, cfg.batch_size, params, zoo_lib.member_seed(0))
    for norm in config.COMPARED_NORMS:
        torch.manual_seed(0)
        model = models.build(*zoo_lib.zoo_spec(cfg, norm, experiment, pool_x)).eval()
        influence.member_probes(model, pool_x, experiment.pool_y, keep, experiment.pool_is_outlier, layout)  # warm-up
        started = time.perf_counter()
        repeats = 3
        for _ in range(repeats):
            influence.member_probes(model, pool_x, experiment.pool_y, keep, experiment.pool_is_outlier, layout)
        print(f"{profile} {norm}: {(time.perf_counter() - started) / repeats:.2f} s per member and checkpoint "
              f"({params.probe_batches} probe batches, {params.eval_inliers} eval-mode inliers)")


if __name__ == "__main__":
    main(*sys.argv[1:])
