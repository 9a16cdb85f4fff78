# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Helpers of the benchmarks and the study: interleaved wall time, run
provenance, progress lines, XLA flags, child processes, writers. Imports no
jax (XLA_FLAGS must be set before its backend starts)."""
import csv
import datetime
import os
import platform
import sys
import time
from typing import (Any, Callable, Dict, List, Mapping, MutableMapping,
                    Optional, Sequence)

from absl import app
from absl import flags
from absl import logging
import numpy as np

from losa_jax.utils import io as io_lib

GIB = 2.0**30
MIB = 2.0**20
# XLA:CPU has no native bf16 GEMM and upcasts bf16 weights to f32; this
# pass hoists the upcast of a whole scanned [L, ...] weight stack out of the
# layer loop, a full f32 copy of the backbone that GPU/TPU never make.
LICM_OFF = "--xla_disable_hlo_passes=while-loop-invariant-code-motion"
# LLVM -O0: halves XLA:CPU compile time; the HLO passes, hence FLOPs and
# memory, are unchanged (checked on B/16). Never for timed measurements.
FAST_COMPILE = "--xla_backend_optimization_level=0"


def log(msg: str, *, tag: str = "bench") -> None:
  """Prints one progress line, `[tag HH:MM:SS] msg`, flushed."""
  print(f"[{tag} {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def csv_list(s: str) -> List[str]:
  """"a, b,,c" -> ["a", "b", "c"] (comma list flag values)."""
  return [x.strip() for x in s.split(",") if x.strip()]


def int_list(s: str) -> List[int]:
  """"1,4,8" -> [1, 4, 8]; raises ValueError naming the bad item."""
  out = []
  for x in csv_list(s):
    try:
      out.append(int(x))
    except ValueError:
      raise ValueError(f"{x!r} in {s!r} is not an integer; pass a comma "
                       "list of integers such as 1,4,8.") from None
  return out


def with_xla_flags(flags: str, env: Optional[MutableMapping[str, str]] = None
                   ) -> MutableMapping[str, str]:
  """Appends `flags` to env["XLA_FLAGS"] (os.environ by default), once;
  only effective before the backend starts or for a child. Returns env."""
  env = os.environ if env is None else env
  current = env.get("XLA_FLAGS", "")
  missing = [f for f in flags.split() if f not in current.split()]
  if missing:
    env["XLA_FLAGS"] = " ".join([current] + missing).strip()
  return env


def run_child(args: Sequence[str], out_path: str, *,
              env: Mapping[str, str], timeout: Optional[float] = None
              ) -> Dict[str, Any]:
  """Runs `python -m ARGS` in a fresh process with `env` and this checkout
  first on PYTHONPATH (XLA reads its flags once; a device's peak memory is
  never reset); returns the JSON the child wrote to `out_path`, or
  {"error": why} if it failed, wrote nothing or overran `timeout` seconds
  (it is then killed)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  env = dict(env)
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  env["PYTHONPATH"] = os.pathsep.join(
      [root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  try:
    proc = subprocess.run([sys.executable, "-m", *args], env=env,
                          timeout=timeout, check=False)
  except subprocess.TimeoutExpired:
    return {"error": f"killed after {timeout:.0f} s (time budget)"}
  if proc.returncode != 0 or not os.path.exists(out_path):
    return {"error": f"exit status {proc.returncode} (see the log above)"}
  return io_lib.read_json(out_path)


def interleaved(fns: Dict[str, Callable[[], Any]], *, reps: int, warmup: int
                ) -> Dict[str, Dict[str, Any]]:
  """Round-robin wall time of zero-argument, blocking `fns` (name -> fn):
  each of `reps` rounds runs every fn once, in rotated order, so machine
  noise hits every fn alike (ratios within one call mean something, absolute
  times across calls do not). The first (compiling) call and `warmup`
  further rounds are untimed. Returns name -> time_stats of its calls."""
  if reps < 1:
    raise ValueError(f"interleaved needs reps >= 1, got {reps}.")
  names = list(fns)
  for _ in range(1 + warmup):
    for name in names:
      fns[name]()
  times: Dict[str, List[float]] = {n: [] for n in names}
  for r in range(reps):
    k = r % len(names)
    for name in names[k:] + names[:k]:
      t0 = time.perf_counter()
      fns[name]()
      times[name].append(time.perf_counter() - t0)
  return {n: time_stats(ts) for n, ts in times.items()}


def time_stats(times: Sequence[float]) -> Dict[str, Any]:
  """{median_s, q25_s, q75_s, min_s, max_s, mean_s, reps, times_s (every
  call, in order)} of seconds per call."""
  t = np.asarray(times, np.float64)
  return {"median_s": float(np.median(t)),
          "q25_s": float(np.percentile(t, 25)),
          "q75_s": float(np.percentile(t, 75)),
          "min_s": float(t.min()), "max_s": float(t.max()),
          "mean_s": float(t.mean()), "reps": int(t.size),
          "times_s": [float(x) for x in t]}


def linear_fit(x: Sequence[float], y: Sequence[float]):
  """Least-squares (slope, intercept) of y ~ x."""
  slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
  return float(slope), float(intercept)


def machine() -> str:
  """"<cores> x <CPU model>, <OS>": what a result table's reader needs."""
  cpu = "unknown CPU"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f
                  if line.startswith("model name")), cpu)
  except OSError:
    pass
  return f"{os.cpu_count()} x {cpu}, {platform.system()}"


def provenance(command: str, *, t_start: Optional[float] = None,
               load_start: Optional[Sequence[float]] = None,
               **extra) -> Dict[str, Any]:
  """{command (that reproduces the result), date, machine, python,
  xla_flags, devices, backend, jax, jaxlib, flax, optax, load_avg_start
  (of `load_start`: how busy the machine was), load_avg_end, wall_s (since
  `t_start`), **extra}. Devices and backend only where this process imported
  jax: a parent whose jobs run in child processes must not take the device."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  out: Dict[str, Any] = {
      "command": command, "date": datetime.date.today().isoformat(),
      "machine": machine(), "python": platform.python_version(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "devices": "(none started here)", "backend": None}
  for name in ("jax", "jaxlib", "flax", "optax"):
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = "absent"
  if "jax" in sys.modules:
    jax = sys.modules["jax"]
    out.update(devices=str(jax.devices()), backend=jax.default_backend())
  if load_start is not None:
    out["load_avg_start"] = tuple(load_start)
  out["load_avg_end"] = os.getloadavg()
  if t_start is not None:
    out["wall_s"] = time.time() - t_start
  out.update(extra)
  return out


def write_csv(path: str, rows: Sequence[Mapping[str, Any]], *,
              float_format: Optional[str] = None) -> None:
  """Rows -> CSV of the union of their scalar columns (first-seen order;
  dicts, lists, tuples left out), floats in `float_format` (e.g. ".6g") or
  repr, written atomically; nothing for no rows."""
  if not rows:
    return
  keys: List[str] = []
  for r in rows:
    keys += [k for k, v in r.items()
             if k not in keys and not isinstance(v, (dict, list, tuple))]
  with io_lib.atomic_write(path, newline="") as f:
    w = csv.DictWriter(f, fieldnames=keys, extrasaction="ignore")
    w.writeheader()
    for r in rows:
      w.writerow({k: (format(v, float_format)
                      if float_format and isinstance(v, float) else v)
                  for k, v in r.items() if k in keys})


def write_json(path: str, payload: Any, *, indent: int = 1) -> None:
  """JSON (non-JSON values via str), written atomically; makes the folder."""
  io_lib.write_json(path, payload, indent=indent, default=str)


def write_section(a, name: str, rows, meta: Mapping[str, Any]) -> None:
  """a.out/NAME.json: section NAME's rows, its options `a` and `meta`."""
  write_json(os.path.join(a.out, f"{name}.json"), {
      "section": name, "rows": rows, "options": vars(a), "meta": meta})


def parse_private_flags(prog: str, define_flags: Callable, argv=None):
  """(a fresh FlagValues that `define_flags(fv)` fills, parsed from argv
  (default: sys.argv[1:]), argv): programmatic entries (tests call them
  in-process) neither need nor touch the global absl FLAGS."""
  argv = list(sys.argv[1:] if argv is None else argv)
  fv = flags.FlagValues()
  define_flags(fv)
  _no_positional(fv([prog] + argv))
  return fv, argv


def start_flags_only_main(argv: Sequence[str]) -> None:
  """The first lines of an `app.run` main whose settings are all --flags:
  refuses positional arguments (argv[1:]), and unless --verbosity was given
  keeps the terminal to progress lines (Orbax, porting and optim log at
  INFO)."""
  _no_positional(argv)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def absl_main(run_flags: Callable) -> Callable:
  """The `app.run` main of a CLI whose work is `run_flags(FLAGS, argv)`."""

  def main(argv) -> None:
    _no_positional(argv)
    run_flags(flags.FLAGS, sys.argv[1:])

  return main


def _no_positional(argv: Sequence[str]) -> None:
  """Refuses argv[1:] (argv[0] is the program)."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {list(argv[1:])}; every "
                         "option is a --flag (see --help).")
