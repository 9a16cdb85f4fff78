# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Benchmark suite: time and memory of LoSA vs linear / full / LoRA / adapters.

  python -m losa_jax.bench.suite --out docs/bench_results \
      [--variants Ti/16,S/16,B/16,L/16] [--batch 32] [--quick]
  python -m losa_jax.bench.suite --help     # every flag and its meaning

Sections (`--sections`, default all), each written to `raw_<section>.json`,
then `results.md`, one CSV per section and PNG plots in `--out`:

* compiled: per variant and method at `--batch`, 224 px (f32, unscanned
  backbone): trainable params, XLA FLOPs, compiled temp / argument / peak
  memory, and their ratios to the backbone forward pass (compiled alike).
* dtype: LoSA at `--dtype_variant`: f32 vs bf16 backbone (bf16 matmuls and
  bf16 frozen params), unrolled vs scanned blocks, with and without state
  donation (XLA's alias bytes).
* measured: per `--measure_variants` at `--measure_batch`: median wall time
  of one train step of every method, of the backbone forward, and of LoSA
  from cached features, all interleaved round-robin in one process after
  warm-up (so machine noise hits every method alike); examples/s and the
  ratio to the forward.
* cache: LoSA epoch time with and without the feature cache on a synthetic
  task of `--cache_images` images, uncached and cached steps interleaved,
  scaled to a 1,000-image (VTAB-1k) epoch; plus the one-time build cost.
* maxbatch: the largest batch (multiple of `--batch_step`) whose compiled
  peak memory fits `--budget_gib`, per method, by a linear guess from two
  compiles and a binary search around it (abstract inputs).
* big: compiled memory at `--big_batch` for `--big_variants` (scanned,
  bf16 matmuls; frozen params bf16; full keeps f32 params), with and
  without rematerialisation for the backprop methods, and which fit
  16 / 40 / 80 GiB; plus compiles at 1/8, 1/4 and 1/2 depth of
  `--linearity_variant` to show memory is linear in depth.

Compile-only sections (compiled, dtype, maxbatch, big) run in a child
process with XLA's while-loop-invariant code motion disabled: XLA:CPU has
no native bf16 GEMM and upcasts bf16 weights to f32, and that pass hoists
the upcast of the whole [L, ...] scanned weight stack out of the loop, a
full f32 copy of the backbone that a GPU/TPU (native bf16 dots) never
makes. f32 programs compile to the same memory either way (checked); the
`big` section also reports LoSA under default flags. Timed sections run
with default flags.

`--quick` shrinks everything to a 4-block width-32 ViT at 32 px for smoke
tests (tests/test_bench.py). Never compare wall times across runs: only the
ratios measured side by side in one run mean anything.

Code: bench/configs.py (cells: configs and compiled cost),
bench/sections_compiled.py, bench/sections_measured.py (the sections),
bench/report.py (tables and plots), bench/common.py (timing, provenance,
writers); this module holds the flags and runs the sections.
"""
import datetime
import json
import os
import subprocess
import sys
import time
import types
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags

from losa_jax.bench import common
from losa_jax.bench import sections_compiled
from losa_jax.bench import sections_measured
from losa_jax.bench import sections_population
from losa_jax.bench import sections_side
# Names the efficiency notebook and tests use as `suite.X`.
# pylint: disable=unused-import,g-multiple-import
from losa_jax.bench.common import FAST_COMPILE, LICM_OFF, interleaved
from losa_jax.bench.configs import BIG_CONFIGS, METHODS
from losa_jax.bench.configs import forward_cost, make_config, step_cost
from losa_jax.bench.sections_compiled import largest_batch
# pylint: enable=unused-import,g-multiple-import

COMPILE_SECTIONS = ("compiled", "dtype", "maxbatch", "big")
TIMED_SECTIONS = ("measured", "cache", "population", "side")
SECTIONS = ("compiled", "dtype", "measured", "cache", "maxbatch", "big",
            "population", "side")
SECTION_FNS = {"compiled": sections_compiled.section_compiled,
               "dtype": sections_compiled.section_dtype,
               "measured": sections_measured.section_measured,
               "cache": sections_measured.section_cache,
               "maxbatch": sections_compiled.section_maxbatch,
               "big": sections_compiled.section_big,
               "big_default": sections_compiled.section_big_default_flags,
               "population": sections_population.section_population,
               "side": sections_side.section_side}
# Comma-list flags (parsed into lists by `options`).
_LIST_FLAGS = ("sections", "variants", "measure_variants", "big_variants",
               "big_configs", "linearity_configs", "maxbatch_methods",
               "measure_methods")
_log = common.log
# Every flag define_flags defines (tests check the two agree).
FLAG_NAMES = ("out", "sections", "variants", "batch", "dtype_variant",
              "measure_variants", "measure_batch", "measure_methods", "reps",
              "warmup", "cache_variant", "cache_images", "maxbatch_variant",
              "budget_gib", "batch_step", "batch_cap", "maxbatch_methods",
              "big_variants", "big_batch", "big_configs",
              "linearity_variant", "linearity_configs", "quick", "reuse",
              "in_process", "child")


# --- flags --------------------------------------------------------------------


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The suite's flags; defined on demand, so importing claims no names."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("out", None, "Output folder: raw_<section>.json, "
                      "results.md, one CSV per section, PNG plots.", **fv)
  flags.DEFINE_list("sections", list(SECTIONS), "Sections to run, from "
                    f"{','.join(SECTIONS)}.", **fv)
  flags.DEFINE_list("variants", ["Ti/16", "S/16", "B/16", "L/16"],
                    "ViT variants of the compiled section.", **fv)
  flags.DEFINE_integer("batch", 32, "Batch of the compiled and dtype "
                       "sections.", lower_bound=1, **fv)
  flags.DEFINE_string("dtype_variant", "B/16", "Variant of the dtype section "
                      "(f32 vs bf16, unrolled vs scanned, donation).", **fv)
  flags.DEFINE_list("measure_variants", ["Ti/16", "S/16", "B/16"],
                    "Variants whose step time is measured.", **fv)
  flags.DEFINE_integer("measure_batch", 8, "Batch of the measured and cache "
                       "sections.", lower_bound=1, **fv)
  flags.DEFINE_list("measure_methods", list(METHODS), "Methods whose step "
                    "time is measured (the forward and cached LoSA always "
                    "are).", **fv)
  flags.DEFINE_integer("reps", 5, "Timed interleaved rounds per measured "
                       "variant.", lower_bound=1, **fv)
  flags.DEFINE_integer("warmup", 1, "Untimed rounds after the compiling "
                       "call.", lower_bound=0, **fv)
  flags.DEFINE_string("cache_variant", "B/16", "Variant of the feature-cache "
                      "section.", **fv)
  flags.DEFINE_integer("cache_images", 128, "Images of the synthetic task "
                       "the cache section caches and trains on.",
                       lower_bound=1, **fv)
  flags.DEFINE_string("maxbatch_variant", "B/16", "Variant of the maxbatch "
                      "section.", **fv)
  flags.DEFINE_float("budget_gib", 16.0, "Memory budget (GiB) the maxbatch "
                     "section's compiled peak must fit.", **fv)
  flags.DEFINE_integer("batch_step", 8, "The maxbatch search's granularity: "
                       "batches are multiples of it.", lower_bound=1, **fv)
  flags.DEFINE_integer("batch_cap", 16384, "Largest batch the maxbatch "
                       "search tries.", lower_bound=1, **fv)
  flags.DEFINE_list("maxbatch_methods", list(METHODS), "Methods of the "
                    "maxbatch section.", **fv)
  flags.DEFINE_list("big_variants", ["H/14", "g/14", "G/14", "e/14"],
                    "Variants of the big section (scanned, bf16).", **fv)
  flags.DEFINE_integer("big_batch", 8, "Batch of the big section.",
                       lower_bound=1, **fv)
  flags.DEFINE_list("big_configs", [c[0] for c in BIG_CONFIGS],
                    "Configs of the big section, from "
                    f"{','.join(c[0] for c in BIG_CONFIGS)}.", **fv)
  flags.DEFINE_string("linearity_variant", "e/14", "Variant compiled at 1/8, "
                      "1/4, 1/2 depth to show memory is linear in depth "
                      "('' skips).", **fv)
  flags.DEFINE_list("linearity_configs", ["losa", "lora+remat", "full+remat"],
                    "Big-section configs of the linearity check.", **fv)
  flags.DEFINE_bool("quick", False, "Tiny model, few steps: a smoke test of "
                    "every section (tests); its times mean nothing.", **fv)
  flags.DEFINE_bool("reuse", False, "Keep sections whose raw_<section>.json "
                    "exists in --out.", **fv)
  flags.DEFINE_bool("in_process", False, "Run every section in this process, "
                    "under this process's XLA_FLAGS (no child processes).",
                    **fv)
  flags.DEFINE_list("child", [], "Internal: the sections a child process "
                    "started by the suite runs; not for users.", **fv)
  flags.mark_flag_as_required("out", flag_values=flag_values)


def options(flag_values: flags.FlagValues, argv: Sequence[str]
            ) -> types.SimpleNamespace:
  """Parsed flags -> the options every section reads (`a.<flag>`).

  --quick overrides the sizes; `argv` (the user's flags, without the
  program name) is kept to record and to re-run in child processes.
  """
  a = types.SimpleNamespace(
      **{name: flag_values[name].value for name in FLAG_NAMES})
  if a.quick:
    a.variants = a.measure_variants = ["tiny"]
    a.dtype_variant = a.cache_variant = a.maxbatch_variant = "tiny"
    a.big_variants, a.linearity_variant = ["tiny"], "tiny"
    a.batch, a.measure_batch, a.reps, a.warmup = 4, 4, 2, 0
    a.cache_images, a.budget_gib, a.batch_step = 16, 0.02, 4
    a.maxbatch_methods, a.measure_methods = ["losa"], ["losa", "full"]
    a.big_batch, a.big_configs = 4, ["losa", "full+remat"]
    a.linearity_configs = ["losa"]
  for k in _LIST_FLAGS:
    setattr(a, k, common.csv_list(",".join(getattr(a, k))))
  bad = sorted(set(a.sections) - set(SECTIONS))
  if bad:
    raise app.UsageError(f"--sections: unknown section(s) {bad}; choose from "
                         f"{list(SECTIONS)}.")
  bad = sorted(set(a.big_configs + a.linearity_configs) -
               {c[0] for c in BIG_CONFIGS})
  if bad:
    raise app.UsageError(f"--big_configs / --linearity_configs: unknown "
                         f"config(s) {bad}; choose from "
                         f"{[c[0] for c in BIG_CONFIGS]}.")
  a.argv = list(argv)
  return a




# --- driver -------------------------------------------------------------------


def _user_argv(argv: Sequence[str]) -> List[str]:
  """argv without the internal --child flag."""
  out, skip = [], False
  for x in argv:
    if skip:
      skip = False
    elif x == "--child":
      skip = True
    elif not x.startswith("--child="):
      out.append(x)
  return out


def _command(a) -> str:
  return "python -m losa_jax.bench.suite " + " ".join(_user_argv(a.argv))


def _raw_path(out, section):
  return os.path.join(out, f"raw_{section}.json")


def _run_child(a, sections: Sequence[str], xla_flags: str) -> None:
  """Runs compile-only sections in a fresh process with extra XLA_FLAGS."""
  env = common.with_xla_flags(xla_flags, dict(os.environ))
  cmd = [sys.executable, "-m", "losa_jax.bench.suite", *a.argv,
         "--child", ",".join(sections)]
  _log(f"child process for {list(sections)} with XLA_FLAGS="
       f"{xla_flags or '(none)'}")
  subprocess.run(cmd, env=env, check=True)


def _write_raw(a, section, rows):
  common.write_json(_raw_path(a.out, section), {
      "section": section, "rows": rows, "command": _command(a),
      "load_avg_end": os.getloadavg(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "finished": datetime.datetime.now().isoformat(timespec="seconds"),
      "args": {k: v for k, v in vars(a).items() if k != "argv"}})


def run(a) -> Dict[str, Any]:
  """Runs the sections of `a` (see `options`), writes --out; returns
  {section: raw payload} of every section present in --out."""
  os.makedirs(a.out, exist_ok=True)
  if a.child:
    for section in a.child:
      _write_raw(a, section, SECTION_FNS[section](a))
    return {}

  t_start = time.time()
  load_start = os.getloadavg()
  # LoSA's big-model memory under default flags too (skipped by --quick:
  # one more process start for nothing new on a tiny model).
  wanted = list(a.sections) + (
      ["big_default"] if "big" in a.sections and not a.quick else [])
  todo = [s for s in wanted
          if not (a.reuse and os.path.exists(_raw_path(a.out, s)))]
  compile_todo = [s for s in todo if s in COMPILE_SECTIONS]
  timed_todo = [s for s in todo if s in TIMED_SECTIONS]
  if a.in_process:
    for s in todo:
      _write_raw(a, s, SECTION_FNS[s](a))
  else:
    if compile_todo:
      _run_child(a, compile_todo, f"{LICM_OFF} {FAST_COMPILE}")
    if "big_default" in todo:
      _run_child(a, ["big_default"], FAST_COMPILE)
    if timed_todo and a.quick:
      # Smoke test only: fast compiles, and the caller's process stays light.
      _run_child(a, timed_todo, FAST_COMPILE)
    else:
      for s in timed_todo:
        _write_raw(a, s, SECTION_FNS[s](a))

  # Every section present in --out, also from earlier (partial) runs: each
  # raw file records the command that produced it.
  results = {}
  for s in SECTIONS + ("big_default",):
    if os.path.exists(_raw_path(a.out, s)):
      with open(_raw_path(a.out, s)) as f:
        results[s] = json.load(f)
  meta = common.provenance(_command(a), t_start=t_start,
                           load_start=load_start, quick=a.quick)
  from losa_jax.bench import report  # pylint: disable=g-import-not-at-top
  report.write_all(a.out, results, meta)
  _log(f"wrote {a.out} in {time.time() - t_start:.0f}s")
  return results


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Programmatic entry: `argv` = the flags, e.g. ["--out", d, "--quick"].

  Parses into a private FlagValues, so it neither needs nor touches the
  global absl FLAGS (tests call it in-process).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  fv = flags.FlagValues()
  define_flags(fv)
  try:
    extra = fv(["losa_jax.bench.suite"] + argv)[1:]
  except flags.Error as e:
    raise app.UsageError(f"losa_jax.bench.suite: {e}") from None
  if extra:
    raise app.UsageError(f"losa_jax.bench.suite: unexpected arguments "
                         f"{extra}; every option is a --flag (see --help).")
  return run(options(fv, argv))


def _app_main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}; every "
                         "option is a --flag (see --help).")
  run(options(flags.FLAGS, sys.argv[1:]))


if __name__ == "__main__":
  define_flags()
  app.run(_app_main)
