"""The membership-inference chapter's summary: its headline metrics (``results.metric_entry`` values with
verdicts, what ``ch.finish`` stores and the report and landing page read) and the verdict words its prose quotes.

The comparisons behind them come from :mod:`bnlib.mia_chapter` and travel together as :class:`Findings`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import chapter, metric_registry, mia, results, verdict
from .mia_chapter import UNIT, annealed_lengths
from .plots import NORM_LABELS

PAIRED_TEST = "paired two-way bootstrap over targets and examples (BN vs none)"
POOLED_TEST = "paired two-way bootstrap over targets and examples of the ROC pooled over targets (BN vs none)"

@dataclass
class Findings:
    """What the chapter compares (each a comparison: ``{norm: interval, ..., "diff": BN - no norm}``) and the
    numbers the metrics' descriptions quote.

    Attributes:
        same: :func:`same_schedule`; attacks_auc: :func:`attack_comparisons` of the outlier AUC for ``loss``,
            ``rmia_online`` and the headline attack's reference counterpart; pooled: :func:`pooled_comparisons`;
            all_pools: :func:`all_pools_comparisons`; matched: :func:`matched_comparisons`; annealed:
            :func:`annealed_comparisons`.
        level: the matched inlier train accuracy; annealed_epochs: norm -> length of its annealed schedule.
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
    annealed_epochs: dict[str, int]
    negatives: int
    pooled_negatives: int
    all_pools_targets: int
    all_pools_negatives: int


def family(attack: str) -> str:
    """The attack family in the metrics' names: ``lira`` for every LiRA variant, else the attack itself."""
    return "lira" if attack.startswith("lira") else attack


def headline_family(attack: str) -> list[str]:
    """The metrics Holm-adjusted together: outlier AUC (per target) and TPR at 1% FPR (pooled over targets;
    same schedule: over every pool's targets), same schedule, matched fit and annealed."""
    name = family(attack)
    return [f"mia_{name}_auc_outliers_same_schedule", f"mia_{name}_auc_outliers_matched_fit",
            f"mia_{name}_pooled_all_pools_tpr_at_1pct_fpr_outliers_same_schedule",
            f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_matched_fit",
            f"mia_{name}_auc_outliers_matched_fit_annealed",
            f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_matched_fit_annealed"]


def _entry(norms: Sequence[str], values: Mapping[str, Any], description: str, comparison: str,
           test: str = PAIRED_TEST) -> dict[str, Any]:
    """A ``results.metric_entry`` of a comparison; its paired bootstrap difference (mean, ci95, se, p_value, n
    targets) travels with the entry for the verdict."""
    return {**results.metric_entry({norm: values[norm] for norm in norms}, p_value=values["diff"]["p_value"],
                                   test=test, higher_means="more membership leakage", description=description,
                                   comparison=comparison), "difference": values["diff"]}


def headline_metrics(cfg, params: mia.ChapterParams, findings: Findings) -> dict[str, dict[str, Any]]:
    """The chapter's summary: name -> ``results.metric_entry`` with ``verdict`` (``bnlib.verdict.annotate``), for
    the headline attack (same schedule per target and pooled, matched fit, annealed, every pool), the loss and
    RMIA attacks and the reference code's LiRA.

    :func:`headline_family` is Holm-adjusted together; a matched-fit or annealed comparison whose detectable
    difference exceeds the same-schedule effect of the same metric is "inconclusive".
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
    annealed_how = f"at the end of schedules that end at the same inlier fit ({annealed_lengths(f.annealed_epochs)})"
    all_pools_where = (f"the ROC pooled over the {f.all_pools_targets} targets of all {len(cfg.pools)} data pools "
                       f"({f.all_pools_negatives} outlier non-members)")

    def entry(values, description, comparison, test=PAIRED_TEST):
        return _entry(norms, values, description, comparison, test)

    metrics = {
        f"mia_{name}_auc_outliers_same_schedule": entry(
            f.same["auc", "outliers"], f"AUC of {where} on the outlier canaries, after the common schedule.",
            "same_schedule"),
        f"mia_{name}_tpr_at_1pct_fpr_outliers_same_schedule": entry(
            f.same["tpr_at_1pct_fpr", "outliers"], f"TPR at 1% FPR of {where} on the outlier canaries "
            f"(about {f.negatives} non-members per target), after the common schedule.", "same_schedule"),
        f"mia_{name}_auc_inliers_same_schedule": entry(
            f.same["auc", "inliers"], f"AUC of {where} on the inliers, after the common schedule.", "same_schedule"),
        f"mia_{name}_tpr_at_1pct_fpr_inliers_same_schedule": entry(
            f.same["tpr_at_1pct_fpr", "inliers"], f"TPR at 1% FPR of {where} on the inliers, after the common "
            "schedule.", "same_schedule"),
        f"mia_{name}_auc_outliers_matched_fit": entry(
            f.matched["auc"], f"AUC of {where} on the outlier canaries, {matched_how}.", "matched_fit"),
        f"mia_{name}_tpr_at_1pct_fpr_outliers_matched_fit": entry(
            f.matched["tpr_at_1pct_fpr"], f"TPR at 1% FPR of {where} on the outlier canaries, {matched_how}.",
            "matched_fit"),
        "mia_loss_auc_outliers_same_schedule": entry(
            f.attacks_auc["loss"], "AUC of the loss-threshold attack (Yeom et al.) on the outlier canaries, same "
            "schedule.", "same_schedule"),
        "mia_rmia_auc_outliers_same_schedule": entry(
            f.attacks_auc["rmia_online"], "AUC of online RMIA (test set as population) on the outlier canaries, same "
            "schedule.", "same_schedule"),
        f"mia_{name}_pooled_tpr_at_0.1pct_fpr_outliers_same_schedule": entry(
            f.pooled[params.attack, "tpr_at_0.1pct_fpr"], f"TPR at 0.1% FPR of {where} on the outlier canaries, from "
            f"the ROC {pooled_where}, after the common schedule.", "same_schedule", POOLED_TEST),
        f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_same_schedule": entry(
            f.pooled[params.attack, "tpr_at_1pct_fpr"], f"TPR at 1% FPR of {where} on the outlier canaries, from "
            f"the ROC {pooled_where}, after the common schedule.", "same_schedule", POOLED_TEST),
        f"mia_{name}_auc_outliers_matched_fit_annealed": entry(
            f.annealed["auc"], f"AUC of {where} on the outlier canaries of the first pool, {annealed_how}.",
            "matched_fit_annealed"),
        f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_matched_fit_annealed": entry(
            f.annealed["pooled_tpr_at_1pct_fpr"], f"TPR at 1% FPR of {where} on the outlier canaries of the first "
            f"pool, from the ROC pooled over targets, {annealed_how}.", "matched_fit_annealed", POOLED_TEST),
        **{f"mia_{name}_pooled_all_pools_{metric}_outliers_same_schedule": entry(
            f.all_pools[metric], f"TPR at {level} FPR of {where} on the outlier canaries, from {all_pools_where}, "
            "after the common schedule.", "same_schedule", POOLED_TEST + ", stratified by data pool")
           for metric, level in (("tpr_at_0.1pct_fpr", "0.1%"), ("tpr_at_1pct_fpr", "1%"))},
        f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_matched_fit": entry(
            f.matched["pooled_tpr_at_1pct_fpr"], f"TPR at 1% FPR of {where} on the outlier canaries, from the ROC "
            f"pooled over targets, {matched_how}.", "matched_fit", POOLED_TEST),
        "mia_lira_reference_auc_outliers_same_schedule": entry(
            f.attacks_auc[reference], f"AUC of {reference_where} on the outlier canaries (mean over targets), same "
            "schedule.", "same_schedule"),
        **{f"mia_lira_reference_pooled_{metric}_outliers_same_schedule": entry(
            f.pooled[reference, metric], f"TPR at {level} FPR of {reference_where} on the outlier canaries, from the "
            f"ROC {pooled_where}, same schedule.", "same_schedule", POOLED_TEST)
           for metric, level in (("tpr_at_0.1pct_fpr", "0.1%"), ("tpr_at_1pct_fpr", "1%"))},
    }
    same_auc = abs(f.same["auc", "outliers"]["diff"]["mean"])
    same_tpr1 = abs(f.same["tpr_at_1pct_fpr", "outliers"]["diff"]["mean"])
    same_pooled_tpr1 = abs(f.pooled[params.attack, "tpr_at_1pct_fpr"]["diff"]["mean"])
    scales = {f"mia_{name}_auc_outliers_matched_fit": same_auc,
              f"mia_{name}_tpr_at_1pct_fpr_outliers_matched_fit": same_tpr1,
              f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_matched_fit": same_pooled_tpr1,
              f"mia_{name}_auc_outliers_matched_fit_annealed": same_auc,
              f"mia_{name}_pooled_tpr_at_1pct_fpr_outliers_matched_fit_annealed": same_pooled_tpr1}
    return verdict.annotate(metrics, headline_family(params.attack), scales=scales)


def verdict_glue(metrics: Mapping[str, dict[str, Any]], attack: str) -> dict[str, str]:
    """The verdicts the prose quotes: sentences (``bnlib.verdict.sentence``) for every pool's pooled TPRs and the
    annealed comparisons, and the verdict words of the same-schedule and matched-fit headline comparisons."""
    name, headline = family(attack), headline_family(attack)
    return {"all_pools_tpr01_sentence": verdict.sentence(
                metrics[f"mia_{name}_pooled_all_pools_tpr_at_0.1pct_fpr_outliers_same_schedule"]),
            "all_pools_tpr1_sentence": verdict.sentence(metrics[headline[2]]),
            "annealed_auc_sentence": verdict.sentence(metrics[headline[4]]),
            "annealed_pooled_tpr1_sentence": verdict.sentence(metrics[headline[5]]),
            "verdict_auc_same": metrics[headline[0]]["verdict"], "verdict_auc_matched": metrics[headline[1]]["verdict"],
            "verdict_pooled_tpr1_same": metrics[headline[2]]["verdict"],
            "verdict_pooled_tpr1_matched": metrics[headline[3]]["verdict"]}


def metrics_table(metrics: Mapping[str, dict[str, Any]], norms: Sequence[str]) -> str:
    """The chapter's summary: per metric its comparison, each norm [95% CI], p, Holm p, n and verdict."""
    rows = [[f"{metric_registry.name(name)} `{name}`", value["comparison"],
             *(chapter.interval(value[norm], ".3f", UNIT) for norm in norms),
             f"{value['p_value']:.2g}", "" if value["p_value_holm"] is None else f"{value['p_value_holm']:.2g}",
             f"{value['difference']['n']} {value['unit']}", value["verdict"]]
            for name, value in metrics.items()]
    return chapter.markdown_table(["measurement", "comparison", *(NORM_LABELS[n] for n in norms), "p (BN vs none)",
                                   "p (Holm)", "n", "verdict"], rows)
