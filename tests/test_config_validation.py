# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Config validation (issue 10): CLI overrides, ranges and the first batch.

Every bad value must fail with a message that names `config.<path>=<value>`
and says what is allowed, before anything compiles.
"""
import copy
import os
import re
import subprocess
import sys

from absl import flags
import jax
import ml_collections
import numpy as np
import pytest

from conftest import TINY_BACKBONE
from losa_jax.config import flags as config_flags
from losa_jax.config import schema as config_lib
from losa_jax.config import input_check
from losa_jax.models import model as model_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DELETE = object()


def _base():
  """A complete, valid trainer config as plain dicts (32 px, 5 classes)."""
  data = dict(demo="digits", split="train")
  return dict(
      seed=0, num_classes=5, image_size=32, total_steps=10,
      input=dict(data=data, batch_size=8, pp="keep('image', 'label')"),
      evals=dict(test=dict(data=dict(data, split="test"), batch_size=16)),
      model=dict(method="losa", backbone=dict(TINY_BACKBONE),
                 losa=dict(rank=4), lora=dict(rank=4), adapter=dict(dim=4)),
      optax_name="adam", lr=1e-2, mesh=[("data", -1)])


def _video_base():
  """The same with a ViViT backbone on 8-frame 32 px clips."""
  c = _base()
  c["image_size"] = (8, 32, 32)
  c["model"]["backbone"].update(kind="vivit", temporal_patch_size=2,
                                num_frames=8)
  return c


def _config(base=None, **paths):
  """ConfigDict of `base` with dotted-path values set (`_DELETE` removes).

  Values are set on plain dicts first: a ConfigDict would refuse to change a
  field's type (e.g. rank 4 -> 2.5) before validation sees it.
  """
  d = copy.deepcopy(base or _base())
  for path, value in paths.items():
    *parents, leaf = path.split("__")
    node = d
    for p in parents:
      node = node[p]
    if value is _DELETE:
      node.pop(leaf, None)
    else:
      node[leaf] = value
  return ml_collections.ConfigDict(d)


# --- 1. --config.<unknown key>=... on the command line ------------------------


def _config_file(tmp_path, base=None):
  path = tmp_path / "cfg.py"
  path.write_text("import ml_collections\n\n\ndef get_config(arg=None):\n"
                  f"  return ml_collections.ConfigDict({base or _base()!r})\n")
  return str(path)


def _define_train(fv):
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  train.define_flags(fv)


def _define_predict(fv):
  from losa_jax import predict  # pylint: disable=g-import-not-at-top
  predict.define_flags(fv)


CLIS = {"train": _define_train, "predict": _define_predict}


def _parse(cli, argv, monkeypatch):
  """Parses argv with `cli`'s flags on a fresh FlagValues, as app.run would."""
  fv = flags.FlagValues()
  # ml_collections reads the overrides from sys.argv (also when defining).
  monkeypatch.setattr(sys, "argv", argv)
  CLIS[cli](fv)
  fv(argv)
  return fv


@pytest.mark.parametrize("cli", sorted(CLIS))
@pytest.mark.parametrize("override,where,valid", [
    ("model.losa.bogus", "config.model.losa", "rank"),
    ("bogus_key", "config", "num_classes"),
])
def test_unknown_override_names_full_key_and_valid_keys(
    cli, override, where, valid, tmp_path, monkeypatch):
  argv = ["prog", "--config", _config_file(tmp_path),
          f"--config.{override}=1", "--workdir", str(tmp_path)]
  with pytest.raises(flags.Error) as err:
    _parse(cli, argv, monkeypatch)
  msg = str(err.value)
  assert f"unknown config key config.{override}" in msg
  # The valid keys at that level, from the schema (not only those the file
  # sets: the file sets just losa.rank).
  listed = re.search(rf"Valid keys in {re.escape(where)}: \[(.*)\]", msg)
  assert listed, msg
  assert repr(valid) in listed.group(1)
  if where == "config.model.losa":
    assert "'rank_time'" in listed.group(1) and "'tap'" in listed.group(1)
  assert isinstance(err.value, config_flags.ConfigOverrideError)


@pytest.mark.parametrize("override,hint", [
    ("model.losa.rnak", "did you mean 'rank'?"),
    ("model.backbone.widht", "did you mean 'width'?"),
    ("evals.tset.batch_size", "did you mean 'test'?"),
    # Free-form dicts list the keys the file gives them.
    ("input.data.splt", "Valid keys in config.input.data: ['demo', 'split']"),
])
def test_unknown_override_says_did_you_mean(override, hint, tmp_path,
                                            monkeypatch):
  argv = ["prog", "--config", _config_file(tmp_path),
          f"--config.{override}=1"]
  with pytest.raises(config_flags.ConfigOverrideError, match=re.escape(hint)):
    _parse("train", argv, monkeypatch)


def test_override_of_a_valid_key_the_file_leaves_out_says_where_to_set_it(
    tmp_path, monkeypatch):
  argv = ["prog", "--config", _config_file(tmp_path),
          "--config.model.losa.tap=attn"]
  with pytest.raises(config_flags.ConfigOverrideError,
                     match=r"config.model.losa.tap is a valid key, but this "
                     r"config file does not set it.*Set model.losa.tap in "
                     r"the config file"):
    _parse("train", argv, monkeypatch)


def test_override_paths_are_split_as_ml_collections_splits_them():
  c = ml_collections.ConfigDict({"mesh": [("data", -1)],
                                 "model": {"losa": {"rank": 4}}})
  config_flags.check_override(c, "mesh[0]")   # indices: ml_collections'
  config_flags.check_override(c, 'model["losa"].rank')
  with pytest.raises(config_flags.ConfigOverrideError,
                     match=r"unknown config key config\.model\.losa\.rnak "
                     r"\(did you mean 'rank'\?\)"):
    config_flags.check_override(c, 'model["losa"].rnak')


def test_override_below_a_leaf_names_the_leaf(tmp_path, monkeypatch):
  argv = ["prog", "--config", _config_file(tmp_path), "--config.lr.foo=1"]
  with pytest.raises(config_flags.ConfigOverrideError,
                     match=r"config.lr=0.01 is a float, not a dict"):
    _parse("train", argv, monkeypatch)


@pytest.mark.parametrize("cli", sorted(CLIS))
def test_valid_overrides_still_apply_to_a_locked_config(cli, tmp_path,
                                                        monkeypatch):
  argv = ["prog", "--config", _config_file(tmp_path),
          "--config.model.losa.rank=2", "--config.input.batch_size=4",
          "--config.evals.test.batch_size=2", "--workdir", str(tmp_path)]
  fv = _parse(cli, argv, monkeypatch)
  assert fv.config.model.losa.rank == 2
  assert fv.config.input.batch_size == 4
  assert fv.config.evals.test.batch_size == 2
  assert fv.workdir == str(tmp_path)
  with pytest.raises(AttributeError):       # still locked
    fv.config.bogus = 1


def test_cli_reports_unknown_override_as_a_flag_error(tmp_path):
  """The real command line: one line on stderr, exit status 1, no traceback."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep +
             os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run(
      [sys.executable, "-m", "losa_jax.train", "--config",
       _config_file(tmp_path), "--config.model.losa.bogus=1", "--workdir",
       str(tmp_path / "w")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1, proc.stderr
  assert "FATAL Flags parsing error" in proc.stderr, proc.stderr
  assert "config.model.losa.bogus" in proc.stderr
  assert "Valid keys in config.model.losa" in proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  assert not (tmp_path / "w").exists()


def test_config_flag_help_lists_every_schema_key(monkeypatch):
  fv = _parse("train", ["prog"], monkeypatch)
  text = fv["config"].help
  for path, key in config_lib.SCHEMA.items():
    assert f"\n{path}: " in text, path
  assert "\ninput.batch_size: int = <required> (examples per step" in text
  assert "\nmodel.losa.rank: int = 8" in text


@pytest.mark.parametrize("path,hint", [
    ("model__backbone__widht", "did you mean 'width'?"),
    ("evals__test__batch_sise", "did you mean 'batch_size'?"),
    ("lr_mult", "did you mean 'lr_mults'?"),
])
def test_validate_names_an_unknown_key_and_the_closest(path, hint):
  where = "config" + "".join(f".{p}" for p in path.split("__")[:-1])
  with pytest.raises(ValueError, match=rf"Unknown config field\(s\) in "
                     rf"{re.escape(where)}: '{path.split('__')[-1]}' "
                     rf"\({re.escape(hint)}\)"):
    config_lib.validate(_config(**{path: 1}))


def test_population_hparams_are_the_schemas_member_keys():
  from losa_jax.population import members  # pylint: disable=g-import-not-at-top
  assert set(members.HPARAMS) == {"lr", "wd", "label_smoothing",
                                  "grad_clip_norm", "seed", "data_seed"}
  assert all(config_lib.SCHEMA[k].member for k in members.HPARAMS)


# --- 2. ranks, sizes, steps and batch sizes -----------------------------------


BAD_VALUES = [
    # LoSA ranks (rank=0 was a ZeroDivisionError, -3 a broadcasting error).
    ("model__losa__rank", 0, "positive integer"),
    ("model__losa__rank", -3, "positive integer"),
    ("model__losa__rank", 2.5, "positive integer"),
    ("model__losa__rank", True, "positive integer"),
    ("model__losa__rank_channel", 0, "positive integer or None"),
    ("model__losa__rank_token", -1, "positive integer or None"),
    ("model__losa__rank_time", 0, "None uses rank_token"),
    ("model__losa__tap_every", 0, "positive integer"),
    ("model__losa__num_pairs", 0, "positive integer"),
    ("model__losa__combine", "mul", "choose one of"),
    ("model__losa__pool", "max", "choose one of"),
    # The other methods' ranks.
    ("model__lora__rank", 0, "positive integer"),
    ("model__lora__rank", -2, "positive integer"),
    ("model__lora__alpha", -1.0, "positive number or None"),
    ("model__adapter__dim", 0, "positive integer"),
    ("model__adapter__placement", "attn", "choose one of"),
    # Backbone sizes.
    ("model__backbone__width", 0, "positive integer"),
    ("model__backbone__depth", -1, "positive integer"),
    ("model__backbone__mlp_dim", 0, "positive integer or None"),
    ("model__backbone__num_heads", 0, "positive integer"),
    ("model__backbone__patch_size", 8, "pair of positive integers"),
    ("model__backbone__patch_size", (0, 8), "pair of positive integers"),
    ("model__backbone__dropout", 1.5, r"in \[0.0, 1.0\)"),
    ("model__backbone__kind", "vitt", "choose one of"),
    # Steps and schedules.
    ("total_steps", -5, "positive integer or None"),
    ("total_steps", 0, "positive integer or None"),
    ("log_every", 0, "positive integer"),
    ("eval_every", -1, "integer >= 0"),
    ("ckpt_every", -1, "integer >= 0"),
    ("ckpt_every", 2.5, "integer >= 0"),
    ("keep_ckpts", 0, "positive integer or None"),
    ("seed", -1, "integer >= 0"),
    ("lr", -0.1, ">= 0"),
    ("label_smoothing", 1.0, r"in \[0.0, 1.0\)"),
    ("grad_clip_norm", -1.0, ">= 0"),
    ("evals__test__every", -1, "integer >= 0"),
    # Batch sizes, classes, image size.
    ("input__batch_size", 0, "positive integer"),
    ("input__batch_size", -8, "positive integer"),
    ("input__batch_size", 8.5, "positive integer"),
    ("evals__test__batch_size", 0, "positive integer or None"),
    ("num_classes", 0, "positive integer"),
    ("num_classes", 2.0, "positive integer"),
    ("image_size", 0, "positive int or"),
    ("image_size", (32,), r"positive int or \(height, width\)"),
    ("image_size", "32", "positive int or"),
    ("image_size", (8, 32, 32), r"positive int or \(height, width\)"),
]


@pytest.mark.parametrize("path,value,allowed", BAD_VALUES,
                         ids=[f"{p}={v!r}" for p, v, _ in BAD_VALUES])
def test_bad_value_names_key_value_and_what_is_allowed(path, value, allowed):
  c = _config(**{path: value})
  key = "config." + path.replace("__", ".")
  with pytest.raises(ValueError, match=re.escape(f"{key}={value!r}") +
                     ".*" + allowed):
    config_lib.validate(c)


def test_total_epochs_must_be_positive():
  c = _config(total_steps=None, total_epochs=0)
  with pytest.raises(ValueError, match=r"config.total_epochs=0: must be a "
                     r"number > 0"):
    config_lib.validate(c)
  config_lib.validate(_config(total_steps=None, total_epochs=0.5))


@pytest.mark.parametrize("width,heads,source", [
    (30, 4, "config.model.backbone.num_heads"),
    (30, None, "the default"),       # vit's 12 heads
])
def test_width_not_divisible_by_heads_names_both(width, heads, source):
  c = _config(model__backbone__width=width,
              model__backbone__num_heads=heads if heads else _DELETE)
  with pytest.raises(ValueError, match=rf"width={width} \(from "
                     r"config.model.backbone.width\) is not divisible by "
                     rf"num_heads={heads or 12} \(from {source}\)"):
    config_lib.validate(c)


def test_variant_heads_are_checked_against_an_explicit_width():
  backbone = dict(variant="S/16", width=100)   # S: 6 heads
  c = _config(model__backbone=backbone)
  with pytest.raises(ValueError, match=r"num_heads=6 \(from "
                     r"config.model.backbone.variant='S/16'\)"):
    config_lib.validate(c)


@pytest.mark.parametrize("image_size,match", [
    (32, r"config.image_size=32: must be \(num_frames, height, width\)"),
    ((32, 32), r"must be \(num_frames, height, width\)"),
    ((4, 32, 32), r"gives 4 frames but config.model.backbone.num_frames=8"),
])
def test_video_image_size_needs_frames(image_size, match):
  c = _config(_video_base(), image_size=image_size)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(c)


@pytest.mark.parametrize("paths", [
    {}, {"model__losa__rank_time": None, "model__losa__rank_token": 2},
    {"model__lora__alpha": 16.0}, {"keep_ckpts": None, "eval_every": 0},
    {"image_size": (32, 32)}, {"model__backbone": dict(variant="mu/8")},
    {"total_steps": None, "total_epochs": 2},
    {"lr": float("nan")},      # the trainer reports a NaN loss by step
    {"seed": np.int64(3), "input__batch_size": np.int32(8)},
], ids=str)
def test_valid_values_pass(paths):
  config_lib.validate(_config(**paths))


def test_valid_video_config_passes():
  c = _config(_video_base())
  config_lib.validate(c)
  assert config_lib.input_shape(c) == (8, 32, 32, 3)


def test_input_shape():
  assert config_lib.input_shape(_config(image_size=28)) == (28, 28, 3)
  assert config_lib.input_shape(_config(image_size=(24, 32))) == (24, 32, 3)


@pytest.mark.parametrize("name", ["default", "vtab"])
def test_shipped_configs_validate(name):
  config_lib.validate(config_lib.load_config(config_lib.config_path(name)))


@pytest.mark.parametrize("method,options,match", [
    ("losa", dict(losa=dict(rank=0)), r"losa.rank=0: must be a positive"),
    ("losa", dict(losa=dict(rank=-3)), r"losa.rank=-3: must be a positive"),
    ("lora", dict(lora=dict(rank=0)), r"lora.rank=0: must be a positive"),
    ("adapter", dict(adapter=dict(dim=-1)), r"adapter.dim=-1: must be a "),
])
def test_model_refuses_bad_ranks_when_built_directly(method, options, match):
  """Without a config (tests, benchmarks): still a ValueError by name."""
  model = model_lib.Model(num_classes=3, method=method,
                          backbone=dict(TINY_BACKBONE), **options)
  with pytest.raises(ValueError, match=match):
    jax.eval_shape(model.init, jax.random.key(0),
                   jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))


# --- 3. the first batch against the model -------------------------------------


def _batch(shape=(4, 32, 32, 3), labels=(0, 1, 2, 4), dtype=np.float32,
           **extra):
  return {"image": np.zeros(shape, dtype),
          "label": np.asarray(labels, np.int64), **extra}


def test_check_batch_accepts_fitting_batches():
  input_check.check_batch(_batch(), _config())
  input_check.check_batch(_batch((4, 24, 32, 3)), _config(image_size=(24, 32)))
  input_check.check_batch(_batch(dtype=jax.numpy.bfloat16), _config())
  input_check.check_batch(_batch((2, 8, 32, 32, 3), labels=(0, 4)),
                         _config(_video_base()))
  # Padded eval examples (mask 0) may carry any label.
  input_check.check_batch(_batch(labels=(0, 1, -1, 99),
                                _mask=np.array([1, 1, 0, 0])), _config())
  input_check.check_batch(_batch((2, 3, 8, 32, 32, 3), labels=(0, 1)),
                         _config(_video_base()), where="config.evals.test",
                         multiview=True)


def test_check_batch_wrong_image_size_names_shapes_and_fixes():
  c = _config(image_size=28)
  with pytest.raises(ValueError) as err:
    input_check.check_batch(_batch(), c)
  msg = str(err.value)
  for part in ("(4, 32, 32, 3)", "(28, 28, 3)", "config.image_size=28",
               "config.input.pp", "resize(28)", "config.image_size=32"):
    assert part in msg, (part, msg)


def test_check_batch_wrong_channels():
  with pytest.raises(ValueError, match=r"has 1 channel\(s\).*"
                     r"config.input.pp, e.g. decode\(channels=3\)"):
    input_check.check_batch(_batch((4, 32, 32, 1)), _config())


def test_check_batch_names_the_eval_entry():
  with pytest.raises(ValueError, match=r"config.evals.test: .*"
                     r"config.evals.test.pp"):
    input_check.check_batch(_batch((4, 28, 28, 3)), _config(),
                           where="config.evals.test")


@pytest.mark.parametrize("shape,match", [
    ((2, 8, 32, 32, 3), r"model is built for \[B, H, W, C\].*"
     r"config.model.backbone.kind='vivit'"),
    ((4, 32, 32), r"make config.input.pp give \[B, H, W, C\] batches"),
])
def test_check_batch_wrong_rank_for_images(shape, match):
  with pytest.raises(ValueError, match=match):
    input_check.check_batch(_batch(shape, labels=(0,) * shape[0]), _config())


@pytest.mark.parametrize("shape,match", [
    ((2, 4, 32, 32, 3), r"sample 8 frames in config.input.pp \(e.g. "
     r"video_sample\(8\)\)"),
    ((2, 8, 28, 28, 3), r"video_resize\(32\)"),
    ((2, 8, 32, 32, 1), r"video_decode\(channels=3\)"),
    ((2, 32, 32, 3), r"\[B, T, H, W, C\]"),
])
def test_check_batch_video(shape, match):
  with pytest.raises(ValueError, match=match):
    input_check.check_batch(_batch(shape, labels=(0, 1)),
                           _config(_video_base()))


def test_check_batch_label_equal_to_num_classes():
  c = _config(num_classes=10)
  with pytest.raises(ValueError, match=r"labels in \[0, 10\] but "
                     r"config.num_classes=10 allows 0..9: set "
                     r"config.num_classes .*at least 11"):
    input_check.check_batch(_batch(labels=(0, 3, 10, 2)), c)


def test_check_batch_negative_label():
  with pytest.raises(ValueError, match=r"labels in \[-1, 2\].*map the labels "
                     r"to 0..4 in config.input.pp"):
    input_check.check_batch(_batch(labels=(0, -1, 2, 2)), _config())


@pytest.mark.parametrize("batch,match", [
    (_batch(dtype=np.uint8), r"images are uint8.*value_range\(-1, 1\)"),
    ({"image": np.zeros((4, 32, 32, 3), np.float32)},
     r"no 'label' .*keep\('image', 'label'\)"),
    ({"video": np.zeros((4, 32, 32, 3), np.float32)}, r"no 'image'"),
    (_batch(labels=np.eye(4, 5, dtype=np.int64)), r"labels of shape \(4, 5\)"
     r".*one class index per example"),
    ({"image": np.zeros((4, 32, 32, 3), np.float32),
      "label": np.zeros(4, np.float32)}, r"labels are float32"),
])
def test_check_batch_other_mismatches(batch, match):
  with pytest.raises(ValueError, match=match):
    input_check.check_batch(batch, _config())
