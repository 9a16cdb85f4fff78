# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Compiled memory of one video train step: LoSA vs adapters vs full, ViT-e.

  python -m losa_jax.bench.video_memory --out docs/video_memory.json

Compile only: the train step of configs/video_kinetics400.py (the trainer's
own `build.build`, AdamW, masked gradient clipping) is lowered and compiled
on abstract inputs (`losa_jax.cost.compiled_cost`); no parameter or
activation is ever allocated, so a 3.8B-parameter ViViT-e fits on a laptop.
Defaults: ViT-e/14 ViViT, 16 frames, 2x14x14 tubelets at 224 px (8 x 256
tokens), batch 1, bf16 backbone matmuls (`dtype_mm`), frozen params stored
in bf16 (`model_load.param_dtype`; `full` keeps f32 params, it trains them),
scanned blocks with per-block remat ("nothing_saveable").

Rows: LoSA (rank 8, factorised space+time mixing), linear probe, bottleneck
adapters (dim 8) with and without backbone remat, full fine-tuning with and
without remat; then LoSA and adapters at larger batches, and every method at
1/8, 1/4, 1/2 and full depth (the scanned layout compiles the full model in
seconds, so nothing is extrapolated; the depth rows show that memory is
linear in depth).

Columns: `params` = argument bytes (params + optimizer state + batch),
`temp` = XLA temporaries (activations kept for the backward, workspaces),
`peak` = params + temp (outputs alias the donated state). XLA:CPU
estimates: XLA:CPU has no native bf16 GEMM, so the run disables the
while-loop-invariant code motion pass (which would hoist an f32 upcast of the
whole scanned weight stack out of the layer loop, a copy a GPU never makes;
see losa_jax/bench/suite.py). XLA's FLOP counts do not multiply a while
loop's body by its trip count, so FLOPs are compiled separately on unrolled
(scan=False, hence no remat) models of 2 and 4 blocks and extrapolated
linearly to the full depth; remat would add about one more forward to the
backprop methods.
"""
import argparse
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

LICM_OFF = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"
GIB = 2.0**30
BUDGET_GIB = 16.0
# (label, method, backbone remat policy)
CONFIGS = (
    ("LoSA (r=8, space+time)", "losa", "nothing_saveable"),
    ("linear probe", "linear", "nothing_saveable"),
    ("adapter (dim 8) + remat", "adapter", "nothing_saveable"),
    ("adapter (dim 8), no remat", "adapter", "none"),
    ("full fine-tuning + remat", "full", "nothing_saveable"),
    ("full fine-tuning, no remat", "full", "none"),
)


def video_config(variant: str, method: str, *, frames: int, batch: int,
                 remat_policy: str = "nothing_saveable",
                 depth: Optional[int] = None, arg: str = ""):
  """configs/video_kinetics400.py for one bench cell."""
  from configs import video_kinetics400  # pylint: disable=g-import-not-at-top
  c = video_kinetics400.get_config(
      ",".join(a for a in (f"variant={variant}", f"method={method}",
                           f"frames={frames}", f"batch={batch}", arg) if a))
  c.model.backbone.remat_policy = remat_policy
  if depth:
    c.model.backbone.depth = depth
  return c


def step_memory(config, batch: int) -> Dict[str, Any]:
  """Compiled memory of the trainer's train step on abstract inputs."""
  from losa_jax import build  # pylint: disable=g-import-not-at-top
  from losa_jax import cost  # pylint: disable=g-import-not-at-top
  from losa_jax import steps  # pylint: disable=g-import-not-at-top
  from losa_jax import tree as tree_lib  # pylint: disable=g-import-not-at-top
  t0 = time.time()
  b = build.build(config, total_steps=1000)
  c = cost.compiled_cost(b.train_step, b.state_shape,
                         steps.abstract_batch(batch, b.image_shape))
  return {"total_params": tree_lib.count(b.state_shape["params"]),
          "trainable_params": b.num_trainable(),
          "params_gib": c["argument_bytes"] / GIB,
          "temp_gib": c["temp_bytes"] / GIB,
          "peak_gib": c["peak_bytes"] / GIB,
          "compile_s": time.time() - t0}


def run(variant: str = "e/14", frames: int = 16, batch: int = 1,
        batches: Sequence[int] = (2, 4), depth_fracs: Sequence[int] = (8, 4, 2),
        arg: str = "", log=print) -> List[Dict[str, Any]]:
  """All rows (see the module docstring)."""
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top
  full_depth = vit.decode_variant(variant)["depth"]
  cells = [(label, m, r, batch, None) for label, m, r in CONFIGS]
  cells += [(label, m, r, b, None) for b in batches
            for label, m, r in CONFIGS[:4:2]]          # LoSA, adapter+remat
  depths = sorted({max(1, full_depth // k) for k in depth_fracs})
  cells += [(label, m, r, batch, d) for d in depths
            for label, m, r in CONFIGS]
  rows = []
  for label, method, remat, b, depth in cells:
    cfg = video_config(variant, method, frames=frames, batch=b,
                       remat_policy=remat, depth=depth, arg=arg)
    row = {"config": label, "method": method, "remat_policy": remat,
           "variant": variant, "frames": frames, "batch": b,
           "depth": depth or full_depth,
           "clip": tuple(cfg.image_size), **step_memory(cfg, b)}
    row["fits_16gib"] = row["peak_gib"] <= BUDGET_GIB
    log(f"{label:28s} batch {b} depth {row['depth']:>2}: params "
        f"{row['params_gib']:7.2f} GiB, temp {row['temp_gib']:6.2f} GiB, "
        f"peak {row['peak_gib']:7.2f} GiB ({row['compile_s']:.0f} s)")
    rows.append(row)
  return rows


def flops(variant: str = "e/14", frames: int = 16, batch: int = 1,
          depths: Sequence[int] = (2, 4), arg: str = "",
          log=print) -> List[Dict[str, Any]]:
  """XLA FLOPs of one train step on unrolled blocks (no scan, no remat).

  XLA counts a scanned body once, so the FLOPs come from unrolled models of
  `depths` blocks, extrapolated linearly to the full depth (FLOPs are affine
  in depth: stem + head + depth x block); the rows report the fit.
  """
  from losa_jax import build  # pylint: disable=g-import-not-at-top
  from losa_jax import cost  # pylint: disable=g-import-not-at-top
  from losa_jax import steps  # pylint: disable=g-import-not-at-top
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top
  full_depth = vit.decode_variant(variant)["depth"]
  rows = []
  for method in ("losa", "linear", "adapter", "full"):
    per = {}
    for d in depths:
      cfg = video_config(variant, method, frames=frames, batch=batch,
                         depth=d, arg=arg)
      cfg.model.backbone.scan = False
      b = build.build(cfg, total_steps=1000)
      per[d] = cost.compiled_cost(b.train_step, b.state_shape,
                                  steps.abstract_batch(batch, b.image_shape)
                                  )["flops"] / 1e9
    d0, d1 = min(depths), max(depths)
    slope = (per[d1] - per[d0]) / (d1 - d0)
    row = {"method": method, "batch": batch,
           **{f"gflops_depth{d}": v for d, v in per.items()},
           "gflops_per_block": slope,
           "full_depth": full_depth,
           "gflops_full_extrapolated": per[d0] + slope * (full_depth - d0)}
    log(f"flops {method:8s}: " + ", ".join(
        f"depth {d} {v:.0f}" for d, v in per.items()) +
        f" -> depth {full_depth} {row['gflops_full_extrapolated']:.0f} "
        "GFLOP")
    rows.append(row)
  base = rows[0]["gflops_full_extrapolated"]
  for r in rows:
    r["vs_losa"] = r["gflops_full_extrapolated"] / base
  return rows


def flops_table(rows: Sequence[Dict[str, Any]]) -> str:
  depths = sorted(int(k[len("gflops_depth"):]) for k in rows[0]
                  if k.startswith("gflops_depth"))
  full = rows[0]["full_depth"]
  out = ["| method | " + " | ".join(f"GFLOP, depth {d}" for d in depths) +
         f" | GFLOP per block | GFLOP, depth {full} (extrapolated) | "
         "vs LoSA |", "|---" * (len(depths) + 4) + "|"]
  for r in rows:
    out.append(f"| {r['method']} | " + " | ".join(
        f"{r[f'gflops_depth{d}']:.0f}" for d in depths) +
               f" | {r['gflops_per_block']:.0f} | "
               f"{r['gflops_full_extrapolated']:,.0f} | {r['vs_losa']:.2f} |")
  return "\n".join(out)


def table(rows: Sequence[Dict[str, Any]], *, depth: Optional[int] = None,
          batch: Optional[int] = None) -> str:
  """Markdown table of the rows at one depth and batch (None: any)."""
  out = ["| method | batch | depth | trainable params | params + opt (GiB) "
         "| temporaries (GiB) | peak (GiB) | fits 16 GiB |",
         "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    if (depth is not None and r["depth"] != depth) or (
        batch is not None and r["batch"] != batch):
      continue
    out.append(f"| {r['config']} | {r['batch']} | {r['depth']} | "
               f"{r['trainable_params']:,} | {r['params_gib']:.2f} | "
               f"{r['temp_gib']:.2f} | {r['peak_gib']:.2f} | "
               f"{'yes' if r['fits_16gib'] else 'no'} |")
  return "\n".join(out)


def provenance(argv: Sequence[str]) -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  return {"command": "python -m losa_jax.bench.video_memory " +
                     " ".join(argv),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
              timespec="seconds"),
          "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, "
                     f"{platform.system()} {platform.release()}",
          "backend": jax.default_backend(),
          "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def main(argv: Optional[Sequence[str]] = None):
  argv = list(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--variant", default="e/14")
  p.add_argument("--frames", type=int, default=16)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--batches", default="2,4",
                 help="extra batch sizes for LoSA and adapter+remat")
  p.add_argument("--depth_fracs", default="8,4,2",
                 help="also compile at depth // k for these k")
  p.add_argument("--flops_depths", default="2,4",
                 help="blocks of the unrolled models for FLOPs ('': skip)")
  p.add_argument("--arg", default="",
                 help="extra configs/video_kinetics400.py args, e.g. rank=16")
  p.add_argument("--default_flags", action="store_true",
                 help="keep XLA's while-loop-invariant code motion")
  p.add_argument("--out", default=None, help="JSON file for the rows")
  a = p.parse_args(argv)
  if not a.default_flags and LICM_OFF not in os.environ.get("XLA_FLAGS", ""):
    if "jax" in sys.modules:
      print("warning: jax already imported; XLA_FLAGS change may not apply")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               LICM_OFF).strip()
  ints = lambda s: [int(x) for x in s.split(",") if x]
  rows = run(a.variant, a.frames, a.batch, ints(a.batches),
             ints(a.depth_fracs), a.arg)
  frows = (flops(a.variant, a.frames, a.batch, ints(a.flops_depths), a.arg)
           if a.flops_depths else [])
  prov = provenance(argv)
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top
  full_depth = vit.decode_variant(a.variant)["depth"]
  print()
  print(f"{prov['date']}, {prov['machine']}, XLA:{prov['backend'].upper()} "
        f"estimates, jax {prov['jax']}")
  print(table(rows, depth=full_depth, batch=a.batch))
  if frows:
    print()
    print(flops_table(frows))
  if a.out:
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
      json.dump({"provenance": prov, "rows": rows, "flops": frows}, f,
                indent=2)
  return rows


if __name__ == "__main__":
  main()
