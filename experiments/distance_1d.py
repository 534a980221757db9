"""Claim 3b: modes farther apart are interpolated less. 1D modes (1, 2, 4, 5): samples per unit length
inside the far gap 2-4 against the near gaps 1-2 and 4-5."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from mijax.experiments import common
from mijax.data.mixtures import labels
from mijax import plots
from mijax.config import build

SUMMARY = "1D modes (1,2,4,5): samples per unit length in the far gap 2-4 vs the near gaps 1-2, 4-5"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 2.1 min (training its own
# model 91 s, sampling 34 s).
QUICK_MINUTES: Optional[float] = 2.1
MODES = (1.0, 2.0, 4.0, 5.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Distance1DProfile(common.MixtureProfile):
    """distance-1d's sizes: one 1D run on modes 1, 2, 4, 5, sampled
    (:class:`~mijax.experiments.common.MixtureProfile`)."""


QUICK = Distance1DProfile(**common.QUICK_1D, num_samples=10_000, chunk_size=5_000, **common.QUICK_OPTIMISER,
                          **common.QUICK_SAVING)
PROFILES = {
    "smoke": common.smoke(QUICK),
    "quick": QUICK,
    "paper": Distance1DProfile(**common.PAPER_1D, num_samples=1_000_000, chunk_size=100_000),
}


def gap_densities(x: np.ndarray, modes=MODES, std: float = 0.05, k: float = common.K) -> np.ndarray:
    """Per gap (a, b): the fraction of samples x [N] in (a + k std, b - k std) per unit length. [gaps]"""
    out = []
    for a, b in zip(modes[:-1], modes[1:]):
        lo, hi = a + k * std, b - k * std
        out.append(np.mean((x > lo) & (x < hi)) / (hi - lo))
    return np.asarray(out)


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    config = common.run_config(p, modes=MODES)
    run_dir, result = common.train_and_sample(out, "1d", config, p, timer, progress)
    mixture = build(config).dataset.mixture
    x = result["x"][:, :, 0]  # [S, N]
    dens = np.stack([gap_densities(xs) for xs in x])  # [S, 3]
    names = [f"{a:g}-{b:g}" for a, b in zip(MODES[:-1], MODES[1:])]
    near = 0.5 * (dens[:, 0] + dens[:, 2])
    ratio = np.where(near > 0, dens[:, 1] / np.where(near > 0, near, 1), np.nan)
    gaps = {name: common.ci(dens[:, i]) for i, name in enumerate(names)}
    far, near_ci = gaps[names[1]], common.ci(near)
    holds = None if near_ci["mean"] in (None, 0.0) else bool(far["mean"] < 0.5 * near_ci["mean"])
    plots.plot_histogram_1d(result["x"][0], mixture, labels(mixture, result["x"][0], common.K), k=common.K,
                            title=f"modes 1, 2, 4, 5, seed 0: {p['num_samples']:,} samples vs the true density",
                            path=out / "histogram.png")
    figure = common.new_figure(5.0, 3.8)
    ax = figure.subplots()
    means = [gaps[n]["mean"] or 0.0 for n in names]
    errs = [[m - (gaps[n]["low"] if gaps[n]["low"] is not None else m) for m, n in zip(means, names)],
            [(gaps[n]["high"] if gaps[n]["high"] is not None else m) - m for m, n in zip(means, names)]]
    ax.bar(names, means, yerr=np.maximum(errs, 0), color=["tab:blue", "tab:red", "tab:blue"], capsize=5)
    ax.set_xlabel("gap between modes")
    ax.set_ylabel("fraction of samples per unit length")
    ax.set_title(f"Inside each gap (beyond 5 std of both modes), {p['seeds']} seeds, 95% CI", fontsize=9)
    common.save_figure(figure, out / "gap_density.png")
    rows = common.rate_rows(mixture, result["x"])
    metrics = {"experiment": "distance-1d", "profile": p, "modes": MODES, "gap_density_per_unit_length": gaps,
               "near_gap_mean_density": near_ci, "far_over_near_ratio": common.ci(ratio), "rates": rows,
               "claim_holds": holds, "seconds": timer.seconds}
    table = "\n".join(f"| {n} | {MODES[i + 1] - MODES[i]:g} | {common.fmt(gaps[n])} |" for i, n in enumerate(names))
    report = f"""# distance-1d: farther modes are interpolated less

**Claim (paper 3):** the density of interpolated samples between two modes falls as the modes move apart.

**Measured:** modes 1, 2, 4, 5 (std 0.05); {p['seeds']} seeds (one vmapped run), {p['num_samples']:,} samples per seed;
inside each gap, beyond 5 std of both modes, the fraction of samples per unit length. {common.CI_TEXT}.
Profile `{p['profile']}`: {common.sizes_markdown(p)}.

| gap | width | samples per unit length |
|---|---|---|
{table}

Far gap / mean of the near gaps: {common.fmt(common.ci(ratio))}.

{common.rate_markdown(rows)}

![histogram](histogram.png) ![gaps](gap_density.png)

**Holds?** The far gap 2-4 holds less than half the near gaps' density per unit length: {common.holds_word(holds)}.

Timing (s): {timer.seconds}.
"""
    return common.finish(out, metrics, report)
