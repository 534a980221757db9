"""Calibrate an image recipe: train the ``shapes`` or ``digits`` experiment's UNet with changes to its profile,
stopping at several step counts, and say after each how sharp its samples are and what the steps cost.

The run is the experiment's training run for ``--profile`` (default quick) with ``--set KEY=VALUE`` changes to
its profile (as ``mijax experiment shapes --set``: e.g. ``objective=v``, ``min_snr=5``, ``schedule=cosine``,
``channels=16``, ``batch_size=32``, ``steps=8000``), trained into ``--out/runs/<tag>`` (resumed when rerun). At
each of ``--stops`` it trains on to that step, draws ``--samples`` samples per seed with DDPM (x0_hat clipped,
as the experiments sample) and appends one JSON line to ``--out/results.jsonl``: the step, this call's training wall
time up to it, and per seed and in the mean the quality measures of the data set beside the training set's own:
SHAPES: the share well formed (valid or duplicate), the background noise, the share per counter label; digits:
the share the classifier cannot name and the Fréchet distance to held-out digits. For example:

    python -m benchmarks.calibrate_images --dataset shapes --tag v_minsnr --set objective=v --set min_snr=5 \\
        --set steps=6000 --stops 1500,3000,6000 --seeds 1 --out results/calibration-images
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from benchmarks.calibrate import record
from mijax.config import SamplerConfig, build
from mijax.experiments import common
from mijax.experiments import digits as digits_experiment
from mijax.experiments import shapes as shapes_experiment
from mijax.runs import sample_run, train_run

EXPERIMENTS = {"shapes": shapes_experiment, "digits": digits_experiment}


def _changes(items) -> dict:
    """``--set KEY=VALUE`` items as {key: value}, each value read as JSON (a number, true/false, a list) or else
    as text, as ``mijax experiment --set`` reads them."""
    changes = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        try:
            changes[key] = json.loads(value)
        except ValueError:
            changes[key] = value
    return changes


def _measure(name: str, dataset, reference=None):
    """``images [N, H, W, 1] -> the quality measures`` of the data set ``name`` (digits: against ``reference``)."""
    keys = (("well_formed_share", "background_noise", "valid_share", "duplicate_share", "outside_share",
             "malformed_share", "blank_share") if name == "shapes" else
            ("unconfident_share", "frechet", "classes_present"))

    def measure(images):
        m = dataset.measure(images, reference)
        return {k: m[k] for k in keys}
    return measure


def training_quality(name: str, dataset, n: int) -> dict:
    """The quality measures of the training set itself (SHAPES: all its images; digits: n of them, against n
    held-out digits), the floor a model's samples are held against."""
    import jax

    if name == "shapes":
        from mijax.data import shapes

        real = shapes.training_images(dataset.seed, dataset.size, dataset.num_images)
        return _measure(name, dataset)((real[..., None] / 127.5 - 1.0).astype(np.float32))
    reference = np.asarray(dataset.reference(jax.random.key(1), n))
    real = np.asarray(dataset.training_set(jax.random.key(0), min(n, dataset.training_size())))
    return _measure(name, dataset, reference)(real)


def quality(name: str, dataset, x: np.ndarray) -> list[dict]:
    """Per seed of samples x [S, N, H, W, 1], the data set's quality measures (digits: against N held-out
    digits, the draw :func:`training_quality` measures against)."""
    import jax

    reference = None if name == "shapes" else np.asarray(dataset.reference(jax.random.key(1), x.shape[1]))
    return [_measure(name, dataset, reference)(xs) for xs in x]


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", choices=sorted(EXPERIMENTS), default="shapes")
    p.add_argument("--tag", required=True, help="the run's name under OUT/runs")
    p.add_argument("--profile", default="quick", help="the experiment's profile changed (default quick)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="changes",
                   help="a change to the profile, as `mijax experiment --set`")
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--stops", default=None, help="step counts to measure at, e.g. 1500,3000 (default: the last)")
    p.add_argument("--samples", type=int, default=256, help="samples per seed at each stop")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    experiment = EXPERIMENTS[a.dataset]
    profile = common.resolve_profile(experiment.PROFILES, a.profile, a.seeds, _changes(a.changes) or None)
    config = experiment.run_config(profile)
    steps = config.train.steps
    stops = sorted({min(int(s), steps) for s in a.stops.split(",")}) if a.stops else [steps]
    run_dir = a.out / "runs" / a.tag
    dataset = build(config).dataset
    if a.dataset == "digits":  # the digits classifier is trained (or read from the cache) before any timing
        dataset.classifier(progress=True)
    real = training_quality(a.dataset, dataset, a.samples)  # once: the floor does not change between stops
    results = []
    trained = 0.0
    for stop in stops:
        began = time.perf_counter()
        train_run(run_dir, config, resume=(run_dir / "config.json").exists(), stop_at=stop, progress=True)
        trained += time.perf_counter() - began
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # an unfinished run is sampled on purpose
            drawn = sample_run(run_dir, a.samples, sampler=SamplerConfig(clip_x0=True), progress=True,
                               chunk_size=min(a.samples, profile["chunk_size"]))
        sampled = time.perf_counter() - began
        per_seed = quality(a.dataset, dataset, drawn["x"])
        results.append(record(a.out, {"dataset": a.dataset, "tag": a.tag, "profile": a.profile,
                                      "changes": _changes(a.changes),
                                      "step": int(drawn["step"]), "steps": steps, "seeds": a.seeds,
                                      "samples": a.samples, "train_seconds": round(trained, 1),
                                      "sample_seconds": round(sampled, 1), "training_set": real,
                                      "per_seed": per_seed}))
    return results


if __name__ == "__main__":
    main()
