"""DP-SGD (Opacus) for the "what to do" chapter: its parameters and checks, privacy accounting, and the
training of a private model population.

A private *setting* is a small model population trained like the shared zoo (T models, each on a random half
of the pool, balanced keep mask), so each model has its own IN and OUT canaries and the model is the unit of
replication: GroupNorm (or no norm) trained here with Opacus (:func:`train_private`): per-sample clipping
at ``max_grad_norm``, Gaussian noise, Poisson sampling (each example joins each step independently with
probability q = batch_size / n, as the DP-SGD analysis assumes); epsilon from Opacus's accountant at
delta = 1/n, n = each model's training-set size (:func:`train_dp_population`).

BatchNorm cannot be trained with DP-SGD: :func:`check_dp_norm` says why and what to use instead.

The trade-off against the cheap mitigations (the settings, what is measured, the Pareto front, the table,
figure and summary) is :mod:`bnlib.dp_tradeoff`. This module holds only what decides a private model: its
source (with its imports) is in the cache key of every model it trains, so presentation code lives apart.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_lib
from . import mia, models, results, train
from . import zoo as zoo_lib
from .config import NORMS

DP_NORMS = ("group", "layer", "none")  # normalizers whose output for one example ignores its batch-mates
COUPLED_NORMS = ("batch", "ghost", "running")
ACCOUNTANTS = ("rdp", "prv")


@dataclass(frozen=True)
class ChapterParams:
    """Parameters of the "what to do" chapter (validated by ``config.load(..., extras=ChapterParams)``)."""

    noise_multipliers: tuple[float, ...] = field(default=(0.5, 0.8, 1.2, 2.0, 4.0), metadata={
        "positive": True, "doc": "DP-SGD noise std / clipping norm, one setting each"})
    max_grad_norm: float = field(default=1.0, metadata={"positive": True, "doc": "DP-SGD per-sample clipping norm C"})
    delta: float = field(default=0.0, metadata={
        "minimum": 0.0, "doc": "DP delta (0: 1/n, n the training examples of each model)"})
    accountant: str = field(default="rdp", metadata={"choices": ACCOUNTANTS, "doc": "Opacus privacy accountant"})
    dp_norms: tuple[str, ...] = field(default=("group", "none"), metadata={
        "choices": NORMS, "doc": "normalizers trained with DP-SGD (not BatchNorm: see the chapter)"})
    dp_lr: float = field(default=0.5, metadata={"positive": True, "doc": "peak learning rate of DP-SGD"})
    setting_models: int = field(default=8, metadata={"minimum": 4, "doc": "models per setting beyond the shared zoos"})
    strong_weight_decay: float = field(default=5e-3, metadata={"positive": True, "doc": "weight decay of that defence"})
    large_batch: int = field(default=512, metadata={"minimum": 2, "doc": "batch size of the large-batch BN defence"})
    low_fpr: float = field(default=0.01, metadata={"positive": True, "doc": "FPR at which the LiRA TPR is read"})
    n_bootstrap: int = field(default=500, metadata={"positive": True, "doc": "bootstrap resamples"})
    timing_steps: int = field(default=6, metadata={"positive": True, "doc": "training steps timed per setting"})

    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {
        "smoke": dict(noise_multipliers=(1.0, 4.0), dp_norms=("group",), setting_models=4, large_batch=64,
                      n_bootstrap=100, timing_steps=2),
        "quick": dict(noise_multipliers=(0.7, 2.0), dp_norms=("group",), setting_models=4),
        "paper": dict(),
    }

    def __post_init__(self) -> None:
        check_privacy(noise_multipliers=self.noise_multipliers, max_grad_norm=self.max_grad_norm,
                      delta=None if self.delta == 0 else self.delta)
        for norm in self.dp_norms:
            check_dp_norm(norm)
        if self.setting_models % 2:
            raise ValueError(f"Parameter 'setting_models' got {self.setting_models}; allowed: an even number >= 4 "
                             "(every example is IN for exactly half of the models).")
        if not self.low_fpr < 1:
            raise ValueError(f"Parameter 'low_fpr' got {self.low_fpr!r}; allowed: a value in (0, 1).")


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
        raise ValueError(f"Parameter 'delta' got {delta!r}; allowed: a value in (0, 1), well below 1/n "
                         "for n training examples (0 in the chapter means 1/n).")
    if epsilon is not None and not (math.isfinite(epsilon) and epsilon > 0):
        raise ValueError(f"Parameter 'epsilon' got {epsilon!r}; allowed: a finite value > 0.")


def check_config(cfg, params: ChapterParams) -> None:
    """Fail fast on combinations that cannot run (before any training)."""
    mia.check_zoo_size(cfg.n_models)
    half = (cfg.n_train + 2 * cfg.n_canaries) // 2
    for name, value in (("large_batch", params.large_batch), ("batch_size", cfg.batch_size)):
        if value > half:
            raise ValueError(f"Parameter {name!r} ({value}) exceeds a model's training set "
                             f"(half the pool: {half}); allowed: 2..{half}.")


# ----------------------------------------------------------------------------- privacy accounting

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


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float,
                      accountant: str = "rdp") -> float:
    """The noise multiplier that spends ``target_epsilon`` in ``steps`` steps (Opacus's search)."""
    from opacus.accountants.utils import get_noise_multiplier

    check_privacy(epsilon=target_epsilon, delta=delta)
    return float(get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                      steps=steps, accountant=accountant))


# ----------------------------------------------------------------------------- DP-SGD training

@dataclass
class PrivateTraining:
    """Opacus's objects for one model: ``module`` (a GradSampleModule: after ``backward`` each parameter
    holds ``grad_sample`` (B, *shape)), ``optimizer`` (DPOptimizer: clips, sums, adds noise), ``loader``
    (Poisson sampling), with ``sample_rate`` and ``steps_per_epoch``."""

    module: nn.Module
    optimizer: torch.optim.Optimizer
    loader: torch.utils.data.DataLoader
    sample_rate: float
    steps_per_epoch: int


def make_private(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int, lr: float,
                 noise_multiplier: float, max_grad_norm: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 seed: int = 0) -> PrivateTraining:
    """Wrap ``model`` (modified in place: in-place ReLUs become out-of-place, which Opacus's hooks need) for
    DP-SGD on (x (n, C, H, W), y (n,)) with Poisson sampling of expected size ``batch_size``.

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
    return PrivateTraining(module, optimizer, private_loader, sample_rate=1 / len(loader),
                           steps_per_epoch=len(loader))


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
    """Train ``model`` in place with DP-SGD (see :func:`make_private`), the learning rate following
    ``train.learning_rate``; ``max_steps`` stops early. Leaves the model in eval mode."""
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


# ----------------------------------------------------------------------------- model populations

@dataclass
class Population:
    """One setting's models, read like a ``zoo.Zoo``: keep (T, N) bool, logits (T, N, C), labels (N,),
    is_outlier (N,), test_logits (T, n_test, C), test_labels (n_test,); ``epsilon`` for DP settings."""

    setting: str
    norm: str
    keep: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    is_outlier: torch.Tensor
    test_logits: torch.Tensor
    test_labels: torch.Tensor
    epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float | None = None

    @classmethod
    def from_zoo(cls, setting: str, zoo: zoo_lib.Zoo) -> Population:
        return cls(setting, zoo.norm, zoo.keep, zoo.logits, zoo.labels, zoo.is_outlier, zoo.test_logits,
                   zoo.test_labels)

    @property
    def n_models(self) -> int:
        return self.keep.shape[0]


def model_delta(n_examples: int, delta: float) -> float:
    """The delta of a model trained on ``n_examples``: ``delta``, or 1/n when ``delta`` is 0."""
    return 1.0 / n_examples if delta == 0 else delta


def train_dp_population(cfg, norm: str, noise_multiplier: float, params: ChapterParams,
                        progress: bool = True) -> Population:
    """``params.setting_models`` models of ``norm`` trained with DP-SGD, each on its half of the pool (the keep
    mask of a zoo of that size), cached model by model. ``epsilon``: the largest over the models (their n differ
    slightly, hence q = 1 / ceil(n / batch_size) and delta = 1/n)."""
    check_dp_norm(norm)
    n_models = params.setting_models
    experiment, pool_x, test_x = zoo_lib.zoo_inputs(cfg)
    pool_y = experiment.pool_y
    keep = data_lib.balanced_keep_mask(n_models, len(pool_y), seed=cfg.seeds[0], strata=experiment.pool_is_outlier)
    entry = results.Entry("dp_zoo", {
        **cfg.result_key(), "n_models": n_models, "norm": norm, "data_seed": cfg.seeds[0],
        "noise_multiplier": noise_multiplier, "max_grad_norm": params.max_grad_norm, "dp_lr": params.dp_lr,
        "opacus": importlib.metadata.version("opacus")},  # its per-sample gradients and noise decide the models
        code=results.code_of("dp"))
    spec = (cfg.arch, norm, pool_x.shape[1], pool_x.shape[-1], experiment.num_classes, cfg.width)
    from tqdm.auto import tqdm

    device = train.resolve_device(cfg.device)
    stored = []
    for t in tqdm(range(n_models), desc=f"DP-SGD {norm}, noise {noise_multiplier:g}", disable=not progress):
        def compute(t: int = t) -> dict[str, Any]:
            torch.manual_seed(1000 + t)
            model = models.build(*spec).to(device)
            private = train_private(model, pool_x[keep[t]].to(device), pool_y[keep[t]].to(device), epochs=cfg.epochs,
                                    batch_size=cfg.batch_size, lr=params.dp_lr, noise_multiplier=noise_multiplier,
                                    max_grad_norm=params.max_grad_norm, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay, schedule=cfg.schedule, seed=1000 + t)
            return {"state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                    "logits": train.predict_logits(model, pool_x), "test_logits": train.predict_logits(model, test_x),
                    "sample_rate": private.sample_rate, "steps": cfg.epochs * private.steps_per_epoch,
                    "n_train": int(keep[t].sum())}
        stored.append(entry.get_or_compute(f"model_{t}", compute))
    # models train on slightly different n (the keep mask balances examples, not models): report the largest
    # epsilon over models, each at its own delta = 1/n, and the largest of those deltas
    budgets = {(s["sample_rate"], s["steps"], model_delta(s["n_train"], params.delta)) for s in stored}
    spent = max(epsilon(noise_multiplier, rate, steps, delta, params.accountant) for rate, steps, delta in budgets)
    delta = max(delta for _, _, delta in budgets)
    return Population(f"{models_label(norm)} + DP-SGD", norm, keep, torch.stack([s["logits"] for s in stored]),
                      pool_y, experiment.pool_is_outlier, torch.stack([s["test_logits"] for s in stored]),
                      experiment.test_y, epsilon=spent, noise_multiplier=noise_multiplier, delta=delta)


def models_label(norm: str) -> str:
    from .plots import NORM_LABELS

    return NORM_LABELS.get(norm, norm)
