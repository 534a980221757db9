"""oneDNN's convolutions (the UNet's conv="onednn"): XLA's numbers to float32 rounding, forward and both
gradients, through XLA's FFI; vmap; the UNet's parameters unchanged; clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import mijax
from mijax import models
from mijax.models import onednn
from mijax.execution import compile_init

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="oneDNN is not installed: " + onednn.INSTALL_HINT)
NHWC = ("NHWC", "HWIO", "NHWC")


def _both(x_shape, k_shape, strides, padding):
    x = jax.random.normal(jax.random.key(0), x_shape)
    k = jax.random.normal(jax.random.key(1), k_shape)
    g = jax.random.normal(jax.random.key(2), jax.eval_shape(
        lambda: lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)).shape)
    out = []
    for conv in (lax.conv_general_dilated, onednn.conv_general_dilated):
        def f(x, k, conv=conv):
            return conv(x, k, strides, padding, dimension_numbers=NHWC)
        y, vjp = jax.vjp(jax.jit(f), x, k)
        out.append((y, *vjp(g)))
    return out


@needs_onednn
@pytest.mark.parametrize("x_shape, k_shape, strides, padding", [
    ((3, 8, 8, 4), (3, 3, 4, 5), (1, 1), ((1, 1), (1, 1))),  # the UNet's 3 x 3
    ((2, 8, 8, 4), (3, 3, 4, 4), (2, 2), ((1, 1), (1, 1))),  # its strided 3 x 3 (down)
    ((2, 6, 4, 6), (1, 1, 6, 3), (1, 1), "SAME"),  # its 1 x 1 skips, a non-square image
    ((2, 7, 7, 3), (3, 3, 3, 2), (2, 2), "SAME"),  # asymmetric padding (0, 1) on an odd size
    ((1, 5, 5, 2), (2, 2, 2, 3), (1, 1), "VALID"),
])
def test_forward_and_both_gradients_match_xla(x_shape, k_shape, strides, padding):
    (y0, dx0, dk0), (y1, dx1, dk1) = _both(x_shape, k_shape, strides, padding)
    assert y1.shape == y0.shape and dx1.shape == dx0.shape and dk1.shape == dk0.shape
    for a, b in ((y0, y1), (dx0, dx1), (dk0, dk1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("strides, padding", [((1, 1), ((1, 1), (1, 1))), ((2, 2), "SAME")])
def test_the_bias_inside_the_convolution_and_its_gradient(strides, padding):
    x, k = jax.random.normal(jax.random.key(0), (2, 6, 6, 3)), jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    side = 6 // strides[0]
    b, w = jax.random.normal(jax.random.key(2), (4,)), jax.random.normal(jax.random.key(3), (2, side, side, 4))

    def ours(x, k, b):
        return jnp.sum(jnp.sin(onednn.conv_with_bias(x, k, b, strides, padding)) * w)

    def xla(x, k, b):
        y = lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC) + b[None, None, None, :]
        return jnp.sum(jnp.sin(y) * w)

    got, want = (jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(x, k, b) for f in (ours, xla))
    for a, e in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(e), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="bias"):
        onednn.conv_with_bias(x, k, b[:3])


@needs_onednn
def test_vmap_loops_and_repeats_are_bit_equal():
    x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 4))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4, 5))

    def f(x, k):
        return onednn.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)

    mapped = np.asarray(jax.jit(jax.vmap(f))(x, k))
    one_by_one = np.stack([np.asarray(jax.jit(f)(x[i], k[i])) for i in range(3)])
    np.testing.assert_array_equal(mapped, one_by_one)
    np.testing.assert_array_equal(np.asarray(jax.jit(jax.vmap(f))(x, k)), mapped)
    grads = jax.jit(jax.vmap(jax.grad(lambda x, k: jnp.sum(f(x, k) ** 2), argnums=1)))(x, k)
    assert grads.shape == k.shape and bool(jnp.all(jnp.isfinite(grads)))


@needs_onednn
def test_the_unet_on_onednn_has_the_same_parameters_and_numbers():
    tiny = {"channels": 8, "mults": (1,), "res_blocks": 1, "groups": 4}  # one level: XLA compiles it quickly
    ours, xla = (models.build("unet", (8, 8, 1), options=dict(tiny, conv=c)) for c in ("onednn", "xla"))
    args = (jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,), jnp.int32))
    params = compile_init(xla.init, *args)(*args)
    same = compile_init(ours.init, *args)(*args)  # the same names, shapes and initial values
    assert jax.tree.structure(same) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # random values everywhere (the zero-initialised convolutions would hide the gradients' paths)
    leaves, tree = jax.tree.flatten(params)
    # one draw cut into the leaves (a draw per leaf compiles once per leaf's shape)
    flat = 0.2 * np.asarray(jax.random.normal(jax.random.key(0), (sum(a.size for a in leaves),)))
    cuts = np.cumsum([a.size for a in leaves])[:-1]
    params = tree.unflatten([jnp.asarray(p.reshape(a.shape)) for p, a in zip(np.split(flat, cuts), leaves)])
    x, t = jax.random.normal(jax.random.key(9), (2, 8, 8, 1)), jnp.asarray([3, 700])

    def loss(module):
        return jax.jit(jax.value_and_grad(lambda p: jnp.mean((module.apply(p, x, t) - x) ** 2)))

    (l0, g0), (l1, g1) = loss(xla)(params), loss(ours)(params)
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-3, atol=1e-5)


@needs_onednn
def test_what_it_does_not_take_raises():
    x, k = jnp.zeros((1, 6, 6, 2)), jnp.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="dilation"):
        onednn.conv_general_dilated(x, k, (1, 1), "SAME", rhs_dilation=(2, 2), dimension_numbers=NHWC)
    with pytest.raises(ValueError, match="NHWC"):
        onednn.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"))
    with pytest.raises(ValueError, match="channels"):
        onednn.conv_general_dilated(x, jnp.zeros((3, 3, 4, 2)), (1, 1), "SAME", dimension_numbers=NHWC)
    with pytest.raises(TypeError, match="jvp|forward-mode"):  # a custom VJP has no forward mode
        jax.jvp(lambda x: onednn.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC), (x,), (x,))


def test_a_bad_conv_option_and_a_missing_library_are_one_line(monkeypatch):
    with pytest.raises(mijax.MijaxError, match="conv must be one of xla, onednn"):
        models.build("unet", (8, 8, 1), options={"conv": "cudnn"})
    monkeypatch.setattr(onednn, "_library_paths", lambda: ["/nonexistent/libdnnl.so.3"])
    onednn._dnnl.cache_clear()
    try:
        assert not onednn.available()
        with pytest.raises(mijax.MijaxError, match="pip install"):
            models.build("unet", (8, 8, 1), options={"conv": "onednn"})
    finally:
        onednn._dnnl.cache_clear()


@needs_onednn
def test_sampling_and_training_give_a_onednn_unet_one_cpu_device_per_process():
    from mijax.models import ModuleDenoiser
    from mijax.execution import auto_devices

    tiny = {"channels": 8, "mults": (1,), "groups": 4}
    assert auto_devices(ModuleDenoiser(models.build("unet", (8, 8, 1), options=tiny))) is None  # all devices
    on_onednn = ModuleDenoiser(models.build("unet", (8, 8, 1), options=dict(tiny, conv="onednn")))
    assert auto_devices(on_onednn) == [jax.local_devices()[0]]
