"""The data-and-models chapter (bnlib.data_and_models_chapter): examples, parameter counts, and the same-schedule
runs read as values, a table, the chapter's metrics and a figure, on synthetic runs with known answers."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from bnlib import config, data, plots, runs, stats
from bnlib import data_and_models_chapter as chapter_lib

matplotlib.use("Agg")


def run(norm: str, seed: int, test: float, fit: float) -> runs.Run:
    """A finished run of two evaluations whose final test and inlier accuracies are ``test`` and ``fit``."""
    records = [{"epoch": 1.0, "inliers_acc": fit / 2, "test_acc": test / 2, "canaries_in_acc": 0.2,
                "canaries_out_acc": 0.1},
               {"epoch": 2.0, "inliers_acc": fit, "test_acc": test, "canaries_in_acc": 0.6, "canaries_out_acc": 0.1}]
    empty = torch.zeros(0)
    return runs.Run(norm, seed, records, empty, empty, empty, empty, {})


def synthetic_runs(norms=("batch", "none")) -> dict:
    finals = {"batch": [(0.80, 0.95), (0.82, 0.97), (0.84, 0.99)], "none": [(0.70, 0.85), (0.71, 0.88), (0.75, 0.90)]}
    return {norm: [run(norm, seed, test, fit) for seed, (test, fit) in enumerate(finals[norm])] for norm in norms}


def test_final_values_accuracies_and_rows():
    found = synthetic_runs()
    assert chapter_lib.final_values(found, "test_acc") == {"batch": [0.80, 0.82, 0.84], "none": [0.70, 0.71, 0.75]}
    values = chapter_lib.final_accuracies(found)
    assert values == {"test_acc_batch": pytest.approx(0.82), "train_acc_batch": pytest.approx(0.97),
                      "test_acc_none": pytest.approx(0.72), "train_acc_none": pytest.approx(0.8766667)}
    assert chapter_lib.accuracy_rows(found) == [("BatchNorm", "0.970", "0.820"), ("no norm", "0.877", "0.720")]


def test_chapter_metrics_pair_the_seeds_and_need_both_norms_for_a_verdict():
    found = synthetic_runs()
    metrics = chapter_lib.chapter_metrics(found)
    assert list(metrics) == ["test_accuracy_same_schedule", "train_accuracy_same_schedule"]
    test = metrics["test_accuracy_same_schedule"]
    expected = stats.paired_test([0.80, 0.82, 0.84], [0.70, 0.71, 0.75])["t_p_value"]
    assert test["p_value"] == pytest.approx(expected) and test["batch"]["mean"] == pytest.approx(0.82)
    assert test["comparison"] == "same_schedule" and "verdict" in test
    alone = chapter_lib.chapter_metrics(synthetic_runs(("batch",)))
    assert alone["test_accuracy_same_schedule"]["p_value"] is None
    assert "verdict" not in alone["test_accuracy_same_schedule"]


def test_training_figure_bands_the_seeds_at_the_columns_width():
    found = synthetic_runs()
    fig = chapter_lib.training_figure(found)
    assert np.allclose(fig.axes[1].lines[0].get_ydata(), [0.41, 0.82])  # BN test accuracy, mean over seeds
    assert np.allclose(fig.axes[2].lines[0].get_ydata(), [0.1, 0.5])  # canaries in - out
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    assert fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES)
    assert all(t.get_fontsize() >= plots.MIN_FONT for t in texts)
    plt.close(fig)


@pytest.fixture(scope="module")
def experiment():
    return data.make_experiment_data(config.load("smoke", device="cpu"), seed=0)


def test_examples_of_the_data_and_of_every_outlier_kind(experiment):
    images, titles = chapter_lib.first_of_each_class(experiment)
    assert len(images) == experiment.num_classes and titles == list(experiment.class_names)
    outliers, labels = chapter_lib.outlier_examples(experiment, per_kind=3)
    assert outliers.shape[0] == 3 * len(config.OUTLIER_KINDS) and outliers.shape[1:] == experiment.train_x.shape[1:]
    assert [title.split("\n")[0] for title in labels] == [kind for kind in config.OUTLIER_KINDS for _ in range(3)]
    again, same_labels = chapter_lib.outlier_examples(experiment, per_kind=3)
    assert torch.equal(outliers, again) and labels == same_labels  # seeded


def test_parameter_counts_batchnorm_replaces_the_biases(experiment):
    cfg = config.load("smoke", width=4)
    shape = chapter_lib.network_shape(cfg, experiment)
    assert shape["width"] == 4 and shape["num_classes"] == experiment.num_classes
    rows = chapter_lib.parameter_count_rows(shape, archs=("small_cnn",), norms=("batch", "none"))
    batch, none = (int(cell.replace(",", "")) for cell in rows[0][1:])
    assert rows[0][0] == "`small_cnn`" and batch - none == 7 * 4  # BN adds 2C per layer, drops the C biases
    values = chapter_lib.parameter_counts(cfg, shape)
    assert values == {"arch": cfg.arch, "params_batch": f"{batch:,}", "params_none": f"{none:,}"}
