"""Evaluating a samples file: how many samples are hallucinations, and how well Hal and every stored detector
score find them, per seed and over seeds.

A samples file (``mijax sample --out``, the demo's ``samples.npz``) holds ``x`` [S, n, *shape], ``hal`` [S, n],
one ``score_<name>`` [S, n] per detector, the seeds, and the configuration of the run it came from.
:func:`load_samples` reads it; :func:`evaluate` labels every sample with the run's data set's own rule
(:meth:`hallucinated`: beyond 5 standard deviations of every mode for the mixtures, a duplicated shape for SIMPLE
SHAPES, a digit the classifier cannot name) and measures, per seed, the hallucination rate and for each score
the AUROC and the two operating points of :mod:`mijax.detection` (the share of hallucinations removed when 96%
of in-support samples are kept; the share of in-support samples kept when 95% of hallucinations are removed);
over seeds, their mean and 95% interval (:func:`mijax.stats.proportion_ci`: Student's t on the logit scale
around the mean, so inside [0, 1], where every number here lies).
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Optional

import numpy as np

from mijax import detection
from mijax.config import RunConfig, config_from_dict
from mijax.errors import MijaxError
from mijax.store import finite_or_none
from mijax.stats import METHODS, format_ci, proportion_ci

REMOVAL, RETENTION = 0.95, 0.96  # the paper's operating points
INTERVAL = f"95% {METHODS['logit-t']}"


def load_samples(path: os.PathLike) -> dict[str, Any]:
    """The arrays and provenance of a samples file.

    Returns:
      ``{"x": float32 [S, n, *shape], "hal": float32 [S, n], "scores": {name: float32 [S, n]},
      "seeds": int [S], "config": RunConfig or None, "run": str or None, "step": int or None}``, and for a
      file of abort and resample (``mijax sample --abort``) its ``"redraws"`` and ``"steps"`` [S, n] too;
      a file that is not a mijax samples file raises one-line :class:`~mijax.errors.MijaxError`.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise MijaxError(f"{path} does not exist") from None
    except IsADirectoryError:
        raise MijaxError(f"{path} is a directory; name a samples file (.npz)") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise MijaxError(f"{path} is not a samples file ({type(e).__name__})") from None
    missing = [k for k in ("x", "hal", "seeds") if k not in arrays]
    if missing:
        raise MijaxError(f"{path} is not a mijax samples file (no {', '.join(missing)})")
    x, hal = arrays["x"], arrays["hal"]
    if hal.ndim != 2 or x.shape[:2] != hal.shape:
        raise MijaxError(f"{path}: x {x.shape} and hal {hal.shape} are not [S, n, ...] and [S, n]")
    config = None
    if "config" in arrays:
        try:
            config = config_from_dict(json.loads(str(arrays["config"])))
        except ValueError as e:  # MijaxError included
            raise MijaxError(f"{path}: its run configuration cannot be read ({str(e).splitlines()[0]})") from None
    return {"x": x, "hal": hal, "seeds": arrays["seeds"],
            "scores": {k[len("score_"):]: v for k, v in arrays.items() if k.startswith("score_")},
            "config": config, "run": str(arrays["run"]) if "run" in arrays else None,
            "step": int(arrays["step"]) if "step" in arrays else None,
            **{k: arrays[k] for k in ("redraws", "steps") if k in arrays}}


def _dataset(config: Optional[RunConfig]):
    if config is None:
        raise MijaxError("these samples do not name the run they came from (no config): cannot label them")
    from mijax import data

    return data.make(config.data.dataset, config.data.options)


def evaluate(samples: dict[str, Any], removal: float = REMOVAL, retention: float = RETENTION,
             dataset=None) -> dict[str, Any]:
    """The hallucination rate and every score's detection numbers, per seed and over seeds (JSON-able).

    Args:
      samples: as :func:`load_samples` returns (``x``, ``hal``, ``scores``, ``config``).
      removal, retention: the operating points' targets.
      dataset: the data set whose ``hallucinated(x)`` labels the samples (default: the run's own).
    Returns:
      ``{"seeds", "n", "dataset", "label", "per_seed": [{"hallucination_rate", "scores": {name:
      detection_summary}}], "over_seeds": {"hallucination_rate": ci, "scores": {name: {"auroc": ci,
      "removed_at_retention": ci, "retained_at_removal": ci}}}}``; a ci is ``{"mean", "low", "high", "n", ...}``
      (None where undefined, e.g. an AUROC when a seed has no hallucination).
    """
    dataset = _dataset(samples.get("config")) if dataset is None else dataset
    x, hal = np.asarray(samples["x"]), np.asarray(samples["hal"])
    scores = {"hal": hal, **{name: np.asarray(v) for name, v in samples.get("scores", {}).items()}}
    per_seed = []
    for s in range(x.shape[0]):
        positives = np.asarray(dataset.hallucinated(x[s]), dtype=bool)
        per_seed.append({"hallucination_rate": float(positives.mean()), "num_hallucinated": int(positives.sum()),
                         "scores": {name: detection.detection_summary(v[s], positives, removal, retention)
                                    for name, v in scores.items()}})

    def ci(values):  # shares and AUROCs: an interval inside [0, 1] (INTERVAL)
        if any(v is None for v in values):
            return None
        return {k: (finite_or_none(v) if k not in ("n", "method") else v) for k, v in proportion_ci(values).items()}

    over = {"hallucination_rate": ci([p["hallucination_rate"] for p in per_seed]), "scores": {}}
    for name in scores:
        rows = [p["scores"][name] for p in per_seed]
        over["scores"][name] = {
            "auroc": ci([r["auroc"] for r in rows]),
            "removed_at_retention": ci([r["removal_at_retention"]["removed"] for r in rows]),
            "retained_at_removal": ci([r["retained_at_removal"]["retained"] for r in rows]),
        }
    return {"seeds": [int(s) for s in np.asarray(samples.get("seeds", np.arange(x.shape[0])))],
            "n": int(x.shape[1]), "dataset": getattr(dataset, "name", None), "label": hallucination_rule(dataset),
            "removal": removal, "retention": retention, "interval": INTERVAL, "per_seed": per_seed,
            "over_seeds": over}


def certify(samples: dict[str, Any], alpha: float, delta: float = 0.1, score: str = "hal",
            dataset=None) -> dict[str, Any]:
    """Per seed, a threshold on ``score`` (``hal`` or a stored detector's) certified to keep the hallucination
    rate among the samples it keeps at most ``alpha`` with probability >= 1 - delta, these samples being the
    calibration set (:func:`mijax.filters.certify_threshold`; apply it to new samples of the same model and
    sampler). Returns ``{"score", "alpha", "delta", "per_seed": [certify_threshold's dict]}``."""
    from mijax.filters import certify_threshold

    if not (0.0 < alpha < 1.0 and 0.0 < delta < 1.0):
        raise MijaxError(f"the target rate and delta must be in (0, 1), got {alpha:g} and {delta:g}")
    dataset = _dataset(samples.get("config")) if dataset is None else dataset
    scores = {"hal": samples["hal"], **samples.get("scores", {})}
    if score not in scores:
        raise MijaxError(f"these samples have no score {score!r}; they have {', '.join(scores)}")
    x, values = np.asarray(samples["x"]), np.asarray(scores[score])
    rows = [certify_threshold(values[s], dataset.hallucinated(x[s]), alpha, delta) for s in range(x.shape[0])]
    return {"score": score, "alpha": alpha, "delta": delta,
            "per_seed": [{k: finite_or_none(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows]}


def format_certified(result: dict[str, Any], seeds) -> str:
    """One line per seed of :func:`certify`'s result (a threshold of None keeps every sample, +inf, where it
    keeps any, and none, -inf, where it keeps none)."""
    lines = [f"{result['score']} < threshold keeps the hallucination rate <= {result['alpha']:g} with probability >= "
             f"{1 - result['delta']:g} (Learn-then-Test on these samples as calibration):"]
    for seed, row in zip(seeds, result["per_seed"]):
        if row["kept"] == 0:  # threshold -inf (None in JSON)
            lines.append(f"  seed {seed}: no threshold can be certified from {row['calibration']:,} samples (keep "
                         "none, or calibrate on more)")
        elif row["threshold"] is None:  # +inf: keeping every sample is certified
            lines.append(f"  seed {seed}: every sample can be kept (no threshold needed); their hallucination rate "
                         f"<= {row['bound']:.3g} ({1 - result['delta']:g} upper bound)")
        else:
            lines.append(f"  seed {seed}: threshold {row['threshold']:.4g} keeps {row['accepted']:.1%} of the samples; "
                         f"their hallucination rate <= {row['bound']:.3g} ({1 - result['delta']:g} upper bound)")
    return "\n".join(lines)


def hallucination_rule(dataset) -> Optional[str]:
    """What the data set calls a hallucination, from the first sentence of its ``hallucinated`` docstring."""
    doc = (getattr(type(dataset).hallucinated, "__doc__", None) or "").strip()
    rule = doc.split(":")[0].split(".")[0].strip()
    return (rule[:1].lower() + rule[1:]) if rule else None


def format_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: the hallucination rate and each score's AUROC and operating points."""
    over = result["over_seeds"]

    def show(c, scale=1.0, unit=""):
        return "n/a" if c is None else format_ci(c, scale, 3, unit)

    lines = [f"{len(result['seeds'])} seed(s) x {result['n']:,} samples of {result['dataset']}"
             + (f" (hallucinated: {result['label']})" if result.get("label") else ""),
             f"hallucination rate {show(over['hallucination_rate'], 100.0, '%')}"]
    for name, s in over["scores"].items():
        lines.append(f"{name}: AUROC {show(s['auroc'])}; removes {show(s['removed_at_retention'], 100.0, '%')} of "
                     f"hallucinations keeping {result['retention']:.0%} of the rest; keeps "
                     f"{show(s['retained_at_removal'], 100.0, '%')} of the rest removing {result['removal']:.0%}")
    return "\n".join(lines)


def plot_evaluation(samples: dict[str, Any], result: dict[str, Any], directory: os.PathLike, dataset=None) -> list[str]:
    """Figures of the first seed's samples into ``directory``; returns the paths written:

    * ``samples.png``: 1D and 2D mixtures: the histogram over the true density, or the scatter over the modes,
      hallucinated samples in their own colour; grey images: the data set's reference images, then up to 16
      generated ones in support and up to 16 hallucinated, labelled;
    * ``roc.png``: the ROC curve of Hal and of every stored score (where both classes have samples).
    """
    from mijax import plots

    dataset = _dataset(samples.get("config")) if dataset is None else dataset
    x = np.asarray(samples["x"][0])
    positives = np.asarray(dataset.hallucinated(x), dtype=bool)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    title = f"{dataset.name}, seed {result['seeds'][0]}: {positives.mean():.2%} hallucinated"
    mixture = getattr(dataset, "mixture", None)
    if mixture is not None and x.ndim == 2 and x.shape[1] in (1, 2):
        plot = plots.plot_histogram_1d if x.shape[1] == 1 else plots.plot_scatter_2d
        written.append(plots.save(plot(x, mixture, positives, title=title), directory / "samples.png"))
    elif x.ndim == 4 and x.shape[-1] == 1:
        import jax

        reference = np.asarray(dataset.reference(jax.random.key(0), 8))
        rule = result.get("label") or "by the data set's rule"
        written.append(plots.save(plots.plot_image_grid({
            "the data set's images": reference, "generated, in support": x[~positives][:16],
            f"generated, hallucinated ({rule})": x[positives][:16]}, title=title), directory / "samples.png"))
    if not (positives.all() or not positives.any()):
        scores = {"hal": samples["hal"], **samples.get("scores", {})}
        curves = {name: (*detection.roc_curve(np.asarray(v[0]), positives)[:2],
                         result["per_seed"][0]["scores"][name]["auroc"]) for name, v in scores.items()}
        written.append(plots.save(plots.plot_roc(curves, title=f"Detecting hallucinations (seed {result['seeds'][0]})"),
                                  directory / "roc.png"))
    return written
