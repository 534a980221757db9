"""The Flax UNet: the published family's parameter counts, its zero-initialised output, shapes, and that it
plugs into the loss, training and the sampler through the model registry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax import models
from mijax.execution import compile_init


def _count(module, shape):
    x, t = jax.ShapeDtypeStruct((2,) + shape, jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32)
    params = jax.eval_shape(module.init, jax.random.key(0), x, t)
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def test_the_baseline_configuration_has_the_baselines_parameter_count():
    # SPEC section 9: torch_unet.py with C = 16, mults (1, 2, 2), 1 res block, 32 x 32 has 263,025 parameters
    assert _count(models.build("unet", (32, 32, 1)), (32, 32, 1)) == 263_025


def test_attention_adds_what_the_baseline_adds():
    # the baseline's attention block at c channels: GroupNorm 2c, qkv 1x1 conv 3c^2 + 3c, proj c^2 + c;
    # at level 1 (c = 32) there is one in the down path, two in the up path and one in the middle
    per_block = 2 * 32 + 3 * 32 * 32 + 3 * 32 + 32 * 32 + 32
    with_attention = models.build("unet", (32, 32, 1), options={"attn_levels": (1,)})
    assert _count(with_attention, (32, 32, 1)) == 263_025 + 4 * per_block


@pytest.mark.parametrize("shape, groups", [((2, 8, 8, 16), 8), ((3, 4, 6, 12), 1)])
def test_group_norm_is_flax_group_norm(shape, groups):
    # the UNet's own GroupNorm: flax's parameters (names, shapes) and numbers, values and gradients
    from flax import linen as nn
    from mijax.models.unet import GROUP_NORM_EPS, GroupNorm

    ours, theirs = GroupNorm(num_groups=groups), nn.GroupNorm(num_groups=groups, epsilon=GROUP_NORM_EPS)
    x = 3.0 * jax.random.normal(jax.random.key(0), shape) + 1.5  # an offset mean: mean of squares minus square
    params = theirs.init(jax.random.key(1), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)
    params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.key(2), a.shape), params)
    np.testing.assert_allclose(jax.jit(ours.apply)(params, x), jax.jit(theirs.apply)(params, x), rtol=2e-5, atol=2e-5)
    weights = jax.random.normal(jax.random.key(3), shape)
    grads = [jax.jit(jax.grad(lambda p, x, m=m: jnp.sum(m.apply(p, x) * weights), argnums=(0, 1)))(params, x)
             for m in (ours, theirs)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


TINY = {"channels": 8, "mults": (1, 2), "res_blocks": 1, "groups": 4}


def _init(module):
    # unoptimised, as mijax initialises the UNet: jax.jit(module.init) takes XLA:CPU ~18 s even for this tiny one
    args = (jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32))
    return compile_init(module.init, *args)(*args)


def test_output_shape_zero_init_and_shared_t():
    module = models.build("unet", (8, 8, 1), options=TINY)
    params = _init(module)
    x = jax.random.normal(jax.random.key(1), (3, 8, 8, 1))
    out = jax.jit(module.apply)(params, x, jnp.asarray(5))
    assert out.shape == (3, 8, 8, 1) and float(jnp.abs(out).max()) == 0.0  # the output conv starts at zero
    # with the output layer perturbed: a shared t equals the same t per row
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: a + 0.1 if "Conv_3" in jax.tree_util.keystr(path) else a, params)
    apply = jax.jit(module.apply)
    shared = apply(params, x, jnp.asarray(5))
    per_row = apply(params, x, jnp.full((3,), 5))
    assert float(jnp.abs(shared).max()) > 0
    np.testing.assert_allclose(np.asarray(shared), np.asarray(per_row), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape, options, fragment", [
    ((2,), {}, "denoises images"),
    ((30, 30, 1), {}, "do not halve"),
    ((32, 32, 1), {"channels": 12}, "groups"),
    ((32, 32, 1), {"attn_levels": (5,)}, "attention levels"),
])
def test_options_that_cannot_build_are_one_line(shape, options, fragment):
    with pytest.raises(mijax.MijaxError, match=fragment):
        models.build("unet", shape, options=options)
    with pytest.raises(mijax.MijaxError, match="float32 only"):
        models.build("unet", (32, 32, 1), precision="bf16")


def test_the_unet_trains_and_samples_images_with_hal(tmp_path):
    config = mijax.RunConfig(data=mijax.DataConfig("shapes", n_train=32, options={"size": 32, "num_images": 32}),
                             model=mijax.ModelConfig("unet", options={"channels": 8, "mults": (1,), "groups": 4}),
                             diffusion=mijax.DiffusionConfig(timesteps=10),
                             train=mijax.TrainConfig(steps=2, batch_size=16, steps_per_call=2), checkpoint_every=2)
    mijax.train_run(tmp_path / "run", config, progress=False)
    from mijax.cli import main

    assert main(["sample", "--run", str(tmp_path / "run"), "--n", "4", "--hal-window", "5", "--clip-x0",
                 "--hal-reduction", "region_max", "--no-progress", "--out", str(tmp_path / "s.npz")]) == 0
    drawn = np.load(tmp_path / "s.npz")
    assert drawn["x"].shape == (1, 4, 32, 32, 1) and drawn["hal"].shape == (1, 4)
    assert np.all(np.abs(drawn["x"]) <= 1.0) and np.all(drawn["hal"] >= 0)


def test_unet_options_survive_a_json_round_trip():
    config = mijax.RunConfig(data=mijax.DataConfig("shapes", options={"size": 32}),
                             model=mijax.ModelConfig("unet", options={"mults": [1, 2], "attn_levels": [1]}),
                             train=mijax.TrainConfig(batch_size=64))
    again = mijax.config_from_dict(mijax.store.json_safe(mijax.config_to_dict(config)))
    assert again == config and again.model.options["mults"] == (1, 2)


def test_dropout_acts_in_training_only_and_the_bottleneck_is_sown():
    from mijax.models.denoiser import ModuleDenoiser

    one_level = {**TINY, "mults": (2,)}
    module = models.build("unet", (8, 8, 1), options={**one_level, "dropout": 0.5})
    assert _count(module, (8, 8, 1)) == _count(models.build("unet", (8, 8, 1), options=one_level), (8, 8, 1))
    params = _init(module)
    params = jax.tree.map(lambda a: a + 0.05, params)  # leave the zero-initialised layers
    x, t = jax.random.normal(jax.random.key(1), (3, 8, 8, 1)), jnp.full((3,), 4)
    denoiser = ModuleDenoiser(module)
    sample_out = denoiser(params, x, t)
    np.testing.assert_array_equal(np.asarray(sample_out), np.asarray(denoiser(params, x, t)))  # no masks
    a = denoiser.training(jax.random.key(2))(params, x, t)
    b = denoiser.training(jax.random.key(3))(params, x, t)
    assert not np.allclose(np.asarray(a), np.asarray(sample_out)) and not np.allclose(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(denoiser.training(jax.random.key(2))(params, x, t)))
    without = ModuleDenoiser(models.build("unet", (8, 8, 1), options=one_level))
    assert without.training(jax.random.key(2)) is without
    _, state = module.apply(params, x, t, mutable=["intermediates"])
    (bottleneck,) = state["intermediates"]["bottleneck"]
    assert bottleneck.shape == (3, 8, 8, 16)  # one level: 8 x 8 not halved, channels 8 x mults[-1]
    with pytest.raises(mijax.MijaxError, match="dropout"):
        models.build("unet", (8, 8, 1), options={"dropout": 1.0})


def test_the_sampler_runs_the_unets_images_in_blocks_of_128_whatever_the_chunking():
    from mijax.models.denoiser import ModuleDenoiser
    from mijax.execution import CPU_ROWS_PER_BLOCK, plan_for

    module = models.build("unet", (8, 8, 1), options=TINY)
    denoiser = ModuleDenoiser(module)
    assert plan_for(denoiser).rows_per_block == (128 if jax.default_backend() == "cpu" else None)
    mlp = ModuleDenoiser(models.build("mlp", (1,)))
    assert plan_for(mlp).rows_per_block == (CPU_ROWS_PER_BLOCK if jax.default_backend() == "cpu" else None)
    params = jax.tree.map(lambda a: a + 0.05, _init(module))  # leave the zero-initialised output layer
    schedule = mijax.make_schedule("linear", 3, 1e-2, 0.2)
    config = mijax.SamplerConfig(hal_window=2, clip_x0=True)
    draw = lambda **kw: mijax.sample(denoiser, params, schedule, jax.random.key(4), 256, (8, 8, 1), config, **kw)
    whole, halves = draw(), draw(chunk_size=128)  # one chunk of two 128-image blocks; two chunks of one block
    np.testing.assert_array_equal(np.asarray(whole.x), np.asarray(halves.x))
    np.testing.assert_array_equal(np.asarray(whole.hal), np.asarray(halves.hal))
