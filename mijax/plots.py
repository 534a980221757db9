"""Figures: sample histograms against the true density (the paper's Figure 2), Hal histograms, ROC
curves and 2D scatters.

Every function draws on its own ``matplotlib.figure.Figure`` with an Agg canvas, never through
pyplot, so nothing touches pyplot's global figure registry or the process-wide backend, and figures
are freed when the function returns. Each writes one PNG atomically (a temporary file in the target
directory, then ``os.replace``) and returns its path.
"""
from __future__ import annotations

import os
import uuid
from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from mijax.hallucination import labels
from mijax.mixtures import GaussianMixture, log_prob

DPI = 120
IN_SUPPORT_COLOUR = "tab:blue"
HALLUCINATED_COLOUR = "tab:red"
DENSITY_COLOUR = "black"


def _new_figure(width: float = 6.4, height: float = 4.4) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path) -> str:
    """Write ``figure`` to ``path`` as a PNG atomically; returns the path as a string."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 honours the umask (mkstemp would leave the PNG readable by its owner only).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            figure.savefig(f, format="png", dpi=DPI)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _positives(mixture: GaussianMixture, x: np.ndarray, positives, k: float) -> np.ndarray:
    if positives is None:
        return np.asarray(labels(mixture, x, k))
    positives = np.asarray(positives, dtype=bool)
    if positives.shape != (x.shape[0],):
        raise ValueError(f"positives must be [{x.shape[0]}], got {positives.shape}")
    return positives


def _percent(positives: np.ndarray) -> str:
    return f"{100.0 * positives.mean():.3g}%" if positives.size else "n/a"


def plot_histogram_1d(path, x, mixture: GaussianMixture, bins: int = 300, k: float = 5.0, title: Optional[str] = None,
                      positives=None, value_range: Optional[Sequence[float]] = None) -> str:
    """1D samples against the true density on a log scale (the paper's Figure 2).

    The histogram is a density over all N samples, its hallucinated part (farther than k stds from
    the nearest mode, or ``positives`` if given) stacked on top in another colour; the in-support
    intervals mu +- k std are shaded and the true mixture density drawn over them.

    Args:
      path: the PNG to write. x: samples [N, 1]. mixture: the true 1D mixture.
      bins: histogram bins over ``value_range`` (default: the samples' and modes' range).
      k: the support radius in stds. title: the figure title (default: a summary).
      positives: bool [N] hallucination labels (default: ``labels(mixture, x, k)``).
    Returns:
      the path written.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 1 or mixture.dim != 1:
        raise ValueError(f"plot_histogram_1d needs [N, 1] samples of a 1D mixture, got {x.shape}, d={mixture.dim}")
    positives = _positives(mixture, x, positives, k)
    values = x[:, 0]
    means = np.asarray(mixture.means, dtype=np.float64)[:, 0]
    stds = np.asarray(mixture.stds, dtype=np.float64)
    if value_range is None:
        lo, hi = np.min(means - 6 * stds), np.max(means + 6 * stds)
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = min(lo, finite.min()), max(hi, finite.max())
        pad = 0.02 * (hi - lo)
        value_range = (lo - pad, hi + pad)
    edges = np.linspace(value_range[0], value_range[1], bins + 1)
    width = edges[1] - edges[0]
    n = max(values.size, 1)
    in_density = np.histogram(values[~positives], edges)[0] / (n * width)
    hal_density = np.histogram(values[positives], edges)[0] / (n * width)
    floor = 0.3 / (n * width)  # below one sample per bin: where the log axis starts

    figure = _new_figure(7.5, 4.8)
    ax = figure.subplots()
    for i, (lo_k, hi_k) in enumerate(zip(means - k * stds, means + k * stds)):
        ax.axvspan(lo_k, hi_k, color="tab:green", alpha=0.15, lw=0,
                   label=f"support (within {k:g} std of a mode)" if i == 0 else None)
    # Empty bins sit at the floor: a log axis has no zero.
    ax.stairs(np.maximum(in_density, floor), edges, baseline=floor, fill=True, color=IN_SUPPORT_COLOUR,
              alpha=0.8, label=f"samples, in support ({int((~positives).sum())})")
    ax.stairs(np.maximum(in_density + hal_density, floor), edges, baseline=np.maximum(in_density, floor), fill=True,
              color=HALLUCINATED_COLOUR, label=f"samples, hallucinated ({int(positives.sum())}, {_percent(positives)})")
    grid = np.linspace(value_range[0], value_range[1], 4000)
    density = np.exp(np.asarray(log_prob(mixture, grid[:, None].astype(np.float32)), dtype=np.float64))
    ax.plot(grid, density, color=DENSITY_COLOUR, lw=1.0, label="true density")
    ax.set_yscale("log")
    top = max(float(np.max(in_density + hal_density, initial=0.0)), float(density.max()))
    ax.set_ylim(floor, 2.0 * top)
    ax.set_xlim(*value_range)
    ax.set_xlabel("x")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title or f"{values.size} samples against the true density")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    return _save(figure, path)


def _log_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Log-spaced edges covering the positive finite values (a decade either side if they are equal)."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return np.geomspace(1e-12, 1.0, bins + 1)
    lo, hi = positive.min(), positive.max()
    if hi <= lo * (1 + 1e-9):
        lo, hi = lo / 10.0, hi * 10.0
    return np.geomspace(lo, hi * (1 + 1e-9), bins + 1)


def plot_hal_histograms(path, hal, positives, bins: int = 60, threshold: Optional[float] = None,
                        title: Optional[str] = None, threshold_label: str = "threshold") -> str:
    """Hal of in-support vs hallucinated samples on a log x axis, each class normalised to 1.

    Args:
      path: the PNG to write. hal: [N] Hal scores. positives: [N] bool, True for hallucinations.
      bins: log-spaced bins over the positive Hal values (Hal <= 0 is clipped into the first bin).
      threshold: an operating point's threshold, drawn as a vertical line (samples at or above it
        are removed). threshold_label: its legend entry.
    Returns:
      the path written.
    """
    hal = np.asarray(hal, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if hal.ndim != 1 or positives.shape != hal.shape:
        raise ValueError(f"hal and positives must both be [N], got {hal.shape} and {positives.shape}")
    edges = _log_bins(hal, bins)
    clipped = np.clip(hal, edges[0], edges[-1])

    figure = _new_figure()
    ax = figure.subplots()
    for mask, name, colour in ((~positives, "in support", IN_SUPPORT_COLOUR),
                               (positives, "hallucinated", HALLUCINATED_COLOUR)):
        if mask.any():
            counts = np.histogram(clipped[mask], edges)[0] / mask.sum()
            ax.stairs(counts, edges, fill=True, alpha=0.45, color=colour, label=f"{name} ({int(mask.sum())})")
            ax.stairs(counts, edges, color=colour, lw=1.2)
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1.2, label=f"{threshold_label} {threshold:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("Hal: variance of x0-hat over the last steps (log scale)")
    ax.set_ylabel("fraction of class per bin")
    ax.set_title(title or "Hal of in-support and hallucinated samples")
    ax.legend(fontsize=8)
    return _save(figure, path)


def plot_roc(path, curves: Mapping[str, tuple], title: Optional[str] = None) -> str:
    """ROC curves of hallucination detectors.

    Args:
      path: the PNG to write.
      curves: ``{name: (fpr [M], tpr [M], auroc)}``, e.g. from ``hallucination.roc_curve`` and
        ``hallucination.auroc``.
    Returns:
      the path written.
    """
    figure = _new_figure(5.2, 5.0)
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="chance")
    for name, (fpr, tpr, area) in curves.items():
        ax.plot(np.asarray(fpr), np.asarray(tpr), lw=1.6, label=f"{name} (AUROC {float(area):.3f})")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (in-support samples removed)")
    ax.set_ylabel("true positive rate (hallucinations removed)")
    ax.set_title(title or "Detecting hallucinations")
    ax.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def plot_scatter_2d(path, x, mixture: GaussianMixture, positives=None, max_points: int = 20_000,
                    k: float = 5.0, title: Optional[str] = None, seed: int = 0) -> str:
    """2D samples over the modes, hallucinated ones in another colour, k-std circles around the modes.

    Args:
      path: the PNG to write. x: samples [N, 2]. mixture: the true 2D mixture.
      positives: bool [N] hallucination labels (default: ``labels(mixture, x, k)``).
      max_points: draw at most this many samples, a subset fixed by ``seed``; the counts in the
        legend are of all N.
      k: the support radius in stds.
    Returns:
      the path written.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2 or mixture.dim != 2:
        raise ValueError(f"plot_scatter_2d needs [N, 2] samples of a 2D mixture, got {x.shape}, d={mixture.dim}")
    positives = _positives(mixture, x, positives, k)
    shown = np.arange(x.shape[0])
    if x.shape[0] > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
    means = np.asarray(mixture.means, dtype=np.float64)
    stds = np.asarray(mixture.stds, dtype=np.float64)

    figure = _new_figure(6.0, 6.6)
    ax = figure.subplots()
    for mean, std in zip(means, stds):
        ax.add_patch(Circle(mean, k * std, fill=False, color="tab:green", lw=0.8))
    ax.plot([], [], color="tab:green", lw=0.8, label=f"{k:g} std around a mode")
    inside, outside = shown[~positives[shown]], shown[positives[shown]]
    ax.scatter(x[inside, 0], x[inside, 1], s=2, alpha=0.4, color=IN_SUPPORT_COLOUR, lw=0,
               label=f"in support ({int((~positives).sum())})")
    ax.scatter(x[outside, 0], x[outside, 1], s=4, alpha=0.8, color=HALLUCINATED_COLOUR, lw=0,
               label=f"hallucinated ({int(positives.sum())}, {_percent(positives)})")
    ax.scatter(means[:, 0], means[:, 1], marker="x", s=25, color="black", lw=1, label="modes")
    ax.set_aspect("equal")
    ax.set_xlabel("x1")
    ax.set_ylabel("x2")
    subset = f" ({len(shown)} of {x.shape[0]} shown)" if len(shown) < x.shape[0] else ""
    ax.set_title(title or f"{x.shape[0]} samples{subset}")
    legend = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=2, fontsize=8, frameon=False)
    for handle in legend.legend_handles:
        if hasattr(handle, "set_sizes"):
            handle.set_sizes([16.0])
            handle.set_alpha(1.0)
    return _save(figure, path)
