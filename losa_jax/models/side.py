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

`Mixer.spec` declares the params once; `fused` picks the implementation
that init and apply both run: `reference_mixer` (autodiff, every structure)
or `side_fused.mixer` (the default structure, hand-written backward).
`dtype` stores the taps and the side stream between layers; mixer math and
the head's input LN_out(sg(b_L) + a_L) are float32.
"""
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
from jax import lax
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
EPSILON = side_fused.EPSILON      # every LayerNorm of the side network
# The options every side method other than LoSA has (model.SIDE_MODULES;
# LoSA's are model.LOSA_DEFAULTS), checked by model.side_options.
SHARED_DEFAULTS = dict(dtype="bfloat16", pool="auto", remat=True)
SHARED_HELP = dict(
    dtype="storage of the taps and the side stream: bfloat16 | float32",
    pool="auto (match the backbone) | tok | gap | map",
    remat="recompute each side block in the backward")

Spec = Dict[str, Any]    # {name: Spec, or (shape, init) for a param}


def _no_site(name, x):   # pylint: disable=unused-argument
  return x


class _Declare(nn.Module):
  """Declares the params of a nested spec in its own scopes; returns them.

  A param's init RNG is the root key folded with its path's scope names and
  its index within its scope (flax's `make_rng`): the values depend on the
  names and the order in a scope (kernel before bias, as `nn.Dense`), not on
  what code runs (tests/test_side_init.py holds them).
  """
  spec: Spec

  @nn.compact
  def __call__(self):
    return _declare(self, self.spec)


def _declare(module: nn.Module, spec: Spec):
  """Declares `spec` in `module`'s scope (call from its compact method)."""
  return {k: module.param(k, v[1], v[0]) if isinstance(v, tuple)
          else _Declare(v, name=k)() for k, v in spec.items()}


def _dense_spec(fan_in: int, features: int, kernel_init) -> Spec:
  return {"kernel": ((fan_in, features), kernel_init),
          "bias": ((features,), nn.initializers.zeros)}


def _layer_norm(p, x):
  """flax's LayerNorm over the last axis (var = E[x^2] - E[x]^2, >= 0)."""
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.maximum(0.0, jnp.mean(x * x, -1, keepdims=True) - mean * mean)
  return (x - mean) * (lax.rsqrt(var + EPSILON) * p["scale"]) + p["bias"]


def _dense(p, x, site, name):
  y = jnp.dot(site(name + ":in", x), p["kernel"]) + p["bias"]
  return site(name + ":out", y)


def _low_rank_mlp(p, x, site, name):
  """Dense(rank) -> GELU -> Dense(features) on the last axis, or one Dense
  when the spec has no "down" (full rank): [..., F_in] -> [..., F_out]."""
  if "down" in p:
    x = nn.gelu(_dense(p["down"], x, site, name + "/down"))
  return _dense(p["up"], x, site, name + "/up")


class Mixer(nn.Module):
  """Low-rank mixer M_i: [B, N, D] -> delta [B, N, D] (sum of branch outputs).

  Branches run sequentially with residuals (u = z + c; t = Token(u)); the
  returned delta is c + t, accumulated branch by branch so that zero branches
  give an exact zero. z may be stored in any float dtype; the math and the
  returned delta are float32 (float64 stays float64: the tests' reference).
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
    function, hand-written backward) instead of `reference_mixer`: `fused`
    and the default structure, one channel-token pair, pre-LN, images."""
    return (self.fused and self.norms == "pre" and self.token_mixer == "all"
            and self.grid is None and self.num_pairs == 1
            and self.mixer_order == "channel_token")

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

  def prefix(self, kind: str) -> int:
    """Leading tokens (CLS) that branch `kind` leaves out: CLS is mixed with
    the patches only when asked, and never in the factorised video mixers
    (its position fits no frame)."""
    exclude_cls = self.token_mixer == "exclude_cls" or (
        self.grid is not None and self.video_token_mixing != "joint")
    return self.num_prefix if kind != "channel" and exclude_cls else 0

  def spec(self, n: int, d: int) -> Spec:
    """Every param of the mixer for z [B, n, d]: names, shapes, inits."""
    out_init = (nn.initializers.zeros if self.zero_init
                else nn.initializers.normal(stddev=1e-3))
    spec = {}
    for j, (kind, rank) in enumerate(self.branches()):
      width = {"channel": d, "token": n - self.prefix(kind),
               **dict(zip(("time", "space"), self.grid or ()))}[kind]
      mlp = {"up": _dense_spec(rank or width, width, out_init)}
      if rank is not None:
        mlp = {"down": _dense_spec(width, rank, nn.initializers.lecun_normal()),
               **mlp}
      spec[f"{kind}_{j}"] = {"mlp": mlp} if self.norms == "none" else {
          "LayerNorm": {"scale": ((d,), nn.initializers.ones),
                        "bias": ((d,), nn.initializers.zeros)}, "mlp": mlp}
    return spec

  def fn(self) -> Callable:
    """(params, z) -> delta, the implementation the options pick, on z
    promoted to at least float32."""
    impl = fused_mixer if self.uses_fused_vjp() else functools.partial(
        reference_mixer, self)
    return lambda params, z: impl(params, z.astype(
        jnp.promote_types(z.dtype, jnp.float32)))

  @nn.compact
  def __call__(self, z):
    return self.fn()(_declare(self, self.spec(*z.shape[1:])), z)


def reference_mixer(m: Mixer, params, z, site=_no_site):
  """delta of the mixer `m` (its options) by plain math, for autodiff.

  site(name, x) -> x sees every Dense's input and output ("token_1/mlp/up:in")
  (`side_precision` perturbs them there).
  """
  delta, cur = jnp.zeros_like(z), z
  for j, (kind, _) in enumerate(m.branches()):
    name = f"{kind}_{j}"
    p = params[name]
    y = _layer_norm(p["LayerNorm"], cur) if m.norms == "pre" else cur
    mlp = lambda x, p=p, name=name: _low_rank_mlp(p["mlp"], x, site,
                                                  name + "/mlp")
    if kind == "channel":
      y = mlp(y)
    else:
      k = m.prefix(kind)
      out = _mix_tokens(kind, m.grid, y[:, k:], mlp)
      # Prefix tokens (CLS) get no token-mixing update, only channel mixing.
      y = jnp.concatenate([jnp.zeros_like(y[:, :k]), out], 1) if k else out
    if m.norms == "post":
      y = _layer_norm(p["LayerNorm"], y)
    cur, delta = cur + y, delta + y
  return delta


def _mix_tokens(kind, grid, tokens, mlp):
  """mlp over the token axis [B, N, D] (kind "token"), or over one factor of
  a video grid (n_t, n_s): "space" per frame, "time" per position."""
  b, n, d = tokens.shape
  if kind == "token":
    return mlp(tokens.transpose(0, 2, 1)).transpose(0, 2, 1)   # over [B, D, N]
  n_t, n_s = grid
  if n_t * n_s != n:
    raise ValueError(f"Video token grid {grid} holds {n_t * n_s} tokens but "
                     f"the tap has {n} (after the prefix tokens).")
  x = tokens.reshape(b, n_t, n_s, d)
  if kind == "space":      # over n_s, same weights for every frame
    x = mlp(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)     # [B, T, D, S]
  else:                    # "time": over n_t, same weights for every position
    x = mlp(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)     # [B, S, D, T]
  return x.reshape(b, n, d)


def fused_params(tree) -> side_fused.Params:
  """The default mixer's params tree (`Mixer.spec`) as `side_fused.Params`
  (leaves as they are: [L', ...] for stacked layers)."""
  leaves = []
  for branch in (tree["channel_0"], tree["token_1"]):
    leaves += [branch["LayerNorm"]["scale"], branch["LayerNorm"]["bias"]]
    for dense in ("down", "up"):
      leaves += [branch["mlp"][dense]["kernel"], branch["mlp"][dense]["bias"]]
  return side_fused.Params(*leaves)


def fused_mixer(tree, z):
  """`side_fused.mixer` on the default mixer's params tree."""
  return side_fused.mixer(fused_params(tree), z)


class _LayerParams(nn.Module):
  """A scan body: (carry) -> (carry, one layer's params), the mixer's and
  the combine's (its spec is made here: nn.scan would sort a field's keys,
  and the order of kernel and bias in a scope sets their RNGs)."""
  mixer: dict
  combine: str
  shape: Tuple[int, int]     # (N, D)

  @nn.compact
  def __call__(self, carry):
    n, d = self.shape
    spec = {"mixer": Mixer(**self.mixer, parent=None).spec(n, d)}
    if self.combine == "gated":
      spec["gate"] = ((), nn.initializers.ones)
    elif self.combine == "concat":
      # [I; I] init: at step 0 the projection is exactly b + carry.
      eye = jnp.eye(d, dtype=jnp.float32)
      spec["combine"] = _dense_spec(2 * d, d,
                                    lambda *_: jnp.concatenate([eye, eye]))
    return carry, _declare(self, spec)


def _stop_token_biases(tree):
  """The mixer params with every token MLP's up bias stop_gradient'ed.

  That bias adds one value per token to every channel; where each reader of
  its output normalises tokens over channels (the mixers' LayerNorms, the
  output norm; a "concat" combine does not), its exact gradient is 0, and
  autodiff's float32 noise would become lr-sized Adam steps
  (docs/side_fused.md, "The token MLP's output bias").
  """
  def stop(name, branch):
    if name.startswith("channel"):
      return branch
    up = {**branch["mlp"]["up"],
          "bias": lax.stop_gradient(branch["mlp"]["up"]["bias"])}
    return {**branch, "mlp": {**branch["mlp"], "up": up}}
  return {k: stop(k, v) for k, v in tree.items()}


class SideNetwork(nn.Module):
  """Runs the mixers over the taps and returns the head's token features.

  Inputs: `taps` [L', B, N, D] (or [B, L', N, D] with `layer_axis=1`, as a
  feature cache stores them), stop-gradient'ed backbone features of the
  tapped blocks, in any float dtype (each b_i is cast to `dtype` when read);
  `final`, the backbone's last residual-stream output sg(b_L) [B, N, D] (the
  taps may skip layers); `frozen_ln`, the backbone's own encoder_norm.
  Returns (f, a): f = LN_out(sg(b_L) + a_L) [B, N, D] by default ([B, N, 2D]
  for head_input="concat") and a = a_L [B, N, D].

  The params are stacked on a leading L' axis under side/layers/ (one
  `nn.scan` declares them); `model.losa_options` checks the options. The
  default structure (a fused mixer, combine "add", state "delta", unshared
  weights) runs `side_fused.side_scan`; every other one runs `_scan` with
  autodiff, each layer rematerialised when `remat`.
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
    dtype = jnp.dtype(self.dtype)
    n_layers = taps.shape[layer_axis]
    if self.share_weights:
      scan_kw = dict(variable_broadcast="params", split_rngs={"params": False})
    else:
      scan_kw = dict(variable_axes={"params": 0}, split_rngs={"params": True})
    mixer = Mixer(**self.mixer, parent=None)   # unbound: for its options
    _, layers = nn.scan(_LayerParams, in_axes=(), length=n_layers, **scan_kw)(
        self.mixer, self.combine, final.shape[1:], name="layers")(
            jnp.zeros(()))
    if mixer.uses_fused_vjp() and (self.combine, self.state) == (
        "add", "delta") and not self.share_weights:
      # side_scan's backward gives the null token biases exact zeros
      # itself; a stop_gradient on the params would change the compiled
      # program, and with it the bf16 rounding that a population member
      # shares with its single run.
      carry = side_fused.side_scan(fused_params(layers["mixer"]), taps,
                                   layer_axis, dtype)
    else:
      if mixer.norms == "post" or (mixer.norms == "pre"
                                   and self.combine != "concat"):
        layers = {**layers, "mixer": _stop_token_biases(layers["mixer"])}
      carry = self._scan(mixer, layers, taps, final, dtype, layer_axis)
    return self._out(final, carry, frozen_ln)

  def _layer(self, mixer, p, a, b):
    """a_i from a_{i-1} [B, N, D] and b_i (both in the storage dtype)."""
    if self.combine == "add":
      z = b + a
    elif self.combine == "gated":
      z = b + (p["gate"] * a).astype(a.dtype)
    else:
      z = _dense(p["combine"], jnp.concatenate([b, a], -1).astype(
          jnp.float32), _no_site, "combine").astype(a.dtype)
    y = mixer.fn()(p["mixer"], z)
    new = a + y if self.state == "delta" else z + y
    return new.astype(a.dtype)

  def _scan(self, mixer, layers, taps, final, dtype, layer_axis):
    """a_L by a scan over the layers, differentiated by autodiff."""
    def body(a, xs):
      p, i = xs
      b = lax.dynamic_index_in_dim(taps, i, layer_axis, keepdims=False)
      return self._layer(mixer, p, a, b.astype(a.dtype)), None
    if self.remat and not mixer.uses_fused_vjp():
      # The fused mixer already keeps only z and low-rank activations.
      body = jax.checkpoint(body, prevent_cse=False)
    n_layers = taps.shape[layer_axis]
    carry, _ = lax.scan(body, jnp.zeros(final.shape, dtype),
                        (layers, jnp.arange(n_layers)))
    return carry

  def _out(self, final, carry, frozen_ln):
    refined = final + carry if self.state == "delta" else carry
    norm = (nn.LayerNorm(epsilon=EPSILON, name="LN_out")
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


def scan_taps(block, carry, taps, *, remat: bool, **kw):
  """`block(**kw)` scanned over the taps [L', B, N, D] (call in a compact
  method): params stacked on a leading L' axis under `blocks/`, each block
  rematerialised in the backward when `remat`. Returns the last carry."""
  if remat:
    block = nn.remat(block, prevent_cse=False)
  carry, _ = nn.scan(block, variable_axes={"params": 0},
                     split_rngs={"params": True}, in_axes=0,
                     length=taps.shape[0])(name="blocks", **kw)(carry, taps)
  return carry
