# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The default LoSA mixer and side network with a hand-written backward.

The same function as `side.reference_mixer` in the default structure (one
channel-token pair, pre-LayerNorms, token mixing over all tokens, images),
z [B, N, D] and the params of `Params`:

    y1 = LN1(z);  h1 = y1 Wd1 + bd1;  c = gelu(h1) Wu1 + bu1     (over D)
    u = z + c;    y2 = LN2(u);  h2[b] = Wd2^T y2[b] + bd2         (over N)
    t[b] = Wu2^T gelu(h2[b]) + bu2;  delta = c + t

Neither LN(z), u nor c is formed: the LayerNorms are folded into the
low-rank products, forward and backward, so every full-size [B, N, D]
tensor is touched only by a rank-r product or one elementwise pass
(derivation and precision argument: docs/side_fused.md).
"""
import collections
import contextlib
import functools
import itertools
from typing import Optional, Sequence

import jax
from jax import lax
import jax.numpy as jnp

EPSILON = 1e-6   # every LayerNorm of the side network


# The default mixer's params (docs/side_fused.md, "Notation";
# `side.fused_params` reads them from the tree `side.Mixer.spec` declares):
# LN1 (s1, b1), the channel MLP (Wd1 [D, r1], bd1, Wu1 [r1, D], bu1), LN2
# (s2, b2) and the token MLP (Wd2 [N, r2], bd2, Wu2 [r2, N], bu2); stacked:
# a leading [L'].
Params = collections.namedtuple(
    "Params", "s1 b1 wd1 bd1 wu1 bu1 s2 b2 wd2 bd2 wu2 bu2")
# What the forward keeps for the backward besides z: LN1's row means and
# 1 / std [B, N, 1], z_proj = z [A1 | Wu1^T | bu1] [B, N, 2 r1 + 1], LN2's
# (of u) statistics and wx2 = Wd2^T xhat2 [B, r2, D].
Residuals = collections.namedtuple("Residuals", "m1 i1 z_proj m2 i2 wx2")


def _split(x, sizes: Sequence[int], axis: int = -1):
  """x cut along `axis` into consecutive parts of these sizes (the parts of
  one concatenated product)."""
  return jnp.split(x, list(itertools.accumulate(sizes[:-1])), axis)


def _row_sums(x):
  """(sum x, sum x^2) over the last axis, [..., 1] each: one variadic
  reduce, one read of x."""
  s1, s2 = lax.reduce((x, x * x), (jnp.float32(0), jnp.float32(0)),
                      lambda a, b: (a[0] + b[0], a[1] + b[1]),
                      (x.ndim - 1,))
  return s1[..., None], s2[..., None]


def _stats(s1, s2, d):
  """(mean, 1 / sqrt(var + eps)) from the row sums; the variance is
  E[x^2] - E[x]^2 clipped at 0, as flax's LayerNorm computes it."""
  mean = s1 / d
  return mean, lax.rsqrt(jnp.maximum(0.0, s2 / d - mean * mean) + EPSILON)


def _hi(x, y):
  """x @ y in full float32, never TF32 or one bf16 pass (nor emulated):
  the products whose row means are subtracted afterwards
  (docs/side_fused.md, "Precision")."""
  return jnp.matmul(x, y, precision=lax.Precision.HIGHEST)


# Significand bits kept by a default-precision float32 dot's operands:
# TF32 (GPUs' default) and one bf16 pass (TPUs' default).
EMULATED_MANTISSA_BITS = {"tf32": 10, "bf16": 7}
_JAX_PRECISION = {"tf32": "tensorfloat32", "bf16": "bfloat16"}
_emulated = None      # a key of EMULATED_MANTISSA_BITS, or None


@contextlib.contextmanager
def emulated_precision(mode: Optional[str]):
  """Within it, every `_dot` of the fused side network rounds its operands
  to `mode`'s significand ("tf32": 10 bits, "bf16": 7), then multiplies
  exactly: a GPU's or TPU's float32 dots, emulated on a CPU. None: the
  plain product. Read when tracing: jit inside the context (it also sets
  jax.default_matmul_precision, which keys JAX's trace caches).
  """
  global _emulated
  if mode is not None and mode not in EMULATED_MANTISSA_BITS:
    raise ValueError(f"emulated_precision({mode!r}): use one of "
                     f"{sorted(EMULATED_MANTISSA_BITS)} or None.")
  old, _emulated = _emulated, mode
  try:
    with (contextlib.nullcontext() if mode is None else
          jax.default_matmul_precision(_JAX_PRECISION[mode])):
      yield
  finally:
    _emulated = old


def _dot(x, y, spec: Optional[str] = None):
  """x @ y, or einsum(spec, x, y), at the backend's default precision: the
  products that no row mean is subtracted from (see `_hi`)."""
  prec = None
  if _emulated is not None:
    bits = EMULATED_MANTISSA_BITS[_emulated]
    x, y = (lax.reduce_precision(v, exponent_bits=8, mantissa_bits=bits)
            for v in (x, y))
    prec = lax.Precision.HIGHEST
  if spec is None:
    return jnp.matmul(x, y, precision=prec)
  return jnp.einsum(spec, x, y, precision=prec)


def _bcast(x, lead):
  return jnp.broadcast_to(x, (lead,) + x.shape)


def _a1(p: Params):
  """A1 = diag(s1) Wd1 [D, r1]: LN1's scale folded into the channel down."""
  return p.s1[:, None] * p.wd1


def _h1(p: Params, z_a1, m1, i1):
  """(h1, xhat1 A1) [B, N, r1] from z_a1 = z A1, LN1(z) never formed:
  h1 = xhat1 A1 + b1 Wd1 + bd1, xhat1 A1 = i1 (z A1 - m1 1^T A1)."""
  xhat1_a1 = i1 * (z_a1 - m1 * jnp.sum(_a1(p), 0))
  return xhat1_a1 + (_dot(p.b1, p.wd1) + p.bd1), xhat1_a1


def _h2(p: Params, wx2):
  """h2 = Wd2^T LN2(u) + bd2 [B, r2, D] from wx2 = Wd2^T xhat2."""
  return p.s2 * wx2 + jnp.sum(p.wd2, 0)[:, None] * p.b2 + p.bd2[:, None]


def _forward(p: Params, z):
  """z [B, N, D] -> (delta [B, N, D], Residuals).

  Full-size work: one row-sum reduce of z, z_proj, the token projection
  Wd2^T diag(i2) z [B, r2, D] and one batched GEMM that writes delta.
  """
  bsz, n, d = z.shape
  r1 = p.wd1.shape[1]
  sum_z, sum_zz = _row_sums(z)
  m1, i1 = _stats(sum_z, sum_zz, d)
  # Batched like every other product of z, so that all of them read one
  # [B, N, D] operand (one float32 copy of a bf16 z, not one per shape).
  z_proj = _hi(z, _bcast(jnp.concatenate(
      [_a1(p), p.wu1.T, p.bu1[:, None]], 1), bsz))
  z_a1, z_wu1, z_bu1 = _split(z_proj, (r1, r1, 1))
  g1 = jax.nn.gelu(_h1(p, z_a1, m1, i1)[0])
  # u = z + c's row sums from z's and low-rank terms: |u|^2 = |z|^2 +
  # 2 z.c + |c|^2 with c = g1 Wu1 + bu1.
  sum_u = sum_z + _dot(g1, jnp.sum(p.wu1, 1))[..., None] + jnp.sum(p.bu1)
  z_dot_c = jnp.sum(g1 * z_wu1, -1, keepdims=True) + z_bu1
  c_dot_c = (jnp.sum(_dot(g1, _dot(p.wu1, p.wu1.T)) * g1, -1, keepdims=True)
             + 2.0 * _dot(g1, _dot(p.wu1, p.bu1))[..., None]
             + jnp.sum(p.bu1 * p.bu1))
  m2, i2 = _stats(sum_u, sum_zz + 2.0 * z_dot_c + c_dot_c, d)
  # wx2 = V u - V m2 with V = Wd2^T diag(i2) [B, r2, N] (weights on the
  # left: a plain batched GEMM over z's layout, no [B, D, N] transpose).
  v = p.wd2.T * jnp.swapaxes(i2, 1, 2)
  wx2 = (_hi(v, z) + _dot(_hi(v, g1), p.wu1)
         + jnp.sum(v, -1, keepdims=True) * p.bu1 - _hi(v, m2))
  g2 = jax.nn.gelu(_h2(p, wx2))
  # delta = t + c = [Wu2^T | g1 | bu2 | 1] @ [g2; Wu1; 1; bu1]: one GEMM.
  one_n, one_d = jnp.ones((bsz, n, 1), z.dtype), jnp.ones((bsz, 1, d), z.dtype)
  left = jnp.concatenate([_bcast(p.wu2.T, bsz), g1, p.bu2[:, None] * one_n,
                          one_n], -1)
  right = jnp.concatenate([g2, _bcast(p.wu1, bsz), one_d, p.bu1 * one_d], 1)
  return _dot(left, right), Residuals(m1, i1, z_proj, m2, i2, wx2)


@jax.custom_vjp
def mixer(params: Params, z):
  """The default mixer: (Params, z [B, N, D]) -> delta [B, N, D]."""
  return _forward(params, z)[0]


def _mixer_fwd(params, z):
  delta, res = _forward(params, z)
  return delta, (params, z, res)


def _ln2_backward(p: Params, z, res: Residuals, g1, dh2):
  """LN2 and the token down projection (docs/side_fused.md, "Token MLP"):
  (e, beta2, gamma2, d_wd2) with du = i2 Wd2 e - beta2 u + gamma2."""
  m2, i2 = res.m2, res.i2
  d = z.shape[-1]
  e = dh2 * p.s2                                                 # [B, r2, D]
  et = jnp.swapaxes(e, 1, 2)
  # u e^T = z e^T + g1 (Wu1 e^T) + bu1 e^T                       [B, N, r2]
  u_e = _hi(z, et) + _dot(g1, _dot(p.wu1, et)) + _dot(e, p.bu1)[:, None, :]
  e_sum = jnp.sum(e, -1)                                         # [B, r2]
  d_wd2 = jnp.sum(i2 * (u_e - m2 * e_sum[:, None, :])
                  + _dot(dh2, p.b2)[:, None, :], 0)
  # sum_d g with g = Wd2 e; HIGHEST: m2 sum_g cancels against sum_d g u.
  sum_g = _hi(e_sum, p.wd2.T)[..., None]
  sum_g_xhat2 = i2 * (jnp.sum(u_e * p.wd2, -1, keepdims=True) - m2 * sum_g)
  beta2 = i2 * i2 * sum_g_xhat2 / d
  gamma2 = m2 * beta2 - i2 * sum_g / d
  return e, beta2, gamma2, d_wd2


def _backward(p: Params, z, res: Residuals, dd, carry=None, null_bias=False):
  """(Params of gradients, carry + d/dz) of delta = M(z) for the cotangent
  dd [B, N, D] (docs/side_fused.md, "Backward").

  Full-size work: two GEMMs that read dd (contracting tokens, then
  channels), two that read z, one that writes the low-rank part of d/dz,
  and one elementwise pass carry + that - beta z.
  """
  bsz, n, d = z.shape
  r1, r2 = p.wd1.shape[1], p.wd2.shape[1]
  m1, i1, i2 = res.m1, res.i1, res.i2
  z_a1, z_wu1, _ = _split(res.z_proj, (r1, r1, 1))
  h1, xhat1_a1 = _h1(p, z_a1, m1, i1)
  g1, gelu1_vjp = jax.vjp(jax.nn.gelu, h1)
  g2, gelu2_vjp = jax.vjp(jax.nn.gelu, _h2(p, res.wx2))
  one_n, one_d = jnp.ones((bsz, 1, n), z.dtype), jnp.ones((bsz, d, 1), z.dtype)
  # dd over tokens: [Wu2; 1; g1^T] @ dd[b]                 [B, r2 + 1 + r1, D]
  dg2, dd_col_sums, g1_dd = _split(_dot(jnp.concatenate(
      [_bcast(p.wu2, bsz), one_n, jnp.swapaxes(g1, 1, 2)], 1), dd),
                                   (r2, 1, r1), 1)
  # dd over channels: dd[b] @ [Wu1^T | g2^T | 1]           [B, N, r1 + r2 + 1]
  dd_wu1, dd_g2, dd_row_sums = _split(_dot(dd, jnp.concatenate(
      [_bcast(p.wu1.T, bsz), jnp.swapaxes(g2, 1, 2), one_d], 2)),
                                      (r1, r2, 1))
  # bu2 is a null direction under side_scan (docs/side_fused.md, "The
  # token MLP's output bias"): its exact gradient 0, not float32 noise.
  d_bu2 = (jnp.zeros((n,), dd.dtype) if null_bias
           else jnp.sum(dd_row_sums[..., 0], 0))
  dh2, = gelu2_vjp(dg2)                                          # [B, r2, D]
  e, beta2, gamma2, d_wd2 = _ln2_backward(p, z, res, g1, dh2)
  # c feeds delta and u: dc Wu1^T = dd Wu1^T + du Wu1^T.
  du_wu1 = (i2 * _dot(p.wd2, _dot(e, p.wu1.T))
            - beta2 * (z_wu1 + _dot(g1, _dot(p.wu1, p.wu1.T))
                       + _dot(p.wu1, p.bu1))
            + gamma2 * jnp.sum(p.wu1, 1))
  dh1, = gelu1_vjp(dd_wu1 + du_wu1)                              # [B, N, r1]
  # z^T [i1 dh1 | beta2 g1 | beta2], batched then summed over b: z enters
  # every product as [B, N, D], so one slice of the stack serves them all.
  zt_dh1, zt_beta2_g1, zt_beta2 = _split(jnp.sum(_hi(jnp.swapaxes(
      jnp.concatenate([i1 * dh1, beta2 * g1, beta2], -1), 1, 2), z), 0),
                                         (r1, r1, 1), 0)
  i2_wd2 = _dot(i2[..., 0], p.wd2, "bn,nr->br")
  sum_beta2_g1 = jnp.sum(beta2 * g1, (0, 1))
  d_wu1 = (jnp.sum(g1_dd, 0)
           + jnp.sum(_dot(_dot(i2 * g1, p.wd2, "bnr,ns->brs"), e), 0)
           - zt_beta2_g1 - _dot(_dot(beta2 * g1, g1, "bnr,bns->rs"), p.wu1)
           - sum_beta2_g1[:, None] * p.bu1
           + jnp.sum(gamma2 * g1, (0, 1))[:, None])
  d_bu1 = (jnp.sum(dd_col_sums, (0, 1)) + _dot(i2_wd2, e, "br,brd->d")
           - zt_beta2[0] - _dot(sum_beta2_g1, p.wu1)
           - jnp.sum(beta2) * p.bu1 + jnp.sum(gamma2))
  sum_dh1 = jnp.sum(dh1, (0, 1))
  # xhat1^T dh1 = z^T (i1 dh1) - 1 (m1 i1 dh1)                   [D, r1]
  xhat1_dh1 = zt_dh1.T - jnp.sum(m1 * i1 * dh1, (0, 1))
  # LN1 backward, dz1 = i1 dh1 A1^T - beta1 z + gamma1.
  sum_g1 = _dot(dh1, jnp.sum(_a1(p), 0)[:, None])
  beta1 = i1 * i1 * jnp.sum(dh1 * xhat1_a1, -1, keepdims=True) / d
  gamma1 = m1 * beta1 - i1 * sum_g1 / d
  # d/dz = [i2 Wd2 | i1 dh1 | -beta2 g1 | -beta2] @ [e; A1^T; Wu1; bu1]
  #        + gamma - (beta1 + beta2) z; gamma is added in float32 in the
  # same elementwise pass (it cancels against beta z), not as a GEMM column.
  left = jnp.concatenate([i2 * p.wd2, i1 * dh1, -beta2 * g1, -beta2], -1)
  right = jnp.concatenate([e, _bcast(_a1(p).T, bsz), _bcast(p.wu1, bsz),
                           _bcast(p.bu1[None], bsz)], 1)
  dz = _dot(left, right) + ((gamma1 + gamma2) - (beta1 + beta2) * z)
  grads = Params(
      s1=jnp.sum(p.wd1 * xhat1_dh1, 1), b1=_dot(p.wd1, sum_dh1),
      wd1=p.s1[:, None] * xhat1_dh1 + p.b1[:, None] * sum_dh1, bd1=sum_dh1,
      wu1=d_wu1, bu1=d_bu1,
      s2=jnp.sum(dh2 * res.wx2, (0, 1)),
      b2=_dot(jnp.sum(p.wd2, 0), jnp.sum(dh2, 0)),
      wd2=d_wd2, bd2=jnp.sum(dh2, (0, 2)), wu2=jnp.sum(dd_g2, 0).T, bu2=d_bu2)
  return grads, dz if carry is None else carry + dz


mixer.defvjp(_mixer_fwd, lambda saved, dd: _backward(*saved, dd))


# --- the whole side network ----------------------------------------------------


def _layer(tree, i):
  return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, 0, False),
                      tree)


def _as_words(dtype) -> bool:
  """Whether stacks of `dtype` are sliced and updated as 16-bit words: bf16
  on XLA:CPU, which otherwise copies and converts the whole stack around
  each slice and update (docs/side_fused.md, "The whole network")."""
  return dtype == jnp.bfloat16 and jax.default_backend() == "cpu"


def to_words(x):
  """A bf16 array as its raw 16-bit words where `_as_words` (a bitcast);
  any other array as it is."""
  return lax.bitcast_convert_type(x, jnp.uint16) if _as_words(x.dtype) else x


def from_words(x):
  """The inverse of `to_words` (a bitcast; other dtypes as is)."""
  return lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == jnp.uint16 \
      else x


def _read(stack, i, axis):
  """stack[i] along `axis` as float32 (a uint16 stack holds bf16 words)."""
  words = lax.dynamic_index_in_dim(to_words(stack), i, axis, keepdims=False)
  return from_words(words).astype(jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def side_scan(params, taps, layer_axis: int, dtype):
  """a_L of the default side network: a_i = a_{i-1} + M_i(b_i + a_{i-1}).

  Args:
    params: the stacked mixer `Params` ([L', ...] leaves).
    taps: [L', B, N, D] (layer_axis 0) or [B, L', N, D] (1), constants: their
      cotangent is zero, as everywhere in LoSA (they are stop_gradient'ed).
    layer_axis: the taps' layer axis.
    dtype: storage dtype of a_i and z_i (float32 or bfloat16); the math is
      float32.

  Returns:
    a_L [B, N, D] in `dtype`. The differentiated forward writes z_i over
    the taps (the backward keeps that one stack); undifferentiated, it only
    reads them (docs/side_fused.md, "The whole network").
  """
  dtype = jnp.dtype(dtype)
  words = to_words(taps)

  def body(a, i):
    return _step(params, words, a, i, layer_axis, dtype)[1], None

  shape = list(taps.shape)
  n_layers = shape.pop(layer_axis)
  a, _ = lax.scan(body, jnp.zeros(shape, dtype), jnp.arange(n_layers))
  return a


def _step(params, zs, a, i, layer_axis, dtype):
  """One layer of the forward, shared by `side_scan` and `_scan_fwd` (so
  both give the same values): (z_i as stored, a_i, small residuals) from
  the stack `zs` (16-bit words for bf16) and a_{i-1}."""
  # z_i as stored: the backward and the forward see the same z_i.
  z = (_read(zs, i, layer_axis) + a.astype(jnp.float32)).astype(dtype)
  delta, small = _forward(_layer(params, i), z.astype(jnp.float32))
  return z, (a.astype(jnp.float32) + delta).astype(dtype), small


def _in_place(taps_dtype, dtype) -> bool:
  """Whether z_i is written over the taps (same dtype), else stacked as
  scan outputs along axis 0."""
  return jnp.dtype(taps_dtype) == jnp.dtype(dtype)


def _scan_fwd(params, taps, layer_axis, dtype):
  dtype = jnp.dtype(dtype)
  in_place = _in_place(taps.dtype, dtype)

  def body(carry, i):
    a, zs = carry
    z, a, small = _step(params, zs, a, i, layer_axis, dtype)
    if in_place:
      zs = lax.dynamic_update_index_in_dim(zs, to_words(z), i, layer_axis)
      return (a, zs), small
    return (a, zs), (small, to_words(z))

  shape = list(taps.shape)
  n_layers = shape.pop(layer_axis)
  (a, zs), out = lax.scan(body, (jnp.zeros(shape, dtype), to_words(taps)),
                          jnp.arange(n_layers))
  smalls, zs = out if not in_place else (out, zs)
  # A scalar of the taps' dtype: residuals must be arrays.
  return a, (params, zs, smalls, jnp.zeros((), taps.dtype))


def _scan_bwd(layer_axis, dtype, saved, da):
  params, zs, smalls, taps_dtype = saved
  axis = layer_axis if _in_place(taps_dtype.dtype, dtype) else 0

  def body(da, i):
    # a_{i-1} feeds a_i and z_i: da_{i-1} = da_i + d/dz_i.
    dp, da = _backward(_layer(params, i), _read(zs, i, axis),
                       _layer(smalls, i), da, carry=da, null_bias=True)
    return da, dp

  _, dparams = lax.scan(body, da.astype(jnp.float32),
                        jnp.arange(zs.shape[axis]), reverse=True)
  dparams = jax.tree.map(lambda g, p: g.astype(p.dtype), dparams, params)
  shape = list(zs.shape)
  shape.insert(layer_axis, shape.pop(axis))          # the taps' shape
  return dparams, jnp.zeros(shape, taps_dtype.dtype)


side_scan.defvjp(_scan_fwd, _scan_bwd)
