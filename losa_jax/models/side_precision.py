# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Float64 references of the side network and first-order rounding bounds.

One bound for tests/test_side_grads.py and the device check
(`losa_jax.bench.accelerator_check.compare_precision`). The reference is
autodiff of `side.reference_mixer` in float64; a rounding at a "site" x is
x (1 + d), |d| <= u, forward and on the cotangent through x, so per
gradient entry

    bound = SLACK * sum_s u_s |dg/de_s|

with dg/de by reverse mode through the reference's own backward
(tests/test_side_grads.py bounds the many independent bf16 stores in
probability). Derivation: docs/method.md, "Precision of the default path".
"""
from typing import Any, Callable, Dict, Optional, Tuple

import flax
import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from losa_jax.utils import tree as tree_lib
from losa_jax.models import side as side_lib

# Unit roundoff u = 2^-p (half the spacing 2^(1-p) just above 1) of a
# significand of p bits, the implicit leading one included: float32 24;
# bfloat16 8 (7 stored), the side stream's storage and a TPU's one-pass
# float32 dot ("bf16"); TF32 11 (10 stored), a GPU's float32 dot.
UNIT_ROUNDOFF = {"float32": 2.0 ** -24, "bfloat16": 2.0 ** -8,
                 "tf32": 2.0 ** -11, "bf16": 2.0 ** -8}
SLACK = 2.0


def _site(x, e):
  """x (1 + e_f) forward; the cotangent through x scaled by (1 + e_b)."""
  ef, eb = e
  return x * (1 + eb) - jax.lax.stop_gradient(x) * (eb - ef)


class Sites:
  """The perturbations of one reference evaluation, by site name.

  `Sites(None)` records each site's shape (`shapes`) and perturbs nothing;
  `Sites(e)` applies e[name] = (e_f, e_b) arrays of that shape.
  """

  def __init__(self, e: Optional[Dict[str, Tuple[Any, Any]]]):
    self.e = e
    self.shapes: Dict[str, Tuple[int, ...]] = {}

  def __call__(self, name: str, x):
    if self.e is None:
      self.shapes[name] = x.shape
      return x
    return _site(x, self.e[name])


def mixer(mixer_kw: Dict[str, Any], params, z, sites: Sites, prefix=""):
  """delta [B, N, D] of `side.reference_mixer` (autodiff of plain
  LayerNorm and Dense math), float64 for float64 inputs, with sites at z,
  delta, every param and every Dense's input and output."""
  params = tree_lib.map_with_names(
      lambda k, v: sites(f"{prefix}param:{k}", v), params)
  delta = side_lib.reference_mixer(
      side_lib.Mixer(**mixer_kw, parent=None), params,
      sites(prefix + "z", z), lambda name, x: sites(prefix + name, x))
  return sites(prefix + "delta", delta)


def zeros_like_sites(shapes: Dict[str, Tuple[int, ...]], dtype=jnp.float64):
  return {k: (jnp.zeros(s, dtype), jnp.zeros(s, dtype))
          for k, s in shapes.items()}


def sensitivity(grads_of_sites: Callable, e0, units, *, independent=None,
                batch_size: Optional[int] = None):
  """sum_s units_s |dg_k/de_s| for every entry k of g = grads_of_sites(e);
  with `independent`, also sqrt(sum_s (independent_s dg_k/de_s)^2).

  Args:
    grads_of_sites: e (a dict like `e0`) -> a pytree of gradients.
    e0: the zero perturbations, {name: (e_f, e_b)}.
    units: {name: (u_f, u_b)} unit roundoffs (scalars) of each site, for
      the worst case over the signs of the roundings.
    independent: the same for roundings taken as independent, or None.
    batch_size: Jacobian rows computed at once (None: all).

  Returns:
    the worst-case pytree, like grads_of_sites(e0), float64 numpy; with
    `independent`, (worst case, root sum of squares).
  """
  flat_e, unravel = ravel_pytree(e0)

  def per_element(u):
    return ravel_pytree({k: tuple(jnp.full_like(x, v) for x, v in
                                  zip(e0[k], u[k])) for k in e0})[0]
  flat_u = per_element(units)
  flat_i = per_element(independent or units)
  _, unravel_g = ravel_pytree(jax.tree.map(
      lambda a: np.zeros(a.shape, a.dtype),
      jax.eval_shape(grads_of_sites, e0)))

  def flat_g(fe):
    return ravel_pytree(grads_of_sites(unravel(fe)))[0]

  @jax.jit
  def run(fe):
    # The Jacobian's rows [site elements], by reverse mode; `batch_size`
    # rows at a time, or all at once.
    g, vjp = jax.vjp(flat_g, fe)
    eye = jnp.eye(g.size, dtype=g.dtype)

    def row(ct):
      j = vjp(ct)[0]
      return jnp.abs(j) @ flat_u, jnp.sqrt(jnp.sum((j * flat_i) ** 2))
    if batch_size is None:
      return jax.vmap(row)(eye)
    return jax.lax.map(row, eye, batch_size=batch_size)
  worst, rss = (jax.tree.map(np.asarray, unravel_g(r)) for r in run(flat_e))
  return worst if independent is None else (worst, rss)


def units_for(shapes, rule: Callable[[str], Tuple[float, float]]):
  """{name: rule(name)} for every recorded site."""
  return {k: rule(k) for k in shapes}


def worst_ratio(got, ref, bound, floor: float = 0.0) -> Tuple[float, str]:
  """max over entries of |got - ref| / bound, and the leaf where it is."""
  fg, fr, fb = (tree_lib.flatten(t) for t in (got, ref, bound))
  worst, where = 0.0, ""
  for name, b in fb.items():
    err = np.abs(np.asarray(fg[name], np.float64) - fr[name])
    b = np.maximum(b, floor)
    # 0 / 0 is 0 (an entry exact in both); err / 0 is inf.
    ratio = np.divide(err, b, out=np.where(err > 0, np.inf, 0.0),
                      where=b > 0)
    r = float(np.max(ratio)) if err.size else 0.0
    if r > worst:
      worst, where = r, name
  return worst, where


def as_float64(tree):
  """Every leaf as a float64 jax array (call under jax.enable_x64)."""
  return jax.tree.map(lambda v: jnp.asarray(np.asarray(v, np.float64)), tree)


def mixer_reference(mixer_kw, params, z, loss: Callable,
                    rule: Callable[[str], Tuple[float, float]]):
  """Float64 {"params", "z"} gradients of loss(delta) of the autodiff mixer
  at (params, z), and their `sensitivity` with the site units of `rule`."""
  with jax.enable_x64(True):
    p64, z64 = as_float64((params, z))
    rec = Sites(None)
    mixer(mixer_kw, p64, z64, rec)
    e0 = zeros_like_sites(rec.shapes)

    def grads(e):
      gp, gz = jax.grad(lambda p, x: loss(mixer(mixer_kw, p, x, Sites(e))),
                        argnums=(0, 1))(p64, z64)
      return {"params": gp, "z": gz}
    ref = jax.tree.map(np.asarray, jax.jit(grads)(e0))
    return ref, sensitivity(grads, e0, units_for(rec.shapes, rule))


def emulation_units(name: str) -> Tuple[float, float]:
  """Sites a default-precision dot of the fused mixer reads or writes (unit
  1: scale by the mode's unit roundoff): all but the input z, which only
  the HIGHEST products read."""
  return (0.0, 0.0) if name == "z" else (1.0, 1.0)


def off_centre_case(offset: float, *, shape=(2, 9, 16), ranks=(4, 5),
                    seed: int = 0):
  """(mixer_kw, params, z) of the precision checks: rows of z at mean
  `offset` with std ~3 (as a ViT's residual stream), and every param moved
  off its init by 0.3 N(0, 1), so no branch is zero or identity."""
  kw = dict(rank_channel=ranks[0], rank_token=ranks[1])
  base = jax.random.normal(jax.random.key(seed), shape)
  z = offset + 3.0 * base + jnp.linspace(-5.0, 5.0, shape[-1])
  params = side_lib.Mixer(**kw, fused=False).init(jax.random.key(1), z)
  keys = iter(jax.random.split(jax.random.key(5), 100))
  params = jax.tree.map(lambda v: v + 0.3 * jax.random.normal(
      next(keys), v.shape), flax.core.unfreeze(params["params"]))
  return kw, params, z


def cos_loss(delta):
  """A loss whose cotangent -sin(delta) is dense and of either sign."""
  return jnp.sum(jnp.cos(delta))


def emulation_bound(err_float32, sens_unit, mode: str):
  """The bound on |g - g_ref| of a run whose default-precision dots round
  their operands to `mode` ("tf32", "bf16"): the same program's error with
  exact float32 dots (err_float32), plus SLACK u_mode S (sens_unit: S at
  unit roundoff 1, `emulation_units`)."""
  u = UNIT_ROUNDOFF[mode]
  return jax.tree.map(lambda e, s: np.abs(e) + SLACK * u * s, err_float32,
                      sens_unit)
