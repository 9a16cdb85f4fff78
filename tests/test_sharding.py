# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Meshes, sharding rules, and training / checkpoints on 8 fake CPU devices.

Rule and mesh checks run in this process on shapes only. The 8-device checks
run in a subprocess (tests/sharding_worker.py): the device count is fixed
when JAX's backend starts, which other tests in this process already did.
"""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import xla_flags
from losa_jax.config import schema as config_lib
from losa_jax.parallel import sharding

HERE = os.path.dirname(os.path.abspath(__file__))
MESH_4x2 = {"data": 4, "fsdp": 2}


def _spec(rule, shape, mesh=None, dtype=np.float32):
  return sharding.spec_for("p", rule, shape, dtype, mesh or MESH_4x2)


# --- meshes -------------------------------------------------------------------


def test_mesh_shape_resolves_minus_one():
  assert sharding.mesh_shape([("data", -1)], 8) == (("data",), (8,))
  assert sharding.mesh_shape([("data", 4), ("fsdp", -1)], 8) == (
      ("data", "fsdp"), (4, 2))
  assert sharding.mesh_shape(None, 3) == (("data",), (3,))


@pytest.mark.parametrize("axes, n, match", [
    ([("data", 4), ("fsdp", 4)], 8, "needs 16 devices but 8"),
    ([("data", 3), ("fsdp", -1)], 8, "does not divide"),
    ([("data", -1), ("fsdp", -1)], 8, "one axis only"),
    ([("data", 2), ("data", 4)], 8, "repeats"),
    ([("data", 0)], 8, ">= 1 or -1"),
    ([("data",)], 8, "not a \\(name, size\\) pair"),
    ("data", 8, "must be a list"),
    ([], 8, "empty"),
])
def test_mesh_errors_name_the_problem(axes, n, match):
  with pytest.raises(ValueError, match=match):
    sharding.mesh_shape(axes, n)


def test_make_mesh_is_auto_typed():
  mesh = sharding.make_mesh([("data", -1)])
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert sharding.batch_sharding(mesh).spec == P(("data",))
  sharding.check_batch_size(8, mesh)


# --- rules --------------------------------------------------------------------


def test_fsdp_shards_the_largest_divisible_dim():
  assert _spec("fsdp(min_size_mb=0)", (768, 3072)) == P(None, "fsdp")
  # 3 is the largest dim but does not divide by 2: the next one is used.
  assert _spec("fsdp(min_size_mb=0)", (3, 2, 2)) == P(None, "fsdp")
  assert _spec("fsdp(min_size_mb=0)", (3, 5)) == P()       # none divides
  # Small tensors stay replicated (4 MiB default threshold).
  assert _spec("fsdp", (1024, 1023)) == P()                 # 3.99 MiB f32
  assert _spec("fsdp", (1024, 1024)) == P("fsdp")  # 4 MiB f32; ties: first
  assert _spec("fsdp", (1024, 1024), dtype=np.dtype("bfloat16")) == P()


def test_fsdp_over_several_axes_and_absent_axes():
  assert _spec("fsdp(axis=('data', 'fsdp'), min_size_mb=0)", (16, 24)) == P(
      None, ("data", "fsdp"))
  # An axis the mesh lacks (or of size 1) is skipped: replicate.
  assert _spec("fsdp(axis='model', min_size_mb=0)", (16, 16)) == P()
  assert _spec("fsdp(min_size_mb=0)", (16, 16), {"data": 8, "fsdp": 1}) == P()
  assert _spec("fsdp(axis=('data', 'fsdp'), min_size_mb=0)", (16, 24),
               {"data": 8}) == P(None, "data")


def test_chained_rules_fill_free_dims():
  mesh = {"data": 2, "fsdp": 2, "model": 4}
  assert _spec("shard_dim(axis='model', dim=-1)|fsdp(min_size_mb=0)",
               (8, 64), mesh) == P("fsdp", "model")
  assert _spec("replicate", (8, 64), mesh) == P()


def test_shard_dim_errors():
  with pytest.raises(ValueError, match="not divisible"):
    _spec("shard_dim(axis='fsdp', dim=0)", (5, 4))
  with pytest.raises(ValueError, match="only 2 dims"):
    _spec("shard_dim(axis='fsdp', dim=2)", (4, 4))


@pytest.mark.parametrize("rule, match", [
    ("shard", "Unknown sharding rule 'shard'"),
    ("fsdp(axes='fsdp')", "not \\['axes'\\]"),
    ("fsdp('fsdp')", "keyword arguments"),
    ("fsdp(axis=fsdp)", "literals"),
])
def test_bad_rules_are_refused(rule, match):
  with pytest.raises(ValueError, match=match):
    sharding.parse_rule(rule)


def test_first_match_wins_and_coverage_is_required():
  tree = {"backbone": {"k": jax.ShapeDtypeStruct((64, 64), np.float32)},
          "head": {"k": jax.ShapeDtypeStruct((64, 64), np.float32)}}
  specs = sharding.infer_specs(tree, MESH_4x2, [
      ("backbone/.*", "fsdp(min_size_mb=0)"), (".*", "replicate"),
      ("head/.*", "fsdp(min_size_mb=0)")])
  assert specs == {"backbone": {"k": P("fsdp")}, "head": {"k": P()}}
  with pytest.raises(ValueError, match="match no rule"):
    sharding.infer_specs(tree, MESH_4x2, [("backbone/.*", "replicate")])


def test_default_strategy_fsdp_shards_only_the_big_backbone_tensors():
  """ViT-B/16 shapes: the backbone's big matrices over fsdp, the rest whole."""
  f = lambda *s: jax.ShapeDtypeStruct(s, np.float32)
  tree = {"backbone": {"Transformer": {"encoderblock": {
      "MlpBlock_0": {"Dense_0": {"kernel": f(12, 768, 3072),
                                 "bias": f(12, 3072)}},
      "MultiHeadDotProductAttention_0": {"query": {"kernel": f(12, 768, 12,
                                                               64)}}}}},
          "side": {"mixer": {"kernel": f(12, 768, 8)}},
          "head": {"kernel": f(768, 1000)}}
  specs = sharding.infer_specs(tree, {"data": 2, "fsdp": 4}, None)
  block = specs["backbone"]["Transformer"]["encoderblock"]
  assert block["MlpBlock_0"]["Dense_0"]["kernel"] == P(None, None, "fsdp")
  assert block["MlpBlock_0"]["Dense_0"]["bias"] == P()       # 144 KiB
  assert block["MultiHeadDotProductAttention_0"]["query"]["kernel"] == P(
      None, "fsdp")
  assert specs["side"]["mixer"]["kernel"] == P()
  assert specs["head"]["kernel"] == P()
  # Without an fsdp axis the same default replicates everything.
  assert all(s == P() for s in jax.tree.leaves(
      sharding.infer_specs(tree, {"data": 8}, None),
      is_leaf=lambda x: isinstance(x, P)))


def test_config_validation_covers_scale_out_fields(tiny):
  c = tiny()
  c.total_steps = 2
  c.input = dict(data=dict(demo="digits"), batch_size=8, pp="")
  config_lib.validate(c)
  assert config_lib.with_defaults(c).sharding_strategy == (
      sharding.DEFAULT_STRATEGY)
  for key, value, match in (
      ("mesh", [("data", -1), ("fsdp", -1)], "one axis only"),
      ("sharding_strategy", [(".*", "fsdpp")], "Unknown sharding rule"),
      ("sharding_strategy", "replicate", "list of \\(regex, rule\\)"),
      ("distributed", dict(num_proc=2), "Unknown config.distributed")):
    bad = tiny()
    bad.total_steps = 2
    bad.input = c.input
    bad[key] = value
    with pytest.raises(ValueError, match=match):
      config_lib.validate(bad)


# --- 8 fake devices, in a subprocess -----------------------------------------


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("eight")
  out = tmp / "out.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(
      "--xla_llvm_disable_expensive_passes=true"))
  proc = subprocess.run(
      [sys.executable, os.path.join(HERE, "sharding_worker.py"), str(out),
       str(tmp / "ckpt")], env=env, capture_output=True, text=True,
      timeout=240, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  return json.loads(out.read_text())


MESHES = ("8x1", "4x2", "2x4")


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_one_step_matches_one_device(eight, mesh):
  res, ref = eight[mesh], eight["1"]
  np.testing.assert_allclose(res["losses"], ref["losses"], rtol=1e-5)
  assert ref["max_param_change"] > 1e-3    # the steps did move the params
  assert res["max_param_diff"] < 1e-5, res["max_param_diff"]
  assert res["batch_spec"] == str(P(("data", "fsdp")))


@pytest.mark.slow
@pytest.mark.parametrize("mesh", MESHES)
def test_state_is_created_in_its_shardings(eight, mesh):
  res = eight[mesh]
  assert res["init_shardings_match"]
  assert res["compiled_init_shardings_match"]
  fsdp = res["mesh"]["fsdp"]
  # Every backbone tensor of the tiny model divides by 2 and 4: each device
  # holds exactly 1/fsdp of the backbone.
  assert res["backbone_bytes_per_device"] * fsdp == res["backbone_bytes_total"]


@pytest.mark.slow
def test_param_and_optimizer_specs_follow_the_rules(eight):
  kernel = "backbone/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
  side = "side/layers/mixer/token_1/mlp/down/kernel"   # (2, 17, 4)
  for mesh in ("4x2", "2x4"):
    specs = eight[mesh]["specs"]
    assert specs[kernel] == str(P(None, "fsdp"))       # (32, 64): dim 1
    assert specs["backbone/cls"] == str(P(None, None, "fsdp"))
    assert specs[side] == str(P(None, None, "fsdp"))    # 17 does not divide
    assert specs["head/kernel"] == str(P("fsdp"))       # shard_dim(dim=0)
    assert specs["head/bias"] == str(P())
    assert specs["side/layers/mixer/channel_0/LayerNorm/scale"] == str(P())
    # Momentum buffers live where their params live.
    assert eight[mesh]["opt_specs"][side] == [str(P(None, None, "fsdp"))]
    assert eight[mesh]["opt_specs"]["head/kernel"] == [str(P("fsdp"))]
  # fsdp of size 1: nothing to shard over.
  assert set(eight["8x1"]["specs"].values()) == {str(P())}


@pytest.mark.slow
def test_checkpoint_from_4x2_restores_on_1x8_and_one_device(eight):
  for name in ("1x8", "1"):
    r = eight["restore"][name]
    assert r["max_diff"] == 0.0, name
    assert r["step"] == 2
    assert r["shardings_match"], name
  specs = eight["restore"]["1x8"]["specs"]
  assert specs["head/kernel"] == str(P("fsdp"))
  assert set(eight["restore"]["1"]["specs"].values()) == {str(P())}
  # The restored state trains on exactly like the one that was saved.
  np.testing.assert_allclose(eight["restore"]["1"]["next_loss"],
                             eight["continued_loss"], rtol=1e-5)
