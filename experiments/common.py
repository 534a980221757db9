"""Shared machinery of the paper's experiments: profiles, training and sampling all seeds at once with
resume, per-seed statistics with confidence intervals, figures and report writing.

Every experiment follows one flow: a profile (its :class:`Profile` of sizes, ``smoke``, ``quick`` or
``paper``, with ``overrides`` of its fields; read as a dict) -> a :class:`~mijax.config.RunConfig` with
``seeds = S`` -> one vmapped training run in ``out/runs/<name>`` (resumed from its checkpoints when an
interrupted experiment is rerun) -> seed-stacked samples (cached in ``out/runs/<name>/samples-*.npz``, so a
rerun skips finished sampling too) -> per-seed numbers -> mean and 95% CI over seeds -> ``metrics.json``,
``report.md`` and PNGs in ``out``.

Inside ``with shared_runs(folder):`` (what ``mijax experiment all`` and ``--runs`` do) the training runs
live in ``folder`` instead, named by their configuration (``<dataset>-n<N>-<digest>``), so experiments
that train the same model (the quick profiles share their 1D and 2D recipes) train it once, and reuse
each other's cached samples too.

Inside ``with sampler_choice(settings):`` (what ``mijax experiment --sampler ...`` does) every experiment
draws its samples with that reverse sampler instead of the published DDPM (:func:`with_chosen`); the
settings go into the names of the cached samples, and into ``metrics.json`` and the report
(:func:`record_sampler`). Without it everything is as published, cache names included.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import hashlib
import json
import math
import time
import typing
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import jax.numpy as jnp
import numpy as np

from mijax import collect, plots, sampling, stats
from mijax.config import (Config, ConfigError, DataConfig, DiffusionConfig, RunConfig, RunError, build, field_types,
                          paper_steps, setting)
from mijax.data.mixtures import blur_adjusted_labels, labels, rate_table
from mijax.errors import MijaxError
from mijax.registry import typed_option
from mijax.store import finite_or_none, load_cache, save_npz, write_json, write_text
from mijax.mixtures import GaussianMixture, mass_beyond
from mijax.runs import load_config, load_run, sample_keys, sample_run, train_run
from mijax.config import SamplerConfig
from mijax.config import TrainConfig
from mijax.training import eval_params

# The quick profiles' training recipes, the same in every experiment so that `mijax experiment all` trains
# each model once (see shared_runs). The paper's recipe with smaller batches and fewer steps, and
# QUICK_OPTIMISER: the paper's constant Adam 1e-3 leaves the quick models under-trained (32,000 steps of 500
# put 19-21% of the 5x5 grid's samples beyond 5 std, in modes 2-3x too wide); a higher peak with a warm-up and
# a cosine decay to 0 reaches sharp modes in the same steps (README, Results: calibration). The 1D models train
# 10,000 steps of 500: as sharp as the earlier 6,000 of 2,000 (both 0.105% of samples beyond 5 std, Hal AUROC
# 0.996 and 0.995, 4 seeds) in 42% of the arithmetic (111 s against 294 s on 2 CPU cores).
# The 2D models draw their loss's timesteps as floor(T u^1.5) (small t more often; ``t_power``): at the same
# steps and time, 0.42% of the grid's samples beyond 5 std against 1.46% with uniform t (rotated grid: 0.92%
# against 3.06%), Hal AUROC 0.95 against 0.93 (4 seeds).
# Each is a group of profile fields (:class:`Training`, :class:`Recipe`); an experiment with a 1D and a 2D
# setting takes the 2D one's as :func:`two_d` fields.
QUICK_1D = {"n_train": 20_000, "steps": 10_000, "batch_size": 500}
QUICK_T_POWER = 1.5  # the quick profiles' 2D and recursive models (TrainConfig.t_power)
QUICK_2D = {"n_train": 20_000, "steps": 32_000, "batch_size": 500, "t_power": QUICK_T_POWER}
QUICK_OPTIMISER = {"learning_rate": 5e-3, "warmup_steps": 500, "lr_decay": "cosine"}
QUICK_SAVING = {"checkpoint_every": 4_000}
# The paper's sizes: 1D, 20,000 points and 20,000 steps of batch 10,000; 2D, 100,000 points and 100,000 steps.
PAPER_1D = {"n_train": 20_000, "steps": 20_000, "batch_size": 10_000}
PAPER_2D = {"n_train": 100_000, "steps": 100_000, "batch_size": 10_000}
# The smoke profiles: the quick ones at toy sizes (:func:`smoke`), end to end in seconds. Their 1D and 2D runs
# are alike in every experiment too, so that `mijax experiment all --profile smoke` trains each once.
SMOKE = {"seeds": 2, "n_train": 400, "steps": 20, "batch_size": 200, "timesteps": 40, "num_samples": 128,
         "chunk_size": 128, "steps_per_call": 10, "checkpoint_every": 10}
KS = (3.0, 4.0, 5.0, 6.0)
K = 5.0


# ---------------------------------------------------------------------------------------------
# Profiles.

def two_d(group: Mapping[str, Any]) -> dict:
    """The fields of a run's group as those of an experiment's 2D setting (:class:`Training2D`): ``n_train`` ->
    ``n_train_2d``, ..."""
    return {f"{key}_2d": value for key, value in group.items()}


def field_like(cls: type, name: str, default: Any = dataclasses.MISSING, **marks: Any) -> Any:
    """A profile's field for the setting ``name`` of configuration ``cls`` (e.g. ``TrainConfig``, ``"steps"``): its
    help text and range, with ``default`` (none: the profile gives it) and ``marks`` added to its metadata."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return dataclasses.field(default=default, metadata={**field.metadata, **marks})


def published(name: str) -> Any:
    """A profile's field for the training setting ``name`` of :class:`~mijax.config.TrainConfig`, None by default:
    the published recipe's value (TrainConfig's default), and then left out of the profile's sizes
    (:meth:`Profile.as_dict`), as by a profile that never set it."""
    return field_like(TrainConfig, name, None, published=True)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Profile(Config):
    """The sizes of one profile of an experiment (``smoke``, ``quick`` or ``paper``), checked on construction
    (:class:`~mijax.config.Config`: a bad value raises ConfigError naming the field).

    Each experiment has a subclass (fields shared by several experiments come from the groups below, as base
    classes) and one instance per profile in its module's ``PROFILES``. :meth:`as_dict` is the dict the experiment
    reads (and reports); :meth:`changed` is the profile with some fields changed (``overrides``, ``--set``).
    """

    seeds: int = setting(4, "models trained at once, one per seed (vmapped); --seeds changes it", above=0)

    def as_dict(self) -> dict:
        """Every field by name, in field order, but the training settings left to the published recipe
        (:func:`published`)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not (f.metadata.get("published") and getattr(self, f.name) is None)}

    def changed(self, changes: Optional[Mapping[str, Any]], owner: str = "the profile") -> "Profile":
        """This profile with ``changes`` {field: value}, each converted to its field's type as
        :func:`mijax.registry.typed_option` converts an option (the text of the command line too: ``1400``,
        ``true``, ``1,2``, a JSON list; None where the field takes None), then checked as on construction.

        Raises:
          ConfigError: an unknown field, or a value its field does not take; ``field`` names it, the message
            ``owner`` (e.g. ``experiment shapes profile``).
        """
        hints, names = field_types(type(self)), [f.name for f in dataclasses.fields(self)]
        values = {}
        for key, value in (changes or {}).items():
            if key not in names:
                raise ConfigError(key, f"{owner} has no field {key}; its fields are {', '.join(names)}")
            if value is None and type(None) in typing.get_args(hints[key]):
                values[key] = None
                continue
            try:
                values[key] = typed_option(owner, key, value, getattr(self, key), noun="field")
            except MijaxError as e:
                raise ConfigError(key, str(e)) from None
        try:
            return dataclasses.replace(self, **values)
        except ConfigError as e:
            raise ConfigError(e.field, f"{owner}: {e}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class Training(Profile):
    """The fields of a run's training set and steps (of the 1D setting, in an experiment with a 2D one too)."""

    n_train: int = setting(help="training-set size N", above=0)
    steps: int = field_like(TrainConfig, "steps")
    batch_size: int = field_like(TrainConfig, "batch_size")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Training2D(Profile):
    """The fields of the 2D setting's run, in an experiment with a 1D one too (the 2D recipe's :func:`two_d`)."""

    n_train_2d: int = field_like(Training, "n_train")
    steps_2d: int = field_like(Training, "steps")
    batch_size_2d: int = field_like(Training, "batch_size")
    t_power_2d: Optional[float] = published("t_power")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe(Profile):
    """How the paper's MLP trains in an experiment: T, and the optimiser settings a profile changes (None: the
    published recipe's; the quick profiles set ``QUICK_OPTIMISER``)."""

    timesteps: int = field_like(DiffusionConfig, "timesteps", DiffusionConfig.timesteps)
    learning_rate: Optional[float] = published("learning_rate")
    warmup_steps: Optional[int] = published("warmup_steps")
    lr_decay: Optional[str] = published("lr_decay")
    lr_final: Optional[float] = published("lr_final")
    ema_decay: Optional[float] = published("ema_decay")
    grad_clip: Optional[float] = published("grad_clip")
    t_power: Optional[float] = published("t_power")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling(Profile):
    """How many samples each seed's model draws, and how many per compiled chunk."""

    num_samples: int = setting(help="samples per seed", above=0)
    chunk_size: int = setting(help="samples per compiled sampling chunk", above=0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Saving(Profile):
    """How a run's training is dispatched and saved (neither changes its numbers)."""

    steps_per_call: int = field_like(TrainConfig, "steps_per_call", 1_000)
    checkpoint_every: int = field_like(RunConfig, "checkpoint_every", RunConfig.checkpoint_every)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixtureProfile(Saving, Sampling, Recipe, Training):
    """The profile of a Gaussian-mixture experiment: S seeds of the paper's MLP (:class:`Training`,
    :class:`Recipe`), sampled (:class:`Sampling`)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mixture2DProfile(Saving, Sampling, Recipe, Training2D, Training):
    """The profile of a Gaussian-mixture experiment with a 1D setting (:class:`Training`) and a 2D one
    (:class:`Training2D`), in the same recipe."""


# The training settings a profile may set (TrainConfig fields); those it leaves out keep the published recipe.
OPTIMISER_KEYS = tuple(f.name for f in dataclasses.fields(Recipe) if f.metadata.get("published"))


def smoke(quick: Profile, toy: Mapping[str, Any] = SMOKE, **extra: Any) -> Profile:
    """A smoke profile: ``quick`` with each field of ``toy`` that it has (as :func:`two_d` fields too), then
    ``extra``."""
    names = {f.name for f in dataclasses.fields(quick)}
    sizes = {key: value for key, value in {**toy, **two_d(toy)}.items() if key in names}
    return dataclasses.replace(quick, **sizes, **extra)


def resolve_profile(profiles: Mapping[str, Profile], profile: str, seeds: Optional[int] = None,
                    overrides: Optional[Mapping[str, Any]] = None) -> dict:
    """The sizes of one profile: ``profiles[profile]`` with ``overrides`` and then ``seeds``
    (:meth:`Profile.changed`), as a dict (:meth:`Profile.as_dict`) with ``profile`` its name.

    Raises:
      RunError: an unknown profile; ConfigError (a RunError): an unknown override, or a value its field does not
        take.
    """
    if profile not in profiles:
        raise RunError(f"unknown profile {profile!r}; choose from {', '.join(profiles)}")
    changes = {**(overrides or {}), **({} if seeds is None else {"seeds": int(seeds)})}
    p = profiles[profile].changed(changes, f"the {profile} profile").as_dict()
    p["profile"] = profile
    return p


def run_config(p: dict, dataset: str = "gaussian1d", modes: Optional[Sequence[float]] = (1.0, 2.0, 3.0),
               n_train: Optional[int] = None, steps: Optional[int] = None,
               batch_size: Optional[int] = None) -> RunConfig:
    """The RunConfig of a profile: the paper's recipe with the profile's sizes and optimiser settings
    (``OPTIMISER_KEYS``: the quick profiles' ``QUICK_OPTIMISER``); S seeds vmapped. ``n_train``, ``steps`` and
    ``batch_size`` replace the profile's when given."""
    n_train = p["n_train"] if n_train is None else n_train
    steps = p["steps"] if steps is None else steps
    batch = min(p["batch_size"] if batch_size is None else batch_size, n_train)
    options = {"modes": tuple(float(m) for m in modes)} if dataset == "gaussian1d" else {}
    return RunConfig(
        data=DataConfig(dataset=dataset, n_train=n_train, options=options),
        diffusion=DiffusionConfig(timesteps=p["timesteps"]),
        train=TrainConfig(steps=steps, batch_size=batch, steps_per_call=min(p.get("steps_per_call", 250), steps),
                          **_optimiser(p)),
        seed=p.get("seed", 0), seeds=p["seeds"], checkpoint_every=min(p.get("checkpoint_every", 1000), steps))


def setting_config(p: dict, tag: str, dataset: str, modes: Optional[Sequence[float]]) -> RunConfig:
    """The run of an experiment's 1D setting (``tag`` "1d": the profile's n_train, steps, batch_size) or
    2D one (any other tag: its ``n_train_2d``, ``steps_2d``, ``batch_size_2d`` and, if set, ``t_power_2d``)."""
    if tag == "1d":
        return run_config(p, dataset=dataset, modes=modes or ())
    two_d = {**p, "t_power": p["t_power_2d"]} if "t_power_2d" in p else p
    return run_config(two_d, dataset=dataset, modes=modes or (), n_train=p["n_train_2d"], steps=p["steps_2d"],
                      batch_size=p["batch_size_2d"])


def setting_samples(out: Path, p: dict, tag: str, dataset: str, modes: Optional[Sequence[float]],
                    windows: Sequence[tuple[int, int]], timer: "Timer", trajectory_steps: int = 0,
                    progress: bool = True) -> tuple[RunConfig, GaussianMixture, dict[str, np.ndarray]]:
    """Train the run of setting ``tag`` (:func:`setting_config`; resuming), then draw the profile's
    ``num_samples`` per seed with Hal over ``windows`` (:func:`sample_windows`); lap ``timer`` after each.
    Returns (the run's config, its data set's mixture, the samples)."""
    config = setting_config(p, tag, dataset, modes)
    run_dir = train(out, tag, config, progress)
    timer.lap("train")
    result = sample_windows(run_dir, p["num_samples"], windows, trajectory_steps=trajectory_steps,
                            chunk_size=p["chunk_size"], progress=progress)
    timer.lap("sample")
    return config, build(config).dataset.mixture, result


def _optimiser(p: dict) -> dict:
    return {k: p[k] for k in OPTIMISER_KEYS if k in p}


def optimiser_text(p: dict) -> str:
    """The optimiser of a profile in words, e.g. ``Adam 0.005 after a 500-step warm-up, cosine decay to 0``."""
    train, paper = TrainConfig(**_optimiser(p)), TrainConfig()
    if all(getattr(train, k) == getattr(paper, k) for k in OPTIMISER_KEYS):
        return "Adam 1e-3, constant (as published)"
    words = f"Adam {train.learning_rate:g}"
    if train.warmup_steps:
        words += f" after a {train.warmup_steps:,}-step warm-up"
    if train.lr_decay != "none":
        words += f", {train.lr_decay} decay to {train.lr_final:g}"
    if train.ema_decay:
        words += f", EMA {train.ema_decay:g}"
    if train.grad_clip:
        words += f", gradient clip {train.grad_clip:g}"
    if train.t_power != 1.0:
        words += f"; t drawn as floor(T u^{train.t_power:g})"
    return words


def epochs_to_steps(epochs: int, n_train: int, batch_size: int) -> int:
    """The published recipe counts epochs of fixed batches: steps = epochs * N / batch."""
    return paper_steps(n_train, batch_size, epochs)


# ---------------------------------------------------------------------------------------------
# Training and sampling, resumable.

_SHARED_RUNS: contextvars.ContextVar[Optional[Path]] = contextvars.ContextVar("mijax_shared_runs", default=None)


@contextlib.contextmanager
def shared_runs(folder: Path):
    """Within this context, :func:`train` keeps its runs in ``folder``, named by configuration, so that
    experiments training the same configuration share one run (and its cached samples)."""
    token = _SHARED_RUNS.set(Path(folder))
    try:
        yield Path(folder)
    finally:
        _SHARED_RUNS.reset(token)


# ---------------------------------------------------------------------------------------------
# The reverse sampler the experiments draw with.

# The SamplerConfig fields that `mijax experiment --sampler ...` chooses for every experiment; Hal's windows, its
# reduction and clipping stay each experiment's own.
SAMPLER_FIELDS = SamplerConfig.CHOICE
_SAMPLER: contextvars.ContextVar[Optional[dict]] = contextvars.ContextVar("mijax_sampler", default=None)


class SamplerRefused(RunError):
    """The chosen reverse sampler cannot draw what an experiment asks (a Hal window or a trajectory longer than
    its reverse steps): one line naming the options."""


def sampler_settings(settings: Optional[Mapping[str, Any]]) -> dict:
    """The reverse-sampler settings of ``settings`` ({field of :data:`SAMPLER_FIELDS`: value}) that differ from
    :class:`~mijax.config.SamplerConfig`'s defaults, in field order ({}: DDPM as published).

    Raises:
      ConfigError: a field that is not a reverse-sampler setting, or a value its field does not take.
    """
    settings = dict(settings or {})
    for key in settings:
        if key not in SAMPLER_FIELDS:
            raise ConfigError(f"sampler.{key}", f"{key} is not a reverse-sampler setting; the experiments take "
                                                f"{', '.join(SAMPLER_FIELDS)}")
    made, default = SamplerConfig(**settings), SamplerConfig()
    return {key: getattr(made, key) for key in SAMPLER_FIELDS if getattr(made, key) != getattr(default, key)}


def sampler_text(settings: Mapping[str, Any]) -> str:
    """Reverse-sampler settings as the command line spells them: ``--sampler ddim --ddim-steps 5``."""
    return " ".join(f"--{key.replace('_', '-')} {value}" for key, value in settings.items())


@contextlib.contextmanager
def sampler_choice(settings: Optional[Mapping[str, Any]]):
    """Within this context every experiment samples with the reverse-sampler ``settings`` (fields of
    :data:`SAMPLER_FIELDS`; those not given keep their defaults) instead of the published DDPM: :func:`sample`,
    :func:`sample_windows` and the studies that apply :func:`with_chosen`. Yields the settings that differ from
    the defaults (:func:`sampler_settings`; {}: everything as published)."""
    chosen = sampler_settings(settings)
    token = _SAMPLER.set(chosen or None)
    try:
        yield dict(chosen)
    finally:
        _SAMPLER.reset(token)


def chosen_sampler() -> dict:
    """The reverse-sampler settings chosen around the running experiment (:func:`sampler_choice`) that differ
    from the defaults; {} when it samples as published."""
    return dict(_SAMPLER.get() or {})


def check_sampler(settings: Mapping[str, Any], timesteps: int) -> int:
    """The number of reverse steps of the sampler ``settings`` on a T-step schedule; SamplerRefused (one line)
    if it cannot run there (more ``ddim_steps`` than T, ``skip`` quad without ``ddim_steps``, fewer than 2
    steps)."""
    sampler = SamplerConfig(hal_window=2, **settings)
    try:
        sampling.validate(sampler, timesteps)
    except ValueError as e:
        raise SamplerRefused(f"{sampler_text(settings)} at T = {timesteps}: {e}") from None
    return len(sampling.reverse_timesteps(sampler, timesteps))


def reverse_steps(timesteps: int) -> int:
    """The reverse steps that the running experiment's sampler takes on a T-step schedule: T as published, or
    the chosen sampler's (:func:`check_sampler`)."""
    chosen = _SAMPLER.get()
    return check_sampler(chosen, timesteps) if chosen else timesteps


def with_chosen(sampler: SamplerConfig, timesteps: int) -> SamplerConfig:
    """``sampler`` (an experiment's, on a T-step schedule) with the reverse-sampler settings chosen around it
    (:func:`sampler_choice`); none chosen, ``sampler`` itself. Hal's windows stay ``sampler``'s, counted in the
    chosen sampler's reverse steps; the main window, when it ends at the last step and is longer than those
    steps (the published 10 with ``ddim_steps`` 5), covers them all.

    Raises:
      SamplerRefused: the chosen sampler cannot run at T, or another of the windows (or a detector's) does not
        fit in its steps.
    """
    chosen = _SAMPLER.get()
    if not chosen:
        return sampler
    steps = check_sampler(chosen, timesteps)
    sampler = dataclasses.replace(sampler, **chosen)
    if sampler.hal_end == 0 and sampler.hal_window > steps:
        sampler = dataclasses.replace(sampler, hal_window=steps)
    # Hal's reductions are not what is checked here (region_max gets its regions from the data set later).
    windows = dataclasses.replace(sampler, hal_reduction="mean", hal_table=())
    try:
        sampling.validate(windows, timesteps)
    except ValueError as e:
        raise SamplerRefused(f"{sampler_text(chosen)} takes {steps} reverse steps at T = {timesteps}: {e}") from None
    return sampler


def record_sampler(metrics: dict, report: str) -> tuple[dict, str]:
    """An experiment's metrics and report with the reverse sampler chosen around it: ``metrics["sampler"]`` (the
    settings that differ from the defaults) and a sentence under the report's title; both unchanged when it
    sampled as published."""
    chosen = chosen_sampler()
    if not chosen:
        return metrics, report
    words = ", ".join(f"{key} {value}" for key, value in chosen.items())
    title, _, rest = report.partition("\n")
    sentence = (f"**Sampler:** {words} (`{sampler_text(chosen)}`), not the published DDPM over all T steps. "
                "Hal's windows and the recorded trajectories count its reverse steps; a window ending at the last "
                "step that is longer than them covers them all.")
    return {**metrics, "sampler": chosen}, f"{title}\n\n{sentence}\n{rest}"


def config_digest(config: RunConfig) -> str:
    """A short digest of everything in ``config`` that changes the trained models' numbers."""
    d = dataclasses.asdict(config)
    d.pop("checkpoint_every", None)  # how often a run is saved does not change it
    d["train"].pop("steps_per_call", None)  # nor how its steps are split into dispatches
    for name, default in (("t_power", 1.0), ("batch_groups", 1), ("smoothness", 0.0),  # added later: at their
                          ("smoothness_rows", 0), ("min_snr", 0.0)):                    # defaults, runs keep
        if d["train"].get(name) == default:                                             # their earlier names
            d["train"].pop(name)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_dir_for(out: Path, name: str, config: RunConfig) -> Path:
    """Where :func:`train` keeps ``config``'s run: ``out/runs/name``, or in the shared folder by config."""
    shared = _SHARED_RUNS.get()
    if shared is not None:
        return shared / f"{config.data.dataset}-n{config.data.n_train}-{config_digest(config)}"
    return Path(out) / "runs" / name


def train(out: Path, name: str, config: RunConfig, progress: bool = True) -> Path:
    """Train all seeds of ``config`` in one vmapped run at :func:`run_dir_for`, resuming if interrupted."""
    run_dir = run_dir_for(out, name, config)
    if (run_dir / "config.json").exists():
        saved = load_config(run_dir)
        if config_digest(saved) == config_digest(config):
            config = saved  # a shared run saved or split into dispatches differently: the same models
    if not (run_dir / "train.json").exists() or _latest_done(run_dir) < config.train.steps:
        train_run(run_dir, config, resume=True, progress=progress)
    return run_dir


def train_and_sample(out: Path, name: str, config: RunConfig, p: dict, timer: "Timer",
                     progress: bool = True) -> tuple[Path, dict[str, np.ndarray]]:
    """The usual first half of an experiment: train ``config`` (resuming), then sample the profile's
    ``num_samples`` per seed with Hal; lap ``timer`` after each. Returns (run_dir, samples)."""
    run_dir = train(out, name, config, progress)
    timer.lap("train")
    result = sample(run_dir, p["num_samples"], chunk_size=p["chunk_size"], progress=progress)
    timer.lap("sample")
    return run_dir, result


def _latest_done(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "train.json").read_text())["steps"])
    except (OSError, ValueError, KeyError):
        return 0


# SamplerConfig fields added after samples were first cached: at their defaults they are left out of the caches'
# names, so that the samples cached before keep their names.
_LATER_SAMPLER_FIELDS = {"stochastic_from": None}


def _sampler_key(sampler: SamplerConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(sampler).items()
            if not (k in _LATER_SAMPLER_FIELDS and v == _LATER_SAMPLER_FIELDS[k])}


def _cache_name(tag: str, **settings) -> str:
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"samples-{tag}-{digest}.npz"


def sample(run_dir: Path, n: int, sampler: Optional[SamplerConfig] = None, seed: int = 0,
           chunk_size: Optional[int] = None, progress: bool = True) -> dict[str, np.ndarray]:
    """All seeds' samples {"x": [S, n, d], "hal": [S, n]}, cached in the run directory (a damaged cache is
    recomputed, :func:`mijax.store.load_cache`; samples that are not finite are refused, :func:`mijax.collect.draw`).
    ``sampler`` (None: DDPM as published) with the reverse sampler chosen around the experiment
    (:func:`with_chosen`), which the cache's name records."""
    sampler = SamplerConfig() if sampler is None else sampler
    if _SAMPLER.get():
        sampler = with_chosen(sampler, load_config(run_dir).diffusion.timesteps)
    path = run_dir / _cache_name("hal", n=n, seed=seed, sampler=_sampler_key(sampler))
    cached = load_cache(path, ("x", "hal"))
    if cached is not None:
        collect.check_finite(cached)
        return cached
    result = sample_run(run_dir, n, seed=seed, sampler=sampler, chunk_size=chunk_size, progress=progress)
    save_npz(path, **result)
    return result


def sample_windows(run_dir: Path, n: int, windows: Sequence[tuple[int, int]], trajectory_steps: int = 0,
                   seed: int = 0, chunk_size: Optional[int] = None, progress: bool = True) -> dict[str, np.ndarray]:
    """Samples with Hal over several windows at once, and optionally their last x0_hat trajectories.

    One sampling pass carries Hal over every window ``(end, length)`` (t = end .. end + length - 1; the
    sampler's ``hal_windows``) and records x0_hat over the last ``trajectory_steps`` reverse steps if asked.
    The samples are those of :func:`sample` with the same seed (the Hal windows do not move them). The reverse
    sampler is DDPM as published, or the one chosen around the experiment (:func:`with_chosen`; its windows
    and trajectory count its reverse steps, and the cache's name records it).

    Returns:
      {"x": [S, n, d], "hal": [S, n, W] (one column per window), "windows": [W, 2],
      "trajectory": [S, n, trajectory_steps, d] x0_hat at t = trajectory_steps - 1 .. 0 (if asked),
      "trajectory_t": [trajectory_steps]}.
    """
    windows = tuple((int(e), int(k)) for e, k in windows)
    chosen = chosen_sampler()
    path = run_dir / _cache_name("windows", n=n, seed=seed, windows=windows, traj=trajectory_steps,
                                 **({"sampler": chosen} if chosen else {}))
    cached = load_cache(path, ("x", "hal", "windows") + (("trajectory",) if trajectory_steps else ()))
    if cached is not None:
        collect.check_finite(cached)
        return cached
    config, pieces, state = load_run(run_dir)
    T = config.diffusion.timesteps
    last = max([e + k for e, k in windows] + [trajectory_steps])
    if last > T:
        raise RunError(f"windows reach t = {last - 1}, beyond the {T} steps of the schedule")
    sampler = with_chosen(SamplerConfig(objective=config.diffusion.objective, hal_window=min(10, T),
                                        hal_windows=windows, trajectory_stride=1 if trajectory_steps else 0,
                                        trajectory_last=trajectory_steps or None), T)
    visited = sampling.reverse_timesteps(sampler, T)
    if trajectory_steps > len(visited):
        raise SamplerRefused(f"{sampler_text(chosen)} takes {len(visited)} reverse steps at T = {T}; the "
                             f"trajectories asked are {trajectory_steps} steps long")
    drawn = collect.draw(pieces.denoise_fn, eval_params(state, config.train), pieces.schedule, sample_keys(config, seed), n,
                         pieces.shape, sampler, chunk_size, show_progress=progress,
                         desc=f"sample ({len(windows)} Hal windows)")
    result = {"x": drawn["x"], "hal": drawn["hal_windows"], "windows": np.asarray(windows, np.int32)}
    if trajectory_steps:
        result["trajectory"] = drawn["trajectory"]
        result["trajectory_t"] = np.asarray(visited[len(visited) - trajectory_steps:], np.int32)
    save_npz(path, **result)
    return result


# ---------------------------------------------------------------------------------------------
# Statistics over seeds.

# How the reports' intervals are made, in their words (the "method" of each ci dict names it too).
CI_TEXT = (f"Mean [95% CI] over seeds ({stats.METHODS['t']}; for shares, rates and AUROCs, "
           f"{stats.METHODS['logit-t']})")


def ci(values, proportion: bool = False) -> dict:
    """Mean and 95% CI over seeds of per-seed values [S] (NaN seeds dropped), JSON-able; the per-seed values too.
    ``proportion``: the values are shares, rates or AUROCs, in [0, 1], and so is the interval
    (:func:`mijax.stats.proportion_ci`; else :func:`mijax.stats.mean_ci`)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = v[np.isfinite(v)]
    method = "logit-t" if proportion else "t"
    if finite.size == 0:
        return {"mean": None, "low": None, "high": None, "n": 0, "method": method, "per_seed": [None] * v.size}
    c = (stats.proportion_ci if proportion else stats.mean_ci)(finite)
    return {"mean": finite_or_none(c["mean"]), "low": finite_or_none(c["low"]), "high": finite_or_none(c["high"]),
            "n": int(c["n"]), "method": method, "per_seed": [finite_or_none(a) for a in v]}


def fmt(c: dict, pct: bool = False, digits: int = 3) -> str:
    """``mean [low, high]`` of a :func:`ci` dict (percent with ``pct``)."""
    if c["mean"] is None:
        return "n/a"
    full = {"mean": c["mean"], "low": c["low"] if c["low"] is not None else math.nan,
            "high": c["high"] if c["high"] is not None else math.nan, "n": c["n"]}
    return stats.format_ci(full, scale=100.0 if pct else 1.0, digits=digits, unit="%" if pct else "")


def rate_rows(mixture, x: np.ndarray, ks: Sequence[float] = KS) -> list[dict]:
    """Per k: the hallucination rate over seeds (x [S, N, d]) with CI, beside the true mass beyond k."""
    tables = [rate_table(mixture, jnp.asarray(xs), ks) for xs in x]
    return [{"k": float(k), "rate": ci([t[i]["rate"] for t in tables], proportion=True),
             "true_mass": tables[0][i]["true_mass"]} for i, k in enumerate(ks)]


def rate_markdown(rows: list[dict]) -> str:
    lines = ["| k (std) | model: hallucination rate, mean [95% CI] over seeds | true mixture's mass beyond k |",
             "|---|---|---|"]
    lines += [f"| {r['k']:g} | {fmt(r['rate'], pct=True)} | {r['true_mass']:.2g} |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Output.

class Timer:
    """Wall-clock seconds of named stages, for the metrics."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._t, 1)
        self._t = now


def finish(out: Path, metrics: dict, report: str) -> dict:
    """Write ``metrics.json`` and ``report.md`` atomically (metrics last: it marks the experiment done), with the
    reverse sampler chosen around the experiment, if any (:func:`record_sampler`). Returns the metrics written."""
    metrics, report = record_sampler(metrics, report)
    out = Path(out)
    write_text(out / "report.md", report)
    write_json(out / "metrics.json", metrics)
    return metrics


def sizes_markdown(p: dict) -> str:
    skip = {"profile"}
    return ", ".join(f"{k} = {v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k} = {v}"
                     for k, v in p.items() if k not in skip)


def holds_word(ok: Optional[bool]) -> str:
    return "n/a (not enough samples to decide)" if ok is None else ("**yes**" if ok else "**no**")


def new_figure(width: float = 6.4, height: float = 4.4):
    return plots.new_figure(width, height)


def save_figure(figure, path) -> str:
    return plots.save(figure, path)


def plot_ci_lines(path, xs: Sequence[float], series: Mapping[str, list[dict]], xlabel: str, ylabel: str,
                  title: str, logx: bool = False, logy: bool = False, reference: Optional[Mapping[str, float]] = None,
                  scale: float = 1.0, bounds: Optional[tuple[float, float]] = None) -> str:
    """Lines of per-seed means with 95% CI bands, one per series ({name: [ci dict per x]}), written to ``path``
    (returned as a string); ``bounds``: the values' range, bands clipped to it (the intervals of shares and
    AUROCs are inside (0, 1) already)."""
    return plots.save(plots.plot_ci_bands(xs, series, xlabel, ylabel, title, scale=scale, logx=logx, logy=logy,
                                          reference=reference, bounds=bounds), path)


def start(profiles: Mapping[str, Profile], profile: str, seeds: Optional[int], overrides: Optional[dict],
          out: Path) -> tuple[dict, Path, "Timer"]:
    """The opening of every experiment: its sizes (:func:`resolve_profile`), its output folder (created) and a
    timer."""
    p = resolve_profile(profiles, profile, seeds, overrides)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return p, out, Timer()



def label_rules(mixture, k: float = K) -> dict:
    """The two hallucination labels the experiments report, each ``x [N, d] -> bool [N]``: ``"k5"``, farther
    than k true stds from every mode; ``"blur"``, farther than k times the mode's own spread in the samples
    where that is wider (:func:`mijax.data.mixtures.blur_adjusted_labels`)."""
    return {"k5": lambda x: np.asarray(labels(mixture, x, k)),
            "blur": lambda x: np.asarray(blur_adjusted_labels(mixture, x, k)[0])}


def mass_beyond_k(mixture, k: float = K) -> float:
    return mass_beyond(float(k), mixture.dim)
