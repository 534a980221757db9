"""Files: atomic writes, strict JSON, ``.npz`` files written whole or streamed chunk by chunk.

Every file mijax writes goes through here. A file is written to a temporary name beside its target and
renamed over it, so a reader (or a later run after a kill) sees the old file or the new one, never half
of one. Temporary names are ``.NAME.mijax-PID-...`` (see :func:`temporary_prefix`).

JSON is strict (RFC 8259): it has no NaN or infinity, so :func:`write_json` writes every non-finite
float as ``null``; readers take ``null`` for "undefined" (an empty class, a one-seed interval, an
infinite threshold).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np


class MijaxError(ValueError):
    """Input or a file that mijax cannot use; the message is one line for the user."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def temporary_prefix(path: os.PathLike) -> str:
    """The name prefix of this process's temporaries beside ``path``: ``.NAME.mijax-PID-`` (so that a later run
    can tell those of a killed process, see :func:`mijax.outputs.clean_stale`)."""
    return f".{Path(path).name}.mijax-{os.getpid()}-"


@contextlib.contextmanager
def atomic_target(path: os.PathLike, suffix: str = ".tmp"):
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` (a rename), on error
    it is removed. The file gets the umask's mode (``mkstemp`` alone would make it 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_bytes(path: os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_target(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_text(path: os.PathLike, text: str) -> None:
    write_bytes(path, text.encode())


def finite_or_none(value):
    """A float, or None where it is NaN or infinite (JSON has no such numbers)."""
    value = float(value)
    return value if math.isfinite(value) else None


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, numpy scalars and arrays as Python values,
    tuples as lists: what :func:`write_json` writes."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return finite_or_none(obj)
    return obj


def frozen(value: Any) -> Any:
    """Lists (as JSON gives them back) as tuples, recursively: options compare equal after a round trip."""
    if isinstance(value, (list, tuple)):
        return tuple(frozen(v) for v in value)
    return value


def dumps_json(obj: Any) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`), indented, with a final newline."""
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: os.PathLike, obj: Any) -> None:
    """Write ``obj`` as strict JSON, atomically; NaN and infinity become ``null``."""
    write_text(path, dumps_json(obj))


def read_json(path: os.PathLike) -> Any:
    with open(path) as f:
        return json.load(f)


def save_npz(path: os.PathLike, **arrays: np.ndarray) -> None:
    """An atomic ``np.savez``."""
    with atomic_target(path, ".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


def load_npz(path: os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read into memory."""
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


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
    with atomic_target(path, ".tmp.npz") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED,
                                                                  allowZip64=True) as z:
        for name, file in files.items():
            z.write(file, f"{name}.npy")
        for name, array in arrays.items():
            with z.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)


def save_figure(figure, path: os.PathLike, dpi: int = 120) -> str:
    """Write a matplotlib ``figure`` to ``path`` as a PNG, atomically; returns the path as a string."""
    with atomic_target(path, ".tmp.png") as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)
    return os.fspath(path)
