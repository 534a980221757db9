"""How a model runs on a backend, decided apart from what it computes: one :class:`Plan` per model and backend.

Training (init, a step, scanned steps) and sampling (the reverse step and its scan) compute the same numbers
whatever the plan; the plan says how they are dispatched and compiled:

* ``optimised_init``: whether the model's initialisation compiles at the backend's default optimisation
  level, or unoptimised (:func:`compile_init`).
* ``host_loops``: whether training runs its steps as a host loop of loop-free programs (one dispatch per step)
  rather than a ``lax.scan`` (:func:`mijax.training.train`).
* ``rows_per_block``: the most rows of a device that run through the reverse steps together
  (:func:`mijax.sampling.sample_chunks`; None: all of them).
* ``calls_use_all_cores``: whether one call of the model already runs on every CPU core, so that the samples
  and seeds get one CPU device per process rather than one per core (:func:`mijax.distributed.auto_devices`).
* ``seed_batch``: the seeds computed together inside a device (:func:`mijax.distributed.default_seed_batch`;
  None: all of them).

:func:`plan_for` makes the plan from the backend and the model's class: accelerators get one plan for every
model; on CPU a model gets ``CPU_PLAN`` unless ``CPU_PLANS`` names its class.

The choices made once per process, before JAX starts its backends, are not part of a plan: the allocator
(:func:`mijax.allocator.restart_with_allocator`, which the ``mijax`` program runs first), XLA:CPU's own
kernels in place of YNNPACK's, convolutions included (:func:`mijax.distributed.use_xla_cpu_kernels`), and
one CPU device per core (:func:`mijax.distributed.use_cpu_cores`). The ``mijax`` program, the benchmarks
and the test suite make them in that order.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax

# On CPU a device's rows run through the T steps in blocks of at most this many. Two reasons: the blocks'
# activations stay in cache (~1.3x faster at N = 10,000); and XLA:CPU's matmuls take another code path
# (other rounding) from 4,096 rows up, so blocks below that give every sample the same bits whatever the
# chunk size and device count (tests/test_sampling.py). Both were measured with jax 0.10.2; XLA's
# thresholds may differ on other CPUs and versions (the performance page names the machines).
CPU_ROWS_PER_BLOCK = 3968  # 31 x mijax.sampling.ROW_BLOCK

# XLA:CPU's optimising backend spends most of a model's initialisation compile on the truncated-normal draws
# (the UNet of the quick SHAPES profile: 45 s at the default level, 7.5 s at level 0; the draws then differ from
# the default's in the last bit of ~3% of the weights). Initialisation runs once per model, so on CPU the
# models that ask for it (the UNet) compile it unoptimised; the paper's MLP (0.5 s either way) keeps the
# default and its recorded numbers.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


@dataclasses.dataclass(frozen=True)
class Plan:
    """How one model runs on one backend (see the module doc for each decision and where it acts).

    Attributes:
      backend: the JAX backend the plan is for (``"cpu"``, ``"gpu"``, ``"tpu"``).
      optimised_init: the model's initialisation compiles at the default level (False: unoptimised,
        :func:`compile_init`).
      host_loops: training runs one dispatch per step, each a loop-free program, instead of a ``lax.scan``.
      rows_per_block: the most rows of a device that run through the reverse steps together (None: all).
      calls_use_all_cores: one call of the model runs on every CPU core: one CPU device per process.
      seed_batch: seeds computed together (vmapped) inside a device: 1 on CPU, where a vmap over parameters
        makes XLA:CPU's matmuls slower than separate ones; None (all of them) on accelerators, which a small
        model leaves idle otherwise.
    """

    backend: str
    optimised_init: bool = True
    host_loops: bool = False
    rows_per_block: Optional[int] = None
    calls_use_all_cores: bool = False
    seed_batch: Optional[int] = None


# Every model on CPU unless CPU_PLANS names its class.
CPU_PLAN = Plan("cpu", rows_per_block=CPU_ROWS_PER_BLOCK, seed_batch=1)


def _unet_on_cpu(module) -> Plan:
    # XLA:CPU runs the UNet's convolution gradients ~15x slower inside a ``lax.scan`` (jax 0.10.2;
    # jax-ml/jax#12868): its steps run from the host. Its initialisation takes XLA:CPU's optimising backend
    # ~45 s to compile. Blocks of 128 images keep more of its activations in cache than 256 (an image's
    # activations are ~100x a point's). oneDNN's convolutions (``conv="onednn"``) run each call on every core.
    return dataclasses.replace(CPU_PLAN, optimised_init=False, host_loops=True, rows_per_block=128,
                               calls_use_all_cores=module.conv == "onednn")


# The models whose CPU plan differs from CPU_PLAN, by their Flax module's class ("module.Class", so that this
# table imports no model): a function of the module (its options may matter) -> its Plan.
CPU_PLANS: dict[str, Callable[[Any], Plan]] = {
    "mijax.models.unet.UNet": _unet_on_cpu,
}


def plan_for(model: Any = None, backend: Optional[str] = None) -> Plan:
    """The :class:`Plan` of ``model`` on ``backend`` (default: JAX's default backend): on accelerators the same
    for every model; on CPU the ``CPU_PLANS`` entry of the first class of the module's class hierarchy that
    has one, else ``CPU_PLAN``.

    ``model``: a Flax module, a denoiser that runs one (its ``module``, e.g.
    :class:`~mijax.models.ModuleDenoiser`), or None (any other denoiser: the defaults).
    """
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return Plan(backend)
    import flax.linen as nn

    module = model if isinstance(model, nn.Module) else getattr(model, "module", None)
    for cls in type(module).__mro__:
        plan = CPU_PLANS.get(f"{cls.__module__}.{cls.__qualname__}")
        if plan is not None:
            return plan(module)
    return CPU_PLAN


def compile_init(fn: Callable, *args):
    """``jax.jit(fn)`` compiled for ``args``, unoptimised on CPU (see ``INIT_COMPILER_OPTIONS``): for
    one-off programs such as parameter initialisation."""
    lowered = jax.jit(fn).lower(*args)
    cpu = jax.default_backend() == "cpu"
    return lowered.compile(compiler_options=INIT_COMPILER_OPTIONS) if cpu else lowered.compile()
