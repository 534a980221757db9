"""Sampling memory does not grow with the number of reverse steps T: Hal and the detectors are running
reductions of the scan, and nothing per step and per sample may be kept until a chunk ends.

Each case runs the sampler as the ``mijax`` program does (on an allocator the program uses, one CPU device
per core, XLA:CPU's own kernels) in two fresh processes, at a small and a large T, and compares their peak
resident memory. A leak of a few bytes per sample and step (XLA:CPU's YNNPACK fusions on several devices
kept about 14) shows as 60-150 MB at these sizes; two processes alike differ by up to ~20 MB, so a failing
comparison is measured once more.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mijax import allocator

PROBE = Path(__file__).with_name("memory_probe.py")
LIMIT_MB = 40
SIZES = {  # variant: (samples, small T, large T)
    "points-detectors": (16384, 20, 300),
    "images-detectors": (512, 20, 200),
}
# (variant, MIJAX_MALLOC): points and images, each with the detectors (whose states the scan carries beside
# Hal's), on each allocator the program runs on (mimalloc where installed, else glibc)
CASES = [("points-detectors", "mimalloc"), ("images-detectors", "glibc")]


def _peak_mb(variant: str, malloc: str, timesteps: int, n: int) -> float:
    dropped = ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "LD_PRELOAD", "GLIBC_TUNABLES", "MIJAX_HUGE_PAGES", "MIJAX_ENV_BEFORE")
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("MIMALLOC_")}
    env.update(JAX_PLATFORMS="cpu", MIJAX_CPU_DEVICES="2", MIJAX_MALLOC=malloc)
    out = subprocess.run([sys.executable, str(PROBE), variant, str(timesteps), str(n)], capture_output=True,
                         text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    used, peak = out.stdout.split()[-2:]
    assert used.startswith("mimalloc" if malloc == "mimalloc" and allocator.mimalloc_library() else "glibc"), used
    return int(peak) / 1e6


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak from /proc (Linux)")
@pytest.mark.parametrize("variant,malloc", CASES)
def test_sampling_memory_does_not_grow_with_the_number_of_steps(variant, malloc):
    n, small, large = SIZES[variant]
    growths = []
    for _ in range(2):
        growths.append(_peak_mb(variant, malloc, large, n) - _peak_mb(variant, malloc, small, n))
        if growths[-1] < LIMIT_MB:
            break
    assert min(growths) < LIMIT_MB, f"peak memory grew by {growths} MB from T = {small} to T = {large} ({n} samples)"
