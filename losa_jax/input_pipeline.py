# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Deterministic, resumable, per-process input pipelines over three sources.

Sources (raw examples are nested dicts; images stay encoded until pp
`decode`):

* `TfdsSource(name, split, data_dir=..., download=False)`: a prepared TFDS
  dataset. Never downloads unless `download=True` is passed explicitly.
* `FolderSource(root, split)`: `root/<split>/<class_name>/*.png|jpg`, label =
  index of the class name in the sorted class names of all split folders.
* `ArraySource(arrays, split=None)`: in-memory numpy arrays, e.g.
  `{"image": uint8 [N, H, W, C], "label": int [N]}`.

Splits use TFDS syntax everywhere (`train`, `train[:800]`, `train[800:1000]`,
`train[:50%]`, `train+validation`; see `parse_split`).

Training order (`training`). The stream is a sequence of epochs; epoch e visits
the examples in a permutation derived from (seed, e), and example k of the
epoch gets the augmentation seed `_seed = f(seed, e, k)` (int64 [2], used by
the random pp ops). Global step s therefore maps to fixed (epoch, position)
pairs, which makes the stream resumable by arithmetic: `start_step=s` jumps
straight to epoch/offset of step s without replaying earlier batches.

How the permutation is realised (the documented choice):

* Random access (default for ArraySource, FolderSource, and TFDS splits with
  at most `in_memory_max_examples` examples - VTAB-1k, demos): the split is
  enumerated once into memory (encoded images, or file paths for folders);
  epoch e visits `epoch_permutation(seed, e, n)` (a stateless shuffle of
  [0, n), computed once per epoch inside tf.data), an exact permutation, and
  each process only gathers and preprocesses its own rows. No Python runs
  per example or per batch.
* Streaming (big TFDS splits): each epoch is the TFDS split in file order
  through `tf.data` `shuffle(shuffle_buffer_size, seed=f(seed, e))`, which is
  deterministic but only a windowed shuffle; resuming skips the raw (not yet
  preprocessed) examples of the current epoch only. Every process reads the
  whole stream and keeps its rows; fine for the sizes this project uses.

Batches. A global batch holds `batch_size` examples; process p of P receives
rows [p * b, (p + 1) * b) with b = batch_size // P, as numpy dicts with the
keys the pp produces (typically "image" float32 [b, H, W, 3] and "label" int
[b]). `evaluation` also adds "_mask" float32 [b] (1 real, 0 padding).
"""
import dataclasses
import math
import os
import re
import threading
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Sequence, Tuple, Union)

from absl import logging
import numpy as np
import tensorflow as tf

from losa_jax import pp as pp_lib

AUTOTUNE = tf.data.AUTOTUNE
PpSpec = Union[None, str, Sequence[str], Callable]

# ----------------------------------------------------------------------------
# Split expressions.
# ----------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------
# Random-access tables.
# ----------------------------------------------------------------------------


def _flatten(tree, prefix=()) -> Dict[tuple, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, prefix + (k,)))
    return out
  return {prefix: tree}


def _unflatten(flat: Mapping[tuple, Any]) -> Dict[str, Any]:
  out = {}
  for path, v in flat.items():
    d = out
    for k in path[:-1]:
      d = d.setdefault(k, {})
    d[path[-1]] = v
  return out


def _as_np(values: List[Any]) -> np.ndarray:
  """Stacks per-example values; bytes stay exact in object arrays."""
  if values and isinstance(values[0], (bytes, str)):
    return np.array(values, dtype=object)
  return np.stack([np.asarray(v) for v in values])


class _Table:
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
  def from_examples(cls, examples: List[dict], **kw) -> "_Table":
    flats = [_flatten(ex) for ex in examples]
    keys = list(flats[0]) if flats else []
    columns = {k: [f[k] for f in flats] for k in keys}
    return cls(columns, len(examples), **kw)

  def lookup(self, index: tf.Tensor) -> dict:
    flat = {p: tf.gather(c, index) for p, c in self._dense.items()}
    for p, (values, offsets, shapes) in self._ragged.items():
      flat[p] = tf.reshape(values[offsets[index]:offsets[index + 1]],
                           shapes[index])
    ex = _unflatten(flat)
    return self._finalize(ex) if self._finalize else ex


# ----------------------------------------------------------------------------
# Sources.
# ----------------------------------------------------------------------------


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

  def table(self) -> Optional[_Table]:
    """A random-access form, or None when the source is too big for one."""
    return None

  def count(self) -> int:
    """Number of examples, reading the data once if it is not known."""
    n = self.num_examples()
    if n is None:
      n = int(self.as_dataset().reduce(np.int64(0), lambda c, _: c + 1))
    return n


class ArraySource(Source):
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
      for s in parse_split(split):
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

  def table(self) -> _Table:
    return _Table({(k,): v for k, v in self._arrays.items()}, self._n)


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


class FolderSource(Source):
  """Images in `root/<split>/<class_name>/*.png|jpg`, one folder per class.

  Raw examples: {"image": encoded bytes (tf.string), "label": int64 index of
  the class in `class_names`, "file_name": path relative to root}. Files are
  ordered by (class, file name), so `train[:100]` cuts that order.

  Args:
    root: dataset root.
    split: split expression over the sub-folders of root.
    class_names: the label order; default the sorted union of the class
      folders of every split under root, so labels agree across splits.
    extensions: accepted file suffixes (case-insensitive).
  """

  def __init__(self, root: str, split: str, *,
               class_names: Optional[Sequence[str]] = None,
               extensions: Sequence[str] = IMAGE_EXTENSIONS):
    self.name = f"folder:{root}:{split}"
    self.root = root
    if not os.path.isdir(root):
      raise FileNotFoundError(f"Image folder root {root!r} does not exist.")
    ext = tuple(e.lower() for e in extensions)

    def images(cdir, rel):
      return [os.path.join(rel, f) for f in sorted(os.listdir(cdir))
              if f.lower().endswith(ext)]

    self.class_names, items = scan_class_folders(root, split, class_names,
                                                 images)
    files = [f for f, _ in items]
    labels = [l for _, l in items]
    if not files:
      raise ValueError(f"No {ext} images found for split {split!r} under "
                       f"{root!r} (expected root/<split>/<class>/<image>).")
    self._files = np.array(files, dtype=object)
    self._labels = np.array(labels, dtype=np.int64)

  def num_examples(self) -> int:
    return len(self._files)

  def _read(self, ex):
    path = tf.strings.join([self.root, ex["file_name"]], separator=os.sep)
    return {"image": tf.io.read_file(path), "label": ex["label"],
            "file_name": ex["file_name"]}

  def as_dataset(self) -> tf.data.Dataset:
    ds = tf.data.Dataset.from_tensor_slices(
        {"file_name": self._files, "label": self._labels})
    return ds.map(self._read)

  def table(self) -> _Table:
    # Only the paths live in memory; images are read when gathered.
    return _Table({("file_name",): self._files, ("label",): self._labels},
                  len(self._files), finalize=self._read)


class TfdsSource(Source):
  """A prepared TFDS dataset split.

  Image features are not decoded (tfds.decode.SkipDecoding), so the raw
  "image" is the encoded bytes and pp `decode` does the work.

  Args:
    name: TFDS name with optional config/version, e.g. "cifar100",
      "eurosat/rgb", "sun397/tfds".
    split: split expression, e.g. "train[:800]+validation[:200]".
    data_dir: TFDS data dir (None: TFDS' default, ~/tensorflow_datasets or
      $TFDS_DATA_DIR).
    download: if True, download_and_prepare() first. Off by default because
      a download attempt without network hangs for minutes; a config must
      turn it on explicitly.
    manual_dir: where manually downloaded archives live (datasets like
      diabetic_retinopathy_detection need them); only used with download.
    in_memory: True / False / None (auto: random access when the split has
      at most `in_memory_max_examples` examples).
    in_memory_max_examples: size limit of the auto mode.
  """

  def __init__(self, name: str, split: str, *, data_dir: Optional[str] = None,
               download: bool = False, manual_dir: Optional[str] = None,
               in_memory: Optional[bool] = None,
               in_memory_max_examples: int = 50_000):
    parse_split(split)
    self.name, self.split, self.data_dir = name, split, data_dir
    self.download, self.manual_dir = download, manual_dir
    self.in_memory = in_memory
    self.in_memory_max_examples = in_memory_max_examples
    self._builder_obj = None
    self._table = None
    self._count = None
    self._lock = threading.Lock()

  def _where(self) -> str:
    return (f"TFDS dataset {self.name!r}, split {self.split!r}, data_dir "
            f"{self.data_dir or '(TFDS default)'}")

  def _builder(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    if self._builder_obj is None:
      try:
        self._builder_obj = tfds.builder(self.name, data_dir=self.data_dir)
      except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"Unknown {self._where()}: {e}. Check the name "
                         "(`tfds.list_builders()`).") from None
      if self.download:
        kw = {}
        if self.manual_dir:
          kw["download_config"] = tfds.download.DownloadConfig(
              manual_dir=self.manual_dir)
        self._builder_obj.download_and_prepare(**kw)
    return self._builder_obj

  def _decoders(self, features) -> Dict[str, Any]:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    out = {}
    for k, f in features.items():
      if isinstance(f, tfds.features.Image):
        out[k] = tfds.decode.SkipDecoding()
      elif isinstance(f, tfds.features.FeaturesDict):
        sub = self._decoders(f)
        if sub:
          out[k] = sub
    return out

  def as_dataset(self) -> tf.data.Dataset:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    builder = self._builder()
    try:
      return builder.as_dataset(
          split=self.split, shuffle_files=False,
          decoders=self._decoders(builder.info.features),
          read_config=tfds.ReadConfig(try_autocache=False))
    except AssertionError as e:
      # tfds signals "not prepared" with an AssertionError.
      raise DataNotFoundError(
          f"No data for {self._where()}: {e}\nTo fix: prepare it once on a "
          f"machine with network (`tfds build {self.name} --data_dir=DIR`, "
          "plus --manual_dir for datasets that need manual downloads) and "
          "copy DIR here, point data_dir at an existing copy, or set "
          "download=True in the config to let TFDS download it.") from None
    except ValueError as e:
      raise ValueError(f"Bad split for {self._where()}: {e}") from None

  def num_examples(self) -> Optional[int]:
    if self._count is not None:
      return self._count
    try:
      n = self._builder().info.splits[self.split].num_examples
    except Exception:  # pylint: disable=broad-except
      # Unknown without reading the data: e.g. tfds.testing.mock_data leaves
      # info.splits empty.
      return None
    return int(n) if n else None

  def count(self) -> int:
    if self._count is None:
      self._count = super().count()
    return self._count

  def table(self) -> Optional[_Table]:
    with self._lock:
      if self._table is not None or self.in_memory is False:
        return self._table
      limit = self.in_memory_max_examples
      n = self.num_examples()
      if self.in_memory is None and n is not None and n > limit:
        return None
      cap = None if self.in_memory else limit + 1
      examples = list(self.as_dataset().take(cap or -1).as_numpy_iterator())
      if cap is not None and len(examples) > limit:
        logging.info("%s has > %d examples: streaming it.", self._where(),
                     limit)
        return None
      self._count = len(examples)
      self._table = _Table.from_examples(examples)
      return self._table


def make_source(**config) -> Source:
  """Builds a source from a config dict.

  `name`/`split`/`data_dir`/`download`/... -> TfdsSource; `root`/`split`/...
  -> FolderSource; `arrays`/`split` -> ArraySource.
  """
  if "root" in config:
    return FolderSource(**config)
  if "arrays" in config:
    return ArraySource(**config)
  if "name" in config:
    return TfdsSource(**config)
  raise ValueError(f"Cannot tell the source kind of {config}: give `name` "
                   "(TFDS), `root` (image folder) or `arrays` (in-memory).")


# ----------------------------------------------------------------------------
# Seeds and order.
# ----------------------------------------------------------------------------


def _check_seed(seed: int) -> int:
  seed = int(seed)
  if not 0 <= seed < 2**62:
    raise ValueError(f"seed must be in [0, 2**62), got {seed}.")
  return seed


def _fold(seed: int, *data) -> tf.Tensor:
  """Stateless seed (int64 [2]) derived from `seed` and int scalars."""
  s = tf.constant([seed, 0x5EED], tf.int64)
  for d in data:
    s = tf.random.experimental.stateless_fold_in(s, tf.cast(d, tf.int64))
  return tf.cast(s, tf.int64)


def _example_seed(seed: int, epoch, k) -> tf.Tensor:
  """Augmentation seed of example k of epoch e: int64 [2], f(seed, e, k)."""
  return _fold(seed, 1, epoch, k)


def epoch_permutation(seed: int, epoch, n: int) -> tf.Tensor:
  """The visiting order of epoch `epoch`: a permutation of [0, n), int64."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(n, dtype=tf.int64), seed=_fold(seed, 0, epoch))


def _make_pp(pp: PpSpec) -> Callable:
  return pp if callable(pp) else pp_lib.get_preprocess_fn(pp)


def _with_pp(pp_fn, seed, epoch, k):
  """Returns map fn(raw example) -> preprocessed example."""

  def fn(ex):
    ex = dict(ex)
    ex[pp_lib.SEED_KEY] = _example_seed(seed, epoch, k)
    ex = dict(pp_fn(ex))
    ex.pop(pp_lib.SEED_KEY, None)
    return ex

  return fn


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  return opts


def _own_rows(ds: tf.data.Dataset, batch_size: int, lo: int, hi: int):
  """Keeps elements whose row (position % batch_size) is in [lo, hi).

  The dataset must start at a global batch boundary. Filtering happens
  before the pp, so each process only preprocesses its own rows.
  """
  if (lo, hi) == (0, batch_size):
    return ds
  ds = ds.enumerate()
  return ds.filter(lambda j, _: tf.logical_and(j % batch_size >= lo,
                                               j % batch_size < hi)).map(
                                                   lambda j, x: x)


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


class TrainIterator:
  """Infinite iterator of numpy batches; `step` = global batches consumed.

  Checkpoint `it.step` (or `it.state()`); `training(..., start_step=it.step)`
  rebuilds an iterator that continues with exactly the batches this one
  would have yielded next.
  """

  def __init__(self, ds: tf.data.Dataset, *, start_step: int,
               num_examples: int, steps_per_epoch: float, random_access: bool):
    self._ds = ds
    self._it = None
    self.step = start_step
    self.num_examples = num_examples
    self.steps_per_epoch = steps_per_epoch
    self.random_access = random_access

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._ds.as_numpy_iterator()
    batch = next(self._it)
    self.step += 1
    return batch

  def state(self) -> Dict[str, int]:
    return {"step": self.step}


def _start(step: int, batch_size: int, n: int,
           drop_remainder: bool) -> Tuple[int, int]:
  """(epoch, position in epoch) of the first example of global batch `step`."""
  if drop_remainder:
    spe = n // batch_size
    return step // spe, (step % spe) * batch_size
  return divmod(step * batch_size, n)


def training(source: Source, *, batch_size: int, pp: PpSpec, seed: int,
             shuffle: bool = True, start_step: int = 0, process_index: int = 0,
             process_count: int = 1, drop_remainder: bool = True,
             shuffle_buffer_size: int = 50_000,
             num_parallel_calls: int = AUTOTUNE,
             prefetch: int = 2) -> Tuple[TrainIterator, int]:
  """Infinite, deterministic, resumable training batches for one process.

  Args:
    source: the data.
    batch_size: GLOBAL batch size; must be divisible by process_count.
    pp: pp spec (string / list of strings) or a callable on one example.
    seed: data seed, in [0, 2**62): epoch orders and augmentation.
    shuffle: if False, every epoch is in source order.
    start_step: number of global batches already consumed (resume point).
    process_index, process_count: this process and the number of processes;
      each process gets rows [p * b, (p + 1) * b) of every global batch,
      b = batch_size // process_count.
    drop_remainder: True - each epoch yields n // batch_size full batches and
      its last n % batch_size examples (random ones, as the order changes)
      are skipped, like PyTorch's drop_last in the PETL literature; False -
      epochs are concatenated, so a batch may straddle two epochs and no
      example is ever skipped. Batches are full either way.
    shuffle_buffer_size: streaming mode only (big TFDS splits).
    num_parallel_calls, prefetch: tf.data parallelism.

  Returns:
    (iterator, num_examples): the iterator yields dicts of numpy arrays with
    the pp's keys and leading dim batch_size // process_count; `it.step`
    counts the global batches consumed (start_step included).
  """
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be positive and divisible"
                     f" by process_count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in "
                     f"[0, {process_count}).")
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  seed = _check_seed(seed)
  pp_fn = _make_pp(pp)
  local = batch_size // process_count

  table = source.table()
  n = table.num_examples if table is not None else source.count()
  if n == 0:
    raise ValueError(f"{source.name} has no examples.")
  if drop_remainder and n < batch_size:
    raise ValueError(
        f"{source.name} has {n} examples, fewer than batch_size {batch_size}:"
        " use a smaller batch or drop_remainder=False.")
  per_epoch = (n // batch_size) * batch_size if drop_remainder else n
  e0, k0 = _start(start_step, batch_size, n, drop_remainder)

  if table is not None:
    def epoch_ds(e):
      order = (epoch_permutation(seed, e, n) if shuffle
               else tf.range(n, dtype=tf.int64))
      d = tf.data.Dataset.from_tensor_slices(order[:per_epoch]).enumerate()
      return d.map(lambda k, i: (e, k, i))
    fetch = table.lookup
  else:
    raw = source.as_dataset()
    base = (seed * 1_000_003) % 2**61  # Epoch e shuffles with seed base + e.

    def epoch_ds(e):
      d = raw
      if shuffle:
        d = d.shuffle(shuffle_buffer_size, seed=base + e,
                      reshuffle_each_iteration=False)
      return d.take(per_epoch).enumerate().map(lambda k, ex: (e, k, ex))
    fetch = lambda ex: ex

  # Jump straight to epoch e0 and skip only within it: for the streaming
  # mode that reads k0 raw examples, for random access it is free.
  ds = tf.data.Dataset.range(e0, 2**62).flat_map(epoch_ds).skip(k0)
  ds = _own_rows(ds, batch_size, process_index * local,
                 (process_index + 1) * local)
  ds = ds.map(lambda e, k, x: _with_pp(pp_fn, seed, e, k)(fetch(x)),
              num_parallel_calls=num_parallel_calls)
  ds = ds.batch(local, drop_remainder=True).prefetch(prefetch)
  ds = ds.with_options(_options())
  spe = n // batch_size if drop_remainder else n / batch_size
  it = TrainIterator(ds, start_step=start_step, num_examples=n,
                     steps_per_epoch=spe, random_access=table is not None)
  return it, n


# ----------------------------------------------------------------------------
# Evaluation.
# ----------------------------------------------------------------------------


class EvalIterable:
  """One ordered pass per `iter()`; every process yields `num_batches`.

  Each batch is a numpy dict with leading dim batch_size // process_count
  and "_mask" float32 (1 real, 0 padding); over all processes and batches
  every example appears exactly once with mask 1.
  """

  def __init__(self, source: Source, *, batch_size: int, pp_fn: Callable,
               process_index: int, process_count: int, seed: int,
               num_parallel_calls: int, prefetch: int):
    self._source = source
    self._pp_fn = pp_fn
    self._seed = seed
    self._bs = batch_size
    self._local = batch_size // process_count
    self._lo = process_index * self._local
    self._npc, self._prefetch = num_parallel_calls, prefetch
    self.num_examples = source.count()
    self.num_batches = math.ceil(self.num_examples / batch_size)
    self._template = None

  def _dataset(self) -> tf.data.Dataset:
    ds = _own_rows(self._source.as_dataset().enumerate(), self._bs,
                   self._lo, self._lo + self._local)
    ds = ds.map(lambda j, ex: _with_pp(self._pp_fn, self._seed, 0, j)(ex),
                num_parallel_calls=self._npc)
    ds = ds.batch(self._local).prefetch(self._prefetch)
    return ds.with_options(_options())

  def _zeros(self) -> Dict[str, np.ndarray]:
    """One padding row, shaped like a preprocessed example."""
    if self._template is None:
      raw = self._source.as_dataset().take(1)
      ex = next(raw.map(_with_pp(self._pp_fn, self._seed, 0, 0))
                .as_numpy_iterator())
      self._template = tf.nest.map_structure(_zeros_like, ex)
    return self._template

  def _pad(self, batch, num_real):
    def pad(x, z):
      fill = np.repeat(z[None], self._local - len(x), axis=0)
      return np.concatenate([x, fill]) if len(x) else fill
    if num_real == self._local:
      out = dict(batch)
    elif num_real == 0:
      out = tf.nest.map_structure(
          lambda z: np.repeat(z[None], self._local, axis=0), self._zeros())
    else:
      out = tf.nest.map_structure(pad, dict(batch), self._zeros())
    mask = np.zeros(self._local, np.float32)
    mask[:num_real] = 1.0
    out["_mask"] = mask
    return out

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    count = 0
    for batch in self._dataset().as_numpy_iterator():
      n = len(next(iter(tf.nest.flatten(batch))))
      yield self._pad(batch, n)
      count += 1
    for _ in range(count, self.num_batches):
      yield self._pad(None, 0)

  def __len__(self) -> int:
    return self.num_batches


def _zeros_like(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype.kind in "OSU":
    return np.full_like(x, b"" if x.dtype.kind in "OS" else "")
  return np.zeros_like(x)


def evaluation(source: Source, *, batch_size: int, pp: PpSpec,
               process_index: int = 0, process_count: int = 1, seed: int = 0,
               num_parallel_calls: int = AUTOTUNE,
               prefetch: int = 2) -> EvalIterable:
  """One in-order pass in padded batches, sharded like `training`.

  Args:
    source: the data.
    batch_size: GLOBAL batch size; must be divisible by process_count.
    pp: pp spec or callable (random ops get `_seed` = f(seed, 0, index)).
    process_index, process_count: as in `training`.
    seed: only matters for random pp ops.
    num_parallel_calls, prefetch: tf.data parallelism.

  Returns:
    A re-iterable: each `iter()` is one pass of ceil(n / batch_size)
    batches (the same count on every process), each a numpy dict with the
    pp's keys plus "_mask" float32 [batch_size // process_count]. Padding
    rows are zeros with mask 0.
  """
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be positive and divisible"
                     f" by process_count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in "
                     f"[0, {process_count}).")
  return EvalIterable(source, batch_size=batch_size, pp_fn=_make_pp(pp),
                      process_index=process_index,
                      process_count=process_count, seed=_check_seed(seed),
                      num_parallel_calls=num_parallel_calls,
                      prefetch=prefetch)
