# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""AutoLoSA (losa_jax.auto): search, select, retrain, end to end offline."""
import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

from absl import flags
import pytest

from losa_jax import auto
from losa_jax.config import schema as config_lib
from losa_jax.trainers import population as population_train
from losa_jax import vtab_sweep
from losa_jax.population import members as members_lib
from test_vtab_sweep import mock_all_tasks  # pylint: disable=g-bad-import-order

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "configs", "default.py")
VTAB = os.path.join(REPO, "configs", "vtab.py")


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory):
  """Overrides: the demo config on a random 2-block version of the shipped
  backbone (a third of its compile time; the search, selection and resume
  logic under test do not depend on the backbone)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from losa_jax import demo  # pylint: disable=g-import-not-at-top
  from losa_jax.models import porting  # pylint: disable=g-import-not-at-top
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top
  backbone = {**demo.BACKBONE_MODEL, "depth": 2}
  params = vit.Model(10, **backbone).init(
      jax.random.key(0), np.zeros((1, 28, 28, 3), np.float32))["params"]
  path = str(tmp_path_factory.mktemp("backbone") / "vit_2block.npz")
  porting.save_vit(params, path)
  return {"model_init": path, "model.backbone.depth": 2}


def _row(index, acc, params, **kw):
  return {"index": index, "name": f"m{index:02d}", "val/accuracy": acc,
          "trainable_params": params, "alive": True, **kw}


def _best(rows, metric):
  """The choice, spelled out: the finished members' best metric, ties to
  the fewest trainable params, then to the lowest index."""
  done = [r for r in rows if r.get("alive", True) and "rung_out" not in r]
  top = max(r[metric] for r in done)
  tied = [r for r in done if r[metric] == top]
  fewest = min(r["trainable_params"] for r in tied)
  return min(r["index"] for r in tied if r["trainable_params"] == fewest)


def test_select_ties_go_to_fewer_params():
  rows = [_row(0, 0.8, 300), _row(1, 0.9, 500), _row(2, 0.9, 200),
          _row(3, 0.9, 200), _row(4, 0.7, 100)]
  board = auto.select(rows, "val/accuracy")
  assert [r["index"] for r in board] == [2, 3, 1, 0, 4]
  assert board[0]["index"] == _best(rows, "val/accuracy")
  # Higher accuracy beats fewer params; a missing or NaN value ranks last.
  rows = [_row(0, 0.5, 10), _row(1, 0.6, 1000), _row(2, None, 1),
          _row(3, math.nan, 1)]
  assert [r["index"] for r in auto.select(rows, "val/accuracy")] == [
      1, 0, 2, 3]


def test_select_ranks_unfinished_members_last():
  rows = [_row(0, 0.99, 10, alive=False, died_at=5),
          _row(1, 0.95, 10, rung_out=100), _row(2, 0.5, 10),
          _row(3, 0.6, 20)]
  board = auto.select(rows, "val/accuracy")
  # Among the unfinished, a diverged member ranks after a healthy one.
  assert [r["index"] for r in board] == [3, 2, 1, 0]
  assert board[0]["index"] == _best(rows, "val/accuracy")


def test_vtab_configs_search_on_val_and_retrain_on_final_split():
  spec = f"{VTAB}:task=dtd,population=default"
  # `python -m losa_jax.train` takes this config as it is.
  config = config_lib.load_config(spec)
  config_lib.validate(config)
  members_lib.validate(config.population, config)
  assert config.input.data.split == "train800" and list(config.evals) == [
      "val"]
  assert len(members_lib.expand(config)) == 18
  random = config_lib.load_config(f"{VTAB}:task=dtd,population=random")
  assert len(members_lib.expand(random)) == 8
  # protocol=final as given is overridden by the search's protocol=tune.
  search, ev = auto.search_config(spec + ",protocol=final",
                                  {"population.grid.lr": [0.01, 0.02]})
  assert ev == "val" and list(search.evals) == ["val"]
  assert search.input.data.split == "train800"
  assert search.evals.val.data.split == "val200"
  assert auto.searched_keys(search.population) == ["lr", "wd", "rank"]
  members = members_lib.expand(search)
  chosen = next(m for m in members if m.label == "lr=0.02,wd=0,rank=16")
  final = auto.final_config(spec, chosen, {"population.grid.lr": [1.0],
                                           "total_epochs": 3})
  assert "population" not in final
  assert final.input.data.split == "train800val200"
  assert {k: v.data.split for k, v in final.evals.items()} == {"test": "test"}
  assert (final.lr, final.wd, final.model.losa.rank) == (0.02, 0.0, 16)
  assert final.total_epochs == 3 and final.get("eval_every", 0) == 0
  assert auto.member_values(chosen, ["lr", "wd", "rank"]) == {
      "lr": 0.02, "wd": 0.0, "rank": 16}


def test_demo_final_config_is_the_member_without_population():
  search, ev = auto.search_config(f"{DEMO}:runlocal,population=default")
  # The search trains on 80% of train and ranks on the other 20% (never on
  # test); the final run retrains the chosen member on all of train and
  # reports test.
  assert ev == "val" and list(search.evals) == ["val"]
  assert search.input.data.split == "train[:80%]"
  assert search.evals.val.data.split == "train[80%:]"
  m = members_lib.expand(search)[3]
  final = auto.final_config(f"{DEMO}:runlocal,population=default", m)
  assert "population" not in final
  assert final.input.data.split == "train" and list(final.evals) == ["test"]
  assert (final.lr, final.seed, final.model.losa.rank) == (
      m.config.lr, m.config.seed, m.config.model.losa.rank)
  # A member of a mixed population is retrained with its own side method.
  mixed, _ = auto.search_config(f"{DEMO}:runlocal,population=default", {
      "population.method": ["losa", "last"], "population.last": {"rank": [4]}})
  keys = auto.searched_keys(mixed.population)
  assert keys == ["lr", "method", "rank", "last.rank"]
  m = members_lib.expand(mixed)[-1]
  final = auto.final_config(f"{DEMO}:runlocal,population=default", m)
  assert (final.model.method, final.model.last.rank) == ("last", 4)
  assert auto.member_values(m, keys) == {
      "lr": m.config.lr, "method": "last", "rank": None, "last.rank": 4}


def test_config_without_population_fails_by_name():
  with pytest.raises(ValueError, match="no population.*population=default"):
    auto.search_config(f"{DEMO}:runlocal")
  with pytest.raises(ValueError, match="population='grid'"):
    config_lib.load_config(f"{DEMO}:population=grid")


def test_flags_give_spec_and_overrides(monkeypatch):
  spec = f"{DEMO}:runlocal,population=default"
  argv = ["auto", f"--config={spec}", "--workdir=/tmp/x", "--config.lr=0.5"]
  # ml_collections reads the overrides from sys.argv (also when defining).
  monkeypatch.setattr(sys, "argv", argv)
  fv = flags.FlagValues()
  auto.define_flags(fv)
  fv(argv)
  assert fv["config"].config_filename == spec
  assert fv["config"].override_values == {"lr": 0.5}
  assert fv.workdir == "/tmp/x"


def test_phase_time_is_recorded_while_the_phase_runs(tmp_path, monkeypatch):
  """auto_state.json gets the phase's wall time while it runs, on top of
  what earlier invocations recorded, so a kill -9 (which runs no `finally`)
  loses at most one beat of it. The phase waits (at most 60 s) for a beat."""
  monkeypatch.setattr(auto, "HEARTBEAT_S", 0.05, raising=False)
  path = os.path.join(str(tmp_path), auto.STATE)
  with open(path, "w") as f:
    json.dump({"search_wall_s": 100.0, "search_config": {"lr": 1}}, f)
  seen = []

  def phase():
    deadline = time.monotonic() + 60
    while not seen and time.monotonic() < deadline:
      with open(path) as f:
        state = json.load(f)
      if state["search_wall_s"] > 100.0:
        seen.append(state)
      time.sleep(0.01)
    return "trained"

  timed = auto._timed  # pylint: disable=protected-access
  assert timed(str(tmp_path), "search", phase) == "trained"
  assert seen and seen[0]["search_config"] == {"lr": 1}, seen
  with open(path) as f:
    final = json.load(f)
  assert final["search_wall_s"] >= seen[0]["search_wall_s"] > 100.0
  assert final["search_config"] == {"lr": 1} and "final_wall_s" not in final


@pytest.mark.slow
def test_killed_search_counts_in_the_cost(tmp_path, two_blocks):
  """`python -m losa_jax.auto` killed (-9) once the search has its first
  checkpoint: auto_state.json already holds the search's time, and the
  rerun's selection adds its own to it."""
  spec = f"{DEMO}:runlocal,population=default"
  workdir = str(tmp_path / "auto")
  code = ("import sys; from losa_jax import auto; auto.HEARTBEAT_S = 0.2; "
          "auto.cli()")
  cmd = [sys.executable, "-c", code, f"--config={spec}",
         f"--workdir={workdir}",
         *(f"--config.{k}={v}" for k, v in two_blocks.items())]
  proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=REPO,
                                        JAX_PLATFORMS="cpu"),
                          cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  first = os.path.join(workdir, "search", "checkpoints", "3")
  deadline = time.monotonic() + 600
  while not os.path.isdir(first) and proc.poll() is None:
    assert time.monotonic() < deadline, "the search never saved step 3"
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == -signal.SIGKILL, out[-3000:]
  with open(os.path.join(workdir, auto.STATE)) as f:
    killed = json.load(f).get("search_wall_s")
  assert killed and killed > 0, out[-3000:]
  sel = auto.run(spec, workdir, overrides=two_blocks)
  assert sel["cost"]["search_wall_s"] > killed
  assert f"| {sel['cost']['search_wall_s']:.0f} s |" in open(
      os.path.join(workdir, "selection.md")).read()


def _check_selection(sel, workdir, metric):
  """selection.json against the search's own results.json."""
  with open(os.path.join(workdir, "selection.json")) as f:
    assert json.load(f)["chosen"] == json.loads(json.dumps(sel["chosen"]))
  with open(os.path.join(workdir, "search", "results.json")) as f:
    results = json.load(f)
  rows = results["members"]
  assert sel["metric"] == metric
  assert sel["chosen"]["name"] == f"m{_best(rows, metric):02d}"
  assert sel["leaderboard"][0] == sel["chosen"]["name"]
  assert len(sel["members"]) == len(rows) == sel["cost"]["members"] == 4
  assert {tuple(r["values"]) for r in sel["members"]} == {("lr", "rank")}
  for r in sel["members"]:
    assert r["curve"] and r["curve"][-1][1] == pytest.approx(r[metric])
  cost = sel["cost"]
  assert cost["backbone_passes_per_step"] == 1 and cost["shared_backbone"]
  assert cost["search_wall_s"] > 0 and cost["final_wall_s"] > 0
  assert cost["trainable_params_final"] == cost["trainable_params_chosen"]
  md = open(os.path.join(workdir, "selection.md")).read()
  assert sel["chosen"]["name"] in md and "backbone passes" in md


def test_auto_demo_end_to_end_and_resume(tmp_path, monkeypatch, two_blocks):
  spec = f"{DEMO}:runlocal,population=default"
  workdir = str(tmp_path / "auto")
  sel = auto.run(spec, workdir, overrides=two_blocks)
  _check_selection(sel, workdir, "val/accuracy")
  # The search ranked on train[80%:]; the final run retrains the chosen
  # member's values on all of train and reports test.
  assert sel["final"]["train"]["split"] == "train"
  chosen = next(r for r in sel["members"]
                if r["name"] == sel["chosen"]["name"])
  assert 0.0 <= sel["final"]["results"]["test/accuracy"] <= 1.0
  assert "val/accuracy" not in sel["final"]["results"]
  assert sel["final"]["config"]["lr"] == chosen["values"]["lr"]
  assert sel["final"]["config"]["model"]["losa"]["rank"] == (
      chosen["values"]["rank"])

  # Resume: the finished search is read back (never retrained), the final
  # run resumes from its last checkpoint.
  for name in ("selection.json", "selection.md", "final/results.json"):
    os.remove(os.path.join(workdir, name))

  def no_search(*a, **k):
    raise AssertionError("the finished search was trained again")
  monkeypatch.setattr(population_train, "train", no_search)
  again = auto.run(spec, workdir, overrides=two_blocks)
  assert again["chosen"] == sel["chosen"]
  assert again["final"]["results"]["test/accuracy"] == pytest.approx(
      sel["final"]["results"]["test/accuracy"])
  assert again["cost"]["search_wall_s"] == sel["cost"]["search_wall_s"]
  # Another search in the same workdir is refused by name, before training.
  with pytest.raises(ValueError, match=r"another search config \(changed: "
                     r"\['population'\]\)"):
    auto.run(f"{DEMO}:runlocal,population=random", workdir,
             overrides=two_blocks)
  # So is a finished search of another population that AutoLoSA did not
  # record (e.g. trained by `python -m losa_jax.train`).
  os.remove(os.path.join(workdir, auto.STATE))
  with pytest.raises(ValueError, match="holds another population"):
    auto.run(f"{DEMO}:runlocal,population=random", workdir,
             overrides=two_blocks)


def test_vtab_sweep_auto_on_mock_data(tmp_path, monkeypatch):
  data = str(tmp_path / "data")
  spec = f"{VTAB}:runlocal,population=default,data_dir={data}"
  workdir = str(tmp_path / "sweep")
  with mock_all_tasks(data):
    out = vtab_sweep.sweep(spec, workdir, ["dtd"], auto=True)
  task_dir = os.path.join(workdir, "dtd")
  with open(os.path.join(task_dir, "selection.json")) as f:
    sel = json.load(f)
  _check_selection(sel, task_dir, "val/accuracy")
  # Searched on train800 -> val200, retrained on train800val200 -> test.
  assert sel["search"]["train"]["split"] == "train800"
  assert sel["search"]["eval"]["val"]["split"] == "val200"
  assert sel["final"]["train"]["split"] == "train800val200"
  assert {k: v["split"] for k, v in sel["final"]["evals"].items()} == {
      "test": "test"}
  with open(os.path.join(task_dir, "final", "results.json")) as f:
    final = json.load(f)
  assert "test/accuracy" in final and "val/accuracy" not in final
  assert sel["final"]["results"]["test/accuracy"] == final["test/accuracy"]

  # The table has the chosen values.
  (row,) = out["rows"]
  values = sel["chosen"]["values"]
  assert {k: row[k] for k in values} == values
  assert row["accuracy"] == final["test/accuracy"]
  with open(os.path.join(workdir, "results.csv")) as f:
    csv_rows = list(csv.DictReader(f))
  assert float(csv_rows[0]["lr"]) == values["lr"]
  assert int(csv_rows[0]["rank"]) == values["rank"]
  md = open(os.path.join(workdir, "results.md")).read()
  assert "| top-1 (%) | lr | rank |" in md and "search time (s)" in md

  # A finished task is read back, not searched again.
  def no_auto(*a, **k):
    raise AssertionError("a finished AutoLoSA task ran again")
  monkeypatch.setattr(auto, "run", no_auto)
  again = vtab_sweep.sweep(spec, workdir, ["dtd"], auto=True)
  assert again["rows"] == out["rows"]
  with pytest.raises(ValueError, match="--auto.*no population"):
    vtab_sweep.sweep(f"{VTAB}:runlocal", workdir, ["dtd"], auto=True)
