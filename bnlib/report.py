"""The headline results: BN vs no-BN for each measured effect, read from the chapters' summaries of one
result set (see ``results.read_summaries``), for the terminal, the landing page and "All measurements".

JSON shape (stable; one entry per metric, metric names unique across chapters)::

    {"<metric>": {"chapter": str, "result_set": str, "profile": str, "description": str,
                  "comparison": str, "higher_means": str, "test": str,
                  "p_value": float | null, "p_value_holm": float | null, "unit": str (what n counts; optional),
                  "batch": {"mean": float, "ci95": [lo, hi], "n": int}, "none": {...},
                  "name": str, "meaning": str, "measured_in": str, "direction": str,
                  "family": "primary" | "secondary", ...}, ...}

The reader's names, meanings, units, directions and families come from ``bnlib.metric_registry``; every page
shows a metric by its name, with its key beside it only as a monospace identifier. The landing page answers the
paper's three claims with their primary endpoints (``claim_paragraphs``, ``claims_table_markdown``,
``forest_rows``); "All measurements" lists everything, grouped by chapter, primary first.

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
import re
from dataclasses import asdict, dataclass
from typing import Any

from scipy import stats as scipy_stats

from . import config, metric_registry, results
from . import verdict as verdict_lib
from .config import NORMS

MIN_REPLICATES = 3  # below this, an interval from the replicates is not shown
ALPHA = 0.05
VERDICT_COLORS = {"BN higher": "#d62728", "no-BN higher": "#1f77b4", "equivalent": "#2ca02c",
                  "no difference detected": "#555555", "inconclusive": "#bbbbbb"}


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
    raw, holm = p_values(entry)
    p = holm if holm is not None else raw
    shown = difference(metric, entry)
    counts = [int((entry.get(norm) or {}).get("n", 0)) for norm in config.COMPARED_NORMS]
    if p is None or shown is None or min(counts) < MIN_REPLICATES:
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


# ----------------------------------------------------------------------------- the claims (the landing page)

def p_values(entry: dict[str, Any]) -> tuple[float | None, float | None]:
    """(raw p, Holm-adjusted p) of an entry, each None where absent or not a number. (``entry.get("p_value_holm",
    entry.get("p_value"))`` would return the stored None of a metric outside a Holm family, not its raw p.)"""
    def finite(value: Any) -> float | None:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)

    return finite(entry.get("p_value")), finite(entry.get("p_value_holm"))


_FIT_LEVEL = re.compile(r"(?:crosses|reaches|same fit \()\s*(\d\.\d+)")
_EPOCHS = re.compile(r"common (\d+)-epoch schedule")


def fit_level(metric: str, entry: dict[str, Any]) -> float | None:
    """The inlier fit a matched-fit reading is taken at: the entry's ``fit_level``, else the key's ``_0pNN`` grid
    level, else the level its description states; None for other comparisons."""
    if entry.get("fit_level") is not None:
        return float(entry["fit_level"])
    _, comparison, level = metric_registry.split_key(metric)
    if level is not None:
        return level
    if comparison not in ("matched_fit", "matched_fit_annealed"):
        return None
    found = _FIT_LEVEL.search(str(entry.get("description", "")))
    return float(found.group(1)) if found else None


def schedule_text(table: dict[str, dict[str, Any]]) -> str:
    """"the common 12-epoch schedule", from the stored descriptions (or "the common schedule")."""
    for entry in table.values():
        found = _EPOCHS.search(str(entry.get("description", "")))
        if found:
            return f"the common {found.group(1)}-epoch schedule"
    return "the common schedule"


def _arms(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if isinstance(value, dict) and all(n in value for n in config.COMPARED_NORMS):
        return f"{key} BN {value['batch']:g}, no-BN {value['none']:g}"
    return ""


def comparison_phrase(metric: str, entry: dict[str, Any], table: dict[str, dict[str, Any]]) -> str:
    """How a comparison was read, in words: "at matched fit (inlier training accuracy 0.785, each model read
    where it crosses it on the common 12-epoch schedule)"."""
    comparison = entry.get("comparison") or metric_registry.split_key(metric)[1]
    level = fit_level(metric, entry)
    arms = "; ".join(t for t in (_arms(entry, "steps"), _arms(entry, "exposures")) if t)
    if comparison == "matched_fit":
        where = f"crosses {level:.3g}" if level is not None else "crosses a common level"
        return f"at matched fit (each model read where its inlier training accuracy {where}, on {schedule_text(table)})"
    if comparison == "equal_exposure":
        return ("under equal exposure (the same steps on the same data; BN's learning rate lowered so that it ends "
                f"at no-BN's fit{'; ' + arms if arms else ''})")
    if comparison == "matched_fit_annealed":
        where = f" {level:.3g}" if level is not None else ""
        return f"at the end of annealed schedules that both end at the same fit{where}"
    if comparison == "same_schedule":
        return schedule_text(table).replace("the common", "after the same")
    return metric_registry.COMPARISON_WORDS.get(comparison, str(comparison).replace("_", " "))


def verdict_phrase(text: str) -> str:
    """The verdict's words for the pages: "BN higher" / "no-BN higher" alone (the numbers follow), the others
    with what qualifies them ("no difference detected (could detect ≥ 0.05)", "equivalent within ±0.08")."""
    words = verdict_lib.leading_words(text)
    return words if words in ("BN higher", "no-BN higher") else text


def evidence_text(metric: str, entry: dict[str, Any]) -> str:
    """The numbers behind a verdict: Δ (or BN / no-BN) with its 95% interval, n with its unit, and p."""
    shown = difference(metric, entry)
    raw, holm = p_values(entry)
    p_text = f"Holm p = {holm:.2g}" if holm is not None else (f"p = {raw:.2g}" if raw is not None else "no test")
    p_text = p_text.replace(" = 1", " = 1.0") if p_text.endswith(" = 1") else p_text
    if shown is None:
        return "no value for both norms"
    center = f"BN / no-BN = {shown.mean:.3g}" if shown.scale == "log" else f"Δ = {shown.mean:+.3f}"
    if shown.low is None:
        return f"{center}, no interval ({shown.n_text}), {p_text}"
    low, high = (f"{v:.3g}" if shown.scale == "log" else f"{v:+.3f}" for v in (shown.low, shown.high))
    return f"{center} [{low}, {high}], {shown.n_text}, {p_text}"


def _headline_level(metric: str) -> bool:
    return metric_registry.split_key(metric)[2] is None


def claim_metrics(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, str]]:
    """claim -> comparison -> the primary endpoint's metric key (headline fit level only; the first of
    ``config.PRIMARY_ENDPOINTS`` where a claim has several), comparisons in reading order."""
    order = {base: i for i, base in enumerate(config.PRIMARY_ENDPOINTS)}
    found: dict[str, dict[str, tuple[int, str]]] = {}
    for metric, entry in table.items():
        try:
            info = metric_registry.describe(metric)
        except KeyError:
            continue
        if info.claim is None or info.comparison is None or not _headline_level(metric):
            continue
        if metric_registry.family(metric, entry) != "primary":
            continue
        rank = order.get(info.base, len(order))
        here = found.setdefault(info.claim, {})
        if info.comparison not in here or rank < here[info.comparison][0]:
            here[info.comparison] = (rank, metric)
    return {claim: {c: found[claim][c][1] for c in metric_registry.COMPARISON_WORDS if c in found[claim]}
            for claim in metric_registry.CLAIMS if claim in found}


def comparisons_shown(cells: dict[str, dict[str, str]]) -> list[str]:
    """The comparisons any claim has a primary endpoint in, in reading order."""
    return [c for c in metric_registry.COMPARISON_WORDS if any(c in per for per in cells.values())]


def claim_paragraphs(table: dict[str, dict[str, Any]]) -> str:
    """"What we found": per claim of the paper, what it claims and what we measured in each comparison (the
    verdict, the difference with its interval, n with its unit, p); then what the numbers are and where they
    come from. Markdown; metric keys appear only in monospace beside their names."""
    cells = claim_metrics(table)
    if not cells:
        return "*No chapter has stored results for this set yet: run `make book`.*"
    paragraphs = []
    for claim, (title, claimed) in metric_registry.CLAIMS.items():
        if claim not in cells:
            paragraphs.append(f"**{title}.** The paper claims that {claimed}. Not measured in this result set.")
            continue
        bases = dict.fromkeys(metric_registry.split_key(m)[0] for m in cells[claim].values())
        measured = " and ".join(f"{metric_registry.name(b)} (`{b}`)" for b in bases)
        readings = []
        for metric in cells[claim].values():
            entry = table[metric]
            phrase = comparison_phrase(metric, entry, table)
            readings.append(f"{phrase[0].upper()}{phrase[1:]}: **{verdict_phrase(verdict(metric, entry))}**, "
                            f"{evidence_text(metric, entry)}.")
        paragraphs.append(f"**{title}.** The paper claims that {claimed}. We measure {measured}. "
                          + " ".join(readings))
    n_primary = sum(len(per) for per in cells.values())
    profiles = sorted({str(e.get("profile")) for e in table.values()})
    sets = sorted({str(e.get("result_set")) for e in table.values()})
    closing = (f"Δ is BN − no-BN, and BN / no-BN for a ratio; intervals are 95%. The {n_primary} primary endpoints "
               "above are the book's family for the multiplicity correction (Holm p where stored, else the raw p). "
               "Every other measurement is secondary and is in "
               f"{{doc}}`all_measurements`. Result set {', '.join(f'`{s}`' for s in sets)} "
               f"(profile {', '.join(f'`{p}`' for p in profiles)}).")
    if "smoke" in profiles:
        closing += (" The `smoke` profile runs tiny models to check the machinery: its numbers are evidence of "
                    "nothing; build the book at `quick` (the default) or `paper`.")
    return "\n\n".join([*paragraphs, closing])


findings = claim_paragraphs  # the name the landing page used before the claims


def claims_table_markdown(table: dict[str, dict[str, Any]]) -> str:
    """The claims × comparisons table of the primary endpoints (MyST Markdown): each cell the verdict, the
    difference with its interval and n."""
    cells = claim_metrics(table)
    if not cells:
        return ""
    comparisons = comparisons_shown(cells)

    def heading(comparison: str) -> str:
        levels = {fit_level(m, table[m]) for per in cells.values() for c, m in per.items() if c == comparison}
        level = next(iter(levels)) if len(levels) == 1 else None
        return metric_registry.comparison_title(comparison, level if comparison == "matched_fit" else None)

    lines = ["| claim | " + " | ".join(heading(c) for c in comparisons) + " |", "|---" * (len(comparisons) + 1) + "|"]
    for claim, per in cells.items():
        bases = dict.fromkeys(metric_registry.split_key(m)[0] for m in per.values())
        row = [f"**{metric_registry.CLAIMS[claim][0]}**: " + ", ".join(
            f"{metric_registry.name(b)} `{b}`" for b in bases)]
        for comparison in comparisons:
            metric = per.get(comparison)
            if metric is None:
                row.append("–")
                continue
            entry = table[metric]
            row.append(f"**{verdict_phrase(verdict(metric, entry))}**; {evidence_text(metric, entry)}")
        lines.append("| " + " | ".join(_escape(c) for c in row) + " |")
    return "\n".join(lines)


@dataclass
class ForestRow:
    """One row of the forest plot: a claim's primary endpoint under one comparison."""

    metric: str
    effect: str  # the reader's name of the measurement
    comparison: str
    chapter: str
    verdict: str
    difference: Difference
    claim: str = ""
    fit_level: float | None = None
    margin: float | None = None  # the declared equivalence margin (a factor for a ratio)


def forest_rows(table: dict[str, dict[str, Any]]) -> list[ForestRow]:
    """The primary endpoints, one row per claim and comparison (``claim_metrics``), grouped by comparison in
    reading order, claims in the paper's order. A claim's endpoint without a value for both norms keeps its row:
    its difference is NaN, with no interval, and its ``n_text`` says how many replicates each norm has."""
    cells = claim_metrics(table)
    rows = []
    for comparison in comparisons_shown(cells):
        for claim, per in cells.items():
            metric = per.get(comparison)
            if metric is None:
                continue
            entry = table[metric]
            shown = difference(metric, entry)
            if shown is None:
                counts = [int((entry.get(n) or {}).get("n", 0)) for n in config.COMPARED_NORMS]
                shown = Difference(math.nan, None, None, "log" if is_ratio(metric) else "linear",
                                   " / ".join(count_text(n, entry, short=True) for n in counts), "no value")
            rows.append(ForestRow(metric, metric_registry.name(metric), comparison, str(entry.get("chapter", "")),
                                  verdict(metric, entry), shown, claim, fit_level(metric, entry),
                                  metric_registry.equivalence_margin(metric, entry)))
    return rows


# ----------------------------------------------------------------------------- every measurement (tables)

MEASUREMENT_COLUMNS = ("measurement", "family", "comparison", "BN", "no-BN", "difference", "95% interval", "n",
                       "test", "p", "p (Holm)", "verdict", "set")
CHAPTER_ORDER = ("data_and_models", "memorization", "influence", "membership_inference", "theory", "ablations",
                 "what_to_do", "paper_scale")


def _value_text(metric: str, entry: dict[str, Any], norm: str) -> str:
    shown = shown_value(metric, entry, norm)
    if shown is None:
        return "–"
    if shown.low is None:
        return f"{shown.mean:.3f}"
    text = f"{shown.mean:.3f} [{shown.low:.3f}, {shown.high:.3f}]"
    return f"{text} ({shown.note})" if shown.note else text


def _p_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.2g}"


def measurement_order(table: dict[str, dict[str, Any]]) -> list[str]:
    """Metric keys grouped by chapter (book order), primary endpoints first within a chapter; within that, each
    measurement where it first appears, its comparisons in reading order and its fit-grid levels rising."""
    chapter_rank = {c: i for i, c in enumerate(CHAPTER_ORDER)}
    comparison_rank = {c: i for i, c in enumerate(metric_registry.COMPARISON_WORDS)}
    first_seen: dict[str, int] = {}
    for position, metric in enumerate(table):
        first_seen.setdefault(metric_registry.split_key(metric)[0], position)

    def key(metric: str) -> tuple:
        entry = table[metric]
        base, comparison, level = metric_registry.split_key(metric)
        return (chapter_rank.get(entry.get("chapter"), len(chapter_rank)), str(entry.get("chapter")),
                metric_registry.family(metric, entry) != "primary", first_seen[base],
                comparison_rank.get(comparison, len(comparison_rank)), level or 0.0)

    return sorted(table, key=key)


def measurement_rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    """One row per metric (the header first), columns ``MEASUREMENT_COLUMNS``, in ``measurement_order``; the
    measurement is the reader's name, raw p and Holm p have a column each."""
    body = []
    for metric in measurement_order(table):
        entry = table[metric]
        shown = difference(metric, entry)
        if shown is None:
            change, interval = "–", "–"
        else:
            change = f"×{shown.mean:.3g}" if shown.scale == "log" else f"{shown.mean:+.3f}"
            interval = "none (fewer than 3)" if shown.low is None else (
                f"[{_number(shown.low, shown.scale)}, {_number(shown.high, shown.scale)}]")
            if shown.note and shown.low is not None:
                interval += f" ({shown.note})"
        counts = [int((entry.get(n) or {}).get("n", 0)) for n in config.COMPARED_NORMS]
        raw, holm = p_values(entry)
        n_text = count_text(counts[0], entry) if counts[0] == counts[1] else \
            " / ".join(count_text(n, entry) for n in counts)
        _, comparison, level = metric_registry.split_key(metric)
        body.append([metric_registry.name(metric), metric_registry.family(metric, entry),
                     metric_registry.comparison_title(comparison or entry.get("comparison"), level),
                     _value_text(metric, entry, "batch"), _value_text(metric, entry, "none"), change, interval,
                     n_text, entry.get("test", ""), _p_text(raw), _p_text(holm), verdict(metric, entry),
                     str(entry.get("result_set", ""))])
    return [list(MEASUREMENT_COLUMNS), *body]


def _number(value: float, scale: str = "linear") -> str:
    return f"×{value:.3g}" if scale == "log" else f"{value:+.3f}"


def _chapter_title(chapter: str) -> str:
    return chapter.replace("_", " ").capitalize()


def rows(table: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Terminal rows in ``measurement_order``: the measurement's name and key, comparison, one column per norm
    present (mean [interval] (n)), raw and Holm p, family, verdict, set."""
    norms = [n for n in NORMS if any(n in e for e in table.values())]
    header = ["measurement", "key", "comparison", *norms, "p", "p (Holm)", "family", "verdict", "set"]
    body = []
    for metric in measurement_order(table):
        entry = table[metric]
        cells = []
        for norm in norms:
            shown = shown_value(metric, entry, norm)
            cells.append("–" if shown is None else _value_text(metric, entry, norm)
                         + f" ({count_text(shown.n, entry) if entry.get('unit') else f'n={shown.n}'})")
        raw, holm = p_values(entry)
        _, comparison, level = metric_registry.split_key(metric)
        body.append([metric_registry.name(metric), metric,
                     metric_registry.comparison_title(comparison or entry.get("comparison"), level), *cells,
                     _p_text(raw), _p_text(holm), metric_registry.family(metric, entry), verdict(metric, entry),
                     str(entry.get("result_set", ""))])
    return [header, *body]


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def measurements_markdown(table: dict[str, dict[str, Any]], links: dict[str, str] | None = None) -> str:
    """The "All measurements" tables (MyST Markdown), one per chapter in book order, primary endpoints first and
    in bold; each measurement by its name with its key beside it in monospace. ``links``: chapter -> document,
    for ``{doc}`` links. When every row comes from one result set, the set is said once above the tables
    instead of in a column."""
    all_rows = measurement_rows(table)
    if len(all_rows) == 1:
        return "*No chapter results yet: run `make book`.*"
    sets = sorted({row[-1] for row in all_rows[1:]})
    keep = len(all_rows[0]) if len(sets) > 1 else len(all_rows[0]) - 1
    lines = [f"All rows come from the result set `{sets[0]}`." if len(sets) == 1 else
             "The set column names the result set of each row."]
    chapter = None
    for metric, row in zip(measurement_order(table), all_rows[1:], strict=True):
        here = str(table[metric].get("chapter"))
        if here != chapter:
            chapter = here
            title = f"{{doc}}`{_chapter_title(here)} </{links[here]}>`" if links and here in links else \
                _chapter_title(here)
            lines += ["", f"**{title}**", "", "| " + " | ".join(all_rows[0][:keep]) + " |", "|" + "---|" * keep]
        name = f"**{row[0]}**" if row[1] == "primary" else row[0]
        lines.append("| " + " | ".join([f"{_escape(name)} `{metric}`", *(_escape(c) for c in row[1:keep])]) + " |")
    return "\n".join(lines)


def chapter_metrics_markdown(metrics: dict[str, dict[str, Any]]) -> str:
    """A chapter's annotated metrics (``verdict.annotate`` entries) as a Markdown table, each by its name with
    its key in monospace: comparison, BN, no-BN, difference [95% interval], detectable difference, raw p, Holm p,
    n with its unit, family and verdict (``verdict.table`` with the reader's names)."""
    lines = ["| measurement | comparison | BN | no norm | BN − no norm [95% CI] | detectable | p | p (Holm) | n | "
             "family | verdict |", "|---" * 11 + "|"]
    for metric, entry in metrics.items():
        stored = entry.get("difference", {})
        mean = stored.get("mean", entry["batch"]["mean"] - entry["none"]["mean"])
        low, high = stored.get("ci95", [float("nan")] * 2)
        interval = "no interval" if not (math.isfinite(low) and math.isfinite(high)) else f"[{low:+.3f}, {high:+.3f}]"
        raw, holm = p_values(entry)
        detectable = entry.get("detectable_difference")
        _, comparison, level = metric_registry.split_key(metric)
        cells = [f"{metric_registry.name(metric)} `{metric}`",
                 metric_registry.comparison_title(comparison or entry.get("comparison"), level),
                 *(f"{entry[n]['mean']:.3f}" if _valid(entry[n]) else "–" for n in config.COMPARED_NORMS),
                 f"{mean:+.3f} {interval}" if math.isfinite(mean) else "–",
                 "–" if detectable is None or not math.isfinite(detectable) else f"{detectable:.3f}",
                 _p_text(raw), _p_text(holm), f"{stored.get('n', entry['batch']['n'])} {entry.get('unit', '')}",
                 metric_registry.family(metric, entry), verdict(metric, entry)]
        lines.append("| " + " | ".join(_escape(c) for c in cells) + " |")
    return "\n".join(lines)


def descriptions_markdown(table: dict[str, dict[str, Any]]) -> str:
    """"What each metric measures" (a MyST definition list in ``measurement_order``): each measurement's name with
    its key in monospace, then the registry's meaning, unit and direction, the chapter's description and test."""
    items = []
    for metric in measurement_order(table):
        entry = table[metric]
        try:
            info = metric_registry.describe(metric)
            reader = f"{info.meaning[0].upper()}{info.meaning[1:]}; unit: {info.unit}; {info.direction}. "
        except KeyError:
            reader = ""
        items.append(f"{_escape(metric_registry.name(metric))} `{metric}` ({metric_registry.family(metric, entry)})\n"
                     f": {reader}{entry.get('description', '')} *Test: {entry.get('test', 'none')}.*\n")
    return "\n".join(items) or "*No results yet.*"


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
    """The table as JSON (shape in the module's docstring), each entry with the registry's ``name``,
    ``meaning``, ``measured_in`` (the value's unit; ``unit`` is what n counts), ``direction`` and ``family``
    (the entry's own where stored)."""
    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    described = {}
    for metric, entry in table.items():
        try:
            info = metric_registry.describe(metric)
            reader = {"name": info.name, "meaning": info.meaning, "measured_in": info.unit,
                      "direction": info.direction}
        except KeyError:
            reader = {}
        described[metric] = {**reader, **entry, "family": metric_registry.family(metric, entry)}
    return json.dumps(clean(described), indent=2, sort_keys=True)


def forest_json(table: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The forest plot's data (one dict per row), for the landing page's download."""
    return [{key: None if isinstance(value, float) and math.isnan(value) else value
             for key, value in {**{k: v for k, v in asdict(row).items() if k != "difference"},
                                **asdict(row.difference)}.items()}
            for row in forest_rows(table)]
