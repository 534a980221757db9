"""Early detection with abort and resample: stop a trajectory that a detector flags at t_e and start a fresh one.

The sampler runs every sample down to the end of one detector's window, ``t_e`` = ``spec.end`` reverse steps
before the last (the window: ``spec.length`` steps ending there). Samples whose score is ``>= threshold``
are redrawn from fresh noise and run to t_e again, up to ``max_redraws`` times (the last draw is kept
whatever its score); then every sample runs the remaining ``t_e`` steps. The result has the asked-for
number of samples.

Randomness stays per sample and deterministic: draw ``a`` of sample ``i`` is the sample of key
``fold_in(key_i, REDRAW_STREAM + a)`` for a >= 1 (draw 0 is the plain sampler's own ``key_i =
fold_in(key, i)``), so a sample that is never redrawn is exactly the plain sampler's, and with
``threshold = inf`` the whole output is :func:`mijax.sampling.sample`'s.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mijax import detectors as detectors_lib
from mijax.diffusion import Denoiser, Schedule
from mijax.config import AbortConfig, SamplerConfig
from mijax.execution import plan_for
from mijax.sampling import (ROW_BLOCK, Samples, _Reverse, chunk_rows, map_row_blocks, reverse_timesteps, row_blocks,
                            validate, validate_regions)

REDRAW_STREAM = 0x7E5A0000  # draw a >= 1 of sample i: fold_in(key_i, REDRAW_STREAM + a)


@partial(jax.jit, static_argnames=("denoise_fn", "config", "shape", "split", "blocks", "key_name", "oracle_fn"))
def _to_t_e(denoise_fn, params, schedule, keys, config, shape, split, blocks, key_name, oracle_fn=None,
            oracle_params=None):
    """Fresh samples of ``keys`` [C] run through reverse steps 0 .. split - 1: (carry with the sample axis first,
    score [C])."""
    oracle = None if oracle_fn is None else (oracle_fn, oracle_params)
    reverse = _Reverse(denoise_fn, params, schedule, config, shape, oracle)

    def one(k):
        carry = reverse.run(reverse.init(k), 0, split)
        return carry, reverse.scores(carry, finals=False)[key_name]

    return map_row_blocks(one, keys, blocks)


@partial(jax.jit, static_argnames=("denoise_fn", "config", "shape", "split", "blocks", "oracle_fn"))
def _from_t_e(denoise_fn, params, schedule, carry, config, shape, split, blocks, oracle_fn=None, oracle_params=None):
    """The carry (sample axis first) through the remaining reverse steps, then Hal and the scores: :class:`Samples`."""
    oracle = None if oracle_fn is None else (oracle_fn, oracle_params)
    reverse = _Reverse(denoise_fn, params, schedule, config, shape, oracle)
    return map_row_blocks(lambda c: reverse.finish(reverse.run(c, split)), carry, blocks)


def with_abort_detector(config: SamplerConfig, abort: AbortConfig) -> SamplerConfig:
    """``config`` with the abort's detector among its detectors."""
    if abort.detector in config.detectors:
        return config
    return dataclasses.replace(config, detectors=tuple(config.detectors) + (abort.detector,))


def validate_abort(abort: AbortConfig, config: SamplerConfig, num_timesteps: int, has_oracle: bool = True) -> None:
    """Raise ValueError with a one-line reason unless ``abort`` can run with ``config`` on a T-step schedule."""
    spec = abort.detector
    if spec.name not in detectors_lib.DETECTORS or spec.detector.kind == "final":
        raise ValueError(f"abort needs a windowed detector (not {spec.name!r}); e.g. hal@25:10")
    if abort.max_redraws < 0:
        raise ValueError(f"max redraws must be >= 0, got {abort.max_redraws}")
    if abort.threshold is not None and math.isnan(abort.threshold):
        raise ValueError("the abort threshold must not be NaN")
    validate(with_abort_detector(config, abort), num_timesteps, has_oracle=has_oracle)


def _bucket(count: int, rows: int) -> int:
    """Rows to run ``count`` redraws in: ROW_BLOCK times a power of two (few sizes, few compilations), at most
    ``rows`` (the first draw's)."""
    size = ROW_BLOCK
    while size < count:
        size *= 2
    return min(size, rows) if count <= rows else count


def sample_with_abort(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, n: int,
                      shape: Sequence[int], abort: AbortConfig, config: SamplerConfig = SamplerConfig(),
                      oracle=None, rows_per_block: Optional[int] | str = "auto") -> tuple[Samples, dict]:
    """Draw n samples, redrawing those that ``abort.detector`` flags at t_e (see the module docstring).

    Args:
      denoise_fn, params, schedule, key, n, shape, config, oracle: as :func:`mijax.sampling.sample` (one model,
        the default device). ``config.detectors`` gains ``abort.detector`` if it lacks it.
      abort: the detector (a windowed one), its threshold and the cap on redraws.
      rows_per_block: rows run through the steps together (``"auto"``: the model's plan, as the sampler).
    Returns:
      (:class:`~mijax.sampling.Samples` of the accepted samples, [N, ...], with the score of every detector of
      the accepted draw, and ``{"redraws": int [N] (0: the first draw was kept), "steps": int [N] reverse steps
      run for the sample, aborted draws included, "still_flagged": bool [N] (kept because the redraws ran
      out), "t_e_step": the step index the abort decision follows, "num_steps": the sampler's steps}``).
    """
    shape = tuple(int(s) for s in shape)
    if n <= 0:
        raise ValueError(f"the number of samples must be > 0, got {n}")
    if abort.threshold is None:
        raise ValueError("abort with a target rate needs its threshold certified first (certify_abort)")
    spec = abort.detector
    config = with_abort_detector(config, abort)
    validate_abort(abort, config, schedule.num_timesteps, has_oracle=oracle is not None)
    validate_regions(config, shape)
    num_steps = len(reverse_timesteps(config, schedule.num_timesteps))
    split = num_steps - spec.end  # steps 0 .. split - 1 end with the window's last step
    if rows_per_block == "auto":
        rows_per_block = plan_for(denoise_fn).rows_per_block
    oracle_fn, oracle_params = (None, None) if oracle is None else oracle

    def to_t_e(keys):
        blocks = row_blocks(keys.shape[0], rows_per_block)[0]
        return _to_t_e(denoise_fn, params, schedule, keys, config, shape, split, blocks, spec.key, oracle_fn,
                       oracle_params)

    _, rows = chunk_rows(n, None, 1, rows_per_block)
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(rows, dtype=jnp.uint32))
    carry, score = to_t_e(keys)
    score = np.asarray(score)[:n].copy()
    redraws = np.zeros(n, np.int32)
    for a in range(1, abort.max_redraws + 1):
        redo = np.nonzero((score >= abort.threshold) & (redraws == a - 1))[0]
        if redo.size == 0:
            break
        count, size = row_blocks(_bucket(redo.size, rows), rows_per_block)
        padded = count * size
        index = np.concatenate([redo, np.full(padded - redo.size, redo[0])])  # padding rows: repeats, dropped
        fresh = jax.vmap(lambda k: jax.random.fold_in(k, REDRAW_STREAM + a))(keys[index])
        new_carry, new_score = to_t_e(fresh)
        take = jnp.asarray(redo)
        carry = jax.tree.map(lambda old, new: old.at[take].set(new[:redo.size]), carry, new_carry)
        score[redo] = np.asarray(new_score)[:redo.size]
        redraws[redo] = a
    blocks = row_blocks(rows, rows_per_block)[0]
    out = _from_t_e(denoise_fn, params, schedule, carry, config, shape, split, blocks, oracle_fn, oracle_params)
    out = jax.tree.map(lambda v: v[:n], out)
    info = {"redraws": redraws, "steps": (redraws * split + num_steps).astype(np.int64),
            "still_flagged": score >= abort.threshold, "t_e_step": split - 1, "num_steps": num_steps}
    return out, info


def certify_abort(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, shape: Sequence[int],
                  abort: AbortConfig, hallucinated, config: SamplerConfig = SamplerConfig(), oracle=None) -> dict:
    """A threshold for ``abort.detector`` certified from a calibration draw: the hallucination rate among the
    samples the abort accepts below it is at most ``abort.target_rate`` with probability at least ``1 -
    abort.delta`` (:func:`mijax.filters.certify_threshold`).

    Draws ``abort.calibration`` samples of one model with the plain sampler ``config`` from the calibration
    stream of ``key`` (sample i: ``fold_in(fold_in(key, CALIBRATION), i)``, apart from the samples the abort
    draws), scores them at t_e, labels their end points with ``hallucinated`` (``x [N, *shape] -> bool [N]``,
    the data set's rule) and certifies. A draw the abort accepts (score below the threshold) is a fresh
    trajectory of the same sampler scoring below it, exchangeable with the calibration samples below it; a
    sample kept only because its redraws ran out (``still_flagged``) is not covered.

    Returns:
      certify_threshold's dict (``threshold``: -inf where nothing is certified, and every sample is redrawn).
    """
    from mijax.filters import certify_threshold
    from mijax.keys import CALIBRATION
    from mijax.sampling import sample

    if abort.target_rate is None:
        raise ValueError("certify_abort needs the abort's target_rate")
    config = with_abort_detector(config, abort)
    got = sample(denoise_fn, params, schedule, jax.random.fold_in(key, CALIBRATION), abort.calibration, shape,
                 config, oracle=oracle)
    scores = np.asarray(got.scores[abort.detector.key], np.float64)
    return certify_threshold(scores, np.asarray(hallucinated(np.asarray(got.x))), abort.target_rate, abort.delta)


__all__ = ["AbortConfig", "REDRAW_STREAM", "certify_abort", "sample_with_abort", "validate_abort",
           "with_abort_detector"]
