"""Training: batches, the Adam step, scanned dispatches, resumption, seeds as a vmap axis, no retrace."""
import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax.keys import STEP as STEP_STREAM
from mijax.config import TrainConfig
from mijax.training import TrainState, get_batch, init_state, train, train_step, train_steps

MODEL = mijax.ToyDenoiser(1)


def toy(params, x, t):
    return MODEL.apply(params, x, t)


def init_fn(key):
    return MODEL.init(key, jnp.zeros((2, 1)), jnp.zeros((2,), jnp.int32))


_init_state = jax.jit(init_state, static_argnums=(0, 1))
_get_batch = jax.jit(get_batch, static_argnames="config")
_train_step = jax.jit(train_step, static_argnums=(0, 2))
_denoising_loss = jax.jit(mijax.denoising_loss, static_argnames=("denoise_fn", "objective"))

# small batches for the invariance tests: compile time, not arithmetic, dominates here
SMALL = TrainConfig(steps=30, batch_size=100, steps_per_call=10)


@pytest.fixture(scope="module")
def schedule():
    return mijax.make_schedule()


@pytest.fixture(scope="module")
def data():
    # the paper's 1D three modes, round-robin, N = 3000 (30 fixed batches of 100, 3 of 1000)
    return mijax.sample_mixture(mijax.gaussian1d(), jax.random.key(0), 3000)


@pytest.fixture(scope="module")
def state0():
    return _init_state(init_fn, SMALL, jax.random.key(1))


def _copy(tree):
    """train/train_steps donate their state: give each run its own buffers."""
    return jax.tree.map(jnp.copy, tree)


@pytest.fixture(scope="module")
def uninterrupted(schedule, state0, data):
    """30 steps in one dispatch."""
    config = TrainConfig(steps=30, batch_size=100, steps_per_call=30)
    return train(toy, schedule, config, _copy(state0), jax.random.key(1), data)


def test_init_state(state0):
    assert isinstance(state0, TrainState)
    assert int(state0.step) == 0 and state0.step.dtype == jnp.int32
    assert sum(a.size for a in jax.tree.leaves(state0.params)) == 66_817
    # the parameters come from fold_in(key, 0), so they are reproducible and key-dependent
    chex.assert_trees_all_close(state0.params, jax.jit(init_fn)(jax.random.fold_in(jax.random.key(1), 0)))
    other = _init_state(init_fn, SMALL, jax.random.key(2))
    assert not np.allclose(np.asarray(other.params["params"]["output"]["kernel"]),
                           np.asarray(state0.params["params"]["output"]["kernel"]))
    # Adam's moments start at zero
    for leaf in jax.tree.leaves(state0.opt_state):
        if leaf.ndim > 0:
            np.testing.assert_array_equal(np.asarray(leaf), 0.0)


def test_get_batch_fixed_order():
    for n in (50, 57):  # 57: the last 7 rows are never visited, as in the published code
        data = jnp.arange(n, dtype=jnp.float32)[:, None]
        config = TrainConfig(batch_size=10)
        seen = set()
        for step in range(13):
            batch = _get_batch(data, jnp.int32(step), jax.random.key(0), config)
            chex.assert_shape(batch, (10, 1))
            np.testing.assert_array_equal(np.asarray(batch)[:, 0], (step % 5) * 10 + np.arange(10))
            seen |= set(np.asarray(batch)[:, 0].astype(int).tolist())
        assert seen == set(range(50))


def test_get_batch_shuffle_is_a_permutation_per_epoch():
    data = jnp.arange(40, dtype=jnp.float32)[:, None] * 2.0
    config = TrainConfig(batch_size=10, shuffle=True)
    key = jax.random.key(3)

    def epoch(e, key=key):
        return np.concatenate([np.asarray(_get_batch(data, jnp.int32(4 * e + i), key, config))[:, 0] for i in range(4)])

    e0, e1 = epoch(0), epoch(1)
    np.testing.assert_array_equal(np.sort(e0), np.arange(40) * 2.0)
    np.testing.assert_array_equal(np.sort(e1), np.arange(40) * 2.0)
    assert not np.array_equal(e0, e1)  # a new order each epoch
    assert not np.array_equal(e0, np.arange(40) * 2.0)  # actually shuffled
    np.testing.assert_array_equal(e0, epoch(0))  # reproducible
    assert not np.array_equal(e0, epoch(0, jax.random.key(4)))  # key-dependent


def test_train_step_is_one_adam_step_on_the_denoising_loss(schedule, state0, data):
    key = jax.random.key(1)
    state, loss = _train_step(toy, schedule, SMALL, _copy(state0), key, data)
    assert int(state.step) == 1
    # the loss is that of fixed batch 0 with the step key fold_in(fold_in(key, 2), 0)
    step_key = jax.random.fold_in(jax.random.fold_in(key, STEP_STREAM), 0)
    want = _denoising_loss(toy, state0.params, schedule, step_key, data[:100])
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    # Adam's first step moves every parameter by lr * g / (|g| + eps): lr = 1e-3 where |g| >> 1e-8
    grads = jax.jit(jax.grad(lambda p: mijax.denoising_loss(toy, p, schedule, step_key, data[:100])))(state0.params)
    delta = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                         state.params, state0.params)
    for d, g in zip(jax.tree.leaves(delta), jax.tree.leaves(grads)):
        g = np.asarray(g, np.float64)
        big = np.abs(g) > 1e-5
        assert big.mean() > 0.5
        np.testing.assert_allclose(d[big], -1e-3 * np.sign(g[big]), rtol=1e-3, atol=1e-8)
        assert np.all(np.abs(d) <= 1e-3 * (1 + 1e-4))


def test_batch_groups_are_the_mean_of_the_groups_gradients(schedule, state0, data):
    from mijax.training import batch_gradient

    key, step, batch = jax.random.key(1), jnp.int32(3), data[:100]
    grouped = dataclasses.replace(SMALL, batch_groups=2)  # each group compiles its own products: 2 are enough
    fn = jax.jit(batch_gradient, static_argnums=(0, 2))
    loss1, grads1 = fn(toy, schedule, SMALL, state0.params, key, step, batch)
    loss2, grads2 = fn(toy, schedule, grouped, state0.params, key, step, batch)
    # the same t and noise as one group, cut into 2 groups of 50 rows: each group's loss and gradient by hand
    step_key = jax.random.fold_in(jax.random.fold_in(key, STEP_STREAM), step)
    t, noise = mijax.loss_draws(step_key, batch, schedule.num_timesteps)
    by_hand = jax.jit(jax.value_and_grad(lambda p, x, t, e: mijax.denoising_loss_at(toy, p, schedule, x, t, e)))
    parts = [by_hand(state0.params, batch[rows], t[rows], noise[rows])
             for rows in (slice(0, 50), slice(50, 100))]
    np.testing.assert_allclose(float(loss2), np.mean([float(l) for l, _ in parts]), rtol=1e-6)
    np.testing.assert_allclose(float(loss2), float(loss1), rtol=1e-6)
    for g2, g1, *gs in zip(jax.tree.leaves(grads2), jax.tree.leaves(grads1), *(jax.tree.leaves(g) for _, g in parts)):
        scale = 1e-5 * float(np.max(np.abs(g1)))  # float32 sums in another order
        np.testing.assert_allclose(g2, np.mean(gs, axis=0), rtol=1e-5, atol=scale)
        np.testing.assert_allclose(g2, g1, rtol=1e-5, atol=scale)
    # in train, too: groups of the same batches, another summation order, nearly the same model
    one = train(toy, schedule, SMALL, _copy(state0), key, data)
    two = train(toy, schedule, grouped, _copy(state0), key, data)
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for bad in (3, 8, 0):  # not a power of two, not dividing 100, none
        with pytest.raises(ValueError, match="batch_groups"):
            train(toy, schedule, dataclasses.replace(SMALL, batch_groups=bad), _copy(state0), key, data)


def test_loss_falls(schedule, data):
    config = TrainConfig(steps=150, batch_size=1000)
    state = _init_state(init_fn, config, jax.random.key(5))
    state, losses = train_steps(toy, schedule, config, state, jax.random.key(5), data, 150)
    chex.assert_shape(losses, (150,))
    chex.assert_tree_all_finite((losses, state.params))
    assert int(state.step) == 150
    first, last = float(losses[:10].mean()), float(losses[-10:].mean())
    assert last < 0.7 * first, (first, last)


def test_result_does_not_depend_on_steps_per_call(schedule, state0, data, uninterrupted):
    calls = []
    state = train(toy, schedule, SMALL, _copy(state0), jax.random.key(1), data,
                  callback=lambda s, losses: calls.append((int(s.step), losses.shape)))
    assert calls == [(10, (10,)), (20, (10,)), (30, (10,))]
    assert int(state.step) == int(uninterrupted.step) == 30
    chex.assert_trees_all_close(state.params, uninterrupted.params, rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(state.opt_state, uninterrupted.opt_state, rtol=1e-6, atol=1e-9)
    # training did move the parameters
    assert not np.allclose(np.asarray(state.params["params"]["output"]["kernel"]),
                           np.asarray(state0.params["params"]["output"]["kernel"]))


def test_resume_equals_uninterrupted(schedule, state0, data, uninterrupted):
    key = jax.random.key(1)
    mid = train(toy, schedule, SMALL, _copy(state0), key, data, stop_at=10)
    assert int(mid.step) == 10
    # e.g. restored from a checkpoint: a host round trip of every leaf
    mid = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), mid)
    done = train(toy, schedule, SMALL, mid, key, data)
    assert int(done.step) == 30
    chex.assert_trees_all_close(done.params, uninterrupted.params, rtol=1e-6, atol=1e-7)
    # a finished state is left alone
    again = train(toy, schedule, SMALL, _copy(done), key, data)
    assert int(again.step) == 30
    chex.assert_trees_all_equal(again.params, done.params)


def test_seed_axis_equals_separate_runs(schedule, data):
    keys = jax.random.split(jax.random.key(7), 2)
    stacked_data = jnp.stack([data, data[::-1]])
    states = jax.jit(jax.vmap(lambda k: init_state(init_fn, SMALL, k)))(keys)
    chex.assert_shape(states.step, (2,))
    # positional like train() passes them, so the compiled dispatches are shared with it
    out, losses = train_steps(toy, schedule, SMALL, _copy(states), keys, stacked_data, 10, True)
    chex.assert_shape(losses, (2, 10))
    for s in range(2):
        one = jax.tree.map(lambda a: a[s], states)
        single, single_losses = train_steps(toy, schedule, SMALL, _copy(one), keys[s], stacked_data[s], 10, False)
        chex.assert_trees_all_close(jax.tree.map(lambda a: a[s], out.params), single.params, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(losses[s], single_losses, rtol=1e-5)
    assert not np.allclose(np.asarray(losses[0]), np.asarray(losses[1]))
    # train() drives the seed axis too
    final = train(toy, schedule, SMALL, _copy(states), keys, stacked_data, seed_axis=True, stop_at=10)
    chex.assert_trees_all_close(final.params, out.params, rtol=1e-6, atol=1e-7)


TRACES = {"count": 0}


def counting_denoiser(params, x, t):
    TRACES["count"] += 1
    return params["w"] * x + params["b"] * t.astype(jnp.float32)[:, None] / 1000.0


@pytest.mark.parametrize("objective", mijax.OBJECTIVES)
def test_train_steps_does_not_retrace(schedule, data, objective):
    config = TrainConfig(batch_size=100, objective=objective)
    params = {"w": jnp.float32(0.1), "b": jnp.float32(0.0)}
    state = _init_state(lambda k: params, config, jax.random.key(0))
    before = TRACES["count"]
    state, losses = train_steps(counting_denoiser, schedule, config, state, jax.random.key(0), data, 5)
    traced = TRACES["count"]
    assert traced > before
    state, losses2 = train_steps(counting_denoiser, schedule, config, state, jax.random.key(0), data, 5)
    state, _ = train_steps(counting_denoiser, schedule, config, state, jax.random.key(9), data * 2.0, 5)
    assert TRACES["count"] == traced
    assert int(state.step) == 15
    chex.assert_tree_all_finite((losses, losses2))
    # the steps continue the batch/noise stream: the second dispatch's losses are not the first's
    assert not np.allclose(np.asarray(losses), np.asarray(losses2))


def test_warm_up_and_gradient_clipping_are_options_and_off_by_default():
    import optax

    params = {"w": jnp.ones((3,))}
    plain = TrainConfig()
    # the published recipe's optimiser, state and all: checkpoints of earlier runs still fit
    assert jax.tree.structure(mijax.make_optimizer(plain).init(params)) == \
        jax.tree.structure(optax.adam(1e-3).init(params))

    warm = mijax.make_optimizer(TrainConfig(learning_rate=1e-2, warmup_steps=4))
    state, g = warm.init(params), {"w": jnp.array([1.0, -2.0, 0.5])}
    sizes = []
    for _ in range(6):
        update, state = warm.update(g, state, params)
        sizes.append(float(jnp.abs(update["w"]).max()))
    np.testing.assert_allclose(sizes, [0.0, 2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2], rtol=1e-4)  # Adam's first steps: lr

    def updates(config, grads):
        opt = mijax.make_optimizer(config)
        state = opt.init(params)
        for grad in grads:
            update, state = opt.update({"w": grad}, state, params)
        return np.asarray(update["w"])

    small, big = jnp.array([0.1, 0.2, -0.1]), jnp.array([100.0, -50.0, 20.0])
    clip = TrainConfig(grad_clip=1.0)
    np.testing.assert_allclose(updates(clip, [small, small]), updates(plain, [small, small]), rtol=1e-6)  # under 1
    assert not np.allclose(updates(clip, [small, big]), updates(plain, [small, big]), rtol=1e-3)  # clipped


def test_learning_rate_decay_is_an_option_off_by_default():
    from mijax.training import learning_rate

    assert learning_rate(TrainConfig()) == 1e-3  # the published constant
    steps = np.array([0, 2, 4, 7, 10, 12, 20])
    cos = learning_rate(TrainConfig(steps=12, learning_rate=1e-2, warmup_steps=4, lr_decay="cosine", lr_final=0.1))
    u = np.clip((steps - 4) / 8, 0, 1)
    want = np.where(steps < 4, 1e-2 * steps / 4, 1e-2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * u))))
    np.testing.assert_allclose([float(cos(s)) for s in steps], want, rtol=1e-5)
    lin = learning_rate(TrainConfig(steps=10, learning_rate=1e-2, lr_decay="linear"))
    np.testing.assert_allclose([float(lin(s)) for s in steps], 1e-2 * np.clip(1 - steps / 10, 0, 1), rtol=1e-5, atol=1e-9)
    # the optimiser follows it: Adam's first steps move each weight by the learning rate
    opt = mijax.make_optimizer(TrainConfig(steps=10, learning_rate=1e-2, lr_decay="linear"))
    params, g = {"w": jnp.ones((2,))}, {"w": jnp.array([1.0, -3.0])}
    state, sizes = opt.init(params), []
    for _ in range(3):
        update, state = opt.update(g, state, params)
        sizes.append(float(jnp.abs(update["w"]).max()))
    np.testing.assert_allclose(sizes, [1e-2, 9e-3, 8e-3], rtol=1e-4)
    with pytest.raises(ValueError, match="unknown train.lr_decay 'step'"):
        TrainConfig(lr_decay="step")


def test_ema_of_the_weights_is_an_option_that_sampling_uses(schedule, data):
    from mijax.training import EmaState, eval_params

    config = TrainConfig(steps=6, batch_size=100, steps_per_call=3, ema_decay=0.5)
    plain = dataclasses.replace(config, ema_decay=0.0)
    state = _init_state(init_fn, config, jax.random.key(1))
    assert isinstance(state.opt_state[-1], EmaState)
    # the weights follow Adam exactly as without the average; the average is the debiased EMA of them
    history, s = [], _copy(state)
    for _ in range(3):
        s, _ = _train_step(toy, schedule, config, s, jax.random.key(1), data)
        history.append(s.params)
    p, _ = _train_step(toy, schedule, plain, _train_step(toy, schedule, plain, _train_step(
        toy, schedule, plain, _init_state(init_fn, plain, jax.random.key(1)), jax.random.key(1), data)[0],
        jax.random.key(1), data)[0], jax.random.key(1), data)
    chex.assert_trees_all_close(s.params, p.params, rtol=1e-6)
    weights = np.array([0.25, 0.5, 1.0]) * 0.5  # (1 - d) d^(2 - i), debiased by 1 - d^3
    expected = jax.tree.map(lambda *ps: sum(w * a for w, a in zip(weights, ps)) / (1 - 0.5**3), *history)
    chex.assert_trees_all_close(eval_params(s, config), expected, rtol=1e-5, atol=1e-7)
    assert eval_params(s, plain) is s.params
    # seed-stacked states give seed-stacked averages
    stacked = jax.tree.map(lambda a: jnp.stack([a, a]), s)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[1], eval_params(stacked, config)), expected, rtol=1e-5,
                                atol=1e-7)
    with pytest.raises(ValueError, match="no moving average"):
        eval_params(_init_state(init_fn, plain, jax.random.key(1)), config)


def test_unrolled_steps_equal_the_scan_and_the_unet_steps_from_the_host(schedule, data):
    from mijax.models.denoiser import ModuleDenoiser
    from mijax.execution import plan_for

    config = TrainConfig(steps=2, batch_size=100, steps_per_call=2)  # two steps: the state passes between them
    keys = jax.vmap(jax.random.key)(jnp.arange(2))
    states = jax.jit(jax.vmap(lambda k: init_state(init_fn, config, k)))(keys)  # one program, not op by op
    stacked = jnp.stack([data, data[::-1]])
    scanned, l1 = train_steps(toy, schedule, config, _copy(states), keys, stacked, 2, True, 1)
    unrolled, l2 = train_steps(toy, schedule, config, _copy(states), keys, stacked, 2, True, 1, None, True)
    chex.assert_trees_all_close(scanned.params, unrolled.params, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(l1), np.asarray(l2), rtol=1e-5)
    assert not plan_for(toy).host_loops
    unet = ModuleDenoiser(mijax.models.build("unet", (8, 8, 1), options={"channels": 8, "mults": (1,), "groups": 4}))
    assert plan_for(unet).host_loops == (jax.default_backend() == "cpu")


def test_host_loop_steps_each_seed_with_one_program(schedule):
    """On CPU the UNet's seeds step one after the other through the one-seed program: the same models and
    losses as training each seed alone."""
    from mijax.models.denoiser import ModuleDenoiser
    from mijax.execution import plan_for
    from mijax.training import init_states

    module = mijax.models.build("unet", (8, 8, 1), options={"channels": 8, "mults": (1,), "groups": 4})
    unet = ModuleDenoiser(module)
    if not plan_for(unet).host_loops:
        pytest.skip("the host loop is for CPU")
    config = TrainConfig(steps=2, batch_size=8, steps_per_call=2)
    keys = jax.vmap(jax.random.key)(jnp.arange(2))
    images = jax.random.normal(jax.random.key(5), (2, 16, 8, 8, 1))
    seen = []
    both = train(unet, schedule, config, init_states(module, config, (8, 8, 1), keys), keys, images, seed_axis=True,
                 callback=lambda state, losses: seen.append(np.asarray(losses)))
    assert seen[0].shape == (2, 2) and np.all(np.isfinite(seen[0]))
    for s in range(2):
        alone = train(unet, schedule, config, jax.tree.map(lambda a: a[s], init_states(module, config, (8, 8, 1), keys)),
                      keys[s], images[s])
        chex.assert_trees_all_equal(jax.tree.map(lambda a: a[s], both.params), alone.params)
