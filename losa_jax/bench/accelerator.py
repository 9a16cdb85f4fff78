# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""GPU/TPU benchmark of LoSA vs the other methods; needs no TensorFlow.

  python -m losa_jax.bench.accelerator --out DIR [--sections ...] \
      [--budget_s 420] [--quick]
  python -m losa_jax.bench.accelerator --help      # every flag

Imports only jax, flax, optax, orbax-checkpoint, numpy, ml_collections and
absl (lint-imports holds it to that: the `core-without-tensorflow` contract).
Prints a Markdown table and writes DIR/accelerator.json and
DIR/accelerator.md (rewritten after every job, so a killed run keeps what
it measured). Sections, in the order they run:

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

Every job runs in a fresh process (--isolation=method: one per variant and
method for memory and maxbatch), since no backend resets the peak: the peak
of a process that ran one method, batches ascending, is that method's. Jobs
share a persistent compilation cache, so memory jobs reuse the timing
section's executables, and the batch search starts from an affine fit of
the memory section's compiled peaks. --budget_s bounds the whole run: each
job gets a share of what is left, a batch search stops at its share (its
result then reads ">= N"), and a job that overruns is killed (its rows are
then missing, and the output says so).

Estimated on one H200 (~700 TFLOP/s bf16; a B/16 forward at batch 256 is
~4.5 TFLOP, ~10 ms), compiles dominate, not steps: check ~30-45 s (the
guard compiles unrolled B/16), timing ~60-90 s for B/16 and ~80-120 s for
L/16 (10 train-step compiles and 2 forwards each; a step at batch 256 takes
10-150 ms), vit_e ~30-60 s, memory ~10-15 s per (variant, method) from the
cache, maxbatch ~20-60 s per method: 7.5-10 minutes uncapped, which the
default --budget_s 420 holds to 7 by cutting the searches (run last) short.
"""
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags

from losa_jax.bench import accelerator_report as report
from losa_jax.bench import common

SECTIONS = ("check", "timing", "vit_e", "memory", "maxbatch")
METHODS = ("forward", "losa", "lora", "adapter", "full")
ISOLATION = ("method", "section", "none")
# Relative shares of the time budget (a timing job compiles ~12 programs).
_SHARE = {"check": 1.0, "timing": 3.0, "vit_e": 1.0, "memory": 0.4,
          "maxbatch": 1.0}
_MIN_JOB_S = 10.0    # a job is not started with less than this left
_QUICK = dict(variants=["tiny"], batches=["4", "8"], reps=2, warmup=0,
              maxbatch_variants=["tiny"], maxbatch_methods=["losa", "full"],
              maxbatch_cap=256, mem_cap_gib=0.004,
              vit_e_variant="tiny", vit_e_batch=2, vit_e_reps=2,
              guard_variant="tiny", guard_batches=["8"], isolation="section",
              depth=2, scan=False,
              budget_s=240)
FLAG_NAMES = ("out", "sections", "variants", "batches", "methods", "reps",
              "warmup", "budget_s", "maxbatch_variants", "maxbatch_methods",
              "maxbatch_cap",
              "maxbatch_multiple", "maxbatch_resolution", "mem_cap_gib",
              "vit_e_variant", "vit_e_batch", "vit_e_reps", "guard_variant",
              "guard_batches", "guard_max_ratio", "check_variant",
              "check_batch", "scan", "remat", "depth", "isolation",
              "mem_fraction",
              "quick")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Folder for accelerator.json and "
                      "accelerator.md (made if missing).", **fv)
  flags.DEFINE_list("sections", list(SECTIONS), f"Sections to run, from "
                    f"{SECTIONS} (they always run in that order).", **fv)
  flags.DEFINE_list("variants", ["B/16", "L/16"], "ViT variants of the timing "
                    "and memory sections (224 px); 'tiny' is a 4-block "
                    "width-32 ViT at 32 px.", **fv)
  flags.DEFINE_list("batches", ["64", "256"], "Batch sizes of the timing and "
                    "memory sections.", **fv)
  flags.DEFINE_list("methods", list(METHODS), f"Methods, from {METHODS} "
                    "('forward' is the frozen backbone's inference forward).",
                    **fv)
  flags.DEFINE_integer("reps", 10, "Timed interleaved rounds per (variant, "
                       "batch).", lower_bound=1, **fv)
  flags.DEFINE_integer("warmup", 2, "Untimed rounds after the compiling "
                       "one.", lower_bound=0, **fv)
  flags.DEFINE_float("budget_s", 420.0, "Wall-time budget of the whole run, "
                     "seconds (jobs share it; see the module docstring).",
                     **fv)
  flags.DEFINE_list("maxbatch_variants", ["B/16"], "Variants whose largest "
                    "batch is searched (each search compiles 2-5 programs "
                    "per method).", **fv)
  flags.DEFINE_list("maxbatch_methods", list(METHODS), "Methods whose "
                    "largest batch is searched.", **fv)
  flags.DEFINE_integer("maxbatch_cap", 16384, "Largest batch tried.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("maxbatch_multiple", 8, "Batches tried are multiples "
                       "of this.", lower_bound=1, **fv)
  flags.DEFINE_float("maxbatch_resolution", 0.05, "The search stops once the "
                     "first failing batch is within this fraction of the "
                     "largest that ran.", **fv)
  flags.DEFINE_float("mem_cap_gib", 0.0, "If > 0, a batch 'fits' when its "
                     "compiled peak is at most this (simulated search; also "
                     "used where the backend reports no memory, XLA:CPU, with "
                     "16 GiB if unset).", **fv)
  flags.DEFINE_string("vit_e_variant", "e/14", "Backbone of the vit_e "
                      "section (scanned, per-block remat).", **fv)
  flags.DEFINE_integer("vit_e_batch", 8, "Batch of the vit_e section.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("vit_e_reps", 5, "Timed steps of the vit_e section.",
                       lower_bound=1, **fv)
  flags.DEFINE_string("guard_variant", "B/16", "Variant of the cost guard.",
                      **fv)
  flags.DEFINE_list("guard_batches", ["64"], "Batches of the cost guard.",
                    **fv)
  flags.DEFINE_float("guard_max_ratio", 1.05, "The guard holds if LoSA step "
                     "FLOPs <= this x backbone forward FLOPs.", **fv)
  flags.DEFINE_string("check_variant", "tiny", "Variant of the accelerator "
                      "vs CPU step (it runs on the CPU too: keep it small).",
                      **fv)
  flags.DEFINE_integer("check_batch", 4, "Batch of the accelerator vs CPU "
                       "step.", lower_bound=1, **fv)
  flags.DEFINE_bool("scan", True, "Scanned backbone blocks (lax.scan) in the "
                    "timing and memory sections: one block is compiled, not "
                    "24 (the work is the same, but XLA's cost analysis then "
                    "counts one block, so FLOP columns are left out; the "
                    "cost guard always compiles unrolled blocks).", **fv)
  flags.DEFINE_bool("remat", False, "Per-block remat of the scanned backbone "
                    "(costs LoRA / adapters / full a second forward).", **fv)
  flags.DEFINE_integer("depth", 0, "If > 0, overrides the depth (blocks) of "
                       "every variant except --vit_e_variant's (0: each "
                       "variant's own).", lower_bound=0, **fv)
  flags.DEFINE_enum("isolation", "method", ISOLATION, "Process per job: "
                    "'method' (memory / maxbatch: one per variant and method, "
                    "so each peak is that method's), 'section' (one per "
                    "section and variant: peaks are running maxima), 'none' "
                    "(everything in this process).", **fv)
  flags.DEFINE_float("mem_fraction", 0.9, "XLA_PYTHON_CLIENT_MEM_FRACTION of "
                     "the job processes, unless already set (jax's default, "
                     "0.75, would hide a quarter of the GPU from the batch "
                     "search).", **fv)
  flags.DEFINE_bool("quick", False, "Every section on a tiny ViT at 32 px "
                    "(CPU, well under a minute; tests run it): "
                    f"{_QUICK}.", **fv)


# --- the plan -------------------------------------------------------------------


def plan(a: Dict[str, Any]) -> List[Dict[str, Any]]:
  """The job specs of a run (see accelerator_jobs), in order; each has a
  "share" of the time budget and a "label"."""
  base = {k: a[k] for k in ("reps", "warmup", "scan", "remat", "depth",
                            "mem_cap_gib",
                            "maxbatch_cap", "maxbatch_multiple",
                            "maxbatch_resolution", "check_variant",
                            "check_batch", "guard_max_ratio")}
  base.update(bf16=True, isolation=a["isolation"], batches=a["batches"],
              guard_batches=a["guard_batches"],
              guard_variant=a["guard_variant"])
  secs, jobs = set(a["sections"]), []
  if "check" in secs:
    jobs.append(dict(base, job="check", label="check", share=_SHARE["check"]))
  if "timing" in secs:
    for v in a["variants"]:
      jobs.append(dict(base, job="timing", variant=v, methods=a["methods"],
                       label=f"timing {v}", share=_SHARE["timing"]))
  if "vit_e" in secs:
    jobs.append(dict(base, job="vit_e", variant=a["vit_e_variant"], depth=0,
                     batch=a["vit_e_batch"], reps=a["vit_e_reps"],
                     label=f"vit_e {a['vit_e_variant']}",
                     share=_SHARE["vit_e"]))
  if "memory" in secs:
    for v in a["variants"]:
      groups = ([[m] for m in a["methods"]] if a["isolation"] == "method"
                else [list(a["methods"])])
      for g in groups:
        jobs.append(dict(base, job="memory", variant=v, methods=g,
                         label=f"memory {v} {','.join(g)}",
                         share=_SHARE["memory"] * len(g)))
  if "maxbatch" in secs:
    for v in (v for v in a["variants"] if v in a["maxbatch_variants"]):
      ms = [m for m in a["methods"] if m in a["maxbatch_methods"]]
      groups = ([[m] for m in ms] if a["isolation"] == "method"
                else [ms] if ms else [])
      for g in groups:
        jobs.append(dict(base, job="maxbatch", variant=v, methods=g,
                         label=f"maxbatch {v} {','.join(g)}",
                         share=_SHARE["maxbatch"] * len(g)))
  return jobs


def _child_env(a: Dict[str, Any], cache_dir: str) -> Dict[str, str]:
  """The job processes' environment: memory fraction, a shared persistent
  compilation cache (unless the caller set one), the repo on PYTHONPATH."""
  env = dict(os.environ)
  env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(a["mem_fraction"]))
  env.setdefault("JAX_COMPILATION_CACHE_DIR", cache_dir)
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  platforms = env.get("JAX_PLATFORMS", "")
  if platforms and "cpu" not in platforms.split(","):
    env["JAX_PLATFORMS"] = platforms + ",cpu"   # the check compares with it
  if a["quick"]:   # tiny CPU programs: compile time is all there is
    common.with_xla_flags(common.FAST_COMPILE, env)
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
  with open(spec_path, "w") as f:
    json.dump(spec, f)
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


def run(a: Dict[str, Any], command: str = "") -> Dict[str, Any]:
  """Runs the plan of flags `a` within a["budget_s"]; writes and returns
  the result ({"meta", "jobs": [...], "errors": [...]})."""
  t_start, load_start = time.time(), os.getloadavg()
  deadline = t_start + a["budget_s"]
  os.makedirs(a["out"], exist_ok=True)
  jobs = plan(a)
  workdir = tempfile.mkdtemp(prefix="losa_accel_")
  env = _child_env(a, os.path.join(workdir, "jax_cache"))
  if a["isolation"] == "none":   # before this process starts a backend
    for k in ("XLA_PYTHON_CLIENT_MEM_FRACTION", "JAX_COMPILATION_CACHE_DIR",
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "XLA_FLAGS"):
      if k in env:
        os.environ.setdefault(k, env[k])
  result = {"meta": {}, "jobs": [], "errors": []}
  try:
    for i, spec in enumerate(jobs):
      left = deadline - time.time()
      if left < _MIN_JOB_S:
        result["errors"].append(f"{spec['label']}: skipped, time budget "
                                "spent")
        continue
      later = sum(j["share"] for j in jobs[i:])
      soft = left * spec["share"] / later
      # A job may overrun its share into later ones', never past the budget.
      hard = max(soft, left - _MIN_JOB_S * (len(jobs) - i - 1))
      spec = dict(spec, index=i, maxbatch_deadline=time.time() + soft)
      if spec["job"] == "maxbatch":
        spec.update(_measured(result, spec))
      common.log(f"{spec['label']}: share {soft:.0f} s, limit {hard:.0f} s",
                 tag="accel")
      t0 = time.time()
      if a["isolation"] == "none":
        from losa_jax.bench import accelerator_jobs  # pylint: disable=g-import-not-at-top
        out = accelerator_jobs.run_job(spec)
      else:
        out = _run_in_process(spec, env, workdir, hard)
      out.update(label=spec["label"], elapsed_s=time.time() - t0)
      if "error" in out:
        result["errors"].append(f"{spec['label']}: {out['error']}")
      result["jobs"].append(out)
      result["meta"] = _meta(a, command, result, t_start, load_start)
      _write(a["out"], result)
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  result["meta"] = _meta(a, command, result, t_start, load_start)
  _write(a["out"], result)
  print(report.markdown(result), flush=True)
  return result


def _measured(result: Dict[str, Any], spec: Dict[str, Any]
              ) -> Dict[str, Any]:
  """{"fitted": {method: [[batch, compiled peak bytes], ...]}, "failed":
  {method: [batch, ...]}} from the memory rows of spec's variant: where the
  batch search starts (methods without memory rows compile their own)."""
  fitted: Dict[str, List[List[float]]] = {}
  failed: Dict[str, List[int]] = {}
  for j in result["jobs"]:
    for r in j.get("rows", []) if j.get("job") == "memory" else []:
      if r["variant"] != spec["variant"] or r["method"] not in spec["methods"]:
        continue
      if r["status"] == "ok":
        fitted.setdefault(r["method"], []).append(
            [r["batch"], r["compiled_peak_gib"] * common.GIB])
      else:
        failed.setdefault(r["method"], []).append(r["batch"])
  return {"fitted": fitted, "failed": failed}


def _version(name: str) -> str:
  try:
    return importlib.metadata.version(name)
  except importlib.metadata.PackageNotFoundError:
    return "absent"


def _meta(a, command, result, t_start, load_start) -> Dict[str, Any]:
  """Provenance without starting a JAX backend here (the jobs' processes
  hold the accelerator): the device comes from the jobs' own reports."""
  done = [j for j in result["jobs"] if "backend" in j]
  first = done[0] if done else {}
  return {"command": command, "date": datetime.date.today().isoformat(),
          "machine": common.machine(), "python": platform.python_version(),
          "jax": _version("jax"), "jaxlib": _version("jaxlib"),
          "flax": _version("flax"), "optax": _version("optax"),
          "backend": first.get("backend"), "device": first.get("device"),
          "device_kind": first.get("device_kind"),
          "memory_limit_gib": first.get("memory_limit_gib"),
          "tensorflow_loaded": any(j.get("tensorflow_loaded") for j in done),
          "isolation": a["isolation"], "bf16": True, "scan": a["scan"],
          "remat": a["remat"], "reps": a["reps"], "warmup": a["warmup"],
          "budget_s": a["budget_s"], "load_avg_start": tuple(load_start),
          "load_avg_end": os.getloadavg(), "wall_s": time.time() - t_start,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "quick": a["quick"]}


def _write(out: str, result: Dict[str, Any]) -> None:
  common.write_json(os.path.join(out, "accelerator.json"), result)
  tmp = os.path.join(out, "accelerator.md.tmp")
  with open(tmp, "w") as f:
    f.write(report.markdown(result))
  os.replace(tmp, os.path.join(out, "accelerator.md"))


# --- command line ------------------------------------------------------------------


def args_from_flags(fv) -> Dict[str, Any]:
  """Flag values -> the run's arguments (--quick applied, lists parsed)."""
  a = {n: getattr(fv, n) for n in FLAG_NAMES}
  if a["quick"]:
    for k, v in _QUICK.items():   # a flag given explicitly wins
      if not fv[k].present:
        a[k] = v
  bad = [s for s in a["sections"] if s not in SECTIONS]
  bad += [m for m in a["methods"] + a["maxbatch_methods"] if m not in METHODS]
  if bad:
    raise app.UsageError(f"unknown sections / methods {bad}: use "
                         f"{SECTIONS} and {METHODS}.")
  if not a["out"]:
    raise app.UsageError("--out is required (the folder for accelerator.json "
                         "and accelerator.md).")
  try:
    a["batches"] = common.int_list(",".join(a["batches"]))
    a["guard_batches"] = common.int_list(",".join(a["guard_batches"]))
  except ValueError as e:
    raise app.UsageError(f"--batches / --guard_batches: {e}") from None
  return a


def _run_flags(fv, argv: Sequence[str]) -> Dict[str, Any]:
  return run(args_from_flags(fv),
             "python -m losa_jax.bench.accelerator " + " ".join(argv))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Programmatic entry: `argv` = the flags (a private FlagValues parses
  them); returns the result dict."""
  return _run_flags(*common.parse_private_flags(
      "losa_jax.bench.accelerator", define_flags, argv))


if __name__ == "__main__":
  define_flags()
  app.run(common.absl_main(_run_flags))
