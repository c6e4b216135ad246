"""One population of zoo models per norm, read three ways: the unit of replication of every verdict.

A *population* is, for one norm, a zoo of ``cfg.n_models`` members on each of the independent data draws
``cfg.pools``. Every member trains on half of its pool's inliers and half of its canaries (the canary rate of a
single run) and holds the other half out, so each member is one replicate of the canary experiment, and member
t of the BN and of the no-BN population trained on the same examples (the comparison is paired). The three
comparisons read the same kind of replicate:

``same_schedule``
    every member at the end of the common schedule (``cfg.epochs``).
``matched_fit`` (design a)
    the same members, each read where its own inlier fit first crosses the *top level*: the highest fit that
    every member of every norm reaches on the common schedule (``stats.common_top_level``), interpolated
    between the epochs around the crossing. The two norms are read at different epochs and learning rates,
    which :func:`crossings` reports.
``matched_fit_annealed`` (design b)
    the norm that fits faster is retrained on a shorter schedule whose length a short calibration chooses so
    that it *ends* (learning rate at zero) at the slower norm's final fit; both norms are compared at the end
    of their own schedules (:func:`annealed_populations`).

If (a) and (b) disagree, the learning-rate phase at which a network is read matters, and the chapters say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import config, memorization, results, stats, train, verdict
from . import zoo as zoo_lib

CALIBRATION_MEMBERS = 2  # members of the small zoos that calibrate an annealed schedule (a complementary pair)


@dataclass
class Population:
    """The zoos of one norm on every pool, trained on one schedule.

    Attributes:
        norm, epochs: what was trained and for how long.
        zoos: one ``zoo.Zoo`` per pool, in the order of ``pools``.
        curves: per pool, :func:`memorization.zoo_canary_curves` (arrays (E, T)).
    """

    norm: str
    epochs: int
    pools: tuple[int, ...]
    zoos: list[zoo_lib.Zoo]
    curves: list[dict[str, np.ndarray]]

    @property
    def fits(self) -> list[np.ndarray]:
        """Per pool, (E, T) inlier fit of every member at every epoch."""
        return [curve["fit"] for curve in self.curves]

    def final_fit(self) -> float:
        """Mean over members of the fit at the end of the schedule."""
        return float(np.mean(np.concatenate([fit[-1] for fit in self.fits])))


def pool_config(cfg, pool: int):
    """The configuration of the zoo on data draw ``pool`` (the zoo draws its data from ``cfg.seeds[0]``)."""
    return replace(cfg, seeds=(pool,))


def train_population(cfg, norm: str, epochs: int | None = None, progress: bool = True) -> Population:
    """Train (or load) the zoos of ``norm`` on every pool of ``cfg.pools``, on ``epochs`` (default ``cfg.epochs``)."""
    epochs = cfg.epochs if epochs is None else epochs
    zoos = [zoo_lib.train_zoo(replace(pool_config(cfg, pool), epochs=epochs), norm, progress=progress)
            for pool in cfg.pools]
    return Population(norm=norm, epochs=epochs, pools=tuple(cfg.pools), zoos=zoos,
                      curves=[memorization.zoo_canary_curves(z) for z in zoos])


def top_level(populations: Sequence[Population], resolution: float = 0.005) -> float:
    """The matched-fit level of design (a): the highest fit that every member of every population reaches."""
    return stats.common_top_level([fit[:, t] for p in populations for fit in p.fits for t in range(fit.shape[1])],
                                  resolution=resolution)


def learning_rate_at(cfg, epochs: float, epoch: float) -> float:
    """The learning rate of a ``epochs``-long schedule of ``cfg`` at (fractional) ``epoch``."""
    if not np.isfinite(epoch):
        return float("nan")
    steps = 100_000  # the schedule depends on step / total only
    return train.learning_rate(round(epoch / epochs * steps), steps, cfg.lr, cfg.schedule)


def crossings(cfg, population: Population, level: float) -> dict[str, Any]:
    """Where each member first crosses ``level``: ``position`` (per pool, (T,) fractional checkpoint index),
    ``epoch`` and ``learning_rate`` there ((sum T,); NaN for a member that never crosses it or starts above it),
    and their means."""
    read = [memorization.read_at_level(curve, level) for curve in population.curves]
    epoch = np.concatenate([r["epoch"] for r in read])
    rate = np.array([learning_rate_at(cfg, population.epochs, e) for e in epoch])
    return {"position": [r["position"] for r in read], "epoch": epoch, "learning_rate": rate,
            "mean_epoch": float(np.nanmean(epoch)) if np.isfinite(epoch).any() else float("nan"),
            "mean_learning_rate": float(np.nanmean(rate)) if np.isfinite(rate).any() else float("nan"),
            "crossed": int(np.isfinite(epoch).sum()), "members": int(epoch.size)}


def calibrate_annealed_epochs(cfg, norm: str, target_fit: float, progress: bool = True) -> dict[str, Any]:
    """The schedule length (epochs, at most ``cfg.epochs``) at whose end ``norm`` fits its inliers closest to
    ``target_fit``, found by bisection on small zoos (``CALIBRATION_MEMBERS`` members of the first pool, each
    trained to the end of the candidate schedule; final fit assumed to grow with the length).

    Returns:
        ``epochs`` (the choice), ``tried``: {epochs: mean final fit} of every candidate trained.
    """
    small = replace(pool_config(cfg, cfg.pools[0]), n_models=CALIBRATION_MEMBERS)
    tried: dict[int, float] = {}

    def final_fit(epochs: int) -> float:
        if epochs not in tried:
            population = zoo_lib.train_zoo(replace(small, epochs=epochs), norm, progress=progress)
            tried[epochs] = float(memorization.zoo_canary_curves(population)["fit"][-1].mean())
        return tried[epochs]

    best = closest_length(final_fit, cfg.epochs, target_fit)
    return {"epochs": int(best), "tried": dict(sorted(tried.items()))}


def closest_length(final_fit, longest: int, target: float) -> int:
    """The length in 1..``longest`` whose ``final_fit(length)`` is closest to ``target``, by bisection for the
    shortest length reaching ``target`` (``final_fit`` assumed non-decreasing), then the better of it and the
    length before it; ``final_fit`` is called O(log longest) times."""
    low, high = 1, longest  # invariant: the shortest length reaching the target (or ``longest``) is in [low, high]
    while low < high:
        middle = (low + high) // 2
        if final_fit(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return min((e for e in (low - 1, low) if e >= 1), key=lambda e: abs(final_fit(e) - target))


def annealed_populations(cfg, populations: dict[str, Population], progress: bool = True) -> dict[str, Any]:
    """Design (b): the norm with the higher final fit on the common schedule is retrained on the shortest
    schedule that ends at the other norm's final fit; the other keeps its common-schedule population.

    Returns:
        ``populations`` (norm -> Population at the end of its annealed schedule), ``target_fit``, ``shortened``
        (the retrained norm), ``calibration`` (:func:`calibrate_annealed_epochs`).
    """
    slower = min(populations, key=lambda norm: populations[norm].final_fit())
    target = populations[slower].final_fit()
    out = dict(populations)
    calibrations = {}
    for norm, population in populations.items():
        if norm == slower:
            continue
        calibration = calibrate_annealed_epochs(cfg, norm, target, progress=progress)
        calibrations[norm] = calibration
        if calibration["epochs"] != population.epochs:
            out[norm] = train_population(cfg, norm, epochs=calibration["epochs"], progress=progress)
    return {"populations": out, "target_fit": target, "slower": slower, "calibration": calibrations}


def signed_values(population: Population, group: str, score: str = "hard",
                  positions: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per (member, example of ``group``) signed scores of every pool (``memorization.signed_scores``), stacked
    so that each pool's members hold values only in their own pool's columns.

    Args:
        group: ``outliers`` (the canaries) or ``inliers``.
        positions: per pool, (T,) fractional checkpoint index at which to read each member (None: the end).
    Returns:
        values (sum T, sum N_group), pool label (sum T,).
    """
    if group not in ("outliers", "inliers"):
        raise ValueError(f"Parameter 'group' got {group!r}; allowed values: 'outliers', 'inliers'.")
    blocks = []
    for p, population_zoo in enumerate(population.zoos):
        mask = population_zoo.is_outlier.numpy() if group == "outliers" else ~population_zoo.is_outlier.numpy()
        values = memorization.signed_scores(population_zoo, None if positions is None else positions[p], score)
        blocks.append(values[:, mask])
    return memorization.stack_pools(blocks)


def compare(batch: Population, none: Population, group: str = "outliers", score: str = "hard",
            positions: dict[str, Sequence[np.ndarray]] | None = None, n_bootstrap: int = 2000,
            seed: int = 0) -> dict[str, Any]:
    """BN - no-BN memorization of ``group`` (mean signed score: acc(IN) - acc(OUT) per member, and the mean
    Feldman-Zhang score of the group) on model pairs (pool, member index): each pair's mean over examples of
    the paired difference, with a t over pairs, pools as strata (``verdict.paired_difference``; target:
    conditional on the data draws and canaries). ``n_bootstrap`` and ``seed`` are unused since the cluster
    bootstrap was replaced (kept until the chapter drops its ``n_bootstrap`` parameter).

    Returns:
        ``batch``/``none``: {"mean", "ci95", "n"} of each norm (``verdict.stratified_mean``); ``difference``:
        ``verdict.paired_difference`` (``unit`` "models", n counts pairs).
    """
    values = {}
    for name, population in (("batch", batch), ("none", none)):
        values[name], pools = signed_values(population, group, score, (positions or {}).get(name))
    difference = verdict.paired_difference(values["batch"], values["none"], pools=pools, unit="models")
    per_norm = {}
    for name in config.COMPARED_NORMS:
        summary = verdict.stratified_mean(values[name], pools)
        per_norm[name] = {"mean": summary["mean"], "ci95": summary["ci95"], "n": summary["n"]}
    return {**per_norm, "difference": difference}


def study(cfg, norms: Sequence[str] = config.COMPARED_NORMS, progress: bool = True) -> dict[str, Any]:
    """Train (or load) everything the three comparisons need: the populations on the common schedule, the
    top fit level and each member's crossing of it, and the annealed populations.

    Returns:
        ``populations`` (norm -> Population), ``level``, ``crossings`` (norm -> :func:`crossings`),
        ``annealed`` (:func:`annealed_populations`).
    """
    populations = {norm: train_population(cfg, norm, progress=progress) for norm in norms}
    level = top_level(list(populations.values()))
    return {"populations": populations, "level": level,
            "crossings": {norm: crossings(cfg, p, level) for norm, p in populations.items()},
            "annealed": annealed_populations(cfg, populations, progress=progress)}


def comparisons(found: dict[str, Any], group: str = "outliers", score: str = "hard", n_bootstrap: int = 2000
                ) -> dict[str, dict[str, Any]]:
    """The three comparisons (``config.COMPARISONS``) of BN against no normalization for one group and score
    (see :func:`compare`), from a :func:`study`."""
    populations, annealed = found["populations"], found["annealed"]["populations"]
    positions = {norm: found["crossings"][norm]["position"] for norm in config.COMPARED_NORMS}
    return {
        "same_schedule": compare(populations["batch"], populations["none"], group, score, n_bootstrap=n_bootstrap),
        "matched_fit": compare(populations["batch"], populations["none"], group, score, positions=positions,
                               n_bootstrap=n_bootstrap),
        "matched_fit_annealed": compare(annealed["batch"], annealed["none"], group, score, n_bootstrap=n_bootstrap),
    }


def describe_design(cfg, found: dict[str, Any]) -> dict[str, str]:
    """One sentence per comparison saying exactly where each norm is read (for the metrics' descriptions)."""
    cross, annealed = found["crossings"], found["annealed"]
    lengths = {norm: p.epochs for norm, p in annealed["populations"].items()}
    return {
        "same_schedule": f"at the end of the common {cfg.epochs}-epoch schedule",
        "matched_fit": (f"where each model's inlier fit first crosses {found['level']:.3f} (the highest level every "
                        "model of both norms reaches), interpolated between epochs; mean epoch there: " + ", ".join(
                            f"{norm} {cross[norm]['mean_epoch']:.1f}" for norm in config.COMPARED_NORMS)),
        "matched_fit_annealed": (f"at the end of schedules that end at the same fit ({annealed['target_fit']:.3f}, "
                                 "the slower norm's final fit): " + ", ".join(
                                     f"{norm} {lengths[norm]} epochs" for norm in config.COMPARED_NORMS)),
    }


def metric_entries(cfg, found: dict[str, Any], compared: dict[str, dict[str, Any]], name: str, *,
                   what: str, higher_means: str) -> dict[str, dict[str, Any]]:
    """``results.metric_entry``-shaped entries ``{name}_{comparison}`` for the three comparisons, each with its
    paired ``difference`` (``verdict.paired_difference``, used by ``verdict.annotate``) and ``unit``."""
    where = describe_design(cfg, found)
    pools, models = len(cfg.pools), cfg.n_models
    out = {}
    for comparison, result in compared.items():
        entry = results.metric_entry(
            {norm: result[norm] for norm in config.COMPARED_NORMS}, p_value=result["difference"]["p_value"],
            test=(f"paired t over {pools} data pools x {models} model pairs (each pair's mean over examples of "
                  "BN - no-BN), pools as strata, df = pairs - pools; conditional on the data draws and canaries"),
            higher_means=higher_means, description=f"{what}, {where[comparison]}; n counts models.",
            comparison=comparison)
        out[f"{name}_{comparison}"] = {**entry, "difference": result["difference"], "unit": "models"}
    return out


def on_fit_grid(population: Population, grid: Sequence[float], key: str = "memorization") -> np.ndarray:
    """Each member's ``key`` where its fit first crosses each level of ``grid``: (sum T, len(grid)), NaN where
    a member does not cross a level (for bands of the memorization-against-fit figure)."""
    return np.concatenate([np.stack([memorization.read_at_level(curve, level, key)["value"] for level in grid], 1)
                           for curve in population.curves])


def fit_grid(populations: Sequence[Population], points: int = 40) -> np.ndarray:
    """Fit levels from the highest first-epoch fit of any member to the top level every member reaches."""
    low = max(float(fit[0].max()) for p in populations for fit in p.fits)
    high = top_level(populations)
    return np.linspace(low, high, points) if high > low else np.array([high])


def pool_data(cfg, pool: int):
    """The data draw of pool ``pool`` (its ``pool_x`` is what the zoo's ``keep`` indexes)."""
    from . import data as data_lib

    return data_lib.make_experiment_data(pool_config(cfg, pool), seed=pool)
