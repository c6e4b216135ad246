"""What the ablations chapter shows, from the compared points of ``ablations.sweep``: tables with n and its
unit, figures, the batch-size explorer, the sentences its prose quotes and its summary metrics.

Apart from :mod:`bnlib.ablations` on purpose: a change to a table or a figure here retrains nothing.

Every number here comes from a point of ``ablations.compare_point``: two arms of ``pair_count`` zoo members,
member t of both arms a pair; verdicts and intervals only from at least ``ablations.MIN_PAIRS`` pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import ablations, chapter, plots, results, stats, verdict

Points = Sequence[dict[str, Any]]  # ablations.compare_point results

COMPARISONS = ("same_schedule", "matched_fit")
COMPARISON_LABELS = {"same_schedule": "same schedule", "matched_fit": "matched fit"}


def arm_label(norm: str) -> str:
    return plots.NORM_LABELS.get(norm, norm)


def first_arm(found: dict[str, Any]) -> str:
    return arm_label(found["point"].arms[0].norm)


# ----------------------------------------------------------------------------- tables

def interval_text(result: dict[str, Any], number_format: str = "+.3f") -> str:
    """A difference with its 95% interval, or "–" where there is no estimate; no interval below
    ``ablations.MIN_PAIRS`` pairs (the count is said instead)."""
    if not math.isfinite(result["mean"]):
        return "–"
    if result["n"] < ablations.MIN_PAIRS:
        return f"{result['mean']:{number_format}} ({result['n']} model pairs: no interval)"
    low, high = result["ci95"]
    return f"{result['mean']:{number_format}} [{low:{number_format}}, {high:{number_format}}]"


def arm_cell(values: np.ndarray) -> str:
    """Mean of one arm's per-member values with its t interval (``stats.mean_ci``), "–" without values."""
    summary = stats.mean_ci(values)
    if summary["n"] < ablations.MIN_PAIRS:
        return "–" if summary["n"] == 0 else f"{summary['mean']:.3f} ({summary['n']} models: no interval)"
    return chapter.interval(summary, ".3f", "models")


def comparison_table_markdown(points: Points) -> str:
    """One row per point and comparison: the two arms' mean canary memorization, their paired difference
    [95% CI], n (model pairs) and the verdict."""
    body = []
    for found in points:
        for comparison in COMPARISONS:
            result = found[comparison]
            arms = found["arms"]
            reached = result["reached"]
            body.append((found["point"].label, COMPARISON_LABELS[comparison],
                         f"{first_arm(found)}: {arm_cell(arms[0][comparison]) if reached else '–'}",
                         f"{arm_label(arms[1]['norm'])}: {arm_cell(arms[1][comparison]) if reached else '–'}",
                         interval_text(result), f"{result['n']} model pairs", result["verdict"]))
    header = ("setting", "comparison", "arm", "against", "difference [95% CI]", "n", "verdict")
    return chapter.markdown_table(header, body)


def schedule_table_markdown(points: Points) -> str:
    """What each arm's schedule gives a member: epochs, batch size, peak learning rate, SGD steps, exposures of
    each training example, learning-rate integral, final inlier fit and test accuracy (means over members),
    and the epoch where members cross the matched-fit level (mean; "not reached" if some never do)."""
    body = []
    for found in points:
        for arm in found["arms"]:
            facts = arm["schedule"]
            crossed = np.isfinite(arm["epoch_at_fit"])
            at_fit = f"{np.mean(arm['epoch_at_fit']):.1f}" if crossed.all() else \
                f"not reached ({int((~crossed).sum())} of {crossed.size})"
            body.append((found["point"].label, arm_label(arm["norm"]), facts["epochs"], facts["batch_size"],
                         f"{facts['lr']:.4g}", f"{facts['steps']:.0f}", f"{facts['exposures']:.1f}",
                         f"{facts['lr_integral']:.2f}", f"{np.mean(arm['final_fit']):.3f}",
                         f"{np.mean(arm['test']):.3f}", at_fit, f"{arm['final_fit'].size} models"))
    header = ("setting", "arm", "epochs", "batch", "peak lr", "steps", "exposures", "lr integral", "final fit",
              "test accuracy", "epoch at matched fit", "n")
    return chapter.markdown_table(header, body)


# ----------------------------------------------------------------------------- figures

def difference_figure(points: Points, xlabel: str, log_x: bool = False):
    """Paired difference (first arm - second) in canary memorization per point, with its 95% interval, one
    series per comparison; points without an estimate (matched fit not reached) are left out and marked at
    the axis with an ×."""
    fig, ax = plots.subplots(height=3.2)
    labels = [found["point"].label for found in points]
    numeric = all(label.isdigit() for label in labels)
    xs = np.array([float(label) for label in labels]) if numeric else np.arange(len(points), dtype=float)
    offsets = {"same_schedule": 0.97, "matched_fit": 1.03} if (numeric and log_x) else \
        {"same_schedule": -0.08, "matched_fit": 0.08}
    for comparison, color in zip(COMPARISONS, ("0.35", plots.NORM_COLORS["batch"]), strict=True):
        shifted = xs * offsets[comparison] if (numeric and log_x) else xs + offsets[comparison]
        means = np.array([found[comparison]["mean"] for found in points])
        lows = np.array([found[comparison]["ci95"][0] for found in points])
        highs = np.array([found[comparison]["ci95"][1] for found in points])
        shown = np.isfinite(means)
        ax.errorbar(shifted[shown], means[shown], yerr=[means[shown] - lows[shown], highs[shown] - means[shown]],
                    fmt="o", color=color, capsize=3, label=COMPARISON_LABELS[comparison])
        if (~shown).any():
            ax.plot(shifted[~shown], np.zeros((~shown).sum()), "x", color=color,
                    label=f"{COMPARISON_LABELS[comparison]}: not reached")
    ax.axhline(0.0, color="0.5", linewidth=0.8)
    ax.set(xlabel=xlabel, ylabel="difference in canary memorization")
    if numeric and log_x:
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, labels)
    elif not numeric:
        ax.set_xticks(xs, labels)
    ax.legend(fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


def norm_figure(points: Points):
    """The normalizer sweep: each normalizer's mean canary memorization (95% t interval over its models), at
    the end of the schedule and at matched fit, with no norm's as a line."""
    fig, axes = plots.subplots(1, 2, height=3.2, squeeze=False)
    for ax, comparison in zip(axes.flat, COMPARISONS, strict=True):
        norms = [found["arms"][0]["norm"] for found in points]
        summaries = [stats.mean_ci(found["arms"][0][comparison]) for found in points]
        means = np.array([s["mean"] for s in summaries])
        errors = np.array([[s["mean"] - s["ci95"][0], s["ci95"][1] - s["mean"]] for s in summaries]).T
        ax.bar(range(len(norms)), np.nan_to_num(means), yerr=np.nan_to_num(errors), capsize=3,
               color=[plots.NORM_COLORS.get(n, "0.6") for n in norms])
        reference = stats.mean_ci(points[0]["arms"][1][comparison]) if points else {"mean": float("nan")}
        if math.isfinite(reference["mean"]):
            ax.axhline(reference["mean"], color=plots.NORM_COLORS["none"], linestyle="--", linewidth=1,
                       label="no norm")
            ax.legend(fontsize=plots.MIN_FONT)
        ax.set_xticks(range(len(norms)), [arm_label(n) for n in norms], rotation=30)
        ax.set_title(f"canary memorization, {COMPARISON_LABELS[comparison]}", fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the batch-size explorer

def draw_memorization_against_fit(ax, found: dict[str, Any], fit_level: float) -> None:
    """Draw on ``ax`` (cleared first) canary memorization against inlier fit along training, one line per
    member of both arms of one point."""
    ax.clear()
    for arm in found["arms"]:
        curves = arm["curves"]
        for t in range(curves["fit"].shape[1]):
            ax.plot(curves["fit"][:, t], curves["memorization"][:, t], "-", color=plots.NORM_COLORS[arm["norm"]],
                    alpha=0.6, linewidth=0.9, label=f"{arm_label(arm['norm'])} ({curves['fit'].shape[1]} models)"
                    if t == 0 else None)
    ax.axvline(fit_level, color="0.5", linestyle=":", linewidth=0.8)
    ax.set(xlabel="inlier train accuracy (fit)", ylabel="canary memorization", xlim=(0, 1.02), ylim=(-0.2, 1.02),
           title=f"batch size {found['point'].label}")
    ax.legend(loc="upper left", fontsize=plots.MIN_FONT)


def batch_size_animation(points: Points, fit_level: float) -> str:
    """Offline HTML slider over the batch-size points (``plots.offline_jshtml``): each frame is
    :func:`draw_memorization_against_fit` at one batch size, rendered now, so it moves in a static page."""
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    fig, ax = plots.subplots(height=3.6)

    def frame(k: int) -> None:
        draw_memorization_against_fit(ax, points[k], fit_level)

    animation = FuncAnimation(fig, frame, frames=len(points))
    html = plots.offline_jshtml(animation)
    plt.close(fig)
    return html


def batch_size_png(found: dict[str, Any], fit_level: float) -> bytes:
    """:func:`draw_memorization_against_fit` of one point as PNG bytes (the figure is closed)."""
    fig, ax = plots.subplots(height=3.6)
    draw_memorization_against_fit(ax, found, fit_level)
    fig.tight_layout()
    return plots.figure_png(fig)


def batch_size_slider(points: Points, fit_level: float):
    """A live ``ipywidgets`` explorer: a batch-size slider above an Image redrawn (:func:`batch_size_png`) when
    it moves. An Image, not an Output widget: batch execution can deadlock on an Output widget."""
    import ipywidgets as widgets

    by_label = {found["point"].label: found for found in points}
    slider = widgets.SelectionSlider(options=list(by_label), description="batch size", continuous_update=False)
    picture = widgets.Image(format="png", value=batch_size_png(by_label[slider.value], fit_level))

    def redraw(change: dict[str, Any]) -> None:
        picture.value = batch_size_png(by_label[change["new"]], fit_level)

    slider.observe(redraw, "value")
    return widgets.VBox([slider, picture])


# ----------------------------------------------------------------------------- what the prose quotes

def result_sentence(result: dict[str, Any]) -> str:
    """A comparison in words: its verdict, then (where there is an estimate) the difference, its 95% interval
    and n with its unit: ``BN higher (...): +0.120 [+0.050, +0.190], n = 8 model pairs``."""
    if not math.isfinite(result["mean"]):
        return result["verdict"]
    return f"{result['verdict']}: {interval_text(result)}, n = {result['n']} model pairs"


def point_sentences(points: Points) -> str:
    """Each point's two comparisons in words, one clause per point: ``batch 32: same schedule ...; matched
    fit ...``, joined by semicolons."""
    return "; ".join(f"{SWEEP_TITLES[found['point'].sweep]} {found['point'].label}: same schedule "
                     f"{result_sentence(found['same_schedule'])}, matched fit {result_sentence(found['matched_fit'])}"
                     for found in points)


def batch_size_values(points: Points, cfg, params: ablations.ChapterParams) -> dict[str, Any]:
    """The batch-size section's glued values: the rule (``bs_rule_text``), the steps every point takes
    (``bs_steps``), the smallest and largest batch with their epochs and peak learning rates, and each
    point's comparisons in words (``bs_sentences``)."""
    smallest, largest = points[0], points[-1]
    rule = {"linear": "scaled in proportion to the batch size (the linear scaling rule)",
            "sqrt": "scaled with the square root of the batch size",
            "constant": "kept at the chapter's value"}[params.batch_lr_rule]
    return {"bs_rule_text": rule, "bs_steps": int(round(smallest["arms"][0]["schedule"]["steps"])),
            "bs_base": int(cfg.batch_size), "bs_base_epochs": int(cfg.epochs), "bs_base_lr": float(cfg.lr),
            "bs_small": smallest["point"].label, "bs_small_epochs": smallest["arms"][0]["schedule"]["epochs"],
            "bs_small_lr": smallest["arms"][0]["schedule"]["lr"],
            "bs_large": largest["point"].label, "bs_large_epochs": largest["arms"][0]["schedule"]["epochs"],
            "bs_large_lr": largest["arms"][0]["schedule"]["lr"],
            "bs_sentences": point_sentences(points)}


def group_versus_batch(points: Points, params: ablations.ChapterParams, comparison: str = "matched_fit"
                       ) -> dict[str, Any]:
    """GroupNorm against BatchNorm, paired by member (both arms of the normalizer sweep pair member t with
    the same no-norm member, so GroupNorm member t and BN member t trained on the same data): an
    ``ablations.paired_inference`` of GroupNorm - BN at ``comparison`` ("not reached" where a member of either
    never reaches the fit level)."""
    arms = {found["arms"][0]["norm"]: found["arms"][0] for found in points}
    if "group" not in arms or "batch" not in arms:
        raise ValueError("Parameter 'points' must hold the normalizer sweep with 'batch' and 'group' "
                         f"(got {sorted(arms)}).")
    pair = [arms["group"], arms["batch"]]
    missing = ablations.not_reached(pair, params.fit_level) if comparison == "matched_fit" else None
    result = ablations.paired_inference(pair[0][comparison], pair[1][comparison], ablations.equivalence_margin())
    if missing:
        return {**ablations.paired_inference([], [], ablations.equivalence_margin()), "verdict": missing}
    return result


def group_reading(group_none: dict[str, Any], group_batch: dict[str, Any]) -> str:
    """What GroupNorm's result says about the batch-coupling explanation (GroupNorm normalizes each example by
    its own statistics: no example of a batch affects another's), chosen from the two verdicts at matched
    fit: GroupNorm against no norm, and GroupNorm against BN (here "BN higher" means GroupNorm higher)."""
    words_none, words_batch = (ablations_words(r) for r in (group_none, group_batch))
    if "not reached" in (words_none, words_batch) or "inconclusive" in (words_none, words_batch):
        return ("These populations cannot say what GroupNorm's result means for the batch-coupling explanation: "
                "at matched fit the comparison is not reached or inconclusive.")
    lead = "GroupNorm, which couples no two examples of a batch,"
    above_none, above_batch = words_none == "BN higher", words_batch == "BN higher"
    below_batch = words_batch == "no-BN higher"
    if above_none and above_batch:
        return (f"{lead} memorizes the canaries more than no norm and more than BatchNorm at matched fit: "
                "normalization can raise memorization without any batch coupling, so batch coupling cannot be the "
                "whole explanation of BN's effect.")
    if above_none and below_batch:
        return (f"{lead} memorizes the canaries more than no norm but less than BatchNorm at matched fit: "
                "normalization alone accounts for part of BN's effect, and batch coupling may account for the rest.")
    if above_none:
        return (f"{lead} memorizes the canaries more than no norm at matched fit, and not detectably less than "
                "BatchNorm: what normalization does to memorization does not need batch coupling, which weakens the "
                "batch-coupling explanation of BN's effect.")
    if below_batch:
        return (f"{lead} memorizes the canaries less than BatchNorm at matched fit and not more than no norm: "
                "consistent with the batch-coupling explanation, where the coupling, not the normalization, carries "
                "BN's effect.")
    if above_batch:
        return (f"{lead} memorizes the canaries more than BatchNorm at matched fit but not more than no norm: BN "
                "itself is not above no norm here, and the batch-coupling explanation gets no support.")
    return (f"{lead} is not distinguishable from no norm at matched fit, nor from BatchNorm: these populations do "
            "not separate normalization from batch coupling.")


def ablations_words(result: dict[str, Any]) -> str:
    """The leading words of a verdict (one of ``verdict.VERDICTS``, or "not reached")."""
    text = result["verdict"]
    return next((words for words in (*verdict.VERDICTS, "not reached") if text.startswith(words)), text)


def norm_values(points: Points, params: ablations.ChapterParams) -> dict[str, Any]:
    """The normalizer section's glued values: every normalizer against no norm in words
    (``norm_sentences``), and where GroupNorm is in the sweep, GroupNorm - BN at matched fit
    (``group_batch_sentence``) and what it means (``group_reading``)."""
    values: dict[str, Any] = {"norm_sentences": "; ".join(
        f"{first_arm(found)}: same schedule {result_sentence(found['same_schedule'])}, matched fit "
        f"{result_sentence(found['matched_fit'])}" for found in points)}
    norms = [found["arms"][0]["norm"] for found in points]
    if "group" in norms and "batch" in norms:
        group_batch = group_versus_batch(points, params)
        group_none = next(found["matched_fit"] for found in points if found["arms"][0]["norm"] == "group")
        sentence = result_sentence(group_batch)
        words = ablations_words(group_batch)  # the first arm is GroupNorm, the second BatchNorm: name them
        named = {"BN higher": "GroupNorm higher", "no-BN higher": "BatchNorm higher"}.get(words, words)
        values.update(group_batch_sentence=named + sentence[len(words):],
                      group_reading=group_reading(group_none, group_batch))
    else:
        values.update(group_batch_sentence="(GroupNorm is not in this sweep)",
                      group_reading="GroupNorm is not in this run's normalizer sweep.")
    return values


# ----------------------------------------------------------------------------- summary

def summary_metrics(points: Points, params: ablations.ChapterParams) -> dict[str, dict[str, Any]]:
    """The chapter's summary: for every BN-against-no-norm point, ``ablation_canary_memorization_{point}_{comparison}``
    entries (``results.metric_entry``), each arm's mean over its models, the paired t over model pairs as
    ``difference``, ``unit`` "models", the verdict, ``family`` "secondary" (the sweeps describe; raw p-values),
    the fit level, the equivalence margin and each arm's schedule (steps, exposures per example)."""
    metrics: dict[str, dict[str, Any]] = {}
    seen = set()
    for found in points:
        point = found["point"]
        if [arm.norm for arm in point.arms] != ["batch", "none"] or point.arms in seen:
            continue  # a variant is not BN (its rows would sit under the report's BN column); a shared point once
        seen.add(point.arms)
        arms = found["arms"]
        for comparison in COMPARISONS:
            result = found[comparison]
            # not reached: no per-norm values at all, so the report keeps the verdict "not reached (...)" (the
            # book's re-annotation, verdict.book_family_holm, leaves rows without both norms as they are)
            per_arm = {arm["norm"]: stats.mean_ci(arm[comparison]) for arm in arms} if result["reached"] else {}
            where = ("at the end of its schedule" if comparison == "same_schedule" else
                     f"where each model's inlier fit first crosses {params.fit_level:g} (the headline level)")
            entry = results.metric_entry(
                per_arm, p_value=result["p_value"] if math.isfinite(result["p_value"]) else None,
                test=f"paired t over model pairs (member t of both arms: same data, keep mask and seed); TOST at "
                     f"±{ablations.equivalence_margin():g}", higher_means="more memorization",
                description=(f"Canary memorization, acc(IN canaries) - acc(OUT canaries) per model, {point.sweep} "
                             f"point {point.label}, {where}; n counts model pairs."),
                comparison=comparison, unit="models", verdict=result["verdict"],
                detectable_difference=result["detectable_difference"], p_value_holm=None,
                difference={"mean": result["mean"], "ci95": result["ci95"], "n": result["n"], "se": result["se"],
                            "df": result["df"], "unit": "models"},
                reached={arm["norm"]: int(np.isfinite(arm[comparison]).sum()) for arm in arms},
                family="secondary", fit_level=None if comparison == "same_schedule" else params.fit_level,
                equivalence_margin=ablations.equivalence_margin(), p_equivalence=result["p_equivalence"],
                steps={arm["norm"]: arm["schedule"]["steps"] for arm in arms},
                exposures={arm["norm"]: arm["schedule"]["exposures"] for arm in arms})
            metrics[f"ablation_canary_memorization_{point.name}_{comparison}"] = entry
    return metrics


# ----------------------------------------------------------------------------- sweeps a profile may not run

SWEEP_TITLES = {"batch_size": "batch size", "norm": "normalizer", "length": "training length",
                "lr": "peak learning rate", "arch": "architecture", "canary_rate": "canary rate"}


def sweeps_text(params: ablations.ChapterParams) -> str:
    """The sweeps this run makes, in words: ``batch size and normalizer``."""
    names = [SWEEP_TITLES[name] for name in ablations.SWEEPS if name in params.sweeps]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def sweep_markdown(points: Points, name: str) -> str:
    """A sweep's comparison table and its points in words, or, where the run did not make it, how to make it."""
    if not points:
        return (f"*The {SWEEP_TITLES[name]} sweep does not run at this profile; it runs at `paper`, or with "
                f"`-p sweeps ...,{name}`.*")
    return (comparison_table_markdown(points) + "\n\n" + schedule_table_markdown(points) + "\n\nIn words: "
            + point_sentences(points) + ".")


def verdict_names() -> str:
    """The five verdicts as the page names them: ``*BN higher*, *no-BN higher*, ... or *inconclusive*``."""
    names = [f"*{words}*" for words in verdict.VERDICTS]
    names[2] = "*equivalent within ±m*"
    names[3] = "*no difference detected (could detect ≥ X)*"
    return ", ".join(names[:-1]) + " or " + names[-1]
