# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""ViT checkpoint layouts: old naming generations, scan vs loop, posemb grids.

Pure functions on nested dicts of arrays, used by `porting` (loading) and
`vivit` (inflation).
"""
import collections.abc
import math
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from absl import logging
import numpy as np
import scipy.ndimage

from losa_jax.utils import npz as npz_lib

Tree = Mapping[str, Any]
Grid = Tuple[int, int]

# Posemb locations of the older vision_transformer code (very old, pre-2022).
_OLD_POSEMB = (("Transformer", "posembed_input", "pos_embedding"),
               ("Transformer", "pos_embedding"))
# MAP-head params that some ViT-G-era checkpoints kept at the top level.
_MAP_HEAD_PARTS = ("probe", "MlpBlock_0", "MultiHeadDotProductAttention_0",
                   "LayerNorm_0")
_NUMBERED = re.compile(r"(.+)_(\d+)")
_BLOCK = re.compile(r"encoderblock_(\d+)")
_MAX_LISTED = 40

# --- Tree helpers ---------------------------------------------------------


def copy_tree(tree: Tree) -> Dict[str, Any]:
  """Copies the dict structure (leaves are shared) so callers' trees survive."""
  return {k: copy_tree(v) if isinstance(v, collections.abc.Mapping) else v
          for k, v in tree.items()}


def natural_key(name: str):
  # "encoderblock_10" sorts after "encoderblock_9".
  return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def listing(names: Sequence[str]) -> str:
  names = sorted(names, key=natural_key)
  shown = ", ".join(names[:_MAX_LISTED])
  if len(names) > _MAX_LISTED:
    shown += f", ... ({len(names) - _MAX_LISTED} more)"
  return f"[{shown}]"


def shape(x: Any) -> Tuple[int, ...]:
  return tuple(int(d) for d in np.shape(x))


# --- Old naming -----------------------------------------------------------


def _has_pre_linen_numbering(tree: Tree) -> bool:
  """True if some level numbers a module class other than 0, 1, ..., k-1.

  Pre-linen flax numbered submodules with one counter per parent across all
  classes (`LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
  MlpBlock_3`); linen counts per class, so gaps or a non-zero start betray
  the old scheme.
  """
  numbers: Dict[str, list] = {}
  for name, value in tree.items():
    m = _NUMBERED.fullmatch(name)
    if m:
      numbers.setdefault(m.group(1), []).append(int(m.group(2)))
    if isinstance(value, collections.abc.Mapping) and (
        _has_pre_linen_numbering(value)):
      return True
  return any(sorted(n) != list(range(len(n))) for n in numbers.values())


def _renumber_per_class(tree: Tree) -> Dict[str, Any]:
  """Renumbers `<Class>_<n>` children 0, 1, ... per class in natural order."""
  out, counts = {}, {}
  for name in sorted(tree, key=natural_key):
    value = tree[name]
    if m := _NUMBERED.fullmatch(name):
      counts[m.group(1)] = counts.get(m.group(1), -1) + 1
      name = f"{m.group(1)}_{counts[m.group(1)]}"
    if isinstance(value, collections.abc.Mapping):
      value = _renumber_per_class(value)
    out[name] = value
  return out


def _pop_path(tree: Dict[str, Any], path: Sequence[str]) -> Any:
  """Pops tree[p0][p1]..., pruning emptied dicts; None if absent."""
  node = tree
  for p in path[:-1]:
    node = node.get(p)
    if not isinstance(node, collections.abc.Mapping):
      return None
  if path[-1] not in node:
    return None
  value = node.pop(path[-1])
  if len(path) > 1 and not node:
    _pop_path(tree, path[:-1])
  return value


def fix_old_checkpoints(tree: Tree, *,
                        expected_posemb_len: Optional[int] = None
                        ) -> Dict[str, Any]:
  """Rewrites older ViT checkpoints into the current big_vision layout.

  * Pre-linen numbering is renumbered per class (`_renumber_per_class`).
  * `Transformer/posembed_input/pos_embedding` or `Transformer/pos_embedding`
    moves to the top-level `pos_embedding`.
  * A posemb of length k*k + 1 has a slot for the cls token (old models added
    posemb after prepending cls): the slot's row is split off and added into
    `cls`, which is exact because the cls token only ever saw their sum.
  * Top-level MAP-head params (`probe`, ...) are regrouped under `MAPHead_0`.

  Args:
    tree: nested dict of a ViT checkpoint (not modified).
    expected_posemb_len: the model's posemb length. A top-level posemb that
      already has this length is kept as is, so a non-square grid whose size
      happens to be k*k + 1 (e.g. 2x5) is not mistaken for a cls slot.

  Returns:
    The fixed tree (a new dict; leaves are shared where unchanged).
  """
  tree = copy_tree(tree)
  if _has_pre_linen_numbering(tree):
    logging.info("porting: renumbering pre-linen module names per class.")
    tree = _renumber_per_class(tree)

  moved = False
  for path in _OLD_POSEMB:
    pe = _pop_path(tree, path)
    if pe is None:
      continue
    if "pos_embedding" in tree or moved:
      raise ValueError("The checkpoint has more than one pos_embedding (top "
                       f"level and {'/'.join(path)}); remove the stale one.")
    logging.info("porting: moving %s to pos_embedding.", "/".join(path))
    tree["pos_embedding"] = pe
    moved = True

  if "pos_embedding" in tree:
    pe = tree["pos_embedding"]
    n = shape(pe)[1]
    k = math.isqrt(max(n - 1, 0))
    has_cls_slot = n > 1 and k * k == n - 1
    if has_cls_slot and (moved or n != expected_posemb_len):
      pe = np.asarray(pe)
      row, tree["pos_embedding"] = pe[:, :1], pe[:, 1:]
      if "cls" in tree:
        cls = np.asarray(tree["cls"])
        logging.info("porting: adding the posemb cls row into cls.")
        tree["cls"] = (cls.astype(np.float32) +
                       row.astype(np.float32)).astype(cls.dtype)
      else:
        logging.warning("porting: dropping the posemb cls row: the "
                        "checkpoint has no cls param to fold it into.")

  if "probe" in tree:
    logging.info("porting: regrouping top-level MAP head params.")
    head = {k: tree.pop(k) for k in _MAP_HEAD_PARTS if k in tree}
    if "MAPHead_0" in tree:
      raise ValueError("The checkpoint has both top-level MAP-head params "
                       f"{sorted(head)} and MAPHead_0; remove one.")
    tree["MAPHead_0"] = head
  return tree


# --- Scan <-> loop --------------------------------------------------------


def scan_to_loop(tree: Tree, depth: Optional[int] = None) -> Dict[str, Any]:
  """`Transformer/encoderblock/x` [depth, ...] -> `.../encoderblock_{i}/x`.

  Returns a new tree; one without a stacked `encoderblock` is returned as a
  copy. `depth`, if given, must equal the stacked length.
  """
  tree = copy_tree(tree)
  tr = tree.get("Transformer")
  if not isinstance(tr, dict) or "encoderblock" not in tr:
    return tree
  if any(_BLOCK.fullmatch(k) for k in tr):
    raise ValueError("The checkpoint mixes a scanned Transformer/encoderblock "
                     "with per-block Transformer/encoderblock_N params.")
  flat = npz_lib.flatten(tr.pop("encoderblock"))
  lengths = {shape(v)[0] if shape(v) else None for v in flat.values()}
  if len(lengths) != 1 or None in lengths:
    raise ValueError("Scanned Transformer/encoderblock params must share one "
                     f"leading (depth) axis; got leading sizes {lengths}.")
  n = lengths.pop()
  if depth is not None and n != depth:
    raise ValueError(f"The checkpoint has {n} stacked encoder blocks but the "
                     f"model has depth {depth}: use the matching variant.")
  for i in range(n):
    tr[f"encoderblock_{i}"] = npz_lib.unflatten(
        {k: np.asarray(v)[i] for k, v in flat.items()})
  return tree


def loop_to_scan(tree: Tree) -> Dict[str, Any]:
  """`Transformer/encoderblock_{i}/x` -> `.../encoderblock/x` [depth, ...].

  Returns a new tree; one without per-block params is returned as a copy.
  """
  tree = copy_tree(tree)
  tr = tree.get("Transformer")
  if not isinstance(tr, dict):
    return tree
  blocks = {int(m.group(1)): k for k in tr if (m := _BLOCK.fullmatch(k))}
  if not blocks:
    return tree
  if "encoderblock" in tr:
    raise ValueError("The checkpoint mixes a scanned Transformer/encoderblock "
                     "with per-block Transformer/encoderblock_N params.")
  if sorted(blocks) != list(range(len(blocks))):
    missing = sorted(set(range(max(blocks) + 1)) - set(blocks))
    raise ValueError(f"Cannot stack encoder blocks: encoderblock_{missing} "
                     "missing from the checkpoint.")
  flats = [npz_lib.flatten(tr.pop(blocks[i])) for i in range(len(blocks))]
  for i, f in enumerate(flats[1:], 1):
    if set(f) != set(flats[0]):
      diff = sorted(set(f) ^ set(flats[0]))
      raise ValueError(f"Cannot stack encoder blocks: encoderblock_{i} and "
                       f"encoderblock_0 differ in params {diff}.")
  tr["encoderblock"] = npz_lib.unflatten(
      {k: np.stack([np.asarray(f[k]) for f in flats]) for k in flats[0]})
  return tree


# --- Posemb ---------------------------------------------------------------


def square_grid(n: int, what: str, hint: str) -> Grid:
  s = math.isqrt(n)
  if s * s != n:
    raise ValueError(f"Cannot infer the patch grid of {what} with {n} tokens "
                     f"(not a square): {hint}.")
  return (s, s)


def as_grid(grid: Union[int, Sequence[int]]) -> Grid:
  if isinstance(grid, (int, np.integer)):
    return (int(grid), int(grid))
  gh, gw = grid
  return (int(gh), int(gw))


def resample_posemb(old: Any, new_grid: Union[int, Sequence[int]],
                    old_grid: Optional[Sequence[int]] = None) -> np.ndarray:
  """Bilinearly resizes a posemb [1, gh*gw, D] to `new_grid`, like big_vision.

  `scipy.ndimage.zoom(order=1)` aligns the corners, as big_vision's
  `resample_posemb` does on square grids; non-square grids work too.

  Args:
    old: [1, N, D] posemb without a cls row.
    new_grid: (gh, gw) target patch grid (an int means square).
    old_grid: (h, w) grid of `old`; inferred when N is a square.

  Returns:
    [1, gh*gw, D] numpy array in `old`'s dtype.
  """
  old = np.asarray(old)
  if old.ndim != 3 or old.shape[0] != 1:
    raise ValueError(f"resample_posemb expects [1, N, D], got {old.shape}.")
  n, d = old.shape[1], old.shape[2]
  gh, gw = as_grid(new_grid)
  if old_grid is None:
    oh, ow = square_grid(n, "the checkpoint posemb",
                          "pass old_grid=(h, w) (ckpt_posemb_grid in load)")
  else:
    oh, ow = as_grid(old_grid)
    if oh * ow != n:
      raise ValueError(f"old_grid={(oh, ow)} has {oh * ow} cells but the "
                       f"posemb has {n} tokens; pass its true grid.")
  if (oh, ow) == (gh, gw):
    return old
  logging.info("porting: resampling posemb from grid %s to %s.", (oh, ow),
               (gh, gw))
  # scipy has no bfloat16: interpolate in float32 (exactly big_vision's dtype
  # for float32 checkpoints) and cast back.
  work = np.float64 if old.dtype == np.float64 else np.float32
  grid = old.reshape(oh, ow, d).astype(work)
  grid = scipy.ndimage.zoom(grid, (gh / oh, gw / ow, 1), order=1)
  if grid.shape != (gh, gw, d):
    # zoom rounds the output size; guard against float rounding surprises.
    raise ValueError(f"Resampling a {(oh, ow)} posemb grid to {(gh, gw)} "
                     f"produced {grid.shape[:2]}; please report this.")
  return grid.reshape(1, gh * gw, d).astype(old.dtype)
