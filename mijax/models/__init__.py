"""Denoisers and the model registry. Each model is a Flax module run as a pure ``(params, x, t) -> output``
function over data ``[N, *shape]``.

A model is registered with :func:`register` (a builder ``build(shape, precision, **options) -> module`` and
its options' defaults); a run's :class:`~mijax.config.ModelConfig` names one. Built in: ``mlp``, the paper's
toy denoiser (on data of any shape: images are flattened to vectors and back), and ``unet``, the published
code's image UNet family (:mod:`mijax.models.unet`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn

from mijax.errors import MijaxError
from mijax.registry import Entry, Registry
from mijax.models.fused import KERNELS, FusedDenoiser, make_denoiser
from mijax.models import unet
from mijax.models.denoiser import Flattened, ModuleDenoiser
from mijax.models.mlp import PRECISIONS, ResidualBlock, ToyDenoiser, timestep_embedding_closed


MODELS = Registry("model")


def register(name: str, build: Callable[..., nn.Module], summary: str = "", **options: Any) -> Entry:
    """Register model ``name``: ``build(shape, precision, **options)`` returns its Flax module for samples of
    ``shape``; ``options`` are the defaults (and the only options it takes)."""
    return MODELS.register(name, build, summary, **options)


names, entry, resolve = MODELS.names, MODELS.entry, MODELS.resolve


def build(name: str, shape: tuple[int, ...], precision: str = "float32",
          options: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The Flax module of model ``name`` for samples of ``shape``; bad settings raise one line."""
    if precision not in PRECISIONS:
        MODELS.entry(name)  # an unknown model is named first
        raise MijaxError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return MODELS.make(name, options, tuple(int(s) for s in shape), precision)


def _mlp(shape: tuple[int, ...], precision: str, width: int, num_layers: int, tied: bool) -> nn.Module:
    if not (isinstance(width, int) and width > 1 and width % 2 == 0):
        raise ValueError(f"width must be an even integer > 1, got {width!r}")
    if not (isinstance(num_layers, int) and num_layers > 0):
        raise ValueError(f"num_layers must be an integer > 0, got {num_layers!r}")
    if not shape or min(shape) < 1:
        raise ValueError(f"cannot denoise samples of shape {shape}")
    net = ToyDenoiser(features=math.prod(shape), width=width, num_layers=num_layers, tied=bool(tied),
                      precision=precision)
    return net if len(shape) == 1 else Flattened(net)


register("mlp", _mlp, "the paper's toy denoiser: width 128, one residual block applied 3 times (tied)",
         width=128, num_layers=3, tied=True)
register("unet", unet.build, "the published code's DDPM UNet family (GroupNorm + SiLU res blocks); defaults: the "
         "small CPU configuration of the throughput baseline", channels=16, mults=(1, 2, 2), res_blocks=1,
         attn_levels=(), groups=8, dropout=0.0, conv="xla")


__all__ = ["KERNELS", "PRECISIONS", "Flattened", "FusedDenoiser", "ModuleDenoiser", "ToyDenoiser", "ResidualBlock",
           "MODELS", "build", "entry", "make_denoiser", "names", "register", "resolve", "timestep_embedding_closed"]
