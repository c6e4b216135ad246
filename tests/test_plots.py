"""The figures as the book shows them: the readability measure (``figures.display_font_sizes``) on known
answers, the data extractor (``figures.figure_data``) on known arrays, the capture of every figure a kernel
shows (``figures.capture_figures``, in a real kernel), and the house figures of ``plots`` pass the measure."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pytest
import torch
from PIL import Image

from bnlib import book, figures, plots, population, report

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _style():
    with matplotlib.rc_context():
        plots.set_style()
        yield
    plt.close("all")


def _figure_with_text(width: float, size: float):
    fig = plt.figure(figsize=(width, 2.0))
    fig.text(0.5, 0.5, "label", fontsize=size)
    return fig


# ----------------------------------------------------------------------------- the readability measure

def test_display_scale_known_answers():
    # at or below the column's width a figure shows at its natural size: a drawn pt is DPI / 96 CSS pt
    assert figures.display_scale(6.0) == pytest.approx(plots.DPI / 96)
    assert figures.display_scale(plots.COLUMN_INCHES) == pytest.approx(plots.DPI / 96)
    # wider, it is shrunk to the column, text and all
    assert figures.display_scale(13.0) == pytest.approx(figures.COLUMN_PX / (13 * plots.DPI) * plots.DPI / 96)
    assert figures.display_scale(13.0) == pytest.approx(688 / 1430 * 110 / 96)  # 0.551: 10 pt shows at 5.5 pt


def test_display_font_sizes_known_answers():
    six = figures.smallest_display_font(_figure_with_text(6.0, 10), width=6.0)
    assert six.size == pytest.approx(10 * 110 / 96, abs=1e-3) and six.drawn == 10 and six.text == "label"
    assert six.where == "figure text"
    thirteen = figures.smallest_display_font(_figure_with_text(13.0, 10), width=13.0)
    assert thirteen.size == pytest.approx(10 * 688 / (13 * 110) * 110 / 96, abs=1e-3)
    assert thirteen.size < plots.MIN_FONT < six.size
    # a wider column (a full-width cell) shows the wide figure larger
    wide = figures.smallest_display_font(_figure_with_text(13.0, 10), width=13.0, column_px=935)
    assert wide.size == pytest.approx(10 * 935 / 1430 * 110 / 96, abs=1e-3)


def test_display_font_sizes_name_every_shown_text_and_only_those():
    fig, (left, right) = plt.subplots(1, 2, figsize=(6, 3))
    left.plot([0, 1], [0, 1], label="a line")
    left.legend(fontsize=9)
    left.set_title("small title", fontsize=7)
    left.set_xlabel("x label")
    right.set_ylabel("")  # empty: not a text
    right.set_title("hidden").set_visible(False)
    fig.suptitle("two\nlines", fontsize=12)
    shown = figures.display_font_sizes(fig)
    smallest = shown[0]
    assert (smallest.text, smallest.where, smallest.drawn) == ("small title", "axes 0 title", 7.0)
    assert smallest.size == pytest.approx(7 * figures.display_scale(figures.shown_width(fig)), abs=1e-3)
    texts = {(t.text, t.where) for t in shown}
    assert {("a line", "axes 0 legend"), ("x label", "axes 0 x label"), ("two", "suptitle"),
            ("lines", "suptitle")} <= texts
    assert not any(t.text == "hidden" for t in shown)
    ticks = [t for t in shown if t.where == "axes 0 x tick label"]
    low, high = left.get_xlim()
    assert ticks and all(low <= float(t.text.replace("\u2212", "-")) <= high for t in ticks)  # none outside the view
    assert [t.size for t in shown] == sorted(t.size for t in shown)


def test_shown_width_is_the_width_of_the_png_a_kernel_shows():
    """The kernel saves figures with ``bbox_inches="tight"``: the measure's width is that PNG's."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax in axes:
        ax.plot([1, 2, 3], [3, 1, 2])
        ax.set(title="a title", xlabel="x", ylabel="a long y label")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=2 * fig.dpi)  # a retina PNG, as the kernel's
    pixels = Image.open(io.BytesIO(buffer.getvalue())).size[0]
    assert figures.shown_width(fig) * fig.dpi == pytest.approx(pixels / 2, abs=1.0)


# ----------------------------------------------------------------------------- the data behind a figure

def test_figure_data_holds_the_plotted_arrays_exactly():
    x = np.array([0.5, 1.25, 3.0, 7.0])
    y = np.array([0.1, -0.2, 0.3, np.nan])
    low, high = np.array([0.0, -0.5, 0.25, 0.5]), np.array([0.2, 0.0, 0.5, 1.5])
    error = np.array([0.05, 0.1, 0.2, 0.4])
    heights = np.array([3.0, 1.5, 2.25])
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(9, 3))
    a.plot(x, y, label="mean")
    a.scatter(x, y * 2, label="points")
    a.fill_between(x, low, high, label="band")
    a.set(title="panel a", xlabel="epoch", ylabel="value", yscale="symlog")
    b.bar([0, 1, 2], heights, label="bars")
    b.errorbar(x, x * 2, yerr=error, fmt="o", label="errors")
    c.imshow(np.zeros((4, 6)))
    fig.suptitle("known arrays")
    data = figures.figure_data(fig)
    assert data["suptitle"] == "known arrays" and data["size_inches"] == [9.0, 3.0]
    first, second, third = data["axes"]
    assert (first["title"], first["xlabel"], first["ylabel"]) == ("panel a", "epoch", "value")
    assert (first["xscale"], first["yscale"]) == ("linear", "symlog")
    assert first["lines"] == [{"label": "mean", "x": x.tolist(), "y": [0.1, -0.2, 0.3, None]}]  # NaN: None
    assert first["scatter"] == [{"label": "points", "x": x.tolist(), "y": [0.2, -0.4, 0.6, None]}]
    region = {"x": x.tolist(), "y1": low.tolist(), "y2": high.tolist()}
    assert first["bands"] == [{"label": "band", "regions": [region]}]
    assert first["xlim"] == list(a.get_xlim()) and first["ylim"] == list(a.get_ylim())
    bars, = second["bars"]
    assert bars["values"] == heights.tolist() and bars["label"] == "bars" and bars["bottoms"] == [0.0, 0.0, 0.0]
    assert bars["positions"] == pytest.approx([0, 1, 2])
    errorbar, = second["errorbars"]
    assert errorbar["x"] == x.tolist() and errorbar["y"] == (x * 2).tolist() and errorbar["label"] == "errors"
    assert errorbar["y_low"] == (x * 2 - error).tolist() and errorbar["y_high"] == (x * 2 + error).tolist()
    assert "lines" not in second  # the error bar's own line is not counted twice
    assert third["images"] == [{"shape": [4, 6], "extent": [-0.5, 5.5, 3.5, -0.5]}]
    json.dumps(data, allow_nan=False)  # strict JSON
    assert figures.has_plotted_data(data) and not figures.has_plotted_data({"axes": [{"xlim": [0, 1]}]})


def test_figure_data_of_categories_and_horizontal_bars():
    fig, ax = plt.subplots()
    ax.barh(["small", "large"], [2.0, 5.0])
    data = figures.figure_data(fig)["axes"][0]
    assert data["bars"][0]["orientation"] == "horizontal" and data["bars"][0]["values"] == [2.0, 5.0]
    assert data["yticks"] == {"positions": [0.0, 1.0], "labels": ["small", "large"]}
    assert "xticks" not in data  # numbers need no labels


# ----------------------------------------------------------------------------- captured in a kernel

CAPTURE_CELLS = [
    "import matplotlib.pyplot as plt\nfrom IPython.display import display\nfrom bnlib import plots\nplots.set_style()",
    "fig, ax = plt.subplots()\nax.plot([1, 2, 3], [4, 5, 6], label='a')\nax.set_title('shown at the end of the cell')",
    "fig, ax = plt.subplots()\nax.scatter([1, 2], [3, 4])\ndisplay(fig)  # explicitly\nax.set_title('and again')",
    "fig, ax = plt.subplots()\nax.bar([0, 1], [2, 3])\nplt.show()\nprint('no figure left open')",
    "plt.close('all')\nfig = plt.figure()  # empty: shows nothing",
]


def test_a_kernel_records_every_figure_it_shows(tmp_path):
    """In a real kernel (matplotlib-inline, as papermill runs a chapter): the end-of-cell flush, an explicit
    ``display(fig)`` (the same figure is flushed again at the cell's end) and ``plt.show()`` each leave one
    output and one record, linked by the output's ``bnlib_figure`` mark; the records land in ``$BNLIB_FIGURES``."""
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CAPTURE_CELLS])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    target = tmp_path / "figures.json"
    environment = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", figures.FIGURES_ENV: str(target),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    previous = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                       ).execute()
    finally:
        for key, value in previous.items():
            os.environ.pop(key) if value is None else os.environ.__setitem__(key, value)
    marks = [(number, index, output["metadata"]["image/png"].get(book.FIGURE_MARK))
             for number, cell in enumerate(notebook.cells) for index, output in enumerate(cell.outputs)
             if "image/png" in output.get("data", {})]
    assert [(cell, mark) for cell, _, mark in marks] == [(1, 0), (2, 1), (2, 2), (3, 3)], marks
    records = json.loads(target.read_text())
    assert [r["position"] for r in records] == [0, 1, 2, 3] and not any("error" in r for r in records)
    assert records[0]["axes"][0]["lines"][0]["y"] == [4.0, 5.0, 6.0]
    assert records[0]["axes"][0]["title"] == "shown at the end of the cell"
    assert records[1]["axes"][0]["scatter"][0]["x"] == [1.0, 2.0] and "title" not in records[1]["axes"][0]
    assert records[2]["axes"][0]["title"] == "and again"
    assert records[3]["axes"][0]["bars"][0]["values"] == [2.0, 3.0]
    for record in records:
        assert record["shown_width_px"] <= figures.COLUMN_PX and record["smallest_font"]["size"] >= plots.MIN_FONT
    linked = book.figure_records(notebook, records, "chapters/example")
    assert [(r["cell"], r["output"], r["chapter"]) for r in linked] == [(cell, index, "example")
                                                                       for cell, index, _ in marks]


def test_capture_is_off_outside_a_kernel():
    from IPython import get_ipython

    if get_ipython() is not None:
        pytest.skip("an IPython shell was started in this process")
    assert figures.capture_figures() is False


# ----------------------------------------------------------------------------- the house figures

def _readable(fig) -> None:
    record = figures.figure_record(fig)
    assert record["shown_width_px"] <= figures.COLUMN_PX * 1.01, f"wider than the column: {record['shown_width_px']} px"
    assert record["small_texts"] == [], record["small_texts"]


def _population(norm: str, rng) -> population.Population:
    epochs = np.arange(1.0, 9.0)
    fit = np.clip(np.linspace(0.3, 0.95, len(epochs))[:, None] + rng.normal(0, 0.02, (len(epochs), 6)), 0, 1)
    curves = {"epoch": epochs, "fit": np.maximum.accumulate(fit, axis=0),
              "memorization": rng.normal(0.05, 0.02, (len(epochs), 6))}
    return population.Population(norm=norm, epochs=8, pools=(0,), zoos=[], curves=[curves])


def test_memorization_against_fit_is_readable_at_the_column_width():
    rng = np.random.default_rng(0)
    levels = (0.6, 0.7, 0.8)
    found = {"populations": {n: _population(n, rng) for n in ("batch", "none")}, "levels": levels, "headline": 0.8}
    band = {"levels": np.array(levels), "mean": np.array([0.0, 0.01, 0.05]), "low": np.array([-0.02, -0.01, 0.02]),
            "high": np.array([0.02, 0.03, 0.08]), "n": np.array([6, 6, 5])}
    fig = plots.memorization_against_fit(found, band)
    _readable(fig)
    axes = figures.figure_data(fig)["axes"]
    against = axes[0]
    assert against["title"] == "canary memorization against fit" and len(against["bands"]) == 2
    assert axes[1]["title"] == "BN − no-BN on the fit grid" and len(axes[1]["bands"]) == 1


def test_image_grids_are_readable_and_keep_the_callers_rows():
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    fig = plots.image_grid(torch.rand(40, 1, 28, 28), [f"0.{i:02d} → {names[i % 10]}" for i in range(40)],
                           columns=10, size=1.25, suptitle="Most memorized: BN canaries, BN inliers, no-norm canaries, "
                                                           "no-norm inliers (mem(i) → label)")
    _readable(fig)
    rows, columns = fig.axes[0].get_gridspec().get_geometry()
    assert columns in (5, 10) and rows * columns == 40  # each row of 10 on whole rows of its own
    fig = plots.image_grid(torch.rand(4, 3, 8, 8), None, columns=10)
    _readable(fig)


def test_forest_plot_is_readable_at_the_column_width():
    from test_report_effects import TABLE

    _readable(plots.forest_plot(report.forest_rows(TABLE)))
