"""mijax.evaluation and ``mijax eval``: a samples file's hallucination rate and every score's detection
numbers, per seed exactly as mijax.detection computes them, and over seeds."""
import json

import numpy as np
import pytest

import mijax
from mijax import detection, evaluation
from mijax.cli import main
from mijax.errors import MijaxError

TINY = ["--dataset", "gaussian1d", "--modes", "1,2", "--n-train", "64", "--steps", "4", "--batch-size", "32",
        "--timesteps", "20", "--steps-per-call", "2", "--checkpoint-every", "2", "--no-progress"]


@pytest.fixture(scope="module")
def samples_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval")
    assert main(["train", *TINY, "--seeds", "2", "--out", str(folder / "run")]) == 0
    out = folder / "s.npz"
    assert main(["sample", "--run", str(folder / "run"), "--n", "256", "--detectors", "xt_var", "--no-progress",
                 "--out", str(out), "--figures", str(folder / "figures")]) == 0
    assert {p.name for p in (folder / "figures").iterdir()} == {"samples.png", "roc.png"}
    return out


def test_evaluate_is_detection_per_seed_and_its_mean_over_seeds(samples_file):
    samples = mijax.load_samples(samples_file)
    assert samples["x"].shape == (2, 256, 1) and set(samples["scores"]) == {"xt_var"}
    assert samples["config"].data.dataset == "gaussian1d" and samples["step"] == 4
    result = mijax.evaluate(samples)
    modes = np.array([1.0, 2.0])
    for s in range(2):
        x = samples["x"][s, :, 0]
        positives = np.min(np.abs(x[:, None] - modes[None]), axis=1) / 0.05 > 5
        row = result["per_seed"][s]
        assert row["hallucination_rate"] == pytest.approx(positives.mean())
        for name, scores in (("hal", samples["hal"][s]), ("xt_var", samples["scores"]["xt_var"][s])):
            assert row["scores"][name] == detection.detection_summary(scores, positives)
    rates = [row["hallucination_rate"] for row in result["per_seed"]]
    over = result["over_seeds"]
    assert over["hallucination_rate"]["mean"] == pytest.approx(np.mean(rates)) and over["hallucination_rate"]["n"] == 2
    for c in [over["hallucination_rate"]] + [v for s in over["scores"].values() for v in s.values() if v]:
        assert 0.0 <= c["low"] <= c["mean"] <= c["high"] <= 1.0
    assert result["label"].startswith("farther than")


def test_mijax_eval_prints_and_writes_strict_json_and_figures(samples_file, tmp_path, capsys):
    out = tmp_path / "e.json"
    assert main(["eval", str(samples_file), "--json-out", str(out), "--figures", str(tmp_path / "f")]) == 0
    printed = capsys.readouterr().out
    assert "hallucination rate" in printed and "hal: AUROC" in printed and "xt_var: AUROC" in printed
    text = out.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["over_seeds"] == json.loads(json.dumps(mijax.evaluate(mijax.load_samples(samples_file))))[
        "over_seeds"]
    assert (tmp_path / "f" / "roc.png").stat().st_size > 0 and (tmp_path / "f" / "samples.png").stat().st_size > 0


def test_load_samples_keeps_what_abort_and_resample_adds(samples_file, tmp_path):
    assert not {"redraws", "steps"} & set(mijax.load_samples(samples_file))
    out = tmp_path / "abort.npz"
    assert main(["sample", "--run", str(samples_file.parent / "run"), "--n", "64", "--abort", "hal@0:10",
                 "--abort-threshold", "0", "--max-redraws", "1", "--no-progress", "--out", str(out)]) == 0
    samples = mijax.load_samples(out)
    assert samples["redraws"].shape == samples["steps"].shape == (2, 64)
    assert (samples["redraws"] == 1).all() and (samples["steps"] == 40).all()  # every sample redrawn once, 2 x T steps


@pytest.mark.parametrize("case", ["missing", "not npz", "someone else's npz", "directory"])
def test_eval_refuses_what_is_not_a_samples_file_in_one_line(case, tmp_path, capsys):
    path = tmp_path / "x.npz"
    if case == "not npz":
        path.write_text("hello")
    elif case == "someone else's npz":
        np.savez(path, weights=np.ones(3))
    elif case == "directory":
        path.mkdir()
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mijax: error: ") and str(path) in err[0]
    with pytest.raises(MijaxError):
        evaluation.load_samples(path)


def test_sample_ends_with_the_same_summary(samples_file, tmp_path, capsys):
    run = samples_file.parent / "run"
    out = tmp_path / "t.npz"
    assert main(["sample", "--run", str(run), "--n", "256", "--detectors", "xt_var", "--no-progress",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert evaluation.format_summary(mijax.evaluate(mijax.load_samples(out))) in printed


def test_a_certified_threshold_holds_its_rate_over_many_calibration_draws():
    """Synthetic scores whose hallucination probability rises with the score: over 100 calibration / test draws
    the hallucination rate among the test samples the certified threshold keeps exceeds alpha in at most a
    delta share of them (within binomial error), and the threshold keeps most of what it can."""
    from mijax.filters import certify_threshold

    rng = np.random.default_rng(0)

    def draw(n):
        s = rng.exponential(size=n)
        return s, rng.random(n) < 1.0 / (1.0 + np.exp(-2.0 * (s - 4.0)))

    alpha, delta, fails, kept = 0.01, 0.1, 0, []
    for split in range(100):
        c = certify_threshold(*draw(10_000), alpha, delta, seed=split)
        assert c["bound"] <= 1.0 and c["alpha"] == alpha and c["certified"] >= 1
        s, h = draw(10_000)
        keep = s < c["threshold"]
        fails += h[keep].mean() > alpha
        kept.append(keep.mean())
    assert fails <= 100 * delta + 3 * np.sqrt(100 * delta * (1 - delta))
    assert np.mean(kept) > 0.8  # the base rate is ~3%: most samples can be kept below 1%
    nothing = certify_threshold(np.arange(10.0), np.ones(10, bool), alpha)  # every sample hallucinated
    assert nothing["threshold"] == -np.inf and nothing["kept"] == 0
    with pytest.raises(ValueError, match="alpha"):
        certify_threshold(np.arange(10.0), np.zeros(10, bool), 1.5)


def _synthetic_pool(rng, n):
    """Scores whose hallucination probability rises with the score (base rate ~3%)."""
    s = rng.exponential(size=n)
    return s, rng.random(n) < 1.0 / (1.0 + np.exp(-2.0 * (s - 4.0)))


def test_the_split_check_finds_the_guarantee_held_and_a_plug_in_threshold_not():
    """split_check on one synthetic pool: certified thresholds exceed alpha on the test half in at most about a
    delta share of the splits, keeping most samples; a plug-in threshold (the largest whose calibration rate is
    <= alpha, no guarantee) exceeds it far more often, so the check can tell the two apart."""
    from mijax.filters import split_check

    scores, labels = _synthetic_pool(np.random.default_rng(1), 20_000)
    alpha, delta = 0.01, 0.1
    check = split_check(scores, labels, alpha, delta, splits=100, seed=0)
    assert check["splits"] == 100 and check["n"] == 20_000 and check["alpha"] == alpha
    assert check["base_rate"] == pytest.approx(labels.mean())
    assert check["holds"] and check["share_over_alpha"] <= check["tolerance"]
    assert check["share_ci"][0] <= check["share_over_alpha"] <= check["share_ci"][1]
    assert check["mean_accepted"] > 0.8 and check["mean_test_rate"] <= alpha and check["empty"] == 0
    assert split_check(scores, labels, alpha, delta, splits=100, seed=0) == check  # reproducible

    def plug_in(s, h, a, d, seed):  # the largest threshold whose calibration rate is <= a
        order = np.argsort(s)
        rate = np.cumsum(h[order]) / np.arange(1, s.size + 1)
        ok = np.flatnonzero(rate <= a)
        return {"threshold": float(s[order][ok[-1] + 1]) if ok.size and ok[-1] + 1 < s.size else np.inf}

    naive = split_check(scores, labels, alpha, delta, splits=100, seed=0, certify=plug_in)
    assert naive["share_over_alpha"] > 0.3 and not naive["holds"]
    nothing = split_check(np.arange(100.0), np.ones(100, bool), alpha, delta, splits=5)
    assert nothing["empty"] == 5 and nothing["mean_accepted"] == 0 and nothing["mean_test_rate"] is None
    assert nothing["share_over_alpha"] == 0 and nothing["mean_threshold"] is None


def test_the_certify_splits_benchmark_reads_a_samples_file(samples_file, tmp_path, capsys):
    """benchmarks/certify_splits.py on a samples file: split_check per seed and alpha, written as JSON."""
    from benchmarks import certify_splits
    from mijax.filters import split_check
    from mijax.store import json_safe

    out = tmp_path / "splits.json"
    result = certify_splits.main(["--samples", str(samples_file), "--alphas", "0.5,0.9", "--splits", "5",
                                  "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["n_per_seed"] == 256 and len(saved["seeds"]) == 2 and set(saved["alphas"]) == {"0.5", "0.9"}
    samples = mijax.load_samples(samples_file)
    labels = evaluation._dataset(samples["config"]).hallucinated(samples["x"][1])
    assert saved["alphas"]["0.5"]["per_seed"][1] == json_safe(split_check(samples["hal"][1], labels, 0.5, splits=5,
                                                                          seed=1))
    assert saved["alphas"]["0.9"]["splits"] == 10 and result["base_rate"][1] == pytest.approx(labels.mean())
    assert "alpha 0.5, delta 0.1" in capsys.readouterr().out


def test_a_certified_threshold_that_keeps_everything_is_not_reported_as_none():
    """In JSON both infinite thresholds are None: +inf (every sample kept, certified) is told apart from -inf
    (nothing certified) by what it keeps."""
    from mijax.filters import certify_threshold
    from mijax.store import json_safe

    rows = [certify_threshold(np.arange(1000.0), np.zeros(1000, bool), 0.01),  # no hallucination: keep all
            certify_threshold(np.arange(10.0), np.ones(10, bool), 0.01)]  # every sample hallucinated: keep none
    assert rows[0]["threshold"] == np.inf and rows[0]["kept"] == 500 and rows[1]["kept"] == 0
    text = evaluation.format_certified(json_safe({"score": "hal", "alpha": 0.01, "delta": 0.1, "per_seed": rows}),
                                       [0, 1])
    assert "seed 0: every sample can be kept (no threshold needed)" in text
    assert "seed 1: no threshold can be certified from 10 samples" in text


def test_mijax_eval_certifies_a_threshold_per_seed(samples_file, tmp_path, capsys):
    out = tmp_path / "c.json"
    assert main(["eval", str(samples_file), "--target-rate", "0.05", "--delta", "0.2", "--json-out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "keeps the hallucination rate <= 0.05 with probability >= 0.8" in printed
    certified = json.loads(out.read_text())["certified"]
    assert certified["score"] == "hal" and len(certified["per_seed"]) == 2
    assert main(["eval", str(samples_file), "--target-rate", "0.05", "--score", "xt_var"]) == 0
    assert main(["eval", str(samples_file), "--delta", "0.2"]) == 2
    assert main(["eval", str(samples_file), "--target-rate", "0.05", "--score", "nope"]) == 2
