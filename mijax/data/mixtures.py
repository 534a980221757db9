"""Gaussian-mixture data sets: the paper's presets, their hallucination labels and the
measurements of a model's samples against the true mixture.

The mixture itself (sampling, density, exact score) is :mod:`mijax.mixtures`; this module makes it a
data set. Labels: a sample is *hallucinated* when its distance to the nearest mode
exceeds k times that mode's std (k = 5 by default); otherwise it is *in support*. A second rule,
:func:`blur_adjusted_labels`, forgives a model for widening its modes but not for filling the gaps.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import ndtr

from mijax import mixtures
from mijax.data import register
from mijax.mixtures import GaussianMixture, in_support, mass_beyond, nearest_mode
from mijax.stats import sliced_wasserstein

MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): MAD of a Gaussian times this is its std
KS = (3.0, 4.0, 5.0, 6.0)  # the radii every rate table reports
LOST_SHARE = 0.1  # a mode is lost when its mass is below this fraction of its true weight
SLICED_DIRECTIONS = 64


# ---------------------------------------------------------------------------------------------
# Labels and rates (jit-able).

def labels(mixture: GaussianMixture, x: jnp.ndarray, k: float = 5.0) -> jnp.ndarray:
    """Hallucinated: farther than ``k`` stds from the nearest mode.

    Args:
      mixture: the true mixture ([K, d] means).
      x: samples [N, d] or [S, N, d], with the mixture's own d (other shapes raise ValueError).
      k: the support radius in units of the nearest mode's std.
    Returns:
      bool [N] (or [S, N]), True for hallucinations (the complement of ``mixtures.in_support``; NaN samples
      count as hallucinated).
    """
    return ~in_support(mixture, x, k)


def hallucination_rate(mixture: GaussianMixture, x: jnp.ndarray, k: float = 5.0) -> jnp.ndarray:
    """The fraction of samples x [N, d] farther than k stds from their nearest mode; a float32 scalar."""
    return jnp.mean(labels(mixture, x, k).astype(jnp.float32))


def rate_table(mixture: GaussianMixture, x: jnp.ndarray, ks: Sequence[float] = KS) -> list[dict]:
    """Hallucination rate of x [N, d] at several radii, beside the true law's mass beyond each.

    Returns:
      ``[{"k": float, "rate": float, "true_mass": float}, ...]`` in the order of ``ks``;
      ``true_mass`` is ``mixtures.mass_beyond(k, d)``, the rate an exact sampler would have for
      well-separated modes.
    """
    dist = np.asarray(nearest_mode(mixture, x)[1])
    return [{"k": float(k), "rate": float(np.mean(dist > k)) if dist.size else math.nan,
             "true_mass": mass_beyond(float(k), mixture.dim)} for k in ks]


def blur_adjusted_labels(mixture: GaussianMixture, x: jnp.ndarray, k: float = 5.0,
                         window: float = 10.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Labels that forgive a model for blurring its modes, but not for filling the gaps between them.

    A model whose modes come out somewhat wider than the truth puts many samples beyond k true stds
    that are not interpolations. Per mode, estimate the model's own spread from the samples assigned
    to it (nearest mode) that lie within ``window`` true stds of it, so the gap does not pollute the
    estimate: ``spread = 1.4826 * median |x_ic - median_c|``, pooled over samples i and coordinates c
    (median_c: the per-coordinate median of those samples, the model's own centre). A sample is then
    hallucinated when its distance to the nearest mode's true mean exceeds
    ``k * max(true std, spread)``.

    Args:
      mixture: the true mixture ([K, d] means, [K] stds).
      x: samples [N, d].
      k: the support radius in units of max(true std, estimated spread).
      window: only samples within this many true stds of a mode estimate its spread.
    Returns:
      (hallucinated bool [N], spreads [K]); a spread is NaN where no sample estimates it, and the
      true std is used there. Memory is O(K N d): a masked [K, N, d] array feeds the medians.
    """
    num_modes = mixture.means.shape[0]
    n, d = x.shape
    idx, dist = nearest_mode(mixture, x)  # [N], [N] in true stds
    member = (idx[None, :] == jnp.arange(num_modes)[:, None]) & (dist <= window)[None, :]  # [K, N]
    values = jnp.where(member[:, :, None], x[None, :, :], jnp.nan)  # [K, N, d]
    centre = jnp.nanmedian(values, axis=1)  # [K, d]
    deviations = jnp.abs(values - centre[:, None, :]).reshape(num_modes, n * d)  # [K, N d]
    spreads = MAD_TO_STD * jnp.nanmedian(deviations, axis=1)  # [K]
    scale = jnp.fmax(mixture.stds, spreads)  # fmax: a NaN spread falls back to the true std
    distance = dist * mixture.stds[idx]  # [N], in data units
    return distance > k * scale[idx], spreads


# ---------------------------------------------------------------------------------------------
# Measurements of one model's samples (host-side numpy).

_nearest_mode = jax.jit(nearest_mode)


def mode_mass(mixture: GaussianMixture, x: np.ndarray, k: float) -> np.ndarray:
    """Fraction of the samples x [P, d] within k stds of each mode; float64 [K]."""
    idx, dist = (np.asarray(a) for a in _nearest_mode(mixture, jnp.asarray(x)))
    inside = dist <= k
    return np.bincount(idx[inside], minlength=mixture.num_modes) / max(x.shape[0], 1)


def mode_offsets(mixture: GaussianMixture, x: np.ndarray, k: float = 5.0) -> np.ndarray:
    """How far each mode's samples are centred from the truth: per mode, the distance from its true mean to
    the mean of the samples x [P, d] that lie within k stds of it (nearest mode), in units of its std;
    float64 [K], NaN for a mode without samples. A well-trained model gives about std / sqrt(count)."""
    idx, dist = (np.asarray(a) for a in _nearest_mode(mixture, jnp.asarray(x)))
    x = np.asarray(x, np.float64)
    means, stds = np.asarray(mixture.means, np.float64), np.asarray(mixture.stds, np.float64)
    out = np.full(means.shape[0], np.nan)
    for m in range(means.shape[0]):
        inside = (idx == m) & (dist <= k)
        if inside.any():
            out[m] = np.linalg.norm(x[inside].mean(axis=0) - means[m]) / stds[m]
    return out


def _hist_edges(mixture: GaussianMixture, bins: int) -> list[np.ndarray]:
    means = np.asarray(mixture.means, np.float64)
    std = float(np.max(np.asarray(mixture.stds)))
    lo, hi = means.min(axis=0), means.max(axis=0)
    margin = 0.25 * (hi - lo) + 10 * std
    return [np.linspace(lo[c] - margin[c], hi[c] + margin[c], bins + 1) for c in range(means.shape[1])]


def true_histogram(mixture: GaussianMixture, edges: Sequence[np.ndarray]) -> np.ndarray:
    """Exact bin probabilities of the mixture on a rectangular grid (outer bins extend to infinity)."""
    means = np.asarray(mixture.means, np.float64)
    stds = np.asarray(mixture.stds, np.float64)
    weights = np.asarray(mixture.weights, np.float64)
    total = 0.0
    for mu, s, w in zip(means, stds, weights):
        per_axis = []
        for c, e in enumerate(edges):
            cdf = ndtr((e - mu[c]) / s)
            cdf[0], cdf[-1] = 0.0, 1.0
            per_axis.append(np.diff(cdf))
        grid = per_axis[0]
        for p in per_axis[1:]:
            grid = np.multiply.outer(grid, p)
        total = total + w * grid
    return total


def histogram_kl(mixture: GaussianMixture, x: np.ndarray, bins: int = 0) -> float:
    """KL(true || generated) between binned laws: exact true bin masses, generated counts smoothed by
    +0.5 per bin (finite when a mode is lost); samples outside the grid fall in the outer bins.
    ``bins`` per axis, 0 for the default (200 in 1D, 50 in 2D)."""
    d = mixture.dim
    bins = bins or (200 if d == 1 else 50)
    edges = _hist_edges(mixture, bins)
    p = true_histogram(mixture, edges)
    clipped = [np.clip(x[:, c], e[0] + 1e-12, e[-1] - 1e-12) for c, e in enumerate(edges)]
    counts, _ = np.histogramdd(np.stack(clipped, axis=1), bins=edges)
    q = (counts + 0.5) / (counts.sum() + 0.5 * counts.size)
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


# ---------------------------------------------------------------------------------------------
# The data sets.

@dataclasses.dataclass(frozen=True, eq=False)
class MixtureDataset:
    """A Gaussian mixture as a data set (see :mod:`mijax.data`).

    Attributes:
      name: the registry name.
      mixture: the true law, in the units the model trains in.
      round_robin: training point i from mode i mod K (the published code's equal counts) or modes
        drawn i.i.d. by weight.
      k: the support radius (stds) of the labels.
    """

    name: str
    mixture: GaussianMixture
    round_robin: bool = True
    k: float = 5.0
    summary_keys: tuple[str, ...] = ("hallucination_rate", "hallucination_rate_blur_adjusted", "modes_lost",
                                     "histogram_kl", "sliced_w1")

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.mixture.dim,)

    def training_set(self, key: jax.Array, n: int) -> jnp.ndarray:
        """[n, d] points of the mixture."""
        return mixtures.sample(self.mixture, key, n, self.round_robin)

    def reference(self, key: jax.Array, n: int) -> jnp.ndarray:
        """[n, d] points of the mixture with equal counts per mode (a stratified draw, for distances)."""
        return mixtures.sample(self.mixture, key, n)

    def hallucinated(self, x) -> np.ndarray:
        """Farther than k stds from every mode: bool [N] (:func:`labels`)."""
        return np.asarray(labels(self.mixture, jnp.asarray(x), self.k))

    def labels(self, x) -> dict[str, np.ndarray]:
        """``{"k5": beyond k true stds, "blur": beyond k times each mode's own spread where wider}``
        (the key is ``k`` followed by the radius, e.g. ``k5``)."""
        x = jnp.asarray(x)
        return {f"k{self.k:g}": self.hallucinated(x),
                "blur": np.asarray(blur_adjusted_labels(self.mixture, x, self.k)[0])}

    def oracle(self, schedule):
        """The exact denoiser eps*(x_t, t) of this mixture on ``schedule``: ``(fn, params)`` for the sampler's
        ``oracle`` detector (:func:`mijax.mixtures.exact_denoiser`)."""
        return mixtures.exact_denoiser, (self.mixture, schedule)

    def measure(self, x: np.ndarray, reference: np.ndarray) -> dict:
        """Measurements of samples x [P, d] against the true mixture and a true sample [P, d]; JSON-able:
        rates beyond k (own and blur-adjusted) and at every radius of ``KS``, mass per mode, modes lost,
        the histogram KL to the truth and the sliced W1 distance to ``reference``."""
        mixture, k = self.mixture, self.k
        mass = mode_mass(mixture, x, k)
        lost = mass < LOST_SHARE * np.asarray(mixture.weights, np.float64)
        dist = np.asarray(_nearest_mode(mixture, jnp.asarray(x))[1])
        return {
            "hallucination_rate": float(np.mean(dist > k)),
            # k times each mode's own spread in these samples where wider than the truth: a blurred mode is
            # not counted as interpolation (see blur_adjusted_labels)
            "hallucination_rate_blur_adjusted": float(np.mean(np.asarray(
                blur_adjusted_labels(mixture, jnp.asarray(x), k)[0]))),
            "rates": [{"k": float(r), "rate": float(np.mean(dist > r)), "true_mass": mass_beyond(float(r), mixture.dim)}
                      for r in KS],
            "mode_mass": [float(v) for v in mass],
            "modes_lost": int(lost.sum()),
            "histogram_kl": histogram_kl(mixture, x),
            "sliced_w1": sliced_wasserstein(x, reference, SLICED_DIRECTIONS),
        }


def _preset(name: str, make, round_robin: bool):
    def factory(std: float, k: float = 5.0, round_robin: bool = round_robin, **kwargs) -> MixtureDataset:
        if not (isinstance(k, (int, float)) and math.isfinite(k) and k > 0):
            raise ValueError(f"k must be a finite number > 0, got {k!r}")
        return MixtureDataset(name, make(std=std, **kwargs), bool(round_robin), float(k))
    return factory


# The published code draws gaussian8 i.i.d. and the others round-robin (sample i from mode i mod K);
# it trains on 20,000 points in 1D and 100,000 in 2D.
register("gaussian1d", _preset("gaussian1d", mixtures.gaussian1d, True), n_train=20_000,
         summary="1D modes at --modes (default 1, 2, 3), std 0.05, not normalised",
         modes=(1.0, 2.0, 3.0), std=0.05, round_robin=True, k=5.0)
register("gaussian25", _preset("gaussian25", mixtures.gaussian25, True), n_train=100_000,
         summary="the 5 x 5 grid of std 0.05, normalised as published",
         std=0.05, round_robin=True, k=5.0)
register("gaussian25_rotated", _preset("gaussian25_rotated", mixtures.gaussian25_rotated, True), n_train=100_000,
         summary="the 5 x 5 grid turned 45 degrees", std=0.05, round_robin=True, k=5.0)
register("gaussian8", _preset("gaussian8", mixtures.gaussian8, False), n_train=100_000,
         summary="a ring of 8 modes of radius 2, std 0.02", std=0.02, round_robin=False, k=5.0)
