# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Tiny ViTs and synthetic big_vision / vision_transformer checkpoints."""
import functools
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.utils import npz
from losa_jax.models import vit

# A 2-block "mu" ViT: width 32, 2 heads, mlp 128, patch 8 (4x4 grid at 32px).
TINY = dict(variant="mu/8", depth=2, pool_type="tok")
# Old (pre-linen) block names: one counter across classes inside a block.
OLD_BLOCK_NAMES = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}


def tiny_vit(num_classes: Optional[int] = 10, **kw) -> Any:
  return vit.Model(num_classes, **{**TINY, **kw})


@functools.lru_cache(maxsize=None)
def _jitted_apply(model):
  return jax.jit(lambda p, x: model.apply({"params": p}, x)[0])


def logits(model, params, images) -> np.ndarray:
  """[B, C] logits (or pre-logits) as float32 numpy; jit cached per model."""
  return np.asarray(_jitted_apply(model)(params, images), np.float32)


def random_params(model, hw: Tuple[int, int] = (32, 32), seed: int = 0,
                  scale: float = 0.3, **call_kw) -> Dict:
  """Random params with `model`'s exact names, shapes and dtypes.

  Built from `jax.eval_shape(model.init, ...)`, so nothing is compiled (real
  initialisers are irrelevant to loading), and fully random: zero-initialised
  leaves (head, cls, LoRA up) would hide wiring mistakes.
  """
  x = jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x, **call_kw)
  return randomize(shapes["params"], seed=seed, scale=scale)


def randomize(tree, seed: int = 0, scale: float = 0.3) -> Dict:
  """Every leaf replaced by N(0, scale) numpy noise of its shape and dtype."""
  flat = npz.flatten(tree)
  rng = np.random.default_rng(seed)
  return npz.unflatten({
      k: (rng.standard_normal(tuple(v.shape)) * scale).astype(v.dtype)
      for k, v in flat.items()})


def images(n: int = 2, hw: Tuple[int, int] = (32, 32),
           seed: int = 1) -> np.ndarray:
  """[n, h, w, 3] float32 images (NHWC)."""
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, *hw, 3)).astype(np.float32)


def to_old_naming(tree, posemb_at: str = "posembed_input",
                  cls_zero: bool = False, seed: int = 3) -> Dict:
  """A loop-layout, tok-pool big_vision tree -> 2020 vision_transformer layout.

  Blocks get pre-linen names, and the posemb gains a cls row and moves under
  `Transformer/` (`posembed_input/pos_embedding` for the very old files,
  `pos_embedding` for pre-2022 ones). The cls row `r` and stored `cls_old`
  satisfy `cls_old + r == cls`, which is what old models computed; with
  `cls_zero` the stored cls is zero and the row carries everything.
  """
  flat = npz.flatten(tree)
  out = {}
  for k, v in flat.items():
    parts = k.split("/")
    if len(parts) > 2 and parts[1].startswith("encoderblock_"):
      parts[2] = OLD_BLOCK_NAMES.get(parts[2], parts[2])
    out["/".join(parts)] = np.asarray(v)
  cls = out.pop("cls")
  pe = out.pop("pos_embedding")
  if cls_zero:
    row, cls_old = cls, np.zeros_like(cls)
  else:
    row = np.random.default_rng(seed).standard_normal(cls.shape).astype(
        cls.dtype)
    cls_old = cls - row
  out["cls"] = cls_old
  old_pe = np.concatenate([row, pe], axis=1)
  if posemb_at == "posembed_input":
    out["Transformer/posembed_input/pos_embedding"] = old_pe
  elif posemb_at == "Transformer":
    out["Transformer/pos_embedding"] = old_pe
  else:
    raise ValueError(f"posemb_at={posemb_at!r}")
  return npz.unflatten(out)
