# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Video pp ops on clips (family "video").

The ops act on `example["video"]`: uint8 [F, H, W, C] decoded frames (what a
TFDS `Video` feature decodes to) or tf.string [F] encoded frames (what
`datasets.frames` yields; `video_decode` decodes them). All frames of a clip
get the same geometry; random ops draw from `_seed` like the image ops. End a
spec with `value_range(-1, 1, key="video")|copy("video", "image")|keep(...)`:
the trainer feeds `example["image"]` [T, H, W, 3] (or [V, T, H, W, 3] for
`video_multiview`) to the model.

`configs/video_kinetics400.py` builds full specs: a random clip with scale
jitter, crop and flip for training, 4 clips x 3 crops (`video_multiview`,
logits averaged by `losa_jax.evaluators.video`) for testing.
"""
import functools

import tensorflow as tf

from losa_jax import pp as pp_lib
from losa_jax.pp import image as image_ops

SAMPLE_MODES = ("random", "central", "clip", "uniform")


# --- Frame sampling -----------------------------------------------------------


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

  `num_available` (F) may be an int or a scalar tensor; `seed` is an int [2]
  stateless seed.
  """
  pp_lib.positive_int(num_frames, "video_sample: num_frames")
  pp_lib.positive_int(stride, "video_sample: stride")
  if mode not in SAMPLE_MODES:
    raise ValueError(f"video_sample: mode={mode!r}: use one of "
                     f"{SAMPLE_MODES}.")
  pp_lib.positive_int(num_clips, "video_sample: num_clips")
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


@pp_lib.register("video_sample",
                 random=lambda *a, mode="random", **k: mode == "random")
def _video_sample(num_frames: int, stride: int = 1, mode: str = "random",
                  num_clips: int = 1, clip_index: int = 0,
                  key: str = "video"):
  """[F, ...] -> [num_frames, ...] (see `frame_indices`); works on decoded
  frames and on encoded ones (then only the sampled frames get decoded)."""
  frame_indices(8, num_frames, stride, "central" if mode == "random" else
                mode, num_clips=num_clips, clip_index=clip_index)  # checks

  def fn(ex):
    video = ex[key]
    seed = pp_lib.next_seed(ex, "video_sample") if mode == "random" else None
    idx = frame_indices(tf.shape(video)[0], num_frames, stride, mode,
                        num_clips=num_clips, clip_index=clip_index, seed=seed)
    ex[key] = tf.gather(video, idx)
    return ex

  return fn


# --- Decoding and spatial ops -------------------------------------------------


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
      video = pp_lib.fix_channels(video, channels)
    ex[key] = video
    return ex

  return fn


# These image ops work on [..., H, W, C]: every frame gets the same geometry.
pp_lib.register("video_resize")(
    functools.partial(image_ops.resize_op, key="video"))
pp_lib.register("video_resize_small")(
    functools.partial(image_ops.resize_small_op, key="video"))
pp_lib.register("video_central_crop")(
    functools.partial(image_ops.central_crop_op, key="video"))


@pp_lib.register("video_scale_jitter", random=True)
def _video_scale_jitter(smaller_size: int, min_scale: float = 0.9,
                        max_scale: float = 1.33, key: str = "video"):
  """Short side to smaller_size * s, s ~ U[min_scale, max_scale] (seeded).

  With min_scale >= 1 a following `video_random_crop(smaller_size)` always
  fits; below 1 the crop needs the frame to be at least that big, so put a
  crop size <= smaller_size * min_scale after it.
  """
  pp_lib.positive_int(smaller_size, "video_scale_jitter: smaller_size")
  if not 0 < min_scale <= max_scale:
    raise ValueError("video_scale_jitter: need 0 < min_scale <= max_scale, "
                     f"got {min_scale}, {max_scale}.")

  def fn(ex):
    seed = pp_lib.next_seed(ex, "video_scale_jitter")
    s = tf.random.stateless_uniform([], seed, min_scale, max_scale)
    size = tf.round(smaller_size * s)
    ex[key] = pp_lib.resize(ex[key], pp_lib.short_side_hw(ex[key], size))
    return ex

  return fn


def _crop(video, top, left, h, w):
  return video[:, top:top + h, left:left + w]


def _window_op(op: str, h: int, w: int, key: str, offsets):
  """The fn of crop op `op`: ex[key] [T, H, W, C] -> [T, h, w, C], the same
  window of every frame, at (top, left) = offsets(ex, H, W) (scalar tensors).
  Frames smaller than (h, w) fail with the op's name."""

  def fn(ex):
    video = ex[key]
    image_ops.check_fits(video, h, w, op)
    shape = tf.shape(video)
    top, left = offsets(ex, shape[1], shape[2])
    ex[key] = _crop(video, top, left, h, w)
    return ex

  return fn


@pp_lib.register("video_random_crop", random=True)
def _video_random_crop(size, key: str = "video"):
  """One random (h, w) window (seeded), the same for every frame."""
  h, w = pp_lib.hw(size, "video_random_crop")

  def offsets(ex, height, width):
    off = tf.random.stateless_uniform(
        [2], pp_lib.next_seed(ex, "video_random_crop"), minval=0,
        maxval=tf.int32.max, dtype=tf.int32)
    return off[0] % (height - h + 1), off[1] % (width - w + 1)

  return _window_op("video_random_crop", h, w, key, offsets)


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
  pp_lib.positive_int(size, "video_spatial_crop: size")
  pp_lib.positive_int(num_crops, "video_spatial_crop: num_crops")
  spatial_crop_offsets(size, size, size, index, num_crops)   # checks index
  return _window_op(
      "video_spatial_crop", size, size, key,
      lambda ex, height, width: spatial_crop_offsets(height, width, size,
                                                     index, num_crops))


@pp_lib.register("video_flip_lr", random=True)
def _video_flip_lr(key: str = "video"):
  """Flips every frame left-right, or none, with probability 1/2 (seeded)."""

  def fn(ex):
    flip = tf.random.stateless_uniform(
        [], pp_lib.next_seed(ex, "video_flip_lr")) < 0.5
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
  pp_lib.positive_int(crop_size, "video_multiview: crop_size")
  pp_lib.positive_int(num_crops, "video_multiview: num_crops")

  def fn(ex):
    video = ex[key]
    image_ops.check_fits(video, crop_size, crop_size, "video_multiview")
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
