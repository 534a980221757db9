"""Hallucination labels, detection by Hal (ROC, AUROC, operating points) and sample filters.

Labels (SPEC section 6): a sample is *hallucinated* when its distance to the nearest mode exceeds
k times that mode's std (k = 5 by default); otherwise it is *in support*. Detection scores are Hal
values: a higher score is more suspicious, and hallucinations are the positives.

One convention throughout: a threshold ``t`` FLAGS (removes) a sample when ``score >= t`` and KEEPS
it when ``score < t``. The ROC thresholds and both operating points are sample scores (or +inf,
which removes nothing), so every operating point is a point of :func:`roc_curve`, and all the
numbers can be checked by hand on small arrays.

Split of work: labels and filters are ``jnp`` and jit-able (fixed shapes); ROC, AUROC and operating
points have data-dependent shapes or need exact counts, so they run on the host in numpy float64
(integer counts, so no rounding at any N) and accept numpy or jax arrays.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mijax.mixtures import GaussianMixture, in_support, mass_beyond, nearest_mode

MAD_TO_STD = 1.4826  # 1 / Phi^-1(3/4): MAD of a Gaussian times this is its std
_COUNT_SLACK = 1e-9  # relative: 0.07 * 100 = 7.000000000000001 must ask for 7 samples, not 8


# ---------------------------------------------------------------------------------------------
# Labels and rates (jit-able).

def labels(mixture: GaussianMixture, x: jnp.ndarray, k: float = 5.0) -> jnp.ndarray:
    """Hallucinated: farther than ``k`` stds from the nearest mode.

    Args:
      mixture: the true mixture ([K, d] means).
      x: samples [N, d].
      k: the support radius in units of the nearest mode's std.
    Returns:
      bool [N], True for hallucinations (the complement of ``mixtures.in_support``).
    """
    return ~in_support(mixture, x, k)


def hallucination_rate(mixture: GaussianMixture, x: jnp.ndarray, k: float = 5.0) -> jnp.ndarray:
    """The fraction of samples x [N, d] farther than k stds from their nearest mode; a float32 scalar."""
    return jnp.mean(labels(mixture, x, k).astype(jnp.float32))


def rate_table(mixture: GaussianMixture, x: jnp.ndarray, ks: Sequence[float] = (3, 4, 5, 6)) -> list[dict]:
    """Hallucination rate of x [N, d] at several radii, beside the true law's mass beyond each.

    Returns:
      ``[{"k": float, "rate": float, "true_mass": float}, ...]`` in the order of ``ks``;
      ``true_mass`` is ``mixtures.mass_beyond(k, d)``, the rate an exact sampler would have for
      well-separated modes.
    """
    dist = np.asarray(nearest_mode(mixture, x)[1])
    return [{"k": float(k), "rate": float(np.mean(dist > k)) if dist.size else math.nan,
             "true_mass": mass_beyond(float(k), mixture.dim)} for k in ks]


def blur_adjusted_labels(mixture: GaussianMixture, x: jnp.ndarray, k: float = 5.0,
                         window: float = 10.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Labels that forgive a model for blurring its modes, but not for filling the gaps between them.

    A model whose modes come out somewhat wider than the truth puts many samples beyond k true stds
    that are not interpolations. Per mode, estimate the model's own spread from the samples assigned
    to it (nearest mode) that lie within ``window`` true stds of it, so the gap does not pollute the
    estimate: ``spread = 1.4826 * median |x_ic - median_c|``, pooled over samples i and coordinates c
    (median_c: the per-coordinate median of those samples, the model's own centre). A sample is then
    hallucinated when its distance to the nearest mode's true mean exceeds
    ``k * max(true std, spread)``.

    Args:
      mixture: the true mixture ([K, d] means, [K] stds).
      x: samples [N, d].
      k: the support radius in units of max(true std, estimated spread).
      window: only samples within this many true stds of a mode estimate its spread.
    Returns:
      (hallucinated bool [N], spreads [K]); a spread is NaN where no sample estimates it, and the
      true std is used there. Memory is O(K N d): a masked [K, N, d] array feeds the medians.
    """
    num_modes = mixture.means.shape[0]
    n, d = x.shape
    idx, dist = nearest_mode(mixture, x)  # [N], [N] in true stds
    member = (idx[None, :] == jnp.arange(num_modes)[:, None]) & (dist <= window)[None, :]  # [K, N]
    values = jnp.where(member[:, :, None], x[None, :, :], jnp.nan)  # [K, N, d]
    centre = jnp.nanmedian(values, axis=1)  # [K, d]
    deviations = jnp.abs(values - centre[:, None, :]).reshape(num_modes, n * d)  # [K, N d]
    spreads = MAD_TO_STD * jnp.nanmedian(deviations, axis=1)  # [K]
    scale = jnp.fmax(mixture.stds, spreads)  # fmax: a NaN spread falls back to the true std
    distance = dist * mixture.stds[idx]  # [N], in data units
    return distance > k * scale[idx], spreads


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
# Filters (SPEC sections 6 and 7; jit-able with static sizes).

def variance_filter(hal: jnp.ndarray, n: int) -> jnp.ndarray:
    """Keep the ``n`` samples with the lowest Hal (the paper's "variance" filter).

    Ties are broken by index (a stable sort), NaN Hal counts as the highest.

    Args:
      hal: [N]. n: how many to keep, 0 <= n <= N (static under jit).
    Returns:
      int32 [n] indices in increasing order, so ``x[indices]`` keeps the samples' order.
    """
    if not 0 <= n <= hal.shape[0]:
        raise ValueError(f"cannot keep {n} of {hal.shape[0]} samples")
    return jnp.sort(jnp.argsort(hal, stable=True)[:n]).astype(jnp.int32)


def random_filter(key: jax.Array, num: int, n: int) -> jnp.ndarray:
    """Keep ``n`` of ``num`` samples uniformly at random, without replacement (the "random" filter).

    Args:
      key: a PRNG key; the same key gives the same indices.
      num: the number of samples; n: how many to keep, 0 <= n <= num (both static under jit).
    Returns:
      int32 [n] distinct indices in increasing order.
    """
    if not 0 <= n <= num:
        raise ValueError(f"cannot keep {n} of {num} samples")
    return jnp.sort(jax.random.choice(key, num, (n,), replace=False)).astype(jnp.int32)


def threshold_filter(hal: jnp.ndarray, threshold) -> jnp.ndarray:
    """The samples a threshold keeps: bool [N], True where ``hal < threshold`` (>= is removed)."""
    return hal < threshold


# ---------------------------------------------------------------------------------------------
# Summary.

def _finite_or_none(value: float):
    """JSON has no NaN or infinity: write them as null."""
    value = float(value)
    return value if math.isfinite(value) else None


def detection_summary(mixture: GaussianMixture, x: jnp.ndarray, hal: jnp.ndarray, k: float = 5.0,
                      removal: float = 0.95, retention: float = 0.96) -> dict[str, Any]:
    """How well Hal detects hallucinations on one set of samples; a JSON-able dict.

    Args:
      mixture: the true mixture. x: samples [N, d]. hal: their Hal [N].
      k: the support radius of the labels, in stds.
      removal, retention: the targets of the two operating points.
    Returns:
      ``{"n", "k", "num_in_support", "num_hallucinated", "hallucination_rate", "true_mass_beyond_k",
      "auroc", "retained_at_removal": {"target", "threshold", "removed", "retained"},
      "removal_at_retention": {...the same...}, "hal_median_in_support", "hal_median_hallucinated"}``;
      undefined values (an empty class, an infinite threshold) are None.
    """
    positives = np.asarray(labels(mixture, x, k))
    hal = np.asarray(hal, dtype=np.float64)
    n = int(positives.size)
    num_hallucinated = int(positives.sum())

    def point(fn, target):
        return {"target": float(target), **{key: _finite_or_none(v) for key, v in fn(hal, positives, target).items()}}

    def median(values):
        return _finite_or_none(np.median(values)) if values.size else None

    return {
        "n": n,
        "k": float(k),
        "num_in_support": n - num_hallucinated,
        "num_hallucinated": num_hallucinated,
        "hallucination_rate": _finite_or_none(num_hallucinated / n if n else math.nan),
        "true_mass_beyond_k": mass_beyond(float(k), mixture.dim),
        "auroc": _finite_or_none(auroc(hal, positives)),
        "retained_at_removal": point(retained_at_removal, removal),
        "removal_at_retention": point(removal_at_retention, retention),
        "hal_median_in_support": median(hal[~positives]),
        "hal_median_hallucinated": median(hal[positives]),
    }
