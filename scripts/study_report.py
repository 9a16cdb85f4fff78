# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Markdown tables and plots of a study, from its results.json.

  python scripts/study_report.py DIR

DIR is the --out of `python -m losa_jax.study.run` (writes DIR/results.md,
accuracy_vs_cost.png, accuracy_per_task.png, loss_curves.png) or of
`python -m losa_jax.study.budget` (DIR/results.md,
accuracy_vs_tuning_cost.png, ablation.png).
"""
import json
import os
import sys
from typing import Any, Dict, List, Sequence

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
# pylint: disable=g-import-not-at-top,wrong-import-position
from losa_jax.datasets import study_tasks
from losa_jax.utils import io as io_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

MIB = 2.0**20


def _pct(x) -> str:
  return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def _save(fig, out: str, name: str) -> str:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  path = os.path.join(out, name)
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def study_markdown(summary, costs, avg, tasks, meta) -> str:
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


def study_plots(out: str, summary, costs, avg, runs, tasks) -> List[str]:
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
  written.append(_save(fig, out, "accuracy_vs_cost.png"))

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
  written.append(_save(fig, out, "accuracy_per_task.png"))

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
  written.append(_save(fig, out, "loss_curves.png"))
  return written


# --- all outputs --------------------------------------------------------------


def budget_markdown(searches, costs, means, tasks, ablation_effects, ablation_tasks,
             meta) -> str:
  """The tables of docs/study.md's "Equal tuning budgets"."""
  lines = [
      f"Command: `{meta['command']}`  ",
      f"Date: {meta['date']}; machine: {meta['machine']}; jax "
      f"{meta['jax']}, Python {meta['python']}; wall time "
      f"{meta['wall_s'] / 60:.1f} min (load average "
      f"{meta['load_avg_start'][0]:.1f} at start, "
      f"{meta['load_avg_end'][0]:.1f} at end).", ""]
  if searches:
    lines += _search_tables(searches, costs, means, tasks, meta)
  if ablation_effects:
    lines += _ablation_tables(ablation_effects, ablation_tasks, meta)
  return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def _search_tables(searches, costs, means, tasks, meta) -> List[str]:
  k = meta["configs_per_method"]
  lines = [
      f"Every method searched K = {k} configs (lr x wd, rank 8 where it "
      f"applies), {meta['steps']} steps at batch {meta['batch']} on "
      f"train[:{100 - meta['val_percent']}%], and kept the member with the "
      f"best minival (train[{100 - meta['val_percent']}%:]) accuracy (ties to"
      " fewer params); its test accuracy is reported (no retraining).", "",
      "| method | lr grid | wd grid |", "|---|---|---|"]
  for m, grid in meta["grids"].items():
    lines.append(f"| {m} | {', '.join(f'{x:g}' for x in grid['lr'])} | "
                 f"{', '.join(f'{x:g}' for x in grid['wd'])} |")
  lines += [
      "", "Cost of the search (one step of the search = K members' step; "
      "compiled figures of the first task's executables; interleaved: "
      "median of rounds in which every executable ran once, rotated):", "",
      "| method | runs | backbone passes / search step | trainable params | "
      "GFLOP / search step ÷ K | GFLOP / search step | peak MiB / search "
      "step | interleaved ms / search step ÷ K | interleaved ms / search "
      "step | compile s |", "|---|" + "---:|" * 9]
  for c in costs:
    lines.append(
        f"| {c['label']} | {c['runs']} | {c['backbone_passes']} | "
        f"{c['trainable_params']:,} | {c['gflop_step']:.3f} | "
        f"{c['gflop_search_step']:.3f} | {c['peak_mib_search']:.1f} | "
        f"{c['step_ms']:.1f} | {c['search_step_ms']:.1f} | "
        f"{c['compile_s']:.1f} |")
  lines += [
      "", "Accuracy of the selected config and measured search wall time "
      "(compile of the train and eval steps + K x steps + minival "
      "evaluation; the methods ran back to back in one process, order "
      "rotated per task; test evaluation of the K members, for the last two "
      "columns, is not counted):", "",
      "| method | " + " | ".join(f"{t} test (selected)" for t in tasks) +
      " | task mean test | default config | oracle (best test of K) | "
      "search wall s / task |",
      "|---|" + "---:|" * (len(tasks) + 4)]
  by = {(s["task"], s["method"], s["seed"]): s for s in searches}
  for m, agg in means.items():
    cells = []
    for t in tasks:
      ss = [s for (tt, mm, _), s in by.items() if tt == t and mm == m]
      cells.append(" / ".join(f"{_pct(s['test'])} ({s['selected_label']})"
                              for s in ss))
    lines.append(
        f"| {m} | " + " | ".join(cells) +
        f" | **{_pct(agg['test'])}** | {_pct(agg['default_test'])} | "
        f"{_pct(agg['oracle_test'])} | {agg['search_s']:.0f} |")
  lines += ["", "Per search:", "",
            "| task | seed | method | selected | minival | test | diverged | "
            "compile s | train s | minival eval s | test eval s | load "
            "before / after |",
            "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for s in searches:
    lines.append(
        f"| {s['task']} | {s['seed']} | {s['method']} | "
        f"{s['selected_label']} | {_pct(s['minival'])} | {_pct(s['test'])} | "
        f"{s['diverged']} | {s['compile_s']:.0f} | {s['train_s']:.0f} | "
        f"{s['eval_s']:.0f} | {s['test_eval_s']:.0f} | "
        f"{s['load_before']:.1f} / "
        f"{s['load_after']:.1f} |")
  return lines


def _ablation_tables(ablation_effects, ablation_tasks, meta) -> List[str]:
  lrs = meta.get("ablation_lrs") or []
  at = (f"each at its best lr of {', '.join(f'{x:g}' for x in lrs)} by "
        "minival" if lrs else f"lr {meta['ablation_lr']:g}")
  lines = [
      "", "LoSA switches, each changed alone from the reference design "
      f"({at}, seeds {meta['ablation_seeds']}, one population per task): "
      "accuracy minus the reference's, same task, seed and batches, in "
      "points; mean [min, max] over (task, seed); wins: pairs where it is "
      "better.", "",
      "| switch | default -> alternative | minival: mean [min, max] | "
      "wins | test: mean [min, max] | wins | passes the screen? |",
      "|---|---|---:|---:|---:|---:|---|"]
  for e in ablation_effects:
    lines.append(
        f"| {e['switch']} | {e['default']} -> {e['value']} | "
        f"{100 * e['minival_mean']:+.1f} [{100 * e['minival_min']:+.1f}, "
        f"{100 * e['minival_max']:+.1f}] | {e['minival_wins']}/"
        f"{e['pairs']} | {100 * e['test_mean']:+.1f} "
        f"[{100 * e['test_min']:+.1f}, {100 * e['test_max']:+.1f}] | "
        f"{e['test_wins']}/{e['pairs']} | "
        f"{'yes' if e['candidate'] else 'no'} |")
  names = [k for k in ablation_tasks[0] if k not in ("structure", "lrs")]
  lines += ["", "Accuracy of each structure (mean over seeds, %) and its "
            "selected lr per (task, seed):", "",
            "| structure | " + " | ".join(names) + " | lrs |",
            "|---|" + "---:|" * len(names) + "---|"]
  for r in ablation_tasks:
    lines.append(f"| {r['structure']} | " +
                 " | ".join(_pct(r[n]) for n in names) + f" | {r['lrs']} |")
  return lines


def budget_plots(out: str, costs, means, tasks, effects) -> List[str]:
  """accuracy_vs_tuning_cost.png (and ablation.png)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  written = []
  by = {c["label"]: c for c in costs}
  methods = [m for m in means if m in by]
  cmap = plt.get_cmap("tab10")
  if methods:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        (lambda m: means[m]["search_s"], "measured search wall time per "
         "task (s)", "accuracy vs tuning time"),
        (lambda m: by[m]["gflop_search_step"], "GFLOP per search step (K "
         "configs, XLA)", "accuracy vs search FLOPs"),
        (lambda m: by[m]["peak_mib_search"], "compiled peak memory of the "
         "search step (MiB, XLA)", "accuracy vs memory"))
    for ax, (x_of, xlabel, title) in zip(axes, panels):
      for i, m in enumerate(methods):
        x, y = x_of(m), 100 * means[m]["test"]
        ax.errorbar(x, y, yerr=100 * means[m]["test_std"], fmt="o", ms=7,
                    capsize=3, color=cmap(i % 10), label=m)
        ax.annotate(m, (x, y), fontsize=8, xytext=(5, 4),
                    textcoords="offset points")
      ax.set_xscale("log")
      # Plain numbers: the axes span less than a decade or two.
      ax.xaxis.set_major_formatter(ticker.ScalarFormatter())
      ax.xaxis.set_minor_formatter(ticker.NullFormatter())
      ax.set_xlabel(xlabel)
      ax.set_ylabel("test top-1 of the selected config, mean of "
                    f"{len(tasks)} tasks (%)")
      ax.set_title(title)
      ax.grid(alpha=0.3)
    fig.suptitle("Equal tuning budgets: every method searched the same lr x "
                 "wd grid size, selected on minival", fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, out, "accuracy_vs_tuning_cost.png"))
  if effects:
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ys = np.arange(len(effects))
    for j, (split, off) in enumerate((("minival", -0.18), ("test", 0.18))):
      mean = np.array([100 * e[f"{split}_mean"] for e in effects])
      lo = mean - np.array([100 * e[f"{split}_min"] for e in effects])
      hi = np.array([100 * e[f"{split}_max"] for e in effects]) - mean
      ax.barh(ys + off, mean, 0.36, xerr=[lo, hi], capsize=2,
              color=cmap(j), label=split)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{e['switch']}={e['value']}" for e in effects])
    ax.set_xlabel("accuracy minus the reference design's (points)\n"
                  "bars: mean; whiskers: min-max over task x seed")
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out, "ablation.png"))
  return written

def main(argv: Sequence[str]) -> Dict[str, Any]:
  """Writes DIR/results.md and the plots; returns {markdown, plots}."""
  if len(argv) != 1 or not os.path.exists(os.path.join(argv[0],
                                                       "results.json")):
    raise SystemExit("usage: python scripts/study_report.py DIR (the --out "
                     "of python -m losa_jax.study.run or .budget, holding "
                     "results.json)")
  out = argv[0]
  with open(os.path.join(out, "results.json")) as f:
    r = json.load(f)
  meta = r["meta"]
  if r["kind"] == "study":
    md = study_markdown(r["summary"], r["costs"], r["avg"], r["tasks"], meta)
    plots = study_plots(out, r["summary"], r["costs"], r["avg"], r["runs"],
                        r["tasks"])
  else:
    md = budget_markdown(r["searches"], r["costs"], r["means"], r["tasks"],
                         r["effects"], r["per_task"], meta)
    plots = budget_plots(out, r["costs"], r["means"], r["tasks"],
                         r["effects"])
  io_lib.write_text(os.path.join(out, "results.md"), md)
  return {"markdown": md, "plots": plots}


if __name__ == "__main__":
  print(main(sys.argv[1:])["markdown"])
