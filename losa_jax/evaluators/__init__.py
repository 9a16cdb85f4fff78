# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Evaluators by name: `config.evals.<name> = dict(type=..., data=..., ...)`.

Each type ("classification", the default; "video_multiview") names a module
with an `Evaluator` whose `run(params)` returns a dict of floats, and a
`from_built(built, **entry)` constructor (docs/architecture.md).
"""
import importlib

from losa_jax.config import input_check

_MODULES = {
    "classification": "losa_jax.evaluators.classification",
    "video_multiview": "losa_jax.evaluators.video",
}
DEFAULT = "classification"


def register(name: str, module: str):
  """Makes `config.evals.X.type = name` resolve to `module.Evaluator`."""
  if name in _MODULES and _MODULES[name] != module:
    raise ValueError(f"Evaluator {name!r} is already registered to "
                     f"{_MODULES[name]}; pick another name.")
  _MODULES[name] = module


def get(name: str):
  """The module of a registered evaluator type (its `Evaluator` class and
  `from_built(built, **config_entry)` constructor)."""
  if name not in _MODULES:
    raise ValueError(f"Unknown evaluator type {name!r}; registered: "
                     f"{sorted(_MODULES)}.")
  return importlib.import_module(_MODULES[name])


def from_config(built, config):
  """{name: (every, evaluator)} for `config.evals`; every=0: final only.

  Each entry's pp defaults to config.input.pp and its batch size to
  config.input.batch_size; `type` picks the evaluator (DEFAULT if unset).
  """
  out = {}
  for name, ev in (config.get("evals") or {}).items():
    ev = dict(ev)
    every = ev.pop("every", config.get("eval_every", 0))
    kind = ev.pop("type", DEFAULT)
    ev.setdefault("pp", config.input.pp)
    ev.setdefault("batch_size", config.input.batch_size)
    ev["data"] = dict(ev["data"])
    try:
      evaluator = get(kind).from_built(built, **ev)
    except TypeError as e:
      raise ValueError(f"config.evals.{name}: {e}") from None
    # Fail before training, by name, if this split does not fit the model.
    input_check.check_batch(next(iter(evaluator.batches)), config,
                           where=f"config.evals.{name}",
                           multiview=kind == "video_multiview")
    out[name] = (every, evaluator)
  return out
