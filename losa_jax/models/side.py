# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The LoSA side network: low-rank mixers that refine frozen backbone taps.

Reference design (docs/method.md, section 2.2), with every open choice a field:

    a_0 = 0
    z_i = sg(b_i) + a_{i-1}              (combine)
    a_i = a_{i-1} + M_i(z_i)             (state="delta")
    M_i(z) = c + t,  c = ChannelMLP(LN(z)),  t = TokenMLP(LN(z + c))

Shapes: taps b_i are [B, N, D]; the channel MLP's hidden state is [B, N, r_c]
and the token MLP's [B, D, r_t] (for video, [B, T, D, r_s] spatial and
[B, S, D, r_t] temporal). With `zero_init` every mixer output projection
starts at zero, so a_i = 0 at step 0 and the model is a linear probe.

`dtype` is the storage dtype of the taps and of the side stream kept
between layers (a_i, and z_i where the backward keeps it). With "bfloat16"
those stores take half the bytes; everything inside a mixer is float32 math
on float32 params (each z_i read is converted, each a_i rounded once when
stored), in the fused path and in autodiff alike. The head's input
LN_out(sg(b_L) + a_L) is float32 in both cases.
"""
from typing import Optional, Sequence, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from losa_jax.models import side_fused

COMBINES = ("add", "gated", "concat")
STATES = ("delta", "stream")
MIXER_ORDERS = ("channel_token", "token_channel")
TOKEN_MIXERS = ("all", "exclude_cls", "full_rank", "none")
NORMS = ("pre", "none", "post")
# "space" / "time": one factor only (ablations: e.g. no temporal mixing).
VIDEO_TOKEN_MIXING = ("space_time", "time_space", "joint", "space", "time")
HEAD_INPUTS = ("sum", "side", "concat")
OUT_NORMS = ("new", "backbone")
DTYPES = ("float32", "bfloat16")


def _check(name, value, choices):
  if value not in choices:
    raise ValueError(f"LoSA option {name}={value!r} is not valid: choose one of "
                     f"{list(choices)}.")


class LowRankMLP(nn.Module):
  """Dense(rank) -> GELU -> Dense(features) on the last axis.

  [..., F_in] -> [..., features]; `rank=None` gives one full-rank Dense.
  Params: 2 * F * rank + rank + features (or F_in * features + features).
  """
  features: int
  rank: Optional[int]
  zero_init: bool = True

  @nn.compact
  def __call__(self, x):
    out_init = (nn.initializers.zeros if self.zero_init
                else nn.initializers.normal(stddev=1e-3))
    if self.rank is None:
      return nn.Dense(self.features, kernel_init=out_init, name="up")(x)
    h = nn.Dense(self.rank, kernel_init=nn.initializers.lecun_normal(),
                 name="down")(x)
    h = nn.gelu(h)
    return nn.Dense(self.features, kernel_init=out_init, name="up")(h)


class _Branch(nn.Module):
  """One mixing sub-block returning a delta of the input's shape [B, N, D].

  kind: "channel" (over D), "token" (over all mixed tokens), "space" or "time"
  (the two factors of a video token grid, applied per frame / per position).
  """
  kind: str
  rank: Optional[int]
  norms: str
  zero_init: bool
  num_prefix: int            # leading tokens (CLS) left out of token mixing
  grid: Optional[Tuple[int, int]] = None   # (n_t, n_s) for video tokens

  def _mlp(self, features):
    return LowRankMLP(features, self.rank, self.zero_init, name="mlp")

  def _norm(self):
    return nn.LayerNorm(epsilon=1e-6, name="LayerNorm")

  @nn.compact
  def __call__(self, z):
    pre = self.norms == "pre"
    y = self._norm()(z) if pre else z
    if self.kind == "channel":
      out = self._mlp(z.shape[-1])(y)
    else:
      prefix, tokens = y[:, :self.num_prefix], y[:, self.num_prefix:]
      out = self._mix_tokens(tokens)
      if self.num_prefix:
        # Prefix tokens (CLS) get no token-mixing update, only channel mixing.
        out = jnp.concatenate([jnp.zeros_like(prefix), out], axis=1)
    if self.norms == "post":
      out = self._norm()(out)
    return out

  def _mix_tokens(self, tokens):
    b, n, d = tokens.shape
    if self.kind == "token":
      mixed = self._mlp(n)(tokens.transpose(0, 2, 1))     # [B, D, N]
      return mixed.transpose(0, 2, 1)
    n_t, n_s = self.grid
    if n_t * n_s != n:
      raise ValueError(f"Video token grid {self.grid} holds {n_t * n_s} tokens "
                       f"but the tap has {n} (after {self.num_prefix} prefix).")
    x = tokens.reshape(b, n_t, n_s, d)
    if self.kind == "space":      # over n_s, same weights for every frame
      x = x.transpose(0, 1, 3, 2)                         # [B, T, D, S]
      x = self._mlp(n_s)(x)
      x = x.transpose(0, 1, 3, 2)
    elif self.kind == "time":     # over n_t, same weights for every position
      x = x.transpose(0, 2, 3, 1)                         # [B, S, D, T]
      x = self._mlp(n_t)(x)
      x = x.transpose(0, 3, 1, 2)
    else:
      raise ValueError(f"Unknown mixing branch {self.kind!r}.")
    return x.reshape(b, n, d)


class Mixer(nn.Module):
  """Low-rank mixer M_i: [B, N, D] -> delta [B, N, D] (sum of branch outputs).

  Branches run sequentially with residuals (u = z + c; t = Token(u)); the
  returned delta is c + t, accumulated branch by branch so that zero branches
  give an exact zero. z may be stored in any float dtype; the math and the
  returned delta are float32.
  """
  rank_channel: int = 8
  rank_token: int = 8
  rank_time: Optional[int] = None
  mixer_order: str = "channel_token"
  num_pairs: int = 1
  token_mixer: str = "all"
  norms: str = "pre"
  zero_init: bool = True
  num_prefix: int = 0
  grid: Optional[Tuple[int, int]] = None
  video_token_mixing: str = "space_time"
  fused: bool = True

  def uses_fused_vjp(self) -> bool:
    """Whether this mixer runs `side_fused.mixer` (same params, same
    function, hand-written backward) instead of autodiff of the branches."""
    return self.fused and side_fused.applies(
        dict(norms=self.norms, token_mixer=self.token_mixer, grid=self.grid),
        self.branches())

  def branches(self) -> Sequence[Tuple[str, Optional[int]]]:
    """The (kind, rank) sequence of one layer's sub-blocks."""
    if self.token_mixer == "none":
      token = []
    elif self.grid is None or self.video_token_mixing == "joint":
      token = [("token", None if self.token_mixer == "full_rank"
                else self.rank_token)]
    else:
      space = ("space", self.rank_token)
      time = ("time", self.rank_time or self.rank_token)
      token = {"space_time": [space, time], "time_space": [time, space],
               "space": [space], "time": [time]}[self.video_token_mixing]
    channel = [("channel", self.rank_channel)]
    pair = channel + token if self.mixer_order == "channel_token" else (
        token + channel)
    return pair * self.num_pairs

  @nn.compact
  def __call__(self, z):
    # Whatever z's storage dtype, the mixer computes in float32 and returns
    # a float32 delta: the caller rounds once, when it stores a_i. A float64
    # z (the tests' reference, under jax_enable_x64) stays float64.
    z = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    made = self.variables.get("params", {})
    if self.uses_fused_vjp() and "channel_0" in made and "token_1" in made:
      # The branches' params as init made them (init, or apply with mutable
      # params, runs the branch modules below); no submodule is called.
      return side_fused.mixer(flax.core.unfreeze(made), z)
    # CLS is mixed with the patches only when asked, and never in the
    # factorised video mixers (its position fits no frame).
    exclude_cls = self.token_mixer == "exclude_cls" or (
        self.grid is not None and self.video_token_mixing != "joint")
    delta = jnp.zeros_like(z)
    cur = z
    for j, (kind, rank) in enumerate(self.branches()):
      y = _Branch(kind, rank, self.norms, self.zero_init,
                  num_prefix=self.num_prefix if (
                      kind != "channel" and exclude_cls) else 0,
                  grid=self.grid, name=f"{kind}_{j}")(cur)
      cur = cur + y
      delta = delta + y
    return delta


class SideLayer(nn.Module):
  """One refinement step: (carry a_{i-1} [B, N, D], i, taps) -> (a_i, None).

  b_i is read from the whole tap stack inside the step (`layer_axis` is its
  layer axis), so neither a transposed nor a converted copy of the stack is
  ever made: a feature-cache batch [B, L', N, D] in bf16 is used as it is.
  """
  mixer: dict
  combine: str = "add"
  state: str = "delta"
  layer_axis: int = 0

  @nn.compact
  def __call__(self, carry, i, taps):
    b = jax.lax.dynamic_index_in_dim(taps, i, self.layer_axis,
                                     keepdims=False).astype(carry.dtype)
    if self.combine == "add":
      z = b + carry
    elif self.combine == "gated":
      gate = self.param("gate", nn.initializers.ones, (), jnp.float32)
      z = b + (gate * carry).astype(carry.dtype)
    else:
      d = b.shape[-1]
      # [I; I] init: at step 0 the projection is exactly b + carry.
      eye = jnp.eye(d, dtype=jnp.float32)
      z = nn.Dense(d, kernel_init=lambda *_: jnp.concatenate([eye, eye]),
                   name="combine")(jnp.concatenate(
                       [b, carry], axis=-1).astype(jnp.float32)).astype(
                           carry.dtype)
    y = Mixer(**self.mixer, name="mixer")(z)               # float32
    new = carry + y if self.state == "delta" else z + y
    return new.astype(carry.dtype), None


class SideNetwork(nn.Module):
  """Runs the mixers over the taps and returns the head's token features.

  Inputs: `taps` [L', B, N, D] (or [B, L', N, D] with `layer_axis=1`, as a
  feature cache stores them), stop-gradient'ed backbone features of the
  tapped blocks, in any float dtype (each b_i is cast to `dtype` when read);
  `final`, the backbone's last residual-stream output sg(b_L) [B, N, D] (the
  taps may skip layers); `frozen_ln`, the backbone's own encoder_norm.
  Returns (f, a): f = LN_out(sg(b_L) + a_L) [B, N, D] by default ([B, N, 2D]
  for head_input="concat") and a = a_L [B, N, D].

  The params are those of one `nn.scan` over `SideLayer` (stacked on a
  leading L' axis under side/layers/, like big_vision's scanned encoder),
  and init always runs that scan. Applying runs one of two implementations
  of the same function:
  * the default structure (`side_fused.scan_applies`, `fused=True` in the
    mixer options): `side_fused.side_scan`, one hand-written backward for
    the whole side network, keeping one [L', B, N, D] stack of z_i (written
    over the taps) and low-rank activations, with no forward replayed;
  * every other structure: the scan with autodiff, each layer
    rematerialised when `remat` (the backward keeps each layer's input
    carry [B, N, D] instead of every LayerNorm output and transpose;
    unrolled loops let XLA:CPU hoist the recomputation and lose the saving).
  """
  mixer: dict
  combine: str = "add"
  state: str = "delta"
  share_weights: bool = False
  head_input: str = "sum"
  out_norm: str = "new"
  remat: bool = True
  dtype: str = "float32"     # of the taps and the side stream (DTYPES)

  @nn.compact
  def __call__(self, taps, final, frozen_ln, *, layer_axis: int = 0):
    _check("combine", self.combine, COMBINES)
    _check("state", self.state, STATES)
    _check("head_input", self.head_input, HEAD_INPUTS)
    _check("out_norm", self.out_norm, OUT_NORMS)
    _check("dtype", self.dtype, DTYPES)
    dtype = jnp.dtype(self.dtype)
    if self.state == "stream" and self.head_input != "sum":
      raise ValueError("LoSA option state='stream' needs head_input='sum' "
                       "(the stream already carries the backbone features).")
    mixer_kw = dict(self.mixer)
    _check("mixer_order", mixer_kw.get("mixer_order", "channel_token"),
           MIXER_ORDERS)
    _check("token_mixer", mixer_kw.get("token_mixer", "all"), TOKEN_MIXERS)
    _check("norms", mixer_kw.get("norms", "pre"), NORMS)
    _check("video_token_mixing", mixer_kw.get("video_token_mixing",
                                              "space_time"), VIDEO_TOKEN_MIXING)
    mixer = Mixer(**mixer_kw, parent=None)   # unbound: for its structure
    layer = SideLayer
    if self.remat:
      # The fused mixer keeps only z and low-rank activations for its
      # backward, what remat would keep (the carry), so nothing is replayed
      # ("everything_saveable"); still nn.remat, which splits the init RNGs
      # as it always did, so the params do not depend on the path.
      policy = (jax.checkpoint_policies.everything_saveable
                if mixer.uses_fused_vjp() else None)
      layer = nn.remat(SideLayer, prevent_cse=False, policy=policy)
    if self.share_weights:
      scan_kw = dict(variable_broadcast="params", split_rngs={"params": False})
    else:
      scan_kw = dict(variable_axes={"params": 0}, split_rngs={"params": True})
    made = self.variables.get("params", {}).get("layers", {}).get("mixer")
    if made is not None and side_fused.scan_applies(
        mixer.uses_fused_vjp(), combine=self.combine, state=self.state,
        share_weights=self.share_weights):
      # Params exist (not init): the whole side network with one
      # hand-written backward; the same params and function as below.
      carry = side_fused.side_scan(flax.core.unfreeze(made),
                                   taps, layer_axis, dtype)
    else:
      carry = self._layers(layer, scan_kw, mixer_kw, taps, final, dtype,
                           layer_axis)
    return self._out(final, carry, frozen_ln)

  def _layers(self, layer, scan_kw, mixer_kw, taps, final, dtype,
              layer_axis):
    """The layers as one nn.scan (init, and every other structure)."""
    n_layers = taps.shape[layer_axis]
    start = jnp.zeros(final.shape, dtype)
    carry, _ = nn.scan(layer, in_axes=(0, nn.broadcast), length=n_layers,
                       **scan_kw)(
                           mixer=mixer_kw, combine=self.combine,
                           state=self.state, layer_axis=layer_axis,
                           name="layers")(
                               start, jnp.arange(n_layers), taps)
    return carry

  def _out(self, final, carry, frozen_ln):
    refined = final + carry if self.state == "delta" else carry

    norm = (nn.LayerNorm(epsilon=1e-6, name="LN_out")
            if self.out_norm == "new" else frozen_ln)
    if self.head_input == "sum":
      return norm(refined), carry
    if self.head_input == "side":
      return norm(carry), carry
    return jnp.concatenate([frozen_ln(final), norm(carry)], axis=-1), carry


def tap_indices(depth: int, every: int = 1) -> Tuple[int, ...]:
  """Blocks tapped when taking every `every`-th one, always ending at the last."""
  if every < 1:
    raise ValueError(f"LoSA option tap_every={every} must be >= 1.")
  return tuple(i for i in range(depth) if (depth - 1 - i) % every == 0)


def as_float32(x):
  """Side network math is float32 even when the backbone runs in bf16."""
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), x)
