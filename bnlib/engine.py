"""Train zoo members on a Dask cluster: the same tasks as on one machine, scheduled by Dask.

Why Dask (``distributed``, with ``dask-jobqueue`` for Slurm/PBS) rather than Ray: a zoo member is a
plain Python function call (:func:`bnlib.zoo.run_task`) that writes its result into a shared folder,
which is what ``Client.submit`` schedules, with no actors or object store to configure. Dask provides
what this needs and nothing we would have to write: abstract worker resources for GPU-aware placement
(``dask worker --resources GPU=1``; a task asking for ``{"GPU": 1}`` runs only where one is free),
``retries=`` for tasks that raise, rescheduling of the tasks of a worker that died, ``LocalCluster`` on
127.0.0.1 for tests, and ``dask-jobqueue`` to start workers as Slurm or PBS jobs. Its wheels are pure
Python (Ray's are ~70 MB per platform with a C++ core), which keeps CI light.

Coordination: the shared results folder is the only state. A task trains the members of its group that
have no cache entry and writes each one atomically; it returns a few numbers, never a model. Any worker
can run any task, a retried or duplicated task skips what exists, and a chapter run afterwards (on any
machine that sees the folder) finds every member cached. Killing a worker loses at most the members in
flight on it; the scheduler runs its task again elsewhere.

Placement: with ``gpu=True`` a task is one vmap group (up to ``ensemble.MAX_CONCURRENT`` members) and
asks for one ``GPU`` resource, so each GPU trains one group at a time (one worker per GPU, each with
``CUDA_VISIBLE_DEVICES`` set to its GPU and ``--resources GPU=1``: :func:`jobqueue_cluster` starts such
workers as one-GPU batch jobs); with ``gpu=False`` a task is one member, trained with one thread (one
worker per core, ``--nthreads 1``). Results are bit-identical to the sequential loop on CPUs
(``tests/test_zoo_tasks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import results, zoo

JOBQUEUES = ("slurm", "pbs")


@dataclass
class Submitted:
    """What :func:`submit_zoo` handed to the cluster: the futures and the members each one trains."""

    futures: list
    groups: list[tuple[str, tuple[int, ...]]]  # (norm, members) per future


def connect(address: str | None = None, *, jobqueue: str | None = None, jobs: int = 1, gpu: bool = True,
            **cluster_options):
    """A ``distributed.Client``.

    Args:
        address: a running scheduler (``tcp://host:8786``) or a scheduler file (``*.json``, as written by
            ``dask scheduler --scheduler-file``); None with ``jobqueue`` None = a local cluster.
        jobqueue: ``slurm`` or ``pbs``: start ``jobs`` batch jobs through dask-jobqueue (:func:`jobqueue_cluster`).
        gpu: jobqueue only: each job holds one GPU (and one worker offering it as a ``GPU`` resource).
        cluster_options: passed to the jobqueue cluster (``queue``, ``account``, ``walltime``, ``cores``,
            ``memory``, ``job_extra_directives`` ...).
    """
    from distributed import Client

    if jobqueue is not None and address is not None:
        raise ValueError(f"Parameters 'address' ({address!r}) and 'jobqueue' ({jobqueue!r}) exclude each other: "
                         "connect to a running scheduler, or start one with its workers as batch jobs.")
    if address is not None:
        return Client(scheduler_file=address) if address.endswith(".json") else Client(address)
    if jobqueue is None:
        # the client owns this local cluster and closes it with itself
        return Client(host="127.0.0.1", threads_per_worker=1, processes=True, dashboard_address=":0")
    if jobs < 1:
        raise ValueError(f"Parameter 'jobs' must be >= 1; got {jobs}.")
    cluster = jobqueue_cluster(jobqueue, gpu=gpu, **cluster_options)
    cluster.scale(jobs=jobs)
    return Client(cluster)


def jobqueue_cluster(jobqueue: str, *, gpu: bool = True, **options):
    """A dask-jobqueue cluster (not yet scaled) whose jobs are zoo workers.

    With ``gpu``: one GPU per job (``--gres=gpu:1`` on Slurm, ``ngpus=1`` on PBS), one worker process that
    offers it as the resource ``GPU=1``; the batch system's ``CUDA_VISIBLE_DEVICES`` points the worker at
    its GPU. Without: one worker process of one thread per requested core.
    """
    if jobqueue not in JOBQUEUES:
        raise ValueError(f"Parameter 'jobqueue' got {jobqueue!r}; allowed values: {', '.join(map(repr, JOBQUEUES))}.")
    import dask_jobqueue

    cores, memory = options.pop("cores", 4 if gpu else 1), options.pop("memory", "32GB")
    cluster_class = dask_jobqueue.SLURMCluster if jobqueue == "slurm" else dask_jobqueue.PBSCluster
    if not gpu:
        return cluster_class(cores=cores, memory=memory, processes=cores, **options)
    if jobqueue == "slurm":
        options["job_extra_directives"] = [*options.get("job_extra_directives", []), "--gres=gpu:1"]
    else:
        options.setdefault("resource_spec", f"select=1:ncpus={cores}:ngpus=1:mem={memory}")
    return cluster_class(cores=cores, memory=memory, processes=1, worker_extra_args=["--resources", "GPU=1"], **options)


def submit_zoo(client, cfg, norms: Sequence[str], *, gpu: bool = False, retries: int = 3) -> Submitted:
    """Submit one task per missing member (CPU) or per vmap group of missing members (``gpu``) of every norm.

    Tasks write into this process's ``results.cache_root()``, which every worker must see at the same
    path (a shared filesystem); nothing else is exchanged.
    """
    if retries < 0:
        raise ValueError(f"Parameter 'retries' must be >= 0; got {retries}.")
    cache = str(results.cache_root().resolve())
    device = "cuda" if gpu else "cpu"
    submitted = Submitted(futures=[], groups=[])
    for norm in norms:
        for group in zoo.member_groups(zoo.missing_members(cfg, norm), device):
            key = f"zoo-{zoo.zoo_entry(cfg, norm).key}-{norm}-{'-'.join(map(str, group))}"
            submitted.futures.append(client.submit(
                zoo.run_task, cfg, norm, group, cache, key=key, pure=False, retries=retries,
                resources={"GPU": 1} if gpu else None))
            submitted.groups.append((norm, group))
    return submitted


def wait(submitted: Submitted, progress: bool = True) -> list[dict]:
    """Wait for every task (re-raising the first that failed after its retries); returns their reports."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    sizes = {future.key: len(group) for future, (_, group) in zip(submitted.futures, submitted.groups, strict=True)}
    reports = []
    with tqdm(total=sum(sizes.values()), desc="zoo members (dask)", disable=not progress) as bar:
        for future in as_completed(submitted.futures):
            reports.append(future.result())
            bar.update(sizes[future.key])
    return reports


def train_zoo(client, cfg, norms: Sequence[str] | None = None, *, gpu: bool = False, retries: int = 3,
              progress: bool = True) -> list[dict]:
    """Train every missing member of ``cfg``'s zoos (``norms``, default ``cfg.norms``) on the cluster."""
    return wait(submit_zoo(client, cfg, norms or cfg.norms, gpu=gpu, retries=retries), progress=progress)
