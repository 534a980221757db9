"""Statistics over the seed axis: mean and 95% confidence interval (Student t)."""
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
