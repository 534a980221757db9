"""``mijax experiment shapes``: SIMPLE SHAPES (the paper's claims 7 and 5 on images).

A UNet is trained (S seeds, one vmapped run) on the SHAPES images, in which each shape occurs at most once;
its samples are counted (:func:`mijax.data.shapes.count`) and their Hal (the sampler's running variance of
x0_hat) is swept over windows and reductions in one sampling pass (``SamplerConfig.hal_table``).

Reported: the share of samples per counter label, mean and 95% CI over seeds, beside the training set's
(no duplicates by construction); a gallery of duplicates beside real images (the paper's Fig. 1, top); per
window and reduction the AUROC of Hal separating duplicates from valid images and the two operating points
(duplicates removed at 96% of valid kept; valid kept at 95% of duplicates removed); Hal histograms and ROC
curves; the UNet's bottleneck features of generated images with one square (top or bottom) or two, in PCA
and t-SNE (the appendix figure), with the share of two-square images that lie between the one-square groups.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mijax import plots
from mijax.config import DataConfig, RunConfig, setting
from mijax.data import shapes
from mijax.store import json_safe
from mijax.experiments import common, hal_sweep
from mijax.runs import load_run
from mijax.training import eval_params

SUMMARY = "SIMPLE SHAPES: a UNet makes two copies of a shape it never saw twice (claim 7); Hal on images (claim 5)"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 20.3 min (`/usr/bin/time`:
# 20:19; training 1,017 s, sampling 188 s).
QUICK_MINUTES: Optional[float] = 20.3
REDUCTIONS = ("mean", "max", "top_k", "region_max")
PUBLISHED = hal_sweep.PUBLISHED


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShapesProfile(hal_sweep.ImageProfile):
    """shapes' sizes: an image experiment's (:class:`~mijax.experiments.hal_sweep.ImageProfile`) on the SHAPES
    images of ``size``, and the step t whose UNet bottleneck features are drawn."""

    feature_t: int = setting(0, "the step t whose UNet bottleneck features of the samples are drawn", low=0)


# quick: half-size images and a small UNet on 2 CPU cores (about 20 minutes), trained to predict x0: at equal
# steps its samples are far sharper than the eps objective's, and sharper than v with min-SNR-5 weighting
# (benchmarks/calibrate_images.py; the calibration on the documentation's results page).
QUICK = ShapesProfile(**hal_sweep.IMAGE_QUICK, size=32, channels=8, mults=(1, 2, 2), groups=4, steps=2_400,
                      batch_size=64, num_samples=512, chunk_size=512, top_k=16, checkpoint_every=500,
                      objective="x0")
PROFILES = {
    # smoke: with dropout and a short EMA, so that both run
    "smoke": common.smoke(QUICK, hal_sweep.IMAGE_SMOKE, batch_size=16, dropout=0.1, ema_decay=0.9),
    "quick": QUICK,
    "paper": ShapesProfile(**hal_sweep.IMAGE_PAPER, size=64, channels=64, mults=(1, 2, 2, 2), groups=32,
                           attn_levels=(2,), steps=50_000, warmup_steps=5_000, num_samples=10_000, top_k=64),
}


def run_config(p: dict) -> RunConfig:
    """The training run of a profile: the SHAPES data set (its first ``n_train`` images; None or absent: all
    5,000) and a UNet with the image DDPM's options."""
    n_train = 5_000 if p.get("n_train") is None else int(p["n_train"])
    return hal_sweep.unet_run_config(DataConfig("shapes", n_train=n_train, options={"size": p["size"]}), p)


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer, windows = hal_sweep.start(PROFILES, profile, seeds, overrides, out)
    config = run_config(p)
    run_dir, x, table = hal_sweep.train_and_sample(out, "shapes", config, p, REDUCTIONS, timer, progress)
    # x [S, N, H, W, 1], table [S, N, W, R]
    S = x.shape[0]
    counts = [shapes.count(xs) for xs in x]
    dataset = shapes.ShapesDataset("shapes", p["size"], 0, 5_000)
    training_counts = shapes.count(dataset.images())

    labels = {name: common.ci([np.mean(c.labels == i) for c in counts], proportion=True)
              for i, name in enumerate(shapes.LABELS)}
    training_labels = {name: float(np.mean(training_counts.labels == i)) for i, name in enumerate(shapes.LABELS)}
    positions = {name: common.ci([np.mean(c.square_position == i) for c in counts], proportion=True)
                 for i, name in enumerate(shapes.POSITIONS)}
    duplicates_per_strip = {name: common.ci([np.mean((c.shapes[:, k] >= 2) & (c.labels == shapes.LABELS.index(
        "duplicate"))) for c in counts], proportion=True) for k, name in enumerate(shapes.SHAPES)}

    quality = {"well_formed": common.ci([np.mean(c.well_formed()) for c in counts], proportion=True),
               "background_noise": common.ci([np.mean(c.background) for c in counts])}
    training_quality = {"well_formed": float(np.mean(training_counts.well_formed())),
                        "background_noise": float(np.mean(training_counts.background))}

    sweep = hal_sweep.sweep(table, [_classes(c) for c in counts], windows, REDUCTIONS)
    timer.lap("count and detect")
    features = _bottleneck(run_dir, x[0], counts[0], p)
    timer.lap("features")

    figures = {
        "labels": _label_figure(out / "labels.png", labels, training_labels, S),
        "gallery": _gallery(out / "gallery.png", x, counts, dataset.images()),
        "auroc": hal_sweep.auroc_figure(out / "auroc.png", sweep, windows, REDUCTIONS,
                                        "AUROC of Hal, duplicates vs valid (seeds pooled)"),
    }
    best = hal_sweep.best(sweep)
    figures.update(hal_sweep.hal_figures(out, [_classes(c) for c in counts], table, windows, sweep, REDUCTIONS,
                                         ("valid", "duplicate"), "Hal on SHAPES: duplicates vs valid images", "valid"))
    if features is not None:
        figures["bottleneck"] = _feature_figure(out / "bottleneck.png", features)
    timer.lap("figures")

    duplicate = labels["duplicate"]
    published = sweep[hal_sweep.key(PUBLISHED, "mean")]
    claims = {  # duplicates in every seed (a share's interval, on the logit scale, excludes 0 whenever its mean > 0)
        "duplicates_generated": duplicate["n"] > 0 and all(v is not None and v > 0 for v in duplicate["per_seed"]),
        "hal_published_rule_detects": hal_sweep.detects(published),
        "hal_best_detects": hal_sweep.detects(sweep[best]) if best else None,
        "two_squares_between": None if features is None else features["between"]["share"] is not None
        and features["between"]["share"] >= 0.5,
    }
    metrics = {
        "profile": profile, "sizes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()},
        "config": dataclasses.asdict(config), "run": str(run_dir), "seconds": timer.seconds,
        "labels": labels, "training_labels": training_labels, "quality": quality,
        "training_quality": training_quality, "square_position": positions,
        "duplicates_per_strip": duplicates_per_strip, "detection": sweep, "best": best,
        "bottleneck": None if features is None else {k: v for k, v in features.items() if k not in ("points",)},
        "claims": claims, "figures": figures,
    }
    metrics = json_safe(metrics)  # what metrics.json holds (a rerun's return equals the file)
    return common.finish(out, metrics, _report(p, metrics, S))


# ---------------------------------------------------------------------------------------------
# Detection.

def _classes(c: shapes.Counts) -> tuple[np.ndarray, np.ndarray]:
    """(rows that are valid or duplicate, duplicate among them)."""
    valid, dup = c.labels == shapes.LABELS.index("valid"), c.labels == shapes.LABELS.index("duplicate")
    return valid | dup, dup[valid | dup]


# ---------------------------------------------------------------------------------------------
# Bottleneck features (the appendix figure).

def _bottleneck(run_dir: Path, x: np.ndarray, c: shapes.Counts, p: dict) -> Optional[dict]:
    """The UNet's middle features of seed 0's samples with one square top or bottom, or two squares, at
    t = ``feature_t``: PCA and t-SNE, and the share of two-square images between the one-square groups."""
    groups = {"one square, top": "top", "two squares": "two", "one square, bottom": "bottom"}
    index = {name: np.flatnonzero(c.square_position == shapes.POSITIONS.index(pos)) for name, pos in groups.items()}
    if sum(len(i) for i in index.values()) < 10 or not len(index["one square, top"]) or \
            not len(index["one square, bottom"]):
        return None
    config, pieces, state = load_run(run_dir)
    params = jax.tree.map(lambda a: a[0], eval_params(state, config.train))
    rows = np.concatenate(list(index.values()))
    apply = jax.jit(lambda prm, xs: pieces.model.apply(prm, xs, jnp.full((xs.shape[0],), p["feature_t"]),
                                                       mutable=["intermediates"])[1])
    feats = np.concatenate([np.asarray(apply(params, jnp.asarray(x[rows[i:i + 256]]))["intermediates"]["bottleneck"][0])
                            .reshape(len(rows[i:i + 256]), -1) for i in range(0, len(rows), 256)])
    group = np.concatenate([np.full(len(i), k) for k, i in enumerate(index.values())])
    centred = feats - feats.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pca = centred @ vt[:2].T
    from sklearn.manifold import TSNE

    reduced = centred @ vt[:min(50, vt.shape[0])].T
    tsne = TSNE(2, perplexity=min(30.0, max(5.0, (len(rows) - 1) / 4)), init="pca", random_state=0).fit_transform(reduced)
    # "between": project every two-square image on the line from the top group's mean to the bottom group's
    # (in the full feature space); between means a projection in (0, 1)
    top, bottom = feats[group == 0].mean(0), feats[group == 2].mean(0)
    axis = bottom - top
    proj = (feats[group == 1] - top) @ axis / max(float(axis @ axis), 1e-12)
    between = {"share": float(np.mean((proj > 0) & (proj < 1))) if proj.size else None,
               "median_position": float(np.median(proj)) if proj.size else None, "n": int(proj.size)}
    return {"groups": {name: int(len(i)) for name, i in index.items()}, "between": between,
            "feature_shape": list(np.asarray(feats).shape[1:]), "t": int(p["feature_t"]),
            "points": {"pca": pca, "tsne": tsne, "group": group, "names": list(groups)}}


# ---------------------------------------------------------------------------------------------
# Figures.

GROUP_COLOURS = ("tab:blue", "tab:red", "tab:green")


def _label_figure(path: Path, labels: dict, training: dict, seeds: int) -> str:
    figure = plots.new_figure(6.4, 3.6)
    ax = figure.subplots()
    names = list(shapes.LABELS)
    pos = np.arange(len(names))
    means = np.array([100 * (labels[n]["mean"] or 0.0) for n in names])
    low = np.array([100 * (labels[n]["low"] if labels[n]["low"] is not None else labels[n]["mean"] or 0) for n in names])
    high = np.array([100 * (labels[n]["high"] if labels[n]["high"] is not None else labels[n]["mean"] or 0)
                     for n in names])
    ax.bar(pos - 0.2, [100 * training[n] for n in names], 0.4, color="tab:gray", label="training set")
    ax.bar(pos + 0.2, means, 0.4, color=plots.HALLUCINATED_COLOUR, alpha=0.8,
           yerr=np.stack([means - low, high - means]).clip(0), capsize=3, label=f"generated (95% CI, {seeds} seeds)")
    ax.set_xticks(pos, names)
    ax.set_ylabel("% of images")
    ax.set_title("What the counter finds in training and generated images")
    ax.legend(fontsize=8)
    return plots.save(figure, path)


def _gallery(path: Path, x: np.ndarray, counts, real: np.ndarray, columns: int = 8) -> str:
    """Training images, generated images as they come (seed 0's first, each with its counter label below) and
    generated duplicates (two copies of a shape), a row or two each, at a size where a shape is visible."""
    dup = [(s, i) for s, c in enumerate(counts) for i in np.flatnonzero(c.labels == shapes.LABELS.index("duplicate"))]
    dup = dup[:2 * columns]
    plain = [(0, i) for i in range(min(2 * columns, x.shape[1]))]
    blocks = [("training images (each shape at most once)", [real[j] for j in range(min(columns, len(real)))],
               [None] * columns),
              ("generated images, as they come (the counter's label below each)",
               [np.asarray(x[s, i, ..., 0]) for s, i in plain], [counts[s].label_names()[i] for s, i in plain]),
              ("generated: two copies of a shape (hallucinations)" if dup else
               "no generated image with two copies of a shape", [np.asarray(x[s, i, ..., 0]) for s, i in dup],
               [f"seed {s}" for s, _ in dup])]
    heights = [max(1, -(-len(images) // columns)) for _, images, _ in blocks]
    figure = plots.new_figure(1.4 * columns, 1.75 * sum(heights) + 0.2)
    figure.set_layout_engine("none")  # the block titles run over the columns to their right
    axes = np.asarray(figure.subplots(sum(heights), columns, squeeze=False, gridspec_kw=dict(
        left=0.01, right=0.99, bottom=0.04, top=1 - 0.45 / (1.75 * sum(heights) + 0.2), hspace=0.55, wspace=0.08)))
    for ax in axes.ravel():
        ax.set_axis_off()
    row = 0
    for (title, images, names), height in zip(blocks, heights):
        for k, (image, name) in enumerate(zip(images, names)):
            ax = axes[row + k // columns, k % columns]
            real_image = image.dtype == np.uint8
            ax.imshow(image, cmap="gray", vmin=0 if real_image else -1, vmax=255 if real_image else 1,
                      interpolation="nearest")
            if name:
                ax.text(0.5, -0.04, name, ha="center", va="top", transform=ax.transAxes, fontsize=8)
        axes[row, 0].set_title(title, fontsize=10, loc="left")
        row += height
    return plots.save(figure, path)


def _feature_figure(path: Path, features: dict) -> str:
    pts = features["points"]
    figure = plots.new_figure(10.0, 4.4)
    for k, (name, title) in enumerate((("pca", "PCA"), ("tsne", "t-SNE"))):
        ax = figure.add_subplot(1, 2, k + 1)
        for g, label in enumerate(pts["names"]):
            m = pts["group"] == g
            ax.scatter(pts[name][m, 0], pts[name][m, 1], s=9, color=GROUP_COLOURS[g], alpha=0.8,
                       label=f"{label} ({int(m.sum())})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"UNet bottleneck features of generated images: {title}", fontsize=9)
        ax.legend(fontsize=7)
    return plots.save(figure, path)


# ---------------------------------------------------------------------------------------------
# Report.

def _pct(c: dict) -> str:
    return common.fmt(c, pct=True, digits=2)


def _report(p: dict, m: dict, seeds: int) -> str:
    rows = "\n".join(f"| {name} | {100 * m['training_labels'][name]:.2f}% | {_pct(m['labels'][name])} |"
                     for name in shapes.LABELS)
    positions = ", ".join(f"{k}: {_pct(v)}" for k, v in m["square_position"].items())
    strips = ", ".join(f"{k}: {_pct(v)}" for k, v in m["duplicates_per_strip"].items())

    def fmt(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    objective = (p.get("objective") or "eps") + (f", min-SNR-{p['min_snr']:g} weighting" if p.get("min_snr") else "")
    table = hal_sweep.table_markdown(m["detection"])
    published = m["detection"][hal_sweep.key(PUBLISHED, "mean")]
    best = m["detection"][m["best"]] if m["best"] else None
    claims = m["claims"]
    b = m["bottleneck"]
    if b is None:
        feature_text = ("not drawn: seed 0 has too few samples with one square at the top and one at the bottom "
                        "(needs both, and 10 images in all)")
    else:
        feature_text = (f"seed 0's generated images, {', '.join(f'{k}: {v}' for k, v in b['groups'].items())}; "
                        f"features at t = {b['t']} of shape {b['feature_shape']}. Projected on the line from the "
                        f"mean top-square feature (0) to the mean bottom-square one (1), "
                        f"{fmt(b['between']['share'] and 100 * b['between']['share'], 1)}% of the two-square images "
                        f"lie between (median position {fmt(b['between']['median_position'], 2)}). Holds (at least "
                        f"half between): {common.holds_word(claims['two_squares_between'])}")
    return f"""# SIMPLE SHAPES: hallucinations by mode interpolation on images ({p['profile']} profile)

**Setup.** SHAPES at {p['size']} x {p['size']} (5,000 generated images, seed 0; each shape at most once);
a UNet with {p['channels']} channels, mults {tuple(p['mults'])}, {p['res_blocks']} res block(s), attention at
{tuple(p['attn_levels']) or 'no level'}, dropout {p['dropout']}; T = {p['timesteps']} (linear {p['beta_start']:g} ->
{p['beta_end']:g}); the network predicts {objective}; {p['steps']:,} Adam steps of batch {p['batch_size']} (lr {p['learning_rate']:g}, warm-up
{p['warmup_steps']:,}, gradient clip {p['grad_clip']:g}, EMA {p['ema_decay']:g}); {seeds} seeds; {p['num_samples']:,}
samples per seed, DDPM with x0_hat clipped to [-1, 1]. {common.CI_TEXT}. Wall time: {sum(m['seconds'].values()):.0f} s
({', '.join(f'{k} {v:.0f} s' for k, v in m['seconds'].items())}).

## Sample quality

| | training set | generated |
|---|---|---|
| well formed (valid or duplicate) | {100 * m['training_quality']['well_formed']:.2f}% | {_pct(m['quality']['well_formed'])} |
| background noise (mean abs. deviation from black off the shapes, [-1, 1] scale) | {m['training_quality']['background_noise']:.4f} | {common.fmt(m['quality']['background_noise'], digits=3)} |

## Claim 7: two copies of a shape that never occur together in training

| label | training set | generated |
|---|---|---|
{rows}

Duplicates per strip: {strips}. Square strip: {positions}.

**Holds** (duplicates generated in every seed, against 0% in training): {common.holds_word(claims['duplicates_generated'])}

![labels](labels.png)
![gallery](gallery.png)

## Claim 5 on images: Hal separates duplicates from valid images

Positives: duplicates; negatives: valid images (blank, outside and malformed samples left out); seeds pooled
for the AUROC and operating points, and the AUROC per seed with its CI. "removed @ 96% kept": share of
duplicates removed by the threshold that keeps 96% of valid images; "kept @ 95% removed": share of valid
images kept by the threshold that removes 95% of duplicates.

{table}

The published rule (mean over pixels, last 10 steps) reaches AUROC {fmt(published['auroc'])}; the best cell is
{'n/a' if best is None else f"{best['reduction']} over t = {best['window'][0]}..{sum(best['window']) - 1} with AUROC {fmt(best['auroc'])}"}.
Holds (AUROC >= 0.75): published rule {common.holds_word(claims['hal_published_rule_detects'])}, best cell
{common.holds_word(claims['hal_best_detects'])}.

![auroc](auroc.png)
![roc](roc.png)
![hal mean](hal_mean.png) ![hal max](hal_max.png) ![hal top_k](hal_top_k.png) ![hal region_max](hal_region_max.png)

## The bottleneck features (appendix figure)

{feature_text}

![bottleneck](bottleneck.png)
"""
