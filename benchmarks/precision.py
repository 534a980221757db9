"""Matmul precision vs float32 on trained models: hallucination rate and Hal AUROC per seed.

Samples every seed of each trained run (``mijax train`` or an experiment's ``runs/`` folder) three times
with the same keys, the network's matmuls in float32, tf32 and bf16 (the sampler's arithmetic stays
float32), and checks that the tf32 and bf16 means of the hallucination rate (k = 5 std) and of the Hal
AUROC lie inside the float32 run's 95% confidence interval over seeds.

    python -m benchmarks.precision --run results/runs/gaussian1d-n20000-... --run results/runs/gaussian25-... \\
        --n 10000 --out results/precision

Writes ``metrics.json`` and ``report.md`` into ``--out``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mijax import detection
from mijax.data.mixtures import blur_adjusted_labels, labels
from mijax.config import build
from mijax.store import write_json, write_text
from mijax.runs import load_config, sample_run
from mijax.stats import format_ci, mean_ci

PRECISIONS = ("float32", "tf32", "bf16")
K = 5.0


def seed_numbers(mixture, x: np.ndarray, hal: np.ndarray, k: float = K) -> dict:
    """Per seed (x [S, N, d], hal [S, N]): hallucination rate at k std, Hal AUROC (k std and blur-adjusted)."""
    rates, aurocs, blur = [], [], []
    for xs, hs in zip(x, hal):
        pos = np.asarray(labels(mixture, xs, k))
        rates.append(float(pos.mean()))
        aurocs.append(detection.auroc(hs, pos) if 0 < pos.sum() < pos.size else float("nan"))
        b = np.asarray(blur_adjusted_labels(mixture, xs, k)[0])
        blur.append(detection.auroc(hs, b) if 0 < b.sum() < b.size else float("nan"))
    return {"rate": rates, "auroc": aurocs, "auroc_blur_adjusted": blur}


def compare(run_dir: Path, n: int, chunk_size: Optional[int], seed: int = 1) -> dict:
    config = load_config(run_dir)
    mixture = build(config).dataset.mixture
    out = {"run": str(run_dir), "dataset": config.data.dataset, "n": n, "seeds": config.seeds, "precisions": {}}
    for precision in PRECISIONS:
        t0 = time.perf_counter()
        s = sample_run(run_dir, n, seed=seed, chunk_size=chunk_size, precision=precision)
        numbers = seed_numbers(mixture, s["x"], s["hal"])
        out["precisions"][precision] = {"seconds": round(time.perf_counter() - t0, 1), "per_seed": numbers,
                                        **{key: mean_ci(v) for key, v in numbers.items()}}
    reference = out["precisions"]["float32"]
    for precision in PRECISIONS[1:]:
        p = out["precisions"][precision]
        p["within_float32_ci"] = {key: _inside(p[key]["mean"], reference[key]) for key in ("rate", "auroc",
                                                                                        "auroc_blur_adjusted")}
    return out


def _inside(value, ci: dict) -> Optional[bool]:
    if value is None or ci["low"] is None or not np.isfinite(value) or not np.isfinite(ci["low"]):
        return None
    return bool(ci["low"] <= value <= ci["high"])


def report(results: list[dict]) -> str:
    lines = ["# Matmul precision vs float32 (trained models)", "",
             "Each run's seeds sampled with the same keys in each precision (the sampler's arithmetic stays float32).",
             "Mean [95% CI] over seeds; 'inside' means the tf32 / bf16 mean lies in the float32 CI.", ""]
    for r in results:
        lines += [f"## {r['dataset']} ({r['seeds']} seeds, {r['n']:,} samples each)", "",
                  "| precision | rate beyond 5 std | Hal AUROC (k = 5) | Hal AUROC (blur-adjusted) | seconds | inside float32 CI |",
                  "|---|---|---|---|---|---|"]
        for name, p in r["precisions"].items():
            inside = p.get("within_float32_ci")
            cell = "reference" if inside is None else ", ".join(f"{k}: {v}" for k, v in inside.items())
            lines.append(f"| {name} | {format_ci(p['rate'], 100.0, 3, '%')} | {format_ci(p['auroc'], 1.0, 3)} | "
                         f"{format_ci(p['auroc_blur_adjusted'], 1.0, 3)} | {p['seconds']} | {cell} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, action="append", required=True, help="a trained run (repeatable)")
    parser.add_argument("--n", type=int, default=10_000, help="samples per seed (default 10,000)")
    parser.add_argument("--chunk-size", type=int, default=5_000)
    parser.add_argument("--out", type=Path, required=True)
    a = parser.parse_args(argv)
    results = [compare(run, a.n, a.chunk_size) for run in a.run]
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "metrics.json", results)
    text = report(results)
    write_text(a.out / "report.md", text)
    print(text)
    return results


if __name__ == "__main__":
    main()
