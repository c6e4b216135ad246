"""Ablations as small populations (bnlib.ablations): the plan of each sweep, the equal-steps rule, the paired
inference over model pairs with the book's five verdicts (known answers against scipy and statsmodels, a planted
effect found and a null not), and one point trained at smoke."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats
from statsmodels.stats.weightstats import ttost_paired

from bnlib import ablations, config, memorization, train, zoo

# ----------------------------------------------------------------------------- parameters and plans

def test_the_margin_is_the_one_config_declares():
    assert ablations.equivalence_margin() == config.EQUIVALENCE_MARGINS["ablation_canary_memorization"]


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="'variant_norms'"):
        config.load("smoke", extras=ablations.ChapterParams, variant_norms="batch,instance")
    with pytest.raises(ValueError, match="'fit_level'"):
        config.load("smoke", extras=ablations.ChapterParams, fit_level=1.5)
    with pytest.raises(ValueError, match="'sweeps'"):
        config.load("smoke", extras=ablations.ChapterParams, sweeps="batch_size,dropout")
    with pytest.raises(ValueError, match="'batch_lr_rule'"):
        config.load("smoke", extras=ablations.ChapterParams, batch_lr_rule="cubic")
    with pytest.raises(ValueError, match="'pair_count'"):
        config.load("smoke", extras=ablations.ChapterParams, pair_count=4)
    cfg, params = config.load("smoke", extras=ablations.ChapterParams, batch_sizes="16,64")
    with pytest.raises(ValueError, match="'batch_sizes'.*must contain the chapter's batch_size"):
        ablations.check_config(cfg, params)
    cfg, params = config.load("smoke", extras=ablations.ChapterParams, variant_norms="group,none")
    with pytest.raises(ValueError, match="'variant_norms' contains 'none'"):
        ablations.check_config(cfg, params)
    with pytest.raises(ValueError, match="'sweep'"):
        ablations.plan(cfg, params, "dropout")


def test_every_profile_validates_and_runs_at_least_eight_pairs():
    for profile in config.PROFILE_NAMES:
        cfg, params = config.load(profile, extras=ablations.ChapterParams)
        ablations.check_config(cfg, params)
        assert params.pair_count >= ablations.MIN_PAIRS


def test_equal_steps_rule_known_answers():
    cfg = config.load("quick", epochs=12)  # 12 epochs; a member trains on 1,250 inliers + 50 canaries: 1,300
    assert ablations.member_examples(cfg) == 1300
    assert ablations.batch_size_overrides(cfg, 512, "linear") == {"batch_size": 512, "epochs": 60, "lr": 0.2}
    assert ablations.batch_size_overrides(cfg, 32, "linear") == {"batch_size": 32, "epochs": 3, "lr": 0.0125}
    assert ablations.batch_size_overrides(cfg, 512, "sqrt")["lr"] == pytest.approx(0.1)
    assert ablations.batch_size_overrides(cfg, 512, "constant")["lr"] == cfg.lr
    for batch in (32, 64, 256, 512):  # equal steps: epochs x (1300 // B) = 12 x 10
        assert ablations.batch_size_overrides(cfg, batch, "linear")["epochs"] * (1300 // batch) == 120
    with pytest.raises(ValueError, match="'batch_lr_rule'"):
        ablations.batch_size_overrides(cfg, 512, "cubic")


def test_plans_name_their_points_and_pair_the_arms():
    cfg, params = config.load("quick", extras=ablations.ChapterParams, sweeps=",".join(ablations.SWEEPS))
    batch = ablations.plan(cfg, params, "batch_size")
    assert [p.name for p in batch] == ["batch32", "batch128", "batch256"]
    assert batch[1].arms == (ablations.Arm("batch"), ablations.Arm("none"))  # the chapter's own: no override
    assert dict(batch[2].arms[0].overrides) == {"batch_size": 256, "epochs": 2 * cfg.epochs, "lr": 0.1}
    paper = ablations.plan(*config.load("paper", extras=ablations.ChapterParams), "batch_size")
    assert [p.name for p in paper] == ["batch32", "batch128", "batch512"]
    assert all(p.arms[0].overrides == p.arms[1].overrides for p in batch)  # only the norm differs within a pair
    norm = ablations.plan(cfg, params, "norm")
    assert [p.arms[0].norm for p in norm] == ["batch", "ghost", "running", "group", "layer"]
    assert {p.arms[1] for p in norm} == {ablations.Arm("none")}  # every normalizer against the same no-norm models
    assert [p.name for p in ablations.plan(cfg, params, "canary_rate")] == ["rate4pct", "rate1pct", "rate10pct"]
    assert [p.name for p in ablations.plan(cfg, params, "lr")] == ["lr0p05", "lr0p02", "lr0p1"]
    assert [p.label for p in ablations.plan(cfg, params, "length")] == ["1x", "2x"]


def test_a_sweep_the_profile_does_not_name_is_empty(smoke_cfg):
    params = ablations.ChapterParams(sweeps=("norm",))
    assert ablations.sweep(smoke_cfg, params, "batch_size", progress=False) == []


def test_arm_config_is_the_first_pool_with_pair_count_members():
    cfg, params = config.load("quick", extras=ablations.ChapterParams)
    arm_cfg = ablations.arm_config(cfg, params, ablations.Arm("batch", (("lr", 0.1),)))
    assert arm_cfg.seeds == (cfg.pools[0],) and arm_cfg.pools == (cfg.pools[0],)
    assert arm_cfg.n_models == params.pair_count and arm_cfg.lr == 0.1
    # the baseline arm's members are the memorization chapter's pool-0 zoo members (n_models is not in the key)
    base = ablations.arm_config(cfg, params, ablations.Arm("batch"))
    from bnlib import population
    assert zoo.zoo_config(base, "batch") == zoo.zoo_config(population.pool_config(cfg, cfg.pools[0]), "batch")


def test_schedule_facts_known_answers():
    cfg = config.load("smoke", epochs=3, batch_size=10, lr=0.2, schedule="constant")
    facts = ablations.schedule_facts(cfg, [25, 25])  # 2 steps per epoch (the partial batch is dropped)
    assert facts["steps"] == 6 and facts["exposures"] == pytest.approx(6 * 10 / 25)
    assert facts["lr_integral"] == pytest.approx(6 * 0.2)
    onecycle = ablations.schedule_facts(config.load("smoke", epochs=3, batch_size=10, lr=0.2), [25])
    assert onecycle["lr_integral"] == pytest.approx(sum(train.learning_rate(s, 6, 0.2, "onecycle") for s in range(6)))


# ----------------------------------------------------------------------------- the paired inference

def test_paired_inference_is_scipys_paired_t_and_statsmodels_tost():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.3, 0.2, 12), rng.normal(0.2, 0.2, 12)
    result = ablations.paired_inference(a, b, margin=0.1)
    reference = scipy_stats.ttest_rel(a, b)
    assert result["p_value"] == pytest.approx(reference.pvalue)
    assert result["mean"] == pytest.approx(np.mean(a - b)) and result["n"] == 12 and result["unit"] == "models"
    assert result["df"] == 11
    low, high = scipy_stats.t.interval(0.95, 11, loc=np.mean(a - b), scale=scipy_stats.sem(a - b))
    assert result["ci95"] == pytest.approx([low, high])
    assert result["p_equivalence"] == pytest.approx(ttost_paired(a, b, -0.1, 0.1)[0])
    # a pair with a missing value (matched fit not reached by one member) drops out of both arms
    b_missing = b.copy()
    b_missing[3] = np.nan
    assert ablations.paired_inference(a, b_missing, 0.1)["n"] == 11


def test_a_planted_effect_is_found_and_a_null_is_not():
    rng = np.random.default_rng(1)
    model_effect = rng.normal(0, 0.1, 8)  # what a pair shares: its data, keep mask and seed
    planted = ablations.paired_inference(model_effect + 0.3 + rng.normal(0, 0.05, 8),
                                         model_effect + rng.normal(0, 0.05, 8), margin=0.08)
    assert planted["verdict"].startswith("BN higher") and planted["ci95"][0] > 0.2
    reversed_ = ablations.paired_inference(model_effect, model_effect + 0.3 + rng.normal(0, 0.05, 8), margin=0.08)
    assert reversed_["verdict"].startswith("no-BN higher")
    null = ablations.paired_inference(model_effect + rng.normal(0, 0.01, 8), model_effect + rng.normal(0, 0.01, 8),
                                      margin=0.08)
    assert null["verdict"].startswith("equivalent within ±0.08")
    noisy = ablations.paired_inference(rng.normal(0, 0.5, 8), rng.normal(0, 0.5, 8), margin=0.08)
    assert noisy["verdict"].startswith("inconclusive (could detect only ≥")  # 8 pairs cannot see the margin
    z = rng.normal(0, 1, 8)
    z = (z - z.mean()) / z.std(ddof=1)  # differences of mean 0.05, SE 0.0245: p ~0.08, TOST fails, X ~0.08
    undecided = ablations.paired_inference(0.05 + 0.0245 * np.sqrt(8) * z, np.zeros(8), margin=0.08)
    assert undecided["verdict"].startswith("no difference detected (could detect ≥")


def test_null_type_one_error_of_the_paired_t_is_nominal():
    rng = np.random.default_rng(2)
    rejections = [ablations.paired_inference(rng.normal(0, 1, 8), rng.normal(0, 1, 8), 0.08)["p_value"] < 0.05
                  for _ in range(1000)]
    assert 0.03 <= np.mean(rejections) <= 0.07


def test_no_verdict_from_fewer_than_eight_pairs_and_constant_differences():
    few = ablations.paired_inference([0.9] * 7, [0.1] * 7, margin=0.08)
    assert few["verdict"] == "inconclusive (7 model pairs; at least 8 needed)"
    empty = ablations.paired_inference([], [], margin=0.08)
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and empty["verdict"].startswith("inconclusive")
    constant = ablations.paired_inference([0.5] * 8, [0.25] * 8, margin=0.08)  # every pair differs by 0.25
    assert constant["verdict"].startswith("BN higher") and constant["ci95"] == [0.25, 0.25]
    assert ablations.paired_inference([0.5] * 8, [0.5] * 8, 0.08)["verdict"].startswith("equivalent within")
    with pytest.raises(ValueError, match="'first'"):
        ablations.paired_inference([0.1, 0.2], [0.1], margin=0.08)


def test_detectable_difference_uses_the_t_of_the_verdict():
    rng = np.random.default_rng(3)
    a, b = rng.normal(0, 1, 8), rng.normal(0, 1, 8)
    result = ablations.paired_inference(a, b, margin=0.08)
    expected = (scipy_stats.t.ppf(0.975, 7) + scipy_stats.t.ppf(0.8, 7)) * scipy_stats.sem(a - b)
    assert result["detectable_difference"] == pytest.approx(expected)


def test_not_reached_names_who_never_reaches_the_level():
    arms = [{"norm": "batch", "matched_fit": np.array([0.1, 0.2])},
            {"norm": "none", "matched_fit": np.array([np.nan, 0.2])}]
    assert ablations.not_reached(arms, 0.95) == "not reached (1 of 2 'none' models never reach fit 0.95)"
    assert ablations.not_reached(arms[:1], 0.95) is None


# ----------------------------------------------------------------------------- one point at smoke

def test_compare_point_pairs_members_and_reads_them_from_the_zoo(smoke_cfg):
    params = ablations.ChapterParams(fit_level=0.15, sweeps=("batch_size",))
    point = ablations.Point("batch_size", "32", "batch32", (ablations.Arm("batch"), ablations.Arm("none")))
    found = ablations.compare_point(smoke_cfg, params, point, progress=False)
    batch, none = found["arms"]
    assert batch["same_schedule"].shape == (params.pair_count,) == none["same_schedule"].shape
    assert found["same_schedule"]["n"] == params.pair_count and found["same_schedule"]["unit"] == "models"
    zoos = [zoo.load_zoo(ablations.arm_config(smoke_cfg, params, arm), arm.norm) for arm in point.arms]
    assert bool((zoos[0].keep == zoos[1].keep).all())  # member t of both arms trained on the same examples
    curves = memorization.zoo_canary_curves(zoos[0])
    np.testing.assert_allclose(batch["same_schedule"], curves["memorization"][-1])
    np.testing.assert_allclose(batch["test"], zoos[0].test_accuracy().numpy())
    reached = found["matched_fit"]["reached"]
    assert reached == (np.isfinite(batch["matched_fit"]).all() and np.isfinite(none["matched_fit"]).all())
    if not reached:
        assert found["matched_fit"]["verdict"].startswith("not reached")
    assert zoo.missing_members(ablations.arm_config(smoke_cfg, params, point.arms[0]), "batch") == []  # cached
