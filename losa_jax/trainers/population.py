# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Trains a population: `python -m losa_jax.train` with `config.population`.

    python -m losa_jax.train --workdir /tmp/pop \\
        --config configs/default.py:population=default

Side-network members (LoSA, LST, LAST, mixed) share one backbone pass per
batch (losa_jax.population.build) in the single run's loop; other methods
change the backbone, so their members train one after another through the
single-run trainer, each in <workdir>/<member>. docs/population.md
describes what it writes, NaN members, successive halving
(`population.rungs`) and resume.
"""
import math
import os
from typing import Any, Dict, List, Optional

from absl import logging
import jax
import numpy as np

from losa_jax.assembly import input_pipeline
from losa_jax.checkpointing import resume
from losa_jax.config import schema as config_lib
from losa_jax.evaluators import classification
from losa_jax.models import model as model_lib
from losa_jax.parallel import distributed
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.population import build as pop_lib
from losa_jax.population import members as members_lib
from losa_jax.trainers import common
from losa_jax.trainers import single


class PopulationDiedError(FloatingPointError):
  """Every member's loss turned NaN/Inf."""


def leaderboard(rows: List[Dict[str, Any]], metric: str) -> List[Dict]:
  """Rows sorted best first: live members before diverged ones, then higher
  `metric`, then fewer params, then member index."""
  def key(row):
    value = row.get(metric)
    value = -math.inf if value is None or not np.isfinite(value) else value
    return (not row.get("alive", True), -value,
            row.get("trainable_params", 0), row["index"])
  return sorted(rows, key=key)


def _board_line(step: int, total: int, rows, metric: Optional[str],
                k: int = 3) -> str:
  """The live leaderboard: by `metric` once evaluated, else by train loss."""
  alive = sum(1 for r in rows if r.get("alive", True))
  if metric is None:
    key, what = "train/loss", "lowest train loss"
    top = sorted(rows, key=lambda r: (not r.get("alive", True),
                                      r.get(key, math.inf)))[:k]
  else:
    key, what = metric, f"best {metric}"
    top = leaderboard(rows, metric)[:k]
  cells = " | ".join(f"{r['name']} {r.get(key, math.nan):.4f}" for r in top)
  return (f"step {step:>6}/{total} | {alive}/{len(rows)} alive | {what}: "
          f"{cells}")


def _member_row(m: members_lib.Member, num_params: int) -> Dict[str, Any]:
  return {"index": m.index, "name": m.name, "label": m.label,
          "hparams": m.hparams, "structure": dict(m.structure),
          "trainable_params": num_params, "alive": True}


def _stack_slots(its, mesh):
  """One numpy batch per data seed -> [S, B, ...] global arrays ("image"
  may be a dict of cached features)."""
  slot_sh = pop_lib.slot_sharding(mesh)
  while True:
    parts = [next(it) for it in its]
    batch = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                         *[{"image": p["image"], "label": p["label"]}
                           for p in parts])
    batch["label"] = batch["label"].astype(np.int32)
    yield jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(slot_sh, x), batch)


def _feature_cache(config, pop, backbone, source, pp, workdir, backbone_id):
  """The population's feature cache: taps of every block (tap_every=1), so
  each group subselects its own; one build serves all members (of every
  side method: the cache model is the LoSA model of the first group's
  tap kind and dtype, whose taps those of LST and LAST are)."""
  from losa_jax import feature_cache  # pylint: disable=g-import-not-at-top
  opts = feature_cache.options(config)
  g0 = pop.groups[0]
  losa = dict(g0.config.model.get("losa") or {})
  cache_model = g0.model.clone(method="losa", losa={
      **losa, "tap": g0.tap[0], "tap_every": 1, "dtype": g0.tap[2]})
  return feature_cache.FeatureCache.get_or_create(
      model=cache_model, params={"backbone": backbone}, source=source, pp=pp,
      root=opts["dir"] or os.path.join(workdir, "feature_cache"),
      dtype=opts["dtype"], storage=opts["storage"],
      memory_budget_mb=opts["memory_budget_mb"],
      batch_size=opts["batch_size"] or config.input.batch_size,
      backbone_id=backbone_id)


def evaluate_members(pop: pop_lib.PopulationBuilt, state, data, *, pp,
                     batch_size: int) -> List[Dict[str, float]]:
  """Top-1 and loss of every member on one split (one backbone pass per
  batch); in the order of `pop.members`."""
  batches = classification.eval_batches(dict(data), pp=pp,
                                        batch_size=batch_size)
  totals = pop_lib.eval_members(pop, pop.eval_step, state,
                                input_pipeline.device_batches(batches,
                                                              pop.mesh))
  return [{"accuracy": t["correct"] / max(t["count"], 1.0),
           "loss": t["loss_sum"] / max(t["count"], 1.0), "count": t["count"]}
          for t in totals]


def _finish(config, workdir, rows, *, shared_backbone: bool) -> Dict:
  metric = _selection_metric(config)
  board = leaderboard(rows, metric)
  results = {"population": len(rows), "selection_metric": metric,
             "shared_backbone": shared_backbone, "members": rows,
             "leaderboard": [r["name"] for r in board],
             "best": board[0]["name"] if board else None}
  common.write_results(workdir, results)
  common.say("\n".join(
      [f"Leaderboard ({metric}):"] +
      [f"  {r['name']:>4} {r.get(metric, float('nan')):.4f}  "
       f"{r['trainable_params']:>9,} params  {r['label']}"
       f"{'' if r.get('alive', True) else '  (NaN: frozen)'}"
       for r in board[:10]]))
  return results


def _selection_metric(config) -> str:
  rungs = dict((config.population or {}).get("rungs") or {})
  name = rungs.get("eval") or next(iter(config.get("evals") or {}), None)
  return f"{name}/accuracy" if name else "train/loss"


def train(config, workdir: str) -> Dict[str, Any]:
  """Trains every member of `config.population` in `workdir`.

  Returns:
    {"results", "state", "population"} ({"results"} alone for members that
    train one after another); results is also written to
    <workdir>/results.json.
  """
  config_lib.validate(config)
  members_lib.validate(config.population, config)
  config = config_lib.with_defaults(config)
  members = members_lib.expand(config)
  if {m.config.model.method for m in members} <= set(
      model_lib.SIDE_METHODS):
    return PopulationTrainer(config, workdir, members).train()
  # Other methods change the backbone: each member is a single run in
  # <workdir>/<member>.
  rows = []
  for m in members:
    res = single.train(m.config, os.path.join(workdir, m.name))["results"]
    rows.append({**_member_row(m, res["trainable_params"]),
                 **{k: v for k, v in res.items() if isinstance(v, float)}})
  return {"results": _finish(config, workdir, rows, shared_backbone=False)}


class PopulationTrainer(common.Trainer):
  """`pop_lib.build`'s state and step: a member whose loss turns NaN/Inf is
  frozen and reported; the run stops only when every member is dead."""

  def __init__(self, config, workdir: str, members):
    super().__init__(config, workdir)
    self.members = members
    self.cached = bool((config.get("feature_cache") or {}).get("enabled"))
    self.rungs = dict(config.population.get("rungs") or {})
    self.sync_steps = {s for s in self.rungs.get("steps", [])
                       if s < self.total}
    self.metric = _selection_metric(config)
    self._evals = {}      # (eval name, step) -> `_evaluate`'s results

  def _build(self, members) -> pop_lib.PopulationBuilt:
    return pop_lib.build(self.config, total_steps=self.total,
                         members=members, cached=self.cached)

  def _target(self, meta):
    """The restore target of a step: the population of the members that
    step holds (rung results are part of the run), built once its
    metadata is verified; its optimizer layout must fit the step's."""
    alive = set(meta.get("members", [m.index for m in self.members]))
    self.pop = self._build([m for m in self.members if m.index in alive])
    resume.check_opt_layout(
        meta, _opt_layout(self.pop.state_shape),
        resume.config_hparams(self.config), self.ckpt.directory)
    return _savable(jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        self.pop.state_shape, self.pop.state_sharding))

  def restore(self) -> int:
    # Damaged steps fall back as a single run's do.
    start, restored, meta = self.ckpt.restore_newest(
        self._target, agree=distributed.agree,
        check=lambda meta: resume.check_meta(
            meta, self.expected_meta, self.ckpt.directory))
    if start is None:
      self.pop = self._build(self.members)
    pop = self.pop
    sharding_lib.check_batch_size(self.config.input.batch_size, pop.mesh)
    # Every member has a row, also those a rung stopped (not in `pop`):
    # results.json reports them all.
    counts = {m.index: g.num_params for g in pop.groups for m in g.members}
    if len(counts) < len(self.members):
      counts = {m.index: g.num_params for g in
                self._build(self.members).groups for m in g.members}
    self.rows = {m.index: _member_row(m, counts[m.index])
                 for m in self.members}
    self.backbone = pop_lib.backbone_loader(self.config, pop)()
    if start is None:
      self.state = pop.init(self.backbone)
    else:
      treedef = jax.tree.structure(pop.state_shape["groups"])
      self.state = jax.device_put(
          {"params": {"backbone": self.backbone}, "step": restored["step"],
           "groups": jax.tree.unflatten(treedef, restored["groups"])},
          pop.state_sharding)
      for name, r in (meta.get("rows") or {}).items():
        self.rows[int(name)].update(r)
      common.say(f"Resumed the population from step {start} in "
                 f"{self.ckpt.directory}")
    return int(start or 0)

  def batches(self, start: int):
    pop, bs = self.pop, self.config.input.batch_size
    if self.cached:
      # The cached taps feed every member: a step runs no backbone at all.
      self.check_cached_pp()
      cache = _feature_cache(self.config, pop, self.backbone, self.train_src,
                             self.train_pp, self.workdir,
                             self.expected_meta["backbone"]["sha256"])
      its = [cache.batches(batch_size=bs, seed=seed, start_step=start,
                           shuffle=self.config.input.get("shuffle", True))
             for seed in pop.data_seeds]
    else:
      its = self.host_batches(pop.data_seeds, start)
    methods = sorted({g.model.method for g in pop.groups})
    common.say(f"Training a population of {pop.num_members} "
               f"{'/'.join(methods)} members in "
               f"{len(pop.groups)} group(s) on {len(pop.data_seeds)} backbone "
               f"pass(es) per step, {self.total} steps, from step {start}.")
    return _stack_slots(its, pop.mesh)

  def step(self, batch):
    self.state, metrics = self.pop.train_step(self.state, batch)
    return metrics

  def check(self, step, metrics, unchecked):
    per = pop_lib.per_member(self.pop, metrics)
    for m, met in zip(self.pop.members, per):
      row = self.rows[m.index]
      if row["alive"] and not met["alive"]:
        row["alive"], row["died_at"] = False, step
        # Its loss may still be finite: a NaN/Inf update kills it too.
        logging.warning("Member %s (%s): loss (%s) or update turned NaN/Inf "
                        "by step %d; it is frozen at its last finite state.",
                        m.name, m.label, met["loss"], step)
        common.say(f"  {m.name} ({m.label}) diverged (loss {met['loss']}, "
                   f"or a NaN/Inf update) by step {step}: frozen, the "
                   "others go on.")
      if met["alive"]:
        row["train/loss"] = met["loss"]
        row["train/accuracy"] = met["accuracy"]
    if not any(self.rows[m.index]["alive"] for m in self.pop.members):
      dropped = ""
      if unchecked:
        # Resuming from it would only repeat the deaths.
        self.ckpt.discard(unchecked.pop())
        dropped = (f" Checkpoint step {step - 1}, from which every "
                   "member died, was deleted.")
      raise PopulationDiedError(
          f"Every member's loss is NaN/Inf by step {step}; stopping."
          f"{dropped} Lower the learning rates in config.population.")
    return per

  def log(self, step, per):
    for m, met in zip(self.pop.members, per):
      self.writer.write(step, met, member=m.name)
    live_rows = [self.rows[m.index] for m in self.pop.members]
    shown = self.metric if any(self.metric in r for r in live_rows) else None
    common.say(_board_line(step, self.total, live_rows, shown))

  def _evaluate(self, name: str, step: int) -> List[Dict[str, float]]:
    """Every member's {accuracy, loss, count} on eval `name` (in the order
    of `pop.members`), its accuracy appended to the member's curve; run
    once per step (a rung at an eval step reuses the eval's)."""
    if (name, step) not in self._evals:
      ev, c = dict(self.config.evals[name]), self.config
      self._evals[name, step] = res = evaluate_members(
          self.pop, self.state, ev["data"], pp=ev.get("pp", c.input.pp),
          batch_size=ev.get("batch_size", c.input.batch_size))
      for m, r in zip(self.pop.members, res):
        self.rows[m.index].setdefault("curve", {}).setdefault(
            name, []).append([step, r["accuracy"]])
    return self._evals[name, step]

  def evaluate(self, step, *, log: bool = True):
    for name, ev in (self.config.get("evals") or {}).items():
      if dict(ev).get("type", "classification") != "classification":
        continue
      for m, r in zip(self.pop.members, self._evaluate(name, step)):
        self.rows[m.index].update({f"{name}/{k}": v for k, v in r.items()})
        if log:
          self.writer.write(step, {f"{name}/{k}": v for k, v in r.items()},
                            member=m.name)

  def after_step(self, step):
    """Successive halving at a rung step: the best fraction of the live
    members goes on (re-stacked and recompiled), the others stop here."""
    if step not in self.sync_steps:
      return
    name, pop, rows = self.rungs["eval"], self.pop, self.rows
    live = []
    for m, r in zip(pop.members, self._evaluate(name, step)):
      rows[m.index][f"{name}/accuracy"] = r["accuracy"]
      self.writer.write(step, {f"rung/{name}/accuracy": r["accuracy"]},
                        member=m.name)
      if rows[m.index]["alive"]:
        live.append(rows[m.index])
    keep = max(1, int(math.ceil(len(live) * self.rungs.get("keep", 0.5))))
    survivors = {r["index"] for r in
                 leaderboard(live, f"{name}/accuracy")[:keep]}
    for m in pop.members:
      if m.index not in survivors:
        rows[m.index]["rung_out"] = step
    common.say(f"  rung at step {step}: keeping {len(survivors)} of "
               f"{len(pop.members)} members by {name}/accuracy")
    self.pop = self._build([m for m in pop.members if m.index in survivors])
    self.state = pop_lib.restack(pop, self.state, self.pop)

  def save(self, step, *, final=False):
    meta = {**self.expected_meta, "step": step, "data_step": step,
            "members": [m.index for m in self.pop.members],
            "hparams": resume.config_hparams(self.config),
            "opt_layout": _opt_layout(self.state),
            "rows": {str(k): {kk: vv for kk, vv in v.items()
                              if kk in ("alive", "died_at", "rung_out",
                                        "curve") or "/" in kk}
                     for k, v in self.rows.items()}}
    # Kept once the next step shows a member alive (the last step's alive
    # flags already cover its params).
    self.ckpt.save(step, _savable(self.state), meta, force=final,
                   checked=final)

  def finish(self) -> Dict[str, Any]:
    pop, rows = self.pop, self.rows
    self.evaluate(self.total, log=False)
    for m in pop.members:
      self.writer.append({"step": self.total, "member": m.name,
                          **{k: v for k, v in rows[m.index].items()
                             if "/" in k}})
    results = _finish(self.config, self.workdir, list(rows.values()),
                      shared_backbone=True)
    return {"results": results, "state": self.state, "population": pop}


def _opt_layout(state):
  """`resume.opt_layout` of every group's stacked optimizer state."""
  return resume.opt_layout([g["opt"] for g in state["groups"]])


def _savable(state):
  """The population state without the frozen backbone (never copied); the
  member states as a flat list of arrays (their tree is rebuilt from the
  config on resume)."""
  return {"groups": jax.tree.leaves(state["groups"]), "step": state["step"]}

