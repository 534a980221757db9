"""Schedules: the paper's numbers, every named schedule's closed form, and the posterior identities."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.diffusion import SCHEDULES, Schedule, beta_values, make_schedule

COEFFICIENTS = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
                "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1",
                "posterior_mean_coef2", "reverse_mean_coef_x", "reverse_mean_coef_eps")


# const 0.2 over T = 1000 overflows sqrt(1/abar) in float32 and jsd ends with beta = 1, on purpose
pytestmark = [pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]


@pytest.fixture(scope="module")
def paper():
    return make_schedule()


@jax.jit
def _gather(schedule: Schedule, t):
    """Read coefficients through jit: the schedule is a pytree argument."""
    return {name: getattr(schedule, name)[t] for name in COEFFICIENTS}


def test_public_names():
    assert mijax.SCHEDULES == ("linear", "quad", "const", "warmup10", "warmup50", "jsd", "cosine")
    assert set(SCHEDULES) == set(mijax.SCHEDULES)


def test_paper_alpha_bars(paper):
    # SPEC section 2: linear 1e-3 -> 0.2 over T = 1000.
    got = _gather(paper, jnp.array([9, 99, 199]))["alphas_cumprod"]
    np.testing.assert_allclose(np.asarray(got), [0.98120, 0.33499, 0.01467], atol=6e-6)
    assert paper.num_timesteps == 1000
    assert paper.name == "linear"
    np.testing.assert_allclose(float(paper.betas[0]), 1e-3, rtol=1e-6)
    np.testing.assert_allclose(float(paper.betas[-1]), 0.2, rtol=1e-6)


def test_paper_alpha_bars_from_float64_product():
    # The same numbers from an independent float64 product of (1 - beta).
    betas = 1e-3 + (0.2 - 1e-3) * np.arange(1000) / 999.0
    abar = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(abar[[9, 99, 199]], [0.98120, 0.33499, 0.01467], atol=6e-6)
    np.testing.assert_allclose(beta_values(), betas, rtol=1e-12)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1000, 37])
def test_every_schedule_builds(name, T):
    s = make_schedule(name, T)
    assert s.name == name and s.num_timesteps == T
    for field in COEFFICIENTS:
        value = getattr(s, field)
        chex.assert_shape(value, (T,))
        chex.assert_type(value, jnp.float32)
    betas = beta_values(name, T)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert np.all(betas > 0) and np.all(betas <= 1)
    np.testing.assert_allclose(np.asarray(s.betas), betas.astype(np.float32), rtol=0, atol=0)
    # abar is non-increasing in (0, 1] and abar_prev is abar shifted by one with 1 in front.
    abar = np.asarray(s.alphas_cumprod)
    assert np.all(np.diff(abar) <= 0) and abar[0] <= 1
    np.testing.assert_array_equal(np.asarray(s.alphas_cumprod_prev), np.concatenate([[1.0], abar[:-1]]))
    chex.assert_tree_all_finite((s.betas, s.alphas_cumprod, s.posterior_variance, s.posterior_mean_coef1,
                                 s.posterior_mean_coef2))


def _closed_form(name, T, b0=1e-3, b1=0.2):
    t = np.arange(T, dtype=np.float64)
    if name == "linear":
        return b0 + (b1 - b0) * t / (T - 1)
    if name == "quad":
        return (math.sqrt(b0) + (math.sqrt(b1) - math.sqrt(b0)) * t / (T - 1)) ** 2
    if name == "const":
        return np.full(T, b1)
    if name in ("warmup10", "warmup50"):
        w = int(T * (0.1 if name == "warmup10" else 0.5))
        return np.where(t < w, b0 + (b1 - b0) * t / max(w - 1, 1), b1)
    if name == "jsd":
        return 1.0 / (T - t)
    if name == "cosine":
        f = np.cos(((np.arange(T + 1) / T) + 0.008) / 1.008 * np.pi / 2) ** 2
        return np.minimum(1.0 - f[1:] / f[:-1], 0.999)
    raise AssertionError(name)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("T", [1000, 40])
def test_betas_match_closed_form(name, T):
    np.testing.assert_allclose(beta_values(name, T), _closed_form(name, T), rtol=1e-10, atol=1e-15)


def test_warmup_lengths():
    # warmup10: the first 10% ramp linearly from beta_start to beta_end, then constant.
    b = beta_values("warmup10", 1000)
    assert b[0] == pytest.approx(1e-3) and b[99] == pytest.approx(0.2) and b[98] < 0.2
    np.testing.assert_array_equal(b[100:], 0.2)
    b = beta_values("warmup50", 1000)
    assert b[499] == pytest.approx(0.2) and b[498] < 0.2
    np.testing.assert_array_equal(b[500:], 0.2)


def test_jsd_alpha_bar_telescopes():
    # beta_t = 1/(T - t) makes abar_t = prod (T-s-1)/(T-s) = (T - 1 - t) / T.
    T = 200
    s = make_schedule("jsd", T)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod), (T - 1 - np.arange(T)) / T, rtol=1e-5, atol=1e-7)
    assert float(s.betas[-1]) == 1.0


def test_cosine_alpha_bar_is_f_ratio():
    # Nichol & Dhariwal: abar_t = f(t + 1) / f(0) wherever the 0.999 cap is inactive.
    T = 1000
    s = make_schedule("cosine", T)
    f = np.cos(((np.arange(T + 1) / T) + 0.008) / 1.008 * np.pi / 2) ** 2
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod[:-1]), f[1:-1] / f[0], rtol=2e-4, atol=1e-7)
    assert float(s.betas[-1]) == pytest.approx(0.999)
    # ignores beta_start/beta_end
    np.testing.assert_array_equal(beta_values("cosine", 50, 0.5, 0.6), beta_values("cosine", 50))


def test_custom_endpoints():
    b = beta_values("linear", 11, 1e-4, 0.02)
    np.testing.assert_allclose(b, np.linspace(1e-4, 0.02, 11), rtol=1e-12)
    np.testing.assert_allclose(beta_values("const", 5, 0.3, 0.05), 0.05)


@pytest.mark.parametrize("bad", [dict(name="sigmoid"), dict(name="Linear"), dict(num_timesteps=0),
                                 dict(num_timesteps=-3), dict(beta_end=1.5), dict(beta_start=-0.1),
                                 dict(name="const", beta_end=0.0)])
def test_invalid_arguments_raise(bad):
    with pytest.raises(ValueError):
        make_schedule(**bad)
    with pytest.raises(ValueError):
        beta_values(**bad)


def test_single_step_schedule():
    s = make_schedule("linear", 1)
    chex.assert_shape(s.betas, (1,))
    assert float(s.alphas_cumprod_prev[0]) == 1.0


@pytest.mark.parametrize("name", SCHEDULES)
def test_coefficients_against_float64(name):
    T = 100
    b = beta_values(name, T)
    a = 1 - b
    abar = np.cumprod(a)
    prev = np.concatenate([[1.0], abar[:-1]])
    s = make_schedule(name, T)
    ok = abar > 0  # jsd ends at abar = 0, where 1/abar is infinite by construction
    with np.errstate(divide="ignore"):
        expect = {
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(1 - abar),
            "sqrt_recip_alphas_cumprod": 1 / np.sqrt(abar),
            "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / abar - 1),
            "posterior_variance": b * (1 - prev) / (1 - abar),
            "posterior_mean_coef1": b * np.sqrt(prev) / (1 - abar),
            "posterior_mean_coef2": np.sqrt(a) * (1 - prev) / (1 - abar),
            "reverse_mean_coef_x": 1 / np.sqrt(a),
            "reverse_mean_coef_eps": b / (np.sqrt(a) * np.sqrt(1 - abar)),
        }
    got = _gather(s, jnp.arange(T))
    for field, want in expect.items():
        np.testing.assert_allclose(np.asarray(got[field])[ok], want[ok], rtol=3e-6, atol=1e-30, err_msg=field)
    # Clipped log variance: t = 0 (variance 0) takes the value of t = 1.
    logv = np.asarray(got["posterior_log_variance_clipped"])
    np.testing.assert_allclose(logv[1:][ok[1:]], np.log(expect["posterior_variance"][1:][ok[1:]]), atol=2e-5)
    assert logv[0] == logv[1]
    assert float(got["posterior_variance"][0]) == 0.0


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_consistency_identities(name):
    # Two identities of the Gaussian posterior that any correct c1, c2, variance satisfy:
    #   mean: c1 + c2 sqrt(abar_t) = sqrt(abar_{t-1});  variance: c2^2 (1 - abar_t) + var = 1 - abar_{t-1}.
    s = make_schedule(name, 100)
    got = _gather(s, jnp.arange(100))
    c1, c2 = np.asarray(got["posterior_mean_coef1"], np.float64), np.asarray(got["posterior_mean_coef2"], np.float64)
    abar, prev = np.asarray(got["alphas_cumprod"], np.float64), np.asarray(got["alphas_cumprod_prev"], np.float64)
    var = np.asarray(got["posterior_variance"], np.float64)
    np.testing.assert_allclose(c1 + c2 * np.sqrt(abar), np.sqrt(prev), atol=2e-6)
    np.testing.assert_allclose(c2**2 * (1 - abar) + var, 1 - prev, atol=2e-6)


@jax.jit
def _two_forms_of_the_mean(schedule, x, eps, t):
    x0_hat = schedule.sqrt_recip_alphas_cumprod[t] * x - schedule.sqrt_recipm1_alphas_cumprod[t] * eps
    via_x0 = schedule.posterior_mean_coef1[t] * x0_hat + schedule.posterior_mean_coef2[t] * x
    via_eps = schedule.reverse_mean_coef_x[t] * x - schedule.reverse_mean_coef_eps[t] * eps
    return via_x0, via_eps


@pytest.mark.parametrize("t", [0, 1, 9, 50, 99, 150])
def test_reverse_mean_in_eps_equals_posterior_mean(paper, t):
    x = jax.random.normal(jax.random.key(1), (512,))
    eps = jax.random.normal(jax.random.key(2), (512,))
    via_x0, via_eps = _two_forms_of_the_mean(paper, x, eps, t)
    # float32 rounding grows with sqrt(1/abar_t) (about 8 at t = 150)
    scale = float(paper.sqrt_recip_alphas_cumprod[t])
    np.testing.assert_allclose(np.asarray(via_eps), np.asarray(via_x0), atol=2e-5 * scale)
    # and both agree with a float64 computation of the posterior mean
    b = beta_values()
    abar = np.cumprod(1 - b)
    prev = 1.0 if t == 0 else abar[t - 1]
    x64, e64 = np.asarray(x, np.float64), np.asarray(eps, np.float64)
    x0_hat = (x64 - np.sqrt(1 - abar[t]) * e64) / np.sqrt(abar[t])
    mean = b[t] * np.sqrt(prev) / (1 - abar[t]) * x0_hat + np.sqrt(1 - b[t]) * (1 - prev) / (1 - abar[t]) * x64
    np.testing.assert_allclose(np.asarray(via_eps), mean, atol=1e-5)


@pytest.mark.parametrize("name", ["const", "linear"])
def test_reverse_mean_coefficients_finite_where_1_over_abar_overflows(name):
    # const 0.2 over T = 1000: abar underflows float32, sqrt(1/abar) is inf, but the folded eps
    # coefficients the sampler uses stay finite.
    s = make_schedule(name, 1000)
    chex.assert_tree_all_finite((s.reverse_mean_coef_x, s.reverse_mean_coef_eps))
    if name == "const":
        assert not np.all(np.isfinite(np.asarray(s.sqrt_recip_alphas_cumprod)))
        np.testing.assert_allclose(np.asarray(s.reverse_mean_coef_x), 1 / math.sqrt(0.8), rtol=1e-6)
