# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Small-scale study: every method, equal step budgets, several seeds, offline.

  python -m losa_jax.study.run --out docs/study_results
  python -m losa_jax.study.run --out /tmp/study --quick     # smoke test

For every task of `losa_jax.datasets.study_tasks` and every method (LoSA at
several ranks, linear probe, full fine-tuning, LoRA, adapters) this adapts
the shipped MNIST-pretrained tiny ViT (losa_jax/assets/vit_mnist5k_tiny.npz)
with the demo's config (configs/default.py, or --config: AdamW, cosine
schedule, lr 3e-3, 3e-4 for full fine-tuning, no augmentation), the same
number of steps and batch size for every method, once per seed. Seeds change
the initialisation and the data order, not the split.

Every run is a trainer run of that config with `seed=<seed>`: the same
`build.build` model, optimizer and train step, the same initial state, the
same input pipeline (`input_pipeline.training` over
`dict(name="study", task=..., split="train")`) and the same evaluator
(`evaluators.classification.Evaluator` on the test split), so a run ends
with the params `losa_jax.train` would reach (tests/test_study.py checks
it). What differs from calling the trainer once per run, and why:

* each (method, rank, number of classes) is compiled once, ahead of time,
  and that executable trains every seed of every task with that class count
  and gives the compiled cost (`cost.cost_of_compiled`); the trainer would
  compile per run, and compiles dominate a 2-core CPU run of a tiny model;
* every step is timed, and a loss curve is kept;
* nothing is written but the outputs (no workdirs, checkpoints or logs);
* after training, the step of every method is timed again, interleaved
  round-robin (`bench.common.interleaved`), so that load from other jobs on
  a shared machine hits every method alike; the tables use that timing.

Writes into --out: runs.jsonl (one record per run, with loss curve),
runs.csv, summary.csv (per task and method: mean / std / min / max over
seeds), cost.csv (per method: params, FLOPs, memory, interleaved step time),
task_mean.csv, meta.json (command, date, machine, versions, wall time,
load) and results.json, from which `python scripts/study_report.py DIR`
makes results.md (the tables of docs/study.md) and the plots
accuracy_vs_cost.png, accuracy_per_task.png, loss_curves.png.
"""
import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from losa_jax.assembly import build
from losa_jax.config import schema as config_lib
from losa_jax.utils import cost
from losa_jax import datasets
from losa_jax import demo
from losa_jax.assembly import input_pipeline
from losa_jax.assembly import steps as steps_lib
from losa_jax.bench import common
from losa_jax.datasets import study_tasks
from losa_jax.evaluators import classification
from losa_jax.study import tables

FLAGS = flags.FLAGS

DEFAULT_TASKS = ("digits", "mnist_10shot", "dsprites_loc", "dsprites_ori")
DEFAULT_METHODS = ("losa", "linear", "full", "lora", "adapter")
DEFAULT_RANKS = (2, 8, 32)
BASELINE_RANK = 8            # LoRA rank / adapter bottleneck of the baselines
# As in losa_jax/demo/run.py: full fine-tuning moves every weight, so it gets
# the usual smaller step; everything else uses configs/default.py's 3e-3.
LR = {"full": 3e-4}
EVAL_BATCH = 200
# --quick: what tests/test_study.py runs.
QUICK = dict(tasks=["digits"], methods=["losa", "linear"], ranks=[8],
             seeds=[0], steps=8, batch=16, timing_reps=2)


def _log(msg: str):
  common.log(msg, tag="study")


# --- command line -------------------------------------------------------------


def define_out_task_method_flags(flag_values: flags.FlagValues, *,
                                 tasks: Sequence[str],
                                 methods: Sequence[str]):
  """--out, --tasks (default `tasks`, any of study_tasks.TASKS) and --methods
  (default and choices: `methods`), each value checked; the studies' shared
  flags (this one and study.budget)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output folder (required).", **fv)
  flags.DEFINE_list("tasks", list(tasks), "Study tasks "
                    "(losa_jax.datasets.study_tasks.TASKS).", **fv)
  flags.DEFINE_list("methods", list(methods),
                    f"Methods, among {list(methods)}.", **fv)
  flags.register_validator(
      "tasks", lambda v: not set(v) - set(study_tasks.TASKS),
      message=f"unknown task; use some of {sorted(study_tasks.TASKS)}.",
      **fv)
  flags.register_validator(
      "methods", lambda v: not set(v) - set(methods),
      message=f"unknown method; use some of {list(methods)}.", **fv)


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """The study's flags; defined on demand, so importing claims no names."""
  define_out_task_method_flags(flag_values, tasks=DEFAULT_TASKS,
                               methods=DEFAULT_METHODS)
  fv = dict(flag_values=flag_values)
  flags.DEFINE_list("ranks", [str(r) for r in DEFAULT_RANKS],
                    "LoSA ranks (one row per rank).", **fv)
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (init and data order).",
                    **fv)
  flags.DEFINE_integer("steps", 100, "Training steps of every run.", **fv)
  flags.DEFINE_integer("batch", 32, "Batch size of every run.", **fv)
  flags.DEFINE_integer("timing_reps", 20, "Rounds of the interleaved step "
                       "timing.", **fv)
  flags.DEFINE_string("config", None, "Config file the runs use (default: the"
                      " repo's configs/default.py), optionally with args of "
                      "its own (configs/default.py:side_dtype=bfloat16); the "
                      "study appends method=...,rank=...,steps=...,batch=... "
                      "to them.", **fv)
  flags.DEFINE_bool("resume", False, "Keep the runs already in "
                    "--out/runs.jsonl (same steps and batch) and train only "
                    "the missing ones.", **fv)
  flags.DEFINE_bool("quick", False, "Smoke size: 1 task, LoSA and linear, 1 "
                    "seed, 8 steps at batch 16 (tests).", **fv)
  for name in ("ranks", "seeds"):
    flags.register_validator(
        name, lambda v: all(x.strip().isdigit() for x in v),
        message=f"--{name} must be a comma list of integers >= 0, e.g. 0,1,2.",
        **fv)


@dataclasses.dataclass
class Args:
  """The study's settings, from the flags (see `define_flags`)."""
  out: str
  tasks: List[str]
  methods: List[str]
  ranks: List[int]
  seeds: List[int]
  steps: int = 100
  batch: int = 32
  timing_reps: int = 20
  config: Optional[str] = None
  resume: bool = False
  quick: bool = False
  argv: List[str] = dataclasses.field(default_factory=list)


def args_from_flags(flag_values: flags.FlagValues = FLAGS,
                    argv: Optional[Sequence[str]] = None) -> Args:
  """Parsed flags -> Args (--quick applied); raises app.UsageError."""
  f = flag_values
  if not f.out:
    raise app.UsageError("--out is required (the folder the results go to).")
  a = Args(out=f.out, tasks=list(f.tasks), methods=list(f.methods),
           ranks=[int(r) for r in f.ranks], seeds=[int(s) for s in f.seeds],
           steps=f.steps, batch=f.batch, timing_reps=f.timing_reps,
           config=f.config, resume=f.resume, quick=f.quick,
           argv=list(sys.argv[1:] if argv is None else argv))
  if a.quick:
    a = dataclasses.replace(a, **QUICK)
  return a


# --- variants and configs -----------------------------------------------------


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


def task_data(task: str, split: str) -> Dict[str, str]:
  """The config data dict of a study task split."""
  return dict(name="study", task=task, split=split)


def make_config(method: str, rank: int, num_classes: int, steps: int,
                batch: int, *, task: str = "digits", seed: int = 0,
                config_file: Optional[str] = None):
  """The trainer config of one run: configs/default.py + the study's args.

  Args:
    method, rank: the variant; rank is LoSA's rank, LoRA's rank or the
      adapter's bottleneck.
    num_classes: of `task`.
    steps, batch: the run's length and batch size.
    task: a `losa_jax.datasets.study_tasks` task (its train and test splits).
    seed: init and data-order seed (`config.seed`).
    config_file: another config file taking the same args, optionally with
      args of its own ("configs/default.py:side_dtype=bfloat16"); the run's
      args are appended.
  """
  arg = f"method={method},rank={rank},steps={steps},batch={batch},seed={seed}"
  if method in LR:
    arg += f",lr={LR[method]}"
  path = config_file or config_lib.config_path("default")
  c = config_lib.load_config(path + ("," if ":" in path else ":") + arg)
  c.num_classes = num_classes
  c.input.data = task_data(task, "train")
  c.evals = dict(test=dict(data=task_data(task, "test"), pp=c.input.pp,
                           batch_size=EVAL_BATCH))
  config_lib.validate(c)
  return config_lib.with_defaults(c)


class Variant:
  """One method at one rank and class count: built and compiled once."""

  def __init__(self, label: str, method: str, rank: int, num_classes: int,
               steps: int, batch: int, *, task: str = "digits",
               config_file: Optional[str] = None):
    self.label, self.method, self.rank = label, method, rank
    # The config of `task`; only its model, optimizer and pp are used here
    # (the data come per run), so other tasks with as many classes share it.
    self.config = make_config(method, rank, num_classes, steps, batch,
                              task=task, config_file=config_file)
    self.built = build.build(self.config, total_steps=steps)
    t0 = time.perf_counter()
    # The trainer's jitted train step, compiled ahead of time for the batch
    # that `input_pipeline.device_batches` makes.
    self.step = self.built.train_step.lower(
        self.built.state_shape,
        steps_lib.abstract_batch(batch, self.built.image_shape)).compile()
    self.compile_s = time.perf_counter() - t0
    self.cost = cost.cost_of_compiled(self.step)
    self.trainable = self.built.num_trainable()
    self._evaluators = {}

  def fresh_state(self, seed: int):
    """The trainer's initial state: init(seed), then the shipped backbone."""
    return self.built.init_loaded(jax.random.key(seed), self.config)

  def put(self, batch: Dict[str, np.ndarray]) -> Dict[str, jax.Array]:
    """A numpy batch -> global arrays on the mesh, as the trainer feeds them."""
    return next(input_pipeline.device_batches(iter([batch]), self.built.mesh))

  def evaluator(self, task: str):
    """The trainer's evaluator of `task`'s test split (built once per task)."""
    if task not in self._evaluators:
      self._evaluators[task] = classification.Evaluator(
          self.built.eval_step, self.built.mesh, data=task_data(task, "test"),
          pp=self.config.input.pp, batch_size=EVAL_BATCH)
    return self._evaluators[task]

  def info(self) -> Dict[str, Any]:
    """What `tables.cost_rows` needs."""
    return {"label": self.label, "method": self.method, "rank": self.rank,
            "trainable_params": self.trainable, "cost": self.cost,
            "compile_s": self.compile_s}


# --- one run ------------------------------------------------------------------


def train_batches(source, config, seed: int, mesh) -> Iterator:
  """The trainer's training batches of `source` (global arrays on `mesh`)."""
  it, _ = input_pipeline.training(
      source, batch_size=config.input.batch_size,
      pp=datasets.pp_for(config.input.data, config.input.pp), seed=seed,
      shuffle=config.input.get("shuffle", True),
      process_index=jax.process_index(), process_count=jax.process_count())
  return input_pipeline.device_batches(it, mesh)


def train_run(var: Variant, task: str, seed: int, steps: int, *,
              source=None, curve_every: int = 10) -> Dict[str, Any]:
  """Trains one seed on `task`; returns accuracy, step times, loss curve.

  Args:
    var: the method, built and compiled.
    task: a study task; its test split is evaluated at the end.
    seed: init and data-order seed.
    steps: training steps (the schedule is `var`'s).
    source: `task`'s train split as a Source, when the caller already has
      it (a task renders in about a second); None builds it.
    curve_every: loss-curve sampling, in steps.

  Returns:
    {"accuracy", "final_loss", "step_s_median", "train_s", "curve":
    [(step, loss, batch accuracy)], "state": the final train state}.
  """
  t_start = time.perf_counter()
  if source is None:
    source = datasets.get_source(task_data(task, "train"))
  state = var.fresh_state(seed)
  batches = train_batches(source, var.config, seed, var.built.mesh)
  times, curve = [], []
  for step in range(1, steps + 1):
    batch = next(batches)              # data time is not step time
    t0 = time.perf_counter()
    state, metrics = var.step(state, batch)
    loss = float(metrics["loss"])      # blocks: the time is the whole step
    times.append(time.perf_counter() - t0)
    if not np.isfinite(loss):
      raise FloatingPointError(
          f"{var.label} on {task}, seed {seed}: loss {loss} at step {step}; "
          "lower the learning rate (LR in losa_jax/study/run.py).")
    if step % curve_every == 0 or step == steps:
      curve.append((step, loss, float(metrics["accuracy"])))
  acc = var.evaluator(task).run(state["params"])["accuracy"]
  # The first steps include dispatch warm-up; the median ignores outliers
  # from other jobs on a shared machine.
  return {"accuracy": acc, "final_loss": curve[-1][1],
          "step_s_median": float(np.median(times[min(3, steps - 1):])),
          "train_s": time.perf_counter() - t_start, "curve": curve,
          "state": state}


def interleaved_step_times(vars_: Sequence[Variant], batch, reps: int
                           ) -> Dict[str, Dict[str, float]]:
  """Median / quartiles of one train step per variant, timed side by side.

  batch: one training batch on the mesh, the same for every variant.
  """
  fns = {}
  for var in vars_:
    holder = {"state": var.fresh_state(0)}

    def fn(var=var, holder=holder):
      holder["state"], m = var.step(holder["state"], batch)
      jax.block_until_ready((holder["state"], m))
    fns[var.label] = fn
  return common.interleaved(fns, reps=reps, warmup=1)


# --- driver -------------------------------------------------------------------


def _kept_runs(a: Args, runs_path: str) -> Dict[Any, Dict]:
  """--resume: the runs of runs.jsonl with this study's steps and batch."""
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
  return done


def run_study(a: Args) -> Dict[str, Any]:
  """Trains every (task, variant, seed), times, writes the outputs."""
  if not os.path.exists(demo.BACKBONE_NPZ):
    raise FileNotFoundError(
        f"The shipped backbone {demo.BACKBONE_NPZ} is missing; produce it with"
        " `python -m losa_jax.demo.pretrain --config configs/pretrain_mnist.py"
        " --out losa_jax/assets/vit_mnist5k_tiny.npz`.")
  os.makedirs(a.out, exist_ok=True)
  t_start, load_start = time.time(), os.getloadavg()
  runs_path = os.path.join(a.out, "runs.jsonl")
  done = _kept_runs(a, runs_path)

  specs = variants(a.methods, a.ranks)
  built: Dict[Any, Variant] = {}     # (label, num_classes) -> Variant
  runs: List[Dict] = []
  first_task_vars: List[Variant] = []
  timing_batch = None
  for task in a.tasks:
    t0 = time.time()
    # One source per task, shared by all its runs (a task renders in ~1 s).
    source = datasets.get_source(task_data(task, "train"))
    num_classes = study_tasks.get_task(task)["num_classes"]
    _log(f"task {task}: {source.num_examples()} train examples, "
         f"{num_classes} classes ({time.time() - t0:.1f}s to build)")
    for label, method, rank in specs:
      key = (label, num_classes)
      if key not in built:
        built[key] = Variant(label, method, rank, num_classes, a.steps,
                             a.batch, task=task, config_file=a.config)
        _log(f"  compiled {label} ({num_classes} classes) in "
             f"{built[key].compile_s:.1f}s: {built[key].trainable:,} "
             f"trainable, peak {built[key].cost['peak_bytes'] / common.MIB:.2f}"
             " MiB")
      var = built[key]
      if task == a.tasks[0]:
        first_task_vars.append(var)
        if timing_batch is None:
          timing_batch = next(train_batches(source, var.config, 0,
                                            var.built.mesh))
      for seed in a.seeds:
        if (task, label, seed) in done:
          runs.append(done[(task, label, seed)])
          continue
        r = train_run(var, task, seed, a.steps, source=source)
        del r["state"]
        rec = {"task": task, "label": label, "method": method, "rank": rank,
               "seed": seed, "steps": a.steps, "batch": a.batch,
               "num_classes": num_classes,
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
  timing = interleaved_step_times(first_task_vars, timing_batch,
                                  a.timing_reps)
  meta = common.provenance(
      "python -m losa_jax.study.run " + " ".join(a.argv), t_start=t_start,
      load_start=load_start,
      backbone=os.path.relpath(demo.BACKBONE_NPZ, os.getcwd()),
      backbone_sha256=build.backbone_record(first_task_vars[0].config)[
          "sha256"],
      tasks=a.tasks, methods=a.methods, ranks=a.ranks, seeds=a.seeds,
      steps=a.steps, batch=a.batch, lr={"default": 3e-3, **LR},
      timing_reps=a.timing_reps, quick=a.quick)
  summary = tables.summarize(runs, timing)
  costs = tables.cost_rows([v.info() for v in first_task_vars], timing)
  avg = tables.task_average(runs, [c["label"] for c in costs], a.tasks)
  tables.write(a.out, {
      "runs.csv": runs, "summary.csv": summary, "cost.csv": costs,
      "task_mean.csv": [{"label": k, **v} for k, v in avg.items()]}, meta,
               dict(kind="study", summary=summary, costs=costs, avg=avg,
                    runs=runs, tasks=a.tasks))
  _log(f"wrote {a.out} ({len(runs)} runs) in "
       f"{(time.time() - t_start) / 60:.1f} min; tables and plots: python "
       f"scripts/study_report.py {a.out}")
  return {"runs": runs, "summary": summary, "costs": costs, "avg": avg,
          "meta": meta}


def main(argv):
  common.start_flags_only_main(argv)
  run_study(args_from_flags())


if __name__ == "__main__":
  define_flags()
  app.run(main)
