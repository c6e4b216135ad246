"""What a reader of the book gets from a figure: the page's geometry (the text column, the dpi), the size of
every text of a figure as the book shows it, and every figure's plotted data, recorded as a kernel shows it.

``plots`` draws the figures; this module measures them. The book links each chapter's figure records
(``book.stage``), and the website tests check that every main figure's text shows at >= ``MIN_FONT``.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import RendererAgg

DPI = 110  # figure.dpi: a figure W inches wide is W * DPI CSS px wide on the page (retina PNG: 2x the pixels)
# The book's text column at 100% zoom, in CSS px, measured in headless Chromium on a chapter page of the built
# book (sphinx-book-theme, ``article.bd-article`` less its 2 x 32 px padding): 688 px in a 1280 x 900 window (the
# website test's) and at 1280 x 800; 755 px at 1024 x 768 (the right-hand contents column folds away); 790 px
# from 1440 px wide on (the theme's maximum, also at 1920 x 1080). A figure's <img> gets its natural CSS size
# (a retina PNG's width and height attributes are half its pixels) and ``max-width: 100%``: a wider figure is
# scaled down to the column, its text with it (``_static/bnlib.css`` keeps its aspect ratio, see there).
COLUMN_PX = 688
COLUMN_INCHES = COLUMN_PX / DPI  # the width of a full-column figure (6.25 in)
MIN_FONT = 9  # pt: the smallest text a reader should get, in CSS pt at 100% zoom (see ``display_font_sizes``)
CSS_PX_PER_INCH = 96  # CSS: 1 in = 96 px = 72 pt, whatever the screen
FIGURES_ENV = "BNLIB_FIGURES"  # in a book kernel: the JSON file every shown figure is recorded into
FIGURE_MARK = "bnlib_figure"  # key of a recorded figure output's image/png metadata: its record's position
PAD_INCHES = 0.1  # savefig.pad_inches: the margin the kernel's bbox_inches="tight" PNG keeps around a figure


# ----------------------------------------------------------------------------- what a reader of the book gets

@dataclass(frozen=True)
class ShownText:
    """One text of a figure as the book shows it: ``size`` in CSS pt at 100% zoom, ``drawn`` the font size it
    was drawn at (pt of the figure), ``where`` what it is (``"axes 1 title"``, ``"axes 0 x tick label"``...)."""

    size: float
    drawn: float
    text: str
    where: str


def display_scale(width_inches: float, dpi: float = DPI, column_px: float = COLUMN_PX) -> float:
    """CSS pt on the page per pt drawn, for a figure PNG ``width_inches`` wide at ``dpi``: the page shows
    it at its natural ``width_inches * dpi`` CSS px, shrunk to the column if wider (``max-width: 100%``);
    a pt drawn is ``dpi / 72`` px of that natural size, a CSS pt is ``96 / 72`` CSS px::

        scale = min(1, column_px / (width_inches * dpi)) * dpi / 96
    """
    return min(1.0, column_px / (width_inches * dpi)) * dpi / CSS_PX_PER_INCH


class _TextRecorder(RendererAgg):
    """An Agg renderer that notes every text a figure draws (string, size in pt, its artist) instead of
    rasterizing it: exactly what is shown (visible, non-empty, tick labels inside the view only)."""

    def __init__(self, width: float, height: float, dpi: float) -> None:
        super().__init__(int(width), int(height), dpi)
        self.texts: list[tuple[str, float, Any]] = []

    def draw_text(self, gc, x, y, s, prop, angle, ismath=False, mtext=None):
        self.texts.append((s, float(prop.get_size_in_points()), mtext))

    def draw_tex(self, gc, x, y, s, prop, angle, *, mtext=None):
        self.texts.append((s, float(prop.get_size_in_points()), mtext))


def _text_roles(fig) -> dict[int, str]:
    """id of each text artist of ``fig`` -> what it is."""
    roles: dict[int, str] = {}
    suptitle = getattr(fig, "_suptitle", None)
    if suptitle is not None:
        roles[id(suptitle)] = "suptitle"
    for text in fig.texts:
        roles.setdefault(id(text), "figure text")
    for legend in fig.legends:
        roles.update({id(t): "figure legend" for t in (*legend.texts, legend.get_title())})
    for i, ax in enumerate(fig.axes):
        for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
            roles[id(axis.label)] = f"axes {i} {name} label"
            roles[id(axis.get_offset_text())] = f"axes {i} {name} offset"
            for tick in (*axis.majorTicks, *axis.minorTicks):
                roles[id(tick.label1)] = roles[id(tick.label2)] = f"axes {i} {name} tick label"
        for title in (ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)):
            if title is not None:
                roles[id(title)] = f"axes {i} title"
        legend = ax.get_legend()
        if legend is not None:
            roles.update({id(t): f"axes {i} legend" for t in (*legend.texts, legend.get_title())})
        for text in ax.texts:
            roles[id(text)] = f"axes {i} text"
    return roles


def _draw_texts(fig) -> tuple[list[tuple[str, float, str]], float]:
    """Draw ``fig`` once, noting its texts: ([(text, size pt, where)], width in inches of the PNG the kernel
    shows: its tight bounding box plus ``PAD_INCHES`` each side, as ``bbox_inches="tight"`` saves it)."""
    from matplotlib.text import Text

    width, height = fig.get_size_inches() * fig.dpi
    renderer = _TextRecorder(width, height, fig.dpi)
    fig.draw(renderer)
    roles = _text_roles(fig)
    artists = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text()]
    texts = []
    for s, size, artist in renderer.texts:
        if artist is None:  # a line of a multi-line text: its artist is the one whose text holds that line
            artist = next((t for t in artists if s in t.get_text().split("\n") and t.get_fontsize() == size), None)
        texts.append((s, size, roles.get(id(artist), "text") if artist is not None else "text"))
    box = fig.get_tightbbox(renderer)
    return texts, box.width + 2 * PAD_INCHES


def _drawn_tick_labels(ax) -> list:
    """The tick labels ``ax`` draws: visible, non-empty, at a tick inside the axis's view interval."""
    out = []
    if not (ax.get_visible() and ax.axison):
        return out
    for axis in (ax.xaxis, ax.yaxis):
        if not axis.get_visible():
            continue
        low, high = sorted(axis.get_view_interval())
        span = (high - low) * 1e-9
        for locs, ticks in ((axis.get_majorticklocs(), axis.get_major_ticks), (axis.get_minorticklocs(),
                                                                                axis.get_minor_ticks)):
            for loc, tick in zip(locs, ticks(len(locs)), strict=True):
                if low - span <= loc <= high + span:
                    out += [label for label in (tick.label1, tick.label2) if label.get_visible() and label.get_text()]
    return out


def label_overlaps(fig, tolerance_px: float = 0.5) -> list[tuple[str, str]]:
    """Pairs (tick label, other label) of ``fig`` whose drawn bounding boxes overlap by more than
    ``tolerance_px`` each way: every tick label of every axes against every other visible text of the figure
    (tick labels, axis labels, titles, legend entries, annotations). Drawn with the Agg renderer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks = [label for ax in fig.axes for label in _drawn_tick_labels(ax)]
    every_tick_label = {id(label) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                        for tick in (*axis.majorTicks, *axis.minorTicks) for label in (tick.label1, tick.label2)}
    others = [t for t in fig.findobj(Text) if id(t) not in every_tick_label and t.get_visible()
              and t.get_text().strip() and (t.axes is None or t.axes.get_visible())]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in ticks]
    other_boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in others]
    found = []
    for i, (text, box) in enumerate(boxes):
        for other, other_box in [*boxes[i + 1:], *other_boxes]:
            width = min(box.x1, other_box.x1) - max(box.x0, other_box.x0)
            height = min(box.y1, other_box.y1) - max(box.y0, other_box.y0)
            if width > tolerance_px and height > tolerance_px:
                found.append((text, other))
    return found


def shown_width(fig) -> float:
    """Width in inches of the PNG a kernel shows for ``fig`` (``bbox_inches="tight"``, ``PAD_INCHES`` around);
    times ``fig.dpi``, its CSS px width on the page before the column shrinks it."""
    return _draw_texts(fig)[1]


def _shown(texts: list[tuple[str, float, str]], scale: float) -> list[ShownText]:
    shown = [ShownText(round(float(size * scale), 3), float(size), s, where) for s, size, where in texts]
    return sorted(shown, key=lambda t: (t.size, t.where, t.text))


def display_font_sizes(fig, width: float | None = None, column_px: float = COLUMN_PX) -> list[ShownText]:
    """Every visible, non-empty text of ``fig`` at the size the book shows it (CSS pt at 100% zoom), smallest
    first: its font size times ``display_scale(width, fig.dpi, column_px)``.

    Args:
        width: inches of the shown PNG; None: as a kernel shows it (``shown_width``: the tight bounding box).
        column_px: the column it is shown in (``COLUMN_PX``; a cell tagged ``full-width`` gets wider).
    """
    texts, tight = _draw_texts(fig)
    scale = display_scale(tight if width is None else width, fig.dpi, column_px)
    return _shown(texts, scale)


def smallest_display_font(fig, width: float | None = None, column_px: float = COLUMN_PX) -> ShownText | None:
    """The smallest text of ``fig`` as the book shows it (``display_font_sizes``); None if it has no text."""
    shown = display_font_sizes(fig, width, column_px)
    return shown[0] if shown else None


def _values(data: Any) -> list:
    """Plotted values as JSON-able list: floats exactly as stored (non-finite ones as None), else text."""
    array = np.ma.asarray(data)
    try:
        floats = np.ma.filled(array.astype(float), np.nan)
    except (TypeError, ValueError):  # categories, dates...: their text
        return [str(v) for v in np.ravel(array)]
    return [float(v) if np.isfinite(v) else None for v in np.ravel(floats)]


_NUMBER = re.compile(r"[-+\u2212]?[0-9.,]*[0-9]+(e[-+\u2212]?[0-9]+)?%?|\$.*\$", re.IGNORECASE)


def _band(path, t_direction: str) -> dict[str, Any]:
    """A ``fill_between`` region: its polygon runs start, along y1, end, back along y2 (reversed), closed."""
    points = np.asarray(path.vertices, dtype=float).reshape(-1, 2)
    if len(points) % 2 == 1:  # the closing vertex
        points = points[:-1]
    n = (len(points) - 2) // 2
    forward, backward = points[1:n + 1], points[n + 2:][::-1]
    t, f = (0, 1) if t_direction == "x" else (1, 0)
    if n > 0 and len(backward) == n and np.array_equal(forward[:, t], backward[:, t], equal_nan=True):
        return {t_direction: _values(forward[:, t]), f"{'y' if t_direction == 'x' else 'x'}1": _values(forward[:, f]),
                f"{'y' if t_direction == 'x' else 'x'}2": _values(backward[:, f])}
    return {"vertices": [_values(p) for p in np.asarray(path.vertices, dtype=float)]}


def _label(artist) -> str | None:
    label = artist.get_label()
    return None if not label or label.startswith("_") else str(label)


def _axes_data(ax) -> dict[str, Any]:
    from matplotlib.collections import LineCollection, PathCollection, PolyCollection
    from matplotlib.container import BarContainer, ErrorbarContainer

    errorbars, in_errorbars = [], set()
    bars, in_bars = [], set()
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            line, caps, columns = container.lines
            in_errorbars.update(id(a) for a in (line, *caps, *columns) if a is not None)
            entry: dict[str, Any] = {"label": _label(container)}
            if line is not None:
                entry.update(x=_values(line.get_xdata()), y=_values(line.get_ydata()))
            names = ["x"] * bool(container.has_xerr) + ["y"] * bool(container.has_yerr)
            for name, columns_of in zip(names, columns, strict=False):  # x errors' segments first, then y's
                axis = 0 if name == "x" else 1
                segments = [np.asarray(s, dtype=float).reshape(-1, 2)[:, axis] for s in columns_of.get_segments()]
                entry[f"{name}_low"] = _values([s.min() if s.size else np.nan for s in segments])
                entry[f"{name}_high"] = _values([s.max() if s.size else np.nan for s in segments])
            errorbars.append(entry)
        elif isinstance(container, BarContainer):
            in_bars.update(id(p) for p in container.patches)
            horizontal = container.orientation == "horizontal"
            patches = container.patches
            values = (container.datavalues if container.datavalues is not None else
                      [p.get_width() if horizontal else p.get_height() for p in patches])
            bars.append({"label": _label(container), "orientation": container.orientation or "vertical",
                         "positions": _values([p.get_y() + p.get_height() / 2 if horizontal else
                                               p.get_x() + p.get_width() / 2 for p in patches]),
                         "values": _values(values),
                         "bottoms": _values([p.get_x() if horizontal else p.get_y() for p in patches])})
    lines = [{"label": _label(line), "x": _values(line.get_xdata()), "y": _values(line.get_ydata())}
             for line in ax.lines if id(line) not in in_errorbars]
    scatters, bands, segments = [], [], []
    for collection in ax.collections:
        if id(collection) in in_errorbars:
            continue
        if isinstance(collection, PathCollection):
            offsets = np.ma.getdata(collection.get_offsets()).reshape(-1, 2)  # a NaN masks both x and y: unmask
            scatters.append({"label": _label(collection), "x": _values(offsets[:, 0]) if offsets.size else [],
                             "y": _values(offsets[:, 1]) if offsets.size else []})
        elif isinstance(collection, PolyCollection):
            direction = getattr(collection, "t_direction", "x")
            bands.append({"label": _label(collection),
                          "regions": [_band(path, direction) for path in collection.get_paths()]})
        elif isinstance(collection, LineCollection):
            segments.append({"label": _label(collection),
                             "segments": [[_values(p) for p in np.asarray(s, dtype=float)]
                                          for s in collection.get_segments()]})
    images = [{"shape": list(np.shape(image.get_array())), "extent": _values(image.get_extent())}
              for image in ax.images]
    ticks = {}
    for name, axis in (("x", ax.xaxis), ("y", ax.yaxis)):
        labels = [t.get_text() for t in axis.get_majorticklabels()]
        if any(label and not _NUMBER.fullmatch(label) for label in labels):  # categories: what the positions mean
            ticks[f"{name}ticks"] = {"positions": _values(axis.get_majorticklocs()), "labels": labels}
    legend = ax.get_legend()
    entry = {
        "title": " / ".join(t for t in (ax.get_title("left"), ax.get_title(), ax.get_title("right")) if t),
        "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "xscale": ax.get_xscale(), "yscale": ax.get_yscale(),
        "xlim": _values(ax.get_xlim()), "ylim": _values(ax.get_ylim()),
        "lines": lines, "scatter": scatters, "bars": bars, "errorbars": errorbars, "bands": bands,
        "segments": segments, "images": images,
        "texts": [t.get_text() for t in ax.texts if t.get_visible() and t.get_text()],
        "legend": [t.get_text() for t in legend.texts] if legend is not None else [], **ticks,
    }
    return {key: value for key, value in entry.items() if value not in ([], "")}


def figure_data(fig) -> dict[str, Any]:
    """What ``fig`` plots, as JSON-able values: its size and title, and per axes its title, labels, scales,
    limits and data: lines (label, x, y), scatter offsets (x, y), bars (positions, values, bottoms), error
    bars (x, y and each bar's ends), ``fill_between`` bands (x, y1, y2 per region, else the polygon's
    vertices), line collections' segments, images' shapes (not their pixels), texts and legend entries.
    Values are the floats matplotlib holds (non-finite ones None); empty fields are left out."""
    suptitle = getattr(fig, "_suptitle", None)
    data: dict[str, Any] = {"size_inches": _values(fig.get_size_inches()), "dpi": float(fig.dpi)}
    if suptitle is not None and suptitle.get_text():
        data["suptitle"] = suptitle.get_text()
    data["axes"] = [_axes_data(ax) for ax in fig.axes]
    return data


def has_plotted_data(record: dict[str, Any]) -> bool:
    """Whether a ``figure_data`` record holds a non-empty array of plotted values."""
    def non_empty(value: Any) -> bool:
        if isinstance(value, dict):
            return any(non_empty(v) for k, v in value.items() if k not in ("label", "xlim", "ylim", "extent"))
        if isinstance(value, list):
            return any(v is not None and (not isinstance(v, (list, dict)) or non_empty(v)) for v in value)
        return False
    return any(non_empty({k: v for k, v in ax.items() if k in ("lines", "scatter", "bars", "errorbars", "bands",
                                                              "segments", "images")})
               for ax in record.get("axes", []))


def figure_record(fig) -> dict[str, Any]:
    """``figure_data`` plus how the book shows ``fig``: the PNG's width in CSS px, the scale from drawn to
    shown pt (``display_scale``), its smallest text and every text below ``MIN_FONT`` at that size."""
    texts, width = _draw_texts(fig)
    scale = display_scale(width, fig.dpi)
    shown = _shown(texts, scale)
    return {**figure_data(fig), "shown_width_px": round(width * fig.dpi, 1), "column_px": COLUMN_PX,
            "display_scale": round(scale, 5),
            "smallest_font": asdict(shown[0]) if shown else None,
            "small_texts": [asdict(t) for t in shown if t.size < MIN_FONT],
            "tick_label_overlaps": [list(pair) for pair in label_overlaps(fig)]}


_CAPTURED: list[dict[str, Any]] = []


def captured_figures() -> list[dict[str, Any]]:
    """The records (``figure_record``) of the figures shown in this kernel since ``capture_figures``, in order."""
    return list(_CAPTURED)


def capture_figures() -> bool:
    """In an IPython kernel, record every matplotlib figure shown from now on, however it is shown (the
    cell's end, ``plt.show()``, ``display(fig)``): its ``figure_record`` with its ``position`` among the
    kernel's figures, appended to ``captured_figures()`` and, where ``$BNLIB_FIGURES`` names a file (``book
    .execute`` sets it), written there as a JSON list (atomically, after each figure). The figure's output
    carries the same number in its metadata (``image/png`` -> ``FIGURE_MARK``), linking record and output.

    How: the kernel's ``image/png`` formatter for figures is wrapped. Every way of showing a figure goes
    through it, and while the figure is still open: matplotlib-inline closes the figures in a
    ``post_execute`` callback it registered when pyplot was imported, so a ``post_execute`` callback of
    ours, registered later, would run after them and find nothing. A failure to record never breaks the
    output: the record then says what went wrong. Returns whether it is in place (False outside IPython).
    """
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    shell = get_ipython()
    if shell is None:
        return False
    from matplotlib.figure import Figure

    formatter = shell.display_formatter.formatters["image/png"]
    try:
        show = formatter.lookup_by_type(Figure)
    except KeyError:
        return False
    if getattr(show, "bnlib_capture", False):
        return True

    def shown_and_recorded(fig):
        output = show(fig)
        if output is None:  # an empty figure shows nothing
            return output
        position = len(_CAPTURED)
        try:
            record = {"position": position, **figure_record(fig)}
        except Exception as error:  # the figure must show, whatever the recording does
            import traceback

            where = traceback.extract_tb(error.__traceback__)[-1]
            record = {"position": position,
                      "error": f"{type(error).__name__}: {error} ({where.name}, line {where.lineno})"}
        _CAPTURED.append(record)
        target = os.environ.get(FIGURES_ENV)
        if target:
            from .results import atomic_write_json

            atomic_write_json(Path(target), _CAPTURED)
        data, metadata = output if isinstance(output, tuple) else (output, {})
        return data, {**metadata, FIGURE_MARK: position}

    shown_and_recorded.bnlib_capture = True
    formatter.for_type(Figure, shown_and_recorded)
    return True
