"""The membership-inference chapter's comparisons, tables, glue values and headline metrics.

Everything here reads :func:`bnlib.mia.measure` results (``measured``: norm -> that dict) and the shared
bootstrap resamples (``resamples``: group -> :class:`bnlib.mia.Resamples`); the numbers themselves come from
:mod:`bnlib.mia_eval`. A *comparison* is one dict ``{norm: interval, ..., "diff": BN - no norm}``: the interval
of each norm (``mean``, ``ci95``, ``n`` targets) and the difference of BatchNorm minus no normalization on target
pairs (``mean``, ``ci95``, ``n``, ``p_value``, ``se``, ``df``, ``unit``; :mod:`bnlib.verdict`). The notebook shows
the tables and glues the values its prose quotes; :mod:`bnlib.mia_summary` turns the comparisons into the chapter's
headline metrics and :mod:`bnlib.mia_plots` draws its figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import chapter, memorization, mia, population
from . import verdict as verdict_lib
from . import zoo as zoo_lib
from .plots import NORM_LABELS

SHORT = {"auc": "auc", "tpr_at_1pct_fpr": "tpr1", "tpr_at_0.1pct_fpr": "tpr01", "tpr_at_0fp": "tpr0fp",
         "balanced_accuracy": "bacc"}
POOLED_METRICS = ("auc", "tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", "tpr_at_0fp")  # read off the ROC pooled over targets
QUERY_METRICS = ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")  # of the query-mode table
UNIT = "models"  # what the n of a per-norm interval counts: target models


def _text(summary: Mapping[str, Any]) -> str:
    return chapter.interval(summary, ".3f", UNIT)


# ----------------------------------------------------------------------------- comparisons

def compare(pairs: Mapping[str, tuple[np.ndarray, np.ndarray]], resamples: mia.Resamples) -> dict[str, Any]:
    """Per norm the interval of a per-target metric, and the BN - no-norm difference on target pairs.

    Args:
        pairs: norm -> (point (T,), resampled (T, B)) (:func:`bnlib.mia.pair`, :func:`bnlib.mia.at_fit_level`);
            must hold ``batch`` and ``none``; target t of both is one pair (same keep mask and seed).
        resamples: the resamples behind ``resampled`` (each norm's interval only).
    Returns:
        norm -> interval, and ``diff``: ``verdict.paired_difference`` of the per-target values (a t over the
        pairs reaching a value in both norms; target: conditional on the examples).
    """
    out: dict[str, Any] = {norm: mia.interval(*pair, resamples) for norm, pair in pairs.items()}
    out["diff"] = verdict_lib.paired_difference(pairs["batch"][0], pairs["none"][0], unit=UNIT)
    return out


def pooled_pair_difference(a: Mapping[str, Any], b: Mapping[str, Any], metric: str, *, n_permutations: int = 1000,
                           seed: int = 0, chunk: int = 4_000_000) -> dict[str, Any]:
    """a - b of a metric of the ROC pooled over targets (no per-pair summary exists), on the target pairs both
    zoos hold (same target index: same keep mask and seed; :func:`bnlib.mia.pooled_scores`).

    ``p_value``: the pair-swap permutation test (BN and no-BN scores of a target trade places;
    ``verdict.pair_swap_test``; exact under exchangeable labels); ``se``, ``ci95``, ``df``: the pair-level
    jackknife with a t (``verdict.jackknife_interval``; data pools as strata). ``tests/test_mia_chapter.py``
    simulates both. Shaped like ``verdict.paired_difference``, with ``p_value_t`` (the jackknife t's p).
    """
    common = np.intersect1d(np.unique(a["target"]), np.unique(b["target"]))
    keep_a, keep_b = np.isin(a["target"], common), np.isin(b["target"], common)
    members = np.asarray(a["members"])[keep_a]
    if common.size == 0 or not np.array_equal(members, np.asarray(b["members"])[keep_b]):
        if common.size:
            raise ValueError("Parameters 'a' and 'b' hold different members for the same targets: not one keep mask.")
        return {**verdict_lib.stratified_t(np.array([np.nan]), unit=UNIT), "n": 0, "p_value_t": float("nan")}
    pair = np.searchsorted(common, np.asarray(a["target"])[keep_a])  # (M,) pair index of each pooled score
    scores = np.concatenate([np.asarray(a["scores"])[keep_a], np.asarray(b["scores"])[keep_b]])  # (2M,)
    both_members = np.concatenate([members, members])
    pair_of_score = np.concatenate([pair, pair])
    per_chunk = max(1, chunk // scores.size)

    def pooled_metric(in_arm: np.ndarray) -> np.ndarray:
        """(K,) metric of the ROC of the scores selected by in_arm (K, 2 n_pairs): column j < n_pairs selects
        pair j's scores from a, column n_pairs + j from b."""
        columns = pair_of_score + np.repeat([0, len(common)], len(pair))  # (2M,) the column of each score
        return np.concatenate([
            mia.weighted_roc_metrics(scores, both_members, in_arm[start:start + per_chunk][:, columns]
                                     .astype(np.int32))[metric]
            for start in range(0, len(in_arm), per_chunk)])

    def swapped(flips: np.ndarray) -> np.ndarray:  # (B, n_pairs) -> (B,)
        first = np.concatenate([~flips, flips], axis=1)
        return pooled_metric(first) - pooled_metric(~first)

    def kept(rows: np.ndarray) -> np.ndarray:  # (K, n_pairs) -> (K,)
        nothing = np.zeros_like(rows)
        return pooled_metric(np.concatenate([rows, nothing], axis=1)) - pooled_metric(
            np.concatenate([nothing, rows], axis=1))

    pools = np.asarray(a["target_pool"])[common]
    out = verdict_lib.jackknife_interval(kept, len(common), pools, unit=UNIT)
    p_value = verdict_lib.pair_swap_test(swapped, len(common), n_permutations=n_permutations, seed=seed)
    return {**out, "p_value_t": out["p_value"], "p_value": p_value,
            "method": "pair-swap permutation p; pair jackknife interval (t, pools as strata)"}


def compare_pooled(pooled: Mapping[str, dict[str, Any]], metric: str) -> dict[str, Any]:
    """Per norm ``metric`` of the ROC pooled over targets, and the BN - no-norm difference on target pairs
    (:func:`pooled_pair_difference`).

    Args:
        pooled: norm -> :func:`bnlib.mia.pooled_estimate` (or ``pooled_over_pools``, ``pooled_at_fit_level``)
            with resamples.
    """
    out: dict[str, Any] = {norm: mia.pooled_interval(estimated, metric) for norm, estimated in pooled.items()}
    out["diff"] = pooled_pair_difference(pooled["batch"], pooled["none"], metric)
    return out


def same_schedule(measured: Mapping[str, dict[str, Any]], attack: str, resamples: Mapping[str, mia.Resamples]
                  ) -> dict[tuple[str, str], dict[str, Any]]:
    """(metric, group) -> comparison of ``attack`` per target after the common schedule, every metric and group."""
    return {(metric, group): compare({norm: mia.pair(m["attacks"][attack][group], metric)
                                      for norm, m in measured.items()}, resamples[group])
            for metric in mia.METRICS for group in resamples}


def attack_comparisons(measured: Mapping[str, dict[str, Any]], attacks: Sequence[str], resamples: mia.Resamples,
                       metric: str = "auc", group: str = "outliers") -> dict[str, dict[str, Any]]:
    """attack -> comparison of its per-target ``metric`` on ``group`` (resamples: of that group)."""
    return {attack: compare({norm: mia.pair(m["attacks"][attack][group], metric) for norm, m in measured.items()},
                            resamples) for attack in attacks}


def pooled_comparisons(measured: Mapping[str, dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """(attack, metric) -> comparison on the outliers from the ROC pooled over targets, for every attack that
    ``measure`` pooled (the headline attack and its reference counterpart) and each of ``POOLED_METRICS``."""
    return {(attack, metric): compare_pooled({norm: m["pooled"][attack]["outliers"] for norm, m in measured.items()},
                                             metric)
            for attack in measured["batch"]["pooled"] for metric in POOLED_METRICS}


def pooled_over_population(populations: Mapping[str, population.Population], cfg, attack: str, n_bootstrap: int
                           ) -> dict[str, dict[str, Any]]:
    """norm -> :func:`bnlib.mia.pooled_over_pools` of ``attack``: each pool's zoo attacked leave-one-out with
    its own shadows (eval-mode queries), every pool's targets in one ROC on the outliers.

    Args:
        populations: norm -> ``population.Population`` (``population.study(cfg)["populations"]``).
    """
    out = {}
    for norm, found in populations.items():
        parts = []
        for pool, pool_zoo in zip(found.pools, found.zoos, strict=True):
            signals = mia.signals_of(pool_zoo, population.pool_config(cfg, pool))
            parts.append((mia.attack_scores(signals, attack), pool_zoo.keep.numpy(), pool_zoo.is_outlier.numpy()))
        out[norm] = mia.pooled_over_pools(parts, n_bootstrap)
    return out


def all_pools_comparisons(all_pools: Mapping[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """metric -> comparison of TPR at 0.1% and 1% FPR and at 0 false positives from :func:`pooled_over_population`."""
    return {metric: compare_pooled(all_pools, metric)
            for metric in ("tpr_at_0.1pct_fpr", "tpr_at_1pct_fpr", mia.ZERO_FP)}


def checkpoint_fits(cfg, params: mia.ChapterParams, measured: Mapping[str, dict[str, Any]]
                    ) -> dict[str, dict[str, Any]]:
    """norm -> ``measure(...)["fit"]``; with ``params.long_schedule_factor`` the non-BN norms' from zoos trained
    that many times longer (trained or loaded here), to extend their curves to higher fit."""
    fits = {norm: m["fit"] for norm, m in measured.items()}
    if params.long_schedule_factor:
        long_cfg = dataclasses.replace(cfg, epochs=cfg.epochs * params.long_schedule_factor)
        for norm in fits:
            if norm != "batch":
                fits[norm] = mia.cached_measure(zoo_lib.train_zoo(long_cfg, norm), long_cfg, params)["fit"]
    return fits


def matched_comparisons(fits: Mapping[str, dict[str, Any]], level: float, keep: np.ndarray, mask: np.ndarray,
                        resamples: mia.Resamples) -> dict[str, dict[str, Any]]:
    """Comparisons on the outliers at inlier train accuracy ``level``: per target (``auc``, ``tpr_at_1pct_fpr``,
    ``tpr_at_0.1pct_fpr``, ``tpr_at_0fp``, each target interpolated at its crossing) and from the ROC pooled over
    targets (``pooled_`` + each TPR).

    Args:
        fits: norm -> ``measure(...)["fit"]``; keep: (T, N); mask: (N,) the outliers; resamples: theirs.
    """
    out = {metric: compare({norm: mia.at_fit_level(fit, "outliers", metric, level) for norm, fit in fits.items()},
                           resamples) for metric in ("auc", "tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", mia.ZERO_FP)}
    at_level = {norm: mia.pooled_at_fit_level(fit, keep, mask, level, resamples) for norm, fit in fits.items()}
    for metric in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr", mia.ZERO_FP):
        out["pooled_" + metric] = compare_pooled(at_level, metric)
    return out


def annealed_comparisons(annealed_measured: Mapping[str, dict[str, Any]], attack: str, resamples: mia.Resamples
                         ) -> dict[str, dict[str, Any]]:
    """Comparisons on the outliers of the equal-exposure zoos (``measure`` of each norm's first-pool zoo of
    ``population.study(cfg)["equal_exposure"]``): ``auc``, ``tpr_at_1pct_fpr``, ``tpr_at_0fp`` per target, and
    ``pooled_`` + each over targets."""
    out = {}
    for metric in ("auc", "tpr_at_1pct_fpr", mia.ZERO_FP):
        out[metric] = compare({norm: mia.pair(m["attacks"][attack]["outliers"], metric)
                               for norm, m in annealed_measured.items()}, resamples)
        out[f"pooled_{metric}"] = compare_pooled({norm: m["pooled"][attack]["outliers"]
                                                  for norm, m in annealed_measured.items()}, metric)
    return out


def annealed_lengths(rates: Mapping[str, float], epochs: int) -> str:
    """The equal-exposure arms in words: ``"both 30 epochs; peak learning rate batch 0.0078, none 0.05"`` from
    norm -> peak learning rate."""
    return f"both {epochs} epochs; peak learning rate " + ", ".join(f"{norm} {lr:.3g}" for norm, lr in rates.items())


def query_modes(measured_batch: dict[str, Any], attack: str) -> dict[str, dict[str, Any]]:
    """query mode -> group -> estimate of ``attack`` on the BatchNorm zoo: ``eval`` first, then the train modes."""
    return {"eval": measured_batch["attacks"][attack], **measured_batch["train_mode"]}


# ----------------------------------------------------------------------------- tables (Markdown)

def headline_table(measured: Mapping[str, dict[str, Any]], attack: str, resamples: Mapping[str, mia.Resamples]) -> str:
    """Every metric of ``attack`` per norm and group (mean over targets [95% CI]) and the non-members per target."""
    rows = []
    for norm, m in measured.items():
        for group in resamples:
            estimated = m["attacks"][attack][group]
            intervals = [mia.interval(*mia.pair(estimated, metric), resamples[group]) for metric in mia.METRICS]
            rows.append([NORM_LABELS[norm], group, *map(_text, intervals), f"{estimated['n_nonmembers'].mean():.0f}"])
    return chapter.markdown_table(["norm", "examples", "AUC", "TPR @ 0.1% FPR", "TPR @ 1% FPR", "TPR @ 0 FP",
                                   "balanced accuracy", "non-members per target"], rows)


def attacks_table(measured: Mapping[str, dict[str, Any]], resamples: Mapping[str, mia.Resamples]) -> str:
    """Every attack: per norm the outliers' AUC and TPR at 1% FPR [95% CI] and the inliers' mean AUC."""
    header = ["attack"] + [column for norm in measured
                           for column in (f"{NORM_LABELS[norm]}: outliers AUC", "TPR @ 1% FPR", "inliers AUC")]
    rows = []
    for attack in mia.ATTACKS:
        row = [f"`{attack}`"]
        for m in measured.values():
            estimated = m["attacks"][attack]
            row += [_text(mia.interval(*mia.pair(estimated["outliers"], metric), resamples["outliers"]))
                    for metric in ("auc", "tpr_at_1pct_fpr")] + [f"{estimated['inliers']['point']['auc'].mean():.3f}"]
        rows.append(row)
    return chapter.markdown_table(header, rows)


def pooled_table(measured: Mapping[str, dict[str, Any]], pooled: Mapping[tuple[str, str], dict[str, Any]],
                 resamples: Mapping[str, mia.Resamples]) -> str:
    """Per pooled attack and norm: the pooled ROC's AUC and TPRs [95% CI] beside the AUC's mean over targets.

    Args:
        pooled: :func:`pooled_comparisons`.
    """
    rows = []
    for attack in dict.fromkeys(name for name, _ in pooled):
        for norm, m in measured.items():
            per_target = mia.interval(*mia.pair(m["attacks"][attack]["outliers"], "auc"), resamples["outliers"])
            rows.append([f"`{attack}`", NORM_LABELS[norm], *(_text(pooled[attack, metric][norm]) for metric in
                                                             POOLED_METRICS), _text(per_target)])
    return chapter.markdown_table(["attack", "norm", "pooled AUC", "TPR @ 0.1% FPR (pooled)", "TPR @ 1% FPR (pooled)",
                                   "TPR @ 0 FP (pooled)", "AUC (mean over targets)"], rows)


def query_mode_table(modes: Mapping[str, dict[str, Any]], resamples: Mapping[str, mia.Resamples]) -> str:
    """Per query mode (:func:`query_modes`) and group: AUC, TPR at 1% and 0.1% FPR [95% CI]."""
    rows = [[f"`{mode}`", group, *(_text(mia.interval(*mia.pair(estimates[group], metric), resamples[group]))
                                   for metric in QUERY_METRICS)]
            for mode, estimates in modes.items() for group in resamples]
    return chapter.markdown_table(["query mode", "examples", "AUC", "TPR @ 1% FPR", "TPR @ 0.1% FPR"], rows)


# ----------------------------------------------------------------------------- glue (values the prose quotes)

def comparison_glue(prefix: str, comparison: Mapping[str, Any], *, intervals: bool = True, verdict: bool = True
                    ) -> dict[str, Any]:
    """Glue values of one comparison: ``<prefix>_batch`` and ``<prefix>_none`` (means), with ``intervals`` their
    ``_lo`` and ``_hi`` bounds, with ``verdict`` the difference in words (``<prefix>_verdict``), and always its
    direction (``<prefix>_direction``: higher / lower with BatchNorm / not significantly different)."""
    values: dict[str, Any] = {}
    for norm in ("batch", "none"):
        values[f"{prefix}_{norm}"] = comparison[norm]["mean"]
        if intervals:
            values[f"{prefix}_{norm}_lo"], values[f"{prefix}_{norm}_hi"] = comparison[norm]["ci95"]
    difference = comparison["diff"]
    if verdict:
        values[f"{prefix}_verdict"] = memorization.describe_difference(difference, difference["p_value"],
                                                                       "paired t over target pairs")
    values[f"{prefix}_direction"] = mia.direction(difference)
    return values


def setup_glue(cfg, params: mia.ChapterParams, measured: Mapping[str, dict[str, Any]],
               groups: Mapping[str, np.ndarray], null_auc: Mapping[str, float]) -> dict[str, Any]:
    """The zoo, the attack and the counts behind each ROC: groups' sizes, non-members per target (and pooled
    over targets) and the false positives a TPR at 1% and 0.1% FPR allows (the floor of that share of the
    non-members); the leave-one-out null AUCs (:func:`bnlib.mia.null_leave_one_out_auc`)."""
    headline = measured["batch"]["attacks"][params.attack]
    negatives = {group: int(np.round(headline[group]["n_nonmembers"].mean())) for group in groups}
    pooled_negatives = measured["batch"]["pooled"][params.attack]["outliers"]["n_nonmembers"]
    values: dict[str, Any] = {
        "n_models": cfg.n_models, "n_shadows_side": cfg.n_models // 2 - 1, "attack_name": params.attack,
        **{f"n_{group}": int(mask.sum()) for group, mask in groups.items()},
        **{f"negatives_{group}": count for group, count in negatives.items()},
        "pooled_negatives_outliers": pooled_negatives,
        "fp_01pct_pooled_outliers": int(np.floor(0.001 * pooled_negatives)),
        "null_auc_all_others": null_auc["all_others"], "null_auc_balanced": null_auc["balanced"]}
    for group, count in negatives.items():
        values[f"fp_1pct_{group}"] = int(np.floor(0.01 * count))
        values[f"fp_01pct_{group}"] = int(np.floor(0.001 * count))
    return values


def zoo_accuracy_glue(zoos: Mapping[str, zoo_lib.Zoo]) -> dict[str, float]:
    """Mean test accuracy (``zoo_test_<norm>``) and inlier train accuracy (``zoo_fit_<norm>``) of the final
    BatchNorm and no-norm zoo models."""
    return {**{f"zoo_test_{norm}": float(zoos[norm].test_accuracy().mean()) for norm in ("batch", "none")},
            **{f"zoo_fit_{norm}": float(zoos[norm].train_accuracy().mean()) for norm in ("batch", "none")}}


def same_schedule_glue(same: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    """``same_<metric>_<group>_...`` (:func:`comparison_glue`) of every :func:`same_schedule` comparison."""
    return {key: value for (metric, group), comparison in same.items()
            for key, value in comparison_glue(f"same_{SHORT[metric]}_{group}", comparison).items()}


def attacks_glue(measured: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Outlier AUCs (mean over targets) of the loss, online RMIA and per-example LiRA attacks, and for how many
    of the attacks BatchNorm's outlier AUC is the higher one (``n_attacks_agree`` of ``n_attacks``)."""
    auc = {(attack, norm): float(m["attacks"][attack]["outliers"]["point"]["auc"].mean())
           for attack in mia.ATTACKS for norm, m in measured.items()}
    return {**{f"attack_auc_{attack}_{norm}": auc[attack, norm] for attack in ("loss", "rmia_online", "lira_online")
               for norm in ("batch", "none")},
            "n_attacks": len(mia.ATTACKS),
            "n_attacks_agree": int(sum(auc[attack, "batch"] > auc[attack, "none"] for attack in mia.ATTACKS))}


def pooled_glue(pooled: Mapping[tuple[str, str], dict[str, Any]], attack: str) -> dict[str, Any]:
    """``pooled_<metric>_outliers_...`` of ``attack`` and ``ref_pooled_...`` of its reference counterpart
    (:func:`comparison_glue` of :func:`pooled_comparisons`), and ``reference_attack_name``."""
    reference = mia.reference_attack(attack)
    values: dict[str, Any] = {"reference_attack_name": reference}
    for prefix, name in (("pooled", attack), ("ref_pooled", reference)):
        for metric in POOLED_METRICS:
            values.update(comparison_glue(f"{prefix}_{SHORT[metric]}_outliers", pooled[name, metric]))
    return values


def matched_glue(matched: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """``mf_<metric>_...`` of every per-target comparison of :func:`matched_comparisons` and the means and
    direction (``mf_pooled_...``) of its pooled ones."""
    values: dict[str, Any] = {}
    for name, comparison in matched.items():
        pooled = name.startswith("pooled_")
        prefix = "mf_pooled_" + SHORT[name[len("pooled_"):]] if pooled else "mf_" + SHORT[name]
        values.update(comparison_glue(prefix, comparison, intervals=not pooled, verdict=not pooled))
    return values


def fit_level_glue(cfg, params: mia.ChapterParams, fits: Mapping[str, dict[str, Any]], level: float) -> dict[str, Any]:
    """The matched fit level and how it was chosen, the epochs each norm takes to reach it, the final fits, the
    checkpoints, and a note on whether the level is close to BatchNorm's final fit (the range where leakage
    is largest) and on longer schedules."""
    final_fit_batch = float(fits["batch"]["train_accuracy"][-1].mean())
    checkpoints = fits["batch"]["epochs"]
    if level < final_fit_batch - 0.05:
        note = (f"This level is well below BatchNorm's final fit ({final_fit_batch:.3f}): the comparison can only be "
                "made where the slower network has got to, which is where leakage is still small. The parameter "
                "long_schedule_factor trains the non-BN zoos longer (3 triples their epochs: another zoo per norm, "
                "several minutes on a CPU) to compare higher up.")
    else:
        note = (f"This level is close to BatchNorm's final fit ({final_fit_batch:.3f}), so the comparison covers the "
                "range where leakage is largest.")
    long_note = (f"The no-BN zoo was also trained {params.long_schedule_factor}× as long "
                 f"({cfg.epochs * params.long_schedule_factor} epochs) to extend its curve."
                 if params.long_schedule_factor else
                 "Here every norm runs on the common schedule (parameter long_schedule_factor adds longer-trained zoos "
                 "for the slower norms).")
    return {"matched_level": level,
            "matched_level_how": "the headline fit level declared in the configuration before any run (headline_fit)"
            if not params.matched_fit_level else "as set by the parameter matched_fit_level",
            **{f"epochs_to_level_{norm}": mia.epochs_to_fit_level(fits[norm], level) for norm in ("batch", "none")},
            "final_fit_none": float(fits["none"]["train_accuracy"][-1].mean()), "matched_fit_note": note,
            "n_checkpoints": len(checkpoints), "checkpoint_epochs": ", ".join(str(int(e)) for e in checkpoints),
            "long_schedule_note": long_note}


def query_mode_glue(modes: Mapping[str, dict[str, Any]], resamples: Mapping[str, mia.Resamples]) -> dict[str, Any]:
    """Per train query mode and group, the AUC and TPR at 1% FPR (``<mode>_<metric>_<group>``: eval mode's mean
    plus the paired train - eval difference) and that difference in words (``..._verdict``)."""
    values: dict[str, Any] = {}
    for mode in modes:
        if mode == "eval":
            continue
        for group in resamples:
            for metric in ("auc", "tpr_at_1pct_fpr"):
                difference = verdict_lib.paired_difference(modes[mode][group]["point"][metric],
                                                           modes["eval"][group]["point"][metric], unit=UNIT)
                key = f"{mode}_{SHORT[metric]}_{group}"
                values[key] = difference["mean"] + float(modes["eval"][group]["point"][metric].mean())
                values[f"{key}_verdict"] = memorization.describe_difference(difference, difference["p_value"],
                                                                            "paired t over target pairs")
    return values
