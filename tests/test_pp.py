# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Tests for losa_jax.pp: parsing, every op, seeded randomness."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf

from losa_jax import pp


def _img(h=6, w=8, c=3, seed=0):
  return np.random.RandomState(seed).randint(0, 256, (h, w, c)).astype(
      np.uint8)


def _run(spec, **ex):
  ex = {k: tf.constant(v) for k, v in ex.items()}
  out = pp.get_preprocess_fn(spec)(ex)
  return {k: v.numpy() for k, v in out.items()}


def _seed(a, b=0):
  return np.array([a, b], np.int64)


# --- Parsing ---------------------------------------------------------------


def test_parse_op_literals():
  assert pp.parse_op("flip_lr") == ("flip_lr", (), {})
  assert pp.parse_op("resize((4, 5), method='nearest')") == (
      "resize", ((4, 5),), {"method": "nearest"})
  assert pp.parse_op("value_range(-1, 1)") == ("value_range", (-1, 1), {})


@pytest.mark.parametrize("bad", [
    "resize(__import__('os').getcwd())", "resize(x)", "os.system('ls')",
    "resize(224", "resize(**{'size': 2})"])
def test_parse_rejects_non_literals(bad):
  with pytest.raises(ValueError):
    pp.get_preprocess_fn(bad)


def test_unknown_op_lists_registered_ops():
  with pytest.raises(ValueError, match="Unknown pp op 'resise'") as e:
    pp.get_preprocess_fn("decode|resise(3)")
  assert "resize" in str(e.value) and "value_range" in str(e.value)


def test_bad_args_name_the_op():
  with pytest.raises(ValueError, match="'resize'"):
    pp.get_preprocess_fn("resize(-3)")
  with pytest.raises(ValueError, match="'onehot'"):
    pp.get_preprocess_fn("onehot(10, nonsense=1)")
  with pytest.raises(ValueError, match="'decode'"):
    pp.get_preprocess_fn("decode(channels=2)")


def test_pipe_inside_quoted_args_and_lists():
  out = _run(["copy('a', 'x|y')", "keep('x|y')"], a=np.int64(3))
  assert out == {"x|y": 3}
  assert pp.get_preprocess_fn(None)({"a": 1}) == {"a": 1}
  assert pp.get_preprocess_fn("")({"a": 1}) == {"a": 1}


def test_register_custom_op_and_duplicates():
  @pp.register("test_times")
  def _times(k):
    return lambda ex: dict(ex, x=ex["x"] * k)

  assert "test_times" in pp.registered_ops()
  assert _run("test_times(3)", x=np.int32(2))["x"] == 6
  with pytest.raises(ValueError, match="already registered"):
    pp.register("test_times")(_times)


def test_missing_key_names_op_and_keys():
  with pytest.raises(KeyError, match="resize: missing key img"):
    _run("resize(4, key='img')", image=_img())


# --- Image ops -------------------------------------------------------------


def test_decode_png_jpeg_and_passthrough():
  img = _img(5, 7)
  png = tf.io.encode_png(img).numpy()
  np.testing.assert_array_equal(_run("decode", image=png)["image"], img)
  jpg = _run("decode", image=tf.io.encode_jpeg(img).numpy())["image"]
  assert jpg.shape == (5, 7, 3) and jpg.dtype == np.uint8
  # Already decoded: unchanged (so `decode` may be repeated).
  np.testing.assert_array_equal(_run("decode|decode", image=img)["image"],
                                img)


def test_decode_grayscale_channels():
  gray = _img(4, 4, 1)
  for image in (tf.io.encode_png(gray).numpy(), gray, gray[..., 0]):
    out = _run("decode(channels=3)", image=image)["image"]
    assert out.shape == (4, 4, 3)
    for c in range(3):
      np.testing.assert_array_equal(out[..., c], gray[..., 0])
  rgba = _img(4, 4, 4)
  assert _run("decode", image=rgba)["image"].shape == (4, 4, 3)
  one = _run("decode(channels=1)", image=_img(4, 4, 3))["image"]
  assert one.shape == (4, 4, 1) and one.dtype == np.uint8
  keep = _run("decode(channels=0)", image=tf.io.encode_png(gray).numpy())
  assert keep["image"].shape == (4, 4, 1)


def test_resize_and_resize_small():
  img = _img(6, 8)
  out = _run("resize(4)", image=img)["image"]
  assert out.shape == (4, 4, 3) and out.dtype == np.uint8
  assert _run("resize((3, 5))", image=img)["image"].shape == (3, 5, 3)
  const = np.full((6, 8, 3), 7, np.uint8)
  np.testing.assert_array_equal(_run("resize(3)", image=const)["image"], 7)
  flt = _run("resize(4)", image=img.astype(np.float32))["image"]
  assert flt.dtype == np.float32
  assert _run("resize_small(3)", image=img)["image"].shape == (3, 4, 3)
  assert _run("resize_small(4)", image=_img(10, 5))["image"].shape == (8, 4,
                                                                       3)


def test_central_crop():
  img = _img(6, 8)
  out = _run("central_crop(4)", image=img)["image"]
  np.testing.assert_array_equal(out, img[1:5, 2:6])
  out = _run("central_crop((2, 6))", image=img)["image"]
  np.testing.assert_array_equal(out, img[2:4, 1:7])


def _windows(img, h, w):
  return [img[i:i + h, j:j + w] for i in range(img.shape[0] - h + 1)
          for j in range(img.shape[1] - w + 1)]


def test_random_crop_seeded():
  img = _img(8, 8)
  crops = [_run("random_crop(5)", image=img, _seed=_seed(s))["image"]
           for s in range(6)]
  for c in crops:
    assert c.shape == (5, 5, 3)
    assert any(np.array_equal(c, w) for w in _windows(img, 5, 5))
  again = _run("random_crop(5)", image=img, _seed=_seed(0))["image"]
  np.testing.assert_array_equal(again, crops[0])
  assert any(not np.array_equal(c, crops[0]) for c in crops[1:])


def test_inception_crop_seeded_window_of_the_area_range():
  img = _img(40, 30)
  runs = [_run("inception_crop(area_min=20, area_max=60)", image=img,
               _seed=_seed(s))["image"] for s in range(8)]
  for c in runs:
    h, w, _ = c.shape
    assert 0.2 * 1200 * 0.9 <= h * w <= 0.6 * 1200 * 1.1, (h, w)
    # A window of the image, uncut (no resize asked for).
    assert any(np.array_equal(c, win) for win in _windows(img, h, w))
  np.testing.assert_array_equal(
      _run("inception_crop(area_min=20, area_max=60)", image=img,
           _seed=_seed(0))["image"], runs[0])
  assert len({r.shape for r in runs}) > 1
  out = _run("inception_crop(16)", image=img, _seed=_seed(1))["image"]
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  assert "inception_crop(16)" in pp.random_ops(["decode", "inception_crop(16)"])


def test_flip_lr_seeded():
  img = _img(4, 6)
  outs = [_run("flip_lr", image=img, _seed=_seed(s))["image"]
          for s in range(16)]
  flipped = [np.array_equal(o, img[:, ::-1]) for o in outs]
  assert all(f or np.array_equal(o, img) for f, o in zip(flipped, outs))
  assert 0 < sum(flipped) < 16
  np.testing.assert_array_equal(
      _run("flip_lr", image=img, _seed=_seed(3))["image"], outs[3])


def test_random_ops_consume_independent_seeds():
  ex = {"image": _img(8, 8), "_seed": _seed(5)}
  out = _run("random_crop(4)|flip_lr", **ex)
  # The seed is split, not reused: the stored seed changed.
  assert not np.array_equal(out["_seed"], ex["_seed"])
  np.testing.assert_array_equal(out["image"],
                                _run("random_crop(4)|flip_lr", **ex)["image"])


def test_random_op_without_seed_explains():
  with pytest.raises(ValueError, match="_seed"):
    _run("flip_lr", image=_img())


def test_value_range():
  img = np.array([[[0, 255, 51]]], np.uint8)
  out = _run("value_range(-1, 1)", image=img)["image"]
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, [[[-1, 1, -0.6]]], atol=1e-6)
  np.testing.assert_allclose(_run("value_range(0, 1)", image=img)["image"],
                             img / 255.0, atol=1e-6)
  out = _run("value_range(0, 1, 0, 100, clip_values=True)", image=img)
  np.testing.assert_allclose(out["image"], [[[0, 1, 0.51]]], atol=1e-6)


# --- Label and dict ops ----------------------------------------------------


def test_onehot_keep_copy():
  out = _run("onehot(4)", label=np.int64(2))
  assert out["labels"].dtype == np.float32
  np.testing.assert_array_equal(out["labels"], [0, 0, 1, 0])
  assert out["label"] == 2
  out = _run("onehot(3, key='y', key_result='y', on=0.9, off=0.05)",
             y=np.int64(0))
  np.testing.assert_allclose(out["y"], [0.9, 0.05, 0.05])
  multi = _run("onehot(4)", label=np.array([0, 3]))["labels"]
  np.testing.assert_array_equal(multi, [1, 0, 0, 1])
  out = _run("copy('label', 'y')|keep('image', 'y')", image=_img(),
             label=np.int64(1), extra=np.int64(0), _seed=_seed(1))
  assert sorted(out) == ["_seed", "image", "y"]  # `_` keys survive keep.
  with pytest.raises(KeyError, match="keep"):
    _run("keep('image', 'nope')", image=_img())


def test_pipeline_runs_in_tf_data_graph():
  ds = tf.data.Dataset.from_tensor_slices({
      "image": np.stack([_img(seed=i) for i in range(3)]),
      "label": np.arange(3), "_seed": np.stack([_seed(i) for i in range(3)])})
  fn = pp.get_preprocess_fn(
      "decode|resize_small(4)|random_crop(4)|flip_lr|value_range(-1, 1)|"
      "onehot(3)|keep('image', 'labels')")
  batch = next(ds.map(fn).batch(3).as_numpy_iterator())
  assert batch["image"].shape == (3, 4, 4, 3)
  assert batch["labels"].shape == (3, 3)
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1


# --- VTAB label ops --------------------------------------------------------


def test_clevr_label_ops():
  objects = {"size": np.zeros(5, np.int64),
             "pixel_coords": np.array([[0, 0, 9.2], [0, 0, 8.7], [0, 0, 12],
                                       [0, 0, 11], [0, 0, 10.5]], np.float32)}
  ex = {"image": tf.constant(b""), "objects": objects}
  assert pp.get_preprocess_fn("clevr_count_all")(ex)["label"].numpy() == 2
  # Closest depth 8.7 is in (8.5, 9.0] -> class 2.
  dist = pp.get_preprocess_fn("clevr_closest_distance")(ex)["label"]
  assert dist.numpy() == 2 and dist.dtype == tf.int64


@pytest.mark.parametrize("types,depths,label", [
    ([0, 3], [5.0, 1.0], 0),      # Car at 5 m (pedestrian closer, ignored).
    ([1, 2], [30.0, 12.0], 1),    # Truck at 12 m.
    ([2], [25.0], 2),
    ([3, 5, 7], [4.0, 4.0, 4.0], 3),  # No vehicle.
    ([], [], 3)])
def test_kitti_closest_vehicle_distance(types, depths, label):
  loc = np.zeros((len(depths), 3), np.float32)
  loc[:, 2] = depths
  ex = {"objects": {"type": tf.constant(types, tf.int64),
                    "location": tf.constant(loc.reshape(-1, 3))}}
  out = pp.get_preprocess_fn("kitti_closest_vehicle_distance")(ex)
  assert out["label"].numpy() == label


def test_dsprites_label():
  ex = {"image": np.array([[[0], [1]]], np.uint8),
        "label_orientation": np.int64(39), "label_x_position": np.int64(31)}
  out = _run("decode(channels=3)|dsprites_label('label_orientation', 16, 40)",
             **ex)
  assert out["label"] == 15  # floor(39 * 16 / 40).
  np.testing.assert_array_equal(out["image"][0, :, 0], [0, 255])
  assert out["image"].shape == (1, 2, 3)
  out = _run("dsprites_label('label_x_position', 16, 32)", **ex)
  assert out["label"] == 15
  with pytest.raises(ValueError, match="decode"):
    _run("dsprites_label('label_x_position', 16, 32)",
         image=b"png", label_x_position=np.int64(0))
