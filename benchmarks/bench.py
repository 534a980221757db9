"""Throughput and memory of the paper's workloads: sampling with Hal, training, a stack of seeds in one program.

Every figure excludes compilation: each measured function is run once to compile (and warm up), then
timed ``repeats`` times with ``block_until_ready``; the best time is reported. The model is the paper's
:class:`~mijax.models.ToyDenoiser` with random weights (throughput does not depend on them).

The measurements are plain functions (``bench_sampling``, ``bench_sampling_memory``,
``bench_training``, ``bench_seed_sampling``, ``bench_torch``) that :func:`run` composes; ``run`` prints a
table and one JSON line and returns the same figures as a dict. ``--compare-torch`` also runs the eager
PyTorch baseline (``shared/baselines/torch_ddpm.py``) in subprocesses, one after the other, and reports
the speed-ups of mijax over it. ``--processes`` times whole processes instead of compiled calls: mijax
(:func:`process_job` in a fresh interpreter) and the baseline, each at two sizes, alternated round by round
(:func:`bench_processes`): the marginal cost between the sizes leaves out start-up and compilation, the
whole-process time keeps them.

    python -m benchmarks.bench                       # the paper's sizes: N = 10,000, T = 1000, d = 1
    python -m benchmarks.bench --compare-torch --json-out bench.json
    python -m benchmarks.bench --quick               # tiny sizes, seconds
    python -m benchmarks.bench --compare-torch --processes --skip sweep,seeds,detectors,memory
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mijax.models import KERNELS, PRECISIONS, ToyDenoiser, make_denoiser
from mijax.models.mlp import matmul_dot_general
from mijax import allocator, execution, timing
from mijax.config import SamplerConfig
from mijax.execution import plan_for
from mijax.sampling import chunk_rows, sample, sample_chunk, validate
from mijax.diffusion import make_schedule
from mijax.config import TrainConfig
from mijax.training import init_state, train_step, train_steps

REPOSITORY = Path(__file__).resolve().parents[1]  # the checkout this benchmark belongs to

# Sizes of the paper's workloads, and tiny ones for tests (--quick). An option given explicitly wins.
# The sweep's axes ("sweep_n" / "sweep_timesteps" None: just --n / --timesteps; "all": every local device).
DEFAULTS = dict(n=10_000, timesteps=1000, dim=1, window=10, train_batch=10_000, train_steps=20, seeds="8",
                seed_n=2000, repeats=3, sweep_n=None, sweep_timesteps=None, sweep_dims="1,2", devices="1,all",
                precisions="float32,bf16", kernels="xla", chunk_size=None, peak_rows=3456, peak_square=2048,
                precision="float32")
QUICK = dict(n=256, timesteps=20, dim=1, window=5, train_batch=256, train_steps=2, seeds="2", seed_n=256,
             repeats=1, sweep_n=None, sweep_timesteps=None, sweep_dims="1,2", devices="1,all",
             precisions="float32,bf16", kernels="xla", chunk_size=None, peak_rows=256, peak_square=256,
             precision="float32")
# Memory is compared at T and at T / MEMORY_T_FACTOR.
MEMORY_T_FACTOR = 10
# 'does not grow with T': the compiled temporaries at T are within this factor of those at T / 10.
MEMORY_GROWTH_TOLERANCE = 1.1
MEASUREMENTS = ("sampling", "sweep", "memory", "training", "seeds", "detectors", "peak")  # what --skip may name


# --------------------------------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------------------------------

class CpuMeter:
    """Wall time, this process's CPU time (and its children's) and the whole machine's busy CPU time.

    ``other_cores`` is how many cores other processes kept busy meanwhile: near 0 on a quiet machine.
    Timings taken while it is well above 0 are noisy (the machine is shared).
    """

    def __init__(self, children: bool = False):
        self.children = children
        self.start = self._snapshot()

    def _snapshot(self) -> tuple[float, float, Optional[float]]:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN if self.children else resource.RUSAGE_SELF)
        return time.perf_counter(), usage.ru_utime + usage.ru_stime, _machine_busy_seconds()

    def read(self) -> dict:
        wall0, own0, busy0 = self.start
        wall1, own1, busy1 = self._snapshot()
        wall, own = wall1 - wall0, own1 - own0
        out = {"wall_seconds": wall, "cpu_seconds": own, "cpu_per_wall": own / wall if wall > 0 else None}
        if busy0 is not None and busy1 is not None and wall > 0:
            out["other_cores"] = max(0.0, (busy1 - busy0 - own) / wall)
        return out


def _machine_busy_seconds() -> Optional[float]:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_for_quiet(max_seconds: float, threshold: float = 0.15, settle: float = 10.0, poll: float = 2.0) -> dict:
    """Wait until other processes have used under ``threshold`` cores for ``settle`` seconds in a row.

    For shared machines: call before a measurement. Gives up after ``max_seconds``.
    Returns:
      ``{"quiet": whether it got quiet, "waited_seconds": ...}`` (quiet is None where /proc/stat is missing).
    """
    start = time.perf_counter()
    if max_seconds <= 0 or _machine_busy_seconds() is None:
        return {"quiet": None, "waited_seconds": 0.0}
    calm = 0.0
    while time.perf_counter() - start < max_seconds:
        meter = CpuMeter()
        time.sleep(poll)
        busy = meter.read().get("other_cores", 0.0)
        calm = calm + poll if busy < threshold else 0.0
        if calm >= settle:
            return {"quiet": True, "waited_seconds": time.perf_counter() - start}
    return {"quiet": False, "waited_seconds": time.perf_counter() - start}


def time_best(fn: Callable[[], Any], repeats: int) -> dict:
    """:func:`mijax.timing.time_best` with :class:`CpuMeter`: also ``"cpu_per_wall"`` (cores this process used in
    the best run) and ``"other_cores"`` (cores other processes used meanwhile)."""
    out = timing.time_best(fn, repeats, meter=CpuMeter)
    out.pop("cpu_seconds", None)
    return out


def _denoiser(dim: int, precision: str = "float32") -> tuple[ToyDenoiser, Callable[[jax.Array], Any]]:
    """The paper's toy denoiser for d = ``dim`` (matmuls in ``precision``) and its ``init_fn(key) -> params``."""
    model = ToyDenoiser(features=dim, precision=precision)
    x, t = jnp.zeros((1, dim), jnp.float32), jnp.zeros((1,), jnp.int32)
    return model, lambda key: model.init(key, x, t)


def _seed_params(init_fn: Callable, num_seeds: int, key: jax.Array):
    """Params with a leading seed axis [S, ...] and the S sampling keys."""
    keys = jax.random.split(key, num_seeds)
    return jax.vmap(init_fn)(keys), jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)


# --------------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------------

def bench_sampling(n: int, timesteps: int, dim: int, window: int, repeats: int = 3, seed: int = 0,
                   devices: Optional[int] = None, precision: str = "float32", kernel: str = "xla",
                   chunk_size: Optional[int] = None, kernel_options: Optional[dict] = None,
                   rows_per_block: Optional[int] | str = "auto") -> dict:
    """Throughput of :func:`mijax.sampling.sample` (DDPM carrying Hal over the last ``window`` steps).

    ``devices``: the samples are split over the first this many local devices (a ``rows`` mesh); None
    uses the library's default (every device). ``precision``: the network's matmul precision.
    ``kernel``: ``xla`` or ``pallas`` (the fused kernel; where there is no GPU it falls back to the XLA
    path, and ``kernel_used`` says so; ``kernel_options``: :class:`~mijax.models.FusedDenoiser`'s
    ``block_rows`` / ``num_warps``). ``chunk_size``: samples per compiled chunk (None: all at once).
    ``rows_per_block``: :func:`mijax.sampling.sample`'s (each device's rows through all T steps in blocks
    of at most this many, one block after the other; "auto": the library's default).
    Returns:
      seconds (best), point_steps_per_s = n T / seconds, first_seconds (compile + first run), times,
      and the device peak bytes in use where the backend tracks them (GPU, TPU).
    """
    model, init_fn = _denoiser(dim, precision)
    denoise_fn = make_denoiser(model, kernel, **(kernel_options or {}) if kernel == "pallas" else {})
    used = "pallas" if kernel == "pallas" and denoise_fn.uses_kernel else "xla"
    mesh = execution.rows_mesh() if devices is None else _rows_mesh(devices)  # None: every device
    key = jax.random.PRNGKey(seed)
    params = init_fn(key)
    schedule = make_schedule(num_timesteps=timesteps)
    config = SamplerConfig(hal_window=window)
    validate(config, timesteps)
    sample_key = jax.random.fold_in(key, 1)
    timing = time_best(lambda: sample(denoise_fn, params, schedule, sample_key, n, (dim,), config,
                                      chunk_size=chunk_size, mesh=mesh, rows_per_block=rows_per_block), repeats)
    result = {"n": n, "timesteps": timesteps, "dim": dim, "window": window, "precision": precision,
              "kernel": kernel, "kernel_used": used, "chunk_size": chunk_size, "rows_per_block": rows_per_block,
              **({"kernel_options": kernel_options} if kernel == "pallas" and kernel_options else {}),
              "devices": execution.mesh_size(mesh), **timing,
              "point_steps_per_s": n * timesteps / timing["seconds"]}
    peak = device_peak_bytes()
    if peak is not None:
        result["device_peak_bytes_in_use"] = peak
    return result


def bench_samplers(n: int, timesteps: int, dim: int, window: int, steps: int, repeats: int = 3,
                   seed: int = 0, names: Optional[Sequence[str]] = None) -> list[dict]:
    """Throughput of every registered sampler (:mod:`mijax.samplers`) carrying Hal over the last ``window``
    steps: ``ddpm`` over all ``timesteps``, the others over ``steps`` uniformly spaced timesteps. Per sampler:
    its steps, network evaluations per sample, seconds (best), samples per second, point-steps per second
    (n steps / seconds) and network evaluations per second."""
    from mijax import samplers

    model, init_fn = _denoiser(dim, "float32")
    key = jax.random.PRNGKey(seed)
    params, schedule = init_fn(key), make_schedule(num_timesteps=timesteps)
    rows = []
    for name in names or samplers.names():
        config = SamplerConfig(sampler=name, ddim_steps=None if name == "ddpm" else steps,
                               hal_window=min(window, steps))
        validate(config, timesteps)
        kinds = samplers.timesteps(name, timesteps, config.ddim_steps)[1]
        timing = time_best(lambda: sample(model.apply, params, schedule, jax.random.fold_in(key, 1), n, (dim,),
                                          config), repeats)
        evaluations = samplers.evaluations(name, kinds)
        rows.append({"sampler": name, "n": n, "dim": dim, "steps": len(kinds), "evaluations": evaluations,
                     **timing, "samples_per_s": n / timing["seconds"],
                     "point_steps_per_s": n * len(kinds) / timing["seconds"],
                     "evaluations_per_s": n * evaluations / timing["seconds"]})
    return rows


def bench_detectors(n: int, timesteps: int, dim: int, window: int, repeats: int = 3, seed: int = 0) -> dict:
    """What the detectors cost: sampling with Hal alone against sampling with every detector of
    :mod:`mijax.detectors` in the same pass (:func:`detector_costs`).

    Returns:
      ``{"hal_only": timing, "all": timing, "ratio": all / hal_only, "ratio_median", "detectors": [labels]}``.
    """
    from mijax.detectors import DETECTORS
    from mijax.experiments.detectors import detector_costs

    costs = detector_costs(n, timesteps, dim, window, {"all": list(DETECTORS)}, repeats, seed, timer=time_best)
    every = costs["groups"]["all"]
    return {"n": n, "timesteps": timesteps, "dim": dim, "window": window, "detectors": every["detectors"],
            "hal_only": costs["hal_only"], "all": every["timing"], "ratio": every["ratio"],
            "ratio_median": every["ratio_median"]}


def _rows_mesh(devices: int):
    """A ``rows`` mesh over the first ``devices`` local devices (None for one: the default device)."""
    available = jax.local_devices()
    if not 1 <= devices <= len(available):
        raise ValueError(f"--devices asks for {devices} devices; this process has {len(available)}")
    return None if devices == 1 else execution.rows_mesh(available[:devices])


def bench_sampling_sweep(ns: Sequence[int], timesteps: Sequence[int], dims: Sequence[int],
                         devices: Sequence[int], precisions: Sequence[str], window: int, repeats: int = 3,
                         measure: Callable[[Callable[[], dict]], dict] = lambda fn: fn(),
                         kernels: Sequence[str] = ("xla",), chunk_size: Optional[int] = None) -> list[dict]:
    """:func:`bench_sampling` at every combination of the axes (N, T, d, device count, precision, kernel).

    ``measure`` wraps each measurement (e.g. to wait for a quiet machine first). Each row also has
    ``point_steps_per_s_per_device``; where the backend tracks it, the device's peak memory in use.
    """
    rows = []
    for n in ns:
        for t in timesteps:
            for d in dims:
                for dev in devices:
                    for precision in precisions:
                        for kernel in kernels:
                            r = measure(lambda: bench_sampling(n, t, d, min(window, t), repeats, devices=dev,
                                                               precision=precision, kernel=kernel,
                                                               chunk_size=chunk_size))
                            r["point_steps_per_s_per_device"] = r["point_steps_per_s"] / r["devices"]
                            # What one device's program holds: its share of the rows (of one chunk).
                            rows_per_device = -(-min(n, chunk_size or n) // r["devices"])
                            mem = compiled_memory(rows_per_device, t, d, min(window, t), precision=precision,
                                                  kernel=kernel)
                            if mem is not None:
                                r["compiled_bytes_per_device"] = sum(
                                    mem.get(f, 0) for f in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                            "output_size_in_bytes"))
                            rows.append(r)
    return rows


def host_peak_bytes() -> int:
    """This process's peak resident memory so far (``ru_maxrss``), in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def compiled_memory(n: int, timesteps: int, dim: int, window: int, seed: int = 0,
                    precision: str = "float32", kernel: str = "xla") -> Optional[dict]:
    """XLA's memory analysis of the compiled sampling chunk (N samples, T steps); None if unavailable."""
    model, init_fn = _denoiser(dim, precision)
    denoise_fn = make_denoiser(model, kernel)
    key = jax.random.PRNGKey(seed)
    params = init_fn(key)
    schedule = make_schedule(num_timesteps=timesteps)
    config = SamplerConfig(hal_window=window)
    # What sample() compiles for n samples in one chunk: padded rows, in blocks on CPU.
    rows_per_block = plan_for(denoise_fn).rows_per_block
    rows = chunk_rows(n, None, 1, rows_per_block)[1]
    compiled = sample_chunk.lower(denoise_fn, params, schedule, key, jnp.uint32(0), config, (dim,), rows,
                                  rows_per_block=rows_per_block).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
              "generated_code_size_in_bytes")
    return {"timesteps": timesteps, "rows": rows,
            **{f: int(getattr(analysis, f)) for f in fields if hasattr(analysis, f)}}


def bench_sampling_memory(n: int, timesteps: int, dim: int, window: int) -> dict:
    """Compiled memory of the sampler at T and at T / 10: the temporaries must not grow with T.

    The arguments do grow with T, but only by the schedule's [T] coefficient tables (O(T), not O(N T)).
    Returns:
      ``{"long": analysis at T, "short": analysis at T / 10, "temp_ratio": long / short,
      "grows_with_t": bool}``, or ``{"skipped": reason}`` if the backend has no memory analysis.
    """
    short_t = max(window, timesteps // MEMORY_T_FACTOR)
    long, short = compiled_memory(n, timesteps, dim, window), compiled_memory(n, short_t, dim, window)
    if long is None or short is None:
        return {"skipped": f"{jax.default_backend()} backend gives no compiled memory analysis"}
    ratio = long["temp_size_in_bytes"] / max(short["temp_size_in_bytes"], 1)
    return {"n": n, "dim": dim, "long": long, "short": short, "temp_ratio": ratio,
            "grows_with_t": bool(ratio > MEMORY_GROWTH_TOLERANCE),
            # What keeping every step's x0_hat (as the published code does) would take at T: N T d float32.
            "trajectory_bytes_at_t": 4 * n * timesteps * dim}


def device_peak_bytes() -> Optional[int]:
    """``peak_bytes_in_use`` of the first device where the backend tracks it (GPU, TPU); else None."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # noqa: BLE001 - backends without allocator statistics raise or return None
        return None
    return None if not stats else stats.get("peak_bytes_in_use")


def training_call(batch: int, steps: int, dim: int = 1, num_seeds: Optional[int] = None, timesteps: int = 1000,
                  seed: int = 0, seed_batch: Optional[int] = None, precision: str = "float32",
                  scan_unroll: int = 1) -> Callable[[], Any]:
    """The work that :func:`bench_training` times: a function that runs ``steps`` Adam steps in one dispatch
    (continuing from the state the last call returned) and returns their losses; ``.last["losses"]``.

    ``scan_unroll`` > 1 (one model only) runs the steps in a ``lax.scan`` of that many steps per loop
    iteration instead of :func:`mijax.training.train_steps`' one: a measurement of the loop's cost (on a GPU
    each iteration waits for its condition on the host); unrolled steps may round differently, so the library
    keeps one step per iteration."""
    model, init_fn = _denoiser(dim, precision)
    schedule = make_schedule(num_timesteps=timesteps)
    config = TrainConfig(steps=steps, batch_size=batch, steps_per_call=steps)
    key = jax.random.PRNGKey(seed)
    seed_axis = num_seeds is not None
    if seed_axis:
        keys = jax.random.split(key, num_seeds)
        state = jax.vmap(lambda k: init_state(init_fn, config, k))(keys)
        data = jax.random.normal(jax.random.fold_in(key, 1), (num_seeds, batch, dim), jnp.float32)
    else:
        keys = key
        state = init_state(init_fn, config, key)
        data = jax.random.normal(jax.random.fold_in(key, 1), (batch, dim), jnp.float32)
    holder = {"state": state}
    if scan_unroll > 1:
        if seed_axis:
            raise ValueError("scan_unroll is measured on one model (num_seeds None)")
        unrolled = jax.jit(lambda st: jax.lax.scan(lambda s, _: train_step(model.apply, schedule, config, s, keys, data),
                                                   st, None, length=steps, unroll=scan_unroll), donate_argnums=0)

    def call():
        # the steps donate their state: always continue from the state they returned.
        if scan_unroll > 1:
            holder["state"], holder["losses"] = unrolled(holder["state"])
        else:
            holder["state"], holder["losses"] = train_steps(model.apply, schedule, config, holder["state"], keys,
                                                            data, steps, seed_axis, seed_batch if seed_axis else None)
        return holder["losses"]

    call.last = holder
    return call


def bench_training(batch: int, steps: int, dim: int, num_seeds: Optional[int] = None, timesteps: int = 1000,
                   repeats: int = 3, seed: int = 0, seed_batch: Optional[int] = None,
                   precision: str = "float32", scan_unroll: int = 1) -> dict:
    """Milliseconds per Adam step of :func:`mijax.training.train_steps` (``steps`` steps in one dispatch).

    ``num_seeds`` None trains one model; an integer S trains S models in one program along a seed axis
    (``seed_axis=True``, even for S = 1), ``seed_batch`` of them vmapped together (None: the library's
    default for this backend), and ms_per_step is then the time of one step of all S models.
    ``precision``: the network's matmul precision. ``scan_unroll``: see :func:`training_call`.
    """
    call = training_call(batch, steps, dim, num_seeds, timesteps, seed, seed_batch, precision, scan_unroll)
    seed_axis = num_seeds is not None
    timing = time_best(call, repeats)
    finite = bool(jnp.all(jnp.isfinite(call.last["losses"])))
    num_models = num_seeds if seed_axis else 1
    return {"batch": batch, "steps": steps, "dim": dim, "num_seeds": num_models, "seed_axis": seed_axis,
            "precision": precision, "scan_unroll": scan_unroll,
            "seed_batch": _seed_batch(num_models, seed_batch) if seed_axis else None,
            **timing, "ms_per_step": 1e3 * timing["seconds"] / steps,
            "examples_per_s": batch * num_models * steps / timing["seconds"], "losses_finite": finite}


def network_flops(dim: int, rows: int = 4096) -> dict:
    """The floating-point operations per row of one call of the paper's network on ``rows`` rows of d = ``dim``
    sharing one t (as in the sampler: the time path once per call): ``{"per_row": XLA's count of all of them,
    "matmul_per_row": those of the matrix products (from the program's dot_generals)}``, and the same with
    one t per row (as in training: ``per_row_own_t``, ``matmul_per_row_own_t``)."""
    model, init_fn = _denoiser(dim)
    params = init_fn(jax.random.PRNGKey(0))
    x = jnp.zeros((rows, dim), jnp.float32)
    out = {}
    for tag, t in (("", jnp.zeros((), jnp.int32)), ("_own_t", jnp.zeros((rows,), jnp.int32))):
        cost = jax.jit(model.apply).lower(params, x, t).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out["per_row" + tag] = float((cost or {}).get("flops", math.nan)) / rows
        out["matmul_per_row" + tag] = _dot_flops(jax.make_jaxpr(model.apply)(params, x, t).jaxpr) / rows
    return out


def _dot_flops(jaxpr) -> float:
    """2 x (output elements) x (contracted size) summed over the dot_generals of a jaxpr and its sub-jaxprs."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
        for value in eqn.params.values():
            for sub in value if isinstance(value, (list, tuple)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _dot_flops(inner)
    return total


def bench_matmul_peak(rows: int = 3456, width: int = 128, square: int = 2048, repeats: int = 3,
                      precision: str = "float32") -> dict:
    """GFLOP/s of matmuls on this backend in ``precision`` (the network's: float32 products, or bf16 inputs
    with float32 accumulation): ``rows x width @ width x width`` chained 200 times in one program on every
    local device at once, ``rows`` rows each (the shape of the network's row blocks on CPU, and the devices
    the sampler splits its rows over), and one ``square``-sized product on one device (near one device's
    peak). The ceiling against which the sampler's and training's GFLOP/s are read."""
    dot = matmul_dot_general(precision)
    dims = (((1,), (0,)), ((), ()))
    devices = len(jax.local_devices())
    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (devices * rows, width), jnp.float32)
    w = jax.random.normal(jax.random.fold_in(key, 1), (width, width), jnp.float32) / math.sqrt(width)
    chain = lambda a, w: jax.lax.fori_loop(0, 200, lambda i, h: dot(h, w, dims), a)  # noqa: E731
    mesh = _rows_mesh(devices)
    if mesh is not None:
        chain = jax.shard_map(chain, mesh=mesh, in_specs=(P(execution.ROWS), P()), out_specs=P(execution.ROWS))
        a = jax.device_put(a, NamedSharding(mesh, P(execution.ROWS)))
    chain = jax.jit(chain)
    narrow = time_best(lambda: chain(a, w), repeats)
    b = jax.random.normal(key, (square, square), jnp.float32)
    product = jax.jit(lambda b: dot(b, b, dims))
    big = time_best(lambda: product(b), repeats)
    return {"rows": rows, "width": width, "square": square, "precision": precision, "devices": devices,
            "network_shape_gflops": 200 * 2 * devices * rows * width * width / narrow["seconds"] / 1e9,
            "square_gflops": 2 * square**3 / big["seconds"] / 1e9, "network_shape": narrow, "square_timing": big}


def bench_seed_sampling(n: int, timesteps: int, dim: int, window: int, num_seeds: int, repeats: int = 3,
                        seed: int = 0, one_seed_seconds: Optional[float] = None,
                        seed_batch: Optional[int] = None) -> dict:
    """S models sampled in one program (``seed_axis=True``) against S times one model sampled alone.

    ``seed_batch`` seeds are vmapped together (None: the library's default for this backend).
    ``one_seed_seconds``, if given, is the one-model time at the same sizes (to avoid measuring it twice).
    Returns:
      seconds (S models), one_seed_seconds, ratio = seconds / (S one_seed_seconds) (1 is ideal).
    """
    model, init_fn = _denoiser(dim)
    key = jax.random.PRNGKey(seed)
    schedule = make_schedule(num_timesteps=timesteps)
    config = SamplerConfig(hal_window=window)
    if one_seed_seconds is None:
        one_seed_seconds = bench_sampling(n, timesteps, dim, window, repeats, seed)["seconds"]
    params, keys = _seed_params(init_fn, num_seeds, key)
    timing = time_best(lambda: sample(model.apply, params, schedule, keys, n, (dim,), config, seed_axis=True,
                                      seed_batch=seed_batch), repeats)
    return {"n": n, "timesteps": timesteps, "dim": dim, "num_seeds": num_seeds,
            "seed_batch": _seed_batch(num_seeds, seed_batch), **timing,
            "one_seed_seconds": one_seed_seconds,
            "ratio": timing["seconds"] / (num_seeds * one_seed_seconds),
            "point_steps_per_s": num_seeds * n * timesteps / timing["seconds"]}


def _seed_batch(num_seeds: int, seed_batch: Optional[int]) -> int:
    """The seeds vmapped together: ``seed_batch`` or the library's default (1 on CPU: a loop), at most S."""
    batch = execution.default_seed_batch(num_seeds) if seed_batch is None else seed_batch
    return max(1, min(batch, num_seeds))


def torch_available(python: str = sys.executable) -> tuple[bool, str]:
    """Whether ``import torch`` works in this interpreter (checked in a subprocess), and why not."""
    proc = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return False, f"import torch failed: {lines[-1] if lines else 'exit ' + str(proc.returncode)}"
    return True, proc.stdout.strip()


def parse_json_line(text: str) -> dict:
    """The last line of ``text`` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON line in the output")


def bench_torch(script: str | os.PathLike, mode: str, options: dict, repeats: int = 1,
                python: str = sys.executable, timeout: Optional[float] = None,
                env: Optional[Mapping[str, str]] = None) -> dict:
    """Run the torch baseline ``repeats`` times, one run after the other, and keep the fastest.

    Args:
      script: path of torch_ddpm.py. mode: ``trajectory``, ``sample`` or ``train``.
      options: its command-line options, e.g. ``{"n": 10000, "timesteps": 1000}``.
      env: its environment; default this process's as it was started, before the ``mijax`` program gave
        itself another allocator (:func:`mijax.allocator.environment_as_started`): the baseline as published.
    Returns:
      the fastest run's JSON, plus ``command``, ``times`` (the seconds of every run) and ``median_seconds``.
    """
    command = [python, str(script), mode] + [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    runs = []
    for _ in range(max(1, repeats)):
        # as published: without the allocator that the mijax program gives itself (mijax.allocator)
        stdout, figures = _run_metered(command, timeout,
                                       allocator.environment_as_started() if env is None else dict(env))
        # The CPU figures cover the whole subprocess (import and warm-up included), not only its timed part.
        runs.append({**parse_json_line(stdout), **{f"process_{k}": v for k, v in figures.items()}})
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "times": [r["seconds"] for r in runs],
            "median_seconds": statistics.median(r["seconds"] for r in runs), "command": " ".join(command[1:])}


def _run_metered(command: Sequence[str], timeout: Optional[float] = None,
                 env: Optional[dict] = None) -> tuple[str, dict]:
    """Run ``command`` (in ``env``, default this process's environment) to its end: its stdout and
    :class:`CpuMeter`'s figures for it; a failure raises with the end of its stderr."""
    meter = CpuMeter(children=True)
    proc = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.strip()[-500:]}")
    return proc.stdout, meter.read()


def time_process(command: Sequence[str], timeout: Optional[float] = None, env: Optional[dict] = None) -> dict:
    """Wall seconds of one whole process (start, imports, compilation, the work, exit; in ``env``, default
    this process's environment), with the CPU figures of :class:`CpuMeter` (``other_cores``: other
    processes' load meanwhile)."""
    figures = _run_metered(command, timeout, env)[1]
    return {"seconds": figures.pop("wall_seconds"), **figures}


def process_job(job: dict) -> None:
    """The work of one mijax process that ``--processes`` times from outside (``python -c``), what a user's
    script does from ``import`` to exit: ``kind`` ``sampling`` draws ``n`` samples of the random-init paper
    MLP with Hal over the last ``window`` of ``timesteps`` steps and brings them to the host; ``training`` runs
    ``steps`` Adam steps at batch ``batch`` in one dispatch. Compilation is part of the process; the
    initialisation is compiled, as :func:`mijax.training.init_states` does (op by op it takes seconds). Like
    the ``mijax`` program, the process first makes each CPU core a device (:func:`mijax.use_cpu_cores`) and
    takes XLA:CPU's own kernels (:func:`mijax.use_xla_cpu_kernels`)."""
    if job["kind"] not in ("sampling", "training"):
        raise ValueError(f"unknown process job {job['kind']!r}")
    # before the first device is touched (in-process, e.g. in tests: no effect)
    execution.use_xla_cpu_kernels()
    execution.use_cpu_cores()
    model, init_fn = _denoiser(job["dim"], job.get("precision", "float32"))
    key = jax.random.PRNGKey(0)
    schedule = make_schedule(num_timesteps=job["timesteps"])
    if job["kind"] == "sampling":
        out = sample(make_denoiser(model, "xla"), jax.jit(init_fn)(key), schedule, jax.random.fold_in(key, 1), job["n"],
                     (job["dim"],), SamplerConfig(hal_window=job["window"]))
        jax.device_get((out.x, out.hal))
    else:
        config = TrainConfig(steps=job["steps"], batch_size=job["batch"], steps_per_call=job["steps"])
        data = jax.random.normal(jax.random.fold_in(key, 1), (job["batch"], job["dim"]), jnp.float32)
        state = jax.jit(lambda k: init_state(init_fn, config, k))(key)
        _, losses = train_steps(model.apply, schedule, config, state, key, data, job["steps"])
        jax.device_get(losses)


def mijax_process_command(job: dict, python: str = sys.executable) -> list[str]:
    """The command line of a fresh Python process that runs :func:`process_job` (``job``)."""
    return [python, "-c", "import json, sys; sys.path.insert(0, sys.argv[2]); from benchmarks.bench import process_job; "
            "process_job(json.loads(sys.argv[1]))", json.dumps(job), str(REPOSITORY)]


def bench_processes(commands: dict[str, Callable[[int], Sequence[str]]], sizes: Sequence[int],
                    work: Sequence[float], rounds: int = 2, timeout: Optional[float] = None,
                    timer: Callable[..., dict] = time_process, envs: Optional[dict[str, dict]] = None) -> dict:
    """Whole-process seconds of several programs at two sizes, alternated (each round runs every size of
    every program in turn, so they share the machine's drift), and the marginal cost between the sizes.

    Args:
      commands: program name -> (size -> its command line).
      sizes: the two sizes (e.g. N, or training steps); work: the work each size does (e.g. N T point-steps).
      rounds: runs of each (program, size); the fastest is kept, the median too.
      timer: ``(command, timeout, env) -> {"seconds", ...}`` (:func:`time_process`).
      envs: program name -> the environment its processes run in (default: this process's).
    Returns:
      ``{"sizes", "work", "rounds", "programs": {name: {"runs": {size: [seconds...]}, "best": {size: s},
      "median": {size: s}, "marginal_seconds_per_work" (fastest large minus fastest small over the work
      between; None if not positive), "marginal_seconds_per_work_median", "other_cores_max"}}}``.
    """
    if len(sizes) != 2 or len(work) != 2 or not work[1] > work[0]:
        raise ValueError(f"two sizes with growing work are needed, got sizes {sizes} and work {work}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    runs: dict[str, dict[str, list[dict]]] = {name: {str(s): [] for s in sizes} for name in commands}
    for _ in range(rounds):
        for size in sizes:
            for name, command in commands.items():
                runs[name][str(size)].append(timer(command(size), timeout, (envs or {}).get(name)))
    out: dict[str, Any] = {"sizes": list(sizes), "work": list(work), "rounds": rounds, "programs": {}}
    small, large = (str(s) for s in sizes)
    for name, by_size in runs.items():
        seconds = {k: [r["seconds"] for r in v] for k, v in by_size.items()}
        best = {k: min(v) for k, v in seconds.items()}
        median = {k: statistics.median(v) for k, v in seconds.items()}

        def marginal(t: dict) -> Optional[float]:
            delta = t[large] - t[small]
            return delta / (work[1] - work[0]) if delta > 0 else None

        others = [r.get("other_cores") for v in by_size.values() for r in v if r.get("other_cores") is not None]
        out["programs"][name] = {"runs": seconds, "best": best, "median": median,
                                 "marginal_seconds_per_work": marginal(best),
                                 "marginal_seconds_per_work_median": marginal(median),
                                 "other_cores_max": max(others) if others else None}
    return out


def _speedups(result: dict, mine: str, theirs: str) -> dict:
    """``theirs`` over ``mine`` in :func:`bench_processes`' ``result``: marginal (fastest and median) and
    whole process at the larger size."""
    a, b, large = result["programs"][mine], result["programs"][theirs], str(result["sizes"][1])

    def ratio(x, y):
        return x / y if x is not None and y is not None and y > 0 else None

    return {"marginal": ratio(b["marginal_seconds_per_work"], a["marginal_seconds_per_work"]),
            "marginal_median": ratio(b["marginal_seconds_per_work_median"], a["marginal_seconds_per_work_median"]),
            "whole_process": ratio(b["best"][large], a["best"][large])}


def run_processes(a: argparse.Namespace, script: Optional[Path], measure: Callable[[Callable[[], dict]], dict]) -> dict:
    """``--processes``: sampling at N / 5 and N, training at 5 and 15 dispatches' worth of steps, each a whole
    process, mijax alternated with the torch baseline (``script``; None: mijax alone)."""
    python = sys.executable
    n_small = max(1, a.n // 5)
    sample_job = {"kind": "sampling", "timesteps": a.timesteps, "dim": a.dim, "window": a.window,
                  "precision": a.precision}
    sampling = {"mijax": lambda n: mijax_process_command({**sample_job, "n": n}, python)}
    steps = (5 * a.train_steps, 15 * a.train_steps)
    train_job = {"kind": "training", "timesteps": a.timesteps, "dim": a.dim, "batch": a.train_batch,
                 "precision": a.precision}
    training = {"mijax": lambda k: mijax_process_command({**train_job, "steps": k}, python)}
    if script is not None:
        sampling["torch"] = lambda n: [python, str(script), "trajectory", f"--n={n}", f"--timesteps={a.timesteps}",
                                       f"--dim={a.dim}", f"--window={a.window}"]
        training["torch"] = lambda k: [python, str(script), "train", f"--batch={a.train_batch}", f"--steps={k}",
                                       f"--dim={a.dim}"]
    envs = {"torch": allocator.environment_as_started()}  # the baseline as published (mijax.allocator)
    out = {"sampling": measure(lambda: bench_processes(sampling, (n_small, a.n),
                                                      (n_small * a.timesteps, a.n * a.timesteps), a.process_rounds,
                                                      envs=envs)),
           "training": measure(lambda: bench_processes(training, steps, steps, a.process_rounds, envs=envs))}
    if script is not None:
        for part in out.values():
            part["speedup"] = _speedups(part, "mijax", "torch")
    return out


def machine_info() -> dict:
    """:func:`mijax.timing.machine_info` and the allocator the process runs on (huge pages, mimalloc)."""
    return {**timing.machine_info(), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
            "allocator": allocator.in_use()}


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------

def default_torch_baseline() -> Path:
    """``../shared/baselines/torch_ddpm.py`` relative to the repository root."""
    return REPOSITORY.parent / "shared" / "baselines" / "torch_ddpm.py"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the benchmark's options to ``parser`` (sizes default to None: resolved by :func:`resolve`)."""
    d = DEFAULTS
    parser.add_argument("--n", type=int, help=f"samples drawn (default {d['n']})")
    parser.add_argument("--timesteps", type=int, help=f"diffusion steps T (default {d['timesteps']})")
    parser.add_argument("--dim", type=int, help=f"data dimension d (default {d['dim']})")
    parser.add_argument("--window", type=int, help=f"Hal window K (default {d['window']})")
    parser.add_argument("--train-batch", type=int, help=f"training batch (default {d['train_batch']})")
    parser.add_argument("--train-steps", type=int,
                        help=f"optimiser steps timed, in one dispatch (default {d['train_steps']})")
    parser.add_argument("--seeds", help=f"comma-separated seed counts S for the seeds-in-one-program measurements "
                                        f"(default {d['seeds']}; 0 or '' skips them)")
    parser.add_argument("--seed-n", type=int,
                        help=f"samples per seed in the seeds sampling measurement (default {d['seed_n']})")
    parser.add_argument("--seed-batch", type=int, default=None,
                        help="seeds vmapped together in those measurements (default: the library's, 1 on CPU "
                             "where the seeds loop inside the program, all of them on accelerators)")
    parser.add_argument("--sweep-n", help="comma-separated N for the sampling sweep (default: --n)")
    parser.add_argument("--sweep-timesteps", help="comma-separated T for the sampling sweep (default: --timesteps)")
    parser.add_argument("--sweep-dims", help=f"comma-separated d for the sampling sweep (default {d['sweep_dims']})")
    parser.add_argument("--devices", help=f"comma-separated device counts for the sampling sweep, 'all' for every "
                                          f"local device (default {d['devices']})")
    parser.add_argument("--precisions", help=f"comma-separated matmul precisions for the sampling sweep, of "
                                             f"{', '.join(PRECISIONS)} (default {d['precisions']})")
    parser.add_argument("--precision", help=f"matmul precision of the main sampling, training, matmul-peak and "
                                            f"--processes measurements, of {', '.join(PRECISIONS)} (default "
                                            f"{d['precision']}, the published; bf16 pays on CPUs with native bf16, "
                                            f"avx512_bf16 or AMX)")
    parser.add_argument("--kernels", help=f"comma-separated ways of running the network for the sampling sweep, of "
                                          f"{', '.join(KERNELS)} (pallas: the fused kernel, GPU only; default "
                                          f"{d['kernels']})")
    parser.add_argument("--chunk-size", type=int, help="samples per compiled chunk in the sampling sweep (default: "
                                                       "all N at once)")
    parser.add_argument("--repeats", type=int, help=f"timed runs after the warm-up; best reported (default "
                                                    f"{d['repeats']})")
    parser.add_argument("--compare-torch", action="store_true",
                        help="also run the eager PyTorch baseline (if torch imports) and report the speed-ups")
    parser.add_argument("--torch-baseline", type=Path, default=None,
                        help="path of torch_ddpm.py (default: ../shared/baselines/torch_ddpm.py from the repo root)")
    parser.add_argument("--torch-repeats", type=int, default=1,
                        help="runs of each torch measurement, fastest kept (default 1)")
    parser.add_argument("--processes", action="store_true",
                        help="also time whole processes (start, imports, compilation, work) at two sizes, "
                             "sampling at N / 5 and N and training 5 and 15 times --train-steps, alternated with "
                             "the torch baseline under --compare-torch: the marginal cost between the sizes and "
                             "the whole-process time (about 8 minutes at the default sizes with 2 rounds)")
    parser.add_argument("--process-rounds", type=int, default=2,
                        help="runs of each whole process with --processes, fastest kept (default 2)")
    parser.add_argument("--samplers", type=int, default=None, metavar="STEPS",
                        help="also compare every registered sampler at N samples: ddpm over all T steps, the others "
                             "over STEPS timesteps (throughput and network evaluations per sample)")
    parser.add_argument("--skip", default="",
                        help="comma-separated measurements to skip: " + ", ".join(MEASUREMENTS))
    parser.add_argument("--quiet-wait", type=float, default=0.0,
                        help="on a shared machine, wait up to this many seconds before each measurement for other "
                             "processes to go quiet (default 0: do not wait)")
    parser.add_argument("--json-out", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a few seconds), for tests")
    parser.add_argument("--images", action="store_true",
                        help="the image workloads instead (benchmarks/bench_images.py): the UNet's Adam step, sampling with "
                             "Hal on images and its compiled memory at T and 10 T; with --compare-torch beside "
                             "torch_unet.py (default sizes: its own, C=16, mults 1,2,2, 32 x 32, batch 64, N=256, "
                             "T=50)")
    parser.add_argument("--image-options", default="",
                        help="image sizes to change, e.g. size=32,channels=16,mults=1:2:2,batch=64,n=256,timesteps=50; "
                             "also res_blocks, groups, attn_levels (e.g. 2, or 1:2) and dropout (the paper "
                             "family: size=64,channels=64,mults=1:2:2:2,res_blocks=2,groups=32,attn_levels=2,"
                             "dropout=0.1,batch=128)")
    return parser


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """Fill the sizes left unset from ``DEFAULTS`` (or ``QUICK`` with ``--quick``)."""
    base = QUICK if getattr(args, "quick", False) else DEFAULTS
    values = vars(args).copy()
    for name, value in base.items():
        if values.get(name) is None:
            values[name] = value
    seeds = values["seeds"]
    if isinstance(seeds, str):
        seeds = [int(s) for s in seeds.replace(" ", "").split(",") if s]
    values["seeds"] = [s for s in seeds if s > 0]
    values.setdefault("compare_torch", False)
    values.setdefault("torch_baseline", None)
    values.setdefault("torch_repeats", 1)
    values.setdefault("json_out", None)
    values.setdefault("quiet_wait", 0.0)
    values.setdefault("seed_batch", None)
    values.setdefault("samplers", None)
    values.setdefault("processes", False)
    values.setdefault("process_rounds", 2)
    if values["process_rounds"] < 1:
        raise ValueError(f"--process-rounds must be >= 1, got {values['process_rounds']}")
    values["sweep_n"] = _ints(values["sweep_n"], "sweep-n") if values["sweep_n"] else [values["n"]]
    values["sweep_timesteps"] = (_ints(values["sweep_timesteps"], "sweep-timesteps") if values["sweep_timesteps"]
                                 else [values["timesteps"]])
    values["sweep_dims"] = _ints(values["sweep_dims"], "sweep-dims")
    values["devices"] = _device_counts(values["devices"])
    precisions = _items(values["precisions"])
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"--precisions must name some of {', '.join(PRECISIONS)}, got {values['precisions']!r}")
    values["precisions"] = list(dict.fromkeys(precisions))
    if values["precision"] not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {values['precision']!r}")
    kernels = _items(values["kernels"])
    if not kernels or any(k not in KERNELS for k in kernels):
        raise ValueError(f"--kernels must name some of {', '.join(KERNELS)}, got {values['kernels']!r}")
    values["kernels"] = list(dict.fromkeys(kernels))
    if values["chunk_size"] is not None and values["chunk_size"] <= 0:
        raise ValueError(f"--chunk-size must be > 0, got {values['chunk_size']}")
    skip = values.get("skip") or ""
    values["skip"] = set(skip.split(",")) - {""} if isinstance(skip, str) else set(skip)
    unknown = sorted(values["skip"] - set(MEASUREMENTS))
    if unknown:
        raise ValueError(f"--skip names unknown measurements ({', '.join(unknown)}); choose from {', '.join(MEASUREMENTS)}")
    for name in ("n", "timesteps", "dim", "train_batch", "train_steps", "seed_n", "repeats"):
        if values[name] <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {values[name]}")
    return argparse.Namespace(**values)


def _items(text) -> list[str]:
    if isinstance(text, (list, tuple)):
        return [str(v) for v in text]
    return [v for v in str(text).replace(" ", "").split(",") if v]


def _ints(text, name: str) -> list[int]:
    try:
        values = [int(float(v)) for v in _items(text)]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated positive integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise ValueError(f"--{name} must be comma-separated positive integers, got {text!r}")
    return list(dict.fromkeys(values))


def _device_counts(text) -> list[int]:
    """Device counts from '1,2,all' (all: every local device), deduplicated, each checked against this host."""
    available = len(jax.local_devices())
    counts = []
    for v in _items(text):
        if v == "all":
            counts.append(available)
            continue
        try:
            counts.append(int(v))
        except ValueError:
            raise ValueError(f"--devices must be comma-separated counts or 'all', got {text!r}") from None
    if not counts or min(counts) < 1 or max(counts) > available:
        raise ValueError(f"--devices {text!r}: counts must lie in 1..{available} (the local devices)")
    return list(dict.fromkeys(counts))


def _measured(fn: Callable[[], dict], quiet_wait: float) -> dict:
    """``fn()``'s figures, after waiting up to ``quiet_wait`` seconds for the machine to go quiet (0: no wait)."""
    wait = wait_for_quiet(quiet_wait) if quiet_wait > 0 else None
    out = fn()
    if wait is not None:
        out["quiet_wait"] = wait
    return out


def run(args: argparse.Namespace) -> dict:
    """Run the measurements that ``args`` asks for; print a table and one JSON line; return the results.

    Each torch measurement runs right after its mijax counterpart, so both see the same machine.
    """
    if getattr(args, "images", False):
        return run_images(args)
    a = resolve(args)
    if a.json_out:  # a report: replaced when rerun, but checked before minutes of measuring
        from mijax.store import check_writable

        check_writable(Path(a.json_out))
    results: dict[str, Any] = {"machine": machine_info(),
                               "config": {k: (sorted(v) if isinstance(v, set) else
                                              str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()}}

    def measure(fn: Callable[[], dict]) -> dict:
        return _measured(fn, a.quiet_wait)

    torch_skip, script = None, None
    if a.compare_torch:
        script = Path(a.torch_baseline) if a.torch_baseline else default_torch_baseline()
        ok, detail = (False, f"torch baseline not found at {script}") if not script.is_file() else torch_available()
        torch_skip = None if ok else detail
        results["torch"] = {"skipped": torch_skip} if torch_skip else {"version": detail, "script": str(script)}
    with_torch = a.compare_torch and not torch_skip

    if "sampling" not in a.skip:
        results["sampling"] = measure(lambda: bench_sampling(a.n, a.timesteps, a.dim, a.window, a.repeats,
                                                              precision=a.precision))
        if with_torch:
            traj = measure(lambda: bench_torch(script, "trajectory", dict(n=a.n, timesteps=a.timesteps, dim=a.dim,
                                                                           window=a.window), a.torch_repeats))
            results["torch"]["trajectory"] = traj
            results["torch"]["sampling_speedup"] = traj["seconds"] / results["sampling"]["seconds"]
            # The baseline's own time varies a lot between runs on a shared CPU: the ratio of medians too.
            results["torch"]["sampling_speedup_median"] = traj["median_seconds"] / results["sampling"]["median_seconds"]
    if a.samplers:
        results["samplers"] = bench_samplers(a.n, a.timesteps, a.dim, a.window, a.samplers, a.repeats)
    if "sweep" not in a.skip:
        results["sweep"] = bench_sampling_sweep(a.sweep_n, a.sweep_timesteps, a.sweep_dims, a.devices, a.precisions,
                                                a.window, a.repeats, measure, a.kernels, a.chunk_size)
    if "memory" not in a.skip:
        results["memory"] = bench_sampling_memory(a.n, a.timesteps, a.dim, a.window)  # compiles only: no wait
    if "training" not in a.skip:
        one = measure(lambda: bench_training(a.train_batch, a.train_steps, a.dim, None, a.timesteps, a.repeats,
                                             precision=a.precision))
        results["training"] = {"one_seed": one, "seeds": []}
        if with_torch:
            train = measure(lambda: bench_torch(script, "train", dict(batch=a.train_batch, steps=a.train_steps,
                                                                       dim=a.dim), a.torch_repeats))
            results["torch"]["train"] = train
            results["torch"]["training_speedup"] = train["ms_per_step"] / one["ms_per_step"]
        if "seeds" not in a.skip:
            for s in a.seeds:
                many = measure(lambda: bench_training(a.train_batch, a.train_steps, a.dim, s, a.timesteps, a.repeats,
                                                      seed_batch=a.seed_batch))
                many["ratio"] = many["seconds"] / (s * one["seconds"])
                results["training"]["seeds"].append(many)
    if "seeds" not in a.skip and a.seeds:
        if a.seed_n == a.n and "sampling" in results:
            one_seed = results["sampling"]
        else:
            one_seed = measure(lambda: bench_sampling(a.seed_n, a.timesteps, a.dim, a.window, a.repeats))
        results["seed_sampling"] = [
            measure(lambda: bench_seed_sampling(a.seed_n, a.timesteps, a.dim, a.window, s, a.repeats,
                                                one_seed_seconds=one_seed["seconds"], seed_batch=a.seed_batch))
            for s in a.seeds]

    if "peak" not in a.skip:  # what the network's matmuls could reach here, and what sampling and training do
        results["peak"] = {**measure(lambda: bench_matmul_peak(a.peak_rows, 128, a.peak_square, a.repeats,
                                                                  a.precision)),
                           "flops": {str(d): network_flops(d) for d in sorted({a.dim, 2})}}
    if a.processes:
        results["processes"] = run_processes(a, script if with_torch else None, measure)
    if "detectors" not in a.skip:
        results["detectors"] = [measure(lambda: bench_detectors(a.n, a.timesteps, dim, a.window, a.repeats))
                                for dim in a.sweep_dims]
    results["machine"]["host_peak_bytes"] = host_peak_bytes()
    peak = device_peak_bytes()
    if peak is not None:
        results["machine"]["device_peak_bytes_in_use"] = peak
    if hasattr(os, "getloadavg"):
        results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    results = _jsonable(results)
    print(format_table(results))
    print(json.dumps(results, sort_keys=True))
    if a.json_out:
        from mijax.store import write_text

        write_text(a.json_out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def image_options(text: str, quick: bool = False) -> dict:
    """``--image-options`` (``size=64,mults=1:2:2:2,attn_levels=2,dropout=0.1``) over the image benchmark's
    defaults (or its quick sizes); an unknown or empty key, or a value that is no number, raises ValueError."""
    from benchmarks import bench_images

    options = dict(bench_images.QUICK if quick else bench_images.DEFAULTS)
    for item in _items(text):
        name, _, value = item.partition("=")
        if name not in options or not value:
            raise ValueError(f"--image-options: unknown or empty {item!r}; the sizes are {', '.join(options)}")
        try:
            options[name] = (value.replace(":", ",") if name in ("mults", "attn_levels") else
                             float(value) if name == "dropout" else int(value))
        except ValueError:
            raise ValueError(f"--image-options: {item!r} is not a number") from None
    return options


def run_images(args: argparse.Namespace) -> dict:
    """``mijax bench --images``: :func:`benchmarks.bench_images.run_images`, printed as a table and one JSON line."""
    from benchmarks import bench_images

    options = image_options(getattr(args, "image_options", "") or "", getattr(args, "quick", False))
    repeats = args.repeats or (1 if getattr(args, "quick", False) else 3)
    script = None
    results: dict[str, Any] = {"machine": machine_info()}
    if getattr(args, "compare_torch", False):
        script = Path(args.torch_baseline) if args.torch_baseline else default_torch_baseline().with_name("torch_unet.py")
        ok, detail = (False, f"torch baseline not found at {script}") if not script.is_file() else torch_available()
        results["torch"] = {"version": detail, "script": str(script)} if ok else {"skipped": detail}
        script = script if ok else None
    wait = getattr(args, "quiet_wait", 0.0) or 0.0

    def measure(fn: Callable[[], dict]) -> dict:
        return _measured(fn, wait)

    results["images"] = bench_images.run_images(options, repeats, measure, time_best, script,
                                                getattr(args, "torch_repeats", 1) or 1, bench_torch)
    results["machine"]["host_peak_bytes"] = host_peak_bytes()
    results = _jsonable(results)
    rows = [("machine", f"{results['machine']['cpu_model']}, {results['machine']['cpu_count']} CPUs, "
                        f"{results['machine']['backend']}, jax {results['machine']['jax']}")]
    rows += bench_images.format_rows(results["images"])
    if "skipped" in results.get("torch", {}):
        rows.append(("torch baseline", f"skipped: {results['torch']['skipped']}"))
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(json.dumps(results, sort_keys=True))
    if getattr(args, "json_out", None):
        from mijax.store import write_text

        write_text(args.json_out, json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


def _jsonable(obj):
    """Plain JSON types; non-finite floats become None (JSON has no NaN)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return _jsonable(obj.item())
    return str(obj)


def _busy(r: dict) -> str:
    """A warning when other processes used the CPU during a measurement."""
    other = r.get("other_cores", r.get("process_other_cores"))
    note = f" [NOISY: other processes used {other:.1f} cores]" if other is not None and other > 0.3 else ""
    if (r.get("quiet_wait") or {}).get("quiet") is False:
        note += f" [machine not quiet after {r['quiet_wait']['waited_seconds']:.0f} s of waiting]"
    return note


def _precision(r: dict) -> str:
    """`` bf16`` etc. after a measurement's name when its matmuls were not float32."""
    p = r.get("precision", "float32")
    return "" if p == "float32" else f" {p}"


def format_table(results: dict) -> str:
    """A human-readable table of ``run``'s results."""
    rows: list[tuple[str, str]] = []
    m = results["machine"]
    rows.append(("machine", f"{m['cpu_model']}, {m['cpu_count']} CPUs, {m['backend']} ({m['device_kind']}), "
                            f"jax {m['jax']}"))
    if "sampling" in results:
        s = results["sampling"]
        rows.append((f"sampling+Hal N={s['n']} T={s['timesteps']} d={s['dim']} K={s['window']}{_precision(s)}",
                     f"{s['point_steps_per_s'] / 1e6:.3f} M point-steps/s ({s['seconds']:.3f} s; "
                     f"first call {s['first_seconds']:.1f} s){_busy(s)}"))
        if "device_peak_bytes_in_use" in s:
            rows.append(("device peak bytes in use", f"{s['device_peak_bytes_in_use'] / 2**20:.1f} MiB"))
    for r in results.get("samplers", []):
        rows.append((f"sampler {r['sampler']} N={r['n']} d={r['dim']}: {r['steps']} steps, {r['evaluations']} "
                     "evaluations", f"{r['samples_per_s']:,.0f} samples/s, {r['point_steps_per_s'] / 1e6:.3f} M "
                                    f"point-steps/s ({r['seconds']:.3f} s)"))
    for r in results.get("sweep", []):
        mem = r.get("compiled_bytes_per_device")
        peak = r.get("device_peak_bytes_in_use")
        kernel = r.get("kernel", "xla")
        if kernel != r.get("kernel_used", kernel):
            kernel += f" (ran {r['kernel_used']}: no GPU)"
        rows.append((f"sweep N={r['n']} T={r['timesteps']} d={r['dim']} devices={r['devices']} {r['precision']} "
                     f"{kernel}",
                     f"{r['point_steps_per_s'] / 1e6:.3f} M point-steps/s ({r['seconds']:.3f} s)"
                     + (f"; compiled {mem / 2**20:.2f} MiB/device" if mem is not None else "")
                     + (f"; device peak so far {peak / 2**20:.1f} MiB" if peak is not None else "") + _busy(r)))
    if "memory" in results:
        mem = results["memory"]
        if "skipped" in mem:
            rows.append(("compiled memory", f"skipped: {mem['skipped']}"))
        else:
            for part in ("short", "long"):
                r = mem[part]
                rows.append((f"compiled sampler T={r['timesteps']}",
                             f"temp {r['temp_size_in_bytes'] / 2**20:.2f} MiB, args "
                             f"{r['argument_size_in_bytes'] / 2**20:.2f} MiB, out "
                             f"{r['output_size_in_bytes'] / 2**20:.3f} MiB"))
            rows.append(("temp memory T / (T/10)", f"{mem['temp_ratio']:.3f} "
                                                   f"({'GROWS' if mem['grows_with_t'] else 'constant'} in T; a "
                                                   f"stored N x T x d trajectory would be "
                                                   f"{mem['trajectory_bytes_at_t'] / 2**20:.1f} MiB)"))
    if "training" in results:
        one = results["training"]["one_seed"]
        rows.append((f"training batch={one['batch']} d={one['dim']}{_precision(one)}",
                     f"{one['ms_per_step']:.2f} ms/step ({one['steps']} steps per dispatch){_busy(one)}"))
        for r in results["training"]["seeds"]:
            rows.append((f"training {r['num_seeds']} seeds, {r['seed_batch']} vmapped at a time",
                         f"{r['ms_per_step']:.2f} ms/step; ratio to {r['num_seeds']} x one seed {r['ratio']:.3f}"
                         f"{_busy(r)}"))
    if "peak" in results:
        pk, flops = results["peak"], results["peak"]["flops"]
        on = f" on each of {pk['devices']} devices" if pk.get("devices", 1) > 1 else ""
        rows.append((f"{pk.get('precision', 'float32')} matmul peak ({pk['rows']} x {pk['width']} @ {pk['width']} x {pk['width']}"
                     f"{on}; {pk['square']}^3)", f"{pk['network_shape_gflops']:.0f} GFLOP/s; {pk['square_gflops']:.0f} "
                                          f"GFLOP/s{_busy(pk['network_shape'])}"))
        reached = []
        for name, r in (("sampling", results.get("sampling")), ("training", results.get("training", {}).get("one_seed"))):
            f = flops.get(str(r["dim"])) if r else None
            if f:  # training: forward + backward, about 3x the forward's operations per example, each its own t
                rate, tag = ((r["point_steps_per_s"], "") if name == "sampling" else (3 * r["examples_per_s"], "_own_t"))
                reached.append(f"{name} {rate * f['per_row' + tag] / 1e9:.0f} GFLOP/s "
                               f"({rate * f['matmul_per_row' + tag] / 1e9:.0f} in matmuls)")
        if reached:
            rows.append((f"network: {flops[min(flops)]['per_row'] / 1e3:.0f} kFLOP per row (XLA count)", "; ".join(reached)))
    for r in results.get("seed_sampling", []):
        rows.append((f"sampling {r['num_seeds']} seeds, {r['seed_batch']} vmapped at a time, N={r['n']}",
                     f"{r['seconds']:.3f} s vs {r['num_seeds']} x {r['one_seed_seconds']:.3f} s; "
                     f"ratio {r['ratio']:.3f}{_busy(r)}"))
    for r in results.get("detectors", []):
        rows.append((f"all {len(r['detectors'])} detectors N={r['n']} T={r['timesteps']} d={r['dim']} K={r['window']}",
                     f"{r['all']['seconds']:.3f} s vs Hal alone {r['hal_only']['seconds']:.3f} s: "
                     f"{r['ratio']:.2f}x ({r['ratio_median']:.2f}x median){_busy(r['all'])}"))
    if "processes" in results:
        rows.extend(_process_rows(results["processes"]))
    if "torch" in results:
        t = results["torch"]
        if "skipped" in t:
            rows.append(("torch baseline", f"skipped: {t['skipped']}"))
        else:
            if "trajectory" in t:
                rows.append(("torch trajectory", f"{t['trajectory']['point_steps_per_s'] / 1e6:.3f} M point-steps/s "
                                                 f"({t['trajectory']['seconds']:.3f} s); mijax speed-up "
                                                 f"{t['sampling_speedup']:.2f}x best vs best, "
                                                 f"{t.get('sampling_speedup_median', float('nan')):.2f}x median vs "
                                                 f"median{_busy(t['trajectory'])}"))
            if "train" in t:
                rows.append(("torch train", f"{t['train']['ms_per_step']:.2f} ms/step; mijax speed-up "
                                            f"{t['training_speedup']:.2f}x{_busy(t['train'])}"))
    if "host_peak_bytes" in m:
        rows.append(("host peak memory (this process)", f"{m['host_peak_bytes'] / 2**20:.0f} MiB"))
    if "device_peak_bytes_in_use" in m:
        rows.append(("device peak memory (this process)", f"{m['device_peak_bytes_in_use'] / 2**20:.1f} MiB"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _process_rows(processes: dict) -> list[tuple[str, str]]:
    """Table rows of ``--processes``: seconds at both sizes, the marginal rate and the speed-ups."""
    rows = []
    for part, unit in (("sampling", "point-steps"), ("training", "steps")):
        r = processes[part]
        small, large = (str(s) for s in r["sizes"])
        for name, p in r["programs"].items():
            m = p["marginal_seconds_per_work"]
            rate = ("marginal: none (the larger size was not slower)" if m is None else
                    f"marginal {1 / m / 1e6:.3f} M point-steps/s" if unit == "point-steps" else
                    f"marginal {1e3 * m:.2f} ms/step")
            noisy = p.get("other_cores_max")
            rows.append((f"whole process, {part} {small} -> {large}: {name}",
                         f"{p['best'][small]:.2f} s -> {p['best'][large]:.2f} s; {rate}"
                         + (f" [NOISY: other processes used {noisy:.1f} cores]" if noisy and noisy > 0.3 else "")))
        if "speedup" in r:
            sp = r["speedup"]

            def x(v):
                return "n/a" if v is None else f"{v:.2f}x"

            rows.append((f"whole process, {part}: mijax speed-up", f"marginal {x(sp['marginal'])} (median "
                                                                  f"{x(sp['marginal_median'])}); whole process at "
                                                                  f"{large} {x(sp['whole_process'])}"))
    return rows


def main(argv: Optional[Sequence[str]] = None, parser_class=argparse.ArgumentParser) -> dict:
    """``mijax bench [options]`` (or ``python -m benchmarks.bench``); ``parser_class`` decides how bad options are
    reported (the ``mijax`` command: one line)."""
    parser = add_arguments(parser_class(prog="mijax bench", description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    main()
