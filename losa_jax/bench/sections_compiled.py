# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Compile-only sections: compiled, dtype, maxbatch, big (and big_default),
fsdp, video.

Nothing is executed, only lowered and compiled on abstract inputs, so the
numbers are deterministic for a jax/XLA version and backend. They run under
the XLA flags the registry names (LICM_OFF: see common.LICM_OFF).
docs/benchmarks.md, docs/scaling.md ("FSDP memory") and docs/video.md have
the figures and the columns.
"""
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from losa_jax.assembly import build
from losa_jax.assembly import steps
from losa_jax.bench import common
from losa_jax.bench.batch_search import largest_batch
from losa_jax.bench.configs import FIT_GIB
from losa_jax.bench.configs import depth_of, forward_cost, make_config
from losa_jax.bench.configs import step_cost, variant_backbone
from losa_jax.bench.registry import BIG_CONFIGS, FSDP_DEVICES
from losa_jax.config import schema as config_lib
from losa_jax.parallel import sharding
from losa_jax.utils import cost
from losa_jax.utils import tree as tree_lib

GIB, MIB = common.GIB, common.MIB
_log = common.log
_MEMORY = ("argument_bytes", "temp_bytes", "output_bytes", "alias_bytes",
           "peak_bytes")   # of utils.cost's fields


def section_compiled(a) -> List[Dict[str, Any]]:
  """Per variant and method at a.batch: params, FLOPs, memory, vs forward."""
  rows = []
  for variant in a.variants:
    fwd = forward_cost(make_config(variant, "losa"), a.batch)
    for method in ["forward", *a.methods]:
      t0 = time.time()
      c = fwd if method == "forward" else step_cost(
          make_config(variant, method), a.batch)
      rows.append({
          "variant": variant, "method": method, "batch": a.batch,
          "image_size": variant_backbone(variant)[1],
          **{k: c[k] for k in ("trainable_params", "total_params", "flops",
                               *_MEMORY)},
          "flops_vs_forward": c["flops"] / fwd["flops"],
          "peak_vs_forward": c["peak_bytes"] / fwd["peak_bytes"],
          "temp_vs_forward": c["temp_bytes"] / max(fwd["temp_bytes"], 1.0),
          "compile_s": time.time() - t0})
      _log(f"compiled {variant} {method}: {c['flops'] / 1e9:.1f} GFLOP, "
           f"peak {c['peak_bytes'] / MIB:.0f} MiB")
  # Ratios LoSA / other method, per variant.
  for variant in a.variants:
    per = {r["method"]: r for r in rows if r["variant"] == variant}
    for r in per.values() if "losa" in per else ():
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
    c = step_cost(make_config(a.variant, "losa", bf16=bf16, scan=scan),
                  a.batch, donate=donate)
    rows.append({"variant": a.variant, "method": "losa",
                 "batch": a.batch, "backbone": dtype,
                 "blocks": "scan" if scan else "unrolled", "donate": donate,
                 **{k: c[k] for k in _MEMORY}})
    _log(f"dtype {dtype} scan={scan} donate={donate}: peak "
         f"{c['peak_bytes'] / MIB:.0f} MiB")
  return rows


def section_maxbatch(a) -> List[Dict[str, Any]]:
  """Per method: the largest batch whose compiled peak fits a.budget_gib."""
  rows = []
  budget = a.budget_gib * GIB
  for method in a.methods:
    t0 = time.time()
    config = make_config(a.variant, method)
    best, at, probes = largest_batch(
        lambda b, c=config: step_cost(c, b)["peak_bytes"], budget,
        step=a.multiple, cap=a.cap)
    rows.append({"variant": a.variant, "method": method,
                 "image_size": variant_backbone(a.variant)[1],
                 "budget_gib": a.budget_gib, "max_batch": best,
                 "at_cap": best >= a.cap,
                 "peak_gib_at_max": at / GIB, "compiles": len(probes),
                 "probes": {str(k): v / GIB for k, v in sorted(probes.items())},
                 "search_s": time.time() - t0})
    _log(f"maxbatch {method}: {best} ({len(probes)} compiles)")
  return rows


def section_big(a) -> List[Dict[str, Any]]:
  """Big backbones (scanned, bf16): memory per config, and vs depth (1/8,
  1/4, 1/2 of a.linearity_variant's); the rows name the XLA flags they were
  compiled under (`big_default` is this section under XLA:CPU's defaults)."""
  flags = ("licm_off" if common.LICM_OFF in os.environ.get("XLA_FLAGS", "")
           else "default")
  cells = [(v, label, None) for v in a.variants
           for label, _, _ in BIG_CONFIGS if label in a.configs]
  if a.linearity_variant:
    full = depth_of(a.linearity_variant)
    cells += [(a.linearity_variant, label, d) for label, _, _ in BIG_CONFIGS
              if label in a.linearity_configs
              for d in sorted({max(1, full // k) for k in (8, 4, 2)})]
  by_label = {label: (m, r) for label, m, r in BIG_CONFIGS}
  rows = []
  for variant, label, depth in cells:
    t0 = time.time()
    method, remat = by_label[label]
    config = make_config(variant, method, bf16=True, scan=True, remat=remat,
                         depth=depth)
    if label == "losa f32":   # taps and side stream stored in float32
      config.model.losa.dtype = "float32"
    c = step_cost(config, a.batch)
    row = {"variant": variant, "config": label, "batch": a.batch,
           "depth": depth or depth_of(variant),
           "image_size": variant_backbone(variant)[1],
           "xla_flags": flags, "linearity": depth is not None,
           "total_params": c["total_params"],
           "trainable_params": c["trainable_params"],
           "argument_gib": c["argument_bytes"] / GIB,
           "temp_gib": c["temp_bytes"] / GIB,
           "peak_gib": c["peak_bytes"] / GIB, "compile_s": time.time() - t0}
    rows.append(dict(row, **{f"fits_{g}gib": row["peak_gib"] <= g
                             for g in FIT_GIB}))
    _log(f"big {variant} {label} depth {row['depth']} ({flags}): peak "
         f"{row['peak_gib']:.2f} GiB")
  return rows


# --- fsdp: per-device memory of a LoSA step (scanned, bf16) on meshes
# [("fsdp", n)] of fake CPU devices; XLA's memory analysis of an SPMD
# executable is per device.

def _local_bytes(tree_shape, tree_sharding) -> int:
  """Bytes one device holds of a tree, from each leaf's shard shape."""
  total = 0
  for x, s in zip(jax.tree.leaves(tree_shape), jax.tree.leaves(tree_sharding)):
    shard = s.shard_shape(x.shape)
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def fsdp_measure(variant: str, depth: int, fsdp: int,
                 batch_per_device: int) -> Dict[str, Any]:
  """Compiled per-device memory of one train step on a ("fsdp", n) mesh."""
  config = make_config(variant, "losa", bf16=True, scan=True, depth=depth,
                       num_classes=1000)
  config.sharding_strategy = sharding.DEFAULT_STRATEGY
  mesh = sharding.make_mesh([("fsdp", fsdp)], devices=jax.devices()[:fsdp])
  built = build.build(config, total_steps=1000, mesh=mesh)
  state_sh = built.state_sharding
  batch = steps.abstract_batch(batch_per_device * fsdp, built.image_shape)
  t0 = time.time()
  c = cost.compiled_cost(built.train_step, cost.abstract(
      built.state_shape, state_sh), batch)
  params = built.state_shape["params"]
  return {
      "kind": "compiled", "variant": variant, "depth": depth, "fsdp": fsdp,
      "global_batch": batch_per_device * fsdp,
      "total_params": tree_lib.count(params),
      "trainable_params": built.num_trainable(),
      "params_bytes": _local_bytes(params, state_sh["params"]),
      "frozen_bytes_total": sum(
          int(v.size) * v.dtype.itemsize
          for n, v in tree_lib.flatten(params).items() if not built.mask[n]),
      "opt_bytes": _local_bytes(built.state_shape["opt"], state_sh["opt"]),
      **{k: c[k] for k in _MEMORY},
      "compile_s": time.time() - t0}


def fsdp_fit(rows: Sequence[Dict[str, Any]], full_depth: int):
  """Per fsdp size: least squares peak ~ a + b * depth; predicted full."""
  out = []
  for n in sorted({r["fsdp"] for r in rows}):
    rs = sorted((r for r in rows if r["fsdp"] == n), key=lambda r: r["depth"])
    if len(rs) < 2:
      continue
    d = np.array([r["depth"] for r in rs], float)
    row = {"kind": "fit", "fsdp": n, "depths": d.tolist(),
           "full_depth": full_depth}
    for key in ("peak_bytes", "params_bytes", "temp_bytes"):
      y = np.array([r[key] for r in rs], float)
      b, a = common.linear_fit(d, y)
      resid = float(np.max(np.abs(a + b * d - y)) / max(np.max(y), 1.0))
      row[key] = {"per_block": float(b), "intercept": float(a),
                  "max_rel_residual": resid,
                  "at_full_depth": float(a + b * full_depth)}
    out.append(row)
  return out


def section_fsdp(a) -> List[Dict[str, Any]]:
  """Every (depth, mesh size) of a.depths x a.fsdp, then the fits."""
  bad = [n for n in a.fsdp if not 1 <= n <= FSDP_DEVICES]
  if bad:
    raise ValueError(f"--fsdp sizes {bad} are outside 1..{FSDP_DEVICES} (the "
                     "fake CPU devices); pass smaller mesh sizes.")
  jax.config.update("jax_platforms", "cpu")   # the fake devices are CPUs
  if len(jax.devices()) < max(a.fsdp):
    raise ValueError(f"--fsdp {a.fsdp} needs {max(a.fsdp)} devices, this "
                     f"process has {len(jax.devices())}: run it without "
                     "--in_process (the child fakes 8 CPU devices).")
  full_depth = depth_of(a.variant)
  depths = list(a.depths) or [full_depth]
  rows: List[Dict[str, Any]] = []
  for depth in depths:
    for n in a.fsdp:
      rows.append(fsdp_measure(a.variant, depth, n, a.batch_per_device))
      common.log(f"fsdp {a.variant} depth {depth} fsdp {n}: peak "
                 f"{rows[-1]['peak_bytes'] / GIB:.2f} GiB/dev")
  return rows + (fsdp_fit(rows, full_depth) if len(depths) > 1 else [])


# --- video: the train step of configs/video_kinetics400.py (or --config) for
# LoSA, the linear probe, adapters, ST-Adapters and full fine-tuning, with
# and without backbone remat, at larger batches and fractions of the depth;
# FLOPs from unrolled models of a few blocks, extrapolated to the full depth.

VIDEO_CONFIGS = (   # (label, method, backbone remat policy)
    ("LoSA (r=8, space+time)", "losa", "nothing_saveable"),
    ("linear probe", "linear", "nothing_saveable"),
    ("adapter (dim 8) + remat", "adapter", "nothing_saveable"),
    ("adapter (dim 8), no remat", "adapter", "none"),
    ("ST-Adapter (paper defaults) + remat", "st_adapter", "nothing_saveable"),
    ("ST-Adapter (paper defaults), no remat", "st_adapter", "none"),
    ("full fine-tuning + remat", "full", "nothing_saveable"),
    ("full fine-tuning, no remat", "full", "none"),
)
VIDEO_BATCHED = (0, 2, 4)   # the rows also compiled at a.batches
VIDEO_FLOPS = ("losa", "linear", "adapter", "st_adapter", "full")


def video_config(variant: str, method: str, *, frames: int, batch: int,
                 remat_policy: str = "nothing_saveable",
                 depth: Optional[int] = None, arg: str = "",
                 config: str = ""):
  """The config of video config file `config` (path.py; "": the checkout's
  configs/video_kinetics400.py) for variant, method, frames, batch and the
  extra get_config args `arg` ("rank=16,..."), with the backbone's remat
  policy and depth (None: the variant's) overridden."""
  path = config or config_lib.config_path("video_kinetics400")
  c = config_lib.load_config(path + ":" + ",".join(
      a for a in (f"variant={variant}", f"method={method}",
                  f"frames={frames}", f"batch={batch}", arg) if a))
  c.model.backbone.remat_policy = remat_policy
  if depth:
    c.model.backbone.depth = depth
  return c


def step_memory(config, batch: int) -> Dict[str, Any]:
  """Compiled memory of the trainer's train step on abstract inputs."""
  t0 = time.time()
  c = step_cost(config, batch)
  return {"total_params": c["total_params"],
          "trainable_params": c["trainable_params"],
          "params_gib": c["argument_bytes"] / GIB,
          "temp_gib": c["temp_bytes"] / GIB,
          "peak_gib": c["peak_bytes"] / GIB,
          "compile_s": time.time() - t0}


def _video_memory(a, full_depth: int) -> List[Dict[str, Any]]:
  cells = [(label, m, r, a.batch, None) for label, m, r in VIDEO_CONFIGS]
  cells += [(*VIDEO_CONFIGS[i], b, None) for b in a.batches
            for i in VIDEO_BATCHED]
  depths = sorted({max(1, full_depth // k) for k in a.depth_fracs})
  cells += [(label, m, r, a.batch, d) for d in depths
            for label, m, r in VIDEO_CONFIGS]
  rows = []
  for label, method, remat, b, depth in cells:
    cfg = video_config(a.variant, method, frames=a.frames, batch=b,
                       remat_policy=remat, depth=depth, arg=a.arg,
                       config=a.config)
    row = {"config": label, "method": method, "remat_policy": remat,
           "variant": a.variant, "frames": a.frames, "batch": b,
           "depth": depth or full_depth,
           "clip": tuple(cfg.image_size), **step_memory(cfg, b)}
    row.update(fits_16gib=row["peak_gib"] <= 16.0, kind="memory")
    common.log(f"{label:28s} batch {b} depth {row['depth']:>2}: params "
               f"{row['params_gib']:7.2f} GiB, temp {row['temp_gib']:6.2f} "
               f"GiB, peak {row['peak_gib']:7.2f} GiB "
               f"({row['compile_s']:.0f} s)", tag="video")
    rows.append(row)
  return rows


def _video_flops(a, full_depth: int) -> List[Dict[str, Any]]:
  """XLA counts a scanned body once, so FLOPs come from unrolled models of
  a.flops_depths blocks, extrapolated linearly (stem + head + depth x
  block) to the full depth; the rows report the fit."""
  rows = []
  for method in VIDEO_FLOPS:
    per = {}
    for d in a.flops_depths:
      cfg = video_config(a.variant, method, frames=a.frames, batch=a.batch,
                         depth=d, arg=a.arg, config=a.config)
      cfg.model.backbone.scan = False
      per[d] = step_cost(cfg, a.batch)["flops"] / 1e9
    d0, d1 = min(per), max(per)
    slope = (per[d1] - per[d0]) / (d1 - d0)
    row = {"method": method, "batch": a.batch,
           **{f"gflops_depth{d}": v for d, v in per.items()},
           "gflops_per_block": slope, "full_depth": full_depth,
           "gflops_full_extrapolated": per[d0] + slope * (full_depth - d0)}
    common.log(f"flops {method:8s}: " + ", ".join(
        f"depth {d} {v:.0f}" for d, v in per.items()) +
        f" -> depth {full_depth} {row['gflops_full_extrapolated']:.0f} "
        "GFLOP", tag="video")
    rows.append(row)
  for r in rows:
    r.update(vs_losa=r["gflops_full_extrapolated"] /
             rows[0]["gflops_full_extrapolated"], kind="flops")
  return rows


def section_video(a) -> List[Dict[str, Any]]:
  """Memory rows ("kind": "memory"), then FLOPs rows ("flops") if
  a.flops_depths."""
  full_depth = depth_of(a.variant)
  return _video_memory(a, full_depth) + (
      _video_flops(a, full_depth) if a.flops_depths else [])
