"""Hal on images swept over windows and reductions: the detection table, its best cell and its figures.

Shared by the image experiments (``shapes``: duplicates vs valid images; ``digits``: digits the classifier
cannot name vs those it can). Their samples come with ``hal_table`` ``[S, N, W, R]`` (every window by every
reduction, one sampling pass); an experiment says, per seed, which rows take part and which of those are
positives (``classes``: a list of ``(rows bool [N], positives bool [rows.sum()])``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from mijax import detection, plots
from mijax.config import DiffusionConfig, TrainConfig, setting
from mijax.experiments import common
from mijax.experiments.common import field_like

PUBLISHED = (0, 10)  # the published Hal window: the last 10 reverse steps, t = 9..0, reduced by the mean


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageProfile(common.Saving, common.Sampling):
    """The profile of an image experiment: S seeds of a UNet with the image DDPM's options (:func:`unet_run_config`),
    sampled with Hal over every window of ``windows`` (end, length) by every reduction (:func:`table_sampler`)."""

    seeds: int = field_like(common.Profile, "seeds", 3)
    size: int = setting(help="image height and width", above=0)
    channels: int = setting(help="the UNet's channels at the first level", above=0)
    mults: tuple[int, ...] = setting(help="the UNet's channel multiples per level")
    res_blocks: int = setting(help="the UNet's res blocks per level", above=0)
    groups: int = setting(help="GroupNorm groups", above=0)
    attn_levels: tuple[int, ...] = setting(help="the levels with self-attention")
    dropout: float = setting(help="dropout in the res blocks", low=0, below=1)
    timesteps: int = field_like(DiffusionConfig, "timesteps")
    beta_start: float = field_like(DiffusionConfig, "beta_start")
    beta_end: float = field_like(DiffusionConfig, "beta_end")
    schedule: Optional[str] = field_like(DiffusionConfig, "schedule", None, published=True)
    objective: Optional[str] = field_like(DiffusionConfig, "objective", None, published=True)
    min_snr: Optional[float] = common.published("min_snr")
    steps: int = field_like(TrainConfig, "steps")
    batch_size: int = field_like(TrainConfig, "batch_size")
    learning_rate: float = field_like(TrainConfig, "learning_rate")
    warmup_steps: int = field_like(TrainConfig, "warmup_steps")
    grad_clip: float = field_like(TrainConfig, "grad_clip", 1.0)
    ema_decay: float = field_like(TrainConfig, "ema_decay")
    lr_decay: Optional[str] = common.published("lr_decay")
    top_k: int = setting(help="k of Hal's top_k reduction", above=0)
    windows: tuple[tuple[int, int], ...] = setting(help="Hal's windows (end, length), the published (0, 10) put first")


# The image experiments' recipes (shapes and digits, each with its own UNet, data and sizes): quick, the image
# DDPM's schedule (1e-4 -> 0.02 over 1,000 steps) compressed to 200 (betas x 5), so that sampling costs a fifth,
# with a shorter warm-up and EMA for a few thousand steps; paper, the image DDPM's recipe. Windows are (end,
# length) in reverse steps. smoke: a one-level UNet trained for two steps at T = 12 (:func:`common.smoke`).
IMAGE_QUICK = {"res_blocks": 1, "attn_levels": (), "dropout": 0.0, "timesteps": 200, "beta_start": 5e-4,
               "beta_end": 0.1, "learning_rate": 1e-3, "warmup_steps": 100, "ema_decay": 0.995,
               "windows": ((0, 10), (0, 4), (4, 8), (10, 10), (20, 10), (40, 20), (0, 40)), "steps_per_call": 100}
IMAGE_PAPER = {"res_blocks": 2, "dropout": 0.1, "timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02,
               "batch_size": 128, "learning_rate": 2e-4, "ema_decay": 0.9999, "chunk_size": 1_000,
               "windows": ((0, 10), (0, 20), (20, 15), (50, 25), (100, 50), (200, 100), (0, 200)),
               "steps_per_call": 500, "checkpoint_every": 5_000}
IMAGE_SMOKE = {"seeds": 1, "channels": 8, "mults": (1,), "groups": 4, "timesteps": 12, "steps": 2, "num_samples": 24,
               "chunk_size": 24, "windows": ((0, 3), (2, 4)), "steps_per_call": 2, "checkpoint_every": 2}


def unet_run_config(data, p: dict):
    """The training run of an image experiment's profile ``p``: data set ``data`` (a DataConfig) and a UNet
    with the image DDPM's options (EMA, warm-up, clipping, dropout), shuffled batches, seeds 0..S-1; the beta
    schedule, objective, min-SNR weighting and learning-rate decay the profile names (else the published ones)."""
    from mijax.config import DiffusionConfig, ModelConfig, RunConfig
    from mijax.config import TrainConfig

    model = {k: p[k] for k in ("channels", "mults", "res_blocks", "attn_levels", "groups", "dropout")}
    diffusion = DiffusionConfig(timesteps=p["timesteps"], beta_start=p["beta_start"], beta_end=p["beta_end"],
                                **{k: p[k] for k in ("schedule", "objective") if p.get(k) is not None})
    return RunConfig(
        data=data, model=ModelConfig("unet", options=model),
        diffusion=diffusion,
        train=TrainConfig(steps=p["steps"], batch_size=min(p["batch_size"], data.n_train),
                          learning_rate=p["learning_rate"], shuffle=True, objective=diffusion.objective,
                          steps_per_call=min(p["steps_per_call"], p["steps"]), warmup_steps=p["warmup_steps"],
                          grad_clip=p["grad_clip"], ema_decay=p["ema_decay"],
                          **{k: p[k] for k in ("min_snr", "lr_decay") if p.get(k) is not None}),
        seed=0, seeds=p["seeds"], checkpoint_every=min(p["checkpoint_every"], p["steps"]))


def table_sampler(p: dict, reductions: Sequence[str]):
    """One sampling pass: x0_hat clipped, Hal over every window of ``p["windows"]`` by every reduction."""
    from mijax.config import SamplerConfig

    windows = tuple(tuple(w) for w in p["windows"])
    return SamplerConfig(hal_window=windows[0][1], hal_end=windows[0][0], hal_windows=windows[1:], clip_x0=True,
                         hal_table=tuple(reductions), hal_top_k=p["top_k"])


def start(profiles, profile: str, seeds: Optional[int], overrides: Optional[dict],
          out: Path) -> tuple[dict, Path, "common.Timer", list[tuple[int, int]]]:
    """The opening of an image experiment (:func:`mijax.experiments.common.start`) and the windows of its sweep,
    the published one first (:func:`with_published`), which also become the profile's ``windows``. Returns
    (profile, out, timer, windows)."""
    p, out, timer = common.start(profiles, profile, seeds, overrides, out)
    windows = with_published(p["windows"], p["timesteps"])
    p["windows"] = tuple(windows)
    return p, out, timer, windows


def train_and_sample(out: Path, name: str, config, p: dict, reductions: Sequence[str], timer: "common.Timer",
                     progress: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    """Train ``config`` (resuming), then draw the profile's ``num_samples`` per seed in one pass with Hal over
    every window by every reduction (:func:`table_sampler`); lap ``timer`` after each. Returns (run_dir,
    x [S, N, H, W, C], table [S, N, W, R])."""
    run_dir = common.train(out, name, config, progress)
    timer.lap("train")
    drawn = common.sample(run_dir, p["num_samples"], table_sampler(p, reductions), chunk_size=p["chunk_size"],
                          progress=progress)
    timer.lap("sample")
    return run_dir, drawn["x"], drawn["hal_table"]


def key(window, reduction: str) -> str:
    return f"end{window[0]}_len{window[1]}_{reduction}"


def window_text(window) -> str:
    return f"t = {window[0]}..{window[0] + window[1] - 1}"


def with_published(windows, timesteps: int) -> list[tuple[int, int]]:
    """The windows with the published one first (when T allows it)."""
    windows = [tuple(int(v) for v in w) for w in windows]
    if windows[0] != PUBLISHED and PUBLISHED[1] <= timesteps:
        windows = [PUBLISHED] + [w for w in windows if w != PUBLISHED]
    return windows


def sweep(table: np.ndarray, classes: Sequence[tuple[np.ndarray, np.ndarray]], windows,
          reductions: Sequence[str]) -> dict:
    """Per (window, reduction): the detection summary of the seeds' rows pooled, the AUROC per seed with a
    CI over the seeds that have both classes, and the random filter's expectation."""
    out = {}
    for w, window in enumerate(windows):
        for r, reduction in enumerate(reductions):
            scores, positives, per_seed = [], [], []
            for s, (rows, pos) in enumerate(classes):
                hal = table[s, rows, w, r]
                scores.append(hal)
                positives.append(pos)
                per_seed.append(detection.auroc(hal, pos) if 0 < pos.sum() < pos.size else np.nan)
            pooled = detection.detection_summary(np.concatenate(scores), np.concatenate(positives))
            out[key(window, reduction)] = {"window": list(window), "reduction": reduction, **pooled,
                                           "auroc_per_seed": common.ci(per_seed, proportion=True)}
    return out


def best(results: dict) -> Optional[str]:
    """The cell with the highest pooled AUROC (None if no cell has both classes)."""
    scored = [(v["auroc"], k) for k, v in results.items() if v["auroc"] is not None]
    return max(scored)[1] if scored else None


def detects(d: dict, level: float = 0.75) -> Optional[bool]:
    """Hal detects if its pooled AUROC is at least ``level`` (None without both classes)."""
    return None if d["auroc"] is None else bool(d["auroc"] >= level)


def auroc_figure(path: Path, results: dict, windows, reductions: Sequence[str], title: str) -> str:
    grid = np.array([[results[key(w, r)]["auroc"] if results[key(w, r)]["auroc"] is not None else np.nan
                      for r in reductions] for w in windows])
    figure = plots.new_figure(5.6, 0.45 * len(windows) + 1.6)
    ax = figure.subplots()
    image = ax.imshow(grid, vmin=0.5, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.8 else "black")
    ax.set_xticks(range(len(reductions)), reductions)
    ax.set_yticks(range(len(windows)), [window_text(w) for w in windows])
    ax.set_title(title)
    figure.colorbar(image, ax=ax)
    return plots.save(figure, path)


def hal_figures(out: Path, classes, table: np.ndarray, windows, results: dict, reductions: Sequence[str],
                names: tuple[str, str], roc_title: str, kept: str) -> dict:
    """Per reduction, the Hal histogram of negatives vs positives (``names``) at its best window, and one
    ROC figure of every reduction at its best window."""
    figures, curves = {}, {}
    for r, reduction in enumerate(reductions):
        keys = [key(w, reduction) for w in windows]
        aurocs = [results[k]["auroc"] if results[k]["auroc"] is not None else -1 for k in keys]
        w = int(np.argmax(aurocs))
        scores = np.concatenate([table[s, rows, w, r] for s, (rows, _) in enumerate(classes)])
        positives = np.concatenate([pos for _, pos in classes])
        d = results[keys[w]]
        figures[f"hal_{reduction}"] = plots.save(plots.plot_hal_histograms(
            scores, positives, threshold=d["removal_at_retention"]["threshold"],
            threshold_label=f"96% of {kept} kept", names=names,
            title=f"Hal ({reduction}, {window_text(windows[w])}): {names[0]} vs {names[1]}"), out / f"hal_{reduction}.png")
        if 0 < positives.sum() < positives.size:
            fpr, tpr, _ = detection.roc_curve(scores, positives)
            curves[f"{reduction}, {window_text(windows[w])}"] = (fpr, tpr, d["auroc"])
    if curves:
        figures["roc"] = plots.save(plots.plot_roc(curves, roc_title), out / "roc.png")
    return figures


def table_markdown(results: dict) -> str:
    """The sweep as markdown rows (window, reduction, pooled AUROC, per-seed AUROC, the operating points)."""
    def fmt(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    rows = []
    for d in results.values():
        rows.append(f"| {window_text(d['window'])} | {d['reduction']} | {fmt(d['auroc'])} | "
                    f"{common.fmt(d['auroc_per_seed'])} | {fmt(d['removal_at_retention']['removed'], 2)} | "
                    f"{fmt(d['retained_at_removal']['retained'], 2)} |")
    return ("| window | reduction | AUROC (pooled) | AUROC per seed | removed @ 96% kept | kept @ 95% removed |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows))


__all__ = ["PUBLISHED", "auroc_figure", "best", "detects", "hal_figures", "key", "start", "sweep", "table_markdown",
           "table_sampler", "train_and_sample", "unet_run_config", "window_text", "with_published"]
