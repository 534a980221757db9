"""The configuration of a training run: data set, model, diffusion, optimiser, seeds; JSON round trip and
validation, and the pieces a configuration builds.

A run's ``config.json`` is :func:`config_to_dict` of its :class:`RunConfig` (plus the library versions).
Data-set and model options live with the data set and the model (:mod:`mijax.data`, :mod:`mijax.models`):
a config records them all, defaults filled in, so it says exactly what was trained.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from mijax import data as datasets
from mijax import models
from mijax.errors import MijaxError
from mijax.keys import SEED_LIMIT, TRAINING_SET, stream
from mijax.models import ModuleDenoiser
from mijax.schedules import SCHEDULES, Schedule, check_objective, make_schedule
from mijax.training import LR_DECAYS, TrainConfig, valid_batch_groups

RunError = MijaxError  # the name the run-directory functions raise under
EPOCHS = 10_000  # the published recipe trains 10,000 epochs of fixed batches


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training distribution: a registered data set, its options and the training-set size.

    ``options`` are the data set's (for ``gaussian1d``: ``modes``, ``std``, ``round_robin``, ``k``); the
    defaults are filled in on construction, so two configs of the same data compare equal.
    """

    dataset: str = "gaussian1d"
    n_train: int = 20_000
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", datasets.resolve(self.dataset, self.options))


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The denoiser: a registered model (``mlp``, the paper's), its options and the matmul precision
    (``float32``, ``tf32`` or ``bf16``; see :mod:`mijax.models.mlp`). Defaults are filled in on construction."""

    name: str = "mlp"
    precision: str = "float32"
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "options", models.resolve(self.name, self.options))


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """The noise schedule and what the network predicts (defaults: the paper's)."""

    schedule: str = "linear"
    timesteps: int = 1000
    beta_start: float = 1e-3
    beta_end: float = 0.2
    objective: str = "eps"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything that defines a training run; saved as ``config.json``."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    seed: int = 0
    seeds: int = 1
    checkpoint_every: int = 5_000

    @property
    def seed_values(self) -> list[int]:
        return [self.seed + s for s in range(self.seeds)]


def paper_steps(n_train: int, batch_size: int, epochs: int = EPOCHS) -> int:
    """The published recipe counts epochs of fixed batches: steps = epochs * (N // batch)."""
    return max(1, epochs * max(1, n_train // min(batch_size, n_train)))


def config_to_dict(config: RunConfig) -> dict:
    d = dataclasses.asdict(config)
    d["data"]["options"] = dict(config.data.options)
    d["model"]["options"] = dict(config.model.options)
    return d


_OPTION_NAMES = {"learning_rate": "lr", "name": "model"}


def config_differences(made: RunConfig, asked: RunConfig) -> list[tuple[str, object, object]]:
    """The settings in which ``asked`` differs from ``made``: (option name as the command line spells it, e.g.
    ``lr`` or ``n-train``, the value in ``made``, the value in ``asked``), in config order."""
    def flat(d, prefix=()):
        out = {}
        for key, value in d.items():
            if isinstance(value, dict):
                out.update(flat(value, prefix + (key,)))
            else:
                out[prefix + (key,)] = value
        return out

    a, b = flat(config_to_dict(made)), flat(config_to_dict(asked))
    names = {}
    for path in list(a) + [p for p in b if p not in a]:
        if a.get(path) != b.get(path):
            key = path[-1]
            names.setdefault(_OPTION_NAMES.get(key, key.replace("_", "-")), (a.get(path), b.get(path)))
    return [(name, old, new) for name, (old, new) in names.items()]


def _legacy(d: dict) -> dict:
    """A config.json of mijax 0.1 (data and model options as fields) in today's form."""
    data, model = dict(d["data"]), dict(d["model"])
    if "options" not in data:
        options = {key: data.pop(key) for key in ("modes", "std", "round_robin") if key in data}
        if data.get("dataset") != "gaussian1d":
            options.pop("modes", None)
        data["options"] = {key: value for key, value in options.items() if value is not None}
    if "options" not in model:
        kind = model.pop("kind", "mlp")
        model = {"name": kind, "precision": model.pop("precision", "float32"), "options": model}
    return {**d, "data": data, "model": model}


def config_from_dict(d: Any) -> RunConfig:
    """Inverse of :func:`config_to_dict` (also reads the config.json of earlier versions); a dict that does not
    describe a run raises RunError."""
    if not isinstance(d, dict):
        raise RunError(f"config.json does not describe a mijax run (a JSON {type(d).__name__}, not an object)")
    try:
        d = _legacy(d)
        config = RunConfig(data=DataConfig(**d["data"]), model=ModelConfig(**d["model"]),
                           diffusion=DiffusionConfig(**d["diffusion"]), train=TrainConfig(**d["train"]),
                           **{k: d[k] for k in ("seed", "seeds", "checkpoint_every")})
    except (KeyError, TypeError, AttributeError) as e:
        raise RunError(f"config.json does not describe a mijax run ({type(e).__name__}: {e})") from None
    _check_types(config)
    return config


_TYPES = {  # what each setting must be (JSON gives any type; a wrong one must not reach the code)
    "seed": int, "seeds": int, "checkpoint_every": int, "data.dataset": str, "data.n_train": int,
    "model.name": str, "model.precision": str, "diffusion.schedule": str, "diffusion.timesteps": int,
    "diffusion.beta_start": float, "diffusion.beta_end": float, "diffusion.objective": str,
    "train.steps": int, "train.batch_size": int, "train.learning_rate": float, "train.b1": float, "train.b2": float,
    "train.eps": float, "train.objective": str, "train.shuffle": bool, "train.steps_per_call": int,
    "train.warmup_steps": int, "train.grad_clip": float, "train.ema_decay": float,
    "train.lr_decay": str, "train.lr_final": float, "train.t_power": float,
    "train.batch_groups": int,
}


def _check_types(config: RunConfig) -> None:
    for name, kind in _TYPES.items():
        value = config
        for part in name.split("."):
            value = getattr(value, part)
        if kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:
            ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            wanted = {float: "a finite number", int: "an integer", str: "a string", bool: "true or false"}[kind]
            raise RunError(f"{name} must be {wanted}, got {value!r}")


def validate_config(config: RunConfig) -> None:
    """Raise RunError (one line) for any setting that cannot run."""
    c = config
    _check_types(c)
    dataset = datasets.make(c.data.dataset, c.data.options)  # the data set's and the model's own checks first
    models.build(c.model.name, dataset.shape, c.model.precision, c.model.options)
    if not (0 <= c.seed and c.seed + c.seeds - 1 < SEED_LIMIT):
        raise RunError(f"seeds must lie in 0..{SEED_LIMIT - 1} (32-bit): seed {c.seed} + {c.seeds} seed(s) do not")
    if c.diffusion.schedule not in SCHEDULES:
        raise RunError(f"unknown schedule {c.diffusion.schedule!r}; choose from {', '.join(SCHEDULES)}")
    checks = [(c.diffusion.timesteps >= 2, f"timesteps must be >= 2 (Hal needs two steps), got {c.diffusion.timesteps}"),
              (c.data.n_train > 0, f"n-train must be > 0, got {c.data.n_train}"),
              (c.train.steps > 0, f"steps must be > 0, got {c.train.steps}"),
              (c.train.batch_size > 0, f"batch size must be > 0, got {c.train.batch_size}"),
              (c.train.batch_size <= c.data.n_train,
               f"batch size {c.train.batch_size} exceeds the training set ({c.data.n_train})"),
              (c.train.steps_per_call > 0, "steps per call must be > 0"),
              (math.isfinite(c.train.learning_rate) and c.train.learning_rate > 0,
               "learning rate must be finite and > 0"),
              (c.seeds > 0, f"seeds must be > 0, got {c.seeds}"),
              (c.train.warmup_steps >= 0, f"warm-up steps must be >= 0, got {c.train.warmup_steps}"),
              (c.train.grad_clip >= 0, f"gradient clipping must be >= 0 (0: off), got {c.train.grad_clip}"),
              (0 <= c.train.ema_decay < 1, f"ema decay must be in [0, 1) (0: off), got {c.train.ema_decay}"),
              (c.train.lr_decay in LR_DECAYS,
               f"unknown learning-rate decay {c.train.lr_decay!r}; choose from {', '.join(LR_DECAYS)}"),
              (0 <= c.train.lr_final <= 1, f"lr-final must be in [0, 1] (a fraction of the peak), got {c.train.lr_final}"),
              (0 < c.train.t_power <= 10, f"t-power must be in (0, 10] (1: uniform t), got {c.train.t_power}"),
              (valid_batch_groups(c.train),
               f"batch groups must be a power of two that divides the batch size ({c.train.batch_size}), "
               f"got {c.train.batch_groups}"),
              (c.checkpoint_every > 0, f"checkpoint-every must be > 0, got {c.checkpoint_every}")]
    for ok, message in checks:
        if not ok:
            raise RunError(message)
    try:
        make_schedule(c.diffusion.schedule, c.diffusion.timesteps, c.diffusion.beta_start, c.diffusion.beta_end)
        check_objective(c.diffusion.schedule, c.diffusion.timesteps, c.diffusion.beta_start, c.diffusion.beta_end,
                        c.diffusion.objective)
    except ValueError as e:
        raise RunError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# What a config builds.

@dataclasses.dataclass(frozen=True)
class Pieces:
    """What a run config builds: its data set, schedule, model and sample shape."""

    dataset: Any
    schedule: Schedule
    model: Any
    shape: tuple[int, ...]

    @property
    def denoise_fn(self) -> Callable:
        return ModuleDenoiser(self.model)


def make_run_schedule(config: RunConfig) -> Schedule:
    d = config.diffusion
    return make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end)


def validate_training_size(config: RunConfig) -> None:
    """Raise RunError (one line) unless the data set holds the ``n_train`` items a run trains on. A data set
    with a fixed training set (real digits, the generated shapes) says how many it holds with
    ``training_size()``, which reads or builds it (cached, so training does not pay twice); one that draws
    its points (the mixtures) has no limit. Called before a run's directory is created."""
    dataset = datasets.make(config.data.dataset, config.data.options)
    size = getattr(dataset, "training_size", None)
    if size is None:
        return
    available = int(size())
    if config.data.n_train > available:
        raise RunError(f"n-train {config.data.n_train} exceeds the {config.data.dataset} training set, which holds "
                       f"{available:,}; choose --n-train {available} or fewer")


def build(config: RunConfig, precision: str | None = None) -> Pieces:
    """The data set, schedule and model of ``config`` (the matmuls in ``precision``, default the config's)."""
    dataset = datasets.make(config.data.dataset, config.data.options)
    model = models.build(config.model.name, dataset.shape, precision or config.model.precision,
                         config.model.options)
    return Pieces(dataset, make_run_schedule(config), model, tuple(dataset.shape))


def training_data(config: RunConfig, dataset, keys: jax.Array) -> jnp.ndarray:
    """The training sets of all seeds, [S, N, *shape], each drawn from the TRAINING_SET stream of its key."""
    draw = lambda k: dataset.training_set(stream(k, TRAINING_SET), config.data.n_train)  # noqa: E731
    return jax.jit(jax.vmap(draw))(keys)


def data_config(dataset: str, n_train: int | None = None, **options: Any) -> DataConfig:
    """A DataConfig with the data set's default training-set size unless ``n_train`` is given."""
    return DataConfig(dataset, datasets.entry(dataset).n_train if n_train is None else n_train, options)


__all__ = ["DataConfig", "DiffusionConfig", "ModelConfig", "Pieces", "RunConfig", "RunError", "build",
           "config_from_dict", "config_to_dict", "data_config", "make_run_schedule", "paper_steps", "training_data",
           "validate_config", "validate_training_size"]
