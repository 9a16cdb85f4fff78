# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""The one benchmark command line.

  python -m losa_jax.bench list                  # every section, one line each
  python -m losa_jax.bench SECTION --help        # its options and defaults
  python -m losa_jax.bench SECTION [--option value ...] [--out DIR] [--quick]

Runs one section of losa_jax.bench.registry, writes its rows and their
provenance to DIR/SECTION.json and prints them, one JSON object a line. A
section that needs XLA flags this process lacks runs in a child process
with them (XLA reads its flags once, when the backend starts); --in_process
runs it here regardless. scripts/bench_report.py makes the reports.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

from losa_jax.bench import common
from losa_jax.bench import registry

PROG = "python -m losa_jax.bench"
_CHILD = "LOSA_BENCH_CHILD"


class UsageError(ValueError):
  """A bad command line; the message names the bad value."""


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise UsageError(f"{self.prog}: {message}")


def listing() -> str:
  """One line per section: its name and what it measures."""
  width = max(map(len, registry.SECTIONS))
  return "\n".join(f"{s.name:{width}s} {s.doc}"
                   for s in registry.SECTIONS.values())


def _parser(name: str) -> argparse.ArgumentParser:
  s = registry.section(name)
  p = _Parser(prog=f"{PROG} {name}", description=s.doc, allow_abbrev=False)
  shown = lambda v: ",".join(map(str, v)) if isinstance(v, list) else v
  for key, default in s.defaults.items():
    choices = registry.CHOICES.get(key)
    p.add_argument(f"--{key}", metavar=s.kind(key).upper(), help=(
        registry.OPTIONS[key] + (f" From {list(choices)}." if choices else "")
        + f" Default: {shown(default)!r}; --quick: "
        f"{shown(s.quick.get(key, default))!r}."))
  p.add_argument("--out", help="Folder for SECTION.json (made if missing).")
  p.add_argument("--quick", action="store_true", help="A tiny ViT: a smoke "
                 "test of the section; its numbers mean nothing.")
  p.add_argument("--in_process", action="store_true", help="Run here, under "
                 "this process's XLA_FLAGS (no child process).")
  return p


def parse(argv: Sequence[str]):
  """argv (after the program) -> (section name, parsed options, flags)."""
  if not argv or argv[0].startswith("-"):
    raise UsageError(f"usage: {PROG} SECTION [--option value ...]; sections:"
                     f"\n{listing()}")
  name = argv[0]
  if name not in registry.SECTIONS:
    raise UsageError(f"unknown section {name!r}; choose from "
                     f"{list(registry.SECTIONS)} (`{PROG} list`).")
  ns = _parser(name).parse_args(list(argv[1:]))
  given = {k: v for k, v in vars(ns).items()
           if v is not None and k in registry.SECTIONS[name].defaults}
  try:
    parsed = {k: registry.parse_value(k, v, registry.SECTIONS[name].kind(k))
              for k, v in given.items()}
  except ValueError as e:
    raise UsageError(f"{name}: {e}") from None
  return name, parsed, ns


def _user_argv(argv: Sequence[str]) -> List[str]:
  return [x for x in argv if x != "--in_process"]


def _child(name: str, argv: Sequence[str], flags: str, out: str
           ) -> List[Dict[str, Any]]:
  """Runs the section in a fresh process with `flags` added to XLA_FLAGS."""
  env = common.with_xla_flags(flags, dict(os.environ))
  env[_CHILD] = "1"   # the parent prints the rows
  args = _user_argv(argv[1:])
  if "--out" not in args and not any(a.startswith("--out=") for a in args):
    args += ["--out", out]
  common.log(f"{name}: child process with XLA_FLAGS={env['XLA_FLAGS']}")
  got = common.run_child(["losa_jax.bench", name, *args, "--in_process"],
                         os.path.join(out, f"{name}.json"), env=env)
  if "error" in got:
    raise RuntimeError(f"section {name}: its child process failed, "
                       f"{got['error']}.")
  return got["rows"]


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
  """Programmatic entry: argv = [SECTION, --option, value, ...]; returns the
  section's rows. Raises UsageError for a bad command line."""
  argv = list(sys.argv[1:] if argv is None else argv)
  name, given, ns = parse(argv)
  a = registry.options(name, given, quick=ns.quick, out=ns.out)
  flags = registry.section(name).flags_for(a)
  current = os.environ.get("XLA_FLAGS", "").split()
  missing = [f for f in flags.split() if f not in current]
  if missing and not ns.in_process:
    with tempfile.TemporaryDirectory(prefix="losa_bench_") as tmp:
      return _child(name, argv, flags, ns.out or tmp)
  if missing and "jax" in sys.modules:
    common.log(f"{name}: jax is imported already; XLA_FLAGS {missing} only "
               "apply if its backend has not started.")
  common.with_xla_flags(flags)
  t0, load0 = time.time(), os.getloadavg()
  rows = registry.section(name).function()(a)
  if ns.out:
    common.write_section(a, name, rows, common.provenance(
        " ".join([PROG, *_user_argv(argv)]), t_start=t0, load_start=load0,
        quick=ns.quick))
    common.log(f"{name}: {len(rows)} rows -> {ns.out}/{name}.json")
  return rows


def _cli() -> int:
  argv = sys.argv[1:]
  if argv in (["list"], ["--help"], ["-h"], []):
    print(__doc__.strip() + "\n\nSections:\n" + listing())
    return 0
  try:
    rows = main(argv)
  except UsageError as e:
    print(f"{PROG}: {e}", file=sys.stderr)
    return 2
  if os.environ.get(_CHILD) != "1":
    for r in rows:
      print(json.dumps(r, default=str))
  return 0


if __name__ == "__main__":
  sys.exit(_cli())
