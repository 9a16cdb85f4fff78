# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The cache itself: build once (atomically on disk), load, gather batches."""
import os
import shutil
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import input_pipeline
from losa_jax.feature_cache import keys
from losa_jax.feature_cache import order
from losa_jax.models import model as model_lib
from losa_jax.parallel import distributed
from losa_jax.utils import io as io_lib

# --- storage ----------------------------------------------------------------------


def _np_dtype(name: str):
  return np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)


# Arrays whose dtype is not the cache's: the labels, and the final features,
# which the head reads in float32 whatever the taps' storage.
_ARRAY_DTYPES = {"labels": "int32", "final": "float32"}


def _on_disk_dtype(name: str):
  # .npy has no bfloat16: store its bits as uint16 and view them back.
  return np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)


def read_marker(path: str) -> Optional[str]:
  """The key in `path/COMPLETE`, or None if the folder is not complete."""
  try:
    with open(os.path.join(path, keys.COMPLETE)) as f:
      return f.read().strip()
  except OSError:
    return None


def part_name(process_index: int, process_count: int) -> str:
  return f"part-{process_index:05d}-of-{process_count:05d}"


def _write_marked(folder: str, key: str, meta: Dict[str, Any]):
  """meta.json, then the COMPLETE marker (holding `key`), both fsynced."""
  io_lib.write_json(os.path.join(folder, "meta.json"), meta)
  io_lib.write_text(os.path.join(folder, keys.COMPLETE), key + "\n")
  io_lib.fsync_folder(folder)


class FeatureCache:
  """Backbone features of every example of one source; see the module doc.

  The examples live in parts (one per building process), each with the
  indices [n_p] of its rows; every index of [0, n) is in exactly one part,
  checked when the cache is opened.

  Attributes:
    key: the cache key. meta: what was hashed, shapes, parts, timings.
    num_examples: n. location: the folder (disk) or None (memory).
    built: True if this object computed features (False: all loaded).
  """

  def __init__(self, parts: List[Dict[str, np.ndarray]], meta: Dict[str, Any],
               location: Optional[str], built: bool):
    self._parts = parts
    self.meta = meta
    self.key = meta["key"]
    self.num_examples = n = int(meta["num_examples"])
    self.location = location
    self.built = built
    self.final_is_last_tap = bool(meta["final_is_last_tap"])
    self._part = np.full(n, -1, np.int32)
    self._row = np.zeros(n, np.int64)
    for k, part in enumerate(parts):
      idx = np.asarray(part["indices"], np.int64)
      if idx.size and (idx.min() < 0 or idx.max() >= n
                       or np.any(self._part[idx] >= 0)
                       or len(np.unique(idx)) != idx.size):
        raise keys.CacheError(
            f"Feature cache {location}: part {k} holds indices outside [0, "
            f"{n}) or rows another part holds; delete the folder.")
      self._part[idx] = k
      self._row[idx] = np.arange(idx.size)
    missing = np.flatnonzero(self._part < 0)
    if missing.size:
      raise keys.CacheError(
          f"Feature cache {location}: {missing.size} of {n} examples are in "
          f"no part (e.g. index {int(missing[0])}); a part is missing.")

  # -- reading ------------------------------------------------------------------

  @property
  def nbytes(self) -> int:
    return int(sum(a.nbytes for p in self._parts for k, a in p.items()
                   if k != "indices"))

  def _take(self, name: str, indices: np.ndarray) -> np.ndarray:
    part, row = self._part[indices], self._row[indices]
    if len(self._parts) == 1:
      return np.asarray(self._parts[0][name][row])
    first = self._parts[0][name]
    out = np.empty((len(indices),) + first.shape[1:], first.dtype)
    for k in np.unique(part):
      sel = part == k
      out[sel] = self._parts[k][name][row[sel]]
    return out

  def gather(self, indices: np.ndarray) -> Dict[str, Any]:
    """Examples `indices` [B] -> {"image": {"taps": [B, L', N, D] (and
    "final": [B, N, D] float32)}, "label": [B] int32}, numpy, the taps in
    the cache dtype, whichever part holds each row.

    Batch-major, so the batch sharding of `steps.jit_train_step` applies to
    every leaf; the step transposes the taps to [L', B, N, D].
    """
    indices = np.asarray(indices, np.int64)
    feats = {"taps": self._take("taps", indices)}
    if not self.final_is_last_tap:
      feats["final"] = self._take("final", indices)
    return {"image": feats,
            "label": self._take("labels", indices).astype(np.int32)}

  def batches(self, *, batch_size: int, seed: int, shuffle: bool = True,
              start_step: int = 0, drop_remainder: bool = True,
              prefetch: int = 2, process_index: Optional[int] = None,
              process_count: Optional[int] = None
              ) -> Iterator[Dict[str, Any]]:
    """Infinite training batches in `input_pipeline.training`'s order: this
    process's rows [p * b, (p + 1) * b) of each global batch (b = batch_size
    // P; default: this JAX process of all)."""
    p = jax.process_index() if process_index is None else process_index
    num = jax.process_count() if process_count is None else process_count
    local = batch_size // num
    idx = order.batch_indices(self.num_examples, batch_size=batch_size,
                              seed=seed, shuffle=shuffle,
                              start_step=start_step,
                              drop_remainder=drop_remainder)
    return order.prefetched(
        (self.gather(i[p * local:(p + 1) * local]) for i in idx), prefetch)

  # -- building -----------------------------------------------------------------

  @classmethod
  def get_or_create(cls, *, model: model_lib.Model, params, source, pp,
                    root: Optional[str], dtype: str = "bfloat16",
                    storage: str = "auto", memory_budget_mb: float = 2048,
                    batch_size: int = 32,
                    backbone_id: Optional[str] = None,
                    log: Callable[[str], None] = print) -> "FeatureCache":
    """Loads the cache for these inputs, or builds it.

    With several JAX processes every process builds the part of the rows it
    owns (`input_pipeline.evaluation`'s sharding) under the shared `root`,
    and reads any row afterwards.

    Args:
      model: the LoSA `Model`.
      params: its params (only params["backbone"] is used and hashed).
      source: a `datasets` Source; must support random access.
      pp: the TRAINING pp spec; refused if random.
      root: folder holding caches (needed unless storage="memory"); with
        several processes, a folder every process reads and writes.
      dtype, storage, memory_budget_mb: see the module doc.
      batch_size: GLOBAL backbone batch size while building.
      backbone_id: extra identity of the backbone (e.g. the checkpoint's
        sha256), added to the key next to the params hash.
      log: progress printer.

    Raises:
      RandomPreprocessingError: the pp is random.
      keys.CacheError: wrong method, streaming source, memory storage with
        several processes, processes that disagree on the key, a part that
        is missing after the build, ...
    """
    _check_options(model, dtype, storage, root)
    if source.table() is None:
      raise keys.CacheError(
          f"{source.name} is streamed (too big for random access), so the "
          "uncached order is a windowed shuffle a cache cannot reproduce; "
          "store it as ArrayRecord, use a smaller split or set "
          "config.feature_cache.enabled=False.")
    keys.check_deterministic(pp, source)
    backbone = {"backbone": distributed.fetch(params["backbone"])}
    parts = {
        "backbone_params_sha256": keys.params_fingerprint(backbone),
        "backbone_id": backbone_id,
        "data": keys.data_fingerprint(source),
        "pp": keys.pp_repr(pp),
        "model": keys.tap_config(model),
        "dtype": dtype,
    }
    key = keys.cache_key(parts)
    # Different keys would make each process build and read its own cache.
    distributed.agree(int(key[:15], 16), "the feature cache key (backbone, "
                      "data, pp and model hash); each process must load the "
                      "same backbone and data")
    if root:
      found = cls.load(root, key)
      if distributed.agree(int(found is not None), f"whether the feature "
                           f"cache {os.path.join(root, key)} is complete"):
        log(f"Feature cache: using {found.location} ({found.num_examples} "
            f"examples, {found.nbytes / 2**20:.0f} MiB).")
        return found
    return cls._build(model=model, params=backbone, source=source, pp=pp,
                      root=root, key=key, parts=parts, dtype=dtype,
                      storage=storage, budget=memory_budget_mb * 2**20,
                      batch_size=batch_size, log=log)

  @classmethod
  def load(cls, root: str, key: str) -> Optional["FeatureCache"]:
    """The complete disk cache `root/key`, or None (missing or partial)."""
    path = os.path.join(root, key)
    if not os.path.isdir(path):
      return None
    if read_marker(path) != key:
      logging.warning("Feature cache %s is incomplete (no valid %s marker); "
                      "ignoring it and rebuilding.", path, keys.COMPLETE)
      return None
    try:
      return cls.from_folder(path, key)
    except (OSError, ValueError, KeyError, keys.CacheError) as e:
      logging.warning("Feature cache %s is unreadable (%s); rebuilding.",
                      path, e)
      return None

  @classmethod
  def from_folder(cls, path: str, key: str,
                  meta: Optional[Dict[str, Any]] = None) -> "FeatureCache":
    """The cache in `path` from the parts its meta.json (or `meta`) lists;
    raises CacheError naming the first part that does not verify."""
    if meta is None:
      meta = io_lib.read_json(os.path.join(path, "meta.json"))
    if meta.get("key") != key:
      raise keys.CacheError(f"{path}/meta.json holds key {meta.get('key')}, "
                            f"not {key}.")
    parts = []
    for name in meta["parts"]:
      arrays, specs = _open_part(os.path.join(path, name), key)
      for k, spec in meta["arrays"].items():
        if k not in specs or specs[k][1] != spec["dtype"] or list(
            specs[k][0][1:]) != list(spec["shape"][1:]):
          raise keys.CacheError(
              f"Feature cache part {os.path.join(path, name)} holds {k} as "
              f"{specs.get(k)}, the cache says {spec}; delete the part.")
      parts.append(arrays)
    return cls(parts, meta, path, built=False)

  @classmethod
  def _build(cls, *, model, params, source, pp, root, key, parts, dtype,
             storage, budget, batch_size, log) -> "FeatureCache":
    t0 = time.time()
    p, num = jax.process_index(), jax.process_count()
    tap, _, tap_dtype = model.tap_key()
    # The final features feed the head in float32 (`model.backbone_features`);
    # the last tap holds them exactly only when taps and cache are float32.
    final_is_last_tap = (tap == "block" and dtype == "float32"
                         and tap_dtype == "float32")
    data = input_pipeline.evaluation(source, batch_size=batch_size, pp=pp,
                                     process_index=p, process_count=num)
    n = data.num_examples
    if num > 1:   # Every process reads rows that others computed.
      storage = "disk"
    path = os.path.join(root, key) if root else None
    part = os.path.join(path, part_name(p, num)) if path else None
    specs = _reusable_part(part, key, log) if part else None
    if specs is not None:
      arrays, computed = None, False
    else:
      arrays, specs = _compute_part(
          data=data, features=features_fn(model, dtype, final_is_last_tap),
          params=params, source=source, dtype=dtype,
          final_is_last_tap=final_is_last_tap, storage=storage,
          budget=budget, part=part, key=key,
          indices=own_indices(n, batch_size, p, num), log=log)
      computed = True
    meta = {
        "key": key, "parts": [part_name(i, num) for i in range(num)],
        "data_parts": parts, "num_examples": n,
        "dtype": dtype, "final_is_last_tap": final_is_last_tap,
        "arrays": {k: {"shape": [n, *sh[1:]], "dtype": d}
                   for k, (sh, d) in specs.items() if k != "indices"},
        "build_seconds": time.time() - t0, "created": time.time(),
    }
    if arrays is not None:
      log(f"Feature cache: built in memory in {meta['build_seconds']:.1f}s.")
      return cls([arrays], meta, None, built=True)
    return cls._finish(path, key, meta, built=computed, log=log)

  @classmethod
  def _finish(cls, path, key, meta, *, built, log) -> "FeatureCache":
    """After every process wrote its part: verify all parts, mark the
    folder complete (process 0), and open it on every process."""
    distributed.sync(f"feature_cache_parts_{key}")
    try:
      cache, problem = cls.from_folder(path, key, meta=meta), ""
    except (OSError, ValueError, KeyError, keys.CacheError) as e:
      cache, problem = None, str(e)
    if not distributed.agree(int(cache is not None), "whether every part of "
                             f"the feature cache {path} verifies"):
      raise keys.CacheError(
          f"Feature cache {path} does not verify after the build: "
          f"{problem or 'another process found a bad part.'} Is "
          "config.feature_cache.dir on a filesystem every process reads?")
    if jax.process_index() == 0 and read_marker(path) != key:
      _write_marked(path, key, meta)
    distributed.sync(f"feature_cache_done_{key}")
    cache.built = built
    log(f"Feature cache: wrote {path} in {meta['build_seconds']:.1f}s.")
    return cache


def _check_options(model, dtype: str, storage: str, root: Optional[str]):
  if model.method not in model_lib.SIDE_METHODS:
    raise keys.CacheError(f"Feature caching needs a side method "
                          f"{model_lib.SIDE_METHODS}, got {model.method!r}: "
                          "other methods change the backbone's features "
                          "while training.")
  keys.check_choices(dtype, storage, "FeatureCache.get_or_create")
  if storage != "memory" and not root:
    raise ValueError("Feature cache: give a root folder (config."
                     "feature_cache.dir) or use storage='memory'.")
  if storage == "memory" and jax.process_count() > 1:
    raise keys.CacheError(
        "config.feature_cache.storage='memory' with "
        f"{jax.process_count()} processes: each would hold only its own "
        "rows. Use storage='disk' (or 'auto') with a feature_cache.dir that "
        "every process reads.")


def _open_part(folder: str, key: str
               ) -> Tuple[Dict[str, np.ndarray], Dict[str, Tuple]]:
  """A complete part's arrays (memory-mapped) and indices, and its
  {name: (shape, dtype)}; CacheError if its marker or shapes are off."""
  if read_marker(folder) != key:
    raise keys.CacheError(f"Feature cache part {folder} is missing or "
                          f"incomplete (no {keys.COMPLETE} marker holding "
                          f"{key}).")
  specs = {k: (tuple(v["shape"]), v["dtype"]) for k, v in io_lib.read_json(
      os.path.join(folder, "meta.json"))["arrays"].items()}
  out = {"indices": np.load(os.path.join(folder, "indices.npy"))}
  for name, (shape, dtype) in specs.items():
    a = np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r")
    if a.shape != shape or len(a) != len(out["indices"]):
      raise keys.CacheError(f"{folder}/{name}.npy has shape {a.shape}, its "
                            f"meta.json says {shape} ({len(out['indices'])} "
                            "rows); delete the part.")
    out[name] = a.view(_np_dtype("bfloat16")) if dtype == "bfloat16" else a
  return out, specs


def own_indices(n: int, batch_size: int, process_index: int,
                process_count: int) -> np.ndarray:
  """The rows [k] of [0, n) that process p reads in `evaluation` order:
  rows [p * b, (p + 1) * b) of each global batch, b = batch_size // P."""
  b = batch_size // process_count
  starts = np.arange(-(-n // batch_size), dtype=np.int64) * batch_size
  idx = (starts[:, None] + process_index * b + np.arange(b)).reshape(-1)
  return idx[idx < n]


def _compute_part(*, data, features, params, source, dtype,
                  final_is_last_tap, storage, budget, part, key, indices,
                  log) -> Tuple[Optional[Dict[str, np.ndarray]], Dict]:
  """Runs the backbone over this process's rows of `data` (`indices`):
  (arrays incl. "indices", or None once written to `part` on disk;
  {name: (shape, dtype)}). A disk part is written into a temporary folder
  and renamed to `part` once complete, so a folder named `part` is whole."""
  arrays, tmp, written = None, None, 0
  try:
    for batch in data:
      real = int(np.sum(batch["_mask"]))
      if "label" not in batch:
        raise keys.CacheError(f"The training pp of {source.name} yields keys "
                              f"{sorted(batch)}, no 'label': keep it in the "
                              "pp.")
      if real == 0:
        continue
      out = jax.device_get(features(params, batch["image"]))
      if final_is_last_tap and not bool(out.pop("same")):
        raise keys.CacheError("Internal: the last tap differs from the final "
                              "features; report this with the model config.")
      if arrays is None:
        specs = {k: ((len(indices), *v.shape[1:]),
                     _ARRAY_DTYPES.get(k, dtype)) for k, v in out.items()}
        specs["labels"] = ((len(indices),), "int32")
        total = sum(int(np.prod(sh)) * _np_dtype(d).itemsize
                    for sh, d in specs.values())
        to_disk = storage == "disk" or (storage == "auto" and total > budget)
        log(f"Feature cache: computing {len(indices)} examples x "
            f"{specs['taps'][0][1:]} taps in {dtype} ({total / 2**20:.0f} "
            f"MiB, {'disk' if to_disk else 'memory'}).")
        if to_disk:
          os.makedirs(os.path.dirname(part), exist_ok=True)
          tmp = f"{part}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
          os.makedirs(tmp)
          arrays = {k: np.lib.format.open_memmap(
              os.path.join(tmp, f"{k}.npy"), mode="w+",
              dtype=_on_disk_dtype(d), shape=sh)
                    for k, (sh, d) in specs.items()}
        else:
          arrays = {k: np.empty(sh, _np_dtype(d))
                    for k, (sh, d) in specs.items()}
      sl = slice(written, written + real)
      for k, v in out.items():
        v = np.asarray(v[:real])
        arrays[k][sl] = v.view(np.uint16) if (
            tmp is not None and specs[k][1] == "bfloat16") else v
      arrays["labels"][sl] = np.asarray(batch["label"][:real], np.int32)
      written += real
    if written != len(indices):
      raise keys.CacheError(f"Feature cache: expected {len(indices)} "
                            f"examples of {source.name}, got {written}.")
    arrays["indices"] = indices
    if tmp is None:
      return arrays, specs
    np.save(os.path.join(tmp, "indices.npy"), indices)
    for a in arrays.values():
      if isinstance(a, np.memmap):
        a.flush()
    for name in os.listdir(tmp):
      with open(os.path.join(tmp, name), "rb+") as f:
        os.fsync(f.fileno())
    _write_marked(tmp, key, {"key": key, "arrays": {
        k: {"shape": list(sh), "dtype": d} for k, (sh, d) in specs.items()}})
    _rename_into(tmp, part, key)
    tmp = None
    return None, specs
  finally:
    if tmp is not None:          # failed or interrupted: leave nothing
      shutil.rmtree(tmp, ignore_errors=True)


def _reusable_part(part: str, key: str, log) -> Optional[Dict[str, Tuple]]:
  """The specs of this process's part if a complete one verifies (a build
  that stopped after it); a marked part that does not verify is removed."""
  if read_marker(part) != key:
    return None
  try:
    specs = _open_part(part, key)[1]
  except (OSError, ValueError, KeyError, keys.CacheError) as e:
    log(f"Feature cache: {part} does not verify ({e}); recomputing it.")
    _discard(part)
    return None
  log(f"Feature cache: {part} is complete; reusing it.")
  return specs


def _discard(folder: str):
  """Moves `folder` aside in one rename, then deletes it."""
  trash = f"{folder}.partial-{uuid.uuid4().hex[:8]}"
  os.rename(folder, trash)
  shutil.rmtree(trash, ignore_errors=True)


def _rename_into(tmp: str, final: str, key: str):
  """One rename of a complete folder to `final`, moving an incomplete one
  aside first; another process's complete `final` is as good as ours."""
  if os.path.isdir(final) and read_marker(final) != key:
    _discard(final)
  try:
    os.rename(tmp, final)
  except OSError:
    if read_marker(final) != key:
      raise
    shutil.rmtree(tmp, ignore_errors=True)
  io_lib.fsync_folder(os.path.dirname(final))


_FEATURE_FNS: Dict[str, Callable] = {}


def features_fn(model, dtype: str, final_is_last_tap: bool) -> Callable:
  """Jitted (backbone params, images [B, H, W, 3]) -> batch-major features.

  Memoised by the model's repr (all its fields) so rebuilding a cache for
  the same model does not recompile.
  """
  memo = f"{model!r}|{dtype}|{final_is_last_tap}"
  if memo not in _FEATURE_FNS:
    jdtype = jnp.dtype(dtype)

    @jax.jit
    def features(p, images):
      out = model.apply({"params": p}, images, train=False, taps_only=True)
      feats = {"taps": jnp.swapaxes(out["taps"], 0, 1).astype(jdtype)}
      if final_is_last_tap:
        # Guard for the storage saving: the last tap IS the final residual
        # stream; checked on every batch, it costs nothing.
        feats["same"] = jnp.array_equal(
            out["taps"][-1].astype(jnp.float32), out["final"])
      else:
        feats["final"] = out["final"].astype(jnp.float32)
      return feats

    _FEATURE_FNS[memo] = features
  return _FEATURE_FNS[memo]
