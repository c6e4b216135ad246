"""One house style for every figure: colours per norm, mean-with-band curves, image grids."""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.backends.backend_agg import RendererAgg

from . import config
from .figures import COLUMN_INCHES, DPI, MIN_FONT, PAD_INCHES, capture_figures

NORM_COLORS = {"batch": "#d62728", "group": "#2ca02c", "layer": "#9467bd", "none": "#1f77b4",
               "ghost": "#ff7f0e", "running": "#8c564b"}
NORM_LABELS = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm",
               "ghost": "ghost BN", "running": "BN, running statistics"}


def subplots(nrows: int = 1, ncols: int = 1, *, height: float = 3.6, width: float | None = None, **kwargs):
    """``plt.subplots`` at the text column's width (``width`` in inches to draw a narrower one): the book shows
    it at its natural size, so its text shows at the size it was drawn times ``DPI / 96`` (>= ``MIN_FONT``)."""
    return plt.subplots(nrows, ncols, figsize=(COLUMN_INCHES if width is None else width, height), **kwargs)


def set_style() -> None:
    """Apply the book's matplotlib style (call once per notebook). In a kernel, figures are shown as 2x PNGs
    and every figure shown is recorded (``capture_figures``)."""
    plt.rcParams.update({
        "figure.dpi": DPI, "savefig.dpi": DPI, "figure.figsize": (COLUMN_INCHES, 3.6),
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "font.size": 10, "legend.frameon": False,
    })
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # pragma: no cover (both ship with ipykernel)
        return
    if get_ipython() is None:  # plain Python (set_matplotlib_formats would start an IPython shell)
        return
    set_matplotlib_formats("retina")  # figures as 2x PNG: sharp at any zoom, still small files
    capture_figures()


def band(ax, x: Sequence[float], runs: np.ndarray, norm: str, label: str | None = None,
         quantiles: tuple[float, float] | None = None) -> None:
    """Plot the mean over runs (rows of ``runs``, shape (R, len(x))) with a min-max band, or with a
    quantile band if ``quantiles`` is given, in the colour of ``norm``."""
    runs = np.atleast_2d(np.asarray(runs, dtype=float))
    color = NORM_COLORS.get(norm, "k")
    with warnings.catch_warnings():  # a column where no run has a value stays empty (NaN) on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmean(runs, axis=0) if quantiles is None else np.nanmedian(runs, axis=0)
        low, high = (np.nanmin(runs, 0), np.nanmax(runs, 0)) if quantiles is None else (
            np.nanquantile(runs, quantiles[0], 0), np.nanquantile(runs, quantiles[1], 0))
    ax.plot(x, center, color=color, label=label or NORM_LABELS.get(norm, norm))
    ax.fill_between(x, low, high, color=color, alpha=0.2, linewidth=0)


def text_width(text: str, fontsize: float) -> float:
    """Inches one line of ``text`` takes at ``fontsize`` pt in the current font."""
    from matplotlib.font_manager import FontProperties

    width, _, _ = RendererAgg(1, 1, 72).get_text_width_height_descent(text, FontProperties(size=fontsize), ismath=False)
    return width / 72


def _wrap(text: str, width: float, fontsize: float) -> str:
    """``text`` with its words wrapped onto lines of at most ``width`` inches (a longer word keeps its line)."""
    lines = []
    for paragraph in str(text).split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and text_width(candidate, fontsize) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return "\n".join(lines)


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, columns: int = 10,
               size: float = 1.0, suptitle: str | None = None, fontsize: float = MIN_FONT):
    """Show images (N, C, H, W) in [0, 1] in a grid of ``columns`` a row, at most the column's width, with
    titles at ``fontsize``; returns the figure.

    The cells are ``size`` inches, smaller where ``columns`` of them would not fit the column. Where a
    title's longest word would not fit its cell, each row is split into rows of equal length (10 images:
    2 rows of 5), so a row of the caller's (e.g. one group) still starts a row. Titles and ``suptitle`` are
    wrapped at spaces to their width.
    """
    n = len(images)
    titles = [str(t) for t in titles] if titles is not None else None
    words = [w for t in titles or [] for line in t.split("\n") for w in line.split(" ") if w]
    widest = max((text_width(w, fontsize) for w in words), default=0.0) + 0.08
    wanted = max(1, min(columns, n))
    room = COLUMN_INCHES - 2 * PAD_INCHES  # the shown PNG keeps PAD_INCHES around the images
    most = max(1, int(room // max(widest, 0.3)))
    split = int(np.ceil(wanted / most))  # rows per row of the caller's
    per_row = int(np.ceil(wanted / split))
    cell = min(size, room / per_row)
    if titles is not None:
        titles = [_wrap(t, cell - 0.05, fontsize) for t in titles]
    title_lines = max((t.count("\n") + 1 for t in titles or []), default=0)
    rows = int(np.ceil(n / wanted)) * split
    heading = _wrap(suptitle, per_row * cell - 0.1, fontsize * 1.1) if suptitle else ""
    # the layout in inches: images of ``cell`` less a gap, titles above each (6 pt pad), the heading on top
    pad, gap = 0.05, 0.06
    image_width = (per_row * cell - 2 * pad - (per_row - 1) * gap) / per_row
    image_height = image_width * images.shape[-2] / images.shape[-1]
    title = (title_lines * fontsize * 1.25 + 6) / 72 if title_lines else gap
    top = (heading.count("\n") + 1) * fontsize * 1.1 * 1.3 / 72 + 0.08 if heading else 0.0
    width, height = per_row * cell, top + rows * (image_height + title) + pad
    fig, axes = plt.subplots(rows, per_row, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=pad / width, right=1 - pad / width, bottom=pad / height,
                        top=1 - (top + title) / height, wspace=gap / image_width, hspace=title / image_height)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        group, place = divmod(i, wanted)
        ax = axes[group * split + place // per_row, place % per_row]
        image = images[i].detach().cpu().float()
        ax.imshow((image[0] if image.shape[0] == 1 else image.permute(1, 2, 0).clamp(0, 1)).numpy(),
                  cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
        if titles is not None:
            ax.set_title(titles[i], fontsize=fontsize)
    if heading:
        fig.suptitle(heading, fontsize=fontsize * 1.1, y=1 - 0.04 / height, va="top")
    return fig


LOG_FACTORS = (1 / 100, 1 / 30, 1 / 10, 1 / 3, 1.0, 3.0, 10.0, 30.0, 100.0)  # the ratio axis's ticks


def factor_label(value: float) -> str:
    """A ratio tick as a reader says it: 3 -> "×3", 1/10 -> "×1/10", 1 -> "×1"."""
    if value >= 1:
        return f"×{value:g}"
    return f"×1/{1 / value:.3g}"


def forest_plot(rows: Sequence, width: float = COLUMN_INCHES):
    """The landing page's forest plot of the primary endpoints: one row per claim and comparison, BN against
    no-BN with its 95% interval, grouped by comparison (matched fit with its level), coloured by verdict.
    Differences (BN - no-BN) on a linear axis with a zero line; ratios (BN / no-BN) on a log axis of their own
    with a line at ×1 and ticks ×1/10, ×1/3, ×1, ×3, ×10. Where a row's verdict claims equivalence, its declared
    margin is drawn as a band around the line of equality. A row without an interval (too few replicates) is
    a hollow marker and its label says how many.

    Args:
        rows: ``report.ForestRow`` values, in display order (``report.forest_rows``).
        width: inches; at the column's width (``COLUMN_INCHES``) the book shows it at its natural size.
    Returns:
        The figure.
    """
    from matplotlib.ticker import FixedLocator, NullLocator

    from .metric_registry import CLAIMS, comparison_title
    from .report import VERDICT_COLORS, verdict_color

    panels = {scale: [r for r in rows if r.difference.scale == scale] for scale in ("linear", "log")}
    panels = {scale: here for scale, here in panels.items() if here}
    # one unit per row, 1.5 per comparison heading
    sizes = [len(here) + 1.5 * len({r.comparison for r in here}) for here in panels.values()] or [1]
    fig, axes = plt.subplots(len(sizes), 1, figsize=(width, 0.9 + 0.3 * sum(sizes) + 0.75 * len(sizes)),
                             squeeze=False, gridspec_kw={"height_ratios": sizes})
    margins_drawn = False
    for ax, (scale, here) in zip(axes.flat, panels.items(), strict=True):
        labels, y, reach = [], 0.0, []
        for comparison in dict.fromkeys(r.comparison for r in here):
            levels = {r.fit_level for r in here if r.comparison == comparison}
            level = next(iter(levels)) if len(levels) == 1 and comparison == "matched_fit" else None
            labels.append((y, comparison_title(comparison, level).upper(), True))
            y -= 1
            for row in (r for r in here if r.comparison == comparison):
                d, color = row.difference, verdict_color(row.verdict)
                if row.margin and row.verdict.startswith("equivalent"):
                    margin = row.margin  # a ratio's margin is on the log scale
                    low, high = (math.exp(-margin), math.exp(margin)) if scale == "log" else (-margin, margin)
                    ax.fill_between([low, high], y - 0.35, y + 0.35, color="#2ca02c", alpha=0.15, linewidth=0)
                    reach += [low, high]
                    margins_drawn = True
                if d.low is not None:
                    ax.plot([d.low, d.high], [y, y], color=color, linewidth=2.2, solid_capstyle="butt")
                    reach += [d.low, d.high]
                labels.append((y, CLAIMS.get(row.claim, (row.effect,))[0], False))
                if not np.isfinite(d.mean):  # no value for both norms: say so across the row's middle
                    ax.text(0.5, y, f"no value ({d.n_text})", transform=ax.get_yaxis_transform(), ha="center",
                            va="center", fontsize=9, color="0.35", bbox={"facecolor": "white", "edgecolor": "none"})
                    y -= 1
                    continue
                reach.append(d.mean)
                face = color if d.low is not None else "white"  # hollow: no interval
                ax.plot(d.mean, y, "o", markersize=7, color=color, markerfacecolor=face)
                if d.low is None:  # say beside the marker how many replicates there are
                    ax.annotate(d.n_text.split(" per")[0], (d.mean, y), xytext=(7, 0), textcoords="offset points",
                                va="center", fontsize=9, color="0.35")
                y -= 1
            y -= 0.5
        ax.axvline(1.0 if scale == "log" else 0.0, color="k", linewidth=0.9)
        if scale == "log":
            ax.set_xscale("log")
            values = [v for v in reach if v > 0]
            low, high = min([*values, 1 / 3.5]) / 1.3, max([*values, 3.5]) * 1.3
            ax.set_xlim(low, high)
            ticks = [f for f in LOG_FACTORS if low <= f <= high]
            ax.xaxis.set_major_locator(FixedLocator(ticks))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(ticks, [factor_label(f) for f in ticks])
        ax.set_yticks([t[0] for t in labels], [t[1] for t in labels], fontsize=10)
        for tick, (_, _, header) in zip(ax.get_yticklabels(), labels, strict=True):
            tick.set_fontweight("bold" if header else "normal")
        ax.tick_params(axis="y", length=0)
        ax.set_ylim(y + 0.3, 0.7)
        ax.grid(axis="y", visible=False)
        ax.set_xlabel("BN / no-BN (log scale; ×1 = equal)" if scale == "log" else "BN − no-BN (0 = equal)",
                      fontsize=10)
    if not panels:
        axes.flat[0].text(0.5, 0.5, "no results yet", ha="center", va="center")
        axes.flat[0].axis("off")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=c, label=v) for v, c in VERDICT_COLORS.items()]
    handles.append(plt.Line2D([], [], marker="o", linestyle="", color="0.3", markerfacecolor="white",
                              label="too few replicates for an interval"))
    if margins_drawn:
        handles.append(plt.Rectangle((0, 0), 1, 1, color="#2ca02c", alpha=0.15, label="equivalence margin"))
    fig.legend(handles=handles, loc="upper center", ncol=2, fontsize=9.5, bbox_to_anchor=(0.5, 1.0))
    legend_rows = (len(handles) + 1) // 2
    fig.tight_layout(rect=(0, 0, 1, 1 - (0.25 * legend_rows + 0.1) / fig.get_figheight()))
    return fig


_PLAYER_ICONS = {"fa fa-minus": "&minus;", "fa fa-fast-backward": "&#x21E4;", "fa fa-step-backward": "&#x25C1;",
                 "fa fa-play fa-flip-horizontal": "&#x25C0;", "fa fa-pause": "&#x2016;", "fa fa-play": "&#x25B6;",
                 "fa fa-step-forward": "&#x25B7;", "fa fa-fast-forward": "&#x21E5;", "fa fa-plus": "+"}


def offline_jshtml(animation, dpi: int = DPI) -> str:
    """``animation.to_jshtml()`` made fully offline: a slider over precomputed frames that moves in a static
    page. Matplotlib's player links Font Awesome from a CDN for its button icons; that link is dropped and
    the icons become Unicode characters. Frames are PNGs at ``dpi`` (the book's: a column-wide figure fills the
    column, its text at the size it was drawn).

    Raises:
        RuntimeError: if the HTML still references an outside URL.
    """

    with plt.rc_context({"savefig.dpi": dpi}):
        html = animation.to_jshtml(default_mode="once")
    html = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", html)
    for icon, text in _PLAYER_ICONS.items():
        html = html.replace(f'<i class="{icon}"></i>', text)
    if "://" in re.sub(r"data:[^\"']*", "", html):
        raise RuntimeError("the animation's HTML still references an outside URL; the website must stay offline")
    return html


def figure_png(fig, dpi: int = DPI) -> bytes:
    """Render ``fig`` to PNG bytes and close it (for an ``ipywidgets.Image`` redrawn by a live slider)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def memorization_against_fit(found: dict, grid_band: dict, norms: Sequence[str] = config.COMPARED_NORMS):
    """The main figure of the memorization chapter, from ``population.study``, at the column's width: per norm,
    canary memorization against inlier fit over the whole range its models reach (top, the full width: mean over
    models with a min-max band; dotted lines: the declared fit grid, dashed: the headline level), BN - no-BN at
    each grid level with its simultaneous 95% band (bottom left, ``grid_band`` from ``verdict.curve_band``) and
    the fit along the common schedule (bottom right; dashed: BN at the equal-exposure learning rate)."""
    from . import population as population_lib

    populations = [found["populations"][n] for n in norms]
    fig = plt.figure(figsize=(COLUMN_INCHES, 5.8))
    layout = fig.add_gridspec(2, 2, height_ratios=(1.15, 1.0))
    against = fig.add_subplot(layout[0, :])
    difference, along = fig.add_subplot(layout[1, 0]), fig.add_subplot(layout[1, 1])
    for norm, pop in zip(norms, populations, strict=True):
        fits = np.concatenate([fit.T for fit in pop.fits])  # (sum T, E)
        band(along, pop.curves[0]["epoch"], fits, norm)
        grid = population_lib.fit_grid(pop)
        band(against, grid, population_lib.on_fit_grid(pop, grid), norm,
             label=f"{NORM_LABELS.get(norm, norm)} ({fits.shape[0]} models)")
    equal = found.get("equal_exposure", {}).get("populations", {}).get("batch")
    if equal is not None and equal is not found["populations"].get("batch"):
        fits = np.concatenate([fit.T for fit in equal.fits])
        along.plot(equal.curves[0]["epoch"], fits.mean(0), "--", color=NORM_COLORS.get("batch", "k"),
                   label=f"BN, peak lr {equal.lr:.2g}")
    for level in found["levels"]:
        headline = level == found["headline"]
        against.axvline(level, color="grey", linestyle="--" if headline else ":", linewidth=1)
    levels = np.asarray(grid_band["levels"], dtype=float)
    difference.axhline(0, color="grey", linewidth=0.8)
    difference.fill_between(levels, grid_band["low"], grid_band["high"], color="0.6", alpha=0.35, linewidth=0,
                            label="simultaneous 95% band")
    difference.plot(levels, grid_band["mean"], "o-", color="k", markersize=4, label="mean over model pairs")
    against.set(title="canary memorization against fit", xlabel="inlier train accuracy",
                ylabel="canary acc:\nIN − OUT (per model)")
    difference.set(title="BN − no-BN on the fit grid", xlabel="inlier train accuracy",
                   ylabel="memorization\ndifference")
    along.set(title="fit along the schedule", xlabel="epoch", ylabel="inlier train acc.\n(own half)")
    against.legend(loc="best")
    difference.legend(loc="best", fontsize=MIN_FONT)
    along.legend(loc="lower right", fontsize=MIN_FONT)
    fig.tight_layout(h_pad=1.2)
    return fig
