"""Beyond the paper: every hallucination detector of :mod:`mijax.detectors` on the same samples, with 95% CIs
over seeds (1D, the 5 x 5 grid, the rotated grid), what each costs, and how early each one knows."""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np

import jax

from mijax import collect, detection, execution, plots, timing
from mijax import detectors as detectors_lib
from mijax.config import AbortConfig
from mijax.abort import sample_with_abort
from mijax.config import build, setting
from mijax import experiments
from mijax.experiments import common
from mijax.runs import data_oracle, load_run, sample_keys
from mijax.config import SamplerConfig
from mijax.training import eval_params

SUMMARY = "Beyond the paper: 8 hallucination detectors compared on the same samples (1D, 2D, rotated 2D), cost, how early"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 33.7 min (`/usr/bin/time`;
# every model trained from scratch: training 26.8 min, sampling 4.1 min).
QUICK_MINUTES: Optional[float] = 33.7
NAMES = tuple(detectors_lib.DETECTORS)  # every registered detector, default windows (t = 9..0; lid at t0 = 10)
EARLY = ("hal", "xt_var", "path_length", "eps_norm", "jac_trace", "jac_frob")  # the windowed ones, swept in t_e
EARLY_ENDS = (0, 10, 25, 50, 100, 200, 400)  # windows of EARLY_LENGTH steps ending t_e steps before the last
EARLY_LENGTH = 10
# Image data sets, each with the model and profile of its own experiment (shared runs: `mijax experiment all`
# trains them once); a Jacobian detector is Hutchinson's estimate there. image_profiles: {name: overrides}.
IMAGE_SETTINGS = ("shapes", "digits")
IMAGE_EARLY = ("hal", "xt_var", "path_length", "eps_norm")  # quick: no early Jacobian windows on images (4 jvps a step)
# (quick, 2 CPU cores: 512 SHAPES samples of 3 seeds with every detector took 8.9 min, so quick draws 256
# per seed (image_samples; None: the image experiment's own number), and abort runs on 1,000 samples, not 2,500;
# there Hal over a window ending at t_e = 25 or 100 had AUROC 0.66 / 0.49 in 1D (0.89 at t_e = 10), so that
# aborting there removed nothing: quick aborts at t_e = 10 and 25)
# tag -> (data set, 1D modes); the models are the other Gaussian experiments' (detection, grid-2d)
SETTINGS = {"1d": ("gaussian1d", (1.0, 2.0, 3.0)), "2d": ("gaussian25", None), "2d_rotated": ("gaussian25_rotated", None)}
ABORT_SETTINGS = ("1d", "2d")  # abort and resample (the rotated grid's model costs the same as the grid's)


@dataclasses.dataclass(frozen=True, kw_only=True)
class DetectorsProfile(common.Mixture2DProfile):
    """detectors' sizes: the 1D and 2D runs (:class:`~mijax.experiments.common.Mixture2DProfile`; the rotated
    grid's has the 2D sizes), which settings run, what each detector's cost is measured on, the early windows,
    abort and resample, and the image settings (each with its own experiment's profile of the same name, changed
    by ``image_profiles``)."""

    cost_samples: int = setting(help="samples per seed of the cost measurement (0: not measured)", low=0)
    cost_repeats: int = setting(help="timed repeats of each cost measurement (the best counts)", above=0)
    cost_each: bool = setting(True, "time every detector alone too, not only all together")
    early_ends: tuple[int, ...] = setting(EARLY_ENDS, f"ends t_e of the early windows of {EARLY_LENGTH} steps")
    abort_samples: int = setting(help="samples per seed of abort and resample (0: not studied)", low=0)
    abort_ends: tuple[int, ...] = setting((10, 25), "ends t_e at which samples are aborted")
    abort_retentions: tuple[float, ...] = setting((0.90, 0.96, 0.99), "in-support shares the abort threshold keeps")
    max_redraws: int = setting(3, "redraws per aborted sample at most", low=0)
    settings: tuple[str, ...] = setting(tuple(SETTINGS), "the Gaussian-mixture settings compared",
                                        choices=tuple(SETTINGS))
    abort_settings: tuple[str, ...] = setting(ABORT_SETTINGS, "the settings with abort and resample",
                                              choices=tuple(SETTINGS))
    image_settings: tuple[str, ...] = setting(IMAGE_SETTINGS, "the image experiments whose runs are compared",
                                              choices=IMAGE_SETTINGS)
    image_profiles: Mapping[str, Any] = setting(factory=dict, help="{image experiment: changes to its profile}")
    image_detectors: tuple[str, ...] = setting(NAMES, "the detectors compared on images", choices=NAMES)
    image_early: tuple[str, ...] = setting(help="the detectors swept over early windows on images", choices=EARLY)
    image_samples: Optional[int] = setting(help="samples per seed on images (None: the image experiment's own)",
                                           above=0)


QUICK = DetectorsProfile(**common.QUICK_1D, **common.two_d(common.QUICK_2D), num_samples=10_000, chunk_size=2_500,
                         cost_samples=1_000, cost_repeats=1, abort_samples=1_000, image_early=IMAGE_EARLY,
                         image_samples=256, **common.QUICK_OPTIMISER, **common.QUICK_SAVING)
PROFILES = {
    # smoke: no cost measurement; abort on 1D only, at t_e = 5; two detectors on the images
    "smoke": common.smoke(QUICK, cost_samples=0, early_ends=(0, 25), abort_samples=128, abort_ends=(5,),
                          abort_retentions=(0.9,), abort_settings=("1d",), image_detectors=("hal", "eps_norm"),
                          image_early=("hal",), image_samples=None),
    "quick": QUICK,
    "paper": DetectorsProfile(**common.PAPER_1D, **common.two_d(common.PAPER_2D), num_samples=1_000_000,
                              chunk_size=50_000, cost_samples=10_000, cost_repeats=3, abort_samples=100_000,
                              image_early=EARLY, image_samples=None),
}
ABORT_DETECTOR = "hal"


def specs_for(timesteps: int, ends=EARLY_ENDS, names=NAMES, early=EARLY) -> tuple[detectors_lib.DetectorSpec, ...]:
    """Every detector of ``names`` at its default window, then the early windows of those also in ``early``,
    ending at ``ends``, that fit in T reverse steps (``timesteps``)."""
    main = [n if detectors_lib.DETECTORS[n].kind == "final" else f"{n}@0:{EARLY_LENGTH}" for n in names]
    swept = [f"{n}@{e}:{EARLY_LENGTH}" for e in ends if 0 < e and e + EARLY_LENGTH <= timesteps for n in EARLY
             if n in names and n in early]
    return detectors_lib.parse(main + swept)


def _key(name: str, end: int = 0) -> str:
    final = detectors_lib.DETECTORS[name].kind == "final"
    return detectors_lib.DetectorSpec(name, detectors_lib.LID_END if final else end, 1 if final else EARLY_LENGTH).key


def _seed_numbers(score: np.ndarray, positives: np.ndarray) -> dict:
    """AUROC and the two operating points of one seed's scores (None where a class is empty or a score NaN)."""
    if not 0 < positives.sum() < positives.size or np.isnan(score).any():
        return {"auroc": np.nan, "removed": np.nan, "retained": np.nan}
    return {"auroc": detection.auroc(score, positives),
            "removed": detection.removal_at_retention(score, positives, 0.96)["removed"],
            "retained": detection.retained_at_removal(score, positives, 0.95)["retained"]}


def evaluate(scores: dict[str, np.ndarray], positives: np.ndarray) -> dict:
    """Per detector key, mean [95% CI] over seeds of AUROC, removal at 96% retention and retention at 95% removal.

    Args:
      scores: ``{key: [S, N]}``. positives: bool [S, N] (hallucinations).
    """
    out = {}
    for key, values in scores.items():
        rows = [_seed_numbers(np.asarray(values[s], np.float64), positives[s]) for s in range(positives.shape[0])]
        out[key] = {"auroc": common.ci([r["auroc"] for r in rows], proportion=True),
                    "removed_at_96_retention": common.ci([r["removed"] for r in rows], proportion=True),
                    "retained_at_95_removal": common.ci([r["retained"] for r in rows], proportion=True)}
    return out


def ranking(per_setting: dict) -> list[dict]:
    """Detectors by their AUROC averaged over the data sets they ran on (mean of the per-data-set means), best
    first."""
    rows = []
    for name in NAMES:
        per = {tag: s["detectors"][_key(name)]["auroc"]["mean"] if _key(name) in s["detectors"] else None
               for tag, s in per_setting.items()}
        means = [m for m in per.values() if m is not None]
        rows.append({"detector": name, "mean_auroc": float(np.mean(means)) if means else None, "per_dataset": per})
    return sorted(rows, key=lambda r: (r["mean_auroc"] is None, -(r["mean_auroc"] or 0.0)))  # unscored last


def hal_verdicts(per_setting: dict) -> dict:
    """Per data set: the detectors whose AUROC CI lies wholly above Hal's (Hal loses to them), wholly below
    (Hal wins), and whether Hal has the best mean."""
    out = {}
    for tag, s in per_setting.items():
        hal = s["detectors"][_key("hal")]["auroc"]
        beats, loses = [], []
        present = [n for n in NAMES if _key(n) in s["detectors"]]
        for name in [n for n in present if n != "hal"]:
            other = s["detectors"][_key(name)]["auroc"]
            if None in (hal["low"], hal["high"], other["low"], other["high"]):
                continue
            if other["low"] > hal["high"]:
                beats.append(name)
            elif other["high"] < hal["low"]:
                loses.append(name)
        best = max(present, key=lambda n: -np.inf if s["detectors"][_key(n)]["auroc"]["mean"] is None
                   else s["detectors"][_key(n)]["auroc"]["mean"])
        out[tag] = {"better_than_hal": beats, "worse_than_hal": loses, "best": best, "hal_is_best": best == "hal"}
    return out


def abort_study(run_dir: Path, p: dict, data, plain: dict, positives: np.ndarray, progress: bool = True) -> dict:
    """Abort and resample against post-hoc filtering, each calibrated to keep the same share of in-support samples.

    For each retention r of ``abort_retentions`` and each t_e of ``abort_ends``, per seed: the post-hoc filter
    removes the plain samples whose Hal (t = 9..0) is at or above the threshold keeping r of the in-support ones
    (:func:`mijax.detection.removal_at_retention`); abort and resample redraws, at t_e, the samples whose Hal over
    the window ending there is at or above the threshold keeping r of the in-support ones (both thresholds from
    the plain samples ``plain``, labels ``positives`` [S, N]), then draws ``abort_samples`` samples with it.
    Compute is reverse steps per accepted sample: post-hoc T / (share kept); abort, the mean of its steps.
    """
    config, pieces, state = load_run(run_dir)
    params, keys = eval_params(state, config.train), sample_keys(config, 0)
    T = p["timesteps"]
    n = min(p["abort_samples"], positives.shape[1])
    oracle = data_oracle(data, pieces.schedule)
    plain_rate = positives.mean(axis=1)
    abort_ends = [int(e) for e in p["abort_ends"] if e + EARLY_LENGTH <= T]
    out = {"plain_hallucination_rate": common.ci(plain_rate, proportion=True),
           "retentions": list(p["abort_retentions"]),
           "ends": abort_ends, "samples_per_seed": n, "post_hoc": [], "abort": {}}
    for r in p["abort_retentions"]:
        rate, steps, kept = [], [], []
        for s in range(positives.shape[0]):
            hal, pos = np.asarray(plain[f"score_{_key(ABORT_DETECTOR)}"][s], np.float64), positives[s]
            threshold = detection.removal_at_retention(hal, pos, r)["threshold"] if 0 < pos.sum() < pos.size else np.inf
            keep = hal < threshold
            rate.append(pos[keep].mean() if keep.any() else np.nan)
            steps.append(T / keep.mean() if keep.any() else np.nan)
            kept.append((keep & ~pos).sum() / max(1, (~pos).sum()))
        out["post_hoc"].append({"retention": r, "hallucination_rate": common.ci(rate, proportion=True),
                                "steps_per_sample": common.ci(steps),
                                "in_support_kept": common.ci(kept, proportion=True)})
    bar = execution.progress_bar(progress, total=len(p["abort_ends"]) * len(p["abort_retentions"]) * positives.shape[0], desc="abort and resample",
        unit="run")
    for end in abort_ends:
        spec = detectors_lib.DetectorSpec(ABORT_DETECTOR, int(end), EARLY_LENGTH)
        rows = []
        for r in p["abort_retentions"]:
            rate, steps, redrawn, flagged = [], [], [], []
            for s in range(positives.shape[0]):
                early, pos = np.asarray(plain[f"score_{spec.key}"][s], np.float64), positives[s]
                threshold = detection.removal_at_retention(early, pos, r)["threshold"] if 0 < pos.sum() < pos.size else np.inf
                model = jax.tree.map(lambda a: a[s], params)
                got, info = sample_with_abort(pieces.denoise_fn, model, pieces.schedule, keys[s], n, pieces.shape,
                                              AbortConfig(spec, float(threshold), p["max_redraws"]),
                                              SamplerConfig(objective=config.diffusion.objective), oracle=oracle)
                collect.check_finite({"x": np.asarray(got.x)[None], "hal": np.asarray(got.hal)[None]})
                rate.append(float(np.mean(np.asarray(data.hallucinated(np.asarray(got.x))))))
                steps.append(float(info["steps"].mean()))
                redrawn.append(float((info["redraws"] > 0).mean()))
                flagged.append(float(info["still_flagged"].mean()))
                bar.update(1)
            rows.append({"retention": r, "hallucination_rate": common.ci(rate, proportion=True),
                         "steps_per_sample": common.ci(steps), "redrawn_share": common.ci(redrawn, proportion=True),
                         "still_flagged_share": common.ci(flagged, proportion=True)})
        out["abort"][str(int(end))] = rows
    bar.close()
    return out


def _plot_abort(path: Path, study: dict, dataset: str, T: int) -> None:
    figure = common.new_figure(6.4, 4.6)
    ax = figure.subplots()
    plain = study["plain_hallucination_rate"]["mean"]
    ax.scatter([1.0], [100 * plain], color="black", marker="x", label="no filter")

    def line(rows, label, **style):
        xs = [r["steps_per_sample"]["mean"] / T for r in rows]
        ys = [100 * r["hallucination_rate"]["mean"] for r in rows]
        ax.plot(xs, ys, marker="o", label=label, **style)
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(f"{100 * r['retention']:g}%", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")

    line(study["post_hoc"], "post-hoc filter (Hal, t = 9..0)", color="tab:blue")
    for i, (end, rows) in enumerate(study["abort"].items()):
        line(rows, f"abort at t_e = {end} and resample (Hal, {EARLY_LENGTH} steps)", color=f"C{i + 1}", ls="--")
    ax.set_xlabel("reverse steps per accepted sample / T")
    ax.set_ylabel("hallucination rate of the accepted samples (%)")
    ax.set_title(f"{dataset}: what it costs to keep hallucinations out (labels: in-support kept)", fontsize=9)
    ax.legend(fontsize=7)
    common.save_figure(figure, path)


def _setting(out: Path, tag: str, config, sampler: SamplerConfig, num_samples: int, chunk_size: int, p: dict,
             timer, progress: bool, names=NAMES, early=EARLY) -> dict:
    """One data set: train (or reuse) its models, sample with every detector of ``names`` it supports, score, plot."""
    T = config.diffusion.timesteps
    steps = common.reverse_steps(T)  # T as published, or the chosen sampler's steps
    data = build(config).dataset
    names = [n for n in NAMES if n in names and (not detectors_lib.DETECTORS[n].needs_oracle or hasattr(data, "oracle"))]
    abort = tag in p["abort_settings"] and p["abort_samples"]
    ends = sorted({0, *(int(e) for e in tuple(p["early_ends"]) + (tuple(p["abort_ends"]) if abort else ())
                        if e + EARLY_LENGTH <= steps)})
    specs = specs_for(steps, ends, names, early)
    run_dir = common.train(out, tag, config, progress)
    timer.lap("train")
    result = common.sample(run_dir, num_samples, dataclasses.replace(sampler, detectors=specs), chunk_size=chunk_size,
                           progress=progress)
    timer.lap("sample")
    positives = np.stack([np.asarray(data.hallucinated(x)) for x in result["x"]])  # [S, N], the data set's own label
    scores = {s.key: result[f"score_{s.key}"] for s in specs}
    table = evaluate(scores, positives)
    block = {"dataset": config.data.dataset, "timesteps": T, "num_samples": num_samples,
             "detectors_run": [s.label for s in specs],
             "hallucination_rate": common.ci(positives.mean(axis=1), proportion=True),
             "num_hallucinated": [int(v) for v in positives.sum(axis=1)],
             "detectors": {_key(n): table[_key(n)] for n in names},
             "early": {n: [{"end": e, "auroc": table[_key(n, e)]["auroc"]} for e in ends] for n in EARLY
                       if n in names and n in early}}
    if "blur" in data.labels(result["x"][0][:1]):  # mixtures: a widened mode is not interpolation (see detection)
        blurred = np.stack([np.asarray(data.labels(x)["blur"]) for x in result["x"]])
        blur_table = evaluate({_key(n): scores[_key(n)] for n in names}, blurred)
        block["hallucination_rate_blur_adjusted"] = common.ci(blurred.mean(axis=1), proportion=True)
        for n in names:
            block["detectors"][_key(n)]["auroc_blur_adjusted"] = blur_table[_key(n)]["auroc"]
    curves = {}
    for name in names:
        score = np.asarray(scores[_key(name)][0], np.float64)
        if 0 < positives[0].sum() < positives[0].size and not np.isnan(score).any():
            fpr, tpr, _ = detection.roc_curve(score, positives[0])
            curves[name] = (fpr, tpr, detection.auroc(score, positives[0]))
    plots.plot_roc(curves, title=f"{config.data.dataset}, seed 0: every detector", path=out / f"roc_{tag}.png")
    if abort:
        block["abort"] = abort_study(run_dir, p, data, result, positives, progress)
        timer.lap("abort")
        _plot_abort(out / f"abort_{tag}.png", block["abort"], config.data.dataset, T)
    plot_early(out / f"early_{tag}.png", block["early"], config.data.dataset)
    timer.lap("figures")
    return block


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    metrics = {"experiment": "detectors", "profile": p, "settings": {},
               "references": {n: d.reference for n, d in detectors_lib.DETECTORS.items()}}
    for tag in p["settings"]:
        dataset, modes = SETTINGS[tag]
        config = common.setting_config(p, tag, dataset, modes)
        metrics["settings"][tag] = _setting(out, tag, config, SamplerConfig(), p["num_samples"], p["chunk_size"], p,
                                            timer, progress)
    for tag in p["image_settings"]:  # through the same data-set interface, with the image experiment's own model
        module = experiments.load(tag)
        ip = common.resolve_profile(module.PROFILES, p["profile"], overrides=dict(p["image_profiles"]).get(tag))
        metrics["settings"][tag] = _setting(out, tag, module.run_config(ip), SamplerConfig(clip_x0=True),
                                            p["image_samples"] or ip["num_samples"], ip["chunk_size"], p, timer, progress,
                                            names=p["image_detectors"], early=p["image_early"])
    # What each detector costs: sampling time against Hal alone, on the paper's network (weights do not matter).
    groups = {name: [name] for name in NAMES} if p["cost_each"] else {}  # cost_each False: only all together
    groups["all"] = list(NAMES)
    cost = {}
    for dim in (1, 2) if p["cost_samples"] else ():  # cost_samples 0: not measured
        c = detector_costs(p["cost_samples"], p["timesteps"], dim, EARLY_LENGTH, groups, p["cost_repeats"])
        cost[f"d{dim}"] = {"hal_only_seconds": c["hal_only"]["seconds"],
                           **{label: {"ratio": g["ratio"], "seconds": g["timing"]["seconds"]} for label, g in c["groups"].items()}}
    metrics["cost"] = cost or None
    timer.lap("cost")
    metrics["ranking"] = ranking(metrics["settings"])
    metrics["hal"] = hal_verdicts(metrics["settings"])
    metrics["machine"] = timing.machine_info()
    sections = [_section(tag, metrics) for tag in metrics["settings"]]
    metrics["seconds"] = timer.seconds
    report = _report(p, metrics, sections)
    return common.finish(out, metrics, report)


def refuses_sampler(p: dict) -> Optional[str]:
    """Why profile ``p`` cannot draw with a reverse sampler chosen by ``mijax experiment --sampler`` (None: it
    can): its abort-and-resample study redraws with DDPM and counts the cost in DDPM's T steps."""
    if p["abort_samples"] and set(p["abort_settings"]) & set(p["settings"]):
        return ("its abort-and-resample study redraws with DDPM and counts the cost in DDPM's T steps; "
                "--set abort_samples=0 leaves it out")
    return None


def detector_costs(n: int, timesteps: int, dim: int, window: int, groups: dict[str, list[str]],
                   repeats: int = 3, seed: int = 0, params=None, timer=timing.time_best) -> dict:
    """Sampling time with Hal alone, and with each group of detectors in the same pass (``groups``:
    ``{label: [detector names]}``, each over the last ``window`` steps; ``lid`` at its default t0), on the
    paper's network for d = ``dim`` (random weights unless ``params``: the cost does not depend on them), with the
    reverse sampler chosen around the experiment (:func:`mijax.experiments.common.with_chosen`; DDPM as
    published). The oracle's exact denoiser is the paper's 1D mixture (d = 1) or 5 x 5 grid (d = 2), else 1D
    modes on the diagonal. ``timer(fn, repeats)``: :func:`mijax.timing.time_best` or one like it.

    Returns:
      ``{"hal_only": timing, "groups": {label: {"detectors": [labels], "timing", "ratio", "ratio_median"}}}``,
      timings as ``timer`` gives them, ratios against Hal alone.
    """
    import jax.numpy as jnp

    from mijax import mixtures
    from mijax.models import ToyDenoiser, make_denoiser
    from mijax.sampling import sample
    from mijax.diffusion import make_schedule

    module = ToyDenoiser(features=dim)
    key = jax.random.PRNGKey(seed)
    if params is None:
        params = module.init(key, jnp.zeros((1, dim), jnp.float32), jnp.zeros((1,), jnp.int32))
    model = make_denoiser(module)
    schedule = make_schedule(num_timesteps=timesteps)
    truth = {1: mixtures.gaussian1d, 2: mixtures.gaussian25}.get(dim)
    truth = truth() if truth else mixtures.make_mixture(jnp.outer(jnp.arange(1.0, 4.0), jnp.ones(dim)), 0.05)
    oracle = (mixtures.exact_denoiser, (truth, schedule))
    sample_key = jax.random.fold_in(key, 1)

    def timed(config):
        return timer(lambda: sample(model, params, schedule, sample_key, n, (dim,), config, oracle=oracle), repeats)

    hal = timed(common.with_chosen(SamplerConfig(hal_window=window), timesteps))
    out = {"n": n, "timesteps": timesteps, "dim": dim, "window": window, "hal_only": hal, "groups": {}}
    for label, names in groups.items():
        specs = detectors_lib.parse([name if detectors_lib.DETECTORS[name].kind == "final" else f"{name}@0:{window}"
                                     for name in names])
        cost = timed(common.with_chosen(SamplerConfig(hal_window=window, detectors=specs), timesteps))
        out["groups"][label] = {"detectors": [s.label for s in specs], "timing": cost,
                                "ratio": cost["seconds"] / hal["seconds"],
                                "ratio_median": cost["median_seconds"] / hal["median_seconds"]}
    return out


def _ratio(cost: dict, name: str) -> str:
    return f"{cost[name]['ratio']:.2f}x" if name in cost else "n/a"


def _label_text(dataset: str) -> str:
    """What the data set calls a hallucination: the first clause of its ``hallucinated`` docstring."""
    from mijax import data as datasets

    doc = inspect.getdoc(datasets.make(dataset).hallucinated) or "the data set's own label"
    text = doc.split(":")[0].split("\n")[0].rstrip(".")
    return text[:1].lower() + text[1:]


def _section(tag: str, metrics: dict) -> str:
    s = metrics["settings"][tag]
    cost = (metrics["cost"] or {}).get("d1" if tag == "1d" else "d2", {}) if tag in SETTINGS else {}
    blur = "auroc_blur_adjusted" in next(iter(s["detectors"].values()))
    rows = "\n".join(
        f"| {name} | {common.fmt(v['auroc'])} | " + (f"{common.fmt(v['auroc_blur_adjusted'])} | " if blur else "")
        + f"{common.fmt(v['removed_at_96_retention'], pct=True)} | {common.fmt(v['retained_at_95_removal'], pct=True)} | "
        f"{_ratio(cost, name)} |"
        for name in NAMES if _key(name) in s["detectors"] for v in [s["detectors"][_key(name)]])
    ends = [r["end"] for r in next(iter(s["early"].values()))]
    early = "\n".join(f"| {name} | " + " | ".join(common.fmt(r["auroc"]) for r in rows) + " |"
                      for name, rows in s["early"].items())
    abort = _abort_section(tag, s["abort"], metrics["profile"]) if "abort" in s else ""
    label = _label_text(s["dataset"])
    blurred = (f"; blur-adjusted (beyond 5 times a widened mode's own spread): "
               f"{common.fmt(s['hallucination_rate_blur_adjusted'], pct=True)}. The operating points use the 5-std "
               "labels" if blur else "")
    return f"""## {tag}: {s['dataset']}

Hallucinated: {label}. Rate {common.fmt(s['hallucination_rate'], pct=True)}
({', '.join(str(v) for v in s['num_hallucinated'])} of {s['num_samples']:,} samples per seed){blurred}.
T = {s['timesteps']}.

| detector | AUROC | {'AUROC, blur-adjusted labels | ' if blur else ''}hallucinations removed, 96% of in-support kept | in-support kept, 95% of hallucinations removed | sampling cost vs Hal alone |
|---|---|{'---|' if blur else ''}---|---|---|
{rows}

How early (AUROC of a {EARLY_LENGTH}-step window ending t_e steps before the last):

| detector | {' | '.join(f't_e = {e}' for e in ends)} |
|---|{'---|' * len(ends)}
{early}

![ROC](roc_{tag}.png) ![early](early_{tag}.png)
{abort}"""


def _abort_section(tag: str, study: dict, p: dict) -> str:
    T = p["timesteps"]
    head = "| in-support kept | post-hoc: hallucination rate | post-hoc: steps / T | " + " | ".join(
        f"abort t_e = {e}: hallucination rate | steps / T | redrawn" for e in study["ends"]) + " |"
    rows = []
    for i, r in enumerate(study["retentions"]):
        post = study["post_hoc"][i]
        cells = [f"{100 * r:g}%", common.fmt(post["hallucination_rate"], pct=True),
                 f"{post['steps_per_sample']['mean'] / T:.3f}" if post["steps_per_sample"]["mean"] else "n/a"]
        for e in study["ends"]:
            a = study["abort"][str(e)][i]
            cells += [common.fmt(a["hallucination_rate"], pct=True), f"{a['steps_per_sample']['mean'] / T:.3f}",
                      common.fmt(a["redrawn_share"], pct=True)]
        rows.append("| " + " | ".join(cells) + " |")
    return f"""
Abort and resample against post-hoc filtering ({study['samples_per_seed']:,} samples per seed and setting; no
filter: hallucination rate {common.fmt(study['plain_hallucination_rate'], pct=True)}). Each threshold keeps the
given share of in-support samples of the plain draws; abort redraws at most {p['max_redraws']} times and always
returns as many samples as asked for; post-hoc filtering keeps fewer and needs T / (share kept) steps per kept
sample.

{head}
|{'---|' * (3 + 3 * len(study['ends']))}
{chr(10).join(rows)}

![abort](abort_{tag}.png)
"""


def _report(p: dict, metrics: dict, sections: list[str]) -> str:
    tags = list(metrics["settings"])
    rank = "\n".join(f"| {i + 1} | {r['detector']} | {r['mean_auroc']:.3f} | "
                     + " | ".join("n/a" if r["per_dataset"][t] is None else f"{r['per_dataset'][t]:.3f}" for t in tags)
                     + " |" for i, r in enumerate(metrics["ranking"]) if r["mean_auroc"] is not None)
    verdicts = []
    for tag, v in metrics["hal"].items():
        line = f"- **{tag}**: best mean AUROC: {v['best']}"
        line += "; Hal's CI lies below " + ", ".join(v["better_than_hal"]) if v["better_than_hal"] else "; no detector's CI lies wholly above Hal's"
        line += ("; Hal's CI lies above " + ", ".join(v["worse_than_hal"])) if v["worse_than_hal"] else ""
        verdicts.append(line + ".")
    if metrics["cost"]:
        c1, c2 = metrics["cost"]["d1"], metrics["cost"]["d2"]
        cost = (f"all detectors in one pass cost {c1['all']['ratio']:.2f}x (1D) and {c2['all']['ratio']:.2f}x (2D) "
                "the sampling time of Hal alone")
        cost_section = f"""Sampling {p['cost_samples']:,} points x {p['timesteps']} steps with each detector added to Hal, relative to
Hal alone (the paper's network, {metrics['machine']['cpu_model']}, {metrics['machine']['cpu_count']} CPUs): all
detectors together {c1['all']['ratio']:.2f}x in 1D, {c2['all']['ratio']:.2f}x in 2D (Hal alone
{c1['hal_only_seconds']:.2f} s and {c2['hal_only_seconds']:.2f} s). The Jacobian and the oracle run only on
their windows' steps."""
    else:
        cost, cost_section = "the cost was not measured (cost_samples = 0)", "Not measured (cost_samples = 0)."
    order = [r["detector"] for r in metrics["ranking"] if r["mean_auroc"] is not None]
    if order:
        best = metrics["ranking"][0]
        hal = f"Hal ranks {order.index('hal') + 1} of {len(order)}" if "hal" in order else "Hal could not be scored"
        headline = (f"**Headline:** the best detector over the {len(tags)} data set(s) is `{best['detector']}` (mean "
                    f"AUROC {best['mean_auroc']:.3f}); {hal}; {cost}.")
    else:
        headline = f"**Headline:** no detector could be scored (a class without samples); {cost}."
    described = "\n".join(f"- `{name}`: {d.summary}" + (f" ({d.reference})" if d.reference else "")
                          for name, d in detectors_lib.DETECTORS.items())
    return f"""# detectors: hallucination detectors compared on the same samples

The paper has one detector (Hal: the variance of x0_hat over t = 9..0). Here every detector of
`mijax.detectors` scores the same samples in one sampling pass, on each data set's own hallucination label
(mixtures: farther than 5 std from every mode). {common.CI_TEXT}. The models are those the other
experiments train (mixtures: `detection` and `grid-2d`; images: `shapes` and `digits`, with their own
profiles and clipped x0_hat), so `mijax experiment all` trains each once. Profile `{p['profile']}`:
{common.sizes_markdown({k: v for k, v in p.items() if k != 'image_profiles'})}.

{headline}

{described}

Higher is more suspicious for every score (`jac_trace` is minus the trace). Windows: t = 9..0 unless
said; `lid` at t0 = 10. On images the Jacobian detectors and `lid` use Hutchinson's estimate
({SamplerConfig().jac_probes} Rademacher probes); `oracle` needs the exact denoiser, which only the mixtures have.

## Ranking (AUROC, mean over seeds, then over the data sets)

| rank | detector | mean | {' | '.join(tags)} |
|---|---|---|{'---|' * len(tags)}
{rank}

## Where Hal wins and where it loses

{chr(10).join(verdicts)}

## Cost

{cost_section}

{chr(10).join(sections)}
Timing (s): {metrics['seconds']}.
"""


def plot_early(path: Path, early: dict, dataset: str) -> str:
    """AUROC of each detector against where its window ends (``early``: ``{detector: [{"end", "auroc": ci}]}``,
    the metrics' ``early`` block), mean and 95% CI band over seeds (inside [0, 1])."""
    ends = [r["end"] for r in next(iter(early.values()), [])]
    return common.plot_ci_lines(path, ends, {n: [r["auroc"] for r in rows] for n, rows in early.items()},
                                xlabel=f"the {EARLY_LENGTH}-step window ends t_e steps before the last",
                                ylabel="AUROC", title=f"{dataset}: how early the detectors know", bounds=(0.0, 1.0))
