# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The VTAB-1k sweep runner writes a complete table (19 tasks on mock data)."""
import contextlib
import csv
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from losa_jax.datasets import vtab
from losa_jax import vtab_sweep
from test_vtab import _fake_clevr, _fake_kitti  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_generic(builder, num=8):
  """Examples with every Image (as PNG bytes) and ClassLabel feature.

  tfds' random mock examples fail to encode for some builders (random
  bounding boxes with min > max, e.g. Pets' head_bbox), and VTAB only reads
  images and class labels.
  """
  feats = builder.info.features
  images = {k: f for k, f in feats.items()
            if isinstance(f, tfds.features.Image)}
  labels = {k: f for k, f in feats.items()
            if isinstance(f, tfds.features.ClassLabel)}
  examples = []
  for i in range(num):
    ex = {}
    for k, f in images.items():
      ch = f.shape[-1] or 3
      ex[k] = tf.io.encode_png(np.full((16, 16, ch), 20 * i, np.uint8)).numpy()
    for k, f in labels.items():
      ex[k] = np.int64(i % f.num_classes)
    examples.append(ex)
  sig = {**{k: tf.TensorSpec([], tf.string) for k in images},
         **{k: tf.TensorSpec([], tf.int64) for k in labels}}
  return tf.data.Dataset.from_generator(lambda: iter(examples),
                                        output_signature=sig)


@contextlib.contextmanager
def mock_all_tasks(data_dir):
  """mock_data for every VTAB builder, with examples that always encode."""
  def as_dataset(self, split, **kw):
    if self.name == "clevr":
      return _fake_clevr()(self, split, **kw)
    if self.name == "kitti":
      return _fake_kitti()(self, split, **kw)
    return _fake_generic(self)

  with tfds.testing.mock_data(num_examples=8, data_dir=data_dir):
    default = tfds.core.DatasetBuilder.as_dataset
    tfds.core.DatasetBuilder.as_dataset = as_dataset
    try:
      yield
    finally:
      tfds.core.DatasetBuilder.as_dataset = default


def _one_block_one_step(monkeypatch):
  """runlocal, cheaper still: a 1-block backbone, 1 step per task.

  Each of the 19 tasks compiles its own programs (the head width differs),
  and the table does not depend on the model's size.
  """
  load = vtab_sweep.load_config

  def small(spec, task):
    c = load(spec, task)
    c.model.backbone.depth = 1
    c.total_steps = 1
    return c
  monkeypatch.setattr(vtab_sweep, "load_config", small)


def _mock_sweep_setup(tmp_path, monkeypatch):
  """(config spec, sweep workdir) of a cheap sweep on mock_all_tasks data."""
  _one_block_one_step(monkeypatch)
  cfg = os.path.join(REPO, "configs", "vtab.py") + (
      f":runlocal,data_dir={tmp_path / 'data'}")
  return cfg, str(tmp_path / "sweep")


@pytest.mark.slow
def test_sweep_writes_complete_table(tmp_path, monkeypatch):
  cfg, workdir = _mock_sweep_setup(tmp_path, monkeypatch)
  with mock_all_tasks(str(tmp_path / "data")):
    out = vtab_sweep.sweep(cfg, workdir, ["all"])
  assert [r["task"] for r in out["rows"]] == list(vtab.TASKS)
  assert all(r["accuracy"] is not None for r in out["rows"])
  assert set(out["summary"]) == {"natural", "specialized", "structured",
                                 "mean_of_tasks", "mean_of_groups"}
  with open(os.path.join(workdir, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 19 + 5
  assert [r["tfds"] for r in rows[:19]] == [vtab.tfds_spec(t)
                                           for t in vtab.TASKS]
  md = open(os.path.join(workdir, "results.md")).read()
  for t in vtab.TASKS:
    assert f"| {t} |" in md
  # A second call reads the finished tasks back instead of retraining.
  with mock_all_tasks(str(tmp_path / "data")):
    again = vtab_sweep.sweep(cfg, workdir, ["cifar100", "dtd"])
  assert [r["accuracy"] for r in again["rows"]] == [
      r["accuracy"] for r in out["rows"][:2]]


def test_results_name_the_tfds_version_read(tmp_path, monkeypatch,
                                            capsys):
  cfg, workdir = _mock_sweep_setup(tmp_path, monkeypatch)
  with mock_all_tasks(str(tmp_path / "data")):
    out = vtab_sweep.sweep(cfg, workdir, ["kitti_dist"])
  assert out["rows"][0]["tfds"] == "kitti:3.3.0"
  assert "=== VTAB task kitti_dist (kitti:3.3.0) ===" in capsys.readouterr().out
  with open(os.path.join(workdir, "results.csv")) as f:
    assert next(csv.DictReader(f))["tfds"] == "kitti:3.3.0"
  md = open(os.path.join(workdir, "results.md")).read()
  assert "| task | group | TFDS | top-1 (%) |" in md
  assert "| kitti_dist | structured | kitti:3.3.0 |" in md


def test_unknown_task_fails_before_training(tmp_path):
  with pytest.raises(ValueError, match="Unknown VTAB task"):
    vtab_sweep.sweep(os.path.join(REPO, "configs", "vtab.py") + ":runlocal",
                     str(tmp_path), ["cifar10"])
