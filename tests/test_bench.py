"""The benchmark runs end to end at tiny sizes and reports well-formed, positive, finite figures.

No timing is asserted: this machine's speed is not the code's correctness.
"""
import argparse
import json
import math
import os
import sys
import tarfile
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import mijax
import mijax.experiments
from benchmarks import bench


def _parse(argv):
    return bench.add_arguments(argparse.ArgumentParser()).parse_args(argv)


def _positive(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    # A missing baseline path: the torch comparison must be reported as skipped, not crash.
    argv = ["--quick", "--json-out", str(out), "--compare-torch", "--torch-baseline", "/nonexistent/torch_ddpm.py",
            "--sweep-dims", "2"]  # the sweep at d = 2 only (d = 1 is the sampling figure's); fewer compilations
    return bench.run(_parse(argv)), out


def test_quick_run_structure(quick_results, capsys):
    results, out = quick_results
    assert set(results) >= {"machine", "config", "sampling", "memory", "training", "seed_sampling", "torch"}
    assert json.loads(out.read_text()) == results
    machine = results["machine"]
    assert machine["backend"] and machine["jax"] and machine["cpu_count"] >= 1
    config = results["config"]
    assert (config["n"], config["timesteps"], config["seeds"]) == (256, 20, [2])


def test_quick_sampling_figures(quick_results):
    s = quick_results[0]["sampling"]
    assert (s["n"], s["timesteps"], s["dim"]) == (256, 20, 1)
    for key in ("seconds", "first_seconds", "point_steps_per_s"):
        assert _positive(s[key]), key
    assert math.isclose(s["point_steps_per_s"], s["n"] * s["timesteps"] / s["seconds"], rel_tol=1e-9)
    assert len(s["times"]) == 1 and all(_positive(t) for t in s["times"])
    assert s["median_seconds"] >= s["seconds"]


def test_quick_peak_and_flop_counts(quick_results, capsys):
    peak = quick_results[0]["peak"]
    assert _positive(peak["network_shape_gflops"]) and _positive(peak["square_gflops"])
    # the paper's network: 3 passes of the tied block's two 128 x 128 products, and the input and output
    for d in ("1", "2"):
        f = peak["flops"][d]
        assert f["matmul_per_row"] == pytest.approx(2 * (6 * 128 * 128 + 2 * int(d) * 128), rel=1e-3)
        assert f["matmul_per_row_own_t"] > f["matmul_per_row"] + 2 * 2 * 128 * 128 * 0.99  # + time path per row
        assert f["per_row"] >= f["matmul_per_row"]
    print(bench.format_table(quick_results[0]))
    assert "GFLOP/s" in capsys.readouterr().out


def test_quick_memory_figures(quick_results):
    mem = quick_results[0]["memory"]
    if "skipped" in mem:
        pytest.skip(mem["skipped"])
    assert mem["long"]["timesteps"] == 20 and mem["short"]["timesteps"] == 5  # max(window, T // 10)
    for part in ("long", "short"):
        assert _positive(mem[part]["temp_size_in_bytes"])
        assert _positive(mem[part]["argument_size_in_bytes"])
    assert _positive(mem["temp_ratio"]) and isinstance(mem["grows_with_t"], bool)


def test_quick_training_and_seed_figures(quick_results):
    results = quick_results[0]
    one = results["training"]["one_seed"]
    assert one["num_seeds"] == 1 and not one["seed_axis"] and one["losses_finite"]
    assert _positive(one["ms_per_step"]) and _positive(one["examples_per_s"])
    (two,) = results["training"]["seeds"]
    assert two["num_seeds"] == 2 and two["seed_axis"] and two["losses_finite"]
    assert _positive(two["ms_per_step"]) and _positive(two["ratio"])
    (seeds,) = results["seed_sampling"]
    assert seeds["num_seeds"] == 2
    for key in ("seconds", "one_seed_seconds", "ratio", "point_steps_per_s"):
        assert _positive(seeds[key]), key


def test_torch_missing_is_skipped_with_reason(quick_results):
    torch = quick_results[0]["torch"]
    assert set(torch) == {"skipped"} and torch["skipped"]


def test_quick_prints_table_and_json(capsys):
    results = bench.run(_parse(["--quick", "--skip", "memory,training,seeds,sweep,detectors,peak"]))
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads(lines[-1]) == results
    assert any("sampling+Hal" in line for line in lines[:-1])
    assert any("host peak memory" in line for line in lines[:-1])
    assert set(results) == {"machine", "config", "sampling"}
    assert _positive(results["machine"]["host_peak_bytes"])


def test_quick_detector_cost(quick_results):
    """Every registered detector in one pass, timed against Hal alone at the sweep's dimensions."""
    from mijax.detectors import DETECTORS

    (r,) = quick_results[0]["detectors"]
    assert r["dim"] == 2 and sorted(d.split("@")[0] for d in r["detectors"]) == sorted(DETECTORS)
    assert _positive(r["hal_only"]["seconds"]) and _positive(r["all"]["seconds"])
    assert r["ratio"] == pytest.approx(r["all"]["seconds"] / r["hal_only"]["seconds"])


def test_quick_sweep_covers_every_combination(quick_results):
    results = quick_results[0]
    sweep = results["sweep"]
    # QUICK: N = 256, T = 20, d = 2 (the fixture's), devices (1, all) deduplicated, precisions float32 and bf16.
    devices = sorted(set([1, results["machine"]["device_count"]]))
    combos = {(r["n"], r["timesteps"], r["dim"], r["devices"], r["precision"]) for r in sweep}
    assert combos == {(256, 20, 2, dev, p) for dev in devices for p in ("float32", "bf16")}
    assert len(sweep) == len(combos)
    for r in sweep:
        assert _positive(r["point_steps_per_s"]) and _positive(r["point_steps_per_s_per_device"])
        assert math.isclose(r["point_steps_per_s"], r["n"] * r["timesteps"] / r["seconds"], rel_tol=1e-9)
        if "compiled_bytes_per_device" in r:
            assert _positive(r["compiled_bytes_per_device"])


def test_sweep_axes_parse_and_reject_bad_values():
    a = bench.resolve(_parse(["--quick", "--sweep-n", "1e3,2000,1000", "--sweep-timesteps", "10,20",
                              "--sweep-dims", "2", "--devices", "all,1", "--precisions", "tf32,float32"]))
    assert a.sweep_n == [1000, 2000] and a.sweep_timesteps == [10, 20] and a.sweep_dims == [2]
    assert a.devices == [1] and a.precisions == ["tf32", "float32"]  # one CPU device in this process
    d = bench.resolve(_parse(["--quick", "--n", "64"]))
    assert d.sweep_n == [64] and d.sweep_timesteps == [bench.QUICK["timesteps"]]
    for bad in (["--precisions", "fp8"], ["--devices", "0"], ["--devices", "999"], ["--devices", "two"],
                ["--sweep-n", "0"], ["--sweep-dims", "x"]):
        with pytest.raises(ValueError):
            bench.resolve(_parse(["--quick", *bad]))


def test_precision_option_sets_the_matmul_peaks_precision(capsys):
    """--precision bf16: the main measurements' matmuls (here the peak alone) in bf16, and the table says so."""
    results = bench.run(_parse(["--quick", "--precision", "bf16", "--skip",
                                "sampling,sweep,memory,training,seeds,detectors"]))
    peak = results["peak"]
    assert peak["precision"] == "bf16" and _positive(peak["network_shape_gflops"]) and _positive(peak["square_gflops"])
    assert results["config"]["precision"] == "bf16"
    assert "bf16 matmul peak (256 x 128" in capsys.readouterr().out
    assert bench.resolve(_parse(["--quick"])).precision == "float32"
    with pytest.raises(ValueError, match="--precision must be one of"):
        bench.resolve(_parse(["--quick", "--precision", "fp8"]))


def test_kernels_axis(capsys):
    """--kernels xla,pallas measures both; without a GPU the pallas rows say they ran the XLA path."""
    results = bench.run(_parse(["--quick", "--skip", "sampling,memory,training,seeds,peak", "--sweep-dims", "1",
                                "--devices", "1", "--precisions", "float32", "--kernels", "xla,pallas",
                                "--chunk-size", "128"]))
    rows = results["sweep"]
    assert [r["kernel"] for r in rows] == ["xla", "pallas"] and all(r["chunk_size"] == 128 for r in rows)
    gpu = results["machine"]["backend"] == "gpu"
    assert rows[1]["kernel_used"] == ("pallas" if gpu else "xla") and rows[0]["kernel_used"] == "xla"
    assert all(_positive(r["point_steps_per_s"]) for r in rows)
    table = capsys.readouterr().out
    assert gpu or "pallas (ran xla: no GPU)" in table
    for bad in (["--kernels", "cuda"], ["--kernels", ""], ["--chunk-size", "0"]):
        with pytest.raises(ValueError):
            bench.resolve(_parse(["--quick", *bad]))


def test_explicit_sizes_override_quick():
    a = bench.resolve(_parse(["--quick", "--n", "64", "--seeds", "1,3", "--repeats", "2"]))
    assert (a.n, a.timesteps, a.seeds, a.repeats) == (64, bench.QUICK["timesteps"], [1, 3], 2)
    d = bench.resolve(_parse([]))
    assert (d.n, d.timesteps, d.window, d.train_batch) == (10_000, 1000, 10, 10_000)
    with pytest.raises(ValueError):
        bench.resolve(_parse(["--n", "0"]))


def test_parse_json_line():
    text = 'warning: something\n{"mode": "train", "ms_per_step": 12.5}\n'
    assert bench.parse_json_line(text) == {"mode": "train", "ms_per_step": 12.5}
    with pytest.raises(ValueError):
        bench.parse_json_line("no json here")


def test_bench_torch_keeps_the_fastest_and_the_median(tmp_path):
    """A stand-in baseline script (torch itself is not a dependency) reporting its own seconds."""
    script = tmp_path / "fake_baseline.py"
    counter = tmp_path / "count"
    script.write_text(
        "import json, pathlib, sys\n"
        f"p = pathlib.Path({str(counter)!r})\n"
        "i = int(p.read_text()) if p.exists() else 0\n"
        "p.write_text(str(i + 1))\n"
        "print('noise')\n"
        "print(json.dumps({'mode': sys.argv[1], 'seconds': [3.0, 1.0, 2.0][i]}))\n")
    r = bench.bench_torch(script, "trajectory", {"n": 8}, repeats=3)
    assert r["times"] == [3.0, 1.0, 2.0] and r["seconds"] == 1.0 and r["median_seconds"] == 2.0
    assert r["mode"] == "trajectory" and "--n=8" in r["command"]


def test_quick_image_benchmark(tmp_path, capsys, monkeypatch):
    """The image bench end to end, beside a stand-in for torch_unet.py (torch is not needed): the baseline runs
    as published, and its training once more under the mijax program's allocator when that is another one."""
    from mijax import allocator
    from benchmarks import bench_images

    assert bench_images.grouped_devices({"batch": 64}) == (2 if jax.local_device_count() >= 2 else 1)
    monkeypatch.setattr(bench_images, "grouped_devices", lambda o: 2)  # as on 2 devices (here one holds both)
    calls = tmp_path / "calls.txt"
    script = tmp_path / "torch_unet.py"
    script.write_text(
        "import json, os, sys\n"
        "same = os.environ.get('MIJAX_TEST_ALLOCATOR') == 'other'\n"
        f"open({str(calls)!r}, 'a').write(f'{{sys.argv[1]}} {{same}}\\n')\n"
        "print(json.dumps({'mode': sys.argv[1], 'seconds': 0.5 if same else 1.0}))\n")
    monkeypatch.setattr(bench, "torch_available", lambda: (True, "stand-in"))
    # as if the mijax program had restarted itself on another allocator (mijax.allocator)
    monkeypatch.setenv("MIJAX_TEST_ALLOCATOR", "other")
    monkeypatch.setenv(allocator.BEFORE_ENV, json.dumps({"MIJAX_TEST_ALLOCATOR": None}))
    monkeypatch.setattr(allocator, "in_use", lambda environ=None: "other" if (
        os.environ if environ is None else environ).get("MIJAX_TEST_ALLOCATOR") else "glibc")
    out = tmp_path / "images.json"
    results = bench.main(["--images", "--quick", "--json-out", str(out), "--compare-torch",
                          "--torch-baseline", str(script)])
    images = results["images"]
    assert sorted(calls.read_text().split("\n")[:-1]) == ["sample False", "train False", "train True",
                                                          "trajectory False"]
    steps = images["options"]["steps"]
    assert images["torch_train"]["seconds"] == 1.0 and images["torch_train_same_allocator"]["seconds"] == 0.5
    assert images["training_speedup"] == pytest.approx(1e3 / steps / images["training"]["ms_per_step"])
    assert images["training_speedup_same_allocator"] == pytest.approx(images["training_speedup"] / 2)
    assert images["parameters"] > 0 and images["training"]["ms_per_step"] > 0 and images["training"]["losses_finite"]
    grouped = images["training_grouped"]
    assert grouped["batch_groups"] == 2 and images["training"]["batch_groups"] == 1 and grouped["losses_finite"]
    assert images["sampling"]["hal_finite"] and images["sampling"]["image_steps_per_s"] > 0
    memory = images["memory"]
    assert "skipped" in memory or memory["long"]["timesteps"] == 10 * memory["short"]["timesteps"]
    assert json.loads(out.read_text()) == results
    printed = capsys.readouterr().out
    assert "Adam step" in printed and "batch_groups=2" in printed and "under mijax's allocator (other)" in printed
    from mijax.models import onednn  # with oneDNN here, the same UNet on its convolutions too

    assert ("training_onednn" in images) == onednn.available() == ("conv=onednn" in printed)
    if onednn.available():
        assert images["training_onednn"]["losses_finite"] and images["sampling_onednn"]["hal_finite"]
    with pytest.raises(ValueError, match="image-options"):
        bench.main(["--images", "--quick", "--image-options", "depth=3"])


def test_image_benchmark_options_build_the_paper_family_on_both_sides():
    from benchmarks import bench_images

    o = bench.image_options("size=64,channels=64,mults=1:2:2:2,res_blocks=2,groups=32,attn_levels=2,dropout=0.1")
    assert (o["mults"], o["attn_levels"], o["dropout"], o["groups"]) == ("1,2,2,2", "2", 0.1, 32)
    assert bench_images.baseline_options(o) == dict(size=64, channels=64, mults="1,2,2,2", res_blocks=2, groups=32,
                                                    attn_levels="2", dropout=0.1)
    # torch_unet.py printed params=8949761 for these options (the H200 run in the earlier measurements (git show 0540f34:BENCHMARKS.md)); no torch needed here
    assert bench_images.parameter_count(o) == 8_949_761
    small = bench.image_options("", quick=True)
    assert "attn_levels" not in bench_images.baseline_options(small) and "dropout" not in bench_images.baseline_options(small)
    for bad in ("dropout=x", "groups=", "heads=2"):
        with pytest.raises(ValueError, match="image-options"):
            bench.image_options(bad)


def test_calibration_script_appends_one_line_per_configuration(tmp_path):
    from benchmarks import calibrate

    # 500 steps: fewer leave a model whose 1,000 reverse steps diverge (NaN samples), which sampling refuses
    argv = ["--tag", "tiny", "--dataset", "gaussian1d", "--n-train", "200", "--steps", "500", "--batch-size", "100",
            "--lr", "5e-3", "--warmup-steps", "1", "--lr-decay", "cosine", "--t-power", "1.5", "--n", "64",
            "--out", str(tmp_path)]
    first = calibrate.main(argv)
    calibrate.main(argv)  # the trained run is reused: the same samples, the same figures
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    same = [{k: v for k, v in line.items() if k != "train_seconds"} for line in lines]
    assert same[0] == same[1]
    assert first["t_power"] == 1.5 and 0.0 <= first["rate5"] <= 1.0 and len(first["per_seed"]) == 1  # spreads may be unknown (None)
    assert first["spread_median"] is None or first["spread_median"] > 0
    assert (tmp_path / "runs" / "tiny" / "train.json").exists()


def test_bench_processes_marginal_cost_and_speedups():
    """Whole processes alternate round by round; the marginal cost is (large - small) / work between."""
    seconds = {("a", 1): [2.0, 2.5], ("a", 5): [4.0, 3.5], ("b", 1): [1.0, 1.5], ("b", 5): [9.0, 10.0]}
    calls, envs = [], []

    def timer(command, timeout, env):
        calls.append(tuple(command))
        envs.append(env)
        return {"seconds": seconds[tuple(command)][sum(c == tuple(command) for c in calls) - 1], "other_cores": 0.0}

    r = bench.bench_processes({"a": lambda k: ["a", k], "b": lambda k: ["b", k]}, (1, 5), (10, 50), rounds=2,
                              timer=timer, envs={"b": {"B": "1"}})
    assert calls == [("a", 1), ("b", 1), ("a", 5), ("b", 5)] * 2  # every size of every program, each round
    assert envs == [None, {"B": "1"}] * 4  # b's processes in its own environment, a's in this one
    a, b = r["programs"]["a"], r["programs"]["b"]
    assert a["best"] == {"1": 2.0, "5": 3.5} and b["median"] == {"1": 1.25, "5": 9.5}
    assert a["marginal_seconds_per_work"] == pytest.approx(1.5 / 40) and b["marginal_seconds_per_work"] == pytest.approx(8 / 40)
    sp = bench._speedups(r, "a", "b")
    assert sp["marginal"] == pytest.approx(8 / 1.5) and sp["whole_process"] == pytest.approx(9.0 / 3.5)
    assert sp["marginal_median"] == pytest.approx((9.5 - 1.25) / (3.75 - 2.25))
    # a larger size that was not slower has no marginal cost, and no speed-up is made of it
    flat = bench.bench_processes({"a": lambda k: ["a"]}, (1, 2), (1, 2), rounds=1,
                                 timer=lambda c, t, e: {"seconds": 1.0})
    assert flat["programs"]["a"]["marginal_seconds_per_work"] is None
    for bad in ({"sizes": (1,), "work": (1,)}, {"sizes": (1, 2), "work": (2, 1)}):
        with pytest.raises(ValueError):
            bench.bench_processes({"a": lambda k: ["a"]}, bad["sizes"], bad["work"], timer=timer)
    rows = dict(bench._process_rows({"sampling": {**r, "speedup": sp}, "training": flat}))
    assert rows["whole process, sampling: mijax speed-up"].startswith("marginal 5.33x (median 5.50x)")
    assert rows["whole process, sampling: mijax speed-up"].endswith("whole process at 5 2.57x")
    assert "none" in rows["whole process, training 1 -> 2: a"]


def test_process_jobs_and_their_fresh_process(monkeypatch):
    """The mijax side of --processes: each job's own code, and its command line in a fresh process (a job
    that fails at once: importing mijax there is what it costs)."""
    seen = {}

    def fake_sample(denoise_fn, params, schedule, key, n, shape, config):
        seen["sample"] = (n, shape, config.hal_window, schedule.num_timesteps)
        return bench.jnp.zeros((n, *shape)), bench.jnp.zeros((n,))

    def fake_train_steps(apply, schedule, config, state, key, data, num_steps):
        seen["train"] = (num_steps, config.batch_size, data.shape, schedule.num_timesteps)
        return state, bench.jnp.zeros((num_steps,))

    # the paper's MLP's initialisation alone takes seconds: a one-leaf stand-in (the real one is tested elsewhere)
    stub = type("Model", (), {"apply": None})
    def fake_denoiser(dim, precision="float32"):
        seen.setdefault("precisions", []).append(precision)
        return stub, lambda key: {"w": bench.jnp.zeros((2,))}

    monkeypatch.setattr(bench, "_denoiser", fake_denoiser)
    monkeypatch.setattr(bench, "make_denoiser", lambda model, kernel: model)
    monkeypatch.setattr(bench, "sample", lambda *a, **k: types.SimpleNamespace(**dict(zip(("x", "hal"),
                                                                                        fake_sample(*a, **k)))))
    monkeypatch.setattr(bench, "train_steps", fake_train_steps)
    bench.process_job({"kind": "training", "timesteps": 10, "dim": 2, "batch": 8, "steps": 3})
    bench.process_job({"kind": "sampling", "timesteps": 4, "dim": 1, "window": 2, "n": 8, "precision": "bf16"})
    assert seen == {"train": (3, 8, (8, 2), 10), "sample": (8, (1,), 2, 4), "precisions": ["float32", "bf16"]}
    with pytest.raises(RuntimeError, match="unknown process job 'nope'"):
        bench.time_process(bench.mijax_process_command({"kind": "nope", "timesteps": 4, "dim": 1}))
    r = bench.time_process([sys.executable, "-c", "pass"])
    assert _positive(r["seconds"]) and set(r) >= {"cpu_seconds", "cpu_per_wall"}
    with pytest.raises(RuntimeError, match="failed: boom"):
        bench.time_process([sys.executable, "-c", "raise SystemExit('boom')"])
    with pytest.raises(ValueError, match="process-rounds"):
        bench.resolve(_parse(["--quick", "--processes", "--process-rounds", "0"]))


def test_gpu_session_sizes_its_runs_from_earlier_measurements(tmp_path):
    from benchmarks import gpu_session

    assert gpu_session._grid_steps(tmp_path, 100.0, local=False) == 14_000  # nothing measured: the H200's 1.5 ms
    (tmp_path / "gpu_check.json").write_text(json.dumps({
        "training": {"mijax": [{"ms_per_step": 0.6}]}, "seeds": {"training_many": {"ms_per_step": 6.0, "num_seeds": 16}}}))
    # 4 seeds ~ max(0.6, 6.0 x 4 / 16) = 1.5 ms; 2 data sets; 30% overhead; 55% of the time -> 14,102 -> 14,000
    assert gpu_session._grid_steps(tmp_path, 100.0, local=False) == 14_000
    assert gpu_session._grid_steps(tmp_path, 1e6, local=False) == 100_000  # never past the paper's steps
    (tmp_path / "unet.json").write_text(json.dumps({"images": {"training": {"ms_per_step": 40.0}}}))
    assert gpu_session._shapes_steps(tmp_path, 100.0, local=False) == 1_000
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for name in ("report.md", "metrics.json", "a.png", "samples.npz", "checkpoints/x.json"):
        (run / name).write_text("x")
    (tmp_path / "run.log").write_text("log")
    gpu_session._pack(run, tmp_path / "run.tar.gz", tmp_path / "run.log")
    with tarfile.open(tmp_path / "run.tar.gz") as tar:
        assert sorted(tar.getnames()) == ["run.log", "run/a.png", "run/metrics.json", "run/report.md"]
    with pytest.raises(SystemExit, match="unknown part"):
        gpu_session.main(["--out", str(tmp_path / "o"), "--state", str(tmp_path / "s"), "--parts", "nope"])


def test_unet_breakdown_script_at_tiny_sizes(tmp_path):
    """benchmarks/unet_breakdown.py: the whole step's figures and the operations timed one by one, the
    convolutions told apart by kind (a tiny UNet; the first 30 equations, the first convolution among them)."""
    from benchmarks import unet_breakdown

    out = tmp_path / "b.json"
    r = unet_breakdown.main(["--out", str(out), "--image-options", "size=8,channels=8,mults=1,batch=4",
                             "--repeats", "1", "--limit", "30"])
    assert r["whole"]["loss_and_grad_ms"] > 0 and r["whole"]["minor_faults_per_call"] >= 0
    ops = r["operations"]
    assert ops["equations"] == 30 and ops["total_ms"] == pytest.approx(sum(v["ms"] for v in ops["by_primitive"].values()))
    assert "conv:forward" in ops["by_primitive"]  # the first equations are the forward pass's
    assert json.loads(out.read_text())["options"]["channels"] == 8
    # the three convolutions autodiff writes, told apart by their dimension numbers
    x, w = jnp.ones((2, 6, 6, 3)), jnp.ones((3, 3, 3, 4))
    conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    jaxpr = jax.make_jaxpr(jax.grad(lambda x, w: conv(x, w).sum(), argnums=(0, 1)))(x, w).jaxpr
    kinds = sorted(unet_breakdown.conv_kind(e.params) for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated")
    assert kinds == ["forward", "input_gradient", "weight_gradient"]
    with pytest.raises(SystemExit):
        unet_breakdown.main(["--out", str(out), "--torch-baseline", str(tmp_path / "nope.py")])


def test_the_library_never_imports_the_benchmarks():
    """The benchmark harness is a tool of the checkout (benchmarks/, not installed): no module of mijax
    imports it; ``mijax bench`` finds it beside the package, and outside a checkout says so in one line."""
    import ast

    for path in [*Path(mijax.__file__).parent.rglob("*.py"), *Path(mijax.experiments.__file__).parent.rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n == "benchmarks" or n.startswith("benchmarks.") or n.startswith("mijax.bench")
                           for n in names), f"{path} imports {names}"
    package = Path(mijax.__file__).parent
    assert not (package / "bench.py").exists() and (package.parent / "benchmarks" / "bench.py").is_file()


def test_mijax_bench_outside_a_checkout_is_one_line(tmp_path, monkeypatch, capsys):
    from mijax import cli

    monkeypatch.setattr(cli, "__file__", str(tmp_path / "site-packages" / "mijax" / "cli.py"))
    assert cli.main(["bench", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "source checkout" in err[0], err


def test_every_sampler_is_benchmarked():
    rows = bench.bench_samplers(256, 20, 1, 3, 5, repeats=1)
    assert [r["sampler"] for r in rows] == ["ddpm", "ddim", "heun", "dpmpp2m"]
    assert [(r["steps"], r["evaluations"]) for r in rows] == [(20, 20), (5, 5), (5, 9), (5, 5)]
    assert all(r["samples_per_s"] > 0 and r["point_steps_per_s"] > 0 for r in rows)
    assert "sampler heun N=256 d=1: 5 steps, 9 evaluations" in bench.format_table(
        {"machine": {"cpu_model": "?", "cpu_count": 2, "backend": "cpu", "device_kind": "cpu", "jax": "?"},
         "samplers": rows})
