# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The study's tasks and its one command, in `--quick` mode."""
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys

from absl import app
from absl import flags
import numpy as np
import pytest

from losa_jax.datasets import study_tasks as tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_dsprites_tasks_are_seeded_and_balanced():
  a = tasks.dsprites_loc_task(num_train=64, num_test=32)
  b = tasks.dsprites_loc_task(num_train=64, num_test=32)
  np.testing.assert_array_equal(a["train"]["image"], b["train"]["image"])
  for t in (a, tasks.dsprites_ori_task(num_train=64, num_test=32)):
    assert t["train"]["image"].shape == (64, 28, 28, 1)
    assert t["train"]["image"].dtype == np.uint8
    assert t["test"]["label"].shape == (32,)
    labels = np.concatenate([t["train"]["label"], t["test"]["label"]])
    assert labels.min() >= 0 and labels.max() < tasks.NUM_BINS
    assert len(np.unique(labels)) == tasks.NUM_BINS
    # One visible shape per image, never clipped by the frame.
    img = t["train"]["image"][..., 0]
    assert (img.reshape(64, -1).max(1) == 255).all()
    assert (img[:, 0, :] == 0).all() and (img[:, :, -1] == 0).all()


def test_location_label_follows_x_and_orientation_rotates():
  # x-bin 0 has its shape's ink left of x-bin 7's.
  t = tasks.dsprites_loc_task(num_train=200, num_test=10)
  img, lab = t["train"]["image"][..., 0].astype(float), t["train"]["label"]
  cols = np.arange(28)
  mean_x = (img.sum(1) * cols).sum(1) / img.sum((1, 2))
  assert mean_x[lab == 0].max() < mean_x[lab == 7].min()
  # 90 degrees counter-clockwise on screen == np.rot90 of the image.
  one = lambda a: tasks.render_shapes(
      np.array([3]), np.array([14.0]), np.array([14.0]), np.array([5.0]),
      np.array([a]))[0, ..., 0].astype(int)
  up, left = one(0.0), one(np.pi / 2)
  assert np.abs(np.rot90(up) - left).max() <= 1
  assert np.abs(up - np.flipud(up)).max() > 200     # the arrow is not symmetric


def test_mnist_10shot_uses_only_held_out_digits():
  from losa_jax.datasets import digits as demo_data
  t = tasks.mnist_10shot_task()
  assert np.bincount(t["train"]["label"]).tolist() == [10] * 10
  assert len(t["test"]["label"]) == 400
  pretrain = demo_data.mnist5k_task()["train"]["image"].reshape(4500, -1)
  seen = {row.tobytes() for row in pretrain}
  for part in ("train", "test"):
    imgs = t[part]["image"].reshape(len(t[part]["image"]), -1)
    assert not any(row.tobytes() in seen for row in imgs)


def _study_report():
  spec = importlib.util.spec_from_file_location(
      "study_report", os.path.join(REPO, "scripts", "study_report.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _check_quick_outputs(out):
  """The files a --quick study writes, and what they must hold; the tables
  and plots scripts/study_report.py makes from them."""
  with open(out / "runs.csv") as f:
    runs = list(csv.DictReader(f))
  assert [(r["task"], r["label"]) for r in runs] == [
      ("digits", "losa r=8"), ("digits", "linear")]
  for r in runs:
    assert 0.0 <= float(r["accuracy"]) <= 1.0
    assert float(r["peak_bytes"]) > 0 and float(r["flops"]) > 0
  by = {r["label"]: r for r in runs}
  assert int(by["losa r=8"]["trainable_params"]) > int(
      by["linear"]["trainable_params"])
  with open(out / "cost.csv") as f:
    cost = {r["label"]: r for r in csv.DictReader(f)}
  assert float(cost["losa r=8"]["interleaved_step_ms"]) > 0
  with open(out / "meta.json") as f:
    meta = json.load(f)
  assert meta["quick"] and meta["command"].endswith("--quick")
  _study_report().main([str(out)])
  md = (out / "results.md").read_text()
  assert "| losa r=8 |" in md and "| linear |" in md
  for png in ("accuracy_vs_cost.png", "accuracy_per_task.png",
              "loss_curves.png"):
    assert (out / png).read_bytes()[:4] == b"\x89PNG"


def test_quick_study(tmp_path, capsys):
  # The command's code path in-process, from its own parsed flags (the
  # subprocess run is test_quick_study_command, slow).
  from losa_jax.study import run  # pylint: disable=g-import-not-at-top
  out = tmp_path / "study"
  argv = ["--out", str(out), "--quick"]
  run.run_study(run.args_from_flags(_parse(argv), argv=argv))
  _check_quick_outputs(out)
  # --resume keeps finished runs instead of training them again.
  capsys.readouterr()
  argv += ["--resume"]
  again = run.run_study(run.args_from_flags(_parse(argv), argv=argv))
  assert "resuming: 2 runs kept" in "".join(capsys.readouterr())
  assert len(again["runs"]) == 2


@pytest.mark.slow(reason="the CLI end to end in two subprocesses; the same "
                  "checks run in-process in test_quick_study")
def test_quick_study_command(tmp_path):
  out = tmp_path / "study"
  proc = subprocess.run(
      [sys.executable, "-m", "losa_jax.study.run", "--out", str(out),
       "--quick"], cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  _check_quick_outputs(out)
  # --resume keeps finished runs instead of training them again.
  proc = subprocess.run(
      [sys.executable, "-m", "losa_jax.study.run", "--out", str(out),
       "--quick", "--resume"], cwd=REPO, capture_output=True, text=True,
      timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming: 2 runs kept" in proc.stdout


def _parse(argv):
  """The study's flags on a fresh FlagValues, parsed from `argv`."""
  from losa_jax.study import run  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  run.define_flags(fv)
  fv(["study"] + list(argv))
  return fv


@pytest.mark.parametrize("bad", ["--tasks=nope", "--methods=sgd",
                                 "--ranks=8,x"])
def test_unknown_names_are_refused(bad):
  with pytest.raises(flags.IllegalFlagValueError):
    _parse(["--out", "/tmp/x", bad])


def test_flags_and_help():
  from losa_jax.study import run  # pylint: disable=g-import-not-at-top
  # Importing claims no flag names (notebooks import the module).
  assert not flags.FLAGS.flags_by_module_dict().get(run.__name__)
  fv = _parse(["--out=/tmp/x", "--quick", "--seeds=3"])
  a = run.args_from_flags(fv, argv=["--out=/tmp/x", "--quick"])
  assert (a.tasks, a.methods, a.ranks, a.seeds, a.steps) == (
      ["digits"], ["losa", "linear"], [8], [0], 8)
  a = run.args_from_flags(_parse(["--out=/tmp/x", "--ranks=2,32"]), argv=[])
  assert a.ranks == [2, 32] and a.seeds == [0, 1, 2] and not a.quick
  # --help prints the main module's flags, each with its help string.
  helptext = fv.module_help(run.__name__)
  for name in ("out", "tasks", "methods", "ranks", "seeds", "steps", "batch",
               "timing_reps", "config", "resume", "quick"):
    assert re.search(rf"--(\[no\])?{name}:", helptext), name
    assert fv[name].help
  with pytest.raises(app.UsageError, match="--out"):
    run.args_from_flags(_parse([]))


def test_study_run_is_a_trainer_run(tmp_path):
  """A study run ends where `losa_jax.train` ends for its config and seed.

  Same model, optimizer and train step (build.build), same initial state,
  same input pipeline and same evaluator: the params agree bitwise.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  from losa_jax.study import run  # pylint: disable=g-import-not-at-top
  task, steps, batch, seed = "mnist_10shot", 4, 16, 1
  var = run.Variant("losa r=2", "losa", 2, 10, steps, batch, task=task)
  initial = jax.device_get(var.fresh_state(seed)["params"])
  r = run.train_run(var, task, seed, steps)
  config = run.make_config("losa", 2, 10, steps, batch, task=task, seed=seed)
  out = train.train_and_evaluate(config, str(tmp_path / "trainer"))
  study, trainer = (jax.device_get(s["params"])
                    for s in (r["state"], out["state"]))
  jax.tree.map(np.testing.assert_array_equal, study, trainer)
  assert r["accuracy"] == out["results"]["test/accuracy"]
  # Not trivially equal: training moved the params.
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(a != b)), initial, study))
  assert any(moved)
