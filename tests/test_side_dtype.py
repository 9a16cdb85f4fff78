# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""model.losa.dtype="bfloat16": a side stream stored in bf16 (docs/method.md).

Invariants: the same params (names, shapes, float32) as the default; the
same function within bf16 rounding; the taps and the side state really are
bf16; no gradient reaches the backbone; and the compiled step holds less.
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
from losa_jax.assembly import build
from losa_jax.utils import cost
from losa_jax.assembly import steps
from losa_jax.utils import tree as tree_lib
from losa_jax.bench import common
from losa_jax.feature_cache import training as cache_training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
Y = jnp.array([0, 1, 2, 3])


def _config(dtype, **losa):
  # zero_init=False: the side network changes the logits from step 0, so
  # the comparison below is not between two linear probes.
  return tiny_config(losa=dict(dtype=dtype, zero_init=False, **losa))


def _params(config):
  model = build.model_from_config(config)
  return model, model.init(jax.random.key(0), X)["params"]


def test_same_params_as_float32():
  _, p32 = _params(_config("float32"))
  _, p16 = _params(_config("bfloat16"))
  f32, f16 = tree_lib.flatten(p32), tree_lib.flatten(p16)
  assert sorted(f32) == sorted(f16)
  for name, v in f32.items():
    assert f16[name].shape == v.shape and f16[name].dtype == jnp.float32, name
    # Same init (XLA may fuse the init differently: 1 ulp).
    np.testing.assert_allclose(f16[name], v, rtol=1e-6, atol=1e-7,
                               err_msg=name)


@pytest.mark.parametrize("losa", [
    {}, dict(combine="gated"), dict(combine="concat"), dict(norms="post"),
    dict(token_mixer="full_rank"), dict(head_input="concat")])
def test_same_function_within_bf16_rounding(losa):
  m32, params = _params(_config("float32", **losa))
  m16, _ = _params(_config("bfloat16", **losa))
  params = tree_lib.map_with_names(
      lambda n, v: v + 0.05 * jax.random.normal(jax.random.key(len(n)),
                                                v.shape)
      if n.startswith(("side/", "head/")) else v, params)
  l32, o32 = m32.apply({"params": params}, X)
  l16, o16 = m16.apply({"params": params}, X)
  assert o16["taps"].dtype == jnp.bfloat16
  assert o16["side_state"].dtype == jnp.bfloat16
  assert o32["taps"].dtype == jnp.float32 and l16.dtype == jnp.float32
  # The side state is O(1) per entry: bf16 keeps ~3 significant digits.
  scale = float(jnp.max(jnp.abs(o32["side_state"])))
  assert scale > 0.05
  np.testing.assert_allclose(o16["side_state"].astype(jnp.float32),
                             o32["side_state"], atol=0.03 * scale)
  np.testing.assert_allclose(l16, l32, atol=0.03 * float(jnp.max(jnp.abs(
      l32))) + 1e-3)
  assert not np.allclose(l16, l32, atol=0, rtol=0)   # it is not f32 in disguise


def test_bf16_taps_are_the_rounded_float32_taps():
  """Unrolled blocks' outputs are written straight into a bf16 stack (no
  float32 stack): bit for bit the float32 stack rounded to bf16."""
  from losa_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top
  keys = iter(jax.random.split(jax.random.key(3), 8))
  enc = {f"block{i:02d}": {"+mlp": 50 * jax.random.normal(next(keys),
                                                           (2, 5, 8))}
         for i in range(3)}
  enc["pre_ln"] = enc["block02"]["+mlp"]
  t16 = jax.jit(lambda e: model_lib.backbone_features(
      e, ("block", 1, "bfloat16"), depth=3)["taps"])(enc)
  out = model_lib.backbone_features(enc, ("block", 1, "float32"), depth=3)
  t32, final = out["taps"], out["final"]
  assert t16.dtype == jnp.bfloat16 and final.dtype == jnp.float32
  np.testing.assert_array_equal(t16, t32.astype(jnp.bfloat16))


def test_trains_like_float32_and_backbone_stays_frozen():
  runs = {}
  for dtype in ("float32", "bfloat16"):
    b = build.build(_config(dtype), total_steps=4)
    state = b.init(jax.random.key(0))
    before = tree_lib.flatten(jax.tree.map(np.asarray,
                                           state["params"]["backbone"]))
    losses = []
    for _ in range(4):
      state, m = b.train_step(state, {"image": X, "label": Y})
      losses.append(float(m["loss"]))
    after = tree_lib.flatten(state["params"]["backbone"])
    for name, v in before.items():
      np.testing.assert_array_equal(v, after[name], err_msg=name)
    runs[dtype] = losses
  assert runs["bfloat16"][-1] < runs["bfloat16"][0]
  np.testing.assert_allclose(runs["bfloat16"], runs["float32"], rtol=0.02)


def _step_costs(batch=8):
  """Compiled cost of the cached and the uncached step, f32 and bf16 side
  (both autodiff: the fused backward is float32 only)."""
  out = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(image_size=224, losa=dict(dtype=dtype, fused=False),
                         backbone=dict(width=192, depth=4, mlp_dim=384,
                                       num_heads=3, patch_size=(16, 16)))
    b = build.build(config, total_steps=10)
    feats = {"image": {"taps": jax.ShapeDtypeStruct((batch, 4, 197, 192),
                                                    jnp.bfloat16)},
             "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    out[dtype] = dict(
        cached=cost.compiled_cost(cache_training.train_step(config, b),
                                  b.state_shape, feats),
        uncached=cost.compiled_cost(b.train_step, b.state_shape,
                                    steps.abstract_batch(batch,
                                                         b.image_shape)))
  return out


def test_bf16_side_stream_holds_less_and_reads_no_backbone_gradient():
  # As the benchmark's compile-only sections do: XLA:CPU has no bf16
  # arithmetic and, with loop-invariant code motion on, hoists an f32 copy
  # of every bf16 stack out of the scan, which no GPU/TPU build makes
  # (docs/benchmarks.md). A fresh process, since XLA_FLAGS are read once.
  env = dict(os.environ)
  common.with_xla_flags(common.LICM_OFF, env=env)
  code = ("import json, sys; sys.path.insert(0, 'tests'); "
          "import test_side_dtype as t; print(json.dumps(t._step_costs()))")
  proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  costs = json.loads(proc.stdout.strip().splitlines()[-1])
  f32, bf16 = costs["float32"], costs["bfloat16"]
  for step in ("cached", "uncached"):
    # The saved side states and the taps are half the bytes; the rest of
    # the temporaries (workspace, f32 head path) is not: 0.87x here (jax
    # 0.10.2), 0.58x of LoSA's own temporaries at ViT-e/14.
    assert bf16[step]["temp_bytes"] < 0.9 * f32[step]["temp_bytes"], step
  # Converts aside, the same work: still about one forward pass.
  assert bf16["uncached"]["flops"] < 1.02 * f32["uncached"]["flops"]
