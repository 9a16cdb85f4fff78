# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""LST and LAST, the side methods beside LoSA (models/side_lst.py,
models/side_last.py): a linear probe at init, gradients only in the side
network and the head, their switches, and a 2-step CLI run each. Their
compiled cost is held by tests/test_cost_guard.py."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_BACKBONE
from conftest import tiny_config
from helpers_train import run_train
from losa_jax.assembly import build
from losa_jax.assembly import steps
from losa_jax.config import schema as config_lib
from losa_jax.models import model as model_lib
from losa_jax.models import side_lst
from losa_jax.utils import tree as tree_lib

X = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
Y = jnp.arange(4) % 5
SIDE = ("lst", "last")


def _model(method, **options):
  return model_lib.Model(5, method=method, backbone=dict(TINY_BACKBONE),
                         **({method: options} if options else {}))


def _grads(model, params):
  """d loss / d params over the WHOLE tree (backbone included), with a
  random head (a zero head passes no gradient to the side network)."""
  head = params["head"]["kernel"]
  params = {**params, "head": {**params["head"], "kernel": jax.random.normal(
      jax.random.key(2), head.shape)}}

  def loss(p):
    logits, _ = model.apply({"params": p}, X)
    return steps.softmax_xent(logits, Y)[0]
  return tree_lib.flatten(jax.grad(loss)(params))


@pytest.mark.parametrize("method", SIDE)
@pytest.mark.parametrize("pool_type", ["tok", "gap"])
def test_init_is_the_linear_probe(method, pool_type):
  """Zero-initialised output projections: the head reads exactly the frozen
  backbone's features, those of a linear probe with the same backbone."""
  backbone = dict(TINY_BACKBONE, pool_type=pool_type)
  side = model_lib.Model(5, method=method, backbone=backbone,
                         **{method: dict(dtype="float32")})
  probe = model_lib.Model(5, method="linear", backbone=backbone)
  params = side.init(jax.random.key(0), X)["params"]
  ref = probe.init(jax.random.key(0), X)["params"]
  np.testing.assert_array_equal(
      np.concatenate([np.ravel(v) for v in jax.tree.leaves(params["backbone"])]),
      np.concatenate([np.ravel(v) for v in jax.tree.leaves(ref["backbone"])]))
  logits, out = side.apply({"params": params}, X)
  _, ref_out = probe.apply({"params": ref}, X)
  np.testing.assert_allclose(out["features"], ref_out["features"], rtol=0,
                             atol=1e-6)
  np.testing.assert_array_equal(logits, 0.0)


@pytest.mark.parametrize("method", SIDE)
def test_gradients_reach_only_the_side_network_and_head(method):
  b = build.build(tiny_config(method), total_steps=1)
  assert all(v == n.startswith(("side/", "head/")) for n, v in b.mask.items())
  params = b.init(jax.random.key(0))["params"]
  grads = _grads(b.model, params)
  assert all(not np.any(g) for n, g in grads.items()
             if n.startswith("backbone/")), "a backbone gradient"
  # The zero-initialised output projection learns first.
  out = "side/up/kernel" if method == "lst" else "side/blocks/out/kernel"
  assert np.any(grads[out])
  assert b.num_trainable() < tree_lib.count(params) / 5


def _init_grads(method, **options):
  model = _model(method, **options, dtype="float32")
  return _grads(model, model.init(jax.random.key(0), X)["params"])


def test_last_bias_correction_changes_what_blocks_read():
  on, off = (_init_grads("last", bias_correction=b) for b in (True, False))
  assert on.keys() == off.keys()
  assert not np.allclose(on["side/blocks/out/kernel"],
                         off["side/blocks/out/kernel"])


def test_last_rank_and_heads_shape_the_projections():
  params = _model("last", rank=8, heads=2).init(jax.random.key(0), X)["params"]
  blocks = params["side"]["blocks"]
  depth, width = TINY_BACKBONE["depth"], TINY_BACKBONE["width"]
  assert blocks["query"]["kernel"].shape == (depth, width, 8)
  assert blocks["out"]["kernel"].shape == (depth, 8, width)
  with pytest.raises(ValueError, match=r"last.heads=3 must divide"):
    model_lib.side_options("last", dict(rank=8, heads=3))


def test_lst_gates_and_ladders():
  gated, plain = (_init_grads("lst", gates=g) for g in (True, False))
  assert "side/blocks/gate" in gated and "side/blocks/gate" not in plain
  assert not np.allclose(gated["side/up/kernel"], plain["side/up/kernel"])
  # A side transformer of width D / r with one block per ladder.
  params = _model("lst", reduction=4, ladder_every=2).init(
      jax.random.key(0), X)["params"]["side"]
  width = TINY_BACKBONE["width"] // 4
  assert params["blocks"]["down"]["kernel"].shape == (
      1, TINY_BACKBONE["width"], width)
  assert params["up"]["kernel"].shape == (width, TINY_BACKBONE["width"])
  with pytest.raises(ValueError, match=r"lst.reduction=5 must divide"):
    _model("lst", reduction=5).init(jax.random.key(0), X)


def _top(scores, k):
  return np.sort(np.argsort(-np.abs(scores))[:k])


def test_lst_prune_init_keeps_the_backbone_weights_of_largest_magnitude():
  """init="prune": every side block from its backbone block, checked here on
  LayerNorm_0 and the query projection; the rest keeps its random init."""
  c = config_lib.load_config("configs/default.py:method=lst,steps=2")
  c.model.lst = dict(init="prune", reduction=4)
  b = build.build(c, total_steps=2)
  params = b.init_loaded(jax.random.key(0), c)["params"]
  rand = b.init(jax.random.key(0))["params"]["side"]
  side = params["side"]["blocks"]["block"]
  d = c.model.backbone.width
  for i in range(c.model.backbone.depth):
    bb = params["backbone"]["Transformer"][f"encoderblock_{i}"]
    scale = np.asarray(bb["LayerNorm_0"]["scale"])
    np.testing.assert_array_equal(side["LayerNorm_0"]["scale"][i],
                                  scale[_top(scale, d // 4)])
    q = np.asarray(bb["MultiHeadDotProductAttention_0"]["query"]["kernel"])
    q = q.reshape(d, -1)
    rows = _top(np.abs(q).max(1), d // 4)
    cols = _top(np.abs(q).max(0), d // 4)
    np.testing.assert_array_equal(
        np.reshape(side["MultiHeadDotProductAttention_0"]["query"]["kernel"][i],
                   (d // 4, -1)), q[np.ix_(rows, cols)])
  for name in ("down", "gate"):
    jax.tree.map(np.testing.assert_array_equal, params["side"]["blocks"][name],
                 rand["blocks"][name])
  assert not np.any(params["side"]["up"]["kernel"])
  c.model_init = ""
  with pytest.raises(ValueError, match=r"init='prune' .* config.model_init"):
    build.build(c, total_steps=2).init_loaded(jax.random.key(0), c)


def test_lst_prune_init_reads_a_scanned_backbone_alike():
  model = _model("lst", init="prune", ladder_every=2)
  params = model.init(jax.random.key(0), X)["params"]
  leaves, tree = jax.tree.flatten(params)      # no ties, LayerNorms included
  keys = jax.random.split(jax.random.key(3), len(leaves))
  params = jax.tree.unflatten(tree, [
      x + jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  bb = params["backbone"]["Transformer"]
  depth = TINY_BACKBONE["depth"]
  scanned = {"Transformer": {"encoderblock": jax.tree.map(
      lambda *xs: jnp.stack(xs), *[bb[f"encoderblock_{i}"]
                                   for i in range(depth)])}}
  cfg = model.side_config()
  unrolled = side_lst.init_from_backbone(params["side"], params["backbone"],
                                         cfg, depth)
  jax.tree.map(np.testing.assert_array_equal, unrolled, side_lst.
               init_from_backbone(params["side"], scanned, cfg, depth))
  # One ladder, at the last block: its LayerNorms from encoderblock_1's.
  ln = bb[f"encoderblock_{depth - 1}"]["LayerNorm_1"]
  keep = _top(np.asarray(ln["scale"]), TINY_BACKBONE["width"] // 8)
  np.testing.assert_array_equal(
      unrolled["blocks"]["block"]["LayerNorm_1"]["bias"],
      np.asarray(ln["bias"])[None, keep])


@pytest.mark.parametrize("method", SIDE)
def test_taps_only_and_precomputed_give_the_same_logits(method):
  model = _model(method)
  params = model.init(jax.random.key(0), X)["params"]
  params = jax.tree.map(lambda p: p + 0.01, params)   # a non-zero side
  logits, _ = model.apply({"params": params}, X)
  feats = model.apply({"params": params}, X, taps_only=True)
  again, _ = model.apply({"params": params}, None, precomputed=feats)
  np.testing.assert_allclose(again, logits, rtol=1e-6, atol=1e-6)
  assert np.any(logits)


@pytest.mark.slow
@pytest.mark.parametrize("method,extra", [
    ("lst", ("--config.model.lst.init=prune",)), ("last", ())])
def test_cli_trains_two_steps(method, extra, tmp_path):
  rc, out = run_train(f"configs/default.py:method={method},steps=2",
                      str(tmp_path), extra=extra)
  assert rc == 0, out[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["steps"] == 2 and np.isfinite(results["train/loss"])
  assert os.path.isdir(tmp_path / "checkpoints")
