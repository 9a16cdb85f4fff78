# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""LoSA on a ViViT backbone: factorised mixing and the LoSA invariants."""
import functools

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

CLIP = (4, 32, 32)                 # 2 time steps x 16 positions (+ CLS)
X = jax.random.normal(jax.random.key(1), (4, *CLIP, 3))
Y = jnp.array([0, 1, 2, 3])
VIDEO = dict(kind="vivit", temporal_patch_size=2, num_frames=CLIP[0])


def _config(method="losa", losa=None, backbone=None, **kw):
  return tiny_config(method, image_size=CLIP, backbone={**VIDEO,
                                                        **(backbone or {})},
                     losa={"pool": "gap", **(losa or {})}, **kw)


def _init(model):
  return jax.jit(model.init)(jax.random.key(0), X)["params"]


@functools.lru_cache(maxsize=None)
def _default_params():
  return _init(build.model_from_config(_config()))


def _model_params(mixing="space_time", pool="gap"):
  """(model, params), sharing ONE init between the tests (init traces are
  slow on 2 CPUs): pooling does not change the tree, and the space-only
  side network is the space+time one without its `time_2` branch."""
  model = build.model_from_config(_config(losa=dict(
      video_token_mixing=mixing, pool=pool)))
  params = _default_params()
  if mixing == "space":
    mixer = dict(params["side"]["layers"]["mixer"])
    del mixer["time_2"]
    params = {**params, "side": {**params["side"], "layers": {
        **params["side"]["layers"], "mixer": mixer}}}
  want = jax.eval_shape(model.init, jax.random.key(0), X)["params"]
  assert jax.tree.structure(want) == jax.tree.structure(params)
  return model, params


def _apply(model, **kw):
  return jax.jit(lambda p, x: model.apply({"params": p}, x, **kw))


def _randomize(tree, prefix, seed=3, scale=0.3):
  # numpy, not jax.random: one jax kernel per leaf shape would compile.
  rng = np.random.default_rng(seed)
  return tree_lib.map_with_names(
      lambda n, v: (scale * rng.standard_normal(v.shape).astype(np.float32)
                    if n.startswith(prefix) else v), tree)


# --- factorised token mixing -------------------------------------------------

N_T, N_S, D = 3, 5, 6


def _mixer_fn(mixing, grid=(N_T, N_S), num_prefix=0, **kw):
  mixer = side_lib.Mixer(rank_channel=3, rank_token=4, rank_time=2,
                         grid=grid, video_token_mixing=mixing,
                         num_prefix=num_prefix, **kw)
  z = jnp.zeros((2, num_prefix + N_T * N_S, D))
  params = _randomize(jax.eval_shape(mixer.init, jax.random.key(0), z)[
      "params"], "")
  return jax.jit(lambda x: mixer.apply({"params": params}, x)), params


def _grid_perm(x, time_perm=None, space_perm=None):
  g = x.reshape(x.shape[0], N_T, N_S, -1)
  if time_perm is not None:
    g = g[:, time_perm]
  if space_perm is not None:
    g = g[:, :, space_perm]
  return g.reshape(x.shape)


Z = jax.random.normal(jax.random.key(7), (2, N_T * N_S, D))
TIME_PERM = np.array([2, 0, 1])
SPACE_PERM = np.array([4, 2, 0, 3, 1])


# The spatial mixer's weights are per position and shared across frames, the
# temporal mixer's the other way round: each commutes with permuting the axis
# it does not mix, and not with the one it mixes.
@pytest.mark.parametrize("mixing,commutes_with,not_with", [
    ("space", dict(time_perm=TIME_PERM), dict(space_perm=SPACE_PERM)),
    ("time", dict(space_perm=SPACE_PERM), dict(time_perm=TIME_PERM)),
])
def test_factorised_mixer_commutes_with_the_other_axis(mixing, commutes_with,
                                                        not_with):
  f, _ = _mixer_fn(mixing)
  np.testing.assert_allclose(f(_grid_perm(Z, **commutes_with)),
                             _grid_perm(f(Z), **commutes_with),
                             rtol=1e-5, atol=1e-6)
  assert not np.allclose(f(_grid_perm(Z, **not_with)),
                         _grid_perm(f(Z), **not_with), atol=1e-4)


def test_joint_mixer_commutes_with_neither():
  f, _ = _mixer_fn("joint")
  for perm in (dict(time_perm=TIME_PERM), dict(space_perm=SPACE_PERM)):
    assert not np.allclose(f(_grid_perm(Z, **perm)),
                           _grid_perm(f(Z), **perm), atol=1e-4)


@pytest.mark.parametrize("mixing,kinds", [
    ("space_time", ["channel", "space", "time"]),
    ("time_space", ["channel", "time", "space"]),
    ("space", ["channel", "space"]), ("time", ["channel", "time"]),
    ("joint", ["channel", "token"])])
def test_mixing_order_and_switches(mixing, kinds):
  _, params = _mixer_fn(mixing)
  names = sorted(params, key=lambda k: int(k.rsplit("_", 1)[1]))
  assert [n.rsplit("_", 1)[0] for n in names] == kinds
  if "time" in kinds:     # rank_time=2 over n_t=3 frames
    t = params[names[kinds.index("time")]]["mlp"]["down"]["kernel"]
    assert t.shape == (N_T, 2)
  if "space" in kinds:    # rank_token=4 over n_s=5 positions
    s = params[names[kinds.index("space")]]["mlp"]["down"]["kernel"]
    assert s.shape == (N_S, 4)


def test_cls_gets_channel_mixing_only():
  f, _ = _mixer_fn("space_time", num_prefix=1)
  z = jax.random.normal(jax.random.key(8), (2, 1 + N_T * N_S, D))
  other = z.at[:, 1:].set(jax.random.normal(jax.random.key(9),
                                            (2, N_T * N_S, D)))
  np.testing.assert_allclose(f(z)[:, 0], f(other)[:, 0], rtol=1e-6)
  assert not np.allclose(f(z)[:, 1:], f(other)[:, 1:])


def _count(tree):
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


def test_parameter_counts_vivit_b_factorised_vs_joint():
  """docs/method.md 2.4: r=8, d=768, n_t=16, n_s=196 (3,136 tokens + CLS)."""
  z = jax.ShapeDtypeStruct((1, 1 + 16 * 196, 768), jnp.float32)

  def params(mixing):
    m = side_lib.Mixer(rank_channel=8, rank_token=8, grid=(16, 196),
                       num_prefix=1, token_mixer="exclude_cls",
                       video_token_mixing=mixing)
    return jax.eval_shape(m.init, jax.random.key(0), z)["params"]

  fact = params("space_time")
  assert _count(fact) == 21_292
  assert _count(fact["channel_0"]["mlp"]) == 13_064
  assert _count(fact["space_1"]["mlp"]) == 3_340
  assert _count(fact["time_2"]["mlp"]) == 280
  assert _count(params("joint")["token_1"]["mlp"]) == 53_320


# --- LoSA invariants on a ViViT ----------------------------------------------


def test_model_exposes_the_token_grid():
  model, params = _model_params()
  seen = {}

  def fwd(p, x):
    _, out = model.apply({"params": p}, x)
    seen["grid"] = out["token_grid"]
    return out["taps"]
  assert jax.eval_shape(fwd, params, X).shape == (2, 4, 1 + 32, 32)  # [L,B,N,D]
  assert seen["grid"] == (2, 16)
  side = tree_lib.names(params["side"])
  assert any("/space_1/" in n for n in side)
  assert any("/time_2/" in n for n in side)


def test_training_moves_head_first_then_side_never_backbone():
  b = build.build(_config(optax_name="sgd", lr=0.3), total_steps=6)
  state = b.init(jax.random.key(0))
  before = tree_lib.flatten(jax.tree.map(np.array, state["params"]))
  batch = {"image": X, "label": Y}
  losses = []
  for i in range(6):
    state, metrics = b.train_step(state, batch)
    losses.append(float(metrics["loss"]))
    after = tree_lib.flatten(jax.tree.map(np.asarray, state["params"]))
    changed = sorted(n for n, v in before.items()
                     if not np.array_equal(v, after[n]))
    if i == 0:    # zero-init: at step 0 only the head gets a gradient
      assert changed == ["head/bias", "head/kernel"]
  assert not any(n.startswith("backbone/") for n in changed)
  assert "side/layers/mixer/time_2/mlp/up/kernel" in changed
  assert "side/layers/mixer/space_1/mlp/up/kernel" in changed
  assert losses[-1] < losses[0]
  assert not any(v for n, v in b.mask.items() if n.startswith("backbone/"))


def test_taps_do_not_depend_on_side_params_and_backbone_gets_no_grad():
  model, params = _model_params()
  rand = _randomize(_randomize(params, "side/"), "head/", seed=4)
  fwd = jax.jit(lambda p, x: {k: v for k, v in model.apply(
      {"params": p}, x)[1].items() if k in ("taps", "features")})
  out0, out1 = fwd(params, X), fwd(rand, X)
  np.testing.assert_array_equal(out0["taps"], out1["taps"])
  assert not np.array_equal(out0["features"], out1["features"])
  grads = tree_lib.flatten(jax.jit(jax.grad(
      lambda p: jnp.sum(model.apply({"params": p}, X)[0] ** 2)))(rand))
  assert all(not np.any(g) for n, g in grads.items()
             if n.startswith("backbone/"))
  assert any(np.any(g) for n, g in grads.items() if "time_2" in n)


@pytest.mark.parametrize("mixing,pool", [("space_time", "gap"),
                                         ("space", "gap"),
                                         ("space_time", "auto")])
def test_zero_init_is_a_linear_probe(mixing, pool):
  model, params = _model_params(mixing, pool)
  params = _randomize(_randomize(params, "head/"), "side/LN_out/", seed=5)
  def fwd(p, x):
    logits, out = model.apply({"params": p}, x)
    return logits, out["side_state"], out["encoder"]["pre_ln"]
  logits, side_state, pre_ln = jax.jit(fwd)(params, X)
  assert not np.any(side_state)
  f = nn.LayerNorm(epsilon=1e-6).apply({"params": params["side"]["LN_out"]},
                                       pre_ln)
  # "auto" follows the backbone's CLS; "gap" averages the patch tokens.
  pooled = f[:, 0] if pool == "auto" else f[:, 1:].mean(1)
  expected = pooled @ params["head"]["kernel"] + params["head"]["bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_precomputed_taps_need_num_frames_and_match():
  model, params = _model_params()
  params = _randomize(params, "side/")
  logits = _apply(model)(params, X)[0]
  feats = _apply(model, taps_only=True)(params, X)
  again, _ = jax.jit(lambda p, f: model.apply({"params": p}, None,
                                              precomputed=f))(params, feats)
  np.testing.assert_allclose(again, logits, rtol=1e-6, atol=1e-6)
  bare = build.model_from_config(_config(backbone=dict(num_frames=None)))
  with pytest.raises(ValueError, match="num_frames"):
    bare.apply({"params": params}, None, precomputed=feats)


@pytest.mark.parametrize("method", ["linear", "full", "lora", "adapter"])
def test_other_methods_trace_on_the_video_backbone(method):
  b = build.build(_config(method), total_steps=1)
  _, metrics = jax.eval_shape(b.train_step, b.state_shape,
                              {"image": X, "label": Y})
  assert metrics["loss"].shape == ()
  trainable = [n for n, v in b.mask.items() if v and n.startswith("backbone/")]
  assert bool(trainable) == (method != "linear")


def test_unknown_backbone_kind_is_named():
  model = model_lib.Model(3, "losa", backbone=dict(kind="vivid"))
  with pytest.raises(ValueError, match="backbone.kind='vivid'"):
    model.init(jax.random.key(0), X)


def test_video_memory_bench_smoke():
  from losa_jax.bench import sections_compiled  # pylint: disable=g-import-not-at-top
  rows = []
  for method in ("losa", "full"):
    cfg = sections_compiled.video_config("B/16", method, frames=2, batch=1,
                                         depth=1, arg="res=32")
    assert cfg.model.backbone.kind == "vivit"
    rows.append({"config": method, "batch": 1, "depth": 1,
                 **sections_compiled.step_memory(cfg, 1),
                 "fits_16gib": True})
  losa, full = rows
  assert losa["trainable_params"] < full["trainable_params"] / 10
  assert losa["temp_gib"] < full["temp_gib"]
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  report = importlib.util.spec_from_file_location(
      "bench_report", os.path.join(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))), "scripts", "bench_report.py"))
  bench_report = importlib.util.module_from_spec(report)
  report.loader.exec_module(bench_report)
  assert bench_report.video_markdown(rows).count("\n") == 3
