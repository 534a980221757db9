"""Recursive training on generated data, with and without Hal filtering (SPEC section 7, claim 6).

Generation 0 trains S models (one per seed) on real data. Each later generation trains NEW models from
scratch, with the same recipe, on the samples the previous generation kept. Every model draws a pool of
P samples with Hal, and a filter keeps N of them:

- ``none``: the first N of the pool (the pool is i.i.d., so this is "sample N, keep all");
- ``random``: N of the P at random (the paper's control);
- ``variance``: the N with the lowest Hal (the paper's filter);
- ``threshold``: the samples with Hal below a threshold calibrated on generation 0 (per seed: the Hal
  below which generation 0's pool keeps a fraction ``threshold_keep`` of P; default N / P, so at
  generation 0 it keeps what ``variance`` keeps). The number accepted varies, but the training set
  keeps N rows so every model shares one vmapped program: the accepted samples in a random order,
  cycled (each repeated floor or ceil of N / accepted times) when fewer than N are accepted, cut at N
  when more. If nothing is accepted it falls back to the ``variance`` filter. The accepted fraction is
  logged.

Axes. Generation 0's models do not depend on the filter, so it trains and samples S models and every
filter acts on the same pools. Later generations flatten (filter, seed) into one leading axis of
F * S models (filter-major: model m is filter m // S, seed m % S), trained by one vmapped program and
sampled by another. Model (f, s) of generation g >= 1 has key ``fold_in(fold_in(key(seed_s), g), f)``;
generation 0's is ``key(seed_s)`` (as ``mijax train``); streams of a model's key: 0 init, 2 steps
(training.py), 5 sampling, 6 filtering, 3 the real training set (runs.py, generation 0 only).

Directory layout (``run_recursive(out, config)``)::

    config.json              the RecursiveConfig
    gen_000/ state.msgpack   the models' TrainState during training (every checkpoint_every steps)
             losses.json     mean loss per dispatch and model
             model.msgpack   the trained models (written once training is finished)
             pool.npz        x [M, P, d], hal [M, P]: every model's pool
             kept.npz        data [F*S, N, d]: what each (filter, seed) keeps; next generation's data
             calibration.json  (generation 0) the threshold filter's per-seed thresholds
             metrics.json    the generation's measurements; its presence marks the generation finished
    metrics.json             all generations with means and 95% CIs over seeds (written at the end)

Every file is written atomically. Killed at any moment, the same call resumes: finished generations are
read back, a generation in progress restarts from its last state checkpoint (training is a pure function
of the step index) or from its saved pool, and the numbers equal an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from scipy.special import ndtr

from mijax import hallucination
from mijax.mixtures import GaussianMixture, mass_beyond, nearest_mode
from mijax.mixtures import sample as sample_mixture
from mijax.runs import (RunConfig, RunError, atomic_write_bytes, build, config_from_dict, config_to_dict,
                        read_json, save_npz, seed_keys, training_data, validate_config, write_json)
from mijax.sampling import SamplerConfig, sample_chunks
from mijax.stats import mean_ci
from mijax.training import TrainState, init_state, train

FILTERS = ("none", "random", "variance", "threshold")
SAMPLE_STREAM, FILTER_STREAM, REFERENCE_STREAM = 5, 6, 7
HAL_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


@dataclasses.dataclass(frozen=True)
class RecursiveConfig:
    """A recursive-training study.

    Attributes:
      run: the recipe of every model (data set, model, diffusion, training); ``run.data.n_train`` is N,
        the training-set size of every generation; ``run.seed`` / ``run.seeds`` the seeds.
      generations: G, generations 0..G-1.
      filters: the filters compared (a subset of FILTERS, in plot order).
      pool_extra: the pool is N + pool_extra samples (the paper: 2,500) ...
      pool_ratio: ... or, if set, ceil(N * pool_ratio) samples.
      threshold_keep: fraction of generation 0's pool the threshold keeps (None: N / P).
      hal_window: K, reverse steps in the Hal window (t = K-1..0).
      chunk_size: samples per compiled sampling chunk.
      k: the support radius (stds) of the hallucination labels; ``ks`` are reported too.
      lost_share: a mode is lost when its mass is below this fraction of its true weight.
      saved_samples: samples per model kept in ``metrics`` for scatter plots (all are in pool.npz).
    """

    run: RunConfig = RunConfig()
    generations: int = 5
    filters: tuple[str, ...] = ("none", "random", "variance")
    pool_extra: int = 2_500
    pool_ratio: Optional[float] = None
    threshold_keep: Optional[float] = None
    hal_window: int = 10
    chunk_size: int = 20_000
    k: float = 5.0
    ks: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
    lost_share: float = 0.1
    hist_bins: int = 0  # 0: 200 bins in 1D, 50 x 50 in 2D
    sliced_directions: int = 64

    @property
    def n(self) -> int:
        return self.run.data.n_train

    @property
    def pool_size(self) -> int:
        if self.pool_ratio is not None:
            return int(math.ceil(self.n * self.pool_ratio - 1e-9))
        return self.n + self.pool_extra

    @property
    def num_seeds(self) -> int:
        return self.run.seeds


def recursive_config_to_dict(config: RecursiveConfig) -> dict:
    d = dataclasses.asdict(config)
    d["run"] = config_to_dict(config.run)
    return d


def recursive_config_from_dict(d: dict) -> RecursiveConfig:
    d = dict(d)
    try:
        run = config_from_dict(d.pop("run"))
        for name in ("filters", "ks"):
            if name in d:
                d[name] = tuple(d[name])
        return RecursiveConfig(run=run, **d)
    except (KeyError, TypeError) as e:
        raise RunError(f"config.json does not describe a mijax recursive study ({e})") from None


def validate_recursive(config: RecursiveConfig) -> None:
    """Raise RunError (one line) for settings that cannot run."""
    validate_config(config.run)
    if config.generations < 1:
        raise RunError(f"generations must be >= 1, got {config.generations}")
    if not config.filters or len(set(config.filters)) != len(config.filters):
        raise RunError("filters must be a non-empty list without repeats")
    unknown = [f for f in config.filters if f not in FILTERS]
    if unknown:
        raise RunError(f"unknown filter {unknown[0]!r}; choose from {', '.join(FILTERS)}")
    if config.pool_ratio is not None and not config.pool_ratio >= 1:
        raise RunError(f"pool ratio must be >= 1, got {config.pool_ratio}")
    if config.pool_extra < 0:
        raise RunError(f"pool extra must be >= 0, got {config.pool_extra}")
    if config.threshold_keep is not None and not 0 < config.threshold_keep <= 1:
        raise RunError(f"threshold keep must be in (0, 1], got {config.threshold_keep}")
    if config.chunk_size <= 0:
        raise RunError("chunk size must be > 0")
    if not 2 <= config.hal_window <= config.run.diffusion.timesteps:
        raise RunError(f"Hal window must be in 2..{config.run.diffusion.timesteps}, got {config.hal_window}")


# ---------------------------------------------------------------------------------------------
# Filters: indices [N] of the pool samples a filter keeps (fixed shapes, jit-able).

def threshold_keep_indices(key: jax.Array, hal: jnp.ndarray, threshold, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The threshold filter with a fixed output size.

    Accepted samples (``hal < threshold``) in a random order fixed by ``key``, cycled to fill ``n`` rows
    when fewer than ``n`` are accepted (row i is accepted sample i mod A), the first ``n`` when more.
    With no sample accepted, the ``n`` lowest-Hal samples (the variance filter).

    Returns:
      (int32 indices [n], number accepted A [] int32).
    """
    accepted = hallucination.threshold_filter(hal, threshold)
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
        return hallucination.random_filter(key, p, n), full
    if name == "variance":
        return hallucination.variance_filter(hal, n), full
    if name == "threshold":
        return threshold_keep_indices(key, hal, threshold, n)
    raise ValueError(f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")


def calibrate_threshold(hal: np.ndarray, keep: int) -> np.ndarray:
    """Per-row thresholds: ``hal[s] < t[s]`` keeps ``keep`` samples of row s (the keep-th smallest Hal
    plus one ulp-like step: the next larger value), for hal [S, P]. Returns float64 [S]."""
    hal = np.sort(np.asarray(hal, dtype=np.float64), axis=1)
    if not 0 < keep <= hal.shape[1]:
        raise ValueError(f"cannot keep {keep} of {hal.shape[1]} samples")
    if keep == hal.shape[1]:
        return np.full(hal.shape[0], np.inf)
    return 0.5 * (hal[:, keep - 1] + hal[:, keep])


@jax.jit
def _gather(x, idx):
    return jax.vmap(lambda a, i: a[i])(x, idx)


@partial(jax.jit, static_argnames=("name", "n"))
def _filter_batch(name: str, keys: jax.Array, hal: jnp.ndarray, n: int, thresholds: jnp.ndarray):
    return jax.vmap(lambda k, h, t: filter_indices(name, k, h, n, t))(keys, hal, thresholds)


@partial(jax.jit, static_argnums=(0, 1, 2))
def _initial_states(model, train_config, shape, keys: jax.Array) -> TrainState:
    """Model-stacked initial TrainState (as runs.initial_states, compiled once per model and shape)."""
    dummy_x = jnp.zeros((1,) + shape, jnp.float32)
    dummy_t = jnp.zeros((1,), jnp.int32)
    return jax.vmap(lambda k: init_state(lambda kk: model.init(kk, dummy_x, dummy_t), train_config, k))(keys)


_nearest_mode = jax.jit(nearest_mode)


def apply_filters(config: RecursiveConfig, generation: int, pool_x: np.ndarray, pool_hal: np.ndarray,
                  model_keys: jax.Array, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Filter every model's pool into the next generation's data.

    Args:
      pool_x, pool_hal: [M, P, d], [M, P]; M = S at generation 0 (pools shared by the filters), F * S later.
      model_keys: [M] the models' keys. thresholds: [S] the threshold filter's per-seed thresholds.
    Returns:
      (kept data [F * S, N, d], accepted counts [F * S]) filter-major.
    """
    S, n = config.num_seeds, config.n
    kept, counts = [], []
    for f, name in enumerate(config.filters):
        rows = np.arange(S) if generation == 0 else f * S + np.arange(S)
        keys = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, FILTER_STREAM), f))(model_keys[rows])
        hal = jnp.asarray(pool_hal[rows])
        idx, count = _filter_batch(name, keys, hal, n, jnp.asarray(thresholds, jnp.float32))
        kept.append(np.asarray(_gather(jnp.asarray(pool_x[rows]), idx)))
        counts.append(np.asarray(count))
    return np.concatenate(kept), np.concatenate(counts)


# ---------------------------------------------------------------------------------------------
# Measurements of one model's samples (host-side numpy).

def mode_mass(mixture: GaussianMixture, x: np.ndarray, k: float) -> np.ndarray:
    """Fraction of the samples x [P, d] within k stds of each mode; float64 [K]."""
    idx, dist = (np.asarray(a) for a in _nearest_mode(mixture, jnp.asarray(x)))
    inside = dist <= k
    return np.bincount(idx[inside], minlength=mixture.num_modes) / max(x.shape[0], 1)


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
    +0.5 per bin (finite when a mode is lost); samples outside the grid fall in the outer bins."""
    d = mixture.dim
    bins = bins or (200 if d == 1 else 50)
    edges = _hist_edges(mixture, bins)
    p = true_histogram(mixture, edges)
    clipped = [np.clip(x[:, c], e[0] + 1e-12, e[-1] - 1e-12) for c, e in enumerate(edges)]
    counts, _ = np.histogramdd(np.stack(clipped, axis=1), bins=edges)
    q = (counts + 0.5) / (counts.sum() + 0.5 * counts.size)
    mask = p > 0
    return float(np.sum(p[mask] * (np.log(p[mask]) - np.log(q[mask]))))


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, directions: int = 64) -> float:
    """Sliced 1-Wasserstein distance between equal-size samples x, y [P, d]: the mean over evenly spread
    unit directions (angles in [0, pi) in 2D; the exact W1 in 1D) of the W1 of the projections."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    if d == 1:
        units = np.ones((1, 1))
    elif d == 2:
        angles = np.pi * np.arange(directions) / directions
        units = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    else:
        units = np.random.default_rng(0).normal(size=(directions, d))
        units /= np.linalg.norm(units, axis=1, keepdims=True)
    px, py = np.sort(x @ units.T, axis=0), np.sort(y @ units.T, axis=0)
    return float(np.mean(np.abs(px - py)))


def measure(config: RecursiveConfig, mixture: GaussianMixture, x: np.ndarray, hal: np.ndarray,
            reference: np.ndarray) -> dict:
    """The measurements of one model from its pool x [P, d], hal [P], and a true sample [P, d] (for the
    sliced distance). JSON-able."""
    mass = mode_mass(mixture, x, config.k)
    lost = mass < config.lost_share * np.asarray(mixture.weights, np.float64)
    dist = np.asarray(_nearest_mode(mixture, jnp.asarray(x))[1])
    return {
        "hallucination_rate": float(np.mean(dist > config.k)),
        # k times each mode's own spread in these samples where wider than the truth: a blurred mode is not
        # counted as interpolation (see mijax.hallucination.blur_adjusted_labels)
        "hallucination_rate_blur_adjusted": float(np.mean(np.asarray(
            hallucination.blur_adjusted_labels(mixture, jnp.asarray(x), config.k)[0]))),
        "rates": [{"k": float(k), "rate": float(np.mean(dist > k)), "true_mass": mass_beyond(float(k), mixture.dim)}
                  for k in config.ks],
        "mode_mass": [float(v) for v in mass],
        "modes_lost": int(lost.sum()),
        "histogram_kl": histogram_kl(mixture, x, config.hist_bins),
        "sliced_w1": sliced_wasserstein(x, reference, config.sliced_directions),
        "hal_quantiles": [float(v) for v in np.quantile(hal, HAL_QUANTILES)],
    }


# ---------------------------------------------------------------------------------------------
# The study.

def model_keys(config: RecursiveConfig, generation: int) -> jax.Array:
    """Keys of a generation's models: [S] at generation 0, [F * S] (filter-major) after."""
    base = seed_keys(config.run.seed_values)
    if generation == 0:
        return base
    per_filter = [jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, generation), f))(base)
                  for f in range(len(config.filters))]
    return jnp.concatenate(per_filter)


def gen_dir(out: Path, generation: int) -> Path:
    return Path(out) / f"gen_{generation:03d}"


def _save_state(path: Path, state: TrainState) -> None:
    atomic_write_bytes(path, serialization.to_bytes(jax.device_get(state)))


def _load_state(path: Path, target: TrainState) -> TrainState:
    try:
        return serialization.from_bytes(target, path.read_bytes())
    except Exception as e:  # msgpack raises many types for damaged files
        raise RunError(f"corrupt checkpoint {path}: {type(e).__name__}") from None


def _load_npz(path: Path) -> dict:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _train_generation(config: RecursiveConfig, pieces, directory: Path, keys: jax.Array, data: jnp.ndarray,
                      checkpoint_every: int, hook: Callable, generation: int, progress: bool) -> TrainState:
    """Train the generation's models (vmapped), resuming from ``state.msgpack``; returns the final state."""
    state = _initial_states(pieces.model, config.run.train, pieces.shape, keys)
    losses = {"step": [], "loss": []}
    if (directory / "state.msgpack").exists():
        state = _load_state(directory / "state.msgpack", state)
        if (directory / "losses.json").exists():
            losses = read_json(directory / "losses.json")
    steps = config.run.train.steps
    step = int(np.max(np.asarray(state.step)))
    losses = {"step": [s for s in losses["step"] if s <= step],
              "loss": [v for s, v in zip(losses["step"], losses["loss"]) if s <= step]}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, initial=step, desc=f"gen {generation}: train {keys.shape[0]} models", unit="step",
                   dynamic_ncols=True)

    def log(state, chunk_losses):
        now = int(np.max(np.asarray(state.step)))
        losses["step"].append(now)
        losses["loss"].append([float(v) for v in np.asarray(chunk_losses).mean(axis=-1)])
        if bar is not None:
            bar.update(now - bar.n)

    try:
        while step < steps:
            target = min(steps, (step // checkpoint_every + 1) * checkpoint_every)
            state = train(pieces.denoise_fn, pieces.schedule, config.run.train, state, keys, data, seed_axis=True,
                          stop_at=target, callback=log)
            step = target
            _save_state(directory / "state.msgpack", state)
            write_json(directory / "losses.json", losses)
            hook("checkpoint", generation, step)
    finally:
        if bar is not None:
            bar.close()
    return state


def _sample_pools(config: RecursiveConfig, pieces, params, keys: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    sampler = SamplerConfig(objective=config.run.diffusion.objective, hal_window=config.hal_window)
    sample_keys = jax.vmap(lambda k: jax.random.fold_in(k, SAMPLE_STREAM))(keys)
    m, p = keys.shape[0], config.pool_size
    x = np.empty((m, p) + pieces.shape, np.float32)
    hal = np.empty((m, p), np.float32)
    for start, out in sample_chunks(pieces.denoise_fn, params, pieces.schedule, sample_keys, p, pieces.shape,
                                    sampler, config.chunk_size, seed_axis=True):
        size = out.hal.shape[1]
        x[:, start:start + size] = np.asarray(out.x)
        hal[:, start:start + size] = np.asarray(out.hal)
    return x, hal


def _no_hook(event: str, generation: int, step: int) -> None:
    return None


def run_generation(out: Path, config: RecursiveConfig, generation: int, progress: bool = False,
                   hook: Callable[[str, int, int], None] = _no_hook) -> dict:
    """Run (or resume, or read back) generation ``generation``; returns its metrics dict.

    ``hook(event, generation, step)`` is called after each state checkpoint ("checkpoint"), once the
    models are saved ("trained"), the pools ("sampled") and the kept data ("filtered"): tests raise
    from it to simulate a kill.
    """
    out = Path(out)
    directory = gen_dir(out, generation)
    if (directory / "metrics.json").exists():
        return read_json(directory / "metrics.json")
    directory.mkdir(parents=True, exist_ok=True)
    pieces = build(config.run)
    keys = model_keys(config, generation)
    S = config.num_seeds
    if generation == 0:
        data = training_data(config.run, seed_keys(config.run.seed_values))
    else:
        previous = gen_dir(out, generation - 1)
        if not (previous / "metrics.json").exists():
            raise RunError(f"generation {generation - 1} is not finished in {out}")
        data = jnp.asarray(_load_npz(previous / "kept.npz")["data"])
    if not (directory / "pool.npz").exists():
        if (directory / "model.msgpack").exists():
            state = _load_state(directory / "model.msgpack", _initial_states(pieces.model, config.run.train, pieces.shape, keys))
        else:
            state = _train_generation(config, pieces, directory, keys, data, config.run.checkpoint_every, hook,
                                      generation, progress)
            _save_state(directory / "model.msgpack", state)
            (directory / "state.msgpack").unlink(missing_ok=True)
            hook("trained", generation, config.run.train.steps)
        x, hal = _sample_pools(config, pieces, state.params, keys)
        save_npz(directory / "pool.npz", x=x, hal=hal)
        hook("sampled", generation, 0)
    pool = _load_npz(directory / "pool.npz")
    x, hal = pool["x"], pool["hal"]
    if generation == 0:
        keep = config.n if config.threshold_keep is None else int(round(config.threshold_keep * config.pool_size))
        keep = min(max(keep, 1), config.pool_size)
        thresholds = calibrate_threshold(hal, keep)
        write_json(directory / "calibration.json", {"keep": keep, "thresholds": [float(t) for t in thresholds]})
    else:
        thresholds = np.asarray(read_json(gen_dir(out, 0) / "calibration.json")["thresholds"])
    if not (directory / "kept.npz").exists():
        kept, counts = apply_filters(config, generation, x, hal, keys, thresholds)
        save_npz(directory / "kept.npz", data=kept, accepted=counts)
        hook("filtered", generation, 0)
    kept_file = _load_npz(directory / "kept.npz")
    kept, counts = kept_file["data"], kept_file["accepted"]

    mixture = pieces.mixture
    references = np.asarray(jax.vmap(lambda k: sample_mixture(mixture, jax.random.fold_in(k, REFERENCE_STREAM),
                                                              config.pool_size))(seed_keys(config.run.seed_values)))
    per_filter = {}
    model_cache = {}
    for f, name in enumerate(config.filters):
        rows = []
        for s in range(S):
            m = s if generation == 0 else f * S + s
            if m not in model_cache:
                model_cache[m] = measure(config, mixture, x[m], hal[m], references[s])
            row = dict(model_cache[m])
            kept_dist = np.asarray(_nearest_mode(mixture, jnp.asarray(kept[f * S + s]))[1])
            row["kept_hallucination_rate"] = float(np.mean(kept_dist > config.k))
            row["accepted"] = int(counts[f * S + s])
            row["seed"] = int(config.run.seed_values[s])
            rows.append(row)
        per_filter[name] = rows
    metrics = {"generation": generation, "n": config.n, "pool": config.pool_size, "k": config.k,
               "true_mass_beyond_k": mass_beyond(config.k, mixture.dim),
               "thresholds": [float(t) for t in thresholds], "filters": per_filter}
    write_json(directory / "metrics.json", metrics)
    return metrics


def summarize(config: RecursiveConfig, generations: list[dict]) -> dict:
    """Means and 95% CIs over seeds, per filter and generation, of the headline numbers."""
    keys = ("hallucination_rate", "hallucination_rate_blur_adjusted", "kept_hallucination_rate", "modes_lost",
            "histogram_kl", "sliced_w1")
    table = {}
    for name in config.filters:
        table[name] = {key: [mean_ci([row[key] for row in g["filters"][name]]) for g in generations] for key in keys}
    return table


def run_recursive(out: Path, config: RecursiveConfig, progress: bool = False, overwrite: bool = False,
                  hook: Callable[[str, int, int], None] = _no_hook) -> dict:
    """Run the whole study into ``out``, resuming whatever an earlier call left there.

    Returns:
      ``{"config", "generations": [per-generation metrics], "summary": {filter: {metric: [CI per gen]}}}``,
      also written to ``out/metrics.json``.
    """
    out = Path(out)
    validate_recursive(config)
    saved = out / "config.json"
    if saved.exists() and not overwrite:
        try:
            previous = recursive_config_from_dict(read_json(saved))
        except (ValueError, KeyError) as e:
            raise RunError(f"{saved} is corrupt ({e})") from None
        if previous != config:
            raise RunError(f"{out} holds a study made with another configuration; pass --overwrite to replace it")
    elif out.exists() and overwrite:
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(saved, recursive_config_to_dict(config))
    generations = [run_generation(out, config, g, progress, hook) for g in range(config.generations)]
    result = {"config": recursive_config_to_dict(config), "generations": generations,
              "summary": summarize(config, generations)}
    write_json(out / "metrics.json", result)
    return result
