# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The cache itself: build once (atomically on disk), load, gather batches."""
import json
import os
import shutil
import time
import uuid
from typing import Any, Callable, Dict, Iterator, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import input_pipeline
from losa_jax.feature_cache import keys
from losa_jax.feature_cache import order
from losa_jax.models import model as model_lib
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


class FeatureCache:
  """Backbone features of every example of one source; see the module doc.

  Attributes:
    key: the cache key. meta: what was hashed, shapes, timings.
    num_examples: n. location: the folder (disk) or None (memory).
    built: True if this object computed the features (False: loaded).
  """

  def __init__(self, arrays: Dict[str, np.ndarray], meta: Dict[str, Any],
               location: Optional[str], built: bool):
    self._arrays = arrays
    self.meta = meta
    self.key = meta["key"]
    self.num_examples = int(meta["num_examples"])
    self.location = location
    self.built = built
    self.final_is_last_tap = bool(meta["final_is_last_tap"])

  # -- reading ------------------------------------------------------------------

  @property
  def nbytes(self) -> int:
    return int(sum(a.nbytes for a in self._arrays.values()))

  def gather(self, indices: np.ndarray) -> Dict[str, Any]:
    """Examples `indices` [B] -> {"image": {"taps": [B, L', N, D] (and
    "final": [B, N, D] float32)}, "label": [B] int32}, numpy, the taps in
    the cache dtype.

    Batch-major, so the batch sharding of `steps.jit_train_step` applies to
    every leaf; the step transposes the taps to [L', B, N, D].
    """
    indices = np.asarray(indices, np.int64)
    feats = {"taps": np.asarray(self._arrays["taps"][indices])}
    if not self.final_is_last_tap:
      feats["final"] = np.asarray(self._arrays["final"][indices])
    return {"image": feats,
            "label": np.asarray(self._arrays["labels"][indices], np.int32)}

  def batches(self, *, batch_size: int, seed: int, shuffle: bool = True,
              start_step: int = 0, drop_remainder: bool = True,
              prefetch: int = 2) -> Iterator[Dict[str, Any]]:
    """Infinite training batches in `input_pipeline.training`'s order."""
    idx = order.batch_indices(self.num_examples, batch_size=batch_size, seed=seed,
                        shuffle=shuffle, start_step=start_step,
                        drop_remainder=drop_remainder)
    return order.prefetched((self.gather(i) for i in idx), prefetch)

  # -- building -----------------------------------------------------------------

  @classmethod
  def get_or_create(cls, *, model: model_lib.Model, params, source, pp,
                    root: Optional[str], dtype: str = "bfloat16",
                    storage: str = "auto", memory_budget_mb: float = 2048,
                    batch_size: int = 32,
                    backbone_id: Optional[str] = None,
                    log: Callable[[str], None] = print) -> "FeatureCache":
    """Loads the cache for these inputs, or builds it.

    Args:
      model: the LoSA `Model`.
      params: its params (only params["backbone"] is used and hashed).
      source: a `datasets` Source; must support random access.
      pp: the TRAINING pp spec; refused if random.
      root: folder holding caches (needed unless storage="memory").
      dtype, storage, memory_budget_mb: see the module doc.
      batch_size: backbone batch size while building.
      backbone_id: extra identity of the backbone (e.g. the checkpoint's
        sha256), added to the key next to the params hash.
      log: progress printer.

    Raises:
      RandomPreprocessingError: the pp is random.
      keys.CacheError: wrong method, multi-process, streaming source, ...
    """
    if model.method != "losa":
      raise keys.CacheError(f"Feature caching needs method='losa', got "
                       f"{model.method!r}: other methods change the "
                       "backbone's features while training.")
    if dtype not in keys.DTYPES:
      raise ValueError(f"Feature cache dtype={dtype!r}: use one of {keys.DTYPES}.")
    if storage not in keys.STORAGES:
      raise ValueError(f"Feature cache storage={storage!r}: use one of "
                       f"{keys.STORAGES}.")
    if storage != "memory" and not root:
      raise ValueError("Feature cache: give a root folder (config."
                       "feature_cache.dir) or use storage='memory'.")
    if jax.process_count() > 1:
      raise keys.CacheError("The feature cache supports single-process training "
                       f"only (process_count={jax.process_count()}); set "
                       "config.feature_cache.enabled=False.")
    if source.table() is None:
      raise keys.CacheError(
          f"{source.name} is streamed (too big for random access), so the "
          "uncached order is a windowed shuffle a cache cannot reproduce; "
          "use a smaller split or set config.feature_cache.enabled=False.")
    keys.check_deterministic(pp, source)
    backbone = {"backbone": jax.device_get(params["backbone"])}
    parts = {
        "backbone_params_sha256": keys.params_fingerprint(backbone),
        "backbone_id": backbone_id,
        "data": keys.data_fingerprint(source),
        "pp": keys.pp_repr(pp),
        "model": keys.tap_config(model),
        "dtype": dtype,
    }
    key = keys.cache_key(parts)
    if root:
      found = cls.load(root, key)
      if found is not None:
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
    marker = read_marker(path)
    if marker != key:
      logging.warning("Feature cache %s is incomplete (no valid %s marker); "
                      "ignoring it and rebuilding.", path, keys.COMPLETE)
      return None
    try:
      with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
      arrays = {}
      for name, spec in meta["arrays"].items():
        a = np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r")
        if list(a.shape) != spec["shape"]:
          raise keys.CacheError(f"{name}.npy has shape {a.shape}, meta says "
                           f"{spec['shape']}")
        if spec["dtype"] == "bfloat16":
          a = a.view(_np_dtype("bfloat16"))
        arrays[name] = a
    except (OSError, ValueError, KeyError, keys.CacheError) as e:
      logging.warning("Feature cache %s is unreadable (%s); rebuilding.",
                      path, e)
      return None
    if meta.get("key") != key:
      return None
    return cls(arrays, meta, path, built=False)

  @classmethod
  def _build(cls, *, model, params, source, pp, root, key, parts, dtype,
             storage, budget, batch_size, log) -> "FeatureCache":
    t0 = time.time()
    cfg = model_lib.merged(model_lib.LOSA_DEFAULTS, model.losa, "losa")
    # The final features feed the head in float32 (`model.backbone_features`);
    # the last tap holds them exactly only when taps and cache are float32.
    final_is_last_tap = (cfg["tap"] == "block" and dtype == "float32"
                         and cfg["dtype"] == "float32")
    features = features_fn(model, dtype, final_is_last_tap)
    data = input_pipeline.evaluation(source, batch_size=batch_size, pp=pp)
    n = data.num_examples
    arrays, tmp, path = None, None, None
    written = 0
    try:
      for batch in data:
        real = int(np.sum(batch["_mask"]))
        if "label" not in batch:
          raise keys.CacheError(f"The training pp of {source.name} yields keys "
                           f"{sorted(batch)}, no 'label': keep it in the pp.")
        out = jax.device_get(features(params, batch["image"]))
        if final_is_last_tap and not bool(out.pop("same")):
          raise keys.CacheError("Internal: the last tap differs from the final "
                           "features; report this with the model config.")
        if arrays is None:
          shapes = {k: (n, *v.shape[1:]) for k, v in out.items()}
          shapes["labels"] = (n,)
          dtypes = {k: _ARRAY_DTYPES.get(k, dtype) for k in shapes}
          total = sum(int(np.prod(s)) * _np_dtype(dtypes[k]).itemsize
                      for k, s in shapes.items())
          to_disk = storage == "disk" or (storage == "auto" and total > budget)
          log(f"Feature cache: computing {n} examples x {shapes['taps'][1:]} "
              f"taps in {dtype} ({total / 2**20:.0f} MiB, "
              f"{'disk' if to_disk else 'memory'}).")
          if to_disk:
            os.makedirs(root, exist_ok=True)
            tmp = os.path.join(
                root, f".tmp-{key}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.makedirs(tmp)
            arrays = {}
            for k, s in shapes.items():
              arrays[k] = np.lib.format.open_memmap(
                  os.path.join(tmp, f"{k}.npy"), mode="w+",
                  dtype=_on_disk_dtype(dtypes[k]), shape=s)
          else:
            arrays = {k: np.empty(s, _np_dtype(dtypes[k]))
                      for k, s in shapes.items()}
        sl = slice(written, written + real)
        for k, v in out.items():
          v = np.asarray(v[:real])
          if tmp is not None and dtypes[k] == "bfloat16":
            v = v.view(np.uint16)
          arrays[k][sl] = v
        arrays["labels"][sl] = np.asarray(batch["label"][:real], np.int32)
        written += real
      if written != n:
        raise keys.CacheError(f"Feature cache: expected {n} examples from "
                         f"{source.name}, got {written}.")
      meta = {
          "key": key, "parts": parts, "num_examples": n, "dtype": dtype,
          "final_is_last_tap": final_is_last_tap,
          "arrays": {k: {"shape": list(a.shape), "dtype": dtypes[k]}
                     for k, a in arrays.items()},
          "build_seconds": time.time() - t0, "created": time.time(),
      }
      if tmp is None:
        log(f"Feature cache: built in memory in {meta['build_seconds']:.1f}s.")
        return cls(arrays, meta, None, built=True)
      for a in arrays.values():
        a.flush()
      del arrays
      path = cls._commit(tmp, root, key, meta)
      tmp = None
      log(f"Feature cache: wrote {path} in {meta['build_seconds']:.1f}s.")
    finally:
      if tmp is not None:          # failed or interrupted: leave nothing
        shutil.rmtree(tmp, ignore_errors=True)
    loaded = cls.load(root, key)
    if loaded is None:
      raise keys.CacheError(f"Feature cache {path} was written but cannot be read "
                       "back; check the disk.")
    loaded.built = True
    return loaded

  @staticmethod
  def _commit(tmp: str, root: str, key: str, meta: Dict[str, Any]) -> str:
    """meta + COMPLETE into `tmp`, then one rename to `root/key`."""
    for name in os.listdir(tmp):
      with open(os.path.join(tmp, name), "rb+") as f:
        os.fsync(f.fileno())
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=1, sort_keys=True, default=str)
      f.flush()
      os.fsync(f.fileno())
    with open(os.path.join(tmp, keys.COMPLETE), "w") as f:
      f.write(key + "\n")
      f.flush()
      os.fsync(f.fileno())
    io_lib.fsync_folder(tmp)
    final = os.path.join(root, key)
    if os.path.isdir(final) and read_marker(final) != key:
      # An incomplete folder under the final name (never written by us
      # non-atomically, but e.g. a half copy): move it aside first.
      trash = f"{final}.partial-{uuid.uuid4().hex[:8]}"
      os.rename(final, trash)
      shutil.rmtree(trash, ignore_errors=True)
    try:
      os.rename(tmp, final)
    except OSError:
      if read_marker(final) != key:
        raise
      # Another process committed the same key first; theirs is as good.
      shutil.rmtree(tmp, ignore_errors=True)
    io_lib.fsync_folder(root)
    return final


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


