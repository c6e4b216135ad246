"""One house style for every figure: colours per norm, mean-with-band curves, image grids."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

NORM_COLORS = {"batch": "#d62728", "group": "#2ca02c", "layer": "#9467bd", "none": "#1f77b4",
               "ghost": "#ff7f0e", "running": "#8c564b"}
NORM_LABELS = {"batch": "BatchNorm", "group": "GroupNorm", "layer": "LayerNorm", "none": "no norm",
               "ghost": "ghost BN", "running": "BN, running statistics"}


def set_style() -> None:
    """Apply the book's matplotlib style (call once per notebook)."""
    plt.rcParams.update({
        "figure.dpi": 110, "savefig.dpi": 110, "figure.figsize": (6.4, 3.6),
        "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
        "font.size": 10, "legend.frameon": False,
    })


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


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, columns: int = 10,
               size: float = 1.0, suptitle: str | None = None):
    """Show images (N, C, H, W) in [0, 1] in a grid; returns the figure."""
    n = len(images)
    rows = max(1, int(np.ceil(n / columns)))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size, rows * size * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            image = images[i].detach().cpu().float()
            ax.imshow(image[0] if image.shape[0] == 1 else image.permute(1, 2, 0).clamp(0, 1),
                      cmap="gray" if image.shape[0] == 1 else None, vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def effects_figure(grouped: dict[str, dict[str, dict]], norms: Sequence[str] = ("batch", "none"), columns: int = 4):
    """One panel per effect: each norm's mean with its 95% CI, for each comparison (same schedule, matched fit).

    Args:
        grouped: effect -> comparison -> metric entry, as returned by ``report.effects``.
        norms: the norms to show, side by side within each comparison.
        columns: panels per row.
    Returns:
        The figure.
    """
    count = len(grouped)
    width = max(1, min(count, columns))
    rows = max(1, int(np.ceil(count / width)))
    fig, axes = plt.subplots(rows, width, figsize=(3.1 * width, 2.7 * rows), squeeze=False)
    offsets = np.linspace(-0.15, 0.15, len(norms))
    for ax, (effect, by_comparison) in zip(axes.flat[:count], grouped.items(), strict=True):
        for position, entry in enumerate(by_comparison.values()):
            for offset, norm in zip(offsets, norms, strict=True):
                stat = entry.get(norm) or {}
                mean = stat.get("mean")
                if mean is None or np.isnan(mean):
                    continue
                low, high = stat["ci95"]
                ax.errorbar(position + offset, mean, yerr=[[mean - low], [high - mean]], fmt="o", capsize=3,
                            color=NORM_COLORS.get(norm, "k"), label=NORM_LABELS.get(norm, norm))
        ax.set_xticks(range(len(by_comparison)), [c.replace("_", "\n") for c in by_comparison])
        ax.set_xlim(-0.6, len(by_comparison) - 0.4)
        ax.set_title(textwrap.fill(effect.replace("_", " "), 30), fontsize=9)
        higher = next(iter(by_comparison.values())).get("higher_means", "")
        ax.set_ylabel(textwrap.fill(f"↑ {higher}", 28) if higher else "", fontsize=8)
    for ax in axes.flat[count:]:
        ax.axis("off")
    handles = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.0))
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


_PLAYER_ICONS = {"fa fa-minus": "&minus;", "fa fa-fast-backward": "&#x21E4;", "fa fa-step-backward": "&#x25C1;",
                 "fa fa-play fa-flip-horizontal": "&#x25C0;", "fa fa-pause": "&#x2016;", "fa fa-play": "&#x25B6;",
                 "fa fa-step-forward": "&#x25B7;", "fa fa-fast-forward": "&#x21E5;", "fa fa-plus": "+"}


def offline_jshtml(animation, dpi: int = 80) -> str:
    """``animation.to_jshtml()`` made fully offline: a slider over precomputed frames that moves in a static
    page. Matplotlib's player links Font Awesome from a CDN for its button icons; that link is dropped and
    the icons become Unicode characters. Frames are PNGs at ``dpi``.

    Raises:
        RuntimeError: if the HTML still references an outside URL.
    """
    import re

    with plt.rc_context({"savefig.dpi": dpi}):
        html = animation.to_jshtml(default_mode="once")
    html = re.sub(r'<link rel="stylesheet"\s+href="https?://[^"]*font-awesome[^"]*">', "", html)
    for icon, text in _PLAYER_ICONS.items():
        html = html.replace(f'<i class="{icon}"></i>', text)
    if "://" in re.sub(r"data:[^\"']*", "", html):
        raise RuntimeError("the animation's HTML still references an outside URL; the website must stay offline")
    return html


def figure_png(fig, dpi: int = 80) -> bytes:
    """Render ``fig`` to PNG bytes and close it (for an ``ipywidgets.Image`` redrawn by a live slider)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def memorization_against_fit(found: dict, level: float, norms: Sequence[str] = ("batch", "none")):
    """The main figure of the memorization chapter, from ``population.study``: per norm, fit along training
    (left), canary memorization against inlier fit (middle; mean over models with a min-max band; the dotted
    line is the matched-fit level) and where each model crosses that level (right: epoch and learning rate)."""
    from . import population as population_lib

    populations = [found["populations"][n] for n in norms]
    grid = population_lib.fit_grid(populations)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.0))
    for norm, pop in zip(norms, populations, strict=True):
        fits = np.concatenate([fit.T for fit in pop.fits])  # (sum T, E)
        band(axes[0], pop.curves[0]["epoch"], fits, norm)
        band(axes[1], grid, population_lib.on_fit_grid(pop, grid), norm,
             label=f"{NORM_LABELS.get(norm, norm)} ({fits.shape[0]} models)")
        crossing = found["crossings"][norm]
        axes[2].scatter(crossing["epoch"], crossing["learning_rate"], color=NORM_COLORS.get(norm, "k"), s=14,
                        label=NORM_LABELS.get(norm, norm), alpha=0.7)
    axes[1].axvline(level, color="grey", linestyle=":", linewidth=1)
    axes[0].set(title="fit along training", xlabel="epoch", ylabel="inlier train accuracy (own half)")
    axes[1].set(title="memorization against fit", xlabel="inlier train accuracy",
                ylabel="canary acc: IN − OUT (per model)")
    axes[2].set(title=f"where each model crosses fit {level:.3f}", xlabel="epoch", ylabel="learning rate there")
    axes[1].legend()
    axes[2].legend()
    fig.tight_layout()
    return fig
