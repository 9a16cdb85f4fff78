# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""AutoLoSA: search a population, select the best member, retrain it.

    python -m losa_jax.auto --workdir /tmp/auto/dtd \
        --config configs/vtab.py:task=dtd,population=default,init=...,data_dir=...

Three phases, each resumable (rerunning the command resumes from
checkpoints; a finished phase is read back from its results.json): search
(<workdir>/search, the config's population on the tuning split of the
config file's `AUTO_ARGS`), selection (`select`), final (<workdir>/final,
the single-run trainer on `final_config`). docs/population.md ("AutoLoSA")
says what each phase reads and what selection.json and selection.md hold.
"""
import json
import math
import os
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import app
from absl import flags
import ml_collections
from ml_collections.config_flags import config_path

from losa_jax.config import schema as config_lib
from losa_jax.parallel import distributed
from losa_jax.trainers import population as population_train
from losa_jax import train
from losa_jax.models import model as model_lib
from losa_jax.population import members as members_lib
from losa_jax.utils import io

FLAGS = flags.FLAGS
STATE = "auto_state.json"
# How often a phase's wall time so far is written to STATE: a kill loses at
# most this much of it.
HEARTBEAT_S = 10.0


# --- configs ------------------------------------------------------------------


def _phase_config(spec: str, phase: str,
                  overrides: Optional[Mapping[str, Any]]):
  """The config file's get_config(<args>,<AUTO_ARGS[phase]>) (the final run
  without `population=...`), with the dotted `overrides` set ({"lr": 0.01,
  "model.losa.rank": 4}; population.* only in the search)."""
  path, _, args = spec.partition(".py:")
  module = config_lib.load_config_module(
      path if path.endswith(".py") else path + ".py")
  if phase == "final":    # a single run
    args = ",".join(a for a in args.split(",") if a.strip() and
                    a.partition("=")[0].strip() != "population")
  extra = getattr(module, "AUTO_ARGS", {}).get(phase, "")
  args = ",".join(a for a in (args, extra) if a)
  config = module.get_config(args) if args else module.get_config()
  for key, value in (overrides or {}).items():
    if phase == "search" or key.split(".")[0] != "population":
      config_path.set_value(key, config, value, accept_new_attributes=True)
  return config


def search_config(spec: str, overrides: Optional[Mapping[str, Any]] = None
                  ) -> Tuple[ml_collections.ConfigDict, str]:
  """The population config of the search (`_phase_config`) with only the
  eval that ranks the members kept ("val", else the first), and its name."""
  config = _phase_config(spec, "search", overrides)
  if not config.get("population"):
    raise ValueError(
        f"{spec}: the config has no population to search; add "
        "population=default (or random) to its args, or set "
        "config.population (docs/population.md).")
  evals = list(config.get("evals") or {})
  if not evals:
    raise ValueError(f"{spec}: config.evals is empty, but AutoLoSA selects "
                     "members by an eval's accuracy; add a validation eval.")
  name = "val" if "val" in evals else evals[0]
  rung_eval = (config.population.get("rungs") or {}).get("eval")
  if rung_eval not in (None, name):
    raise ValueError(f"{spec}: config.population.rungs.eval={rung_eval!r}, "
                     f"but AutoLoSA ranks the members on {name!r}; make them "
                     "agree.")
  config.evals = {name: config.evals[name]}
  config_lib.validate(config)
  members_lib.validate(config.population, config)
  return config, name


def searched_keys(population) -> List[str]:
  """The values a population varies, e.g. ["lr", "wd", "rank"]."""
  pop = dict(population or {})
  keys = list(dict(pop.get("grid") or {}))
  keys += [k for k in dict(pop.get("random") or {})
           if k not in ("budget", "seed")]
  if len(pop.get("method") or ()) > 1:
    keys.append("method")
  keys += list(dict(pop.get("losa") or {}))
  keys += [f"{m}.{k}" for m in model_lib.SIDE_MODULES
           for k in dict(pop.get(m) or {})]
  for k, name in (("seeds", "seed"), ("data_seeds", "data_seed")):
    if len(pop.get(k) or ()) > 1:
      keys.append(name)
  return list(dict.fromkeys(keys))


def member_values(member: members_lib.Member, keys) -> Dict[str, Any]:
  """{key: value} of `member` for the searched `keys` (plain JSON types);
  a side method's option is None for members of another method."""
  model = member.config.model
  own = model.get("method", "losa")

  def value(k):
    method, _, option = k.rpartition(".")
    if k == "method":
      return own
    if method or k in model_lib.LOSA_DEFAULTS:
      method = method or "losa"
      return (dict(model.get(method) or {}).get(option) if method == own
              else None)
    return member.config.get(k)
  return {k: value(k) for k in keys}


def final_config(spec: str, member: members_lib.Member,
                 overrides: Optional[Mapping[str, Any]] = None
                 ) -> ml_collections.ConfigDict:
  """The single-run config of the final run of `member`: `_phase_config`
  given the member's per-member hyper-parameters (members.HPARAMS), side
  method and its options, without the population."""
  config = _phase_config(spec, "final", overrides)
  if "population" in config:
    del config["population"]
  for k in members_lib.HPARAMS:
    if k in member.config:
      config[k] = member.config[k]
  method = config.model.method = member.config.model.get("method", "losa")
  config.model[method] = ml_collections.ConfigDict(
      dict(member.config.model.get(method) or {}))
  config_lib.validate(config)
  return config


# --- selection ----------------------------------------------------------------


def _finished(row) -> bool:
  return row.get("alive", True) and "rung_out" not in row


def select(rows: List[Dict[str, Any]], metric: str) -> List[Dict[str, Any]]:
  """The rows best first: finished members by `metric` (ties to fewer
  trainable params, then lower index), then the diverged or rung-stopped
  ones; rows[0] is the choice."""
  return sorted(population_train.leaderboard(rows, metric),
                key=lambda r: not _finished(r))   # stable: ranks kept


def _curves(search_dir: str, rows, metric: str) -> Dict[str, List]:
  """Every member's [[step, accuracy]] of `metric`, from metrics.jsonl.

  The log survives resumes (results.json's curves start at the resume);
  a step logged twice (re-run after a resume) keeps its last value.
  """
  curves = {r["name"]: {} for r in rows}
  for path, member in ([(os.path.join(search_dir, "metrics.jsonl"), None)] +
                       [(os.path.join(search_dir, r["name"], "metrics.jsonl"),
                         r["name"]) for r in rows]):
    if not os.path.exists(path):
      continue
    with open(path) as f:
      for line in f:
        rec = json.loads(line)
        name = rec.get("member", member)
        for key in (metric, f"rung/{metric}"):
          if name in curves and key in rec:
            curves[name][int(rec["step"])] = float(rec[key])
  out = {}
  for r in rows:
    got = sorted(curves[r["name"]].items())
    out[r["name"]] = ([list(p) for p in got] or
                      list((r.get("curve") or {}).get(metric.split("/")[0],
                                                      [])))
  return out


# --- phases -------------------------------------------------------------------


def _read_json(path: str) -> Optional[Dict]:
  return io.read_json(path) if os.path.exists(path) else None


def _timed(workdir: str, phase: str, fn):
  """Runs fn(), adding its wall time to <workdir>/auto_state.json as it goes
  (every HEARTBEAT_S seconds, and at the end, also when fn raises), so that
  a killed phase's time up to its last beat counts in the whole cost."""
  path, key = os.path.join(workdir, STATE), f"{phase}_wall_s"
  if not distributed.is_chief():
    return fn()
  before = (_read_json(path) or {}).get(key) or 0.0
  t0 = time.time()

  def record():
    state = _read_json(path) or {}
    state[key] = before + (time.time() - t0)
    io.write_json(path, state, default=str)

  stop = threading.Event()

  def beat():
    while not stop.wait(HEARTBEAT_S):
      record()

  beater = threading.Thread(target=beat, daemon=True, name="auto_time")
  beater.start()
  try:
    return fn()
  finally:
    stop.set()
    beater.join()
    record()


def _claim(workdir: str, phase: str, config):
  """Records `config` as the one the phase trains in <workdir>/auto_state.json;
  refuses, by name, a phase already trained with another config."""
  path = os.path.join(workdir, STATE)
  state = _read_json(path) or {}
  want = json.loads(json.dumps(config.to_dict(), default=str))
  had = state.get(f"{phase}_config")
  if had not in (None, want):
    changed = sorted(k for k in set(want) | set(had)
                     if want.get(k) != had.get(k))
    raise ValueError(f"{os.path.join(workdir, phase)} was trained with "
                     f"another {phase} config (changed: {changed}): use a new "
                     "--workdir, or delete that folder.")
  if had is None and distributed.is_chief():
    io.write_json(path, {**state, f"{phase}_config": want}, default=str)


def _phase(config, workdir: str, phase: str) -> Dict[str, Any]:
  """<workdir>/<phase>/results.json, trained (or resumed) unless finished."""
  phase_dir = os.path.join(workdir, phase)
  done = os.path.join(phase_dir, "results.json")
  _claim(workdir, phase, config)
  results = _read_json(done)
  if results is None:
    return _timed(workdir, phase, lambda: train.train_and_evaluate(
        config, phase_dir)["results"])
  print(f"AutoLoSA: the {phase} phase is finished, reading {done}",
        flush=True)
  return results


def run(spec: str, workdir: str, *,
        overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Search, select, retrain; returns what <workdir>/selection.json holds.

  Args:
    spec: the config, "path/to/config.py[:args]" (with a population).
    workdir: search/, final/, selection.json and selection.md go here.
    overrides: {dotted key: value}, applied to both phases' configs
      (population.* only to the search's); the CLI's --config.<key>=value.
  """
  search_cfg, ev = search_config(spec, overrides)
  # Before any JAX call (the chief checks below make one): a multi-process
  # run joins the others now, and the trainer finds the runtime up.
  distributed.initialize(search_cfg.get("distributed"))
  os.makedirs(workdir, exist_ok=True)
  metric = f"{ev}/accuracy"
  members = members_lib.expand(search_cfg)
  keys = searched_keys(search_cfg.population)
  print(f"AutoLoSA: searching {len(members)} members ({', '.join(keys)}) on "
        f"{search_cfg.input.data.get('split')} -> {ev} in "
        f"{os.path.join(workdir, 'search')}", flush=True)
  results = _phase(search_cfg, workdir, "search")
  # A search trained by `python -m losa_jax.train` has no recorded config:
  # its members must at least be this population's.
  got = [(r["name"], r["label"]) for r in sorted(results["members"],
                                                 key=lambda r: r["index"])]
  want = [(m.name, m.label) for m in members]
  if got != want:
    raise ValueError(f"{os.path.join(workdir, 'search', 'results.json')} "
                     f"holds another population ({got[:3]}...) than this "
                     f"config's ({want[:3]}...): use a new --workdir or "
                     "delete that search.")

  board = select(results["members"], metric)
  chosen = members[board[0]["index"]]
  final_cfg = final_config(spec, chosen, overrides)
  print(f"AutoLoSA: chose {chosen.name} ({chosen.label}), {metric} "
        f"{board[0].get(metric, math.nan):.4f}; retraining it on "
        f"{final_cfg.input.data.get('split')} -> "
        f"{', '.join(final_cfg.get('evals') or {})}", flush=True)
  final = _phase(final_cfg, workdir, "final")

  state = _read_json(os.path.join(workdir, STATE)) or {}
  curves = _curves(os.path.join(workdir, "search"), results["members"],
                   metric)
  position = {r["name"]: i + 1 for i, r in enumerate(board)}
  rows = [{    # every member, in member order
      "name": r["name"], "label": r["label"], "position": position[r["name"]],
      "values": member_values(members[r["index"]], keys),
      "hparams": r["hparams"], "trainable_params": r["trainable_params"],
      metric: r.get(metric), "train/loss": r.get("train/loss"),
      "finished": _finished(r), "curve": curves[r["name"]],
      **{k: r[k] for k in ("died_at", "rung_out") if k in r}}
          for r in sorted(results["members"], key=lambda r: r["index"])]
  shared = results.get("shared_backbone", False)
  params = [r["trainable_params"] for r in rows]
  selection = {
      "config": spec, "workdir": workdir, "metric": metric,
      "searched": keys,
      "search": {"workdir": os.path.join(workdir, "search"),
                 "train": config_lib.as_dict(search_cfg.input.data),
                 "eval": {ev: config_lib.as_dict(
                     search_cfg.evals[ev].data)}},
      "members": rows,
      "leaderboard": [r["name"] for r in board],
      "chosen": {"name": chosen.name, "label": chosen.label,
                 "values": member_values(chosen, keys),
                 "hparams": chosen.hparams, metric: board[0].get(metric),
                 "trainable_params": board[0]["trainable_params"]},
      "final": {"workdir": os.path.join(workdir, "final"),
                "train": config_lib.as_dict(final_cfg.input.data),
                "evals": {k: config_lib.as_dict(v.data) for k, v in
                          (final_cfg.get("evals") or {}).items()},
                "config": final_cfg.to_dict(), "results": final},
      "cost": {
          "search_wall_s": state.get("search_wall_s"),
          "final_wall_s": state.get("final_wall_s"),
          "members": len(rows),
          # LoSA members share the backbone pass of their data order; other
          # methods train one after another, a pass each.
          "backbone_passes_per_step": (
              len({m.hparams["data_seed"] for m in members}) if shared
              else len(members)),
          "shared_backbone": shared,
          "trainable_params_chosen": board[0]["trainable_params"],
          "trainable_params_population": sum(params),
          "trainable_params_final": final.get("trainable_params")},
  }
  if distributed.is_chief():
    io.write_json(os.path.join(workdir, "selection.json"), selection,
                  default=str)
    io.write_text(os.path.join(workdir, "selection.md"), markdown(selection))
  return selection


# --- report -------------------------------------------------------------------


def format_value(v) -> str:
  """Searched values: 0.003, 16; counts with thousands separators."""
  if v is None:
    return "-"
  if isinstance(v, int) and not isinstance(v, bool):
    return f"{v:,}" if abs(v) >= 10000 else str(v)
  return f"{v:g}" if isinstance(v, float) else str(v)


def _acc(v) -> str:
  return "-" if v is None else f"{v:.4f}"


def _secs(v) -> str:
  return "-" if v is None else f"{v:.0f} s"


def markdown(sel: Dict[str, Any]) -> str:
  """selection.md: the search, the choice, the final run and the cost."""
  metric, keys, cost = sel["metric"], sel["searched"], sel["cost"]
  ch, final = sel["chosen"], sel["final"]
  (ev, ev_data), = sel["search"]["eval"].items()
  lines = [
      f"# AutoLoSA: `{sel['config']}`", "",
      f"Search: {cost['members']} members on "
      f"`{sel['search']['train'].get('split')}`, ranked by `{metric}` "
      f"(`{ev_data.get('split')}`); ties go to fewer trainable params.", "",
      f"Chosen: **{ch['name']}** ({ch['label']}), {metric} "
      f"{_acc(ch[metric])}, {ch['trainable_params']:,} trainable params.", "",
      f"Final run: trained on `{final['train'].get('split')}`, evaluated on " +
      ", ".join(f"`{k}` (`{v.get('split')}`)" for k, v in
                final["evals"].items()) + ": " +
      ", ".join(f"{k} {_acc(v)}" for k, v in final["results"].items()
                if k.split("/")[0] in final["evals"] and
                k.endswith(("accuracy", "loss"))) + ".", "",
      "## Members (best first)", "",
      "| # | member | " + " | ".join(keys) + f" | {metric} | params | "
      f"{ev} curve (step:acc) |",
      "|---|---|" + "---|" * len(keys) + "---|---|---|"]
  for r in sorted(sel["members"], key=lambda r: r["position"]):
    curve = " ".join(f"{s}:{a:.3f}" for s, a in r["curve"][-10:])
    note = "" if r["finished"] else (
        " (diverged)" if "died_at" in r else " (stopped at a rung)")
    lines.append(
        f"| {r['position']} | {r['name']}{note} | " +
        " | ".join(format_value(r["values"].get(k)) for k in keys) +
        f" | {_acc(r[metric])} | {r['trainable_params']:,} | {curve} |")
  lines += [
      "", "## Cost", "",
      "| search wall time | final wall time | members | backbone passes "
      "per step | trainable params (chosen / all members / final run) |",
      "|---|---|---|---|---|",
      f"| {_secs(cost['search_wall_s'])} | {_secs(cost['final_wall_s'])} | "
      f"{cost['members']} | {cost['backbone_passes_per_step']}"
      f"{'' if cost['shared_backbone'] else ' (members in turn)'} | "
      f"{cost['trainable_params_chosen']:,} / "
      f"{cost['trainable_params_population']:,} / "
      f"{format_value(cost['trainable_params_final'])} |", ""]
  return "\n".join(lines)


# --- command line -------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """--config and --workdir, defined on demand (importing claims no flags)."""
  train.define_config_and_workdir_flags(
      flag_values, config_help="Config file with a population "
      "(configs/*.py[:args], e.g. configs/vtab.py:task=dtd,"
      "population=default); --config.<key>=value overrides apply to the "
      "search and the final run.", workdir_help="AutoLoSA folder: search/, "
      "final/, selection.json and selection.md; rerunning resumes.")


def main(argv):
  del argv
  train.start_config_and_workdir_main()
  run(FLAGS["config"].config_filename, FLAGS.workdir,
      overrides=FLAGS["config"].override_values)
  print(open(os.path.join(FLAGS.workdir, "selection.md")).read())


def cli():
  """Console-script entry point."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  sys.exit(cli())
