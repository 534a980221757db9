"""Strict test configuration: rank promotion raises, so an (N,) vs (N, 1) mistake fails loudly."""
import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
