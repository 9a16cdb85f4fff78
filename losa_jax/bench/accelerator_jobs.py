# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The measuring side of the accelerator section: one job per call.

Each job takes a spec (a JSON-able dict that losa_jax/bench/accelerator.py
writes) and returns {"rows": [...], ...}. The parent usually runs every job
in a fresh process (`python -m losa_jax.bench.accelerator_jobs SPEC OUT`),
so that `device.memory_stats()["peak_bytes_in_use"]`, which no backend can
reset, belongs to that job alone, and a job that crashes or overruns costs
only its own rows. Each job records whether TensorFlow got loaded.
"""
import gc
import json
import sys
import time
from typing import Any, Dict, List

import numpy as np

from losa_jax.bench import accelerator_check
from losa_jax.bench import common
from losa_jax.bench import accelerator_model as am

GIB = am.GIB
_log = common.log


# --- jobs -----------------------------------------------------------------------


def job_check(spec) -> Dict[str, Any]:
  """A tiny LoSA step on the accelerator vs jax's CPU backend, f32 and bf16;
  the fused side network's gradients at the default matmul precision vs
  float64; and the cost guard: compiled LoSA step FLOPs / backbone forward
  FLOPs."""
  rows = [accelerator_check.compare_step(spec, dtype)
          for dtype in ("float32", "bfloat16")]
  guard = [accelerator_check.cost_guard(spec, spec["guard_variant"], bsz)
           for bsz in spec["guard_batches"]]
  return {"rows": rows, "guard": guard,
          "precision": accelerator_check.compare_precision()}


def _first_call(m, bsz: int):
  """Compiles and runs `m` once at `bsz`: (blocking runner, cost fields)."""
  batch = m.batch(bsz)
  compiled, c = m.compile(batch)
  fn = m.runner(compiled, batch)
  fn()   # the first real call: the one that may not fit
  return fn, c


def job_timing(spec) -> Dict[str, Any]:
  """Interleaved median time of every method at each batch, one variant.

  A train step that runs out of memory is retried with per-block remat
  (status "ok+remat": it then pays a second backbone forward).
  """
  variant = spec["variant"]
  rows: List[Dict[str, Any]] = []
  methods = {m: am.Method(variant, m, spec) for m in spec["methods"]}
  remats: Dict[str, am.Method] = {}
  for bsz in spec["batches"]:
    fns, info = {}, {}
    for name, m in methods.items():
      info[name] = {"status": "oom"}
      try:
        fns[name], c = _first_call(m, bsz)
        info[name] = {"status": "ok", **c}
        continue
      except Exception as e:  # pylint: disable=broad-except
        if not am.is_oom(e):
          raise
        _log(f"timing {variant} b{bsz} {name}: out of memory", tag="accel")
        if m.state_deleted():
          m.reset_state()
      if name == "forward" or m.remat or not spec["scan"]:
        continue
      try:
        if name not in remats:
          remats[name] = am.Method(variant, name, spec, remat=True)
        fns[name], c = _first_call(remats[name], bsz)
        info[name] = {"status": "ok+remat", **c}
      except Exception as e:  # pylint: disable=broad-except
        if not am.is_oom(e):
          raise
        if name in remats and remats[name].state_deleted():
          remats[name].reset_state()
      gc.collect()
    _log(f"timing {variant} b{bsz}: {list(fns)}", tag="accel")
    times = common.interleaved(fns, reps=spec["reps"], warmup=spec["warmup"]
                               ) if fns else {}
    fwd = times.get("forward", {}).get("median_s")
    fwd_flops = info.get("forward", {}).get("flops")
    for name in methods:
      row = {"variant": variant, "method": name, "batch": bsz,
             "status": info[name]["status"],
             "trainable_params": methods[name].trainable}
      if name in times:
        t, c = times[name], info[name]
        med = t["median_s"]
        row.update(median_s=med, q25_s=t["q25_s"], q75_s=t["q75_s"],
                   reps=t["reps"], images_per_s=bsz / med,
                   compiled_peak_gib=c["peak_bytes"] / GIB)
        if fwd:
          row["vs_forward"] = med / fwd
        # XLA counts a scanned (while-loop) backbone's body once: its FLOPs
        # are one block's, so they are only reported for unrolled blocks.
        if not spec["scan"]:
          row.update(gflop=c["flops"] / 1e9,
                     tflops_per_s=c["flops"] / med / 1e12)
          if fwd_flops:
            row["flops_vs_forward"] = c["flops"] / fwd_flops
      rows.append(row)
    del fns
    gc.collect()
  return {"rows": rows}


def job_memory(spec) -> Dict[str, Any]:
  """Peak memory of each method at each batch, batches ascending (so the
  process's running peak is the batch's own; with one method per process,
  --isolation=method, it is that method's)."""
  variant, rows = spec["variant"], []
  for name in spec["methods"]:
    base = am.mem_stats()
    m = am.Method(variant, name, spec)
    for bsz in sorted(spec["batches"]):
      row = {"variant": variant, "method": name, "batch": bsz,
             "isolation": spec["isolation"]}
      try:
        batch = m.batch(bsz)
        resident = am.mem_stats().get("bytes_in_use")
        compiled, c = m.compile(batch)
        fn = m.runner(compiled, batch)
        fn()
        fn()
        st = am.mem_stats()
        row.update(status="ok", compiled_peak_gib=c["peak_bytes"] / GIB)
        if st:
          row.update(peak_gib=st["peak_bytes_in_use"] / GIB,
                     resident_gib=(resident or 0) / GIB,
                     peak_over_resident_gib=(
                         st["peak_bytes_in_use"] - (resident or 0)) / GIB,
                     process_start_gib=base.get("bytes_in_use", 0) / GIB)
        del batch, compiled, fn
      except Exception as e:  # pylint: disable=broad-except
        if not am.is_oom(e):
          raise
        row["status"] = "oom"
        if m.state_deleted():
          m.reset_state()
      gc.collect()
      rows.append(row)
    del m
    gc.collect()
  return {"rows": rows}


def job_maxbatch(spec) -> Dict[str, Any]:
  """The largest batch that runs, per method (accelerator_check.max_batch).

  spec["fitted"][method]: [[batch, compiled peak bytes], ...] from the
  memory section, and spec["failed"][method]: its out-of-memory batches;
  without them the batches' compiled peaks are taken here (compile only).
  """
  rows = []
  for name in spec["methods"]:
    m = am.Method(spec["variant"], name, spec)
    measured = spec.get("fitted", {}).get(name)
    peaks = measured if measured is not None else [
        [b, m.compile(m.batch(b))[1]["peak_bytes"]]
        for b in sorted(spec["batches"])]
    rows.append(accelerator_check.max_batch(
        m, spec, peaks, ran=measured is not None,
        failed=spec.get("failed", {}).get(name, ())))
    del m
    gc.collect()
  return {"rows": rows}


def job_vit_e(spec) -> Dict[str, Any]:
  """A real LoSA train step of a big scanned backbone (ViT-e/14, bf16 frozen,
  random init) at a small batch: measured peak memory and step time."""
  from losa_jax.utils import tree as tree_lib  # pylint: disable=g-import-not-at-top
  variant, bsz = spec["variant"], spec["batch"]
  t0 = time.perf_counter()
  m = am.Method(variant, "losa", spec, scan=True, remat=True)
  after_state = am.mem_stats()
  batch = m.batch(bsz)
  compiled, c = m.compile(batch)
  fn = m.runner(compiled, batch)
  fn()
  setup_s = time.perf_counter() - t0
  times = common.interleaved({"losa": fn}, reps=spec["reps"], warmup=0)
  st = am.mem_stats()
  m.state, metrics = compiled(m.state, batch)
  row = {"variant": variant, "method": "losa", "batch": bsz,
         "image_size": m.config.image_size,
         "params": tree_lib.count(m.built.state_shape["params"]),
         "trainable_params": m.trainable, "median_s": times["losa"]["median_s"],
         "reps": times["losa"]["reps"],
         "compiled_peak_gib": c["peak_bytes"] / GIB, "setup_s": setup_s,
         "loss_finite": bool(np.isfinite(np.asarray(metrics["loss"])))}
  if st:
    row.update(peak_gib=st["peak_bytes_in_use"] / GIB,
               state_gib=after_state.get("bytes_in_use", 0) / GIB,
               state_peak_gib=after_state.get("peak_bytes_in_use", 0) / GIB)
    # The state is made first; if making it set the peak, the step's own
    # peak is at most this (the two cannot be told apart).
    row["peak_set_by_step"] = (st["peak_bytes_in_use"] >
                               after_state.get("peak_bytes_in_use", 0))
  return {"rows": [row]}


JOBS = {"check": job_check, "timing": job_timing, "memory": job_memory,
        "maxbatch": job_maxbatch, "vit_e": job_vit_e}


def run_job(spec: Dict[str, Any]) -> Dict[str, Any]:
  """Runs spec["job"]; adds backend, devices and the TensorFlow check."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  out = JOBS[spec["job"]](spec)
  out.update(job=spec["job"], wall_s=time.perf_counter() - t0,
             backend=jax.default_backend(), device=str(jax.devices()[0]),
             device_kind=jax.devices()[0].device_kind,
             memory_limit_gib=am.mem_stats().get("bytes_limit", 0) / GIB,
             tensorflow_loaded=am.tf_loaded())
  return out


def main(argv: List[str]) -> None:
  """`python -m losa_jax.bench.accelerator_jobs SPEC.json OUT.json`."""
  if len(argv) != 3:
    raise SystemExit("usage: python -m losa_jax.bench.accelerator_jobs "
                     "SPEC.json OUT.json (written by losa_jax.bench."
                     "accelerator; run that instead)")
  with open(argv[1]) as f:
    spec = json.load(f)
  common.write_json(argv[2], run_job(spec))


if __name__ == "__main__":
  main(sys.argv)
