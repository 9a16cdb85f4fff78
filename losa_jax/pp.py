# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Preprocessing ops on TF example dicts, composed from big_vision-style specs.

A spec is a string of `|`-separated ops or a list of such strings, e.g.

    "decode|resize(224)|value_range(-1, 1)|onehot(10)|keep('image', 'label')"

Each op is `name` or `name(args)`; the args are Python literals parsed with
`ast.literal_eval` (never `eval`). Ops act on ONE example (a dict of
unbatched tensors) and return a new dict; they never mutate their input.

Keys that start with `_` are pipeline-internal and survive `keep`:
`_seed` (int64 [2]) is the per-example seed the input pipeline adds. Random
ops split it with `tf.random.experimental.stateless_split`, use one half and
store the other back, so several random ops get independent streams and the
whole augmentation is a pure function of the seed (a restarted run
reproduces it exactly).

Registered ops (`registered_ops()`): decode, resize, resize_small,
central_crop, random_crop, flip_lr, value_range, onehot, keep, copy, and the
VTAB label ops clevr_count_all, clevr_closest_distance,
kitti_closest_vehicle_distance, dsprites_label.
"""
import ast
from typing import Callable, Dict, List, Sequence, Tuple, Union

import tensorflow as tf

Example = Dict[str, tf.Tensor]
OpFn = Callable[[Example], Example]
SEED_KEY = "_seed"

_REGISTRY: Dict[str, Callable[..., OpFn]] = {}


def register(name: str):
  """Decorator: registers `factory(*args, **kwargs) -> fn(example) -> example`.

  The factory receives the literal args of the spec (`resize(224)` calls
  `factory(224)`) and returns the op; it should raise ValueError/TypeError
  on bad args (the parser adds the op name to the message).
  """
  if not name.isidentifier():
    raise ValueError(f"pp op name {name!r} must be a Python identifier.")

  def deco(factory):
    if name in _REGISTRY:
      raise ValueError(f"pp op {name!r} is already registered; pick another "
                       "name.")
    _REGISTRY[name] = factory
    return factory

  return deco


def registered_ops() -> List[str]:
  return sorted(_REGISTRY)


# ----------------------------------------------------------------------------
# Parsing.
# ----------------------------------------------------------------------------


def _split_top_level(spec: str) -> List[str]:
  """Splits on `|` outside quotes and brackets (args may contain `|`)."""
  parts, depth, quote, cur = [], 0, None, []
  i = 0
  while i < len(spec):
    c = spec[i]
    if quote:
      if c == "\\" and i + 1 < len(spec):
        cur.append(spec[i:i + 2])
        i += 2
        continue
      if c == quote:
        quote = None
    elif c in "'\"":
      quote = c
    elif c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
    elif c == "|" and depth == 0:
      parts.append("".join(cur))
      cur = []
      i += 1
      continue
    cur.append(c)
    i += 1
  parts.append("".join(cur))
  return [p.strip() for p in parts if p.strip()]


def parse_op(op: str) -> Tuple[str, tuple, dict]:
  """`"resize(224, method='nearest')"` -> `("resize", (224,), {"method": ...})`.

  Only literal args are accepted (numbers, strings, tuples, lists, dicts,
  booleans, None); anything else raises ValueError.
  """
  try:
    node = ast.parse(op.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse pp op {op!r}: {e.msg}. Write `name` or "
                     "`name(literal, key=literal)`.") from None
  if isinstance(node, ast.Name):
    return node.id, (), {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(f"Cannot parse pp op {op!r}: write `name` or "
                     "`name(literal, key=literal)`.")
  name = node.func.id
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {}
    for kw in node.keywords:
      if kw.arg is None:
        raise ValueError("**kwargs are not supported")
      kwargs[kw.arg] = ast.literal_eval(kw.value)
  except ValueError as e:
    raise ValueError(f"pp op {name!r}: arguments of {op!r} must be Python "
                     f"literals ({e}).") from None
  return name, args, kwargs


def _build_op(op: str) -> OpFn:
  name, args, kwargs = parse_op(op)
  if name not in _REGISTRY:
    raise ValueError(f"Unknown pp op {name!r} (in {op!r}). Registered ops: "
                     f"{', '.join(registered_ops())}.")
  try:
    fn = _REGISTRY[name](*args, **kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"pp op {name!r}: bad arguments in {op!r}: {e}") from None

  def wrapped(example):
    try:
      return fn(example)
    except KeyError as e:
      raise KeyError(f"pp op {name}: missing key {e.args[0]} (op {op}); "
                     f"the example has keys {sorted(example)}.") from None

  wrapped.__name__ = f"pp_{name}"
  return wrapped


def get_preprocess_fn(spec: Union[None, str, Sequence[str]]) -> OpFn:
  """Returns `fn(example) -> example` applying the ops of `spec` in order.

  Args:
    spec: `"op1|op2(...)|..."`, a list of such strings (joined in order, so a
      task's label ops and a model's pp can be given separately), or
      None / "" for the identity.

  Raises:
    ValueError: at build time for unknown ops or bad args, naming the op.
  """
  if spec is None:
    spec = []
  if isinstance(spec, str):
    spec = [spec]
  ops = []
  for s in spec:
    if not isinstance(s, str):
      raise ValueError(f"pp spec entries must be strings, got {s!r}.")
    ops.extend(_split_top_level(s))
  fns = [_build_op(op) for op in ops]

  def preprocess(example: Example) -> Example:
    example = dict(example)
    for fn in fns:
      example = fn(example)
    return example

  return preprocess


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def _hw(size, op: str) -> Tuple[int, int]:
  """`224` or `(h, w)` -> `(h, w)` positive ints."""
  if isinstance(size, int) and not isinstance(size, bool):
    size = (size, size)
  if (not isinstance(size, (tuple, list)) or len(size) != 2 or
      not all(isinstance(s, int) and s > 0 for s in size)):
    raise ValueError(f"{op}: size must be a positive int or (h, w), got "
                     f"{size!r}.")
  return int(size[0]), int(size[1])


def _next_seed(example: Example, op: str) -> tf.Tensor:
  """Splits `example[_seed]`: returns a seed for this op, stores the rest."""
  if SEED_KEY not in example:
    raise ValueError(
        f"pp op {op!r} is random and needs a per-example {SEED_KEY!r} "
        "(int64 [2]). input_pipeline.training/evaluation add it; when calling "
        "the pp fn yourself set example['_seed'] = tf.constant([a, b], "
        "tf.int64). It must also come before any op that drops it.")
  seeds = tf.random.experimental.stateless_split(
      tf.cast(example[SEED_KEY], tf.int64), num=2)
  example[SEED_KEY] = seeds[0]
  return seeds[1]


def _resize(image: tf.Tensor, hw, method: str, antialias: bool) -> tf.Tensor:
  """Resizes [H, W, C], keeping the input dtype (ints are rounded)."""
  dtype = image.dtype
  out = tf.image.resize(image, hw, method=method, antialias=antialias)
  if dtype.is_integer:
    return tf.saturate_cast(tf.round(out), dtype)
  return tf.cast(out, dtype)


# ----------------------------------------------------------------------------
# Image ops.
# ----------------------------------------------------------------------------


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

  def fix_channels(image):
    c = image.shape[-1]
    if channels == 3:
      if c == 3:
        return image
      if c == 1:
        return tf.tile(image, [1, 1, 3])
      if c is not None:
        return image[..., :3]
      image = tf.cond(tf.shape(image)[-1] == 1,
                      lambda: tf.tile(image, [1, 1, 3]),
                      lambda: image[..., :3])
      return tf.ensure_shape(image, [None, None, 3])
    if channels == 1 and c != 1:
      return tf.cast(tf.round(tf.image.rgb_to_grayscale(
          tf.cast(image[..., :3], tf.float32))), image.dtype)
    return image

  def fn(ex):
    image = ex[key]
    if image.dtype == tf.string:
      image = tf.io.decode_image(image, channels=channels,
                                 expand_animations=False)
    else:
      if image.shape.rank == 2:
        image = image[..., None]
      image = fix_channels(image)
    ex[key] = image
    return ex

  return fn


@register("resize")
def _resize_op(size, key: str = "image", method: str = "bilinear",
               antialias: bool = False):
  """Resizes [H, W, C] to `size` (int or (h, w)); keeps the dtype."""
  hw = _hw(size, "resize")

  def fn(ex):
    ex[key] = _resize(ex[key], hw, method, antialias)
    return ex

  return fn


@register("resize_small")
def _resize_small(smaller_size: int, key: str = "image",
                  method: str = "bilinear", antialias: bool = False):
  """Resizes so the shorter side is `smaller_size`, keeping aspect ratio."""
  _hw(smaller_size, "resize_small")

  def fn(ex):
    image = ex[key]
    shape = tf.shape(image)
    h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    ratio = smaller_size / tf.minimum(h, w)
    new_h = tf.cast(tf.round(h * ratio), tf.int32)
    new_w = tf.cast(tf.round(w * ratio), tf.int32)
    ex[key] = _resize(image, tf.stack([new_h, new_w]), method, antialias)
    return ex

  return fn


@register("central_crop")
def _central_crop(size, key: str = "image"):
  """Crops the central (h, w) window; the image must be at least that big."""
  h, w = _hw(size, "central_crop")

  def fn(ex):
    image = ex[key]
    shape = tf.shape(image)
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    ex[key] = tf.image.crop_to_bounding_box(image, top, left, h, w)
    return ex

  return fn


@register("random_crop")
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


@register("flip_lr")
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


# ----------------------------------------------------------------------------
# Label and dict ops.
# ----------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------
# VTAB structured-task labels (task_adaptation's definitions). They replace
# "label" with an int64 scalar derived from the annotations.
# ----------------------------------------------------------------------------


def _bin_index(value: tf.Tensor, thresholds: Sequence[float]) -> tf.Tensor:
  """Index of the last threshold strictly below `value` (int64)."""
  thrs = tf.constant(thresholds, tf.float32)
  return tf.cast(tf.reduce_max(tf.where(thrs - value < 0)), tf.int64)


@register("clevr_count_all")
def _clevr_count_all():
  """CLEVR: number of objects (3..10) -> label 0..7."""

  def fn(ex):
    ex["label"] = tf.cast(tf.size(ex["objects"]["size"]) - 3, tf.int64)
    return ex

  return fn


@register("clevr_closest_distance")
def _clevr_closest_distance():
  """CLEVR: depth of the closest object, binned into 6 classes."""

  def fn(ex):
    dist = tf.reduce_min(ex["objects"]["pixel_coords"][:, 2])
    ex["label"] = _bin_index(dist, [0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0])
    return ex

  return fn


@register("kitti_closest_vehicle_distance")
def _kitti_closest_vehicle_distance():
  """KITTI: depth of the closest car/van/truck in 3 bins, or 3 for none."""

  def fn(ex):
    objects = ex["objects"]
    # Types 0, 1, 2 are Car, Van, Truck in tfds' kitti ClassLabel.
    is_vehicle = objects["type"] < 3
    depth = tf.boolean_mask(objects["location"][:, 2], is_vehicle)
    # No vehicle: a far sentinel lands in the last bin ("no vehicle").
    dist = tf.reduce_min(tf.concat([depth, [1000.0]], axis=0))
    ex["label"] = _bin_index(dist, [-100.0, 8.0, 20.0, 999.0])
    return ex

  return fn


@register("dsprites_label")
def _dsprites_label(attribute: str, num_classes: int,
                    num_original_classes: int):
  """dSprites: bins `attribute` to `num_classes`; pixels {0,1} -> {0,255}.

  Needs a decoded image (put `decode(channels=3)` first); task_adaptation
  also rescales dSprites' binary pixels so they look like other images.
  """
  if num_classes <= 0 or num_original_classes < num_classes:
    raise ValueError("dsprites_label: need 0 < num_classes <= "
                     "num_original_classes.")

  def fn(ex):
    image = ex["image"]
    if image.dtype == tf.string:
      raise ValueError("dsprites_label needs a decoded image: put "
                       "`decode(channels=3)` before it.")
    ex["image"] = tf.cast(
        tf.clip_by_value(tf.cast(image, tf.int32) * 255, 0, 255), tf.uint8)
    label = tf.cast(ex[attribute], tf.int64)
    ex["label"] = label * num_classes // num_original_classes
    return ex

  return fn
