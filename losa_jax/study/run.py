# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Small-scale study: every method, equal step budgets, several seeds, offline.

  python -m losa_jax.study.run --out docs/study_results
  python -m losa_jax.study.run --out /tmp/study --quick     # smoke test

For every task in `losa_jax.study.tasks` and every method (LoSA at several
ranks, linear probe, full fine-tuning, LoRA, adapters) this adapts the
shipped MNIST-pretrained tiny ViT (losa_jax/assets/vit_mnist5k_tiny.npz)
with the demo's hyperparameters (`configs/default.py`: AdamW, cosine
schedule, lr 3e-3, 3e-4 for full fine-tuning, no augmentation), the same
number of steps and batch size for every method, once per seed. Seeds change
the initialisation and the data order, not the split.

Each (method, rank, number of classes) is built once with `build.build` (the
trainer's own model, optimizer and jitted step) and compiled once,
ahead of time; that executable gives the compiled cost (XLA's FLOPs and
memory analysis) and runs the training. Data are in-memory numpy arrays fed
in a seeded shuffled order, so nothing is written but the outputs.

Step time is reported twice: the median step of each training run (honest
but exposed to the other jobs on a shared machine), and an interleaved
round-robin timing of all methods side by side after training (the one the
tables use; `losa_jax.bench.suite.interleaved` when available).

Writes into --out: runs.jsonl (one record per run, with loss curve),
runs.csv, summary.csv (per task and method: mean / std / min / max over
seeds), cost.csv (per method: params, FLOPs, memory, interleaved step time),
results.md (the tables of docs/study.md), meta.json (command, date,
machine, versions, wall time, load), and plots: accuracy_vs_cost.png,
accuracy_per_task.png, loss_curves.png.
"""
import argparse
import csv
import datetime
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
if REPO not in sys.path:     # configs/ lives beside the package
  sys.path.insert(0, REPO)

DEFAULT_TASKS = ("digits", "mnist_10shot", "dsprites_loc", "dsprites_ori")
DEFAULT_METHODS = ("losa", "linear", "full", "lora", "adapter")
DEFAULT_RANKS = (2, 8, 32)
BASELINE_RANK = 8            # LoRA rank / adapter bottleneck of the baselines
# As in losa_jax/demo/run.py: full fine-tuning moves every weight, so it gets
# the usual smaller step; everything else uses configs/default.py's 3e-3.
LR = {"full": 3e-4}
EVAL_BATCH = 200
MIB = 2.0**20


def _log(msg: str):
  print(f"[study {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- variants and configs -------------------------------------------------------


def variants(methods: Sequence[str], ranks: Sequence[int]):
  """[(label, method, rank)]: LoSA once per rank, the others at rank 8."""
  out = []
  for m in methods:
    if m == "losa":
      out += [(f"losa r={r}", "losa", r) for r in ranks]
    elif m == "lora":
      out.append((f"lora r={BASELINE_RANK}", m, BASELINE_RANK))
    elif m == "adapter":
      out.append((f"adapter d={BASELINE_RANK}", m, BASELINE_RANK))
    else:
      out.append((m, m, BASELINE_RANK))
  return out


def make_config(method: str, rank: int, num_classes: int, steps: int,
                batch: int):
  """configs/default.py for `method`, with the study's steps and classes."""
  from configs import default as default_config  # pylint: disable=g-import-not-at-top
  from losa_jax import config_lib  # pylint: disable=g-import-not-at-top
  arg = f"method={method},rank={rank},steps={steps},batch={batch}"
  if method in LR:
    arg += f",lr={LR[method]}"
  c = default_config.get_config(arg)
  c.num_classes = num_classes
  config_lib.validate(c)
  return config_lib.with_defaults(c)


def cost_of(compiled) -> Dict[str, float]:
  """The fields of `losa_jax.cost.compiled_cost`, from an executable we keep.

  Reading them from the executable that also trains saves a second compile
  per variant (compiles dominate a 2-core CPU run of a tiny model).
  """
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):
    ca = ca[0]
  mem = compiled.memory_analysis()
  out = {"flops": float(ca.get("flops", 0.0))}
  for name in ("temp", "argument", "output", "alias"):
    out[f"{name}_bytes"] = float(getattr(mem, f"{name}_size_in_bytes", 0))
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] +
                       out["temp_bytes"] - out["alias_bytes"])
  return out


class Variant:
  """One method at one rank and class count: built and compiled once."""

  def __init__(self, label, method, rank, num_classes, steps, batch):
    import jax  # pylint: disable=g-import-not-at-top
    from losa_jax import build  # pylint: disable=g-import-not-at-top
    from losa_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
    from losa_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top
    self.label, self.method, self.rank = label, method, rank
    self.config = make_config(method, rank, num_classes, steps, batch)
    self.built = build.build(self.config, total_steps=steps)
    self.batch_sharding = sharding_lib.batch_sharding(self.built.mesh)
    t0 = time.perf_counter()
    self.step = self.built.train_step.lower(
        self.built.state_shape,
        steps_lib.abstract_batch(batch, self.built.image_shape)).compile()
    self.compile_s = time.perf_counter() - t0
    self.cost = cost_of(self.step)
    self.trainable = self.built.num_trainable()
    self._jax = jax

  def fresh_state(self, seed: int):
    """Initial state with the shipped backbone loaded (as the trainer does)."""
    from losa_jax import train  # pylint: disable=g-import-not-at-top
    jax = self._jax
    state = self.built.init(jax.random.key(seed))
    state["params"] = train.load_backbone(state["params"], self.config)
    return jax.device_put(state, self.built.state_sharding)

  def put(self, batch):
    return self._jax.device_put(batch, self.batch_sharding)


# --- one run --------------------------------------------------------------------


def evaluate(var: Variant, params, x: np.ndarray, y: np.ndarray) -> float:
  """Top-1 on (x, y); the last batch is padded and masked (one eval shape)."""
  correct = count = 0.0
  for i in range(0, len(y), EVAL_BATCH):
    xb, yb = x[i:i + EVAL_BATCH], y[i:i + EVAL_BATCH]
    n = len(yb)
    pad = EVAL_BATCH - n
    batch = {"image": np.pad(xb, ((0, pad), (0, 0), (0, 0), (0, 0))),
             "label": np.pad(yb, (0, pad)),
             "_mask": np.pad(np.ones(n, np.float32), (0, pad))}
    sums = var.built.eval_step(params, var.put(batch))
    correct += float(sums["correct"])
    count += float(sums["count"])
  return correct / max(count, 1.0)


def train_run(var: Variant, data: Dict[str, np.ndarray], seed: int,
              steps: int, batch: int, curve_every: int = 10) -> Dict[str, Any]:
  """Trains one seed; returns accuracy, step times and the loss curve."""
  t_start = time.perf_counter()
  state = var.fresh_state(seed)
  x, y = data["x_train"], data["y_train"]
  rng = np.random.default_rng(seed)
  perm, pos = rng.permutation(len(y)), 0
  times, curve = [], []
  for step in range(1, steps + 1):
    if pos + batch > len(y):          # new epoch, drop the remainder
      perm, pos = rng.permutation(len(y)), 0
    idx = perm[pos:pos + batch]
    pos += batch
    b = var.put({"image": x[idx], "label": y[idx]})
    t0 = time.perf_counter()
    state, metrics = var.step(state, b)
    loss = float(metrics["loss"])     # blocks: the time is the whole step
    times.append(time.perf_counter() - t0)
    if not np.isfinite(loss):
      raise FloatingPointError(f"{var.label}: loss {loss} at step {step}.")
    if step % curve_every == 0 or step == steps:
      curve.append((step, loss, float(metrics["accuracy"])))
  acc = evaluate(var, state["params"], data["x_test"], data["y_test"])
  # The first steps include dispatch warm-up; the median ignores outliers
  # from other jobs on a shared machine.
  return {"accuracy": acc, "final_loss": curve[-1][1],
          "step_s_median": float(np.median(times[min(3, steps - 1):])),
          "train_s": time.perf_counter() - t_start, "curve": curve}


# --- timing ---------------------------------------------------------------------


def _interleaved(fns: Dict[str, Callable[[], Any]], reps: int, warmup: int):
  """Round-robin timing; the bench suite's when present, else the same here."""
  try:
    from losa_jax.bench import suite  # pylint: disable=g-import-not-at-top
    return suite.interleaved(fns, reps=reps, warmup=warmup)
  except (ImportError, AttributeError):
    names = list(fns)
    for _ in range(1 + warmup):
      for n in names:
        fns[n]()
    times = {n: [] for n in names}
    for r in range(reps):
      for n in names[r % len(names):] + names[:r % len(names)]:
        t0 = time.perf_counter()
        fns[n]()
        times[n].append(time.perf_counter() - t0)
    return times


def interleaved_step_times(vars_: Sequence[Variant], x: np.ndarray,
                           y: np.ndarray, batch: int, reps: int
                           ) -> Dict[str, Dict[str, float]]:
  """Median / quartiles of one train step per variant, timed side by side."""
  import jax  # pylint: disable=g-import-not-at-top
  fns = {}
  for var in vars_:
    holder = {"state": var.fresh_state(0)}
    b = var.put({"image": x[:batch], "label": y[:batch]})

    def fn(var=var, holder=holder, b=b):
      holder["state"], m = var.step(holder["state"], b)
      jax.block_until_ready((holder["state"], m))
    fns[var.label] = fn
  times = _interleaved(fns, reps=reps, warmup=1)
  return {k: {"median_s": float(np.median(v)),
              "q25_s": float(np.percentile(v, 25)),
              "q75_s": float(np.percentile(v, 75)), "reps": len(v)}
          for k, v in times.items()}


# --- aggregation and outputs -------------------------------------------------------


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


def write_csv(path: str, rows: List[Dict]):
  if not rows:
    return
  fields = [k for k in rows[0] if k != "curve"]
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v)
                  for k, v in r.items() if k in fields})
  os.replace(path + ".tmp", path)


def cost_rows(vars_: Sequence[Variant], timing) -> List[Dict]:
  rows = []
  for v in vars_:
    t = timing.get(v.label, {})
    rows.append({"label": v.label, "method": v.method, "rank": v.rank,
                 "trainable_params": v.trainable,
                 "gflop_per_step": v.cost["flops"] / 1e9,
                 "peak_mib": v.cost["peak_bytes"] / MIB,
                 "temp_mib": v.cost["temp_bytes"] / MIB,
                 "argument_mib": v.cost["argument_bytes"] / MIB,
                 "interleaved_step_ms": 1e3 * t.get("median_s", float("nan")),
                 "interleaved_q25_ms": 1e3 * t.get("q25_s", float("nan")),
                 "interleaved_q75_ms": 1e3 * t.get("q75_s", float("nan")),
                 "timing_reps": t.get("reps", 0),
                 "compile_s": v.compile_s})
  return rows


def markdown(summary, costs, avg, tasks, meta) -> str:
  """The tables of docs/study.md."""
  from losa_jax.study import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
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
    dom, what = tasks_lib.TASK_INFO.get(t, ("", t))
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


# --- plots ----------------------------------------------------------------------


def _colors(labels):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  cmap = plt.get_cmap("tab10")
  return {l: cmap(i % 10) for i, l in enumerate(labels)}


def plot_all(out: str, summary, costs, avg, runs, tasks) -> List[str]:
  """accuracy_vs_cost.png, accuracy_per_task.png, loss_curves.png."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  labels = [c["label"] for c in costs]
  col = _colors(labels)
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
  path = os.path.join(out, "accuracy_vs_cost.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  written.append(path)

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
  path = os.path.join(out, "accuracy_per_task.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  written.append(path)

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
  path = os.path.join(out, "loss_curves.png")
  fig.savefig(path, dpi=110)
  plt.close(fig)
  written.append(path)
  return written


# --- driver ---------------------------------------------------------------------


def _ints(s: str) -> List[int]:
  return [int(x) for x in s.split(",") if x.strip()]


def _strs(s: str) -> List[str]:
  return [x.strip() for x in s.split(",") if x.strip()]


def parse_args(argv: Optional[Sequence[str]] = None):
  p = argparse.ArgumentParser(prog="python -m losa_jax.study.run",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
  p.add_argument("--methods", default=",".join(DEFAULT_METHODS))
  p.add_argument("--ranks", default=",".join(map(str, DEFAULT_RANKS)),
                 help="LoSA ranks")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--timing_reps", type=int, default=20)
  p.add_argument("--resume", action="store_true",
                 help="keep the runs already in --out/runs.jsonl (same "
                 "steps and batch) and train only the missing ones")
  p.add_argument("--quick", action="store_true",
                 help="1 task, LoSA and linear, 1 seed, a few steps (tests)")
  a = p.parse_args(argv)
  if a.quick:
    a.tasks, a.methods, a.ranks, a.seeds = "digits", "losa,linear", "8", "0"
    a.steps, a.batch, a.timing_reps = 8, 16, 2
  a.tasks, a.methods = _strs(a.tasks), _strs(a.methods)
  a.ranks, a.seeds = _ints(a.ranks), _ints(a.seeds)
  from losa_jax.study import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  bad = sorted(set(a.tasks) - set(tasks_lib.TASKS))
  bad += sorted(set(a.methods) - set(DEFAULT_METHODS))
  if bad:
    p.error(f"unknown task(s) / method(s) {bad}; tasks: "
            f"{sorted(tasks_lib.TASKS)}, methods: {list(DEFAULT_METHODS)}")
  a.argv = list(sys.argv[1:] if argv is None else argv)
  return a


def provenance(a, t_start, load_start) -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  from losa_jax import demo  # pylint: disable=g-import-not-at-top
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f
                 if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {"command": "python -m losa_jax.study.run " + " ".join(a.argv),
          "date": datetime.date.today().isoformat(),
          "machine": f"{os.cpu_count()}-core shared CPU ({cpu}), "
                     f"{platform.system()}",
          "devices": str(jax.devices()), "jax": jax.__version__,
          "flax": flax.__version__, "python": platform.python_version(),
          "backbone": os.path.relpath(demo.BACKBONE_NPZ, REPO),
          "backbone_sha256": demo.backbone_info().get("sha256"),
          "tasks": a.tasks, "methods": a.methods, "ranks": a.ranks,
          "seeds": a.seeds, "steps": a.steps, "batch": a.batch,
          "lr": {"default": 3e-3, **LR}, "timing_reps": a.timing_reps,
          "load_avg_start": load_start, "load_avg_end": os.getloadavg(),
          "wall_s": time.time() - t_start, "quick": a.quick}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  a = parse_args(argv)
  from losa_jax import demo  # pylint: disable=g-import-not-at-top
  from losa_jax.demo import data as demo_data  # pylint: disable=g-import-not-at-top
  from losa_jax.study import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  if not os.path.exists(demo.BACKBONE_NPZ):
    raise FileNotFoundError(
        f"The shipped backbone {demo.BACKBONE_NPZ} is missing; produce it with"
        " `python -m losa_jax.demo.pretrain --config configs/pretrain_mnist.py"
        " --out losa_jax/assets/vit_mnist5k_tiny.npz`.")
  os.makedirs(a.out, exist_ok=True)
  t_start, load_start = time.time(), os.getloadavg()
  runs_path = os.path.join(a.out, "runs.jsonl")
  done = {}
  if a.resume and os.path.exists(runs_path):
    with open(runs_path) as f:
      for line in f:
        r = json.loads(line)
        if r["steps"] == a.steps and r["batch"] == a.batch:
          done[(r["task"], r["label"], r["seed"])] = r
    _log(f"resuming: {len(done)} runs kept from {runs_path}")
  elif os.path.exists(runs_path):
    os.remove(runs_path)
  if done:   # rewrite only the kept runs, so the file matches this study
    with open(runs_path, "w") as f:
      for r in done.values():
        f.write(json.dumps(r) + "\n")

  specs = variants(a.methods, a.ranks)
  built: Dict[Any, Variant] = {}     # (label, num_classes) -> Variant
  runs: List[Dict] = []
  first_task_vars: List[Variant] = []
  timing_data = None
  for task in a.tasks:
    t0 = time.time()
    td = tasks_lib.get_task(task)
    data = {"x_train": demo_data.to_model_input(td["train"]["image"]),
            "y_train": td["train"]["label"].astype(np.int32),
            "x_test": demo_data.to_model_input(td["test"]["image"]),
            "y_test": td["test"]["label"].astype(np.int32)}
    if timing_data is None:
      timing_data = (data["x_train"], data["y_train"])
    _log(f"task {task}: {len(data['y_train'])} train / "
         f"{len(data['y_test'])} test, {td['num_classes']} classes "
         f"({time.time() - t0:.1f}s to build)")
    for label, method, rank in specs:
      key = (label, td["num_classes"])
      if key not in built:
        built[key] = Variant(label, method, rank, td["num_classes"], a.steps,
                             a.batch)
        _log(f"  compiled {label} ({td['num_classes']} classes) in "
             f"{built[key].compile_s:.1f}s: {built[key].trainable:,} "
             f"trainable, peak {built[key].cost['peak_bytes'] / MIB:.2f} MiB")
      var = built[key]
      if task == a.tasks[0]:
        first_task_vars.append(var)
      for seed in a.seeds:
        if (task, label, seed) in done:
          runs.append(done[(task, label, seed)])
          continue
        r = train_run(var, data, seed, a.steps, a.batch)
        rec = {"task": task, "label": label, "method": method, "rank": rank,
               "seed": seed, "steps": a.steps, "batch": a.batch,
               "num_classes": td["num_classes"],
               "trainable_params": var.trainable, **var.cost,
               "compile_s": var.compile_s, **r}
        runs.append(rec)
        with open(runs_path, "a") as f:
          f.write(json.dumps(rec) + "\n")
        _log(f"  {task} {label} seed {seed}: acc {100 * r['accuracy']:.1f}% "
             f"loss {r['final_loss']:.3f} step {1e3 * r['step_s_median']:.1f}"
             f" ms, {r['train_s']:.0f}s")

  _log(f"interleaved timing of {len(first_task_vars)} methods, "
       f"{a.timing_reps} reps")
  timing = interleaved_step_times(first_task_vars, *timing_data, a.batch,
                                  a.timing_reps)
  summary = summarize(runs, timing)
  costs = cost_rows(first_task_vars, timing)
  labels = [v.label for v in first_task_vars]
  avg = task_average(runs, labels, a.tasks)
  write_csv(os.path.join(a.out, "runs.csv"), runs)
  write_csv(os.path.join(a.out, "summary.csv"), summary)
  write_csv(os.path.join(a.out, "cost.csv"), costs)
  write_csv(os.path.join(a.out, "task_mean.csv"),
            [{"label": k, **v} for k, v in avg.items()])
  meta = provenance(a, t_start, load_start)
  with open(os.path.join(a.out, "meta.json"), "w") as f:
    json.dump(meta, f, indent=1)
  md = markdown(summary, costs, avg, a.tasks, meta)
  with open(os.path.join(a.out, "results.md"), "w") as f:
    f.write(md)
  plots = plot_all(a.out, summary, costs, avg, runs, a.tasks)
  print("\n" + md, flush=True)
  _log(f"wrote {a.out} ({len(runs)} runs, {len(plots)} plots) in "
       f"{(time.time() - t_start) / 60:.1f} min")
  return {"runs": runs, "summary": summary, "costs": costs, "avg": avg,
          "meta": meta}


if __name__ == "__main__":
  main()
