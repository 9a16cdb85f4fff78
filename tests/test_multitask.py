# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Serving many tasks on one backbone pass: multitask, predict, export, bench.

Six tiny tasks are trained once (module fixture) on a 2-block version of
the shipped backbone (random weights, saved as a checkpoint): two LoSA side
networks with different tap options, an LST and a LAST side network (each
method's defaults), a linear probe and a LoRA model, on the digits and
digits-parity demo tasks. Two blocks instead of six compile about
3x faster; the width is the shipped one's, so a side network stays a small
fraction of a backbone as the size checks below assert.
"""
import csv
import os
import re
import shutil
import subprocess
import sys

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from losa_jax.checkpointing import integrity
from losa_jax import demo
from losa_jax.serving import export
from losa_jax.serving import multitask
from losa_jax import predict as predict_cli
from losa_jax.serving import predict
from losa_jax import train
from losa_jax.utils import tree as tree_lib
from losa_jax.config import workdir as workdir_lib
from losa_jax.bench import inference
from losa_jax.bench import registry
from losa_jax.models import model as model_lib
from losa_jax.models import porting
from losa_jax.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PP = "decode(channels=3)|value_range(-1, 1)|keep('image', 'label')"
# name -> (method, demo task, losa options)
TASKS = {
    "digits": ("losa", "digits", dict(rank=4)),
    "parity": ("losa", "digits_parity", dict(rank=2, tap_every=2)),
    "probe": ("linear", "digits", {}),
    "lora": ("lora", "digits_parity", {}),
    "lst": ("lst", "digits_parity", {}),
    "last": ("last", "digits", {}),
}
# The shipped backbone's architecture with 2 of its 6 blocks.
BACKBONE = {**demo.BACKBONE_MODEL, "depth": 2}
BACKBONE_FILE = "vit_2block.npz"
_backbone_npz = {}     # "path": the module's checkpoint (fixture below)


def _save_backbone(path, seed):
  """A random BACKBONE ViT with a 10-class head, saved as a checkpoint."""
  bb = vit.Model(10, **BACKBONE)
  params = bb.init(jax.random.key(seed), np.zeros((1, 28, 28, 3), np.float32))
  porting.save_vit(params["params"], path)
  return path


@pytest.fixture(scope="module", autouse=True)
def backbone_npz(tmp_path_factory):
  _backbone_npz["path"] = _save_backbone(
      str(tmp_path_factory.mktemp("backbone") / BACKBONE_FILE), 0)
  yield _backbone_npz["path"]
  _backbone_npz.clear()


def demo_config(method="losa", task="digits", *, steps=3, image_size=28,
                pp=PP, model_init=None, losa=None):
  """A few steps on the module's backbone (default), evaluated on 32 digits."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_classes = 2 if task == "digits_parity" else 10
  c.image_size = image_size
  c.total_steps = steps
  c.input = dict(data=dict(name="demo", task=task, split="train[:96]"),
                 batch_size=16, pp=pp)
  c.evals = dict(test=dict(data=dict(name="demo", task=task,
                                     split="test[:32]"), pp=pp,
                           batch_size=32))
  c.model_init = model_init or _backbone_npz["path"]
  c.model = dict(method=method, backbone=dict(BACKBONE),
                 losa=dict(losa or dict(rank=4)), lora=dict(rank=2, alpha=4.0))
  c.model_load = dict(dont_load=["head/.*"])
  c.optax_name = "adam"
  c.lr = 3e-2
  c.schedule = dict(warmup_steps=0, decay_type="constant")
  c.log_every = steps
  c.keep_ckpts = 1
  return c


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("tasks")
  out = {}
  for name, (method, task, losa) in TASKS.items():
    out[name] = str(root / name)
    train.train_and_evaluate(demo_config(method, task, losa=losa), out[name])
  return out


def test_trainer_stores_its_config(workdirs):
  c = workdir_lib.read_config(workdirs["parity"])
  assert c.model.losa.tap_every == 2 and c.num_classes == 2
  assert c.model.backbone.patch_size == (4, 4)   # tuples come back as tuples
  with pytest.raises(FileNotFoundError, match="config.json.*--config"):
    workdir_lib.read_config(os.path.join(workdirs["digits"], "nope"))


def _moved_from_init(workdir):
  """{trainable leaf name: max |trained - init|} of a workdir's newest step."""
  config = workdir_lib.read_config(workdir)
  trained = predict.Predictor(config, workdir)
  init = trained.built.init_loaded(jax.random.key(config.seed), config)
  init = tree_lib.flatten(init["params"])
  return {n: float(np.max(np.abs(np.asarray(v, np.float32) -
                                 np.asarray(init[n], np.float32))))
          for n, v in tree_lib.flatten(trained.params).items()
          if trained.built.mask[n]}


def test_trained_params_moved_from_init(workdirs):
  # The equalities of served and predicted outputs below compare trained
  # side networks and heads, not two copies of an untrained (zero) head.
  # Three Adam steps at lr 3e-2 move every leaf by about 6e-3 or more, but
  # the token MLP's output bias: a null direction whose exact gradient (0)
  # the fused backward returns (tests/test_losa.py), so it stays at init.
  null = re.compile(r"side/.*/token_\d+/mlp/up/bias")
  for name, w in workdirs.items():
    moved = _moved_from_init(w)
    assert "head/kernel" in moved and (name == "probe" or len(moved) > 2)
    still = {n: d for n, d in moved.items() if d < 1e-3}
    assert all(null.fullmatch(n) and d == 0
               for n, d in still.items()), (name, still)


def test_each_task_equals_its_own_predictor(workdirs):
  mt = multitask.load(list(workdirs.values()))
  assert mt.names == list(TASKS)
  # Five tasks (LoSA, LST, LAST, probe) share one backbone pass; LoRA runs
  # its own model.
  assert mt.num_backbone_passes == 2
  assert [t.group is None for t in mt.tasks] == [n == "lora" for n in TASKS]
  counts = mt.param_counts()
  for name in ("digits", "lst", "last"):
    assert counts["tasks"][name] < counts["backbones"] / 10, name
  images = np.random.RandomState(0).uniform(-1, 1, (5, 28, 28, 3))
  probs = mt.probs(images)
  logits = mt(images)
  for name, w in workdirs.items():
    ref = predict.Predictor(workdir_lib.read_config(w), w)(images)
    assert probs[name].shape == ref.shape
    # At the library default (bf16 side stream): the served task reads the
    # taps its predictor stores (`Model.tap_key`), so the two agree to float32
    # rounding, not to a bf16 ulp.
    np.testing.assert_allclose(probs[name], ref, atol=1e-6, rtol=0,
                               err_msg=name)
    assert logits[name].shape == (5, 2 if TASKS[name][1] == "digits_parity"
                                  else 10)
  # The jitted function takes any batch size (one compile per size).
  one = mt(images[:1])
  np.testing.assert_allclose(one["digits"], logits["digits"][:1], atol=1e-5)


def _random_side_tasks():
  """(tasks, params): LoSA, LST and LAST over one random 2-block backbone,
  each in float32 and at its defaults (bf16 taps and side stream), with
  random side and head params (at init a side network adds zero)."""
  x = np.zeros((1, 28, 28, 3), np.float32)
  tasks, params, bb = [], {"backbones": {}, "tasks": {}}, None
  for i, method in enumerate(("losa", "lst", "last") * 2):
    dtype = ("float32", "bfloat16")[i // 3]
    model = model_lib.Model(3 + i, method=method, backbone=BACKBONE,
                            **{method: dict(dtype=dtype)})
    p = model.init(jax.random.key(i), x)["params"]
    bb = p.pop("backbone") if bb is None else bb
    p = {k: v for k, v in p.items() if k != "backbone"}
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(10 + i), len(leaves))
    params["tasks"][f"{method}_{dtype}"] = jax.tree.unflatten(tree, [
        v + 0.05 * jax.random.normal(k, v.shape, v.dtype)
        for v, k in zip(leaves, keys)])
    tasks.append(multitask.Task(f"{method}_{dtype}", model, "bb"))
  params["backbones"]["bb"] = bb
  return tasks, params


def test_side_methods_share_one_pass_and_equal_their_own_model(tmp_path):
  # Every side method shares the backbone pass; mixed in one function, each
  # task gives its own model's logits (the backbone run on the images).
  tasks, params = _random_side_tasks()
  mt = multitask.MultiTask(tasks, params, image_shape=(28, 28, 3))
  assert mt.num_backbone_passes == 1
  x = np.random.RandomState(4).uniform(-1, 1, (3, 28, 28, 3)).astype(
      np.float32)
  got = mt(x)
  for t in tasks:
    own, _ = jax.jit(t.model.apply)(
        {"params": {**params["tasks"][t.name], "backbone": params[
            "backbones"]["bb"]}}, x)
    assert float(np.std(got[t.name])) > 1e-2, t.name   # side params matter
    # To float32 rounding, bf16 taps too: the task reads the taps its own
    # model stores (`Model.tap_key`), not a bf16 ulp away.
    np.testing.assert_allclose(got[t.name], own, rtol=0, atol=1e-6,
                               err_msg=t.name)
  out = str(tmp_path / "srv")
  export.export(mt, out, saved_model=False)
  served = export.load_jax(os.path.join(out, export.JAX_FILE)).call(x)
  for t in tasks:
    np.testing.assert_allclose(np.asarray(served[t.name]), got[t.name],
                               rtol=0, atol=1e-6, err_msg=t.name)


def test_merged_lora_equals_unmerged(workdirs):
  plain = multitask.load([workdirs["lora"]])
  merged = multitask.load([workdirs["lora"]], merge_lora=True)
  t = merged.tasks[0]
  assert t.merged_lora and t.method == "lora" and t.model.method == "full"
  assert not any("_lora" in n for n in tree_lib.flatten(merged.params))
  images = np.random.RandomState(1).uniform(-1, 1, (4, 28, 28, 3))
  np.testing.assert_allclose(merged(images)["lora"], plain(images)["lora"],
                             atol=1e-5)


def test_merge_lora_on_a_random_scanned_lora_vit():
  # Random (non-zero) LoRA factors on every target, scanned blocks.
  kw = dict(width=32, depth=2, mlp_dim=64, num_heads=2, patch_size=(8, 8),
            pool_type="tok", scan=True)
  lora = vit.Model(None, lora_rank=3, lora_targets="all", lora_alpha=6.0,
                   **kw)
  x = jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 3)),
                  jnp.float32)
  p = lora.init(jax.random.key(0), x)["params"]
  p = jax.tree_util.tree_map_with_path(
      lambda path, v: (v + 0.05 * jax.random.normal(jax.random.key(1),
                                                    v.shape)
                       if "_lora" in jax.tree_util.keystr(path) else v), p)
  merged = vit.merge_lora(p, rank=3, alpha=6.0)
  assert not any("_lora" in k for k in tree_lib.flatten(merged))
  plain = vit.Model(None, **kw)
  y_lora, _ = lora.apply({"params": p}, x)
  y_merged, _ = plain.apply({"params": merged}, x)
  base = tree_lib.unflatten({k: v for k, v in tree_lib.flatten(p).items()
                             if "_lora" not in k})
  y_base, _ = plain.apply({"params": base}, x)
  assert float(jnp.max(jnp.abs(y_lora - y_base))) > 1e-2   # LoRA matters
  np.testing.assert_allclose(y_merged, y_lora, atol=1e-5)


def _other_backbone(path):
  """Same architecture, other weights: only the sha256 tells them apart."""
  return _save_backbone(path, 7)


def _config_only_workdir(path, config):
  """A workdir holding only its config.json: the cross-task checks run
  before any checkpoint is read."""
  workdir_lib.write_config(path, config)
  return path


def test_refuses_another_backbone_image_size_or_pp(workdirs, tmp_path):
  other = _other_backbone(str(tmp_path / "other.npz"))
  w_bb = _config_only_workdir(str(tmp_path / "other_bb"),
                              demo_config(model_init=other))
  with pytest.raises(ValueError, match=r"(?s)was trained on backbone.*"
                     r"vit_2block.npz \(sha256 [0-9a-f]{64}\).*"
                     r"other.npz \(sha256 [0-9a-f]{64}\)"):
    multitask.load([workdirs["digits"], w_bb])
  w_size = _config_only_workdir(str(tmp_path / "size32"), demo_config(
      image_size=32, pp=PP.replace("|value", "|resize(32)|value")))
  with pytest.raises(ValueError, match=r"takes images of shape \(28, 28, 3\)"
                     r".*size32 takes images of shape \(32, 32, 3\)"):
    multitask.load([workdirs["digits"], w_size])
  w_pp = _config_only_workdir(str(tmp_path / "pp"), demo_config(
      pp=PP.replace("(-1, 1)", "(0, 1)")))
  with pytest.raises(ValueError, match=r"preprocesses images with.*\(0, 1\)"):
    multitask.load([workdirs["digits"], w_pp])
  with pytest.raises(ValueError, match=r"occur twice"):
    multitask.load([workdirs["digits"], workdirs["parity"]],
                   names=["a", "a"])
  with pytest.raises(ValueError, match=r"Task name 'my-task'"):
    multitask.load([workdirs["digits"]], names=["my-task"])


def test_workdir_without_config_json_and_a_swapped_backbone(workdirs,
                                                           tmp_path):
  old = str(tmp_path / "old")
  shutil.copytree(workdirs["digits"], old)
  os.remove(os.path.join(old, "config.json"))
  with pytest.raises(FileNotFoundError, match=r"old/config.json.*--config"):
    multitask.load([old])
  config = demo_config(losa=TASKS["digits"][2])
  mt = multitask.load([old], configs=[config])
  assert mt.names == ["old"] and mt.tasks[0].step == 3
  # config.json pointed at another file than the checkpoint was trained on:
  # refused by the checkpoint metadata's sha256.
  other = _other_backbone(str(tmp_path / "other.npz"))
  workdir_lib.write_config(old, demo_config(losa=TASKS["digits"][2],
                                            model_init=other))
  with pytest.raises(integrity.CheckpointError, match="sha256"):
    multitask.load([old])


def _pngs(n):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from losa_jax.datasets import digits  # pylint: disable=g-import-not-at-top
  images = digits.get_task("digits")["test"]["image"][:n]
  return [tf.io.encode_png(i if i.ndim == 3 else i[..., None]).numpy()
          for i in images]


def test_export_reloads_without_the_model_code(workdirs, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  mt = multitask.load(list(workdirs.values()), merge_lora=True)
  out = str(tmp_path / "srv")
  manifest = export.export(mt, out)
  assert [t["name"] for t in manifest["tasks"]] == list(TASKS)
  assert manifest["input"]["shape"] == ["b", 28, 28, 3]
  assert manifest["backbone_passes_per_batch"] == 2
  by = {t["name"]: t for t in manifest["tasks"]}
  assert by["lora"]["merged_lora"] and by["lora"]["method"] == "lora"
  # A side network + head is a small file; the merged LoRA a whole model.
  for name in ("digits", "lst", "last"):
    assert by[name]["shared_backbone"] and by[name]["method"] == name.replace(
        "digits", "losa")
    assert by[name]["npz_bytes"] < by["lora"]["npz_bytes"] / 10, name
  x = np.random.RandomState(2).uniform(-1, 1, (3, 28, 28, 3)).astype(
      np.float32)
  ref = mt(x)
  exp = export.load_jax(os.path.join(out, export.JAX_FILE))
  for b in (1, 3):          # one artifact, any batch size
    got = exp.call(x[:b])
    # Compared at the same batch size: another size is another XLA program,
    # whose float32 taps may round to another bf16 value (LAST reads them
    # all: ~1e-4 in its logits).
    ref_b = mt(x[:b])
    for name in TASKS:
      np.testing.assert_allclose(np.asarray(got[name]), ref_b[name],
                                 atol=1e-5, err_msg=name)
  sm = tf.saved_model.load(os.path.join(out, export.SAVED_MODEL))
  got = sm.signatures["serving_default"](images=tf.constant(x))
  for name in TASKS:
    np.testing.assert_allclose(got[name].numpy(), ref[name], atol=1e-5,
                               err_msg=name)
  pngs = _pngs(4)
  got = sm.signatures["serve_image_bytes"](image_bytes=tf.constant(pngs))
  ref = mt(predict.preprocess(mt.pp, [{"image": p} for p in pngs]))
  for name in TASKS:
    # Another program (pp and model in one TF graph, TF's XLA): a float32
    # tap on a bf16 rounding boundary may move one bf16 ulp (0.4%), which
    # LST's and LAST's side networks, reading raw taps of every block, carry
    # into their logits (LAST: 1.5e-4 in 2 of 40 logits under jax 0.12.1);
    # LoSA's stay within 1e-5.
    np.testing.assert_allclose(got[name].numpy(), ref[name], err_msg=name,
                               atol=5e-4 if name in ("lst", "last") else 1e-5)


def _run(*args):
  env = dict(os.environ, PYTHONPATH=REPO)
  r = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stdout + r.stderr
  return r.stdout


def test_export_single_task_without_saved_model(workdirs, tmp_path):
  # What `python -m losa_jax.export --nosaved_model` writes (its CLI run is
  # test_export_cli_single_task, slow).
  out = str(tmp_path / "one")
  mt = multitask.load([workdirs["parity"]])
  export.export(mt, out, saved_model=False)
  assert sorted(os.listdir(out)) == ["model.jax_export", "serving.json",
                                     "tasks"]
  x = np.random.RandomState(3).uniform(-1, 1, (2, 28, 28, 3)).astype(
      np.float32)
  got = export.load_jax(os.path.join(out, export.JAX_FILE)).call(x)
  np.testing.assert_allclose(np.asarray(got["parity"]), mt(x)["parity"],
                             atol=1e-5)


@pytest.mark.slow(reason="CLI end to end in a subprocess; the export itself "
                  "is test_export_single_task_without_saved_model's")
def test_export_cli_single_task(workdirs, tmp_path):
  out = str(tmp_path / "one")
  text = _run("losa_jax.export", "--workdirs", workdirs["parity"], "--out",
              out, "--nosaved_model")
  assert "Exported ['parity']" in text
  assert sorted(os.listdir(out)) == ["model.jax_export", "serving.json",
                                     "tasks"]
  x = np.random.RandomState(3).uniform(-1, 1, (2, 28, 28, 3)).astype(
      np.float32)
  got = export.load_jax(os.path.join(out, export.JAX_FILE)).call(x)
  ref = multitask.load([workdirs["parity"]])(x)
  np.testing.assert_allclose(np.asarray(got["parity"]), ref["parity"],
                             atol=1e-5)


def test_predict_one_csv_for_many_tasks(workdirs, tmp_path, capsys):
  # The --workdirs CLI's code path in-process, on its own parsed flags (the
  # subprocess run is test_predict_cli_one_csv_for_many_tasks, slow).
  from absl import flags  # pylint: disable=g-import-not-at-top
  out = str(tmp_path / "preds.csv")
  names = ["digits", "last", "lst", "parity", "probe"]   # CSV column order
  fv = flags.FlagValues()
  predict_cli.define_flags(fv)
  fv(["predict", "--workdirs", ",".join(workdirs[n] for n in names),
      "--split", "test[:20]", "--out", out])
  verbosity = logging.get_verbosity()
  try:
    predict_cli.run_main(fv, ["predict"])
  finally:
    logging.set_verbosity(verbosity)   # run_main quiets absl like the CLI
  text = capsys.readouterr().out
  rows = _multi_task_csv(text, out, names)
  # Same predictions as the task's own Predictor on the same split, its
  # config read from config.json (the single-workdir path).
  config = workdir_lib.read_config(workdirs["digits"])
  single = predict.predict_split(
      predict.Predictor(config, workdirs["digits"]),
      dict(config.input.data, split="test[:20]"))
  assert [str(r["label"]) for r in single] == [r["digits/label"]
                                              for r in rows]
  assert [str(r["true"]) for r in single] == [r["true"] for r in rows]


def _multi_task_csv(text, out, names):
  """Checks predict --workdirs' log and CSV (20 rows, a label and a prob
  column per task); returns the rows."""
  assert "1 backbone pass(es)" in text and "digits accuracy" in text
  with open(out) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 20
  assert list(rows[0]) == ["index", "true"] + [
      f"{n}/{k}" for n in names for k in ("label", "prob")]
  return rows


@pytest.mark.slow(reason="CLI end to end in two subprocesses; the same "
                  "checks run in-process in test_predict_one_csv_for_many_"
                  "tasks")
def test_predict_cli_one_csv_for_many_tasks(workdirs, tmp_path):
  out = str(tmp_path / "preds.csv")
  names = ["digits", "last", "lst", "parity", "probe"]   # CSV column order
  text = _run("losa_jax.predict", "--workdirs",
              ",".join(workdirs[n] for n in names), "--split", "test[:20]",
              "--out", out)
  rows = _multi_task_csv(text, out, names)
  # The single-workdir CLI still works, its config read from config.json.
  one = str(tmp_path / "one.csv")
  text = _run("losa_jax.predict", "--workdir", workdirs["digits"], "--split",
              "test[:20]", "--out", one)
  with open(one) as f:
    single = list(csv.DictReader(f))
  # Same predictions as the task's own Predictor (the single-workdir path).
  assert [r["label"] for r in single] == [r["digits/label"] for r in rows]
  assert [r["true"] for r in single] == [r["true"] for r in rows]


def test_inference_bench_quick():
  # `full` is lora_merged's program (tested in --quick runs, not here).
  rows = inference.measure(registry.options("inference", dict(
      variants=["tiny"], batches=[2], tasks=[1, 2], reps=1, warmup=0,
      max_copy_images=2, systems=("losa", "lora_merged", "backbone"))))
  cell = {(r["system"], r["tasks"]): r for r in rows}
  assert set(cell) == {(s, n) for s in ("losa", "lora_merged")
                       for n in (1, 2)} | {("backbone", 1)}
  assert cell[("losa", 2)]["backbone_passes"] == 1
  assert cell[("lora_merged", 2)]["backbone_passes"] == 2
  assert cell[("lora_merged", 2)]["timed"] == "scaled from N=1"
  assert cell[("losa", 2)]["timed"] == "measured"
  # One backbone pass: fewer FLOPs and params than two models.
  assert cell[("losa", 2)]["flops"] < 0.8 * cell[("lora_merged", 2)]["flops"]
  assert (cell[("losa", 2)]["params_resident"] <
          cell[("lora_merged", 2)]["params_resident"])
  (s,) = inference.summarize(rows)
  assert 0 < s["marginal_task_flops"] < 0.5
  assert s["bytes_per_task"] == cell[("losa", 1)]["bytes_per_task"] > 0
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("bench_report", os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
      "bench_report.py"))
  bench_report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_report)
  assert "| tiny | 2 | losa | 2 |" in bench_report.inference_markdown(rows,
                                                                      [s])
  # The command line's options are checked, naming the bad value.
  from losa_jax.bench import __main__ as cli  # pylint: disable=g-import-not-at-top
  with pytest.raises(cli.UsageError, match=r"--tasks: 'x' in '1,x'"):
    cli.main(["inference", "--tasks", "1,x"])
