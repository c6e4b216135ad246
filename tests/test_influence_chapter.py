"""The influence chapter's reading of the population (bnlib.influence_chapter) and its figures, on synthetic
per-model summaries with known answers (no training)."""

import json
import math

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib import config, influence, influence_chapter, influence_plots, plots

matplotlib.use("Agg")

COMPARISONS = ("same_schedule", "matched_fit", "equal_exposure")


def summaries(effect: float = 3.0, pairs: int = 16, seed: int = 0) -> dict:
    """comparison -> norm -> population_summaries-shaped arrays: BN canaries ``effect`` times the no-BN ones
    (log ratio and canary log), inliers alike, two pools."""
    rng = np.random.default_rng(seed)
    out = {}
    for comparison in COMPARISONS:
        base = rng.normal(1.0, 0.3, pairs)
        out[comparison] = {}
        for norm, shift in (("batch", math.log(effect)), ("none", 0.0)):
            inlier = rng.normal(-2.0, 0.2, pairs)
            canary = inlier + base + shift + rng.normal(0, 0.1, pairs)
            out[comparison][norm] = {name: {"log_ratio": canary - inlier, "canary_log": canary, "inlier_log": inlier}
                                     for name in influence.DEFINITION_NAMES}
            out[comparison][norm]["pools"] = {"label": np.arange(pairs) % 2}
    return out


def read() -> dict:
    return {"same_schedule": {"fit_level": None}, "matched_fit": {"fit_level": 0.95},
            "equal_exposure": {"fit_level": 0.9}}


def metrics_for(effect: float):
    _, params = config.load("smoke", extras=influence.ChapterParams)
    compared = influence_chapter.compare(summaries(effect))
    return compared, influence_chapter.chapter_metrics(compared, read(), params, None)


def test_a_planted_effect_gives_bn_higher_and_a_null_does_not():
    compared, metrics = metrics_for(3.0)
    entry = metrics["influence_eval_mode_outlier_inlier_ratio_matched_fit"]
    assert entry["difference"]["mean"] == pytest.approx(3.0, rel=0.1)
    assert 2.5 < entry["difference"]["ci95"][0] < entry["difference"]["ci95"][1] < 3.5
    assert entry["verdict"].startswith("BN higher") and entry["unit"] == "models" and entry["family"] == "primary"
    assert entry["difference"]["n"] == 16 and entry["fit_level"] == 0.95 and entry["scale"] == "log"
    assert metrics["influence_counterfactual_canary_ratio_same_schedule"]["family"] == "secondary"
    assert metrics["influence_eval_mode_outlier_inlier_ratio_same_schedule"]["fit_level"] is None
    assert len(metrics) == 3 * 3 * 2
    assert all(name.startswith("influence_") and "_ratio_" in name for name in metrics)
    json.dumps(metrics)  # the summary is JSON
    _, null = metrics_for(1.0)
    words = [influence_chapter.verdict.leading_words(e["verdict"]) for e in null.values()]
    assert words.count("BN higher") + words.count("no-BN higher") <= 2  # 18 rows at the 5% level, fixed seed
    primary = [e for e in null.values() if e["family"] == "primary"]
    assert all(e["p_value_holm"] >= e["p_value"] for e in primary)


def test_ratio_verdict_words():
    result = {"n": 16, "log_mean": math.log(2.0), "se": 0.1}
    assert influence_chapter.ratio_verdict(result, 0.001).startswith("BN higher (ratio ×2")
    assert influence_chapter.ratio_verdict({**result, "log_mean": -0.7}, 0.001).startswith("no-BN higher")
    text = influence_chapter.ratio_verdict(result, 0.2)
    assert text.startswith("no difference detected (could detect ≥ ×1.32")  # exp(2.80 x 0.1)
    assert influence_chapter.ratio_verdict({**result, "n": 2}, 0.001).startswith("inconclusive")
    assert influence_chapter.ratio_verdict({**result, "se": float("nan")}, None).startswith("inconclusive")


def test_table_rows_and_sentences_quote_the_verdicts():
    _, metrics = metrics_for(3.0)
    rows = influence_chapter.table_rows(metrics)
    assert len(rows) == 9 and len(rows[0]) == len(influence_chapter.TABLE_HEADER)
    assert rows[0][0] == "1 · eval mode" and rows[0][1] == "same schedule" and "(Holm)" in rows[0][5]
    assert "16 pairs" in rows[0][4] and rows[0][6] == "BN higher"
    assert "(Holm)" not in rows[3][5]  # in batch: secondary, raw p
    text = influence_chapter.sentences(metrics)["eval_mode_outlier_inlier_matched_fit"]
    assert "16 model pairs" in text and '"BN higher' in text
    assert influence_chapter.comparison_label("matched_fit_0p95") == "matched fit 0.95"
    assert influence_chapter.comparison_label("equal_exposure") == "equal exposure"


def test_amplification_reads_the_canaries_alone_and_the_toy_rho():
    compared, _ = metrics_for(3.0)
    amp = influence_chapter.amplification(compared)
    assert set(amp) == set(influence.DEFINITION_NAMES) and amp["eval_mode"]["ratio"] == pytest.approx(3.0, rel=0.1)
    toy = influence_chapter.toy_amplification(128, [0.5, 20.0], residuals=(1.0,))
    from bnlib import theory

    assert np.allclose(toy[1.0], theory.amplification(128, np.array([0.5, 20.0]), 0.0, 1.0, 1.0))


def small_fonts(fig) -> list[str]:
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    return [f"{t.get_text()!r} at {t.get_fontsize()}" for t in texts if t.get_fontsize() < plots.MIN_FONT]


def test_figures_are_column_wide_and_readable():
    found = summaries(3.0)
    compared = influence_chapter.compare(found)
    population = influence_plots.population_figure(found, compared)
    assert [ax.get_title() for ax in population.axes] == list(influence_chapter.DEFINITION_LABELS.values())
    distances = np.geomspace(0.3, 30, 20)
    amplification = influence_plots.amplification_figure(influence_chapter.amplification(compared),
                                                         influence_chapter.toy_amplification(32, distances),
                                                         distances, 32)
    for fig in (population, amplification):
        assert fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES) and not small_fonts(fig)
        plt.close(fig)
