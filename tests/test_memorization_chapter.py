"""The memorization chapter's reading of its population study (bnlib.memorization_chapter), on the smoke study
(shared, through the session's cache, with tests/test_population.py): the design's numbers follow from the keep
mask, the tables from the comparisons, the metrics form the chapter's families."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib import chapter, config, memorization_chapter, plots, population

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def study(smoke_cfg):
    found = population.study(smoke_cfg, progress=False)
    return found, memorization_chapter.all_comparisons(found, n_bootstrap=100)


def test_design_values_follow_from_the_balanced_keep_mask(smoke_cfg, study):
    found, _ = study
    values = memorization_chapter.design_values(smoke_cfg, found, 100)
    assert values["models_per_norm"] == smoke_cfg.n_models * len(smoke_cfg.pools) and values["n_bootstrap"] == 100
    assert values["member_inliers"] == values["pool_inliers"] // 2  # every model trains on half of each group
    assert values["member_canaries"] == values["pool_canaries"] // 2
    total = values["pool_inliers"] + values["pool_canaries"]
    assert values["canary_rate"] == pytest.approx(values["pool_canaries"] / total)
    assert (values["n_pools"], values["common_epochs"]) == (len(smoke_cfg.pools), smoke_cfg.epochs)


def test_every_measure_is_compared_every_way(study):
    found, compared = study
    assert set(compared) == set(memorization_chapter.MEASURES)
    assert all(list(c) == population.comparison_names(found) for c in compared.values())
    assert all(set(config.COMPARISONS) <= set(c) for c in compared.values())


def test_tables_show_the_comparisons_intervals_and_the_fits(study):
    found, compared = study
    canary = compared[("outliers", "hard")]
    rows = memorization_chapter.same_schedule_rows(found, canary)
    assert [row[0] for row in rows] == ["BatchNorm", "no norm"]
    assert all(len(row) == len(memorization_chapter.SAME_SCHEDULE_HEADER) for row in rows)
    assert rows[0][5] == chapter.interval(canary["same_schedule"]["batch"], ".3f", "models")
    fits = memorization_chapter.same_schedule_fits(found)
    assert rows[1][1] == f"{fits['same_fit_none']:.3f}"
    assert fits["same_fit_batch"] == pytest.approx(found["populations"]["batch"].final_fit())
    equal = memorization_chapter.equal_exposure_rows(found, canary)
    arms = found["equal_exposure"]["arms"]
    assert [row[2] for row in equal] == [str(arms["batch"]["steps"])] * 2  # the same steps in both arms
    assert equal[0][1] == f"{found['equal_exposure']['calibration']['lr']:.3g}"
    assert equal[1][1] == f"{arms['none']['lr']:.3g}"
    assert equal[0][6] == chapter.interval(canary["equal_exposure"]["batch"], ".3f", "models")
    grid = memorization_chapter.grid_rows(found, canary)
    assert [row[0].split()[0] for row in grid] == [f"{level:.2f}" for level in found["levels"]]
    assert sum("(headline)" in row[0] for row in grid) == 1
    for row, level in zip(grid, found["levels"], strict=True):
        result = canary[population.matched_name(level)]
        expected = f"{result['batch']['mean']:.3f}" if np.isfinite(result["batch"]["mean"]) else "not reached"
        assert row[3] == expected
        if not np.isfinite(result["difference"]["mean"]):  # no pair crosses this level: a "not reached" row
            assert row[5] == "not reached"


def test_crossing_and_equal_exposure_values(study):
    found, _ = study
    values = memorization_chapter.crossing_values(found)
    crossing = found["crossings"]["none"][found["headline"]]
    assert values["crossed_none"] == f"{crossing['crossed']} of {crossing['members']}"
    assert values["matched_level"] == found["headline"]
    np.testing.assert_equal(values["cross_epoch_batch"], found["crossings"]["batch"][found["headline"]]["mean_epoch"])
    np.testing.assert_equal(values["cross_steps_none"], crossing["mean_steps"])
    equal = memorization_chapter.equal_exposure_values(found)
    assert equal["equal_target"] == pytest.approx(found["populations"]["none"].final_fit())
    tried = found["equal_exposure"]["calibration"]["tried"]
    assert equal["calibration_tried"] == ", ".join(f"{lr:.3g} → {fit:.3f}" for lr, fit in tried.items())
    assert equal["equal_lr"] == found["equal_exposure"]["calibration"]["lr"]


def test_grid_band_pairs_the_models_along_the_declared_levels(study):
    found, _ = study
    band = memorization_chapter.grid_band(found)
    np.testing.assert_array_equal(band["levels"], found["levels"])
    values = {norm: population.on_fit_grid(found["populations"][norm], list(found["levels"]))
              for norm in ("batch", "none")}
    difference = values["batch"] - values["none"]
    np.testing.assert_array_equal(band["n"], np.isfinite(difference).sum(0))
    fig = plots.memorization_against_fit(found, band)
    assert fig.axes[0].get_title() == "canary memorization against fit"
    plt.close(fig)


def test_scores_figure_and_most_memorized_examples(smoke_cfg, study):
    found, _ = study
    fig = memorization_chapter.scores_figure(found)
    assert len(fig.axes[0].lines) == 4 and fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES)
    assert all(t.get_fontsize() >= plots.MIN_FONT for t in fig.findobj(matplotlib.text.Text) if t.get_text())
    plt.close(fig)
    images, titles = memorization_chapter.most_memorized_examples(smoke_cfg, found, 3)
    assert len(images) == len(titles) == 4 * 3  # BN canaries, BN inliers, no-norm canaries, no-norm inliers
    zoo_model, scores = memorization_chapter.first_pool_scores(found, "batch")
    top = float(scores["hard"][zoo_model.is_outlier].max())
    assert titles[0].startswith(f"{top:.2f} → ")
    hard = [float(title.split(" → ")[0]) for title in titles[:3]]
    assert hard == sorted(hard, reverse=True)


def test_metrics_families_and_sentences(smoke_cfg, study):
    found, compared = study
    metrics = memorization_chapter.chapter_metrics(smoke_cfg, found, compared)
    names = [name for name, _ in memorization_chapter.MEASURES.values()]
    assert set(metrics) == {f"{name}_{c}" for name in names for c in population.comparison_names(found)}
    headline = {f"{name}_{c}" for name in memorization_chapter.HEADLINE for c in config.COMPARISONS}
    for name, entry in metrics.items():  # the headline family is Holm-adjusted (where it has a p-value), the rest not
        p_value = entry["difference"]["p_value"]
        if name in headline and np.isfinite(p_value):
            assert entry["p_value_holm"] >= p_value
        else:
            assert entry["p_value_holm"] is None
    assert headline >= {name for name, entry in metrics.items() if entry["p_value_holm"] is not None}
    designs = memorization_chapter.design_test(found)
    assert designs["method"] == "paired t of the designs' per-pair differences"
    values = memorization_chapter.sentences(metrics, designs)
    assert set(values) == {f"{c}_sentence" for c in config.COMPARISONS} | {"designs_agree"}
    assert values["designs_agree"].startswith("The two designs") and "model pairs" in values["designs_agree"]
    assert all(isinstance(text, str) and text for text in values.values())
    assert np.isfinite(metrics["canary_memorization_same_schedule"]["difference"]["mean"])
