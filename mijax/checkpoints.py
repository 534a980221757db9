"""Orbax checkpoints of a seed-stacked :class:`~mijax.training.TrainState` in ``DIR/checkpoints/<step>``.

Only this module imports orbax. Each process of a multi-process job writes its shards (a shared file
system is needed); at most the two latest checkpoints are kept.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mijax import distributed, signals
from mijax.errors import MijaxError
from mijax.io import WriteFailed, write_failure
from mijax.training import TrainState


def _manager(directory: Path, read_only: bool = False):
    import orbax.checkpoint as ocp  # imported here: only runs need orbax

    options = ocp.CheckpointManagerOptions(max_to_keep=None if read_only else 2, create=not read_only,
                                           enable_async_checkpointing=False)
    return ocp.CheckpointManager((Path(directory) / "checkpoints").absolute(), options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every leaf's path (as names) and shape, for a pytree of arrays or of orbax array metadata."""
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
    held back is printed; after a failure it is dropped (:func:`save` raises the failure as one error), as are
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


def _check_space(directory: Path, state: TrainState, step: int) -> None:
    """Raise WriteFailed (no space left on device) before saving if the checkpoint's arrays alone exceed the free
    space of the run's file system: a save that fails half-way is noisy and leaves a partial checkpoint."""
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


def save(directory: Path, state: TrainState) -> int:
    """Save ``state`` as the checkpoint of its step; returns the step. A failed save (a full disk, another
    process saving the same step) raises one error (:func:`_save_error`) without the save threads' tracebacks,
    its half-written checkpoint removed."""
    import orbax.checkpoint as ocp

    step = int(np.max(distributed.to_host(state.step)))
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


def latest_step(directory: Path) -> Optional[int]:
    """The step of the latest checkpoint in ``directory`` (None if there is none)."""
    if not (Path(directory) / "checkpoints").is_dir():
        return None
    with signals.deferred(), _manager(directory, read_only=True) as manager:
        return manager.latest_step()


def restore(directory: Path, target: TrainState, step: Optional[int] = None) -> TrainState:
    """The checkpoint at ``step`` (default the latest) in the structure of ``target``; MijaxError (one line)
    if there is none, if it does not fit ``target`` or holds non-finite values.

    A run that is training removes its older checkpoints as it saves new ones: the latest one vanishing while it
    is read is read again at the new latest step (a few times), and a given ``step`` that vanishes is reported as
    the run changing, not as a corrupt checkpoint."""
    directory = Path(directory)
    latest = step is None
    for _ in range(3):
        chosen = latest_step(directory) if latest else step
        try:
            return _restore(directory, target, chosen)
        except _Vanished:
            continue
    raise MijaxError(f"the run {directory} changed while reading its checkpoint (it is training); try again")


class _Vanished(Exception):
    """The checkpoint being read was removed meanwhile (a training run keeps only its latest ones)."""


def _restore(directory: Path, target: TrainState, step: Optional[int]) -> TrainState:
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
        if not where.exists() or (isinstance(e, FileNotFoundError) and latest_step(directory) != step):
            raise _Vanished() from None
        raise MijaxError(f"corrupt checkpoint {where}: {type(e).__name__}") from None
    if difference is not None:
        raise MijaxError(f"the checkpoint {where} does not match the run's config.json: {difference}")
    leaves = jax.tree.leaves(state)
    if not all(np.all(np.isfinite(np.asarray(a))) for a in leaves if np.issubdtype(np.asarray(a).dtype, np.floating)):
        raise MijaxError(f"corrupt checkpoint {where}: non-finite values")
    return state
