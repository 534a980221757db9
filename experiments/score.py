"""Claim 4: at small t the exact eps* of the mixture jumps between modes while the learned eps_theta is
smooth (Figure 4); sampling with the exact eps* through the same sampler does not interpolate."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from mijax.experiments import common
from mijax.store import load_cache
from mijax.data.mixtures import labels
from mijax import mixtures, plots
from mijax.runs import load_run, sample_keys
from mijax.config import SamplerConfig, setting
from mijax.sampling import sample

SUMMARY = "learned eps_theta (smooth) vs exact eps* (jumps) at small t (Fig. 4); exact-score sampling does not interpolate"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 0.2 min, with the 1D models
# interp-1d had trained in the same folder of runs (`--runs`); alone it trains them first, a run not measured.
QUICK_MINUTES: Optional[float] = 0.2
QUICK_REUSES = ("interp-1d",)  # the experiments whose models that run reused
MODES = (1.0, 2.0, 3.0)
TIMES = (0, 5, 10, 25, 50)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ScoreProfile(common.MixtureProfile):
    """score's sizes: one 1D run, sampled (:class:`~mijax.experiments.common.MixtureProfile`), and the points
    of x in [0.5, 3.5] where eps_theta and eps* are compared."""

    grid_points: int = setting(help="points of x in [0.5, 3.5] where eps_theta and eps* are compared", low=2)


QUICK = ScoreProfile(**common.QUICK_1D, num_samples=5_000, chunk_size=5_000, grid_points=2_001,
                     **common.QUICK_OPTIMISER, **common.QUICK_SAVING)
PROFILES = {
    "smoke": common.smoke(QUICK, grid_points=301),
    "quick": QUICK,
    "paper": ScoreProfile(**common.PAPER_1D, num_samples=1_000_000, chunk_size=100_000, grid_points=10_001),
}


def refuses_sampler(p: dict) -> Optional[str]:
    """Why this experiment does not draw with a reverse sampler chosen by ``mijax experiment --sampler``: it
    compares the trained models' samples with the exact denoiser's through the published DDPM on purpose (the
    exact score has no interpolation to show only there)."""
    return "it compares the trained denoiser with the exact one through the published DDPM on purpose"


def gap_slope(grid: np.ndarray, eps: np.ndarray, modes=MODES, margin: float = 0.2) -> float:
    """The steepest |d eps / dx| inside the gaps between modes (excluding ``margin`` next to each mode)."""
    slope = np.abs(np.diff(eps)) / np.diff(grid)
    centre = 0.5 * (grid[1:] + grid[:-1])
    inside = np.zeros_like(centre, bool)
    for a, b in zip(modes[:-1], modes[1:]):
        inside |= (centre > a + margin) & (centre < b - margin)
    return float(slope[inside].max())


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    config = common.run_config(p, modes=MODES)
    run_dir, trained = common.train_and_sample(out, "1d", config, p, timer, progress)
    _, pieces, state = load_run(run_dir)
    mixture, schedule = pieces.dataset.mixture, pieces.schedule
    times = [t for t in TIMES if t < p["timesteps"]]
    grid = np.linspace(0.5, 3.5, p["grid_points"]).astype(np.float32)
    xg = jnp.asarray(grid)[:, None]
    learned, exact = {}, {}
    for t in times:
        tt = jnp.int32(t)
        learned[t] = np.asarray(jax.jit(jax.vmap(lambda prm: pieces.denoise_fn(prm, xg, tt)))(state.params))[:, :, 0]
        exact[t] = np.asarray(mixtures.exact_eps(mixture, schedule, xg, tt))[:, 0]
    # The exact denoiser through the same sampler, with the trained models' sampling keys.
    path = run_dir / f"samples-exact-{p['num_samples']}.npz"
    cached = load_cache(path, ("x",))
    if cached is not None:
        exact_x = cached["x"]
    else:
        keys = sample_keys(config, 0)
        exact_x = np.stack([np.asarray(sample(mixtures.exact_denoiser, (mixture, schedule), schedule, keys[s],
                                              p["num_samples"], (1,), SamplerConfig(), p["chunk_size"]).x)
                            for s in range(config.seeds)])
        common.save_npz(path, x=exact_x)
    timer.lap("sample_exact")
    slopes = {str(t): {"exact": gap_slope(grid, exact[t]),
                       "learned": common.ci([gap_slope(grid, learned[t][s]) for s in range(config.seeds)]),
                       "max_abs_difference": common.ci([float(np.max(np.abs(learned[t][s] - exact[t])))
                                                        for s in range(config.seeds)])} for t in times}
    rates_trained = common.rate_rows(mixture, trained["x"])
    rates_exact = common.rate_rows(mixture, exact_x)
    k5 = common.KS.index(common.K)
    exact_rate, trained_rate = rates_exact[k5]["rate"], rates_trained[k5]["rate"]
    no_interp = exact_rate["mean"] is not None and exact_rate["mean"] <= max(10 * rates_exact[k5]["true_mass"],
                                                                                3.0 / p["num_samples"])
    smoother = all(slopes[str(t)]["learned"]["mean"] < slopes[str(t)]["exact"] for t in times if t <= 10)
    fewer = exact_rate["mean"] is not None and trained_rate["mean"] is not None and exact_rate["mean"] < trained_rate["mean"]
    # Figure 4: eps over x_t at each small t.
    figure = common.new_figure(3.0 * len(times), 3.4)
    axes = np.atleast_1d(figure.subplots(1, len(times), sharey=True))
    for ax, t in zip(axes, times):
        for s in range(config.seeds):
            ax.plot(grid, learned[t][s], color="tab:blue", lw=1, alpha=0.7, label="learned (each seed)" if s == 0 else None)
        ax.plot(grid, exact[t], color="black", lw=1.2, ls="--", label="exact eps*")
        for m in MODES:
            ax.axvline(m, color="tab:green", lw=0.6, alpha=0.6)
        ax.set_title(f"t = {t}", fontsize=10)
        ax.set_xlabel("x_t")
    axes[0].set_ylabel("eps(x_t, t)")
    axes[0].legend(fontsize=7)
    common.save_figure(figure, out / "eps_vs_x.png")
    plots.plot_histogram_1d(exact_x[0], mixture, labels(mixture, exact_x[0], common.K), k=common.K,
                            title=f"exact eps* through the sampler, seed 0 ({p['num_samples']:,} samples)",
                            path=out / "histogram_exact.png")
    plots.plot_histogram_1d(trained["x"][0], mixture, labels(mixture, trained["x"][0], common.K), k=common.K,
                            title=f"trained model, seed 0 ({p['num_samples']:,} samples)", path=out / "histogram_trained.png")
    metrics = {"experiment": "score", "profile": p, "times": times, "gap_slope": slopes,
               "rates_trained": rates_trained, "rates_exact": rates_exact,
               "claim_holds": {"exact_does_not_interpolate": bool(no_interp), "learned_smoother": bool(smoother),
                               "exact_below_trained": bool(fewer)}, "seconds": timer.seconds}
    slope_rows = "\n".join(f"| {t} | {slopes[str(t)]['exact']:.3g} | {common.fmt(slopes[str(t)]['learned'])} | "
                           f"{common.fmt(slopes[str(t)]['max_abs_difference'])} |" for t in times)
    rate_rows = "\n".join(f"| {a['k']:g} | {common.fmt(a['rate'], pct=True)} | {common.fmt(b['rate'], pct=True)} | "
                          f"{a['true_mass']:.2g} |" for a, b in zip(rates_trained, rates_exact))
    report = f"""# score: the exact eps* jumps between modes, the learned one is smooth

**Claim (paper 4):** at small t the exact eps* of the mixture changes abruptly midway between modes; the
network learns a smooth approximation, whose gentle slope sends trajectories into the gap. Sampling with
the exact eps* does not interpolate.

**Measured:** the trained models ({p['seeds']} seeds, one vmapped run) and the closed-form eps* of the noised
mixture on {p['grid_points']:,} points of x_t in [0.5, 3.5] at t = {', '.join(map(str, times))}; the steepest slope
|d eps/dx| inside the gaps (0.2 away from each mode); and {p['num_samples']:,} samples per seed from the trained
model and from eps* through the same DDPM sampler with the same keys. {common.CI_TEXT}.
Profile `{p['profile']}`: {common.sizes_markdown(p)}.

![eps](eps_vs_x.png)

| t | steepest gap slope, exact | learned | max abs difference learned - exact |
|---|---|---|---|
{slope_rows}

| k | trained model | exact eps* sampler | true mixture |
|---|---|---|---|
{rate_rows}

![trained](histogram_trained.png) ![exact](histogram_exact.png)

**Holds?**
- Learned eps is smoother than eps* in the gaps at t <= 10: {common.holds_word(smoother)}.
- The exact-score sampler does not interpolate (k = 5 rate {common.fmt(exact_rate, pct=True)} vs true mass
  {rates_exact[k5]['true_mass']:.2g}; "no" if above max(10 x true mass, 3 / samples)): {common.holds_word(no_interp)}.
- The exact sampler hallucinates less than the trained model ({common.fmt(trained_rate, pct=True)}): {common.holds_word(fewer)}.

Timing (s): {timer.seconds}.
"""
    return common.finish(out, metrics, report)
