"""One sampling process as the ``mijax`` program runs it (its allocator, one CPU device per core, XLA:CPU's
own kernels), for the memory test: ``python tests/memory_probe.py VARIANT T N`` samples N of a random-init model over a
T-step schedule and prints the allocator it ran on and the process's peak resident memory in bytes
(``VmHWM``).

Variants: ``points`` (the paper's MLP, 1D, Hal only), ``points-detectors`` (with two more Hal windows and
four detectors, the Jacobian's trace among them), ``images`` (a tiny UNet on 8 x 8 images, Hal only),
``images-detectors`` (two more windows and three detectors). Trajectories are off (recording them takes
memory in proportion to the steps recorded, by design).
"""
import sys


def peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(variant: str, timesteps: int, n: int) -> None:
    from mijax import allocator

    allocator.restart_with_allocator()  # as the program: mimalloc, glibc's huge pages or none ($MIJAX_MALLOC)
    from mijax import execution

    execution.use_xla_cpu_kernels()  # as the mijax program, before any device is touched
    execution.use_cpu_cores()

    import jax
    import jax.numpy as jnp

    from mijax import detectors, models
    from mijax.models import make_denoiser
    from mijax.config import SamplerConfig
    from mijax.sampling import sample
    from mijax.diffusion import make_schedule

    images = variant.startswith("images")
    shape = (8, 8, 1) if images else (1,)
    options = {"channels": 8, "mults": (1,), "groups": 4} if images else {}
    module = models.build("unet" if images else "mlp", shape, options=options)
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1,) + shape), jnp.zeros((1,), jnp.int32))
    config = SamplerConfig()
    if variant.endswith("-detectors"):
        config = SamplerConfig(hal_windows=((5, 5), (0, 15)),
                               detectors=detectors.parse("xt_var,path_length,eps_norm" + ("" if images else ",jac_trace")))
    out = sample(make_denoiser(module, "xla"), params, make_schedule(num_timesteps=timesteps),
                 jax.random.key(1), n, shape, config)
    jax.device_get((out.x, out.hal, out.scores))
    print(allocator.in_use().replace(" ", "_"), peak_bytes())


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
