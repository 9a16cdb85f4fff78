# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Sources of raw examples: the interface, split syntax and random-access tables.

A `Source` is a finite, ordered collection of raw examples (nested dicts of
tensors; images stay encoded until the pp op `decode`). Every concrete source
lives in its own module of this package and is found by name through
`losa_jax.datasets.get_source`; `losa_jax.assembly.input_pipeline` turns any source
into deterministic, resumable batches.

Splits use TFDS syntax everywhere (`train`, `train[:800]`, `train[800:1000]`,
`train[:50%]`, `train+validation`; see `parse_split`).
"""
import dataclasses
import os
import re
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple

from flax import traverse_util
import numpy as np
import tensorflow as tf

# --- Split expressions --------------------------------------------------------

_SPLIT_RE = re.compile(
    r"^(?P<name>[A-Za-z0-9_][\w\-.]*)"
    r"(?:\[(?P<start>-?\d+%?)?:(?P<stop>-?\d+%?)?\])?$")


@dataclasses.dataclass(frozen=True)
class SplitSlice:
  """One `name[start:stop]` term of a split expression.

  `start`/`stop` are None (open), ints (absolute, may be negative) or, when
  `percent` is True, percentages in [-100, 100].
  """
  name: str
  start: Optional[int] = None
  stop: Optional[int] = None
  percent: bool = False

  def resolve(self, num_examples: int) -> Tuple[int, int]:
    """Absolute [begin, end) for a split of `num_examples` examples.

    Percent bounds round to the closest example, as TFDS does by default.
    """
    def bound(b):
      if b is None:
        return None
      return int(round(b * num_examples / 100.0)) if self.percent else b
    return slice(bound(self.start), bound(self.stop)).indices(
        num_examples)[:2]


def parse_split(split: str) -> List[SplitSlice]:
  """Parses and validates a TFDS split expression.

  Args:
    split: e.g. "train", "train[:800]", "train[800:1000]", "train[:50%]",
      "train[:800]+validation[:200]".

  Returns:
    One SplitSlice per `+`-separated term.

  Raises:
    ValueError: naming the bad split and the accepted syntax.
  """
  if not isinstance(split, str) or not split.strip():
    raise ValueError(f"Bad split {split!r}: expected a non-empty string like "
                     "'train', 'train[:800]' or 'train[:50%]+validation'.")
  out = []
  for term in split.replace(" ", "").split("+"):
    m = _SPLIT_RE.match(term)
    problem = None
    if not m:
      problem = f"cannot parse {term!r}"
    else:
      start, stop = m.group("start"), m.group("stop")
      pcts = [b.endswith("%") for b in (start, stop) if b is not None]
      if len(set(pcts)) > 1:
        problem = f"{term!r} mixes % and absolute bounds"
      else:
        percent = bool(pcts and pcts[0])
        ints = [None if b is None else int(b.rstrip("%"))
                for b in (start, stop)]
        if percent and any(abs(b) > 100 for b in ints if b is not None):
          problem = f"{term!r} has a percentage outside [-100, 100]"
    if problem:
      raise ValueError(
          f"Bad split {split!r}: {problem}. Use TFDS syntax: 'train', "
          "'train[:800]', 'train[800:1000]', 'train[:50%]', "
          "'train[:800]+validation[:200]'.")
    out.append(SplitSlice(m.group("name"), ints[0], ints[1], percent))
  return out


# --- Random-access tables -----------------------------------------------------


# Nested dicts <-> {("a", "b"): leaf}; leaves are anything not a dict.
flatten, unflatten = traverse_util.flatten_dict, traverse_util.unflatten_dict


def _as_np(values: List[Any]) -> np.ndarray:
  """Stacks per-example values; bytes stay exact in object arrays."""
  if values and isinstance(values[0], (bytes, str)):
    return np.array(values, dtype=object)
  return np.stack([np.asarray(v) for v in values])


class Table:
  """Columns of n examples with random access from inside tf.data.

  Fixed-shape fields are one dense [n, ...] tensor; fields whose shape varies
  (e.g. CLEVR's per-object annotations) are stored flat with per-example
  offsets and shapes. `finalize` maps a gathered row to the raw example (the
  folder source reads the image file there).
  """

  def __init__(self, columns: Mapping[tuple, List[Any]], num_examples: int,
               finalize: Optional[Callable[[dict], dict]] = None):
    self.num_examples = num_examples
    self._finalize = finalize
    self._dense, self._ragged = {}, {}
    for path, values in columns.items():
      if isinstance(values, np.ndarray):  # Already stacked: [n, ...].
        self._dense[path] = tf.constant(values)
        continue
      arrays = [np.asarray(v, dtype=object if isinstance(v, (bytes, str))
                           else None) for v in values]
      if all(a.shape == arrays[0].shape for a in arrays):
        self._dense[path] = tf.constant(_as_np(values))
      else:
        flat = [a.reshape(-1) for a in arrays]
        offsets = np.cumsum([0] + [a.size for a in flat]).astype(np.int64)
        shapes = np.array([a.shape for a in arrays], dtype=np.int64)
        self._ragged[path] = (tf.constant(np.concatenate(flat)),
                              tf.constant(offsets), tf.constant(shapes))

  @classmethod
  def from_examples(cls, examples: List[dict], **kw) -> "Table":
    flats = [flatten(ex) for ex in examples]
    keys = list(flats[0]) if flats else []
    columns = {k: [f[k] for f in flats] for k in keys}
    return cls(columns, len(examples), **kw)

  def lookup(self, index: tf.Tensor) -> dict:
    flat = {p: tf.gather(c, index) for p, c in self._dense.items()}
    for p, (values, offsets, shapes) in self._ragged.items():
      flat[p] = tf.reshape(values[offsets[index]:offsets[index + 1]],
                           shapes[index])
    ex = unflatten(flat)
    return self._finalize(ex) if self._finalize else ex


# --- Sources ------------------------------------------------------------------


class BadDataError(ValueError):
  """Examples of a source cannot be read or decoded (the message names them)."""


def raise_diagnosed(source: "Source", error: Exception):
  """Re-raises a pipeline `error` as BadDataError if `source` can say which
  examples caused it; else re-raises `error` unchanged."""
  message = source.diagnose(error)
  if message:
    raise BadDataError(message) from error
  raise error


class DataNotFoundError(FileNotFoundError):
  """A TFDS dataset/split is not prepared under the given data_dir."""


class Source:
  """A finite, ordered collection of raw examples (nested dicts)."""

  name: str = "source"

  def num_examples(self) -> Optional[int]:
    """Number of examples, or None if unknown without reading the data."""
    return None

  def as_dataset(self) -> tf.data.Dataset:
    """All raw examples, in the same fixed order every time."""
    raise NotImplementedError

  def table(self):
    """Random access: a `Table`, an object with `read(indices)` and
    `decode(record)` (see `tfds.RecordTable`), or None (streamed)."""
    return None

  def shard(self, process_index: int, process_count: int
            ) -> Optional["Source"]:
    """The share of a streamed source that process p of P reads, or None
    (every process reads the whole stream and keeps its rows)."""
    del process_index, process_count
    return None

  def diagnose(self, error: Exception) -> Optional[str]:
    """A message naming the bad example(s) behind a pipeline `error`, or
    None if the source cannot tell (the error is then raised as it is)."""
    del error
    return None

  def count(self) -> int:
    """Number of examples, reading the data once if it is not known."""
    n = self.num_examples()
    if n is None:
      n = int(self.as_dataset().reduce(np.int64(0), lambda c, _: c + 1))
    return n


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def scan_class_folders(root: str, split: str,
                       class_names: Optional[Sequence[str]],
                       entries: Callable[[str, str], List[Any]]
                       ) -> Tuple[List[str], List[Tuple[Any, int]]]:
  """Walks `root/<split>/<class>/` for a split expression.

  `entries(class_dir, rel_dir)` lists one class folder's examples in order
  (rel_dir is class_dir relative to root). Examples are ordered by (class,
  entry) within each split and every split slice (`train[:90%]`) cuts that
  order. `class_names` defaults to the sorted union of the class folders of
  every split, so labels agree across splits.

  Returns (class_names, [(entry, label index), ...]).
  """
  splits = sorted(d for d in os.listdir(root)
                  if os.path.isdir(os.path.join(root, d)))
  if class_names is None:
    class_names = sorted({c for s in splits
                          for c in os.listdir(os.path.join(root, s))
                          if os.path.isdir(os.path.join(root, s, c))})
  class_names = list(class_names)
  index = {c: i for i, c in enumerate(class_names)}
  items = []
  for s in parse_split(split):
    if s.name not in splits:
      raise ValueError(f"Split {s.name!r} (from {split!r}) has no folder "
                       f"under {root!r}; available: {splits}.")
    part = []
    for c in sorted(os.listdir(os.path.join(root, s.name))):
      cdir = os.path.join(root, s.name, c)
      if not os.path.isdir(cdir):
        continue
      if c not in index:
        raise ValueError(f"Class folder {c!r} in {cdir!r} is not in "
                         f"class_names {class_names}.")
      part += [(e, index[c]) for e in entries(cdir, os.path.join(s.name, c))]
    b, e = s.resolve(len(part))
    items += part[b:e]
  return class_names, items
