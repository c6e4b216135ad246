"""What to do about it: DP-SGD beside the cheap mitigations, as accuracy against outlier leakage.

Every *setting* is a population of T models (``params.setting_models``, by default ``cfg.n_models``, the
shared zoos' size; :func:`dp.setting_config`) trained like the shared zoo: member t on row t
of the balanced keep mask, from the zoo's initial seed of member t. So every setting has as many models as the
BN and no-norm zoos, member t of every setting is paired with member t of every other (same training examples,
same initial seed), and LiRA attacks every setting with the same strength: each target against T - 2 shadow
models of its own recipe (``mia.balanced_shadows``: half IN, half OUT for every example). Settings
(:func:`settings`):

    BatchNorm, no norm, GroupNorm, BN + strong weight decay
                        ``zoo.train_zoo(cfg with the change, norm)``
    BN, large batch at equal steps
                        batch ``params.large_batch`` for as many steps as the zoo's batch takes (more epochs),
                        the learning rate scaled by ``params.large_batch_lr_rule`` (:func:`large_batch_schedule`)
    GroupNorm (or no norm) + DP-SGD at each noise multiplier, and at the noise calibrated to each target epsilon
                        ``dp.train_dp_population`` at the learning rate ``dp.tune_learning_rate`` chose

Measured per setting (:func:`measure`):
    test accuracy          per model, mean with a t interval over models (n = models)
    canary memorization    per model: accuracy on its IN canaries minus on its OUT canaries (n = models)
    outlier LiRA TPR       LiRA (online, global variance; ``mia.attack_scores``) leave-one-out over the
                           population; the ROC of all targets on the outliers pooled (as the LiRA reference
                           does), TPR at ``low_fpr``; interval from the two-way bootstrap over targets and
                           examples (``mia.Resamples``); and per target the outlier AUC (for paired contrasts)

Then paired contrasts (:func:`paired_contrast`, over model pairs), each setting's probability of lying on the
accuracy-leakage front over bootstrap draws of models (:func:`front_probabilities`), the table, the figure, the
values the prose quotes (:func:`chapter_values`) and the summary rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score, roc_curve

from . import chapter, dp, mia, models, plots, results, stats, train, verdict
from . import zoo as zoo_lib
from .dp import ChapterParams, Population, make_private, quiet_hooks

ATTACK = "lira_online_global"  # the membership-inference chapter's headline attack
FRONT_LOW = 0.2  # from this front probability up to ``front_high`` the prose says "possibly on the front"
PER_MODEL = ("test_accuracy", "canary_memorization", "lira_auc")  # per-model values the contrasts pair


def models_label(norm: str) -> str:
    return plots.NORM_LABELS.get(norm, norm)


@dataclass(frozen=True)
class Setting:
    """One point of the trade-off: ``key`` (summary name), ``label``, the norm, the ``cfg`` fields changed,
    and for DP-SGD the noise multiplier or the target epsilon its noise is calibrated to (both None: SGD)."""

    key: str
    label: str
    norm: str
    overrides: tuple[tuple[str, Any], ...] = ()
    noise_multiplier: float | None = None
    target_epsilon: float | None = None

    @property
    def private(self) -> bool:
        return self.noise_multiplier is not None or self.target_epsilon is not None


def large_batch_schedule(cfg, params: ChapterParams) -> dict[str, Any]:
    """The large-batch defence at equal steps: batch B = ``params.large_batch`` for as many optimizer steps as
    the zoo's batch b takes (epochs = round(steps / steps per epoch at B)), the learning rate scaled by
    B/b (``linear``, Goyal et al. 2017) or sqrt(B/b) (``sqrt``). Steps per epoch as the trainer counts them:
    floor(n / batch), n the training examples of a model."""
    n = min(dp.member_sizes(cfg))
    base_steps = cfg.epochs * (n // cfg.batch_size)
    per_epoch = n // params.large_batch
    epochs = max(1, round(base_steps / per_epoch))
    ratio = params.large_batch / cfg.batch_size
    factor = ratio if params.large_batch_lr_rule == "linear" else math.sqrt(ratio)
    return {"batch_size": params.large_batch, "epochs": epochs, "lr": cfg.lr * factor, "steps": epochs * per_epoch,
            "base_steps": base_steps, "base_batch_size": cfg.batch_size, "base_epochs": cfg.epochs,
            "base_lr": cfg.lr, "rule": params.large_batch_lr_rule, "lr_factor": factor}


def settings(cfg, params: ChapterParams) -> list[Setting]:
    """The chapter's settings, in display order (see the module docstring)."""
    large = large_batch_schedule(cfg, params)
    plan = [Setting("batch", "BatchNorm", "batch"), Setting("none", "no norm", "none"),
            Setting("group", "GroupNorm", "group"),
            Setting("batch_strong_weight_decay", f"BN, weight decay {params.strong_weight_decay:g}", "batch",
                    (("weight_decay", params.strong_weight_decay),)),
            Setting("batch_large_batch_equal_steps", f"BN, batch {params.large_batch}, equal steps", "batch",
                    tuple((name, large[name]) for name in ("batch_size", "epochs", "lr")))]
    for norm in params.dp_norms:
        plan += [Setting(f"{norm}_dp_sgd_noise_{noise:g}", f"{models_label(norm)} + DP-SGD", norm,
                         noise_multiplier=noise) for noise in params.noise_multipliers]
        plan += [Setting(f"{norm}_dp_sgd_epsilon_{target:g}", f"{models_label(norm)} + DP-SGD, ε target {target:g}",
                         norm, target_epsilon=target) for target in params.target_epsilons]
    return plan


def population(cfg, setting: Setting, params: ChapterParams, progress: bool = True
               ) -> tuple[Population, dict[str, Any] | None]:
    """Train (or load) the models of one setting; for DP-SGD also the learning-rate tuning that chose its rate."""
    if setting.private:
        noise = setting.noise_multiplier or dp.calibrated_noise(cfg, params, setting.target_epsilon)
        tuning = dp.tune_learning_rate(cfg, setting.norm, noise, params, progress)
        result = dp.train_dp_population(cfg, setting.norm, noise, tuning["chosen"], params, progress)
        return replace(result, setting=f"{setting.label}, σ = {noise:.3g}"), tuning
    return Population.from_zoo(setting.label, zoo_lib.train_zoo(replace(cfg, **dict(setting.overrides)),
                                                               setting.norm, progress=progress)), None


# ----------------------------------------------------------------------------- measurements

def canary_memorization(keep: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                        is_outlier: torch.Tensor) -> np.ndarray:
    """(T,) per model: accuracy on its IN outliers minus accuracy on its OUT outliers.

    Args: keep (T, N) bool, logits (T, N, C), labels (N,), is_outlier (N,) bool.
    """
    correct = (logits.argmax(-1) == labels).float()  # (T, N)
    inside, outside = keep & is_outlier, ~keep & is_outlier
    return ((correct * inside).sum(1) / inside.sum(1) - (correct * outside).sum(1) / outside.sum(1)).numpy()


def pooled_tpr(scores: np.ndarray, is_member: np.ndarray, fpr_level: float,
               weights: np.ndarray | None = None) -> float:
    """TPR at FPR <= ``fpr_level`` of one ROC over all (weighted) scores: scores, is_member, weights (n,)."""
    fpr, tpr, _ = roc_curve(is_member, scores, sample_weight=weights, drop_intermediate=False)
    return float(tpr[fpr <= fpr_level].max())


def pooled_tpr_interval(scores: np.ndarray, keep: np.ndarray, mask: np.ndarray, fpr_level: float,
                        n_bootstrap: int, seed: int = 0) -> dict[str, Any]:
    """TPR at ``fpr_level`` of the ROC pooled over targets on the examples of ``mask``, with a two-way
    bootstrap interval (targets and examples resampled, ``mia.Resamples``).

    Args:
        scores, keep: (T, N); mask: (N,) bool.
    Returns:
        ``{"mean": pooled TPR, "ci95": [lo, hi], "n": T targets, "n_negatives": pooled non-member scores}``.
    """
    scores, keep = scores[:, mask], keep[:, mask]
    n_targets, n_examples = scores.shape
    point = pooled_tpr(scores.ravel(), keep.ravel(), fpr_level)
    resamples = mia.Resamples.draw(n_targets, n_examples, n_bootstrap, seed=seed)
    draws = []
    for targets, weights in zip(resamples.targets, resamples.weights, strict=True):
        chosen_keep = keep[targets]  # (T, n) a resample's targets
        if chosen_keep[:, weights > 0].all() or not chosen_keep[:, weights > 0].any():
            continue
        draws.append(pooled_tpr(scores[targets].ravel(), chosen_keep.ravel(), fpr_level,
                                np.tile(weights, n_targets)))
    low, high = np.quantile(draws, [0.025, 0.975]) if draws else (float("nan"), float("nan"))
    return {"mean": point, "ci95": [float(low), float(high)], "n": int(n_targets),
            "n_negatives": int((~keep).sum())}


def per_target_auc(scores: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(T,) each target's AUC of its scores (T, n) against its membership keep (T, n) bool."""
    return np.array([roc_auc_score(k, s) for s, k in zip(scores, keep, strict=True)])


def measure(population_: Population, params: ChapterParams) -> dict[str, Any]:
    """Accuracy and outlier leakage of one setting.

    Returns:
        ``test_accuracy``, ``canary_memorization``, ``lira_auc``: ``stats.mean_ci`` over models (n = models);
        ``lira_tpr``: :func:`pooled_tpr_interval` on the outliers; ``n_models``; ``n_shadow_models`` (shadows
        per target: T - 2); ``per_model`` (the three per-model arrays as lists); ``lira_outliers`` (scores and
        keep (T, n_outliers) for the front bootstrap); the privacy fields of the population (None without DP).
    """
    p = population_
    test_accuracy = (p.test_logits.argmax(-1) == p.test_labels).float().mean(1).numpy()
    signals = mia.Signals.from_logits(p.keep, p.logits, p.labels, p.test_logits, p.test_labels)
    scores = mia.attack_scores(signals, ATTACK)  # (T, N), leave-one-out
    outliers = p.is_outlier.numpy().astype(bool)
    keep = p.keep.numpy().astype(bool)
    per_model = {"test_accuracy": test_accuracy,
                 "canary_memorization": canary_memorization(p.keep, p.logits, p.labels, p.is_outlier),
                 "lira_auc": per_target_auc(scores[:, outliers], keep[:, outliers])}
    return {"setting": p.setting, "norm": p.norm, "epsilon": p.epsilon, "epsilons": p.epsilons,
            "noise_multiplier": p.noise_multiplier, "delta": p.delta, "dp_lr": p.lr, "sample_rate": p.sample_rate,
            "steps": p.steps, "n_models": p.n_models, "n_shadow_models": p.n_models - 2,
            **{name: stats.mean_ci(values) for name, values in per_model.items()},
            "per_model": {name: [float(v) for v in values] for name, values in per_model.items()},
            "lira_tpr": pooled_tpr_interval(scores, keep, outliers, params.low_fpr, params.n_bootstrap),
            "lira_outliers": (scores[:, outliers], keep[:, outliers])}


# ----------------------------------------------------------------------------- paired contrasts

def paired_contrast(first: np.ndarray, second: np.ndarray, names: tuple[str, str] = ("first", "second"),
                    alpha: float = 0.05) -> dict[str, Any]:
    """``first`` - ``second`` over model pairs (first[t] and second[t] trained on the same keep mask from the
    same initial seed): the mean difference with a t interval and a paired t test over pairs (n = pairs), and
    ``verdict.verdict``'s words, also with the arms named (``verdict_text``: "GroupNorm higher ..."). The one
    place that decides how a contrast is inferred: swap this function to change the procedure.

    Args:
        first, second: (T,) per-model values of the two settings, pair t at index t.
    """
    a, b = np.asarray(first, float), np.asarray(second, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Parameters 'first' {a.shape} and 'second' {b.shape} must be (T,) with one T (pairs).")
    d = (a - b)[np.isfinite(a - b)]
    n = int(d.size)
    summary = stats.mean_ci(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n >= 2 else float("nan")
    if n < 2:
        p_value = float("nan")
    elif se == 0:  # every pair differs by the same amount: no spread to test against
        p_value = 1.0 if summary["mean"] == 0 else 0.0
        se = 0.0
    else:
        p_value = float(scipy_stats.ttest_1samp(d, 0.0).pvalue)
    words = verdict.verdict(summary["mean"], se, p_value, n, alpha=alpha)
    named = words.replace("no-BN higher", f"{names[1]} higher", 1) if words.startswith("no-BN higher") else (
        words.replace("BN higher", f"{names[0]} higher", 1) if words.startswith("BN higher") else words)
    return {"first": names[0], "second": names[1], "mean": summary["mean"], "ci95": summary["ci95"], "n": n,
            "unit": "model pairs", "se": se, "p_value": p_value,
            "test": "paired t over model pairs (same keep mask, same initial seed); secondary, not corrected",
            "verdict": words, "verdict_words": verdict.leading_words(words), "verdict_text": named}


def contrast_pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(first key, second key) of every contrast: each defence against BN, and GroupNorm against each
    GroupNorm + DP-SGD setting (the cleanest DP contrast: only DP-SGD differs)."""
    keys = [row["key"] for row in rows]
    pairs = [("batch", key) for key in keys if key != "batch"] if "batch" in keys else []
    if "group" in keys:
        pairs += [("group", row["key"]) for row in rows if row["epsilon"] is not None and row["norm"] == "group"]
    return pairs


def contrasts(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``"<first>_vs_<second>"`` -> per-model measure -> :func:`paired_contrast` (first - second)."""
    by_key = {row["key"]: row for row in rows}
    out = {}
    for first, second in contrast_pairs(rows):
        a, b = by_key[first], by_key[second]
        out[f"{first}_vs_{second}"] = {name: paired_contrast(a["per_model"][name], b["per_model"][name],
                                                             (a["setting"], b["setting"])) for name in PER_MODEL}
    return out


# ----------------------------------------------------------------------------- fronts and their uncertainty

def pareto_front(accuracy: np.ndarray, leakage: np.ndarray) -> np.ndarray:
    """(S,) bool: settings that no other setting beats on both axes (accuracy at least as high and leakage
    at least as low, one of them strictly)."""
    accuracy, leakage = np.asarray(accuracy, float), np.asarray(leakage, float)
    better_or_equal = (accuracy[None, :] >= accuracy[:, None]) & (leakage[None, :] <= leakage[:, None])
    strictly = (accuracy[None, :] > accuracy[:, None]) | (leakage[None, :] < leakage[:, None])
    return ~np.any(better_or_equal & strictly, axis=1)


def front_probability(accuracy_draws: np.ndarray, leakage_draws: np.ndarray) -> np.ndarray:
    """(S,) share of bootstrap draws in which each setting lies on the front: accuracy_draws, leakage_draws
    (B, S), one row per draw."""
    accuracy_draws, leakage_draws = np.asarray(accuracy_draws, float), np.asarray(leakage_draws, float)
    if accuracy_draws.shape != leakage_draws.shape or accuracy_draws.ndim != 2:
        raise ValueError(f"Parameters 'accuracy_draws' {accuracy_draws.shape} and 'leakage_draws' "
                         f"{leakage_draws.shape} must both be (B, S).")
    return np.mean([pareto_front(a, b) for a, b in zip(accuracy_draws, leakage_draws, strict=True)], axis=0)


def front_probabilities(rows: list[dict[str, Any]], low_fpr: float, n_bootstrap: int, seed: int = 0
                        ) -> dict[str, np.ndarray]:
    """Each setting's probability of lying on the accuracy-memorization and accuracy-LiRA fronts over
    bootstrap draws of models: the same model indices for every setting in a draw (models are paired by
    index), each setting's mean accuracy, mean memorization and pooled LiRA TPR of the drawn targets recomputed
    (LiRA's scores are not recomputed: the shadows stay). Returns ``{"memorization": (S,), "lira": (S,)}``."""
    sizes = {row["n_models"] for row in rows}
    if len(sizes) != 1:
        raise ValueError(f"Settings have different model counts {sorted(sizes)}; the front bootstrap draws models "
                         "jointly and needs one count.")
    (n_models,) = sizes
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_models, size=(n_bootstrap, n_models))
    accuracy = np.array([[np.mean(np.asarray(r["per_model"]["test_accuracy"])[d]) for r in rows] for d in draws])
    memorization = np.array([[np.mean(np.asarray(r["per_model"]["canary_memorization"])[d]) for r in rows]
                             for d in draws])
    lira = np.full_like(accuracy, np.nan)
    for b, d in enumerate(draws):
        for s, row in enumerate(rows):
            scores, keep = row["lira_outliers"]
            if keep[d].all() or not keep[d].any():
                continue
            lira[b, s] = pooled_tpr(scores[d].ravel(), keep[d].ravel(), low_fpr)
    usable = np.isfinite(lira).all(1)
    return {"memorization": front_probability(accuracy, memorization),
            "lira": front_probability(accuracy[usable], lira[usable])}


def mark_pareto_fronts(rows: list[dict[str, Any]], low_fpr: float | None = None, n_bootstrap: int = 0
                       ) -> list[dict[str, Any]]:
    """Set ``pareto_memorization`` and ``pareto_lira`` of every row (in place; returns ``rows``): whether the
    setting is on the Pareto front (:func:`pareto_front`) of the means; with ``n_bootstrap`` also
    ``front_probability_memorization`` and ``front_probability_lira`` (:func:`front_probabilities`)."""
    accuracy = np.array([r["test_accuracy"]["mean"] for r in rows])
    for name, short in LEAKAGE_MEASURES:
        front = pareto_front(accuracy, np.array([r[name]["mean"] for r in rows]))
        for row, on_front in zip(rows, front, strict=True):
            row[f"pareto_{short}"] = bool(on_front)
    if n_bootstrap:
        probabilities = front_probabilities(rows, low_fpr, n_bootstrap)
        for short, values in probabilities.items():
            for row, value in zip(rows, values, strict=True):
                row[f"front_probability_{short}"] = float(value)
    return rows


def seconds_per_model(cfg, setting: Setting, params: ChapterParams, noise_multiplier: float | None = None,
                      lr: float | None = None) -> float:
    """Training time of one model of ``setting`` on this machine: the median time of ``params.timing_steps``
    single training steps (after one warm-up step; the median resists other processes' bursts on a shared
    CPU) times the steps of one model. Measured afresh on every run, whether the models are cached or not."""
    point = replace(cfg, **dict(setting.overrides))
    experiment, pool_x, _ = zoo_lib.zoo_inputs(point)
    device = train.resolve_device(cfg.device)
    half = len(pool_x) // 2  # a model trains on half of the pool
    x, y = pool_x[:half].to(device), experiment.pool_y[:half].to(device)
    torch.manual_seed(0)
    model = models.build(cfg.arch, setting.norm, pool_x.shape[1], pool_x.shape[-1], experiment.num_classes,
                         cfg.width).to(device)
    if not setting.private:
        steps_per_model = point.epochs * (half // point.batch_size)
        optimizer = torch.optim.SGD(model.parameters(), lr=point.lr, momentum=point.momentum,
                                    weight_decay=point.weight_decay)
        module, batches = model, ((x[:point.batch_size], y[:point.batch_size]) for _ in iter(int, 1))
    else:
        private = make_private(model, x, y, batch_size=point.batch_size, lr=lr or 0.1,
                               noise_multiplier=noise_multiplier or 1.0, max_grad_norm=params.max_grad_norm)
        steps_per_model = point.epochs * private.steps_per_epoch
        module, optimizer = private.module, private.optimizer
        batches = (batch for _ in iter(int, 1) for batch in private.loader if len(batch[0]))
    module.train()
    durations = []
    with quiet_hooks():
        for _, (xb, yb) in zip(range(params.timing_steps + 1), batches, strict=False):
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(module(xb), yb).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            durations.append(time.perf_counter() - start)
    return float(np.median(durations[1:])) * steps_per_model


# ----------------------------------------------------------------------------- the chapter's rows, figure, summary

LEAKAGE = {"canary_memorization": "canary memorization (IN − OUT accuracy)",
           "lira_tpr": "LiRA TPR on outliers at the low FPR"}
LEAKAGE_MEASURES = (("canary_memorization", "memorization"), ("lira_tpr", "lira"))  # (row key, pareto_<short>)


def run(cfg, params: ChapterParams, progress: bool = True) -> list[dict[str, Any]]:
    """Every setting trained (or loaded), measured and timed: one row per setting, in display order, with the
    keys of :func:`measure` plus ``key``, ``label`` (with epsilon for DP settings), ``tuning`` (DP settings:
    :func:`dp.tune_learning_rate`), ``seconds_per_model``, the fronts and front probabilities
    (:func:`mark_pareto_fronts`). Every setting has ``dp.setting_config(cfg, params).n_models`` models."""
    cfg = dp.setting_config(cfg, params)
    rows = []
    for setting in settings(cfg, params):
        population_, tuning = population(cfg, setting, params, progress)
        row = measure(population_, params)
        label = setting.label if row["epsilon"] is None else f"{setting.label}, ε = {row['epsilon']:.2g}"
        rows.append({**row, "key": setting.key, "label": label, "tuning": tuning,
                     "target_epsilon": setting.target_epsilon, "overrides": dict(setting.overrides),
                     "seconds_per_model": seconds_per_model(cfg, setting, params, row["noise_multiplier"],
                                                            row["dp_lr"])})
    return mark_pareto_fronts(rows, params.low_fpr, params.n_bootstrap)


def tradeoff_figure(rows: list[dict[str, Any]], low_fpr: float):
    """Two panels, test accuracy (x) against each leakage measure (y): one numbered point per setting with 95%
    intervals on both axes (squares: DP-SGD, labelled with epsilon in the legend), the Pareto front of the
    means (high accuracy, low leakage; filled markers) drawn as a staircase. The legend (one line per setting)
    sits below the panels, and the figure grows with it."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="s" if row["epsilon"] is not None else "o", linestyle="none",
                      color=plots.NORM_COLORS.get(row["norm"], "k"), label=f"{number}. {row['label']}")
               for number, row in enumerate(rows, start=1)]
    handles.append(Line2D([], [], color="0.3", linestyle="--", label="Pareto front of the means (its points filled)"))
    legend_inches = 0.2 * -(-len(handles) // 2) + 0.1  # two columns of 9 pt lines
    fig, axes = plots.subplots(1, 2, height=3.4 + legend_inches)
    for ax, (name, short) in zip(axes, LEAKAGE_MEASURES, strict=True):
        for number, row in enumerate(rows, start=1):
            x, y = row["test_accuracy"], row[name]
            ax.errorbar(x["mean"], y["mean"], xerr=[[x["mean"] - x["ci95"][0]], [x["ci95"][1] - x["mean"]]],
                        yerr=[[max(y["mean"] - y["ci95"][0], 0)], [max(y["ci95"][1] - y["mean"], 0)]],
                        fmt="s" if row["epsilon"] is not None else "o",
                        color=plots.NORM_COLORS.get(row["norm"], "k"), capsize=2, alpha=0.85,
                        markerfacecolor=None if row[f"pareto_{short}"] else "none")
            ax.annotate(str(number), (x["mean"], y["mean"]), textcoords="offset points", xytext=(4, 3),
                        fontsize=plots.MIN_FONT)
        front = sorted((r for r in rows if r[f"pareto_{short}"]), key=lambda r: r["test_accuracy"]["mean"])
        ax.step([r["test_accuracy"]["mean"] for r in front], [r[name]["mean"] for r in front], where="post",
                color="0.3", linestyle="--", linewidth=1)
        ylabel = LEAKAGE[name].replace("low FPR", f"{low_fpr:g} FPR")
        ax.set(xlabel="test accuracy (higher is better)", ylabel=f"{ylabel}\n(lower is better)")
    fig.legend(handles=handles, loc="lower center", ncol=2, fontsize=plots.MIN_FONT, frameon=False)
    fig.tight_layout(rect=(0, legend_inches / fig.get_figheight(), 1, 1))
    return fig


def _probability(row: dict[str, Any], short: str) -> str:
    value = row.get(f"front_probability_{short}")
    return "–" if value is None else f"{value:.2f}"


def table_markdown(rows: list[dict[str, Any]], low_fpr: float) -> str:
    """Setting, models (shadows per target), test accuracy, canary memorization, LiRA TPR (pooled negatives),
    epsilon at delta (RDP / PRV; sigma, learning rate), front probabilities (memorization / LiRA), s per model:
    the measures as ``chapter.interval`` text (mean [95% interval])."""
    header = ("setting", "models (shadows)", "test accuracy", "canary memorization",
              f"LiRA TPR at {low_fpr:g} FPR (outlier negatives)", "ε RDP / PRV at δ (σ, lr)",
              "P(front): memorization / LiRA", "s per model")
    lines = []
    for row in rows:
        if row["epsilon"] is None:
            eps = "–"
        else:
            eps = (f"{row['epsilons']['rdp']:.2g} / {row['epsilons']['prv']:.2g} at {row['delta']:.2g} "
                   f"(σ = {row['noise_multiplier']:.3g}, lr = {row['dp_lr']:g})")
        lines.append((row["setting"], f"{row['n_models']} ({row['n_shadow_models']})",
                      chapter.interval(row["test_accuracy"], unit="models"),
                      chapter.interval(row["canary_memorization"], unit="models"),
                      f"{chapter.interval(row['lira_tpr'], unit='targets')} ({row['lira_tpr']['n_negatives']})",
                      eps, f"{_probability(row, 'memorization')} / {_probability(row, 'lira')}",
                      f"{row['seconds_per_model']:.1f}"))
    return chapter.markdown_table(header, lines)


def contrast_table_markdown(found: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One line per contrast and measure: first − second [95% t interval] (n pairs), p, verdict with the arms
    named."""
    header = ("contrast", "measure", "difference [95% CI]", "pairs", "p (paired t)", "verdict")
    lines = []
    for found_by_measure in found.values():
        for measure_name, entry in found_by_measure.items():
            lines.append((f"{entry['first']} − {entry['second']}", measure_name.replace("_", " "),
                          chapter.interval(entry, number_format="+.3f", unit="pairs"), entry["n"],
                          "–" if not math.isfinite(entry["p_value"]) else f"{entry['p_value']:.2g}",
                          entry["verdict_text"]))
    return chapter.markdown_table(header, lines)


def front_text(rows: list[dict[str, Any]], short: str, low: float = 0.0, high: float = 1.01) -> str:
    """The settings whose front probability (``short``: ``memorization`` or ``lira``) lies in [low, high), in
    display order, each with its epsilon if it is private and its probability: ``"no norm (0.97)"``; "none"
    when there is none."""
    chosen = [row["setting"] + ("" if row["epsilon"] is None else f" (ε = {row['epsilon']:.2g})")
              + f" ({row[f'front_probability_{short}']:.2f})" for row in rows
              if low <= row[f"front_probability_{short}"] < high]
    return ", ".join(chosen) if chosen else "none"


def tpr_bound(epsilon: float, delta: float, fpr: float) -> float:
    """The largest TPR any membership test can reach at FPR ``fpr`` against an (epsilon, delta)-DP mechanism
    (the hypothesis-testing region of Kairouz et al. 2015): min(1, e^eps fpr + delta, 1 - e^-eps (1 - delta - fpr))."""
    return float(min(1.0, math.exp(epsilon) * fpr + delta, 1 - math.exp(-epsilon) * (1 - delta - fpr)))


def promise_sentence(epsilon: float, delta: float, fpr: float, measured_tpr: float) -> str:
    """What an (epsilon, delta) guarantee does and does not promise, at the FPR the chapter reads, in words."""
    bound = tpr_bound(epsilon, delta, fpr)
    rule = "min(1, e^ε·FPR + δ, 1 − e^−ε(1 − δ − FPR))"
    if bound >= 0.999:
        return (f"At ε = {epsilon:.2g}, δ = {delta:.2g}, the guarantee bounds a membership attack's TPR at FPR "
                f"{fpr:g} by {rule} = {bound:.3f}: formally it promises nothing at this FPR (this attack measured "
                f"{measured_tpr:.3f}). What these models resist they resist in practice, against this attack, "
                "not by the guarantee.")
    head = (f"At ε = {epsilon:.2g}, δ = {delta:.2g}, no membership attack, however strong and whatever it knows, "
            f"can reach a TPR above {bound:.3g} at FPR {fpr:g} (the bound {rule}); this attack measured "
            f"{measured_tpr:.3f}.")
    if bound >= 0.5:
        return (head + " A bound this loose promises little: it rules out only near-certain identification of "
                "members at this FPR; the measured leakage, far below it, is what this attack gets, not what any "
                "attack could.")
    return (head + " That is a real promise, for every training example and every attack; it says nothing about "
            "accuracy, about examples outside the training set, or about the hyperparameter search (not in ε).")


def chapter_values(rows: list[dict[str, Any]], params: ChapterParams, zoo_models: int,
                   cfg=None) -> dict[str, Any]:
    """Every value the chapter's prose quotes (glue name -> value), from the rows of :func:`run`.

    BN is the ``batch`` row; the DP-SGD settings' smallest and largest epsilon are ``dp_low`` and ``dp_high``
    (``eps_low``, ``eps_high``), ``dp_target`` the first calibrated one; ``group`` is GroupNorm without DP. Per
    row ``<name>_acc``, ``_mem``, ``_tpr`` (means) and ``_seconds``; the shadows per target; the fronts (high
    probability, and uncertain); the paired contrasts of GroupNorm with GroupNorm + DP-SGD in words; the
    sentences on what epsilon promises, Opacus's sampling and steps, the GroupNorm groups, the learning-rate
    tuning and the large-batch schedule.

    Args:
        zoo_models: models of each shared zoo (``cfg.n_models``).
        cfg: the chapter's configuration (for the large-batch and Opacus schedule sentences; None: left out).
    Raises:
        ValueError: when ``rows`` lack the ``batch`` or ``group`` setting or any DP-SGD setting.
    """
    by_key = {row["key"]: row for row in rows}
    dp_rows = [row for row in rows if row["epsilon"] is not None]
    missing = [key for key in ("batch", "group") if key not in by_key] + ([] if dp_rows else ["a DP-SGD setting"])
    if missing:
        raise ValueError(f"The trade-off rows lack {', '.join(missing)}; the chapter's prose quotes them.")
    baseline, group = by_key["batch"], by_key["group"]
    most_private = min(dp_rows, key=lambda row: row["epsilon"])
    least_private = max(dp_rows, key=lambda row: row["epsilon"])
    targeted = [row for row in dp_rows if row.get("target_epsilon") is not None]
    shadows = sorted({row["n_shadow_models"] for row in rows})
    values: dict[str, Any] = {
        "accountant": params.accountant.upper(), "max_grad_norm": float(params.max_grad_norm),
        "n_dp_settings": len(dp_rows), "zoo_models": zoo_models, "n_settings": len(rows),
        "setting_models": ", ".join(map(str, sorted({row["n_models"] for row in rows}))),
        "shadow_models": ", ".join(map(str, shadows)),
        "equal_attack": "the same" if len(shadows) == 1 else "NOT the same",
        "low_fpr": float(params.low_fpr), "n_negatives_zoo": baseline["lira_tpr"]["n_negatives"],
        "false_positives_zoo": int(params.low_fpr * baseline["lira_tpr"]["n_negatives"]),
        "eps_low": float(most_private["epsilon"]), "eps_high": float(least_private["epsilon"]),
        "eps_low_prv": float(most_private["epsilons"]["prv"]), "eps_high_prv": float(least_private["epsilons"]["prv"]),
        "delta_used": float(most_private["delta"]), "front_high": float(params.front_high), "front_low": FRONT_LOW}
    named = (("bn", baseline), ("dp_low", most_private), ("dp_high", least_private), ("group", group))
    for name, row in named + ((("dp_target", targeted[0]),) if targeted else ()):
        values.update({f"{name}_acc": float(row["test_accuracy"]["mean"]),
                       f"{name}_mem": float(row["canary_memorization"]["mean"]),
                       f"{name}_tpr": float(row["lira_tpr"]["mean"]),
                       f"{name}_seconds": float(row["seconds_per_model"])})
    found = contrasts(rows)
    group_dp = [found[f"group_vs_{row['key']}"] for row in dp_rows if f"group_vs_{row['key']}" in found]
    values["group_dp_contrasts"] = "; ".join(
        f"{c['canary_memorization']['second']}: memorization {c['canary_memorization']['verdict_text']}, "
        f"accuracy {c['test_accuracy']['verdict_text']}"
        for c in group_dp) or "none (no GroupNorm + DP-SGD setting)"
    values["bn_front_probability"] = float(baseline["front_probability_memorization"])
    values.update({
        "front_memorization": front_text(rows, "memorization", params.front_high),
        "front_lira": front_text(rows, "lira", params.front_high),
        "front_memorization_uncertain": front_text(rows, "memorization", FRONT_LOW, params.front_high),
        "front_lira_uncertain": front_text(rows, "lira", FRONT_LOW, params.front_high),
        "bn_on_front": ("is" if baseline["front_probability_memorization"] >= params.front_high else
                        "is not reliably" if baseline["front_probability_memorization"] >= FRONT_LOW else "is not"),
        "promise_high": promise_sentence(least_private["epsilons"]["prv"], least_private["delta"], params.low_fpr,
                                         least_private["lira_tpr"]["mean"]),
        "promise_low": promise_sentence(most_private["epsilons"]["prv"], most_private["delta"], params.low_fpr,
                                        most_private["lira_tpr"]["mean"]),
        "tuning_text": "; ".join(tuning_sentence(row) for row in dp_rows),
        "dp_cost_ratio": float(least_private["seconds_per_model"] / group["seconds_per_model"])})
    if cfg is not None:
        values.update(schedule_values(cfg, params, dp_rows[0]))
    return values


def tuning_sentence(row: dict[str, Any]) -> str:
    """``"σ = 0.7: lr 0.2, 0.5, 1 gave validation accuracy 0.61, 0.70, 0.66 (1 tuning model each); chose 0.5"``."""
    tuning = row["tuning"]
    accuracy = ", ".join(f"{value:.3f}" for value in tuning["mean"])
    grid = ", ".join(f"{lr:g}" for lr in tuning["grid"])
    count = report_count(tuning["n_tuning_models"], "tuning model")
    return (f"σ = {row['noise_multiplier']:.3g}: learning rates {grid} gave validation accuracy {accuracy} "
            f"({count} each); chose {tuning['chosen']:g}")


def report_count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def group_counts(cfg) -> dict[str, list[int]]:
    """GroupNorm groups per normalization layer: this library's GroupNorm network (``models.build``, up to 8
    groups) and what Opacus's ``ModuleValidator.fix`` puts in place of the BN network's BatchNorm layers
    (gcd(32, channels))."""
    from opacus.validators import ModuleValidator

    ours = [m.num_groups for m in models.build(cfg.arch, "group", width=cfg.width).modules()
            if isinstance(m, torch.nn.GroupNorm)]
    fixed = ModuleValidator.fix(models.build(cfg.arch, "batch", width=cfg.width))
    theirs = [m.num_groups for m in fixed.modules() if isinstance(m, torch.nn.GroupNorm)]
    return {"ours": ours, "opacus_fix": theirs}


def schedule_values(cfg, params: ChapterParams, dp_row: dict[str, Any]) -> dict[str, Any]:
    """The sentences on Opacus's sampling rate and steps, the GroupNorm groups and the large-batch schedule."""
    n = min(dp.member_sizes(cfg))
    rate, steps = dp.opacus_schedule(n, cfg.batch_size, cfg.epochs)
    counts = group_counts(cfg)
    large = large_batch_schedule(cfg, params)
    rule = ("by the linear scaling rule lr × B/b of Goyal et al., 2017" if large["rule"] == "linear"
            else "by the square-root rule lr × √(B/b)")
    same = counts["ours"] == counts["opacus_fix"]
    return {
        "sampling_text": (f"Each model trains on n = {n} examples with expected batch B = {cfg.batch_size}: Opacus "
                          f"samples each example with probability q = 1/⌈n/B⌉ = {rate:.4f} (not B/n = "
                          f"{cfg.batch_size / n:.4f}) and runs int(1/q) = {int(1 / rate)} steps an epoch, "
                          f"{steps} over {cfg.epochs} epochs; the accountants count exactly these "
                          f"(the models' own record: q = {dp_row['sample_rate']:.4f}, {dp_row['steps']} steps)."),
        "groups_text": (f"Our GroupNorm layers have {', '.join(map(str, counts['ours']))} groups; Opacus's "
                        f"ModuleValidator.fix would give the BN network {', '.join(map(str, counts['opacus_fix']))} "
                        "(gcd(32, channels)). " + ("The two agree." if same else
                                                   "The GroupNorm settings here use ours (the same GroupNorm as the "
                                                   "rest of the book); the numbers are for that choice.")),
        "large_batch_text": (f"BN with batch B = {large['batch_size']} trains {large['epochs']} epochs, "
                             f"{large['steps']} steps, as many as the zoo's {large['base_steps']} steps at batch "
                             f"b = {large['base_batch_size']} over {large['base_epochs']} epochs, at peak "
                             f"learning rate {large['lr']:g} ({rule}, from {large['base_lr']:g}); "
                             "so it is not under-trained in steps, but it sees each example more often.")}


def summary_metrics(rows: list[dict[str, Any]], params: ChapterParams) -> dict[str, dict[str, Any]]:
    """Report rows (``results.metric_entry`` shape): one metric per measure, one entry per setting key, each
    with its ``epsilon`` (``{"rdp", "prv"}``, None without DP-SGD), ``delta``, ``n_shadow_models`` and front
    probabilities; plus the paired contrasts of that measure (``contrasts``: name -> :func:`paired_contrast`)
    and ``epsilon``, ``delta``, ``noise_multiplier``, ``dp_lr``, ``accountant`` of the DP settings."""
    pct = f"{params.low_fpr * 100:g}".replace(".", "p")
    described = {
        "test_accuracy": ("dp_sgd_tradeoff_test_accuracy", "higher test accuracy",
                          "Test accuracy per model, mean over the models of each setting (n = models)."),
        "canary_memorization": ("dp_sgd_tradeoff_canary_memorization", "more outlier memorization",
                                "Per model: accuracy on its IN canaries minus on its OUT canaries; mean over "
                                "models (n = models)."),
        "lira_tpr": (f"dp_sgd_tradeoff_outlier_lira_tpr_at_{pct}pct_fpr", "more outlier leakage",
                     f"LiRA (online, global variance) TPR at {params.low_fpr:g} FPR on the outliers, ROC pooled over "
                     "targets (leave-one-out, n_shadow_models shadows per target); n = targets; interval: bootstrap "
                     "over targets and examples. Contrasts: per-target outlier AUC."),
    }
    dp_rows = [r for r in rows if r["epsilon"] is not None]
    privacy = {"epsilon": {r["key"]: r["epsilons"] for r in dp_rows}, "delta": {r["key"]: r["delta"] for r in dp_rows},
               "noise_multiplier": {r["key"]: r["noise_multiplier"] for r in dp_rows},
               "dp_lr": {r["key"]: r["dp_lr"] for r in dp_rows},
               "sample_rate": {r["key"]: r["sample_rate"] for r in dp_rows},
               "steps": {r["key"]: r["steps"] for r in dp_rows},
               "n_shadow_models": {r["key"]: r["n_shadow_models"] for r in rows},
               "accountant": params.accountant, "accountants": list(dp.ACCOUNTANTS),
               "max_grad_norm": params.max_grad_norm}
    found = contrasts(rows)
    metrics = {}
    for measure_name, (metric, higher, description) in described.items():
        contrast_measure = "lira_auc" if measure_name == "lira_tpr" else measure_name
        per_setting = {r["key"]: {**{k: r[measure_name][k] for k in ("mean", "ci95", "n")},
                                  "epsilon": r["epsilons"], "delta": r["delta"], "setting": r["setting"],
                                  "n_shadow_models": r["n_shadow_models"],
                                  "front_probability": r.get("front_probability_lira" if measure_name == "lira_tpr"
                                                             else "front_probability_memorization")}
                       for r in rows}
        # the report's BN vs no-norm columns: the paired contrast of the two zoos (not for the pooled TPR, whose
        # contrast is on another per-pair value, the per-target AUC)
        headline = found.get("batch_vs_none", {}).get(measure_name) if measure_name != "lira_tpr" else None
        kept = ("mean", "ci95", "n", "se", "unit")
        extra = {} if headline is None else {"difference": {k: headline[k] for k in kept}}
        metrics[f"{metric}_same_schedule"] = {**results.metric_entry(
            per_setting, p_value=None if headline is None else headline["p_value"],
            test="paired t over model pairs (BN − no norm here; every contrast in 'contrasts'; secondary, not "
                 "corrected)", higher_means=higher, unit="models",
            description=description + " Settings: BN, no norm, GroupNorm, BN defences, GroupNorm + DP-SGD.",
            comparison="same_schedule", **extra), **privacy,
            "contrasts": {name: by_measure[contrast_measure] for name, by_measure in found.items()}}
    return metrics
