"""The registered samplers against closed forms: with the exact score of one Gaussian every sampler ends with
the distribution the closed form gives, the ODE solvers converge at their order, and DDIM's stochastic steps
are DDPM's steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax import samplers
from mijax.config import SamplerConfig
from mijax.sampling import reverse_timesteps

MU, STD = 0.5, 0.3
T = 1000


@pytest.fixture(scope="module")
def gaussian():
    """One Gaussian N(0.5, 0.3^2) and the standard DDPM schedule (linear 1e-4 -> 0.02, T = 1000)."""
    schedule = mijax.make_schedule(num_timesteps=T, beta_start=1e-4, beta_end=0.02)
    return mijax.make_mixture([[MU]], STD), schedule


def _final(schedule, x_start, t_start):
    """The exact probability-flow ODE from x_start at t_start to t = 0, then x0_hat there (every sampler's last
    step): the standardised value z of x_t is constant along the ODE of a Gaussian, and x0_hat = E[x0 | x_0]."""
    abar = np.asarray(schedule.alphas_cumprod, np.float64)
    z = (x_start - np.sqrt(abar[t_start]) * MU) / np.sqrt(abar[t_start] * STD**2 + 1 - abar[t_start])
    return MU + z * np.sqrt(abar[0]) * STD**2 / np.sqrt(abar[0] * STD**2 + 1 - abar[0])


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "heun", "dpmpp2m"])
def test_every_sampler_ends_with_the_closed_form_over_all_steps(gaussian, sampler):
    mixture, schedule = gaussian
    n = 40_000
    out = mijax.sample(mijax.exact_denoiser, gaussian, schedule, jax.random.key(1), n, (1,),
                       SamplerConfig(sampler=sampler, hal_window=2))
    x = np.asarray(out.x, np.float64)[:, 0]
    abar0 = float(schedule.alphas_cumprod[0])
    variance = STD**2 * abar0 * STD**2 / (abar0 * STD**2 + 1 - abar0)  # of x0_hat at t = 0 (the last step)
    assert abs(x.mean() - MU) < 4 * np.sqrt(variance / n)
    assert abs(x.var() - variance) < 4 * variance * np.sqrt(2 / n)


@pytest.mark.parametrize("sampler,order", [("ddim", 1), ("heun", 2), ("dpmpp2m", 2)])
def test_the_ode_solvers_converge_at_their_order(gaussian, sampler, order):
    mixture, schedule = gaussian
    key, n = jax.random.key(0), 500
    errors = []
    for steps in (20, 40, 80):
        config = SamplerConfig(sampler=sampler, ddim_steps=steps, skip="quad", hal_window=2)
        t_start = int(reverse_timesteps(config, T)[0])
        x_start = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), T), (1,)))(
            jnp.arange(n, dtype=jnp.uint32))  # each sample's starting noise (mijax.sampling)
        out = mijax.sample(mijax.exact_denoiser, gaussian, schedule, key, n, (1,), config)
        errors.append(np.max(np.abs(np.asarray(out.x, np.float64) - _final(schedule, np.asarray(x_start, np.float64),
                                                                            t_start))))
    ratios = [a / b for a, b in zip(errors, errors[1:])]  # halving the step: the error falls by 2^order
    assert all(0.8 * 2**order < r < 1.4 * 2**order for r in ratios), (errors, ratios)


def test_ddim_with_every_step_but_the_last_stochastic_is_ddpm(gaussian):
    mixture = gaussian[0]
    schedule = mijax.make_schedule(num_timesteps=100, beta_start=1e-3, beta_end=0.2)
    key = jax.random.key(4)
    for variance in ("fixed_large", "fixed_small"):
        ddpm = mijax.sample(mijax.exact_denoiser, (mixture, schedule), schedule, key, 64, (1,),
                            SamplerConfig(variance=variance, hal_window=3))
        mixed = mijax.sample(mijax.exact_denoiser, (mixture, schedule), schedule, key, 64, (1,),
                             SamplerConfig(sampler="ddim", stochastic_steps=99, variance=variance, hal_window=3))
        np.testing.assert_array_equal(mixed.x, ddpm.x)
        np.testing.assert_array_equal(mixed.hal, ddpm.hal)


def test_deterministic_samplers_depend_on_the_starting_noise_only(gaussian):
    mixture, schedule = gaussian
    for sampler in ("ddim", "heun", "dpmpp2m"):
        config = SamplerConfig(sampler=sampler, ddim_steps=10, hal_window=2)
        a = mijax.sample(mijax.exact_denoiser, gaussian, schedule, jax.random.key(5), 16, (1,), config)
        # DDIM with eta > 0 draws step noise from the same keys: the draws differ, the starting noise is shared
        noisy = mijax.sample(mijax.exact_denoiser, gaussian, schedule, jax.random.key(5), 16, (1,),
                             SamplerConfig(sampler="ddim", ddim_steps=10, eta=1.0, hal_window=2))
        b = mijax.sample(mijax.exact_denoiser, gaussian, schedule, jax.random.key(5), 16, (1,), config)
        np.testing.assert_array_equal(a.x, b.x)
        assert not np.array_equal(a.x, noisy.x)


def test_timesteps_of_each_sampler():
    ts, kinds = samplers.timesteps("ddpm", 5)
    assert ts.tolist() == [4, 3, 2, 1, 0] and set(kinds.tolist()) == {samplers.ANCESTRAL}
    ts, kinds = samplers.timesteps("ddim", 1000, 10)
    assert ts[0] == 999 and ts[-1] == 0 and len(ts) == 10 and set(kinds.tolist()) == {samplers.DETERMINISTIC}
    quad = samplers.subsequence(1000, 50, "quad")
    assert quad[0] == 0 and quad[-1] == 800 and np.all(np.diff(quad) > 0) and np.diff(quad)[0] < np.diff(quad)[-1]
    ts, kinds = samplers.timesteps("ddim", 1000, 10, stochastic_steps=3, stochastic_at="first")
    assert ts[:5].tolist() == [999, 998, 997, 996, 888] and kinds.tolist() == [1, 1, 1] + [0] * 10
    ts, kinds = samplers.timesteps("ddim", 1000, 10, stochastic_steps=3, stochastic_at="last")
    assert ts[-5:].tolist() == [222, 111, 2, 1, 0] and kinds.tolist() == [0] * 9 + [1, 1, 1]
    ts, kinds = samplers.timesteps("ddim", 1000, 10, stochastic_steps=3, stochastic_at="window", stochastic_from=500)
    assert ts[3:10].tolist() == [666, 555, 500, 499, 498, 497, 444] and kinds.tolist() == [0] * 5 + [1] * 3 + [0] * 6
    assert samplers.evaluations("heun", samplers.timesteps("heun", 1000, 10)[1]) == 19
    assert samplers.evaluations("dpmpp2m", samplers.timesteps("dpmpp2m", 1000, 10)[1]) == 10


@pytest.mark.parametrize("config,message", [
    (SamplerConfig(sampler="heun", stochastic_steps=2), "stochastic steps"),
    (SamplerConfig(sampler="ddim", skip="quad"), "quadratically spaced"),
    (SamplerConfig(sampler="ddim", ddim_steps=10, stochastic_steps=1001), "do not fit"),
    (SamplerConfig(sampler="ddim", ddim_steps=10, stochastic_steps=2, stochastic_at="window"), "starts from"),
    (SamplerConfig(sampler="ddim", ddim_steps=10, stochastic_steps=2, stochastic_from=5), "window"),
])
def test_impossible_sampler_settings_are_refused(config, message):
    from mijax.sampling import validate

    with pytest.raises(ValueError, match=message):
        validate(config, T)
