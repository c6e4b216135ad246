"""The headline table: BN vs no-BN for each measured effect, read from the chapters' cached summaries.

JSON shape (stable; one entry per metric, metric names unique across chapters)::

    {"<metric>": {"chapter": str, "description": str, "comparison": "same_schedule" | "matched_fit",
                  "higher_means": str, "test": str, "p_value": float | null,
                  "batch": {"mean": float, "ci95": [lo, hi], "n": int}, "none": {...}, ...}, ...}
"""

from __future__ import annotations

import json
import math
from typing import Any

from . import results
from .config import NORMS


def headline(summaries: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Merge the metrics of every chapter summary into one dict (metric -> entry with its chapter)."""
    summaries = results.read_summaries() if summaries is None else summaries
    table: dict[str, dict[str, Any]] = {}
    for chapter, summary in summaries.items():
        for metric, entry in summary["metrics"].items():
            table[metric] = {"chapter": chapter, "profile": summary["config"].get("profile"), **entry}
    return table


def _cell(stat: dict[str, Any] | None) -> str:
    if not stat or stat.get("mean") is None or math.isnan(stat["mean"]):
        return "–"
    low, high = stat["ci95"]
    return f"{stat['mean']:.3f} [{low:.3f}, {high:.3f}] (n={stat['n']})"


def rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Table rows: metric, comparison, one column per norm present, p-value, what higher means."""
    norms = [n for n in NORMS if any(n in e for e in table.values())]
    header = ["metric", "comparison", *norms, "p (BN vs none)", "higher means"]
    body = []
    for metric, entry in table.items():
        p = entry.get("p_value")
        p_text = "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"
        body.append([metric, entry.get("comparison", ""), *[_cell(entry.get(n)) for n in norms], p_text,
                     entry.get("higher_means", "")])
    return [header, *body]


def markdown(table: dict[str, dict[str, Any]]) -> str:
    """The headline table as a Markdown table (used by the landing page)."""
    all_rows = rows(table)
    if len(all_rows) == 1:
        return "*No chapter results yet: run `make book`.*"
    lines = ["| " + " | ".join(all_rows[0]) + " |", "|" + "---|" * len(all_rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in all_rows[1:]]
    return "\n".join(lines)


def text(table: dict[str, dict[str, Any]]) -> str:
    """The headline table as aligned plain text (for the terminal)."""
    all_rows = rows(table)
    if len(all_rows) == 1:
        return f"No chapter results in {results.cache_root()}; run `make book` first."
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in all_rows)


def as_json(table: dict[str, dict[str, Any]]) -> str:
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(table), indent=2, sort_keys=True)


# ----------------------------------------------------------------------------- by effect (the landing page)

COMPARISONS = ("same_schedule", "matched_fit")


def effect_name(metric: str, entry: dict[str, Any]) -> str:
    """The effect a metric measures: its name without the ``_<comparison>`` suffix
    (``canary_memorization_matched_fit`` -> ``canary_memorization``)."""
    suffix = f"_{entry.get('comparison', '')}"
    return metric[: -len(suffix)] if suffix != "_" and metric.endswith(suffix) else metric


def effects(table: dict[str, dict[str, Any]], chapters: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Group the headline table by effect: effect -> comparison -> metric entry (plus its ``metric`` name).

    Args:
        table: as returned by ``headline()``.
        chapters: chapter names in reading order; effects are ordered by their chapter's place in it
            (chapters not listed come last), then by their order in ``table``.
    Returns:
        ``{effect: {"same_schedule": {...entry, "metric": name}, "matched_fit": {...}}}``, comparisons in the
        order of ``COMPARISONS`` (others after them).
    """
    order = {name: i for i, name in enumerate(chapters or [])}
    grouped: dict[str, dict[str, Any]] = {}
    for metric, entry in sorted(table.items(), key=lambda item: order.get(item[1].get("chapter"), len(order))):
        grouped.setdefault(effect_name(metric, entry), {})[entry.get("comparison", "")] = {**entry, "metric": metric}
    rank = {c: i for i, c in enumerate(COMPARISONS)}
    return {effect: dict(sorted(by_comparison.items(), key=lambda item: (rank.get(item[0], len(rank)), item[0])))
            for effect, by_comparison in grouped.items()}


def _versus(entry: dict[str, Any] | None) -> str:
    """One cell: BN and no-norm means with CIs, then their difference and the p-value (HTML line breaks)."""
    if not entry or "batch" not in entry or "none" not in entry:
        return "–"
    batch, none = entry["batch"], entry["none"]
    lines = [f"BN {_cell(batch)}", f"none {_cell(none)}"]
    if batch.get("mean") is not None and none.get("mean") is not None:
        p = entry.get("p_value")
        p_text = "" if p is None or math.isnan(p) else f", p = {p:.2g}"
        lines.append(f"Δ = {batch['mean'] - none['mean']:+.3f}{p_text}")
    return "<br>".join(lines)


def effects_markdown(table: dict[str, dict[str, Any]], chapters: list[str] | None = None,
                     links: dict[str, str] | None = None) -> str:
    """The headline table with one row per effect and one column per comparison (BN vs no norm).

    Args:
        table: as returned by ``headline()``.
        chapters: chapter names in reading order (see ``effects``).
        links: chapter name -> document path (``chapters/memorization``); the effects of a chapter listed
            here link to it with a MyST ``{doc}`` role.
    Returns:
        MyST Markdown (cells hold ``<br>`` line breaks).
    """
    grouped = effects(table, chapters)
    if not grouped:
        return "*No chapter results yet: run `make book`.*"
    present = {c for by_comparison in grouped.values() for c in by_comparison}
    columns = [*COMPARISONS, *sorted(present - set(COMPARISONS))]
    lines = ["| effect | higher means | " + " | ".join(c.replace("_", " ") or "–" for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for effect, by_comparison in grouped.items():
        first = next(iter(by_comparison.values()))
        chapter, label = first.get("chapter", ""), effect.replace("_", " ")
        if links and chapter in links:
            label = f"{{doc}}`{label} </{links[chapter]}>`"
        cells = [_versus(by_comparison.get(c)) for c in columns]
        lines.append(f"| {label} | {first.get('higher_means', '')} | {' | '.join(cells)} |")
    return "\n".join(lines)
