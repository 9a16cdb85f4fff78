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
the backbone's heads where they divide D', else one head, and no key bias
(the softmax removes it: its exact gradient is 0); the MLP is
mlp_dim / reduction wide. What LST's paper and code confirm and what is our
reading: docs/method.md.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.models import side as side_lib
from losa_jax.models import vit
from losa_jax.utils import tree as tree_lib

GATE_T = 0.1
DEFAULTS = dict(reduction=8, gates=True, ladder_every=1, init="random",
                **side_lib.SHARED_DEFAULTS)
HELP = dict(
    reduction="r: the side transformer is width / r wide",
    gates="mix each ladder in by a learned gate sigmoid(alpha / 0.1); "
    "False: add it",
    ladder_every="a ladder (and a side block) at every n-th block, ending at "
    "the last",
    init="random | prune: each side block from its backbone block's weights, "
    "keeping the channels of largest magnitude (needs config.model_init)",
    **side_lib.SHARED_HELP)
INTS = ("reduction", "ladder_every")
BOOLS = ("gates",)
CHOICES = {"init": ("random", "prune")}


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
                              key_bias=False, name="block")(x)
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


def _top(scores, k: int):
  """Indices of the k largest scores, in their original order."""
  return np.sort(np.argsort(-scores, kind="stable")[:k])


def _as_2d(name: str, x):
  """A kernel as [in, out] (attention's [D, H, Dh] -> [D, H Dh] and
  [H, Dh, D] -> [H Dh, D]); any other leaf as a vector."""
  if name.endswith("kernel"):
    split = 2 if name.endswith("out/kernel") else 1
    return x.reshape(int(np.prod(x.shape[:split])), -1)
  return x.reshape(-1)


def _prune_block(shapes, block):
  """One side block's params (`shapes`: flat name -> shape) from a backbone
  block's (`block`, nested): each kernel keeps its rows and columns of
  largest L-infinity norm, its bias the kernel's columns; each LayerNorm the
  channels of largest |scale|, its bias the same ones."""
  bb = {n: np.asarray(v, np.float32) for n, v in tree_lib.flatten(block).items()}
  out = {}
  for key, shape in shapes.items():
    parent, leaf = key.rsplit("/", 1)
    if leaf not in ("kernel", "scale"):
      continue
    x, small = _as_2d(key, bb[key]), _as_2d(key, np.zeros(shape))
    cols = _top(np.abs(x).max(0) if x.ndim == 2 else np.abs(x),
                small.shape[-1])
    if x.ndim == 2:
      x = x[_top(np.abs(x).max(1), small.shape[0])]
    out[key] = x[..., cols].reshape(shape)
    if f"{parent}/bias" in shapes:
      out[f"{parent}/bias"] = bb[f"{parent}/bias"].reshape(-1)[cols].reshape(
          shapes[f"{parent}/bias"])
  return out


def init_from_backbone(side, backbone, cfg: dict, depth: int):
  """`side` params with every side block initialised by pruning the weights
  of its ladder's backbone block (`init="prune"`), else `side` as given.

  side: the side network's params or their ShapeDtypeStructs; backbone: the
  loaded backbone params (unscanned `encoderblock_{i}` or scanned
  `encoderblock`). The ladders, gates, final LayerNorm and up-projection
  keep their own init.
  """
  if cfg["init"] != "prune":
    return side
  blocks = backbone["Transformer"]
  if any(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(blocks)):
    raise ValueError("lst.init='prune' initialises the side network from the "
                     "loaded backbone: set config.model_init.")
  target = tree_lib.flatten(side["blocks"]["block"])
  shapes = {n: v.shape[1:] for n, v in target.items()}
  pruned = []
  for i in side_lib.tap_indices(depth, cfg["ladder_every"]):
    block = (jax.tree.map(lambda a, i=i: a[i], blocks["encoderblock"])
             if "encoderblock" in blocks else blocks[f"encoderblock_{i}"])
    pruned.append(_prune_block(shapes, block))
  stacked = {n: jnp.asarray(np.stack([p[n] for p in pruned]), v.dtype)
             for n, v in target.items()}
  return {**side, "blocks": {**side["blocks"],
                             "block": tree_lib.unflatten(stacked)}}
