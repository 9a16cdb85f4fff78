# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Tests for losa_jax.vtab: the task table and its label ops on mock data."""
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from losa_jax.assembly import input_pipeline as ip
from losa_jax import datasets
from losa_jax import pp
from losa_jax.datasets import vtab

# method.md section 4.1.
CLASSES = {
    "cifar100": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102,
    "oxford_iiit_pet": 37, "svhn": 10, "sun397": 397, "patch_camelyon": 2,
    "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti_dist": 4,
    "dsprites_loc": 16, "dsprites_ori": 16, "smallnorb_azi": 18,
    "smallnorb_ele": 9}
MODEL_PP = "decode|resize(16)|value_range(-1, 1)|keep('image', 'label')"


def test_table():
  assert len(vtab.TASKS) == 19
  assert {k: t["num_classes"] for k, t in vtab.TASKS.items()} == CLASSES
  assert sum(t["num_classes"] for t in vtab.TASKS.values()) == 940
  assert [len(vtab.tasks_in_group(g)) for g in vtab.GROUPS] == [7, 4, 8]
  assert vtab.task("eurosat")["tfds_name"] == "eurosat/rgb"
  assert vtab.task("diabetic_retinopathy")["tfds_name"] == (
      "diabetic_retinopathy_detection/btgraham-300")


# What google-research/task_adaptation asks TFDS for, per task.
REFERENCE_VERSIONS = {
    "cifar100": "3.*.*", "caltech101": "3.*.*", "dtd": "3.*.*",
    "oxford_flowers102": "2.*.*", "oxford_iiit_pet": "3.*.*",
    "svhn": "3.*.*", "sun397": "4.*.*", "patch_camelyon": "2.*.*",
    "eurosat": "2.*.*", "resisc45": "3.*.*", "diabetic_retinopathy": "3.*.*",
    "clevr_count": "3.*.*", "clevr_dist": "3.*.*", "dmlab": "2.0.1",
    "kitti_dist": "3.1.0", "dsprites_loc": "2.*.*", "dsprites_ori": "2.*.*",
    "smallnorb_azi": "2.*.*", "smallnorb_ele": "2.*.*"}


def _matches(version, pattern):
  return all(p in ("*", v) for v, p in zip(version.split("."),
                                           pattern.split(".")))


@pytest.mark.parametrize("name", list(vtab.TASKS))
def test_every_task_pins_a_version_tfds_resolves(name, tmp_path):
  t = vtab.task(name)
  version = t["tfds_version"]
  assert re.fullmatch(r"\d+\.\d+\.\d+", version), version
  assert vtab.tfds_spec(name) == f"{t['tfds_name']}:{version}"
  assert vtab.source(name, "test").name == vtab.tfds_spec(name)
  # An empty data_dir: TFDS resolves the pin from its code, offline.
  assert vtab.resolved_tfds(name, str(tmp_path)) == vtab.tfds_spec(name)
  # A pin that differs from the reference's request says why.
  differs = not _matches(version, REFERENCE_VERSIONS[name])
  assert bool(t["version_note"]) == differs, t["version_note"]
  assert differs == (name in ("oxford_iiit_pet", "kitti_dist"))


def test_a_version_tfds_cannot_load_is_refused_naming_the_task(
    tmp_path, monkeypatch):
  # task_adaptation's Pets request: TFDS 4.9.10 builds only 4.0.0.
  monkeypatch.setitem(vtab.TASKS["oxford_iiit_pet"], "tfds_version", "3.*.*")
  with pytest.raises(ValueError, match=(
      r"VTAB task 'oxford_iiit_pet': TFDS .* cannot load "
      r"oxford_iiit_pet:3\.\*\.\*")):
    vtab.resolved_tfds("pets", str(tmp_path))


@pytest.mark.parametrize("name", list(vtab.TASKS))
def test_every_task_splits_and_label_pp_parse(name):
  t = vtab.task(name)
  assert t["name"] == name
  for key in ("train800", "val200", "train800val200", "test", "train", "val",
              "trainval"):
    datasets.parse_split(t["splits"][key])
  assert t["splits"]["train800"] == "train[:800]"
  assert t["splits"]["train800val200"] == (
      t["splits"]["train800"] + "+" + t["splits"]["val200"])
  (val,) = datasets.parse_split(t["splits"]["val200"])
  assert val.stop - (val.start or 0) == 200
  pp.get_preprocess_fn(vtab.pp_spec(name, MODEL_PP))


def test_split_conventions():
  assert vtab.task("cifar100")["splits"]["val200"] == "train[45000:45200]"
  assert vtab.task("dtd")["splits"]["val200"] == "validation[:200]"
  assert vtab.task("clevr_count")["splits"]["test"] == "validation"
  assert vtab.task("eurosat")["splits"]["test"] == "train[21600:]"
  assert vtab.task("smallnorb_ele")["splits"]["val200"] == "test[:200]"
  assert vtab.task("smallnorb_ele")["splits"]["test"] == "test[50%:]"


def test_unknown_task_and_aliases():
  with pytest.raises(ValueError, match="Unknown VTAB task 'cifar10'") as e:
    vtab.task("cifar10")
  assert "cifar100" in str(e.value) and "smallnorb_ele" in str(e.value)
  assert vtab.task("kitti")["name"] == "kitti_dist"
  t = vtab.task("dtd")
  t["splits"]["test"] = "changed"
  assert vtab.task("dtd")["splits"]["test"] == "test"  # A copy.


def _fake_dataset(examples, signature):
  """An `as_dataset_fn` for tfds.testing.mock_data yielding `examples`."""

  def as_dataset(self, split, **kwargs):
    del self, split, kwargs
    return tf.data.Dataset.from_generator(lambda: iter(examples),
                                          output_signature=signature)

  return as_dataset


def _png(value):
  return tf.io.encode_png(np.full((10, 12, 3), value, np.uint8)).numpy()


def _fake_objects(file_key: str, int_key: str, coords_key: str, objects):
  """Detection-shaped examples, one per (ints [N], coords [N, 3]) in `objects`:
  a PNG, a file name under `file_key`, and "objects" with int64 [N] `int_key`
  and float32 [N, 3] `coords_key`."""
  examples = [{"image": _png(i), file_key: f"{i}.png",
               "objects": {int_key: np.asarray(ints, np.int64),
                           coords_key: np.asarray(coords, np.float32)}}
              for i, (ints, coords) in enumerate(objects)]
  return _fake_dataset(examples, {
      "image": tf.TensorSpec([], tf.string),
      file_key: tf.TensorSpec([], tf.string),
      "objects": {int_key: tf.TensorSpec([None], tf.int64),
                  coords_key: tf.TensorSpec([None, 3], tf.float32)}})


def _fake_clevr():
  """CLEVR-shaped examples: 3..8 objects, closest depth in each class."""
  rng = np.random.RandomState(0)
  objects = []
  for i, near in enumerate([7.5, 8.1, 8.6, 9.1, 9.6, 10.2]):
    coords = rng.uniform(0.0, 1.0, (3 + i, 3)).astype(np.float32)
    coords[:, 2] = near + rng.uniform(0.0, 2.0, 3 + i)
    coords[-1, 2] = near
    objects.append((np.zeros(3 + i, np.int64), coords))
  return _fake_objects("file_name", "size", "pixel_coords", objects)


def _fake_kitti():
  """KITTI-shaped examples covering the 4 classes (types 0-2: vehicles)."""
  objects = [([], []), ([3], [2.0]), ([0, 3], [5.0, 1.0]),
             ([1, 2], [30.0, 12.0]), ([2, 6], [25.0, 3.0]), ([0], [8.0])]
  examples = []
  for types, depths in objects:
    loc = np.ones((len(depths), 3), np.float32)
    loc[:, 2] = depths
    examples.append((types, loc))
  return _fake_objects("image/file_name", "type", "location", examples)


@pytest.fixture
def mock_tfds(tmp_path):
  """Returns `mock(name)`, a context that mocks tfds for the task `name`.

  tfds' random fake examples cannot be encoded for CLEVR (Sequence(Text)
  features) and KITTI (random bboxes with min > max), so those two get
  hand-made examples in the structure the real builders produce (with
  variable object counts, which also exercises ragged random access).
  """

  def mock(name):
    kw = {}
    if name.startswith("clevr"):
      kw["as_dataset_fn"] = _fake_clevr()
    elif name.startswith("kitti"):
      kw["as_dataset_fn"] = _fake_kitti()
    return tfds.testing.mock_data(
        num_examples=6, policy=tfds.testing.MockPolicy.USE_CODE,
        data_dir=str(tmp_path), **kw)

  return mock


def _expected_label(name, raw):
  if name == "clevr_count":
    return len(raw["objects"]["size"]) - 3
  if name == "clevr_dist":
    d = raw["objects"]["pixel_coords"][:, 2].min()
    return int(np.searchsorted([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0], d)) - 1
  if name == "kitti_dist":
    veh = raw["objects"]["type"] < 3
    d = min(raw["objects"]["location"][veh, 2].tolist() + [1000.0])
    return int(np.searchsorted([-100.0, 8.0, 20.0, 999.0], d)) - 1
  if name == "dsprites_loc":
    return raw["label_x_position"] // 2
  if name == "dsprites_ori":
    return raw["label_orientation"] * 16 // 40
  if name == "smallnorb_azi":
    return raw["label_azimuth"]
  if name == "smallnorb_ele":
    return raw["label_elevation"]
  return raw["label"]


@pytest.mark.parametrize("name", [
    "clevr_count", "clevr_dist", "kitti_dist", "dsprites_loc", "dsprites_ori",
    "smallnorb_azi", "smallnorb_ele", "dmlab", "cifar100"])
def test_label_pp_on_mock_data(name, mock_tfds, tmp_path):
  with mock_tfds(name):
    _check_task_on_mock_data(name, str(tmp_path))


def _check_task_on_mock_data(name, data_dir):
  t = vtab.task(name)
  src = vtab.source(name, "train800", data_dir=data_dir)
  label_fn = pp.get_preprocess_fn(t["label_pp"])
  labels = []
  for raw in src.as_dataset():
    out = label_fn(dict(raw))
    assert sorted(out) == ["image", "label"]
    raw = {k: (v.numpy() if hasattr(v, "numpy") else
               {kk: vv.numpy() for kk, vv in v.items()})
           for k, v in raw.items()}
    labels.append(int(out["label"].numpy()))
    assert labels[-1] == int(_expected_label(name, raw))
    assert 0 <= labels[-1] < t["num_classes"]
  if name == "clevr_count":
    assert labels == [0, 1, 2, 3, 4, 5]
  elif name == "clevr_dist":
    assert labels == [0, 1, 2, 3, 4, 5]
  elif name == "kitti_dist":
    assert labels == [3, 3, 0, 1, 2, 0]
  it, n = ip.training(src, batch_size=4, pp=vtab.pp_spec(name, MODEL_PP),
                      seed=0)
  batch = next(it)
  assert n == 6
  assert batch["image"].shape == (4, 16, 16, 3)
  assert batch["label"].dtype == np.int64
  assert ((0 <= batch["label"]) & (batch["label"] < t["num_classes"])).all()
  if name.startswith("dsprites"):  # Binary pixels rescaled to {0, 255}.
    raw_img = next(ip.evaluation(src, batch_size=6, pp=[
        t["label_pp"], "keep('image')"]).__iter__())["image"]
    assert set(np.unique(raw_img).tolist()) <= {0, 255}
