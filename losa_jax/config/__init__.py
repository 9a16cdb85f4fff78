# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Configs: the schema (keys, defaults, checks) and config files, the
--config flag, batch checks, the workdir."""
