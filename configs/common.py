# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Helpers shared by the config files."""
import ast


def parse_arg(arg, lazy=False, **spec):
  """'method=lora,rank=4,runlocal' -> dict with types taken from `spec`.

  A bare word sets a bool to True; the first spec entry may be given
  unnamed ('lora' == 'method=lora'). Unknown keys are refused by name.
  """
  out = dict(spec)
  if not arg:
    return out
  first = next(iter(spec)) if spec else None
  for item in (s for s in arg.split(",") if s.strip()):
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep:
      if isinstance(spec.get(key), bool):
        out[key] = True
        continue
      if first is None:
        raise ValueError(f"Config arg {item!r} has no '='.")
      key, value = first, item
    if key not in spec:
      if lazy:
        out[key] = value
        continue
      raise ValueError(f"Unknown config arg {key!r}; valid: {sorted(spec)}.")
    default = spec[key]
    if isinstance(default, bool):
      out[key] = value.strip().lower() in ("1", "true", "yes", "y")
    elif isinstance(default, (int, float)) and not isinstance(default, bool):
      out[key] = type(default)(ast.literal_eval(value.strip()))
    else:
      out[key] = value.strip()
  return out
