# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Loads big_vision / vision_transformer ViT checkpoints into losa_jax params.

Equivalent to big_vision's `vit.load`, with stricter checks: `load` fills a
bare `vit.Model`'s params, `load_into_model` an adaptation model's
{"backbone", "side", "head"}. The pipeline: read the npz (`npz.load_npz`)
-> rename older layouts (`layouts.fix_old_checkpoints`) -> convert between
the scanned and python-loop block layouts -> drop `pre_logits` if the model
has none -> resample `pos_embedding` to the model's patch grid -> merge into
the init params, checking that names and shapes agree exactly.
"""
import collections.abc
import re
from typing import (Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple,
                    Union)

from absl import logging
import numpy as np

from losa_jax.models import layouts
from losa_jax.models import vit
from losa_jax.utils import npz as npz_lib

Tree = Mapping[str, Any]


# Checkpoint params the model may lack without it being an error: `pre_logits`
# (the 2020 i21k files carry one that transfer models drop) and `head` (the
# caller decides: copied when it fits, re-initialised otherwise).
_DROPPABLE = (r"pre_logits/.*", r"head/.*")
# Backbone params only adaptation models have (LoRA, adapters).
_MODEL_ONLY = tuple(vit.PEFT_PARAM_PATTERNS.values())


def read_checkpoint(path_or_tree: Any) -> Tuple[Dict[str, Any], str]:
  """(checkpoint tree, a name for messages) of an npz path or a tree (its
  dict structure copied, leaves shared)."""
  if isinstance(path_or_tree, collections.abc.Mapping):
    return layouts.copy_tree(path_or_tree), "the given param tree"
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
    lengths = {layouts.shape(v)[0] for k, v in init_flat.items()
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
  tree, source = read_checkpoint(path_or_tree)
  init_pe = init_flat.get("pos_embedding")
  tree = layouts.fix_old_checkpoints(
      tree, expected_posemb_len=None if init_pe is None else
      layouts.shape(init_pe)[1])

  scan = _is_scan(init_flat)
  cfg_scan = None if model_cfg is None else model_cfg.get("scan")
  if cfg_scan is not None and bool(cfg_scan) != scan:
    raise ValueError(f"model_cfg['scan']={cfg_scan} but init_params are in "
                     f"the {'scanned' if scan else 'python-loop'} layout: "
                     "initialise the model from the same config.")
  tree = (layouts.loop_to_scan(tree) if scan else
          layouts.scan_to_loop(tree, _depth(init_flat)))

  if "pre_logits" in tree and not any(
      k.startswith("pre_logits/") for k in init_flat):
    logging.info("porting: dropping the checkpoint's pre_logits (the model "
                 "has no rep_size).")
    del tree["pre_logits"]

  pe = tree.get("pos_embedding")
  if pe is not None and init_pe is not None:
    (_, n_old, d_old), (_, n_new, d_new) = layouts.shape(pe), layouts.shape(init_pe)
    grids_differ = (posemb_grid is not None and ckpt_posemb_grid is not None
                    and layouts.as_grid(posemb_grid) != layouts.as_grid(ckpt_posemb_grid))
    if d_old == d_new and (n_old != n_new or grids_differ):
      new_grid = (layouts.as_grid(posemb_grid) if posemb_grid is not None else
                  layouts.square_grid(n_new, "the model posemb",
                               "pass posemb_grid=(h, w) of the model"))
      tree["pos_embedding"] = layouts.resample_posemb(pe, new_grid, ckpt_posemb_grid)
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
  """{name: array} for every name of `init_flat` (the model's params by flat
  name, values or ShapeDtypeStructs), from `ckpt_flat` cast to the init
  dtype, with strict checks. Regexes (full match): `dont_load`, names kept
  from init / ignored; `optional`, model names kept from init when the
  checkpoint lacks them (LoRA); `droppable`, checkpoint names the model may
  lack. `source` names the checkpoint in messages.
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
    if layouts.shape(value) != layouts.shape(init):
      shape_errors.append(
          f"checkpoint param {name} has shape {layouts.shape(value)} but the model "
          f"expects {layouts.shape(init)}")
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
                 f"checkpoint: {layouts.listing(missing)}")
  if unexpected:
    lines.append(f"{len(unexpected)} checkpoint param(s) the model does not "
                 f"have: {layouts.listing(unexpected)}")
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


def load_into_model(params: Tree, path: Any, backbone_cfg: Any = None,
                    dont_load: Sequence[str] = (), *,
                    posemb_grid: Optional[Sequence[int]] = None,
                    ckpt_posemb_grid: Optional[Sequence[int]] = None
                    ) -> Dict[str, Any]:
  """`load` for an adaptation model's params (a new dict).

  `params["backbone"]` gets the checkpoint ViT (without its head); LoRA /
  adapter leaves (`_MODEL_ONLY`) come from the checkpoint if it
  has them (a re-loaded export), else from init. The checkpoint's `head`
  replaces `params["head"]` only if every head shape matches and no head
  param is dont_load'ed. Everything else (e.g. `side`) is kept from init.
  `dont_load` regexes name checkpoint-side ViT params (`head/kernel`), not
  prefixed with `backbone/`; the other arguments are `load`'s.
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
  extras = _MODEL_ONLY
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
  pats = _compile(dont_load, "dont_load")
  blocked = [f"head/{k}" for k in init_flat
             if any(p.fullmatch(f"head/{k}") for p in pats)]
  if blocked:
    logging.info("porting: dont_load covers %s; keeping the init head.",
                 blocked)
    return init_head
  init_shapes, ckpt_shapes = ({k: layouts.shape(v) for k, v in f.items()}
                              for f in (init_flat, ckpt_flat))
  if init_shapes != ckpt_shapes:
    logging.info("porting: checkpoint head %s does not fit the model head %s;"
                 " keeping the (re-initialised) init head.", ckpt_shapes,
                 init_shapes)
    return init_head
  logging.info("porting: copied the checkpoint head %s.", ckpt_shapes)
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
  extra = [k for k in flat if any(re.fullmatch(p, k) for p in _MODEL_ONLY)]
  if extra and extras == "error":
    raise ValueError(
        f"{len(extra)} LoRA/adapter params {layouts.listing(extra)} are not part of "
        "a big_vision ViT: pass extras='drop' to write the frozen ViT only, "
        "or extras='keep' to write them too.")
  if extras == "drop":
    flat = {k: v for k, v in flat.items() if k not in extra}
  return npz_lib.save_npz(npz_lib.unflatten(flat), path,
                          compressed=compressed)
