"""Membership-inference attacks on a model zoo, and their evaluation.

Every attack turns the outputs of a *target* model on the pool into one membership score per example
(higher = "more likely a training member"). Shadow (reference) models are the other models of the zoo:
leave-one-out, each model in turn is the target and the remaining T-1 models are its shadows, as in
LiRA's evaluation. Shapes used throughout:

    logits         (T, N, A, C)  T models, N pool examples, A query augmentations, C classes
    keep           (T, N)        bool, example n was in model t's training set
    signals        (T, N, A)     float64, one number per model, example and augmentation
    scores         (T, N)        membership score of each example when model t is the target

Attacks (:data:`ATTACKS`):
    loss            -- Yeom et al. (2018): the target's log-probability of the true label (= -loss).
    confidence      -- the target's largest softmax probability, label-free (Salem et al. 2019); the
                       probability of the true label would rank examples exactly as ``loss`` does.
    lira_online     -- LiRA (Carlini et al. 2022): Gaussians of the logit-scaled confidence
                       phi = log p_y - log(1 - p_y) over IN and OUT shadows; score = log likelihood ratio.
    lira_offline    -- LiRA with OUT shadows only; score = log P[Z_out < phi_target] (one-sided).
    *_global        -- the same with one variance for all examples (LiRA's "fixed variance": the
                       pooled within-example variance), which is what works with few shadows.
    lira_reference_* -- the LiRA reference code's own formulas (:func:`lira_reference`), on the same
                       signals and with all other models as shadows, reported beside ours.
    rmia_online     -- RMIA (Zarifzadeh et al. 2024): Pr(x|target) / Pr(x) compared with the same ratio
                       on population points z (the test set, a member of no model); score = fraction of
                       z that x dominates (gamma = 1). Pr(x) = mean of the IN and OUT shadows' means.
    rmia_offline    -- RMIA with OUT shadows only: Pr(x) = ((1 + a) Pr_out(x) + (1 - a)) / 2.

Our LiRA departs from the reference code (tensorflow/privacy, research/mi_lira_2021/plot.py,
``generate_ours`` and ``generate_ours_offline``, ported exactly as :func:`lira_reference`) in these ways:
    * Means of the IN and OUT shadows' phi, not medians; unbiased (ddof=1) per-example variances, not
      ``np.std`` (ddof=0); a floor ``MIN_STD`` on every standard deviation, not ``+ 1e-30``.
    * "Fixed variance": the reference takes ``np.std`` of *all* IN scores (examples and shadows
      together, so the spread between examples enters it) for both Gaussians, online; here it is the
      pooled within-example variance, one for IN and one for OUT.
    * Offline: the reference scores -log N(phi; OUT), two-sided (an example far from its OUT
      distribution in either direction looks like a member); ours is log P[Z_out < phi], one-sided (a
      member is fitted *better* than the OUT models fit it).
    * Leave-one-out shadows are balanced per example and target (:func:`balanced_shadows`): with the
      target left out, the remaining models hold one IN model fewer exactly when the answer is IN,
      which biases LiRA's score against members under the null. The reference truncates every
      example's IN (OUT) shadows to the smallest count over examples, in model order, so it drops the
      *last* model of the larger side: balanced too, but by a fixed model.
    * The reference queries with the augmentations its training used (flips and shifts); we query
      only with what our training uses, which is none (:data:`TRAINING_AUGMENT`): a flipped canary
      is an image no model trained on.
    * TPR at a fixed FPR is read from ``roc_curve(..., drop_intermediate=False)``: the default drops
      collinear points, sometimes the one that holds the answer.

Metrics come from scikit-learn's ``roc_curve``: AUC, TPR at a fixed low FPR (the largest TPR whose
FPR does not exceed it: with n negatives, a TPR at FPR f allows floor(f n) false positives, so with
fewer than 1/f negatives it is the TPR at zero false positives), and balanced accuracy (the best
threshold's accuracy on balanced classes, as in LiRA's paper). Two ways: per target, averaged over
targets (:func:`estimate`), and from the ROC of all targets' scores pooled (:func:`pooled_estimate`),
as the reference's plotting code does, which is what the literature's low-FPR numbers are; intervals
from a bootstrap over targets and examples (:class:`Resamples`).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import special
from scipy import stats as scipy_stats
from sklearn.metrics import auc, roc_curve

from . import config, ensemble, results, stats, train
from . import zoo as zoo_lib

ATTACKS = ("loss", "confidence", "lira_online", "lira_offline", "lira_online_global", "lira_offline_global",
           "rmia_online", "rmia_offline", "lira_reference_online", "lira_reference_offline",
           "lira_reference_online_global", "lira_reference_offline_global")
AUGMENTS = ("none", "flip", "flip_shift")
TRAINING_AUGMENT = "none"  # bnlib.train applies no data augmentation; queries must use the same views
LOW_FPRS = (0.001, 0.01)
MIN_STD = 1e-3  # floor of a Gaussian's standard deviation (logits stored as float16 can tie exactly)
RMIA_OFFLINE_A = 0.3  # ML Privacy Meter's default for the offline approximation of Pr(x)


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the membership-inference chapter beyond :class:`bnlib.config.ExperimentConfig`."""

    attack: str = field(default="lira_online_global", metadata={
        "choices": ATTACKS[:6], "doc": "the attack behind the headline numbers and the fit curves"})
    query_augment: str = field(default="none", metadata={
        "choices": AUGMENTS, "doc": "queries averaged per example: only what training used (none)"})
    matched_fit_level: float = field(default=0.0, metadata={
        "minimum": 0.0, "doc": "inlier train accuracy at which norms are compared; 0 = highest every model reaches"})
    long_schedule_factor: int = field(default=0, metadata={
        "minimum": 0, "doc": "if > 0, non-BN zoos also trained epochs x this to extend their fit curves"})
    n_bootstrap: int = field(default=1000, metadata={
        "positive": True, "doc": "bootstrap resamples (of targets and examples)"})

    PROFILES: typing.ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(n_bootstrap=200),
        "quick": dict(),
        "paper": dict(),
    }


def check_config(cfg, params: ChapterParams | None = None) -> None:
    """Fail fast unless the zoo can be attacked leave-one-out, both arms (BN, no norm) are present and the
    queries use only the augmentations training used."""
    config.check_compared_norms(cfg)
    check_zoo_size(cfg.n_models)
    if params is not None and params.query_augment != TRAINING_AUGMENT:
        raise ValueError(f"Parameter 'query_augment' is {params.query_augment!r}; allowed: {TRAINING_AUGMENT!r}, the "
                         "augmentation training used (bnlib.train trains on the images as they are). Querying a "
                         "flipped or shifted canary asks about an image no model trained on.")


def check_zoo_size(n_models: int) -> None:
    """Leave-one-out LiRA needs IN and OUT shadows for every example: at least 4 models."""
    if n_models < 4:
        raise ValueError(f"Parameter 'n_models' is {n_models}; leave-one-out attacks need >= 4 models so that "
                         "every example has IN and OUT shadows among the other models.")


# ----------------------------------------------------------------------------- signals from logits

def _with_augment_axis(logits: torch.Tensor) -> torch.Tensor:
    """(T, N, C) -> (T, N, 1, C); (T, N, A, C) unchanged; as float64."""
    logits = logits.double()
    return logits.unsqueeze(2) if logits.ndim == 3 else logits


def true_class_log_probability(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """log p_y = z_y - logsumexp(z) for logits (T, N, [A,] C) and labels (N,) -> (T, N, A) float64."""
    logits = _with_augment_axis(logits)
    index = labels.view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
    return (logits.gather(-1, index).squeeze(-1) - torch.logsumexp(logits, -1)).numpy()


def logit_scaled_confidence(logits: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """phi = log p_y - log(1 - p_y) = z_y - logsumexp_{j != y} z_j, stable for any logits.

    Computing log(1 - p_y) from p_y loses everything once p_y rounds to 1; the logsumexp over the
    other classes does not. Logits (T, N, [A,] C), labels (N,) -> (T, N, A) float64.
    """
    logits = _with_augment_axis(logits)
    index = labels.view(1, -1, 1, 1).expand(*logits.shape[:3], 1)
    true = logits.gather(-1, index).squeeze(-1)
    others = logits.scatter(-1, index, float("-inf"))
    return (true - torch.logsumexp(others, -1)).numpy()


@dataclass
class Signals:
    """What the attacks read, computed once from a zoo's logits.

    Attributes:
        keep: (T, N) bool membership.
        phi: (T, N, A) logit-scaled confidence on the pool.
        log_p: (T, N, A) log-probability of the true label on the pool.
        max_log_p: (T, N, A) log of the largest class probability on the pool.
        population_log_p: (T, M, A) the same on M population points that no model trained on.
    """

    keep: np.ndarray
    phi: np.ndarray
    log_p: np.ndarray
    max_log_p: np.ndarray
    population_log_p: np.ndarray

    @classmethod
    def from_logits(cls, keep: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                    population_logits: torch.Tensor, population_labels: torch.Tensor) -> Signals:
        return cls(keep=keep.numpy().astype(bool), phi=logit_scaled_confidence(logits, labels),
                   log_p=true_class_log_probability(logits, labels),
                   max_log_p=torch.log_softmax(_with_augment_axis(logits), -1).amax(-1).numpy(),
                   population_log_p=true_class_log_probability(population_logits, population_labels))


# ----------------------------------------------------------------------------- LiRA

@dataclass
class GaussianFit:
    """Per-example Gaussians of a signal over IN and OUT shadows; every array is (N, A)."""

    mean_in: np.ndarray
    std_in: np.ndarray
    mean_out: np.ndarray
    std_out: np.ndarray


def _masked_moments(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, unbiased variance (NaN below two values) and count over axis 0 of values (T, N, A) where
    mask (T, N) is True; each (N, A)."""
    weight = mask[..., None].astype(float)  # (T, N, 1)
    count = np.broadcast_to(weight.sum(0), values.shape[1:])  # (N, A)
    mean = (weight * values).sum(0) / np.maximum(count, 1)
    variance = (weight * (values - mean) ** 2).sum(0) / np.maximum(count - 1, 1)
    return mean, np.where(count >= 2, variance, np.nan), count


def pooled_std(signal: np.ndarray, in_mask: np.ndarray, out_mask: np.ndarray) -> tuple[float, float]:
    """LiRA's global ("fixed") standard deviations of IN and OUT: the within-example variance pooled over
    all examples and augmentations. signal (T, N, A); masks (T, N)."""
    def pooled(mask: np.ndarray) -> float:
        _, variance, count = _masked_moments(signal, mask)
        degrees = np.where(np.isnan(variance), 0, count - 1)
        return float(np.sqrt(np.nansum(variance * degrees) / degrees.sum()))

    return pooled(in_mask), pooled(out_mask)


def fit_gaussians(signal: np.ndarray, in_mask: np.ndarray, out_mask: np.ndarray, variance: str = "per_example",
                  pooled: tuple[float, float] | None = None) -> GaussianFit:
    """Fit LiRA's IN and OUT Gaussians per example (and augmentation) from shadow models.

    Args:
        signal: (T, N, A) phi of every model.
        in_mask, out_mask: (T, N) the IN and the OUT shadows of each example.
        variance: ``per_example`` (each example's own variance; where a side has fewer than two shadows,
            the pooled one) or ``global`` (the pooled one everywhere).
        pooled: the pooled (IN, OUT) standard deviations; default :func:`pooled_std` of the same masks.
    Returns:
        :class:`GaussianFit` with (N, A) arrays.
    """
    if variance not in ("per_example", "global"):
        raise ValueError(f"Parameter 'variance' got {variance!r}; allowed values: 'per_example', 'global'.")
    pooled_in, pooled_out = pooled_std(signal, in_mask, out_mask) if pooled is None else pooled
    mean_in, var_in, _ = _masked_moments(signal, in_mask)
    mean_out, var_out, _ = _masked_moments(signal, out_mask)
    std_in = np.full_like(mean_in, pooled_in) if variance == "global" else np.where(
        np.isnan(var_in), pooled_in, np.sqrt(var_in))
    std_out = np.full_like(mean_out, pooled_out) if variance == "global" else np.where(
        np.isnan(var_out), pooled_out, np.sqrt(var_out))
    return GaussianFit(mean_in, np.maximum(std_in, MIN_STD), mean_out, np.maximum(std_out, MIN_STD))


def _log_normal_pdf(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)


def lira_score(target_signal: np.ndarray, fit: GaussianFit, online: bool) -> np.ndarray:
    """LiRA's membership score of each example (N,) from the target's phi (N, A), averaged over A.

    online: log N(phi; IN) - log N(phi; OUT). offline: log P[Z < phi] for Z ~ OUT (one-sided: a member
    has a *higher* confidence than the OUT models give it).
    """
    if online:
        ratio = _log_normal_pdf(target_signal, fit.mean_in, fit.std_in) - _log_normal_pdf(
            target_signal, fit.mean_out, fit.std_out)
    else:
        ratio = special.log_ndtr((target_signal - fit.mean_out) / fit.std_out)
    return ratio.mean(-1)


def _first_shadows(mask: np.ndarray, size: int, shadow_scores: np.ndarray) -> np.ndarray:
    """(N, size, A): for each example, the scores of the first ``size`` models of mask (T, N), in model
    order (the reference's ``scores[keep[:, j], j, :][:size]``)."""
    order = np.argsort(~mask, axis=0, kind="stable")[:size]  # (size, N): the masked models first, in order
    return shadow_scores[order, np.arange(mask.shape[1])].transpose(1, 0, 2)


def lira_reference(keep: np.ndarray, shadow_scores: np.ndarray, target_scores: np.ndarray, online: bool,
                   fix_variance: bool) -> np.ndarray:
    """LiRA exactly as the reference code computes it (tensorflow/privacy research/mi_lira_2021/plot.py,
    ``generate_ours`` / ``generate_ours_offline``), vectorized; higher = member.

    Per example, the IN (OUT) shadows' scores are cut to the smallest IN (OUT) count over examples, first
    models first; means are medians; standard deviations ``np.std`` (ddof=0) per example, or, with
    ``fix_variance``, one ``np.std`` over all kept IN scores (online: for *both* Gaussians, as the
    reference does) or all OUT scores (offline); ``+ 1e-30`` guards a zero. Online score: log N(s; IN) -
    log N(s; OUT); offline: -log N(s; OUT) (two-sided); each averaged over augmentations. (The reference
    returns the negation and sorts with ``roc_curve(answers, -prediction)``; we return what it ranks by.)

    Args:
        keep: (T, N) bool, shadow t trained on example n; every example needs an IN (online) and an OUT shadow.
        shadow_scores: (T, N, A) logit-scaled confidences of the shadows.
        target_scores: (M, N, A) the same for M target models.
    Returns:
        (M, N) membership scores.
    """
    keep = np.asarray(keep, dtype=bool)
    if keep.ndim != 2 or shadow_scores.shape[:2] != keep.shape or target_scores.shape[1:] != shadow_scores.shape[1:]:
        raise ValueError(f"Parameters 'keep' {keep.shape}, 'shadow_scores' {shadow_scores.shape} and 'target_scores' "
                         f"{target_scores.shape} must be (T, N), (T, N, A) and (M, N, A).")
    in_size, out_size = int(keep.sum(0).min()), int((~keep).sum(0).min())
    if out_size == 0 or (online and in_size == 0):
        raise ValueError("Parameter 'keep' leaves an example without IN or OUT shadows; the reference needs both.")
    dat_out = _first_shadows(~keep, out_size, shadow_scores)  # (N, out_size, A)
    mean_out = np.median(dat_out, 1)  # (N, A)
    if not online:
        std_out = np.std(dat_out) if fix_variance else np.std(dat_out, 1)
        return -scipy_stats.norm.logpdf(target_scores, mean_out, std_out + 1e-30).mean(-1)
    dat_in = _first_shadows(keep, in_size, shadow_scores)
    mean_in = np.median(dat_in, 1)
    if fix_variance:
        std_in = std_out = np.std(dat_in)  # the reference's std_out = np.std(dat_in), kept as it is
    else:
        std_in, std_out = np.std(dat_in, 1), np.std(dat_out, 1)
    return (scipy_stats.norm.logpdf(target_scores, mean_in, std_in + 1e-30)
            - scipy_stats.norm.logpdf(target_scores, mean_out, std_out + 1e-30)).mean(-1)


# ----------------------------------------------------------------------------- RMIA

def _log_mean_exp(log_values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """log of the mean of exp(log_values) (T, N, A) over the models of mask (T, N) and over A -> (N,)."""
    masked = np.where(mask[..., None], log_values, -np.inf)
    count = mask.sum(0) * log_values.shape[-1]
    return special.logsumexp(masked, axis=(0, 2)) - np.log(np.maximum(count, 1))


def rmia_score(target_log_p: np.ndarray, log_p: np.ndarray, in_mask: np.ndarray, out_mask: np.ndarray,
               target_population_log_p: np.ndarray, population_log_p: np.ndarray, population_mask: np.ndarray,
               online: bool, offline_a: float = RMIA_OFFLINE_A, gamma: float = 1.0) -> np.ndarray:
    """RMIA's score (N,): the fraction of population points z with LR(x, z) > gamma.

    LR(x, z) = [Pr(x|target) / Pr(x)] / [Pr(z|target) / Pr(z)], where Pr(.|model) is the probability of
    the true label averaged over augmentations and Pr(.) its mean over shadows: online, the average of
    the IN and the OUT shadows' means; offline, ((1 + a) Pr_OUT + (1 - a)) / 2 from OUT shadows only.

    Args:
        target_log_p: (N, A); log_p: (T, N, A) of every model; in_mask, out_mask: (T, N) shadows of x.
        target_population_log_p: (M, A); population_log_p: (T, M, A); population_mask: (T, M) shadows of z
            (population points are OUT for every model).
    """
    def log_prior(log_out: np.ndarray, log_in: np.ndarray | None) -> np.ndarray:
        if log_in is not None:
            return np.logaddexp(log_in, log_out) + np.log(0.5)
        return np.log(0.5 * ((1 + offline_a) * np.exp(log_out) + (1 - offline_a)))

    def log_target(values: np.ndarray) -> np.ndarray:  # log of the target's mean probability over A
        return special.logsumexp(values, axis=-1) - np.log(values.shape[-1])

    prior_x = log_prior(_log_mean_exp(log_p, out_mask), _log_mean_exp(log_p, in_mask) if online else None)
    log_out_z = _log_mean_exp(population_log_p, population_mask)
    prior_z = log_out_z if online else log_prior(log_out_z, None)
    log_ratio_x = log_target(target_log_p) - prior_x
    log_ratio_z = np.sort(log_target(target_population_log_p) - prior_z)
    return np.searchsorted(log_ratio_z, log_ratio_x - np.log(gamma), side="left") / len(log_ratio_z)


# ----------------------------------------------------------------------------- leave-one-out attacks

def balanced_shadows(keep: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray]:
    """IN and OUT shadow masks (T, N) for ``target``: the other models minus one, so that every example
    has T/2 - 1 IN and T/2 - 1 OUT shadows whatever the target's answer.

    With a balanced keep mask the other T-1 models hold one IN model fewer exactly when the target is
    IN. Left as it is, that leaks the answer: a mean of fewer values lies farther from a fresh draw,
    so under the null (no information) LiRA's score is *lower* for members (:func:`null_leave_one_out_auc`
    measures how much; the membership-inference chapter runs it at its T). So one model of the larger
    side is dropped, chosen at random (seeded by the target): dropping a fixed one (say the first) would
    leak again through whatever sets that model apart from the others. With complementary pairs (the
    project's keep mask) the dropped model is the target's partner, for every example.
    """
    n_models = keep.shape[0]
    if not (keep.sum(0) == n_models // 2).all() or n_models % 2:
        raise ValueError("Parameter 'keep' must be balanced (every example IN for exactly half of an even "
                         "number of models), as ``data.balanced_keep_mask`` makes it.")
    models = np.arange(n_models)[:, None]  # (T, 1)
    partner = target ^ 1  # the other model of the target's complementary pair (data.balanced_keep_mask)
    if np.array_equal(keep[partner], ~keep[target]):
        # The partner is on the larger side for every example: dropping it leaves the same T - 2 shadows, half
        # IN and half OUT, whatever the answer (nothing to leak), and removes the one model whose training set
        # is tied to the target's (under the null, a pair's correlated outputs would otherwise leak).
        use = (models != target) & (models != partner)
        return keep & use, ~keep & use
    larger_side = (keep != keep[target]) & (models != target)  # (T, N), T/2 models per example
    priority = np.where(larger_side, np.random.default_rng(target).random(keep.shape), -1.0)
    use = (models != target) & (models != priority.argmax(0)[None, :])
    return keep & use, ~keep & use


def attack_scores(signals: Signals, attack: str) -> np.ndarray:
    """(T, N) scores of ``attack`` with each model in turn as the target and the others as shadows
    (balanced per example by :func:`balanced_shadows`)."""
    if attack not in ATTACKS:
        raise ValueError(f"Parameter 'attack' got {attack!r}; allowed values: {', '.join(map(repr, ATTACKS))}.")
    n_models = signals.keep.shape[0]
    check_zoo_size(n_models)
    if attack == "loss":
        return signals.log_p.mean(-1)
    if attack == "confidence":
        return np.exp(signals.max_log_p).mean(-1)
    scores = np.empty(signals.keep.shape)
    models = np.arange(n_models)[:, None]
    for target in range(n_models):
        in_mask, out_mask = balanced_shadows(signals.keep, target)
        if attack.startswith("lira_reference"):  # the reference's own shadows: every other model
            others = np.arange(n_models) != target
            scores[target] = lira_reference(signals.keep[others], signals.phi[others], signals.phi[target][None],
                                            online="online" in attack, fix_variance=attack.endswith("global"))[0]
        elif attack.startswith("lira"):
            others = models != target  # the pooled variance may use every other model (pooled over examples)
            pooled = pooled_std(signals.phi, signals.keep & others, ~signals.keep & others)
            fit = fit_gaussians(signals.phi, in_mask, out_mask, "global" if attack.endswith("global") else
                                "per_example", pooled)
            scores[target] = lira_score(signals.phi[target], fit, online="online" in attack)
        else:
            population_shadows = np.broadcast_to(models != target, signals.population_log_p.shape[:2])
            scores[target] = rmia_score(signals.log_p[target], signals.log_p, in_mask, out_mask,
                                        signals.population_log_p[target], signals.population_log_p,
                                        population_shadows, online=attack == "rmia_online")
    return scores


def null_leave_one_out_auc(n_models: int, n_examples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean AUC over targets of leave-one-out ``lira_online_global`` on pure noise (no membership signal):
    with every other model as a shadow (``all_others``) and with :func:`balanced_shadows` (``balanced``).

    phi = example effect N(0, 2^2) + noise N(0, 1) per model; a balanced keep mask. Chance is 0.5; with all
    other models as shadows the target's own answer changes how many IN shadows there are, which shows.
    """
    check_zoo_size(n_models)
    rng = np.random.default_rng(seed)
    keep = (rng.random((n_models, n_examples)).argsort(0).argsort(0) < n_models // 2)  # balanced (T, N)
    phi = (rng.normal(0, 2, n_examples) + rng.normal(0, 1, (n_models, n_examples)))[..., None]  # (T, N, 1)
    models = np.arange(n_models)[:, None]
    aucs: dict[str, list[float]] = {"all_others": [], "balanced": []}
    for target in range(n_models):
        others = models != target
        pooled = pooled_std(phi, keep & others, ~keep & others)
        for name, (in_mask, out_mask) in (("all_others", (keep & others, ~keep & others)),
                                          ("balanced", balanced_shadows(keep, target))):
            fit = fit_gaussians(phi, in_mask, out_mask, "global", pooled)
            aucs[name].append(roc_metrics(lira_score(phi[target], fit, online=True), keep[target])["auc"])
    return {name: float(np.mean(values)) for name, values in aucs.items()}


# ----------------------------------------------------------------------------- metrics

METRICS = ("auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "balanced_accuracy")


def roc_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """AUC, TPR at 0.1% and 1% FPR and balanced accuracy of one target, with scikit-learn's ``roc_curve``.

    ``drop_intermediate=False``: the default drops collinear ROC points, among them sometimes the one
    with the largest TPR at a fixed FPR (fine for plots, not for reading a TPR off the curve).

    Args:
        scores: (n,) higher = member; is_member: (n,) bool with both classes present.
    """
    fpr, tpr, _ = roc_curve(is_member, scores, drop_intermediate=False)
    out = {"auc": float(auc(fpr, tpr))}
    for level in LOW_FPRS:
        out[f"tpr_at_{level * 100:g}pct_fpr"] = float(tpr[fpr <= level].max())
    out["balanced_accuracy"] = float(np.max(1 - (fpr + (1 - tpr)) / 2))
    return out


def weighted_roc_metrics(scores: np.ndarray, is_member: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """The numbers of :func:`roc_metrics` on B reweighted copies of one target's examples at once.

    A bootstrap resample is the same examples with integer multiplicities, so the examples are sorted
    once and each resample only needs weighted cumulative counts; the result equals :func:`roc_metrics`
    on the resampled examples (tested).

    Args:
        scores, is_member: (n,); weights: (B, n) multiplicity of each example in each resample.
    Returns:
        metric -> (B,); NaN for resamples without members or without non-members.
    """
    order = np.argsort(-scores)
    ranked, member, weights = scores[order], is_member[order], weights[:, order]
    last = np.append(ranked[:-1] != ranked[1:], True)  # ROC points: the end of each group of tied scores
    true_positives = np.cumsum(weights * member, axis=1, dtype=np.int32)[:, last]  # (B, G)
    false_positives = np.cumsum(weights, axis=1, dtype=np.int32)[:, last] - true_positives
    positives, negatives = true_positives[:, -1:], false_positives[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr, fpr = true_positives / positives, false_positives / negatives
        out = {f"tpr_at_{level * 100:g}pct_fpr": np.max(np.where(fpr <= level, tpr, 0), axis=1) for level in LOW_FPRS}
        out["balanced_accuracy"] = np.maximum(np.max((1 + tpr - fpr) / 2, axis=1), 0.5)
        previous_tpr = np.concatenate([np.zeros_like(tpr[:, :1]), tpr[:, :-1]], axis=1)
        out["auc"] = np.sum(np.diff(fpr, axis=1, prepend=0) * (tpr + previous_tpr) / 2, axis=1)
    invalid = (positives[:, 0] == 0) | (negatives[:, 0] == 0)
    return {metric: np.where(invalid, np.nan, out[metric]) for metric in METRICS}


@dataclass
class Resamples:
    """A two-way ("pigeonhole") bootstrap: targets and examples resampled independently.

    Targets share their examples (and, leave-one-out, their shadows), so their metrics are correlated
    and resampling targets alone gives intervals that are too narrow (``tests/test_verdict.py`` shows a
    models-only bootstrap covering too rarely on a synthetic models x examples population). Resampling
    examples as well accounts for the shared examples (Owen 2007, crossed random effects); it is
    conservative when the (target, example) interaction is large.

    Attributes:
        targets: (B, T) target indices; weights: (B, n) multiplicity of each of a subgroup's n examples.
    """

    targets: np.ndarray
    weights: np.ndarray

    @classmethod
    def draw(cls, n_targets: int, n_examples: int, n_bootstrap: int, seed: int = 0) -> Resamples:
        rng = np.random.default_rng(seed)
        targets = rng.integers(0, n_targets, (n_bootstrap, n_targets))
        examples = rng.integers(0, n_examples, (n_bootstrap, n_examples))
        weights = np.zeros((n_bootstrap, n_examples), dtype=np.int32)
        np.add.at(weights, (np.arange(n_bootstrap)[:, None], examples), 1)
        return cls(targets, weights)


def estimate(scores: np.ndarray, keep: np.ndarray, mask: np.ndarray, resamples: Resamples | None = None
             ) -> dict[str, Any]:
    """Per-target metrics of one attack on one subgroup, and their values on bootstrap resamples.

    Args:
        scores, keep: (T, N); mask: (N,) the subgroup; resamples: over T targets and the mask's examples.
    Returns:
        ``point``: metric -> (T,); ``resampled``: metric -> (T, B) (absent without ``resamples``);
        ``n_members``, ``n_nonmembers``: (T,) the counts behind each target's ROC.
    """
    scores, keep = scores[:, mask], keep[:, mask]
    rows = [roc_metrics(scores[t], keep[t]) for t in range(len(scores))]
    out: dict[str, Any] = {"point": {m: np.array([row[m] for row in rows]) for m in METRICS},
                           "n_members": keep.sum(1), "n_nonmembers": (~keep).sum(1)}
    if resamples is not None:
        per_target = [weighted_roc_metrics(scores[t], keep[t], resamples.weights) for t in range(len(scores))]
        out["resampled"] = {m: np.stack([row[m] for row in per_target]) for m in METRICS}
    return out


def pair(estimated: dict[str, Any], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(point (T,), resampled (T, B)) of ``metric`` from an :func:`estimate` result."""
    return estimated["point"][metric], estimated["resampled"][metric]


def _resampled_means(resampled: np.ndarray, resamples: Resamples) -> np.ndarray:
    """(B,) mean over each resample's targets of resampled (T, B)."""
    draws = resampled[resamples.targets, np.arange(len(resamples.targets))[:, None]]  # (B, T)
    present = ~np.isnan(draws)
    with np.errstate(invalid="ignore"):  # a resample without any value gives NaN
        return np.where(present, draws, 0).sum(1) / present.sum(1)


def interval(point: np.ndarray, resampled: np.ndarray, resamples: Resamples, confidence: float = 0.95
             ) -> dict[str, Any]:
    """Mean over targets with its two-way bootstrap 95% interval, shaped like :func:`bnlib.stats.mean_ci`.

    Args:
        point: (T,) per-target values (NaN = not available, e.g. a fit level never reached);
        resampled: (T, B) the same on each resample.
        confidence: of ``ci``, the percentile interval also returned (e.g. Bonferroni-widened for a family);
            ``ci95`` is always the 95% one.
    """
    n = int(np.sum(~np.isnan(point)))
    if n == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "ci": [float("nan")] * 2, "n": 0}
    means = _resampled_means(resampled, resamples)
    tail = (1 - confidence) / 2
    return {"mean": float(np.nanmean(point)), "ci95": [float(q) for q in np.nanquantile(means, [0.025, 0.975])],
            "ci": [float(q) for q in np.nanquantile(means, [tail, 1 - tail])], "n": n}


def paired_difference(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray],
                      resamples: Resamples) -> dict[str, Any]:
    """a - b for two zoos with the same keep mask and examples (BN vs no-BN), each given as
    (point (T,), resampled (T, B)), with the same resamples for both.

    Returns:
        ``mean``, ``ci95`` of the difference of means over targets, ``n`` targets with both values, a
        two-sided bootstrap ``p_value`` (twice the smaller share of resampled differences on either side of
        0, at least 1/(B+1)), the bootstrap ``se`` and ``unit`` ("models": the targets).
    """
    n = int(np.sum(~np.isnan(a[0]) & ~np.isnan(b[0])))
    mean = float(np.nanmean(a[0]) - np.nanmean(b[0])) if n else float("nan")
    return _bootstrap_difference(mean, _resampled_means(a[1], resamples) - _resampled_means(b[1], resamples), n)


def _bootstrap_difference(mean: float, resampled: np.ndarray, n: int) -> dict[str, Any]:
    """Interval, two-sided p-value and SE of a difference from its (B,) resampled values (NaN dropped)."""
    diff = resampled[~np.isnan(resampled)]
    if diff.size < 2 or n == 0:
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": 0, "p_value": float("nan"),
                "se": float("nan"), "unit": "models"}
    low, high = np.quantile(diff, [0.025, 0.975])
    tail = min(np.sum(diff <= 0), np.sum(diff >= 0))
    return {"mean": mean, "ci95": [float(low), float(high)], "n": n,
            "p_value": float(min(1.0, (1 + 2 * tail) / (1 + diff.size))), "se": float(diff.std(ddof=1)),
            "unit": "models"}


def direction(difference: dict[str, Any], alpha: float = 0.05) -> str:
    """Words for a :func:`paired_difference` of BN minus another norm: higher / lower / not different."""
    if difference["n"] == 0 or np.isnan(difference["mean"]):
        return "not measurable"
    if difference["p_value"] >= alpha:
        return "not significantly different"
    return "higher with BatchNorm" if difference["mean"] > 0 else "lower with BatchNorm"


def pooled_roc(scores: np.ndarray, keep: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC (fpr, tpr) of all targets' scores on the examples of ``mask`` taken together (for plots)."""
    fpr, tpr, _ = roc_curve(keep[:, mask].ravel(), scores[:, mask].ravel())
    return fpr, tpr


def pooled_estimate(scores: np.ndarray, keep: np.ndarray, mask: np.ndarray, resamples: Resamples | None = None,
                    chunk: int = 4_000_000) -> dict[str, Any]:
    """The metrics of the ROC of all targets' scores pooled (as the LiRA reference's plots pool its
    targets): the literature's TPR at low FPR, resolved down to 1 / (pooled non-members).

    Args:
        scores, keep: (T, N); mask: (N,) the subgroup; resamples: over the T targets and the mask's
            examples; a resample pools target t's score on example n with multiplicity
            (copies of t) x (copies of n).
        chunk: the most (resample, score) pairs held at once.
    Returns:
        ``point``: metric -> float; ``resampled``: metric -> (B,) (absent without ``resamples``);
        ``n_members``, ``n_nonmembers``: the pooled counts; ``n_targets``.
    """
    scores, keep = scores[:, mask], keep[:, mask]  # (T, n)
    out: dict[str, Any] = {"point": roc_metrics(scores.ravel(), keep.ravel()), "n_members": int(keep.sum()),
                           "n_nonmembers": int((~keep).sum()), "n_targets": int(len(scores))}
    if resamples is not None:
        n_targets, size = scores.shape[0], scores.size
        # (B, T) copies of each target; index -1 marks a draw that counts for nothing
        copies = np.stack([np.bincount(row[row >= 0], minlength=n_targets) for row in resamples.targets])
        per_chunk = max(1, chunk // size)
        parts = []
        for start in range(0, len(copies), per_chunk):
            weights = (copies[start:start + per_chunk, :, None]
                       * resamples.weights[start:start + per_chunk, None, :]).reshape(-1, size)  # (b, T n)
            parts.append(weighted_roc_metrics(scores.ravel(), keep.ravel(), weights))
        out["resampled"] = {m: np.concatenate([part[m] for part in parts]) for m in METRICS}
    return out


def pooled_interval(estimated: dict[str, Any], metric: str) -> dict[str, Any]:
    """A :func:`pooled_estimate`'s ``metric`` with its percentile 95% interval, shaped like
    :func:`bnlib.stats.mean_ci` (``n``: targets pooled)."""
    draws = estimated["resampled"][metric]
    if estimated["n_targets"] == 0 or np.isnan(draws).all():
        return {"mean": float("nan"), "ci95": [float("nan"), float("nan")], "n": estimated["n_targets"]}
    low, high = np.nanquantile(draws, [0.025, 0.975])
    return {"mean": float(estimated["point"][metric]), "ci95": [float(low), float(high)], "n": estimated["n_targets"]}


def pooled_difference(a: dict[str, Any], b: dict[str, Any], metric: str) -> dict[str, Any]:
    """a - b of a pooled metric for two zoos with the same keep mask, examples and resamples (paired);
    shaped like :func:`paired_difference`."""
    return _bootstrap_difference(float(a["point"][metric] - b["point"][metric]),
                                 a["resampled"][metric] - b["resampled"][metric], min(a["n_targets"], b["n_targets"]))


def pooled_over_pools(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], n_bootstrap: int | None = None,
                      chunk: int = 4_000_000) -> dict[str, Any]:
    """:func:`pooled_estimate` with the targets of several independent data pools in one ROC: each pool's
    targets are attacked with their own pool's shadows, and their scores pooled.

    Args:
        parts: per pool, ``(scores (T, N), keep (T, N), mask (N,))``.
        n_bootstrap: resamples of a bootstrap stratified by pool (targets and examples resampled within each
            pool, each pool with its own seeded draw, the pool's index); None: the point only.
    Returns:
        like :func:`pooled_estimate`, ``n_targets`` summed over the pools.
    """
    scores = np.concatenate([s[:, m].ravel() for s, _, m in parts])
    members = np.concatenate([k[:, m].ravel() for _, k, m in parts])
    out: dict[str, Any] = {"point": roc_metrics(scores, members), "n_members": int(members.sum()),
                           "n_nonmembers": int((~members).sum()), "n_targets": sum(len(s) for s, _, _ in parts)}
    if n_bootstrap is not None:
        weights = []  # per pool, (B, T n) multiplicity of each (target, example) score
        for pool, (part_scores, _, mask) in enumerate(parts):
            draw = Resamples.draw(len(part_scores), int(mask.sum()), n_bootstrap, seed=pool)
            copies = np.stack([np.bincount(row, minlength=len(part_scores)) for row in draw.targets])
            weights.append((copies[:, :, None] * draw.weights[:, None, :]).reshape(n_bootstrap, -1))
        per_chunk = max(1, chunk // scores.size)
        parts_out = [weighted_roc_metrics(scores, members,
                                          np.concatenate([w[start:start + per_chunk] for w in weights], 1))
                     for start in range(0, n_bootstrap, per_chunk)]
        out["resampled"] = {m: np.concatenate([part[m] for part in parts_out]) for m in METRICS}
    return out


# ----------------------------------------------------------------------------- querying a zoo

def augment_queries(x: torch.Tensor, augment: str) -> torch.Tensor:
    """(N, C, H, W) -> (A, N, C, H, W) query views: the image itself first, then flips and shifts.

    ``flip``: + horizontal mirror (A = 2). ``flip_shift``: each of those also shifted by 2 pixels up,
    down, left and right (circular shift; the borders of these images are background), A = 10.
    """
    if augment not in AUGMENTS:
        raise ValueError(f"Parameter 'query_augment' got {augment!r}; allowed values: {', '.join(AUGMENTS)}.")
    views = [x] if augment == "none" else [x, x.flip(-1)]
    if augment == "flip_shift":
        views += [view.roll(shift, dims=dim) for view in views for dim in (-2, -1) for shift in (-2, 2)]
    return torch.stack(views)


QUERY_MODES = ("eval", "train_shuffled", "train_pool_order")


def _query_all(zoo: zoo_lib.Zoo, x: torch.Tensor, mode: str, augment: str, query_batch_size: int) -> torch.Tensor:
    """(T, M, A, C) logits of every zoo model on the views of x (M, C, H, W), queried in ``mode``."""
    networks = [zoo.model(t) for t in range(zoo.n_models)]
    views = augment_queries(x, augment)
    if mode == "eval":
        per_view = [ensemble.predict_all(networks, view, bn_mode="eval") for view in views]
    else:  # train mode: each chunk of query_batch_size inputs is normalized by its own statistics
        order = (torch.randperm(len(x), generator=torch.Generator().manual_seed(0)) if mode == "train_shuffled"
                 else torch.arange(len(x)))
        inverse = order.argsort()
        per_view = [torch.stack([train.predict_logits(net, view[order], "train", query_batch_size)[inverse]
                                 for net in networks]) for view in views]
    return torch.stack(per_view, dim=2)


def query_zoo(zoo: zoo_lib.Zoo, cfg, mode: str = "eval", augment: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of every zoo model on the pool and the test set, queried as asked, cached in the zoo entry.

    Args:
        mode: ``eval`` (BatchNorm's running statistics: how a deployed model answers); ``train_shuffled``
            (training-mode BN, query batches of ``cfg.batch_size`` shuffled examples, which look like
            training batches); ``train_pool_order`` (training-mode BN, batches in the pool's storage order,
            so the canaries, stored last, are normalized by each other's statistics). The LiRA reference
            code queries in training mode, in chunks of the training set in storage order.
        augment: see :func:`augment_queries`.
    Returns:
        pool logits (T, N, A, C) and test logits (T, n_test, A, C), float32.
    """
    if mode not in QUERY_MODES:
        raise ValueError(f"Parameter 'mode' got {mode!r}; allowed values: {', '.join(map(repr, QUERY_MODES))}.")
    if mode == "eval" and augment == "none":
        return zoo.logits.unsqueeze(2), zoo.test_logits.unsqueeze(2)

    def compute() -> dict[str, torch.Tensor]:
        _, pool_x, test_x = zoo_lib.zoo_inputs(cfg)
        return {"pool": _query_all(zoo, pool_x, mode, augment, cfg.batch_size),
                "test": _query_all(zoo, test_x, mode, augment, cfg.batch_size)}

    stored = zoo.entry.get_or_compute(f"mia_query_{mode}_{augment}", compute)
    return stored["pool"], stored["test"]


def signals_of(zoo: zoo_lib.Zoo, cfg, mode: str = "eval", augment: str = "none",
               checkpoint: int | None = None) -> Signals:
    """:class:`Signals` of a zoo, from its final models queried as asked (:func:`query_zoo`), or from
    checkpoint ``checkpoint`` (an index into ``zoo.checkpoint_epochs``; eval mode, no augmentation; the
    population signal then comes from the final models, so RMIA is not meaningful there)."""
    if checkpoint is None:
        pool, test = query_zoo(zoo, cfg, mode, augment)
    else:
        pool, test = zoo.checkpoint_logits[checkpoint].float(), zoo.test_logits
    return Signals.from_logits(zoo.keep, pool, zoo.labels, test, zoo.test_labels)


# ----------------------------------------------------------------------------- the chapter's measurements

def subgroups(zoo: zoo_lib.Zoo) -> dict[str, np.ndarray]:
    """The pool's subgroups: outliers (canaries, inserted or held out) and inliers; (N,) bool each."""
    outlier = zoo.is_outlier.numpy().astype(bool)
    return {"outliers": outlier, "inliers": ~outlier}


def resamples_for(zoo: zoo_lib.Zoo, n_bootstrap: int) -> dict[str, Resamples]:
    """The bootstrap resamples of each subgroup (the same for every norm: comparisons are paired)."""
    return {group: Resamples.draw(zoo.n_models, int(mask.sum()), n_bootstrap)
            for group, mask in subgroups(zoo).items()}


def _stack(estimates: list[dict[str, Any]]) -> dict[str, Any]:
    """Estimates at E checkpoints -> one estimate whose arrays gain a leading (E,) axis."""
    if isinstance(estimates[0], dict):
        return {key: _stack([e[key] for e in estimates]) for key in estimates[0]}
    return np.stack(estimates)


def measure(zoo: zoo_lib.Zoo, cfg, params: ChapterParams) -> dict[str, Any]:
    """Everything the chapter reports for one zoo (leave-one-out over its models).

    Returns a dict of :func:`estimate` results:
        ``attacks``: attack -> group -> estimate, eval-mode queries (resampled: the headline attack on
            every group, the others on outliers);
        ``scores``: (T, N) of the headline attack, for ROC curves;
        ``train_mode``: query mode (``train_shuffled``, ``train_pool_order``) -> group -> estimate of the
            headline attack queried with train-mode BN, and ``train_mode_scores``: mode -> (T, N) (both
            None for zoos without BatchNorm: their answers do not depend on the mode);
        ``fit``: ``epochs`` (E,), ``train_accuracy`` (E, T) and group -> estimate with an (E, ...) axis,
            from the checkpoints (eval mode, no augmentation; resampled on outliers), and ``scores``
            (E, T, N) float32, the headline attack's scores at each checkpoint;
        ``pooled``: attack -> group -> :func:`pooled_estimate` for the headline attack and its reference
            counterpart (:func:`reference_attack`), resampled on outliers.
    """
    groups, resamples, keep = subgroups(zoo), resamples_for(zoo, params.n_bootstrap), zoo.keep.numpy()

    def resampling(attack: str, group: str) -> Resamples | None:
        return resamples[group] if attack == params.attack or group == "outliers" else None

    eval_signals = signals_of(zoo, cfg, "eval", params.query_augment)
    scores = {attack: attack_scores(eval_signals, attack) for attack in ATTACKS}
    out: dict[str, Any] = {
        "attacks": {attack: {group: estimate(scores[attack], keep, mask, resampling(attack, group))
                             for group, mask in groups.items()} for attack in ATTACKS},
        "scores": scores[params.attack], "train_mode": None, "train_mode_scores": None,
        "pooled": {attack: {group: pooled_estimate(scores[attack], keep, mask,
                                                   resamples[group] if group == "outliers" else None)
                            for group, mask in groups.items()}
                   for attack in dict.fromkeys((params.attack, reference_attack(params.attack)))}}
    if zoo.arch_spec[1] == "batch":
        out["train_mode"], out["train_mode_scores"] = {}, {}
        for mode in QUERY_MODES[1:]:
            train_scores = attack_scores(signals_of(zoo, cfg, mode, params.query_augment), params.attack)
            out["train_mode"][mode] = {group: estimate(train_scores, keep, mask, resamples[group])
                                       for group, mask in groups.items()}
            out["train_mode_scores"][mode] = train_scores
    checkpoints = range(len(zoo.checkpoint_epochs))
    checkpoint_scores = [attack_scores(signals_of(zoo, cfg, checkpoint=e), params.attack) for e in checkpoints]
    out["fit"] = {"epochs": zoo.checkpoint_epochs.numpy(),
                  "train_accuracy": np.stack([zoo.train_accuracy(e).numpy() for e in checkpoints]),
                  **{group: _stack([estimate(s, keep, mask, resampling("", group)) for s in checkpoint_scores])
                     for group, mask in groups.items()},
                  "scores": np.stack(checkpoint_scores).astype(np.float32)}
    return out


def reference_attack(attack: str) -> str:
    """The reference-code counterpart of a LiRA attack (``lira_online_global`` ->
    ``lira_reference_online_global``); the reference's online fixed-variance LiRA for other attacks."""
    if attack.startswith("lira_reference"):
        return attack
    return attack.replace("lira_", "lira_reference_") if attack.startswith("lira_") else "lira_reference_online_global"


def pooled_at_fit_level(fit: dict[str, Any], keep: np.ndarray, mask: np.ndarray, level: float,
                        resamples: Resamples | None = None) -> dict[str, Any]:
    """:func:`pooled_estimate` of the headline attack at inlier train accuracy ``level``: each target's
    scores (N,) read where its fit first crosses the level, interpolated between its two checkpoints
    around it (:func:`bnlib.stats.value_at_level` gives the fractional checkpoint index). Targets that
    never reach the level (or start above it: no crossing seen) get weight 0 in every resample and are
    left out of the point estimate; if none reaches it, every metric is NaN and ``n_targets`` 0.

    Args:
        fit: ``measure(...)["fit"]``; keep: (T, N); mask: (N,) the subgroup.
    """
    accuracy, scores = fit["train_accuracy"], np.asarray(fit["scores"], dtype=float)  # (E, T), (E, T, N)
    position = np.array([stats.value_at_level(accuracy[:, t], np.arange(len(accuracy)), level)
                         for t in range(accuracy.shape[1])])  # (T,) fractional checkpoint index
    reached = ~np.isnan(position)
    if not reached.any():  # nothing to read: NaN metrics, reported as not measurable
        n_resamples = 0 if resamples is None else len(resamples.targets)
        return {"point": dict.fromkeys(METRICS, float("nan")), "n_members": 0, "n_nonmembers": 0, "n_targets": 0,
                **({} if resamples is None else {"resampled": {m: np.full(n_resamples, np.nan) for m in METRICS}})}
    lower = np.floor(np.where(reached, position, 0)).astype(int)
    upper = np.minimum(lower + 1, len(accuracy) - 1)
    targets = np.arange(accuracy.shape[1])
    weight = (np.where(reached, position, 0) - lower)[:, None]
    at_level = scores[lower, targets] + weight * (scores[upper, targets] - scores[lower, targets])  # (T, N)
    if resamples is not None:  # a target that never reaches the level is drawn with weight 0
        resamples = Resamples(np.where(reached[resamples.targets], resamples.targets, -1), resamples.weights)
    out = pooled_estimate(at_level[reached], keep[reached], mask, None)
    if resamples is not None:
        full = pooled_estimate(at_level, keep, mask, resamples)
        out["resampled"] = full["resampled"]
    out["n_targets"] = int(reached.sum())
    return out


def at_fit_level(fit: dict[str, Any], group: str, metric: str, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Each target's ``metric`` interpolated at inlier train accuracy ``level`` along its checkpoints.

    Args:
        fit: ``measure(...)["fit"]``.
    Returns:
        point (T,) and resampled (T, B) values; NaN for targets that never reach ``level``.
    """
    accuracy, estimated = fit["train_accuracy"], fit[group]
    point = np.array([stats.value_at_level(accuracy[:, t], estimated["point"][metric][:, t], level)
                      for t in range(accuracy.shape[1])])
    resampled = estimated["resampled"][metric]  # (E, T, B)
    values = np.array([[stats.value_at_level(accuracy[:, t], resampled[:, t, b], level)
                        for b in range(resampled.shape[2])] for t in range(resampled.shape[1])])
    return point, values


def epochs_to_fit_level(fit: dict[str, Any], level: float) -> float:
    """Mean over targets of the (interpolated) epoch at which a target reaches ``level``; NaN if none does."""
    epochs = np.array([stats.value_at_level(fit["train_accuracy"][:, t], fit["epochs"], level)
                       for t in range(fit["train_accuracy"].shape[1])])
    return float(epochs[~np.isnan(epochs)].mean()) if (~np.isnan(epochs)).any() else float("nan")


def matched_fit_level(fits: dict[str, dict[str, Any]], requested: float = 0.0) -> float:
    """The inlier train accuracy at which norms are compared.

    Args:
        fits: norm -> ``measure(...)["fit"]``.
        requested: a level in (0, 1]; 0 picks the highest level (floored to 0.01) that every target of
            every norm reaches at one of its checkpoints.
    """
    if not 0.0 <= requested <= 1.0:
        raise ValueError(f"Parameter 'matched_fit_level' got {requested!r}; allowed: 0 (automatic) or a train "
                         "accuracy in (0, 1].")
    if requested > 0:
        return float(requested)
    return stats.common_top_level({norm: fit["train_accuracy"].T for norm, fit in fits.items()}, resolution=0.01)


def _to_tensors(value: Any) -> Any:
    """numpy arrays -> tensors inside nested dicts (the cache loads with ``weights_only=True``)."""
    if isinstance(value, dict):
        return {k: _to_tensors(v) for k, v in value.items()}
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _to_arrays(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_arrays(v) for k, v in value.items()}
    return value.numpy() if isinstance(value, torch.Tensor) else value


def cached_measure(zoo: zoo_lib.Zoo, cfg, params: ChapterParams) -> dict[str, Any]:
    """:func:`measure`, cached in the zoo's entry under a key of the parameters and this module's code."""
    code = results.code_hash(results.code_of("mia"))
    key = results.config_hash({"attack": params.attack, "augment": params.query_augment,
                               "n_bootstrap": params.n_bootstrap, "code": code})
    return _to_arrays(zoo.entry.get_or_compute(f"mia_{key}", lambda: _to_tensors(measure(zoo, cfg, params))))
