# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Serving finished runs: several tasks over one backbone pass, and their export."""
