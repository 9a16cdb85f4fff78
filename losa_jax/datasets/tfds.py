# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""TFDS: any prepared TFDS dataset (the default for unregistered names)."""
import threading
from typing import Any, Dict, Optional

from absl import logging
import tensorflow as tf

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
      at most `in_memory_max_examples` examples).
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

  def table(self) -> Optional[core.Table]:
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
      self._table = core.Table.from_examples(examples)
      return self._table




# TFDS examples may be images (decode), videos (video_decode) or VTAB tasks.
PP_MODULES = ("image", "video", "vtab")


def make(dataset: str, split: str, **kw) -> TfdsSource:
  """dict(name="tfds", dataset="cifar100", split=..., data_dir=...), or the
  short form dict(name="cifar100", split=...)."""
  return TfdsSource(dataset, split, **kw)
