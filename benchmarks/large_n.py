"""Large N on one device: ``mijax sample --n N`` in fixed-size chunks, host memory bounded by the chunk.

Trains a small run (1D modes 1, 2, 3; ``--timesteps`` diffusion steps, so that 10^7 samples take minutes on
a CPU, not hours), then runs ``mijax sample --n N --chunk-size C --out ...`` for each N in its own process
and records that process's peak resident memory (``ru_maxrss``), its wall time and the output's size. If
memory is bounded by the chunk, the peak does not grow with N although the output does.

    python -m benchmarks.large_n --out /tmp/large-n                 # N = 10^6 and 10^7, T = 20
    python -m benchmarks.large_n --out DIR --ns 1e6,1e7 --timesteps 1000 --chunk-size 1000000   # a GPU

Writes ``large_n.json`` into ``--out`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Optional, Sequence

CHILD = textwrap.dedent("""
    import json, resource, sys, time
    from mijax.cli import main
    t0 = time.perf_counter()
    code = main(sys.argv[1:])
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    print(json.dumps({"code": code, "seconds": seconds, "peak_rss_bytes": peak}))
    sys.exit(code)
""")


def measure(run: Path, n: int, chunk: int, out: Path, progress: bool = True) -> dict:
    """``mijax sample --n n`` in a fresh process: wall seconds, peak resident bytes, output bytes."""
    argv = ["sample", "--run", str(run), "--n", str(n), "--chunk-size", str(chunk), "--out", str(out),
            "--overwrite"] + ([] if progress else ["--no-progress"])
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"mijax sample --n {n} failed with exit {proc.returncode}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"n": n, "chunk_size": chunk, "seconds": round(result["seconds"], 2),
            "peak_rss_bytes": result["peak_rss_bytes"], "output_bytes": out.stat().st_size}


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--ns", default="1e6,1e7", help="comma-separated sample counts (default 1e6,1e7)")
    parser.add_argument("--timesteps", type=int, default=20, help="diffusion steps of the small run (default 20)")
    parser.add_argument("--chunk-size", type=int, default=100_000, help="samples per chunk (default 100,000)")
    parser.add_argument("--keep", action="store_true", help="keep the sample files (default: delete each)")
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args(argv)
    ns = [int(float(v)) for v in a.ns.split(",") if v]
    from mijax.config import DataConfig, DiffusionConfig, RunConfig
    from mijax.store import write_json
    from mijax.runs import train_run
    from mijax.config import TrainConfig

    run = a.out / "run"
    if not (run / "train.json").exists():
        config = RunConfig(data=DataConfig(dataset="gaussian1d", n_train=2_000),
                           diffusion=DiffusionConfig(timesteps=a.timesteps),
                           train=TrainConfig(steps=200, batch_size=1_000, steps_per_call=200), checkpoint_every=200)
        train_run(run, config, resume=True, progress=not a.no_progress)
    rows = []
    for n in ns:
        out = a.out / f"samples-n{n}.npz"
        rows.append(measure(run, n, a.chunk_size, out, progress=not a.no_progress))
        if not a.keep:
            os.unlink(out)
    import jax

    result = {"timesteps": a.timesteps, "chunk_size": a.chunk_size, "backend": jax.default_backend(),
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    write_json(a.out / "large_n.json", result)
    print(f"{'N':>12} {'seconds':>9} {'point-steps/s':>14} {'peak RSS MiB':>13} {'output MiB':>11}")
    for r in rows:
        rate = r["n"] * a.timesteps / r["seconds"]
        print(f"{r['n']:>12,} {r['seconds']:>9.1f} {rate / 1e6:>12.2f} M {r['peak_rss_bytes'] / 2**20:>13.0f} "
              f"{r['output_bytes'] / 2**20:>11.1f}")
    return result


if __name__ == "__main__":
    main()
