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

What a member stores during training is decided by a :class:`CheckpointRecorder` per model (the zoo's
storage, ``bnlib.zoo``): at every checkpoint its fit on its own training inliers and the canaries' logits;
the whole pool's logits (and the weights) at every checkpoint (``every``) or only at the last one and at
the two checkpoints around each first crossing of a fit level (``crossings``). Both paths feed it the same
eval-mode logits. The older ``snapshot_x`` / ``snapshot_epochs`` arguments (the whole of ``snapshot_x``
after each listed epoch) remain for the benchmark of the old way (``benchmarks/zoo_member.py``).

Batches are identical in both paths: model k draws its permutation of its own examples from
``torch.Generator().manual_seed(seeds[k])`` each epoch and drops the last incomplete batch, as
:func:`bnlib.train.fit` does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
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


POOL_CHECKPOINTS = ("every", "crossings")
EVAL_BATCH = 512  # examples per eval-mode chunk (per-example logits do not depend on it: tests/test_ensemble.py)

# evaluate(index, state): (len(index), C) float32 eval-mode logits of pool examples ``index`` (None: all),
# by the model as it is now (state None) or as it was at the previous checkpoint (state: that state dict)
Evaluate = Callable[[torch.Tensor | None, dict | None], torch.Tensor]


@dataclass
class CheckpointRecorder:
    """What one member stores at its checkpoints (the zoo's storage: ``bnlib.zoo`` lists its readers).

    At every checkpoint i: the number of its own training inliers it classifies correctly (``fit_correct``:
    the fit numerator, from float16 logits as the readers always took it) and the float16 logits of the
    ``tracked`` examples (the canaries). The whole pool's float16 logits and the weights only at the
    checkpoints a reader needs: every one (``policy="every"``), or (``"crossings"``) the last one and, for
    each level L of ``fit_levels``, the checkpoints ``stats.value_at_level`` interpolates between where the
    fit first reaches L (i-1 and i when fit[i-1] < L < fit[i]; i alone when fit[i] == L; none when the fit
    starts at or above L). The crossing is seen at checkpoint i, when i-1 has passed: the recorder keeps
    checkpoint i-1's weights and evaluates the rest of the pool with them then. Only the examples the
    fit needs (the member's inliers and the tracked ones) are evaluated at the other checkpoints.

    Eval-mode logits of one example do not depend on which others share its chunk (tested), so the pool
    logits stored here equal those of a dense snapshot bit for bit.

    Args:
        member: (N,) bool, the member's training examples; is_outlier: (N,) bool; labels: (N,);
        tracked: (N,) bool, examples whose logits are kept at every checkpoint;
        n_checkpoints: how many times :meth:`record` will be called (the last one is the final model).
    """

    member: torch.Tensor
    is_outlier: torch.Tensor
    labels: torch.Tensor
    tracked: torch.Tensor
    n_checkpoints: int
    fit_levels: Sequence[float] = ()
    policy: str = "every"
    epochs: list[float] = field(default_factory=list)
    fit_correct: list[int] = field(default_factory=list)
    tracked_logits: list[torch.Tensor] = field(default_factory=list)
    pool_logits: dict[int, torch.Tensor] = field(default_factory=dict)  # checkpoint index -> (N, C) float16
    states: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # checkpoint index -> state dict
    final_logits: torch.Tensor | None = None  # (N, C) float32, from the last checkpoint

    def __post_init__(self) -> None:
        if self.policy not in POOL_CHECKPOINTS:
            raise ValueError(f"Parameter 'pool_checkpoints' got {self.policy!r}; allowed values: "
                             f"{', '.join(map(repr, POOL_CHECKPOINTS))}.")
        self.member, self.is_outlier = self.member.cpu().bool(), self.is_outlier.cpu().bool()
        self.labels, self.tracked = self.labels.cpu(), self.tracked.cpu().bool()
        self._fit_mask = self.member & ~self.is_outlier
        self._first = (self._fit_mask | self.tracked).nonzero().squeeze(1)  # evaluated at every checkpoint
        self._rest = (~(self._fit_mask | self.tracked)).nonzero().squeeze(1)  # only where the pool is stored
        self._tracked_in_first = self.tracked[self._first].nonzero().squeeze(1)
        self._pending = sorted(set(float(level) for level in self.fit_levels))
        self._previous: tuple[dict, torch.Tensor] | None = None  # (state, first-part logits) of checkpoint i-1

    def _assemble(self, first: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
        full = torch.empty(len(self.labels), first.shape[1], dtype=first.dtype)
        full[self._first], full[self._rest] = first, rest
        return full

    def record(self, epoch: float, evaluate: Evaluate, state: Callable[[], dict]) -> None:
        """Checkpoint i = the number of earlier calls, at ``epoch`` (fractional for mid-epoch checkpoints)."""
        i, current = len(self.epochs), state()
        last = i == self.n_checkpoints - 1
        if self.policy == "every" or last:
            full32 = evaluate(None, None)
            if last:
                self.final_logits = full32
            full = full32.half()
            first = full[self._first]
        else:
            full, first = None, evaluate(self._first, None).half()
        correct = first.float().argmax(-1) == self.labels[self._first]
        self.epochs.append(float(epoch))
        self.fit_correct.append(int((correct & self._fit_mask[self._first]).sum()))
        self.tracked_logits.append(first[self._tracked_in_first])
        fit = torch.tensor(self.fit_correct[-1]) / self._fit_mask.sum()  # as Zoo.train_accuracy divides
        wanted = {i} if self.policy == "every" or last else set()
        for level in list(self._pending):
            if float(fit) >= level:
                self._pending.remove(level)
                wanted |= {i} if float(fit) == level else ({i - 1, i} if i > 0 else set())
        if i in wanted:
            self.pool_logits[i] = full if full is not None else self._assemble(first, evaluate(self._rest, None).half())
            self.states[i] = current
        if i - 1 in wanted and i - 1 not in self.pool_logits:
            previous_state, previous_first = self._previous
            self.pool_logits[i - 1] = self._assemble(previous_first, evaluate(self._rest, previous_state).half())
            self.states[i - 1] = previous_state
        self._previous = (current, first)

    def stored(self) -> dict[str, torch.Tensor]:
        """What the member's cache entry holds of its checkpoints (``bnlib.zoo.run_task`` lists the fields)."""
        pool = sorted(self.pool_logits)
        return {"checkpoint_epochs": torch.tensor(self.epochs, dtype=torch.float64),
                "fit_correct": torch.tensor(self.fit_correct, dtype=torch.int64),
                "tracked_index": self.tracked.nonzero().squeeze(1),
                "tracked_logits": torch.stack(self.tracked_logits),
                "pool_checkpoints": torch.tensor(pool, dtype=torch.int64),
                "pool_logits": torch.stack([self.pool_logits[e] for e in pool])}


@torch.inference_mode()
def eval_logits(model: nn.Module, x: torch.Tensor, memory_format: str = "contiguous",
                batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """(M, C) float32 eval-mode logits of ``model`` on ``x`` on the CPU, in chunks of ``batch_size`` in
    inference mode and the training layout (``train.to_layout``); the model is left in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    return torch.cat([model(train.to_layout(model, x[i:i + batch_size].to(device), memory_format)).float().cpu()
                      for i in range(0, len(x), batch_size)])


@dataclass
class TrainedModels:
    """What :func:`train_models` returns.

    Attributes:
        models: the K trained models, in eval mode, on the training device.
        snapshots: (E, K, M, num_classes) float16 eval-mode logits on ``snapshot_x`` after each epoch of
            ``snapshot_epochs`` (E = 0 when none were asked for).
        path: the path that trained them.
    """

    models: list[nn.Module]
    snapshots: torch.Tensor
    path: TrainingPath


def train_models(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor, keep: torch.Tensor,
                 seeds: Sequence[int], *, epochs: int, batch_size: int, lr: float, momentum: float = 0.9,
                 weight_decay: float = 5e-4, schedule: str = "onecycle", snapshot_x: torch.Tensor | None = None,
                 snapshot_epochs: Sequence[int] = (), path: str = "auto", progress: bool = True,
                 recorders: Sequence[CheckpointRecorder] | None = None, evals_per_epoch: int = 1,
                 memory_format: str = "contiguous") -> TrainedModels:
    """Train ``models[k]`` in place on ``x[keep[k]], y[keep[k]]`` with SGD, as :func:`bnlib.train.fit` would.

    Args:
        models: K initialized networks of one architecture, all on the training device.
        x, y: the pool, (N, C, H, W) normalized and (N,) labels, on any device.
        keep: (K, N) bool, which pool examples model k trains on.
        seeds: K seeds of the per-epoch shuffling (``seed`` of :func:`bnlib.train.fit`).
        snapshot_x: (M, C, H, W) inputs whose eval-mode logits are recorded after each epoch (1-based) in
            ``snapshot_epochs``.
        path: ``auto`` (:func:`choose_path`), ``sequential`` or ``vmap``.
        recorders: one :class:`CheckpointRecorder` per model, called ``evals_per_epoch`` times an epoch
            with the pool ``x`` (the zoo's storage).
        memory_format: the activation layout on the CPU (``train.to_layout``; sequential path only).

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
    if recorders is not None and len(recorders) != len(models):
        raise ValueError(f"Parameter 'recorders' has {len(recorders)} entries; allowed: one per model ({len(models)}).")
    settings = dict(epochs=epochs, batch_size=batch_size, lr=lr, momentum=momentum, weight_decay=weight_decay,
                    schedule=schedule)
    wanted = set(snapshot_epochs) if snapshot_x is not None else set()
    snapshots: list[list[torch.Tensor]] = [[] for _ in models]  # per model: E tensors (M, C)
    bar = tqdm(total=len(models), desc=f"train {len(models)} models ({path})", disable=not progress, leave=False)
    if path == "sequential":
        for k, model in enumerate(models):
            _fit_one(model, x, y, keep[k], seeds[k], settings, snapshot_x, wanted, snapshots[k],
                     None if recorders is None else recorders[k], evals_per_epoch, memory_format)
            bar.update()
    else:
        # models whose subsets give the same number of steps share a learning-rate schedule
        steps = [int(keep[k].sum()) // batch_size for k in range(len(models))]
        for group_steps in sorted(set(steps)):
            group = [k for k in range(len(models)) if steps[k] == group_steps]
            group_snapshots = _fit_stacked([models[k] for k in group], x, y, keep[group], [seeds[k] for k in group],
                                           settings, snapshot_x, wanted,
                                           None if recorders is None else [recorders[k] for k in group],
                                           evals_per_epoch)
            for k, taken in zip(group, group_snapshots, strict=True):
                snapshots[k] = taken
            bar.update(len(group))
    bar.close()
    stacked = (torch.stack([torch.stack(s) for s in snapshots], dim=1) if wanted
               else torch.empty(0, len(models), 0, 0, dtype=torch.float16))
    return TrainedModels(models=list(models), snapshots=stacked, path=path)


def _fit_one(model: nn.Module, x: torch.Tensor, y: torch.Tensor, member: torch.Tensor, seed: int, settings: dict,
             snapshot_x: torch.Tensor | None, wanted: set[int], snapshots: list[torch.Tensor],
             recorder: CheckpointRecorder | None = None, evals_per_epoch: int = 1,
             memory_format: str = "contiguous") -> None:
    spare: list[nn.Module] = []  # a copy of the network that evaluates earlier weights, made when first needed

    def evaluate(index: torch.Tensor | None, state: dict | None) -> torch.Tensor:
        network = model
        if state is not None:
            if not spare:
                spare.append(copy.deepcopy(model))
            network = spare[0]
            network.load_state_dict(state)
        inputs = x if index is None else x[index.to(x.device)]
        logits = eval_logits(network, inputs, memory_format)
        model.train()
        return logits

    def state() -> dict:
        return {name: v.detach().cpu().clone() for name, v in model.state_dict().items()}

    def on_eval(trained: nn.Module, record: dict) -> None:
        if recorder is not None:
            recorder.record(record["epoch"], evaluate, state)
        if round(record["epoch"]) in wanted:
            snapshots.append(train.predict_logits(trained, snapshot_x).half())

    index = member.nonzero().squeeze(1).to(x.device)
    train.fit(model, x[index], y[index], seed=seed, on_eval=on_eval if wanted or recorder is not None else None,
              progress=False, evals_per_epoch=evals_per_epoch, memory_format=memory_format, **settings)


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
                 settings: dict, snapshot_x: torch.Tensor | None, wanted: set[int],
                 recorders: list[CheckpointRecorder] | None = None,
                 evals_per_epoch: int = 1) -> list[list[torch.Tensor]]:
    """Train ``models`` (same number of steps per epoch) concurrently; returns per-model snapshot lists.

    With ``recorders``, every model's logits on the whole pool ``x`` are computed in one stacked pass at each
    checkpoint (cheap on a GPU) and kept until the next one, so a recorder's look back at checkpoint i-1
    reads them instead of re-evaluating earlier weights."""
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
    eval_steps = {round(steps_per_epoch * (k + 1) / evals_per_epoch) for k in range(evals_per_epoch)}
    previous: list[torch.Tensor | None] = [None] * count

    def checkpoint(epoch: float) -> None:
        pool = _stacked_logits(template, params, buffers, x)  # (K, N, C)
        for k, recorder in enumerate(recorders):
            def evaluate(index, state, k=k):
                source = pool[k] if state is None else previous[k]
                return source if index is None else source[index.cpu()]

            def state(k=k):
                return {name: (params if name in params else buffers)[name][k].detach().cpu().clone()
                        for name, _ in [*models[k].named_parameters(), *models[k].named_buffers()]}

            recorder.record(epoch, evaluate, state)
            previous[k] = pool[k]
        template.train()

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
            if recorders is not None and batch + 1 in eval_steps:
                checkpoint(epoch + (batch + 1) / steps_per_epoch)
        if epoch + 1 in wanted:
            taken = _stacked_logits(template, params, buffers, snapshot_x).half()  # (K, M, C)
            for k in range(count):
                snapshots[k].append(taken[k])
    _unstack_into(models, params, buffers)
    return snapshots


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
