# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The equal-budget study (`losa_jax.study.budget`) in --quick mode."""
import csv
import importlib.util
import os

import jax
import numpy as np

from losa_jax.assembly import build
from losa_jax.models import model as model_lib
from losa_jax.population import members as members_lib
from losa_jax.study import ablation
from losa_jax.study import budget
from losa_jax.study import search


def _select_by_hand(rows):
  """docs/study.md's rule: the best minival accuracy among the members that
  did not diverge, ties to fewer trainable params, then to the lower member
  index."""
  done = [r for r in rows if not r["diverged"]]
  best = max(r[search.SELECT] for r in done)
  tied = [r for r in done if r[search.SELECT] == best]
  fewest = min(r["trainable_params"] for r in tied)
  return min((r for r in tied if r["trainable_params"] == fewest),
             key=lambda r: r["index"])


def test_quick_budget_study(tmp_path):
  out = budget.run_budget(budget.Args(out=str(tmp_path), quick=True))
  k = len(budget.QUICK["lrs"]) * len(budget.QUICK["wds"])
  by = {s["method"]: s for s in out["searches"]}
  assert sorted(by) == sorted(budget.QUICK["methods"])
  # Equal budgets: every method searched the same number of configs.
  assert {s["configs"] for s in out["searches"]} == {k}
  # LoSA's search is one population run on one backbone pass per step; the
  # others are K separate runs, K passes.
  assert by["losa"]["runs"] == 1 and by["losa"]["backbone_passes_per_step"] == 1
  assert by["linear"]["runs"] == k
  assert by["linear"]["backbone_passes_per_step"] == k
  for s in out["searches"]:
    rows = [r for r in out["members"]
            if (r["task"], r["method"]) == (s["task"], s["method"])]
    assert len(rows) == k and sum(r["selected"] for r in rows) == 1
    want = _select_by_hand(rows)
    assert s["selected"] == want["name"] == s["leaderboard"][0], (s, rows)
    assert [r["name"] for r in rows if r["selected"]] == [want["name"]]
    assert s["minival"] == want[search.SELECT]
    assert s["test"] == want["test/accuracy"] and 0.0 <= s["test"] <= 1.0
    # The leaderboard ranks every member, by minival among the finished.
    assert sorted(s["leaderboard"]) == sorted(r["name"] for r in rows)
    by_name = {r["name"]: r for r in rows}
    done = [by_name[n][search.SELECT] for n in s["leaderboard"]
            if not by_name[n]["diverged"]]
    assert done == sorted(done, reverse=True)
  # XLA's FLOPs: K side networks on one backbone pass cost less than K
  # linear probes, each with its own backbone pass.
  cost = {c["label"]: c for c in out["costs"]}
  assert cost["losa"]["gflop_search_step"] < cost["linear"][
      "gflop_search_step"]
  # The ablation: one population per task, the reference and one changed
  # structure, compared on the same seed.
  assert {r["switch"] for r in out["ablation_rows"]} == {"reference",
                                                         "token_mixer"}
  assert [e["pairs"] for e in out["effects"]] == [1]
  spec = importlib.util.spec_from_file_location("study_report", os.path.join(
      os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts",
      "study_report.py"))
  study_report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(study_report)
  study_report.main([str(tmp_path)])
  for name in ("results.md", "searches.csv", "members.csv", "cost.csv",
               "meta.json", "accuracy_vs_tuning_cost.png", "ablation.png"):
    assert os.path.getsize(tmp_path / name) > 0, name
  with open(tmp_path / "searches.csv") as f:
    assert len(list(csv.DictReader(f))) == len(budget.QUICK["methods"])


def test_single_runs_match_the_trainer_step():
  # `Single` compiles once with lr and wd as arguments; a member must train
  # as the trainer's step compiled with that member's constants does.
  c = search.search_config(search.base_config(
      "linear", "digits", num_classes=10, steps=2, batch=8, seed=0,
      val_percent=20), lr=[3e-3, 3e-2], wd=[0.0, 0.1])
  single = search.Single(c, 2)
  member = members_lib.expand(c)[3]              # lr 3e-2, wd 0.1
  data = search.TaskData(c, 2, [0])
  ref_cfg = search.base_config("linear", "digits", num_classes=10, steps=2,
                               batch=8, seed=0, val_percent=20,
                               lr=member.hparams["lr"],
                               wd=member.hparams["wd"])
  ref = build.build(ref_cfg, total_steps=2)
  ref_state = single.fresh_state(0)
  state = single.fresh_state(0)
  for batch in data.train[0]:
    state, _ = single.step(state, batch, single.hp(member))
    ref_state, _ = ref.train_step(ref_state, batch)
  got, want = jax.device_get((state["params"]["head"],
                              ref_state["params"]["head"]))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert float(np.abs(want["kernel"]).max()) > 0    # it did train


def test_ablation_members_change_one_switch_at_a_time():
  c = ablation.ablation_config(
      search.base_config("losa", "digits", num_classes=10, steps=2, batch=8,
                         seed=0, val_percent=20), ablation.SWITCHES, [0, 1])
  ms = ablation.one_at_a_time(c, ablation.SWITCHES)
  # The reference and one structure per alternative, at each paired seed.
  n = 1 + sum(len(v) for v in ablation.SWITCHES.values())
  assert len(ms) == 2 * n
  assert all(m.hparams["seed"] == m.hparams["data_seed"] for m in ms)
  assert sum(ablation.changed(m, ablation.SWITCHES) == ("reference", None)
             for m in ms) == 2


def test_quick_side_method_searches_are_populations(tmp_path):
  # LST's and LAST's K configs train as one population each (one backbone
  # pass per step), and a population member trains as the separate run of
  # its config does.
  a = budget.Args(out=str(tmp_path), quick=True, methods=["lst", "last"],
                  ablation=False)
  out = budget.run_budget(a)
  k = len(a.lrs) * len(a.wds)
  by = {s["method"]: s for s in out["searches"]}
  assert sorted(by) == ["last", "lst"]
  cost = {c["label"]: c for c in out["costs"]}
  for method, s in by.items():
    assert s["configs"] == k and s["runs"] == 1
    assert s["backbone_passes_per_step"] == 1
    assert cost[method]["kind"] == "population"
    # Timed side by side as a population step.
    assert out["meta"]["timing"][f"{method} population"]["median_s"] > 0
    # At the library's default options.
    assert out["meta"]["side_options"][method] == dict(
        model_lib.SIDE_MODULES[method].DEFAULTS)
    rows = sorted((r for r in out["members"] if r["method"] == method),
                  key=lambda r: r["index"])
    assert len(rows) == k and rows[0]["trainable_params"] > 0
    # The member with the largest lr, trained again as a separate run.
    cfg = budget.search_cfg(a, method, "digits", 0)
    member = members_lib.expand(cfg)[-1]
    pop_row = rows[member.index]
    assert (pop_row["lr"], pop_row["wd"]) == (member.hparams["lr"],
                                              member.hparams["wd"])
    single = search.Single(cfg, a.steps)
    assert single.trainable == pop_row["trainable_params"]
    alone = single.search([member], search.TaskData(cfg, a.steps, [0]))
    got = alone["rows"][0]
    np.testing.assert_allclose(pop_row["final_loss"], got["final_loss"],
                               rtol=1e-5)
    for name in search.EVALS:
      assert pop_row[f"{name}/accuracy"] == got[f"{name}/accuracy"], name
