"""What to do about it: DP-SGD beside the cheap mitigations, as accuracy against outlier leakage.

Every *setting* is a small model population trained like the shared zoo (T models, each on a random half
of the pool, balanced keep mask), so each model has its own IN and OUT canaries and the model is the unit
of replication. Settings (:func:`settings`):

    BatchNorm, no norm            the shared zoos (``zoo.train_zoo(cfg, norm)``, ``cfg.n_models`` models)
    GroupNorm, BN + strong weight decay, BN with a large batch
                                  ``zoo.train_zoo`` with ``n_models = params.setting_models`` and the change
    GroupNorm (or no norm) + DP-SGD at each noise multiplier
                                  trained with Opacus (``dp.train_dp_population``; see :mod:`bnlib.dp`)

Measured per setting (:func:`measure`):
    test accuracy          per model, mean with a t interval over models (n = models)
    canary memorization    per model: accuracy on its IN canaries minus on its OUT canaries (n = models)
    outlier LiRA TPR       LiRA (online, global variance; ``mia.attack_scores``) leave-one-out over the
                           population; the ROC of all targets on the outliers pooled (as the LiRA reference
                           does), TPR at ``low_fpr``; interval from the two-way bootstrap over targets and
                           examples (``mia.Resamples``). With N pooled outlier non-member scores, TPR at FPR f
                           allows floor(f N) false positives (``n_negatives`` says N).

Then the chapter's rows (:func:`run`), the Pareto front, the figure, the table, the values its prose quotes
(:func:`chapter_values`) and its summary metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_curve

from . import chapter, mia, models, plots, results, stats, train
from . import zoo as zoo_lib
from .dp import ChapterParams, Population, make_private, models_label, quiet_hooks, train_dp_population

ATTACK = "lira_online_global"  # the membership-inference chapter's headline attack


@dataclass(frozen=True)
class Setting:
    """One point of the trade-off: ``key`` (summary name), ``label``, the norm, the ``cfg`` fields changed,
    and the DP-SGD noise multiplier (None = ordinary SGD)."""

    key: str
    label: str
    norm: str
    overrides: tuple[tuple[str, Any], ...] = ()
    noise_multiplier: float | None = None


def settings(cfg, params: ChapterParams) -> list[Setting]:
    """The chapter's settings, in display order (see the module docstring)."""
    small = (("n_models", params.setting_models),)
    plan = [Setting("batch", "BatchNorm", "batch"), Setting("none", "no norm", "none"),
            Setting("group", "GroupNorm", "group", small),
            Setting("batch_strong_weight_decay", f"BN, weight decay {params.strong_weight_decay:g}", "batch",
                    (*small, ("weight_decay", params.strong_weight_decay))),
            Setting("batch_large_batch", f"BN, batch {params.large_batch}", "batch",
                    (*small, ("batch_size", params.large_batch)))]
    plan += [Setting(f"{norm}_dp_sgd_noise_{noise:g}", f"{models_label(norm)} + DP-SGD", norm, small, noise)
             for norm in params.dp_norms for noise in params.noise_multipliers]
    return plan


def population(cfg, setting: Setting, params: ChapterParams, progress: bool = True) -> Population:
    """Train (or load) the models of one setting."""
    if setting.noise_multiplier is not None:
        result = train_dp_population(cfg, setting.norm, setting.noise_multiplier, params, progress)
        return replace(result, setting=setting.label)
    return Population.from_zoo(setting.label, zoo_lib.train_zoo(replace(cfg, **dict(setting.overrides)),
                                                               setting.norm, progress=progress))


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


def measure(population_: Population, params: ChapterParams) -> dict[str, Any]:
    """Accuracy and outlier leakage of one setting.

    Returns:
        ``test_accuracy``, ``canary_memorization``: ``stats.mean_ci`` over models (n = models);
        ``lira_tpr``: :func:`pooled_tpr_interval` on the outliers; ``epsilon``: float or None.
    """
    p = population_
    test_accuracy = (p.test_logits.argmax(-1) == p.test_labels).float().mean(1).numpy()
    signals = mia.Signals.from_logits(p.keep, p.logits, p.labels, p.test_logits, p.test_labels)
    scores = mia.attack_scores(signals, ATTACK)  # (T, N), leave-one-out
    outliers = p.is_outlier.numpy().astype(bool)
    return {"setting": p.setting, "norm": p.norm, "epsilon": p.epsilon, "noise_multiplier": p.noise_multiplier,
            "delta": p.delta,
            "n_models": p.n_models, "test_accuracy": stats.mean_ci(test_accuracy),
            "canary_memorization": stats.mean_ci(canary_memorization(p.keep, p.logits, p.labels, p.is_outlier)),
            "lira_tpr": pooled_tpr_interval(scores, p.keep.numpy().astype(bool), outliers, params.low_fpr,
                                            params.n_bootstrap)}


def pareto_front(accuracy: np.ndarray, leakage: np.ndarray) -> np.ndarray:
    """(S,) bool: settings that no other setting beats on both axes (accuracy at least as high and leakage
    at least as low, one of them strictly)."""
    accuracy, leakage = np.asarray(accuracy, float), np.asarray(leakage, float)
    better_or_equal = (accuracy[None, :] >= accuracy[:, None]) & (leakage[None, :] <= leakage[:, None])
    strictly = (accuracy[None, :] > accuracy[:, None]) | (leakage[None, :] < leakage[:, None])
    return ~np.any(better_or_equal & strictly, axis=1)


def seconds_per_model(cfg, setting: Setting, params: ChapterParams) -> float:
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
    if setting.noise_multiplier is None:
        steps_per_model = point.epochs * (half // point.batch_size)
        optimizer = torch.optim.SGD(model.parameters(), lr=point.lr, momentum=point.momentum,
                                    weight_decay=point.weight_decay)
        module, batches = model, ((x[:point.batch_size], y[:point.batch_size]) for _ in iter(int, 1))
    else:
        private = make_private(model, x, y, batch_size=point.batch_size, lr=params.dp_lr,
                               noise_multiplier=setting.noise_multiplier, max_grad_norm=params.max_grad_norm)
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
    keys of :func:`measure` plus ``key``, ``label`` (with epsilon for DP settings), ``seconds_per_model``,
    ``pareto_memorization`` and ``pareto_lira`` (:func:`mark_pareto_fronts`)."""
    rows = []
    for setting in settings(cfg, params):
        row = measure(population(cfg, setting, params, progress), params)
        label = setting.label if row["epsilon"] is None else f"{setting.label}, ε = {row['epsilon']:.2g}"
        rows.append({**row, "key": setting.key, "label": label,
                     "seconds_per_model": seconds_per_model(cfg, setting, params)})
    return mark_pareto_fronts(rows)


def mark_pareto_fronts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set ``pareto_memorization`` and ``pareto_lira`` of every row (in place; returns ``rows``): whether the
    setting is on the Pareto front (:func:`pareto_front`) of mean test accuracy against that mean leakage."""
    accuracy = np.array([r["test_accuracy"]["mean"] for r in rows])
    for name, short in LEAKAGE_MEASURES:
        front = pareto_front(accuracy, np.array([r[name]["mean"] for r in rows]))
        for row, on_front in zip(rows, front, strict=True):
            row[f"pareto_{short}"] = bool(on_front)
    return rows


def tradeoff_figure(rows: list[dict[str, Any]], low_fpr: float):
    """Two panels, test accuracy (x) against each leakage measure (y): one numbered point per setting with 95%
    intervals on both axes (squares: DP-SGD, labelled with epsilon in the legend), the Pareto front (high
    accuracy, low leakage; filled markers) drawn as a staircase. The legend (one line per setting) sits
    below the panels, and the figure grows with it."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="s" if row["epsilon"] is not None else "o", linestyle="none",
                      color=plots.NORM_COLORS.get(row["norm"], "k"), label=f"{number}. {row['label']}")
               for number, row in enumerate(rows, start=1)]
    handles.append(Line2D([], [], color="0.3", linestyle="--", label="Pareto front (its points filled)"))
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


def table_markdown(rows: list[dict[str, Any]], low_fpr: float) -> str:
    """Setting, models, test accuracy, canary memorization, LiRA TPR (pooled negatives), epsilon, s per model:
    the measures as ``chapter.interval`` text (mean [95% interval])."""
    header = ("setting", "models", "test accuracy", "canary memorization",
              f"LiRA TPR at {low_fpr:g} FPR (outlier negatives)", "ε", "s per model")
    lines = []
    for row in rows:
        eps = "–" if row["epsilon"] is None else f"{row['epsilon']:.2g} (σ = {row['noise_multiplier']:g})"
        lines.append((row["setting"], row["n_models"], chapter.interval(row["test_accuracy"], unit="models"),
                      chapter.interval(row["canary_memorization"], unit="models"),
                      f"{chapter.interval(row['lira_tpr'], unit='targets')} ({row['lira_tpr']['n_negatives']})",
                      eps, f"{row['seconds_per_model']:.1f}"))
    return chapter.markdown_table(header, lines)


def front_text(rows: list[dict[str, Any]], short: str) -> str:
    """The settings on one Pareto front (``short``: ``memorization`` or ``lira``), in display order, each with
    its epsilon if it is private: ``"no norm, GroupNorm + DP-SGD (ε = 3.1)"``."""
    return ", ".join(row["setting"] + ("" if row["epsilon"] is None else f" (ε = {row['epsilon']:.2g})")
                     for row in rows if row[f"pareto_{short}"])


def chapter_values(rows: list[dict[str, Any]], params: ChapterParams, zoo_models: int) -> dict[str, Any]:
    """Every value the chapter's prose quotes (glue name -> value), from the rows of :func:`run`.

    BN is the ``batch`` row; the DP-SGD settings' smallest and largest epsilon are ``dp_low`` and ``dp_high``
    (``eps_low``, ``eps_high``); ``group`` is GroupNorm without DP. Per row ``<name>_acc``, ``_mem``, ``_tpr``
    (means) and ``_seconds``; the pooled negatives of a small setting and of a zoo, the false positives a
    TPR at ``low_fpr`` allows, both Pareto fronts and the comparisons of the least private DP setting with BN.

    Args:
        zoo_models: models of each shared zoo (``cfg.n_models``).
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
    values: dict[str, Any] = {
        "accountant": params.accountant.upper(), "max_grad_norm": float(params.max_grad_norm),
        "n_dp_settings": len(dp_rows), "setting_models": params.setting_models, "zoo_models": zoo_models,
        "low_fpr": float(params.low_fpr), "n_negatives_small": dp_rows[0]["lira_tpr"]["n_negatives"],
        "n_negatives_zoo": baseline["lira_tpr"]["n_negatives"],
        "false_positives_small": int(params.low_fpr * dp_rows[0]["lira_tpr"]["n_negatives"]),
        "eps_low": float(most_private["epsilon"]), "eps_high": float(least_private["epsilon"]),
        "delta_used": float(most_private["delta"])}
    for name, row in (("bn", baseline), ("dp_low", most_private), ("dp_high", least_private), ("group", group)):
        values.update({f"{name}_acc": float(row["test_accuracy"]["mean"]),
                       f"{name}_mem": float(row["canary_memorization"]["mean"]),
                       f"{name}_tpr": float(row["lira_tpr"]["mean"]),
                       f"{name}_seconds": float(row["seconds_per_model"])})
    below = {measure: least_private[measure]["mean"] < baseline[measure]["mean"]
             for measure in ("canary_memorization", "test_accuracy")}
    return {**values, "dp_cost_ratio": float(least_private["seconds_per_model"] / group["seconds_per_model"]),
            "front_memorization": front_text(rows, "memorization"), "front_lira": front_text(rows, "lira"),
            "bn_on_front": "is" if baseline["pareto_memorization"] else "is not",
            "dp_mem_vs_bn": "lower" if below["canary_memorization"] else "not lower",
            "dp_acc_vs_bn": "lower" if below["test_accuracy"] else "not lower"}


def summary_metrics(rows: list[dict[str, Any]], params: ChapterParams) -> dict[str, dict[str, Any]]:
    """Report rows (``results.metric_entry`` shape): one metric per measure, one entry per setting key, each
    with its ``epsilon`` (None without DP-SGD); plus ``epsilon``, ``delta``, ``accountant`` of the DP settings."""
    pct = f"{params.low_fpr * 100:g}".replace(".", "p")
    described = {
        "test_accuracy": ("dp_sgd_tradeoff_test_accuracy", "higher test accuracy",
                          "Test accuracy per model, mean over the models of each setting (n = models)."),
        "canary_memorization": ("dp_sgd_tradeoff_canary_memorization", "more outlier memorization",
                                "Per model: accuracy on its IN canaries minus on its OUT canaries; mean over "
                                "models (n = models)."),
        "lira_tpr": (f"dp_sgd_tradeoff_outlier_lira_tpr_at_{pct}pct_fpr", "more outlier leakage",
                     f"LiRA (online, global variance) TPR at {params.low_fpr:g} FPR on the outliers, ROC pooled over "
                     "targets (leave-one-out); n = targets; interval: bootstrap over targets and examples."),
    }
    dp_rows = [r for r in rows if r["epsilon"] is not None]
    privacy = {"epsilon": {r["key"]: r["epsilon"] for r in dp_rows}, "delta": {r["key"]: r["delta"] for r in dp_rows},
               "noise_multiplier": {r["key"]: r["noise_multiplier"] for r in dp_rows},
               "accountant": params.accountant, "max_grad_norm": params.max_grad_norm}
    metrics = {}
    for measure_name, (metric, higher, description) in described.items():
        per_setting = {r["key"]: {**{k: r[measure_name][k] for k in ("mean", "ci95", "n")}, "epsilon": r["epsilon"],
                                  "setting": r["setting"]} for r in rows}
        metrics[f"{metric}_same_schedule"] = {**results.metric_entry(
            per_setting, p_value=None, test="none (a trade-off: intervals only)", higher_means=higher,
            description=description + " Settings: BN, no norm, GroupNorm, BN defences, GroupNorm + DP-SGD.",
            comparison="same_schedule"), **privacy}
    return metrics
