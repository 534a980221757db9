"""Denoisers. Each is a Flax module run as a pure ``(params, x, t) -> output`` function."""
import dataclasses

import flax.linen as nn

from mijax.models.mlp import ResidualBlock, ToyDenoiser, timestep_embedding


@dataclasses.dataclass(frozen=True)
class ModuleDenoiser:
    """``module.apply`` as a denoiser that compares and hashes by the module's settings.

    A bound ``module.apply`` compares by object identity, so a jitted sampler or trainer taking it as
    a static argument would recompile for every new but identical module; this one does not.
    """

    module: nn.Module

    def __call__(self, params, x, t):
        return self.module.apply(params, x, t)


from mijax.models.fused import KERNELS, FusedDenoiser, make_denoiser  # noqa: E402 - needs ModuleDenoiser's module

__all__ = ["KERNELS", "FusedDenoiser", "ModuleDenoiser", "ToyDenoiser", "ResidualBlock", "make_denoiser",
           "timestep_embedding"]
