"""Issue 5's accelerator targets in one prepared run: the fused kernel's correctness there, then the timings.

Written for a short loan of one GPU (the H200 targets: 10^6 x 1000 samples with Hal in <= 1 s, 10^7 in
<= 10 s, training >= 10x the published code's steps per second, 16 vmapped seeds <= 3x one). Runs the
measurements most important first, writes ``gpu_check.json`` into ``--out`` after each one (so a run cut
short keeps what it measured) and stops starting new ones after ``--budget`` seconds:

0. the kernel's compilation, each configuration (``compiles``: tf32 and bf16 in 64-row blocks of 8 warps, bf16 in
   128, float32 in 32 rows) in its own child process, all at once, killed after ``--compile-limit`` seconds: on the first H200
   loan (jax 0.11.2) float32 in 128-row blocks, then Triton's IEEE products, compiled for over 290 s (float32
   now uses three TF32 products, ``FusedDenoiser.float32_products``); on the second, those three products
   asked for 256 KiB of shared memory in 64-row blocks (227 KiB available), 64 KiB in 32 rows
   (``benchmarks/triton_compile.py --kernel``, off the device). Each precision then runs in the largest
   block that compiled in it, and precisions that compiled in none are left out of the kernel's measurements;
1. the fused Pallas kernel compiled for the GPU against the XLA path: max |difference| of eps_hat on
   random inputs (d = 1, 2; float32, tf32, bf16) and of samples and Hal over a short sampling run (T = 50:
   an untrained network's samples overflow over 1000 steps; rows that did are counted, not compared), and
   whether a row's result depends on how many rows share the call (both paths); ``xla_rows``: whether XLA's
   sampler gives the same samples in one chunk and in four (float32, tf32, bf16), the rule the CPU keeps;
2. the kernel's block size and warps, picked on a short run (N = 10^6, T = 50; bf16, its fastest precision);
3. sampling with Hal, N = 10^6, T = 1000, d = 1: XLA and the kernel in float32, tf32 and bf16; then
   N = 10^7 (chunks of 10^6) in the kernel's fastest precision;
4. ``row_blocks``: XLA's sampler at 10^6 (bf16, T = 100) with the rows in blocks through all the steps, blocks
   small enough for the L2 cache against one; ``profile``: Perfetto traces (25 sampler steps at 10^6, XLA float32 and bf16 and the kernel; 50 training
   steps) summed per process and kernel;
5. training at batch 10,000 (ms/step; float32 and tf32; float32 with the scan unrolled 5x and 25x) and the
   published code's, if ``--torch-baseline``;
6. 16 seeds in one program against one: training (float32, tf32; and a trace of the 16 seeds' float32 steps)
   and sampling;
7. d = 2 at 10^6, N = 10^7 in XLA's fastest precision, the published code's trajectory at 10^5.

``--only NAMES`` runs some of them (``STEPS``); ``--no-kernel`` leaves the kernel out.

    PYTHONPATH=. python3 -m benchmarks.gpu_check --out $OUT --budget 420 [--torch-baseline PATH]
    python -m benchmarks.gpu_check --out /tmp/g --quick      # tiny sizes: checks the script anywhere
"""
from __future__ import annotations

import argparse
import functools
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp

from benchmarks import bench
from mijax.models import FusedDenoiser, ModuleDenoiser, ToyDenoiser
from mijax.models.fused import default_blocks
from mijax.store import write_json
from mijax.config import SamplerConfig
from mijax.sampling import sample
from mijax.diffusion import make_schedule

FULL = dict(n=1_000_000, big_n=10_000_000, timesteps=1000, tune_timesteps=50, check_n=100_000, check_sample_n=10_000,
            check_timesteps=50,
            train_batch=10_000, train_steps=50, seeds=16, seed_n=100_000, repeats=2,
            blocks=((32, 4), (32, 8), (64, 4), (64, 8), (128, 8)),
            checks=((1, "float32"), (2, "float32"), (1, "tf32"), (1, "bf16")), precisions=("float32", "tf32", "bf16"),
            compiles=(("tf32", 64, 8), ("bf16", 64, 8), ("bf16", 128, 8), ("float32", 32, 8)),
            profile_xla=("float32", "bf16"), train_precisions=("float32", "tf32"), seed_precisions=("float32", "tf32"),
            unrolls=(1, 5, 25),
            row_blocks=(None, 262_144, 65_536, 16_384))
# --quick checks that every step of the script runs (the test suite's kernel tests cover every configuration).
QUICK = dict(n=512, big_n=2048, timesteps=20, tune_timesteps=5, check_n=300, check_sample_n=128, check_timesteps=10,
             train_batch=256, train_steps=2, seeds=2, seed_n=256, repeats=1, blocks=((32, 4), (64, 4)),
             checks=((1, "bf16"), (2, "float32")), precisions=("float32", "bf16"),
             compiles=(("bf16", 64, 4), ("float32", 64, 4)), profile_xla=("float32",), train_precisions=("float32",),
             seed_precisions=("float32",), unrolls=(2,), row_blocks=(None, 128))


@functools.lru_cache(maxsize=None)
def _initial_params(d: int):
    """The paper's MLP's parameters for d features at random initialisation, in one compiled program (op by
    op, a first initialisation compiles ~50 small programs, seconds in each child of ``kernel_compile``).
    The matmul precision changes no parameter: one set per d serves every precision."""
    model = ToyDenoiser(features=d)
    return jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, d)), jnp.zeros((1,), jnp.int32))


def paper_mlp(d: int, precision: str):
    """(the paper's MLP for d features in ``precision``, its parameters at random initialisation)."""
    return ToyDenoiser(features=d, precision=precision), _initial_params(d)


def kernel_check(check_n: int, sample_n: int, timesteps: int, interpret: Optional[bool],
                 checks: Sequence[tuple[int, str]] = FULL["checks"],
                 blocks: Optional[dict] = None) -> list[dict]:
    """Max |kernel - XLA| of eps_hat (random x, shared and per-row t) and of a sampling run's x and Hal, for
    each (d, precision) of ``checks``; ``blocks``: precision -> (block_rows, num_warps) (default: the
    kernel's own, ``default_blocks``)."""
    rows = []
    for d, precision in checks:
        model, params = paper_mlp(d, precision)
        block_rows, warps = (blocks or {}).get(precision, default_blocks(precision))
        fused = FusedDenoiser(model, block_rows=block_rows, num_warps=warps, interpret=interpret)
        apply, fused_fn = jax.jit(model.apply), jax.jit(fused)
        x = 2.0 * jax.random.normal(jax.random.key(1), (check_n, d))
        row = {"dim": d, "precision": precision, "rows": check_n, "kernel_ran": fused.uses_kernel,
               "block_rows": block_rows, "num_warps": warps}
        for name, t in (("shared_t", jnp.int32(500)),
                        ("per_row_t", jnp.arange(check_n, dtype=jnp.int32) % timesteps)):
            want, got = apply(params, x, t), fused_fn(params, x, t)
            row[f"max_abs_diff_{name}"] = float(jnp.max(jnp.abs(got - want)))
            row[f"max_abs_{name}"] = float(jnp.max(jnp.abs(want)))
        # Does a row's result depend on how many rows share the call (the chunk size, the device count)?
        head = min(4096, check_n // 2)
        for name, fn in (("xla", apply), ("kernel", fused_fn)):
            whole, part = fn(params, x, jnp.int32(500)), fn(params, x[:head], jnp.int32(500))
            row[f"rows_independent_of_n_{name}"] = bool(jnp.array_equal(whole[:head], part))
        if d == 1:
            # A short run: an untrained network's samples grow without bound over many steps (at T = 1000,
            # 99.7% of them overflowed in both paths on the second H200 loan, and inf - inf compares as NaN).
            schedule, config, key = make_schedule(num_timesteps=timesteps), SamplerConfig(), jax.random.key(2)
            a = sample(ModuleDenoiser(model), params, schedule, key, sample_n, (d,), config)
            b = sample(fused, params, schedule, key, sample_n, (d,), config)
            ok_xla, ok_kernel = (jnp.isfinite(r.x[:, 0]) & jnp.isfinite(r.hal) for r in (a, b))
            finite = ok_xla & ok_kernel
            diff = jnp.where(finite[:, None], jnp.abs(a.x - b.x), 0.0)
            row["sample_timesteps"] = timesteps
            row["sample_nonfinite_xla"], row["sample_nonfinite_kernel"] = int(jnp.sum(~ok_xla)), int(jnp.sum(~ok_kernel))
            row["sample_max_abs_diff_x"] = float(jnp.max(diff))
            row["sample_share_x_differs_1e-3"] = float(jnp.mean(diff > 1e-3))
            row["sample_max_rel_diff_hal"] = float(jnp.max(jnp.where(
                finite, jnp.abs(a.hal - b.hal) / jnp.maximum(a.hal, 1e-12), 0.0)))
        rows.append(row)
    return rows


STEPS = ("kernel_compile", "kernel_check", "xla_rows", "kernel_tuning", "sampling_1e6_d1", "sampling_1e7_d1", "row_blocks",
         "profile",
         "training", "seeds", "sampling_1e6_d2", "sampling_1e7_d1_xla", "torch_trajectory_1e5")
# The kernel's compilations (sizes' "compiles": precision, block_rows, num_warps) are tried first, each in a
# child process, all at once, under COMPILE_LIMIT seconds: hung compilations then cost that much, not the loan.
COMPILE_LIMIT = 60.0


def xla_rows(n: int, chunk: int, timesteps: int, precisions: Sequence[str]) -> list[dict]:
    """The reproducibility rule on this backend, in XLA's path: per precision, whether ``n`` samples drawn
    in one chunk equal the same samples drawn in chunks of ``chunk`` (x and Hal, bit for bit; d = 1, the
    paper's MLP at random initialisation, a short run so that nothing overflows), and how far apart they
    are where they are not."""
    rows = []
    for precision in precisions:
        model, params = paper_mlp(1, precision)
        schedule, key = make_schedule(num_timesteps=timesteps), jax.random.key(4)
        whole = sample(ModuleDenoiser(model), params, schedule, key, n, (1,), SamplerConfig(), chunk_size=n)
        parts = sample(ModuleDenoiser(model), params, schedule, key, n, (1,), SamplerConfig(), chunk_size=chunk)
        rows.append({"precision": precision, "n": n, "chunk_size": chunk, "timesteps": timesteps,
                     "x_equal": bool(jnp.array_equal(whole.x, parts.x)),
                     "hal_equal": bool(jnp.array_equal(whole.hal, parts.hal)),
                     "x_max_abs_diff": float(jnp.max(jnp.abs(whole.x - parts.x))),
                     "x_share_differs": float(jnp.mean(whole.x != parts.x))})
    return rows


def compile_one(precision: str, block_rows: int, num_warps: int, interpret: bool = False, n: int = 4096) -> dict:
    """Compile the fused kernel (d = 1, shared t) for one configuration, run it once, compare it with XLA."""
    model, params = paper_mlp(1, precision)
    fused = FusedDenoiser(model, block_rows=block_rows, num_warps=num_warps, interpret=True if interpret else None)
    x, t = 2.0 * jax.random.normal(jax.random.key(1), (n, 1)), jnp.int32(500)
    begin = time.perf_counter()
    compiled = jax.jit(fused).lower(params, x, t).compile()
    seconds = time.perf_counter() - begin
    got, want = compiled(params, x, t), jax.jit(model.apply)(params, x, t)
    return {"precision": precision, "block_rows": block_rows, "num_warps": num_warps, "compile_seconds": seconds,
            "kernel_ran": fused.uses_kernel, "max_abs_diff": float(jnp.max(jnp.abs(got - want)))}


def compile_in_children(configs: Sequence[tuple], limit: float, interpret: bool) -> list[dict]:
    """:func:`compile_one` for each configuration, each in its own child process, all at once; a row per
    configuration with ``status`` ok, timeout (killed ``limit`` s after the start) or error. At once, so
    that hung compilations cost ``limit`` seconds of the loan in all, not each."""
    import json
    import subprocess
    import sys

    # This process holds most of the GPU's memory already (JAX preallocates 75% at its first use): each
    # child allocates what it needs, when it needs it, or its own preallocation would fail.
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    begin = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_check", "--out", ".", "--compile-one",
                                  f"{p}:{r}:{w}"] + (["--interpret"] if interpret else []),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for p, r, w in configs]
    rows = []
    for (precision, block_rows, warps), child in zip(configs, children):
        row = {"precision": precision, "block_rows": block_rows, "num_warps": warps}
        try:
            stdout, stderr = child.communicate(timeout=max(0.0, limit - (time.perf_counter() - begin)))
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()
            rows.append({**row, "status": "timeout", "seconds": round(time.perf_counter() - begin, 1)})
            continue
        lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
        if child.returncode != 0 or not lines:
            rows.append({**row, "status": "error", "error": stderr.strip()[-1500:]})
        else:
            rows.append({**json.loads(lines[-1]), "status": "ok", "seconds": round(time.perf_counter() - begin, 1)})
    return rows


def trace_summary(fn: Callable[[], object], folder: Path, steps: int, top: int = 12) -> dict:
    """Where ``fn``'s time goes: run it once (warm), then under ``jax.profiler`` with a Perfetto trace, and
    sum the trace's complete events by process and name.

    Returns ``{"wall_us", "steps", "processes": {name: {"busy_us", "events", "top": [{"name", "count",
    "total_us", "per_step_us"}]}}}``; ``busy_us`` sums the process's events (on a GPU's device process, its
    kernels: busy_us / wall_us near 1 means the kernels themselves take the time, well below 1 means gaps
    between them, launches and host work; on the host nested events count more than once).
    """
    import collections
    import gzip
    import json

    jax.block_until_ready(fn())
    folder.mkdir(parents=True, exist_ok=True)
    begin = time.perf_counter()
    with jax.profiler.trace(str(folder), create_perfetto_trace=True):
        jax.block_until_ready(fn())
    wall = (time.perf_counter() - begin) * 1e6
    files = sorted(folder.rglob("*perfetto_trace.json.gz"), key=lambda f: f.stat().st_mtime)
    data = json.load(gzip.open(files[-1]))
    events = data["traceEvents"] if isinstance(data, dict) else data
    process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
    count, total = collections.Counter(), collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith("$"):  # "$...": the Python tracer's frames
            key = (process.get(e["pid"], str(e["pid"])), e["name"][:160])
            count[key] += 1
            total[key] += float(e.get("dur", 0.0))
    out: dict = {"wall_us": wall, "steps": steps, "processes": {}}
    for name in sorted({k[0] for k in total}):
        keys = sorted((k for k in total if k[0] == name), key=lambda k: -total[k])
        out["processes"][name] = {
            "busy_us": sum(total[k] for k in keys), "events": sum(count[k] for k in keys),
            "top": [{"name": k[1], "count": count[k], "total_us": total[k], "per_step_us": total[k] / steps}
                    for k in keys[:top]]}
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json")
    parser.add_argument("--budget", type=float, default=420.0,
                        help="start no new measurement after this many seconds (default 420)")
    parser.add_argument("--torch-baseline", type=Path, default=None, help="torch_ddpm.py, to time its training here")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script, on any machine)")
    parser.add_argument("--interpret", action="store_true",
                        help="run the kernel in Pallas' interpreter (for --quick on a machine without a GPU)")
    parser.add_argument("--no-kernel", action="store_true",
                        help="XLA only: skip the Pallas kernel's compilation, check, tuning and timings")
    parser.add_argument("--only", default="", help=f"these measurements only (comma-separated): {', '.join(STEPS)}")
    parser.add_argument("--compile-limit", type=float, default=COMPILE_LIMIT,
                        help="seconds for the kernel's trial compilations (a child process each, all at once)")
    parser.add_argument("--compile-one", default=None, help=argparse.SUPPRESS)  # PRECISION:ROWS:WARPS, in a child
    a = parser.parse_args(argv)
    if a.compile_one:
        import json

        precision, rows, warps = a.compile_one.split(":")
        print(json.dumps(compile_one(precision, int(rows), int(warps), a.interpret)), flush=True)
        return {}
    only = {n for n in a.only.split(",") if n}
    if only - set(STEPS):
        parser.error(f"--only: unknown {', '.join(sorted(only - set(STEPS)))}; the measurements are {', '.join(STEPS)}")
    s = QUICK if a.quick else FULL
    interpret = True if a.interpret else None
    a.out.mkdir(parents=True, exist_ok=True)
    path = a.out / "gpu_check.json"
    start = time.perf_counter()
    results: dict = {"machine": bench.machine_info(),
                     "sizes": {k: v for k, v in s.items() if k not in ("blocks", "checks", "precisions", "compiles",
                                                                       "profile_xla", "seed_precisions", "unrolls", "row_blocks")},
                     "budget_seconds": a.budget, "errors": {}, "skipped": []}

    def step(name: str, fn: Callable[[], object], why_not: Optional[str] = None) -> None:
        """Run one measurement unless left out or the budget is spent; keep its result or its error; save."""
        elapsed = time.perf_counter() - start
        if (only and name not in only) or why_not:
            results["skipped"].append(name if not why_not else f"{name} ({why_not})")
            return
        if elapsed > a.budget:
            results["skipped"].append(name)
            print(f"[{elapsed:6.0f} s] skip {name}: budget spent", flush=True)
            return
        print(f"[{elapsed:6.0f} s] {name} ...", flush=True)
        try:
            results[name] = bench._jsonable(fn())
        except Exception as e:  # noqa: BLE001 - record it and go on to the next measurement
            results["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
        results["elapsed_seconds"] = round(time.perf_counter() - start, 1)
        write_json(path, results)

    def compiles():
        rows = compile_in_children(s["compiles"], a.compile_limit, bool(a.interpret))
        for row in rows:
            print(f"  kernel {row['precision']} {row['block_rows']} rows: {row['status']} "
                  f"{row.get('compile_seconds', row.get('seconds', ''))}", flush=True)
        return rows

    no_kernel = "--no-kernel" if a.no_kernel else None
    step("kernel_compile", compiles, no_kernel)
    # Each precision runs with the largest block that compiled in it (a compilation's cost grows with the
    # block: float32's products are Triton's IEEE FMA loops, unrolled over the whole block).
    blocks: dict = {}
    for r in results.get("kernel_compile", []):
        if r.get("status") == "ok" and r["block_rows"] > blocks.get(r["precision"], (0, 0))[0]:
            blocks[r["precision"]] = (r["block_rows"], r["num_warps"])
    compiled = list(blocks)
    if "kernel_compile" in results and not compiled:
        no_kernel = "no configuration compiled in time"
    elif "kernel_compile" not in results and not no_kernel:
        compiled = list(s["precisions"])  # not probed (--only): trust every precision in its default block
        blocks = {p: default_blocks(p) for p in compiled}
    checks = [c for c in s["checks"] if c[1] in compiled]
    step("kernel_check", lambda: kernel_check(s["check_n"], s["check_sample_n"], s["check_timesteps"], interpret, checks,
                                              blocks),
         no_kernel or (None if checks else "no checked precision compiled"))
    step("xla_rows", lambda: xla_rows(s["check_sample_n"], s["check_sample_n"] // 4, s["check_timesteps"],
                                      s["precisions"]))
    # bf16 first: the kernel's fastest precision on the second H200 loan (2.15 s against tf32's 5.34 s)
    tune_precision = next((p for p in ("bf16", "tf32") if p in compiled), (compiled or ["bf16"])[0])
    tune_blocks = [(b, w) for b, w in s["blocks"] if b <= blocks.get(tune_precision, default_blocks(tune_precision))[0]]

    def tune():
        rows = []
        for block_rows, warps in tune_blocks:
            options = {"block_rows": block_rows, "num_warps": warps, **({"interpret": True} if interpret else {})}
            r = bench.bench_sampling(s["n"], s["tune_timesteps"], 1, 10 if s["tune_timesteps"] >= 10 else 2, 1,
                                     precision=tune_precision, kernel="pallas", kernel_options=options)
            rows.append({"block_rows": block_rows, "num_warps": warps, "seconds": r["seconds"],
                         "point_steps_per_s": r["point_steps_per_s"], "kernel_used": r["kernel_used"]})
        return rows

    step("kernel_tuning", tune, no_kernel)
    untuned = blocks.get(tune_precision, default_blocks(tune_precision))
    tuned = results.get("kernel_tuning") or [{"block_rows": untuned[0], "num_warps": untuned[1], "seconds": 0.0}]
    best = min(tuned, key=lambda r: r["seconds"])
    options = {"block_rows": best["block_rows"], "num_warps": best["num_warps"],
               **({"interpret": True} if interpret else {})}
    results["kernel_options"] = options

    def options_for(precision: str) -> dict:
        """The tuned block for the tuned precision; for another, the largest block that compiled in it."""
        if precision == tune_precision:
            return options
        rows, warps = blocks.get(precision, default_blocks(precision))
        return {"block_rows": rows, "num_warps": warps, **({"interpret": True} if interpret else {})}
    window = min(10, s["timesteps"])
    kernels = ("xla",) if no_kernel else ("xla", "pallas")

    def sampling(n: int, d: int, precisions: Sequence[str], kernel_names: Sequence[str], chunk: Optional[int],
                 repeats: int = s["repeats"]):
        return [bench.bench_sampling(n, s["timesteps"], d, window, repeats, precision=p, kernel=k,
                                     chunk_size=chunk, kernel_options=options_for(p) if k == "pallas" else None)
                for k in kernel_names for p in (precisions if k == "xla" else [q for q in precisions if q in compiled])]

    step("sampling_1e6_d1", lambda: sampling(s["n"], 1, s["precisions"], kernels, None))

    def fastest(kernel: str) -> str:
        rows = [r for r in results.get("sampling_1e6_d1", []) if r["kernel"] == kernel]
        return min(rows, key=lambda r: r["seconds"])["precision"] if rows else "tf32"

    # 10^7 in the kernel here (in XLA only at --no-kernel); in XLA (4x the kernel's time or more) near the end.
    step("sampling_1e7_d1", lambda: sampling(s["big_n"], 1, (fastest(kernels[-1]),), kernels[-1:], s["n"], 1))

    def row_blocks():
        """XLA's sampler (bf16) at N = 10^6 with each device's rows in blocks through all the steps: blocks
        whose activations fit the GPU's L2 cache (65,536 rows x 128 x 4 bytes = 32 MB) against one block."""
        return [bench.bench_sampling(s["n"], s["tune_timesteps"] * 2, 1, window, s["repeats"], precision="bf16",
                                     rows_per_block=r) for r in s["row_blocks"]]

    step("row_blocks", row_blocks)

    def profile():
        """Traces: XLA's sampler at N = 10^6 (20 steps; float32 and bf16), the kernel's (if it compiled), and
        training steps at batch 10,000."""
        steps = max(2, s["tune_timesteps"] // 2)
        schedule, key, out = make_schedule(num_timesteps=steps), jax.random.key(3), {}
        runs = [(f"sampling_xla_{p}", "xla", p) for p in s["profile_xla"]]
        runs += [(f"sampling_pallas_{tune_precision}", "pallas", tune_precision)] if not no_kernel else []
        for name, kernel, precision in runs:
            model, params = paper_mlp(1, precision)
            o = options_for(precision)
            denoise = ModuleDenoiser(model) if kernel == "xla" else FusedDenoiser(
                model, block_rows=o["block_rows"], num_warps=o["num_warps"], interpret=interpret)
            out[name] = trace_summary(lambda: sample(denoise, params, schedule, key, s["n"], (1,), SamplerConfig(
                hal_window=min(10, steps))).x, a.out / "traces" / name, steps)
        train_fn = bench.training_call(s["train_batch"], s["train_steps"])
        out["training_float32"] = trace_summary(train_fn, a.out / "traces" / "training", s["train_steps"])
        shutil.rmtree(a.out / "traces", ignore_errors=True)
        return out

    step("profile", profile)

    def training():
        out = {"mijax": [bench.bench_training(s["train_batch"], s["train_steps"], 1, None, s["timesteps"],
                                              s["repeats"], precision=p) for p in s["train_precisions"]]}
        if a.torch_baseline is not None:
            out["torch"] = bench.bench_torch(a.torch_baseline, "train", dict(batch=s["train_batch"],
                                                                             steps=s["train_steps"], dim=1))
            for row in out["mijax"]:
                out[f"speedup_{row['precision']}"] = out["torch"]["ms_per_step"] / row["ms_per_step"]
        # the while loop's cost on a GPU: the same steps with the scan unrolled (a measurement; the library keeps 1)
        out["scan_unroll"] = [bench.bench_training(s["train_batch"], s["train_steps"], 1, None, s["timesteps"],
                                                   s["repeats"], scan_unroll=k) for k in s["unrolls"]]
        return out

    step("training", training)

    def seeds():
        out = {}
        for precision in s["seed_precisions"]:
            one = bench.bench_training(s["train_batch"], s["train_steps"], 1, None, s["timesteps"], s["repeats"],
                                       precision=precision)
            many = bench.bench_training(s["train_batch"], s["train_steps"], 1, s["seeds"], s["timesteps"],
                                        s["repeats"], precision=precision)
            out[precision] = {"training_one": one, "training_many": many,
                              "training_ratio_to_one": many["seconds"] / one["seconds"]}
        sampled = bench.bench_seed_sampling(s["seed_n"], s["timesteps"], 1, window, s["seeds"], s["repeats"])
        # where the seeds' training time goes (beside profile's one seed): kernels per step, the largest
        trace = trace_summary(bench.training_call(s["train_batch"], s["train_steps"], num_seeds=s["seeds"]),
                              a.out / "traces" / "training_many", s["train_steps"])
        shutil.rmtree(a.out / "traces", ignore_errors=True)
        return {**out["float32"], **{p: out[p] for p in out if p != "float32"}, "sampling": sampled,
                "sampling_ratio_to_one": sampled["seconds"] / sampled["one_seed_seconds"],
                "profile_training_many": trace}

    step("seeds", seeds)
    step("sampling_1e6_d2", lambda: sampling(s["n"], 2, (fastest(kernels[-1]),), kernels, None))
    step("sampling_1e7_d1_xla", lambda: sampling(s["big_n"], 1, (fastest("xla"),), ("xla",), s["n"], 1),
         "10^7 in XLA measured above (no kernel)" if no_kernel else None)
    step("torch_trajectory_1e5", lambda: bench.bench_torch(a.torch_baseline, "trajectory", dict(
        n=s["n"] // 10, timesteps=s["timesteps"], dim=1, window=window)),
         None if a.torch_baseline is not None else "no --torch-baseline")
    results["machine"]["device_peak_bytes_in_use"] = bench.device_peak_bytes()
    write_json(path, bench._jsonable(results))
    print(summary(results))
    return results


def _num(value, spec: str = ".2e") -> str:
    """``value`` formatted, or ``n/a`` where the JSON holds null (a non-finite number)."""
    return "n/a" if value is None else format(value, spec)


def summary(results: dict) -> str:
    """One line per figure, for the log."""
    lines = [f"machine: {results['machine'].get('device_kind')} ({results['machine'].get('backend')}), "
             f"jax {results['machine'].get('jax')}"]
    for row in results.get("kernel_compile", []):
        lines.append(f"kernel compile {row['precision']} block_rows={row['block_rows']} warps={row['num_warps']}: "
                     f"{row['status']}" + (f" in {row['compile_seconds']:.1f} s, max diff vs XLA {_num(row['max_abs_diff'], '.1e')}"
                                          if row["status"] == "ok" else f" ({row.get('seconds', '')} s)"))
    for row in results.get("kernel_check", []):
        lines.append(f"kernel vs XLA d={row['dim']} {row['precision']}: eps max diff "
                     f"{_num(row['max_abs_diff_shared_t'])} / {_num(row['max_abs_diff_per_row_t'])}"
                     + (f"; samples (T = {row.get('sample_timesteps')}) max diff {_num(row['sample_max_abs_diff_x'])}, "
                        f"non-finite XLA {row.get('sample_nonfinite_xla')} / kernel {row.get('sample_nonfinite_kernel')}"
                        if "sample_max_abs_diff_x" in row else "") + ("" if row["kernel_ran"] else " (kernel did not run: no GPU)")
                     + f"; rows independent of N: XLA {row['rows_independent_of_n_xla']}, "
                       f"kernel {row['rows_independent_of_n_kernel']}")
    for r in results.get("xla_rows", []):
        lines.append(f"XLA samples in one chunk vs chunks of {r['chunk_size']} ({r['precision']}, N={r['n']}): "
                     f"{'bit-equal' if r['x_equal'] and r['hal_equal'] else 'differ'} "
                     f"(max |x diff| {_num(r['x_max_abs_diff'])}, {_num(r['x_share_differs'], '.1%')} of rows)")
    for name in ("sampling_1e6_d1", "sampling_1e7_d1", "sampling_1e7_d1_xla", "sampling_1e6_d2"):
        for r in results.get(name, []):
            lines.append(f"{name} {r['kernel_used']} {r['precision']}: {r['seconds']:.3f} s "
                         f"({r['point_steps_per_s'] / 1e9:.3f} G point-steps/s)")
    for r in results.get("row_blocks", []):
        lines.append(f"row blocks {r['rows_per_block'] or 'none'} ({r['precision']}, N={r['n']}, T={r['timesteps']}): "
                     f"{r['seconds']:.3f} s ({r['point_steps_per_s'] / 1e9:.3f} G point-steps/s)")
    for name, trace in (results.get("profile") or {}).items():
        for proc, p in trace["processes"].items():
            if p["top"]:
                lines.append(f"profile {name} [{proc}]: busy {p['busy_us'] / trace['wall_us']:.2f} of "
                             f"{trace['wall_us'] / 1e3:.1f} ms wall, {p['events'] / trace['steps']:.0f} events/step; top "
                             f"{p['top'][0]['name'][:60]} {p['top'][0]['per_step_us']:.0f} us/step")
    t = results.get("training")
    if t:
        for r in t["mijax"]:
            lines.append(f"training batch {r['batch']} {r['precision']}: {r['ms_per_step']:.3f} ms/step")
        for r in t.get("scan_unroll", []):
            lines.append(f"training float32, scan unrolled {r['scan_unroll']}x: {r['ms_per_step']:.3f} ms/step")
        if "torch" in t:
            speedups = ", ".join(f"{t['speedup_' + r['precision']]:.1f}x ({r['precision']})" for r in t["mijax"])
            lines.append(f"torch training: {t['torch']['ms_per_step']:.3f} ms/step; speed-up {speedups}")
    sd = results.get("seeds")
    if sd:
        lines.append(f"{sd['training_many']['num_seeds']} seeds: training {sd['training_ratio_to_one']:.2f}x one "
                     + (f"(tf32 {sd['tf32']['training_ratio_to_one']:.2f}x), " if "tf32" in sd else "")
                     + f"sampling {sd['sampling_ratio_to_one']:.2f}x one")
    traj = results.get("torch_trajectory_1e5")
    if traj:
        lines.append(f"torch trajectory N={traj['n']}: {traj['seconds']:.3f} s "
                     f"({traj['point_steps_per_s'] / 1e9:.4f} G point-steps/s)")
    for name, err in results.get("errors", {}).items():
        lines.append(f"ERROR {name}: {err[:300]}")
    if results.get("skipped"):
        lines.append(f"skipped: {', '.join(results['skipped'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
