"""What a BN vs no-BN comparison may conclude: a cluster bootstrap with the model as the unit of
replication, the smallest difference the design detects, Holm's correction over the headline family,
and one verdict in words.

The unit of replication is the zoo *model* (or, where a chapter has them, the independent data pool):
canaries of one model are not independent, so intervals come from resampling models and, within the
resampled models, examples (a two-level or "pigeonhole" bootstrap over models x examples; Owen 2007,
crossed random effects). Where the design pairs the norms (member t of the BN zoo and member t of the
no-BN zoo trained on the same keep mask, measured on the same examples), one set of model and example
indices is drawn per resample and applied to both norms.

Shapes:
    values   (T,)     one number per model (one-level bootstrap), e.g. acc(IN canaries) - acc(OUT canaries)
    values   (T, N)   one number per (model, example), NaN where it does not exist (e.g. example OUT for
                      that model); each model's value is the mean of its finite entries
    pools    (T,)     optional integer label of the data pool each model was trained from (third level)

The statistic is the mean over models of each model's mean over examples (models weigh equally, whatever
their count of finite entries), and its difference between norms (BN - no-BN).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests

from . import config

VERDICTS = ("BN higher", "no-BN higher", "no difference detected", "inconclusive")
MIN_REPLICATES = 3  # fewer replicates than this: the bootstrap cannot say anything


def _check_values(values: np.ndarray, name: str) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    if values.ndim not in (1, 2) or values.size == 0:
        raise ValueError(f"Parameter {name!r} has shape {values.shape}; allowed: (T,) per-model values or "
                         "(T, N) per-(model, example) values, non-empty.")
    return values if values.ndim == 2 else values[:, None]


def _model_counts(rng: np.random.Generator, n_models: int, n_bootstrap: int, pools: np.ndarray | None
                  ) -> np.ndarray:
    """(B, T) multiplicity of each model in each resample: models drawn with replacement, or, with pools,
    pools drawn with replacement and then, for every copy of a pool, its models drawn with replacement."""
    if pools is None:
        return rng.multinomial(n_models, np.full(n_models, 1 / n_models), size=n_bootstrap)
    labels, members = np.unique(pools, return_inverse=True)
    pool_copies = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=n_bootstrap)  # (B, P)
    counts = np.zeros((n_bootstrap, n_models), dtype=np.int64)
    for p in range(len(labels)):
        in_pool = np.flatnonzero(members == p)
        # k copies of a pool of m models, each copy drawing m models uniformly: multinomial(k * m, 1/m)
        counts[:, in_pool] = rng.multinomial(pool_copies[:, p] * len(in_pool), np.full(len(in_pool), 1 / len(in_pool)))
    return counts


def resampled_means(values: np.ndarray, model_counts: np.ndarray, example_counts: np.ndarray) -> np.ndarray:
    """(B,) statistic on each resample of values (T, N) given model counts (B, T), example counts (B, N).

    A model's mean over examples is sum_n w_n x_tn / sum_n w_n [x_tn finite]: two matrix products
    (B, N) @ (N, T), so nothing of size B x T x N is ever formed.
    """
    finite = np.isfinite(values)
    per_model_sum = example_counts @ np.where(finite, values, 0.0).T  # (B, T)
    per_model_count = example_counts @ finite.T.astype(float)  # (B, T)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_model = per_model_sum / per_model_count  # NaN where a model has no finite entry left
    present = np.isfinite(per_model)
    weight = model_counts * present
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(present, per_model, 0.0) * weight).sum(1) / weight.sum(1)


def _point(values: np.ndarray) -> float:
    """The statistic on the data themselves: mean over models of each model's mean of finite entries."""
    finite = np.isfinite(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_model = np.where(finite, values, 0.0).sum(1) / finite.sum(1)
    return float(np.nanmean(per_model)) if np.isfinite(per_model).any() else float("nan")


def _n_models(values: np.ndarray) -> int:
    return int(np.isfinite(values).any(1).sum())


def _summary(point: float, resampled: np.ndarray, n: int, unit: str) -> dict[str, Any]:
    draws = resampled[np.isfinite(resampled)]
    if draws.size < 2 or not math.isfinite(point):
        return {"mean": point, "ci95": [float("nan"), float("nan")], "se": float("nan"), "p_value": float("nan"),
                "n": n, "unit": unit, "n_bootstrap": int(draws.size)}
    low, high = np.quantile(draws, [0.025, 0.975])
    tail = min(np.sum(draws <= 0), np.sum(draws >= 0))
    return {"mean": point, "ci95": [float(low), float(high)], "se": float(draws.std(ddof=1)),
            # two-sided: twice the smaller share of resamples on either side of 0, at least 1/(B+1)
            "p_value": float(min(1.0, (1 + 2 * tail) / (1 + draws.size))),
            "n": n, "unit": unit, "n_bootstrap": int(draws.size)}


def cluster_bootstrap_difference(batch: np.ndarray, none: np.ndarray, *, paired: bool = True,
                                 pools: np.ndarray | None = None, n_bootstrap: int = 2000, seed: int = 0,
                                 unit: str = "models") -> dict[str, Any]:
    """BN - no-BN difference of a per-model or per-(model, example) quantity, with a cluster bootstrap.

    Args:
        batch, none: (T,) or (T, N) values of the two norms; NaN = not available (e.g. example OUT).
        paired: the two arrays share models and examples (same keep mask index, same examples): one set of
            model and example indices per resample, applied to both. Unpaired: each norm resampled on its
            own (its own T and N allowed).
        pools: (T,) data-pool label of each model (paired only): pools are resampled, then models within
            the drawn pools (a third level, for independent data draws).
        n_bootstrap: resamples B; seed: of ``np.random.default_rng``.
        unit: what ``n`` counts ("models", "seeds", "data draws").
    Returns:
        ``mean`` (difference of the statistics), ``ci95`` (percentile), ``se`` (standard deviation of the
        resampled differences), ``p_value`` (two-sided bootstrap), ``n`` (models with a value in both
        norms if paired, else the smaller side's count), ``unit`` and ``n_bootstrap`` (resamples with a
        finite difference).
    """
    a, b = _check_values(batch, "batch"), _check_values(none, "none")
    if n_bootstrap < 2:
        raise ValueError(f"Parameter 'n_bootstrap' is {n_bootstrap}; allowed: at least 2 (use ~2000).")
    if paired and a.shape != b.shape:
        raise ValueError(f"Parameters 'batch' {a.shape} and 'none' {b.shape} must have one shape when "
                         "paired=True (same models, same examples).")
    if pools is not None:
        pools = np.asarray(pools)
        if not paired or pools.shape != (a.shape[0],):
            raise ValueError(f"Parameter 'pools' has shape {pools.shape}; allowed: ({a.shape[0]},), one label per "
                             "model, with paired=True.")
    rng = np.random.default_rng(seed)

    def example_counts(n_examples: int) -> np.ndarray:
        return rng.multinomial(n_examples, np.full(n_examples, 1 / n_examples), size=n_bootstrap).astype(float)

    if paired:
        models, examples = _model_counts(rng, a.shape[0], n_bootstrap, pools), example_counts(a.shape[1])
        resampled = resampled_means(a, models, examples) - resampled_means(b, models, examples)
        n = int((np.isfinite(a).any(1) & np.isfinite(b).any(1)).sum())
    else:
        resampled = (resampled_means(a, _model_counts(rng, a.shape[0], n_bootstrap, None), example_counts(a.shape[1]))
                     - resampled_means(b, _model_counts(rng, b.shape[0], n_bootstrap, None),
                                        example_counts(b.shape[1])))
        n = min(_n_models(a), _n_models(b))
    return _summary(_point(a) - _point(b), resampled, n, unit)


def cluster_bootstrap_mean(values: np.ndarray, *, pools: np.ndarray | None = None, n_bootstrap: int = 2000,
                           seed: int = 0, unit: str = "models") -> dict[str, Any]:
    """The statistic of one norm with the same cluster bootstrap (shape of :func:`cluster_bootstrap_difference`;
    its ``p_value`` tests a mean of 0)."""
    a = _check_values(values, "values")
    rng = np.random.default_rng(seed)
    models = _model_counts(rng, a.shape[0], n_bootstrap, None if pools is None else np.asarray(pools))
    examples = rng.multinomial(a.shape[1], np.full(a.shape[1], 1 / a.shape[1]), size=n_bootstrap).astype(float)
    return _summary(_point(a), resampled_means(a, models, examples), _n_models(a), unit)


def detectable_difference(se: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """(z_{1-alpha/2} + z_power) * se: the smallest true difference a two-sided level-alpha test with
    standard error ``se`` detects with probability ``power`` (normal approximation)."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"Parameters 'alpha' ({alpha!r}) and 'power' ({power!r}) must lie in (0, 1).")
    return float((scipy_stats.norm.ppf(1 - alpha / 2) + scipy_stats.norm.ppf(power)) * se)


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (statsmodels ``multipletests(method="holm")``) of one family.

    None or NaN entries are not tested: they stay None and do not count towards the family's size.
    """
    tested = [i for i, p in enumerate(p_values) if p is not None and math.isfinite(p)]
    out: list[float | None] = [None] * len(p_values)
    if tested:
        adjusted = multipletests([p_values[i] for i in tested], method="holm")[1]
        for i, p in zip(tested, adjusted, strict=True):
            out[i] = float(p)
    return out


def verdict(mean: float, se: float, p_value: float | None, n: int, *, alpha: float = 0.05, power: float = 0.8,
            scale: float | None = None, number_format: str = ".3g") -> str:
    """One of four verdicts on a BN - no-BN difference, each starting with its words (:data:`VERDICTS`).

    Rule, in order:
        1. "inconclusive (...)" if n < 3 replicates, or mean, se or p_value is missing or not finite;
        2. "BN higher (...)" / "no-BN higher (...)" if p_value < alpha (pass the Holm-adjusted p-value for
           a member of the headline family), by the sign of mean;
        3. otherwise, with X = :func:`detectable_difference` (se, alpha, power): "inconclusive (...)" if a
           ``scale`` is given and X > |scale| (the design could not even detect a difference the size of
           the scale, e.g. the same-schedule effect when judging the matched-fit comparison); else
           "no difference detected (could detect ≥ X)".
    """
    if n < MIN_REPLICATES:
        return f"inconclusive ({n} replicates; at least {MIN_REPLICATES} needed)"
    if p_value is None or not all(math.isfinite(v) for v in (mean, se, p_value)):
        return "inconclusive (no finite estimate, standard error or p-value)"
    if p_value < alpha:
        return f"{'BN higher' if mean > 0 else 'no-BN higher'} (difference {mean:{number_format}}, p = {p_value:.2g})"
    detectable = detectable_difference(se, alpha, power)
    if scale is not None and detectable > abs(scale):
        return (f"inconclusive (could detect only ≥ {detectable:{number_format}}, more than the scale "
                f"{abs(scale):{number_format}})")
    return f"no difference detected (could detect ≥ {detectable:{number_format}})"


def _se_of(entry: Mapping[str, Any]) -> float:
    """SE of the difference: the entry's ``difference["se"]`` (a cluster bootstrap) if present; else, from
    the two norms' 95% intervals, sqrt(se_BN^2 + se_none^2) with se = half-width / 1.96 (unpaired: for
    positively correlated paired norms this overstates the SE, so the detectable difference is conservative)."""
    if "difference" in entry and entry["difference"].get("se") is not None:
        return float(entry["difference"]["se"])
    halves = [(entry[norm]["ci95"][1] - entry[norm]["ci95"][0]) / 2 for norm in config.COMPARED_NORMS]
    return float(math.sqrt(sum((h / scipy_stats.norm.ppf(0.975)) ** 2 for h in halves)))


def annotate(metrics: Mapping[str, Mapping[str, Any]], headline: Sequence[str], *, alpha: float = 0.05,
             power: float = 0.8, units: Mapping[str, str] | None = None,
             scales: Mapping[str, float] | None = None) -> dict[str, dict[str, Any]]:
    """Copies of ``bnlib.results.metric_entry`` entries with ``unit``, ``verdict``, ``detectable_difference``
    and ``p_value_holm`` added (nothing removed).

    Args:
        metrics: name -> entry (``batch``/``none`` ``{"mean", "ci95", "n"}``, ``p_value``, ...; optionally
            ``difference``: a :func:`cluster_bootstrap_difference` result, whose ``se``, ``n`` and ``unit``
            are then used).
        headline: names of the headline family; their p-values are Holm-adjusted together and the verdict
            uses the adjusted value. Other entries get ``p_value_holm`` None and a verdict on the raw p.
        units: name -> what ``n`` counts, where the entry has no ``difference``/``unit`` (default "seeds").
        scales: name -> the scale rule of :func:`verdict` (e.g. the same-schedule effect).
    """
    missing = [name for name in headline if name not in metrics]
    if missing:
        raise ValueError(f"Parameter 'headline' names {missing}, not in the metrics; allowed: {sorted(metrics)}.")
    adjusted = dict(zip(headline, holm([metrics[name].get("p_value") for name in headline]), strict=True))
    out: dict[str, dict[str, Any]] = {}
    for name, entry in metrics.items():
        difference = entry.get("difference", {})
        se = _se_of(entry)
        unit = difference.get("unit") or entry.get("unit") or (units or {}).get(name, "seeds")
        n = int(difference.get("n", min(entry["batch"]["n"], entry["none"]["n"])))
        mean = float(difference.get("mean", entry["batch"]["mean"] - entry["none"]["mean"]))
        p_value = adjusted[name] if name in adjusted else entry.get("p_value")
        detectable = detectable_difference(se, alpha, power) if math.isfinite(se) else float("nan")
        out[name] = {**entry, "unit": unit, "detectable_difference": detectable,
                     "p_value_holm": adjusted.get(name),
                     "verdict": verdict(mean, se, p_value, n, alpha=alpha, power=power,
                                        scale=(scales or {}).get(name))}
    return out


# ----------------------------------------------------------------------------- words for the pages

def _interval(values: Sequence[float], number_format: str) -> str:
    low, high = values
    if not (math.isfinite(low) and math.isfinite(high)):
        return "no interval"
    return f"[{low:{number_format}}, {high:{number_format}}]"


def sentence(entry: Mapping[str, Any], number_format: str = "+.3f") -> str:
    """One annotated entry in words: the verdict, then the difference, its interval, n with its unit and the
    p-values (raw, and Holm-adjusted where the entry belongs to the headline family)."""
    difference = entry.get("difference", {})
    mean = difference.get("mean", entry["batch"]["mean"] - entry["none"]["mean"])
    interval = _interval(difference.get("ci95", [float("nan")] * 2), number_format)
    p_text = f"p = {entry['p_value']:.2g}" if entry.get("p_value") is not None else "no test"
    if entry.get("p_value_holm") is not None:
        p_text += f", Holm-adjusted {entry['p_value_holm']:.2g}"
    n = difference.get("n", min(entry["batch"]["n"], entry["none"]["n"]))
    return (f"{entry['verdict']}: difference {mean:{number_format}} (95% CI {interval}, n = {n} "
            f"{entry.get('unit', 'replicates')}; {p_text})")


def table(metrics: Mapping[str, Mapping[str, Any]], number_format: str = ".3f") -> str:
    """A Markdown table of annotated entries: metric, comparison, BN, no-BN, difference [interval], detectable
    difference, p, Holm p, n with its unit, verdict."""
    lines = ["| metric | comparison | BN | no norm | BN − no norm [95% CI] | detectable | p | p (Holm) | n | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in metrics.items():
        difference = entry.get("difference", {})
        mean = difference.get("mean", entry["batch"]["mean"] - entry["none"]["mean"])
        interval = _interval(difference.get("ci95", [float("nan")] * 2), "+" + number_format)

        def p_text(value: float | None) -> str:
            return "–" if value is None or not math.isfinite(value) else f"{value:.2g}"

        lines.append(
            f"| `{name}` | {entry['comparison'].replace('_', ' ')} | {entry['batch']['mean']:{number_format}} | "
            f"{entry['none']['mean']:{number_format}} | {mean:+{number_format}} {interval} | "
            f"{entry['detectable_difference']:{number_format}} | {p_text(entry.get('p_value'))} | "
            f"{p_text(entry.get('p_value_holm'))} | {difference.get('n', entry['batch']['n'])} "
            f"{entry.get('unit', '')} | {entry['verdict']} |")
    return "\n".join(lines)


def leading_words(text: str) -> str:
    """The verdict's words without its parenthesis: one of :data:`VERDICTS`."""
    return next((words for words in VERDICTS if text.startswith(words)), text)


def agreement(first: Mapping[str, Any], second: Mapping[str, Any], names: tuple[str, str] = (
        "the one-schedule design (a)", "the annealed design (b)")) -> str:
    """A sentence saying whether two annotated entries reach the same verdict, and what it means if not."""
    a, b = leading_words(first["verdict"]), leading_words(second["verdict"])
    if a == b:
        return f"The two matched-fit designs agree: {a} in {names[0]} and in {names[1]}."
    return (f"The two matched-fit designs disagree: {a} in {names[0]}, {b} in {names[1]}; where a model is read "
            "in its learning-rate schedule changes the answer, and neither design alone settles the question.")


def curve_band(batch: np.ndarray, none: np.ndarray, pools: np.ndarray, levels: Sequence[float],
               confidence: float = 0.95) -> dict[str, Any]:
    """STAND-IN (issue 21, design half; the statistics half replaces it with its calibrated band, same signature):
    BN - no-BN along a fit grid with a simultaneous band.

    Args:
        batch, none: (T, L) per-model values at each of the L ``levels`` (model t of both arrays is one pair;
            NaN where a model does not reach a level); pools: (T,) pool label of each model (unused here).
    Returns:
        ``levels`` (L,), ``mean`` (L,) mean over pairs with both values of BN - no-BN, ``low``/``high`` (L,) a
        simultaneous band (paired t interval at each level, Bonferroni over the L levels), ``n`` (L,) pairs.
    """
    batch, none = np.asarray(batch, dtype=float), np.asarray(none, dtype=float)
    if batch.shape != none.shape or batch.ndim != 2 or batch.shape[1] != len(levels):
        raise ValueError(f"Parameters 'batch' {batch.shape} and 'none' {none.shape} must both be (T, len(levels)) = "
                         f"(T, {len(levels)}).")
    difference = batch - none
    n = np.isfinite(difference).sum(0)
    mean, low, high = (np.full(len(levels), np.nan) for _ in range(3))
    alpha = (1 - confidence) / len(levels)
    for k in range(len(levels)):
        values = difference[np.isfinite(difference[:, k]), k]
        if values.size:
            mean[k] = values.mean()
        if values.size >= 2:
            half = scipy_stats.t.ppf(1 - alpha / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
            low[k], high[k] = mean[k] - half, mean[k] + half
    return {"levels": np.asarray(levels, dtype=float), "mean": mean, "low": low, "high": high, "n": n}
