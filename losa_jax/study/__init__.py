# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""A small-scale, offline reproduction of the paper's efficiency claims.

* `tasks`: real and procedural image tasks that need no download (sklearn
  digits, few-label MNIST, dSprites-style location / orientation).
* `run`: `python -m losa_jax.study.run --out docs/study_results`, every
  method at equal step budgets on every task with the shipped backbone,
  several seeds; writes CSVs, plots and a markdown table (docs/study.md).
"""
