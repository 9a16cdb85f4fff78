# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Writes examples as a prepared TFDS dataset, by default in ArrayRecord.

A split stored as ArrayRecord is read by index (`tfds.RecordTable`): each
process reads only its own rows of the exact global permutation, at any size.
`write` turns any examples (e.g. a folder of images, via a generator) into
such a dataset; `synthetic` makes a tiny one for tests and benchmarks:

    records.synthetic("/tmp/tfds", num_examples=20_000)
    dict(name="tfds", dataset="losa_synthetic_records", split="train",
         data_dir="/tmp/tfds")
"""
import os
from typing import Callable, Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds


def write(data_dir: str, name: str,
          splits: Mapping[str, Callable[[], Iterable[dict]]],
          features: Mapping[str, object], *, version: str = "1.0.0",
          file_format: str = "array_record") -> str:
  """Prepares TFDS dataset `name` under `data_dir`; returns its folder.

  Args:
    data_dir: the TFDS data dir it is read from later.
    name: dataset name (`dict(name="tfds", dataset=name, ...)` reads it).
    splits: split name -> function returning that split's examples (dicts
      matching `features`), in the order that becomes the record order.
    features: feature name -> `tfds.features` connector (e.g.
      `tfds.features.Image(shape=(8, 8, 3))`, `tfds.features.ClassLabel`).
    version: dataset version.
    file_format: "array_record" (random access) or "tfrecord".
  """

  class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version(version)

    def _info(self):
      # Records keep the generator's order (TFDS would shuffle them by key).
      return tfds.core.DatasetInfo(
          builder=self, features=tfds.features.FeaturesDict(dict(features)),
          disable_shuffling=True)

    def _split_generators(self, dl_manager):
      del dl_manager
      return {s: self._generate_examples(s) for s in splits}

    def _generate_examples(self, split):
      for i, ex in enumerate(splits[split]()):
        yield i, ex

  Builder.name = name
  builder = Builder(data_dir=data_dir, file_format=file_format)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return os.path.join(data_dir, name, version)


def synthetic(data_dir: str, num_examples: int, *, num_test: int = 500,
              image_size: int = 8, num_classes: int = 10,
              name: str = "losa_synthetic_records",
              file_format: str = "array_record") -> str:
  """A tiny dataset: PNG images [image_size, image_size, 3] uint8 of seeded
  noise, "label" = index % num_classes and "index" (int64, the example's
  position in its split), splits "train" and "test"."""
  s = image_size

  def examples(n, seed):
    def gen():
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield {"image": rng.integers(0, 256, (s, s, 3), dtype=np.uint8),
               "label": i % num_classes, "index": i}
    return gen

  return write(
      data_dir, name,
      {"train": examples(num_examples, 0), "test": examples(num_test, 1)},
      {"image": tfds.features.Image(shape=(s, s, 3)),
       "label": tfds.features.ClassLabel(num_classes=num_classes),
       "index": np.int64},
      file_format=file_format)
