"""The bench UNet's Adam step under each host allocator, one process per measurement, alternated.

XLA:CPU allocates every execution's temporaries afresh (~233 MB a step for the bench UNet), so where the memory
comes from matters (``mijax.allocator``). Each round runs one process per setting, in turn:

* ``glibc``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (what the ``mijax`` program gave itself before mimalloc);
* ``mimalloc``: the cmeel-mimalloc wheel's library preloaded with the program's settings
  (``mijax.allocator.MIMALLOC_SETTINGS``), where installed.

Each process compiles the step, runs 3 steps, then times ``--steps`` (one jitted step per call, as
``mijax.training.train`` runs on CPU) and reports ms per step, system CPU ms per step, page faults per step
and its peak RSS (``getrusage``)::

    python -m benchmarks.allocators --rounds 4 --conv onednn --out /tmp/allocators.json
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Optional, Sequence


def child(conv: str, steps: int) -> dict:
    from mijax import execution

    execution.use_xla_cpu_kernels()  # as the mijax program runs
    import jax
    import jax.numpy as jnp

    from benchmarks import bench_images
    from mijax.models import build as build_model
    from mijax.models.denoiser import ModuleDenoiser
    from mijax.diffusion import make_schedule
    from mijax.config import TrainConfig
    from mijax.training import init_states, train_steps

    o = dict(bench_images.DEFAULTS, conv=conv)
    shape = (o["size"], o["size"], 1)
    module = build_model("unet", shape, options=bench_images._options(o))
    config = TrainConfig(steps=steps, batch_size=o["batch"], learning_rate=2e-4, steps_per_call=1)
    state = jax.tree.map(lambda a: a[0], init_states(module, config, shape, jax.random.key(0)[None]))
    data = jax.random.uniform(jax.random.key(1), (o["batch"],) + shape, jnp.float32, -1.0, 1.0)
    denoise_fn, schedule, key = ModuleDenoiser(module), make_schedule("linear", 1000, 1e-4, 0.02), jax.random.key(2)

    # train_steps directly, not bench_images.bench_unet_training: measured that way (train()'s host loop, its
    # losses and step reads) mimalloc's process showed ~150 faults a step instead of 70, blurring the comparison
    def step(state):
        return train_steps(denoise_fn, schedule, config, state, key, data, 1, False, None, None, True, None)[0]

    for _ in range(3):
        state = step(state)
    jax.block_until_ready(state)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        state = step(state)
    jax.block_until_ready(state)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"ms_per_step": 1e3 * wall / steps, "system_ms_per_step": 1e3 * (after.ru_stime - before.ru_stime) / steps,
            "user_ms_per_step": 1e3 * (after.ru_utime - before.ru_utime) / steps,
            "faults_per_step": (after.ru_minflt - before.ru_minflt) / steps, "peak_rss_mb": after.ru_maxrss / 1024}


def settings() -> dict[str, dict[str, str]]:
    """The environments compared: name -> variables added (those of mijax.allocator's restart removed first)."""
    from mijax import allocator

    out = {"glibc": {"GLIBC_TUNABLES": allocator.SETTING}}
    library = allocator.mimalloc_library()
    if library is not None:
        out["mimalloc"] = {"LD_PRELOAD": library, **allocator.MIMALLOC_SETTINGS}
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--conv", default="onednn", choices=("xla", "onednn"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.conv, a.steps)))
        return {}
    from mijax import allocator

    base = allocator.environment_as_started()
    for name in ("GLIBC_TUNABLES", "LD_PRELOAD", *allocator.MIMALLOC_SETTINGS):
        base.pop(name, None)
    base[allocator.ENV] = "0"  # no restart in the children: each runs exactly the setting given
    variants = settings()
    results: dict[str, list] = {name: [] for name in variants}
    names = list(results)
    for r in range(a.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # the order rotated each round
            command = [sys.executable, "-m", "benchmarks.allocators", "--child", "--conv", a.conv,
                       "--steps", str(a.steps)]
            proc = subprocess.run(command, env={**base, **variants[name]}, capture_output=True, text=True,
                                  check=True)
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            results[name].append(row)
            print(f"round {r + 1} {name:9s} " + "  ".join(f"{k} {v:.1f}" for k, v in row.items()), flush=True)
    out = {"conv": a.conv, "steps": a.steps, "results": results}
    if a.out:
        from mijax.store import write_json

        write_json(a.out, out)
    return out


if __name__ == "__main__":
    main()
