# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Checkpoints: the Orbax manager, integrity checks, and what a resume may change."""
