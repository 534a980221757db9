"""Strict test configuration: rank promotion raises, so an (N,) vs (N, 1) mistake fails loudly."""
import atexit
import os
import shutil
import tempfile

import jax

from mijax import execution

# trained feature classifiers (mijax.features) go to a per-session folder, not the user's ~/.cache
os.environ["MIJAX_CACHE"] = tempfile.mkdtemp(prefix="mijax-test-cache-")
atexit.register(shutil.rmtree, os.environ["MIJAX_CACHE"], ignore_errors=True)

jax.config.update("jax_numpy_rank_promotion", "raise")

# the kernels the mijax program compiles (XLA:CPU's own, not YNNPACK's), before any device is touched
execution.use_xla_cpu_kernels()

# Many tests compile the same small programs (the paper's MLP at a few sizes, the tiny UNets): XLA's
# compilation cache shares them between tests and between pytest's worker processes, in one folder per run
# made by the first process (pytest's own, before it starts its workers, which inherit the variable).
if "MIJAX_TEST_XLA_CACHE" not in os.environ:
    os.environ["MIJAX_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="mijax-test-xla-")
    atexit.register(shutil.rmtree, os.environ["MIJAX_TEST_XLA_CACHE"], ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ["MIJAX_TEST_XLA_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
