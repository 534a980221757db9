import math

import numpy as np
import pytest

from mijax.stats import format_ci, mean_ci, t_quantile_975


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
