"""The membership-inference chapter's summary: its headline metrics (``results.metric_entry`` values with
verdicts, what ``ch.finish`` stores and the report and landing page read) and the verdict words its prose quotes.

The comparisons behind them come from :mod:`bnlib.mia_chapter` and travel together as :class:`Findings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import chapter, config, metric_registry, mia, results, verdict
from .mia_chapter import UNIT
from .plots import NORM_LABELS

PAIRED_TEST = "paired t over target pairs (BN vs none; conditional on the examples)"
POOLED_TEST = ("pair-swap permutation test over target pairs of the ROC pooled over targets, pair-jackknife interval "
               "(BN vs none; conditional on the examples)")

@dataclass
class Findings:
    """What the chapter compares (each a comparison: ``{norm: interval, ..., "diff": BN - no norm}``) and the
    numbers the metrics' descriptions quote.

    Attributes:
        same: :func:`same_schedule`; attacks_auc: :func:`attack_comparisons` of the outlier AUC for ``loss``,
            ``rmia_online`` and the headline attack's reference counterpart; pooled: :func:`pooled_comparisons`;
            all_pools: :func:`all_pools_comparisons`; matched: :func:`matched_comparisons`; annealed:
            :func:`annealed_comparisons`.
        level: the matched inlier train accuracy; annealed_epochs: :func:`bnlib.mia_chapter.annealed_lengths` of the
            equal-exposure design (both arms' schedule and peak learning rates, in words).
        negatives: outlier non-members per target (mean, rounded); pooled_negatives: outlier non-members of
            the ROC pooled over targets; all_pools_targets, all_pools_negatives: the same over every pool.
    """

    same: dict[tuple[str, str], dict[str, Any]]
    attacks_auc: dict[str, dict[str, Any]]
    pooled: dict[tuple[str, str], dict[str, Any]]
    all_pools: dict[str, dict[str, Any]]
    matched: dict[str, dict[str, Any]]
    annealed: dict[str, dict[str, Any]]
    level: float
    annealed_epochs: str
    negatives: int
    pooled_negatives: int
    all_pools_targets: int
    all_pools_negatives: int


def family(attack: str) -> str:
    """The attack family in the metrics' names: ``lira`` for every LiRA variant, else the attack itself."""
    return "lira" if attack.startswith("lira") else attack


def headline_family(attack: str) -> list[str]:
    """The chapter's primary endpoints (``config.PRIMARY_ENDPOINTS``), Holm-adjusted with the other chapters' in
    the report: TPR at 1% FPR on the outliers from the ROC pooled over targets, same schedule, matched fit and
    equal exposure. (Only LiRA's are primary; another attack's list is empty.)"""
    name = family(attack)
    names = [f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_{comparison}" for comparison in config.COMPARISONS]
    return [metric for metric in names if verdict.is_primary(metric)]


def _entry(norms: Sequence[str], values: Mapping[str, Any], description: str, comparison: str,
           test: str = PAIRED_TEST) -> dict[str, Any]:
    """A ``results.metric_entry`` of a comparison; its paired difference over target pairs (mean, ci95, se, df,
    p_value, n targets; ``bnlib.verdict``) travels with the entry for the verdict."""
    return {**results.metric_entry({norm: values[norm] for norm in norms}, p_value=values["diff"]["p_value"],
                                   test=test, higher_means="more membership leakage", description=description,
                                   comparison=comparison), "difference": values["diff"]}


def tpr_words(metric: str) -> str:
    """A TPR metric in words: "TPR at 1% FPR", "TPR at 0.1% FPR" or "TPR at 0 false positives"."""
    return {"tpr_at_1pct_fpr": "TPR at 1% FPR", "tpr_at_0.1pct_fpr": "TPR at 0.1% FPR",
            mia.ZERO_FP: "TPR at 0 false positives"}[metric]


def headline_metrics(cfg, params: mia.ChapterParams, findings: Findings) -> dict[str, dict[str, Any]]:
    """The chapter's summary: name -> ``results.metric_entry`` with ``verdict`` (``bnlib.verdict.annotate``), for
    the headline attack (same schedule per target and pooled, matched fit, equal exposure, every pool), the loss and
    RMIA attacks and the reference code's LiRA.

    A TPR at FPR x is named and reported so only where its non-members (per target, or pooled) allow at least
    ``mia.MIN_FALSE_POSITIVES`` false positives at x; otherwise the row is the TPR at 0 false positives
    (``mia.low_fpr_metric``; two rows that both become it are one). The rows named by
    ``config.PRIMARY_ENDPOINTS`` (LiRA's TPR at 1% FPR pooled over targets) are Holm-adjusted together (the
    report re-adjusts them with every chapter's primary rows); every other row is secondary.
    """
    name, norms, f = family(params.attack), cfg.norms, findings
    reference = mia.reference_attack(params.attack)
    where = (f"{params.attack} (leave-one-out over {cfg.n_models} models per norm, eval-mode BN queries, "
             f"query augmentation {params.query_augment})")
    reference_where = (f"{reference} (the LiRA reference code's formulas, every other model a shadow, same eval-mode "
                       "logits)")
    pooled_where = f"pooled over {cfg.n_models} targets, {f.pooled_negatives} outlier non-members"
    longer = f"; non-BN zoos trained {params.long_schedule_factor}x longer" if params.long_schedule_factor else ""
    matched_how = f"at inlier train accuracy {f.level:.2f}, interpolated between zoo checkpoints of each target{longer}"
    annealed_how = ("with equal exposure (the same steps on the same data, BN's peak learning rate lowered so that it "
                    f"ends at no-BN's final fit: {f.annealed_epochs})")
    all_pools_where = (f"the ROC pooled over the {f.all_pools_targets} targets of all {len(cfg.pools)} data pools "
                       f"({f.all_pools_negatives} outlier non-members)")
    inlier_negatives = cfg.n_train // 2  # per target: the keep mask holds out half of the inliers
    # what each TPR may be called: per target, pooled over one pool's targets, pooled over every pool's
    per_target, pooled, all_pools = ({m: mia.low_fpr_metric(m, count) for m in ("tpr_at_1pct_fpr", "tpr_at_0.1pct_fpr")}
                                     for count in (f.negatives, f.pooled_negatives, f.all_pools_negatives))
    inlier_tpr1 = mia.low_fpr_metric("tpr_at_1pct_fpr", inlier_negatives)

    def entry(values, description, comparison, test=PAIRED_TEST):
        return _entry(norms, values, description, comparison, test)

    metrics = {
        f"mia_{name}_auc_outliers_same_schedule": entry(
            f.same["auc", "outliers"], f"AUC of {where} on the outlier canaries, after the common schedule.",
            "same_schedule"),
        f"mia_{name}_{per_target['tpr_at_1pct_fpr']}_outliers_same_schedule": entry(
            f.same[per_target["tpr_at_1pct_fpr"], "outliers"], f"{tpr_words(per_target['tpr_at_1pct_fpr'])} of "
            f"{where} on the outlier canaries (about {f.negatives} non-members per target), after the common "
            "schedule.", "same_schedule"),
        f"mia_{name}_auc_inliers_same_schedule": entry(
            f.same["auc", "inliers"], f"AUC of {where} on the inliers, after the common schedule.", "same_schedule"),
        f"mia_{name}_{inlier_tpr1}_inliers_same_schedule": entry(
            f.same[inlier_tpr1, "inliers"], f"{tpr_words(inlier_tpr1)} of {where} on the inliers (about "
            f"{inlier_negatives} non-members per target), after the common schedule.", "same_schedule"),
        f"mia_{name}_auc_outliers_matched_fit": entry(
            f.matched["auc"], f"AUC of {where} on the outlier canaries, {matched_how}.", "matched_fit"),
        f"mia_{name}_{per_target['tpr_at_1pct_fpr']}_outliers_matched_fit": entry(
            f.matched[per_target["tpr_at_1pct_fpr"]], f"{tpr_words(per_target['tpr_at_1pct_fpr'])} of {where} on "
            f"the outlier canaries, {matched_how}.", "matched_fit"),
        "mia_loss_auc_outliers_same_schedule": entry(
            f.attacks_auc["loss"], "AUC of the loss-threshold attack (Yeom et al.) on the outlier canaries, same "
            "schedule.", "same_schedule"),
        "mia_rmia_auc_outliers_same_schedule": entry(
            f.attacks_auc["rmia_online"], "AUC of online RMIA (test set as population) on the outlier canaries, same "
            "schedule.", "same_schedule"),
        **{f"mia_{name}_pooled_{metric}_outliers_same_schedule": entry(
            f.pooled[params.attack, metric], f"{tpr_words(metric)} of {where} on the outlier canaries, from the ROC "
            f"{pooled_where}, after the common schedule.", "same_schedule", POOLED_TEST)
           for metric in dict.fromkeys(pooled.values())},
        f"mia_{name}_auc_outliers_equal_exposure": entry(
            f.annealed["auc"], f"AUC of {where} on the outlier canaries of the first pool, {annealed_how}.",
            "equal_exposure"),
        f"mia_{name}_pooled_{pooled['tpr_at_1pct_fpr']}_outliers_equal_exposure": entry(
            f.annealed["pooled_" + pooled["tpr_at_1pct_fpr"]], f"{tpr_words(pooled['tpr_at_1pct_fpr'])} of {where} "
            f"on the outlier canaries of the first pool, from the ROC pooled over targets, {annealed_how}.",
            "equal_exposure", POOLED_TEST),
        **{f"mia_{name}_pooled_all_pools_{metric}_outliers_same_schedule": entry(
            f.all_pools[metric], f"{tpr_words(metric)} of {where} on the outlier canaries, from {all_pools_where}, "
            "after the common schedule.", "same_schedule", POOLED_TEST + ", stratified by data pool")
           for metric in dict.fromkeys(all_pools.values())},
        f"mia_{name}_pooled_{pooled['tpr_at_1pct_fpr']}_outliers_matched_fit": entry(
            f.matched["pooled_" + pooled["tpr_at_1pct_fpr"]], f"{tpr_words(pooled['tpr_at_1pct_fpr'])} of {where} "
            f"on the outlier canaries, from the ROC pooled over targets, {matched_how}.", "matched_fit", POOLED_TEST),
        "mia_lira_reference_auc_outliers_same_schedule": entry(
            f.attacks_auc[reference], f"AUC of {reference_where} on the outlier canaries (mean over targets), same "
            "schedule.", "same_schedule"),
        **{f"mia_lira_reference_pooled_{metric}_outliers_same_schedule": entry(
            f.pooled[reference, metric], f"{tpr_words(metric)} of {reference_where} on the outlier canaries, from "
            f"the ROC {pooled_where}, same schedule.", "same_schedule", POOLED_TEST)
           for metric in dict.fromkeys(pooled.values())},
    }
    for entry in metrics.values():  # where a matched-fit row is read (the equal-exposure rows carry no level here)
        if entry.get("comparison") == "matched_fit":
            entry.setdefault("fit_level", float(f.level))
    return verdict.annotate(metrics)


def _row(metrics: Mapping[str, dict[str, Any]], pattern: str, *metric_names: str) -> dict[str, Any]:
    """The first of ``pattern.format(m)`` for m in ``metric_names`` that the summary holds (a TPR at FPR x, or
    the TPR at 0 false positives that replaces it where the non-members are too few: :func:`headline_metrics`)."""
    return next(metrics[pattern.format(m)] for m in (*metric_names, mia.ZERO_FP) if pattern.format(m) in metrics)


def verdict_glue(metrics: Mapping[str, dict[str, Any]], attack: str) -> dict[str, str]:
    """The verdicts the prose quotes: sentences (``bnlib.verdict.sentence``) for every pool's pooled TPRs and the
    annealed comparisons, and the verdict words of the same-schedule and matched-fit headline comparisons."""
    name = family(attack)
    same, matched, annealed = (f"mia_{name}_{{}}_outliers_{c}" for c in config.COMPARISONS)
    all_pools = f"mia_{name}_pooled_all_pools_{{}}_outliers_same_schedule"
    return {"all_pools_tpr01_sentence": verdict.sentence(_row(metrics, all_pools, "tpr_at_0.1pct_fpr")),
            "all_pools_tpr1_sentence": verdict.sentence(_row(metrics, all_pools, "tpr_at_1pct_fpr")),
            "annealed_auc_sentence": verdict.sentence(metrics[annealed.format("auc")]),
            "annealed_pooled_tpr1_sentence": verdict.sentence(_row(metrics, annealed.format("pooled_{}"),
                                                                   "tpr_at_1pct_fpr")),
            "verdict_auc_same": metrics[same.format("auc")]["verdict"],
            "verdict_auc_matched": metrics[matched.format("auc")]["verdict"],
            "verdict_pooled_tpr1_same": _row(metrics, all_pools, "tpr_at_1pct_fpr")["verdict"],
            "verdict_pooled_tpr1_matched": _row(metrics, matched.format("pooled_{}"), "tpr_at_1pct_fpr")["verdict"]}


def metrics_table(metrics: Mapping[str, dict[str, Any]], norms: Sequence[str]) -> str:
    """The chapter's summary: per metric its comparison, each norm [95% CI], p, Holm p, n and verdict."""
    rows = [[f"{metric_registry.name(name)} `{name}`", value["comparison"],
             *(chapter.interval(value[norm], ".3f", UNIT) for norm in norms),
             f"{value['p_value']:.2g}", "" if value["p_value_holm"] is None else f"{value['p_value_holm']:.2g}",
             f"{value['difference']['n']} {value['unit']}", value["verdict"]]
            for name, value in metrics.items()]
    return chapter.markdown_table(["measurement", "comparison", *(NORM_LABELS[n] for n in norms), "p (BN vs none)",
                                   "p (Holm)", "n", "verdict"], rows)
