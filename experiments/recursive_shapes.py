"""``mijax experiment recursive-shapes``: recursive training on SIMPLE SHAPES with and without Hal filtering
(the paper's SHAPES panel of claim 6).

Generation 0 trains S UNets on real SHAPES images; every later generation trains new UNets on N images
kept from the previous generation's pools of P samples by each filter (``none``, ``random``, ``variance``:
the N with the lowest Hal). The share of duplicates (two copies of a shape, :func:`mijax.data.shapes.count`)
per generation is the paper's y axis; valid, malformed and blank shares are reported beside it. The study
is :func:`mijax.recursive.run_recursive` (resumable in ``out/study``); this module holds the profiles, the
figures and the report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from mijax import plots
from mijax.data import shapes
from mijax.experiments import common
from mijax.experiments import shapes as shapes_experiment
from mijax.experiments.common import CI_TEXT
from mijax.experiments.recursive import (FILTER_COLOURS, IMAGE_STUDY, ImageStudyProfile, image_study, pool_grid,
                                         run_study, summary_tables, verdict_text)
from mijax.config import RecursiveConfig

SUMMARY = "recursive training on SHAPES: duplicate share per generation, none vs random vs variance (Hal) filtering"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 26.0 min (`/usr/bin/time`:
# 25:58).
QUICK_MINUTES: Optional[float] = 26.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecursiveShapesProfile(ImageStudyProfile):
    """recursive-shapes' sizes: an image study (:class:`~mijax.experiments.recursive.ImageStudyProfile`) in the
    ``shapes`` experiment's recipe of the same profile, Hal by strip."""


# quick: the shapes quick recipe (its UNet and optimiser) with 1,000 steps on N = 400 images per generation, pools
# of 600, T = 100 (the image schedule compressed tenfold) and Hal by strip over t = 5..14 (where the shapes quick
# sweep found Hal sharpest: t = 10..29 of 200); paper: the shapes paper recipe on the 5,000 images, for a GPU;
# smoke: the shapes smoke recipe, T = 16 (room for Hal over t = 5..14).
# Calibrated with benchmarks/calibrate_shapes.py (docs/results/calibration/shapes.jsonl; 2 seeds): at 600 steps
# 18% of generation 0's samples were valid (a cosine decay from 2e-3 gave 19%), at 1,000 steps 42%.
QUICK = RecursiveShapesProfile(**IMAGE_STUDY["quick"], seeds=2, n_train=400, steps=1_000, hal_end=5,
                               hal_reduction="region_max", chunk_size=640)
PROFILES = {
    "smoke": common.smoke(QUICK, IMAGE_STUDY["smoke"], timesteps=16),
    "quick": QUICK,
    "paper": RecursiveShapesProfile(**IMAGE_STUDY["paper"], n_train=5_000, steps=50_000, hal_reduction="region_max"),
}


def make_config(profile: str = "quick", seeds: Optional[int] = None,
                overrides: Optional[dict] = None) -> RecursiveConfig:
    """The study of a profile (``overrides``: changes to its fields): the ``shapes`` experiment's recipe of the
    same profile (same UNet, optimiser and schedule family) with this profile's N, steps, T and Hal."""
    return image_study(common.resolve_profile(PROFILES, profile, seeds, overrides),
                       common.resolve_profile(shapes_experiment.PROFILES, profile), shapes_experiment.run_config)


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    config = make_config(profile, seeds, overrides)
    return run_study(out, config, profile, progress, _figures, _report, "duplicate_share")


def _figures(out: Path, config: RecursiveConfig, result: dict) -> dict:
    figures = {}
    colours = {f"{f} filter": FILTER_COLOURS.get(f) for f in config.filters}
    for key, title in (("duplicate_share", "Duplicates (two copies of a shape) per generation"),
                       ("valid_share", "Valid images per generation")):
        series = {f"{f} filter": result["summary"][f][key] for f in config.filters}
        seeds = {f"{f} filter": [[row[key] for row in g["filters"][f]] for g in result["generations"]]
                 for f in config.filters}
        figures[key] = plots.save(plots.plot_ci_bands(
            list(range(config.generations)), series, "generation", f"% of the pool ({key.replace('_share', '')})",
            f"{title}\n(mean and 95% CI over {config.num_seeds} seeds; dots: each seed)",
            scale=100.0, colours=colours, integer_x=True, bounds=(0.0, 1.0), points=seeds), out / f"{key}.png")
    figures["samples"] = pool_grid(out / "samples.png", config, _duplicates)
    return figures


def _duplicates(pool: np.ndarray) -> str:
    return f"{100 * float(np.mean(shapes.count(pool).labels == shapes.LABELS.index('duplicate'))):.1f}% dup."


def _report(config: RecursiveConfig, m: dict, profile: str) -> str:
    r, h = config.run, config.sampler
    tables = summary_tables(config, m["summary"], ("duplicate_share", "valid_share", "well_formed_share",
                                                   "outside_share", "malformed_share", "blank_share",
                                                   "background_noise", "kept_hallucination_rate"),
                            {"background_noise": 1.0})
    verdict = verdict_text(m["verdict"])
    return f"""# Recursive training on SIMPLE SHAPES with and without Hal filtering ({profile} profile)

**Claim (paper, claim 6, SHAPES panel):** retraining on a model's own samples multiplies hallucinations;
filtering each generation's samples by Hal keeps the share of duplicates lower than filtering at random.

**Setup:** SHAPES {r.data.options['size']} x {r.data.options['size']}; N = {config.n:,} images per generation
(generation 0: real), pools of {config.pool_size:,} samples, {config.generations} generations, {config.num_seeds}
seeds, filters {', '.join(config.filters)}; a new UNet per generation ({dict(r.model.options)}), {r.train.steps:,} Adam
steps of batch {r.train.batch_size} (EMA {r.train.ema_decay:g}); T = {r.diffusion.timesteps}; Hal: {h.hal_reduction}
over t = {h.hal_end}..{h.hal_end + h.hal_window - 1}, x0_hat clipped. Shares are of each model's whole
pool (before filtering); well formed: valid or duplicate; background noise: the mean absolute deviation from
black of the pixels off the shapes ([-1, 1] scale; 0 in the training images). {CI_TEXT}. This call took {m['seconds_this_call']:.0f} s.

**Variance vs random filtering (duplicate share):** {verdict}.

![duplicates](duplicate_share.png) ![valid](valid_share.png)
![samples](samples.png)
{tables}

Per-generation data: `study/gen_XXX/metrics.json`; samples: `study/gen_XXX/pool.npz`.
"""
