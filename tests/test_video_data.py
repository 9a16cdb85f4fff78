# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Video pp ops, multi-view averaging, video sources, the demo task, configs."""
import os

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from losa_jax.config import schema as config_lib
from losa_jax import datasets
from losa_jax.assembly import input_pipeline
from losa_jax import pp as pp_lib
from losa_jax.datasets import frames as ds_frames
from losa_jax.datasets import moving_digits
from losa_jax.evaluators import video as video_eval
from losa_jax.pp import video as pp_video


def _clip(frames=10, h=6, w=8, c=1):
  """uint8 [F, H, W, C]: pixel // 8 is the frame index (F <= 32)."""
  f, y, x = np.meshgrid(np.arange(frames), np.arange(h), np.arange(w),
                        indexing="ij")
  v = f * 8 + (3 * y + x) % 8
  return np.repeat(v[..., None], c, axis=-1).astype(np.uint8)


def _run(spec, video, seed=(1, 2)):
  ex = {"video": tf.constant(video), "label": tf.constant(3, tf.int64),
        pp_lib.SEED_KEY: tf.constant(seed, tf.int64)}
  return {k: v.numpy() for k, v in pp_lib.get_preprocess_fn(spec)(ex).items()}


def _frame_ids(video):
  return [int(i) for i in video[:, 0, 0, 0] // 8]


# --- frame sampling -----------------------------------------------------------


def test_central_clip_and_stride():
  idx = pp_video.frame_indices(20, 4, 3, "central").numpy()
  # span 10 -> starts 0..10, centre 5.
  np.testing.assert_array_equal(idx, [5, 8, 11, 14])


def test_evenly_spaced_clips_cover_first_to_last_start():
  starts = [int(pp_video.frame_indices(20, 4, 2, "clip", num_clips=3,
                                    clip_index=i).numpy()[0])
            for i in range(3)]
  assert starts == [0, 6, 13]      # max start 20 - 7 = 13


def test_uniform_spreads_over_the_whole_video():
  np.testing.assert_array_equal(
      pp_video.frame_indices(16, 4, mode="uniform").numpy(), [2, 6, 10, 14])


def test_short_video_loops():
  np.testing.assert_array_equal(
      pp_video.frame_indices(3, 5, 1, "central").numpy(), [0, 1, 2, 0, 1])


def test_random_clip_is_a_pure_function_of_the_seed():
  video = _clip(frames=30)
  spec = "video_sample(4, stride=2, mode='random')"
  a, b = _run(spec, video, (5, 6)), _run(spec, video, (5, 6))
  np.testing.assert_array_equal(a["video"], b["video"])
  starts = {_frame_ids(_run(spec, video, (s, 0))["video"])[0]
            for s in range(12)}
  assert len(starts) > 3 and max(starts) <= 30 - 7
  ids = _frame_ids(a["video"])
  assert np.all(np.diff(ids) == 2)


def test_sample_before_decode_only_touches_sampled_frames():
  frames = [tf.io.encode_png(tf.constant(f)).numpy() for f in _clip(6, c=3)]
  out = _run("video_sample(2, stride=3, mode='central')|video_decode",
             np.array(frames, dtype=object))
  assert out["video"].shape == (2, 6, 8, 3)
  assert _frame_ids(out["video"]) == [1, 4]


def test_decode_tiles_gray_and_keeps_decoded():
  out = _run("video_decode(channels=3)", _clip(c=1))
  assert out["video"].shape == (10, 6, 8, 3) and out["video"].dtype == np.uint8
  out2 = _run("video_decode(channels=3)|video_decode", _clip(c=1))
  np.testing.assert_array_equal(out["video"], out2["video"])


# --- spatial ops ----------------------------------------------------------------


def test_random_crop_is_the_same_window_on_every_frame():
  video = np.random.default_rng(0).integers(0, 256, (5, 12, 16, 1),
                                            dtype=np.uint8)
  out = _run("video_random_crop(4)", video)["video"]
  assert out.shape == (5, 4, 4, 1)
  # Recover the window from frame 0 and check every frame uses it.
  matches = [(y, x) for y in range(9) for x in range(13)
             if np.array_equal(video[0, y:y + 4, x:x + 4], out[0])]
  assert len(matches) == 1
  (y, x), = matches
  np.testing.assert_array_equal(out, video[:, y:y + 4, x:x + 4])
  windows = set()
  for s in range(6):
    o = _run("video_random_crop(4)", video, (s, 9))["video"]
    windows.add(o.tobytes())
  assert len(windows) > 1


def test_three_crop_positions_landscape_and_portrait():
  offs = [tuple(int(o) for o in pp_video.spatial_crop_offsets(4, 10, 4, i, 3))
          for i in range(3)]
  assert offs == [(0, 0), (0, 3), (0, 6)]      # left, centre, right
  offs = [tuple(int(o) for o in pp_video.spatial_crop_offsets(10, 6, 4, i, 3))
          for i in range(3)]
  assert offs == [(0, 1), (3, 1), (6, 1)]      # top, centre, bottom


def test_central_crop_resize_small_and_flip():
  video = _clip(frames=3, h=8, w=12)
  out = _run("video_central_crop((4, 6))", video)["video"]
  np.testing.assert_array_equal(out, video[:, 2:6, 3:9])
  out = _run("video_resize_small(4)", video)["video"]
  assert out.shape == (3, 4, 6, 1)
  flips = [_run("video_flip_lr", video, (s, 1))["video"] for s in range(8)]
  for f in flips:   # all frames flipped, or none
    assert (np.array_equal(f, video) or
            np.array_equal(f, video[:, :, ::-1]))
  assert any(np.array_equal(f, video[:, :, ::-1]) for f in flips)


def test_scale_jitter_then_crop():
  out = _run("video_scale_jitter(8, 1.0, 1.5)|video_random_crop(8)",
             _clip(h=8, w=10))["video"]
  assert out.shape == (10, 8, 8, 1)


def test_crop_too_big_is_reported():
  with pytest.raises(tf.errors.InvalidArgumentError, match="resize first"):
    _run("video_central_crop(9)", _clip())


@pytest.mark.parametrize("spec,match", [
    ("video_sample(4, mode='middle')", "mode='middle'"),
    ("video_sample(0)", "num_frames must be a positive int"),
    ("video_spatial_crop(4, 3)", "index=3 not in"),
    ("video_decode(channels=2)", "channels must be 1 or 3")])
def test_bad_args_are_named(spec, match):
  with pytest.raises(ValueError, match=match):
    pp_lib.get_preprocess_fn(spec)


# --- multi-view -------------------------------------------------------------------


def test_multiview_views_are_clips_times_crops():
  video = _clip(frames=20, h=4, w=10)
  out = _run("video_multiview(4, 2, 3, 4, 3)", video)["video"]
  assert out.shape == (9, 4, 4, 4, 1)
  for v in range(9):
    c, s = divmod(v, 3)
    start = [0, 6, 13][c]
    np.testing.assert_array_equal(_frame_ids(out[v]),
                                  list(range(start, start + 7, 2)))
    left = [0, 3, 6][s]
    np.testing.assert_array_equal(out[v, 0], video[start, :, left:left + 4])


def test_multiview_logits_average_per_example():
  views = jnp.arange(2 * 3, dtype=jnp.float32).reshape(2, 3, 1, 1, 1, 1)
  # "model": logits [x, -x] per clip.
  predict = lambda p, x: p * jnp.concatenate(
      [x.reshape(-1, 1), -x.reshape(-1, 1)], axis=1)
  out = video_eval.multiview_logits(predict, 2.0, views)
  np.testing.assert_allclose(out, [[2.0, -2.0], [8.0, -8.0]])
  probs = video_eval.multiview_logits(predict, 2.0, views, average="probs")
  assert probs.shape == (2, 2) and np.all(np.asarray(probs) <= 0)


def test_evaluate_multiview_uses_the_mask():
  # Example 0: views vote 1, 1, 0 with logits favouring class 1 on average.
  logits_of = {0.0: [1.0, 0.0], 1.0: [0.0, 2.0], 2.0: [5.0, 0.0]}
  predict = lambda p, x: jnp.stack(
      [jnp.asarray(logits_of[float(v)]) for v in np.asarray(x).reshape(-1)])
  batches = [{"image": np.array([[1.0, 1.0, 0.0], [2.0, 2.0, 2.0]]
                                ).reshape(2, 3, 1, 1, 1, 1),
              "label": np.array([1, 1]), "_mask": np.array([1.0, 0.0])}]
  res = video_eval.evaluate_multiview(predict, None, batches, jit=False)
  assert res == {"accuracy": 1.0, "count": 1.0}


# --- sources ------------------------------------------------------------------------


def _write_frames(root, split, cls, vid, n):
  d = os.path.join(root, split, cls, vid)
  os.makedirs(d)
  for i in range(n):
    frame = np.full((6, 8, 3), 20 * i, np.uint8)
    with open(os.path.join(d, f"{i:05d}.png"), "wb") as f:
      f.write(tf.io.encode_png(frame).numpy())


def test_frame_folder_source_through_the_pipeline(tmp_path):
  root = str(tmp_path)
  _write_frames(root, "train", "a", "v1", 5)
  _write_frames(root, "train", "a", "v2", 7)
  _write_frames(root, "train", "b", "v3", 6)
  _write_frames(root, "val", "b", "v4", 4)
  src = datasets.get_source(dict(name="frames", root=root, split="train"))
  assert src.num_examples() == 3 and src.class_names == ["a", "b"]
  pp = ("video_sample(4, mode='central')|video_decode|"
        "value_range(0, 1, key='video')|copy('video', 'image')|"
        "keep('image', 'label')")
  it, n = input_pipeline.training(src, batch_size=3, pp=pp, seed=0,
                                  shuffle=False)
  batch = next(it)
  assert n == 3 and batch["image"].shape == (3, 4, 6, 8, 3)
  np.testing.assert_array_equal(batch["label"], [0, 0, 1])
  # v1 has 5 frames: the central 4 are frames 0..3.
  np.testing.assert_allclose(batch["image"][0, :, 0, 0, 0] * 255,
                             [0, 20, 40, 60], atol=1e-3)
  val = list(input_pipeline.evaluation(
      datasets.get_source(dict(frames_root=root, split="val")), batch_size=2, pp=pp))
  assert val[0]["_mask"].tolist() == [1.0, 0.0]
  assert val[0]["label"][0] == 1


def test_frame_folder_errors_name_the_layout(tmp_path):
  with pytest.raises(FileNotFoundError, match="<video_id>"):
    ds_frames.FrameFolderSource(str(tmp_path / "nope"), "train")
  os.makedirs(tmp_path / "train" / "a" / "v1")
  with pytest.raises(ValueError, match="has no"):
    ds_frames.FrameFolderSource(str(tmp_path), "train")


def test_tfds_has_no_kinetics_or_ssv2_builder():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  names = set(tfds.list_builders())
  assert "ucf101" in names and "moving_mnist" in names
  assert not {"kinetics400", "something_something_v2"} & names


# --- the procedural demo task -------------------------------------------------------


def test_moving_digits_labels_are_the_motion_direction():
  clips = moving_digits.render(
      moving_digits.shrink(np.full((3, 28, 28, 1), 255, np.uint8)),
      num_clips=40, seed=1)
  v = clips["video"][..., 0].astype(float)
  assert clips["video"].shape == (40, 8, 28, 28, 1)
  yy, xx = np.mgrid[:28, :28]
  cy = (v * yy).sum((2, 3)) / v.sum((2, 3))
  cx = (v * xx).sum((2, 3)) / v.sum((2, 3))
  speed = clips["speed"]
  want = {0: (0, 1), 1: (0, -1), 2: (1, 0), 3: (-1, 0)}
  for i, label in enumerate(clips["label"]):
    dy, dx = want[int(label)]
    np.testing.assert_allclose(np.diff(cy[i]), np.full(7, dy * speed[i]), atol=1e-6)
    np.testing.assert_allclose(np.diff(cx[i]), np.full(7, dx * speed[i]), atol=1e-6)


def test_moving_digits_task_is_deterministic_and_uses_held_out_digits():
  a = moving_digits.moving_digits_task(num_train=20, num_test=10)
  b = moving_digits.moving_digits_task(num_train=20, num_test=10)
  np.testing.assert_array_equal(a["train"]["video"], b["train"]["video"])
  assert a["train"]["video"].shape == (20, 8, 28, 28, 1)
  assert a["test"]["label"].shape == (10,) and a["num_classes"] == 4
  src = datasets.get_source(dict(name="moving_digits", split="test[:5]",
                                num_train=20, num_test=10))
  assert src.num_examples() == 5


# --- configs --------------------------------------------------------------------------


@pytest.mark.parametrize("module", ["video_kinetics400", "video_ssv2"])
@pytest.mark.parametrize("variant", ["B/16", "L/16", "H/14", "g/14", "e/14"])
def test_video_configs_validate(module, variant):
  mod = __import__(f"configs.{module}", fromlist=["get_config"])
  for method in ("losa", "linear", "full", "lora", "adapter", "st_adapter"):
    c = mod.get_config(f"variant={variant},method={method}")
    config_lib.validate(c)
    assert c.model.backbone.kind == "vivit"
    assert c.model.backbone.dtype_mm == "bfloat16" and c.model.backbone.scan
    assert len(c.image_size) == 3
    for spec in (c.input.pp, c.evals.val.pp, mod.multiview_pp(
        f"variant={variant}")):
      pp_lib.get_preprocess_fn(spec)          # every op exists, args parse


def test_ssv2_does_not_flip_and_k400_does():
  from configs import video_kinetics400, video_ssv2  # pylint: disable=g-import-not-at-top
  assert "video_flip_lr" in video_kinetics400.get_config().input.pp
  assert "video_flip_lr" not in video_ssv2.get_config().input.pp
  assert video_ssv2.get_config().num_classes == 174
  assert "video_multiview(32, 2, 4, 224, 3)" in video_kinetics400.multiview_pp()


def test_moving_digits_config_validates(tmp_path, monkeypatch):
  # get_config does no I/O: with HOME pointing to an empty folder nothing
  # appears there (the ViViT is inflated when the trainer loads it).
  monkeypatch.setenv("HOME", str(tmp_path))
  from configs import video_moving_digits  # pylint: disable=g-import-not-at-top
  for arg in ("", "method=linear", "mixing=space,pool=tok", "runlocal"):
    c = video_moving_digits.get_config(arg)
    config_lib.validate(c)
    assert tuple(c.image_size) == (8, 28, 28)
  assert not os.listdir(tmp_path)


# --- the TFDS video path ----------------------------------------------------------


def test_video_ops_resolve_after_importing_only_the_trainer():
  """Video pp ops are found by name in a fresh process that imported only the
  trainer: a TFDS video config names its ops and imports nothing else."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import losa_jax.train\n"
          "from losa_jax import pp\n"
          "pp.get_preprocess_fn(\"video_decode(channels=3)|video_flip_lr\")\n"
          "print('ok')\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_tfds_video_dataset_trains_through_its_config_pp(tmp_path):
  """A TFDS dataset with a `video` feature (built locally: nothing is
  downloaded) goes through datasets.get_source + the video pp of
  configs/video_kinetics400.py:tfds=... into training batches."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class TinyVideos(tfds.core.GeneratorBasedBuilder):
    """6 clips of 5 frames of 8x8 RGB, labels 0..2."""
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict({
              "video": tfds.features.Video(shape=(None, 8, 8, 3)),
              "label": tfds.features.ClassLabel(num_classes=3)}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(6)}

    def _generate_examples(self, n):
      for i in range(n):
        video = np.full((5, 8, 8, 3), 40 * i, np.uint8)
        yield i, {"video": video, "label": i % 3}

  data_dir = str(tmp_path / "tfds")
  TinyVideos(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
  from configs import video_kinetics400  # pylint: disable=g-import-not-at-top
  c = video_kinetics400.get_config(
      "variant=B/16,tfds=tiny_videos,frames=4,res=8,batch=2,data_dir=" +
      data_dir)
  config_lib.validate(c)
  data = dict(c.input.data, split="train")
  src = datasets.get_source(data)
  assert src.count() == 6
  it, n = input_pipeline.training(src, batch_size=2,
                                  pp=datasets.pp_for(data, c.input.pp),
                                  seed=0)
  batch = next(it)
  assert n == 6 and batch["image"].shape == (2, 4, 8, 8, 3)
  assert batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() <= batch["image"].max() <= 1.0
