import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from bnlib import stats


def test_mean_ci_matches_t_interval():
    values = [1.0, 2.0, 4.0, 7.0]
    out = stats.mean_ci(values)
    half = scipy_stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert out["mean"] == pytest.approx(3.5) and out["n"] == 4
    assert out["ci95"] == pytest.approx([3.5 - half, 3.5 + half])


def test_mean_ci_degenerate():
    one = stats.mean_ci([2.0, float("nan")])
    assert one["mean"] == 2.0 and one["n"] == 1 and all(math.isnan(b) for b in one["ci95"])
    assert stats.mean_ci([])["n"] == 0 and math.isnan(stats.mean_ci([])["mean"])
    # replicates that agree exactly: the t interval is zero-width, n says how many agree
    assert stats.mean_ci([1.0, 1.0, 1.0]) == {"mean": 1.0, "ci95": [1.0, 1.0], "n": 3}


def test_geometric_mean_ci_on_log_scale():
    out = stats.geometric_mean_ci([2.0, 0.5, 4.0, 0.25])
    assert out["mean"] == pytest.approx(1.0) and out["n"] == 4
    log_ci = stats.mean_ci(np.log([2.0, 0.5, 4.0, 0.25]))["ci95"]
    assert out["ci95"] == pytest.approx(np.exp(log_ci).tolist())
    assert out["ci95"][0] > 0  # an arithmetic t interval of these would go below zero
    assert stats.mean_ci([2.0, 0.5, 4.0, 0.25])["ci95"][0] < 0
    with pytest.raises(ValueError, match="'values'"):
        stats.geometric_mean_ci([1.0, 0.0])


def test_paired_test_detects_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    out = stats.paired_test(a + 1.0, a + rng.normal(scale=0.1, size=50))
    assert out["diff"]["mean"] == pytest.approx(1.0, abs=0.05) and out["t_p_value"] < 1e-10


def test_value_at_level_interpolates():
    assert stats.value_at_level([0.5, 0.7, 0.9], [0.0, 1.0, 3.0], 0.8) == pytest.approx(2.0)
    assert stats.value_at_level([0.5, 0.7, 0.9], [0.0, 1.0, 3.0], 0.7) == pytest.approx(1.0)
    assert math.isnan(stats.value_at_level([0.5, 0.7], [0.0, 1.0], 0.95))
    assert math.isnan(stats.value_at_level([0.85, 0.9], [0.0, 1.0], 0.8))  # starts above: no crossing seen
    # a dip after the crossing does not create a second one
    assert stats.value_at_level([0.5, 0.8, 0.6, 0.9], [0, 1, 5, 2], 0.8) == pytest.approx(1.0)


def test_value_at_level_pairs_the_measurement_with_the_fit_it_was_taken_at():
    # fit dips to 0.6 (value 5) before first crossing 0.8 at 0.9 (value 2): read between (0.6, 5) and (0.9, 2),
    # not between a running maximum 0.7 and 0.9 (which would give 3.5)
    assert stats.value_at_level([0.5, 0.7, 0.6, 0.9], [0, 1, 5, 2], 0.8) == pytest.approx(5 + (2 / 3) * (2 - 5))


def test_common_top_level_and_matched_levels():
    runs = {"batch": [[0.5, 0.97, 0.99], [0.6, 0.995]], "none": [[0.3, 0.951, np.nan], [0.4, 0.96, 0.958]]}
    assert stats.common_top_level(runs) == pytest.approx(0.95)
    assert stats.common_top_level(runs["batch"], resolution=0.001) == pytest.approx(0.99)
    assert stats.common_top_level([[0.5, 0.95]]) == pytest.approx(0.95)  # 0.95 / 0.01 must not floor to 94
    assert stats.matched_levels(runs) == pytest.approx([0.85, 0.9, 0.95])
    assert stats.matched_levels(runs, fractions=(1.0,)) == pytest.approx([0.95])
    # every run reaches every level, so each run can be read there
    for level in stats.matched_levels(runs):
        assert all(not math.isnan(stats.value_at_level(c, np.arange(len(c)), level))
                   for group in runs.values() for c in group)
    with pytest.raises(ValueError, match="'fractions'"):
        stats.matched_levels(runs, fractions=(1.5,))
    with pytest.raises(ValueError, match="'runs'"):
        stats.common_top_level([])
