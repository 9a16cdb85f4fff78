# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""A small-scale, offline reproduction of the paper's efficiency claims.

* `run`: every method at equal step budgets on every task, several seeds.
* `budget`: every method at equal tuning budgets (`search`), plus the
  ablation of LoSA's switches (`ablation`).
* `tables`: the tables and files; `python scripts/study_report.py DIR` makes
  their markdown (docs/study.md) and plots.

The tasks (no download) are `losa_jax.datasets.study_tasks`, reachable from
any config as `dict(name="study", task=..., split=...)`.
"""
