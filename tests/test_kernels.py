"""The fused Pallas denoiser: equal to the module (interpreted here), its XLA fallback, its Triton lowering."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.models import FusedDenoiser, ModuleDenoiser, ToyDenoiser, make_denoiser
from mijax.config import SamplerConfig
from mijax.sampling import sample
from mijax.diffusion import make_schedule

# float32 and tf32 (emulated rounding) agree with the module to float32 rounding of a differently ordered
# sum. bf16 rounds every matmul input to 8 bits: a last-bit difference before a rounding moves a value by
# one bf16 step (2^-8 relative), and such steps can add up through the six matmuls.
TOLERANCE = {"float32": 2e-5, "tf32": 2e-5, "bf16": 3e-2}


def _model(d, tied=True, precision="float32", width=128, key=0):
    model = ToyDenoiser(features=d, tied=tied, precision=precision, width=width)
    params = jax.jit(model.init)(jax.random.key(key), jnp.zeros((1, d)), jnp.zeros((1,), jnp.int32))
    return model, params


# d = 1, 2, 3; tied and untied; each precision (the gpu_check script's --quick run adds d = 1 in bf16)
@pytest.mark.parametrize("d,tied,precision", [(1, True, "float32"), (3, False, "float32"), (1, True, "tf32"),
                                              (2, False, "bf16")])
def test_kernel_equals_the_module(d, tied, precision):
    model, params = _model(d, tied, precision)
    fused = FusedDenoiser(model, block_rows=32, interpret=True)
    assert fused.uses_kernel
    n = 100  # not a multiple of the block: the last block is padded and trimmed
    x = 3.0 * jax.random.normal(jax.random.key(1), (n, d))
    for t in (jnp.int32(7), jnp.int32(999), jnp.arange(n, dtype=jnp.int32) * 10):  # shared and per-row t
        want = jax.jit(model.apply)(params, x, t)
        got = jax.jit(fused)(params, x, t)
        chex.assert_shape(got, (n, d))
        chex.assert_type(got, jnp.float32)
        scale = float(jnp.max(jnp.abs(want)))
        assert scale > 0.1
        np.testing.assert_allclose(got, want, atol=TOLERANCE[precision] * max(scale, 1.0), rtol=0)


def test_float32_products_three_tf32_passes_or_ieee():
    """float32 in the kernel: three TF32 products by default (Triton's IEEE float32 dot compiles for minutes on
    a GPU), emulated by the interpreter; both agree with the module's full float32 to float32 tolerance, and
    the three-pass products are not the plain ones (the emulation is on)."""
    model, params = _model(2, precision="float32")
    x = 3.0 * jax.random.normal(jax.random.key(5), (64, 2))
    want = jax.jit(model.apply)(params, x, jnp.int32(321))
    got = {p: jax.jit(FusedDenoiser(model, block_rows=32, interpret=True, float32_products=p))(params, x, jnp.int32(321))
           for p in ("tf32x3", "ieee")}
    scale = max(float(jnp.max(jnp.abs(want))), 1.0)
    for p, value in got.items():
        np.testing.assert_allclose(value, want, atol=TOLERANCE["float32"] * scale, rtol=0, err_msg=p)
    assert not np.array_equal(got["tf32x3"], got["ieee"])
    with pytest.raises(ValueError, match="float32_products"):
        FusedDenoiser(model, float32_products="fp64")


def test_a_row_does_not_depend_on_its_block():
    """Rows are independent: the same row gives the same bits at any N and block position."""
    model, params = _model(2)
    fused = jax.jit(FusedDenoiser(model, block_rows=16, interpret=True))
    x = jax.random.normal(jax.random.key(2), (50, 2))
    full = fused(params, x, jnp.int32(3))
    np.testing.assert_array_equal(fused(params, x[17:40], jnp.int32(3)), full[17:40])


def test_seed_axis_vmap_equals_each_seed():
    model, _ = _model(1)
    keys = jax.random.split(jax.random.key(3), 3)
    # compiled, not op by op: one program each for the initialisation and the module
    params = jax.jit(jax.vmap(lambda k: model.init(k, jnp.zeros((1, 1)), jnp.zeros((1,), jnp.int32))))(keys)
    fused = FusedDenoiser(model, block_rows=16, interpret=True)
    x = jax.random.normal(jax.random.key(4), (3, 40, 1))
    stacked = jax.jit(jax.vmap(fused, in_axes=(0, 0, None)))(params, x, jnp.int32(5))
    apply = jax.jit(model.apply)
    for s in range(3):
        one = jax.tree.map(lambda a: a[s], params)
        np.testing.assert_allclose(stacked[s], apply(one, x[s], jnp.int32(5)), atol=2e-5)


def test_sampler_with_the_kernel_equals_the_xla_path():
    """The whole reverse process with Hal: samples and Hal agree with the module's to float32 rounding."""
    model, params = _model(1)
    schedule = make_schedule(num_timesteps=20)
    config = SamplerConfig(hal_window=5)
    key = jax.random.key(6)
    want = sample(ModuleDenoiser(model), params, schedule, key, 100, (1,), config)
    fused = FusedDenoiser(model, block_rows=32, interpret=True)
    got = sample(fused, params, schedule, key, 100, (1,), config)
    np.testing.assert_allclose(got.x, want.x, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got.hal, want.hal, atol=1e-6, rtol=1e-3)
    # Chunking does not change a sample: per-sample keys, independent rows.
    chunked = sample(fused, params, schedule, key, 100, (1,), config, chunk_size=64)
    np.testing.assert_array_equal(chunked.x, got.x)
    np.testing.assert_array_equal(chunked.hal, got.hal)


def test_without_a_gpu_it_falls_back_to_the_module():
    model, params = _model(2)
    fused = make_denoiser(model, "pallas")
    assert isinstance(fused, FusedDenoiser) and fused.interpret is None
    assert fused.uses_kernel == (jax.default_backend() == "gpu")
    if not fused.uses_kernel:
        x = jax.random.normal(jax.random.key(7), (20, 2))
        np.testing.assert_array_equal(fused(params, x, jnp.int32(4)), model.apply(params, x, jnp.int32(4)))
    assert make_denoiser(model) == ModuleDenoiser(model)
    assert mijax.FusedDenoiser is FusedDenoiser and "pallas" in mijax.KERNELS


def test_blocks_default_by_precision():
    """Without block_rows / num_warps the kernel takes per-precision blocks that fit an H200: float32's three
    TF32 products asked there for 256 KiB of shared memory in 64- and 128-row blocks (the earlier measurements (git show 0540f34:BENCHMARKS.md), GPU)."""
    got = {p: (lambda f: (f.block_rows, f.num_warps))(FusedDenoiser(ToyDenoiser(features=1, precision=p)))
           for p in ("float32", "tf32", "bf16")}
    assert got == {"float32": (32, 8), "tf32": (64, 8), "bf16": (64, 4)}
    ieee = FusedDenoiser(ToyDenoiser(features=1), float32_products="ieee")
    assert (ieee.block_rows, ieee.num_warps) == (32, 4)
    given = FusedDenoiser(ToyDenoiser(features=1), block_rows=128, num_warps=4)
    assert (given.block_rows, given.num_warps) == (128, 4)
    assert FusedDenoiser(ToyDenoiser(features=1)) == FusedDenoiser(ToyDenoiser(features=1), block_rows=32, num_warps=8)


def test_bad_input():
    model, params = _model(1)
    with pytest.raises(ValueError, match="power of two"):
        FusedDenoiser(ToyDenoiser(features=1, width=96))
    with pytest.raises(ValueError, match="block_rows"):
        FusedDenoiser(model, block_rows=48)
    with pytest.raises(TypeError, match="ToyDenoiser"):
        FusedDenoiser("not a module")
    with pytest.raises(ValueError, match=r"shape \[N, 1\]"):
        FusedDenoiser(model, interpret=True)(params, jnp.zeros((4,)), jnp.int32(0))
    with pytest.raises(ValueError, match="unknown kernel"):
        make_denoiser(model, "cuda")


@pytest.mark.parametrize("d,tied,precision,per_row,products", [
    (1, True, "float32", False, "tf32x3"), (1, True, "float32", False, "ieee"), (2, False, "bf16", True, "tf32x3"),
    (1, True, "tf32", False, "tf32x3")])
def test_kernel_lowers_to_triton_for_a_gpu(d, tied, precision, per_row, products):
    """The compiled kernel's lowering for CUDA (Pallas -> Triton IR), done on this machine: every operation of
    the kernel has a Triton lowering and the block shapes are accepted. (Triton's own compilation to PTX
    happens on the GPU and is not checked here.)"""
    export = pytest.importorskip("jax.export")
    model, params = _model(d, tied, precision)
    fused = FusedDenoiser(model, interpret=False, float32_products=products)
    t = jax.ShapeDtypeStruct((4096,) if per_row else (), jnp.int32)
    try:
        exported = export.export(
            jax.jit(fused), platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(params, jax.ShapeDtypeStruct((4096, d), jnp.float32), t)
    except (ImportError, ModuleNotFoundError) as e:  # a jaxlib without the Triton dialect
        pytest.skip(f"no Triton lowering in this jaxlib: {e}")
    text = exported.mlir_module()
    assert text.count("__gpu$xla.gpu.triton") == 1
    assert "mijax_fused_denoiser" in text
    chex.assert_shape(exported.out_avals[0], (4096, d))


def test_seed_vmapped_kernel_lowers_to_one_triton_call():
    """On accelerators the sampler vmaps the seeds: the kernel's batching rule adds a grid axis."""
    export = pytest.importorskip("jax.export")
    model, _ = _model(1)
    keys = jax.random.split(jax.random.key(0), 3)
    params = jax.vmap(lambda k: model.init(k, jnp.zeros((1, 1)), jnp.zeros((1,), jnp.int32)))(keys)
    stacked = jax.vmap(FusedDenoiser(model, interpret=False), in_axes=(0, 0, None))
    try:
        exported = export.export(
            jax.jit(stacked), platforms=["cuda"],
            disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
        )(params, jax.ShapeDtypeStruct((3, 4096, 1), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32))
    except (ImportError, ModuleNotFoundError) as e:
        pytest.skip(f"no Triton lowering in this jaxlib: {e}")
    text = exported.mlir_module()
    assert text.count("__gpu$xla.gpu.triton") == 1
    assert "grid_x = 128 : i32" in text and "grid_y = 3 : i32" in text  # 4096 / 32 row blocks (float32) x 3 seeds


def test_gpu_check_script_runs_at_tiny_sizes(tmp_path):
    """The prepared accelerator script (benchmarks/gpu_check.py) runs end to end, here with the kernel
    interpreted, and records every measurement without errors: device time is too scarce for a script that
    breaks there. Its kernel steps and the profile run here; the XLA-only steps (training, seeds, row blocks,
    d = 2, 10^7 in XLA) measure with the benchmark's own functions (tests/test_bench.py), and a step that fails
    on the device is recorded and the script goes on (tested below)."""
    import json

    from benchmarks import gpu_check

    kernel_steps = ("kernel_compile", "kernel_check", "kernel_tuning", "sampling_1e6_d1", "sampling_1e7_d1",
                    "profile")
    results = gpu_check.main(["--out", str(tmp_path), "--quick", "--interpret", "--only", ",".join(kernel_steps)])
    assert results["errors"] == {}
    assert {name.split(" ")[0] for name in results["skipped"]} == set(gpu_check.STEPS) - set(kernel_steps)
    assert json.loads((tmp_path / "gpu_check.json").read_text())["kernel_options"] == results["kernel_options"]
    for row in results["kernel_check"]:
        assert row["kernel_ran"] and row["rows_independent_of_n_kernel"]
        if row["precision"] != "bf16":
            assert row["max_abs_diff_shared_t"] < 1e-4 and row["max_abs_diff_per_row_t"] < 1e-4
        if row["dim"] == 1:  # the sampling comparison counts rows that overflowed, and compares the rest
            assert row["sample_timesteps"] == gpu_check.QUICK["check_timesteps"]
            assert row["sample_nonfinite_xla"] == row["sample_nonfinite_kernel"] == 0
    assert {r["kernel_used"] for r in results["sampling_1e6_d1"]} == {"xla", "pallas"}
    assert [(r["dim"], r["precision"]) for r in results["kernel_check"]] == list(gpu_check.QUICK["checks"])
    assert len(results["sampling_1e6_d1"]) == 2 * len(gpu_check.QUICK["precisions"])
    assert [r["kernel"] for r in results["sampling_1e7_d1"]] == ["pallas"]
    assert [r["status"] for r in results["kernel_compile"]] == ["ok"] * len(gpu_check.QUICK["compiles"])
    assert set(results["profile"]) == {"sampling_xla_float32", "sampling_pallas_bf16",
                                       "training_float32"}  # the kernel in the tuned precision (no tf32 here)
    # each precision runs in the largest block that compiled in it (64 rows here), never the default 128
    assert {(r["precision"], r["block_rows"]) for r in results["kernel_check"]} == {("bf16", 64), ("float32", 64)}
    assert all(r["block_rows"] <= 64 for r in results["kernel_tuning"])
    for trace in results["profile"].values():
        top = [row for p in trace["processes"].values() for row in p["top"]]
        assert trace["wall_us"] > 0 and top and all(not row["name"].startswith("$") for row in top)
    assert "kernel vs XLA" in gpu_check.summary(results) and "profile training_float32" in gpu_check.summary(results)
    # non-finite figures come back from the JSON as null: the summary says n/a instead of failing
    row = {**results["kernel_check"][0], "sample_max_abs_diff_x": None, "max_abs_diff_shared_t": None}
    assert "max diff n/a" in gpu_check.summary({**results, "kernel_check": [row]})
    # A compilation that hangs costs its limit, not the loan: the kernel's measurements are then left out.
    hung = gpu_check.main(["--out", str(tmp_path / "c"), "--quick", "--interpret", "--only", "kernel_compile",
                           "--compile-limit", "0.01"])
    assert [r["status"] for r in hung["kernel_compile"]] == ["timeout", "timeout"]
    assert "kernel_check (no configuration compiled in time)" in hung["skipped"] and "training" in hung["skipped"]
    with pytest.raises(SystemExit):
        gpu_check.main(["--out", str(tmp_path / "d"), "--only", "nope"])
    # A spent budget starts nothing more but still writes what it has.
    later = gpu_check.main(["--out", str(tmp_path / "b"), "--quick", "--budget", "0"])
    assert "kernel_check" in later["skipped"] and "kernel_check" not in later


def test_gpu_check_records_a_failing_step_and_goes_on(tmp_path, monkeypatch):
    import json

    from benchmarks import bench, gpu_check

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory on the device")

    monkeypatch.setattr(bench, "bench_training", broken)
    results = gpu_check.main(["--out", str(tmp_path), "--quick", "--only", "training,seeds"])
    assert set(results["errors"]) == {"training", "seeds"} and "out of memory" in results["errors"]["seeds"]
    assert json.loads((tmp_path / "gpu_check.json").read_text())["errors"] == results["errors"]


def test_kernel_ir_is_read_at_the_lowering():
    """benchmarks/triton_compile.py --kernel compiles the kernel's own Triton IR off the device (with pip's
    Triton, not a dependency): the IR it reads is the fused kernel's, one program of 32 rows."""
    pytest.importorskip("jax.export")
    from benchmarks import triton_compile

    try:
        ir = triton_compile.kernel_ir("bf16", 32, rows=256)
    except (ImportError, ModuleNotFoundError) as e:  # a jaxlib without the Triton dialect
        pytest.skip(f"no Triton lowering in this jaxlib: {e}")
    assert "tt.func public @mijax_fused_denoiser" in ir and ir.count("tt.dot ") == 6  # fc1 and fc2 in each of 3 blocks
    assert "arith.constant 32 : i32" in ir
