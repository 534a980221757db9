"""How mijax runs a computation, decided apart from what it computes: the plan of a model on a backend,
devices, meshes and processes, and progress bars for long work.

**Plans.** One :class:`Plan` per model and backend.

Training (init, a step, scanned steps) and sampling (the reverse step and its scan) compute the same numbers
whatever the plan; the plan says how they are dispatched and compiled:

* ``optimised_init``: whether the model's initialisation compiles at the backend's default optimisation
  level, or unoptimised (:func:`compile_init`).
* ``host_loops``: whether training runs its steps as a host loop of loop-free programs (one dispatch per step)
  rather than a ``lax.scan`` (:func:`mijax.training.train`).
* ``rows_per_block``: the most rows of a device that run through the reverse steps together
  (:func:`mijax.sampling.sample_chunks`; None: all of them).
* ``calls_use_all_cores``: whether one call of the model already runs on every CPU core, so that the samples
  and seeds get one CPU device per process rather than one per core (:func:`auto_devices`).
* ``seed_batch``: the seeds computed together inside a device (:func:`default_seed_batch`;
  None: all of them).

:func:`plan_for` makes the plan from the backend and the model's class: accelerators get one plan for every
model; on CPU a model gets ``CPU_PLAN`` unless ``CPU_PLANS`` names its class.

The choices made once per process, before JAX starts its backends, are not part of a plan: the allocator
(:func:`mijax.allocator.restart_with_allocator`, which the ``mijax`` program runs first), XLA:CPU's own
kernels in place of YNNPACK's, convolutions included (:func:`use_xla_cpu_kernels`), and
one CPU device per core (:func:`use_cpu_cores`). The ``mijax`` program, the benchmarks
and the test suite make them in that order.

**Devices, meshes and processes.** How mijax spreads samples and seeds over every accelerator.

Two one-axis meshes carry all of mijax's parallelism:

* ``"rows"``: sampling splits the N samples of a chunk across devices. Sample ``i`` draws its noise from
  ``fold_in(key, i)`` wherever it runs, and every device's block is a multiple of ``ROW_BLOCK`` rows, so
  the samples and their Hal are bit-identical on 1, 2 or 8 devices (and across hosts).
* ``"seeds"``: seed-stacked training splits the S models across devices (each device trains S / D of
  them; the models are independent, so there is no communication).

Inside one device, the seeds of a stack run one after the other (``lax.map``) on CPU, where a vmap over
parameters turns every matmul into a batched ``dot_general`` that XLA:CPU runs ~1.4x slower than the
separate matmuls; on GPU and TPU they are vmapped (a small model leaves the chip idle otherwise). The
choice (``seed_batch``) never changes a number: a seed's program is the same either way on CPU.

One device per CPU core: XLA:CPU runs each operation of one device's program across all the cores, and the
paper's network is many small operations per step, each handed between threads. Split into one
device per core (:func:`use_cpu_cores`, which the ``mijax`` program calls first), the sampler's rows and
the training's seeds go to devices that each keep one core busy: on 2 cores sampling is about 1.5x faster
and training 4 seeds at batch 500 about 1.85x, with the same numbers.

Many hosts: call :func:`initialize` first (``jax.distributed.initialize``; on CPU the collectives are
gloo); meshes then span ``jax.devices()`` of every process, inputs are replicated with
:func:`replicate` and results come back to each process with :func:`to_host`.

**Progress.** :func:`progress_bar` returns a tqdm bar, or a stand-in that does nothing when progress is off or this
is not process 0 of a multi-process job, so callers never test for None.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

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


# ----------------------------------------------------------------------------------------------------
# Devices, meshes and processes.

ROWS, SEEDS, BATCH = "rows", "seeds", "batch"

# How long a process waits for the others at a barrier. Gloo gives up on a collective after 30 s, so a
# process that falls behind (process 0 packing a large samples file; a loaded machine compiling) would
# fail the others' next gather: every gather and every barrier first meets at the coordination service,
# whose wait is this long (``MIJAX_BARRIER_TIMEOUT`` seconds).
BARRIER_TIMEOUT_S = 3600.0
_barrier_count = itertools.count()  # barrier ids must be fresh; every process calls them in the same order


CPU_DEVICES_ENV = "MIJAX_CPU_DEVICES"


def usable_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def use_cpu_cores(count: Optional[int] = None) -> int:
    """Start JAX's CPU backend with one device per core; returns the CPU device count it will have, or 0 when
    nothing was changed.

    ``count``: devices (default ``$MIJAX_CPU_DEVICES`` if set, else :func:`usable_cores`). Sets JAX's
    ``jax_num_cpu_devices``, so it only works before JAX starts its backends (the first call that touches a
    device); it changes nothing once they have started, when a CPU device count is already chosen
    (``jax_num_cpu_devices``, ``JAX_NUM_CPU_DEVICES`` or XLA's ``--xla_force_host_platform_device_count``),
    or for ``count`` <= 1 (``MIJAX_CPU_DEVICES=1`` keeps one device). Samples and trained models do not
    depend on the device count (see the module doc), only the speed does; accelerators are not affected.
    For one process: the ``mijax`` program leaves a multi-process job's devices as they are.
    """
    if count is None:
        env = os.environ.get(CPU_DEVICES_ENV, "").strip()
        try:
            count = int(env) if env else usable_cores()
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"{CPU_DEVICES_ENV} must be a whole number of devices >= 1, got {env!r}")
    elif count < 1:
        raise ValueError(f"the CPU device count must be >= 1, got {count}")
    chosen = (jax.config.jax_num_cpu_devices > 0 or "JAX_NUM_CPU_DEVICES" in os.environ
              or "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""))
    if count <= 1 or chosen or _backends_started():
        return 0
    jax.config.update("jax_num_cpu_devices", count)
    return count


YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
XLA_KERNELS_FLAG = YNN_FUSION_FLAG + "="  # no fusion type: every operation on XLA:CPU's own kernels
# the jaxlib from which the flag is known to parse (XLA aborts the process on a flag it does not know)
YNN_FLAG_JAXLIB = (0, 10, 2)


def use_xla_cpu_kernels() -> bool:
    """Run every CPU operation on XLA:CPU's own kernels, none on YNNPACK's; returns whether anything changed.

    XLA:CPU (jax 0.10) hands dots, reductions, elementwise fusions and (on some CPUs) convolutions to
    YNNPACK by default. Two reasons to take them back, both measured with the paper's MLP and the UNet:
    with several CPU devices running at once (one per core, :func:`use_cpu_cores`), YNNPACK's fusions inside
    a loop keep memory for every call until the program ends, so a sampler's memory grew with the number of
    reverse steps (about 14 bytes per sample and step) where it should stay flat; and YNNPACK's
    convolutions made the UNet's training step ~1.5x slower on some CPUs. This appends ``XLA_KERNELS_FLAG``
    (``--xla_cpu_experimental_ynn_fusion_type=``, no fusion type) to ``XLA_FLAGS``. Only works before JAX
    starts its backends (the first call that touches a device), with jaxlib 0.10.2 or later (where the
    flag was measured), and never overrides a YNN setting of the user's own ``XLA_FLAGS``. Other kernels
    round differently: numbers change in the last bits, always the same way in processes set up alike (the
    ``mijax`` program and the test suite call this first).
    """
    if YNN_FUSION_FLAG in os.environ.get("XLA_FLAGS", "") or _backends_started() or not _knows_ynn_flag():
        return False
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_KERNELS_FLAG}".strip()
    return True


def _knows_ynn_flag() -> bool:
    import jaxlib

    parts = [int(p) for p in re.findall(r"\d+", getattr(jaxlib, "__version__", ""))[:3]]
    return len(parts) == 3 and tuple(parts) >= YNN_FLAG_JAXLIB


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # another jax: assume started, so that nothing fails later
        return True


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> bool:
    """Join a multi-process JAX job; returns whether one was joined.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator.
      num_processes, process_id: this job's size and this process's rank (0 .. num_processes - 1).
      auto: let JAX detect the settings from the platform (Cloud TPU, SLURM, Open MPI, ...).
    With no setting and ``auto`` False nothing happens (one process). Must run before any other JAX call
    that touches a device.
    """
    given = (coordinator_address, num_processes, process_id)
    if not auto and all(v is None for v in given):
        return False
    if not auto and any(v is None for v in given):
        raise ValueError("a multi-process run needs the coordinator address, the process count and the "
                         "process id (or auto-detection)")
    if num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process id must be in 0..{num_processes - 1}, got {process_id}")
    if jax.distributed.is_initialized():  # a second command in the same process (e.g. train, then sample)
        return True
    # CPU processes exchange data through gloo (the default in recent jax; set explicitly so that an
    # environment that changed the default still gets working collectives).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    return True


def mesh(axis: str, devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A one-axis mesh named ``axis`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (axis,))


def auto_devices(denoise_fn: Any = None) -> Optional[list]:
    """The devices ``mesh="auto"`` spreads a model's samples or seeds over: all (None), or one per process
    where the model's :class:`Plan` has ``calls_use_all_cores`` (on CPU, the UNet on oneDNN's
    convolutions: each call runs on every core, so two CPU devices calling at once would only wait for each
    other)."""
    if plan_for(denoise_fn).calls_use_all_cores:
        return [jax.local_devices(process_index=p)[0] for p in range(jax.process_count())]
    return None


def rows_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Optional[Mesh]:
    """The sampling mesh over ``devices`` (default all); None when that is a single device."""
    devices = jax.devices() if devices is None else list(devices)
    return None if len(devices) == 1 and jax.process_count() == 1 else mesh(ROWS, devices)


def seeds_mesh(num_seeds: int, devices: Optional[Sequence[jax.Device]] = None) -> Optional[Mesh]:
    """The training mesh for ``num_seeds`` models: the most devices that divide the seeds evenly.

    None when that is one device of one process (no sharding needed).
    """
    devices = jax.devices() if devices is None else list(devices)
    used = max(d for d in range(1, len(devices) + 1) if num_seeds % d == 0)
    if used == 1 and jax.process_count() == 1:
        return None
    if jax.process_count() > 1 and used != len(devices):
        raise ValueError(f"{num_seeds} seeds do not divide evenly over the {len(devices)} devices of a "
                         f"multi-process job; use a multiple of {len(devices)} seeds")
    return mesh(SEEDS, devices[:used])


def mesh_size(m: Optional[Mesh]) -> int:
    return 1 if m is None else int(math.prod(m.devices.shape))


def default_seed_batch(num_seeds: int) -> int:
    """Seeds computed together (vmapped) inside one device, of ``num_seeds``: the backend's
    :class:`Plan`'s ``seed_batch`` (1 on CPU, see the module doc), else all of them."""
    batch = plan_for().seed_batch
    return max(1, num_seeds) if batch is None else batch


def map_seeds(fn, args: tuple, seed_batch: int, unroll: bool = False):
    """``fn`` over the leading seed axis of ``args``: ``lax.map`` in batches of ``seed_batch`` seeds; with
    ``unroll``, one copy of ``fn`` per seed in the program, one after the other, and no loop."""
    num_seeds = jax.tree.leaves(args)[0].shape[0]
    if unroll:
        outs = [fn(*jax.tree.map(lambda a: a[i], args)) for i in range(num_seeds)]
        return jax.tree.map(lambda *a: jnp.stack(a), *outs)
    if seed_batch <= 1:  # even for one seed: its program is then the unbatched one, whatever S and D are
        return jax.lax.map(lambda a: fn(*a), args)
    if seed_batch >= num_seeds:
        return jax.vmap(fn)(*args)
    return jax.lax.map(lambda a: fn(*a), args, batch_size=seed_batch)


def _put(a, sharding: NamedSharding):
    """One leaf onto ``sharding``: device_put in one process, built from the host value in several."""
    if jax.process_count() == 1:
        return jax.device_put(a, sharding)
    if isinstance(a, jax.Array) and not a.is_fully_addressable:  # already global (e.g. a later dispatch)
        return a if a.sharding == sharding else jax.device_put(a, sharding)
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(a)
        return jax.random.wrap_key_data(_put(jax.random.key_data(a), sharding), impl=impl)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Any, m: Optional[Mesh]) -> Any:
    """Every leaf of ``tree`` replicated on every device of ``m`` (unchanged when ``m`` is None).

    In a multi-process job every process must pass the same values (they are read from its host copy).
    """
    if m is None:
        return tree
    sharding = NamedSharding(m, P())
    return jax.tree.map(lambda a: _put(a, sharding), tree)


def shard_leading(tree: Any, m: Optional[Mesh]) -> Any:
    """Every leaf of ``tree`` split along its leading axis over ``m`` (unchanged when ``m`` is None)."""
    if m is None:
        return tree
    sharding = NamedSharding(m, P(m.axis_names[0]))
    return jax.tree.map(lambda a: _put(a, sharding), tree)


def to_host(tree: Any) -> Any:
    """Host numpy copies of ``tree``'s leaves; arrays spread over several processes are gathered first
    (after a :func:`barrier`, so that no process reaches gloo's short collective timeout waiting)."""
    if any(isinstance(a, jax.Array) and not a.is_fully_addressable for a in jax.tree.leaves(tree)):
        barrier("mijax.to_host")

    def get(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(get, tree)


def barrier(name: str) -> None:
    """Wait until every process reaches this point (nothing to do in one process), for up to
    ``MIJAX_BARRIER_TIMEOUT`` seconds (default :data:`BARRIER_TIMEOUT_S`)."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed as jax_distributed  # the coordination client (as orbax uses it)

    client = getattr(jax_distributed.global_state, "client", None)
    if client is None or not hasattr(client, "wait_at_barrier"):  # not started by jax.distributed: collectives
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    timeout = float(os.environ.get("MIJAX_BARRIER_TIMEOUT", BARRIER_TIMEOUT_S))
    client.wait_at_barrier(f"{name}.{next(_barrier_count)}", timeout_in_ms=int(timeout * 1000))


# ----------------------------------------------------------------------------------------------------
# Progress bars.
class _Silent:
    """The interface of a tqdm bar that callers use, doing nothing."""

    n = 0

    def update(self, count: int = 1) -> None:
        self.n += count

    def set_postfix(self, **kwargs) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int, desc: str, unit: str = "step", initial: int = 0):
    """A progress bar of ``total`` units starting at ``initial``; silent unless ``enabled`` and process 0."""
    if not enabled or jax.process_index() != 0:
        silent = _Silent()
        silent.n = initial
        return silent
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True)
