"""Data sets: what a model trains on, and how its samples are judged against the truth.

A data set is any object with these members (:class:`Dataset`); training, sampling, detection and the
recursive study use nothing else of it, so a new data set (an image set, say) is one module that
defines it plus one :func:`register` line:

=========================================  ================================================================
``name``                                    the registry name
``shape``                                   one sample's shape: ``(d,)`` for points, ``(H, W, C)`` for images
``training_set(key, n)``                    the training set, float32 ``[n, *shape]`` (jit-able)
``reference(key, n)``                       ``n`` draws of the true law ``[n, *shape]``, for distances
``hallucinated(x)``                         bool ``[N]``: the data set's own hallucination label
``labels(x)``                               ``{rule: bool [N]}``: every label rule it reports (the own first)
``measure(x, reference)``                   JSON-able measurements of one model's samples ``[N, *shape]``
``summary_keys``                            the scalar entries of ``measure`` that studies summarise over seeds
                                            (a name with the word ``rate`` or ``share``: a proportion in [0, 1])
=========================================  ================================================================

Optional: ``oracle(schedule) -> (fn, params)``, the data's exact denoiser eps*(x_t, t), which the
``oracle`` detector (:mod:`mijax.detectors`) compares a model with (the Gaussian mixtures have one); and
``training_size() -> int``, the items of a fixed training set (the digits, the shapes), which a run's
``n_train`` is checked against before its directory is made (a data set without it draws any number).

The registry maps a name to a factory ``factory(**options) -> Dataset`` and the options' defaults;
:func:`make` validates the options (unknown ones and bad values end in one line) and :func:`resolve`
fills in the defaults, which is what a run's ``config.json`` records.

Example (a toy image data set in a few lines)::

    @dataclasses.dataclass(frozen=True)
    class Blobs:
        name: str = "blobs"
        shape: tuple = (4, 4, 1)
        summary_keys: tuple = ("bright",)
        def training_set(self, key, n): ...
        def reference(self, key, n): return self.training_set(key, n)
        def hallucinated(self, x): return x.mean(axis=(1, 2, 3)) > 0.5
        def labels(self, x): return {"bright": self.hallucinated(x)}
        def measure(self, x, reference): return {"bright": float(self.hallucinated(x).mean())}

    mijax.data.register("blobs", Blobs, n_train=1_000)
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Protocol, runtime_checkable

import jax
import numpy as np

from mijax.registry import Entry, Registry


@runtime_checkable
class Dataset(Protocol):
    """What every data set provides (see the module docstring)."""

    name: str
    shape: tuple[int, ...]
    summary_keys: tuple[str, ...]

    def training_set(self, key: jax.Array, n: int) -> jax.Array: ...

    def reference(self, key: jax.Array, n: int) -> jax.Array: ...

    def hallucinated(self, x) -> np.ndarray: ...

    def labels(self, x) -> dict[str, np.ndarray]: ...

    def measure(self, x, reference) -> dict: ...


DATASETS = Registry("data set", builtin=("mijax.data.mixtures", "mijax.data.shapes", "mijax.data.digits"))


def register(name: str, factory: Callable[..., Any], n_train: int, summary: str = "", **options: Any) -> Entry:
    """Register data set ``name``: ``factory(**options)`` builds it; ``options`` are its options' defaults
    (and the only options it takes); ``n_train`` the default training-set size (``entry(name).n_train``).
    Registering a name again replaces the entry."""
    return DATASETS.register(name, factory, summary, extra={"n_train": int(n_train)}, **options)


names, entry, resolve = DATASETS.names, DATASETS.entry, DATASETS.resolve


def make(name: str, options: Optional[Mapping[str, Any]] = None):
    """Build data set ``name`` with ``options`` (over its defaults, :meth:`~mijax.registry.Registry.resolve`);
    bad values raise one line."""
    return DATASETS.make(name, options)


__all__ = ["DATASETS", "Dataset", "Entry", "entry", "make", "names", "register", "resolve"]
