"""Denoisers and the model registry. Each model is a Flax module run as a pure ``(params, x, t) -> output``
function over data ``[N, *shape]``.

A model is registered with :func:`register` (a builder ``build(shape, precision, **options) -> module`` and
its options' defaults); a run's :class:`~mijax.config.ModelConfig` names one. Built in: ``mlp``, the paper's
toy denoiser (on data of any shape: images are flattened to vectors and back), and ``unet``, the published
code's image UNet family (:mod:`mijax.models.unet`).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional

import flax.linen as nn

from mijax.errors import MijaxError
from mijax.io import frozen, typed_option
from mijax.models.fused import KERNELS, FusedDenoiser, make_denoiser
from mijax.models import unet
from mijax.models.denoiser import Flattened, ModuleDenoiser
from mijax.models.mlp import PRECISIONS, ResidualBlock, ToyDenoiser, timestep_embedding_closed


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[..., nn.Module]
    options: Mapping[str, Any]
    summary: str = ""


_REGISTRY: dict[str, Entry] = {}


def register(name: str, build: Callable[..., nn.Module], summary: str = "", **options: Any) -> Entry:
    """Register model ``name``: ``build(shape, precision, **options)`` returns its Flax module for samples of
    ``shape``; ``options`` are the defaults (and the only options it takes)."""
    _REGISTRY[name] = Entry(name, build, dict(options), summary)
    return _REGISTRY[name]


def names() -> list[str]:
    return list(_REGISTRY)


def resolve(name: str, options: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
    """Every option of model ``name``: the given ones over the defaults, each of its default's type
    (:func:`mijax.io.typed_option`); unknown options and values of another type raise."""
    if name not in _REGISTRY:
        raise MijaxError(f"unknown model {name!r}; choose from {', '.join(_REGISTRY)}")
    defaults = _REGISTRY[name].options
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise MijaxError(f"model {name!r} has no option {unknown[0]!r} (its options: {', '.join(defaults)})")
    return {key: typed_option(f"model {name!r}", key, options[key], default) if key in options else frozen(default)
            for key, default in defaults.items()}


def build(name: str, shape: tuple[int, ...], precision: str = "float32",
          options: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The Flax module of model ``name`` for samples of ``shape``; bad settings raise one line."""
    resolved = resolve(name, options)
    if precision not in PRECISIONS:
        raise MijaxError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    try:
        return _REGISTRY[name].build(tuple(int(s) for s in shape), precision, **resolved)
    except (ValueError, TypeError) as e:
        raise MijaxError(f"model {name!r}: {str(e).splitlines()[0]}") from None


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
           "build", "make_denoiser", "names", "register", "resolve", "timestep_embedding_closed"]
