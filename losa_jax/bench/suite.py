# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Benchmark suite: time and memory of LoSA vs linear / full / LoRA / adapters.

  python -m losa_jax.bench.suite --out docs/bench_results \
      [--variants Ti/16,S/16,B/16,L/16] [--batch 32] [--quick]

Sections (`--sections`, default all), each written to `raw_<section>.json`,
then `results.md`, one CSV per section and PNG plots in `--out`:

* compiled: per variant and method at `--batch`, 224 px (f32, unscanned
  backbone): trainable params, XLA FLOPs, compiled temp / argument / peak
  memory, and their ratios to the backbone forward pass (compiled alike).
* dtype: LoSA at `--dtype_variant`: f32 vs bf16 backbone (bf16 matmuls and
  bf16 frozen params), unrolled vs scanned blocks, with and without state
  donation (XLA's alias bytes).
* measured: per `--measure_variants` at `--measure_batch`: median wall time
  of one train step of every method, of the backbone forward, and of LoSA
  from cached features, all interleaved round-robin in one process after
  warm-up (so machine noise hits every method alike); examples/s and the
  ratio to the forward.
* cache: LoSA epoch time with and without the feature cache on a synthetic
  task of `--cache_images` images, uncached and cached steps interleaved,
  scaled to a 1,000-image (VTAB-1k) epoch; plus the one-time build cost.
* maxbatch: the largest batch (multiple of `--batch_step`) whose compiled
  peak memory fits `--budget_gib`, per method, by a linear guess from two
  compiles and a binary search around it (abstract inputs).
* big: compiled memory at `--big_batch` for `--big_variants` (scanned,
  bf16 matmuls; frozen params bf16; full keeps f32 params), with and
  without rematerialisation for the backprop methods, and which fit
  16 / 40 / 80 GiB; plus compiles at 1/8, 1/4 and 1/2 depth of
  `--linearity_variant` to show memory is linear in depth.

Compile-only sections (compiled, dtype, maxbatch, big) run in a child
process with XLA's while-loop-invariant code motion disabled: XLA:CPU has
no native bf16 GEMM and upcasts bf16 weights to f32, and that pass hoists
the upcast of the whole [L, ...] scanned weight stack out of the loop, a
full f32 copy of the backbone that a GPU/TPU (native bf16 dots) never
makes. f32 programs compile to the same memory either way (checked); the
`big` section also reports LoSA under default flags. Timed sections run
with default flags.

`--quick` shrinks everything to a 4-block width-32 ViT at 32 px for smoke
tests (tests/test_bench.py). Never compare wall times across runs: only the
ratios measured side by side in one run mean anything.
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

LICM_OFF = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"
# LLVM -O0: halves XLA:CPU compile time; the HLO passes, hence FLOPs and
# memory, are unchanged (checked on B/16). Never used for timed sections,
# except by --quick (a smoke test whose times mean nothing).
FAST_COMPILE = "--xla_backend_optimization_level=0"
COMPILE_SECTIONS = ("compiled", "dtype", "maxbatch", "big")
TIMED_SECTIONS = ("measured", "cache")
SECTIONS = ("compiled", "dtype", "measured", "cache", "maxbatch", "big")
METHODS = ("losa", "linear", "full", "lora", "adapter")
GIB = 2.0**30
MIB = 2.0**20
# A 4-block width-32 ViT at 32 px, for --quick.
TINY = dict(width=32, depth=4, mlp_dim=64, num_heads=2, patch_size=(8, 8))
BIG_CONFIGS = (  # (label, method, remat of the scanned backbone)
    ("losa", "losa", True), ("linear", "linear", True),
    ("lora+remat", "lora", True), ("lora", "lora", False),
    ("adapter+remat", "adapter", True), ("adapter", "adapter", False),
    ("full+remat", "full", True), ("full", "full", False))
FIT_GIB = (16, 40, 80)


# --- configs ------------------------------------------------------------------


def variant_backbone(variant: str):
  """"B/16" -> (backbone kwargs, image size); "tiny" -> the --quick model."""
  if variant == "tiny":
    return dict(TINY), 32
  return dict(variant=variant), 224


def make_config(variant: str, method: str, *, bf16: bool = False,
                scan: bool = False, remat: bool = True,
                depth: Optional[int] = None, rank: int = 8,
                num_classes: int = 100):
  """A trainer config for one benchmark cell (AdamW, masked clip, rank 8)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  bb, size = variant_backbone(variant)
  bb.update(pool_type="tok", scan=scan)
  if scan:
    bb["remat_policy"] = "nothing_saveable" if remat else "none"
  if bf16:
    bb["dtype_mm"] = "bfloat16"
  if depth:
    bb["depth"] = depth
  c = ml_collections.ConfigDict()
  c.num_classes = num_classes
  c.image_size = size
  c.model = dict(method=method, backbone=bb, losa=dict(rank=rank),
                 lora=dict(rank=rank), adapter=dict(dim=rank))
  c.optax_name = "adamw"
  c.lr = 1e-3
  c.wd = 1e-4
  c.grad_clip_norm = 1.0     # masked to trainable params by optim.make
  c.schedule = dict(warmup_steps=0, decay_type="cosine")
  c.mesh = [("data", -1)]
  if bf16 and method != "full":
    c.model_load = dict(param_dtype="bfloat16")
  return c


def depth_of(variant: str) -> int:
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top
  bb, _ = variant_backbone(variant)
  return bb.get("depth") or vit.decode_variant(bb["variant"])["depth"]


# --- compiled costs -------------------------------------------------------------


def step_cost(config, batch: int, *, donate: bool = True) -> Dict[str, float]:
  """Compiled cost of the real train step (build.build) on abstract inputs."""
  from losa_jax import build, cost, steps  # pylint: disable=g-import-not-at-top
  from losa_jax import tree as tree_lib  # pylint: disable=g-import-not-at-top
  b = build.build(config, total_steps=1000, donate=donate)
  c = cost.compiled_cost(b.train_step, b.state_shape,
                         steps.abstract_batch(batch, b.image_shape))
  c["trainable_params"] = b.num_trainable()
  c["total_params"] = tree_lib.count(b.state_shape["params"])
  return c


def forward_cost(config, batch: int) -> Dict[str, float]:
  """Compiled cost of the frozen backbone's inference forward."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from losa_jax import build, cost  # pylint: disable=g-import-not-at-top
  from losa_jax import tree as tree_lib  # pylint: disable=g-import-not-at-top
  fn, shape = build.backbone_forward(config)
  s = config.image_size
  c = cost.compiled_cost(jax.jit(fn), shape, jax.ShapeDtypeStruct(
      (batch, s, s, 3), jnp.float32))
  c["trainable_params"] = 0
  c["total_params"] = tree_lib.count(shape)
  return c


def section_compiled(a) -> List[Dict[str, Any]]:
  rows = []
  for variant in a.variants:
    fwd = forward_cost(make_config(variant, "losa"), a.batch)
    for method in ("forward",) + METHODS:
      t0 = time.time()
      c = fwd if method == "forward" else step_cost(
          make_config(variant, method), a.batch)
      rows.append({
          "variant": variant, "method": method, "batch": a.batch,
          "image_size": variant_backbone(variant)[1],
          **{k: c[k] for k in ("trainable_params", "total_params", "flops",
                               "temp_bytes", "argument_bytes", "output_bytes",
                               "alias_bytes", "peak_bytes")},
          "flops_vs_forward": c["flops"] / fwd["flops"],
          "peak_vs_forward": c["peak_bytes"] / fwd["peak_bytes"],
          "temp_vs_forward": c["temp_bytes"] / max(fwd["temp_bytes"], 1.0),
          "compile_s": time.time() - t0})
      _log(f"compiled {variant} {method}: {c['flops'] / 1e9:.1f} GFLOP, "
           f"peak {c['peak_bytes'] / MIB:.0f} MiB")
  # Ratios LoSA / other method, per variant.
  for variant in a.variants:
    per = {r["method"]: r for r in rows if r["variant"] == variant}
    for r in per.values():
      r["losa_peak_fraction"] = per["losa"]["peak_bytes"] / r["peak_bytes"]
  return rows


def section_dtype(a) -> List[Dict[str, Any]]:
  """LoSA at one variant: f32 vs bf16, unrolled vs scanned, donation."""
  rows = []
  cells = [("f32", False, False, True), ("f32", True, False, True),
           ("bf16", False, True, True), ("bf16", True, True, True),
           ("f32", False, False, False)]
  if a.quick:
    cells = [c for c in cells if c[1]]
  for dtype, scan, bf16, donate in cells:
    c = step_cost(make_config(a.dtype_variant, "losa", bf16=bf16, scan=scan),
                  a.batch, donate=donate)
    rows.append({"variant": a.dtype_variant, "method": "losa",
                 "batch": a.batch, "backbone": dtype,
                 "blocks": "scan" if scan else "unrolled", "donate": donate,
                 **{k: c[k] for k in ("argument_bytes", "temp_bytes",
                                      "output_bytes", "alias_bytes",
                                      "peak_bytes")}})
    _log(f"dtype {dtype} scan={scan} donate={donate}: peak "
         f"{c['peak_bytes'] / MIB:.0f} MiB")
  return rows


def largest_batch(peak_of: Callable[[int], float], budget: float, *,
                  step: int = 8, cap: int = 16384, start: int = 32):
  """Largest multiple of `step` <= cap with peak_of(b) <= budget.

  Compiled memory is close to affine in the batch, so two compiles give a
  guess; a bracket is grown around it and bisected (each probe one compile).
  Returns (batch or 0, peak at that batch, {batch: peak} of every probe).
  """
  probes: Dict[int, float] = {}

  def peak(b):
    if b not in probes:
      probes[b] = peak_of(b)
    return probes[b]

  def fits(b):
    return peak(b) <= budget

  def snap(b):
    return int(min(max(step, step * int(b // step)), cap))

  p1, p2 = peak(start), peak(2 * start)
  slope = max((p2 - p1) / start, 1.0)
  guess = snap(start + (budget - p1) / slope)
  if fits(guess):
    lo, hi = guess, None
    while hi is None:
      if lo >= cap:
        return cap, peak(cap), probes
      nxt = snap(max(lo * 1.1, lo + step))
      if fits(nxt):
        lo = nxt
      else:
        hi = nxt
  else:
    lo, hi = None, guess
    while lo is None:
      if hi <= step:
        return 0, float("nan"), probes
      nxt = snap(min(hi * 0.9, hi - step))
      if fits(nxt):
        lo = nxt
      else:
        hi = nxt
  while hi - lo > step:
    mid = snap((lo + hi) // 2)
    if mid in (lo, hi):
      break
    if fits(mid):
      lo = mid
    else:
      hi = mid
  return lo, peak(lo), probes


def section_maxbatch(a) -> List[Dict[str, Any]]:
  rows = []
  budget = a.budget_gib * GIB
  for method in a.maxbatch_methods:
    t0 = time.time()
    config = make_config(a.maxbatch_variant, method)
    best, at, probes = largest_batch(
        lambda b, c=config: step_cost(c, b)["peak_bytes"], budget,
        step=a.batch_step, cap=a.batch_cap, start=a.batch_step * 4)
    rows.append({"variant": a.maxbatch_variant, "method": method,
                 "image_size": variant_backbone(a.maxbatch_variant)[1],
                 "budget_gib": a.budget_gib, "max_batch": best,
                 "at_cap": best >= a.batch_cap,
                 "peak_gib_at_max": at / GIB, "compiles": len(probes),
                 "probes": {str(k): v / GIB for k, v in sorted(probes.items())},
                 "search_s": time.time() - t0})
    _log(f"maxbatch {method}: {best} ({len(probes)} compiles)")
  return rows


def section_big(a) -> List[Dict[str, Any]]:
  rows = []
  for variant in a.big_variants:
    for label, method, remat in BIG_CONFIGS:
      if label not in a.big_configs:
        continue
      t0 = time.time()
      c = step_cost(make_config(variant, method, bf16=True, scan=True,
                                remat=remat), a.big_batch)
      rows.append(_big_row(variant, label, a.big_batch, depth_of(variant), c,
                           "licm_off", time.time() - t0))
  if a.linearity_variant:
    full_depth = depth_of(a.linearity_variant)
    depths = sorted({max(1, full_depth // k) for k in (8, 4, 2)})
    for label, method, remat in BIG_CONFIGS:
      if label not in a.linearity_configs:
        continue
      for d in depths:
        t0 = time.time()
        c = step_cost(make_config(a.linearity_variant, method, bf16=True,
                                  scan=True, remat=remat, depth=d),
                      a.big_batch)
        rows.append(_big_row(a.linearity_variant, label, a.big_batch, d, c,
                             "licm_off", time.time() - t0, linearity=True))
  return rows


def section_big_default_flags(a) -> List[Dict[str, Any]]:
  """LoSA's big-model memory under XLA:CPU's default flags (for reference)."""
  rows = []
  for variant in a.big_variants:
    t0 = time.time()
    c = step_cost(make_config(variant, "losa", bf16=True, scan=True),
                  a.big_batch)
    rows.append(_big_row(variant, "losa", a.big_batch, depth_of(variant), c,
                         "default", time.time() - t0))
  return rows


def _big_row(variant, label, batch, depth, c, flags, seconds,
             linearity=False):
  row = {"variant": variant, "config": label, "batch": batch, "depth": depth,
         "image_size": variant_backbone(variant)[1],
         "xla_flags": flags, "linearity": linearity,
         "total_params": c["total_params"],
         "trainable_params": c["trainable_params"],
         "argument_gib": c["argument_bytes"] / GIB,
         "temp_gib": c["temp_bytes"] / GIB, "peak_gib": c["peak_bytes"] / GIB,
         "compile_s": seconds}
  for g in FIT_GIB:
    row[f"fits_{g}gib"] = row["peak_gib"] <= g
  _log(f"big {variant} {label} depth {depth} ({flags}): peak "
       f"{row['peak_gib']:.2f} GiB")
  return row


# --- measured ---------------------------------------------------------------------


def interleaved(fns: Dict[str, Callable[[], Any]], *, reps: int, warmup: int
                ) -> Dict[str, List[float]]:
  """Round-robin timing: every rep runs every fn once, in a rotated order.

  The first call of each fn (compilation) and `warmup` rounds are untimed.
  Each fn must block until its result is ready.
  """
  names = list(fns)
  for name in names:
    fns[name]()
  for _ in range(warmup):
    for name in names:
      fns[name]()
  times = {n: [] for n in names}
  for r in range(reps):
    order = names[r % len(names):] + names[:r % len(names)]
    for name in order:
      t0 = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - t0)
  return times


_BUILT: Dict[str, Any] = {}


def built_for(config):
  """build.build memoised by config, so sections share compiled steps."""
  from losa_jax import build  # pylint: disable=g-import-not-at-top
  key = json.dumps(config.to_dict(), sort_keys=True, default=str)
  if key not in _BUILT:
    _BUILT[key] = build.build(config, total_steps=1000)
  return _BUILT[key]


_CACHED_STEPS: Dict[int, Any] = {}


def cached_step_for(config, built):
  """feature_cache.train_step memoised per Built."""
  from losa_jax import feature_cache as fc  # pylint: disable=g-import-not-at-top
  if id(built) not in _CACHED_STEPS:
    _CACHED_STEPS[id(built)] = fc.train_step(config, built)
  return _CACHED_STEPS[id(built)]


class _Stepper:
  """Holds a donated train state and runs one blocking step per call."""

  def __init__(self, step, state, batch):
    self.step, self.state, self.batch = step, state, batch

  def __call__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


def section_measured(a) -> List[Dict[str, Any]]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from losa_jax import build  # pylint: disable=g-import-not-at-top
  from losa_jax import feature_cache as fc  # pylint: disable=g-import-not-at-top
  rows = []
  for variant in a.measure_variants:
    bsz = a.measure_batch
    config = make_config(variant, "losa")
    rng = np.random.RandomState(0)
    s = config.image_size
    batch = {"image": jnp.asarray(rng.uniform(-1, 1, (bsz, s, s, 3)),
                                  jnp.float32),
             "label": jnp.asarray(rng.randint(0, 100, (bsz,)), jnp.int32)}
    fns, trainable = {}, {}
    losa_built = built_for(config)
    for method in a.measure_methods:
      b = built_for(make_config(variant, method))
      state = b.init(jax.random.key(0))
      fns[method] = _Stepper(b.train_step, state, batch)
      trainable[method] = b.num_trainable()
    # The backbone forward alone, on a copy of LoSA's (random) backbone.
    fwd_fn, _ = build.backbone_forward(config)
    fwd = jax.jit(fwd_fn)
    bb = jax.tree.map(jnp.copy, losa_built.init(
        jax.random.key(0))["params"]["backbone"])
    fns["forward"] = lambda: jax.block_until_ready(fwd(bb, batch["image"]))
    trainable["forward"] = 0
    # LoSA from cached features: the taps of this batch, bf16, on device.
    feats = fc._features_fn(  # pylint: disable=protected-access
        losa_built.model, "bfloat16", True)({"backbone": bb}, batch["image"])
    cached_batch = {"image": {"taps": feats["taps"]}, "label": batch["label"]}
    fns["losa_cached"] = _Stepper(
        cached_step_for(config, losa_built),
        losa_built.init(jax.random.key(0)), cached_batch)
    trainable["losa_cached"] = losa_built.num_trainable()
    _log(f"measured {variant}: compiling and timing {list(fns)}")
    times = interleaved(fns, reps=a.reps, warmup=a.warmup)
    fwd_med = float(np.median(times["forward"]))
    for name, ts in times.items():
      med = float(np.median(ts))
      rows.append({"variant": variant, "method": name, "batch": bsz,
                   "reps": len(ts), "median_s": med, "min_s": min(ts),
                   "max_s": max(ts), "examples_per_s": bsz / med,
                   "vs_forward": med / fwd_med,
                   "trainable_params": trainable[name]})
      _log(f"  {name}: {med:.3f} s/step ({med / fwd_med:.2f}x forward)")
    del fns
  return rows


def section_cache(a) -> List[Dict[str, Any]]:
  """Epoch time with and without the feature cache, steps interleaved."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from losa_jax import build  # pylint: disable=g-import-not-at-top
  from losa_jax import feature_cache as fc  # pylint: disable=g-import-not-at-top
  from losa_jax import input_pipeline as ip  # pylint: disable=g-import-not-at-top
  variant, bsz, n = a.cache_variant, a.measure_batch, a.cache_images
  config = make_config(variant, "losa")
  s = config.image_size
  rng = np.random.RandomState(0)
  source = ip.ArraySource({
      "image": rng.randint(0, 256, (n, s, s, 3)).astype(np.uint8),
      "label": rng.randint(0, 100, (n,)).astype(np.int64)}, name="bench")
  pp = "decode|value_range(-1, 1)|keep('image', 'label')"
  b = built_for(config)
  params = b.init(jax.random.key(0))["params"]
  bb = jax.device_get(params["backbone"])
  costs = _cache_step_costs(config, b, bsz)
  # Compile the feature fn first: the build time below is the steady-state
  # cost of hashing, pp, backbone forward and writing, not compilation.
  feat_fn = fc._features_fn(b.model, "bfloat16", True)  # pylint: disable=protected-access
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
    step_u, step_c = b.train_step, cached_step_for(config, b)
    state_u = b.init(jax.random.key(0))
    state_c = b.init(jax.random.key(0))

    def run_u(state):
      raw = next(uncached_it)
      batch = {"image": jnp.asarray(raw["image"]),
               "label": jnp.asarray(raw["label"], jnp.int32)}
      state, m = step_u(state, batch)
      jax.block_until_ready((state, m))
      return state

    def run_c(state):
      batch = jax.tree.map(jnp.asarray, next(cached_it))
      state, m = step_c(state, batch)
      jax.block_until_ready((state, m))
      return state

    state_u, state_c = run_u(state_u), run_c(state_c)     # compile + warm-up
    t_u = t_c = 0.0
    for _ in range(steps_n):
      t0 = time.perf_counter()
      state_u = run_u(state_u)
      t_u += time.perf_counter() - t0
      t0 = time.perf_counter()
      state_c = run_c(state_c)
      t_c += time.perf_counter() - t0
    cache_mib = cache.nbytes / MIB
  finally:
    shutil.rmtree(root, ignore_errors=True)
  measured = steps_n * bsz
  per_u, per_c, per_b = t_u / measured, t_c / measured, build_s / n
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
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from losa_jax import build, steps  # pylint: disable=g-import-not-at-top
  from losa_jax.models import model as model_lib  # pylint: disable=g-import-not-at-top
  from losa_jax.models import side as side_lib  # pylint: disable=g-import-not-at-top

  def analyse(jitted, *args):
    ca = jitted.lower(*args).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return float(ca.get("flops", 0.0)), float(ca.get("bytes accessed", 0.0))

  s = config.image_size
  fwd_fn, bb_shape = build.backbone_forward(config)
  images = jax.ShapeDtypeStruct((bsz, s, s, 3), jnp.float32)
  out = {}
  out["forward_gflop"], out["forward_gb"] = analyse(jax.jit(fwd_fn),
                                                    bb_shape, images)
  out["uncached_gflop"], out["uncached_gb"] = analyse(
      built.train_step, built.state_shape,
      steps.abstract_batch(bsz, built.image_shape))
  bb_kw = built.model.backbone_kwargs()
  losa = model_lib.merged(model_lib.LOSA_DEFAULTS, built.model.losa, "losa")
  taps = len(side_lib.tap_indices(bb_kw["depth"], losa["tap_every"]))
  width, patch = bb_kw["width"], bb_kw["patch_size"][0]
  tokens = (s // patch) ** 2 + 1
  feats = {"image": {"taps": jax.ShapeDtypeStruct(
      (bsz, taps, tokens, width), jnp.bfloat16)},
           "label": jax.ShapeDtypeStruct((bsz,), jnp.int32)}
  out["cached_gflop"], out["cached_gb"] = analyse(
      cached_step_for(config, built), built.state_shape, feats)
  return {k: v / 1e9 for k, v in out.items()}


SECTION_FNS = {"compiled": section_compiled, "dtype": section_dtype,
               "measured": section_measured, "cache": section_cache,
               "maxbatch": section_maxbatch, "big": section_big,
               "big_default": section_big_default_flags}


# --- driver ---------------------------------------------------------------------


def _log(msg: str):
  print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _csv_list(s: str) -> List[str]:
  return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(
      prog="python -m losa_jax.bench.suite", description=__doc__.split(
          "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--sections", default=",".join(SECTIONS))
  p.add_argument("--variants", default="Ti/16,S/16,B/16,L/16")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--dtype_variant", default="B/16")
  p.add_argument("--measure_variants", default="Ti/16,S/16,B/16")
  p.add_argument("--measure_batch", type=int, default=8)
  p.add_argument("--measure_methods", default=",".join(METHODS))
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--cache_variant", default="B/16")
  p.add_argument("--cache_images", type=int, default=128)
  p.add_argument("--maxbatch_variant", default="B/16")
  p.add_argument("--budget_gib", type=float, default=16.0)
  p.add_argument("--batch_step", type=int, default=8)
  p.add_argument("--batch_cap", type=int, default=16384)
  p.add_argument("--maxbatch_methods", default=",".join(METHODS))
  p.add_argument("--big_variants", default="H/14,g/14,G/14,e/14")
  p.add_argument("--big_batch", type=int, default=8)
  p.add_argument("--big_configs", default=",".join(c[0] for c in BIG_CONFIGS))
  p.add_argument("--linearity_variant", default="e/14")
  p.add_argument("--linearity_configs", default="losa,lora+remat,full+remat")
  p.add_argument("--quick", action="store_true",
                 help="tiny model, few steps: a smoke test of every section")
  p.add_argument("--reuse", action="store_true",
                 help="keep sections whose raw_<section>.json exists")
  p.add_argument("--in_process", action="store_true",
                 help="run every section in this process, with its XLA flags")
  p.add_argument("--child", default="", help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.quick:
    a.variants = a.measure_variants = "tiny"
    a.dtype_variant = a.cache_variant = a.maxbatch_variant = "tiny"
    a.big_variants = a.linearity_variant = "tiny"
    a.batch, a.measure_batch, a.reps, a.warmup = 4, 4, 2, 0
    a.cache_images, a.budget_gib, a.batch_step = 16, 0.02, 4
    a.maxbatch_methods, a.measure_methods = "losa", "losa,full"
    a.big_batch, a.big_configs = 4, "losa,full+remat"
    a.linearity_configs = "losa"
  for k in ("sections", "variants", "measure_variants", "big_variants",
            "big_configs", "linearity_configs", "maxbatch_methods",
            "measure_methods"):
    setattr(a, k, _csv_list(getattr(a, k)))
  bad = sorted(set(a.sections) - set(SECTIONS))
  if bad:
    p.error(f"unknown section(s) {bad}; choose from {list(SECTIONS)}")
  a.argv = list(sys.argv[1:] if argv is None else argv)
  return a


def _user_argv(argv: Sequence[str]) -> List[str]:
  """argv without the internal --child option."""
  out, skip = [], False
  for x in argv:
    if skip:
      skip = False
    elif x == "--child":
      skip = True
    elif not x.startswith("--child="):
      out.append(x)
  return out


def _raw_path(out, section):
  return os.path.join(out, f"raw_{section}.json")


def _run_child(a, sections: Sequence[str], flags: str) -> None:
  """Runs compile-only sections in a fresh process with XLA_FLAGS=flags."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + flags).strip()
  cmd = [sys.executable, "-m", "losa_jax.bench.suite", *a.argv,
         "--child", ",".join(sections)]
  _log(f"child process for {list(sections)} with XLA_FLAGS={flags or '(none)'}")
  subprocess.run(cmd, env=env, check=True)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  a = parse_args(argv)
  os.makedirs(a.out, exist_ok=True)
  if a.child:
    for section in _csv_list(a.child):
      _write_raw(a, section, SECTION_FNS[section](a))
    return {}

  t_start = time.time()
  load_start = os.getloadavg()
  # LoSA's big-model memory under default flags too (skipped by --quick:
  # one more process start for nothing new on a tiny model).
  wanted = list(a.sections) + (
      ["big_default"] if "big" in a.sections and not a.quick else [])
  todo = [s for s in wanted
          if not (a.reuse and os.path.exists(_raw_path(a.out, s)))]
  compile_todo = [s for s in todo if s in COMPILE_SECTIONS]
  timed_todo = [s for s in todo if s in TIMED_SECTIONS]
  if a.in_process:
    for s in todo:
      _write_raw(a, s, SECTION_FNS[s](a))
  else:
    if compile_todo:
      _run_child(a, compile_todo, f"{LICM_OFF} {FAST_COMPILE}")
    if "big_default" in todo:
      _run_child(a, ["big_default"], FAST_COMPILE)
    if timed_todo and a.quick:
      # Smoke test only: fast compiles, and the caller's process stays light.
      _run_child(a, timed_todo, FAST_COMPILE)
    else:
      for s in timed_todo:
        _write_raw(a, s, SECTION_FNS[s](a))

  # Every section present in --out, also from earlier (partial) runs: each
  # raw file records the command that produced it.
  results = {}
  for s in SECTIONS + ("big_default",):
    if os.path.exists(_raw_path(a.out, s)):
      with open(_raw_path(a.out, s)) as f:
        results[s] = json.load(f)
  meta = provenance(a, t_start, load_start)
  from losa_jax.bench import report  # pylint: disable=g-import-not-at-top
  report.write_all(a.out, results, meta)
  _log(f"wrote {a.out} in {time.time() - t_start:.0f}s")
  return results


def _write_raw(a, section, rows):
  path = _raw_path(a.out, section)
  payload = {"section": section, "rows": rows,
             "command": "python -m losa_jax.bench.suite " + " ".join(
                 _user_argv(a.argv)),
             "load_avg_end": os.getloadavg(),
             "xla_flags": os.environ.get("XLA_FLAGS", ""),
             "finished": datetime.datetime.now().isoformat(timespec="seconds"),
             "args": {k: v for k, v in vars(a).items() if k != "argv"}}
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1, default=str)
  os.replace(tmp, path)


def provenance(a, t_start, load_start) -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  cmd = "python -m losa_jax.bench.suite " + " ".join(_user_argv(a.argv))
  return {"command": cmd,
          "date": datetime.date.today().isoformat(),
          "machine": f"{os.cpu_count()} x {cpu}, {platform.system()}",
          "devices": str(jax.devices()), "jax": jax.__version__,
          "flax": flax.__version__, "python": platform.python_version(),
          "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
          "wall_s": time.time() - t_start, "quick": a.quick}


if __name__ == "__main__":
  main()
