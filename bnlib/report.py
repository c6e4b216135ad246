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
