# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Markdown tables of the accelerator section's rows (no JAX here).

scripts/bench_report.py calls `markdown` for DIR/accelerator.json; rows are
`losa_jax.bench.accelerator.rows_of`'s: one "job" row per job, then its
rows with their job and kind (rows, guard, precision).
"""
from typing import Any, Dict, Iterable, List, Sequence


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
  """A Markdown table (scripts/bench_report.py's too)."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(" --- " for _ in header) + "|"]
  return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |"
                            for r in rows])


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> List[str]:
  return [md_table(header, rows), ""]


def _f(x, fmt: str = ".3g") -> str:
  """A number formatted, "-" for missing."""
  if x is None:
    return "-"
  if isinstance(x, bool):
    return "yes" if x else "no"
  return format(x, fmt) if isinstance(x, (int, float)) else str(x)


def _check(check, m) -> List[str]:
  del m  # only the step-time table reads the run's options
  return ["## Correctness: tiny LoSA step, accelerator vs CPU backend",
          ""] + _table(
      ["dtype", "backends", "loss accel", "loss CPU", "loss rel diff",
       "update rel diff (L2)", "tolerance loss / update",
       "frozen unchanged", "pass"],
      [[r["dtype"], r["backends"], _f(r["loss_accel"], ".6f"),
        _f(r["loss_cpu"], ".6f"), _f(r["loss_rel_diff"], ".1e"),
        _f(r["update_rel_diff"], ".1e"),
        f"{r['tolerance_loss']:.0e} / {r['tolerance_update']:.0e}",
        _f(not r["frozen_changed"]), _f(r["pass"])] for r in check])


def _precision(prec, m) -> List[str]:
  del m
  return ["## Precision: fused side network gradients at the default "
          "matmul precision vs float64 (docs/method.md, \"Precision of "
          "the default path\")", ""] + _table(
      ["row mean", "backends", "bound's mode", "max rel err default",
       "max rel err highest", "worst err / bound", "pass"],
      [[_f(r["offset"], ".0f"), r["backends"], r["mode"],
        _f(r["err_default_rel"], ".1e"), _f(r["err_highest_rel"], ".1e"),
        f"{r['ratio']:.2f} ({r['where']})", _f(r["pass"])] for r in prec])


def _guard(guard, m) -> List[str]:
  del m
  return ["## Cost guard: compiled FLOPs of the LoSA train step vs the "
          "backbone forward", ""] + _table(
      ["variant", "batch", "step GFLOP", "forward GFLOP", "ratio",
       "pass (<= max)"],
      [[r["variant"], r["batch"], _f(r["step_gflop"], ",.4g"),
        _f(r["forward_gflop"], ",.4g"), _f(r["ratio"], ".4f"),
        f"{_f(r['pass'])} (<= {r['max_ratio']})"] for r in guard])


def _timing(timing, m) -> List[str]:
  reps = next((r.get("reps") for r in timing if r.get("reps")), "-")
  return [f"## Step time (bf16, scan={m.get('scan')}, remat="
          f"{m.get('remat')}; interleaved rounds, median of {reps})",
          ""] + _table(
      ["variant", "batch", "method", "median ms", "q25-q75 ms",
       "x forward", "FLOPs x fwd", "images/s", "TFLOP/s"],
      [[r["variant"], r["batch"], r["method"],
        (_f(1e3 * r["median_s"], ".2f") +
         (" (remat)" if r["status"] == "ok+remat" else ""))
        if "median_s" in r else r["status"].upper(),
        (f"{1e3 * r['q25_s']:.2f}-{1e3 * r['q75_s']:.2f}"
         if "q25_s" in r else "-"),
        _f(r.get("vs_forward"), ".2f"), _f(r.get("flops_vs_forward"), ".2f"),
        _f(r.get("images_per_s"), ",.0f"), _f(r.get("tflops_per_s"), ".3g")]
       for r in timing])


def _memory(mem, m) -> List[str]:
  del m
  iso = mem[0].get("isolation")
  how = ("a fresh process per (variant, method), batches ascending: each "
         "peak is that method's" if iso == "method" else
         "one process per variant, methods in turn: running maxima, a "
         "later method's peak is at least the earlier ones'")
  return ["## Peak memory (memory_stats peak_bytes_in_use; " + how + ")",
          ""] + _table(
      ["variant", "method", "batch", "peak GiB", "held before step GiB",
       "peak - held GiB", "compiled peak GiB"],
      [[r["variant"], r["method"], r["batch"],
        _f(r.get("peak_gib")) if r.get("status") == "ok"
        else str(r.get("status")).upper(),
        _f(r.get("resident_gib")), _f(r.get("peak_over_resident_gib")),
        _f(r.get("compiled_peak_gib"))] for r in mem])


def _maxbatch(mb, m) -> List[str]:
  del m
  return ["## Largest batch that runs", ""] + _table(
      ["variant", "method", "max batch", "first failing", "mode",
       "limit GiB", "tries (batch ok)", "search s"],
      [[r["variant"], r["method"],
        (">= " if r["at_cap"] or r["stopped_by_budget"] or not r["exact"]
         else "") + str(r["max_batch"]),
        _f(r["first_oom"]), r["mode"] + (" (stopped: time budget)" if
                                         r["stopped_by_budget"] else ""),
        _f(r["limit_gib"]),
        " ".join(f"{b}{'+' if ok else 'x'}" for b, ok, _ in r["tries"]),
        _f(r["search_s"], ".0f")] for r in mb])


def _vit_e(vite, m) -> List[str]:
  del m
  return ["## A real big-backbone LoSA train step (scanned, remat, bf16 "
          "frozen backbone, random init)", ""] + _table(
      ["variant", "batch", "px", "params", "trainable", "step ms",
       "peak GiB", "state GiB", "compiled peak GiB", "loss finite"],
      [[r["variant"], r["batch"], r["image_size"], f"{r['params']:,}",
        f"{r['trainable_params']:,}", _f(1e3 * r["median_s"], ".1f"),
        _f(r.get("peak_gib")) + ("" if r.get("peak_set_by_step",
                                                    True) else " (init)"),
        _f(r.get("state_gib")), _f(r["compiled_peak_gib"]),
        _f(r["loss_finite"])] for r in vite])


def _rows(rows, job: str, kind: str = "rows") -> List[Dict[str, Any]]:
  return [r for r in rows if r.get("job") == job and r.get("kind") == kind]


_PARTS = (("check", "rows", _check), ("check", "precision", _precision),
          ("check", "guard", _guard), ("timing", "rows", _timing),
          ("memory", "rows", _memory), ("maxbatch", "rows", _maxbatch),
          ("vit_e", "rows", _vit_e))


def markdown(rows: Sequence[Dict[str, Any]], meta: Dict[str, Any],
             options: Dict[str, Any]) -> str:
  """Provenance, one table per part that produced rows, then the jobs that
  measured nothing (killed, out of budget, failed)."""
  jobs = [r for r in rows if r.get("kind") == "job"]
  first = next((j for j in jobs if "backend" in j), {})
  m = {**meta, **options, "tensorflow_loaded": any(
      j.get("tensorflow_loaded") for j in jobs), **{
          k: first.get(k) for k in ("backend", "device", "device_kind",
                                    "memory_limit_gib")}}
  out = ["# Accelerator benchmark (python -m losa_jax.bench accelerator)", "",
         f"{m.get('date')}, {m.get('device_kind')} ({m.get('backend')}, "
         f"{m.get('device')}), jax {m.get('jax')}, flax {m.get('flax')}; "
         f"memory limit {_f(m.get('memory_limit_gib'), '.1f')} GiB; wall "
         f"{_f(m.get('wall_s'), '.0f')} s of a {_f(m.get('budget_s'), '.0f')}"
         f" s budget; TensorFlow loaded: {_f(m.get('tensorflow_loaded'))}.",
         f"Command: `{m.get('command')}`", ""]
  for job, kind, part in _PARTS:
    sel = _rows(rows, job, kind)
    if sel:
      out += part(sel, m)
  errors = [f"{j['label']}: {j['error']}" for j in jobs if "error" in j]
  if errors:
    out += ["## Not measured", ""] + [f"* {e}" for e in errors] + [""]
  return "\n".join(out)
