"""The theory chapter's figures: the three slider panels at (batch size m, outlier distance a), as a figure,
a PNG for live sliders or the frames of a self-contained animation; the toy's trend in m; and the real CNN's
measurements beside it (where its canaries sit, its influence against m)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from . import plots
from .theory import ChapterParams, amplification, window
from .theory_derivation import TREND_BATCH_SIZES, TREND_DISTANCES, relative_to_large_batch

PANELS_HEIGHT = 4.4  # inches: three panels side by side at the column's width, legends under them
# the panels' margins and gaps (figure fractions), set by hand: tight_layout squeezes axes whose legends lie outside
PANELS_LAYOUT = dict(left=0.115, right=0.985, bottom=0.37, top=0.93, wspace=0.66)
PANEL_TITLE = 10  # pt: three titles share a row of the column


def simulated_batch(batch_size: int, distance: float, slope: float, residual: float,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small 1-D batch as in A1-A2 (coordinate along w only): m-1 whitened inliers with labels
    slope * x + noise (noise uncorrelated with 1 and x), then the outlier (distance, slope * distance - residual).

    Returns:
        x (m,), y (m,); the outlier is last.
    """
    rng = np.random.default_rng(seed)
    inliers = rng.standard_normal(batch_size - 1)
    inliers = (inliers - inliers.mean()) / inliers.std() if batch_size > 2 else np.zeros(1)
    design = np.stack([np.ones_like(inliers), inliers], 1)  # (m-1, 2)
    noise = 0.3 * slope * rng.standard_normal(len(inliers))
    noise = noise - design @ np.linalg.lstsq(design, noise, rcond=None)[0]
    return np.append(inliers, distance), np.append(slope * inliers + noise, slope * distance - residual)


def _legend_below(ax, columns: int = 1) -> None:  # under the x label, from the y label's left
    ax.legend(fontsize=plots.MIN_FONT, loc="upper left", bbox_to_anchor=(-0.25, -0.2), ncol=columns,
              handlelength=1.5, columnspacing=0.6, borderaxespad=0.0)


def draw_panels(axes: Sequence[Any], params: ChapterParams, batch_size: int, distance: float) -> None:
    """The three slider panels at (m, a): amplification curves over a, the amplification window in the
    (a, r) plane, and a simulated batch with the BN prediction line with and without the outlier."""
    curves, regimes, batch = axes
    for ax in axes:
        ax.clear()
    slope, residual = params.inlier_slope, params.outlier_residual
    grid = np.linspace(0.0, params.slider_max_distance, 400)[1:]  # a > 0 (a = 0 is the inlier mean)
    along, across = params.components(grid)
    colors = iter(("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#e377c2"))
    for value in params.residual_curves:  # short labels: the legend sits under a third of the column
        curves.plot(grid, amplification(batch_size, along, across, slope, value), color=next(colors, "0.4"),
                    label=f"r = {value:g}")
    curves.plot(grid, amplification(batch_size, along, across, slope, slope * along), "k--",
                label="r = βa (typical label)")
    curves.axhline(1.0, color="0.5", lw=0.8)
    curves.axvline(distance, color="#d62728", lw=1.0)
    curves.set(yscale="log", ylim=(0.03, 1000), xlabel="outlier distance a", ylabel="ρ = I_BN / I_none")
    curves.set_title(f"amplification, m = {batch_size}", fontsize=PANEL_TITLE)
    _legend_below(curves)

    lower, upper = window(batch_size, grid, slope)
    lower_far, upper_far = window(1e9, grid, slope)
    regimes.fill_between(grid, lower, upper, color="#d62728", alpha=0.2, lw=0, label=f"BN amplifies (m = {batch_size})")
    regimes.plot(grid, lower_far, "k:", grid, upper_far, "k:", lw=1)
    regimes.plot([], [], "k:", label="window as m → ∞")
    regimes.plot(grid, slope * grid, "k--", lw=1, label="typical label")
    regimes.plot([distance], [residual], "o", color="#d62728")
    regimes.set(xlim=(0, params.slider_max_distance), ylim=(-3 * slope * params.slider_max_distance / 4,
                                                             slope * params.slider_max_distance / 2),
                xlabel="outlier distance a", ylabel="outlier residual r")
    regimes.set_title("where BN amplifies", fontsize=PANEL_TITLE)
    _legend_below(regimes)

    x, y = simulated_batch(batch_size, distance, slope, residual)
    mean, std = x.mean(), x.std()
    line = np.linspace(min(-3.0, x.min()) - 0.5, max(3.0, distance) + 0.5, 50)
    batch.plot(line, slope * line, color="#1f77b4", label="inlier fit")
    batch.plot(line, slope * (line - mean) / std, color="#d62728", label="BN + outlier")
    batch.scatter(x[:-1], y[:-1], s=8, color="0.3", label=f"{batch_size - 1} inliers")
    batch.scatter(x[-1:], y[-1:], s=40, marker="*", color="#d62728", label="outlier")
    batch.set(xlabel="x along w", ylabel="y, f(x)")
    batch.set_title(f"a batch, a = {distance:.1f}", fontsize=PANEL_TITLE)
    _legend_below(batch)


def panels_figure(params: ChapterParams, batch_size: int, distance: float):
    """:func:`draw_panels` at (m, a) in a new figure at the text column's width; returns the figure."""
    fig, axes = plots.subplots(1, 3, height=PANELS_HEIGHT)
    fig.subplots_adjust(**PANELS_LAYOUT)
    draw_panels(axes, params, batch_size, distance)
    return fig


def panels_png(params: ChapterParams, batch_size: int, distance: float, dpi: int = plots.DPI) -> bytes:
    """:func:`panels_figure` at (m, a) as PNG bytes, for an ``ipywidgets.Image`` (the live sliders): no Output
    widget is involved, which nbclient can deadlock on when a notebook is executed in batch (nbclient #312)."""
    return plots.figure_png(panels_figure(params, batch_size, distance), dpi)


def live_panels(params: ChapterParams, batch_slider, distance_slider):
    """The live sliders' picture: an ``ipywidgets.Image`` of :func:`panels_png` redrawn from the closed forms
    whenever ``batch_slider`` (m) or ``distance_slider`` (a) moves, laid out under the two sliders.

    An Image widget rather than an Output widget: an Output widget would work in Jupyter too, but batch
    execution of the notebook can deadlock on one. Returns the ``ipywidgets.VBox`` to display.
    """
    import ipywidgets as widgets

    def png() -> bytes:  # at the book's dpi: the picture is as wide as the text column, like every figure
        return panels_png(params, batch_slider.value, distance_slider.value)

    picture = widgets.Image(format="png", value=png())

    def redraw(_change=None) -> None:
        picture.value = png()

    batch_slider.observe(redraw, "value")
    distance_slider.observe(redraw, "value")
    return widgets.VBox([widgets.HBox([batch_slider, distance_slider]), picture])


def slider_animation(params: ChapterParams, batch_sizes: Sequence[int], distances: Sequence[float]):
    """A matplotlib animation whose frames are :func:`draw_panels` at (batch_sizes[k], distances[k]).

    ``to_jshtml()`` of it is a self-contained slider (inline JavaScript, frames as embedded PNGs).
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    fig, axes = plots.subplots(1, 3, height=PANELS_HEIGHT)
    fig.subplots_adjust(**PANELS_LAYOUT)

    def frame(k: int) -> list:
        draw_panels(axes, params, int(batch_sizes[k]), float(distances[k]))
        return []

    animation = FuncAnimation(fig, frame, frames=len(batch_sizes), blit=False)
    plt.close(fig)
    return animation


def batch_size_trend(slope: float, residual: float, distances: Sequence[float] = TREND_DISTANCES):
    """The toy's BN influence against the batch size, relative to its large-batch value, for outliers at
    ``distances`` (:func:`theory_derivation.relative_to_large_batch`); no norm is flat at 1. Returns the figure."""
    fig, ax = plots.subplots(height=3.6)
    for along in distances:
        ax.plot(TREND_BATCH_SIZES, relative_to_large_batch(TREND_BATCH_SIZES, along, slope, residual),
                label=f"a = {along:g}")
    ax.axhline(1.0, color=plots.NORM_COLORS["none"], lw=1, ls="--", label="no norm (any a)")
    ax.set(xscale="log", yscale="log", xlabel="batch size m", ylabel="I_BN(m) / I_BN(m → ∞)",
           title=f"toy model: r = {residual:g}, β = {slope:g}")
    ax.legend(fontsize=plots.MIN_FONT, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


def distances_figure(squared: Mapping[str, Sequence[np.ndarray]], colors: Sequence[str] = ("#d62728", "0.5")):
    """Box plots per BN layer of each sample's largest channel a² (``theory_cnn.canary_and_test_distances``),
    one box per group of samples (canaries, test images) side by side. Returns the figure."""
    fig, ax = plots.subplots(height=3.4)
    groups = list(squared)
    layers = range(len(squared[groups[0]]))
    for offset, (name, color) in enumerate(zip(groups, colors, strict=False)):
        ax.boxplot([layer.max(1) for layer in squared[name]], positions=[3 * k + offset for k in layers],
                   widths=0.8, patch_artist=True, boxprops=dict(facecolor=color, alpha=0.4), showfliers=False)
        ax.plot([], [], "s", color=color, alpha=0.6, label=name)
    ax.set(xticks=[3 * k + 0.5 for k in layers], xticklabels=[f"BN layer {k + 1}" for k in layers], yscale="log",
           ylabel="largest channel a²", title="how far the samples sit, as BatchNorm sees them")
    ax.legend(fontsize=plots.MIN_FONT)
    fig.tight_layout()
    return fig


def cnn_influence_figure(measured: Mapping[str, Mapping[str, np.ndarray]], batch_sizes: Sequence[int],
                         ratio: np.ndarray | None = None):
    """Left: a canary's counterfactual influence against the batch size per norm (mean with min-max band over
    canaries) and that of an inlier of the same batch (dotted). Right, given ``ratio`` (S, K) of BN over no
    norm (``theory_cnn.amplification_ratios``): its mean with the min-max band. Returns the figure."""
    sizes = np.asarray(batch_sizes)
    fig, axes = plots.subplots(1, 2, height=4.6)
    for norm, values in measured.items():
        label = plots.NORM_LABELS[norm]
        plots.band(axes[0], sizes, values["outlier"].T, norm, label=f"{label}: canary")
        axes[0].plot(sizes, values["inlier"].mean(1), color=plots.NORM_COLORS[norm], ls=":", marker=".",
                     label=f"{label}: an inlier")
    axes[0].set(xscale="log", yscale="log", xlabel="batch size m", ylabel="counterfactual influence I",
                title="trained small CNN")
    axes[0].legend(fontsize=plots.MIN_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    if ratio is not None:
        plots.band(axes[1], sizes, ratio.T, "batch", label="canary: BN / no norm")
        axes[1].axhline(1.0, color="0.5", lw=0.8)
        axes[1].set(xscale="log", xlabel="batch size m", ylabel="I_BN / I_none", title="amplification of a canary")
        axes[1].legend(fontsize=plots.MIN_FONT, loc="upper center", bbox_to_anchor=(0.5, -0.2))
    fig.tight_layout()
    return fig
