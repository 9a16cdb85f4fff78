# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Trains every VTAB-1k task and writes one results table (Markdown + CSV).

  python -m losa_jax.vtab_sweep --workdir /tmp/vtab \
      --config configs/vtab.py:init=/ckpts/ViT-B_16.npz,data_dir=/data/tfds \
      [--tasks cifar100,dtd,...]

Each task trains in <workdir>/<task> with the trainer (so an interrupted
sweep resumes: finished tasks are read back from their results.json, the
interrupted one resumes from its checkpoint). The table has, per task, the
top-1 accuracy, trainable params, train time and peak memory; then the three
group means, the mean over the 19 tasks and the mean of the group means (PETL
papers differ on which "Mean" they report).
"""
import csv
import json
import os
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from losa_jax import config_lib
from losa_jax import train
from losa_jax.datasets import vtab


def define_flags():
  """Defined on demand so importing this module claims no flag names."""
  flags.DEFINE_string("config", "configs/vtab.py", "Config file[:args] taking a "
                      "task=... arg (configs/vtab.py).")
  flags.DEFINE_string("workdir", None, "Sweep folder; one subfolder per task.")
  flags.DEFINE_list("tasks", ["all"], "VTAB task keys, or 'all'.")


def load_config(spec: str, task: str):
  """'configs/vtab.py:a=1' + task -> ConfigDict (task appended to the args)."""
  path, _, args = spec.partition(":")
  return config_lib.load_config(
      f"{path}:" + ",".join(a for a in (args, f"task={task}") if a))


def eval_accuracy(results: Dict) -> Optional[float]:
  for key in ("test/accuracy", "val/accuracy"):
    if key in results:
      return float(results[key])
  return None


def summarize(rows: List[Dict]) -> Dict[str, Optional[float]]:
  """Group means, mean over tasks and mean of group means (None if missing)."""
  def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
  out = {}
  for g in vtab.GROUPS:
    out[g] = mean([r["accuracy"] for r in rows if r["group"] == g])
  out["mean_of_tasks"] = mean([r["accuracy"] for r in rows])
  out["mean_of_groups"] = mean([out[g] for g in vtab.GROUPS])
  return out


def write_tables(rows: List[Dict], summary: Dict, workdir: str, title: str):
  """results.md and results.csv in workdir, each written atomically."""
  fields = ["task", "group", "accuracy", "trainable_params", "train_time_s",
            "host_peak_rss_mib", "device_peak_mib"]
  tmp = os.path.join(workdir, "results.csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    for k, v in summary.items():
      w.writerow({"task": k, "group": "summary", "accuracy": v})
  os.replace(tmp, os.path.join(workdir, "results.csv"))

  def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"
  lines = [f"# {title}", "",
           "| task | group | top-1 (%) | trainable params | train time (s) | "
           "peak host RSS (MiB) |", "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['task']} | {r['group']} | {pct(r['accuracy'])} | "
                 f"{r.get('trainable_params', '-'):,} | "
                 f"{r.get('train_time_s', 0):.0f} | "
                 f"{r.get('host_peak_rss_mib', 0):.0f} |")
  lines += ["", "| summary | top-1 (%) |", "|---|---|"]
  lines += [f"| {k} | {pct(v)} |" for k, v in summary.items()]
  tmp = os.path.join(workdir, "results.md.tmp")
  with open(tmp, "w") as f:
    f.write("\n".join(lines) + "\n")
  os.replace(tmp, os.path.join(workdir, "results.md"))


def sweep(config_spec: str, workdir: str, tasks: Sequence[str]) -> Dict:
  """Runs (or reads back) every task; returns {"rows", "summary"}."""
  if list(tasks) in (["all"], []):
    tasks = list(vtab.TASKS)
  tasks = [vtab.task(t)["name"] for t in tasks]   # validates every name first
  configs = {t: load_config(config_spec, t) for t in tasks}
  os.makedirs(workdir, exist_ok=True)
  rows = []
  for t in tasks:
    task_dir = os.path.join(workdir, t)
    done = os.path.join(task_dir, "results.json")
    if os.path.exists(done):
      logging.info("%s: already finished, reading %s", t, done)
      with open(done) as f:
        results = json.load(f)
    else:
      print(f"=== VTAB task {t} ===", flush=True)
      results = train.train_and_evaluate(configs[t], task_dir)["results"]
    rows.append({"task": t, "group": vtab.task(t)["group"],
                 "accuracy": eval_accuracy(results), **{
                     k: results.get(k) for k in (
                         "trainable_params", "train_time_s",
                         "host_peak_rss_mib", "device_peak_mib")}})
  summary = summarize(rows)
  method = configs[tasks[0]].model.method
  write_tables(rows, summary, workdir,
               f"VTAB-1k, method {method} ({config_spec})")
  return {"rows": rows, "summary": summary}


def main(argv):
  del argv
  if not flags.FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  logging.set_verbosity(logging.WARNING)
  out = sweep(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.tasks)
  print(open(os.path.join(flags.FLAGS.workdir, "results.md")).read())
  return 0 if out["rows"] else 1


if __name__ == "__main__":
  define_flags()
  app.run(main)
