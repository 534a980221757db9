"""Filters: which samples of a pool to keep, from their Hal (jit-able, fixed sizes).

- ``none``: the first n of the pool (the pool is i.i.d., so this is "sample n, keep all");
- ``random``: n of the pool at random (the paper's control);
- ``variance``: the n with the lowest Hal (the paper's filter);
- ``threshold``: the samples with Hal below a threshold, as n rows (see :func:`threshold_keep_indices`).

One convention throughout mijax: a threshold ``t`` KEEPS a sample when ``score < t`` and removes it when
``score >= t`` (:mod:`mijax.detection` uses the same).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FILTERS = ("none", "random", "variance", "threshold")


def variance_filter(hal: jnp.ndarray, n: int) -> jnp.ndarray:
    """Keep the ``n`` samples with the lowest Hal (the paper's "variance" filter).

    Ties are broken by index (a stable sort), NaN Hal counts as the highest.

    Args:
      hal: [N]. n: how many to keep, 0 <= n <= N (static under jit).
    Returns:
      int32 [n] indices in increasing order, so ``x[indices]`` keeps the samples' order.
    """
    if not 0 <= n <= hal.shape[0]:
        raise ValueError(f"cannot keep {n} of {hal.shape[0]} samples")
    return jnp.sort(jnp.argsort(hal, stable=True)[:n]).astype(jnp.int32)


def random_filter(key: jax.Array, num: int, n: int) -> jnp.ndarray:
    """Keep ``n`` of ``num`` samples uniformly at random, without replacement (the "random" filter).

    Args:
      key: a PRNG key; the same key gives the same indices.
      num: the number of samples; n: how many to keep, 0 <= n <= num (both static under jit).
    Returns:
      int32 [n] distinct indices in increasing order.
    """
    if not 0 <= n <= num:
        raise ValueError(f"cannot keep {n} of {num} samples")
    return jnp.sort(jax.random.choice(key, num, (n,), replace=False)).astype(jnp.int32)


def threshold_filter(hal: jnp.ndarray, threshold) -> jnp.ndarray:
    """The samples a threshold keeps: bool [N], True where ``hal < threshold`` (>= is removed)."""
    return hal < threshold


def threshold_keep_indices(key: jax.Array, hal: jnp.ndarray, threshold, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The threshold filter with a fixed output size.

    Accepted samples (``hal < threshold``) in a random order fixed by ``key``, cycled to fill ``n`` rows
    when fewer than ``n`` are accepted (row i is accepted sample i mod A), the first ``n`` when more.
    With no sample accepted, the ``n`` lowest-Hal samples (the variance filter).

    Returns:
      (int32 indices [n], number accepted A [] int32).
    """
    accepted = threshold_filter(hal, threshold)
    count = jnp.sum(accepted).astype(jnp.int32)
    priority = jnp.where(accepted, jax.random.uniform(key, hal.shape), 2.0)  # accepted first, in random order
    order = jnp.argsort(priority, stable=True)
    rows = jnp.arange(n) % jnp.maximum(count, 1)
    cycled = order[rows]
    fallback = jnp.argsort(hal, stable=True)[:n]
    return jnp.where(count > 0, cycled, fallback).astype(jnp.int32), count


def filter_indices(name: str, key: jax.Array, hal: jnp.ndarray, n: int, threshold=jnp.inf) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Indices [n] of the pool samples (Hal [P]) that filter ``name`` keeps, and how many it accepted.

    ``none`` keeps the first n, ``random`` n at random (key), ``variance`` the n lowest Hal,
    ``threshold`` see :func:`threshold_keep_indices`. The count is n except for ``threshold``.
    """
    p = hal.shape[0]
    if not 0 < n <= p:
        raise ValueError(f"cannot keep {n} of {p} samples")
    full = jnp.asarray(n, jnp.int32)
    if name == "none":
        return jnp.arange(n, dtype=jnp.int32), full
    if name == "random":
        return random_filter(key, p, n), full
    if name == "variance":
        return variance_filter(hal, n), full
    if name == "threshold":
        return threshold_keep_indices(key, hal, threshold, n)
    raise ValueError(f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")


def calibrate_threshold(hal: np.ndarray, keep: int) -> np.ndarray:
    """Per-row thresholds: ``hal[s] < t[s]`` keeps ``keep`` samples of row s (the midpoint between the
    keep-th and the next smallest Hal), for hal [S, P]. Returns float64 [S]."""
    hal = np.sort(np.asarray(hal, dtype=np.float64), axis=1)
    if not 0 < keep <= hal.shape[1]:
        raise ValueError(f"cannot keep {keep} of {hal.shape[1]} samples")
    if keep == hal.shape[1]:
        return np.full(hal.shape[0], np.inf)
    return 0.5 * (hal[:, keep - 1] + hal[:, keep])
