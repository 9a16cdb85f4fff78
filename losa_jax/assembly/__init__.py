# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Assembles a run from its config: model and state (build), optimizer, train and eval steps, input."""
