# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Vision Transformer, parameter-for-parameter identical to big_vision's.

Param names, shapes and the `scan` layout match `big_vision/models/vit.py`, so a
big_vision / vision_transformer npz loads by name (see
`losa_jax.models.porting`).
Three additions, all off by default so the tree is exactly big_vision's:

* LoRA (`lora_rank > 0`): a low-rank delta beside the named projections
  (`query`, `key`, `value`, `out`, `Dense_0`, `Dense_1`), stored as sibling
  modules `<name>_lora/{down,up}` with `up` zero-initialised.
* Bottleneck adapters (`adapter_dim > 0`): `adapter_sa` / `adapter_mlp` inside
  each block, applied to the sub-block output before its residual add, with a
  zero-initialised up-projection.
* ST-Adapters (`st_adapter_dim > 0`, video grids only): `st_adapter_{attn,mlp}`
  on the residual stream before a block's attention / MLP (`STAdapter`).

The model returns `(logits_or_prelogits, out)` where `out` carries the residual
stream after every block (`out["encoder"]["block03"]["+mlp"]`, shape
[B, N, D]), which is what the LoSA side network taps.
"""
import dataclasses
from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_VARIANTS = {
    # name: (width, depth, mlp_dim, num_heads)
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    "H": (1280, 32, 5120, 16),
    "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16),
    "G": (1664, 48, 8192, 16),
    "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}

LORA_TARGETS = ("query", "key", "value", "out", "Dense_0", "Dense_1")
_LORA_SHORTHANDS = {
    "qv": ("query", "value"),
    "attn": ("query", "key", "value", "out"),
    "all": LORA_TARGETS,
}
_ACT = ("act_batch", "act_len", "act_emb")


def decode_variant(variant: Optional[str]) -> dict:
  """"B/16" -> dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16))."""
  if variant is None:
    return {}
  name, _, patch = variant.partition("/")
  if name not in _VARIANTS:
    raise ValueError(
        f"Unknown ViT variant {variant!r}: the part before '/' must be one of "
        f"{sorted(_VARIANTS)} (e.g. 'B/16').")
  width, depth, mlp_dim, heads = _VARIANTS[name]
  kw = dict(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=heads)
  if patch:
    try:
      p = tuple(int(s) for s in patch.split("x"))
    except ValueError:
      raise ValueError(f"Bad patch size in ViT variant {variant!r}: expected "
                       "'<name>/<p>' or '<name>/<ph>x<pw>', e.g. 'B/16'.") from None
    kw["patch_size"] = p * 2 if len(p) == 1 else p
  return kw


# Names of the params LoRA and adapters add inside the ViT (regexes over
# `/`-joined names below the ViT root): the trainable part of those methods,
# and the names a plain big_vision checkpoint does not have.
PEFT_PARAM_PATTERNS = {
    "lora": r".*_lora/.*",
    "adapter": r".*/adapter_(sa|mlp)/.*",
    "st_adapter": r".*/st_adapter_(attn|mlp)/.*",
}
ST_PLACEMENTS = ("attn", "mlp", "both")


def lora_targets(spec: Union[str, Sequence[str]]) -> Tuple[str, ...]:
  """Expands 'qv' / 'attn' / 'all' or validates an explicit list of names."""
  if isinstance(spec, str):
    if spec in _LORA_SHORTHANDS:
      return _LORA_SHORTHANDS[spec]
    spec = tuple(s for s in spec.replace(",", " ").split() if s)
  spec = tuple(spec)
  bad = [t for t in spec if t not in LORA_TARGETS]
  if bad:
    raise ValueError(f"Unknown LoRA target(s) {bad}: choose among "
                     f"{list(LORA_TARGETS)} or one of {sorted(_LORA_SHORTHANDS)}.")
  return spec


def posemb_sincos_2d(h, w, width, temperature=10_000., dtype=jnp.float32):
  """MoCo-v3 fixed 2-D sin-cos table, [1, h*w, width]."""
  y, x = jnp.mgrid[:h, :w]
  if width % 4:
    raise ValueError(f"posemb='sincos2d' needs width divisible by 4, got {width}.")
  omega = jnp.arange(width // 4) / (width // 4 - 1)
  omega = 1. / (temperature**omega)
  y = jnp.einsum("m,d->md", y.flatten(), omega)
  x = jnp.einsum("m,d->md", x.flatten(), omega)
  pe = jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=1)
  return jnp.asarray(pe, dtype)[None, :, :]


def get_posemb(module, typ, seqshape, width, name, dtype=jnp.float32):
  """Learned ([1, prod(seqshape), width] param) or fixed sin-cos posemb."""
  if typ == "learn":
    return module.param(name,
                        nn.initializers.normal(stddev=1 / np.sqrt(width)),
                        (1, int(np.prod(seqshape)), width), dtype)
  if typ == "sincos2d":
    return posemb_sincos_2d(*seqshape, width, dtype=dtype)
  raise ValueError(f"Unknown posemb type {typ!r}: use 'learn' or 'sincos2d'.")


class LoRA(nn.Module):
  """Low-rank delta `(x @ down) @ up * alpha / rank` for one projection.

  `in_axes` are the trailing input axes contracted (1 for Dense, 2 for `out`),
  `features` the output shape, e.g. (heads, head_dim) for `query`.
  """
  rank: int
  features: Tuple[int, ...]
  in_axes: int = 1
  alpha: Optional[float] = None

  @nn.compact
  def __call__(self, x):
    in_shape = x.shape[-self.in_axes:]
    down = self.param("down", nn.initializers.lecun_normal(
        in_axis=tuple(range(self.in_axes)), out_axis=-1),
                      (*in_shape, self.rank))
    up = self.param("up", nn.initializers.zeros, (self.rank, *self.features))
    axes = tuple(range(x.ndim - self.in_axes, x.ndim))
    h = jax.lax.dot_general(x, down.astype(x.dtype),
                            ((axes, tuple(range(self.in_axes))), ((), ())))
    y = jnp.tensordot(h, up.astype(x.dtype), axes=1)
    return y * ((self.alpha or self.rank) / self.rank)


def merge_lora(params, *, rank: int, alpha: Optional[float] = None):
  """LoRA folded into the weights: W + alpha / rank * down @ up, per target
  (a plain ViT's forward cost, one full copy of the weights per task).

  Args:
    params: a LoRA ViT's params (the tree under `backbone/`), with
      `<name>_lora/{down [*in, r], up [r, *out]}` beside `<name>/kernel
      [*in, *out]`; scanned stacks carry a leading [L] on all three.
    rank, alpha: the model's lora_rank and lora_alpha (None: alpha = rank).

  Returns:
    The plain ViT's params (no `*_lora` leaves; each kernel keeps its dtype):
    a model with lora_rank=0 gives the LoRA model's outputs to float
    rounding.
  """
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = dict(traverse_util.flatten_dict(params, sep="/"))
  scale = (alpha or rank) / rank
  for name in [n for n in flat if n.endswith("_lora/down")]:
    prefix = name[:-len("_lora/down")]
    down, up = flat.pop(name), flat.pop(f"{prefix}_lora/up")
    if f"{prefix}/kernel" not in flat:
      raise ValueError(f"merge_lora: {prefix}_lora has no {prefix}/kernel to "
                       "merge into; is this a LoRA ViT's backbone tree?")
    w = flat[f"{prefix}/kernel"]
    lead = down.ndim + up.ndim - 2 - w.ndim      # 1 when scanned, else 0
    d = jnp.reshape(jnp.asarray(down, jnp.float32),
                    (*down.shape[:lead], -1, down.shape[-1]))
    u = jnp.reshape(jnp.asarray(up, jnp.float32), (*up.shape[:lead + 1], -1))
    delta = jnp.reshape(jnp.matmul(d, u), w.shape)
    flat[f"{prefix}/kernel"] = (jnp.asarray(w, jnp.float32) +
                                scale * delta).astype(w.dtype)
  return traverse_util.unflatten_dict(flat, sep="/")


class Adapter(nn.Module):
  """Bottleneck adapter x + up(gelu(down(x))), zero-initialised up: [.., D] -> [.., D]."""
  dim: int

  @nn.compact
  def __call__(self, x):
    h = nn.gelu(nn.Dense(self.dim, name="down", dtype=x.dtype)(x))
    return x + nn.Dense(x.shape[-1], name="up", dtype=x.dtype,
                        kernel_init=nn.initializers.zeros)(h)


class STAdapter(nn.Module):
  """ST-Adapter (Pan et al. 2022): x + Up(DWConv3D(Down(x))) on the video tokens.

  x: [B, P + t * h * w, D], P prefix (CLS) tokens first, which pass
  unchanged, then the time-major token grid `grid` = (t, h, w). The
  depthwise conv (one kernel per bottleneck channel, 'SAME' padding) is
  zero-initialised as in the released code, so the adapter starts as the
  identity. -> [B, P + t * h * w, D].
  """
  dim: int
  kernel_size: Tuple[int, int, int]
  grid: Tuple[int, int, int]
  num_prefix: int = 0

  @nn.compact
  def __call__(self, x):
    p = self.num_prefix
    tokens = x[:, p:]
    b, n, d = tokens.shape
    h = nn.Dense(self.dim, name="down", dtype=x.dtype)(tokens)
    h = nn.Conv(self.dim, tuple(self.kernel_size), padding="SAME",
                feature_group_count=self.dim, dtype=x.dtype, name="conv",
                kernel_init=nn.initializers.zeros)(
                    jnp.reshape(h, (b, *self.grid, self.dim)))
    h = nn.Dense(d, name="up", dtype=x.dtype)(jnp.reshape(h, (b, n, self.dim)))
    return jnp.concatenate([x[:, :p], tokens + h], axis=1)


@dataclasses.dataclass(frozen=True)
class Peft:
  """What LoRA, adapters and ST-Adapters add inside the blocks (nothing by default): one
  hashable field for the block, the encoder and their projections."""
  lora_rank: int = 0
  lora_targets: Tuple[str, ...] = ()
  lora_alpha: Optional[float] = None
  adapter_dim: int = 0
  adapter_placement: str = "mlp"
  st_dim: int = 0
  st_kernel: Tuple[int, int, int] = (3, 1, 1)
  st_placement: str = "attn"
  st_grid: Optional[Tuple[int, int, int]] = None
  num_prefix: int = 0
  st_blocks: Optional[Tuple[int, ...]] = None    # None: every block

  def for_block(self, lyr: int) -> "Peft":
    """This Peft for block `lyr`: without ST-Adapters outside st_blocks."""
    if self.st_blocks is None or lyr in self.st_blocks:
      return self
    return dataclasses.replace(self, st_dim=0)

  def st_adapter(self, where: str, x):
    """x through the ST-Adapter placed before `where` ("attn" / "mlp") if
    there is one (call inside the block's compact method)."""
    if not self.st_dim or self.st_placement not in (where, "both"):
      return x
    return STAdapter(self.st_dim, self.st_kernel, self.st_grid,
                     self.num_prefix, name=f"st_adapter_{where}")(x)

  def lora(self, name: str, x, y, features: Tuple[int, ...], in_axes=1):
    """y plus the LoRA delta of projection `name` (x -> y) if it is a target
    (call inside the projecting module's compact method)."""
    if not self.lora_rank or name not in self.lora_targets:
      return y
    return y + LoRA(self.lora_rank, features, in_axes=in_axes,
                    alpha=self.lora_alpha, name=f"{name}_lora")(
                        x.astype(y.dtype))


class MultiHeadAttention(nn.Module):
  """flax's MultiHeadDotProductAttention with the same params, plus LoRA.

  key_bias=False leaves out the key projection's bias: q . b_k is the same
  for every key, so the softmax removes it and its exact gradient is 0.
  """
  num_heads: int
  dtype_mm: Any = "float32"
  kernel_init: Any = nn.initializers.xavier_uniform()
  peft: Peft = Peft()
  key_bias: bool = True

  @nn.compact
  def __call__(self, inputs_q, inputs_kv):
    d = inputs_q.shape[-1]
    if d % self.num_heads:
      raise ValueError(f"Width {d} is not divisible by num_heads={self.num_heads}.")
    hd = d // self.num_heads

    def proj(name, x, features, axis):
      y = nn.DenseGeneral(features=features, axis=axis, dtype=self.dtype_mm,
                          kernel_init=self.kernel_init, name=name,
                          use_bias=self.key_bias or name != "key")(x)
      f = features if isinstance(features, tuple) else (features,)
      return self.peft.lora(name, x, y, f, in_axes=len(axis) if isinstance(
          axis, tuple) else 1)

    q = proj("query", inputs_q, (self.num_heads, hd), -1)
    k = proj("key", inputs_kv, (self.num_heads, hd), -1)
    v = proj("value", inputs_kv, (self.num_heads, hd), -1)
    x = nn.dot_product_attention(q, k, v, dtype=self.dtype_mm)
    return proj("out", x, d, (-2, -1))


class MlpBlock(nn.Module):
  """Transformer MLP: Dense -> GELU(tanh) -> Dropout -> Dense, [B, N, D] -> [B, N, D]."""
  mlp_dim: Optional[int] = None
  dropout: float = 0.0
  dtype_mm: Any = "float32"
  peft: Peft = Peft()

  @nn.compact
  def __call__(self, x, deterministic=True):
    inits = dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6))
    d = x.shape[-1]

    def dense(name, x, features):
      y = nn.Dense(features, dtype=self.dtype_mm, name=name, **inits)(x)
      return self.peft.lora(name, x, y, (features,))

    x = dense("Dense_0", x, self.mlp_dim or 4 * d)
    x = nn.with_logical_constraint(x, ("act_batch", "act_len", "act_mlp"))
    x = nn.gelu(x)
    x = nn.Dropout(rate=self.dropout)(x, deterministic)
    return dense("Dense_1", x, d)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block; returns (x, {sa, +sa, mlp, +mlp}) all [B, N, D]."""
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  dropout: float = 0.0
  dtype_mm: Any = "float32"
  peft: Peft = Peft()
  key_bias: bool = True       # see MultiHeadAttention

  @nn.compact
  def __call__(self, x, deterministic=True):
    out = {}
    adapter_dim = self.peft.adapter_dim
    x = nn.with_logical_constraint(x, _ACT)
    x = self.peft.st_adapter("attn", x)
    y = nn.LayerNorm(name="LayerNorm_0")(x)
    y = out["sa"] = MultiHeadAttention(
        num_heads=self.num_heads, dtype_mm=self.dtype_mm,
        name="MultiHeadDotProductAttention_0", peft=self.peft,
        key_bias=self.key_bias)(y, y)
    y = nn.with_logical_constraint(y, _ACT)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    if adapter_dim and self.peft.adapter_placement == "both":
      y = Adapter(adapter_dim, name="adapter_sa")(y)
    x = out["+sa"] = x + y

    x = self.peft.st_adapter("mlp", x)
    y = nn.LayerNorm(name="LayerNorm_1")(x)
    y = out["mlp"] = MlpBlock(mlp_dim=self.mlp_dim, dropout=self.dropout,
                              dtype_mm=self.dtype_mm, name="MlpBlock_0",
                              peft=self.peft)(y, deterministic)
    y = nn.with_logical_constraint(y, _ACT)
    y = nn.Dropout(rate=self.dropout)(y, deterministic)
    if adapter_dim:
      y = Adapter(adapter_dim, name="adapter_mlp")(y)
    x = out["+mlp"] = x + y
    x = nn.with_logical_constraint(x, _ACT)
    return x, out


class Encoder(nn.Module):
  """Stack of `depth` blocks + final LayerNorm: [B, N, D] -> ([B, N, D], out).

  `out["blockNN"]` holds each block's intermediates (per layer also in scan
  mode); `out["pre_ln"]` is the residual stream before `encoder_norm`.
  """
  depth: int
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  dropout: float = 0.0
  scan: bool = False
  remat_policy: Optional[str] = "nothing_saveable"
  dtype_mm: Any = "float32"
  peft: Peft = Peft()

  @nn.compact
  def __call__(self, x, deterministic=True):
    out = {}
    block_kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads,
                    dropout=self.dropout, dtype_mm=self.dtype_mm,
                    peft=self.peft)
    if self.scan:
      if self.peft.st_dim and self.peft.st_blocks is not None and sorted(
          self.peft.st_blocks) != list(range(self.depth)):
        raise ValueError("ST-Adapters in some blocks only (model.st_adapter."
                         "blocks) need model.backbone.scan=False: scanned "
                         "blocks share one structure.")
      block = Encoder1DBlock
      if self.remat_policy not in (None, "none"):
        block = nn.remat(block, prevent_cse=False, static_argnums=(2,),
                         policy=getattr(jax.checkpoint_policies,
                                        self.remat_policy))
      x, scan_out = nn.scan(
          block, variable_axes={"params": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=nn.broadcast, length=self.depth)(
              name="encoderblock", **block_kw)(x, deterministic)
      out["stacked"] = scan_out
      for lyr in range(self.depth):
        out[f"block{lyr:02d}"] = jax.tree.map(lambda o, l=lyr: o[l], scan_out)
    else:
      for lyr in range(self.depth):
        x, out[f"block{lyr:02d}"] = Encoder1DBlock(
            name=f"encoderblock_{lyr}",
            **{**block_kw, "peft": self.peft.for_block(lyr)})(x, deterministic)
    out["pre_ln"] = x
    return nn.LayerNorm(name="encoder_norm")(x), out


class MAPHead(nn.Module):
  """Multihead attention pooling with a learned probe: [B, N, D] -> [B, D]."""
  mlp_dim: Optional[int] = None
  num_heads: int = 12

  @nn.compact
  def __call__(self, x):
    n, _, d = x.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d),
                       x.dtype)
    probe = jnp.tile(probe, [n, 1, 1])
    x = MultiHeadAttention(num_heads=self.num_heads,
                           name="MultiHeadDotProductAttention_0")(probe, x)
    y = nn.LayerNorm(name="LayerNorm_0")(x)
    x = x + MlpBlock(mlp_dim=self.mlp_dim, name="MlpBlock_0")(y)
    return x[:, 0]


POOL_TYPES = ("tok", "gap", "map", "0", "none")


class _Model(nn.Module):
  """ViT; see `Model` for the factory that decodes `variant`."""
  num_classes: Optional[int] = None
  patch_size: Sequence[int] = (16, 16)
  width: int = 768
  depth: int = 12
  mlp_dim: Optional[int] = None
  num_heads: int = 12
  posemb: str = "learn"
  rep_size: Union[int, bool] = False
  dropout: float = 0.0
  pool_type: str = "gap"
  head_zeroinit: bool = True
  scan: bool = False
  remat_policy: Optional[str] = "nothing_saveable"
  dtype_mm: Any = "float32"
  lora_rank: int = 0
  lora_targets: Any = "qv"
  lora_alpha: Optional[float] = None
  adapter_dim: int = 0
  adapter_placement: str = "mlp"
  st_adapter_dim: int = 0
  st_adapter_kernel: Sequence[int] = (3, 1, 1)
  st_adapter_placement: str = "attn"
  st_adapter_blocks: Optional[Sequence[int]] = None

  def pool(self, x):
    """Pools encoded tokens [B, N, D] -> [B, D] the way this model's head does."""
    if self.pool_type == "map":
      return MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim,
                     name="MAPHead_0")(x)
    if self.pool_type == "gap":
      return jnp.mean(x, axis=1)
    if self.pool_type in ("0", "tok"):
      return x[:, 0]
    return x

  @nn.compact
  def __call__(self, image, *, train=False):
    """image [B, H, W, 3] -> (logits [B, C] or pre-logits [B, D], out)."""
    if self.pool_type not in POOL_TYPES:
      raise ValueError(f"Unknown pool_type {self.pool_type!r}: use one of {POOL_TYPES}.")
    if self.adapter_placement not in ("mlp", "both"):
      raise ValueError(f"adapter_placement={self.adapter_placement!r}: use 'mlp' or 'both'.")
    if self.st_adapter_placement not in ST_PLACEMENTS:
      raise ValueError(f"st_adapter_placement={self.st_adapter_placement!r}: "
                       f"use one of {ST_PLACEMENTS}.")
    out = {}
    x, grid = self.embed(image, out)
    if self.pool_type == "tok":
      n, _, c = x.shape
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), x.dtype)
      x = jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1)
    x = nn.Dropout(rate=self.dropout)(x, not train)

    x, out["encoder"] = self.encode(x, train=train, grid=grid)
    return self.finish(x, out, grid)

  def embed(self, image, out):
    """The stem and posemb: (tokens [B, h * w, D], the patch grid (h, w))."""
    image = jnp.asarray(image, self.dtype_mm)
    x = out["stem"] = nn.Conv(self.width, tuple(self.patch_size),
                              strides=tuple(self.patch_size), padding="VALID",
                              name="embedding", dtype=self.dtype_mm)(image)
    n, h, w, c = x.shape
    x = jnp.reshape(x, [n, h * w, c])
    # Add posemb before the cls token, as big_vision does (no cls slot).
    x = out["with_posemb"] = x + get_posemb(self, self.posemb, (h, w), c,
                                             "pos_embedding", x.dtype)
    return x, (h, w)

  def encode(self, x, *, train=False, grid=None):
    """The transformer ("Transformer"): [B, N, D] -> ([B, N, D], out).

    grid: the patch-token layout ((t, h, w) for video), which ST-Adapters
    need.
    """
    if self.st_adapter_dim and (grid is None or len(grid) != 3):
      raise ValueError("ST-Adapters convolve over (time, height, width): they "
                       "need a video backbone (model.backbone.kind='vivit'), "
                       f"got the token grid {grid}.")
    blocks = self.st_adapter_blocks
    return Encoder(
        depth=self.depth, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout=self.dropout, scan=self.scan, remat_policy=self.remat_policy,
        dtype_mm=self.dtype_mm,
        peft=Peft(lora_rank=self.lora_rank,
                  lora_targets=lora_targets(self.lora_targets),
                  lora_alpha=self.lora_alpha, adapter_dim=self.adapter_dim,
                  adapter_placement=self.adapter_placement,
                  st_dim=self.st_adapter_dim,
                  st_kernel=tuple(self.st_adapter_kernel),
                  st_placement=self.st_adapter_placement,
                  st_grid=None if grid is None else tuple(grid),
                  num_prefix=int(self.pool_type == "tok"),
                  st_blocks=None if blocks is None else tuple(blocks)),
        name="Transformer")(x, deterministic=not train)

  def finish(self, x, out, grid):
    """Pooling, optional pre_logits and head on the encoded tokens.

    x: [B, N, D] encoder output; grid: the patch-token layout, (h, w) for
    images or (t, h, w) for video, used for the `*_2d` outputs
    [B, *grid, D'] (named as in big_vision for both).
    """
    n = x.shape[0]
    encoded = out["encoded"] = x
    x = out["head_input"] = self.pool(x)
    if self.pool_type == "tok":
      encoded = encoded[:, 1:]
    x_2d = jnp.reshape(encoded, [n, *grid, -1])

    if self.rep_size:
      rep_size = self.width if self.rep_size is True else self.rep_size
      hid = nn.Dense(rep_size, name="pre_logits")
      x_2d = nn.tanh(hid(x_2d))
      x = nn.tanh(hid(x))
    out["pre_logits_2d"] = x_2d
    out["pre_logits"] = x

    if self.num_classes:
      kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
      head = nn.Dense(self.num_classes, name="head", **kw)
      x_2d = out["logits_2d"] = head(x_2d)
      x = out["logits"] = head(x)
    return x, out


def Model(num_classes=None, *, variant=None, **kw):  # pylint: disable=invalid-name
  """Factory: `Model(10, variant="B/16", pool_type="tok")` -> linen module."""
  return _Model(num_classes, **{**decode_variant(variant), **kw})
