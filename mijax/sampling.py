"""Reverse samplers as one ``lax.scan`` that carries the Hal statistic (trajectory variance).

Hal of a sample is the population variance (ddof 0) of x0_hat over a window of K reverse steps, per
coordinate, then reduced over the coordinates (``hal_reduction``: the mean, as published, or the max; see
``HAL_REDUCTIONS``). The scan carries a running (Welford) mean and sum of squared deviations of x0_hat, so
memory does not grow with T; no N x T trajectory is ever stored. Extra windows (``hal_windows``) are
carried the same way, in the same pass, and come back as ``Samples.hal_windows`` [N, W]. Everything the scan
carries besides the samples (Hal, the detectors, the recorded trajectories) has one interface, init /
update / finish over a state with the sample axis first; Hal is the ``hal`` detector over each window,
so it has one implementation.

Randomness is per sample: sample ``i`` uses ``fold_in(key, i)``, its starting noise
``fold_in(key_i, T)`` and the noise of step t ``fold_in(key_i, t)``. A sample therefore does not depend
on the chunk size, on the other samples of its batch, or on how the batch is laid out.
"""
from __future__ import annotations

from functools import partial
from typing import Iterator, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mijax import detectors as detectors_lib
from mijax import execution, samplers
from mijax.diffusion import Denoiser, Schedule, model_predictions, posterior_mean_variance, predict_eps_from_x0
from mijax.config import SAMPLERS, VARIANCES, SamplerConfig
from mijax.execution import plan_for
from mijax.hal import HAL_REDUCTIONS

ROW_BLOCK = 128  # chunks are padded to a multiple of this many samples (see sample_chunks)
# (on some CPUs the paper's MLP rounds its rows differently at 64 rows or fewer than at 96 to 2,048, so
# 64-row blocks made 4 devices disagree with 1)


@struct.dataclass
class Samples:
    """What a sampler returns."""

    x: jnp.ndarray  # [N, *shape] final samples (x0_hat of the last step)
    hal: jnp.ndarray  # [N] trajectory variance of x0_hat over the Hal window
    hal_windows: Optional[jnp.ndarray] = None  # [N, W] the same over each of SamplerConfig.hal_windows
    hal_table: Optional[jnp.ndarray] = None  # [N, W + 1, R] every window by every SamplerConfig.hal_table reduction
    trajectory: Optional[jnp.ndarray] = None  # [N, R, *shape] recorded x0_hat, if asked for
    trajectory_xt: Optional[jnp.ndarray] = None  # [N, R, *shape] recorded x_t (the step's input), if asked for
    scores: Optional[dict] = None  # {DetectorSpec.key: [N]} one score per SamplerConfig.detectors
    trajectory_t: Optional[np.ndarray] = struct.field(pytree_node=False, default=None)  # [R] their t


def reverse_timesteps(config: SamplerConfig, num_timesteps: int) -> np.ndarray:
    """The timesteps the sampler visits, in reverse order (the last is 0; :func:`mijax.samplers.timesteps`).
    int32 [S]."""
    return _timesteps(config, num_timesteps)[0]


def _timesteps(config: SamplerConfig, num_timesteps: int) -> tuple[np.ndarray, np.ndarray]:
    return samplers.timesteps(config.sampler, num_timesteps, config.ddim_steps, config.skip, config.stochastic_steps,
                              config.stochastic_at, config.stochastic_from)


def validate(config: SamplerConfig, num_timesteps: int, has_oracle: bool = True) -> None:
    """Raise ValueError with a one-line reason if ``config`` cannot run on a T-step schedule (``has_oracle``:
    the sampler is given the data's exact denoiser, which the ``oracle`` detector needs)."""
    if config.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {config.sampler!r}; choose from {', '.join(SAMPLERS)}")
    if config.variance not in VARIANCES:
        raise ValueError(f"unknown variance {config.variance!r}; choose from {', '.join(VARIANCES)}")
    if config.sampler != "ddpm" and config.ddim_steps is not None and not 1 <= config.ddim_steps <= num_timesteps:
        raise ValueError(f"{config.sampler} steps must be in 1..{num_timesteps}, got {config.ddim_steps}")
    if config.stochastic_steps and config.sampler != "ddim":
        raise ValueError(f"stochastic steps replace part of a DDIM trajectory; the {config.sampler} sampler has none")
    if config.stochastic_from is not None and (config.stochastic_at != "window" or not config.stochastic_steps):
        raise ValueError("stochastic_from places a window of stochastic steps (stochastic_at window)")
    if config.skip == "quad" and config.sampler != "ddpm" and config.ddim_steps is None:
        raise ValueError("quadratically spaced steps need their number (ddim_steps)")
    num_steps = len(reverse_timesteps(config, num_timesteps))
    if num_steps < 2:
        raise ValueError(f"Hal needs at least 2 reverse steps; this sampler has {num_steps}")
    for end, length in config.windows():
        if not 2 <= length <= num_steps:
            raise ValueError(f"Hal window must be in 2..{num_steps} (the sampler's steps), got {length}")
        if end < 0 or end + length > num_steps:
            raise ValueError(f"Hal window of {length} steps ending {end} steps before the last does not fit in "
                             f"{num_steps} steps")
    for reduction in (config.hal_reduction,) + tuple(config.hal_table):
        if reduction not in HAL_REDUCTIONS:
            raise ValueError(f"unknown Hal reduction {reduction!r}; choose from {', '.join(HAL_REDUCTIONS)}")
    if "region_max" in (config.hal_reduction,) + tuple(config.hal_table) and not config.hal_regions:
        raise ValueError("the region_max Hal reduction needs regions (hal_regions)")
    if config.hal_top_k < 1:
        raise ValueError(f"hal top k must be >= 1, got {config.hal_top_k}")
    if config.trajectory_stride < 0:
        raise ValueError("trajectory stride must be >= 0")
    if config.jac_probes < 1:
        raise ValueError(f"jac probes must be >= 1, got {config.jac_probes}")
    detectors_lib.validate(config.detectors, num_steps, num_timesteps, has_oracle)
    if config.eta < 0:
        raise ValueError("eta must be >= 0")


def validate_regions(config: SamplerConfig, shape: tuple[int, ...]) -> None:
    """Raise ValueError unless every Hal region is a non-empty box inside images of ``shape`` [H, W, C]."""
    if not config.hal_regions:
        return
    if len(shape) != 3:
        raise ValueError(f"Hal regions are boxes of images [H, W, C]; these samples are {tuple(shape)}")
    for box in config.hal_regions:
        r0, r1, c0, c1 = (int(b) for b in box)
        if not (0 <= r0 < r1 <= shape[0] and 0 <= c0 < c1 <= shape[1]):
            raise ValueError(f"Hal region {tuple(box)} is not a non-empty box of a {shape[0]} x {shape[1]} image")


def _step_table(config: SamplerConfig, num_timesteps: int):
    """Per-step constants of the scan: t, the next visited t (-1 after the last), the one visited before (-1 at
    the first), the kind of step (:data:`mijax.samplers.ANCESTRAL` or ``DETERMINISTIC``), the trajectory slot (-1:
    not recorded)."""
    ts, kinds = _timesteps(config, num_timesteps)
    n = len(ts)
    from_end = n - 1 - np.arange(n)  # 0 at the last step
    slots = np.full(n, -1, dtype=np.int32)
    if config.trajectory_stride > 0:
        last = n if config.trajectory_last is None else min(config.trajectory_last, n)
        record = (from_end < last) & (from_end % config.trajectory_stride == 0)
        slots[record] = np.arange(int(record.sum()), dtype=np.int32)
    t_prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)
    t_before = np.concatenate([[-1], ts[:-1]]).astype(np.int32)
    return ts, t_prev, t_before, kinds, slots


def window_table(windows: Sequence[tuple[int, int]], num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Per reverse step and window ``(end, length)``: whether the step is in it (bool [steps, W]) and its
    Welford weight 1 / (steps of the window so far) (float32 [steps, W], 0 outside)."""
    from_end = num_steps - 1 - np.arange(num_steps)  # 0 at the last step
    in_window = np.stack([(from_end >= end) & (from_end < end + length) for end, length in windows], axis=1)
    count = np.cumsum(in_window, axis=0)
    return in_window, np.where(in_window, 1.0 / np.maximum(count, 1), 0.0).astype(np.float32)


def _welford(mean, m2, value, inside, weight):
    """One Welford step of a running mean and sum of squared deviations where ``inside`` (else unchanged)."""
    delta = jnp.where(inside, value - mean, 0.0)
    mean = mean + weight * delta
    return mean, m2 + jnp.where(inside, delta * (value - mean), 0.0)


def _per_sample_normal(keys: jax.Array, step: jnp.ndarray, shape: tuple) -> jnp.ndarray:
    """Standard normal [C, *shape]: row i from fold_in(keys[i], step)."""
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape, jnp.float32))(keys)


def row_blocks(rows: int, rows_per_block: Optional[int]) -> tuple[int, int]:
    """(blocks, rows in each) for ``rows`` rows of one device: the fewest equal blocks of at most
    ``rows_per_block`` rows (rounded down to whole ``ROW_BLOCK``s) that cover them, each a multiple of
    ``ROW_BLOCK`` (None: one block)."""
    if rows_per_block is not None and rows_per_block <= 0:
        raise ValueError(f"rows per block must be > 0, got {rows_per_block}")
    if rows_per_block is not None:
        rows_per_block = max(ROW_BLOCK, rows_per_block // ROW_BLOCK * ROW_BLOCK)
    count = 1 if rows_per_block is None else max(1, -(-rows // rows_per_block))
    size = -(-rows // count)
    return count, -(-size // ROW_BLOCK) * ROW_BLOCK


def _sample_chunk(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, start: jnp.ndarray,
                  config: SamplerConfig, shape: tuple, chunk_size: int, blocks: int = 1, oracle=None) -> Samples:
    """Samples ``start .. start + chunk_size - 1`` of the stream defined by ``key``, run through the reverse
    steps in ``blocks`` equal blocks of rows one after the other (a ``lax.map``; the same numbers)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(start + jnp.arange(chunk_size, dtype=jnp.uint32))
    run = partial(_reverse, denoise_fn, params, schedule, config=config, shape=shape, oracle=oracle)
    return map_row_blocks(run, keys, blocks)


def map_row_blocks(fn, tree, blocks: int):
    """``fn`` over ``blocks`` equal blocks of rows (the leading axis of every leaf of ``tree``), one after the
    other (a ``lax.map``; the same numbers as one call per block), rows put back in order."""
    if blocks == 1:
        return fn(tree)
    rows = jax.tree.leaves(tree)[0].shape[0]
    if rows % blocks:
        raise ValueError(f"{rows} rows do not split into {blocks} equal blocks")
    split = jax.tree.map(lambda a: a.reshape((blocks, rows // blocks) + a.shape[1:]), tree)
    out = jax.lax.map(fn, split)
    return jax.tree.map(lambda a: a.reshape((rows,) + a.shape[2:]), out)


def _eps_fn(denoise_fn: Denoiser, params, schedule: Schedule, t, objective: str, clip: bool = False):
    """x_t [C, *shape] -> the predicted noise at step t (the network's output for the eps objective; with
    ``clip``, the noise that the x0_hat clipped to [-1, 1] implies)."""
    def eps(x):
        output = denoise_fn(params, x, t)
        if objective == "eps" and not clip:
            return output
        x0 = model_predictions(schedule, output, x, t, objective)[0]
        return predict_eps_from_x0(schedule, x, t, jnp.clip(x0, -1.0, 1.0) if clip else x0)
    return eps


class _Statistics:
    """What the scan computes of each sample's trajectory, in one interface: :meth:`init` (one state per
    statistic, the sample axis first), :meth:`update` (once per reverse step) and :meth:`finish`.

    The statistics are detectors (:mod:`mijax.detectors`), each over its window. Hal is one of them: each Hal
    window of ``config.windows()`` is the ``hal`` detector there (the Welford variance of x0_hat, reduced by
    ``config.hal_reduction``), first in the list; the requested detectors follow, and one that is a Hal window
    shares its state. So Hal has one implementation, whichever way it is asked for."""

    def __init__(self, config: SamplerConfig, num_steps: int):
        self.hal = [detectors_lib.DetectorSpec("hal", end, length) for end, length in config.windows()]
        requested = [s for s in config.detectors if s.detector.kind != "final"]
        self.specs = list(dict.fromkeys(self.hal + requested))  # distinct, Hal's windows first
        self.final = [s for s in config.detectors if s.detector.kind == "final"]
        in_window, inv_count = window_table([(s.end, s.length) for s in self.specs], num_steps)
        self.xs = (jnp.asarray(in_window), jnp.asarray(inv_count))
        self.expensive = [j for j, s in enumerate(self.specs) if s.detector.expensive]

    def init(self, x: jnp.ndarray):
        zeros, scalar = jnp.zeros_like(x), jnp.zeros(x.shape[:1], jnp.float32)
        kinds = {"variance": (zeros, zeros), "mean": scalar, "path": (scalar, zeros)}
        return [kinds[s.detector.kind] for s in self.specs]

    def update(self, state, view_of, xs):
        """One step: ``view_of()`` makes a fresh :class:`~mijax.detectors.StepView` of the step."""
        inside_all, weights = xs
        view = view_of()
        values = {j: s.detector.quantity(view) for j, s in enumerate(self.specs) if not s.detector.expensive}
        if self.expensive:  # the Jacobian and the oracle only on the steps inside some window that reads them
            def compute():
                fresh = view_of()
                return [self.specs[j].detector.quantity(fresh) for j in self.expensive]
            zeros = [jnp.zeros(view.x_t.shape[:1], jnp.float32) for _ in self.expensive]
            active = jnp.any(inside_all[jnp.asarray(self.expensive)])
            values.update(zip(self.expensive, jax.lax.cond(active, compute, lambda: zeros)))
        new = []
        for j, s in enumerate(self.specs):
            inside, value, kind = inside_all[j], values[j], s.detector.kind
            if kind == "variance":
                new.append(_welford(*state[j], value, inside, weights[j]))
            elif kind == "mean":
                new.append(state[j] + jnp.where(inside, value, 0.0))
            else:  # path: from the window's second step on, add the distance to the previous value
                total, previous = state[j]
                step = jnp.sqrt(jnp.sum(jnp.square((value - previous).reshape(value.shape[0], -1)), axis=1))
                total = total + jnp.where(inside & (weights[j] < 1.0), step, 0.0)
                new.append((total, jnp.where(inside, value, previous)))
        return new

    def hal_variances(self, state) -> list:
        """Per Hal window the per-coordinate variance of x0_hat over it, [C, *shape]."""
        return [state[self.specs.index(s)][1] / s.length for s in self.hal]

    def finish(self, state, config: SamplerConfig, final_view_of) -> dict:
        """The requested detectors' scores {key: [C]} (``final_view_of``: also the ``final`` ones)."""
        scores = {}
        for s, carry in zip(self.specs, state):
            if s not in config.detectors:
                continue
            kind = s.detector.kind
            if kind == "variance":
                value = HAL_REDUCTIONS[config.hal_reduction](carry[1] / s.length, config)
            elif kind == "mean":
                value = carry / s.length
            else:
                value = carry[0]
            scores[s.key] = s.detector.sign * value
        for s in self.final if final_view_of is not None else ():
            scores[s.key] = s.detector.sign * s.detector.quantity(final_view_of(s.end))
        return scores


class _Trajectories:
    """The recorded x0_hat (and x_t) of the steps ``_step_table`` gives a slot, in the scan's interface:
    :meth:`init`, :meth:`update`, :meth:`finish` (states [C, records, *shape], or None when nothing is recorded)."""

    def __init__(self, config: SamplerConfig, num_records: int, shape: tuple):
        self.config, self.num_records, self.shape = config, num_records, shape

    def init(self, x: jnp.ndarray):
        if not self.num_records:
            return None, None
        trajectory = jnp.zeros((x.shape[0], self.num_records) + self.shape, jnp.float32)
        return trajectory, trajectory if self.config.trajectory_xt else None

    def update(self, state, x0, x_t, slot):
        def record(tr, value):
            return jax.lax.cond(slot >= 0,
                                lambda tr: jax.lax.dynamic_update_index_in_dim(tr, value, jnp.maximum(slot, 0), axis=1),
                                lambda tr: tr, tr)
        trajectory, trajectory_xt = state
        return (None if trajectory is None else record(trajectory, x0),
                None if trajectory_xt is None else record(trajectory_xt, x_t))

    def finish(self, state) -> dict:
        return dict(zip(("trajectory", "trajectory_xt"), state))


class _Reverse:
    """The reverse process with Hal and the detectors, as pieces: :meth:`init` (the starting noise of the samples
    of ``keys``), :meth:`run` (a range of the reverse steps, a ``lax.scan``) and :meth:`finish` (Hal and the
    scores). The carry holds each sample's key, so a range can run for a set of fresh samples (abort and
    resample). ``oracle``: the data's exact denoiser ``(fn, params)`` for the ``oracle`` detector."""

    def __init__(self, denoise_fn: Denoiser, params, schedule: Schedule, config: SamplerConfig, shape: tuple,
                 oracle=None):
        self.denoise_fn, self.params, self.schedule, self.config, self.shape = denoise_fn, params, schedule, config, shape
        T = schedule.num_timesteps
        ts, t_prev, t_before, kinds, slots = _step_table(config, T)
        self.num_steps, self.num_records = len(ts), int((slots >= 0).sum())
        self.statistics = _Statistics(config, len(ts))
        self.trajectories = _Trajectories(config, self.num_records, shape)
        self.mixed = bool(np.any(kinds == samplers.ANCESTRAL)) and config.sampler != "ddpm"
        self.xs = ((jnp.asarray(ts), jnp.asarray(t_prev), jnp.asarray(t_before), jnp.asarray(kinds),
                    jnp.asarray(slots)), self.statistics.xs)
        self.oracle_at = (lambda x_t, t: oracle[0](oracle[1], x_t, t)) if oracle is not None else None

    def view_at(self, keys, x, t, **known):
        return detectors_lib.StepView(_eps_fn(self.denoise_fn, self.params, self.schedule, t, self.config.objective),
                                      x, t, keys=keys, probes=self.config.jac_probes, oracle_fn=self.oracle_at, **known)

    def init(self, keys: jax.Array):
        """The carry before the first reverse step for the samples of ``keys`` [C]."""
        x = _per_sample_normal(keys, self.schedule.num_timesteps, self.shape)
        solver = jnp.zeros_like(x) if samplers.carries_x0(self.config.sampler) else None  # the previous x0_hat
        # every leaf: the sample axis first
        return (keys, x, self.statistics.init(x), self.trajectories.init(x), solver)

    def run(self, carry, start: int = 0, stop: Optional[int] = None):
        """Reverse steps ``start .. stop - 1`` (indices into :func:`reverse_timesteps`) from ``carry``."""
        config, schedule, shape, params, denoise_fn = self.config, self.schedule, self.shape, self.params, self.denoise_fn
        statistics, trajectories = self.statistics, self.trajectories
        rule, ddpm = samplers.SAMPLERS.entry(config.sampler).factory, samplers.SAMPLERS.entry("ddpm").factory
        def eps_at(x, t):  # the network's eps_hat anywhere (Heun's second slope)
            return _eps_fn(denoise_fn, params, schedule, t, config.objective, config.clip_x0)(x)

        log_alphas = jnp.log1p(-schedule.betas)  # [T], for abar_t / abar_t' (mijax.samplers.Step.keep)
        # a deterministic sampler draws no step noise (its steps would multiply it by zero)
        noisy = config.sampler == "ddpm" or (config.sampler == "ddim" and (config.eta > 0 or self.mixed))

        def step(carry, xs):
            keys, x, stats, recorded, solver = carry
            (t, tp, tb, kind, slot), stat_xs = xs
            output = denoise_fn(params, x, t)
            x0, mean = model_predictions(schedule, output, x, t, config.objective)
            eps_hat = output if config.objective == "eps" else predict_eps_from_x0(schedule, x, t, x0)
            if config.clip_x0:  # the step follows the clipped x0_hat (posterior mean; the noise it implies)
                x0 = jnp.clip(x0, -1.0, 1.0)
                mean = posterior_mean_variance(schedule, x0, x, t)[0]
            eps_is_output = config.objective == "eps" and not config.clip_x0
            eps = output if eps_is_output else predict_eps_from_x0(schedule, x, t, x0)
            noise = _per_sample_normal(keys, t, shape) if noisy else jnp.zeros_like(x)
            view = samplers.Step(schedule, log_alphas, x, x0, eps, mean, t, tp, tb, noise, eps_at, config.eta,
                                 config.variance, config.objective == "eps")
            x_next, solver = rule(view, solver)
            if self.mixed:  # the stochastic steps of a DDIM trajectory
                x_next = jnp.where(kind == samplers.ANCESTRAL, ddpm(view, solver)[0], x_next)
            # The last step returns x0_hat itself (x_{-1} := x0_hat): the t = 0 ancestral step has no noise
            # and c1 = 1, c2 = 0 there, so this equals the mean up to rounding.
            x_next = jnp.where(tp >= 0, x_next, x0)
            # Hal and the detectors see x0_hat (clipped when the sampler clips) and the network's own eps_hat.
            stats = statistics.update(stats, lambda: self.view_at(keys, x, t, x0=x0, eps=eps_hat), stat_xs)
            recorded = trajectories.update(recorded, x0, x, slot)
            return (keys, x_next, stats, recorded, solver), None

        xs = jax.tree.map(lambda a: a[start:stop], self.xs)
        return jax.lax.scan(step, carry, xs)[0]

    def scores(self, carry, finals: bool = True) -> dict:
        """The detectors' scores {key: [C]} from ``carry`` (complete for the windows the steps run so far cover;
        ``finals``: also the ``final`` detectors, at the carry's x)."""
        keys, x = carry[0], carry[1]
        abar = self.schedule.alphas_cumprod

        def final_view(t0):  # FLIPD's point: psi x at t0, psi = sqrt(abar_t0)
            t0 = jnp.asarray(t0, jnp.int32)
            return self.view_at(keys, jnp.sqrt(abar[t0]) * x, t0, abar=abar[t0])

        return self.statistics.finish(carry[2], self.config, final_view if finals else None)

    def finish(self, carry) -> Samples:
        """Hal over every window, the detectors' scores and the recordings, after the last step."""
        config = self.config
        _, x, stats, recorded, _ = carry
        variances = self.statistics.hal_variances(stats)  # [C, *shape] per Hal window
        hals = [HAL_REDUCTIONS[config.hal_reduction](v, config) for v in variances]
        extra = jnp.stack(hals[1:], axis=1) if len(hals) > 1 else None
        table = (jnp.stack([jnp.stack([HAL_REDUCTIONS[r](v, config) for r in config.hal_table], axis=1)
                            for v in variances], axis=1) if config.hal_table else None)
        scores = self.scores(carry) if config.detectors else None
        return Samples(x=x, hal=hals[0], hal_windows=extra, hal_table=table, scores=scores,
                       **self.trajectories.finish(recorded))


def _reverse(denoise_fn: Denoiser, params, schedule: Schedule, keys: jax.Array, config: SamplerConfig,
             shape: tuple, oracle=None) -> Samples:
    """The reverse process with Hal for the samples of ``keys`` [C] (one per sample); ``oracle``: the data's
    exact denoiser ``(fn, params)`` for the ``oracle`` detector."""
    reverse = _Reverse(denoise_fn, params, schedule, config, shape, oracle)
    return reverse.finish(reverse.run(reverse.init(keys)))


@partial(jax.jit, static_argnames=("denoise_fn", "config", "shape", "chunk_size", "seed_axis", "seed_batch",
                                   "mesh", "rows_per_block", "oracle_fn"))
def sample_chunk(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, start: jnp.ndarray,
                 config: SamplerConfig, shape: tuple, chunk_size: int, seed_axis: bool = False,
                 seed_batch: Optional[int] = None, mesh: Optional[Mesh] = None,
                 rows_per_block: Optional[int] = None, oracle_fn: Optional[Denoiser] = None,
                 oracle_params=None) -> Samples:
    """One jitted chunk of samples ``start .. start + chunk_size - 1``.

    Each device runs its rows in the blocks :func:`row_blocks` makes of them for ``rows_per_block``, one
    after the other (None: all at once); ``chunk_rows`` pads a chunk so that they come out equal.

    With ``seed_axis`` the params and key carry a leading seed axis [S] and every output gains one; the
    seeds run ``seed_batch`` at a time (None: :func:`mijax.execution.default_seed_batch`).
    With a ``mesh`` (axis ``"rows"``, D devices) each device draws ``chunk_size / D`` consecutive samples
    and the outputs are split over the devices along the sample axis; ``chunk_size / D`` should be a
    multiple of ``ROW_BLOCK`` for results that do not depend on D.
    ``oracle_fn(oracle_params, x_t, t)``: the data's exact denoiser, for the ``oracle`` detector (shared by
    every seed).
    """
    devices = execution.mesh_size(mesh)
    if chunk_size % devices:
        raise ValueError(f"chunk size {chunk_size} does not split over {devices} devices")
    rows = chunk_size // devices
    # On rows padded by chunk_rows this gives back the block count it padded for.
    blocks = row_blocks(rows, rows_per_block)[0]
    def fn(params, schedule, key, start, oracle_params):
        oracle = None if oracle_fn is None else (oracle_fn, oracle_params)
        return _sample_chunk(denoise_fn, params, schedule, key, start, config=config, shape=shape, chunk_size=rows,
                             blocks=blocks, oracle=oracle)

    def local(params, schedule, key, start, oracle_params):
        if mesh is not None:  # this device's block of the chunk
            start = start + jax.lax.axis_index(execution.ROWS).astype(start.dtype) * rows
        if not seed_axis:
            return fn(params, schedule, key, start, oracle_params)
        num_seeds = jax.tree.leaves(key)[0].shape[0]
        batch = execution.default_seed_batch(num_seeds) if seed_batch is None else seed_batch
        return execution.map_seeds(lambda p, k: fn(p, schedule, k, start, oracle_params), (params, key), batch)

    if mesh is None:
        return local(params, schedule, key, start, oracle_params)
    split = P(None, execution.ROWS) if seed_axis else P(execution.ROWS)
    return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), P(), P(), P()), out_specs=split,
                         check_vma=False)(params, schedule, key, start, oracle_params)


def chunk_rows(n: int, chunk_size: Optional[int], devices: int = 1,
               rows_per_block: Optional[int] = None) -> tuple[int, int]:
    """(samples per chunk, compiled rows per chunk) for n samples over ``devices`` devices.

    The compiled rows are a multiple of ``devices * ROW_BLOCK``: CPU matmul kernels treat a ragged tail of
    rows with other code (other rounding), so only full blocks on every device make every sample
    bit-identical whatever the chunking and the device count. (This holds for the paper's width-128
    network; much narrower layers, e.g. width 16 with under 256 rows per device, fall below XLA:CPU's
    size threshold for its matmul library and their rows then depend on the row count; and from 4,096 rows
    up XLA:CPU's matmuls round differently again, which the CPU default of blocks of at most 3,968 rows
    avoids.) With ``rows_per_block`` each device's rows are ``blocks x rows`` of :func:`row_blocks`.
    """
    chunk = n if chunk_size is None else min(chunk_size, n)
    count, size = row_blocks(-(-chunk // devices), rows_per_block)
    return chunk, devices * count * size


def sample_chunks(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, n: int,
                  shape: Sequence[int], config: SamplerConfig = SamplerConfig(),
                  chunk_size: Optional[int] = None, seed_axis: bool = False, seed_batch: Optional[int] = None,
                  mesh: Optional[Mesh] | str = "auto", start: int = 0, stop: Optional[int] = None,
                  rows_per_block: Optional[int] | str = "auto",
                  oracle: Optional[tuple[Denoiser, object]] = None) -> Iterator[tuple[int, Samples]]:
    """Yield ``(start, Samples)`` chunk by chunk (device arrays of ``min(chunk, n - start)`` samples).

    Every chunk has the same compiled shape (the last is padded and trimmed), so one compilation
    serves all chunks and all later calls with the same sizes.

    Args:
      mesh: devices that share each chunk: ``"auto"`` (every device of every process, see
        :func:`mijax.execution.rows_mesh`), a mesh with axis ``"rows"``, or None (the default device).
        In a multi-process job the yielded arrays span the processes (see
        :func:`mijax.execution.to_host`).
      start, stop: draw only samples ``start .. stop - 1`` of the n (default all).
      seed_batch: see :func:`sample_chunk`.
      rows_per_block: a device runs its rows of a chunk in blocks of at most this many, one after the other
        (``"auto"``: the ``rows_per_block`` of the model's :class:`~mijax.execution.Plan`, 3,968 on CPU, 128 for
        the UNet, None on accelerators; None: all at once). On CPU blocks under 4,096 rows keep every sample
        independent of the chunking (see :data:`mijax.execution.CPU_ROWS_PER_BLOCK`).
      oracle: ``(exact_fn, its params)``, the data's exact denoiser (e.g. ``(mixtures.exact_denoiser,
        (mixture, schedule))``), which the ``oracle`` detector compares the model with.
    """
    shape = tuple(int(s) for s in shape)
    if n <= 0:
        raise ValueError(f"the number of samples must be > 0, got {n}")
    if chunk_size is not None and chunk_size <= 0:
        raise ValueError(f"chunk size must be > 0, got {chunk_size}")
    stop = n if stop is None else min(stop, n)
    validate(config, schedule.num_timesteps, has_oracle=oracle is not None)
    validate_regions(config, shape)
    if isinstance(mesh, str):
        mesh = execution.rows_mesh(execution.auto_devices(denoise_fn))
    if rows_per_block == "auto":
        rows_per_block = plan_for(denoise_fn).rows_per_block
    devices = execution.mesh_size(mesh)
    chunk, compiled = chunk_rows(stop - start, chunk_size, devices, rows_per_block)
    oracle_fn, oracle_params = (None, None) if oracle is None else oracle
    params, schedule, key, oracle_params = execution.replicate((params, schedule, key, oracle_params), mesh)
    for first in range(start, stop, chunk):
        out = sample_chunk(denoise_fn, params, schedule, key, np.uint32(first), config, shape, compiled,
                           seed_axis, seed_batch, mesh, rows_per_block, oracle_fn, oracle_params)
        keep = min(chunk, stop - first)
        if keep < compiled:
            out = jax.tree.map(lambda a: _trim(a, keep, seed_axis), out)
        yield first, out


def _trim(a: jnp.ndarray, keep: int, seed_axis: bool) -> jnp.ndarray:
    return a[:, :keep] if seed_axis else a[:keep]


def sample(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, n: int, shape: Sequence[int],
           config: SamplerConfig = SamplerConfig(), chunk_size: Optional[int] = None,
           seed_axis: bool = False, seed_batch: Optional[int] = None, mesh: Optional[Mesh] | str = "auto",
           rows_per_block: Optional[int] | str = "auto", oracle: Optional[tuple[Denoiser, object]] = None) -> Samples:
    """Draw n samples with their Hal score.

    Args:
      denoise_fn: ``(params, x_t [C, *shape], t []) -> output [C, *shape]``; hashable (a jit static).
      params: the denoiser's parameters ([S, ...] leaves with ``seed_axis``).
      schedule: the noise schedule the denoiser was trained with.
      key: a PRNG key ([S] keys with ``seed_axis``).
      n: number of samples.
      shape: the shape of one sample, e.g. ``(1,)`` for 1D data.
      config: sampler settings (DDPM with fixed-large variance and Hal over t = 9..0 by default).
      chunk_size: samples per compiled chunk (None: all at once). Results do not depend on it.
      seed_axis: a leading seed axis on ``params`` and ``key`` (one program for all seeds).
      seed_batch: seeds computed together inside a device (None: 1 on CPU, all on accelerators).
      mesh: the devices that share the samples (``"auto"``: all of them; see :func:`sample_chunks`).
      rows_per_block: rows run through the steps together on a device (see :func:`sample_chunks`).
      oracle: the data's exact denoiser for the ``oracle`` detector (see :func:`sample_chunks`).
    Returns:
      :class:`Samples` with x [N, *shape] and hal [N] (or [S, N, *shape] and [S, N]), and ``scores``
      {key: [N]} when ``config.detectors`` asks for them.
    """
    parts = [out for _, out in sample_chunks(denoise_fn, params, schedule, key, n, shape, config, chunk_size,
                                             seed_axis, seed_batch, mesh, rows_per_block=rows_per_block,
                                             oracle=oracle)]
    axis = 1 if seed_axis else 0
    merged = jax.tree.map(lambda *a: jnp.concatenate(a, axis=axis), *parts) if len(parts) > 1 else parts[0]
    if merged.trajectory is not None:
        ts = reverse_timesteps(config, schedule.num_timesteps)
        slots = _step_table(config, schedule.num_timesteps)[-1]
        merged = merged.replace(trajectory_t=ts[slots >= 0])
    return merged
