"""What the ablations chapter shows (bnlib.ablation_report): tables, figures, glued sentences and the summary, on
synthetic compared points with known answers; the explorer on one of them."""


import matplotlib.pyplot as plt
import numpy as np
import pytest

from bnlib import ablation_report, ablations, config, plots

PARAMS = ablations.ChapterParams(fit_level=0.9)
MARGIN = ablations.equivalence_margin()


def _arm(norm: str, same: list[float], matched: list[float], epochs: int = 12, batch: int = 128) -> dict:
    same, matched = np.array(same, float), np.array(matched, float)
    t = len(same)
    fit = np.linspace(0.3, 1.0, 4)[:, None].repeat(t, 1)  # (E, T)
    return {"norm": norm, "same_schedule": same, "matched_fit": matched,
            "epoch_at_fit": np.where(np.isfinite(matched), 3.5, np.nan), "final_fit": fit[-1], "test": np.full(t, 0.8),
            "curves": {"epoch": np.arange(1.0, 5.0), "fit": fit, "memorization": np.linspace(0, 1, 4)[:, None] * same},
            "schedule": {"steps": 120.0, "exposures": 11.8, "lr_integral": 3.0, "epochs": epochs, "batch_size": batch,
                         "lr": 0.05}}


def _found(label: str, name: str, first: dict, second: dict, sweep: str = "batch_size") -> dict:
    overrides = (("batch_size", int(label)),) if sweep == "batch_size" and label != "128" else ()
    point = ablations.Point(sweep, label, name, (ablations.Arm(first["norm"], overrides),
                                                 ablations.Arm(second["norm"], overrides if second["norm"] != "none"
                                                               or sweep == "batch_size" else ())))
    found = {"point": point, "arms": [first, second]}
    for comparison in ablation_report.COMPARISONS:
        missing = ablations.not_reached([first, second], PARAMS.fit_level) if comparison == "matched_fit" else None
        result = ablations.paired_inference(first[comparison], second[comparison], MARGIN)
        if missing:
            result = {**ablations.paired_inference([], [], MARGIN), "verdict": missing}
        found[comparison] = {**result, "reached": missing is None}
    return found


UP = [0.5, 0.6, 0.55, 0.45, 0.5, 0.65, 0.6, 0.5]  # BN-like: about 0.3 above DOWN in every pair
DOWN = [0.2, 0.3, 0.25, 0.15, 0.2, 0.35, 0.3, 0.2]
NEVER = [np.nan] * 8


def _batch_points() -> list[dict]:
    return [_found("32", "batch32", _arm("batch", UP, UP, epochs=3, batch=32), _arm("none", DOWN, DOWN, 3, 32)),
            _found("128", "batch128", _arm("batch", UP, DOWN), _arm("none", DOWN, DOWN)),
            _found("512", "batch512", _arm("batch", UP, UP, 60, 512), _arm("none", DOWN, NEVER, 60, 512))]


def _fonts(fig) -> list[float]:
    texts = [t for ax in fig.axes for t in (ax.title, *ax.texts)]
    texts += [t for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    return [t.get_fontsize() for t in texts if t.get_text()]


# ----------------------------------------------------------------------------- tables and sentences

def test_comparison_table_known_rows():
    lines = ablation_report.comparison_table_markdown(_batch_points()).splitlines()
    assert lines[0] == "| setting | comparison | arm | against | difference [95% CI] | n | verdict |"
    assert lines[2].startswith("| 32 | same schedule | BatchNorm: 0.544 [") and "+0.300 [+0.300, +0.300]" in lines[2]
    assert "| 8 model pairs | BN higher (difference 0.3" in lines[2]
    assert lines[5].startswith("| 128 | matched fit") and "equivalent within ±0.08" in lines[5]
    assert lines[7] == ("| 512 | matched fit | BatchNorm: – | no norm: – | – | 0 model pairs | not reached (8 of 8 "
                        "'none' models never reach fit 0.9) |")


def test_fewer_than_eight_pairs_show_no_interval():
    result = ablations.paired_inference([0.5, 0.6, 0.7], [0.1, 0.2, 0.2], 0.08)
    assert ablation_report.interval_text(result) == "+0.433 (3 model pairs: no interval)"
    assert ablation_report.arm_cell(np.array([0.5, 0.6, 0.7])) == "0.600 (3 models: no interval)"
    assert ablation_report.arm_cell(np.array([np.nan])) == "–"
    assert result["verdict"].startswith("inconclusive (3 model pairs")


def test_schedule_table_says_steps_exposures_and_not_reached():
    lines = ablation_report.schedule_table_markdown(_batch_points()).splitlines()
    assert lines[0].split(" | ")[5:8] == ["steps", "exposures", "lr integral"]
    assert lines[2] == "| 32 | BatchNorm | 3 | 32 | 0.05 | 120 | 11.8 | 3.00 | 1.000 | 0.800 | 3.5 | 8 models |"
    assert lines[7].endswith("| not reached (8 of 8) | 8 models |")


def test_sentences_quote_verdict_difference_interval_and_n():
    found = _batch_points()[0]
    assert ablation_report.result_sentence(found["same_schedule"]).endswith(
        ": +0.300 [+0.300, +0.300], n = 8 model pairs")
    assert ablation_report.result_sentence(_batch_points()[2]["matched_fit"]).startswith("not reached")
    text = ablation_report.point_sentences(_batch_points())
    assert text.count("; ") == 2 and text.startswith("batch size 32: same schedule BN higher")


def test_batch_size_values_state_the_rule_and_the_schedules():
    cfg = config.load("quick")
    values = ablation_report.batch_size_values(_batch_points(), cfg, PARAMS)
    assert values["bs_rule_text"].endswith("(the linear scaling rule)") and values["bs_steps"] == 120
    assert (values["bs_small"], values["bs_small_epochs"], values["bs_large"], values["bs_large_epochs"]) == (
        "32", 3, "512", 60)
    assert values["bs_base"] == 128 and values["bs_sentences"] == ablation_report.point_sentences(_batch_points())


def _norm_points(group_same: list[float], group_matched: list[float]) -> list[dict]:
    none = _arm("none", DOWN, DOWN)
    return [_found("batch", "norm_batch", _arm("batch", UP, UP), none, "norm"),
            _found("group", "norm_group", _arm("group", group_same, group_matched), none, "norm")]


@pytest.mark.parametrize("group, reading", [
    ([v + 0.3 for v in UP], "more than no norm and more than BatchNorm"),  # GroupNorm above both
    (UP, "not detectably less than BatchNorm"),  # GroupNorm like BN
    (DOWN, "not distinguishable from no norm"),  # GroupNorm like no norm, below BN ... equivalent to none
])
def test_group_reading_follows_the_verdicts(group, reading):
    values = ablation_report.norm_values(_norm_points(group, group), PARAMS)
    if reading == "not distinguishable from no norm":  # below BN: the coupling reading
        assert "consistent with the batch-coupling explanation" in values["group_reading"]
    else:
        assert reading in values["group_reading"]
    sentence = values["group_batch_sentence"]
    assert "n = 8 model pairs" in sentence and "BN higher" not in sentence and "no-GroupNorm" not in sentence
    if group == UP:  # GroupNorm equal to BN in every pair
        assert sentence.startswith("equivalent within ±0.08")
    elif group == DOWN:
        assert sentence.startswith("BatchNorm higher (difference -0.3")
    else:
        assert sentence.startswith("GroupNorm higher (difference 0.3")


def test_group_reading_says_when_matched_fit_is_not_reached():
    values = ablation_report.norm_values(_norm_points(UP, NEVER), PARAMS)
    assert values["group_batch_sentence"].startswith("not reached (8 of 8 'group'")
    assert "cannot say" in values["group_reading"]
    noisy = {"verdict": "no difference detected (could detect ≥ 0.3)"}
    assert "do not separate normalization from batch coupling" in ablation_report.group_reading(noisy, noisy)


def test_group_versus_batch_is_paired_by_member():
    points = _norm_points([v + 0.1 for v in UP], [v + 0.1 for v in UP])
    result = ablation_report.group_versus_batch(points, PARAMS)
    assert result["mean"] == pytest.approx(0.1) and result["n"] == 8 and result["ci95"] == pytest.approx([0.1, 0.1])
    with pytest.raises(ValueError, match="'points'"):
        ablation_report.group_versus_batch(points[:1], PARAMS)


def test_sweep_markdown_and_sweeps_text():
    assert "does not run at this profile" in ablation_report.sweep_markdown([], "lr")
    assert "`-p sweeps ...,lr`" in ablation_report.sweep_markdown([], "lr")
    text = ablation_report.sweep_markdown(_batch_points(), "batch_size")
    assert "| 512 | matched fit |" in text and "In words: batch size 32" in text
    assert ablation_report.sweeps_text(ablations.ChapterParams(sweeps=("norm", "batch_size"))) == \
        "batch size and normalizer"


# ----------------------------------------------------------------------------- summary

def test_summary_metrics_names_units_and_fields():
    points = _batch_points() + _norm_points(UP, UP)
    metrics = ablation_report.summary_metrics(points, PARAMS)
    # norm_batch repeats batch128 (listed once); a variant is not BN (no row)
    assert list(metrics) == [f"ablation_canary_memorization_batch{b}_{c}" for b in (32, 128, 512)
                             for c in ("same_schedule", "matched_fit")]
    entry = metrics["ablation_canary_memorization_batch32_same_schedule"]
    assert entry["unit"] == "models" and entry["difference"]["n"] == 8 and entry["batch"]["n"] == 8
    assert entry["verdict"].startswith("BN higher") and entry["family"] == "secondary" and entry["fit_level"] is None
    assert entry["equivalence_margin"] == 0.08 and entry["steps"] == {"batch": 120.0, "none": 120.0}
    matched = metrics["ablation_canary_memorization_batch128_matched_fit"]
    assert matched["fit_level"] == 0.9 and matched["verdict"].startswith("equivalent within ±0.08")
    never = metrics["ablation_canary_memorization_batch512_matched_fit"]
    assert never["verdict"].startswith("not reached") and never["p_value"] is None
    assert "batch" not in never and never["reached"] == {"batch": 8, "none": 0}
    assert entry["difference"]["df"] == 7


def test_the_books_reannotation_keeps_every_verdict():
    from bnlib import verdict

    metrics = ablation_report.summary_metrics(_batch_points(), PARAMS)
    again = verdict.book_family_holm(metrics)
    assert {name: e["verdict"] for name, e in again.items()} == {name: e["verdict"] for name, e in metrics.items()}
    assert {e["family"] for e in again.values()} == {"secondary"}


def test_summary_metrics_feed_the_report():
    from bnlib import report

    metrics = ablation_report.summary_metrics(_batch_points(), PARAMS)
    rows = report.measurement_rows(metrics)
    column = dict(zip(report.MEASUREMENT_COLUMNS, range(len(report.MEASUREMENT_COLUMNS)), strict=True))
    assert rows[1][column["measurement"]] == "canary memorization at batch size 32"  # the registry's name
    assert rows[1][column["n"]] == "8 models" and rows[1][column["family"]] == "secondary"
    assert rows[-1][column["verdict"]].startswith("not reached")


# ----------------------------------------------------------------------------- figures

def test_difference_figure_marks_what_is_not_reached():
    fig = ablation_report.difference_figure(_batch_points(), "batch size", log_x=True)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and min(_fonts(fig)) >= plots.MIN_FONT
    assert fig.get_figwidth() == pytest.approx(plots.COLUMN_INCHES)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["matched fit", "matched fit: not reached", "same schedule"]
    plt.close(fig)


def test_norm_figure_one_bar_per_normalizer_and_the_no_norm_line():
    fig = ablation_report.norm_figure(_norm_points(DOWN, DOWN))
    assert [len(ax.patches) for ax in fig.axes] == [2, 2]
    assert fig.axes[0].patches[0].get_height() == pytest.approx(np.mean(UP))
    assert fig.axes[0].lines[-1].get_ydata()[0] == pytest.approx(np.mean(DOWN))
    assert min(_fonts(fig)) >= plots.MIN_FONT
    plt.close(fig)


def test_explorer_draws_one_line_per_model():
    points = _batch_points()
    fig, ax = plt.subplots()
    ablation_report.draw_memorization_against_fit(ax, points[0], 0.9)
    assert len(ax.lines) == 17 and ax.get_title() == "batch size 32"  # 8 + 8 models and the fit level
    plt.close(fig)
    assert ablation_report.batch_size_png(points[0], 0.9).startswith(b"\x89PNG")
    box = ablation_report.batch_size_slider(points, 0.9)
    slider, picture = box.children
    assert slider.options == ("32", "128", "512") and bytes(picture.value).startswith(b"\x89PNG")
    html = ablation_report.batch_size_animation(points, 0.9)
    assert "<img" in html or "data:image/png" in html


@pytest.mark.parametrize("none_words, batch_words, expected", [
    ("BN higher", "BN higher", "cannot be the whole explanation"),
    ("BN higher", "no-BN higher", "may account for the rest"),
    ("BN higher", "equivalent within ±0.08", "weakens the batch-coupling explanation"),
    ("equivalent within ±0.08", "no-BN higher", "consistent with the batch-coupling explanation"),
    ("no difference detected", "BN higher", "gets no support"),
    ("no difference detected", "no difference detected", "do not separate"),
    ("not reached", "BN higher", "cannot say"),
])
def test_group_reading_has_one_sentence_per_pair_of_verdicts(none_words, batch_words, expected):
    reading = ablation_report.group_reading({"verdict": none_words + " (...)"}, {"verdict": batch_words + " (...)"})
    assert expected in reading
