# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Every method of the zoo trains through the same build/train_step path."""
import jax
import numpy as np
import pytest

from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.utils import tree as tree_lib
from losa_jax.models import model as model_lib
from losa_jax.models import vit

X = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
Y = jax.numpy.arange(8) % 5


@pytest.mark.parametrize("method", [m for m in model_lib.METHODS if m not in
                                    model_lib.VIDEO_ONLY_METHODS])
def test_loss_decreases(method):
  b = build.build(tiny_config(method), total_steps=10)
  state = b.init(jax.random.key(0))
  batch = {"image": X, "label": Y}
  losses = []
  for _ in range(10):
    state, metrics = b.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.8 * losses[0], losses
  assert np.isfinite(float(metrics["grad_norm"]))


@pytest.mark.parametrize("method,trained", [
    ("losa", ("side/", "head/")), ("linear", ("head/",)),
    ("full", ("backbone/", "head/")),
    ("lora", ("head/", "_lora/")), ("adapter", ("head/", "adapter_"))])
def test_trainable_sets(method, trained):
  b = build.build(tiny_config(method), total_steps=1)
  names = tree_lib.names(b.state_shape["params"])
  assert sorted(b.mask) == names
  for name, is_trained in b.mask.items():
    assert is_trained == any(t in name for t in trained), (name, is_trained)
  for t in trained:
    assert any(t in name for name in names), f"no {t} leaf"
  # Only LoSA has a side network; every method keeps the whole ViT (full
  # trains all of it, so a missing leaf would go untrained unnoticed).
  assert any(n.startswith("side/") for n in names) == (method == "losa")
  vit_names = tree_lib.names(jax.eval_shape(
      vit.Model(None, **b.model.backbone_kwargs()).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, 32, 32, 3), jax.numpy.float32))["params"])
  assert {f"backbone/{n}" for n in vit_names} <= set(names)


def test_eval_step_counts_masked_examples():
  b = build.build(tiny_config(), total_steps=1)
  state = b.init(jax.random.key(0))
  mask = np.array([1, 1, 1, 0, 0, 1, 1, 1], np.float32)
  sums = b.eval_step(state["params"], {"image": X, "label": Y, "_mask": mask})
  assert float(sums["count"]) == 6
  # Zero-init head: uniform logits -> loss log(5) per counted example.
  np.testing.assert_allclose(float(sums["loss_sum"]), 6 * np.log(5), rtol=1e-5)
  assert tree_lib.count(state["params"]) > 0
