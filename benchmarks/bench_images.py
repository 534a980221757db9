"""Throughput and memory of the image workloads (``mijax bench --images``): the UNet's Adam step, sampling with
Hal on images, and the sampler's compiled memory at two T, beside the eager PyTorch baseline
``shared/baselines/torch_unet.py`` (``--compare-torch``) with the same UNet options, batch, N and T.

Every mijax figure excludes compilation (one warm-up call, then the best of ``repeats`` timed calls). The
baseline's ``trajectory`` mode keeps every step's x0_hat on the host and reduces the last K afterwards (the
published filtering script's Hal); mijax carries Hal in the scan.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp

from mijax import allocator
from mijax.execution import compile_init, plan_for
from mijax.models import build as build_model
from mijax.models.denoiser import ModuleDenoiser
from mijax.config import SamplerConfig, TrainConfig
from mijax.sampling import chunk_rows, sample, sample_chunk
from mijax.diffusion import make_schedule
from mijax.training import init_states, train

# torch_unet.py's defaults: the small CPU configuration (263,025 parameters), batch 64, N = 256, T = 50, K = 10
# groups: GroupNorm groups, at most the channels; attn_levels: levels with self-attention ("" none, "2" the paper
# family's); dropout in the res blocks while training.
DEFAULTS = dict(size=32, channels=16, mults="1,2,2", res_blocks=1, batch=64, steps=10, n=256, timesteps=50,
                window=10, groups=8, attn_levels="", dropout=0.0)
QUICK = dict(size=8, channels=8, mults="1", res_blocks=1, batch=4, steps=2, n=8, timesteps=4, window=2, groups=8,
             attn_levels="", dropout=0.0)


def _levels(o: dict) -> tuple[int, ...]:
    return tuple(int(a) for a in str(o.get("attn_levels", "")).split(",") if a)


def _options(o: dict) -> dict:
    return {"channels": int(o["channels"]), "mults": tuple(int(m) for m in str(o["mults"]).split(",")),
            "res_blocks": int(o["res_blocks"]), "groups": min(int(o.get("groups", 8)), int(o["channels"])),
            "attn_levels": _levels(o), "dropout": float(o.get("dropout", 0.0)), "conv": o.get("conv", "xla")}


def baseline_options(o: dict) -> dict:
    """torch_unet.py's command-line options for the same UNet as ``o`` (attention and dropout only when set)."""
    unet = _options(o)
    out = dict(size=o["size"], channels=o["channels"], mults=o["mults"], res_blocks=o["res_blocks"],
               groups=unet["groups"])
    if unet["attn_levels"]:
        out["attn_levels"] = ",".join(str(a) for a in unet["attn_levels"])
    if unet["dropout"]:
        out["dropout"] = unet["dropout"]
    return out


def parameter_count(o: dict) -> int:
    module = build_model("unet", (o["size"], o["size"], 1), options=_options(o))
    x = jax.ShapeDtypeStruct((1, o["size"], o["size"], 1), jnp.float32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), x, jax.ShapeDtypeStruct((1,), jnp.int32))
    return sum(int(a.size) for a in jax.tree.leaves(shapes))


def grouped_devices(o: dict) -> int:
    """The batch groups of the second training measurement: the most local devices, a power of two, that
    divide the batch (1: none; see ``TrainConfig.batch_groups``)."""
    groups = 1
    while groups * 2 <= jax.local_device_count() and o["batch"] % (groups * 2) == 0:
        groups *= 2
    return groups


def bench_unet_training(o: dict, repeats: int, time_best, batch_groups: int = 1) -> dict:
    """ms per Adam step (lr 2e-4 as the baseline) of :func:`mijax.training.train` on one UNet, batch B, its
    gradient in ``batch_groups`` groups (one per device)."""
    module = build_model("unet", (o["size"], o["size"], 1), options=_options(o))
    shape = (o["size"], o["size"], 1)
    config = TrainConfig(steps=o["steps"], batch_size=o["batch"], learning_rate=2e-4, steps_per_call=o["steps"],
                         batch_groups=batch_groups)
    state = jax.tree.map(lambda a: a[0], init_states(module, config, shape, jax.random.key(0)[None]))
    data = jax.random.uniform(jax.random.key(1), (o["batch"],) + shape, jnp.float32, -1.0, 1.0)
    denoise_fn, schedule = ModuleDenoiser(module), make_schedule("linear", 1000, 1e-4, 0.02)
    holder = {"state": state, "losses": []}

    def call():
        # mijax.training.train, as runs train: on CPU a host loop of loop-free steps (the plan's host_loops)
        start = int(holder["state"].step)
        holder["state"] = train(denoise_fn, schedule, config, holder["state"], jax.random.key(2), data,
                                stop_at=start + o["steps"], callback=lambda s, losses: holder["losses"].append(losses))
        return holder["state"].params

    timing = time_best(call, repeats)
    return {**timing, "ms_per_step": 1e3 * timing["seconds"] / o["steps"], "host_loop": plan_for(denoise_fn).host_loops,
            "batch_groups": batch_groups,
            "losses_finite": bool(all(jnp.all(jnp.isfinite(l)) for l in holder["losses"]))}


@functools.lru_cache(maxsize=2)
def _initial_params(module, size: int):
    # compiled once per UNet (op by op, its initialisation compiles ~130 small programs); two kept: run_images
    # samples with the UNet, then its oneDNN twin, then measures the first's memory
    args = (jax.random.key(0), jnp.zeros((1, size, size, 1)), jnp.zeros((1,), jnp.int32))
    return compile_init(module.init, *args)(*args)


def _sampling_pieces(o: dict, timesteps: int):
    module = build_model("unet", (o["size"], o["size"], 1), options=_options(o))
    params = _initial_params(module, o["size"])
    # random output weights: the zero-initialised last convolution would make every step trivial
    params = jax.tree_util.tree_map_with_path(
        lambda path, a: jax.random.normal(jax.random.key(3), a.shape) * 0.02 if a.ndim == 4 and not a.any() else a,
        params)
    return ModuleDenoiser(module), params, make_schedule("linear", timesteps, 1e-4, 0.02)


def bench_unet_sampling(o: dict, repeats: int, time_best) -> dict:
    """Seconds to draw N images with Hal (window K, x0_hat clipped) in one chunk."""
    denoise_fn, params, schedule = _sampling_pieces(o, o["timesteps"])
    config = SamplerConfig(hal_window=o["window"], clip_x0=True)
    shape = (o["size"], o["size"], 1)
    holder = {}

    def call():
        holder["out"] = sample(denoise_fn, params, schedule, jax.random.key(4), o["n"], shape, config)
        return holder["out"].hal

    timing = time_best(call, repeats)
    return {**timing, "image_steps_per_s": o["n"] * o["timesteps"] / timing["seconds"],
            "hal_finite": bool(jnp.all(jnp.isfinite(holder["out"].hal)))}


def unet_compiled_memory(o: dict, timesteps: int) -> Optional[dict]:
    """XLA's memory analysis of the compiled image sampler (N images, T steps, Hal); None if unavailable."""
    denoise_fn, params, schedule = _sampling_pieces(o, timesteps)
    config = SamplerConfig(hal_window=o["window"], clip_x0=True)
    rows_per_block = plan_for(denoise_fn).rows_per_block
    rows = chunk_rows(o["n"], None, 1, rows_per_block)[1]
    compiled = sample_chunk.lower(denoise_fn, params, schedule, jax.random.key(4), jnp.uint32(0), config,
                                  (o["size"], o["size"], 1), rows, rows_per_block=rows_per_block).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        return None
    return {"timesteps": timesteps, "rows": rows, "temp_size_in_bytes": int(analysis.temp_size_in_bytes),
            "argument_size_in_bytes": int(analysis.argument_size_in_bytes),
            "output_size_in_bytes": int(analysis.output_size_in_bytes)}


def run_images(o: dict, repeats: int, measure, time_best, script: Optional[Path], torch_repeats: int,
               bench_torch) -> dict:
    """All image measurements, each torch one right after its mijax counterpart (the same machine state)."""
    torch_options = baseline_options(o)
    out = {"options": dict(o), "parameters": parameter_count(o)}
    out["training"] = measure(lambda: bench_unet_training(o, repeats, time_best))
    groups = grouped_devices(o)
    if groups > 1:  # the same step with the batch's gradient in one group per device
        out["training_grouped"] = measure(lambda: bench_unet_training(o, repeats, time_best, groups))
    train_options = dict(torch_options, batch=o["batch"], steps=o["steps"])
    if script is not None:
        out["torch_train"] = measure(lambda: bench_torch(script, "train", train_options, torch_repeats))
        torch_ms = out["torch_train"]["seconds"] / o["steps"] * 1e3
        out["training_speedup"] = torch_ms / out["training"]["ms_per_step"]
        if "training_grouped" in out:
            out["training_grouped_speedup"] = torch_ms / out["training_grouped"]["ms_per_step"]
        if allocator.changed_by_restart():  # the baseline given the mijax program's allocator too, for fairness
            out["torch_train_same_allocator"] = measure(lambda: bench_torch(
                script, "train", train_options, torch_repeats, env=dict(os.environ)))
            out["torch_train_same_allocator"]["allocator"] = allocator.in_use()
            same_ms = out["torch_train_same_allocator"]["seconds"] / o["steps"] * 1e3
            out["training_speedup_same_allocator"] = same_ms / out["training"]["ms_per_step"]
    onednn_too = _onednn_here()
    if onednn_too:  # the same UNet with oneDNN's convolutions (conv="onednn"; mijax.models.onednn)
        out["training_onednn"] = measure(lambda: bench_unet_training(dict(o, conv="onednn"), repeats, time_best))
        if script is not None:
            out["training_onednn_speedup"] = torch_ms / out["training_onednn"]["ms_per_step"]
            if "torch_train_same_allocator" in out:
                out["training_onednn_speedup_same_allocator"] = same_ms / out["training_onednn"]["ms_per_step"]
    out["sampling"] = measure(lambda: bench_unet_sampling(o, repeats, time_best))
    if onednn_too:
        out["sampling_onednn"] = measure(lambda: bench_unet_sampling(dict(o, conv="onednn"), repeats, time_best))
    if script is not None:
        common = dict(torch_options, n=o["n"], timesteps=o["timesteps"], window=o["window"])
        out["torch_trajectory"] = measure(lambda: bench_torch(script, "trajectory", common, torch_repeats))
        out["torch_sample"] = measure(lambda: bench_torch(script, "sample", common, torch_repeats))
        out["sampling_speedup_vs_trajectory"] = out["torch_trajectory"]["seconds"] / out["sampling"]["seconds"]
        out["sampling_speedup_vs_sample"] = out["torch_sample"]["seconds"] / out["sampling"]["seconds"]
        if onednn_too:
            out["sampling_onednn_speedup_vs_trajectory"] = (out["torch_trajectory"]["seconds"]
                                                            / out["sampling_onednn"]["seconds"])
    short, long = unet_compiled_memory(o, o["timesteps"]), unet_compiled_memory(o, 10 * o["timesteps"])
    out["memory"] = ({"skipped": f"{jax.default_backend()} gives no compiled memory analysis"} if short is None
                     or long is None else {"short": short, "long": long,
                                           "temp_ratio": long["temp_size_in_bytes"] / max(short["temp_size_in_bytes"], 1)})
    return out


def _onednn_here() -> bool:
    """Whether the bench also measures conv="onednn": on a CPU backend with oneDNN installed."""
    from mijax.models import onednn

    return jax.default_backend() == "cpu" and onednn.available()


def format_rows(r: dict) -> list[tuple[str, str]]:
    o = r["options"]
    unet = _options(o)
    extra = (f" attn={o['attn_levels']}" if unet["attn_levels"] else "") + (
        f" dropout={unet['dropout']}" if unet["dropout"] else "")
    name = (f"UNet C={o['channels']} mults={o['mults']} groups={unet['groups']}"
            f"{extra} {o['size']}x{o['size']} ({r['parameters']:,} params)")
    rows = [(f"{name} Adam step batch={o['batch']}", f"{r['training']['ms_per_step']:.1f} ms/step")]
    if "training_grouped" in r:
        g = r["training_grouped"]
        rows.append((f"  the same, batch_groups={g['batch_groups']} (a group per device)",
                     f"{g['ms_per_step']:.1f} ms/step"))
    if "torch_train" in r:
        grouped = (f" ({r['training_grouped_speedup']:.2f}x with batch groups)"
                   if "training_grouped_speedup" in r else "")
        rows.append(("  torch_unet.py train", f"{1e3 * r['torch_train']['seconds'] / o['steps']:.1f} ms/step; mijax "
                                              f"speed-up {r['training_speedup']:.2f}x{grouped}"))
    if "training_onednn" in r:
        speedup = (f"; speed-up vs torch {r['training_onednn_speedup']:.2f}x"
                   if "training_onednn_speedup" in r else "")
        rows.append(("  the same, conv=onednn (oneDNN's convolutions)",
                     f"{r['training_onednn']['ms_per_step']:.1f} ms/step{speedup}"))
    if "torch_train_same_allocator" in r:
        same = r["torch_train_same_allocator"]
        onednn = (f", conv=onednn {r['training_onednn_speedup_same_allocator']:.2f}x"
                  if "training_onednn_speedup_same_allocator" in r else "")
        rows.append((f"  torch_unet.py train under mijax's allocator ({same['allocator']})",
                     f"{1e3 * same['seconds'] / o['steps']:.1f} ms/step; mijax speed-up "
                     f"{r['training_speedup_same_allocator']:.2f}x{onednn}"))
    rows.append((f"  sampling+Hal N={o['n']} T={o['timesteps']} K={o['window']}",
                 f"{r['sampling']['seconds']:.2f} s ({r['sampling']['image_steps_per_s']:.0f} image-steps/s)"))
    if "sampling_onednn" in r:
        speedup = (f"; speed-up vs torch trajectory {r['sampling_onednn_speedup_vs_trajectory']:.2f}x"
                   if "sampling_onednn_speedup_vs_trajectory" in r else "")
        rows.append(("  the same, conv=onednn", f"{r['sampling_onednn']['seconds']:.2f} s "
                     f"({r['sampling_onednn']['image_steps_per_s']:.0f} image-steps/s){speedup}"))
    if "torch_trajectory" in r:
        rows.append(("  torch_unet.py trajectory", f"{r['torch_trajectory']['seconds']:.2f} s; mijax speed-up "
                                                   f"{r['sampling_speedup_vs_trajectory']:.2f}x"))
        rows.append(("  torch_unet.py sample (no Hal)", f"{r['torch_sample']['seconds']:.2f} s; mijax (with Hal) "
                                                        f"speed-up {r['sampling_speedup_vs_sample']:.2f}x"))
    m = r["memory"]
    if "skipped" in m:
        rows.append(("  compiled sampler memory", m["skipped"]))
    else:
        rows.append((f"  compiled temp memory T={m['short']['timesteps']} vs T={m['long']['timesteps']}",
                     f"{m['short']['temp_size_in_bytes'] / 2**20:.2f} vs {m['long']['temp_size_in_bytes'] / 2**20:.2f}"
                     f" MiB (ratio {m['temp_ratio']:.3f})"))
    return rows
