# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Benchmark cells: the trainer config of one (variant, method) and its
compiled cost.

Every section of `python -m losa_jax.bench` builds its models from `make_config`
so that all methods share optimizer, clipping, rank and head; `step_cost` /
`forward_cost` compile the real train step / frozen forward on abstract
inputs (nothing is allocated, so billion-parameter backbones fit).
"""
from typing import Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections

from losa_jax.assembly import build
from losa_jax.assembly import steps
from losa_jax.models import vit
from losa_jax.utils import cost
from losa_jax.utils import tree as tree_lib

# A 4-block width-32 ViT at 32 px, for --quick.
TINY = dict(width=32, depth=4, mlp_dim=64, num_heads=2, patch_size=(8, 8))
FIT_GIB = (16, 40, 80)


def variant_backbone(variant: str):
  """"B/16" -> (backbone kwargs, image size); "tiny" -> the --quick model."""
  if variant == "tiny":
    return dict(TINY), 32
  return dict(variant=variant), 224


def make_config(variant: str, method: str, *, bf16: bool = False,
                scan: bool = False, remat: bool = True,
                depth: Optional[int] = None, rank: int = 8,
                num_classes: int = 100):
  """A trainer config for one benchmark cell (AdamW, masked clip, rank 8).

  Args:
    variant: ViT variant ("B/16") or "tiny" (TINY at 32 px).
    method: one of registry.METHODS.
    bf16: bf16 backbone matmuls, and frozen params stored in bf16 (`full`
      keeps f32 params: it trains them).
    scan: scanned blocks (lax.scan over a [depth, ...] weight stack).
    remat: with scan, per-block rematerialisation ("nothing_saveable").
    depth: overrides the variant's depth (linearity checks).
    rank: LoSA / LoRA rank and adapter bottleneck width.
    num_classes: head width.
  """
  bb, size = variant_backbone(variant)
  bb.update(pool_type="tok", scan=scan)
  if scan:
    bb["remat_policy"] = "nothing_saveable" if remat else "none"
  if bf16:
    bb["dtype_mm"] = "bfloat16"
  if depth:
    bb["depth"] = depth
  c = ml_collections.ConfigDict(dict(
      num_classes=num_classes, image_size=size,
      model=dict(method=method, backbone=bb, losa=dict(rank=rank),
                 lora=dict(rank=rank), adapter=dict(dim=rank)),
      optax_name="adamw", lr=1e-3, wd=1e-4,
      grad_clip_norm=1.0,     # masked to trainable params by optim.make
      schedule=dict(warmup_steps=0, decay_type="cosine"),
      mesh=[("data", -1)]))
  if bf16 and method != "full":
    c.model_load = dict(param_dtype="bfloat16")
  return c


def depth_of(variant: str) -> int:
  """Number of blocks of `variant` ("tiny" included)."""
  bb, _ = variant_backbone(variant)
  return bb.get("depth") or vit.decode_variant(bb["variant"])["depth"]


def step_cost(config, batch: int, *, donate: bool = True) -> Dict[str, float]:
  """Compiled cost of the real train step (build.build) on abstract inputs.

  Returns losa_jax.utils.cost.compiled_cost's fields plus trainable_params and
  total_params.
  """
  b = build.build(config, total_steps=1000, donate=donate)
  c = cost.compiled_cost(b.train_step, b.state_shape,
                         steps.abstract_batch(batch, b.image_shape))
  c["trainable_params"] = b.num_trainable()
  c["total_params"] = tree_lib.count(b.state_shape["params"])
  return c


def forward_cost(config, batch: int) -> Dict[str, float]:
  """Compiled cost of the frozen backbone's inference forward on a
  [batch, size, size, 3] f32 image batch (fields as step_cost)."""
  fn, shape = build.backbone_forward(config)
  s = config.image_size
  c = cost.compiled_cost(jax.jit(fn), shape, jax.ShapeDtypeStruct(
      (batch, s, s, 3), jnp.float32))
  c["trainable_params"] = 0
  c["total_params"] = tree_lib.count(shape)
  return c
