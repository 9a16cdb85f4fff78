# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Timed sections of `python -m losa_jax.bench`: measured step times and the cache.

Wall times are measured with `common.interleaved` (every method once per
round, order rotated) in one process, so machine noise hits every method
alike; only ratios within one run mean anything. These run under XLA's
default flags (see `python -m losa_jax.bench`).
"""
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
from losa_jax.bench.configs import make_config
from losa_jax.utils import cost

MIB = common.MIB
_log = common.log


_BUILT: Dict[str, Any] = {}


def built_for(config):
  """build.build memoised by config, so sections share compiled steps."""
  key = json.dumps(config.to_dict(), sort_keys=True, default=str)
  if key not in _BUILT:
    _BUILT[key] = build.build(config, total_steps=1000)
  return _BUILT[key]


_CACHED_STEPS: Dict[int, Any] = {}


def cached_step_for(config, built):
  """feature_cache.train_step memoised per Built."""
  if id(built) not in _CACHED_STEPS:
    _CACHED_STEPS[id(built)] = fc.train_step(config, built)
  return _CACHED_STEPS[id(built)]


def cached_batch(built, backbone, batch):
  """`batch` with its images replaced by their bf16 taps under `backbone`,
  as the feature cache stores them."""
  feats = fc.features_fn(built.model, "bfloat16", True)(
      {"backbone": backbone}, batch["image"])
  return {"image": {"taps": feats["taps"]}, "label": batch["label"]}


def timed_inputs(config, bsz: int):
  """What the timed sections share, for LoSA's `config` at batch `bsz`:
  (batch, backbone, cached batch, forward): a random batch
  (harness.make_batch), random backbone params (harness.random_tree), the
  batch's cached taps (`cached_batch`) and a blocking call of the frozen
  backbone's forward."""
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
  return {"losa_cached": (harness.Stepper(compiled, state, cached),
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
        dtype="bfloat16", storage="disk", batch_size=bsz, log=_log)
    build_s = time.perf_counter() - t0
    steps_n = n // bsz
    uncached_it, _ = ip.training(source, batch_size=bsz, pp=pp, seed=0)
    cached_it = cache.batches(batch_size=bsz, seed=0)
    uncached = ({"image": jnp.asarray(r["image"]),
                 "label": jnp.asarray(r["label"], jnp.int32)}
                for r in uncached_it)
    cached = (jax.tree.map(jnp.asarray, r) for r in cached_it)
    # Each call fetches its batch (pp or the cache gather) and steps.
    fns = {"uncached": harness.Stepper(b.train_step,
                                       harness.random_state(b), uncached),
           "cached": harness.Stepper(cached_step_for(config, b),
                                     harness.random_state(b), cached)}
    times = common.interleaved(fns, reps=steps_n, warmup=0)
    cache_mib = cache.nbytes / MIB
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
  _log(f"cache {variant}: epoch {row['uncached_epoch_1000_s']:.1f}s -> "
       f"{row['cached_epoch_1000_s']:.1f}s ({row['cached_vs_uncached']:.3f}x)")
  return [row]


def _cache_step_costs(config, built, bsz) -> Dict[str, float]:
  """XLA FLOPs and bytes accessed of the forward, the uncached and the
  cached LoSA step at batch `bsz`: what the wall-time ratio is bound by."""
  batch = steps.abstract_batch(bsz, built.image_shape)
  fwd_fn, bb_shape = build.backbone_forward(config)
  feats = jax.eval_shape(lambda bb, b: cached_batch(built, bb, b),
                         bb_shape, batch)
  out = {}
  for name, jitted, args in (
      ("forward", jax.jit(fwd_fn), (bb_shape, batch["image"])),
      ("uncached", built.train_step, (built.state_shape, batch)),
      ("cached", cached_step_for(config, built), (built.state_shape, feats))):
    c = cost.compiled_cost(jitted, *args)
    out[f"{name}_gflop"], out[f"{name}_gb"] = (c["flops"] / 1e9,
                                              c["bytes_accessed"] / 1e9)
  return out
