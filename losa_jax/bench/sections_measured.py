# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Timed sections: measured, cache, population, side, side_backward.

Wall times come from `common.interleaved` (every call once per round, order
rotated) in one process, so only ratios within one run mean anything; these
run under XLA's default flags. docs/benchmarks.md has the figures and what
each column means.
"""
import copy
import json
import shutil
import tempfile
import time
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax import feature_cache as fc
from losa_jax.assembly import build
from losa_jax.assembly import steps
from losa_jax.bench import common
from losa_jax.bench import harness
from losa_jax.bench.configs import forward_cost
from losa_jax.bench.configs import make_config
from losa_jax.bench.configs import step_cost
from losa_jax.bench.harness import Stepper
from losa_jax.models import side_fused as sf
from losa_jax.population import build as pop_build
from losa_jax.utils import cost


def built_for(config):
  """build.build memoised by config, so sections share compiled steps."""
  key = json.dumps(config.to_dict(), sort_keys=True, default=str)
  return harness.cached(("built", key),
                        lambda: build.build(config, total_steps=1000))


def cached_step_for(config, built):
  """feature_cache.train_step memoised per Built."""
  return harness.cached(("cached_step", id(built)),
                        lambda: fc.train_step(config, built))


def cached_batch(built, backbone, batch):
  """`batch` with its images replaced by their bf16 taps under `backbone`,
  as the feature cache stores them."""
  feats = fc.features_fn(built.model, "bfloat16", True)(
      {"backbone": backbone}, batch["image"])
  return {"image": {"taps": feats["taps"]}, "label": batch["label"]}


def cached_shape(config, built, bsz: int):
  """ShapeDtypeStructs of `cached_batch` at batch `bsz`."""
  return jax.eval_shape(lambda bb, b: cached_batch(built, bb, b),
                        build.backbone_forward(config)[1],
                        steps.abstract_batch(bsz, built.image_shape))


def timed_inputs(config, bsz: int):
  """(random batch, random backbone params, the batch's cached taps, a
  blocking call of the frozen forward) of LoSA's `config` at batch `bsz`."""
  built = built_for(config)
  batch = harness.make_batch(built, bsz, config.num_classes)
  bb = harness.random_tree(built.state_shape["params"]["backbone"],
                           built.state_sharding["params"]["backbone"])
  fwd = jax.jit(build.backbone_forward(config)[0])
  return (batch, bb, cached_batch(built, bb, batch),
          lambda: jax.block_until_ready(fwd(bb, batch["image"])))


def section_measured(a) -> List[Dict[str, Any]]:
  """harness.time_methods of the forward, every method of a.methods and
  LoSA from cached features, per a.variants at a.batch (f32, unrolled)."""
  spec = dict(bf16=False, scan=False, remat=False, depth=0, reps=a.reps,
              warmup=a.warmup, batches=[a.batch])
  rows = []
  for variant in a.variants:
    rows += harness.time_methods(
        variant, ["forward", *a.methods], spec,
        extra=lambda ms, bsz, v=variant: _losa_cached(v, ms, bsz, spec))
  return rows


def _losa_cached(variant, methods, bsz: int, spec):
  """{"losa_cached": (runner, cost fields, trainable)}: LoSA's cached step
  on the cached taps of a random batch (`cached_batch`)."""
  m = methods.get("losa") or harness.Method(variant, "losa", spec)
  cached = cached_batch(m.built, m.state["params"]["backbone"], m.batch(bsz))
  state = harness.random_state(m.built, seed=1)
  compiled = cached_step_for(m.config, m.built).lower(state, cached).compile()
  return {"losa_cached": (Stepper(compiled, state, cached),
                          cost.cost_of_compiled(compiled), m.trainable)}


def section_cache(a) -> List[Dict[str, Any]]:
  """Epoch time with and without the feature cache, steps interleaved."""
  from losa_jax.assembly import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  from losa_jax.datasets import arrays  # pylint: disable=g-import-not-at-top
  variant, bsz, n = a.variant, a.batch, a.images
  config = make_config(variant, "losa")
  s = config.image_size
  rng = np.random.RandomState(0)
  source = arrays.ArraySource({
      "image": rng.randint(0, 256, (n, s, s, 3)).astype(np.uint8),
      "label": rng.randint(0, 100, (n,)).astype(np.int64)}, name="bench")
  pp = "decode|value_range(-1, 1)|keep('image', 'label')"
  b = built_for(config)
  params = harness.random_tree(b.state_shape["params"],
                               b.state_sharding["params"])
  bb = jax.device_get(params["backbone"])
  costs = _cache_step_costs(config, b, bsz)
  # Compile the feature fn first: the build time below is the steady-state
  # cost of hashing, pp, backbone forward and writing, not compilation.
  feat_fn = fc.features_fn(b.model, "bfloat16", True)
  jax.block_until_ready(feat_fn({"backbone": bb}, jnp.zeros((bsz, s, s, 3))))
  root = tempfile.mkdtemp(prefix="losa_bench_cache_")
  try:
    t0 = time.perf_counter()
    cache = fc.FeatureCache.get_or_create(
        model=b.model, params=params, source=source, pp=pp, root=root,
        dtype="bfloat16", storage="disk", batch_size=bsz, log=common.log)
    build_s = time.perf_counter() - t0
    steps_n = n // bsz
    uncached_it, _ = ip.training(source, batch_size=bsz, pp=pp, seed=0)
    cached_it = cache.batches(batch_size=bsz, seed=0)
    uncached = ({"image": jnp.asarray(r["image"]),
                 "label": jnp.asarray(r["label"], jnp.int32)}
                for r in uncached_it)
    cached = (jax.tree.map(jnp.asarray, r) for r in cached_it)
    # Each call fetches its batch (pp or the cache gather) and steps.
    fns = {"uncached": Stepper(b.train_step, harness.random_state(b),
                               uncached),
           "cached": Stepper(cached_step_for(config, b),
                             harness.random_state(b), cached)}
    times = common.interleaved(fns, reps=steps_n, warmup=0)
    cache_mib = cache.nbytes / common.MIB
  finally:
    shutil.rmtree(root, ignore_errors=True)
  measured = steps_n * bsz
  per_u, per_c, per_b = (times["uncached"]["mean_s"] / bsz,
                         times["cached"]["mean_s"] / bsz, build_s / n)
  row = {"variant": variant, "batch": bsz, "images_measured": measured,
         "images_cached": n, "cache_dtype": "bfloat16", "storage": "disk",
         "cache_mib": cache_mib,
         "cache_gib_per_1000": cache_mib / n * 1000 / 1024,
         "uncached_epoch_1000_s": per_u * 1000,
         "cached_epoch_1000_s": per_c * 1000,
         "build_1000_s": per_b * 1000,
         "cached_vs_uncached": per_c / per_u,
         "break_even_epochs": per_b / max(per_u - per_c, 1e-12), **costs}
  common.log(f"cache {variant}: epoch {row['uncached_epoch_1000_s']:.1f}s -> "
       f"{row['cached_epoch_1000_s']:.1f}s ({row['cached_vs_uncached']:.3f}x)")
  return [row]


def _cache_step_costs(config, built, bsz) -> Dict[str, float]:
  """XLA FLOPs and bytes accessed of the forward, the uncached and the
  cached LoSA step at batch `bsz`: what the wall-time ratio is bound by."""
  batch = steps.abstract_batch(bsz, built.image_shape)
  fwd_fn, bb_shape = build.backbone_forward(config)
  feats = cached_shape(config, built, bsz)
  out = {}
  for name, jitted, args in (
      ("forward", jax.jit(fwd_fn), (bb_shape, batch["image"])),
      ("uncached", built.train_step, (built.state_shape, batch)),
      ("cached", cached_step_for(config, built), (built.state_shape, feats))):
    c = cost.compiled_cost(jitted, *args)
    out[f"{name}_gflop"], out[f"{name}_gb"] = (c["flops"] / 1e9,
                                              c["bytes_accessed"] / 1e9)
  return out


# --- population: K side networks (vmapped, or looped: "map") on one backbone
# pass, against one LoSA step and K separate ones.

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


def population_cost(config, k: int, bsz: int,
                    loop: str = "vmap") -> Dict[str, float]:
  """Compiled cost of a K-member (K lrs) population train step."""
  pop = pop_build.build(_pop_config(config, k=k, loop=loop),
                        total_steps=1000)
  slot = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype),
                      steps.abstract_batch(bsz, pop.image_shape))
  return cost.compiled_cost(pop.train_step, cost.abstract(
      pop.state_shape, pop.state_sharding), slot)


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
        "flops": flops, "peak_mib": c["peak_bytes"] / common.MIB,
        "flops_per_forward": flops / fwd["flops"],
        "flops_bound": (fwd["flops"] + k * side) / fwd["flops"],
        "peak_per_losa_step": c["peak_bytes"] / one["peak_bytes"]})
    common.log(f"population {variant} K={k} ({loop}): "
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
    common.log(f"population {variant} {name}: {t['median_s']:.3f} s = "
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


# --- side: compiled memory traffic (`cost.hlo_traffic`, loop trips counted)
# and step times of three implementations of one side network.

IMPLEMENTATIONS = {"autodiff": dict(fused=False, dtype="float32"),
                   "fused f32": dict(dtype="float32"), "fused": {}}


def _traffic(compiled, full_bytes: float, layers: int) -> Dict[str, float]:
  rows = cost.hlo_traffic(compiled)
  total = sum(r["bytes"] for r in rows)
  rows = [r for r in rows if "/side/" in r["name"]]
  by_phase = cost.traffic_by(rows, cost.phase)
  side = sum(r["bytes"] for r in rows)
  c = cost.cost_of_compiled(compiled)
  out = {"traffic_gb": total / 1e9,
         "side_gb": side / 1e9,
         "side_passes_per_layer": side / full_bytes / layers,
         "xla_bytes_accessed_gb": c["bytes_accessed"] / 1e9,
         "temp_bytes": c["temp_bytes"], "peak_bytes": c["peak_bytes"]}
  for p in ("forward", "replay", "backward"):   # of the side network
    out[f"{p}_passes_per_layer"] = by_phase.get(p, 0.0) / full_bytes / layers
  return out


def section_side(a) -> List[Dict[str, Any]]:
  """Per a.variants: compiled traffic (by phase, and in f32 [B, N, D]
  passes per side layer) and interleaved times of the uncached and cached
  steps of each of IMPLEMENTATIONS, beside the frozen forward."""
  rows = []
  for variant in a.variants:
    bsz = a.batch
    # Inputs and the frozen forward, shared by the three implementations
    # (their backbones are the same params: init differs only in side/).
    config = make_config(variant, "losa")
    s = config.image_size
    kw = built_for(config).model.backbone_kwargs()
    layers = kw["depth"]
    full = float(bsz * ((s // kw["patch_size"][0]) ** 2 + 1) * kw["width"]
                 * 4)                                   # one f32 [B, N, D]
    batch, _, fb, forward = timed_inputs(config, bsz)
    fns = {"forward": forward}
    info = {}
    for impl, losa in IMPLEMENTATIONS.items():
      config = make_config(variant, "losa")
      config.model.losa.update(losa)
      b = built_for(config)
      # Compiled once: analysed, then timed.
      uncached = b.train_step.lower(
          b.state_shape, steps.abstract_batch(bsz, b.image_shape)).compile()
      cached = cached_step_for(config, b).lower(
          b.state_shape, cached_shape(config, b, bsz)).compile()
      info[impl] = _traffic(uncached, full, layers)
      info[f"{impl}, cached"] = _traffic(cached, full, layers)
      fns[impl] = Stepper(uncached, harness.random_state(b), batch)
      fns[f"{impl}, cached"] = Stepper(cached, harness.random_state(b),
                                       fb)
    common.log(f"side {variant}: timing {list(fns)}")
    times = common.interleaved(fns, reps=a.reps, warmup=a.warmup)
    fwd_med = times["forward"]["median_s"]
    for name, t in times.items():
      impl = name.split(", ")[0]
      row = {"variant": variant, "step": name, "batch": bsz,
             "median_s": t["median_s"], "min_s": t["min_s"],
             "max_s": t["max_s"], "reps": t["reps"],
             "vs_forward": t["median_s"] / fwd_med, **info.get(name, {})}
      if name.endswith(", cached"):
        row["cached_vs_uncached"] = (t["median_s"] /
                                     times[impl]["median_s"])
      rows.append(row)
      common.log(f"  {name}: {t['median_s']:.3f} s ({row['vs_forward']:.2f}x "
           f"forward)" + (f", side {row['side_passes_per_layer']:.1f} "
                          f"passes/layer" if name in info else ""))
  return rows


def _autodiff_vjp():
  """`side_scan`'s custom VJP with autodiff of `_forward` as its backward:
  the forward keeps only z_i, the backward replays each layer's folded
  forward under `jax.vjp`. The alternative docs/side_fused.md weighs."""

  def fwd(params, taps, layer_axis, dtype):
    a, (params, zs, _, taps_dtype) = sf._scan_fwd(params, taps, layer_axis,
                                                  dtype)
    return a, (params, zs, None, taps_dtype)

  def bwd(layer_axis, dtype, saved, da):
    params, zs, _, taps_dtype = saved
    axis = layer_axis if sf._in_place(taps_dtype.dtype, dtype) else 0

    def body(da, i):
      _, vjp = jax.vjp(lambda p, z: sf._forward(p, z)[0],
                       sf._layer(params, i), sf._read(zs, i, axis))
      dp, dz = vjp(da)
      # The token MLP's up bias is a null direction: exactly 0, as by hand.
      return da + dz, dp._replace(bu2=jnp.zeros_like(dp.bu2))

    _, dparams = jax.lax.scan(body, da.astype(jnp.float32),
                              jnp.arange(zs.shape[axis]), reverse=True)
    shape = list(zs.shape)
    shape.insert(layer_axis, shape.pop(axis))
    return dparams, jnp.zeros(shape, taps_dtype.dtype)

  return fwd, bwd


def section_side_backward(a) -> List[Dict[str, Any]]:
  """Compiled cost of the cached LoSA step with side_scan's hand-written
  backward and with autodiff of the folded forward in the same custom VJP,
  per a.variants at a.batch (bf16 taps; compile only)."""
  rows = []
  for variant in a.variants:
    config = make_config(variant, "losa")
    b = built_for(config)
    feats = cached_shape(config, b, a.batch)
    for name, vjp in (("hand-written", (sf._scan_fwd, sf._scan_bwd)),
                      ("autodiff", _autodiff_vjp())):
      sf.side_scan.defvjp(*vjp)
      try:
        compiled = fc.train_step(config, b).lower(b.state_shape,
                                                  feats).compile()
      finally:
        sf.side_scan.defvjp(sf._scan_fwd, sf._scan_bwd)
      c = cost.cost_of_compiled(compiled)
      phases = cost.traffic_by(cost.hlo_traffic(compiled), cost.phase)
      rows.append({"variant": variant, "batch": a.batch, "backward": name,
                   "temp_bytes": c["temp_bytes"], "peak_bytes": c["peak_bytes"],
                   "bytes_accessed": c["bytes_accessed"], "flops": c["flops"],
                   **{f"{p}_traffic_bytes": v for p, v in phases.items()}})
      common.log(f"side_backward {variant} {name}: peak "
           f"{c['peak_bytes'] / 2**20:.1f} MiB, backward traffic "
           f"{phases.get('backward', 0) / 2**20:.0f} MiB")
  return rows
