"""Hallucination detectors (mijax.detectors): each score against a direct computation on a recorded trajectory,
the exact Jacobian against the closed form of a mixture's exact denoiser, Hutchinson's estimate against the
same probes by hand, and the specs' parsing and validation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mijax import detectors, mixtures
from mijax.config import SamplerConfig
from mijax.sampling import sample
from mijax.diffusion import make_schedule

T = 40
END, LENGTH = 2, 5  # the window t = 2..6


def _hessian_log_noised(mixture, schedule, x, t):
    """Hess log p_t(x) [N, d, d] of the noised isotropic mixture at x [N, d], in float64."""
    abar = float(np.asarray(schedule.alphas_cumprod)[t])
    means = np.sqrt(abar) * np.asarray(mixture.means, np.float64)
    var = abar * np.asarray(mixture.stds, np.float64) ** 2 + 1 - abar  # [K]
    x = np.asarray(x, np.float64)
    d = x.shape[1]
    logits = (np.log(np.asarray(mixture.weights, np.float64))[None] - 0.5 * d * np.log(var)[None]
              - 0.5 * ((x[:, None] - means[None]) ** 2).sum(-1) / var[None])
    r = np.exp(logits - logits.max(1, keepdims=True))
    r /= r.sum(1, keepdims=True)
    a = (means[None] - x[:, None]) / var[None, :, None]  # [N, K, d]
    g = (r[..., None] * a).sum(1)
    h = (np.einsum("nk,nki,nkj->nij", r, a, a) - np.einsum("nk,k->n", r, 1 / var)[:, None, None] * np.eye(d)
         - np.einsum("ni,nj->nij", g, g))
    return h, g


@pytest.mark.parametrize("dim", [1, 2])
def test_every_detector_equals_a_direct_computation_on_the_recorded_trajectory(dim):
    schedule = make_schedule(num_timesteps=T)
    truth = mixtures.gaussian1d() if dim == 1 else mixtures.make_mixture([[-1.0, 0.0], [1.0, 0.5]], 0.05)
    model = mixtures.make_mixture(np.asarray(truth.means), 0.2)  # a blurred "learned" model: its exact denoiser
    window = f"@{END}:{LENGTH}"
    specs = detectors.parse([n + window for n in ("hal", "xt_var", "path_length", "eps_norm", "jac_trace",
                                                  "jac_frob", "oracle")] + ["lid@3", "hal"])
    config = SamplerConfig(detectors=specs, trajectory_stride=1, trajectory_last=END + LENGTH, trajectory_xt=True)
    out = sample(mixtures.exact_denoiser, (model, schedule), schedule, jax.random.key(3), 64, (dim,), config,
                 oracle=(mixtures.exact_denoiser, (truth, schedule)))
    s = {k: np.asarray(v, np.float64) for k, v in out.scores.items()}
    ts = list(out.trajectory_t)  # T - ... recorded steps, t = END + LENGTH - 1 .. 0
    steps = [ts.index(t) for t in range(END + LENGTH - 1, END - 1, -1)]
    x0 = np.asarray(out.trajectory, np.float64)[:, steps]  # [N, K, d]
    xt = np.asarray(out.trajectory_xt, np.float64)[:, steps]
    key = lambda name: f"{name}_e{END}_k{LENGTH}"  # noqa: E731
    np.testing.assert_allclose(s[key("hal")], x0.var(axis=1).mean(axis=1), rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(s["hal"], out.hal, rtol=0, atol=0)  # the default window is the sampler's Hal
    np.testing.assert_allclose(s[key("xt_var")], xt.var(axis=1).mean(axis=1), rtol=1e-4, atol=1e-9)
    path = np.linalg.norm(np.diff(x0, axis=1), axis=2).sum(axis=1)
    np.testing.assert_allclose(s[key("path_length")], path, rtol=1e-4, atol=1e-7)
    eps, learned, trace, frob = [], [], [], []
    for k, t in enumerate(range(END + LENGTH - 1, END - 1, -1)):
        x = xt[:, k]
        e_model = np.asarray(mixtures.exact_eps(model, schedule, jnp.asarray(x, jnp.float32), t), np.float64)
        e_true = np.asarray(mixtures.exact_eps(truth, schedule, jnp.asarray(x, jnp.float32), t), np.float64)
        sigma = float(np.sqrt(1 - np.asarray(schedule.alphas_cumprod, np.float64)[t]))
        jac = -sigma * _hessian_log_noised(model, schedule, x, t)[0]  # J = -sigma Hess log p_t
        learned.append(np.sqrt(((e_model - e_true) ** 2).mean(1)))
        eps.append(np.sqrt((e_model**2).mean(1)))
        trace.append(np.trace(jac, axis1=1, axis2=2))
        frob.append(np.sqrt((jac**2).sum((1, 2))))
    np.testing.assert_allclose(s[key("eps_norm")], np.mean(eps, 0), rtol=2e-4)
    np.testing.assert_allclose(s[key("oracle")], np.mean(learned, 0), rtol=2e-3, atol=1e-6)
    np.testing.assert_allclose(s[key("jac_trace")], -np.mean(trace, 0), rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(s[key("jac_frob")], np.mean(frob, 0), rtol=2e-3, atol=2e-4)
    # FLIPD at the final samples, t0 = 3: D - sigma tr J(psi x) + |eps(psi x)|^2
    abar = float(np.asarray(schedule.alphas_cumprod, np.float64)[3])
    y = np.sqrt(abar) * np.asarray(out.x, np.float64)
    hess, g = _hessian_log_noised(model, schedule, y, 3)
    lid = dim + (1 - abar) * np.trace(hess, axis1=1, axis2=2) + (1 - abar) * (g**2).sum(1)
    np.testing.assert_allclose(s["lid_e3"], lid, rtol=2e-3, atol=2e-3)


def _linear(a):
    """A denoiser eps = x A (row-wise; J = A^T per sample, whatever x and t)."""
    def fn(params, x, t):
        flat = x.reshape(x.shape[0], -1)
        return (flat @ params).reshape(x.shape)
    return fn


@pytest.mark.parametrize("shape", [(3,), (4, 4, 2)])
def test_jacobian_exact_for_points_and_hutchinson_for_images(shape):
    size = int(np.prod(shape))
    a = 0.1 * jax.random.normal(jax.random.key(0), (size, size))
    fn = _linear(a)
    schedule = make_schedule(num_timesteps=8)
    config = SamplerConfig(hal_window=2, detectors=detectors.parse(["jac_trace@0:1", "jac_frob@0:1"]), jac_probes=3)
    key = jax.random.key(5)
    out = sample(fn, a, schedule, key, 16, shape, config)
    trace, frob = np.asarray(-out.scores["jac_trace_e0_k1"]), np.asarray(out.scores["jac_frob_e0_k1"])
    if size <= detectors.JAC_EXACT_MAX:  # exact: the same for every sample
        np.testing.assert_allclose(trace, np.trace(a), rtol=1e-5)
        np.testing.assert_allclose(frob, np.linalg.norm(a), rtol=1e-5)
        return
    # Hutchinson with the documented probes: v' J v and |J v|^2 averaged over 3 Rademacher probes at t = 0.
    for i in range(16):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, i), detectors.PROBE_STREAM), 0)
        v = np.asarray(jax.random.rademacher(k, (3,) + shape, jnp.float32)).reshape(3, size)
        jv = v @ np.asarray(a)
        np.testing.assert_allclose(trace[i], np.mean((v * jv).sum(1)), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(frob[i], np.sqrt(np.mean((jv**2).sum(1))), rtol=1e-5)
    assert abs(trace.mean() - np.trace(a)) < 3 * np.linalg.norm(a)  # unbiased: near the truth on average


def test_detectors_leave_the_samples_alone_and_do_not_depend_on_the_chunking():
    schedule = make_schedule(num_timesteps=T)
    model = mixtures.make_mixture([[0.0], [1.0]], 0.1)
    plain = sample(mixtures.exact_denoiser, (model, schedule), schedule, jax.random.key(1), 300, (1,))
    config = SamplerConfig(detectors=detectors.parse("hal,path_length,jac_trace,lid"))
    whole = sample(mixtures.exact_denoiser, (model, schedule), schedule, jax.random.key(1), 300, (1,), config)
    chunked = sample(mixtures.exact_denoiser, (model, schedule), schedule, jax.random.key(1), 300, (1,), config,
                     chunk_size=128)
    np.testing.assert_array_equal(whole.x, plain.x)
    np.testing.assert_array_equal(whole.hal, plain.hal)
    for k in whole.scores:
        np.testing.assert_array_equal(chunked.scores[k], whole.scores[k])


def test_parse_labels_and_bad_specs():
    specs = detectors.parse("hal, jac_trace@5:20 ,lid@7,lid,path_length@3")
    assert [s.label for s in specs] == ["hal", "jac_trace@5:20", "lid@7", "lid", "path_length@3:10"]
    assert [s.key for s in specs] == ["hal", "jac_trace_e5_k20", "lid_e7", "lid", "path_length_e3_k10"]
    assert detectors.parse([s.label for s in specs]) == specs
    for bad, match in [("halx", "unknown detector"), ("hal@a:2", "bad detector window"), ("hal,,lid", "empty"),
                       ("hal,hal@0:10", "asked for twice")]:
        with pytest.raises(ValueError, match=match):
            detectors.parse(bad)
    for specs, has_oracle, match in [("hal@0:1", True, "window"), ("hal@35:10", True, "window"),
                                     ("lid@40", True, "t0"), ("oracle", False, "exact denoiser")]:
        with pytest.raises(ValueError, match=match):
            detectors.validate(detectors.parse(specs), T, T, has_oracle)


def test_abort_and_resample_keeps_the_count_is_deterministic_and_equals_plain_sampling_at_infinity():
    from mijax.config import AbortConfig
    from mijax.abort import REDRAW_STREAM, sample_with_abort
    from mijax.sampling import _reverse

    schedule = make_schedule(num_timesteps=T)
    model = mixtures.make_mixture([[0.0], [1.0]], 0.2)
    args = (mixtures.exact_denoiser, (model, schedule), schedule, jax.random.key(2), 200, (1,))
    spec = detectors.parse("hal@5:10")[0]
    config = SamplerConfig(detectors=detectors.parse("hal,jac_trace"))
    plain = sample(*args, config=dataclasses.replace(config, detectors=config.detectors + (spec,)))
    never, info = sample_with_abort(*args, AbortConfig(spec, np.inf), config)
    for field in ("x", "hal"):
        np.testing.assert_array_equal(getattr(never, field), getattr(plain, field))
    for k in plain.scores:
        np.testing.assert_array_equal(never.scores[k], plain.scores[k])
    assert not info["redraws"].any() and (info["steps"] == T).all()
    # A threshold at the median of the early score: about half are redrawn (at most twice).
    threshold = float(np.median(plain.scores[spec.key]))
    out, info = sample_with_abort(*args, AbortConfig(spec, threshold, max_redraws=2), config)
    again, info2 = sample_with_abort(*args, AbortConfig(spec, threshold, max_redraws=2), config)
    np.testing.assert_array_equal(again.x, out.x)
    np.testing.assert_array_equal(info2["redraws"], info["redraws"])
    assert out.x.shape == (200, 1) and out.hal.shape == (200,)
    kept = info["redraws"] == 0
    assert 50 < (~kept).sum() < 150 and info["redraws"].max() <= 2
    np.testing.assert_array_equal(out.x[kept], plain.x[kept])  # never redrawn: the plain sampler's own samples
    split = T - spec.end
    np.testing.assert_array_equal(info["steps"], info["redraws"] * split + T)
    final = np.asarray(out.scores[spec.key])
    np.testing.assert_array_equal(info["still_flagged"], final >= threshold)
    assert not info["still_flagged"][(info["redraws"] > 0) & (info["redraws"] < 2)].any()
    # A redrawn sample is the sample of its redraw's key, run the plain way.
    i = int(np.nonzero(info["redraws"] == 1)[0][0])
    key_i = jax.random.fold_in(jax.random.fold_in(jax.random.key(2), i), REDRAW_STREAM + 1)
    direct = _reverse(mixtures.exact_denoiser, (model, schedule), schedule, key_i[None], plain_config(config, spec),
                      (1,))
    np.testing.assert_allclose(out.x[i], direct.x[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="windowed detector"):
        sample_with_abort(*args, AbortConfig(detectors.parse("lid")[0], 1.0), config)


def plain_config(config, spec):
    return dataclasses.replace(config, detectors=config.detectors + (spec,))
