# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""`name="arrays"`: in-memory numpy arrays as a source."""
from typing import Any, Mapping, Optional

import numpy as np
import tensorflow as tf

from losa_jax.datasets import core


class ArraySource(core.Source):
  """In-memory numpy arrays; row i of every array is example i.

  Args:
    arrays: `{key: array [N, ...]}` when `split` is None, else
      `{split_name: {key: array [N, ...]}, ...}` (other entries, e.g. a
      "num_classes" int, are ignored), so `ArraySource(task, "train[:800]")`
      works on the demo tasks.
    split: optional split expression over the split names of `arrays`.
    name: used in messages.
  """

  def __init__(self, arrays: Mapping[str, Any], split: Optional[str] = None,
               name: str = "arrays"):
    self.name = name if split is None else f"{name}:{split}"
    if split is None:
      parts = [dict(arrays)]
    else:
      parts = []
      for s in core.parse_split(split):
        if not isinstance(arrays.get(s.name), Mapping):
          names = [k for k, v in arrays.items() if isinstance(v, Mapping)]
          raise ValueError(f"Split {s.name!r} (from {split!r}) is not in "
                           f"{name}; available splits: {names}.")
        part = {k: np.asarray(v) for k, v in arrays[s.name].items()}
        b, e = s.resolve(self._rows(part, name))
        parts.append({k: v[b:e] for k, v in part.items()})
    keys = sorted(parts[0])
    if any(sorted(p) != keys for p in parts):
      raise ValueError(f"{self.name}: the splits have different keys.")
    self._arrays = {k: np.concatenate([np.asarray(p[k]) for p in parts])
                    for k in keys}
    self._n = self._rows(self._arrays, self.name)

  @staticmethod
  def _rows(arrays, name) -> int:
    sizes = {k: len(v) for k, v in arrays.items()}
    if not sizes or len(set(sizes.values())) != 1:
      raise ValueError(f"{name}: need >= 1 array, all with the same number "
                       f"of rows; got sizes {sizes}.")
    return next(iter(sizes.values()))

  def num_examples(self) -> int:
    return self._n

  def as_dataset(self) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(self._arrays)

  def table(self) -> core.Table:
    return core.Table({(k,): v for k, v in self._arrays.items()}, self._n)


PP_MODULES = ("image",)
make = ArraySource  # dict(name="arrays", arrays=..., split=None)
