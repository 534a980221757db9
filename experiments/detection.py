"""Claim 5b: Hal (variance of x0_hat over the last reverse steps) detects hallucinations; the paper's
headline is that a threshold removes over 95% of them while keeping 96% of in-support samples."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mijax.experiments import common
from mijax import detection, plots
from mijax.data.mixtures import blur_adjusted_labels, labels
from mijax.mixtures import mass_beyond

SUMMARY = "Hal detects hallucinations (1D, 2D): ROC/AUROC, 95%-removal / 96%-retention points, window sweep, vs random"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 0.7 min, with the models
# interp-1d and grid-2d had trained in the same folder of runs (`--runs`); alone it trains them first, a run not
# measured.
QUICK_MINUTES: Optional[float] = 0.7
QUICK_REUSES = ("interp-1d", "grid-2d")  # the experiments whose models that run reused
ENDS = (0, 10, 25, 50, 100)
LENGTHS = (5, 10, 20, 50)
DEFAULT_WINDOW = (0, 10)  # t = 9..0, the published code's


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectionProfile(common.Mixture2DProfile):
    """detection's sizes: a 1D and a 2D run, sampled with Hal over every window of the sweep that fits in T
    (:class:`~mijax.experiments.common.Mixture2DProfile`)."""


QUICK = DetectionProfile(**common.QUICK_1D, **common.two_d(common.QUICK_2D), num_samples=10_000, chunk_size=2_500,
                         **common.QUICK_OPTIMISER, **common.QUICK_SAVING)
PROFILES = {
    "smoke": common.smoke(QUICK),
    "quick": QUICK,
    "paper": DetectionProfile(**common.PAPER_1D, **common.two_d(common.PAPER_2D), num_samples=1_000_000,
                              chunk_size=50_000),
}
SETTINGS = {"1d": ("gaussian1d", (1.0, 2.0, 3.0)), "2d": ("gaussian25", None)}


def windows_for(T: int) -> list[tuple[int, int]]:
    """All (end, length) of the sweep that fit in T reverse steps; the default window first."""
    sweep = [(e, k) for e in ENDS for k in LENGTHS if e + k <= T and k <= T]
    return [DEFAULT_WINDOW] + [w for w in sweep if w != DEFAULT_WINDOW] if DEFAULT_WINDOW[1] <= T else sweep


def _seed_detection(mixture, x, hal, key) -> dict:
    """One seed's detection numbers with the default window: per k, blur-adjusted, and a random filter."""
    out = {"per_k": {}}
    for k in common.KS:
        positives = np.asarray(labels(mixture, x, k))
        d = {"k": float(k), "true_mass_beyond_k": mass_beyond(float(k), mixture.dim),
             **detection.detection_summary(hal, positives)}
        threshold = d["removal_at_retention"]["threshold"]
        removed_fraction = float(np.mean(hal >= threshold)) if threshold is not None else 0.0
        drop = np.asarray(jax.random.uniform(jax.random.fold_in(key, int(k)), (x.shape[0],))) < removed_fraction
        d["random_filter_removed"] = float(positives[drop].sum() / positives.sum()) if positives.sum() else None
        d["removed_fraction_of_all"] = removed_fraction
        out["per_k"][f"{k:g}"] = d
    blurred, spreads = blur_adjusted_labels(mixture, x, k=common.K)
    blurred = np.asarray(blurred)
    out["blur"] = {"rate": float(blurred.mean()), "auroc": _nan(detection.auroc(hal, blurred)),
                   "retained_at_removal": detection.retained_at_removal(hal, blurred, 0.95)["retained"],
                   "removal_at_retention": detection.removal_at_retention(hal, blurred, 0.96)["removed"],
                   "spread_over_std": [float(s) for s in np.asarray(spreads) / np.asarray(mixture.stds)]}
    return out


def _nan(v):
    return float(v) if v is not None else float("nan")


def _num(v):
    return float("nan") if v is None else float(v)


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    windows = windows_for(common.reverse_steps(p["timesteps"]))  # T as published, or the chosen sampler's steps
    metrics = {"experiment": "detection", "profile": p, "windows": windows, "settings": {}}
    sections = []
    for tag, (dataset, modes) in SETTINGS.items():
        config, mixture, result = common.setting_samples(out, p, tag, dataset, modes, windows, timer,
                                                         progress=progress)
        x, hals = np.asarray(result["x"]), np.asarray(result["hal"])  # [S, N, d], [S, N, W]
        S = x.shape[0]
        # A model that diverges (too few steps, say) leaves samples that are inf or NaN: counted, and left out
        # of the detection numbers (a NaN score ranks nowhere), per seed.
        finite = np.all(np.isfinite(x), axis=-1) & np.all(np.isfinite(hals), axis=-1)  # [S, N]
        xs, hs = [x[s][finite[s]] for s in range(S)], [hals[s][finite[s]] for s in range(S)]
        per_seed = [_seed_detection(mixture, xs[s], hs[s][:, 0], jax.random.key(100 + s)) for s in range(S)]
        summary = {"per_k": {}}
        for kk in per_seed[0]["per_k"]:
            rows = [ps["per_k"][kk] for ps in per_seed]
            summary["per_k"][kk] = {
                "hallucination_rate": common.ci([r["hallucination_rate"] for r in rows], proportion=True),
                "true_mass": rows[0]["true_mass_beyond_k"],
                "num_hallucinated": [r["num_hallucinated"] for r in rows],
                "auroc": common.ci([_num(r["auroc"]) for r in rows], proportion=True),
                "retained_at_95_removal": common.ci([_num(r["retained_at_removal"]["retained"]) for r in rows],
                                                    proportion=True),
                "removed_at_96_retention": common.ci([_num(r["removal_at_retention"]["removed"]) for r in rows],
                                                     proportion=True),
                "random_filter_removed": common.ci([_num(r["random_filter_removed"]) for r in rows], proportion=True),
                "removed_fraction_of_all": common.ci([r["removed_fraction_of_all"] for r in rows], proportion=True),
            }
        summary["blur_adjusted"] = {key: common.ci([ps["blur"][key] for ps in per_seed], proportion=True)
                                    for key in ("rate", "auroc", "retained_at_removal", "removal_at_retention")}
        summary["blur_adjusted"]["spread_over_std_seed0"] = per_seed[0]["blur"]["spread_over_std"]
        # The window sweep at k = 5: AUROC and the 96%-retention removal per (end, length).
        sweep = []
        for w, (end, length) in enumerate(windows):
            aur, rem = [], []
            for s in range(S):
                pos = np.asarray(labels(mixture, xs[s], common.K))
                aur.append(_num(detection.auroc(hs[s][:, w], pos)) if 0 < pos.sum() < pos.size else np.nan)
                rem.append(detection.removal_at_retention(hs[s][:, w], pos, 0.96)["removed"])
            sweep.append({"end": end, "length": length, "auroc": common.ci(aur, proportion=True),
                          "removed_at_96_retention": common.ci(rem, proportion=True)})
        summary["window_sweep"] = sweep
        summary["non_finite_samples"] = [int((~finite[s]).sum()) for s in range(S)]
        metrics["settings"][tag] = {"dataset": dataset, "n_train": config.data.n_train, "steps": config.train.steps,
                                    "t_power": config.train.t_power, **summary}
        section = _figures_and_section(out, tag, dataset, mixture, xs[0], hs[0][:, 0], summary, windows, p)
        if finite.sum() < finite.size:
            section += (f"\n\n**Diverged samples** (inf or NaN, left out of every number above), per seed: "
                        f"{', '.join(str(c) for c in summary['non_finite_samples'])} of {x.shape[1]:,}.")
        sections.append(section)
    k5 = {tag: metrics["settings"][tag]["per_k"]["5"] for tag in SETTINGS}
    headline = {tag: (v["removed_at_96_retention"]["mean"] is not None and v["removed_at_96_retention"]["mean"] >= 0.95)
                for tag, v in k5.items()}
    metrics["headline_met"] = headline
    metrics["seconds"] = timer.seconds
    report = f"""# detection: Hal separates hallucinated from in-support samples

**Claim (paper 5):** the variance of the predicted x0 over the last reverse steps (Hal; the published
code: K = 10 steps, t = 9..0) is high for hallucinated samples; a threshold on it removes over 95% of
hallucinations while retaining 96% of in-support samples on the synthetic data sets.

**Measured:** {p['seeds']} seeds per data set (one vmapped run each), {p['num_samples']:,} samples per seed, all
Hal windows computed in one sampling pass (x0_hat recorded per chunk on the device, reduced, discarded).
Labels: distance to the nearest mode > k std. {common.CI_TEXT}. Profile `{p['profile']}`:
{common.sizes_markdown(p)}.

**Headline (removes >= 95% of hallucinations while keeping 96% of in-support, k = 5):**
{'; '.join(f"{tag}: {'met' if ok else 'missed'} (removes {common.fmt(k5[tag]['removed_at_96_retention'], pct=True)})" for tag, ok in headline.items())}.

{chr(10).join(sections)}
Timing (s): {timer.seconds}.
"""
    return common.finish(out, metrics, report)


def _figures_and_section(out, tag, dataset, mixture, x, hal, summary, windows, p) -> str:
    positives = np.asarray(labels(mixture, x, common.K))
    thr = detection.removal_at_retention(hal, positives, 0.96)["threshold"]
    plots.plot_hal_histograms(hal, positives, threshold=thr, threshold_label="keeps 96% in-support",
                              title=f"{dataset}, seed 0: Hal over t = 9..0 (k = 5)", path=out / f"hal_{tag}.png")
    curves = {}
    for k in common.KS:
        pos = np.asarray(labels(mixture, x, k))
        if 0 < pos.sum() < pos.size:
            fpr, tpr, _ = detection.roc_curve(hal, pos)
            curves[f"k = {k:g}"] = (fpr, tpr, detection.auroc(hal, pos))
    blurred = np.asarray(blur_adjusted_labels(mixture, x, k=common.K)[0])
    if 0 < blurred.sum() < blurred.size:
        fpr, tpr, _ = detection.roc_curve(hal, blurred)
        curves["blur-adjusted k = 5"] = (fpr, tpr, detection.auroc(hal, blurred))
    plots.plot_roc(curves, title=f"{dataset}, seed 0: detection by Hal", path=out / f"roc_{tag}.png")
    ends = sorted({e for e, _ in windows})
    lengths = sorted({k for _, k in windows})
    grid = np.full((len(ends), len(lengths)), np.nan)
    for row in summary["window_sweep"]:
        if row["auroc"]["mean"] is not None:
            grid[ends.index(row["end"]), lengths.index(row["length"])] = row["auroc"]["mean"]
    figure = common.new_figure(5.6, 4.4)
    ax = figure.subplots()
    image = ax.imshow(grid, cmap="viridis", aspect="auto", origin="lower")
    ax.set_xticks(range(len(lengths)), [str(v) for v in lengths])
    ax.set_yticks(range(len(ends)), [str(v) for v in ends])
    for i in range(len(ends)):
        for j in range(len(lengths)):
            if np.isfinite(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.3f}", ha="center", va="center", fontsize=8, color="white")
    ax.set_xlabel("window length K (steps)")
    ax.set_ylabel("window ends at t =")
    ax.set_title(f"{dataset}: AUROC (k = 5), mean over seeds", fontsize=10)
    figure.colorbar(image, ax=ax)
    common.save_figure(figure, out / f"auroc_windows_{tag}.png")
    rows = "\n".join(
        f"| {kk} | {common.fmt(v['hallucination_rate'], pct=True)} | {v['true_mass']:.2g} | {common.fmt(v['auroc'])} | "
        f"{common.fmt(v['retained_at_95_removal'], pct=True)} | {common.fmt(v['removed_at_96_retention'], pct=True)} | "
        f"{common.fmt(v['random_filter_removed'], pct=True)} |" for kk, v in summary["per_k"].items())
    b = summary["blur_adjusted"]
    rows += (f"\n| 5, blur-adjusted | {common.fmt(b['rate'], pct=True)} | | {common.fmt(b['auroc'])} | "
             f"{common.fmt(b['retained_at_removal'], pct=True)} | {common.fmt(b['removal_at_retention'], pct=True)} | |")
    sweep = "\n".join(f"| {r['end']} | {r['length']} | {common.fmt(r['auroc'])} | {common.fmt(r['removed_at_96_retention'], pct=True)} |"
                      for r in summary["window_sweep"])
    return f"""## {tag.upper()}: {dataset}

| k | hallucination rate | true mass beyond k | AUROC | in-support kept when 95% of hallucinations removed | hallucinations removed when 96% in-support kept | random filter removing as many samples |
|---|---|---|---|---|---|---|
{rows}

Window sweep (k = 5): Hal over t = end .. end + K - 1.

| ends at t | K | AUROC | removed at 96% retention |
|---|---|---|---|
{sweep}

![Hal]({f'hal_{tag}.png'}) ![ROC]({f'roc_{tag}.png'}) ![windows]({f'auroc_windows_{tag}.png'})
"""
