"""Noise schedules: beta_t for t = 0..T-1 and every coefficient the diffusion needs.

The betas and all derived coefficients are computed in float64 with NumPy, then stored as float32
arrays in an immutable :class:`Schedule` (a pytree, so it can be passed through ``jit``/``vmap``).
"""
from __future__ import annotations

import math
from typing import Literal

import jax.numpy as jnp
import numpy as np
from flax import struct

ScheduleName = Literal["linear", "quad", "const", "warmup10", "warmup50", "jsd", "cosine"]
SCHEDULES: tuple[str, ...] = ("linear", "quad", "const", "warmup10", "warmup50", "jsd", "cosine")


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
    objective predicts x0_hat itself and samples any schedule (jsd ends with beta = 1 by construction).
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
