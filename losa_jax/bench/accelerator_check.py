# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The accelerator section's jobs (`JOBS`; `python -m
losa_jax.bench.accelerator_check SPEC OUT` runs one) and what they check:
the accelerator's step against the CPU's (`compare_step`), the fused side
network's precision (`compare_precision`), the cost guard (`cost_guard`),
and the largest batch that runs (`max_batch`, catching XLA's out of memory).
"""
import contextlib
import gc
import sys
import time
from typing import Any, Dict, List, Sequence

import jax
import numpy as np

from losa_jax.assembly import build
from losa_jax.bench import batch_search
from losa_jax.bench import common
from losa_jax.bench import configs
from losa_jax.bench import harness
from losa_jax.models import side as side_lib
from losa_jax.models import side_fused
from losa_jax.models import side_precision
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.utils import io as io_lib
from losa_jax.utils import tree as tree_lib

GIB = harness.GIB
# (loss, update) relative tolerances. f32 runs at "highest" matmul precision
# (GPUs otherwise use TF32 for f32 dots); bf16 backbone matmuls round their
# outputs to 8 bits of mantissa, differently summed on each backend.
TOLERANCE = {"float32": (1e-4, 1e-3), "bfloat16": (2e-2, 5e-2)}


def compare_step(spec: Dict[str, Any], dtype: str) -> Dict[str, Any]:
  """One LoSA step (SGD: an update linear in the gradient, so update
  differences are gradient differences; Adam's first step is lr * sign(g),
  where an ulp in a near-zero gradient flips a sign) on both backends.

  Returns {dtype, backends, loss_accel, loss_cpu, loss_rel_diff,
  grad_norm_rel_diff, update_rel_diff (L2 over all trainable leaves),
  update_max_abs_diff, frozen_changed, tolerances, pass}.
  """
  cfg = configs.make_config(spec["check_variant"], "losa",
                            bf16=dtype == "bfloat16",
                            depth=spec.get("depth") or None)
  cfg.optax_name, cfg.wd = "sgd", 0.0
  # The side stream stored in the same dtype: the float32 row checks to
  # float32 tolerance (a bf16 store would round backend ulps up to bf16).
  cfg.model.losa.dtype = dtype
  accel, cpu = jax.devices()[0], jax.devices("cpu")[0]
  # Without an accelerator the "two" backends are one: the same program twice.
  built = {name: build.build(cfg, total_steps=10, mesh=sharding_lib.make_mesh(
      [("data", 1)], [d])) for name, d in (("accel", accel), ("cpu", cpu))}
  p0 = jax.device_get(harness.random_tree(built["cpu"].state_shape["params"]))
  rng = np.random.RandomState(0)
  n, s = spec["check_batch"], cfg.image_size
  batch = {"image": rng.uniform(-1, 1, (n, s, s, 3)).astype(np.float32),
           "label": rng.randint(0, cfg.num_classes, (n,)).astype(np.int32)}
  new, metrics = {}, {}
  # f32: matmuls at "highest" precision (on GPUs the default lets f32 dots
  # run in TF32 or bf16 passes); bf16: the default, as the benchmark runs.
  with (jax.default_matmul_precision("highest") if dtype == "float32"
        else contextlib.nullcontext()):
    for name in ("accel", "cpu"):
      b = built[name]
      # New buffers: donating one backend's state never deletes the other's.
      state, m = b.train_step(harness.state_from_params(
          b, jax.device_put(p0, b.state_sharding["params"])), batch)
      new[name] = tree_lib.flatten(jax.device_get(state["params"]))
      metrics[name] = {k: float(v) for k, v in jax.device_get(m).items()}
  flat0, mask = tree_lib.flatten(p0), built["cpu"].mask
  trainable = [k for k in flat0 if mask[k]]
  upd = {name: np.concatenate([
      (np.asarray(new[name][k], np.float64) - np.asarray(flat0[k], np.float64)
       ).ravel() for k in trainable]) for name in new}
  frozen_changed = any(
      not np.array_equal(np.asarray(new[name][k]), np.asarray(flat0[k]))
      for name in new for k in flat0 if not mask[k])

  def rel(a, b):
    return float(abs(a - b) / max(abs(b), 1e-12))

  tol_loss, tol_upd = TOLERANCE[dtype]
  ma, mc = metrics["accel"], metrics["cpu"]
  row = {"dtype": dtype, "variant": spec["check_variant"], "batch": n,
         "backends": f"{accel.platform} vs {cpu.platform}",
         "loss_accel": ma["loss"], "loss_cpu": mc["loss"],
         "loss_rel_diff": rel(ma["loss"], mc["loss"]),
         "grad_norm_rel_diff": rel(ma["grad_norm"], mc["grad_norm"]),
         "update_rel_diff": float(np.linalg.norm(upd["accel"] - upd["cpu"]) /
                                  max(np.linalg.norm(upd["cpu"]), 1e-30)),
         "update_max_abs_diff": float(np.abs(upd["accel"] - upd["cpu"]).max()),
         "update_norm": float(np.linalg.norm(upd["cpu"])),
         "frozen_changed": frozen_changed,
         "tolerance_loss": tol_loss, "tolerance_update": tol_upd}
  row["pass"] = bool(row["loss_rel_diff"] <= tol_loss and
                     row["update_rel_diff"] <= tol_upd and not frozen_changed
                     and row["update_norm"] > 0)
  return row


# The precision a backend's default float32 dot has (the bound's mode);
# XLA:CPU's dots are exact float32, so there the default-precision run is
# TF32 emulated (side_fused.emulated_precision): the same comparison runs.
DEFAULT_DOT_PRECISION = {"gpu": "tf32", "cuda": "tf32", "rocm": "tf32",
                         "tpu": "bf16", "cpu": "tf32"}
PRECISION_OFFSETS = (40.0, 400.0)


def compare_precision(offsets: Sequence[float] = PRECISION_OFFSETS
                      ) -> List[Dict[str, Any]]:
  """The fused mixer's gradients on the accelerator at its default matmul
  precision against the float64 reference (on the CPU), on rows at mean
  `offsets`: within `side_precision.emulation_bound` (docs/method.md,
  "Precision of the default path": "On a device").

  Returns one row per offset: {offset, backends, mode, err_default_rel,
  err_highest_rel (max |g - g_ref| / max |g_ref|), ratio (worst
  |g - g_ref| / bound), where (its leaf), pass}.
  """
  accel, cpu = jax.devices()[0], jax.devices("cpu")[0]
  mode = DEFAULT_DOT_PRECISION.get(accel.platform, "tf32")
  emulate = mode if accel.platform == "cpu" else None

  def grads(p, x):
    gp, gz = jax.grad(lambda p, x: side_precision.cos_loss(
        side_lib.fused_mixer(p, x)), argnums=(0, 1))(p, x)
    return {"params": gp, "z": gz}

  def rel(g, ref):
    g, ref = tree_lib.flatten(g), tree_lib.flatten(ref)
    return max(float(np.max(np.abs(np.asarray(g[k], np.float64) - ref[k]))
                     / max(float(np.max(np.abs(ref[k]))), 1e-30))
               for k in ref)

  rows = []
  for offset in offsets:
    kw, params, z = side_precision.off_centre_case(offset)
    with jax.default_device(cpu):
      ref, sens = side_precision.mixer_reference(
          kw, params, z, side_precision.cos_loss,
          side_precision.emulation_units)
    args = jax.device_put((params, z), accel)
    with jax.default_matmul_precision("highest"):
      highest = jax.device_get(jax.jit(lambda p, x: grads(p, x))(*args))
    with side_fused.emulated_precision(emulate):
      default = jax.device_get(jax.jit(lambda p, x: grads(p, x))(*args))
    err_hi = jax.tree.map(lambda g, r: np.asarray(g, np.float64) - r,
                          highest, ref)
    ratio, where = side_precision.worst_ratio(
        default, ref, side_precision.emulation_bound(err_hi, sens, mode))
    rows.append({"offset": offset, "mode": mode,
                 "backends": f"{accel.platform} vs float64 on cpu"
                             + (" (emulated)" if emulate else ""),
                 "err_default_rel": rel(default, ref),
                 "err_highest_rel": rel(highest, ref),
                 "ratio": ratio, "where": where, "pass": bool(ratio <= 1.0)})
  return rows


def cost_guard(spec: Dict[str, Any], variant: str, bsz: int
               ) -> Dict[str, Any]:
  """Compiled FLOPs of the LoSA train step / the backbone forward, bf16 as
  the timing section but with unrolled blocks: XLA's cost analysis counts a
  while loop's body once, so a scanned backbone would show one block's
  FLOPs. Pass if ratio <= spec["guard_max_ratio"]."""
  cfg = configs.make_config(variant, "losa", bf16=spec["bf16"], scan=False,
                            remat=spec["remat"], depth=spec.get("depth"))
  step = configs.step_cost(cfg, bsz)
  fwd = configs.forward_cost(cfg, bsz)
  ratio = step["flops"] / fwd["flops"] if fwd["flops"] else float("nan")
  return {"variant": variant, "batch": bsz, "step_gflop": step["flops"] / 1e9,
          "forward_gflop": fwd["flops"] / 1e9, "ratio": ratio,
          "max_ratio": spec["guard_max_ratio"],
          "pass": bool(ratio <= spec["guard_max_ratio"])}


# --- the largest batch ------------------------------------------------------------


def max_batch(m, spec: Dict[str, Any]) -> Dict[str, Any]:
  """The largest batch of method `m` (a harness.Method) that runs.

  The first guess is an affine fit of [batch, compiled peak bytes] pairs:
  spec["fitted"][method], of the memory part's real steps (so the largest
  is known to fit; spec["failed"][method]: those out of memory), or else
  compiled here at spec["batches"]. Real mode (the backend reports
  memory_stats and no --mem_cap_gib): a batch fits if its real step runs
  without XLA's out-of-memory error. Simulated mode (XLA:CPU, or a cap
  given): if its compiled peak is at most the cap, so the search logic runs
  where nothing ever runs out of memory.
  """
  measured = spec.get("fitted", {}).get(m.method)
  ran = measured is not None
  peaks = measured if ran else [[b, m.compile(m.batch(b))[1]["peak_bytes"]]
                                for b in sorted(spec["batches"])]
  failed = spec.get("failed", {}).get(m.method, ())
  limit = harness.mem_stats().get("bytes_limit")
  cap_bytes = float(spec.get("mem_cap_gib") or 0) * GIB
  simulated = not limit or cap_bytes > 0
  budget = (cap_bytes or 16 * GIB) if simulated else float(limit)
  peaks = sorted((int(b), float(p)) for b, p in peaks)
  known_ok = [b for b, p in peaks if (ran or simulated) and
              (not simulated or p <= budget)]
  bad = [b for b, p in peaks if simulated and p > budget] + list(failed)

  def fits(b):
    ok = harness.first_call(m, b, max_peak=budget if simulated else None)
    gc.collect()
    return ok is not None

  t0 = time.perf_counter()
  # Fragmentation and the runtime's own buffers: aim a little below.
  res = batch_search.search(
      fits, lo=max(known_ok, default=0), hi=min(bad, default=None),
      guess=batch_search.affine_guess(peaks, 0.97 * budget), cap=spec["cap"],
      mult=spec["multiple"], resolution=spec["resolution"],
      deadline=spec["maxbatch_deadline"])
  return {"variant": m.variant, "method": m.method, "kind": "max_batch",
          "mode": ("simulated: compiled peak <= cap" if simulated
                   else "real: XLA out-of-memory caught"),
          "limit_gib": budget / GIB, "cap": spec["cap"],
          "search_s": time.perf_counter() - t0, **res}


# --- the jobs (a process each, or the section's with --isolation none) --------


def job_check(spec) -> Dict[str, Any]:
  """A tiny LoSA step on the accelerator vs jax's CPU backend, f32 and bf16;
  the fused side network's gradients at the default matmul precision vs
  float64; and the cost guard (accelerator_check)."""
  return {"rows": [compare_step(spec, d) for d in ("float32", "bfloat16")],
          "guard": [cost_guard(spec, spec["guard_variant"], bsz)
                    for bsz in spec["guard_batches"]],
          "precision": compare_precision()}


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
  """The largest batch that runs, per method (max_batch)."""
  rows = []
  for name in spec["methods"]:   # one Method alive at a time
    rows.append(max_batch(harness.Method(spec["variant"], name, spec), spec))
    gc.collect()
  return {"rows": rows}


def job_vit_e(spec) -> Dict[str, Any]:
  """A real LoSA train step of a big scanned backbone (ViT-e/14, bf16 frozen,
  random init) at a small batch: measured peak memory and step time."""
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
  t0 = time.perf_counter()
  out = JOBS[spec["job"]](spec)
  out.update(job=spec["job"], wall_s=time.perf_counter() - t0,
             backend=jax.default_backend(), device=str(jax.devices()[0]),
             device_kind=jax.devices()[0].device_kind,
             memory_limit_gib=harness.mem_stats().get("bytes_limit", 0) / GIB,
             tensorflow_loaded=any(m in sys.modules for m in (
                 "tensorflow", "tensorflow_datasets")))
  return out


if __name__ == "__main__":
  if len(sys.argv) != 3:
    raise SystemExit("usage: python -m losa_jax.bench.accelerator_check "
                     "SPEC.json OUT.json (the accelerator section's jobs)")
  common.write_json(sys.argv[2], run_job(io_lib.read_json(sys.argv[1])))
