# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The backbone matches big_vision's ViT param tree and behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losa_jax.utils import tree as tree_lib
from losa_jax.models import vit

X = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))

# big_vision's names for variant mu at patch 8 with pool_type="tok" (see
# docs: the parameter tree table of big_vision/models/vit.py).
BIG_VISION_MU_TOK = sorted([
    "cls", "embedding/bias", "embedding/kernel", "pos_embedding",
    "head/bias", "head/kernel",
    "Transformer/encoder_norm/bias", "Transformer/encoder_norm/scale",
] + [f"Transformer/encoderblock_0/{n}" for n in [
    "LayerNorm_0/bias", "LayerNorm_0/scale", "LayerNorm_1/bias",
    "LayerNorm_1/scale", "MlpBlock_0/Dense_0/bias", "MlpBlock_0/Dense_0/kernel",
    "MlpBlock_0/Dense_1/bias", "MlpBlock_0/Dense_1/kernel"] + [
        f"MultiHeadDotProductAttention_0/{p}/{w}"
        for p in ("query", "key", "value", "out") for w in ("bias", "kernel")]])


def _params(model, x=X):
  return model.init(jax.random.key(0), x)["params"]


def test_param_tree_is_big_vision():
  p = _params(vit.Model(10, variant="mu/8", pool_type="tok"))
  assert tree_lib.names(p) == BIG_VISION_MU_TOK
  flat = tree_lib.flatten(p)
  assert flat["embedding/kernel"].shape == (8, 8, 3, 32)
  assert flat["pos_embedding"].shape == (1, 16, 32)   # no cls slot
  assert flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"
              "query/kernel"].shape == (32, 2, 16)
  assert flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"
              "out/kernel"].shape == (2, 16, 32)


@pytest.mark.parametrize("variant,width,depth,mlp,heads,patch", [
    ("Ti/16", 192, 12, 768, 3, (16, 16)), ("B/16", 768, 12, 3072, 12, (16, 16)),
    ("g/14", 1408, 40, 6144, 16, (14, 14)), ("e/14", 1792, 56, 15360, 16, (14, 14)),
])
def test_variants(variant, width, depth, mlp, heads, patch):
  assert vit.decode_variant(variant) == dict(
      width=width, depth=depth, mlp_dim=mlp, num_heads=heads, patch_size=patch)


def _big_vision_count(width, depth, mlp_dim, patch=16, res=224):
  """Params of big_vision's ViT, pool_type="tok", learned posemb, no head.

  By hand from big_vision/models/vit.py: a patch-embedding conv with bias;
  a cls token; a position embedding over the patches only (no cls slot);
  per block two LayerNorms (scale, bias), query/key/value/out projections
  each with a bias, and an MLP with biases; a final LayerNorm.
  """
  d, m, tokens = width, mlp_dim, (res // patch) ** 2
  embedding = patch * patch * 3 * d + d
  attention = 4 * d * d + 4 * d             # q, k, v, out: kernel + bias
  block = 2 * 2 * d + attention + (d * m + m) + (m * d + d)
  return embedding + d + tokens * d + depth * block + 2 * d


# timm's published counts with its 1000-class head (timm.create_model(...)
# .num_params, e.g. vit_base_patch16_224 = 86,567,656): timm's position
# embedding has one more slot (for cls) than big_vision's, and its head is
# Dense(width -> 1000) with bias.
TIMM_1000 = {"Ti/16": 5_717_416, "S/16": 22_050_664, "B/16": 86_567_656,
             "L/16": 304_326_632}


def _count(variant, num_classes=None):
  shape = jax.eval_shape(
      vit.Model(num_classes, variant=variant, pool_type="tok").init,
      jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  return tree_lib.count(shape)


@pytest.mark.parametrize("variant,width,depth,mlp,expected", [
    ("Ti/16", 192, 12, 768, 5_524_224), ("S/16", 384, 12, 1536, 21_665_280),
    ("B/16", 768, 12, 3072, 85_797_888),
    ("L/16", 1024, 24, 4096, 303_300_608)])
def test_variant_param_counts_match_big_vision(variant, width, depth, mlp,
                                               expected):
  # The hand count, checked against timm's published numbers.
  assert _big_vision_count(width, depth, mlp) == expected
  assert expected + width + (width * 1000 + 1000) == TIMM_1000[variant]
  # Exact: a model without its attention biases (4 * width * depth, 36,864
  # at B/16) or any other leaf is off by at least one width.
  assert _count(variant) == expected
  assert _count(variant, 1000) == TIMM_1000[variant] - width


def test_unknown_variant_lists_choices():
  with pytest.raises(ValueError, match="must be one of"):
    vit.decode_variant("Q/16")


@pytest.mark.parametrize("pool", ["tok", "gap", "map", "0", "none"])
def test_pool_types(pool):
  m = vit.Model(None if pool == "none" else 7, variant="mu/8", pool_type=pool)
  y, out = m.apply({"params": _params(m)}, X)
  assert y.shape == ((2, 17 if pool == "tok" else 16, 32) if pool == "none"
                     else (2, 7))
  n = 17 if pool == "tok" else 16
  assert out["encoder"]["block00"]["+mlp"].shape == (2, n, 32)


def test_sincos_posemb_has_no_param():
  p = _params(vit.Model(3, variant="mu/8", posemb="sincos2d"))
  assert "pos_embedding" not in p


def test_scan_matches_loop():
  loop = vit.Model(4, variant="mu/8", depth=3, pool_type="tok")
  scan = vit.Model(4, variant="mu/8", depth=3, pool_type="tok", scan=True)
  p = _params(loop)
  p = jax.tree.map(np.asarray, p)
  sp = {k: v for k, v in p.items() if k != "Transformer"}
  blocks = [p["Transformer"][f"encoderblock_{i}"] for i in range(3)]
  sp["Transformer"] = {
      "encoder_norm": p["Transformer"]["encoder_norm"],
      "encoderblock": jax.tree.map(lambda *a: np.stack(a), *blocks)}
  sp["head"] = {"kernel": np.ones_like(p["head"]["kernel"]),
                "bias": p["head"]["bias"]}
  p["head"] = sp["head"]
  y1, o1 = loop.apply({"params": p}, X)
  y2, o2 = scan.apply({"params": sp}, X)
  np.testing.assert_allclose(y1, y2, atol=1e-5)
  np.testing.assert_allclose(o1["encoder"]["block02"]["+mlp"],
                             o2["encoder"]["block02"]["+mlp"], atol=1e-5)
  assert o2["encoder"]["stacked"]["+mlp"].shape == (3, 2, 17, 32)


def test_bf16_matmuls_give_bf16_taps_and_f32_logits():
  m = vit.Model(3, variant="mu/8", dtype_mm="bfloat16", head_zeroinit=False)
  y, out = m.apply({"params": _params(m)}, X)
  assert out["encoder"]["block00"]["+mlp"].dtype == jnp.bfloat16
  assert y.dtype == jnp.float32


@pytest.mark.parametrize("kw", [dict(lora_rank=2, lora_targets="all"),
                                dict(adapter_dim=4, adapter_placement="both")])
def test_peft_modules_start_as_identity(kw):
  plain = vit.Model(3, variant="mu/8", head_zeroinit=False)
  peft = vit.Model(3, variant="mu/8", head_zeroinit=False, **kw)
  pp = _params(peft)
  base = {k: v for k, v in tree_lib.flatten(pp).items()
          if "_lora/" not in k and "adapter_" not in k}
  assert set(base) == set(tree_lib.names(_params(plain)))
  y0, _ = plain.apply({"params": tree_lib.unflatten(base)}, X)
  y1, _ = peft.apply({"params": pp}, X)
  np.testing.assert_array_equal(y0, y1)


def test_bad_lora_target_is_named():
  with pytest.raises(ValueError, match="qkv"):
    vit.lora_targets(["qkv"])
