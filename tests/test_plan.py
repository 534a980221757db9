"""The execution plan (mijax.execution): how each model runs on each backend, decided in one place."""
import dataclasses
import importlib
import re
from pathlib import Path

import jax
import pytest

import mijax
import mijax.experiments
from mijax import execution, models, training
from mijax.execution import CPU_PLAN, CPU_PLANS, CPU_ROWS_PER_BLOCK, Plan, compile_init, plan_for
from mijax.models import FusedDenoiser, ModuleDenoiser
from mijax.sampling import ROW_BLOCK

TINY_UNET = {"channels": 8, "mults": (1,), "groups": 4}


def _unet(**options):
    # the module only: conv="onednn" is built without models.build's check for oneDNN's library
    return models.unet.UNet(**{"mults": (1,), "channels": 8, "groups": 4, **options})


def test_the_mlp_on_cpu_scans_its_steps_and_samples_in_blocks_of_3968_rows():
    mlp = models.build("mlp", (1,))
    plan = plan_for(mlp, "cpu")
    assert plan == Plan("cpu", optimised_init=True, host_loops=False, rows_per_block=3968,
                        calls_use_all_cores=False, seed_batch=1) == CPU_PLAN
    assert CPU_ROWS_PER_BLOCK == 31 * ROW_BLOCK
    # the same for the denoisers that run it, the MLP on images, and a denoiser without a module
    assert plan_for(ModuleDenoiser(mlp), "cpu") == plan == plan_for(FusedDenoiser(mlp), "cpu")
    assert plan_for(models.build("mlp", (4, 4, 1)), "cpu") == plan
    assert plan_for(lambda params, x, t: x, "cpu") == plan == plan_for(None, "cpu")


def test_the_unet_on_cpu_steps_from_the_host_compiles_its_init_unoptimised_and_samples_128_images_a_block():
    unet = models.build("unet", (8, 8, 1), options=TINY_UNET)
    plan = plan_for(unet, "cpu")
    assert plan == Plan("cpu", optimised_init=False, host_loops=True, rows_per_block=128,
                        calls_use_all_cores=False, seed_batch=1)
    assert plan_for(ModuleDenoiser(unet), "cpu") == plan
    # on oneDNN's convolutions each call runs on every core: one CPU device per process
    assert plan_for(_unet(conv="onednn"), "cpu") == Plan("cpu", optimised_init=False, host_loops=True,
                                                        rows_per_block=128, calls_use_all_cores=True, seed_batch=1)

    class Wider(models.unet.UNet):  # a subclass runs as the UNet
        pass

    assert plan_for(Wider(**TINY_UNET), "cpu") == plan
    for name in CPU_PLANS:  # every entry names a class that exists
        module, cls = name.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), cls), type)


def test_init_states_compiles_at_the_plans_level(monkeypatch):
    used = []
    monkeypatch.setattr(training, "_INIT_PROGRAMS", {})
    monkeypatch.setattr(training, "compile_init", lambda fn, *args: used.append(1) or compile_init(fn, *args))
    keys = jax.vmap(jax.random.key)(jax.numpy.arange(1))
    config = mijax.TrainConfig()
    training.init_states(models.build("mlp", (2,)), config, (2,), keys)
    assert used == []  # the default level
    training.init_states(models.build("unet", (8, 8, 1), options=TINY_UNET), config, (8, 8, 1), keys)
    assert used == ([1] if jax.default_backend() == "cpu" else [])


@pytest.mark.parametrize("backend", ["gpu", "tpu"])
def test_accelerators_get_one_plan_for_every_model(backend):
    expected = Plan(backend, optimised_init=True, host_loops=False, rows_per_block=None,
                    calls_use_all_cores=False, seed_batch=None)
    for model in (models.build("mlp", (1,)), models.build("unet", (8, 8, 1), options=TINY_UNET),
                  _unet(conv="onednn"), ModuleDenoiser(models.build("mlp", (2,))), None):
        assert plan_for(model, backend) == expected


def test_the_default_backend_is_jaxs_and_the_library_follows_its_plan():
    unet = ModuleDenoiser(models.build("unet", (8, 8, 1), options=TINY_UNET))
    backend = jax.default_backend()
    assert plan_for(unet) == plan_for(unet, backend)
    assert execution.default_seed_batch(5) == (plan_for().seed_batch or 5)
    assert execution.auto_devices(unet) is None  # every device: an XLA UNet call does not take every core
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan_for(unet).host_loops = False


# the class attributes through which models used to announce how they run
OLD_CAPABILITIES = ("UNOPTIMISED_INIT", "SLOW_GRADIENTS_IN_LOOPS", "CPU_CALLS_USE_ALL_CORES")


def test_no_module_reads_capability_attributes():
    """The models declare nothing about how they run and nothing in the package asks a module for it with
    getattr: the plan (mijax.execution) is the one place."""
    assert not any(hasattr(models.unet.UNet, name) for name in OLD_CAPABILITIES + ("CPU_ROWS_PER_BLOCK",))
    capability = re.compile(r"\b(" + "|".join(OLD_CAPABILITIES) + r")\b")
    read = re.compile(r"getattr\([^)]*\b(CPU_ROWS_PER_BLOCK|" + "|".join(OLD_CAPABILITIES) + r")\b")
    found = []
    for path in sorted([*Path(mijax.__file__).parent.rglob("*.py"), *Path(mijax.experiments.__file__).parent.rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if capability.search(line) or read.search(line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
