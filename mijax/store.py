"""Everything mijax writes and reads on disk: files written atomically, strict JSON, ``.npz`` files, figures;
run directories (what mijax recognises as its outputs, locks, replacing an output only when the new one is
complete, a killed run's temporaries); and checkpoints of the training state.

**Files.** Files: atomic writes, strict JSON, ``.npz`` files written whole or streamed chunk by chunk.

Every file mijax writes goes through here. A file is written to a temporary name beside its target and
renamed over it, so a reader (or a later run after a kill) sees the old file or the new one, never half
of one. Temporary names are ``.NAME.mijax-PID-...`` (see :func:`temporary_prefix`).

JSON is strict (RFC 8259): it has no NaN or infinity, so :func:`write_json` writes every non-finite
float as ``null``; readers take ``null`` for "undefined" (an empty class, a one-seed interval, an
infinite threshold).

**Outputs.** What mijax writes where: its outputs are recognised, checked before any work, used by one process at a
time, replaced only when the new one is complete, and the temporaries of a killed run are cleaned (or, for
an output caught between the two halves of its replacement, restored) by the next run on the same output.

Every output directory mijax makes (a run, a recursive study, the demo, an experiment) holds a marker file
``.mijax`` (``{"kind": ..., "version": ...}``); a samples file is an ``.npz`` holding ``x``, ``hal`` and
``seeds``. Outputs of mijax 0.1 (no marker) are recognised by their files (a run: ``config.json`` and
``checkpoints/``; a study: ``config.json`` and ``gen_000/``; the demo and experiments: ``metrics.json`` and
``report.md``).

Ownership. Each kind of output declares the entries it writes at its top level (:data:`OWNED`, shell
patterns; besides its marker and mijax's temporaries). ``--overwrite`` replaces only mijax's own output of
the same kind, and only when it holds nothing else: an output holding entries that are not its kind's (the
user's notes, an ``analysis/`` folder, a samples file written into a run) is refused in one line naming
them, before any work, and nothing is deleted; the user moves them out or chooses another output. mijax
never deletes what it did not write. Nor does it write inside another output: a new output whose path lies
inside a marked output is refused (unless this process is writing that output: a demo's ``run/``, an
experiment's ``runs/``).

Locking. From its check until the command ends, an output is locked (:func:`lock`): ``fcntl.flock`` on
``.NAME.mijax-lock`` beside it, which the holder removes when done and the kernel releases if the holder
dies; a second mijax process on the same output is refused in one line naming the holder's pid. In a
multi-process (jax.distributed) job only process 0 takes it.

Failures. A command that fails after it created a fresh output directory removes it again, unless a
checkpoint was saved in it (a resumable run: the rerun continues it). Interrupted demos and experiments
resume when rerun; runs with ``--resume``; studies by rerunning.

Temporaries are named ``.NAME.mijax-PID-...`` beside their target ``NAME``: a file being written, the
``.parts`` folder of a streamed sample file, the new version of a directory being replaced. A temporary
whose process is gone is removed by :func:`clean_stale` (called by :func:`check`). A directory is replaced
by one atomic exchange of the two names (``renameat2(RENAME_EXCHANGE)``) where the system has it; elsewhere
by two renames, ``NAME`` to ``.NAME.mijax-PID-old`` and the new one to ``NAME``: if the process dies
between them, the next command on ``NAME`` renames the old output back (:func:`recover`). A symlinked
output is replaced where it lies; the link stays.

**Checkpoints.** Orbax checkpoints of a training state (a seed-stacked :class:`~mijax.training.TrainState`, or any pytree of arrays) in ``DIR/checkpoints/<step>``.

Only this module imports orbax. Each process of a multi-process job writes its shards (a shared file
system is needed); at most the two latest checkpoints are kept.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from mijax import signals
from mijax.errors import MijaxError
from mijax.version import __version__


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
    can tell those of a killed process, see :func:`mijax.store.clean_stale`)."""
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


# ----------------------------------------------------------------------------------------------------
# Outputs: run directories and what they hold.

MARKER = ".mijax"
KINDS = ("run", "study", "demo", "experiment", "experiments", "samples")
# The entries each kind of output writes at its top level, besides its marker and mijax's temporaries
# (and the outputs it holds, :data:`HOLDS`).
OWNED = {
    "run": ("config.json", "checkpoints", "losses.json", "losses.csv", "train.json", "loss.png", "samples-*.npz"),
    "study": ("config.json", "metrics.json", "gen_[0-9][0-9][0-9]*"),
    "demo": ("run", "samples.npz", "metrics.json", "report.md", "*.png"),
    "experiment": ("runs", "study", "metrics.json", "report.md", "*.png"),
    "experiments": ("runs",),
}
# The kind of the outputs an output of a kind holds at its top level, one per folder (``mijax experiment all``:
# one experiment per folder, named after it).
HOLDS = {"experiments": "experiment"}
LOCK_SUFFIX = ".mijax-lock"
_MIJAX_TEMPORARY = re.compile(r"^\..+\.mijax-")  # temporaries (.NAME.mijax-PID-...) and locks (.NAME.mijax-lock)

_held: dict[str, list] = {}  # real path of each output this process has locked -> [lock fd, depth]
_writing: dict[str, int] = {}  # real path of each output directory this process is writing -> depth


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _real(path: os.PathLike) -> Path:
    """``path`` with every symlink of its existing part resolved (where a replacement and a lock happen)."""
    return Path(os.path.realpath(path))


def _stale(path: Path) -> list[Path]:
    """The temporaries beside ``path`` whose process is gone."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.mijax-(\d+)-")
    found = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            found.append(entry)
    return found


def recover(path: os.PathLike) -> Optional[Path]:
    """Rename back the output ``path`` that a process killed between the two renames of its replacement left
    as ``.NAME.mijax-PID-old`` (only where ``path`` is missing); returns ``path`` if it did."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        return None
    for entry in _stale(path):
        if entry.name.endswith("-old") and entry.is_dir():
            os.replace(entry, path)
            return path
    return None


def clean_stale(path: os.PathLike) -> list[Path]:
    """Remove the temporaries beside ``path`` left by processes that are gone (killed runs); returns them.
    An old output left by a replacement cut short is renamed back first where ``path`` is missing
    (:func:`recover`); where ``path`` is there, the replacement was complete and the old output goes."""
    path = Path(path)
    recover(path)
    removed = []
    for entry in _stale(path):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _marked_kind(path: Path) -> Optional[str]:
    try:
        kind = json.loads((path / MARKER).read_text()).get("kind")
        return kind if kind in KINDS else None
    except (OSError, ValueError, AttributeError):
        return None


def kind_of(path: os.PathLike) -> Optional[str]:
    """The kind of mijax output at ``path`` (one of ``KINDS``), or None if it is not one."""
    path = Path(path)
    if path.is_dir():
        kind = _marked_kind(path)
        if kind is not None:
            return kind
        # Written by mijax 0.1, before the marker:
        if (path / "config.json").is_file() and (path / "checkpoints").is_dir():
            return "run"
        if (path / "config.json").is_file() and (path / "gen_000").is_dir():
            return "study"
        if (path / "metrics.json").is_file() and (path / "report.md").is_file():
            return "demo" if (path / "run" / "config.json").is_file() else "experiment"
        return None
    if path.is_file() and path.suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as z:
                names = set(z.namelist())
        except (OSError, zipfile.BadZipFile):
            return None
        return "samples" if {"x.npy", "hal.npy", "seeds.npy"} <= names else None
    return None


def owned(kind: str) -> tuple[str, ...]:
    """The patterns of the top-level entries an output of ``kind`` writes (:data:`OWNED`)."""
    return OWNED.get(kind, ())


def foreign(path: os.PathLike, kind: str) -> list[str]:
    """The entries of the output directory ``path`` that an output of ``kind`` does not write (folders with
    a trailing ``/``), sorted: neither its own (:func:`owned`) nor mijax outputs of the kind it holds
    (:data:`HOLDS`)."""
    patterns = owned(kind)
    held = HOLDS.get(kind)
    found = []
    for entry in Path(path).iterdir():
        name = entry.name
        if name == MARKER or _MIJAX_TEMPORARY.match(name) or any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        if held is not None and entry.is_dir() and not entry.is_symlink() and kind_of(entry) == held:
            continue
        found.append(name + ("/" if entry.is_dir() else ""))
    return sorted(found)


def enclosing(path: os.PathLike) -> Optional[tuple[Path, str]]:
    """The marked mijax output that ``path`` lies inside and this process is not writing, with its kind; or
    None."""
    for parent in _real(path).parents:
        if str(parent) in _writing or str(parent) in _held:
            return None
        kind = _marked_kind(parent)
        if kind is not None:
            return parent, kind
    return None


def mark(directory: os.PathLike, kind: str) -> None:
    """Mark ``directory`` (created if needed) as a mijax output of ``kind``."""
    write_json(Path(directory) / MARKER, {"kind": kind, "version": __version__})


def check_writable(path: os.PathLike) -> None:
    """Raise a one-line MijaxError unless a file ``path`` can be written (not a directory; its folder, made if
    missing, takes new files)."""
    path = Path(path)
    if path.is_dir():
        raise MijaxError(f"{path} is a directory; name a file")
    _check_writable(path.parent, path)


def _check_writable(directory: Path, what: Path) -> None:
    """Raise unless a file can be created in ``directory`` (made if missing)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f"{temporary_prefix(what)}probe"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise MijaxError(f"cannot write {what}: {e.strerror or type(e).__name__} ({directory})") from None


def check(path: os.PathLike, kind: str, overwrite: bool = False, resume: bool = False, directory: bool = True) -> None:
    """Validate an output before any work, writing nothing but a probe file; one-line MijaxError otherwise.

    ``path`` is a directory (``directory``) or a file of ``kind``. An existing output is refused unless
    ``resume`` (it must then be a directory of this kind) or ``overwrite`` (it must be mijax's own output of
    this kind, holding nothing that its kind does not write: mijax never replaces what it did not write). A
    directory inside another mijax output is refused (:func:`enclosing`). Its parent must be writable.
    Temporaries that killed runs left beside it are removed (an output caught mid-replacement restored).
    """
    path = Path(path)
    real = _real(path)
    clean_stale(path)
    if real != path.absolute():
        clean_stale(real)
    if directory:
        inside = enclosing(path)
        if inside is not None:
            raise MijaxError(f"{path} is inside the mijax {inside[1]} {inside[0]}; choose an output outside it")
    if path.exists() or path.is_symlink():
        found = kind_of(path)
        if directory and not path.is_dir():
            raise MijaxError(f"{path} exists and is not a directory")
        if not directory and path.is_dir():
            raise MijaxError(f"{path} is a directory; name a file")
        if resume and found == kind:
            pass
        elif not overwrite:
            hint = " or --resume to continue it" if kind == "run" and found == "run" else ""
            raise MijaxError(f"{path} already exists; pass --overwrite to replace it{hint}")
        elif found != kind:
            what = f"a mijax {found}" if found else "not a mijax output"
            raise MijaxError(f"{path} is {what}, not a mijax {kind}; refusing to replace it (choose another path)")
        elif directory:
            extra = foreign(path, kind)
            if extra:
                named = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
                raise MijaxError(f"{path} holds entries mijax did not write there ({named}); move them out or "
                                 "choose another output")
        _check_writable(real.parent, path)
        if directory and os.access(path, os.W_OK) is False:
            raise MijaxError(f"cannot write {path}: permission denied")
    else:
        _check_writable(real.parent, path)


# ---------------------------------------------------------------------------------------------
# One process per output.

def lock_path(path: os.PathLike) -> Path:
    """The lock file of the output ``path``: ``.NAME.mijax-lock`` beside it (beside the real directory of a
    symlinked one)."""
    real = _real(path)
    return real.parent / f".{real.name}{LOCK_SUFFIX}"


def _holder(fd: int) -> Optional[int]:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text.isdigit() else None
    except OSError:
        return None


def _acquire(path: Path, target: Path) -> Optional[int]:
    """The descriptor of ``target`` (the lock file of ``path``), exclusively flocked, holding our pid; None
    where the file system cannot lock (then the output is used unlocked)."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MijaxError(f"cannot write {path}: {e.strerror or type(e).__name__} ({target.parent})") from None
    while True:
        try:
            fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise MijaxError(f"cannot write {path}: {e.strerror or type(e).__name__} ({target.parent})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise MijaxError(f"{path} is in use by another mijax process"
                             f"{f' (pid {pid})' if pid else ''}; wait for it to end or choose another output") from None
        except OSError:
            os.close(fd)
            return None
        try:  # the previous holder may have removed the file after we opened it: lock the one that is there
            here, there = os.fstat(fd), os.stat(target)
            same = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            with contextlib.suppress(OSError):  # the pid only names the holder (a full disk may refuse it)
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            return fd
        os.close(fd)


@contextlib.contextmanager
def lock(path: Optional[os.PathLike], primary: bool = True) -> Iterator[None]:
    """Hold the output ``path`` for this process for the block: one-line MijaxError if another process holds
    it. Take it before :func:`check` so that no other process can create or replace the output between the
    check and the work. Re-entrant within a process; a no-op for ``path`` None or where ``primary`` is false
    (the processes of a multi-process job other than process 0)."""
    if path is None or not primary:
        yield
        return
    key = str(_real(path))
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    target = lock_path(path)
    fd = _acquire(Path(path), target)
    _held[key] = [fd, 1]
    try:
        yield
    finally:
        del _held[key]
        if fd is not None:
            with contextlib.suppress(OSError):
                target.unlink()  # still holding it: a process that opened it meanwhile sees it is gone
            os.close(fd)


# ---------------------------------------------------------------------------------------------
# Writing and replacing.

@contextlib.contextmanager
def _writing_into(directory: Path) -> Iterator[None]:
    key = str(_real(directory))
    _writing[key] = _writing.get(key, 0) + 1
    try:
        yield
    finally:
        _writing[key] -= 1
        if not _writing[key]:
            del _writing[key]


def _holds_progress(directory: Path) -> bool:
    """Whether a checkpoint was saved anywhere in ``directory`` (a resumable run)."""
    return any(folder.is_dir() and any(entry.name.isdigit() for entry in folder.iterdir())
               for folder in directory.rglob("checkpoints"))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def exchange(a: os.PathLike, b: os.PathLike) -> bool:
    """Swap the names ``a`` and ``b`` in one atomic step (``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot (nothing changed then)."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), os.fspath(b))


def _swap(new: Path, path: Path) -> None:
    """Put the complete directory ``new`` in place of ``path`` and remove the old one."""
    if exchange(new, path):  # ``new`` now names the old output
        shutil.rmtree(new, ignore_errors=True)
        return
    old = path.parent / f"{temporary_prefix(path)}old"
    os.replace(path, old)
    os.replace(new, path)  # killed before this line: the next command renames ``old`` back (recover)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def replacing(path: os.PathLike, kind: str, replace: bool) -> Iterator[Path]:
    """The directory to write an output into: ``path`` itself, or with ``replace`` (an existing output that
    :func:`check` allowed to be overwritten) a temporary sibling that replaces it once the block completes;
    on an error the temporary is removed and the old output stays as it was. A symlinked ``path`` is
    replaced where it points. A directory this call creates is removed again if the block fails before a
    checkpoint was saved in it."""
    path = Path(path)
    real = _real(path)
    if not (replace and real.exists()):
        fresh = not real.exists()
        real.mkdir(parents=True, exist_ok=True)
        try:
            mark(real, kind)
            with _writing_into(real):
                yield path
        except BaseException:
            if fresh and not _holds_progress(real):
                shutil.rmtree(real, ignore_errors=True)
            raise
        return
    new = real.parent / f"{temporary_prefix(real)}new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    try:
        mark(new, kind)
        with _writing_into(new):
            yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    _swap(new, real)


# ----------------------------------------------------------------------------------------------------
# Checkpoints.

def _manager(directory: Path, read_only: bool = False):
    import orbax.checkpoint as ocp  # imported here: only runs need orbax

    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else 2, create=not read_only,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager((Path(directory) / "checkpoints").absolute(), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every leaf's path (as names) and shape, for a pytree of arrays or of orbax array metadata."""
    import jax

    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        names = tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)
        out[names] = tuple(getattr(leaf, "shape", ()))
    return out


def _mismatch(saved, target) -> Optional[str]:
    """How the saved tree differs from the target's (None if it does not)."""
    saved, wanted = _shapes(saved), _shapes(target)
    for path in sorted(set(saved) | set(wanted)):
        if saved.get(path) != wanted.get(path):
            where = "/".join(path)
            if path not in saved:
                return f"the configuration builds {where}, which the checkpoint lacks"
            if path not in wanted:
                return f"the checkpoint holds {where}, which the configuration does not build"
            return f"{where} has shape {saved[path]} there but {wanted[path]} in the configuration"
    return None


@contextlib.contextmanager
def _quiet():
    """Hold back what orbax's and tensorstore's threads print while a save runs, which a failed save prints by the
    dozen: absl's and asyncio's error logs, the tracebacks of their callbacks (some printed from native threads
    straight to file descriptor 2, which is sent to a temporary file meanwhile). After a successful save what was
    held back is printed; after a failure it is dropped (:func:`save_checkpoint` raises the failure as one error), as are
    the callbacks into the closed event loop that arrive later."""
    import tempfile
    import time

    hooks = sys.excepthook, threading.excepthook, sys.unraisablehook
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    levels = [logger.level for logger in loggers]
    sys.excepthook = lambda *args: None
    threading.excepthook = lambda args: None
    sys.unraisablehook = lambda args: None
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    sys.stderr.flush()
    held = tempfile.TemporaryFile()
    saved_fd = os.dup(2)
    os.dup2(held.fileno(), 2)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        time.sleep(0.2)  # the save threads' last callbacks land while descriptor 2 is held
        raise
    finally:
        sys.stderr.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        if not failed:
            held.seek(0)
            text = held.read()
            if text:
                os.write(2, text)
            sys.excepthook, threading.excepthook, sys.unraisablehook = hooks
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
        else:  # the process is ending with the one-line error: late callbacks stay quiet
            sys.excepthook = _dropping_closed_loops(hooks[0])
            threading.excepthook, sys.unraisablehook = hooks[1:]
            loggers[0].setLevel(levels[0])
        held.close()


def _dropping_closed_loops(hook):
    def excepthook(kind, value, traceback):
        if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
            return None
        return hook(kind, value, traceback)
    excepthook.dropping_closed_loops = True
    return hook if getattr(hook, "dropping_closed_loops", False) else excepthook


def _check_space(directory: Path, state: Any, step: int) -> None:
    """Raise WriteFailed (no space left on device) before saving if the checkpoint's arrays alone exceed the free
    space of the run's file system: a save that fails half-way is noisy and leaves a partial checkpoint."""
    import jax

    needed = sum(int(getattr(a, "nbytes", 0)) for a in jax.tree.leaves(state))
    folder = Path(directory)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise WriteFailed(errno.ENOSPC, f"no space left on device writing {Path(directory) / 'checkpoints' / str(step)} "
                          f"(the checkpoint needs about {needed:,} bytes, {free:,} are free)")


def _save_error(e: Exception, directory: Path, step: int) -> Exception:
    """The one-line error of a failed save of checkpoint ``step``: the file system's refusal (a WriteFailed),
    another process writing the same checkpoint, or what orbax said."""
    where = directory / "checkpoints" / str(step)
    if "already exists" in str(e):
        return MijaxError(f"the checkpoint {where} is being written by another process (is the same command "
                          "running twice on this directory?)")
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if code:  # tensorstore reports the operating system's error number in the message
        return write_failure(OSError(int(code.group(1)), str(e)), where)
    failure = write_failure(e, where)
    if isinstance(failure, WriteFailed):
        return failure
    return MijaxError(f"saving the checkpoint {where} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def save_checkpoint(directory: Path, state: Any) -> int:
    """Save ``state`` as the checkpoint of its step; returns the step. A failed save (a full disk, another
    process saving the same step) raises one error (:func:`_save_error`) without the save threads' tracebacks,
    its half-written checkpoint removed."""
    import jax
    import orbax.checkpoint as ocp

    from mijax.execution import to_host

    step = int(np.max(to_host(state.step)))
    _check_space(directory, state, step)
    try:
        with signals.deferred(), _quiet(), _manager(directory) as manager:
            manager.save(step, args=ocp.args.StandardSave(state), force=True)
            manager.wait_until_finished()
    except Exception as e:  # orbax raises many types
        if jax.process_index() == 0:
            for tmp in (Path(directory) / "checkpoints").glob(f"{step}.orbax-checkpoint-tmp*"):
                shutil.rmtree(tmp, ignore_errors=True)
        raise _save_error(e, Path(directory), step) from None
    return step


def latest_checkpoint(directory: Path) -> Optional[int]:
    """The step of the latest checkpoint in ``directory`` (None if there is none)."""
    if not (Path(directory) / "checkpoints").is_dir():
        return None
    with signals.deferred(), _manager(directory, read_only=True) as manager:
        return manager.latest_step()


def restore_checkpoint(directory: Path, target: Any, step: Optional[int] = None) -> Any:
    """The checkpoint at ``step`` (default the latest) in the structure of ``target``; MijaxError (one line)
    if there is none, if it does not fit ``target`` or holds non-finite values.

    A run that is training removes its older checkpoints as it saves new ones: the latest one vanishing while it
    is read is read again at the new latest step (a few times), and a given ``step`` that vanishes is reported as
    the run changing, not as a corrupt checkpoint."""
    directory = Path(directory)
    latest = step is None
    for _ in range(3):
        chosen = latest_checkpoint(directory) if latest else step
        try:
            return _restore(directory, target, chosen)
        except _Vanished:
            continue
    raise MijaxError(f"the run {directory} changed while reading its checkpoint (it is training); try again")


class _Vanished(Exception):
    """The checkpoint being read was removed meanwhile (a training run keeps only its latest ones)."""


def _restore(directory: Path, target: Any, step: Optional[int]) -> Any:
    import jax
    import orbax.checkpoint as ocp

    if step is None:
        raise MijaxError(f"{directory} has no checkpoint")
    where = directory / "checkpoints" / str(step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        with signals.deferred(), _manager(directory, read_only=True) as manager:
            metadata = manager.item_metadata(step)
            # Compared before restoring: a restore into the wrong structure fails in orbax's threads, which
            # print tracebacks of their own.
            difference = _mismatch(getattr(metadata, "tree", metadata), abstract) if metadata is not None else None
            if difference is None:
                state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # orbax raises many types for damaged files
        if not where.exists() or (isinstance(e, FileNotFoundError) and latest_checkpoint(directory) != step):
            raise _Vanished() from None
        raise MijaxError(f"corrupt checkpoint {where}: {type(e).__name__}") from None
    if difference is not None:
        raise MijaxError(f"the checkpoint {where} does not match the run's config.json: {difference}")
    leaves = jax.tree.leaves(state)
    if not all(np.all(np.isfinite(np.asarray(a))) for a in leaves if np.issubdtype(np.asarray(a).dtype, np.floating)):
        raise MijaxError(f"corrupt checkpoint {where}: non-finite values")
    return state
