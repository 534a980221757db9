"""How long Triton takes to compile the fused denoiser's kind of program, per dot precision and block size.

A stand-in for ``mijax.FusedDenoiser``'s kernel written in Triton directly (the kernel itself is compiled by
the Triton inside XLA's GPU plugin, on the GPU machine only): a block of rows through six 128 x 128 float32
products with a leaky ReLU between them, compiled for an sm_90 (Hopper) target without a GPU. It shows why
float32 in the kernel uses three TF32 products: Triton's IEEE float32 dot becomes FMA instructions unrolled
over the whole block, and ptxas's time grows with them (BENCHMARKS.md, GPU).

    pip install triton                       # not a dependency of mijax
    python benchmarks/triton_compile.py ieee 32 4   # input precision (tf32, tf32x3, ieee), block rows, warps
"""
from __future__ import annotations

import sys
import time


def main(argv=None) -> dict:
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget

    @triton.jit
    def mlp(x_ptr, w_ptr, o_ptr, BLOCK: tl.constexpr, W: tl.constexpr, PREC: tl.constexpr, LAYERS: tl.constexpr):
        rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, W)
        h = tl.load(x_ptr + rows[:, None] * W + cols[None, :])
        for i in tl.static_range(LAYERS):
            w = tl.load(w_ptr + i * W * W + cols[:, None] * W + cols[None, :])
            h = tl.dot(h, w, input_precision=PREC)
            h = tl.where(h > 0, h, 0.01 * h)
        tl.store(o_ptr + rows[:, None] * W + cols[None, :], h)

    precision, block, warps = (argv or sys.argv[1:])[:3]
    source = triton.compiler.ASTSource(
        fn=mlp, signature={"x_ptr": "*fp32", "w_ptr": "*fp32", "o_ptr": "*fp32", "BLOCK": "constexpr",
                           "W": "constexpr", "PREC": "constexpr", "LAYERS": "constexpr"},
        constexprs={"BLOCK": int(block), "W": 128, "PREC": precision, "LAYERS": 6})
    start = time.perf_counter()
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": int(warps), "num_stages": 1})
    ptx = kernel.asm["ptx"]
    row = {"triton": triton.__version__, "precision": precision, "block_rows": int(block), "num_warps": int(warps),
           "compile_seconds": round(time.perf_counter() - start, 1), "ptx_lines": ptx.count("\n"),
           "fma_f32": ptx.count("fma.rn.f32"), "mma": ptx.count("mma")}
    print(row, flush=True)
    return row


if __name__ == "__main__":
    main()
