# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Device meshes and regex sharding rules over param names (big_vision style).

`config.mesh` is [(axis_name, size)] with at most one -1 ("the remaining
devices"); axes are `AxisType.Auto` (GSPMD), which regex rules over a linen
param tree need. The batch dim is split over every data-holding axis
("data", "fsdp") in mesh order, so every process owns a contiguous block of
rows (`jax.make_array_from_process_local_data`). `config.sharding_strategy`
is [(regex, rule)], first full match wins; the rule ops (`RULES`) and
examples are in docs/scaling.md.
"""
import ast
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from losa_jax.utils import tree as tree_lib

DATA_AXES = ("data", "fsdp")
DEFAULT_MESH = (("data", -1),)
# The frozen backbone is most of the memory (ViT-e: 3.9 B params); the side
# network, head and their optimizer state are small and stay replicated.
DEFAULT_STRATEGY = (("backbone/.*", "fsdp(axis='fsdp')"), (".*", "replicate"))
# Rule name -> accepted keyword arguments (with their defaults).
RULES: Dict[str, Dict[str, Any]] = {
    "replicate": {},
    "fsdp": {"axis": "fsdp", "min_size_mb": 4},
    "shard_dim": {"axis": "model", "dim": -1},
}


# --- meshes -------------------------------------------------------------------


def check_mesh(axes) -> List[Tuple[str, int]]:
  """Validates the form of `config.mesh` (no devices needed): [(name, size)].

  None means DEFAULT_MESH. Sizes are ints >= 1, or -1 once.
  """
  axes = DEFAULT_MESH if axes is None else axes
  if isinstance(axes, str) or not isinstance(axes, (list, tuple)):
    raise ValueError(f"config.mesh={axes!r} must be a list of (name, size) "
                     "pairs, e.g. [('data', 4), ('fsdp', 2)].")
  pairs = []
  for a in axes:
    if (not isinstance(a, (tuple, list)) or len(a) != 2 or
        not isinstance(a[0], str) or isinstance(a[1], bool) or
        not isinstance(a[1], (int, np.integer))):
      raise ValueError(f"config.mesh entry {a!r} is not a (name, size) pair; "
                       "write e.g. [('data', 4), ('fsdp', 2)].")
    pairs.append((a[0], int(a[1])))
  if not pairs:
    raise ValueError("config.mesh is empty; use e.g. [('data', -1)].")
  names = [n for n, _ in pairs]
  if len(set(names)) != len(names):
    raise ValueError(f"config.mesh repeats an axis name: {names}.")
  bad = [(n, s) for n, s in pairs if s < 1 and s != -1]
  if bad:
    raise ValueError(f"config.mesh axis sizes must be >= 1 or -1 (the rest), "
                     f"got {bad}.")
  if [s for _, s in pairs].count(-1) > 1:
    raise ValueError(f"config.mesh may use -1 for one axis only: {pairs}.")
  return pairs


def mesh_shape(axes, num_devices: int) -> Tuple[Tuple[str, ...],
                                                 Tuple[int, ...]]:
  """`config.mesh` (see `check_mesh`) resolved for `num_devices`:
  (names, sizes) with prod(sizes) == num_devices."""
  pairs = check_mesh(axes)
  names = tuple(n for n, _ in pairs)
  sizes = [s for _, s in pairs]
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
          f"config.mesh {pairs}: the fixed axes take {known} devices, which "
          f"does not divide the {num_devices} available; change the sizes.")
    sizes[sizes.index(-1)] = num_devices // known
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(
        f"config.mesh {pairs} needs {int(np.prod(sizes))} devices but "
        f"{num_devices} are available (all processes together); make the "
        "sizes multiply to that, or use -1 for one axis.")
  return names, tuple(sizes)


def make_mesh(axes=DEFAULT_MESH, devices=None) -> jax.sharding.Mesh:
  """A mesh over `devices` (default: all devices of all processes).

  Axes are Auto (`jax.make_mesh` now defaults to Explicit, which would turn
  every sharding mismatch into a type error instead of a GSPMD reshard).
  """
  devices = list(devices if devices is not None else jax.devices())
  names, sizes = mesh_shape(axes, len(devices))
  return jax.make_mesh(sizes, names, axis_types=(AxisType.Auto,) * len(names),
                       devices=devices)


def batch_axes(mesh) -> Tuple[str, ...]:
  """The mesh axes that split the batch, in mesh order."""
  return tuple(a for a in mesh.axis_names if a in DATA_AXES)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) dimension over all data-holding axes."""
  axes = batch_axes(mesh)
  return NamedSharding(mesh, P(axes if axes else None))


def check_batch_size(batch_size: int, mesh, what: str = "config.input."
                     "batch_size"):
  """The global batch must split evenly over the batch shards and hosts."""
  shards = int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))
  if batch_size % shards:
    raise ValueError(
        f"{what}={batch_size} is not divisible by the {shards} batch shards "
        f"of the mesh {dict(mesh.shape)} (axes {batch_axes(mesh)}); use a "
        f"multiple of {shards}.")
  if batch_size % jax.process_count():
    raise ValueError(f"{what}={batch_size} is not divisible by the "
                     f"{jax.process_count()} processes.")


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# --- rules --------------------------------------------------------------------


def parse_rule(rule: str) -> List[Tuple[str, Dict[str, Any]]]:
  """"fsdp(axis='fsdp')|shard_dim(dim=0)" -> [(name, full kwargs), ...]."""
  if not isinstance(rule, str):
    raise ValueError(f"Sharding rule {rule!r} must be a string such as "
                     "'replicate' or \"fsdp(axis='fsdp')\".")
  ops = []
  for part in rule.split("|"):
    m = re.fullmatch(r"\s*(\w+)\s*(?:\((.*)\))?\s*", part, re.S)
    if not m:
      raise ValueError(f"Bad sharding rule {rule!r}; e.g. 'replicate' or "
                       "\"fsdp(axis='fsdp')\".")
    name, args = m.group(1), m.group(2) or ""
    if name not in RULES:
      raise ValueError(f"Unknown sharding rule {name!r} in {rule!r}: use one "
                       f"of {sorted(RULES)}.")
    kwargs = dict(RULES[name])
    if args.strip():
      try:
        call = ast.parse(f"f({args})", mode="eval").body
        given = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
      except (SyntaxError, ValueError) as e:
        raise ValueError(f"Sharding rule {rule!r}: cannot parse the "
                         f"arguments ({e}); use literals.") from None
      if call.args:
        raise ValueError(f"Sharding rule {rule!r}: use keyword arguments, "
                         f"e.g. {name}(axis='fsdp').")
      unknown = sorted(set(given) - set(RULES[name]))
      if unknown:
        raise ValueError(f"Sharding rule {rule!r}: {name} takes "
                         f"{sorted(RULES[name])}, not {unknown}.")
      kwargs.update(given)
    ops.append((name, kwargs))
  return ops


def check_strategy(strategy, what: str = "config.sharding_strategy"):
  """Cheap validation of a [(regex, rule)] list (no devices needed)."""
  if isinstance(strategy, str) or not isinstance(strategy, (list, tuple)):
    raise ValueError(f"{what} must be a list of (regex, rule) pairs, e.g. "
                     f"{list(DEFAULT_STRATEGY)}; got {strategy!r}.")
  for item in strategy:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
      raise ValueError(f"{what} entry {item!r} is not a (regex, rule) pair.")
  tree_lib.check_patterns([r for r, _ in strategy], what)
  for _, rule in strategy:
    parse_rule(rule)


def spec_for(name: str, rule: str, shape: Sequence[int], dtype,
             mesh_shape_: Mapping[str, int]) -> P:
  """The PartitionSpec that `rule` gives param `name` of `shape` and `dtype`.

  `mesh_shape_` is {axis: size} (e.g. `mesh.shape`), so rules can be checked
  for any mesh without devices.
  """
  shape = tuple(int(d) for d in shape)
  spec: List[Any] = [None] * len(shape)
  used = set()
  for op, kw in parse_rule(rule):
    if op == "replicate":
      continue
    # Absent or trivial axes are dropped: one strategy fits every mesh.
    axis = kw["axis"]
    axes = tuple(a for a in ((axis,) if isinstance(axis, str) else axis)
                 if mesh_shape_.get(a, 1) > 1 and a not in used)
    if not axes:
      continue
    size = int(np.prod([mesh_shape_[a] for a in axes]))
    entry = axes[0] if len(axes) == 1 else axes
    if op == "fsdp":
      nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
      if nbytes < kw["min_size_mb"] * 2**20:
        continue
      free = [d for d in range(len(shape))
              if spec[d] is None and shape[d] % size == 0]
      if not free:
        logging.info("fsdp: no dim of %s %s divides %s=%d; replicated.",
                     name, shape, axes, size)
        continue
      d = min(free, key=lambda i: (-shape[i], i))
    else:  # shard_dim
      if not shape:
        raise ValueError(f"shard_dim: {name} is a scalar; match it with "
                         "another rule (e.g. 'replicate').")
      d = int(kw["dim"])
      if not -len(shape) <= d < len(shape):
        raise ValueError(f"shard_dim(dim={d}): {name} has only "
                         f"{len(shape)} dims {shape}.")
      d %= len(shape)
      if spec[d] is not None:
        raise ValueError(f"shard_dim(dim={d}): dim {d} of {name} is already "
                         f"sharded over {spec[d]!r} by an earlier op.")
      if shape[d] % size:
        raise ValueError(
            f"shard_dim: dim {d} of {name} {shape} has size {shape[d]}, not "
            f"divisible by mesh axes {axes} ({size}); use another dim, or "
            "fsdp(...) which picks a divisible one.")
    spec[d] = entry
    used.update(axes)
  while spec and spec[-1] is None:  # P('x', None) == P('x') is clearer.
    spec.pop()
  return P(*spec)


def infer_specs(tree, mesh_shape_: Mapping[str, int],
                strategy: Optional[Sequence[Tuple[str, str]]] = None):
  """PartitionSpec per leaf of a nested dict of arrays or ShapeDtypeStructs."""
  strategy = list(DEFAULT_STRATEGY if strategy is None else strategy)
  check_strategy(strategy)
  assignment, _ = tree_lib.match_rules(tree, strategy,
                                       "config.sharding_strategy")
  return tree_lib.unflatten({
      n: spec_for(n, strategy[assignment[n]][1], v.shape, v.dtype,
                  mesh_shape_)
      for n, v in tree_lib.flatten(tree).items()})


def infer_state_sharding(state_shape, mesh, strategy=None):
  """Shardings for {"params", "opt", "step", "rng"}.

  Params get the first matching rule of `strategy` (None: DEFAULT_STRATEGY).
  Optimizer leaves shaped like a param follow that param's sharding (matched
  by the longest path suffix that names a param of the same shape), so Adam
  moments of an FSDP-sharded param are FSDP-sharded too. Everything else
  (counts, step, rng) is replicated.
  """
  params_sh = jax.tree.map(
      lambda s: NamedSharding(mesh, s),
      infer_specs(state_shape["params"], dict(mesh.shape), strategy),
      is_leaf=lambda x: isinstance(x, P))
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

  return {k: params_sh if k == "params" else
          jax.tree_util.tree_map_with_path(opt_leaf, v)
          for k, v in state_shape.items()}
