"""The memorization chapter's reading of its population study (``population.study``): the comparisons it makes,
the design's numbers, the tables of the same-schedule, fit-grid and equal-exposure designs, where the models
cross the headline fit, the band along the grid, the Feldman-Zhang score figure, the most memorized examples,
and the metrics with their sentences.

Kept apart from :mod:`bnlib.population` and :mod:`bnlib.memorization`, whose source is part of the cache keys
of other chapters' results: how this chapter reads its study must not invalidate them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from . import chapter, config, memorization, plots, population, verdict

NORMS = config.COMPARED_NORMS
# (group, score) -> (metric name, what it measures): the chapter's three families of metrics
MEASURES = {
    ("outliers", "hard"): ("canary_memorization",
                           "Canary memorization acc(IN canaries) - acc(OUT canaries) per model"),
    ("outliers", "soft"): ("fz_memorization_outliers", "Mean soft Feldman-Zhang score of the canaries "
                                                       "(probability of the trained label, IN - OUT)"),
    ("inliers", "soft"): ("fz_memorization_inliers", "Mean soft Feldman-Zhang score of the inliers"),
}
HEADLINE = tuple(name for name, _ in MEASURES.values() if verdict.is_primary(name))  # primary endpoints here
SAME_SCHEDULE_HEADER = ("norm", "inlier fit (own half)", "test accuracy", "IN canaries", "OUT canaries",
                        "memorization [95% CI]")
GRID_HEADER = ("fit level", "BN: models crossing, mean epoch", "no-BN: models crossing, mean epoch",
               "BN memorization", "no-BN memorization", "BN − no-BN [95% CI]")
EQUAL_EXPOSURE_HEADER = ("norm", "peak learning rate", "steps", "exposures per canary", "learning-rate integral",
                         "end fit", "memorization [95% CI]")

Comparisons = Mapping[tuple[str, str], Mapping[str, Any]]  # (group, score) -> population.comparisons


def all_comparisons(found: Mapping[str, Any], n_bootstrap: int) -> dict[tuple[str, str], dict[str, Any]]:
    """``population.comparisons`` for every (group, score) of ``MEASURES``."""
    return {(group, score): population.comparisons(found, group, score, n_bootstrap) for group, score in MEASURES}


def design_values(cfg, found: Mapping[str, Any], n_bootstrap: int) -> dict[str, Any]:
    """The numbers the text gives about the design, read off the BN population's first pool and first model:
    pools, inliers and canaries per pool, models per pool and per norm, each model's training examples, the
    canary rate, the schedule's epochs, the declared fit grid and headline level, and the bootstrap's resamples."""
    first = found["populations"]["batch"].zoos[0]
    member_in = first.keep[0]
    return {"n_pools": len(cfg.pools), "pool_inliers": int((~first.is_outlier).sum()),
            "pool_canaries": int(first.is_outlier.sum()), "models_per_pool": cfg.n_models,
            "models_per_norm": cfg.n_models * len(cfg.pools),
            "member_inliers": int((member_in & ~first.is_outlier).sum()),
            "member_canaries": int((member_in & first.is_outlier).sum()),
            "canary_rate": float(first.is_outlier.float().mean()), "common_epochs": cfg.epochs,
            "fit_grid": ", ".join(f"{level:.2f}" for level in found["levels"]), "headline_fit": found["headline"],
            "n_bootstrap": n_bootstrap}


def _last(population_: population.Population, key: str) -> np.ndarray:
    return np.concatenate([curve[key][-1] for curve in population_.curves])


def same_schedule_rows(found: Mapping[str, Any], canary: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Rows (``SAME_SCHEDULE_HEADER``) per norm at the end of the common schedule: mean over models of the fit,
    the test accuracy and the IN / OUT canary accuracy, and the memorization with its bootstrap interval
    (``canary``: the hard canary comparisons)."""
    rows = []
    for norm in NORMS:
        pop = found["populations"][norm]
        test = np.concatenate([z.test_accuracy().numpy() for z in pop.zoos])
        rows.append((plots.NORM_LABELS[norm], f"{_last(pop, 'fit').mean():.3f}", f"{test.mean():.3f}",
                     f"{_last(pop, 'in_acc').mean():.3f}", f"{_last(pop, 'out_acc').mean():.3f}",
                     chapter.interval(canary["same_schedule"][norm], ".3f", "models")))
    return rows


def same_schedule_fits(found: Mapping[str, Any]) -> dict[str, float]:
    """``same_fit_{norm}``: the mean over models of the inlier fit at the end of the common schedule, and
    ``min_fit_{norm}``: the lowest final fit of any model (every model passes the headline level if above it)."""
    values = {f"same_fit_{norm}": float(_last(found["populations"][norm], "fit").mean()) for norm in NORMS}
    values.update({f"min_fit_{norm}": float(_last(found["populations"][norm], "fit").min()) for norm in NORMS})
    return values


def _difference_text(difference: Mapping[str, Any]) -> str:
    low, high = difference["ci95"]
    if not np.isfinite(difference["mean"]):
        return "not reached"
    if not (np.isfinite(low) and np.isfinite(high)):
        return f"{difference['mean']:+.3f}"
    return f"{difference['mean']:+.3f} [{low:+.3f}, {high:+.3f}]"


def grid_rows(found: Mapping[str, Any], canary: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Rows (``GRID_HEADER``) per declared fit level: how many models of each norm cross it and at which mean
    epoch, each norm's mean memorization there, and BN - no-BN with its interval ("not reached" where no pair has
    both values)."""
    rows = []
    for level in found["levels"]:
        result = canary[population.matched_name(level)]
        crossing = [found["crossings"][norm][level] for norm in NORMS]
        mark = " (headline)" if level == found["headline"] else ""
        rows.append((f"{level:.2f}{mark}",
                     *(f"{c['crossed']} of {c['members']}, epoch {c['mean_epoch']:.1f}" if c["crossed"]
                       else f"0 of {c['members']}" for c in crossing),
                     *(f"{result[norm]['mean']:.3f}" if np.isfinite(result[norm]["mean"]) else "not reached"
                       for norm in NORMS),
                     _difference_text(result["difference"])))
    return rows


def crossing_values(found: Mapping[str, Any]) -> dict[str, Any]:
    """Where the models cross the headline level: per norm the mean epoch, learning rate, steps and exposures per
    canary there and how many of the models cross it (``cross_epoch_{norm}``, ``cross_lr_{norm}``,
    ``cross_steps_{norm}``, ``cross_exposures_{norm}``, ``crossed_{norm}``); ``matched_level`` (the headline)."""
    values: dict[str, Any] = {}
    for norm in NORMS:
        crossing = found["crossings"][norm][found["headline"]]
        values.update({f"cross_epoch_{norm}": crossing["mean_epoch"],
                       f"cross_lr_{norm}": crossing["mean_learning_rate"],
                       f"cross_steps_{norm}": crossing["mean_steps"],
                       f"cross_exposures_{norm}": crossing["mean_exposures"],
                       f"crossed_{norm}": f"{crossing['crossed']} of {crossing['members']}"})
    values["matched_level"] = found["headline"]
    return values


def grid_band(found: Mapping[str, Any]) -> dict[str, Any]:
    """BN - no-BN canary memorization along the declared grid, per model pair (member t of each pool under both
    norms), with the simultaneous band of ``verdict.curve_band``."""
    levels = list(found["levels"])
    values = {norm: population.on_fit_grid(found["populations"][norm], levels) for norm in NORMS}  # (sum T, L)
    pools = np.concatenate([np.full(zoo_.n_models, p) for p, zoo_ in enumerate(found["populations"]["batch"].zoos)])
    band = verdict.curve_band(values["batch"], values["none"], pools, levels)
    low, high = np.asarray(band["simultaneous"], dtype=float).reshape(len(levels), 2).T
    return {**band, "low": low, "high": high}  # the simultaneous band's edges, as the figure draws them


def equal_exposure_rows(found: Mapping[str, Any], canary: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """Rows (``EQUAL_EXPOSURE_HEADER``) of design (b): each arm's peak learning rate, steps, exposures per canary,
    learning-rate integral, end fit and memorization."""
    arms = found["equal_exposure"]["arms"]
    return [(plots.NORM_LABELS[norm], f"{arms[norm]['lr']:.3g}", f"{arms[norm]['steps']}",
             f"{arms[norm]['exposures']:.1f}", f"{arms[norm]['lr_integral']:.3g}", f"{arms[norm]['end_fit']:.3f}",
             chapter.interval(canary["equal_exposure"][norm], ".3f", "models")) for norm in NORMS]


def equal_exposure_values(found: Mapping[str, Any]) -> dict[str, Any]:
    """``equal_target`` (no-BN's final fit, which BN's lowered rate aims at), ``equal_lr`` (BN's rate),
    ``equal_end_fit_batch`` and ``calibration_tried`` (each calibration rate -> mean final fit)."""
    equal = found["equal_exposure"]
    tried = ", ".join(f"{lr:.3g} → {fit:.3f}" for lr, fit in equal["calibration"]["tried"].items()) or "none needed"
    return {"equal_target": equal["target_fit"], "equal_lr": equal["arms"]["batch"]["lr"],
            "equal_end_fit_batch": equal["arms"]["batch"]["end_fit"], "calibration_tried": tried}


def first_pool_scores(found: Mapping[str, Any], norm: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """The first pool's zoo of ``norm`` and its examples' Feldman-Zhang scores
    (``memorization.subsampled_memorization``)."""
    zoo_model = found["populations"][norm].zoos[0]
    return zoo_model, memorization.subsampled_memorization(zoo_model.logits, zoo_model.labels, zoo_model.keep)


def scores_figure(found: Mapping[str, Any]):
    """Empirical distribution of the hard (left) and soft (right) Feldman-Zhang scores in each norm's first pool,
    for the canaries (solid) and the inliers (dotted). Returns the figure."""
    fig, axes = plots.subplots(1, 2, height=3.9)
    for norm in NORMS:
        zoo_model, scores = first_pool_scores(found, norm)
        for ax, score in zip(axes, ("hard", "soft"), strict=True):
            for group, mask, style in (("canaries", zoo_model.is_outlier, "-"),
                                       ("inliers", ~zoo_model.is_outlier, ":")):
                x, y = memorization.ecdf(scores[score][mask].numpy())
                ax.plot(x, y, style, color=plots.NORM_COLORS[norm], label=f"{plots.NORM_LABELS[norm]}, {group}")
    axes[0].set(title="mem(i), hard (first pool)", xlabel="mem(i)", ylabel="fraction of examples ≤ x")
    axes[1].set(title="mem(i), soft (first pool)", xlabel="mem(i)")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=plots.MIN_FONT)
    fig.tight_layout(rect=(0, 0.15, 1, 1))
    return fig


def most_memorized_examples(cfg, found: Mapping[str, Any], count: int) -> tuple[torch.Tensor, list[str]]:
    """The ``count`` most memorized canaries, then inliers, of each norm's first pool (highest hard score, ties
    broken by the soft one), with titles "hard score → trained label"; rows: BN canaries, BN inliers, no-norm
    canaries, no-norm inliers."""
    images, titles = [], []
    experiment = population.pool_data(cfg, cfg.pools[0])
    for norm in NORMS:
        zoo_model, scores = first_pool_scores(found, norm)
        for mask in (zoo_model.is_outlier, ~zoo_model.is_outlier):
            chosen = memorization.most_memorized(scores["hard"], scores["soft"], mask, count)
            images.append(experiment.pool_x[chosen])
            titles += [f"{float(scores['hard'][i]):.2f} → {experiment.class_names[int(experiment.pool_y[i])]}"
                       for i in chosen]
    return torch.cat(images), titles


def chapter_metrics(cfg, found: Mapping[str, Any], compared: Comparisons) -> dict[str, Any]:
    """Every metric of ``MEASURES`` for every comparison (``population.metric_entries``: same schedule, matched
    fit at the headline level and at each grid level, equal exposure), annotated with verdicts: canary
    memorization (``config.PRIMARY_ENDPOINTS``) in each headline comparison is primary (Holm-adjusted together
    here, and across the book by ``verdict.book_family_holm``); the grid-level rows and every other row are
    secondary (``verdict.annotate``)."""
    metrics: dict[str, Any] = {}
    for (group, score), (name, what) in MEASURES.items():
        metrics.update(population.metric_entries(cfg, found, compared[(group, score)], name, what=what,
                                                 higher_means=f"more memorization of {group}"))
    return verdict.annotate(metrics)


def design_test(found: Mapping[str, Any]) -> dict[str, Any]:
    """Whether the two designs that equalize fit give different BN - no-BN canary memorization, tested on the same
    model pairs (``verdict.design_difference``): per pair, (a) matched fit at the headline level minus (b) equal
    exposure; a pair whose models do not both cross the headline level drops out."""
    equal = found["equal_exposure"]["populations"]
    headline = found["headline"]
    summaries, pools = {}, None
    for design, (batch, none, positions) in {
            "matched_fit": (found["populations"]["batch"], found["populations"]["none"],
                            {n: found["crossings"][n][headline]["position"] for n in NORMS}),
            "equal_exposure": (equal["batch"], equal["none"], None)}.items():
        values = {}
        for norm, pop in (("batch", batch), ("none", none)):
            values[norm], pools = population.signed_values(pop, "outliers", "hard",
                                                           None if positions is None else positions[norm])
        summaries[design] = verdict.pair_summaries(values["batch"], values["none"])
    return verdict.design_difference(summaries["matched_fit"], summaries["equal_exposure"], pools)


def sentences(metrics: Mapping[str, Any], designs: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The text's verdicts on canary memorization: ``{comparison}_sentence`` for every comparison of
    ``config.COMPARISONS``, and ``designs_agree``: the test of the two fit-equalizing designs' difference on the
    same pairs (:func:`design_test`; without it, only that the test was not run)."""
    values = {f"{c}_sentence": verdict.sentence(metrics[f"canary_memorization_{c}"]) for c in config.COMPARISONS}
    if designs is None:
        values["designs_agree"] = "The two designs' difference was not tested here."
        return values
    if not np.isfinite(designs["p_value"]):
        values["designs_agree"] = (f"The two designs' difference could not be tested: {designs['n']} model pairs "
                                   "crossed the headline fit level in both norms.")
        return values
    low, high = designs["ci95"]
    differ = designs["p_value"] < verdict.ALPHA
    values["designs_agree"] = (
        f"The two designs {'differ' if differ else 'are not detectably different'}: (a) − (b) in BN − no-BN canary "
        f"memorization is {designs['mean']:+.3f} [{low:+.3f}, {high:+.3f}] over {designs['n']} model pairs "
        f"(paired t, p = {designs['p_value']:.2g}).")
    return values
