"""Figures: sample histograms against the true density (the paper's Figure 2), Hal histograms, ROC
curves, 2D scatters, lines with confidence bands, loss curves and image grids.

Every ``plot_*`` function takes its data first and returns the ``matplotlib.figure.Figure`` it drew; given
the keyword ``path``, it also writes the figure there as a PNG, atomically (:func:`save`)::

    figure = plots.plot_roc(curves)                  # only drawn: show it, change it, save it later
    plots.plot_roc(curves, path="figures/roc.png")   # drawn and written; the same figure is returned

Each figure has its own Agg canvas (:func:`new_figure`) and is never made through pyplot, so nothing touches
pyplot's global figure registry or the process-wide backend and nothing needs closing: a figure, written or
not, is freed once its caller drops it, and one that is kept stays usable (``figure.axes``,
``figure.savefig`` or :func:`save` to write it elsewhere; in Jupyter, with the inline backend on, a figure
that is a cell's value is shown). Hallucination labels come from the caller (a data set's labels, see
:mod:`mijax.data`).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from mijax import store
from mijax.mixtures import GaussianMixture, log_prob

DPI = 120
IN_SUPPORT_COLOUR = "tab:blue"
HALLUCINATED_COLOUR = "tab:red"
DENSITY_COLOUR = "black"


def new_figure(width: float = 6.4, height: float = 4.4) -> Figure:
    """A figure with its own Agg canvas (no pyplot)."""
    figure = Figure(figsize=(width, height), dpi=DPI, layout="tight")
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path) -> str:
    """Write ``figure`` to ``path`` as a PNG atomically; returns the path as a string."""
    return store.save_figure(figure, path, DPI)


PathLike = Union[str, os.PathLike]


def _data_first(name: str, first) -> None:
    """Refuse a path where the data belongs: the plot functions once took the PNG's path first."""
    if isinstance(first, (str, os.PathLike)):
        raise TypeError(f"{name} takes its data first and the PNG as the keyword path=..., got the path {first!r} "
                        "as its first argument")


def _done(figure: Figure, path: Optional[PathLike]) -> Figure:
    """``figure``, written to ``path`` first unless that is None."""
    if path is not None:
        save(figure, path)
    return figure


def _points(x, mixture: GaussianMixture, positives, dim: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 samples [N, dim] of a dim-D mixture and their bool labels [N]."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim or mixture.dim != dim:
        raise ValueError(f"{name} needs [N, {dim}] samples of a {dim}D mixture, got {x.shape}, d={mixture.dim}")
    positives = np.asarray(positives, dtype=bool)
    if positives.shape != (x.shape[0],):
        raise ValueError(f"positives must be [{x.shape[0]}], got {positives.shape}")
    return x, positives


def _percent(positives: np.ndarray) -> str:
    return f"{100.0 * positives.mean():.3g}%" if positives.size else "n/a"


def plot_histogram_1d(x, mixture: GaussianMixture, positives, bins: int = 300, k: float = 5.0,
                      title: Optional[str] = None, value_range: Optional[Sequence[float]] = None, *,
                      path: Optional[PathLike] = None) -> Figure:
    """1D samples against the true density on a log scale (the paper's Figure 2).

    The histogram is a density over all N samples, its hallucinated part (farther than k stds from
    the nearest mode, or ``positives`` if given) stacked on top in another colour; the in-support
    intervals mu +- k std are shaded and the true mixture density drawn over them.

    Args:
      x: samples [N, 1]. mixture: the true 1D mixture.
      positives: bool [N] hallucination labels (e.g. the data set's ``hallucinated(x)``).
      bins: histogram bins over ``value_range`` (default: the samples' and modes' range).
      k: the support radius in stds (shaded). title: the figure title (default: a summary).
      path: where to write the PNG (default: nowhere).
    Returns:
      the figure (written to ``path`` first when one is given).
    """
    _data_first("plot_histogram_1d", x)
    x, positives = _points(x, mixture, positives, 1, "plot_histogram_1d")
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

    figure = new_figure(7.5, 4.8)
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
    return _done(figure, path)


def _log_bins(values: np.ndarray, bins: int) -> np.ndarray:
    """Log-spaced edges covering the positive finite values (a decade either side if they are equal)."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return np.geomspace(1e-12, 1.0, bins + 1)
    lo, hi = positive.min(), positive.max()
    if hi <= lo * (1 + 1e-9):
        lo, hi = lo / 10.0, hi * 10.0
    return np.geomspace(lo, hi * (1 + 1e-9), bins + 1)


def plot_hal_histograms(hal, positives, bins: int = 60, threshold: Optional[float] = None,
                        title: Optional[str] = None, threshold_label: str = "threshold",
                        names: tuple[str, str] = ("in support", "hallucinated"), *,
                        path: Optional[PathLike] = None) -> Figure:
    """Hal of in-support vs hallucinated samples on a log x axis, each class normalised to 1.

    Args:
      hal: [N] Hal scores. positives: [N] bool, True for hallucinations.
      bins: log-spaced bins over the positive Hal values (Hal <= 0 is clipped into the first bin).
      threshold: an operating point's threshold, drawn as a vertical line (samples at or above it
        are removed). threshold_label: its legend entry.
      names: the legend names of the negatives and the positives.
      path: where to write the PNG (default: nowhere).
    Returns:
      the figure (written to ``path`` first when one is given).
    """
    _data_first("plot_hal_histograms", hal)
    hal = np.asarray(hal, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if hal.ndim != 1 or positives.shape != hal.shape:
        raise ValueError(f"hal and positives must both be [N], got {hal.shape} and {positives.shape}")
    edges = _log_bins(hal, bins)
    clipped = np.clip(hal, edges[0], edges[-1])

    figure = new_figure()
    ax = figure.subplots()
    for mask, name, colour in ((~positives, names[0], IN_SUPPORT_COLOUR),
                               (positives, names[1], HALLUCINATED_COLOUR)):
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
    if ax.get_legend_handles_labels()[0]:  # nothing to name when neither class has samples
        ax.legend(fontsize=8)
    return _done(figure, path)


def plot_roc(curves: Mapping[str, tuple], title: Optional[str] = None, *,
             path: Optional[PathLike] = None) -> Figure:
    """ROC curves of hallucination detectors.

    Args:
      curves: ``{name: (fpr [M], tpr [M], auroc)}``, e.g. from ``hallucination.roc_curve`` and
        ``hallucination.auroc``.
      path: where to write the PNG (default: nowhere).
    Returns:
      the figure (written to ``path`` first when one is given).
    """
    _data_first("plot_roc", curves)
    figure = new_figure(5.2, 5.0)
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
    return _done(figure, path)


def plot_scatter_2d(x, mixture: GaussianMixture, positives, max_points: int = 20_000,
                    k: float = 5.0, title: Optional[str] = None, seed: int = 0, *,
                    path: Optional[PathLike] = None) -> Figure:
    """2D samples over the modes, hallucinated ones in another colour, k-std circles around the modes.

    Args:
      x: samples [N, 2]. mixture: the true 2D mixture.
      positives: bool [N] hallucination labels (e.g. the data set's ``hallucinated(x)``).
      max_points: draw at most this many samples, a subset fixed by ``seed``; the counts in the
        legend are of all N.
      k: the support radius in stds. path: where to write the PNG (default: nowhere).
    Returns:
      the figure (written to ``path`` first when one is given).
    """
    _data_first("plot_scatter_2d", x)
    x, positives = _points(x, mixture, positives, 2, "plot_scatter_2d")
    shown = np.arange(x.shape[0])
    if x.shape[0] > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
    means = np.asarray(mixture.means, dtype=np.float64)
    stds = np.asarray(mixture.stds, dtype=np.float64)

    figure = new_figure(6.0, 6.6)
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
    return _done(figure, path)


def plot_ci_bands(xs: Sequence[float], series: Mapping[str, Sequence[dict]], xlabel: str, ylabel: str,
                  title: str, scale: float = 1.0, logx: bool = False, logy: bool = False,
                  reference: Optional[Mapping[str, float]] = None, colours: Optional[Mapping[str, str]] = None,
                  integer_x: bool = False, bounds: Optional[tuple[float, float]] = None,
                  points: Optional[Mapping[str, Sequence[Sequence[float]]]] = None, *,
                  path: Optional[PathLike] = None) -> Figure:
    """Lines of means over seeds with their 95% CI bands, one per series.

    Args:
      xs: the x values [X].
      series: ``{name: [ci per x]}``, each ci a dict with ``mean``, ``low``, ``high`` (None or NaN where
        undefined: no band there), e.g. from :func:`mijax.stats.mean_ci`.
      scale: multiplies every value (100 for percent). reference: horizontal lines ``{label: value}``.
      colours: ``{name: colour}`` for some series. integer_x: a tick at every x (generations).
      bounds: the range the quantity can take, (0, 1) for a share (before ``scale``): bands are cut to it
        (a t interval over 2 seeds easily reaches past 0% and 100%).
      points: ``{name: [values of the seeds at each x]}``: each seed's value as a dot beside its series' mean.
      path: where to write the PNG (default: nowhere).
    Returns:
      the figure (written to ``path`` first when one is given).
    """
    _data_first("plot_ci_bands", xs)
    def values(cis, key):
        return np.array([np.nan if c[key] is None else c[key] for c in cis], dtype=np.float64) * scale

    figure = new_figure(6.4, 4.4)
    ax = figure.subplots()
    for index, (name, cis) in enumerate(series.items()):
        (line,) = ax.plot(xs, values(cis, "mean"), marker="o", lw=1.5, label=name,
                          color=(colours or {}).get(name))
        low, high = values(cis, "low"), values(cis, "high")
        if bounds is not None:
            low, high = (np.clip(v, bounds[0] * scale, bounds[1] * scale) for v in (low, high))
        ax.fill_between(xs, np.maximum(low, 1e-12) if logy else low, high, color=line.get_color(), alpha=0.2, lw=0)
        shift = 0.04 * (index - (len(series) - 1) / 2)  # the series' dots side by side, not on top of each other
        for x, seeds in zip(xs, (points or {}).get(name, ())):
            ax.scatter(np.full(len(seeds), x + shift, dtype=np.float64), np.asarray(seeds, dtype=np.float64) * scale,
                       s=12, color=line.get_color(), alpha=0.8, zorder=3)
    for name, value in (reference or {}).items():
        ax.axhline(value * scale, color="black", ls=":", lw=1, label=name)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if integer_x:
        ax.set_xticks(list(xs))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _done(figure, path)


def plot_losses(steps, losses, names: Sequence[str] = (), window: int = 0, *,
                path: Optional[PathLike] = None) -> Figure:
    """The training loss against the step: each model's loss [K, models] at ``steps`` [K] as a faint line, its
    running mean over ``window`` steps (default: a fiftieth of the steps, at least 1) as a solid one, log y.

    Returns:
      the figure (written to ``path`` first when one is given).
    """
    _data_first("plot_losses", steps)
    steps, losses = np.asarray(steps, dtype=np.float64), np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[0] != steps.shape[0]:
        raise ValueError(f"plot_losses needs steps [K] and losses [K, models], got {steps.shape} and {losses.shape}")
    figure = new_figure(6.4, 4.0)
    ax = figure.subplots()
    window = max(1, window or steps.shape[0] // 50)
    for i in range(losses.shape[1]):
        (line,) = ax.plot(steps, losses[:, i], lw=0.6, alpha=0.3)
        if steps.shape[0] >= window:
            smooth = np.convolve(losses[:, i], np.ones(window) / window, mode="valid")
            ax.plot(steps[window - 1:], smooth, lw=1.4, color=line.get_color(),
                    label=names[i] if i < len(names) else f"model {i}")
    if steps.size and np.all(losses > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"loss (running mean over {window} steps)" if window > 1 else "loss")
    ax.set_title("training loss", fontsize=10)
    if losses.shape[1] and losses.shape[1] <= 10 and steps.size:
        ax.legend(fontsize=8)
    return _done(figure, path)


def plot_image_grid(sections: Mapping[str, np.ndarray], columns: int = 8, cell: float = 0.9,
                    title: Optional[str] = None, *, path: Optional[PathLike] = None) -> Figure:
    """Labelled rows of grey images: each section (e.g. "training images", "generated: hallucinated") is a
    titled block of rows of its images [n, H, W, 1] (or [n, H, W]) in the models' scale [-1, 1], ``columns``
    to a row; an empty section says so in its title row.

    Returns:
      the figure (written to ``path`` first when one is given).
    """
    _data_first("plot_image_grid", sections)
    blocks = []
    for name, images in sections.items():
        images = np.asarray(images, dtype=np.float64)
        if images.ndim == 4 and images.shape[-1] == 1:
            images = images[..., 0]
        if images.ndim != 3 and images.size:
            raise ValueError(f"plot_image_grid: section {name!r} needs grey images [n, H, W, 1], got {images.shape}")
        blocks.append((name, images.reshape(-1, *images.shape[-2:]) if images.size else images.reshape(0, 1, 1)))
    rows = sum(max(1, -(-len(images) // columns)) for _, images in blocks)
    height = 1.25 * cell * rows + (0.4 if title else 0.1)
    figure = new_figure(cell * columns, height)
    figure.set_layout_engine("none")  # the section titles run across the row: no axis may shrink to fit them
    axes = np.asarray(figure.subplots(rows, columns, squeeze=False))
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1.0 - (0.4 if title else 0.1) / height,
                           wspace=0.05, hspace=0.25 / cell)
    for ax in axes.ravel():
        ax.set_axis_off()
    row = 0
    for name, images in blocks:
        for i, image in enumerate(images):
            axes[row + i // columns, i % columns].imshow(image, cmap="gray", vmin=-1.0, vmax=1.0)
        axes[row, 0].set_title(f"{name} ({len(images)})" if len(images) else f"{name}: none", fontsize=8,
                               loc="left")
        row += max(1, -(-len(images) // columns))
    if title:
        figure.suptitle(title, fontsize=10)
    return _done(figure, path)
