"""Membership-inference attacks: one membership score per (target model, pool example), leave-one-out over a zoo.

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
      only with what our training uses, which is none (``bnlib.mia.TRAINING_AUGMENT``): a flipped canary
      is an image no model trained on.
    * TPR at a fixed FPR is read from ``roc_curve(..., drop_intermediate=False)``: the default drops
      collinear points, sometimes the one that holds the answer (:func:`bnlib.mia_eval.roc_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import special
from scipy import stats as scipy_stats

from .mia_eval import roc_metrics

ATTACKS = ("loss", "confidence", "lira_online", "lira_offline", "lira_online_global", "lira_offline_global",
           "rmia_online", "rmia_offline", "lira_reference_online", "lira_reference_offline",
           "lira_reference_online_global", "lira_reference_offline_global")
MIN_STD = 1e-3  # floor of a Gaussian's standard deviation (logits stored as float16 can tie exactly)
RMIA_OFFLINE_A = 0.3  # ML Privacy Meter's default for the offline approximation of Pr(x)


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


def reference_attack(attack: str) -> str:
    """The reference-code counterpart of a LiRA attack (``lira_online_global`` ->
    ``lira_reference_online_global``); the reference's online fixed-variance LiRA for other attacks."""
    if attack.startswith("lira_reference"):
        return attack
    return attack.replace("lira_", "lira_reference_") if attack.startswith("lira_") else "lira_reference_online_global"
