# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Backbone feature cache: run the frozen backbone once per example, not once per epoch.

LoSA's backbone never sees the side network, so its taps are a fixed function
of the (preprocessed) image. When the training pp has no random op, every
epoch feeds the backbone exactly the same inputs, and the taps can be
computed once and reused (docs/method.md, section 3.2). Training then runs
only the side network and the head.

What is stored, per example i (the index in the source's fixed order):

    taps[i]    [L', N, D]  backbone taps (`Model(..., taps_only=True)`),
                           in `dtype` (bfloat16 by default)
    final[i]   [N, D]      the last block's residual stream; only stored
                           when it is not the last tap (tap != "block")
    labels[i]  []          int32, the pp's "label"

Where: in host memory when the whole cache fits `memory_budget_mb`
(`storage="auto"`), else as memory-mapped .npy files under
`<dir>/<key>/`. `key` hashes everything the features depend on: the backbone
params (their bytes), the data source (name, split, count, a hash of the raw
examples), the pp spec, the model's backbone and tap config, the image shape
and the cache dtype; any change gives a new key and therefore a rebuild.

A disk cache is written atomically: into `<dir>/.tmp-<key>-<pid>-<rand>/`,
then `meta.json` and a `COMPLETE` marker (holding the key), then one rename
to `<dir>/<key>/`. A folder without a valid marker is never read.

Training order: `batch_indices` reproduces `input_pipeline.training`'s
random-access order (`epoch_permutation(seed, epoch, n)`, the same
drop-remainder and resume arithmetic), so a cached run visits the same
examples in the same order as an uncached one and the two can resume each
other. `train_step` is `steps.train_step_fn` itself (same loss, optimizer,
masks, metrics), fed features instead of images.

Config (`config.feature_cache`, see DEFAULTS):
  enabled: train from the cache (LoSA only).
  dir: cache root; default `<workdir>/feature_cache`.
  dtype: "bfloat16" | "float16" | "float32".
  memory_budget_mb: in-memory limit for storage="auto".
  storage: "auto" | "memory" | "disk".
  batch_size: backbone batch size while building (default input.batch_size).
"""
import hashlib
import json
import os
import queue
import shutil
import threading
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax import input_pipeline
from losa_jax import pp as pp_lib
from losa_jax import sharding as sharding_lib
from losa_jax import steps
from losa_jax import tree as tree_lib
from losa_jax.models import model as model_lib
from losa_jax.models import side as side_lib

FORMAT_VERSION = 1
COMPLETE = "COMPLETE"
DTYPES = ("bfloat16", "float16", "float32")
STORAGES = ("auto", "memory", "disk")
DEFAULTS = dict(enabled=False, dir=None, dtype="bfloat16",
                memory_budget_mb=2048, storage="auto", batch_size=None)

# pp ops of losa_jax.pp that draw from the per-example `_seed`. Ops named
# random*/rand_*/*flip*/*jitter*/*augment* are treated as random as well;
# `find_random_ops` also catches any other op by running it with two seeds.
RANDOM_PP_OPS = ("random_crop", "flip_lr")
_RANDOM_HINTS = ("random", "rand_", "flip", "jitter", "augment", "mixup",
                 "cutmix", "inception_crop")


class RandomPreprocessingError(ValueError):
  """The training pp is random, so backbone features differ every epoch."""


class CacheError(RuntimeError):
  """A feature cache cannot be built or used (the message says why)."""


def options(config) -> Dict[str, Any]:
  """config.feature_cache merged over DEFAULTS, validated."""
  given = dict(config.get("feature_cache") or {})
  opts = model_lib.merged(DEFAULTS, given, "config.feature_cache")
  if opts["dtype"] not in DTYPES:
    raise ValueError(f"config.feature_cache.dtype={opts['dtype']!r}: use one "
                     f"of {DTYPES}.")
  if opts["storage"] not in STORAGES:
    raise ValueError(f"config.feature_cache.storage={opts['storage']!r}: use "
                     f"one of {STORAGES}.")
  return opts


# --- pp determinism -------------------------------------------------------------


def pp_ops(pp) -> List[str]:
  """A pp spec (string or list of strings) -> its op strings, in order."""
  if pp is None:
    return []
  specs = [pp] if isinstance(pp, str) else list(pp)
  ops = []
  for s in specs:
    if not isinstance(s, str):
      raise ValueError(f"pp spec entries must be strings, got {s!r}.")
    ops += pp_lib._split_top_level(s)  # pylint: disable=protected-access
  return ops


def _static_random(op: str) -> bool:
  name = pp_lib.parse_op(op)[0]
  return name in RANDOM_PP_OPS or any(h in name.lower() for h in _RANDOM_HINTS)


def _run_pp(fn, example, seed) -> Dict[str, np.ndarray]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  ex = dict(example)
  ex[pp_lib.SEED_KEY] = tf.constant(seed, tf.int64)
  out = dict(fn(ex))
  out.pop(pp_lib.SEED_KEY, None)
  return {k: np.asarray(v) for k, v in out.items()}


def _same(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
  return sorted(a) == sorted(b) and all(
      a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def find_random_ops(pp, example: Optional[dict] = None) -> List[str]:
  """The ops of `pp` that make it random (empty list: deterministic).

  By name first (RANDOM_PP_OPS and random-sounding names); then, if a raw
  `example` is given, by running growing prefixes of the spec with two
  different `_seed`s: the first op whose prefix output changes is random.
  A callable pp can only be tested that second way (reported as "<callable>").
  """
  if callable(pp):
    if example is None:
      return []
    outs = [_run_pp(pp, example, s) for s in ([1, 2], [3, 4])]
    return [] if _same(*outs) else ["<callable pp>"]
  ops = pp_ops(pp)
  found = [op for op in ops if _static_random(op)]
  if found or example is None:
    return found
  for i in range(1, len(ops) + 1):
    fn = pp_lib.get_preprocess_fn("|".join(ops[:i]))
    if not _same(_run_pp(fn, example, [1, 2]), _run_pp(fn, example, [3, 4])):
      return [ops[i - 1]]
  return []


def check_deterministic(pp, source: Optional[input_pipeline.Source] = None):
  """Raises RandomPreprocessingError naming the random op of `pp`, if any."""
  example = None
  if source is not None:
    example = next(iter(source.as_dataset().take(1)))
  random_ops = find_random_ops(pp, example)
  if random_ops:
    raise RandomPreprocessingError(
        f"Cannot cache backbone features: the training pp is random (op "
        f"{random_ops[0]!r}{' and more' if len(random_ops) > 1 else ''}), so "
        "the backbone sees different inputs every epoch. Remove the random "
        "op(s) from config.input.pp (VTAB-1k trains without augmentation), "
        "or set config.feature_cache.enabled=False.")


# --- keys -------------------------------------------------------------------------


def params_fingerprint(params) -> str:
  """sha256 over the names, dtypes, shapes and bytes of a param tree."""
  h = hashlib.sha256()
  for name, v in sorted(tree_lib.flatten(jax.device_get(params)).items()):
    v = np.asarray(v)
    h.update(f"{name}|{v.dtype}|{v.shape}|".encode())
    h.update(np.ascontiguousarray(v).view(np.uint8).tobytes())
  return h.hexdigest()


def _raw_bytes(x) -> bytes:
  x = np.asarray(x)
  if x.dtype.kind == "O":
    return b"".join(bytes(e) if isinstance(e, (bytes, bytearray)) else
                    str(e).encode() for e in x.reshape(-1))
  return f"{x.dtype}{x.shape}".encode() + np.ascontiguousarray(x).tobytes()


def data_fingerprint(source: input_pipeline.Source) -> Dict[str, Any]:
  """Identity of a source: name, split, count and a hash of its raw examples.

  The raw examples are read once (encoded images are not decoded), so two
  sources with the same name but different contents get different keys.
  """
  h = hashlib.sha256()
  n = 0
  for ex in source.as_dataset().as_numpy_iterator():
    for path, v in sorted(input_pipeline._flatten(ex).items()):  # pylint: disable=protected-access
      h.update("/".join(map(str, path)).encode())
      h.update(_raw_bytes(v))
    n += 1
  return {"name": source.name, "split": getattr(source, "split", None),
          "data_dir": getattr(source, "data_dir", None),
          "root": getattr(source, "root", None), "num_examples": n,
          "content_sha256": h.hexdigest()}


def tap_config(model: model_lib.Model) -> Dict[str, Any]:
  """Everything of the model that decides the taps' values."""
  losa = model_lib.merged(model_lib.LOSA_DEFAULTS, model.losa, "losa")
  return {"backbone": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in sorted(model.backbone_kwargs().items())},
          "tap": losa["tap"], "tap_every": losa["tap_every"]}


def cache_key(parts: Dict[str, Any]) -> str:
  """Short hex digest of the JSON of `parts` (sorted keys)."""
  payload = json.dumps({**parts, "format_version": FORMAT_VERSION},
                       sort_keys=True, default=str)
  return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _pp_repr(pp) -> Any:
  if callable(pp):
    raise CacheError("A callable pp cannot be keyed; give the pp as a spec "
                     "string so the cache can tell when it changes.")
  return pp_ops(pp)


# --- storage ----------------------------------------------------------------------


def _np_dtype(name: str):
  return np.dtype(jnp.bfloat16) if name == "bfloat16" else np.dtype(name)


def _on_disk_dtype(name: str):
  # .npy has no bfloat16: store its bits as uint16 and view them back.
  return np.dtype(np.uint16) if name == "bfloat16" else np.dtype(name)


def _fsync_dir(path: str):
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def read_marker(path: str) -> Optional[str]:
  """The key in `path/COMPLETE`, or None if the folder is not complete."""
  try:
    with open(os.path.join(path, COMPLETE)) as f:
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
    "final": [B, N, D])}, "label": [B] int32}, numpy in the cache dtype.

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
    idx = batch_indices(self.num_examples, batch_size=batch_size, seed=seed,
                        shuffle=shuffle, start_step=start_step,
                        drop_remainder=drop_remainder)
    return _prefetched((self.gather(i) for i in idx), prefetch)

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
      source: an `input_pipeline.Source`; must support random access.
      pp: the TRAINING pp spec; refused if random.
      root: folder holding caches (needed unless storage="memory").
      dtype, storage, memory_budget_mb: see the module doc.
      batch_size: backbone batch size while building.
      backbone_id: extra identity of the backbone (e.g. the checkpoint's
        sha256), added to the key next to the params hash.
      log: progress printer.

    Raises:
      RandomPreprocessingError: the pp is random.
      CacheError: wrong method, multi-process, streaming source, ...
    """
    if model.method != "losa":
      raise CacheError(f"Feature caching needs method='losa', got "
                       f"{model.method!r}: other methods change the "
                       "backbone's features while training.")
    if dtype not in DTYPES:
      raise ValueError(f"Feature cache dtype={dtype!r}: use one of {DTYPES}.")
    if storage not in STORAGES:
      raise ValueError(f"Feature cache storage={storage!r}: use one of "
                       f"{STORAGES}.")
    if storage != "memory" and not root:
      raise ValueError("Feature cache: give a root folder (config."
                       "feature_cache.dir) or use storage='memory'.")
    if jax.process_count() > 1:
      raise CacheError("The feature cache supports single-process training "
                       f"only (process_count={jax.process_count()}); set "
                       "config.feature_cache.enabled=False.")
    if source.table() is None:
      raise CacheError(
          f"{source.name} is streamed (too big for random access), so the "
          "uncached order is a windowed shuffle a cache cannot reproduce; "
          "use a smaller split or set config.feature_cache.enabled=False.")
    check_deterministic(pp, source)
    backbone = {"backbone": jax.device_get(params["backbone"])}
    parts = {
        "backbone_params_sha256": params_fingerprint(backbone),
        "backbone_id": backbone_id,
        "data": data_fingerprint(source),
        "pp": _pp_repr(pp),
        "model": tap_config(model),
        "dtype": dtype,
    }
    key = cache_key(parts)
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
                      "ignoring it and rebuilding.", path, COMPLETE)
      return None
    try:
      with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
      arrays = {}
      for name, spec in meta["arrays"].items():
        a = np.load(os.path.join(path, f"{name}.npy"), mmap_mode="r")
        if list(a.shape) != spec["shape"]:
          raise CacheError(f"{name}.npy has shape {a.shape}, meta says "
                           f"{spec['shape']}")
        if spec["dtype"] == "bfloat16":
          a = a.view(_np_dtype("bfloat16"))
        arrays[name] = a
    except (OSError, ValueError, KeyError, CacheError) as e:
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
    np_dtype = _np_dtype(dtype)
    cfg = model_lib.merged(model_lib.LOSA_DEFAULTS, model.losa, "losa")
    final_is_last_tap = cfg["tap"] == "block"
    features = _features_fn(model, dtype, final_is_last_tap)
    data = input_pipeline.evaluation(source, batch_size=batch_size, pp=pp)
    n = data.num_examples
    arrays, tmp, path = None, None, None
    written = 0
    try:
      for batch in data:
        real = int(np.sum(batch["_mask"]))
        if "label" not in batch:
          raise CacheError(f"The training pp of {source.name} yields keys "
                           f"{sorted(batch)}, no 'label': keep it in the pp.")
        out = jax.device_get(features(params, batch["image"]))
        if final_is_last_tap and not bool(out.pop("same")):
          raise CacheError("Internal: the last tap differs from the final "
                           "features; report this with the model config.")
        if arrays is None:
          shapes = {k: (n, *v.shape[1:]) for k, v in out.items()}
          shapes["labels"] = (n,)
          total = sum(int(np.prod(s)) * (4 if k == "labels" else
                                        np_dtype.itemsize)
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
              dt = np.dtype(np.int32) if k == "labels" else _on_disk_dtype(
                  dtype)
              arrays[k] = np.lib.format.open_memmap(
                  os.path.join(tmp, f"{k}.npy"), mode="w+", dtype=dt, shape=s)
          else:
            arrays = {k: np.empty(s, np.int32 if k == "labels" else np_dtype)
                      for k, s in shapes.items()}
        sl = slice(written, written + real)
        for k, v in out.items():
          v = np.asarray(v[:real])
          if tmp is not None and dtype == "bfloat16":
            v = v.view(np.uint16)
          arrays[k][sl] = v
        arrays["labels"][sl] = np.asarray(batch["label"][:real], np.int32)
        written += real
      if written != n:
        raise CacheError(f"Feature cache: expected {n} examples from "
                         f"{source.name}, got {written}.")
      meta = {
          "key": key, "parts": parts, "num_examples": n, "dtype": dtype,
          "final_is_last_tap": final_is_last_tap,
          "arrays": {k: {"shape": list(a.shape),
                         "dtype": "int32" if k == "labels" else dtype}
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
      raise CacheError(f"Feature cache {path} was written but cannot be read "
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
    with open(os.path.join(tmp, COMPLETE), "w") as f:
      f.write(key + "\n")
      f.flush()
      os.fsync(f.fileno())
    _fsync_dir(tmp)
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
    _fsync_dir(root)
    return final


_FEATURE_FNS: Dict[str, Callable] = {}


def _features_fn(model, dtype: str, final_is_last_tap: bool) -> Callable:
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
        feats["same"] = jnp.array_equal(out["taps"][-1], out["final"])
      else:
        feats["final"] = out["final"].astype(jdtype)
      return feats

    _FEATURE_FNS[memo] = features
  return _FEATURE_FNS[memo]


# --- order --------------------------------------------------------------------------


def batch_indices(n: int, *, batch_size: int, seed: int, shuffle: bool = True,
                  start_step: int = 0, drop_remainder: bool = True
                  ) -> Iterator[np.ndarray]:
  """Example indices [batch_size] of global batches start_step, start_step+1, ...

  The order of `input_pipeline.training` on a random-access source: epoch e
  visits `epoch_permutation(seed, e, n)` (truncated to whole batches with
  drop_remainder, else epochs are concatenated), and step s starts at the
  same (epoch, offset) as there.
  """
  if batch_size <= 0 or (drop_remainder and n < batch_size):
    raise ValueError(f"batch_size {batch_size} does not fit {n} examples.")
  per_epoch = (n // batch_size) * batch_size if drop_remainder else n
  if drop_remainder:
    spe = n // batch_size
    epoch, offset = start_step // spe, (start_step % spe) * batch_size
  else:
    epoch, offset = divmod(start_step * batch_size, n)
  pending = np.zeros((0,), np.int64)
  while True:
    order = (input_pipeline.epoch_permutation(seed, epoch, n).numpy()
             if shuffle else np.arange(n, dtype=np.int64))
    pending = np.concatenate([pending, order[offset:per_epoch]])
    offset = 0
    epoch += 1
    while len(pending) >= batch_size:
      yield pending[:batch_size]
      pending = pending[batch_size:]


def _prefetched(it: Iterator, depth: int) -> Iterator:
  """Runs `it` in a daemon thread, `depth` items ahead (gathers overlap
  the device step)."""
  if depth <= 0:
    yield from it
    return
  q: "queue.Queue" = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for item in it:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  threading.Thread(target=work, daemon=True).start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()


# --- the step -----------------------------------------------------------------------


class FeatureModel:
  """`Model.apply` look-alike whose "images" are cached features.

  `apply(variables, {"taps": [B, L', N, D], ("final": [B, N, D])}, **kw)`
  -> the LoSA model's (logits, out) with `precomputed=` (no backbone). The
  features are cast to float32 inside the step, so a bf16 cache crosses
  host->device at half the size. Used with `steps.train_step_fn`, so the
  cached step is the same code as the uncached one.
  """

  def __init__(self, model: model_lib.Model):
    self.model = model

  def apply(self, variables, features, **kw):
    taps = jnp.swapaxes(features["taps"], 0, 1)            # [L', B, N, D]
    final = features["final"] if "final" in features else taps[-1]
    pre = side_lib.as_float32({"taps": taps, "final": final})
    return self.model.apply(variables, None, precomputed=pre, **kw)


def train_step(config, built, *, donate: bool = True) -> Callable:
  """Jitted (state, feature batch) -> (state, metrics), as built.train_step.

  The batch is `FeatureCache.gather`'s dict placed on the devices.
  """
  step = steps.train_step_fn(
      FeatureModel(built.model), built.tx, built.mask,
      label_smoothing=config.get("label_smoothing", 0.0),
      schedule_fns=built.schedule_fns)
  return steps.jit_train_step(step, built.mesh, built.state_sharding,
                              donate=donate)


def device_batches(it: Iterator, mesh) -> Iterator:
  """Numpy feature batches -> global arrays sharded over the data axes."""
  sh = sharding_lib.batch_sharding(mesh)
  for batch in it:
    yield jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)),
        batch)


def for_trainer(config, built, params, source, pp, workdir: str, *,
                start_step: int, backbone_id: Optional[str] = None):
  """The trainer's cached path: (train_step, device batch iterator).

  Builds or loads the cache for the loaded backbone `params`, then streams
  batches in the uncached order from `start_step` (resume included).
  """
  opts = options(config)
  cache = FeatureCache.get_or_create(
      model=built.model, params=params, source=source, pp=pp,
      root=opts["dir"] or os.path.join(workdir, "feature_cache"),
      dtype=opts["dtype"], storage=opts["storage"],
      memory_budget_mb=opts["memory_budget_mb"],
      batch_size=opts["batch_size"] or config.input.batch_size,
      backbone_id=backbone_id)
  it = cache.batches(batch_size=config.input.batch_size, seed=config.seed,
                     shuffle=config.input.get("shuffle", True),
                     start_step=start_step)
  return train_step(config, built), device_batches(it, built.mesh)
