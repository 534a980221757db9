"""Flax modules as denoisers: ``(params, x [N, *shape], t [N] or []) -> output [N, *shape]``."""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ModuleDenoiser:
    """``module.apply`` as a denoiser that compares and hashes by the module's settings.

    A bound ``module.apply`` compares by object identity, so a jitted sampler or trainer taking it as
    a static argument would recompile for every new but identical module; this one does not.
    """

    module: nn.Module

    def __call__(self, params, x, t):
        return self.module.apply(params, x, t)

    def training(self, key):
        """The denoiser of a training step: with dropout masks from ``key`` when the module has dropout
        (a ``dropout`` rate > 0 and a ``train`` argument), else this one."""
        if not getattr(self.module, "dropout", 0.0):
            return self
        return lambda params, x, t: self.module.apply(params, x, t, train=True, rngs={"dropout": key})


class Flattened(nn.Module):
    """A vector denoiser on data of any shape: ``x [N, *shape]`` is flattened to ``[N, prod(shape)]`` for
    ``inner`` and its output reshaped back."""

    inner: nn.Module

    def __call__(self, x: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        return self.inner(x.reshape(x.shape[0], -1), t).reshape(x.shape)
