# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Reading and writing big_vision-style `.npz` param files (flat `/` names).

The format is the one of every published big_vision / vision_transformer
checkpoint: one `np.savez` archive whose member names are the param paths
joined with `/` (`Transformer/encoderblock_3/MlpBlock_0/Dense_1/kernel`), no
pickles. bfloat16 arrays are stored as 2-byte void (`|V2`) because numpy has no
native bfloat16; readers re-view them as `ml_dtypes.bfloat16`, as big_vision's
`recover_dtype` and timm do.

    tree = load_npz("/ckpts/vit.npz")          # picks params/ or opt/target/
    img = load_npz("/ckpts/siglip.npz:img")    # a sub-tree (two-tower files)
    save_npz(tree, "/ckpts/copy.npz")          # atomic
"""
import collections.abc
import os
import re
import zipfile
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import ml_dtypes
import numpy as np

from losa_jax.utils import io as io_lib

PathLike = Union[str, os.PathLike]

# Prefixes under which full training checkpoints nest the params, in the order
# they are tried: optax-era big_vision, then the old flax.optim era.
PARAM_PREFIXES = ("params", "opt/target")

# A `:subkey` suffix is a `/`-separated path of identifiers (no dots, so a
# file extension is never mistaken for one).
_SUBKEY_RE = re.compile(r"[A-Za-z0-9_\-]+(?:/[A-Za-z0-9_\-]+)*")


def flatten(tree: Mapping[str, Any], sep: str = "/") -> Dict[str, Any]:
  """Nested mapping -> {"a/b/c": leaf}, keys in sorted order.

  Any non-mapping value is a leaf. Empty sub-mappings are dropped, as they
  cannot be stored in an npz.
  """
  flat = {}

  def visit(node, prefix):
    for key in sorted(node):
      if not isinstance(key, str):
        raise TypeError(f"Param names must be strings, got {key!r} under "
                        f"{prefix or '<root>'!r}.")
      if sep in key:
        raise ValueError(f"Param name {key!r} under {prefix or '<root>'!r} "
                         f"contains the separator {sep!r}; rename it.")
      name = f"{prefix}{sep}{key}" if prefix else key
      value = node[key]
      if isinstance(value, collections.abc.Mapping):
        visit(value, name)
      else:
        flat[name] = value

  visit(tree, "")
  return flat


def unflatten(flat: Mapping[str, Any], sep: str = "/") -> Dict[str, Any]:
  """{"a/b/c": leaf} -> nested dicts; the inverse of `flatten`."""
  tree: Dict[str, Any] = {}
  for name in sorted(flat):
    parts = name.split(sep)
    if not all(parts):
      raise ValueError(f"Bad param name {name!r}: empty path component.")
    node = tree
    for i, part in enumerate(parts[:-1]):
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise ValueError(f"{sep.join(parts[:i + 1])!r} is both a param and a "
                         f"prefix of {name!r}.")
    if parts[-1] in node:
      raise ValueError(f"{name!r} is both a param and a prefix of other "
                       "params.")
    node[parts[-1]] = flat[name]
  return tree


def split_path(path: PathLike) -> Tuple[str, Optional[str]]:
  """"/x/ckpt.npz:img" -> ("/x/ckpt.npz", "img"); no suffix -> (path, None).

  A suffix is only split off when the full string is not itself an existing
  file, so odd file names containing ':' still load.
  """
  path = os.fspath(path)
  head, sep, tail = path.rpartition(":")
  if sep and head and _SUBKEY_RE.fullmatch(tail) and not os.path.isfile(path):
    return head, tail
  return path, None


def recover_dtype(a: np.ndarray) -> np.ndarray:
  """Re-views 2-byte void arrays (how npz stores bfloat16) as bfloat16."""
  if a.dtype.kind == "V" and a.dtype.itemsize == 2 and a.dtype.names is None:
    return a.view(ml_dtypes.bfloat16)
  return a


def _read_flat(path: str) -> Dict[str, np.ndarray]:
  """All arrays of one npz file, by member name, with bf16 recovered."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"No checkpoint file at {path!r}: check the path (a ':subkey' suffix "
        "selects a sub-tree of an existing .npz).")
  try:
    data = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(
        f"Cannot read {path!r} as an .npz param archive ({e}). It is corrupt "
        "or not an npz file: re-download it, or re-save it with "
        "losa_jax.utils.npz.save_npz.") from e
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError(
        f"{path!r} holds a single array (.npy), not an .npz param archive: "
        "save params with losa_jax.utils.npz.save_npz (flat '/'-joined names).")
  try:
    return {k: recover_dtype(data[k]) for k in data.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(
        f"{path!r} is a damaged .npz archive ({e}): re-download it, or "
        "re-save it with losa_jax.utils.npz.save_npz.") from e
  finally:
    data.close()


def _subtree(tree: Mapping[str, Any], key: str, what: str) -> Any:
  node = tree
  for i, part in enumerate(key.split("/")):
    if not isinstance(node, collections.abc.Mapping) or part not in node:
      where = "/".join(key.split("/")[:i]) or "<root>"
      have = sorted(node) if isinstance(node, collections.abc.Mapping) else []
      raise ValueError(f"{what}: no {part!r} under {where}; available: {have}.")
    node = node[part]
  return node


def load_npz(path: PathLike, *, find_params: bool = True) -> Dict[str, Any]:
  """Loads an npz param file into a nested dict of numpy arrays (bfloat16
  leaves as `ml_dtypes.bfloat16`).

  Args:
    path: file path, optionally with a `:subkey` suffix (e.g. `ckpt.npz:img`)
      that selects a sub-tree after the prefix below is resolved.
    find_params: return only the sub-tree under `PARAM_PREFIXES` (full
      training checkpoints) where the archive has one.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a readable npz, or `subkey` is absent.
  """
  fname, subkey = split_path(path)
  flat = _read_flat(fname)
  for prefix in PARAM_PREFIXES if find_params else ():
    inner = {k[len(prefix) + 1:]: v for k, v in flat.items()
             if k.startswith(prefix + "/")}
    if inner:
      flat = inner
      break
  tree = unflatten(flat)
  if subkey:
    tree = _subtree(tree, subkey, f"Sub-key {subkey!r} of {fname!r}")
    if not isinstance(tree, collections.abc.Mapping):
      tree = {subkey.split("/")[-1]: tree}
  return tree


def save_npz(tree: Mapping[str, Any], path: PathLike,
             compressed: bool = False) -> str:
  """Writes `tree` (nested arrays: numpy, jax or scalars) as an npz with
  flat `/`-joined names to `path` (no extension appended), atomically
  (`io.atomic_write`); returns `path`. compressed: deflate the members,
  like `savez_compressed`.
  """
  path = os.fspath(path)
  flat = flatten(tree)
  for k, v in flat.items():
    flat[k] = np.asarray(v)   # jax arrays to host; ml_dtypes dtypes kept
    if flat[k].dtype == object:
      raise TypeError(f"Cannot store an object array (got {type(v).__name__}) "
                      "in an npz without pickles.")
  mode = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
  with io_lib.atomic_write(path, "wb") as f:
    with zipfile.ZipFile(f, "w", compression=mode, allowZip64=True) as zf:
      for name, arr in flat.items():
        # Same member layout as np.savez: "<name>.npy" holding an .npy file.
        with zf.open(name + ".npy", "w", force_zip64=True) as member:
          np.lib.format.write_array(member, arr, allow_pickle=False)
  return path
