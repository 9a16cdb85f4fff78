# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Tests for losa_jax.utils.npz and losa_jax.models.porting (tiny ViTs, CPU)."""
import logging
import os
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import scipy.ndimage

from losa_jax.utils import npz
from losa_jax.models import model as model_lib
from losa_jax.models import layouts
from losa_jax.models import porting

try:
  from tests import helpers_ckpt as h
except ImportError:  # tests/ run as a rootdir-relative module path
  import helpers_ckpt as h  # pylint: disable=g-import-not-at-top

D = 32  # width of the tiny ViT


@pytest.fixture(scope="module")
def loop_model():
  return h.tiny_vit()


@pytest.fixture(scope="module")
def scan_model():
  return h.tiny_vit(scan=True)


@pytest.fixture(scope="module")
def ckpt(loop_model):
  """A fully random loop-layout checkpoint tree for the tiny ViT."""
  return h.random_params(loop_model, seed=0)


@pytest.fixture(scope="module")
def loop_init(loop_model):
  return h.random_params(loop_model, seed=5)


def _assert_trees_equal(a, b):
  fa, fb = npz.flatten(a), npz.flatten(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.dtype == y.dtype, k
    assert x.shape == y.shape, k
    np.testing.assert_array_equal(x.astype(np.float64), y.astype(np.float64),
                                  err_msg=k)


# --- npz ------------------------------------------------------------------


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_round_trip(tmp_path, compressed):
  rng = np.random.default_rng(0)
  tree = {
      "a": {"b": rng.standard_normal((2, 3)).astype(np.float32),
            "c": {"d": np.arange(5, dtype=np.int32)}},
      "bf": rng.standard_normal((4,)).astype(ml_dtypes.bfloat16),
      "jx": jnp.ones((2, 2), jnp.bfloat16),
      "f64": np.float64(1.5) * np.ones(()),
  }
  path = tmp_path / "t.npz"
  assert npz.save_npz(tree, path, compressed=compressed) == str(path)
  loaded = npz.load_npz(path)
  _assert_trees_equal(loaded, {**tree, "jx": np.asarray(tree["jx"])})
  assert loaded["bf"].dtype == ml_dtypes.bfloat16
  # Flat "/" names, bf16 as 2-byte void: what big_vision and timm read.
  with np.load(path) as raw:
    assert sorted(raw.files) == ["a/b", "a/c/d", "bf", "f64", "jx"]
    assert raw["bf"].dtype == np.dtype("V2")
  # Atomic write: no temporary file left behind.
  assert os.listdir(tmp_path) == ["t.npz"]


def test_npz_overwrite_and_flatten_helpers(tmp_path):
  path = tmp_path / "t.npz"
  npz.save_npz({"x": np.zeros(2)}, path)
  npz.save_npz({"y": np.ones(3)}, path)
  assert list(npz.load_npz(path)) == ["y"]
  tree = {"b": {"z": 1, "a": 2}, "a": 3}
  flat = npz.flatten(tree)
  assert list(flat) == ["a", "b/a", "b/z"]
  assert npz.unflatten(flat) == tree
  with pytest.raises(ValueError, match="both a param and a prefix"):
    npz.unflatten({"a": 1, "a/b": 2})


def test_npz_prefixes_and_subkey(tmp_path):
  inner = {"embedding": {"kernel": np.ones((2, 2), np.float32)}}
  for prefix in ("params", "opt/target"):
    tree = npz.unflatten({f"{prefix}/{k}": v
                          for k, v in npz.flatten(inner).items()})
    tree["step"] = np.array(3)  # other training state is ignored
    path = tmp_path / f"{prefix.replace('/', '_')}.npz"
    npz.save_npz(tree, path)
    _assert_trees_equal(npz.load_npz(path), inner)
    assert "step" in npz.load_npz(path, find_params=False)
  # No prefix: the whole tree.
  npz.save_npz(inner, tmp_path / "bare.npz")
  _assert_trees_equal(npz.load_npz(tmp_path / "bare.npz"), inner)
  # Two-tower: params/img/... selected with ":img" after prefix resolution.
  two = {"params": {"img": inner, "txt": {"w": np.zeros(3)}}}
  path = str(tmp_path / "two.npz")
  npz.save_npz(two, path)
  _assert_trees_equal(npz.load_npz(path + ":img"), inner)
  with pytest.raises(ValueError, match="'nope'.*available: \\['img', 'txt'\\]"):
    npz.load_npz(path + ":nope")


def test_npz_bad_files(tmp_path):
  missing = str(tmp_path / "missing.npz")
  with pytest.raises(FileNotFoundError, match=re.escape(missing)):
    npz.load_npz(missing)
  with pytest.raises(FileNotFoundError, match=re.escape(missing)):
    npz.load_npz(missing + ":img")
  text = tmp_path / "notes.npz"
  text.write_text("not a zip archive")
  with pytest.raises(ValueError, match=re.escape(str(text))):
    npz.load_npz(text)
  arr = tmp_path / "single.npy"
  np.save(arr, np.ones(3))
  with pytest.raises(ValueError, match="single array"):
    npz.load_npz(arr)
  truncated = tmp_path / "truncated.npz"
  npz.save_npz({"x": np.ones(1000)}, tmp_path / "good.npz")
  truncated.write_bytes((tmp_path / "good.npz").read_bytes()[:500])
  with pytest.raises(ValueError, match=re.escape(str(truncated))):
    npz.load_npz(truncated)


# --- Loading a bare ViT ---------------------------------------------------


def test_load_same_layout_gives_same_logits(tmp_path, loop_model, ckpt,
                                            loop_init):
  path = tmp_path / "vit.npz"
  porting.save_vit(ckpt, path)
  loaded = porting.load(loop_init, path, dict(h.TINY, scan=False))
  _assert_trees_equal(loaded, ckpt)
  x = h.images()
  np.testing.assert_array_equal(h.logits(loop_model, loaded, x),
                                h.logits(loop_model, ckpt, x))


def test_scan_checkpoint_into_loop_model_and_back(tmp_path, loop_model,
                                                  scan_model, loop_init):
  scan_ckpt = h.random_params(scan_model, seed=7)
  assert scan_ckpt["Transformer"]["encoderblock"]["LayerNorm_0"][
      "scale"].shape == (2, D)
  npz.save_npz(scan_ckpt, tmp_path / "scan.npz")
  as_loop = porting.load(loop_init, tmp_path / "scan.npz", {"scan": False})
  assert "encoderblock_1" in as_loop["Transformer"]
  x = h.images()
  want = h.logits(scan_model, scan_ckpt, x)
  np.testing.assert_allclose(h.logits(loop_model, as_loop, x), want,
                             rtol=1e-5, atol=1e-5)
  # ... and back into a scan model, bit-identical to the original tree.
  npz.save_npz(as_loop, tmp_path / "loop.npz")
  scan_init = h.random_params(scan_model, seed=9)
  back = porting.load(scan_init, tmp_path / "loop.npz", {"scan": True})
  _assert_trees_equal(back, scan_ckpt)
  _assert_trees_equal(layouts.loop_to_scan(layouts.scan_to_loop(scan_ckpt)),
                      scan_ckpt)
  with pytest.raises(ValueError, match="model_cfg\\['scan'\\]=True"):
    porting.load(loop_init, tmp_path / "loop.npz", {"scan": True})
  with pytest.raises(ValueError, match="3 stacked encoder blocks"):
    stacked3 = layouts.loop_to_scan(npz.unflatten({
        **npz.flatten(as_loop),
        **{k.replace("encoderblock_1", "encoderblock_2"): v
           for k, v in npz.flatten(as_loop).items() if "encoderblock_1" in k}
    }))
    porting.load(loop_init, stacked3)


def test_bf16_checkpoint_loads_as_float32(tmp_path, loop_model, ckpt,
                                          loop_init):
  bf16 = jax.tree.map(lambda v: np.asarray(v).astype(ml_dtypes.bfloat16),
                      ckpt)
  npz.save_npz(bf16, tmp_path / "bf16.npz")
  loaded = porting.load(loop_init, tmp_path / "bf16.npz")
  for k, v in npz.flatten(loaded).items():
    assert v.dtype == np.float32, k
    np.testing.assert_array_equal(
        v, np.asarray(npz.flatten(ckpt)[k]).astype(
            ml_dtypes.bfloat16).astype(np.float32), err_msg=k)
  # A model that keeps some params in bf16 (dtype_mm) gets them in bf16.
  bf_model = h.tiny_vit(dtype_mm="bfloat16")
  bf_init = h.random_params(bf_model)
  assert bf_init["pos_embedding"].dtype == jnp.bfloat16
  loaded = porting.load(bf_init, tmp_path / "bf16.npz")
  assert loaded["pos_embedding"].dtype == ml_dtypes.bfloat16
  assert loaded["embedding"]["kernel"].dtype == np.float32


def test_load_into_eval_shape_init(loop_model, ckpt):
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  shapes = jax.eval_shape(loop_model.init, jax.random.PRNGKey(0), x)["params"]
  loaded = porting.load(shapes, ckpt)
  _assert_trees_equal(loaded, ckpt)


# --- Old naming -----------------------------------------------------------


@pytest.mark.parametrize("posemb_at,cls_zero", [
    ("posembed_input", True), ("posembed_input", False),
    ("Transformer", False)])
def test_old_naming_gives_same_logits(tmp_path, loop_model, ckpt, loop_init,
                                      posemb_at, cls_zero):
  old = h.to_old_naming(ckpt, posemb_at=posemb_at, cls_zero=cls_zero)
  flat_old = npz.flatten(old)
  assert "Transformer/encoderblock_0/MlpBlock_3/Dense_1/kernel" in flat_old
  assert "pos_embedding" not in flat_old
  path = tmp_path / "old.npz"
  npz.save_npz(old, path)
  loaded = porting.load(loop_init, path, {"scan": False})
  assert sorted(npz.flatten(loaded)) == sorted(npz.flatten(ckpt))
  x = h.images()
  np.testing.assert_allclose(h.logits(loop_model, loaded, x),
                             h.logits(loop_model, ckpt, x),
                             rtol=1e-5, atol=1e-5)


def test_fix_old_checkpoints_renaming_rules():
  leaf = np.zeros(1)
  old_block = {"LayerNorm_0": leaf, "MultiHeadDotProductAttention_1": leaf,
               "LayerNorm_2": leaf, "MlpBlock_3": {"Dense_0": leaf,
                                                   "Dense_1": leaf}}
  # 12 blocks: natural order keeps encoderblock_10 after encoderblock_9.
  tree = {"Transformer": {f"encoderblock_{i}": dict(old_block, tag=np.full(
      1, i)) for i in range(12)}}
  fixed = layouts.fix_old_checkpoints(tree)
  blk = fixed["Transformer"]["encoderblock_10"]
  assert sorted(blk) == ["LayerNorm_0", "LayerNorm_1", "MlpBlock_0",
                         "MultiHeadDotProductAttention_0", "tag"]
  assert int(blk["tag"][0]) == 10
  assert "MultiHeadDotProductAttention_1" in tree["Transformer"][
      "encoderblock_0"]  # input untouched
  # New naming is left alone (nothing is renumbered).
  new = {"Transformer": {"encoderblock_0": {"LayerNorm_0": leaf,
                                            "LayerNorm_1": leaf}},
         "pos_embedding": np.zeros((1, 4, 2))}
  assert layouts.fix_old_checkpoints(new)["Transformer"] == new["Transformer"]
  assert layouts.fix_old_checkpoints(new)["pos_embedding"].shape == (1, 4, 2)
  # A top-level posemb already of the model's length (2x5 grid) keeps its
  # first row even though 10 = 3*3 + 1.
  odd = {"pos_embedding": np.zeros((1, 10, 2)), "cls": np.zeros((1, 1, 2))}
  assert layouts.fix_old_checkpoints(odd, expected_posemb_len=10)[
      "pos_embedding"].shape == (1, 10, 2)
  assert layouts.fix_old_checkpoints(odd)["pos_embedding"].shape == (1, 9, 2)
  # An old-location posemb always had the cls slot, whatever the model wants.
  moved = {"Transformer": {"posembed_input": {
      "pos_embedding": np.ones((1, 10, 2))}}, "cls": np.ones((1, 1, 2))}
  fixed = layouts.fix_old_checkpoints(moved, expected_posemb_len=10)
  assert fixed["pos_embedding"].shape == (1, 9, 2)
  np.testing.assert_array_equal(fixed["cls"], 2.0)
  assert "Transformer" not in fixed  # emptied containers are pruned


def test_inlined_map_head_is_regrouped(loop_init):
  map_model = h.tiny_vit(pool_type="map")
  ref = h.random_params(map_model, seed=4)
  flat = npz.flatten(ref)
  inlined = {k.removeprefix("MAPHead_0/"): v for k, v in flat.items()}
  loaded = porting.load(h.random_params(map_model, seed=2),
                        npz.unflatten(inlined))
  _assert_trees_equal(loaded, ref)


# --- Posemb resampling ----------------------------------------------------


def test_resample_square_matches_scipy_zoom():
  old = np.random.default_rng(0).standard_normal((1, 16, D)).astype(
      np.float32)
  new = layouts.resample_posemb(old, (6, 6))
  assert new.shape == (1, 36, D) and new.dtype == np.float32
  want = scipy.ndimage.zoom(old.reshape(4, 4, D), (1.5, 1.5, 1), order=1)
  np.testing.assert_array_equal(new, want.reshape(1, 36, D))
  grid, old_grid = new.reshape(6, 6, D), old.reshape(4, 4, D)
  for (i, j), (oi, oj) in zip([(0, 0), (0, 5), (5, 0), (5, 5)],
                              [(0, 0), (0, 3), (3, 0), (3, 3)]):
    np.testing.assert_array_equal(grid[i, j], old_grid[oi, oj])
  assert layouts.resample_posemb(old, 4) is old
  bf = layouts.resample_posemb(old.astype(ml_dtypes.bfloat16), (6, 6))
  assert bf.dtype == ml_dtypes.bfloat16


def test_resample_non_square(tmp_path, ckpt):
  # 4x4 checkpoint -> 4x6 model (32x48 px images).
  wide = h.tiny_vit()
  wide_init = h.random_params(wide, hw=(32, 48))
  assert wide_init["pos_embedding"].shape == (1, 24, D)
  path = tmp_path / "vit.npz"
  npz.save_npz(ckpt, path)
  with pytest.raises(ValueError, match="posemb_grid=\\(h, w\\)"):
    porting.load(wide_init, path)
  loaded = porting.load(wide_init, path, posemb_grid=(4, 6))
  pe = loaded["pos_embedding"]
  assert pe.shape == (1, 24, D)
  old = np.asarray(ckpt["pos_embedding"]).reshape(4, 4, D)
  new = pe.reshape(4, 6, D)
  # Rows are unchanged in count: each row is a 1-D resample of the old row.
  np.testing.assert_array_equal(new[:, 0], old[:, 0])
  np.testing.assert_array_equal(new[:, -1], old[:, -1])
  np.testing.assert_allclose(new[:, 3], old[:, 1] + 0.8 * (old[:, 2] -
                                                           old[:, 1]),
                             rtol=1e-5, atol=1e-6)  # x = 3 * 3/5 = 1.8
  out = h.logits(wide, loaded, h.images(hw=(32, 48)))
  assert out.shape == (2, 10) and np.isfinite(out).all()
  # ... and back from the non-square checkpoint, given its grid.
  npz.save_npz(loaded, tmp_path / "wide.npz")
  with pytest.raises(ValueError, match="old_grid=\\(h, w\\)"):
    layouts.resample_posemb(pe, (4, 4))
  back = porting.load(h.random_params(h.tiny_vit()), tmp_path / "wide.npz",
                      ckpt_posemb_grid=(4, 6))
  np.testing.assert_allclose(
      back["pos_embedding"],
      layouts.resample_posemb(pe, (4, 4), old_grid=(4, 6)))
  # Same token count, transposed grid: resampled because the grids differ.
  tall = porting.load(h.random_params(h.tiny_vit(), hw=(48, 32)), tmp_path /
                      "wide.npz", posemb_grid=(6, 4), ckpt_posemb_grid=(4, 6))
  assert tall["pos_embedding"].shape == (1, 24, D)
  assert not np.array_equal(tall["pos_embedding"], pe)


# --- Bad checkpoints ------------------------------------------------------


def test_wrong_shape_names_param_and_shapes(loop_init, ckpt):
  flat = npz.flatten(ckpt)
  name = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"
  flat[name] = np.zeros((32, 64), np.float32)
  with pytest.raises(ValueError) as e:
    porting.load(loop_init, npz.unflatten(flat))
  assert (f"checkpoint param {name} has shape (32, 64) but the model expects "
          "(32, 128)") in str(e.value)
  assert "dont_load" in str(e.value)


def test_missing_and_unexpected_keys(loop_init, ckpt):
  flat = npz.flatten(ckpt)
  del flat["Transformer/encoder_norm/scale"]
  flat["Transformer/encoderblock_0/extra/kernel"] = np.zeros(2)
  with pytest.raises(ValueError) as e:
    porting.load(loop_init, npz.unflatten(flat))
  msg = str(e.value)
  assert "missing from the checkpoint: [Transformer/encoder_norm/scale]" in msg
  assert ("the model does not have: [Transformer/encoderblock_0/extra/kernel]"
          in msg)
  # dont_load keeps the init value and ignores the extra param.
  loaded = porting.load(loop_init, npz.unflatten(flat), dont_load=[
      "Transformer/encoder_norm/scale", ".*/extra/.*"])
  np.testing.assert_array_equal(
      loaded["Transformer"]["encoder_norm"]["scale"],
      loop_init["Transformer"]["encoder_norm"]["scale"])


def test_missing_file_and_non_npz(tmp_path, loop_init):
  with pytest.raises(FileNotFoundError, match="nothere.npz"):
    porting.load(loop_init, tmp_path / "nothere.npz")
  bad = tmp_path / "bad.npz"
  bad.write_bytes(b"\x00" * 64)
  with pytest.raises(ValueError, match="bad.npz"):
    porting.load(loop_init, bad)


def test_two_tower_file_hints_img_subkey(tmp_path, loop_init, ckpt):
  path = str(tmp_path / "two.npz")
  npz.save_npz({"params": {"img": ckpt, "txt": {"w": np.zeros(2)}}}, path)
  with pytest.raises(ValueError, match="append ':img'"):
    porting.load(loop_init, path)
  _assert_trees_equal(porting.load(loop_init, path + ":img"), ckpt)


def test_pre_logits_and_head_handling(loop_init, ckpt):
  flat = npz.flatten(ckpt)
  flat["pre_logits/kernel"] = np.zeros((D, D), np.float32)
  flat["pre_logits/bias"] = np.zeros((D,), np.float32)
  # Model without rep_size: pre_logits dropped.
  loaded = porting.load(loop_init, npz.unflatten(flat))
  assert "pre_logits" not in loaded
  # Model with rep_size: pre_logits loaded.
  rep_init = h.random_params(h.tiny_vit(rep_size=True))
  loaded = porting.load(rep_init, npz.unflatten(flat))
  np.testing.assert_array_equal(loaded["pre_logits"]["kernel"], 0)
  # A head of another size is an error unless dont_load'ed.
  other_init = h.random_params(h.tiny_vit(num_classes=7))
  with pytest.raises(ValueError, match="head/kernel has shape \\(32, 10\\)"):
    porting.load(other_init, ckpt)
  loaded = porting.load(other_init, ckpt, dont_load=["head/.*"])
  assert loaded["head"]["kernel"].shape == (D, 7)
  # A model without a head just drops the checkpoint's.
  headless = porting.load(h.random_params(h.tiny_vit(num_classes=None)),
                          ckpt)
  assert "head" not in headless


# --- Adaptation model -----------------------------------------------------


def _adapt_init(method, num_classes, scan=False, seed=0):
  m = model_lib.Model(num_classes, method=method,
                      backbone=dict(h.TINY, scan=scan))
  return h.random_params(m, seed=seed)


def test_load_into_model_lora_matching_head(tmp_path, ckpt, caplog):
  params = _adapt_init("lora", 10)
  path = tmp_path / "vit.npz"
  porting.save_vit(ckpt, path)
  with caplog.at_level(logging.INFO):
    out = porting.load_into_model(params, path, dict(h.TINY, scan=False))
  assert "copied the checkpoint head" in caplog.text
  _assert_trees_equal(out["head"], ckpt["head"])
  bb = npz.flatten(out["backbone"])
  init_bb = npz.flatten(params["backbone"])
  ref = npz.flatten(ckpt)
  lora = [k for k in bb if "_lora/" in k]
  assert lora
  for k in bb:
    want = init_bb[k] if k in lora else ref[k]
    np.testing.assert_array_equal(bb[k], want, err_msg=k)
  assert "side" not in out  # lora has none; nothing invented


def test_load_into_model_mismatching_head_and_side(tmp_path, ckpt, caplog):
  path = tmp_path / "vit.npz"
  porting.save_vit(ckpt, path)
  params = _adapt_init("losa", 7)
  with caplog.at_level(logging.INFO):
    out = porting.load_into_model(params, path)
  assert "does not fit the model head" in caplog.text
  _assert_trees_equal(out["head"], params["head"])
  _assert_trees_equal(out["side"], params["side"])
  ref = {k: v for k, v in npz.flatten(ckpt).items()
         if not k.startswith("head/")}
  _assert_trees_equal(out["backbone"], npz.unflatten(ref))
  # A matching head that is dont_load'ed is not copied either.
  params10 = _adapt_init("linear", 10)
  out = porting.load_into_model(params10, path, dont_load=["head/.*"])
  _assert_trees_equal(out["head"], params10["head"])


def test_load_into_scanned_adapter_model(tmp_path, ckpt):
  params = _adapt_init("adapter", 10, scan=True)
  out = porting.load_into_model(params, ckpt, {"scan": True})
  bb = npz.flatten(out["backbone"])
  assert bb["Transformer/encoderblock/adapter_mlp/up/kernel"].shape == (2, 8, D)
  _assert_trees_equal(
      out["backbone"]["Transformer"]["encoderblock"]["adapter_mlp"],
      params["backbone"]["Transformer"]["encoderblock"]["adapter_mlp"])
  np.testing.assert_array_equal(
      bb["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"][1],
      ckpt["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"]["kernel"])


def test_save_vit_extras(tmp_path, ckpt, loop_init):
  params = _adapt_init("lora", 10)
  with pytest.raises(ValueError, match="extras='drop'"):
    porting.save_vit(params, tmp_path / "x.npz")
  lora_bb = h.randomize(params["backbone"], seed=11)
  porting.save_vit({"backbone": lora_bb}, tmp_path / "drop.npz",
                   extras="drop")
  no_head_init = {k: v for k, v in loop_init.items() if k != "head"}
  porting.load(no_head_init, tmp_path / "drop.npz")
  # extras="keep" round-trips LoRA weights through load_into_model.
  porting.save_vit({"backbone": lora_bb}, tmp_path / "keep.npz",
                   extras="keep")
  out = porting.load_into_model(params, tmp_path / "keep.npz")
  _assert_trees_equal(out["backbone"], lora_bb)
