"""Isotropic Gaussian mixtures: sampling, density, the exact score of the noised mixture, labels.

A mixture has K modes in d dimensions with means [K, d], one std per mode [K] and weights [K].
Noising a mixture by q(x_t | x_0) gives another mixture: means sqrt(abar_t) mu_k and variances
abar_t s_k^2 + 1 - abar_t, so its score and the ideal eps*(x_t, t) are exact and cheap.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.scipy.special import gammaincc, logsumexp

from mijax.diffusion import Schedule


@struct.dataclass
class GaussianMixture:
    """An isotropic Gaussian mixture; a pytree, so it can be a sampler's ``params``."""

    means: jnp.ndarray  # [K, d]
    stds: jnp.ndarray  # [K]
    weights: jnp.ndarray  # [K], sums to 1

    @property
    def num_modes(self) -> int:
        return int(self.means.shape[0])

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])


def make_mixture(means, stds, weights=None) -> GaussianMixture:
    """Validate and build a mixture.

    Args:
      means: [K, d] (or [K] for 1D, read as [K, 1]); any finite floats.
      stds: a positive float or [K].
      weights: [K] positive (normalised here) or None for equal weights.
    Raises:
      ValueError: empty, non-finite means; std <= 0; bad weights.
    """
    means = np.asarray(means, dtype=np.float64)
    if means.ndim == 1:
        means = means[:, None]
    if means.ndim != 2 or means.shape[0] == 0 or means.shape[1] == 0:
        raise ValueError(f"means must be a non-empty [K, d] array, got shape {means.shape}")
    if not np.all(np.isfinite(means)):
        raise ValueError("means must be finite (no NaN or infinity)")
    k = means.shape[0]
    stds = np.broadcast_to(np.asarray(stds, dtype=np.float64), (k,))
    if not np.all(np.isfinite(stds)) or np.any(stds <= 0):
        raise ValueError(f"std must be finite and > 0, got {stds.tolist()}")
    weights = np.full(k, 1.0 / k) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != (k,) or not np.all(np.isfinite(weights)) or np.any(weights <= 0):
        raise ValueError(f"weights must be {k} positive numbers")
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    return GaussianMixture(f32(means), f32(stds), f32(weights / weights.sum()))


# ---------------------------------------------------------------------------------------------
# The paper's presets. Each returns the mixture in the units the model trains in.

def gaussian1d(modes: Sequence[float] = (1.0, 2.0, 3.0), std: float = 0.05) -> GaussianMixture:
    """1D modes at ``modes`` (not normalised), std 0.05 each; the paper's Figure 2 uses (1, 2, 3)."""
    return make_mixture(np.asarray(modes, dtype=np.float64)[:, None], std)


_ROTATED = [(-2, 0), (-1.5, .5), (-1, 1), (-.5, 1.5), (0, 2), (-1.5, -.5), (-1, 0), (-.5, .5), (0, 1),
            (.5, 1.5), (-1, -1), (-.5, -.5), (0, 0), (.5, .5), (1, 1), (-.5, -1.5), (0, -1), (.5, -.5),
            (1, 0), (1.5, .5), (0, -2), (.5, -1.5), (1, -1), (1.5, -.5), (2, 0)]


def _grid_divisor(std: float) -> float:
    """The grids' normalisation, sqrt(std^2 + 8): each coordinate of the data then has unit variance, as in the
    published code (2.828869 at std 0.05)."""
    return math.sqrt(std**2 + 8.0)


def gaussian25(std: float = 0.05) -> GaussianMixture:
    """The 5x5 grid 2 (i, j), i, j in -2..2, std ``std`` (0.05), all divided by sqrt(std^2 + 8)."""
    grid = np.array([(i, j) for i in range(-2, 3) for j in range(-2, 3)], dtype=np.float64)
    return make_mixture(2.0 * grid / _grid_divisor(std), std / _grid_divisor(std))


def gaussian25_rotated(std: float = 0.05) -> GaussianMixture:
    """The same grid turned 45 degrees (published code's order), the same normalisation."""
    return make_mixture(2.0 * np.array(_ROTATED, dtype=np.float64) / _grid_divisor(std), std / _grid_divisor(std))


def gaussian8(std: float = 0.02, radius: float = 2.0) -> GaussianMixture:
    """A ring of 8 modes of radius 2, std 0.02, divided by sqrt(0.02^2 + radius^2 / 2) as published."""
    angles = 0.25 * np.pi * np.arange(8)
    ring = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    divisor = math.sqrt(std**2 + radius**2 * 0.5)
    return make_mixture(ring / divisor, std / divisor)



# ---------------------------------------------------------------------------------------------
# Sampling and density.

def sample(mixture: GaussianMixture, key: jax.Array, n: int, round_robin: bool = True) -> jnp.ndarray:
    """Draw n points, [n, d]. ``round_robin``: point i from mode i mod K (the paper's equal counts);
    otherwise modes i.i.d. by weight."""
    mode_key, noise_key = jax.random.split(key)
    if round_robin:
        modes = jnp.arange(n) % mixture.num_modes
    else:
        modes = jax.random.categorical(mode_key, jnp.log(mixture.weights), shape=(n,))
    z = jax.random.normal(noise_key, (n, mixture.dim), jnp.float32)
    return mixture.means[modes] + mixture.stds[modes][:, None] * z


def _component_log_probs(means, variances, log_weights, x):
    """log w_k + log N(x; mu_k, v_k I) for x [N, d] -> [N, K]."""
    d = means.shape[1]
    sq = jnp.sum((x[:, None, :] - means[None, :, :]) ** 2, axis=-1)  # [N, K]
    return (log_weights[None, :] - 0.5 * sq / variances[None, :]
            - 0.5 * d * jnp.log(2.0 * jnp.pi * variances)[None, :])


def log_prob(mixture: GaussianMixture, x: jnp.ndarray) -> jnp.ndarray:
    """Log density of the mixture at x [N, d] -> [N]."""
    return logsumexp(_component_log_probs(mixture.means, mixture.stds**2, jnp.log(mixture.weights), x), axis=1)


def noised(mixture: GaussianMixture, schedule: Schedule, t: jnp.ndarray) -> GaussianMixture:
    """The law of x_t (scalar t): means sqrt(abar_t) mu, stds sqrt(abar_t s^2 + 1 - abar_t)."""
    abar = schedule.alphas_cumprod[t]
    return GaussianMixture(jnp.sqrt(abar) * mixture.means,
                           jnp.sqrt(abar * mixture.stds**2 + 1.0 - abar), mixture.weights)


def score(mixture: GaussianMixture, x: jnp.ndarray) -> jnp.ndarray:
    """grad_x log p(x) for x [N, d] -> [N, d], with logsumexp responsibilities."""
    variances = mixture.stds**2
    resp = jax.nn.softmax(_component_log_probs(mixture.means, variances, jnp.log(mixture.weights), x), axis=1)
    per_mode = (mixture.means[None, :, :] - x[:, None, :]) / variances[None, :, None]  # [N, K, d]
    return jnp.sum(resp[:, :, None] * per_mode, axis=1)


def exact_eps(mixture: GaussianMixture, schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """The ideal eps*(x_t, t) = -sqrt(1 - abar_t) grad log p_t(x_t) of the noised mixture.

    Args:
      x_t: [N, d]. t: a scalar or [N] int.
    Returns:
      [N, d], the minimiser of the denoising loss over all functions.
    """
    t = jnp.asarray(t)
    if t.ndim == 0:
        return -schedule.sqrt_one_minus_alphas_cumprod[t] * score(noised(mixture, schedule, t), x_t)
    return jax.vmap(lambda xi, ti: exact_eps(mixture, schedule, xi[None], ti)[0])(x_t, t)


def exact_denoiser(params: tuple[GaussianMixture, Schedule], x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """A denoiser that drops into the sampler in place of a network: ``params = (mixture, schedule)``.

    Example:
      >>> out = sample(exact_denoiser, (mixture, schedule), schedule, key, n, (1,))  # doctest: +SKIP
    """
    mixture, schedule = params
    return exact_eps(mixture, schedule, x_t, t)


# ---------------------------------------------------------------------------------------------
# Labels: distance to the nearest mode.

def check_samples(mixture: GaussianMixture, x) -> jnp.ndarray:
    """``x`` as an array of this mixture's samples, [N, d] or [S, N, d] with its own d; anything else raises
    ValueError naming both shapes."""
    x = jnp.asarray(x)
    d = mixture.means.shape[1]
    if x.ndim not in (2, 3) or x.shape[-1] != d:
        raise ValueError(f"samples of this {d}-D mixture are [N, {d}] or [S, N, {d}]; got shape {tuple(x.shape)}")
    return x


def nearest_mode(mixture: GaussianMixture, x: jnp.ndarray):
    """The nearest mode (Euclidean) and the distance to it in units of that mode's std, for samples x [N, d]
    (or [S, N, d]; :func:`check_samples`).

    Returns:
      (index [N] int32, distance_in_std [N]) (or [S, N] each).
    """
    x = check_samples(mixture, x)
    means = mixture.means.reshape((1,) * (x.ndim - 1) + mixture.means.shape)  # [1(, 1), K, d]
    sq = jnp.sum((x[..., None, :] - means) ** 2, axis=-1)  # [(S,) N, K]
    idx = jnp.argmin(sq, axis=-1)
    dist = jnp.sqrt(jnp.take_along_axis(sq, idx[..., None], axis=-1)[..., 0]) / mixture.stds[idx]
    return idx.astype(jnp.int32), dist


def in_support(mixture: GaussianMixture, x: jnp.ndarray, k: float = 5.0) -> jnp.ndarray:
    """True where x [N, d] (or [S, N, d]) lies within k std of its nearest mode; bool [N] (or [S, N]). The rest
    are hallucinations."""
    return nearest_mode(mixture, x)[1] <= k


def mass_beyond(k: float, dim: int) -> float:
    """P(||z|| > k) for z ~ N(0, I_dim): a mode's own mass beyond k std (5.7e-7 for k = 5, d = 1;
    3.7e-6 for d = 2). With well-separated modes this is the true mixture's hallucination rate."""
    return float(gammaincc(dim / 2.0, k * k / 2.0))
