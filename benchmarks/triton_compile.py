"""How Triton compiles the fused denoiser's kind of program, off the GPU: compile time, PTX, and with
``--kernel`` the real kernel's registers, spills and shared memory.

Two modes, both compiling for an sm_90 (Hopper: the H200) target on any machine, with pip's Triton:

* a stand-in for ``mijax.FusedDenoiser``'s kernel written in Triton directly (positional arguments): a block
  of rows through six 128 x 128 float32 products with a leaky ReLU between them. It shows why float32 in the
  kernel uses three TF32 products: Triton's IEEE float32 dot becomes FMA instructions unrolled over the whole
  block, and ptxas's time grows with them (the earlier measurements (git show 0540f34:BENCHMARKS.md), GPU);
* ``--kernel PRECISION ROWS WARPS``: the kernel itself. JAX lowers ``FusedDenoiser`` (the paper's MLP, d = 1)
  to Triton's IR for CUDA here too (``jax.export``); the IR is taken at its lowering, compiled with pip's
  Triton and assembled by its ptxas with ``-v``: registers per thread, bytes spilled to local memory, shared
  memory. On the second H200 loan these predicted what the device did: float32 (three TF32 products) in
  64-row blocks asked there for 262,144 bytes of shared memory (227 KiB available); here 262,656.

    pip install triton                       # not a dependency of mijax
    python benchmarks/triton_compile.py ieee 32 4   # stand-in: input precision (tf32, tf32x3, ieee), block rows, warps
    python benchmarks/triton_compile.py --kernel bf16 64 8   # the kernel: precision (float32, tf32, bf16), rows, warps
"""
from __future__ import annotations

import sys
import time
from typing import Optional


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


def kernel_ir(precision: str, block_rows: int, rows: int = 1 << 20) -> str:
    """The Triton IR (text) of ``FusedDenoiser``'s kernel for the paper's MLP (d = 1, shared t), lowered for
    CUDA on this machine. Reads it at JAX's Pallas-to-Triton lowering (a private function of JAX: this is a
    benchmark, not library code)."""
    import jax
    import jax.numpy as jnp
    from jax import export
    from jax._src.pallas.triton import pallas_call_registration as registration

    from mijax.models import FusedDenoiser, ToyDenoiser

    captured, lower = [], registration.lowering.lower_jaxpr_to_triton_module

    def capture(*args, **kwargs):
        result = lower(*args, **kwargs)
        captured.append(result.module.operation.get_asm(enable_debug_info=False))
        return result

    model = ToyDenoiser(features=1, precision=precision)
    params = model.init(jax.random.key(0), jnp.zeros((1, 1)), jnp.zeros((1,), jnp.int32))
    fused = FusedDenoiser(model, block_rows=block_rows, interpret=False)
    registration.lowering.lower_jaxpr_to_triton_module = capture
    try:
        export.export(jax.jit(fused), platforms=["cuda"],
                      disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(
            params, jax.ShapeDtypeStruct((rows, 1), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32))
    finally:
        registration.lowering.lower_jaxpr_to_triton_module = lower
    if len(captured) != 1:
        raise RuntimeError(f"expected one Triton kernel in the lowering, found {len(captured)}")
    return captured[0]


def compile_kernel(precision: str, block_rows: int, num_warps: int, folder: Optional[str] = None) -> dict:
    """Compile the kernel's IR (:func:`kernel_ir`) for sm_90 with pip's Triton and assemble its PTX with
    ptxas -v: a dict of compile seconds, shared memory bytes, PTX lines, MMA instructions, registers per
    thread and spilled bytes."""
    import os
    import re
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget

    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = os.path.join(tmp, f"fused_{precision}_{block_rows}.ttir")
        with open(path, "w") as f:
            f.write(kernel_ir(precision, block_rows))
        start = time.perf_counter()
        kernel = triton.compile(path, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": num_warps, "num_stages": 1})
        seconds = time.perf_counter() - start
        ptx = kernel.asm["ptx"]
        with open(path + ".ptx", "w") as f:
            f.write(ptx)
        row = {"triton": triton.__version__, "precision": precision, "block_rows": block_rows,
               "num_warps": num_warps, "compile_seconds": round(seconds, 1), "shared_bytes": kernel.metadata.shared,
               "ptx_lines": ptx.count("\n"), "wgmma": ptx.count("wgmma.mma_async"),
               "mma_sync": len(re.findall(r"\bmma\.sync", ptx))}
        # ptxas for the PTX version this Triton writes: pip's Triton bundles one per CUDA generation
        bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
        for name in ("ptxas-blackwell", "ptxas"):
            ptxas = os.path.join(bin_dir, name)
            if not os.path.exists(ptxas):
                continue
            done = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", path + ".ptx", "-o", path + ".cubin"],
                                  capture_output=True, text=True)
            if done.returncode == 0:
                text = done.stderr
                registers = re.search(r"Used (\d+) registers", text)
                spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
                row.update({"ptxas": name, "registers": int(registers.group(1)) if registers else None,
                            "spill_store_bytes": int(spills.group(1)) if spills else None,
                            "spill_load_bytes": int(spills.group(2)) if spills else None})
                break
        else:
            row["ptxas"] = None  # no ptxas here that reads this PTX: registers and spills unknown
    print(row, flush=True)
    return row


if __name__ == "__main__":
    if sys.argv[1:2] == ["--kernel"]:
        if len(sys.argv) != 5 or sys.argv[2] not in ("float32", "tf32", "bf16"):
            raise SystemExit("usage: triton_compile.py --kernel {float32,tf32,bf16} BLOCK_ROWS NUM_WARPS")
        compile_kernel(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
