# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The default LoSA mixer with a hand-written backward pass.

Same params and same function as `side.Mixer` in its default structure
(one channel-token pair, pre-LayerNorms, token mixing over all tokens,
images; `mixer` float32, `side_scan` float32 or bf16 storage):

    y1 = LN1(z);  c = U1 gelu(D1 y1)                 (channel, over D)
    u = z + c;    y2 = LN2(u);  t = (U2 gelu(D2 y2^T))^T   (token, over N)
    delta = c + t

Autodiff of that, rematerialised per layer, runs the forward twice and
builds its backward from many small ops that XLA:CPU does not fuse: 99
full [B, N, D] float32 reads or writes per layer for a cached ViT-B/16 step
(counted with `losa_jax.cost.hlo_traffic`; 69 here). The closed-form
backward below reads z once more, recomputes c and the LayerNorm outputs
from the saved low-rank activations, computes each LayerNorm's two row sums
in one variadic reduce, writes token mixing as batched GEMMs with no
transpose, and never replays the forward; residuals are z [B, N, D] (what
remat kept anyway, as the carry) and the small h1 [B, N, r], h2 [B, r, D]
and row statistics [B, N, 1]. Gradients equal autodiff's within float32 rounding
(tests/test_side_fused.py).
"""
import functools
from typing import Any, Dict, Tuple

import jax
from jax import lax
import jax.numpy as jnp

EPSILON = 1e-6   # side.Mixer's LayerNorms


def applies(mixer: Dict[str, Any], branches) -> bool:
  """Whether `side.Mixer(**mixer)` with these branches has this fast path."""
  return (len(branches) == 2 and branches[0][0] == "channel"
          and branches[1][0] == "token"
          and all(rank is not None for _, rank in branches)
          and mixer.get("norms", "pre") == "pre"
          and mixer.get("token_mixer", "all") == "all"
          and mixer.get("grid") is None
          and jnp.dtype(mixer.get("dtype", jnp.float32)) == jnp.float32)


def _row_stats(x):
  """(mean, 1 / sqrt(var + eps)) over the last axis, [..., 1] each.

  One variadic reduce gives both sums (one read of x); the variance is
  E[x^2] - E[x]^2 clipped at 0, as flax's LayerNorm computes it.
  """
  d = x.shape[-1]
  s1, s2 = lax.reduce((x, x * x), (jnp.float32(0), jnp.float32(0)),
                      lambda a, b: (a[0] + b[0], a[1] + b[1]),
                      (x.ndim - 1,))
  mean = s1[..., None] / d
  var = jnp.maximum(0.0, s2[..., None] / d - mean * mean)
  return mean, lax.rsqrt(var + EPSILON)


def _bmm(w, x):
  """w [M, K] times every x[b] [K, D] -> [B, M, D].

  Token mixing is written this way round (weights on the left, tokens as the
  rows of x) so that every dot is a plain batched GEMM over x's layout: no
  [B, D, N] transpose of a [B, N, D] tensor is ever materialised.
  """
  return jnp.matmul(jnp.broadcast_to(w, (x.shape[0],) + w.shape), x)


def _forward(p, z):
  """z [B, N, D] -> (delta [B, N, D], small residuals; h2 is [B, r, D])."""
  ch, tk = p["channel_0"], p["token_1"]
  m1, i1 = _row_stats(z)
  y1 = (z - m1) * (i1 * ch["LayerNorm"]["scale"]) + ch["LayerNorm"]["bias"]
  h1 = y1 @ ch["mlp"]["down"]["kernel"] + ch["mlp"]["down"]["bias"]
  c = jax.nn.gelu(h1) @ ch["mlp"]["up"]["kernel"] + ch["mlp"]["up"]["bias"]
  u = z + c
  m2, i2 = _row_stats(u)
  y2 = (u - m2) * (i2 * tk["LayerNorm"]["scale"]) + tk["LayerNorm"]["bias"]
  h2 = (_bmm(tk["mlp"]["down"]["kernel"].T, y2)
        + tk["mlp"]["down"]["bias"][:, None])              # [B, r, D]
  t = (_bmm(tk["mlp"]["up"]["kernel"].T, jax.nn.gelu(h2))
       + tk["mlp"]["up"]["bias"][:, None])                # [B, N, D]
  return c + t, (m1, i1, h1, m2, i2, h2)


@jax.custom_vjp
def mixer(params, z):
  """The default mixer: (its params tree, z [B, N, D]) -> delta [B, N, D].

  `params` is `side.Mixer`'s own tree: {"channel_0": {"LayerNorm", "mlp"},
  "token_1": {"LayerNorm", "mlp"}}.
  """
  return _forward(params, z)[0]


def _mixer_fwd(params, z):
  delta, res = _forward(params, z)
  return delta, (params, z, res)


def _layer_norm_bwd(xhat, inv, scale, dy):
  """(dx, dscale, dbias) of y = xhat * scale + bias, xhat = (x - m) * inv."""
  d = xhat.shape[-1]
  g = dy * scale
  sg, sgx = lax.reduce((g, g * xhat), (jnp.float32(0), jnp.float32(0)),
                       lambda a, b: (a[0] + b[0], a[1] + b[1]),
                       (xhat.ndim - 1,))
  dx = inv * (g - sg[..., None] / d - xhat * (sgx[..., None] / d))
  axes = tuple(range(xhat.ndim - 1))
  return dx, jnp.sum(dy * xhat, axes), jnp.sum(dy, axes)


def _ln_grads(dscale, dbias):
  return {"scale": dscale, "bias": dbias}


def _dense_grads(dkernel, dbias):
  return {"kernel": dkernel, "bias": dbias}


def _mixer_bwd(saved, dd) -> Tuple[Any, Any]:
  params, z, (m1, i1, h1, m2, i2, h2) = saved
  ch, tk = params["channel_0"], params["token_1"]
  g1, gelu1_vjp = jax.vjp(jax.nn.gelu, h1)
  g2, gelu2_vjp = jax.vjp(jax.nn.gelu, h2)
  # Recomputed from the low-rank h1: nothing [B, N, D] of the forward kept.
  c = g1 @ ch["mlp"]["up"]["kernel"] + ch["mlp"]["up"]["bias"]
  xhat2 = (z + c - m2) * i2
  y2 = xhat2 * tk["LayerNorm"]["scale"] + tk["LayerNorm"]["bias"]

  # Token branch: t[b] = U2^T gelu(h2[b]) + b, h2[b] = D2^T y2[b] + b'
  # ([B, r, D] layout); dt = dd. Weight gradients as batched GEMMs with the
  # small operand transposed, then summed over b.
  up_t = jnp.sum(jnp.matmul(dd, jnp.swapaxes(g2, 1, 2)), 0)       # [N, r]
  d_tu = _dense_grads(up_t.T, jnp.sum(dd, (0, 2)))
  dh2, = gelu2_vjp(_bmm(tk["mlp"]["up"]["kernel"], dd))           # [B, r, D]
  d_td = _dense_grads(
      jnp.sum(jnp.matmul(y2, jnp.swapaxes(dh2, 1, 2)), 0),       # [N, r]
      jnp.sum(dh2, (0, 2)))
  dy2 = _bmm(tk["mlp"]["down"]["kernel"], dh2)                    # [B, N, D]
  du, ds2, db2 = _layer_norm_bwd(xhat2, i2, tk["LayerNorm"]["scale"], dy2)

  # Channel branch: c feeds delta and u.
  dc = dd + du
  d_cu = _dense_grads(jnp.einsum("bnr,bnd->rd", g1, dc), jnp.sum(dc, (0, 1)))
  dh1, = gelu1_vjp(dc @ ch["mlp"]["up"]["kernel"].T)
  xhat1 = (z - m1) * i1
  y1 = xhat1 * ch["LayerNorm"]["scale"] + ch["LayerNorm"]["bias"]
  d_cd = _dense_grads(jnp.einsum("bnd,bnr->dr", y1, dh1),
                      jnp.sum(dh1, (0, 1)))
  dy1 = dh1 @ ch["mlp"]["down"]["kernel"].T
  dz1, ds1, db1 = _layer_norm_bwd(xhat1, i1, ch["LayerNorm"]["scale"], dy1)

  grads = {
      "channel_0": {"LayerNorm": _ln_grads(ds1, db1),
                    "mlp": {"down": d_cd, "up": d_cu}},
      "token_1": {"LayerNorm": _ln_grads(ds2, db2),
                  "mlp": {"down": d_td, "up": d_tu}}}
  return grads, du + dz1


mixer.defvjp(_mixer_fwd, _mixer_bwd)


# --- the whole side network ----------------------------------------------------


def scan_applies(mixer: Dict[str, Any], branches, *, combine: str,
                 state: str, share_weights: bool) -> bool:
  """Whether `side.SideNetwork` runs `side_scan` for these options."""
  return (combine == "add" and state == "delta" and not share_weights
          and applies({**mixer, "dtype": jnp.float32}, branches))


def _layer(tree, i):
  return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, 0, False),
                      tree)


def _read(stack, i, axis):
  """stack[i] along `axis`, as float32.

  A bf16 stack is sliced as raw 16-bit words and converted after the slice:
  otherwise XLA:CPU rewrites convert(slice(x)) as slice(convert(x)) and
  hoists the convert out of the loop, a float32 copy of the whole stack.
  """
  if stack.dtype == jnp.bfloat16:
    words = lax.dynamic_index_in_dim(
        lax.bitcast_convert_type(stack, jnp.uint16), i, axis, keepdims=False)
    return lax.bitcast_convert_type(words, jnp.bfloat16).astype(jnp.float32)
  return lax.dynamic_index_in_dim(stack, i, axis, keepdims=False).astype(
      jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def side_scan(params, taps, layer_axis: int, dtype):
  """a_L of the default side network: a_i = a_{i-1} + M_i(b_i + a_{i-1}).

  Args:
    params: the stacked mixer params, `side/layers/mixer` ([L', ...] leaves).
    taps: [L', B, N, D] (layer_axis 0) or [B, L', N, D] (1), constants: their
      cotangent is zero, as everywhere in LoSA (they are stop_gradient'ed).
    layer_axis: the taps' layer axis.
    dtype: storage dtype of a_i and z_i (float32 or bfloat16); the math is
      float32.

  Returns:
    a_L [B, N, D] in `dtype`.

  The forward overwrites b_i with z_i in the tap stack itself when the
  dtypes agree: the backward needs z_i, never b_i, so the side network holds
  one [L', B, N, D] stack for its backward, not two (the taps and remat's
  carries).
  """
  return _scan_fwd(params, taps, layer_axis, dtype)[0]


def _scan_fwd(params, taps, layer_axis, dtype):
  dtype = jnp.dtype(dtype)
  in_place = taps.dtype == dtype
  zs = taps if in_place else jnp.zeros(taps.shape, dtype)   # taps' layout

  def body(carry, i):
    a, zs = carry
    z = _read(zs if in_place else taps, i, layer_axis) + a.astype(
        jnp.float32)
    delta, small = _forward(_layer(params, i), z)
    zs = lax.dynamic_update_index_in_dim(zs, z.astype(dtype), i, layer_axis)
    return ((a.astype(jnp.float32) + delta).astype(dtype), zs), small

  shape = list(taps.shape)
  n_layers = shape.pop(layer_axis)
  (a, zs), smalls = lax.scan(body, (jnp.zeros(shape, dtype), zs),
                             jnp.arange(n_layers))
  # A scalar of the taps' dtype: residuals must be arrays.
  return a, (params, zs, smalls, jnp.zeros((), taps.dtype))


def _scan_bwd(layer_axis, dtype, saved, da):
  del dtype
  params, zs, smalls, taps_dtype = saved

  def body(da, i):
    dp, dz = _mixer_bwd((_layer(params, i), _read(zs, i, layer_axis),
                         _layer(smalls, i)), da)
    return da + dz, dp            # a_{i-1} feeds a_i and z_i

  _, dparams = lax.scan(body, da.astype(jnp.float32),
                        jnp.arange(zs.shape[layer_axis]), reverse=True)
  dparams = jax.tree.map(lambda g, p: g.astype(p.dtype), dparams, params)
  return dparams, jnp.zeros(zs.shape, taps_dtype.dtype)


side_scan.defvjp(_scan_fwd, _scan_bwd)
