"""Orbax checkpoints of a seed-stacked :class:`~mijax.training.TrainState` in ``DIR/checkpoints/<step>``.

Only this module imports orbax. Each process of a multi-process job writes its shards (a shared file
system is needed); at most the two latest checkpoints are kept.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import jax
import numpy as np

from mijax import distributed, signals
from mijax.io import MijaxError
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


def save(directory: Path, state: TrainState) -> int:
    """Save ``state`` as the checkpoint of its step; returns the step."""
    import orbax.checkpoint as ocp

    step = int(np.max(distributed.to_host(state.step)))
    with signals.deferred(), _manager(directory) as manager:
        manager.save(step, args=ocp.args.StandardSave(state), force=True)
        manager.wait_until_finished()
    return step


def latest_step(directory: Path) -> Optional[int]:
    """The step of the latest checkpoint in ``directory`` (None if there is none)."""
    if not (Path(directory) / "checkpoints").is_dir():
        return None
    with signals.deferred(), _manager(directory, read_only=True) as manager:
        return manager.latest_step()


def restore(directory: Path, target: TrainState, step: Optional[int] = None) -> TrainState:
    """The checkpoint at ``step`` (default the latest) in the structure of ``target``; MijaxError (one line)
    if there is none, if it does not fit ``target`` or holds non-finite values."""
    import orbax.checkpoint as ocp

    directory = Path(directory)
    step = latest_step(directory) if step is None else step
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
        raise MijaxError(f"corrupt checkpoint {where}: {type(e).__name__}") from None
    if difference is not None:
        raise MijaxError(f"the checkpoint {where} does not match the run's config.json: {difference}")
    leaves = jax.tree.leaves(state)
    if not all(np.all(np.isfinite(np.asarray(a))) for a in leaves if np.issubdtype(np.asarray(a).dtype, np.floating)):
        raise MijaxError(f"corrupt checkpoint {where}: non-finite values")
    return state
