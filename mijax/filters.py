"""Filters: which samples of a pool to keep, from their Hal (jit-able, fixed sizes).

- ``none``: the first n of the pool (the pool is i.i.d., so this is "sample n, keep all");
- ``random``: n of the pool at random (the paper's control);
- ``variance``: the n with the lowest Hal (the paper's filter);
- ``threshold``: the samples with Hal below a threshold, as n rows (see :func:`threshold_keep_indices`);
- ``certified``: the same with a threshold certified by :func:`certify_threshold` (Learn-then-Test), so that
  the hallucination rate among the samples it keeps is at most ``alpha`` with probability >= 1 - ``delta``.

One convention throughout mijax: a threshold ``t`` KEEPS a sample when ``score < t`` and removes it when
``score >= t`` (:mod:`mijax.detection` uses the same).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

FILTERS = ("none", "random", "variance", "threshold", "certified")


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


def threshold_keep_indices(key: jax.Array, hal: jnp.ndarray, threshold, n: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The threshold filter with a fixed output size.

    Accepted samples (``hal < threshold``) in a random order fixed by ``key``, cycled to fill ``n`` rows
    when fewer than ``n`` are accepted (row i is accepted sample i mod A), the first ``n`` when more.
    With no sample accepted, the ``n`` lowest-Hal samples (the variance filter).

    Returns:
      (int32 indices [n], number accepted A [] int32).
    """
    accepted = threshold_filter(hal, threshold)
    count = jnp.sum(accepted).astype(jnp.int32)
    priority = jnp.where(accepted, jax.random.uniform(key, hal.shape), 2.0)  # accepted first, in random order
    order = jnp.argsort(priority, stable=True)
    rows = jnp.arange(n) % jnp.maximum(count, 1)
    cycled = order[rows]
    fallback = jnp.argsort(hal, stable=True)[:n]
    return jnp.where(count > 0, cycled, fallback).astype(jnp.int32), count


def filter_indices(name: str, key: jax.Array, hal: jnp.ndarray, n: int, threshold=jnp.inf) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Indices [n] of the pool samples (Hal [P]) that filter ``name`` keeps, and how many it accepted.

    ``none`` keeps the first n, ``random`` n at random (key), ``variance`` the n lowest Hal,
    ``threshold`` and ``certified`` see :func:`threshold_keep_indices` (they differ in where their threshold
    comes from, not in how it is applied). The count is n except for these two.
    """
    p = hal.shape[0]
    if not 0 < n <= p:
        raise ValueError(f"cannot keep {n} of {p} samples")
    full = jnp.asarray(n, jnp.int32)
    if name == "none":
        return jnp.arange(n, dtype=jnp.int32), full
    if name == "random":
        return random_filter(key, p, n), full
    if name == "variance":
        return variance_filter(hal, n), full
    if name in ("threshold", "certified"):
        return threshold_keep_indices(key, hal, threshold, n)
    raise ValueError(f"unknown filter {name!r}; choose from {', '.join(FILTERS)}")


def calibrate_threshold(hal: np.ndarray, keep: int) -> np.ndarray:
    """Per-row thresholds: ``hal[s] < t[s]`` keeps ``keep`` samples of row s (the midpoint between the
    keep-th and the next smallest Hal), for hal [S, P]. Returns float64 [S]."""
    hal = np.sort(np.asarray(hal, dtype=np.float64), axis=1)
    if not 0 < keep <= hal.shape[1]:
        raise ValueError(f"cannot keep {keep} of {hal.shape[1]} samples")
    if keep == hal.shape[1]:
        return np.full(hal.shape[0], np.inf)
    return 0.5 * (hal[:, keep - 1] + hal[:, keep])


# ---------------------------------------------------------------------------------------------
# A threshold with a guarantee.

def certify_threshold(scores, hallucinated, alpha: float, delta: float = 0.1, grid: int = 100,
                      seed: int = 0) -> dict:
    """A threshold that keeps the hallucination rate among the samples it keeps at most ``alpha``, with
    probability at least ``1 - delta`` over the calibration draw (Learn-then-Test, fixed-sequence testing).

    The calibration samples (``scores`` [N], higher = more suspicious; ``hallucinated`` bool [N], their labels)
    are split at random (``seed``) into two halves. A threshold keeps ``score < t``; for a candidate t, the m
    samples it keeps hold k hallucinations, and given m they are m independent draws, each hallucinated with
    R(t), the rate among the samples t keeps; so ``P(Binomial(m, alpha) <= k)`` is a p-value for "R(t) >= alpha".
    The first half places ``grid`` candidates (the quantiles of its scores at the shares 1/grid, ..., 1, and
    one that keeps everything) and orders them by their p-values there; the second half tests them in that
    order, each at level ``delta``, and stops at the first it cannot reject. The candidates rejected before
    that are certified together with probability >= 1 - delta (the order does not depend on the second half);
    the one that keeps the most is returned.

    Assumes the samples to be filtered are exchangeable with the calibration samples: drawn the same way, from
    the same model and sampler, scored by the same detector. Labels come from the data set (beyond k sigma of
    every mode for the mixtures, two copies of a shape for SIMPLE SHAPES).

    Returns:
      {"threshold": the certified threshold (-inf where none is: keep nothing), "accepted": the share of the
      second half it keeps, "kept": m, "hallucinated": k (of that half), "bound": the one-sided (1 - delta)
      Clopper-Pearson upper bound of R at it, "alpha", "delta", "calibration": N, "certified": how many
      candidates were}.
    """
    from scipy import stats as scipy_stats

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    hallucinated = np.asarray(hallucinated, dtype=bool).reshape(-1)
    if scores.shape != hallucinated.shape:
        raise ValueError(f"scores {scores.shape} and labels {hallucinated.shape} differ in length")
    if not (0.0 < alpha < 1.0 and 0.0 < delta < 1.0):
        raise ValueError(f"alpha and delta must be in (0, 1), got {alpha} and {delta}")
    if scores.size < 4 or not np.all(np.isfinite(scores)):
        raise ValueError("certify_threshold needs at least 4 calibration samples, with finite scores")
    order = np.random.default_rng(seed).permutation(scores.size)
    halves = [(scores[i], hallucinated[i]) for i in (order[: scores.size // 2], order[scores.size // 2:])]
    candidates = np.unique(np.quantile(halves[0][0], np.arange(1, grid + 1) / grid, method="higher"))
    candidates = np.append(candidates, np.inf)

    def counts(half, t):
        kept = half[0] < t
        return int(kept.sum()), int(half[1][kept].sum())

    def p_value(m, k):
        return float(scipy_stats.binom.cdf(k, m, alpha)) if m else 1.0

    first = [p_value(*counts(halves[0], t)) for t in candidates]
    best, certified = {"threshold": -np.inf, "kept": 0, "hallucinated": 0}, 0
    for j in sorted(range(len(candidates)), key=lambda j: (first[j], -candidates[j])):
        m, k = counts(halves[1], candidates[j])
        if p_value(m, k) > delta:
            break
        certified += 1
        if m > best["kept"]:
            best = {"threshold": float(candidates[j]), "kept": m, "hallucinated": k}
    m, k = best["kept"], best["hallucinated"]
    bound = float(scipy_stats.beta.ppf(1.0 - delta, k + 1, m - k)) if m and k < m else 1.0
    return {**best, "accepted": m / halves[1][0].size, "bound": bound, "alpha": alpha, "delta": delta,
            "calibration": int(scores.size), "certified": certified}


def split_check(scores, hallucinated, alpha: float, delta: float = 0.1, splits: int = 200, seed: int = 0,
                grid: int = 100, certify=None) -> dict:
    """Does :func:`certify_threshold` hold its guarantee on one labelled pool? Split the pool at random into a
    calibration half and a test half ``splits`` times; each time certify a threshold on the calibration half
    and measure the hallucination rate among the test samples it keeps.

    The guarantee says that the share of splits whose test rate exceeds ``alpha`` is at most ``delta`` (up to
    the test half's own sampling error, which a finite test half adds). The splits reuse one pool, so they are
    not independent draws: the share estimates the failure probability of calibration sets drawn from this
    pool, and its binomial interval understates the error of that estimate as a statement about the model.

    Args:
      scores: [N] the score of each sample (higher = more suspicious; a threshold keeps ``score < t``).
      hallucinated: bool [N] the samples' labels.
      alpha, delta: the target rate and failure probability, both in (0, 1).
      splits: how many random splits; seed: their generator's seed (split i certifies with seed + i).
      grid: :func:`certify_threshold`'s candidates. certify: another way to choose the threshold, called as
        ``certify(scores, hallucinated, alpha, delta, seed)`` and returning {"threshold": t, ...} (default:
        :func:`certify_threshold`), e.g. to see what the check says of a threshold without the guarantee.
    Returns:
      {"splits", "alpha", "delta", "n": N, "base_rate": the pool's hallucination rate,
      "over_alpha": the number of splits whose test rate among kept samples exceeds alpha,
      "share_over_alpha": that number / splits, "share_ci": its two-sided 95% Clopper-Pearson interval,
      "tolerance": delta + 3 sqrt(delta (1 - delta) / splits), the share that a failure probability of exactly
      delta stays below but for ~0.2% of the time (binomial error), "holds": share_over_alpha <= tolerance,
      "mean_accepted": the mean share of the test half kept, "mean_test_rate": the mean hallucination rate
      among the kept test samples (over the splits that keep any), "empty": the splits that keep no test
      sample, "mean_threshold": the mean finite certified threshold (None if none is)}.
    """
    from scipy import stats as scipy_stats

    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    hallucinated = np.asarray(hallucinated, dtype=bool).reshape(-1)
    if scores.shape != hallucinated.shape:
        raise ValueError(f"scores {scores.shape} and labels {hallucinated.shape} differ in length")
    if splits < 1:
        raise ValueError(f"splits must be >= 1, got {splits}")
    rng = np.random.default_rng(seed)
    half = scores.size // 2
    over, accepted, rates, thresholds = 0, [], [], []
    for i in range(splits):
        order = rng.permutation(scores.size)
        calibration, test = order[:half], order[half:]
        if certify is None:
            c = certify_threshold(scores[calibration], hallucinated[calibration], alpha, delta, grid=grid,
                                  seed=seed + i)
        else:
            c = certify(scores[calibration], hallucinated[calibration], alpha, delta, seed + i)
        kept = scores[test] < c["threshold"]
        accepted.append(float(kept.mean()))
        if kept.any():
            rate = float(hallucinated[test][kept].mean())
            rates.append(rate)
            over += rate > alpha
        if np.isfinite(c["threshold"]):
            thresholds.append(c["threshold"])
    low = float(scipy_stats.beta.ppf(0.025, over, splits - over + 1)) if over else 0.0
    high = float(scipy_stats.beta.ppf(0.975, over + 1, splits - over)) if over < splits else 1.0
    share = over / splits
    tolerance = delta + 3.0 * float(np.sqrt(delta * (1.0 - delta) / splits))
    return {"splits": splits, "alpha": alpha, "delta": delta, "n": int(scores.size),
            "base_rate": float(hallucinated.mean()), "over_alpha": int(over), "share_over_alpha": share,
            "share_ci": [low, high], "tolerance": tolerance, "holds": bool(share <= tolerance),
            "mean_accepted": float(np.mean(accepted)), "mean_test_rate": float(np.mean(rates)) if rates else None,
            "empty": splits - len(rates), "mean_threshold": float(np.mean(thresholds)) if thresholds else None}
