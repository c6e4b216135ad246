"""One population of zoo models per norm, read three ways: the unit of replication of every verdict.

A *population* is, for one norm, a zoo of ``cfg.n_models`` members on each of the independent data draws
``cfg.pools``. Every member trains on half of its pool's inliers and half of its canaries (the canary rate of a
single run) and holds the other half out, so each member is one replicate of the canary experiment, and member
t of the BN and of the no-BN population trained on the same examples (the comparison is paired). The three
comparisons (``config.COMPARISONS``) read the same kind of replicate:

``same_schedule``
    every member at the end of the common schedule (``cfg.epochs``, long enough that every model of both norms
    reaches high fit: at quick every no-BN model passes 0.95).
``matched_fit`` (design a)
    the same members, each read where its own inlier fit first crosses each level of the grid declared in the
    configuration before any run (``cfg.fit_levels``), interpolated between the checkpoints around the crossing
    (:func:`crossings`). The unsuffixed comparison is the declared headline level ``cfg.headline_fit``. The two
    norms are read at different epochs, steps, exposures and learning rates, which the rows report.
``equal_exposure`` (design b)
    both norms train for the same steps on the same data (every canary seen as often); BN's peak learning rate
    is lowered so that BN *ends* the common schedule at the fit no-BN ends at. The rate is calibrated by
    bisection on models of a data draw that is never evaluated (``config.CALIBRATION_DRAWS``): their cache
    entries differ from every evaluated member's (:func:`equal_exposure_populations`).

No member stops early: the same-schedule comparison reads every member at the end of the common schedule, and
the equal-exposure design reads no-BN there too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from . import config, memorization, results, train, verdict
from . import zoo as zoo_lib

CALIBRATION_MEMBERS = 2  # members of each calibration zoo (a complementary pair), on a never-evaluated data draw
CALIBRATION_STEPS = 5  # bisection steps on log2(learning rate / cfg.lr) in [-CALIBRATION_OCTAVES, 0]
CALIBRATION_OCTAVES = 6  # the lowest rate tried is cfg.lr / 2**6; the resolution is 6 / 2**5 octaves (14%)


@dataclass
class Population:
    """The zoos of one norm on every pool, trained on one schedule.

    Attributes:
        norm, epochs, lr: what was trained, for how long and at which peak learning rate.
        zoos: one ``zoo.Zoo`` per pool, in the order of ``pools``.
        curves: per pool, :func:`memorization.zoo_canary_curves` (arrays (E, T)).
    """

    norm: str
    epochs: int
    pools: tuple[int, ...]
    zoos: list[zoo_lib.Zoo]
    curves: list[dict[str, np.ndarray]]
    lr: float = float("nan")

    @property
    def fits(self) -> list[np.ndarray]:
        """Per pool, (E, T) inlier fit of every member at every epoch."""
        return [curve["fit"] for curve in self.curves]

    def final_fit(self) -> float:
        """Mean over members of the fit at the end of the schedule."""
        return float(np.mean(np.concatenate([fit[-1] for fit in self.fits])))


pool_config = zoo_lib.pool_config  # the configuration of the zoo on one data draw (zoo.py, keyed by every zoo)


def train_population(cfg, norm: str, epochs: int | None = None, progress: bool = True, lr: float | None = None
                     ) -> Population:
    """Train (or load) the zoos of ``norm`` on every pool of ``cfg.pools``, on ``epochs`` (default ``cfg.epochs``)
    at peak learning rate ``lr`` (default ``cfg.lr``)."""
    epochs = cfg.epochs if epochs is None else epochs
    lr = cfg.lr if lr is None else float(lr)
    zoos = [zoo_lib.train_zoo(replace(pool_config(cfg, pool), epochs=epochs, lr=lr), norm, progress=progress)
            for pool in cfg.pools]
    return Population(norm=norm, epochs=epochs, pools=tuple(cfg.pools), zoos=zoos,
                      curves=[memorization.zoo_canary_curves(z) for z in zoos], lr=lr)


def level_name(level: float) -> str:
    """The suffix of a grid level's metric names: 0.8 -> ``0p80``."""
    return f"{level:.2f}".replace(".", "p")


def learning_rate_at(cfg, epochs: float, epoch: float, lr: float | None = None) -> float:
    """The learning rate of a ``epochs``-long schedule of ``cfg`` (peak ``lr``, default ``cfg.lr``) at (fractional)
    ``epoch``."""
    if not np.isfinite(epoch):
        return float("nan")
    steps = 100_000  # the schedule depends on step / total only
    return train.learning_rate(round(epoch / epochs * steps), steps, cfg.lr if lr is None else lr, cfg.schedule)


def member_steps(cfg, population: Population) -> tuple[int, float]:
    """SGD steps per epoch of the population's first member, and the share of its examples that each epoch uses
    (the last incomplete batch is dropped): each IN canary is seen ``share`` times an epoch on average. Every
    member trains on half of each group of its pool (the balanced keep mask), so all members agree."""
    n_member = int(population.zoos[0].keep[0].sum())
    per_epoch = n_member // cfg.batch_size
    return per_epoch, per_epoch * cfg.batch_size / n_member


def learning_rate_integral(cfg, population: Population) -> float:
    """Sum over a member's SGD steps of the learning rate of the population's schedule (its peak ``lr``)."""
    per_epoch, _ = member_steps(cfg, population)
    total, lr = population.epochs * per_epoch, population.lr
    return float(sum(train.learning_rate(step, total, lr, cfg.schedule) for step in range(total)))


def crossings(cfg, population: Population, level: float) -> dict[str, Any]:
    """Where each member first crosses ``level``: ``position`` (per pool, (T,) fractional checkpoint index),
    ``epoch``, ``learning_rate``, ``steps`` and ``exposures`` (per IN canary) there ((sum T,); NaN for a member
    that never crosses it or starts above it), their means, and how many members cross it."""
    read = [memorization.read_at_level(curve, level) for curve in population.curves]
    epoch = np.concatenate([r["epoch"] for r in read])
    rate = np.array([learning_rate_at(cfg, population.epochs, e, population.lr) for e in epoch])
    per_epoch, share = member_steps(cfg, population)

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    steps, exposures = epoch * per_epoch, epoch * share
    return {"level": float(level), "position": [r["position"] for r in read], "epoch": epoch, "learning_rate": rate,
            "steps": steps, "exposures": exposures, "mean_epoch": mean(epoch), "mean_learning_rate": mean(rate),
            "mean_steps": mean(steps), "mean_exposures": mean(exposures),
            "crossed": int(np.isfinite(epoch).sum()), "members": int(epoch.size)}


def calibration_config(cfg):
    """The configuration of the calibration zoos: ``CALIBRATION_MEMBERS`` members on data draw
    ``config.CALIBRATION_DRAWS + cfg.pools[0]``, which no evaluated pool may use (``config.load`` refuses it), so
    that no calibration model is ever a member of an evaluated population (the zoo's key holds the draw)."""
    return replace(pool_config(cfg, config.CALIBRATION_DRAWS + cfg.pools[0]), n_models=CALIBRATION_MEMBERS)


def closest_rate(final_fit, peak: float, target: float) -> float:
    """The rate in [peak / 2**``CALIBRATION_OCTAVES``, peak) whose ``final_fit(rate)`` is closest to ``target``
    among those a bisection on log2(rate / peak) tries in ``CALIBRATION_STEPS`` steps (``final_fit`` assumed
    non-decreasing in the rate; called once per step)."""
    tried: dict[float, float] = {}
    low, high = -float(CALIBRATION_OCTAVES), 0.0
    for _ in range(CALIBRATION_STEPS):
        middle = (low + high) / 2
        rate = float(peak * 2 ** middle)
        tried[rate] = final_fit(rate)
        if tried[rate] >= target:
            high = middle
        else:
            low = middle
    return min(tried, key=lambda rate: abs(tried[rate] - target))


def calibrate_learning_rate(cfg, norm: str, target_fit: float, progress: bool = True) -> dict[str, Any]:
    """The peak learning rate (below ``cfg.lr``) at which ``norm`` ends the common schedule fitting its inliers
    closest to ``target_fit`` (:func:`closest_rate`), each tried rate training a calibration zoo
    (:func:`calibration_config`) to the end of the schedule.

    Returns:
        ``lr`` (the choice), ``tried``: {rate: mean final fit of the calibration models} of every rate trained.
    """
    small = calibration_config(cfg)
    tried: dict[float, float] = {}

    def final_fit(lr: float) -> float:
        calibration = zoo_lib.train_zoo(replace(small, lr=lr), norm, progress=progress)
        tried[lr] = float(memorization.zoo_canary_curves(calibration)["fit"][-1].mean())
        return tried[lr]

    best = closest_rate(final_fit, cfg.lr, target_fit)
    return {"lr": best, "tried": dict(sorted(tried.items()))}


def arm_values(cfg, population: Population) -> dict[str, float]:
    """What one arm of a design did: ``epochs``, ``steps`` per member, ``exposures`` per IN canary, peak
    ``lr``, ``lr_integral`` (sum of the learning rate over the steps) and ``end_fit`` (mean final fit)."""
    per_epoch, share = member_steps(cfg, population)
    return {"epochs": population.epochs, "steps": population.epochs * per_epoch,
            "exposures": population.epochs * share, "lr": population.lr,
            "lr_integral": learning_rate_integral(cfg, population),
            "end_fit": population.final_fit()}


def equal_exposure_populations(cfg, populations: dict[str, Population], progress: bool = True) -> dict[str, Any]:
    """Design (b): no-BN keeps its common-schedule population; BN is retrained for the same steps on the same data
    at the peak learning rate (:func:`calibrate_learning_rate`) at which it ends at no-BN's final fit.

    Returns:
        ``populations`` (norm -> Population), ``target_fit`` (no-BN's mean final fit), ``calibration``
        (:func:`calibrate_learning_rate`), ``arms`` (norm -> :func:`arm_values`).
    """
    target = populations["none"].final_fit()
    calibration = calibrate_learning_rate(cfg, "batch", target, progress=progress)
    out = {"none": populations["none"],
           "batch": (populations["batch"] if calibration["lr"] == cfg.lr
                     else train_population(cfg, "batch", progress=progress, lr=calibration["lr"]))}
    return {"populations": out, "target_fit": target, "calibration": calibration,
            "arms": {norm: arm_values(cfg, p) for norm, p in out.items()}}


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
    """Train (or load) everything the three comparisons need: the populations on the common schedule, each
    member's crossing of every declared fit level, and the equal-exposure populations.

    Returns:
        ``populations`` (norm -> Population), ``levels`` (``cfg.fit_levels``), ``headline`` (``cfg.headline_fit``),
        ``crossings`` (norm -> level -> :func:`crossings`), ``equal_exposure`` (:func:`equal_exposure_populations`).
    """
    populations = {norm: train_population(cfg, norm, progress=progress) for norm in norms}
    levels = tuple(float(level) for level in cfg.fit_levels)
    return {"populations": populations, "levels": levels, "headline": float(cfg.headline_fit),
            "crossings": {norm: {level: crossings(cfg, p, level) for level in levels}
                          for norm, p in populations.items()},
            "equal_exposure": equal_exposure_populations(cfg, populations, progress=progress)}


def matched_name(level: float) -> str:
    """The comparison name of a grid level: ``matched_fit_0p80``."""
    return f"matched_fit_{level_name(level)}"


def comparison_names(found: dict[str, Any]) -> list[str]:
    """Every comparison of a :func:`study`, in order: ``same_schedule``, ``matched_fit`` (the headline level), one
    ``matched_fit_0p80``... per grid level, ``equal_exposure``."""
    return ["same_schedule", "matched_fit", *(matched_name(level) for level in found["levels"]), "equal_exposure"]


def comparisons(found: dict[str, Any], group: str = "outliers", score: str = "hard", n_bootstrap: int = 2000
                ) -> dict[str, dict[str, Any]]:
    """Every comparison of :func:`comparison_names` of BN against no normalization for one group and score
    (see :func:`compare`), from a :func:`study`; ``matched_fit`` is the result at the headline level."""
    populations, equal = found["populations"], found["equal_exposure"]["populations"]
    out = {"same_schedule": compare(populations["batch"], populations["none"], group, score, n_bootstrap=n_bootstrap)}
    for level in found["levels"]:
        positions = {norm: found["crossings"][norm][level]["position"] for norm in config.COMPARED_NORMS}
        out[matched_name(level)] = compare(populations["batch"], populations["none"], group, score,
                                           positions=positions, n_bootstrap=n_bootstrap)
    out["matched_fit"] = out[matched_name(found["headline"])]
    out["equal_exposure"] = compare(equal["batch"], equal["none"], group, score, n_bootstrap=n_bootstrap)
    return {name: out[name] for name in comparison_names(found)}


def design(cfg, found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per comparison of :func:`comparison_names`: the report's ``comparison`` (one of ``config.COMPARISONS``),
    ``fit_level`` (None after the same schedule; the target end fit of the equal-exposure design), ``description``
    (where each norm is read) and per norm the mean ``steps``, ``exposures`` (per IN canary), ``epoch`` and
    ``learning_rate`` at the read point."""
    populations, equal = found["populations"], found["equal_exposure"]
    out = {}
    ends = {norm: arm_values(cfg, p) for norm, p in populations.items()}
    out["same_schedule"] = {
        "comparison": "same_schedule", "fit_level": None,
        "description": f"at the end of the common {cfg.epochs}-epoch schedule",
        "arms": {norm: {"steps": v["steps"], "exposures": v["exposures"], "epoch": float(v["epochs"]),
                        "learning_rate": 0.0 if cfg.schedule != "constant" else v["lr"]} for norm, v in ends.items()}}
    grid = ", ".join(f"{level:.2f}" for level in found["levels"])
    for level in found["levels"]:
        cross = {norm: found["crossings"][norm][level] for norm in config.COMPARED_NORMS}
        where = (f"where each model's inlier fit first crosses {level:.2f} (a level of the grid {grid} declared before "
                 f"the run), interpolated between checkpoints of the common {cfg.epochs}-epoch schedule; mean epoch "
                 "there: " + ", ".join(f"{norm} {cross[norm]['mean_epoch']:.1f} ({cross[norm]['crossed']} of "
                                       f"{cross[norm]['members']} models cross it)" for norm in config.COMPARED_NORMS))
        out[matched_name(level)] = {
            "comparison": "matched_fit", "fit_level": float(level), "description": where,
            "arms": {norm: {"steps": c["mean_steps"], "exposures": c["mean_exposures"], "epoch": c["mean_epoch"],
                            "learning_rate": c["mean_learning_rate"]} for norm, c in cross.items()}}
    out["matched_fit"] = {**out[matched_name(found["headline"])]}
    out["matched_fit"]["description"] += f" (the declared headline level {found['headline']:.2f})"
    arms = equal["arms"]
    out["equal_exposure"] = {
        "comparison": "equal_exposure", "fit_level": float(equal["target_fit"]),
        "description": (f"at the end of {cfg.epochs}-epoch schedules on the same data (the same "
                        f"{arms['none']['steps']} steps, {arms['none']['exposures']:.1f} exposures per canary), "
                        f"BN's peak learning rate lowered from {cfg.lr:g} to {arms['batch']['lr']:.3g} (calibrated "
                        f"on models that are not evaluated) so that it ends at no-BN's final fit "
                        f"{equal['target_fit']:.3f} (BN ends at {arms['batch']['end_fit']:.3f})"),
        "arms": {norm: {"steps": a["steps"], "exposures": a["exposures"], "epoch": float(a["epochs"]),
                        "learning_rate": 0.0 if cfg.schedule != "constant" else a["lr"],
                        "lr_integral": a["lr_integral"], "end_fit": a["end_fit"]} for norm, a in arms.items()}}
    return {name: out[name] for name in comparison_names(found)}


def metric_entries(cfg, found: dict[str, Any], compared: dict[str, dict[str, Any]], name: str, *,
                   what: str, higher_means: str) -> dict[str, dict[str, Any]]:
    """``results.metric_entry``-shaped entries ``{name}_{comparison}`` for every comparison of ``compared``
    (:func:`comparisons`), each with its ``difference`` (used by ``verdict.annotate``), ``unit``, ``fit_level``
    and, per norm, ``steps`` and ``exposures`` at the read point (:func:`design`)."""
    where = design(cfg, found)
    pools, models = len(cfg.pools), cfg.n_models
    out = {}
    for comparison, result in compared.items():
        read = where[comparison]
        per_norm = {norm: {**result[norm], "steps": read["arms"][norm]["steps"],
                           "exposures": read["arms"][norm]["exposures"]} for norm in config.COMPARED_NORMS}
        entry = results.metric_entry(
            per_norm, p_value=result["difference"]["p_value"],
            test=(f"paired t over {pools} data pools x {models} model pairs (each pair's mean over examples of "
                  "BN - no-BN), pools as strata, df = pairs - pools; conditional on the data draws and canaries"),
            higher_means=higher_means, description=f"{what}, {read['description']}; n counts models.",
            comparison=read["comparison"], fit_level=read["fit_level"])
        out[f"{name}_{comparison}"] = {**entry, "difference": result["difference"], "unit": "models"}
    return out


def on_fit_grid(population: Population, grid: Sequence[float], key: str = "memorization") -> np.ndarray:
    """Each member's ``key`` where its fit first crosses each level of ``grid``: (sum T, len(grid)), NaN where
    a member does not cross a level (for bands of the memorization-against-fit figure)."""
    return np.concatenate([np.stack([memorization.read_at_level(curve, level, key)["value"] for level in grid], 1)
                           for curve in population.curves])


def fit_grid(population: Population, points: int = 60) -> np.ndarray:
    """Fit levels over the whole range a population's members reach: from the lowest first-checkpoint fit of any
    member to the highest fit any member reaches (at most 1.0), for the memorization-against-fit figure."""
    low = min(float(fit[0].min()) for fit in population.fits)
    high = max(float(fit.max()) for fit in population.fits)
    return np.linspace(low, high, points) if high > low else np.array([high])


def pool_data(cfg, pool: int):
    """The data draw of pool ``pool`` (its ``pool_x`` is what the zoo's ``keep`` indexes)."""
    from . import data as data_lib

    return data_lib.make_experiment_data(pool_config(cfg, pool), seed=pool)
