"""Recursive training on generated data, with and without Hal filtering (the paper's claim 6), on any
registered data set.

Generation 0 trains S models (one per seed) on real data. Each later generation trains NEW models from
scratch, with the same recipe, on the samples the previous generation kept. Every model draws a pool of
P samples with Hal (by ``config.sampler``: DDPM by default, as published), and a filter (:mod:`mijax.filters`)
keeps N of them: ``none``, ``random``, ``variance``, ``threshold`` or ``certified``. The threshold is
calibrated on generation 0 (per seed: the Hal below which generation 0's pool keeps a fraction
``threshold_keep`` of P; default N / P, so at generation 0 it keeps what ``variance`` keeps). The number it accepts varies, but the training set keeps N rows so every model shares
one vmapped program (accepted samples cycled or cut, see :func:`mijax.filters.threshold_keep_indices`);
the accepted count is logged.

The ``certified`` filter applies its threshold as ``threshold`` does; its threshold is certified per seed
(:func:`mijax.filters.certify_threshold`, ``config.certified_alpha`` and ``certified_delta``) on a calibration
draw of P more samples from generation 0's models, with the pools' sampler and a stream of their keys of its
own (so independent of the pools), labelled by the data set's ``hallucinated``. Its guarantee (the
hallucination rate among the samples it keeps <= alpha with probability >= 1 - delta) holds for generation
0's pools, which are exchangeable with the calibration draw; later generations' models drift from generation
0's, and for their pools the same threshold carries no guarantee. Where a certified threshold keeps none of
a pool (no threshold could be certified: too few samples, or too many hallucinations), the filter passes on
the N lowest-Hal samples (the variance filter, as ``threshold`` does), without the guarantee, and warns.

What a generation measures comes from the data set (``dataset.measure`` of each model's pool against a
reference draw of the true law, ``dataset.hallucinated`` of what each filter kept) plus Hal quantiles;
:func:`summarize` takes means and 95% CIs over seeds of ``dataset.summary_keys`` (of rates and shares inside
[0, 1]: :func:`mijax.stats.proportion_ci`).

Axes. Generation 0's models do not depend on the filter, so it trains and samples S models and every
filter acts on the same pools. Later generations flatten (filter, seed) into one leading axis of
F * S models (filter-major: model m is filter m // S, seed m % S), trained by one vmapped program and
sampled by another. Model (f, s) of generation g >= 1 has key ``fold_in(fold_in(key(seed_s), g), f)``;
generation 0's is ``key(seed_s)`` (as ``mijax train``). Streams: :mod:`mijax.keys`.

Directory layout (``run_recursive(out, config)``)::

    config.json              the RecursiveConfig
    gen_000/ checkpoints/    the models' TrainState (orbax; every checkpoint_every steps and at the end)
             losses.csv      every step's loss per model (mijax.runs.LossLog)
             losses.json     mean loss per dispatch and model
             train.json      written once training is finished (steps, final loss, wall time, speed)
             loss.png        the loss curve
             pool.npz        x [M, P, *shape], hal [M, P]: every model's pool
             kept.npz        data [F*S, N, *shape]: what each (filter, seed) keeps; next generation's data
             calibration_pool.npz  (generation 0, with the certified filter) x [S, P, *shape], hal [S, P]:
                             the calibration draw
             calibration.json  (generation 0) the threshold filter's per-seed thresholds ("keep",
                             "thresholds": numbers, or "inf" where it keeps the whole pool); with the
                             certified filter also "certified": its alpha, delta,
                             per-seed thresholds (numbers, or "inf" / "-inf": keep all / none) and
                             :func:`~mijax.filters.certify_threshold`'s result per seed
             metrics.json    the generation's measurements; its presence marks the generation finished
    metrics.json             all generations with means and 95% CIs over seeds (written at the end)

Every file is written atomically. Killed at any moment, the same call resumes: finished generations are
read back, a generation in progress restarts from its last checkpoint (training is a pure function of
the step index) or from its saved pool, and the numbers equal an uninterrupted run's.
"""
from __future__ import annotations

import dataclasses
import warnings
from functools import partial
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mijax import collect, store
from mijax import keys as streams
from mijax.config import (RecursiveConfig, RunError, SamplerConfig, build, config_from_dict, config_to_dict,
                          sampler_from_dict, training_data, validate_config, validate_training_size)
from mijax.filters import calibrate_threshold, certify_threshold, filter_indices
from mijax.store import load_cache, read_json, save_npz, write_json
from mijax.runs import data_sampler, fit
from mijax.sampling import validate as validate_sampler
from mijax.training import eval_params
from mijax.stats import mean_ci, proportion_ci

HAL_QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def pool_sampler(config: RecursiveConfig) -> SamplerConfig:
    """The pools' sampler: ``config.sampler`` with the run's objective and the data set's Hal regions
    (:func:`mijax.runs.data_sampler`)."""
    return data_sampler(config.run, config.sampler)


# Settings of mijax 0.1 that moved to the data set (its measurements), read and dropped from old studies.
_MOVED_TO_DATASET = ("k", "ks", "lost_share", "hist_bins", "sliced_directions")
# Sampler settings that a study held as its own fields before it held a SamplerConfig (``sampler``).
_MOVED_TO_SAMPLER = ("hal_window", "hal_end", "hal_reduction", "clip_x0")


def recursive_config_to_dict(config: RecursiveConfig) -> dict:
    d = dataclasses.asdict(config)
    d["run"] = config_to_dict(config.run)
    return d


def recursive_config_from_dict(d) -> RecursiveConfig:
    """Inverse of :func:`recursive_config_to_dict`; also reads the ``config.json`` of earlier studies (settings
    that moved to the data set dropped; the flat Hal settings ``hal_window``, ``hal_end``, ``hal_reduction`` and
    ``clip_x0`` of the studies before :attr:`~mijax.config.RecursiveConfig.sampler` read into it: the same
    sampler, so such a study resumes)."""
    if not isinstance(d, dict):
        raise RunError("config.json does not describe a mijax recursive study")
    d = {key: value for key, value in d.items() if key not in _MOVED_TO_DATASET}
    try:
        run = config_from_dict(d.pop("run"))
        if "filters" in d:
            d["filters"] = tuple(d["filters"])
        flat = {key: d.pop(key) for key in _MOVED_TO_SAMPLER if key in d}
        if flat and "sampler" in d:
            raise TypeError(f"both a sampler and the flat settings {', '.join(flat)}")
        sampler = sampler_from_dict(d.pop("sampler", flat))
        return RecursiveConfig(run=run, sampler=sampler, **d)
    except (KeyError, TypeError, AttributeError) as e:
        raise RunError(f"config.json does not describe a mijax recursive study ({e})") from None


def validate_recursive(config: RecursiveConfig) -> None:
    """Raise RunError (one line) unless the study can run: its data set, model and pools (its settings were
    checked when it was made)."""
    validate_config(config.run)
    validate_training_size(config.run)
    try:
        validate_sampler(pool_sampler(config), config.run.diffusion.timesteps)
    except ValueError as e:
        raise RunError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Filtering every model's pool.

@jax.jit
def _gather(x, idx):
    return jax.vmap(lambda a, i: a[i])(x, idx)


@partial(jax.jit, static_argnames=("name", "n"))
def _filter_batch(name: str, keys: jax.Array, hal: jnp.ndarray, n: int, thresholds: jnp.ndarray):
    return jax.vmap(lambda k, h, t: filter_indices(name, k, h, n, t))(keys, hal, thresholds)


def apply_filters(config: RecursiveConfig, generation: int, pool_x: np.ndarray, pool_hal: np.ndarray,
                  model_keys: jax.Array, thresholds: np.ndarray,
                  certified: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Filter every model's pool into the next generation's data.

    Args:
      pool_x, pool_hal: [M, P, *shape], [M, P]; M = S at generation 0 (pools shared by the filters), F * S later.
      model_keys: [M] the models' keys. thresholds: [S] the threshold filter's per-seed thresholds.
      certified: [S] the certified filter's (needed when ``config.filters`` holds it; -inf keeps none).
    Returns:
      (kept data [F * S, N, *shape], accepted counts [F * S]) filter-major.
    """
    S, n = config.num_seeds, config.n
    if "certified" in config.filters and certified is None:
        raise ValueError("the certified filter needs its thresholds")
    kept, counts = [], []
    for f, name in enumerate(config.filters):
        rows = np.arange(S) if generation == 0 else f * S + np.arange(S)
        keys = jax.vmap(lambda k: jax.random.fold_in(k, f))(streams.stream(model_keys[rows], streams.FILTER))
        chosen = certified if name == "certified" else thresholds
        idx, count = _filter_batch(name, keys, jnp.asarray(pool_hal[rows]), n, jnp.asarray(chosen, jnp.float32))
        kept.append(np.asarray(_gather(jnp.asarray(pool_x[rows]), idx)))
        counts.append(np.asarray(count))
    return np.concatenate(kept), np.concatenate(counts)


# ---------------------------------------------------------------------------------------------
# The study.

def model_keys(config: RecursiveConfig, generation: int) -> jax.Array:
    """Keys of a generation's models: [S] at generation 0, [F * S] (filter-major) after."""
    base = streams.seed_keys(config.run.seed_values)
    if generation == 0:
        return base
    per_filter = [jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, generation), f))(base)
                  for f in range(len(config.filters))]
    return jnp.concatenate(per_filter)


def gen_dir(out: Path, generation: int) -> Path:
    return Path(out) / f"gen_{generation:03d}"


def _no_hook(event: str, generation: int, step: int) -> None:
    return None


def _models(out: Path, config: RecursiveConfig, generation: int, progress: bool,
            hook: Callable[[str, int, int], None]) -> tuple:
    """(pieces, the trained TrainState of the generation's M models, their keys [M]): trained, resumed from
    the checkpoints, or restored from the last one."""
    directory = gen_dir(out, generation)
    pieces = build(config.run)
    keys = model_keys(config, generation)
    if generation == 0:
        data = training_data(config.run, pieces.dataset, streams.seed_keys(config.run.seed_values))
    else:
        data = jnp.asarray(_kept(out, config, generation - 1, progress, hook)[3])
    trained = (directory / "train.json").exists()
    state = fit(directory, pieces, config.run.train, keys, data, config.run.checkpoint_every, progress,
                desc=f"gen {generation}: train", on_checkpoint=lambda step: hook("checkpoint", generation, step))
    if not trained:  # fit wrote train.json
        hook("trained", generation, config.run.train.steps)
    return pieces, state, keys


def _draw(config: RecursiveConfig, models: tuple, keys: jax.Array, what: str) -> dict:
    """P samples with Hal from each model, with the pools' sampler and the sampling keys [M]; samples that are
    not finite stop the study (RunError naming ``what``)."""
    pieces, state, _ = models
    try:
        pool = collect.draw(pieces.denoise_fn, eval_params(state, config.run.train), pieces.schedule, keys,
                            config.pool_size, pieces.shape, pool_sampler(config), config.chunk_size)
    except collect.NotFinite as e:
        raise RunError(f"{what}: {e}") from None
    return {"x": pool["x"], "hal": pool["hal"]}


def _pool(out: Path, config: RecursiveConfig, generation: int, progress: bool,
          hook: Callable[[str, int, int], None]) -> dict:
    """Generation ``generation``'s pools {"x": [M, P, *shape], "hal": [M, P]}: ``pool.npz``, or trained (resumed
    from the checkpoints) and sampled into it. Samples that are not finite stop the study, naming the generation.
    At generation 0 with the certified filter, the calibration draw follows from the same models."""
    directory = gen_dir(out, generation)
    pool = load_cache(directory / "pool.npz", ("x", "hal"))
    if pool is not None:
        return pool
    models = _models(out, config, generation, progress, hook)
    pool = _draw(config, models, streams.stream(models[2], streams.SAMPLE), f"generation {generation}")
    save_npz(directory / "pool.npz", x=pool["x"], hal=pool["hal"])
    hook("sampled", generation, 0)
    if generation == 0 and "certified" in config.filters:
        _calibration_pool(out, config, progress, hook, models)
    return pool


def _calibration_pool(out: Path, config: RecursiveConfig, progress: bool, hook: Callable[[str, int, int], None],
                      models: tuple | None = None) -> dict:
    """Generation 0's calibration draw {"x": [S, P, *shape], "hal": [S, P]} for the certified filter:
    ``calibration_pool.npz``, or drawn into it from generation 0's models (``models``, or restored) with the
    pools' sampler and the keys' own stream (:data:`mijax.keys.CALIBRATION`), so independent of the pools."""
    path = gen_dir(out, 0) / "calibration_pool.npz"
    draw = load_cache(path, ("x", "hal"))
    if draw is not None:
        return draw
    models = _models(out, config, 0, progress, hook) if models is None else models
    draw = _draw(config, models, streams.stream(models[2], streams.CALIBRATION), "generation 0's calibration draw")
    save_npz(path, x=draw["x"], hal=draw["hal"])
    hook("calibrated", 0, 0)
    return draw


def _threshold_json(t: float):
    """A threshold as JSON: a finite number, or the string "inf" / "-inf" (read back by ``float``)."""
    return float(t) if np.isfinite(t) else ("inf" if t > 0 else "-inf")


def certify_seeds(config: RecursiveConfig, dataset, calibration: dict) -> dict:
    """The certified filter's per-seed Hal thresholds, certified on the calibration draw ``calibration``
    (x [S, P, *shape], hal [S, P]) labelled by ``dataset.hallucinated``.

    Returns:
      {"alpha", "delta", "calibration": P, "thresholds": [S] (numbers, or "inf" / "-inf"), "per_seed": [S]
      :func:`~mijax.filters.certify_threshold`'s results (their threshold as in "thresholds"), "assumption"}.
    """
    rows = []
    for s, seed in enumerate(config.run.seed_values):
        x = np.asarray(calibration["x"][s])
        row = certify_threshold(np.asarray(calibration["hal"][s]), dataset.hallucinated(x), config.certified_alpha,
                                config.certified_delta, seed=int(seed))
        rows.append({**row, "threshold": _threshold_json(row["threshold"]), "seed": int(seed)})
    return {"alpha": config.certified_alpha, "delta": config.certified_delta, "calibration": config.pool_size,
            "thresholds": [row["threshold"] for row in rows], "per_seed": rows,
            "assumption": "the rate holds with probability >= 1 - delta for pools exchangeable with the calibration "
                          "draw: generation 0's, not later generations'"}


def _certified_thresholds(calibration: dict) -> np.ndarray:
    """float64 [S] of calibration.json's "certified" section."""
    return np.asarray([float(t) for t in calibration["certified"]["thresholds"]], np.float64)


def read_pool(out: Path, config: RecursiveConfig, generation: int) -> dict:
    """A generation's pools {"x": [M, P, *shape], "hal": [M, P]} of the study in ``out`` (for figures): its
    ``pool.npz``, made again from the checkpoints (with a one-line warning) if it cannot be read."""
    return _pool(Path(out), config, generation, False, _no_hook)


def _kept(out: Path, config: RecursiveConfig, generation: int, progress: bool,
          hook: Callable[[str, int, int], None]):
    """(pool x, pool hal, thresholds, kept data [F*S, N, *shape], accepted counts [F*S], certified thresholds
    [S] or None) of generation ``generation``: ``kept.npz``, or filtered from the pool into it."""
    directory = gen_dir(out, generation)
    pool = _pool(out, config, generation, progress, hook)
    x, hal = pool["x"], pool["hal"]
    bad, total = collect.count_not_finite(pool)
    if bad:  # a pool of an earlier mijax: NaN samples are never measured as "not hallucinated"
        raise RunError(f"generation {generation}: {collect.NotFinite(bad, total)}")
    certified = None
    if generation == 0:
        keep = config.n if config.threshold_keep is None else int(round(config.threshold_keep * config.pool_size))
        keep = min(max(keep, 1), config.pool_size)
        thresholds = calibrate_threshold(hal, keep)
        calibration = {"keep": keep, "thresholds": [_threshold_json(t) for t in thresholds]}
        if "certified" in config.filters:
            draw = _calibration_pool(out, config, progress, hook)
            calibration["certified"] = certify_seeds(config, build(config.run).dataset, draw)
            certified = _certified_thresholds(calibration)
        write_json(directory / "calibration.json", calibration)
    else:
        calibration = read_json(gen_dir(out, 0) / "calibration.json")
        thresholds = np.asarray([float(t) for t in calibration["thresholds"]], np.float64)
        if "certified" in config.filters:
            certified = _certified_thresholds(calibration)
    kept_file = load_cache(directory / "kept.npz", ("data", "accepted"))
    if kept_file is None:
        kept, counts = apply_filters(config, generation, x, hal, model_keys(config, generation), thresholds,
                                     certified)
        save_npz(directory / "kept.npz", data=kept, accepted=counts)
        hook("filtered", generation, 0)
    else:
        kept, counts = kept_file["data"], kept_file["accepted"]
    return x, hal, thresholds, kept, counts, certified


def run_generation(out: Path, config: RecursiveConfig, generation: int, progress: bool = False,
                   hook: Callable[[str, int, int], None] = _no_hook) -> dict:
    """Run (or resume, or read back) generation ``generation``; returns its metrics dict.

    ``hook(event, generation, step)`` is called after each checkpoint ("checkpoint"), once training is
    finished ("trained"), after the pools are saved ("sampled"), generation 0's calibration draw
    ("calibrated", with the certified filter) and the kept data ("filtered"): tests raise from it to simulate
    a kill. ``pool.npz``, ``calibration_pool.npz`` and ``kept.npz`` are caches: one that cannot be read
    (:func:`mijax.store.load_cache`) is made again, the same numbers, from the checkpoints and the pool.

    Where the certified filter's threshold keeps none of a seed's pool, a warning says so: that seed's
    certified data are then the N lowest-Hal samples (the variance filter's), without the guarantee, and its
    row's ``accepted`` is 0.
    """
    out = Path(out)
    directory = gen_dir(out, generation)
    if (directory / "metrics.json").exists():
        return read_json(directory / "metrics.json")
    if generation > 0 and not (gen_dir(out, generation - 1) / "metrics.json").exists():
        raise RunError(f"generation {generation - 1} is not finished in {out}")
    directory.mkdir(parents=True, exist_ok=True)
    dataset = build(config.run).dataset
    S = config.num_seeds
    x, hal, thresholds, kept, counts, certified = _kept(out, config, generation, progress, hook)
    reference_keys = streams.stream(streams.seed_keys(config.run.seed_values), streams.REFERENCE)
    references = np.asarray(jax.vmap(lambda k: dataset.reference(k, config.pool_size))(reference_keys))
    per_filter = {}
    model_cache = {}
    for f, name in enumerate(config.filters):
        rows = []
        for s in range(S):
            m = s if generation == 0 else f * S + s
            if m not in model_cache:
                model_cache[m] = {**dataset.measure(x[m], references[s]),
                                  "hal_quantiles": [float(v) for v in np.quantile(hal[m], HAL_QUANTILES)]}
            row = dict(model_cache[m])
            row["kept_hallucination_rate"] = float(np.mean(dataset.hallucinated(kept[f * S + s])))
            row["accepted"] = int(counts[f * S + s])
            row["seed"] = int(config.run.seed_values[s])
            rows.append(row)
        per_filter[name] = rows
    metrics = {"generation": generation, "n": config.n, "pool": config.pool_size,
               "thresholds": [float(t) for t in thresholds], "filters": per_filter}
    if certified is not None:
        metrics["certified_thresholds"] = [_threshold_json(t) for t in certified]
        f = config.filters.index("certified")
        empty = [int(config.run.seed_values[s]) for s in range(S) if int(counts[f * S + s]) == 0]
        if empty:
            warnings.warn(f"generation {generation}: the certified filter's threshold (alpha "
                          f"{config.certified_alpha:g}, delta {config.certified_delta:g}) keeps none of the pool of "
                          f"seed(s) {', '.join(map(str, empty))}; their certified data are the {config.n:,} "
                          f"lowest-Hal samples instead (the variance filter), without the guarantee",
                          stacklevel=2)
    write_json(directory / "metrics.json", metrics)
    return read_json(directory / "metrics.json")  # as a resumed run reads it back


def summarize(config: RecursiveConfig, generations: list[dict]) -> dict:
    """Means and 95% CIs over seeds, per filter and generation, of the data set's summary measurements and
    the hallucination rate of what each filter kept; a measurement named with the word ``rate`` or ``share``
    is a proportion, its interval inside [0, 1] (:func:`mijax.stats.proportion_ci`)."""
    dataset = build(config.run).dataset
    keys = tuple(dataset.summary_keys) + ("kept_hallucination_rate",)
    interval = {key: proportion_ci if {"rate", "share"} & set(key.split("_")) else mean_ci for key in keys}
    return {name: {key: [interval[key]([row[key] for row in g["filters"][name]]) for g in generations] for key in keys}
            for name in config.filters}


def run_recursive(out: Path, config: RecursiveConfig, progress: bool = False, overwrite: bool = False,
                  hook: Callable[[str, int, int], None] = _no_hook) -> dict:
    """Run the whole study into ``out``, resuming whatever an earlier call left there.

    Returns:
      ``{"config", "generations": [per-generation metrics], "summary": {filter: {metric: [CI per gen]}}}``,
      also written to ``out/metrics.json``.
    """
    out = Path(out)
    validate_recursive(config)
    with store.lock(out, primary=jax.process_index() == 0):
        return _run_recursive(out, config, progress, overwrite, hook)


def _run_recursive(out: Path, config: RecursiveConfig, progress: bool, overwrite: bool,
                   hook: Callable[[str, int, int], None]) -> dict:
    store.check(out, "study", overwrite=overwrite, resume=not overwrite)
    saved = out / "config.json"
    if saved.exists() and not overwrite:
        try:
            previous = recursive_config_from_dict(read_json(saved))
        except (ValueError, KeyError) as e:
            raise RunError(f"{saved} is corrupt ({e})") from None
        if previous != config:
            raise RunError(f"{out} holds a study made with another configuration; pass --overwrite to replace it")
    with store.replacing(out, "study", replace=overwrite and out.exists()) as directory:
        write_json(directory / "config.json", recursive_config_to_dict(config))
        generations = [run_generation(directory, config, g, progress, hook) for g in range(config.generations)]
        result = {"config": recursive_config_to_dict(config), "generations": generations,
                  "summary": summarize(config, generations)}
        write_json(directory / "metrics.json", result)
    return result
