# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Small-scale study: every method, equal step budgets, several seeds, offline.

  python -m losa_jax.study.run --out docs/study_results
  python -m losa_jax.study.run --out /tmp/study --quick     # smoke test

Every method (LoSA at several ranks, linear probe, full fine-tuning, LoRA,
adapters) adapts the shipped tiny ViT on every task of
`losa_jax.datasets.study_tasks` with the trainer's own pieces and
configs/default.py (or --config), equal steps and batch, once per seed, its
steps timed side by side. docs/study.md gives the protocol and tables.

Writes into --out: runs.jsonl (one record per run, with loss curve),
runs.csv, summary.csv, cost.csv, task_mean.csv, meta.json and results.json,
from which `python scripts/study_report.py DIR` makes results.md and plots.
"""
import dataclasses
import json
import os
import sys
import time
import typing
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
from losa_jax.demo import run as demo_run
from losa_jax.assembly import input_pipeline
from losa_jax.assembly import steps as steps_lib
from losa_jax.bench import common
from losa_jax.bench import harness
from losa_jax.datasets import study_tasks
from losa_jax.evaluators import classification
from losa_jax.study import tables
from losa_jax.utils import io as io_lib

FLAGS = flags.FLAGS

DEFAULT_TASKS = ("digits", "mnist_10shot", "dsprites_loc", "dsprites_ori")
DEFAULT_METHODS = ("losa", "linear", "full", "lora", "adapter")
DEFAULT_RANKS = (2, 8, 32)
BASELINE_RANK = 8            # LoRA rank / adapter bottleneck of the baselines
LR = demo_run.LR    # full fine-tuning's smaller step; others: the config's
EVAL_BATCH = 200
# --quick: what tests/test_study.py runs.
QUICK = dict(tasks=["digits"], methods=["losa", "linear"], ranks=[8],
             seeds=[0], steps=8, batch=16, timing_reps=2)


def _log(msg: str):
  common.log(msg, tag="study")


# --- command line -------------------------------------------------------------


def option(default, help_text: str, choices: Sequence[str] = ()):
  """A settings field that is also a --flag: its default, help and, for a
  list of names, the values it accepts (checked by the flag parser)."""
  meta = {"help": help_text, "choices": tuple(choices)}
  if isinstance(default, (list, tuple)):
    return dataclasses.field(default_factory=lambda: list(default),
                             metadata=meta)
  return dataclasses.field(default=default, metadata=meta)


def define_flags_of(cls, flag_values: flags.FlagValues):
  """One absl flag per `option` field of the dataclass `cls`, typed by the
  field (a List field is a comma list, its items checked), attributed to
  cls's module so that its --help lists them."""
  # absl names the main module's flags by its file (what --help lists).
  kw = dict(flag_values=flag_values, module_name=(
      sys.argv[0] if cls.__module__ == "__main__" else cls.__module__))
  for f in dataclasses.fields(cls):
    if "help" not in f.metadata:
      continue
    default = (f.default_factory() if f.default is dataclasses.MISSING
               else f.default)
    item = typing.get_args(f.type)[:1]
    if typing.get_origin(f.type) is not list:
      define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
                float: flags.DEFINE_float}.get(f.type, flags.DEFINE_string)
      define(f.name, default, f.metadata["help"], **kw)
      continue
    flags.DEFINE_list(f.name, [f"{x:g}" if isinstance(x, float) else str(x)
                               for x in default], f.metadata["help"], **kw)
    choices, parse = f.metadata["choices"], item[0] if item else str
    flags.register_validator(
        f.name, lambda v, c=choices, t=parse: _items_ok(v, c, t),
        message=(f"--{f.name}: use some of {list(choices)}." if choices else
                 f"--{f.name} must be a comma list of {parse.__name__}s, "
                 "e.g. 0,1,2."), flag_values=flag_values)


def _items_ok(values, choices, parse) -> bool:
  try:
    return all(not choices or v in choices for v in map(parse, values))
  except ValueError:
    return False


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """The study's flags; defined on demand, so importing claims no names."""
  define_flags_of(Args, flag_values)


@dataclasses.dataclass
class Args:
  """The study's settings: each `option` field is a --flag of the study."""
  out: Optional[str] = option(None, "Output folder (required).")
  tasks: List[str] = option(DEFAULT_TASKS, "Study tasks.",
                            sorted(study_tasks.TASKS))
  methods: List[str] = option(DEFAULT_METHODS, "Methods.", DEFAULT_METHODS)
  ranks: List[int] = option(DEFAULT_RANKS, "LoSA ranks (one row per rank).")
  seeds: List[int] = option([0, 1, 2], "Seeds (init and data order).")
  steps: int = option(100, "Training steps of every run.")
  batch: int = option(32, "Batch size of every run.")
  timing_reps: int = option(20, "Rounds of the interleaved step timing.")
  config: Optional[str] = option(
      None, "Config file the runs use (default: the repo's "
      "configs/default.py), optionally with args of its own "
      "(configs/default.py:side_dtype=bfloat16); the study appends "
      "method=...,rank=...,steps=...,batch=... to them.")
  resume: bool = option(False, "Keep the runs already in --out/runs.jsonl "
                        "(same steps and batch) and train only the missing "
                        "ones.")
  quick: bool = option(False, "Smoke size: 1 task, LoSA and linear, 1 seed, "
                       "8 steps at batch 16 (tests).")
  argv: List[str] = dataclasses.field(default_factory=list)


def args_of(cls, flag_values: flags.FlagValues, argv=None, **parse):
  """A study's settings `cls(...)` (a dataclass) from parsed flags.

  Every field named like a flag takes its value, list flags converted to
  the field's element type (List[float], List[int]); `parse` maps the other
  fields to functions of the flag values; argv (default sys.argv[1:]) is
  kept for the provenance. Raises app.UsageError naming a bad value.
  """
  f = flag_values
  if not f.out:
    raise app.UsageError("--out is required (the folder the results go to).")
  try:
    kw = {k: fn(f) for k, fn in parse.items()}
    for field in dataclasses.fields(cls):
      if field.name not in kw and field.name in f:
        v, item = f[field.name].value, typing.get_args(field.type)
        kw[field.name] = ([item[0](x) for x in v]
                          if isinstance(v, list) and item else v)
    return cls(**kw, argv=list(sys.argv[1:] if argv is None else argv))
  except ValueError as e:
    raise app.UsageError(f"Bad flag value: {e}") from None


def args_from_flags(flag_values: flags.FlagValues = FLAGS,
                    argv: Optional[Sequence[str]] = None) -> Args:
  """Parsed flags -> Args (--quick applied); raises app.UsageError."""
  a = args_of(Args, flag_values, argv)
  return dataclasses.replace(a, **QUICK) if a.quick else a


# --- variants and configs -----------------------------------------------------


def variants(methods: Sequence[str], ranks: Sequence[int]):
  """[(label, method, rank)]: LoSA once per rank, the others at rank 8."""
  out = []
  for m in methods:
    for r in ranks if m == "losa" else [BASELINE_RANK]:
      label = {"losa": f"losa r={r}", "lora": f"lora r={r}",
               "adapter": f"adapter d={r}"}.get(m, m)
      out.append((label, m, r))
  return out


def task_data(task: str, split: str) -> Dict[str, str]:
  """The config data dict of a study task split."""
  return dict(name="study", task=task, split=split)


def make_config(method: str, rank: int, num_classes: int, steps: int,
                batch: int, *, task: str = "digits", seed: int = 0,
                config_file: Optional[str] = None):
  """The trainer config of one run: configs/default.py (or `config_file`,
  optionally with args of its own) + the study's args, trained on `task`'s
  train split and evaluated on its test split. rank is LoSA's rank, LoRA's
  rank or the adapter's bottleneck; seed is `config.seed`."""
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
    """A numpy batch -> global arrays on the mesh, as the trainer feeds them
    (colabs/efficiency.ipynb times steps on it)."""
    return next(input_pipeline.device_batches(iter([batch]), self.built.mesh))

  def evaluator(self, task: str):
    """The trainer's evaluator of `task`'s test split (built once per task)."""
    if task not in self._evaluators:
      self._evaluators[task] = classification.Evaluator(
          self.built.eval_step, self.built.mesh, data=task_data(task, "test"),
          pp=self.config.input.pp, batch_size=EVAL_BATCH)
    return self._evaluators[task]


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
  """Trains `var` for one seed (init and data order) on `task`, then
  evaluates its test split; source: `task`'s train split if the caller has
  it (None builds it). Returns {"accuracy", "final_loss", "step_s_median",
  "train_s", "curve": [(step, loss, batch accuracy)] every `curve_every`
  steps, "state": the final train state}."""
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
          "lower the learning rate (LR in losa_jax/demo/run.py).")
    if step % curve_every == 0 or step == steps:
      curve.append((step, loss, float(metrics["accuracy"])))
  acc = var.evaluator(task).run(state["params"])["accuracy"]
  # The first steps include dispatch warm-up; the median ignores outliers
  # from other jobs on a shared machine.
  return {"accuracy": acc, "final_loss": curve[-1][1],
          "step_s_median": float(np.median(times[min(3, steps - 1):])),
          "train_s": time.perf_counter() - t_start, "curve": curve,
          "state": state}


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
    io_lib.write_text(runs_path, "".join(json.dumps(r) + "\n"
                                         for r in done.values()))
  return done


def _seed_runs(a: Args, var: Variant, task: str, num_classes: int, source,
               done, runs_path: str) -> List[Dict[str, Any]]:
  """Every seed of `var` on `task` (kept ones from `done`), each new record
  appended to runs.jsonl as it ends."""
  runs = []
  for seed in a.seeds:
    if (task, var.label, seed) in done:
      runs.append(done[(task, var.label, seed)])
      continue
    r = train_run(var, task, seed, a.steps, source=source)
    del r["state"]
    rec = {"task": task, "label": var.label, "method": var.method,
           "rank": var.rank, "seed": seed, "steps": a.steps,
           "batch": a.batch, "num_classes": num_classes,
           "trainable_params": var.trainable, **var.cost,
           "compile_s": var.compile_s, **r}
    runs.append(rec)
    with open(runs_path, "a") as f:
      f.write(json.dumps(rec) + "\n")
    _log(f"  {task} {var.label} seed {seed}: acc {100 * r['accuracy']:.1f}% "
         f"loss {r['final_loss']:.3f} step {1e3 * r['step_s_median']:.1f}"
         f" ms, {r['train_s']:.0f}s")
  return runs


def start(out: str):
  """Checks the shipped backbone, makes `out`; (start time, load average)."""
  if not os.path.exists(demo.BACKBONE_NPZ):
    raise FileNotFoundError(
        f"The shipped backbone {demo.BACKBONE_NPZ} is missing; produce it with"
        " `python -m losa_jax.demo.pretrain --config configs/pretrain_mnist.py"
        " --out losa_jax/assets/vit_mnist5k_tiny.npz`.")
  os.makedirs(out, exist_ok=True)
  return time.time(), os.getloadavg()


def provenance(command: str, a, config, t_start, load_start,
               **fields) -> Dict[str, Any]:
  """meta.json of `python -m losa_jax.study.<command>` with settings `a`, on
  the backbone of `config` (`bench.common.provenance`, plus `fields`)."""
  return common.provenance(
      f"python -m losa_jax.study.{command} " + " ".join(a.argv),
      t_start=t_start, load_start=load_start,
      backbone=os.path.relpath(demo.BACKBONE_NPZ, os.getcwd()),
      backbone_sha256=build.backbone_record(config)["sha256"], **fields)


def run_study(a: Args) -> Dict[str, Any]:
  """Trains every (task, variant, seed), times, writes the outputs."""
  t_start, load_start = start(a.out)
  runs_path = os.path.join(a.out, "runs.jsonl")
  done = _kept_runs(a, runs_path)
  built: Dict[Any, Variant] = {}     # (label, num_classes) -> Variant
  runs: List[Dict] = []
  first_task_vars: List[Variant] = []
  for task in a.tasks:
    t0 = time.time()
    # One source per task, shared by all its runs (a task renders in ~1 s).
    source = datasets.get_source(task_data(task, "train"))
    num_classes = study_tasks.get_task(task)["num_classes"]
    _log(f"task {task}: {source.num_examples()} train examples, "
         f"{num_classes} classes ({time.time() - t0:.1f}s to build)")
    for label, method, rank in variants(a.methods, a.ranks):
      if (label, num_classes) not in built:    # compiled on first use
        built[label, num_classes] = v = Variant(
            label, method, rank, num_classes, a.steps, a.batch, task=task,
            config_file=a.config)
        _log(f"  compiled {label} ({num_classes} classes) in "
             f"{v.compile_s:.1f}s: {v.trainable:,} trainable, peak "
             f"{v.cost['peak_bytes'] / common.MIB:.2f} MiB")
      var = built[label, num_classes]
      if task == a.tasks[0]:
        first_task_vars.append(var)
      runs += _seed_runs(a, var, task, num_classes, source, done, runs_path)
    if task == a.tasks[0]:
      timing_batch = next(train_batches(source, first_task_vars[0].config, 0,
                                        first_task_vars[0].built.mesh))
  return _finish(a, runs, first_task_vars, timing_batch, t_start, load_start)


def _finish(a: Args, runs, first_task_vars, timing_batch, t_start,
            load_start) -> Dict[str, Any]:
  """The interleaved timing and the tables; writes the outputs."""
  _log(f"interleaved timing of {len(first_task_vars)} methods, "
       f"{a.timing_reps} reps")
  # One train step per variant, on the same batch, timed side by side.
  timing = common.interleaved(
      {v.label: harness.Stepper(v.step, v.fresh_state(0), timing_batch)
       for v in first_task_vars}, reps=a.timing_reps, warmup=1)
  meta = provenance(
      "run", a, first_task_vars[0].config, t_start, load_start,
      tasks=a.tasks, methods=a.methods, ranks=a.ranks, seeds=a.seeds,
      steps=a.steps, batch=a.batch, lr={"default": 3e-3, **LR},
      timing_reps=a.timing_reps, quick=a.quick)
  summary = tables.summarize(runs, timing)
  costs = tables.cost_rows(first_task_vars, timing)
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
