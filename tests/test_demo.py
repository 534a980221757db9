"""``mijax demo`` end to end at toy size: report, metrics and figures are written; reruns are refused."""
import json

import numpy as np
import pytest

from mijax.experiments.demo import DemoConfig, run_demo
from mijax.config import DataConfig, DiffusionConfig, RunConfig, RunError
from mijax.config import TrainConfig

TOY = DemoConfig(run=RunConfig(data=DataConfig(n_train=600), diffusion=DiffusionConfig(timesteps=40),
                               train=TrainConfig(steps=60, batch_size=300, steps_per_call=30), checkpoint_every=60),
                 num_samples=3000, chunk_size=1024)


def test_demo_writes_report_metrics_and_figures(tmp_path):
    out = tmp_path / "demo"
    metrics = run_demo(out, TOY, progress=False)
    for name in ("report.md", "metrics.json", "histogram.png", "hal_histograms.png", "roc.png", "samples.npz"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    det = metrics["detection"]
    assert det["n"] == 3000 and det["num_hallucinated"] + det["num_in_support"] == 3000
    with np.load(out / "samples.npz") as f:
        x = f["x"][0, :, 0]
    # The reported rate is the fraction of samples farther than 5 std from the nearest of 1, 2, 3.
    dist = np.min(np.abs(x[:, None] - np.array([1.0, 2.0, 3.0])[None]), axis=1) / 0.05
    assert det["hallucination_rate"] == pytest.approx(np.mean(dist > 5), abs=1e-6)
    assert [row["k"] for row in metrics["rates"]] == [3, 4, 5, 6]
    # mijax eval on the demo's samples gives the report's numbers
    from mijax import evaluation

    evaluated = evaluation.evaluate(evaluation.load_samples(out / "samples.npz"))["per_seed"][0]
    assert evaluated["scores"]["hal"]["auroc"] == det["auroc"]
    assert evaluated["hallucination_rate"] == pytest.approx(det["hallucination_rate"])
    report = (out / "report.md").read_text()
    assert "Hallucination rate" in report and "AUROC" in report and "histogram.png" in report
    assert not list(out.glob(".*tmp*"))
    with pytest.raises(RunError, match="already exists"):
        run_demo(out, TOY, progress=False)
