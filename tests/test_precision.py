"""Matmul precision of the denoiser: float32 (published), tf32 and bf16; everything else float32."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.models.mlp import PRECISIONS, _round_to_tf32, matmul_dot_general


def test_tf32_rounding_keeps_ten_mantissa_bits_to_nearest_even():
    x = jnp.array([1.0, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-10 + 2**-12, -2.718281828, 0.0, jnp.inf], jnp.float32)
    expected = [1.0, 1.0, 1 + 2**-9, 1 + 2**-10, -2.71875, 0.0, np.inf]
    np.testing.assert_array_equal(jax.jit(_round_to_tf32)(x), np.asarray(expected, np.float32))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_precisions_keep_float32_parameters_and_outputs(precision):
    model = mijax.ToyDenoiser(features=2, precision=precision)
    reference = mijax.ToyDenoiser(features=2)
    x = jax.random.normal(jax.random.key(0), (128, 2))
    params = reference.init(jax.random.key(1), x[:1], jnp.zeros((1,), jnp.int32))
    assert jax.tree.structure(model.init(jax.random.key(1), x[:1], jnp.zeros((1,), jnp.int32))) == \
        jax.tree.structure(params)
    out = jax.jit(model.apply)(params, x, jnp.int32(7))
    exact = jax.jit(reference.apply)(params, x, jnp.int32(7))
    assert out.dtype == jnp.float32
    error = float(jnp.max(jnp.abs(out - exact)) / jnp.max(jnp.abs(exact)))
    bound = {"float32": 0.0, "tf32": 1e-2, "bf16": 5e-2}[precision]
    assert error <= bound
    if precision != "float32":
        assert error > 0  # the lower precision is really used


def test_bf16_dot_is_bfloat16_inputs_with_float32_accumulation():
    a = jax.random.normal(jax.random.key(0), (64, 32))
    b = jax.random.normal(jax.random.key(1), (32, 16))
    dims = (((1,), (0,)), ((), ()))
    got = matmul_dot_general("bf16")(a, b, dims)
    want = np.asarray(a.astype(jnp.bfloat16), np.float64) @ np.asarray(b.astype(jnp.bfloat16), np.float64)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_unknown_precision_raises():
    with pytest.raises(ValueError, match="precision"):
        matmul_dot_general("fp8")


def test_precision_comparison_on_a_trained_run(tmp_path):
    from benchmarks import precision
    from mijax.config import DataConfig, DiffusionConfig, RunConfig
    from mijax.runs import train_run

    config = RunConfig(data=DataConfig(n_train=300), diffusion=DiffusionConfig(timesteps=20),
                       train=mijax.TrainConfig(steps=30, batch_size=100, steps_per_call=30), seeds=2,
                       checkpoint_every=30)
    train_run(tmp_path / "run", config, progress=False)
    (result,) = precision.main(["--run", str(tmp_path / "run"), "--n", "256", "--chunk-size", "128",
                                "--out", str(tmp_path / "out")])
    assert set(result["precisions"]) == {"float32", "tf32", "bf16"}
    f32 = result["precisions"]["float32"]
    assert len(f32["per_seed"]["rate"]) == 2 and "within_float32_ci" not in f32
    for name in ("tf32", "bf16"):
        inside = result["precisions"][name]["within_float32_ci"]
        assert set(inside) == {"rate", "auroc", "auroc_blur_adjusted"}
        assert all(v in (True, False, None) for v in inside.values())
    assert "| bf16 |" in (tmp_path / "out" / "report.md").read_text()
    assert (tmp_path / "out" / "metrics.json").is_file()
