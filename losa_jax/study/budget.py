# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""The study at equal tuning budgets: every method searches K configs.

  python -m losa_jax.study.budget --out docs/study_results/budget
  python -m losa_jax.study.budget --out /tmp/budget --quick     # smoke test

Every method searches the same lr x wd grid and reports the test accuracy
of its best config by minival; a side method's configs (LoSA, LST, LAST)
train as ONE population, the others as separate runs (`study.search`).
Then LoSA's switches are ablated (`study.ablation`). docs/study.md
("Equal tuning budgets") gives the protocol and the tables.

Writes into --out: searches.csv, members.csv, cost.csv, task_mean.csv,
ablation_members.csv, ablation_effects.csv, meta.json and results.json, from
which `python scripts/study_report.py DIR` makes results.md and plots.
"""
import dataclasses
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags

from losa_jax.bench import common
from losa_jax.datasets import study_tasks
from losa_jax.models import model as model_lib
from losa_jax.population import members as members_lib
from losa_jax.study import ablation
from losa_jax.study import run as study_run
from losa_jax.study import search
from losa_jax.study import tables

FLAGS = flags.FLAGS

METHODS = ("losa", "linear", "lora", "adapter", "full")   # the default
# --methods may also name LoSA's side-tuning peers (docs/method.md).
ALL_METHODS = METHODS + tuple(m for m in model_lib.SIDE_METHODS
                              if m not in METHODS)
TASKS = ("digits", "dsprites_loc")
LRS = (3e-3, 1e-2, 3e-2)
FULL_LRS = (3e-4, 1e-3, 3e-3)     # full fine-tuning moves every weight
WDS = (1e-4, 0.1)
# --quick: what tests/test_study_budget.py runs (K = 2, a few steps).
QUICK = dict(tasks=["digits"], methods=["losa", "linear"], lrs=[3e-3, 1e-2],
             full_lrs=[3e-4, 1e-3], wds=[1e-4], steps=3, batch=8, seeds=[0],
             timing_reps=1, ablation_seeds=[0],
             switches=ablation.QUICK_SWITCHES, losa_separate=False)


def _log(msg: str):
  common.log(msg, tag="budget")


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """The study's flags; defined on demand, so importing claims no names."""
  study_run.define_flags_of(Args, flag_values)


_opt = study_run.option
SWITCH_ITEMS = [f"{k}={v}" for k, vs in ablation.SWITCHES.items() for v in vs]


@dataclasses.dataclass
class Args:
  """The study's settings: each `option` field is a --flag of the study."""
  out: Optional[str] = _opt(None, "Output folder (required).")
  tasks: List[str] = _opt(TASKS, "Study tasks.", sorted(study_tasks.TASKS))
  methods: List[str] = _opt(METHODS, "Methods (side methods: one "
                            "population each).", ALL_METHODS)
  lrs: List[float] = _opt(LRS, "Learning rates every method but full "
                          "fine-tuning searches.")
  full_lrs: List[float] = _opt(FULL_LRS, "Learning rates of full "
                               "fine-tuning (as many as --lrs).")
  wds: List[float] = _opt(WDS, "Weight decays every method searches "
                          "(decoupled, scaled by the lr).")
  seeds: List[int] = _opt([0], "Seeds of the searches (init and data "
                          "order); each seed is a search of its own.")
  steps: int = _opt(100, "Training steps of every config.")
  batch: int = _opt(32, "Batch size of every config.")
  val_percent: int = _opt(20, "Percent of each task's train split held out "
                          "as minival (the end of the split).")
  timing_reps: int = _opt(10, "Rounds of the interleaved step timing.")
  searches: bool = _opt(True, "Run the equal-budget searches (off: only the "
                        "ablation).")
  ablation: bool = _opt(True, "Also ablate LoSA's switches.")
  ablation_seeds: List[int] = _opt([0, 1], "Seeds of the ablation (init and "
                                   "data order, in one population).")
  ablation_lr: float = _opt(1e-2, "Learning rate of the ablation's members "
                            "(without --ablation_lrs).")
  ablation_lrs: List[float] = _opt([], "If set, every ablated structure "
                                   "tries each of these lrs (in the same "
                                   "population) and keeps its best by "
                                   "minival accuracy.")
  config: Optional[str] = _opt(None, "Config file (default "
                               "configs/default.py); see study.run --config.")
  quick: bool = _opt(False, "Smoke size: digits, LoSA and linear (or "
                     "--methods if given), K = 2, 3 steps at batch 8, one "
                     "switch (tests).")
  ablation_switches: List[str] = _opt(
      SWITCH_ITEMS, "The alternatives to ablate, as switch=value (each "
      "changed alone from LOSA_DEFAULTS).")
  # From --ablation_switches.
  switches: Dict[str, Any] = dataclasses.field(
      default_factory=lambda: dict(ablation.SWITCHES))
  losa_separate: bool = True   # also time / cost LoSA as K separate runs
  argv: List[str] = dataclasses.field(default_factory=list)

  def __post_init__(self):
    if self.quick:
      # Methods named other than the default are kept (a smoke test of them).
      chosen = (list(self.methods) if list(self.methods) != list(METHODS)
                else None)
      for k, v in QUICK.items():
        setattr(self, k, v)
      self.methods = chosen or list(QUICK["methods"])
    if len(self.full_lrs) != len(self.lrs):
      raise app.UsageError(f"--full_lrs {self.full_lrs} must have as many "
                           f"values as --lrs {self.lrs}: equal budgets.")

  def grid(self, method: str) -> Dict[str, List[float]]:
    return {"lr": list(self.full_lrs if method == "full" else self.lrs),
            "wd": list(self.wds)}


def args_from_flags(flag_values: flags.FlagValues = FLAGS,
                    argv: Optional[Sequence[str]] = None) -> Args:
  """Parsed flags -> Args (--quick applied); raises app.UsageError."""
  return study_run.args_of(Args, flag_values, argv, switches=lambda f: (
      ablation.parse_switches(f.ablation_switches)))


# --- the searches -------------------------------------------------------------


def _summary(task, seed, method, res, compile_s, loads, default_lr, wds
             ) -> Dict[str, Any]:
  """One search's record: its selection, accuracy and cost."""
  board = search.select(res["rows"])
  best = board[0]
  done = [r for r in res["rows"] if not r["diverged"]]
  default = [r for r in res["rows"] if r["lr"] == default_lr and
             r["wd"] == min(wds)]
  return {
      "task": task, "seed": seed, "method": method,
      "configs": len(res["rows"]), "runs": res["runs"],
      "backbone_passes_per_step": res["backbone_passes_per_step"],
      "selected": best["name"], "selected_label": best["label"],
      "selected_lr": best["lr"], "selected_wd": best["wd"],
      "minival": best.get(search.SELECT, float("nan")),
      "test": best.get("test/accuracy", float("nan")),
      "default_test": (default[0].get("test/accuracy", float("nan"))
                       if default else float("nan")),
      "oracle_test": max((r["test/accuracy"] for r in done),
                         default=float("nan")),
      "diverged": len(res["rows"]) - len(done),
      "leaderboard": [r["name"] for r in board],
      "trainable_params": best["trainable_params"],
      "compile_s": compile_s, "train_s": res["train_s"],
      "eval_s": res["eval_s"], "test_eval_s": res["test_eval_s"],
      "search_s": compile_s + res["train_s"] + res["eval_s"],
      "load_before": loads[0], "load_after": loads[1]}


def _cost_rows(singles, pops, timing, k: int) -> List[Dict[str, Any]]:
  """Per method: one config's step and the search step (K single steps, or
  a side method's population step), compiled and interleaved."""
  rows = []
  for label, ex in [*singles.items(), *pops.items()]:
    is_pop = label in pops
    t = timing.get(f"{label} population" if is_pop else label, {})
    step_ms = 1e3 * t.get("median_s", float("nan"))
    rows.append({
        "label": label, "kind": "population" if is_pop else "separate runs",
        "runs": 1 if is_pop else k,
        "backbone_passes": ex.backbone_passes_per_step if is_pop else k,
        "trainable_params": ex.trainable,
        "gflop_step": ex.cost["flops"] / (k if is_pop else 1) / 1e9,
        "gflop_search_step": ex.cost["flops"] * (1 if is_pop else k) / 1e9,
        "peak_mib_search": ex.cost["peak_bytes"] / common.MIB,
        "temp_mib_search": ex.cost["temp_bytes"] / common.MIB,
        "step_ms": step_ms / (k if is_pop else 1),
        "search_step_ms": step_ms * (1 if is_pop else k),
        "step_q25_ms": 1e3 * t.get("q25_s", float("nan")),
        "step_q75_ms": 1e3 * t.get("q75_s", float("nan")),
        "compile_s": ex.compile_s})
  order = {m: i for i, m in enumerate(dict.fromkeys(
      model_lib.SIDE_METHODS + METHODS + ("losa (K separate runs)",)))}
  return sorted(rows, key=lambda r: order.get(r["label"], 99))


def run_budget(a: Args) -> Dict[str, Any]:
  """Every search, the ablation, the timing; writes the outputs."""
  t_start, load_start = study_run.start(a.out)
  k = len(a.lrs) * len(a.wds)
  # (method, classes) -> search.Single; (method, classes, seed) -> a side
  # method's Population
  compiled: Dict[Any, Any] = {}
  searches, members_out, abl_rows, abl_runs = [], [], [], []
  first = {}                                # the first task's executables
  timing_data = None
  for ti, task in enumerate(a.tasks):
    nc = study_tasks.get_task(task)["num_classes"]
    # Rotated per task, so that drifting load does not always hit the same
    # method first or last.
    order = a.methods[ti % len(a.methods):] + a.methods[:ti % len(a.methods)]
    for seed in a.seeds:
      cfg = {m: search_cfg(a, m, task, seed) for m in a.methods}
      data_seeds = sorted({seed, *(a.ablation_seeds if a.ablation else [])})
      data = search.TaskData(cfg[a.methods[0]], a.steps, data_seeds)
      timing_data = timing_data or data
      _log(f"task {task} seed {seed}: {data.num_train} train examples, "
           f"{nc} classes" + (f", K = {k}; order {order}" if a.searches
                              else ""))
      for method in order if a.searches else ():
        loads = [os.getloadavg()[0]]
        pop = method in model_lib.SIDE_METHODS
        key = (method, nc, seed) if pop else (method, nc)
        fresh = key not in compiled
        if fresh:
          compiled[key] = (search.Population if pop else search.Single)(
              cfg[method], a.steps)
        ex = compiled[key]
        first.setdefault(method, ex)
        res = (ex.search(data) if pop else
               ex.search(members_lib.expand(cfg[method]), data))
        loads.append(os.getloadavg()[0])
        s = _summary(task, seed, method, res, ex.compile_s, loads,
                     float(cfg[method].lr), a.wds)
        searches.append(s)
        for r in res["rows"]:
          members_out.append({"task": task, "method": method,
                              "selected": r["name"] == s["selected"],
                              **{kk: v for kk, v in r.items()
                                 if kk != "structure"}})
        _log(f"  {method}: selected {s['selected_label']} (minival "
             f"{100 * s['minival']:.1f}%), test {100 * s['test']:.1f}%; "
             f"{s['runs']} run(s), {s['search_s']:.0f}s (compile "
             f"{ex.compile_s:.0f}s{'' if fresh else ', shared'}), load "
             f"{loads[0]:.1f}->{loads[1]:.1f}")
      if a.ablation:
        _ablate(a, task, seed, data, abl_rows, abl_runs)

  return _finish(a, first, timing_data, searches, members_out, abl_rows,
                 abl_runs, t_start, load_start)


def _ablate(a: Args, task: str, seed: int, data, abl_rows, abl_runs):
  """LoSA's switches ablated on `task` in one population; appends its
  member rows to abl_rows and its run record to abl_runs."""
  abl = ablation.run_task(
      search_cfg(a, "losa", task, seed, grid=False, lr=a.ablation_lr),
      a.switches, a.ablation_seeds, a.steps, data, a.ablation_lrs)
  abl_rows += [{"task": task, **{k: v for k, v in r.items()
                                 if k != "structure"}} for r in abl["rows"]]
  abl_runs.append({"task": task, **{k: abl[k] for k in (
      "members", "groups", "backbone_passes_per_step", "compile_s",
      "train_s", "eval_s")}, "gflop_step": abl["cost"]["flops"] / 1e9,
                   "peak_mib": abl["cost"]["peak_bytes"] / common.MIB})
  _log(f"  ablation: {abl['members']} members in {abl['groups']} groups, "
       f"one population, {abl['train_s']:.0f}s train")


def _finish(a: Args, first, timing_data, searches, members_out, abl_rows,
            abl_runs, t_start, load_start) -> Dict[str, Any]:
  """The interleaved timing, the cost and ablation tables; writes them."""
  k = len(a.lrs) * len(a.wds)
  # Side by side: every method's step and every side method's population
  # step.
  pops = {m: ex for m, ex in first.items()
          if m in model_lib.SIDE_METHODS}
  timed = {m: ex for m, ex in first.items() if m not in pops}
  if a.losa_separate and "losa" in pops:
    # The reference: LoSA's K configs as K separate runs.
    c = search_cfg(a, "losa", a.tasks[0], a.seeds[0])
    timed["losa (K separate runs)"] = search.Single(c, a.steps)
  timing = {}
  if first:
    _log(f"interleaved timing of {len(timed) + len(pops)} executables, "
         f"{a.timing_reps} rounds")
    # The first member of the first search: its lr, wd and data seed.
    member = members_lib.expand(
        search_cfg(a, a.methods[0], a.tasks[0], a.seeds[0]))[0]
    timing = search.timed_steps(timed, pops, member, timing_data,
                                a.timing_reps)
  costs = _cost_rows(timed, pops, timing, k)
  effects = ablation.effects(abl_rows) if abl_rows else []
  per_task = ablation.per_task(abl_rows, a.tasks) if abl_rows else []
  meta = study_run.provenance(
      "budget", a, search_cfg(a, "losa", a.tasks[0], a.seeds[0]), t_start,
      load_start, tasks=a.tasks, methods=a.methods, seeds=a.seeds, steps=a.steps,
      batch=a.batch, val_percent=a.val_percent, configs_per_method=k,
      grids={m: a.grid(m) for m in a.methods}, rank=search.RANK,
      side_options={m: dict(search_cfg(a, m, a.tasks[0], a.seeds[0],
                                       grid=False).model[m])
                    for m in a.methods if m in model_lib.SIDE_METHODS
                    and m != "losa"},
      timing_reps=a.timing_reps, searches=a.searches,
      ablation_lr=a.ablation_lr, ablation_lrs=a.ablation_lrs,
      ablation_seeds=a.ablation_seeds if a.ablation else [],
      ablation_switches={s: list(v) for s, v in a.switches.items()},
      ablation_runs=abl_runs, timing=timing, quick=a.quick)
  methods = [c["label"] for c in costs if c["label"] in
             {s["method"] for s in searches}]
  means = tables.task_means(searches, methods, a.tasks)
  tables.write(a.out, {
      "searches.csv": searches, "members.csv": members_out,
      "cost.csv": costs,
      "task_mean.csv": [{"method": m, **v} for m, v in means.items()],
      "ablation_members.csv": abl_rows, "ablation_effects.csv": effects},
               meta, dict(kind="budget", searches=searches, costs=costs,
                          means=means, tasks=a.tasks, effects=effects,
                          per_task=per_task))
  _log(f"wrote {a.out} in {(time.time() - t_start) / 60:.1f} min; tables "
       f"and plots: python scripts/study_report.py {a.out}")
  return {"searches": searches, "members": members_out, "costs": costs,
          "ablation_rows": abl_rows, "effects": effects, "means": means,
          "meta": meta}


def search_cfg(a: Args, method: str, task: str, seed: int, *,
               grid: bool = True, **overrides):
  """The search config of `method` on `task` at `seed` (without `grid`: its
  base config, `overrides` set)."""
  c = search.base_config(
      method, task, num_classes=study_tasks.get_task(task)["num_classes"],
      steps=a.steps, batch=a.batch, seed=seed, val_percent=a.val_percent,
      config_file=a.config, **overrides)
  return search.search_config(c, **a.grid(method)) if grid else c


def main(argv):
  common.start_flags_only_main(argv)
  run_budget(args_from_flags())


if __name__ == "__main__":
  define_flags()
  app.run(main)
