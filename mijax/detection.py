"""Detecting hallucinations from a score: ROC, AUROC and the paper's two operating points.

Everything here takes scores and labels only: ``scores [N]`` (Hal or any detector; higher is more
suspicious) and ``positives [N]`` (True for hallucinations, from a data set's labels, see
:mod:`mijax.data`).

One convention throughout: a threshold ``t`` FLAGS (removes) a sample when ``score >= t`` and KEEPS
it when ``score < t``. The ROC thresholds and both operating points are sample scores (or +inf,
which removes nothing), so every operating point is a point of :func:`roc_curve`, and all the
numbers can be checked by hand on small arrays. They run on the host in numpy float64 (integer
counts, so no rounding at any N) and accept numpy or jax arrays.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from mijax.store import finite_or_none

_COUNT_SLACK = 1e-9  # relative: 0.07 * 100 = 7.000000000000001 must ask for 7 samples, not 8


# ---------------------------------------------------------------------------------------------
# Detection: ROC, AUROC and operating points (host-side numpy, exact counts).

def _scores_and_classes(scores, positives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate; return (scores float64 [N], positive scores sorted ascending, negative scores ditto)."""
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives)
    if scores.ndim != 1 or positives.shape != scores.shape:
        raise ValueError(f"scores and positives must both be [N], got {scores.shape} and {positives.shape}")
    if np.any(np.isnan(scores)):
        raise ValueError("scores must not be NaN")
    positives = positives.astype(bool)
    return scores, np.sort(scores[positives]), np.sort(scores[~positives])


def _fraction(count, total):
    """count / total as float64, NaN where total is 0 (no crash, no warning)."""
    count = np.asarray(count, dtype=np.float64)
    return count / total if total else np.full_like(count, np.nan)


def _count_at_least(sorted_ascending: np.ndarray, thresholds) -> np.ndarray:
    """How many entries are >= each threshold (flagged)."""
    return sorted_ascending.size - np.searchsorted(sorted_ascending, thresholds, side="left")


def _count_below(sorted_ascending: np.ndarray, thresholds) -> np.ndarray:
    """How many entries are < each threshold (kept)."""
    return np.searchsorted(sorted_ascending, thresholds, side="left")


def roc_curve(scores, positives) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve of flagging samples whose score is >= a threshold.

    The thresholds are +inf (flags nothing: the (0, 0) end) and then every distinct score in
    decreasing order, down to the smallest (flags everything: the (1, 1) end). Tied scores are
    flagged together, so a tie between positives and negatives is one diagonal segment.

    Args:
      scores: [N], higher is more suspicious (Hal); NaN is rejected.
      positives: [N] bool, True for hallucinations.
    Returns:
      (fpr [M + 1], tpr [M + 1], thresholds [M + 1]) float64 for M distinct scores; fpr (tpr) is all
      NaN when there are no negatives (positives).
    Raises:
      ValueError: mismatched shapes or NaN scores.
    """
    scores, pos, neg = _scores_and_classes(scores, positives)
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    tpr = _fraction(_count_at_least(pos, thresholds), pos.size)
    fpr = _fraction(_count_at_least(neg, thresholds), neg.size)
    return fpr, tpr, thresholds


def auroc(scores, positives) -> float:
    """Area under the ROC curve by the Mann-Whitney statistic.

    ``P(score of a random positive > score of a random negative) + P(equal) / 2``, from exact integer
    counts; it equals the trapezoid area under :func:`roc_curve`. 1 is perfect separation, 0.5
    chance, 0 perfectly reversed.

    Args:
      scores: [N], higher is more suspicious. positives: [N] bool.
    Returns:
      a float; NaN when there are no positives or no negatives.
    """
    _, pos, neg = _scores_and_classes(scores, positives)
    if pos.size == 0 or neg.size == 0:
        return math.nan
    below = np.searchsorted(neg, pos, side="left").astype(np.int64)  # negatives < each positive
    tied = np.searchsorted(neg, pos, side="right").astype(np.int64) - below
    twice_u = 2 * int(below.sum()) + int(tied.sum())
    return twice_u / (2.0 * pos.size * neg.size)


def _target_count(fraction: float, total: int, name: str) -> int:
    """ceil(fraction * total): the fewest samples out of ``total`` that make up ``fraction``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {fraction}")
    wanted = fraction * total
    return min(total, max(0, math.ceil(wanted - _COUNT_SLACK * wanted)))


def _operating_point(threshold: float, pos: np.ndarray, neg: np.ndarray) -> dict:
    return {"threshold": float(threshold),
            "removed": float(_fraction(_count_at_least(pos, threshold), pos.size)),
            "retained": float(_fraction(_count_below(neg, threshold), neg.size))}


def retained_at_removal(scores, positives, removal: float = 0.95) -> dict:
    """The operating point that removes at least ``removal`` of the hallucinations, keeping the most.

    Samples with ``score >= threshold`` are removed. The threshold is the LARGEST one that removes at
    least ``removal`` of the positives: the m-th largest positive score, m = ceil(removal * P)
    (+inf, removing nothing, when m = 0 or there are no positives).

    Example: scores [.1, .2, .3, .4, .5, .6], positives [0, 0, 1, 0, 1, 1], removal 0.6: m = 2,
    threshold 0.5, removed 2/3, retained 3/3.

    Returns:
      ``{"threshold", "removed", "retained"}``: removed is the fraction of positives with score >=
      threshold, retained the fraction of negatives with score < threshold (NaN for an empty class).
    """
    _, pos, neg = _scores_and_classes(scores, positives)
    m = _target_count(removal, pos.size, "removal")
    threshold = pos[pos.size - m] if m > 0 else np.inf
    return _operating_point(threshold, pos, neg)


def removal_at_retention(scores, positives, retention: float = 0.96) -> dict:
    """The operating point that keeps at least ``retention`` of the in-support samples, removing the most.

    Samples with ``score >= threshold`` are removed. The threshold is the SMALLEST sample score (or
    +inf) that keeps at least ``retention`` of the negatives, i.e. with at least q = ceil(retention
    * Q) negatives strictly below it: the smallest score greater than the q-th smallest negative
    score (the smallest score of all when q = 0).

    Example: scores [.1, .2, .3, .4, .5, .6], positives [0, 0, 1, 0, 1, 1], retention 0.6: q = 2,
    the 2nd smallest negative is 0.2, threshold 0.3, retained 2/3, removed 3/3.

    Returns:
      ``{"threshold", "removed", "retained"}`` as in :func:`retained_at_removal`.
    """
    scores, pos, neg = _scores_and_classes(scores, positives)
    q = _target_count(retention, neg.size, "retention")
    candidates = np.unique(scores)  # ascending; a threshold between two scores is one of them
    if q > 0:
        candidates = candidates[candidates > neg[q - 1]]
    threshold = candidates[0] if candidates.size else np.inf
    return _operating_point(threshold, pos, neg)


# ---------------------------------------------------------------------------------------------
# Summary.

def detection_summary(scores, positives, removal: float = 0.95, retention: float = 0.96) -> dict[str, Any]:
    """How well ``scores`` detect hallucinations on one set of samples; a JSON-able dict.

    Args:
      scores: [N] (Hal), higher is more suspicious. positives: [N] bool, True for hallucinations.
      removal, retention: the targets of the two operating points.
    Returns:
      ``{"n", "num_in_support", "num_hallucinated", "hallucination_rate", "auroc",
      "retained_at_removal": {"target", "threshold", "removed", "retained"},
      "removal_at_retention": {...the same...}, "hal_median_in_support", "hal_median_hallucinated"}``;
      undefined values (an empty class, an infinite threshold) are None.
    """
    positives = np.asarray(positives, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    n = int(positives.size)
    num_hallucinated = int(positives.sum())

    def point(fn, target):
        return {"target": float(target), **{key: finite_or_none(v) for key, v in fn(scores, positives, target).items()}}

    def median(values):
        return finite_or_none(np.median(values)) if values.size else None

    return {
        "n": n,
        "num_in_support": n - num_hallucinated,
        "num_hallucinated": num_hallucinated,
        "hallucination_rate": finite_or_none(num_hallucinated / n if n else math.nan),
        "auroc": finite_or_none(auroc(scores, positives)),
        "retained_at_removal": point(retained_at_removal, removal),
        "removal_at_retention": point(removal_at_retention, retention),
        "hal_median_in_support": median(scores[~positives]),
        "hal_median_hallucinated": median(scores[positives]),
    }
