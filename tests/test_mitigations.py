"""The mitigations on cases with known answers: guidance toward the most likely mode (scale 0 is plain sampling
bit for bit; its gradient is the exact log posterior's; at scale 1 with the exact score it is one mode's score)
and the score-smoothness penalty in training (weight 0 leaves training unchanged; its value is the closed form of
a linear denoiser, exactly and by Hutchinson's probes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import logsumexp

import mijax
from mijax.config import ConfigError, SamplerConfig, TrainConfig
from mijax.diffusion import loss_draws, smoothness_penalty, smoothness_probes
from mijax.guidance import guided, make_guidance, mode_gradient
from mijax.keys import STEP
from mijax.training import init_state, train_step

T = 100


@pytest.fixture(scope="module")
def setting():
    schedule = mijax.make_schedule(num_timesteps=T, beta_start=1e-3, beta_end=0.2)
    return mijax.gaussian1d(), schedule


def _broadcast(tree, s):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (s,) + jnp.shape(a)), tree)


def test_guidance_at_scale_zero_is_plain_sampling_bit_for_bit(setting):
    """(The guided denoiser stands in for the network, so this holds for every sampler: DDPM here.)"""
    mixture, schedule = setting
    config = SamplerConfig(hal_window=5)
    plain = mijax.sample(mijax.exact_denoiser, setting, schedule, jax.random.key(3), 256, (1,), config)
    zero = make_guidance(mixture, schedule, 0.0, T - 1)
    out = mijax.sample(guided(mijax.exact_denoiser), (setting, zero), schedule, jax.random.key(3), 256, (1,), config)
    np.testing.assert_array_equal(np.asarray(out.x), np.asarray(plain.x))
    np.testing.assert_array_equal(np.asarray(out.hal), np.asarray(plain.hal))
    some = make_guidance(mixture, schedule, 0.5, T - 1)
    moved = mijax.sample(guided(mijax.exact_denoiser), (setting, some), schedule, jax.random.key(3), 256, (1,), config)
    assert not np.array_equal(np.asarray(moved.x), np.asarray(plain.x))


def test_mode_gradient_is_the_gradient_of_the_log_posterior_of_the_likeliest_mode(setting):
    mixture, schedule = setting

    @jax.jit
    def both(mix, x, t):
        abar = schedule.alphas_cumprod[t]
        means, var = jnp.sqrt(abar) * mix.means, abar * mix.stds**2 + 1 - abar

        def log_post(xi, c):
            logp = (jnp.log(mix.weights) - 0.5 * jnp.sum((xi[None] - means) ** 2, axis=1) / var
                    - 0.5 * xi.shape[0] * jnp.log(2 * jnp.pi * var))
            return logp[c] - logsumexp(logp)

        best = jax.vmap(lambda xi: jnp.argmax(jax.vmap(lambda c: log_post(xi, c))(jnp.arange(mix.num_modes))))(x)
        return mode_gradient(mix, schedule, x, t), jax.vmap(jax.grad(log_post))(x, best)

    for mix in (mixture, mijax.gaussian25()):
        x = jax.random.normal(jax.random.key(0), (64, mix.dim)) * 1.5
        for t in (3, 40, 90):
            got, expected = both(mix, x, jnp.int32(t))
            np.testing.assert_allclose(got, expected, rtol=2e-4, atol=2e-4)


def test_guidance_at_scale_one_with_the_exact_score_is_the_likeliest_modes_score_and_starts_at_start(setting):
    mixture, schedule = setting
    x = jnp.linspace(0.0, 4.0, 41)[:, None]
    start = 30
    g = make_guidance(mixture, schedule, 1.0, start)
    fn = guided(mijax.exact_denoiser)
    for t in (5, start):
        abar = schedule.alphas_cumprod[t]
        means, var = jnp.sqrt(abar) * mixture.means[:, 0], abar * mixture.stds**2 + 1 - abar  # [3], [3]
        c = jnp.argmin((x - means[None]) ** 2 / var[None] + jnp.log(var)[None], axis=1)  # equal weights
        one_mode = -jnp.sqrt(1 - abar) * (means[c][:, None] - x) / var[c][:, None]
        np.testing.assert_allclose(fn((setting, g), x, jnp.int32(t)), one_mode, rtol=1e-4, atol=1e-4)
    later = jnp.int32(start + 1)  # above start: the plain denoiser
    np.testing.assert_array_equal(fn((setting, g), x, later), mijax.exact_denoiser(setting, x, later))
    with pytest.raises(ValueError, match="scale"):
        make_guidance(mixture, schedule, -1.0, start)
    with pytest.raises(ValueError, match="start"):
        make_guidance(mixture, schedule, 1.0, T)


def test_guidance_removes_the_exact_score_samplers_hallucinations(setting):
    """Deterministic DDIM over 5 steps with the exact score leaves samples between the modes; guidance at scale 1
    over the last steps draws every sample into a mode."""
    mixture, schedule = setting
    config = SamplerConfig(sampler="ddim", ddim_steps=5, hal_window=2)
    plain = mijax.sample(mijax.exact_denoiser, setting, schedule, jax.random.key(0), 2000, (1,), config)
    g = make_guidance(mixture, schedule, 1.0, T - 1)
    out = mijax.sample(guided(mijax.exact_denoiser), (setting, g), schedule, jax.random.key(0), 2000, (1,), config)
    rate = lambda x: float(np.mean(mijax.mixtures.nearest_mode(mixture, x)[1] > 5.0))  # noqa: E731
    assert rate(plain.x) > 0.01
    assert rate(out.x) < 0.2 * rate(plain.x)


def _linear(params, x, t):
    """eps_hat = a * x + b (a per coordinate): its score's Jacobian is diagonal, -a / sqrt(1 - abar_t)."""
    a, b = params
    return a[None] * x + b


@pytest.mark.parametrize("d", [1, 20])
def test_the_smoothness_penalty_is_the_closed_form_of_a_linear_denoiser(setting, d):
    _, schedule = setting
    key = jax.random.key(4)
    x0 = jax.random.normal(jax.random.key(5), (300, d))
    a = jnp.linspace(0.2, 2.0, d)
    params = (a, jnp.float32(0.1))
    t, noise = loss_draws(key, x0, T)
    sigma = np.asarray(schedule.sqrt_one_minus_alphas_cumprod)[np.asarray(t)][:, None]
    expected = np.mean(1.0 / (1.0 + (np.asarray(a)[None] / sigma) ** 2))
    probes = smoothness_probes(key, x0)
    assert (probes is None) == (d <= 16)  # 20 coordinates: Hutchinson, exact for a diagonal Jacobian
    x_t = mijax.q_sample(schedule, x0, t, noise)
    np.testing.assert_allclose(smoothness_penalty(_linear, params, schedule, x_t, t, probes=probes), expected,
                               rtol=1e-5)
    plain = mijax.denoising_loss(_linear, params, schedule, key, x0)
    with_penalty = mijax.denoising_loss(_linear, params, schedule, key, x0, smoothness=0.3)
    np.testing.assert_allclose(with_penalty - plain, 0.3 * expected, rtol=1e-4)
    first = np.mean(1.0 / (1.0 + (np.asarray(a)[None] / sigma[:100]) ** 2))  # smoothness_rows: the first rows only
    some_rows = mijax.denoising_loss(_linear, params, schedule, key, x0, smoothness=0.3, smoothness_rows=100)
    np.testing.assert_allclose(some_rows - plain, 0.3 * first, rtol=1e-4)


def test_the_smoothness_penalty_is_off_by_default_and_a_training_step_descends_the_penalised_loss():
    """Weight 0 is the default configuration (the same program as published); with weight w, one Adam step
    reports the penalised loss and moves each parameter by -lr * sign of the penalised loss's gradient."""
    assert TrainConfig(smoothness=0.0) == TrainConfig()
    schedule = mijax.make_schedule(num_timesteps=T)
    model = mijax.ToyDenoiser(1)
    toy = lambda params, x, t: model.apply(params, x, t)  # noqa: E731
    init = lambda key: model.init(key, jnp.zeros((2, 1)), jnp.zeros((2,), jnp.int32))  # noqa: E731
    data = mijax.sample_mixture(mijax.gaussian1d(), jax.random.key(0), 100)
    key, w = jax.random.key(2), 0.5
    step_key = jax.random.fold_in(jax.random.fold_in(key, STEP), 0)
    loss_fn = jax.jit(lambda p, w: mijax.denoising_loss(toy, p, schedule, step_key, data, smoothness=w),
                      static_argnums=1)
    for groups in (1,):
        config = TrainConfig(steps=1, batch_size=100, smoothness=w, batch_groups=groups)
        state0 = init_state(init, config, jax.random.key(1))
        state, loss = jax.jit(train_step, static_argnums=(0, 2))(toy, schedule, config, state0, key, data)
        want, grads = jax.jit(jax.value_and_grad(loss_fn), static_argnums=1)(state0.params, w)
        assert float(want) > float(loss_fn(state0.params, 0.0))
        np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
        for new, old, g in zip(*(jax.tree.leaves(t) for t in (state.params, state0.params, grads))):
            g = np.asarray(g, np.float64)
            big = np.abs(g) > 1e-4
            assert big.mean() > 0.5
            np.testing.assert_allclose((np.asarray(new, np.float64) - np.asarray(old, np.float64))[big],
                                       -1e-3 * np.sign(g[big]), rtol=1e-3, atol=1e-8)
    with pytest.raises(ConfigError, match="smoothness"):
        TrainConfig(smoothness=-1.0)
