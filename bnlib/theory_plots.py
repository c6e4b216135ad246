"""The theory chapter's slider figures: three panels at (batch size m, outlier distance a), as a PNG for live
sliders or as the frames of a self-contained animation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from . import plots
from .theory import ChapterParams, amplification, window


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
    for value in params.residual_curves:
        curves.plot(grid, amplification(batch_size, along, across, slope, value), color=next(colors, "0.4"),
                    label=f"r = {value:g}")
    curves.plot(grid, amplification(batch_size, along, across, slope, slope * along), "k--",
                label="label = inlier mean (r = βa)")
    curves.axhline(1.0, color="0.5", lw=0.8)
    curves.axvline(distance, color="#d62728", lw=1.0)
    curves.set(yscale="log", ylim=(0.03, 1000), xlabel="outlier distance a", ylabel="ρ = I_BN / I_none",
               title=f"amplification at m = {batch_size}")
    curves.legend(fontsize=7, loc="upper left", ncol=2)

    lower, upper = window(batch_size, grid, slope)
    lower_far, upper_far = window(1e9, grid, slope)
    regimes.fill_between(grid, lower, upper, color="#d62728", alpha=0.2, lw=0, label=f"BN amplifies (m = {batch_size})")
    regimes.plot(grid, lower_far, "k:", grid, upper_far, "k:", lw=1)
    regimes.plot([], [], "k:", label="window as m → ∞")
    regimes.plot(grid, slope * grid, "k--", lw=1, label="label = inlier mean")
    regimes.plot([distance], [residual], "o", color="#d62728")
    regimes.set(xlim=(0, params.slider_max_distance), ylim=(-3 * slope * params.slider_max_distance / 4,
                                                             slope * params.slider_max_distance / 2),
                xlabel="outlier distance a (along w)", ylabel="outlier residual r", title="where BN amplifies")
    regimes.legend(fontsize=7, loc="lower left")

    x, y = simulated_batch(batch_size, distance, slope, residual)
    mean, std = x.mean(), x.std()
    line = np.linspace(min(-3.0, x.min()) - 0.5, max(3.0, distance) + 0.5, 50)
    batch.plot(line, slope * line, color="#1f77b4", label="fit without the outlier (BN or none)")
    batch.plot(line, slope * (line - mean) / std, color="#d62728", label="BN with the outlier in the batch")
    batch.scatter(x[:-1], y[:-1], s=8, color="0.3", label=f"{batch_size - 1} inliers")
    batch.scatter(x[-1:], y[-1:], s=40, marker="*", color="#d62728", label="outlier")
    batch.set(xlabel="x along w", ylabel="y, f(x)", title=f"a batch: m = {batch_size}, a = {distance:.1f}")
    batch.legend(fontsize=7, loc="upper left")


def panels_png(params: ChapterParams, batch_size: int, distance: float, dpi: int = 80) -> bytes:
    """:func:`draw_panels` at (m, a) as PNG bytes, for an ``ipywidgets.Image`` (the live sliders): no Output
    widget is involved, which nbclient can deadlock on when a notebook is executed in batch (nbclient #312)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4))
    draw_panels(axes, params, batch_size, distance)
    fig.tight_layout()
    return plots.figure_png(fig, dpi)


def slider_animation(params: ChapterParams, batch_sizes: Sequence[int], distances: Sequence[float]):
    """A matplotlib animation whose frames are :func:`draw_panels` at (batch_sizes[k], distances[k]).

    ``to_jshtml()`` of it is a self-contained slider (inline JavaScript, frames as embedded PNGs).
    """
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4))

    def frame(k: int) -> list:
        draw_panels(axes, params, int(batch_sizes[k]), float(distances[k]))
        fig.tight_layout()
        return []

    animation = FuncAnimation(fig, frame, frames=len(batch_sizes), blit=False)
    plt.close(fig)
    return animation
