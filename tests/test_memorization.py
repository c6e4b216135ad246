"""Known-answer tests of the memorization measurements (bnlib.memorization)."""

import math

import numpy as np
import pytest
import torch

from bnlib import config, data, memorization, runs, zoo

# ----------------------------------------------------------------------------- Feldman-Zhang estimator


def _logits_from_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax is exactly ``probabilities`` (rows sum to 1)."""
    return probabilities.log()


def test_subsampled_memorization_on_fixed_predictions():
    # T = 4 models, N = 3 examples, C = 2 classes; every example IN for models {0, 1} or {2, 3}.
    keep = torch.tensor([[1, 0, 1], [1, 0, 0], [0, 1, 1], [0, 1, 0]], dtype=torch.bool)
    labels = torch.tensor([0, 1, 0])
    # probability of class 0 given by each model to each example: (T, N)
    p_class0 = torch.tensor([[0.9, 0.2, 0.6],
                             [0.8, 0.1, 0.3],
                             [0.3, 0.4, 0.7],
                             [0.1, 0.3, 0.2]])
    logits = _logits_from_probabilities(torch.stack([p_class0, 1 - p_class0], dim=-1))  # (T, N, C)
    scores = memorization.subsampled_memorization(logits, labels, keep)
    # example 0 (label 0): in = models 0,1 -> correct 1,1; out = models 2,3 -> 0,0.
    # example 1 (label 1): in = models 2,3 -> p(1) = .6,.7 correct; out = 0,1 -> p(1) = .8,.9 correct.
    # example 2 (label 0): in = models 0,2 -> .6,.7 correct; out = 1,3 -> .3,.2 wrong.
    assert scores["hard"].tolist() == [1.0, 0.0, 1.0]
    expected_soft = [(0.9 + 0.8) / 2 - (0.3 + 0.1) / 2, (0.6 + 0.7) / 2 - (0.8 + 0.9) / 2,
                     (0.6 + 0.7) / 2 - (0.3 + 0.2) / 2]
    assert torch.allclose(scores["soft"], torch.tensor(expected_soft), atol=1e-6)
    assert torch.allclose(scores["in_soft"] - scores["out_soft"], scores["soft"])


def test_subsampled_memorization_keeps_leading_dimensions_and_flags_never_out():
    keep = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)  # example 0 is never OUT
    logits = torch.randn(3, 2, 2, 5)  # (checkpoints, T, N, C)
    scores = memorization.subsampled_memorization(logits, torch.tensor([1, 2]), keep)
    assert scores["hard"].shape == (3, 2)
    assert torch.isnan(scores["hard"][:, 0]).all() and not torch.isnan(scores["hard"][:, 1]).any()
    for index in range(3):  # same as the estimate of each checkpoint alone
        alone = memorization.subsampled_memorization(logits[index], torch.tensor([1, 2]), keep)
        assert torch.allclose(alone["soft"][1], scores["soft"][index, 1])


def test_zoo_uses_a_balanced_keep_mask_and_the_estimate_matches_a_loop(smoke_cfg):
    population = zoo.train_zoo(smoke_cfg, "batch", progress=False)
    keep = population.keep
    assert (keep.sum(0) == smoke_cfg.n_models // 2).all()  # every example IN for exactly T/2 models
    assert torch.equal(keep, data.balanced_keep_mask(smoke_cfg.n_models, keep.shape[1], seed=smoke_cfg.seeds[0],
                                                     strata=population.is_outlier))
    # every model trains on half of the canaries: the canary rate of a run on the whole pool
    assert (keep[:, population.is_outlier].sum(1) == int(population.is_outlier.sum()) // 2).all()
    scores = memorization.subsampled_memorization(population.logits, population.labels, keep)
    correct = population.logits.argmax(-1) == population.labels  # (T, N)
    for i in range(0, keep.shape[1], 37):  # slow, obviously right reference
        inside = [bool(correct[t, i]) for t in range(keep.shape[0]) if keep[t, i]]
        outside = [bool(correct[t, i]) for t in range(keep.shape[0]) if not keep[t, i]]
        assert math.isclose(float(scores["hard"][i]), np.mean(inside) - np.mean(outside), abs_tol=1e-6)


# ----------------------------------------------------------------------------- canaries of one run


def _rows(images: torch.Tensor) -> set[bytes]:
    return {image.numpy().tobytes() for image in images}


def test_inserted_canaries_are_in_the_training_tensors_and_held_out_ones_are_not(smoke_cfg):
    experiment = data.make_experiment_data(smoke_cfg, seed=smoke_cfg.seeds[0])
    train_rows = _rows(experiment.train_x)
    inserted, held_out = experiment.canary_x, experiment.heldout_canary_x
    assert len(inserted) == len(held_out) == smoke_cfg.n_canaries
    assert _rows(inserted) <= train_rows
    assert not (_rows(held_out) & train_rows)
    # the run measures exactly these canaries: its labels are the inserted / held-out labels
    run = runs.train_run(smoke_cfg, "none", smoke_cfg.seeds[0], progress=False)
    assert torch.equal(run.canary_in_labels, experiment.canary_y)
    assert torch.equal(run.canary_out_labels, experiment.heldout_canary_y)
    # the same seed gives the same canaries to every norm (the pairing of the per-canary test)
    assert torch.equal(data.make_experiment_data(smoke_cfg, seed=smoke_cfg.seeds[0]).canary_x, inserted)


# ----------------------------------------------------------------------------- matched fit


def _curve(fit, memorization_values, test=None):
    fit = np.asarray(fit, dtype=float)
    return {"fit": fit, "memorization": np.asarray(memorization_values, dtype=float),
            "test": fit if test is None else np.asarray(test, dtype=float)}


def test_ecdf_and_most_memorized():
    values, fraction = memorization.ecdf(np.array([0.3, np.nan, -0.1, 0.3]))
    assert values.tolist() == [-0.1, 0.3, 0.3] and np.allclose(fraction, [1 / 3, 2 / 3, 1])
    hard = torch.tensor([0.5, 1.0, float("nan"), 0.5, 0.75])
    soft = torch.tensor([0.4, 0.9, 0.1, 0.3, 0.2])
    mask = torch.tensor([True, False, True, True, True])
    assert memorization.most_memorized(hard, soft, mask, 3).tolist() == [4, 0, 3]


# ----------------------------------------------------------------------------- parameters


def test_true_label_probability():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    expected = torch.softmax(logits, 1)[[0, 1], [0, 2]]
    assert torch.allclose(memorization.true_label_probability(logits, labels), expected)


def test_chapter_params_profiles_and_bad_values():
    _, params = config.load("quick", extras=memorization.ChapterParams)
    assert params.n_bootstrap == 2000
    assert config.load("smoke", extras=memorization.ChapterParams)[1].n_bootstrap < params.n_bootstrap
    with pytest.raises(ValueError, match="'n_bootstrap'"):
        config.load("quick", extras=memorization.ChapterParams, n_bootstrap=0)
    with pytest.raises(ValueError, match="fit_levels"):  # the zoo's declared grid (ExperimentConfig), validated
        config.load("quick", extras=memorization.ChapterParams, fit_levels="0.9,-1")


def test_check_norms_and_describe_difference(smoke_cfg):
    with pytest.raises(ValueError, match="'norms'.*'none'"):
        memorization.check_config(config.load("smoke", norms="batch,group"))
    memorization.check_config(smoke_cfg)
    text = memorization.describe_difference({"mean": 0.1, "ci95": [0.05, 0.15], "n": 3}, 0.01, "t-test")
    assert "+0.100" in text and "p = 0.01" in text and "significant" in text and "not" not in text
    assert "not significant" in memorization.describe_difference({"mean": 0.1, "ci95": [-1, 1], "n": 3}, 0.4, "t")
    assert "not measurable" in memorization.describe_difference({"mean": np.nan, "ci95": [np.nan] * 2, "n": 0},
                                                                np.nan, "t")


# ----------------------------------------------------------------------------- per-model memorization of a zoo

def _balanced_population(n_pairs=3, n_inliers=8, n_outliers=6, epochs=4, classes=3, seed=0):
    """A fake zoo: complementary pairs, each model IN on exactly half of the inliers and half of the outliers."""
    from types import SimpleNamespace

    generator = torch.Generator().manual_seed(seed)
    n = n_inliers + n_outliers
    is_outlier = torch.arange(n) >= n_inliers
    keep = []
    for _ in range(n_pairs):
        half = torch.zeros(n, dtype=torch.bool)
        for group in (torch.nonzero(~is_outlier).squeeze(1), torch.nonzero(is_outlier).squeeze(1)):
            half[group[torch.randperm(len(group), generator=generator)[: len(group) // 2]]] = True
        keep += [half, ~half]
    keep = torch.stack(keep)
    labels = torch.randint(0, classes, (n,), generator=generator)
    logits = torch.randn(epochs, len(keep), n, classes, generator=generator)
    return SimpleNamespace(checkpoint_logits=logits, labels=labels, keep=keep, is_outlier=is_outlier,
                           checkpoint_epochs=torch.arange(1, epochs + 1, dtype=torch.float32))


def test_signed_scores_mean_is_the_feldman_zhang_mean_and_the_per_model_canary_memorization():
    population = _balanced_population()
    signed = memorization.signed_scores(population)  # (T, N)
    outliers = population.is_outlier.numpy()
    fz = memorization.subsampled_memorization(population.checkpoint_logits[-1], population.labels, population.keep)
    curves = memorization.zoo_canary_curves(population)
    assert np.isclose(signed[:, outliers].mean(), float(fz["hard"][population.is_outlier].mean()))
    assert np.isclose(signed[:, outliers].mean(), curves["memorization"][-1].mean())
    soft = memorization.signed_scores(population, score="soft")
    assert np.isclose(soft[:, ~outliers].mean(), float(fz["soft"][~population.is_outlier].mean()))
    with pytest.raises(ValueError, match="'score'"):
        memorization.signed_scores(population, score="medium")


def test_zoo_canary_curves_against_a_loop():
    population = _balanced_population(seed=3)
    curves = memorization.zoo_canary_curves(population)
    for e in range(population.checkpoint_logits.shape[0]):
        for t in range(population.keep.shape[0]):
            hits = population.checkpoint_logits[e, t].argmax(-1) == population.labels
            keep, outlier = population.keep[t], population.is_outlier
            fit = hits[keep & ~outlier].float().mean()
            mem = hits[keep & outlier].float().mean() - hits[~keep & outlier].float().mean()
            assert np.isclose(curves["fit"][e, t], float(fit)) and np.isclose(curves["memorization"][e, t], float(mem))


def test_crossing_positions_read_the_first_actual_crossing_of_a_non_monotone_curve():
    fit = np.array([[0.5, 0.5], [0.8, 0.6], [0.7, 0.6], [0.9, 0.6]])  # model 1 never reaches 0.75
    np.testing.assert_allclose(memorization.crossing_positions(fit, 0.75), [0.25 / 0.3, np.nan])
    # after the dip model 0 crosses 0.85 only between its last two checkpoints
    np.testing.assert_allclose(memorization.crossing_positions(fit, 0.85)[:1], [2.75])
    values = np.array([[0.0], [1.0], [5.0], [2.0]])
    np.testing.assert_allclose(memorization.at_positions(values, np.array([2.75])), [5.0 - 0.75 * 3.0])


def test_read_at_level_and_positions_per_model():
    curves = {"epoch": np.array([2.0, 4.0, 6.0]), "fit": np.array([[0.1, 0.5], [0.5, 0.6], [0.9, 0.7]]),
              "memorization": np.array([[0.0, 0.0], [0.4, 0.2], [0.8, 0.6]])}
    read = memorization.read_at_level(curves, 0.7)
    np.testing.assert_allclose(read["position"], [1.5, 2.0])
    np.testing.assert_allclose(read["epoch"], [5.0, 6.0])
    np.testing.assert_allclose(read["value"], [0.6, 0.6])
    assert np.isnan(memorization.read_at_level(curves, 0.95)["value"]).all()


def test_stack_pools_keeps_each_pools_models_in_its_own_columns():
    stacked, pools = memorization.stack_pools([np.ones((2, 3)), 2 * np.ones((1, 2))])
    assert stacked.shape == (3, 5) and list(pools) == [0, 0, 1]
    assert np.isnan(stacked[:2, 3:]).all() and np.isnan(stacked[2, :3]).all() and (stacked[2, 3:] == 2).all()
