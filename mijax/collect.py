"""The one path from seed-stacked models to ``[S, n, *shape]`` samples with Hal: chunk by chunk over every
device (and process), filled into memory or streamed into an ``.npz`` file.

``mijax sample``, the recursive study's pools and the experiments all draw through :func:`draw`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mijax import distributed, progress, signals
from mijax.diffusion import Denoiser
from mijax.io import NpyStream, pack_npz, temporary_prefix
from mijax.sampling import SamplerConfig, sample_chunks
from mijax.schedules import Schedule


def fields(samples) -> dict:
    """The arrays of a :class:`~mijax.sampling.Samples` by their names in files (``x``, ``hal``, ``score_<key>``, ...)."""
    named = {"x": samples.x, "hal": samples.hal, "hal_windows": samples.hal_windows,
              "hal_table": samples.hal_table, "trajectory": samples.trajectory,
              "trajectory_xt": samples.trajectory_xt,
              **{f"score_{key}": value for key, value in (samples.scores or {}).items()}}
    return {name: value for name, value in named.items() if value is not None}


def draw(denoise_fn: Denoiser, params, schedule: Schedule, keys: jax.Array, n: int, shape: tuple[int, ...],
         sampler: SamplerConfig = SamplerConfig(), chunk_size: Optional[int] = None,
         out: Optional[os.PathLike] = None, show_progress: bool = False, desc: str = "sample",
         oracle=None, **extra: np.ndarray) -> dict[str, np.ndarray]:
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
      extra: small arrays stored beside the samples (in the file, or in the returned dict).
    Returns:
      ``{"x": float32 [S, n, *shape], "hal": float32 [S, n]}`` plus ``"hal_windows"`` [S, n, W] when the
      sampler has extra windows, ``"hal_table"`` [S, n, W + 1, R] when it has a ``hal_table``,
      ``"trajectory"`` (and ``"trajectory_xt"``) [S, n, R, *shape] when it records one, ``"score_<key>"``
      [S, n] per detector (:attr:`mijax.detectors.DetectorSpec.key`), and ``extra``;
      with ``out`` the arrays are in the file and the dict holds their shapes (``"shape"``: x's) and ``extra``.
    """
    writer = jax.process_index() == 0
    num_models = int(jax.tree.leaves(keys)[0].shape[0]) if keys.ndim else 1
    arrays: dict = {}  # name -> [S, n, ...] array or NpyStream (process 0)
    shapes: dict = {}  # name -> [S, n, ...] shape (every process)
    scratch = Path(tempfile.mkdtemp(dir=Path(out).parent, prefix=temporary_prefix(out), suffix=".parts")) \
        if out is not None and writer else None
    bar = progress.bar(show_progress, total=n, desc=f"{desc} {num_models} model(s)", unit="sample")
    try:
        for start, chunk in sample_chunks(denoise_fn, params, schedule, keys, n, shape, sampler, chunk_size,
                                          seed_axis=True, oracle=oracle):
            host = distributed.to_host(fields(chunk))  # every process takes part in the gather
            size = host["hal"].shape[1]
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
        if out is None:
            return {**arrays, **extra}
        if writer:
            for stream in arrays.values():
                stream.close()
            pack_npz(out, {name: stream.path for name, stream in arrays.items()}, **extra)
        distributed.barrier("mijax.collect.draw")
        return {"shape": shapes.get("x"), **{f"{name}_shape": s for name, s in shapes.items() if name != "x"},
                **extra}
    finally:
        bar.close()
        if scratch is not None:
            for stream in arrays.values():
                stream.close()
            shutil.rmtree(scratch, ignore_errors=True)
