"""Denoisers. Each is a Flax module run as a pure ``(params, x, t) -> output`` function."""
from mijax.models.mlp import ResidualBlock, ToyDenoiser, timestep_embedding

__all__ = ["ToyDenoiser", "ResidualBlock", "timestep_embedding"]
