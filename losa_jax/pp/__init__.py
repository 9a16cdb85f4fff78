# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Preprocessing ops on TF example dicts, composed from big_vision-style specs.

A spec is a string of `|`-separated ops or a list of such strings, e.g.

    "decode|resize(224)|value_range(-1, 1)|onehot(10)|keep('image', 'label')"

Each op is `name` or `name(args)`; the args are Python literals parsed with
`ast.literal_eval` (never `eval`). Ops act on ONE example (a dict of
unbatched tensors) and return a new dict; they never mutate their input.

Ops live in one module per family, found by name as in big_vision's
`pp_modules`: `image` (losa_jax.pp.image: decode, resize, resize_small,
central_crop, random_crop, flip_lr, value_range, onehot, keep, copy),
`video` (losa_jax.pp.video: video_*), `vtab` (losa_jax.pp.vtab: the VTAB
label ops). `get_preprocess_fn` imports the built-in families on demand, a
config may list more modules in `config.pp_modules` (a family name or a
dotted module path), and a dataset module imports the families it needs
(`PP_MODULES`).

Each op declares whether it is random (`register(name, random=True)`).
Random ops draw from `_seed`, the per-example seed (int64 [2]) that the
input pipeline adds: they split it with
`tf.random.experimental.stateless_split`, use one half and store the other
back, so several random ops get independent streams and the whole
augmentation is a pure function of the seed (a restarted run reproduces it
exactly). `random_ops(spec)` lists a spec's random ops (the feature cache
refuses them: a cached tap must not depend on the epoch). Keys that start
with `_` are pipeline-internal and survive `keep`.
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

_REGISTRY: Dict[str, Callable[..., OpFn]] = {}
# name -> bool, or fn(*args, **kwargs) -> bool for ops whose randomness
# depends on their arguments (video_sample(..., mode="central") is not).
_RANDOM: Dict[str, Union[bool, Callable[..., bool]]] = {}


def register(name: str, *,
             random: Union[bool, Callable[..., bool]] = False):
  """Decorator: registers `factory(*args, **kwargs) -> fn(example) -> example`.

  The factory receives the literal args of the spec (`resize(224)` calls
  `factory(224)`) and returns the op; it should raise ValueError/TypeError
  on bad args (the parser adds the op name to the message). `random=True`
  declares that the op draws from `_seed`; a callable taking the op's args
  decides per use.
  """
  if not name.isidentifier():
    raise ValueError(f"pp op name {name!r} must be a Python identifier.")

  def deco(factory):
    if name in _REGISTRY:
      raise ValueError(f"pp op {name!r} is already registered; pick another "
                       "name.")
    _REGISTRY[name] = factory
    _RANDOM[name] = random if callable(random) else bool(random)
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


def _import_builtin():
  for family in FAMILIES:
    import_ops(family)


def registered_ops() -> List[str]:
  _import_builtin()
  return sorted(_REGISTRY)


def is_random(op: str) -> bool:
  """Whether an op (e.g. "flip_lr" or "video_sample(8, mode='central')")
  draws from the per-example seed, as its registration declares."""
  name, args, kwargs = parse_op(op)
  if name not in _REGISTRY:
    _import_builtin()
  if name not in _REGISTRY:
    raise ValueError(f"Unknown pp op {name!r} (in {op!r}). Registered ops: "
                     f"{', '.join(registered_ops())}.")
  rand = _RANDOM[name]
  return bool(rand(*args, **kwargs)) if callable(rand) else rand


# ----------------------------------------------------------------------------
# Parsing.
# ----------------------------------------------------------------------------

def split_top_level(spec: str) -> List[str]:
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


def _build_op(op: str) -> OpFn:
  name, args, kwargs = parse_op(op)
  if name not in _REGISTRY:
    _import_builtin()   # An op of a family nobody imported yet.
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


# ----------------------------------------------------------------------------
# Helpers.
# ----------------------------------------------------------------------------


def hw(size, op: str) -> Tuple[int, int]:
  """`224` or `(h, w)` -> `(h, w)` positive ints."""
  if isinstance(size, int) and not isinstance(size, bool):
    size = (size, size)
  if (not isinstance(size, (tuple, list)) or len(size) != 2 or
      not all(isinstance(s, int) and s > 0 for s in size)):
    raise ValueError(f"{op}: size must be a positive int or (h, w), got "
                     f"{size!r}.")
  return int(size[0]), int(size[1])


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


def resize(image: tf.Tensor, hw, method: str, antialias: bool) -> tf.Tensor:
  """Resizes [H, W, C], keeping the input dtype (ints are rounded)."""
  dtype = image.dtype
  out = tf.image.resize(image, hw, method=method, antialias=antialias)
  if dtype.is_integer:
    return tf.saturate_cast(tf.round(out), dtype)
  return tf.cast(out, dtype)

