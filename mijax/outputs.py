"""What mijax writes where: its outputs are recognised, checked before any work, replaced only when the new
one is complete, and the temporaries of a killed run are cleaned by the next run on the same output.

Every output directory mijax makes (a run, a recursive study, the demo, an experiment) holds a marker file
``.mijax`` (``{"kind": ..., "version": ...}``); a samples file is an ``.npz`` holding ``x``, ``hal`` and
``seeds``. ``--overwrite`` replaces only such outputs, of the same kind: mijax never deletes what it did not
write. Outputs of mijax 0.1 (no marker) are recognised by their files (a run: ``config.json`` and
``checkpoints/``; a study: ``config.json`` and ``gen_000/``; the demo and experiments: ``metrics.json`` and
``report.md``).

Temporaries are named ``.NAME.mijax-PID-...`` beside their target ``NAME``: a file being written, the
``.parts`` folder of a streamed sample file, the new version of a directory being replaced. A temporary
whose process is gone is removed by :func:`clean_stale` (called by :func:`check`).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Iterator, Optional

from mijax.io import MijaxError, temporary_prefix, write_json
from mijax.version import __version__

MARKER = ".mijax"
KINDS = ("run", "study", "demo", "experiment", "experiments", "samples")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: os.PathLike) -> list[Path]:
    """Remove the temporaries beside ``path`` left by processes that are gone (killed runs); returns them."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.mijax-(\d+)-")
    removed = []
    for entry in parent.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def kind_of(path: os.PathLike) -> Optional[str]:
    """The kind of mijax output at ``path`` (one of ``KINDS``), or None if it is not one."""
    path = Path(path)
    if path.is_dir():
        try:
            kind = json.loads((path / MARKER).read_text()).get("kind")
            return kind if kind in KINDS else None
        except (OSError, ValueError, AttributeError):
            pass
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
    this kind: mijax never replaces what it did not write). Its parent must be writable. Temporaries that
    killed runs left beside it are removed.
    """
    path = Path(path)
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
        _check_writable(path.parent, path)
        if directory and os.access(path, os.W_OK) is False:
            raise MijaxError(f"cannot write {path}: permission denied")
    else:
        _check_writable(path.parent, path)
    clean_stale(path)


@contextlib.contextmanager
def replacing(path: os.PathLike, kind: str, replace: bool) -> Iterator[Path]:
    """The directory to write an output into: ``path`` itself, or with ``replace`` (an existing output that
    :func:`check` allowed to be overwritten) a temporary sibling that replaces it once the block completes;
    on an error the temporary is removed and the old output stays as it was."""
    path = Path(path)
    if not (replace and path.exists()):
        path.mkdir(parents=True, exist_ok=True)
        mark(path, kind)
        yield path
        return
    new = path.parent / f"{temporary_prefix(path)}new"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    mark(new, kind)
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    old = path.parent / f"{temporary_prefix(path)}old"
    os.replace(path, old)
    os.replace(new, path)
    shutil.rmtree(old, ignore_errors=True)
