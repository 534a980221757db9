"""Statistics: mean and 95% confidence interval over the seed axis (Student's t; for proportions, Student's t
on the logit scale); distances between samples."""
from __future__ import annotations

import math
from typing import Optional, Sequence

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


# The interval methods, by the "method" name their dicts carry.
METHODS = {"t": "Student's t",
           "logit-t": "Student's t on the logit scale around the mean, inside [0, 1]"}


def mean_ci(values: Sequence[float], axis: int = 0) -> dict:
    """Mean and 95% confidence interval of per-seed values along ``axis``: Student's t, ``mean +- t s / sqrt(n)``.

    Returns:
      {"mean", "low", "high", "half_width", "std", "n", "method": "t"}; scalars for a 1D input, arrays
      otherwise. With one seed the interval is undefined (NaN half width).
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.shape[axis]
    mean = v.mean(axis=axis)
    std = v.std(axis=axis, ddof=1) if n > 1 else np.full_like(mean, np.nan)
    half = t_quantile_975(n - 1) * std / math.sqrt(n) if n > 1 else np.full_like(mean, np.nan)
    return _scalars({"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "std": std, "n": n,
                     "method": "t"})


def proportion_ci(values: Sequence[float], axis: int = 0) -> dict:
    """Mean and 95% confidence interval of per-seed proportions in [0, 1] (shares, rates, AUROCs) along
    ``axis``, with both bounds inside [0, 1]: Student's t on the logit scale around the mean (the delta
    method), ``expit(logit(m) +- t s / (sqrt(n) m (1 - m)))`` with m the mean and s the seeds' standard
    deviation. Where m is far from 0 and 1 this is, to first order, :func:`mean_ci`'s ``m +- t s / sqrt(n)``;
    towards a bound the interval shrinks on that side and stretches on the other, and always holds m.

    At the bounds: a mean of exactly 0 or 1 has every seed at 0 or 1, so no spread, and the interval is that
    point, as Student's t gives with no spread (no continuity correction is needed: a seed at 0 or 1 enters
    only through m and s). The interval excludes 0 whenever m > 0 (0 is at minus infinity on the logit
    scale), so "above 0" is no test of it.

    Returns:
      as :func:`mean_ci` ({"mean", "low", "high", "half_width" = (high - low) / 2, "std", "n"}), with
      "method": "logit-t".
    Raises:
      ValueError: a value outside [0, 1] (NaN values give NaN, as in :func:`mean_ci`).
    """
    v = np.asarray(values, dtype=np.float64)
    if np.any((v < 0.0) | (v > 1.0)):
        raise ValueError(f"proportion_ci needs values in [0, 1], got {v.min():g} .. {v.max():g}")
    c = mean_ci(v, axis=axis)
    mean, spread = np.asarray(c["mean"]), np.asarray(c["half_width"])  # spread: t s / sqrt(n)
    inside = np.clip(mean, 1e-300, 1.0 - 1e-16)  # the logit's domain; where m is 0 or 1, s is 0 (below)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        logit, half = np.log(inside / (1.0 - inside)), spread / (inside * (1.0 - inside))
        low, high = (np.where(spread == 0.0, mean, 1.0 / (1.0 + np.exp(-(logit + sign * half)))) for sign in (-1, 1))
    return _scalars({"mean": mean, "low": low, "high": high, "half_width": (high - low) / 2.0, "std": c["std"],
                     "n": c["n"], "method": "logit-t"})


def _scalars(ci: dict) -> dict:
    """An interval dict with Python scalars where its mean is a scalar."""
    if np.ndim(ci["mean"]) == 0:
        return {k: x if k == "method" else int(x) if k == "n" else float(x) for k, x in ci.items()}
    return ci


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


MMD_SCALES = (0.1, 0.3, 1.0)


def mmd(x: np.ndarray, y: np.ndarray, scales: Sequence[float] = MMD_SCALES, bandwidth: Optional[float] = None,
        block: int = 2048) -> float:
    """The maximum mean discrepancy between samples x [P, d] and y [Q, d] (sizes may differ): the square root of
    the biased (V-statistic) MMD^2 with the kernel mean_s exp(-|a - b|^2 / (2 (s h)^2)) over ``scales`` s, h the
    ``bandwidth`` (default: the median distance between the points of y, on at most 1,000 of them). Bounded (at
    most sqrt(2)) and so robust to far outliers, unlike a Wasserstein distance; 0 for equal samples."""
    return mmd_to(y, scales, bandwidth, block)(x)


def mmd_to(y: np.ndarray, scales: Sequence[float] = MMD_SCALES, bandwidth: Optional[float] = None,
           block: int = 2048):
    """:func:`mmd` to a fixed sample y [Q, d] as a function of x [P, d]: the bandwidth and y's own kernel mean
    are computed once, for many x."""
    y = np.asarray(y, np.float64)
    if bandwidth is None:
        ref = y[:1000]
        gaps = np.sqrt(np.sum((ref[:, None] - ref[None]) ** 2, axis=-1))
        bandwidth = float(np.median(gaps[np.triu_indices(ref.shape[0], 1)]))
    widths = 2.0 * (np.asarray(scales, np.float64) * bandwidth) ** 2

    def mean_kernel(a, b):
        total = 0.0
        for i in range(0, a.shape[0], block):
            sq = np.sum((a[i:i + block, None] - b[None]) ** 2, axis=-1)  # [block, Q]
            total += sum(np.exp(-sq / w).sum() for w in widths) / len(widths)
        return total / (a.shape[0] * b.shape[0])

    yy = mean_kernel(y, y)

    def distance(x: np.ndarray) -> float:
        x = np.asarray(x, np.float64)
        return float(np.sqrt(max(mean_kernel(x, x) + yy - 2.0 * mean_kernel(x, y), 0.0)))

    return distance
