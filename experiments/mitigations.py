"""Mitigations compared on the same models: post-hoc filtering by Hal and by another detector, abort and resample,
stochastic steps inside DDIM, guidance toward the most likely mode and a score-smoothness penalty in training; each
at several strengths, measured by the hallucination rate among the samples returned, what happens to the rest of
the distribution, and the network evaluations each returned sample costs."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.ticker import NullFormatter

from mijax import collect, detectors as detectors_lib, keys as keys_lib, plots
from mijax.abort import sample_with_abort
from mijax.config import AbortConfig, ConfigError, SamplerConfig, setting
from mijax.data.mixtures import blur_adjusted_labels, labels, mode_mass
from mijax.stats import mmd_to
from mijax.experiments import common
from mijax.guidance import guided, make_guidance
from mijax.runs import load_run, sample_keys
from mijax.store import load_cache, save_npz
from mijax.training import eval_params

SUMMARY = ("Mitigations compared: filtering by Hal or a detector, abort and resample, stochastic DDIM steps, "
           "guidance toward the likeliest mode, a smoothness penalty; rate, distortion and cost")
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 20 min 26 s (`/usr/bin/time`;
# training 461 s, the penalty's models 335 s, sampling 423 s), every model trained by the experiment itself.
QUICK_MINUTES: Optional[float] = 20.4
SETTINGS = {"gaussian1d": ("1d", (1.0, 2.0, 3.0)), "gaussian25": ("2d", None), "gaussian25_rotated": ("2d", None)}
FAMILIES = ("none", "filter", "abort", "stochastic", "guidance", "smoothness")
FILTER_DETECTORS = tuple(name for name in detectors_lib.DETECTORS if name not in ("hal", "oracle"))


@dataclasses.dataclass(frozen=True, kw_only=True)
class MitigationsProfile(common.Mixture2DProfile):
    """mitigations' sizes: the 1D and 2D runs (:class:`~mijax.experiments.common.Mixture2DProfile`), and each
    method's strengths."""

    datasets: tuple[str, ...] = setting(tuple(SETTINGS), "the data sets, of " + ", ".join(SETTINGS),
                                        choices=tuple(SETTINGS))
    retentions: tuple[float, ...] = setting((0.99, 0.97, 0.9), "post-hoc filters: the shares of the samples kept "
                                            "(those of lowest score)")
    filter_detector: str = setting("lid", "the detector filtering beside Hal (lid: the best of `mijax experiment "
                                          "detectors` on the 1D mixture that needs no exact score)",
                                   choices=FILTER_DETECTORS)
    abort_ends: tuple[int, ...] = setting((10, 50), "abort and resample: the steps before the last where samples "
                                          "are aborted (t_e; Hal over the 10 steps ending there)")
    abort_flagged: tuple[float, ...] = setting((0.03, 0.1), "abort and resample: the share of plain samples whose "
                                               "Hal at t_e is at or above the threshold")
    max_redraws: int = setting(3, "redraws per aborted sample at most", low=0)
    ddim_steps: int = setting(50, "DDIM's steps, where stochastic (DDPM) steps are added", above=1)
    stochastic: tuple[int, ...] = setting((2, 5, 10), "numbers of stochastic steps at the end of DDIM")
    guidance_scales: tuple[float, ...] = setting((0.3, 1.0), "guidance toward the likeliest mode: its scales")
    guidance_starts: tuple[float, ...] = setting((0.05, 0.3), "guidance acts from this share of T down to t = 0")
    smoothness: tuple[float, ...] = setting((0.03, 0.3), "weights of the score-smoothness penalty in training (a "
                                            "model per weight and data set)")
    smoothness_rows: int = setting(64, "the penalty's mean over this many rows of each batch (0: all)", low=0)
    smoothness_datasets: tuple[str, ...] = setting(tuple(SETTINGS), "the data sets whose models are retrained with "
                                                   "the penalty", choices=tuple(SETTINGS))

    def check(self):
        super().check()
        if not all(0 < r <= 1 for r in self.retentions):
            raise ConfigError("retentions", "retentions are shares in (0, 1]")
        if not all(0 < q < 1 for q in self.abort_flagged):
            raise ConfigError("abort_flagged", "abort_flagged are shares in (0, 1)")
        if any(e < 0 or e + 10 > self.timesteps for e in self.abort_ends):
            raise ConfigError("abort_ends", f"abort_ends are steps 0 .. {self.timesteps - 10}")
        if self.ddim_steps > self.timesteps or any(k <= 0 or k > self.ddim_steps for k in self.stochastic):
            raise ConfigError("stochastic", "stochastic steps are 1 .. ddim_steps, and ddim_steps at most T")
        if any(s < 0 for s in self.guidance_scales) or not all(0 < f <= 1 for f in self.guidance_starts):
            raise ConfigError("guidance_scales", "guidance scales are >= 0 and starts shares in (0, 1]")
        if any(w <= 0 for w in self.smoothness):
            raise ConfigError("smoothness", "smoothness weights are > 0 (weight 0 is the base model)")


# The quick 2D models train 12,000 of the quick recipe's 32,000 steps and the penalty retrains the 1D models only,
# so that the whole experiment fits in 25 minutes on 2 CPU cores: the penalty's Jacobian makes a training step
# several times dearer.
QUICK = MitigationsProfile(**common.QUICK_1D, **common.two_d({**common.QUICK_2D, "steps": 12_000}), seeds=3,
                           num_samples=2_000, chunk_size=2_000, **common.QUICK_OPTIMISER, **common.QUICK_SAVING,
                           smoothness_datasets=("gaussian1d",))
PROFILES = {
    "smoke": common.smoke(QUICK, datasets=("gaussian1d",), retentions=(0.9,), abort_ends=(5,), abort_flagged=(0.1,),
                          ddim_steps=10, stochastic=(2,), guidance_scales=(1.0,), guidance_starts=(0.3,),
                          smoothness=(0.1,)),
    "quick": QUICK,
    "paper": MitigationsProfile(**common.PAPER_1D, **common.two_d(common.PAPER_2D), num_samples=100_000,
                                chunk_size=50_000),
}


def refuses_sampler(p: dict) -> Optional[str]:
    """Why this experiment does not draw with a sampler chosen by ``mijax experiment --sampler``: its baseline is
    DDPM, and DDIM with stochastic steps is one of its methods."""
    return "its baseline is DDPM over all steps, and DDIM with stochastic steps is one of the methods it compares"


# ---------------------------------------------------------------------------------------------
# Drawing, cached in the run directory.

def _hal_at(end: int) -> detectors_lib.DetectorSpec:
    return detectors_lib.DetectorSpec("hal", int(end), 10)


def plain_sampler(p: dict) -> SamplerConfig:
    """DDPM with Hal (t = 9..0), Hal over the 10 steps ending at each abort end, and the filter's detector."""
    specs = [_hal_at(e) for e in p["abort_ends"] if e != 0] + list(detectors_lib.parse(p["filter_detector"]))
    return SamplerConfig(detectors=tuple(specs))


def draw(run_dir: Path, loaded: tuple, name: str, sampler: SamplerConfig, p: dict, progress: bool,
         guidance: Optional[tuple[float, int]] = None) -> dict[str, np.ndarray]:
    """Every seed's ``num_samples`` with ``sampler`` (and ``guidance`` (scale, start timestep)), cached:
    ``collect.draw``'s dict."""
    config, pieces, state = loaded
    settings = {"n": p["num_samples"], "sampler": dataclasses.asdict(sampler), "guidance": guidance}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = Path(run_dir) / f"samples-mitigations-{digest}.npz"
    cached = load_cache(path, ("x", "hal"))
    if cached is not None:
        return cached
    keys = sample_keys(config, 0)
    fn, params = pieces.denoise_fn, eval_params(state, config.train)
    if guidance is not None:
        S = keys.shape[0]
        g = make_guidance(pieces.dataset.mixture, pieces.schedule, *guidance)
        fn, params = guided(fn), (params, jax.tree.map(lambda a: jnp.broadcast_to(a, (S,) + a.shape), g))
    drawn = collect.draw(fn, params, pieces.schedule, keys, p["num_samples"], pieces.shape, sampler,
                         p["chunk_size"], show_progress=progress, desc=f"{config.data.dataset} {name}",
                         require_finite=False)
    save_npz(path, **drawn)
    return drawn


def draw_with_abort(run_dir: Path, loaded: tuple, end: int, flagged: float, plain: dict, p: dict) -> dict:
    """Abort and resample for every seed: the threshold flags ``flagged`` of that seed's plain samples at t_e =
    ``end``. {"x": [S, n, d], "steps": [S] reverse steps per returned sample, "redrawn": [S]}, cached."""
    config, pieces, state = loaded
    spec = _hal_at(end)
    path = Path(run_dir) / f"samples-mitigations-abort-e{end}-q{flagged:g}-n{p['num_samples']}.npz"
    cached = load_cache(path, ("x", "steps", "redrawn"))
    if cached is not None:
        return cached
    params, keys = eval_params(state, config.train), sample_keys(config, 0)
    xs, steps, redrawn = [], [], []
    for s in range(keys.shape[0]):
        early = np.asarray(plain[f"score_{spec.key}"][s], np.float64)
        threshold = float(np.quantile(early[np.isfinite(early)], 1.0 - flagged))
        got, info = sample_with_abort(pieces.denoise_fn, jax.tree.map(lambda a: a[s], params), pieces.schedule,
                                      keys[s], p["num_samples"], pieces.shape,
                                      AbortConfig(spec, threshold, p["max_redraws"]), SamplerConfig())
        xs.append(np.asarray(got.x))
        steps.append(float(info["steps"].mean()))
        redrawn.append(float((info["redraws"] > 0).mean()))
    result = {"x": np.stack(xs), "steps": np.asarray(steps), "redrawn": np.asarray(redrawn)}
    save_npz(path, **result)
    return result


# ---------------------------------------------------------------------------------------------
# Measurements.

def assess(dataset, x: np.ndarray, distance) -> dict:
    """One seed's returned samples x [n, d] against the true mixture: the hallucination rate (beyond k stds of
    every mode; a sample that is not finite counts), blur-adjusted, the total-variation distance between the mode
    weights of the in-support samples and the true weights, the mean over modes of each mode's spread / its true
    std, and ``distance`` of the finite samples (the MMD to a true sample, equal counts per mode:
    :func:`mijax.stats.mmd_to`; bounded, so a few far outliers do not swamp it)."""
    mixture = dataset.mixture
    finite = np.all(np.isfinite(x), axis=-1)
    kept = x[finite]
    hallucinated = np.asarray(labels(mixture, jnp.asarray(kept), dataset.k))
    blur, spreads = blur_adjusted_labels(mixture, jnp.asarray(kept), dataset.k)
    mass = mode_mass(mixture, kept, dataset.k)
    weights = mass / mass.sum() if mass.sum() > 0 else np.full_like(mass, np.nan)
    spread = np.asarray(spreads, np.float64) / np.asarray(mixture.stds, np.float64)
    n = x.shape[0]
    return {"rate": (hallucinated.sum() + (~finite).sum()) / n,
            "rate_blur": (np.asarray(blur).sum() + (~finite).sum()) / n,
            "weights_tv": 0.5 * float(np.abs(weights - np.asarray(mixture.weights, np.float64)).sum()),
            "spread": float(np.nanmean(spread)) if np.isfinite(spread).any() else math.nan,
            "mmd": distance(kept) if kept.shape[0] else math.nan}


MEASURES = {"rate": True, "rate_blur": True, "weights_tv": True, "spread": False, "mmd": False}


def summarise(per_seed: list[dict], cost: list[float], kept: list[float]) -> dict:
    """CIs over seeds of every measure, the cost in network evaluations per returned sample and the share kept."""
    out = {name: common.ci([m[name] for m in per_seed], proportion=prop) for name, prop in MEASURES.items()}
    out["evaluations"] = common.ci(cost)
    out["kept"] = common.ci(kept, proportion=True)
    return out


def _kept_lowest(score: np.ndarray, share: float) -> np.ndarray:
    """The samples a post-hoc filter keeps: the ``share`` of lowest score (ties broken by index; NaN last)."""
    order = np.argsort(np.where(np.isfinite(score), score, np.inf), kind="stable")
    keep = np.zeros(score.shape[0], bool)
    keep[order[:max(1, int(round(share * score.shape[0])))]] = True
    return keep


def study(out: Path, p: dict, dataset: str, progress: bool, timer) -> dict:
    """Every method at every strength on one data set: {label: {"family", "strength", **summarise}}."""
    tag, modes = SETTINGS[dataset]
    config = common.setting_config(p, tag, dataset, modes)
    run_dir = common.train(out, dataset, config, progress)
    timer.lap("train")
    loaded = load_run(run_dir)
    pieces = loaded[1]
    data, T = pieces.dataset, config.diffusion.timesteps
    distance = mmd_to(np.asarray(data.reference(keys_lib.stream(jax.random.key(config.seed), keys_lib.REFERENCE),
                                                p["num_samples"])))
    S = config.seeds
    rows = {}

    def add(label, family, strength, xs, cost, kept=None):
        per_seed = [assess(data, np.asarray(x), distance) for x in xs]
        rows[label] = {"family": family, "strength": strength,
                       **summarise(per_seed, list(cost), [1.0] * len(xs) if kept is None else list(kept))}

    plain = draw(run_dir, loaded, "ddpm", plain_sampler(p), p, progress)
    add("none (DDPM)", "none", "", plain["x"], [T] * S)
    for name in ("hal", p["filter_detector"]):
        key = "hal" if name == "hal" else detectors_lib.parse(name)[0].key
        scores = plain["hal"] if name == "hal" else plain[f"score_{key}"]
        for r in p["retentions"]:
            keeps = [_kept_lowest(np.asarray(scores[s], np.float64), r) for s in range(S)]
            add(f"filter {name}, keep {r:.0%}", "filter", f"{name} {r:g}",
                [plain["x"][s][keeps[s]] for s in range(S)], [T / k.mean() for k in keeps], [k.mean() for k in keeps])
    timer.lap("sample_plain")
    for end in p["abort_ends"]:
        for q in p["abort_flagged"]:
            got = draw_with_abort(run_dir, loaded, end, q, plain, p)
            add(f"abort at t_e = {end}, flag {q:.0%}", "abort", f"t_e {end}, {q:g}", got["x"], got["steps"])
    timer.lap("sample_abort")
    base = SamplerConfig(sampler="ddim", ddim_steps=p["ddim_steps"], hal_window=min(10, p["ddim_steps"]))
    for k in (0,) + tuple(p["stochastic"]):
        sampler = base if k == 0 else dataclasses.replace(base, stochastic_steps=k, stochastic_at="last")
        got = draw(run_dir, loaded, f"ddim+{k}", sampler, p, progress)
        label = f"DDIM {p['ddim_steps']}" + (f" + {k} stochastic (last)" if k else "")
        add(label, "stochastic", f"{k}", got["x"], [p["ddim_steps"]] * S)
    timer.lap("sample_stochastic")
    for scale in p["guidance_scales"]:
        for share in p["guidance_starts"]:
            start = min(T - 1, int(round(share * T)))
            got = draw(run_dir, loaded, f"guidance {scale:g} {start}", SamplerConfig(), p, progress,
                       guidance=(float(scale), start))
            add(f"guidance {scale:g} from t = {start}", "guidance", f"{scale:g}, {start}", got["x"], [T] * S)
    timer.lap("sample_guidance")
    for w in p["smoothness"] if dataset in p["smoothness_datasets"] else ():
        smooth = dataclasses.replace(config, train=dataclasses.replace(config.train, smoothness=float(w),
                                                                       smoothness_rows=p["smoothness_rows"]))
        smooth_dir = common.train(out, f"{dataset}-smoothness-{w:g}", smooth, progress)
        timer.lap("train_smoothness")
        got = draw(smooth_dir, load_run(smooth_dir), "ddpm", SamplerConfig(), p, progress)
        add(f"smoothness penalty {w:g}", "smoothness", f"{w:g}", got["x"], [T] * S)
        timer.lap("sample_smoothness")
    return {"run": str(run_dir), "results": rows}


# ---------------------------------------------------------------------------------------------
# Verdicts and figures.

def verdict(rows: dict) -> dict:
    """Per family, the setting with the lowest mean rate among those that do not distort the rest beyond the
    baseline's intervals (weights TV and MMD at most the upper 95% bound of no mitigation's), and that setting's
    cost; and the cheapest harmless setting that halves the rate."""
    none = rows["none (DDPM)"]
    bound = {m: none[m]["high"] if none[m]["high"] is not None else none[m]["mean"] for m in ("weights_tv", "mmd")}

    def harmless(r):
        return all(r[m]["mean"] is not None and bound[m] is not None and r[m]["mean"] <= bound[m] for m in bound)

    best = {}
    for family in FAMILIES[1:]:
        candidates = [(label, r) for label, r in rows.items() if r["family"] == family and r["rate"]["mean"] is not None
                      and harmless(r)]
        if candidates:
            label, r = min(candidates, key=lambda c: (c[1]["rate"]["mean"], c[1]["evaluations"]["mean"]))
            best[family] = {"label": label, "rate": r["rate"]["mean"], "evaluations": r["evaluations"]["mean"],
                            "apart_below_none": bool(r["rate"]["high"] is not None and none["rate"]["low"] is not None
                                                     and r["rate"]["high"] < none["rate"]["low"])}
    base = none["rate"]["mean"]
    halving = [(r["evaluations"]["mean"], label) for label, r in rows.items()
               if base and r["rate"]["mean"] is not None and r["rate"]["mean"] <= 0.5 * base and harmless(r)]
    winner = min(best.items(), key=lambda kv: (kv[1]["rate"], kv[1]["evaluations"]))[0] if best else None
    return {"best": best, "winner": winner, "cheapest_halving": min(halving)[1] if halving else None}


COLOURS = {"none": "black", "filter": "tab:blue", "abort": "tab:orange", "stochastic": "tab:green",
           "guidance": "tab:red", "smoothness": "tab:purple"}


def plot_pareto(path: Path, blocks: dict, T: int) -> str:
    """Per data set: hallucination rate against the MMD to the true mixture, one marker per
    setting, its area the cost in network evaluations per returned sample (relative to T), 95% bars on the rate."""
    figure = plots.new_figure(5.0 * len(blocks), 4.4)
    axes = np.atleast_1d(figure.subplots(1, len(blocks)))
    for ax, (dataset, rows) in zip(axes, blocks.items()):
        seen = set()
        for label, r in rows.items():
            if r["rate"]["mean"] is None or r["mmd"]["mean"] is None:
                continue
            family = r["family"]
            y = 100 * r["rate"]["mean"]
            low = 100 * (r["rate"]["low"] if r["rate"]["low"] is not None else r["rate"]["mean"])
            high = 100 * (r["rate"]["high"] if r["rate"]["high"] is not None else r["rate"]["mean"])
            size = 50.0 * max(r["evaluations"]["mean"], 1.0) / T
            ax.errorbar([r["mmd"]["mean"]], [y], yerr=[[y - low], [high - y]], fmt="none", ecolor=COLOURS[family],
                        alpha=0.5, lw=1)
            ax.scatter([r["mmd"]["mean"]], [y], s=max(size, 10.0), color=COLOURS[family], alpha=0.75,
                       label=family if family not in seen else None, edgecolors="none")
            seen.add(family)
        ax.set_xlabel("MMD to the true mixture")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylabel("hallucination rate (%)")
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylim(bottom=0.0)
        ax.set_title(dataset, fontsize=10)
        ax.legend(fontsize=7)
    figure.suptitle("mitigations: rate against distortion (marker area: network evaluations per returned sample)",
                    fontsize=10)
    return plots.save(figure, path)


def _table(rows: dict) -> str:
    lines = ["| method | strength | hallucination rate | blur-adjusted | mode weights TV | spread / true std | "
             "MMD | network evaluations per sample | kept |", "|" + "---|" * 9]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['strength']} | {common.fmt(r['rate'], pct=True)} | "
                     f"{common.fmt(r['rate_blur'], pct=True)} | {common.fmt(r['weights_tv'])} | "
                     f"{common.fmt(r['spread'])} | {common.fmt(r['mmd'])} | {common.fmt(r['evaluations'], digits=4)} | "
                     f"{common.fmt(r['kept'], pct=True)} |")
    return "\n".join(lines)


def _words(dataset: str, rows: dict, v: dict) -> str:
    none = rows["none (DDPM)"]
    lines = [f"No mitigation (DDPM, all steps): {common.fmt(none['rate'], pct=True)} hallucinated."]
    for family, b in v["best"].items():
        apart = "below no mitigation's interval" if b["apart_below_none"] else "intervals overlap no mitigation's"
        lines.append(f"- {family}: best harmless setting `{b['label']}`, {100 * b['rate']:.3g}% ({apart}), "
                     f"{b['evaluations']:.4g} network evaluations per returned sample.")
    missing = [f for f in FAMILIES[1:] if f not in v["best"]]
    if missing:
        lines.append(f"- no setting of {', '.join(missing)} stays within no mitigation's distortion bounds.")
    lines.append(f"**Wins here:** {v['winner'] or 'none'} (lowest rate among the harmless settings); the cheapest "
                 f"harmless setting that halves the rate: {v['cheapest_halving'] or 'none'}.")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The experiment.

def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    metrics = {"experiment": "mitigations", "profile": p, "k": common.K, "datasets": {}}
    blocks, sections = {}, []
    for dataset in p["datasets"]:
        result = study(out, p, dataset, progress, timer)
        v = verdict(result["results"])
        metrics["datasets"][dataset] = {**result, "verdict": v}
        blocks[dataset] = result["results"]
        sections.append(f"## {dataset}\n\n{_words(dataset, result['results'], v)}\n\n{_table(result['results'])}\n")
    figures = {"pareto": Path(plot_pareto(out / "pareto.png", blocks, p["timesteps"])).name}
    headline = "; ".join(f"{d}: {m['verdict']['winner'] or 'no method'}" for d, m in metrics["datasets"].items())
    timer.lap("figures")
    metrics["figures"] = figures
    metrics["seconds"] = timer.seconds
    report = f"""# mitigations: fewer hallucinations, at what distortion and cost?

**Methods, on the same learned models ({p['seeds']} seeds per data set, {p['num_samples']:,} samples per seed and
setting):** none (DDPM over all {p['timesteps']} steps, the paper's sampler); post-hoc filters that keep the
share of samples of lowest Hal (t = 9..0) or lowest `{p['filter_detector']}`; abort and resample at t_e steps
before the last (Hal over the 10 steps ending there; the threshold flags a share of the plain samples; at most
{p['max_redraws']} redraws); DDIM over {p['ddim_steps']} steps with k stochastic (DDPM) steps at its end; guidance
toward the likeliest mode with the mixture's exact posterior (scale, and the timestep from which it acts); the
score-smoothness penalty mean 1 / (1 + J_ii^2) in training (a model per weight).

**Measured on the samples returned:** the hallucination rate (farther than {common.K:g} stds from every mode; a
sample that is not finite counts), blur-adjusted (farther than {common.K:g} times the mode's own spread where
wider); the total-variation distance between the mode weights of the in-support samples and the true weights;
each mode's spread over its true std (mean over modes); the MMD to a true sample with equal counts per mode
(Gaussian kernels of 0.1, 0.3 and 1 times the median distance between its points; bounded, so a few samples that
flew far do not swamp it); the cost in network evaluations per returned sample (a filter that keeps r of the samples costs
T / r; abort: the reverse steps run per returned sample, aborted draws included; guidance costs no network
evaluation). {common.CI_TEXT}. "Harmless": mode weights TV and MMD within the upper 95% bound of no mitigation's.
Profile `{p['profile']}`: {common.sizes_markdown(p)}.

What each method assumes: a filter and abort need only the model; guidance needs the mixture's means, stds and
weights (the exact posterior over modes); the penalty retrains the model.

**Headline:** the lowest hallucination rate without distorting the rest of the distribution beyond no
mitigation's intervals, per data set: {headline}.

![pareto](pareto.png)

{chr(10).join(sections)}
Timing (s): {timer.seconds}.
"""
    return common.finish(out, metrics, report)
