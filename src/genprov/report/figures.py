"""Figures and image rendering for reports.

Every helper builds a :class:`matplotlib.figure.Figure` with the object-oriented API (no ``pyplot``, so
no GUI backend, no global figure registry and nothing to leak); pass the result to
:class:`genprov.report.Figure`, which renders it to PNG and closes it. Images are genprov's float
tensors in [-1, 1]; :func:`to_png_bytes` turns one into PNG bytes with nearest-neighbour upscaling so
8x8 digits stay crisp.

Example:
    >>> import torch
    >>> png = to_png_bytes(torch.zeros(1, 8, 8), scale=4)
    >>> png[:4] == b"\\x89PNG"
    True
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image as PILImage
from torch import Tensor

from genprov.data.images import make_grid
from genprov.eval.stats import MeanCI
from genprov.exceptions import DataError

__all__ = [
    "PALETTE",
    "close_figure",
    "figure_to_png_bytes",
    "image_grid",
    "make_grid",
    "metric_bars",
    "roc_curves",
    "score_histograms",
    "to_png_bytes",
    "to_uint8",
    "training_curves",
]

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#c026d3")
"""Line and bar colours, in order; shared with the report's CSS accents."""

_INK = "#1f2937"
_MUTED = "#6b7280"
_GRID = "#e5e7eb"


def _as_image_tensor(image: object, name: str) -> Tensor:
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(image)
    if not isinstance(image, Tensor):
        raise DataError(f"{name} must be a torch.Tensor of shape (C, H, W) or (H, W); got {type(image).__name__}.")
    if image.ndim == 2:
        image = image.unsqueeze(0)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise DataError(
            f"{name} must have shape (1, H, W), (3, H, W) or (H, W); got {tuple(image.shape)}. "
            "Pass a single image, e.g. images[0], or build a grid with make_grid(images)."
        )
    image = image.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(image).all()):
        raise DataError(f"{name} contains NaN or infinite values.")
    return image


def to_uint8(image: Tensor | np.ndarray, *, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """Map one image to uint8 pixels; values outside ``value_range`` are clipped for display.

    Args:
        image: (C, H, W) with C in {1, 3}, or (H, W); float values in ``value_range``.
        value_range: The values shown as black and white.

    Returns:
        (H, W) uint8 for one channel, (H, W, 3) for three.
    """
    x = _as_image_tensor(image, "image")
    low, high = value_range
    if not high > low:
        raise DataError(f"value_range must be (low, high) with high > low; got {value_range!r}.")
    pixels = ((x - low) / (high - low)).clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8).numpy()
    return pixels[0] if pixels.shape[0] == 1 else np.ascontiguousarray(pixels.transpose(1, 2, 0))


def to_png_bytes(
    image: Tensor | np.ndarray, *, scale: int = 1, value_range: tuple[float, float] = (-1.0, 1.0)
) -> bytes:
    """Encode one image as PNG, upscaled ``scale`` times with nearest-neighbour (blocky, not blurred).

    Args:
        image: (C, H, W) with C in {1, 3}, or (H, W), values in ``value_range`` (clipped for display).
        scale: Integer upscaling factor, >= 1.
        value_range: The values shown as black and white.

    Returns:
        PNG file contents.
    """
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise DataError(f"scale must be a positive integer; got {scale!r}.")
    pixels = to_uint8(image, value_range=value_range)
    pil = PILImage.fromarray(pixels)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), PILImage.Resampling.NEAREST)
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _new_figure(width: float = 6.4, height: float = 3.8) -> Figure:
    return Figure(figsize=(width, height), layout="constrained", facecolor="white")


def _style(ax: Axes, *, title: str | None = None, xlabel: str | None = None, ylabel: str | None = None) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(_MUTED)
    ax.tick_params(colors=_INK, labelsize=9)
    ax.grid(True, color=_GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    if title:
        ax.set_title(title, fontsize=11, color=_INK, loc="left")
    if xlabel:
        ax.set_xlabel(xlabel, fontsize=9, color=_INK)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9, color=_INK)


def _legend(ax: Axes) -> None:
    ax.legend(frameon=False, fontsize=9, labelcolor=_INK)


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def image_grid(
    images: Tensor,
    nrow: int = 8,
    *,
    title: str | None = None,
    padding: int = 1,
    value_range: tuple[float, float] = (-1.0, 1.0),
) -> Figure:
    """A grid of images as a figure (nearest-neighbour, no axes).

    For a report, :class:`genprov.report.Image` of :func:`make_grid` gives a sharper, smaller file; use
    this where a matplotlib figure is needed (titles, combining with other panels).

    Args:
        images: (n, C, H, W) in ``value_range``, C in {1, 3}.
        nrow: Images per row.
        title: Optional title.
        padding: Pixels between images.
        value_range: The values shown as black and white.
    """
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=value_range[1])
    pixels = to_uint8(grid, value_range=value_range)
    height, width = pixels.shape[:2]
    side = 6.0
    fig = _new_figure(side, max(1.0, side * height / width + (0.4 if title else 0.0)))
    ax = fig.add_subplot()
    ax.imshow(pixels, cmap="gray" if pixels.ndim == 2 else None, vmin=0, vmax=255, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=11, color=_INK, loc="left")
    return fig


def training_curves(
    logs: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    *,
    x: str = "step",
    logy: bool = False,
    title: str | None = None,
) -> Figure:
    """One panel per logged quantity against ``x`` (or the entry index if ``x`` is not logged).

    Args:
        logs: Training log entries, e.g. ``[{"step": 0, "loss_d": 1.2, "loss_g": 0.7}, ...]``; entries
            without a key are skipped for that key.
        keys: Quantities to plot, one panel each, side by side.
        x: Key of the horizontal axis.
        logy: Log-scale vertical axes.
        title: Optional title above the panels.
    """
    if not keys:
        raise DataError("training_curves needs at least one key to plot; got none.")
    missing = [k for k in keys if not any(k in entry for entry in logs)]
    if missing:
        present = sorted({k for entry in logs for k in entry})
        raise DataError(f"training_curves: no log entry has {missing}; logged keys are {present}.")
    fig = _new_figure(min(3.4 * len(keys), 10.0), 3.0 + (0.3 if title else 0.0))
    axes = fig.subplots(1, len(keys), squeeze=False)[0]
    for i, (ax, key) in enumerate(zip(axes, keys, strict=True)):
        points = [(entry.get(x, j), entry[key]) for j, entry in enumerate(logs) if key in entry]
        xs, ys = zip(*points, strict=True)
        ax.plot(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), color=_color(i), linewidth=1.6)
        if logy:
            ax.set_yscale("log")
        _style(ax, title=key, xlabel=x)
    if title:
        fig.suptitle(title, fontsize=11, color=_INK, x=0.0, ha="left")
    return fig


def roc_curves(
    curves: Mapping[str, tuple[Any, Any, float]], *, log_x: bool = False, title: str | None = None
) -> Figure:
    """ROC curves of several methods on one axes, with AUCs in the legend.

    Args:
        curves: ``{name: (fpr, tpr, auc)}``, e.g. from :func:`genprov.eval.roc_curve` and
            :func:`genprov.eval.roc_auc`.
        log_x: Log-scale false-positive axis (to read the low-FPR regime).
        title: Optional title.
    """
    if not curves:
        raise DataError("roc_curves needs at least one curve; got none.")
    fig = _new_figure(4.8, 4.2)
    ax = fig.add_subplot()
    if not log_x:
        ax.plot([0, 1], [0, 1], linestyle="--", color=_MUTED, linewidth=1, label="chance")
    for i, (name, (fpr, tpr, auc)) in enumerate(curves.items()):
        f, t = np.asarray(fpr, dtype=float), np.asarray(tpr, dtype=float)
        if f.shape != t.shape or f.ndim != 1:
            raise DataError(f"roc_curves[{name!r}]: fpr and tpr must be 1-D of equal length; got {f.shape}, {t.shape}.")
        ax.plot(f, t, color=_color(i), linewidth=1.8, label=f"{name} (AUC {auc:.3f})", drawstyle="steps-post")
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(1e-3, 1)
    else:
        ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    _style(ax, title=title, xlabel="false-positive rate", ylabel="true-positive rate")
    _legend(ax)
    return fig


def score_histograms(
    scores: Mapping[str, Any],
    *,
    bins: int = 30,
    threshold: float | None = None,
    xlabel: str = "score",
    title: str | None = None,
) -> Figure:
    """Overlaid histograms of score sets on shared bins (e.g. own vs. real vs. other generators).

    Args:
        scores: ``{name: (n,) scores}``; tensors, arrays or lists.
        bins: Number of shared bins.
        threshold: Optional decision threshold drawn as a vertical line.
        xlabel: Label of the score axis.
        title: Optional title.
    """
    if not scores:
        raise DataError("score_histograms needs at least one score set; got none.")
    arrays = {}
    for name, values in scores.items():
        arr = np.asarray(values.detach().cpu() if isinstance(values, Tensor) else values, dtype=float).ravel()
        if arr.size == 0 or not np.isfinite(arr).all():
            raise DataError(f"score_histograms[{name!r}] must be a non-empty set of finite scores.")
        arrays[name] = arr
    edges = np.histogram_bin_edges(np.concatenate(list(arrays.values())), bins=bins).tolist()
    fig = _new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    for i, (name, arr) in enumerate(arrays.items()):
        color = _color(i)
        ax.hist(arr, bins=edges, color=color, alpha=0.25, density=True)
        ax.hist(arr, bins=edges, color=color, histtype="step", linewidth=1.6, density=True, label=name)
    if threshold is not None:
        ax.axvline(threshold, color=_INK, linestyle="--", linewidth=1.2, label="threshold")
    _style(ax, title=title, xlabel=xlabel, ylabel="density")
    _legend(ax)
    return fig


def metric_bars(
    values: Mapping[str, float | MeanCI], *, ylabel: str = "", title: str | None = None, fmt: str = ".3f"
) -> Figure:
    """Horizontal bars of one metric per method, with bootstrap intervals for :class:`MeanCI` values.

    Args:
        values: ``{method: value or MeanCI}``; drawn top to bottom in the given order.
        ylabel: Name of the metric (shown on the value axis).
        title: Optional title.
        fmt: Format of the value printed beside each bar.
    """
    if not values:
        raise DataError("metric_bars needs at least one value; got none.")
    names = list(values)
    means = np.array([v.mean if isinstance(v, MeanCI) else float(v) for v in values.values()])
    lows = np.array([v.mean - v.low if isinstance(v, MeanCI) else 0.0 for v in values.values()])
    highs = np.array([v.high - v.mean if isinstance(v, MeanCI) else 0.0 for v in values.values()])
    fig = _new_figure(6.4, 0.9 + 0.45 * len(names))
    ax = fig.add_subplot()
    positions = np.arange(len(names))[::-1]
    colors = [_color(i) for i in range(len(names))]
    ax.barh(positions, means, color=colors, alpha=0.85, height=0.6)
    if highs.any() or lows.any():
        ax.errorbar(means, positions, xerr=[lows, highs], fmt="none", ecolor=_INK, elinewidth=1.2, capsize=3)
    for pos, mean, low, high in zip(positions, means, lows, highs, strict=True):
        end = mean + high if mean >= 0 else mean - low  # label just past the interval
        ax.annotate(
            f"{mean:{fmt}}",
            (end, pos),
            xytext=(6 if mean >= 0 else -6, 0),
            textcoords="offset points",
            ha="left" if mean >= 0 else "right",
            va="center",
            fontsize=9,
            color=_INK,
        )
    ax.margins(x=0.12)
    ax.set_yticks(positions, names)
    ax.axvline(0, color=_MUTED, linewidth=0.8)
    _style(ax, title=title, xlabel=ylabel)
    ax.grid(False, axis="y")
    return fig


def close_figure(fig: Figure) -> None:
    """Release a figure: closes it in ``pyplot`` if it was made there, and clears its artists."""
    if getattr(fig.canvas, "manager", None) is not None:  # created through pyplot
        import matplotlib.pyplot as plt

        plt.close(fig)
    fig.clear()


def figure_to_png_bytes(fig: Figure, *, dpi: int = 150, close: bool = True) -> bytes:
    """Render ``fig`` to PNG bytes (Agg, white background); by default close it afterwards.

    Args:
        fig: The figure.
        dpi: Pixels per inch of the PNG.
        close: Release the figure with :func:`close_figure` after rendering.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig, Figure):
        raise DataError(f"Expected a matplotlib Figure; got {type(fig).__name__}.")
    if getattr(fig.canvas, "manager", None) is None:
        FigureCanvasAgg(fig)  # attach a non-interactive canvas to a Figure made without pyplot
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    if close:
        close_figure(fig)
    return buffer.getvalue()
