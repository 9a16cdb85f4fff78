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
import subprocess
import sys

from absl import app
from absl import flags
import pytest

from losa_jax.bench import common
from losa_jax.bench import fsdp_memory
from losa_jax.bench import report
from losa_jax.bench import suite
from losa_jax.bench import video_memory
from losa_jax.tools import inflate_vivit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_dtype_and_donation(quick):
  rows = _raw(quick, "dtype")
  by = {(r["backbone"], r["blocks"], r["donate"]): r for r in rows}
  f32, bf16 = by[("f32", "scan", True)], by[("bf16", "scan", True)]
  assert bf16["argument_bytes"] < f32["argument_bytes"]
  assert f32["alias_bytes"] > 0 and bf16["alias_bytes"] > 0


@pytest.mark.slow
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


@pytest.mark.slow
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
  assert suite.interleaved is common.interleaved
  assert {k: v["reps"] for k, v in times.items()} == {"a": 3, "b": 3, "c": 3}
  # 1 compile + 1 warm-up round untimed, then the order rotates per round.
  assert seen[:6] == list("abcabc")
  assert seen[6:] == list("abc") + list("bca") + list("cab")
  for v in times.values():
    assert len(v["times_s"]) == 3
    assert v["min_s"] <= v["q25_s"] <= v["median_s"] <= v["q75_s"] <= v["max_s"]
  with pytest.raises(ValueError, match="reps >= 1"):
    common.interleaved(fns, reps=0, warmup=0)


def test_time_stats_are_per_name_medians():
  s = common.time_stats([3.0, 1.0, 2.0, 10.0])
  assert s["median_s"] == 2.5 and s["min_s"] == 1.0 and s["max_s"] == 10.0
  assert s["reps"] == 4 and s["times_s"] == [3.0, 1.0, 2.0, 10.0]


def test_common_writers_and_flag_helpers(tmp_path):
  rows = [{"a": 1, "b": 0.1234567, "probes": {"8": 1.0}, "curve": [1, 2]},
          {"a": 2, "c": "x"}]
  path = str(tmp_path / "t.csv")
  common.write_csv(path, rows, float_format=".3g")
  with open(path) as f:
    got = list(csv.DictReader(f))
  assert list(got[0]) == ["a", "b", "c"]        # dicts / lists left out
  assert got[0]["b"] == "0.123" and got[1]["c"] == "x"
  common.write_json(str(tmp_path / "sub" / "t.json"), {"k": (1, 2)})
  assert json.load(open(tmp_path / "sub" / "t.json")) == {"k": [1, 2]}
  assert not os.path.exists(str(tmp_path / "sub" / "t.json.tmp"))
  assert common.csv_list(" a, b,,c ") == ["a", "b", "c"]
  assert common.int_list("1,4, 8") == [1, 4, 8]
  with pytest.raises(ValueError, match="'x' in '1,x'"):
    common.int_list("1,x")
  env = {"XLA_FLAGS": "--a"}
  common.with_xla_flags("--a --b", env)
  common.with_xla_flags("--b", env)
  assert env["XLA_FLAGS"] == "--a --b"
  meta = common.provenance("python -m x --y", t_start=0.0,
                           load_start=(1.0, 2.0, 3.0), extra_field=7)
  assert meta["command"] == "python -m x --y" and meta["extra_field"] == 7
  assert meta["wall_s"] > 0 and meta["load_avg_start"] == (1.0, 2.0, 3.0)
  for k in ("date", "machine", "jax", "flax", "devices", "load_avg_end"):
    assert meta[k], k


_CLIS = (suite, fsdp_memory, video_memory, inflate_vivit)


@pytest.mark.parametrize("module", _CLIS, ids=lambda m: m.__name__)
def test_every_cli_flag_has_help(module):
  """In-process: the flags a fresh FlagValues gets, each with a meaning."""
  fv = flags.FlagValues()
  module.define_flags(fv)
  assert set(fv) == set(module.FLAG_NAMES)
  text = fv.module_help(module.__name__)
  for name in module.FLAG_NAMES:
    assert fv[name].help and len(fv[name].help) > 10, name
    assert f"--{name}:" in text or f"--[no]{name}:" in text, name
  assert not flags.FLAGS.flags_by_module_dict().get(module.__name__), (
      "importing the module defined flags globally")


@pytest.mark.parametrize("module", (suite, inflate_vivit),
                         ids=lambda m: m.__name__)
def test_help_lists_the_module_flags(module):
  """`python -m X --help` shows the module's own flags (absl lists the main
  module's). absl's --help exits 1 by design (as losa_jax.train's does)."""
  out = subprocess.run([sys.executable, "-m", module.__name__, "--help"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
  for name in module.FLAG_NAMES:
    assert f"--{name}:" in out.stdout or f"--[no]{name}:" in out.stdout, name


def test_cli_errors_name_the_bad_value(tmp_path):
  with pytest.raises(app.UsageError, match="unknown section.*'bogus'"):
    suite.main(["--out", str(tmp_path), "--sections", "bogus"])
  with pytest.raises(app.UsageError, match="unknown config.*'nope'"):
    suite.main(["--out", str(tmp_path), "--big_configs", "losa,nope"])
  with pytest.raises(app.UsageError, match="unexpected arguments"):
    suite.main(["--out", str(tmp_path), "stray"])
  with pytest.raises(app.UsageError, match="--fsdp"):
    fsdp_memory.main(["--fsdp", "1,x"])
  with pytest.raises(ValueError, match="outside 1..8"):
    fsdp_memory.run("Ti/16", [16], [], 1)
  with pytest.raises(app.UsageError, match="--image_size=1,2,3"):
    inflate_vivit.main(["--image_ckpt", "x.npz", "--out", "y.npz",
                        "--num_frames", "4", "--image_size", "1,2,3"])


def test_quick_options():
  fv = flags.FlagValues()
  suite.define_flags(fv)
  fv(["suite", "--out", "/tmp/x", "--quick", "--sections", "compiled, dtype"])
  a = suite.options(fv, ["--out", "/tmp/x", "--quick"])
  assert a.sections == ["compiled", "dtype"] and a.variants == ["tiny"]
  assert a.measure_methods == ["losa", "full"] and a.argv[-1] == "--quick"


def test_linear_fit():
  assert report.linear_fit([1, 2, 4], [3, 5, 9]) == pytest.approx((2, 1))
