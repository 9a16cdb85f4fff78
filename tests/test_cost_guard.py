# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Compiled-cost guard: a side method's train step (LoSA, LST, LAST) costs
about one backbone forward.

Compile-only (abstract inputs, nothing materialised), ViT-S/16 at 224 px,
batch 32. XLA's FLOP and memory estimates are deterministic, so their ratios
can be asserted. If anything starts reading backbone gradients (a global-norm
clip over all params, a grad-norm metric over the whole tree, differentiating
the full tree), the backbone's backward pass comes back and this test fails.
"""
import functools

import jax
import jax.numpy as jnp
import optax
import pytest

from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.utils import cost
from losa_jax.assembly import steps
from losa_jax.models import model as model_lib

BATCH = 32


def _config(method):
  return tiny_config(method, num_classes=100, image_size=224,
                     backbone=dict(variant="S/16", width=384, depth=12,
                                   mlp_dim=1536, num_heads=6,
                                   patch_size=(16, 16)),
                     losa=dict(rank=8), optax_name="adamw", wd=1e-4)


@functools.lru_cache(maxsize=None)
def _forward():
  fn, shape = build.backbone_forward(_config("losa"))
  return cost.compiled_cost(
      jax.jit(fn), shape,
      jax.ShapeDtypeStruct((BATCH, 224, 224, 3), jnp.float32))


@functools.lru_cache(maxsize=None)
def _step(method):
  b = build.build(_config(method), total_steps=100)
  return cost.compiled_cost(b.train_step, b.state_shape,
                            steps.abstract_batch(BATCH, b.image_shape))


@pytest.mark.parametrize("method", model_lib.SIDE_METHODS)
def test_side_step_flops_close_to_forward(method):
  assert _step(method)["flops"] <= 1.15 * _forward()["flops"]


@pytest.mark.parametrize("method", model_lib.SIDE_METHODS)
def test_side_temp_memory_far_below_full(method):
  assert _step(method)["temp_bytes"] <= _step("full")["temp_bytes"] / 5


@pytest.mark.parametrize("method", ["lora", "adapter"])
def test_in_backbone_methods_pay_the_backward(method):
  # With frozen weights they still need input gradients through every block.
  assert _step(method)["flops"] >= 1.8 * _forward()["flops"]
  assert _step(method)["temp_bytes"] >= 5 * _step("losa")["temp_bytes"]


def test_guard_catches_a_step_that_reads_backbone_gradients():
  """A step differentiating all params with a global-norm metric over them."""
  b = build.build(_config("losa"), total_steps=100)
  model = b.model

  def bad_step(state, batch):
    def loss_fn(params):
      logits, _ = model.apply({"params": params}, batch["image"])
      return steps.softmax_xent(logits, batch["label"])[0]
    # The model's own stop_gradient still hides the backbone, so peel it off
    # the way a careless rewrite would: full method, same params.
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    return loss, optax.tree.norm(grads)

  full_model = build.model_from_config(_config("full"))

  def careless(state, batch):
    def loss_fn(params):
      p = dict(params)
      logits, _ = full_model.apply({"params": {k: v for k, v in p.items()
                                               if k != "side"}},
                                   batch["image"])
      return steps.softmax_xent(logits, batch["label"])[0]
    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    return loss, optax.tree.norm(grads)

  batch = steps.abstract_batch(BATCH, b.image_shape)
  guarded = cost.compiled_cost(jax.jit(bad_step), b.state_shape, batch)
  # The model-level stop_gradient alone keeps even this step forward-only...
  assert guarded["flops"] <= 1.15 * _forward()["flops"]
  # ...while the same step without it trips the guard.
  broken = cost.compiled_cost(jax.jit(careless), b.state_shape, batch)
  assert broken["flops"] > 1.15 * _forward()["flops"]
