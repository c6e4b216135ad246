"""bnlib.chapter: the set-up, formatting and summary every chapter notebook shares."""

import dataclasses
import json

import pytest

from bnlib import chapter, config, memorization, results, theory


def test_start_validates_what_the_notebook_defined():
    before = {"plots", "chapter"}
    namespace = {"plots": None, "chapter": None, "profile": "smoke", "n_bootstrap": "50", "top_memorized": None}
    ch = chapter.start("memorization", namespace, before, show=False)
    assert ch.cfg == config.load("smoke")
    assert ch.params == memorization.ChapterParams(n_bootstrap=50, top_memorized=10)
    assert ch.settings == {**config.load("smoke").to_dict(), "n_bootstrap": 50, "top_memorized": 10}


def test_start_rejects_an_unknown_parameter_and_a_failed_cross_check():
    with pytest.raises(ValueError, match="Unknown parameter.*'n_bootstrapp'"):
        chapter.start("memorization", {"profile": "smoke", "n_bootstrapp": 5}, set(), show=False)
    with pytest.raises(ValueError, match="'norms'.*must contain 'batch' and 'none'"):
        chapter.start("memorization", {"profile": "smoke", "norms": "batch,group"}, set(), show=False)
    with pytest.raises(ValueError, match="'cnn_batches'"):
        chapter.start("theory", {"profile": "smoke", "cnn_batches": 10_000}, set(), show=False)
    with pytest.raises(ValueError, match="Unknown chapter 'memorisation'; allowed: 'data_and_models'"):
        chapter.start("memorisation", {}, set(), show=False)


def test_every_chapter_module_follows_the_convention():
    for name in chapter.CHAPTER_MODULES:
        module = chapter.module_of(name)
        if module is None:
            continue
        assert dataclasses.is_dataclass(module.ChapterParams), name
        assert callable(module.check_config), name
        cfg, params = config.load("smoke", extras=module.ChapterParams)
        module.check_config(cfg, params)  # the smoke profile passes its own cross-checks


def test_accepted_parameters_are_the_experiment_config_and_the_chapter_own():
    experiment = {f.name for f in dataclasses.fields(config.ExperimentConfig)}
    assert chapter.accepted_parameters("data_and_models") == experiment | {"profile"}
    own = {f.name for f in dataclasses.fields(theory.ChapterParams)}
    assert chapter.accepted_parameters("theory") == experiment | own | {"profile"}


def test_parameter_table_lists_the_chosen_parameters_in_order():
    ch = chapter.start("theory", {"profile": "smoke"}, set(), show=False)
    table = ch.parameter_table(("batch_size", "profile"))
    assert table.splitlines() == ["| parameter | value |", "|---|---|", f"| `batch_size` | `{ch.cfg.batch_size}` |",
                                  "| `profile` | `smoke` |"]
    assert len(ch.parameter_table().splitlines()) == 2 + len(ch.settings)


def test_interval_text_hides_intervals_of_fewer_than_three_replicates():
    assert chapter.interval({"mean": 0.5, "ci95": [0.25, 0.75], "n": 8}) == "0.500 [0.250, 0.750]"
    assert chapter.interval({"mean": 0.5, "ci95": [-0.9, 1.9], "n": 2}, unit="seeds") == "0.500 (2 seeds)"
    assert chapter.interval({"mean": 1.5, "ci95": [1.0, 2.0]}, ".1f") == "1.5 [1.0, 2.0]"
    assert chapter.interval({"mean": 0.631, "ci95": [0.3, 0.9], "n": 1}, unit="models") == "0.631 (1 model)"
    empty = {"mean": float("nan"), "ci95": [float("nan")] * 2, "n": 0}
    assert chapter.interval(empty, unit="models") == "– (no models)"


def test_markdown_table():
    assert chapter.markdown_table(("a", "b"), [(1, "x"), (2.5, "y")]) == "| a | b |\n|---|---|\n| 1 | x |\n| 2.5 | y |"


def test_finish_writes_the_summary_with_every_setting(tmp_path, monkeypatch):
    monkeypatch.setenv("BNLIB_CACHE", str(tmp_path))
    monkeypatch.setenv(results.RESULT_SET_ENV, "smoke")
    ch = chapter.start("memorization", {"profile": "smoke"}, set(), show=False)
    metric = results.metric_entry({"batch": {"mean": 1.0, "ci95": [0.5, 1.5], "n": 4}}, p_value=None, test="none",
                                  higher_means="more", description="d", comparison="same_schedule")
    path = ch.finish({"m": metric})
    stored = json.loads(path.read_text())
    assert path == tmp_path / "summaries" / "smoke" / "memorization.json"
    assert stored["metrics"]["m"]["batch"]["mean"] == 1.0
    assert stored["config"] == json.loads(json.dumps(ch.settings))


def test_glued_values_reads_hidden_and_displayed_glue():
    """``glue(..., display=False)`` (what the chapters use) stores its value under the scrapbook prefix, a
    displayed glue as text/plain: the data file of every chapter page must hold both."""
    import nbformat

    from bnlib import book

    def output(name, data, prefix):
        return nbformat.v4.new_output("display_data", data=data,
                                      metadata={"scrapbook": {"name": name, "mime_prefix": prefix}})

    cell = nbformat.v4.new_code_cell(outputs=[
        output("hidden", {"application/papermill.record/text/plain": "0.25"}, "application/papermill.record/"),
        output("shown", {"text/plain": "'BN higher'"}, ""),
    ])
    assert book.glued_values(nbformat.v4.new_notebook(cells=[cell])) == {"hidden": 0.25, "shown": "BN higher"}


def test_main_figure_is_the_tagged_cell_wherever_the_prose_says_main_figure():
    import nbformat

    from bnlib import book

    def code(tags=()):
        png = nbformat.v4.new_output("display_data", data={"image/png": "iVBOR"})
        return nbformat.v4.new_code_cell(metadata={"tags": list(tags)}, outputs=[png])

    said = nbformat.v4.new_markdown_cell("The main figure comes next.")
    assert book.main_figure_output(nbformat.v4.new_notebook(cells=[said, code(), code(["main-figure"])])) == (2, 0)
    assert book.main_figure_output(nbformat.v4.new_notebook(cells=[code(), said, code()])) == (2, 0)
    assert book.main_figure_output(nbformat.v4.new_notebook(cells=[code()])) is None
