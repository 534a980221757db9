"""Recursive training: filters keep exactly N and the right ones, threshold calibration, distances,
generation bookkeeping, and resume after a kill = an uninterrupted run."""
import dataclasses
import json
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
import mijax.store
from mijax import recursive
from mijax.config import DataConfig, DiffusionConfig, RunConfig, RunError
from mijax.data.mixtures import histogram_kl, mode_mass
from mijax.filters import calibrate_threshold, filter_indices, threshold_keep_indices
from mijax.config import RecursiveConfig, SamplerConfig, config_to_dict
from mijax.recursive import gen_dir, model_keys, run_recursive
from mijax.runs import data_sampler
from mijax.stats import sliced_wasserstein
from mijax.config import TrainConfig

_filter = jax.jit(filter_indices, static_argnames=("name", "n"))
HAL = jnp.asarray([0.5, 0.1, 0.9, 0.3, 0.2, 0.7, 0.05, 0.6], jnp.float32)  # lowest four: 6, 1, 4, 3


def test_none_keeps_the_first_n():
    idx, count = _filter("none", jax.random.key(0), HAL, 3)
    np.testing.assert_array_equal(idx, [0, 1, 2])
    assert int(count) == 3


def test_variance_keeps_the_n_lowest_hal():
    idx, count = _filter("variance", jax.random.key(0), HAL, 4)
    np.testing.assert_array_equal(idx, [1, 3, 4, 6])
    assert int(count) == 4


def test_random_keeps_n_distinct_and_depends_on_the_key():
    a, count = _filter("random", jax.random.key(0), HAL, 5)
    b, _ = _filter("random", jax.random.key(1), HAL, 5)
    assert a.shape == (5,) and len(set(np.asarray(a).tolist())) == 5 and int(count) == 5
    assert np.all((np.asarray(a) >= 0) & (np.asarray(a) < 8))
    c = np.stack([np.asarray(_filter("random", jax.random.key(i), HAL, 4)[0]) for i in range(200)])
    counts = np.bincount(c.ravel(), minlength=8) / 200
    np.testing.assert_allclose(counts, 0.5, atol=0.15)  # each index kept half the time
    assert not np.array_equal(a, b)


def test_threshold_cycles_accepted_samples_when_too_few():
    idx, count = _filter("threshold", jax.random.key(0), HAL, 5, 0.25)  # accepts 1, 4, 6
    assert int(count) == 3
    idx = np.asarray(idx)
    assert idx.shape == (5,)
    assert set(idx.tolist()) == {1, 4, 6}
    np.testing.assert_array_equal(idx[3:], idx[:2])  # cycled: row i is accepted sample i mod 3


def test_threshold_takes_a_random_n_of_many_accepted():
    idx, count = _filter("threshold", jax.random.key(3), HAL, 3, 0.65)  # accepts 0, 1, 3, 4, 6, 7
    assert int(count) == 6
    assert len(set(np.asarray(idx).tolist())) == 3
    assert set(np.asarray(idx).tolist()) <= {0, 1, 3, 4, 6, 7}


def test_threshold_falls_back_to_variance_when_nothing_is_accepted():
    idx, count = threshold_keep_indices(jax.random.key(0), HAL, 0.01, 2)
    assert int(count) == 0
    np.testing.assert_array_equal(np.sort(np.asarray(idx)), [1, 6])


def test_filters_reject_bad_sizes():
    with pytest.raises(ValueError):
        filter_indices("variance", jax.random.key(0), HAL, 9)
    with pytest.raises(ValueError):
        filter_indices("median", jax.random.key(0), HAL, 2)


def test_calibrated_threshold_keeps_exactly_keep():
    hal = np.random.default_rng(0).random((3, 50)).astype(np.float32)
    thresholds = calibrate_threshold(hal, 20)
    kept = (hal < thresholds[:, None].astype(np.float32)).sum(axis=1)
    np.testing.assert_array_equal(kept, [20, 20, 20])
    assert np.all(np.isinf(calibrate_threshold(hal, 50)))


def test_distances_are_small_for_true_samples_and_grow_when_modes_are_lost():
    mixture = mijax.gaussian25()
    x = np.asarray(mijax.sample_mixture(mixture, jax.random.key(0), 20_000))
    y = np.asarray(mijax.sample_mixture(mixture, jax.random.key(1), 20_000))
    assert histogram_kl(mixture, x) < 0.1
    lost = x[np.asarray(mijax.nearest_mode(mixture, jnp.asarray(x))[0]) < 20]  # 5 modes missing
    assert histogram_kl(mixture, lost) > 0.15
    assert sliced_wasserstein(x, x) == 0.0
    assert sliced_wasserstein(x, y) < 0.01
    shifted = sliced_wasserstein(x[:, :1], x[:, :1] + 0.3)
    assert shifted == pytest.approx(0.3, rel=1e-6)
    mass = mode_mass(mixture, lost, 5.0)
    assert mass.shape == (25,) and np.all(mass[20:] == 0) and mass.sum() == pytest.approx(1.0, abs=1e-3)
    # centring: true samples sit within a fraction of a std of their means; a shifted mode is as far off as moved
    from mijax.data.mixtures import mode_offsets

    off = mode_offsets(mixture, lost, 5.0)
    assert np.all(off[:20] < 0.2) and np.all(np.isnan(off[20:]))
    moved = lost.copy()
    idx = np.asarray(mijax.nearest_mode(mixture, jnp.asarray(lost))[0])
    moved[idx == 3, 0] += 2.0 * float(mixture.stds[3])
    assert mode_offsets(mixture, moved, 5.0)[3] == pytest.approx(2.0, abs=0.15)


def test_model_keys_bookkeeping():
    config = RecursiveConfig(run=RunConfig(seed=3, seeds=2), filters=("none", "variance"))
    k0, k1, k2 = (model_keys(config, g) for g in range(3))
    assert k0.shape == (2,) and k1.shape == (4,) and k2.shape == (4,)
    data = lambda k: np.asarray(jax.vmap(jax.random.key_data)(k)).reshape(k.shape[0], -1)  # noqa: E731
    np.testing.assert_array_equal(data(k0), data(mijax.seed_keys([3, 4])))
    rows = np.concatenate([data(k0), data(k1), data(k2)])
    assert len({tuple(r) for r in rows}) == 10  # every model of every generation has its own key


def test_config_validation_and_pool_size():
    run = RunConfig(data=DataConfig(n_train=1000), train=mijax.TrainConfig(batch_size=1000))
    assert RecursiveConfig(run=run).pool_size == 3500
    assert RecursiveConfig(run=run, pool_ratio=1.25).pool_size == 1250
    with pytest.raises(RunError, match="unknown recursive.filters 'best'"):
        RecursiveConfig(filters=("best",))
    with pytest.raises(RunError, match="recursive.generations must be > 0, got 0"):
        RecursiveConfig(generations=0)
    with pytest.raises(RunError, match="batch size 10000 exceeds the training set"):
        RunConfig(data=DataConfig(n_train=1000))
    config = RecursiveConfig(filters=("none", "threshold"), pool_ratio=1.5)
    assert recursive.recursive_config_from_dict(json.loads(json.dumps(recursive.recursive_config_to_dict(config)))) == config


def test_a_study_of_the_flat_hal_settings_loads_into_the_same_sampler():
    """A config.json written before RecursiveConfig held a SamplerConfig (Hal's settings as the study's own fields)
    reads into the same study, so it resumes; the pools' sampler is the one those fields made."""
    run = RunConfig(data=DataConfig(n_train=1000), train=mijax.TrainConfig(batch_size=1000))
    old = {"run": config_to_dict(run), "generations": 3, "filters": ["none", "variance"], "pool_extra": 2500,
           "pool_ratio": None, "threshold_keep": None, "hal_window": 6, "chunk_size": 500, "hal_end": 2,
           "hal_reduction": "max", "clip_x0": True}
    flat = SamplerConfig(hal_window=6, hal_end=2, hal_reduction="max", clip_x0=True)
    loaded = recursive.recursive_config_from_dict(json.loads(json.dumps(old)))
    assert loaded == RecursiveConfig(run=run, generations=3, filters=("none", "variance"), sampler=flat,
                                     chunk_size=500)
    assert recursive.pool_sampler(loaded) == data_sampler(run, flat)
    defaults = {key: value for key, value in old.items() if key not in ("hal_window", "hal_end", "hal_reduction",
                                                                        "clip_x0")}
    assert recursive.recursive_config_from_dict(defaults).sampler == SamplerConfig()  # DDPM, Hal over t = 9..0
    assert recursive.pool_sampler(RecursiveConfig()) == data_sampler(RunConfig(), SamplerConfig(
        hal_window=10, hal_end=0, hal_reduction="mean", clip_x0=False))
    with pytest.raises(RunError, match="does not describe a mijax recursive study"):
        recursive.recursive_config_from_dict({**old, "sampler": {}})
    ddim = RecursiveConfig(run=run, sampler=SamplerConfig(sampler="ddim", ddim_steps=20, hal_window=5))
    assert recursive.recursive_config_from_dict(json.loads(json.dumps(recursive.recursive_config_to_dict(ddim)))) == ddim


TOY = RecursiveConfig(
    run=RunConfig(data=DataConfig(dataset="gaussian1d", n_train=64, options={"modes": (1.0, 2.0)}),
                  diffusion=DiffusionConfig(timesteps=20),
                  train=TrainConfig(steps=6, batch_size=32, steps_per_call=3), seeds=2, checkpoint_every=3),
    generations=3, filters=("none", "variance", "threshold"), pool_extra=32, chunk_size=64)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "study"
    return out, run_recursive(out, TOY)


def test_generations_bookkeeping(uninterrupted):
    out, result = uninterrupted
    S, F, N, P = 2, 3, 64, 96
    assert [g["generation"] for g in result["generations"]] == [0, 1, 2]
    for g in range(3):
        d = gen_dir(out, g)
        assert (d / "metrics.json").exists() and (d / "train.json").exists()
        assert mijax.store.latest_checkpoint(d) == TOY.run.train.steps
        pool = np.load(d / "pool.npz")
        assert pool["x"].shape == ((S if g == 0 else F * S), P, 1) and pool["hal"].shape == pool["x"].shape[:2]
        kept = np.load(d / "kept.npz")
        chex.assert_shape(kept["data"], (F * S, N, 1))
        chex.assert_tree_all_finite(kept["data"])
        for name in TOY.filters:
            assert len(result["generations"][g]["filters"][name]) == S
    # generation 0: the filters act on the same pools; none keeps the first N, variance the lowest Hal
    pool, kept = np.load(gen_dir(out, 0) / "pool.npz"), np.load(gen_dir(out, 0) / "kept.npz")["data"]
    np.testing.assert_array_equal(kept[:S], pool["x"][:, :N])
    for s in range(S):
        lowest = np.sort(np.argsort(pool["hal"][s], kind="stable")[:N])
        np.testing.assert_array_equal(kept[S + s], pool["x"][s, lowest])
        # calibrated on generation 0, the threshold keeps the same samples as variance (another order)
        np.testing.assert_array_equal(np.sort(kept[2 * S + s, :, 0]), np.sort(kept[S + s, :, 0]))
    g0 = result["generations"][0]["filters"]
    assert g0["none"][0]["hallucination_rate"] == g0["variance"][0]["hallucination_rate"]  # one shared model
    # blur-adjusted labels only widen the support (k x max(true std, spread)): a subset of the k-std ones
    for g in result["generations"]:
        for rows in g["filters"].values():
            for row in rows:
                assert 0 <= row["hallucination_rate_blur_adjusted"] <= row["hallucination_rate"]
    assert [row["accepted"] for row in g0["threshold"]] == [N, N]
    # without the certified filter: no calibration draw, calibration.json and the metrics as before
    assert not (gen_dir(out, 0) / "calibration_pool.npz").exists()
    assert set(json.loads((gen_dir(out, 0) / "calibration.json").read_text())) == {"keep", "thresholds"}
    assert "certified_thresholds" not in result["generations"][0]
    summary = result["summary"]["variance"]["hallucination_rate"]
    assert len(summary) == 3 and summary[0]["n"] == S
    assert json.loads((out / "metrics.json").read_text())["summary"].keys() == result["summary"].keys()


class Kill(Exception):
    pass


@pytest.mark.parametrize("event,generation", [("checkpoint", 1), ("sampled", 0), ("filtered", 2)])
def test_resume_after_a_kill_equals_an_uninterrupted_run(uninterrupted, tmp_path, event, generation):
    out, expected = uninterrupted

    def hook(e, g, step):
        if e == event and g == generation and (e != "checkpoint" or step == 3):
            raise Kill

    with pytest.raises(Kill):
        run_recursive(tmp_path / "study", TOY, hook=hook)
    assert not (gen_dir(tmp_path / "study", generation) / "metrics.json").exists()
    result = run_recursive(tmp_path / "study", TOY)
    assert result["generations"] == expected["generations"]
    for g in range(3):
        np.testing.assert_array_equal(np.load(gen_dir(tmp_path / "study", g) / "kept.npz")["data"],
                                      np.load(gen_dir(out, g) / "kept.npz")["data"])


def test_another_config_is_refused(uninterrupted):
    out, _ = uninterrupted
    with pytest.raises(RunError):
        run_recursive(out, RecursiveConfig(run=TOY.run, generations=2, filters=TOY.filters, pool_extra=32))


def test_cli_recursive_equals_the_library(uninterrupted, tmp_path, capsys):
    from mijax.cli import main

    _, expected = uninterrupted
    argv = ["recursive", "--dataset", "gaussian1d", "--modes", "1,2", "--n-train", "64", "--steps", "6",
            "--batch-size", "32", "--steps-per-call", "3", "--timesteps", "20", "--seeds", "2",
            "--checkpoint-every", "3", "--generations", "3", "--filters", "none,variance,threshold",
            "--pool-extra", "32", "--chunk-size", "64", "--no-progress", "--out", str(tmp_path / "cli")]
    assert main(argv) == 0
    assert "variance" in capsys.readouterr().out
    saved = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert saved["generations"] == expected["generations"]
    assert main(argv[:-2] + ["--filters", "best", "--out", str(tmp_path / "bad")]) == 2


def test_cli_recursive_takes_the_sampler_options(tmp_path, monkeypatch, capsys):
    """`mijax recursive` takes mijax sample's sampler options into the study's sampler, and refuses the same
    combinations in one line."""
    from mijax.cli import main

    seen = {}
    monkeypatch.setattr(recursive, "run_recursive", lambda out, config, **kw: seen.update(config=config) or
                        {"summary": {}})
    argv = ["recursive", "--dataset", "gaussian1d", "--n-train", "64", "--batch-size", "32", "--timesteps", "20",
            "--no-progress", "--out", str(tmp_path / "study")]
    assert main(argv + ["--sampler", "ddim", "--ddim-steps", "8", "--skip", "quad", "--eta", "0.5",
                        "--stochastic-steps", "2", "--variance", "fixed_small", "--hal-window", "4", "--clip-x0"]) == 0
    assert seen["config"].sampler == SamplerConfig(sampler="ddim", ddim_steps=8, skip="quad", eta=0.5,
                                                   stochastic_steps=2, variance="fixed_small", hal_window=4,
                                                   clip_x0=True)
    assert main(argv) == 0 and seen["config"].sampler == SamplerConfig()  # DDPM, as published
    capsys.readouterr()
    for extra, words in ((["--ddim-steps", "5"], "--ddim-steps and --skip apply to the step-skipping samplers"),
                         (["--sampler", "heun", "--eta", "1"], "--eta, --stochastic-steps, --stochastic-at and "
                                                               "--stochastic-from apply to --sampler ddim only "
                                                               "(--sampler heun ignores them)"),
                         (["--sampler", "ddim", "--variance", "fixed_small"], "--variance applies to DDPM's steps"),
                         (["--hal-top-k", "3"], "--hal-top-k applies to --hal-reduction top_k only"),
                         (["--sampler", "euler"], "--sampler: unknown sampler.sampler 'euler'"),
                         (["--hal-window", "1"], "--hal-window: sampler.hal_window must be >= 2, got 1"),
                         (["--hal-window", "21"], "--hal-window: Hal window must be in 2..20, got 21")):
        assert main(argv + extra) == 2
        err = capsys.readouterr().err
        assert words in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "study").exists()


def test_experiment_report_and_figures(uninterrupted, tmp_path):
    from mijax.experiments.recursive import run_mixture_study

    out, _ = uninterrupted
    import shutil

    shutil.copytree(out, tmp_path / "study")  # finished: the experiment only reads it back
    metrics = run_mixture_study(tmp_path, TOY, "quick", progress=False)
    for name in ("hallucination_rate.png", "hallucination_rate_blur_adjusted.png", "modes_lost.png", "sliced_w1.png",
                 "histograms.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    assert metrics["verdict"]["means"] is None  # no random filter in TOY
    assert metrics["verdict_blur_adjusted"]["means"] is None
    assert "Recursive training" in (tmp_path / "report.md").read_text()


def test_experiment_configs_fit_their_profiles():
    from mijax import experiments
    from mijax.experiments import recursive_1d, recursive_2d

    assert {"recursive-1d", "recursive-2d"} <= set(experiments.names())
    quick = recursive_2d.make_config("quick")
    assert quick.num_seeds == 4 and quick.filters == ("random", "variance") and quick.generations == 3
    assert quick.n == 2_500 and quick.pool_size == 5_000 and quick.run.train.steps == 16_000
    assert quick.run.train.lr_decay == "cosine" and quick.run.train.warmup_steps == 500  # the quick optimiser
    assert quick.run.train.t_power == 1.5 and recursive_1d.make_config("quick").run.train.t_power == 1.5
    paper = recursive_2d.make_config("paper")
    assert paper.n == 100_000 and paper.run.train.steps == 100_000 and paper.pool_size == 102_500
    assert paper.generations == 5 and paper.filters == ("none", "random", "variance")
    assert paper.run.train.learning_rate == 1e-3 and paper.run.train.lr_decay == "none"  # as published
    assert paper.run.train.t_power == 1.0  # uniform t, as published
    smoke = recursive_1d.make_config("smoke", overrides={"generations": 3})
    assert smoke.generations == 3 and smoke.run.train.steps == 20 and smoke.run.data.options["modes"] == (1.0, 2.0, 3.0)
    for config in (quick, paper, smoke, recursive_1d.make_config("paper")):
        recursive.validate_recursive(config)
    from mijax.experiments import common, recursive_shapes

    # mijax experiment --sampler ddim --ddim-steps 5: the pools drawn with it, Hal over all its 5 steps (the
    # published window of 10 ends at the last step); a window that cannot fit is refused in one line.
    with common.sampler_choice({"sampler": "ddim", "ddim_steps": 5}):
        chosen = recursive_1d.make_config("smoke")
        assert chosen.sampler == SamplerConfig(sampler="ddim", ddim_steps=5, hal_window=5)
        recursive.validate_recursive(chosen)
        with pytest.raises(common.SamplerRefused, match="--sampler ddim --ddim-steps 5 takes 5 reverse steps at "
                                                        "T = 16: Hal window must be in 2..5"):
            recursive_shapes.make_config("smoke")
    assert recursive_1d.make_config("smoke").sampler == SamplerConfig()  # outside the choice: DDPM, as published


def test_variance_below_random_verdict_from_hand_made_cis():
    from mijax.experiments.recursive import variance_below_random
    from mijax.experiments.recursive_2d import make_config

    config = make_config("paper")  # 5 generations; the verdict looks at 1..4

    def ci(mean, half):
        return {"mean": mean, "low": mean - half, "high": mean + half, "n": 4}

    def result(variance, random, key="hallucination_rate"):
        return {"summary": {"variance": {key: variance}, "random": {key: random}}}

    random = [ci(0.10, 0.01)] * 5
    apart = [ci(0.10, 0.01)] + [ci(0.05, 0.01)] * 4
    v = variance_below_random(config, result(apart, random))
    assert v["means"] is True and v["cis_separate"] is True and len(v["per_generation"]) == 4
    overlapping = [ci(0.10, 0.01)] + [ci(0.085, 0.01)] * 4  # below by the means, CIs overlap
    v = variance_below_random(config, result(overlapping, random))
    assert v["means"] is True and v["cis_separate"] is False
    one_above = apart[:3] + [ci(0.2, 0.01)] + apart[4:]
    assert variance_below_random(config, result(one_above, random))["means"] is False
    # another key (the blur-adjusted rate) is read only where it was measured
    blur = result(apart, random, "hallucination_rate_blur_adjusted")
    assert variance_below_random(config, blur, "hallucination_rate_blur_adjusted")["means"] is True
    assert variance_below_random(config, result(apart, random), "hallucination_rate_blur_adjusted")["means"] is None


# ---------------------------------------------------------------------------------------------
# The certified filter.

CERTIFIED_ALPHA = 0.9  # the toy models hallucinate most of their samples: only a generous rate can be certified
# beside it, a threshold filter that keeps the whole pool (+inf, carried from generation 0 to the next as "inf")
CERTIFIED = dataclasses.replace(TOY, generations=2, filters=("threshold", "certified"), certified_alpha=CERTIFIED_ALPHA,
                                threshold_keep=1.0)


@pytest.fixture(scope="module")
def certified_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("certified") / "study"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_recursive(out, CERTIFIED)
    return out, result, [str(w.message) for w in caught]


def test_the_certified_filter_keeps_below_a_threshold_certified_on_its_own_draw(certified_study):
    """Generation 0 draws a calibration set of the pool's size with keys of its own, certifies a threshold per
    seed on it with the data set's labels, and every generation keeps the pool's samples below it; a seed whose
    threshold keeps nothing is named in a warning and passes on the variance filter's samples."""
    from mijax.config import build
    from mijax.filters import certify_threshold

    out, result, warned = certified_study
    S, N, P = 2, 64, 96
    d0 = gen_dir(out, 0)
    pool, draw = np.load(d0 / "pool.npz"), np.load(d0 / "calibration_pool.npz")
    assert draw["x"].shape == pool["x"].shape == (S, P, 1) and draw["hal"].shape == (S, P)
    assert not np.any(np.isin(draw["x"], pool["x"]))  # independent of the pool
    saved = json.loads((d0 / "calibration.json").read_text())
    assert saved["keep"] == P and saved["thresholds"] == ["inf"] * S  # the threshold filter's: keep the pool
    certified = saved["certified"]
    assert (certified["alpha"], certified["delta"], certified["calibration"]) == (CERTIFIED_ALPHA, 0.1, P)
    dataset = build(CERTIFIED.run).dataset
    thresholds = np.asarray([float(t) for t in certified["thresholds"]])
    for s, seed in enumerate(CERTIFIED.run.seed_values):
        expected = certify_threshold(draw["hal"][s], dataset.hallucinated(draw["x"][s]), CERTIFIED_ALPHA, 0.1,
                                     seed=seed)
        assert thresholds[s] == expected["threshold"] and certified["per_seed"][s]["kept"] == expected["kept"]
    for g, metrics in enumerate(result["generations"]):
        assert metrics["certified_thresholds"] == certified["thresholds"]  # certified once, at generation 0
        pool = np.load(gen_dir(out, g) / "pool.npz")
        kept = np.load(gen_dir(out, g) / "kept.npz")["data"]
        rows = metrics["filters"]["certified"]
        assert [r["accepted"] for r in metrics["filters"]["threshold"]] == [P] * S  # +inf, read back at g = 1
        for s in range(S):
            m = s if g == 0 else S + s
            below = pool["hal"][m] < np.float32(thresholds[s])
            assert rows[s]["accepted"] == int(below.sum())
            if below.any():
                assert set(kept[S + s, :, 0].tolist()) <= set(pool["x"][m, below, 0].tolist())
            else:
                lowest = np.sort(np.argsort(pool["hal"][m], kind="stable")[:N])
                np.testing.assert_array_equal(np.sort(kept[S + s, :, 0]), np.sort(pool["x"][m, lowest, 0]))
        empty = [str(seed) for s, seed in enumerate(CERTIFIED.run.seed_values) if rows[s]["accepted"] == 0]
        said = [w for w in warned if w.startswith(f"generation {g}: the certified filter's threshold")]
        assert len(said) == (1 if empty else 0)
        if empty:
            assert f"keeps none of the pool of seed(s) {', '.join(empty)}" in said[0]
    assert not (gen_dir(out, 1) / "calibration_pool.npz").exists()


def test_the_certified_filter_applies_its_own_thresholds_and_falls_back_when_they_keep_nothing():
    """apply_filters: the certified filter reads its own per-seed thresholds (not the threshold filter's);
    -inf keeps nothing, and the variance filter's samples stand in."""
    config = dataclasses.replace(TOY, filters=("threshold", "certified"))
    rng = np.random.default_rng(0)
    hal = rng.random((2, 96)).astype(np.float32)
    x = np.arange(2 * 96, dtype=np.float32).reshape(2, 96, 1)
    kept, counts = recursive.apply_filters(config, 0, x, hal, model_keys(config, 0), np.full(2, np.inf),
                                           np.asarray([-np.inf, 0.5]))
    assert counts.tolist() == [96, 96, 0, int((hal[1] < 0.5).sum())]
    lowest = np.sort(np.argsort(hal[0], kind="stable")[:64])
    np.testing.assert_array_equal(np.sort(kept[2, :, 0]), x[0, lowest, 0])
    assert set(kept[3, :, 0].tolist()) == set(x[1, hal[1] < 0.5, 0].tolist())
    with pytest.raises(ValueError, match="certified filter needs its thresholds"):
        recursive.apply_filters(config, 0, x, hal, model_keys(config, 0), np.full(2, np.inf))


def test_a_certified_study_resumes_after_a_kill_before_its_calibration_draw(certified_study, tmp_path):
    """Killed after the pool is saved and before the calibration draw, a study restores generation 0's models,
    draws the same calibration set and ends as an uninterrupted one."""
    out, expected, _ = certified_study

    def hook(e, g, step):
        if e == "sampled" and g == 0:
            raise Kill

    with pytest.raises(Kill):
        run_recursive(tmp_path / "study", CERTIFIED, hook=hook)
    assert not (gen_dir(tmp_path / "study", 0) / "calibration_pool.npz").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_recursive(tmp_path / "study", CERTIFIED)
    assert result["generations"] == expected["generations"]
    for name in ("calibration_pool.npz", "kept.npz"):
        for key, value in np.load(gen_dir(out, 0) / name).items():
            np.testing.assert_array_equal(np.load(gen_dir(tmp_path / "study", 0) / name)[key], value)


def test_certified_settings_are_checked_and_studies_without_them_load(tmp_path, monkeypatch, capsys):
    from mijax.cli import main

    default = RecursiveConfig()
    assert (default.certified_alpha, default.certified_delta) == (0.01, 0.1)
    assert default.filters == ("none", "random", "variance")  # not a default filter
    for field in ("certified_alpha", "certified_delta"):
        for bad in (0.0, 1.0, -0.5):
            with pytest.raises(RunError, match=f"recursive.{field} must be"):
                RecursiveConfig(**{field: bad})
    old = recursive.recursive_config_to_dict(TOY)  # a study written before the certified filter
    del old["certified_alpha"], old["certified_delta"]
    assert recursive.recursive_config_from_dict(json.loads(json.dumps(old))) == TOY
    seen = {}
    monkeypatch.setattr(recursive, "run_recursive", lambda out, config, **kw: seen.update(config=config) or
                        {"summary": {}})
    argv = ["recursive", "--dataset", "gaussian1d", "--n-train", "64", "--batch-size", "32", "--timesteps", "20",
            "--no-progress", "--out", str(tmp_path / "study"), "--filters", "random,certified"]
    assert main(argv + ["--certified-alpha", "0.05", "--certified-delta", "0.2"]) == 0
    assert seen["config"].filters == ("random", "certified")
    assert (seen["config"].certified_alpha, seen["config"].certified_delta) == (0.05, 0.2)
    assert main(argv) == 0 and (seen["config"].certified_alpha, seen["config"].certified_delta) == (0.01, 0.1)
    capsys.readouterr()
    assert main(argv + ["--certified-alpha", "1"]) == 2
    assert "--certified-alpha: recursive.certified_alpha must be < 1" in capsys.readouterr().err
