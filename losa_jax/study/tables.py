# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The study's tables, from its run records, and the files a study writes.

A run record (one line of runs.jsonl, `study.run`) holds task, label,
method, rank, seed, steps, batch, num_classes, trainable_params, the
compiled cost of the step (`cost.cost_of_compiled` fields), compile_s,
accuracy, final_loss, step_s_median, train_s and curve [(step, loss, batch
accuracy)]. The budget study's records are `study.budget`'s. Markdown and
plots are made from results.json by scripts/study_report.py.
"""
import os
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from losa_jax.bench import common
from losa_jax.utils import io as io_lib


def write(out: str, csvs: Mapping[str, Sequence[Mapping[str, Any]]],
          meta: Mapping[str, Any], tables: Mapping[str, Any]) -> None:
  """Into folder `out`: every csvs[name] as the CSV out/name, meta.json, and
  results.json ({"meta", **tables}: what scripts/study_report.py reads)."""
  for name, rows in csvs.items():
    common.write_csv(os.path.join(out, name), rows, float_format=".6g")
  io_lib.write_json(os.path.join(out, "meta.json"), meta, default=str)
  io_lib.write_json(os.path.join(out, "results.json"),
                    {"meta": meta, **tables}, default=str)


def summarize(runs: List[Dict], timing: Dict[str, Dict[str, float]]
              ) -> List[Dict]:
  """Per (task, label): mean / std / min / max over seeds, plus costs."""
  out = []
  for task, label in dict.fromkeys((r["task"], r["label"]) for r in runs):
    rs = [r for r in runs if r["task"] == task and r["label"] == label]
    acc = np.array([r["accuracy"] for r in rs])
    out.append({
        "task": task, "label": label, "method": rs[0]["method"],
        "rank": rs[0]["rank"], "seeds": len(rs),
        "acc_mean": float(acc.mean()),
        "acc_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        "acc_min": float(acc.min()), "acc_max": float(acc.max()),
        "trainable_params": rs[0]["trainable_params"],
        "run_step_ms_median": 1e3 * float(np.median(
            [r["step_s_median"] for r in rs])),
        "interleaved_step_ms": 1e3 * timing.get(label, {}).get(
            "median_s", float("nan")),
        "peak_mib": rs[0]["peak_bytes"] / common.MIB,
        "temp_mib": rs[0]["temp_bytes"] / common.MIB,
        "gflop_per_step": rs[0]["flops"] / 1e9})
  return out


def task_average(runs: List[Dict], labels: Sequence[str],
                 tasks: Sequence[str]) -> Dict[str, Dict[str, float]]:
  """Accuracy averaged over tasks, per seed; then mean / std / range over seeds.

  Only seeds present for every task count, so the average is over the same
  tasks for every method.
  """
  out = {}
  for label in labels:
    per_seed = {}
    for r in runs:
      if r["label"] == label:
        per_seed.setdefault(r["seed"], {})[r["task"]] = r["accuracy"]
    avgs = np.array([np.mean([d[t] for t in tasks]) for d in per_seed.values()
                     if all(t in d for t in tasks)])
    if len(avgs):
      out[label] = {"mean": float(avgs.mean()),
                    "std": float(avgs.std(ddof=1)) if len(avgs) > 1 else 0.0,
                    "min": float(avgs.min()), "max": float(avgs.max()),
                    "seeds": len(avgs)}
  return out


def cost_rows(variants: Sequence[Any], timing) -> List[Dict]:
  """Per `run.Variant`: params, compiled cost and interleaved step time
  (timing: `bench.common.interleaved`'s result, by label)."""
  rows = []
  for v in variants:
    t, c = timing.get(v.label, {}), v.cost
    rows.append({"label": v.label, "method": v.method, "rank": v.rank,
                 "trainable_params": v.trainable,
                 "gflop_per_step": c["flops"] / 1e9,
                 "peak_mib": c["peak_bytes"] / common.MIB,
                 "temp_mib": c["temp_bytes"] / common.MIB,
                 "argument_mib": c["argument_bytes"] / common.MIB,
                 "interleaved_step_ms": 1e3 * t.get("median_s", float("nan")),
                 "interleaved_q25_ms": 1e3 * t.get("q25_s", float("nan")),
                 "interleaved_q75_ms": 1e3 * t.get("q75_s", float("nan")),
                 "timing_reps": t.get("reps", 0),
                 "compile_s": v.compile_s})
  return rows


def task_means(searches: Sequence[Dict], methods: Sequence[str],
               tasks: Sequence[str]) -> Dict[str, Dict[str, float]]:
  """Per method: the selected config's test accuracy, the default config's,
  the oracle's (best test of the K) and the search wall time, each averaged
  over tasks per seed, then mean / std over seeds (`task_average`)."""
  out: Dict[str, Dict[str, float]] = {}
  for key in ("test", "default_test", "oracle_test", "search_s", "train_s"):
    runs = [{"label": s["method"], "seed": s["seed"], "task": s["task"],
             "accuracy": s[key]} for s in searches]
    for m, a in task_average(runs, methods, tasks).items():
      out.setdefault(m, {"seeds": a["seeds"]})
      out[m][key], out[m][key + "_std"] = a["mean"], a["std"]
  return {m: out[m] for m in methods if m in out}
