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
    assert stats.mean_ci([2.0])["ci95"] == [2.0, 2.0]
    assert stats.mean_ci([])["n"] == 0 and math.isnan(stats.mean_ci([])["mean"])


def test_paired_test_detects_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=50)
    out = stats.paired_test(a + 1.0, a + rng.normal(scale=0.1, size=50))
    assert out["diff"]["mean"] == pytest.approx(1.0, abs=0.05) and out["t_p_value"] < 1e-10


def test_value_at_level_interpolates():
    assert stats.value_at_level([0.5, 0.7, 0.9], [0.0, 1.0, 3.0], 0.8) == pytest.approx(2.0)
    assert math.isnan(stats.value_at_level([0.5, 0.7], [0.0, 1.0], 0.95))
    # a dip in fit does not create a second crossing
    assert stats.value_at_level([0.5, 0.8, 0.6, 0.9], [0, 1, 5, 2], 0.8) == pytest.approx(1.0)
