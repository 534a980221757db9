"""Statistics: mean and 95% confidence interval over the seed axis (Student t); distances between samples."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96).
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]


def t_quantile_975(dof: int) -> float:
    """The 0.975 quantile of Student's t with ``dof`` degrees of freedom (1.96 beyond 30)."""
    if dof < 1:
        return math.nan
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def mean_ci(values: Sequence[float], axis: int = 0) -> dict:
    """Mean and 95% confidence interval of per-seed values along ``axis``.

    Returns:
      {"mean", "low", "high", "half_width", "std", "n"}; scalars for a 1D input, arrays otherwise.
      With one seed the interval is undefined (NaN half width).
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[axis]
    mean = v.mean(axis=axis)
    std = v.std(axis=axis, ddof=1) if n > 1 else np.full_like(mean, np.nan)
    half = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    out = {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "std": std, "n": n}
    if np.ndim(mean) == 0:
        out = {k: (float(x) if k != "n" else int(x)) for k, x in out.items()}
    return out


def format_ci(ci: dict, scale: float = 1.0, digits: int = 3, unit: str = "") -> str:
    """``mean [low, high]`` (times ``scale``), e.g. ``0.41% [0.35%, 0.47%]`` with scale 100, unit '%'."""
    def f(x):
        return "nan" if x is None or not math.isfinite(x) else f"{x * scale:.{digits}g}{unit}"
    if ci["n"] < 2:
        return f"{f(ci['mean'])} (1 seed)"
    return f"{f(ci['mean'])} [{f(ci['low'])}, {f(ci['high'])}]"


def sliced_wasserstein(x: np.ndarray, y: np.ndarray, directions: int = 64) -> float:
    """Sliced 1-Wasserstein distance between equal-size samples x, y [P, d]: the mean over evenly spread
    unit directions (angles in [0, pi) in 2D; the exact W1 in 1D; random directions fixed by seed 0 in
    higher d) of the W1 of the projections."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    if d == 1:
        units = np.ones((1, 1))
    elif d == 2:
        angles = np.pi * np.arange(directions) / directions
        units = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    else:
        units = np.random.default_rng(0).normal(size=(directions, d))
        units /= np.linalg.norm(units, axis=1, keepdims=True)
    px, py = np.sort(x @ units.T, axis=0), np.sort(y @ units.T, axis=0)
    return float(np.mean(np.abs(px - py)))
