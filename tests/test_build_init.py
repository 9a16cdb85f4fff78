# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Built.init_loaded: the trainer's initial state without a random backbone.

It must equal, leaf for leaf and bit for bit, what the trainer built before
it: init(rng), then load_backbone, then device_put into the state shardings.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_BACKBONE
from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.utils import tree as tree_lib
from losa_jax.models import porting
from losa_jax.models import vit


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
  """A tiny ViT checkpoint with a 5-class head: the model's head fits it."""
  bb = vit.Model(5, **TINY_BACKBONE)
  params = bb.init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))["params"]
  path = str(tmp_path_factory.mktemp("ckpt") / "vit.npz")
  porting.save_vit(params, path)
  return path, tree_lib.flatten(jax.device_get(params))


def _config(name, path):
  if name == "losa":            # the checkpoint head is copied
    c = tiny_config("losa")
  elif name == "lora_bf16":     # LoRA leaves and the head kept from init
    c = tiny_config("lora")
    c.model_load = dict(param_dtype="bfloat16", dont_load=["head/.*"])
  else:                         # a trainable backbone: Adam state for it
    c = tiny_config("full")
  c.model_init = path
  return c


def _old_path(b, rng, config):
  state = b.init(rng)
  state["params"] = build.load_backbone(state["params"], config)
  return jax.device_put(state, b.state_sharding)


@pytest.mark.parametrize("name", ["losa", "lora_bf16", "full"])
def test_init_loaded_equals_init_then_load(ckpt, name):
  path, ckpt_flat = ckpt
  c = _config(name, path)
  b = build.build(c, total_steps=10)
  rng = jax.random.key(1)
  want = _old_path(b, rng, c)
  got = b.init_loaded(rng, c)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for (key, g), w in zip(jax.tree_util.tree_leaves_with_path(got),
                         jax.tree.leaves(want)):
    n = jax.tree_util.keystr(key)
    if jnp.issubdtype(w.dtype, jax.dtypes.prng_key):
      g, w = jax.random.key_data(g), jax.random.key_data(w)
    assert g.dtype == w.dtype and g.sharding == w.sharding, n
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w), err_msg=n)
  # The backbone is the checkpoint's; the side / head / LoRA leaves are
  # init's (asserted equal above), so they are not the checkpoint's.
  params = tree_lib.flatten(got["params"])
  loaded = {}
  for n, v in params.items():
    src = n[len("backbone/"):] if n.startswith("backbone/") else n
    if src in ckpt_flat and not (name == "lora_bf16" and n.startswith("head/")):
      loaded[n] = v
      np.testing.assert_array_equal(
          np.asarray(v), np.asarray(ckpt_flat[src]).astype(v.dtype),
          err_msg=n)
    else:
      assert not n.startswith("backbone/") or "_lora" in n, n
  assert ("head/kernel" in loaded) == (name != "lora_bf16")
  assert any("_lora" in n for n in params) == (name == "lora_bf16")
  # XLA dropped the random init of what the checkpoint replaces.
  ops = lambda f, *a: f.lower(*a).compile().as_text().count("\n")
  assert ops(b.init_with, rng, loaded) < 0.7 * ops(b.init, rng)


def test_init_loaded_without_model_init_is_init():
  c = tiny_config("linear")
  b = build.build(c, total_steps=10)
  got, want = b.init_loaded(jax.random.key(2), c), b.init(jax.random.key(2))
  for g, w in zip(jax.tree.leaves(got["params"]),
                  jax.tree.leaves(want["params"])):
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
