"""The DDPM UNet family of the published code (ddpm-torch style), in Flax, on NHWC images.

GroupNorm (eps 1e-6) + SiLU residual blocks with an additive projection of the time embedding (after the
first convolution, through ``Dense(SiLU(temb))``), a 1 x 1 skip where the channels change and a
zero-initialised second convolution; strided 3 x 3 convolutions down, nearest x2 + 3 x 3 convolution up; the
up path has ``res_blocks + 1`` blocks per level, each fed the matching down-path activation; a middle of
res - attention - res (attention only when some level has it); output GroupNorm, SiLU and a zero-initialised
3 x 3 convolution. The time embedding is sinusoidal of width C (frequencies ``exp(-ln(10000) i / (C/2))``,
sin first), then Dense 4C, SiLU, Dense 4C.

For the same options it has the same parameters as the published code's UNet: C = 16, mults (1, 2, 2), 1 res
block, no attention: 263,025 (tested).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

GROUP_NORM_EPS = 1e-6


def timestep_embedding_half_open(t: jnp.ndarray, width: int) -> jnp.ndarray:
    """[B] integer timesteps -> [B, width]: ``[sin(t f), cos(t f)]``, f_i = exp(-ln(10000) i / (width / 2)): the
    frequencies run from 1 down to, not including, 1/10000 (the published UNet's). The toy denoiser's
    (:func:`mijax.models.mlp.timestep_embedding_closed`) divides by width/2 - 1 and ends at 1/10000."""
    half = width // 2
    freqs = jnp.exp(-math.log(10000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


class GroupNorm(nn.Module):
    """GroupNorm over NHWC images, ``[N, H, W, C] -> [N, H, W, C]``: the statistics of each group of C / G
    channels over H x W (mean and mean of squares, as ``flax.linen.GroupNorm``'s fast variance), then a
    per-channel scale and bias. The same parameters (``scale``, ``bias`` [C]) and, to float32 rounding, the
    same numbers as ``flax.linen.GroupNorm`` (tested), but ~15% faster UNet steps on XLA:CPU: the sums run
    over the H x W axis of ``[N, H x W, C]`` and the normalisation is one multiply-add per element, where
    flax's reshape to ``[N, H, W, G, C / G]`` left XLA:CPU slower reductions and their gradients."""

    num_groups: int
    epsilon: float = GROUP_NORM_EPS

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n, height, width, c = x.shape
        per_group = c // self.num_groups
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        rows = x.reshape(n, height * width, c)
        count = height * width * per_group
        mean = jnp.sum(rows, axis=1).reshape(n, self.num_groups, per_group).sum(-1) / count  # [N, G]
        mean_sq = jnp.sum(rows * rows, axis=1).reshape(n, self.num_groups, per_group).sum(-1) / count
        inv = jax.lax.rsqrt(jnp.maximum(mean_sq - mean * mean, 0.0) + self.epsilon)
        inv_c = jnp.repeat(inv, per_group, axis=1) * scale[None, :]  # [N, C]
        shift_c = bias[None, :] - jnp.repeat(mean, per_group, axis=1) * inv_c
        return x * inv_c[:, None, None, :] + shift_c[:, None, None, :]


def _norm(groups: int) -> GroupNorm:
    return GroupNorm(num_groups=groups)


CONVS = ("xla", "onednn")


def _conv(conv: str, features: int, kernel_size: tuple[int, int], **kwargs) -> nn.Module:
    """``nn.Conv`` run by XLA (``"xla"``), or its twin on oneDNN on the CPU (``"onednn"``:
    :class:`mijax.models.onednn.Conv`, the same parameters, names and initial values)."""
    if conv == "onednn":
        from mijax.models import onednn
        return onednn.Conv(features, kernel_size, **kwargs)
    return nn.Conv(features, kernel_size, **kwargs)


class ResBlock(nn.Module):
    features: int
    groups: int
    dropout: float = 0.0
    conv: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray, temb: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        h = _conv(self.conv, self.features, (3, 3), padding=1, name="conv1")(nn.silu(_norm(self.groups)(x)))
        h = h + nn.Dense(self.features, name="temb")(nn.silu(temb))[:, None, None, :]
        h = nn.silu(_norm(self.groups)(h))
        if self.dropout:  # as ddpm-torch: before the second convolution, in training only
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = _conv(self.conv, self.features, (3, 3), padding=1, kernel_init=nn.initializers.zeros, name="conv2")(h)
        skip = x if x.shape[-1] == self.features else _conv(self.conv, self.features, (1, 1), name="skip")(x)
        return skip + h


class Attention(nn.Module):
    groups: int
    conv: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        n, height, width, c = x.shape
        qkv = _conv(self.conv, 3 * c, (1, 1), name="qkv")(_norm(self.groups)(x)).reshape(n, height * width, 3, c)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        weights = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k) / math.sqrt(c), axis=-1)
        out = jnp.einsum("bij,bjc->bic", weights, v).reshape(n, height, width, c)
        return x + _conv(self.conv, c, (1, 1), kernel_init=nn.initializers.zeros, name="proj")(out)


class UNet(nn.Module):
    """``__call__(x [N, H, W, C_in], t [N] or [], train=False) -> eps_hat [N, H, W, C_in]``; H and W divisible
    by 2^(levels - 1). ``dropout`` acts in every res block when ``train`` (rng ``"dropout"``). The middle
    features (after the middle blocks, [N, H / 2^(levels-1), W / 2^(levels-1), C x mults[-1]]) are sown as
    ``intermediates/bottleneck`` (``apply(..., mutable=["intermediates"])``). ``conv``: ``"xla"`` (XLA's
    convolutions) or ``"onednn"`` (oneDNN's, on the CPU: :mod:`mijax.models.onednn`; the same parameters).
    How it runs on CPU (host loops, unoptimised init, blocks of 128 images) is its plan:
    :data:`mijax.execution.CPU_PLANS`."""

    channels: int = 16
    mults: Sequence[int] = (1, 2, 2)
    res_blocks: int = 1
    attn_levels: Sequence[int] = ()
    groups: int = 8
    dropout: float = 0.0
    conv: str = "xla"

    @nn.compact
    def __call__(self, x: jnp.ndarray, t: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        c0, levels = self.channels, len(self.mults)
        t = jnp.asarray(t).reshape(-1)  # a shared t embeds once, [1, 4C], and broadcasts over the batch
        temb = nn.Dense(4 * c0)(timestep_embedding_half_open(t, c0))
        temb = nn.Dense(4 * c0)(nn.silu(temb))
        conv = self.conv
        h = _conv(conv, c0, (3, 3), padding=1)(x)
        skips = [h]
        for level, mult in enumerate(self.mults):
            for _ in range(self.res_blocks):
                h = ResBlock(c0 * mult, self.groups, self.dropout, conv)(h, temb, train)
                if level in self.attn_levels:
                    h = Attention(self.groups, conv)(h)
                skips.append(h)
            if level != levels - 1:
                h = _conv(conv, h.shape[-1], (3, 3), strides=2, padding=1)(h)
                skips.append(h)
        h = ResBlock(h.shape[-1], self.groups, self.dropout, conv)(h, temb, train)
        if self.attn_levels:
            h = Attention(self.groups, conv)(h)
        h = ResBlock(h.shape[-1], self.groups, self.dropout, conv)(h, temb, train)
        self.sow("intermediates", "bottleneck", h)
        for level, mult in reversed(list(enumerate(self.mults))):
            for _ in range(self.res_blocks + 1):
                h = ResBlock(c0 * mult, self.groups, self.dropout, conv)(
                    jnp.concatenate([h, skips.pop()], axis=-1), temb, train)
                if level in self.attn_levels:
                    h = Attention(self.groups, conv)(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest x2
                h = _conv(conv, h.shape[-1], (3, 3), padding=1)(h)
        h = nn.silu(_norm(self.groups)(h))
        return _conv(conv, x.shape[-1], (3, 3), padding=1, kernel_init=nn.initializers.zeros)(h)


def build(shape: tuple[int, ...], precision: str, channels: int, mults: Sequence[int], res_blocks: int,
          attn_levels: Sequence[int], groups: int, dropout: float = 0.0, conv: str = "xla") -> UNet:
    """The registry's builder: checks that the options can build a UNet for images of ``shape``."""
    if len(shape) != 3:
        raise ValueError(f"the unet denoises images [H, W, C]; this data set's samples are {shape}")
    if precision != "float32":
        raise ValueError(f"the unet runs its matmuls in float32 only, got precision {precision!r}")
    mults = (mults,) if isinstance(mults, int) else mults  # --model-option mults=1: one level
    attn_levels = (attn_levels,) if isinstance(attn_levels, int) else attn_levels
    mults, attn_levels = tuple(int(m) for m in mults), tuple(int(a) for a in attn_levels)
    if not (isinstance(channels, int) and channels > 0 and mults and min(mults) > 0 and res_blocks >= 1):
        raise ValueError("channels, mults and res_blocks must be positive")
    if any(channels * m % groups for m in mults) or channels % groups:
        raise ValueError(f"every level's channels ({channels} x {mults}) must divide into {groups} groups")
    if channels % 2:
        raise ValueError(f"channels must be even (the time embedding), got {channels}")
    factor = 2 ** (len(mults) - 1)
    if shape[0] % factor or shape[1] % factor:
        raise ValueError(f"images of {shape[0]} x {shape[1]} do not halve {len(mults) - 1} times")
    if any(not 0 <= a < len(mults) for a in attn_levels):
        raise ValueError(f"attention levels must be in 0..{len(mults) - 1}, got {attn_levels}")
    if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    if conv not in CONVS:
        raise ValueError(f"conv must be one of {', '.join(CONVS)}, got {conv!r}")
    if conv == "onednn":
        from mijax.models import onednn
        onednn.check_backend()
    return UNet(channels, mults, int(res_blocks), attn_levels, int(groups), float(dropout), conv)
