# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""method='st_adapter': ST-Adapters (Pan et al. 2022) inside a frozen ViViT."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from helpers_train import run_train
from losa_jax.assembly import build
from losa_jax.config import schema as config_lib
from losa_jax.models import model as model_lib
from losa_jax.models import vit
from losa_jax.utils import tree as tree_lib

CLIP = (4, 32, 32)                 # 2 time steps x 16 positions (+ CLS)
X = jax.random.normal(jax.random.key(1), (2, *CLIP, 3))
VIDEO = dict(kind="vivit", temporal_patch_size=2, num_frames=CLIP[0],
             pool_type="tok")


def _config(method="st_adapter", st_adapter=None, **backbone):
  c = tiny_config(method, image_size=CLIP, backbone={**VIDEO, **backbone})
  if st_adapter is not None:
    c.model.st_adapter = st_adapter
  return c


def _model_params(config):
  model = build.model_from_config(config)
  return model, jax.jit(model.init)(jax.random.key(0), X)["params"]


def _randomize(tree, pattern, seed=3, scale=0.3):
  rng = np.random.default_rng(seed)
  return tree_lib.map_with_names(
      lambda n, v: (scale * rng.standard_normal(v.shape).astype(np.float32)
                    if pattern in n else v), tree)


def _adapter_names(params):
  return sorted(n for n in tree_lib.names(params) if "/st_adapter_" in n)


def test_defaults_are_the_papers_b16_setting():
  cfg = model_lib.st_adapter_options(None)
  assert cfg == dict(bottleneck=384, kernel_size=(3, 1, 1), placement="attn",
                     blocks=None)
  _, params = _model_params(_config())
  names = _adapter_names(params)
  # One adapter before each of the 2 blocks' attention, nothing else added.
  assert {n.split("/")[2] for n in names} == {"encoderblock_0",
                                             "encoderblock_1"}
  assert all("/st_adapter_attn/" in n for n in names)
  flat = tree_lib.flatten(params)
  assert flat["backbone/Transformer/encoderblock_0/st_adapter_attn/conv/"
              "kernel"].shape == (3, 1, 1, 1, 384)


@pytest.mark.parametrize("placement,backbone", [
    ("attn", {}), ("both", dict(pool_type="gap")),
    # The video configs' backbone: scanned, remat, bf16 matmuls.
    ("attn", dict(scan=True, dtype_mm="bfloat16"))])
def test_init_is_the_frozen_backbone(placement, backbone):
  """Zero-init depthwise conv: the encoder's output is the frozen ViViT's,
  whatever the (random) down- and up-projections hold."""
  model, params = _model_params(_config(st_adapter=dict(placement=placement),
                                        **backbone))
  params = _randomize(_randomize(params, "/down/"), "/up/kernel", seed=4)
  linear, lin_params = _model_params(_config("linear", **backbone))
  backbone = {n: v for n, v in tree_lib.flatten(params).items()
              if n.startswith("backbone/") and "/st_adapter_" not in n}
  lin_flat = tree_lib.flatten(lin_params)
  assert sorted(backbone) == sorted(n for n in lin_flat
                                    if n.startswith("backbone/"))
  lin_params = tree_lib.unflatten({**lin_flat, **backbone})
  pre_ln = lambda m, p: m.apply({"params": p}, X)[1]["encoder"]["pre_ln"]
  np.testing.assert_array_equal(jax.jit(lambda p: pre_ln(model, p))(params),
                                jax.jit(lambda p: pre_ln(linear, p))(lin_params))


def test_gradients_reach_only_the_adapters_and_the_head():
  # gap: with a CLS head the last block's patch tokens never reach the logits.
  config = _config(st_adapter=dict(placement="both"), pool_type="gap")
  b = build.build(config, total_steps=1)
  trainable = sorted(n for n, v in b.mask.items() if v)
  model, params = _model_params(config)
  assert trainable == sorted(_adapter_names(params) + ["head/bias",
                                                       "head/kernel"])
  params = _randomize(_randomize(params, "head/"), "/conv/kernel", seed=5)
  grads = tree_lib.flatten(jax.jit(jax.grad(
      lambda p: jnp.sum(model.apply({"params": p}, X)[0] ** 2)))(params))
  for n, g in grads.items():
    assert bool(np.any(g)) == (n.startswith("head/") or "/st_adapter_" in n), n


def test_training_moves_only_adapters_and_head_and_lowers_the_loss():
  b = build.build(_config(pool_type="gap"), total_steps=10)
  state = b.init(jax.random.key(0))
  before = tree_lib.flatten(jax.tree.map(np.array, state["params"]))
  batch = {"image": X, "label": jnp.array([0, 1])}
  losses = []
  for _ in range(10):
    state, metrics = b.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  after = tree_lib.flatten(jax.tree.map(np.asarray, state["params"]))
  changed = {n for n, v in before.items() if not np.array_equal(v, after[n])}
  assert changed == {n for n, v in b.mask.items() if v}
  assert losses[-1] < 0.8 * losses[0], losses


def test_depthwise_conv_mixes_time_not_space():
  """The adapter equals x + up(dwconv3d(down(x))) written out over the
  time-major (t, h, w) grid, CLS unchanged: a (3, 1, 1) kernel mixes each
  position with itself at the neighbouring time steps only."""
  t, h, w, d, k = 3, 2, 2, 8, 4
  ad = vit.STAdapter(k, (3, 1, 1), (t, h, w), num_prefix=1)
  x = jax.random.normal(jax.random.key(2), (2, 1 + t * h * w, d))
  params = _randomize(ad.init(jax.random.key(0), x)["params"], "conv",
                      seed=6)
  y = np.asarray(ad.apply({"params": params}, x))
  p = jax.tree.map(np.asarray, params)
  down = np.asarray(x[:, 1:]) @ p["down"]["kernel"] + p["down"]["bias"]
  grid = np.pad(down.reshape(2, t, h, w, k), [(0, 0), (1, 1), (0, 0),
                                              (0, 0), (0, 0)])
  kern = p["conv"]["kernel"][:, 0, 0, 0]            # [3, k]: one per channel
  conv = sum(grid[:, i:i + t] * kern[i] for i in range(3)) + p["conv"]["bias"]
  want = np.asarray(x[:, 1:]) + conv.reshape(2, t * h * w, k) @ \
      p["up"]["kernel"] + p["up"]["bias"]
  np.testing.assert_array_equal(y[:, 0], x[:, 0])
  np.testing.assert_allclose(y[:, 1:], want, rtol=1e-5, atol=1e-5)
  # A change at time step 1, position 0 reaches time steps 0..2 there only.
  moved = np.asarray(ad.apply({"params": params},
                              x.at[:, 1 + h * w].add(1.0)))
  changed = np.any(moved != y, axis=(0, 2))[1:].reshape(t, h * w)
  assert changed[:, 0].all() and not changed[:, 1:].any()


def test_blocks_select_where_adapters_go():
  _, params = _model_params(_config(st_adapter=dict(blocks=[1],
                                                    placement="mlp")))
  names = _adapter_names(params)
  assert names and all(n.startswith("backbone/Transformer/encoderblock_1/"
                                    "st_adapter_mlp/") for n in names)
  with pytest.raises(ValueError, match="scan=False"):
    _model_params(_config(st_adapter=dict(blocks=[1]), scan=True))
  with pytest.raises(ValueError, match=r"model.st_adapter.blocks.*\[2\]"):
    _model_params(_config(st_adapter=dict(blocks=[0, 2])))


def test_scanned_backbone_gets_stacked_adapters():
  _, params = _model_params(_config(scan=True))
  flat = tree_lib.flatten(params)
  assert flat["backbone/Transformer/encoderblock/st_adapter_attn/conv/"
              "kernel"].shape == (2, 3, 1, 1, 1, 384)


def test_bad_input_is_named():
  image = tiny_config("st_adapter", image_size=32)
  with pytest.raises(ValueError, match="kind='vivit'"):
    build.model_from_config(image).init(jax.random.key(0),
                                        jnp.zeros((1, 32, 32, 3)))
  from configs import default  # pylint: disable=g-import-not-at-top
  from configs import video_moving_digits  # pylint: disable=g-import-not-at-top
  config_lib.validate(video_moving_digits.get_config("method=st_adapter"))
  with pytest.raises(ValueError, match=r"backbone.kind='vivit' \(got 'vit'"):
    config_lib.validate(default.get_config("method=st_adapter"))
  for bad, key in ((dict(kernel_size=(2, 1, 1)), "kernel_size"),
                   (dict(placement="pre"), "placement"),
                   (dict(bottleneck=0), "bottleneck"),
                   (dict(blocks=[]), "blocks"),
                   (dict(width=3), "option.*'width'")):
    c = video_moving_digits.get_config("method=st_adapter")
    c.model.st_adapter = bad
    with pytest.raises(ValueError, match=f"st_adapter.{key}"):
      config_lib.validate(c)


# rank 8 bottleneck on the width-96, 6-block demo ViViT: per adapter down
# 96*8+8, conv kt*kh*kw*8+8, up 8*96+96; plus the 4-class head.
_HEAD, _DOWN_UP = 96 * 4 + 4, 776 + 864


@pytest.mark.slow
@pytest.mark.parametrize("extra,trainable", [
    ((), 6 * (_DOWN_UP + 32) + _HEAD),
    (("--config.model.st_adapter.kernel_size=(3,3,3)",
      "--config.model.st_adapter.placement=both",
      "--config.model.st_adapter.blocks=(4,5)"), 4 * (_DOWN_UP + 224) + _HEAD)])
def test_cli_trains_two_steps(extra, trainable, tmp_path):
  rc, out = run_train("configs/video_moving_digits.py:method=st_adapter,"
                      "steps=2,batch=8", str(tmp_path),
                      extra=("--config.evals={}", *extra))
  assert rc == 0, out[-3000:]
  with open(tmp_path / "results.json") as f:
    results = json.load(f)
  assert results["steps"] == 2 and np.isfinite(results["train/loss"])
  assert results["trainable_params"] == trainable
