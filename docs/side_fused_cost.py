# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""docs/side_fused.md, "Hand-written backward against autodiff": compiled
cost of the cached ViT-B/16 LoSA step with `side_scan`'s hand-written
backward and with autodiff of the folded forward inside the same custom VJP.
Compile only. Run: PYTHONPATH=tests .venv/bin/python docs/side_fused_cost.py
"""
import jax, jax.numpy as jnp
from jax import lax
from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.utils import cost
from losa_jax.feature_cache import training as cache_training
from losa_jax.models import side_fused as sf

def autodiff_fwd(params, taps, layer_axis, dtype):   # keeps z_i only
  a, (params, zs, _, taps_dtype) = sf._scan_fwd(params, taps, layer_axis, dtype)
  return a, (params, zs, None, taps_dtype)

def autodiff_bwd(layer_axis, dtype, saved, da):      # autodiff of _forward
  params, zs, _, taps_dtype = saved
  axis = layer_axis if sf._in_place(taps_dtype.dtype, dtype) else 0
  def body(da, i):
    _, vjp = jax.vjp(lambda p, z: sf._forward(p, z)[0],
                     sf._layer(params, i), sf._read(zs, i, axis))
    dp, dz = vjp(da)
    return da + dz, dp._replace(bu2=jnp.zeros_like(dp.bu2))
  _, dparams = lax.scan(body, da.astype(jnp.float32),
                        jnp.arange(zs.shape[axis]), reverse=True)
  shape = list(zs.shape)
  shape.insert(layer_axis, shape.pop(axis))
  return dparams, jnp.zeros(shape, taps_dtype.dtype)

config = tiny_config(image_size=224, num_classes=100, losa=dict(rank=8),
                     backbone=dict(width=768, depth=12, mlp_dim=3072,
                                   num_heads=12, patch_size=(16, 16)))
feats = {"image": {"taps": jax.ShapeDtypeStruct((32, 12, 197, 768),
                                                jnp.bfloat16)},
         "label": jax.ShapeDtypeStruct((32,), jnp.int32)}
for name, vjp in (("hand", (sf._scan_fwd, sf._scan_bwd)),
                  ("autodiff", (autodiff_fwd, autodiff_bwd))):
  sf.side_scan.defvjp(*vjp)
  b = build.build(config, total_steps=10)
  compiled = cache_training.train_step(config, b).lower(
      b.state_shape, feats).compile()
  c = cost.cost_of_compiled(compiled)
  t = cost.traffic_by(cost.hlo_traffic(compiled), cost.phase)
  print(name, {k: round(c[k] / 2**20, 1) for k in
               ("temp_bytes", "peak_bytes", "bytes_accessed")},
        {k: round(v / 2**20) for k, v in t.items()}, round(c["flops"] / 1e9, 2))
