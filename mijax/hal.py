"""Hal, the paper's hallucination score: the variance of the predicted clean sample x0_hat over a window of
reverse steps, per coordinate, reduced to one number per sample.

``HAL_REDUCTIONS`` maps a reduction's name to ``fn(v, config) -> [N]`` for per-coordinate variances
``v [N, *shape]``; ``config`` is the sampler's configuration (``hal_top_k``, ``hal_regions``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _region_max(v: jnp.ndarray, config) -> jnp.ndarray:
    """The largest of the mean variances inside each of ``config.hal_regions`` (v: [N, H, W, C])."""
    means = [jnp.mean(v[:, r0:r1, c0:c1].reshape(v.shape[0], -1), axis=1) for r0, r1, c0, c1 in config.hal_regions]
    return jnp.max(jnp.stack(means, axis=1), axis=1)


def _flat(v: jnp.ndarray) -> jnp.ndarray:
    return v.reshape(v.shape[0], -1)


# How Hal reduces the per-coordinate variances v [N, *shape] of a sample to one number [N].
HAL_REDUCTIONS = {
    "mean": lambda v, c: jnp.mean(_flat(v), axis=1),  # the published rule
    "max": lambda v, c: jnp.max(_flat(v), axis=1),  # the most unsettled coordinate (a pixel, for images)
    # the mean of the hal_top_k most unsettled coordinates
    "top_k": lambda v, c: jnp.mean(jax.lax.top_k(_flat(v), min(c.hal_top_k, _flat(v).shape[1]))[0], axis=1),
    "region_max": _region_max,  # per region (e.g. a SHAPES strip) the mean, then the largest region's
}
