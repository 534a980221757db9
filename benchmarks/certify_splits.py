"""Does a certified Hal threshold hold its rate on real models? 200 random calibration / test splits per seed.

Draws ``--n`` labelled samples with Hal per seed from a trained run (every seed at once, DDPM with Hal over
the last 10 steps, :func:`mijax.runs.sample_run`), or reads a samples file (``mijax sample --out``), labels
them by the data set's own rule (the mixtures: beyond 5 stds of every mode), and for each target rate alpha
runs :func:`mijax.filters.split_check` on each seed's samples: ``--splits`` times, split them at random into a
calibration half and a test half, certify a threshold on the calibration half
(:func:`mijax.filters.certify_threshold`, Learn-then-Test at ``--delta``) and measure the hallucination rate
among the test samples it keeps. The guarantee says that rate exceeds alpha in at most a delta share of the
splits (up to binomial error); the acceptance says what it costs.

    python -m benchmarks.certify_splits --run runs/gaussian25 --n 50000 --out certify-gaussian25.json
    python -m benchmarks.certify_splits --samples samples.npz --alphas 0.01 --out certify.json

Writes one JSON (``--out``) and prints a table per alpha.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def draw(run: Optional[Path], samples: Optional[Path], n: int, seed: int, chunk_size: Optional[int],
         progress: bool) -> dict:
    """{"x" [S, n, *shape], "hal" [S, n], "seeds", "config", "seconds" (wall), "cpu_seconds" (this process's),
    "source", "sampler"} of a run or a file."""
    from mijax import evaluation, runs

    t0, cpu0 = time.perf_counter(), time.process_time()
    if samples is not None:
        s = evaluation.load_samples(samples)
        return {**s, "seconds": 0.0, "cpu_seconds": 0.0, "source": str(samples),
                "sampler": "as stored in the samples file"}
    opened = runs.Run.open(run)
    s = opened.sample(n, seed=seed, chunk_size=chunk_size, progress=progress)
    sampler = dataclasses.asdict(opened.sampler())
    return {"x": np.asarray(s["x"]), "hal": np.asarray(s["hal"]), "seeds": np.asarray(s["seeds"]),
            "config": opened.config, "seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - cpu0, 1), "source": str(run), "sampler": sampler}


def check(got: dict, alphas: Sequence[float], delta: float, splits: int) -> dict:
    """split_check per seed and alpha, and their totals over seeds."""
    from scipy import stats as scipy_stats

    from mijax import data
    from mijax.filters import split_check

    config = got["config"]
    dataset = data.make(config.data.dataset, config.data.options)
    labels = np.stack([np.asarray(dataset.hallucinated(x)) for x in got["x"]])
    result = {}
    for alpha in alphas:
        t0 = time.perf_counter()
        per_seed = [split_check(got["hal"][s], labels[s], alpha, delta, splits=splits, seed=s)
                    for s in range(labels.shape[0])]
        over, total = sum(r["over_alpha"] for r in per_seed), splits * len(per_seed)
        low = float(scipy_stats.beta.ppf(0.025, over, total - over + 1)) if over else 0.0
        high = float(scipy_stats.beta.ppf(0.975, over + 1, total - over)) if over < total else 1.0
        rates = [r["mean_test_rate"] for r in per_seed if r["mean_test_rate"] is not None]
        result[f"{alpha:g}"] = {
            "alpha": alpha, "delta": delta, "per_seed": per_seed,
            "over_alpha": over, "splits": total, "share_over_alpha": over / total, "share_ci": [low, high],
            "tolerance": delta + 3.0 * float(np.sqrt(delta * (1.0 - delta) / total)),
            "mean_accepted": float(np.mean([r["mean_accepted"] for r in per_seed])),
            "mean_test_rate": float(np.mean(rates)) if rates else None,
            "empty": sum(r["empty"] for r in per_seed),
            "seconds": round(time.perf_counter() - t0, 1)}
        result[f"{alpha:g}"]["holds"] = bool(result[f"{alpha:g}"]["share_over_alpha"]
                                             <= result[f"{alpha:g}"]["tolerance"])
    return {"labels": labels, "alphas": result}


def table(result: dict) -> str:
    lines = [f"{result['dataset']}: {result['n_per_seed']:,} samples per seed x {len(result['seeds'])} seeds "
             f"(sampled in {result['sampling_seconds']} s, {result['sampling_cpu_seconds']} s of CPU), "
             "base rate per seed "
             + ", ".join(f"{r:.4%}" for r in result["base_rate"])]
    for key, a in result["alphas"].items():
        lines.append(f"  alpha {key}, delta {a['delta']:g}: {a['over_alpha']} of {a['splits']} splits over alpha "
                     f"({a['share_over_alpha']:.3f} [{a['share_ci'][0]:.3f}, {a['share_ci'][1]:.3f}], tolerance "
                     f"{a['tolerance']:.3f}: {'holds' if a['holds'] else 'DOES NOT HOLD'}), mean acceptance "
                     f"{a['mean_accepted']:.2%}, splits keeping nothing {a['empty']}")
        for seed, r in zip(result["seeds"], a["per_seed"]):
            rate = "-" if r["mean_test_rate"] is None else f"{r['mean_test_rate']:.4%}"
            lines.append(f"    seed {seed}: over alpha {r['share_over_alpha']:.3f}, accepted {r['mean_accepted']:.2%}, "
                         f"test rate {rate}, keeping nothing {r['empty']}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a trained run: draw --n samples per seed from it")
    source.add_argument("--samples", type=Path, help="a samples file (mijax sample --out) instead")
    parser.add_argument("--n", type=int, default=10_000, help="samples per seed to draw (default 10,000)")
    parser.add_argument("--seed", type=int, default=1, help="the sampling seed (default 1)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="samples per compiled chunk (default 10,000)")
    parser.add_argument("--alphas", default="0.01,0.001", help="target rates, comma-separated (default 0.01,0.001)")
    parser.add_argument("--delta", type=float, default=0.1, help="failure probability (default 0.1)")
    parser.add_argument("--splits", type=int, default=200, help="random splits per seed (default 200)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON to write")
    parser.add_argument("--no-progress", action="store_true")
    a = parser.parse_args(argv)
    alphas = [float(v) for v in a.alphas.split(",") if v]
    import jax

    from mijax.store import write_json

    got = draw(a.run, a.samples, a.n, a.seed, a.chunk_size, not a.no_progress)
    checked = check(got, alphas, a.delta, a.splits)
    labels = checked["labels"]
    result = {"source": got["source"], "dataset": got["config"].data.dataset, "seeds": [int(s) for s in got["seeds"]],
              "n_per_seed": int(labels.shape[1]), "sampling_seed": a.seed if a.run is not None else None,
              "sampler": got["sampler"], "sampling_seconds": got["seconds"], "sampling_cpu_seconds": got["cpu_seconds"],
              "hallucinated": [int(v) for v in labels.sum(axis=1)],
              "base_rate": [float(v) for v in labels.mean(axis=1)],
              "rule": "the data set's own (dataset.hallucinated)", "splits": a.splits, "delta": a.delta,
              "alphas": checked["alphas"], "backend": jax.default_backend(), "cpu": cpu_model(),
              "cpu_count": os.cpu_count(), "date": time.strftime("%Y-%m-%d %H:%M %Z")}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(a.out, result)
    print(table(result))
    print(f"-> {a.out}")
    return result


if __name__ == "__main__":
    main()
