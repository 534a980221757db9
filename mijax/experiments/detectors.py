"""Beyond the paper: every hallucination detector of :mod:`mijax.detectors` on the same samples, with 95% CIs
over seeds (1D, the 5 x 5 grid, the rotated grid), what each costs, and how early each one knows."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from mijax import bench, detection, plots
from mijax import detectors as detectors_lib
from mijax.config import build
from mijax.experiments import common
from mijax.sampling import SamplerConfig

SUMMARY = "Beyond the paper: 8 hallucination detectors compared on the same samples (1D, 2D, rotated 2D), cost, how early"
NAMES = tuple(detectors_lib.DETECTORS)  # every registered detector, default windows (t = 9..0; lid at t0 = 10)
EARLY = ("hal", "xt_var", "path_length", "eps_norm", "jac_trace", "jac_frob")  # the windowed ones, swept in t_e
EARLY_ENDS = (0, 10, 25, 50, 100, 200, 400)  # windows of EARLY_LENGTH steps ending t_e steps before the last
EARLY_LENGTH = 10
PROFILES = {
    "quick": {"seeds": 4, **common.QUICK_1D, **common.QUICK_2D, "timesteps": 1000, "num_samples": 10_000,
              "chunk_size": 2_500, "cost_samples": 2_000, "cost_repeats": 1, "cost_each": True, "early_ends": EARLY_ENDS,
              **common.QUICK_SAVING},
    "paper": {"seeds": 4, "n_train": 20_000, "n_train_2d": 100_000, "steps": 20_000, "steps_2d": 100_000,
              "batch_size": 10_000, "batch_size_2d": 10_000, "timesteps": 1000, "num_samples": 1_000_000,
              "chunk_size": 50_000, "cost_samples": 10_000, "cost_repeats": 3, "cost_each": True, "early_ends": EARLY_ENDS, "steps_per_call": 1_000,
              "checkpoint_every": 5_000},
}
# tag -> (data set, 1D modes); the models are the other Gaussian experiments' (detection, grid-2d)
SETTINGS = {"1d": ("gaussian1d", (1.0, 2.0, 3.0)), "2d": ("gaussian25", None), "2d_rotated": ("gaussian25_rotated", None)}


def specs_for(timesteps: int, ends=EARLY_ENDS) -> tuple[detectors_lib.DetectorSpec, ...]:
    """Every detector at its default window, then the early windows of ``EARLY`` ending at ``ends`` that fit in
    T steps."""
    main = [n if detectors_lib.DETECTORS[n].kind == "final" else f"{n}@0:{EARLY_LENGTH}" for n in NAMES]
    early = [f"{n}@{e}:{EARLY_LENGTH}" for e in ends if 0 < e and e + EARLY_LENGTH <= timesteps for n in EARLY]
    return detectors_lib.parse(main + early)


def _key(name: str, end: int = 0) -> str:
    final = detectors_lib.DETECTORS[name].kind == "final"
    return detectors_lib.DetectorSpec(name, detectors_lib.LID_END if final else end, 1 if final else EARLY_LENGTH).key


def _seed_numbers(score: np.ndarray, positives: np.ndarray) -> dict:
    """AUROC and the two operating points of one seed's scores (None where a class is empty or a score NaN)."""
    if not 0 < positives.sum() < positives.size or np.isnan(score).any():
        return {"auroc": np.nan, "removed": np.nan, "retained": np.nan}
    return {"auroc": detection.auroc(score, positives),
            "removed": detection.removal_at_retention(score, positives, 0.96)["removed"],
            "retained": detection.retained_at_removal(score, positives, 0.95)["retained"]}


def evaluate(scores: dict[str, np.ndarray], positives: np.ndarray) -> dict:
    """Per detector key, mean [95% CI] over seeds of AUROC, removal at 96% retention and retention at 95% removal.

    Args:
      scores: ``{key: [S, N]}``. positives: bool [S, N] (hallucinations).
    """
    out = {}
    for key, values in scores.items():
        rows = [_seed_numbers(np.asarray(values[s], np.float64), positives[s]) for s in range(positives.shape[0])]
        out[key] = {"auroc": common.ci([r["auroc"] for r in rows]),
                    "removed_at_96_retention": common.ci([r["removed"] for r in rows]),
                    "retained_at_95_removal": common.ci([r["retained"] for r in rows])}
    return out


def ranking(per_setting: dict) -> list[dict]:
    """Detectors by their AUROC averaged over the data sets (mean of the per-data-set means), best first."""
    rows = []
    for name in NAMES:
        means = [s["detectors"][_key(name)]["auroc"]["mean"] for s in per_setting.values()]
        means = [m for m in means if m is not None]
        rows.append({"detector": name, "mean_auroc": float(np.mean(means)) if means else None,
                     "per_dataset": {tag: s["detectors"][_key(name)]["auroc"]["mean"] for tag, s in per_setting.items()}})
    return sorted(rows, key=lambda r: -1.0 if r["mean_auroc"] is None else -r["mean_auroc"])


def hal_verdicts(per_setting: dict) -> dict:
    """Per data set: the detectors whose AUROC CI lies wholly above Hal's (Hal loses to them), wholly below
    (Hal wins), and whether Hal has the best mean."""
    out = {}
    for tag, s in per_setting.items():
        hal = s["detectors"][_key("hal")]["auroc"]
        beats, loses = [], []
        for name in [n for n in NAMES if n != "hal"]:
            other = s["detectors"][_key(name)]["auroc"]
            if None in (hal["low"], hal["high"], other["low"], other["high"]):
                continue
            if other["low"] > hal["high"]:
                beats.append(name)
            elif other["high"] < hal["low"]:
                loses.append(name)
        best = max(NAMES, key=lambda n: -np.inf if s["detectors"][_key(n)]["auroc"]["mean"] is None
                   else s["detectors"][_key(n)]["auroc"]["mean"])
        out[tag] = {"better_than_hal": beats, "worse_than_hal": loses, "best": best, "hal_is_best": best == "hal"}
    return out


def run(out: Path, profile: str = "quick", seeds: Optional[int] = None, progress: bool = True,
        overrides: Optional[dict] = None) -> dict:
    p, out, timer = common.start(PROFILES, profile, seeds, overrides, out)
    ends = sorted({0, *(int(e) for e in p["early_ends"] if e + EARLY_LENGTH <= p["timesteps"])})
    specs = specs_for(p["timesteps"], ends)
    metrics = {"experiment": "detectors", "profile": p, "detectors": [s.label for s in specs],
               "references": {n: d.reference for n, d in detectors_lib.DETECTORS.items()}, "settings": {}}
    sections = []
    for tag, (dataset, modes) in SETTINGS.items():
        one_d = tag == "1d"
        config = common.run_config(p, dataset=dataset, modes=modes or (),
                                   n_train=p["n_train"] if one_d else p["n_train_2d"],
                                   steps=p["steps"] if one_d else p["steps_2d"],
                                   batch_size=p["batch_size"] if one_d else p["batch_size_2d"])
        run_dir = common.train(out, tag, config, progress)
        timer.lap("train")
        result = common.sample(run_dir, p["num_samples"], SamplerConfig(detectors=specs), chunk_size=p["chunk_size"],
                               progress=progress)
        timer.lap("sample")
        data = build(config).dataset
        positives = np.stack([np.asarray(data.hallucinated(x)) for x in result["x"]])  # [S, N], k = 5
        scores = {s.key: result[f"score_{s.key}"] for s in specs}
        table = evaluate(scores, positives)
        block = {"dataset": dataset, "hallucination_rate": common.ci(positives.mean(axis=1)),
                 "num_hallucinated": [int(v) for v in positives.sum(axis=1)],
                 "detectors": {s.key: table[s.key] for s in specs if s.key in [_key(n) for n in NAMES]},
                 "early": {n: [{"end": e, "auroc": table[_key(n, e)]["auroc"]} for e in ends] for n in EARLY}}
        metrics["settings"][tag] = block
        curves = {}
        for name in NAMES:
            score = np.asarray(scores[_key(name)][0], np.float64)
            if 0 < positives[0].sum() < positives[0].size and not np.isnan(score).any():
                fpr, tpr, _ = detection.roc_curve(score, positives[0])
                curves[name] = (fpr, tpr, detection.auroc(score, positives[0]))
        plots.plot_roc(out / f"roc_{tag}.png", curves, title=f"{dataset}, seed 0: every detector (k = 5)")
        common.plot_ci_lines(out / f"early_{tag}.png", ends, {n: [r["auroc"] for r in block["early"][n]] for n in EARLY},
                             xlabel=f"the {EARLY_LENGTH}-step window ends t_e steps before the last",
                             ylabel="AUROC (k = 5)", title=f"{dataset}: how early the detectors know")
        timer.lap("figures")
    # What each detector costs: sampling time against Hal alone, on the paper's network (weights do not matter).
    groups = {name: [name] for name in NAMES} if p["cost_each"] else {}  # cost_each False: only all together
    groups["all"] = list(NAMES)
    cost = {}
    for dim in (1, 2) if p["cost_samples"] else ():  # cost_samples 0: not measured
        c = bench.detector_costs(p["cost_samples"], p["timesteps"], dim, EARLY_LENGTH, groups, p["cost_repeats"])
        cost[f"d{dim}"] = {"hal_only_seconds": c["hal_only"]["seconds"],
                           **{label: {"ratio": g["ratio"], "seconds": g["timing"]["seconds"]} for label, g in c["groups"].items()}}
    metrics["cost"] = cost or None
    timer.lap("cost")
    metrics["ranking"] = ranking(metrics["settings"])
    metrics["hal"] = hal_verdicts(metrics["settings"])
    metrics["machine"] = bench.machine_info()
    for tag in SETTINGS:
        sections.append(_section(tag, metrics, ends))
    metrics["seconds"] = timer.seconds
    report = _report(p, metrics, sections)
    return common.finish(out, metrics, report)


def _ratio(cost: dict, name: str) -> str:
    return f"{cost[name]['ratio']:.2f}x" if name in cost else "n/a"


def _section(tag: str, metrics: dict, ends: list[int]) -> str:
    s = metrics["settings"][tag]
    cost = (metrics["cost"] or {}).get("d1" if tag == "1d" else "d2", {})
    rows = "\n".join(
        f"| {name} | {common.fmt(v['auroc'])} | {common.fmt(v['removed_at_96_retention'], pct=True)} | "
        f"{common.fmt(v['retained_at_95_removal'], pct=True)} | "
        f"{_ratio(cost, name)} |"
        for name in NAMES for v in [s["detectors"][_key(name)]])
    early = "\n".join(f"| {name} | " + " | ".join(common.fmt(r["auroc"]) for r in s["early"][name]) + " |" for name in EARLY)
    return f"""## {tag}: {s['dataset']}

Hallucination rate (beyond 5 std of every mode): {common.fmt(s['hallucination_rate'], pct=True)}
({', '.join(str(v) for v in s['num_hallucinated'])} hallucinated samples per seed).

| detector | AUROC | hallucinations removed, 96% of in-support kept | in-support kept, 95% of hallucinations removed | sampling cost vs Hal alone |
|---|---|---|---|---|
{rows}

How early (AUROC of a {EARLY_LENGTH}-step window ending t_e steps before the last):

| detector | {' | '.join(f't_e = {e}' for e in ends)} |
|---|{'---|' * len(ends)}
{early}

![ROC](roc_{tag}.png) ![early](early_{tag}.png)
"""


def _report(p: dict, metrics: dict, sections: list[str]) -> str:
    rank = "\n".join(f"| {i + 1} | {r['detector']} | {r['mean_auroc']:.3f} | "
                     + " | ".join("n/a" if r["per_dataset"][t] is None else f"{r['per_dataset'][t]:.3f}" for t in SETTINGS)
                     + " |" for i, r in enumerate(metrics["ranking"]) if r["mean_auroc"] is not None)
    verdicts = []
    for tag, v in metrics["hal"].items():
        line = f"- **{tag}**: best mean AUROC: {v['best']}"
        line += "; Hal's CI lies below " + ", ".join(v["better_than_hal"]) if v["better_than_hal"] else "; no detector's CI lies wholly above Hal's"
        line += ("; Hal's CI lies above " + ", ".join(v["worse_than_hal"])) if v["worse_than_hal"] else ""
        verdicts.append(line + ".")
    if metrics["cost"]:
        c1, c2 = metrics["cost"]["d1"], metrics["cost"]["d2"]
        cost = (f"all detectors in one pass cost {c1['all']['ratio']:.2f}x (1D) and {c2['all']['ratio']:.2f}x (2D) "
                "the sampling time of Hal alone")
        cost_section = f"""Sampling {p['cost_samples']:,} points x {p['timesteps']} steps with each detector added to Hal, relative to
Hal alone (the paper's network, {metrics['machine']['cpu_model']}, {metrics['machine']['cpu_count']} CPUs): all
detectors together {c1['all']['ratio']:.2f}x in 1D, {c2['all']['ratio']:.2f}x in 2D (Hal alone
{c1['hal_only_seconds']:.2f} s and {c2['hal_only_seconds']:.2f} s). The Jacobian and the oracle run only on
their windows' steps."""
    else:
        cost, cost_section = "the cost was not measured (cost_samples = 0)", "Not measured (cost_samples = 0)."
    order = [r["detector"] for r in metrics["ranking"]]
    best = metrics["ranking"][0]
    headline = (f"**Headline:** the best detector over the three data sets is `{best['detector']}` (mean AUROC "
                f"{best['mean_auroc']:.3f}); Hal ranks {order.index('hal') + 1} of {len(order)}; {cost}.")
    described = "\n".join(f"- `{name}`: {d.summary}" + (f" ({d.reference})" if d.reference else "")
                          for name, d in detectors_lib.DETECTORS.items())
    return f"""# detectors: hallucination detectors compared on the same samples

The paper has one detector (Hal: the variance of x0_hat over t = 9..0). Here every detector of
`mijax.detectors` scores the same samples in one sampling pass; labels: farther than 5 std from every
mode. Mean [95% CI] over {p['seeds']} seeds (models trained as the `detection` and `grid-2d` experiments
train them: the quick profiles share them), {p['num_samples']:,} samples per seed. Profile
`{p['profile']}`: {common.sizes_markdown(p)}.

{headline}

{described}

Higher is more suspicious for every score (`jac_trace` is minus the trace). Windows: t = 9..0 unless
said; `lid` at t0 = 10.

## Ranking (AUROC, mean over seeds, then over the data sets)

| rank | detector | mean | {' | '.join(SETTINGS)} |
|---|---|---|{'---|' * len(SETTINGS)}
{rank}

## Where Hal wins and where it loses

{chr(10).join(verdicts)}

## Cost

{cost_section}

{chr(10).join(sections)}
Timing (s): {metrics['seconds']}.
"""
