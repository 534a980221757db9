"""Claim 5a: over the last reverse steps the predicted x0 of a hallucinated sample keeps moving, while
an in-support sample's settles (1D and 2D)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import numpy as np

from mijax.experiments import common
from mijax.config import setting
from mijax.data.mixtures import labels

SUMMARY = "x0_hat over the last 100 reverse steps: hallucinated samples keep moving, in-support ones settle (1D, 2D)"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 0.4 min, with the models
# interp-1d and grid-2d had trained in the same folder of runs (`--runs`); alone it trains them first, a run not
# measured.
QUICK_MINUTES: Optional[float] = 0.4
QUICK_REUSES = ("interp-1d", "grid-2d")  # the experiments whose models that run reused


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrajectoriesProfile(common.Mixture2DProfile):
    """trajectories' sizes: a 1D and a 2D run, sampled with their last x0_hat trajectories
    (:class:`~mijax.experiments.common.Mixture2DProfile`), and how many trajectories of each kind a figure shows."""

    shown: int = setting(5, "trajectories of each kind (hallucinated, in support) in a figure", above=0)


QUICK = TrajectoriesProfile(**common.QUICK_1D, **common.two_d(common.QUICK_2D), num_samples=5_000, chunk_size=2_500,
                            **common.QUICK_OPTIMISER, **common.QUICK_SAVING)
PROFILES = {
    "smoke": common.smoke(QUICK),
    "quick": QUICK,
    "paper": TrajectoriesProfile(**common.PAPER_1D, **common.two_d(common.PAPER_2D), num_samples=100_000,
                                 chunk_size=20_000),
}
SETTINGS = {"1d": ("gaussian1d", (1.0, 2.0, 3.0)), "2d": ("gaussian25", None)}
LAST = 10  # movement is measured over the last this many steps (the Hal window)


def movement(trajectory: np.ndarray, last: int = LAST) -> np.ndarray:
    """Distance x0_hat travels from t = last to t = 0: trajectory [N, L, d] (t = L-1 .. 0) -> [N]."""
    return np.linalg.norm(trajectory[:, -1] - trajectory[:, -1 - last], axis=-1)


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    steps_shown = min(100, common.reverse_steps(p["timesteps"]))  # T as published, or the chosen sampler's steps
    metrics = {"experiment": "trajectories", "profile": p, "steps_shown": steps_shown, "settings": {}}
    sections = []
    for tag, (dataset, modes) in SETTINGS.items():
        _, mixture, result = common.setting_samples(out, p, tag, dataset, modes, [(0, min(10, steps_shown))],
                                                    timer, trajectory_steps=steps_shown, progress=progress)
        traj, x = result["trajectory"], result["x"]  # [S, N, L, d], [S, N, d]
        last = min(LAST, steps_shown - 1)
        rules = common.label_rules(mixture)
        stats = {}
        for rule, label in rules.items():
            hal_move, in_move, ratio, counts = [], [], [], []
            for s in range(x.shape[0]):
                pos = label(x[s])
                move = movement(traj[s], last)
                h = float(np.median(move[pos])) if pos.any() else np.nan
                i = float(np.median(move[~pos])) if (~pos).any() else np.nan
                hal_move.append(h)
                in_move.append(i)
                ratio.append(h / i if i > 0 else np.nan)
                counts.append(int(pos.sum()))
            r = common.ci(ratio)
            stats[rule] = {"median_movement_hallucinated": common.ci(hal_move),
                           "median_movement_in_support": common.ci(in_move), "ratio": r, "num_hallucinated": counts,
                           "holds": None if r["mean"] is None else bool(r["mean"] > 2.0)}
        # k = 5 true stds is the headline label; blur-adjusted labels (k x each mode's own spread in the model's
        # samples, where wider) keep a blurred mode's samples out of the hallucinated group.
        block = {"dataset": dataset, **stats["k5"], "blur_adjusted": stats["blur"]}
        b = stats["blur"]
        r = block["ratio"]
        metrics["settings"][tag] = block
        _figure(out / f"trajectories_{tag}.png", mixture, traj[0], x[0], result["trajectory_t"], p["shown"], dataset)
        sections.append(f"""## {tag.upper()}: {dataset}

Median distance x0_hat travels over the last {last} steps (t = {last} -> 0), hallucinated vs in-support, per seed:
{common.fmt(block['median_movement_hallucinated'])} vs {common.fmt(block['median_movement_in_support'])};
ratio {common.fmt(r)} (hallucinated samples per seed: {block['num_hallucinated']}).
With blur-adjusted labels: {common.fmt(b['median_movement_hallucinated'])} vs {common.fmt(b['median_movement_in_support'])};
ratio {common.fmt(b['ratio'])} (hallucinated samples per seed: {b['num_hallucinated']}).
**Holds** (ratio > 2): {common.holds_word(block['holds'])} (k = 5); {common.holds_word(b['holds'])} (blur-adjusted).

![trajectories](trajectories_{tag}.png)
""")
    metrics["seconds"] = timer.seconds
    report = f"""# trajectories: hallucinated samples keep moving in the final steps

**Claim (paper 5):** the predicted x0 of a hallucinated sample keeps changing over the last reverse steps,
while an in-support sample's settles early.

**Measured:** x0_hat recorded over the last {steps_shown} reverse steps for {p['num_samples']:,} samples per seed
({p['seeds']} seeds, one vmapped run per data set); labels at k = 5 std. Figures: {p['shown']} hallucinated (red) and
{p['shown']} in-support (blue) samples of seed 0. {common.CI_TEXT}. Profile `{p['profile']}`:
{common.sizes_markdown(p)}.

{chr(10).join(sections)}
Timing (s): {timer.seconds}.
"""
    return common.finish(out, metrics, report)


def _figure(path, mixture, traj, x, ts, shown, dataset):
    pos = np.asarray(labels(mixture, x, common.K))
    hal_idx, in_idx = np.flatnonzero(pos)[:shown], np.flatnonzero(~pos)[:shown]
    figure = common.new_figure(6.4, 4.4)
    ax = figure.subplots()
    if mixture.dim == 1:
        for idxs, colour, name in ((in_idx, "tab:blue", "in support"), (hal_idx, "tab:red", "hallucinated")):
            for j, i in enumerate(idxs):
                ax.plot(ts, traj[i, :, 0], color=colour, lw=1, label=name if j == 0 else None)
        for m in np.asarray(mixture.means)[:, 0]:
            ax.axhline(m, color="tab:green", lw=0.6, ls=":")
        ax.invert_xaxis()
        ax.set_xlabel("t (reverse process runs left to right)")
        ax.set_ylabel("x0_hat")
    else:
        means = np.asarray(mixture.means)
        ax.scatter(means[:, 0], means[:, 1], marker="x", color="black", s=20, label="modes")
        for idxs, colour, name in ((in_idx, "tab:blue", "in support"), (hal_idx, "tab:red", "hallucinated")):
            for j, i in enumerate(idxs):
                ax.plot(traj[i, :, 0], traj[i, :, 1], color=colour, lw=1, label=name if j == 0 else None)
                ax.scatter(traj[i, -1, 0], traj[i, -1, 1], color=colour, s=10)
        ax.set_aspect("equal")
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
    ax.set_title(f"{dataset}, seed 0: x0_hat over the last {len(ts)} steps", fontsize=10)
    ax.legend(fontsize=8)
    common.save_figure(figure, path)
