# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The video demo's rows (losa_jax.video.demo.RUNS) at a tiny size."""
import functools
import json
import re

import numpy as np
import pytest

from losa_jax.assembly import build
from losa_jax.config import schema as config_lib
from losa_jax.utils import tree as tree_lib
from losa_jax.video import demo

_D, _DEPTH, _HEAD = 96, 6, 96 * 4 + 4      # the demo ViViT, 4-class head


def _st_adapter(b):
  # down d*b+b, depthwise (3,1,1) conv 3*b+b, up b*d+d, in every block.
  return _DEPTH * (_D * b + b + 3 * b + b + b * _D + _D) + _HEAD


# Row arg -> (trainable leaf names inside a block, trainable params).
_IN_BACKBONE = {
    "method=st_adapter": (r"st_adapter_attn/(down|conv|up)/(kernel|bias)",
                          _st_adapter(8)),
    "method=st_adapter,rank=48": (
        r"st_adapter_attn/(down|conv|up)/(kernel|bias)", _st_adapter(48)),
    "method=lora": (r"MultiHeadDotProductAttention_0/(query|value)_lora/"
                    r"(down|up)", _DEPTH * 2 * 2 * _D * 8 + _HEAD),
    "method=adapter": (r"adapter_mlp/(down|up)/(kernel|bias)",
                       _DEPTH * (_D * 8 + 8 + 8 * _D + _D) + _HEAD),
}


def _config(arg):
  return config_lib.load_config(
      config_lib.config_path("video_moving_digits") + ":" + arg)


@functools.lru_cache(maxsize=None)
def _linear_probe_names():
  c = _config("method=linear")
  b = build.build(c, total_steps=c.total_steps)
  return frozenset(tree_lib.flatten(b.state_shape["params"]))


def test_rows_are_unique_and_name_every_in_backbone_method():
  args = [arg for _, arg in demo.RUNS]
  assert len(set(args)) == len(args)
  assert set(_IN_BACKBONE) <= set(args)
  # The no-cache LoSA row is the cached row 0 with the cache turned off: the
  # row's arg comes after the demo's default `cache`.
  assert "method=losa,mixing=space_time,cache=False" in args
  on = _config("cache,method=losa,mixing=space_time,cache=False")
  assert not on.get("feature_cache")
  assert _config("cache,method=losa").feature_cache.enabled


@pytest.mark.parametrize("arg", sorted(_IN_BACKBONE))
def test_in_backbone_rows_train_only_their_modules_and_the_head(arg):
  """The frozen backbone's own leaves (those of the linear probe's tree) stay
  frozen; the trainable ones are the method's modules in every block + the
  head, with the count the formula gives."""
  pattern, count = _IN_BACKBONE[arg]
  c = _config(arg)
  config_lib.validate(c)
  b = build.build(c, total_steps=c.total_steps)
  flat = tree_lib.flatten(b.state_shape["params"])
  trainable = sorted(n for n, v in b.mask.items() if v)
  in_blocks = [n for n in trainable if n not in ("head/kernel", "head/bias")]
  assert {"head/kernel", "head/bias"} <= set(trainable)
  assert all(re.fullmatch(r"backbone/Transformer/encoderblock_\d/" + pattern,
                          n) for n in in_blocks), in_blocks
  assert len({n.split("/")[2] for n in in_blocks}) == _DEPTH
  plain = _linear_probe_names()
  assert plain - {"head/kernel", "head/bias"} <= set(flat) - set(trainable)
  assert sum(int(np.prod(flat[n].shape)) for n in trainable) == count


def test_st_adapter_row_trains_through_the_trainer(tmp_path):
  row = next(r for r in demo.RUNS if r[1] == "method=st_adapter")
  rows = demo.run(steps=2, runs=[row], root=str(tmp_path),
                  extra_arg="batch=8")
  (r,) = rows
  assert r["config_arg"] == "cache,method=st_adapter,steps=2,batch=8"
  assert r["steps"] == 2
  assert r["trainable_params"] == _st_adapter(8)
  assert 0.0 <= r["test_accuracy"] <= 1.0
  with open(tmp_path / "video_demo_results.json") as f:
    assert json.load(f)[0]["trainable_params"] == _st_adapter(8)
  assert f"| {row[0]} | " in demo.table(rows)
