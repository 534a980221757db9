"""The one path from seed-stacked models to ``[S, n, *shape]`` samples with Hal: chunk by chunk over every
device (and process), filled into memory or streamed into an ``.npz`` file.

``mijax sample``, the recursive study's pools and the experiments all draw through :func:`draw`, which
counts the samples that are not finite and refuses them (:class:`NotFinite`): a diverged model or schedule
ends in one line, never in a file or a measurement of NaN samples.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mijax import execution, signals
from mijax.diffusion import Denoiser, Schedule
from mijax.config import SamplerConfig
from mijax.errors import MijaxError
from mijax.store import NpyStream, pack_npz, temporary_prefix, write_failure
from mijax.sampling import sample_chunks


def fields(samples) -> dict:
    """The arrays of a :class:`~mijax.sampling.Samples` by their names in files (``x``, ``hal``, ``score_<key>``, ...)."""
    named = {"x": samples.x, "hal": samples.hal, "hal_windows": samples.hal_windows,
              "hal_table": samples.hal_table, "trajectory": samples.trajectory,
              "trajectory_xt": samples.trajectory_xt,
              **{f"score_{key}": value for key, value in (samples.scores or {}).items()}}
    return {name: value for name, value in named.items() if value is not None}


class NotFinite(MijaxError):
    """Samples (or their Hal) hold NaN or infinity: the model or its schedule diverged."""

    def __init__(self, bad: int, total: int, written: bool = False):
        self.bad, self.total = bad, total
        super().__init__(f"{bad:,} of {total:,} samples are not finite (NaN/inf): the model or schedule diverged; "
                         + ("nothing was written; " if written else "")
                         + "check the run's loss and schedule (a lower learning rate, beta < 1, --objective x0)")


def count_not_finite(arrays: dict) -> tuple[int, int]:
    """(samples with a non-finite value in ``x`` or ``hal``, samples) of arrays [S, n, ...]."""
    x, hal = np.asarray(arrays["x"]), np.asarray(arrays["hal"])
    finite = np.isfinite(x.reshape(x.shape[:2] + (-1,))).all(axis=-1)
    finite &= np.isfinite(hal.reshape(hal.shape[:2] + (-1,))).all(axis=-1)
    return int(finite.size - np.count_nonzero(finite)), int(finite.size)


def check_finite(arrays: dict, written: bool = False) -> None:
    """Raise :class:`NotFinite` if any sample of ``arrays`` (``x`` [S, n, ...], ``hal`` [S, n, ...]) is not finite."""
    bad, total = count_not_finite(arrays)
    if bad:
        raise NotFinite(bad, total, written)


def num_models_of(keys: jax.Array) -> int:
    return int(jax.tree.leaves(keys)[0].shape[0]) if keys.ndim else 1


def bytes_needed(num_models: int, n: int, shape: tuple[int, ...], sampler: SamplerConfig) -> int:
    """At least the bytes that :func:`draw` streams into a file for these samples: float32 x, Hal per window (and
    its table), a score per detector, twice (the ``.npy`` parts and the packed ``.npz`` exist at once until the
    parts are removed), plus a MiB for headers and the small arrays."""
    per_sample = int(np.prod(shape)) + len(sampler.windows()) + len(sampler.detectors) + 2
    if sampler.hal_table:
        per_sample += len(sampler.windows()) * len(sampler.hal_table)
    return 2 * 4 * int(num_models) * int(n) * per_sample + 2**20


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if nbytes < 1000 or unit == "PB":
            return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1000


def check_space(out: os.PathLike, needed: int) -> None:
    """Raise MijaxError (one line, before any work) if ``needed`` bytes exceed the free space of the file system
    that is to hold ``out``."""
    folder = Path(out).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise MijaxError(f"{out}: the samples need about {_size(needed)} (float32, the parts and the packed .npz at "
                         f"once) but its file system has {_size(free)} free; sample fewer (--n) or elsewhere")


def draw(denoise_fn: Denoiser, params, schedule: Schedule, keys: jax.Array, n: int, shape: tuple[int, ...],
         sampler: SamplerConfig = SamplerConfig(), chunk_size: Optional[int] = None,
         out: Optional[os.PathLike] = None, show_progress: bool = False, desc: str = "sample",
         oracle=None, require_finite: bool = True, **extra: np.ndarray) -> dict[str, np.ndarray]:
    """Draw ``n`` samples with Hal from each of S models at once.

    Args:
      denoise_fn, params, schedule: the models (params with a leading seed axis [S]).
      keys: sampling keys [S], one per model (see :func:`mijax.keys.sample_keys`).
      n: samples per model. shape: one sample's shape.
      sampler: the sampler's settings (Hal window, extra windows, trajectory recording).
      chunk_size: samples per compiled chunk over all devices (None: all n at once); device memory is
        bounded by the chunk, and no number depends on it.
      out: stream into this ``.npz`` instead of returning the arrays: each chunk is written into ``.npy``
        files beside it (``pwrite``, no memory maps), packed (uncompressed, zip64, copied piece by piece)
        and removed, so host memory holds one chunk. In a multi-process job only process 0 writes.
      oracle: the data's exact denoiser ``(fn, params)`` for the ``oracle`` detector.
      require_finite: refuse samples that are not finite (False: keep them, NaN or infinite, for a caller that
        counts diverged trajectories).
      extra: small arrays stored beside the samples (in the file, or in the returned dict).
    Raises:
      NotFinite: some samples (x or Hal) are NaN or infinite; with ``out`` nothing is written.
    Returns:
      ``{"x": float32 [S, n, *shape], "hal": float32 [S, n]}`` plus ``"hal_windows"`` [S, n, W] when the
      sampler has extra windows, ``"hal_table"`` [S, n, W + 1, R] when it has a ``hal_table``,
      ``"trajectory"`` (and ``"trajectory_xt"``) [S, n, R, *shape] when it records one, ``"score_<key>"``
      [S, n] per detector (:attr:`mijax.detectors.DetectorSpec.key`), and ``extra``;
      with ``out`` the arrays are in the file and the dict holds their shapes (``"shape"``: x's) and ``extra``.
    """
    if out is not None:
        check_space(out, bytes_needed(num_models_of(keys), n, shape, sampler))
    try:
        return _draw(denoise_fn, params, schedule, keys, n, shape, sampler, chunk_size, out, show_progress, desc,
                     oracle, extra, require_finite)
    except OSError as e:  # the streamed parts or the packing: one line naming the file, the parts removed
        if out is None:
            raise
        raise write_failure(e, out) from None


def _draw(denoise_fn, params, schedule, keys, n, shape, sampler, chunk_size, out, show_progress, desc, oracle,
          extra, require_finite=True) -> dict:
    writer = jax.process_index() == 0
    num_models = int(jax.tree.leaves(keys)[0].shape[0]) if keys.ndim else 1
    arrays: dict = {}  # name -> [S, n, ...] array or NpyStream (process 0)
    shapes: dict = {}  # name -> [S, n, ...] shape (every process)
    scratch = Path(tempfile.mkdtemp(dir=Path(out).parent, prefix=temporary_prefix(out), suffix=".parts")) \
        if out is not None and writer else None
    bar = execution.progress_bar(show_progress, total=n, desc=f"{desc} {num_models} model(s)", unit="sample")
    bad = total = 0
    try:
        for start, chunk in sample_chunks(denoise_fn, params, schedule, keys, n, shape, sampler, chunk_size,
                                          seed_axis=True, oracle=oracle):
            host = execution.to_host(fields(chunk))  # every process takes part in the gather
            size = host["hal"].shape[1]
            bad, total = (a + b for a, b in zip((bad, total), count_not_finite(host)))
            for name, value in host.items():
                shapes.setdefault(name, (value.shape[0], n) + value.shape[2:])
            if writer:
                for name, value in host.items():
                    if name not in arrays:
                        full = shapes[name]
                        arrays[name] = (np.empty(full, np.float32) if scratch is None
                                        else NpyStream(scratch / f"{name}.npy", np.float32, full))
                    if scratch is None:
                        arrays[name][:, start:start + size] = value
                    else:
                        for i in range(value.shape[0]):  # model i's rows start..start + size are contiguous
                            arrays[name].write((i, start) + (0,) * (value.ndim - 2), value[i])
            bar.update(size)
            signals.check()
        if bad and require_finite:
            raise NotFinite(bad, total, written=out is not None)
        if out is None:
            return {**arrays, **extra}
        if writer:
            for stream in arrays.values():
                stream.close()
            pack_npz(out, {name: stream.path for name, stream in arrays.items()}, **extra)
        execution.barrier("mijax.collect.draw")
        return {"shape": shapes.get("x"), **{f"{name}_shape": s for name, s in shapes.items() if name != "x"},
                **extra}
    finally:
        bar.close()
        if scratch is not None:
            for stream in arrays.values():
                stream.close()
            shutil.rmtree(scratch, ignore_errors=True)
