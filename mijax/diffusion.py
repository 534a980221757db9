"""The forward process q(x_t | x_0), conversions between x0 and eps, the posterior, and the loss.

All functions are pure and work on any data shape ``[N, *shape]`` (1D data is ``[N, 1]``); ``t`` is an
int array ``[N]`` of per-sample timesteps or a scalar shared by the batch.
"""
from __future__ import annotations

from typing import Callable, Literal

import jax
import jax.numpy as jnp

from mijax.schedules import Schedule

# A denoiser maps (params, x_t [N, *shape], t [N] or []) to the model output [N, *shape].
Denoiser = Callable[[object, jnp.ndarray, jnp.ndarray], jnp.ndarray]
Objective = Literal["eps", "x0", "mean"]
OBJECTIVES: tuple[str, ...] = ("eps", "x0", "mean")


def extract(coef: jnp.ndarray, t: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """``coef[t]`` shaped to broadcast against ``x`` [N, *shape]: [N, 1, ...] for t [N], [] for scalar t."""
    values = coef[t]
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (x.ndim - values.ndim))


def q_sample(schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray) -> jnp.ndarray:
    """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) with the given standard noise.

    Args:
      schedule: the noise schedule.
      x0: clean data, [N, *shape].
      t: timesteps in 0..T-1, [N] or [].
      noise: standard normal noise, [N, *shape].
    Returns:
      x_t, [N, *shape].
    """
    return (extract(schedule.sqrt_alphas_cumprod, t, x0) * x0
            + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0) * noise)


def predict_x0_from_eps(schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, eps: jnp.ndarray) -> jnp.ndarray:
    """x0_hat = sqrt(1 / abar_t) x_t - sqrt(1 / abar_t - 1) eps (never clipped). Shapes [N, *shape]."""
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - extract(schedule.sqrt_recipm1_alphas_cumprod, t, x_t) * eps)


def predict_eps_from_x0(schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray, x0: jnp.ndarray) -> jnp.ndarray:
    """The eps for which ``predict_x0_from_eps`` gives ``x0``. Shapes [N, *shape].

    Written as (x_t - sqrt(abar_t) x0) / sqrt(1 - abar_t), which stays finite where abar_t underflows
    float32 (the equivalent (sqrt(1/abar_t) x_t - x0) / sqrt(1/abar_t - 1) is inf / inf there).
    """
    return ((x_t - extract(schedule.sqrt_alphas_cumprod, t, x_t) * x0)
            / extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t))


def posterior_mean_variance(schedule: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray):
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0).

    Returns:
      (mean [N, *shape], variance [N, 1, ...] or [], log_variance [N, 1, ...] or []).
    """
    mean = (extract(schedule.posterior_mean_coef1, t, x_t) * x0
            + extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
    return (mean, extract(schedule.posterior_variance, t, x_t),
            extract(schedule.posterior_log_variance_clipped, t, x_t))


def model_predictions(schedule: Schedule, output: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray,
                      objective: str = "eps"):
    """Turn a denoiser's output into (x0_hat, reverse mean) for the given training objective.

    For ``eps`` the mean is taken as ``coef_x x_t - coef_eps eps``, the posterior mean at x0_hat folded
    in float64 (equal to ``c1 x0_hat + c2 x_t`` up to float32 rounding). Shapes [N, *shape].
    """
    if objective == "eps":
        x0 = predict_x0_from_eps(schedule, x_t, t, output)
        mean = (extract(schedule.reverse_mean_coef_x, t, x_t) * x_t
                - extract(schedule.reverse_mean_coef_eps, t, x_t) * output)
    elif objective == "x0":
        x0 = output
        mean = posterior_mean_variance(schedule, x0, x_t, t)[0]
    elif objective == "mean":
        mean = output
        x0 = ((mean - extract(schedule.posterior_mean_coef2, t, x_t) * x_t)
              / extract(schedule.posterior_mean_coef1, t, x_t))
    else:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    return x0, mean


def loss_target(schedule: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray,
                objective: str = "eps") -> jnp.ndarray:
    """What the denoiser regresses on: the noise, x0, or the posterior mean. [N, *shape]."""
    if objective == "eps":
        return noise
    if objective == "x0":
        return x0
    if objective == "mean":
        return posterior_mean_variance(schedule, x0, x_t, t)[0]
    raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")


def sample_timesteps(key: jax.Array, n: int, num_timesteps: int, power: float = 1.0) -> jnp.ndarray:
    """Training timesteps t [n] (int32) in 0..T-1: uniform for ``power`` 1 (the published rule), else
    ``floor(T u^power)`` with u uniform on [0, 1), which for ``power`` > 1 draws small t more often (density
    proportional to (t / T)^(1 / power - 1)): in expectation the uniform loss weighted by that density."""
    if power == 1.0:
        return jax.random.randint(key, (n,), 0, num_timesteps)
    u = jax.random.uniform(key, (n,))
    return jnp.minimum(jnp.floor(num_timesteps * u ** power).astype(jnp.int32), num_timesteps - 1)


def denoising_loss(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, x0: jnp.ndarray,
                   objective: str = "eps", t_power: float = 1.0) -> jnp.ndarray:
    """The simple DDPM loss: mean over the batch of the mean over dims of (target - output)^2.

    t is uniform on 0..T-1 (or drawn by :func:`sample_timesteps` with ``t_power``) and the noise standard
    normal, both drawn from ``key``.

    Args:
      denoise_fn: ``(params, x_t [N, *shape], t [N]) -> output [N, *shape]``.
      params: the denoiser's parameters.
      schedule: the noise schedule.
      key: a PRNG key.
      x0: a batch of clean data, [N, *shape].
      objective: ``eps`` (the paper's), ``x0`` or ``mean``.
      t_power: 1 (uniform t, the paper's) or the power of :func:`sample_timesteps`.
    Returns:
      The scalar loss.
    """
    t, noise = loss_draws(key, x0, schedule.num_timesteps, t_power)
    return denoising_loss_at(denoise_fn, params, schedule, x0, t, noise, objective)


def loss_draws(key: jax.Array, x0: jnp.ndarray, num_timesteps: int,
               t_power: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The timesteps t [N] (int32) and noise [N, *shape] that :func:`denoising_loss` draws from ``key``
    for the batch ``x0`` [N, *shape]."""
    t_key, noise_key = jax.random.split(key)
    t = sample_timesteps(t_key, x0.shape[0], num_timesteps, t_power)
    return t, jax.random.normal(noise_key, x0.shape, x0.dtype)


def denoising_loss_at(denoise_fn: Denoiser, params, schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray,
                      noise: jnp.ndarray, objective: str = "eps") -> jnp.ndarray:
    """:func:`denoising_loss` at given timesteps t [N] and noise [N, *shape] (see :func:`loss_draws`)."""
    n = x0.shape[0]
    x_t = q_sample(schedule, x0, t, noise)
    target = loss_target(schedule, x0, x_t, t, noise, objective)
    err = (target - denoise_fn(params, x_t, t)) ** 2
    return jnp.mean(err.reshape(n, -1))
