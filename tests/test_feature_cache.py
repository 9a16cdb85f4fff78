# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Feature cache: same training as uncached, keys, atomicity, random pp.

Tiny LoSA model (2 blocks, width 32, 32 px) on 24 random uint8 images.
"""
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from losa_jax.assembly import build
from losa_jax.config import schema as config_lib
from losa_jax import feature_cache as fc
from losa_jax.assembly import input_pipeline as ip
from losa_jax import datasets
from losa_jax.datasets import arrays as ds_arrays
from losa_jax import pp as pp_lib

N, BATCH, STEPS = 24, 8, 4
PP = "decode|value_range(-1, 1)|keep('image', 'label')"
# SGD with momentum, not Adam: Adam divides a near-zero gradient by its own
# magnitude, so float reduction-order noise (which differs between the cached
# and the uncached program, and between XLA code generators) would move such
# params by ~1e-4 in opposite directions.
OPT = dict(optax_name="momentum", lr=0.1)


def _arrays(seed=0, n=N):
  rng = np.random.RandomState(seed)
  return {"image": rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8),
          "label": (np.arange(n) % 5).astype(np.int64),
          "index": np.arange(n, dtype=np.int64)}


@pytest.fixture(scope="module")
def setup():
  # A float32 side stream, so that the cached and the uncached step agree to
  # float32 rounding (a bf16 store rounds their f32 differences up to bf16).
  config = tiny_config("losa", losa=dict(dtype="float32"), **OPT)
  built = build.build(config, total_steps=100)
  params = built.init(jax.random.key(0))["params"]
  return config, built, jax.device_get(params)


@pytest.fixture(scope="module")
def cached_step(setup):
  """One jitted cached step for the module (compiled once per dtype)."""
  config, built, _ = setup
  return fc.train_step(config, built)


def _cache(setup, root, *, source=None, pp=PP, params=None, model=None,
           **kw):
  _, built, p0 = setup
  kw = {"dtype": "float32", "storage": "disk", "batch_size": BATCH,
        "log": lambda _: None, **kw}
  return fc.FeatureCache.get_or_create(
      model=model or built.model, params=p0 if params is None else params,
      source=source or ds_arrays.ArraySource(_arrays()), pp=pp, root=str(root), **kw)


def _train(step, state, batches):
  losses = []
  for batch in batches:
    state, m = step(state, jax.tree.map(jnp.asarray, batch))
    losses.append(float(m["loss"]))
  return state, losses


def _uncached(built, source, steps=STEPS):
  """Losses and state of the real pipeline + the real (uncached) step."""
  it, _ = ip.training(source, batch_size=BATCH, pp=PP, seed=0)
  raw = [next(it) for _ in range(steps)]
  state, losses = _train(built.train_step, built.init(jax.random.key(0)),
                         [{"image": b["image"], "label":
                           b["label"].astype(np.int32)} for b in raw])
  return raw, state, losses


def test_cached_training_equals_uncached(setup, cached_step, tmp_path):
  _, built, _ = setup
  src = ds_arrays.ArraySource(_arrays())
  cache = _cache(setup, tmp_path, source=src)
  assert cache.built and cache.location and cache.num_examples == N
  raw, ref_state, ref = _uncached(built, src)

  # Cached (f32, from disk): no backbone; batches in the pipeline's order.
  cached = cache.batches(batch_size=BATCH, seed=0)
  feats = [next(cached) for _ in range(STEPS)]
  for r, f in zip(raw, feats):
    np.testing.assert_array_equal(r["label"], f["label"])
  state, got = _train(cached_step, built.init(jax.random.key(0)), feats)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  assert ref[-1] < ref[0]          # it trains
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5),
               jax.device_get(state["params"]["side"]),
               jax.device_get(ref_state["params"]["side"]))

  # bf16 in memory (the default dtype): the taps in half the bytes, the
  # final features (the head's input) in float32, losses close.
  bf16 = _cache(setup, None, source=src, dtype="bfloat16", storage="memory")
  assert bf16.location is None and bf16.built
  spec, spec16 = cache.meta["arrays"], bf16.meta["arrays"]
  assert "final" not in spec and spec16["final"]["dtype"] == "float32"
  assert spec16["taps"] == {**spec["taps"], "dtype": "bfloat16"}
  taps_bytes = 4 * np.prod(spec["taps"]["shape"])
  assert bf16.nbytes == (cache.nbytes - taps_bytes // 2
                         + 4 * np.prod(spec16["final"]["shape"]))
  feats16 = [next(bf16.batches(batch_size=BATCH, seed=0, start_step=s))
             for s in range(STEPS)]
  assert feats16[0]["image"]["taps"].dtype == jnp.bfloat16
  _, got16 = _train(cached_step, built.init(jax.random.key(0)), feats16)
  np.testing.assert_allclose(got16, ref, rtol=2e-2)


@pytest.mark.parametrize("method", ["losa", "lst", "last"])
def test_cached_training_equals_uncached_at_the_library_defaults(method):
  """bf16 side stream and bf16 cache (both defaults): the cache holds the
  taps the model stores and the final features in float32, so a cached run
  ends where the uncached one does, in every trainable leaf, to 1e-5; for
  each side method."""
  config = tiny_config(method, **OPT)
  assert "dtype" not in (config.model.get(method) or {})  # library default
  built = build.build(config, total_steps=100)
  params = jax.device_get(built.init(jax.random.key(0))["params"])
  src = ds_arrays.ArraySource(_arrays())
  cache = _cache((config, built, params), None, source=src,
                 dtype=fc.DEFAULTS["dtype"], storage="memory")
  assert cache.meta["dtype"] == "bfloat16"
  _, ref_state, ref = _uncached(built, src)
  state, got = _train(fc.train_step(config, built),
                      built.init(jax.random.key(0)),
                      [next(cache.batches(batch_size=BATCH, seed=0,
                                          start_step=s))
                       for s in range(STEPS)])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
  want = jax.device_get({k: v for k, v in ref_state["params"].items()
                         if k != "backbone"})
  moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), want,
                       jax.device_get({k: v for k, v in params.items()
                                       if k != "backbone"}))
  assert max(jax.tree.leaves(moved)) > 1e-2     # training moved them
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5,
                                                       rtol=0),
               jax.device_get({k: v for k, v in state["params"].items()
                               if k != "backbone"}), want)


@pytest.mark.parametrize("side_dtype", ["float32", "bfloat16"])
def test_builds_for_either_side_storage_dtype(setup, side_dtype):
  """The last tap stands in for the final features in the cache; with a
  bf16 side stream the taps are bf16, so that guard compares them with the
  final features rounded alike (it refused every bf16-side build before)."""
  model = build.model_from_config(tiny_config("losa", losa=dict(
      dtype=side_dtype)))
  cache = _cache(setup, None, model=model, dtype="bfloat16", storage="memory")
  assert cache.built and cache.num_examples == N
  taps = cache.gather(np.arange(N))["image"]["taps"]
  assert taps.shape[:2] == (N, 2) and taps.dtype == jnp.bfloat16


@pytest.mark.parametrize("shuffle,start_step", [(True, 0), (True, 5),
                                                (False, 4)])
def test_order_matches_the_input_pipeline(shuffle, start_step):
  """Same example indices per step as input_pipeline.training, resume too."""
  src = ds_arrays.ArraySource(_arrays(n=21))      # 21 % 8 != 0: drop_remainder
  pp = "keep('index')"
  it, n = ip.training(src, batch_size=BATCH, pp=pp, seed=3, shuffle=shuffle,
                      start_step=start_step)
  ours = fc.batch_indices(n, batch_size=BATCH, seed=3, shuffle=shuffle,
                          start_step=start_step)
  for _ in range(7):                        # crosses several epochs
    np.testing.assert_array_equal(next(it)["index"], next(ours))


def test_reused_and_invalidated_on_every_key_part(setup, tmp_path):
  _, built, p0 = setup
  first = _cache(setup, tmp_path)
  again = _cache(setup, tmp_path)
  assert first.built and not again.built and again.key == first.key

  changed_params = jax.tree.map(lambda x: x, p0)
  kernel = changed_params["backbone"]["embedding"]["kernel"]
  changed_params["backbone"]["embedding"]["kernel"] = kernel + 1e-3
  other_data = ds_arrays.ArraySource(_arrays(seed=1))   # same name, new pixels
  other_model = build.model_from_config(tiny_config("losa", losa=dict(
      tap_every=2)))
  keys = {first.key}
  for kw in (dict(params=changed_params), dict(source=other_data),
             dict(pp="decode|value_range(0, 1)|keep('image', 'label')"),
             dict(model=other_model), dict(dtype="bfloat16")):
    c = _cache(setup, tmp_path, **kw)
    assert c.built, kw
    keys.add(c.key)
  assert len(keys) == 6
  # Nothing but complete caches was left behind.
  for name in os.listdir(tmp_path):
    assert fc.read_marker(os.path.join(tmp_path, name)) == name
  del built


def test_partial_or_foreign_cache_is_never_read(setup, tmp_path):
  good = _cache(setup, tmp_path)
  ref = good.gather(np.arange(N))
  path = good.location
  with open(os.path.join(path, "meta.json")) as f:
    assert json.load(f)["key"] == good.key
  part = os.path.join(path, fc.part_name(0, 1))
  assert sorted(os.listdir(path)) == [fc.COMPLETE, "meta.json",
                                      fc.part_name(0, 1)]
  # 1) no COMPLETE marker on the cache: its complete parts verify and are
  # reused, not recomputed.
  os.remove(os.path.join(path, fc.COMPLETE))
  reopened = _cache(setup, tmp_path)
  assert not reopened.built and fc.read_marker(path) == good.key
  np.testing.assert_array_equal(
      reopened.gather(np.arange(N))["image"]["taps"], ref["image"]["taps"])
  # 1b) a part without its marker (e.g. a half copy): recomputed in place.
  os.remove(os.path.join(path, fc.COMPLETE))
  os.remove(os.path.join(part, fc.COMPLETE))
  np.save(os.path.join(part, "taps.npy"), np.zeros((1,), np.uint8))
  rebuilt = _cache(setup, tmp_path)
  assert rebuilt.built and rebuilt.location == path
  np.testing.assert_array_equal(rebuilt.gather(np.arange(N))["image"]["taps"],
                                ref["image"]["taps"])
  # 1c) a part whose rows do not match its meta (a copy cut short): the
  # cache does not open, with the part named; the rebuild replaces it.
  np.save(os.path.join(part, "labels.npy"), np.zeros((1,), np.int32))
  with pytest.raises(fc.CacheError, match=fc.part_name(0, 1)):
    fc.FeatureCache.from_folder(path, good.key)
  assert _cache(setup, tmp_path).built
  # 2) a marker holding another key: the cache is not read; its parts,
  # which hold this key and verify, are, and the marker is rewritten.
  with open(os.path.join(path, fc.COMPLETE), "w") as f:
    f.write("not-this-key\n")
  assert fc.FeatureCache.load(str(tmp_path), good.key) is None
  assert not _cache(setup, tmp_path).built
  assert fc.read_marker(path) == good.key
  # 3) a killed build's temp folder is never picked up.
  os.makedirs(os.path.join(tmp_path, f".tmp-{good.key}-1-dead"))
  assert not _cache(setup, tmp_path).built


def test_failed_build_leaves_no_folder(setup, tmp_path):
  bad_pp = "decode|value_range(-1, 1)|keep('image')"     # drops the label
  with pytest.raises(fc.CacheError, match="no 'label'"):
    _cache(setup, tmp_path, pp=bad_pp)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("pp,op", [
    ("decode|random_crop(24)|value_range(-1, 1)|keep('image', 'label')",
     "random_crop(24)"),
    (["decode|value_range(-1, 1)", "flip_lr|keep('image', 'label')"],
     "flip_lr"),
])
def test_random_pp_is_refused_by_name(setup, tmp_path, pp, op):
  with pytest.raises(fc.RandomPreprocessingError, match=op.replace(
      "(", r"\(").replace(")", r"\)")):
    _cache(setup, tmp_path, pp=pp)
  assert not os.listdir(tmp_path)


def test_unknown_random_op_is_caught_by_running_it(setup, tmp_path):
  name = "fc_test_sprinkle"
  if name not in pp_lib.registered_ops():
    @pp_lib.register(name)
    def _sprinkle():
      def fn(ex):
        ex = dict(ex)
        seed = pp_lib.next_seed(ex, name)
        ex["image"] = ex["image"] + tf.random.stateless_uniform(
            tf.shape(ex["image"]), seed)
        return ex
      return fn
  pp = f"decode|value_range(-1, 1)|{name}|keep('image', 'label')"
  assert fc.find_random_ops(pp) == []               # not by its name...
  with pytest.raises(fc.RandomPreprocessingError, match=name):
    _cache(setup, tmp_path, pp=pp)                  # ...but by running it
  fc.check_deterministic(PP, ds_arrays.ArraySource(_arrays()))


def test_refuses_other_methods_and_bad_options(setup, tmp_path):
  lora = build.model_from_config(tiny_config("lora"))
  with pytest.raises(fc.CacheError, match="needs a side method"):
    _cache(setup, tmp_path, model=lora)
  with pytest.raises(ValueError, match="dtype"):
    _cache(setup, tmp_path, dtype="int8")
  c = tiny_config("lora", total_steps=1, input=dict(
      data={}, batch_size=8, pp=PP))
  c.feature_cache = dict(enabled=True)
  with pytest.raises(ValueError, match="feature_cache.enabled needs"):
    config_lib.validate(c)
  c.model.method = "losa"
  c.feature_cache = dict(enabled=True, dtyp="float32")
  with pytest.raises(ValueError, match="did you mean 'dtype'"):
    config_lib.validate(c)


def test_trainer_with_cache_matches_uncached_steps(setup, tmp_path):
  """The config switch end to end (image folder source, 4 steps): the same
  losses as the uncached pipeline + step on the same folder."""
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  _, built, _ = setup
  root = tmp_path / "imgs"
  data = _arrays()
  for i in range(N):
    d = root / "train" / f"c{data['label'][i]}"
    d.mkdir(parents=True, exist_ok=True)
    tf.io.write_file(str(d / f"{i:03d}.png"),
                     tf.io.encode_png(data["image"][i]))
  source = dict(root=str(root), split="train")
  c = tiny_config("losa", total_steps=STEPS, log_every=2, ckpt_every=0, **OPT,
                  losa=dict(dtype="float32"),
                  input=ml_collections.ConfigDict(dict(
                      data=source, batch_size=BATCH, pp=PP)))
  c.feature_cache = dict(enabled=True, dtype="float32", storage="disk")
  out = train.train_and_evaluate(c, str(tmp_path / "work"))

  _, _, ref = _uncached(built, datasets.get_source(source))
  np.testing.assert_allclose(out["results"]["train/loss"], ref[-1],
                             rtol=1e-5)
  cache_root = tmp_path / "work" / "feature_cache"
  (key,) = os.listdir(cache_root)
  assert fc.read_marker(str(cache_root / key)) == key
