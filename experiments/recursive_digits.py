"""``mijax experiment recursive-digits``: recursive training on handwritten digits with and without Hal
filtering (the paper's MNIST panel of claim 6).

Generation 0 trains S UNets on real digits (the ``digits`` experiment's recipe); every later generation
trains new UNets on N images kept from the previous generation's pools of P samples by each filter (``none``,
``random``, ``variance``: the N with the lowest Hal; ``threshold``). Per generation the data set's judge
(:meth:`mijax.data.digits.DigitsDataset.measure`) gives the Fréchet distance to the held-out digits in the
feature classifier's space (the paper's y axis), the classes present and the share of digits the classifier
cannot name. The study is :func:`mijax.recursive.run_recursive` (resumable in ``out/study``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mijax import data, plots
from mijax.experiments import common
from mijax.experiments import digits as digits_experiment
from mijax.experiments.common import CI_TEXT
from mijax.experiments.recursive import (FILTER_COLOURS, IMAGE_STUDY, ImageStudyProfile, image_study, pool_grid,
                                         run_study, summary_tables, verdict_text)
from mijax.config import RecursiveConfig

SUMMARY = "recursive training on digits: Fréchet distance per generation, none vs random vs variance (Hal) filtering"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 13.1 min (`/usr/bin/time`:
# 13:08).
QUICK_MINUTES: Optional[float] = 13.1


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecursiveDigitsProfile(ImageStudyProfile):
    """recursive-digits' sizes: an image study (:class:`~mijax.experiments.recursive.ImageStudyProfile`) in the
    ``digits`` experiment's recipe of the same profile (its data set and data options too)."""


# quick: the digits quick recipe (its UNet and optimiser on the 8 x 8 digits) with 1,200 steps on N = 700 images
# per generation, pools of 1,050 and T = 100 (the image schedule compressed tenfold, as recursive-shapes);
# paper: the digits paper recipe on mnist5k, for a GPU; smoke: the digits smoke recipe at its T = 12 (so that a
# digits smoke run before has compiled its programs).
QUICK = RecursiveDigitsProfile(**IMAGE_STUDY["quick"], seeds=3, n_train=700, steps=1_200, hal_reduction="mean",
                               chunk_size=1_050)
PROFILES = {
    "smoke": common.smoke(QUICK, IMAGE_STUDY["smoke"], timesteps=12),
    "quick": QUICK,
    "paper": RecursiveDigitsProfile(**IMAGE_STUDY["paper"], n_train=4_000, steps=30_000, hal_reduction="mean"),
}


def make_config(profile: str = "quick", seeds: Optional[int] = None,
                overrides: Optional[dict] = None) -> RecursiveConfig:
    """The study of a profile (``overrides``: changes to its fields): the ``digits`` experiment's recipe of the same
    profile with this profile's N, steps, T and Hal."""
    return image_study(common.resolve_profile(PROFILES, profile, seeds, overrides),
                       common.resolve_profile(digits_experiment.PROFILES, profile), digits_experiment.run_config)


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    config = make_config(profile, seeds, overrides)
    dataset = data.make(config.run.data.dataset, config.run.data.options)
    dataset.classifier(progress=progress)  # trained (or read) before the study, with a progress bar
    return run_study(out, config, profile, progress, _figures, _report, "frechet")


def _figures(out: Path, config: RecursiveConfig, result: dict) -> dict:
    figures = {}
    colours = {f"{f} filter": FILTER_COLOURS.get(f) for f in config.filters}
    for key, scale, ylabel, title, bounds in (
            ("frechet", 1.0, "Fréchet distance to held-out digits", "Distance to real digits per generation",
             (0.0, np.inf)),
            ("unconfident_share", 100.0, "% the classifier cannot name", "Unnamed digits per generation", (0.0, 1.0)),
            ("classes_present", 1.0, "classes present (>= 1% each)", "Classes per generation", (0.0, 10.0))):
        series = {f"{f} filter": result["summary"][f][key] for f in config.filters}
        figures[key] = plots.save(plots.plot_ci_bands(
            list(range(config.generations)), series, "generation", ylabel,
            f"{title} (mean, 95% CI over {config.num_seeds} seeds)", scale=scale, colours=colours, integer_x=True,
            bounds=bounds), out / f"{key}.png")
    figures["samples"] = pool_grid(out / "samples.png", config, lambda pool: f"{len(pool):,} samples", per_cell=6)
    return figures


def _report(config: RecursiveConfig, m: dict, profile: str) -> str:
    r, h = config.run, config.sampler
    dataset = data.make(r.data.dataset, r.data.options)
    clf = dataset.classifier()
    tables = summary_tables(config, m["summary"], ("frechet", "unconfident_share", "classes_present",
                                                   "kept_hallucination_rate"),
                            {"frechet": 1.0, "classes_present": 1.0})
    first = m["summary"][config.filters[0]]["frechet"][0]
    # the floor: as many real training digits as a pool, against held-out digits, as each pool is measured
    n = min(config.pool_size, dataset.training_size())
    real = dataset.measure(dataset.training_set(jax.random.key(0), n),
                           dataset.reference(jax.random.key(1), config.pool_size))
    return f"""# Recursive training on handwritten digits with and without Hal filtering ({profile} profile)

**Claim (paper, claim 6, MNIST panel):** retraining on a model's own samples drifts away from the data (the
distance to real digits grows); filtering each generation's samples by Hal slows the drift compared with
filtering at random.

**Setup:** {r.data.dataset} ({dataset.size} x {dataset.size}); N = {config.n:,} images per generation (generation
0: real training digits), pools of {config.pool_size:,} samples, {config.generations} generations,
{config.num_seeds} seeds, filters {', '.join(config.filters)}; a new UNet per generation ({dict(r.model.options)}),
{r.train.steps:,} Adam steps of batch {r.train.batch_size} (EMA {r.train.ema_decay:g}); T = {r.diffusion.timesteps};
Hal: {h.hal_reduction} over t = {h.hal_end}..{h.hal_end + h.hal_window - 1}, x0_hat clipped. The
judge: a CNN trained on the training split, held-out accuracy {100 * clf.accuracy:.1f}%; the Fréchet distance
is between Gaussian fits of its penultimate features of each model's whole pool and of the held-out digits (not
Inception FID; compare within this study only). Generation 0's distance: {np.round(first['mean'], 2)}. Real
training digits ({n:,}, against held-out digits): Fréchet distance {real['frechet']:.2f}, the classifier cannot name
{100 * real['unconfident_share']:.2f}%. This call
took {m['seconds_this_call']:.0f} s. {CI_TEXT}.

**Variance vs random filtering (Fréchet distance):** {verdict_text(m['verdict'])}.

![frechet](frechet.png) ![unconfident](unconfident_share.png) ![classes](classes_present.png)
![samples](samples.png)
{tables}

Per-generation data: `study/gen_XXX/metrics.json`; samples: `study/gen_XXX/pool.npz`.
"""
