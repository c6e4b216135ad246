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
keep row, state dict, logits, checkpoint logits), written atomically; the zoo is complete when every
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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from . import data as data_lib
from . import ensemble, models, results, train


@dataclass
class Zoo:
    """A trained model population for one norm.

    Attributes:
        norm: the normalizer of every model.
        keep: (T, N) bool, pool membership per model (``data.balanced_keep_mask``'s first T rows).
        labels: (N,) int64 pool labels; is_outlier: (N,) bool (canaries, inserted or held out).
        logits: (T, N, C) float32 eval-mode logits of the final models on the pool.
        checkpoint_epochs: (E,) epochs at which ``checkpoint_logits`` were taken (the last = final).
        checkpoint_logits: (E, T, N, C) float16 eval-mode logits during training.
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
    checkpoint_logits: torch.Tensor
    test_logits: torch.Tensor
    test_labels: torch.Tensor
    entry: results.Entry
    arch_spec: tuple
    members: results.Entry | None = None  # None: the members live in ``entry`` (a zoo built by hand)

    def __post_init__(self) -> None:
        if self.members is None:
            self.members = self.entry

    @property
    def n_models(self) -> int:
        return self.keep.shape[0]

    def state_dict(self, t: int) -> dict[str, torch.Tensor]:
        return self.members.load(member_name(t))["state_dict"]

    # --- minimal checkpoint weights (issue 22's helper; the training-throughput issue stores them only around
    # --- fit-level crossings; until that lands, every checkpoint epoch is stored: see ``run_task``)
    def state_dict_at(self, t: int, epoch: int) -> dict[str, torch.Tensor]:
        """Member t's state dict after checkpoint ``epoch`` (1-based, one of ``checkpoint_epochs``); the last
        checkpoint is the final model. An error names the stored epochs when ``epoch`` is not one of them."""
        stored = self.members.load(member_name(t))
        epochs = [int(e) for e in stored["checkpoint_epochs"]]
        if int(epoch) == epochs[-1]:
            return stored["state_dict"]
        if "checkpoint_state_dicts" not in stored or int(epoch) not in epochs:
            raise ValueError(f"Parameter 'epoch' got {epoch!r}; member {t} stores weights at epochs "
                             f"{epochs if 'checkpoint_state_dicts' in stored else epochs[-1:]}.")
        return stored["checkpoint_state_dicts"][epochs.index(int(epoch))]

    def model(self, t: int, epoch: int | None = None) -> nn.Module:
        """Model t (after checkpoint ``epoch``; None: the final model), rebuilt and loaded
        (``weights_only=True``), in eval mode on the CPU."""
        model = models.build(*self.arch_spec)
        model.load_state_dict(self.state_dict(t) if epoch is None else self.state_dict_at(t, epoch))
        return model.eval()

    def train_accuracy(self, epoch_index: int = -1) -> torch.Tensor:
        """(T,) accuracy of each model on its own inlier training examples at a checkpoint."""
        correct = self.checkpoint_logits[epoch_index].float().argmax(-1) == self.labels
        mask = self.keep & ~self.is_outlier
        return (correct & mask).sum(1) / mask.sum(1)

    def test_accuracy(self) -> torch.Tensor:
        """(T,) final test accuracy of each model."""
        return (self.test_logits.argmax(-1) == self.test_labels).float().mean(1)


def checkpoint_epochs(epochs: int) -> list[int]:
    """Epochs (1-based) at which members store their pool logits: every one, so that each member's fit and
    memorization curves can be read where they cross a fit level (float16 logits; the pool costs
    N x classes x 2 bytes an epoch)."""
    return list(range(1, epochs + 1))


def pool_config(cfg, pool: int):
    """The configuration of the zoo on data draw ``pool`` (a zoo draws its data from ``cfg.seeds[0]``)."""
    return replace(cfg, seeds=(pool,))


def zoo_config(cfg, norm: str) -> dict:
    """What decides member t's model: not ``n_models`` (row t of the keep mask is the same in any zoo)."""
    return {**cfg.result_key("n_models"), "norm": norm, "data_seed": cfg.seeds[0]}


def zoo_entry(cfg, norm: str) -> results.Entry:
    """The members' entry: ``model_{t}`` for every t ever trained, whatever ``n_models`` asked for it."""
    return results.Entry("zoo", zoo_config(cfg, norm), code=results.code_of("zoo"))


def zoo_results_entry(cfg, norm: str) -> results.Entry:
    """The entry for results of the whole zoo of ``cfg.n_models`` members (``Zoo.entry``)."""
    return results.Entry("zoo_results", {**zoo_config(cfg, norm), "n_models": cfg.n_models},
                         code=results.code_of("zoo"))


def member_name(t: int) -> str:
    return f"model_{t}"


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


def run_task(cfg, norm: str, members: Sequence[int], cache: str | None = None, inputs=None) -> dict:
    """Train the members of (cfg, norm)'s zoo among ``members`` that have no cache entry; save each one.

    The unit of work of every way of training a zoo. Idempotent: members already cached are skipped, so
    a retried or duplicated task costs nothing but its check.

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
        experiment, pool_x, test_x = inputs if inputs is not None else _worker_inputs(cfg)
        pool_y = experiment.pool_y
        keep = data_lib.balanced_keep_mask(max(max(todo) + 1, 2), len(pool_y), seed=cfg.seeds[0],
                                           strata=experiment.pool_is_outlier)[todo]
        spec = zoo_spec(cfg, norm, experiment, pool_x)
        wanted = checkpoint_epochs(cfg.epochs)
        device = train.resolve_device(cfg.device)
        path = ensemble.choose_path(device)
        with one_thread():
            networks = []
            for t in todo:
                torch.manual_seed(member_seed(t))
                networks.append(models.build(*spec).to(device))
            pool_on_device = pool_x.to(device)
            trained = ensemble.train_models(
                networks, pool_on_device, pool_y, keep, [member_seed(t) for t in todo], epochs=cfg.epochs,
                batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                schedule=cfg.schedule, snapshot_x=pool_on_device, snapshot_epochs=wanted, path=path,
                progress=False, snapshot_states=True)
            pool_logits = ensemble.predict_all(trained.models, pool_on_device, path=path)  # (K, N, C)
            test_logits = ensemble.predict_all(trained.models, test_x, path=path)  # (K, n_test, C)
        for k, t in enumerate(todo):
            entry.save(member_name(t), {
                "keep": keep[k],  # (N,) bool
                "state_dict": {name: v.cpu() for name, v in trained.models[k].state_dict().items()},
                "logits": pool_logits[k],  # (N, C) float32
                "test_logits": test_logits[k],  # (n_test, C) float32
                "checkpoint_epochs": torch.tensor(wanted),  # (E,)
                "checkpoint_logits": trained.snapshots[:, k],  # (E, N, C) float16
                # minimal version (issue 22): the weights at every checkpoint epoch, for the influence probes at
                # fit-level crossings (quick: ~40 kB a checkpoint for the width-16 CNN)
                "checkpoint_state_dicts": trained.states[k],  # E state dicts
            })
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
    return Zoo(
        norm=norm, keep=torch.stack([s["keep"] for s in stored]), labels=experiment.pool_y,
        is_outlier=experiment.pool_is_outlier,
        logits=torch.stack([s["logits"] for s in stored]),
        checkpoint_epochs=stored[0]["checkpoint_epochs"].float(),
        checkpoint_logits=torch.stack([s["checkpoint_logits"] for s in stored], dim=1),
        test_logits=torch.stack([s["test_logits"] for s in stored]), test_labels=experiment.test_y,
        members=entry, entry=zoo_results_entry(cfg, norm), arch_spec=zoo_spec(cfg, norm, experiment, pool_x),
    )
