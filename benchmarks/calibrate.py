"""Calibrate a quick-profile training recipe: train one configuration, sample it, and say how sharp it is.

Trains ``--seeds`` models of a Gaussian mixture (the paper's MLP, T = 1000) with the given optimiser
settings into ``--out/runs/<tag>`` (reused when rerun), draws ``--n`` samples per seed with Hal, and appends
one JSON line of per-seed means to ``--out/results.jsonl``: the share of samples beyond 5 true stds of every
mode, Hal's AUROC for them, the blur-adjusted rate and AUROC, the median and widest mode's spread in the
samples over the true std, and the median and farthest mode's centre offset in true stds. How the README's
calibration table was made:

    python -m benchmarks.calibrate --tag g16_cos5e3 --dataset gaussian25 --steps 16000 --batch-size 500 \\
        --lr 5e-3 --warmup-steps 500 --lr-decay cosine --out results/calibration
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from mijax import detection
from mijax.config import build, validate_config
from mijax.data.mixtures import blur_adjusted_labels, labels, mode_offsets
from mijax.store import finite_or_none
from mijax.runs import sample_run, train_run
from mijax.experiments import common
from mijax.config import LR_DECAYS

K = 5.0


def _auroc(scores, positives):
    positives = np.asarray(positives)
    return float(detection.auroc(scores, positives)) if 0 < positives.sum() < positives.size else None


def _over_modes(values: np.ndarray, reduce) -> float | None:
    known = values[np.isfinite(values)]  # a mode without samples has no spread or offset
    return finite_or_none(reduce(known)) if known.size else None


def measure(mixture, x: np.ndarray, hal: np.ndarray) -> dict:
    """Sharpness of one model's samples x [N, d] with their Hal [N]."""
    pos = np.asarray(labels(mixture, jnp.asarray(x), K))
    blur, spreads = blur_adjusted_labels(mixture, jnp.asarray(x), K)
    spread = np.asarray(spreads) / np.asarray(mixture.stds)
    offsets = mode_offsets(mixture, x, K)
    return {"rate5": float(pos.mean()), "auroc": _auroc(hal, pos), "blur_rate": float(np.mean(blur)),
            "auroc_blur": _auroc(hal, blur), "spread_median": _over_modes(spread, np.median),
            "spread_max": _over_modes(spread, np.max), "offset_median": _over_modes(offsets, np.median),
            "offset_max": _over_modes(offsets, np.max)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tag", required=True, help="the run's name under OUT/runs")
    p.add_argument("--dataset", default="gaussian25", choices=("gaussian1d", "gaussian25", "gaussian25_rotated"))
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--batch-size", type=int, required=True)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=0)
    p.add_argument("--lr-decay", default="none", choices=LR_DECAYS)
    p.add_argument("--ema-decay", type=float, default=0.0)
    p.add_argument("--t-power", type=float, default=1.0, help="timesteps drawn as floor(T u^P); 1: uniform")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--n", type=int, default=5_000, help="samples per seed")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    profile = {"seeds": a.seeds, "timesteps": 1000, "n_train": a.n_train, "steps": a.steps, "batch_size": a.batch_size,
               "steps_per_call": 1_000, "checkpoint_every": a.steps, "learning_rate": a.lr,
               "warmup_steps": a.warmup_steps, "lr_decay": a.lr_decay, "ema_decay": a.ema_decay, "t_power": a.t_power}
    config = common.run_config(profile, dataset=a.dataset)  # the experiments' own recipe, with these settings
    validate_config(config)
    run_dir = a.out / "runs" / a.tag
    start = time.perf_counter()
    if not (run_dir / "train.json").exists():
        train_run(run_dir, config, progress=False)
    seconds = time.perf_counter() - start
    samples = sample_run(run_dir, a.n, seed=0, progress=False)
    mixture = build(config).dataset.mixture
    rows = [measure(mixture, x, h) for x, h in zip(samples["x"], samples["hal"])]
    result = {"tag": a.tag, "dataset": a.dataset, "n_train": a.n_train, "steps": a.steps, "batch_size": a.batch_size,
              "lr": a.lr, "warmup_steps": a.warmup_steps, "lr_decay": a.lr_decay, "ema_decay": a.ema_decay,
              "t_power": a.t_power, "seeds": a.seeds, "train_seconds": round(seconds, 1), "per_seed": rows}
    return record(a.out, result)


def record(out: Path, result: dict) -> dict:
    """``result`` with the mean over seeds of each measurement in ``result["per_seed"]`` (None where no seed
    has one), appended as one JSON line to ``out/results.jsonl`` and printed without the per-seed rows."""
    rows = result["per_seed"]
    for key in rows[0]:
        values = [r[key] for r in rows if r[key] is not None]
        result[key] = float(np.mean(values)) if values else None
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(result, allow_nan=False) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}))
    return result


if __name__ == "__main__":
    main()
