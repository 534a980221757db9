"""Labels, ROC/AUROC, operating points, filters and the detection summary, against hand-computed cases."""
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import detection as hl
from mijax import filters
from mijax.data import mixtures as dm
from mijax import mixtures


def _pairwise_auroc(scores, positives):
    """The definition: P(positive > negative) + P(tie) / 2 over all pairs."""
    pos, neg = scores[positives], scores[~positives]
    diff = pos[:, None] - neg[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


# ---------------------------------------------------------------------------------------------
# Labels and rates.

def test_labels_on_hand_made_points_jitted():
    mixture = mixtures.gaussian1d()  # modes 1, 2, 3; std 0.05, so 5 std = 0.25
    x = jnp.array([[1.0], [1.24], [1.26], [1.5], [2.76], [3.1], [0.7], [3.3]], jnp.float32)
    expected = np.array([False, False, True, True, False, False, True, True])
    labels = chex.assert_max_traces(dm.labels, n=1)
    jitted = jax.jit(labels)
    got = jitted(mixture, x, 5.0)
    chex.assert_shape(got, (8,))
    np.testing.assert_array_equal(np.asarray(got), expected)
    np.testing.assert_array_equal(np.asarray(jitted(mixture, x, 6.5)), [0, 0, 0, 1, 0, 0, 0, 0])  # no retrace
    rate = jax.jit(dm.hallucination_rate)(mixture, x, 5.0)
    chex.assert_shape(rate, ())
    assert float(rate) == pytest.approx(4 / 8)


def test_labels_2d_use_the_nearest_modes_std():
    mixture = mixtures.make_mixture([[0.0, 0.0], [10.0, 0.0]], [0.1, 1.0])
    x = jnp.array([[0.3, 0.35], [0.0, 0.6], [10.0, 4.9], [13.0, 4.1]], jnp.float32)  # 4.6, 6, 4.9, 5.08 std
    np.testing.assert_array_equal(np.asarray(jax.jit(dm.labels)(mixture, x, 5.5)), [False, True, False, False])
    np.testing.assert_array_equal(np.asarray(jax.jit(dm.labels)(mixture, x, 5.0)), [False, True, False, True])


def test_rate_table_matches_rates_and_true_mass():
    mixture = mixtures.gaussian1d()
    x = jnp.array([[1.0], [1.17], [1.22], [1.27], [1.32], [2.0]], jnp.float32)  # 0, 3.4, 4.4, 5.4, 6.4 std, 0
    table = dm.rate_table(mixture, x, ks=(3, 4, 5, 6))
    assert [row["k"] for row in table] == [3.0, 4.0, 5.0, 6.0]
    assert [row["rate"] for row in table] == pytest.approx([4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert table[2]["true_mass"] == pytest.approx(5.733e-7, rel=1e-3)
    assert [row["true_mass"] for row in table] == [mixtures.mass_beyond(k, 1) for k in (3, 4, 5, 6)]
    json.dumps(table, allow_nan=False)


# ---------------------------------------------------------------------------------------------
# ROC and AUROC.

def test_roc_and_auroc_hand_computed():
    scores, positives = np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)
    fpr, tpr, thresholds = hl.roc_curve(scores, positives)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.8, 0.4, 0.35, 0.1])
    np.testing.assert_array_equal(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 0.5, 1])
    assert hl.auroc(scores, positives) == 0.75
    assert hl.auroc(jnp.asarray(scores, jnp.float32), jnp.asarray(positives)) == 0.75  # jax inputs


def test_ties_move_together_and_count_half():
    # Positives {0.5, 0.9}, negatives {0.5, 0.2}: pairs 1/2 + 1 + 1 + 1 = 3.5 of 4.
    scores, positives = np.array([0.5, 0.5, 0.2, 0.9]), np.array([1, 0, 0, 1], bool)
    fpr, tpr, thresholds = hl.roc_curve(scores, positives)
    np.testing.assert_array_equal(thresholds, [np.inf, 0.9, 0.5, 0.2])
    np.testing.assert_array_equal(tpr, [0, 0.5, 1, 1])  # the tied pair is one diagonal step
    np.testing.assert_array_equal(fpr, [0, 0, 0.5, 1])
    assert hl.auroc(scores, positives) == 0.875
    assert hl.auroc(np.ones(5), np.array([1, 0, 1, 0, 0], bool)) == 0.5  # all tied: chance


@pytest.mark.parametrize("scores,expected", [([0.1, 0.2, 0.8, 0.9], 1.0), ([0.8, 0.9, 0.1, 0.2], 0.0)])
def test_perfect_and_reversed(scores, expected):
    positives = np.array([0, 0, 1, 1], bool)
    assert hl.auroc(np.array(scores), positives) == expected
    fpr, tpr, _ = hl.roc_curve(np.array(scores), positives)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_equals_trapezoid_area_and_pairwise_definition(seed):
    rng = np.random.default_rng(seed)
    n = 400
    positives = rng.random(n) < 0.3
    scores = np.round(rng.normal(size=n) + 0.8 * positives, 1)  # rounding makes many cross-class ties
    fpr, tpr, thresholds = hl.roc_curve(scores, positives)
    assert np.all(np.diff(thresholds) < 0) and np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    value = hl.auroc(scores, positives)
    assert value == pytest.approx(area, abs=1e-12)
    assert value == pytest.approx(_pairwise_auroc(scores, positives), abs=1e-12)
    assert 0.5 < value < 1.0


def test_degenerate_classes_give_nan():
    scores = np.array([0.1, 0.2, 0.3])
    assert math.isnan(hl.auroc(scores, np.zeros(3, bool)))
    assert math.isnan(hl.auroc(scores, np.ones(3, bool)))
    assert math.isnan(hl.auroc(np.zeros(0), np.zeros(0, bool)))
    fpr, tpr, _ = hl.roc_curve(scores, np.zeros(3, bool))
    assert np.all(np.isnan(tpr)) and fpr[-1] == 1.0
    point = hl.retained_at_removal(scores, np.zeros(3, bool))
    assert point["threshold"] == math.inf and math.isnan(point["removed"]) and point["retained"] == 1.0
    point = hl.removal_at_retention(scores, np.ones(3, bool))
    assert point["threshold"] == 0.1 and point["removed"] == 1.0 and math.isnan(point["retained"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NaN"):
        hl.auroc(np.array([0.1, np.nan]), np.array([0, 1], bool))
    with pytest.raises(ValueError, match=r"\[N\]"):
        hl.roc_curve(np.zeros(3), np.zeros(4, bool))
    with pytest.raises(ValueError, match="removal"):
        hl.retained_at_removal(np.zeros(3), np.array([0, 1, 1], bool), removal=1.5)
    with pytest.raises(ValueError, match="retention"):
        hl.removal_at_retention(np.zeros(3), np.array([0, 1, 1], bool), retention=-0.1)


# ---------------------------------------------------------------------------------------------
# Operating points: removed means score >= threshold.

SCORES = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
POSITIVES = np.array([0, 0, 1, 0, 1, 1], bool)  # positives 0.3, 0.5, 0.6; negatives 0.1, 0.2, 0.4


@pytest.mark.parametrize("removal,threshold,removed,retained", [
    (0.6, 0.5, 2 / 3, 1.0),  # m = ceil(1.8) = 2: the 2nd largest positive
    (2 / 3, 0.5, 2 / 3, 1.0),  # exactly 2 of 3
    (0.95, 0.3, 1.0, 2 / 3),  # m = 3: 0.4 is removed too
    (1.0, 0.3, 1.0, 2 / 3),
    (0.2, 0.6, 1 / 3, 1.0),
    (0.0, math.inf, 0.0, 1.0),  # nothing needs removing: the largest threshold removes nothing
])
def test_retained_at_removal_hand_computed(removal, threshold, removed, retained):
    point = hl.retained_at_removal(SCORES, POSITIVES, removal)
    assert point == {"threshold": threshold, "removed": pytest.approx(removed), "retained": pytest.approx(retained)}


@pytest.mark.parametrize("retention,threshold,removed,retained", [
    (0.6, 0.3, 1.0, 2 / 3),  # q = 2: above 0.2, the smallest score is 0.3
    (2 / 3, 0.3, 1.0, 2 / 3),
    (0.96, 0.5, 2 / 3, 1.0),  # q = 3: above 0.4
    (0.3, 0.2, 1.0, 1 / 3),  # q = 1: above 0.1
    (0.0, 0.1, 1.0, 0.0),  # nothing needs keeping: the smallest threshold removes everything
])
def test_removal_at_retention_hand_computed(retention, threshold, removed, retained):
    point = hl.removal_at_retention(SCORES, POSITIVES, retention)
    assert point == {"threshold": threshold, "removed": pytest.approx(removed), "retained": pytest.approx(retained)}


def test_operating_points_with_ties():
    scores, positives = np.array([0.1, 0.3, 0.3, 0.3, 0.9]), np.array([0, 1, 0, 1, 1], bool)
    # Removing half the positives (m = 2) reaches the tie at 0.3, which goes as a whole.
    assert hl.retained_at_removal(scores, positives, 0.5) == {"threshold": 0.3, "removed": 1.0, "retained": 0.5}
    assert hl.retained_at_removal(scores, positives, 0.3) == {"threshold": 0.9, "removed": pytest.approx(1 / 3),
                                                              "retained": 1.0}
    assert hl.removal_at_retention(scores, positives, 0.5) == {"threshold": 0.3, "removed": 1.0, "retained": 0.5}
    # Keeping the negative at 0.3 keeps the positives tied with it.
    assert hl.removal_at_retention(scores, positives, 1.0) == {"threshold": 0.9, "removed": pytest.approx(1 / 3),
                                                               "retained": 1.0}


def test_target_counts_survive_rounding():
    # 0.07 * 100 = 7.000000000000001 in floating point; it must still ask for 7 of 100 positives.
    scores = np.arange(200, dtype=np.float64)
    positives = np.arange(200) >= 100  # positives are the 100 largest scores, 100..199
    point = hl.retained_at_removal(scores, positives, 0.07)
    assert point["threshold"] == 193.0 and point["removed"] == 0.07
    point = hl.removal_at_retention(scores, ~positives, 0.07)  # negatives now 100..199
    assert point["threshold"] == 107.0 and point["retained"] == 0.07


@pytest.mark.parametrize("seed", [0, 1])
def test_operating_points_are_optimal_points_of_the_roc_curve(seed):
    rng = np.random.default_rng(seed)
    positives = rng.random(300) < 0.2
    scores = np.round(rng.normal(size=300) + 1.5 * positives, 1)
    fpr, tpr, thresholds = hl.roc_curve(scores, positives)

    def roc_index(point):
        j = int(np.flatnonzero(thresholds == point["threshold"])[0])
        assert point["removed"] == tpr[j] and point["retained"] == 1 - fpr[j]
        return j

    j = roc_index(hl.retained_at_removal(scores, positives, 0.9))
    assert tpr[j] >= 0.9 and 1 - fpr[j] == np.max(1 - fpr[tpr >= 0.9])  # the most kept among feasible
    j = roc_index(hl.removal_at_retention(scores, positives, 0.9))
    assert 1 - fpr[j] >= 0.9 and tpr[j] == np.max(tpr[1 - fpr >= 0.9])  # the most removed among feasible


# ---------------------------------------------------------------------------------------------
# Filters.

def test_variance_filter_keeps_the_lowest_with_stable_ties():
    hal = jnp.array([0.5, 0.1, 0.3, 0.1, 0.9, 0.3], jnp.float32)
    variance_filter = jax.jit(chex.assert_max_traces(filters.variance_filter, n=2), static_argnames="n")
    kept = variance_filter(hal, n=3)
    chex.assert_shape(kept, (3,))
    np.testing.assert_array_equal(np.asarray(kept), [1, 2, 3])  # 0.1, 0.1, then the first 0.3
    np.testing.assert_array_equal(np.asarray(variance_filter(hal, n=5)), [0, 1, 2, 3, 5])
    np.testing.assert_array_equal(np.asarray(variance_filter(hal + 1.0, n=3)), [1, 2, 3])  # cached
    assert filters.variance_filter(hal, 0).shape == (0,)
    np.testing.assert_array_equal(np.asarray(filters.variance_filter(jnp.array([jnp.nan, 2.0, 1.0]), 2)), [1, 2])
    with pytest.raises(ValueError):
        filters.variance_filter(hal, 7)


def test_random_filter_distinct_and_reproducible():
    random_filter = jax.jit(filters.random_filter, static_argnames=("num", "n"))
    key = jax.random.key(3)
    kept = np.asarray(random_filter(key, num=1000, n=900))
    assert kept.shape == (900,) and kept.dtype == np.int32
    assert len(np.unique(kept)) == 900 and kept.min() >= 0 and kept.max() < 1000
    np.testing.assert_array_equal(kept, np.sort(kept))
    np.testing.assert_array_equal(kept, np.asarray(random_filter(key, num=1000, n=900)))
    assert not np.array_equal(kept, np.asarray(random_filter(jax.random.key(4), num=1000, n=900)))
    np.testing.assert_array_equal(np.asarray(filters.random_filter(key, 5, 5)), np.arange(5))
    with pytest.raises(ValueError):
        filters.random_filter(key, 5, 6)


def test_threshold_filter_removes_at_and_above():
    hal = jnp.array([0.1, 0.5, 0.2, 0.7], jnp.float32)
    kept = jax.jit(filters.threshold_filter)(hal, jnp.float32(0.5))
    chex.assert_shape(kept, (4,))
    np.testing.assert_array_equal(np.asarray(kept), [True, False, True, False])
    # The operating point's threshold removes exactly the fraction it reports.
    scores, positives = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), np.array([0, 0, 1, 0, 1, 1], bool)
    point = hl.retained_at_removal(scores, positives, 0.6)
    kept = np.asarray(filters.threshold_filter(jnp.asarray(scores), point["threshold"]))
    assert 1 - kept[positives].mean() == pytest.approx(point["removed"])
    assert kept[~positives].mean() == pytest.approx(point["retained"])


# ---------------------------------------------------------------------------------------------
# Blur-adjusted labels.

def test_blur_adjusted_labels_forgive_a_wide_mode_not_the_gap():
    mixture = mixtures.gaussian1d()  # modes 1, 2, 3; std 0.05
    keys = jax.random.split(jax.random.key(0), 3)
    per_mode = 10_000
    wide = 1.0 + 0.075 * jax.random.normal(keys[0], (per_mode, 1))  # 1.5x the true std
    middle = 2.0 + 0.05 * jax.random.normal(keys[1], (per_mode, 1))
    last = 3.0 + 0.05 * jax.random.normal(keys[2], (per_mode, 1))
    gap = jnp.array([[1.45], [1.5], [1.6], [2.5], [2.42], [2.6]], jnp.float32)  # >= 8 true std from a mode
    x = jnp.concatenate([wide, middle, last, gap])
    blurred, spreads = jax.jit(dm.blur_adjusted_labels)(mixture, x, 5.0)
    chex.assert_shape(blurred, (x.shape[0],))
    chex.assert_shape(spreads, (3,))
    np.testing.assert_allclose(np.asarray(spreads), [0.075, 0.05, 0.05], rtol=0.05)
    plain = np.asarray(dm.labels(mixture, x, 5.0))
    blurred = np.asarray(blurred)
    assert plain[:per_mode].sum() > 0  # the plain labels count the wide mode's tails ...
    assert blurred[:per_mode].sum() == 0  # ... the blur-adjusted ones do not,
    assert blurred[-6:].all() and plain[-6:].all()  # both catch the gap,
    assert blurred[per_mode:-6].sum() <= plain[per_mode:-6].sum()  # and a true-width mode is unchanged.


def test_blur_adjusted_labels_fall_back_to_the_true_std():
    mixture = mixtures.make_mixture([0.0, 10.0], 0.1)
    # Nothing lies within 10 std of mode 1, so its spread is unknown: the last point is judged by the true std.
    x = jnp.array([[0.0], [0.01], [-0.02], [0.6], [8.5]], jnp.float32)
    blurred, spreads = dm.blur_adjusted_labels(mixture, x, 5.0)
    assert math.isnan(float(spreads[1])) and math.isfinite(float(spreads[0]))
    np.testing.assert_array_equal(np.asarray(blurred), [False, False, False, True, True])


# ---------------------------------------------------------------------------------------------
# Summary.

SUMMARY_KEYS = {"n", "num_in_support", "num_hallucinated", "hallucination_rate", "auroc",
                "retained_at_removal", "removal_at_retention", "hal_median_in_support", "hal_median_hallucinated"}


def test_detection_summary_on_a_synthetic_case():
    mixture = mixtures.gaussian1d()
    x = jnp.array([[1.0], [1.1], [2.0], [2.05], [3.0], [2.9], [1.5], [2.5]], jnp.float32)  # last two: the gap
    hal = jnp.array([1e-6, 2e-6, 3e-6, 4e-6, 5e-6, 5e-3, 1e-3, 2e-3], jnp.float32)  # one suspicious in-support
    summary = hl.detection_summary(hal, dm.labels(mixture, x, 5.0))
    assert set(summary) == SUMMARY_KEYS
    assert (summary["n"], summary["num_in_support"], summary["num_hallucinated"]) == (8, 6, 2)
    assert summary["hallucination_rate"] == 0.25
    assert summary["auroc"] == pytest.approx(10 / 12)  # each hallucination beats 5 of 6
    removal = summary["retained_at_removal"]
    assert removal["target"] == 0.95 and removal["removed"] == 1.0 and removal["retained"] == pytest.approx(5 / 6)
    assert removal["threshold"] == pytest.approx(1e-3)
    retention = summary["removal_at_retention"]  # keeping 6 of 6 means keeping everything below 5e-3
    assert retention["target"] == 0.96 and retention["retained"] == 1.0 and retention["removed"] == 0.0
    assert summary["hal_median_in_support"] == pytest.approx(3.5e-6)
    assert summary["hal_median_hallucinated"] == pytest.approx(1.5e-3)
    json.dumps(summary, allow_nan=False)


def test_detection_summary_without_hallucinations_is_still_json():
    mixture = mixtures.gaussian1d()
    x = jnp.array([[1.0], [2.0], [3.0]], jnp.float32)
    summary = hl.detection_summary(jnp.array([1.0, 2.0, 3.0]), dm.labels(mixture, x))
    assert summary["auroc"] is None and summary["hal_median_hallucinated"] is None
    assert summary["retained_at_removal"]["threshold"] is None and summary["retained_at_removal"]["retained"] == 1.0
    json.dumps(summary, allow_nan=False)
