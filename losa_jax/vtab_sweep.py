# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Trains every VTAB-1k task and writes one results table (Markdown + CSV).

  python -m losa_jax.vtab_sweep --workdir /tmp/vtab \
      --config configs/vtab.py:init=/ckpts/ViT-B_16.npz,data_dir=/data/tfds \
      [--tasks cifar100,dtd,...]

With --auto (and a config with a population), each task runs AutoLoSA
(losa_jax.auto: a population searched on train800 -> val200, the best
member retrained on train800val200 -> test) and the table gains the chosen
values (lr, wd, rank, ...) and the search's wall time per task:

  python -m losa_jax.vtab_sweep --auto --workdir /tmp/vtab_auto \
      --config configs/vtab.py:population=default,init=...,data_dir=...

Each task trains in <workdir>/<task> with the trainer; a rerun resumes. The
table has, per task, the TFDS version read, top-1 accuracy, trainable
params, train time and peak memory; then the group means, the mean over
tasks and the mean of the group means (PETL papers report either).
"""
import csv
import os
from typing import Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging

from losa_jax import auto as auto_lib
from losa_jax.config import schema as config_lib
from losa_jax import train
from losa_jax.datasets import vtab
from losa_jax.utils import io


def define_flags():
  """Defined on demand so importing this module claims no flag names."""
  flags.DEFINE_string("config", "configs/vtab.py", "Config file[:args] taking a "
                      "task=... arg (configs/vtab.py).")
  flags.DEFINE_string("workdir", None, "Sweep folder; one subfolder per task.")
  flags.DEFINE_list("tasks", ["all"], "VTAB task keys, or 'all'.")
  flags.DEFINE_bool("auto", False, "Run AutoLoSA per task (search the "
                    "config's population on val, retrain the best on "
                    "train800val200 -> test); the config needs a population, "
                    "e.g. configs/vtab.py:population=default.")


def task_spec(spec: str, task: str) -> str:
  """'configs/vtab.py:a=1' + task -> 'configs/vtab.py:a=1,task=<task>'."""
  path, _, args = spec.partition(":")
  return f"{path}:" + ",".join(a for a in (args, f"task={task}") if a)


def load_config(spec: str, task: str):
  """'configs/vtab.py:a=1' + task -> ConfigDict (task appended to the args)."""
  return config_lib.load_config(task_spec(spec, task))


def summarize(rows: List[Dict]) -> Dict[str, Optional[float]]:
  """Group means, mean over tasks and mean of group means (None if missing)."""
  def mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None
  out = {g: mean([r["accuracy"] for r in rows if r["group"] == g])
         for g in vtab.GROUPS}
  out["mean_of_tasks"] = mean([r["accuracy"] for r in rows])
  out["mean_of_groups"] = mean([out[g] for g in vtab.GROUPS])
  return out


def write_tables(rows: List[Dict], summary: Dict, workdir: str, title: str,
                 chosen: Sequence[str] = ()):
  """results.md and results.csv in workdir, each written atomically.

  chosen: the columns of AutoLoSA's chosen values (e.g. lr, wd, rank); with
  them the tables also give the search's wall time.
  """
  def pct(v):
    return "-" if v is None else f"{100 * v:.1f}"

  def whole(v):
    return f"{v or 0:.0f}"
  # (CSV field, Markdown head or None, Markdown format)
  cols = ([("task", "task", str), ("group", "group", str),
           ("tfds", "TFDS", str), ("accuracy", "top-1 (%)", pct)] +
          [(k, k, auto_lib.format_value) for k in chosen] +
          [("trainable_params", "trainable params", lambda v: f"{v or 0:,}"),
           ("train_time_s", "train time (s)", whole)] +
          [("search_time_s", "search time (s)", whole)] * bool(chosen) +
          [("host_peak_rss_mib", "peak host RSS (MiB)", whole),
           ("device_peak_mib", None, None)])
  with io.atomic_write(os.path.join(workdir, "results.csv"),
                       newline="") as f:
    w = csv.DictWriter(f, fieldnames=[c[0] for c in cols],
                       extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    for k, v in summary.items():
      w.writerow({"task": k, "group": "summary", "accuracy": v})
  md = [c for c in cols if c[1]]
  lines = [f"# {title}", "", "| " + " | ".join(c[1] for c in md) + " |",
           "|" + "---|" * len(md)]
  for r in rows:
    lines.append("| " + " | ".join(fmt(r.get(k)) for k, _, fmt in md) + " |")
  lines += ["", "| summary | top-1 (%) |", "|---|---|"]
  lines += [f"| {k} | {pct(v)} |" for k, v in summary.items()]
  io.write_text(os.path.join(workdir, "results.md"),
                "\n".join(lines) + "\n")


def _auto_results(spec: str, task_dir: str) -> Tuple[Dict, List[str]]:
  """AutoLoSA in task_dir (read back if finished): (the final run's results
  with the chosen values and the search's wall time, the chosen keys)."""
  done = os.path.join(task_dir, "selection.json")
  if os.path.exists(done):
    logging.info("%s: already finished, reading %s", task_dir, done)
    sel = io.read_json(done)
  else:
    sel = auto_lib.run(spec, task_dir)
  values = sel["chosen"]["values"]
  return ({**sel["final"]["results"], **values,
           "search_time_s": sel["cost"]["search_wall_s"]}, list(values))


ROW_KEYS = ("trainable_params", "train_time_s", "host_peak_rss_mib",
            "device_peak_mib")


def sweep(config_spec: str, workdir: str, tasks: Sequence[str], *,
          auto: bool = False) -> Dict:
  """Runs (or reads back) every task; returns {"rows", "summary"}.

  auto: run losa_jax.auto per task (the config needs a population); the
  rows and tables gain the chosen values and the search's wall time.
  """
  if list(tasks) in (["all"], []):
    tasks = list(vtab.TASKS)
  tasks = [vtab.task(t)["name"] for t in tasks]   # validates every name first
  configs = {t: load_config(config_spec, t) for t in tasks}
  if auto and not configs[tasks[0]].get("population"):
    raise ValueError(f"--auto: {config_spec} has no population to search; "
                     "add population=default (or random) to its args.")
  os.makedirs(workdir, exist_ok=True)
  rows, chosen = [], []
  for t in tasks:
    task_dir = os.path.join(workdir, t)
    done = os.path.join(task_dir, "results.json")
    tfds_version = vtab.resolved_tfds(t, configs[t].input.data.get("data_dir"))
    if auto:
      print(f"=== VTAB task {t} ({tfds_version}, AutoLoSA) ===", flush=True)
      results, keys = _auto_results(task_spec(config_spec, t), task_dir)
      chosen += [k for k in keys if k not in chosen]
    elif os.path.exists(done):
      logging.info("%s: already finished, reading %s", t, done)
      results = io.read_json(done)
    else:
      print(f"=== VTAB task {t} ({tfds_version}) ===", flush=True)
      results = train.train_and_evaluate(configs[t], task_dir)["results"]
    extra = ("search_time_s", *chosen) if auto else ()
    rows.append({"task": t, "group": vtab.task(t)["group"],
                 "tfds": tfds_version,
                 "accuracy": next((float(results[k]) for k in (
                     "test/accuracy", "val/accuracy") if k in results), None),
                 **{k: results.get(k) for k in ROW_KEYS + extra}})
  summary = summarize(rows)
  method = configs[tasks[0]].model.method
  write_tables(rows, summary, workdir,
               f"VTAB-1k, method {method}{', AutoLoSA' if auto else ''} "
               f"({config_spec})", chosen)
  return {"rows": rows, "summary": summary}


def main(argv):
  del argv
  if not flags.FLAGS.workdir:
    raise app.UsageError("--workdir is required.")
  logging.set_verbosity(logging.WARNING)
  out = sweep(flags.FLAGS.config, flags.FLAGS.workdir, flags.FLAGS.tasks,
              auto=flags.FLAGS.auto)
  print(open(os.path.join(flags.FLAGS.workdir, "results.md")).read())
  return 0 if out["rows"] else 1


if __name__ == "__main__":
  define_flags()
  app.run(main)
