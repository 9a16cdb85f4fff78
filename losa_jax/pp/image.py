# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Image, label and dict pp ops (family "image")."""
import tensorflow as tf

from losa_jax.pp import fix_channels as _fix_channels
from losa_jax.pp import hw as _hw
from losa_jax.pp import next_seed as _next_seed
from losa_jax.pp import positive_int as _positive_int
from losa_jax.pp import register
from losa_jax.pp import resize as _resize
from losa_jax.pp import short_side_hw as _short_side_hw

# --- Image ops ----------------------------------------------------------------


@register("decode")
def _decode(channels: int = 3, key: str = "image"):
  """Encoded jpeg/png/gif/bmp bytes, or a numeric image -> uint8 [H, W, c].

  Already-decoded images pass through (rank 2 gets a channel axis) and only
  get their channels fixed, so `decode` is safe to repeat.

  Args:
    channels: 3 (gray is tiled, alpha dropped), 1 (RGB -> luma), or 0/None
      to keep what the data has.
    key: the image key.
  """
  if channels not in (None, 0, 1, 3):
    raise ValueError(f"decode: channels must be 0, 1 or 3, got {channels!r}.")
  channels = channels or 0

  def fn(ex):
    image = ex[key]
    if image.dtype == tf.string:
      image = tf.io.decode_image(image, channels=channels,
                                 expand_animations=False)
    else:
      if image.shape.rank == 2:
        image = image[..., None]
      image = _fix_channels(image, channels)
    ex[key] = image
    return ex

  return fn


@register("resize")
def resize_op(size, key: str = "image", method: str = "bilinear",
              antialias: bool = False):
  """Resizes [H, W, C] (or every frame of [F, H, W, C]) to `size` (int or
  (h, w)); keeps the dtype."""
  hw = _hw(size, "resize")

  def fn(ex):
    ex[key] = _resize(ex[key], hw, method, antialias)
    return ex

  return fn


@register("resize_small")
def resize_small_op(smaller_size: int, key: str = "image",
                    method: str = "bilinear", antialias: bool = False):
  """Resizes so the shorter side is `smaller_size`, keeping aspect ratio."""
  _positive_int(smaller_size, "resize_small: smaller_size")

  def fn(ex):
    image = ex[key]
    ex[key] = _resize(image, _short_side_hw(image, smaller_size), method,
                      antialias)
    return ex

  return fn


def check_fits(image: tf.Tensor, h: int, w: int, op: str):
  """Fails, naming `op`, if [..., H, W, C] is smaller than (h, w)."""
  tf.debugging.assert_greater_equal(
      tf.shape(image)[-3:-1], tf.constant([h, w]),
      message=f"{op}: the image is smaller than the crop {(h, w)}; resize "
      "first (e.g. resize_small or video_resize_small).")


@register("central_crop")
def central_crop_op(size, key: str = "image"):
  """Crops the central (h, w) window of [H, W, C] (of every frame of
  [F, H, W, C]); the image must be at least that big."""
  h, w = _hw(size, "central_crop")

  def fn(ex):
    image = ex[key]
    check_fits(image, h, w, "central_crop")
    shape = tf.shape(image)
    top, left = (shape[-3] - h) // 2, (shape[-2] - w) // 2
    ex[key] = tf.image.crop_to_bounding_box(image, top, left, h, w)
    return ex

  return fn


@register("random_crop", random=True)
def _random_crop(size, key: str = "image"):
  """Crops a random (h, w) window, seeded from `_seed`."""
  h, w = _hw(size, "random_crop")

  def fn(ex):
    image = ex[key]
    seed = _next_seed(ex, "random_crop")
    crop = tf.stack([h, w, tf.shape(image)[-1]])
    ex[key] = tf.image.stateless_random_crop(image, crop, seed=seed)
    return ex

  return fn


@register("inception_crop", random=True)
def _inception_crop(size=None, area_min: float = 5, area_max: float = 100,
                    key: str = "image", method: str = "bilinear",
                    antialias: bool = False):
  """Inception-style crop, as big_vision's: a random window covering
  [area_min, area_max] percent of the image with aspect ratio in [3/4, 4/3],
  resized to `size` (int or (h, w); None keeps the crop's size), seeded
  from `_seed`."""
  hw = None if size is None else _hw(size, "inception_crop")

  def fn(ex):
    image = ex[key]
    begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32),
        seed=_next_seed(ex, "inception_crop"), min_object_covered=0.0,
        area_range=(area_min / 100, area_max / 100),
        use_image_if_no_bounding_boxes=True)
    image = tf.slice(image, begin, crop)
    image = tf.ensure_shape(image, [None, None, ex[key].shape[-1]])
    ex[key] = image if hw is None else _resize(image, hw, method, antialias)
    return ex

  return fn


@register("flip_lr", random=True)
def _flip_lr(key: str = "image"):
  """Flips left-right with probability 1/2, seeded from `_seed`."""

  def fn(ex):
    seed = _next_seed(ex, "flip_lr")
    ex[key] = tf.image.stateless_random_flip_left_right(ex[key], seed=seed)
    return ex

  return fn


@register("value_range")
def _value_range(vmin: float = -1.0, vmax: float = 1.0, in_min: float = 0.0,
                 in_max: float = 255.0, clip_values: bool = False,
                 key: str = "image"):
  """Maps [in_min, in_max] linearly onto [vmin, vmax]; output float32."""
  if in_max == in_min:
    raise ValueError("value_range: in_min and in_max must differ.")

  def fn(ex):
    image = tf.cast(ex[key], tf.float32)
    image = (image - in_min) / (in_max - in_min) * (vmax - vmin) + vmin
    if clip_values:
      image = tf.clip_by_value(image, min(vmin, vmax), max(vmin, vmax))
    ex[key] = image
    return ex

  return fn


# --- Label and dict ops -------------------------------------------------------


@register("onehot")
def _onehot(depth: int, key: str = "label", key_result: str = "labels",
            on: float = 1.0, off: float = 0.0):
  """Int label [] (or [k] multi-label) -> float32 [depth] at `key_result`."""
  if not isinstance(depth, int) or depth <= 0:
    raise ValueError(f"onehot: depth must be a positive int, got {depth!r}.")

  def fn(ex):
    label = tf.cast(ex[key], tf.int32)
    oh = tf.one_hot(label, depth, on_value=on, off_value=off,
                    dtype=tf.float32)
    if label.shape.rank == 1:  # Multi-label: any of the k labels is on.
      oh = tf.reduce_max(oh, axis=0)
    ex[key_result or key] = oh
    return ex

  return fn


@register("keep")
def _keep(*keys: str):
  """Keeps only `keys` (plus the internal `_`-prefixed keys)."""
  if not keys or not all(isinstance(k, str) for k in keys):
    raise ValueError(f"keep: give one or more key strings, got {keys!r}.")

  def fn(ex):
    missing = [k for k in keys if k not in ex]
    if missing:
      raise KeyError(f"{missing} (not present)")
    return {k: v for k, v in ex.items() if k in keys or k.startswith("_")}

  return fn


@register("copy")
def _copy(src: str, dst: str):
  """example[dst] = example[src]."""

  def fn(ex):
    ex[dst] = ex[src]
    return ex

  return fn
