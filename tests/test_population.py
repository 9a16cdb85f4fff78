# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Populations: K LoSA side networks trained on one backbone pass per batch.

The promises of losa_jax.population (issue 11): every member ends where a
single run of its config ends (vmapped groups and groups of different
structures alike); a killed population resumes to the same state; 8 devices
give what one gives; the step costs one backbone forward plus K side
networks and never differentiates the backbone; a diverging member is
frozen at finite params and reported while the others go on; successive
halving keeps the best; other methods train their members one after another.

Runs use the shipped MNIST-pretrained backbone on the demo digits for a few
steps; the expensive runs are module-scoped fixtures shared by the tests.
"""
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import tiny_config
import helpers_train
from losa_jax.assembly import build as build_lib
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.utils import cost
from losa_jax import demo
from losa_jax.trainers import population as population_train
from losa_jax.assembly import steps as steps_lib
from losa_jax import train
from losa_jax.utils import tree as tree_lib
from losa_jax.evaluators import classification
from losa_jax.population import build as pop_lib
from losa_jax.population import members as members_lib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PP = "decode(channels=3)|value_range(-1, 1)|keep('image', 'label')"
TRAIN_DATA = dict(name="demo", task="digits", split="train[:256]")
EVAL_DATA = dict(name="demo", task="digits", split="test[:64]")
STEPS = 5
TOL = 1e-5
# The LoSA token-mixing MLP's output bias: a null direction of the model
# (see test_members_equal_single_runs_adam).
NULL_DIRECTION = re.compile(r"side/.*/token_\d+/mlp/up/bias")


def pop_config(population=None, *, steps=STEPS, **kw):
  """LoSA on the shipped backbone and the demo digits, a few steps.

  With `population`, a population config of that `config.population`.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_classes = 10
  c.image_size = 28
  c.total_steps = steps
  c.input = dict(data=dict(TRAIN_DATA), batch_size=16, pp=PP)
  c.evals = dict(val=dict(data=dict(EVAL_DATA), pp=PP, batch_size=64))
  c.model_init = demo.BACKBONE_NPZ
  c.model_load = dict(dont_load=["head/.*"])
  # The library's default side stream (bf16 storage, fused backward).
  c.model = dict(method="losa", backbone=dict(demo.BACKBONE_MODEL),
                 losa=dict(rank=4))
  c.optax_name = "adamw"
  c.lr = 3e-3
  c.wd = 0.0
  c.schedule = dict(warmup_steps=1, decay_type="cosine")
  c.grad_clip_norm = 1.0
  c.log_every = 2
  c.eval_every = 0
  c.ckpt_every = 0
  c.keep_ckpts = 2
  c.mesh = [("data", -1)]
  c.update(kw)
  if population is not None:
    c.population = population
  return c


# lr x wd in each of two structures: two vmapped groups of 4 in one step.
ADAM_POPULATION = dict(grid=dict(lr=[3e-3, 1e-2], wd=[0.0, 1e-4]),
                       losa=dict(rank=[2, 4]))
# One member of each group; m01 decays (its group has a weight-decay
# transform), m06 does not (wd 0 through that same transform).
ADAM_SINGLES = (1, 6)
# The NaN members share each group with a live one.
SGD_POPULATION = dict(grid=dict(lr=[0.5, float("nan")]),
                      losa=dict(rank=[2, 4]))
SGD_LIVE, SGD_DEAD = (0, 2), (1, 3)
# LoSA, LST (a ladder every 2nd block: other taps) and LAST on one backbone
# pass: three groups of two; one member of each is run alone.
MIXED_POPULATION = dict(method=["losa", "lst", "last"],
                        grid=dict(lr=[3e-3, 1e-2]), lst=dict(ladder_every=[2]))
MIXED_SINGLES = (1, 3, 5)
# LST's and LAST's params and logits at the default, with Adam (see
# test_mixed_method_members_equal_single_runs); with SGD, SGD_TOL.
ADAM_AUTODIFF_TOL = 1e-4
SGD_TOL = 1e-6


def _trainable(params):
  """{name: numpy} of the side network and head (the backbone left out)."""
  return {k: np.asarray(v) for k, v in tree_lib.flatten(
      {k: v for k, v in params.items() if k != "backbone"}).items()}


def _member(out, index):
  """{name: numpy} of member `index` of a population run's final state."""
  return tree_lib.flatten(pop_lib.member_params(out["population"],
                                                out["state"], index))


def _init_member(out, index):
  """Member `index`'s params before its first step."""
  pop = out["population"]
  init = pop.init(out["state"]["params"]["backbone"])
  return tree_lib.flatten(pop_lib.member_params(pop, init, index))


def _max_diff(a, b, names):
  return {k: float(np.max(np.abs(np.asarray(a[k]) - np.asarray(b[k]))))
          for k in names}


def _row(out, index):
  return next(r for r in out["results"]["members"] if r["index"] == index)


def _assert_equals_single_run(out, index, single):
  """Member `index` of a population run == `single` in every leaf (TOL);
  returns the member's {name: numpy}."""
  got = _member(out, index)
  want = _trainable(single["state"]["params"])
  assert set(got) == set(want)
  diffs = _max_diff(got, want, got)
  worst = max(diffs, key=diffs.get)
  assert diffs[worst] <= TOL, (index, worst, diffs[worst])
  return got


@pytest.fixture(scope="module")
def adam_pop(tmp_path_factory):
  wd = tmp_path_factory.mktemp("adam_pop")
  return train.train_and_evaluate(pop_config(ADAM_POPULATION), str(wd))


@pytest.fixture(scope="module")
def adam_singles(adam_pop, tmp_path_factory):
  out = {}
  for i in ADAM_SINGLES:
    m = adam_pop["population"].members[i]
    out[i] = train.train_and_evaluate(
        m.config, str(tmp_path_factory.mktemp(f"adam_single_{m.name}")))
  return out


@pytest.fixture(scope="module")
def sgd_pop(tmp_path_factory):
  wd = tmp_path_factory.mktemp("sgd_pop")
  out = train.train_and_evaluate(
      pop_config(SGD_POPULATION, optax_name="sgd", lr=0.5), str(wd))
  out["workdir"] = str(wd)
  out["singles"] = _single_runs(out, SGD_LIVE, tmp_path_factory, "sgd")
  return out


def _single_runs(out, indices, tmp_path_factory, what):
  """{index: a single run of member `index`'s config} of a population run."""
  return {i: train.train_and_evaluate(
      out["population"].members[i].config,
      str(tmp_path_factory.mktemp(f"{what}_single_{i}"))) for i in indices}


# --- every member is its single run ------------------------------------------


def test_members_equal_single_runs_adam(adam_pop, adam_singles):
  """One member of each structure group == a single run of its config, in
  every leaf, at the library default (bf16 storage, fused backward).

  One leaf is worth knowing about: the token-mixing MLP's output bias
  (`side/.../token_<i>/mlp/up/bias`) is a null direction of the model. It
  adds one value per token to every channel, and every LayerNorm after it
  normalises over the channels, so its exact gradient is 0. The fused
  backward returns that 0 (side_fused._backward). Autodiff returns float32
  rounding noise around 0, which Adam divides by its own running RMS into
  lr-sized steps, and which with a bf16 z_i changes how z_i rounds: that
  drift, not the taps, kept members 1e-5..1e-4 from their single runs.
  """
  pop = adam_pop["population"]
  assert len(pop.groups) == 2 and pop.num_members == 8
  assert {pop.member_order()[i][0] for i in ADAM_SINGLES} == {0, 1}
  for i, single in adam_singles.items():
    got = _assert_equals_single_run(adam_pop, i, single)
    # The comparison means something: training moved the params, except
    # the null direction, whose exact gradient is 0.
    init = _init_member(adam_pop, i)
    moved = _max_diff(got, init, got)
    null = [k for k in got if NULL_DIRECTION.fullmatch(k)]
    assert null and all(moved[k] == 0 for k in null), moved
    assert max(moved.values()) > 1e-3
    # Same final evaluation as the single run.
    row, res = _row(adam_pop, i), single["results"]
    assert row["val/accuracy"] == res["val/accuracy"]
    np.testing.assert_allclose(row["val/loss"], res["val/loss"], rtol=TOL)


def test_members_equal_single_runs_at_float32(tmp_path):
  """The same promise with a float32 side stream (`dtype="float32"`), where
  the taps, z_i and a_i are float32 and the programs differ too."""
  config = pop_config(dict(grid=dict(lr=[3e-3, 1e-2])))
  config.model.losa.dtype = "float32"
  out = train.train_and_evaluate(config, str(tmp_path / "pop"))
  m = out["population"].members[1]
  assert m.config.model.losa.dtype == "float32"
  single = train.train_and_evaluate(m.config, str(tmp_path / "single"))
  got = _assert_equals_single_run(out, m.index, single)
  assert max(_max_diff(got, _init_member(out, m.index), got).values()) > 1e-3


def test_null_direction_difference_leaves_logits_unchanged(adam_pop,
                                                           adam_singles):
  """The members' logits (shared backbone + member params) on an eval batch
  are the single runs' logits, at the library default."""
  batch = next(iter(classification.eval_batches(
      dict(EVAL_DATA), pp=PP, batch_size=64)))
  backbone = adam_pop["state"]["params"]["backbone"]
  for i, single in adam_singles.items():
    model = single["built"].model
    logits = jax.jit(lambda p, x, model=model: model.apply(
        {"params": p}, x)[0])
    want = np.asarray(logits(single["state"]["params"], batch["image"]))
    got = np.asarray(logits({**pop_lib.member_params(
        adam_pop["population"], adam_pop["state"], i), "backbone": backbone},
                            batch["image"]))
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    # The shared backbone is the single run's (loaded from the same file).
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b),
                 jax.device_get(backbone),
                 jax.device_get(single["state"]["params"]["backbone"]))


def test_members_equal_single_runs_in_every_leaf_with_sgd(sgd_pop):
  """Without Adam's normalisation rounding noise stays rounding noise: every
  leaf, the null-direction bias included, matches the single run (both
  groups, each holding a diverged member next to the compared one)."""
  for i, single in sgd_pop["singles"].items():
    got = _assert_equals_single_run(sgd_pop, i, single)
    init = _init_member(sgd_pop, i)
    assert max(_max_diff(got, init, got).values()) > 1e-2
    assert _row(sgd_pop, i)["val/accuracy"] == (
        single["results"]["val/accuracy"])


def test_cached_population_equals_uncached(sgd_pop, tmp_path):
  """A feature cache in the side stream's dtype (bf16, both defaults) feeds
  the members the taps the backbone pass would (read batch-major, in place):
  every live member ends where the uncached population does, in every leaf."""
  out = train.train_and_evaluate(
      pop_config(SGD_POPULATION, optax_name="sgd", lr=0.5,
                 feature_cache=dict(enabled=True, storage="memory")),
      str(tmp_path))
  for i in SGD_LIVE:
    got, want = _member(out, i), _member(sgd_pop, i)
    diffs = _max_diff(got, want, got)
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, (i, worst, diffs[worst])


@pytest.fixture(scope="module")
def mixed_pop(tmp_path_factory):
  out = train.train_and_evaluate(pop_config(MIXED_POPULATION),
                                 str(tmp_path_factory.mktemp("mixed_pop")))
  out["singles"] = _single_runs(out, MIXED_SINGLES, tmp_path_factory,
                                "mixed")
  return out


def _logits(single, params, images):
  model = single["built"].model
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x)[0])(
      params, images))


def _assert_leaves_close(got, want, tol, what):
  """Every leaf within `tol`."""
  assert set(got) == set(want)
  diffs = _max_diff(got, want, got)
  worst = max(diffs, key=diffs.get)
  assert diffs[worst] <= tol, (what, worst, diffs[worst])


def test_mixed_method_members_equal_single_runs(mixed_pop):
  """LoSA, LST and LAST members trained on one backbone pass end where
  single runs of their configs end, at the library default (bf16 taps and
  side stream, AdamW): train and val loss within TOL, LoSA's params and
  logits within TOL, LST's and LAST's within ADAM_AUTODIFF_TOL, every leaf.

  Adam's first update of an entry is lr g / (|g| + eps): near g = 0 its
  slope is lr / eps (1e6 at lr 1e-2). The side output and the head start at
  zero, so the first gradients of the layers before them are products of
  lr-sized steps and some entries are ~1e-8; the population's program and a
  single run's sum in other orders, and their 1e-11 float32 differences
  there become 1e-5 steps (LAST ends 3e-5 apart). The gradients themselves
  agree: with SGD every leaf is within SGD_TOL (next test)."""
  pop = mixed_pop["population"]
  assert [g.model.method for g in pop.groups] == ["losa", "lst", "last"]
  assert len({g.tap for g in pop.groups}) == 2
  batch = next(iter(classification.eval_batches(
      dict(EVAL_DATA), pp=PP, batch_size=64)))
  backbone = mixed_pop["state"]["params"]["backbone"]
  for i, single in mixed_pop["singles"].items():
    assert single["built"].model.method == pop.members[i].config.model.method
    got = _member(mixed_pop, i)
    tol = (TOL if single["built"].model.method == "losa" else
           ADAM_AUTODIFF_TOL)
    _assert_leaves_close(got, _trainable(single["state"]["params"]), tol, i)
    moved = _max_diff(got, _init_member(mixed_pop, i), got)
    assert max(moved.values()) > 1e-3, (i, moved)
    np.testing.assert_allclose(
        _logits(single, {**pop_lib.member_params(pop, mixed_pop["state"], i),
                         "backbone": backbone}, batch["image"]),
        _logits(single, single["state"]["params"], batch["image"]),
        atol=tol, rtol=0)
    row, res = _row(mixed_pop, i), single["results"]
    assert row["val/accuracy"] == res["val/accuracy"]
    np.testing.assert_allclose(row["val/loss"], res["val/loss"], rtol=TOL)
    np.testing.assert_allclose(row["train/loss"], res["train/loss"],
                               rtol=TOL)


def test_mixed_members_equal_single_runs_with_sgd(tmp_path_factory):
  """At the library default (bf16 taps and side streams), with SGD, every
  leaf of a LoSA, LST and LAST member equals its single run within SGD_TOL
  while the side networks move by 1e-3 or more: the one backbone pass and
  the vmapped groups give each member its single run's gradients."""
  config = pop_config(dict(MIXED_POPULATION, grid=dict(lr=[0.3, 1.0])),
                      optax_name="sgd")
  out = train.train_and_evaluate(config, str(tmp_path_factory.mktemp("sgd")))
  for i, single in _single_runs(out, MIXED_SINGLES, tmp_path_factory,
                                "sgd").items():
    got = _member(out, i)
    _assert_leaves_close(got, _trainable(single["state"]["params"]), SGD_TOL,
                         i)
    moved = _max_diff(got, _init_member(out, i),
                      [k for k in got if k.startswith("side/")])
    assert max(moved.values()) > 1e-3, (i, moved)
    np.testing.assert_allclose(_row(out, i)["train/loss"],
                               single["results"]["train/loss"], rtol=TOL)


def test_cached_mixed_population_equals_uncached(mixed_pop, tmp_path):
  """One feature cache (every block, bf16) feeds LoSA, LST (every 2nd tap)
  and LAST members what the backbone pass does: every member ends where the
  uncached mixed population does."""
  out = train.train_and_evaluate(pop_config(
      MIXED_POPULATION, feature_cache=dict(enabled=True, storage="memory")),
                                 str(tmp_path))
  for m in out["population"].members:
    _assert_leaves_close(_member(out, m.index), _member(mixed_pop, m.index),
                         TOL, m.label)
    np.testing.assert_allclose(_row(out, m.index)["val/loss"],
                               _row(mixed_pop, m.index)["val/loss"],
                               rtol=TOL)


def test_mixed_population_runs_the_backbone_once():
  """The train and eval steps of a LoSA/LST/LAST population trace the
  backbone once (two tap keys, three groups, one pass)."""
  pop = pop_lib.build(pop_config(MIXED_POPULATION), total_steps=STEPS)
  prog = pop.features.__self__
  calls = []

  class Counting:
    def __init__(self, module):
      self.module = module

    def apply(self, *args, **kw):
      calls.append(1)
      return self.module.apply(*args, **kw)

  prog.bb_module = Counting(prog.bb_module)
  images = (1, 16, *pop.image_shape)
  jax.make_jaxpr(prog.train_step)(pop.state_shape, {
      "image": jax.ShapeDtypeStruct(images, jnp.float32),
      "label": jax.ShapeDtypeStruct(images[:2], jnp.int32)})
  assert len(calls) == 1
  jax.make_jaxpr(prog.eval_step)(pop.state_shape, {
      "image": jax.ShapeDtypeStruct(images[1:], jnp.float32),
      "label": jax.ShapeDtypeStruct(images[1:2], jnp.int32)})
  assert len(calls) == 2


# --- every per-member value is seen ------------------------------------------

# Each per-member value at two settings, chosen so that each one moves its
# member by far more than TOL: plain SGD (Adam would divide away a clip's
# scale), a clip norm below the gradients' norm, weight decay strong enough
# to show in 5 steps. A full grid, so every member has a neighbour that
# differs in exactly one value.
SENSITIVE = dict(lr=[0.2, 0.4], wd=[0.0, 0.5], label_smoothing=[0.0, 0.5],
                 grad_clip_norm=[None, 1.0])
SENSITIVE_SEEDS = dict(seeds=[0, 1], data_seeds=[0, 1])


def _value_of(member, key):
  if key == "seed":
    return member.config.seed
  if key == "data_seed":
    return member.config.data_seed
  return member.hparams[key]


@pytest.fixture(scope="module")
def sensitive_pop(tmp_path_factory):
  """64 members (2 values of each of 6 per-member keys) and the single runs
  of the all-first and the all-second member, at the library default."""
  config = pop_config(dict(grid=SENSITIVE, **SENSITIVE_SEEDS),
                      optax_name="sgd", lr=0.2, wd=0.0, grad_clip_norm=None)
  out = train.train_and_evaluate(
      config, str(tmp_path_factory.mktemp("sensitive_pop")))
  members = out["population"].members
  keys = list(SENSITIVE) + ["seed", "data_seed"]
  first = {k: (SENSITIVE.get(k) or SENSITIVE_SEEDS[k + "s"])[0] for k in keys}
  ends = [m for want in (True, False) for m in members
          if all((_value_of(m, k) == first[k]) == want for k in keys)]
  assert len(ends) == 2
  out["keys"] = keys
  out["singles"] = {
      m.index: train.train_and_evaluate(
          m.config, str(tmp_path_factory.mktemp(f"sensitive_{m.name}")))
      for m in ends}
  return out


def test_every_per_member_value_moves_its_member(sensitive_pop):
  """For each per-member value (lr, wd, label smoothing, clip norm, init and
  data seeds), every pair of members that differ in it alone ends more than
  100x TOL apart: a population that ignored a value fails here, and the
  equality with single runs below cannot be met by members that all train
  alike."""
  pop, keys = sensitive_pop["population"], sensitive_pop["keys"]
  assert pop.num_members == 64 and len(pop.data_seeds) == 2
  params = {m.index: _member(sensitive_pop, m.index) for m in pop.members}
  for key in keys:
    closest = np.inf
    for a in pop.members:
      for b in pop.members:
        if a.index < b.index and [k for k in keys if _value_of(a, k) !=
                                  _value_of(b, k)] == [key]:
          closest = min(closest, max(_max_diff(
              params[a.index], params[b.index], params[a.index]).values()))
    assert closest > 100 * TOL, (key, closest)


def test_members_with_every_value_changed_equal_their_single_runs(
    sensitive_pop):
  """The all-first and the all-second member (every per-member value at its
  other setting) equal single runs of their configs in every leaf, at the
  library's default dtype."""
  for i, single in sensitive_pop["singles"].items():
    _assert_equals_single_run(sensitive_pop, i, single)


# --- diverging members -------------------------------------------------------


def test_diverged_member_is_frozen_finite_and_reported(sgd_pop):
  """lr=nan: the first update is NaN (with a finite loss); the member keeps
  its last finite state (its init, to the bit), is reported dead in
  results.json, and the run goes on for the others."""
  with open(os.path.join(sgd_pop["workdir"], "results.json")) as f:
    on_disk = {r["index"]: r for r in json.load(f)["members"]}
  for i in SGD_DEAD:
    row = _row(sgd_pop, i)
    assert row["alive"] is False and on_disk[i]["alive"] is False
    assert 1 <= row["died_at"] <= STEPS and on_disk[i]["died_at"] == (
        row["died_at"])
    got = _member(sgd_pop, i)
    assert all(np.all(np.isfinite(v)) for v in got.values())
    init = _init_member(sgd_pop, i)
    for k in got:
      np.testing.assert_array_equal(got[k], init[k], err_msg=k)
  for i in SGD_LIVE:
    assert _row(sgd_pop, i)["alive"] is True
    assert "died_at" not in _row(sgd_pop, i)
  assert int(sgd_pop["state"]["step"]) == STEPS


# --- resume after kill -9 ----------------------------------------------------


# The trainer in a subprocess; a population compiles more, so it waits longer.
_run_population = functools.partial(helpers_train.run_train, timeout_s=600,
                                    what="the population")


@pytest.mark.slow
def test_killed_population_resumes_to_the_same_state(adam_pop, tmp_path):
  """kill -9 after the first checkpoint, rerun: the final member states
  (params, optimizer, rng, values, alive) are the uninterrupted run's."""
  cfg = tmp_path / "cfg.py"
  # A checkpoint every step: the kill lands while steps remain to be run.
  cfg.write_text(
      "import sys\n"
      f"sys.path.insert(0, {HERE!r})\n"
      "from test_population import pop_config, ADAM_POPULATION\n"
      "def get_config(arg=None):\n"
      "  return pop_config(ADAM_POPULATION, ckpt_every=1, keep_ckpts=10)\n")
  workdir = str(tmp_path / "killed")
  rc, out = _run_population(str(cfg), workdir, kill_after_ckpt=1)
  assert rc != 0, out                    # it really was killed mid-run
  done = sorted(int(s) for s in os.listdir(os.path.join(workdir,
                                                         "checkpoints"))
                if s.isdigit())
  assert done and max(done) < STEPS, done
  rc, out = _run_population(str(cfg), workdir)
  assert rc == 0, out
  assert "Resumed the population from step" in out, out
  # The checkpointed part of the state (the backbone is never saved).
  savable = population_train._savable  # pylint: disable=protected-access
  ref = savable(adam_pop["state"])
  abstract = cost.abstract(ref)
  ck = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                  read_only=True)
  try:
    assert ck.latest_step() == STEPS
    restored, _ = ck.restore(STEPS, abstract)
  finally:
    ck.close()
  assert int(restored["step"]) == STEPS
  want = jax.device_get(ref["groups"])
  got = jax.device_get(restored["groups"])
  assert len(got) == len(want)
  for a, b in zip(got, want):
    np.testing.assert_allclose(np.asarray(a, np.float64),
                               np.asarray(b, np.float64), rtol=0, atol=1e-6)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["population"] == 8


# --- 8 devices ---------------------------------------------------------------


def test_population_on_8_devices_matches_one_device(tmp_path):
  """FSDP-sharded backbone, data-parallel batch (4 x 2 mesh) == one device,
  for two groups of two members (tests/population_worker.py)."""
  out = tmp_path / "out.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, os.path.join(HERE, "population_worker.py"), str(out)],
      env=env, capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
  res = json.loads(out.read_text())
  one, eight = res["1"], res["4x2"]
  assert eight["mesh"] == {"data": 4, "fsdp": 2} and eight["groups"] == 2
  # Really sharded: half the backbone per device, the batch over all 8.
  assert eight["kernel_spec"] == str(P(None, "fsdp"))
  assert eight["backbone_bytes_per_device"] * 2 == (
      eight["backbone_bytes_total"])
  assert eight["batch_spec"] == str(P(None, ("data", "fsdp")))
  assert one["max_param_change"] > 1e-2
  np.testing.assert_allclose(eight["losses"], one["losses"], rtol=TOL)
  for a, b in zip(eight["eval"], one["eval"]):
    assert a["correct"] == b["correct"] and a["count"] == b["count"]
    np.testing.assert_allclose(a["loss_sum"], b["loss_sum"], rtol=TOL)
  for name, params in one["params"].items():
    for k, v in params.items():
      np.testing.assert_allclose(eight["params"][name][k], v, rtol=0,
                                 atol=TOL, err_msg=f"{name} {k}")


# --- compiled cost -----------------------------------------------------------


COST_BATCH = 32


def _cost_config(rank):
  """ViT-Ti/16 at 224 px: the smallest backbone that clearly dominates the
  step (a LoSA rank-8 side network costs ~0.5% of its forward)."""
  c = tiny_config("losa", num_classes=100, image_size=224,
                  backbone=dict(variant="Ti/16", width=192, depth=12,
                                mlp_dim=768, num_heads=3,
                                patch_size=(16, 16)),
                  losa=dict(rank=rank), optax_name="adamw", wd=1e-4)
  c.total_steps = 100
  c.input = dict(data=dict(TRAIN_DATA), batch_size=COST_BATCH, pp=PP)
  return c


# (population, {(method, losa rank): members}): two LoSA structures of 4;
# LoSA, LST (a ladder every 2nd block: a second tap key) and LAST of 2.
COST_POPULATIONS = {
    "losa": (dict(grid=dict(lr=[1e-3, 2e-3, 3e-3, 4e-3]),
                  losa=dict(rank=[4, 8])),
             {("losa", 4): 4, ("losa", 8): 4}),
    "mixed": (dict(method=["losa", "lst", "last"], grid=dict(lr=[1e-3, 3e-3]),
                   lst=dict(ladder_every=[2])),
              {("losa", 4): 2, ("lst", 4): 2, ("last", 4): 2}),
}


@pytest.mark.parametrize("kind", sorted(COST_POPULATIONS))
def test_population_step_costs_one_forward_plus_k_side_networks(kind):
  """K side networks (each costed by its single run's step minus the
  forward) on one backbone forward, for groups of one method and of three.

  Compile-only. A backbone run per group, method or member, or a backward
  pass through the backbone (~2 forwards), would break the bounds.
  """
  population, members = COST_POPULATIONS[kind]
  fn, shape = build_lib.backbone_forward(_cost_config(4))
  forward = cost.compiled_cost(jax.jit(fn), shape, jax.ShapeDtypeStruct(
      (COST_BATCH, 224, 224, 3), jnp.float32))["flops"]
  sides = 0.0
  for (method, rank), count in members.items():
    c = _cost_config(rank)
    c.model.method = method
    c.model.lst = dict(ladder_every=2)
    b = build_lib.build(c, total_steps=100)
    side = cost.compiled_cost(b.train_step, b.state_shape,
                              steps_lib.abstract_batch(
                                  COST_BATCH, b.image_shape))["flops"] - forward
    assert 0 < side < 0.05 * forward, method
    sides += count * side
  c = _cost_config(4)
  c.population = population
  pop = pop_lib.build(c, total_steps=100)
  assert pop.num_members == sum(members.values())
  assert len(pop.groups) == len(members)
  batch = {"image": jax.ShapeDtypeStruct((1, COST_BATCH, 224, 224, 3),
                                         jnp.float32),
           "label": jax.ShapeDtypeStruct((1, COST_BATCH), jnp.int32)}
  flops = cost.compiled_cost(pop.train_step, pop.state_shape, batch)["flops"]
  # 10%: the vmapped step's per-member extras (measured ~5% of a side
  # network: the NaN guard's selects, per-member schedules).
  assert flops <= forward + 1.1 * sides, (flops / forward,
                                          (forward + sides) / forward)
  assert flops < 2 * forward
  assert flops >= forward        # the backbone forward is in there, once


# --- config expansion ---------------------------------------------------------


def test_grid_seeds_and_structures_expand_to_labelled_members():
  c = pop_config(dict(grid=dict(lr=[3e-3, 1e-2], wd=[0.0, 1e-4]),
                      seeds=[0, 1], losa=dict(rank=[2, 4])))
  members_lib.validate(c.population, c)
  ms = members_lib.expand(c)
  assert len(ms) == 2 * 2 * 2 * 2
  assert [m.index for m in ms] == list(range(16))
  assert len({m.name for m in ms}) == 16 and ms[3].name == "m03"
  assert len({m.label for m in ms}) == 16
  assert ms[0].label == "lr=0.003,wd=0,rank=2,seed=0"
  combos = {(m.config.lr, m.config.wd, m.config.model.losa.rank,
             m.config.seed) for m in ms}
  assert len(combos) == 16
  for m in ms:
    assert "population" not in m.config
    assert m.hparams["lr"] == m.config.lr and m.hparams["seed"] == (
        m.config.seed)
    assert m.config.data_seed == 0        # one data order: one backbone pass
  groups = members_lib.group_members(ms)
  assert [len(g[2]) for g in groups] == [8, 8]
  assert {m.config.model.losa.rank for m in groups[0][2]} == {2}
  # Several data orders split the groups by data seed.
  c2 = pop_config(dict(grid=dict(lr=[3e-3, 1e-2]), data_seeds=[0, 1]))
  ms2 = members_lib.expand(c2)
  assert sorted(m.config.data_seed for m in ms2) == [0, 0, 1, 1]
  assert len(members_lib.group_members(ms2)) == 2
  assert ms2[0].label == "lr=0.003,data_seed=0"
  # A grid of one value is no variation: the label says "base".
  one = members_lib.expand(pop_config(dict(grid=dict(lr=[3e-3]))))
  assert [m.label for m in one] == ["base"]
  # Side methods mix, each with its own options' grid: one group each.
  mixed = members_lib.expand(pop_config(dict(
      method=["losa", "lst", "last"], losa=dict(rank=[2, 4]),
      last=dict(rank=[8]))))
  assert [m.label for m in mixed] == [
      "method=losa,rank=2", "method=losa,rank=4", "method=lst",
      "method=last"]
  assert [m.config.model.method for m in mixed] == [
      "losa", "losa", "lst", "last"]
  assert mixed[3].config.model.last.rank == 8 and (
      dict(mixed[3].structure)["rank"] == "8")
  assert len(members_lib.group_members(mixed)) == 4
  prune = pop_config(dict(method=["lst"], lst=dict(init=["prune"])))
  with pytest.raises(ValueError, match=r"lst\.init='prune'"):
    pop_lib.build(prune, total_steps=STEPS)


def test_random_sampling_is_reproducible_and_in_bounds():
  def sample(seed):
    return members_lib.expand(pop_config(dict(random=dict(
        budget=12, seed=seed, lr=("loguniform", 1e-4, 1e-2),
        wd=("uniform", 0.0, 1e-3), rank=("choice", [2, 4, 8])))))
  a, b, other = sample(3), sample(3), sample(4)
  assert len(a) == 12
  key = lambda ms: [(m.config.lr, m.config.wd, m.config.model.losa.rank)
                    for m in ms]
  assert key(a) == key(b)
  assert key(a) != key(other)
  for lr, wd, rank in key(a) + key(other):
    assert 1e-4 <= lr <= 1e-2 and 0.0 <= wd <= 1e-3 and rank in (2, 4, 8)
  assert len({r for _, _, r in key(a)}) > 1   # the choice really varies
  # Every sampled member is its own configuration, labelled by its values.
  assert all(m.label.startswith("lr=") for m in a)


@pytest.mark.parametrize("population, match", [
    (dict(grid=dict(rank=[2, 4])), r"grid\.rank.*population\.losa"),
    (dict(grid=dict(seed=[0, 1])), r"grid\.seed.*population\.seeds"),
    (dict(grdi=dict(lr=[1e-3])), r"Unknown config\.population key.*grdi"),
    (dict(losa=dict(rnak=[2])), r"population\.losa\.rnak"),
    (dict(grid=dict(lr=[3e-3]), rungs=dict(steps=[2], eval="test")),
     r"rungs\.eval='test'.*\['val'\]"),
    (dict(grid=dict(lr=[3e-3]), rungs=dict(steps=[2], eval="val", keep=1)),
     r"rungs\.keep"),
    (dict(grid=dict(lr=[3e-3]), rungs=dict(steps=[4, 2], eval="val")),
     r"rungs\.steps"),
    (dict(grid=dict(lr=[])), r"grid\.lr"),
    (dict(random=dict(lr=("loguniform", 1e-4, 1e-2))), r"random\.budget"),
    (dict(random=dict(budget=2, lr=("normal", 0, 1))), r"random\.lr"),
    (dict(method=["losa", "lora"]), r"population\.method.*side methods"),
    (dict(method=["losa", "losa"]), r"population\.method.*distinct"),
    (dict(lst=dict(reduction=[4])), r"population\.lst: no member"),
    (dict(method=["lst"], lst=dict(reductoin=[4])),
     r"population\.lst\.reductoin"),
    (dict(method=["losa", "lst"], random=dict(budget=2, lr=("choice", [1]))),
     r"population\.method.*random"),
])
def test_bad_population_keys_are_refused_by_name(population, match):
  c = pop_config(population)
  with pytest.raises(ValueError, match=match):
    members_lib.validate(c.population, c)


# --- successive halving -------------------------------------------------------


def test_successive_halving_keeps_the_best_half(adam_pop, tmp_path,
                                                monkeypatch):
  """A rung at step 2 keeps the best half by val accuracy; the survivors
  train on, re-stacked, to where the same members of the full population
  (no rung) end. The rung at an eval step reuses that step's eval."""
  c = pop_config(dict(grid=dict(lr=[3e-3, 1e-2], wd=[0.0, 1e-4]),
                      rungs=dict(steps=[2], keep=0.5, eval="val")),
                 eval_every=2)
  evals = []
  run_eval = population_train.evaluate_members
  monkeypatch.setattr(population_train, "evaluate_members",
                      lambda *a, **kw: evals.append(1) or run_eval(*a, **kw))
  out = train.train_and_evaluate(c, str(tmp_path))
  assert len(evals) == 3        # steps 2 (eval and rung), 4 and the end
  rows = out["results"]["members"]
  assert len(rows) == 4 and int(out["state"]["step"]) == STEPS
  at_rung = {r["index"]: r["curve"]["val"][0] for r in rows}
  assert all(step == 2 for step, _ in at_rung.values())
  survivors = {r["index"] for r in rows if "rung_out" not in r}
  out_rows = [r for r in rows if "rung_out" in r]
  assert len(survivors) == 2 and all(r["rung_out"] == 2 for r in out_rows)
  # The best half (ties: fewer params, then the lower index).
  ranked = sorted(rows, key=lambda r: (-at_rung[r["index"]][1],
                                       r["trainable_params"], r["index"]))
  assert survivors == {r["index"] for r in ranked[:2]}
  assert {m.index for m in out["population"].members} == survivors
  # Only survivors were evaluated after the rung (at step 4 and the end).
  for r in rows:
    assert len(r["curve"]["val"]) == (3 if r["index"] in survivors else 1)
  # Re-stacking kept each survivor's state: it ends where the same config
  # ends in the full population (same tolerance rule as above).
  full = adam_pop["population"].members
  for i in survivors:
    m = members_lib.expand(c)[i]
    twin = next(f for f in full if f.hparams["lr"] == m.hparams["lr"] and
                f.hparams["wd"] == m.hparams["wd"] and
                f.config.model.losa.rank == m.config.model.losa.rank)
    got, want = _member(out, i), _member(adam_pop, twin.index)
    diffs = _max_diff(got, want, [k for k in got
                                  if not NULL_DIRECTION.fullmatch(k)])
    worst = max(diffs, key=diffs.get)
    assert diffs[worst] <= TOL, (m.label, worst, diffs[worst])


# --- other methods ------------------------------------------------------------


def test_non_losa_members_run_one_after_another(tmp_path):
  """method=linear changes no backbone pass to share: each member is a
  single run in <workdir>/<member>, and results.json ranks them."""
  c = pop_config(dict(grid=dict(lr=[3e-3, 3e-2])), steps=4)
  c.model.method = "linear"
  out = train.train_and_evaluate(c, str(tmp_path))
  res = out["results"]
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["leaderboard"] == res["leaderboard"]
  assert res["shared_backbone"] is False and res["population"] == 2
  assert sorted(res["leaderboard"]) == ["m00", "m01"]
  assert res["best"] == res["leaderboard"][0]
  accs = {}
  for name in ("m00", "m01"):
    with open(tmp_path / name / "results.json") as f:
      single = json.load(f)
    assert single["method"] == "linear" and single["steps"] == 4
    assert os.path.isdir(tmp_path / name / "checkpoints")
    row = next(r for r in res["members"] if r["name"] == name)
    assert row["val/accuracy"] == single["val/accuracy"]
    accs[name] = single["val/accuracy"]
  ranked = sorted(accs, key=lambda n: (-accs[n], n))
  assert res["leaderboard"] == ranked
