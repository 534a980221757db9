"""The ``mijax`` command: train -> sample round trip, resume, and every bad input (exit 2, one line)."""
import os
import re
import subprocess
import sys

import jax
import numpy as np

import mijax
import pytest

from mijax import runs, store
from mijax.cli import main

TINY = ["--dataset", "gaussian1d", "--n-train", "400", "--steps", "20", "--batch-size", "200",
        "--timesteps", "30", "--checkpoint-every", "10", "--steps-per-call", "5", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--seeds", "2", "--out", str(run)]) == 0
    return run


def _error(capsys, argv):
    """Run argv; it must fail with status 2 and exactly one line on stderr, no traceback."""
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith("mijax: error: "), err
    return err[0]


def test_train_writes_a_run(trained):
    assert (trained / "config.json").is_file() and (trained / "losses.json").is_file()
    config = runs.load_config(trained)
    assert config.seeds == 2 and config.train.steps == 20 and config.diffusion.timesteps == 30
    assert store.latest_checkpoint(trained) == 20
    losses = store.read_json(trained / "losses.json")
    assert losses["step"][-1] == 20 and len(losses["loss"][-1]) == 2


def test_sample_writes_seed_stacked_npz(trained, tmp_path, capsys):
    out = tmp_path / "s.npz"
    assert main(["sample", "--run", str(trained), "--n", "37", "--chunk-size", "16", "--no-progress",
                 "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["x"].shape == (2, 37, 1) and f["x"].dtype == np.float32
        assert f["hal"].shape == (2, 37) and f["hal"].dtype == np.float32
        assert np.all(np.isfinite(f["x"])) and np.all(f["hal"] >= 0)
        x = f["x"]
    # The chunk size does not change the samples; the two seeds' models differ.
    out2 = tmp_path / "s2.npz"
    assert main(["sample", "--run", str(trained), "--n", "37", "--no-progress", "--out", str(out2)]) == 0
    with np.load(out2) as f:
        np.testing.assert_array_equal(f["x"], x)
    assert not np.allclose(x[0], x[1])
    # Streamed to disk chunk by chunk, the file holds what sampling in memory returns.
    in_memory = runs.sample_run(trained, 37, chunk_size=16)
    with np.load(out) as f:
        np.testing.assert_array_equal(f["x"], in_memory["x"])
        np.testing.assert_array_equal(f["hal"], in_memory["hal"])
        np.testing.assert_array_equal(f["seeds"], in_memory["seeds"])


def test_sample_with_detectors_writes_one_score_per_detector(trained, tmp_path):
    out = tmp_path / "d.npz"
    assert main(["sample", "--run", str(trained), "--n", "20", "--no-progress", "--detectors",
                 "hal,jac_trace@0:3,oracle,lid@5", "--out", str(out)]) == 0
    with np.load(out) as f:
        for key in ("score_hal", "score_jac_trace_e0_k3", "score_oracle", "score_lid_e5"):
            assert f[key].shape == (2, 20) and np.all(np.isfinite(f[key])), key
        np.testing.assert_array_equal(f["score_hal"], f["hal"])


def test_sample_with_abort_and_resample(trained, tmp_path):
    """Threshold 0 flags every sample at t_e = 5 (Hal >= 0): each is redrawn once, then kept."""
    out = tmp_path / "a.npz"
    assert main(["sample", "--run", str(trained), "--n", "20", "--no-progress", "--abort", "hal@5:10",
                 "--abort-threshold", "0", "--max-redraws", "1", "--out", str(out)]) == 0
    with np.load(out) as f:
        assert f["x"].shape == (2, 20, 1) and f["score_hal_e5_k10"].shape == (2, 20)
        np.testing.assert_array_equal(f["redraws"], 1)
        np.testing.assert_array_equal(f["steps"], 30 + 25)  # T, plus the aborted draw's 25 steps to t_e
        assert "config" in f.files and "seeds" in f.files


def test_sample_with_abort_at_a_certified_threshold(trained, tmp_path):
    """--abort-target-rate: per model, the threshold certify_abort finds on its own calibration draw; every sample
    accepted below it (not still flagged) scores below it."""
    from mijax.abort import certify_abort
    from mijax.config import AbortConfig
    from mijax.detectors import parse
    from mijax.runs import load_run, sample_keys
    from mijax.training import eval_params

    out = tmp_path / "c.npz"
    assert main(["sample", "--run", str(trained), "--n", "20", "--no-progress", "--abort", "hal@5:10",
                 "--abort-target-rate", "0.85", "--abort-calibration", "200", "--out", str(out)]) == 0
    config, pieces, state = load_run(trained)
    abort = AbortConfig(parse("hal@5:10")[0], target_rate=0.85, calibration=200)  # the toy models: ~70% hallucinated
    params = eval_params(state, config.train)
    with np.load(out) as f:
        assert f["abort_threshold"].shape == f["abort_bound"].shape == (2,) and f["still_flagged"].shape == (2, 20)
        assert np.isfinite(f["abort_threshold"]).any() and np.all(f["abort_bound"] <= 0.85)
        for s in range(2):
            c = certify_abort(pieces.denoise_fn, jax.tree.map(lambda a: a[s], params), pieces.schedule,
                              sample_keys(config, 0)[s], pieces.shape, abort, pieces.dataset.hallucinated)
            assert f["abort_threshold"][s] == c["threshold"] and f["abort_bound"][s] == c["bound"]
            accepted = ~f["still_flagged"][s]
            assert np.all(f["score_hal_e5_k10"][s][accepted] < c["threshold"])


def test_sample_kernel_option(trained, tmp_path):
    """--kernel pallas samples with the fused kernel on a GPU; elsewhere it says so and uses the XLA path."""
    out, ref = tmp_path / "k.npz", tmp_path / "ref.npz"
    assert main(["sample", "--run", str(trained), "--n", "20", "--no-progress", "--out", str(ref)]) == 0
    if jax.default_backend() == "gpu":
        assert main(["sample", "--run", str(trained), "--n", "20", "--kernel", "pallas", "--no-progress",
                     "--out", str(out)]) == 0
    else:
        with pytest.warns(UserWarning, match="needs a GPU"):
            assert main(["sample", "--run", str(trained), "--n", "20", "--kernel", "pallas", "--no-progress",
                         "--out", str(out)]) == 0
    with np.load(out) as got, np.load(ref) as want:
        np.testing.assert_allclose(got["x"], want["x"], atol=1e-4)
        np.testing.assert_allclose(got["hal"], want["hal"], atol=1e-6, rtol=1e-3)
    with pytest.raises(runs.RunError, match="unknown kernel"):
        runs.sample_run(trained, 4, kernel="cuda")


def test_npy_stream_and_pack_npz(tmp_path):
    want = np.arange(2 * 7 * 3, dtype=np.float32).reshape(2, 7, 3)
    stream = store.NpyStream(tmp_path / "a.npy", np.float32, want.shape)
    for seed in (1, 0):  # any order, in row blocks
        for start, stop in ((4, 7), (0, 4)):
            stream.write((seed, start, 0), want[seed, start:stop])
    stream.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), want)
    store.pack_npz(tmp_path / "p.npz", {"a": tmp_path / "a.npy"}, b=np.array([1, 2]))
    with np.load(tmp_path / "p.npz") as f:
        np.testing.assert_array_equal(f["a"], want)
        np.testing.assert_array_equal(f["b"], [1, 2])
    assert not list(tmp_path.glob(".*tmp*"))


def test_sample_refuses_existing_output_unless_overwrite(trained, tmp_path, capsys):
    out = tmp_path / "s.npz"
    out.write_bytes(b"keep me")
    msg = _error(capsys, ["sample", "--run", str(trained), "--n", "4", "--out", str(out)])
    assert "already exists" in msg and out.read_bytes() == b"keep me"
    # --overwrite replaces only mijax's own samples files
    msg = _error(capsys, ["sample", "--run", str(trained), "--n", "4", "--overwrite", "--out", str(out)])
    assert "not a mijax output" in msg and out.read_bytes() == b"keep me"
    out.unlink()
    assert main(["sample", "--run", str(trained), "--n", "2", "--no-progress", "--out", str(out)]) == 0
    assert main(["sample", "--run", str(trained), "--n", "4", "--no-progress", "--overwrite", "--out", str(out)]) == 0
    assert np.load(out)["x"].shape == (2, 4, 1)


def test_resume_continues_a_killed_run_to_the_same_parameters(trained, tmp_path):
    run = tmp_path / "killed"
    config = runs.load_config(trained)
    runs.train_run(run, config, progress=False, stop_at=10)  # "killed" after the step-10 checkpoint
    assert store.latest_checkpoint(run) == 10 and not (run / "train.json").exists()
    with open(run / "losses.csv", "a") as f:  # rows a killed process appended after its last checkpoint
        f.write("11,9.0,9.0\n12,9.0")
    assert main(["train", *TINY, "--seeds", "2", "--resume", "--out", str(run)]) == 0
    _, _, a = runs.load_run(trained)
    _, _, b = runs.load_run(run)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert store.read_json(run / "losses.json") == store.read_json(trained / "losses.json")
    # every step's loss once, as the uninterrupted run logged it; train.json and the loss curve at the end
    assert (run / "losses.csv").read_text() == (trained / "losses.csv").read_text()
    rows = (trained / "losses.csv").read_text().splitlines()
    steps = config.train.steps
    assert rows[0] == "step,seed_0,seed_1" and [int(r.split(",")[0]) for r in rows[1:]] == list(range(1, steps + 1))
    done = store.read_json(run / "train.json")
    assert done["steps"] == steps and done["steps_this_command"] == steps - 10 and done["steps_per_second"] > 0
    assert done["final_loss"] == store.read_json(trained / "train.json")["final_loss"]
    assert (run / "loss.png").stat().st_size > 1000


def test_resume_refuses_a_different_configuration(trained, capsys):
    msg = _error(capsys, ["train", *TINY, "--seeds", "3", "--resume", "--out", str(trained)])
    assert "made with seeds=2, this command says seeds=3" in msg
    msg = _error(capsys, ["train", "--resume", "--lr", "0.01", "--no-progress", "--out", str(trained)])
    assert "made with lr=0.001, this command says lr=0.01" in msg


def test_resume_needs_only_the_run(trained, tmp_path):
    """`mijax train --resume --out RUN` continues from the run's own config.json, whatever the defaults are."""
    run = tmp_path / "killed"
    runs.train_run(run, runs.load_config(trained), progress=False, stop_at=10)
    assert main(["train", "--resume", "--no-progress", "--out", str(run)]) == 0
    _, _, a = runs.load_run(trained)
    _, _, b = runs.load_run(run)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    assert main(["train", "--resume", "--dataset", "gaussian1d", "--seeds", "2", "--no-progress",
                 "--out", str(run)]) == 0  # options that agree with the run are fine


def test_config_starts_from_a_run_and_options_change_it(trained, tmp_path):
    from mijax.cli import _run_config, build_parser

    made = runs.load_config(trained)
    a = build_parser().parse_args(["train", "--config", str(trained), "--lr", "0.002", "--out", str(tmp_path / "r")])
    config = _run_config(a)
    assert config.train.learning_rate == 0.002 and config.train.steps == made.train.steps
    assert config.data == made.data and config.seeds == made.seeds
    assert _run_config(build_parser().parse_args(["train", "--config", str(trained / "config.json"),
                                                  "--out", str(tmp_path / "r")])) == made


def test_every_option_takes_its_default_from_the_configuration():
    """No option of the command line carries a default of its own: each is None (or off, for a flag) until
    given, and the configuration's field supplies the default (shown in the help from the field)."""
    import argparse

    from mijax import config
    from mijax.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest == "help" or not action.option_strings:
                continue
            flag = action.nargs == 0
            assert action.default is None or (flag and action.default is False), (name, action.option_strings)
    train = subparsers.choices["train"].format_help()
    assert f"(default: {config.TrainConfig.learning_rate:g})" in " ".join(train.split())
    sample = " ".join(subparsers.choices["sample"].format_help().split())
    assert f"(default: {config.SampleConfig.chunk_size})" in sample


def test_seeded_runs_equal_their_vmapped_run(trained, tmp_path):
    """Seed s of a 2-seed run is the model of a 1-seed run with --seed s."""
    single = tmp_path / "single"
    assert main(["train", *TINY, "--seed", "1", "--out", str(single)]) == 0
    _, _, both = runs.load_run(trained)
    _, _, one = runs.load_run(single)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[1], b[0], rtol=1e-4, atol=1e-5), both.params, one.params)


BAD_TRAIN = {
    "unknown data set": (["--dataset", "fashion"], "--dataset: unknown data.dataset 'fashion'; choose from"),
    "empty means": (["--modes", ","], "modes"),
    "nan means": (["--modes", "1,nan,3"], "finite"),
    "infinite means": (["--modes", "1,inf"], "finite"),
    "std zero": (["--std", "0"], "std"),
    "std negative": (["--std", "-0.1"], "std"),
    "timesteps zero": (["--timesteps", "0"], "timesteps"),
    "n-train zero": (["--n-train", "0"], "--n-train: data.n_train must be > 0, got 0"),
    "steps negative": (["--steps", "-5"], "--steps: train.steps must be > 0, got -5"),
    "batch zero": (["--batch-size", "0"], "--batch-size: train.batch_size must be > 0, got 0"),
    "seeds zero": (["--seeds", "0"], "seeds"),
    "unknown schedule": (["--schedule", "sigmoid"], "schedule"),
    "mnist-dir elsewhere": (["--mnist-dir", "/nowhere"], "--mnist-dir applies to --dataset mnist only"),
    "mnist without files": (["--dataset", "mnist"], "--mnist-dir"),
    "mnist missing files": (["--dataset", "mnist", "--mnist-dir", "/nowhere/mnist"], "no MNIST files at /nowhere/mnist"),
}


@pytest.mark.parametrize("name", list(BAD_TRAIN))
def test_bad_train_input(name, tmp_path, capsys):
    extra, expected = BAD_TRAIN[name]
    out = tmp_path / "run"
    msg = _error(capsys, ["train", *TINY, *extra, "--out", str(out)])
    assert expected in msg
    assert not out.exists()


def test_train_refuses_existing_output(trained, tmp_path, capsys):
    before = sorted(p.name for p in trained.iterdir())
    msg = _error(capsys, ["train", *TINY, "--out", str(trained)])
    assert "already exists" in msg and sorted(p.name for p in trained.iterdir()) == before


BAD_SAMPLE = {
    "n zero": (["--n", "0"], "n must be > 0"),
    "n negative": (["--n", "-3"], "n must be > 0"),
    "hal window one": (["--n", "4", "--hal-window", "1"], "--hal-window: sampler.hal_window must be >= 2, got 1"),
    "hal window above T": (["--n", "4", "--hal-window", "31"], "Hal window"),
    "chunk size zero": (["--n", "4", "--chunk-size", "0"], "--chunk-size: sample.chunk_size must be > 0, got 0"),
    "chunk size negative": (["--n", "4", "--chunk-size", "-2"], "sample.chunk_size must be > 0"),
    "unknown detector": (["--n", "4", "--detectors", "hal,foo"], "unknown detector 'foo'"),
    "detector window beyond T": (["--n", "4", "--detectors", "hal@25:10"], "must lie in the sampler's 30 steps"),
    "jac probes zero": (["--n", "4", "--jac-probes", "0"], "sampler.jac_probes must be >= 1, got 0"),
    "abort without threshold": (["--n", "4", "--abort", "hal@5:10"], "--abort takes --abort-threshold or "
                                                                      "--abort-target-rate (one of them)"),
    "abort with both": (["--n", "4", "--abort", "hal@5:10", "--abort-threshold", "1", "--abort-target-rate", "0.1"],
                        "--abort takes --abort-threshold or --abort-target-rate"),
    "threshold without abort": (["--n", "4", "--abort-threshold", "1"], "--abort-threshold, --abort-target-rate and "
                                                                       "--max-redraws apply to --abort only"),
    "delta without target": (["--n", "4", "--abort", "hal@5:10", "--abort-threshold", "1", "--abort-delta", "0.2"],
                             "--abort-delta and --abort-calibration apply to --abort-target-rate only"),
    "target rate above 1": (["--n", "4", "--abort", "hal@5:10", "--abort-target-rate", "1.5"], "--abort-target-rate"),
    "abort at the final sample": (["--n", "4", "--abort", "lid", "--abort-threshold", "1"], "windowed detector"),
    "abort with two detectors": (["--n", "4", "--abort", "hal,xt_var", "--abort-threshold", "1"], "one detector"),
}


@pytest.mark.parametrize("name", list(BAD_SAMPLE))
def test_bad_sample_input(name, trained, tmp_path, capsys):
    extra, expected = BAD_SAMPLE[name]
    out = tmp_path / "s.npz"
    msg = _error(capsys, ["sample", "--run", str(trained), *extra, "--out", str(out)])
    assert expected in msg
    assert not out.exists()


def test_sample_from_a_missing_run(tmp_path, capsys):
    out = tmp_path / "s.npz"
    msg = _error(capsys, ["sample", "--run", str(tmp_path / "nowhere"), "--n", "4", "--out", str(out)])
    assert "does not exist" in msg and not out.exists()


def test_sample_from_a_corrupt_checkpoint(trained, tmp_path, capsys):
    import shutil

    run = tmp_path / "corrupt"
    shutil.copytree(trained, run)
    damaged = 0
    for path in (run / "checkpoints").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
            path.write_bytes(b"\x00garbage" * 4)
            damaged += 1
    assert damaged
    out = tmp_path / "s.npz"
    msg = _error(capsys, ["sample", "--run", str(run), "--n", "4", "--out", str(out)])
    assert "corrupt checkpoint" in msg and not out.exists()


def test_console_script_reports_one_line(tmp_path):
    """The installed entry point: a bad data set exits 2 with one stderr line and no traceback."""
    proc = subprocess.run([sys.executable, "-m", "mijax.cli", "train", "--dataset", "nope", "--out",
                           str(tmp_path / "r")], capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["mijax: error: --dataset: unknown data.dataset 'nope'; choose from "
                                                "gaussian1d, gaussian25, gaussian25_rotated, gaussian8, shapes, digits8, "
                                                "mnist5k, mnist"]
    assert not (tmp_path / "r").exists()


def test_malformed_mnist_files_are_one_line_before_any_output(tmp_path, capsys):
    from mijax.data import digits

    for key, stem in digits.MNIST_FILES.items():
        digits.write_idx(tmp_path / stem, np.zeros((2, 28, 28) if "images" in key else (2,), np.uint8))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03\x00")  # a truncated header
    out = tmp_path / "run"
    msg = _error(capsys, ["train", *TINY, "--dataset", "mnist", "--mnist-dir", str(tmp_path), "--out", str(out)])
    assert "truncated IDX header" in msg and not out.exists()


def test_experiment_set_is_checked_against_the_profile_fields(tmp_path, capsys):
    """A --set of an unknown field or of a value its field does not take is one line naming the key, what it
    takes and the experiment, before anything is written."""
    out = tmp_path / "e"
    for name, argv, line in (
            ("shapes", ["--set", "steps=abc"],
             "--set steps=abc: experiment shapes profile field steps is an integer like 2400, got 'abc'"),
            ("distance-1d", ["--set", "steps=2.5"],
             "--set steps=2.5: experiment distance-1d profile field steps is an integer like 10000, got 2.5"),
            ("distance-1d", ["--profile", "paper", "--set", "learning_rate=fast"],
             "--set learning_rate=fast: experiment distance-1d profile: learning_rate must be a finite number, "
             "got 'fast'"),
            ("detectors", ["--set", "cost_each=maybe"],
             "--set cost_each=maybe: experiment detectors profile field cost_each is true or false "
             "(true/True/yes/1 or false/False/no/0), got 'maybe'"),
            ("recursive-1d", ["--set", "generations=0"],
             "--set generations=0: experiment recursive-1d profile: generations must be > 0, got 0"),
            ("recursive-shapes", ["--set", "filters=[\"best\"]"],
             "--set filters=[\"best\"]: experiment recursive-shapes profile: unknown filters 'best'; choose from none, "
             "random, variance, threshold, certified")):
        msg = _error(capsys, ["experiment", name, "--no-progress", "--out", str(out), *argv])
        assert msg == f"mijax: error: {line}"
    msg = _error(capsys, ["experiment", "score", "--out", str(out), "--set", "stepz=3"])
    assert msg.startswith("mijax: error: --set stepz=3: experiment score profile has no field stepz; its fields are ")
    assert "grid_points" in msg
    for argv, words in ((["--set", "seeds=2"], "use --seeds"), (["--set", "steps"], "KEY=VALUE")):
        assert words in _error(capsys, ["experiment", "distance-1d", "--out", str(out), *argv])
    assert "not `all`" in _error(capsys, ["experiment", "all", "--out", str(out), "--set", "steps=3"])
    assert not out.exists()  # refused before anything was written


def test_experiment_set_converts_to_the_field_types(tmp_path, monkeypatch):
    from mijax.experiments import detectors, distance_1d, interp_1d, shapes

    seen = {}
    for module in (detectors, distance_1d, interp_1d, shapes):
        monkeypatch.setattr(module, "run", lambda target, **kw: seen.update(kw) or {})
    for name, argv, overrides in (
            ("distance-1d", ["--set", "steps=7", "--set", "learning_rate=1"], {"steps": 7, "learning_rate": 1.0}),
            ("distance-1d", ["--profile", "paper", "--set", "grad_clip=2"], {"grad_clip": 2.0}),
            ("shapes", ["--set", "windows=[[0, 10], [5, 20]]"], {"windows": ((0, 10), (5, 20))}),
            ("interp-1d", ["--profile", "smoke", "--set", "sizes=400,600"], {"sizes": (400, 600)}),
            ("detectors", ["--set", "cost_each=no", "--set", "abort_retentions=[0.9, 1]",
                           "--set", "image_samples=null"],
             {"cost_each": False, "abort_retentions": (0.9, 1.0), "image_samples": None})):
        seen.clear()
        assert main(["experiment", name, "--no-progress", "--out", str(tmp_path / name), *argv]) == 0
        assert seen["overrides"] == overrides and seen["profile"] == ("quick" if "--profile" not in argv else argv[1])
        assert [type(v) for v in seen["overrides"].values()] == [type(v) for v in overrides.values()]
    assert isinstance(seen["overrides"]["abort_retentions"][1], float)


def test_experiment_takes_the_sampler_options_and_refuses_what_it_cannot_draw(tmp_path, monkeypatch, capsys):
    """mijax experiment takes mijax sample's reverse-sampler options (not Hal's) with the same checks, sets them
    around the run, and refuses them for the experiments that draw with DDPM only (left out of `all`), before
    any work; a finished experiment of `all` drawn with another sampler is not reused."""
    from mijax import experiments
    from mijax.experiments import common

    seen = []
    for name in experiments.names():
        monkeypatch.setattr(experiments.load(name), "run",
                            lambda target, name=name, **kw: seen.append((name, common.chosen_sampler())) or {})
    out = str(tmp_path / "e")
    for argv, chosen in ((["--sampler", "ddim", "--ddim-steps", "5", "--eta", "0.5"],
                          {"sampler": "ddim", "ddim_steps": 5, "eta": 0.5}),
                         (["--stochastic-steps", "2", "--sampler", "ddim", "--stochastic-at", "last"],
                          {"sampler": "ddim", "stochastic_steps": 2, "stochastic_at": "last"}),
                         (["--sampler", "ddim", "--stochastic-steps", "2", "--stochastic-at", "window",
                           "--stochastic-from", "20"],
                          {"sampler": "ddim", "stochastic_steps": 2, "stochastic_at": "window", "stochastic_from": 20}),
                         (["--sampler", "ddpm", "--variance", "fixed_large"], {}),  # the defaults: as published
                         ([], {})):
        seen.clear()
        assert main(["experiment", "distance-1d", "--profile", "smoke", "--overwrite", "--out", out, *argv]) == 0
        assert seen == [("distance-1d", chosen)] and common.chosen_sampler() == {}
    for name, argv, line in (
            ("distance-1d", ["--eta", "0.5"], "--eta, --stochastic-steps, --stochastic-at and --stochastic-from apply "
                                              "to --sampler ddim only (--sampler ddpm ignores them)"),
            ("distance-1d", ["--sampler", "ddim", "--stochastic-steps", "2", "--stochastic-at", "window"],
             "--stochastic-at window takes --stochastic-steps K and --stochastic-from T"),
            ("samplers", ["--sampler", "ddim"], "experiment samplers does not take --sampler ddim: it sweeps the "
                                                "samplers itself"),
            ("distance-1d", ["--sampler", "heun", "--variance", "fixed_small"], "--variance applies to DDPM's steps "
                                                                                "only"),
            ("distance-1d", ["--ddim-steps", "5"], "--ddim-steps and --skip apply to the step-skipping samplers"),
            ("distance-1d", ["--sampler", "ddim", "--ddim-steps", "0"],
             "--ddim-steps: sampler.ddim_steps must be > 0, got 0"),
            ("distance-1d", ["--sampler", "ddim", "--ddim-steps", "41"],
             "experiment distance-1d: --sampler ddim --ddim-steps 41 at T = 40: ddim steps must be in 1..40, got 41"),
            ("distance-1d", ["--hal-window", "5"], "unrecognized arguments: --hal-window 5"),
            ("score", ["--sampler", "ddim"], "experiment score does not take --sampler ddim: it compares the trained "
                                             "denoiser with the exact one through the published DDPM on purpose"),
            ("detectors", ["--sampler", "ddim"], "experiment detectors does not take --sampler ddim: its "
                                                 "abort-and-resample study redraws with DDPM"),
            ("mitigations", ["--sampler", "ddim"], "experiment mitigations does not take --sampler ddim: its "
                                                   "baseline is DDPM over all steps")):
        msg = _error(capsys, ["experiment", name, "--profile", "smoke", "--out", str(tmp_path / "refused"), *argv])
        assert msg.startswith(f"mijax: error: {line}"), msg
    assert not (tmp_path / "refused").exists()
    seen.clear()  # without its abort study, detectors draws with the chosen sampler
    assert main(["experiment", "detectors", "--profile", "smoke", "--set", "abort_samples=0", "--out", out,
                 "--overwrite", "--sampler", "dpmpp2m"]) == 0
    assert seen == [("detectors", {"sampler": "dpmpp2m"})]
    seen.clear()
    capsys.readouterr()
    assert main(["experiment", "all", "--profile", "smoke", "--out", str(tmp_path / "all"), "--sampler", "heun"]) == 0
    printed = capsys.readouterr().out
    assert "score: left out, it does not take --sampler heun" in printed and "detectors: left out" in printed
    left_out = ("score", "samplers", "detectors", "mitigations")
    assert [name for name, _ in seen] == [n for n in experiments.names() if n not in left_out]
    assert all(chosen == {"sampler": "heun"} for _, chosen in seen)
    store.write_json(tmp_path / "all" / "interp-1d" / "metrics.json", {"sampler": {"sampler": "heun"}})
    msg = _error(capsys, ["experiment", "all", "--profile", "smoke", "--out", str(tmp_path / "all")])
    assert msg == (f"mijax: error: interp-1d finished earlier in {tmp_path / 'all' / 'interp-1d'} with another "
                   "sampler (--sampler heun); pass --overwrite to rerun it, or choose another --out")


def test_experiment_list_names_each_experiments_profiles(capsys, monkeypatch):
    from mijax import experiments

    assert main(["experiment", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == experiments.names()
    # every experiment's profiles, the quick one with its measured time (each module's QUICK_MINUTES)
    assert all(isinstance(experiments.load(name).QUICK_MINUTES, (int, float)) for name in experiments.names())
    assert all(re.search(r"\(profiles: smoke, quick (~\d+ min|under 1 min) on 2 cores[^,]*, paper(, \w+)*\)$", line)
               for line in lines), lines
    line = dict(zip(experiments.names(), lines))
    assert line["samplers"].endswith("(profiles: smoke, quick ~17 min on 2 cores, paper, peer)")  # 16 min 54 s
    assert line["grid-2d"].endswith("(profiles: smoke, quick ~11 min on 2 cores, paper)")
    assert line["detection"].endswith("(profiles: smoke, quick under 1 min on 2 cores reusing the models of interp-1d "
                                      "and grid-2d, paper)")
    # an experiment without a measurement: its profiles alone
    monkeypatch.setattr(experiments.load("grid-2d"), "QUICK_MINUTES", None)
    assert main(["experiment", "--list"]) == 0
    line = dict(zip(experiments.names(), capsys.readouterr().out.splitlines()))
    assert line["grid-2d"].endswith("(profiles: smoke, quick, paper)")
    assert "grid-2d has no profile 'peer'" in _error(capsys, ["experiment", "grid-2d", "--profile", "peer", "--out",
                                                              "unused"])


def test_sampling_a_run_reads_its_configuration_once_and_builds_once(trained, monkeypatch):
    """One Run: config.json read once; the data set, the model and the schedule built once."""
    from mijax import config as config_lib
    from mijax import data, models

    counts = {"config.json": 0, "data set": 0, "model": 0, "schedule": 0}

    def counting(name, fn, path=None):
        def wrapped(*args, **kwargs):
            if path is None or str(args[0]).endswith(path):
                counts[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(runs, "read_json", counting("config.json", runs.read_json, "config.json"))
    monkeypatch.setattr(data, "make", counting("data set", data.make))
    monkeypatch.setattr(models, "build", counting("model", models.build))
    monkeypatch.setattr(config_lib, "make_run_schedule", counting("schedule", config_lib.make_run_schedule))
    got = runs.sample_run(trained, 8, sampler=mijax.SamplerConfig(hal_reduction="max"))
    assert got["x"].shape == (2, 8, 1)
    assert counts == {"config.json": 1, "data set": 1, "model": 1, "schedule": 1}


def test_sample_with_every_sampler(trained, tmp_path, capsys):
    for i, options in enumerate((["--sampler", "heun", "--ddim-steps", "8"], ["--sampler", "dpmpp2m", "--ddim-steps", "8"],
                    ["--sampler", "ddim", "--ddim-steps", "8", "--skip", "quad", "--stochastic-steps", "2",
                     "--stochastic-at", "last", "--variance", "fixed_small"],
                    ["--sampler", "ddim", "--ddim-steps", "8", "--stochastic-steps", "3", "--stochastic-at", "window",
                     "--stochastic-from", "15"])):
        out = tmp_path / f"{i}.npz"
        assert main(["sample", "--run", str(trained), "--n", "8", "--hal-window", "3", "--no-progress", *options,
                     "--out", str(out)]) == 0
        with np.load(out) as f:
            assert f["x"].shape == (2, 8, 1) and np.all(np.isfinite(f["x"]))
    msg = _error(capsys, ["sample", "--run", str(trained), "--n", "8", "--sampler", "heun", "--eta", "0.5",
                          "--out", str(tmp_path / "bad.npz")])
    assert "--sampler ddim only" in msg and not (tmp_path / "bad.npz").exists()
