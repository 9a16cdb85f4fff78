# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""What a feature cache depends on: options, pp determinism, fingerprints, keys."""
import hashlib
import json
from typing import Any, Dict, List, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

from losa_jax.assembly import input_pipeline
from losa_jax.config import schema as config_lib
from losa_jax.datasets import core
from losa_jax.models import model as model_lib
from losa_jax import pp as pp_lib
from losa_jax.utils import tree as tree_lib

# 2: the final features are stored in float32 unless the last float32 tap
# holds them. 3: parts with their row indices; the data hash over chunks.
FORMAT_VERSION = 3
COMPLETE = "COMPLETE"
DTYPES = ("bfloat16", "float16", "float32")
STORAGES = ("auto", "memory", "disk")
DEFAULTS = config_lib.FEATURE_CACHE_DEFAULTS

class RandomPreprocessingError(ValueError):
  """The training pp is random, so backbone features differ every epoch."""


class CacheError(RuntimeError):
  """A feature cache cannot be built or used (the message says why)."""


def check_choices(dtype: str, storage: str, what: str) -> None:
  """Raises ValueError naming `what`.dtype or `what`.storage if unknown."""
  model_lib.check_choice(dtype, f"{what}.dtype", DTYPES)
  model_lib.check_choice(storage, f"{what}.storage", STORAGES)


def options(config) -> Dict[str, Any]:
  """config.feature_cache merged over DEFAULTS, validated."""
  given = dict(config.get("feature_cache") or {})
  opts = model_lib.merged(DEFAULTS, given, "config.feature_cache")
  check_choices(opts["dtype"], opts["storage"], "config.feature_cache")
  return opts


# --- pp determinism -------------------------------------------------------------


def _run_pp(fn, example, seed) -> Dict[str, np.ndarray]:
  out = pp_lib.run_seeded(fn, example, seed)
  return {k: np.asarray(v) for k, v in out.items()}


def _same(a: Dict[str, np.ndarray], b: Dict[str, np.ndarray]) -> bool:
  return sorted(a) == sorted(b) and all(
      a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def find_random_ops(pp, example: Optional[dict] = None) -> List[str]:
  """The ops of `pp` that make it random (empty list: deterministic).

  By declaration first (`pp.register(..., random=True)`, see
  `pp.random_ops`); then, if a raw `example` is given, by running growing
  prefixes of the spec with two different `_seed`s: the first op whose
  prefix output changes is random (this catches a user op registered
  without its declaration). A callable pp can only be tested that second
  way (reported as "<callable pp>").
  """
  if callable(pp):
    if example is None:
      return []
    outs = [_run_pp(pp, example, s) for s in ([1, 2], [3, 4])]
    return [] if _same(*outs) else ["<callable pp>"]
  ops = pp_lib.split_ops(pp)
  found = pp_lib.random_ops(ops)
  if found or example is None:
    return found
  for i in range(1, len(ops) + 1):
    fn = pp_lib.get_preprocess_fn("|".join(ops[:i]))
    if not _same(_run_pp(fn, example, [1, 2]), _run_pp(fn, example, [3, 4])):
      return [ops[i - 1]]
  return []


def check_deterministic(pp, source: Optional[core.Source] = None):
  """Raises RandomPreprocessingError naming the random op of `pp`, if any."""
  example = None
  if source is not None:
    example = next(iter(input_pipeline.raw_examples(source, 0, 1)))
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


# Examples per hashed chunk: the content hash does not depend on how many
# processes computed it.
HASH_CHUNK = 4096


def data_fingerprint(source: core.Source) -> Dict[str, Any]:
  """Identity of a source: name, split, count and a hash of its raw examples.

  The raw examples are read once (encoded images are not decoded), so two
  sources with the same name but different contents get different keys.
  The hash is a sha256 over per-chunk sha256s (HASH_CHUNK examples each);
  with several processes each hashes every P-th chunk, reading only those
  rows, and the digests are gathered.
  """
  table = source.table()
  n = table.num_examples if table is not None else source.count()
  p, num = jax.process_index(), jax.process_count()
  digests = np.zeros((-(-n // HASH_CHUNK), 32), np.uint8)
  for c in range(p, len(digests), num):
    h = hashlib.sha256()
    stop = min(n, (c + 1) * HASH_CHUNK)
    for ex in input_pipeline.raw_examples(
        source, c * HASH_CHUNK, stop).as_numpy_iterator():
      for path, v in sorted(core.flatten(ex).items()):
        h.update("/".join(map(str, path)).encode())
        h.update(_raw_bytes(v))
    digests[c] = np.frombuffer(h.digest(), np.uint8)
  if num > 1:   # Each chunk's digest is non-zero on one process only.
    digests = np.asarray(multihost_utils.process_allgather(digests)).astype(
        np.int64).sum(axis=0).astype(np.uint8)
  return {"name": source.name, "split": getattr(source, "split", None),
          "data_dir": getattr(source, "data_dir", None),
          "root": getattr(source, "root", None), "num_examples": n,
          "content_sha256": hashlib.sha256(digests.tobytes()).hexdigest()}


def tap_config(model: model_lib.Model) -> Dict[str, Any]:
  """Everything of the model that decides the taps' values: the backbone
  and the side method's (tap, tap_every, dtype)."""
  return {"backbone": {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in sorted(model.backbone_kwargs().items())},
          "tap_key": list(model.tap_key())}


def cache_key(parts: Dict[str, Any]) -> str:
  """Short hex digest of the JSON of `parts` (sorted keys)."""
  payload = json.dumps({**parts, "format_version": FORMAT_VERSION},
                       sort_keys=True, default=str)
  return hashlib.sha256(payload.encode()).hexdigest()[:32]


def pp_repr(pp) -> Any:
  if callable(pp):
    raise CacheError("A callable pp cannot be keyed; give the pp as a spec "
                     "string so the cache can tell when it changes.")
  return pp_lib.split_ops(pp)
