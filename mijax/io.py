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
import errno
import json
import math
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mijax.errors import MijaxError


# What the operating system says when it refuses a write, in the words of mijax's one-line error.
WRITE_ERRORS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EFBIG: "file too large for its file system", errno.EROFS: "read-only file system"}


class WriteFailed(OSError):
    """The operating system refused a write (a full disk, a quota, a file too large, a read-only file system, an
    I/O error): ``str()`` is the one line ``no space left on device writing PATH``; the command line reports it
    with exit status 1 (an environment failure, not bad input)."""

    def __init__(self, error_number: Optional[int], message: str):
        super().__init__(error_number, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def write_failure(error: BaseException, path: os.PathLike) -> BaseException:
    """A :class:`WriteFailed` naming ``path`` for an OSError met while writing it (found in ``error`` or the
    errors it was raised from); ``error`` itself if it is one already or holds no OSError."""
    seen = error
    while seen is not None and not isinstance(seen, OSError):
        seen = seen.__cause__ or seen.__context__
    if seen is None or isinstance(seen, WriteFailed):
        return seen if seen is not None else error
    what = WRITE_ERRORS.get(seen.errno) or (seen.strerror or type(seen).__name__).lower()
    return WriteFailed(seen.errno, f"{what} writing {path}")


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
    it is removed. The file gets the umask's mode (``mkstemp`` alone would make it 0600). An OSError on the way
    (a full disk, a file too large) is raised as :class:`WriteFailed` naming ``path``; the old file is untouched."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temporary_prefix(path), suffix=suffix)
        os.close(fd)
    except OSError as e:
        raise write_failure(e, path) from None
    try:
        yield tmp
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise write_failure(e, path) from None
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


TRUE_WORDS = ("true", "True", "yes", "1")
FALSE_WORDS = ("false", "False", "no", "0")


def typed_option(owner: str, key: str, value: Any, default: Any) -> Any:
    """``value`` of option ``key`` of ``owner`` (e.g. ``model 'mlp'``) checked against, and converted to, the type of
    its ``default``: a bool takes a bool or one of ``TRUE_WORDS`` / ``FALSE_WORDS`` (or the integers 1 and 0), an int
    an integer, a float a finite number, a tuple a list or comma-separated numbers, a text text; a default of None
    takes anything. Anything else raises MijaxError naming the option and what it takes."""
    where = f"{owner} option {key}"
    if default is None:
        return frozen(value)
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, str)) and not isinstance(value, bool):
            text = str(value)
            if text in TRUE_WORDS:
                return True
            if text in FALSE_WORDS:
                return False
        raise MijaxError(f"{where} is true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), "
                         f"got {value!r}")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise MijaxError(f"{where} is an integer like {default}, got {value!r}")
    if isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise MijaxError(f"{where} is a finite number like {default:g}, got {value!r}")
    if isinstance(default, tuple):
        if isinstance(value, str):
            try:
                value = tuple(json.loads(part) for part in value.replace(" ", "").split(",") if part)
            except ValueError:
                raise MijaxError(f"{where} is a list like {option_text(default)}, got {value!r}") from None
        if not isinstance(value, (list, tuple)):
            raise MijaxError(f"{where} is a list like {option_text(default) or '[]'}, got {value!r}")
        if default and all(isinstance(d, float) for d in default):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
                raise MijaxError(f"{where} is a list of finite numbers like {option_text(default)}, got {value!r}")
            return tuple(float(v) for v in value)
        return frozen(value)
    if isinstance(default, str):
        if isinstance(value, (str, os.PathLike)):
            return value
        raise MijaxError(f"{where} is text like {default!r}, got {value!r}")
    return frozen(value)


def option_text(value: Any) -> str:
    """An option's value as ``--model-option`` / ``--data-option`` take it: ``true``, ``0.05``, ``[1,2,3]``, ``xla``."""
    if isinstance(value, str):
        return value
    return json.dumps(json_safe(value), separators=(",", ":"))


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


def load_cache(path: os.PathLike, keys: tuple[str, ...] = ()) -> Optional[dict[str, np.ndarray]]:
    """The arrays of a cache ``.npz`` that mijax wrote and can recompute, or None if there is none or it cannot
    be used: unreadable (a damaged zip, a truncated array, an I/O error) or lacking one of ``keys``. A file that
    exists but is unusable is named in a one-line warning; the caller recomputes it and writes it again."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        arrays = load_npz(path)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        warnings.warn(f"the cache {path} is unreadable ({type(e).__name__}); recomputing it", stacklevel=2)
        return None
    missing = [key for key in keys if key not in arrays]
    if missing:
        warnings.warn(f"the cache {path} lacks {missing[0]!r}; recomputing it", stacklevel=2)
        return None
    return arrays


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
