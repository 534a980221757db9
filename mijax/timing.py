"""Timing a compiled computation, and the machine a timing was taken on (what an experiment records beside
a cost it reports).

:func:`time_best` runs a function once to compile and warm it up, then ``repeats`` times, blocking on every
result, and keeps the best wall time. :func:`machine_info` names the versions, the backend and its
devices, and the CPU (model, family and the instruction-set features that choose XLA:CPU's kernels).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Any, Callable, Optional

import jax


class WallMeter:
    """Wall time since it was made: ``read()`` gives ``{"wall_seconds": ...}``."""

    def __init__(self):
        self.start = time.perf_counter()

    def read(self) -> dict:
        return {"wall_seconds": time.perf_counter() - self.start}


def time_best(fn: Callable[[], Any], repeats: int, meter: Callable[[], Any] = WallMeter) -> dict:
    """Run ``fn`` once to compile and warm up, then ``repeats`` times (at least once), blocking on every result.

    ``meter()`` starts a measurement and its ``read()`` returns a dict with ``wall_seconds`` (and whatever else
    it measures, kept for the best run).
    Returns:
      ``{"seconds": best, "median_seconds", "times": [every timed run], "first_seconds": compile + first run}``
      and the best run's other figures.
    """
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    runs = []
    for _ in range(max(1, repeats)):
        measurement = meter()
        jax.block_until_ready(fn())
        runs.append(measurement.read())
    best = min(runs, key=lambda r: r["wall_seconds"])
    return {**{k: v for k, v in best.items() if k != "wall_seconds"}, "seconds": best["wall_seconds"],
            "median_seconds": statistics.median(r["wall_seconds"] for r in runs),
            "times": [round(r["wall_seconds"], 6) for r in runs], "first_seconds": round(first, 6)}


# The CPU features that decide XLA:CPU's matmul paths on x86 (machines of one vendor name differ in these).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's name, family and model, and which of ``CPU_FLAGS`` it has, e.g. ``Vendor CPU (family 25
    model 1; avx2)``: virtual machines often name only the vendor, and the same name covers several
    generations. Elsewhere than Linux, what :func:`platform.processor` says."""
    fields: dict[str, str] = {}
    try:
        with open(cpuinfo) as f:
            for line in f:
                if not line.strip():
                    break  # the first processor's block describes them all
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or "unknown"
    if "cpu family" not in fields:
        return name
    flags = set(fields.get("flags", "").split())
    return (f"{name} (family {fields['cpu family']} model {fields.get('model', '?')}; "
            f"{', '.join(f for f in CPU_FLAGS if f in flags) or 'none of ' + '/'.join(CPU_FLAGS)})")


def machine_info() -> dict:
    """Versions, backend, devices and CPU of this machine, and its load average (noise in timings)."""
    device = jax.devices()[0]
    info: dict[str, Optional[object]] = {
        "jax": jax.__version__, "backend": jax.default_backend(), "device_kind": device.device_kind,
        "device_count": jax.device_count(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
        "python": platform.python_version(), "cpu_model": cpu_model()}
    if hasattr(os, "getloadavg"):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return info
