"""The forward process: noise schedules, q(x_t | x_0), conversions between x0 and eps, the posterior, and
the training loss.

A schedule's betas and all derived coefficients are computed in float64 with NumPy, then stored as float32
arrays in an immutable :class:`Schedule` (a pytree, so it can be passed through ``jit``/``vmap``).
All other functions are pure and work on any data shape ``[N, *shape]`` (1D data is ``[N, 1]``); ``t`` is an
int array ``[N]`` of per-sample timesteps or a scalar shared by the batch.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

ScheduleName = Literal["linear", "quad", "const", "warmup10", "warmup50", "jsd", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "quad", "const", "warmup10", "warmup50", "jsd", "cosine")
# A denoiser maps (params, x_t [N, *shape], t [N] or []) to the model output [N, *shape].
Denoiser = Callable[[object, jnp.ndarray, jnp.ndarray], jnp.ndarray]
Objective = Literal["eps", "x0", "mean", "v"]
OBJECTIVES: tuple[str, ...] = ("eps", "x0", "mean", "v")


@struct.dataclass
class Schedule:
    """Precomputed coefficients of a discrete diffusion, each float32 of shape ``[T]``.

    ``alphas_cumprod[t]`` is abar_t; ``alphas_cumprod_prev[t]`` is abar_{t-1} (1 at t = 0).
    The reverse step coefficients follow Ho et al. (2020):
    ``posterior_mean = posterior_mean_coef1 * x0 + posterior_mean_coef2 * x_t``.
    """

    betas: jnp.ndarray  # [T]
    alphas_cumprod: jnp.ndarray  # [T]
    alphas_cumprod_prev: jnp.ndarray  # [T]
    sqrt_alphas_cumprod: jnp.ndarray  # [T]
    sqrt_one_minus_alphas_cumprod: jnp.ndarray  # [T]
    sqrt_recip_alphas_cumprod: jnp.ndarray  # [T]  sqrt(1 / abar_t)
    sqrt_recipm1_alphas_cumprod: jnp.ndarray  # [T]  sqrt(1 / abar_t - 1)
    posterior_variance: jnp.ndarray  # [T]  beta_t (1 - abar_{t-1}) / (1 - abar_t)
    posterior_log_variance_clipped: jnp.ndarray  # [T]  log of it, t = 0 replaced by t = 1
    posterior_mean_coef1: jnp.ndarray  # [T]
    posterior_mean_coef2: jnp.ndarray  # [T]
    # The posterior mean at x0 = x0_hat(x_t, eps) written in eps: mean = coef_x * x_t - coef_eps * eps.
    # Folded in float64, so it stays finite where sqrt(1 / abar_t) overflows float32 (const, jsd).
    reverse_mean_coef_x: jnp.ndarray  # [T]  1 / sqrt(alpha_t)
    reverse_mean_coef_eps: jnp.ndarray  # [T]  beta_t / (sqrt(alpha_t) sqrt(1 - abar_t))
    name: str = struct.field(pytree_node=False, default="linear")

    @property
    def num_timesteps(self) -> int:
        """T, the number of diffusion steps."""
        return int(self.betas.shape[0])


def beta_values(name: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-3,
                beta_end: float = 0.2) -> np.ndarray:
    """The float64 betas of a named schedule, shape ``[T]``.

    ``linear``, ``quad``, ``const``, ``warmup10``, ``warmup50`` and ``jsd`` are those of the published
    code (after Ho et al.); ``cosine`` is Nichol & Dhariwal's (s = 0.008, betas capped at 0.999) and
    ignores ``beta_start``/``beta_end``.
    """
    T = int(num_timesteps)
    if T < 1:
        raise ValueError(f"the number of timesteps must be >= 1, got {num_timesteps}")
    if name == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif name == "quad":
        betas = np.linspace(beta_start**0.5, beta_end**0.5, T, dtype=np.float64) ** 2
    elif name == "const":
        betas = np.full(T, beta_end, dtype=np.float64)
    elif name in ("warmup10", "warmup50"):
        frac = 0.1 if name == "warmup10" else 0.5
        betas = np.full(T, beta_end, dtype=np.float64)
        warmup = int(T * frac)
        betas[:warmup] = np.linspace(beta_start, beta_end, warmup, dtype=np.float64)
    elif name == "jsd":  # 1/T, 1/(T-1), ..., 1
        betas = 1.0 / np.linspace(T, 1, T, dtype=np.float64)
    elif name == "cosine":
        s = 0.008
        f = lambda u: math.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f(i + 1) / f(i), 0.999) for i in range(T)], dtype=np.float64)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose from {', '.join(SCHEDULES)}")
    if not (np.all(betas > 0) and np.all(betas <= 1)):
        raise ValueError(f"schedule {name!r} gives betas outside (0, 1]: check beta_start/beta_end")
    return betas


def check_objective(name: str, num_timesteps: int, beta_start: float, beta_end: float, objective: str) -> None:
    """Raise ValueError (one line, naming the rule) where a network of ``objective`` cannot sample the schedule.

    A step with beta_t = 1 has alpha_t = 0, hence alpha_bar = 0 from t on: x_t holds nothing of x_0. The
    ``eps`` objective recovers x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) and takes the
    reverse step (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t), both divided by zero there, so
    it needs every beta below 1. The ``mean`` objective recovers x0_hat = (mean - c2 x_t) / c1 with
    c1 = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t), zero at a second step of beta = 1. The ``x0``
    objective predicts x0_hat itself and samples any schedule (jsd ends with beta = 1 by construction), as does
    the ``v`` objective (x0_hat = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v: x0_hat = -v where alpha_bar_t
    = 0).
    """
    betas = beta_values(name, num_timesteps, beta_start, beta_end)
    ones = np.flatnonzero(betas >= 1.0)
    if objective == "eps" and ones.size:
        raise ValueError(f"schedule {name!r} reaches beta = 1 at t = {int(ones[0])} of T = {len(betas)}: alpha_bar_t "
                         "= 0 there, so the eps objective's x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / "
                         "sqrt(alpha_bar_t) and its reverse step (divided by sqrt(alpha_t)) are undefined; keep "
                         "every beta below 1 (--beta-end < 1) or train with --objective x0")
    if objective == "mean" and ones.size > 1:
        raise ValueError(f"schedule {name!r} has beta = 1 at t = {int(ones[0])} and t = {int(ones[1])}: "
                         "alpha_bar_{t-1} = 0 at the second, so the mean objective's x0_hat = (mean - c2 x_t) / c1 "
                         "divides by c1 = 0; keep beta = 1 to one step at most or train with --objective x0")


def make_schedule(name: str = "linear", num_timesteps: int = 1000, beta_start: float = 1e-3,
                  beta_end: float = 0.2) -> Schedule:
    """Build a :class:`Schedule`. The defaults are the paper's: linear 1e-3 -> 0.2 over T = 1000.

    Example:
      >>> s = make_schedule()
      >>> round(float(s.alphas_cumprod[9]), 5)
      0.9812
    """
    betas = beta_values(name, num_timesteps, beta_start, beta_end)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    with np.errstate(divide="ignore"):
        post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
        recip = np.sqrt(1.0 / abar)
        recipm1 = np.sqrt(1.0 / abar - 1.0)
        # log variance of the posterior, with t = 0 (variance 0) replaced by t = 1 as in Ho et al.
        post_logvar = np.log(np.concatenate([post_var[1:2], post_var[1:]])) if len(betas) > 1 \
            else np.log(betas)
    def f32(a):  # 1 / abar_t past float32's range is infinite by design (const, jsd): no warning
        with np.errstate(over="ignore"):
            return jnp.asarray(np.asarray(a, np.float64).astype(np.float32))
    with np.errstate(divide="ignore"):  # beta = 1 (jsd's last step): infinite 1 / sqrt(alpha_t), see check_objective
        reverse_x, reverse_eps = 1.0 / np.sqrt(alphas), betas / (np.sqrt(alphas) * np.sqrt(1.0 - abar))
    return Schedule(
        betas=f32(betas),
        alphas_cumprod=f32(abar),
        alphas_cumprod_prev=f32(abar_prev),
        sqrt_alphas_cumprod=f32(np.sqrt(abar)),
        sqrt_one_minus_alphas_cumprod=f32(np.sqrt(1.0 - abar)),
        sqrt_recip_alphas_cumprod=f32(recip),
        sqrt_recipm1_alphas_cumprod=f32(recipm1),
        posterior_variance=f32(post_var),
        posterior_log_variance_clipped=f32(post_logvar),
        posterior_mean_coef1=f32(betas * np.sqrt(abar_prev) / (1.0 - abar)),
        posterior_mean_coef2=f32(np.sqrt(alphas) * (1.0 - abar_prev) / (1.0 - abar)),
        reverse_mean_coef_x=f32(reverse_x),
        reverse_mean_coef_eps=f32(reverse_eps),
        name=name,
    )



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
    in float64 (equal to ``c1 x0_hat + c2 x_t`` up to float32 rounding). For ``v`` (the velocity
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0) x0_hat = sqrt(abar_t) x_t - sqrt(1 - abar_t) v and the mean is the
    posterior mean at x0_hat. Shapes [N, *shape].
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
    elif objective == "v":
        x0 = (extract(schedule.sqrt_alphas_cumprod, t, x_t) * x_t
              - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * output)
        mean = posterior_mean_variance(schedule, x0, x_t, t)[0]
    else:
        raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")
    return x0, mean


def loss_target(schedule: Schedule, x0: jnp.ndarray, x_t: jnp.ndarray, t: jnp.ndarray, noise: jnp.ndarray,
                objective: str = "eps") -> jnp.ndarray:
    """What the denoiser regresses on: the noise, x0, the posterior mean, or the velocity
    v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0. [N, *shape]."""
    if objective == "eps":
        return noise
    if objective == "x0":
        return x0
    if objective == "mean":
        return posterior_mean_variance(schedule, x0, x_t, t)[0]
    if objective == "v":
        return (extract(schedule.sqrt_alphas_cumprod, t, x_t) * noise
                - extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t) * x0)
    raise ValueError(f"unknown objective {objective!r}; choose from {', '.join(OBJECTIVES)}")


def sample_timesteps(key: jax.Array, n: int, num_timesteps: int, power: float = 1.0) -> jnp.ndarray:
    """Training timesteps t [n] (int32) in 0..T-1: uniform for ``power`` 1 (the published rule), else
    ``floor(T u^power)`` with u uniform on [0, 1), which for ``power`` > 1 draws small t more often (density
    proportional to (t / T)^(1 / power - 1)): in expectation the uniform loss weighted by that density."""
    if power == 1.0:
        return jax.random.randint(key, (n,), 0, num_timesteps)
    u = jax.random.uniform(key, (n,))
    return jnp.minimum(jnp.floor(num_timesteps * u ** power).astype(jnp.int32), num_timesteps - 1)


def min_snr_weights(schedule: Schedule, t: jnp.ndarray, objective: str, gamma: float) -> jnp.ndarray:
    """The min-SNR-gamma loss weights [N] of timesteps t [N] (Hang et al. 2023): each sample's error is weighted
    as min(SNR_t, gamma) times its x0 error, SNR_t = abar_t / (1 - abar_t), which caps the weight of the nearly
    clean steps. On a network's own target the weight is min(SNR_t, gamma) times the x0 error per unit of target
    error, squared: 1 for ``x0``, 1 / SNR_t for ``eps``, 1 / (SNR_t + 1) for ``v``, 1 / c1_t^2 for ``mean``
    (c1_t: the posterior mean's coefficient of x0)."""
    abar = schedule.alphas_cumprod[t]
    snr = abar / jnp.maximum(1.0 - abar, 1e-20)
    capped = jnp.minimum(snr, gamma)
    if objective == "x0":
        return capped
    if objective == "v":
        return capped / (snr + 1.0)
    if objective == "mean":
        return capped / schedule.posterior_mean_coef1[t] ** 2
    return capped / jnp.maximum(snr, 1e-20)


def denoising_loss(denoise_fn: Denoiser, params, schedule: Schedule, key: jax.Array, x0: jnp.ndarray,
                   objective: str = "eps", t_power: float = 1.0, smoothness: float = 0.0,
                   smoothness_rows: int = 0, min_snr: float = 0.0) -> jnp.ndarray:
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
      smoothness: the weight of :func:`smoothness_penalty` added to the loss (0: none, as published); its
        probes (for data of more than ``JAC_EXACT_MAX`` coordinates) come from ``fold_in(key, PROBE_STREAM)``.
      smoothness_rows: the penalty's mean over the first this many rows of the batch (0: all); an unbiased
        estimate of the full mean at a fraction of its cost.
      min_snr: gamma of the min-SNR weighting of each sample's error (:func:`min_snr_weights`); 0: every
        sample weighs the same (the paper's).
    Returns:
      The scalar loss.
    """
    t, noise = loss_draws(key, x0, schedule.num_timesteps, t_power)
    probes = smoothness_probes(key, x0) if smoothness else None
    return denoising_loss_at(denoise_fn, params, schedule, x0, t, noise, objective, smoothness, probes,
                             smoothness_rows, min_snr)


def loss_draws(key: jax.Array, x0: jnp.ndarray, num_timesteps: int,
               t_power: float = 1.0) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The timesteps t [N] (int32) and noise [N, *shape] that :func:`denoising_loss` draws from ``key``
    for the batch ``x0`` [N, *shape]."""
    t_key, noise_key = jax.random.split(key)
    t = sample_timesteps(t_key, x0.shape[0], num_timesteps, t_power)
    return t, jax.random.normal(noise_key, x0.shape, x0.dtype)


def denoising_loss_at(denoise_fn: Denoiser, params, schedule: Schedule, x0: jnp.ndarray, t: jnp.ndarray,
                      noise: jnp.ndarray, objective: str = "eps", smoothness: float = 0.0,
                      probes=None, smoothness_rows: int = 0, min_snr: float = 0.0) -> jnp.ndarray:
    """:func:`denoising_loss` at given timesteps t [N] and noise [N, *shape] (see :func:`loss_draws`), plus
    ``smoothness`` times :func:`smoothness_penalty` at the same x_t (``probes``: see there) over its first
    ``smoothness_rows`` rows (0: all); with ``min_snr`` > 0 each sample's error weighted by
    :func:`min_snr_weights`."""
    n = x0.shape[0]
    x_t = q_sample(schedule, x0, t, noise)
    target = loss_target(schedule, x0, x_t, t, noise, objective)
    err = (target - denoise_fn(params, x_t, t)) ** 2
    if min_snr:
        loss = jnp.mean(jnp.mean(err.reshape(n, -1), axis=1) * min_snr_weights(schedule, t, objective, min_snr))
    else:
        loss = jnp.mean(err.reshape(n, -1))
    if smoothness:
        rows = slice(0, smoothness_rows or n)
        loss = loss + smoothness * smoothness_penalty(denoise_fn, params, schedule, x_t[rows], t[rows], objective,
                                                      None if probes is None else probes[rows])
    return loss


JAC_EXACT_MAX = 16  # data of at most this many coordinates get exact Jacobians (one jvp per coordinate)
PROBE_STREAM = 0x5A00_0000  # the smoothness penalty's Rademacher probes: fold_in(loss key, PROBE_STREAM)


def smoothness_probes(key: jax.Array, x0: jnp.ndarray):
    """One Rademacher probe per row, [N, *shape], from ``fold_in(key, PROBE_STREAM)`` for data of more than
    ``JAC_EXACT_MAX`` coordinates; None (the exact diagonal) for smaller data."""
    if math.prod(x0.shape[1:]) <= JAC_EXACT_MAX:
        return None
    return jax.random.rademacher(jax.random.fold_in(key, PROBE_STREAM), x0.shape, x0.dtype)


def smoothness_penalty(denoise_fn: Denoiser, params, schedule: Schedule, x_t: jnp.ndarray, t: jnp.ndarray,
                       objective: str = "eps", probes=None) -> jnp.ndarray:
    """The score-smoothness penalty mean_i 1 / (1 + J_ii^2) over the batch and the coordinates, J the Jacobian
    of the model's score -eps_hat(x_t, t) / sqrt(1 - abar_t) in x_t. Small where the score turns sharply
    (near and between modes at small t), close to 1 where it is smooth: adding it to the loss pushes the
    model's score to change sharply. The diagonal is exact (one jvp per coordinate) when ``probes`` is None,
    else Hutchinson's one-probe estimate v * (J v) with the Rademacher ``probes`` [N, *shape]. A scalar."""
    n, shape = x_t.shape[0], x_t.shape[1:]
    sigma = extract(schedule.sqrt_one_minus_alphas_cumprod, t, x_t)

    def score(x):
        output = denoise_fn(params, x, t)
        eps = output if objective == "eps" else predict_eps_from_x0(
            schedule, x, t, model_predictions(schedule, output, x, t, objective)[0])
        return -eps / sigma

    push = jax.linearize(score, x_t)[1]
    if probes is None:
        size = math.prod(shape)
        basis = jnp.eye(size, dtype=x_t.dtype).reshape((size, 1) + shape)
        columns = jax.vmap(lambda e: push(jnp.broadcast_to(e, x_t.shape)).reshape(n, size))(basis)  # [D, N, D]
        diagonal = jnp.diagonal(columns, axis1=0, axis2=2)  # [N, D]
    else:
        diagonal = (probes * push(probes)).reshape(n, -1)
    return jnp.mean(1.0 / (1.0 + jnp.square(diagonal)))
