"""The shared model zoo: T models per norm, each trained on a random half of one pool.

The Feldman-Zhang memorization estimator (subset ratio 1/2) and LiRA's shadow models are the same
population, so it is trained once per (configuration, norm), cached model by model (an interrupted run
resumes), and read by the memorization, membership-inference and ablation chapters.

Pool = the inlier training set + the K inserted canaries + the K held-out canaries of
``data.make_experiment_data(cfg, seed=cfg.seeds[0])``. ``keep[t, i]`` says whether pool example i was
in model t's training set; every example is IN for exactly T/2 models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from . import data as data_lib
from . import ensemble, models, results, train


@dataclass
class Zoo:
    """A trained model population for one norm.

    Attributes:
        norm: the normalizer of every model.
        keep: (T, N) bool, pool membership per model.
        labels: (N,) int64 pool labels; is_outlier: (N,) bool (canaries, inserted or held out).
        logits: (T, N, C) float32 eval-mode logits of the final models on the pool.
        checkpoint_epochs: (E,) epochs at which ``checkpoint_logits`` were taken (the last = final).
        checkpoint_logits: (E, T, N, C) float16 eval-mode logits during training.
        test_logits: (T, n_test, C) float32 eval-mode logits on the test set; test_labels: (n_test,).
        entry: the cache entry; ``state_dict(t)`` / ``model(t)`` load model t from it.
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

    @property
    def n_models(self) -> int:
        return self.keep.shape[0]

    def state_dict(self, t: int) -> dict[str, torch.Tensor]:
        return self.entry.load(f"model_{t}")["state_dict"]

    def model(self, t: int) -> nn.Module:
        """Model t, rebuilt and loaded (``weights_only=True``), in eval mode on the CPU."""
        model = models.build(*self.arch_spec)
        model.load_state_dict(self.state_dict(t))
        return model.eval()

    def train_accuracy(self, epoch_index: int = -1) -> torch.Tensor:
        """(T,) accuracy of each model on its own inlier training examples at a checkpoint."""
        correct = self.checkpoint_logits[epoch_index].float().argmax(-1) == self.labels
        mask = self.keep & ~self.is_outlier
        return (correct & mask).sum(1) / mask.sum(1)

    def test_accuracy(self) -> torch.Tensor:
        """(T,) final test accuracy of each model."""
        return (self.test_logits.argmax(-1) == self.test_labels).float().mean(1)


def checkpoint_epochs(epochs: int, count: int = 6) -> list[int]:
    """Up to ``count`` evenly spaced epochs (1-based) ending at ``epochs``."""
    count = min(count, epochs)
    return sorted({max(1, round(epochs * (k + 1) / count)) for k in range(count)})


def zoo_config(cfg, norm: str) -> dict:
    return {**cfg.result_key(), "norm": norm, "data_seed": cfg.seeds[0]}


def zoo_inputs(cfg) -> tuple[data_lib.ExperimentData, torch.Tensor, torch.Tensor]:
    """The data draw of a zoo and its normalized pool (N, C, H, W) and test inputs (n_test, C, H, W)."""
    experiment = data_lib.make_experiment_data(cfg, seed=cfg.seeds[0])
    return experiment, experiment.standardize(experiment.pool_x), experiment.standardize(experiment.test_x)


def train_zoo(cfg, norm: str, progress: bool = True) -> Zoo:
    """Train (or load from cache, resuming where a run stopped) the zoo of ``cfg.n_models`` for ``norm``.

    Models are trained through :func:`bnlib.ensemble.train_models` on the faster path for the device
    (one by one on a CPU, up to ``ensemble.MAX_CONCURRENT`` at once on CUDA) and saved as soon as they
    are done, so an interrupted run loses at most one group.
    """
    entry = results.Entry("zoo", zoo_config(cfg, norm), code=results.code_of("zoo"))
    experiment, pool_x, test_x = zoo_inputs(cfg)
    pool_y = experiment.pool_y
    keep = entry.get_or_compute(
        "keep", lambda: data_lib.balanced_keep_mask(cfg.n_models, len(pool_y), seed=cfg.seeds[0]))
    spec = (cfg.arch, norm, pool_x.shape[1], pool_x.shape[-1], experiment.num_classes, cfg.width)
    wanted = checkpoint_epochs(cfg.epochs)
    device = train.resolve_device(cfg.device)
    path = ensemble.choose_path(device)
    group_size = 1 if path == "sequential" else ensemble.MAX_CONCURRENT
    todo = [t for t in range(cfg.n_models) if not entry.has(f"model_{t}")]
    if todo:
        from tqdm.auto import tqdm

        pool_on_device = pool_x.to(device)
        bar = tqdm(total=len(todo), desc=f"zoo {norm} ({cfg.n_models - len(todo)} cached)", disable=not progress)
        for start in range(0, len(todo), group_size):
            group = todo[start:start + group_size]
            networks = []
            for t in group:
                torch.manual_seed(1000 + t)
                networks.append(models.build(*spec).to(device))
            trained = ensemble.train_models(
                networks, pool_on_device, pool_y, keep[group], [1000 + t for t in group], epochs=cfg.epochs,
                batch_size=cfg.batch_size, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                schedule=cfg.schedule, snapshot_x=pool_on_device, snapshot_epochs=wanted, path=path, progress=False)
            pool_logits = ensemble.predict_all(trained.models, pool_on_device, path=path)  # (K, N, C)
            test_logits = ensemble.predict_all(trained.models, test_x, path=path)  # (K, n_test, C)
            for k, t in enumerate(group):
                entry.save(f"model_{t}", {
                    "state_dict": {name: v.cpu() for name, v in trained.models[k].state_dict().items()},
                    "logits": pool_logits[k], "test_logits": test_logits[k],
                    "checkpoint_logits": trained.snapshots[:, k],
                })
            bar.update(len(group))
        bar.close()

    stored = [entry.load(f"model_{t}") for t in range(cfg.n_models)]
    return Zoo(
        norm=norm, keep=keep, labels=pool_y, is_outlier=experiment.pool_is_outlier,
        logits=torch.stack([s["logits"] for s in stored]),
        checkpoint_epochs=torch.tensor(wanted, dtype=torch.float32),
        checkpoint_logits=torch.stack([s["checkpoint_logits"] for s in stored], dim=1),
        test_logits=torch.stack([s["test_logits"] for s in stored]), test_labels=experiment.test_y,
        entry=entry, arch_spec=spec,
    )
