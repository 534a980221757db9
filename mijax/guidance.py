"""Guidance toward the most likely mode: a mitigation that changes the reverse process, for Gaussian mixtures.

At each reverse step at or below ``start`` (a timestep), the sampler follows the score plus ``scale`` times the
gradient of the log posterior probability of the mode that is most likely given x_t,

    score_guided(x_t, t) = score(x_t, t) + scale * grad_x log p(c* | x_t),   c* = argmax_c p(c | x_t),

where p(c | x_t) is the exact posterior over the modes of the noised mixture (modes sqrt(abar_t) mu_c, variances
abar_t s_c^2 + 1 - abar_t). This is classifier guidance with the mixture's own posterior as the classifier,
chosen anew at every step (dynamic guidance toward the nearest mode). In eps terms (eps = -sqrt(1 - abar_t) score)
the denoiser's output becomes ``eps - scale * sqrt(1 - abar_t) * grad log p(c* | x_t)``.

What it assumes: the data are the Gaussian mixture whose means, stds and weights are given (the exact posterior
needs them; a learned classifier would stand in for it elsewhere), and the denoiser predicts eps (the paper's
objective). With the exact score and scale 1 the guided score is that of mode c* alone, so every sample ends in a
mode. The guided denoiser is a :data:`mijax.diffusion.Denoiser`, so every sampler, Hal and the detectors run with
it unchanged; it costs no network evaluation (the posterior is closed form). With ``scale = 0`` it returns the
denoiser's output bit for bit.
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import struct

from mijax.diffusion import Denoiser, Schedule
from mijax.mixtures import GaussianMixture, _component_log_probs


@struct.dataclass
class Guidance:
    """The guidance's parameters; a pytree, so it can sit in a sampler's ``params`` (and be vmapped over seeds)."""

    mixture: GaussianMixture
    schedule: Schedule
    scale: jnp.ndarray  # [], float32: 0 leaves the denoiser unchanged
    start: jnp.ndarray  # [], int32: guidance acts at reverse steps t <= start


def make_guidance(mixture: GaussianMixture, schedule: Schedule, scale: float, start: int) -> Guidance:
    """Validated :class:`Guidance`: ``scale`` >= 0 (finite), ``start`` a timestep 0 .. T - 1 (T - 1: every step)."""
    scale, start = float(scale), int(start)
    if not (scale >= 0.0 and math.isfinite(scale)):
        raise ValueError(f"the guidance scale is a finite number >= 0, got {scale}")
    if not 0 <= start < schedule.num_timesteps:
        raise ValueError(f"the guidance start is a timestep 0 .. {schedule.num_timesteps - 1}, got {start}")
    return Guidance(mixture, schedule, jnp.float32(scale), jnp.int32(start))


def mode_gradient(mixture: GaussianMixture, schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """grad_x log p(c* | x_t) at x_t [N, d] and t (a scalar or [N] int), c* the most likely mode: the score of
    mode c* minus the score of the whole noised mixture. [N, d]."""
    t = jnp.broadcast_to(jnp.asarray(t), x_t.shape[:1])
    abar = schedule.alphas_cumprod[t][:, None]  # [N, 1]
    means = jnp.sqrt(abar)[:, :, None] * mixture.means[None]  # [N, K, d]
    variances = abar * mixture.stds[None] ** 2 + 1.0 - abar  # [N, K]
    logp = jax.vmap(lambda m, v, x: _component_log_probs(m, v, jnp.log(mixture.weights), x[None])[0])(
        means, variances, x_t)  # [N, K]
    resp = jax.nn.softmax(logp, axis=1)
    per_mode = (means - x_t[:, None, :]) / variances[:, :, None]  # [N, K, d]: each mode's score
    best = jnp.take_along_axis(per_mode, jnp.argmax(logp, axis=1)[:, None, None], axis=1)[:, 0]
    return best - jnp.sum(resp[:, :, None] * per_mode, axis=1)


@dataclasses.dataclass(frozen=True)
class Guided:
    """``denoise_fn`` (eps-predicting) guided toward the most likely mode: a denoiser of ``params = (params of
    denoise_fn, Guidance)``. Equal (and hashing alike) for equal ``denoise_fn``, so jitted samplers compile once
    for it; its ``module`` is the wrapped denoiser's, so it runs with that model's execution plan."""

    denoise_fn: Denoiser

    @property
    def module(self):
        return getattr(self.denoise_fn, "module", None)

    def __call__(self, params, x_t, t):
        net, g = params
        eps = self.denoise_fn(net, x_t, t)
        steps = jnp.broadcast_to(jnp.asarray(t), x_t.shape[:1])
        sigma = g.schedule.sqrt_one_minus_alphas_cumprod[steps][:, None]
        on = (steps <= g.start)[:, None]
        push = jnp.where(on, sigma * mode_gradient(g.mixture, g.schedule, x_t, steps), 0.0)
        return eps - g.scale * push


def guided(denoise_fn: Denoiser) -> Guided:
    """:class:`Guided` ``denoise_fn``."""
    return Guided(denoise_fn)


__all__ = ["Guidance", "Guided", "guided", "make_guidance", "mode_gradient"]
