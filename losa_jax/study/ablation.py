# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""LoSA's structural switches, ablated in ONE population run per task.

The reference design (model.LOSA_DEFAULTS) and each switch changed alone
(docs/method.md, "Switches"), at every seed (init and data order) and, with
an lr grid (`lrs`), at every lr, each structure keeping its best by minival
accuracy (a switch that only acts like a larger lr then stops looking
better): the members of one population (one backbone pass per batch and
data order). An effect is, per task and seed, the changed structure's
accuracy minus the reference's (same batches; each at its selected lr).
docs/study.md ("LoSA's switches") gives the protocol and the results.
"""
import ast
import itertools
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from losa_jax.models import model as model_lib
from losa_jax.population import members as members_lib
from losa_jax.study import search

# switch -> alternatives to the default (the default is LOSA_DEFAULTS').
SWITCHES = {
    "token_mixer": ("none",),             # channel mixing only
    "mixer_order": ("token_channel",),
    "tap_every": (2,),                    # every 2nd block of 6
    "combine": ("gated",),
    "norms": ("post",),
}
QUICK_SWITCHES = {"token_mixer": ("none",)}
# The screen (docs/method.md): an alternative is a *candidate* to replace a
# default only if it is better on minival in EVERY (task, seed), by at least
# this much on average, and not worse on test on average. Passing it is
# necessary, not sufficient: the decision also weighs the scale of the
# evidence and what a changed default breaks (docs/method.md).
MIN_GAIN = 0.01


def parse_switches(items: Sequence[str]) -> Dict[str, Tuple[Any, ...]]:
  """["norms=post", "tap_every=2"] -> {"norms": ("post",), "tap_every":
  (2,)}; raises ValueError naming a bad item."""
  out: Dict[str, Tuple[Any, ...]] = {}
  for item in items:
    name, sep, value = item.partition("=")
    if not sep or name not in model_lib.LOSA_DEFAULTS:
      raise ValueError(f"{item!r}: expected switch=value with a switch of "
                       f"{sorted(model_lib.LOSA_DEFAULTS)}.")
    try:
      value = ast.literal_eval(value)     # ints (tap_every), bools
    except (ValueError, SyntaxError):
      pass                                # strings (norms=post)
    if value == model_lib.LOSA_DEFAULTS[name]:
      raise ValueError(f"{item!r} is the default; name an alternative.")
    out[name] = out.get(name, ()) + (value,)
  return out


def ablation_config(config, switches: Dict[str, Sequence[Any]],
                    seeds: Sequence[int], lrs: Sequence[float] = ()):
  """`config` (LoSA) with the switch grid as its population: every switch
  at its default and its alternatives, every seed paired with the same data
  seed (the members are chosen by `one_at_a_time`), every lr of `lrs` (none:
  the config's lr)."""
  c = config.copy_and_resolve_references()
  grid = {k: [model_lib.LOSA_DEFAULTS[k], *alts] for k, alts in
          switches.items()}
  c.population = dict(losa=grid, seeds=[int(s) for s in seeds],
                      data_seeds=[int(s) for s in seeds])
  if lrs:
    c.population.grid = dict(lr=[float(x) for x in lrs])
  return c


def changed(member: members_lib.Member, switches) -> Tuple[str, Any]:
  """("reference", None) or the one (switch, value) that differs; None if
  more than one differs."""
  losa = dict(member.config.model.get("losa") or {})
  diff = [(k, losa[k]) for k in switches
          if losa.get(k, model_lib.LOSA_DEFAULTS[k]) !=
          model_lib.LOSA_DEFAULTS[k]]
  if not diff:
    return ("reference", None)
  return diff[0] if len(diff) == 1 else None


def one_at_a_time(config, switches) -> List[members_lib.Member]:
  """The members of `config.population` that change at most one switch,
  with their init seed equal to their data seed."""
  return [m for m in members_lib.expand(config)
          if m.hparams["seed"] == m.hparams["data_seed"] and
          changed(m, switches) is not None]


def run_task(config, switches, seeds: Sequence[int], steps: int,
             data: search.TaskData, lrs: Sequence[float] = ()
             ) -> Dict[str, Any]:
  """One population run of the ablation on `config`'s task; each structure
  and seed keeps its best lr (`selected` rows)."""
  c = ablation_config(config, switches, seeds, lrs)
  members = one_at_a_time(c, switches)
  pop = search.Population(c, steps, members=members)
  res = pop.search(data)
  for m, row in zip(pop.members, res["rows"]):
    row["switch"], row["value"] = changed(m, switches)
  by: Dict[Tuple, List[Dict]] = {}
  for row in res["rows"]:
    by.setdefault((row["switch"], row["value"], row["seed"]), []).append(row)
  for rows in by.values():
    best = search.select(rows)[0]
    for row in rows:
      row["selected"] = row is best
  res.update(compile_s=pop.compile_s, cost=pop.cost,
             members=len(pop.members), groups=len(pop.pop.groups),
             backbone_passes_per_step=pop.backbone_passes_per_step)
  return res


def effects(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Per (switch, value): accuracy minus the reference's, over (task, seed).

  rows: ablation member rows with "task", "seed", "switch", "value",
  "minival/accuracy", "test/accuracy" (a diverged member counts as 0) and
  "selected" (only those count).
  """
  rows = [r for r in rows if r.get("selected", True)]
  ref = {(r["task"], r["seed"]): r for r in rows if r["switch"] == "reference"}
  keys = dict.fromkeys((r["switch"], r["value"]) for r in rows
                       if r["switch"] != "reference")
  out = []
  for switch, value in keys:
    mine = [r for r in rows if (r["switch"], r["value"]) == (switch, value)]
    row = {"switch": switch, "value": value,
           "default": model_lib.LOSA_DEFAULTS[switch], "pairs": len(mine)}
    for split in ("minival", "test"):
      key = f"{split}/accuracy"
      v = np.asarray([r.get(key, 0.0) - ref[(r["task"], r["seed"])].get(
          key, 0.0) for r in mine])
      row.update({f"{split}_mean": float(v.mean()),
                  f"{split}_min": float(v.min()),
                  f"{split}_max": float(v.max()),
                  f"{split}_wins": int((v > 0).sum())})
    row["candidate"] = bool(row["minival_wins"] == row["pairs"] and
                        row["minival_mean"] >= MIN_GAIN and
                        row["test_mean"] >= 0)
    out.append(row)
  return out


def per_task(rows: Sequence[Dict[str, Any]], tasks: Sequence[str]
             ) -> List[Dict[str, Any]]:
  """Accuracy (mean over seeds, at the selected lr) of each structure on
  each task, and the selected lrs."""
  rows = [r for r in rows if r.get("selected", True)]
  out = []
  for switch, value in dict.fromkeys((r["switch"], r["value"]) for r in rows):
    row = {"structure": "reference" if switch == "reference"
           else f"{switch}={value}"}
    for t, split in itertools.product(tasks, ("minival", "test")):
      v = [r.get(f"{split}/accuracy", 0.0) for r in rows
           if r["task"] == t and (r["switch"], r["value"]) == (switch, value)]
      row[f"{t}/{split}"] = float(np.mean(v)) if v else float("nan")
    row["lrs"] = " ".join(f"{r['lr']:g}" for r in rows
                          if (r["switch"], r["value"]) == (switch, value))
    out.append(row)
  return out
