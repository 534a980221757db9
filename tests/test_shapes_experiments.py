"""``mijax experiment shapes`` and ``recursive-shapes`` end to end in their smoke profiles (a UNet of one level,
two steps): every file is written, the numbers are well formed, the training set counts all valid, and the
report says what was measured."""
import json

import numpy as np
import pytest

from mijax import experiments
from mijax.experiments import common
from mijax.data import shapes as shapes_data


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    with common.shared_runs(out / "shared"):  # as `mijax experiment all`: the detectors experiment reuses the run
        metrics = experiments.load("shapes").run(out, "smoke", progress=False)
    return out, metrics


def test_the_shapes_experiment_writes_its_report(shapes_run):
    out, metrics = shapes_run
    assert json.loads((out / "metrics.json").read_text()) == metrics  # strict JSON, read back
    for name in ("labels", "gallery", "auroc", "hal_mean", "hal_region_max"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert metrics["training_labels"]["valid"] == 1.0 and metrics["training_labels"]["duplicate"] == 0.0
    shares = [metrics["labels"][name]["mean"] for name in shapes_data.LABELS]
    assert abs(sum(shares) - 1.0) < 1e-9 and all(len(metrics["labels"][n]["per_seed"]) == 1 for n in shapes_data.LABELS)
    # the published window (0, 10) does not fit T = 12's sweep as given: it is put first
    windows = [tuple(w) for w in metrics["sizes"]["windows"]]
    assert windows[0] == (0, 10) and (2, 4) in windows
    assert len(metrics["detection"]) == len(windows) * 4
    report = (out / "report.md").read_text()
    assert "Claim 7" in report and "region_max" in report and "EMA 0.9" in report
    # a rerun reads the trained run and the cached samples back: the same numbers
    with common.shared_runs(out / "shared"):
        again = experiments.load("shapes").run(out, "smoke", progress=False)
    assert again["labels"] == metrics["labels"] and again["detection"] == metrics["detection"]


def test_the_detectors_experiment_scores_shapes_through_the_data_set_interface(shapes_run, tmp_path):
    """Images in the detectors comparison: the shapes experiment's own run (shared), its counter's label."""
    out, _ = shapes_run
    with common.shared_runs(out / "shared"):
        m = experiments.load("detectors").run(
            tmp_path / "detectors", "smoke", progress=False,
            overrides={"settings": (), "image_settings": ("shapes",), "image_detectors": ("hal", "eps_norm", "oracle")})
    (block,) = m["settings"].values()
    assert block["dataset"] == "shapes" and block["timesteps"] == 12 and block["num_samples"] == 24
    assert set(block["detectors"]) == {"hal", "eps_norm"}  # no oracle: SHAPES has no exact denoiser
    assert [r["end"] for r in block["early"]["hal"]] == [0]  # T = 12 fits only the window ending at 0
    assert len(list((out / "shared").iterdir())) == 1  # the shapes run, not trained again
    assert (tmp_path / "detectors" / "roc_shapes.png").stat().st_size > 1000


def test_the_detection_sweep_scores_duplicates_against_valid_images():
    from mijax.experiments import hal_sweep
    from mijax.experiments.shapes import REDUCTIONS, _classes

    counts = shapes_data.Counts(labels=np.array([1, 1, 2, 2, 0, 4]), shapes=np.zeros((6, 3), int),
                                square_position=np.zeros(6, int), background=np.zeros(6))
    table = np.zeros((1, 6, 1, len(REDUCTIONS)))
    table[0, :, 0, 0] = [0.1, 0.2, 0.9, 0.8, 5.0, 5.0]  # blank and malformed rows are left out
    table[0, :, 0, 1] = [0.9, 0.8, 0.1, 0.2, 0.0, 0.0]
    sweep = hal_sweep.sweep(table, [_classes(counts)], [(0, 10)], REDUCTIONS)
    assert sweep["end0_len10_mean"]["auroc"] == 1.0 and sweep["end0_len10_max"]["auroc"] == 0.0
    assert sweep["end0_len10_mean"]["num_hallucinated"] == 2 and sweep["end0_len10_mean"]["n"] == 4
    assert sweep["end0_len10_mean"]["removal_at_retention"]["removed"] == 1.0


def test_the_recursive_shapes_study_runs_and_reports(tmp_path):
    # one filter: generation 1 has as many models as generation 0, so its programs are compiled once
    metrics = experiments.load("recursive-shapes").run(tmp_path, "smoke", progress=False,
                                                       overrides={"filters": ("variance",)})
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    summary = metrics["summary"]
    assert set(summary) == {"variance"}
    assert len(summary["variance"]["duplicate_share"]) == 2
    assert metrics["verdict"]["means"] is None  # no random filter to compare with
    assert "not measured" in (tmp_path / "report.md").read_text()
    for name in ("duplicate_share", "valid_share", "samples"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
    pool = np.load(tmp_path / "study" / "gen_001" / "pool.npz")
    assert pool["x"].shape == (1, 24, 32, 32, 1) and np.abs(pool["x"]).max() <= 1.0  # x0_hat clipped
    assert "region_max" in (tmp_path / "report.md").read_text()

    # The calibration script trains and counts generation 0 of the same study with another optimiser.
    from benchmarks import calibrate_shapes

    argv = ["--tag", "tiny", "--profile", "smoke", "--seeds", "1", "--lr", "2e-3", "--lr-decay", "cosine",
            "--t-power", "1.5", "--override", "n_train=16", "--out", str(tmp_path / "cal")]
    line = calibrate_shapes.main(argv)
    assert (line["lr"], line["lr_decay"], line["t_power"], line["steps"], line["pool"]) == (2e-3, "cosine", 1.5, 2, 24)
    shares = [line[f"{name}_share"] for name in ("valid", "duplicate", "outside", "malformed", "blank")]
    assert abs(sum(shares) - 1.0) < 1e-9
    assert json.loads((tmp_path / "cal" / "results.jsonl").read_text()) == line
