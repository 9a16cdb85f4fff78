# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The trainer end to end: validation, data, resume, corruption, NaN, predict."""
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import helpers_train
from losa_jax.checkpointing import integrity
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.config import schema as config_lib
from losa_jax.serving import predict
from losa_jax import train
from losa_jax.models import model as model_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PP = "decode(channels=3)|value_range(-1, 1)|keep('image', 'label')"


def digits_config(method="losa", steps=12, **kw):
  """Tiny random ViT on scikit-learn's real digits (28 px, 10 classes)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_classes = 10
  c.image_size = 28
  c.total_steps = steps
  c.input = dict(data=dict(demo="digits", split="train[:256]"), batch_size=16,
                 pp=PP)
  c.evals = dict(test=dict(data=dict(demo="digits", split="test[:64]"),
                           pp=PP, batch_size=32))
  c.model = dict(method=method, backbone=dict(
      width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(7, 7),
      pool_type="tok"), losa=dict(rank=4), lora=dict(rank=4),
                 adapter=dict(dim=4))
  c.optax_name = "adam"
  c.lr = 3e-3
  c.schedule = dict(warmup_steps=2, decay_type="cosine")
  c.log_every = 4
  c.ckpt_every = 4
  c.keep_ckpts = 5
  c.update(kw)
  return c


# --- validation ---------------------------------------------------------------


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.__setitem__("totl_steps", 3), "did you mean 'total_steps'"),
    (lambda c: c.model.__setitem__("method", "prompt"), "choose one of"),
    (lambda c: c.model.backbone.__setitem__("variant", "Z/16"),
     "must be one of"),
    (lambda c: c.model.losa.__setitem__("rnk", 3), "Unknown config.model.losa"),
    (lambda c: c.model.backbone.__setitem__("pool_type", "max"), "pool_type"),
    (lambda c: c.input.__setitem__("batchsize", 3), "config.input"),
])
def test_bad_config_fails_before_compiling(edit, match):
  c = digits_config()
  with c.unlocked():
    edit(c)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


def test_unknown_tfds_dataset_is_named(tmp_path):
  c = digits_config()
  c.input.data = dict(name="cifar1000", split="train", data_dir=str(tmp_path))
  with pytest.raises(Exception, match="cifar1000"):
    train.train_and_evaluate(c, str(tmp_path / "wd"))


# --- every method, on TFDS mock data ------------------------------------------


@pytest.mark.parametrize("method", [m for m in model_lib.METHODS if m not in
                                    model_lib.VIDEO_ONLY_METHODS])
def test_every_method_trains_on_tfds_mock_data(method, tmp_path):
  c = digits_config(method, steps=3, log_every=1, ckpt_every=0)
  c.image_size = 32
  c.model.backbone.patch_size = (8, 8)
  c.input.data = dict(name="cifar10", split="train", data_dir=str(tmp_path))
  c.input.pp = PP.replace("value_range", "resize(32)|value_range")
  c.evals = dict(test=dict(data=dict(name="cifar10", split="test",
                                     data_dir=str(tmp_path)),
                           pp=c.input.pp, batch_size=8))
  with tfds.testing.mock_data(num_examples=24, data_dir=str(tmp_path)):
    out = train.train_and_evaluate(c, str(tmp_path / "wd"))
  r = out["results"]
  assert r["steps"] == 3 and r["test/count"] == 24
  assert np.isfinite(r["train/loss"])
  lines = open(tmp_path / "wd" / "metrics.jsonl").read().splitlines()
  assert [json.loads(l)["step"] for l in lines[:3]] == [1, 2, 3]
  assert os.listdir(tmp_path / "wd" / "tensorboard")


# --- resume -------------------------------------------------------------------


def _final_params(workdir, config):
  """Trainable params of the newest checkpoint in `workdir`."""
  ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  async_save=False)
  step = ck.latest_step()
  meta = ck.read_meta(step)
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  raw = ocp.StandardCheckpointer().restore(
      os.path.join(ck.directory, str(step), "state"))
  ck.close()
  return step, meta, raw["params"]


def _config_file(tmp_path, **kw):
  """A config file for subprocess runs of `python -m losa_jax.train`."""
  path = tmp_path / "cfg.py"
  path.write_text(
      "import sys\n"
      f"sys.path.insert(0, {os.path.join(REPO, 'tests')!r})\n"
      "from test_train import digits_config\n"
      f"def get_config(arg=None):\n  return digits_config(**{kw!r})\n")
  return str(path)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_params(tmp_path):
  # The uninterrupted reference runs in this process (one interpreter start
  # less); the killed run and its resume are real `python -m losa_jax.train`
  # processes.
  train.train_and_evaluate(digits_config(steps=24, ckpt_every=4),
                           str(tmp_path / "ref"))
  cfg = _config_file(tmp_path, steps=24, ckpt_every=4)
  rc, out = helpers_train.run_train(cfg, str(tmp_path / "killed"),
                                     kill_after_ckpt=8)
  assert rc != 0                         # it really was killed mid-run
  ckpts = sorted(int(s) for s in os.listdir(tmp_path / "killed" / "checkpoints")
                 if s.isdigit())
  assert ckpts and max(ckpts) < 24, ckpts
  rc, out = helpers_train.run_train(cfg, str(tmp_path / "killed"))
  assert rc == 0, out
  assert "Resumed from step" in out
  s1, _, p1 = _final_params(str(tmp_path / "ref"), None)
  s2, _, p2 = _final_params(str(tmp_path / "killed"), None)
  assert s1 == s2 == 24
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6), p1, p2)


def test_resume_refuses_another_config_or_backbone(tmp_path):
  c = digits_config(steps=4)
  train.train_and_evaluate(c, str(tmp_path))
  c2 = digits_config(steps=8)
  c2.model.losa.rank = 8
  with pytest.raises(integrity.CheckpointError,
                     match="model.losa.rank: was 4, now 8"):
    train.train_and_evaluate(c2, str(tmp_path))
  # Another backbone file (same shapes, other values) is refused by hash.
  from losa_jax.models import porting  # pylint: disable=g-import-not-at-top
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top
  bb = vit.Model(None, **dict(c.model.backbone))
  params = bb.init(jax.random.key(1), np.zeros((1, 28, 28, 3), np.float32))
  npz = str(tmp_path / "other.npz")
  porting.save_vit(params["params"], npz)
  c3 = digits_config(steps=8, model_init=npz)
  with pytest.raises(integrity.CheckpointError, match="sha256"):
    train.train_and_evaluate(c3, str(tmp_path))


def test_corrupted_checkpoint_is_named_and_set_aside(tmp_path, caplog):
  c = digits_config(steps=8, ckpt_every=4)
  train.train_and_evaluate(c, str(tmp_path))
  ckdir = tmp_path / "checkpoints"
  assert sorted(os.listdir(ckdir)) == ["4", "8"]
  # Truncate every array file of the newest step.
  for root, _, files in os.walk(ckdir / "8" / "state"):
    for f in files:
      if "manifest" in f or f.endswith((".ocdbt", "data")) or "d" in root:
        with open(os.path.join(root, f), "wb") as fh:
          fh.write(b"garbage")
  # The resume names the damaged step, moves it aside and goes on from 4.
  caplog.set_level(logging.WARNING)
  out = train.train_and_evaluate(digits_config(steps=12, ckpt_every=4),
                                 str(tmp_path))
  log = "\n".join(r.getMessage() for r in caplog.records)
  assert f"step 8 at {ckdir / '8'} is damaged" in log, log
  assert len(list((tmp_path / "damaged_checkpoints").glob("8.*"))) == 1
  assert sorted(int(s) for s in os.listdir(ckdir)) == [4, 8, 12]
  assert int(out["state"]["step"]) == 12
  ck = checkpointing.Checkpointer(str(ckdir), read_only=True)
  assert ck.read_meta(4)["step"] == 4 and ck.verify(8)
  ck.close()


def test_nan_loss_stops_at_its_step_and_keeps_last_checkpoint(tmp_path):
  c = digits_config(steps=12, ckpt_every=4)
  train.train_and_evaluate(c, str(tmp_path))
  c2 = digits_config(steps=20, ckpt_every=4, lr=float("nan"))
  with pytest.raises(train.NonFiniteLossError, match="at step 14"):
    train.train_and_evaluate(c2, str(tmp_path))
  steps = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints")
                 if s.isdigit())
  assert max(steps) == 12


# --- inference ----------------------------------------------------------------


def test_predict_from_workdir(tmp_path):
  c = digits_config(steps=40, lr=1e-2)
  res = train.train_and_evaluate(c, str(tmp_path))["results"]
  p = predict.Predictor(c, str(tmp_path))
  recs = predict.predict_split(p, dict(demo="digits", split="test[:64]"))
  assert len(recs) == 64
  acc = np.mean([r["label"] == r["true"] for r in recs])
  assert acc == pytest.approx(res["test/accuracy"], abs=1e-6)
  # Files: write two test digits as PNGs and classify them.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from losa_jax.datasets import digits as demo_data  # pylint: disable=g-import-not-at-top
  test = demo_data.get_task("digits")["test"]
  paths = []
  for i in range(2):
    img = np.asarray(test["image"][i])
    img = img if img.ndim == 3 else img[..., None]
    path = str(tmp_path / f"{i}.png")
    tf.io.write_file(path, tf.io.encode_png(img))
    paths.append(path)
  out = predict.predict_files(p, paths)
  assert [r["label"] for r in out] == [r["label"] for r in recs[:2]]
  with pytest.raises(FileNotFoundError, match="nope.png"):
    predict.predict_files(p, [str(tmp_path / "nope.png")])


@pytest.mark.parametrize("pp,where,match", [
    # 32-px images for a 28-px model: the train split, before any step.
    ("decode(channels=3)|resize(32)|value_range(-1, 1)|keep('image', 'label')",
     "input", r"\(16, 32, 32, 3\).*\(28, 28, 3\)"),
    # One channel where the patch embedding wants 3: the eval split.
    ("decode(channels=1)|value_range(-1, 1)|keep('image', 'label')",
     "evals", r"channels"),
])
def test_data_that_does_not_fit_the_model_is_named(tmp_path, pp, where,
                                                   match):
  c = digits_config(steps=2)
  if where == "input":
    c.input.pp = pp
  else:
    c.evals.test.pp = pp
  with pytest.raises(ValueError, match=match) as e:
    train.train_and_evaluate(c, str(tmp_path))
  assert f"config.{where}" in str(e.value)
  assert not os.path.isdir(tmp_path / "checkpoints") or not os.listdir(
      tmp_path / "checkpoints")
