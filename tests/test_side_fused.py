# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The default mixer's hand-written backward (losa_jax/models/side_fused.py).

Invariants: the same params and the same function as autodiff of the
branch modules (`fused=False`), gradients included, within float32
rounding; the same training run; every other structure falls back to
autodiff; and the compiled step moves fewer bytes and replays nothing.
"""
import collections

import flax
import jax
from jax.extend import core as jax_core
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.utils import cost
from losa_jax.utils import tree as tree_lib
from losa_jax.feature_cache import training as cache_training
from losa_jax.models import side as side_lib
from losa_jax.models import side_fused
from losa_jax.models import side_precision

Z = jax.random.normal(jax.random.key(0), (3, 17, 32))


def _noisy(params, seed=5, scale=0.3):
  """Every leaf moved off its init, so no branch is zero or identity."""
  keys = iter(jax.random.split(jax.random.key(seed), 100))
  return jax.tree.map(lambda v: v + scale * jax.random.normal(next(keys),
                                                              v.shape), params)


def _assert_close(a, b, rtol=2e-5, what="", floor=1e-12):
  """Leafwise |a - b| <= rtol * max(max|b|, floor) (floor: leaves that stay
  at ~0, e.g. a bias whose gradient sums to zero, compare at that scale)."""
  for name, x in tree_lib.flatten(a).items():
    y = tree_lib.flatten(b)[name]
    scale = max(float(np.max(np.abs(y))), floor)
    np.testing.assert_allclose(x, y, atol=rtol * scale, err_msg=f"{what}{name}")


@pytest.mark.parametrize("ranks", [(4, 4), (3, 5)])
def test_fused_mixer_equals_autodiff_values_and_gradients(ranks):
  kw = dict(rank_channel=ranks[0], rank_token=ranks[1])
  fused, plain = side_lib.Mixer(**kw), side_lib.Mixer(**kw, fused=False)
  assert fused.uses_fused_vjp() and not plain.uses_fused_vjp()
  params = _noisy(plain.init(jax.random.key(1), Z)["params"])
  assert tree_lib.flatten(fused.init(jax.random.key(1), Z)["params"]).keys() \
      == tree_lib.flatten(params).keys()

  def loss(mixer):
    def f(p, z):
      delta = mixer.apply({"params": p}, z)
      return jnp.sum(jnp.sin(delta) * z), delta    # a non-trivial cotangent
    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)

  (l_f, d_f), (gp_f, gz_f) = loss(fused)(params, Z)
  (l_p, d_p), (gp_p, gz_p) = loss(plain)(params, Z)
  np.testing.assert_allclose(d_f, d_p, atol=2e-5 * float(jnp.max(jnp.abs(d_p))))
  np.testing.assert_allclose(l_f, l_p, rtol=1e-5)
  _assert_close(gp_f, gp_p, what="d/d")
  _assert_close({"z": gz_f}, {"z": gz_p}, what="d/d")


def _max_rel_err(a, b):
  fa, fb = tree_lib.flatten(a), tree_lib.flatten(b)
  return max(float(np.max(np.abs(np.asarray(fa[n], np.float64) - fb[n]))
                   / max(float(np.max(np.abs(fb[n]))), 1e-12)) for n in fb)


@pytest.mark.parametrize("offset", [40.0, 400.0])
def test_folded_layer_norms_are_as_accurate_as_autodiff_off_centre(offset):
  """The fused mixer never forms LN(z): it subtracts the row means after
  the low-rank products (z W - m 1^T W). Residual streams of real ViTs are
  far from zero-mean per token, so compare both float32 implementations
  with a float64 reference on rows at mean 40 and 400 (std ~4): the fused
  gradients are within 3x of autodiff's own float32 error (measured: 1.7x
  at 40, 0.6-1.0x at 400, where flax's E[x^2] - E[x]^2 loses digits too)."""
  z = offset + 3.0 * Z + jnp.linspace(-5.0, 5.0, Z.shape[-1])
  fused, plain = (side_lib.Mixer(rank_channel=4, rank_token=5, fused=f)
                  for f in (True, False))
  params = _noisy(plain.init(jax.random.key(1), z)["params"])

  def grads(mixer, dtype):
    p, x = jax.tree.map(lambda v: v.astype(dtype), (params, z))
    return jax.grad(lambda p, x: jnp.sum(jnp.cos(
        mixer.apply({"params": p}, x))), argnums=(0, 1))(p, x)
  with jax.enable_x64(True):
    ref = jax.tree.map(np.asarray, grads(plain, jnp.float64))
  errs = {}
  for name, mixer in (("fused", fused), ("autodiff", plain)):
    g = grads(mixer, jnp.float32)
    errs[name] = (_max_rel_err(g[0], ref[0]),
                  _max_rel_err({"z": g[1]}, {"z": ref[1]}))
  for k in range(2):
    assert errs["fused"][k] <= 3 * errs["autodiff"][k] + 1e-6, errs


@pytest.fixture(scope="module", params=[40.0, 400.0])
def off_centre(request):
  """An off-centre mixer case, its float64 gradients and their first-order
  sensitivity to the operands of the default-precision products."""
  kw, params, z = side_precision.off_centre_case(request.param)
  ref, sens = side_precision.mixer_reference(
      kw, params, z, side_precision.cos_loss, side_precision.emulation_units)
  return params, z, ref, sens


def _fused_grads(params, z):
  gp, gz = jax.grad(lambda p, x: side_precision.cos_loss(
      side_lib.fused_mixer(p, x)), argnums=(0, 1))(params, z)
  return {"params": gp, "z": gz}


@pytest.mark.parametrize("mode", ["tf32", "bf16"])
def test_emulated_accelerator_precision_stays_within_the_bound(off_centre,
                                                               mode):
  """GPUs round the operands of float32 dots to TF32 by default, TPUs to
  one bf16 pass. With those roundings emulated (`emulated_precision`), the
  fused mixer's gradients on rows at mean 40 and 400 stay within
  side_precision.emulation_bound of the float64 reference: the same code's
  error with exact float32 dots plus 2 u sum_s |dg/de_s| over the operands
  of the default-precision products (docs/method.md, "Precision of the
  default path"). Worst |g - g_ref| / bound at mean 400: 0.33 (tf32) and
  0.47 (bf16). A product whose row mean is subtracted afterwards, left at
  default precision, breaks it there: LN's gamma as a GEMM column 1.5
  (tf32) and 1.25 (bf16); sg2 2.4 (tf32; 0.76 under bf16)."""
  params, z, ref, sens = off_centre
  g32 = jax.jit(_fused_grads)(params, z)
  err32 = jax.tree.map(lambda g, r: np.asarray(g, np.float64) - r, g32, ref)
  with side_fused.emulated_precision(mode):
    got = jax.jit(lambda p, x: _fused_grads(p, x))(params, z)
  assert any(not np.array_equal(v, tree_lib.flatten(g32)[k])   # it rounded
             for k, v in tree_lib.flatten(got).items())
  ratio, where = side_precision.worst_ratio(
      got, ref, side_precision.emulation_bound(err32, sens, mode))
  assert ratio <= 1.0, (mode, where, ratio)


def test_emulation_off_is_the_plain_program():
  """The switch costs nothing when off: no operand is rounded. On, the same
  products run, each default-precision one with its two operands rounded,
  the HIGHEST ones (the cancelling products) untouched."""
  params = flax.core.unfreeze(_noisy(side_lib.Mixer(
      rank_channel=4, rank_token=4, fused=False).init(jax.random.key(1),
                                                       Z)["params"]))

  def counts(mode):
    with side_fused.emulated_precision(mode):
      return _count(jax.make_jaxpr(_fused_grads)(params, Z).jaxpr)
  off, tf32 = counts(None), counts("tf32")
  assert off["reduce_precision"] == 0 and off["highest"] >= 7
  assert off["dot_general"] == tf32["dot_general"]
  assert tf32["reduce_precision"] == 2 * (off["dot_general"] - off["highest"])
  with pytest.raises(ValueError, match="tf32"):
    with side_fused.emulated_precision("fp8"):
      pass


def _count(jaxpr, counts=None):
  """Primitive counts of a jaxpr and the jaxprs inside it; "highest": the
  dot_generals run at Precision.HIGHEST before any emulation."""
  counts = collections.Counter() if counts is None else counts
  for eqn in jaxpr.eqns:
    counts[eqn.primitive.name] += 1
    if eqn.primitive.name == "dot_general" and "HIGHEST" in str(
        eqn.params.get("precision")):
      counts["highest"] += 1
    for sub in jax_core.jaxprs_in_params(eqn.params):
      _count(sub, counts)
  return counts


def test_bf16_storage_uses_the_fused_path():
  """bf16 is a storage dtype: the mixer's math is float32 either way."""
  mixer = side_lib.Mixer(rank_channel=4, rank_token=4)
  params = _noisy(mixer.init(jax.random.key(1), Z)["params"])
  z16 = Z.astype(jnp.bfloat16)
  out = mixer.apply({"params": params}, z16)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(
      out, mixer.apply({"params": params}, z16.astype(jnp.float32)))


def _config(**losa):
  # A float32 side stream: the two paths agree to float32 rounding, which a
  # bf16 store (the default) would round up to a bf16 ulp now and then.
  return tiny_config(losa=dict(zero_init=False, dtype="float32", **losa))


def _sgd(config):
  config.optax_name = "sgd"
  return config


def test_training_run_matches_autodiff():
  x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  batch = {"image": x, "label": jnp.array([0, 1, 2, 3])}
  runs = {}
  for fused in (True, False):
    # SGD: an update is the gradient (Adam would blow rounding noise on
    # near-zero gradient entries up to +-lr).
    b = build.build(_sgd(_config(fused=fused)), total_steps=3)
    state = b.init(jax.random.key(0))
    losses = []
    for _ in range(3):
      state, m = b.train_step(state, batch)
      losses.append(float(m["loss"]))
    runs[fused] = losses, state["params"]
  np.testing.assert_allclose(runs[True][0], runs[False][0], rtol=1e-5)
  _assert_close(runs[True][1]["side"], runs[False][1]["side"], rtol=1e-5,
                floor=1e-3)


def test_population_vmap_of_the_fused_step():
  """Populations vmap the trainer's step over members (custom_vjp batched)."""
  mixer = side_lib.Mixer(rank_channel=4, rank_token=4)
  plain = side_lib.Mixer(rank_channel=4, rank_token=4, fused=False)
  init = plain.init(jax.random.key(1), Z)["params"]
  members = jax.tree.map(lambda *v: jnp.stack(v),
                         *[_noisy(init, seed=s) for s in range(3)])

  def grads(m):
    return jax.vmap(jax.grad(lambda p: jnp.sum(
        m.apply({"params": p}, Z) ** 2)))(members)
  _assert_close(grads(mixer), grads(plain), what="vmapped d/d")


@pytest.mark.parametrize("fused", [True, False])
def test_the_option_picks_the_implementation_in_init_and_apply(fused):
  """`fused` alone picks the mixer: init runs the code that apply runs."""
  mixer = side_lib.Mixer(rank_channel=4, rank_token=4, fused=fused)
  key = jax.random.key(1)
  variables = mixer.init(key, Z)
  for jaxpr in (jax.make_jaxpr(mixer.init)(key, Z),
                jax.make_jaxpr(mixer.apply)(variables, Z)):
    assert ("custom_vjp_call" in str(jaxpr)) == fused


@pytest.mark.parametrize("kw", [
    dict(norms="post"), dict(norms="none"), dict(token_mixer="exclude_cls"),
    dict(token_mixer="full_rank"), dict(token_mixer="none"),
    dict(mixer_order="token_channel"), dict(num_pairs=2),
    dict(grid=(2, 8)), dict(fused=False)])
def test_other_structures_use_autodiff(kw):
  assert not side_lib.Mixer(**kw).uses_fused_vjp()


def test_cached_step_moves_fewer_bytes_and_replays_nothing():
  config = tiny_config(image_size=224, backbone=dict(
      width=192, depth=4, mlp_dim=384, num_heads=3, patch_size=(16, 16)))
  feats = {"image": {"taps": jax.ShapeDtypeStruct((8, 4, 197, 192),
                                                  jnp.bfloat16)},
           "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
  traffic, temp = {}, {}
  for fused in (True, False):
    config.model.losa.fused = fused
    b = build.build(config, total_steps=10)
    compiled = cache_training.train_step(config, b).lower(
        b.state_shape, feats).compile()
    traffic[fused] = cost.traffic_by(cost.hlo_traffic(compiled), cost.phase)
    temp[fused] = cost.cost_of_compiled(compiled)["temp_bytes"]
  assert traffic[True].get("replay", 0.0) == 0.0 < traffic[False]["replay"]
  # 0.75x of autodiff+remat at ViT-B/16 (docs/benchmarks.md).
  assert sum(traffic[True].values()) < 0.85 * sum(traffic[False].values())
  # One stack of z_i kept for the backward instead of remat's carries
  # beside the taps (0.63x at ViT-B/16).
  assert temp[True] < 0.85 * temp[False]
