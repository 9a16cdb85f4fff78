# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Populations and serving through the CLI, as a user runs them, at the
library's defaults.

A population of `configs/default.py:population=default` (18 members: lr x wd x
rank): two of its members, trained again as single runs by the CLI, reach
the same final evaluation within 1e-5, at the library default (bf16
storage) and at float32 (their params are compared leaf by leaf in-process
by tests/test_population.py).

Two LoSA tasks trained by `python -m losa_jax.train` on `configs/default.py`
(bf16 side stream, fused backward: nothing pinned), 20 PNG files:

* `predict --workdirs` equals each task's own `predict --workdir` within
  1e-6 in every probability (and the same labels);
* the exported StableHLO and TF SavedModel, loaded in a fresh process where
  importing losa_jax fails, equal `predict` within 1e-5 (float images
  through both artifacts, PNG bytes through the SavedModel's image
  signature).
"""
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TASKS = {"digits": "task=digits", "parity": "task=digits_parity"}
STEPS = 12
NUM_FILES = 20

pytestmark = pytest.mark.slow(reason="train, predict and export CLIs in "
                              "subprocesses; in-process twins of each check "
                              "are in test_multitask.py and test_population.py")
# Members of population=default run again as single runs: (lr, wd, rank).
SINGLES = ((1e-2, 1e-4, 16), (3e-3, 0.0, 4))


def _run(*args, env=None):
  r = subprocess.run([sys.executable, *args], cwd=REPO,
                     env={**os.environ, "PYTHONPATH": REPO, **(env or {})},
                     capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, (args, r.stdout[-3000:], r.stderr[-3000:])
  return r.stdout


def _probs(path):
  """{file: {"<task>/label": int, "<task>/prob": float}} of a predict CSV."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return {os.path.basename(r.pop("file")): {
      k: (int(v) if k.endswith("label") else float(v)) for k, v in r.items()}
          for r in rows}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  root = tmp_path_factory.mktemp("served")
  workdirs = {}
  for name, arg in TASKS.items():
    workdirs[name] = str(root / name)
    _run("-m", "losa_jax.train", "--config",
         f"configs/default.py:{arg},steps={STEPS}", "--workdir",
         workdirs[name])
  # 20 PNG files of our own: the demo's test digits, written as a user would.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from losa_jax.datasets import digits  # pylint: disable=g-import-not-at-top
  images = digits.get_task("digits")["test"]["image"][:NUM_FILES]
  files = []
  for i, im in enumerate(images):
    files.append(str(root / f"img{i:02d}.png"))
    with open(files[-1], "wb") as f:
      f.write(tf.io.encode_png(im if im.ndim == 3 else im[..., None]).numpy())
  return dict(root=root, workdirs=workdirs, files=files)


@pytest.fixture(scope="module")
def single_predictions(served):
  """{task: {file: (label, prob)}} from `predict --workdir`, per task."""
  out = {}
  for name, w in served["workdirs"].items():
    csv_path = str(served["root"] / f"single_{name}.csv")
    _run("-m", "losa_jax.predict", "--workdir", w, "--images",
         ",".join(served["files"]), "--out", csv_path)
    out[name] = {f: (r["label"], r["prob"])
                 for f, r in _probs(csv_path).items()}
  return out


def test_config_default_is_the_library_default(served):
  for w in served["workdirs"].values():
    with open(os.path.join(w, "config.json")) as f:
      losa = json.load(f)["model"].get("losa", {})
    assert "dtype" not in losa and "fused" not in losa, losa


def test_predict_workdirs_equals_each_tasks_predict(served,
                                                    single_predictions):
  csv_path = str(served["root"] / "multi.csv")
  _run("-m", "losa_jax.predict", "--workdirs",
       ",".join(served["workdirs"].values()), "--names", ",".join(TASKS),
       "--images", ",".join(served["files"]), "--out", csv_path)
  multi = _probs(csv_path)
  assert len(multi) == NUM_FILES
  for name, single in single_predictions.items():
    assert len(single) == NUM_FILES
    for f, (label, prob) in single.items():
      assert multi[f][f"{name}/label"] == label, (name, f)
      assert abs(multi[f][f"{name}/prob"] - prob) <= 1e-6, (
          name, f, multi[f][f"{name}/prob"], prob)


# Runs in a process where `import losa_jax` fails: only jax, numpy and TF.
_NO_LOSA = textwrap.dedent("""
    import importlib.abc, sys
    class _Refuse(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name == "losa_jax" or name.startswith("losa_jax."):
          raise ImportError("losa_jax is not available here")
    sys.meta_path.insert(0, _Refuse())
    sys.path = [p for p in sys.path if p not in ("", ".")]

    import jax, numpy as np, tensorflow as tf
    out_dir, x_path, files, result = sys.argv[1:5]
    x = np.load(x_path)
    with open(out_dir + "/model.jax_export", "rb") as f:
      exp = jax.export.deserialize(bytearray(f.read()))
    res = {f"jax/{k}": np.asarray(v) for k, v in exp.call(x).items()}
    sm = tf.saved_model.load(out_dir + "/saved_model")
    got = sm.signatures["serving_default"](images=tf.constant(x))
    res.update({f"tf/{k}": v.numpy() for k, v in got.items()})
    data = [open(p, "rb").read() for p in files.split(",")]
    got = sm.signatures["serve_image_bytes"](image_bytes=tf.constant(data))
    res.update({f"tf_bytes/{k}": v.numpy() for k, v in got.items()})
    try:
      import losa_jax  # noqa
      raise SystemExit("losa_jax was importable")
    except ImportError:
      pass
    np.savez(result, **res)
""")


def test_exported_artifacts_equal_predict_without_losa_jax(
    served, single_predictions, tmp_path):
  from losa_jax.serving import predict  # pylint: disable=g-import-not-at-top
  from losa_jax.config import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "export")
  _run("-m", "losa_jax.export", "--workdirs",
       ",".join(served["workdirs"].values()), "--names", ",".join(TASKS),
       "--out", out)
  # The artifacts take the eval pp's output: the float images predict feeds.
  w = served["workdirs"]["digits"]
  pred = predict.Predictor(workdir_lib.read_config(w), w)
  x = pred.preprocess(predict._read_files(served["files"]))  # pylint: disable=protected-access
  x_path = str(tmp_path / "x.npy")
  np.save(x_path, np.asarray(x, np.float32))
  script = str(tmp_path / "no_losa.py")
  with open(script, "w") as f:
    f.write(_NO_LOSA)
  result = str(tmp_path / "result.npz")
  _run(script, out, x_path, ",".join(served["files"]), result,
       env={"PYTHONPATH": ""})
  got = dict(np.load(result))
  names = [os.path.basename(p) for p in served["files"]]
  for kind in ("jax", "tf", "tf_bytes"):
    for task, single in single_predictions.items():
      logits = got[f"{kind}/{task}"].astype(np.float64)
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      for i, f in enumerate(names):
        label, prob = single[f]
        assert int(np.argmax(probs[i])) == label, (kind, task, f)
        assert abs(float(probs[i].max()) - prob) <= 1e-5, (
            kind, task, f, float(probs[i].max()), prob)




@pytest.mark.parametrize("side_dtype", ["", "float32"])
def test_population_members_equal_their_single_runs_through_the_cli(
    tmp_path, side_dtype):
  pop_dir = str(tmp_path / "pop")
  dtype_arg = f",side_dtype={side_dtype}" if side_dtype else ""
  _run("-m", "losa_jax.train", "--config",
       f"configs/default.py:population=default,steps={STEPS}{dtype_arg}",
       "--workdir", pop_dir)
  with open(os.path.join(pop_dir, "results.json")) as f:
    rows = json.load(f)["members"]
  assert len(rows) == 18
  for lr, wd, rank in SINGLES:
    row = next(r for r in rows if r["hparams"]["lr"] == lr and
               r["hparams"]["wd"] == wd and
               int(r["structure"]["rank"]) == rank)
    single_dir = str(tmp_path / f"single_{row['name']}")
    # The member's config: the population's search split (protocol=tune),
    # its lr, rank and weight decay.
    _run("-m", "losa_jax.train", "--config",
         f"configs/default.py:protocol=tune,lr={lr},rank={rank},"
         f"steps={STEPS}{dtype_arg}", f"--config.wd={wd}", "--workdir",
         single_dir)
    with open(os.path.join(single_dir, "results.json")) as f:
      single = json.load(f)
    got = {k: row[k] for k in ("val/loss", "val/accuracy", "val/count")}
    want = {k: single[k] for k in got}
    assert got["val/count"] == want["val/count"] > 0
    assert got["val/accuracy"] == want["val/accuracy"], (row["label"], got,
                                                         want)
    assert abs(got["val/loss"] - want["val/loss"]) <= 1e-5 * abs(
        want["val/loss"]), (row["label"], got, want)
