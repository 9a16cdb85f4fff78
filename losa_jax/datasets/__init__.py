# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Datasets by name: `config.input.data = dict(name=..., split=..., **kw)`.

`get_source(data)` resolves `data["name"]` through `_MODULES` below, as
big_vision's `datasets.core.get` does; any other name is a TFDS name read
by `datasets.tfds`. What a dataset module defines (`make`, `PP_MODULES`,
`pp_spec`) and how to add one: docs/architecture.md, "A dataset". The
older config forms in `_LEGACY` keep working.
"""
import importlib
from typing import Any, Callable, Dict, Mapping, Tuple

from losa_jax.datasets import core
from losa_jax import pp as pp_lib

Source = core.Source
DataNotFoundError = core.DataNotFoundError
BadDataError = core.BadDataError
parse_split = core.parse_split

# name -> module (imported on first use, so TFDS or sklearn load only when a
# config asks for them).
_MODULES: Dict[str, str] = {
    "arrays": "losa_jax.datasets.arrays",    # in-memory numpy arrays
    "demo": "losa_jax.datasets.digits",      # the shipped digit tasks
    "folder": "losa_jax.datasets.folder",    # root/<split>/<class>/*.png
    "frames": "losa_jax.datasets.frames",    # root/<split>/<class>/<id>/*.png
    "moving_digits": "losa_jax.datasets.moving_digits",  # the video demo
    "study": "losa_jax.datasets.study_tasks",  # the study's offline tasks
    "tfds": "losa_jax.datasets.tfds",        # TFDS, dataset=<tfds name>
    "vtab": "losa_jax.datasets.vtab",        # a VTAB-1k task on TFDS
}
# Old config forms: key -> (registered name, the kwarg its value becomes).
_LEGACY = {"demo": ("demo", "task"), "vtab": ("vtab", "task"),
           "root": ("folder", "root"), "frames_root": ("frames", "root"),
           "video_demo": ("moving_digits", "task")}


def register(name: str, module: str):
  """Makes `dict(name=name, ...)` resolve to `module.make(...)`."""
  if name in _MODULES and _MODULES[name] != module:
    raise ValueError(f"Dataset name {name!r} is already registered to "
                     f"{_MODULES[name]}; pick another name.")
  _MODULES[name] = module


def registered() -> Tuple[str, ...]:
  return tuple(sorted(_MODULES))


def canonical(data: Mapping[str, Any]) -> Tuple[str, Dict[str, Any]]:
  """(registered name, kwargs for its `make`) of a config data dict."""
  data = dict(data)
  for key, (name, arg) in _LEGACY.items():
    if key in data and "name" not in data:
      data[arg] = data.pop(key)
      data["name"] = name
  if "name" not in data:
    raise ValueError(
        f"Cannot tell which dataset {data} is: give name=... (one of "
        f"{list(registered())}, or a TFDS name such as 'cifar100').")
  name = data.pop("name")
  if not isinstance(name, str) or not name:
    raise ValueError(f"config data name={name!r}: expected a dataset name, "
                     f"one of {list(registered())} or a TFDS name.")
  if name not in _MODULES:   # big_vision's rule: other names are TFDS names.
    data["dataset"] = name
    name = "tfds"
  return name, data


def module_of(data: Mapping[str, Any]):
  """The dataset module a config data dict resolves to (pp ops imported)."""
  name, _ = canonical(data)
  mod = importlib.import_module(_MODULES[name])
  for family in getattr(mod, "PP_MODULES", ()):
    pp_lib.import_ops(family)
  return mod


def get_source(data: Mapping[str, Any]) -> core.Source:
  """config data dict -> Source, e.g. of dict(name="demo", task="digits",
  split="train[:800]") or dict(name="cifar100", split="test")."""
  name, kw = canonical(data)
  mod = module_of(data)
  try:
    return mod.make(**kw)
  except TypeError as e:
    raise TypeError(f"Dataset {name!r} ({_MODULES[name]}): bad arguments "
                    f"{sorted(kw)}: {e}") from None


def pp_for(data: Mapping[str, Any], pp):
  """The pp spec to apply to `data`'s examples (the dataset may wrap it)."""
  mod = module_of(data)
  fn: Callable = getattr(mod, "pp_spec", None)
  if fn is None:
    return pp
  _, kw = canonical(data)
  return fn(kw, pp)


def training_source(config) -> Tuple[core.Source, Any]:
  """(source, pp) of config.input.data, after importing config.pp_modules."""
  for module in config.get("pp_modules") or ():
    pp_lib.import_ops(module)
  data = dict(config.input.data)
  return get_source(data), pp_for(data, config.input.pp)
