"""The headline results: BN vs no-BN for each measured effect, read from the chapters' summaries of one
result set (see ``results.read_summaries``), for the terminal, the landing page and "All measurements".

JSON shape (stable; one entry per metric, metric names unique across chapters)::

    {"<metric>": {"chapter": str, "result_set": str, "profile": str, "description": str,
                  "comparison": "same_schedule" | "matched_fit", "higher_means": str, "test": str,
                  "p_value": float | null, "unit": str (what n counts; optional),
                  "batch": {"mean": float, "ci95": [lo, hi], "n": int}, "none": {...}, ...}, ...}

How numbers are shown (the rules a referee would check):
- A ratio (metric name containing ``ratio``) lives on a log scale: BN and no-BN are compared as BN / no-BN,
  and every interval of a ratio is positive.
- A bounded score (memorization in [-1, 1]; accuracy, AUC, TPR in [0, 1]) has its interval clipped to
  its range, and the clipping is said.
- With fewer than ``MIN_REPLICATES`` replicates no interval is drawn or printed: the page says "2 seeds".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as scipy_stats

from . import config, results
from . import verdict as verdict_lib
from .config import COMPARISONS, NORMS

MIN_REPLICATES = 3  # below this, an interval from the replicates is not shown
ALPHA = 0.05
FOREST_CHAPTERS = ("memorization", "influence", "membership_inference")  # the privacy effects, reading order
VERDICT_COLORS = {"BN higher": "#d62728", "no-BN higher": "#1f77b4", "no difference detected": "#555555",
                  "inconclusive": "#bbbbbb"}


def headline(summaries: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """Merge the metrics of every chapter summary of one set into one dict (metric -> entry with its
    chapter, profile and result set), re-annotated as one book: Holm over the primary endpoints of every
    chapter, verdicts at the book family's alpha (``verdict.book_family_holm``)."""
    summaries = results.read_summaries() if summaries is None else summaries
    table: dict[str, dict[str, Any]] = {}
    for chapter, summary in summaries.items():
        for metric, entry in summary["metrics"].items():
            table[metric] = {"chapter": chapter, "profile": summary["config"].get("profile"),
                             "result_set": summary.get("result_set", "?"), **entry}
    return verdict_lib.book_family_holm(table)


# ----------------------------------------------------------------------------- what a number means

def is_ratio(metric: str) -> bool:
    return "ratio" in metric


def bounds(metric: str, entry: dict[str, Any]) -> tuple[float, float]:
    """The range a metric's values can take: ``entry["bounds"]`` if stored, else from its name."""
    if entry.get("bounds"):
        low, high = entry["bounds"]
        return float(low), float(high)
    if is_ratio(metric):
        return 0.0, math.inf
    if "memorization" in metric:
        return -1.0, 1.0
    if any(word in metric for word in ("accuracy", "auc", "tpr")):
        return 0.0, 1.0
    return -math.inf, math.inf


def count_text(n: int, entry: dict[str, Any], short: bool = False) -> str:
    """``n`` with what it counts: "16 models"; where no unit is stored, "n = 16 (see description)", or
    "n = 16" if ``short``."""
    unit = entry.get("unit")
    if unit:
        return f"{n} {unit[:-1] if n == 1 and unit.endswith('s') else unit}"
    return f"n = {n}" if short else f"n = {n} (see description)"


def _valid(stat: dict[str, Any] | None) -> bool:
    return bool(stat) and stat.get("mean") is not None and not math.isnan(stat["mean"])


def _standard_error(stat: dict[str, Any]) -> float:
    """Standard error behind a stored Student-t 95% interval (``stats.mean_ci``)."""
    low, high = stat["ci95"]
    return (high - low) / 2 / scipy_stats.t.ppf(0.975, stat["n"] - 1)


@dataclass
class Shown:
    """One value as the pages show it: a mean and (only with enough replicates) its interval."""

    mean: float
    low: float | None
    high: float | None
    n: int
    note: str = ""  # e.g. "clipped to [-1, 1]" or "2 seeds: no interval"


def shown_value(metric: str, entry: dict[str, Any], norm: str) -> Shown | None:
    """A norm's value of a metric, interval clipped to the metric's range or dropped below 3 replicates."""
    stat = entry.get(norm)
    if not _valid(stat):
        return None
    mean, n = float(stat["mean"]), int(stat.get("n", 0))
    if n < MIN_REPLICATES:
        return Shown(mean, None, None, n, f"{count_text(n, entry)}: no interval")
    low, high = (float(v) for v in stat["ci95"])
    floor, ceiling = bounds(metric, entry)
    if is_ratio(metric) and low <= 0 < mean and entry.get("scale") != "log":
        # an arithmetic t interval of a ratio reaching below 0: redraw it on the log scale (delta method)
        spread = scipy_stats.t.ppf(0.975, n - 1) * _standard_error(stat) / mean
        return Shown(mean, mean * math.exp(-spread), mean * math.exp(spread), n, "interval on the log scale")
    if low < floor or high > ceiling:
        return Shown(mean, max(low, floor), min(high, ceiling), n, f"interval clipped to [{floor:g}, {ceiling:g}]")
    return Shown(mean, low, high, n)


@dataclass
class Difference:
    """BN against no-BN: ``mean`` is BN - no-BN, or BN / no-BN for a ratio (``scale == "log"``)."""

    mean: float
    low: float | None
    high: float | None
    scale: str  # "linear" | "log"
    n_text: str  # e.g. "16 models per norm"
    note: str = ""


def difference(metric: str, entry: dict[str, Any]) -> Difference | None:
    """The BN vs no-BN difference with its 95% interval.

    Uses ``entry["difference"]`` (``{"mean", "ci95", "n"}``, from the chapter's own paired test) where
    stored. FALLBACK otherwise: an unpaired Welch interval rebuilt from the two stored t intervals (on the
    log scale for a ratio, by the delta method); it ignores any pairing, so it is wider than a paired
    one would be. No interval with fewer than ``MIN_REPLICATES`` replicates per norm.
    """
    batch, none = entry.get("batch"), entry.get("none")
    if not (_valid(batch) and _valid(none)):
        return None
    log = is_ratio(metric)
    if log and (batch["mean"] <= 0 or none["mean"] <= 0):
        return None
    n = min(int(batch.get("n", 0)), int(none.get("n", 0)))
    n_text = f"{count_text(n, entry, short=True)} per norm"
    if entry.get("difference"):
        stored = entry["difference"]
        low, high = stored.get("ci95", [None, None])
        if int(stored.get("n", n)) < MIN_REPLICATES:
            low = high = None
        return Difference(float(stored["mean"]), low, high, "log" if log else "linear", n_text)
    center = batch["mean"] / none["mean"] if log else batch["mean"] - none["mean"]
    scale = "log" if log else "linear"
    if n < MIN_REPLICATES:
        return Difference(center, None, None, scale, n_text, f"{count_text(n, entry, short=True)}: no interval")
    se_b, se_n = _standard_error(batch), _standard_error(none)
    if log:
        se_b, se_n = se_b / batch["mean"], se_n / none["mean"]
    se = math.hypot(se_b, se_n)
    if se == 0:
        return Difference(center, center, center, "log" if log else "linear", n_text)
    df = se**4 / (se_b**4 / (batch["n"] - 1) + se_n**4 / (none["n"] - 1))  # Welch-Satterthwaite
    spread = scipy_stats.t.ppf(0.975, df) * se
    note = "unpaired interval from the two summaries"
    if log:
        return Difference(center, center * math.exp(-spread), center * math.exp(spread), "log", n_text, note)
    return Difference(center, center - spread, center + spread, "linear", n_text, note)


def provisional_verdict(metric: str, entry: dict[str, Any]) -> str:
    """FALLBACK verdict for an entry that carries no ``verdict`` (until every chapter stores one):
    "inconclusive" without a test or with fewer than 3 replicates per norm; else "BN higher" / "no-BN
    higher" when the (Holm-adjusted, if stored) p-value is below 0.05, by the sign of the difference;
    else "no difference detected"."""
    p = entry.get("p_value_holm", entry.get("p_value"))
    shown = difference(metric, entry)
    counts = [int((entry.get(norm) or {}).get("n", 0)) for norm in config.COMPARED_NORMS]
    if p is None or math.isnan(p) or shown is None or min(counts) < MIN_REPLICATES:
        return "inconclusive"
    if p >= ALPHA:
        return "no difference detected"
    above = shown.mean > (1.0 if shown.scale == "log" else 0.0)
    return "BN higher" if above else "no-BN higher"


def verdict(metric: str, entry: dict[str, Any]) -> str:
    """The entry's stored verdict, else the provisional one (``provisional_verdict``)."""
    return entry.get("verdict") or provisional_verdict(metric, entry)


def verdict_color(text: str) -> str:
    return next((color for start, color in VERDICT_COLORS.items() if text.startswith(start)), "#bbbbbb")


# ----------------------------------------------------------------------------- effects (the landing page)

def effect_name(metric: str, entry: dict[str, Any]) -> str:
    """The effect a metric measures: its name without the ``_<comparison>`` suffix
    (``canary_memorization_matched_fit`` -> ``canary_memorization``)."""
    suffix = f"_{entry.get('comparison', '')}"
    return metric[: -len(suffix)] if suffix != "_" and metric.endswith(suffix) else metric


def _outliers_first(effect: str) -> int:
    return 0 if any(word in effect for word in ("canary", "outlier")) else 1


@dataclass
class ForestRow:
    """One row of the forest plot: an effect under one comparison."""

    metric: str
    effect: str
    comparison: str
    chapter: str
    verdict: str
    difference: Difference


def forest_rows(table: dict[str, dict[str, Any]], chapters: tuple[str, ...] = FOREST_CHAPTERS) -> list[ForestRow]:
    """The privacy effects (metrics of ``chapters``) with a BN and a no-BN value, grouped by comparison
    (same schedule first), then in chapter order, outlier effects before inlier ones."""
    order = {name: i for i, name in enumerate(chapters)}
    rank = {c: i for i, c in enumerate(COMPARISONS)}
    rows = []
    for position, (metric, entry) in enumerate(table.items()):
        if entry.get("chapter") not in order:
            continue
        if entry.get("comparison") and not metric.endswith(f"_{entry['comparison']}"):
            continue  # a reading beyond the comparison's headline (a level of the fit grid: ``_matched_fit_0p80``)
        shown = difference(metric, entry)
        if shown is None:
            continue
        effect = effect_name(metric, entry)
        key = (rank.get(entry.get("comparison"), len(rank)), order[entry["chapter"]], _outliers_first(effect), position)
        rows.append((key, ForestRow(metric, effect, entry.get("comparison", ""), entry["chapter"],
                                    verdict(metric, entry), shown)))
    return [row for _, row in sorted(rows, key=lambda item: item[0])]


def _number(value: float, scale: str = "linear") -> str:
    return f"×{value:.3g}" if scale == "log" else f"{value:+.3f}"


def _difference_text(shown: Difference) -> str:
    center = f"BN / no-BN = {shown.mean:.3g}" if shown.scale == "log" else f"Δ = {shown.mean:+.3f}"
    if shown.low is None:
        return f"{center}, {shown.n_text}"
    low, high = (f"{v:.3g}" if shown.scale == "log" else f"{v:+.3f}" for v in (shown.low, shown.high))
    return f"{center} [{low}, {high}]"


COMPARISON_LEADS = {
    "same_schedule": "After the same training schedule",
    "matched_fit": "At matched fit on one schedule (each model read where it crosses the declared headline fit level)",
    "equal_exposure": "With equal exposure (the same steps on the same data; BN's learning rate lowered to end at the "
                      "same fit)",
}


def findings(table: dict[str, dict[str, Any]]) -> str:
    """The "What we found" text: for each comparison, one line per verdict naming the privacy effects it
    covers, each with the difference behind the word; then where the numbers come from. Markdown."""
    rows = forest_rows(table)
    if not rows:
        return "*No chapter has stored results for this set yet: run `make book`.*"
    lines = []
    for comparison in [c for c in COMPARISONS if any(r.comparison == c for r in rows)]:
        by_verdict: dict[str, list[str]] = {}
        for row in (r for r in rows if r.comparison == comparison):
            word = verdict_lib.leading_words(row.verdict)
            effect = row.effect.replace("_", " ")
            by_verdict.setdefault(word, []).append(f"{effect} ({_difference_text(row.difference)})")
        lead = COMPARISON_LEADS.get(comparison, comparison.replace("_", " "))
        lines.append(f"{lead}, the verdict is:\n")
        lines += [f"- **{word}** for {_join(items)};" for word, items in by_verdict.items()]
        lines[-1] = lines[-1][:-1] + "."
        lines.append("")
    profiles = sorted({str(e.get("profile")) for e in table.values()})
    sets = sorted({str(e.get("result_set")) for e in table.values()})
    closing = (f"Δ is BN − no-BN, and BN / no-BN for ratios; intervals are 95%. These numbers come from the "
               f"result set {', '.join(f'`{s}`' for s in sets)} (profile {', '.join(f'`{p}`' for p in profiles)}).")
    if "smoke" in profiles:
        closing += (" The `smoke` profile runs tiny models to check the machinery: its numbers are evidence of "
                    "nothing; build the book at `quick` (the default) or `paper`.")
    return "\n".join([*lines, closing])


def _join(items: list[str], separator: str = ", ") -> str:
    if len(items) <= 1:
        return "".join(items)
    last = " and " if separator == ", " else f"{separator}and "
    return separator.join(items[:-1]) + last + items[-1]


# ----------------------------------------------------------------------------- every measurement (tables)

MEASUREMENT_COLUMNS = ("metric", "comparison", "BN", "no-BN", "difference", "95% interval", "n", "test", "p",
                       "verdict", "set")


def _value_text(metric: str, entry: dict[str, Any], norm: str) -> str:
    shown = shown_value(metric, entry, norm)
    if shown is None:
        return "–"
    if shown.low is None:
        return f"{shown.mean:.3f}"
    text = f"{shown.mean:.3f} [{shown.low:.3f}, {shown.high:.3f}]"
    return f"{text} ({shown.note})" if shown.note else text


def measurement_rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per metric × comparison (the header first), columns ``MEASUREMENT_COLUMNS``."""
    body = []
    for metric, entry in table.items():
        shown = difference(metric, entry)
        if shown is None:
            change, interval = "–", "–"
        else:
            change = ("×" if shown.scale == "log" else "") + (
                f"{shown.mean:.3g}" if shown.scale == "log" else f"{shown.mean:+.3f}")
            interval = "none (fewer than 3)" if shown.low is None else (
                f"[{_number(shown.low, shown.scale)}, {_number(shown.high, shown.scale)}]")
            if shown.note and shown.low is not None:
                interval += f" ({shown.note})"
        counts = [int((entry.get(n) or {}).get("n", 0)) for n in config.COMPARED_NORMS]
        p = entry.get("p_value_holm", entry.get("p_value"))
        p_text = "–" if p is None or math.isnan(p) else f"{p:.2g}" + (" (Holm)" if "p_value_holm" in entry else "")
        n_text = count_text(counts[0], entry) if counts[0] == counts[1] else \
            " / ".join(count_text(n, entry) for n in counts)
        body.append([metric, entry.get("comparison", "").replace("_", " "), _value_text(metric, entry, "batch"),
                     _value_text(metric, entry, "none"), change, interval, n_text,
                     entry.get("test", ""), p_text, verdict(metric, entry), str(entry.get("result_set", ""))])
    return [list(MEASUREMENT_COLUMNS), *body]


def rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Terminal rows: metric, comparison, one column per norm present (mean [interval] (n)), p, verdict, set."""
    norms = [n for n in NORMS if any(n in e for e in table.values())]
    header = ["metric", "comparison", *norms, "p (BN vs none)", "verdict", "set"]
    body = []
    for metric, entry in table.items():
        cells = []
        for norm in norms:
            shown = shown_value(metric, entry, norm)
            cells.append("–" if shown is None else _value_text(metric, entry, norm)
                         + f" ({count_text(shown.n, entry) if entry.get('unit') else f'n={shown.n}'})")
        p = entry.get("p_value")
        p_text = "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2g}"
        body.append([metric, entry.get("comparison", ""), *cells, p_text, verdict(metric, entry),
                     str(entry.get("result_set", ""))])
    return [header, *body]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def measurements_markdown(table: dict[str, dict[str, Any]], links: dict[str, str] | None = None) -> str:
    """The "All measurements" table (MyST Markdown); ``links``: chapter -> document, for ``{doc}`` links.
    When every row comes from one result set, the set is said once above the table instead of in a column."""
    all_rows = measurement_rows(table)
    if len(all_rows) == 1:
        return "*No chapter results yet: run `make book`.*"
    sets = sorted({row[-1] for row in all_rows[1:]})
    keep = len(all_rows[0]) if len(sets) > 1 else len(all_rows[0]) - 1
    lead = [f"All rows come from the result set `{sets[0]}`.", ""] if len(sets) == 1 else []
    lines = [*lead, "| " + " | ".join(all_rows[0][:keep]) + " |", "|" + "---|" * keep]
    for metric, row in zip(table, all_rows[1:], strict=True):
        chapter = table[metric].get("chapter")
        label = f"`{metric}`"
        if links and chapter in links:
            label = f"{{doc}}`{metric.replace('_', ' ')} </{links[chapter]}>`"
        lines.append("| " + " | ".join([label, *(_escape(c) for c in row[1:keep])]) + " |")
    return "\n".join(lines)


def text(table: dict[str, dict[str, Any]], result_set: str | None = None) -> str:
    """The headline table as aligned plain text (for the terminal), headed by the set it comes from."""
    where = f"result set {result_set!r}" if result_set else "the newest result set"
    all_rows = rows(table)
    if len(all_rows) == 1:
        others = ", ".join(results.result_sets()) or "none"
        return (f"No chapter results for {where} in {results.cache_root()}; run `make book` first "
                f"(sets present: {others}).")
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(all_rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows]
    return "\n".join([f"Headline metrics from {where} (BN = batch, no-BN = none):", *lines])


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


def forest_json(table: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The forest plot's data (one dict per row), for the landing page's download."""
    return [{**{k: v for k, v in asdict(row).items() if k != "difference"}, **asdict(row.difference)}
            for row in forest_rows(table)]
