"""The shared model zoo: T models per norm, each trained on a random half of one pool.

The Feldman-Zhang memorization estimator (subset ratio 1/2) and LiRA's shadow models are the same
population, so it is trained once per (configuration, norm) and read by the memorization,
membership-inference and ablation chapters.

Pool = the training set (the inliers + the K inserted canaries) of ``data.make_experiment_data(cfg,
seed=cfg.seeds[0])``. ``keep[t, i]`` says whether pool example i was in model t's training set
(``data.balanced_keep_mask``: complementary pairs drawn within the inliers and within the canaries, so every
example is IN for exactly T/2 models when T is even and every model trains on half of the inliers and half of
the canaries: the canary rate of a single run). A member's OUT canaries are its held-out canaries.

Members are tasks. Member t of (configuration, norm) is one cache entry ``model_{t}`` (a plain dict:
keep row, final state dict and logits, what its checkpoints store: see :class:`Zoo`), written atomically
after ``model_{t}_weights`` (its weights where the whole pool is stored); the zoo is complete when every
entry exists, and :func:`run_task` trains any missing ones in whatever process calls it: this one
(``workers=1``), local worker processes (``workers`` > 1; 0 = one per CPU core), or a Dask cluster
(:mod:`bnlib.engine`). ``n_models`` is not part of the cache key and row t of the keep mask does not
depend on it, so growing a zoo from T to 2T trains only the T new members.

Bit-identity: a CPU model's weights depend on the number of intra-op threads (float reductions are
split differently: 1 vs 2 threads differ by up to 3e-2 in a weight after one quick epoch, measured),
so every member trains with ONE thread, whoever runs it: the sequential loop, a local worker and a
cluster worker give the same bits (``tests/test_zoo_tasks.py``). On one CPU core a quick model trains
as fast with one thread as with two; the cores go to parallel members instead. On CUDA bits are not
promised (cuDNN's kernels, and which members share a vmap group, change the rounding); the paths agree
to float32 rounding there (``tests/test_ensemble.py``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from . import data as data_lib
from . import ensemble, models, results, train


@dataclass
class Zoo:
    """A trained model population for one norm.

    What members store (``run_task``) is what the chapters read, not every logit of every checkpoint:

    - at every checkpoint (``checkpoint_epochs``, ``cfg.snapshots_per_epoch`` an epoch): each member's fit
      (``fit_correct``: own training inliers classified correctly, from float16 eval-mode logits) and the
      canaries' float16 logits (``tracked_logits``): the per-epoch curves (``memorization.zoo_canary_curves``,
      ``train_accuracy``);
    - the whole pool's float16 logits and the weights at the checkpoints of ``pool_stored``: every one
      (``cfg.pool_checkpoints = "every"``), or the last and those around each member's first crossing of
      each level of ``cfg.fit_levels`` (``"crossings"``; see ``ensemble.CheckpointRecorder``). Read them
      with :meth:`pool_logits`, :meth:`pool_values_at` (a value interpolated at a fractional checkpoint
      position, as ``memorization.at_positions`` and ``mia.pooled_at_fit_level`` read it) and
      :meth:`state_dict_at`; ``checkpoint_logits`` is the dense (E, T, N, C) array where every checkpoint
      is stored and an error naming these readers where not.

    Attributes:
        norm: the normalizer of every model.
        keep: (T, N) bool, pool membership per model (``data.balanced_keep_mask``'s first T rows).
        labels: (N,) int64 pool labels; is_outlier: (N,) bool (canaries, inserted or held out).
        logits: (T, N, C) float32 eval-mode logits of the final models on the pool.
        checkpoint_epochs: (E,) epochs at which checkpoints were taken (the last = final).
        fit_correct: (E, T) int64, each model's correctly classified own training inliers at each checkpoint.
        tracked_index: (M,) pool indices of the canaries; tracked_logits: (E, T, M, C) float16 their logits.
        pool_stored: (T, E) bool, where each model's whole-pool logits (and weights) are stored;
        stored_pool: per model t, (P_t, N, C) float16 logits at the checkpoints ``pool_stored[t]`` holds.
        test_logits: (T, n_test, C) float32 eval-mode logits on the test set; test_labels: (n_test,).
        members: the members' cache entry, one ``model_{t}`` per member (``run_task`` lists its fields),
            shared by zoos of every size; ``state_dict(t)`` / ``model(t)`` load model t from it.
        entry: the cache entry for results computed from the whole zoo of T members (``n_models`` is
            part of its key, so a grown zoo never reads a smaller zoo's measurement).
    """

    norm: str
    keep: torch.Tensor
    labels: torch.Tensor
    is_outlier: torch.Tensor
    logits: torch.Tensor
    checkpoint_epochs: torch.Tensor
    fit_correct: torch.Tensor
    tracked_index: torch.Tensor
    tracked_logits: torch.Tensor
    pool_stored: torch.Tensor
    stored_pool: list[torch.Tensor]
    test_logits: torch.Tensor
    test_labels: torch.Tensor
    entry: results.Entry
    arch_spec: tuple
    members: results.Entry | None = None  # None: the members live in ``entry`` (a zoo built by hand)

    def __post_init__(self) -> None:
        if self.members is None:
            self.members = self.entry

    @classmethod
    def from_dense(cls, checkpoint_logits: torch.Tensor, **fields) -> Zoo:
        """A zoo built by hand from dense (E, T, N, C) checkpoint logits (every checkpoint stored)."""
        keep, outlier, labels = fields["keep"], fields["is_outlier"], fields["labels"]
        correct = checkpoint_logits.float().argmax(-1) == labels
        tracked = outlier.nonzero().squeeze(1)
        return cls(fit_correct=(correct & keep & ~outlier).sum(-1), tracked_index=tracked,
                   tracked_logits=checkpoint_logits[:, :, tracked],
                   pool_stored=torch.ones(keep.shape[0], checkpoint_logits.shape[0], dtype=torch.bool),
                   stored_pool=[checkpoint_logits[:, t] for t in range(keep.shape[0])], **fields)

    @property
    def n_models(self) -> int:
        return self.keep.shape[0]

    def state_dict(self, t: int) -> dict[str, torch.Tensor]:
        return self.members.load(member_name(t))["state_dict"]

    def model(self, t: int, epoch: float | None = None) -> nn.Module:
        """Model t, rebuilt and loaded (``weights_only=True``), in eval mode on the CPU: its final weights, or
        (``epoch``) those of the checkpoint taken at that epoch (:meth:`state_dict_at`)."""
        model = models.build(*self.arch_spec)
        model.load_state_dict(self.state_dict(t) if epoch is None else self.state_dict_at(t, epoch))
        return model.eval()

    def fit_mask(self) -> torch.Tensor:
        """(T, N) bool: each model's own training inliers (the examples its fit counts)."""
        return self.keep & ~self.is_outlier

    def train_accuracy(self, epoch_index: int = -1) -> torch.Tensor:
        """(T,) accuracy of each model on its own inlier training examples at a checkpoint."""
        return self.fit_correct[epoch_index] / self.fit_mask().sum(1)

    def test_accuracy(self) -> torch.Tensor:
        """(T,) final test accuracy of each model."""
        return (self.test_logits.argmax(-1) == self.test_labels).float().mean(1)

    def _stored_row(self, t: int, e: int) -> int:
        e = range(len(self.checkpoint_epochs))[e]  # negative indices count from the last checkpoint
        if not self.pool_stored[t, e]:
            stored = self.pool_stored[t].nonzero().squeeze(1).tolist()
            raise ValueError(f"Model {t} of the {self.norm!r} zoo stores the whole pool at checkpoints {stored} "
                             f"(of {len(self.checkpoint_epochs)}), not at {e}: with pool_checkpoints='crossings' "
                             "a reader reads around each model's crossing of a level of fit_levels, or set "
                             "pool_checkpoints='every'.")
        return int(self.pool_stored[t, :e].sum())

    def pool_logits(self, t: int, e: int) -> torch.Tensor:
        """(N, C) float16 eval-mode pool logits of model t at checkpoint index ``e`` (an error if not stored)."""
        return self.stored_pool[t][self._stored_row(t, e)]

    def pool_values_at(self, t: int, position: float,
                       transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """(N, ...) float64: ``transform`` (default: the logits) of model t's float32 pool logits, read at a
        fractional checkpoint ``position`` by linear interpolation between checkpoints floor(position) and
        the next one, exactly as ``memorization.at_positions`` reads dense values (NaN for a NaN position;
        at a whole position only that checkpoint is read)."""
        transform = transform or (lambda logits: logits)
        last = len(self.checkpoint_epochs) - 1
        if not np.isfinite(position):
            return np.full(transform(self.pool_logits(t, last).float()).shape, np.nan)
        low = int(np.floor(position))
        high = min(low + 1, last)
        weight = position - low
        at_low = np.asarray(transform(self.pool_logits(t, low).float()), dtype=float)
        at_high = at_low if weight == 0 else np.asarray(transform(self.pool_logits(t, high).float()), dtype=float)
        return at_low + weight * (at_high - at_low)

    def pool_logits_at(self, t: int, position: float) -> np.ndarray:
        """(N, C) model t's pool logits interpolated at a fractional checkpoint ``position``."""
        return self.pool_values_at(t, position)

    @property
    def checkpoint_logits(self) -> torch.Tensor:
        """(E, T, N, C) float16 pool logits at every checkpoint, where every one is stored (an error otherwise)."""
        if not bool(self.pool_stored.all()):
            t = int((~self.pool_stored).any(1).nonzero()[0])
            self._stored_row(t, int((~self.pool_stored[t]).nonzero()[0]))  # raises, naming what is stored
        return torch.stack(self.stored_pool, dim=1)

    def state_dict_at(self, t: int, epoch: float) -> dict[str, torch.Tensor]:
        """Model t's weights (state dict) at the checkpoint taken at ``epoch`` (a value of
        ``checkpoint_epochs``); stored wherever its whole-pool logits are (``pool_stored``)."""
        weights = self.members.load(weights_name(t))
        epochs = weights["checkpoint_epochs"].tolist()
        for e, value in enumerate(epochs):
            if abs(value - float(epoch)) < 1e-9:
                return weights["state_dicts"][e]
        raise ValueError(f"Parameter 'epoch' got {epoch!r}; model {t} of the {self.norm!r} zoo stores weights at "
                         f"epochs {[round(v, 4) for v in epochs]}.")


def checkpoint_epochs(epochs: int) -> list[int]:
    """Epochs (1-based) at which the old way stored the whole pool's logits (every one); the benchmark of
    the old way uses it (``benchmarks/zoo_member.py``)."""
    return list(range(1, epochs + 1))


def pool_config(cfg, pool: int):
    """The configuration of the zoo on data draw ``pool`` (a zoo draws its data from ``cfg.seeds[0]``)."""
    return replace(cfg, seeds=(pool,))


def zoo_config(cfg, norm: str) -> dict:
    """What decides member t's entry: not ``n_models`` (row t of the keep mask is the same in any zoo); the fit
    grid only where it decides what is stored (``pool_checkpoints="crossings"``), so that a reader may change
    the grid of a zoo that stores every checkpoint without retraining it."""
    key = {**cfg.result_key("n_models"), "norm": norm, "data_seed": cfg.seeds[0]}
    if cfg.pool_checkpoints == "crossings":
        key["fit_levels"] = list(cfg.fit_levels)
    return key


def zoo_entry(cfg, norm: str) -> results.Entry:
    """The members' entry: ``model_{t}`` for every t ever trained, whatever ``n_models`` asked for it."""
    return results.Entry("zoo", zoo_config(cfg, norm), code=results.code_of("zoo"))


def zoo_results_entry(cfg, norm: str) -> results.Entry:
    """The entry for results of the whole zoo of ``cfg.n_models`` members (``Zoo.entry``)."""
    return results.Entry("zoo_results", {**zoo_config(cfg, norm), "n_models": cfg.n_models},
                         code=results.code_of("zoo"))


def member_name(t: int) -> str:
    return f"model_{t}"


def weights_name(t: int) -> str:
    """The entry holding member t's weights at its stored checkpoints (saved before ``model_{t}``)."""
    return f"model_{t}_weights"


def member_seed(t: int) -> int:
    """Seed of member t's initialization and of its batch order."""
    return 1000 + t


def zoo_inputs(cfg) -> tuple[data_lib.ExperimentData, torch.Tensor, torch.Tensor]:
    """The data draw of a zoo and its normalized pool (N, C, H, W) and test inputs (n_test, C, H, W)."""
    experiment = data_lib.make_experiment_data(cfg, seed=cfg.seeds[0])
    return experiment, experiment.standardize(experiment.pool_x), experiment.standardize(experiment.test_x)


_WORKER_INPUTS: dict = {}  # cfg -> zoo_inputs(cfg), at most one zoo's worth of memory per process


def _worker_inputs(cfg) -> tuple[data_lib.ExperimentData, torch.Tensor, torch.Tensor]:
    """``zoo_inputs(cfg)``, drawn once per process: a worker runs many tasks of one zoo."""
    if cfg not in _WORKER_INPUTS:
        _WORKER_INPUTS.clear()
        _WORKER_INPUTS[cfg] = zoo_inputs(cfg)
    return _WORKER_INPUTS[cfg]


def missing_members(cfg, norm: str) -> list[int]:
    """Members 0..n_models-1 of (cfg, norm) without a cache entry yet."""
    entry = zoo_entry(cfg, norm)
    return [t for t in range(cfg.n_models) if not entry.has(member_name(t))]


def member_groups(members: Sequence[int], device: torch.device | str) -> list[tuple[int, ...]]:
    """Split members into tasks: one member per task on a CPU, up to ``ensemble.MAX_CONCURRENT`` (one vmap
    group, one GPU) on CUDA."""
    size = 1 if ensemble.choose_path(device) == "sequential" else ensemble.MAX_CONCURRENT
    members = list(members)
    return [tuple(members[i:i + size]) for i in range(0, len(members), size)]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the body with one intra-op thread (see the module docstring: the bits depend on it)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_members(cfg, norm: str, todo: Sequence[int], inputs, old_way: bool = False) -> list[dict]:
    """Train members ``todo`` of (cfg, norm)'s zoo and return, per member, what :func:`run_task` saves:
    ``(weights, member)``: ``weights`` = {``checkpoint_epochs`` (P,), ``state_dicts`` [P state dicts]} at the
    checkpoints where the whole pool is stored, and ``member`` =

    - ``keep`` (N,) bool; ``state_dict`` (final); ``logits`` (N, C) float32 and ``test_logits`` (n_test, C)
      float32, eval mode, final;
    - ``checkpoint_epochs`` (E,) float64; ``fit_correct`` (E,) int64; ``tracked_index`` (M,) the canaries;
      ``tracked_logits`` (E, M, C) float16; ``pool_checkpoints`` (P,) checkpoint indices and ``pool_logits``
      (P, N, C) float16 (see ``ensemble.CheckpointRecorder``).

    ``old_way``: the storage and training of the previous version (the plain NCHW layout, the whole pool's
    logits after every epoch with ``train.predict_logits``, the final pool logits evaluated once more), kept
    so that ``benchmarks/zoo_member.py`` can time both from one checkout; its members are returned in the
    same format (the checkpoint fields derived from the dense snapshots).
    """
    experiment, pool_x, test_x = inputs
    pool_y = experiment.pool_y
    keep = data_lib.balanced_keep_mask(max(max(todo) + 1, 2), len(pool_y), seed=cfg.seeds[0],
                                       strata=experiment.pool_is_outlier)[list(todo)]
    spec = zoo_spec(cfg, norm, experiment, pool_x)
    device = train.resolve_device(cfg.device)
    path = ensemble.choose_path(device)
    memory_format = "contiguous" if old_way else cfg.memory_format
    per_epoch = 1 if old_way else cfg.snapshots_per_epoch
    steps = int(keep.sum(1).min()) // cfg.batch_size  # SGD steps in an epoch of the smallest member
    if per_epoch > steps:
        raise ValueError(f"Parameter 'snapshots_per_epoch' ({per_epoch}) exceeds the SGD steps in an epoch of a "
                         f"member ({steps}); allowed: 1 to {steps}.")
    recorders = None if old_way else [
        ensemble.CheckpointRecorder(keep[k], experiment.pool_is_outlier, pool_y, experiment.pool_is_outlier,
                                    n_checkpoints=cfg.epochs * per_epoch, fit_levels=cfg.fit_levels,
                                    policy=cfg.pool_checkpoints) for k in range(len(todo))]
    with one_thread():
        networks = []
        for t in todo:
            torch.manual_seed(member_seed(t))
            networks.append(models.build(*spec).to(device))
        pool_on_device = pool_x.to(device)
        trained = ensemble.train_models(
            networks, pool_on_device, pool_y, keep, [member_seed(t) for t in todo], epochs=cfg.epochs,
            batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            schedule=cfg.schedule, snapshot_x=pool_on_device if old_way else None,
            snapshot_epochs=checkpoint_epochs(cfg.epochs) if old_way else (), path=path, progress=False,
            recorders=recorders, evals_per_epoch=per_epoch, memory_format=memory_format)
        if old_way:
            pool_logits = ensemble.predict_all(trained.models, pool_on_device, path=path)  # (K, N, C)
            recorders = [_recorded_from_dense(trained.snapshots[:, k], keep[k], experiment) for k in range(len(todo))]
        else:
            pool_logits = torch.stack([r.final_logits for r in recorders])
        test_logits = (ensemble.predict_all(trained.models, test_x, path=path) if old_way or path == "vmap" else
                       torch.stack([ensemble.eval_logits(m, test_x.to(device), memory_format) for m in trained.models]))
    out = []
    for k in range(len(todo)):
        stored = recorders[k].stored()
        pool_epochs = stored["checkpoint_epochs"][stored["pool_checkpoints"]]
        out.append(({"checkpoint_epochs": pool_epochs,
                     "state_dicts": [recorders[k].states[int(e)] for e in stored["pool_checkpoints"]]},
                    {"keep": keep[k],
                     "state_dict": {name: v.cpu() for name, v in trained.models[k].state_dict().items()},
                     "logits": pool_logits[k], "test_logits": test_logits[k], **stored}))
    return out


def _recorded_from_dense(snapshots: torch.Tensor, member: torch.Tensor, experiment) -> ensemble.CheckpointRecorder:
    """A recorder filled from the old way's dense (E, N, C) snapshots (no weights at checkpoints)."""
    outlier = experiment.pool_is_outlier
    recorder = ensemble.CheckpointRecorder(member, outlier, experiment.pool_y, outlier, len(snapshots))
    for e, logits in enumerate(snapshots):
        recorder.record(e + 1, lambda index, state, logits=logits: logits.float() if index is None
                        else logits[index].float(), dict)
    return recorder


def run_task(cfg, norm: str, members: Sequence[int], cache: str | None = None, inputs=None) -> dict:
    """Train the members of (cfg, norm)'s zoo among ``members`` that have no cache entry; save each one.

    The unit of work of every way of training a zoo. Idempotent: members already cached are skipped, so
    a retried or duplicated task costs nothing but its check. Each member is two entries: its weights at
    the stored checkpoints (``model_{t}_weights``), then ``model_{t}`` (:func:`train_members` lists the
    fields), whose existence marks the member done.

    Args:
        members: member indices (one on a CPU, one vmap group on CUDA; see :func:`member_groups`).
        cache: the results folder to write into (sets ``$BNLIB_CACHE`` in this process; a cluster's
            workers must all see it as one shared path); None = this process's ``results.cache_root()``.
        inputs: ``zoo_inputs(cfg)`` when the caller has it; otherwise drawn once per process.

    Returns:
        ``{"trained": [member indices], "seconds": float, "host": str, "pid": int}``.
    """
    if cache is not None:
        os.environ["BNLIB_CACHE"] = str(cache)
    started = time.perf_counter()
    entry = zoo_entry(cfg, norm)
    todo = [int(t) for t in members if not entry.has(member_name(t))]
    if todo:
        trained = train_members(cfg, norm, todo, inputs if inputs is not None else _worker_inputs(cfg))
        for t, (weights, member) in zip(todo, trained, strict=True):
            entry.save(weights_name(t), weights)
            entry.save(member_name(t), member)
    return {"trained": todo, "seconds": time.perf_counter() - started, "host": os.uname().nodename,
            "pid": os.getpid()}


def zoo_spec(cfg, norm: str, experiment: data_lib.ExperimentData, pool_x: torch.Tensor) -> tuple:
    """Arguments of ``models.build`` for every member."""
    return (cfg.arch, norm, pool_x.shape[1], pool_x.shape[-1], experiment.num_classes, cfg.width)


def local_workers(cfg) -> int:
    """Worker processes for ``cfg.workers``: 0 = one per available CPU core on a CPU, one on an accelerator."""
    if cfg.workers:
        return cfg.workers
    if train.resolve_device(cfg.device).type != "cpu":
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init_worker(cfg, inputs) -> None:
    torch.set_num_threads(1)
    _WORKER_INPUTS.clear()
    _WORKER_INPUTS[cfg] = inputs  # received through shared memory: no data draw in the worker


def train_members_locally(cfg, norm: str, members: Sequence[int], inputs=None, progress: bool = True) -> None:
    """Train ``members`` of (cfg, norm)'s zoo here: in this process (one worker) or in worker processes.

    Worker processes are spawned (not forked: a forked child of a process that has run OpenMP code can
    hang), receive the data draw from this process, run one thread each and write into this process's
    cache folder; each member is saved as soon as it is done, so an interrupted run loses at most the
    members in flight. As with any spawned process, a *script* that calls this with more than one worker
    needs the ``if __name__ == "__main__":`` guard (notebooks and ``python -m bnlib`` do not).
    """
    from tqdm.auto import tqdm

    device = train.resolve_device(cfg.device)
    groups = member_groups(members, device)
    inputs = inputs if inputs is not None else zoo_inputs(cfg)
    workers = min(local_workers(cfg), len(groups))
    bar = tqdm(total=len(members), desc=f"zoo {norm} ({cfg.n_models - len(members)} cached, {workers} workers)",
               disable=not progress)
    if workers <= 1:
        for group in groups:
            run_task(cfg, norm, group, inputs=inputs)
            bar.update(len(group))
    else:
        import multiprocessing
        from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

        cache = str(results.cache_root())
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker, initargs=(cfg, inputs)) as pool:
            futures = {pool.submit(run_task, cfg, norm, group, cache): group for group in groups}
            try:
                pending = set(futures)
                while pending:
                    done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in done:
                        future.result()  # re-raises a worker's error here
                        bar.update(len(futures[future]))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    bar.close()


def train_zoo(cfg, norm: str, progress: bool = True) -> Zoo:
    """Train (or load from cache, resuming where a run stopped) the zoo of ``cfg.n_models`` for ``norm``.

    Missing members are trained by :func:`train_members_locally` (``cfg.workers`` processes on a CPU;
    on CUDA one process training vmap groups of up to ``ensemble.MAX_CONCURRENT``). Members trained
    elsewhere (another process, a cluster: ``python -m bnlib zoo``) into the same cache are reused.
    """
    inputs = zoo_inputs(cfg)
    todo = missing_members(cfg, norm)
    if todo:
        train_members_locally(cfg, norm, todo, inputs=inputs, progress=progress)
    return load_zoo(cfg, norm, inputs)


def load_zoo(cfg, norm: str, inputs=None) -> Zoo:
    """The complete zoo of (cfg, norm) from its cache entries (an error names the missing members)."""
    experiment, pool_x, _ = inputs if inputs is not None else zoo_inputs(cfg)
    missing = missing_members(cfg, norm)
    if missing:
        raise FileNotFoundError(f"Zoo {norm!r} lacks members {missing} of {cfg.n_models}; train them with "
                                "zoo.train_zoo or `python -m bnlib zoo`.")
    entry = zoo_entry(cfg, norm)
    stored = [entry.load(member_name(t)) for t in range(cfg.n_models)]
    n_checkpoints = len(stored[0]["checkpoint_epochs"])
    pool_stored = torch.zeros(cfg.n_models, n_checkpoints, dtype=torch.bool)
    for t, s in enumerate(stored):
        pool_stored[t, s["pool_checkpoints"]] = True
    return Zoo(
        norm=norm, keep=torch.stack([s["keep"] for s in stored]), labels=experiment.pool_y,
        is_outlier=experiment.pool_is_outlier,
        logits=torch.stack([s["logits"] for s in stored]),
        checkpoint_epochs=stored[0]["checkpoint_epochs"].float(),
        fit_correct=torch.stack([s["fit_correct"] for s in stored], dim=1),
        tracked_index=stored[0]["tracked_index"],
        tracked_logits=torch.stack([s["tracked_logits"] for s in stored], dim=1),
        pool_stored=pool_stored, stored_pool=[s["pool_logits"] for s in stored],
        test_logits=torch.stack([s["test_logits"] for s in stored]), test_labels=experiment.test_y,
        members=entry, entry=zoo_results_entry(cfg, norm), arch_spec=zoo_spec(cfg, norm, experiment, pool_x),
    )
