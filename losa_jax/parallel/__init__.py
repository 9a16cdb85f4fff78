# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Device meshes, shardings, and multi-process start-up."""
