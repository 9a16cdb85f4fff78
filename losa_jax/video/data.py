# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Video data: pp ops on clips, multi-view evaluation and video sources.

pp ops (registered in `losa_jax.pp`, so they compose with the image ops in
one spec string) act on `example["video"]`: uint8 [F, H, W, C] decoded frames
(what a TFDS `Video` feature decodes to) or tf.string [F] encoded frames (what
`FrameFolderSource` yields; `video_decode` decodes them). Random ops draw from
the per-example `_seed` exactly like `pp.random_crop` (split, use one half,
store the other), so a clip's augmentation is a pure function of the seed.

    video_sample(num_frames, stride=1, mode="random"|"central"|"clip"|"uniform",
                 num_clips=1, clip_index=0)        [F, ...] -> [num_frames, ...]
    video_decode(channels=3)                       -> uint8 [T, H, W, channels]
    video_resize(size) / video_resize_small(smaller_size)
    video_scale_jitter(smaller_size, min_scale, max_scale)   random short side
    video_random_crop(size) / video_central_crop(size)   one window, all frames
    video_spatial_crop(size, index, num_crops=3)   the index-th of num_crops
                                                   windows along the long side
    video_flip_lr()                                all frames or none
    video_multiview(num_frames, stride, num_clips, crop_size, num_crops=3)
                                                   -> [V, T, s, s, C], V = clips
                                                   x crops, clip-major

Then the usual `value_range(-1, 1, key="video")|copy("video", "image")|
keep("image", "label")`: the trainer feeds `example["image"]` [T, H, W, 3] (or
[V, T, H, W, 3] for multi-view) to the model.

Training spec (Kinetics-style):

    video_sample(32, stride=2, mode='random')|video_decode|
    video_scale_jitter(224, 0.9, 1.33)|video_random_crop(224)|video_flip_lr|
    value_range(-1, 1, key='video')|copy('video', 'image')|keep('image', 'label')

Multi-view test (4 clips x 3 crops = 12 views, logits averaged by
`multiview_logits` / `evaluate_multiview`):

    video_decode|video_resize_small(224)|video_multiview(32, 2, 4, 224, 3)|
    value_range(-1, 1, key='video')|copy('video', 'image')|keep('image', 'label')

Sources (`make_source`): `dict(frames_root=..., split=...)` for local frame
folders, `dict(video_demo="moving_digits", split=...)` for the procedural
demo task, and any TFDS dataset with a `video` feature through the usual
`dict(name=..., split=..., data_dir=...)` (tfds 4.9.10 knows `ucf101` and
`moving_mnist`; it has NO Kinetics or Something-Something builder, so those
are read from frame folders or from a TFDS dataset you build yourself).
"""
import os
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf

from losa_jax import input_pipeline
from losa_jax import pp as pp_lib

SAMPLE_MODES = ("random", "central", "clip", "uniform")
FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")
# Video builders of tensorflow-datasets 4.9.10 (`tfds.list_builders()`,
# checked offline). Kinetics-400/600/700 and Something-Something v2 are not
# among them: use frame folders, or build your own TFDS dataset with a
# `video` (tfds.features.Video) and a `label` feature.
TFDS_VIDEO_BUILDERS = ("ucf101", "moving_mnist", "starcraft_video",
                       "asimov_v2_videos")


# ----------------------------------------------------------------------------
# Frame sampling.
# ----------------------------------------------------------------------------


def _positive_int(x, what):
  if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
    raise ValueError(f"{what} must be a positive int, got {x!r}.")
  return x


def frame_indices(num_available, num_frames: int, stride: int = 1,
                  mode: str = "central", *, num_clips: int = 1,
                  clip_index: int = 0, seed=None) -> tf.Tensor:
  """Indices (int32 [num_frames]) of the frames a clip takes from a video.

  A clip spans (num_frames - 1) * stride + 1 frames. Its start is random
  (mode "random", uniform over every start that fits, drawn with `seed`), the
  centre ("central"), or the `clip_index`-th of `num_clips` evenly spaced
  starts from the first to the last that fits ("clip", for multi-view
  testing). "uniform" ignores `stride` and spreads num_frames over the whole
  video (frame floor((i + 0.5) * F / num_frames)). Videos shorter than the
  span loop (index mod F), as in Scenic/DMVR.

  Args:
    num_available: F, frames in the video (int or scalar tensor).
    num_frames, stride: clip length and frame step.
    mode: one of SAMPLE_MODES.
    num_clips, clip_index: for mode "clip".
    seed: int [2] stateless seed for mode "random".
  """
  _positive_int(num_frames, "video_sample: num_frames")
  _positive_int(stride, "video_sample: stride")
  if mode not in SAMPLE_MODES:
    raise ValueError(f"video_sample: mode={mode!r}: use one of "
                     f"{SAMPLE_MODES}.")
  _positive_int(num_clips, "video_sample: num_clips")
  if not 0 <= clip_index < num_clips:
    raise ValueError(f"video_sample: clip_index={clip_index} not in "
                     f"[0, {num_clips}).")
  f = tf.cast(num_available, tf.int32)
  steps = tf.range(num_frames, dtype=tf.int32)
  if mode == "uniform":
    idx = tf.cast(tf.math.floor(
        (tf.cast(steps, tf.float32) + 0.5) * tf.cast(f, tf.float32) /
        num_frames), tf.int32)
    return tf.minimum(idx, f - 1)
  span = (num_frames - 1) * stride + 1
  max_start = tf.maximum(f - span, 0)
  if mode == "random":
    if seed is None:
      raise ValueError("video_sample: mode='random' needs a seed.")
    start = tf.random.stateless_uniform([], seed, minval=0,
                                        maxval=max_start + 1, dtype=tf.int32)
  elif mode == "central" or num_clips == 1:
    start = max_start // 2
  else:
    start = tf.cast(tf.round(tf.cast(max_start, tf.float32) * clip_index /
                             (num_clips - 1)), tf.int32)
  return tf.math.floormod(start + steps * stride, tf.maximum(f, 1))


@pp_lib.register("video_sample")
def _video_sample(num_frames: int, stride: int = 1, mode: str = "random",
                  num_clips: int = 1, clip_index: int = 0,
                  key: str = "video"):
  """[F, ...] -> [num_frames, ...] (see `frame_indices`); works on decoded
  frames and on encoded ones (then only the sampled frames get decoded)."""
  frame_indices(8, num_frames, stride, "central" if mode == "random" else
                mode, num_clips=num_clips, clip_index=clip_index)  # checks

  def fn(ex):
    video = ex[key]
    seed = _next_seed(ex) if mode == "random" else None
    idx = frame_indices(tf.shape(video)[0], num_frames, stride, mode,
                        num_clips=num_clips, clip_index=clip_index, seed=seed)
    ex[key] = tf.gather(video, idx)
    return ex

  return fn


def _next_seed(ex):
  # The same seed discipline as pp's random ops (one shared helper).
  return pp_lib._next_seed(ex, "video")  # pylint: disable=protected-access


# ----------------------------------------------------------------------------
# Decoding and spatial ops. All frames of a clip get the same geometry.
# ----------------------------------------------------------------------------


def _fix_channels(video, channels):
  c = video.shape[-1]
  if channels == 3 and c == 1:
    return tf.tile(video, [1, 1, 1, 3])
  if channels == 3 and c is not None and c > 3:
    return video[..., :3]
  if channels == 1 and c not in (None, 1):
    return tf.cast(tf.round(tf.image.rgb_to_grayscale(
        tf.cast(video[..., :3], tf.float32))), video.dtype)
  return video


@pp_lib.register("video_decode")
def _video_decode(channels: int = 3, key: str = "video"):
  """Encoded frames tf.string [F] or numeric [F, H, W(, C)] -> [F, H, W, c].

  Gray frames are tiled to 3 channels (channels=3), alpha is dropped;
  already-decoded clips pass through, so the op is safe to repeat.
  """
  if channels not in (1, 3):
    raise ValueError(f"video_decode: channels must be 1 or 3, got "
                     f"{channels!r}.")

  def fn(ex):
    video = ex[key]
    if video.dtype == tf.string:
      video = tf.map_fn(
          lambda b: tf.io.decode_image(b, channels=channels,
                                       expand_animations=False),
          video, fn_output_signature=tf.TensorSpec([None, None, channels],
                                                   tf.uint8))
    else:
      if video.shape.rank == 3:
        video = video[..., None]
      if video.shape.rank != 4:
        raise ValueError(f"video_decode: {key!r} must be [F, H, W(, C)], "
                         f"got rank {video.shape.rank}.")
      video = _fix_channels(video, channels)
    ex[key] = video
    return ex

  return fn


def _resize(video, hw, method="bilinear", antialias=False):
  """[F, H, W, C] -> [F, h, w, C], keeping the dtype (ints are rounded)."""
  dtype = video.dtype
  out = tf.image.resize(video, hw, method=method, antialias=antialias)
  if dtype.is_integer:
    return tf.saturate_cast(tf.round(out), dtype)
  return tf.cast(out, dtype)


def _short_side(video, smaller_size):
  """Sizes (h, w) that make the short side `smaller_size` (float tensor ok)."""
  shape = tf.shape(video)
  h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
  ratio = tf.cast(smaller_size, tf.float32) / tf.minimum(h, w)
  return tf.stack([tf.cast(tf.round(h * ratio), tf.int32),
                   tf.cast(tf.round(w * ratio), tf.int32)])


@pp_lib.register("video_resize")
def _video_resize(size, key: str = "video", method: str = "bilinear",
                  antialias: bool = False):
  """Resizes every frame to `size` (int or (h, w))."""
  hw = pp_lib._hw(size, "video_resize")  # pylint: disable=protected-access

  def fn(ex):
    ex[key] = _resize(ex[key], hw, method, antialias)
    return ex

  return fn


@pp_lib.register("video_resize_small")
def _video_resize_small(smaller_size: int, key: str = "video",
                        method: str = "bilinear", antialias: bool = False):
  """Resizes every frame so the shorter side is `smaller_size`."""
  _positive_int(smaller_size, "video_resize_small: smaller_size")

  def fn(ex):
    ex[key] = _resize(ex[key], _short_side(ex[key], smaller_size), method,
                      antialias)
    return ex

  return fn


@pp_lib.register("video_scale_jitter")
def _video_scale_jitter(smaller_size: int, min_scale: float = 0.9,
                        max_scale: float = 1.33, key: str = "video"):
  """Short side to smaller_size * s, s ~ U[min_scale, max_scale] (seeded).

  With min_scale >= 1 a following `video_random_crop(smaller_size)` always
  fits; below 1 the crop needs the frame to be at least that big, so put a
  crop size <= smaller_size * min_scale after it.
  """
  _positive_int(smaller_size, "video_scale_jitter: smaller_size")
  if not 0 < min_scale <= max_scale:
    raise ValueError("video_scale_jitter: need 0 < min_scale <= max_scale, "
                     f"got {min_scale}, {max_scale}.")

  def fn(ex):
    s = tf.random.stateless_uniform([], _next_seed(ex), min_scale, max_scale)
    size = tf.round(smaller_size * s)
    ex[key] = _resize(ex[key], _short_side(ex[key], size))
    return ex

  return fn


def _crop(video, top, left, h, w):
  return video[:, top:top + h, left:left + w]


def _check_fits(video, h, w, op):
  shape = tf.shape(video)
  tf.debugging.assert_greater_equal(
      shape[1:3], tf.constant([h, w]),
      message=f"{op}: the frames are smaller than the crop {(h, w)}; resize "
      "first (e.g. video_resize_small).")


@pp_lib.register("video_central_crop")
def _video_central_crop(size, key: str = "video"):
  """The central (h, w) window of every frame."""
  h, w = pp_lib._hw(size, "video_central_crop")  # pylint: disable=protected-access

  def fn(ex):
    video = ex[key]
    _check_fits(video, h, w, "video_central_crop")
    shape = tf.shape(video)
    ex[key] = _crop(video, (shape[1] - h) // 2, (shape[2] - w) // 2, h, w)
    return ex

  return fn


@pp_lib.register("video_random_crop")
def _video_random_crop(size, key: str = "video"):
  """One random (h, w) window (seeded), the same for every frame."""
  h, w = pp_lib._hw(size, "video_random_crop")  # pylint: disable=protected-access

  def fn(ex):
    video = ex[key]
    _check_fits(video, h, w, "video_random_crop")
    shape = tf.shape(video)
    seed = _next_seed(ex)
    off = tf.random.stateless_uniform(
        [2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32)
    top = off[0] % (shape[1] - h + 1)
    left = off[1] % (shape[2] - w + 1)
    ex[key] = _crop(video, top, left, h, w)
    return ex

  return fn


def spatial_crop_offsets(height, width, size: int, index: int,
                         num_crops: int = 3):
  """(top, left) of crop `index` of `num_crops` square `size` windows.

  The windows are evenly spaced along the longer side (first flush with the
  start, last flush with the end: left/centre/right for landscape frames,
  top/centre/bottom for portrait) and centred on the shorter side, the usual
  3-crop test protocol (SlowFast, Scenic) after resizing the short side to
  `size`.
  """
  if not 0 <= index < num_crops:
    raise ValueError(f"video_spatial_crop: index={index} not in "
                     f"[0, {num_crops}).")
  height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
  frac = 0.5 if num_crops == 1 else index / (num_crops - 1)

  def place(extent):
    return tf.cast(tf.round(tf.cast(extent - size, tf.float32) * frac),
                   tf.int32)
  landscape = width >= height
  top = tf.where(landscape, (height - size) // 2, place(height))
  left = tf.where(landscape, place(width), (width - size) // 2)
  return top, left


@pp_lib.register("video_spatial_crop")
def _video_spatial_crop(size: int, index: int, num_crops: int = 3,
                        key: str = "video"):
  """The `index`-th of `num_crops` square windows (see spatial_crop_offsets)."""
  _positive_int(size, "video_spatial_crop: size")
  _positive_int(num_crops, "video_spatial_crop: num_crops")
  spatial_crop_offsets(size, size, size, index, num_crops)   # checks index

  def fn(ex):
    video = ex[key]
    _check_fits(video, size, size, "video_spatial_crop")
    shape = tf.shape(video)
    top, left = spatial_crop_offsets(shape[1], shape[2], size, index,
                                     num_crops)
    ex[key] = _crop(video, top, left, size, size)
    return ex

  return fn


@pp_lib.register("video_flip_lr")
def _video_flip_lr(key: str = "video"):
  """Flips every frame left-right, or none, with probability 1/2 (seeded)."""

  def fn(ex):
    flip = tf.random.stateless_uniform([], _next_seed(ex)) < 0.5
    video = ex[key]
    ex[key] = tf.cond(flip, lambda: tf.reverse(video, axis=[2]),
                      lambda: video)
    return ex

  return fn


@pp_lib.register("video_multiview")
def _video_multiview(num_frames: int, stride: int, num_clips: int,
                     crop_size: int, num_crops: int = 3, key: str = "video"):
  """[F, H, W, C] -> [num_clips * num_crops, num_frames, s, s, C] test views.

  View v = clip (v // num_crops) x crop (v % num_crops): evenly spaced
  temporal clips (`frame_indices` mode "clip") times `video_spatial_crop`
  windows. Resize the short side to crop_size first.
  """
  frame_indices(8, num_frames, stride, "clip", num_clips=num_clips)  # checks
  _positive_int(crop_size, "video_multiview: crop_size")
  _positive_int(num_crops, "video_multiview: num_crops")

  def fn(ex):
    video = ex[key]
    _check_fits(video, crop_size, crop_size, "video_multiview")
    shape = tf.shape(video)
    views = []
    for c in range(num_clips):
      clip = tf.gather(video, frame_indices(
          shape[0], num_frames, stride, "clip", num_clips=num_clips,
          clip_index=c))
      for s in range(num_crops):
        top, left = spatial_crop_offsets(shape[1], shape[2], crop_size, s,
                                         num_crops)
        views.append(_crop(clip, top, left, crop_size, crop_size))
    ex[key] = tf.stack(views)
    return ex

  return fn


# ----------------------------------------------------------------------------
# Multi-view evaluation.
# ----------------------------------------------------------------------------


def logits_fn(model) -> Callable:
  """fn(params, clips [N, T, H, W, 3]) -> logits [N, C] of an adapted model."""
  return lambda params, x: model.apply({"params": params}, x, train=False)[0]


def multiview_logits(predict_fn: Callable, params: Any, views,
                     average: str = "logits"):
  """Scores of V views per example, averaged: [B, V, T, H, W, C] -> [B, K].

  Args:
    predict_fn: fn(params, clips [N, T, H, W, C]) -> logits [N, K].
    params: passed through to predict_fn.
    views: [B, V, T, H, W, C] (e.g. from the `video_multiview` pp op).
    average: "logits" (mean logits, Scenic's test protocol) or "probs" (mean
      softmax probabilities, returned as their log so argmax still works).
  """
  if average not in ("logits", "probs"):
    raise ValueError(f"multiview average={average!r}: use 'logits' or "
                     "'probs'.")
  if views.ndim != 6:
    raise ValueError(f"multiview_logits expects views [B, V, T, H, W, C], "
                     f"got shape {views.shape}.")
  b, v = views.shape[:2]
  logits = predict_fn(params, views.reshape(b * v, *views.shape[2:]))
  logits = logits.reshape(b, v, -1).astype(jnp.float32)
  if average == "logits":
    return logits.mean(axis=1)
  return jnp.log(jax.nn.softmax(logits, axis=-1).mean(axis=1))


def evaluate_multiview(predict_fn: Callable, params: Any,
                       batches: Iterable[Dict[str, Any]], *,
                       average: str = "logits",
                       jit: bool = True) -> Dict[str, float]:
  """Top-1 accuracy of view-averaged predictions over padded eval batches.

  Args:
    predict_fn, params, average: as in `multiview_logits`.
    batches: dicts with "image" [B, V, T, H, W, C], "label" [B] and optional
      "_mask" [B] (e.g. `input_pipeline.evaluation` with a `video_multiview`
      pp).
    jit: compile the view-averaging forward once.

  Returns:
    {"accuracy", "count"}.
  """
  fn = lambda p, x: multiview_logits(predict_fn, p, x, average)
  fn = jax.jit(fn) if jit else fn
  correct = count = 0.0
  for batch in batches:
    pred = np.asarray(jnp.argmax(fn(params, jnp.asarray(batch["image"])), -1))
    mask = np.asarray(batch.get("_mask", np.ones(len(pred), np.float32)))
    correct += float(np.sum((pred == np.asarray(batch["label"])) * mask))
    count += float(np.sum(mask))
  return {"accuracy": correct / max(count, 1.0), "count": count}


def multiview_eval(config, workdir: str, *, pp: str,
                   data: Optional[Dict[str, Any]] = None,
                   batch_size: Optional[int] = None,
                   average: str = "logits") -> Dict[str, float]:
  """Multi-view accuracy of a finished training workdir.

  Args:
    config: the config the workdir was trained with.
    workdir: the training workdir (backbone from config.model_init + the
      side/head checkpoint, via `losa_jax.predict.Predictor`).
    pp: a multi-view pp spec (`video_multiview` op), e.g. the config
      module's `multiview_pp(arg)`.
    data: source dict; default the config's first eval's data.
    batch_size: examples per batch (each is V clips); default the eval
      batch size divided by V, at least 1.
    average: "logits" or "probs".

  Returns:
    {"accuracy", "count", "views"}.
  """
  from losa_jax import predict  # pylint: disable=g-import-not-at-top
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  predictor = predict.Predictor(config, workdir)
  if data is None:
    data = dict(next(iter(config.evals.values()))["data"])
  src = train.make_source(data)
  probe = pp_lib.get_preprocess_fn(pp)
  views = None
  for ex in src.as_dataset().take(1):
    ex = dict(ex)
    ex[pp_lib.SEED_KEY] = tf.constant([0, 0], tf.int64)
    views = int(probe(ex)["image"].shape[0])
  if batch_size is None:
    per = next(iter(config.evals.values())).get("batch_size",
                                                config.input.batch_size)
    batch_size = max(1, per // max(views or 1, 1))
  batches = input_pipeline.evaluation(src, batch_size=batch_size, pp=pp)
  res = evaluate_multiview(logits_fn(predictor.built.model), predictor.params,
                           batches, average=average)
  return {**res, "views": views}


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------


class FrameFolderSource(input_pipeline.Source):
  """Videos stored as frame images: `root/<split>/<class>/<video_id>/*.png`.

  Raw examples: {"video": tf.string [F] encoded frames in file-name order,
  "label": int64 index of the class in `class_names`, "video_id":
  "<class>/<video_id>"}. Put `video_sample` before `video_decode` in the pp
  so only the sampled frames are decoded. Random access: only the frame
  paths are held in memory.

  Args:
    root: dataset root.
    split: split expression over the sub-folders of root (TFDS syntax, e.g.
      "train[:90%]"); videos are ordered by (class, video_id).
    class_names: the label order; default the sorted union of the class
      folders of every split, so labels agree across splits.
    extensions: frame file suffixes (case-insensitive).
  """

  def __init__(self, root: str, split: str, *,
               class_names: Optional[Sequence[str]] = None,
               extensions: Sequence[str] = FRAME_EXTENSIONS):
    self.name = f"frames:{root}:{split}"
    self.root = root
    if not os.path.isdir(root):
      raise FileNotFoundError(
          f"Frame folder root {root!r} does not exist; expected "
          "root/<split>/<class>/<video_id>/<frame>.png (prepare the frames "
          "locally, e.g. with ffmpeg; nothing is downloaded).")
    ext = tuple(e.lower() for e in extensions)

    def videos(cdir, rel):
      out = []
      for vid in sorted(os.listdir(cdir)):
        vdir = os.path.join(cdir, vid)
        if not os.path.isdir(vdir):
          continue
        files = sorted(f for f in os.listdir(vdir) if f.lower().endswith(ext))
        if not files:
          raise ValueError(f"Video folder {vdir!r} has no {ext} frames.")
        out.append(([os.path.join(rel, vid, f) for f in files],
                    f"{os.path.basename(rel)}/{vid}"))
      return out

    self.class_names, items = input_pipeline.scan_class_folders(
        root, split, class_names, videos)
    frames = [np.array(f, dtype=object) for (f, _), _ in items]
    labels = [l for _, l in items]
    ids = [i for (_, i), _ in items]
    if not frames:
      raise ValueError(f"No videos found for split {split!r} under {root!r} "
                       "(expected root/<split>/<class>/<video_id>/*.png).")
    self._frames, self._labels, self._ids = frames, labels, ids
    self._table = None

  def num_examples(self) -> int:
    return len(self._labels)

  def _read(self, ex):
    paths = tf.strings.join([self.root, os.sep, ex["frames"]])
    video = tf.map_fn(tf.io.read_file, paths)
    return {"video": video, "label": ex["label"], "video_id": ex["video_id"]}

  def table(self):
    if self._table is None:
      self._table = input_pipeline._Table(  # pylint: disable=protected-access
          {("frames",): self._frames,
           ("label",): np.array(self._labels, np.int64),
           ("video_id",): np.array(self._ids, dtype=object)},
          len(self._labels), finalize=self._read)
    return self._table

  def as_dataset(self) -> tf.data.Dataset:
    return tf.data.Dataset.range(self.num_examples()).map(self.table().lookup)


def make_source(**data) -> input_pipeline.Source:
  """Video source forms of the trainer's `config.input.data`.

  dict(frames_root=..., split=..., class_names=None) -> FrameFolderSource;
  dict(video_demo="moving_digits", split="train"|"test", **task_kwargs) ->
  the procedural demo task as an ArraySource; anything else goes to
  `input_pipeline.make_source` (e.g. TFDS `name=...`).
  """
  data = dict(data)
  if "frames_root" in data:
    return FrameFolderSource(data.pop("frames_root"), data.pop("split"),
                             **data)
  if "video_demo" in data:
    from losa_jax.video import moving_digits  # pylint: disable=g-import-not-at-top
    name = data.pop("video_demo")
    split = data.pop("split", "train")
    task = moving_digits.get_task(name, **data)
    return input_pipeline.ArraySource(task, split, name=f"video_demo:{name}")
  return input_pipeline.make_source(**data)
