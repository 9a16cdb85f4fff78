# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""A small-scale, offline reproduction of the paper's efficiency claims.

* `run`: `python -m losa_jax.study.run --out docs/study_results`, every
  method at equal step budgets on every task with the shipped backbone,
  several seeds, through the trainer's own steps, input pipeline and
  evaluator.
* `tables`: a run's tables and files; `python scripts/study_report.py DIR`
  makes its markdown tables (docs/study.md) and plots.
* `budget`: `python -m losa_jax.study.budget --out
  docs/study_results/budget`, the study at equal tuning budgets: every
  method searches the same lr x wd grid size, selected on a minival split
  carved from train; LoSA's search is one population (one backbone pass per
  step), the others K separate runs; plus the ablation of LoSA's switches
  (`ablation`). `search` has the drivers.

The tasks (sklearn digits, few-label MNIST, dSprites-style location /
orientation; no download) are `losa_jax.datasets.study_tasks`, reachable
from any config as `dict(name="study", task=..., split=...)`.
"""
