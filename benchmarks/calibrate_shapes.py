"""Calibrate the SHAPES quick recipe: train generation 0 of ``recursive-shapes`` (or a variant) with the given
optimiser and steps, sample its pool, and say how well-formed its samples are.

Runs one generation of the ``recursive-shapes`` quick study (its UNet, N = 400 images, T = 100, pools of 600
with Hal by strip over t = 5..14; ``--profile`` another) with ``--seeds`` seeds into ``--out/runs/<tag>``
(reused when rerun), and appends one JSON line to ``--out/results.jsonl``: per seed and in the mean, the share
of the pool per counter label (valid, duplicate, outside, malformed, blank) and Hal's AUROC for duplicates
against valid samples. How the README's SHAPES calibration table was made:

    python -m benchmarks.calibrate_shapes --tag s1000 --steps 1000 --out results/calibration-shapes
    python -m benchmarks.calibrate_shapes --tag cos2e3 --lr 2e-3 --lr-decay cosine --out results/calibration-shapes
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from benchmarks.calibrate import record
from mijax import detection
from mijax.data import shapes
from mijax.experiments import PROFILES, recursive_shapes
from mijax.store import load_npz
from mijax.recursive import gen_dir, run_recursive, validate_recursive
from mijax.config import LR_DECAYS


def _auroc(scores, positives, negatives) -> float | None:
    keep = positives | negatives
    if not (positives.any() and negatives.any()):
        return None
    return float(detection.auroc(np.asarray(scores)[keep], positives[keep]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tag", required=True, help="the study's name under OUT/runs")
    p.add_argument("--steps", type=int, default=None, help="Adam steps (default: the profile's)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: the profile's)")
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--lr-decay", default=None, choices=LR_DECAYS)
    p.add_argument("--ema-decay", type=float, default=None)
    p.add_argument("--t-power", type=float, default=None, help="timesteps drawn as floor(T u^P) (default: uniform)")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--profile", default="quick", choices=PROFILES, help="the recursive-shapes profile (and its "
                                                                         "shapes recipe) calibrated")
    p.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                   help="a field of the recursive-shapes profile (e.g. n_train=16, timesteps=12)")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    overrides = {}
    for item in a.override:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    config = recursive_shapes.make_config(a.profile, seeds=a.seeds, overrides=overrides)
    changes = {"steps": a.steps, "learning_rate": a.lr, "warmup_steps": a.warmup_steps, "lr_decay": a.lr_decay,
               "ema_decay": a.ema_decay, "t_power": a.t_power}
    train = dataclasses.replace(config.run.train, **{k: v for k, v in changes.items() if v is not None})
    run = dataclasses.replace(config.run, train=train, checkpoint_every=train.steps)
    config = dataclasses.replace(config, run=run, generations=1, filters=("random",))
    validate_recursive(config)
    study = a.out / "runs" / a.tag
    start = time.perf_counter()
    run_recursive(study, config, progress=True)
    seconds = time.perf_counter() - start
    pool = load_npz(gen_dir(study, 0) / "pool.npz")
    rows = []
    for x, hal in zip(pool["x"], pool["hal"]):
        labels = shapes.count(x).labels
        row = {f"{name}_share": float(np.mean(labels == i)) for i, name in enumerate(shapes.LABELS)}
        row["auroc_duplicate_vs_valid"] = _auroc(hal, labels == shapes.LABELS.index("duplicate"),
                                                 labels == shapes.LABELS.index("valid"))
        rows.append(row)
    t = config.run.train
    result = {"tag": a.tag, "steps": t.steps, "batch_size": t.batch_size, "lr": t.learning_rate,
              "warmup_steps": t.warmup_steps, "lr_decay": t.lr_decay, "ema_decay": t.ema_decay,
              "t_power": t.t_power, "n_train": config.n, "pool": config.pool_size, "seeds": a.seeds,
              "seconds": round(seconds, 1),
              "per_seed": rows}
    return record(a.out, result)


if __name__ == "__main__":
    main()
