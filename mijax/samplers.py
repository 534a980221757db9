"""Reverse samplers: which timesteps a sampler visits, and the rule of one reverse step, one registry entry
each (:data:`SAMPLERS`).

Every sampler runs in the same ``lax.scan`` (:mod:`mijax.sampling`), which carries Hal and the detectors over
the x0_hat of each visited step, so a Hal window of K steps is the last K *steps of that sampler* (for DDPM over
all T steps, t = K - 1 .. 0; for a 50-step DDIM, the last K of its 50 timesteps). The last step of every
sampler returns x0_hat itself. Entries:

=========  ================================================================  ======================
name       one step from t to the next visited t' (t' = -1 after the last)   network evaluations
=========  ================================================================  ======================
ddpm       ancestral: the posterior mean plus sigma_t noise (``variance``:    T
           beta_t, the paper's, or the posterior variance); all T steps
ddim       x' = sqrt(abar_t') x0_hat + sqrt(1 - abar_t' - s^2) eps_hat + s z,   steps
           s = eta sqrt((1 - abar_t') / (1 - abar_t) (1 - abar_t / abar_t'));
           eta = 0: the probability-flow ODE by Euler's method (deterministic
           given x_T), eta = 1 over all T steps: DDPM with the posterior
           variance
heun       the probability-flow ODE by Heun's second-order method (EDM's):   2 steps - 1
           the DDIM (Euler) step, eps_hat again there, the step taken with
           the mean of the two slopes; Euler into the last step
dpmpp2m    DPM-Solver++(2M): the data-prediction multistep solver of         steps
           second order, x' = (sigma_t' / sigma_t) x + alpha_t' (1 - e^-h) D,
           D = (1 + 1/2r) x0_hat - (1/2r) x0_hat of the previous step, h the
           step in log(alpha / sigma), r the previous step's h over this one's;
           its first step is DDIM's
=========  ================================================================  ======================

Step subsequences (:func:`timesteps`, every sampler but ``ddpm``): ``steps`` timesteps, ``uniform`` (evenly
spaced over 0 .. T - 1) or ``quad`` (DDIM's quadratic spacing: ``round(linspace(0, sqrt(0.8 T), steps)^2)``,
made strictly increasing, dense near t = 0 and ending at 0.8 T). ``stochastic_steps`` k > 0 (DDIM only)
replaces part of the trajectory by k single DDPM steps t_w, t_w - 1, ..., t_w - k + 1 (DDIM's steps above t_w
lead to t_w, and DDIM continues from t_w - k): ``first``, t_w the subsequence's first timestep; ``last``,
t_w = k - 1 (the last k steps, down to 0); ``window``, t_w given (``stochastic_from``).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mijax.diffusion import Schedule
from mijax.registry import Registry

SKIPS = ("uniform", "quad")
STOCHASTIC_AT = ("first", "last", "window")
DETERMINISTIC, ANCESTRAL = 0, 1  # the kinds of step (:func:`timesteps`)


def subsequence(num_timesteps: int, steps: Optional[int], skip: str = "uniform") -> np.ndarray:
    """The timesteps of a step-skipping sampler, increasing: all T (``steps`` None), or ``steps`` of them spaced
    by ``skip``. int32 [S]."""
    T = num_timesteps
    if steps is None:
        return np.arange(T, dtype=np.int32)
    if skip == "uniform":
        return np.unique(np.round(np.linspace(0, T - 1, steps)).astype(np.int32))
    if skip != "quad":
        raise ValueError(f"unknown step spacing {skip!r}; choose from {', '.join(SKIPS)}")
    seq = np.clip(np.round(np.linspace(0.0, np.sqrt(0.8 * T), steps) ** 2).astype(np.int64), 0, T - 1)
    for k in range(1, len(seq)):  # strictly increasing, then back inside 0 .. T - 1 from the top
        seq[k] = max(seq[k], seq[k - 1] + 1)
    seq = np.clip(seq - max(0, int(seq[-1]) - (T - 1)), 0, T - 1)
    for k in range(len(seq) - 2, -1, -1):
        seq[k] = min(seq[k], seq[k + 1] - 1)
    if seq[0] < 0:
        raise ValueError(f"{steps} quadratically spaced steps do not fit in T = {T}")
    return seq.astype(np.int32)


def timesteps(sampler: str, num_timesteps: int, steps: Optional[int] = None, skip: str = "uniform",
              stochastic_steps: int = 0, stochastic_at: str = "first",
              stochastic_from: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """The timesteps a sampler visits, in reverse order (the last is 0), and the kind of each step
    (``DETERMINISTIC``: the sampler's own rule; ``ANCESTRAL``: a DDPM step). (int32 [S], int32 [S])."""
    if sampler == "ddpm":
        ts = np.arange(num_timesteps - 1, -1, -1, dtype=np.int32)
        return ts, np.full(len(ts), ANCESTRAL, np.int32)
    ts = subsequence(num_timesteps, steps, skip)[::-1]
    kinds = np.full(len(ts), DETERMINISTIC, np.int32)
    k = int(stochastic_steps)
    if k <= 0:
        return ts.copy(), kinds
    if stochastic_at not in STOCHASTIC_AT:
        raise ValueError(f"unknown place for stochastic steps {stochastic_at!r}; choose from "
                         f"{', '.join(STOCHASTIC_AT)}")
    if stochastic_at == "window" and stochastic_from is None:
        raise ValueError("a window of stochastic steps needs the timestep it starts from (stochastic_from)")
    start = {"first": int(ts[0]), "last": k - 1}.get(stochastic_at, stochastic_from)
    start = int(start)
    if not k - 1 <= start <= num_timesteps - 1:
        raise ValueError(f"{k} stochastic steps from t = {start} do not fit in t = 0 .. {num_timesteps - 1}")
    before = ts[ts > start]
    raw = np.arange(start, start - k, -1)
    after = np.concatenate([[start - k], ts[ts < start - k]]) if start - k >= 0 else np.zeros(0, np.int32)
    ts = np.concatenate([before, raw, after])
    kinds = np.repeat([DETERMINISTIC, ANCESTRAL, DETERMINISTIC], [len(before), len(raw), len(after)])
    return ts.astype(np.int32), kinds.astype(np.int32)


class Step:
    """What a sampler's rule sees at one reverse step: the schedule's coefficients (and ``log_alphas`` [T], the
    log of each alpha_t), the step's timesteps ``t``, ``tp`` (the next visited, -1 after the last) and ``tb``
    (the one visited before, -1 at the first), the samples ``x`` [C, *shape], the network's x0_hat, eps_hat and
    posterior mean there, the step's standard ``noise``, ``eps_at(x, t)`` (the network's eps_hat anywhere) and
    the sampler's settings (``eps_objective``: the network predicts eps)."""

    def __init__(self, schedule: Schedule, log_alphas, x, x0, eps, mean, t, tp, tb, noise, eps_at: Callable,
                 eta: float, variance: str, eps_objective: bool):
        self.schedule, self.log_alphas, self.x, self.x0, self.eps, self.mean = schedule, log_alphas, x, x0, eps, mean
        self.t, self.tp, self.tb = t, tp, tb
        self.noise, self.eps_at, self.eta = noise, eps_at, eta
        self.variance, self.eps_objective = variance, eps_objective

    def at(self, table, t):
        """``table[t]`` of the schedule, 1 where t = -1 for the cumulative products (after the last step)."""
        return table[jnp.maximum(t, 0)]

    def keep(self):
        """abar_t / abar_t' (the product of alpha_s over t' < s <= t), summed in log space: late in long
        schedules abar underflows float32 and the ratio of two zeros is not representable."""
        s = jnp.arange(self.schedule.num_timesteps)
        return jnp.exp(jnp.sum(jnp.where((s > self.tp) & (s <= self.t), self.log_alphas, 0.0)))

    def abar_next(self):
        return jnp.where(self.tp >= 0, self.at(self.schedule.alphas_cumprod, self.tp), 1.0)


def _ddpm(step: Step, state):
    """The ancestral step: the posterior mean at x0_hat plus sigma_t noise."""
    schedule, t = step.schedule, step.t
    if step.variance == "fixed_large":
        sigma = jnp.sqrt(schedule.betas[t])
    else:
        sigma = jnp.exp(0.5 * schedule.posterior_log_variance_clipped[t])
    return step.mean + jnp.where(t > 0, sigma, 0.0) * step.noise, state


def _ddim(step: Step, state):
    """DDIM's step with noise scale eta (0: Euler's method on the probability-flow ODE)."""
    schedule, t, tp, x = step.schedule, step.t, step.tp, step.x
    abar_t, abar_prev, keep = schedule.alphas_cumprod[t], step.abar_next(), step.keep()
    sigma = step.eta * jnp.sqrt((1 - abar_prev) / (1 - abar_t) * (1 - keep))
    sigma = jnp.where(tp >= 0, sigma, 0.0)
    direction = jnp.sqrt(jnp.maximum(1 - abar_prev - sigma**2, 0.0))
    if step.eps_objective:
        # sqrt(abar_prev) x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(keep), finite where x0_hat is not
        scaled_x0 = (x - schedule.sqrt_one_minus_alphas_cumprod[t] * step.eps) * jax.lax.rsqrt(keep)
    else:
        scaled_x0 = jnp.sqrt(abar_prev) * step.x0
    return scaled_x0 + direction * step.eps + sigma * step.noise, state


def _heun(step: Step, state):
    """Heun's method on the probability-flow ODE in DDIM's variables (y = x / sqrt(abar), dy/ds = eps_hat with
    s = sqrt((1 - abar) / abar)): the Euler step, eps_hat at its end, the step with the mean slope."""
    schedule, t, tp, x = step.schedule, step.t, step.tp, step.x
    abar_prev, keep = step.abar_next(), step.keep()
    # x' = sqrt(abar_t' / abar_t) x + c eps with c = sqrt(abar_t') (s_t' - s_t), written without 1 / abar_t
    c = jnp.sqrt(1 - abar_prev) - schedule.sqrt_one_minus_alphas_cumprod[t] * jax.lax.rsqrt(keep)
    scaled = x * jax.lax.rsqrt(keep)
    euler = scaled + c * step.eps
    # the second slope at the Euler step's end; none after the last step (the scan returns x0_hat there)
    slope = jax.lax.cond(tp >= 0, lambda: step.eps_at(euler, jnp.maximum(tp, 0)), lambda: step.eps)
    return scaled + c * 0.5 * (step.eps + slope), state


def _dpmpp2m(step: Step, state):
    """DPM-Solver++(2M): data prediction, second order from the previous step's x0_hat (``state``)."""
    schedule, t, tp, tb, x = step.schedule, step.t, step.tp, step.tb, step.x
    alpha, sigma = schedule.sqrt_alphas_cumprod, schedule.sqrt_one_minus_alphas_cumprod

    def lam(t):  # log(alpha_t / sigma_t)
        return jnp.log(alpha[t]) - jnp.log(sigma[t])

    tp0, tb0 = jnp.maximum(tp, 0), jnp.maximum(tb, 0)
    h = lam(tp0) - lam(t)
    r = (lam(t) - lam(tb0)) / h
    second = (tb >= 0) & (tp >= 0)
    d = jnp.where(second, (1 + 0.5 / r) * step.x0 - (0.5 / r) * state, step.x0)
    x_next = (sigma[tp0] / sigma[t]) * x - alpha[tp0] * jnp.expm1(-h) * d
    return x_next, step.x0


SAMPLERS = Registry("sampler")
SAMPLERS.register("ddpm", _ddpm, "ancestral DDPM over all T steps (the paper's)", extra={"evaluations": 1})
SAMPLERS.register("ddim", _ddim, "DDIM with eta (0: deterministic) over a step subsequence", extra={"evaluations": 1})
SAMPLERS.register("heun", _heun, "the probability-flow ODE by Heun's second-order method",
                  extra={"evaluations": 2})
SAMPLERS.register("dpmpp2m", _dpmpp2m, "DPM-Solver++(2M), second-order multistep", extra={"evaluations": 1,
                                                                                         "carries_x0": True})


def names() -> list[str]:
    return SAMPLERS.names()


def carries_x0(sampler: str) -> bool:
    """Whether the sampler's steps carry the previous step's x0_hat (a multistep solver)."""
    return bool(SAMPLERS.entry(sampler).extra.get("carries_x0", False))


def evaluations(sampler: str, kinds: np.ndarray) -> int:
    """Network evaluations per sample of a sampler over steps of ``kinds`` (Heun's last step is Euler's)."""
    per = SAMPLERS.entry(sampler).evaluations
    own = int(np.sum(kinds == DETERMINISTIC))
    return int(np.sum(kinds == ANCESTRAL)) + own * per - (1 if per == 2 and own else 0)


__all__ = ["ANCESTRAL", "DETERMINISTIC", "SAMPLERS", "SKIPS", "STOCHASTIC_AT", "Step", "carries_x0", "evaluations",
           "names", "subsequence", "timesteps"]
