"""The influence chapter's reading of the population (``population.study``, the same members as memorization and
membership inference): per comparison, every member's log summaries (``influence.population_summaries``), the
BN / no-BN comparison over model pairs (``paired_log_comparison``), the table, the sentences the text
quotes and the chapter's metrics.

Kept apart from :mod:`bnlib.influence`, whose source is part of the cache key of the probes: how a chapter reads
results must not invalidate the results.

Which comparisons (:func:`readings`): ``same_schedule`` (every member's final weights), ``matched_fit`` (each
member read where its fit first crosses the study's matched-fit level, interpolated between the two bracketing
checkpoints; the study's headline level ``headline_fit``) and ``equal_exposure`` (the final weights of the
equal-exposure populations: the same steps, BN's peak learning rate lowered to end at no-BN's final fit). The grid's
other levels are not probed at quick (each level costs two more probed checkpoints per member); a reading per
level can be added to the same mapping, and every row below follows.

The counterfactual definition lifts BN inliers to a floor by construction (removing any sample shifts the batch
statistics and so every canary's gradient in the batch). The chapter therefore (i) takes the eval-mode ratio as
its primary endpoint, (ii) reports the counterfactual outlier/inlier ratio as secondary, and (iii) reports the
canaries' influence alone, BN over no norm (``influence_{definition}_canary_ratio_{comparison}``, secondary),
which has no inlier in it: the like-with-like comparison the toy theory's amplification rho speaks about.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import config, influence, population, results, verdict

NORMS = config.COMPARED_NORMS  # the chapter compares BatchNorm with no normalization
DEFINITION_LABELS = {"eval_mode": "1 · eval mode", "in_batch": "2 · in batch", "counterfactual": "3 · counterfactual"}
COMPARISON_LABELS = {"same_schedule": "same schedule", "matched_fit": "matched fit",
                     "equal_exposure": "equal exposure"}
PRIMARY_DEFINITION = "eval_mode"  # the primary endpoint's definition (no counterfactual floor; see the docstring)
TABLE_HEADER = ("definition", "comparison", "BN: canary / inlier", "no norm: canary / inlier", "BN / no norm",
                "p", "verdict")
ALPHA = 0.05


def definition_word(name: str) -> str:
    """How the text names a definition: its label without the number (``eval mode``)."""
    return DEFINITION_LABELS[name].split(" · ", 1)[1]


def comparison_label(name: str) -> str:
    """``equal exposure``, or ``matched fit 0.95`` for a grid level ``matched_fit_0p95``."""
    if name in COMPARISON_LABELS:
        return COMPARISON_LABELS[name]
    if name.startswith("matched_fit_") and "p" in name:
        return "matched fit " + name.removeprefix("matched_fit_").replace("p", ".")
    return name.replace("_", " ")


def readings(found: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """comparison -> {``populations``: norm -> Population, ``positions``: norm -> per pool (T,) fractional
    checkpoint index or None (the end of the schedule), ``fit_level``: float or None}, from ``population.study``."""
    pops, equal = found["populations"], found["equal_exposure"]["populations"]
    headline = float(found["headline"])
    return {
        "same_schedule": {"populations": {n: pops[n] for n in NORMS}, "positions": dict.fromkeys(NORMS),
                          "fit_level": None},
        "matched_fit": {"populations": {n: pops[n] for n in NORMS},
                        "positions": {n: found["crossings"][n][headline]["position"] for n in NORMS},
                        "fit_level": headline},
        "equal_exposure": {"populations": {n: equal[n] for n in NORMS}, "positions": dict.fromkeys(NORMS),
                           "fit_level": float(found["equal_exposure"]["target_fit"])},
    }


def paired_log_comparison(batch: np.ndarray, none: np.ndarray, pools: np.ndarray | None = None,
                          alpha: float = 0.05) -> dict[str, Any]:
    """BN against no norm on per-pair log summaries (member t of each norm is pair t): a stratified paired t.

    The pair differences d = batch - none are modelled as a per-pool mean plus independent noise (pools are
    strata: the target is conditional on the data draws); the estimate is the mean of d (pool means weighted by
    their pair counts), its standard error the pooled within-pool SD over sqrt(n), with n - S degrees of
    freedom (``verdict.stratified_t``, the procedure of every other BN-vs-no-BN comparison). Pairs with a NaN on
    either side are dropped.

    Returns:
        ``log_mean``, ``se`` (log scale), ``df``, ``p_value`` (two-sided), ``ratio`` = exp(log_mean), ``ci95``
        (the ratio's interval, exp of the t interval), ``n`` (pairs used); per norm ``batch``/``none``: the
        geometric-mean summary ``{"mean", "ci95", "n"}`` (exp of the stratified mean of the log summaries).
    """
    batch, none = np.asarray(batch, dtype=float), np.asarray(none, dtype=float)
    pools = np.zeros(len(batch), dtype=int) if pools is None else np.asarray(pools)
    if batch.shape != none.shape or batch.shape != pools.shape or batch.ndim != 1:
        raise ValueError(f"Parameters 'batch' {batch.shape}, 'none' {none.shape} and 'pools' {pools.shape} must be "
                         "one-dimensional and of one length (one entry per model pair).")
    keep = np.isfinite(batch) & np.isfinite(none)
    test = _stratified_mean(batch[keep] - none[keep], pools[keep], alpha)
    out = {"log_mean": test["mean"], "se": test["se"], "df": test["df"], "p_value": test["p_value"],
           "ratio": math.exp(test["mean"]) if math.isfinite(test["mean"]) else float("nan"),
           "ci95": [math.exp(v) if math.isfinite(v) else float("nan") for v in test["ci"]], "n": test["n"]}
    for name, values in (("batch", batch), ("none", none)):
        own = _stratified_mean(values[keep], pools[keep], alpha)
        out[name] = {"mean": math.exp(own["mean"]) if math.isfinite(own["mean"]) else float("nan"),
                     "ci95": [math.exp(v) if math.isfinite(v) else float("nan") for v in own["ci"]], "n": own["n"]}
    return out


def _stratified_mean(values: np.ndarray, pools: np.ndarray, alpha: float) -> dict[str, Any]:
    """``verdict.stratified_t`` at confidence 1 - ``alpha``, with a p-value of None where it has none."""
    test = verdict.stratified_t(values, pools, confidence=1 - alpha)
    return {**test, "ci": test["ci95"], "p_value": test["p_value"] if math.isfinite(test["p_value"]) else None}


def measure(cfg, params: influence.ChapterParams, read: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Every member's summaries in every reading (cached probes), and what it cost.

    Returns:
        ``summaries``: comparison -> norm -> ``influence.population_summaries``; ``seconds``: wall time;
        ``probe_seconds_per_model``: norm -> mean wall seconds per newly probed member and checkpoint (NaN when
        everything came from the cache).
    """
    summaries: dict[str, dict[str, Any]] = {}
    spent: dict[str, list[float]] = {norm: [0.0, 0] for norm in NORMS}
    started = time.perf_counter()
    for comparison, reading in read.items():
        summaries[comparison] = {}
        for norm in NORMS:
            before = _probe_count(cfg, params, reading["populations"][norm])
            clock = time.perf_counter()
            summaries[comparison][norm] = influence.population_summaries(
                cfg, reading["populations"][norm], params, reading["positions"][norm])
            spent[norm][0] += time.perf_counter() - clock
            spent[norm][1] += _probe_count(cfg, params, reading["populations"][norm]) - before
    per_model = {norm: (s / k if k else float("nan")) for norm, (s, k) in spent.items()}
    return {"summaries": summaries, "seconds": time.perf_counter() - started, "probe_seconds_per_model": per_model}


def _probe_count(cfg, params, pop) -> int:
    """Cached (member, checkpoint) probes of a population (to time only what was computed)."""
    from dataclasses import replace

    count = 0
    for pool, zoo in zip(pop.pools, pop.zoos, strict=True):
        pool_cfg = replace(population.pool_config(cfg, pool), epochs=pop.epochs)
        entry = influence.probe_entry(pool_cfg, zoo.norm, params)
        count += sum(entry.has(influence.probe_name(t, epoch)) for epoch in zoo.checkpoint_epochs.tolist()
                     for t in range(zoo.n_models))
    return count


def compare(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """definition -> comparison -> {``outlier_inlier``, ``canary``}: ``paired_log_comparison`` of the
    per-member log ratio (canary over inlier) and of the canaries' mean log influence alone."""
    out: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in influence.DEFINITION_NAMES}
    for comparison, per_norm in summaries.items():
        pools = per_norm["batch"]["pools"]["label"]
        for name in influence.DEFINITION_NAMES:
            out[name][comparison] = {
                key: paired_log_comparison(per_norm["batch"][name][field], per_norm["none"][name][field],
                                                     pools, alpha=ALPHA)
                for key, field in (("outlier_inlier", "log_ratio"), ("canary", "canary_log"))}
    return out


def ratio_verdict(result: Mapping[str, Any], p_value: float | None, alpha: float = ALPHA, power: float = 0.8) -> str:
    """The verdict words of a BN / no-BN ratio from a log-scale comparison: ``BN higher``/``no-BN higher`` (p below
    ``alpha``, by the sign of the log difference), else ``no difference detected (could detect ≥ ×X)`` with X the
    ratio the design detects (exp of ``verdict.detectable_difference`` of the log SE), or ``inconclusive`` below
    ``verdict.MIN_REPLICATES`` pairs or without a finite test."""
    n, mean, se = result["n"], result["log_mean"], result["se"]
    if n < verdict.MIN_REPLICATES:
        return f"inconclusive ({n} model pairs; at least {verdict.MIN_REPLICATES} needed)"
    if p_value is None or not all(math.isfinite(v) for v in (mean, se, p_value)):
        return "inconclusive (no finite estimate, standard error or p-value)"
    if p_value < alpha:
        return f"{'BN higher' if mean > 0 else 'no-BN higher'} (ratio ×{math.exp(mean):.3g}, p = {p_value:.2g})"
    return f"no difference detected (could detect ≥ ×{math.exp(verdict.detectable_difference(se, alpha, power)):.3g})"


def metric_name(definition: str, comparison: str, key: str = "outlier_inlier") -> str:
    return f"influence_{definition}_{key}_ratio_{comparison}"


def chapter_metrics(compared: Mapping[str, Mapping[str, Mapping[str, Any]]], read: Mapping[str, Mapping[str, Any]],
                    params: influence.ChapterParams, cfg) -> dict[str, dict[str, Any]]:
    """The chapter's metrics: ``influence_{definition}_outlier_inlier_ratio_{comparison}`` (geometric mean over
    models of canary over inlier influence per norm; BN / no-BN over model pairs) and
    ``influence_{definition}_canary_ratio_{comparison}`` (the canaries' geometric-mean influence per norm).
    The eval-mode outlier/inlier rows are the primary family (``family`` = "primary"; Holm over them here until
    the book-level family adjusts them); every other row is secondary with its raw p."""
    primary = [metric_name(PRIMARY_DEFINITION, c) for c in read]
    adjusted = dict(zip(primary, verdict.holm([compared[PRIMARY_DEFINITION][c]["outlier_inlier"]["p_value"]
                                               for c in read]), strict=True))
    metrics = {}
    for name, per_comparison in compared.items():
        for comparison, keys in per_comparison.items():
            level = read[comparison]["fit_level"]
            where = ("at the end of the common schedule" if comparison == "same_schedule" else
                     f"where each model's inlier fit first crosses {level:.3f}, interpolated on the log scale between "
                     "the two checkpoints around it" if comparison == "matched_fit" else
                     f"with equal exposure (the same steps; BN's peak learning rate lowered so that both end near "
                     f"fit {level:.3f})")
            for key, result in keys.items():
                metric = metric_name(name, comparison, key)
                what = ("canary over inlier influence (ratio of geometric means per model)" if key == "outlier_inlier"
                        else "the canaries' influence (geometric mean per model)")
                p_holm = adjusted.get(metric)
                entry = results.metric_entry(
                    {norm: result[norm] for norm in NORMS}, p_value=result["p_value"],
                    test=(f"stratified paired t over model pairs on the log scale (pools as strata, df = "
                          f"{result['df']})"),
                    higher_means=("canaries have relatively more per-sample influence" if key == "outlier_inlier"
                                  else "canaries have more per-sample influence"),
                    description=(f"{definition_word(name).capitalize()} influence: {what} of each model's IN "
                                 f"examples, {where}; BN / no-BN is the geometric mean over model pairs; n counts "
                                 "model pairs."),
                    comparison=comparison, unit="models", scale="log", family=(
                        "primary" if metric in adjusted else "secondary"), fit_level=level,
                    difference={"mean": result["ratio"], "ci95": result["ci95"], "n": result["n"], "unit": "models",
                                "log_mean": result["log_mean"], "se": result["se"], "df": result["df"]},
                    p_value_holm=p_holm,
                    verdict=ratio_verdict(result, p_holm if metric in adjusted else result["p_value"]),
                    detectable_difference=math.exp(verdict.detectable_difference(result["se"]))
                    if math.isfinite(result["se"]) else float("nan"))
                metrics[metric] = entry
    return metrics


def _ratio_cell(summary: Mapping[str, Any]) -> str:
    low, high = summary["ci95"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"×{summary['mean']:.3g} (n = {summary['n']})"
    return f"×{summary['mean']:.3g} [{low:.3g}, {high:.3g}]"


def table_rows(metrics: Mapping[str, Mapping[str, Any]], key: str = "outlier_inlier") -> list[tuple[str, ...]]:
    """Rows of the chapter's table (``TABLE_HEADER``): per definition and comparison, each norm's geometric mean
    ratio with its 95% interval over models, BN / no norm with its interval over model pairs (n), p (Holm for the
    primary rows) and the verdict."""
    rows = []
    for name in influence.DEFINITION_NAMES:
        for metric, entry in metrics.items():
            if not metric.startswith(f"influence_{name}_{key}_ratio_"):
                continue
            difference = entry["difference"]
            p_value = entry["p_value_holm"] if entry["family"] == "primary" else entry["p_value"]
            p_text = "–" if p_value is None else f"{p_value:.2g}" + (" (Holm)" if entry["family"] == "primary" else "")
            rows.append((DEFINITION_LABELS[name], comparison_label(entry["comparison"]), _ratio_cell(entry["batch"]),
                         _ratio_cell(entry["none"]),
                         _ratio_cell({"mean": difference["mean"], "ci95": difference["ci95"], "n": difference["n"]})
                         + f", {difference['n']} pairs", p_text, verdict.leading_words(entry["verdict"])))
    return rows


def sentences(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """``{definition}_{key}_{comparison}`` -> the text's phrase: each norm's geometric mean, BN / no norm with its
    interval and n, and the verdict quoted."""
    out = {}
    for metric, entry in metrics.items():
        stem = metric.removeprefix("influence_").replace("_ratio_", "_", 1)
        d = entry["difference"]
        low, high = d["ci95"]
        out[stem] = (f"×{entry['batch']['mean']:.3g} with BatchNorm against ×{entry['none']['mean']:.3g} without; "
                     f"BN / no norm ×{d['mean']:.3g} (95% CI {low:.3g} to {high:.3g}, {d['n']} model pairs): "
                     f"\"{entry['verdict']}\"")
    return out


def design_values(cfg, params: influence.ChapterParams, read: Mapping[str, Mapping[str, Any]],
                  measured: Mapping[str, Any]) -> dict[str, Any]:
    """What the text says about the design: models per norm, probes per member, levels and the cost."""
    pops = read["same_schedule"]["populations"]["batch"]
    per_norm = sum(zoo.n_models for zoo in pops.zoos)
    cost = measured["probe_seconds_per_model"]
    return {"models_per_norm": per_norm, "n_pools": len(pops.zoos), "probe_batches": params.probe_batches,
            "probe_canaries": params.probe_canaries, "probe_inliers": params.probe_inliers,
            "eval_inliers": params.eval_inliers if params.eval_inliers else "all",
            "matched_level": float(read["matched_fit"]["fit_level"]),
            "equal_exposure_level": float(read["equal_exposure"]["fit_level"]),
            "probe_seconds": f"{measured['seconds']:.0f}",
            "probe_seconds_batch": "cached" if not np.isfinite(cost["batch"]) else f"{cost['batch']:.1f}",
            "probe_seconds_none": "cached" if not np.isfinite(cost["none"]) else f"{cost['none']:.1f}"}


def amplification(compared: Mapping[str, Mapping[str, Mapping[str, Any]]], comparison: str = "matched_fit"
                  ) -> dict[str, dict[str, Any]]:
    """definition -> the canaries' influence alone, BN over no norm, at ``comparison``: ``ratio``, ``ci95``,
    ``n`` (for the amplification figure)."""
    return {name: {k: per[comparison]["canary"][k] for k in ("ratio", "ci95", "n")} for name, per in compared.items()}


def toy_amplification(batch_size: int, distances: Sequence[float], residuals: Sequence[float] = (0.5, 1.0, 2.0),
                      slope: float = 1.0) -> dict[float, np.ndarray]:
    """The toy theory's rho = I_BN / I_none (``theory.amplification``) at batch size ``batch_size`` for an outlier
    along w at each distance a of ``distances``, per residual r."""
    from . import theory

    return {r: theory.amplification(batch_size, np.asarray(distances, dtype=float), 0.0, slope, r) for r in residuals}
