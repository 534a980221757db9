"""Sharding over devices and processes: the same numbers on 1, 2 and 8 devices.

Fake CPU devices need a fresh JAX, so those checks run in one subprocess (one import, tiny sizes)
that compares meshes of 1, 2 and 8 of its 8 devices.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mijax
from mijax import execution
from mijax.sampling import ROW_BLOCK, chunk_rows

DEVICE_SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_num_cpu_devices", 8)
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import jax.numpy as jnp, numpy as np
    import mijax
    from mijax import execution

    assert jax.device_count() == 8
    # the paper's width: narrower layers fall below XLA:CPU's size threshold for its matmul library, whose
    # per-row results then depend on the number of rows (see mijax.sampling.chunk_rows)
    model = mijax.ToyDenoiser(features=2)
    init_fn = lambda k: model.init(k, jnp.zeros((1, 2)), jnp.zeros((1,), jnp.int32))
    schedule = mijax.make_schedule(num_timesteps=5)
    config = mijax.SamplerConfig(hal_window=3)
    params = jax.jit(init_fn)(jax.random.key(0))  # compiled: op by op, every op compiles for 8 devices
    stacked = jax.jit(jax.vmap(init_fn))(jax.random.split(jax.random.key(1), 3))
    seed_keys = jax.random.split(jax.random.key(2), 3)

    def run(devices):
        mesh = execution.rows_mesh(jax.devices()[:devices])
        one = mijax.sample(model.apply, params, schedule, jax.random.key(3), 300, (2,), config, chunk_size=200,
                           mesh=mesh)
        many = mijax.sample(model.apply, stacked, schedule, seed_keys, 130, (2,), config, seed_axis=True, mesh=mesh)
        return [np.asarray(a) for a in (one.x, one.hal, many.x, many.hal)]

    reference = run(1)
    for devices in (2, 8):
        for a, b in zip(reference, run(devices)):
            assert a.shape == b.shape and np.array_equal(a, b), devices
    # the sharded sampler returns outputs spread over the devices
    out = next(iter(mijax.sample_chunks(model.apply, params, schedule, jax.random.key(3), 512, (2,), config)))[1]
    assert len(out.x.sharding.device_set) == 8

    train_config = mijax.TrainConfig(steps=2, batch_size=16, steps_per_call=2)
    keys = jax.random.split(jax.random.key(4), 4)
    data = jax.random.normal(jax.random.key(5), (4, 32, 2))

    initial = jax.jit(jax.vmap(lambda k: mijax.init_state(init_fn, train_config, k)))

    def train(devices):
        states = initial(keys)
        mesh = execution.seeds_mesh(4, jax.devices()[:devices])
        final = mijax.train(model.apply, schedule, train_config, states, keys, data, seed_axis=True, mesh=mesh)
        return final, [np.asarray(a) for a in jax.tree.leaves(final)]

    reference = train(1)[1]
    for devices in (8,):  # 8 devices hold the 4 seeds on 4 of them
        final, leaves = train(devices)
        assert len(final.params["params"]["output"]["kernel"].sharding.device_set) == min(devices, 4)
        assert all(np.array_equal(a, b) for a, b in zip(reference, leaves)), devices

    # one model's gradient in 4 batch groups: the same numbers on 1, 2 and 4 devices, and the caller's placement
    grouped = mijax.TrainConfig(steps=2, batch_size=16, steps_per_call=2, batch_groups=4)
    alone = jax.tree.map(lambda a: a[0], initial(keys))

    def grouped_run(devices):
        state = jax.tree.map(jnp.copy, alone)  # train donates its state
        final = mijax.train(model.apply, schedule, grouped, state, keys[0], data[0],
                            batch_devices=jax.devices()[:devices])
        kernel = lambda state: state.params["params"]["output"]["kernel"]  # noqa: E731
        assert kernel(final).sharding == kernel(alone).sharding
        return [np.asarray(a) for a in jax.tree.leaves(final)]

    reference = grouped_run(1)
    for devices in (2, 4):
        assert all(np.array_equal(a, b) for a, b in zip(reference, grouped_run(devices))), devices

    # the benchmark's device-count axis: the samples split over all 8 devices (one device's rows:
    # tests/test_bench.py's quick sweep)
    from benchmarks import bench
    rows = bench.bench_sampling_sweep([256], [5], [1], [8], ["float32"], window=3, repeats=1)
    assert [r["devices"] for r in rows] == [8]
    assert all(r["point_steps_per_s"] > 0 for r in rows)
    assert bench.resolve(bench.add_arguments(__import__("argparse").ArgumentParser()).parse_args(
        ["--quick", "--devices", "1,all"])).devices == [1, 8]
    peak = bench.bench_matmul_peak(rows=128, square=64, repeats=1)  # the chain on all 8 devices at once
    assert peak["devices"] == 8 and peak["network_shape_gflops"] > 0 and peak["square_gflops"] > 0
    print("OK")
""")


def test_same_numbers_on_1_2_and_8_devices():
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_chunk_rows_are_whole_blocks_on_every_device():
    assert chunk_rows(1000, None, 1) == (1000, 1024)
    assert chunk_rows(1000, 300, 2) == (300, 512)
    for devices in (1, 2, 8):
        chunk, compiled = chunk_rows(12_345, 1000, devices)
        assert chunk == 1000 and compiled % (devices * ROW_BLOCK) == 0 and compiled - chunk < devices * ROW_BLOCK


@pytest.mark.parametrize("seed_batch", [1, 2, 3])
def test_map_seeds_equals_vmap(seed_batch):
    fn = lambda w, x: jnp.tanh(x @ w)  # noqa: E731
    w = jax.random.normal(jax.random.key(0), (3, 8, 8))
    x = jax.random.normal(jax.random.key(1), (3, 64, 8))
    got = jax.jit(lambda w, x: execution.map_seeds(fn, (w, x), seed_batch))(w, x)
    np.testing.assert_allclose(got, jax.vmap(fn)(w, x), rtol=1e-6, atol=1e-6)


def test_one_device_needs_no_mesh():
    assert execution.rows_mesh(jax.devices()[:1]) is None
    assert execution.seeds_mesh(3, jax.devices()[:1]) is None
    assert execution.mesh_size(None) == 1
    tree = {"a": jnp.ones(3)}
    assert execution.replicate(tree, None) is tree and execution.shard_leading(tree, None) is tree
    np.testing.assert_array_equal(execution.to_host(tree)["a"], np.ones(3))


def test_default_seed_batch():
    expected = 1 if jax.default_backend() == "cpu" else 5
    assert execution.default_seed_batch(5) == expected


def test_initialize_without_settings_is_single_process():
    assert execution.initialize() is False
    with pytest.raises(ValueError, match="coordinator"):
        execution.initialize(coordinator_address="127.0.0.1:1234")
    with pytest.raises(ValueError, match="process id"):
        execution.initialize("127.0.0.1:1234", num_processes=2, process_id=2)


def test_seed_loop_equals_separate_runs_bit_for_bit():
    model = mijax.ToyDenoiser(features=1, width=16)
    init_fn = lambda k: model.init(k, jnp.zeros((1, 1)), jnp.zeros((1,), jnp.int32))  # noqa: E731
    schedule = mijax.make_schedule(num_timesteps=4)
    config = mijax.SamplerConfig(hal_window=2)
    stacked = jax.jit(jax.vmap(init_fn))(jax.random.split(jax.random.key(0), 2))  # one program, not op by op
    keys = jax.random.split(jax.random.key(1), 2)
    both = mijax.sample(model.apply, stacked, schedule, keys, 64, (1,), config, seed_axis=True, seed_batch=1)
    for s in range(2):
        alone = mijax.sample(model.apply, jax.tree.map(lambda a: a[s], stacked), schedule, keys[s], 64, (1,), config)
        np.testing.assert_array_equal(both.x[s], alone.x)
        np.testing.assert_array_equal(both.hal[s], alone.hal)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two_processes(script: str, *args: str, timeout: float = 180.0):
    """Run ``script`` in 2 processes of one jax.distributed job on localhost; None if both exit 0, else an error
    text with both processes' stderr (a process that fails leaves the other waiting: both are then killed).
    Their output goes to files, not pipes: a pipe nobody reads while waiting on the other process fills up
    and blocks its writer, and the pair then waits on each other for ever."""
    import tempfile
    import time

    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    logs = [tempfile.TemporaryFile("w+") for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-c", script, *args,
                               f"--coordinator-address {address} --num-processes 2 --process-id {i}"],
                              stdout=logs[i], stderr=subprocess.STDOUT, text=True, env=env)
             for i in range(2)]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        if any(p.poll() not in (None, 0) for p in procs):
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
    texts = []
    for log in logs:
        log.seek(0)
        texts.append(log.read())
        log.close()
    if all(p.returncode == 0 for p in procs):
        return None
    return "2 processes failed:\n" + "\n".join(f"process {i} (exit {p.returncode}) output:\n{text[-3000:]}"
                                               for i, (p, text) in enumerate(zip(procs, texts)))


TWO_PROCESS_SCRIPT = """
import sys
from mijax.cli import main
train, sample, dist = sys.argv[1].split(), sys.argv[2].split(), sys.argv[3].split()
sys.exit(main(train + dist) or main(sample + dist))
"""


def test_two_processes_train_and_write_what_one_process_does(tmp_path):
    """`mijax train` and `mijax sample` in 2 processes (jax.distributed on localhost, gloo collectives):
    the same parameters and the same samples file as one process, bit for bit."""
    from mijax import runs
    from mijax.cli import main

    train = ("train --dataset gaussian1d --n-train 64 --batch-size 32 --steps 4 --timesteps 5 --seeds 2 "
             "--checkpoint-every 2 --steps-per-call 2 --no-progress --out {}")
    sample = "sample --run {} --n 200 --chunk-size 128 --hal-window 3 --no-progress --out {}"
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(train.format(one).split()) == 0
    assert main(sample.format(one, one / "samples.npz").split()) == 0  # streamed to disk chunk by chunk
    errors = []
    for attempt in range(2):  # once more on a fresh port if the pair fails (seen once under load, cause unknown)
        shutil.rmtree(two, ignore_errors=True)
        error = _run_two_processes(TWO_PROCESS_SCRIPT, train.format(two), sample.format(two, two / "samples.npz"))
        if error is None:
            break
        errors.append(error)
    else:
        pytest.fail("\n\n".join(errors))

    trained = [jax.tree.leaves(runs.load_run(d)[2]) for d in (one, two)]
    assert all(np.array_equal(a, b) for a, b in zip(*trained))
    a, b = np.load(one / "samples.npz"), np.load(two / "samples.npz")
    assert sorted(a.files) == sorted(b.files) == ["config", "hal", "run", "seeds", "step", "x"]
    for name in set(a.files) - {"run"}:  # each records its own run directory
        np.testing.assert_array_equal(a[name], b[name])
    assert str(a["run"]) == str(one.resolve()) and str(b["run"]) == str(two.resolve())
    assert a["x"].shape == (2, 200, 1)
    in_memory = runs.sample_run(one, 200, chunk_size=128, sampler=mijax.SamplerConfig(hal_window=3))
    for name in a.files:
        np.testing.assert_array_equal(a[name], in_memory[name])
    assert not list(one.glob(".*.parts"))  # the memory-mapped scratch files are gone


def test_use_cpu_cores_only_before_the_backends_start(monkeypatch):
    """Here the backends have started: nothing changes. A fresh process gets one device per requested core,
    unless a device count was already chosen."""
    before = jax.device_count()  # starts the backends if nothing had
    assert execution.use_cpu_cores(4) == 0 and jax.device_count() == before
    monkeypatch.setenv(execution.CPU_DEVICES_ENV, "two")
    with pytest.raises(ValueError, match="MIJAX_CPU_DEVICES must be a whole number"):
        execution.use_cpu_cores()
    monkeypatch.setenv(execution.CPU_DEVICES_ENV, "0")
    with pytest.raises(ValueError, match="MIJAX_CPU_DEVICES must be a whole number of devices >= 1"):
        execution.use_cpu_cores()
    with pytest.raises(ValueError, match=">= 1"):
        execution.use_cpu_cores(0)
    script = ("import os, sys, jax, mijax; n = mijax.use_cpu_cores(int(sys.argv[1]) if len(sys.argv) > 1 else None); "
              "print(n, jax.device_count())")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", MIJAX_CPU_DEVICES="3")

    def run(*args, **extra):
        out = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120,
                             env={**env, **extra})
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    assert run() == ["3", "3"]  # the environment's count
    assert run("1") == ["0", "1"]
    assert run("2", XLA_FLAGS="--xla_force_host_platform_device_count=5") == ["0", "5"]  # a count already chosen


def test_xla_cpu_kernels_only_before_the_backends_start_and_never_over_the_users_flags(monkeypatch):
    jax.device_count()  # the backends have started here: nothing changes
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    assert execution.use_xla_cpu_kernels() is False and "XLA_FLAGS" not in os.environ
    # a fresh process: the flag goes in, and convolution gradients, dots and reductions compile without YNNPACK
    script = ("import os, jax, jax.numpy as jnp, mijax; changed = mijax.use_xla_cpu_kernels(); "
              "f = jax.grad(lambda x, w: jnp.sum(jnp.tanh(jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', "
              "dimension_numbers=('NHWC', 'HWIO', 'NHWC')).mean(axis=3)) @ jnp.ones((32, 128))), argnums=(0, 1)); "
              "hlo = jax.jit(f).lower(jnp.ones((64, 32, 32, 32)), jnp.ones((3, 3, 32, 32))).compile().as_text(); "
              "ynn = [l for l in hlo.splitlines() if 'ynn' in l]; "
              "print(changed, len(ynn), repr(os.environ.get('XLA_FLAGS')))")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def run(**extra):
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             env={**env, "JAX_PLATFORMS": "cpu", **extra})
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().split(maxsplit=2)

    assert run(XLA_FLAGS="--xla_cpu_enable_fast_math=false") == [
        "True", "0", repr(f"--xla_cpu_enable_fast_math=false {execution.XLA_KERNELS_FLAG}")]
    own = f"{execution.YNN_FUSION_FLAG}=LIBRARY_FUSION_TYPE_REDUCE"  # the user's choice stays
    assert run(XLA_FLAGS=own)[::2] == ["False", repr(own)]


def test_xla_cpu_kernels_leave_a_jaxlib_that_may_not_know_the_flag_alone(monkeypatch):
    import jaxlib

    monkeypatch.setattr(execution, "_backends_started", lambda: False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for old in ("0.10.1", "0.9.2", "unknown"):
        monkeypatch.setattr(jaxlib, "__version__", old)
        assert execution.use_xla_cpu_kernels() is False and "XLA_FLAGS" not in os.environ
    monkeypatch.setattr(jaxlib, "__version__", "0.11.0.dev20261201")
    assert execution.use_xla_cpu_kernels() is True
    assert os.environ["XLA_FLAGS"] == execution.XLA_KERNELS_FLAG


def test_the_program_leaves_a_multi_process_jobs_devices_alone(monkeypatch):
    from mijax import cli

    calls, kernels = [], []
    monkeypatch.setattr(execution, "use_cpu_cores", lambda: calls.append(1) or 2)
    monkeypatch.setattr(execution, "use_xla_cpu_kernels", lambda: kernels.append(1) or True)
    cli._device_per_core(["bench", "--repeats", "1"])
    cli._device_per_core(["train", "--dataset", "gaussian1d", "--out", "r"])
    cli._device_per_core(["train", "--coordinator-address", "h:1", "--num-processes", "2", "--out", "r"])
    cli._device_per_core(["sample", "--distributed-auto", "--out", "s.npz"])
    assert calls == [1, 1] and kernels == [1] * 4  # XLA:CPU's own kernels in every process
