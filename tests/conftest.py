# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Shared test fixtures: tiny configs that compile in seconds on a CPU."""
import os

# Tests never download: TFDS must fail fast instead of retrying DNS for minutes.
os.environ.setdefault("TFDS_DISABLE_DOWNLOAD", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ml_collections  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

TINY_BACKBONE = dict(width=32, depth=2, mlp_dim=64, num_heads=2,
                     patch_size=(8, 8), pool_type="tok")


def tiny_config(method="losa", *, num_classes=5, image_size=32, losa=None,
                backbone=None, **kw):
  """A complete training config for a 2-block width-32 ViT at 32 px."""
  c = ml_collections.ConfigDict()
  c.num_classes = num_classes
  c.image_size = image_size
  c.model = ml_collections.ConfigDict(dict(
      method=method, backbone={**TINY_BACKBONE, **(backbone or {})},
      losa={"rank": 4, **(losa or {})}, lora=dict(rank=4),
      adapter=dict(dim=4)))
  c.optax_name = "adam"
  c.lr = 1e-2
  c.wd = 0.0
  c.schedule = kw.pop("schedule", dict(warmup_steps=0,
                                       decay_type="constant"))
  c.grad_clip_norm = 1.0
  c.mesh = [("data", -1)]
  c.update(kw)
  return c


@pytest.fixture
def tiny():
  return tiny_config
