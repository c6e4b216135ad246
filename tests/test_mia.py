"""Known-answer tests of the membership-inference attacks and metrics (bnlib.mia, mia_attacks, mia_eval)."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from bnlib import config, data, mia, zoo


def _mean_auc(scores: np.ndarray, keep: np.ndarray) -> float:
    return float(mia.estimate(scores, keep, np.ones(keep.shape[1], bool))["point"]["auc"].mean())


def _synthetic_signals(phi: np.ndarray, keep: np.ndarray) -> mia.Signals:
    """Signals whose phi is given (T, N); the other fields are unused by LiRA."""
    empty = np.zeros((phi.shape[0], 1, 1))
    return mia.Signals(keep=keep, phi=phi[..., None], log_p=phi[..., None], max_log_p=phi[..., None],
                       population_log_p=empty)


# ----------------------------------------------------------------------------- signals

def test_logit_scaled_confidence_is_stable_at_extreme_logits():
    logits = torch.tensor([[[1000.0, 0.0, 0.0], [1000.0, 0.0, 0.0], [1e4, -1e4, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([0, 1, 2, 1])
    phi = mia.logit_scaled_confidence(logits, labels)[0, :, 0]
    expected = [1000 - math.log(2), -1000.0, 3.0 - 1e4, math.log(1 / 3) - math.log(2 / 3)]
    assert np.allclose(phi, expected, rtol=1e-12, atol=1e-9) and np.isfinite(phi).all()


def test_logit_scaled_confidence_matches_the_naive_formula_for_moderate_logits():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 2, 10, generator=generator, dtype=torch.float64) * 4  # (T, N, A, C)
    labels = torch.randint(0, 10, (50,), generator=generator)
    p = torch.softmax(logits, -1).gather(-1, labels.view(1, -1, 1, 1).expand(3, 50, 2, 1)).squeeze(-1)
    naive = (torch.log(p) - torch.log1p(-p)).numpy()
    assert np.allclose(mia.logit_scaled_confidence(logits, labels), naive, atol=1e-9)
    assert np.allclose(mia.true_class_log_probability(logits, labels), torch.log(p).numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- metrics

def test_roc_metrics_on_a_hand_made_ranking():
    # 4 members, 200 non-members; one non-member outranks two of the members
    scores = np.concatenate([[10.0, 9.0, 5.0, 4.0], [6.0], np.zeros(199)])
    is_member = np.zeros(204, dtype=bool)
    is_member[:4] = True
    out = mia.roc_metrics(scores, is_member)
    assert out["tpr_at_0.1pct_fpr"] == 0.5  # no false positive allowed below 1/200: the top two members
    assert out["tpr_at_1pct_fpr"] == 1.0  # two false positives allowed: all four members
    assert out["auc"] == pytest.approx(1 - 2 / (4 * 200))
    assert out["balanced_accuracy"] == pytest.approx(1 - (1 / 200) / 2)


def test_loss_attack_roc_matches_the_analytic_roc():
    # Two classes, logits (s, 0), label 0: loss = softplus(-s) is monotone in s, so the loss attack's ROC
    # is that of s, N(delta, 1) for members vs N(0, 1): TPR(FPR) = 1 - Phi(Phi^-1(1 - FPR) - delta).
    delta, n = 1.5, 20000
    rng = np.random.default_rng(1)
    keep = np.zeros((4, n), dtype=bool)
    keep[:, : n // 2] = True
    s = rng.normal(size=(4, n)) + delta * keep
    logits = torch.from_numpy(np.stack([s, np.zeros_like(s)], -1))
    signals = mia.Signals.from_logits(torch.from_numpy(keep), logits, torch.zeros(n, dtype=torch.long),
                                      logits[:, :10], torch.zeros(10, dtype=torch.long))
    scores = mia.attack_scores(signals, "loss")
    metrics = mia.roc_metrics(scores[0], keep[0])
    assert metrics["auc"] == pytest.approx(scipy_stats.norm.cdf(delta / math.sqrt(2)), abs=0.01)
    analytic_tpr = 1 - scipy_stats.norm.cdf(scipy_stats.norm.ppf(1 - 0.01) - delta)
    assert metrics["tpr_at_1pct_fpr"] == pytest.approx(analytic_tpr, abs=0.03)


# ----------------------------------------------------------------------------- LiRA

def test_fit_gaussians_matches_a_loop_over_examples():
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(9, 30, 2))
    keep = rng.random((9, 30)) < 0.5
    keep[:2, :], keep[2:4, :] = True, False  # at least two IN and two OUT models per example
    fit = mia.fit_gaussians(phi, keep, ~keep, "per_example")
    for i in range(30):
        inside, outside = phi[keep[:, i], i], phi[~keep[:, i], i]
        assert np.allclose(fit.mean_in[i], inside.mean(0)) and np.allclose(fit.std_in[i], inside.std(0, ddof=1))
        assert np.allclose(fit.mean_out[i], outside.mean(0)) and np.allclose(fit.std_out[i], outside.std(0, ddof=1))
    pooled = mia.fit_gaussians(phi, keep, ~keep, "global")
    residuals = np.concatenate([phi[keep[:, i], i] - phi[keep[:, i], i].mean(0) for i in range(30)])
    assert np.allclose(pooled.std_in, np.sqrt((residuals ** 2).sum() / ((keep.sum() - 30) * 2)))


def test_balanced_shadows_leave_equal_in_and_out_counts():
    keep = data.balanced_keep_mask(8, 50, seed=1).numpy()
    for target in range(8):
        in_mask, out_mask = mia.balanced_shadows(keep, target)
        assert not in_mask[target].any() and not out_mask[target].any()
        assert (in_mask.sum(0) == 3).all() and (out_mask.sum(0) == 3).all()
        assert not (in_mask & ~keep).any() and not (out_mask & keep).any()
    with pytest.raises(ValueError, match="balanced"):
        mia.balanced_shadows(np.ones((4, 3), dtype=bool), 0)


def test_leave_one_out_lira_is_unbiased_under_the_null():
    # phi = example effect + model effect + noise, no membership information. Without balanced shadows,
    # LiRA's leave-one-out score would rank members *lower* (AUC about 0.47 at T=8), and with a fixed
    # choice of the shadow to drop, the model effects would leak (see mia.balanced_shadows).
    rng = np.random.default_rng(6)
    keep = data.balanced_keep_mask(8, 4000, seed=2).numpy()
    model_effect = np.array([3.0, 0, 0, 0, 0, 0, 0, -1.0])[:, None]
    signals = _synthetic_signals(rng.normal(0, 2, 4000) + model_effect + rng.normal(0, 1, (8, 4000)), keep)
    for attack in ("lira_online", "lira_online_global", "lira_offline", "lira_offline_global"):
        assert _mean_auc(mia.attack_scores(signals, attack), keep) == pytest.approx(0.5, abs=0.012), attack


def test_lira_reaches_the_optimal_auc_of_known_gaussians():
    # phi of example i: N(mu_i, sigma^2) when OUT, N(mu_i + delta, sigma^2) when IN, mu_i ~ N(0, tau^2).
    # The likelihood ratio is the optimal test: AUC = Phi(delta / sqrt(2 sigma^2)). A global threshold on
    # phi (what the loss attack does) cannot remove the spread of mu_i: AUC = Phi(delta / sqrt(2 sigma^2 + 2 tau^2)).
    n_models, n, delta, sigma, tau = 64, 2000, 1.0, 1.0, 2.0
    rng = np.random.default_rng(3)
    keep = data.balanced_keep_mask(n_models, n, seed=0).numpy()
    phi = rng.normal(0, tau, n) + delta * keep + rng.normal(0, sigma, (n_models, n))
    signals = _synthetic_signals(phi, keep)
    optimal = scipy_stats.norm.cdf(delta / math.sqrt(2 * sigma**2))
    # per-example variances from 31 shadows cost about 0.01 of AUC; the global one is nearly optimal
    for attack, tolerance in (("lira_online", 0.015), ("lira_online_global", 0.008), ("lira_offline_global", 0.008)):
        assert _mean_auc(mia.attack_scores(signals, attack), keep) == pytest.approx(optimal, abs=tolerance), attack
    assert _mean_auc(mia.attack_scores(signals, "loss"), keep) == pytest.approx(
        scipy_stats.norm.cdf(delta / math.sqrt(2 * sigma**2 + 2 * tau**2)), abs=0.01)


# ----------------------------------------------------------------------------- RMIA

def test_rmia_score_matches_the_pairwise_definition():
    rng = np.random.default_rng(4)
    models, n, m = 7, 40, 25
    log_p = np.log(rng.uniform(0.05, 1, (models, n, 2)))  # model 0 is the target
    population = np.log(rng.uniform(0.05, 1, (models, m, 2)))
    keep = rng.random((models, n)) < 0.5
    keep[1], keep[2] = True, False
    shadows = np.arange(models)[:, None] > 0
    in_mask, out_mask, population_mask = keep & shadows, ~keep & shadows, np.broadcast_to(shadows, (models, m))
    p, pz = np.exp(log_p).mean(-1), np.exp(population).mean(-1)  # probabilities averaged over augmentations
    for online in (True, False):
        score = mia.rmia_score(log_p[0], log_p, in_mask, out_mask, population[0], population, population_mask,
                               online=online, gamma=1.3)
        mean_out = np.array([p[1:, i][~keep[1:, i]].mean() for i in range(n)])
        if online:
            prior_x = (np.array([p[1:, i][keep[1:, i]].mean() for i in range(n)]) + mean_out) / 2
            prior_z = pz[1:].mean(0)
        else:
            a = mia.RMIA_OFFLINE_A
            prior_x, prior_z = ((1 + a) * mean_out + 1 - a) / 2, ((1 + a) * pz[1:].mean(0) + 1 - a) / 2
        ratio_x, ratio_z = p[0] / prior_x, pz[0] / prior_z
        reference = (ratio_x[:, None] / ratio_z[None, :] > 1.3).mean(1)
        assert np.allclose(score, reference)


# ----------------------------------------------------------------------------- null audit on real models

def test_null_audit_gives_chance_on_points_no_model_trained_on():
    # Test points are members of no model; random "membership" labels for them carry no information.
    cfg = config.load("smoke", device="cpu", n_models=8)
    trained = zoo.train_zoo(cfg, "batch", progress=False)
    fake_keep = data.balanced_keep_mask(cfg.n_models, len(trained.test_labels), seed=5).numpy()
    signals = mia.Signals.from_logits(torch.from_numpy(fake_keep), trained.test_logits, trained.test_labels,
                                      trained.logits, trained.labels)
    everything = np.ones(len(trained.test_labels), bool)
    resamples = mia.Resamples.draw(cfg.n_models, len(everything), 1000)
    # Our attacks only: the reference port keeps the reference code's leave-one-out shadows (every other model,
    # unbalanced), whose null bias is measured by mia.null_leave_one_out_auc and shown in the chapter.
    ours = [attack for attack in mia.ATTACKS if not attack.startswith("lira_reference")]
    # one interval per attack: Bonferroni over the family, so that the test fails on a bias, not on multiplicity
    confidence = 1 - 0.05 / len(ours)
    for attack in ours:
        measured = mia.estimate(mia.attack_scores(signals, attack), fake_keep, everything, resamples)
        summary = mia.interval(measured["point"]["auc"], measured["resampled"]["auc"], resamples, confidence)
        assert summary["ci"][0] <= 0.5 <= summary["ci"][1], (attack, summary)
        assert abs(summary["mean"] - 0.5) < 0.06


# ----------------------------------------------------------------------------- querying and the chapter's pieces

def test_train_mode_queries_differ_only_with_batchnorm(smoke_cfg):
    for norm in ("batch", "none"):
        trained = zoo.train_zoo(smoke_cfg, norm, progress=False)
        before = {k: v.clone() for k, v in trained.state_dict(0).items()}
        eval_pool, eval_test = mia.query_zoo(trained, smoke_cfg, "eval")
        assert eval_pool.shape == (smoke_cfg.n_models, len(trained.labels), 1, 10)
        assert eval_test.shape[1] == len(trained.test_labels)
        for mode in ("train_shuffled", "train_pool_order"):
            train_pool, _ = mia.query_zoo(trained, smoke_cfg, mode)
            assert train_pool.shape == eval_pool.shape
            differs = not torch.allclose(eval_pool, train_pool, atol=1e-4)
            assert differs == (norm == "batch"), (norm, mode)
        assert all(torch.equal(before[k], v) for k, v in trained.state_dict(0).items())
    with pytest.raises(ValueError, match="'mode'"):
        mia.query_zoo(trained, smoke_cfg, "train")


def test_augmented_queries():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5)
    assert mia.augment_queries(x, "none").shape == (1, 2, 1, 5, 5)
    views = mia.augment_queries(x, "flip_shift")
    assert views.shape == (10, 2, 1, 5, 5) and torch.equal(views[0], x) and torch.equal(views[1].flip(-1), x)
    with pytest.raises(ValueError, match="query_augment"):
        mia.augment_queries(x, "rotate")


def test_measure_a_zoo_and_the_matched_fit_level(smoke_cfg):
    params = config.load("smoke", extras=mia.ChapterParams)[1]
    trained = zoo.train_zoo(smoke_cfg, "batch", progress=False)
    measured = mia.cached_measure(trained, smoke_cfg, params)
    assert set(measured["attacks"]) == set(mia.ATTACKS)
    headline = measured["attacks"][params.attack]
    for group in ("outliers", "inliers"):
        assert headline[group]["point"]["auc"].shape == (smoke_cfg.n_models,)
        assert headline[group]["resampled"]["auc"].shape == (smoke_cfg.n_models, params.n_bootstrap)
        assert measured["train_mode"]["train_pool_order"][group]["point"]["auc"].shape == (smoke_cfg.n_models,)
    fit = measured["fit"]
    epochs = len(trained.checkpoint_epochs)
    assert fit["train_accuracy"].shape == fit["outliers"]["point"]["auc"].shape == (epochs, smoke_cfg.n_models)
    assert fit["outliers"]["resampled"]["auc"].shape == (epochs, smoke_cfg.n_models, params.n_bootstrap)
    level = mia.matched_fit_level({"batch": fit})
    point, resampled = mia.at_fit_level(fit, "outliers", "auc", level)
    assert not np.isnan(point).any() and resampled.shape == (smoke_cfg.n_models, params.n_bootstrap)
    assert np.allclose(point, mia.at_fit_level(fit, "outliers", "auc", level)[0])
    with pytest.raises(ValueError, match="matched_fit_level"):
        mia.matched_fit_level({"batch": fit}, 1.5)


def test_weighted_roc_metrics_equal_scikit_learns_on_the_resampled_examples():
    rng = np.random.default_rng(7)
    scores = np.round(rng.normal(size=250), 1)  # many ties
    is_member = rng.random(250) < 0.4
    resamples = mia.Resamples.draw(1, 250, 200, seed=3)
    fast = mia.weighted_roc_metrics(scores, is_member, resamples.weights)
    for row, weights in enumerate(resamples.weights):
        examples = np.repeat(np.arange(250), weights)
        reference = mia.roc_metrics(scores[examples], is_member[examples])
        for metric in mia.METRICS:
            assert fast[metric][row] == pytest.approx(reference[metric], abs=1e-12), metric
    only_members = mia.weighted_roc_metrics(scores, np.ones(250, bool), resamples.weights[:2])
    assert np.isnan(only_members["auc"]).all()


def test_interval():
    rng = np.random.default_rng(8)
    resamples = mia.Resamples.draw(16, 50, 2000)
    point = rng.normal(0.7, 0.05, 16)
    resampled = point[:, None] + rng.normal(0, 0.02, (16, 2000))
    summary = mia.interval(point, resampled, resamples)
    assert summary["n"] == 16 and summary["mean"] == pytest.approx(point.mean())
    assert summary["ci95"][0] < point.mean() < summary["ci95"][1]
    assert mia.interval(np.full(16, np.nan), resampled, resamples)["n"] == 0


def test_parameter_validation():
    with pytest.raises(ValueError, match="'attack'"):
        config.load("smoke", extras=mia.ChapterParams, attack="rmia_online")
    with pytest.raises(ValueError, match="n_models"):
        mia.check_zoo_size(3)
    with pytest.raises(ValueError, match="'attack'"):
        mia.attack_scores(_synthetic_signals(np.zeros((4, 2)), np.array([[1, 0]] * 2 + [[0, 1]] * 2, bool)), "lira")


# ----------------------------------------------------------------------------- the LiRA reference code, ported

def _reference_split(keep, scores):
    """The loop both ``generate_ours`` functions of the reference open with (one copy here): per example j, the
    scores of the shadow models that trained on it (IN) and of those that did not (OUT)."""
    dat_in = []
    dat_out = []
    for j in range(scores.shape[1]):
        dat_in.append(scores[keep[:, j], j, :])
        dat_out.append(scores[~keep[:, j], j, :])
    return dat_in, dat_out


def _reference_generate_ours(keep, scores, check_keep, check_scores, in_size=100000, out_size=100000,
                             fix_variance=False):
    """tensorflow/privacy research/mi_lira_2021/plot.py ``generate_ours``, transcribed line by line (its opening
    loop is ``_reference_split``)."""
    dat_in, dat_out = _reference_split(keep, scores)
    in_size = min(min(map(len, dat_in)), in_size)
    out_size = min(min(map(len, dat_out)), out_size)
    dat_in = np.array([x[:in_size] for x in dat_in])
    dat_out = np.array([x[:out_size] for x in dat_out])
    mean_in = np.median(dat_in, 1)
    mean_out = np.median(dat_out, 1)
    if fix_variance:
        std_in = np.std(dat_in)
        std_out = np.std(dat_in)
    else:
        std_in = np.std(dat_in, 1)
        std_out = np.std(dat_out, 1)
    prediction = []
    answers = []
    for ans, sc in zip(check_keep, check_scores, strict=True):
        pr_in = -scipy_stats.norm.logpdf(sc, mean_in, std_in + 1e-30)
        pr_out = -scipy_stats.norm.logpdf(sc, mean_out, std_out + 1e-30)
        score = pr_in - pr_out
        prediction.extend(score.mean(1))
        answers.extend(ans)
    return prediction, answers


def _reference_generate_ours_offline(keep, scores, check_keep, check_scores, in_size=100000, out_size=100000,
                                     fix_variance=False):
    """tensorflow/privacy research/mi_lira_2021/plot.py ``generate_ours_offline``, transcribed line by line (its
    opening loop is ``_reference_split``)."""
    dat_in, dat_out = _reference_split(keep, scores)
    out_size = min(min(map(len, dat_out)), out_size)
    dat_out = np.array([x[:out_size] for x in dat_out])
    mean_out = np.median(dat_out, 1)
    if fix_variance:
        std_out = np.std(dat_out)
    else:
        std_out = np.std(dat_out, 1)
    prediction = []
    answers = []
    for ans, sc in zip(check_keep, check_scores, strict=True):
        score = scipy_stats.norm.logpdf(sc, mean_out, std_out + 1e-30)
        prediction.extend(score.mean(1))
        answers.extend(ans)
    return prediction, answers


@pytest.mark.parametrize("n_shadows,n_aug", [(6, 1), (9, 2), (16, 3)])
@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("fix_variance", [True, False])
def test_lira_reference_equals_the_reference_code(n_shadows, n_aug, online, fix_variance):
    # an unbalanced random keep mask, so the reference's truncation to the smallest IN/OUT count matters
    rng = np.random.default_rng(n_shadows * 10 + n_aug)
    n_examples, n_targets = 40, 3
    keep = rng.random((n_shadows, n_examples)) < 0.5
    keep[0], keep[1] = True, False  # every example has an IN and an OUT shadow
    shadow_scores = rng.normal(0, 3, (n_shadows, n_examples, n_aug))
    target_scores = rng.normal(0, 3, (n_targets, n_examples, n_aug))
    target_keep = rng.random((n_targets, n_examples)) < 0.5
    port = _reference_generate_ours if online else _reference_generate_ours_offline
    prediction, answers = port(keep, shadow_scores, target_keep, target_scores, fix_variance=fix_variance)
    ours = mia.lira_reference(keep, shadow_scores, target_scores, online=online, fix_variance=fix_variance)
    # the reference sorts with roc_curve(answers, -prediction): higher -prediction = member
    np.testing.assert_allclose(ours.ravel(), -np.array(prediction), rtol=1e-9, atol=1e-9)
    assert np.array_equal(np.array(answers), target_keep.ravel())


def test_lira_reference_rejects_bad_shapes_and_masks():
    with pytest.raises(ValueError, match="'keep'"):
        mia.lira_reference(np.ones((4, 5), bool), np.zeros((4, 5, 1)), np.zeros((1, 5, 1)), True, False)
    with pytest.raises(ValueError, match="'shadow_scores'"):
        mia.lira_reference(np.ones((4, 5), bool), np.zeros((4, 6, 1)), np.zeros((1, 5, 1)), True, False)


def test_null_leave_one_out_auc_shows_the_bias_that_balancing_removes():
    null = mia.null_leave_one_out_auc(8, 4000)
    assert null["all_others"] < 0.49 and null["balanced"] == pytest.approx(0.5, abs=0.01)


# ----------------------------------------------------------------------------- ROC pooled over targets

def test_pooled_estimate_equals_scikit_learn_on_the_pooled_resampled_scores():
    rng = np.random.default_rng(9)
    n_models, n = 6, 30
    keep = data.balanced_keep_mask(n_models, n, seed=3).numpy()
    scores = np.round(rng.normal(size=(n_models, n)) + 0.7 * keep, 1)
    mask = np.arange(n) < 20
    resamples = mia.Resamples.draw(n_models, int(mask.sum()), 40, seed=1)
    pooled = mia.pooled_estimate(scores, keep, mask, resamples, chunk=500)  # several chunks
    point = mia.roc_metrics(scores[:, mask].ravel(), keep[:, mask].ravel())
    assert pooled["point"] == point and pooled["n_nonmembers"] == int((~keep[:, mask]).sum())
    for b in range(40):  # the resample, written out: each drawn target's scores on the drawn examples
        examples = np.repeat(np.arange(20), resamples.weights[b])
        s = np.concatenate([scores[t, mask][examples] for t in resamples.targets[b]])
        k = np.concatenate([keep[t, mask][examples] for t in resamples.targets[b]])
        reference = mia.roc_metrics(s, k)
        for metric in mia.METRICS:
            assert pooled["resampled"][metric][b] == pytest.approx(reference[metric], abs=1e-12), metric
    summary = mia.pooled_interval(pooled, "auc")
    assert summary["n"] == n_models and summary["ci95"][0] <= summary["mean"] <= summary["ci95"][1]
    # what a pair-level test of two zoos needs: every pooled score with its target
    assert np.array_equal(pooled["scores"], scores[:, mask].ravel()) and pooled["target"].tolist() == np.repeat(
        np.arange(n_models), 20).tolist() and not pooled["target_pool"].any()


def test_low_fpr_names_and_the_tpr_at_zero_false_positives():
    # 10 false positives at x are needed to name a TPR at FPR x
    assert mia.low_fpr_metric("tpr_at_1pct_fpr", 1000) == "tpr_at_1pct_fpr"
    assert mia.low_fpr_metric("tpr_at_1pct_fpr", 999) == mia.ZERO_FP == "tpr_at_0fp"
    assert mia.low_fpr_metric("tpr_at_0.1pct_fpr", 10_000) == "tpr_at_0.1pct_fpr"
    assert mia.low_fpr_metric("auc", 5) == "auc"
    # members 0.9, 0.8, 0.3; non-members 0.85, 0.2: above every non-member only the member at 0.9
    out = mia.roc_metrics(np.array([0.9, 0.8, 0.3, 0.85, 0.2]), np.array([1, 1, 1, 0, 0], dtype=bool))
    assert out[mia.ZERO_FP] == pytest.approx(1 / 3)


def test_pooled_low_fpr_resolves_what_one_target_cannot():
    # 100 non-members per target: one target's TPR at 0.1% FPR is its TPR at zero false positives;
    # pooled over 16 targets (1,600 non-members) one false positive is allowed at 0.1%
    rng = np.random.default_rng(10)
    keep = data.balanced_keep_mask(16, 200, seed=4).numpy()
    scores = rng.normal(size=(16, 200)) + 1.5 * keep
    pooled = mia.pooled_estimate(scores, keep, np.ones(200, bool))
    assert pooled["n_nonmembers"] == 1600
    s, k = scores.ravel(), keep.ravel()
    negatives = np.sort(s[~k])[::-1]
    threshold = negatives[int(np.floor(0.001 * 1600))]  # above it: at most 1 false positive
    assert pooled["point"]["tpr_at_0.1pct_fpr"] == pytest.approx(np.mean(s[k] > threshold))


def test_pooled_at_fit_level_interpolates_each_target_at_its_crossing():
    keep = data.balanced_keep_mask(4, 10, seed=0).numpy()
    scores = np.stack([np.zeros((4, 10)), np.ones((4, 10)) * keep, 2 * np.ones((4, 10)) * keep])  # (E=3, T, N)
    accuracy = np.array([[0.5, 0.5, 0.5, 0.5], [0.7, 0.9, 0.7, 0.7], [0.9, 0.95, 0.9, 0.6]])  # target 3 never
    fit = {"train_accuracy": accuracy, "scores": scores}
    out = mia.pooled_at_fit_level(fit, keep, np.ones(10, bool), 0.8, mia.Resamples.draw(4, 10, 20))
    assert out["n_targets"] == 3 and out["point"]["auc"] == 1.0  # members score > 0, non-members 0
    assert out["resampled"]["auc"].shape == (20,)
    nowhere = mia.pooled_at_fit_level(fit, keep, np.ones(10, bool), 0.99, mia.Resamples.draw(4, 10, 20))
    assert nowhere["n_targets"] == 0 and math.isnan(mia.pooled_interval(nowhere, "auc")["mean"])


def test_queries_use_only_the_augmentation_training_used():
    cfg, params = config.load("smoke", extras=mia.ChapterParams)
    mia.check_config(cfg, params)
    assert config.load("paper", extras=mia.ChapterParams)[1].query_augment == mia.TRAINING_AUGMENT
    with pytest.raises(ValueError, match="'query_augment'"):
        mia.check_config(cfg, dataclasses.replace(params, query_augment="flip"))


def test_pooled_over_pools_is_the_roc_of_all_pools_targets_and_its_resamples_match_a_loop():
    rng = np.random.default_rng(3)
    parts = []
    for n_targets, n_examples in ((4, 30), (6, 20)):
        keep = data.balanced_keep_mask(n_targets, n_examples, seed=n_targets).numpy()
        scores = rng.normal(size=(n_targets, n_examples)) + 0.7 * keep
        parts.append((scores, keep, rng.random(n_examples) < 0.6))
    pooled = mia.pooled_over_pools(parts, n_bootstrap=5)
    everything = np.concatenate([s[:, m].ravel() for s, _, m in parts])
    members = np.concatenate([k[:, m].ravel() for _, k, m in parts])
    assert pooled["point"] == mia.roc_metrics(everything, members)
    assert pooled["n_targets"] == 10 and pooled["n_nonmembers"] == int((~members).sum())
    # one pool alone is the single-zoo pooled estimate
    single = mia.pooled_over_pools(parts[:1])["point"]
    assert single == mia.pooled_estimate(*parts[0])["point"]
    # resample b: each pool's own draw (seed = its index), (target, example) scores repeated by multiplicity
    b = 3
    repeated_scores, repeated_members = [], []
    for pool, (scores, keep, mask) in enumerate(parts):
        draw = mia.Resamples.draw(len(scores), int(mask.sum()), 5, seed=pool)
        for t in draw.targets[b]:
            for n, copies in enumerate(draw.weights[b]):
                repeated_scores += [scores[t, mask][n]] * int(copies)
                repeated_members += [keep[t, mask][n]] * int(copies)
    expected = mia.roc_metrics(np.array(repeated_scores), np.array(repeated_members))
    for metric, value in expected.items():
        assert np.isclose(pooled["resampled"][metric][b], value), metric
