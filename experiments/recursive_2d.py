"""``mijax experiment recursive-2d``: recursive training with and without Hal filtering, 2D (see recursive.py)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

from mijax.config import RecursiveConfig
from mijax.experiments import common
from mijax.experiments.recursive import MixtureStudyProfile, mixture_profiles, mixture_study, run_mixture_study

SUMMARY = "recursive training on own samples, 2D: none vs random vs variance (Hal) filtering"
# The quick profile's wall time, measured on 2 CPU cores (docs/guide/recursive.md): 13.8 min.
QUICK_MINUTES: Optional[float] = 13.8


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recursive2DProfile(MixtureStudyProfile):
    """recursive-2d's sizes: a Gaussian-mixture study (:class:`~mijax.experiments.recursive.MixtureStudyProfile`)
    on the 5 x 5 grid."""


PROFILES = mixture_profiles(Recursive2DProfile, common.PAPER_2D)


def make_config(profile: str = "quick", seeds: Optional[int] = None,
                overrides: Optional[dict] = None) -> RecursiveConfig:
    """The study of a profile (``overrides``: changes to its fields)."""
    return mixture_study(common.resolve_profile(PROFILES, profile, seeds, overrides), "gaussian25")


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    return run_mixture_study(out, make_config(profile, seeds, overrides), profile, progress)
