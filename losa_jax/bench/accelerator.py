# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""The `accelerator` section: GPU/TPU benchmark of LoSA vs the other
methods; needs no TensorFlow.

  python -m losa_jax.bench accelerator --out DIR [--parts ...] \
      [--budget_s 420] [--quick]
  python scripts/bench_report.py DIR       # Markdown tables: DIR/results.md

Imports only jax, flax, optax, orbax-checkpoint, numpy, ml_collections and
absl (lint-imports holds it to that: the `core-without-tensorflow` contract).
DIR/accelerator.json is rewritten after every job, so a killed run keeps
what it measured. Parts, in the order they run:

  check     a tiny LoSA train step on the accelerator and on jax's CPU backend
            in the same process (f32 at "highest" precision, and bf16):
            loss and updated params compared; the fused side network's
            gradients at the default matmul precision vs float64, within
            side_precision's bound; and the cost guard: compiled
            FLOPs of the LoSA train step / backbone forward <= 1.05
  timing    median step time of forward, LoSA, LoRA, adapters, full at
            --variants x --batches, bf16 (matmuls and frozen params, as
            losa_jax.bench.configs), interleaved rounds (bench.common)
  vit_e     a real ViT-e/14 LoSA train step at batch 8, 224 px, bf16 frozen
            backbone, random init: measured peak memory and step time
  memory    peak memory (device.memory_stats()["peak_bytes_in_use"]) of each
            method at each batch
  maxbatch  the largest batch that runs, per method (XLA's out-of-memory error
            caught), for --maxbatch_variants

Every job runs in a fresh process (--isolation method: one per variant and
method for memory and maxbatch), since no backend resets the peak: the peak
of a process that ran one method, batches ascending, is that method's. Jobs
share a persistent compilation cache, so memory jobs reuse the timing
section's executables, and the batch search starts from an affine fit of
the memory section's compiled peaks. --budget_s bounds the whole run: each
job gets a share of what is left, a batch search stops at its share (its
result then reads ">= N"), and a job that overruns is killed (its rows are
then missing, and the output says so).

Its expected run time on one GPU is in docs/benchmarks.md.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

from losa_jax.bench import common

PARTS = ("check", "timing", "vit_e", "memory", "maxbatch")
# Relative shares of the time budget (a timing job compiles ~12 programs).
_SHARE = {"check": 1.0, "timing": 3.0, "vit_e": 1.0, "memory": 0.4,
          "maxbatch": 1.0}
_MIN_JOB_S = 10.0    # a job is not started with less than this left


# --- the plan -------------------------------------------------------------------


def plan(a) -> List[Dict[str, Any]]:
  """The job specs of a run (see accelerator_jobs), in order, from the
  section's options `a`; each has a "share" of the time budget and a
  "label"."""
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
  compilation cache (unless the caller set one), the repo on PYTHONPATH."""
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(a.mem_fraction))
  env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms and "cpu" not in platforms.split(","):
    env["JAX_PLATFORMS"] = platforms + ",cpu"   # the check compares with it
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(
      [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _run_in_process(spec: Dict[str, Any], env: Dict[str, str], workdir: str,
                    timeout: float) -> Dict[str, Any]:
  """Runs one job in a fresh `python -m losa_jax.bench.accelerator_jobs`."""
  spec_path = os.path.join(workdir, f"spec_{spec['index']}.json")
  out_path = os.path.join(workdir, f"out_{spec['index']}.json")
  common.write_json(spec_path, spec)
  try:
    proc = subprocess.run(
        [sys.executable, "-m", "losa_jax.bench.accelerator_jobs", spec_path,
         out_path], env=env, timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"killed after {timeout:.0f} s (time budget)"}
  if proc.returncode != 0 or not os.path.exists(out_path):
    return {"error": f"exit status {proc.returncode} (see the log above)"}
  with open(out_path) as f:
    return json.load(f)


def rows_of(jobs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Jobs -> rows: one "job" row per job (label, device, timings, error),
  then its measured rows, each with its job and kind (rows, guard,
  precision)."""
  out = []
  for j in jobs:
    out.append({"kind": "job", **{k: v for k, v in j.items()
                                  if k not in ("rows", "guard", "precision")}})
    out += [dict(r, job=j.get("job"), kind=key)
            for key in ("rows", "guard", "precision") for r in j.get(key, [])]
  return out


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
      left = deadline - time.time()
      if left < _MIN_JOB_S:
        done.append({"job": spec["job"], "label": spec["label"],
                     "error": "skipped, time budget spent"})
        continue
      soft = left * spec["share"] / sum(j["share"] for j in jobs[i:])
      # A job may overrun its share into later ones', never past the budget.
      hard = max(soft, left - _MIN_JOB_S * (len(jobs) - i - 1))
      spec = dict(spec, index=i, maxbatch_deadline=time.time() + soft)
      if spec["job"] == "maxbatch":
        spec.update(_measured(done, spec))
      common.log(f"{spec['label']}: share {soft:.0f} s, limit {hard:.0f} s",
                 tag="accel")
      t0 = time.time()
      if a.isolation == "none":
        from losa_jax.bench import accelerator_jobs  # pylint: disable=g-import-not-at-top
        out = accelerator_jobs.run_job(spec)
      else:
        out = _run_in_process(spec, env, workdir, hard)
      done.append(dict(out, job=spec["job"], label=spec["label"],
                       elapsed_s=time.time() - t0))
      if getattr(a, "out", None):
        common.write_json(os.path.join(a.out, "accelerator.json"), {
            "section": "accelerator", "rows": rows_of(done),
            "options": vars(a), "meta": {"partial": True}})
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  return rows_of(done)


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
            [r["batch"], r["compiled_peak_gib"] * common.GIB])
      else:
        failed.setdefault(r["method"], []).append(r["batch"])
  return {"fitted": fitted, "failed": failed}
