"""The paper's experiments end to end at toy size: metrics, report and figures are written, numbers
are consistent, and a rerun resumes from what the first run wrote."""
import json

import numpy as np
import pytest

from mijax import experiments, store
from mijax.experiments import common

# The experiments run their smoke profiles (T = 40, 20 steps, 2 seeds). TOY: the same sizes in the published
# optimiser, for the functions of common.
DIGEST = "2d197bc706"  # config_digest of the TOY run below before TrainConfig had t_power
TOY = {"seeds": 2, "n_train": 400, "timesteps": 40, "steps": 20, "batch_size": 200, "num_samples": 128,
       "chunk_size": 128, "steps_per_call": 10, "checkpoint_every": 10}


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One folder of toy runs shared by the tests below, as `mijax experiment all` shares its runs: the
    score, trajectories and grid tests train the same toy 1D and 2D models once."""
    return tmp_path_factory.mktemp("shared-runs")


def _check_outputs(out, metrics, pngs):
    def no_constants(name):
        raise AssertionError(f"metrics.json is not strict JSON: it holds {name}")

    saved = json.loads((out / "metrics.json").read_text(), parse_constant=no_constants)
    assert saved == store.json_safe(metrics)  # non-finite numbers are written as null
    report = (out / "report.md").read_text()
    assert "Holds" in report or "Headline" in report
    for name in pngs:
        assert (out / name).is_file() and (out / name).stat().st_size > 1000, name
    assert not list(out.glob(".*tmp*"))


def test_registry_lists_the_experiments_with_summaries_and_typed_profiles():
    assert experiments.PROFILES == ("smoke", "quick", "paper") and experiments.DEFAULT_PROFILE == "quick"
    for name in experiments.names():
        module = experiments.load(name)
        assert isinstance(module.SUMMARY, str) and "\n" not in module.SUMMARY
        assert tuple(module.PROFILES)[:3] == experiments.PROFILES
        kinds = {type(profile) for profile in module.PROFILES.values()}
        assert len(kinds) == 1 and issubclass(kinds.pop(), common.Profile)
        sizes = {name: common.resolve_profile(module.PROFILES, name) for name in experiments.PROFILES}
        assert sizes["smoke"]["seeds"] <= sizes["quick"]["seeds"]
        assert sizes["smoke"].get("steps", 0) <= sizes["quick"].get("steps", 0)


def test_profile_overrides_are_checked_and_converted():
    from mijax.config import ConfigError
    from mijax.experiments import distance_1d, interp_1d
    from mijax.runs import RunError

    p = common.resolve_profile(distance_1d.PROFILES, "quick", seeds=3, overrides={"steps": 5, "grad_clip": 1})
    assert p["seeds"] == 3 and p["steps"] == 5 and p["grad_clip"] == 1.0 and isinstance(p["grad_clip"], float)
    assert "grad_clip" not in common.resolve_profile(distance_1d.PROFILES, "quick")  # None: the published recipe
    assert common.resolve_profile(interp_1d.PROFILES, "smoke", overrides={"sizes": "400,600"})["sizes"] == (400, 600)
    for overrides, words in (({"nope": 1}, "the quick profile has no field nope"),
                             ({"steps": "abc"}, "field steps is an integer like 10000, got 'abc'"),
                             ({"steps": -5}, "steps must be > 0, got -5"),
                             ({"lr_decay": "cos"}, "unknown lr_decay 'cos'")):
        with pytest.raises(ConfigError, match=words) as e:
            common.resolve_profile(distance_1d.PROFILES, "quick", overrides=overrides)
        assert e.value.field == next(iter(overrides))
    with pytest.raises(RunError, match="unknown profile"):
        common.resolve_profile(distance_1d.PROFILES, "fast")


def test_ci_over_seeds():
    c = common.ci([0.1, 0.2, 0.3])
    assert c["mean"] == pytest.approx(0.2) and c["low"] < 0.2 < c["high"] and c["n"] == 3 and c["method"] == "t"
    assert common.ci([float("nan")])["mean"] is None
    assert "%" in common.fmt(c, pct=True)


def test_a_share_over_three_seeds_stays_inside_0_1():
    shares = [0.62 - 0.2107, 0.62, 0.62 + 0.2107]
    assert common.fmt(common.ci(shares), pct=True) == "62% [9.65%, 114%]"  # Student's t: past 100%
    c = common.ci(shares, proportion=True)
    assert c["method"] == "logit-t" and 0.0 < c["low"] < c["mean"] < c["high"] < 1.0
    assert common.fmt(c, pct=True) == "62% [15%, 93.8%]"
    assert common.ci([0.0, 0.0], proportion=True)["high"] == 0.0
    assert common.ci([float("nan")], proportion=True)["method"] == "logit-t"
    assert "logit scale" in common.CI_TEXT and "Student's t" in common.CI_TEXT


def test_interp_1d_end_to_end_and_resume(tmp_path):
    from mijax.experiments import interp_1d

    out = tmp_path / "interp"
    m = interp_1d.run(out, "smoke", progress=False)
    _check_outputs(out, m, ["rate_vs_n.png", "histogram_n400.png", "histogram_n800.png"])
    assert [row["n_train"] for row in m["per_size"]] == [400, 800]
    assert [r["k"] for r in m["per_size"][0]["rates"]] == [3, 4, 5, 6]
    v = m["claim_holds"]
    assert v["verdict"] == ("yes" if v["means_fall"] and v["ci_separated"] else
                            "not established" if v["means_fall"] else "no")
    assert v["rate_falls_with_n"] == (v["verdict"] == "yes")
    # Per-seed rates at k = 5 are the fraction of cached samples beyond 5 std of the nearest mode.
    cached = sorted((out / "runs" / "n400").glob("samples-hal-*.npz"))
    with np.load(cached[0]) as f:
        x = f["x"][:, :, 0]
    dist = np.min(np.abs(x[..., None] - np.array([1.0, 2.0, 3.0])), axis=-1) / 0.05
    assert m["per_size"][0]["rates"][2]["rate"]["per_seed"] == pytest.approx(list(np.mean(dist > 5, axis=1)), abs=1e-6)
    rates = [r["rate"] for row in m["per_size"] for r in row["rates"]]  # shares: intervals inside [0, 1]
    assert all(r["method"] == "logit-t" and 0.0 <= r["low"] <= r["mean"] <= r["high"] <= 1.0 for r in rates)
    assert common.CI_TEXT in (out / "report.md").read_text()
    # A rerun reuses the checkpoints and cached samples: the same numbers.
    (out / "metrics.json").unlink()
    again = interp_1d.run(out, "smoke", progress=False)
    assert again["per_size"] == m["per_size"]


def test_window_hal_equals_sampler_hal(tmp_path):
    """Hal over a window computed from the recorded x0_hat equals the sampler's own running Hal."""
    from mijax.config import SamplerConfig

    run_dir = common.train(tmp_path, "1d", common.run_config(TOY), progress=False)
    assert run_dir == tmp_path / "runs" / "1d"  # outside shared_runs: the experiment's own folder
    windows = common.sample_windows(run_dir, 128, [(0, 10), (5, 20)], trajectory_steps=30, chunk_size=128,
                                    progress=False)
    plain = common.sample(run_dir, 128, chunk_size=128, progress=False)
    shifted = common.sample(run_dir, 128, SamplerConfig(hal_window=20, hal_end=5), chunk_size=128, progress=False)
    np.testing.assert_allclose(windows["x"], plain["x"], rtol=0, atol=0)
    np.testing.assert_allclose(windows["hal"][..., 0], plain["hal"], rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(windows["hal"][..., 1], shifted["hal"], rtol=1e-3, atol=1e-9)
    assert windows["trajectory"].shape == (2, 128, 30, 1)
    np.testing.assert_array_equal(windows["trajectory"][:, :, -1], windows["x"])  # t = 0 is the sample


def test_detection_end_to_end(tmp_path, monkeypatch):
    from mijax.experiments import detection

    real = common.sample_windows

    def diverging(*args, **kwargs):  # as if 3 of seed 0's 2D samples had diverged (inf x, NaN Hal)
        result = dict(real(*args, **kwargs))
        if result["x"].shape[-1] == 2:
            result["x"], result["hal"] = np.array(result["x"]), np.array(result["hal"])
            result["x"][0, :3], result["hal"][0, :3] = np.inf, np.nan
        return result

    monkeypatch.setattr(common, "sample_windows", diverging)
    out = tmp_path / "det"
    m = detection.run(out, "smoke", progress=False)
    _check_outputs(out, m, ["hal_1d.png", "roc_1d.png", "auroc_windows_1d.png", "hal_2d.png", "auroc_windows_2d.png"])
    assert m["windows"][0] == [0, 10] or tuple(m["windows"][0]) == (0, 10)
    # Every (end, length) of the sweep that fits in T = 40 steps: ends 0 and 10 with lengths 5, 10, 20; 25 with 5, 10.
    assert len(m["settings"]["1d"]["window_sweep"]) == len(m["windows"]) == 8
    assert set(m["settings"]["2d"]["per_k"]) == {"3", "4", "5", "6"}
    assert "blur_adjusted" in m["settings"]["1d"]
    # Diverged samples are counted and left out of the numbers, not a crash ("scores must not be NaN").
    assert m["settings"]["2d"]["non_finite_samples"] == [3, 0] and m["settings"]["1d"]["non_finite_samples"] == [0, 0]
    assert "Diverged samples" in (out / "report.md").read_text()
    k5 = m["settings"]["1d"]["per_k"]["5"]  # rates, shares and AUROCs: intervals inside [0, 1], named
    for key in ("hallucination_rate", "auroc", "removed_at_96_retention", "retained_at_95_removal"):
        c = k5[key]
        assert c["method"] == "logit-t" and (c["low"] is None or 0.0 <= c["low"] <= c["high"] <= 1.0)
    assert common.CI_TEXT in (out / "report.md").read_text()


def test_detectors_end_to_end(tmp_path, shared):
    from mijax import detectors as detectors_lib
    from mijax.experiments import detectors

    out = tmp_path / "detectors"
    with common.shared_runs(shared):
        m = detectors.run(out, "smoke", progress=False, overrides={"image_settings": ()})
    _check_outputs(out, m, [f"{kind}_{tag}.png" for kind in ("roc", "early") for tag in m["settings"]]
                   + ["abort_1d.png"])
    assert set(m["settings"]) == {"1d", "2d", "2d_rotated"}  # the images: tests/test_shapes_experiments.py
    for tag, block in m["settings"].items():
        assert set(block["detectors"]) == set(detectors_lib.DETECTORS)
        assert [r["end"] for r in block["early"]["hal"]] == ([0, 5, 25] if tag == "1d" else [0, 25])
    assert sorted(r["detector"] for r in m["ranking"]) == sorted(detectors_lib.DETECTORS)
    assert m["cost"] is None  # not measured at toy size (mijax bench and the quick profile measure it)
    abort = m["settings"]["1d"]["abort"]
    assert "abort" not in m["settings"]["2d"] and abort["ends"] == [5] and abort["samples_per_seed"] == 128
    (row,) = abort["abort"]["5"]
    # Every accepted sample ran all T = 40 steps, plus 35 for each aborted draw (at most 3 per sample).
    assert 40 <= row["steps_per_sample"]["mean"] <= 40 + 3 * 35
    assert abort["post_hoc"][0]["steps_per_sample"]["mean"] >= 40
    # Hal's AUROC at the default window equals the one `detection` computes from the sampler's own Hal.
    hal = m["settings"]["1d"]["detectors"]["hal"]["auroc"]
    assert hal["n"] >= 1 and 0.0 <= hal["mean"] <= 1.0


def test_score_end_to_end(tmp_path, shared):
    from mijax.experiments import score

    out = tmp_path / "score"
    with common.shared_runs(shared):
        m = score.run(out, "smoke", progress=False)
    _check_outputs(out, m, ["eps_vs_x.png", "histogram_exact.png", "histogram_trained.png"])
    # The exact eps* jumps between modes at t = 0: far steeper than any toy network.
    assert m["gap_slope"]["0"]["exact"] > 10 * m["gap_slope"]["0"]["learned"]["mean"]
    # The exact sampler stays on the modes.
    assert m["rates_exact"][2]["rate"]["mean"] < 0.01


def test_gap_slope_of_a_step_and_a_ramp():
    from mijax.experiments.score import gap_slope

    grid = np.linspace(0.5, 3.5, 3001)
    assert gap_slope(grid, 0.5 * grid) == pytest.approx(0.5)
    step = np.where(grid < 1.5, 0.0, 1.0)
    assert gap_slope(grid, step) == pytest.approx(1.0 / (grid[1] - grid[0]))


def test_distance_1d_end_to_end(tmp_path):
    from mijax.experiments import distance_1d

    out = tmp_path / "dist"
    with common.shared_runs(tmp_path / "runs"):
        m = distance_1d.run(out, "smoke", progress=False)
        (run_dir,) = (tmp_path / "runs").iterdir()
        _check_outputs(out, m, ["histogram.png", "gap_density.png"])
        assert list(m["gap_density_per_unit_length"]) == ["1-2", "2-4", "4-5"]
        # Drawn with DDPM as published: the cache's name of earlier versions, no sampler recorded.
        ddpm = "samples-hal-502410846a.npz"
        assert [p.name for p in run_dir.glob("samples-*.npz")] == [ddpm]
        assert "sampler" not in m and "**Sampler:**" not in (out / "report.md").read_text()
        # A reverse sampler chosen (mijax experiment --sampler ddim --ddim-steps 5): the same models drawn into a
        # cache of its own, the sampler recorded in the metrics and the report.
        with common.sampler_choice({"sampler": "ddim", "ddim_steps": 5, "eta": 0.0}) as chosen:
            ddim = distance_1d.run(tmp_path / "ddim", "smoke", progress=False)
    assert chosen == ddim["sampler"] == {"sampler": "ddim", "ddim_steps": 5}
    _check_outputs(tmp_path / "ddim", ddim, ["histogram.png", "gap_density.png"])
    assert ("**Sampler:** sampler ddim, ddim_steps 5 (`--sampler ddim --ddim-steps 5`)"
            in (tmp_path / "ddim" / "report.md").read_text())
    (other,) = {p.name for p in run_dir.glob("samples-*.npz")} - {ddpm}
    with np.load(run_dir / other) as f, np.load(run_dir / ddpm) as g:
        assert f["x"].shape == g["x"].shape == (2, 128, 1) and not np.array_equal(f["x"], g["x"])


def test_gap_densities_count_per_unit_length():
    from mijax.experiments.distance_1d import gap_densities

    x = np.array([1.5, 1.5, 3.0, 3.0, 3.0, 3.0, 1.0, 2.0, 4.0, 5.0])
    d = gap_densities(x)
    assert d == pytest.approx([0.2 / 0.5, 0.4 / 1.5, 0.0])


def test_mode_pairs_directions():
    from mijax.experiments.grid_2d import ORIENTATIONS, mode_pairs
    from mijax.mixtures import gaussian25, gaussian25_rotated

    grid = np.asarray(gaussian25().means, np.float64)
    s = 2 / 2.828869
    x = np.array([[0.5 * s, 0.0], [0.0, 0.5 * s], [0.5 * s, 0.45 * s]])
    t = mode_pairs(grid, x)
    assert [ORIENTATIONS[o] for o in t["orientation"][:2]] == ["horizontal", "vertical"]
    assert list(t["nearest"][:2]) == [True, True]
    assert t["position"][:2] == pytest.approx([0.5, 0.5])  # midway between the two modes
    rotated = np.asarray(gaussian25_rotated().means, np.float64)
    # On the segment from (0, 0) to (1, 0) (x-axis neighbours, not nearest) on the rotated grid.
    t = mode_pairs(rotated, np.array([[0.25 * s, 0.0]]))
    assert ORIENTATIONS[t["orientation"][0]] == "horizontal" and not t["nearest"][0]


def test_grid_2d_end_to_end(tmp_path, shared):
    from mijax.experiments import grid_2d

    out = tmp_path / "grid"
    with common.shared_runs(shared):
        m = grid_2d.run(out, "smoke", progress=False)
    _check_outputs(out, m, ["scatter_gaussian25.png", "scatter_gaussian25_rotated.png"])
    assert set(m["datasets"]) == {"gaussian25", "gaussian25_rotated"}


def test_trajectories_end_to_end(tmp_path, shared):
    from mijax.experiments import score, trajectories

    out = tmp_path / "traj"
    with common.shared_runs(shared):
        # Saved and dispatched differently from the score test's run, but the same models: shared.
        m = trajectories.run(out, "smoke", progress=False, overrides={"checkpoint_every": 20})
        _check_outputs(out, m, ["trajectories_1d.png", "trajectories_2d.png"])
        assert m["steps_shown"] == 40  # min(100, T)
        for block in m["settings"].values():  # blur-adjusted labels are a subset of the k-std ones
            assert all(b <= k for b, k in zip(block["blur_adjusted"]["num_hallucinated"], block["num_hallucinated"]))
        config = common.run_config(common.resolve_profile(score.PROFILES, "smoke"))
        run_dir = common.run_dir_for(out, "1d", config)
    assert run_dir.parent == shared and run_dir.name.startswith("gaussian1d-n400-")
    assert not (out / "runs").exists()
    # One run per configuration: 1D (score and trajectories), 2D grid (trajectories and grid-2d), rotated grid.
    names = sorted(d.name.rsplit("-", 1)[0] for d in shared.iterdir())
    assert names == sorted(set(names)) and {"gaussian1d-n400", "gaussian25-n400"} <= set(names)


def test_config_digest_ignores_only_how_a_run_is_saved():
    p = TOY
    base = common.run_config(p)
    same = common.run_config({**p, "checkpoint_every": 7, "steps_per_call": 5})
    assert common.config_digest(base) == common.config_digest(same)
    for other in ({**p, "steps": 21}, {**p, "seeds": 3}, {**p, "batch_size": 100}, {**p, "n_train": 401},
                  {**p, "t_power": 1.5}):
        assert common.config_digest(common.run_config(other)) != common.config_digest(base)
    # t_power came later: at its default (uniform t) a run keeps the name it had before (digest of mijax 0.2)
    assert common.config_digest(common.run_config({**p, "t_power": 1.0})) == common.config_digest(base) == DIGEST


def test_quick_2d_models_draw_small_t_more_often_and_are_shared():
    from mijax.experiments import detection, grid_2d

    p = common.resolve_profile(detection.PROFILES, "quick")
    one = common.setting_config(p, "1d", "gaussian1d", (1.0, 2.0, 3.0))
    two = common.setting_config(p, "2d", "gaussian25", None)
    assert one.train.t_power == 1.0 and two.train.t_power == common.QUICK_T_POWER == 1.5
    assert (two.data.n_train, two.train.steps, two.train.batch_size) == (20_000, 32_000, 500)
    grid = common.run_config(common.resolve_profile(grid_2d.PROFILES, "quick"), dataset="gaussian25")
    assert common.config_digest(grid) == common.config_digest(two)  # detection reuses grid-2d's models
    paper = common.resolve_profile(detection.PROFILES, "paper")
    assert common.setting_config(paper, "2d", "gaussian25", None).train.t_power == 1.0  # uniform, as published


def test_movement_of_a_trajectory():
    from mijax.experiments.trajectories import movement

    traj = np.zeros((2, 20, 1))
    traj[1, -1, 0] = 3.0
    assert list(movement(traj)) == [0.0, 3.0]


def test_samplers_end_to_end(tmp_path, shared):
    from mijax.experiments import samplers

    out = tmp_path / "samplers"
    with common.shared_runs(shared):
        m = samplers.run(out, "smoke", progress=False)
    _check_outputs(out, m, ["steps_gaussian1d_learned.png", "steps_gaussian1d_exact.png",
                            "stochastic_gaussian1d.png", "trajectories.png"])
    learned, exact = (m["datasets"]["gaussian1d"]["results"][s] for s in ("learned", "exact"))
    cells = ["ddpm", "ddim eta 0 10", "ddim 10 + 2 last", "ddim eta 0 40"]
    assert list(learned) == cells == list(exact)
    # Network evaluations per sample: all T = 40 for DDPM; DDIM's 10 steps (0, 4, 9, ..., 39) with its last two
    # DDPM's: its 9 steps above t = 1, then t = 1 and 0; DDIM over all T (the reference beside DDPM).
    assert [learned[c]["evaluations"] for c in learned] == [40, 10, 11, 40]
    assert exact["ddpm"]["rate"]["mean"] < 0.02  # the exact score through DDPM stays on the modes
    for block in (learned, exact):
        for cell in block.values():
            for key in ("rate", "diverged", "entered", "hallucinated_if_entered", "hallucinated_if_not"):
                c = cell[key]
                assert c["mean"] is None or 0.0 <= c["low"] <= c["mean"] <= c["high"] <= 1.0, key
    verdict = m["datasets"]["gaussian1d"]["verdicts"]["exact"]
    assert verdict["ddim_vs_ddpm"] in ("more", "less", "not apart") and set(verdict["closed"]) == {"2 last"}
    assert set(verdict["by_steps"]) == {"10", "40"}
    assert "Does DDIM hallucinate more than DDPM?" in (out / "report.md").read_text()


def test_between_mode_region_and_the_peer_profile():
    from mijax.config import ConfigError, build
    from mijax.experiments import samplers

    means = np.array([[1.0], [2.0], [3.0]])
    assert samplers.nearest_pairs(means).tolist() == [[0, 1], [1, 2]]  # 1 and 3 are not nearest
    x = np.array([[1.5], [1.0], [2.6], [0.75]])
    assert samplers.in_region(x, 1.0, means, 0.35).tolist() == [True, False, True, False]
    assert samplers.in_region(x, 0.25, means, 0.35).tolist() == [False, False, False, True]  # x_t / sqrt(abar)
    p = common.resolve_profile(samplers.PROFILES, "peer")
    config = build(samplers.run_config(p, "gaussian25"))
    means = np.asarray(config.dataset.mixture.means, np.float64)
    # The peer's grid: spacing 2 and sigma 0.02 divided by sqrt(8.0004); betas 1e-4 -> 0.02; 50 quadratic steps.
    assert np.sort(np.unique(np.round(means[:, 0], 6)))[1:3] == pytest.approx([-2 / 8.0004**0.5, 0.0], abs=1e-6)
    assert float(config.dataset.mixture.stds[0]) == pytest.approx(0.02 / 8.0004**0.5, rel=1e-6)
    betas = np.asarray(config.schedule.betas)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02) and p["skip"] == "quad"
    assert "ddim eta 0 50" in {c.label for c in samplers.cells(p)}
    with pytest.raises(ConfigError, match="exceed T = 1000"):
        common.resolve_profile(samplers.PROFILES, "peer", overrides={"sweep_steps": (1001,)})


def test_mitigations_end_to_end(tmp_path, shared):
    from mijax.experiments import mitigations

    out = tmp_path / "mitigations"
    with common.shared_runs(shared):
        m = mitigations.run(out, "smoke", progress=False)
    _check_outputs(out, m, ["pareto.png"])
    rows = m["datasets"]["gaussian1d"]["results"]
    assert [r["family"] for r in rows.values()] == ["none", "filter", "filter", "abort", "stochastic", "stochastic",
                                                    "guidance", "smoothness"]
    none, hal_filter = rows["none (DDPM)"], rows["filter hal, keep 90%"]
    # network evaluations per returned sample: T = 40 for DDPM, guidance and the retrained model; T / share kept for
    # a filter; DDIM's 10 steps; abort: at least T (redraws run again from the start to t_e)
    assert none["evaluations"]["mean"] == rows["guidance 1 from t = 12"]["evaluations"]["mean"] == 40
    assert rows["smoothness penalty 0.1"]["evaluations"]["mean"] == 40
    assert hal_filter["kept"]["mean"] == pytest.approx(115 / 128)  # round(0.9 * 128) of 128 samples
    assert hal_filter["evaluations"]["mean"] == pytest.approx(40 * 128 / 115)
    assert rows["DDIM 10"]["evaluations"]["mean"] == rows["DDIM 10 + 2 stochastic (last)"]["evaluations"]["mean"] == 10
    assert rows["abort at t_e = 5, flag 10%"]["evaluations"]["mean"] >= 40
    for r in rows.values():
        for key in ("rate", "rate_blur", "weights_tv"):
            c = r[key]
            assert c["mean"] is None or 0.0 <= c["low"] <= c["mean"] <= c["high"] <= 1.0, key
        assert r["mmd"]["mean"] is not None and r["mmd"]["mean"] > 0
    v = m["datasets"]["gaussian1d"]["verdict"]
    assert v["winner"] is None or v["winner"] in v["best"]
    assert "Headline" in (out / "report.md").read_text()
