# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Command-line tools (top layer): `python -m losa_jax.tools.<name> --help`."""
