"""Every configuration of mijax, in one place: the data set, model, diffusion, training, seeds (a run), the
sampler, sampling, abort-and-resample and recursive studies. Each is a frozen dataclass whose fields carry
their default, help text and range (:func:`setting`); a configuration is checked when it is built, and a bad
value raises :class:`ConfigError` naming the field (``train.steps must be > 0, got -5``). The ``mijax``
command derives its options from these fields, so each default is written here and nowhere else.

A run's ``config.json`` is :func:`config_to_dict` of its :class:`RunConfig` (plus the library versions).
Data-set and model options live with the data set and the model (:mod:`mijax.data`, :mod:`mijax.models`):
a config records them all, defaults filled in, so it says exactly what was trained.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import typing
from typing import Any, Callable, ClassVar, Mapping, Optional, Union

import jax
import jax.numpy as jnp

from mijax import data as datasets
from mijax import models
from mijax.detectors import DetectorSpec
from mijax import samplers
from mijax.diffusion import OBJECTIVES, SCHEDULES, Schedule, beta_values, check_objective, make_schedule
from mijax.errors import MijaxError
from mijax.filters import FILTERS
from mijax.hal import HAL_REDUCTIONS
from mijax.keys import SEED_LIMIT, TRAINING_SET, stream
from mijax.models import ModuleDenoiser

class ConfigError(MijaxError):
    """A setting that cannot run: one line naming the field (``field``, dotted: ``train.learning_rate``)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


RunError = MijaxError  # the name the run-directory functions raise under
EPOCHS = 10_000  # the published recipe trains 10,000 epochs of fixed batches
LR_DECAYS = ("none", "cosine", "linear")
SAMPLERS = tuple(samplers.names())  # the registered samplers (mijax.samplers)
VARIANCES = ("fixed_large", "fixed_small")


def setting(default: Any = dataclasses.MISSING, help: str = "", *, factory: Optional[Callable[[], Any]] = None,
            low: Optional[float] = None, high: Optional[float] = None, above: Optional[float] = None,
            below: Optional[float] = None, choices: Any = None, option: Optional[str] = None,
            infinite: bool = False) -> Any:
    """A configuration field: its default (or ``factory``), its help text, and what it accepts: ``low`` <= value
    <= ``high``, value > ``above``, value < ``below``, value in ``choices`` (a tuple, or a function returning one,
    for registries); a float must be finite unless ``infinite``. ``option`` is the command line's name when it
    is not the field's (``lr``)."""
    metadata = dict(help=help, low=low, high=high, above=above, below=below, choices=choices, option=option,
                    infinite=infinite)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@functools.lru_cache(maxsize=None)
def field_types(cls) -> dict:
    """The resolved annotation of every field of configuration class ``cls`` (cached)."""
    return typing.get_type_hints(cls)


_WANTED = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}


def _typed(hint: Any, value: Any, name: str, infinite: bool = False) -> Any:
    """``value`` as the annotation ``hint`` takes it (a list as a tuple, an int as a float where a float is
    asked), or ConfigError naming ``name``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        ok = ok and (infinite or math.isfinite(value))
        value = float(value) if ok else value
    elif hint is str:
        ok = isinstance(value, str)
    elif origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(name, f"{name} must be a list, got {value!r}")
        inner = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(inner) != len(value):
            raise ConfigError(name, f"{name} must have {len(inner)} items, got {value!r}")
        return tuple(_typed(h, v, name) for h, v in zip(inner, value))
    elif dataclasses.is_dataclass(hint):
        ok = isinstance(value, hint)
        if not ok:
            raise ConfigError(name, f"{name} must be a {hint.__name__}, got {value!r}")
    else:  # Any, Mapping: checked by their owner (the data set's and the model's options)
        return value
    if not ok:
        raise ConfigError(name, f"{name} must be {_WANTED[hint]}, got {value!r}")
    return value


class Config:
    """A frozen configuration whose fields are checked on construction (:func:`setting`); ``SECTION`` names it
    in messages (``train`` for :class:`TrainConfig`)."""

    SECTION: ClassVar[str] = ""

    def __post_init__(self):
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            name = f"{self.SECTION}.{f.name}" if self.SECTION else f.name
            value = _typed(hints[f.name], getattr(self, f.name), name, f.metadata.get("infinite", False))
            object.__setattr__(self, f.name, value)
            _check_range(f.metadata, value, name)
        self.check()

    def check(self) -> None:
        """Checks between fields (ConfigError); the fields themselves are checked before."""


def _check_range(m: Mapping[str, Any], value: Any, name: str) -> None:
    if value is None or not m:
        return
    choices = m.get("choices")
    if choices is not None:
        choices = choices() if callable(choices) else choices
        for v in (value if isinstance(value, tuple) else (value,)):
            if v not in choices:
                raise ConfigError(name, f"unknown {name} {v!r}; choose from {', '.join(choices)}")
    if m.get("low") is not None and value < m["low"]:
        raise ConfigError(name, f"{name} must be >= {m['low']:g}, got {value}")
    if m.get("high") is not None and value > m["high"]:
        raise ConfigError(name, f"{name} must be <= {m['high']:g}, got {value}")
    if m.get("above") is not None and value <= m["above"]:
        raise ConfigError(name, f"{name} must be > {m['above']:g}, got {value}")
    if m.get("below") is not None and value >= m["below"]:
        raise ConfigError(name, f"{name} must be < {m['below']:g}, got {value}")


def _fail(field: str, message: str) -> None:
    raise ConfigError(field, message)


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
    """The training distribution: a registered data set, its options and the training-set size.

    ``options`` are the data set's (for ``gaussian1d``: ``modes``, ``std``, ``round_robin``, ``k``); the
    defaults are filled in on construction, so two configs of the same data compare equal. ``n_train`` None
    is the data set's own size (the published 20,000 in 1D, 100,000 in 2D; ``mijax data`` lists them).
    """

    SECTION: ClassVar[str] = "data"
    dataset: str = setting("gaussian1d", "the data set", choices=datasets.names)
    n_train: Optional[int] = setting(None, "training-set size (None: the data set's)", above=0)
    options: Mapping[str, Any] = setting(factory=dict, help="the data set's options")

    def check(self):
        object.__setattr__(self, "options", datasets.resolve(self.dataset, self.options))
        if self.n_train is None:
            object.__setattr__(self, "n_train", datasets.entry(self.dataset).n_train)


@dataclasses.dataclass(frozen=True)
class ModelConfig(Config):
    """The denoiser: a registered model (``mlp``, the paper's), its options and the matmul precision
    (``float32``, ``tf32`` or ``bf16``; see :mod:`mijax.models.mlp`). Defaults are filled in on construction."""

    SECTION: ClassVar[str] = "model"
    name: str = setting("mlp", "the denoiser", choices=models.names, option="model")
    precision: str = setting("float32", "the network's matmuls (the sampler's arithmetic stays float32)",
                             choices=models.PRECISIONS)
    options: Mapping[str, Any] = setting(factory=dict, help="the model's options")

    def check(self):
        object.__setattr__(self, "options", models.resolve(self.name, self.options))


@dataclasses.dataclass(frozen=True)
class DiffusionConfig(Config):
    """The noise schedule and what the network predicts (defaults: the paper's)."""

    SECTION: ClassVar[str] = "diffusion"
    schedule: str = setting("linear", "beta schedule", choices=SCHEDULES)
    timesteps: int = setting(1000, "diffusion steps T (at least 2: Hal needs two)", low=2)
    beta_start: float = setting(1e-3, "first beta of the schedule", above=0)
    beta_end: float = setting(0.2, "last beta of the schedule", above=0, high=1)
    objective: str = setting("eps", "what the network predicts", choices=OBJECTIVES)

    def check(self):
        try:
            beta_values(self.schedule, self.timesteps, self.beta_start, self.beta_end)  # numpy: starts no backend
            check_objective(self.schedule, self.timesteps, self.beta_start, self.beta_end, self.objective)
        except ValueError as e:
            raise ConfigError("diffusion", str(e)) from None


@dataclasses.dataclass(frozen=True)
class TrainConfig(Config):
    """Optimisation settings; the defaults are the published recipe (Adam 1e-3, batch 10,000).

    ``warmup_steps`` (a linear ramp of the learning rate from 0 over that many steps), ``grad_clip`` (the
    largest global norm of the gradient, 0: no clipping) and ``ema_decay`` (an exponential moving average of
    the weights, which the samplers then use; 0: none) are the image DDPMs' options (ddpm-torch: 5,000, 1.0 and
    0.9999). ``lr_decay`` ("none", "cosine" or "linear") lowers the learning rate after the warm-up to
    ``lr_final`` times its peak at step ``steps`` (and keeps it there if training goes on). All are off in the
    paper's toy recipe, and then the optimiser (and its state) is plain Adam. ``t_power`` draws the loss's
    timesteps as ``floor(T u^t_power)`` (:func:`mijax.diffusion.sample_timesteps`): 1 is uniform, as published;
    above 1 the small t that shape the modes come more often (the quick 2D and recursive models: 1.5).
    ``smoothness`` adds that weight times the score-smoothness penalty
    (:func:`mijax.diffusion.smoothness_penalty`) to the loss, over the first ``smoothness_rows`` rows of the
    batch (0: all); off (0) as published. ``min_snr`` gamma > 0 weights each sample's error by
    :func:`mijax.diffusion.min_snr_weights` (min-SNR-gamma); 0 (off) as published.
    Dropout is an option of the model (the UNet's ``dropout``); its masks come from the ``DROPOUT`` stream.
    ``batch_groups`` G > 1 (a power of two dividing the batch) takes each step's loss and gradient as the mean
    of G equal consecutive groups of the batch, computed apart and summed pairwise, with the same t and noise
    as G = 1 (:func:`mijax.training.batch_gradient`): the same mathematics in another summation order, and the
    groups run on separate devices with the same numbers on 1 or G devices. 1: one gradient over the whole
    batch, as published.
    """

    SECTION: ClassVar[str] = "train"
    steps: int = setting(20_000, "optimiser steps", above=0)
    batch_size: int = setting(10_000, "training batch", above=0)
    learning_rate: float = setting(1e-3, "Adam learning rate", above=0, option="lr")
    b1: float = setting(0.9, "Adam's first-moment decay", low=0, below=1)
    b2: float = setting(0.999, "Adam's second-moment decay", low=0, below=1)
    eps: float = setting(1e-8, "Adam's epsilon", above=0)
    objective: str = setting("eps", "what the network predicts", choices=OBJECTIVES)
    shuffle: bool = setting(False, "permute the training set every epoch (the published code visits fixed "
                                   "batches in order)")
    steps_per_call: int = setting(200, "optimiser steps per jitted dispatch", above=0)
    warmup_steps: int = setting(0, "ramp the learning rate linearly from 0 over this many steps (0: off, as "
                                   "published)", low=0)
    grad_clip: float = setting(0.0, "clip the gradient to this global norm (0: off, as published; image DDPMs: 1)",
                               low=0)
    ema_decay: float = setting(0.0, "sample with a moving average of the weights of this decay (0: off, as "
                                    "published; image DDPMs: 0.9999)", low=0, below=1)
    lr_decay: str = setting("none", "lower the learning rate after the warm-up, down to lr_final times its peak "
                                    "at the last step (none: constant, as published)", choices=LR_DECAYS)
    lr_final: float = setting(0.0, "with lr_decay: the learning rate at the last step, as a fraction of the peak",
                              low=0, high=1)
    t_power: float = setting(1.0, "draw the loss's timesteps as floor(T u^P), u uniform: 1 is uniform t, as "
                                  "published; above 1 small t come more often", above=0, high=10)
    batch_groups: int = setting(1, "take each step's gradient as the mean of G equal groups of the batch, "
                                   "computed apart, each group on its own device when the seeds leave devices "
                                   "free (a power of two dividing the batch; the same numbers on any device "
                                   "count). 1: one gradient over the batch, as published", above=0)
    smoothness: float = setting(0.0, "add this weight times the score-smoothness penalty mean 1 / (1 + J_ii^2) "
                                     "(J: the model score's Jacobian at the loss's x_t) to the loss; it pushes the "
                                     "score to turn sharply between modes (0: off, as published)", low=0)
    smoothness_rows: int = setting(0, "the smoothness penalty's mean over the first this many rows of each batch "
                                      "(of each group with batch_groups; 0: all rows): an unbiased estimate at a "
                                      "fraction of the cost", low=0)
    min_snr: float = setting(0.0, "weight each sample's loss by min(SNR_t, gamma) over the objective's own weight "
                                  "(min-SNR-gamma weighting, gamma 5 in its paper; 0: off, as published)", low=0)

    def check(self):
        g = self.batch_groups
        if g & (g - 1) or self.batch_size % g:
            _fail("train.batch_groups", f"train.batch_groups must be a power of two that divides the batch size "
                                        f"({self.batch_size}), got {g}")


@dataclasses.dataclass(frozen=True)
class RunConfig(Config):
    """Everything that defines a training run; saved as ``config.json``."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    train: TrainConfig = TrainConfig()
    seed: int = setting(0, "first seed; model s uses seed + s (32-bit)", low=0, below=SEED_LIMIT)
    seeds: int = setting(1, "models trained at once (vmapped)", above=0)
    checkpoint_every: int = setting(5_000, "optimiser steps between checkpoints", above=0)

    def check(self):
        if self.seed + self.seeds - 1 >= SEED_LIMIT:
            _fail("seeds", f"seeds must lie in 0..{SEED_LIMIT - 1} (32-bit): seed {self.seed} + {self.seeds} "
                           "seed(s) do not")
        if self.train.batch_size > self.data.n_train:
            _fail("train.batch_size", f"batch size {self.train.batch_size} exceeds the training set "
                                      f"({self.data.n_train}, data.n_train)")

    @property
    def seed_values(self) -> list[int]:
        return [self.seed + s for s in range(self.seeds)]


@dataclasses.dataclass(frozen=True)
class SamplerConfig(Config):
    """Static settings of a reverse sampler (hashable: a ``jit`` static argument).

    Attributes:
      sampler: a registered sampler (:mod:`mijax.samplers`): ``ddpm`` (ancestral, the paper's), ``ddim``,
        ``heun`` (the probability-flow ODE, second order) or ``dpmpp2m`` (DPM-Solver++(2M)).
      variance: DDPM step variance, ``fixed_large`` (beta_t, the paper's) or ``fixed_small``
        (the posterior variance); also of DDIM's stochastic steps.
      objective: what the denoiser predicts: ``eps`` (the paper's), ``x0`` or ``mean``.
      hal_window: K, the number of reverse steps whose x0_hat variance is Hal (>= 2).
      hal_end: the window ends this many reverse steps before the last one. For DDPM over all T steps
        the window is t = hal_end .. hal_end + K - 1 (the paper's code: t = 9..0).
      ddim_steps: the number of timesteps of a step-skipping sampler (``ddim``, ``heun``, ``dpmpp2m``; None:
        all T).
      skip: how those timesteps are spaced: ``uniform`` or ``quad`` (DDIM's quadratic spacing, up to 0.8 T).
      eta: DDIM's noise scale (0: deterministic).
      stochastic_steps: DDIM only: k single DDPM steps replacing part of its trajectory (0: none).
      stochastic_at: where: ``first`` (from its first timestep down), ``last`` (t = k - 1 .. 0) or ``window``
        (from ``stochastic_from`` down).
      stochastic_from: the timestep a ``window`` of stochastic steps starts from (t_w .. t_w - k + 1).
      trajectory_stride: record x0_hat every this many reverse steps (0: record nothing).
      trajectory_last: record only within the last this many reverse steps (None: all).
      trajectory_xt: record x_t (each recorded step's input) beside x0_hat (``Samples.trajectory_xt``).
      hal_windows: extra Hal windows ``((end, length), ...)``, each the variance over ``length`` reverse
        steps ending ``end`` steps before the last, carried in the same pass (``Samples.hal_windows``).
      hal_reduction: how the per-coordinate variances become one number, a key of ``HAL_REDUCTIONS``.
      hal_top_k: k of the ``top_k`` reduction (the mean of the k largest per-coordinate variances).
      hal_regions: the ``region_max`` reduction's regions of an image [H, W, C], boxes
        ``(row_start, row_stop, col_start, col_stop)`` (half-open), e.g. the SHAPES strips
        (:attr:`mijax.data.shapes.ShapesDataset.hal_regions`).
      hal_table: more reductions (keys of ``HAL_REDUCTIONS``) applied to every window's variances in the same
        pass: ``Samples.hal_table`` [N, windows, reductions] (windows as :meth:`windows`, the main one first).
      detectors: more hallucination scores computed in the same pass (:mod:`mijax.detectors`, e.g.
        ``detectors.parse("hal,jac_trace,lid")``): ``Samples.scores`` {spec key: [N]}, higher = more suspicious.
      jac_probes: Rademacher probes of the Hutchinson estimate of a Jacobian detector on samples of more than
        ``detectors.JAC_EXACT_MAX`` coordinates (images); smaller samples get the exact Jacobian.
      clip_x0: clip x0_hat to [-1, 1] at every step and take the step from the clipped x0_hat (DDPM: the
        posterior mean at it; DDIM: the noise it implies), as image DDPMs do; Hal is then the variance of
        the clipped x0_hat. Off by default (the paper's toy recipe never clips).
    """

    SECTION: ClassVar[str] = "sampler"
    # The fields that choose the reverse sampler and its steps (the rest are Hal's, the detectors' and recording's).
    CHOICE: ClassVar[tuple[str, ...]] = ("sampler", "variance", "ddim_steps", "skip", "eta", "stochastic_steps",
                                         "stochastic_at", "stochastic_from")
    sampler: str = setting("ddpm", "the reverse sampler: ddpm (ancestral, published), ddim, heun (probability-flow "
                                   "ODE, second order), dpmpp2m (DPM-Solver++ 2M)", choices=SAMPLERS)
    variance: str = setting("fixed_large", "DDPM only: the step variance (fixed_large: beta_t, as published)",
                            choices=VARIANCES)
    objective: str = setting("eps", "what the network predicts (a run's sampler takes the run's)",
                             choices=OBJECTIVES)
    hal_window: int = setting(10, "reverse steps in the Hal window (K)", low=2)
    hal_end: int = setting(0, "the Hal window ends this many steps before the last", low=0)
    ddim_steps: Optional[int] = setting(None, "ddim, heun, dpmpp2m: the number of timesteps (None: all T)", above=0)
    eta: float = setting(0.0, "DDIM only: noise scale (0: deterministic)", low=0)
    skip: str = setting("uniform", "ddim, heun, dpmpp2m: the timesteps' spacing, uniform or quad (quadratic, up "
                                   "to 0.8 T)", choices=samplers.SKIPS)
    stochastic_steps: int = setting(0, "DDIM only: single DDPM steps replacing part of its trajectory", low=0)
    stochastic_at: str = setting("first", "where the stochastic steps go: first (from the first timestep down), "
                                          "last (t = k - 1 .. 0) or window (from --stochastic-from down)",
                                 choices=samplers.STOCHASTIC_AT)
    stochastic_from: Optional[int] = setting(None, "window: the timestep the stochastic steps start from", low=0)
    trajectory_stride: int = setting(0, "record x0_hat every this many reverse steps (0: none)", low=0)
    trajectory_last: Optional[int] = setting(None, "record only within the last this many reverse steps",
                                             above=0)
    trajectory_xt: bool = setting(False, "record x_t beside x0_hat")
    hal_windows: tuple[tuple[int, int], ...] = setting((), "extra Hal windows (end, length)")
    hal_reduction: str = setting("mean", "how Hal reduces the per-coordinate variances: mean (published), max, "
                                         "top_k, region_max (per region the mean, then the largest: the data "
                                         "set's regions, e.g. the SHAPES strips)", choices=tuple(HAL_REDUCTIONS))
    hal_top_k: int = setting(16, "k of the top_k reduction, the mean of the k largest per-coordinate variances",
                             low=1)
    clip_x0: bool = setting(False, "clip x0_hat to [-1, 1] at every step (image DDPMs; the toy recipe never clips)")
    hal_regions: tuple[tuple[int, int, int, int], ...] = setting((), "the region_max reduction's boxes")
    hal_table: tuple[str, ...] = setting((), "more reductions of every window", choices=tuple(HAL_REDUCTIONS))
    detectors: tuple[DetectorSpec, ...] = setting((), "more hallucination scores in the same pass")
    jac_probes: int = setting(4, "Hutchinson probes of the Jacobian detectors on images (points get the exact "
                                 "Jacobian)", low=1)

    def windows(self) -> tuple[tuple[int, int], ...]:
        """Every Hal window as ``(end, length)``: the main one first, then ``hal_windows``."""
        return ((self.hal_end, self.hal_window),) + tuple((int(e), int(k)) for e, k in self.hal_windows)


@dataclasses.dataclass(frozen=True)
class AbortConfig(Config):
    """When to abort: ``detector``'s window ends t_e = ``detector.end`` steps before the last; a sample whose
    score there is ``>= threshold`` is redrawn, at most ``max_redraws`` times.

    Instead of a threshold, a ``target_rate``: the threshold is then certified per model from ``calibration``
    labelled samples of a separate draw (:func:`mijax.abort.certify_abort`), so that the hallucination rate among
    the samples accepted below it is at most ``target_rate`` with probability at least ``1 - delta`` over that
    draw (the samples kept only because their redraws ran out are outside the guarantee)."""

    SECTION: ClassVar[str] = "abort"
    detector: DetectorSpec = setting(help="the detector whose window ends where samples are aborted")
    threshold: Optional[float] = setting(None, "the detector's threshold: a score >= it is redrawn (inf: never; "
                                               "None: certified from target_rate)",
                                         infinite=True, option="abort_threshold")
    max_redraws: int = setting(3, "redraws per sample at most, the last kept", low=0)
    target_rate: Optional[float] = setting(None, "certify the threshold instead: the hallucination rate among the "
                                                 "samples accepted below it at most this, with probability >= "
                                                 "1 - delta", above=0, below=1, option="abort_target_rate")
    delta: float = setting(0.1, "target_rate's failure probability", above=0, below=1, option="abort_delta")
    calibration: int = setting(10_000, "target_rate: labelled calibration samples per model", above=3,
                               option="abort_calibration")

    def check(self):
        if (self.threshold is None) == (self.target_rate is None):
            _fail("abort.threshold", "abort takes a threshold or a target rate, one of them")


@dataclasses.dataclass(frozen=True)
class SampleConfig(Config):
    """How a trained run is sampled: samples per seed, the sampling seed, chunks, the network's kernel and
    precision (None: the run's), the sampler, and abort-and-resample (None: off)."""

    SECTION: ClassVar[str] = "sample"
    n: int = setting(help="samples per seed", above=0)
    seed: int = setting(0, "sampling seed (32-bit)", low=0, below=SEED_LIMIT)
    chunk_size: Optional[int] = setting(50_000, "samples per compiled chunk (None: all at once)", above=0)
    kernel: str = setting("xla", "how the network runs: xla or pallas (one fused kernel per block of rows on a "
                                 "GPU; elsewhere the XLA path)", choices=models.KERNELS)
    precision: Optional[str] = setting(None, "the network's matmuls (None: the run's)", choices=models.PRECISIONS)
    sampler: SamplerConfig = SamplerConfig()
    abort: Optional[AbortConfig] = None


@dataclasses.dataclass(frozen=True)
class RecursiveConfig(Config):
    """A recursive-training study.

    Attributes:
      run: the recipe of every model (data set, model, diffusion, training); ``run.data.n_train`` is N,
        the training-set size of every generation; ``run.seed`` / ``run.seeds`` the seeds.
      generations: G, generations 0..G-1.
      filters: the filters compared (of :data:`FILTERS`, in plot order).
      pool_extra: the pool is N + pool_extra samples (the paper: 2,500) ...
      pool_ratio: ... or, if set, ceil(N * pool_ratio) samples.
      threshold_keep: fraction of generation 0's pool the threshold keeps (None: N / P).
      certified_alpha, certified_delta: the ``certified`` filter's target and failure probability: per seed, a
        Hal threshold certified (:func:`mijax.filters.certify_threshold`) on a calibration draw of generation
        0's models, independent of their pool, to keep the hallucination rate among the samples it keeps at
        most alpha with probability >= 1 - delta. The guarantee holds for generation 0's pools (drawn as the
        calibration draw is); later generations' models drift from generation 0's, and the same threshold
        carries no guarantee for their pools.
      sampler: how every pool is drawn (:class:`SamplerConfig`): the reverse sampler (default DDPM, as
        published) and Hal, ``hal_window`` K reverse steps ending ``hal_end`` before the last (DDPM over all T
        steps: t = hal_end + K - 1 .. hal_end), reduced by ``hal_reduction`` (``region_max`` takes the data
        set's regions, e.g. the SHAPES strips), x0_hat clipped to [-1, 1] with ``clip_x0`` (images). Its
        ``objective`` is the run's (set on construction).
      chunk_size: samples per compiled sampling chunk.
    """

    SECTION: ClassVar[str] = "recursive"
    run: RunConfig = RunConfig()
    generations: int = setting(5, "generations 0..G-1", above=0)
    filters: tuple[str, ...] = setting(("none", "random", "variance"), "the filters compared, of none, random, "
                                       "variance, threshold, certified", choices=FILTERS)
    pool_extra: int = setting(2_500, "pool = N + this many samples (published: 2,500)", low=0)
    pool_ratio: Optional[float] = setting(None, "pool = ceil(N * ratio) instead", low=1)
    threshold_keep: Optional[float] = setting(None, "fraction of generation 0's pool the threshold filter keeps "
                                                    "(None: N / pool)", above=0, high=1)
    certified_alpha: float = setting(0.01, "the certified filter's target hallucination rate among the samples it "
                                           "keeps", above=0, below=1)
    certified_delta: float = setting(0.1, "the certified filter's failure probability: its rate holds with "
                                          "probability >= 1 - this over generation 0's calibration draw",
                                     above=0, below=1)
    sampler: SamplerConfig = SamplerConfig()
    chunk_size: int = setting(20_000, "samples per compiled chunk", above=0)

    def check(self):
        if not self.filters or len(set(self.filters)) != len(self.filters):
            _fail("recursive.filters", "recursive.filters must be a non-empty list without repeats")
        if self.sampler.hal_window > self.run.diffusion.timesteps:
            _fail("sampler.hal_window", f"Hal window must be in 2..{self.run.diffusion.timesteps}, got "
                                        f"{self.sampler.hal_window}")
        if self.sampler.objective != self.run.diffusion.objective:
            object.__setattr__(self, "sampler", dataclasses.replace(self.sampler,
                                                                    objective=self.run.diffusion.objective))

    @property
    def n(self) -> int:
        return self.run.data.n_train

    @property
    def pool_size(self) -> int:
        if self.pool_ratio is not None:
            return int(math.ceil(self.n * self.pool_ratio - 1e-9))
        return self.n + self.pool_extra

    @property
    def num_seeds(self) -> int:
        return self.run.seeds


def paper_steps(n_train: int, batch_size: int, epochs: int = EPOCHS) -> int:
    """The published recipe counts epochs of fixed batches: steps = epochs * (N // batch)."""
    return max(1, epochs * max(1, n_train // min(batch_size, n_train)))


def config_to_dict(config: RunConfig) -> dict:
    d = dataclasses.asdict(config)
    d["data"]["options"] = dict(config.data.options)
    d["model"]["options"] = dict(config.model.options)
    return d


def sampler_from_dict(d: Mapping[str, Any]) -> SamplerConfig:
    """Inverse of ``dataclasses.asdict`` of a :class:`SamplerConfig` (as a study's ``config.json`` holds it):
    its lists as tuples, its detectors as :class:`~mijax.detectors.DetectorSpec`."""
    d = dict(d)
    if "detectors" in d:
        d["detectors"] = tuple(spec if isinstance(spec, DetectorSpec) else DetectorSpec(**spec)
                               for spec in d["detectors"])
    return SamplerConfig(**d)


def option_name(path: tuple[str, ...]) -> str:
    """The command line's name of the setting at ``path`` (``("train", "learning_rate")`` -> ``lr``)."""
    cls, meta = RunConfig, {}
    for part in path:
        fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        if part not in fields:
            return path[-1].replace("_", "-")
        meta, cls = fields[part].metadata, field_types(cls)[part]
    return (meta.get("option") or path[-1]).replace("_", "-")


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
            names.setdefault(option_name(path), (a.get(path), b.get(path)))
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
    describe a run raises RunError, a setting that cannot run ConfigError."""
    if not isinstance(d, dict):
        raise RunError(f"config.json does not describe a mijax run (a JSON {type(d).__name__}, not an object)")
    try:
        d = _legacy(d)
        return RunConfig(data=DataConfig(**d["data"]), model=ModelConfig(**d["model"]),
                         diffusion=DiffusionConfig(**d["diffusion"]), train=TrainConfig(**d["train"]),
                         **{k: d[k] for k in ("seed", "seeds", "checkpoint_every")})
    except (KeyError, TypeError, AttributeError) as e:
        raise RunError(f"config.json does not describe a mijax run ({type(e).__name__}: {e})") from None


def validate_config(config: RunConfig) -> None:
    """Raise MijaxError (one line) unless the data set and the model of ``config`` can be built (their own
    checks of their options); the settings themselves were checked when ``config`` was made."""
    dataset = datasets.make(config.data.dataset, config.data.options)
    models.build(config.model.name, dataset.shape, config.model.precision, config.model.options)


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


def validate_training_size(config: RunConfig, dataset: Any = None) -> None:
    """Raise RunError (one line) unless the data set holds the ``n_train`` items a run trains on. A data set
    with a fixed training set (real digits, the generated shapes) says how many it holds with
    ``training_size()``, which reads or builds it (cached, so training does not pay twice); one that draws
    its points (the mixtures) has no limit. Called before a run's directory is created. ``dataset``: the one
    ``config`` built, if at hand."""
    dataset = datasets.make(config.data.dataset, config.data.options) if dataset is None else dataset
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
    return DataConfig(dataset, n_train, options)


__all__ = ["AbortConfig", "Config", "ConfigError", "DataConfig", "DiffusionConfig", "LR_DECAYS", "ModelConfig",
           "Pieces", "RecursiveConfig", "RunConfig", "RunError", "SAMPLERS", "SampleConfig", "SamplerConfig", "TrainConfig", "VARIANCES",
           "build", "option_name", "setting",
           "config_from_dict", "config_to_dict", "data_config", "sampler_from_dict", "make_run_schedule", "paper_steps", "training_data",
           "validate_config", "validate_training_size"]
