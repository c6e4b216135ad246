"""Train K models of one architecture on K subsets of one pool: one by one, or all at once.

Shadow models (LiRA) and subsampled models (Feldman-Zhang) are K copies of one network, each trained
on its own subset ``keep[k]`` of a pool of examples. Two ways to train them give the same models:

``sequential``
    :func:`bnlib.train.fit` on each model in turn. The pool is normalized and moved to the device
    once, not once per model.
``vmap``
    all K models at once: their parameters and buffers are stacked into (K, ...) tensors and one
    forward pass over a (K, B, C, H, W) batch runs every model on its own batch
    (``torch.func.functional_call`` under ``torch.vmap``; a convolution becomes one grouped
    convolution). BatchNorm in training mode normalizes each model's batch by that batch's own
    statistics and updates that model's own running statistics, exactly as training the models one
    by one (``tests/test_ensemble.py`` checks it). One SGD step updates all stacked parameters;
    SGD is elementwise, so this is K independent optimizers.

Which is faster depends on the device. On the project's 2-core CPU the stacked forward pass loses to
the plain loop for small BN CNNs (vmap 0.25-0.35x, grouped convolutions 0.54x of sequential,
measured), because the CPU is already busy with one model and the stacked kernels are less
optimized; on a GPU one small model leaves the device idle and the stacked pass runs K models in
roughly the time of one. :func:`choose_path` picks ``vmap`` on CUDA and ``sequential`` elsewhere;
``benchmarks/ensemble_training.py`` measures both.

Both paths train in float32 on every device (the precision policy of ``bnlib.train.accelerate``: no
autocast), so on CUDA they agree to float32 rounding (tested at 1e-3) and on the CPU exactly.

Batches are identical in both paths: model k draws its permutation of its own examples from
``torch.Generator().manual_seed(seeds[k])`` each epoch and drops the last incomplete batch, as
:func:`bnlib.train.fit` does.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import train

TrainingPath = Literal["sequential", "vmap"]  # not "Path": that reads as pathlib.Path
PATHS = ("auto", "sequential", "vmap")
MAX_CONCURRENT = 16  # models trained at once on the vmap path (memory grows linearly with it)


def choose_path(device: torch.device | str) -> TrainingPath:
    """The faster training path for ``device``: ``vmap`` on CUDA, ``sequential`` on CPU and MPS."""
    return "vmap" if torch.device(device).type == "cuda" else "sequential"


def _check_path(path: str, device: torch.device) -> TrainingPath:
    if path not in PATHS:
        raise ValueError(f"Parameter 'path' got {path!r}; allowed values: {', '.join(map(repr, PATHS))}.")
    return choose_path(device) if path == "auto" else path


@dataclass
class TrainedModels:
    """What :func:`train_models` returns.

    Attributes:
        models: the K trained models, in eval mode, on the training device.
        snapshots: (E, K, M, num_classes) float16 eval-mode logits on ``snapshot_x`` after each epoch of
            ``snapshot_epochs`` (E = 0 when none were asked for).
        path: the path that trained them.
        states: per model, the state dicts (CPU copies) after each epoch of ``snapshot_epochs`` when
            ``snapshot_states`` was asked for, else empty lists.
    """

    models: list[nn.Module]
    snapshots: torch.Tensor
    path: TrainingPath
    states: list[list[dict[str, torch.Tensor]]] = dataclasses.field(default_factory=list)


def train_models(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor,
                 seeds: Sequence[int], *, epochs: int, batch_size: int, lr: float, momentum: float = 0.9,
                 weight_decay: float = 5e-4, schedule: str = "onecycle", snapshot_x: torch.Tensor | None = None,
                 snapshot_epochs: Sequence[int] = (), path: str = "auto", progress: bool = True,
                 snapshot_states: bool = False) -> TrainedModels:
    """Train ``models[k]`` in place on ``x[keep[k]], y[keep[k]]`` with SGD, as :func:`bnlib.train.fit` would.

    Args:
        models: K initialized networks of one architecture, all on the training device.
        x, y: the pool, (N, C, H, W) normalized and (N,) labels, on any device.
        keep: (K, N) bool, which pool examples model k trains on.
        seeds: K seeds of the per-epoch shuffling (``seed`` of :func:`bnlib.train.fit`).
        snapshot_x: (M, C, H, W) inputs whose eval-mode logits are recorded after each epoch (1-based) in
            ``snapshot_epochs``.
        path: ``auto`` (:func:`choose_path`), ``sequential`` or ``vmap``.
        snapshot_states: also keep each model's state dict after each epoch in ``snapshot_epochs``
            (``TrainedModels.states``; for the influence probes at fit-level crossings).

    Returns:
        :class:`TrainedModels` (the models are also changed in place and left in eval mode).
    """
    if not models:
        raise ValueError("Parameter 'models' is empty; allowed: one or more networks.")
    if keep.shape != (len(models), len(y)) or len(seeds) != len(models):
        raise ValueError(f"Parameters 'keep' {tuple(keep.shape)} and 'seeds' ({len(seeds)}) must match "
                         f"(len(models), len(y)) = ({len(models)}, {len(y)}).")
    device = next(models[0].parameters()).device
    path = _check_path(path, device)
    x, y, keep = x.to(device), y.to(device), keep.cpu()
    snapshot_x = None if snapshot_x is None or not snapshot_epochs else snapshot_x.to(device)
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule)
    wanted = set(snapshot_epochs) if snapshot_x is not None else set()
    snapshots: list[list[torch.Tensor]] = [[] for _ in models]  # per model: E tensors (M, C)
    states: list[list[dict[str, torch.Tensor]]] = [[] for _ in models]  # per model: E state dicts
    keep_states = bool(snapshot_states and wanted)
    bar = tqdm(total=len(models), desc=f"train {len(models)} models ({path})", disable=not progress, leave=False)
    if path == "sequential":
        for k, model in enumerate(models):
            _fit_one(model, x, y, keep[k], seeds[k], settings, snapshot_x, wanted, snapshots[k],
                     states[k] if keep_states else None)
            bar.update()
    else:
        # models whose subsets give the same number of steps share a learning-rate schedule
        steps = [int(keep[k].sum()) // batch_size for k in range(len(models))]
        for group_steps in sorted(set(steps)):
            group = [k for k in range(len(models)) if steps[k] == group_steps]
            group_snapshots, group_states = _fit_stacked(
                [models[k] for k in group], x, y, keep[group], [seeds[k] for k in group], settings, snapshot_x,
                wanted, keep_states)
            for k, taken, kept in zip(group, group_snapshots, group_states, strict=True):
                snapshots[k], states[k] = taken, kept
            bar.update(len(group))
    bar.close()
    stacked = (torch.stack([torch.stack(s) for s in snapshots], dim=1) if wanted
               else torch.empty(0, len(models), 0, 0, dtype=torch.float16))
    return TrainedModels(models=list(models), snapshots=stacked, path=path, states=states)


def _fit_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, member: torch.Tensor, seed: int, settings: dict,
             snapshot_x: torch.Tensor | None, wanted: set[int], snapshots: list[torch.Tensor],
             states: list[dict[str, torch.Tensor]] | None = None) -> None:
    def on_eval(trained: nn.Module, record: dict) -> None:
        if round(record["epoch"]) in wanted:
            snapshots.append(train.predict_logits(trained, snapshot_x).half())
            if states is not None:
                states.append({name: v.detach().cpu().clone() for name, v in trained.state_dict().items()})

    index = member.nonzero().squeeze(1).to(x.device)
    train.fit(model, x[index], y[index], seed=seed, on_eval=on_eval if wanted else None, progress=False, **settings)


def _stacked_forward(template: nn.Module):
    """f(params, buffers, x) -> logits for stacked state: vmapped over models, batch (K, B, ...) -> (K, B, C)."""
    def forward(params: dict, buffers: dict, inputs: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(template, (params, buffers), (inputs,))

    return forward


def _stacked_logits(template: nn.Module, params: dict, buffers: dict, x: torch.Tensor,
                    batch_size: int = 1024) -> torch.Tensor:
    """(K, M, C) eval-mode logits of every stacked model on the same inputs x (M, ...), on the CPU."""
    template.eval()
    run = torch.vmap(_stacked_forward(template), in_dims=(0, 0, None))
    with torch.no_grad():
        return torch.cat([run(params, buffers, x[i:i + batch_size]).float().cpu()
                          for i in range(0, len(x), batch_size)], dim=1)


def _fit_stacked(models: list[nn.Module], x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, seeds: list[int],
                 settings: dict, snapshot_x: torch.Tensor | None, wanted: set[int], keep_states: bool = False
                 ) -> tuple[list[list[torch.Tensor]], list[list[dict[str, torch.Tensor]]]]:
    """Train ``models`` (same number of steps per epoch) concurrently; returns per-model snapshot lists and
    per-model state-dict lists (empty unless ``keep_states``)."""
    device, count, batch_size = x.device, len(models), settings["batch_size"]
    members = [keep[k].nonzero().squeeze(1).to(device) for k in range(count)]  # pool indices of each subset
    steps_per_epoch = len(members[0]) // batch_size
    total = settings["epochs"] * steps_per_epoch
    template = copy.deepcopy(models[0])
    for model in models:
        model.train()
    params, buffers = torch.func.stack_module_state(models)  # name -> (K, ...); params are fresh leaves
    optimizer = torch.optim.SGD(params.values(), lr=settings["lr"], momentum=settings["momentum"],
                                weight_decay=settings["weight_decay"])
    run = torch.vmap(_stacked_forward(template), in_dims=(0, 0, 0))
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    snapshots: list[list[torch.Tensor]] = [[] for _ in models]
    states: list[list[dict[str, torch.Tensor]]] = [[] for _ in models]
    names = list(models[0].state_dict())
    step = 0
    for epoch in range(settings["epochs"]):
        used = steps_per_epoch * batch_size  # subsets may differ in size by less than a batch
        orders = torch.stack([members[k][torch.randperm(len(members[k]), generator=generators[k])[:used].to(device)]
                              for k in range(count)])  # (K, used) pool indices, each model's own shuffle
        template.train()
        for batch in range(steps_per_epoch):
            index = orders[:, batch * batch_size:(batch + 1) * batch_size]  # (K, B)
            for group in optimizer.param_groups:
                group["lr"] = train.learning_rate(step, total, settings["lr"], settings["schedule"])
            logits = run(params, buffers, x[index])  # (K, B, C)
            # sum over models of each model's mean loss: model k's gradient is that of its own loss
            loss = F.cross_entropy(logits.flatten(0, 1), y[index].flatten(), reduction="none").view(count, -1)
            optimizer.zero_grad(set_to_none=True)
            loss.mean(1).sum().backward()
            optimizer.step()
            step += 1
        if epoch + 1 in wanted:
            taken = _stacked_logits(template, params, buffers, snapshot_x).half()  # (K, M, C)
            for k in range(count):
                snapshots[k].append(taken[k])
                if keep_states:
                    states[k].append({name: (params if name in params else buffers)[name][k].detach().cpu().clone()
                                      for name in names})
    _unstack_into(models, params, buffers)
    return snapshots, states


@torch.no_grad()
def _unstack_into(models: list[nn.Module], params: dict, buffers: dict) -> None:
    for k, model in enumerate(models):
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensor.copy_((params if name in params else buffers)[name][k])
        model.eval()


def predict_all(models: Sequence[nn.Module], x: torch.Tensor, bn_mode: train.BNMode = "eval",
                path: str = "auto") -> torch.Tensor:
    """(K, M, num_classes) logits of every model on the same inputs ``x`` (M, C, H, W), on the CPU.

    ``vmap`` runs all models in one stacked pass per chunk (eval mode only); ``sequential`` calls
    :func:`bnlib.train.predict_logits` per model, which also serves ``bn_mode="train"``.
    """
    device = next(models[0].parameters()).device
    path = _check_path(path, device)
    if path == "sequential" or bn_mode == "train":
        return torch.stack([train.predict_logits(model, x, bn_mode=bn_mode) for model in models])
    if bn_mode != "eval":
        raise ValueError(f"Parameter 'bn_mode' got {bn_mode!r}; allowed values: 'eval', 'train'.")
    params, buffers = torch.func.stack_module_state([m.eval() for m in models])
    return _stacked_logits(copy.deepcopy(models[0]), params, buffers, x.to(device))
