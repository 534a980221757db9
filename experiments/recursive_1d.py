"""``mijax experiment recursive-1d``: recursive training with and without Hal filtering, 1D (see recursive.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from mijax.experiments.recursive import run_dim

SUMMARY = "recursive training on own samples, 1D: none vs random vs variance (Hal) filtering"
SETS_SIZES = False  # its sizes are a RecursiveConfig's: `mijax recursive` sets them, not `experiment --set`


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    return run_dim(1, out, profile=profile, seeds=seeds, progress=progress, overrides=overrides)
