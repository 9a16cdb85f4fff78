# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The house rules of docs/architecture.md, checked."""
import ast
import builtins
import configparser
import importlib
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(REPO, "losa_jax")


def _library_sources():
  for root, _, files in os.walk(LIB):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        with open(path, encoding="utf-8") as fh:
          yield os.path.relpath(path, REPO), fh.read()


def test_import_contracts_hold():
  """Layers, no cycles, no TensorFlow in the core, no `configs` imports."""
  exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
  if not os.path.exists(exe):
    pytest.skip("import-linter is not installed (pip install import-linter)")
  out = subprocess.run([exe, "--no-cache"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_library_never_edits_sys_path():
  offenders = [p for p, src in _library_sources()
               if re.search(r"sys\.path\.(insert|append|extend)|"
                            r"sys\.path\s*[+]?=", src)]
  assert not offenders, offenders


def test_modules_stay_small():
  """One job per room: no library module over 600 lines (aim: 500)."""
  big = {p: src.count("\n") for p, src in _library_sources()
         if src.count("\n") > 600}
  assert not big, big


def test_functions_stay_short():
  """A function a reader holds in one view: none over 100 lines."""
  long = {}
  for path, src in _library_sources():
    for node in ast.walk(ast.parse(src)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > 100:
          long[f"{path}:{node.lineno} {node.name}"] = n
  assert not long, long


def _layers():
  cfg = configparser.ConfigParser()
  cfg.read(os.path.join(REPO, ".importlinter"))
  text = cfg["importlinter:contract:layers"]["layers"]
  return [[m.strip() for m in line.split(":")]
          for line in text.strip().splitlines()]


def test_every_folder_and_module_has_a_layer():
  """`ls losa_jax` shows the layers: each entry is placed in one."""
  placed = {m for layer in _layers() for m in layer}
  entries = {f"losa_jax.{f[:-3] if f.endswith('.py') else f}"
             for f in os.listdir(LIB)
             if (f.endswith(".py") and f != "__init__.py")
             or os.path.isfile(os.path.join(LIB, f, "__init__.py"))}
  assert entries == placed, (sorted(entries - placed), sorted(placed - entries))


def test_top_level_modules_are_thin_commands():
  """Library code lives in folders; a top-level module is a command."""
  for f in os.listdir(LIB):
    if f.endswith(".py") and f != "__init__.py":
      src = open(os.path.join(LIB, f), encoding="utf-8").read()
      assert 'if __name__ == "__main__":' in src, f
      assert re.search(r"^def main\(", src, re.M), f


# Config args that make each config's get_config cover its main branches.
_CONFIG_ARGS = {
    "default": ["", "method=full", "task=digits_parity", "population=default",
                "population=random,runlocal", "population=mixed,runlocal",
                "method=lst", "method=last"],
    "pretrain_mnist": [""],
    "video_moving_digits": ["", "method=linear", "init=/x/vivit.npz"],
    "video_kinetics400": ["", "tfds=ucf101"],
    "video_ssv2": [""],
    "vtab": ["task=cifar100", "task=dtd,protocol=tune", "task=clevr_count",
             "task=dtd,population=default", "task=svhn,population=random",
             "task=dtd,population=default,protocol=final,runlocal"],
}


@pytest.mark.parametrize("name", sorted(_CONFIG_ARGS))
def test_get_config_does_no_io(name, monkeypatch, tmp_path):
  """Config files only describe a run: nothing is read or written."""
  mod = importlib.import_module(f"configs.{name}")
  real_open = builtins.open

  def no_open(file, *a, **k):
    raise AssertionError(f"configs/{name}.py get_config opened {file!r}")

  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setattr(builtins, "open", no_open)
  monkeypatch.setattr(os, "makedirs", lambda *a, **k: no_open(a[0]))
  try:
    for arg in _CONFIG_ARGS[name]:
      mod.get_config(arg) if arg else mod.get_config()
  finally:
    monkeypatch.setattr(builtins, "open", real_open)
  assert not os.listdir(tmp_path)


def test_every_config_file_is_covered():
  names = {f[:-3] for f in os.listdir(os.path.join(REPO, "configs"))
           if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert names == set(_CONFIG_ARGS)
