# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""The `accelerator` section: GPU/TPU benchmark of LoSA vs the other
methods; needs no TensorFlow (lint-imports: `core-without-tensorflow`).

  python -m losa_jax.bench accelerator --out DIR [--parts ...] [--quick]

Parts, in the order they run (docs/benchmarks.md says what each measures):
check (accelerator vs CPU step, precision, cost guard), timing
(harness.time_methods), vit_e (a real ViT-e/14 step), memory (measured peak
per method) and maxbatch (the largest batch that runs).

Every job runs in a fresh process (`python -m losa_jax.bench.accelerator
SPEC OUT`; --isolation method: one per variant and method for memory and
maxbatch), since no backend resets `peak_bytes_in_use`: the peak of a
process that ran one method, batches ascending, is that method's, and a job
that crashes or overruns costs only its own rows. Jobs share a persistent
compilation cache; the batch search starts from an affine fit of the memory
part's compiled peaks. --budget_s bounds the whole run: each job gets a
share of what is left, a batch search stops at its share (its result then
reads ">= N"), a job that overruns is killed (its rows are then missing,
and the output says so). DIR/accelerator.json is rewritten after every job.
"""
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

from losa_jax.bench import accelerator_check
from losa_jax.bench import common
from losa_jax.bench import harness

GIB = common.GIB
# Relative shares of the time budget (a timing job compiles ~12 programs).
_SHARE = {"check": 1.0, "timing": 3.0, "vit_e": 1.0, "memory": 0.4,
          "maxbatch": 1.0}
_MIN_JOB_S = 10.0    # a job is not started with less than this left
_KINDS = ("rows", "guard", "precision")


# --- the plan and the runner (parent process) --------------------------------


def plan(a) -> List[Dict[str, Any]]:
  """The job specs of a run, in order, from the section's options `a`; each
  has a "share" of the time budget and a "label"."""
  base = {k: getattr(a, k) for k in (
      "reps", "warmup", "scan", "remat", "depth", "mem_cap_gib", "cap",
      "multiple", "resolution", "check_variant", "check_batch",
      "guard_max_ratio", "isolation", "batches", "guard_batches",
      "guard_variant")}
  base["bf16"] = True
  methods, jobs = list(a.accel_methods), []
  if "check" in a.parts:
    jobs.append(dict(base, job="check", label="check", share=_SHARE["check"]))
  if "timing" in a.parts:
    jobs += [dict(base, job="timing", variant=v, methods=methods,
                  label=f"timing {v}", share=_SHARE["timing"])
             for v in a.variants]
  if "vit_e" in a.parts:
    jobs.append(dict(base, job="vit_e", variant=a.vit_e_variant, depth=0,
                     batch=a.vit_e_batch, reps=a.vit_e_reps,
                     label=f"vit_e {a.vit_e_variant}",
                     share=_SHARE["vit_e"]))
  for part, variants, ms in (
      ("memory", a.variants, methods),
      ("maxbatch", [v for v in a.variants if v in a.maxbatch_variants],
       [m for m in methods if m in a.maxbatch_methods])):
    if part not in a.parts or not ms:
      continue
    groups = [[m] for m in ms] if a.isolation == "method" else [ms]
    jobs += [dict(base, job=part, variant=v, methods=g,
                  label=f"{part} {v} {','.join(g)}",
                  share=_SHARE[part] * len(g))
             for v in variants for g in groups]
  return jobs


def _child_env(a, cache_dir: str) -> Dict[str, str]:
  """The job processes' environment: memory fraction, a shared persistent
  compilation cache (unless the caller set one)."""
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(a.mem_fraction))
  env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms and "cpu" not in platforms.split(","):
    env["JAX_PLATFORMS"] = platforms + ",cpu"   # the check compares with it
  return env


def rows_of(jobs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Jobs -> rows: one "job" row per job (label, device, timings, error),
  then its measured rows, each with its job and kind (rows, guard,
  precision)."""
  out = []
  for j in jobs:
    out.append({"kind": "job", **{k: v for k, v in j.items()
                                  if k not in _KINDS}})
    out += [dict(r, job=j.get("job"), kind=key)
            for key in _KINDS for r in j.get(key, [])]
  return out


def _limits(jobs, i: int, deadline: float):
  """(soft, hard) seconds of job i: its share of what is left; it may
  overrun into later jobs' shares, never past the budget."""
  left = deadline - time.time()
  soft = left * jobs[i]["share"] / sum(j["share"] for j in jobs[i:])
  return soft, max(soft, left - _MIN_JOB_S * (len(jobs) - i - 1))


def section_accelerator(a) -> List[Dict[str, Any]]:
  """Runs the plan of `a` within a.budget_s; a.out (if set) gets
  accelerator.json's rows after every job. Returns the rows (`rows_of`)."""
  deadline = time.time() + a.budget_s
  jobs = plan(a)
  workdir = tempfile.mkdtemp(prefix="losa_accel_")
  env = _child_env(a, os.path.join(workdir, "jax_cache"))
  if a.isolation == "none":   # before this process starts a backend
    for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_COMPILATION_CACHE_DIR",
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
      os.environ.setdefault(k, env[k])
  done: List[Dict[str, Any]] = []
  try:
    for i, spec in enumerate(jobs):
      if deadline - time.time() < _MIN_JOB_S:
        done.append({"job": spec["job"], "label": spec["label"],
                     "error": "skipped, time budget spent"})
        continue
      soft, hard = _limits(jobs, i, deadline)
      spec = dict(spec, index=i, maxbatch_deadline=time.time() + soft)
      if spec["job"] == "maxbatch":
        spec.update(_measured(done, spec))
      common.log(f"{spec['label']}: share {soft:.0f} s, limit {hard:.0f} s",
                 tag="accel")
      t0 = time.time()
      out = run_job(spec) if a.isolation == "none" else _in_child(
          spec, env, workdir, hard)
      done.append(dict(out, job=spec["job"], label=spec["label"],
                       elapsed_s=time.time() - t0))
      if a.out:
        common.write_section(a, "accelerator", rows_of(done),
                             {"partial": True})
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return rows_of(done)


def _in_child(spec, env, workdir: str, timeout: float) -> Dict[str, Any]:
  """run_job(spec) in a fresh `python -m losa_jax.bench.accelerator`."""
  spec_path, out_path = (os.path.join(workdir, f"{k}_{spec['index']}.json")
                         for k in ("spec", "out"))
  common.write_json(spec_path, spec)
  return common.run_child(["losa_jax.bench.accelerator", spec_path, out_path],
                          out_path, env=env, timeout=timeout)


def _measured(done: List[Dict[str, Any]], spec: Dict[str, Any]
              ) -> Dict[str, Any]:
  """{"fitted": {method: [[batch, compiled peak bytes], ...]}, "failed":
  {method: [batch, ...]}} from the memory rows of spec's variant: where the
  batch search starts (methods without memory rows compile their own)."""
  fitted: Dict[str, List[List[float]]] = {}
  failed: Dict[str, List[int]] = {}
  for j in done:
    for r in j.get("rows", []) if j.get("job") == "memory" else []:
      if r["variant"] != spec["variant"] or r["method"] not in spec["methods"]:
        continue
      if r["status"] == "ok":
        fitted.setdefault(r["method"], []).append(
            [r["batch"], r["compiled_peak_gib"] * GIB])
      else:
        failed.setdefault(r["method"], []).append(r["batch"])
  return {"fitted": fitted, "failed": failed}


# --- the jobs (a job process each, or this one with --isolation none) ---------


def job_check(spec) -> Dict[str, Any]:
  """A tiny LoSA step on the accelerator vs jax's CPU backend, f32 and bf16;
  the fused side network's gradients at the default matmul precision vs
  float64; and the cost guard (accelerator_check)."""
  rows = [accelerator_check.compare_step(spec, dtype)
          for dtype in ("float32", "bfloat16")]
  guard = [accelerator_check.cost_guard(spec, spec["guard_variant"], bsz)
           for bsz in spec["guard_batches"]]
  return {"rows": rows, "guard": guard,
          "precision": accelerator_check.compare_precision()}


def job_timing(spec) -> Dict[str, Any]:
  """harness.time_methods of one variant (remat retried on out of memory)."""
  return {"rows": harness.time_methods(spec["variant"], spec["methods"],
                                       spec)}


def job_memory(spec) -> Dict[str, Any]:
  """Peak memory of each method at each batch, batches ascending (so the
  process's running peak is the batch's own; with one method per process,
  --isolation=method, it is that method's)."""
  variant, rows = spec["variant"], []
  for name in spec["methods"]:
    base = harness.mem_stats()
    m = harness.Method(variant, name, spec)
    for bsz in sorted(spec["batches"]):
      # Run twice: the measured peak, beside the compiled one and the bytes
      # held before compiling.
      got = harness.first_call(m, bsz, runs=2)
      st = harness.mem_stats()
      row = {"variant": variant, "method": name, "batch": bsz,
             "isolation": spec["isolation"],
             "status": "oom" if got is None else "ok"}
      if got is not None:
        row["compiled_peak_gib"] = got[1]["peak_bytes"] / GIB
      if got is not None and st:
        resident = got[2]
        row.update(peak_gib=st["peak_bytes_in_use"] / GIB,
                   resident_gib=resident / GIB,
                   peak_over_resident_gib=(st["peak_bytes_in_use"] - resident)
                   / GIB, process_start_gib=base.get("bytes_in_use", 0) / GIB)
      del got
      gc.collect()
      rows.append(row)
    del m
    gc.collect()
  return {"rows": rows}


def job_maxbatch(spec) -> Dict[str, Any]:
  """The largest batch that runs, per method (accelerator_check.max_batch).

  spec["fitted"][method]: [[batch, compiled peak bytes], ...] from the
  memory part, and spec["failed"][method]: its out-of-memory batches;
  without them the batches' compiled peaks are taken here (compile only).
  """
  rows = []
  for name in spec["methods"]:
    m = harness.Method(spec["variant"], name, spec)
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
  m = harness.Method(variant, "losa", spec, scan=True, remat=True)
  after_state = harness.mem_stats()
  got = harness.first_call(m, bsz)
  if got is None:
    raise MemoryError(f"vit_e {variant} batch {bsz}: out of memory")
  fn, c, _ = got
  setup_s = time.perf_counter() - t0
  times = common.interleaved({"losa": fn}, reps=spec["reps"], warmup=0)
  st = harness.mem_stats()
  metrics = fn()
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
             memory_limit_gib=harness.mem_stats().get("bytes_limit", 0) / GIB,
             tensorflow_loaded=harness.tf_loaded())
  return out


if __name__ == "__main__":
  if len(sys.argv) != 3:
    raise SystemExit("usage: python -m losa_jax.bench.accelerator SPEC.json "
                     "OUT.json (written by the accelerator section; run "
                     "`python -m losa_jax.bench accelerator` instead)")
  with open(sys.argv[1]) as f:
    common.write_json(sys.argv[2], run_job(json.load(f)))
