# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Trains a population: `python -m losa_jax.train` with `config.population`.

    python -m losa_jax.train --workdir /tmp/pop \\
        --config configs/default.py:population=default

LoSA members share one backbone pass per batch (losa_jax.population.build);
other methods change the backbone, so their members train one after another
through the single-run trainer, each in <workdir>/<member>. Either way:

* `metrics.jsonl` gets one record per member and log step ({"member": "m03",
  "loss", "accuracy", "lr", ...}), TensorBoard one run per member
  (tensorboard/<member>), and the terminal a leaderboard line;
* a member whose loss turns NaN/Inf is frozen at its last finite state and
  reported once; the others go on (if all die, the run stops like a single
  run's NaN stop);
* optional successive halving (`population.rungs`): at each rung step every
  live member is evaluated on `rungs.eval`, the best `keep` fraction goes
  on (re-stacked and recompiled), the rest stop there;
* the whole population is checkpointed (Orbax, like the trainer: verified,
  atomic) and a killed run resumes to the same params;
* `results.json` holds every member's config values, final metrics and
  trainable params, and the leaderboard (best first).
"""
import json
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import build as build_lib
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.config import schema as config_lib
from losa_jax.config import input_check
from losa_jax import datasets
from losa_jax.parallel import distributed
from losa_jax.assembly import input_pipeline
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.evaluators import classification
from losa_jax.population import build as pop_lib
from losa_jax.population import members as members_lib


class PopulationDiedError(FloatingPointError):
  """Every member's loss turned NaN/Inf."""


def _rank_key(row: Dict[str, Any], metric: str):
  """Best first: live members before diverged ones, then higher metric, then
  fewer params, then member index."""
  value = row.get(metric)
  value = -math.inf if value is None or not np.isfinite(value) else value
  return (not row.get("alive", True), -value, row.get("trainable_params", 0),
          row["index"])


def leaderboard(rows: List[Dict[str, Any]], metric: str) -> List[Dict]:
  """Rows sorted best first by `metric` (ties go to fewer params)."""
  return sorted(rows, key=lambda r: _rank_key(r, metric))


def _board_line(step: int, total: int, rows, metric: Optional[str],
                k: int = 3) -> str:
  """The live leaderboard: by `metric` once evaluated, else by train loss."""
  alive = sum(1 for r in rows if r.get("alive", True))
  if metric is None:
    top = sorted(rows, key=lambda r: (not r.get("alive", True),
                                      r.get("train/loss", math.inf)))[:k]
    cells = " | ".join(f"{r['name']} {r.get('train/loss', math.nan):.4f}"
                       for r in top)
    what = "lowest train loss"
  else:
    top = leaderboard(rows, metric)[:k]
    cells = " | ".join(f"{r['name']} {r.get(metric, math.nan):.4f}"
                       for r in top)
    what = f"best {metric}"
  return (f"step {step:>6}/{total} | {alive}/{len(rows)} alive | {what}: "
          f"{cells}")


class _Writer:
  """metrics.jsonl (member-tagged) + one TensorBoard run per member."""

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self._tb = {}
    self._jsonl = None
    self.workdir = workdir
    if self.active:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")

  def write(self, step: int, member: str, metrics: Dict[str, float]):
    if not self.active:
      return
    rec = {"step": step, "member": member, "time": time.time(),
           **{k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(rec) + "\n")
    self._jsonl.flush()
    try:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
    except ImportError:
      return
    if member not in self._tb:
      self._tb[member] = tf.summary.create_file_writer(
          os.path.join(self.workdir, "tensorboard", member))
    with self._tb[member].as_default(step=step):
      for k, v in metrics.items():
        tf.summary.scalar(k, float(v))
    self._tb[member].flush()

  def close(self):
    if self._jsonl:
      self._jsonl.close()


def _member_row(m: members_lib.Member, num_params: int) -> Dict[str, Any]:
  return {"index": m.index, "name": m.name, "label": m.label,
          "hparams": m.hparams, "structure": dict(m.structure),
          "trainable_params": num_params, "alive": True}


def _stack_slots(its, mesh):
  """One numpy batch per data seed -> [S, B, ...] global arrays ("image"
  may be a dict of cached features)."""
  sh = sharding_lib.batch_sharding(mesh)
  slot_sh = jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec(None, *sh.spec))
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
  each group subselects its own; one build serves all members."""
  from losa_jax import feature_cache  # pylint: disable=g-import-not-at-top
  opts = feature_cache.options(config)
  g0 = pop.groups[0]
  losa = dict(g0.config.model.get("losa") or {})
  cache_model = g0.model.clone(losa={**losa, "tap_every": 1})
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
  totals = None
  for batch in input_pipeline.device_batches(batches, pop.mesh):
    sums = pop_lib.per_member(pop, pop.eval_step(state, batch))
    if totals is None:
      totals = sums
    else:
      totals = [{k: a[k] + b[k] for k in a} for a, b in zip(totals, sums)]
  out = []
  for t in totals:
    n = max(t["count"], 1.0)
    out.append({"accuracy": t["correct"] / n, "loss": t["loss_sum"] / n,
                "count": t["count"]})
  return out


def _sequential(config, workdir: str, members, single_run) -> Dict[str, Any]:
  """Non-LoSA methods: each member is a single run in <workdir>/<member>."""
  rows = []
  for m in members:
    out = single_run(m.config, os.path.join(workdir, m.name))
    res = out["results"]
    row = _member_row(m, res["trainable_params"])
    row.update({k: v for k, v in res.items() if isinstance(v, float)})
    rows.append(row)
  return _finish(config, workdir, rows, shared_backbone=False)


def _finish(config, workdir, rows, *, shared_backbone: bool) -> Dict:
  metric = _selection_metric(config)
  board = leaderboard(rows, metric)
  results = {"population": len(rows), "selection_metric": metric,
             "shared_backbone": shared_backbone, "members": rows,
             "leaderboard": [r["name"] for r in board],
             "best": board[0]["name"] if board else None}
  if jax.process_index() == 0:
    tmp = os.path.join(workdir, "results.json.tmp")
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2, default=str)
    os.replace(tmp, os.path.join(workdir, "results.json"))
    print("Leaderboard (" + metric + "):")
    for r in board[:10]:
      print(f"  {r['name']:>4} {r.get(metric, float('nan')):.4f}  "
            f"{r['trainable_params']:>9,} params  {r['label']}"
            f"{'' if r.get('alive', True) else '  (NaN: frozen)'}")
  return results


def _selection_metric(config) -> str:
  rungs = dict((config.population or {}).get("rungs") or {})
  name = rungs.get("eval") or next(iter(config.get("evals") or {}), None)
  return f"{name}/accuracy" if name else "train/loss"


def train_population(config, workdir: str, *,
                     single_run: Optional[Callable] = None) -> Dict[str, Any]:
  """Trains every member of `config.population` in `workdir`.

  Args:
    config: a trainer config with a `population` entry.
    workdir: checkpoints, metrics and results.json go here.
    single_run: `train.train_and_evaluate`, for methods whose members cannot
      share a backbone (they run one after another).

  Returns:
    {"results", "state", "population"}; results is also written to
    <workdir>/results.json.
  """
  config_lib.validate(config)
  members_lib.validate(config.population, config)
  config = config_lib.with_defaults(config)
  distributed.initialize(config.get("distributed"))
  os.makedirs(workdir, exist_ok=True)
  members = members_lib.expand(config)
  if config.model.get("method", "losa") != "losa":
    if single_run is None:
      raise ValueError("Members of a non-LoSA population train one after "
                       "another: pass single_run=train.train_and_evaluate "
                       "(python -m losa_jax.train does).")
    return {"results": _sequential(config, workdir, members, single_run)}
  cached = bool((config.get("feature_cache") or {}).get("enabled"))
  chief = distributed.is_chief()
  train_src, train_pp = datasets.training_source(config)
  num_examples = train_src.num_examples() or train_src.count()
  total = distributed.agree(config_lib.total_steps_of(config, num_examples),
                            "total_steps")
  rungs = dict(config.population.get("rungs") or {})
  rung_steps = [s for s in rungs.get("steps", []) if s < total]

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.keep_ckpts)
  expected_meta = {"backbone": build_lib.backbone_record(config),
                   "config": checkpointing.config_fingerprint(config)}
  writer = _Writer(workdir)
  state = None
  try:
    # Which members are still in the race (rung results are part of the
    # run) is read from the step restored, once it is verified.
    pop, start, restored, meta = _restore(config, ckpt, members,
                                          expected_meta, total=total,
                                          cached=cached)
    sharding_lib.check_batch_size(config.input.batch_size, pop.mesh)
    rows = _rows(config, pop, members, total=total, cached=cached)
    bb = _load_backbone(config, pop)
    state = pop.init(bb)
    if start is not None:
      treedef = jax.tree.structure(state["groups"])
      state = jax.device_put(
          {"params": state["params"], "step": restored["step"],
           "groups": jax.tree.unflatten(treedef, restored["groups"])},
          pop.state_sharding)
      for name, r in (meta.get("rows") or {}).items():
        rows[int(name)].update(r)
      if chief:
        print(f"Resumed the population from step {start} in "
              f"{ckpt.directory}", flush=True)
    start = int(start or 0)

    if cached:
      # The cached taps feed every member: a step runs no backbone at all.
      input_check.check_batch(next(iter(input_pipeline.evaluation(
          train_src, batch_size=config.input.batch_size, pp=train_pp))),
                             config)
      cache = _feature_cache(config, pop, bb, train_src, train_pp, workdir,
                             expected_meta["backbone"]["sha256"])
      its = [cache.batches(batch_size=config.input.batch_size, seed=seed,
                           shuffle=config.input.get("shuffle", True),
                           start_step=start) for seed in pop.data_seeds]
    else:
      its = [input_pipeline.training(
          train_src, batch_size=config.input.batch_size, pp=train_pp,
          seed=seed, shuffle=config.input.get("shuffle", True),
          start_step=start, process_index=jax.process_index(),
          process_count=jax.process_count())[0] for seed in pop.data_seeds]
      first = next(its[0])
      input_check.check_batch(first, config)
      its[0] = _chain_first(first, its[0])
    batches = _stack_slots(its, pop.mesh)
    if chief:
      print(f"Training a population of {pop.num_members} LoSA members in "
            f"{len(pop.groups)} group(s) on {len(pop.data_seeds)} backbone "
            f"pass(es) per step, {total} steps, from step {start}.",
            flush=True)

    def save(step, final=False):
      meta = {**expected_meta, "step": step, "data_step": step,
              "members": [m.index for m in pop.members],
              "hparams": checkpointing.config_hparams(config),
              "opt_layout": _opt_layout(state),
              "rows": {str(k): {kk: vv for kk, vv in v.items()
                                if kk in ("alive", "died_at", "rung_out",
                                          "curve") or "/" in kk}
                       for k, v in rows.items()}}
      # Kept once the next step shows a member alive (the last step's
      # alive flags already cover its params).
      ckpt.save(step, _savable(state), meta, force=final, checked=final)

    metric = _selection_metric(config)
    unchecked = []
    for step in range(start + 1, total + 1):
      state, gm = pop.train_step(state, next(batches))
      is_log = step % config.log_every == 0 or step == total
      is_ckpt = config.ckpt_every and step % config.ckpt_every == 0
      if (is_log or is_ckpt or step == total or step in rung_steps or
          unchecked):
        per = pop_lib.per_member(pop, gm)
        for m, met in zip(pop.members, per):
          row = rows[m.index]
          if row["alive"] and not met["alive"]:
            row["alive"], row["died_at"] = False, step
            # Its loss may still be finite: a NaN/Inf update kills it too.
            logging.warning("Member %s (%s): loss (%s) or update turned "
                            "NaN/Inf by step %d; it is frozen at its last "
                            "finite state.", m.name, m.label, met["loss"],
                            step)
            if chief:
              print(f"  {m.name} ({m.label}) diverged (loss {met['loss']}, "
                    f"or a NaN/Inf update) by step {step}: frozen, the "
                    "others go on.", flush=True)
          if met["alive"]:
            row["train/loss"] = met["loss"]
            row["train/accuracy"] = met["accuracy"]
          if is_log:
            writer.write(step, m.name, met)
        if not any(rows[m.index]["alive"] for m in pop.members):
          dropped = ""
          if unchecked:
            # Resuming from it would only repeat the deaths.
            ckpt.discard(unchecked.pop())
            dropped = (f" Checkpoint step {step - 1}, from which every "
                       "member died, was deleted.")
          raise PopulationDiedError(
              f"Every member's loss is NaN/Inf by step {step}; stopping."
              f"{dropped} Lower the learning rates in config.population.")
        if unchecked:
          ckpt.confirm(unchecked.pop())
        if is_log and chief:
          live_rows = [rows[m.index] for m in pop.members]
          shown = metric if any(metric in r for r in live_rows) else None
          print(_board_line(step, total, live_rows, shown), flush=True)
      if config.eval_every and step % config.eval_every == 0 and \
          step != total:
        _evaluate_all(config, pop, state, rows, writer, step)
      if step in rung_steps:
        pop, state = _rung(config, pop, state, rows, rungs, writer, step,
                           total, cached)
      if is_ckpt and step != total:
        save(step)
        unchecked.append(step)
    if start < total:
      save(total, final=True)
  finally:
    ckpt.close()
    writer.close()
  _evaluate_all(config, pop, state, rows, writer=None, step=total)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      for m in pop.members:
        f.write(json.dumps({"step": total, "member": m.name,
                            **{k: v for k, v in rows[m.index].items()
                               if "/" in k}}) + "\n")
  results = _finish(config, workdir, list(rows.values()), shared_backbone=True)
  distributed.sync("losa_population_done")
  return {"results": results, "state": state, "population": pop}


def _chain_first(first, it):
  yield first
  yield from it


def _restore(config, ckpt, members, expected_meta, *, total: int,
             cached: bool):
  """(pop, step, restored, meta) of the newest usable checkpoint step, the
  population built for the members that step holds; (pop of every member,
  None, None, None) without one. Damaged steps fall back as a single run's
  do (`Checkpointer.restore_newest`)."""
  built = {}

  def target(meta):
    alive = set(meta.get("members", [m.index for m in members]))
    pop = pop_lib.build(config, total_steps=total, cached=cached,
                        members=[m for m in members if m.index in alive])
    checkpointing.check_opt_layout(
        meta, _opt_layout(pop.state_shape),
        checkpointing.config_hparams(config), ckpt.directory)
    built["pop"] = pop
    return _savable(jax.tree.map(
        lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
        pop.state_shape, pop.state_sharding))

  step, restored, meta = ckpt.restore_newest(
      target, agree=distributed.agree,
      check=lambda meta: checkpointing.check_meta(meta, expected_meta,
                                                  ckpt.directory))
  if step is None:
    built["pop"] = pop_lib.build(config, total_steps=total, members=members,
                                 cached=cached)
  return built["pop"], step, restored, meta


def _rows(config, pop, members, *, total: int, cached: bool):
  """{member index: row} of every member, also those a rung stopped (not in
  `pop`): results.json reports them all."""
  counts = {m.index: g.num_params for g in pop.groups for m in g.members}
  if len(counts) < len(members):
    full = pop_lib.build(config, total_steps=total, members=members,
                         cached=cached)
    counts = {m.index: g.num_params for g in full.groups for m in g.members}
  return {m.index: _member_row(m, counts[m.index]) for m in members}


def _opt_layout(state):
  """`checkpointing.opt_layout` of every group's stacked optimizer state."""
  return checkpointing.opt_layout([g["opt"] for g in state["groups"]])


def _savable(state):
  """The population state without the frozen backbone (never copied); the
  member states as a flat list of arrays (their tree is rebuilt from the
  config on resume)."""
  return {"groups": jax.tree.leaves(state["groups"]), "step": state["step"]}


def _load_backbone(config, pop: pop_lib.PopulationBuilt):
  """The frozen backbone, loaded from config.model_init like the trainer's."""
  model = pop.groups[0].model
  # The trainer's split of key(seed): without a model_init, members whose
  # seed is config.seed get the random backbone their single run gets.
  init_rng, _ = jax.random.split(jax.random.key(config.seed))
  params = jax.jit(lambda r: model.init(
      r, jnp.zeros((1, *pop.image_shape), jnp.float32))["params"])(init_rng)
  params = build_lib.load_backbone(params, config)
  dtype = build_lib.frozen_param_dtype(config)
  bb = params["backbone"]
  if dtype is not None:
    bb = jax.tree.map(lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(
        jnp.asarray(x).dtype, jnp.floating) else x, bb)
  return jax.device_put(bb, pop.state_sharding["params"]["backbone"])


def _evaluate_all(config, pop, state, rows, writer, step: int):
  for name, ev in (config.get("evals") or {}).items():
    ev = dict(ev)
    if ev.get("type", "classification") != "classification":
      continue
    res = evaluate_members(pop, state, ev["data"],
                           pp=ev.get("pp", config.input.pp),
                           batch_size=ev.get("batch_size",
                                             config.input.batch_size))
    for m, r in zip(pop.members, res):
      for k, v in r.items():
        rows[m.index][f"{name}/{k}"] = v
      rows[m.index].setdefault("curve", {}).setdefault(name, []).append(
          [step, r["accuracy"]])
      if writer is not None:
        writer.write(step, m.name, {f"{name}/{k}": v for k, v in r.items()})


def _rung(config, pop, state, rows, rungs, writer, step, total, cached):
  """Successive halving: keep the best fraction of the live members."""
  name = rungs["eval"]
  ev = dict(config.evals[name])
  res = evaluate_members(pop, state, ev["data"],
                         pp=ev.get("pp", config.input.pp),
                         batch_size=ev.get("batch_size",
                                           config.input.batch_size))
  live = []
  for m, r in zip(pop.members, res):
    rows[m.index][f"{name}/accuracy"] = r["accuracy"]
    rows[m.index].setdefault("curve", {}).setdefault(name, []).append(
        [step, r["accuracy"]])
    if writer is not None:
      writer.write(step, m.name, {f"rung/{name}/accuracy": r["accuracy"]})
    if rows[m.index]["alive"]:
      live.append(rows[m.index])
  keep = max(1, int(math.ceil(len(live) * rungs.get("keep", 0.5))))
  survivors = {r["index"] for r in leaderboard(live, f"{name}/accuracy")
               [:keep]}
  for m in pop.members:
    if m.index not in survivors:
      rows[m.index]["rung_out"] = step
  if jax.process_index() == 0:
    print(f"  rung at step {step}: keeping {len(survivors)} of "
          f"{len(pop.members)} members by {name}/accuracy", flush=True)
  new = pop_lib.build(config, total_steps=total,
                      members=[m for m in pop.members
                               if m.index in survivors], cached=cached)
  return new, pop_lib.restack(pop, state, new)
