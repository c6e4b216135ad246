"""The influence chapter's reading of its tracks (``influence.track_influence``): every run, the probe counts,
the comparison table and the sentences the text quotes, one BatchNorm run up close, and the chapter's metrics.

Kept apart from :mod:`bnlib.influence`, whose source is part of the cache key of the tracks: how a chapter reads
results must not invalidate the results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import chapter, influence, results, verdict
from .plots import NORM_LABELS

NORMS = ("batch", "none")  # the chapter compares BatchNorm with no normalization
DEFINITION_LABELS = {"eval_mode": "1 · eval mode", "in_batch": "2 · in batch", "counterfactual": "3 · counterfactual"}
COMPARISON_HEADER = ("definition", "comparison", "BatchNorm", "no norm", "p (BN vs none)",
                     "p (canaries > inliers): BN / none")
SIGNIFICANCE = 0.05


def definition_word(name: str) -> str:
    """How the text names a definition: its label without the number (``eval mode``)."""
    return DEFINITION_LABELS[name].split(" · ", 1)[1]


def track_all(cfg, params: influence.ChapterParams, progress: bool = True) -> dict[str, list[dict[str, Any]]]:
    """norm -> the tracks of every seed (``influence.track_influence``, cached), in the order of ``cfg.seeds``."""
    from tqdm.auto import tqdm

    tracks: dict[str, list[dict[str, Any]]] = {norm: [] for norm in NORMS}
    jobs = [(norm, seed) for norm in tracks for seed in cfg.seeds]
    for norm, seed in tqdm(jobs, desc="runs", disable=not progress):
        tracks[norm].append(influence.track_influence(cfg, params, norm, seed, progress=progress))
    return tracks


def probe_totals(tracks: Mapping[str, Sequence[dict[str, Any]]]) -> dict[str, int]:
    """Canary and inlier measurements per norm and checkpoint, over all seeds (every seed probes alike)."""
    probe, seeds = tracks["batch"][0]["measured_is_canary"], len(tracks["batch"])
    return {"probe_canaries_total": int(probe.sum()) * seeds, "probe_inliers_total": int((~probe).sum()) * seeds}


def comparison_name(comparison: str, level: float) -> str:
    """How the table names a comparison (``same schedule``, ``matched fit (0.93)``)."""
    return "same schedule" if comparison == "same_schedule" else f"matched fit ({level:.2f})"


def comparison_table_rows(rows: Sequence[dict[str, Any]], level: float) -> list[tuple[str, ...]]:
    """Rows of the chapter's table (``COMPARISON_HEADER``) from ``influence.comparison``: the outlier/inlier
    ratio of each norm (mean and 95 % interval over seeds), the paired p-value and the canaries-above-inliers
    p-values."""
    table = []
    for row in rows:
        higher = row["outliers_higher_p"]
        table.append((DEFINITION_LABELS[row["definition"]], comparison_name(row["comparison"], level),
                      chapter.interval(row["summary"]["batch"], ".2f", "seeds"),
                      chapter.interval(row["summary"]["none"], ".2f", "seeds"), f"{row['p_value']:.3g}",
                      f"{higher['batch']:.2g} / {higher['none']:.2g}"))
    return table


def comparison_sentences(rows: Sequence[dict[str, Any]]) -> dict[str, str]:
    """``{definition}_{comparison}`` -> the text's phrase: both means, the p-value and whether it is significant
    at the 5 % level."""
    sentences = {}
    for row in rows:
        batch_mean, none_mean, p = row["summary"]["batch"]["mean"], row["summary"]["none"]["mean"], row["p_value"]
        significance = "significant" if p < SIGNIFICANCE else "not significant"
        sentences[f"{row['definition']}_{row['comparison']}"] = (
            f"{batch_mean:.1f} with BatchNorm against {none_mean:.1f} without (p = {p:.2g}, {significance} at the "
            "5% level)")
    return sentences


def canary_sentence(rows: Sequence[dict[str, Any]]) -> str:
    """``influence.canaries_versus_inliers`` with the chapter's names for the definitions and the norms."""
    return influence.canaries_versus_inliers(rows, {name: definition_word(name) for name in DEFINITION_LABELS},
                                             NORM_LABELS)


def final_values(track: dict[str, Any]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One run at the end of training: definition -> (P * k,) influence of every probe sample, and which of them
    are canaries (P * k,) bool."""
    final = {name: track[name][-1].flatten().numpy() for name in influence.DEFINITION_NAMES}
    return final, track["measured_is_canary"].flatten().numpy()


def lifts(final: Mapping[str, np.ndarray], canary: np.ndarray) -> dict[str, float]:
    """How far the definitions part in one run: ``eval_in_batch_gap``, the median relative difference between
    definitions 1 and 2; ``inlier_lift`` and ``canary_lift``, the median counterfactual over in-batch norm of
    the inliers and of the canaries."""
    lift = final["counterfactual"] / final["in_batch"]
    return {"eval_in_batch_gap": float(np.median(np.abs(final["in_batch"] / final["eval_mode"] - 1))),
            "inlier_lift": float(np.median(lift[~canary])), "canary_lift": float(np.median(lift[canary]))}


def chapter_metrics(rows: Sequence[dict[str, Any]], level: float, params: influence.ChapterParams) -> dict[str, Any]:
    """The chapter's metrics, ``influence_{definition}_outlier_inlier_ratio_{comparison}`` for every row of
    ``influence.comparison``: the six ratios are its headline family (Holm); n counts seeds, paired by data draw."""
    metrics = {}
    for row in rows:
        definition, comparison = row["definition"], row["comparison"]
        how = ("after the same SGD schedule (last checkpoint)" if comparison == "same_schedule" else
               f"where inlier train accuracy (eval mode) first reaches {level:.2f}, interpolated between checkpoints")
        metrics[f"influence_{definition}_outlier_inlier_ratio_{comparison}"] = results.metric_entry(
            row["summary"], p_value=row["p_value"], test="paired t-test over seeds on log ratios",
            higher_means="outliers have relatively more per-sample influence",
            description=(f"Median {definition_word(definition)} influence of probe canaries over that of probe "
                         f"inliers (fixed training batches with {params.probe_canaries} canaries), {how}."),
            comparison=comparison)
    return verdict.annotate(metrics, units={name: "seeds" for name in metrics})
