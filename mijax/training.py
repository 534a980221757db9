"""Training: an optax Adam state, many optimiser steps per dispatch (``lax.scan``), seeds as a vmap axis.

Randomness comes from one key per model (streams: :mod:`mijax.keys`): ``fold_in(key, INIT)`` initialises
the parameters and the step at index s uses ``fold_in(fold_in(key, STEP), s)``, so a run resumed from a checkpoint at step s draws the
same t and noise as an uninterrupted one. Batches follow the published code: the training set is cut
into ``N // B`` fixed batches visited in order, epoch after epoch (``shuffle`` permutes each epoch).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from mijax import execution
from mijax.diffusion import (Denoiser, Schedule, denoising_loss, denoising_loss_at, loss_draws,
                             smoothness_probes)
from mijax.execution import compile_init, plan_for
from mijax.keys import DROPOUT, INIT, SHUFFLE, STEP
from mijax.config import TrainConfig





@struct.dataclass
class TrainState:
    """All that changes during training; every leaf is an array (checkpointable as it is)."""

    step: jnp.ndarray  # [] int32, optimiser steps taken
    params: dict
    opt_state: optax.OptState


class EmaState(NamedTuple):
    """The state of :func:`track_ema`: steps taken and the (biased) moving average of the weights."""

    count: jnp.ndarray  # [] int32
    ema: Any  # like params


def track_ema(decay: float) -> optax.GradientTransformation:
    """Leaves the updates as they are and keeps an exponential moving average of the weights they lead to,
    started at zero (read it debiased through :func:`eval_params`)."""

    def init(params):
        return EmaState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

    def update(updates, state, params=None):
        new = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema, new)
        return updates, EmaState(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam without weight decay, warm-up, clipping or EMA, as published; with ``warmup_steps`` its learning
    rate ramps linearly from 0, with ``grad_clip`` the gradient is clipped to that global norm first, with
    ``ema_decay`` a moving average of the weights is kept last in the state (:func:`eval_params`)."""
    chain = [optax.adam(learning_rate(config), b1=config.b1, b2=config.b2, eps=config.eps)]
    if config.grad_clip:
        chain.insert(0, optax.clip_by_global_norm(config.grad_clip))
    if config.ema_decay:
        chain.append(track_ema(config.ema_decay))
    return optax.chain(*chain) if len(chain) > 1 else chain[0]


def learning_rate(config: TrainConfig):
    """The learning rate: the constant ``config.learning_rate`` (the published recipe), or an optax schedule of
    the optimiser's step: a linear warm-up from 0 over ``warmup_steps``, then ``lr_decay`` down to
    ``lr_final * learning_rate`` at step ``steps``."""
    peak, warmup = config.learning_rate, config.warmup_steps
    if config.lr_decay == "none":
        return optax.linear_schedule(0.0, peak, warmup) if warmup else peak
    span = max(config.steps - warmup, 1)
    if config.lr_decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, span, alpha=config.lr_final)
    else:
        decay = optax.linear_schedule(peak, peak * config.lr_final, span)
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup]) if warmup else decay


def eval_params(state: "TrainState", config: TrainConfig):
    """The weights to sample with: the debiased moving average ``ema / (1 - decay^count)`` when
    ``config.ema_decay`` is set, else ``state.params`` (a seed-stacked state gives seed-stacked weights)."""
    if not config.ema_decay:
        return state.params
    ema_state = state.opt_state[-1]
    if not isinstance(ema_state, EmaState):
        raise ValueError("this training state has no moving average of its weights (trained without ema_decay)")
    return _debias(ema_state.ema, ema_state.count, jnp.float32(config.ema_decay))


@jax.jit
def _debias(ema, count, decay):
    # one program for the whole tree (leaf by leaf, eager ops compile a program per leaf shape)
    def debias(e):
        c = count.reshape(count.shape + (1,) * (e.ndim - count.ndim))
        scale = 1.0 - jnp.power(decay, c.astype(jnp.float32))
        return jnp.where(c > 0, e / jnp.where(c > 0, scale, 1.0), e)

    return jax.tree.map(debias, ema)


def init_state(init_fn: Callable, config: TrainConfig, key: jax.Array) -> TrainState:
    """Initial state of one model. ``init_fn(key) -> params`` (e.g. ``lambda k: model.init(k, x, t)``)."""
    params = init_fn(jax.random.fold_in(key, INIT))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=make_optimizer(config).init(params))


_INIT_PROGRAMS: dict = {}


def init_states(module, config: TrainConfig, shape: tuple[int, ...], keys: jax.Array) -> TrainState:
    """Initial states of one Flax denoiser ``module`` per key, stacked (leaves [S, ...]): the parameters from
    ``module.init`` on a dummy batch of one sample of ``shape`` (compiled once per module, config, shape and
    key layout, at the level of its :class:`~mijax.execution.Plan`: unoptimised on CPU for the UNet)."""
    shape = tuple(shape)

    def fn(keys):
        dummy_x = jnp.zeros((1,) + shape, jnp.float32)
        dummy_t = jnp.zeros((1,), jnp.int32)
        return jax.vmap(lambda k: init_state(lambda kk: module.init(kk, dummy_x, dummy_t), config, k))(keys)

    cache_key = (module, config, shape, keys.shape, str(keys.dtype), getattr(keys, "sharding", None))
    if cache_key not in _INIT_PROGRAMS:
        if len(_INIT_PROGRAMS) >= 32:
            _INIT_PROGRAMS.clear()
        optimised = plan_for(module).optimised_init
        _INIT_PROGRAMS[cache_key] = jax.jit(fn).lower(keys).compile() if optimised else compile_init(fn, keys)
    return _INIT_PROGRAMS[cache_key](keys)


def get_batch(data: jnp.ndarray, step: jnp.ndarray, key: jax.Array, config: TrainConfig) -> jnp.ndarray:
    """The batch of optimiser step ``step``: fixed batch ``step mod (N // B)`` of epoch ``step // (N // B)``.

    Args:
      data: the training set, [N, *shape]. key: the model's key (for ``shuffle``).
    Returns:
      [B, *shape].
    """
    num_batches = data.shape[0] // config.batch_size
    epoch, index = step // num_batches, step % num_batches
    if config.shuffle:
        perm_key = jax.random.fold_in(jax.random.fold_in(key, SHUFFLE), epoch)
        order = jax.random.permutation(perm_key, data.shape[0])
        rows = jax.lax.dynamic_slice_in_dim(order, index * config.batch_size, config.batch_size)
        return data[rows]
    return jax.lax.dynamic_slice_in_dim(data, index * config.batch_size, config.batch_size)


def _pairwise_sum(trees: list):
    """((t0 + t1) + (t2 + t3)) + ...: the halves summed apart, then together (leaf by leaf)."""
    if len(trees) == 1:
        return trees[0]
    half = len(trees) // 2
    return jax.tree.map(jnp.add, _pairwise_sum(trees[:half]), _pairwise_sum(trees[half:]))


def batch_groups_mesh(config: TrainConfig, devices: Optional[list] = None) -> Optional[Mesh]:
    """The devices over which :func:`batch_gradient` spreads ``config.batch_groups``: the most local devices,
    a power of two, that divide the groups evenly; None for one device or several processes."""
    devices = jax.local_devices() if devices is None else list(devices)
    used = 1
    while used * 2 <= len(devices) and config.batch_groups % (used * 2) == 0:
        used *= 2
    return None if used == 1 or jax.process_count() > 1 else execution.mesh(execution.BATCH, devices[:used])


def batch_gradient(denoise_fn: Denoiser, schedule: Schedule, config: TrainConfig, params, key: jax.Array,
                   step: jnp.ndarray, batch: jnp.ndarray, mesh: Optional[Mesh] = None):
    """The loss [] and its gradient (a tree like ``params``) at optimiser step ``step`` on ``batch`` [B, *shape].

    With ``config.batch_groups`` G > 1: the batch (with its t and noise, drawn as for G = 1) in G consecutive
    groups, each group's mean loss and gradient computed apart, summed pairwise and divided by G (exact, G
    being a power of two). ``mesh`` (axis ``"batch"``, D devices, D dividing G; :func:`batch_groups_mesh`)
    puts G / D groups on each device and sums the devices' partial sums in the same pairwise order, so the
    numbers do not depend on D.
    """
    step_key = jax.random.fold_in(jax.random.fold_in(key, STEP), step)
    training = getattr(denoise_fn, "training", None)  # a model with dropout draws its masks from DROPOUT
    dropout_key = jax.random.fold_in(jax.random.fold_in(key, DROPOUT), step)
    groups = config.batch_groups
    if groups == 1:
        fn = denoise_fn if training is None else training(dropout_key)
        return jax.value_and_grad(lambda p: denoising_loss(fn, p, schedule, step_key, batch, config.objective,
                                                           config.t_power, config.smoothness,
                                                           config.smoothness_rows, config.min_snr))(params)
    t, noise = loss_draws(step_key, batch, schedule.num_timesteps, config.t_power)
    probes = smoothness_probes(step_key, batch) if config.smoothness else None
    size = batch.shape[0] // groups

    def local(params, x0, t, noise, first, probes=None):
        # the groups x0 [k * size, ...] of this device, first index `first`: their pairwise sum
        parts = []
        for i in range(x0.shape[0] // size):
            fn = denoise_fn if training is None else training(jax.random.fold_in(dropout_key, first + i))
            rows = slice(i * size, (i + 1) * size)
            # a barrier per group: XLA may not merge the groups' products (that would change their numbers)
            p, x, tt, e, v = jax.lax.optimization_barrier(
                (params, x0[rows], t[rows], noise[rows], None if probes is None else probes[rows]))
            parts.append(jax.lax.optimization_barrier(jax.value_and_grad(
                lambda p: denoising_loss_at(fn, p, schedule, x, tt, e, config.objective, config.smoothness, v,
                                            config.smoothness_rows, config.min_snr))(p)))
        return _pairwise_sum(parts)

    extra = () if probes is None else (probes,)
    if mesh is None:
        loss, grads = local(params, batch, t, noise, 0, *extra)
    else:
        devices = execution.mesh_size(mesh)

        def spread(params, x0, t, noise, *probes):
            part = local(params, x0, t, noise, jax.lax.axis_index(execution.BATCH) * (groups // devices), *probes)
            every = jax.lax.all_gather(part, execution.BATCH)  # [D, ...]: summed in a fixed order, not by psum
            return _pairwise_sum([jax.tree.map(lambda a: a[d], every) for d in range(devices)])

        split = P(execution.BATCH)
        loss, grads = jax.shard_map(spread, mesh=mesh, in_specs=(P(), split, split, split) + (split,) * len(extra),
                                    out_specs=P(), check_vma=False)(params, batch, t, noise, *extra)
    # materialised: the optimiser's update then compiles the same way whatever D (no fused multiply-adds
    # that reach into the sums on some device counts and not on others)
    return jax.lax.optimization_barrier((loss / groups, jax.tree.map(lambda g: g / groups, grads)))


def train_step(denoise_fn: Denoiser, schedule: Schedule, config: TrainConfig, state: TrainState,
               key: jax.Array, data: jnp.ndarray,
               batch_mesh: Optional[Mesh] = None) -> tuple[TrainState, jnp.ndarray]:
    """One Adam step on the denoising loss (``batch_mesh``: see :func:`batch_gradient`). Returns (new state,
    loss [])."""
    batch = get_batch(data, state.step, key, config)
    loss, grads = batch_gradient(denoise_fn, schedule, config, state.params, key, state.step, batch, batch_mesh)
    updates, opt_state = make_optimizer(config).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), loss


@partial(jax.jit, static_argnames=("denoise_fn", "config", "num_steps", "seed_axis", "seed_batch", "mesh",
                                   "unroll", "batch_mesh"),
         donate_argnames=("state",))
def train_steps(denoise_fn: Denoiser, schedule: Schedule, config: TrainConfig, state: TrainState, key: jax.Array,
                data: jnp.ndarray, num_steps: int, seed_axis: bool = False, seed_batch: Optional[int] = None,
                mesh: Optional[Mesh] = None, unroll: bool = False,
                batch_mesh: Optional[Mesh] = None) -> tuple[TrainState, jnp.ndarray]:
    """``num_steps`` optimiser steps in one dispatch (a ``lax.scan``).

    Args:
      state: a :class:`TrainState` (leaves [S, ...] with ``seed_axis``).
      key: the model's key ([S] with ``seed_axis``).
      data: the training set [N, *shape] ([S, N, *shape] with ``seed_axis``).
      seed_batch: seeds computed together inside a device (None: 1 on CPU, where the seeds then run one
        after the other in the same program, all on accelerators, where they are vmapped).
      mesh: with ``seed_axis``, a mesh (axis ``"seeds"``) whose devices each train S / D of the models.
      unroll: no loop in the program: the steps, and the seeds of a device, one copy each, in sequence
        (for small ``num_steps``; the host loops of :func:`train`).
      batch_mesh: the devices of each step's batch groups (:func:`batch_gradient`), for one model at a time.
    Returns:
      (state after the steps, losses [num_steps] or [S, num_steps]).
    """

    def run(state, key, data):
        def body(state, _):
            return train_step(denoise_fn, schedule, config, state, key, data, batch_mesh)

        if unroll:  # a Python loop: even a one-step scan is a while loop, and XLA keeps its slow layouts
            losses = []
            for _ in range(num_steps):
                state, loss = body(state, None)
                losses.append(loss)
            return state, jnp.stack(losses)
        return jax.lax.scan(body, state, None, length=num_steps)

    if not seed_axis:
        return run(state, key, data)

    def local(state, key, data):
        num_seeds = jax.tree.leaves(key)[0].shape[0]
        batch = execution.default_seed_batch(num_seeds) if seed_batch is None else seed_batch
        return execution.map_seeds(run, (state, key, data), batch, unroll=unroll)

    if mesh is None:
        return local(state, key, data)
    split = P(execution.SEEDS)
    return jax.shard_map(local, mesh=mesh, in_specs=(split, split, split), out_specs=split,
                         check_vma=False)(state, key, data)


def train(denoise_fn: Denoiser, schedule: Schedule, config: TrainConfig, state: TrainState, key: jax.Array,
          data: jnp.ndarray, seed_axis: bool = False, stop_at: Optional[int] = None,
          callback: Optional[Callable[[TrainState, jnp.ndarray], None]] = None, seed_batch: Optional[int] = None,
          mesh: Optional[Mesh] | str = "auto", batch_devices: Optional[list] = None) -> TrainState:
    """Train from ``state`` up to step ``stop_at`` (default ``config.steps``) in scanned dispatches (on CPU, a
    host loop of loop-free single steps where the model's :class:`~mijax.execution.Plan` has ``host_loops``).

    ``callback(state, losses)`` runs after each dispatch (progress, logs, checkpoints). The result does
    not depend on how the steps are split into dispatches, nor on the devices the seeds are spread over.
    With ``seed_axis``, ``mesh="auto"`` spreads the seeds over as many devices as divide them evenly
    (:func:`mijax.execution.seeds_mesh` of :func:`mijax.execution.auto_devices`); None keeps them on
    the default device. With ``config.batch_groups`` > 1, the groups of a model trained alone (or of seeds trained one at a time) go
    to ``batch_devices`` (default: every local device; :func:`batch_groups_mesh`).
    """
    stop_at = config.steps if stop_at is None else stop_at
    if isinstance(mesh, str):
        mesh = (execution.seeds_mesh(jax.tree.leaves(key)[0].shape[0], execution.auto_devices(denoise_fn))
                if seed_axis else None)
    if seed_axis:
        state, key, data = execution.shard_leading((state, key, data), mesh)
    step = int(jnp.max(execution.to_host(state.step)))
    on_host = plan_for(denoise_fn).host_loops
    # the batch groups of one model at a time over the devices, when its seeds do not occupy them already
    one_at_a_time = not seed_axis or (on_host and execution.mesh_size(mesh) <= 1 and jax.process_count() == 1)
    groups_mesh = batch_groups_mesh(config, batch_devices) if config.batch_groups > 1 and one_at_a_time else None
    placement = None
    if groups_mesh is not None:
        placement = [getattr(a, "sharding", None) for a in jax.tree.leaves(state)]
        state, key, data = execution.replicate((state, key, data), groups_mesh)

    def host_steps(state, key, data, seed_axis, mesh):
        # the same n steps, each a loop-free program (the plan's host_loops); losses [..., n]
        parts = []
        for _ in range(n):
            state, part = train_steps(denoise_fn, schedule, config, state, key, data, 1, seed_axis, seed_batch,
                                      mesh, True, groups_mesh)
            parts.append(part)
        return state, jnp.concatenate(parts, axis=-1)

    while step < stop_at:
        n = min(config.steps_per_call, stop_at - step)
        if on_host and seed_axis and execution.mesh_size(mesh) <= 1 and jax.process_count() == 1:
            # the seeds one after the other through one one-seed program, whatever their number (unrolling
            # S seeds into one program made XLA:CPU compile for minutes at S = 6)
            runs = [host_steps(jax.tree.map(lambda a: a[s], state), key[s], data[s], False, None)
                    for s in range(key.shape[0])]
            state = jax.tree.map(lambda *a: jnp.stack(a), *(one for one, _ in runs))
            losses = jnp.stack([part for _, part in runs])
        elif on_host:
            state, losses = host_steps(state, key, data, seed_axis, mesh if seed_axis else None)
        else:
            state, losses = train_steps(denoise_fn, schedule, config, state, key, data, n, seed_axis, seed_batch,
                                        mesh if seed_axis else None, False, None if seed_axis else groups_mesh)
        step += n
        if callback is not None:
            callback(state, losses)
    if placement is not None:  # back where the caller had it
        leaves, tree = jax.tree.flatten(state)
        state = jax.tree.unflatten(tree, [a if where is None else jax.device_put(a, where)
                                          for a, where in zip(leaves, placement)])
    return state
