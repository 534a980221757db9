"""mijax.timing: the best of several timed runs after a compiling one, and the machine's name."""
import jax.numpy as jnp

from mijax import timing


def test_time_best_compiles_once_then_keeps_the_best_of_the_timed_runs():
    calls = []

    class Meter:
        def __init__(self):
            self.index = len(calls)

        def read(self):
            return {"wall_seconds": [3.0, 1.0, 2.0][self.index - 1], "extra": self.index}

    out = timing.time_best(lambda: calls.append(1) or jnp.ones(2), repeats=3, meter=Meter)
    assert len(calls) == 4  # one to compile and warm up, three timed
    assert out["seconds"] == 1.0 and out["median_seconds"] == 2.0 and out["times"] == [3.0, 1.0, 2.0]
    assert out["extra"] == 2 and out["first_seconds"] >= 0  # the best run's own figures are kept
    assert len(timing.time_best(lambda: jnp.ones(2), repeats=0)["times"]) == 1


def test_cpu_model_names_family_model_and_isa_flags(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\ncpu family\t: 25\nmodel\t\t: 1\n"
                    "flags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nmodel name\t: other\n")
    assert timing.cpu_model(str(info)) == "AMD EPYC (family 25 model 1; avx2)"
    info.write_text("model name\t: Intel Xeon\ncpu family\t: 6\nmodel\t\t: 143\n"
                    "flags\t\t: avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert timing.cpu_model(str(info)) == "Intel Xeon (family 6 model 143; avx2, avx512f, avx512_bf16, amx_bf16, amx_tile)"
    info.write_text("model name\t: Some CPU\n")  # no family (not x86 Linux): the name alone
    assert timing.cpu_model(str(info)) == "Some CPU"


def test_machine_info_names_versions_backend_and_cpu():
    info = timing.machine_info()
    assert info["backend"] == "cpu" and info["device_count"] >= 1 and info["cpu_model"]
