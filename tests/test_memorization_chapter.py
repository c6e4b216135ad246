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


def test_every_measure_is_compared_three_ways(study):
    _, compared = study
    assert set(compared) == set(memorization_chapter.MEASURES)
    assert all(set(c) == set(config.COMPARISONS) for c in compared.values())


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
    annealed = memorization_chapter.annealed_rows(found, canary)
    lengths = {norm: p.epochs for norm, p in found["annealed"]["populations"].items()}
    assert [row[1] for row in annealed] == [f"{lengths['batch']} epoch(s)", f"{lengths['none']} epoch(s)"]
    assert annealed[0][3] == chapter.interval(canary["matched_fit_annealed"]["batch"], ".3f", "models")


def test_crossing_and_annealed_values(study):
    found, _ = study
    values = memorization_chapter.crossing_values(found)
    crossing = found["crossings"]["none"]
    assert values["crossed_none"] == f"{crossing['crossed']} of {crossing['members']}"
    assert values["matched_level"] == found["level"]
    np.testing.assert_equal(values["cross_epoch_batch"], found["crossings"]["batch"]["mean_epoch"])  # NaN: none crossed
    np.testing.assert_equal(values["cross_lr_none"], found["crossings"]["none"]["mean_learning_rate"])
    annealed = memorization_chapter.annealed_values(found)
    slower = found["annealed"]["slower"]
    assert annealed["annealed_target"] == pytest.approx(found["populations"][slower].final_fit())
    tried = next(iter(found["annealed"]["calibration"].values()), {"tried": {}})["tried"]
    assert annealed["calibration_tried"] == (", ".join(f"{e} epochs → {f:.3f}" for e, f in tried.items())
                                             or "none needed")


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
    assert set(metrics) == {f"{name}_{c}" for name in names for c in config.COMPARISONS}
    headline = {f"{name}_{c}" for name in memorization_chapter.HEADLINE for c in config.COMPARISONS}
    for name, entry in metrics.items():  # the headline family is Holm-adjusted (where it has a p-value), the rest not
        p_value = entry["difference"]["p_value"]
        if name in headline and np.isfinite(p_value):
            assert entry["p_value_holm"] >= p_value
        else:
            assert entry["p_value_holm"] is None
    assert headline >= {name for name, entry in metrics.items() if entry["p_value_holm"] is not None}
    values = memorization_chapter.sentences(metrics)
    assert set(values) == {f"{c}_sentence" for c in config.COMPARISONS} | {"designs_agree"}
    assert all(isinstance(text, str) and text for text in values.values())
    assert np.isfinite(metrics["canary_memorization_same_schedule"]["difference"]["mean"])
