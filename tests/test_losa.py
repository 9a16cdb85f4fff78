# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""LoSA invariants (docs/method.md, section 8) on tiny models."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.utils import tree as tree_lib
from losa_jax.models import model as model_lib
from losa_jax.models import side as side_lib

X = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
Y = jnp.array([0, 1, 2, 3])


def _init(model):
  return model.init(jax.random.key(0), X)["params"]


def _randomize(tree, prefix, seed=3):
  """Random values for every leaf under `prefix` (e.g. to make the side net non-zero)."""
  keys = iter(jax.random.split(jax.random.key(seed), 1000))
  return tree_lib.map_with_names(
      lambda n, v: (0.3 * jax.random.normal(next(keys), v.shape)
                    if n.startswith(prefix) else v), tree)


def _trained_state(config, steps=3):
  b = build.build(config, total_steps=steps)
  state = b.init(jax.random.key(0))
  before = jax.tree.map(np.array, state["params"])
  batch = {"image": X, "label": Y}
  losses = []
  for _ in range(steps):
    state, metrics = b.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  return b, before, state, losses


def test_backbone_bit_identical_after_training():
  b, before, state, losses = _trained_state(tiny_config(), steps=5)
  after = jax.tree.map(np.asarray, state["params"])
  for name, v in tree_lib.flatten(before["backbone"]).items():
    np.testing.assert_array_equal(v, tree_lib.flatten(after["backbone"])[name],
                                  err_msg=name)
  # ... while the side network and head did move.
  assert not np.array_equal(tree_lib.flatten(before)["head/kernel"],
                            tree_lib.flatten(after)["head/kernel"])
  assert losses[-1] < losses[0]


def test_no_backbone_leaf_is_trainable_or_has_optimizer_state():
  b = build.build(tiny_config(), total_steps=1)
  assert not any(v for n, v in b.mask.items() if n.startswith("backbone/"))
  assert all(v for n, v in b.mask.items() if not n.startswith("backbone/"))
  # Frozen params get no optimizer state: moments only for side + head.
  n_moments = sum(x.size for x in jax.tree.leaves(b.state_shape["opt"])
                  if x.ndim > 0)
  assert n_moments == 2 * b.num_trainable()


def test_full_tree_gradient_is_zero_on_backbone():
  model = build.model_from_config(tiny_config())
  params = _randomize(_init(model), "side/")
  params = _randomize(params, "head/", seed=4)

  def loss(p):
    return jnp.sum(model.apply({"params": p}, X)[0] ** 2)
  grads = tree_lib.flatten(jax.grad(loss)(params))
  assert all(not np.any(g) for n, g in grads.items() if n.startswith("backbone/"))
  assert any(np.any(g) for n, g in grads.items() if n.startswith("side/"))


def test_taps_do_not_depend_on_side_params():
  model = build.model_from_config(tiny_config())
  params = _init(model)
  _, out0 = model.apply({"params": params}, X)
  _, out1 = model.apply({"params": _randomize(params, "side/")}, X)
  np.testing.assert_array_equal(out0["taps"], out1["taps"])
  assert not np.array_equal(out0["features"], out1["features"])


@pytest.mark.parametrize("losa", [
    {}, dict(combine="gated"), dict(combine="concat"), dict(tap="attn"),
    dict(mixer_order="token_channel", num_pairs=2), dict(share_weights=True),
    dict(token_mixer="exclude_cls"), dict(norms="none"), dict(tap_every=2)])
def test_zero_init_is_a_linear_probe(losa):
  model = build.model_from_config(tiny_config(losa=losa))
  params = _randomize(_init(model), "head/")
  params = _randomize(params, "side/LN_out/", seed=5)
  logits, out = model.apply({"params": params}, X)
  assert not np.any(out["side_state"])
  ln = nn.LayerNorm(epsilon=1e-6)
  f = ln.apply({"params": params["side"]["LN_out"]},
               out["encoder"]["pre_ln"])[:, 0]
  expected = f @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-6, atol=1e-6)


def test_zero_init_with_backbone_norm_gives_backbone_prelogits():
  config = tiny_config(losa=dict(out_norm="backbone"))
  losa = build.model_from_config(config)
  config.model.method = "linear"
  linear = build.model_from_config(config)
  params = _randomize(_init(losa), "head/")
  _, out_losa = losa.apply({"params": params}, X)
  probe = {k: v for k, v in params.items() if k != "side"}
  _, out_lin = linear.apply({"params": probe}, X)
  np.testing.assert_array_equal(out_losa["features"], out_lin["features"])


def test_concat_head_input_keeps_the_backbones_pre_logits():
  """head_input="concat" on a backbone with pre-logits (rep_size): each
  half of [LN(b_L), LN_out(a_L)] goes through the frozen pre-logits, so the
  first half of the head's input is a linear probe's features, exactly."""
  config = tiny_config(losa=dict(head_input="concat"),
                       backbone=dict(rep_size=24))
  losa = build.model_from_config(config)
  config.model.method = "linear"
  linear = build.model_from_config(config)
  params = _randomize(_init(losa), "backbone/pre_logits/")
  params = _randomize(params, "side/LN_out/", seed=5)
  _, out = losa.apply({"params": params}, X)
  head = params["head"]
  probe = {"backbone": params["backbone"],
           "head": {"kernel": head["kernel"][:24], "bias": head["bias"]}}
  _, out_lin = linear.apply({"params": probe}, X)
  assert out_lin["features"].shape == (len(X), 24)
  assert out["features"].shape == (len(X), 48)
  np.testing.assert_allclose(out["features"][:, :24], out_lin["features"],
                             rtol=0, atol=1e-6)
  # The side half at init: a_L = 0, so LN_out(a_L) is LN_out's bias.
  p = params["backbone"]["pre_logits"]
  side = jnp.tanh(params["side"]["LN_out"]["bias"] @ p["kernel"] + p["bias"])
  np.testing.assert_allclose(out["features"][:, 24:],
                             np.broadcast_to(side, (len(X), 24)), atol=1e-6)


def _count(params, prefixes):
  return sum(int(np.prod(v.shape)) for n, v in tree_lib.flatten(params).items()
             if n.split("/")[0] in prefixes)


@pytest.mark.parametrize("rank,total,side", [(4, 219_616, 142_716),
                                             (8, 312_352, 235_452),
                                             (16, 497_824, 420_924)])
def test_parameter_count_formula_vit_b16(rank, total, side):
  model = model_lib.Model(100, method="losa",
                          backbone=dict(variant="B/16", pool_type="tok"),
                          losa=dict(rank=rank))
  shape = jax.eval_shape(model.init, jax.random.key(0),
                         jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert _count(shape["params"], ("side", "head")) == total
  assert _count(shape["params"], ("side",)) == side
  d, n, layers = 768, 197, 12
  assert side == layers * (2 * rank * (d + n + 1) + 5 * d + n) + 2 * d


def test_trainable_count_ignores_mlp_width_and_heads():
  counts = set()
  for mlp, heads in ((64, 2), (256, 4)):
    b = build.build(tiny_config(backbone=dict(mlp_dim=mlp, num_heads=heads)),
                    total_steps=1)
    counts.add(b.num_trainable())
  assert len(counts) == 1


def test_first_step_updates_only_the_head():
  _, before, state, _ = _trained_state(tiny_config(optax_name="sgd", lr=0.1),
                                       steps=1)
  after = tree_lib.flatten(jax.tree.map(np.asarray, state["params"]))
  changed = sorted(n for n, v in tree_lib.flatten(before).items()
                   if not np.array_equal(v, after[n]))
  assert changed == ["head/bias", "head/kernel"]


def test_mixer_shapes():
  mixer = side_lib.Mixer(rank_channel=3, rank_token=5, fused=False)
  z = jax.random.normal(jax.random.key(0), (2, 17, 32))
  params = mixer.init(jax.random.key(1), z)["params"]
  assert mixer.apply({"params": params}, z).shape == z.shape
  hid = {}
  side_lib.reference_mixer(mixer, params, z,
                           lambda name, x: hid.setdefault(name, x))
  assert hid["channel_0/mlp/down:out"].shape == (2, 17, 3)
  assert hid["token_1/mlp/down:out"].shape == (2, 32, 5)


def test_token_width_zero_is_not_read_from_the_grid():
  """CLS alone, left out of token mixing: a token MLP over 0 tokens."""
  mixer = side_lib.Mixer(rank_channel=3, rank_token=5, num_prefix=1,
                         token_mixer="exclude_cls")
  spec = mixer.spec(1, 32)["token_1"]["mlp"]
  assert spec["down"]["kernel"][0] == (0, 5)
  assert spec["up"]["kernel"][0] == (5, 0)


@pytest.mark.parametrize("bad,match", [
    (dict(combine="mul"), "combine"), (dict(token_mixer="conv"), "token_mixer"),
    (dict(tap="qkv"), "tap"), (dict(ranks=3), "Unknown losa option"),
    (dict(head_input="side", state="stream"), "stream"),
    (dict(fused="yes"), "fused")])
def test_bad_switch_is_named(bad, match):
  model = build.model_from_config(tiny_config(losa=bad))
  with pytest.raises(ValueError, match=match):
    _init(model)


@pytest.mark.parametrize("fused", [True, False])
def test_token_mixer_output_bias_is_a_null_direction_with_zero_gradient(
    fused):
  """The token MLP's output bias adds one value per token to every channel,
  and every reader of the side stream normalises each token over its
  channels: shifting it changes no logit (float32), so its exact gradient
  is 0, which both paths return (not rounding noise, which Adam would turn
  into drift)."""
  config = tiny_config(losa=dict(dtype="float32", zero_init=False,
                                 fused=fused))
  model = build.model_from_config(config)
  params = _randomize(_init(model), "head/")
  name = "side/layers/mixer/token_1/mlp/up/bias"
  flat = tree_lib.flatten(params)
  shifted = tree_lib.unflatten({**flat, name: flat[name] + 0.5 * jax.random.
                                normal(jax.random.key(9), flat[name].shape)})
  logits = model.apply({"params": params}, X)[0]
  np.testing.assert_allclose(model.apply({"params": shifted}, X)[0], logits,
                             rtol=0, atol=1e-5)
  assert float(jnp.max(jnp.abs(logits))) > 0.1      # not trivially zero

  def loss(p):
    return jnp.mean(model.apply({"params": p}, X)[0] ** 2)
  grads = tree_lib.flatten(jax.grad(loss)(params))
  assert not np.any(np.asarray(grads[name]))
  assert np.any(np.asarray(grads["side/layers/mixer/token_1/mlp/up/kernel"]))
