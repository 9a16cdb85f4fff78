# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Benchmarks: `python -m losa_jax.bench list`, then
`python -m losa_jax.bench SECTION --out DIR` (see losa_jax/bench/registry.py)."""
