# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The `population` section of `python -m losa_jax.bench`: K side networks on one
backbone pass, against one LoSA step and K separate ones.

Per variant at a.batch: compiled FLOPs and peak of a population step of
K = 1..16 members (vmapped, and looped for 8 and 16), beside one LoSA step
and the frozen forward; and one interleaved timing of one LoSA step, K=8
vmapped and mixed populations, 8 separate steps and the cached variants.
docs/benchmarks.md ("Populations") has the figures.
"""
import copy
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.bench import common
from losa_jax.bench.configs import forward_cost
from losa_jax.bench.configs import make_config
from losa_jax.bench.configs import step_cost
from losa_jax.bench import harness
from losa_jax.bench.harness import Stepper
from losa_jax.bench.sections_measured import built_for
from losa_jax.bench.sections_measured import cached_step_for
from losa_jax.bench.sections_measured import timed_inputs
from losa_jax.population import build as pop_build
from losa_jax.utils import cost

MIB = common.MIB
_log = common.log
KS = (1, 2, 4, 8, 16)
MIXED = dict(rank=[4, 8], token_mixer=["all", "none"], tap_every=[1, 2])


def _pop_config(config, *, k: int = 0, mixed: bool = False, cached=False,
                loop: str = "vmap"):
  c = copy.deepcopy(config)
  # Every member must be a complete trainer config; the data is never read.
  c.input = dict(data=dict(name="arrays", arrays={}), batch_size=8, pp="")
  c.total_steps = 1000
  if mixed:
    c.population = dict(grid=dict(lr=[float(c.lr)]), losa=MIXED)
  else:
    c.population = dict(grid=dict(
        lr=[float(x) for x in np.geomspace(1e-4, 1e-2, k)]))
  if cached:
    c.feature_cache = dict(enabled=True, storage="memory")
  c.population.loop = loop
  return c


def _abstract_batch(pop, bsz: int):
  """One data slot's [1, bsz, ...] batch as ShapeDtypeStructs."""
  return {"image": jax.ShapeDtypeStruct((1, bsz, *pop.image_shape),
                                        jnp.float32),
          "label": jax.ShapeDtypeStruct((1, bsz), jnp.int32)}


def population_cost(config, k: int, bsz: int,
                    loop: str = "vmap") -> Dict[str, float]:
  """Compiled cost of a K-member (K lrs) population train step."""
  pop = pop_build.build(_pop_config(config, k=k, loop=loop),
                        total_steps=1000)
  return cost.compiled_cost(pop.train_step, cost.abstract(
      pop.state_shape, pop.state_sharding), _abstract_batch(pop, bsz))


def _compiled_rows(config, variant: str, bsz: int) -> List[Dict[str, Any]]:
  """Compiled FLOPs and peak of K = 1..16 members, beside one LoSA step."""
  rows = []
  fwd = forward_cost(config, bsz)
  one = step_cost(config, bsz)
  side = one["flops"] - fwd["flops"]
  for k, loop in [(k, "vmap") for k in KS] + [(8, "map"), (16, "map")]:
    c = population_cost(config, k, bsz, loop)
    # XLA's cost analysis counts a while loop's body once: "map" FLOPs
    # are not comparable (its work is the vmap's, one member at a time).
    flops = c["flops"] if loop == "vmap" else float("nan")
    rows.append({
        "kind": "compiled", "variant": variant, "batch": bsz, "k": k,
        "loop": loop,
        "flops": flops, "peak_mib": c["peak_bytes"] / MIB,
        "flops_per_forward": flops / fwd["flops"],
        "flops_bound": (fwd["flops"] + k * side) / fwd["flops"],
        "peak_per_losa_step": c["peak_bytes"] / one["peak_bytes"]})
    _log(f"population {variant} K={k} ({loop}): "
         f"{rows[-1]['flops_per_forward']:.3f}"
         f" forwards (bound {rows[-1]['flops_bound']:.3f}), peak "
         f"{rows[-1]['peak_mib']:.0f} MiB = "
         f"{rows[-1]['peak_per_losa_step']:.2f}x one LoSA step")
  return rows


def _timed_rows(config, variant: str, a) -> List[Dict[str, Any]]:
  """Every timed row on the same batch, interleaved."""
  bsz = a.batch
  batch, backbone, fb, _ = timed_inputs(config, bsz)
  single = built_for(config)
  fns = {"losa x1": Stepper(single.train_step,
                            harness.random_state(single), batch)}
  holders = [Stepper(single.train_step, harness.random_state(single, i),
                     batch) for i in range(8)]
  fns["8 separate losa"] = lambda: [h() for h in holders]
  slot = jax.tree.map(lambda x: x[None], batch)
  for name, pc in (("pop K=8 (8 lrs)", _pop_config(config, k=8)),
                   ("pop K=8 mixed", _pop_config(config, mixed=True))):
    pop = pop_build.build(pc, total_steps=1000)
    fns[name] = Stepper(pop.train_step, pop.init(backbone), slot)
  # Cached: the taps of this batch, as the feature cache stores them.
  fns["losa x1 cached"] = Stepper(cached_step_for(config, single),
                                  harness.random_state(single, 9), fb)
  pop = pop_build.build(_pop_config(config, k=8, cached=True),
                        total_steps=1000, cached=True)
  fns["pop K=8 cached"] = Stepper(pop.train_step, pop.init(backbone),
                                  jax.tree.map(lambda x: x[None], fb))
  times = common.interleaved(fns, reps=a.reps, warmup=a.warmup)
  base = times["losa x1"]["median_s"]
  rows = []
  for name, t in times.items():
    rows.append({"kind": "timed", "variant": variant, "batch": bsz,
                 "row": name, "median_s": t["median_s"],
                 "q25_s": t["q25_s"], "q75_s": t["q75_s"],
                 "per_losa_step": t["median_s"] / base})
    _log(f"population {variant} {name}: {t['median_s']:.3f} s = "
         f"{t['median_s'] / base:.2f}x one LoSA step")
  return rows


def section_population(a) -> List[Dict[str, Any]]:
  """Compiled K-scaling rows, then interleaved timing rows, per variant."""
  rows = []
  for variant in a.variants:
    config = make_config(variant, "losa")
    rows += _compiled_rows(config, variant, a.batch)
    rows += _timed_rows(config, variant, a)
  return rows
