"""``mijax experiment digits`` and ``recursive-digits`` end to end in their smoke profiles: a one-level UNet
trained for two steps on 16 of the 8 x 8 digits, a classifier of 30 steps; every file is written and the numbers
are well formed. One test, with the same training recipe in both, so that the second reuses the first's
programs."""
import json

import numpy as np

from mijax import experiments


def test_the_digits_experiments_write_their_reports(tmp_path):
    out = tmp_path / "digits"
    metrics = experiments.load("digits").run(out, "smoke", progress=False)
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for name in ("classes", "gallery", "auroc", "hal_mean", "hal_top_k"):
        assert (out / f"{name}.png").stat().st_size > 1000
    assert 0.0 < metrics["classifier"]["accuracy"] <= 1.0 and metrics["classifier"]["recipe"]["steps"] == 30
    assert metrics["config"]["data"]["n_train"] == 16
    g = metrics["generated"]
    assert len(g["frechet"]["per_seed"]) == 1
    # a UNet trained for two steps draws noise: far from real digits, which sit near the held-out ones
    assert g["frechet"]["per_seed"][0] > 2 * metrics["real"]["frechet"]
    assert abs(sum(h["mean"] for h in metrics["class_histogram"]) - 1.0) < 1e-9
    windows = [tuple(w) for w in metrics["sizes"]["windows"]]
    assert windows[0] == (0, 10) and len(metrics["detection"]) == 3 * len(windows)
    report = (out / "report.md").read_text()
    assert "Fréchet" in report and "held-out accuracy" in report and "cannot name" in report
    assert np.isclose(metrics["per_seed"][0]["unconfident_share"], g["unconfident_share"]["mean"])

    out = tmp_path / "recursive"
    # one filter: generation 1 has as many models as generation 0, so its programs are compiled once
    metrics = experiments.load("recursive-digits").run(out, "smoke", progress=False,
                                                       overrides={"filters": ("variance",)})
    assert json.loads((out / "metrics.json").read_text()) == metrics
    frechet = metrics["summary"]["variance"]["frechet"]
    assert len(frechet) == 2 and all(c["mean"] > 0 for c in frechet)
    assert metrics["verdict"]["means"] is None  # no random filter to compare with
    report = (out / "report.md").read_text()
    assert "not measured" in report and "held-out accuracy" in report
    for name in ("frechet", "unconfident_share", "classes_present", "samples"):
        assert (out / f"{name}.png").stat().st_size > 1000
