"""Run directories: resolved config JSON, orbax checkpoints, loss log, metrics; atomic writes; resume.

A run directory holds::

    config.json        the resolved RunConfig (+ versions)
    checkpoints/<step> orbax checkpoints of the seed-stacked TrainState
    losses.json        mean loss per dispatch, per seed, up to the last checkpoint
    metrics.json, *.png, ...  written by later stages

Every model of a run is one seed of a vmapped program: seed s trains with ``jax.random.key(seed + s)``,
so a run with ``seeds = S`` holds exactly the models of S separate one-seed runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mijax import mixtures
from mijax import distributed
from mijax.models import ModuleDenoiser, ToyDenoiser
from mijax.models.fused import make_denoiser
from mijax.models.mlp import PRECISIONS
from mijax.sampling import SamplerConfig, sample_chunks
from mijax.schedules import SCHEDULES, Schedule, make_schedule
from mijax.training import TrainConfig, TrainState, init_state, train

DATASETS = ("gaussian1d", "gaussian25", "gaussian25_rotated", "gaussian8")
DATASET_STREAM = 3  # fold_in stream of a model's key that draws its training set


class RunError(ValueError):
    """A run directory or its inputs cannot be used; the message is one line for the user."""


# ---------------------------------------------------------------------------------------------
# Configs.

@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The training distribution. ``modes`` and ``std`` apply to ``gaussian1d`` (std to all presets)."""

    dataset: str = "gaussian1d"
    modes: Optional[tuple[float, ...]] = (1.0, 2.0, 3.0)
    std: Optional[float] = None  # None: the preset's own (0.05; 0.02 for gaussian8)
    n_train: int = 20_000
    round_robin: Optional[bool] = None  # None: the published code's choice for the preset


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The denoiser: the paper's MLP (width 128, one block applied 3 times, tied weights)."""

    kind: str = "mlp"
    width: int = 128
    num_layers: int = 3
    tied: bool = True
    precision: str = "float32"  # of the matmuls: float32, tf32 or bf16 (see mijax.models.mlp)


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


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(d: dict) -> RunConfig:
    """Inverse of :func:`config_to_dict`; unknown keys raise RunError."""
    try:
        data = dict(d["data"])
        if data.get("modes") is not None:
            data["modes"] = tuple(float(m) for m in data["modes"])
        return RunConfig(data=DataConfig(**data), model=ModelConfig(**d["model"]),
                         diffusion=DiffusionConfig(**d["diffusion"]), train=TrainConfig(**d["train"]),
                         **{k: d[k] for k in ("seed", "seeds", "checkpoint_every")})
    except (KeyError, TypeError) as e:
        raise RunError(f"config.json does not describe a mijax run ({e})") from None


def validate_config(config: RunConfig) -> None:
    """Raise RunError (one line) for any setting that cannot run."""
    c = config
    if c.data.dataset not in DATASETS:
        raise RunError(f"unknown data set {c.data.dataset!r}; choose from {', '.join(DATASETS)}")
    try:
        make_mixture(c.data)
    except ValueError as e:
        raise RunError(str(e)) from None
    if c.diffusion.schedule not in SCHEDULES:
        raise RunError(f"unknown schedule {c.diffusion.schedule!r}; choose from {', '.join(SCHEDULES)}")
    checks = [(c.diffusion.timesteps >= 1, f"timesteps must be >= 1, got {c.diffusion.timesteps}"),
              (c.data.n_train > 0, f"n-train must be > 0, got {c.data.n_train}"),
              (c.train.steps > 0, f"steps must be > 0, got {c.train.steps}"),
              (c.train.batch_size > 0, f"batch size must be > 0, got {c.train.batch_size}"),
              (c.train.batch_size <= c.data.n_train,
               f"batch size {c.train.batch_size} exceeds the training set ({c.data.n_train})"),
              (c.train.steps_per_call > 0, "steps per call must be > 0"),
              (c.train.learning_rate > 0, "learning rate must be > 0"),
              (c.seeds > 0, f"seeds must be > 0, got {c.seeds}"),
              (c.checkpoint_every > 0, f"checkpoint-every must be > 0, got {c.checkpoint_every}"),
              (c.model.kind == "mlp", f"unknown model {c.model.kind!r}"),
              (c.model.width > 1 and c.model.width % 2 == 0, "model width must be even and > 1"),
              (c.model.num_layers > 0, "num layers must be > 0"),
              (c.model.precision in PRECISIONS,
               f"unknown precision {c.model.precision!r}; choose from {', '.join(PRECISIONS)}")]
    for ok, message in checks:
        if not ok:
            raise RunError(message)
    try:
        make_schedule(c.diffusion.schedule, c.diffusion.timesteps, c.diffusion.beta_start, c.diffusion.beta_end)
    except ValueError as e:
        raise RunError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Building the pieces of a run.

def make_mixture(data: DataConfig) -> mixtures.GaussianMixture:
    """The Gaussian mixture of a data config (model units)."""
    kwargs = {} if data.std is None else {"std": data.std}
    if data.dataset == "gaussian1d":
        return mixtures.gaussian1d(() if data.modes is None else data.modes, **kwargs)
    if data.dataset in mixtures.PRESETS:
        return mixtures.PRESETS[data.dataset](**kwargs)
    raise ValueError(f"unknown data set {data.dataset!r}; choose from {', '.join(DATASETS)}")


def make_run_schedule(config: RunConfig) -> Schedule:
    d = config.diffusion
    return make_schedule(d.schedule, d.timesteps, d.beta_start, d.beta_end)


def make_model(config: RunConfig, dim: int) -> ToyDenoiser:
    m = config.model
    return ToyDenoiser(features=dim, width=m.width, num_layers=m.num_layers, tied=m.tied, precision=m.precision)


def seed_keys(seeds: Sequence[int]) -> jax.Array:
    """Typed keys [S], ``jax.random.key(seed)`` for each seed."""
    return jax.vmap(jax.random.key)(jnp.asarray(seeds, dtype=jnp.uint32))


def training_data(config: RunConfig, keys: jax.Array) -> jnp.ndarray:
    """The training sets of all seeds, [S, N, d], each drawn from fold_in(key_s, DATASET_STREAM)."""
    mixture = make_mixture(config.data)
    round_robin = (mixtures.ROUND_ROBIN[config.data.dataset] if config.data.round_robin is None
                   else config.data.round_robin)
    draw = lambda k: mixtures.sample(mixture, jax.random.fold_in(k, DATASET_STREAM), config.data.n_train,  # noqa
                                     round_robin)
    return jax.jit(jax.vmap(draw))(keys)


@dataclasses.dataclass(frozen=True)
class Pieces:
    """What a run config builds: its mixture, schedule, model, denoiser and sample shape."""

    mixture: mixtures.GaussianMixture
    schedule: Schedule
    model: ToyDenoiser
    shape: tuple[int, ...]

    @property
    def denoise_fn(self) -> Callable:
        return ModuleDenoiser(self.model)


def build(config: RunConfig) -> Pieces:
    mixture = make_mixture(config.data)
    return Pieces(mixture, make_run_schedule(config), make_model(config, mixture.dim), (mixture.dim,))


def initial_states(config: RunConfig, pieces: Pieces, keys: jax.Array) -> TrainState:
    """Seed-stacked initial TrainState (leaves [S, ...])."""
    dummy_x = jnp.zeros((1,) + pieces.shape, jnp.float32)
    dummy_t = jnp.zeros((1,), jnp.int32)
    init_fn = lambda k: pieces.model.init(k, dummy_x, dummy_t)  # noqa: E731
    return jax.jit(jax.vmap(lambda k: init_state(init_fn, config.train, k)))(keys)


# ---------------------------------------------------------------------------------------------
# Atomic files.

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def _atomic_target(path: os.PathLike, suffix: str = ".tmp"):
    """Yield a temp path beside ``path`` to write; on success it replaces ``path`` (a rename), on error it
    is removed. The temp file gets the umask's mode (mkstemp makes 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)  # a run's files are as readable as any other
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and a rename."""
    with _atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_json(path: os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def save_npz(path: os.PathLike, **arrays: np.ndarray) -> None:
    """An atomic ``np.savez``: a temp file beside ``path``, then a rename."""
    with _atomic_target(path, ".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


class NpyStream:
    """A ``.npy`` file of a known shape filled piece by piece with ``pwrite``: nothing is memory-mapped,
    so the process holds only the piece being written (the page cache is the kernel's to drop)."""

    def __init__(self, path: os.PathLike, dtype, shape: tuple[int, ...]):
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(shape)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": self.shape}
        with open(self.path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            self.offset = f.tell()
            f.truncate(self.offset + self.dtype.itemsize * int(np.prod(self.shape)))
        self._fd = os.open(self.path, os.O_WRONLY)

    def write(self, index: tuple[int, ...], block: np.ndarray) -> None:
        """Write ``block`` (C order) whose first element is at ``index`` and that runs contiguously from there
        (a block of whole rows of the trailing axes)."""
        flat = int(np.ravel_multi_index(index, self.shape))
        data = np.ascontiguousarray(block, self.dtype).tobytes()
        os.pwrite(self._fd, data, self.offset + flat * self.dtype.itemsize)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def pack_npz(path: os.PathLike, files: dict[str, os.PathLike], **arrays: np.ndarray) -> None:
    """Atomically write an uncompressed ``.npz`` holding the ``.npy`` ``files`` (copied from disk piece by
    piece, never loaded whole) and the small in-memory ``arrays``; ``np.load`` reads it as usual."""
    with _atomic_target(path, ".tmp.npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                                   allowZip64=True) as z:
        for name, file in files.items():
            z.write(file, f"{name}.npy")
        for name, array in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def read_json(path: os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------
# Checkpoints.

def _manager(run_dir: Path, read_only: bool = False):
    import orbax.checkpoint as ocp  # imported here: only runs need orbax

    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else 2, create=not read_only,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager((run_dir / "checkpoints").absolute(), options=options)


def save_checkpoint(run_dir: Path, state: TrainState) -> None:
    import orbax.checkpoint as ocp

    step = int(np.max(distributed.to_host(state.step)))
    with _manager(run_dir) as manager:
        manager.save(step, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()


def latest_step(run_dir: Path) -> Optional[int]:
    if not (run_dir / "checkpoints").is_dir():
        return None
    with _manager(run_dir, read_only=True) as manager:
        return manager.latest_step()


def restore_checkpoint(run_dir: Path, target: TrainState, step: Optional[int] = None) -> TrainState:
    """Restore the checkpoint at ``step`` (default latest) into the structure of ``target``."""
    import orbax.checkpoint as ocp

    step = latest_step(run_dir) if step is None else step
    if step is None:
        raise RunError(f"{run_dir} has no checkpoint")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        with _manager(run_dir, read_only=True) as manager:
            state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for damaged files
        raise RunError(f"corrupt checkpoint {run_dir / 'checkpoints' / str(step)}: {type(e).__name__}") from None
    leaves = jax.tree.leaves(state)
    if not all(np.all(np.isfinite(np.asarray(a))) for a in leaves if np.issubdtype(np.asarray(a).dtype, np.floating)):
        raise RunError(f"corrupt checkpoint {run_dir / 'checkpoints' / str(step)}: non-finite values")
    return state


# ---------------------------------------------------------------------------------------------
# Training a run.

def prepare_output(out: Path, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse an existing output unless ``overwrite`` (delete it) or ``resume``. Writes nothing else."""
    if out.exists() and not resume:
        if not overwrite:
            raise RunError(f"{out} already exists; pass --overwrite to replace it"
                           + (" or --resume to continue it" if out.is_dir() else ""))


def train_run(out: os.PathLike, config: RunConfig, resume: bool = False, overwrite: bool = False,
              progress: bool = True, stop_at: Optional[int] = None) -> TrainState:
    """Train ``config.seeds`` models in one vmapped program, checkpointing into ``out``.

    Args:
      out: the run directory (created).
      config: the run's settings.
      resume: continue from the latest checkpoint of ``out`` (its config must match).
      overwrite: delete an existing ``out`` first.
      progress: show a progress bar with the loss.
      stop_at: stop after this step (to simulate an interruption in tests); default config.train.steps.
    Returns:
      The seed-stacked final TrainState.
    """
    out = Path(out)
    validate_config(config)
    prepare_output(out, overwrite, resume)
    if resume and (out / "config.json").exists():
        saved = load_config(out)
        if saved != config:
            raise RunError(f"{out} was made with another configuration; resume with the same options")
    elif out.exists() and overwrite and not resume:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    pieces = build(config)
    keys = seed_keys(config.seed_values)
    state = initial_states(config, pieces, keys)
    losses: dict[str, list] = {"step": [], "loss": []}
    if resume and latest_step(out) is not None:
        state = restore_checkpoint(out, state)
        done = int(np.max(distributed.to_host(state.step)))
        if (out / "losses.json").exists():
            logged = read_json(out / "losses.json")
            keep = [i for i, s in enumerate(logged["step"]) if s <= done]
            losses = {"step": [logged["step"][i] for i in keep], "loss": [logged["loss"][i] for i in keep]}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {**config_to_dict(config), "versions": _versions()})
    data = training_data(config, keys)
    stop_at = config.train.steps if stop_at is None else min(stop_at, config.train.steps)
    step = int(np.max(distributed.to_host(state.step)))
    bar = _progress(progress and jax.process_index() == 0, total=config.train.steps, initial=step,
                    desc=f"train {config.seeds} seed(s)")

    def next_stop(s):
        return min(stop_at, (s // config.checkpoint_every + 1) * config.checkpoint_every)

    def log(state, chunk_losses):
        now = int(np.max(distributed.to_host(state.step)))
        mean = distributed.to_host(chunk_losses).mean(axis=-1)
        losses["step"].append(now)
        losses["loss"].append([float(v) for v in np.atleast_1d(mean)])
        if bar is not None:
            bar.update(now - bar.n)
            bar.set_postfix(loss=f"{float(np.mean(mean)):.4f}")

    try:
        while step < stop_at:
            target = next_stop(step)
            state = train(pieces.denoise_fn, pieces.schedule, config.train, state, keys, data, seed_axis=True,
                          stop_at=target, callback=log)
            step = target
            save_checkpoint(out, state)
            if jax.process_index() == 0:
                write_json(out / "losses.json", losses)
    finally:
        if bar is not None:
            bar.close()
    if step >= config.train.steps and jax.process_index() == 0:
        write_json(out / "train.json", {"steps": step, "final_loss": losses["loss"][-1] if losses["loss"] else None})
    return state


def load_config(run_dir: os.PathLike) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    try:
        d = read_json(run_dir / "config.json")
    except FileNotFoundError:
        raise RunError(f"{run_dir} is not a mijax run (no config.json)") from None
    except json.JSONDecodeError:
        raise RunError(f"{run_dir / 'config.json'} is corrupt") from None
    d.pop("versions", None)
    return config_from_dict(d)


def load_run(run_dir: os.PathLike, step: Optional[int] = None) -> tuple[RunConfig, Pieces, TrainState]:
    """The config, pieces and seed-stacked state of a trained run (latest checkpoint by default)."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    validate_config(config)
    pieces = build(config)
    target = initial_states(config, pieces, seed_keys(config.seed_values))
    return config, pieces, restore_checkpoint(run_dir, target, step)


def sample_keys(config: RunConfig, seed: int) -> jax.Array:
    """Sampling keys [S]: the model of training seed s samples with fold_in(key(seed), s)."""
    base = jax.random.key(seed)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.asarray(config.seed_values, dtype=jnp.uint32))


def sample_run(run_dir: os.PathLike, n: int, seed: int = 0, sampler: Optional[SamplerConfig] = None,
               chunk_size: Optional[int] = None, progress: bool = False, out: Optional[os.PathLike] = None,
               precision: Optional[str] = None, kernel: str = "xla") -> dict[str, np.ndarray]:
    """Sample every seed of a trained run at once, chunk by chunk, over every device (and process).

    Args:
      n: samples per seed. seed: the sampling seed (see :func:`sample_keys`).
      chunk_size: samples per compiled chunk, over all devices (None: all n at once). Device memory is
        bounded by the chunk, not by n.
      out: stream the chunks into this ``.npz`` (x, hal, seeds) instead of returning them in memory: each
        chunk is written into ``.npy`` files beside it (``pwrite``, no memory maps), which are then packed
        (uncompressed, zip64, copied from disk piece by piece) and removed, so host memory holds one
        chunk, never all n. In a multi-process job only process 0 writes.
      precision: the matmul precision (default: the run's; see :class:`ModelConfig`).
      kernel: ``xla`` (the module as XLA ops) or ``pallas`` (one fused kernel per block of rows on a GPU,
        the XLA path elsewhere; see :class:`mijax.models.fused.FusedDenoiser`).
    Returns:
      {"x": float32 [S, n, *shape], "hal": float32 [S, n], "seeds": int [S]}; with ``out`` only
      {"shape": (S, n, *shape), "seeds": int [S]} (the arrays are in the file).
    """
    config, pieces, state = load_run(run_dir)
    if precision is not None:
        if precision not in PRECISIONS:
            raise RunError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        pieces = dataclasses.replace(pieces, model=pieces.model.clone(precision=precision))
    try:
        denoise_fn = make_denoiser(pieces.model, kernel)
    except ValueError as e:
        raise RunError(str(e)) from None
    if kernel == "pallas" and not denoise_fn.uses_kernel and jax.process_index() == 0:
        warnings.warn(f"--kernel pallas needs a GPU (the backend is {jax.default_backend()}): sampling with the "
                      "XLA path", stacklevel=2)
    sampler = SamplerConfig(objective=config.diffusion.objective) if sampler is None else sampler
    S = config.seeds
    seeds = np.asarray(config.seed_values)
    writer = jax.process_index() == 0
    scratch = x = hal = None
    if out is not None and writer:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".parts"))
        x = NpyStream(scratch / "x.npy", np.float32, (S, n) + pieces.shape)
        hal = NpyStream(scratch / "hal.npy", np.float32, (S, n))
    elif out is None:
        x = np.empty((S, n) + pieces.shape, np.float32)
        hal = np.empty((S, n), np.float32)
    bar = _progress(progress and writer, total=n, desc=f"sample {S} seed(s)", unit="sample")
    try:
        for start, chunk in sample_chunks(denoise_fn, state.params, pieces.schedule,
                                          sample_keys(config, seed), n, pieces.shape, sampler, chunk_size,
                                          seed_axis=True):
            chunk_x, chunk_hal = distributed.to_host((chunk.x, chunk.hal))  # every process takes part
            size = chunk_hal.shape[1]
            if writer and out is None:
                x[:, start:start + size] = chunk_x
                hal[:, start:start + size] = chunk_hal
            elif writer:
                for i in range(S):  # seed i's rows start..start + size are contiguous in [S, n, ...]
                    x.write((i, start) + (0,) * len(pieces.shape), chunk_x[i])
                    hal.write((i, start), chunk_hal[i])
            if bar is not None:
                bar.update(size)
        if out is None:
            return {"x": x, "hal": hal, "seeds": seeds}
        if writer:
            x.close()
            hal.close()
            pack_npz(out, {"x": scratch / "x.npy", "hal": scratch / "hal.npy"}, seeds=seeds)
        distributed.barrier("mijax.sample_run")
        return {"shape": (S, n) + pieces.shape, "seeds": seeds}
    finally:
        if bar is not None:
            bar.close()
        if scratch is not None:
            x.close()
            hal.close()
            shutil.rmtree(scratch, ignore_errors=True)


def _versions() -> dict:
    import flax
    import optax

    from mijax import __version__

    return {"mijax": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def _progress(enabled: bool, **kwargs):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    kwargs.setdefault("unit", "step")
    return tqdm(dynamic_ncols=True, **kwargs)
