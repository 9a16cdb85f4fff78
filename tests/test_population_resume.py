# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Population checkpoints: resumes past damaged steps and rungs, cached
populations with rungs, refused optimizer changes, and no step kept from
which every member dies.

A 2-block random ViT on the demo digits (tests/test_train.py's
digits_config): 4 LoSA members (lr x rank, two groups, SGD so that cached
and uncached members compare leaf by leaf), a checkpoint every step, and a
successive-halving rung at step 2.
"""
import logging
import os
import shutil

import numpy as np
import pytest

from losa_jax.checkpointing import integrity
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.trainers import population as population_train
from losa_jax import train
from losa_jax.population import build as pop_lib
from losa_jax.utils import tree as tree_lib
from test_ckpt_reliability import _flip_bytes, _largest_data_file
from test_train import PP, digits_config

STEPS = 3
TOL = 1e-5
POPULATION = dict(grid=dict(lr=[0.1, 0.5]), losa=dict(rank=[2, 4]),
                  rungs=dict(steps=[2], keep=0.5, eval="val"))


def pop_config(population=None, **kw):
  """Library defaults (bf16 side stream, fused backward), SGD."""
  c = digits_config(**{"steps": STEPS, "ckpt_every": 1, "log_every": 1,
                       "keep_ckpts": 5, **kw})
  c.evals = {"val": dict(data=dict(demo="digits", split="test[:64]"), pp=PP,
                         batch_size=32)}
  c.optax_name = "sgd"
  c.population = population or POPULATION
  return c


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """The uninterrupted run: checkpoints 1 (4 members), 2 and 3 (the 2
  survivors of the rung at step 2)."""
  wd = str(tmp_path_factory.mktemp("pop_base") / "wd")
  out = train.train_and_evaluate(pop_config(), wd)
  out["workdir"] = wd
  return out


@pytest.fixture
def workdir(base, tmp_path):
  wd = str(tmp_path / "wd")
  shutil.copytree(base["workdir"], wd)
  return wd


def _survivors(out):
  return sorted(m.index for m in out["population"].members)


def _members(out):
  """{member index: {leaf name: numpy}} of the run's final members."""
  return {i: tree_lib.flatten(pop_lib.member_params(out["population"],
                                                    out["state"], i))
          for i in _survivors(out)}


def _assert_same_members(got, want, tol):
  assert _survivors(got) == _survivors(want)
  a, b = _members(got), _members(want)
  for i in a:
    for k in a[i]:
      np.testing.assert_allclose(a[i][k], b[i][k], rtol=0, atol=tol,
                                 err_msg=f"member {i} {k}")


def _ckdir(workdir):
  return os.path.join(workdir, "checkpoints")


def test_checkpoints_hold_the_members_of_their_step(base):
  ck = checkpointing.Checkpointer(_ckdir(base["workdir"]), read_only=True)
  try:
    assert ck.all_steps() == [1, 2, 3]
    held = {s: ck.read_meta(s)["members"] for s in ck.all_steps()}
  finally:
    ck.close()
  assert held[1] == [0, 1, 2, 3]
  assert held[2] == held[3] == _survivors(base) and len(held[3]) == 2


def test_cached_population_with_a_rung_equals_uncached(base, tmp_path):
  """The rung rebuilds the survivors' population for cached taps too; they
  end where the uncached survivors end, in every leaf."""
  out = train.train_and_evaluate(
      pop_config(feature_cache=dict(enabled=True, storage="memory")),
      str(tmp_path))
  assert int(out["state"]["step"]) == STEPS
  _assert_same_members(out, base, TOL)


def test_resume_takes_the_members_of_the_step_it_restores(
    base, workdir, caplog, capsys):
  """Step 3 never written (a kill), step 2 damaged (2 members): the resume
  falls back to step 1, whose 4 members it rebuilds, runs the rung again and
  ends where the uninterrupted run ends."""
  shutil.rmtree(os.path.join(_ckdir(workdir), "3"))
  _flip_bytes(_largest_data_file(os.path.join(_ckdir(workdir), "2")))
  caplog.set_level(logging.WARNING)
  out = train.train_and_evaluate(pop_config(), workdir)
  assert "Resumed the population from step 1 " in capsys.readouterr().out
  assert any("Falling back to the previous step" in r.getMessage()
             and os.path.join(_ckdir(workdir), "2") in r.getMessage()
             for r in caplog.records)
  _assert_same_members(out, base, 1e-6)
  assert len(out["results"]["members"]) == 4


@pytest.mark.parametrize("manifest", [True, False])
def test_newest_step_without_its_metadata_file_falls_back(
    base, workdir, manifest, caplog, capsys):
  """As a single run does: step 3 lost meta/metadata, so the resume takes
  step 2 (after the rung) with a warning naming step 3."""
  step_dir = os.path.join(_ckdir(workdir), "3")
  os.remove(os.path.join(step_dir, "meta", "metadata"))
  if not manifest:
    os.remove(os.path.join(step_dir, integrity.MANIFEST))
  caplog.set_level(logging.WARNING)
  out = train.train_and_evaluate(pop_config(), workdir)
  assert "Resumed the population from step 2 " in capsys.readouterr().out
  [msg] = [r.getMessage() for r in caplog.records
           if "Falling back to the previous step" in r.getMessage()]
  assert f"step 3 at {step_dir}" in msg, msg
  _assert_same_members(out, base, 1e-6)
  # The members the rung stopped are still reported.
  rows = {r["index"]: r for r in out["results"]["members"]}
  assert sorted(rows) == [0, 1, 2, 3]
  assert sum("rung_out" in r for r in rows.values()) == 2


def test_resume_with_an_optimizer_the_state_cannot_hold_is_refused(workdir):
  """SGD with momentum holds a trace per param; the saved state has none."""
  with pytest.raises(integrity.CheckpointError) as e:
    train.train_and_evaluate(pop_config(optax={"momentum": 0.9}), workdir)
  msg = str(e.value)
  assert "optimizer state this run's optimizer cannot take" in msg, msg
  assert "config.optax.momentum: was None, now 0.9" in msg, msg
  assert "use a new --workdir" in msg, msg


def test_no_step_is_kept_from_which_every_member_dies(tmp_path):
  """lr 1e4 and 3e4, no clipping: both members die at step 4, so step 3
  (whose params gave those losses) is deleted; steps 1 and 2 stay."""
  c = pop_config(dict(grid=dict(lr=[1e4, 3e4])), steps=8, keep_ckpts=10,
                 grad_clip_norm=None,
                 schedule=dict(warmup_steps=4, decay_type="constant"))
  with pytest.raises(population_train.PopulationDiedError) as e:
    train.train_and_evaluate(c, str(tmp_path))
  msg = str(e.value)
  assert "by step 4" in msg and "Checkpoint step 3, from which every member "\
      "died, was deleted" in msg, msg
  assert sorted(os.listdir(_ckdir(str(tmp_path)))) == ["1", "2"]
