"""The influence chapter's reading of its tracks (bnlib.influence_chapter) and its figures (bnlib.influence_plots),
on synthetic tracks with known answers, and one tiny real run of every seed and norm."""

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from bnlib import config, influence, influence_chapter, influence_plots, plots

matplotlib.use("Agg")


def track(canary_scale: float, seed: int, lift: tuple[float, float] = (4.0, 1.0)) -> dict:
    """Three checkpoints, one probe batch of 4 inliers then 4 canaries; canaries ``canary_scale`` times the
    inliers; in-batch = 2 x eval mode; counterfactual = in-batch times ``lift`` (inliers, canaries)."""
    generator = torch.Generator().manual_seed(seed)
    is_canary = torch.tensor([[False] * 4 + [True] * 4])
    values = torch.rand(3, 1, 8, generator=generator) + 1.0
    values[..., 4:] *= canary_scale
    factor = torch.tensor([lift[0]] * 4 + [lift[1]] * 4)
    return {"records": [{"epoch": float(e), "inliers_acc": acc} for e, acc in enumerate((0.2, 0.5, 0.9))],
            "measured_is_canary": is_canary, "eval_mode": values, "in_batch": 2 * values,
            "counterfactual": 2 * values * factor}


def tracks(seeds: int = 3) -> dict:
    return {"batch": [track(10.0, s) for s in range(seeds)], "none": [track(0.5, s + 10) for s in range(seeds)]}


def test_probe_totals_count_every_seed():
    assert influence_chapter.probe_totals(tracks(3)) == {"probe_canaries_total": 12, "probe_inliers_total": 12}


def test_comparison_table_rows_name_the_comparisons_and_hide_intervals_of_two_seeds():
    rows = influence.comparison(tracks(3), 0.7)
    table = influence_chapter.comparison_table_rows(rows, 0.7)
    assert [row[:2] for row in table[:2]] == [("1 · eval mode", "same schedule"),
                                              ("1 · eval mode", "matched fit (0.70)")]
    assert len(table) == 6 and all(len(row) == len(influence_chapter.COMPARISON_HEADER) for row in table)
    summary = rows[0]["summary"]["batch"]
    assert table[0][2] == f"{summary['mean']:.2f} [{summary['ci95'][0]:.2f}, {summary['ci95'][1]:.2f}]"
    two = influence_chapter.comparison_table_rows(influence.comparison(tracks(2), 0.7), 0.7)
    assert two[0][2].endswith("(2 seeds)")


def test_comparison_sentences_say_the_means_and_the_significance():
    rows = [{"definition": "in_batch", "comparison": "matched_fit", "p_value": 0.0123,
             "summary": {"batch": {"mean": 2.345}, "none": {"mean": 0.96}}},
            {"definition": "eval_mode", "comparison": "same_schedule", "p_value": 0.2,
             "summary": {"batch": {"mean": 1.0}, "none": {"mean": 1.04}}}]
    assert influence_chapter.comparison_sentences(rows) == {
        "in_batch_matched_fit": "2.3 with BatchNorm against 1.0 without (p = 0.012, significant at the 5% level)",
        "eval_mode_same_schedule": "1.0 with BatchNorm against 1.0 without (p = 0.2, not significant at the 5% level)"}


def test_canary_sentence_uses_the_chapters_names():
    text = influence_chapter.canary_sentence(influence.comparison(tracks(3), 0.7))
    assert text.startswith("With BatchNorm, 12 canaries against 12 inliers") and "With no norm, " in text
    assert "eval mode: larger" in text and "counterfactual: " in text and "1 · " not in text


def test_final_values_and_lifts():
    final, canary = influence_chapter.final_values(track(10.0, 0, lift=(4.0, 1.5)))
    assert canary.tolist() == [False] * 4 + [True] * 4 and final["eval_mode"].shape == (8,)
    values = influence_chapter.lifts(final, canary)
    assert values == {"eval_in_batch_gap": pytest.approx(1.0), "inlier_lift": pytest.approx(4.0),
                      "canary_lift": pytest.approx(1.5)}


def test_chapter_metrics_are_the_headline_family_in_seeds():
    rows = influence.comparison(tracks(3), 0.7)
    _, params = config.load("smoke", extras=influence.ChapterParams)
    metrics = influence_chapter.chapter_metrics(rows, 0.7, params)
    assert list(metrics) == [f"influence_{d}_outlier_inlier_ratio_{c}" for d in influence.DEFINITION_NAMES
                             for c in ("same_schedule", "matched_fit")]
    entry = metrics["influence_counterfactual_outlier_inlier_ratio_matched_fit"]
    assert entry["unit"] == "seeds" and entry["comparison"] == "matched_fit"
    assert "first reaches 0.70" in entry["description"] and "counterfactual influence" in entry["description"]
    assert f"with {params.probe_canaries} canaries" in entry["description"]
    assert entry["p_value"] == rows[5]["p_value"]


def test_track_all_runs_every_norm_and_seed_in_order():
    cfg, params = config.load("smoke", extras=influence.ChapterParams, device="cpu", seeds="3,4", epochs=1,
                              n_train=256, n_test=64)
    found = influence_chapter.track_all(cfg, params, progress=False)
    assert {norm: len(runs) for norm, runs in found.items()} == {"batch": 2, "none": 2}
    assert torch.equal(found["batch"][1]["eval_mode"], influence.track_influence(cfg, params, "batch", 4)["eval_mode"])
    measured = params.probe_canaries + params.probe_inliers
    assert found["none"][0]["eval_mode"].shape == (2, params.probe_batches, measured)  # (checkpoints, P, k)


def small_fonts(fig) -> list[str]:
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    return [f"{t.get_text()!r} at {t.get_fontsize()}" for t in texts if t.get_fontsize() < plots.MIN_FONT]


def test_figures_are_column_wide_and_readable():
    found = tracks(3)
    over = influence_plots.definitions_over_training(found)
    assert [ax.get_title() for ax in over.axes] == list(influence_chapter.DEFINITION_LABELS.values())
    assert len(over.axes[0].lines) == 4  # two norms x (inliers, canaries)
    ratios = influence_plots.ratios_figure(found, 0.7)
    assert np.allclose(ratios.axes[0].lines[0].get_ydata(),
                       np.mean([influence.outlier_inlier_ratios(t, "eval_mode") for t in found["batch"]], 0))
    final, canary = influence_chapter.final_values(found["batch"][0])
    scatter = influence_plots.definitions_scatter(final, canary)
    for fig in (over, ratios, scatter):
        assert fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES) and not small_fonts(fig)
        plt.close(fig)
    assert influence_plots.epochs_of(found) == [0.0, 1.0, 2.0]
