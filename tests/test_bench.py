# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""`python -m losa_jax.bench` in --quick mode: every section runs, files
are written, deterministic ratios are sane.

Only compiled quantities (FLOPs, memory, parameter counts) are asserted;
measured wall times are checked to exist and be positive, never compared.
"""
import csv
import importlib.util
import json
import math
import os
import subprocess
import sys

from absl import app
import pytest

from losa_jax.bench import __main__ as cli
from losa_jax.bench import batch_search
from losa_jax.bench import common
from losa_jax.bench import registry
from losa_jax.tools import inflate_vivit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The sections the module fixture runs and checks in detail; the
# accelerator's are in tests/test_bench_accelerator.py; every other section
# runs at --quick size in test_every_other_section_runs_tiny.
SUITE = ("compiled", "dtype", "measured", "cache", "maxbatch", "big")
DETAILED = SUITE + ("accelerator", "side_backward")


def _script(name):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(REPO, "scripts", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench_report = _script("bench_report")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("bench"))
  for section in SUITE:
    cli.main([section, "--out", out, "--quick"])
  bench_report.main([out])
  return out


def _csv(out, name):
  with open(os.path.join(out, f"{name}.csv")) as f:
    return list(csv.DictReader(f))


def _raw(out, name):
  with open(os.path.join(out, f"{name}.json")) as f:
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
  assert "python -m losa_jax.bench compiled --out" in md and "--quick" in md
  for title in ("Compiled cost", "Measured step time", "Feature cache",
                "Largest batch", "Big backbones", "Linearity"):
    assert title in md, title


@pytest.mark.slow
def test_compiled_ratios(quick):
  rows = {r["method"]: r for r in _raw(quick, "compiled")}
  assert set(rows) == {"forward", *registry.METHODS}
  assert rows["forward"]["flops_vs_forward"] == 1.0
  # Backprop through the backbone costs about forward + backward.
  for m in ("full", "lora", "adapter"):
    assert rows[m]["flops_vs_forward"] > 1.8, m
    assert rows[m]["peak_bytes"] > rows["losa"]["peak_bytes"], m
  assert rows["full"]["flops_vs_forward"] > rows["losa"]["flops_vs_forward"]
  assert rows["linear"]["flops_vs_forward"] < 1.1
  assert rows["losa"]["trainable_params"] < rows["full"]["trainable_params"]
  assert rows["forward"]["trainable_params"] == 0
  for m in registry.METHODS:     # the state is donated
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


@pytest.mark.slow
@pytest.mark.parametrize(
    "section", [s for s in registry.SECTIONS if s not in DETAILED])
def test_every_other_section_runs_tiny(section, tmp_path):
  rows = cli.main([section, "--quick", "--out", str(tmp_path)])
  assert rows and all(isinstance(r, dict) for r in rows), section
  with open(tmp_path / f"{section}.json") as f:
    data = json.load(f)
  assert data["section"] == section and len(data["rows"]) == len(rows)
  assert data["meta"]["command"].startswith(
      f"python -m losa_jax.bench {section} --quick")
  assert bench_report.main([str(tmp_path)])


@pytest.mark.slow
def test_input_section_reads_a_share_per_process(tmp_path):
  """Run by test_every_other_section_runs_tiny too; here its invariants:
  each of P processes reads about 1/P of the split's bytes, both pipelines
  deliver images, and the report renders the tables."""
  rows = cli.main(["input", "--quick", "--out", str(tmp_path),
                   "--in_process"])
  share = {r["processes"]: r["fraction_of_epoch_max"]
           for r in rows if r["part"] == "bytes"}
  assert sorted(share) == [1, 2, 4]
  for procs, frac in share.items():
    # Its 64 / P rows, plus at most two local batches (16 / P rows each)
    # read ahead into the next epoch; records differ in size by < 10%.
    assert 1 / procs <= frac + 1e-9 and frac <= 1.1 * (1 + 32 / 64) / procs
  tput = [r for r in rows if r["part"] == "throughput"]
  assert {(r["pp"], r["pipeline"]) for r in tput} == {
      (pp, p) for pp in ("image", "video16") for p in ("ours", "tf.data")}
  assert all(r["examples_per_s"] > 0 for r in tput)
  md = "\n".join(bench_report.input_markdown(rows))
  assert "vs tf.data" in md and "share of the split's bytes" in md


def test_hand_backward_moves_fewer_bytes_than_autodiff(tmp_path):
  """docs/side_fused.md's reason to keep side_scan's hand-written backward,
  on compiled (deterministic) traffic; the section restores that backward."""
  from losa_jax.models import side_fused as sf  # pylint: disable=g-import-not-at-top
  rows = cli.main(["side_backward", "--quick", "--out", str(tmp_path),
                   "--in_process"])
  by = {r["backward"]: r for r in rows}
  assert set(by) == {"hand-written", "autodiff"}
  hand, auto = by["hand-written"], by["autodiff"]
  assert hand["backward_traffic_bytes"] < 0.8 * auto["backward_traffic_bytes"]
  assert hand["flops"] < auto["flops"]
  assert sf.side_scan.fwd is sf._scan_fwd and sf.side_scan.bwd is sf._scan_bwd
  assert bench_report.main([str(tmp_path)])


def test_largest_batch_search_is_exact_on_an_affine_model():
  calls = []

  def peak(b):
    calls.append(b)
    return 1000.0 + 3.0 * b + (b % 5)      # not exactly affine

  for budget in (1100.0, 5000.0, 100000.0):
    best, at, probes = batch_search.largest_batch(peak, budget, step=8,
                                                  cap=4096)
    brute = max([b for b in range(8, 4097, 8) if peak(b) <= budget],
                default=0)
    assert best == brute and (best == 0 or at <= budget)
    assert len(probes) <= 12
  assert batch_search.largest_batch(peak, 10.0, step=8)[0] == 0


def test_interleaved_rotates_and_skips_warmup():
  seen = []
  fns = {n: (lambda n=n: seen.append(n)) for n in "abc"}
  times = common.interleaved(fns, reps=3, warmup=1)
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


def test_every_section_option_has_help():
  """Every option a section reads has one meaning (registry.OPTIONS), a
  --quick size only for options it reads, and `SECTION --help` lists it."""
  for name, section in registry.SECTIONS.items():
    assert set(section.quick) <= set(section.defaults), name
    for key in section.defaults:
      assert len(registry.OPTIONS[key]) > 10, (name, key)
    text = cli._parser(name).format_help()
    for key in section.defaults:
      assert f"--{key}" in text, (name, key)
  assert set(registry.OPTIONS) == {
      k for s in registry.SECTIONS.values() for k in s.defaults}


def test_list_and_help_name_every_section():
  """`python -m losa_jax.bench list` and `--help` name every section, and
  listing imports no section's module (nor jax)."""
  for arg in ("list", "--help"):
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys; from losa_jax.bench import __main__ as m; "
         f"sys.argv = ['x', '{arg}']; rc = m._cli(); "
         "assert 'jax' not in sys.modules, 'jax imported'; sys.exit(rc)"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    for name in registry.SECTIONS:
      assert f"\n{name} " in out.stdout, (arg, name)


def test_section_help_lists_its_options():
  out = subprocess.run([sys.executable, "-m", "losa_jax.bench", "big",
                        "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
  for key in registry.SECTIONS["big"].defaults:
    assert f"--{key}" in out.stdout, key


INFLATE_FLAGS = ("image_ckpt", "out", "variant", "patch_size", "pool_type",
                 "temporal_patch_size", "num_frames", "image_size", "method",
                 "posemb", "scan")


def test_every_cli_flag_has_help():
  """inflate_vivit (an absl CLI): a fresh FlagValues with exactly its
  flags, each with a meaning, nothing defined globally by importing it."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  inflate_vivit.define_flags(fv)
  assert set(fv) == set(INFLATE_FLAGS)
  text = fv.module_help(inflate_vivit.__name__)
  for name in INFLATE_FLAGS:
    assert fv[name].help and len(fv[name].help) > 10, name
    assert f"--{name}:" in text or f"--[no]{name}:" in text, name
  assert not flags.FLAGS.flags_by_module_dict().get(inflate_vivit.__name__)
  out = subprocess.run([sys.executable, "-m", inflate_vivit.__name__,
                        "--help"], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
  for name in INFLATE_FLAGS:
    assert f"--{name}:" in out.stdout or f"--[no]{name}:" in out.stdout, name


def test_cli_errors_name_the_bad_value(tmp_path):
  out = str(tmp_path)
  with pytest.raises(cli.UsageError, match="unknown section 'bogus'"):
    cli.main(["bogus", "--out", out])
  with pytest.raises(cli.UsageError, match="--configs.*'nope'"):
    cli.main(["big", "--out", out, "--configs", "losa,nope"])
  with pytest.raises(cli.UsageError, match="unrecognized arguments: stray"):
    cli.main(["compiled", "--out", out, "stray"])
  with pytest.raises(cli.UsageError, match="--fsdp: 'x' in '1,x'"):
    cli.main(["fsdp", "--fsdp", "1,x"])
  with pytest.raises(cli.UsageError, match="--methods.*'sgd'"):
    cli.main(["maxbatch", "--methods", "losa,sgd"])
  with pytest.raises(ValueError, match="no option.*--fsdp"):
    registry.options("compiled", {"fsdp": [1]})
  with pytest.raises(ValueError, match=r"outside 1\.\.8"):
    registry.run("fsdp", {"fsdp": [16]})
  out = subprocess.run([sys.executable, "-m", "losa_jax.bench", "compiled",
                        "--batch", "x"], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 2 and "--batch: invalid literal" in out.stderr
  with pytest.raises(app.UsageError, match="--image_size=1,2,3"):
    inflate_vivit.main(["--image_ckpt", "x.npz", "--out", "y.npz",
                        "--num_frames", "4", "--image_size", "1,2,3"])


def test_quick_options():
  a = registry.options("measured", {"methods": ["losa"]}, quick=True)
  assert a.variants == ["tiny"] and a.batch == 4 and a.quick
  assert a.methods == ["losa"] and a.reps == 2     # given wins over --quick
  a = registry.options("measured", {})
  assert a.variants == ["Ti/16", "S/16", "B/16"] and not a.quick
  name, given, ns = cli.parse(["dtype", "--variant", "S/16", "--quick"])
  assert (name, given, ns.quick) == ("dtype", {"variant": "S/16"}, True)


def test_child_process_only_for_missing_xla_flags():
  """Compile-only sections need XLA flags (a child process unless present);
  timed ones run under default flags; --quick adds the fast compile."""
  a = registry.options("compiled", {})
  assert common.LICM_OFF in registry.section("compiled").flags_for(a)
  assert registry.section("measured").flags_for(
      registry.options("measured", {})) == ""
  fsdp = registry.section("fsdp")
  assert "device_count=8" in fsdp.flags_for(registry.options("fsdp", {}))
  assert common.LICM_OFF not in fsdp.flags_for(
      registry.options("fsdp", {"licm": True}))


def test_linear_fit():
  assert common.linear_fit([1, 2, 4], [3, 5, 9]) == pytest.approx(
      (2, 1))
