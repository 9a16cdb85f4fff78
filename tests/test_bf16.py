# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Lean backbone: bf16 frozen params, scanned blocks, donated state.

config.model_load.param_dtype="bfloat16" stores the FROZEN params in bf16
(side network and head stay float32), together with
model.backbone.dtype_mm="bfloat16" for bf16 matmuls.

Memory is compared on compiled steps (abstract inputs). XLA:CPU has no
native bf16 GEMM: it upcasts bf16 weights to f32, and its while-loop
invariant code motion hoists that upcast of a whole scanned weight stack
out of the loop (a full f32 copy no GPU/TPU makes). The temp-memory check
therefore compiles in a child process with that pass off, as the compile-only
benchmark sections do (losa_jax/bench/registry.py).
"""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from conftest import xla_flags
from losa_jax.assembly import build
from losa_jax.assembly import steps
from losa_jax.utils import tree as tree_lib
from losa_jax.bench import common
from losa_jax.bench import configs
from losa_jax.models import layouts
from losa_jax.models import porting

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16 = dict(dtype_mm="bfloat16")


def _bf16_config(**kw):
  c = tiny_config("losa", backbone=BF16, **kw)
  c.model_load = dict(param_dtype="bfloat16")
  return c


def _batch(n=8, seed=0):
  rng = np.random.RandomState(seed)
  return {"image": jnp.asarray(rng.uniform(-1, 1, (n, 32, 32, 3)),
                               jnp.float32),
          "label": jnp.asarray(np.arange(n) % 5, jnp.int32)}


def test_only_frozen_params_are_bf16():
  b = build.build(_bf16_config(), total_steps=10)
  flat = tree_lib.flatten(b.state_shape["params"])
  for name, v in flat.items():
    want = jnp.float32 if b.mask[name] else jnp.bfloat16
    assert v.dtype == want, name
  assert any(n.startswith("backbone/") for n in flat)
  # The optimizer only holds state for the (f32) trainable params.
  for leaf in jax.tree.leaves(b.state_shape["opt"]):
    assert leaf.dtype != jnp.bfloat16
  lora = tiny_config("lora")
  lora.model_load = dict(param_dtype="bfloat16")
  lb = build.build(lora, total_steps=10)
  for name, v in tree_lib.flatten(lb.state_shape["params"]).items():
    assert (v.dtype == jnp.float32) == lb.mask[name], name


def test_bf16_backbone_trains_and_stays_frozen():
  b = build.build(_bf16_config(), total_steps=10)
  state = b.init(jax.random.key(0))
  before = jax.device_get(state["params"]["backbone"])
  batch = _batch()
  losses = []
  for _ in range(6):
    state, m = b.train_step(state, batch)
    losses.append(float(m["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  after = jax.device_get(state["params"]["backbone"])
  jax.tree.map(np.testing.assert_array_equal, before, after)
  assert state["params"]["side"]["LN_out"]["scale"].dtype == jnp.float32


def test_checkpoint_loads_into_bf16_storage(tmp_path):
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  f32 = build.build(tiny_config("losa"), total_steps=10)
  params = jax.device_get(f32.init(jax.random.key(1))["params"])
  path = str(tmp_path / "vit.npz")
  porting.save_vit(params["backbone"], path)
  c = _bf16_config()
  c.model_init = path
  b = build.build(c, total_steps=10)
  init = jax.device_get(b.init(jax.random.key(0))["params"])
  loaded = build.load_backbone(init, c)
  got = tree_lib.flatten(loaded["backbone"])
  want = tree_lib.flatten(params["backbone"])
  for name, v in got.items():
    assert v.dtype == jnp.bfloat16, name
    np.testing.assert_array_equal(
        v, np.asarray(want[name]).astype(jnp.bfloat16))
  assert tree_lib.flatten(loaded["side"])["LN_out/scale"].dtype == np.float32


def test_state_is_donated():
  b = build.build(tiny_config("losa"), total_steps=10)
  batch = _batch()
  compiled = b.train_step.lower(b.state_shape, batch).compile()
  assert compiled.memory_analysis().alias_size_in_bytes > 0
  state = b.init(jax.random.key(0))
  side = state["params"]["side"]["LN_out"]["scale"]
  state, _ = b.train_step(state, batch)
  assert side.is_deleted()      # its buffer was reused for the new state


def test_scanned_losa_equals_unrolled():
  """scan=True taps the stacked scan outputs; same params -> same loss."""
  loop = build.build(tiny_config("losa"), total_steps=10)
  scan = build.build(tiny_config("losa", backbone=dict(scan=True)),
                     total_steps=10)
  state = loop.init(jax.random.key(0))
  params = jax.device_get(state["params"])
  scanned = dict(params, backbone=layouts.loop_to_scan(params["backbone"]))
  s_state = scan.init(jax.random.key(0))
  s_state["params"] = jax.device_put(scanned)
  batch = _batch(seed=1)
  for _ in range(2):
    state, m_loop = loop.train_step(state, batch)
    s_state, m_scan = scan.train_step(s_state, batch)
    np.testing.assert_allclose(m_scan["loss"], m_loop["loss"], rtol=1e-5)


_CHILD = """
import json, sys
from losa_jax.bench import configs
out = {}
for name, bf16, scan in (("f32_loop", False, False), ("f32_scan", False, True),
                         ("bf16_scan", True, True)):
  c = configs.make_config("Ti/16", "losa", bf16=bf16, scan=scan)
  # The backbones compared with a float32 side stream, whose taps both
  # layouts stack alike. (With bf16 stores the unrolled backbone writes its
  # block outputs straight into a bf16 stack, while the scanned one's are
  # float32 scan outputs converted afterwards: docs/benchmarks.md.)
  c.model.losa.dtype = "float32"
  out[name] = configs.step_cost(c, 8)
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled_costs():
  env = dict(os.environ, XLA_FLAGS=xla_flags(common.LICM_OFF,
                                             common.FAST_COMPILE),
             PYTHONPATH=REPO)
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=REPO,
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out.split("RESULT", 1)[1])


def test_bf16_backbone_compiled_memory_drops(compiled_costs):
  """Ti/16, 224 px, batch 8: the state halves, so the peak drops.

  Temp memory does not shrink on XLA:CPU, which computes bf16 elementwise
  ops and dots through f32 upcasts; LoSA's own temporaries (taps, side
  network) are f32 by design. On a GPU/TPU the backbone's transient
  activations would halve too.
  """
  f32, bf16 = compiled_costs["f32_scan"], compiled_costs["bf16_scan"]
  images = 8 * 224 * 224 * 3 * 4 + 8 * 4     # the f32 batch, not state
  assert (bf16["argument_bytes"] - images) < 0.6 * (
      f32["argument_bytes"] - images)
  assert bf16["temp_bytes"] <= 1.01 * f32["temp_bytes"]
  assert bf16["peak_bytes"] < 0.9 * f32["peak_bytes"]
  assert bf16["trainable_params"] == f32["trainable_params"]


def test_scanned_backbone_memory_not_worse(compiled_costs):
  loop, scan = compiled_costs["f32_loop"], compiled_costs["f32_scan"]
  assert scan["peak_bytes"] <= 1.02 * loop["peak_bytes"]
  assert scan["temp_bytes"] <= 1.02 * loop["temp_bytes"]


def test_bf16_params_halve_arguments_under_default_flags():
  """In-process (default XLA flags): the stored state halves regardless."""
  costs = {}
  for bf16 in (False, True):
    c = configs.make_config("Ti/16", "losa", bf16=bf16, depth=2)
    b = build.build(c, total_steps=10)
    costs[bf16] = b.train_step.lower(
        b.state_shape, steps.abstract_batch(2, b.image_shape)
    ).compile().memory_analysis().argument_size_in_bytes
  images = 2 * 224 * 224 * 3 * 4 + 2 * 4
  assert costs[True] - images < 0.6 * (costs[False] - images)
