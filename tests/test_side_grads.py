# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Gradients of the default side network against float64 autodiff.

The library's default path (fused backward, `side_fused.side_scan`; side
stream stored in bf16, and in float32) is compared, for every side and
head param, with float64 autodiff of the same function: the autodiff
mixers (`side.Mixer(fused=False)`), the same wiring, LN_out, pooling and
head (`losa_jax.models.side_precision`), on the very taps the library
read: from an unrolled and a scanned backbone ([L, B, N, D]) and as a
feature cache hands them over ([B, L, N, D], `layer_axis: 1`, and
[L, B, N, D]).

The reference does not round. The bound is derived from where the library
rounds (side_precision's first-order model, per gradient entry):

    |g - g_ref| <= 2 (sum_s g_n |J_s| + 6 sqrt(sum_t (u_t J_t)^2))

J_s = dg_ref/de_s is the change of the reference's gradient per relative
perturbation e_s of a site (forward value or backward cotangent, computed
exactly in float64); the sites are each mixer's z_i, delta, params and
every Dense's input and output, each a_i, LN_out's input and the head's
input and output.
* Float32 arithmetic, worst case over signs: every site, forward and
  backward, gets g_n = n u32 / (1 - n u32), u32 = 2^-24, for dots and sums
  of at most n = B max(N, D) terms (the weight gradients sum over the
  batch and the tokens or channels).
* Storage, one rounding per element: z_i and a_i forward and a_L backward
  (the cotangent of the stored a_L has its dtype) get the unit roundoff
  u_t of model.losa.dtype: bf16's significand has 8 bits, 7 stored and the
  implicit one, u = 2^-8; float32 2^-24. Thousands of independent
  roundings: as independent mean-zero errors, Hoeffding's inequality puts
  their sum beyond 6 root-sum-squares with probability <= 2 e^-18 = 3e-8
  per entry (LAMBDA); the worst case over their signs would
  allow up to half of a leaf's largest gradient.
The 2 covers the second-order terms and the fused path's products whose
operands are not exactly a reference site.
"""
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.utils import tree as tree_lib
from losa_jax.models import side_precision

B = 2
LABELS = jnp.array([1, 3])
# Independent roundings |d_s| <= u_s: |sum_s d_s J_s| exceeds LAMBDA
# sqrt(sum_s (u_s J_s)^2) with probability <= 2 exp(-LAMBDA^2 / 2) = 3e-8
# per gradient entry (Hoeffding; docs/method.md).
LAMBDA = 6.0


def gamma(n: int) -> float:
  """gamma_n = n u / (1 - n u), float32: the relative error bound of a
  float32 sum of n products (Higham, Accuracy and Stability, 3.1)."""
  nu = n * side_precision.UNIT_ROUNDOFF["float32"]
  return nu / (1.0 - nu)


def side_network(mixer_kw, layers, taps, sites):
  """a_L [B, N, D] of the default wiring: z_i = b_i + a_{i-1},
  a_i = a_{i-1} + M_i(z_i), with `layers` the stacked mixer params
  (side/layers/mixer) and taps [L, B, N, D]; a site at every z_i and a_i
  besides each mixer's own (`sites`: a `side_precision.Sites`)."""
  a = jnp.zeros(taps.shape[1:], taps.dtype)
  for i in range(taps.shape[0]):
    p = jax.tree.map(lambda v, i=i: v[i], layers)
    z = taps[i] + a
    a = sites(f"L{i}/a", a + side_precision.mixer(mixer_kw, p, z, sites,
                                                  prefix=f"L{i}/"))
  return a


def storage_units(dtype: str, n: int, n_layers: int):
  """(worst-case, independent) site units of the default side network
  (`side_network`) storing z_i and a_i in `dtype`, float32 math.

  Worst case, at every site forward and backward: gamma_n, the library's
  float32 dots and sums of at most n terms. Independent: the storage
  roundings, u_dtype at z_i and a_i forward and at a_L backward (the
  cotangent of the stored a_L has its dtype); one rounding per element.
  """
  g, u = gamma(n), side_precision.UNIT_ROUNDOFF[dtype]
  stored = re.compile(r"L\d+/(z|a)")

  def independent(name):
    return (u if stored.fullmatch(name) else 0.0,
            u if name == f"L{n_layers - 1}/a" else 0.0)
  return (lambda name: (g, g)), independent


def storage_bound(worst, rss):
  """SLACK (worst + LAMBDA rss) of `side_precision.sensitivity`'s two
  pytrees."""
  return jax.tree.map(
      lambda w, r: side_precision.SLACK * (w + LAMBDA * r), worst, rss)


def _model(dtype, scan):
  config = tiny_config(losa=dict(dtype=dtype, zero_init=False),
                       backbone=dict(scan=scan))
  model = build.model_from_config(config)
  x = jax.random.normal(jax.random.key(1), (B, 32, 32, 3))
  params = model.init(jax.random.key(0), x)["params"]
  # Every side and head leaf off its init: no branch is zero or identity.
  keys = iter(jax.random.split(jax.random.key(7), 200))
  params = tree_lib.map_with_names(
      lambda n, v: v + 0.3 * jax.random.normal(next(keys), v.shape)
      if n.startswith(("side/", "head/")) else v, params)
  return config, model, params, x


def _ce(logits):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits, LABELS).mean()


def _library_grads(model, params, x, precomputed):
  """d loss / d {side, head} of the library's default path, and the taps
  [L, B, N, D] and final [B, N, D] it read."""
  def loss(trainable):
    logits, out = model.apply({"params": {**params, **trainable}}, x,
                              precomputed=precomputed)
    return _ce(logits), out
  trainable = {k: params[k] for k in ("side", "head")}
  grads, out = jax.jit(jax.grad(loss, has_aux=True))(trainable)
  taps = out["taps"]
  if out.get("layer_axis", 0) == 1:
    taps = jnp.swapaxes(taps, 0, 1)
  return grads, taps, out["final"]


def _reference_loss(mixer_kw, trainable, taps, final, sites):
  """The same function in float64 (the backbone's pool_type is "tok")."""
  side, head = trainable["side"], trainable["head"]
  a = side_network(mixer_kw, side["layers"]["mixer"], taps, sites)
  refined = sites("refined", final + a)
  f = nn.LayerNorm(epsilon=1e-6).apply({"params": side["LN_out"]}, refined)
  logits = sites("head:out", sites("head:in", f[:, 0]) @ head["kernel"]
                 + head["bias"])
  return _ce(logits)


def _reference(config, trainable, taps, final):
  """(float64 gradients, bound) of the reference at these taps."""
  rank = config.model.losa.rank
  mixer_kw = dict(rank_channel=rank, rank_token=rank)
  with jax.enable_x64(True):
    t64, b64, f64 = side_precision.as_float64((trainable, taps, final))
    rec = side_precision.Sites(None)
    _reference_loss(mixer_kw, t64, b64, f64, rec)
    e0 = side_precision.zeros_like_sites(rec.shapes)

    def grads(e):
      return jax.grad(lambda t: _reference_loss(
          mixer_kw, t, b64, f64, side_precision.Sites(e)))(t64)
    ref = jax.tree.map(np.asarray, jax.jit(grads)(e0))
    n_layers, b, n, d = taps.shape
    worst, independent = (side_precision.units_for(rec.shapes, rule)
                          for rule in storage_units(
                              config.model.losa.dtype, b * max(n, d),
                              n_layers))
    sens = side_precision.sensitivity(grads, e0, worst,
                                      independent=independent,
                                      batch_size=128)
  return ref, storage_bound(*sens)


@pytest.mark.parametrize("dtype,taps_from", [
    ("bfloat16", "unrolled"), ("bfloat16", "scanned"), ("bfloat16", "cache"),
    pytest.param("bfloat16", "cache_layer_major", marks=pytest.mark.slow),
    ("float32", "unrolled"),
    pytest.param("float32", "scanned", marks=pytest.mark.slow),
    ("float32", "cache")])
def test_fused_gradients_within_the_rounding_bound(dtype, taps_from):
  config, model, params, x = _model(dtype, scan=taps_from == "scanned")
  precomputed = None
  if taps_from.startswith("cache"):
    feats = model.apply({"params": params}, x, taps_only=True)
    # A feature cache hands over bf16 taps [B, L, N, D]; a float32 side
    # stream then stacks its z_i apart from them (not in place).
    taps = feats["taps"].astype(jnp.bfloat16)
    precomputed = {"taps": taps, "final": feats["final"]}
    if taps_from == "cache":
      precomputed.update(taps=jnp.swapaxes(taps, 0, 1), layer_axis=1)
  got, taps, final = _library_grads(model, params, x, precomputed)
  assert taps.dtype == (jnp.float32 if dtype == "float32" and
                        precomputed is None else jnp.bfloat16)
  ref, bound = _reference(config, {k: params[k] for k in ("side", "head")},
                          taps, final)
  ratio, where = side_precision.worst_ratio(got, ref, bound)
  assert ratio <= 1.0, (where, ratio)
