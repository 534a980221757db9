"""The paper's experiments, one module each, run by ``mijax experiment NAME``.

Each experiment module defines ``SUMMARY`` (one line), ``PROFILES`` (one typed profile per name of
:data:`PROFILES`: a frozen :class:`mijax.experiments.common.Profile` subclass of the experiment, its fields
the sizes) and ``run(out: Path, profile: str = "quick", seeds: int | None = None, progress: bool = True,
overrides: dict | None = None) -> dict`` (``overrides`` changes some of the profile's fields, each checked and
converted to its field's type, as ``--set`` does), which writes ``metrics.json``, ``report.md`` and PNG figures
into ``out`` and returns the metrics. Modules are imported only when run or listed.

Each also gives ``QUICK_MINUTES``, the quick profile's wall time measured on 2 CPU cores (None: not measured),
and where that run reused the models of experiments run before it in the same folder of runs, their names
(``QUICK_REUSES``); ``mijax experiment --list`` prints both beside the profiles.

Every experiment draws its samples with the reverse sampler chosen around it
(:func:`mijax.experiments.common.sampler_choice`, ``mijax experiment --sampler ...``; DDPM as published by
default). A module that cannot also defines ``refuses_sampler(p: dict) -> str | None``: for its resolved
profile ``p``, why not (None: it can), and ``mijax experiment`` refuses the choice for it before any work.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# name -> module (in the order ``mijax experiment all`` runs them)
EXPERIMENTS: dict[str, str] = {
    "interp-1d": "mijax.experiments.interp_1d",
    "distance-1d": "mijax.experiments.distance_1d",
    "grid-2d": "mijax.experiments.grid_2d",
    "score": "mijax.experiments.score",
    "trajectories": "mijax.experiments.trajectories",
    "samplers": "mijax.experiments.samplers",
    "detection": "mijax.experiments.detection",
    "recursive-1d": "mijax.experiments.recursive_1d",
    "recursive-2d": "mijax.experiments.recursive_2d",
    "shapes": "mijax.experiments.shapes",
    "recursive-shapes": "mijax.experiments.recursive_shapes",
    "digits": "mijax.experiments.digits",
    "recursive-digits": "mijax.experiments.recursive_digits",
    "mitigations": "mijax.experiments.mitigations",
    "detectors": "mijax.experiments.detectors",  # last: it reuses the runs of the others
}
# smoke: toy sizes, end to end in seconds to a minute on 2 CPU cores (a check that everything runs, not a
# result); quick: minutes on 2 CPU cores; paper: the paper's sizes, for a GPU. An experiment may add more after
# these (samplers: ``peer``, a peer paper's setting).
PROFILES = ("smoke", "quick", "paper")
DEFAULT_PROFILE = "quick"


def names() -> list[str]:
    return list(EXPERIMENTS)


def load(name: str) -> ModuleType:
    """The module of experiment ``name``; ValueError for an unknown name."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; `mijax experiment --list` names them")
    return importlib.import_module(EXPERIMENTS[name])
