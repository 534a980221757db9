"""Hallucination detectors, each a running reduction of the sampler's scan (memory independent of T).

A detector turns one sample's reverse trajectory into one score, **higher = more suspicious**. Each is
registered here by name with its reference; a user asks for any subset in one sampling pass
(``SamplerConfig(detectors=parse("hal,jac_trace,lid"))``, ``mijax sample --detectors ...``) and gets one
score array [N] per detector (``Samples.scores``). Every detector except ``lid`` looks at a window of
reverse steps ``name@end:length`` (the ``length`` steps ending ``end`` steps before the last; default
``@0:10``, the paper's t = 9..0); ``lid@end`` evaluates at the final sample with t = ``end``.

Per step the sampler offers: x_t, x0_hat, the predicted noise eps_hat(x_t) (the network's output for
the eps objective, converted otherwise), the Jacobian J = d eps_hat / d x_t (its trace and squared
Frobenius norm per sample: exact by ``jax.jvp`` along every coordinate for samples of at most
``JAC_EXACT_MAX`` coordinates, else Hutchinson's estimate with ``SamplerConfig.jac_probes`` Rademacher
probes, E[v'Jv] = tr J and E|Jv|^2 = |J|_F^2), and for mixtures the exact eps*(x_t). The Jacobian and
the oracle are computed only on the steps inside some window that needs them (one ``lax.cond``).

=================  ===================================================================================
``hal``            variance of x0_hat over the window, per coordinate, reduced by ``hal_reduction``
                   (Aithal et al. 2024, the paper's Hal; the sampler's ``Samples.hal`` is the same
                   number for the same window)
``xt_var``         the same variance of x_t (how much the noisy state itself still moves)
``path_length``    the length of x0_hat's path over the window, sum_k |x0_hat_k - x0_hat_{k-1}|_2
``eps_norm``       the mean over the window of the predicted noise's RMS, |eps_hat|_2 / sqrt(D)
``jac_trace``      minus the mean over the window of tr(d eps_hat / d x_t). For the exact denoiser
                   eps* = -sigma_t grad log p_t, so J = -sigma_t Hess log p_t: near a mode J ~ sigma_t /
                   (s^2 + sigma_t^2) I > 0, between modes the log density is convex along the gap and
                   the trace is negative; the score is -trace so that higher is more suspicious
``jac_frob``       the mean over the window of |d eps_hat / d x_t|_F (how steep the learned field is)
``lid``            FLIPD (Kamkari et al., "A Geometric View of Data Complexity: Efficient Local
                   Intrinsic Dimension Estimation with Diffusion Models", NeurIPS 2024, eq. 10 for a
                   variance-preserving process): LID(x) = D + sigma^2 (tr grad s(psi x) + |s(psi x)|^2)
                   with psi = sqrt(abar_t0), sigma = sqrt(1 - abar_t0), s = -eps_hat / sigma, i.e.
                   D - sigma tr J(psi x) + |eps_hat(psi x)|^2, at the final sample x and t0 = ``end``
``oracle``         the mean over the window of the RMS distance between the learned eps_hat and the
                   exact eps*(x_t) of the true mixture (mixtures only: an upper bound on what any
                   score-based detector can know)
=================  ===================================================================================
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mijax.diffusion import JAC_EXACT_MAX  # samples of at most this many coordinates: the exact Jacobian
DEFAULT_END, DEFAULT_LENGTH = 0, 10  # the paper's window, t = 9..0
PROBE_STREAM = 0x5EED0000  # Hutchinson probes of sample i at step t: fold_in(fold_in(key_i, PROBE_STREAM), t)
LID_END = 10  # lid's default t0


@dataclasses.dataclass(frozen=True)
class Detector:
    """A registered detector.

    Attributes:
      name: the registry name.
      kind: how the per-step quantity becomes a score: ``variance`` (Welford variance over the window of a
        [C, *shape] quantity, reduced by the sampler's ``hal_reduction``), ``mean`` (mean over the window of
        a [C] quantity), ``path`` (summed step lengths of a [C, *shape] quantity) or ``final`` (evaluated once
        at the final samples).
      quantity: ``StepView -> array``: what the detector reads at a step (``final``: at the final samples).
      sign: the score is ``sign * statistic`` (higher = more suspicious).
      expensive: needs the Jacobian or the oracle: computed only on steps inside its window.
      needs_oracle: needs the exact denoiser of the data (mixtures).
      summary: one line; reference: where it comes from.
    """

    name: str
    kind: str
    quantity: Callable[["StepView"], jnp.ndarray]
    sign: float = 1.0
    expensive: bool = False
    needs_oracle: bool = False
    summary: str = ""
    reference: str = ""

    @property
    def min_length(self) -> int:
        return 2 if self.kind in ("variance", "path") else 1


DETECTORS: dict[str, Detector] = {}


def register(detector: Detector) -> Detector:
    """Add ``detector`` to the registry (a name registered again is replaced)."""
    if detector.kind not in ("variance", "mean", "path", "final"):
        raise ValueError(f"unknown detector kind {detector.kind!r}")
    DETECTORS[detector.name] = detector
    return detector


@dataclasses.dataclass(frozen=True)
class DetectorSpec:
    """One requested detector and its window: ``length`` reverse steps ending ``end`` steps before the last
    (``lid``: t0 = ``end``, no window)."""

    name: str
    end: int = DEFAULT_END
    length: int = DEFAULT_LENGTH

    @property
    def detector(self) -> Detector:
        return DETECTORS[self.name]

    @property
    def label(self) -> str:
        """How a person writes it: ``hal``, ``hal@25:10``, ``lid@10``."""
        if self.detector.kind == "final":
            return self.name if self.end == LID_END else f"{self.name}@{self.end}"
        if (self.end, self.length) == (DEFAULT_END, DEFAULT_LENGTH):
            return self.name
        return f"{self.name}@{self.end}:{self.length}"

    @property
    def key(self) -> str:
        """Its name in files: ``hal``, ``hal_e25_k10``, ``lid_e10``."""
        return self.label.replace("@", "_e").replace(":", "_k")


def parse(text: str | Sequence[str]) -> tuple[DetectorSpec, ...]:
    """Detector specs from ``"hal,jac_trace@0:5,lid@10"`` (or a list of such items); ValueError on bad input.

    ``name`` takes the default window (t = 9..0; ``lid``: t0 = 10), ``name@end:length`` a window of
    ``length`` reverse steps ending ``end`` steps before the last, ``name@end`` (``lid``) t0 = end.
    """
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text)]
    specs = []
    for item in items:
        if not item:
            raise ValueError("empty detector name in the list")
        name, _, window = item.partition("@")
        if name not in DETECTORS:
            raise ValueError(f"unknown detector {name!r}; choose from {', '.join(DETECTORS)}")
        final = DETECTORS[name].kind == "final"
        try:
            if not window:
                end, length = (LID_END, 1) if final else (DEFAULT_END, DEFAULT_LENGTH)
            elif final:
                end, length = int(window), 1
            else:
                end_text, sep, length_text = window.partition(":")
                end, length = int(end_text), int(length_text) if sep else DEFAULT_LENGTH
        except ValueError:
            form = f"{name}@T0" if final else f"{name}@END:LENGTH"
            raise ValueError(f"bad detector window in {item!r}; write {form} with integers") from None
        specs.append(DetectorSpec(name, end, length))
    labels = [s.label for s in specs]
    for label in labels:
        if labels.count(label) > 1:
            raise ValueError(f"detector {label!r} is asked for twice")
    return tuple(specs)


def validate(specs: Sequence[DetectorSpec], num_steps: int, num_timesteps: int, has_oracle: bool) -> None:
    """Raise ValueError with a one-line reason if ``specs`` cannot run on a sampler of ``num_steps`` reverse
    steps over a ``num_timesteps`` schedule (``has_oracle``: the sampler was given the exact denoiser)."""
    for s in specs:
        if s.name not in DETECTORS:
            raise ValueError(f"unknown detector {s.name!r}; choose from {', '.join(DETECTORS)}")
        d = s.detector
        if d.kind == "final":
            if not 0 <= s.end < num_timesteps:
                raise ValueError(f"detector {s.label}: t0 must be in 0..{num_timesteps - 1}, got {s.end}")
        elif not d.min_length <= s.length <= num_steps or s.end < 0 or s.end + s.length > num_steps:
            raise ValueError(f"detector {s.label}: a window of {s.length} steps ending {s.end} steps before the "
                             f"last must lie in the sampler's {num_steps} steps (and be >= {d.min_length} long)")
        if d.needs_oracle and not has_oracle:
            raise ValueError(f"detector {s.name} needs the data's exact denoiser (Gaussian mixtures only)")


# ---------------------------------------------------------------------------------------------
# What a detector sees at a step.

class StepView:
    """The quantities of one reverse step for C samples, computed on first use (inside the scan's trace).

    Attributes: ``x_t`` [C, *shape], ``x0`` (x0_hat) [C, *shape], ``eps`` [C, *shape] (the predicted noise),
    ``jac`` ((trace [C], squared Frobenius norm [C]) of d eps / d x_t), ``oracle_eps`` [C, *shape], ``t`` [];
    for a ``final`` detector ``x_t`` is psi x (the final samples scaled) and ``abar`` is abar_t0.
    """

    def __init__(self, eps_fn: Callable, x_t, t, x0=None, eps=None, keys=None, probes: int = 4,
                 oracle_fn: Optional[Callable] = None, abar=None):
        self.x_t, self.t, self._eps_fn, self._keys, self._probes, self._oracle_fn = x_t, t, eps_fn, keys, probes, oracle_fn
        self._x0, self._eps, self._jac, self.abar = x0, eps, None, abar

    @property
    def x0(self):
        return self._x0

    @property
    def eps(self):
        if self._eps is None:
            self._eps = self._eps_fn(self.x_t)
        return self._eps

    @property
    def jac(self):
        if self._jac is None:
            self._jac = jacobian_stats(self._eps_fn, self.x_t, self._keys, self.t, self._probes)
        return self._jac

    @property
    def oracle_eps(self):
        return self._oracle_fn(self.x_t, self.t)

    @property
    def size(self) -> int:
        return int(np.prod(self.x_t.shape[1:]))


def _rms(v: jnp.ndarray) -> jnp.ndarray:
    return jnp.sqrt(jnp.mean(jnp.square(v.reshape(v.shape[0], -1)), axis=1))


def jacobian_stats(fn: Callable, x: jnp.ndarray, keys: Optional[jax.Array], step, probes: int = 4):
    """(trace [C], squared Frobenius norm [C]) of each row's Jacobian of a row-wise ``fn`` [C, *shape] ->
    [C, *shape] at x: exact (one ``jax.jvp`` per coordinate) for at most ``JAC_EXACT_MAX`` coordinates,
    else Hutchinson's estimate with ``probes`` Rademacher probes per row drawn from
    ``fold_in(fold_in(keys[i], PROBE_STREAM), step)``."""
    shape = x.shape[1:]
    size = int(np.prod(shape))
    push = jax.linearize(fn, x)[1]
    if size <= JAC_EXACT_MAX:
        basis = jnp.eye(size, dtype=x.dtype).reshape((size, 1) + shape)
        columns = jax.vmap(lambda e: push(jnp.broadcast_to(e, x.shape)))(basis)  # [D, C, *shape]: column j
        columns = columns.reshape(size, x.shape[0], size)
        trace = jnp.sum(jnp.diagonal(columns, axis1=0, axis2=2), axis=1)
        return trace, jnp.sum(jnp.square(columns), axis=(0, 2))
    if keys is None:
        raise ValueError("Hutchinson's estimate needs per-sample keys")

    def probe(k):
        k = jax.random.fold_in(jax.random.fold_in(k, PROBE_STREAM), step)
        return jax.random.rademacher(k, (probes,) + shape, x.dtype)

    v = jnp.moveaxis(jax.vmap(probe)(keys), 1, 0)  # [P, C, *shape]
    jv = jax.vmap(push)(v)
    flat = lambda a: a.reshape(probes, x.shape[0], -1)  # noqa: E731
    trace = jnp.mean(jnp.sum(flat(v) * flat(jv), axis=2), axis=0)
    return trace, jnp.mean(jnp.sum(jnp.square(flat(jv)), axis=2), axis=0)


def lid_quantity(view: StepView) -> jnp.ndarray:
    """FLIPD at the final samples (``view.x_t`` already scaled by psi = sqrt(abar_t0)): D - sigma tr J + |eps|^2."""
    sigma = jnp.sqrt(1.0 - view.abar)
    eps = view.eps.reshape(view.x_t.shape[0], -1)
    return view.size - sigma * view.jac[0] + jnp.sum(jnp.square(eps), axis=1)


register(Detector("hal", "variance", lambda v: v.x0, summary="variance of x0_hat over the window (the paper's Hal)",
                  reference="Aithal et al. 2024, sec. 5"))
register(Detector("xt_var", "variance", lambda v: v.x_t, summary="variance of x_t over the window"))
register(Detector("path_length", "path", lambda v: v.x0, summary="length of x0_hat's path over the window"))
register(Detector("eps_norm", "mean", lambda v: _rms(v.eps), summary="RMS of the predicted noise over the window"))
register(Detector("jac_trace", "mean", lambda v: v.jac[0], sign=-1.0, expensive=True,
                  summary="minus the trace of d eps_hat / d x_t over the window"))
register(Detector("jac_frob", "mean", lambda v: jnp.sqrt(jnp.maximum(v.jac[1], 0.0)), expensive=True,
                  summary="Frobenius norm of d eps_hat / d x_t over the window"))
register(Detector("lid", "final", lid_quantity, summary="FLIPD local intrinsic dimension at t0",
                  reference="Kamkari et al. 2024 (FLIPD)"))
register(Detector("oracle", "mean", lambda v: _rms(v.eps - v.oracle_eps), expensive=True, needs_oracle=True,
                  summary="RMS distance between eps_hat and the exact eps* (mixtures)"))

__all__ = ["DETECTORS", "Detector", "DetectorSpec", "JAC_EXACT_MAX", "StepView", "jacobian_stats", "parse",
           "register", "validate"]
