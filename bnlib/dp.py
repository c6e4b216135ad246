"""DP-SGD (Opacus) for the "what to do" chapter: its parameters and checks, privacy accounting, learning-rate
tuning and the training of a private model population.

A private *setting* is a model population trained like the shared zoo (``cfg.n_models`` models, member t on
row t of the zoo's balanced keep mask, initialized with the zoo's seed of member t), so member t of every
setting is paired with member t of the BN and no-norm zoos (same training examples, same initial seed), each
model has its own IN and OUT canaries, and LiRA attacks every setting with the same number of shadow models
(the other T - 1 models of its own recipe). Models are trained with Opacus (:func:`train_private`): per-sample
clipping at ``max_grad_norm``, Gaussian noise, Poisson sampling at Opacus's rate q = 1 / ceil(n / B) for
int(1 / q) steps an epoch (:func:`opacus_schedule`).

Privacy: delta by the literature's rule (:func:`model_delta`: 1e-5 for n <= 1e5 training examples, 1/(10 n)
above; a delta >= 1/n is refused), epsilon from Opacus's RDP and PRV accountants side by side (:func:`epsilon`),
noise calibrated to a target epsilon with Opacus's search (:func:`noise_for_epsilon`). The learning rate of each
noise level is chosen on a grid, on tuning models that are not evaluated (:func:`tune_learning_rate`).

BatchNorm cannot be trained with DP-SGD: :func:`check_dp_norm` says why and what to use instead.

The trade-off against the cheap mitigations (the settings, what is measured, the fronts, the table, figure and
summary) is :mod:`bnlib.dp_tradeoff`. This module holds only what decides a private model: its source (with its
imports) is in the cache key of every model it trains, so presentation and measurement code live apart.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_lib
from . import models, results, train
from . import zoo as zoo_lib
from .config import NORMS

DP_NORMS = ("group", "layer", "none")  # normalizers whose output for one example ignores its batch-mates
COUPLED_NORMS = ("batch", "ghost", "running")
ACCOUNTANTS = ("rdp", "prv")
LR_RULES = ("linear", "sqrt")  # how the large-batch defence scales its learning rate (see dp_tradeoff)
LITERATURE_DELTA = 1e-5  # the delta of the DP-SGD literature for datasets of up to 1e5 examples
LITERATURE_DELTA_MAX_N = 100_000  # above this many examples: delta = 1/(10 n)
TUNING_KEEP_SEED = 7_000  # tuning models' keep masks: data seed + this (never an evaluated model's mask)
TUNING_INIT_SEED = 5_000  # tuning model t is initialized with this + t (zoo members use 1000 + t)


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the "what to do" chapter (validated by ``config.load(..., extras=ChapterParams)``)."""

    noise_multipliers: tuple[float, ...] = field(default=(0.5, 0.8, 1.2, 2.0, 4.0), metadata={
        "positive": True, "doc": "DP-SGD noise std / clipping norm, one setting each"})
    target_epsilons: tuple[float, ...] = field(default=(8.0,), metadata={
        "positive": True, "doc": "one more setting each, its noise calibrated to this epsilon (at the delta used)"})
    max_grad_norm: float = field(default=1.0, metadata={"positive": True, "doc": "DP-SGD per-sample clipping norm C"})
    delta: float = field(default=0.0, metadata={
        "minimum": 0.0, "doc": "DP delta, below 1/n (0: the literature's rule, 1e-5 up to n of 1e5, else 1/(10 n))"})
    accountant: str = field(default="rdp", metadata={
        "choices": ACCOUNTANTS, "doc": "Opacus accountant that calibrates the target epsilons (both are reported)"})
    dp_norms: tuple[str, ...] = field(default=("group", "none"), metadata={
        "choices": NORMS, "doc": "normalizers trained with DP-SGD (not BatchNorm: see the chapter)"})
    dp_lrs: tuple[float, ...] = field(default=(0.2, 0.5, 1.0), metadata={
        "positive": True, "doc": "learning-rate grid of DP-SGD, tuned per noise level"})
    setting_models: int = field(default=0, metadata={
        "minimum": 0, "doc": "models of every setting alike, BN and no norm included (0: n_models, the zoos' size)"})
    tuning_models: int = field(default=2, metadata={
        "positive": True, "doc": "tuning models per noise level and learning rate (never evaluated)"})
    strong_weight_decay: float = field(default=5e-3, metadata={"positive": True, "doc": "weight decay of that defence"})
    large_batch: int = field(default=512, metadata={"minimum": 2, "doc": "batch size of the large-batch BN defence"})
    large_batch_lr_rule: str = field(default="linear", metadata={
        "choices": LR_RULES, "doc": "large batch: learning rate scaled by B/b (linear) or sqrt(B/b)"})
    low_fpr: float = field(default=0.01, metadata={"positive": True, "doc": "FPR at which the LiRA TPR is read"})
    n_bootstrap: int = field(default=500, metadata={"positive": True, "doc": "bootstrap resamples"})
    front_high: float = field(default=0.9, metadata={
        "positive": True, "doc": "front probability from which the prose calls a setting on the front"})
    timing_steps: int = field(default=6, metadata={"positive": True, "doc": "training steps timed per setting"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(noise_multipliers=(1.0, 4.0), dp_norms=("group",), large_batch=64, tuning_models=1,
                      n_bootstrap=100, timing_steps=2),
        "quick": dict(noise_multipliers=(0.7, 2.0), dp_norms=("group",), large_batch=256, tuning_models=1),
        "paper": dict(),
    }

    def __post_init__(self) -> None:
        check_privacy(noise_multipliers=self.noise_multipliers, max_grad_norm=self.max_grad_norm,
                      delta=None if self.delta == 0 else self.delta)
        for target in self.target_epsilons:
            check_privacy(epsilon=target)
        for norm in self.dp_norms:
            check_dp_norm(norm)
        if len(self.dp_lrs) < 1 or len(set(self.dp_lrs)) != len(self.dp_lrs):
            raise ValueError(f"Parameter 'dp_lrs' got {self.dp_lrs!r}; allowed: distinct positive learning rates "
                             "(at least 3 for a tuning grid that can find an interior best).")
        if self.setting_models and (self.setting_models < 4 or self.setting_models % 2):
            raise ValueError(f"Parameter 'setting_models' got {self.setting_models}; allowed: 0 (n_models) or an even "
                             "number >= 4 (every example IN for half of the models; LiRA needs IN and OUT shadows).")
        for name in ("low_fpr", "front_high"):
            if not getattr(self, name) < 1:
                raise ValueError(f"Parameter {name!r} got {getattr(self, name)!r}; allowed: a value in (0, 1).")


def check_dp_norm(norm: str) -> None:
    """Fail unless ``norm`` can be trained with DP-SGD.

    Raises:
        ValueError: for BatchNorm and its variants, explaining why (per-sample gradients under BN) and
            naming the alternatives.
    """
    if norm in COUPLED_NORMS:
        raise ValueError(
            f"DP-SGD cannot train norm={norm!r}: DP-SGD clips each example's own gradient, and under BatchNorm "
            "an example's output (so its loss and gradient) depends on the other examples of its batch through "
            "the batch mean and variance (the running-statistics variant leaks batch statistics into its "
            "buffers without noise), so per-sample gradients are not defined and one example's influence is "
            "not bounded by the clipping norm. Opacus refuses these layers too (its ModuleValidator.fix "
            f"replaces BatchNorm with GroupNorm). Allowed: {', '.join(map(repr, DP_NORMS))}.")
    if norm not in DP_NORMS:
        raise ValueError(f"Parameter 'dp_norms' got {norm!r}; allowed values: {', '.join(map(repr, DP_NORMS))}.")


def check_privacy(*, noise_multipliers: tuple[float, ...] = (), max_grad_norm: float | None = None,
                  delta: float | None = None, epsilon: float | None = None) -> None:
    """Validate DP-SGD's privacy parameters before any work; errors name the parameter and what is allowed."""
    for noise in noise_multipliers:
        if not (math.isfinite(noise) and noise > 0):
            raise ValueError(f"Parameter 'noise_multipliers' got {noise!r}; allowed: finite values > 0 "
                             "(noise standard deviation in units of the clipping norm).")
    if max_grad_norm is not None and not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"Parameter 'max_grad_norm' got {max_grad_norm!r}; allowed: a finite value > 0.")
    if delta is not None and not 0 < delta < 1:
        raise ValueError(f"Parameter 'delta' got {delta!r}; allowed: a value in (0, 1), below 1/n for n training "
                         "examples (0 in the chapter: 1e-5 for n <= 1e5, else 1/(10 n)).")
    if epsilon is not None and not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"Parameter 'epsilon' got {epsilon!r}; allowed: a finite value > 0.")


def model_delta(n_examples: int, delta: float = 0.0) -> float:
    """The delta of a model trained on ``n_examples``: ``delta`` if given (> 0), else the literature's rule,
    1e-5 for n <= 1e5 and 1/(10 n) above.

    Raises:
        ValueError: naming ``delta`` when it is >= 1/n (see :func:`check_delta`).
    """
    if n_examples < 1:
        raise ValueError(f"Parameter 'n_examples' got {n_examples!r}; allowed: a positive count.")
    if delta == 0:
        return LITERATURE_DELTA if n_examples <= LITERATURE_DELTA_MAX_N else 1 / (10 * n_examples)
    check_delta(delta, n_examples)
    return float(delta)


def check_delta(delta: float, n_examples: int) -> None:
    """Refuse a delta that promises nothing: delta >= 1/n (a mechanism that publishes one training record
    chosen at random is (0, 1/n)-DP)."""
    check_privacy(delta=delta)
    if delta >= 1 / n_examples:
        raise ValueError(
            f"Parameter 'delta' got {delta:g}, which is >= 1/n = {1 / n_examples:.3g} for n = {n_examples} training "
            "examples per model: a mechanism that publishes one training record chosen at random meets delta = 1/n, "
            "so such a delta promises nothing. Allowed: 0 < delta < 1/n, by the literature's rule 1e-5 where "
            "n <= 100000 and at most 1/(10 n) above (0 picks that rule).")


def setting_config(cfg, params: ChapterParams):
    """``cfg`` with ``n_models`` = the models of every setting (``params.setting_models``, or ``cfg.n_models``)."""
    return replace(cfg, n_models=params.setting_models or cfg.n_models)


def check_config(cfg, params: ChapterParams) -> None:
    """Fail fast on combinations that cannot run (before any training)."""
    cfg = setting_config(cfg, params)
    if cfg.n_models < 4 or cfg.n_models % 2:
        raise ValueError(f"Parameter 'n_models' is {cfg.n_models}; allowed: an even number >= 4 (every setting has "
                         "n_models models, each example IN for half of them, and leave-one-out LiRA needs IN and "
                         "OUT shadows for every example).")
    half = (cfg.n_train + cfg.n_canaries) // 2  # a model's training set: half of the pool (inliers + canaries)
    for name, value in (("large_batch", params.large_batch), ("batch_size", cfg.batch_size)):
        if value > half:
            raise ValueError(f"Parameter {name!r} ({value}) exceeds a model's training set "
                             f"(half the pool: {half}); allowed: 2..{half}.")
    if params.delta:
        check_delta(params.delta, half + 1)  # the largest n of a model (strata of odd size give +-1)


# ----------------------------------------------------------------------------- privacy accounting

def opacus_schedule(n_examples: int, batch_size: int, epochs: int) -> tuple[float, int]:
    """(sample rate q, steps) of DP-SGD as Opacus runs it: ``make_private`` sets q = 1 / len(loader) =
    1 / ceil(n / B) (not B / n), and its Poisson sampler runs int(1 / q) steps an epoch."""
    rate = 1 / math.ceil(n_examples / batch_size)
    return rate, epochs * int(1 / rate)


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon of ``steps`` DP-SGD steps with Poisson sampling rate ``sample_rate``, from Opacus's accountant.

    Args:
        accountant: ``rdp`` (Renyi DP, an upper bound) or ``prv`` (privacy random variables, tighter).
    """
    from opacus.accountants import create_accountant

    check_privacy(noise_multipliers=(noise_multiplier,), delta=delta)
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"Parameter 'accountant' got {accountant!r}; allowed values: "
                         f"{', '.join(map(repr, ACCOUNTANTS))}.")
    if not 0 < sample_rate <= 1 or steps < 1:
        raise ValueError(f"Sampling rate {sample_rate!r} and steps {steps!r}; allowed: 0 < rate <= 1, steps >= 1.")
    ledger = create_accountant(mechanism=accountant)
    ledger.history = [(noise_multiplier, sample_rate, steps)]
    return float(ledger.get_epsilon(delta=delta))


def epsilons(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> dict[str, float]:
    """Epsilon under every accountant of :data:`ACCOUNTANTS` (RDP and PRV), side by side."""
    return {name: epsilon(noise_multiplier, sample_rate, steps, delta, name) for name in ACCOUNTANTS}


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                      accountant: str = "rdp") -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``steps`` steps (Opacus's search)."""
    from opacus.accountants.utils import get_noise_multiplier

    check_privacy(epsilon=target_epsilon, delta=delta)
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant))


def member_sizes(cfg, n_models: int | None = None, keep_seed: int | None = None) -> list[int]:
    """Training-set size of each of the first ``n_models`` (default ``cfg.n_models``) rows of the keep mask."""
    experiment = data_lib.make_experiment_data(cfg, seed=cfg.seeds[0])
    keep = data_lib.balanced_keep_mask(max(n_models or cfg.n_models, 2), len(experiment.pool_y),
                                       seed=cfg.seeds[0] if keep_seed is None else keep_seed,
                                       strata=experiment.pool_is_outlier)
    return [int(row.sum()) for row in keep]


def calibrated_noise(cfg, params: ChapterParams, target_epsilon: float) -> float:
    """The noise multiplier at which every model of a setting spends at most ``target_epsilon`` (under
    ``params.accountant``, at its own delta): Opacus's search for each distinct training-set size, the largest."""
    noises = []
    for n in sorted(set(member_sizes(cfg))):
        rate, steps = opacus_schedule(n, cfg.batch_size, cfg.epochs)
        noises.append(noise_for_epsilon(target_epsilon, rate, steps, model_delta(n, params.delta), params.accountant))
    return max(noises)


# ----------------------------------------------------------------------------- DP-SGD training

@dataclass
class PrivateTraining:
    """Opacus's objects for one model: ``module`` (a GradSampleModule: after ``backward`` each parameter
    holds ``grad_sample`` (B, *shape)), ``optimizer`` (DPOptimizer: clips, sums, adds noise), ``loader``
    (Poisson sampling), with Opacus's ``sample_rate`` and ``steps_per_epoch`` (its sampler's length)."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: torch.utils.data.DataLoader
    sample_rate: float
    steps_per_epoch: int


def make_private(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, lr: float,
                 noise_multiplier: float, max_grad_norm: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 seed: int = 0) -> PrivateTraining:
    """Wrap ``model`` (modified in place: in-place ReLUs become out-of-place, which Opacus's hooks need) for
    DP-SGD on (x (n, C, H, W), y (n,)) with Poisson sampling of expected size about ``batch_size``.

    Raises:
        ValueError: for a model with BatchNorm (see :func:`check_dp_norm`) or bad privacy parameters.
    """
    from opacus import PrivacyEngine
    from opacus.validators import ModuleValidator

    check_privacy(noise_multipliers=(noise_multiplier,), max_grad_norm=max_grad_norm)
    if any(isinstance(m, (nn.modules.batchnorm._BatchNorm, models._BatchNormVariant)) for m in model.modules()):
        check_dp_norm("batch")
    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise ValueError(f"Opacus cannot train this model with DP-SGD: {problems}")
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = False
    dataset = torch.utils.data.TensorDataset(x, y)  # on the model's device; Poisson indices are drawn on the CPU
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    with warnings.catch_warnings():  # "secure RNG turned off": fine for research, said in the chapter
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant="rdp")  # accounting is done by :func:`epsilon`, not by the engine
        module, optimizer, private_loader = engine.make_private(
            module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm, poisson_sampling=True,
            noise_generator=torch.Generator().manual_seed(10_000 + seed))
    return PrivateTraining(module, optimizer, private_loader, sample_rate=float(private_loader.sample_rate),
                           steps_per_epoch=len(private_loader))


@contextlib.contextmanager
def quiet_hooks() -> Iterator[None]:
    """Silence torch's note that Opacus's backward hook on the first layer fires for its output only (the
    input images need no gradient); the per-sample gradients of the parameters are unaffected."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        yield


def train_private(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
                  noise_multiplier: float, max_grad_norm: float, momentum: float = 0.9, weight_decay: float = 0.0,
                  schedule: str = "onecycle", seed: int = 0, max_steps: int | None = None) -> PrivateTraining:
    """Train ``model`` in place with DP-SGD (see :func:`make_private`) for ``epochs`` times Opacus's steps per
    epoch, the learning rate following ``train.learning_rate``; ``max_steps`` stops early. Leaves the model in
    eval mode."""
    torch.manual_seed(seed)
    private = make_private(model, x, y, batch_size=batch_size, lr=lr, noise_multiplier=noise_multiplier,
                           max_grad_norm=max_grad_norm, momentum=momentum, weight_decay=weight_decay, seed=seed)
    total, step = epochs * private.steps_per_epoch, 0
    private.module.train()
    for _ in range(epochs):
        for xb, yb in private.loader:
            if max_steps is not None and step >= max_steps:
                break
            for group in private.optimizer.param_groups:
                group["lr"] = train.learning_rate(step, total, lr, schedule)
            step += 1
            if len(xb) == 0:  # an empty Poisson batch (probability (1 - q)^n, negligible here) is skipped; the
                continue      # step still counts in epsilon (steps below), which can only overstate it
            private.optimizer.zero_grad(set_to_none=True)
            with quiet_hooks():
                F.cross_entropy(private.module(xb), yb).backward()
            private.optimizer.step()
    model.eval()
    return private


# ----------------------------------------------------------------------------- private members (tasks)

@dataclass(frozen=True)
class Member:
    """One private model to train: where it is stored (``entry``, ``name``), its recipe and its data (row
    ``row`` of the balanced keep mask drawn with ``keep_seed``; initial seed ``init_seed``)."""

    entry: results.Entry
    name: str
    cfg: Any
    norm: str
    noise_multiplier: float
    lr: float
    max_grad_norm: float
    keep_seed: int
    row: int
    init_seed: int


def keep_row(experiment: data_lib.ExperimentData, keep_seed: int, row: int) -> torch.Tensor:
    """(N,) bool: row ``row`` of the balanced keep mask of seed ``keep_seed`` (the same in a mask of any size)."""
    return data_lib.balanced_keep_mask(max(row + 1, 2), len(experiment.pool_y), seed=keep_seed,
                                       strata=experiment.pool_is_outlier)[row]


def train_member(member: Member, inputs=None, cache: str | None = None) -> None:
    """Train ``member`` with DP-SGD (one thread, so its bits do not depend on where it runs) and save its state,
    pool and test logits, Opacus's sample rate and steps and its training-set size, unless already stored."""
    if cache is not None:
        os.environ["BNLIB_CACHE"] = str(cache)
    if member.entry.has(member.name):
        return
    cfg = member.cfg
    experiment, pool_x, test_x = inputs if inputs is not None else zoo_lib._worker_inputs(cfg)
    keep = keep_row(experiment, member.keep_seed, member.row)
    device = train.resolve_device(cfg.device)
    with zoo_lib.one_thread():
        torch.manual_seed(member.init_seed)
        model = models.build(*zoo_lib.zoo_spec(cfg, member.norm, experiment, pool_x)).to(device)
        private = train_private(model, pool_x[keep].to(device), experiment.pool_y[keep].to(device), epochs=cfg.epochs,
                                batch_size=cfg.batch_size, lr=member.lr, noise_multiplier=member.noise_multiplier,
                                max_grad_norm=member.max_grad_norm, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, schedule=cfg.schedule, seed=member.init_seed)
        value = {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                 "logits": train.predict_logits(model, pool_x), "test_logits": train.predict_logits(model, test_x),
                 "keep": keep, "sample_rate": private.sample_rate, "steps": cfg.epochs * private.steps_per_epoch,
                 "n_train": int(keep.sum())}
    member.entry.save(member.name, value)


def train_members(cfg, members: Sequence[Member], desc: str, progress: bool = True) -> None:
    """Train the members not yet stored: here (one worker) or in ``zoo.local_workers(cfg)`` spawned processes
    with one thread each (as ``zoo.train_members_locally`` does)."""
    from tqdm.auto import tqdm

    todo = [m for m in members if not m.entry.has(m.name)]
    if not todo:
        return
    inputs = zoo_lib.zoo_inputs(cfg)
    workers = min(zoo_lib.local_workers(cfg), len(todo))
    bar = tqdm(total=len(todo), desc=f"{desc} ({len(members) - len(todo)} cached, {workers} workers)",
               disable=not progress)
    if workers <= 1:
        for member in todo:
            train_member(member, inputs)
            bar.update(1)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=zoo_lib._init_worker, initargs=(cfg, inputs)) as pool:
            futures = [pool.submit(train_member, member, None, str(results.cache_root())) for member in todo]
            for future in as_completed(futures):
                future.result()  # re-raises a worker's error here
                bar.update(1)
    bar.close()


def member_entry(kind: str, cfg, norm: str, noise_multiplier: float, lr: float, params: ChapterParams,
           **extra: Any) -> results.Entry:
    """Members' cache entry: not ``n_models`` (member t is the same in a population of any size)."""
    return results.Entry(kind, {
        **cfg.result_key("n_models"), "norm": norm, "data_seed": cfg.seeds[0], "noise_multiplier": noise_multiplier,
        "max_grad_norm": params.max_grad_norm, "lr": lr, **extra,
        "opacus": importlib.metadata.version("opacus")},  # its per-sample gradients and noise decide the models
        code=results.code_of("dp"))


# ----------------------------------------------------------------------------- learning-rate tuning

def tune_learning_rate(cfg, norm: str, noise_multiplier: float, params: ChapterParams,
                       progress: bool = True) -> dict[str, Any]:
    """Choose DP-SGD's learning rate for one noise level on ``params.tuning_models`` tuning models per value of
    ``params.dp_lrs``. A tuning model trains on a row of a keep mask of its own (data seed +
    ``TUNING_KEEP_SEED``, so never an evaluated model's training set) from its own initial seed, and is scored
    by its accuracy on the pool's in-distribution examples it did not train on (a validation set: the test
    set is not used); the tuning models are then discarded. The tuning is not in epsilon (it reads the pool).

    Returns:
        ``{"grid": [lr...], "validation_accuracy": [[per tuning model] per lr], "mean": [per lr],
        "chosen": lr with the highest mean (the smallest such), "n_tuning_models": k}``.
    """
    check_dp_norm(norm)
    keep_seed = cfg.seeds[0] + TUNING_KEEP_SEED
    grid = list(params.dp_lrs)
    members = {lr: [Member(member_entry("dp_tuning", cfg, norm, noise_multiplier, lr, params, keep_seed=keep_seed),
                           f"model_{t}", cfg, norm, noise_multiplier, lr, params.max_grad_norm, keep_seed, t,
                           TUNING_INIT_SEED + t) for t in range(params.tuning_models)] for lr in grid}
    train_members(cfg, [m for group in members.values() for m in group],
                  desc=f"DP-SGD {norm}, noise {noise_multiplier:.3g}: learning-rate grid", progress=progress)
    experiment = data_lib.make_experiment_data(cfg, seed=cfg.seeds[0])
    accuracy = []
    for lr in grid:
        per_model = []
        for member in members[lr]:
            stored = member.entry.load(member.name)
            held_out = ~stored["keep"] & ~experiment.pool_is_outlier  # in-distribution, not trained on
            correct = stored["logits"].argmax(-1) == experiment.pool_y
            per_model.append(float(correct[held_out].float().mean()))
        accuracy.append(per_model)
    means = [sum(a) / len(a) for a in accuracy]
    return {"grid": grid, "validation_accuracy": accuracy, "mean": means, "chosen": grid[means.index(max(means))],
            "n_tuning_models": params.tuning_models}


# ----------------------------------------------------------------------------- model populations

@dataclass
class Population:
    """One setting's models, read like a ``zoo.Zoo``: keep (T, N) bool, logits (T, N, C), labels (N,),
    is_outlier (N,), test_logits (T, n_test, C), test_labels (n_test,). For DP settings: ``epsilon`` (the
    largest over the models under the calibrating accountant), ``epsilons`` (``{"rdp", "prv"}``, each the
    largest over the models), ``delta`` (the largest), the noise, learning rate, sample rate and steps."""

    setting: str
    norm: str
    keep: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    is_outlier: torch.Tensor
    test_logits: torch.Tensor
    test_labels: torch.Tensor
    epsilon: float | None = None
    epsilons: dict[str, float] | None = None
    noise_multiplier: float | None = None
    delta: float | None = None
    lr: float | None = None
    sample_rate: float | None = None
    steps: int | None = None

    @classmethod
    def from_zoo(cls, setting: str, zoo: zoo_lib.Zoo) -> Population:
        return cls(setting, zoo.norm, zoo.keep, zoo.logits, zoo.labels, zoo.is_outlier, zoo.test_logits,
                   zoo.test_labels)

    @property
    def n_models(self) -> int:
        return self.keep.shape[0]


def train_dp_population(cfg, norm: str, noise_multiplier: float, lr: float, params: ChapterParams,
                        progress: bool = True) -> Population:
    """``cfg.n_models`` models of ``norm`` trained with DP-SGD at learning rate ``lr``: member t on row t of the
    zoo's keep mask from the zoo's initial seed of member t (so paired with zoo member t), cached one by one.
    Privacy: each model at its own delta (:func:`model_delta`) and Opacus's q and steps; the population reports
    the largest epsilon over its models under each accountant, and the largest delta."""
    check_dp_norm(norm)
    entry = member_entry("dp_zoo", cfg, norm, noise_multiplier, lr, params)
    members = [Member(entry, zoo_lib.member_name(t), cfg, norm, noise_multiplier, lr, params.max_grad_norm,
                      cfg.seeds[0], t, zoo_lib.member_seed(t)) for t in range(cfg.n_models)]
    train_members(cfg, members, desc=f"DP-SGD {norm}, noise {noise_multiplier:.3g}", progress=progress)
    stored = [entry.load(m.name) for m in members]
    experiment = data_lib.make_experiment_data(cfg, seed=cfg.seeds[0])
    budgets = {(s["sample_rate"], s["steps"], model_delta(s["n_train"], params.delta)) for s in stored}
    spent = [epsilons(noise_multiplier, rate, steps, delta) for rate, steps, delta in budgets]
    by_accountant = {name: max(e[name] for e in spent) for name in ACCOUNTANTS}
    rates = {rate for rate, _, _ in budgets}
    return Population("", norm, torch.stack([s["keep"] for s in stored]), torch.stack([s["logits"] for s in stored]),
                      experiment.pool_y, experiment.pool_is_outlier, torch.stack([s["test_logits"] for s in stored]),
                      experiment.test_y, epsilon=by_accountant[params.accountant], epsilons=by_accountant,
                      noise_multiplier=noise_multiplier, delta=max(delta for _, _, delta in budgets), lr=lr,
                      sample_rate=max(rates), steps=max(steps for _, steps, _ in budgets))
