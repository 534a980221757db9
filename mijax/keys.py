"""Where every random number comes from: a model's key and the fold_in streams split from it.

Model ``s`` of a run has key ``jax.random.key(seed + s)`` (:func:`seed_keys`); a recursive study's later
generations fold the generation and the filter into it. Each use of randomness takes its own stream of a
model's key, ``fold_in(key, STREAM)``, so the numbers of one use do not depend on any other (a resumed run
draws what an uninterrupted one draws; a chunk of samples what the whole batch draws):

====================  ==  ===============================================================
``INIT``               0  the network's initial parameters
``SHUFFLE``            1  the permutation of each epoch (``TrainConfig.shuffle``), folded with the epoch
``STEP``               2  optimiser step j's t and noise, folded with j
``TRAINING_SET``       3  the real training set (a run, and generation 0 of a recursive study)
``SAMPLE``             5  a recursive study's pools
``FILTER``             6  a recursive study's random and threshold filters, folded with the filter
``REFERENCE``          7  reference draws of the true law (distances to it)
``DROPOUT``            8  optimiser step j's dropout masks (models with dropout), folded with j
``CALIBRATION``        9  calibration draws (the certified filter, a certified abort)
====================  ==  ===============================================================

Sampling keys: sample ``i`` of a call uses ``fold_in(key, i)`` (its start noise ``fold_in(key_i, T)``, the
noise of step t ``fold_in(key_i, t)``; see :mod:`mijax.sampling`), and model ``s`` of a run samples with
``fold_in(key(seed), seed + s)`` (:func:`sample_keys`).
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

INIT, SHUFFLE, STEP, TRAINING_SET, SAMPLE, FILTER, REFERENCE, DROPOUT, CALIBRATION = 0, 1, 2, 3, 5, 6, 7, 8, 9
SEED_LIMIT = 2**32  # seeds are uint32: jax.random.key(seed) reads them modulo 2^32


def stream(key: jax.Array, name: int) -> jax.Array:
    """The stream ``name`` (one of the constants above) of ``key`` (or of each key of a stack [S])."""
    if key.ndim == 0:
        return jax.random.fold_in(key, name)
    return jax.vmap(lambda k: jax.random.fold_in(k, name))(key)


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """Typed keys [S], ``jax.random.key(seed)`` for each seed."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, dtype=jnp.uint32))


def sample_keys(seed: int, model_seeds: Sequence[int]) -> jax.Array:
    """Sampling keys [S]: the model trained with seed s samples with ``fold_in(key(seed), s)``."""
    base = jax.random.key(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(model_seeds, dtype=jnp.uint32))
