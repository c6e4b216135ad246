"""One population per norm, three comparisons (bnlib.population), on the smoke profile."""

from dataclasses import replace

import numpy as np
import pytest

from bnlib import config, population


def test_closest_rate_bisects_the_learning_rate_to_the_target_fit():
    calls = []

    def final_fit(rate):
        calls.append(rate)
        return 1 - 0.9 * np.exp(-40 * rate)  # grows with the rate

    peak = 0.05
    for target in (0.3, 0.6, 0.8):
        calls.clear()
        best = population.closest_rate(final_fit, peak, target)
        assert len(calls) == population.CALIBRATION_STEPS and best in calls
        exact = -np.log((1 - target) / 0.9) / 40  # the rate that ends exactly at the target
        resolution = population.CALIBRATION_OCTAVES / 2 ** population.CALIBRATION_STEPS  # octaves
        assert abs(np.log2(best / exact)) <= resolution
    assert population.closest_rate(final_fit, peak, 2.0) < peak  # unreachable: the highest tried, below the peak
    assert population.closest_rate(final_fit, peak, 0.0) >= peak / 2 ** population.CALIBRATION_OCTAVES


def test_level_names():
    assert population.level_name(0.8) == "0p80" and population.matched_name(0.95) == "matched_fit_0p95"


def test_learning_rate_at_follows_the_schedule(smoke_cfg):
    assert population.learning_rate_at(smoke_cfg, 12, 12) == pytest.approx(0.0)
    assert population.learning_rate_at(smoke_cfg, 12, 3) == pytest.approx(smoke_cfg.lr)
    assert np.isnan(population.learning_rate_at(smoke_cfg, 12, float("nan")))


def test_study_on_smoke_reads_the_declared_grid_and_equal_exposure(smoke_cfg):
    found = population.study(smoke_cfg, progress=False)
    pops = found["populations"]
    assert set(pops) == {"batch", "none"} and len(pops["batch"].zoos) == len(smoke_cfg.pools)
    assert found["levels"] == smoke_cfg.fit_levels and found["headline"] == smoke_cfg.headline_fit
    # each member is read where its own fit crosses each declared level (NaN where it does not)
    for norm, pop in pops.items():
        for level in found["levels"]:
            crossing = found["crossings"][norm][level]
            fit = np.concatenate([f for f in pop.fits], axis=1)  # (E, sum T)
            crossed = np.isfinite(crossing["epoch"])
            assert crossing["crossed"] == crossed.sum() and crossing["members"] == fit.shape[1]
            assert (fit.max(0)[crossed] >= level).all()
            per_epoch, share = population.member_steps(smoke_cfg, pop)
            np.testing.assert_allclose(crossing["steps"][crossed], crossing["epoch"][crossed] * per_epoch)
            np.testing.assert_allclose(crossing["exposures"][crossed], crossing["epoch"][crossed] * share)
    # design (b): same steps on the same data; BN at a lowered, calibrated rate; no-BN is the common population
    equal = found["equal_exposure"]
    assert equal["populations"]["none"] is pops["none"]
    assert equal["target_fit"] == pytest.approx(pops["none"].final_fit())
    arms = equal["arms"]
    assert arms["batch"]["steps"] == arms["none"]["steps"] and arms["batch"]["exposures"] == arms["none"]["exposures"]
    assert arms["batch"]["lr"] == equal["calibration"]["lr"] < smoke_cfg.lr
    assert arms["batch"]["lr_integral"] < arms["none"]["lr_integral"]
    assert equal["calibration"]["lr"] in equal["calibration"]["tried"]
    # the calibration models are never evaluated: their data draw is no pool's, so their zoo is another entry
    calibration = population.calibration_config(smoke_cfg)
    assert calibration.seeds[0] >= config.CALIBRATION_DRAWS and calibration.seeds[0] not in smoke_cfg.pools
    rate = equal["calibration"]["lr"]  # the evaluated BN zoos trained at this rate, and so did calibration models
    evaluated = {population.zoo_lib.zoo_entry(replace(population.pool_config(smoke_cfg, pool), lr=rate), "batch").key
                 for pool in smoke_cfg.pools}
    assert population.zoo_lib.zoo_entry(replace(calibration, lr=rate), "batch").key not in evaluated
    compared = population.comparisons(found, n_bootstrap=200)
    assert list(compared) == population.comparison_names(found)
    assert set(config.COMPARISONS) <= set(compared)
    assert compared["matched_fit"] is compared[population.matched_name(smoke_cfg.headline_fit)]
    same = compared["same_schedule"]
    n_models = smoke_cfg.n_models * len(smoke_cfg.pools)
    assert same["difference"]["n"] == n_models and same["difference"]["unit"] == "models"
    assert np.isclose(same["difference"]["mean"], same["batch"]["mean"] - same["none"]["mean"])
    # the statistic is the mean over models of acc(IN canaries) - acc(OUT canaries)
    per_model = np.concatenate([c["memorization"][-1] for c in pops["batch"].curves])
    assert np.isclose(same["batch"]["mean"], per_model.mean())
    entries = population.metric_entries(smoke_cfg, found, compared, "canary_memorization", what="canary memorization",
                                        higher_means="more memorization")
    assert set(entries) == {f"canary_memorization_{c}" for c in population.comparison_names(found)}
    assert all(e["unit"] == "models" and "n counts models" in e["description"] for e in entries.values())
    assert entries["canary_memorization_same_schedule"]["fit_level"] is None
    for level in found["levels"]:
        entry = entries[f"canary_memorization_{population.matched_name(level)}"]
        assert entry["comparison"] == "matched_fit" and entry["fit_level"] == level
        for norm in config.COMPARED_NORMS:
            crossing = found["crossings"][norm][level]
            np.testing.assert_equal(entry[norm]["steps"], crossing["mean_steps"])
            np.testing.assert_equal(entry[norm]["exposures"], crossing["mean_exposures"])
    headline = entries["canary_memorization_matched_fit"]
    assert headline["fit_level"] == smoke_cfg.headline_fit and "headline" in headline["description"]
    equal_entry = entries["canary_memorization_equal_exposure"]
    assert equal_entry["comparison"] == "equal_exposure" and equal_entry["fit_level"] == equal["target_fit"]
    assert equal_entry["batch"]["steps"] == equal_entry["none"]["steps"] == arms["none"]["steps"]
