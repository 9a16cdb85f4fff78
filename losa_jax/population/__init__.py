# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Populations: many side networks trained on one frozen backbone pass.

* `members`: `config.population` -> member configs (grids, seeds, random
  sampling, successive-halving rungs).
* `build`: the compiled population step (vmapped groups of one structure,
  several structures in one step, the backbone run once per batch).

The trainer is `losa_jax.trainers.population` (reached through
`python -m losa_jax.train` when the config has a `population`).
"""
