# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Preprocessing ops on TF example dicts, composed from big_vision-style specs.

A spec is a string of `|`-separated ops or a list of such strings, e.g.

    "decode|resize(224)|value_range(-1, 1)|onehot(10)|keep('image', 'label')"

Each op is `name` or `name(args)`; the args are Python literals parsed with
`ast.literal_eval` (never `eval`). Ops act on ONE example (a dict of
unbatched tensors) and return a new dict; they never mutate their input.

Ops live in one module per family (`FAMILIES`, imported on demand), as
big_vision's `pp_modules`: docs/architecture.md, "A pp op".

Random ops (`register(name, random=True)`) draw from `_seed`, the int64 [2]
per-example seed the input pipeline adds (`next_seed`), so the augmentation
is a pure function of the seed and a restarted run reproduces it.
`random_ops(spec)` lists a spec's random ops (the feature cache refuses
them). Keys that start with `_` are pipeline-internal and survive `keep`.
"""
import ast
import importlib
from typing import Callable, Dict, List, Sequence, Tuple, Union

import tensorflow as tf

Example = Dict[str, tf.Tensor]
OpFn = Callable[[Example], Example]
Spec = Union[None, str, Sequence[str]]
SEED_KEY = "_seed"
# Built-in op families (module names under losa_jax.pp).
FAMILIES = ("image", "video", "vtab")

# name -> (factory, random): random is a bool, or fn(*args, **kwargs) -> bool
# for ops whose randomness depends on their arguments (video_sample(...,
# mode="central") is not).
_REGISTRY: Dict[str, Tuple[Callable[..., OpFn],
                           Union[bool, Callable[..., bool]]]] = {}


def register(name: str, *,
             random: Union[bool, Callable[..., bool]] = False):
  """Decorator: registers `factory(*args, **kwargs) -> fn(example) -> example`.

  The factory receives the literal args of the spec (`resize(224)` calls
  `factory(224)`) and returns the op; it should raise ValueError/TypeError
  on bad args (the parser adds the op name to the message). `random`: see
  `_REGISTRY`.
  """
  if not name.isidentifier():
    raise ValueError(f"pp op name {name!r} must be a Python identifier.")

  def deco(factory):
    if name in _REGISTRY:
      raise ValueError(f"pp op {name!r} is already registered; pick another "
                       "name.")
    _REGISTRY[name] = (factory, random if callable(random) else bool(random))
    return factory

  return deco


def import_ops(module: str):
  """Imports an op module: a family name ("video") or a dotted module path."""
  path = f"losa_jax.pp.{module}" if module in FAMILIES else module
  try:
    importlib.import_module(path)
  except ImportError as e:
    raise ValueError(f"pp module {module!r} cannot be imported ({e}); use "
                     f"one of {FAMILIES} or a dotted module path.") from None


def registered_ops() -> List[str]:
  """Every op name, after importing the built-in families."""
  for family in FAMILIES:
    import_ops(family)
  return sorted(_REGISTRY)


def is_random(op: str) -> bool:
  """Whether an op (e.g. "flip_lr" or "video_sample(8, mode='central')")
  draws from the per-example seed, as its registration declares."""
  name, args, kwargs = parse_op(op)
  rand = _registered(name, op)[1]
  return bool(rand(*args, **kwargs)) if callable(rand) else rand


# --- Parsing ------------------------------------------------------------------

def split_top_level(spec: str) -> List[str]:
  """Splits on `|` outside quotes and brackets (args may contain `|`)."""
  parts, depth, quote, escaped, start = [], 0, None, False, 0
  for i, c in enumerate(spec):
    if escaped:
      escaped = False
    elif quote:
      escaped = c == "\\"
      if c == quote:
        quote = None
    elif c in "'\"":
      quote = c
    elif c in "([{":
      depth += 1
    elif c in ")]}":
      depth -= 1
    elif c == "|" and depth == 0:
      parts.append(spec[start:i])
      start = i + 1
  parts.append(spec[start:])
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


def split_ops(spec: Spec) -> List[str]:
  """The op strings of a spec (a string, a list of strings, or None)."""
  if spec is None:
    return []
  if isinstance(spec, str):
    spec = [spec]
  ops = []
  for s in spec:
    if not isinstance(s, str):
      raise ValueError(f"pp spec entries must be strings, got {s!r}.")
    ops.extend(split_top_level(s))
  return ops


def random_ops(spec: Spec) -> List[str]:
  """The ops of `spec` that are declared random, in order."""
  return [op for op in split_ops(spec) if is_random(op)]


def _registered(name: str, op: str):
  if name not in _REGISTRY:
    registered_ops()   # Imports the families nobody imported yet.
  if name not in _REGISTRY:
    raise ValueError(f"Unknown pp op {name!r} (in {op!r}). Registered ops: "
                     f"{', '.join(registered_ops())}.")
  return _REGISTRY[name]


def _build_op(op: str) -> OpFn:
  name, args, kwargs = parse_op(op)
  factory, _ = _registered(name, op)
  try:
    fn = factory(*args, **kwargs)
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


def get_preprocess_fn(spec: Spec) -> OpFn:
  """Returns `fn(example) -> example` applying the ops of `spec` in order.

  Args:
    spec: `"op1|op2(...)|..."`, a list of such strings (joined in order, so a
      task's label ops and a model's pp can be given separately), or
      None / "" for the identity.

  Raises:
    ValueError: at build time for unknown ops or bad args, naming the op.
  """
  fns = [_build_op(op) for op in split_ops(spec)]

  def preprocess(example: Example) -> Example:
    example = dict(example)
    for fn in fns:
      example = fn(example)
    return example

  return preprocess


# --- Helpers ------------------------------------------------------------------


def hw(size, op: str) -> Tuple[int, int]:
  """`224` or `(h, w)` -> `(h, w)` positive ints."""
  if isinstance(size, int) and not isinstance(size, bool):
    size = (size, size)
  if (not isinstance(size, (tuple, list)) or len(size) != 2 or
      not all(isinstance(s, int) and s > 0 for s in size)):
    raise ValueError(f"{op}: size must be a positive int or (h, w), got "
                     f"{size!r}.")
  return int(size[0]), int(size[1])


def positive_int(x, what: str) -> int:
  if isinstance(x, bool) or not isinstance(x, int) or x <= 0:
    raise ValueError(f"{what} must be a positive int, got {x!r}.")
  return x


def next_seed(example: Example, op: str) -> tf.Tensor:
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


def run_seeded(fn: OpFn, example: Example, seed) -> Example:
  """fn(example) with `seed` (int64 [2]) as the per-example seed the random
  ops draw from (`next_seed`); the output does not keep it."""
  out = dict(fn({**example, SEED_KEY: tf.cast(seed, tf.int64)}))
  out.pop(SEED_KEY, None)
  return out


def resize(image: tf.Tensor, hw, method: str = "bilinear",
           antialias: bool = False) -> tf.Tensor:
  """Resizes [H, W, C] or [F, H, W, C], keeping the dtype (ints are rounded)."""
  dtype = image.dtype
  out = tf.image.resize(image, hw, method=method, antialias=antialias)
  if dtype.is_integer:
    return tf.saturate_cast(tf.round(out), dtype)
  return tf.cast(out, dtype)


def short_side_hw(image: tf.Tensor, smaller_size) -> tf.Tensor:
  """int32 (h, w) that make the shorter side of [..., H, W, C] `smaller_size`
  (an int or a float scalar tensor), keeping the aspect ratio."""
  shape = tf.shape(image)
  h, w = tf.cast(shape[-3], tf.float32), tf.cast(shape[-2], tf.float32)
  ratio = tf.cast(smaller_size, tf.float32) / tf.minimum(h, w)
  return tf.stack([tf.cast(tf.round(h * ratio), tf.int32),
                   tf.cast(tf.round(w * ratio), tf.int32)])


def fix_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
  """[..., C] -> [..., channels]: 3 tiles gray and drops alpha, 1 takes the
  luma of RGB, 0 keeps C."""
  c = image.shape[-1]
  if channels == 3:
    tile = lambda: tf.tile(image, [1] * (image.shape.rank - 1) + [3])
    if c == 3:
      return image
    if c == 1:
      return tile()
    if c is not None:
      return image[..., :3]
    image = tf.cond(tf.shape(image)[-1] == 1, tile, lambda: image[..., :3])
    return tf.ensure_shape(image, [None] * (image.shape.rank - 1) + [3])
  if channels == 1 and c != 1:
    return tf.cast(tf.round(tf.image.rgb_to_grayscale(
        tf.cast(image[..., :3], tf.float32))), image.dtype)
  return image
