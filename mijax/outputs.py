"""What mijax writes where: its outputs are recognised, checked before any work, used by one process at a
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
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import fnmatch
import json
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from typing import Iterator, Optional

from mijax.errors import MijaxError
from mijax.io import temporary_prefix, write_json
from mijax.version import __version__

MARKER = ".mijax"
KINDS = ("run", "study", "demo", "experiment", "experiments", "samples")
# The entries each kind of output writes at its top level, besides its marker and mijax's temporaries
# (and the outputs it holds, :data:`HOLDS`).
OWNED = {
    "run": ("config.json", "checkpoints", "losses.json", "train.json", "samples-*.npz"),
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
