# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The benchmark suite in --quick mode: files written, deterministic ratios sane.

Only compiled quantities (FLOPs, memory, parameter counts) are asserted;
measured wall times are checked to exist and be positive, never compared.
"""
import csv
import json
import math
import os

import pytest

from losa_jax.bench import report
from losa_jax.bench import suite


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bench"))
  suite.main(["--out", out, "--quick"])
  return out


def _csv(out, name):
  with open(os.path.join(out, f"{name}.csv")) as f:
    return list(csv.DictReader(f))


def _raw(out, name):
  with open(os.path.join(out, f"raw_{name}.json")) as f:
    return json.load(f)["rows"]


def test_every_output_is_written(quick):
  for name in ("results.md", "compiled.csv", "dtype.csv", "measured.csv",
               "cache.csv", "maxbatch.csv", "big.csv", "linearity.csv",
               "compiled_peak_memory.png", "step_time_vs_forward.png",
               "cache_epoch.png", "max_batch.png", "big_models_memory.png",
               "depth_linearity.png"):
    path = os.path.join(quick, name)
    assert os.path.getsize(path) > 0, name
  md = open(os.path.join(quick, "results.md")).read()
  assert "python -m losa_jax.bench.suite --out" in md and "--quick" in md
  for title in ("Compiled cost", "Measured step time", "Feature cache",
                "Largest batch", "Big backbones", "Linearity"):
    assert title in md, title


def test_compiled_ratios(quick):
  rows = {r["method"]: r for r in _raw(quick, "compiled")}
  assert set(rows) == {"forward", *suite.METHODS}
  assert rows["forward"]["flops_vs_forward"] == 1.0
  # Backprop through the backbone costs about forward + backward.
  for m in ("full", "lora", "adapter"):
    assert rows[m]["flops_vs_forward"] > 1.8, m
    assert rows[m]["peak_bytes"] > rows["losa"]["peak_bytes"], m
  assert rows["full"]["flops_vs_forward"] > rows["losa"]["flops_vs_forward"]
  assert rows["linear"]["flops_vs_forward"] < 1.1
  assert rows["losa"]["trainable_params"] < rows["full"]["trainable_params"]
  assert rows["forward"]["trainable_params"] == 0
  for m in suite.METHODS:     # the state is donated
    assert rows[m]["alias_bytes"] > 0, m


def test_dtype_and_donation(quick):
  rows = _raw(quick, "dtype")
  by = {(r["backbone"], r["blocks"], r["donate"]): r for r in rows}
  f32, bf16 = by[("f32", "scan", True)], by[("bf16", "scan", True)]
  assert bf16["argument_bytes"] < f32["argument_bytes"]
  assert f32["alias_bytes"] > 0 and bf16["alias_bytes"] > 0


def test_measured_and_cache_rows(quick):
  rows = {r["method"]: r for r in _raw(quick, "measured")}
  assert set(rows) == {"forward", "losa_cached", "losa", "full"}
  assert rows["forward"]["vs_forward"] == 1.0
  for r in rows.values():
    assert r["median_s"] > 0 and math.isfinite(r["vs_forward"])
    assert r["reps"] == 2
  (c,) = _raw(quick, "cache")
  assert c["images_measured"] == 16 and c["cache_mib"] > 0
  assert c["cached_vs_uncached"] > 0 and c["build_1000_s"] > 0


def test_max_batch_and_big_models(quick):
  mb = {r["method"]: r for r in _raw(quick, "maxbatch")}
  assert mb["losa"]["max_batch"] > 0
  for r in mb.values():
    assert r["peak_gib_at_max"] <= r["budget_gib"]
    above = [float(p) for b, p in r["probes"].items()
             if int(b) > r["max_batch"]]
    assert all(p > r["budget_gib"] for p in above)
  big = [r for r in _raw(quick, "big") if not r["linearity"]]
  peak = {r["config"]: r["peak_gib"] for r in big}
  assert peak["losa"] < peak["full+remat"]
  (lin,) = [r for r in _csv(quick, "linearity") if r["config"] == "losa"]
  assert abs(float(lin["prediction_error"])) < 0.5


def test_largest_batch_search_is_exact_on_an_affine_model():
  calls = []

  def peak(b):
    calls.append(b)
    return 1000.0 + 3.0 * b + (b % 5)      # not exactly affine

  for budget in (1100.0, 5000.0, 100000.0):
    best, at, probes = suite.largest_batch(peak, budget, step=8, cap=4096)
    brute = max([b for b in range(8, 4097, 8) if peak(b) <= budget],
                default=0)
    assert best == brute and (best == 0 or at <= budget)
    assert len(probes) <= 12
  assert suite.largest_batch(peak, 10.0, step=8)[0] == 0


def test_interleaved_rotates_and_skips_warmup():
  seen = []
  fns = {n: (lambda n=n: seen.append(n)) for n in "abc"}
  times = suite.interleaved(fns, reps=3, warmup=1)
  assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
  assert seen[6:] == list("abc") + list("bca") + list("cab")


def test_linear_fit():
  assert report.linear_fit([1, 2, 4], [3, 5, 9]) == pytest.approx((2, 1))
