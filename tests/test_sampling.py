"""The scan samplers: against a step-by-step reference, Hal against recorded trajectories, invariances."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.config import SamplerConfig
from mijax.execution import CPU_ROWS_PER_BLOCK
from mijax.sampling import ROW_BLOCK, chunk_rows, reverse_timesteps, row_blocks, sample_chunk, validate

T = 50
MODEL = mijax.ToyDenoiser(1)


def toy(params, x, t):
    """The paper's denoiser as a plain (hashable, stable) function: a jit static argument."""
    return MODEL.apply(params, x, t)


_toy_jit = jax.jit(toy)


@pytest.fixture(scope="module")
def schedule():
    return mijax.make_schedule("linear", T)


def _init(seed):
    return jax.jit(MODEL.init)(jax.random.key(seed), jnp.zeros((2, 1)), jnp.zeros((2,), jnp.int32))


@pytest.fixture(scope="module")
def params():
    return _init(0)


@jax.jit
def _normal_per_key_impl(keys, step):
    return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), (1,)))(keys)


def _normal_per_key(keys, step, shape):
    assert shape == (1,)
    return _normal_per_key_impl(keys, step)


def _reference(params, schedule, key, n, config, denoise=_toy_jit, shape=(1,)):
    """The sampler written as a Python loop in float64, with the documented per-sample noise:
    sample i uses k_i = fold_in(key, i), starts from normal(fold_in(k_i, T)) and step t adds
    normal(fold_in(k_i, t))."""
    steps = reverse_timesteps(config, T)
    keys = jnp.stack([jax.random.fold_in(key, i) for i in range(n)])

    def noise(step):
        return np.asarray(_normal_per_key(keys, step, shape), np.float64)

    b = np.asarray(mijax.beta_values("linear", T))
    abar = np.cumprod(1 - b)
    prev = np.concatenate([[1.0], abar[:-1]])
    x = noise(T)
    x0s = []
    for i, t in enumerate(steps):
        eps = np.asarray(denoise(params, jnp.asarray(x, jnp.float32), jnp.int32(t)), np.float64)
        x0 = (x - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
        x0s.append(x0)
        tp = steps[i + 1] if i + 1 < len(steps) else -1
        if tp < 0:
            x = x0
        elif config.sampler == "ddpm":
            mean = b[t] * np.sqrt(prev[t]) / (1 - abar[t]) * x0 + np.sqrt(1 - b[t]) * (1 - prev[t]) / (1 - abar[t]) * x
            var = b[t] if config.variance == "fixed_large" else b[t] * (1 - prev[t]) / (1 - abar[t])
            x = mean + np.sqrt(var) * noise(t)
        else:
            ap = abar[tp]
            sigma = config.eta * np.sqrt((1 - ap) / (1 - abar[t]) * (1 - abar[t] / ap))
            x = np.sqrt(ap) * x0 + np.sqrt(1 - ap - sigma**2) * eps + sigma * noise(t)
    x0s = np.stack(x0s, axis=1)  # [n, S, *shape]
    end = x0s.shape[1] - config.hal_end
    window = x0s[:, end - config.hal_window:end]
    hal = window.var(axis=1).reshape(n, -1).mean(axis=1)
    return x, hal


REFERENCE_CONFIGS = {
    "ddpm_large": SamplerConfig(hal_window=5),
    "ddpm_small": SamplerConfig(variance="fixed_small", hal_window=4, hal_end=3),
    "ddim_eta0": SamplerConfig(sampler="ddim", ddim_steps=12, eta=0.0, hal_window=3),
    "ddim_eta05": SamplerConfig(sampler="ddim", ddim_steps=12, eta=0.5, hal_window=3),
}


@pytest.fixture(scope="module")
def reference_runs(params, schedule):
    key = jax.random.key(42)
    out = {}
    for name, config in REFERENCE_CONFIGS.items():
        got = mijax.sample(toy, params, schedule, key, 23, (1,), config)
        out[name] = (got, _reference(params, schedule, key, 23, config))
    return out


@pytest.mark.parametrize("name", list(REFERENCE_CONFIGS))
def test_sampler_matches_reference_loop(reference_runs, name):
    got, (x, hal) = reference_runs[name]
    chex.assert_shape(got.x, (23, 1))
    chex.assert_shape(got.hal, (23,))
    chex.assert_tree_all_finite((got.x, got.hal))
    assert got.trajectory is None
    np.testing.assert_allclose(np.asarray(got.x), x, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(got.hal), hal, rtol=1e-3, atol=1e-7)
    assert np.all(np.asarray(got.hal) >= 0)


def test_ddim_eta_zero_depends_only_on_the_start(reference_runs):
    # With eta = 0 and the same starting noise the samples are the same whatever the step noise: in
    # the reference loop the step noise is multiplied by sigma = 0, and the sampler agrees with it.
    got0, _ = reference_runs["ddim_eta0"]
    got5, _ = reference_runs["ddim_eta05"]
    assert not np.allclose(np.asarray(got0.x), np.asarray(got5.x), atol=1e-3)  # eta > 0 does add noise
    assert len(reverse_timesteps(REFERENCE_CONFIGS["ddim_eta0"], T)) == 12 < T


def test_ddim_on_the_paper_schedule():
    # With the paper's linear 1e-3 -> 0.2 over T = 1000, abar_t underflows float32 to 0 for t >~ 900,
    # so x0_hat = sqrt(1/abar) x - ... is not representable there; DDIM must still run (its update
    # only needs abar_{t'} / abar_t) and, with the exact denoiser, land on the modes.
    s = mijax.make_schedule()
    mix = mijax.gaussian1d()
    out = mijax.sample(mijax.exact_denoiser, (mix, s), s, jax.random.key(0), 200, (1,),
                       SamplerConfig(sampler="ddim", ddim_steps=100, hal_window=5))
    chex.assert_tree_all_finite((out.x, out.hal))
    # 100 coarse deterministic steps are not the exact reverse process: most, not all, land within 5 std
    assert np.asarray(mijax.in_support(mix, out.x, 5.0)).mean() >= 0.95
    assert np.all((np.asarray(out.x) > 0.7) & (np.asarray(out.x) < 3.3))


def test_reverse_timesteps():
    np.testing.assert_array_equal(reverse_timesteps(SamplerConfig(), T), np.arange(T - 1, -1, -1))
    ddim = reverse_timesteps(SamplerConfig(sampler="ddim", ddim_steps=12), T)
    assert ddim.dtype == np.int32 and ddim[0] == T - 1 and ddim[-1] == 0 and len(ddim) == 12
    assert np.all(np.diff(ddim) < 0)
    np.testing.assert_array_equal(reverse_timesteps(SamplerConfig(sampler="ddim"), T), np.arange(T - 1, -1, -1))
    # ddim_steps is ignored by DDPM
    assert len(reverse_timesteps(SamplerConfig(ddim_steps=12), T)) == T


def test_ddim_with_all_steps_and_eta_one_is_ddpm_with_small_variance(params, schedule):
    # DDIM's sigma at eta = 1 is the posterior std, so over all T steps its update equals the
    # fixed-small ancestral step (same noise draws).
    key = jax.random.key(3)
    ddim = mijax.sample(toy, params, schedule, key, 23, (1,), SamplerConfig(sampler="ddim", eta=1.0, hal_window=5))
    ddpm = mijax.sample(toy, params, schedule, key, 23, (1,), SamplerConfig(variance="fixed_small", hal_window=5))
    chex.assert_trees_all_close(ddim.x, ddpm.x, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("hal_end", [0, 4])
def test_hal_is_variance_of_recorded_x0_hat(params, schedule, hal_end):
    K = 6
    config = SamplerConfig(hal_window=K, hal_end=hal_end, trajectory_stride=1, trajectory_last=hal_end + K)
    out = mijax.sample(toy, params, schedule, jax.random.key(1), 23, (1,), config)
    chex.assert_shape(out.trajectory, (23, hal_end + K, 1))
    np.testing.assert_array_equal(out.trajectory_t, np.arange(hal_end + K - 1, -1, -1))
    window = np.asarray(out.trajectory, np.float64)[:, :K]  # oldest first: t = hal_end + K - 1 .. hal_end
    np.testing.assert_allclose(np.asarray(out.hal), window.var(axis=1, ddof=0).mean(axis=-1), rtol=1e-4, atol=1e-9)
    # the final sample is the last x0_hat
    np.testing.assert_array_equal(np.asarray(out.x), np.asarray(out.trajectory[:, -1]))
    # Hal is a variance (ddof 0), not a std and not ddof 1: the values differ from those
    assert not np.allclose(np.asarray(out.hal), window.var(axis=1, ddof=1).mean(axis=-1), rtol=1e-3)


def test_extra_hal_windows_and_reductions_are_variances_of_recorded_x0_hat(schedule):
    mixture = mijax.gaussian25()
    windows = ((0, 10), (5, 4), (12, 2))
    config = SamplerConfig(hal_window=10, hal_windows=windows, trajectory_stride=1, trajectory_last=14)
    out = mijax.sample(mijax.exact_denoiser, (mixture, schedule), schedule, jax.random.key(3), 37, (2,), config)
    chex.assert_shape(out.hal_windows, (37, 3))
    np.testing.assert_array_equal(np.asarray(out.hal_windows[:, 0]), np.asarray(out.hal))  # one window, one number
    traj = np.asarray(out.trajectory, np.float64)  # t = 13 .. 0
    for w, (end, length) in enumerate(windows):
        part = traj[:, 14 - end - length:14 - end]
        np.testing.assert_allclose(np.asarray(out.hal_windows[:, w]), part.var(axis=1).mean(axis=-1),
                                   rtol=1e-4, atol=1e-10)
    # other reductions over the coordinates; the samples do not move
    top = mijax.sample(mijax.exact_denoiser, (mixture, schedule), schedule, jax.random.key(3), 37, (2,),
                       dataclasses.replace(config, hal_reduction="max"))
    np.testing.assert_array_equal(np.asarray(top.x), np.asarray(out.x))
    np.testing.assert_allclose(np.asarray(top.hal), traj[:, 4:].var(axis=1).max(axis=-1), rtol=1e-4, atol=1e-10)
    assert np.all(np.asarray(top.hal) >= np.asarray(out.hal))
    plain = mijax.sample(mijax.exact_denoiser, (mixture, schedule), schedule, jax.random.key(3), 37, (2,),
                         SamplerConfig(hal_window=10))
    np.testing.assert_array_equal(np.asarray(plain.hal), np.asarray(out.hal))  # extra windows change nothing
    assert plain.hal_windows is None


def test_top_k_hal_and_clipped_x0(schedule):
    mixture = mijax.gaussian25()
    key = jax.random.key(4)
    config = SamplerConfig(hal_window=10, hal_reduction="top_k", hal_top_k=1, trajectory_stride=1, trajectory_last=10)
    top1 = mijax.sample(mijax.exact_denoiser, (mixture, schedule), schedule, key, 29, (2,), config)
    traj = np.asarray(top1.trajectory, np.float64)
    np.testing.assert_allclose(np.asarray(top1.hal), traj.var(axis=1).max(axis=-1), rtol=1e-4, atol=1e-10)
    top2 = mijax.sample(mijax.exact_denoiser, (mixture, schedule), schedule, key, 29, (2,),
                        dataclasses.replace(config, hal_top_k=5))  # k past the coordinates: the mean of all
    np.testing.assert_allclose(np.asarray(top2.hal), traj.var(axis=1).mean(axis=-1), rtol=1e-4, atol=1e-10)
    # clipping: every x0_hat (and so every sample) lies in [-1, 1]; data that never leaves it is unchanged
    # (the two mixtures have the same shapes: each sampler's clipped and plain programs compile once)
    wide = mijax.make_mixture(np.array([[-3.0, 0.0], [3.0, 0.0]]), 0.3)
    clipping = SamplerConfig(clip_x0=True, trajectory_stride=1)
    clipped = mijax.sample(mijax.exact_denoiser, (wide, schedule), schedule, key, 64, (2,), clipping)
    assert float(jnp.abs(clipped.trajectory).max()) <= 1.0 and float(jnp.abs(clipped.x).max()) <= 1.0
    plain = mijax.sample(mijax.exact_denoiser, (wide, schedule), schedule, key, 64, (2,), SamplerConfig())
    assert float(jnp.abs(plain.x).max()) > 2.0
    for sampler in ("ddpm", "ddim"):
        small = mijax.make_mixture(np.array([[-0.5, 0.0], [0.5, 0.0]]), 0.01)
        on = mijax.sample(mijax.exact_denoiser, (small, schedule), schedule, key, 64, (2,),
                          dataclasses.replace(clipping, sampler=sampler))
        off = mijax.sample(mijax.exact_denoiser, (small, schedule), schedule, key, 64, (2,),
                           SamplerConfig(sampler=sampler))
        assert float(jnp.abs(on.x).max()) <= 1.0 and float(jnp.abs(on.trajectory).max()) <= 1.0
        np.testing.assert_allclose(np.asarray(on.x)[np.abs(np.asarray(off.x)).max(axis=1) < 0.9],
                                   np.asarray(off.x)[np.abs(np.asarray(off.x)).max(axis=1) < 0.9], atol=0.05)


def test_strided_trajectory(params, schedule):
    key = jax.random.key(1)
    full = mijax.sample(toy, params, schedule, key, 23, (1,), SamplerConfig(hal_window=6, trajectory_stride=1))
    strided = mijax.sample(toy, params, schedule, key, 23, (1,), SamplerConfig(hal_window=6, trajectory_stride=3))
    chex.assert_shape(full.trajectory, (23, T, 1))
    np.testing.assert_array_equal(full.trajectory_t, np.arange(T - 1, -1, -1))
    # strided records every 3rd step counted from the end: t = 48, 45, ..., 3, 0
    np.testing.assert_array_equal(strided.trajectory_t, np.arange(48, -1, -3))
    rows = T - 1 - strided.trajectory_t  # index of each recorded t in the full trajectory
    np.testing.assert_array_equal(np.asarray(strided.trajectory), np.asarray(full.trajectory)[:, rows])
    # recording does not change x or Hal
    np.testing.assert_array_equal(np.asarray(full.x), np.asarray(strided.x))
    np.testing.assert_array_equal(np.asarray(full.hal), np.asarray(strided.hal))


def test_chunk_size_invariance(params, schedule):
    config = REFERENCE_CONFIGS["ddpm_large"]
    key = jax.random.key(42)
    outs = [mijax.sample(toy, params, schedule, key, 23, (1,), config, chunk_size=c) for c in (7, 16, None, 100)]
    for out in outs:
        chex.assert_shape(out.x, (23, 1))
        chex.assert_shape(out.hal, (23,))
    # chunks are compiled padded to whole row blocks, so every sample is bit-identical
    for out in outs[1:]:
        chex.assert_trees_all_equal((out.x, out.hal), (outs[0].x, outs[0].hal))
    # also across a block boundary (chunks of 64 and 65 rows compile to 64 and 128)
    big = [mijax.sample(elementwise_denoiser, jnp.float32(0.3), schedule, key, 130, (1,), config, chunk_size=c)
           for c in (64, 65, None)]
    for out in big[1:]:
        chex.assert_trees_all_equal((out.x, out.hal), (big[0].x, big[0].hal))
    # sample_chunks yields padded-and-trimmed chunks at the right starts
    chunks = list(mijax.sample_chunks(toy, params, schedule, key, 23, (1,), config, chunk_size=7))
    assert [s for s, _ in chunks] == [0, 7, 14, 21]
    assert [c.x.shape[0] for _, c in chunks] == [7, 7, 7, 2]
    np.testing.assert_array_equal(np.concatenate([np.asarray(c.x) for _, c in chunks]), np.asarray(outs[0].x))


def test_row_blocks():
    assert ROW_BLOCK == 128 and CPU_ROWS_PER_BLOCK == 3968
    assert row_blocks(10_000, 3968) == (3, 3456)  # the fewest blocks of <= 3,968 rows, equal, whole ROW_BLOCKs
    assert row_blocks(12_288, 3072) == (4, 3072) and row_blocks(12_289, 3072) == (5, 2560)
    assert row_blocks(100, 3968) == (1, 128) and row_blocks(5000, None) == (1, 5120)
    assert row_blocks(1000, 100) == (8, 128)  # a block is at least ROW_BLOCK rows
    assert chunk_rows(10_000, None, 1, 3968) == (10_000, 3 * 3456)
    assert chunk_rows(10_000, 5000, 2, 1000) == (5000, 2 * 3 * 896)  # 2,500 rows per device: 3 blocks of 896
    for n in range(1, 30_000, 97):
        count, size = row_blocks(n, 3968)
        assert size % 128 == 0 and size <= 3968 and count * size >= n and count * size - n < count * 128
    with pytest.raises(ValueError, match="rows per block"):
        row_blocks(100, 0)


def test_samples_do_not_depend_on_the_chunk_across_4096_rows(params):
    """XLA:CPU's matmuls round differently from 4,096 rows up; the CPU default blocks stay below that, so
    a chunk of 5,000 samples gives the same bits as chunks of 1,000 (it did not before the blocks)."""
    schedule = mijax.make_schedule("linear", 4)
    config = SamplerConfig(hal_window=2)
    key = jax.random.key(11)
    runs = [mijax.sample(toy, params, schedule, key, 5000, (1,), config, chunk_size=c) for c in (None, 4500, 1000)]
    for out in runs[1:]:
        chex.assert_trees_all_equal((out.x, out.hal), (runs[0].x, runs[0].hal))


def test_row_blocks_do_not_change_a_sample(params, schedule):
    """Rows run through the steps in blocks one after the other (the CPU default): the same bits as all
    at once, for samples, Hal and recorded trajectories, with and without a seed axis."""
    config = SamplerConfig(hal_window=6, trajectory_stride=7)
    key = jax.random.key(9)
    runs = [mijax.sample(toy, params, schedule, key, 300, (1,), config, rows_per_block=b)
            for b in (None, 64, 100, "auto")]
    chex.assert_shape(runs[0].trajectory, (300, 8, 1))
    for out in runs[1:]:
        chex.assert_trees_all_equal((out.x, out.hal, out.trajectory), (runs[0].x, runs[0].hal, runs[0].trajectory))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, _init(1))
    keys = jax.random.split(key, 2)
    seeds = [mijax.sample(toy, stacked, schedule, keys, 200, (1,), SamplerConfig(), seed_axis=True,
                          rows_per_block=b) for b in (None, 64)]
    chex.assert_trees_all_equal((seeds[1].x, seeds[1].hal), (seeds[0].x, seeds[0].hal))


def test_seeds(params, schedule, reference_runs):
    config = REFERENCE_CONFIGS["ddpm_large"]
    a = reference_runs["ddpm_large"][0]
    b = mijax.sample(toy, params, schedule, jax.random.key(42), 23, (1,), config)
    c = mijax.sample(toy, params, schedule, jax.random.key(43), 23, (1,), config)
    chex.assert_trees_all_equal((a.x, a.hal), (b.x, b.hal))
    assert not np.any(np.isclose(np.asarray(a.x), np.asarray(c.x), atol=1e-6))
    # samples within a call are distinct (per-sample keys)
    assert len(np.unique(np.asarray(a.x))) == 23


def test_seed_axis_equals_separate_runs(schedule):
    config = SamplerConfig(hal_window=5)
    p = [_init(1), _init(2)]
    keys = jax.random.split(jax.random.key(9), 2)
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *p)
    out = mijax.sample(toy, stacked, schedule, keys, 23, (1,), config, chunk_size=16, seed_axis=True)
    chex.assert_shape(out.x, (2, 23, 1))
    chex.assert_shape(out.hal, (2, 23))
    for s in range(2):
        one = mijax.sample(toy, p[s], schedule, keys[s], 23, (1,), config, chunk_size=16)
        chex.assert_trees_all_close((out.x[s], out.hal[s]), (one.x, one.hal), atol=1e-5, rtol=1e-5)
    assert not np.allclose(np.asarray(out.x[0]), np.asarray(out.x[1]))


TRACES = {"count": 0}


def elementwise_denoiser(params, x, t):
    return params * x + 0.01 * t.astype(jnp.float32)


def counting_denoiser(params, x, t):
    """Counts how often it is traced (not called): a retrace would increment the counter."""
    TRACES["count"] += 1
    return params * x + 0.01 * t.astype(jnp.float32)


def test_no_retrace_across_calls_and_chunks(schedule):
    config = SamplerConfig(hal_window=5)
    mijax.sample(counting_denoiser, jnp.float32(0.3), schedule, jax.random.key(0), 20, (1,), config, chunk_size=7)
    first = TRACES["count"]
    assert first >= 1
    # other key, other parameter values, three chunks: nothing is traced again
    out = mijax.sample(counting_denoiser, jnp.float32(0.7), schedule, jax.random.key(1), 20, (1,), config, chunk_size=7)
    assert TRACES["count"] == first
    chex.assert_shape(out.x, (20, 1))
    # a schedule with other values (same name and length) is a new pytree value, not a new trace
    other = mijax.make_schedule("linear", T, beta_start=1e-4, beta_end=0.02)
    mijax.sample(counting_denoiser, jnp.float32(0.7), other, jax.random.key(1), 20, (1,), config, chunk_size=7)
    assert TRACES["count"] == first


@pytest.mark.parametrize("sampler, objective", [("ddpm", "x0"), ("ddpm", "mean"), ("ddim", "x0")])
def test_objectives_give_the_same_sampler(schedule, sampler, objective):
    # The exact eps denoiser re-expressed as an x0- or mean-predictor must sample the same chain.
    mix = mijax.gaussian1d()
    key = jax.random.key(5)
    config = SamplerConfig(sampler=sampler, ddim_steps=20, eta=0.5, hal_window=5)
    eps_out = mijax.sample(mijax.exact_denoiser, (mix, schedule), schedule, key, 23, (1,), config)
    other = mijax.sample(_as_objective[objective], (mix, schedule), schedule, key, 23, (1,),
                         dataclasses.replace(config, objective=objective))
    np.testing.assert_allclose(np.asarray(other.x), np.asarray(eps_out.x), atol=1e-3)
    np.testing.assert_allclose(np.asarray(other.hal), np.asarray(eps_out.hal), rtol=1e-2, atol=1e-6)


def _x0_denoiser(params, x, t):
    _, schedule = params
    return mijax.predict_x0_from_eps(schedule, x, t, mijax.exact_denoiser(params, x, t))


def _mean_denoiser(params, x, t):
    _, schedule = params
    return mijax.posterior_mean_variance(schedule, _x0_denoiser(params, x, t), x, t)[0]


_as_objective = {"x0": _x0_denoiser, "mean": _mean_denoiser}


def test_two_dimensional_samples(schedule):
    mix = mijax.gaussian25()
    out = mijax.sample(mijax.exact_denoiser, (mix, schedule), schedule, jax.random.key(6), 10, (2,),
                       SamplerConfig(hal_window=5, trajectory_stride=10))
    chex.assert_shape(out.x, (10, 2))
    chex.assert_shape(out.hal, (10,))
    chex.assert_shape(out.trajectory, (10, 5, 2))
    np.testing.assert_array_equal(out.trajectory_t, [40, 30, 20, 10, 0])


@pytest.mark.parametrize("settings, n, chunk", [
    (dict(hal_window=1), 4, None),
    (dict(hal_window=0), 4, None),
    (dict(hal_window=T + 1), 4, None),
    (dict(hal_window=10, hal_end=T - 9), 4, None),
    (dict(hal_window=10, hal_end=-1), 4, None),
    (dict(sampler="ddim", ddim_steps=12, hal_window=13), 4, None),
    (dict(sampler="ddim", ddim_steps=0), 4, None),
    (dict(sampler="ddim", ddim_steps=T + 1), 4, None),
    (dict(sampler="euler"), 4, None),
    (dict(variance="learned"), 4, None),
    (dict(eta=-0.1, sampler="ddim"), 4, None),
    (dict(trajectory_stride=-1), 4, None),
    (dict(hal_windows=((0, 1),)), 4, None),
    (dict(hal_windows=((T - 3, 4),)), 4, None),
    (dict(hal_reduction="median"), 4, None),
    (dict(hal_reduction="top_k", hal_top_k=0), 4, None),
    (dict(), 0, None),
    (dict(), -5, None),
    (dict(), 4, 0),
    (dict(), 4, -2),
])
def test_invalid_configurations_raise(schedule, settings, n, chunk):
    """Refused by the configuration itself (its field checks) or by the sampler (what does not fit T)."""
    with pytest.raises(ValueError):
        mijax.sample(counting_denoiser, jnp.float32(1.0), schedule, jax.random.key(0), n, (1,), SamplerConfig(**settings),
                     chunk_size=chunk)


def test_validate_accepts_edges():
    validate(SamplerConfig(hal_window=2), T)
    validate(SamplerConfig(hal_window=T), T)
    validate(SamplerConfig(hal_window=10, hal_end=T - 10), T)
    validate(SamplerConfig(sampler="ddim", ddim_steps=12, hal_window=12), T)


def test_scan_memory_does_not_grow_with_T(params):
    config = SamplerConfig()
    temps = {}
    for steps in (50, 500):
        compiled = sample_chunk.lower(toy, params, mijax.make_schedule("linear", steps), jax.random.key(0),
                                      jnp.uint32(0), config, (1,), 256).compile()
        stats = compiled.memory_analysis()
        if stats is None or not hasattr(stats, "temp_size_in_bytes"):
            pytest.skip("memory_analysis() is not available on this backend")
        temps[steps] = stats.temp_size_in_bytes
    # Storing one float per sample per step would add 256 * 450 * 4 = 460,800 bytes. Allow a few
    # scalars per step for the step table (t, t_prev, window, weight, slot).
    assert temps[500] - temps[50] <= 8 * 4 * 450, temps


def _shrink(params, x, t):
    """An image 'denoiser' whose x0_hat moves every step: eps_hat = params * x (a jit static argument)."""
    return params * x


def test_region_max_and_the_hal_table_on_images():
    schedule = mijax.make_schedule("linear", 20)
    regions = ((0, 4, 0, 2), (0, 4, 2, 4), (1, 3, 1, 3))
    config = SamplerConfig(hal_window=5, hal_windows=((3, 4),), hal_regions=regions,
                           hal_table=("mean", "max", "top_k", "region_max"), hal_top_k=3,
                           trajectory_stride=1, trajectory_last=8)
    out = mijax.sample(_shrink, jnp.float32(0.3), schedule, jax.random.key(0), 6, (4, 4, 1), config)
    chex.assert_shape(out.hal_table, (6, 2, 4))
    traj = np.asarray(out.trajectory, np.float64)  # [6, 8, 4, 4, 1], t = 7 .. 0
    for w, (end, length) in enumerate(config.windows()):
        v = traj[:, 8 - end - length:8 - end].var(axis=1)  # [6, 4, 4, 1]
        flat = v.reshape(6, -1)
        expected = [flat.mean(1), flat.max(1), np.sort(flat, axis=1)[:, -3:].mean(1),
                    np.max([v[:, r0:r1, c0:c1].reshape(6, -1).mean(1) for r0, r1, c0, c1 in regions], axis=0)]
        np.testing.assert_allclose(np.asarray(out.hal_table[:, w]), np.stack(expected, 1), rtol=1e-4, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(out.hal), np.asarray(out.hal_table[:, 0, 0]))  # main: mean, window 0
    by_region = mijax.sample(_shrink, jnp.float32(0.3), schedule, jax.random.key(0), 6, (4, 4, 1),
                             dataclasses.replace(config, hal_reduction="region_max", hal_table=()))
    np.testing.assert_array_equal(np.asarray(by_region.hal), np.asarray(out.hal_table[:, 0, 3]))
    assert by_region.hal_table is None
    np.testing.assert_array_equal(np.asarray(by_region.x), np.asarray(out.x))  # reductions never move samples


@pytest.mark.parametrize("settings, shape, fragment", [
    (dict(hal_reduction="region_max"), (4, 4, 1), "needs regions"),
    (dict(hal_table=("median",)), (4, 4, 1), "unknown sampler.hal_table 'median'"),
    (dict(hal_regions=((0, 5, 0, 2),)), (4, 4, 1), "not a non-empty box"),
    (dict(hal_regions=((0, 2, 1, 1),)), (4, 4, 1), "not a non-empty box"),
    (dict(hal_regions=((0, 2, 0, 1),)), (2,), "boxes of images"),
])
def test_bad_hal_regions_raise(settings, shape, fragment):
    with pytest.raises(ValueError, match=fragment):
        config = SamplerConfig(**settings)
        mijax.sample(_shrink, jnp.float32(0.3), mijax.make_schedule("linear", 20), jax.random.key(0), 2, shape,
                     config)
