# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Device meshes and regex sharding rules over param names (big_vision style).

`config.mesh` is a list of (axis_name, size) with at most one -1 ("the rest"),
e.g. [("data", -1)] or [("data", 4), ("fsdp", 2)]. `config.sharding_strategy`
is a list of (regex, rule) with rules "replicate", "fsdp(axis='fsdp',
min_size_mb=4)" or "shard_dim(axis='model', dim=-1)"; first match wins.
Batches are split over every mesh axis that holds data ("data", "fsdp").
"""
import ast
import re
from typing import Any, Dict, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from losa_jax import tree as tree_lib

DATA_AXES = ("data", "fsdp")


def make_mesh(axes: Sequence[Tuple[str, int]] = (("data", -1),),
              devices=None) -> jax.sharding.Mesh:
  """Mesh with Auto axes (GSPMD-style: the compiler propagates shardings)."""
  devices = list(devices if devices is not None else jax.devices())
  names = [a for a, _ in axes]
  sizes = [int(s) for _, s in axes]
  if len(set(names)) != len(names):
    raise ValueError(f"config.mesh repeats an axis name: {names}.")
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh may use -1 for one axis only: {list(axes)}.")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"config.mesh {list(axes)}: {len(devices)} devices are "
                       f"not divisible by {known}.")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise ValueError(f"config.mesh {list(axes)} needs {int(np.prod(sizes))} "
                     f"devices but {len(devices)} are available.")
  return jax.make_mesh(tuple(sizes), tuple(names),
                       axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def batch_axes(mesh) -> Tuple[str, ...]:
  return tuple(a for a in mesh.axis_names if a in DATA_AXES)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) dimension over all data-holding axes."""
  axes = batch_axes(mesh)
  return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def _parse_rule(rule: str) -> Tuple[str, Dict[str, Any]]:
  m = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", rule)
  if not m:
    raise ValueError(f"Bad sharding rule {rule!r}; e.g. 'replicate' or "
                     "\"fsdp(axis='fsdp')\".")
  name, args = m.group(1), m.group(2) or ""
  kwargs = {}
  if args.strip():
    call = ast.parse(f"f({args})", mode="eval").body
    if call.args:
      raise ValueError(f"Sharding rule {rule!r}: use keyword arguments.")
    kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
  return name, kwargs


def _spec_for(rule: str, shape, dtype, mesh) -> P:
  name, kw = _parse_rule(rule)
  if name == "replicate":
    return P()
  if name == "fsdp":
    axis = kw.get("axis", "fsdp")
    if axis not in mesh.axis_names:
      return P()
    size = mesh.shape[axis]
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if size == 1 or nbytes < kw.get("min_size_mb", 4) * 2**20:
      return P()
    # Largest dimension divisible by the axis size.
    for d in sorted(range(len(shape)), key=lambda i: -shape[i]):
      if shape[d] % size == 0:
        spec = [None] * len(shape)
        spec[d] = axis
        return P(*spec)
    return P()
  if name == "shard_dim":
    axis, dim = kw.get("axis", "model"), kw.get("dim", -1)
    if axis not in mesh.axis_names or not shape:
      return P()
    dim = dim % len(shape)
    if shape[dim] % mesh.shape[axis]:
      raise ValueError(f"shard_dim: dim {dim} of size {shape[dim]} is not "
                       f"divisible by mesh axis {axis!r} ({mesh.shape[axis]}).")
    spec = [None] * len(shape)
    spec[dim] = axis
    return P(*spec)
  raise ValueError(f"Unknown sharding rule {name!r}: use replicate, fsdp or "
                   "shard_dim.")


def infer_sharding(tree, mesh, strategy: Sequence[Tuple[str, str]] = (
    (".*", "replicate"),)):
  """NamedSharding for every leaf of a (shape) tree, by first matching rule.

  Non-dict leaves such as optimizer states are handled by
  `infer_state_sharding`; here `tree` is a nested dict of arrays.
  """
  strategy = list(strategy)
  assignment, _ = tree_lib.match_rules(tree, strategy, "config.sharding_strategy")
  flat = tree_lib.flatten(tree)
  return tree_lib.unflatten({
      n: NamedSharding(mesh, _spec_for(strategy[assignment[n]][1],
                                        v.shape, v.dtype, mesh))
      for n, v in flat.items()})


def infer_state_sharding(state_shape, mesh, strategy=((".*", "replicate"),)):
  """Shardings for {"params", "opt", ...}: optimizer leaves shaped like a
  param follow that param's sharding (matched by path suffix)."""
  params_sh = infer_sharding(state_shape["params"], mesh, strategy)
  by_name = tree_lib.flatten(params_sh)
  shapes = {n: tuple(v.shape) for n, v in
            tree_lib.flatten(state_shape["params"]).items()}

  def opt_leaf(path, leaf):
    keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    # Optimizer states nest the param tree under their own fields; find the
    # longest suffix of the path that is a param name with the same shape.
    for start in range(len(keys)):
      name = "/".join(keys[start:])
      if name in by_name and shapes[name] == tuple(leaf.shape):
        return by_name[name]
    return replicated(mesh)

  out = {"params": params_sh}
  for k, v in state_shape.items():
    if k != "params":
      out[k] = jax.tree_util.tree_map_with_path(opt_leaf, v)
  return out
