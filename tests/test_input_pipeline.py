# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Tests for losa_jax.assembly.input_pipeline: splits, sources, training, evaluation."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from losa_jax.assembly import input_pipeline as ip
from losa_jax import datasets
from losa_jax.datasets import arrays as ds_arrays
from losa_jax.datasets import folder as ds_folder
from losa_jax.datasets import tfds as ds_tfds

tfds.disable_progress_bar()

N = 37
AUG = ("decode|random_crop(6)|flip_lr|value_range(-1, 1)|"
       "keep('image', 'label', 'id')")


def _arrays(n=N, size=8):
  rng = np.random.RandomState(0)
  return {"image": rng.randint(0, 256, (n, size, size, 3)).astype(np.uint8),
          "label": (np.arange(n) % 5).astype(np.int64),
          "id": np.arange(n, dtype=np.int64)}


def _take(it, k):
  return [next(it) for _ in range(k)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# --- Splits ----------------------------------------------------------------


@pytest.mark.parametrize("split,expected", [
    ("train", [("train", None, None, False)]),
    ("train[:800]", [("train", None, 800, False)]),
    ("train[800:1000]", [("train", 800, 1000, False)]),
    ("train[:50%]", [("train", None, 50, True)]),
    ("train[-10%:]", [("train", -10, None, True)]),
    ("train+validation", [("train", None, None, False),
                          ("validation", None, None, False)]),
    ("train[:800]+validation[:200]", [("train", None, 800, False),
                                      ("validation", None, 200, False)]),
])
def test_parse_split_good(split, expected):
  got = [(s.name, s.start, s.stop, s.percent) for s in datasets.parse_split(split)]
  assert got == expected


@pytest.mark.parametrize("split", [
    "", "train[", "train[1:2:3]", "train[:50%%]", "train[:150%]",
    "train[10:50%]", "train+", "tr ain[x:]", "[:10]"])
def test_parse_split_bad(split):
  with pytest.raises(ValueError, match="Bad split"):
    datasets.parse_split(split)


def test_split_resolve():
  (s,) = datasets.parse_split("train[:50%]")
  assert s.resolve(10) == (0, 5)
  (s,) = datasets.parse_split("train[-3:]")
  assert s.resolve(10) == (7, 10)
  (s,) = datasets.parse_split("train[800:1000]")
  assert s.resolve(900) == (800, 900)


# --- Sources ---------------------------------------------------------------


def test_array_source_splits():
  data = {"train": _arrays(10), "test": _arrays(4), "num_classes": 5}
  src = ds_arrays.ArraySource(data, "train[2:5]+test[:50%]")
  assert src.num_examples() == 5
  ids = [int(x["id"]) for x in src.as_dataset().as_numpy_iterator()]
  assert ids == [2, 3, 4, 0, 1]
  with pytest.raises(ValueError, match="'val'.*available splits"):
    ds_arrays.ArraySource(data, "val")
  with pytest.raises(ValueError, match="same number of rows"):
    ds_arrays.ArraySource({"image": np.zeros((3, 2)), "label": np.zeros(4)})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("folder")
  rng = np.random.RandomState(1)
  layout = {"train": {"cat": 3, "dog": 2}, "val": {"ant": 1, "dog": 1}}
  for split, classes in layout.items():
    for cls, k in classes.items():
      os.makedirs(root / split / cls)
      for i in range(k):
        img = rng.randint(0, 256, (5, 7, 3)).astype(np.uint8)
        enc = tf.io.encode_png(img) if i % 2 == 0 else tf.io.encode_jpeg(img)
        ext = "png" if i % 2 == 0 else "jpg"
        tf.io.write_file(str(root / split / cls / f"{i}.{ext}"), enc)
  (root / "train" / "cat" / "notes.txt").write_text("not an image")
  return str(root)


def test_folder_source(folder):
  src = ds_folder.FolderSource(folder, "train")
  assert src.class_names == ["ant", "cat", "dog"]  # Union over splits.
  assert src.num_examples() == 5
  exs = list(src.as_dataset().as_numpy_iterator())
  assert [int(e["label"]) for e in exs] == [1, 1, 1, 2, 2]
  assert exs[0]["file_name"] == os.path.join("train", "cat", "0.png").encode()
  batch = next(ip.evaluation(src, batch_size=8, pp="decode|keep('image', "
                             "'label')").__iter__())
  assert batch["image"].shape == (8, 5, 7, 3)
  assert batch["_mask"].sum() == 5
  val = ds_folder.FolderSource(folder, "val+train[:2]")
  assert [int(e["label"]) for e in val.as_dataset().as_numpy_iterator()] == [
      0, 2, 1, 1]
  with pytest.raises(ValueError, match="'test'"):
    ds_folder.FolderSource(folder, "test")
  # Random access (training) reads the same files.
  it, n = ip.training(src, batch_size=5, pp="decode|keep('image', 'label')",
                      seed=0)
  assert n == 5
  assert sorted(next(it)["label"].tolist()) == [1, 1, 1, 2, 2]


# --- Training --------------------------------------------------------------


def test_training_epochs_are_seeded_permutations():
  src = ds_arrays.ArraySource(_arrays(40))
  it, n = ip.training(src, batch_size=8, pp="keep('id')", seed=1)
  assert n == 40 and it.steps_per_epoch == 5 and it.random_access
  ids = np.concatenate([b["id"] for b in _take(it, 10)])
  for epoch in (ids[:40], ids[40:]):
    np.testing.assert_array_equal(np.sort(epoch), np.arange(40))
  assert not np.array_equal(ids[:40], ids[40:])
  assert not np.array_equal(ids[:40], np.arange(40))
  np.testing.assert_array_equal(
      ids[:40], ip.epoch_permutation(1, 0, 40).numpy())
  it2, _ = ip.training(src, batch_size=8, pp="keep('id')", seed=2)
  assert not np.array_equal(next(it2)["id"], ids[:8])
  it3, _ = ip.training(src, batch_size=8, pp="keep('id')", seed=1,
                       shuffle=False)
  np.testing.assert_array_equal(
      np.concatenate([b["id"] for b in _take(it3, 6)]),
      np.r_[np.arange(40), np.arange(8)])


def test_training_is_deterministic_and_resumable():
  src = ds_arrays.ArraySource(_arrays())  # 37 examples: 4 batches/epoch, 5 dropped.
  kw = dict(batch_size=8, pp=AUG, seed=7)
  it, _ = ip.training(src, **kw)
  ref = _take(it, 10)
  assert it.step == 10 and it.state() == {"step": 10}
  assert ref[0]["image"].shape == (8, 6, 6, 3)
  assert ref[0]["image"].dtype == np.float32
  assert ref[0]["label"].dtype == np.int64
  it_again, _ = ip.training(src, **kw)
  _assert_batches_equal(_take(it_again, 10), ref)
  for start in (3, 4, 7):  # 4 = first batch of epoch 1.
    resumed, _ = ip.training(src, start_step=start, **kw)
    assert resumed.step == start
    _assert_batches_equal(_take(resumed, 10 - start), ref[start:])
  # Each epoch skips 5 examples, never repeats one.
  for e in range(2):
    ids = np.concatenate([b["id"] for b in ref[4 * e:4 * e + 4]])
    assert len(set(ids.tolist())) == 32
  # Same example in another epoch gets other augmentation.
  first = {int(i): im for i, im in zip(ref[0]["id"], ref[0]["image"])}
  later = {int(i): im for b in ref[4:8] for i, im in zip(b["id"], b["image"])}
  common = set(first) & set(later)
  assert common and any(not np.array_equal(first[i], later[i])
                        for i in common)


def test_training_without_drop_remainder_straddles_epochs():
  src = ds_arrays.ArraySource(_arrays(10))
  kw = dict(batch_size=4, pp=AUG, seed=3, drop_remainder=False)
  it, _ = ip.training(src, **kw)
  ref = _take(it, 5)  # 20 examples = exactly 2 epochs.
  ids = np.concatenate([b["id"] for b in ref])
  np.testing.assert_array_equal(np.sort(ids[:10]), np.arange(10))
  np.testing.assert_array_equal(np.sort(ids[10:]), np.arange(10))
  resumed, _ = ip.training(src, start_step=2, **kw)  # Starts mid-epoch.
  _assert_batches_equal(_take(resumed, 3), ref[2:])
  # A batch bigger than the dataset spans several epochs.
  big, _ = ip.training(src, batch_size=24, pp="keep('id')", seed=0,
                       drop_remainder=False)
  assert next(big)["id"].shape == (24,)


@pytest.mark.parametrize("count", [2, 4])
def test_training_process_shards_form_the_global_batch(count):
  src = ds_arrays.ArraySource(_arrays())
  kw = dict(batch_size=8, pp=AUG, seed=5, start_step=2)
  ref = _take(ip.training(src, **kw)[0], 3)
  shards = [_take(ip.training(src, process_index=p, process_count=count,
                              **kw)[0], 3) for p in range(count)]
  for step in range(3):
    for key in ref[step]:
      glued = np.concatenate([s[step][key] for s in shards])
      np.testing.assert_array_equal(glued, ref[step][key])
      assert shards[0][step][key].shape[0] == 8 // count


def test_training_errors():
  src = ds_arrays.ArraySource(_arrays(6))
  with pytest.raises(ValueError, match="divisible"):
    ip.training(src, batch_size=6, pp=None, seed=0, process_count=4)
  with pytest.raises(ValueError, match="fewer than batch_size"):
    ip.training(src, batch_size=8, pp=None, seed=0)
  with pytest.raises(ValueError, match="process_index"):
    ip.training(src, batch_size=6, pp=None, seed=0, process_index=2,
                process_count=2)


# --- Evaluation ------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 2, 4])
def test_evaluation_pads_and_counts_each_example_once(count):
  src = ds_arrays.ArraySource(_arrays())  # 37 = 4 full batches of 8 + 5.
  seen = []
  lens = set()
  for p in range(count):
    ev = ip.evaluation(src, batch_size=8, pp="decode|keep('image', 'id')",
                       process_index=p, process_count=count)
    assert ev.num_examples == 37 and len(ev) == 5
    batches = list(ev)
    lens.add(len(batches))
    for b in batches:
      assert b["_mask"].dtype == np.float32
      assert b["image"].shape == (8 // count, 8, 8, 3)
      seen += b["id"][b["_mask"] == 1].tolist()
      assert (b["image"][b["_mask"] == 0] == 0).all()
  assert lens == {5}  # Every process yields the same number of batches.
  assert sorted(seen) == list(range(37))
  if count == 1:
    assert seen == list(range(37))  # In order.


# --- TFDS ------------------------------------------------------------------


class LosaTinyDs(tfds.core.GeneratorBasedBuilder):
  """20 train / 7 test examples; `id` identifies each example."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    # DatasetInfo(builder=self, ...): dataset_info_from_configs() needs a
    # metadata folder next to the module, which a test file does not have.
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(6, 6, 3)),
            "label": tfds.features.ClassLabel(num_classes=3),
            "id": tf.int64}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(20, 0),
            "test": self._generate_examples(7, 100)}

  def _generate_examples(self, n, offset):
    for i in range(n):
      img = np.full((6, 6, 3), i + offset, np.uint8)
      yield i, {"image": img, "label": i % 3, "id": i + offset}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  LosaTinyDs(data_dir=data_dir, file_format="tfrecord").download_and_prepare()
  return data_dir


def _ids(src):
  return [int(x["id"]) for x in src.as_dataset().as_numpy_iterator()]


def test_tfds_local_split_slicing(tfds_dir):
  full = ds_tfds.TfdsSource("losa_tiny_ds", "train", data_dir=tfds_dir)
  part = ds_tfds.TfdsSource("losa_tiny_ds", "train[:10]", data_dir=tfds_dir)
  both = ds_tfds.TfdsSource("losa_tiny_ds", "train[10:12]+test[:50%]",
                       data_dir=tfds_dir)
  assert full.num_examples() == 20 and part.num_examples() == 10
  assert _ids(part) == _ids(full)[:10]
  test = ds_tfds.TfdsSource("losa_tiny_ds", "test", data_dir=tfds_dir)
  assert _ids(both) == _ids(full)[10:12] + _ids(test)[:4]
  assert both.num_examples() == 6
  ex = next(part.as_dataset().as_numpy_iterator())
  assert isinstance(ex["image"], bytes)  # Still encoded until pp decode.
  batch = next(iter(ip.evaluation(
      part, batch_size=4, pp="decode|keep('image', 'id')")))
  np.testing.assert_array_equal(batch["image"][:, 0, 0, 0], batch["id"])


@pytest.mark.parametrize("in_memory", [True, False])
def test_tfds_training_resumable_and_sharded(tfds_dir, in_memory):
  src = ds_tfds.TfdsSource("losa_tiny_ds", "train", data_dir=tfds_dir,
                      in_memory=in_memory)
  kw = dict(batch_size=4, pp=AUG, seed=11, shuffle_buffer_size=8)
  it, n = ip.training(src, **kw)
  assert n == 20 and it.random_access == in_memory
  ref = _take(it, 8)  # Two epochs of 5 batches... and a bit.
  ids = np.concatenate([b["id"] for b in ref[:5]])
  np.testing.assert_array_equal(np.sort(ids), np.arange(20))
  resumed = _take(ip.training(src, start_step=6, **kw)[0], 2)
  _assert_batches_equal(resumed, ref[6:])
  if in_memory:
    shard = _take(ip.training(src, start_step=6, process_index=1,
                              process_count=2, **kw)[0], 2)
    for s, r in zip(shard, ref[6:]):
      np.testing.assert_array_equal(s["image"], r["image"][2:])
    return
  # Streamed: process p reads only its own half of the split (its files),
  # shuffled within it; a resume continues its own stream.
  halves = [set(_ids(src)[:10]), set(_ids(src)[10:])]
  for p in range(2):
    it, _ = ip.training(src, process_index=p, process_count=2, **kw)
    assert it.steps_per_epoch == 4   # (20 // 2 - 1 term) // 2 rows
    mine = _take(it, 6)
    ids = np.concatenate([b["id"] for b in mine[:4]])
    assert set(ids.tolist()) <= halves[p] and len(set(ids.tolist())) == 8
    again = _take(ip.training(src, start_step=4, process_index=p,
                              process_count=2, **kw)[0], 2)
    _assert_batches_equal(again, mine[4:])


def test_tfds_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=12,
                              policy=tfds.testing.MockPolicy.USE_CODE,
                              data_dir=str(tmp_path)):
    # Split slicing is ignored under mock data (12 examples come back).
    src = ds_tfds.TfdsSource("cifar10", "train[:5]", data_dir=str(tmp_path))
    it, n = ip.training(src, batch_size=4, pp="decode|value_range(-1, 1)|"
                        "keep('image', 'label')", seed=0)
    assert n == 12
    batch = next(it)
    assert batch["image"].shape == (4, 32, 32, 3)
    assert batch["label"].dtype == np.int64
    ev = list(ip.evaluation(src, batch_size=5, pp="decode|keep('label')"))
    assert len(ev) == 3 and sum(b["_mask"].sum() for b in ev) == 12


def test_tfds_missing_data_error(tmp_path):
  src = ds_tfds.TfdsSource("losa_tiny_ds", "train[:10]", data_dir=str(tmp_path))
  with pytest.raises(datasets.DataNotFoundError) as e:
    ip.training(src, batch_size=2, pp=None, seed=0)
  msg = str(e.value)
  assert "losa_tiny_ds" in msg and "train[:10]" in msg and str(tmp_path) in msg
  assert "download=True" in msg


def test_tfds_bad_split_and_name(tfds_dir):
  with pytest.raises(ValueError, match="losa_tiny_ds.*validation"):
    ds_tfds.TfdsSource("losa_tiny_ds", "validation",
                  data_dir=tfds_dir).as_dataset()
  with pytest.raises(ValueError, match="Bad split"):
    ds_tfds.TfdsSource("losa_tiny_ds", "train[:", data_dir=tfds_dir)
  with pytest.raises(ValueError, match="no_such_dataset_xyz"):
    ds_tfds.TfdsSource("no_such_dataset_xyz", "train",
                  data_dir=tfds_dir).as_dataset()


def test_get_source_resolves_names(tfds_dir, folder):
  assert isinstance(datasets.get_source(
      dict(name="losa_tiny_ds", split="train", data_dir=tfds_dir)),
                    ds_tfds.TfdsSource)
  assert isinstance(datasets.get_source(
      dict(name="tfds", dataset="losa_tiny_ds", split="train",
           data_dir=tfds_dir)), ds_tfds.TfdsSource)
  assert isinstance(datasets.get_source(
      dict(name="folder", root=folder, split="train")), ds_folder.FolderSource)
  # The pre-registry form still resolves.
  assert isinstance(datasets.get_source(dict(root=folder, split="train")),
                    ds_folder.FolderSource)
  assert isinstance(datasets.get_source(
      dict(name="arrays", arrays=_arrays())), ds_arrays.ArraySource)
  with pytest.raises(ValueError, match="name="):
    datasets.get_source(dict(split="train"))
  with pytest.raises(TypeError, match="'folder'.*bad arguments"):
    datasets.get_source(dict(name="folder", root=folder, split="train",
                             bogus=1))


def _bad_image_folder(root):
  """train/a: 4 good PNGs, a text file named .png, a truncated PNG."""
  os.makedirs(root / "train" / "a")
  for i in range(4):
    img = np.full((6, 6, 3), 40 * i, np.uint8)
    tf.io.write_file(str(root / "train" / "a" / f"{i}.png"),
                     tf.io.encode_png(img))
  (root / "train" / "a" / "fake.png").write_text("this is not a PNG")
  good = tf.io.encode_png(np.arange(3 * 64 * 64, dtype=np.uint8).reshape(
      64, 64, 3)).numpy()
  (root / "train" / "a" / "truncated.png").write_bytes(good[:len(good) // 2])
  return str(root)


_DECODE_PP = "decode(channels=3)|resize(6)|keep('image', 'label')"


def test_bad_images_are_named_not_a_bare_tf_error(tmp_path):
  root = _bad_image_folder(tmp_path)
  src = ds_folder.FolderSource(root, "train")
  it, _ = ip.training(src, batch_size=6, pp=_DECODE_PP, seed=0,
                      shuffle=False)
  with pytest.raises(datasets.BadDataError) as e:
    next(it)
  msg = str(e.value)
  assert "fake.png" in msg and "truncated.png" in msg
  assert "skip_bad_images=True" in msg and "0.png" not in msg
  with pytest.raises(datasets.BadDataError, match="fake.png"):
    list(ip.evaluation(src, batch_size=6, pp=_DECODE_PP))


def test_skip_bad_images_counts_and_leaves_them_out(tmp_path):
  root = _bad_image_folder(tmp_path)
  src = datasets.get_source(dict(name="folder", root=root, split="train",
                                 skip_bad_images=True))
  assert src.num_examples() == 4
  assert sorted(os.path.basename(f) for f, _ in src.skipped) == [
      "fake.png", "truncated.png"]
  it, n = ip.training(src, batch_size=4, pp=_DECODE_PP, seed=0)
  assert n == 4 and next(it)["image"].shape == (4, 6, 6, 3)
