"""One cached training run on the full training set (inliers + inserted canaries), measured as it trains.

This is the unit of the "memorization against fit" comparison: every evaluation records inlier
training fit, test accuracy and the model's accuracy/loss on the inserted and the held-out canaries,
all in eval-mode BN (running statistics), so fit and memorization are read off the same model at
the same moment. Runs are cached by (configuration, norm, seed, schedule overrides).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from . import data as data_lib
from . import models, results, train

# Inlier training accuracy (the fit) is evaluated on a fixed random subset of this many training inliers:
# evaluations would otherwise cost more than the training steps between them (standard error of the
# accuracy at 0.95 with 1,000 examples: 0.007).
FIT_EVAL_SIZE = 1000


@dataclass
class Run:
    """A finished training run.

    Attributes:
        norm, seed: what was trained.
        records: one dict per evaluation with ``epoch``, ``step`` and ``{set}_acc`` / ``{set}_loss`` for
            sets ``inliers`` (a fixed subset of ``FIT_EVAL_SIZE`` training inliers), ``canaries_in``
            (inserted), ``canaries_out`` (held out) and ``test``.
        canary_in_logits, canary_out_logits: (K, C) final eval-mode logits on the two canary halves.
        canary_in_labels, canary_out_labels: (K,) their (random) labels.
        state_dict: final weights (CPU).
    """

    norm: str
    seed: int
    records: list[dict[str, float]]
    canary_in_logits: torch.Tensor
    canary_out_logits: torch.Tensor
    canary_in_labels: torch.Tensor
    canary_out_labels: torch.Tensor
    state_dict: dict[str, torch.Tensor]

    def column(self, key: str) -> list[float]:
        return [r[key] for r in self.records]

    @property
    def final(self) -> dict[str, float]:
        return self.records[-1]


def train_run(cfg, norm: str, seed: int, evals_per_epoch: int = 1, progress: bool = True, **overrides) -> Run:
    """Train ``cfg.arch`` with ``norm`` on the seed-``seed`` data draw, or load the cached run.

    Args:
        overrides: replace fields of ``cfg`` for this run only (e.g. ``epochs=36`` or ``lr=0.1``), so
            that longer or faster schedules can be compared at matched fit.
    """
    cfg = replace(cfg, **overrides) if overrides else cfg
    key = {**cfg.result_key("n_models"), "norm": norm, "seed": seed, "evals_per_epoch": evals_per_epoch,
           "fit_eval_size": FIT_EVAL_SIZE}
    entry = results.Entry("run", key, code=results.code_of("runs"))
    if entry.has("run"):
        return Run(**entry.load("run"))
    experiment = data_lib.make_experiment_data(cfg, seed=seed)
    train_x = experiment.standardize(experiment.train_x)
    inlier = torch.nonzero(~experiment.is_canary).squeeze(1)
    fit_index = inlier[torch.randperm(len(inlier), generator=torch.Generator().manual_seed(seed))[:FIT_EVAL_SIZE]]
    sets = {
        "inliers": (train_x[fit_index], experiment.train_y[fit_index]),
        "canaries_in": (train_x[experiment.is_canary], experiment.train_y[experiment.is_canary]),
        "canaries_out": (experiment.standardize(experiment.heldout_canary_x), experiment.heldout_canary_y),
        "test": (experiment.standardize(experiment.test_x), experiment.test_y),
    }
    device = train.resolve_device(cfg.device)
    torch.manual_seed(seed)
    model = models.build_for(cfg, norm, experiment).to(device)
    history = train.fit(model, train_x, experiment.train_y, epochs=cfg.epochs, batch_size=cfg.batch_size,
                        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, schedule=cfg.schedule,
                        seed=seed, eval_sets=sets, evals_per_epoch=evals_per_epoch, progress=progress,
                        desc=f"{norm} seed {seed}")
    value = {
        "norm": norm, "seed": seed, "records": history.records,
        "canary_in_logits": train.predict_logits(model, sets["canaries_in"][0]),
        "canary_out_logits": train.predict_logits(model, sets["canaries_out"][0]),
        "canary_in_labels": sets["canaries_in"][1], "canary_out_labels": sets["canaries_out"][1],
        "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
    }
    entry.save("run", value)
    return Run(**value)
