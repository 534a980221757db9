"""``mijax demo``: the paper's Figure 2 in a few minutes on a laptop CPU.

Trains the toy DDPM on the 1D mixture of three Gaussians (means 1, 2, 3, std 0.05; 20,000 points) with
the quick profiles' recipe (10,000 Adam steps of batch 500, peak 5e-3 after a warm-up, cosine decay: the
model of ``interp-1d`` and ``detection``, seed 0), draws 50,000 samples with their Hal score, and writes
``report.md``, ``metrics.json`` and PNG figures into the output directory.

The published recipe (batch 10,000, constant Adam 1e-3) needs about 4,000 steps to show the headline,
which took over 10 minutes on 2 CPU cores; this recipe trains a sharper model with
an eighth of the arithmetic.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import numpy as np

from mijax import detection, plots, store
from mijax.config import RunConfig, build
from mijax.data.mixtures import blur_adjusted_labels, labels, rate_table
from mijax.experiments import common
from mijax.store import finite_or_none, json_safe, save_npz, write_json, write_text
from mijax.mixtures import mass_beyond
from mijax.runs import sample_run, train_run
from mijax.config import SamplerConfig


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo; the defaults fit in 5 minutes on 2 CPU cores (measured on the slowest CPU
    tried). The model is the quick profiles' 1D model (``common.QUICK_1D``, ``QUICK_OPTIMISER``)."""

    run: RunConfig = common.run_config({"seeds": 1, "timesteps": 1000, **common.QUICK_1D, **common.QUICK_OPTIMISER,
                                        "steps_per_call": 500, "checkpoint_every": 2_000})
    num_samples: int = 50_000
    chunk_size: int = 50_000
    k: float = 5.0
    ks: tuple[float, ...] = (3.0, 4.0, 5.0, 6.0)
    sample_seed: int = 0


def _pct(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def run_demo(out: Path, config: DemoConfig = DemoConfig(), overwrite: bool = False, progress: bool = True) -> dict:
    """Train, sample, measure and report into ``out``. Returns the metrics dict also written to ``metrics.json``.

    A demo interrupted earlier in ``out`` (no ``metrics.json`` yet) continues: its training resumes from the
    last checkpoint. A finished one is refused; ``overwrite`` replaces an earlier demo (only a mijax demo)
    once the new one is complete."""
    out = Path(out)
    with store.lock(out):
        finished = (out / "metrics.json").exists()
        store.check(out, "demo", overwrite=overwrite, resume=not finished and not overwrite)
        with store.replacing(out, "demo", replace=overwrite and out.exists()) as target:
            return _run(target, config, progress)


def _run(out: Path, config: DemoConfig, progress: bool) -> dict:
    t0 = time.perf_counter()
    train_run(out / "run", config.run, resume=True, progress=progress)
    t1 = time.perf_counter()
    result = sample_run(out / "run", config.num_samples, seed=config.sample_seed,
                        sampler=SamplerConfig(objective=config.run.diffusion.objective),
                        chunk_size=config.chunk_size, progress=progress)
    t2 = time.perf_counter()
    save_npz(out / "samples.npz", **result)
    mixture = build(config.run).dataset.mixture
    x, hal = result["x"][0], result["hal"][0]  # one seed

    positives = np.asarray(labels(mixture, x, config.k))
    plain = {"k": config.k, "true_mass_beyond_k": mass_beyond(config.k, mixture.dim),
             **detection.detection_summary(hal, positives)}
    blurred_positives, spreads = blur_adjusted_labels(mixture, x, k=config.k)
    blurred_positives = np.asarray(blurred_positives)
    blurred = {
        "k": config.k,
        "mode_spread_over_true_std": [float(s) for s in np.asarray(spreads) / np.asarray(mixture.stds)],
        "num_hallucinated": int(blurred_positives.sum()),
        "hallucination_rate": float(blurred_positives.mean()),
        "auroc": finite_or_none(detection.auroc(hal, blurred_positives)),
        "retained_at_removal": json_safe(detection.retained_at_removal(hal, blurred_positives, 0.95)),
        "removal_at_retention": json_safe(detection.removal_at_retention(hal, blurred_positives, 0.96)),
    }
    means = np.asarray(mixture.means)[:, 0]
    gaps = [{"between": [float(a), float(b)], "fraction": float(np.mean((x[:, 0] > a + 0.25 * (b - a))
                                                                        & (x[:, 0] < b - 0.25 * (b - a))))}
            for a, b in zip(means[:-1], means[1:])]
    metrics = {
        "config": {"run": dataclasses.asdict(config.run), "num_samples": config.num_samples, "k": config.k},
        "seconds": {"train": round(t1 - t0, 1), "sample": round(t2 - t1, 1)},
        "rates": rate_table(mixture, x, config.ks),
        "middle_half_of_each_gap": gaps,
        "detection": plain,
        "detection_blur_adjusted": blurred,
    }
    plots.plot_histogram_1d(x, mixture, positives, k=config.k,
                            title=f"{config.num_samples:,} samples of the trained DDPM vs the true density",
                            path=out / "histogram.png")
    threshold = plain["removal_at_retention"]["threshold"]
    plots.plot_hal_histograms(hal, positives, threshold=threshold, threshold_label="keeps 96% in-support",
                              title=f"Hal (variance of x0_hat over t = 9..0), k = {config.k:g}",
                              path=out / "hal_histograms.png")
    curves = {f"k = {config.k:g} sigma": (*detection.roc_curve(hal, positives)[:2], plain["auroc"])}
    if blurred["auroc"] is not None:
        curves["blur-adjusted"] = (*detection.roc_curve(hal, blurred_positives)[:2], blurred["auroc"])
    plots.plot_roc(curves, title="Detecting hallucinations by Hal", path=out / "roc.png")
    write_text(out / "report.md", _report(config, metrics))
    write_json(out / "metrics.json", metrics)  # last: it marks the demo finished
    return metrics


def _report(config: DemoConfig, m: dict) -> str:
    d, b = m["detection"], m["detection_blur_adjusted"]
    r = config.run
    rows = "\n".join(f"| {row['k']:g} | {_pct(row['rate'])} | {row['true_mass']:.2g} |" for row in m["rates"])
    gaps = "\n".join(f"| {g['between'][0]:g} - {g['between'][1]:g} | {_pct(g['fraction'])} |"
                     for g in m["middle_half_of_each_gap"])
    spread = ", ".join(f"{s:.2f}" for s in b["mode_spread_over_true_std"])

    def op(block):
        a, c = block["retained_at_removal"], block["removal_at_retention"]
        return (f"- Threshold removing >= 95% of hallucinations: removes {_pct(a['removed'])}, keeps "
                f"{_pct(a['retained'])} of in-support samples.\n"
                f"- Threshold keeping >= 96% of in-support samples: keeps {_pct(c['retained'])}, removes "
                f"{_pct(c['removed'])} of hallucinations.")

    holds = d["hallucination_rate"] is not None and d["hallucination_rate"] > 10 * d["true_mass_beyond_k"]
    return f"""# mijax demo: mode interpolation in 1D

**Claim (paper, claim 1):** a DDPM trained on well-separated Gaussians puts samples *between*
nearby modes, where the true density is essentially zero, and (claim 5) the variance of its
predicted x0 over the last reverse steps (Hal) tells those samples apart.

**Setup:** {r.data.dataset} with modes {', '.join(f'{v:g}' for v in r.data.options['modes'])}, std 0.05;
{r.data.n_train:,} training points, batch {r.train.batch_size:,}, {r.train.steps:,} steps of
{common.optimiser_text(dataclasses.asdict(r.train))} (the paper: batch 10,000, 20,000 steps of constant Adam 1e-3); T = {r.diffusion.timesteps}, linear betas 1e-3 -> 0.2, the paper's MLP; {config.num_samples:,}
DDPM samples with Hal over t = 9..0. Training took {m['seconds']['train']} s, sampling {m['seconds']['sample']} s.

![samples](histogram.png)

## Hallucination rate (distance to the nearest mode > k std)

| k | model | true mixture |
|---|---|---|
{rows}

Fraction of samples in the middle half of each gap:

| gap | fraction |
|---|---|
{gaps}

**Holds:** {'yes' if holds else 'no'}: at k = {config.k:g} the model puts {_pct(d['hallucination_rate'])} of its samples
outside the modes, against {d['true_mass_beyond_k']:.2g} under the true law.

## Detection by Hal (k = {config.k:g})

{d['num_hallucinated']:,} hallucinated and {d['num_in_support']:,} in-support samples. AUROC
{d['auroc'] if d['auroc'] is None else f"{d['auroc']:.3f}"}; median Hal {d['hal_median_in_support']:.3g} (in support) vs
{d['hal_median_hallucinated'] if d['hal_median_hallucinated'] is None else f"{d['hal_median_hallucinated']:.3g}"} (hallucinated).

{op(d)}

![Hal histograms](hal_histograms.png) ![ROC](roc.png)

**Blur-adjusted labels.** The model's modes come out wider than the truth (robust spread / true
std per mode: {spread}), so some "hallucinations" at k = {config.k:g} true std are just the tails of a
widened mode. Counting a sample as hallucinated only beyond k times max(true std, the mode's own
spread): {b['num_hallucinated']:,} hallucinated ({_pct(b['hallucination_rate'])}), AUROC
{b['auroc'] if b['auroc'] is None else f"{b['auroc']:.3f}"}.

{op(b)}

The paper's headline is that a Hal threshold removes over 95% of hallucinations while keeping 96% of
in-support samples on its synthetic data; the numbers above are this demo's, from one seed and a
shorter training with a stronger learning-rate schedule. Full data in `metrics.json`; samples in `samples.npz`; the trained model in `run/`.
"""
