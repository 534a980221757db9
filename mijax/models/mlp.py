"""The paper's toy denoiser: a width-128 MLP with one residual block applied three times.

Exactly the published ``Decoder`` (SPEC section 3): sinusoidal embedding of the integer t (64
frequencies, sin first) -> Linear -> LeakyReLU(0.02); h = Linear_nobias(x); three passes of one
residual block with *tied* weights; output Linear(LayerNorm(h)). LayerNorm eps is 1e-5; Linear
weights are Xavier-uniform and biases zero, as in the published code.
"""
from __future__ import annotations

import math
from functools import partial

import flax.linen as nn
import jax.numpy as jnp

LEAKY_SLOPE = 0.02
LAYER_NORM_EPS = 1e-5

_dense = partial(nn.Dense, kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.zeros)


def _act(x):
    return nn.leaky_relu(x, LEAKY_SLOPE)


def timestep_embedding(t: jnp.ndarray, width: int) -> jnp.ndarray:
    """Sinusoidal embedding ``[sin(t f), cos(t f)]``, f_i = exp(-i ln(10000) / (width/2 - 1)).

    Args:
      t: integer timesteps, [B].
      width: embedding width (even).
    Returns:
      [B, width] float32.
    """
    half = width // 2
    freqs = jnp.exp(-jnp.arange(half, dtype=jnp.float32) * (math.log(10000.0) / (half - 1)))
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


class ResidualBlock(nn.Module):
    """``h + W2 act(LN2(W1 act(LN1(h)) + time)))``; the time projection is computed separately so
    that a batch sharing one t computes it once."""

    width: int

    def setup(self):
        self.norm1 = nn.LayerNorm(epsilon=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(epsilon=LAYER_NORM_EPS)
        self.fc1 = _dense(self.width, use_bias=False)
        self.fc2 = _dense(self.width, use_bias=False)
        self.time = _dense(self.width)

    def project_time(self, temb: jnp.ndarray) -> jnp.ndarray:
        """[B, width] -> [B, width]; B is 1 when the batch shares t."""
        return self.time(temb)

    def __call__(self, h: jnp.ndarray, time_projection: jnp.ndarray) -> jnp.ndarray:
        out = self.fc1(_act(self.norm1(h))) + time_projection
        return h + self.fc2(_act(self.norm2(out)))


class ToyDenoiser(nn.Module):
    """The paper's denoiser for data [N, features].

    Attributes:
      features: the data dimension d (1 or 2 in the paper).
      width: hidden width (128).
      num_layers: how many times the residual block is applied (3).
      tied: one block reused ``num_layers`` times (the published code) or separate blocks.

    ``__call__(x [N, d], t [N] or []) -> eps_hat [N, d]``. A scalar t is embedded once for the batch.
    Parameters: 66,817 (d = 1) and 67,074 (d = 2) tied; untied adds 99,584.
    """

    features: int
    width: int = 128
    num_layers: int = 3
    tied: bool = True

    def setup(self):
        self.input_proj = _dense(self.width, use_bias=False)
        self.time_proj = _dense(self.width)
        n_blocks = 1 if self.tied else self.num_layers
        self.blocks = [ResidualBlock(self.width) for _ in range(n_blocks)]
        self.out_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS)
        self.output = _dense(self.features)

    def __call__(self, x: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"ToyDenoiser expects x of shape [N, {self.features}], got {x.shape}")
        t = jnp.asarray(t).reshape(-1)  # [] -> [1]: one embedding for the whole batch
        temb = _act(self.time_proj(timestep_embedding(t, self.width)))
        h = self.input_proj(x)
        if self.tied:
            block = self.blocks[0]
            time_projection = block.project_time(temb)  # same in all passes: weights are tied
            for _ in range(self.num_layers):
                h = block(h, time_projection)
        else:
            for block in self.blocks:
                h = block(h, block.project_time(temb))
        return self.output(self.out_norm(h))
