# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Compiled FLOPs and memory from XLA, for guards and benchmarks.

`cost_analysis()` / `memory_analysis()` of a compiled executable are
deterministic for a given jax/XLA version and backend, so tests may assert
their ratios (never wall time).
"""
from typing import Any, Dict

import jax


def cost_of_compiled(compiled) -> Dict[str, float]:
  """FLOPs and memory of an executable that is already compiled.

  For callers that keep the executable (e.g. to train with it): reading the
  numbers from it saves a second compile.

  Args:
    compiled: a `jax.stages.Compiled` (`jitted.lower(...).compile()`).

  Returns:
    flops, bytes_accessed (XLA's estimate of memory traffic), temp_bytes (XLA
    temporaries: activations kept for backward, workspace), argument_bytes,
    output_bytes, alias_bytes, generated_code_bytes, and
    peak_bytes = argument + output + temp - alias (an upper bound of what the
    executable holds at once).
  """
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older jax returned one dict per device
    ca = ca[0]
  ca = ca or {}
  mem = compiled.memory_analysis()
  out = {"flops": float(ca.get("flops", 0.0)),
         "bytes_accessed": float(ca.get("bytes accessed", 0.0))}
  for name in ("temp", "argument", "output", "alias", "generated_code"):
    out[f"{name}_bytes"] = float(getattr(mem, f"{name}_size_in_bytes", 0))
  out["peak_bytes"] = (out["argument_bytes"] + out["output_bytes"] +
                       out["temp_bytes"] - out["alias_bytes"])
  return out


def compiled_cost(jitted, *abstract_args) -> Dict[str, float]:
  """Lowers and compiles `jitted` on abstract args; nothing is materialised.

  Returns the fields of `cost_of_compiled`.
  """
  return cost_of_compiled(jitted.lower(*abstract_args).compile())


def abstract(tree) -> Any:
  """Arrays -> ShapeDtypeStructs (shardings kept)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      tree)
