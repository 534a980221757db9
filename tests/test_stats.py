import math

import numpy as np
import pytest

from mijax import stats
from mijax.stats import METHODS, format_ci, mean_ci, proportion_ci, t_quantile_975


def test_mean_ci_hand_computed():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    # mean 2.5, sample std sqrt(5/3), t(3) = 3.182, half width 3.182 * 1.29099 / 2
    assert ci["mean"] == 2.5 and ci["n"] == 4
    assert ci["half_width"] == pytest.approx(3.182 * math.sqrt(5 / 3) / 2)
    assert ci["low"] == pytest.approx(2.5 - ci["half_width"]) and ci["high"] == pytest.approx(2.5 + ci["half_width"])


def test_mean_ci_along_an_axis_and_one_seed():
    v = np.array([[1.0, 10.0], [3.0, 10.0]])
    ci = mean_ci(v, axis=0)
    np.testing.assert_allclose(ci["mean"], [2.0, 10.0])
    np.testing.assert_allclose(ci["half_width"], [12.706 * math.sqrt(2) / math.sqrt(2), 0.0])
    one = mean_ci([0.5])
    assert one["mean"] == 0.5 and math.isnan(one["half_width"])
    assert format_ci(one, 100, unit="%") == "50%" + " (1 seed)"


def test_t_quantiles():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042 and t_quantile_975(100) == 1.96
    assert format_ci(mean_ci([0.1, 0.2, 0.3]), 100, 2, "%").startswith("20% [")


def test_proportion_ci_keeps_a_three_seed_share_inside_0_1():
    shares = [0.62 - 0.2107, 0.62, 0.62 + 0.2107]
    assert format_ci(mean_ci(shares), 100, 2, "%") == "62% [9.7%, 1.1e+02%]"  # Student's t leaves [0, 1]
    ci = proportion_ci(shares)
    assert ci["method"] == "logit-t" and ci["n"] == 3 and ci["mean"] == pytest.approx(0.62)
    assert 0.1 < ci["low"] < 0.2 and 0.9 < ci["high"] < 0.95
    # the delta method by hand: logit(m) +- t s / (sqrt(n) m (1 - m))
    half = 4.303 * np.std(shares, ddof=1) / math.sqrt(3) / (0.62 * 0.38)
    expit = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
    assert ci["low"] == pytest.approx(expit(math.log(0.62 / 0.38) - half))
    assert ci["high"] == pytest.approx(expit(math.log(0.62 / 0.38) + half))
    assert ci["half_width"] == pytest.approx((ci["high"] - ci["low"]) / 2)


def test_proportion_ci_bounds_always_inside_0_1_and_around_the_mean():
    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 8, 30):
        v = rng.beta(0.3, 0.3, size=(n, 500))  # many near 0 and 1
        v[:, :50] = rng.choice([0.0, 1.0, 0.5], size=(n, 50))  # exact bounds too
        ci = proportion_ci(v, axis=0)
        assert np.all(0.0 <= ci["low"]) and np.all(ci["low"] <= ci["mean"]) and np.all(ci["mean"] <= ci["high"])
        assert np.all(ci["high"] <= 1.0)


def test_proportion_ci_reduces_to_sensible_values():
    # far from the bounds, with little spread: Student's t
    near = proportion_ci([0.49, 0.5, 0.51])
    t = mean_ci([0.49, 0.5, 0.51])
    assert near["low"] == pytest.approx(t["low"], abs=1e-4) and near["high"] == pytest.approx(t["high"], abs=1e-4)
    # every seed at a bound: no spread, the point
    for bound in (0.0, 1.0):
        ci = proportion_ci([bound] * 3)
        assert ci["low"] == ci["mean"] == ci["high"] == bound and ci["half_width"] == 0.0
    # towards 0 the interval shrinks below the mean and stays above 0
    low = proportion_ci([0.0, 0.0, 0.003])
    assert 0.0 < low["low"] < 0.001 < low["high"] < 1.0
    # one seed: undefined, as mean_ci; NaN values give NaN
    assert math.isnan(proportion_ci([0.4])["half_width"])
    assert format_ci(proportion_ci([0.4]), 100, unit="%") == "40% (1 seed)"
    assert math.isnan(proportion_ci([0.4, float("nan")])["low"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        proportion_ci([0.5, 1.2])


def test_interval_methods_are_named():
    assert mean_ci([0.1, 0.2])["method"] == "t" and proportion_ci([0.1, 0.2])["method"] == "logit-t"
    assert set(METHODS) == {"t", "logit-t"}


def test_mmd_is_zero_for_equal_samples_and_the_closed_form_for_two_gaussians():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 1))
    assert stats.mmd(x, x) == 0.0
    # one kernel of width w between N(0, 1) and N(mu, 1): E k over a difference Z ~ N(m, s^2) is
    # w / sqrt(w^2 + s^2) exp(-m^2 / (2 (w^2 + s^2))), with s^2 = 2 for two independent points
    mu, w, n = 1.0, 0.8, 4000
    a, b = rng.normal(size=(n, 1)), rng.normal(mu, 1.0, size=(n, 1))
    same = w / np.sqrt(w**2 + 2.0)
    expected = np.sqrt(2 * same - 2 * same * np.exp(-mu**2 / (2 * (w**2 + 2.0))))
    got = stats.mmd(a, b, scales=(1.0,), bandwidth=w)
    assert abs(got - expected) < 0.03 * expected, (got, expected)
    far = np.concatenate([a[:-1], [[1e30]]])  # one far outlier moves it by about 1 / n, not without bound
    assert abs(stats.mmd(far, b, scales=(1.0,), bandwidth=w) - got) < 5e-3
