"""The paper's denoiser as one fused Pallas kernel per block of rows (GPU), with the XLA path as fallback.

XLA runs :class:`~mijax.models.ToyDenoiser` as a chain of [N, 128] matmuls, LayerNorms and activations,
each reading and writing its [N, 128] activations in device memory: at N = 10^6 a reverse step moves
several GB, so sampling is bound by memory bandwidth. :class:`FusedDenoiser` computes the whole network
for a block of rows (128 by default) in one Triton program: the rows' activations stay on chip, and only
x [N, d] is read and eps_hat [N, d] written per step (plus the weights, from cache). The sampler's scan,
its noise and the Hal reduction are unchanged, so it composes with every sampler option.

``FusedDenoiser(module)`` is a drop-in denoiser ``(params, x [N, d], t [N] or []) -> [N, d]`` taking the
module's own parameters. Where the backend is not a GPU it falls back to ``module.apply`` (the XLA path)
unless ``interpret=True``, which runs the kernel in Pallas' interpreter (any backend; slow; the tests
check the kernel against the module this way). Training keeps the XLA path (the kernel has no
gradient); it is meant for sampling.

The time embedding and each block's time projection are computed once per call outside the kernel (a
shared t makes them [1, 128]); the kernel gets them as an input.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import jax
import jax.numpy as jnp

from mijax.models.denoiser import ModuleDenoiser
from mijax.models.mlp import LAYER_NORM_EPS, LEAKY_SLOPE, PRECISIONS, ToyDenoiser, _round_to_tf32

KERNELS = ("xla", "pallas")
# How the kernel computes float32 products on a GPU: "tf32x3", three TF32 tensor-core products (a_hi b_hi +
# a_hi b_lo + a_lo b_hi, about 21 of float32's 24 mantissa bits), or "ieee", Triton's float32 FMA loops on
# the CUDA cores, unrolled over the whole block: ptxas then takes minutes (Triton 3.9 for sm_90: 32 s for
# a 32-row block against 7 s for tf32x3 in 64 rows; on a Hopper GPU the 128-row IEEE kernel compiled for over
# 290 s). The XLA path's float32 is full float32 (Precision.HIGHEST) either way.
FLOAT32_PRODUCTS = ("tf32x3", "ieee")


# Rows and Triton warps per program when not given, per precision, measured on a Hopper GPU (sm_90) and
# with the kernel compiled for it off the device (``benchmarks/triton_compile.py --kernel``): float32's
# three TF32 products ask for 256 KiB of shared memory in 64- and 128-row blocks, more than a Hopper SM has
# (227 KiB), and 80 KiB in 32 rows; tf32 ran fastest in 64-row blocks of 8 warps of those tuned (5.34 s for
# 10^6 x 1000 steps); bf16 ran in 64 rows of 4 warps (2.15 s). Triton's IEEE float32 compiles for minutes
# beyond 32 rows.
DEFAULT_BLOCKS = {"float32": (32, 8), "tf32": (64, 8), "bf16": (64, 4)}
DEFAULT_BLOCKS_IEEE = (32, 4)


def default_blocks(precision: str, float32_products: str = "tf32x3") -> tuple[int, int]:
    """(block_rows, num_warps) that :class:`FusedDenoiser` uses for ``precision`` when not given."""
    if precision == "float32" and float32_products == "ieee":
        return DEFAULT_BLOCKS_IEEE
    return DEFAULT_BLOCKS[precision]


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def kernel_available() -> bool:
    """Whether the compiled (non-interpreted) kernel can run here: the default backend is a GPU."""
    return jax.default_backend() == "gpu"


@dataclasses.dataclass(frozen=True)
class FusedDenoiser:
    """``ToyDenoiser`` evaluated by a fused Pallas (Triton) kernel; hashable (a jit static argument).

    Attributes:
      module: the :class:`~mijax.models.ToyDenoiser` whose parameters are passed in (tied or not, any
        d, width a power of two >= 16; its ``precision`` sets the kernel's matmul precision).
      block_rows: rows per kernel program (a power of two >= 16; None: ``default_blocks``, by precision).
      interpret: None: the compiled kernel on a GPU, ``module.apply`` elsewhere; True: the kernel in
        Pallas' interpreter (any backend); False: the compiled kernel (fails where there is no GPU).
      num_warps: Triton warps per program (None: ``default_blocks``, by precision).
      float32_products: for ``precision="float32"``: ``"tf32x3"`` (default; three TF32 tensor-core products,
        close to float32) or ``"ieee"`` (Triton's float32 FMA products; compiles for minutes);
        ``FLOAT32_PRODUCTS``. The interpreter emulates either.

    ``__call__(params, x [N, d], t [N] or []) -> eps_hat [N, d]`` float32, equal to ``module.apply``
    up to the order of floating-point operations (and, in float32 with ``"tf32x3"``, the rounding of the
    three TF32 products, about 2^-21 relative).
    """

    module: ToyDenoiser
    block_rows: Optional[int] = None
    interpret: Optional[bool] = None
    num_warps: Optional[int] = None
    float32_products: str = "tf32x3"

    def __post_init__(self):
        if self.float32_products not in FLOAT32_PRODUCTS:
            raise ValueError(f"float32_products must be one of {', '.join(FLOAT32_PRODUCTS)}, "
                             f"got {self.float32_products!r}")
        if not isinstance(self.module, ToyDenoiser):
            raise TypeError(f"FusedDenoiser fuses a ToyDenoiser, got {type(self.module).__name__}")
        w = self.module.width
        if w < 16 or w != _next_power_of_two(w):
            raise ValueError(f"the fused kernel needs a width that is a power of two >= 16, got {w}")
        rows, warps = default_blocks(self.module.precision, self.float32_products)
        if self.block_rows is None:
            object.__setattr__(self, "block_rows", rows)
        if self.num_warps is None:
            object.__setattr__(self, "num_warps", warps)
        if self.block_rows < 16 or self.block_rows != _next_power_of_two(self.block_rows):
            raise ValueError(f"block_rows must be a power of two >= 16, got {self.block_rows}")

    @property
    def uses_kernel(self) -> bool:
        """Whether calls run the Pallas kernel (compiled or interpreted) rather than ``module.apply``."""
        return self.interpret is not None or kernel_available()

    def __call__(self, params, x: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
        m = self.module
        if x.ndim != 2 or x.shape[1] != m.features:
            raise ValueError(f"FusedDenoiser expects x of shape [N, {m.features}], got {x.shape}")
        if not self.uses_kernel:
            return m.apply(params, x, t)
        projections = m.apply(params, t, method=ToyDenoiser.time_projections)  # [blocks, 1 or N, width]
        return fused_forward(params["params"], x, projections, num_layers=m.num_layers, tied=m.tied,
                             precision=m.precision, block_rows=self.block_rows,
                             interpret=bool(self.interpret), num_warps=self.num_warps,
                             float32_products=self.float32_products)


def make_denoiser(module: ToyDenoiser, kernel: str = "xla", **options):
    """The denoiser that runs ``module`` with ``kernel``: ``xla`` (``module.apply``) or ``pallas``."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    return ModuleDenoiser(module) if kernel == "xla" else FusedDenoiser(module, **options)


def fused_forward(p: dict, x: jnp.ndarray, projections: jnp.ndarray, *, num_layers: int, tied: bool,
                  precision: str = "float32", block_rows: int = 128, interpret: bool = False,
                  num_warps: int = 4, float32_products: str = "tf32x3") -> jnp.ndarray:
    """The denoiser's layers after the time path, as one Pallas kernel over blocks of rows.

    Args:
      p: the ToyDenoiser's ``params["params"]``.
      x: [N, d] float32.
      projections: [blocks, 1 or N, width]: each block's time projection (shared or per row).
    Returns:
      eps_hat [N, d] float32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    from jax.experimental import pallas as pl  # noqa: PLC0415 - imported only where the kernel runs

    n, d = x.shape
    width = p["input_proj"]["kernel"].shape[1]
    blocks = [p[f"blocks_{i}"] for i in range(1 if tied else num_layers)]
    dp = _next_power_of_two(d)  # Triton blocks have power-of-two shapes: pad the features with zeros
    rows = -(-n // block_rows) * block_rows
    f32 = jnp.float32
    x = jnp.pad(x.astype(f32), ((0, rows - n), (0, dp - d)))
    w_in = jnp.pad(p["input_proj"]["kernel"].astype(f32), ((0, dp - d), (0, 0)))  # [dp, width]
    w_out = jnp.pad(p["output"]["kernel"].astype(f32).T, ((0, dp - d), (0, 0)))  # [dp, width]
    b_out = jnp.pad(p["output"]["bias"].astype(f32), (0, dp - d)).reshape(1, dp)
    stack = lambda name, leaf: jnp.stack([b[name][leaf].astype(f32) for b in blocks])  # noqa: E731
    w1, w2 = stack("fc1", "kernel"), stack("fc2", "kernel")  # [blocks, width, width]
    norms = jnp.stack([stack("norm1", "scale"), stack("norm1", "bias"),
                       stack("norm2", "scale"), stack("norm2", "bias")], axis=1)  # [blocks, 4, width]
    out_norm = jnp.stack([p["out_norm"]["scale"], p["out_norm"]["bias"]]).astype(f32)  # [2, width]
    projections = projections.astype(f32)
    per_row = projections.shape[1] != 1
    if per_row:
        projections = jnp.pad(projections, ((0, 0), (0, rows - n), (0, 0)))
    num_blocks = len(blocks)

    full = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))  # noqa: E731
    in_specs = [
        pl.BlockSpec((block_rows, dp), lambda i: (i, 0)),
        full((dp, width)),
        (pl.BlockSpec((num_blocks, block_rows, width), lambda i: (0, i, 0)) if per_row
         else full((num_blocks, 1, width))),
        full((num_blocks, width, width)),
        full((num_blocks, width, width)),
        full((num_blocks, 4, width)),
        full((2, width)),
        full((dp, width)),
        full((1, dp)),
    ]
    kernel = functools.partial(_kernel, num_layers=num_layers, tied=tied, features=dp, precision=precision,
                               emulate_tf32=interpret, float32_products=float32_products)
    extra = {}
    if not interpret:
        from jax.experimental.pallas import triton as plgpu  # noqa: PLC0415

        extra["compiler_params"] = plgpu.CompilerParams(num_warps=num_warps, num_stages=1)
    out = pl.pallas_call(
        kernel, out_shape=jax.ShapeDtypeStruct((rows, dp), f32), grid=(rows // block_rows,),
        in_specs=in_specs, out_specs=pl.BlockSpec((block_rows, dp), lambda i: (i, 0)),
        interpret=interpret, name="mijax_fused_denoiser", **extra,
    )(x, w_in, projections, w1, w2, norms, out_norm, w_out, b_out)
    return out[:n, :d]


def _act(h):
    return jnp.where(h >= 0, h, LEAKY_SLOPE * h)


def _layer_norm(h, scale, bias):
    """Flax's LayerNorm (fast variance: E[h^2] - E[h]^2, clipped at 0) over the last axis; [R, W]."""
    mean = jnp.mean(h, axis=1, keepdims=True)
    var = jnp.maximum(jnp.mean(h * h, axis=1, keepdims=True) - mean * mean, 0.0)
    return (h - mean) * (jax.lax.rsqrt(var + LAYER_NORM_EPS) * scale) + bias


def _round(a, precision: str):
    """``a`` rounded as the precision's matmuls round their inputs (kept float32), for the rank-one and
    row-reduction products that the kernel computes without a matmul."""
    if precision == "bf16":
        return a.astype(jnp.bfloat16).astype(jnp.float32)
    if precision == "tf32":
        return _round_to_tf32(a)
    return a


def _matmul(a, w, precision: str, emulate_tf32: bool, float32_products: str = "tf32x3"):
    """[R, K] @ [K, W] with float32 accumulation, in the module's matmul precision (float32: in
    ``float32_products``)."""
    highest = functools.partial(jnp.dot, precision=jax.lax.Precision.HIGHEST, preferred_element_type=jnp.float32)
    if precision == "float32" and float32_products == "tf32x3":
        if not emulate_tf32:  # Triton's three-pass TF32 on the tensor cores
            return jnp.dot(a, w, precision=jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
                           preferred_element_type=jnp.float32)
        a_hi, w_hi = _round_to_tf32(a), _round_to_tf32(w)
        a_lo, w_lo = _round_to_tf32(a - a_hi), _round_to_tf32(w - w_hi)
        return highest(a_hi, w_lo) + highest(a_lo, w_hi) + highest(a_hi, w_hi)
    if precision == "bf16":
        return jnp.dot(a.astype(jnp.bfloat16), w.astype(jnp.bfloat16), preferred_element_type=jnp.float32)
    if precision == "tf32" and not emulate_tf32:  # Triton's TF32 tensor-core algorithm
        return jnp.dot(a, w, precision=jax.lax.DotAlgorithmPreset.TF32_TF32_F32, preferred_element_type=jnp.float32)
    return highest(_round(a, precision), _round(w, precision))  # tf32 emulated as the module does; float32 as is


def _kernel(x_ref, w_in_ref, proj_ref, w1_ref, w2_ref, norms_ref, out_norm_ref, w_out_ref, b_out_ref, o_ref, *,
            num_layers: int, tied: bool, features: int, precision: str, emulate_tf32: bool,
            float32_products: str = "tf32x3"):
    from jax.experimental import pallas as pl  # noqa: PLC0415

    h = None
    for j in range(features):  # input projection (no bias): d rank-one updates, d is 1 or 2 here
        term = _round(x_ref[:, pl.ds(j, 1)], precision) * _round(w_in_ref[pl.ds(j, 1), :], precision)
        h = term if h is None else h + term
    for layer in range(num_layers):
        b = 0 if tied else layer
        norm = lambda k: norms_ref[b, pl.ds(k, 1), :]  # noqa: E731 - [1, width]: norm1 scale, bias, norm2 scale, bias
        a = _act(_layer_norm(h, norm(0), norm(1)))
        out = _matmul(a, w1_ref[b], precision, emulate_tf32, float32_products) + proj_ref[b]
        h = h + _matmul(_act(_layer_norm(out, norm(2), norm(3))), w2_ref[b], precision, emulate_tf32,
                        float32_products)
    hn = _round(_layer_norm(h, out_norm_ref[pl.ds(0, 1), :], out_norm_ref[pl.ds(1, 1), :]), precision)
    for j in range(features):  # output projection: one row reduction per output feature
        w = _round(w_out_ref[pl.ds(j, 1), :], precision)
        o_ref[:, pl.ds(j, 1)] = jnp.sum(hn * w, axis=1, keepdims=True) + b_out_ref[:, pl.ds(j, 1)]
