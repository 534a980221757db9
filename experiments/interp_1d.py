"""Claims 1 and 3a: a DDPM on three 1D Gaussians (1, 2, 3; std 0.05) interpolates between the modes
(Figure 2), and the hallucination rate falls as the training set grows."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional


from mijax.experiments import common
from mijax.data.mixtures import labels
from mijax import plots
from mijax.config import ConfigError, TrainConfig, build, setting

SUMMARY = "1D modes (1,2,3): samples between modes (Fig. 2); hallucination rate vs training-set size"
# The quick profile's wall time, measured on 2 CPU cores (docs/results/index.md): 7.8 min (`/usr/bin/time`;
# training 6.6 min).
QUICK_MINUTES: Optional[float] = 7.8
MODES = (1.0, 2.0, 3.0)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Interp1DProfile(common.Saving, common.Sampling, common.Recipe):
    """interp-1d's sizes: one 1D run per training-set size, each ``steps`` Adam steps of ``batch_size`` (or, with
    ``steps`` 0, ``epochs`` epochs of it, as published)."""

    sizes: tuple[int, ...] = setting(help="the training-set sizes N compared, smallest first")
    steps: int = setting(help="Adam steps at every size (0: epochs instead)", low=0)
    epochs: int = setting(help="with steps 0: epochs of fixed batches at every size", low=0)
    batch_size: int = common.field_like(TrainConfig, "batch_size")

    def check(self):
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError("sizes", f"sizes must be training-set sizes >= 1, got {self.sizes}")
        if not self.steps and not self.epochs:
            raise ConfigError("steps", "steps or epochs must be > 0, got both 0")


# quick: fixed steps for every size (2 CPU cores); paper: 10,000 epochs of batch 10,000 as published
QUICK = Interp1DProfile(sizes=(2_000, 5_000, 10_000, 20_000), steps=common.QUICK_1D["steps"], epochs=0,
                        batch_size=common.QUICK_1D["batch_size"], num_samples=5_000, chunk_size=5_000,
                        **common.QUICK_OPTIMISER, **common.QUICK_SAVING)
PROFILES = {
    "smoke": common.smoke(QUICK, sizes=(400, 800)),
    "quick": QUICK,
    "paper": Interp1DProfile(sizes=(2_000, 10_000, 20_000, 50_000, 100_000), steps=0, epochs=10_000,
                             batch_size=10_000, num_samples=1_000_000, chunk_size=100_000),
}


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    per_size = []
    samples_by_size = {}
    for n_train in p["sizes"]:
        steps = p["steps"] or common.epochs_to_steps(p["epochs"], n_train, p["batch_size"])
        config = common.run_config(p, modes=MODES, n_train=n_train, steps=steps)
        run_dir, result = common.train_and_sample(out, f"n{n_train}", config, p, timer, progress)
        mixture = build(config).dataset.mixture
        samples_by_size[n_train] = result["x"]
        per_size.append({"n_train": n_train, "steps": steps, "batch_size": config.train.batch_size,
                         "rates": common.rate_rows(mixture, result["x"])})
    mixture = build(common.run_config(p, modes=MODES, n_train=p["sizes"][0])).dataset.mixture
    k_index = common.KS.index(common.K)
    rates_k = [row["rates"][k_index]["rate"] for row in per_size]
    means = [r["mean"] for r in rates_k]
    falls = means[-1] < means[0]
    separated = rates_k[-1]["high"] is not None and rates_k[0]["low"] is not None and rates_k[-1]["high"] < rates_k[0]["low"]
    monotone = all(b < a for a, b in zip(means[:-1], means[1:]))
    # The claim holds when the largest N's CI lies below the smallest N's; falling means alone, with
    # overlapping CIs, do not establish it.
    verdict = "yes" if falls and separated else ("not established" if falls else "no")
    interpolates = means[0] > 10 * common.mass_beyond_k(mixture)
    figures = []
    for n_train in (p["sizes"][0], p["sizes"][-1]):
        name = f"histogram_n{n_train}.png"
        plots.plot_histogram_1d(samples_by_size[n_train][0], mixture, labels(mixture, samples_by_size[n_train][0], common.K),
                                k=common.K, title=f"N = {n_train:,} (seed 0): {p['num_samples']:,} samples vs the true density",
                                path=out / name)
        figures.append(name)
    common.plot_ci_lines(out / "rate_vs_n.png", list(p["sizes"]),
                         {f"k = {k:g}": [row["rates"][i]["rate"] for row in per_size]
                          for i, k in enumerate(common.KS)},
                         "training-set size N", "hallucination rate (%)",
                         f"Hallucination rate vs N, mean and 95% CI over {p['seeds']} seeds", logx=True, scale=100.0)
    metrics = {"experiment": "interp-1d", "profile": p, "modes": MODES, "std": 0.05, "k": common.K,
               "per_size": per_size, "claim_holds": {"interpolates": bool(interpolates), "rate_falls_with_n": bool(falls and separated),
                                                     "means_fall": bool(falls), "ci_separated": bool(separated),
                                                     "monotone": bool(monotone), "verdict": verdict},
               "seconds": timer.seconds}
    table = "\n".join(
        f"| {row['n_train']:,} | {row['steps']:,} | " + " | ".join(common.fmt(r["rate"], pct=True) for r in row["rates"]) + " |"
        for row in per_size)
    masses = " | ".join(f"{r['true_mass']:.2g}" for r in per_size[0]["rates"])
    report = f"""# interp-1d: mode interpolation in 1D, and its rate vs training-set size

**Claims (paper 1 and 3):** a DDPM trained on the mixture of Gaussians at 1, 2, 3 (std 0.05) puts samples
between the modes, where the true density is essentially zero (Figure 2); more training samples give
fewer such samples.

**Measured:** for each training-set size N, {p['seeds']} seeds trained in one vmapped run (the paper's model,
T = {p['timesteps']}, {common.optimiser_text(p)}), {p['num_samples']:,} DDPM samples per seed; a sample is hallucinated when it is
farther than k std from its nearest mode. Every rate: {common.CI_TEXT}.
Profile `{p['profile']}`: {common.sizes_markdown(p)}.

| N | steps | k = 3 | k = 4 | k = 5 | k = 6 |
|---|---|---|---|---|---|
{table}
| true mixture | | {masses} |

![rate vs N](rate_vs_n.png)

![smallest N]({figures[0]}) ![largest N]({figures[1]})

**Holds?**
- Interpolation (rate at k = 5 far above the true mass {common.mass_beyond_k(mixture):.2g}): {common.holds_word(interpolates)}.
- Rate falls from the smallest to the largest N (the largest N's 95% CI below the smallest's): **{verdict}**
  ({common.fmt(rates_k[0], pct=True)} -> {common.fmt(rates_k[-1], pct=True)}; means fall: {'yes' if falls else 'no'},
  CIs separated: {'yes' if separated else 'no'}, means fall at every step: {'yes' if monotone else 'no'}).
{'' if p['steps'] == 0 else f'''
Note: the quick profile trains every size for the same {p['steps']:,} steps (the paper trains 10,000 epochs,
so larger N also gets more steps); short training leaves the modes wider than the truth, which inflates
every rate.'''}
Timing (s): {timer.seconds}.
"""
    return common.finish(out, metrics, report)
