"""Gaussian mixtures: exact scores of the noised mixture, sampling, labels, presets, validation."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.mixtures import GaussianMixture

T = 1000

log_prob = jax.jit(mijax.log_prob)
score = jax.jit(mijax.score)
exact_eps = jax.jit(mijax.exact_eps)
noised = jax.jit(mijax.noised)
nearest_mode = jax.jit(mijax.nearest_mode)
in_support = jax.jit(mijax.in_support)
sample_mixture = jax.jit(mijax.sample_mixture, static_argnames=("n", "round_robin"))


@pytest.fixture(scope="module")
def schedule():
    return mijax.make_schedule()


@pytest.fixture(scope="module")
def mix2d():
    # three unequal modes in 2D with unequal weights and stds
    return mijax.make_mixture([[0.0, 0.0], [0.4, 0.1], [-0.2, 0.5]], [0.05, 0.1, 0.03], [0.2, 0.3, 0.5])


def _to64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


@pytest.mark.parametrize("t", [0, 9, 60, 500])
def test_exact_eps_is_scaled_gradient_of_noised_log_prob(schedule, mix2d, t):
    # eps*(x, t) = -sqrt(1 - abar_t) d/dx log p_t(x), checked by central differences in float64.
    with jax.enable_x64(True):
        mix, sched = _to64(mix2d), _to64(schedule)
        pt = noised(mix, sched, jnp.int32(t))
        spread = float(pt.stds.max()) * 3
        x = jax.random.uniform(jax.random.key(t), (24, 2), jnp.float64, -spread, spread) \
            + jnp.asarray([[0.1, 0.2]], jnp.float64) * math.sqrt(float(sched.alphas_cumprod[t]))
        eps = exact_eps(mix, sched, x, jnp.int32(t))
        chex.assert_shape(eps, (24, 2))
        assert eps.dtype == jnp.float64
        h = 1e-6 * float(pt.stds.min())
        fd = []
        for j in range(2):
            e = jnp.zeros((1, 2), jnp.float64).at[0, j].set(h)
            fd.append((log_prob(pt, x + e) - log_prob(pt, x - e)) / (2 * h))
        want = -math.sqrt(1 - float(sched.alphas_cumprod[t])) * np.stack([np.asarray(f) for f in fd], axis=1)
        np.testing.assert_allclose(np.asarray(eps), want, rtol=1e-5, atol=1e-6)


def test_noised_density_is_the_convolution(schedule):
    # p_t(x) = integral p_0(x0) N(x; sqrt(abar) x0, 1 - abar) dx0, by quadrature in 1D (float64 NumPy).
    mix = mijax.gaussian1d((1.0, 2.0, 3.5), 0.05)
    grid = np.linspace(0.0, 4.5, 45_001)
    dx = grid[1] - grid[0]
    p0 = np.exp(np.asarray(log_prob(mix, jnp.asarray(grid[:, None], jnp.float32)), np.float64))
    x = np.linspace(-1.0, 4.0, 11)
    for t in (0, 5, 40, 150):
        abar = float(np.cumprod(1 - mijax.beta_values())[t])
        kernel = np.exp(-0.5 * (x[:, None] - math.sqrt(abar) * grid[None, :]) ** 2 / (1 - abar)) \
            / math.sqrt(2 * math.pi * (1 - abar))
        want = (kernel * p0[None, :]).sum(1) * dx
        got = np.exp(np.asarray(log_prob(noised(mix, schedule, jnp.int32(t)), jnp.asarray(x[:, None], jnp.float32))))
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-12, err_msg=f"t={t}")


def test_exact_eps_gives_the_posterior_mean_for_one_gaussian(schedule):
    # Tweedie: x0_hat(eps*) = E[x0 | x_t]; for x0 ~ N(mu, s^2) that is
    # mu + s^2 sqrt(abar) / (abar s^2 + 1 - abar) (x_t - sqrt(abar) mu).
    mu, s = np.array([0.7, -1.2]), 0.3
    mix = mijax.make_mixture(mu[None, :], s)
    x = jax.random.normal(jax.random.key(3), (16, 2))
    for t in (0, 20, 100):
        eps = exact_eps(mix, schedule, x, jnp.int32(t))
        x0_hat = mijax.predict_x0_from_eps(schedule, x, jnp.int32(t), eps)
        a = float(np.cumprod(1 - mijax.beta_values())[t])
        want = mu + s**2 * math.sqrt(a) / (a * s**2 + 1 - a) * (np.asarray(x, np.float64) - math.sqrt(a) * mu)
        np.testing.assert_allclose(np.asarray(x0_hat), want, atol=2e-5 * math.sqrt(1 / a))


def test_exact_eps_vector_t_equals_scalar_t(schedule, mix2d):
    x = jax.random.normal(jax.random.key(4), (12, 2)) * 0.3
    t = jnp.array([0, 0, 3, 3, 50, 50, 200, 200, 999, 999, 7, 7])
    vec = exact_eps(mix2d, schedule, x, t)
    chex.assert_shape(vec, (12, 2))
    per = jnp.concatenate([exact_eps(mix2d, schedule, x[i:i + 1], t[i]) for i in range(12)])
    chex.assert_trees_all_close(vec, per, atol=1e-6)
    # exact_denoiser is the same function with params = (mixture, schedule)
    chex.assert_trees_all_close(jax.jit(mijax.exact_denoiser)((mix2d, schedule), x, t), vec, atol=1e-6)
    # At t = 999 (abar ~ 0) the noised mixture is N(0, I), so eps* = x.
    chex.assert_trees_all_close(vec[8:10], x[8:10], atol=1e-5)


def test_score_equals_grad_log_prob(mix2d):
    x = jax.random.normal(jax.random.key(5), (20, 2)) * 0.3
    got = score(mix2d, x)
    want = jax.jit(jax.vmap(jax.grad(lambda xi: mijax.log_prob(mix2d, xi[None])[0])))(x)
    chex.assert_shape(got, (20, 2))
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-3)
    chex.assert_tree_all_finite(got)
    # far from every mode the logsumexp responsibilities stay finite and the widest mode (std 0.1) wins
    far = score(mix2d, jnp.array([[40.0, -40.0]]))
    chex.assert_tree_all_finite(far)
    np.testing.assert_allclose(np.asarray(far), [[(0.4 - 40.0) / 0.1**2, (0.1 + 40.0) / 0.1**2]], rtol=1e-5)


def test_one_mode_log_prob_is_normal_density():
    mu, s = np.array([0.5, -1.0]), 0.2
    mix = mijax.make_mixture(mu[None, :], s)
    x = np.asarray(jax.random.normal(jax.random.key(6), (10, 2)), np.float64)
    want = -0.5 * ((x - mu) ** 2).sum(1) / s**2 - np.log(2 * np.pi * s**2)
    np.testing.assert_allclose(np.asarray(log_prob(mix, jnp.asarray(x, jnp.float32))), want, rtol=1e-5, atol=1e-3)
    # in 1D
    mix1 = mijax.make_mixture([2.0], 0.05)
    x1 = np.array([[2.0], [2.1], [1.8]])
    want1 = -0.5 * ((x1[:, 0] - 2.0) / 0.05) ** 2 - np.log(0.05 * np.sqrt(2 * np.pi))
    np.testing.assert_allclose(np.asarray(log_prob(mix1, jnp.asarray(x1, jnp.float32))), want1, rtol=1e-5, atol=1e-4)


def test_log_prob_weights_and_normalisation():
    # two far-apart modes with weights 1:3 -> log densities at the modes differ by log 3
    mix = mijax.make_mixture([[0.0], [10.0]], 0.1, [1.0, 3.0])
    np.testing.assert_allclose(np.asarray(mix.weights), [0.25, 0.75])
    lp = np.asarray(log_prob(mix, jnp.array([[0.0], [10.0]])))
    np.testing.assert_allclose(lp[1] - lp[0], math.log(3.0), rtol=1e-5)
    # the density integrates to one
    grid = jnp.linspace(-1.0, 11.0, 120_001)[:, None]
    total = float(jnp.sum(jnp.exp(log_prob(mix, grid))) * (12.0 / 120_000))
    np.testing.assert_allclose(total, 1.0, rtol=1e-4)


def test_round_robin_sampling():
    mix = mijax.gaussian1d((1.0, 2.0, 3.0), 0.05)
    n = 30_000
    x = sample_mixture(mix, jax.random.key(7), n=n, round_robin=True)
    chex.assert_shape(x, (n, 1))
    idx, _ = nearest_mode(mix, x)
    idx = np.asarray(idx)
    # sample i comes from mode i mod K: exactly equal counts, in order
    np.testing.assert_array_equal(idx, np.arange(n) % 3)
    xs = np.asarray(x)[:, 0]
    for k, mu in enumerate((1.0, 2.0, 3.0)):
        xk = xs[idx == k]
        m = len(xk)
        assert m == n // 3
        assert abs(xk.mean() - mu) < 5 * 0.05 / math.sqrt(m)
        assert abs(xk.std() - 0.05) < 5 * 0.05 / math.sqrt(2 * m)


def test_iid_sampling_follows_weights(mix2d):
    n = 40_000
    x = sample_mixture(mix2d, jax.random.key(8), n=n, round_robin=False)
    chex.assert_shape(x, (n, 2))
    counts = np.bincount(np.asarray(nearest_mode(mix2d, x)[0]), minlength=3) / n
    w = np.array([0.2, 0.3, 0.5])
    np.testing.assert_array_less(np.abs(counts - w), 5 * np.sqrt(w * (1 - w) / n))
    # not round robin
    assert not np.array_equal(np.asarray(nearest_mode(mix2d, x)[0])[:30], np.arange(30) % 3)
    # same key -> same samples; another key -> other samples
    chex.assert_trees_all_equal(x, sample_mixture(mix2d, jax.random.key(8), n=n, round_robin=False))
    assert not np.allclose(np.asarray(x), np.asarray(sample_mixture(mix2d, jax.random.key(9), n=n, round_robin=False)))


def test_nearest_mode_hand_made_points():
    mix = mijax.make_mixture([[0.0, 0.0], [1.0, 0.0]], [0.25, 0.125])
    x = jnp.array([[0.0, 1.25],    # mode 0, 1.25 / 0.25 = 5 std exactly
                   [0.75, 0.0],    # mode 1 (0.25 away), 0.25 / 0.125 = 2 std
                   [1.0, -0.5],    # mode 1, 0.5 / 0.125 = 4 std
                   [0.25, 0.0],    # mode 0, 1 std
                   [-3.0, 4.0]])   # mode 0, 5 / 0.25 = 20 std
    idx, dist = nearest_mode(mix, x)
    chex.assert_shape((idx, dist), (5,))
    assert idx.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(idx), [0, 1, 1, 0, 0])
    np.testing.assert_allclose(np.asarray(dist), [5.0, 2.0, 4.0, 1.0, 20.0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(in_support(mix, x, 5.0)), [True, True, True, True, False])
    np.testing.assert_array_equal(np.asarray(in_support(mix, x, 4.99)), [False, True, True, True, False])
    np.testing.assert_array_equal(np.asarray(in_support(mix, x, 3.0)), [False, True, False, True, False])
    # the default k is 5
    np.testing.assert_array_equal(np.asarray(mijax.in_support(mix, x)), [True, True, True, True, False])


def test_mass_beyond():
    np.testing.assert_allclose(mijax.mass_beyond(5, 1), 5.733e-7, rtol=1e-3)
    np.testing.assert_allclose(mijax.mass_beyond(5, 2), 3.727e-6, rtol=1e-3)
    # closed forms: erfc(k / sqrt 2) in 1D, exp(-k^2 / 2) in 2D
    for k in (1, 2, 3, 4, 5, 6):
        np.testing.assert_allclose(mijax.mass_beyond(k, 1), math.erfc(k / math.sqrt(2)), rtol=1e-4)
        np.testing.assert_allclose(mijax.mass_beyond(k, 2), math.exp(-k * k / 2), rtol=1e-4)
    np.testing.assert_allclose(mijax.mass_beyond(3, 1), 0.0026998, rtol=1e-4)
    assert mijax.mass_beyond(0, 2) == pytest.approx(1.0)


def _nearest_distances(means):
    d = np.linalg.norm(means[:, None] - means[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return np.sort(d.min(1))


def test_gaussian25_preset():
    mix = mijax.gaussian25()
    chex.assert_shape(mix.means, (25, 2))
    assert mix.num_modes == 25 and mix.dim == 2
    np.testing.assert_allclose(mix.stds, 0.017675, rtol=1e-4)
    np.testing.assert_allclose(_nearest_distances(np.asarray(mix.means, np.float64)), 0.7070, rtol=1e-4)
    np.testing.assert_allclose(mix.weights, 1 / 25, rtol=1e-6)
    np.testing.assert_allclose(np.abs(np.asarray(mix.means)).max(), 4 / math.sqrt(0.05**2 + 8), rtol=1e-6)


def test_gaussian25_rotated_is_the_grid_turned_45_degrees():
    grid = np.asarray(mijax.gaussian25().means, np.float64)
    rot = mijax.gaussian25_rotated()
    rmeans = np.asarray(rot.means, np.float64)
    chex.assert_shape(rmeans, (25, 2))
    assert len({tuple(np.round(m, 5)) for m in rmeans}) == 25
    np.testing.assert_allclose(rot.stds, 0.017675, rtol=1e-4)
    # nearest-neighbour distances scale by 1/sqrt(2)
    np.testing.assert_allclose(_nearest_distances(rmeans), _nearest_distances(grid) / math.sqrt(2), rtol=1e-5)
    # and the set of modes is the grid rotated by 45 degrees and shrunk by 1/sqrt(2)
    c = s = math.sqrt(0.5)
    turned = grid @ np.array([[c, s], [-s, c]]) / math.sqrt(2)
    key = lambda a: sorted(map(tuple, np.round(a, 5)))  # noqa: E731
    assert key(turned) == key(rmeans)
    # every mode's nearest neighbours lie on the diagonals, never along the x axis (SPEC claim 2)
    d = np.linalg.norm(rmeans[:, None] - rmeans[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    i, j = np.nonzero(np.isclose(d, d.min(1, keepdims=True), rtol=1e-5))
    delta = rmeans[j] - rmeans[i]
    assert len(i) == 2 * 40  # the 40 edges of the 5x5 grid, seen from both ends
    np.testing.assert_allclose(np.abs(delta[:, 0]), np.abs(delta[:, 1]), atol=1e-6)


def test_gaussian1d_and_gaussian8_presets():
    mix = mijax.gaussian1d()
    np.testing.assert_allclose(np.asarray(mix.means)[:, 0], [1.0, 2.0, 3.0])
    np.testing.assert_allclose(mix.stds, 0.05, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mijax.gaussian1d((1, 2, 4, 5)).means)[:, 0], [1, 2, 4, 5])
    ring = mijax.gaussian8()
    r = np.linalg.norm(np.asarray(ring.means), axis=1)
    divisor = math.sqrt(0.02**2 + 2.0)
    np.testing.assert_allclose(r, 2.0 / divisor, rtol=1e-6)
    np.testing.assert_allclose(ring.stds, 0.02 / divisor, rtol=1e-6)


@pytest.mark.parametrize("means, stds, weights", [
    ([], 0.1, None),
    (np.zeros((0, 2)), 0.1, None),
    (np.zeros((3, 0)), 0.1, None),
    ([[0.0, np.nan]], 0.1, None),
    ([1.0, np.inf], 0.1, None),
    ([1.0, 2.0], 0.0, None),
    ([1.0, 2.0], -0.05, None),
    ([1.0, 2.0], [0.1, 0.0], None),
    ([1.0, 2.0], np.nan, None),
    ([1.0, 2.0], 0.1, [1.0, -1.0]),
    ([1.0, 2.0], 0.1, [1.0]),
    ([1.0, 2.0], 0.1, [0.0, 1.0]),
    (np.zeros((2, 2, 2)), 0.1, None),
])
def test_make_mixture_rejects(means, stds, weights):
    with pytest.raises(ValueError):
        mijax.make_mixture(means, stds, weights)


def test_make_mixture_accepts_any_finite_floats():
    mix = mijax.make_mixture([-3.25, 0.0, 1e3], [0.1, 0.2, 0.3])
    chex.assert_shape(mix.means, (3, 1))
    chex.assert_type((mix.means, mix.stds, mix.weights), jnp.float32)
    assert isinstance(mix, GaussianMixture)


def test_exact_denoiser_sampling_does_not_hallucinate(schedule):
    # SPEC claim 4: sampling with the exact score does not interpolate (T = 1000, paper schedule).
    mix = mijax.gaussian1d()
    out = mijax.sample(mijax.exact_denoiser, (mix, schedule), schedule, jax.random.key(10), 2000, (1,))
    chex.assert_shape(out.x, (2000, 1))
    chex.assert_tree_all_finite((out.x, out.hal))
    ok = np.asarray(in_support(mix, out.x, 5.0))
    assert ok.mean() >= 0.999
    # and the modes are visited about equally (weights 1/3 each)
    counts = np.bincount(np.asarray(nearest_mode(mix, out.x)[0]), minlength=3) / 2000
    np.testing.assert_array_less(np.abs(counts - 1 / 3), 5 * math.sqrt(2 / 9 / 2000))


def test_mixture_is_a_pytree(mix2d):
    leaves = jax.tree.leaves(mix2d)
    assert len(leaves) == 3
    doubled = jax.jit(lambda m: jax.tree.map(lambda a: a * 2, m))(mix2d)
    assert isinstance(doubled, GaussianMixture)
    np.testing.assert_allclose(np.asarray(doubled.stds), 2 * np.asarray(mix2d.stds))


def test_presets_round_robin_flags():
    # the published code draws gaussian8 i.i.d. and the other presets round-robin
    from mijax import data
    names = ["gaussian1d", "gaussian25", "gaussian25_rotated", "gaussian8"]
    assert set(data.names()) >= set(names)
    assert [name for name in names if not data.make(name).round_robin] == ["gaussian8"]


def test_labels_check_the_samples_shape_and_take_a_seed_axis():
    import mijax

    grid, line = mijax.gaussian25(), mijax.gaussian1d()
    for mixture, x in ((line, np.zeros((5, 2))), (grid, [[0.0], [0.7]]), (line, np.zeros(5)), (grid, np.zeros((1, 2, 3, 2)))):
        with pytest.raises(ValueError, match=r"samples of this \d-D mixture are \[N, \d\] or \[S, N, \d\]"):
            mijax.labels(mixture, x)
    x = np.asarray(jax.random.normal(jax.random.key(0), (3, 50, 2)))
    stacked = np.asarray(mijax.labels(grid, x))
    assert stacked.shape == (3, 50)
    assert all((stacked[s] == np.asarray(mijax.labels(grid, x[s]))).all() for s in range(3))
