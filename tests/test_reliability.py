"""Nothing a user types destroys data, crashes the interpreter or passes a failure off as success.

One table per class of defect (issue 11): each row is an input of that class, run through the command line
in this process (exit status, one line on stderr, nothing written or destroyed) and, where the process
itself matters (tracebacks from other threads, signals, segfaults at exit), in a subprocess.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mijax import store
from mijax.errors import MijaxError
from mijax.cli import build_parser, main

TINY = ["--dataset", "gaussian1d", "--modes", "1,2", "--n-train", "64", "--steps", "4", "--batch-size", "32",
        "--timesteps", "20", "--steps-per-call", "2", "--checkpoint-every", "2", "--no-progress"]
RECURSIVE = TINY + ["--generations", "2", "--filters", "none,variance", "--pool-extra", "16", "--chunk-size", "64"]


def _one_line_error(capsys, code, *fragments):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("mijax: error: "), captured.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _snapshot(path: Path) -> dict:
    """Every file under ``path`` with its bytes (what must survive a refused command)."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rel") / "run"
    assert main(["train", *TINY, "--seeds", "2", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def samples(run):
    out = run.parent / "samples.npz"
    assert main(["sample", "--run", str(run), "--n", "16", "--no-progress", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------------------------------------
# 1. --overwrite replaces only mijax's own outputs of the same kind, and only once the new one is complete.

def _user_folder(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious")
    return folder


@pytest.mark.parametrize("command", ["train", "recursive", "demo", "experiment", "sample-dir"])
def test_overwrite_never_touches_what_mijax_did_not_write(command, tmp_path, capsys, run):
    folder = _user_folder(tmp_path)
    before = _snapshot(folder)
    argv = {"train": ["train", *TINY, "--overwrite", "--out", str(folder)],
            "recursive": ["recursive", *RECURSIVE, "--overwrite", "--out", str(folder)],
            "demo": ["demo", "--overwrite", "--no-progress", "--out", str(folder)],
            "experiment": ["experiment", "distance-1d", "--overwrite", "--no-progress", "--out", str(folder)],
            "sample-dir": ["sample", "--run", str(run), "--n", "8", "--overwrite", "--out", str(folder)]}[command]
    _one_line_error(capsys, main(argv))
    assert _snapshot(folder) == before


def test_overwrite_of_the_working_directory_is_refused(tmp_path, capsys, monkeypatch):
    folder = _user_folder(tmp_path)
    monkeypatch.chdir(folder)
    _one_line_error(capsys, main(["train", *TINY, "--overwrite", "--out", "."]), "not a mijax output")
    assert (folder / "chapter1.tex").read_text() == "precious"


@pytest.mark.parametrize("content", [b"not a zip", None])
def test_sample_overwrite_refuses_files_that_are_not_mijax_samples(content, tmp_path, capsys, run):
    target = tmp_path / "data.npz"
    if content is None:
        np.savez(target, weights=np.arange(3))  # someone else's npz
    else:
        target.write_bytes(content)
    before = target.read_bytes()
    _one_line_error(capsys, main(["sample", "--run", str(run), "--n", "8", "--overwrite", "--out", str(target)]),
                    "not a mijax output")
    assert target.read_bytes() == before


@pytest.mark.parametrize("bad", [["--seed", "-1"], ["--seed", str(2**32)], ["--lr", "nan"], ["--timesteps", "1"],
                                 ["--batch-size", "1000"]])
def test_overwrite_with_a_bad_option_leaves_the_old_run(bad, run, capsys):
    before = _snapshot(run)
    _one_line_error(capsys, main(["train", *TINY, "--seeds", "2", "--overwrite", "--out", str(run), *bad]))
    assert _snapshot(run) == before


def test_overwrite_replaces_a_run_and_samples(tmp_path, samples, capsys):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["train", *TINY, "--seed", "5", "--out", str(out), "--overwrite"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 5
    assert store.kind_of(out) == "run" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    copy = tmp_path / "s.npz"
    copy.write_bytes(samples.read_bytes())
    assert main(["sample", "--run", str(out), "--n", "8", "--no-progress", "--overwrite", "--out", str(copy)]) == 0
    assert np.load(copy)["x"].shape == (1, 8, 1)


# ---------------------------------------------------------------------------------------------
# 2. and 4. Bad input is one line, before any work; every number is checked for range and finiteness.

TRAIN_INPUTS = {
    "negative seed": ["--seed", "-1"],
    "seed of 2^32": ["--seed", str(2**32)],
    "seed + seeds past 2^32": ["--seed", str(2**32 - 1), "--seeds", "2"],
    "lr nan": ["--lr", "nan"],
    "lr inf": ["--lr", "inf"],
    "std nan": ["--std", "nan"],
    "std inf": ["--std", "inf"],
    "beta start inf": ["--beta-start", "inf"],
    "beta end nan": ["--beta-end", "nan"],
    "empty mode": ["--modes", "1,,2"],
    "trailing comma": ["--modes", "1,2,"],
    "one timestep": ["--timesteps", "1"],
    "negative warm-up": ["--warmup-steps", "-1"],
    "gradient clipping inf": ["--grad-clip", "inf"],
    "negative gradient clipping": ["--grad-clip", "-1"],
    "lr-final above 1": ["--lr-decay", "cosine", "--lr-final", "2"],
    "t-power zero": ["--t-power", "0"],
    "t-power nan": ["--t-power", "nan"],
    "modes of a grid": ["--dataset", "gaussian25", "--modes", "1,2"],
}


@pytest.mark.parametrize("name", list(TRAIN_INPUTS))
def test_bad_train_input_is_one_line_and_writes_nothing(name, tmp_path, capsys):
    out = tmp_path / "never"
    _one_line_error(capsys, main(["train", *TINY, "--out", str(out), *TRAIN_INPUTS[name]]))
    assert not out.exists() and list(tmp_path.iterdir()) == []


SAMPLE_INPUTS = {
    "negative seed": ["--seed", "-1"],
    "seed of 2^32 + 1 (would wrap to 1)": ["--seed", str(2**32 + 1)],
    "seed of 2^63": ["--seed", str(2**63)],
    "eta nan": ["--sampler", "ddim", "--eta", "nan"],
    "eta inf": ["--sampler", "ddim", "--eta", "inf"],
    "eta with ddpm": ["--eta", "0.5"],
    "ddim steps with ddpm": ["--ddim-steps", "10"],
    "hal window 1": ["--hal-window", "1"],
    "chunk size 0": ["--chunk-size", "0"],
    "variance with ddim": ["--sampler", "ddim", "--variance", "fixed_small"],
    "max redraws without abort": ["--max-redraws", "5"],
    "hal top k without the top_k reduction": ["--hal-top-k", "4"],
    "out without the .npz suffix": ["--out", "xo"],
}


@pytest.mark.parametrize("name", list(SAMPLE_INPUTS))
def test_bad_sample_input_is_one_line_and_writes_nothing(name, run, tmp_path, capsys):
    out = tmp_path / "s.npz"
    _one_line_error(capsys, main(["sample", "--run", str(run), "--n", "8", "--out", str(out), *SAMPLE_INPUTS[name]]))
    assert list(tmp_path.iterdir()) == []


RECURSIVE_INPUTS = {
    "pool ratio inf": ["--pool-ratio", "inf"],
    "pool ratio nan": ["--pool-ratio", "nan"],
    "threshold keep nan": ["--threshold-keep", "nan"],
    "certified alpha 0": ["--certified-alpha", "0"],
    "certified delta nan": ["--certified-delta", "nan"],
    "resume (recursive resumes by rerunning)": ["--resume"],
    "unknown filter": ["--filters", "none,best"],
}


@pytest.mark.parametrize("name", list(RECURSIVE_INPUTS))
def test_bad_recursive_input_is_one_line_and_writes_nothing(name, tmp_path, capsys):
    out = tmp_path / "study"
    _one_line_error(capsys, main(["recursive", *RECURSIVE, "--out", str(out), *RECURSIVE_INPUTS[name]]))
    assert list(tmp_path.iterdir()) == []


def test_bench_refuses_unknown_measurements(capsys):
    _one_line_error(capsys, main(["bench", "--quick", "--skip", "bogus"]), "bogus")


OUTPUT_CASES = ["sample into a directory", "parent is a file", "train into a file", "bench report into a directory"]


@pytest.mark.parametrize("case", OUTPUT_CASES)
def test_outputs_that_cannot_be_written_are_refused_before_work(case, run, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "dir").mkdir()
    argv = {"sample into a directory": ["sample", "--run", str(run), "--n", "8", "--out", str(tmp_path / "dir")],
            "parent is a file": ["sample", "--run", str(run), "--n", "8", "--out", str(tmp_path / "file.txt" / "s.npz")],
            "train into a file": ["train", *TINY, "--out", str(tmp_path / "file.txt")],
            "bench report into a directory": ["bench", "--quick", "--json-out", str(tmp_path / "dir")]}[case]
    line = _one_line_error(capsys, main(argv))
    assert "--resume" not in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file.txt"] and not any((tmp_path / "dir").iterdir())


@pytest.mark.parametrize("command", ["train", "sample", "recursive", "demo", "experiment"])
def test_an_immutable_directory_is_refused_before_work(command, run, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        argv = {"train": ["train", *TINY, "--out", str(locked / "r")],
                "sample": ["sample", "--run", str(run), "--n", "8", "--out", str(locked / "s.npz")],
                "recursive": ["recursive", *RECURSIVE, "--out", str(locked / "study")],
                "demo": ["demo", "--no-progress", "--out", str(locked / "demo")],
                "experiment": ["experiment", "distance-1d", "--no-progress", "--out", str(locked / "e")]}[command]
        _one_line_error(capsys, main(argv), "cannot write")
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert list(locked.iterdir()) == []


CONFIGS = {"null": None, "a list": [1, 2], "seeds as text": "two", "n_train as text": "many",
           "a float step count": 4.5, "unknown model option": "width"}


@pytest.mark.parametrize("case", list(CONFIGS))
def test_a_damaged_config_is_one_line(case, run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    if case in ("null", "a list"):
        config = CONFIGS[case]
    elif case == "seeds as text":
        config["seeds"] = "two"
    elif case == "n_train as text":
        config["data"]["n_train"] = "many"
    elif case == "a float step count":
        config["train"]["steps"] = 4.5
    else:
        config["model"]["options"]["depth"] = 3
    (copy / "config.json").write_text(json.dumps(config))
    _one_line_error(capsys, main(["sample", "--run", str(copy), "--n", "8", "--out", str(tmp_path / "s.npz")]))
    assert not (tmp_path / "s.npz").exists()


def test_a_config_that_does_not_match_its_checkpoint_is_named_so_without_stray_tracebacks(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    config["model"]["options"]["width"] = 32
    (copy / "config.json").write_text(json.dumps(config))
    for _ in range(2):  # the checkpoint library's threads printed tracebacks only sometimes
        proc = subprocess.run([sys.executable, "-m", "mijax.cli", "sample", "--run", str(copy), "--n", "8",
                               "--out", str(tmp_path / "s.npz")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        lines = [line for line in proc.stderr.strip().splitlines() if line]
        assert len(lines) == 1 and "does not match" in lines[0] and "corrupt" not in lines[0], proc.stderr


# ---------------------------------------------------------------------------------------------
# 3. A diverging training stops with the step it diverged at and keeps its last finite checkpoint.

def test_a_diverging_training_is_an_error_that_names_the_step(tmp_path, capsys):
    out = tmp_path / "huge"
    line = _one_line_error(capsys, main(["train", *TINY, "--modes", "1e30,2e30", "--out", str(out)]),
                           "not finite", "step")
    assert "checkpoint" in line
    assert not (out / "train.json").exists()
    for path in out.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))


# ---------------------------------------------------------------------------------------------
# 6. Resume and provenance.

def test_resume_without_a_config_is_refused(run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "config.json").unlink()
    before = _snapshot(copy)
    _one_line_error(capsys, main(["train", *TINY, "--seeds", "2", "--resume", "--out", str(copy)]), "config.json")
    assert _snapshot(copy) == before


def test_samples_record_their_run_and_step_and_warn_when_unfinished(run, samples, tmp_path, capsys):
    with np.load(samples) as f:
        assert Path(str(f["run"])) == run.resolve() and int(f["step"]) == 4
        assert json.loads(str(f["config"]))["seeds"] == 2
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "train.json").unlink()  # as if killed before the end
    with pytest.warns(UserWarning, match="has not finished training"):
        assert main(["sample", "--run", str(copy), "--n", "8", "--no-progress", "--out", str(tmp_path / "s.npz")]) == 0


# ---------------------------------------------------------------------------------------------
# 5. Interrupts: Ctrl-C and SIGTERM end cleanly, with their temporaries removed; a killed run's are cleaned.

def _interrupt(argv, sig, tmp_path, wait_for):
    proc = subprocess.Popen([sys.executable, "-m", "mijax.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while not wait_for() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_during_sampling_exit_cleanly_without_temporaries(run, tmp_path, sig, code):
    out = tmp_path / "s.npz"
    parts = lambda: list(tmp_path.glob(".s.npz.mijax-*.parts"))  # noqa: E731 - sampling has begun
    status, err = _interrupt(["sample", "--run", str(run), "--n", "200000", "--chunk-size", "1024",
                              "--no-progress", "--out", str(out)], sig, tmp_path, parts)
    assert status == code, err
    assert err.strip().splitlines() == ["mijax: interrupted" if sig == signal.SIGINT else "mijax: terminated"], err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_training_keeps_a_resumable_run(tmp_path):
    out = tmp_path / "r"
    argv = ["train", *TINY, "--steps", "100000", "--out", str(out)]
    status, err = _interrupt(argv, signal.SIGINT, tmp_path, lambda: (out / "losses.json").exists())
    assert status == 130 and err.strip().splitlines() == ["mijax: interrupted"], err
    assert not [p for p in out.rglob("*") if ".mijax-" in p.name]
    assert store.kind_of(out) == "run"


def test_temporaries_of_a_killed_run_are_cleaned_by_the_next(run, tmp_path):
    stale = tmp_path / ".s.npz.mijax-999999999-abc.parts"  # no such process
    stale.mkdir()
    (stale / "x.npy").write_bytes(b"0" * 1000)
    mine = tmp_path / f".s.npz.mijax-{os.getpid()}-abc.parts"  # a live process's: left alone
    mine.mkdir()
    assert main(["sample", "--run", str(run), "--n", "8", "--no-progress", "--out", str(tmp_path / "s.npz")]) == 0
    assert not stale.exists() and mine.exists()


# ---------------------------------------------------------------------------------------------
# 7. Help.

def test_every_option_has_help_and_shows_its_default_once():
    import argparse

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())  # argparse wraps lines
        for empty in ("(default: None)", "(default: [])", "(default: False)"):
            assert empty not in text, f"mijax {name}: {empty}"
        for action in sub._actions:
            if action.dest == "help" or not action.option_strings:
                continue
            assert action.help, f"mijax {name} {action.option_strings[0]} has no help"
            said = "default" in action.help or "(None:" in action.help
            if action.default not in (None, False, [], argparse.SUPPRESS) and not said:
                assert f"(default: {action.default})" in text, f"mijax {name} {action.option_strings[0]}"
            if said:  # the help's own words, not argparse's too
                assert f"{' '.join(action.help.split())} (default:" not in text, f"mijax {name} {action.option_strings[0]}"


def test_mijax_version(capsys):
    from mijax.version import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"mijax {__version__}"


def test_run_files_are_strict_json_and_marked(run, samples):
    for path in run.rglob("*.json"):
        json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path} holds {c}"))
    assert store.read_json(run / ".mijax")["kind"] == "run"
    assert store.kind_of(samples) == "samples" and store.kind_of(run.parent) is None


@pytest.mark.parametrize("case, fragment", [("a file", "is not a run directory"), ("missing", "does not exist"),
                                            ("no config", "not a mijax run")])
def test_a_run_that_is_not_one_is_named_so(case, fragment, tmp_path, capsys):
    target = tmp_path / "r"
    if case == "a file":
        target.write_text("x")
    elif case == "no config":
        target.mkdir()
    line = _one_line_error(capsys, main(["sample", "--run", str(target), "--n", "4", "--out", str(tmp_path / "s.npz")]),
                           fragment)
    assert "corrupt" not in line and not (tmp_path / "s.npz").exists()


# ---------------------------------------------------------------------------------------------
# 8. --overwrite replaces only an output holding nothing but what its kind writes (mijax.store.OWNED).

def _output_of(kind, run, tmp_path):
    """A finished-looking output of ``kind`` at tmp_path / "uo" (a copy of the run fixture for a run)."""
    import shutil

    out = tmp_path / "uo"
    if kind == "run":
        shutil.copytree(run, out)
    else:
        store.mark(out, kind)
        (out / "metrics.json").write_text("{}")
    return out


OVERWRITE_FOREIGN = {
    "run": lambda out, run: ["train", *TINY, "--seeds", "2", "--overwrite", "--out", str(out)],
    "study": lambda out, run: ["recursive", *RECURSIVE, "--overwrite", "--out", str(out)],
    "demo": lambda out, run: ["demo", "--overwrite", "--no-progress", "--out", str(out)],
    "experiment": lambda out, run: ["experiment", "distance-1d", "--overwrite", "--no-progress", "--out", str(out)],
}


@pytest.mark.parametrize("kind", list(OVERWRITE_FOREIGN))
def test_overwrite_refuses_an_output_holding_the_users_entries(kind, run, tmp_path, capsys):
    out = _output_of(kind, run, tmp_path)
    (out / "notes.txt").write_text("notes")
    (out / "analysis").mkdir()
    (out / "analysis" / "plot.py").write_text("print(1)")
    before = _snapshot(out)
    _one_line_error(capsys, main(OVERWRITE_FOREIGN[kind](out, run)), "notes.txt", "analysis/")
    assert _snapshot(out) == before and store.kind_of(out) == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["uo"]


def test_overwrite_of_a_run_holding_only_its_own_entries_still_replaces_it(run, tmp_path):
    out = _output_of("run", run, tmp_path)
    (out / "samples-hal-0123456789.npz").write_bytes(b"cached samples")  # the experiments' cache: the run's
    assert main(["train", *TINY, "--seed", "3", "--overwrite", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 3
    assert not (out / "samples-hal-0123456789.npz").exists()


def test_an_experiments_output_holds_its_runs_and_the_experiment_outputs_in_it(tmp_path):
    """``mijax experiment all`` writes ``runs/`` and one experiment output per folder; anything else is not its
    own, a folder named like an experiment that is no mijax experiment output included."""
    out = tmp_path / "all"
    store.mark(out, "experiments")
    (out / "runs").mkdir()
    store.mark(out / "grid-2d", "experiment")
    (out / "score").mkdir()
    (out / "notes.txt").write_text("notes")
    assert store.foreign(out, "experiments") == ["notes.txt", "score/"]


# ---------------------------------------------------------------------------------------------
# 9. One process per output: the second is refused from the check on (mijax.store.lock).

def _hold(out: Path, pid: int = 4242) -> int:
    """Take the output's lock as another process would (a descriptor of its own), with ``pid`` written."""
    import fcntl

    fd = os.open(store.lock_path(out), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{pid}\n".encode())
    return fd


IN_USE = {
    "train": lambda out, run: ["train", *TINY, "--out", str(out)],
    "train --overwrite": lambda out, run: ["train", *TINY, "--seeds", "2", "--overwrite", "--out", str(run)],
    "sample --out": lambda out, run: ["sample", "--run", str(run), "--n", "8", "--out", str(out) + ".npz"],
    "recursive": lambda out, run: ["recursive", *RECURSIVE, "--out", str(out)],
    "demo": lambda out, run: ["demo", "--no-progress", "--out", str(out)],
    "experiment": lambda out, run: ["experiment", "distance-1d", "--no-progress", "--out", str(out)],
}


@pytest.mark.parametrize("case", list(IN_USE))
def test_an_output_in_use_by_another_process_is_refused(case, run, tmp_path, capsys):
    out = tmp_path / "o"
    argv = IN_USE[case](out, run)
    target = Path(argv[argv.index("--out") + 1])
    before = _snapshot(run)
    fd = _hold(target)
    try:
        _one_line_error(capsys, main(argv), "in use by another mijax process (pid 4242)")
    finally:
        os.close(fd)
    assert not out.exists() and not Path(str(out) + ".npz").exists() and _snapshot(run) == before


def test_an_output_in_use_by_a_live_process_is_refused_and_free_once_it_ends(tmp_path, capsys):
    out = tmp_path / "r"
    script = ("import sys, time; from mijax import store\n"
              "with store.lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        _one_line_error(capsys, main(["train", *TINY, "--out", str(out)]), f"(pid {holder.pid})")
        assert not out.exists()
    finally:
        holder.kill()  # the kernel releases its lock; the lock file it leaves does not block
        holder.wait()
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


# ---------------------------------------------------------------------------------------------
# 10. Bad input found only once the data set is built ends before anything is made; a command that fails
# after making a fresh output removes it (unless it saved a checkpoint there).

HALF_MADE = {
    "digits8 beyond its 1,438 training digits": ["train", "--dataset", "digits8", "--n-train", "5000"],
    "shapes with 5 images": ["train", "--dataset", "shapes", "--data-option", "num_images=5", "--n-train", "10"],
    "recursive on digits8 beyond its size": ["recursive", "--dataset", "digits8", "--n-train", "5000",
                                             "--generations", "1"],
}


@pytest.mark.parametrize("case", list(HALF_MADE))
def test_a_data_set_too_small_is_refused_before_anything_is_made(case, tmp_path, capsys):
    out = tmp_path / "o"
    argv = HALF_MADE[case] + ["--steps", "1", "--batch-size", "2", "--timesteps", "20", "--no-progress",
                              "--out", str(out)]
    _one_line_error(capsys, main(argv), "exceeds")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("existed", [False, True])
def test_a_failure_after_the_output_is_made_removes_only_a_fresh_one(existed, run, tmp_path, capsys, monkeypatch):
    import shutil

    from mijax import runs

    out = tmp_path / "r"
    if existed:
        shutil.copytree(run, out)
    before = _snapshot(out) if existed else None

    def fail(*args, **kwargs):
        raise MijaxError("the data set cannot be read")

    monkeypatch.setattr(runs, "training_data", fail)
    argv = ["train", *TINY, "--seeds", "2", "--out", str(out)] + (["--resume"] if existed else [])
    _one_line_error(capsys, main(argv), "cannot be read")
    if existed:
        assert _snapshot(out) == before
    else:
        assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 11. Windows of bad luck.

def test_a_run_left_between_the_two_renames_of_a_replacement_is_restored(run, tmp_path, capsys):
    import shutil

    out = tmp_path / "r"
    shutil.copytree(run, tmp_path / ".r.mijax-999999999-old")  # killed after `r` -> old, before new -> `r`
    shutil.copytree(run, tmp_path / ".r.mijax-999999999-new")
    before = _snapshot(run)
    assert main(["sample", "--run", str(out), "--n", "8", "--no-progress", "--out", str(tmp_path / "s.npz")]) == 0
    assert _snapshot(out) == before
    assert main(["train", *TINY, "--seeds", "2", "--resume", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r", "s.npz"]


def test_the_old_output_of_a_completed_replacement_is_removed(run, tmp_path):
    import shutil

    out = tmp_path / "r"
    shutil.copytree(run, out)
    shutil.copytree(run, tmp_path / ".r.mijax-999999999-old")  # killed after both renames
    assert main(["train", *TINY, "--seeds", "2", "--resume", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"] and store.kind_of(out) == "run"


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_overwrite_swaps_leave_only_the_new_output(swap, tmp_path, monkeypatch):
    if swap == "two renames":
        monkeypatch.setattr(store, "exchange", lambda a, b: False)
    out = tmp_path / "r"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert main(["train", *TINY, "--seed", "7", "--overwrite", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]


def test_overwrite_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    real, link = tmp_path / "real", tmp_path / "link"
    assert main(["train", *TINY, "--out", str(real)]) == 0
    link.symlink_to(real)
    assert main(["train", *TINY, "--seed", "9", "--overwrite", "--out", str(link)]) == 0
    assert link.is_symlink() and link.resolve() == real.resolve()
    assert json.loads((real / "config.json").read_text())["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


INSIDE = {
    "train into a run's checkpoints": lambda run, tmp: ["train", *TINY, "--out", str(run / "checkpoints" / "99")],
    "train beside a run's files": lambda run, tmp: ["train", *TINY, "--out", str(run / "other")],
    "recursive": lambda run, tmp: ["recursive", *RECURSIVE, "--out", str(run / "study")],
    "demo": lambda run, tmp: ["demo", "--no-progress", "--out", str(run / "demo")],
    "experiment": lambda run, tmp: ["experiment", "distance-1d", "--no-progress", "--out", str(run / "e")],
}


@pytest.mark.parametrize("case", list(INSIDE))
def test_an_output_inside_another_mijax_output_is_refused(case, run, tmp_path, capsys):
    before = _snapshot(run)
    _one_line_error(capsys, main(INSIDE[case](run, tmp_path)), "inside the mijax run")
    assert _snapshot(run) == before
    assert main(["sample", "--run", str(run), "--n", "8", "--no-progress", "--out", str(tmp_path / "s.npz")]) == 0


NOT_UTF8 = {
    "train --out": lambda tmp, run: ["train", *TINY, "--out", str(tmp / "r\udcff")],
    "sample --out": lambda tmp, run: ["sample", "--run", str(run), "--n", "8", "--out", str(tmp / "s\udcff.npz")],
    "sample --run": lambda tmp, run: ["sample", "--run", str(tmp / "r\udcff"), "--n", "8", "--out", str(tmp / "s.npz")],
    "recursive --out": lambda tmp, run: ["recursive", *RECURSIVE, "--out", str(tmp / "r\udcff")],
}


@pytest.mark.parametrize("case", list(NOT_UTF8))
def test_a_path_that_is_not_utf8_is_one_line_before_any_work(case, run, tmp_path, capsys):
    _one_line_error(capsys, main(NOT_UTF8[case](tmp_path, run)), "not valid UTF-8", "\\xff")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_demo_continues_when_rerun(tmp_path, monkeypatch):
    from mijax.config import DataConfig, DiffusionConfig, RunConfig
    from mijax.experiments import demo
    from mijax.config import TrainConfig

    toy = demo.DemoConfig(run=RunConfig(data=DataConfig(n_train=64), diffusion=DiffusionConfig(timesteps=20),
                                        train=TrainConfig(steps=4, batch_size=32, steps_per_call=2),
                                        checkpoint_every=2), num_samples=64, chunk_size=64)
    out = tmp_path / "demo"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(demo, "sample_run", interrupted)  # Ctrl-C once training is done
        with pytest.raises(KeyboardInterrupt):
            demo.run_demo(out, toy, progress=False)
    assert store.kind_of(out) == "demo" and not (out / "metrics.json").exists()
    metrics = demo.run_demo(out, toy, progress=False)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]


# 12. A failure is never passed off as success: schedules that cannot sample are refused when built, and samples
#    that are not finite are refused by the one sampling path (mijax.collect.draw), with nothing written.

SCHEDULE_INPUTS = {"beta end 1": ["--beta-end", "1"], "jsd with eps": ["--schedule", "jsd"]}


@pytest.mark.parametrize("name", ["beta end 1", "jsd with eps"])
def test_schedules_that_cannot_sample_are_refused_naming_the_rule(name, tmp_path, capsys):
    out = tmp_path / "r"
    _one_line_error(capsys, main(["train", *TINY, "--out", str(out), *SCHEDULE_INPUTS[name]]), "beta = 1",
                    "alpha_bar")
    assert not out.exists()


def test_jsd_samples_with_the_x0_objective(tmp_path):
    out = tmp_path / "r"
    assert main(["train", *TINY, "--schedule", "jsd", "--objective", "x0", "--out", str(out)]) == 0
    assert main(["sample", "--run", str(out), "--n", "8", "--no-progress", "--out", str(tmp_path / "s.npz")]) == 0
    assert np.isfinite(np.load(tmp_path / "s.npz")["x"]).all()


def _huge_weights(monkeypatch, module):
    import jax

    real = module.eval_params
    monkeypatch.setattr(module, "eval_params", lambda *a: jax.tree.map(lambda p: p * 1e30, real(*a)))


NOT_FINITE_CASES = ["const schedule over 1000 steps", "huge finite weights", "huge weights, overwriting"]


@pytest.mark.parametrize("case", NOT_FINITE_CASES)
def test_samples_that_are_not_finite_fail_with_nothing_written(case, run, samples, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.npz"
    source = run
    if case.startswith("const"):
        source = tmp_path / "r"
        assert main(["train", *TINY, "--schedule", "const", "--timesteps", "1000", "--out", str(source)]) == 0
    else:
        from mijax import runs

        _huge_weights(monkeypatch, runs)
    if case.endswith("overwriting"):
        out.write_bytes(samples.read_bytes())
    before = _snapshot(tmp_path)
    capsys.readouterr()
    _one_line_error(capsys, main(["sample", "--run", str(source), "--n", "8", "--no-progress", "--overwrite",
                                  "--out", str(out)]), "samples are not finite (NaN/inf)", "diverged")
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["jsd", "huge weights"])
def test_recursive_never_measures_samples_that_are_not_finite(case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "study"
    if case == "jsd":
        _one_line_error(capsys, main(["recursive", *RECURSIVE, "--schedule", "jsd", "--out", str(out)]), "beta = 1")
        assert not out.exists()
        return
    from mijax import recursive

    _huge_weights(monkeypatch, recursive)
    _one_line_error(capsys, main(["recursive", *RECURSIVE, "--out", str(out)]), "generation 0", "not finite")
    assert not list(out.rglob("metrics.json"))


# ---------------------------------------------------------------------------------------------
# 13. Options are typed by their defaults: a bool takes true/false/yes/no/1/0 (any other text is refused), and
#    `mijax data` prints values as the parser takes them.

@pytest.mark.parametrize("option, key, value", [
    (["--model-option", "tied=False"], "tied", False), (["--model-option", "tied=no"], "tied", False),
    (["--model-option", "tied=0"], "tied", False), (["--model-option", "tied=yes"], "tied", True),
    (["--data-option", "round_robin=False"], "round_robin", False),
    (["--data-option", "std=1"], "std", 1.0), (["--data-option", "modes=1,2"], "modes", (1.0, 2.0))])
def test_options_are_read_as_their_defaults_type(option, key, value):
    from mijax import cli, models

    config = cli._run_config(build_parser().parse_args(["train", *TINY, "--out", "x", *option]))
    got = {**models.resolve(config.model.name, config.model.options), **config.data.options}[key]
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("option, fragment", [(["--model-option", "tied=maybe"], "tied"),
                                              (["--data-option", "round_robin=Falsch"], "round_robin"),
                                              (["--model-option", "width=2.5"], "width"),
                                              (["--model-option", "width=wide"], "width"),
                                              (["--data-option", "std=small"], "std")])
def test_option_values_of_another_type_are_one_line(option, fragment, tmp_path, capsys):
    out = tmp_path / "r"
    _one_line_error(capsys, main(["train", *TINY, "--out", str(out), *option]), fragment)
    assert not out.exists()


def test_mijax_data_prints_values_as_the_parser_takes_them(capsys):
    assert main(["data"]) == 0
    text = "\n".join(line for line in capsys.readouterr().out.splitlines() if not line.startswith(" "))
    assert "tied=true" in text and "round_robin=false" in text and "modes=[1.0,2.0,3.0]" in text
    assert "True" not in text and "False" not in text and "'" not in text


# ---------------------------------------------------------------------------------------------
# 14. The operating system refusing a write (full disk, file too large) is one line with exit status 1: the old
#     file intact, no temporaries left; sampling more than the disk holds is refused before any work.

def _refuse(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["streaming the parts", "packing the npz"])
def test_a_full_disk_while_sampling_is_one_line_and_keeps_the_old_file(where, run, samples, tmp_path, capsys,
                                                                       monkeypatch):
    import zipfile

    out = tmp_path / "s.npz"
    out.write_bytes(samples.read_bytes())
    before = _snapshot(tmp_path)
    if where == "streaming the parts":
        monkeypatch.setattr(store.os, "pwrite", _refuse)
    else:
        monkeypatch.setattr(zipfile.ZipFile, "write", _refuse)
    status = main(["sample", "--run", str(run), "--n", "8", "--no-progress", "--overwrite", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and err == [f"mijax: error: no space left on device writing {out}"], err
    assert _snapshot(tmp_path) == before


def test_a_full_disk_while_writing_a_figure_keeps_the_old_one(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    from mijax import plots

    path = tmp_path / "f.png"
    path.write_bytes(b"old figure")
    monkeypatch.setattr(Figure, "savefig", _refuse)
    with pytest.raises(store.WriteFailed, match=f"no space left on device writing {path}"):
        plots.save(Figure(), path)
    assert path.read_bytes() == b"old figure" and [p.name for p in tmp_path.iterdir()] == ["f.png"]


def test_sampling_more_than_the_disk_holds_is_refused_before_work(run, tmp_path, capsys):
    _one_line_error(capsys, main(["sample", "--run", str(run), "--n", str(10**13), "--out", str(tmp_path / "s.npz")]),
                    "need about", "free")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["no space (in process)", "file too large (orbax's threads, a subprocess)"])
def test_a_checkpoint_that_cannot_be_written_is_one_line(how, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r"
    if how.startswith("no space"):
        from collections import namedtuple

        from mijax import store

        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(store.shutil, "disk_usage", lambda path: usage(1, 1, 0))
        status = main(["train", *TINY, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
    else:
        # files of at most 100 KiB: orbax's writes fail with EFBIG in its threads (config.json still fits)
        proc = subprocess.run(["bash", "-c", 'ulimit -f 100 && exec "$@"', "bash", sys.executable, "-m", "mijax.cli",
                               "train", *TINY, "--out", str(out)], capture_output=True, text=True, timeout=300)
        status, err = proc.returncode, proc.stderr.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith("mijax: error: "), err
    assert "writing" in err[0] and str(out / "checkpoints") in err[0]
    assert not [p for p in out.rglob("*") if "tmp" in p.name]


# ---------------------------------------------------------------------------------------------
# 15. A damaged cache (an experiment's samples, a recursive generation's pool.npz or kept.npz) is recomputed with
#     a one-line warning, never a traceback.

def test_a_damaged_experiment_cache_is_recomputed(run, tmp_path):
    import shutil

    from mijax.experiments import common

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    first = common.sample(copy, 8, progress=False)
    (cache,) = copy.glob("samples-hal-*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        again = common.sample(copy, 8, progress=False)
    np.testing.assert_array_equal(first["x"], again["x"])
    assert np.array_equal(np.load(cache)["x"], first["x"])


@pytest.mark.parametrize("damaged", ["gen_000/pool.npz", "gen_000/kept.npz", "gen_001/pool.npz"])
def test_a_damaged_generation_cache_is_recomputed(damaged, tmp_path, capsys):
    from mijax import recursive

    out = tmp_path / "study"

    def stop(event, generation, step):
        if (event, generation) == ("trained", 1):
            raise KeyboardInterrupt

    config = recursive.RecursiveConfig  # the study of RECURSIVE, stopped once generation 1 is trained
    args = build_parser().parse_args(["recursive", *RECURSIVE, "--out", str(out)])
    from mijax import cli

    study = config(run=cli._run_config(args), generations=2, filters=("none", "variance"), pool_extra=16,
                   chunk_size=64)
    if damaged.startswith("gen_001"):
        assert main(["recursive", *RECURSIVE, "--out", str(out)]) == 0
        (out / "gen_001" / "metrics.json").unlink()
        (out / "metrics.json").unlink()
    else:
        with pytest.raises(KeyboardInterrupt):
            recursive.run_recursive(out, study, hook=stop)
    reference = {p: (out / p).read_bytes() for p in ("gen_000/pool.npz", "gen_000/kept.npz") if (out / p).exists()}
    (out / damaged).write_bytes(b"PK\x03\x04 damaged")
    capsys.readouterr()
    with pytest.warns(UserWarning, match="recomputing"):
        assert main(["recursive", *RECURSIVE, "--out", str(out)]) == 0
    for p, data in reference.items():
        if p != damaged:
            assert (out / p).read_bytes() == data
    assert np.load(out / damaged) is not None and (out / "metrics.json").exists()


def test_a_damaged_pool_of_a_finished_generation_is_made_again_for_the_figures(tmp_path):
    from mijax import cli, recursive

    out = tmp_path / "study"
    assert main(["recursive", *RECURSIVE, "--out", str(out)]) == 0
    study = recursive.RecursiveConfig(run=cli._run_config(build_parser().parse_args(["recursive", *RECURSIVE,
                                                                                      "--out", str(out)])),
                                      generations=2, filters=("none", "variance"), pool_extra=16, chunk_size=64)
    pool = out / "gen_001" / "pool.npz"
    before = np.load(pool)["x"]
    pool.write_bytes(pool.read_bytes()[:64])
    with pytest.warns(UserWarning, match="unreadable.*recomputing"):
        again = recursive.read_pool(out, study, 1)["x"]
    np.testing.assert_array_equal(again, before)


# ---------------------------------------------------------------------------------------------
# 16. Clear messages: a run that changes while it is read, a checkpoint another process writes, a backend that is
#     not installed, a refused --resume names the options that differ.

@pytest.mark.parametrize("case", ["the latest step vanishes once", "the step keeps vanishing"])
def test_a_checkpoint_removed_while_reading_is_retried_or_named(case, run, tmp_path, capsys, monkeypatch):
    import shutil

    from mijax import store

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    real = store.latest_checkpoint
    calls = []

    def latest(directory):
        calls.append(1)
        return 3 if (case.endswith("keeps vanishing") or len(calls) == 1) else real(directory)

    monkeypatch.setattr(store, "latest_checkpoint", latest)
    argv = ["sample", "--run", str(copy), "--n", "8", "--no-progress", "--out", str(tmp_path / "s.npz")]
    if case.endswith("once"):
        assert main(argv) == 0
    else:
        line = _one_line_error(capsys, main(argv), "changed while reading", "training")
        assert "corrupt" not in line


def test_a_checkpoint_another_process_writes_is_named_so(run, monkeypatch):
    import orbax.checkpoint as ocp

    from mijax import store
    from mijax.runs import load_run

    _, _, state = load_run(run)

    def exists(self, step, *a, **k):
        raise ValueError(f"Checkpoint for step {step} already exists.")

    monkeypatch.setattr(ocp.CheckpointManager, "save", exists)
    with pytest.raises(MijaxError, match="being written by another process"):
        store.save_checkpoint(run, state)


def test_a_backend_that_is_not_installed_is_one_line(run, tmp_path):
    import jax

    if "cuda" in {d.platform for d in jax.devices()} or jax.default_backend() == "gpu":
        pytest.skip("this machine has a cuda backend")
    env = {**os.environ, "JAX_PLATFORMS": "cuda"}
    proc = subprocess.run([sys.executable, "-m", "mijax.cli", "sample", "--run", str(run), "--n", "4",
                           "--out", str(tmp_path / "s.npz")], capture_output=True, text=True, env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "JAX has no cuda backend here (installed: cpu" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_a_refused_resume_names_the_options_that_differ(run, capsys):
    before = _snapshot(run)
    _one_line_error(capsys, main(["train", *TINY, "--seeds", "2", "--resume", "--lr", "0.002", "--out", str(run)]),
                    "the run", "was made with lr=0.001", "this command says lr=0.002")
    assert _snapshot(run) == before
