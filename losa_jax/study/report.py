# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The study's tables and plots, from its run records (see `study.run`).

A run record (one line of runs.jsonl) holds task, label, method, rank, seed,
steps, batch, num_classes, trainable_params, the compiled cost of the step
(`cost.cost_of_compiled` fields), compile_s, accuracy, final_loss,
step_s_median, train_s and curve [(step, loss, batch accuracy)].
"""
from typing import Any, Dict, List, Sequence

import numpy as np

from losa_jax.bench import common
from losa_jax.datasets import study_tasks

MIB = common.MIB


# --- aggregation --------------------------------------------------------------


def summarize(runs: List[Dict], timing: Dict[str, Dict[str, float]]
              ) -> List[Dict]:
  """Per (task, label): mean / std / min / max over seeds, plus costs."""
  out = []
  keys = []
  for r in runs:
    if (r["task"], r["label"]) not in keys:
      keys.append((r["task"], r["label"]))
  for task, label in keys:
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
        "peak_mib": rs[0]["peak_bytes"] / MIB,
        "temp_mib": rs[0]["temp_bytes"] / MIB,
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


def cost_rows(variants: Sequence[Dict], timing) -> List[Dict]:
  """Per variant: params, compiled cost and interleaved step time.

  variants: `run.Variant.info()` dicts {label, method, rank,
  trainable_params, cost (`cost.cost_of_compiled`), compile_s}; timing:
  `bench.common.interleaved`'s result, by label.
  """
  rows = []
  for v in variants:
    t, c = timing.get(v["label"], {}), v["cost"]
    rows.append({"label": v["label"], "method": v["method"],
                 "rank": v["rank"], "trainable_params": v["trainable_params"],
                 "gflop_per_step": c["flops"] / 1e9,
                 "peak_mib": c["peak_bytes"] / MIB,
                 "temp_mib": c["temp_bytes"] / MIB,
                 "argument_mib": c["argument_bytes"] / MIB,
                 "interleaved_step_ms": 1e3 * t.get("median_s", float("nan")),
                 "interleaved_q25_ms": 1e3 * t.get("q25_s", float("nan")),
                 "interleaved_q75_ms": 1e3 * t.get("q75_s", float("nan")),
                 "timing_reps": t.get("reps", 0),
                 "compile_s": v["compile_s"]})
  return rows


def markdown(summary, costs, avg, tasks, meta) -> str:
  """The tables of docs/study.md."""
  labels = [c["label"] for c in costs]
  by = {(s["task"], s["label"]): s for s in summary}
  lines = [
      f"Command: `{meta['command']}`  ",
      f"Date: {meta['date']}; machine: {meta['machine']}; "
      f"{meta['steps']} steps at batch {meta['batch']} for every method; "
      f"seeds {meta['seeds']}; wall time {meta['wall_s'] / 60:.1f} min "
      f"(load average {meta['load_avg_start'][0]:.1f} at start, "
      f"{meta['load_avg_end'][0]:.1f} at end).", "",
      "Test top-1 (%), mean ± std over seeds [min–max]; cost per train step "
      f"at batch {meta['batch']}: XLA's compiled memory of the step "
      "(`memory_analysis()`: arguments + outputs + temporaries − aliased, an "
      "upper bound of what the executable holds at once; not measured RSS), "
      "XLA's FLOP count, and the median of interleaved wall-clock steps.", "",
      "| method | trainable params | step time (ms) | peak memory (MiB) | "
      "temporaries (MiB) | GFLOP / step | " +
      " | ".join(tasks) + " | task mean |",
      "|---|---:|---:|---:|---:|---:|" + "---:|" * (len(tasks) + 1)]
  for c in costs:
    cells = []
    for t in tasks:
      s = by.get((t, c["label"]))
      cells.append("–" if s is None else
                   f"{100 * s['acc_mean']:.1f} ± {100 * s['acc_std']:.1f} "
                   f"[{100 * s['acc_min']:.1f}–{100 * s['acc_max']:.1f}]")
    a = avg.get(c["label"])
    cells.append("–" if a is None else
                 f"**{100 * a['mean']:.1f}** ± {100 * a['std']:.1f}")
    lines.append(
        f"| {c['label']} | {c['trainable_params']:,} | "
        f"{c['interleaved_step_ms']:.1f} | {c['peak_mib']:.2f} | "
        f"{c['temp_mib']:.2f} | {c['gflop_per_step']:.3f} | " +
        " | ".join(cells) + " |")
  lines += ["", "Tasks:", ""]
  for t in tasks:
    dom, what = study_tasks.TASK_INFO.get(t, ("", t))
    lines.append(f"* `{t}` ({dom}): {what}.")
  lines += ["", "Median step time of the training runs themselves (ms; "
            "exposed to the other jobs on the machine, for reference):", "",
            "| method | " + " | ".join(tasks) + " |",
            "|---|" + "---:|" * len(tasks)]
  for label in labels:
    cells = [f"{by[(t, label)]['run_step_ms_median']:.1f}"
             if (t, label) in by else "–" for t in tasks]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


# --- plots --------------------------------------------------------------------


def plot_all(out: str, summary, costs, avg, runs, tasks) -> List[str]:
  """accuracy_vs_cost.png, accuracy_per_task.png, loss_curves.png."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = [c["label"] for c in costs]
  cmap = plt.get_cmap("tab10")
  col = {l: cmap(i % 10) for i, l in enumerate(labels)}
  written = []

  # Paper-style: task-averaged accuracy against each cost.
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, key, name, logx in (
      (axes[0], "trainable_params", "trainable parameters", True),
      (axes[1], "interleaved_step_ms", "train step time (ms, interleaved "
       "median)", False),
      (axes[2], "peak_mib", "compiled peak memory of the step (MiB, XLA)",
       False)):
    for c in costs:
      a = avg.get(c["label"])
      if a is None:
        continue
      ax.errorbar(c[key], 100 * a["mean"],
                  yerr=[[100 * (a["mean"] - a["min"])],
                        [100 * (a["max"] - a["mean"])]],
                  fmt="o", color=col[c["label"]], capsize=3, ms=7,
                  label=c["label"])
      ax.annotate(c["label"], (c[key], 100 * a["mean"]), fontsize=8,
                  xytext=(5, 4), textcoords="offset points")
    if logx:
      ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel(f"test top-1, mean of {len(tasks)} tasks (%)")
    ax.grid(alpha=0.3)
  axes[0].set_title("accuracy vs trainable params")
  axes[1].set_title("accuracy vs step time")
  axes[2].set_title("accuracy vs memory")
  fig.suptitle("Shipped MNIST ViT adapted with each method (bars: min–max "
               "over seeds)", fontsize=10)
  fig.tight_layout()
  written.append(common.save_figure(fig, out, "accuracy_vs_cost.png"))

  # Per task, per method: mean with min-max bars.
  by = {(s["task"], s["label"]): s for s in summary}
  fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(tasks)), 4))
  width = 0.8 / max(len(labels), 1)
  for i, label in enumerate(labels):
    xs, ys, lo, hi = [], [], [], []
    for j, t in enumerate(tasks):
      s = by.get((t, label))
      if s is None:
        continue
      xs.append(j + (i - (len(labels) - 1) / 2) * width)
      ys.append(100 * s["acc_mean"])
      lo.append(100 * (s["acc_mean"] - s["acc_min"]))
      hi.append(100 * (s["acc_max"] - s["acc_mean"]))
    ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, color=col[label],
           label=label)
  ax.set_xticks(range(len(tasks)))
  ax.set_xticklabels(tasks)
  ax.set_ylabel("test top-1 (%)")
  ax.legend(fontsize=7, ncol=4)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  written.append(common.save_figure(fig, out, "accuracy_per_task.png"))

  # Training loss of the first seed, per task.
  fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.4),
                           squeeze=False)
  for ax, t in zip(axes[0], tasks):
    seed0 = min((r["seed"] for r in runs if r["task"] == t), default=0)
    for r in runs:
      if r["task"] == t and r["seed"] == seed0 and r.get("curve"):
        s, l, _ = zip(*r["curve"])
        ax.plot(s, l, color=col[r["label"]], label=r["label"], lw=1.2)
    ax.set_title(f"{t} (seed {seed0})")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("train loss (batch)")
  axes[0][-1].legend(fontsize=7)
  fig.tight_layout()
  written.append(common.save_figure(fig, out, "loss_curves.png"))
  return written


# --- all outputs --------------------------------------------------------------


def write_all(out: str, runs: List[Dict], variants: Sequence[Dict],
              timing: Dict[str, Dict[str, Any]], tasks: Sequence[str],
              meta: Dict[str, Any]) -> Dict[str, Any]:
  """runs.csv, summary.csv, cost.csv, task_mean.csv, meta.json, results.md
  and the plots, into `out`; returns {summary, costs, avg, markdown, plots}.
  """
  summary = summarize(runs, timing)
  costs = cost_rows(variants, timing)
  avg = task_average(runs, [c["label"] for c in costs], tasks)
  md = markdown(summary, costs, avg, tasks, meta)
  common.write_results(out, {
      "runs.csv": runs, "summary.csv": summary, "cost.csv": costs,
      "task_mean.csv": [{"label": k, **v} for k, v in avg.items()]},
      meta, md)
  plots = plot_all(out, summary, costs, avg, runs, tasks)
  return {"summary": summary, "costs": costs, "avg": avg, "markdown": md,
          "plots": plots}
