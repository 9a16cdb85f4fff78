# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Small utilities every layer may use: param-tree names, npz files, compiled cost, atomic writes."""
