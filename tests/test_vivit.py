# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""ViViT backbone: tubelet shapes, image param names, inflation from images."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losa_jax.utils import npz as npz_lib
from losa_jax.utils import tree as tree_lib
from losa_jax.models import model as model_lib
from losa_jax.models import layouts
from losa_jax.models import porting
from losa_jax.models import vit
from losa_jax.models import vivit

TINY = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(8, 8))


def _image_params(pool_type="gap", res=32, seed=0, **kw):
  m = vit.Model(None, **{**TINY, **kw}, pool_type=pool_type)
  return m.init(jax.random.key(seed), jnp.zeros((1, res, res, 3)))["params"]


def test_tubelet_tokens_vivit_b16_32_frames_abstract():
  # Scenic's ViViT-B K400 setting: 32 frames, 16x16x2 tubelets at 224 px.
  model = vivit.Model(None, variant="B/16", pool_type="tok",
                      temporal_patch_size=2)
  seen = {}

  def fwd(x):
    params = model.init(jax.random.key(0), x)
    _, out = model.apply(params, x)
    seen["grid"] = out["token_grid"]      # static ints, read while tracing
    return params["params"], out["encoded"], out["pre_logits_2d"]

  params, encoded, map_3d = jax.eval_shape(
      fwd, jax.ShapeDtypeStruct((1, 32, 224, 224, 3), jnp.float32))
  assert seen["grid"] == (16, 196)
  assert all(isinstance(g, int) for g in seen["grid"])
  assert encoded.shape == (1, 16 * 196 + 1, 768)   # + CLS
  assert map_3d.shape == (1, 16, 14, 14, 768)
  assert params["embedding"]["kernel"].shape == (2, 16, 16, 3, 768)
  assert params["pos_embedding"].shape == (1, 3136, 768)


@pytest.mark.parametrize("scan", [False, True])
def test_param_names_are_the_image_vits(scan):
  img = vit.Model(10, **TINY, pool_type="tok", scan=scan)
  vid = vivit.Model(10, **TINY, pool_type="tok", scan=scan,
                    temporal_patch_size=2)
  pi = jax.eval_shape(img.init, jax.random.key(0),
                      jnp.zeros((1, 32, 32, 3)))["params"]
  pv = jax.eval_shape(vid.init, jax.random.key(0),
                      jnp.zeros((1, 4, 32, 32, 3)))["params"]
  fi, fv = tree_lib.flatten(pi), tree_lib.flatten(pv)
  assert sorted(fi) == sorted(fv)
  differ = sorted(n for n in fi if fi[n].shape != fv[n].shape)
  assert differ == ["embedding/kernel", "pos_embedding"]
  assert fv["embedding/kernel"].shape == (2, 8, 8, 3, 32)
  assert fv["pos_embedding"].shape == (1, 2 * 16, 32)


@pytest.mark.parametrize("method", ["average", "central"])
def test_inflated_static_clip_matches_image_model(method):
  """A clip of T identical frames = the image model on one frame (gap pool).

  Every time slice then holds the image's tokens (the tubelet embeds the
  frame like the 2-D patch embedding, the posemb is tiled), and joint
  attention over n_t copies of the keys gives the same weighted mean.
  """
  img_params = _image_params("gap")
  img = vit.Model(None, **TINY, pool_type="gap")
  vcfg = dict(TINY, pool_type="gap", temporal_patch_size=2)
  vparams = vivit.inflate_from_image(img_params, vcfg, method,
                                     clip_shape=(6, 32, 32))
  frame = jax.random.normal(jax.random.key(3), (2, 32, 32, 3))
  clip = jnp.repeat(frame[:, None], 6, axis=1)
  feat_img, out_img = img.apply({"params": img_params}, frame)
  feat_vid, out_vid = vivit.Model(None, **vcfg).apply({"params": vparams},
                                                      clip)
  np.testing.assert_allclose(feat_vid, feat_img, rtol=1e-5, atol=1e-5)
  tokens = out_vid["encoded"].reshape(2, 3, 16, 32)       # [B, n_t, n_s, D]
  for t in range(3):
    np.testing.assert_allclose(tokens[:, t], out_img["encoded"], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("t", [1, 2, 3, 4])
def test_central_frame_kernel_only_at_t_half_of_axis0(t):
  k2 = np.asarray(jax.random.normal(jax.random.key(0), (8, 8, 3, 32)))
  k3 = vivit.inflate_kernel(k2, t, "central")
  assert k3.shape == (t, 8, 8, 3, 32)
  nonzero = [i for i in range(t) if np.any(k3[i])]
  assert nonzero == [t // 2]
  np.testing.assert_array_equal(k3[t // 2], k2)
  # Axis 0 is time: no other axis carries the zeros (Scenic's random-init
  # central_frame_initializer zeroes along axis 2 instead).
  assert np.all(np.any(k3 != 0, axis=(0, 3, 4)))


def test_average_kernel_sums_to_image_kernel():
  k2 = np.asarray(jax.random.normal(jax.random.key(0), (8, 8, 3, 32)))
  k3 = vivit.inflate_kernel(k2, 4, "average")
  np.testing.assert_allclose(k3.sum(0), k2, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(k3[1], k2 / 4, rtol=1e-6)


def test_posemb_resampled_spatially_then_tiled_time_major():
  img = _image_params("tok", res=32)                     # 4x4 grid
  vparams = vivit.inflate_from_image(
      img, dict(TINY, pool_type="tok"), clip_shape=(4, 48, 48))   # 6x6
  pe = vparams["pos_embedding"]
  assert pe.shape == (1, 2 * 36, 32)
  want = layouts.resample_posemb(np.asarray(img["pos_embedding"]), (6, 6))
  for t in range(2):
    np.testing.assert_array_equal(pe[:, t * 36:(t + 1) * 36], want)
  np.testing.assert_array_equal(vparams["cls"], img["cls"])
  block = "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"
  np.testing.assert_array_equal(tree_lib.flatten(vparams)[block],
                                tree_lib.flatten(img)[block])


def test_old_posemb_with_cls_row_is_folded_into_cls():
  img = {k: np.asarray(v) for k, v in
         tree_lib.flatten(_image_params("tok")).items()}
  row = np.full((1, 1, 32), 0.5, np.float32)
  old = dict(img)
  old["pos_embedding"] = np.concatenate([row, img["pos_embedding"]], axis=1)
  vparams = vivit.inflate_from_image(tree_lib.unflatten(old),
                                     dict(TINY, pool_type="tok"),
                                     clip_shape=(2, 32, 32))
  np.testing.assert_allclose(vparams["cls"], img["cls"] + row)
  np.testing.assert_array_equal(vparams["pos_embedding"],
                                img["pos_embedding"])


def test_inflates_loop_checkpoint_into_scan_model():
  img = _image_params("gap")
  vparams = vivit.inflate_from_image(
      img, dict(TINY, pool_type="gap", scan=True), clip_shape=(2, 32, 32))
  k = vparams["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"]
  assert k.shape == (2, 32)
  np.testing.assert_array_equal(
      k[1], img["Transformer"]["encoderblock_1"]["LayerNorm_0"]["scale"])


def test_inflation_errors_name_param_and_shapes():
  img = _image_params("gap")
  with pytest.raises(ValueError, match=r"embedding/kernel.*\(8, 8, 3, 32\)"
                     r".*\(2, 4, 4, 3, 32\)"):
    vivit.inflate_from_image(img, dict(TINY, patch_size=(4, 4),
                                       pool_type="gap"),
                             clip_shape=(2, 32, 32))
  with pytest.raises(ValueError, match=r"model param cls \(1, 1, 32\) is "
                     "missing"):
    vivit.inflate_from_image(img, dict(TINY, pool_type="tok"),
                             clip_shape=(2, 32, 32))
  with pytest.raises(ValueError, match="Unknown inflation method"):
    vivit.inflate_kernel(np.zeros((8, 8, 3, 32)), 2, "middle")


def test_inflated_npz_loads_into_the_adaptation_model(tmp_path):
  img_path = str(tmp_path / "img.npz")
  npz_lib.save_npz(_image_params("tok", seed=1), img_path)
  vcfg = dict(TINY, kind="vivit", pool_type="tok", temporal_patch_size=2,
              scan=True)
  out = vivit.inflate_checkpoint(img_path, str(tmp_path / "vid.npz"), vcfg,
                                 "central", clip_shape=(4, 32, 32))
  model = model_lib.Model(5, "losa", backbone=vcfg)
  params = model.init(jax.random.key(0), jnp.zeros((1, 4, 32, 32, 3)))[
      "params"]
  loaded = porting.load_into_model(params, out, vcfg)
  flat = tree_lib.flatten(loaded["backbone"])
  assert flat["embedding/kernel"].shape == (2, 8, 8, 3, 32)
  assert not np.any(flat["embedding/kernel"][0])
  logits, _ = model.apply({"params": loaded}, jnp.ones((2, 4, 32, 32, 3)))
  assert logits.shape == (2, 5)


@pytest.mark.parametrize("shape,match", [
    ((1, 5, 32, 32, 3), "num_frames 5 is not divisible"),
    ((1, 4, 30, 32, 3), "height 30 is not divisible"),
    ((1, 32, 32, 3), r"clips \[B, T, H, W, 3\]")])
def test_bad_clip_shapes_are_named(shape, match):
  model = vivit.Model(None, **TINY, temporal_patch_size=2)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(model.init, jax.random.key(0),
                   jax.ShapeDtypeStruct(shape, jnp.float32))


def test_num_frames_is_checked():
  model = vivit.Model(None, **TINY, num_frames=8)
  with pytest.raises(ValueError, match="num_frames=8 .* 4 frames"):
    jax.eval_shape(model.init, jax.random.key(0),
                   jax.ShapeDtypeStruct((1, 4, 32, 32, 3), jnp.float32))
