"""Samplers and hallucination: does deterministic DDIM hallucinate more than DDPM, how the rate moves with the
number of steps of each sampler, and how many stochastic (DDPM) steps inside a DDIM trajectory close the gap;
with the learned models and with the exact score of each mixture."""
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

from mijax import collect, mixtures, plots, samplers
from mijax.config import ConfigError, SamplerConfig, setting
from mijax.data.mixtures import labels
from mijax.detection import auroc
from mijax.experiments import common
from mijax.runs import data_sampler, load_run, sample_keys
from mijax.sampling import reverse_timesteps
from mijax.store import load_cache, save_npz
from mijax.training import eval_params

SUMMARY = ("DDIM against DDPM and the ODE solvers: hallucination rate by sampler, steps, eta and stochastic steps, "
           "learned and exact score")
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 16 min 54 s (`/usr/bin/time`;
# training 664 s, sampling 341 s), every model trained by the experiment itself.
QUICK_MINUTES: Optional[float] = 16.9
SETTINGS = {"gaussian1d": ("1d", (1.0, 2.0, 3.0)), "gaussian25": ("2d", None), "gaussian25_rotated": ("2d", None)}
SCORES = ("learned", "exact")
HOLDS = {"more": "**yes**", "less": "**no** (less, apart)", "not apart": "**not decided** (overlap)",
         "undecided": "n/a"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplersProfile(common.Mixture2DProfile):
    """samplers' sizes: the 1D and 2D runs (:class:`~mijax.experiments.common.Mixture2DProfile`), and the sweep: each
    step-skipping sampler over ``sweep_steps`` (DDIM at every ``etas``), DDIM over ``base_steps`` with k stochastic
    steps placed ``stochastic_at``, DDPM over all T steps; every one with the learned models and the exact score."""

    datasets: tuple[str, ...] = setting(tuple(SETTINGS), "the data sets, of " + ", ".join(SETTINGS),
                                        choices=tuple(SETTINGS))
    sweep_samplers: tuple[str, ...] = setting(("ddim", "heun", "dpmpp2m"), "the step-skipping samplers swept over "
                                              "sweep_steps", choices=("ddim", "heun", "dpmpp2m"))
    sweep_steps: tuple[int, ...] = setting((10, 20, 50, 100, 200), "their numbers of steps")
    etas: tuple[float, ...] = setting((0.0, 1.0), "DDIM's noise scales in the sweep")
    skip: str = setting("uniform", "the timesteps' spacing of the step-skipping samplers, uniform or quad",
                        choices=samplers.SKIPS)
    base_steps: int = setting(50, "DDIM's steps where DDIM meets DDPM and the stochastic steps are added", above=0)
    stochastic: tuple[int, ...] = setting((1, 2, 5, 10, 20), "numbers of stochastic steps inside DDIM")
    stochastic_at: tuple[str, ...] = setting(("first", "last"), "where they go", choices=("first", "last"))
    region_radius: float = setting(0.35, "the between-mode region: within this share of the pair's spacing of the "
                                         "midpoint of two nearest modes (x_t / sqrt(abar_t))", above=0, high=0.5)
    region_time: float = setting(0.04, "the region is tested at the first visited t <= this share of T", low=0,
                                 high=1)
    exact: bool = setting(True, "sample the exact score too")
    full_steps: bool = setting(True, "DDIM (eta 0) over all T steps too: the probability-flow ODE at DDPM's resolution")
    beta_start: Optional[float] = setting(None, "first beta (None: the recipe's)", above=0)
    beta_end: Optional[float] = setting(None, "last beta (None: the recipe's)", above=0, high=1)
    mode_std: Optional[float] = setting(None, "the mixtures' mode std (None: each data set's)", above=0)
    shown: int = setting(6, "trajectories of DDPM and DDIM from the same start in the figure", above=0)

    def check(self):
        super().check()
        if not self.sweep_steps or min(self.sweep_steps) < 2:
            raise ConfigError("sweep_steps", "sweep_steps must be numbers of steps >= 2")
        if any(k <= 0 for k in self.stochastic):
            raise ConfigError("stochastic", "stochastic must be positive numbers of steps")
        for steps in tuple(self.sweep_steps) + (self.base_steps,):
            if steps > self.timesteps:
                raise ConfigError("sweep_steps", f"{steps} steps exceed T = {self.timesteps}")
            try:
                samplers.subsequence(self.timesteps, steps, self.skip)
            except ValueError as e:
                raise ConfigError("sweep_steps", str(e)) from None


# The quick 2D models train 24,000 of the quick recipe's 32,000 steps, so that the whole experiment (three models,
# 2 x 36 sampler settings) fits in 20 minutes on 2 CPU cores; they are not the other experiments' 2D models.
QUICK = SamplersProfile(**common.QUICK_1D, **common.two_d({**common.QUICK_2D, "steps": 24_000}), num_samples=3_000,
                        chunk_size=3_000, **common.QUICK_OPTIMISER, **common.QUICK_SAVING)
PROFILES = {
    "smoke": common.smoke(QUICK, datasets=("gaussian1d",), sweep_samplers=("ddim",), sweep_steps=(10,),
                          stochastic=(2,), stochastic_at=("last",), etas=(0.0,), base_steps=10, shown=3),
    "quick": QUICK,
    "paper": SamplersProfile(**common.PAPER_1D, **common.two_d(common.PAPER_2D), num_samples=100_000,
                             chunk_size=50_000, sweep_steps=(10, 20, 50, 100, 1000)),
    # The ICML 2026 peer's setting: its 25-mode grid (spacing 2, sigma 0.02, normalised), 100,000 points, linear
    # betas 1e-4 -> 0.02 over T = 1000, DDIM with 50 quadratically spaced steps; with the quick recipe's training.
    "peer": SamplersProfile(**common.QUICK_1D, **{**common.two_d(common.QUICK_2D), "n_train_2d": 100_000},
                            num_samples=10_000, chunk_size=10_000, **common.QUICK_OPTIMISER, **common.QUICK_SAVING,
                            datasets=("gaussian25",), beta_start=1e-4, beta_end=0.02, mode_std=0.02, skip="quad",
                            sweep_steps=(10, 20, 50, 100, 500), stochastic=(2, 5, 8), stochastic_at=("first", "last")),
}


def refuses_sampler(p: dict) -> Optional[str]:
    """Why this experiment does not draw with a reverse sampler chosen by ``mijax experiment --sampler``: it
    sweeps the samplers itself."""
    return "it sweeps the samplers itself (its profile's sweep_samplers, sweep_steps, etas and stochastic fields)"


# ---------------------------------------------------------------------------------------------
# What is sampled.

@dataclasses.dataclass(frozen=True)
class Cell:
    """One sampler setting of the sweep: its label, its family (a line in a figure) and its SamplerConfig."""

    label: str
    family: str
    sampler: SamplerConfig


def ddim_cell(steps: int, skip: str) -> Cell:
    """Deterministic DDIM (eta 0) over ``steps``."""
    return Cell(f"ddim eta 0 {steps}", "ddim eta 0", SamplerConfig(sampler="ddim", ddim_steps=steps, skip=skip,
                                                                   hal_window=min(10, steps)))


def cells(p: dict) -> list[Cell]:
    """Every sampler setting of profile ``p``: DDPM, the step sweep, DDIM with stochastic steps, and deterministic
    DDIM over ``base_steps`` and (``full_steps``) over all T, the settings set beside DDPM (:func:`references`)."""
    out = [Cell("ddpm", "ddpm", SamplerConfig())]
    for name in p["sweep_samplers"]:
        for eta in (p["etas"] if name == "ddim" else (0.0,)):
            family = f"ddim eta {eta:g}" if name == "ddim" else name
            for steps in p["sweep_steps"]:
                sampler = SamplerConfig(sampler=name, ddim_steps=steps, skip=p["skip"], eta=eta,
                                        hal_window=min(10, steps))
                out.append(Cell(f"{family} {steps}", family, sampler))
    for at in p["stochastic_at"]:
        for k in p["stochastic"]:
            sampler = SamplerConfig(sampler="ddim", ddim_steps=p["base_steps"], skip=p["skip"], stochastic_steps=k,
                                    stochastic_at=at, hal_window=min(10, p["base_steps"]))
            out.append(Cell(f"ddim {p['base_steps']} + {k} {at}", f"stochastic {at}", sampler))
    labels_ = {c.label for c in out}
    for steps in references(p):
        cell = ddim_cell(steps, p["skip"] if steps < p["timesteps"] else "uniform")
        if cell.label not in labels_:
            out.append(cell)
    return out


def references(p: dict) -> list[int]:
    """The numbers of steps at which deterministic DDIM is set beside DDPM: ``base_steps``, and T with
    ``full_steps``."""
    return [p["base_steps"]] + ([p["timesteps"]] if p["full_steps"] and p["timesteps"] != p["base_steps"] else [])


def base_cell(p: dict) -> str:
    """The label of deterministic DDIM over ``base_steps``, where the stochastic steps are added."""
    return f"ddim eta 0 {p['base_steps']}"


def run_config(p: dict, dataset: str):
    tag, modes = SETTINGS[dataset]
    config = common.setting_config(p, tag, dataset, modes)
    diffusion = {k: p[k] for k in ("beta_start", "beta_end") if p.get(k) is not None}
    if diffusion:
        config = dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion, **diffusion))
    if p.get("mode_std") is not None:
        options = {**config.data.options, "std": float(p["mode_std"])}
        config = dataclasses.replace(config, data=dataclasses.replace(config.data, options=options))
    return config


def nearest_pairs(means: np.ndarray) -> np.ndarray:
    """The pairs of nearest modes (at most 1.1 x the smallest spacing apart): int [P, 2]."""
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
    spacing = dist[np.triu_indices(len(means), 1)].min()
    a, b = np.nonzero(np.triu(dist <= 1.1 * spacing, 1))
    return np.stack([a, b], axis=1)


def in_region(x_t: np.ndarray, abar: float, means: np.ndarray, radius: float) -> np.ndarray:
    """Whether x_t [N, d] lies in the between-mode region at a time of cumulative alpha ``abar``: within
    ``radius`` x the pair's spacing of the midpoint of two nearest modes, in x_t / sqrt(abar) (the noised data's
    own scale). bool [N]."""
    pairs = nearest_pairs(means)
    mid = 0.5 * (means[pairs[:, 0]] + means[pairs[:, 1]])  # [P, d]
    length = np.linalg.norm(means[pairs[:, 1]] - means[pairs[:, 0]], axis=-1)  # [P]
    scaled = np.asarray(x_t, np.float64) / math.sqrt(abar)
    gap = np.linalg.norm(scaled[:, None] - mid[None], axis=-1) / length[None]  # [N, P]
    return np.any(gap <= radius, axis=1)


def _record_from(sampler: SamplerConfig, T: int, region_t: int) -> tuple[SamplerConfig, int, int]:
    """``sampler`` recording x_t from its first visited t <= region_t to the end; that t; the sampler's network
    evaluations per sample."""
    ts, kinds = samplers.timesteps(sampler.sampler, T, sampler.ddim_steps, sampler.skip, sampler.stochastic_steps,
                                   sampler.stochastic_at, sampler.stochastic_from)
    last = int(np.sum(ts <= region_t))
    recording = dataclasses.replace(sampler, trajectory_stride=1, trajectory_last=last, trajectory_xt=True)
    return recording, int(ts[len(ts) - last]), samplers.evaluations(sampler.sampler, kinds)


def draw(run_dir: Path, loaded: tuple, score: str, sampler: SamplerConfig, p: dict,
         progress: bool) -> dict[str, np.ndarray]:
    """All seeds' samples of one cell with the learned models or the exact score, cached in the run directory
    (``loaded``: its :func:`mijax.runs.load_run`): {"x": [S, n, d], "hal": [S, n], "x_region": [S, n, d] (x_t at
    "region_t"), "region_t": [], "evaluations": []}."""
    config, pieces, state = loaded
    T = config.diffusion.timesteps
    region_t = min(T - 1, int(round(p["region_time"] * T)))
    recording, t_region, evaluations = _record_from(data_sampler(config, sampler), T, region_t)
    settings = {"score": score, "n": p["num_samples"], "sampler": dataclasses.asdict(recording)}
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = Path(run_dir) / f"samples-sweep-{digest}.npz"
    cached = load_cache(path, ("x", "hal", "x_region"))
    if cached is not None:
        return cached
    keys = sample_keys(config, 0)
    if score == "learned":
        fn, params = pieces.denoise_fn, eval_params(state, config.train)
    else:
        S = keys.shape[0]
        fn = mixtures.exact_denoiser
        params = jax.tree.map(lambda a: jnp.broadcast_to(a, (S,) + a.shape), (pieces.dataset.mixture, pieces.schedule))
    drawn = collect.draw(fn, params, pieces.schedule, keys, p["num_samples"], pieces.shape, recording,
                         p["chunk_size"], show_progress=progress, desc=f"{config.data.dataset} {score}",
                         require_finite=False)
    result = {"x": drawn["x"], "hal": drawn["hal"], "x_region": drawn["trajectory_xt"][:, :, 0],
              "region_t": np.int32(t_region), "evaluations": np.int32(evaluations)}
    save_npz(path, **result)
    return result


def measure(result: dict, mixture, abar: np.ndarray, radius: float) -> dict:
    """Per-seed hallucination rate (beyond 5 stds of every mode; a sample that diverged, NaN or infinite, counts),
    the share that diverged, Hal's AUROC (over the samples of finite Hal), the share of trajectories in the
    between-mode region at region_t and the share of those (and of the others) that end hallucinated; each a CI
    over seeds."""
    means = np.asarray(mixture.means, np.float64)
    t = int(result["region_t"])
    rate, diverged, auc, entered, after, outside = [], [], [], [], [], []
    for s in range(result["x"].shape[0]):
        x = np.asarray(result["x"][s])
        finite = np.all(np.isfinite(x), axis=-1)
        hal = ~finite | np.asarray(labels(mixture, np.where(finite[:, None], x, 0.0), common.K))
        inside = in_region(result["x_region"][s], float(abar[t]), means, radius)
        scored = np.isfinite(result["hal"][s])
        rate.append(hal.mean())
        diverged.append(1.0 - finite.mean())
        auc.append(auroc(result["hal"][s][scored], hal[scored]))
        entered.append(inside.mean())
        after.append(hal[inside].mean() if inside.any() else np.nan)
        outside.append(hal[~inside].mean() if (~inside).any() else np.nan)
    return {"rate": common.ci(rate, proportion=True), "diverged": common.ci(diverged, proportion=True),
            "hal_auroc": common.ci(auc, proportion=True), "entered": common.ci(entered, proportion=True),
            "hallucinated_if_entered": common.ci(after, proportion=True),
            "hallucinated_if_not": common.ci(outside, proportion=True),
            "region_t": t, "evaluations": int(result["evaluations"]),
            "num_hallucinated": [int(round(r * result["x"].shape[1])) for r in rate]}


def compare(a: dict, b: dict) -> str:
    """``more`` / ``less`` when the 95% intervals of a and b are apart (a above / below b), else ``not apart``."""
    if None in (a["low"], a["high"], b["low"], b["high"]):
        return "undecided"
    if a["low"] > b["high"]:
        return "more"
    if a["high"] < b["low"]:
        return "less"
    return "not apart"


# ---------------------------------------------------------------------------------------------
# Figures.

def plot_steps(path: Path, p: dict, block: dict, title: str) -> str:
    families = {}
    for label, m in block.items():
        family = m["family"]
        if family.startswith("stochastic") or family == "ddpm":
            continue
        families.setdefault(family, {})[m["steps"]] = m["rate"]
    xs = sorted({steps for fam in families.values() for steps in fam})
    series = {f: [fam.get(s, {"mean": None, "low": None, "high": None}) for s in xs] for f, fam in families.items()}
    ddpm = block["ddpm"]["rate"]["mean"]
    return plots.save(plots.plot_ci_bands(xs, series, "steps", "hallucination rate (%)", title, scale=100.0,
                                          logx=True, logy=True,
                                          reference={"ddpm, all T steps": ddpm} if ddpm is not None else None,
                                          bounds=(0.0, 1.0)), path)


def plot_stochastic(path: Path, p: dict, blocks: dict, title: str) -> str:
    xs = [0] + list(p["stochastic"])
    series, reference = {}, {}
    for score, block in blocks.items():
        base = block.get(base_cell(p))
        for at in p["stochastic_at"]:
            row = [base["rate"] if base else {"mean": None, "low": None, "high": None}]
            row += [block[f"ddim {p['base_steps']} + {k} {at}"]["rate"] for k in p["stochastic"]]
            series[f"{score}, {at}"] = row
        if block["ddpm"]["rate"]["mean"] is not None:
            reference[f"ddpm ({score})"] = block["ddpm"]["rate"]["mean"]
    return plots.save(plots.plot_ci_bands(xs, series, "stochastic (DDPM) steps inside DDIM", "hallucination rate (%)",
                                          title, scale=100.0, reference=reference, bounds=(0.0, 1.0)), path)


def plot_trajectories(path: Path, loaded: tuple, p: dict) -> str:
    """x_t of a few samples of the first seed's learned model, DDPM and DDIM over base_steps from the same x_T:
    up to half of them samples DDIM ends hallucinated, the rest samples it ends in a mode (none that diverged)."""
    config, pieces, state = loaded
    T = config.diffusion.timesteps
    params = jax.tree.map(lambda a: a[:1], eval_params(state, config.train))
    keys = sample_keys(config, 0)[:1]
    n = min(p["num_samples"], 512)
    traced = {}
    for name, sampler in (("DDPM", SamplerConfig()),
                          (f"DDIM {p['base_steps']}", SamplerConfig(sampler="ddim", ddim_steps=p["base_steps"],
                                                                    skip=p["skip"],
                                                                    hal_window=min(10, p["base_steps"])))):
        sampler = dataclasses.replace(data_sampler(config, sampler), trajectory_stride=1, trajectory_xt=True)
        drawn = collect.draw(pieces.denoise_fn, params, pieces.schedule, keys, n, pieces.shape, sampler, n)
        ts = reverse_timesteps(sampler, T)
        traced[name] = (ts, drawn["trajectory_xt"][0, :, :, 0], drawn["x"][0, :, 0])
    mixture = pieces.dataset.mixture
    ddim = list(traced)[1]
    final = traced[ddim][2]
    finite = np.isfinite(final) & (np.abs(final) < 10.0)
    distance = np.asarray(mixtures.nearest_mode(mixture, jnp.asarray(np.where(finite, final, 0.0)[:, None]))[1])
    hallucinated = np.nonzero(finite & (distance > common.K))[0]
    in_support = np.nonzero(finite & (distance <= common.K))[0]
    half = min(len(hallucinated), (p["shown"] + 1) // 2)
    chosen = np.concatenate([hallucinated[:half], in_support[:p["shown"] - half]])
    figure = plots.new_figure(7.0, 4.2)
    ax = figure.subplots()
    for index, i in enumerate(chosen):
        for (name, (ts, xt, x0)), style in zip(traced.items(), ("-", "--")):
            ax.plot(np.concatenate([ts, [-1]]), np.concatenate([xt[i], [x0[i]]]), style, lw=1,
                    color=f"C{index}", label=name if index == 0 else None)
    for m in np.asarray(mixture.means)[:, 0]:
        ax.axhline(m, color="grey", lw=0.5)
    ax.set_xlim(min(T - 1, max(50, T // 4)), -1)
    ax.set_xlabel("t (reverse time; -1: the sample)")
    ax.set_ylabel("x_t")
    ax.set_title(f"same x_T: DDPM (solid), DDIM (dashed); {half} DDIM hallucinations, seed 0", fontsize=10)
    ax.legend(fontsize=8)
    return plots.save(figure, path)


# ---------------------------------------------------------------------------------------------
# The experiment.

def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    sweep = cells(p)
    scores = SCORES if p["exact"] else SCORES[:1]
    metrics = {"experiment": "samplers", "profile": p, "k": common.K, "datasets": {}}
    sections, figures = [], {}
    for dataset in p["datasets"]:
        config = run_config(p, dataset)
        run_dir = common.train(out, dataset, config, progress)
        timer.lap("train")
        loaded = load_run(run_dir)
        pieces = loaded[1]
        mixture, abar = pieces.dataset.mixture, np.asarray(pieces.schedule.alphas_cumprod, np.float64)
        blocks = {}
        for score in scores:
            block = {}
            for cell in sweep:
                m = measure(draw(run_dir, loaded, score, cell.sampler, p, progress), mixture, abar, p["region_radius"])
                block[cell.label] = {"family": cell.family, "steps": cell.sampler.ddim_steps or
                                     config.diffusion.timesteps, "sampler": _settings(cell.sampler), **m}
            blocks[score] = block
            timer.lap(f"sample_{score}")
        verdicts = {score: _verdict(p, block) for score, block in blocks.items()}
        metrics["datasets"][dataset] = {"run": str(run_dir), "results": blocks, "verdicts": verdicts}
        for score, block in blocks.items():
            figures[f"steps_{dataset}_{score}"] = plot_steps(out / f"steps_{dataset}_{score}.png", p, block,
                                                             f"{dataset}, {score}: rate against steps")
        figures[f"stochastic_{dataset}"] = plot_stochastic(out / f"stochastic_{dataset}.png", p, blocks,
                                                           f"{dataset}: DDIM {p['base_steps']} with stochastic steps")
        if SETTINGS[dataset][0] == "1d":
            figures["trajectories"] = plot_trajectories(out / "trajectories.png", loaded, p)
        sections.append(_section(p, dataset, blocks, verdicts))
        timer.lap("figures")
    metrics["figures"] = {k: Path(v).name for k, v in figures.items()}
    metrics["seconds"] = timer.seconds
    report = f"""# samplers: does DDIM hallucinate more than DDPM?

**Question (a 2026 peer of the paper):** a deterministic DDIM trajectory that enters the region between two
nearest modes late in sampling stays on the segment joining them, while DDPM's noise lets it leave; a few
stochastic (DDPM) steps inside DDIM should close much of the gap. The paper itself samples with DDPM.

**Measured:** on each data set, {p['seeds']} seeds of the learned model (one vmapped run each){' and the exact score of the mixture (the same keys)' if p['exact'] else ''}, {p['num_samples']:,} samples per seed and sampler setting.
Hallucinated: farther than {common.K:g} stds from every mode. Entered: x_t / sqrt(abar_t) within {p['region_radius']:g} x the spacing of the
midpoint of two nearest modes at the sampler's first visited t <= {p['region_time']:g} T. Hal over each sampler's own last
10 steps (fewer for shorter samplers). Steps spaced `{p['skip']}`. {common.CI_TEXT}; "apart" means the two 95%
intervals do not overlap. Profile `{p['profile']}`: {common.sizes_markdown(p)}.

{chr(10).join(sections)}
{'![trajectories](trajectories.png)' if 'trajectories' in figures else ''}

Timing (s): {timer.seconds}.
"""
    return common.finish(out, metrics, report)


def _settings(sampler: SamplerConfig) -> dict:
    default = SamplerConfig()
    return {f.name: getattr(sampler, f.name) for f in dataclasses.fields(sampler)
            if getattr(sampler, f.name) != getattr(default, f.name) and f.name != "hal_window"}


def _verdict(p: dict, block: dict) -> dict:
    """Deterministic DDIM against DDPM at each of :func:`references` (over ``base_steps``: ``ddim_vs_ddpm``), and
    the share of the gap at ``base_steps`` each number and place of stochastic steps closes."""
    ddpm = block["ddpm"]["rate"]
    out = {"by_steps": {}, "closed": {}}
    for steps in references(p):
        ddim = block[f"ddim eta 0 {steps}"]["rate"]
        out["by_steps"][str(steps)] = {"ddim_vs_ddpm": compare(ddim, ddpm), "ddim": ddim["mean"], "ddpm": ddpm["mean"]}
    base = block[base_cell(p)]["rate"]
    out.update(out["by_steps"][str(p["base_steps"])])
    gap = None if None in (base["mean"], ddpm["mean"]) else base["mean"] - ddpm["mean"]
    for at in p["stochastic_at"]:
        for k in p["stochastic"]:
            rate = block[f"ddim {p['base_steps']} + {k} {at}"]["rate"]["mean"]
            out["closed"][f"{k} {at}"] = (None if gap is None or rate is None or gap <= 0
                                          else (base["mean"] - rate) / gap)
    return out


def _section(p: dict, dataset: str, blocks: dict, verdicts: dict) -> str:
    scores = list(blocks)
    header = "| sampler | steps | network evaluations | " + " | ".join(
        f"{s}: rate | {s}: diverged | {s}: entered | {s}: hallucinated if entered" for s in scores) + \
        " | Hal AUROC (learned) |"
    lines = [header, "|" + "---|" * (3 + 4 * len(scores) + 1)]
    first = blocks[scores[0]]
    for label, m in first.items():
        cols = " | ".join(f"{common.fmt(blocks[s][label]['rate'], pct=True)} | "
                          f"{common.fmt(blocks[s][label]['diverged'], pct=True)} | "
                          f"{common.fmt(blocks[s][label]['entered'], pct=True)} | "
                          f"{common.fmt(blocks[s][label]['hallucinated_if_entered'], pct=True)}" for s in scores)
        lines.append(f"| {label} | {m['steps']} | {m['evaluations']} | {cols} | {common.fmt(m['hal_auroc'])} |")
    words = []
    said = {"more": "**yes**, the intervals are apart", "less": "**no**, DDIM hallucinates less (intervals apart)",
            "not apart": "**not decided**: the intervals overlap", "undecided": "n/a"}
    for score in scores:
        v = verdicts[score]
        ddpm = common.fmt(blocks[score]["ddpm"]["rate"], pct=True)
        for steps, w in v["by_steps"].items():
            words.append(f"- {score}, DDIM over {steps} steps "
                         f"{common.fmt(blocks[score][f'ddim eta 0 {steps}']['rate'], pct=True)} against DDPM {ddpm}: "
                         f"more? {said[w['ddim_vs_ddpm']]}.")
        closed = ", ".join(f"{key}: {c:.0%}" for key, c in v["closed"].items() if c is not None)
        words.append(f"  Share of the gap at {p['base_steps']} steps closed by k stochastic steps: {closed}."
                     if closed else f"  No positive gap at {p['base_steps']} steps to close.")
    holds = "; ".join(f"{score}: " + ", ".join(f"{steps} steps {HOLDS[w['ddim_vs_ddpm']]}"
                                               for steps, w in verdicts[score]["by_steps"].items())
                      for score in scores)
    figures = " ".join(f"![{dataset} {s}](steps_{dataset}_{s}.png)" for s in scores)
    region_t = first["ddpm"]["region_t"]
    return f"""## {dataset}

Does DDIM hallucinate more than DDPM?
{chr(10).join(words)}

**Holds?** Deterministic DDIM hallucinates more than DDPM (the 95% intervals apart): {holds}.

{chr(10).join(lines)}

(Diverged: samples that are not finite, counted as hallucinations; Hal's AUROC is over the samples whose Hal is
finite. Entered: the share of trajectories in the between-mode region at t = {region_t} for DDPM, at each sampler's
first visited t at or below it for the others; hallucinated if entered: the share of those that end hallucinated.)

{figures}

![{dataset} stochastic](stochastic_{dataset}.png)
"""
