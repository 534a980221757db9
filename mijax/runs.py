"""Run directories: training with checkpoints (the one training loop of mijax), loading, sampling.

A run directory holds::

    config.json        the resolved RunConfig (+ versions)
    checkpoints/<step> orbax checkpoints of the seed-stacked TrainState (mijax.store)
    losses.csv         the loss of every step: ``step`` and one column per model (``seed_<seed>``); rows are
                       appended as each dispatch returns, the file rewritten whole at each checkpoint
    losses.json        mean loss per dispatch, per model, up to the last checkpoint
    train.json         written once training is finished: steps, final loss (per model), wall time and
                       steps per second of the command that finished it
    loss.png           the loss curve (written with train.json)

Every model of a run is one seed of a vmapped program: seed s trains with ``jax.random.key(seed + s)``,
so a run with ``seeds = S`` holds exactly the models of S separate one-seed runs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from mijax import collect, execution, signals, store
from mijax.config import (Pieces, RunConfig, RunError, SamplerConfig, TrainConfig, build, config_from_dict,
                          config_to_dict, training_data, validate_training_size)
from mijax import data as datasets
from mijax.errors import MijaxError
from mijax.store import read_json, write_json
from mijax.keys import sample_keys as _sample_keys
from mijax.keys import SEED_LIMIT, seed_keys
from mijax.models import KERNELS, make_denoiser
from mijax.models.mlp import PRECISIONS
from mijax.sampling import validate as validate_sampler
from mijax.sampling import validate_regions
from mijax.training import TrainState, eval_params, init_states, train
from mijax.version import __version__

def _max_step(state: TrainState) -> int:
    return int(np.max(execution.to_host(state.step)))


class LossLog:
    """The loss of every step in ``DIR/losses.csv``: a header ``step,<column>...`` and one row per step with each
    model's loss. Rows are appended as each dispatch returns (:meth:`add`), so the file can be watched while a
    run trains, and the whole file is rewritten atomically at each checkpoint (:meth:`checkpoint`). Opened on a
    resumed run, it keeps the rows up to the checkpoint's step (a run made before this log existed starts it
    there). Only the writing process (process 0) touches the file."""

    NAME = "losses.csv"

    def __init__(self, directory: Path, columns: Sequence[str], done: int, writes: bool = True):
        self.path = Path(directory) / self.NAME
        self.header = ",".join(["step", *columns])
        self.writes = writes
        self.rows: list[str] = []
        if done and self.path.exists():
            for line in self.path.read_text().splitlines()[1:]:
                step, _, rest = line.partition(",")
                if not (step.isdigit() and rest) or int(step) > done:
                    break
                self.rows.append(line)
        self.checkpoint()

    def add(self, last_step: int, chunk: np.ndarray) -> None:
        """The losses ``chunk`` [models, k] of the k steps up to ``last_step``."""
        first = last_step - chunk.shape[1] + 1
        new = [",".join([str(first + i), *(f"{v:.7g}" for v in chunk[:, i])]) for i in range(chunk.shape[1])]
        self.rows += new
        if self.writes:
            with open(self.path, "a") as f:
                f.write("".join(row + "\n" for row in new))

    def checkpoint(self) -> None:
        if self.writes:
            store.write_text(self.path, "".join(f"{row}\n" for row in [self.header, *self.rows]))

    def losses(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps [K], losses [K, models]) of the rows."""
        table = np.array([[float(v) for v in row.split(",")] for row in self.rows], dtype=np.float64)
        return (table[:, 0], table[:, 1:]) if table.size else (np.zeros(0), np.zeros((0, 0)))


def fit(directory: os.PathLike, pieces: Pieces, train_config: TrainConfig, keys: jax.Array, data,
        checkpoint_every: int, show_progress: bool = False, desc: str = "train", stop_at: Optional[int] = None,
        on_checkpoint: Callable[[int], None] = lambda step: None,
        columns: Optional[Sequence[str]] = None) -> TrainState:
    """Train one model per key (vmapped) on ``data`` [S, N, *shape], checkpointing into ``directory``.

    Starts from the latest checkpoint in ``directory`` if there is one (training is a pure function of the
    step index, so a resumed run ends as an uninterrupted one), else from the initial parameters. Saves a
    checkpoint every ``checkpoint_every`` steps and at the end, with ``losses.json`` (mean loss per
    dispatch and model); logs every step's loss to ``losses.csv`` (:class:`LossLog`; ``columns`` names the
    models, default ``model_<i>``); calls ``on_checkpoint(step)`` after each checkpoint. Once the last step is
    reached it writes ``train.json`` (steps, final loss, wall time and steps per second) and ``loss.png``. A
    loss that is not finite stops training with a MijaxError naming the step and the model; nothing after the
    last finite checkpoint is saved.

    Returns:
      the seed-stacked TrainState at ``stop_at`` (default ``train_config.steps``).
    """
    directory = Path(directory)
    writes = jax.process_index() == 0
    state = init_states(pieces.model, train_config, pieces.shape, keys)
    losses: dict[str, list] = {"step": [], "loss": []}
    if store.latest_checkpoint(directory) is not None:
        state = store.restore_checkpoint(directory, state)
        done = _max_step(state)
        if (directory / "losses.json").exists():
            logged = read_json(directory / "losses.json")
            keep = [i for i, s in enumerate(logged["step"]) if s <= done]
            losses = {"step": [logged["step"][i] for i in keep], "loss": [logged["loss"][i] for i in keep]}
    stop_at = train_config.steps if stop_at is None else min(stop_at, train_config.steps)
    step = start = _max_step(state)
    log_file = LossLog(directory, columns or [f"model_{i}" for i in range(keys.shape[0])], step, writes)
    label = f"{desc} {keys.shape[0]} model(s)"
    bar = execution.progress_bar(show_progress, total=train_config.steps, initial=step, desc=label)
    bar.set_description(f"{label} (compiling)")  # the first dispatch compiles the training program
    began, first_done = time.perf_counter(), None  # first_done: (time, step) when the first dispatch returned

    def log(state, chunk_losses):
        nonlocal first_done
        signals.check()
        now = _max_step(state)
        chunk = np.atleast_2d(execution.to_host(chunk_losses))  # [S, steps of this dispatch]
        if not np.all(np.isfinite(chunk)):
            model, index = np.argwhere(~np.isfinite(chunk))[0]
            first = now - chunk.shape[1] + int(index) + 1
            last = store.latest_checkpoint(directory)
            kept = "no checkpoint was saved" if last is None else f"the last checkpoint, step {last}, is kept"
            raise MijaxError(f"training diverged: the loss of model {int(model)} is not finite ({chunk[model, index]}) "
                             f"at step {first}; {kept} (lower the learning rate or check the data)")
        if first_done is None:
            first_done = (time.perf_counter(), now)
            bar.set_description(label)
        log_file.add(now, chunk)
        mean = chunk.mean(axis=-1)
        losses["step"].append(now)
        losses["loss"].append([float(v) for v in np.atleast_1d(mean)])
        bar.update(now - bar.n)
        bar.set_postfix(loss=f"{float(np.mean(mean)):.4f}")

    try:
        while step < stop_at:
            target = min(stop_at, (step // checkpoint_every + 1) * checkpoint_every)
            state = train(pieces.denoise_fn, pieces.schedule, train_config, state, keys, data, seed_axis=True,
                          stop_at=target, callback=log)
            step = target
            store.save_checkpoint(directory, state)
            if writes:
                write_json(directory / "losses.json", losses)
                log_file.checkpoint()
            on_checkpoint(step)
    finally:
        bar.close()
    if step >= train_config.steps and writes and (step > start or not (directory / "train.json").exists()):
        final = losses["loss"][-1] if losses["loss"] else None
        _finish(directory, log_file, step, step - start, began, first_done, final)
    return state


def _finish(directory: Path, log_file: LossLog, last_step: int, steps: int, began: float,
            first_done: Optional[tuple[float, int]], final_loss: Optional[list]) -> None:
    """``train.json`` and ``loss.png`` of a run whose training reached ``last_step``, ``steps`` of them in this
    process since ``began`` (``time.perf_counter()``); ``first_done``: (time, step) when the first dispatch
    returned; ``final_loss``: the last dispatch's mean loss per model. The speed is measured after the first
    dispatch, which compiled, where there were two."""
    now = time.perf_counter()
    if first_done is not None and last_step > first_done[1]:
        speed = (last_step - first_done[1]) / max(now - first_done[0], 1e-9)
    else:
        speed = steps / max(now - began, 1e-9) if steps else None
    write_json(directory / "train.json", {
        "steps": last_step, "final_loss": final_loss,
        "steps_this_command": steps, "seconds": round(now - began, 3) if steps else None,
        "first_dispatch_seconds": None if first_done is None else round(first_done[0] - began, 3),
        "steps_per_second": speed})
    from mijax import plots

    plots.plot_losses(*log_file.losses(), log_file.header.split(",")[1:], path=directory / "loss.png")


def train_run(out: os.PathLike, config: RunConfig, resume: bool = False, overwrite: bool = False,
              progress: bool = True, stop_at: Optional[int] = None) -> TrainState:
    """Train ``config.seeds`` models in one vmapped program, checkpointing into ``out``.

    Args:
      out: the run directory (created; held against other processes while training, see
        :func:`mijax.store.lock`). A fresh one is removed again if training fails before its first checkpoint.
      config: the run's settings.
      resume: continue from the latest checkpoint of ``out`` (its config.json must match ``config``).
      overwrite: replace an existing run (only a mijax run): the new one is trained beside it and takes its
        place once finished; interrupted, the old run stays as it was.
      progress: show a progress bar with the loss.
      stop_at: stop after this step (to simulate an interruption in tests); default config.train.steps.
    Returns:
      The seed-stacked final TrainState.
    """
    out = Path(out)
    pieces = build(config)  # the data set's and the model's own checks, once
    validate_training_size(config, pieces.dataset)
    with store.lock(out, primary=jax.process_index() == 0):
        return _train_run(out, config, pieces, resume, overwrite, progress, stop_at)


def _train_run(out: Path, config: RunConfig, pieces: Pieces, resume: bool, overwrite: bool, progress: bool,
               stop_at: Optional[int]) -> TrainState:
    store.check(out, "run", overwrite=overwrite, resume=resume)
    # every process checks before any creates the run (or a slow process finds it "already exists")
    execution.barrier("mijax.train_run.checked")
    resuming = resume and out.exists()
    if resuming:
        if not (out / "config.json").exists():
            raise RunError(f"cannot resume {out}: it has no config.json to check this recipe against")
        made = load_config(out)
        if made != config:
            from mijax.config import config_differences
            from mijax.registry import option_text

            diff = config_differences(made, config)
            said = lambda i: ", ".join(f"{name}={option_text(d[i])}" for name, *d in diff)  # noqa: E731
            raise RunError(f"--resume: the run {out} was made with {said(0)}, this command says {said(1)} (another "
                           "configuration; resume with the same options)" if diff else
                           f"{out} was made with another configuration; resume with the same options")
    keys = seed_keys(config.seed_values)
    with store.replacing(out, "run", replace=overwrite and not resuming) as directory:
        write_json(directory / "config.json", {**config_to_dict(config), "versions": _versions()})
        data = training_data(config, pieces.dataset, keys)
        state = fit(directory, pieces, config.train, keys, data, config.checkpoint_every, progress, stop_at=stop_at,
                    columns=[f"seed_{s}" for s in config.seed_values])
    return state


def config_file(path: os.PathLike) -> RunConfig:
    """The RunConfig of a ``config.json`` file (a run's, or one written by hand in that form)."""
    path = Path(path)
    try:
        d = read_json(path)
    except FileNotFoundError:
        raise RunError(f"{path.parent} is not a mijax run (no config.json)" if path.name == "config.json" else
                       f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is corrupt (not JSON)") from None
    if isinstance(d, dict):
        d.pop("versions", None)
    return config_from_dict(d)


def load_config(run_dir: os.PathLike) -> RunConfig:
    """The RunConfig of run directory ``run_dir`` (its config.json)."""
    run_dir = Path(run_dir)
    store.recover(run_dir)  # a run left mid-replacement by a killed --overwrite
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is not a run directory (it is a file)")
    if not run_dir.is_dir():
        raise RunError(f"run directory {run_dir} does not exist")
    return config_file(run_dir / "config.json")


class Run:
    """A trained (or training) run: its directory, its configuration read once, and the data set, model and
    schedule that configuration builds, built once (:attr:`pieces`). ``Run.open(RUN)`` then gives the
    trained state (:meth:`state`) and samples (:meth:`sample`) without reading or building anything again.
    """

    def __init__(self, directory: os.PathLike, config: RunConfig, pieces: Optional[Pieces] = None):
        self.directory = Path(directory)
        self.config = config
        self.pieces = build(config) if pieces is None else pieces

    @classmethod
    def open(cls, directory: os.PathLike, precision: Optional[str] = None) -> "Run":
        """The run in ``directory`` (its config.json read and checked, its pieces built), the model's matmuls in
        ``precision`` (None: the run's)."""
        if precision is not None and precision not in PRECISIONS:
            raise RunError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
        config = load_config(directory)
        return cls(directory, config, build(config, precision))

    def state(self, step: Optional[int] = None) -> TrainState:
        """The seed-stacked TrainState of checkpoint ``step`` (None: the latest)."""
        target = init_states(self.pieces.model, self.config.train, self.pieces.shape,
                             seed_keys(self.config.seed_values))
        return store.restore_checkpoint(self.directory, target, step)

    def sampler(self, sampler: Optional[SamplerConfig] = None) -> SamplerConfig:
        """``sampler`` (default: DDPM with Hal over t = 9..0) for this run's models: :func:`data_sampler`."""
        return data_sampler(self.config, SamplerConfig() if sampler is None else sampler, self.pieces.dataset)

    def sample(self, n: int, seed: int = 0, sampler: Optional[SamplerConfig] = None,
               chunk_size: Optional[int] = None, progress: bool = False, out: Optional[os.PathLike] = None,
               kernel: str = "xla", overwrite: bool = False, abort=None) -> dict[str, np.ndarray]:
        """:func:`sample_run` of this run (the model in the precision it was opened with)."""
        config, dataset = self.config, self.pieces.dataset
        if kernel not in KERNELS:
            raise RunError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
        if not (isinstance(seed, int) and 0 <= seed < SEED_LIMIT):
            raise RunError(f"the sampling seed must be in 0..{SEED_LIMIT - 1} (32-bit), got {seed}")
        sampler = self.sampler(sampler)
        try:
            validate_sampler(sampler, config.diffusion.timesteps, has_oracle=hasattr(dataset, "oracle"))
            validate_regions(sampler, dataset.shape)
            if abort is not None:
                from mijax.abort import validate_abort

                validate_abort(abort, sampler, config.diffusion.timesteps, has_oracle=hasattr(dataset, "oracle"))
        except ValueError as e:
            raise RunError(str(e)) from None
        with store.lock(out, primary=jax.process_index() == 0):
            if out is not None:
                store.check(out, "samples", overwrite=overwrite, directory=False)
                collect.check_space(out, collect.bytes_needed(config.seeds, n, dataset.shape, sampler))
                execution.barrier("mijax.sample_run.checked")  # before any process writes beside it
            return self._sample(sampler, n, seed, chunk_size, progress, out, kernel, abort)

    def _sample(self, sampler: SamplerConfig, n: int, seed: int, chunk_size: Optional[int], progress: bool,
                out: Optional[os.PathLike], kernel: str, abort) -> dict:
        config, pieces, run_dir = self.config, self.pieces, self.directory
        state = self.state()
        step = _max_step(state)
        if step < config.train.steps or not (run_dir / "train.json").exists():
            warnings.warn(f"{run_dir} has not finished training (step {step} of {config.train.steps}); sampling "
                          "its latest checkpoint", stacklevel=3)
        try:
            denoise_fn = make_denoiser(pieces.model, kernel)
        except (ValueError, TypeError) as e:
            raise RunError(str(e)) from None
        if kernel == "pallas" and not denoise_fn.uses_kernel and jax.process_index() == 0:
            warnings.warn(f"--kernel pallas needs a GPU (the backend is {jax.default_backend()}): sampling with the "
                          "XLA path", stacklevel=3)
        provenance = dict(seeds=np.asarray(config.seed_values), run=np.asarray(str(run_dir.resolve())),
                          step=np.asarray(step), config=np.asarray(json.dumps(config_to_dict(config))))
        needs = tuple(sampler.detectors) + ((abort.detector,) if abort is not None else ())
        oracle = data_oracle(pieces.dataset, pieces.schedule) if any(s.detector.needs_oracle for s in needs) else None
        params = eval_params(state, config.train)
        if abort is not None:
            return _sample_with_abort(denoise_fn, params, pieces, sample_keys(config, seed), n, sampler, abort,
                                      oracle, out, progress, provenance)
        return collect.draw(denoise_fn, params, pieces.schedule, sample_keys(config, seed), n, pieces.shape,
                            sampler, chunk_size, out=out, show_progress=progress, desc="sample", oracle=oracle,
                            **provenance)


def load_run(run_dir: os.PathLike, step: Optional[int] = None,
             precision: Optional[str] = None) -> tuple[RunConfig, Pieces, TrainState]:
    """The config, pieces and seed-stacked state of a trained run (latest checkpoint by default); the
    model's matmuls in ``precision`` (default the run's)."""
    run = Run.open(run_dir, precision)
    return run.config, run.pieces, run.state(step)


def data_sampler(config: RunConfig, sampler: SamplerConfig, dataset=None) -> SamplerConfig:
    """``sampler`` for the models of ``config``: their objective, and the data set's Hal regions (its
    ``hal_regions``, e.g. the SHAPES strips) when a ``region_max`` reduction asks for regions and has none.
    ``dataset``: the one ``config`` built, if at hand."""
    sampler = dataclasses.replace(sampler, objective=config.diffusion.objective)
    if "region_max" in (sampler.hal_reduction,) + tuple(sampler.hal_table) and not sampler.hal_regions:
        if dataset is None:
            dataset = datasets.make(config.data.dataset, config.data.options)
        regions = getattr(dataset, "hal_regions", ())
        if not regions:
            raise RunError(f"the region_max Hal reduction needs regions; data set {config.data.dataset!r} has none")
        sampler = dataclasses.replace(sampler, hal_regions=tuple(tuple(int(b) for b in r) for r in regions))
    return sampler


def sample_keys(config: RunConfig, seed: int) -> jax.Array:
    """Sampling keys [S]: the model of training seed s samples with fold_in(key(seed), s)."""
    return _sample_keys(seed, config.seed_values)


def sample_run(run_dir: os.PathLike, n: int, seed: int = 0, sampler: Optional[SamplerConfig] = None,
               chunk_size: Optional[int] = None, progress: bool = False, out: Optional[os.PathLike] = None,
               precision: Optional[str] = None, kernel: str = "xla", overwrite: bool = False,
               abort=None) -> dict[str, np.ndarray]:
    """Sample every seed of a trained run at once, chunk by chunk, over every device (and process).

    Args:
      n: samples per seed. seed: the sampling seed (see :func:`sample_keys`).
      sampler: the sampler (default: DDPM with the run's objective and Hal over t = 9..0).
      chunk_size: samples per compiled chunk, over all devices (None: all n at once).
      out: stream the samples into this ``.npz`` instead of returning them (:func:`mijax.collect.draw`);
        an existing file is refused unless ``overwrite`` and it is a mijax samples file (replaced once the
        new one is complete).
      precision: the matmul precision (default: the run's).
      kernel: ``xla`` (the module as XLA ops) or ``pallas`` (one fused kernel per block of rows on a GPU,
        the XLA path elsewhere; see :class:`mijax.models.fused.FusedDenoiser`).
      abort: an :class:`mijax.config.AbortConfig`: redraw the samples its detector flags at t_e
        (:func:`mijax.abort.sample_with_abort`; one seed after the other on one device, in memory; the result
        gains "redraws" and "steps" [S, n]).
    Returns:
      {"x": float32 [S, n, *shape], "hal": float32 [S, n], "seeds": int [S]}, a ``"score_<key>"`` [S, n] per
      detector of ``sampler.detectors``, and the provenance: "run" (the
      run directory), "step" (its checkpoint) and "config" (its config.json); with ``out`` the arrays are in the
      file and the dict holds "shape" (x's) and the rest. An unfinished run is sampled with a warning.
    """
    return Run.open(run_dir, precision).sample(n, seed, sampler, chunk_size, progress, out, kernel, overwrite, abort)


def _sample_with_abort(denoise_fn, params, pieces: Pieces, keys, n: int, sampler: SamplerConfig, abort, oracle,
                       out, show_progress: bool, provenance: dict) -> dict:
    """:func:`sample_run` with abort and resample: each seed's model in turn (with a target rate, its threshold
    certified first from that model's calibration draw: :func:`mijax.abort.certify_abort`)."""
    from mijax.abort import certify_abort, sample_with_abort

    if jax.process_count() > 1:
        raise RunError("abort and resample runs in one process (this job has several)")
    certified = abort.target_rate is not None
    if certified and not hasattr(pieces.dataset, "hallucinated"):
        raise RunError("abort with a target rate needs a data set that labels hallucinations")
    parts = []
    bar = execution.progress_bar(show_progress, total=int(keys.shape[0]), desc="sample with abort", unit="model")
    try:
        for s in range(keys.shape[0]):
            model, extra = jax.tree.map(lambda a: a[s], params), {}
            if certified:
                c = certify_abort(denoise_fn, model, pieces.schedule, keys[s], pieces.shape, abort,
                                  pieces.dataset.hallucinated, sampler, oracle=oracle)
                if c["threshold"] == -np.inf:
                    warnings.warn(f"model {s}: no abort threshold is certified at target rate {abort.target_rate:g} "
                                  f"(delta {abort.delta:g}, {abort.calibration} calibration samples): every sample "
                                  "is redrawn and the last draws are kept, outside the guarantee", stacklevel=4)
                extra = {"abort_threshold": np.float64(c["threshold"]), "abort_accepted": np.float64(c["accepted"]),
                         "abort_bound": np.float64(c["bound"])}
                abort_s = dataclasses.replace(abort, threshold=float(c["threshold"]), target_rate=None)
            else:
                abort_s = abort
            got, info = sample_with_abort(denoise_fn, model, pieces.schedule, keys[s], n, pieces.shape, abort_s,
                                          sampler, oracle=oracle)
            parts.append({**{k: np.asarray(v) for k, v in collect.fields(got).items()},
                          "redraws": info["redraws"], "steps": info["steps"],
                          **({"still_flagged": info["still_flagged"]} if certified else {}), **extra})
            bar.update(1)
            signals.check()
    finally:
        bar.close()
    result = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    collect.check_finite(result, written=out is not None)
    if out is None:
        return {**result, **provenance}
    from mijax.store import save_npz

    save_npz(out, **result, **provenance)
    return {"shape": result["x"].shape, **{f"{k}_shape": v.shape for k, v in result.items() if k != "x"}, **provenance}


def data_oracle(dataset, schedule):
    """The data set's exact denoiser ``(fn, params)`` on ``schedule`` (its optional ``oracle(schedule)``: the
    Gaussian mixtures have one), or None."""
    make = getattr(dataset, "oracle", None)
    return None if make is None else make(schedule)


def _versions() -> dict:
    import flax
    import optax

    return {"mijax": __version__, "jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
