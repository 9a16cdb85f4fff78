# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The `accelerator` section's plan and runner (no TensorFlow, and no jax
in this parent process: the jobs, in accelerator_check, take the device).

Each job runs in a fresh process, since no backend resets
`peak_bytes_in_use`, and one that crashes or overruns costs only its own
rows; jobs share a persistent compilation cache. DIR/accelerator.json is
rewritten after every job.
"""
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List

from losa_jax.bench import common

# Relative shares of the time budget (a timing job compiles ~12 programs).
_SHARE = {"check": 1.0, "timing": 3.0, "vit_e": 1.0, "memory": 0.4,
          "maxbatch": 1.0}
_MIN_JOB_S = 10.0    # a job is not started with less than this left
_KINDS = ("rows", "guard", "precision")


def plan(a) -> List[Dict[str, Any]]:
  """The job specs of a run, in order, from the section's options `a`; each
  has a "share" of the time budget and a "label"."""
  base = dict(vars(a), bf16=True)   # every option, as the jobs read them
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
      if a.isolation == "none":
        from losa_jax.bench import accelerator_check  # pylint: disable=g-import-not-at-top
        out = accelerator_check.run_job(spec)
      else:   # accelerator_check.run_job(spec) in a fresh process
        spec_path, out_path = (os.path.join(workdir, f"{k}_{i}.json")
                               for k in ("spec", "out"))
        common.write_json(spec_path, spec)
        out = common.run_child(["losa_jax.bench.accelerator_check",
                                spec_path, out_path], out_path, env=env,
                               timeout=hard)
      done.append(dict(out, job=spec["job"], label=spec["label"],
                       elapsed_s=time.time() - t0))
      if a.out:
        common.write_section(a, "accelerator", rows_of(done),
                             {"partial": True})
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
