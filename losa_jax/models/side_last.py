# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""LAST, Low-rank Attention Side-Tuning (Tang, Fu, Zhu, Wu, arXiv 2402.04009).

A side network of low-rank self-attention (LSA) blocks, one per backbone
block, each reading that block's frozen output z_m [B, N, D]:

    s_0 = 0
    h_m = z_m + s_{m-1}                      (bias_correction=True)
        = sum_{i<=m} z_i + s_{m-1}           (bias_correction=False)
    s_m = s_{m-1} + LSA_m(LN_m(h_m))
    LSA(y) = softmax(q k^T / sqrt(r / heads)) v W_o,  q, k, v = y W_{q,k,v}

q, k, v are [B, N, r] (split into `heads`); q and v have biases, k none
(the softmax removes q . b_k: a key bias has exact gradient 0 and only
collects rounding noise); W_o [r, D] starts at zero, so s_L = 0 at step 0.
The model's features are the frozen encoder_norm of z_L + s_L, pooled like
the backbone: at init exactly a linear probe's.
What the paper confirms and what is our reading: docs/method.md.
"""
import flax.linen as nn
import jax.numpy as jnp

from losa_jax.models import side as side_lib

DEFAULTS = dict(rank=16, heads=1, bias_correction=True,
                **side_lib.SHARED_DEFAULTS)
HELP = dict(
    rank="r: the width of q, k and v",
    heads="attention heads in the r dims (must divide rank)",
    bias_correction="each block reads z_m + s_{m-1}; False: the running sum "
    "of every tap so far + s_{m-1}",
    **side_lib.SHARED_HELP)
INTS = ("rank", "heads")
BOOLS = ("bias_correction",)


def check(cfg: dict, what: str) -> None:
  if cfg["rank"] % cfg["heads"]:
    raise ValueError(f"{what}.heads={cfg['heads']} must divide "
                     f"{what}.rank={cfg['rank']}.")


def tap_key(cfg: dict):
  """Every block's output, stored in `dtype` (see model.tap_key)."""
  return ("block", 1, cfg["dtype"])


class _Block(nn.Module):
  """One LSA block: ((s, running sum or None), z_m) -> next carry."""
  rank: int
  heads: int

  @nn.compact
  def __call__(self, carry, z):
    s, total = carry
    z = z.astype(jnp.float32)
    if total is not None:
      total = total + z
    h = s.astype(jnp.float32) + (z if total is None else total)
    y = nn.LayerNorm(epsilon=side_lib.EPSILON, name="LayerNorm")(h)
    b, n, d = y.shape
    # No key bias: the softmax removes q . b_k (vit.MultiHeadAttention).
    q, k, v = (nn.Dense(self.rank, use_bias=name != "key", name=name)(
        y).reshape(b, n, self.heads, self.rank // self.heads)
               for name in ("query", "key", "value"))
    o = nn.dot_product_attention(q, k, v).reshape(b, n, self.rank)
    delta = nn.Dense(d, kernel_init=nn.initializers.zeros, name="out")(o)
    return ((s.astype(jnp.float32) + delta).astype(s.dtype), total), None


class Network(nn.Module):
  """taps [L, B, N, D] (any float dtype), final z_L [B, N, D] -> s_L
  [B, N, D] float32, the correction added to z_L before encoder_norm
  (`backbone`, the backbone's kwargs, is not read)."""
  cfg: dict
  backbone: dict

  @nn.compact
  def __call__(self, taps, final):
    cfg = self.cfg
    s = jnp.zeros(final.shape, jnp.dtype(cfg["dtype"]))
    total = None if cfg["bias_correction"] else jnp.zeros(final.shape)
    s, _ = side_lib.scan_taps(_Block, (s, total), taps, remat=cfg["remat"],
                              rank=cfg["rank"], heads=cfg["heads"])
    return s.astype(jnp.float32)
