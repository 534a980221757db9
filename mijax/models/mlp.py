"""The paper's toy denoiser: a width-128 MLP with one residual block applied three times.

Exactly the published ``Decoder``: sinusoidal embedding of the integer t (64
frequencies, sin first) -> Linear -> LeakyReLU(0.02); h = Linear_nobias(x); three passes of one
residual block with *tied* weights; output Linear(LayerNorm(h)). LayerNorm eps is 1e-5; Linear
weights are Xavier-uniform and biases zero, as in the published code.
"""
from __future__ import annotations

import math
import flax.linen as nn
import jax
import jax.numpy as jnp

LEAKY_SLOPE = 0.02
LAYER_NORM_EPS = 1e-5
PRECISIONS = ("float32", "tf32", "bf16")


def _round_to_tf32(a: jnp.ndarray) -> jnp.ndarray:
    """float32 rounded to TF32's 10-bit mantissa (round to nearest even), kept as float32."""
    bits = jax.lax.bitcast_convert_type(a, jnp.uint32)
    bits = (bits + jnp.uint32(0xFFF) + ((bits >> 13) & jnp.uint32(1))) & jnp.uint32(0xFFFFE000)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


def matmul_dot_general(precision: str):
    """The ``dot_general`` of every Dense layer for a matmul precision; all else stays float32.

    ``float32``: full float32 products (``Precision.HIGHEST``; GPUs would otherwise use TF32).
    ``tf32``: inputs rounded to TF32 (10-bit mantissa), float32 accumulation: the tensor cores' TF32
    algorithm on GPU, the same rounding emulated on other backends (so CPU runs show its effect).
    ``bf16``: inputs cast to bfloat16, products accumulated in float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")

    def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):  # noqa: ARG001
        if mode == "bf16":
            return jax.lax.dot_general(lhs.astype(jnp.bfloat16), rhs.astype(jnp.bfloat16), dimension_numbers,
                                       preferred_element_type=jnp.float32)
        if mode == "tf32":
            if jax.default_backend() == "gpu":
                return jax.lax.dot_general(lhs, rhs, dimension_numbers,
                                           precision=jax.lax.DotAlgorithmPreset.TF32_TF32_F32,
                                           preferred_element_type=jnp.float32)
            lhs, rhs = _round_to_tf32(lhs), _round_to_tf32(rhs)
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=jax.lax.Precision.HIGHEST,
                                   preferred_element_type=jnp.float32)

    mode = precision
    return dot_general


def _dense(features: int, use_bias: bool = True, precision: str = "float32") -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.zeros, dot_general=matmul_dot_general(precision))


def _act(x):
    return nn.leaky_relu(x, LEAKY_SLOPE)


def timestep_embedding_closed(t: jnp.ndarray, width: int) -> jnp.ndarray:
    """Sinusoidal embedding ``[sin(t f), cos(t f)]``, f_i = exp(-i ln(10000) / (width/2 - 1)): the frequencies
    run from 1 down to 1/10000, both ends included (the published toy denoiser's). The UNet's
    (:func:`mijax.models.unet.timestep_embedding_half_open`) divides by width/2 and stops short of 1/10000.

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
    precision: str = "float32"

    def setup(self):
        self.norm1 = nn.LayerNorm(epsilon=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(epsilon=LAYER_NORM_EPS)
        self.fc1 = _dense(self.width, use_bias=False, precision=self.precision)
        self.fc2 = _dense(self.width, use_bias=False, precision=self.precision)
        self.time = _dense(self.width, precision=self.precision)

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
      precision: of the matmuls, ``float32`` (published), ``tf32`` or ``bf16`` (see
        :func:`matmul_dot_general`); parameters, LayerNorm and activations stay float32.

    ``__call__(x [N, d], t [N] or []) -> eps_hat [N, d]``. A scalar t is embedded once for the batch.
    Parameters: 66,817 (d = 1) and 67,074 (d = 2) tied; untied adds 99,584.
    """

    features: int
    width: int = 128
    num_layers: int = 3
    tied: bool = True
    precision: str = "float32"

    def setup(self):
        self.input_proj = _dense(self.width, use_bias=False, precision=self.precision)
        self.time_proj = _dense(self.width, precision=self.precision)
        n_blocks = 1 if self.tied else self.num_layers
        self.blocks = [ResidualBlock(self.width, self.precision) for _ in range(n_blocks)]
        self.out_norm = nn.LayerNorm(epsilon=LAYER_NORM_EPS)
        self.output = _dense(self.features, precision=self.precision)

    def time_projections(self, t: jnp.ndarray) -> jnp.ndarray:
        """What each residual block adds for t: [B, width] per block, stacked to [blocks, B, width].

        t is [B] or [] (then B = 1: one embedding for the whole batch); blocks is 1 when tied (the same
        projection serves all passes). :class:`mijax.models.fused.FusedDenoiser` computes it this way
        before its kernel.
        """
        t = jnp.asarray(t).reshape(-1)
        temb = _act(self.time_proj(timestep_embedding_closed(t, self.width)))
        return jnp.stack([block.project_time(temb) for block in self.blocks])

    def __call__(self, x: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        if x.ndim != 2 or x.shape[1] != self.features:
            raise ValueError(f"ToyDenoiser expects x of shape [N, {self.features}], got {x.shape}")
        projections = self.time_projections(t)  # [blocks, 1 or N, width]
        h = self.input_proj(x)
        for layer in range(self.num_layers):
            block = 0 if self.tied else layer
            h = self.blocks[block](h, projections[block])
        return self.output(self.out_norm(h))
