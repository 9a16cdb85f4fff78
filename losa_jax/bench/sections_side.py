# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The `side` section of `python -m losa_jax.bench`: what the side network moves.

Per variant at a.batch, three implementations of the same side network
(`IMPLEMENTATIONS`: autodiff with per-layer remat and f32 stores; the fused
backward of models/side_fused.py with f32 stores; the default, fused with
bf16 stores): compiled memory traffic of the uncached and the cached train
step (`cost.hlo_traffic`, loop trips counted), by phase and in full f32
[B, N, D] passes per side layer, and one interleaved timing of the forward
and every step. docs/benchmarks.md ("The side network moves fewer bytes")
has the figures and what each column means.
"""
from typing import Any, Dict, List

import jax
import jax.numpy as jnp

from losa_jax import feature_cache as fc
from losa_jax.assembly import build
from losa_jax.assembly import steps
from losa_jax.bench import common
from losa_jax.bench.configs import make_config
from losa_jax.bench import harness
from losa_jax.bench.harness import Stepper
from losa_jax.bench.sections_measured import built_for
from losa_jax.bench.sections_measured import cached_batch
from losa_jax.bench.sections_measured import cached_step_for
from losa_jax.bench.sections_measured import timed_inputs
from losa_jax.models import side_fused as sf
from losa_jax.utils import cost

_log = common.log
IMPLEMENTATIONS = {"autodiff": dict(fused=False, dtype="float32"),
                   "fused f32": dict(dtype="float32"), "fused": {}}


def _traffic(compiled, full_bytes: float, layers: int) -> Dict[str, float]:
  rows = cost.hlo_traffic(compiled)
  total = sum(r["bytes"] for r in rows)
  rows = [r for r in rows if "/side/" in r["name"]]
  by_phase = cost.traffic_by(rows, cost.phase)
  side = sum(r["bytes"] for r in rows)
  c = cost.cost_of_compiled(compiled)
  out = {"traffic_gb": total / 1e9,
         "side_gb": side / 1e9,
         "side_passes_per_layer": side / full_bytes / layers,
         "xla_bytes_accessed_gb": c["bytes_accessed"] / 1e9,
         "temp_bytes": c["temp_bytes"], "peak_bytes": c["peak_bytes"]}
  for p in ("forward", "replay", "backward"):   # of the side network
    out[f"{p}_passes_per_layer"] = by_phase.get(p, 0.0) / full_bytes / layers
  return out


def section_side(a) -> List[Dict[str, Any]]:
  """Compiled traffic and interleaved step times of the three side-network
  implementations (module docstring), per a.variants."""
  rows = []
  for variant in a.variants:
    bsz = a.batch
    # Inputs and the frozen forward, shared by the three implementations
    # (their backbones are the same params: init differs only in side/).
    config = make_config(variant, "losa")
    s = config.image_size
    kw = built_for(config).model.backbone_kwargs()
    layers = kw["depth"]
    full = float(bsz * ((s // kw["patch_size"][0]) ** 2 + 1) * kw["width"]
                 * 4)                                   # one f32 [B, N, D]
    batch, _, cached_batch, forward = timed_inputs(config, bsz)
    fns = {"forward": forward}
    info = {}
    for impl, losa in IMPLEMENTATIONS.items():
      config = make_config(variant, "losa")
      config.model.losa.update(losa)
      b = built_for(config)
      # Compiled once: analysed, then timed.
      uncached = b.train_step.lower(
          b.state_shape, steps.abstract_batch(bsz, b.image_shape)).compile()
      cached = cached_step_for(config, b).lower(
          b.state_shape, jax.tree.map(
              lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
              cached_batch)).compile()
      info[impl] = _traffic(uncached, full, layers)
      info[f"{impl}, cached"] = _traffic(cached, full, layers)
      fns[impl] = Stepper(uncached, harness.random_state(b), batch)
      fns[f"{impl}, cached"] = Stepper(cached, harness.random_state(b),
                                       cached_batch)
    _log(f"side {variant}: timing {list(fns)}")
    times = common.interleaved(fns, reps=a.reps, warmup=a.warmup)
    fwd_med = times["forward"]["median_s"]
    for name, t in times.items():
      impl = name.split(", ")[0]
      row = {"variant": variant, "step": name, "batch": bsz,
             "median_s": t["median_s"], "min_s": t["min_s"],
             "max_s": t["max_s"], "reps": t["reps"],
             "vs_forward": t["median_s"] / fwd_med, **info.get(name, {})}
      if name.endswith(", cached"):
        row["cached_vs_uncached"] = (t["median_s"] /
                                     times[impl]["median_s"])
      rows.append(row)
      _log(f"  {name}: {t['median_s']:.3f} s ({row['vs_forward']:.2f}x "
           f"forward)" + (f", side {row['side_passes_per_layer']:.1f} "
                          f"passes/layer" if name in info else ""))
  return rows


def _autodiff_vjp():
  """`side_scan`'s custom VJP with autodiff of `_forward` as its backward:
  the forward keeps only z_i, the backward replays each layer's folded
  forward under `jax.vjp`. The alternative docs/side_fused.md weighs."""

  def fwd(params, taps, layer_axis, dtype):
    a, (params, zs, _, taps_dtype) = sf._scan_fwd(params, taps, layer_axis,
                                                  dtype)
    return a, (params, zs, None, taps_dtype)

  def bwd(layer_axis, dtype, saved, da):
    params, zs, _, taps_dtype = saved
    axis = layer_axis if sf._in_place(taps_dtype.dtype, dtype) else 0

    def body(da, i):
      _, vjp = jax.vjp(lambda p, z: sf._forward(p, z)[0],
                       sf._layer(params, i), sf._read(zs, i, axis))
      dp, dz = vjp(da)
      # The token MLP's up bias is a null direction: exactly 0, as by hand.
      return da + dz, dp._replace(bu2=jnp.zeros_like(dp.bu2))

    _, dparams = jax.lax.scan(body, da.astype(jnp.float32),
                              jnp.arange(zs.shape[axis]), reverse=True)
    shape = list(zs.shape)
    shape.insert(layer_axis, shape.pop(axis))
    return dparams, jnp.zeros(shape, taps_dtype.dtype)

  return fwd, bwd


def section_side_backward(a) -> List[Dict[str, Any]]:
  """Compiled cost of the cached LoSA step with side_scan's hand-written
  backward and with autodiff of the folded forward in the same custom VJP,
  per a.variants at a.batch (bf16 taps; compile only)."""
  rows = []
  for variant in a.variants:
    config = make_config(variant, "losa")
    b = built_for(config)
    # The feature cache's batch (bf16 taps), shapes only.
    feats = jax.eval_shape(
        lambda bb, x: cached_batch(b, bb, x),
        build.backbone_forward(config)[1],
        steps.abstract_batch(a.batch, b.image_shape))
    for name, vjp in (("hand-written", (sf._scan_fwd, sf._scan_bwd)),
                      ("autodiff", _autodiff_vjp())):
      sf.side_scan.defvjp(*vjp)
      try:
        compiled = fc.train_step(config, b).lower(b.state_shape,
                                                  feats).compile()
      finally:
        sf.side_scan.defvjp(sf._scan_fwd, sf._scan_bwd)
      c = cost.cost_of_compiled(compiled)
      phases = cost.traffic_by(cost.hlo_traffic(compiled), cost.phase)
      rows.append({"variant": variant, "batch": a.batch, "backward": name,
                   "temp_bytes": c["temp_bytes"], "peak_bytes": c["peak_bytes"],
                   "bytes_accessed": c["bytes_accessed"], "flops": c["flops"],
                   **{f"{p}_traffic_bytes": v for p, v in phases.items()}})
      _log(f"side_backward {variant} {name}: peak "
           f"{c['peak_bytes'] / 2**20:.1f} MiB, backward traffic "
           f"{phases.get('backward', 0) / 2**20:.0f} MiB")
  return rows
