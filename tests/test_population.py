"""One population per norm, three comparisons (bnlib.population), on the smoke profile."""

import numpy as np
import pytest

from bnlib import config, population


def test_closest_length_finds_the_schedule_that_ends_at_the_target_with_few_calls():
    calls = []

    def final_fit(epochs):
        calls.append(epochs)
        return 1 - 0.5 * 0.8 ** epochs  # grows with the schedule's length

    for target in (0.6, 0.75, 0.9, 0.99):
        calls.clear()
        best = population.closest_length(final_fit, 30, target)
        assert len(set(calls)) <= 8
        assert best == min(range(1, 31), key=lambda e: abs(final_fit(e) - target))
    assert population.closest_length(final_fit, 30, 2.0) == 30  # unreachable: the longest
    assert population.closest_length(final_fit, 30, 0.0) == 1


def test_learning_rate_at_follows_the_schedule(smoke_cfg):
    assert population.learning_rate_at(smoke_cfg, 12, 12) == pytest.approx(0.0)
    assert population.learning_rate_at(smoke_cfg, 12, 3) == pytest.approx(smoke_cfg.lr)
    assert np.isnan(population.learning_rate_at(smoke_cfg, 12, float("nan")))


def test_study_on_smoke_gives_three_paired_comparisons(smoke_cfg):
    found = population.study(smoke_cfg, progress=False)
    pops = found["populations"]
    assert set(pops) == {"batch", "none"} and len(pops["batch"].zoos) == len(smoke_cfg.pools)
    # every model of every norm reaches the top level on the common schedule
    for norm in pops:
        assert all((fit.max(0) >= found["level"]).all() for fit in pops[norm].fits)
    annealed = found["annealed"]
    assert annealed["populations"][annealed["slower"]] is pops[annealed["slower"]]
    compared = population.comparisons(found, n_bootstrap=200)
    assert set(compared) == set(config.COMPARISONS)
    same = compared["same_schedule"]
    n_models = smoke_cfg.n_models * len(smoke_cfg.pools)
    assert same["difference"]["n"] == n_models and same["difference"]["unit"] == "models"
    assert np.isclose(same["difference"]["mean"], same["batch"]["mean"] - same["none"]["mean"])
    # the statistic is the mean over models of acc(IN canaries) - acc(OUT canaries)
    per_model = np.concatenate([c["memorization"][-1] for c in pops["batch"].curves])
    assert np.isclose(same["batch"]["mean"], per_model.mean())
    entries = population.metric_entries(smoke_cfg, found, compared, "canary_memorization", what="canary memorization",
                                        higher_means="more memorization")
    assert set(entries) == {f"canary_memorization_{c}" for c in config.COMPARISONS}
    assert all(e["unit"] == "models" and "n counts models" in e["description"] for e in entries.values())
