# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Compile-only sections: compiled, dtype, maxbatch, big (and big_default).

Each takes its options (losa_jax/bench/registry.py) and returns its rows;
nothing is executed, only lowered and compiled on abstract inputs, so the
numbers are deterministic for a jax/XLA version and backend. They run under
the XLA flags the registry names (LICM_OFF: see common.LICM_OFF).
"""
import os
import time
from typing import Any, Dict, List

from losa_jax.bench import common
from losa_jax.bench.batch_search import largest_batch
from losa_jax.bench.configs import BIG_CONFIGS, FIT_GIB, METHODS
from losa_jax.bench.configs import depth_of, forward_cost, make_config
from losa_jax.bench.configs import step_cost, variant_backbone

GIB, MIB = common.GIB, common.MIB
_log = common.log


def section_compiled(a) -> List[Dict[str, Any]]:
  """Per variant and method at a.batch: params, FLOPs, memory, vs forward."""
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
    c = step_cost(make_config(a.variant, "losa", bf16=bf16, scan=scan),
                  a.batch, donate=donate)
    rows.append({"variant": a.variant, "method": "losa",
                 "batch": a.batch, "backbone": dtype,
                 "blocks": "scan" if scan else "unrolled", "donate": donate,
                 **{k: c[k] for k in ("argument_bytes", "temp_bytes",
                                      "output_bytes", "alias_bytes",
                                      "peak_bytes")}})
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
  """Big backbones (scanned, bf16): memory per config, and vs depth; the
  rows name the XLA flags they were compiled under (the `big_default`
  section is this one under XLA:CPU's default flags)."""
  flags = ("licm_off" if common.LICM_OFF in os.environ.get("XLA_FLAGS", "")
           else "default")
  rows = []
  for variant in a.variants:
    for label, method, remat in BIG_CONFIGS:
      if label not in a.configs:
        continue
      t0 = time.time()
      config = make_config(variant, method, bf16=True, scan=True,
                           remat=remat)
      if label == "losa f32":   # taps and side stream stored in float32
        config.model.losa.dtype = "float32"
      c = step_cost(config, a.batch)
      rows.append(_big_row(variant, label, a.batch, depth_of(variant), c,
                           flags, time.time() - t0))
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
                      a.batch)
        rows.append(_big_row(a.linearity_variant, label, a.batch, d, c,
                             flags, time.time() - t0, linearity=True))
  return rows


def _big_row(variant, label, batch, depth, c, flags, seconds,
             linearity=False):
  """One row of the big section from a step_cost result `c`."""
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
