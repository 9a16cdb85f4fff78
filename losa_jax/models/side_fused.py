# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The default LoSA mixer with a hand-written backward pass.

Same params and same function as `side.Mixer` in its default structure
(one channel-token pair, pre-LayerNorms, token mixing over all tokens,
images), with z [B, N, D] and the params

    channel: s1, b1 (LN1), Wd1 [D, r1], bd1, Wu1 [r1, D], bu1
    token:   s2, b2 (LN2), Wd2 [N, r2], bd2, Wu2 [r2, N], bu2

    y1 = LN1(z);  h1 = y1 Wd1 + bd1;  c = gelu(h1) Wu1 + bu1     (over D)
    u = z + c;    y2 = LN2(u);  h2[b] = Wd2^T y2[b] + bd2         (over N)
    t[b] = Wu2^T gelu(h2[b]) + bu2;  delta = c + t

Autodiff of that, rematerialised per layer, moves 99 full [B, N, D]
float32 passes per layer for a cached ViT-B/16 step (counted with
`losa_jax.utils.cost.hlo_traffic`), because XLA:CPU runs every LayerNorm, its
backward, each transpose and each weight gradient as its own pass. Here
every full-size tensor is touched only by a rank-r product or one
elementwise pass, ~30 passes per layer:

* LayerNorms are folded into the low-rank products, never formed:
  LN1(z) Wd1 = i1 (z A1 - m1 1^T A1) + b1 Wd1 with A1 = diag(s1) Wd1, and
  Wd2^T diag(i2) (u - m2) with u = z + c and c of rank r1, so neither y1,
  y2, u nor c is materialised; u's row statistics follow from z's and the
  low-rank terms (|u|^2 = |z|^2 + 2 z.c + |c|^2).
* delta = [Wu2^T | g1 | bu2 | 1] @ [gelu(h2); Wu1; 1; bu1], one GEMM.
* The backward is folded the same way: each LayerNorm backward needs the
  row sums of g = dy * scale and g * xhat, and g has rank r, so both are
  low-rank products; d/dz is one GEMM plus one elementwise pass.
* Token mixing is always a batched GEMM with the weight on the left and z
  in its own [B, N, D] layout: no [B, D, N] transpose is made.

The products whose row means are subtracted afterwards (z [A1 | ...],
Wd2^T diag(i2) z and its m2 term, z e^T, the row sums sum_d g of LN2's
backward, z^T [i1 dh1 | beta2 g1 | beta2]) run at HIGHEST precision (no
TF32 on GPUs), and the backward adds LN's gamma 1^T elementwise, not as a
GEMM column; every other product goes through `_dot`, at the backend's
default precision, which `emulated_precision` rounds as a GPU or TPU
does. Gradients equal autodiff's within float32 rounding, off-centre rows
(mean 40-400) lose no more accuracy than flax's LayerNorm does
(tests/test_side_fused.py), and the float64 bounds of docs/method.md,
"Precision of the default path", hold (tests/test_side_grads.py).
Residuals: z (kept by `side_scan` as one stack) and the small m1, i1,
z [A1 | Wu1^T | bu1] [B, N, 2 r1 + 1], m2, i2 and Wd2^T xhat2 [B, r2, D].
"""
import contextlib
import functools
from typing import Any, Dict, Optional, Tuple

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
          and mixer.get("grid") is None)


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
  """x @ y in full float32.

  The folded LayerNorms subtract the row means after the product
  (z W - m 1^T W, not (z - m) W), so these products must not be rounded to
  TF32 or bf16 passes, as float32 dots on GPUs and TPUs are by default.
  `emulated_precision` leaves them alone.
  """
  return jnp.matmul(x, y, precision=lax.Precision.HIGHEST)


# Significand bits kept by a default-precision float32 dot's operands:
# TF32 (GPUs' default) and one bf16 pass (TPUs' default).
EMULATED_MANTISSA_BITS = {"tf32": 10, "bf16": 7}
_JAX_PRECISION = {"tf32": "tensorfloat32", "bf16": "bfloat16"}
_emulated = None      # a key of EMULATED_MANTISSA_BITS, or None


@contextlib.contextmanager
def emulated_precision(mode: Optional[str]):
  """Within it, every default-precision product of the fused side network
  (`_dot`, forward and backward) rounds its operands to `mode`'s significand
  ("tf32": 10 bits, "bf16": 7 bits), then multiplies exactly: the float32
  dots of a GPU or TPU, emulated on a CPU (tests and the device check).
  None: the plain product, the same traced program as outside.

  Read when tracing: jit what it should change inside the context. It
  also sets jax.default_matmul_precision to the mode's name, which keys
  JAX's trace caches (a function traced outside is traced again inside)
  and leaves a CPU's float32 dots as they are.
  """
  global _emulated
  if mode is not None and mode not in EMULATED_MANTISSA_BITS:
    raise ValueError(f"emulated_precision({mode!r}): use one of "
                     f"{sorted(EMULATED_MANTISSA_BITS)} or None.")
  old, _emulated = _emulated, mode
  try:
    if mode is None:
      yield
    else:
      with jax.default_matmul_precision(_JAX_PRECISION[mode]):
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


def _unpack(p):
  """`side.Mixer`'s tree as the 12 arrays of the module docstring."""
  out = []
  for branch in (p["channel_0"], p["token_1"]):
    out += [branch["LayerNorm"]["scale"], branch["LayerNorm"]["bias"]]
    for dense in ("down", "up"):
      out += [branch["mlp"][dense]["kernel"], branch["mlp"][dense]["bias"]]
  return out


def _a1(p):
  """A1 = diag(s1) Wd1 [D, r1]: LN1's scale folded into the channel down."""
  s1, _, wd1 = _unpack(p)[:3]
  return s1[:, None] * wd1


def _h1(p, zp, m1, i1):
  """h1 = LN1(z) Wd1 + bd1 [B, N, r1] from zp = z [A1 | ...], without LN1(z):
  LN1(z) Wd1 = i1 (z A1 - m1 1^T A1) + b1 Wd1.

  Returns (h1, xhat1 A1, A1).
  """
  _, b1, wd1, bd1 = _unpack(p)[:4]
  a1 = _a1(p)
  # (LN1(z) - b1) Wd1 = xhat1 A1 [B, N, r1]
  xa1 = i1 * (zp[..., :wd1.shape[1]] - m1 * jnp.sum(a1, 0))
  return xa1 + (_dot(b1, wd1) + bd1), xa1, a1


def _h2(p, x2):
  """h2 = Wd2^T LN2(u) + bd2 [B, r2, D] from x2 = Wd2^T xhat2 [B, r2, D]."""
  s2, b2, wd2, bd2 = _unpack(p)[6:10]
  return s2 * x2 + jnp.sum(wd2, 0)[:, None] * b2 + bd2[:, None]


def _forward(p, z):
  """z [B, N, D] -> (delta [B, N, D], small residuals).

  Full-size work: one row-sum reduce of z, z @ [A1 | Wu1^T | bu1]
  ([B, N, 2 r1 + 1]), the token projection Wd2^T diag(i2) z ([B, r2, D]),
  and one batched GEMM that writes delta. Neither LN(z), u = z + c nor c is
  ever materialised: u's row statistics follow from z's and from the
  low-rank c = g1 Wu1 + bu1 (|u|^2 = |z|^2 + 2 z.c + |c|^2).
  """
  _, _, wd1, _, wu1, bu1, _, _, wd2, _, wu2, bu2 = _unpack(p)
  bsz, n, d = z.shape
  r1 = wd1.shape[1]
  sz1, sz2 = _row_sums(z)
  m1, i1 = _stats(sz1, sz2, d)
  a1 = _a1(p)
  # Batched like every other product of z, so that all of them read one
  # [B, N, D] operand (one float32 copy of a bf16 z, not one per shape).
  zp = _hi(z, _bcast(jnp.concatenate([a1, wu1.T, bu1[:, None]], 1), bsz))
  h1, _, _ = _h1(p, zp, m1, i1)
  g1 = jax.nn.gelu(h1)
  # Row sums of u = z + c, c = g1 Wu1 + bu1, from z's and low-rank terms.
  su1 = sz1 + _dot(g1, jnp.sum(wu1, 1))[..., None] + jnp.sum(bu1)
  zc = jnp.sum(g1 * zp[..., r1:2 * r1], -1, keepdims=True) + zp[..., -1:]
  cc = (jnp.sum(_dot(g1, _dot(wu1, wu1.T)) * g1, -1, keepdims=True)
        + 2.0 * _dot(g1, _dot(wu1, bu1))[..., None] + jnp.sum(bu1 * bu1))
  m2, i2 = _stats(su1, sz2 + 2.0 * zc + cc, d)
  # x2 = Wd2^T xhat2 = V u - V m2 with V = Wd2^T diag(i2) [B, r2, N]
  # (weights on the left: a plain batched GEMM over z's layout).
  v = wd2.T * jnp.swapaxes(i2, 1, 2)
  x2 = (_hi(v, z) + _dot(_hi(v, g1), wu1)
        + jnp.sum(v, -1, keepdims=True) * bu1
        - _hi(v, m2))
  g2 = jax.nn.gelu(_h2(p, x2))
  # delta = t + c = [Wu2^T | g1 | bu2 | 1] @ [g2; Wu1; 1; bu1]: one GEMM.
  one_n, one_d = jnp.ones((bsz, n, 1), z.dtype), jnp.ones((bsz, 1, d), z.dtype)
  left = jnp.concatenate([_bcast(wu2.T, bsz), g1, bu2[:, None] * one_n,
                          one_n], -1)
  right = jnp.concatenate([g2, _bcast(wu1, bsz), one_d, bu1 * one_d], 1)
  return _dot(left, right), (m1, i1, zp, m2, i2, x2)


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


def _ln_grads(dscale, dbias):
  return {"scale": dscale, "bias": dbias}


def _dense_grads(dkernel, dbias):
  return {"kernel": dkernel, "bias": dbias}


def _backward(params, z, res, dd, carry=None, null_bias=False):
  """(param grads, carry + d/dz) of delta = M(z) for the cotangent dd.

  Full-size work: two GEMMs that read dd (contracting tokens, then
  channels), two that read z, one that writes the low-rank part of d/dz,
  and one elementwise pass carry + that - beta z. Every LayerNorm backward
  is folded the same way as the forward: its row sums sum_d g and
  sum_d g xhat are low-rank products (g = dy * scale has rank r).
  """
  s1, b1, wd1, _, wu1, bu1, s2, b2, wd2, _, wu2, _ = _unpack(params)
  m1, i1, zp, m2, i2, x2 = res
  bsz, n, d = z.shape
  r1, r2 = wd1.shape[1], wd2.shape[1]
  h1, xa1, a1 = _h1(params, zp, m1, i1)
  g1, gelu1_vjp = jax.vjp(jax.nn.gelu, h1)
  g2, gelu2_vjp = jax.vjp(jax.nn.gelu, _h2(params, x2))
  one_n, one_d = jnp.ones((bsz, 1, n), z.dtype), jnp.ones((bsz, d, 1), z.dtype)

  # dd contracted over tokens: [Wu2; 1; g1^T] @ dd[b]  -> [B, r2 + 1 + r1, D].
  oa = _dot(jnp.concatenate(
      [_bcast(wu2, bsz), one_n, jnp.swapaxes(g1, 1, 2)], 1), dd)
  dg2, dd_cols, g1t_dd = oa[:, :r2], oa[:, r2], oa[:, r2 + 1:]
  # dd contracted over channels: dd[b] @ [Wu1^T | g2^T | 1] -> [B, N, r1+r2+1].
  ob = _dot(dd, jnp.concatenate(
      [_bcast(wu1.T, bsz), jnp.swapaxes(g2, 1, 2), one_d], 2))
  dd_u1, dd_g2, dd_rows = ob[..., :r1], ob[..., r1:r1 + r2], ob[..., -1]

  # Token MLP: t[b] = Wu2^T g2[b] + bu2, h2[b] = Wd2^T y2[b] + bd2.
  # null_bias (side_scan): bu2 adds one value per token to every channel,
  # and everything that reads a_i normalises each token over its channels
  # (the next mixers' LN1 and LN2, LN_out or the frozen encoder_norm at the
  # head), so its exact gradient is 0; dd's row sums are then float32 noise
  # around 0, which Adam would turn into lr-sized steps: steps that, with a
  # bf16 z_i, change how it rounds. Under the straight-through convention
  # for that rounding the gradient is exactly 0.
  d_bu2 = (jnp.zeros_like(dd_rows[0]) if null_bias
           else jnp.sum(dd_rows, 0))
  d_tu = _dense_grads(jnp.sum(dd_g2, 0).T, d_bu2)
  dh2, = gelu2_vjp(dg2)                                          # [B, r2, D]
  e = dh2 * s2                                                   # dy2 s2 = Wd2 e
  et = jnp.swapaxes(e, 1, 2)
  # u e^T = z e^T + g1 (Wu1 e^T) + bu1 e^T                     [B, N, r2]
  ue = _hi(z, et) + _dot(g1, _dot(wu1, et)) + _dot(e, bu1)[:, None, :]
  e_sum = jnp.sum(e, -1)                                         # [B, r2]
  d_td = _dense_grads(
      jnp.sum(i2 * (ue - m2 * e_sum[:, None, :])
              + _dot(dh2, b2)[:, None, :], 0),
      jnp.sum(dh2, (0, 2)))
  ds2, db2 = jnp.sum(dh2 * x2, (0, 1)), _dot(jnp.sum(wd2, 0), jnp.sum(dh2, 0))
  # LN2 backward, du = i2 g - beta2 u + gamma2 with g = Wd2 e (rank r2).
  # sum_d g; HIGHEST: m2 sg2 cancels against sum_d g u just below.
  sg2 = _hi(e_sum, wd2.T)[..., None]
  sgx2 = i2 * (jnp.sum(ue * wd2, -1, keepdims=True) - m2 * sg2)  # sum_d g xhat2
  beta2 = i2 * i2 * sgx2 / d
  gamma2 = m2 * beta2 - i2 * sg2 / d

  # Channel MLP: c feeds delta and u, so dc = dd + du.
  du_u1 = (i2 * _dot(wd2, _dot(e, wu1.T))
           - beta2 * (zp[..., r1:2 * r1] + _dot(g1, _dot(wu1, wu1.T))
                      + _dot(wu1, bu1))
           + gamma2 * jnp.sum(wu1, 1))                           # du Wu1^T
  dh1, = gelu1_vjp(dd_u1 + du_u1)                                # [B, N, r1]
  # Batched, then summed over b: z enters every dot as [B, N, D], so one
  # slice of the stack serves them all.
  kd = jnp.sum(_hi(jnp.swapaxes(jnp.concatenate(
      [i1 * dh1, beta2 * g1, beta2], -1), 1, 2), z), 0)          # [2r1+1, D]
  i2wd2 = _dot(i2[..., 0], wd2, "bn,nr->br")
  bg1 = jnp.sum(beta2 * g1, (0, 1))
  d_cu = _dense_grads(
      jnp.sum(g1t_dd, 0)
      + jnp.sum(_dot(_dot(i2 * g1, wd2, "bnr,ns->brs"), e), 0)
      - kd[r1:2 * r1]
      - _dot(_dot(beta2 * g1, g1, "bnr,bns->rs"), wu1)
      - bg1[:, None] * bu1 + jnp.sum(gamma2 * g1, (0, 1))[:, None],
      jnp.sum(dd_cols, 0) + _dot(i2wd2, e, "br,brd->d") - kd[-1]
      - _dot(bg1, wu1) - jnp.sum(beta2) * bu1 + jnp.sum(gamma2))
  sdh1 = jnp.sum(dh1, (0, 1))
  # xhat1^T dh1 = z^T (i1 dh1) - 1 (m1 i1 dh1)                 [D, r1]
  xd = kd[:r1].T - jnp.sum(m1 * i1 * dh1, (0, 1))
  d_cd = _dense_grads(s1[:, None] * xd + b1[:, None] * sdh1, sdh1)
  ds1, db1 = jnp.sum(wd1 * xd, 1), _dot(wd1, sdh1)
  # LN1 backward, dz1 = i1 dh1 A1^T - beta1 z + gamma1.
  sg1 = _dot(dh1, jnp.sum(a1, 0)[:, None])
  beta1 = i1 * i1 * jnp.sum(dh1 * xa1, -1, keepdims=True) / d
  gamma1 = m1 * beta1 - i1 * sg1 / d

  # d/dz = du + dz1 = [i2 Wd2 | i1 dh1 | -beta2 g1 | -beta2] @
  #        [e; A1^T; Wu1; bu1] + gamma - (beta1 + beta2) z.
  # gamma = m beta - ... cancels against beta z (rows far from zero mean):
  # it is added in float32 in the same elementwise pass, not as a GEMM
  # column that a GPU would round to TF32.
  left = jnp.concatenate([i2 * wd2, i1 * dh1, -beta2 * g1, -beta2], -1)
  right = jnp.concatenate([e, _bcast(a1.T, bsz), _bcast(wu1, bsz),
                           _bcast(bu1[None], bsz)], 1)
  dz = _dot(left, right) + ((gamma1 + gamma2) - (beta1 + beta2) * z)
  if carry is not None:
    dz = carry + dz
  grads = {
      "channel_0": {"LayerNorm": _ln_grads(ds1, db1),
                    "mlp": {"down": d_cd, "up": d_cu}},
      "token_1": {"LayerNorm": _ln_grads(ds2, db2),
                  "mlp": {"down": d_td, "up": d_tu}}}
  return grads, dz


def _mixer_bwd(saved, dd) -> Tuple[Any, Any]:
  params, z, res = saved
  return _backward(params, z, res, dd)


mixer.defvjp(_mixer_fwd, _mixer_bwd)


# --- the whole side network ----------------------------------------------------


def scan_applies(mixer_fused: bool, *, combine: str, state: str,
                 share_weights: bool) -> bool:
  """Whether `side.SideNetwork` runs `side_scan`: its mixer runs `mixer`
  (`side.Mixer.uses_fused_vjp()`) and the network has the default wiring."""
  return (mixer_fused and combine == "add" and state == "delta"
          and not share_weights)


def _layer(tree, i):
  return jax.tree.map(lambda x: lax.dynamic_index_in_dim(x, i, 0, False),
                      tree)


def to_words(x):
  """A bf16 array as its raw 16-bit words (a bitcast; other dtypes as is)."""
  return lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 \
      else x


def from_words(x):
  """The inverse of `to_words` (a bitcast; other dtypes as is)."""
  return lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == jnp.uint16 \
      else x


def _read(stack, i, axis):
  """stack[i] along `axis`, as float32; a uint16 stack holds bf16 words.

  bf16 stacks are sliced and updated as raw 16-bit words: on bf16 arrays
  XLA:CPU moves the converts across the slice (slice(convert(x)), hoisted
  out of the loop: a float32 copy of the whole stack) and across the
  update (convert(update(convert(x)))): the whole stack converted twice in
  every iteration.
  """
  words = lax.dynamic_index_in_dim(to_words(stack), i, axis, keepdims=False)
  return from_words(words).astype(jnp.float32)


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
  carries). Otherwise (bf16 cached taps, float32 side) the z_i are stacked
  as scan outputs, [L', B, N, D]. z_i is rounded to `dtype` before the mixer
  reads it, so forward and backward see the same stored z_i.

  Not differentiated (serving, eval), it keeps nothing for a backward and
  only reads the taps: N served tasks share one tap stack, where writing
  z_i over it would copy the stack once per task.
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
