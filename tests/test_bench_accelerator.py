# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The accelerator section in --quick mode (CPU), its batch search, and
the core's promise: it trains without TensorFlow.

Only compiled quantities (FLOPs, compiled memory) and the search logic are
asserted; wall times are checked to exist, never compared. The --quick run
(about 45 s of CPU) is marked slow, like the suite's.
"""
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import xla_flags
from losa_jax.bench import __main__ as cli
from losa_jax.bench import accelerator
from losa_jax.bench import accelerator_check
from losa_jax.bench import batch_search
from losa_jax.bench import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CORE_WITHOUT_TF = textwrap.dedent("""
    import sys
    import numpy as np
    import jax
    from losa_jax.assembly import build
    from losa_jax.checkpointing import manager as checkpointing
    from losa_jax.assembly import optim
    from losa_jax.parallel import sharding
    from losa_jax.assembly import steps
    from losa_jax.models import model, vit
    from losa_jax.bench import __main__, registry
    from losa_jax.bench import accelerator, configs, harness
    cfg = configs.make_config("tiny", "losa", depth=1)
    b = build.build(cfg, total_steps=2)
    state = b.init(jax.random.key(0))
    rng = np.random.RandomState(0)
    batch = {"image": rng.uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32),
             "label": np.array([0, 1], np.int32)}
    state, metrics = b.train_step(state, batch)
    assert np.isfinite(float(metrics["loss"])), metrics
    tf = sorted(m for m in sys.modules
                if m.split(".")[0] in ("tensorflow", "tensorflow_datasets"))
    assert not tf, tf
    print("trained without tensorflow")
""")


def test_core_trains_without_tensorflow():
  """A fresh process imports the core and the accelerator bench, trains one
  tiny LoSA step, and never loads TensorFlow or TFDS (both are installed
  here, so an import anywhere on that path would show)."""
  env = dict(os.environ, XLA_FLAGS=xla_flags())
  out = subprocess.run([sys.executable, "-c", _CORE_WITHOUT_TF], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=300,
                       check=False)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  assert "trained without tensorflow" in out.stdout


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("accel"))
  return out, cli.main(["accelerator", "--out", out, "--quick"])


def _rows(rows, job, kind="rows"):
  return [r for r in rows if r.get("job") == job and r["kind"] == kind]


@pytest.mark.slow
def test_quick_runs_every_part(quick):
  out, rows = quick
  jobs = [r for r in rows if r["kind"] == "job"]
  assert not [j for j in jobs if "error" in j], jobs
  assert {j["job"] for j in jobs} == set(registry.ACCEL_PARTS)
  assert not any(j["tensorflow_loaded"] for j in jobs)
  with open(os.path.join(out, "accelerator.json")) as f:
    assert json.load(f)["meta"]["quick"] is True
  spec = importlib.util.spec_from_file_location(
      "bench_report", os.path.join(REPO, "scripts", "bench_report.py"))
  bench_report = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_report)
  bench_report.main([out])
  with open(os.path.join(out, "results.md")) as f:
    md = f.read()
  for title in ("Correctness", "Precision", "Cost guard", "Step time",
                "Peak memory", "Largest batch", "big-backbone"):
    assert title in md, title


@pytest.mark.slow
def test_quick_check_and_guard(quick):
  _, result = quick
  check = {r["dtype"]: r for r in _rows(result, "check")}
  assert set(check) == {"float32", "bfloat16"}
  for r in check.values():
    assert r["pass"] and not r["frozen_changed"] and r["update_norm"] > 0, r
  # The fused side network at the default matmul precision (TF32 emulated
  # on a CPU) within side_precision's bound, on rows at mean 40 and 400.
  prec = _rows(result, "check", "precision")
  assert [r["offset"] for r in prec] == list(
      accelerator_check.PRECISION_OFFSETS)
  for r in prec:
    assert r["pass"] and r["mode"] == "tf32", r
    assert "emulated" in r["backends"] and r["err_default_rel"] > 0, r
  (guard,) = _rows(result, "check", "guard")
  # The tiny side network is not small next to a width-32 backbone (1.25x
  # here); on ViT-B/16 the same ratio is ~1.001 (tests/test_cost_guard.py).
  assert 1.0 <= guard["ratio"] < 2.0 and guard["step_gflop"] > 0, guard


@pytest.mark.slow
def test_quick_timing_rows(quick):
  _, result = quick
  rows = {(r["method"], r["batch"]): r for r in _rows(result, "timing")}
  assert set(rows) == {(m, b) for m in registry.ACCEL_METHODS
                       for b in (4, 8)}
  for r in rows.values():
    assert r["status"] == "ok" and r["median_s"] > 0, r
  for b in (4, 8):
    f = {m: rows[(m, b)]["flops_vs_forward"] for m in registry.ACCEL_METHODS}
    assert f["forward"] == 1.0
    assert f["losa"] < f["lora"] < f["full"] and f["adapter"] < f["full"], f


@pytest.mark.slow
def test_quick_memory_and_max_batch(quick):
  _, result = quick
  mem = _rows(result, "memory")
  assert len(mem) == 10 and all(r["status"] == "ok" for r in mem)
  assert all(r["compiled_peak_gib"] > 0 for r in mem)
  mb = {r["method"]: r for r in _rows(result, "maxbatch")}
  assert set(mb) == {"losa", "full"}
  for r in mb.values():   # simulated on CPU: a compiled-peak cap
    assert r["mode"].startswith("simulated") and r["exact"], r
    assert r["max_batch"] % 8 == 0 and r["first_oom"] > r["max_batch"], r
  assert mb["losa"]["max_batch"] > mb["full"]["max_batch"]
  (vit_e,) = _rows(result, "vit_e")
  assert vit_e["loss_finite"] and vit_e["median_s"] > 0


def test_search_finds_the_boundary():
  """The batch search on a synthetic 'fits' (no JAX): exact to the
  multiple from any guess, capped, and stopped by its deadline."""
  never = time.time() + 60
  for true in (13, 81, 200):
    for guess in (5.0, 80.0, 300.0):
      r = batch_search.search(lambda b, t=true: b <= t, lo=0, hi=None,
                              guess=guess, cap=256, mult=8,
                              resolution=0.0, deadline=never)
      assert r["max_batch"] == true // 8 * 8 and r["exact"], (true, guess, r)
      assert r["first_oom"] == r["max_batch"] + 8
  r = batch_search.search(lambda b: True, lo=8, hi=None, guess=100,
                          cap=256, mult=8, resolution=0.05,
                          deadline=never)
  assert r["max_batch"] == 256 and r["at_cap"] and r["first_oom"] is None
  r = batch_search.search(lambda b: True, lo=8, hi=None, guess=100,
                          cap=256, mult=8, resolution=0.05,
                          deadline=time.time() - 1)
  assert r["stopped_by_budget"] and r["max_batch"] == 8 and not r["tries"]


def test_plan_isolates_each_method():
  """--isolation=method: one memory job per (variant, method), so each
  process's peak is one method's; the searches only where asked, last."""
  _, given, _ = cli.parse(["accelerator", "--variants", "B/16,L/16",
                           "--maxbatch_variants", "B/16",
                           "--maxbatch_methods", "losa,full"])
  jobs = accelerator.plan(registry.options("accelerator", given))
  assert [j["job"] for j in jobs[:4]] == ["check", "timing", "timing",
                                          "vit_e"]
  mem = [(j["variant"], j["methods"]) for j in jobs if j["job"] == "memory"]
  assert len(mem) == 10 and all(len(m) == 1 for _, m in mem)
  search = [(j["variant"], j["methods"]) for j in jobs
            if j["job"] == "maxbatch"]
  assert search == [("B/16", ["losa"]), ("B/16", ["full"])]
  assert jobs[-1]["job"] == "maxbatch"   # last: it stops at its budget


def test_help_lists_every_option():
  out = subprocess.run([sys.executable, "-m", "losa_jax.bench", "accelerator",
                        "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=120, check=False)
  assert out.returncode == 0, out.stderr
  for name in registry.SECTIONS["accelerator"].defaults:
    assert f"--{name}" in out.stdout, name


class _FakeMethod:
  """Stands in for harness.Method: `full` runs out of memory above
  batch 4 unless rematerialised; nothing is compiled."""

  def __init__(self, variant, method, spec, *, scan=None, remat=None):
    del variant, spec, scan
    self.method, self.remat, self.trainable = method, bool(remat), 0

  def batch(self, bsz):
    if self.method == "full" and bsz > 4 and not self.remat:
      raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to "
                         "allocate 123 bytes.")
    return bsz

  def compile(self, batch):
    del batch
    return None, {"flops": 1.0, "peak_bytes": 1.0}

  def runner(self, compiled, batch):
    del compiled, batch
    return lambda: None

  def state_deleted(self):
    return False


def test_timing_retries_an_out_of_memory_step_with_remat(monkeypatch):
  from losa_jax.bench import harness  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(harness, "Method", _FakeMethod)
  spec = dict(variant="tiny", methods=["forward", "full"], batches=[4, 8],
              reps=1, warmup=0, scan=True, remat=False)
  rows = {(r["method"], r["batch"]): r
          for r in accelerator_check.job_timing(spec)["rows"]}
  assert rows[("full", 4)]["status"] == "ok"
  assert rows[("full", 8)]["status"] == "ok+remat"
  assert rows[("full", 8)]["median_s"] >= 0
  assert harness.is_oom(RuntimeError("CUDA_ERROR_OUT_OF_MEMORY"))
  assert not harness.is_oom(ValueError("shape mismatch"))
