# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Training loops over the assembled state and step: single runs and populations."""
