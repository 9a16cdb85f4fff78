# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""`config.population` -> the member configs of a population.

Every member is a complete single-run config: the population trainer gives
each member the params a single run of that config gives (same seeds).
docs/population.md ("Running one") lists the keys: per-member values
(`HPARAMS`), init and data seeds (members that share a data seed share a
backbone pass), and the structure, the side method and its options (one
grid per method), whose members form one vmapped group.
"""
import dataclasses
import itertools
import math
from typing import Any, Dict, List, Sequence, Tuple

import ml_collections
import numpy as np

from losa_jax.config import schema as config_lib
from losa_jax.models import model as model_lib

# Per-member values: arrays inside one compiled step.
HPARAMS = config_lib.MEMBER_KEYS
POPULATION_KEYS = ("grid", "seeds", "data_seeds", "method", "losa",
                   *model_lib.SIDE_MODULES, "random", "rungs", "name", "loop")
# How a group's members run in the step: "vmap" (in parallel, fastest) or
# "map" (one after another: the peak memory of one member's backward).
LOOPS = ("vmap", "map")
RANDOM_KINDS = ("choice", "uniform", "loguniform")
RUNG_KEYS = ("steps", "keep", "eval")


@dataclasses.dataclass(frozen=True)
class Member:
  """One configuration of the population.

  index: position in the population (stable; names and checkpoints use it).
  name: e.g. "m03"; label: the values that differ, e.g. "lr=0.003,rank=8".
  config: the complete single-run config of this member.
  hparams: its HPARAMS values (grad_clip_norm None = off).
  structure: (("method", its side method), *its options sorted) (its
    group's key).
  """
  index: int
  name: str
  label: str
  config: ml_collections.ConfigDict
  hparams: Dict[str, Any]
  structure: Tuple[Tuple[str, Any], ...]


def _values(where: str, v) -> list:
  if isinstance(v, (list, tuple)) and len(v) > 0:
    return list(v)
  raise ValueError(f"{where}={v!r}: expected a non-empty list of values.")


def _sample(where: str, spec, rng: np.random.Generator):
  if not isinstance(spec, (list, tuple)) or not spec or \
      spec[0] not in RANDOM_KINDS:
    raise ValueError(f"{where}={spec!r}: expected ('choice', [values]), "
                     "('uniform', lo, hi) or ('loguniform', lo, hi).")
  kind = spec[0]
  if kind == "choice":
    values = _values(where, spec[1] if len(spec) == 2 else None)
    return values[int(rng.integers(len(values)))]
  if len(spec) != 3 or not all(isinstance(b, (int, float)) for b in spec[1:]):
    raise ValueError(f"{where}={spec!r}: ('{kind}', lo, hi) needs two "
                     "numbers.")
  lo, hi = float(spec[1]), float(spec[2])
  if kind == "loguniform":
    if lo <= 0 or hi <= 0:
      raise ValueError(f"{where}: loguniform bounds must be positive.")
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
  return float(rng.uniform(lo, hi))


def _switches(method: str) -> dict:
  """The options a population may vary for side method `method`."""
  return (model_lib.LOSA_DEFAULTS if method == "losa" else
          model_lib.SIDE_MODULES[method].DEFAULTS)


def methods_of(config) -> List[str]:
  """The population's side methods: `population.method`, else the config's
  model.method (any method: non-side ones train one after another)."""
  pop = config_lib.as_dict(config.get("population"))
  base = config_lib.as_dict(config.get("model")).get("method", "losa")
  if pop.get("method") is None:
    return [base]
  methods = _values("config.population.method", pop["method"])
  if len(set(methods)) != len(methods) or not set(methods) <= set(
      model_lib.SIDE_METHODS):
    raise ValueError(f"config.population.method={methods!r}: distinct side "
                     f"methods {list(model_lib.SIDE_METHODS)}; other methods "
                     "change the backbone, so they cannot share its pass.")
  if pop.get("random"):
    raise ValueError("config.population.method: a mix of methods is a grid; "
                     "population.random samples one method's members (set "
                     "config.model.method).")
  return methods


def _check_structure(pop, config) -> None:
  """Each method grid (losa=, lst=, last=) names its method's options and
  belongs to a method of the population."""
  methods = methods_of(config)
  for method in ("losa", *model_lib.SIDE_MODULES):
    grid = config_lib.as_dict(pop.get(method))
    if grid and method not in methods:
      raise ValueError(f"config.population.{method}: no member has "
                       f"model.method={method!r} (the population's methods "
                       f"are {methods}; set population.method).")
    for k in grid:
      if k not in _switches(method):
        raise ValueError(f"config.population.{method}.{k}: not an option of "
                         f"{method}; valid: {sorted(_switches(method))}.")


def _structure_rows(pop, config) -> List[Dict[str, Any]]:
  """Every structure of the grids: {"method": m, option: value, ...}, the
  options of LoSA by name, the others' as "<method>.<option>"."""
  rows = []
  for method in methods_of(config):
    prefix = "" if method == "losa" else method + "."
    grid = {prefix + k: _values(f"config.population.{method}.{k}", v)
            for k, v in sorted(config_lib.as_dict(pop.get(method)).items())}
    for vals in itertools.product(*grid.values()):
      rows.append({"method": method, **dict(zip(grid, vals))})
  return rows


def _fmt(v) -> str:
  return f"{v:g}" if isinstance(v, float) else str(v)


def validate(population, config=None):
  """Checks the form of config.population; raises ValueError naming keys."""
  pop = config_lib.as_dict(population)
  bad = sorted(set(pop) - set(POPULATION_KEYS))
  if bad:
    raise ValueError(f"Unknown config.population key(s) {bad}; valid: "
                     f"{list(POPULATION_KEYS)}.")
  for k in config_lib.as_dict(pop.get("grid")):
    if k not in HPARAMS or k in ("seed", "data_seed"):
      raise ValueError(
          f"config.population.grid.{k}: not a per-member hyper-parameter; "
          f"use one of {[h for h in HPARAMS if 'seed' not in h]} (seeds go "
          "in population.seeds / data_seeds, structure in population.losa).")
  if config is not None:
    _check_structure(pop, config)
  rungs = config_lib.as_dict(pop.get("rungs"))
  bad = sorted(set(rungs) - set(RUNG_KEYS))
  if bad:
    raise ValueError(f"Unknown config.population.rungs key(s) {bad}; valid: "
                     f"{list(RUNG_KEYS)}.")
  if rungs:
    steps = _values("config.population.rungs.steps", rungs.get("steps"))
    if any(not isinstance(s, int) or s <= 0 for s in steps) or \
        steps != sorted(set(steps)):
      raise ValueError(f"config.population.rungs.steps={steps}: increasing "
                       "positive step numbers.")
    keep = rungs.get("keep", 0.5)
    if not 0 < keep < 1:
      raise ValueError(f"config.population.rungs.keep={keep}: the fraction "
                       "of members kept at each rung, in (0, 1).")
    if config is not None:
      ev = rungs.get("eval")
      evals = config_lib.as_dict(config.get("evals"))
      if ev not in evals:
        raise ValueError(f"config.population.rungs.eval={ev!r}: name the "
                         f"config.evals entry to rank members by; have "
                         f"{sorted(evals)}.")
  if config is not None:
    expand(config)   # every member must be a valid config


def expand(config) -> List[Member]:
  """The members of `config.population` (in a fixed, reproducible order)."""
  pop = config_lib.as_dict(config.get("population"))
  base = config_lib.as_dict(config)
  base.pop("population", None)
  # (hp, structure): structure as `_structure_rows` gives it.
  rows: List[Tuple[Dict[str, Any], Dict[str, Any]]] = []
  rand = config_lib.as_dict(pop.get("random"))
  method = methods_of(config)[0]
  if rand:
    budget = rand.pop("budget", None)
    if not isinstance(budget, int) or budget <= 0:
      raise ValueError(f"config.population.random.budget={budget!r}: the "
                       "number of members to sample, a positive int.")
    rng = np.random.default_rng(rand.pop("seed", 0))
    for _ in range(budget):
      hp, struct = {}, {"method": method}
      for k in sorted(rand):
        v = _sample(f"config.population.random.{k}", rand[k], rng)
        if k in model_lib.LOSA_DEFAULTS and method == "losa":
          struct[k] = v
        elif k in HPARAMS:
          hp[k] = v
        else:
          raise ValueError(f"config.population.random.{k}: not a "
                           "hyper-parameter or LoSA switch (of a LoSA "
                           "population).")
      rows.append((hp, struct))
  else:
    grid = {k: _values(f"config.population.grid.{k}", v)
            for k, v in sorted(config_lib.as_dict(pop.get("grid")).items())}
    for struct in _structure_rows(pop, config):
      for h_vals in itertools.product(*grid.values()):
        rows.append((dict(zip(grid, h_vals)), struct))
  seeds = _values("config.population.seeds",
                  pop.get("seeds", [base.get("seed", 0)]))
  data_seeds = pop.get("data_seeds")
  data_seeds = (_values("config.population.data_seeds", data_seeds)
                if data_seeds is not None else [None])
  base_data_seed = config_lib.data_seed_of(config)
  members = []
  varying = {}
  for hp, struct in rows:
    for k, v in {**hp, **struct}.items():
      varying.setdefault(k, set()).add(repr(v))
  for (hp, struct), seed, data_seed in itertools.product(rows, seeds,
                                                        data_seeds):
    c = ml_collections.ConfigDict(base)
    for k, v in hp.items():
      c[k] = v
    method = c.model.method = struct["method"]
    c.seed = int(seed)
    # Init seeds vary per member, the data order stays the population's
    # (one backbone pass) unless data_seeds asks for several.
    c.data_seed = int(base_data_seed if data_seed is None else data_seed)
    opts = {k.rpartition(".")[2]: v for k, v in struct.items()
            if k != "method"}
    if opts:
      c.model[method] = ml_collections.ConfigDict(
          {**config_lib.as_dict(c.model.get(method)), **opts})
    config_lib.validate(c)
    i = len(members)
    shown = {k: v for k, v in {**hp, **struct}.items()
             if len(varying.get(k, ())) > 1}
    if len(seeds) > 1:
      shown["seed"] = seed
    if len(data_seeds) > 1:
      shown["data_seed"] = data_seed
    label = ",".join(f"{k}={_fmt(v)}" for k, v in shown.items()) or "base"
    member_hp = {"lr": float(c.lr), "wd": float(c.get("wd", 0.0)),
                 "label_smoothing": float(c.get("label_smoothing", 0.0)),
                 "grad_clip_norm": c.get("grad_clip_norm"),
                 "seed": int(c.seed), "data_seed": int(c.data_seed)}
    options = config_lib.as_dict(c.model.get(method))
    members.append(Member(i, f"m{i:02d}", label, c, member_hp, (
        ("method", repr(method)),
        *sorted((k, repr(v)) for k, v in options.items()))))
  if not members:
    raise ValueError("config.population expands to no member.")
  return members


def group_members(members: Sequence[Member]
                  ) -> List[Tuple[Tuple, int, List[Member]]]:
  """[(structure, data seed, members)] in first-appearance order: members
  of one structure share a vmapped group, of one data seed a backbone pass."""
  groups: Dict[Tuple, List[Member]] = {}
  for m in members:
    groups.setdefault((m.structure, m.hparams["data_seed"]), []).append(m)
  return [(k[0], k[1], v) for k, v in groups.items()]

