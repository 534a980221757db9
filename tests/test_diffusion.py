"""Forward process, x0 <-> eps, posterior, model_predictions and the denoising loss."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.diffusion import beta_values, loss_target

T = 1000


# const 0.2 over T = 1000 overflows sqrt(1/abar) in float32 and jsd ends with beta = 1, on purpose
pytestmark = [pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")]


@pytest.fixture(scope="module")
def schedule():
    return mijax.make_schedule()  # the paper's linear 1e-3 -> 0.2, T = 1000


@pytest.fixture(scope="module")
def float64_coefficients():
    b = beta_values()
    abar = np.cumprod(1 - b)
    prev = np.concatenate([[1.0], abar[:-1]])
    return b, abar, prev


q_sample = jax.jit(mijax.q_sample)
predict_x0_from_eps = jax.jit(mijax.predict_x0_from_eps)
predict_eps_from_x0 = jax.jit(mijax.predict_eps_from_x0)
posterior_mean_variance = jax.jit(mijax.posterior_mean_variance)
model_predictions = jax.jit(mijax.model_predictions, static_argnames="objective")
denoising_loss = jax.jit(mijax.denoising_loss, static_argnames=("denoise_fn", "objective"))


def zero_denoiser(params, x, t):
    return jnp.zeros_like(x)


def linear_denoiser(params, x, t):
    """A cheap denoiser that depends on x and t: w * x + b * t / T."""
    w, b = params
    return w * x + b * (t.astype(jnp.float32) / T).reshape((-1,) + (1,) * (x.ndim - 1))


def test_q_sample_moments(schedule):
    n = 200_000
    x0 = jnp.concatenate([jnp.full((n, 1), 1.5), jnp.full((n, 1), -0.7)], axis=1)  # [n, 2]
    for t in (0, 30, 99, 400):
        noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), t), x0.shape)
        x_t = q_sample(schedule, x0, jnp.full((n,), t), noise)
        chex.assert_shape(x_t, (n, 2))
        abar = float(schedule.alphas_cumprod[t])
        mean, var = np.asarray(x_t.mean(0)), np.asarray(x_t.var(0))
        # five standard errors of the sample mean and variance
        np.testing.assert_allclose(mean, np.sqrt(abar) * np.array([1.5, -0.7]), atol=5 * np.sqrt((1 - abar) / n) + 1e-6)
        np.testing.assert_allclose(var, 1 - abar, atol=5 * (1 - abar) * np.sqrt(2 / n) + 1e-9)


def test_q_sample_closed_form_and_scalar_t(schedule, float64_coefficients):
    _, abar, _ = float64_coefficients
    x0 = jax.random.normal(jax.random.key(1), (64, 3))
    noise = jax.random.normal(jax.random.key(2), (64, 3))
    t = jax.random.randint(jax.random.key(3), (64,), 0, T)
    got = np.asarray(q_sample(schedule, x0, t, noise))
    a = abar[np.asarray(t)][:, None]
    want = np.sqrt(a) * np.asarray(x0, np.float64) + np.sqrt(1 - a) * np.asarray(noise, np.float64)
    np.testing.assert_allclose(got, want, atol=2e-6)
    # a scalar t is shared by the batch
    chex.assert_trees_all_close(q_sample(schedule, x0, jnp.int32(17), noise),
                                q_sample(schedule, x0, jnp.full((64,), 17), noise))
    # t = 0 is almost clean data, large t almost pure noise
    np.testing.assert_allclose(np.asarray(q_sample(schedule, x0, jnp.int32(999), noise)), np.asarray(noise), atol=1e-6)


def test_q_sample_image_shaped(schedule):
    # [N, H, W, C] data with t [N]: coefficients broadcast as [N, 1, 1, 1] (rank promotion is strict).
    x0 = jnp.ones((4, 5, 6, 2))
    noise = jnp.zeros((4, 5, 6, 2))
    t = jnp.array([0, 9, 99, 199])
    x_t = q_sample(schedule, x0, t, noise)
    chex.assert_shape(x_t, (4, 5, 6, 2))
    np.testing.assert_allclose(np.asarray(x_t[:, 2, 3, 1]), np.sqrt(schedule.alphas_cumprod[t]), rtol=1e-6)


def test_x0_recovered_from_true_eps(schedule):
    x0 = jax.random.normal(jax.random.key(4), (512, 2))
    eps = jax.random.normal(jax.random.key(5), (512, 2))
    t = jax.random.randint(jax.random.key(6), (512,), 0, 200)
    x_t = q_sample(schedule, x0, t, eps)
    x0_hat = predict_x0_from_eps(schedule, x_t, t, eps)
    # float32 rounding amplified by sqrt(1/abar_t) <= 8.3 for t < 200
    np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=3e-5)
    # and the inverse gives back the noise
    eps_hat = predict_eps_from_x0(schedule, x_t, t, x0)
    np.testing.assert_allclose(np.asarray(eps_hat), np.asarray(eps), atol=3e-5)


def test_x0_eps_roundtrip_for_arbitrary_values(schedule):
    # predict_eps_from_x0 inverts predict_x0_from_eps for any x0 (not only the true one).
    x_t = jax.random.normal(jax.random.key(7), (256, 1))
    x0 = jax.random.normal(jax.random.key(8), (256, 1)) * 3
    for t in (0, 5, 100):
        eps = predict_eps_from_x0(schedule, x_t, jnp.int32(t), x0)
        back = predict_x0_from_eps(schedule, x_t, jnp.int32(t), eps)
        scale = float(schedule.sqrt_recip_alphas_cumprod[t])
        np.testing.assert_allclose(np.asarray(back), np.asarray(x0), atol=1e-5 * scale)


def test_posterior_against_float64(schedule, float64_coefficients):
    b, abar, prev = float64_coefficients
    x0 = jax.random.normal(jax.random.key(9), (128, 2))
    x_t = jax.random.normal(jax.random.key(10), (128, 2))
    t = jax.random.randint(jax.random.key(11), (128,), 0, T)
    mean, var, log_var = posterior_mean_variance(schedule, x0, x_t, t)
    chex.assert_shape(mean, (128, 2))
    chex.assert_shape((var, log_var), (128, 1))
    tt = np.asarray(t)
    c1 = (b * np.sqrt(prev) / (1 - abar))[tt][:, None]
    c2 = (np.sqrt(1 - b) * (1 - prev) / (1 - abar))[tt][:, None]
    want_mean = c1 * np.asarray(x0, np.float64) + c2 * np.asarray(x_t, np.float64)
    np.testing.assert_allclose(np.asarray(mean), want_mean, atol=1e-5)
    want_var = (b * (1 - prev) / (1 - abar))[tt][:, None]
    np.testing.assert_allclose(np.asarray(var), want_var, rtol=1e-5, atol=1e-12)
    post_var = b * (1 - prev) / (1 - abar)
    want_log = np.log(np.where(tt == 0, post_var[1], post_var[tt]))[:, None]
    np.testing.assert_allclose(np.asarray(log_var), want_log, atol=1e-5)


def test_posterior_t0_returns_x0(schedule):
    # At t = 0, c1 = 1, c2 = 0: the posterior mean is x0 itself, with zero variance.
    x0 = jnp.array([[0.3], [-2.0]])
    mean, var, _ = posterior_mean_variance(schedule, x0, jnp.array([[5.0], [1.0]]), jnp.int32(0))
    np.testing.assert_allclose(np.asarray(mean), np.asarray(x0), atol=1e-6)
    assert float(var) == 0.0


@pytest.mark.parametrize("t", [0, 3, 40, 150])
def test_model_predictions_consistent_across_objectives(schedule, t):
    x0 = jax.random.normal(jax.random.key(12), (64, 2))
    x_t = jax.random.normal(jax.random.key(13), (64, 2))
    tt = jnp.full((64,), t)
    eps = predict_eps_from_x0(schedule, x_t, tt, x0)
    mean = posterior_mean_variance(schedule, x0, x_t, tt)[0]
    abar = float(schedule.alphas_cumprod[t])
    v = np.sqrt(abar) * eps - np.sqrt(1 - abar) * x0  # the velocity
    outputs = {"eps": eps, "x0": x0, "mean": mean, "v": v}
    assert set(outputs) == set(mijax.OBJECTIVES)
    scale = float(schedule.sqrt_recip_alphas_cumprod[t])
    for objective, output in outputs.items():
        x0_hat, mean_hat = model_predictions(schedule, output, x_t, tt, objective=objective)
        chex.assert_shape((x0_hat, mean_hat), (64, 2))
        # x0 from the mean divides by c1, which is smallest at moderate t
        c1 = float(schedule.posterior_mean_coef1[t])
        np.testing.assert_allclose(np.asarray(x0_hat), np.asarray(x0), atol=3e-5 * scale / min(c1, 1.0),
                                   err_msg=objective)
        np.testing.assert_allclose(np.asarray(mean_hat), np.asarray(mean), atol=3e-5 * scale, err_msg=objective)
    with pytest.raises(ValueError):
        mijax.model_predictions(schedule, eps, x_t, tt, objective="score")


def test_model_predictions_eps_mean_is_finite_where_abar_underflows():
    # const 0.2 over T = 1000: at t = 999 sqrt(1/abar) overflows float32, yet the eps-form mean
    # is (x - beta/sqrt(1 - abar) eps) / sqrt(alpha), finite.
    s = mijax.make_schedule("const", 1000)
    x_t = jnp.array([[0.5], [-1.0]])
    eps = jnp.array([[0.2], [0.3]])
    _, mean = model_predictions(s, eps, x_t, jnp.int32(999), objective="eps")
    chex.assert_tree_all_finite(mean)
    np.testing.assert_allclose(np.asarray(mean), (np.asarray(x_t) - 0.2 * np.asarray(eps)) / np.sqrt(0.8), rtol=1e-5)


@pytest.mark.parametrize("name", ["linear", "const"])
def test_predict_eps_from_x0_finite_where_abar_underflows(name):
    # At t = 999 abar is ~1e-48 (linear) or ~1e-97 (const 0.2): zero in float32, and for const even
    # sqrt(1/abar) overflows. x_t is then pure noise and the eps that reproduces any x0 is x_t itself:
    # (x_t - sqrt(abar) x0) / sqrt(1 - abar).
    s = mijax.make_schedule(name)
    assert float(s.alphas_cumprod[999]) == 0.0
    x_t = jnp.array([[0.5], [-1.0]])
    x0 = jnp.array([[1.0], [3.0]])
    eps = predict_eps_from_x0(s, x_t, jnp.int32(999), x0)
    chex.assert_tree_all_finite(eps)
    np.testing.assert_allclose(np.asarray(eps), np.asarray(x_t), rtol=1e-6)


def _hand_loss(denoise_fn, params, schedule, key, x0, objective, t_power=1.0):
    """The DDPM loss written out: the same t and noise draws as denoising_loss."""
    t_key, noise_key = jax.random.split(key)
    n = x0.shape[0]
    if t_power == 1.0:
        t = jax.random.randint(t_key, (n,), 0, schedule.num_timesteps)
    else:  # floor(T u^p), u uniform on [0, 1)
        u = np.asarray(jax.random.uniform(t_key, (n,)), np.float64)
        t = jnp.asarray(np.floor(schedule.num_timesteps * u ** t_power).astype(np.int32))
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t)].reshape((n,) + (1,) * (x0.ndim - 1))
    x0_64 = np.asarray(x0, np.float64)
    x_t = np.sqrt(abar) * x0_64 + np.sqrt(1 - abar) * np.asarray(noise, np.float64)
    out = np.asarray(denoise_fn(params, jnp.asarray(x_t, jnp.float32), t), np.float64)
    if objective == "eps":
        target = np.asarray(noise, np.float64)
    elif objective == "x0":
        target = x0_64
    elif objective == "v":
        target = np.sqrt(abar) * np.asarray(noise, np.float64) - np.sqrt(1 - abar) * x0_64
    else:
        b = np.asarray(schedule.betas, np.float64)[np.asarray(t)].reshape(abar.shape)
        prev = np.asarray(schedule.alphas_cumprod_prev, np.float64)[np.asarray(t)].reshape(abar.shape)
        target = b * np.sqrt(prev) / (1 - abar) * x0_64 + np.sqrt(1 - b) * (1 - prev) / (1 - abar) * x_t
    return np.mean(np.mean(((target - out) ** 2).reshape(n, -1), axis=1))


@pytest.mark.parametrize("objective", mijax.OBJECTIVES)
def test_denoising_loss_matches_hand_computation(schedule, objective):
    x0 = jax.random.normal(jax.random.key(14), (256, 2)) * 0.5 + 1.0
    params = (jnp.float32(0.7), jnp.float32(-0.4))
    key = jax.random.key(15)
    loss = denoising_loss(linear_denoiser, params, schedule, key, x0, objective=objective)
    chex.assert_shape(loss, ())
    np.testing.assert_allclose(float(loss), _hand_loss(linear_denoiser, params, schedule, key, x0, objective),
                               rtol=1e-5)


@pytest.mark.parametrize("objective", mijax.OBJECTIVES)
def test_min_snr_weights_every_objective_as_min_snr_gamma_times_its_x0_error(schedule, objective):
    """Weighted by min_snr_weights, a network's error on its own target is min(SNR_t, gamma) times the error of
    the x0_hat it implies, whatever it predicts; the weighted loss is the mean of the weighted errors."""
    gamma, n = 5.0, 512
    t = jax.random.randint(jax.random.key(40), (n,), 0, 400)  # SNR_t from ~1e3 down to ~1e-30 (T = 1000: 1e-88)
    x0 = jax.random.normal(jax.random.key(41), (n, 2))
    noise = jax.random.normal(jax.random.key(42), (n, 2))
    x_t = q_sample(schedule, x0, t, noise)
    target = loss_target(schedule, x0, x_t, t, noise, objective)
    output = target + 1e-2 * jax.random.normal(jax.random.key(43), (n, 2))  # a slightly wrong network
    x0_hat = model_predictions(schedule, output, x_t, t, objective=objective)[0]
    abar = np.asarray(schedule.alphas_cumprod, np.float64)[np.asarray(t)]
    snr = abar / (1 - abar)
    weights = np.asarray(mijax.diffusion.min_snr_weights(schedule, t, objective, gamma), np.float64)
    chex.assert_shape(weights, (n,))
    ok = snr > 1e-6  # where x0_hat is swamped by float32 rounding of x_t / sqrt(abar) the check says nothing
    np.testing.assert_allclose((weights * np.sum(np.square(np.asarray(output - target, np.float64)), 1))[ok],
                               (np.minimum(snr, gamma) * np.sum(np.square(np.asarray(x0_hat - x0, np.float64)), 1))[ok],
                               rtol=2e-2)
    loss = mijax.denoising_loss_at(lambda p, x, tt: output, None, schedule, x0, t, noise, objective, min_snr=gamma)
    np.testing.assert_allclose(float(loss), np.mean(weights * np.mean(np.square(np.asarray(output - target)), 1)),
                               rtol=1e-5)


def test_denoising_loss_with_t_power(schedule):
    x0 = jax.random.normal(jax.random.key(24), (256, 2))
    params, key = (jnp.float32(0.6), jnp.float32(0.9)), jax.random.key(25)
    loss = jax.jit(mijax.denoising_loss, static_argnames=("denoise_fn", "objective", "t_power"))(
        linear_denoiser, params, schedule, key, x0, t_power=1.5)
    np.testing.assert_allclose(float(loss), _hand_loss(linear_denoiser, params, schedule, key, x0, "eps", 1.5),
                               rtol=1e-5)
    assert abs(float(loss) - float(denoising_loss(linear_denoiser, params, schedule, key, x0))) > 1e-4


def test_sample_timesteps_uniform_is_the_published_draw_and_powers_favour_small_t():
    key, n, big_t = jax.random.key(26), 200_000, 1000
    uniform = mijax.sample_timesteps(key, n, big_t)
    np.testing.assert_array_equal(np.asarray(uniform), np.asarray(jax.random.randint(key, (n,), 0, big_t)))
    t = np.asarray(mijax.sample_timesteps(key, n, big_t, 2.0))
    assert t.dtype == np.int32 and t.shape == (n,) and t.min() == 0 and t.max() == big_t - 1
    # P(t < T/4) = P(u^2 < 1/4) = 1/2 (uniform: 1/4); E[t] = E[floor(T u^2)] = T/3 - 1/2, to 5 standard errors
    assert abs(np.mean(t < big_t // 4) - 0.5) < 5 * np.sqrt(0.25 / n)
    assert abs(t.mean() - (big_t / 3 - 0.5)) < 5 * big_t * np.sqrt(4 / 45 / n)
    assert np.mean(np.asarray(mijax.sample_timesteps(key, n, big_t, 1.5)) < 10) > 3 * np.mean(np.asarray(uniform) < 10)


def test_denoising_loss_image_shaped(schedule):
    x0 = jax.random.uniform(jax.random.key(16), (8, 4, 4, 3))
    params = (jnp.float32(0.3), jnp.float32(0.5))
    key = jax.random.key(17)
    loss = denoising_loss(linear_denoiser, params, schedule, key, x0, objective="eps")
    np.testing.assert_allclose(float(loss), _hand_loss(linear_denoiser, params, schedule, key, x0, "eps"), rtol=1e-5)


def test_zero_denoiser_losses(schedule):
    n = 100_000
    x0 = jax.random.normal(jax.random.key(18), (n, 1)) * 0.1 + 2.0
    # eps objective: the loss is the mean of eps^2, 1 +- 5 standard errors sqrt(2 / n).
    loss = float(denoising_loss(zero_denoiser, None, schedule, jax.random.key(19), x0, objective="eps"))
    assert abs(loss - 1.0) < 5 * np.sqrt(2 / n)
    # x0 objective: exactly the mean of x0^2.
    loss = float(denoising_loss(zero_denoiser, None, schedule, jax.random.key(19), x0, objective="x0"))
    np.testing.assert_allclose(loss, float(jnp.mean(x0**2)), rtol=1e-5)


def test_exact_noise_predictor_has_zero_loss(schedule):
    # A denoiser that knows x0 and returns the true eps from x_t has zero eps-loss.
    x0 = jax.random.normal(jax.random.key(20), (128, 2))

    def oracle(params, x_t, t):
        return mijax.predict_eps_from_x0(schedule, x_t, t, params)

    loss = mijax.denoising_loss(oracle, x0, schedule, jax.random.key(21), x0)
    assert float(loss) < 1e-8


def test_loss_gradient_finite_and_loss_target_rejects(schedule):
    x0 = jnp.ones((16, 1))
    g = jax.jit(jax.grad(lambda p: mijax.denoising_loss(linear_denoiser, p, schedule, jax.random.key(0), x0)))(
        (jnp.float32(0.1), jnp.float32(0.2)))
    chex.assert_tree_all_finite(g)
    assert float(jnp.abs(g[0])) > 0
    with pytest.raises(ValueError):
        loss_target(schedule, x0, x0, jnp.zeros((16,), jnp.int32), x0, objective="score")
