# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Equal-budget searches: every method tries the same K configs of lr x wd.

The building blocks of `losa_jax.study.budget` and `study.ablation`
(docs/study.md gives the protocol):

* `TaskData`: one task's batches, put on the device once, so every method
  and member reads the very same arrays.
* `Single`: one non-shared method compiled ONCE with lr and wd as runtime
  values, then run K times one after another (K separate runs, without K
  compiles deciding the comparison).
* `Population`: a side method's K members (LoSA, LST or LAST) as ONE
  population (`population.build`).
* `select`: the same rule for every method.
"""
import ast
import copy
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import build
from losa_jax.bench import common
from losa_jax.bench import harness
from losa_jax.utils import cost
from losa_jax import datasets
from losa_jax.assembly import input_pipeline
from losa_jax.assembly import optim
from losa_jax.trainers import population as population_train
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.assembly import steps as steps_lib
from losa_jax.evaluators import classification
from losa_jax.population import build as pop_lib
from losa_jax.population import members as members_lib
from losa_jax.study import run

RANK = run.BASELINE_RANK       # LoSA rank, LoRA rank, adapter bottleneck: 8
SELECT = "minival/accuracy"    # the selection metric of every method
EVALS = ("minival", "test")
CHECK_EVERY = 10               # steps between divergence checks


def base_config(method: str, task: str, *, num_classes: int, steps: int,
                batch: int, seed: int, val_percent: int,
                config_file: Optional[str] = None, **overrides):
  """The study's config of one method on one task (`run.make_config`, rank
  8), trained on train[:80%] with minival and test evals; `overrides` set
  top-level fields (lr, wd, ...)."""
  c = run.make_config(method, RANK, num_classes, steps, batch, task=task,
                      seed=seed, config_file=config_file)
  cut = 100 - val_percent
  sp = {"train": f"train[:{cut}%]", "minival": f"train[{cut}%:]",
        "test": "test"}
  c.input.data = run.task_data(task, sp["train"])
  # "minival" (big_vision's name for a split held out of train) sorts before
  # "test", so a population's own leaderboard also ranks by it.
  c.evals = {name: dict(data=run.task_data(task, sp[name]), pp=c.input.pp,
                        batch_size=run.EVAL_BATCH) for name in EVALS}
  c.eval_every = 0
  for k, v in overrides.items():
    c[k] = v
  return c


def search_config(config, lr: Sequence[float], wd: Sequence[float]):
  """`config` with the search as its population: lr x wd, the config's seed.

  The base wd is the grid's largest, so the optimizer has the decay term
  that members with wd 0 leave at zero (the population does the same).
  """
  c = copy.deepcopy(config)
  c.population = dict(grid=dict(lr=[float(x) for x in lr],
                                wd=[float(x) for x in wd]),
                      seeds=[int(config.seed)])
  c.wd = float(max(wd))
  return c


# --- data ---------------------------------------------------------------------


class TaskData:
  """`steps` training batches per data seed (the trainer's pipeline) and the
  minival and test eval batches, on the device."""

  def __init__(self, config, steps: int, data_seeds: Sequence[int]):
    t0 = time.perf_counter()
    source = datasets.get_source(dict(config.input.data))
    mesh = sharding_lib.make_mesh(config.get("mesh", [("data", -1)]))
    self.num_train = source.num_examples()
    self.train = {}
    for seed in data_seeds:
      dev = run.train_batches(source, config, seed, mesh)
      self.train[seed] = [next(dev) for _ in range(steps)]
    self.evals = {}
    for name in EVALS:
      ev = dict(config.evals[name])
      batches = classification.eval_batches(dict(ev["data"]), pp=ev["pp"],
                                            batch_size=ev["batch_size"])
      self.evals[name] = list(input_pipeline.device_batches(batches, mesh))
    self._stacked = {}
    self.build_s = time.perf_counter() - t0

  def stacked(self, seeds: Sequence[int]) -> List[Dict[str, jax.Array]]:
    """Population batches: [S, B, ...] with one slot per data seed (made
    once, outside any timed loop)."""
    key = tuple(seeds)
    if key not in self._stacked:
      self._stacked[key] = [
          jax.tree.map(lambda *xs: jnp.stack(xs),
                       *[self.train[s][i] for s in seeds])
          for i in range(len(self.train[seeds[0]]))]
    return self._stacked[key]


def _abstract_eval_batch(image_shape):
  return steps_lib.abstract_batch(run.EVAL_BATCH, image_shape,
                                  with_mask=True)


def _row(m: members_lib.Member, params: int) -> Dict[str, Any]:
  return {"index": m.index, "name": m.name, "label": m.label,
          "lr": m.hparams["lr"], "wd": m.hparams["wd"],
          "seed": m.hparams["seed"], "data_seed": m.hparams["data_seed"],
          "structure": {k: ast.literal_eval(v) for k, v in m.structure},
          "trainable_params": params, "diverged": False}


# --- K separate runs ----------------------------------------------------------


class Single:
  """One method's train step, compiled once; lr and wd are arguments."""

  def __init__(self, config, total_steps: int):
    config = copy.deepcopy(config)
    if "population" in config:
      del config["population"]
    self.config, self.method = config, config.model.method
    self.built = build.build(config, total_steps=total_steps)
    state = cost.abstract(self.built.state_shape)
    model, ls = self.built.model, config.get("label_smoothing", 0.0)

    def step(state, batch, hp):
      # The trainer's step on the trainer's optimizer, with this member's
      # values as traced scalars instead of constants.
      tx, sched, mask = optim.make(config, state["params"], total_steps,
                                   hparams=hp, log_rules=False)
      return steps_lib.train_step_fn(model, tx, mask, label_smoothing=ls,
                                     schedule_fns=sched)(state, batch)

    mesh, sh = self.built.mesh, self.built.state_sharding
    rep = sharding_lib.replicated(mesh)
    jitted = jax.jit(step, in_shardings=(
        sh, sharding_lib.batch_sharding(mesh), rep), out_shardings=(sh, rep),
                     donate_argnums=(0,))
    hp = {k: jax.ShapeDtypeStruct((), jnp.float32) for k in ("lr", "wd")}
    t0 = time.perf_counter()
    self.step = jitted.lower(state, steps_lib.abstract_batch(
        config.input.batch_size, self.built.image_shape), hp).compile()
    self.cost = cost.cost_of_compiled(self.step)
    # Compile time: train and eval steps and the init (warmed once), so that
    # no search's train or eval time hides a compile.
    self.eval_step = self.built.eval_step.lower(
        state["params"], _abstract_eval_batch(self.built.image_shape)
    ).compile()
    self.fresh_state(0)
    self.compile_s = time.perf_counter() - t0
    self.trainable = self.built.num_trainable()

  def fresh_state(self, seed: int):
    """The trainer's initial state: init(seed), then the shipped backbone."""
    return self.built.init_loaded(jax.random.key(seed), self.config)

  @staticmethod
  def hp(member: members_lib.Member) -> Dict[str, jax.Array]:
    return {k: jnp.float32(member.hparams[k]) for k in ("lr", "wd")}

  def search(self, members: Sequence[members_lib.Member], data: TaskData
             ) -> Dict[str, Any]:
    """Trains the members one after another; evaluates each on minival and
    test. Returns {"rows", "train_s", "eval_s" (minival: the search's),
    "test_eval_s" (reporting only), "backbone_passes_per_step", "runs"}.
    """
    rows, train_s, eval_s = [], 0.0, {name: 0.0 for name in EVALS}
    for m in members:
      row = _row(m, self.trainable)
      t0 = time.perf_counter()
      # Every run loads the backbone again, as a separate trainer run does.
      state, hp = self.fresh_state(m.hparams["seed"]), self.hp(m)
      batches = data.train[m.hparams["data_seed"]]
      for i, batch in enumerate(batches, 1):
        state, met = self.step(state, batch, hp)
        if i % CHECK_EVERY == 0 or i == len(batches):
          loss = float(met["loss"])
          if not np.isfinite(loss):
            # The trainer stops a run whose loss is NaN; so does the search.
            row.update(diverged=True, died_at=i)
            break
          row["final_loss"] = loss
      jax.block_until_ready(state)
      train_s += time.perf_counter() - t0
      for name in EVALS if not row["diverged"] else ():
        t0 = time.perf_counter()
        sums = [self.eval_step(state["params"], b) for b in data.evals[name]]
        row[f"{name}/accuracy"] = sum(float(s["correct"]) for s in sums) / max(
            sum(float(s["count"]) for s in sums), 1.0)
        eval_s[name] += time.perf_counter() - t0
      rows.append(row)
    return {"rows": rows, "train_s": train_s, "eval_s": eval_s["minival"],
            "test_eval_s": eval_s["test"],
            "backbone_passes_per_step": len(members), "runs": len(members)}


# --- one population -----------------------------------------------------------


class Population:
  """Side-method members (a config's population, or a subset) as one
  compiled population step: one backbone pass per batch and data order."""

  def __init__(self, config, total_steps: int,
               members: Optional[Sequence[members_lib.Member]] = None):
    self.config = config
    self.pop = pop_lib.build(config, total_steps=total_steps,
                             members=members)
    state = harness.abstract_state(self.pop)
    b, shape = config.input.batch_size, self.pop.image_shape
    s = len(self.pop.data_seeds)
    batch = {"image": jax.ShapeDtypeStruct((s, b, *shape), jnp.float32),
             "label": jax.ShapeDtypeStruct((s, b), jnp.int32)}
    t0 = time.perf_counter()
    self.step = self.pop.train_step.lower(state, batch).compile()
    self.cost = cost.cost_of_compiled(self.step)
    # As for `Single`: eval step and init compiled here, not in a search.
    self.eval_step = self.pop.eval_step.lower(
        state, _abstract_eval_batch(shape)).compile()
    self._load_backbone = pop_lib.backbone_loader(config, self.pop)
    self.fresh_state()
    self.compile_s = time.perf_counter() - t0
    self.trainable = self.pop.groups[0].num_params

  @property
  def members(self) -> List[members_lib.Member]:
    return self.pop.members

  @property
  def backbone_passes_per_step(self) -> int:
    return len(self.pop.data_seeds)

  def fresh_state(self):
    # Loaded anew each time: the step donates the state, backbone included.
    return self.pop.init(self._load_backbone())

  def search(self, data: TaskData) -> Dict[str, Any]:
    """Trains every member at once; evaluates all on minival and test."""
    params = {m.index: g.num_params for g in self.pop.groups
              for m in g.members}
    rows = [_row(m, params[m.index]) for m in self.members]
    batches = data.stacked(self.pop.data_seeds)
    t0 = time.perf_counter()
    state = self.fresh_state()
    for i, batch in enumerate(batches, 1):
      state, gm = self.step(state, batch)
      if i % CHECK_EVERY == 0 or i == len(batches):
        for row, met in zip(rows, pop_lib.per_member(self.pop, gm)):
          if met["alive"] and not row["diverged"]:
            row["final_loss"] = met["loss"]
          elif not row["diverged"]:
            # Frozen at its last finite state by the population; ranked
            # after the members that finished, like a stopped single run.
            row.update(diverged=True, died_at=i)
    jax.block_until_ready(state)
    train_s = time.perf_counter() - t0
    eval_s = {}
    for name in EVALS:
      t0 = time.perf_counter()
      tot = pop_lib.eval_members(self.pop, self.eval_step, state,
                                 data.evals[name])
      for row, t in zip(rows, tot):
        if not row["diverged"]:
          row[f"{name}/accuracy"] = t["correct"] / max(t["count"], 1.0)
      eval_s[name] = time.perf_counter() - t0
    return {"rows": rows, "train_s": train_s, "eval_s": eval_s["minival"],
            "test_eval_s": eval_s["test"],
            "backbone_passes_per_step": self.backbone_passes_per_step,
            "runs": 1}


# --- selection ----------------------------------------------------------------


def select(rows: Sequence[Dict[str, Any]], metric: str = SELECT
           ) -> List[Dict[str, Any]]:
  """The leaderboard of a search, best first: finished members by `metric`
  (ties to fewer params, then lower index), then the diverged ones."""
  return sorted(population_train.leaderboard(rows, metric),
                key=lambda r: r["diverged"])   # stable: ranks kept


def timed_steps(singles: Dict[str, Single], pops: Dict[str, Population],
                member, data: TaskData, reps: int
                ) -> Dict[str, Dict[str, Any]]:
  """One train step of every single method (at `member`'s lr, wd and data
  seed) and one step of every population ("<name> population"), timed side
  by side (`bench.common.interleaved`: rotated order, the same batches)."""
  batch = data.train[member.hparams["data_seed"]][0]
  fns = {name: harness.Stepper(
      lambda st, b, s=single, hp=single.hp(member): s.step(st, b, hp),
      single.fresh_state(0), batch) for name, single in singles.items()}
  for name, pop in pops.items():
    fns[f"{name} population"] = harness.Stepper(
        pop.step, pop.fresh_state(), data.stacked(pop.pop.data_seeds)[0])
  return common.interleaved(fns, reps=reps, warmup=1)
