# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The serving CLIs (predict, export) on what a user gives them.

One LoSA task is trained (module fixture, library defaults: bf16 side
stream, fused backward) on a 2-block width-32 ViT saved as a backbone file,
with `flip_lr` in its training pp and none in its eval pp: predict must
apply the eval pp, as multi-task serving and export do. The CLIs run
in-process on their own parsed flags (`run_main`); their subprocess twin is
the slow test at the end.
"""
import logging as std_logging
import os
import shutil
import subprocess
import sys

from absl import flags
from absl import logging
import jax
import ml_collections
import numpy as np
import pytest

from losa_jax import export as export_cli
from losa_jax.serving import export
from losa_jax.serving import predict as predict_lib
from losa_jax.serving import multitask
from losa_jax import predict
from losa_jax import train
from losa_jax.config import workdir as workdir_lib
from losa_jax.evaluators import classification
from losa_jax.models import porting
from losa_jax.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKBONE = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(7, 7),
                pool_type="tok")
EVAL_PP = "decode(channels=3)|value_range(-1, 1)|keep('image', 'label')"
TRAIN_PP = EVAL_PP.replace("|value", "|flip_lr|value")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("serving_cli")
  params = vit.Model(10, **BACKBONE).init(
      jax.random.key(0), np.zeros((1, 28, 28, 3), np.float32))["params"]
  backbone = porting.save_vit(params, str(root / "vit.npz"))
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_classes = 10
  c.image_size = 28
  c.total_steps = 3
  c.input = dict(data=dict(name="demo", task="digits", split="train[:64]"),
                 batch_size=16, pp=TRAIN_PP)
  c.evals = dict(test=dict(data=dict(name="demo", task="digits",
                                     split="test[:16]"), pp=EVAL_PP,
                           batch_size=16))
  c.model_init = backbone
  c.model = dict(method="losa", backbone=dict(BACKBONE), losa=dict(rank=4))
  c.model_load = dict(dont_load=["head/.*"])
  c.optax_name = "adam"
  c.lr = 3e-2
  c.schedule = dict(warmup_steps=0, decay_type="constant")
  c.log_every = 3
  c.keep_ckpts = 1
  out = str(root / "digits")
  train.train_and_evaluate(c, out)
  return out


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
  """Three digit PNG files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from losa_jax.datasets import digits  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("pngs")
  paths = []
  for i, image in enumerate(digits.get_task("digits")["test"]["image"][:3]):
    paths.append(str(root / f"d{i}.png"))
    tf.io.write_file(paths[-1], tf.io.encode_png(
        image if image.ndim == 3 else image[..., None]))
  return paths


@pytest.fixture
def absl_info():
  """absl at INFO, as `app.run` starts a command (--verbosity=0)."""
  old = logging.get_verbosity()
  logging.set_verbosity(logging.INFO)
  yield
  logging.set_verbosity(old)


def _cli(module, args):
  """`module.run_main` on its own parsed flags; returns the flag values."""
  fv = flags.FlagValues()
  module.define_flags(fv)
  argv = fv([module.__name__, *args])
  verbosity = logging.get_verbosity()
  try:
    if module is predict:
      predict.run_main(fv, argv)
    else:
      export_cli.run_main(fv)
  finally:
    logging.set_verbosity(verbosity)   # run_main quiets absl like the CLI
  return fv


def _orbax_info(caplog):
  return [r.getMessage() for r in caplog.records
          if r.levelno < std_logging.WARNING and "orbax" in r.pathname]


def test_predict_applies_the_eval_pp(workdir):
  config = workdir_lib.read_config(workdir)
  predictor = predict_lib.Predictor(config, workdir)
  assert predictor.pp == EVAL_PP and config.input.pp == TRAIN_PP
  data = dict(config.input.data, split="test[:24]")
  rows = predict_lib.predict_split(predictor, data)
  batches = list(classification.eval_batches(
      data, pp=EVAL_PP, batch_size=24, process_index=0, process_count=1))
  images = batches[0]["image"][:24]
  probs = predictor(images)
  np.testing.assert_allclose([r["prob"] for r in rows], probs.max(-1),
                             rtol=0, atol=1e-6)
  # The check can see a flip: flipped digits get other probabilities.
  flipped = predictor(images[:, :, ::-1])
  assert np.abs(flipped.max(-1) - probs.max(-1)).max() > 1e-3


def test_predict_takes_every_image(workdir, pngs, tmp_path, capsys, caplog,
                                   absl_info):
  del absl_info
  out = str(tmp_path / "p.csv")
  # The docstring's form: the files after --images (a random op in the
  # training pp would need a per-example seed and crash).
  _cli(predict, ["--workdir", workdir, "--images", pngs[0], pngs[1], "--out",
                 out])
  text = capsys.readouterr().out
  assert f"eval pp {EVAL_PP!r}" in text and "Wrote 2 predictions" in text
  with open(out) as f:
    assert [line.split(",")[0] for line in f][1:] == pngs[:2]
  # Read-only commands keep the terminal to their own lines, like train.
  assert not _orbax_info(caplog), _orbax_info(caplog)[:3]
  # A comma list and the flag repeated.
  _cli(predict, ["--workdir", workdir, "--images", ",".join(pngs[:2]),
                 "--images", pngs[2], "--out", out])
  with open(out) as f:
    assert [line.split(",")[0] for line in f][1:] == pngs
  with pytest.raises(Exception, match=r"Unexpected arguments \['x.png'\]: "
                     r"image files go after --images"):
    _cli(predict, ["--workdir", workdir, "--split", "test", "x.png"])
  with pytest.raises(FileNotFoundError, match="Image file not found: nope.png"):
    _cli(predict, ["--workdir", workdir, "--images", pngs[0], "nope.png"])


def _export_files(out):
  return sorted(os.listdir(out))


def test_export_refuses_a_full_out_and_deletes_nothing_it_did_not_write(
    workdir, tmp_path, capsys, caplog, absl_info):
  del absl_info
  out = tmp_path / "srv"
  (out / "saved_model").mkdir(parents=True)
  (out / "saved_model" / "mine.txt").write_text("keep me")
  with pytest.raises(FileExistsError, match=r"srv is not empty \(saved_model/"
                     r", saved_model/mine.txt\).*--overwrite"):
    _cli(export_cli, ["--workdirs", workdir, "--out", str(out)])
  with pytest.raises(FileExistsError, match=r"holds what no export wrote "
                     r"there \(saved_model/, saved_model/mine.txt\)"):
    _cli(export_cli, ["--workdirs", workdir, "--out", str(out), "--overwrite",
                  "--nosaved_model"])
  assert (out / "saved_model" / "mine.txt").read_text() == "keep me"
  shutil.rmtree(out / "saved_model")
  _cli(export_cli, ["--workdirs", workdir, "--out", str(out), "--nosaved_model"])
  assert "Exported ['digits']" in capsys.readouterr().out
  assert not _orbax_info(caplog), _orbax_info(caplog)[:3]
  first = _export_files(out)
  assert first == ["model.jax_export", "serving.json", "tasks"]
  # --overwrite replaces an export, and nothing is left beside --out.
  _cli(export_cli, ["--workdirs", workdir, "--out", str(out), "--nosaved_model",
                "--overwrite"])
  assert _export_files(out) == first
  assert os.listdir(tmp_path) == ["srv"]


def test_export_failing_midway_leaves_out_as_it_was(workdir, tmp_path,
                                                    monkeypatch):
  out = str(tmp_path / "srv")
  mt = multitask.load([workdir])
  export.export(mt, out, saved_model=False)
  before = {n: os.path.getmtime(os.path.join(out, n)) for n in os.listdir(out)}

  def broken(*args, **kwargs):
    raise RuntimeError("disk full")

  monkeypatch.setattr(export, "save_task_params", broken)
  with pytest.raises(RuntimeError, match="disk full"):
    export.export(mt, out, saved_model=False, overwrite=True)
  assert {n: os.path.getmtime(os.path.join(out, n))
          for n in os.listdir(out)} == before
  assert os.listdir(tmp_path) == ["srv"]


def test_saved_model_names_both_shapes_of_wrong_images(workdir, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  mt = multitask.load([workdir])
  out = str(tmp_path / "srv")
  export.export(mt, out, image_bytes=False)
  serve = tf.saved_model.load(os.path.join(
      out, export.SAVED_MODEL)).signatures["serving_default"]
  x = np.random.RandomState(0).uniform(-1, 1, (2, 28, 28, 3))
  np.testing.assert_allclose(serve(images=tf.constant(x, tf.float32))[
      "digits"].numpy(), mt(x)["digits"], atol=1e-5)
  with pytest.raises(tf.errors.InvalidArgumentError) as e:
    serve(images=tf.zeros((2, 32, 32, 3)))
  line = [ln for ln in str(e.value).splitlines() if "images have" in ln]
  assert len(line) >= 1 and len(str(e.value)) < 2000, str(e.value)[:3000]
  assert ("images have shape [2, 32, 32, 3]; this model takes [b, 28, 28, 3]"
          " float32 images") in line[0]


def _config_file(tmp_path, workdir):
  """A config file that gives the workdir's config (as a user keeps one)."""
  keep = tmp_path / "kept"
  keep.mkdir()
  shutil.copy(workdir_lib.config_file(workdir), keep)
  path = tmp_path / "digits_config.py"
  path.write_text("from losa_jax.config import workdir\n\n\ndef get_config():\n"
                  f"  return workdir.read_config({str(keep)!r})\n")
  return str(path)


def test_bad_or_missing_config_json_is_named_with_advice(workdir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(workdir, copy)
  spec = _config_file(tmp_path, workdir)
  path = workdir_lib.config_file(copy)
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text[:len(text) // 2])
  out = str(tmp_path / "srv")
  with pytest.raises(ValueError, match=rf"{path} is not valid JSON .*cut "
                     r"short.*export: --configs FILE"):
    _cli(export_cli, ["--workdirs", copy, "--out", out, "--nosaved_model"])
  os.remove(path)
  with pytest.raises(FileNotFoundError, match=rf"No {path}: {copy} exists "
                     r"but holds no config.json.*--configs FILE"):
    _cli(export_cli, ["--workdirs", copy, "--out", out, "--nosaved_model"])
  with pytest.raises(FileNotFoundError, match=r"there is no folder .*nope"):
    workdir_lib.read_config(str(tmp_path / "nope"))
  # The advice works: --configs for export and predict --workdirs, --config
  # for predict --workdir.
  _cli(export_cli, ["--workdirs", copy, "--out", out, "--nosaved_model",
                "--configs", spec])
  assert os.path.exists(os.path.join(out, export.MANIFEST))
  _cli(predict, ["--workdirs", copy, "--configs", spec, "--split", "test[:4]",
                 "--out", str(tmp_path / "m.csv")])
  _cli(predict, ["--workdir", copy, "--config", spec, "--split", "test[:4]",
                 "--out", str(tmp_path / "p.csv")])
  with pytest.raises(ValueError, match=r"2 --configs .* for 1 workdirs"):
    _cli(export_cli, ["--workdirs", copy, "--out", out, "--overwrite",
                  "--configs", spec, "--configs", spec])


def _run(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  return r.stdout, r.stderr


@pytest.mark.slow(reason="predict and export CLIs in subprocesses; the same "
                  "checks run in-process above")
def test_cli_takes_every_image_and_logs_like_train(workdir, pngs, tmp_path):
  out, err = _run("losa_jax.predict", "--workdir", workdir, "--images",
                  *pngs[:2])
  assert f"eval pp {EVAL_PP!r}" in out
  assert [ln.split("'")[3] for ln in out.splitlines()
          if ln.startswith("{'file'")] == pngs[:2]
  assert "orbax" not in err.lower(), err[:2000]
  srv = tmp_path / "srv"
  srv.mkdir()
  (srv / "mine.txt").write_text("keep me")
  r = subprocess.run([sys.executable, "-m", "losa_jax.export", "--workdirs",
                      workdir, "--out", str(srv), "--nosaved_model"],
                     cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                     capture_output=True, text=True, timeout=600)
  assert r.returncode != 0 and "is not empty (mine.txt)" in r.stderr
  assert (srv / "mine.txt").read_text() == "keep me"
  out, err = _run("losa_jax.export", "--workdirs", workdir, "--out",
                  str(tmp_path / "new"), "--nosaved_model")
  assert "Exported ['digits']" in out and "orbax" not in err.lower(), err
