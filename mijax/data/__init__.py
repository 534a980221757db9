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

import dataclasses
import importlib
from typing import Any, Callable, Mapping, Optional, Protocol, runtime_checkable

import jax
import numpy as np

from mijax.errors import MijaxError
from mijax.io import frozen, typed_option


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


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered data set: how to build it, its options' defaults, its default training-set size."""

    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Any]
    n_train: int
    summary: str = ""


_REGISTRY: dict[str, Entry] = {}
# Modules that register the built-in data sets, imported when the registry is first read.
_BUILTIN = ("mijax.data.mixtures", "mijax.data.shapes", "mijax.data.digits")


def register(name: str, factory: Callable[..., Any], n_train: int, summary: str = "",
             **options: Any) -> Entry:
    """Register data set ``name``: ``factory(**options)`` builds it; ``options`` are its options' defaults
    (and the only options it takes); ``n_train`` the default training-set size. Registering a name again
    replaces the entry."""
    entry = Entry(name, factory, dict(options), int(n_train), summary)
    _REGISTRY[name] = entry
    return entry


def _load_builtins() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def names() -> list[str]:
    """The registered data sets, built-in first."""
    _load_builtins()
    return list(_REGISTRY)


def entry(name: str) -> Entry:
    _load_builtins()
    if name not in _REGISTRY:
        raise MijaxError(f"unknown data set {name!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def resolve(name: str, options: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Every option of data set ``name``: the given ones over the defaults, each of its default's type
    (:func:`mijax.io.typed_option`); unknown options and values of another type raise."""
    e = entry(name)
    options = dict(options or {})
    unknown = sorted(set(options) - set(e.options))
    if unknown:
        known = ", ".join(e.options) or "none"
        raise MijaxError(f"data set {name!r} has no option {unknown[0]!r} (its options: {known})")
    return {key: typed_option(f"data set {name!r}", key, options[key], default) if key in options else frozen(default)
            for key, default in e.options.items()}


def make(name: str, options: Optional[Mapping[str, Any]] = None):
    """Build data set ``name`` with ``options`` (over its defaults); bad values raise one line."""
    resolved = resolve(name, options)
    try:
        return entry(name).factory(**resolved)
    except (ValueError, TypeError) as e:
        raise MijaxError(f"data set {name!r}: {str(e).splitlines()[0]}") from None


__all__ = ["Dataset", "Entry", "entry", "make", "names", "register", "resolve"]
