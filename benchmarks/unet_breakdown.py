"""Where a UNet training step's time goes on CPU: XLA's operations one by one, page faults, and torch's profile.

Three measurements of the bench UNet (``mijax bench --images`` defaults: C = 16, mults 1,2,2, 32 x 32, batch
64; ``--image-options`` as there):

* ``whole``: the jitted loss-and-gradient program and its forward pass alone (best of ``--repeats``), and
  per call the minor page faults and the system / user CPU seconds (``getrusage``): XLA:CPU allocates each
  execution's temporaries afresh (``mijax.allocator``).
* ``operations``: every equation of the loss-and-gradient jaxpr jitted and timed alone (best of 3), summed by
  primitive, the convolutions split into forward, input gradient and weight gradient. The sum overstates
  the fused program (XLA fuses the element-wise ones), but ranks the parts.
* ``torch`` (``--torch-baseline PATH`` to ``torch_unet.py``, where torch imports): ``torch.profiler`` of the
  baseline's own training step with the same options (batch, 2 threads), operator time per step by name.

    python -m benchmarks.unet_breakdown --out /tmp/breakdown.json --torch-baseline ../shared/baselines/torch_unet.py

Run it as the ``mijax`` program runs (``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
and its allocator, ``mijax.allocator``: ``LD_PRELOAD=.../cmeel.prefix/lib/libmimalloc.so.3 MIMALLOC_PURGE_DELAY=-1
MIMALLOC_ALLOW_LARGE_OS_PAGES=1`` where the mimalloc extra is installed, else ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``)
to see what the program sees.
"""
from __future__ import annotations

import argparse
import collections
import importlib.util
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
from jax.extend import core as jcore

from benchmarks import bench, bench_images
from mijax.execution import compile_init
from mijax.store import write_json
from mijax.models import build as build_model


def _best(fn: Callable[[], object], repeats: int) -> float:
    # for the operations one by one: bench.time_best's CPU meter reads /proc/stat per call, a cost of the
    # order of the smallest operations themselves
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return best


def loss_and_grad(o: dict):
    """(value_and_grad of the mean squared error of the UNet's output against its input, params, loss): the
    network's own work of a step, without the random draws and the optimiser. The parameters are initialised
    as the library initialises a UNet (``mijax.execution.compile_init``: unoptimised on CPU, a one-off
    program)."""
    size = int(o["size"])
    module = build_model("unet", (size, size, 1), options=bench_images._options(o))
    x = jax.random.normal(jax.random.key(0), (int(o["batch"]), size, size, 1))
    t = jnp.arange(int(o["batch"]), dtype=jnp.int32) % 1000
    args = (jax.random.key(1), x[:1], t[:1])
    params = compile_init(module.init, *args)(*args)

    def loss(p):
        return jnp.mean((module.apply(p, x, t) - x) ** 2)

    return jax.value_and_grad(loss), params, loss


def whole(pieces: tuple, repeats: int) -> dict:
    """ms of the loss-and-gradient program and of the forward pass; page faults and CPU seconds per call.
    ``pieces``: :func:`loss_and_grad`'s (value_and_grad, params, loss)."""
    vg, params, loss = pieces
    step, forward = (jax.jit(fn).lower(params).compile() for fn in (vg, loss))  # compiled once, kept
    timing = bench.time_best(lambda: step(params), repeats)
    out = {"loss_and_grad_ms": 1e3 * timing["seconds"], "other_cores": timing.get("other_cores"),
           "forward_ms": 1e3 * bench.time_best(lambda: forward(params), repeats)["seconds"]}
    before = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(repeats):
        jax.block_until_ready(step(params))
    after = resource.getrusage(resource.RUSAGE_SELF)
    out.update(minor_faults_per_call=(after.ru_minflt - before.ru_minflt) / repeats,
               system_seconds_per_call=(after.ru_stime - before.ru_stime) / repeats,
               user_seconds_per_call=(after.ru_utime - before.ru_utime) / repeats)
    memory = step.memory_analysis()
    if memory is not None:
        out["temp_bytes"] = int(memory.temp_size_in_bytes)
    return out


def conv_kind(params: dict) -> str:
    """``forward``, ``input_gradient`` or ``weight_gradient`` of a ``conv_general_dilated`` that JAX's
    autodiff wrote (its dimension numbers tell them apart: the weight gradient contracts the batch, which it
    puts in the input's feature position; the input gradient runs the kernel with its features swapped)."""
    numbers = params["dimension_numbers"]
    if tuple(numbers.lhs_spec)[:2] == (3, 0):
        return "weight_gradient"
    if tuple(numbers.rhs_spec)[:2] == (2, 3):
        return "input_gradient"
    return "forward"


def operations(pieces: tuple, repeats: int = 3, limit: Optional[int] = None) -> dict:
    """Every equation of the loss-and-gradient jaxpr jitted and timed alone (best of ``repeats``), in order
    (the first ``limit``); ms summed by primitive (``conv:<kind>`` for the convolutions), with counts.
    ``pieces``: :func:`loss_and_grad`'s (value_and_grad, params, loss)."""
    vg, params, _ = pieces
    closed = jax.make_jaxpr(vg)(params)
    env = dict(zip(closed.jaxpr.constvars, closed.consts))
    env.update(zip(closed.jaxpr.invars, jax.tree.leaves(params)))
    ms, count = collections.Counter(), collections.Counter()
    for number, eqn in enumerate(closed.jaxpr.eqns):
        if limit is not None and number >= limit:
            break
        args = [v.val if isinstance(v, jcore.Literal) else env[v] for v in eqn.invars]
        fn = jax.jit(lambda *a, e=eqn: e.primitive.bind(*a, **e.params))
        out = fn(*args)
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            name = f"conv:{conv_kind(eqn.params)}"
        ms[name] += 1e3 * _best(lambda: fn(*args), repeats)
        count[name] += 1
        for var, value in zip(eqn.outvars, out if eqn.primitive.multiple_results else [out]):
            env[var] = value
    return {"equations": sum(count.values()), "total_ms": sum(ms.values()),
            "by_primitive": {k: {"ms": v, "count": count[k]} for k, v in ms.most_common()}}


def torch_profile(script: Path, o: dict, steps: int = 3) -> dict:
    """``torch.profiler`` of ``torch_unet.py``'s training step (its model and Adam, 2 threads, the same
    options and batch): operator self time per step by name, and the step's best wall time."""
    import torch
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    spec = importlib.util.spec_from_file_location("torch_unet", script)
    baseline = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(baseline)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    unet = bench_images._options(o)
    model = baseline.UNet(1, unet["channels"], unet["mults"], unet["res_blocks"], unet["attn_levels"],
                          unet["groups"], unet["dropout"])
    size, batch = int(o["size"]), int(o["batch"])
    x, t = torch.randn(batch, 1, size, size), torch.randint(0, 1000, (batch,))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-4)

    def step():
        loss = F.mse_loss(model(x, t), x)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(steps):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda r: -r.self_cpu_time_total)
    return {"step_ms": 1e3 * best, "torch": torch.__version__,
            "self_ms_per_step": {r.key: r.self_cpu_time_total / 1e3 / steps for r in rows[:25]}}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="the JSON file to write")
    p.add_argument("--image-options", default="", help="as mijax bench --image-options (default: its UNet)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls of the whole program (best kept)")
    p.add_argument("--limit", type=int, default=None, help="time only the first equations (a quick look)")
    p.add_argument("--torch-baseline", type=Path, default=None, help="torch_unet.py, for torch's profile")
    a = p.parse_args(argv)
    try:
        o = bench.image_options(a.image_options)
    except ValueError as e:
        p.error(str(e))
    if a.torch_baseline is not None and not a.torch_baseline.is_file():
        p.error(f"--torch-baseline: no file {a.torch_baseline}")
    pieces = loss_and_grad(o)  # one UNet and its parameters for both measurements
    results = {"machine": bench.machine_info(), "options": o, "whole": whole(pieces, max(1, a.repeats)),
               "operations": operations(pieces, limit=a.limit)}
    if a.torch_baseline is not None:
        results["torch"] = torch_profile(a.torch_baseline, o)
    write_json(a.out, results)
    w, ops = results["whole"], results["operations"]
    print(f"loss and gradients {w['loss_and_grad_ms']:.1f} ms, forward {w['forward_ms']:.1f} ms; "
          f"{w['minor_faults_per_call']:.0f} page faults and {w['system_seconds_per_call']:.3f} s of system time "
          f"per call")
    print(f"{ops['equations']} operations alone: {ops['total_ms']:.1f} ms")
    for name, row in list(ops["by_primitive"].items())[:12]:
        print(f"  {name:28s} {row['count']:5d}  {row['ms']:8.1f} ms")
    if "torch" in results:
        print(f"torch_unet.py step {results['torch']['step_ms']:.1f} ms; operator time per step:")
        for name, value in list(results["torch"]["self_ms_per_step"].items())[:8]:
            print(f"  {name:40s} {value:8.1f} ms")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
