# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Compiled FLOPs and memory from XLA, for guards and benchmarks.

`cost_analysis()` / `memory_analysis()` of a compiled executable are
deterministic for a given jax/XLA version and backend, so tests may assert
their ratios (never wall time).
"""
import collections
import re
from typing import Any, Dict, List

import jax


def cost_of_compiled(compiled) -> Dict[str, float]:
  """FLOPs and memory of a `jax.stages.Compiled` (no second compile).

  Returns flops, bytes_accessed (XLA's estimate of memory traffic),
  temp_bytes (activations kept for backward, workspace), argument_bytes,
  output_bytes, alias_bytes, generated_code_bytes, and peak_bytes =
  argument + output + temp - alias (an upper bound of what it holds at once).
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
  """`cost_of_compiled` of `jitted` compiled on abstract args."""
  return cost_of_compiled(jitted.lower(*abstract_args).compile())


def abstract(tree, shardings=None) -> Any:
  """Arrays (or shapes) -> ShapeDtypeStructs in `shardings` (a tree like
  `tree`, e.g. a built state's state_sharding), else in their own."""
  if shardings is None:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
  return jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=sh), tree, shardings)


# --- memory traffic, loops counted ------------------------------------------

_DTYPE_BYTES = dict(pred=1, s8=1, u8=1, s16=2, u16=2, f16=2, bf16=2, s32=4,
                    u32=4, f32=4, s64=8, u64=8, f64=8, c64=8, c128=16)
_SHAPE = re.compile(r"\b(pred|[su](?:8|16|32|64)|bf16|f16|f32|f64|c64|c128)"
                    r"\[([\d,]*)\]")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
_FREE = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast",
         "after-all", "partition-id", "replica-id")


def _shape_bytes(shape: str) -> int:
  total = 0
  for dtype, dims in _SHAPE.findall(shape):
    n = 1
    for d in filter(None, dims.split(",")):
      n *= int(d)
    total += _DTYPE_BYTES[dtype] * n
  return total


def _computations(hlo_text: str):
  comps, current, entry = {}, None, None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line)
    if m:
      current = m.group(2)
      comps[current] = []
      entry = current if m.group(1) else entry
    elif line.startswith("}"):
      current = None
    elif current is not None:
      mi = _INSTRUCTION.match(line)
      if mi:
        comps[current].append(dict(zip(("name", "shape", "op", "rest"),
                                       mi.groups())))
  return comps, entry


def _operands(rest: str):
  return re.findall(r"%([\w.\-]+)", rest.split("),")[0].split("calls=")[0])


def _params(body) -> Dict[int, str]:
  """A fused computation's parameters: {operand index: name}."""
  return {int(re.match(r"(\d+)", x["rest"]).group(1)): x["name"]
          for x in body if x["op"] == "parameter"}


def _fusion_reads(body, operand_bytes):
  """Bytes a fusion reads of each operand: a parameter that is only sliced
  inside the fusion (a scan reading one layer of a stack) costs the slices."""
  params = _params(body)
  reads = list(operand_bytes)
  for k, pname in params.items():
    pat = re.compile(r"%" + re.escape(pname) + r"\b")
    users = [x for x in body if pat.search(x["rest"].split("),")[0])]
    if users and k < len(reads) and all(
        u["op"] in ("dynamic-slice", "slice") and
        re.match(r"\s*%" + re.escape(pname) + r"\b", u["rest"])
        for u in users):
      reads[k] = sum(_shape_bytes(u["shape"]) for u in users)
  return reads


def _in_place_update(body, reads, written):
  """(written, reads) of a fusion whose root is a dynamic-update-slice.

  Where the updated buffer is an operand of the fusion (a scan writing one
  layer of a stack), XLA updates it in place: the buffer is neither read nor
  rewritten, and only the update (its shape in the fused body) is written.
  The other operands (what the update is computed from, the indices) are
  read as usual. A buffer made inside the fusion is written whole.
  """
  by_name = {x["name"]: x for x in body}
  buffer, update = _operands(body[-1]["rest"])[:2]
  while by_name[buffer]["op"] == "bitcast":
    buffer = _operands(by_name[buffer]["rest"])[0]
  index = {name: k for k, name in _params(body).items()}.get(buffer)
  if index is None:
    return written, reads
  return (_shape_bytes(by_name[update]["shape"]),
          [r for k, r in enumerate(reads) if k != index])


def hlo_traffic(compiled) -> List[Dict[str, Any]]:
  """Memory traffic of every top-level op, loop trip counts included.

  XLA's `cost_analysis()["bytes accessed"]` counts a while loop's body once,
  so a scanned model's traffic is undercounted by about its depth. This
  walks the optimised HLO (of a `jax.stages.Compiled`, or its `as_text()`)
  from the entry, multiplies each loop body by its known trip count and
  charges each op its output bytes plus its operands' (slices only, where a
  fusion only slices an operand; the update only, for in-place
  dynamic-update-slices): a static estimate, caches ignored.

  Returns one dict per op: op ("fusion:<root op>" for fusions), name (the
  op_name metadata: the jax source path), shape (output), trips (runs per
  call), bytes (per call, trips included).
  """
  text = compiled if isinstance(compiled, str) else compiled.as_text()
  comps, entry = _computations(text)
  rows = []

  def walk(name, trips):
    sizes = {i["name"]: _shape_bytes(i["shape"]) for i in comps[name]}
    for ins in comps[name]:
      op, rest = ins["op"], ins["rest"]
      if op == "while":
        body = re.search(r"body=%([\w.\-]+)", rest).group(1)
        n = re.search(r'"known_trip_count":\{"n":"(\d+)"', rest)
        walk(body, trips * (int(n.group(1)) if n else 1))
        continue
      if op in ("call", "conditional"):
        for sub in re.findall(r"(?:to_apply|branch_computations)=\{?%"
                              r"([\w.\-]+)", rest):
          walk(sub, trips)
        continue
      if op in _FREE:
        continue
      reads = [sizes.get(o, 0) for o in _operands(rest)]
      written = _shape_bytes(ins["shape"])
      kind = op
      if op == "fusion":
        body = comps.get(re.search(r"calls=%([\w.\-]+)", rest).group(1), [])
        root = body[-1]["op"] if body else ""
        kind = f"fusion:{root}"
        reads = _fusion_reads(body, reads)
        if root == "dynamic-update-slice":
          written, reads = _in_place_update(body, reads, written)
      elif op == "dynamic-update-slice":
        written, reads = (reads[1], reads[1:]) if len(reads) > 1 else (
            written, reads)
      elif op == "dynamic-slice":
        reads = [written]
      meta = re.search(r'op_name="([^"]*)"', rest)
      rows.append(dict(op=kind, name=meta.group(1) if meta else ins["name"],
                       shape=ins["shape"], trips=trips,
                       bytes=float((written + sum(reads)) * trips)))

  walk(entry, 1)
  return rows


def traffic_by(rows, key) -> Dict[str, float]:
  """Sums `hlo_traffic` rows' bytes by key(row) (e.g. a phase or module)."""
  out = collections.defaultdict(float)
  for r in rows:
    out[key(r)] += r["bytes"]
  return dict(out)


def phase(row) -> str:
  """"forward", "replay" (remat recomputation), "backward" or "other", from
  the jax source path of an `hlo_traffic` row."""
  name = row["name"]
  if "rematted_computation" in name:
    return "replay"
  if "transpose(jvp" in name:
    return "backward"
  return "forward" if "jvp(" in name else "other"
