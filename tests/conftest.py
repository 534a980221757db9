"""Strict test configuration: rank promotion raises, so an (N,) vs (N, 1) mistake fails loudly."""
import atexit
import os
import shutil
import tempfile

import jax

# trained feature classifiers (mijax.features) go to a per-session folder, not the user's ~/.cache
os.environ["MIJAX_CACHE"] = tempfile.mkdtemp(prefix="mijax-test-cache-")
atexit.register(shutil.rmtree, os.environ["MIJAX_CACHE"], ignore_errors=True)

jax.config.update("jax_numpy_rank_promotion", "raise")
