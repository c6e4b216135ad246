"""The data-and-models chapter: examples of the data and of every kind of outlier, the parameter counts of every
network variant, and the same-schedule training runs (``runs.train_run``) read as a figure, a table, the values
the text quotes and the chapter's metrics.

Kept apart from :mod:`bnlib.runs`, whose source is part of the cache key of every run: how a chapter reads runs
must not invalidate them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from . import config, data, models, plots, results, stats, verdict

Runs = Mapping[str, Sequence[Any]]  # norm -> its ``runs.Run`` of every seed, in the order of ``cfg.seeds``


def first_of_each_class(experiment: data.ExperimentData) -> tuple[torch.Tensor, list[str]]:
    """One training inlier per class (the first), and its class name: images (C, ...) and titles."""
    inliers = ~experiment.is_canary
    first = [int(np.flatnonzero((experiment.train_y == c) & inliers)[0]) for c in range(experiment.num_classes)]
    return experiment.train_x[first], [experiment.class_names[experiment.train_y[i]] for i in first]


def outlier_examples(experiment: data.ExperimentData, per_kind: int = 8, seed: int = 0,
                     kinds: Sequence[str] = config.OUTLIER_KINDS) -> tuple[torch.Tensor, list[str]]:
    """``per_kind`` outliers of every kind (``data.make_outliers`` from the training inliers, one generator seeded
    ``seed`` drawn in the order of ``kinds``), and titles "kind → the random label's class"."""
    generator = torch.Generator().manual_seed(seed)
    inliers = ~experiment.is_canary
    samples, titles = [], []
    for kind in kinds:
        images, labels = data.make_outliers(kind, per_kind, experiment.train_x[inliers], experiment.train_y[inliers],
                                            experiment.num_classes, generator)
        samples.append(images)
        titles += [f"{kind}\n→ {experiment.class_names[int(y)]}" for y in labels]
    return torch.cat(samples), titles


def network_shape(cfg, experiment: data.ExperimentData) -> dict[str, int]:
    """The keyword arguments of ``models.build`` besides arch and norm, for this data and ``cfg.width``."""
    return dict(in_channels=experiment.train_x.shape[1], image_size=experiment.train_x.shape[-1],
                num_classes=experiment.num_classes, width=cfg.width)


def parameter_count_rows(shape: Mapping[str, int], archs: Sequence[str] = config.ARCHS,
                         norms: Sequence[str] = config.NORMS) -> list[tuple[str, ...]]:
    """Rows (`arch`, then the parameter count of each norm's variant, with thousands separators) of the chapter's
    table; the header is ``("arch", *norms)``."""
    return [(f"`{arch}`", *(f"{models.count_parameters(models.build(arch, norm, **shape)):,}" for norm in norms))
            for arch in archs]


def parameter_counts(cfg, shape: Mapping[str, int]) -> dict[str, str]:
    """The text's values: ``arch`` and the parameter counts of its BN and no-norm variants (``params_batch``,
    ``params_none``)."""
    return {"arch": cfg.arch, **{f"params_{norm}": f"{models.count_parameters(models.build(cfg.arch, norm, **shape)):,}"
                                 for norm in config.COMPARED_NORMS}}


def training_figure(runs_by_norm: Runs):
    """Per norm, mean over seeds with the min-max band, along training: the fit (inlier train accuracy), the
    test accuracy and the canary memorization (inserted minus held-out canary accuracy). Returns the figure."""
    fig, axes = plots.subplots(1, 3, height=3.4, sharex=True)
    for norm, norm_runs in runs_by_norm.items():
        epochs = norm_runs[0].column("epoch")
        plots.band(axes[0], epochs, [r.column("inliers_acc") for r in norm_runs], norm)
        plots.band(axes[1], epochs, [r.column("test_acc") for r in norm_runs], norm)
        memorization = [np.subtract(r.column("canaries_in_acc"), r.column("canaries_out_acc")) for r in norm_runs]
        plots.band(axes[2], epochs, memorization, norm)
    titles = ["train accuracy\n(inliers)", "test accuracy", "canary accuracy:\ninserted − held out"]
    for ax, title in zip(axes, titles, strict=True):
        ax.set(title=title, xlabel="epoch")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(runs_by_norm),
               fontsize=plots.MIN_FONT)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def final_values(runs_by_norm: Runs, key: str) -> dict[str, list[float]]:
    """norm -> ``key`` (e.g. ``test_acc``) at the end of each seed's run."""
    return {norm: [run.final[key] for run in norm_runs] for norm, norm_runs in runs_by_norm.items()}


def final_accuracies(runs_by_norm: Runs) -> dict[str, float]:
    """The text's values: per norm, the mean over seeds of the final test accuracy (``test_acc_{norm}``) and of the
    final training-inlier accuracy (``train_acc_{norm}``)."""
    values = {}
    for norm in runs_by_norm:
        values[f"test_acc_{norm}"] = stats.mean_ci(final_values(runs_by_norm, "test_acc")[norm])["mean"]
        values[f"train_acc_{norm}"] = stats.mean_ci(final_values(runs_by_norm, "inliers_acc")[norm])["mean"]
    return values


def accuracy_rows(runs_by_norm: Runs) -> list[tuple[str, str, str]]:
    """Rows (norm, mean final inlier train accuracy, mean final test accuracy) of the chapter's table."""
    fit, test = final_values(runs_by_norm, "inliers_acc"), final_values(runs_by_norm, "test_acc")
    return [(plots.NORM_LABELS[norm], f"{np.mean(fit[norm]):.3f}", f"{np.mean(test[norm]):.3f}")
            for norm in runs_by_norm]


def chapter_metrics(runs_by_norm: Runs) -> dict[str, Any]:
    """The chapter's metrics: final test and training-inlier accuracy of every norm after the same schedule, with
    the paired t-test of BN against no norm over seeds (seed s of every norm trains on the same data draw and
    canaries) and, when both are there, verdict words, detectable differences and the unit (n counts seeds)."""
    both = all(norm in runs_by_norm for norm in config.COMPARED_NORMS)
    metrics = {}
    for key, name, higher_means, description in (
            ("test_acc", "test_accuracy_same_schedule", "better generalization",
             "Final test accuracy after the same SGD one-cycle schedule (eval-mode BN)."),
            ("inliers_acc", "train_accuracy_same_schedule", "faster / tighter fit of the inliers",
             "Final accuracy on the training inliers after the same schedule (eval-mode BN).")):
        final = final_values(runs_by_norm, key)
        p_value = stats.paired_test(final["batch"], final["none"])["t_p_value"] if both else None
        metrics[name] = results.metric_entry(
            {norm: stats.mean_ci(values) for norm, values in final.items()}, p_value=p_value,
            test="paired t-test over seeds (same data draw per seed)", higher_means=higher_means,
            description=description, comparison="same_schedule")
    return verdict.annotate(metrics) if both else metrics
