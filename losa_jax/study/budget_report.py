# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Tables, CSVs and plots of the equal-budget study (`study.budget`).

Records (see `budget.run_budget`): a *search* (one method, task and seed:
K members, selection, cost), a *member* (one config of a search), *costs*
(per method: compiled step, search step, interleaved times) and the
ablation's member rows and effects (`study.ablation`).
"""
from typing import Any, Dict, List, Sequence

import numpy as np

from losa_jax.bench import common
from losa_jax.study import report

MIB = common.MIB


def _pct(x) -> str:
  return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


def task_means(searches: Sequence[Dict], methods: Sequence[str],
               tasks: Sequence[str]) -> Dict[str, Dict[str, float]]:
  """Per method: the selected config's test accuracy, the default config's,
  the oracle's (best test of the K) and the search wall time, each averaged
  over tasks per seed, then mean / std over seeds (`report.task_average`)."""
  out: Dict[str, Dict[str, float]] = {}
  for key in ("test", "default_test", "oracle_test", "search_s", "train_s"):
    runs = [{"label": s["method"], "seed": s["seed"], "task": s["task"],
             "accuracy": s[key]} for s in searches]
    for m, a in report.task_average(runs, methods, tasks).items():
      out.setdefault(m, {"seeds": a["seeds"]})
      out[m][key], out[m][key + "_std"] = a["mean"], a["std"]
  return {m: out[m] for m in methods if m in out}


def markdown(searches, costs, means, tasks, ablation_effects, ablation_tasks,
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


def plot(out: str, costs, means, tasks, effects) -> List[str]:
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
    written.append(common.save_figure(fig, out,
                                      "accuracy_vs_tuning_cost.png"))
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
    written.append(common.save_figure(fig, out, "ablation.png"))
  return written


def write_all(out: str, searches, members, costs, tasks, ablation_rows,
              ablation_effects, ablation_tasks, meta) -> Dict[str, Any]:
  """searches.csv, members.csv, cost.csv, task_mean.csv, ablation*.csv,
  meta.json, results.md and the plots into `out`."""
  methods = [c["label"] for c in costs if c["label"] in
             {s["method"] for s in searches}]
  means = task_means(searches, methods, tasks)
  md = markdown(searches, costs, means, tasks, ablation_effects,
                ablation_tasks, meta)
  common.write_results(out, {
      "searches.csv": searches, "members.csv": members, "cost.csv": costs,
      "task_mean.csv": [{"method": k, **v} for k, v in means.items()],
      "ablation_members.csv": ablation_rows,
      "ablation_effects.csv": ablation_effects}, meta, md)
  plots = plot(out, costs, means, tasks, ablation_effects)
  return {"means": means, "markdown": md, "plots": plots}

