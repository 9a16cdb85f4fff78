# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""A training workdir's config, as `<workdir>/config.json`.

The trainer writes it so that a finished workdir can be served (serving,
predict --workdirs, export) without the config file and args it was trained
with. The checkpoint's metadata still fingerprints the config: a
config.json edited by hand is refused at restore like a changed `--config`.
"""
import json
import os
from typing import Any, List, Optional, Sequence

import ml_collections

from losa_jax.utils import io as io_lib

CONFIG_FILE = "config.json"


def config_file(workdir: str) -> str:
  return os.path.join(workdir, CONFIG_FILE)


def write_config(workdir: str, config) -> str:
  """Writes `config` (a ConfigDict) to `<workdir>/config.json`, atomically.

  Returns the path. A resume overwrites it with the resuming run's config
  (which the checkpoint metadata has accepted as compatible).
  """
  path = config_file(workdir)
  try:
    text = config.to_json(indent=1, sort_keys=True)
  except (TypeError, ValueError):
    # A value JSON cannot hold (a callable, a dtype object): kept as its
    # repr, which the reader cannot turn back into the object; such a
    # workdir is served by passing its config explicitly.
    text = config.to_json_best_effort(indent=1, sort_keys=True)
  io_lib.write_text(path, text + "\n")
  return path


def _tuples(x: Any) -> Any:
  """JSON lists -> tuples (configs write tuples: patch_size, mesh, ...)."""
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  return x


# What each caller can pass instead of a missing or damaged config.json.
ADVICE = ("Pass the config the workdir was trained with (predict --workdir: "
          "--config FILE; predict --workdirs and export: --configs FILE, one "
          "per workdir; Python: configs=[...]), or check the path.")


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config the trainer stored in `workdir`.

  Raises:
    FileNotFoundError: no `<workdir>/config.json`, naming the path, saying
      whether the workdir itself exists, and what to pass instead (ADVICE).
    ValueError: a config.json that is not a JSON object (cut short, edited),
      naming the path and the parse error.
  """
  path = config_file(workdir)
  if not os.path.exists(path):
    where = (f"there is no folder {workdir}" if not os.path.isdir(workdir)
             else f"{workdir} exists but holds no {CONFIG_FILE}")
    raise FileNotFoundError(f"No {path}: {where}. {ADVICE}")
  with open(path) as f:
    text = f.read()
  try:
    data = json.loads(text)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON ({e}; {len(text)} bytes, cut "
                     f"short or edited?). {ADVICE}") from None
  if not isinstance(data, dict):
    raise ValueError(f"{path} holds a JSON {type(data).__name__}, not the "
                     f"config object the trainer writes. {ADVICE}")
  return ml_collections.ConfigDict(_tuples(data))


def config_specs(workdirs: Sequence[str], specs: Optional[Sequence[str]]
                 ) -> Optional[List[Optional[str]]]:
  """--configs (a config file per workdir, "" for its config.json) ->
  `multitask.load`'s `configs` (None: every workdir's config.json)."""
  if not specs:
    return None
  if len(specs) != len(workdirs):
    raise ValueError(f"{len(specs)} --configs {list(specs)} for "
                     f"{len(workdirs)} workdirs {list(workdirs)}: give one "
                     "per workdir, in order ('' reads that workdir's "
                     f"{CONFIG_FILE}).")
  return [s or None for s in specs]
