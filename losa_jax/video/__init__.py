# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The video demo (`python -m losa_jax.video.demo`, see docs/video.md).

Video support lives where each kind of code lives: the backbone in
`losa_jax.models.vivit`, clip pp ops in `losa_jax.pp.video`, frame-folder
and procedural sources in `losa_jax.datasets.frames` /
`losa_jax.datasets.moving_digits`, multi-view evaluation in
`losa_jax.evaluators.video`.
"""
