"""The paper's toy denoiser: parameter counts, tying, initialisation, the time embedding, the forward pass."""
import math

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.models import ToyDenoiser, timestep_embedding_closed
from mijax.models.mlp import LAYER_NORM_EPS, LEAKY_SLOPE


def _count(params):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def _init(model, key=0, n=4):
    return jax.jit(model.init)(jax.random.key(key), jnp.zeros((n, model.features)), jnp.zeros((n,), jnp.int32))


def _shapes(model):
    """The parameter tree's shapes without running (or compiling) the initialiser."""
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((4, model.features)), jnp.zeros((4,), jnp.int32))


@pytest.fixture(scope="module")
def tied2():
    model = ToyDenoiser(2)
    return model, _init(model)


@pytest.fixture(scope="module")
def apply2(tied2):
    return jax.jit(tied2[0].apply)


def test_parameter_counts():
    assert _count(_shapes(ToyDenoiser(1))) == 66_817
    assert _count(_shapes(ToyDenoiser(2))) == 67_074
    assert _count(_shapes(ToyDenoiser(1, tied=False))) - 66_817 == 99_584
    assert _count(_shapes(ToyDenoiser(2, tied=False))) - 67_074 == 99_584


def test_tied_model_has_one_block(tied2):
    _, params = tied2
    names = set(params["params"])
    assert {n for n in names if n.startswith("blocks")} == {"blocks_0"}
    untied = _shapes(ToyDenoiser(2, tied=False))
    assert {n for n in untied["params"] if n.startswith("blocks")} == {"blocks_0", "blocks_1", "blocks_2"}


def test_untied_with_equal_blocks_equals_tied(tied2, apply2):
    model, params = tied2
    untied = ToyDenoiser(2, tied=False)
    p = flax.core.unfreeze(params)
    p["params"].update({f"blocks_{i}": params["params"]["blocks_0"] for i in (1, 2)})
    chex.assert_trees_all_equal_structs(p, _shapes(untied))
    x = jax.random.normal(jax.random.key(1), (32, 2))
    t = jax.random.randint(jax.random.key(2), (32,), 0, 1000)
    untied_apply = jax.jit(untied.apply)
    chex.assert_trees_all_close(untied_apply(p, x, t), apply2(params, x, t), atol=1e-5, rtol=1e-5)
    # and genuinely different blocks give a different function
    p["params"]["blocks_1"] = jax.tree.map(lambda a: a * 1.5, p["params"]["blocks_1"])
    assert not np.allclose(np.asarray(untied_apply(p, x, t)), np.asarray(apply2(params, x, t)), atol=1e-3)


def test_scalar_t_equals_vector_t(tied2, apply2):
    _, params = tied2
    x = jax.random.normal(jax.random.key(3), (16, 2))
    for t in (0, 7, 999):
        a = apply2(params, x, jnp.int32(t))
        b = apply2(params, x, jnp.full((16,), t, jnp.int32))
        chex.assert_shape((a, b), (16, 2))
        chex.assert_trees_all_close(a, b, atol=1e-6)
    # and the output depends on t
    assert not np.allclose(np.asarray(apply2(params, x, jnp.int32(0))), np.asarray(apply2(params, x, jnp.int32(500))))


def test_outputs_independent_per_row(tied2, apply2):
    # No cross-sample mixing (LayerNorm normalises features, not the batch).
    _, params = tied2
    x = jax.random.normal(jax.random.key(4), (16, 2))
    t = jnp.arange(16) * 50
    full = apply2(params, x, t)
    part = apply2(params, x[:5], t[:5])
    chex.assert_trees_all_close(full[:5], part, atol=1e-6)


def test_xavier_uniform_kernels_and_zero_biases():
    params = _init(ToyDenoiser(2, tied=False), key=11)
    kernels = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        name = jax.tree_util.keystr(path)
        a = np.asarray(leaf)
        if name.endswith("['kernel']"):
            fan_in, fan_out = a.shape
            bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert np.abs(a).max() <= bound, name
            if a.size >= 128 * 128:  # enough entries to check the spread fills the bound
                assert np.abs(a).max() > 0.98 * bound, name
                np.testing.assert_allclose(a.std(), bound / math.sqrt(3), rtol=0.03, err_msg=name)
                assert abs(a.mean()) < 0.05 * bound
            kernels += 1
        elif name.endswith("['bias']"):
            np.testing.assert_array_equal(a, 0.0, err_msg=name)
        elif name.endswith("['scale']"):
            np.testing.assert_array_equal(a, 1.0, err_msg=name)
    # input, time, output + 3 per block (fc1, fc2, time) x 3 blocks
    assert kernels == 3 + 3 * 3
    # no bias on the input projection and on fc1/fc2
    p = params["params"]
    assert "bias" not in p["input_proj"] and "bias" not in p["blocks_0"]["fc1"] and "bias" not in p["blocks_0"]["fc2"]
    assert "bias" in p["output"] and "bias" in p["time_proj"] and "bias" in p["blocks_0"]["time"]


def test_layer_norm_epsilon(tied2):
    model, params = tied2
    assert LAYER_NORM_EPS == 1e-5 and LEAKY_SLOPE == 0.02
    # A feature vector with variance 1e-5: with eps 1e-5 it is scaled by 1/sqrt(2e-5) (a default
    # eps of 1e-6 would give 1/sqrt(1.1e-5)).
    h = jnp.tile(jnp.array([1.0, -1.0]) * math.sqrt(1e-5), 64)[None, :]  # [1, 128], mean 0, var 1e-5
    out = jax.jit(lambda p, h: model.apply(p, h, method=lambda m, h: m.out_norm(h)))(params, h)
    np.testing.assert_allclose(np.asarray(out), np.asarray(h) / math.sqrt(2e-5), rtol=1e-4)


@pytest.mark.parametrize("shape", [(8,), (8, 1), (8, 3), (2, 8, 2)])
def test_bad_input_shape_raises(tied2, shape):
    model, params = tied2
    with pytest.raises(ValueError):
        model.apply(params, jnp.zeros(shape), jnp.zeros((8,), jnp.int32))


def test_timestep_embedding_closed_matches_numpy():
    t = np.array([0, 1, 9, 250, 999])
    emb = jax.jit(timestep_embedding_closed, static_argnums=1)(jnp.asarray(t), 128)
    chex.assert_shape(emb, (5, 128))
    chex.assert_type(emb, jnp.float32)
    freqs = np.exp(-np.arange(64) * np.log(10000.0) / 63)
    assert freqs[0] == 1.0 and freqs[-1] == pytest.approx(1e-4)
    angles = t[:, None].astype(np.float64) * freqs[None, :]
    want = np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # sin first
    # float32 angle rounding: |t f| up to 999 rad, relative error ~6e-8
    np.testing.assert_allclose(np.asarray(emb), want, atol=2e-4)
    np.testing.assert_array_equal(np.asarray(emb[0]), np.concatenate([np.zeros(64), np.ones(64)]))


def _numpy_forward(params, x, t):
    """The published Decoder written out in float64 NumPy from SPEC section 3."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])

    def act(z):
        return np.where(z >= 0, z, 0.02 * z)  # LeakyReLU(0.02), written out

    def ln(z, q):
        mu = z.mean(-1, keepdims=True)
        var = ((z - mu) ** 2).mean(-1, keepdims=True)
        return (z - mu) / np.sqrt(var + 1e-5) * q["scale"] + q["bias"]

    def dense(z, q):
        return z @ q["kernel"] + q.get("bias", 0.0)

    freqs = np.exp(-np.arange(64) * np.log(10000.0) / 63)
    angles = np.asarray(t, np.float64)[:, None] * freqs[None, :]
    temb = act(dense(np.concatenate([np.sin(angles), np.cos(angles)], 1), p["time_proj"]))
    h = dense(np.asarray(x, np.float64), p["input_proj"])
    blk = p["blocks_0"]
    for _ in range(3):
        out = dense(act(ln(h, blk["norm1"])), blk["fc1"]) + dense(temb, blk["time"])
        h = h + dense(act(ln(out, blk["norm2"])), blk["fc2"])
    return dense(ln(h, p["out_norm"]), p["output"])


def test_forward_pass_matches_numpy_reference(tied2, apply2):
    _, params = tied2
    # random non-zero biases and LayerNorm affine so every term of the formula matters
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(8), len(leaves))
    params = jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])
    x = jax.random.normal(jax.random.key(9), (32, 2))
    t = jax.random.randint(jax.random.key(10), (32,), 0, 1000)
    got = apply2(params, x, t)
    chex.assert_shape(got, (32, 2))
    chex.assert_tree_all_finite(got)
    np.testing.assert_allclose(np.asarray(got), _numpy_forward(params, np.asarray(x), np.asarray(t)),
                               rtol=2e-4, atol=2e-4)


def test_apply_does_not_retrace(tied2):
    model, params = tied2

    @jax.jit
    @chex.assert_max_traces(n=1)
    def fwd(params, x, t):
        return model.apply(params, x, t)

    for i in range(3):
        out = fwd(params, jnp.full((8, 2), float(i)), jnp.full((8,), i))
    chex.assert_shape(out, (8, 2))


def test_public_api():
    assert mijax.ToyDenoiser is ToyDenoiser and mijax.timestep_embedding_closed is timestep_embedding_closed
