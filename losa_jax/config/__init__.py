# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Configs: the schema (keys, defaults, checks), config files and flags, batch checks, the workdir."""
