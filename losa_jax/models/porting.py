# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Loads big_vision / vision_transformer ViT checkpoints into losa_jax params.

Equivalent to big_vision's `vit.load`, with stricter checks:

    params = vit_model.init(rng, images)["params"]
    params = porting.load(params, "/ckpts/ViT-B_16.npz", model_cfg,
                          dont_load=["head/.*"])

    params = adapt_model.init(rng, images)["params"]      # backbone/side/head
    params = porting.load_into_model(params, "/ckpts/vit.npz", backbone_cfg)

The pipeline is: read the npz (`losa_jax.npz.load_npz`, which resolves the
`params/` / `opt/target/` prefixes and `:img` sub-keys) -> rename the older
vision_transformer naming (`fix_old_checkpoints`) -> convert between the
scanned and python-loop block layouts -> drop `pre_logits` if the model has
none -> resample `pos_embedding` to the model's patch grid -> merge into the
init params, checking that names and shapes agree exactly.
"""
import collections.abc
import math
import re
from typing import (Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple,
                    Union)

from absl import logging
import numpy as np
import scipy.ndimage

from losa_jax import npz as npz_lib

Tree = Mapping[str, Any]
Grid = Tuple[int, int]

# Checkpoint params the model may lack without it being an error: `pre_logits`
# (the 2020 i21k files carry one that transfer models drop) and `head` (the
# caller decides: copied when it fits, re-initialised otherwise).
_DROPPABLE = (r"pre_logits/.*", r"head/.*")
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


def _copy_tree(tree: Tree) -> Dict[str, Any]:
  """Copies the dict structure (leaves are shared) so callers' trees survive."""
  return {k: _copy_tree(v) if isinstance(v, collections.abc.Mapping) else v
          for k, v in tree.items()}


def _natural_key(name: str):
  # "encoderblock_10" sorts after "encoderblock_9".
  return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def _listing(names: Sequence[str]) -> str:
  names = sorted(names, key=_natural_key)
  shown = ", ".join(names[:_MAX_LISTED])
  if len(names) > _MAX_LISTED:
    shown += f", ... ({len(names) - _MAX_LISTED} more)"
  return f"[{shown}]"


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
  # Works for dicts, ml_collections.ConfigDict and None.
  if cfg is None:
    return default
  return cfg.get(key, default)


def _shape(x: Any) -> Tuple[int, ...]:
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
  for name in sorted(tree, key=_natural_key):
    value = tree[name]
    m = _NUMBERED.fullmatch(name)
    if m:
      cls = m.group(1)
      new_name = f"{cls}_{counts.get(cls, 0)}"
      counts[cls] = counts.get(cls, 0) + 1
    else:
      new_name = name
    if isinstance(value, collections.abc.Mapping):
      value = _renumber_per_class(value)
    out[new_name] = value
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

  * Pre-linen numbering (detected by `_has_pre_linen_numbering`) is renumbered
    per class: an old block's `LayerNorm_0, MultiHeadDotProductAttention_1,
    LayerNorm_2, MlpBlock_3` become `LayerNorm_0,
    MultiHeadDotProductAttention_0, LayerNorm_1, MlpBlock_0`.
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
  tree = _copy_tree(tree)
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
    n = _shape(pe)[1]
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
  tree = _copy_tree(tree)
  tr = tree.get("Transformer")
  if not isinstance(tr, dict) or "encoderblock" not in tr:
    return tree
  if any(_BLOCK.fullmatch(k) for k in tr):
    raise ValueError("The checkpoint mixes a scanned Transformer/encoderblock "
                     "with per-block Transformer/encoderblock_N params.")
  flat = npz_lib.flatten(tr.pop("encoderblock"))
  lengths = {_shape(v)[0] if _shape(v) else None for v in flat.values()}
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
  tree = _copy_tree(tree)
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


def _square_grid(n: int, what: str, hint: str) -> Grid:
  s = math.isqrt(n)
  if s * s != n:
    raise ValueError(f"Cannot infer the patch grid of {what} with {n} tokens "
                     f"(not a square): {hint}.")
  return (s, s)


def _as_grid(grid: Union[int, Sequence[int]]) -> Grid:
  if isinstance(grid, (int, np.integer)):
    return (int(grid), int(grid))
  gh, gw = grid
  return (int(gh), int(gw))


def resample_posemb(old: Any, new_grid: Union[int, Sequence[int]],
                    old_grid: Optional[Sequence[int]] = None) -> np.ndarray:
  """Bilinearly resizes a posemb [1, gh*gw, D] to `new_grid`, like big_vision.

  Uses `scipy.ndimage.zoom(order=1)` on the [gh, gw, D] grid, which aligns the
  corners (the corner rows are kept exactly), so it matches big_vision's
  `resample_posemb` on square grids. Unlike it, non-square grids work.

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
  gh, gw = _as_grid(new_grid)
  if old_grid is None:
    oh, ow = _square_grid(n, "the checkpoint posemb",
                          "pass old_grid=(h, w) (ckpt_posemb_grid in load)")
  else:
    oh, ow = _as_grid(old_grid)
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


# --- Loading --------------------------------------------------------------


def _read(path_or_tree: Any) -> Tuple[Dict[str, Any], str]:
  """(checkpoint tree, a name for messages)."""
  if isinstance(path_or_tree, collections.abc.Mapping):
    return _copy_tree(path_or_tree), "the given param tree"
  source = str(path_or_tree)
  tree = npz_lib.load_npz(path_or_tree)
  if "embedding" not in tree and "Transformer" not in tree and "img" in tree:
    raise ValueError(f"{source!r} looks like a two-tower (image/text) "
                     "checkpoint: append ':img' to the path to load its "
                     "image tower.")
  return tree, source


def _is_scan(init_flat: Mapping[str, Any]) -> bool:
  return any(k.startswith("Transformer/encoderblock/") for k in init_flat)


def _depth(init_flat: Mapping[str, Any]) -> Optional[int]:
  if _is_scan(init_flat):
    lengths = {_shape(v)[0] for k, v in init_flat.items()
               if k.startswith("Transformer/encoderblock/")}
    return lengths.pop() if len(lengths) == 1 else None
  blocks = {k.split("/")[1] for k in init_flat
            if k.startswith("Transformer/encoderblock_")}
  return len(blocks) or None


def _prepare(init_flat: Mapping[str, Any], path_or_tree: Any, model_cfg: Any,
             posemb_grid: Optional[Sequence[int]],
             ckpt_posemb_grid: Optional[Sequence[int]]
             ) -> Tuple[Dict[str, Any], str]:
  """Checkpoint tree renamed, re-laid-out and resampled for the init params."""
  if any(k.startswith("params/") for k in init_flat) and not any(
      k.startswith("embedding/") for k in init_flat):
    raise ValueError("init_params has a top-level 'params' collection: pass "
                     "variables['params'], not the whole variables dict.")
  tree, source = _read(path_or_tree)
  init_pe = init_flat.get("pos_embedding")
  tree = fix_old_checkpoints(
      tree, expected_posemb_len=None if init_pe is None else
      _shape(init_pe)[1])

  scan = _is_scan(init_flat)
  cfg_scan = _cfg_get(model_cfg, "scan")
  if cfg_scan is not None and bool(cfg_scan) != scan:
    raise ValueError(f"model_cfg['scan']={cfg_scan} but init_params are in "
                     f"the {'scanned' if scan else 'python-loop'} layout: "
                     "initialise the model from the same config.")
  tree = (loop_to_scan(tree) if scan else
          scan_to_loop(tree, _depth(init_flat)))

  if "pre_logits" in tree and not any(
      k.startswith("pre_logits/") for k in init_flat):
    logging.info("porting: dropping the checkpoint's pre_logits (the model "
                 "has no rep_size).")
    del tree["pre_logits"]

  pe = tree.get("pos_embedding")
  if pe is not None and init_pe is not None:
    (_, n_old, d_old), (_, n_new, d_new) = _shape(pe), _shape(init_pe)
    grids_differ = (posemb_grid is not None and ckpt_posemb_grid is not None
                    and _as_grid(posemb_grid) != _as_grid(ckpt_posemb_grid))
    if d_old == d_new and (n_old != n_new or grids_differ):
      new_grid = (_as_grid(posemb_grid) if posemb_grid is not None else
                  _square_grid(n_new, "the model posemb",
                               "pass posemb_grid=(h, w) of the model"))
      tree["pos_embedding"] = resample_posemb(pe, new_grid, ckpt_posemb_grid)
  return tree, source


def _compile(patterns: Union[str, Iterable[str]], what: str) -> list:
  if isinstance(patterns, str):  # a lone regex, not an iterable of letters
    patterns = (patterns,)
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise ValueError(f"{what} entry {p!r} is not a valid regex: {e}.") from e
  return out


def _merge(init_flat: Mapping[str, Any], ckpt_flat: Mapping[str, Any],
           dont_load: Iterable[str], optional: Iterable[str],
           droppable: Iterable[str], source: str) -> Dict[str, Any]:
  """Flat merge: model names from the checkpoint, with strict checks.

  Args:
    init_flat: the model's params by flat name (values or ShapeDtypeStructs).
    ckpt_flat: checkpoint params by flat name.
    dont_load: regexes (full match) of names kept from init / ignored.
    optional: regexes of model names loaded when the checkpoint has them,
      else kept from init (model-only params like LoRA).
    droppable: regexes of checkpoint names the model may lack.
    source: checkpoint name for messages.

  Returns:
    {name: array} for every name of `init_flat`, cast to the init dtype.
  """
  dont_load = _compile(dont_load, "dont_load")
  optional = [re.compile(p) for p in optional]
  droppable = [re.compile(p) for p in droppable]

  def matches(pats, name):
    return any(p.fullmatch(name) for p in pats)

  used = set()
  merged, missing, shape_errors = {}, [], []
  for name, init in init_flat.items():
    hits = {p.pattern for p in dont_load if p.fullmatch(name)}
    if hits:
      used |= hits
      merged[name] = init
      continue
    if name not in ckpt_flat:
      if matches(optional, name):
        merged[name] = init
      else:
        missing.append(name)
      continue
    value = ckpt_flat[name]
    if _shape(value) != _shape(init):
      shape_errors.append(
          f"checkpoint param {name} has shape {_shape(value)} but the model "
          f"expects {_shape(init)}")
      continue
    # Cast to the init dtype: a bf16 checkpoint fills float32 params unless
    # the model itself keeps that param in bf16.
    merged[name] = np.asarray(value).astype(init.dtype, copy=False)

  unexpected = []
  for name in ckpt_flat:
    if name in init_flat:
      continue
    hits = {p.pattern for p in dont_load if p.fullmatch(name)}
    used |= hits
    if not hits and not matches(droppable, name):
      unexpected.append(name)
    elif not hits:
      logging.info("porting: checkpoint param %s is not a model param "
                   "here; not merged.", name)
  for p in dont_load:
    if p.pattern not in used:
      logging.warning("porting: dont_load pattern %r matched no param.",
                      p.pattern)

  lines = list(shape_errors)
  if missing:
    lines.append(f"{len(missing)} model param(s) missing from the "
                 f"checkpoint: {_listing(missing)}")
  if unexpected:
    lines.append(f"{len(unexpected)} checkpoint param(s) the model does not "
                 f"have: {_listing(unexpected)}")
  if lines:
    raise ValueError(
        f"Cannot load {source} into the model:\n  - " + "\n  - ".join(lines) +
        "\nCheck that the model config (variant, patch size, pool_type, "
        "rep_size, posemb) matches the checkpoint; to keep a param's init "
        "value instead (e.g. a new head), add a regex for it to dont_load.")
  return merged


def load(init_params: Tree, path_or_tree: Any, model_cfg: Any = None,
         dont_load: Sequence[str] = (), *,
         posemb_grid: Optional[Sequence[int]] = None,
         ckpt_posemb_grid: Optional[Sequence[int]] = None) -> Dict[str, Any]:
  """Loads a ViT checkpoint into the params of a bare `vit.Model`.

  Args:
    init_params: the model's initial params (arrays or `jax.ShapeDtypeStruct`
      from `jax.eval_shape`; the latter only where everything gets loaded).
    path_or_tree: npz path (`path.npz[:subkey]`) or an already-loaded tree.
    model_cfg: the `vit.Model` kwargs (dict or ConfigDict); `scan` is checked
      against the layout of `init_params`.
    dont_load: regexes; a model param whose name fully matches keeps its init
      value, a checkpoint param that matches is ignored.
    posemb_grid: the model's (h, w) patch grid; needed only when resampling
      to a non-square grid.
    ckpt_posemb_grid: the checkpoint's (h, w) grid; needed only when it is
      not square.

  Returns:
    A new nested dict with the same names as `init_params`: loaded leaves are
    numpy arrays in the init dtype, dont_load'ed ones the init values.

  Raises:
    ValueError: listing every shape mismatch, missing and unexpected param.
  """
  init_flat = npz_lib.flatten(init_params)
  tree, source = _prepare(init_flat, path_or_tree, model_cfg, posemb_grid,
                          ckpt_posemb_grid)
  if "head" in tree and not any(k.startswith("head/") for k in init_flat):
    logging.info("porting: dropping the checkpoint head (the model has none).")
  merged = _merge(init_flat, npz_lib.flatten(tree), dont_load, (),
                  _DROPPABLE, source)
  return npz_lib.unflatten(merged)


def model_only_patterns() -> Tuple[str, ...]:
  """Regexes of backbone params only adaptation models have (LoRA, adapters)."""
  # Imported here so this module stays importable while model.py imports it.
  from losa_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top
  return (model_lib.TRAINABLE_IN_BACKBONE["lora"],
          model_lib.TRAINABLE_IN_BACKBONE["adapter"])


def load_into_model(params: Tree, path: Any, backbone_cfg: Any = None,
                    dont_load: Sequence[str] = (), *,
                    posemb_grid: Optional[Sequence[int]] = None,
                    ckpt_posemb_grid: Optional[Sequence[int]] = None
                    ) -> Dict[str, Any]:
  """Loads a ViT checkpoint into an adaptation model's `{"backbone", ...}`.

  `params["backbone"]` gets the checkpoint ViT (without its head) under the
  same checks as `load`. LoRA / adapter leaves (`model_only_patterns()`) are
  model-only: taken from the checkpoint if it has them (a re-loaded export),
  else kept from init. The checkpoint's `head` replaces `params["head"]` only
  if every head shape matches and no head param is dont_load'ed; otherwise the
  init head is kept. Everything outside `backbone`/`head` (e.g. `side`) is
  kept from init.

  Args:
    params: the model's initial params, with a `backbone` sub-tree.
    path: npz path (`path.npz[:subkey]`), or an already-loaded ViT tree.
    backbone_cfg: the backbone's `vit.Model` kwargs (for the `scan` check).
    dont_load: regexes over checkpoint-side ViT names (`head/kernel`,
      `Transformer/encoderblock_0/...`), not prefixed with `backbone/`.
    posemb_grid, ckpt_posemb_grid: as in `load`.

  Returns:
    A new params dict.
  """
  if "backbone" not in params:
    raise ValueError("load_into_model expects the adaptation model's params "
                     f"({{'backbone', 'side', 'head'}}), got keys "
                     f"{sorted(params)}; for a bare ViT use porting.load.")
  init_flat = npz_lib.flatten(params["backbone"])
  tree, source = _prepare(init_flat, path, backbone_cfg, posemb_grid,
                          ckpt_posemb_grid)
  # The head stays in the merge as a droppable name (so a "head/.*" dont_load
  # counts as used) and is placed separately below.
  ckpt_head = tree.get("head")
  ckpt_flat = npz_lib.flatten(tree)
  extras = model_only_patterns()
  merged = _merge(init_flat, ckpt_flat, dont_load, extras,
                  (*_DROPPABLE, *extras), source)
  kept = [k for k in init_flat if k not in ckpt_flat and
          any(re.fullmatch(p, k) for p in extras)]
  if kept:
    logging.info("porting: %d model-only backbone params kept from init.",
                 len(kept))
  out = dict(params)
  out["backbone"] = npz_lib.unflatten(merged)
  out["head"] = _pick_head(params.get("head"), ckpt_head, dont_load)
  return out


def _pick_head(init_head: Optional[Tree], ckpt_head: Optional[Tree],
               dont_load: Sequence[str]) -> Optional[Tree]:
  """The checkpoint head if it fits the model's exactly, else the init head."""
  if ckpt_head is None:
    logging.info("porting: the checkpoint has no head; keeping the init head.")
    return init_head
  if init_head is None:
    logging.info("porting: dropping the checkpoint head (the model has none).")
    return None
  init_flat = npz_lib.flatten(init_head)
  ckpt_flat = npz_lib.flatten(ckpt_head)
  blocked = [f"head/{k}" for k in init_flat
             if any(p.fullmatch(f"head/{k}")
                    for p in _compile(dont_load, "dont_load"))]
  if blocked:
    logging.info("porting: dont_load covers %s; keeping the init head.",
                 blocked)
    return init_head
  fits = set(init_flat) == set(ckpt_flat) and all(
      _shape(ckpt_flat[k]) == _shape(v) for k, v in init_flat.items())
  if not fits:
    logging.info("porting: checkpoint head %s does not fit the model head %s;"
                 " keeping the (re-initialised) init head.",
                 {k: _shape(v) for k, v in ckpt_flat.items()},
                 {k: _shape(v) for k, v in init_flat.items()})
    return init_head
  logging.info("porting: copied the checkpoint head %s.",
               {k: _shape(v) for k, v in ckpt_flat.items()})
  return npz_lib.unflatten({
      k: np.asarray(ckpt_flat[k]).astype(v.dtype, copy=False)
      for k, v in init_flat.items()})


def save_vit(params: Tree, path: npz_lib.PathLike, *, compressed: bool = False,
             extras: str = "error") -> str:
  """Writes a ViT param tree as a big_vision-layout npz (readable by timm).

  Args:
    params: a bare `vit.Model` tree, or an adaptation model's params, in
      which case only `params["backbone"]` is written (its head reads the
      model's own features, which are not the ViT's for LoSA).
    path: destination npz.
    compressed: deflate the archive.
    extras: what to do with LoRA / adapter leaves, which big_vision's strict
      loader rejects: "error", "drop" (write the frozen ViT only) or "keep"
      (timm ignores them; `load_into_model` reads them back).

  Returns:
    The path written.
  """
  if extras not in ("error", "drop", "keep"):
    raise ValueError(f"extras={extras!r}: use 'error', 'drop' or 'keep'.")
  tree = params["backbone"] if "backbone" in params else params
  if "embedding" not in tree:
    raise ValueError("save_vit expects a ViT param tree (with 'embedding'), "
                     f"got top-level keys {sorted(tree)}.")
  flat = npz_lib.flatten(tree)
  pats = model_only_patterns()
  extra = [k for k in flat if any(re.fullmatch(p, k) for p in pats)]
  if extra and extras == "error":
    raise ValueError(
        f"{len(extra)} LoRA/adapter params {_listing(extra)} are not part of "
        "a big_vision ViT: pass extras='drop' to write the frozen ViT only, "
        "or extras='keep' to write them too.")
  if extras == "drop":
    flat = {k: v for k, v in flat.items() if k not in extra}
  return npz_lib.save_npz(npz_lib.unflatten(flat), path,
                          compressed=compressed)
