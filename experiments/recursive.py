"""Recursive training on generated data with and without Hal filtering (the paper's claim 6).

``mijax experiment recursive-2d`` (the paper's 2D grid) and ``recursive-1d`` (three 1D modes), and the image
studies ``recursive-shapes`` and ``recursive-digits``: the profiles of each kind of study and the configs they
make, and the report and figures of a finished :func:`mijax.recursive.run_recursive` study. The study lives in
``out/study`` and resumes there if the command is rerun after a kill.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import numpy as np

from mijax import plots
from mijax.config import DiffusionConfig, RecursiveConfig, SamplerConfig, TrainConfig, build, setting
from mijax.experiments import common
from mijax.experiments.common import CI_TEXT, QUICK_OPTIMISER, QUICK_T_POWER, field_like, optimiser_text
from mijax.store import write_json, write_text
from mijax.mixtures import mass_beyond
from mijax.recursive import read_pool, run_recursive
from mijax.stats import format_ci

SUMMARY = "recursive training on generated data: none vs random vs variance (Hal) filtering"
# The quick studies' training: the quick profiles' optimiser, and timesteps drawn as floor(T u^1.5) (small t
# more often). Their models train half the grid's 32,000 steps, and with uniform t the generation-0 2D models
# put 4.5% of their samples beyond 5 std; with t^1.5, 1.2% (Hal AUROC 0.94 against 0.89; 1D: 0.01%, 0.998;
# 4 seeds of 16,000 steps of 500 on N = 2,500, docs/results/calibration).
QUICK_TRAINING = {**QUICK_OPTIMISER, "t_power": QUICK_T_POWER}
FILTER_COLOURS = {"none": "tab:gray", "random": "tab:orange", "variance": "tab:blue", "threshold": "tab:green",
                  "certified": "tab:red"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class StudyProfile(common.Profile):
    """What the profile of every recursive study sets: its generations, the filters compared and the samples per
    compiled chunk of the pools (defaults: the paper's, :class:`~mijax.config.RecursiveConfig`'s)."""

    generations: int = field_like(RecursiveConfig, "generations", RecursiveConfig.generations)
    filters: tuple[str, ...] = field_like(RecursiveConfig, "filters", RecursiveConfig.filters)
    chunk_size: int = field_like(RecursiveConfig, "chunk_size")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureStudyProfile(common.Saving, common.Recipe, StudyProfile, common.Training):
    """The profile of a Gaussian-mixture study (``recursive-1d``, ``recursive-2d``): every generation's models
    as one run of the paper's MLP (:class:`~mijax.experiments.common.Training`,
    :class:`~mijax.experiments.common.Recipe`; N = ``n_train``) and pools of N + ``pool_extra`` samples."""

    pool_extra: int = field_like(RecursiveConfig, "pool_extra", RecursiveConfig.pool_extra)


def mixture_profiles(cls: type, paper_run: dict) -> dict[str, MixtureStudyProfile]:
    """The profiles of a Gaussian-mixture study of class ``cls`` whose paper profile trains ``paper_run``
    (``common.PAPER_1D`` or ``PAPER_2D``).

    quick (4 seeds: 4 + 4 x 2 x 2 = 20 models; 34 minutes on 2 CPU cores): N = 2,500 per generation
    (pool 5,000: the filters keep half), 16,000 Adam steps of batch 500 per model with the quick profiles'
    optimiser (``common.QUICK_OPTIMISER``) and timesteps drawn as floor(T u^1.5) (``QUICK_TRAINING``),
    3 generations, filters random and variance (the verdict's pair).
    Fewer, sharper models: at 6,000 steps the generation-0 models put 61-94% (2D) and 21% (1D) of their
    samples beyond 5 std (one seed; docs/results/calibration), so the five generations of blurred models that
    the same time bought said little about filtering. paper: the paper's sizes (2D: N = 100,000, 100,000
    steps of batch 10,000 per generation; 1D: N = 20,000, 20,000 steps), its constant Adam 1e-3, 5
    generations, filters none, random and variance. smoke: the quick study at toy sizes, 2 generations."""
    quick = cls(n_train=2_500, batch_size=500, steps=16_000, **QUICK_TRAINING, generations=3,
                filters=("random", "variance"), chunk_size=5_000, **common.QUICK_SAVING)
    return {"smoke": common.smoke(quick, generations=2, pool_extra=200), "quick": quick,
            "paper": cls(**paper_run, seeds=5, chunk_size=25_000)}


def mixture_study(p: dict, dataset: str, modes: Optional[tuple[float, ...]] = None) -> RecursiveConfig:
    """The study of a Gaussian-mixture profile ``p`` (a resolved :class:`MixtureStudyProfile`) on ``dataset``
    (``modes``: those of ``gaussian1d``): its generations' runs as :func:`mijax.experiments.common.run_config`,
    its pools drawn by DDPM as published or the reverse sampler chosen around it
    (:func:`mijax.experiments.common.with_chosen`)."""
    return RecursiveConfig(run=common.run_config(p, dataset=dataset, modes=modes), generations=p["generations"],
                           filters=p["filters"], pool_extra=p["pool_extra"], chunk_size=p["chunk_size"],
                           sampler=common.with_chosen(SamplerConfig(), p["timesteps"]))


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageStudyProfile(StudyProfile):
    """The profile of an image study (``recursive-shapes``, ``recursive-digits``): the image experiment's recipe
    of the same profile with this profile's N, steps, schedule and seeds; pools of N x ``pool_ratio`` samples,
    Hal over ``hal_window`` steps ending ``hal_end`` before the last, reduced by ``hal_reduction``."""

    n_train: int = setting(help="images per generation N (generation 0: the first N of the data set)", above=0)
    steps: int = field_like(TrainConfig, "steps")
    timesteps: int = field_like(DiffusionConfig, "timesteps")
    beta_start: float = field_like(DiffusionConfig, "beta_start")
    beta_end: float = field_like(DiffusionConfig, "beta_end")
    pool_ratio: float = field_like(RecursiveConfig, "pool_ratio", 1.5)
    hal_window: int = field_like(SamplerConfig, "hal_window", SamplerConfig.hal_window)
    hal_end: int = field_like(SamplerConfig, "hal_end", SamplerConfig.hal_end)
    hal_reduction: str = field_like(SamplerConfig, "hal_reduction", SamplerConfig.hal_reduction)


# What the image studies (recursive-shapes, recursive-digits) share per profile: quick, the generations and
# filters, and the image schedule compressed tenfold, to T = 100; paper, 3 seeds, the image DDPM's schedule,
# drawn 1,000 at a time (generations, filters, pools of 1.5 N and Hal over the last 10 steps: the
# defaults); smoke, one seed and two generations of 16 images, two steps each.
IMAGE_STUDY = {
    "smoke": {"seeds": 1, "n_train": 16, "steps": 2, "generations": 2, "chunk_size": 24},
    "quick": {"generations": 3, "filters": ("random", "variance"), "timesteps": 100, "beta_start": 1e-3,
              "beta_end": 0.2},
    "paper": {"seeds": 3, "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "chunk_size": 1_000},
}


def image_study(p: dict, recipe: dict, run_config, **recipe_changes) -> RecursiveConfig:
    """The study of an image profile ``p`` (``recursive-shapes``, ``recursive-digits``; a resolved
    :class:`ImageStudyProfile`): the image experiment's profile ``recipe`` (resolved, of the same name) with
    ``p``'s N, steps, T, betas and seeds and ``recipe_changes``, made a run by that experiment's ``run_config``;
    Hal over ``p``'s window and reduction, x0_hat clipped, by DDPM as published or the reverse sampler chosen
    around it (:func:`mijax.experiments.common.with_chosen`)."""
    recipe = {**recipe, **{k: p[k] for k in ("n_train", "steps", "timesteps", "beta_start", "beta_end", "seeds")},
              **recipe_changes}
    sampler = common.with_chosen(SamplerConfig(hal_window=p["hal_window"], hal_end=p["hal_end"],
                                               hal_reduction=p["hal_reduction"], clip_x0=True), recipe["timesteps"])
    return RecursiveConfig(run=run_config(recipe), generations=p["generations"], filters=tuple(p["filters"]),
                           pool_ratio=p["pool_ratio"], sampler=sampler, chunk_size=p["chunk_size"])


def run_mixture_study(out: Path, config: RecursiveConfig, profile: str, progress: bool = True) -> dict:
    """Run (or resume) the Gaussian-mixture study ``config`` (of profile ``profile``) in ``out/study``, then write
    figures, ``metrics.json`` and ``report.md``."""
    out = Path(out)
    t0 = time.perf_counter()
    result = run_recursive(out / "study", config, progress=progress)
    seconds = round(time.perf_counter() - t0, 1)
    figures = write_figures(out, config, result)
    verdict = variance_below_random(config, result)
    verdict_blur = variance_below_random(config, result, "hallucination_rate_blur_adjusted")
    metrics = {"profile": profile, "seconds_this_call": seconds, "verdict": verdict,
               "verdict_blur_adjusted": verdict_blur, "figures": figures, **result}
    metrics, report = common.record_sampler(metrics, _report(config, metrics, profile))
    write_text(out / "report.md", report)
    write_json(out / "metrics.json", metrics)  # last: it marks the experiment finished
    return metrics


def variance_below_random(config: RecursiveConfig, result: dict, key: str = "hallucination_rate") -> dict:
    """Whether variance filtering keeps the hallucination rate (``key``) below random filtering at every
    generation >= 1: by the means, and with non-overlapping 95% CIs."""
    summary = result["summary"]
    if ("variance" not in summary or "random" not in summary or config.generations < 2
            or key not in summary["variance"]):
        return {"means": None, "cis_separate": None, "per_generation": []}
    rows = []
    for g in range(1, config.generations):
        v, r = summary["variance"][key][g], summary["random"][key][g]
        rows.append({"generation": g, "variance": v, "random": r, "means_below": v["mean"] < r["mean"],
                     "cis_separate": bool(np.isfinite(v["high"]) and v["high"] < r["low"])})
    return {"means": all(r["means_below"] for r in rows), "cis_separate": all(r["cis_separate"] for r in rows),
            "per_generation": rows}


def run_study(out: Path, config: RecursiveConfig, profile: str, progress: bool, figures_fn, report_fn,
              key: str) -> dict:
    """Run (or resume) an image study in ``out/study``; then ``figures_fn(out, config, result)`` and the
    verdict on ``key`` (variance below random filtering), ``report.md`` by ``report_fn(config, metrics,
    profile)`` and ``metrics.json`` (last: it marks the experiment finished)."""
    from mijax.store import json_safe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = run_recursive(out / "study", config, progress=progress)
    seconds = round(time.perf_counter() - t0, 1)
    figures = figures_fn(out, config, result)
    verdict = variance_below_random(config, result, key)
    metrics = json_safe({"profile": profile, "seconds_this_call": seconds, "verdict": verdict, "figures": figures,
                         **result})
    metrics, report = common.record_sampler(metrics, report_fn(config, metrics, profile))
    write_text(out / "report.md", report)
    write_json(out / "metrics.json", metrics)
    return metrics


def verdict_text(v: dict) -> str:
    """One line on a :func:`variance_below_random` verdict."""
    if v["means"] is None:
        return "not measured (needs the variance and random filters and >= 2 generations)"
    return (f"means below at every generation >= 1: **{'yes' if v['means'] else 'no'}**; 95% CIs separate at "
            f"every generation >= 1: **{'yes' if v['cis_separate'] else 'no'}**")


def summary_tables(config: RecursiveConfig, summary: dict, keys, scale: dict) -> str:
    """Markdown tables (filter x generation, mean [95% CI]) of each of ``keys`` (``scale[key]``: 100 for
    shares, shown in %; 1 for distances)."""
    lines = []
    for key in keys:
        pct = scale.get(key, 100.0) == 100.0
        lines.append(f"\n### {key.replace('_', ' ')}\n\n| filter | "
                     + " | ".join(f"gen {g}" for g in range(config.generations)) + " |\n|---|"
                     + "---|" * config.generations)
        for name in config.filters:
            lines.append(f"| {name} | " + " | ".join(format_ci(c, scale.get(key, 100.0), 2, "%" if pct else "")
                                                    for c in summary[name][key]) + " |")
    return "".join("\n" + line for line in lines)


def pool_grid(path: Path, config: RecursiveConfig, caption, per_cell: int = 4) -> str:
    """Rows: filters; columns: generations; each cell a few of seed 0's pool images [.., H, W, 1], titled
    ``caption(pool images [P, H, W, 1]) -> str``."""
    rows, cols = len(config.filters), config.generations
    figure = plots.new_figure(1.0 * per_cell * cols / 2 + 0.5, 1.1 * rows + 0.3)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for g in range(cols):
        pools = read_pool(path.parent / "study", config, g)["x"]
        for r in range(rows):
            m = 0 if g == 0 else r * config.num_seeds
            images = pools[m, :per_cell, ..., 0]
            strip = np.concatenate([np.pad(im, ((0, 0), (0, 1)), constant_values=-1) for im in images], axis=1)
            ax = axes[r, g]
            ax.imshow(strip, cmap="gray", vmin=-1, vmax=1)
            ax.set_axis_off()
            ax.set_title(f"{config.filters[r]}, gen {g}: {caption(pools[m])}", fontsize=7)
    return plots.save(figure, path)


# ---------------------------------------------------------------------------------------------
# Figures.

def write_figures(out: Path, config: RecursiveConfig, result: dict) -> dict:
    dataset = build(config.run).dataset
    figures = {}
    for name, key, scale, ylabel, title in (
            ("rates", "hallucination_rate", 100.0, "% hallucinated (k = 5 std)", "Hallucinated samples per generation"),
            ("rates_blur_adjusted", "hallucination_rate_blur_adjusted", 100.0,
             "% hallucinated (k = 5 x each mode's spread)", "Blur-adjusted hallucinations"),
            ("modes_lost", "modes_lost", 1.0, "modes lost (mass < 10% of its share)", "Modes lost per generation"),
            ("sliced_w1", "sliced_w1", 1.0, "sliced W1 to the true law", "Distance to the true distribution")):
        series = {f"{f} filter": result["summary"][f][key] for f in config.filters}
        colours = {f"{f} filter": FILTER_COLOURS.get(f) for f in config.filters}
        figures[name] = plots.save(plots.plot_ci_bands(
            list(range(config.generations)), series, "generation", ylabel,
            f"{title} (mean, 95% CI over {config.num_seeds} seeds)", scale=scale, colours=colours, integer_x=True),
            out / f"{key}.png")
    if dataset.shape == (2,):
        figures["scatter"] = str(_scatter_grid(out / "scatter.png", config, dataset))
    else:
        figures["histograms"] = str(_histogram_grid(out / "histograms.png", config))
    return figures


def _pool(out: Path, config: RecursiveConfig, generation: int, filter_index: int, seed_index: int = 0):
    m = seed_index if generation == 0 else filter_index * config.num_seeds + seed_index
    return read_pool(out / "study", config, generation)["x"][m]


def _scatter_grid(path: Path, config: RecursiveConfig, dataset):
    means = np.asarray(dataset.mixture.means)
    rows, cols = len(config.filters), config.generations
    figure = plots.new_figure(2.2 * cols, 2.3 * rows)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for f, name in enumerate(config.filters):
        for g in range(cols):
            ax = axes[f, g]
            x = _pool(path.parent, config, g, f)[: config.n]
            bad = dataset.hallucinated(x)
            ax.scatter(x[~bad, 0], x[~bad, 1], s=0.5, alpha=0.3, color=plots.IN_SUPPORT_COLOUR, lw=0)
            ax.scatter(x[bad, 0], x[bad, 1], s=0.8, alpha=0.8, color=plots.HALLUCINATED_COLOUR, lw=0)
            ax.scatter(means[:, 0], means[:, 1], marker="x", s=6, color="black", lw=0.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal")
            ax.set_title(f"{name}, gen {g}: {100 * bad.mean():.1f}%", fontsize=7)
    return plots.save(figure, path)


def _histogram_grid(path: Path, config: RecursiveConfig):
    rows, cols = len(config.filters), config.generations
    figure = plots.new_figure(2.4 * cols, 1.9 * rows)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    for f, name in enumerate(config.filters):
        for g in range(cols):
            x = _pool(path.parent, config, g, f)[:, 0]
            axes[f, g].hist(x, bins=200, color=plots.IN_SUPPORT_COLOUR)
            axes[f, g].set_yscale("log")
            axes[f, g].set_title(f"{name}, gen {g}", fontsize=7)
    return plots.save(figure, path)


# ---------------------------------------------------------------------------------------------
# Report.

def _report(config: RecursiveConfig, m: dict, profile: str) -> str:
    r = config.run
    lines = []
    for key, scale, unit, label in (("hallucination_rate", 100.0, "%", "% hallucinated (k = 5)"),
                                    ("hallucination_rate_blur_adjusted", 100.0, "%",
                                     "% hallucinated, blur-adjusted (k = 5 x max(true std, the mode's spread in the "
                                     "model's samples))"),
                                    ("modes_lost", 1.0, "", "modes lost"),
                                    ("histogram_kl", 1.0, "", "histogram KL(true || generated)"),
                                    ("sliced_w1", 1.0, "", "sliced W1")):
        lines.append(f"\n### {label}\n\n| filter | " + " | ".join(f"gen {g}" for g in range(config.generations))
                     + " |\n|---|" + "---|" * config.generations)
        for name in config.filters:
            cells = [format_ci(c, scale, 3, unit) for c in m["summary"][name][key]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    def verdict_text(v):
        return ("not measured (needs the variance and random filters and >= 2 generations)" if v["means"] is None
                else f"means below at every generation >= 1: **{'yes' if v['means'] else 'no'}**; "
                     f"95% CIs separate at every generation >= 1: **{'yes' if v['cis_separate'] else 'no'}**")

    verdict = verdict_text(m["verdict"])
    if m.get("verdict_blur_adjusted", {}).get("means") is not None:
        verdict += f". With blur-adjusted labels: {verdict_text(m['verdict_blur_adjusted'])}"
    dataset = build(r).dataset
    k = dataset.k
    return f"""# Recursive training with and without Hal filtering ({profile} profile)

**Claim (paper, claim 6):** retraining on a model's own samples collapses; filtering each generation's
samples by Hal (keep the N lowest of N + 2,500) slows the collapse far more than keeping N at random.

**Setup:** {r.data.dataset}; N = {config.n:,} training points per generation, pool {config.pool_size:,};
{r.train.steps:,} Adam steps of batch {r.train.batch_size:,} per generation (the paper: 100,000 steps of
10,000 on N = 100,000), {optimiser_text(dataclasses.asdict(r.train))}; T = {r.diffusion.timesteps}; {config.generations} generations; {config.num_seeds} seeds;
filters {', '.join(config.filters)}. Rates are of each model's whole pool (before filtering); k = {k:g}
std (true mass beyond: {mass_beyond(k, dataset.shape[0]):.2g}). {CI_TEXT}.

**Variance vs random filtering:** {verdict}.

![rates](hallucination_rate.png) ![blur-adjusted rates](hallucination_rate_blur_adjusted.png)
![modes lost](modes_lost.png)
{''.join(chr(10) + l for l in lines)}

Per-generation data: `study/gen_XXX/metrics.json` (per seed: rates at k = 3..6, mass per mode, Hal
quantiles, accepted counts); samples: `study/gen_XXX/pool.npz`.
"""
