# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The `fsdp` section: per-device memory of a LoSA train step under FSDP.

Compiles (on abstract inputs) the real LoSA train step of a scanned, bf16
backbone on meshes [("fsdp", n)] of 8 fake CPU devices with the default
strategy, a.batch_per_device images per device; XLA's memory analysis of an
SPMD executable is per device. With several a.depths, "fit" rows fit
peak ~ a + b * depth per mesh. docs/scaling.md ("FSDP memory") has the
figures and the columns.
"""
import time
from typing import Any, Dict, List, Sequence

import jax
import numpy as np

from losa_jax.assembly import build
from losa_jax.assembly import steps
from losa_jax.bench import common
from losa_jax.bench.configs import make_config
from losa_jax.bench.registry import FSDP_DEVICES
from losa_jax.models import vit
from losa_jax.parallel import sharding
from losa_jax.utils import cost
from losa_jax.utils import tree as tree_lib

GIB = common.GIB


def _local_bytes(tree_shape, tree_sharding) -> int:
  """Bytes one device holds of a tree, from each leaf's shard shape."""
  total = 0
  for x, s in zip(jax.tree.leaves(tree_shape), jax.tree.leaves(tree_sharding)):
    shard = s.shard_shape(x.shape)
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def measure(variant: str, depth: int, fsdp: int,
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
      **{k: c[k] for k in ("argument_bytes", "temp_bytes", "output_bytes",
                           "alias_bytes", "peak_bytes")},
      "compile_s": time.time() - t0}


def fit(rows: Sequence[Dict[str, Any]], full_depth: int):
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
      b, a = np.polyfit(d, y, 1)
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
  full_depth = vit.decode_variant(a.variant)["depth"]
  depths = list(a.depths) or [full_depth]
  rows: List[Dict[str, Any]] = []
  for depth in depths:
    for n in a.fsdp:
      rows.append(measure(a.variant, depth, n, a.batch_per_device))
      common.log(f"fsdp {a.variant} depth {depth} fsdp {n}: peak "
                 f"{rows[-1]['peak_bytes'] / GIB:.2f} GiB/dev")
  return rows + (fit(rows, full_depth) if len(depths) > 1 else [])
