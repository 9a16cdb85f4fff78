# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""The `video` section: compiled memory of one video train step, ViT-e.

  python -m losa_jax.bench video --out DIR      # DIR/video.json

Compile only, on abstract inputs (`configs.step_cost`): the trainer's train
step of configs/video_kinetics400.py (--config: another video config file)
for LoSA, the linear probe, adapters and full fine-tuning, with and without
backbone remat, at larger batches and at 1/8, 1/4, 1/2 of the depth (rows:
`run`); FLOPs from unrolled models of a few blocks, extrapolated to the
full depth (XLA counts a scanned body once; rows: `flops`).
docs/video.md gives the defaults, the XLA flag and the columns' meaning.
"""
import time
from typing import Any, Dict, List, Optional, Sequence

from losa_jax.bench import common
from losa_jax.bench import configs
from losa_jax.config import schema as config_lib
from losa_jax.models import vit

GIB = common.GIB
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


def _log(msg: str) -> None:
  common.log(msg, tag="video")


def video_config(variant: str, method: str, *, frames: int, batch: int,
                 remat_policy: str = "nothing_saveable",
                 depth: Optional[int] = None, arg: str = "",
                 config: str = ""):
  """The video config file's config for one bench cell.

  Args:
    variant, method, frames, batch: passed to the config's get_config.
    remat_policy: backbone remat policy (scanned blocks).
    depth: overrides the variant's depth.
    arg: extra comma-separated get_config args, e.g. "rank=16".
    config: a video config file (path.py); "" is the checkout's
      configs/video_kinetics400.py.
  """
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
  c = configs.step_cost(config, batch)
  return {"total_params": c["total_params"],
          "trainable_params": c["trainable_params"],
          "params_gib": c["argument_bytes"] / GIB,
          "temp_gib": c["temp_bytes"] / GIB,
          "peak_gib": c["peak_bytes"] / GIB,
          "compile_s": time.time() - t0}


def run(variant: str = "e/14", frames: int = 16, batch: int = 1,
        batches: Sequence[int] = (2, 4), depth_fracs: Sequence[int] = (8, 4, 2),
        arg: str = "", config: str = "") -> List[Dict[str, Any]]:
  """All rows (see the module docstring)."""
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
                       remat_policy=remat, depth=depth, arg=arg,
                       config=config)
    row = {"config": label, "method": method, "remat_policy": remat,
           "variant": variant, "frames": frames, "batch": b,
           "depth": depth or full_depth,
           "clip": tuple(cfg.image_size), **step_memory(cfg, b)}
    row["fits_16gib"] = row["peak_gib"] <= BUDGET_GIB
    _log(f"{label:28s} batch {b} depth {row['depth']:>2}: params "
        f"{row['params_gib']:7.2f} GiB, temp {row['temp_gib']:6.2f} GiB, "
        f"peak {row['peak_gib']:7.2f} GiB ({row['compile_s']:.0f} s)")
    rows.append(row)
  return rows


def flops(variant: str = "e/14", frames: int = 16, batch: int = 1,
          depths: Sequence[int] = (2, 4), arg: str = "",
          config: str = "") -> List[Dict[str, Any]]:
  """XLA FLOPs of one train step on unrolled blocks (no scan, no remat).

  XLA counts a scanned body once, so the FLOPs come from unrolled models of
  `depths` blocks, extrapolated linearly to the full depth (FLOPs are affine
  in depth: stem + head + depth x block); the rows report the fit.
  """
  full_depth = vit.decode_variant(variant)["depth"]
  rows = []
  for method in ("losa", "linear", "adapter", "full"):
    per = {}
    for d in depths:
      cfg = video_config(variant, method, frames=frames, batch=batch,
                         depth=d, arg=arg, config=config)
      cfg.model.backbone.scan = False
      per[d] = configs.step_cost(cfg, batch)["flops"] / 1e9
    d0, d1 = min(depths), max(depths)
    slope = (per[d1] - per[d0]) / (d1 - d0)
    row = {"method": method, "batch": batch,
           **{f"gflops_depth{d}": v for d, v in per.items()},
           "gflops_per_block": slope,
           "full_depth": full_depth,
           "gflops_full_extrapolated": per[d0] + slope * (full_depth - d0)}
    _log(f"flops {method:8s}: " + ", ".join(
        f"depth {d} {v:.0f}" for d, v in per.items()) +
        f" -> depth {full_depth} {row['gflops_full_extrapolated']:.0f} "
        "GFLOP")
    rows.append(row)
  base = rows[0]["gflops_full_extrapolated"]
  for r in rows:
    r["vs_losa"] = r["gflops_full_extrapolated"] / base
  return rows


def section_video(a) -> List[Dict[str, Any]]:
  """Memory rows (module docstring), then "flops" rows if a.flops_depths."""
  kw = dict(arg=a.arg, config=a.config)
  rows = run(a.variant, a.frames, a.batch, a.batches, a.depth_fracs, **kw)
  for r in rows:
    r["kind"] = "memory"
  if a.flops_depths:
    rows += [dict(r, kind="flops") for r in flops(
        a.variant, a.frames, a.batch, a.flops_depths, **kw)]
  return rows
