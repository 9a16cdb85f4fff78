# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Checkpoint reliability: integrity manifests and fallback, wrapped Orbax
errors, hyper-parameter changes on resume, the NaN message, read-only use."""
import glob
import json
import logging
import os
import re
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from losa_jax.checkpointing import integrity
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.serving import predict
from losa_jax import train
from losa_jax.trainers import common
from test_train import digits_config


def tiny_config(**kw):
  """digits_config without evals, batch 8: the cheapest trainer run."""
  c = digits_config(**{"steps": 2, "ckpt_every": 1, "log_every": 1, **kw})
  with c.unlocked():
    del c["evals"]
  c.input.batch_size = 8
  return c


BASE_HPARAMS = dict(wd=1e-4, grad_clip_norm=1.0)


@pytest.fixture(scope="module")
def base_workdir(tmp_path_factory):
  """A finished 2-step run with a checkpoint (and manifest) at steps 1, 2."""
  wd = str(tmp_path_factory.mktemp("base") / "wd")
  train.train_and_evaluate(tiny_config(**BASE_HPARAMS), wd)
  return wd


@pytest.fixture
def workdir(base_workdir, tmp_path):
  """A private copy of the base run, free to damage."""
  wd = str(tmp_path / "wd")
  shutil.copytree(base_workdir, wd)
  return wd


def _data_files(step_dir):
  """The array-data files (each process's OCDBT `d/` folder) of a step."""
  return [os.path.join(r, f) for r, _, fs in os.walk(step_dir) for f in fs
          if os.path.basename(r) == "d" and
          os.path.basename(os.path.dirname(r)).startswith("ocdbt.process_")]


def _largest_data_file(step_dir):
  return max(_data_files(step_dir), key=os.path.getsize)


def _flip_bytes(path, n=16):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(b ^ 0xFF for b in data[mid:mid + n])
    f.seek(0)
    f.write(data)


def _log_text(caplog):
  return "\n".join(r.getMessage() for r in caplog.records)


def _count_leaves(opt):
  """The optimizer step counters (int leaves) of an optax state."""
  return sorted({int(x) for x in jax.tree.leaves(opt)
                 if jnp.issubdtype(x.dtype, jnp.integer) and x.ndim == 0})


# --- 1. silent corruption -----------------------------------------------------


def test_flipped_bytes_are_detected_and_resume_falls_back(workdir, caplog,
                                                          capsys):
  ckdir = os.path.join(workdir, "checkpoints")
  assert sorted(os.listdir(ckdir)) == ["1", "2"]
  for step in ("1", "2"):       # written once Orbax finalised each step
    manifest = json.load(open(os.path.join(ckdir, step,
                                           integrity.MANIFEST)))
    assert any(f.startswith("state/") for f in manifest["files"])
  victim = _largest_data_file(os.path.join(ckdir, "2"))
  size = os.path.getsize(victim)
  _flip_bytes(victim)
  assert os.path.getsize(victim) == size
  rel = os.path.relpath(victim, os.path.join(ckdir, "2"))

  ck = checkpointing.Checkpointer(ckdir, read_only=True)
  with pytest.raises(integrity.DamagedCheckpointError) as e:
    ck.verify(2)
  assert os.path.join(ckdir, "2") in str(e.value) and rel in str(e.value)
  assert ck.verify(1)
  ck.close()

  caplog.set_level(logging.WARNING)
  out = train.train_and_evaluate(tiny_config(steps=3, **BASE_HPARAMS),
                                 workdir)
  assert "Resumed from step 1 " in capsys.readouterr().out
  log = _log_text(caplog)
  assert rel in log and "Falling back to the previous step" in log
  # The damaged step is kept for inspection, out of the trainer's way.
  aside = glob.glob(os.path.join(workdir, "damaged_checkpoints", "2.*"))
  assert len(aside) == 1 and os.path.exists(
      os.path.join(aside[0], rel))
  assert sorted(os.listdir(ckdir)) == ["1", "2", "3"]
  assert int(out["state"]["step"]) == 3


def test_no_good_step_left_raises_with_the_way_out(workdir):
  ckdir = os.path.join(workdir, "checkpoints")
  for step in ("1", "2"):
    _flip_bytes(_largest_data_file(os.path.join(ckdir, step)))
  with pytest.raises(integrity.CheckpointError,
                     match="No usable checkpoint.*new --workdir"):
    train.train_and_evaluate(tiny_config(steps=3, **BASE_HPARAMS), workdir)


def test_manifest_is_written_once_the_step_is_final_and_checked(
    tmp_path, monkeypatch):
  """Step 4's manifest exists while the run is still at step 7 (its loss was
  checked at step 5), long before the next save at step 8: a kill there
  leaves no step unverified. The trainer is held before step 7's batch
  until the manifest appears (or 120 s pass, then the test fails)."""
  from losa_jax.assembly import input_pipeline  # pylint: disable=g-import-not-at-top
  manifest = tmp_path / "checkpoints" / "4" / integrity.MANIFEST
  seen = {}
  real = input_pipeline.device_batches

  def held(it, mesh):
    for i, batch in enumerate(real(it, mesh), start=1):
      if i == 7:
        deadline = time.monotonic() + 120
        while not manifest.exists() and time.monotonic() < deadline:
          time.sleep(0.02)
        seen["manifest"] = manifest.exists()
        seen["steps"] = sorted(os.listdir(tmp_path / "checkpoints"))
      yield batch

  monkeypatch.setattr(input_pipeline, "device_batches", held)
  train.train_and_evaluate(tiny_config(steps=8, ckpt_every=4), str(tmp_path))
  assert seen == {"manifest": True, "steps": ["4"]}, seen
  assert checkpointing.Checkpointer(str(tmp_path / "checkpoints"),
                                    read_only=True).verify(4)


def test_step_without_manifest_is_used_with_a_warning_naming_it(
    workdir, caplog, capsys):
  """The warning names the step and says only what is known: no reason for
  the missing manifest is asserted."""
  step_dir = os.path.join(workdir, "checkpoints", "2")
  os.remove(os.path.join(step_dir, integrity.MANIFEST))
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(tiny_config(steps=3, **BASE_HPARAMS), workdir)
  assert "Resumed from step 2 " in capsys.readouterr().out
  [msg] = [r.getMessage() for r in caplog.records
           if integrity.MANIFEST in r.getMessage()]
  assert msg.startswith(f"Checkpoint step 2 at {step_dir} has no "
                        f"{integrity.MANIFEST}"), msg
  assert "used unverified" in msg and "right after saving" not in msg, msg


# --- 2. Orbax errors wrapped --------------------------------------------------


@pytest.mark.parametrize("with_manifest", [True, False])
def test_deleted_data_file_is_named_and_resume_falls_back(
    workdir, with_manifest, caplog, capsys):
  step_dir = os.path.join(workdir, "checkpoints", "2")
  victim = _largest_data_file(step_dir)
  os.remove(victim)
  if not with_manifest:         # as a run from before manifests: Orbax fails
    os.remove(os.path.join(step_dir, integrity.MANIFEST))
    # Every data file: OCDBT may leave a file no longer referenced (seen
    # once under load), so removing only the largest need not break it.
    for path in _data_files(step_dir):
      os.remove(path)
  caplog.set_level(logging.WARNING)
  train.train_and_evaluate(tiny_config(steps=3, **BASE_HPARAMS), workdir)
  assert "Resumed from step 1 " in capsys.readouterr().out
  [msg] = [r.getMessage() for r in caplog.records
           if "Falling back to the previous step" in r.getMessage()]
  assert f"step 2 at {step_dir}" in msg, msg
  assert "TensorStore" not in msg and len(msg) < 1000, msg  # no spec dump
  if with_manifest:
    assert f"file {os.path.relpath(victim, step_dir)} is missing" in msg, msg
  else:
    assert "Cannot read checkpoint step 2" in msg, msg


def test_only_step_damaged_raises_checkpoint_error(tmp_path):
  """Without a step to fall back to, the Orbax error is a CheckpointError."""
  ck = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  state = {"params": {"w": jax.random.normal(jax.random.key(0), (4096,))}}
  ck.save(5, state, {})
  ck.close()
  step_dir = str(tmp_path / "5")
  os.remove(_largest_data_file(step_dir))
  os.remove(os.path.join(step_dir, integrity.MANIFEST))
  ck = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                          state)
  with pytest.raises(integrity.CheckpointError) as e:
    ck.restore_newest(abstract)
  ck.close()
  msg = str(e.value)
  assert msg.startswith(f"No usable checkpoint in {tmp_path}: Cannot read "
                        f"checkpoint step 5 at {step_dir}: "), msg
  assert "new --workdir" in msg and "TensorStore" not in msg, msg
  assert os.path.isdir(step_dir)    # read-only: left in place


# --- 3. changed hyper-parameters ----------------------------------------------


@pytest.mark.parametrize("key,new", [("wd", 0.0), ("grad_clip_norm", None)])
def test_resume_after_changing_wd_or_grad_clip_keeps_the_optimizer_state(
    workdir, key, new, caplog, capsys):
  caplog.set_level(logging.WARNING)
  out = train.train_and_evaluate(
      tiny_config(steps=3, **{**BASE_HPARAMS, key: new}), workdir)
  assert "Resumed from step 2 " in capsys.readouterr().out
  old = BASE_HPARAMS[key]
  assert f"config.{key}: was {old!r}, now {new!r}" in _log_text(caplog)
  # The optimizer state went on (3 updates counted), not restarted (1).
  assert _count_leaves(out["state"]["opt"]) == [3]


def test_resume_after_an_optimizer_change_the_state_cannot_hold_is_refused(
    workdir):
  """Adam's first moment in bf16 (config.optax.mu_dtype): as many arrays as
  before, so a restore by position would cast them; refused by name, before
  any array is read, like a changed rank."""
  with pytest.raises(integrity.CheckpointError) as e:
    train.train_and_evaluate(
        tiny_config(steps=3, optax={"mu_dtype": "bfloat16"}, **BASE_HPARAMS),
        workdir)
  msg = str(e.value)
  assert "optimizer state this run's optimizer cannot take" in msg, msg
  assert "config.optax.mu_dtype: was None, now 'bfloat16'" in msg, msg
  assert re.search(r"saved \S*mu\S*: float32\[", msg), msg
  assert "Resume with the original optimizer config or use a new --workdir" \
      in msg
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
      "1", "2"]


# --- 4. the NaN message -------------------------------------------------------


def test_a_step_whose_loss_is_not_finite_is_not_kept(tmp_path):
  """A checkpoint every step and a NaN at step t: step t-1's params gave
  that loss, so it is deleted; the newest kept step is t-2, whose loss (at
  step t-1) was finite, and a resume from it with a sane lr goes on."""
  c = tiny_config(steps=8, lr=1e6)
  with pytest.raises(train.NonFiniteLossError) as e:
    train.train_and_evaluate(c, str(tmp_path))
  msg = str(e.value)
  bad = int(re.search(r"Loss is \S+ at step (\d+)", msg).group(1))
  assert bad >= 3, msg                 # a step was saved and checked before
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"),
                                  read_only=True)
  steps = ck.all_steps()
  ck.close()
  assert steps and max(steps) == bad - 2, (steps, msg)
  assert (f"Checkpoint step {bad - 1}, whose params gave this loss, was "
          f"deleted. The newest checkpoint, step {bad - 2} ") in msg, msg
  out = train.train_and_evaluate(tiny_config(steps=bad, lr=1e-3),
                                 str(tmp_path))
  assert int(out["state"]["step"]) == bad
  assert np.isfinite(out["results"]["train/loss"])


def test_the_last_step_is_saved_only_with_finite_params(tmp_path):
  """The last step's loss is never computed: a NaN update there (lr NaN: the
  loss before it is finite) is caught by its params, and it is not kept."""
  with pytest.raises(train.NonFiniteLossError,
                     match="not finite after the last step 1; not saved"):
    train.train_and_evaluate(
        tiny_config(steps=1, lr=float("nan"),
                    schedule=dict(warmup_steps=0, decay_type="constant")),
        str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "1"))


def test_nan_message_judges_the_newest_checkpoint(tmp_path):
  c = tiny_config(steps=8, lr=1e6)
  with pytest.raises(train.NonFiniteLossError) as e:
    train.train_and_evaluate(c, str(tmp_path))
  msg = str(e.value)
  ck = checkpointing.Checkpointer(str(tmp_path / "checkpoints"),
                                  read_only=True)
  steps = ck.all_steps()
  metas = {s: ck.read_meta(s) for s in steps}
  ck.close()
  newest = steps[-1]
  assert metas[newest]["max_abs_param"] > common.HUGE_PARAM, metas
  assert all(np.isfinite(m["loss"]) for m in metas.values())
  assert (f"The newest checkpoint, step {newest} in "
          f"{tmp_path / 'checkpoints'}, holds max|param| "
          f"{metas[newest]['max_abs_param']:.3g} (last finite loss "
          f"{metas[newest]['loss']:.3g})") in msg, msg
  assert "would likely diverge again" in msg
  assert "Kept steps: " + ", ".join(
      f"{s} (max|param| {metas[s]['max_abs_param']:.3g})"
      for s in steps) in msg, msg
  assert "start afresh with a new --workdir" in msg
  assert "Lower config.lr (now 1000000.0)" in msg
  assert "config.grad_clip_norm (now None)" in msg


def test_nonfinite_report_names_the_newest_sane_step(tmp_path):
  ck = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  state = {"params": {"w": jnp.zeros(3)}}
  for step, big in ((1, 0.5), (2, 0.7), (3, 90.0)):
    ck.save(step, state, {"loss": 2.0, "max_abs_param": big})
  ck.wait()
  msg = common.nonfinite_report(ck)
  assert "step 3" in msg and "too large (180x step 1's)" in msg, msg
  assert "Step 2 looks sane: move the later steps [3]" in msg, msg
  ck.save(4, state, {"loss": 2.0, "max_abs_param": 0.6})
  ck.wait()
  assert "would likely diverge" not in common.nonfinite_report(ck)
  ck.close()


# --- 5. read-only commands ----------------------------------------------------


def test_predict_on_a_missing_workdir_creates_nothing(tmp_path):
  missing = tmp_path / "typo"
  with pytest.raises(FileNotFoundError, match="check --workdir") as e:
    predict.Predictor(tiny_config(), str(missing))
  assert isinstance(e.value, integrity.CheckpointError)
  assert str(missing / "checkpoints") in str(e.value)
  assert not os.path.exists(missing)


def _tree_listing(root):
  return sorted((os.path.relpath(os.path.join(r, f), root),
                 os.path.getsize(os.path.join(r, f)))
                for r, _, fs in os.walk(root) for f in fs)


def test_predict_reads_a_workdir_without_writing(workdir):
  ckdir = os.path.join(workdir, "checkpoints")
  _flip_bytes(_largest_data_file(os.path.join(ckdir, "2")))
  before = _tree_listing(workdir)
  p = predict.Predictor(tiny_config(**BASE_HPARAMS), workdir)
  assert p.step == 1                # the damaged newest step is skipped
  assert _tree_listing(workdir) == before
  with pytest.raises(FileNotFoundError, match="step 7"):
    predict.Predictor(tiny_config(**BASE_HPARAMS), workdir, step=7)


# --- the Checkpointer alone (no training) ------------------------------------


def _toy_state(wd: float, clip):
  params = {"a": {"kernel": jnp.arange(6.0).reshape(2, 3)},
            "b": jnp.ones(4)}
  parts = ([optax.masked(optax.clip_by_global_norm(clip),
                         {"a": {"kernel": True}, "b": True})] if clip else [])
  parts += [optax.scale_by_adam()]
  if wd:
    parts.append(optax.add_decayed_weights(wd))
  parts += [optax.scale_by_schedule(lambda s: 1e-3), optax.scale(-1.0)]
  tx = optax.chain(*parts)
  opt = tx.init(params)
  _, opt = tx.update(params, opt, params)
  return {"params": params, "opt": opt, "step": jnp.asarray(1)}


def test_optimizer_state_is_stored_by_leaves_and_restored_into_any_chain(
    tmp_path):
  ck = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  saved = _toy_state(wd=1e-4, clip=1.0)
  ck.save(1, saved, {})
  ck.close()
  ck = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  for target in (_toy_state(0.0, None), _toy_state(1e-4, None),
                 _toy_state(0.0, 1.0)):
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                            target)
    state, meta = ck.restore(1, abstract)
    assert meta["layout"] == checkpointing.LAYOUT
    assert (jax.tree.structure(state["opt"]) ==
            jax.tree.structure(target["opt"]))
    jax.tree.map(np.testing.assert_array_equal, jax.tree.leaves(state["opt"]),
                 jax.tree.leaves(saved["opt"]))
  ck.close()


def test_read_only_checkpointer_refuses_to_save(tmp_path):
  checkpointing.Checkpointer(str(tmp_path), async_save=False).close()
  ck = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(integrity.CheckpointError, match="read-only"):
    ck.save(1, {"x": jnp.zeros(2)}, {})
  ck.close()
