"""Ablations as small populations: how the BN effect moves with batch size, normalizer, schedule, learning
rate, architecture and canary rate, each point judged with the unit of every other verdict, the model pair.

A sweep *point* compares two *arms* (BN against no normalization, or a normalizer variant against no
normalization). Each arm is a zoo of ``params.pair_count`` members on the first data pool
(``population.train_population`` with a modified configuration: ``n_models`` = pair_count, one pool), so member
t of both arms trains on the same examples (complementary keep masks, the zoo's), from the same seed: the
pair is the unit of replication. Members are cached zoo members: an arm whose configuration equals the
memorization chapter's (the baseline point) reuses its first members, and arms shared between sweeps train
once.

Each member is read two ways, like the book's populations:

``same_schedule``
    its canary memorization, acc(IN canaries) - acc(OUT canaries), at the end of its schedule;
``matched_fit``
    the same, read where the member's own inlier fit first crosses the declared headline level
    ``params.fit_level`` (interpolated between epochs). Reported only where every member of both arms
    reaches the level; otherwise the point says "not reached" and no level is invented.

The inference is the book's (``verdict.paired_difference``: a paired t over model pairs; ``verdict.verdict``'s
five verdicts, with the margin ``config.EQUIVALENCE_MARGINS`` declares for ``ablation_canary_memorization``),
and no verdict comes from fewer than :data:`MIN_PAIRS` pairs (:func:`paired_inference`).

Batch-size points train at *equal steps*: a batch of B takes epochs x (steps per epoch at
the chapter's batch size) / (steps per epoch at B), with the peak learning rate scaled by
``params.batch_lr_rule`` (:func:`batch_size_overrides`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from . import config, memorization, population, train, verdict
from .config import ARCHS, NORMS

MIN_PAIRS = 8  # no verdict, interval or direction word from fewer model pairs
LR_RULES = ("linear", "sqrt", "constant")
SWEEPS = ("batch_size", "norm", "length", "lr", "arch", "canary_rate")


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the ablations chapter (validated by ``config.load(..., extras=ChapterParams)``).

    A sweep whose tuple is empty at a profile is not run there (``sweeps`` names the ones that run)."""

    sweeps: tuple[str, ...] = field(default=SWEEPS, metadata={"choices": SWEEPS, "doc": "sweeps to run"})
    batch_sizes: tuple[int, ...] = field(default=(32, 128, 512), metadata={
        "minimum": 2, "doc": "batch-size sweep (equal steps; must contain the chapter's batch_size)"})
    batch_lr_rule: str = field(default="linear", metadata={
        "choices": LR_RULES, "doc": "peak learning rate at batch B: lr x B/batch_size (linear), x sqrt(B/batch_size), "
                                    "or lr (constant)"})
    variant_norms: tuple[str, ...] = field(
        default=("ghost", "running", "group", "layer"),
        metadata={"choices": NORMS, "doc": "normalizers compared with no norm in the normalizer sweep"})
    learning_rates: tuple[float, ...] = field(default=(0.02, 0.1), metadata={
        "positive": True, "doc": "learning-rate sweep (besides the chapter's lr)"})
    epoch_factors: tuple[int, ...] = field(default=(2,), metadata={
        "positive": True, "doc": "training-length sweep (x epochs, besides 1x)"})
    archs: tuple[str, ...] = field(default=("mlp",), metadata={
        "choices": ARCHS, "doc": "architecture sweep (besides the chapter's arch)"})
    # 0.0385: the quick profile's own rate (100 canaries among 2,500 inliers) is the baseline point
    canary_rates: tuple[float, ...] = field(default=(0.01, 0.10), metadata={
        "positive": True, "doc": "canary-rate sweep: fraction of canaries in the training set (besides the chapter's)"})
    pair_count: int = field(default=MIN_PAIRS, metadata={
        "minimum": MIN_PAIRS, "doc": "model pairs per sweep point (members of each arm's zoo, first pool)"})
    fit_level: float = field(default=0.95, metadata={
        "positive": True, "doc": "headline matched-fit level: inlier train accuracy where each model is read"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(sweeps=("batch_size", "norm"), batch_sizes=(16, 32, 64), variant_norms=("ghost", "group"),
                      fit_level=0.5),
        # quick: two sweeps, the large batch at 256 (equal steps make batch 512 take 60 epochs: about twice the
        # chapter's cost again); the others, and 512, at paper or with -p
        "quick": dict(sweeps=("batch_size", "norm"), batch_sizes=(32, 128, 256)),
        "paper": dict(batch_sizes=(32, 128, 512), learning_rates=(0.02, 0.1), epoch_factors=(2,),
                      archs=("small_cnn", "vgg"), variant_norms=("ghost", "running", "group", "layer")),
    }

    def __post_init__(self) -> None:
        if any(rate >= 0.5 for rate in self.canary_rates):
            raise ValueError(f"Parameter 'canary_rates' got {self.canary_rates!r}; allowed: fractions in (0, 0.5).")
        if self.fit_level > 1:
            raise ValueError(f"Parameter 'fit_level' (an inlier train accuracy) got {self.fit_level!r}; "
                             "allowed: a value in (0, 1].")


def check_config(cfg, params: ChapterParams) -> None:
    """Fail fast on combinations that cannot run (before any training)."""
    config.check_compared_norms(cfg)
    if "batch_size" in params.sweeps and cfg.batch_size not in params.batch_sizes:
        raise ValueError(f"Parameter 'batch_sizes' {params.batch_sizes} must contain the chapter's batch_size "
                         f"({cfg.batch_size}): the equal-steps rule scales from it.")
    too_large = [b for b in params.batch_sizes if b > member_examples(cfg)]
    if too_large:
        raise ValueError(f"Parameter 'batch_sizes' has {too_large} larger than a member's training set "
                         f"({member_examples(cfg)} examples: half of n_train + n_canaries).")
    bad = [n for n in params.variant_norms if n == "none"]
    if bad:
        raise ValueError("Parameter 'variant_norms' contains 'none'; allowed: normalizers compared WITH no norm "
                         f"({', '.join(repr(n) for n in NORMS if n != 'none')}).")


# ----------------------------------------------------------------------------- the plan of a sweep

@dataclass(frozen=True)
class Arm:
    """One population of a point: a norm and the configuration fields changed from the chapter's."""

    norm: str
    overrides: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Point:
    """One sweep point: ``arms[0]`` compared with ``arms[1]`` (first minus second), paired by member.

    Attributes:
        sweep: the sweep it belongs to; label: its name in tables (``32``, ``GroupNorm``, ``2x``);
        name: its name in metric names (``batch32``, ``norm_group``, ``epochs2x``).
    """

    sweep: str
    label: str
    name: str
    arms: tuple[Arm, Arm]


def member_examples(cfg) -> int:
    """Training examples of zoo member 0 (half of the inliers and half of the canaries, rounded down)."""
    return cfg.n_train // 2 + cfg.n_canaries // 2


def batch_size_overrides(cfg, batch_size: int, rule: str) -> dict[str, Any]:
    """Configuration fields of the equal-steps point at ``batch_size``: epochs such that a member takes as many
    SGD steps as at the chapter's batch size (rounded to whole epochs), and the peak learning rate scaled by
    ``rule`` (``linear``: x B / B0, Goyal et al. 2017; ``sqrt``: x sqrt(B / B0), Hoffer et al. 2017;
    ``constant``)."""
    if rule not in LR_RULES:
        raise ValueError(f"Parameter 'batch_lr_rule' got {rule!r}; allowed values: {', '.join(map(repr, LR_RULES))}.")
    n = member_examples(cfg)
    steps = cfg.epochs * (n // cfg.batch_size)
    epochs = max(1, round(steps / (n // batch_size)))
    ratio = batch_size / cfg.batch_size
    lr = cfg.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "constant": 1.0}[rule]
    return {"batch_size": int(batch_size), "epochs": int(epochs), "lr": float(lr)}


def canaries_for_rate(n_train: int, rate: float) -> int:
    """K such that K canaries among ``n_train`` inliers make a fraction ``rate`` of the training set."""
    return max(1, round(rate * n_train / (1 - rate)))


def canary_rate_label(n_train: int, rate: float) -> str:
    """The setting's label: the rate its whole number of canaries really gives."""
    k = canaries_for_rate(n_train, rate)
    return f"{k / (n_train + k):.1%}"


def _number_name(value: float) -> str:
    return f"{value:g}".replace(".", "p")


def _pair(overrides: dict[str, Any]) -> tuple[Arm, Arm]:
    items = tuple(sorted(overrides.items()))
    return Arm("batch", items), Arm("none", items)


def plan(cfg, params: ChapterParams, name: str) -> list[Point]:
    """The points of sweep ``name`` (:data:`SWEEPS`), the chapter's own configuration (the baseline) included
    where the sweep is BN against no norm."""
    if name not in SWEEPS:
        raise ValueError(f"Parameter 'sweep' got {name!r}; allowed values: {', '.join(map(repr, SWEEPS))}.")
    own_rate = cfg.n_canaries / (cfg.n_train + cfg.n_canaries)
    baseline = Point(name, {"length": "1x", "lr": f"{cfg.lr:g}", "arch": cfg.arch}.get(name, f"{own_rate:.1%}"),
                     {"length": "epochs1x", "lr": f"lr{_number_name(cfg.lr)}", "arch": f"arch_{cfg.arch}"}.get(
                         name, f"rate{round(100 * own_rate)}pct"), _pair({}))
    if name == "batch_size":
        return [Point(name, str(b), f"batch{b}", _pair({} if b == cfg.batch_size else
                                                       batch_size_overrides(cfg, b, params.batch_lr_rule)))
                for b in sorted(params.batch_sizes)]
    if name == "norm":  # BN first (the book's arm), then each variant, all against no norm
        return [Point(name, norm, f"norm_{norm}", (Arm(norm), Arm("none")))
                for norm in dict.fromkeys(("batch", *params.variant_norms))]
    if name == "length":
        return [baseline] + [Point(name, f"{f}x", f"epochs{f}x", _pair({"epochs": f * cfg.epochs}))
                             for f in params.epoch_factors if f != 1]
    if name == "lr":
        return [baseline] + [Point(name, f"{lr:g}", f"lr{_number_name(lr)}", _pair({"lr": lr}))
                             for lr in params.learning_rates if lr != cfg.lr]
    if name == "arch":
        return [baseline] + [Point(name, arch, f"arch_{arch}", _pair({"arch": arch}))
                             for arch in params.archs if arch != cfg.arch]
    return [baseline] + [Point(name, canary_rate_label(cfg.n_train, rate), f"rate{round(100 * rate)}pct",
                               _pair({"n_canaries": canaries_for_rate(cfg.n_train, rate)}))
                         for rate in params.canary_rates]


# ----------------------------------------------------------------------------- training and reading an arm

def arm_config(cfg, params: ChapterParams, arm: Arm):
    """The configuration of an arm's zoo: the first pool, ``pair_count`` members, the arm's overrides."""
    pool = cfg.pools[0]
    return replace(population.pool_config(cfg, pool), pools=(pool,), n_models=params.pair_count,
                   **dict(arm.overrides))


def schedule_facts(cfg, member_sizes: Sequence[int]) -> dict[str, float]:
    """What an arm's schedule gives a member besides fit: ``steps`` (SGD steps), ``exposures`` (times each
    training example is seen, on average: steps x batch / examples; the loop drops the last partial batch) and
    ``lr_integral`` (sum of the learning rate over the steps), means over members."""
    steps = np.array([cfg.epochs * (n // cfg.batch_size) for n in member_sizes], dtype=float)
    exposures = steps * cfg.batch_size / np.asarray(member_sizes, dtype=float)
    integral = [sum(train.learning_rate(s, int(total), cfg.lr, cfg.schedule) for s in range(int(total)))
                for total in steps]
    return {"steps": float(steps.mean()), "exposures": float(exposures.mean()), "lr_integral": float(np.mean(integral)),
            "epochs": int(cfg.epochs), "batch_size": int(cfg.batch_size), "lr": float(cfg.lr)}


def measure_arm(cfg, params: ChapterParams, arm: Arm, progress: bool = True) -> dict[str, Any]:
    """Train (or load) an arm's zoo and read every member.

    Returns:
        ``same_schedule`` and ``matched_fit`` (T,) canary memorization per member (NaN at matched fit where a
        member never crosses ``params.fit_level``), ``epoch_at_fit`` (T,), ``final_fit``, ``test`` (T,) final
        inlier fit and test accuracy, ``curves`` (``memorization.zoo_canary_curves``: arrays (E, T)) and
        ``schedule`` (:func:`schedule_facts`).
    """
    arm_cfg = arm_config(cfg, params, arm)
    found = population.train_population(arm_cfg, arm.norm, progress=progress)
    zoo, curves = found.zoos[0], found.curves[0]
    crossing = memorization.read_at_level(curves, params.fit_level)
    return {"norm": arm.norm, "same_schedule": curves["memorization"][-1].astype(float),
            "matched_fit": crossing["value"], "epoch_at_fit": crossing["epoch"],
            "final_fit": curves["fit"][-1].astype(float), "test": zoo.test_accuracy().numpy().astype(float),
            "curves": curves, "schedule": schedule_facts(arm_cfg, zoo.keep.sum(1).tolist())}


# ----------------------------------------------------------------------------- the inference of a point

MARGIN_METRIC = "ablation_canary_memorization"  # its margin is declared in config.EQUIVALENCE_MARGINS


def equivalence_margin() -> float:
    """The declared equivalence margin of the ablations' canary memorization (``verdict.equivalence_margin``)."""
    return float(verdict.equivalence_margin(MARGIN_METRIC))


def paired_inference(first: Sequence[float], second: Sequence[float], margin: float, alpha: float = verdict.ALPHA,
                     power: float = verdict.POWER) -> dict[str, Any]:
    """``verdict.paired_difference`` (paired t over model pairs, one pool) of ``first`` - ``second`` (one value per
    member of each arm, member t of both arms a pair), with ``verdict.equivalence`` (TOST within +-``margin``),
    the detectable difference at the same t and the book's five verdicts, none from fewer than
    :data:`MIN_PAIRS` pairs.

    Returns:
        ``mean``, ``se``, ``df``, ``ci95`` (t interval), ``p_value`` (two-sided), ``p_equivalence`` (TOST), ``n``
        (pairs with both values finite), ``detectable_difference``, ``margin``, ``unit`` ("models") and
        ``verdict``.
    """
    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Parameters 'first' {a.shape} and 'second' {b.shape} must be (T,) arrays of one shape: "
                         "one value per member of each arm, member t of both arms a pair.")
    result = verdict.paired_difference(a, b, unit="models") if a.size else verdict.stratified_t(a, unit="models")
    mean, se, df, n = result["mean"], result["se"], result["df"], result["n"]
    finite = math.isfinite(mean) and math.isfinite(se)
    out = {**result, "margin": float(margin),
           "p_equivalence": verdict.equivalence(mean, se, margin, df=df, alpha=alpha)["p_value"] if finite
           else float("nan"),
           "detectable_difference": verdict.detectable_difference(se, alpha, power, df) if finite else float("nan")}
    if n < MIN_PAIRS:
        out["verdict"] = f"inconclusive ({n} model pairs; at least {MIN_PAIRS} needed)"
    else:
        out["verdict"] = verdict.verdict(mean, se, result["p_value"], n, alpha=alpha, power=power, margin=margin,
                                         df=df)
    return out


def not_reached(arms: Sequence[dict[str, Any]], level: float) -> str | None:
    """None if every member of every arm crosses ``level``; otherwise "not reached (...)" naming who did not."""
    missing = [f"{int(np.isnan(arm['matched_fit']).sum())} of {arm['matched_fit'].size} '{arm['norm']}'"
               for arm in arms if np.isnan(arm["matched_fit"]).any()]
    if not missing:
        return None
    return f"not reached ({', '.join(missing)} models never reach fit {level:g})"


def compare_point(cfg, params: ChapterParams, point: Point, progress: bool = True) -> dict[str, Any]:
    """Train (or load) both arms of ``point`` and compare them.

    Returns:
        ``point``; ``arms`` (two :func:`measure_arm` results); per comparison (``same_schedule``,
        ``matched_fit``) a :func:`paired_inference`; at matched fit, if some member does not reach the
        level, its ``verdict`` is "not reached (...)" and no statistic is given (``reached`` False).
    """
    arms = [measure_arm(cfg, params, arm, progress=progress) for arm in point.arms]
    out: dict[str, Any] = {"point": point, "arms": arms}
    for comparison in ("same_schedule", "matched_fit"):
        result = paired_inference(arms[0][comparison], arms[1][comparison], equivalence_margin())
        missing = not_reached(arms, params.fit_level) if comparison == "matched_fit" else None
        if missing:
            result = {**paired_inference([], [], equivalence_margin()), "verdict": missing}
        out[comparison] = {**result, "reached": missing is None}
    return out


def sweep(cfg, params: ChapterParams, name: str, progress: bool = True) -> list[dict[str, Any]]:
    """:func:`compare_point` for every point of :func:`plan` (``cfg, params, name``), in order; an empty list
    when ``params.sweeps`` does not name the sweep (it does not run at this profile)."""
    if name in SWEEPS and name not in params.sweeps:
        return []
    return [compare_point(cfg, params, point, progress=progress) for point in plan(cfg, params, name)]
