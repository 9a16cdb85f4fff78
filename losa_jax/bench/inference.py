# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The `inference` section: serving N tasks with one backbone pass + N
side networks (`losa_jax.serving.multitask`) vs N merged LoRA / full models.

Systems: losa, lora_merged (N LoRA models merged into their weights: N
plain-ViT passes), full (lora_merged's program on the same weight buffers:
a second timing of it) and backbone (the frozen backbone alone). The cells
of a (variant, batch) are timed in the same interleaved rounds; an N-copy
cell with N x batch above --max_copy_images is scaled from N=1.
docs/serving.md says what each column means.
"""
import os
import tempfile
from typing import Any, Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import build
from losa_jax.bench import common
from losa_jax.bench import configs
from losa_jax.bench import harness
from losa_jax.config import schema as config_lib
from losa_jax.models import model as model_lib
from losa_jax.serving import multitask
from losa_jax.utils import cost
from losa_jax.utils import npz as npz_lib
from losa_jax.utils import tree as tree_lib

COPY_SYSTEMS = ("lora_merged", "full")
_log = common.log


def _npz_bytes(tree) -> int:
  """Size of a params-only npz of `tree`, written to a temporary folder."""
  with tempfile.TemporaryDirectory() as d:
    path = npz_lib.save_npz(jax.device_get(tree), os.path.join(d, "t.npz"))
    return os.path.getsize(path)


class _Variant:
  """Models and random params of one variant, shared by its cells."""

  def __init__(self, variant: str, a):
    self.variant, max_tasks = variant, max(a.tasks)
    cfg = configs.make_config(variant, "losa", rank=a.rank,
                              num_classes=a.num_classes)
    self.image_shape = config_lib.input_shape(cfg)
    self.losa = build.model_from_config(cfg)
    self.plain = model_lib.Model(a.num_classes, method="full",
                                 backbone=dict(cfg.model.backbone))
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    shape = jax.eval_shape(lambda r: self.losa.init(r, x),
                           jax.random.key(0))["params"]
    self.backbone = harness.random_tree(shape["backbone"], seed=0)
    side = {k: v for k, v in shape.items() if k != "backbone"}
    self.sides = [harness.random_tree(side, seed=1 + i)
                  for i in range(max_tasks)]
    self.bb_jit = jax.jit(build.backbone_forward(cfg)[0])
    # N distinct weight copies, as N deployed models hold (the N=1 and N=4
    # cells use the first ones). `full` runs the same program on
    # same-shaped weights, so it shares lora_merged's buffers (16 B/16
    # copies are 5.5 GB already): its rows are a second, independent timing
    # of that program.
    copies = None
    if any(s in a.systems for s in COPY_SYSTEMS):
      plain_shape = jax.eval_shape(lambda r: self.plain.init(r, x),
                                   jax.random.key(0))["params"]
      copies = [harness.random_tree(plain_shape, seed=100 + i)
                for i in range(max_tasks)]
    self.copies = {s: copies for s in COPY_SYSTEMS}
    lora_cfg = configs.make_config(variant, "lora", rank=a.rank,
                                   num_classes=a.num_classes)
    lora_shape = jax.eval_shape(
        lambda r: build.model_from_config(lora_cfg).init(r, x),
        jax.random.key(0))["params"]
    self.lora_factor_params = sum(
        int(v.size) for n, v in tree_lib.flatten(lora_shape).items()
        if "_lora/" in n or n.startswith("head/"))
    self.side_npz_bytes = _npz_bytes(self.sides[0])

  def multitask(self, system: str, n: int):
    """A MultiTask serving n tasks of `system`."""
    if system == "losa":
      tasks = [multitask.Task(f"t{i}", self.losa, "backbone0")
               for i in range(n)]
      params = {"backbones": {"backbone0": self.backbone},
                "tasks": {f"t{i}": self.sides[i] for i in range(n)}}
    else:
      tasks = [multitask.Task(f"t{i}", self.plain, None,
                              method="lora" if system == "lora_merged"
                              else "full") for i in range(n)]
      params = {"backbones": {},
                "tasks": {f"t{i}": self.copies[system][i] for i in range(n)}}
    return multitask.MultiTask(tasks, params, image_shape=self.image_shape)

  def storage_per_task(self, system: str) -> int:
    """Bytes on disk one more task costs (params-only files)."""
    if system == "losa":
      return self.side_npz_bytes
    if system in COPY_SYSTEMS:      # the whole model, once merged
      return sum(x.nbytes for x in jax.tree.leaves(self.copies[system][0]))
    return 0


def _cell(v: _Variant, system: str, n: int, x):
  """(row, blocking call) of `system` serving `n` tasks on images `x`."""
  if system == "backbone":
    jitted, params = v.bb_jit, v.backbone
    resident, passes = tree_lib.count(v.backbone), 1
  else:
    mt = v.multitask(system, n)
    jitted, params = mt.fn, mt.params
    resident, passes = mt.param_counts()["resident"], mt.num_backbone_passes
  compiled = jitted.lower(params, x).compile()
  fn = lambda: jax.block_until_ready(compiled(params, x))
  c = cost.cost_of_compiled(compiled)
  row = {"variant": v.variant, "batch": int(x.shape[0]), "system": system,
         "tasks": n, "backbone_passes": passes, "flops": c["flops"],
         "peak_bytes": c["peak_bytes"], "params_resident": resident,
         "bytes_per_task": v.storage_per_task(system)}
  if system == "lora_merged":
    row["lora_factor_bytes_per_task"] = 4 * v.lora_factor_params
  return row, fn


def _timed(cells, times, batch: int) -> List[Dict[str, Any]]:
  """The cells' rows with their times: measured, or N x the N=1 time."""
  for key, row in cells.items():
    if key in times:
      t = times[key]
      row.update(median_s=t["median_s"], q25_s=t["q25_s"], q75_s=t["q75_s"],
                 reps=t["reps"], timed="measured")
    else:
      one = times[f"{row['system']}@1"]["median_s"]
      row.update(median_s=row["tasks"] * one, reps=0, timed="scaled from N=1")
    row["images_per_s"] = batch / row["median_s"]
    row["latency_ms"] = 1e3 * row["median_s"]
    _log(f"  {key}: {row['latency_ms']:.1f} ms/call ({row['images_per_s']:.1f}"
         f" images/s, {row['timed']})", tag="inference")
  return list(cells.values())


def measure(a) -> List[Dict[str, Any]]:
  """One row per (variant, batch, system, N) of the section's options `a`
  (registry.options("inference", ...)); see the module doc."""
  rows = []
  for variant in a.variants:
    _log(f"{variant}: random params for up to {max(a.tasks)} tasks of "
         f"{[s for s in a.systems if s != 'backbone']}", tag="inference")
    v = _Variant(variant, a)
    for batch in a.batches:
      x = jnp.asarray(np.random.RandomState(0).uniform(
          -1, 1, (batch, *v.image_shape)), jnp.float32)
      cells, fns = {}, {}
      for system in a.systems:
        for n in ([1] if system == "backbone" else a.tasks):
          key = f"{system}@{n}"
          cells[key], fn = _cell(v, system, n, x)
          if not (system in COPY_SYSTEMS and n > 1 and a.max_copy_images
                  and n * batch > a.max_copy_images):
            fns[key] = fn
      _log(f"{variant} batch {batch}: timing {list(fns)} ({a.reps} rounds)",
           tag="inference")
      rows += _timed(cells, common.interleaved(fns, reps=a.reps,
                                               warmup=a.warmup), batch)
    del v
  return rows


def summarize(rows: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Per (variant, batch), at the largest N measured: losa_vs_merged_lora
  (throughput ratio), marginal_task_time / _flops ((cost(N) - cost(1)) /
  (N - 1) of LoSA, in backbone forwards), single_task_(flops_)overhead
  (LoSA N=1 / merged LoRA N=1 - 1), bytes_per_task (LoSA's)."""
  out = []
  for variant, batch in sorted({(r["variant"], r["batch"]) for r in rows}):
    cell = {(r["system"], r["tasks"]): r for r in rows
            if r["variant"] == variant and r["batch"] == batch}
    n = max(t for s, t in cell if s == "losa") if any(
        s == "losa" for s, _ in cell) else None
    s = {"variant": variant, "batch": batch, "tasks": n}
    losa_n, losa_1 = cell.get(("losa", n)), cell.get(("losa", 1))
    bb = cell.get(("backbone", 1))
    lora_n, lora_1 = cell.get(("lora_merged", n)), cell.get(("lora_merged", 1))
    if losa_n and lora_n:
      s["losa_vs_merged_lora"] = lora_n["median_s"] / losa_n["median_s"]
      s["losa_vs_merged_lora_timed"] = lora_n["timed"]
    if losa_n and losa_1 and bb and n and n > 1:
      s["marginal_task_time"] = ((losa_n["median_s"] - losa_1["median_s"]) /
                                 (n - 1) / bb["median_s"])
      s["marginal_task_flops"] = ((losa_n["flops"] - losa_1["flops"]) /
                                  (n - 1) / bb["flops"])
    if losa_1 and lora_1:
      s["single_task_overhead"] = (losa_1["median_s"] /
                                   lora_1["median_s"] - 1)
      s["single_task_flops_overhead"] = losa_1["flops"] / lora_1["flops"] - 1
    if losa_1:
      s["bytes_per_task"] = losa_1["bytes_per_task"]
    out.append(s)
  return out


def section_inference(a) -> List[Dict[str, Any]]:
  """The cells ("kind": "cell"), then the ratios of `summarize` ("summary")."""
  rows = measure(a)
  return ([dict(r, kind="cell") for r in rows] +
          [dict(r, kind="summary") for r in summarize(rows)])
