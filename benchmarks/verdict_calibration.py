"""Calibration of the verdict's inference on simulated crossed populations, and the cost of the pooled-ROC test.

    .venv/bin/python benchmarks/verdict_calibration.py              # 2000 simulations per scenario
    .venv/bin/python benchmarks/verdict_calibration.py --sims 500

The population is ``tests/test_verdict.py``'s: 2 data pools x 16 model pairs x 100 canaries, binary outcomes
whose paired BN - no-BN difference is dominated by the model x example residual (SD ~0.7 per cell), example
effects on the difference of SD 0.05, none of the models. For each scenario it prints the rejection rate of
``verdict.paired_difference`` at p < 0.05, the coverage of its 95% interval of the conditional truth
(``verdict.TARGET``), its mean SE and the SD of its errors; then the seconds one pooled-ROC comparison
(``mia_chapter.pooled_pair_difference``, 1000 pair swaps and the pair jackknife) takes at the quick profile's
size (16 or 32 targets x 200 canaries).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bnlib import data, mia, mia_chapter, verdict  # noqa: E402
from tests.test_verdict import POOLS, crossed  # noqa: E402

SCENARIOS = (((0.0, 0.0), 0.0), ((0.1, -0.1), 0.0), ((0.0, 0.0), 0.3), ((0.05, 0.05), 0.2), ((0.1, 0.0), 0.2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=2000)
    sims = parser.parse_args().sims
    rng = np.random.default_rng(0)
    print("pool deltas   missing  reject(p<0.05)  coverage  mean SE  SD of error")
    for deltas, missing in SCENARIOS:
        batch, none, truth = crossed(rng, sims, deltas, missing=missing)
        found = [verdict.paired_difference(batch[s], none[s], pools=POOLS) for s in range(sims)]
        errors = [f["mean"] - t for f, t in zip(found, truth, strict=True)]
        print(f"{str(deltas):13} {missing:7.1f}  {np.mean([f['p_value'] < 0.05 for f in found]):14.3f}  "
              f"{np.mean([f['ci95'][0] <= t <= f['ci95'][1] for f, t in zip(found, truth, strict=True)]):8.3f}  "
              f"{np.mean([f['se'] for f in found]):7.4f}  {np.std(errors):11.4f}")
    for targets in (16, 32):
        keep = data.balanced_keep_mask(targets, 200, seed=1).numpy()
        every = np.ones(200, dtype=bool)
        a, b = (mia.pooled_estimate(rng.normal(size=keep.shape) + keep, keep, every) for _ in "ab")
        start = time.perf_counter()
        mia_chapter.pooled_pair_difference(a, b, "tpr_at_1pct_fpr")
        print(f"pooled-ROC comparison, {targets} targets x 200 canaries: {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
