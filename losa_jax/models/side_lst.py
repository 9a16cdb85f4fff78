# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""LST, Ladder Side-Tuning (Sung, Cho, Bansal, NeurIPS 2022), for a ViT.

A side transformer of width D' = D / reduction, one pre-LN block (attention
and MLP, `vit.Encoder1DBlock`) per ladder; ladder j reads the frozen output
z_i [B, N, D] of backbone block i (every `ladder_every`-th block, ending at
the last):

    s_0 = 0
    s_j = Block_j(mu_j s_{j-1} + (1 - mu_j) Down_j(z_i))    (gates=True)
    s_j = Block_j(s_{j-1} + Down_j(z_i))                    (gates=False)
    mu_j = sigmoid(alpha_j / T),  T = 0.1,  alpha_j = 0 at init
    delta = Up(LN(s_J))     [B, N, D], Up zero-initialised

The model's features are the frozen encoder_norm of z_L + delta, pooled
like the backbone: at init exactly a linear probe's. Side attention uses
the backbone's heads where they divide D', else one head; the MLP is
mlp_dim / reduction wide. What LST's paper and code confirm and what is our
reading: docs/method.md.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from losa_jax.models import side as side_lib
from losa_jax.models import vit

GATE_T = 0.1
DEFAULTS = dict(reduction=8, gates=True, ladder_every=1,
                **side_lib.SHARED_DEFAULTS)
HELP = dict(
    reduction="r: the side transformer is width / r wide",
    gates="mix each ladder in by a learned gate sigmoid(alpha / 0.1); "
    "False: add it",
    ladder_every="a ladder (and a side block) at every n-th block, ending at "
    "the last",
    **side_lib.SHARED_HELP)
INTS = ("reduction", "ladder_every")
BOOLS = ("gates",)


def tap_key(cfg: dict):
  """The ladders' blocks, stored in `dtype` (see model.tap_key)."""
  return ("block", cfg["ladder_every"], cfg["dtype"])


class _Block(nn.Module):
  """One ladder and side block: (s [B, N, D'], z_i [B, N, D]) -> s."""
  width: int
  num_heads: int
  mlp_dim: int
  gates: bool

  @nn.compact
  def __call__(self, s, z):
    ladder = nn.Dense(self.width, name="down")(z.astype(jnp.float32))
    x = s.astype(jnp.float32)
    if self.gates:
      mu = jax.nn.sigmoid(self.param("gate", nn.initializers.zeros, ()) /
                          GATE_T)
      x = mu * x + (1 - mu) * ladder
    else:
      x = x + ladder
    x, _ = vit.Encoder1DBlock(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                              name="block")(x)
    return x.astype(s.dtype), None


class Network(nn.Module):
  """taps [L', B, N, D] (any float dtype), final z_L [B, N, D] -> delta
  [B, N, D] float32, added to z_L before encoder_norm.

  backbone: the backbone's kwargs (its num_heads and mlp_dim are read).
  """
  cfg: dict
  backbone: dict

  @nn.compact
  def __call__(self, taps, final):
    cfg, d = self.cfg, final.shape[-1]
    if d % cfg["reduction"]:
      raise ValueError(f"lst.reduction={cfg['reduction']} must divide the "
                       f"backbone's width {d}.")
    width = d // cfg["reduction"]
    heads = self.backbone.get("num_heads", 12)
    mlp_dim = self.backbone.get("mlp_dim") or 4 * d
    s = jnp.zeros(final.shape[:-1] + (width,), jnp.dtype(cfg["dtype"]))
    s = side_lib.scan_taps(
        _Block, s, taps, remat=cfg["remat"], width=width, gates=cfg["gates"],
        num_heads=heads if width % heads == 0 else 1,
        mlp_dim=max(1, mlp_dim // cfg["reduction"]))
    s = nn.LayerNorm(name="LayerNorm")(s.astype(jnp.float32))
    return nn.Dense(d, kernel_init=nn.initializers.zeros, name="up")(s)
