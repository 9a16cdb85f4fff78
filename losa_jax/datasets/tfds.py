# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""TFDS: any prepared TFDS dataset (the default for unregistered names).

How a split is read (`TfdsSource.table`, used by `input_pipeline`): by
index from ArrayRecord files (`RecordTable`) at any size, into memory
(`core.Table`) up to `in_memory_max_examples` TFRecord examples, else
streamed by each process's 1/P share (`shard`); docs/scaling.md, "Input at
pod scale", has the table. `in_memory=True` loads any split into memory.
"""
import threading
from typing import Any, Dict, List, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from losa_jax.datasets import core

class TfdsSource(core.Source):
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
      at most `in_memory_max_examples` examples). False reads an ArrayRecord
      split by index from its files and streams a TFRecord one.
    in_memory_max_examples: size limit of the auto mode.
  """

  def __init__(self, name: str, split: str, *, data_dir: Optional[str] = None,
               download: bool = False, manual_dir: Optional[str] = None,
               in_memory: Optional[bool] = None,
               in_memory_max_examples: int = 50_000):
    core.parse_split(split)
    self.name, self.split, self.data_dir = name, split, data_dir
    self.download, self.manual_dir = download, manual_dir
    self.in_memory = in_memory
    self.in_memory_max_examples = in_memory_max_examples
    self._builder_obj = self._table = self._records = self._count = None
    self._lock = threading.Lock()

  def _where(self) -> str:
    return (f"TFDS dataset {self.name!r}, split {self.split!r}, data_dir "
            f"{self.data_dir or '(TFDS default)'}")

  def _builder(self):
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
    builder = self._builder()
    if self._array_record():   # TFDS reads ArrayRecord by index only.
      records = self._record_table()
      return tf.data.Dataset.range(records.num_examples).batch(256).map(
          records.read).unbatch().map(records.decode)
    try:
      return builder.as_dataset(
          split=self.split, shuffle_files=False,
          decoders=self._decoders(builder.info.features),
          read_config=tfds.ReadConfig(try_autocache=False))
    except AssertionError as e:
      # tfds signals "not prepared" with an AssertionError.
      raise core.DataNotFoundError(
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

  def _record_table(self) -> "RecordTable":
    """The split's one RecordTable (its files opened once, its reads
    counted in one place), shared by `table` and `as_dataset`."""
    if self._records is None:
      self._records = RecordTable(self)
    return self._records

  def _array_record(self) -> bool:
    fmt = self._builder().info.file_format
    return getattr(fmt, "value", fmt) == "array_record"

  def table(self):
    """`core.Table` (in memory), `RecordTable` (ArrayRecord) or None."""
    with self._lock:
      if self._table is not None:
        return self._table
      limit = self.in_memory_max_examples
      n = self.num_examples()
      if self._array_record() and not self.in_memory:
        self._table = self._record_table()
        return self._table
      if self.in_memory is False or (
          self.in_memory is None and n is not None and n > limit):
        return None
      cap = None if self.in_memory else limit + 1
      examples = list(self.as_dataset().take(cap or -1).as_numpy_iterator())
      if cap is not None and len(examples) > limit:
        logging.info("%s has > %d examples: streaming it.", self._where(),
                     limit)
        return None
      self._count = len(examples)
      self._table = core.Table.from_examples(examples)
      return self._table

  def shard(self, process_index: int, process_count: int) -> "TfdsSource":
    """This process's share of a streamed split: 1/P of every split term.

    Each `+` term is cut into P contiguous example ranges (like
    `tfds.even_splits`), so a process opens only the files, and file ranges,
    of its own part.
    """
    splits = self._builder().info.splits
    terms = []
    for s in core.parse_split(self.split):
      lo, hi = s.resolve(splits[s.name].num_examples)
      cut = [lo + (hi - lo) * i // process_count
             for i in range(process_count + 1)]
      terms.append(f"{s.name}[{cut[process_index]}:{cut[process_index + 1]}]")
    out = TfdsSource(self.name, "+".join(terms), data_dir=self.data_dir,
                     in_memory=False)
    out._builder_obj = self._builder()  # pylint: disable=protected-access
    return out


class RecordTable:
  """Random access to an ArrayRecord split: records are read when gathered.

  `read(indices)` (tf int64 [k] -> serialized string [k]) reads only the
  records asked for, through `tfds`' ArrayRecord data source (no TensorFlow
  in the read); `decode(serialized)` parses one record in the graph, images
  left encoded for the pp's `decode`. `records_read` and `bytes_read` count
  what this process read.
  """

  def __init__(self, source: TfdsSource):
    builder = source._builder()  # pylint: disable=protected-access
    self._records = builder.as_data_source(
        split=source.split,
        deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    self._features = builder.info.features
    self._decoders = source._decoders(self._features)  # pylint: disable=protected-access
    self.num_examples = len(self._records)
    self.records_read = self.bytes_read = 0
    self._lock = threading.Lock()

  def _read(self, indices: np.ndarray) -> np.ndarray:
    records: List[bytes] = self._records.__getitems__(indices.tolist())
    with self._lock:
      self.records_read += len(indices)
      self.bytes_read += sum(len(r) for r in records)
    return np.array(records, dtype=object)

  def read(self, indices: tf.Tensor) -> tf.Tensor:
    out = tf.numpy_function(self._read, [indices], tf.string, stateful=False)
    return tf.ensure_shape(out, indices.shape)

  def decode(self, serialized: tf.Tensor) -> dict:
    return self._features.deserialize_example(serialized,
                                              decoders=self._decoders)


# TFDS examples may be images (decode), videos (video_decode) or VTAB tasks.
PP_MODULES = ("image", "video", "vtab")


def make(dataset: str, split: str, **kw) -> TfdsSource:
  """dict(name="tfds", dataset="cifar100", split=..., data_dir=...), or the
  short form dict(name="cifar100", split=...)."""
  return TfdsSource(dataset, split, **kw)
