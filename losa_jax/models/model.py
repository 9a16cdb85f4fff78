# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""One adaptable model for every method: LoSA, LST, LAST, linear probe, full,
LoRA, adapters, ST-Adapters (video).

Param tree (names are the API; see `losa_jax.assembly.optim` for the freezing rules):

    backbone/...   the big_vision ViT (no head); frozen except for `full`, and
                   except its `*_lora/*`, `adapter_*/*` or `st_adapter_*/*`
                   leaves for lora / adapter / st_adapter
    side/...       the side network (the side methods: losa, lst, last)
    head/{kernel,bias}   the new classifier, zero-initialised

The backbone is wrapped in `nn.map_variables` so its frozen leaves are read
through `jax.lax.stop_gradient`; for the side methods the taps are
stop-gradient'ed again, so no gradient can reach the backbone even if a
caller differentiates the whole tree. `Model.apply(variables, images) -> (logits [B, C], out)`.
"""
import numbers
import re
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from losa_jax.models import side as side_lib
from losa_jax.models import side_fused
from losa_jax.models import side_last
from losa_jax.models import side_lst
from losa_jax.models import vit
from losa_jax.models import vivit

METHODS = ("losa", "linear", "full", "lora", "adapter", "lst", "last",
           "st_adapter")
# Methods that train a side network on frozen taps (`backbone_features`).
SIDE_METHODS = ("losa", "lst", "last")
# The side methods other than LoSA, by name: each module declares DEFAULTS,
# HELP, INTS, BOOLS, optional CHOICES and check(cfg, what), tap_key(cfg) and
# Network(cfg, backbone kwargs)(taps, final) -> a correction [B, N, D] added to
# the final features before the frozen encoder_norm.
SIDE_MODULES = {"lst": side_lst, "last": side_last}

# Backbone leaves that a method trains (a regex; absent: none); everything
# else under backbone/ is frozen. `optim.default_rules` builds the
# optimizer's rules from this table.
TRAINABLE_IN_BACKBONE = {"full": r".*", **vit.PEFT_PARAM_PATTERNS}
# Methods for video backbones (model.backbone.kind="vivit") only.
VIDEO_ONLY_METHODS = ("st_adapter",)
# Methods that add trainable leaves inside the backbone (which then runs in
# training mode, dropout included).
IN_BACKBONE_METHODS = ("lora", "adapter", "st_adapter")

LOSA_DEFAULTS = dict(
    rank=8,                 # r_c = r_t unless rank_channel / rank_token given
    rank_channel=None,
    rank_token=None,
    rank_time=None,         # video: temporal rank (defaults to rank_token)
    tap="block",            # block | attn | block_ln
    tap_every=1,
    combine="add",          # add | gated | concat
    state="delta",          # delta | stream
    mixer_order="channel_token",
    num_pairs=1,
    token_mixer="all",      # all | exclude_cls | full_rank | none
    share_weights=False,
    norms="pre",            # pre | none | post
    zero_init=True,
    head_input="sum",       # sum | side | concat
    out_norm="new",         # new (trainable LN_out) | backbone (frozen encoder_norm)
    pool="auto",            # auto (match backbone) | tok | gap
    video_token_mixing="space_time",
    remat=True,             # autodiff structures: recompute each layer in backward
    dtype="bfloat16",       # taps + side stream storage: bfloat16 | float32
    fused=True,             # side_fused's hand-written backward where the
                            # structure is the default; False: autodiff
)
LORA_DEFAULTS = dict(rank=8, targets="qv", alpha=None)
ADAPTER_DEFAULTS = dict(dim=8, placement="mlp")
# ST-Adapter (Pan et al. 2022) at its ViT-B/16 setting: bottleneck 384, a
# (time, height, width) = (3, 1, 1) depthwise kernel, before each attention.
ST_ADAPTER_DEFAULTS = dict(bottleneck=384, kernel_size=(3, 1, 1),
                           placement="attn", blocks=None)
TAPS = ("block", "attn", "block_ln")
# model.losa.pool: "auto" pools like the backbone's head.
LOSA_POOLS = ("auto", "tok", "gap", "map")
# model.backbone.kind: "vit" (images [B, H, W, 3]) or "vivit" (clips
# [B, T, H, W, 3], see losa_jax.models.vivit).
BACKBONE_KINDS = {"vit": vit._Model, "vivit": vivit._Model}  # pylint: disable=protected-access


def merged(defaults: dict, given: Optional[dict], what: str) -> dict:
  """defaults updated by `given`, refusing unknown keys by name."""
  given = dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    raise ValueError(f"Unknown {what} option(s) {unknown}; valid: "
                     f"{sorted(defaults)}.")
  return {**defaults, **given}


def check_int(value, name: str, *, minimum: int = 1, optional: bool = False,
              hint: str = "") -> None:
  """Raises ValueError unless `value` is an int >= minimum (None if optional).

  bools are refused (True would pass as 1); `name` is the full key, e.g.
  "config.model.losa.rank", and `hint` says what the field means.
  """
  if value is None and optional:
    return
  is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if not is_int or value < minimum:
    allowed = ("a positive integer" if minimum == 1 else
               f"an integer >= {minimum}")
    raise ValueError(f"{name}={value!r}: must be {allowed}"
                     f"{' or None' if optional else ''}{hint}.")


def check_choice(value, name: str, choices, hint: str = "") -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r}: choose one of {list(choices)}"
                     f"{hint}.")


def losa_options(given: Optional[dict], what: str = "losa") -> dict:
  """LOSA_DEFAULTS updated by `given`, every field and combination checked
  by name: the one check of the LoSA options (a config's, a Model's).

  what: how the dict is named in errors ("losa" in a Model,
  "config.model.losa" in a config).
  """
  cfg = merged(LOSA_DEFAULTS, given, what)
  # A zero or negative rank would reach flax as Dense(0) / a negative shape
  # (ZeroDivisionError or a broadcasting TypeError deep in init).
  for key, optional, hint in (
      ("rank", False, " (the side network's rank r, >= 1)"),
      ("rank_channel", True, " (None uses rank)"),
      ("rank_token", True, " (None uses rank)"),
      ("rank_time", True, " (None uses rank_token)"),
      ("tap_every", False, " (tap every n-th block)"),
      ("num_pairs", False, " (channel/token mixer pairs per layer)")):
    check_int(cfg[key], f"{what}.{key}", optional=optional, hint=hint)
  for key, choices in (("tap", TAPS), ("combine", side_lib.COMBINES),
                       ("state", side_lib.STATES),
                       ("mixer_order", side_lib.MIXER_ORDERS),
                       ("token_mixer", side_lib.TOKEN_MIXERS),
                       ("norms", side_lib.NORMS),
                       ("head_input", side_lib.HEAD_INPUTS),
                       ("out_norm", side_lib.OUT_NORMS),
                       ("pool", LOSA_POOLS),
                       ("video_token_mixing", side_lib.VIDEO_TOKEN_MIXING),
                       ("dtype", side_lib.DTYPES)):
    check_choice(cfg[key], f"LoSA option {what}.{key}", choices)
  for key in ("share_weights", "zero_init", "remat", "fused"):
    if not isinstance(cfg[key], bool):
      raise ValueError(f"LoSA option {what}.{key}={cfg[key]!r}: must be "
                       "True or False.")
  if cfg["state"] == "stream" and cfg["head_input"] != "sum":
    raise ValueError(f"LoSA option {what}.state='stream' needs "
                     f"{what}.head_input='sum' (got {cfg['head_input']!r}): "
                     "the stream already carries the backbone features.")
  return cfg


def side_options(method: str, given: Optional[dict],
                 what: Optional[str] = None) -> dict:
  """The options of side method `method` ("lst", "last": SIDE_MODULES), its
  DEFAULTS updated by `given`, every field checked by name."""
  mod, what = SIDE_MODULES[method], what or method
  cfg = merged(mod.DEFAULTS, given, what)
  for key in mod.INTS:
    check_int(cfg[key], f"{what}.{key}", hint=f" ({mod.HELP[key]})")
  for key in (*mod.BOOLS, "remat"):
    if not isinstance(cfg[key], bool):
      raise ValueError(f"{what}.{key}={cfg[key]!r}: must be True or False.")
  for key, choices in (("dtype", side_lib.DTYPES), ("pool", LOSA_POOLS),
                       *getattr(mod, "CHOICES", {}).items()):
    check_choice(cfg[key], f"{what}.{key}", choices)
  if hasattr(mod, "check"):
    mod.check(cfg, what)
  return cfg


def lora_options(given: Optional[dict], what: str = "lora") -> dict:
  """LORA_DEFAULTS updated by `given`; rank and alpha checked by name."""
  cfg = merged(LORA_DEFAULTS, given, what)
  # LoRA scales its delta by alpha / rank: rank 0 divides by zero.
  check_int(cfg["rank"], f"{what}.rank", hint=" (the LoRA rank, >= 1)")
  alpha = cfg["alpha"]
  if alpha is not None and (isinstance(alpha, bool) or
                            not isinstance(alpha, numbers.Real) or alpha <= 0):
    raise ValueError(f"{what}.alpha={alpha!r}: must be a positive number or "
                     "None (None scales the delta by 1, i.e. alpha = rank).")
  return cfg


def adapter_options(given: Optional[dict], what: str = "adapter") -> dict:
  """ADAPTER_DEFAULTS updated by `given`; dim and placement checked by name."""
  cfg = merged(ADAPTER_DEFAULTS, given, what)
  check_int(cfg["dim"], f"{what}.dim",
            hint=" (the adapter's bottleneck width, >= 1)")
  check_choice(cfg["placement"], f"{what}.placement", ("mlp", "both"))
  return cfg


def st_adapter_options(given: Optional[dict],
                       what: str = "st_adapter") -> dict:
  """ST_ADAPTER_DEFAULTS updated by `given`, every field checked by name.

  blocks: None (every block) or the indices of the blocks that get
  ST-Adapters (checked against the depth in `Model.backbone_kwargs`).
  """
  cfg = merged(ST_ADAPTER_DEFAULTS, given, what)
  check_int(cfg["bottleneck"], f"{what}.bottleneck",
            hint=" (the ST-Adapter's bottleneck width, >= 1)")
  k = cfg["kernel_size"]
  if not (isinstance(k, (tuple, list)) and len(k) == 3 and all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 1 and s % 2
      for s in k)):
    raise ValueError(f"{what}.kernel_size={k!r}: must be 3 odd positive "
                     "integers (time, height, width), e.g. (3, 1, 1).")
  check_choice(cfg["placement"], f"{what}.placement", vit.ST_PLACEMENTS)
  if cfg["blocks"] is not None:
    if not isinstance(cfg["blocks"], (tuple, list)) or not cfg["blocks"]:
      raise ValueError(f"{what}.blocks={cfg['blocks']!r}: must be None "
                       "(every block) or a non-empty list of block indices.")
    for b in cfg["blocks"]:
      check_int(b, f"{what}.blocks", minimum=0,
                hint=" (block indices; None: every block)")
  return cfg


def _frozen_reader(trainable: Optional[str]):
  """trans_in_fn for map_variables: stop_gradient on every frozen leaf."""
  pattern = re.compile(trainable) if trainable else None

  def read(variables):
    params = variables.get("params", {})
    flat = traverse_util.flatten_dict(params, sep="/")
    flat = {k: v if pattern and pattern.fullmatch(k) else
            jax.lax.stop_gradient(v) for k, v in flat.items()}
    return {**variables,
            "params": traverse_util.unflatten_dict(flat, sep="/")}
  return read


def _stack_bf16(xs):
  """jnp.stack(xs).astype(bf16) without a float32 stack: each [B, N, D] is
  converted as it is written into the bf16 stack (as 16-bit words on
  XLA:CPU, which moves converts across bf16 updates; see
  side_fused._as_words)."""
  words = side_fused.to_words(jnp.zeros((len(xs),) + xs[0].shape,
                                        jnp.bfloat16))
  for i, x in enumerate(xs):
    words = words.at[i].set(side_fused.to_words(x.astype(jnp.bfloat16)))
  return side_fused.from_words(words)


TapKey = Tuple[str, int, str]


def tap_key(losa: Optional[dict]) -> TapKey:
  """`(tap, tap_every, dtype)` of LoSA options: which backbone features a
  side network reads, and how they are stored.

  Two LoSA models with the same key read the same taps, to the bit, from one
  backbone pass: populations and multi-task serving compute them once per
  key, with `backbone_features`, as `Model` itself does.
  """
  cfg = losa_options(losa)
  return (cfg["tap"], cfg["tap_every"], cfg["dtype"])


def backbone_features(encoder_out, key: TapKey, *, depth: int,
                      backbone_params=None) -> Dict[str, Any]:
  """The side network's inputs from one backbone forward: the one function
  that `Model`, populations, multi-task serving, export and the feature cache
  use, so that every path stores the same taps in the same dtype.

  Args:
    encoder_out: `out["encoder"]` of the backbone (per-block "+sa"/"+mlp"
      [B, N, D], stacked [L, B, N, D] when scanned, and "pre_ln" [B, N, D]).
    key: `tap_key(losa options)`; with dtype "bfloat16" no float32 copy of
      [L', B, N, D] is made.
    depth: the backbone's number of blocks.
    backbone_params: the frozen backbone params (its `encoder_norm` is read
      for tap="block_ln" only).

  Returns:
    {"taps": [L', B, N, D] in the key's dtype, "final": [B, N, D] float32},
    constants (stop_gradient'ed).
  """
  tap, tap_every, dtype = key
  idx = side_lib.tap_indices(depth, tap_every)
  out = "+sa" if tap == "attn" else "+mlp"
  if "stacked" in encoder_out:     # scanned backbone: already [L, B, N, D]
    taps = encoder_out["stacked"][out]
    if len(idx) != depth:
      taps = taps[jnp.asarray(idx)]
  elif tap != "block_ln" and jnp.dtype(dtype) == jnp.bfloat16:
    taps = _stack_bf16([jax.lax.stop_gradient(encoder_out[f"block{i:02d}"][out])
                        for i in idx])
  else:
    taps = jnp.stack([encoder_out[f"block{i:02d}"][out] for i in idx])
  if tap == "block_ln":
    enc_norm = backbone_params["Transformer"]["encoder_norm"]
    taps = nn.LayerNorm().apply({"params": jax.lax.stop_gradient(enc_norm)},
                                taps)
  taps = jax.lax.stop_gradient(taps).astype(jnp.dtype(dtype))
  final = side_lib.as_float32(jax.lax.stop_gradient(encoder_out["pre_ln"]))
  return {"taps": taps, "final": final}


class Model(nn.Module):
  """Backbone + method + head. `__call__(images [B, H, W, 3]) -> (logits, out)`.

  Attributes:
    num_classes: classes of the new head.
    method: one of METHODS.
    backbone: kwargs of `vit.Model` (variant, pool_type, posemb, rep_size,
      scan, dtype_mm, ...), without num_classes.
    losa / lora / adapter / st_adapter: method options (see *_DEFAULTS).
    lst / last: side method options (`side_lst.DEFAULTS`, `side_last.DEFAULTS`).
  """
  num_classes: int
  method: str = "losa"
  backbone: Any = None
  losa: Any = None
  lora: Any = None
  adapter: Any = None
  st_adapter: Any = None
  lst: Any = None
  last: Any = None

  def backbone_module(self):
    """The backbone's linen class, chosen by model.backbone.kind."""
    kind = (self.backbone or {}).get("kind", "vit")
    if kind not in BACKBONE_KINDS:
      raise ValueError(f"model.backbone.kind={kind!r}: use one of "
                       f"{sorted(BACKBONE_KINDS)}.")
    return BACKBONE_KINDS[kind]

  def backbone_kwargs(self) -> dict:
    kw = dict(self.backbone or {})
    kw.pop("kind", None)
    if "num_classes" in kw:
      raise ValueError("model.backbone must not set num_classes: the head is "
                       "model-level (set num_classes on the config).")
    if self.method == "lora":
      lo = lora_options(self.lora, "lora")
      kw.update(lora_rank=lo["rank"], lora_targets=lo["targets"],
                lora_alpha=lo["alpha"])
    elif self.method == "adapter":
      ad = adapter_options(self.adapter, "adapter")
      kw.update(adapter_dim=ad["dim"], adapter_placement=ad["placement"])
    elif self.method == "st_adapter":
      kw.update(self._st_adapter_kwargs(kw))
    return {**vit.decode_variant(kw.pop("variant", None)), **kw}

  def _st_adapter_kwargs(self, kw: dict) -> dict:
    """The backbone's ST-Adapter fields; a video backbone only."""
    if self.backbone_module() is not vivit._Model:  # pylint: disable=protected-access
      raise ValueError("method='st_adapter' needs a video backbone: set "
                       "model.backbone.kind='vivit' (ST-Adapters convolve "
                       "over time, height and width).")
    st = st_adapter_options(self.st_adapter, "model.st_adapter")
    depth = {**vit.decode_variant(kw.get("variant")), **kw}.get("depth", 12)
    bad = [b for b in st["blocks"] or () if b >= depth]
    if bad:
      raise ValueError(f"model.st_adapter.blocks={st['blocks']!r}: {bad} "
                       f"beyond the backbone's {depth} blocks (0..{depth - 1}).")
    return dict(st_adapter_dim=st["bottleneck"],
                st_adapter_kernel=tuple(st["kernel_size"]),
                st_adapter_placement=st["placement"],
                st_adapter_blocks=None if st["blocks"] is None else tuple(
                    st["blocks"]))

  @nn.compact
  def __call__(self, images, *, train=False, precomputed=None,
               taps_only=False):
    """images [B, H, W, 3] -> (logits [B, C], out).

    precomputed: side methods only; {"taps": [L', B, N, D], "final":
      [B, N, D]} as returned with `taps_only=True`, or with "layer_axis": 1
      and taps [B, L', N, D] as a feature cache stores them (LoSA reads them
      in place; LST and LAST transpose them). The backbone is then not run
      at all; `images` is ignored.
    taps_only: side methods only; return those backbone features instead of
      logits.
    """
    if self.method not in METHODS:
      raise ValueError(f"Unknown method {self.method!r}: use one of {METHODS}.")
    if (precomputed is not None or taps_only) and (
        self.method not in SIDE_METHODS):
      raise ValueError(f"precomputed / taps_only need a side method "
                       f"{SIDE_METHODS}: other methods change the backbone's "
                       "features.")
    bb_kw = self.backbone_kwargs()
    if precomputed is not None:
      out = dict(precomputed)
      return self._head(self._side(out), out)

    trainable = TRAINABLE_IN_BACKBONE.get(self.method)
    bb_cls = self.backbone_module()
    if self.method == "full":
      backbone = bb_cls(name="backbone", **bb_kw)
    else:
      frozen_vit = nn.map_variables(bb_cls, "params",
                                    trans_in_fn=_frozen_reader(trainable),
                                    init=True)
      backbone = frozen_vit(name="backbone", **bb_kw)
    # The frozen backbone always runs in inference mode (no dropout).
    bb_train = train and self.method in ("full", *IN_BACKBONE_METHODS)
    pre_logits, out = backbone(images, train=bb_train)
    if self.method not in SIDE_METHODS:
      return self._head(pre_logits, out)
    out.update(backbone_features(out["encoder"], self.tap_key(),
                                 depth=self.depth(),
                                 backbone_params=self._backbone_params()))
    if taps_only:
      return {"taps": out["taps"], "final": out["final"]}
    return self._head(self._side(out), out)

  def _head(self, features, out):
    out["features"] = features
    logits = out["logits"] = nn.Dense(
        self.num_classes, kernel_init=nn.initializers.zeros,
        name="head")(features)
    return logits, out

  # --- side networks ---------------------------------------------------------

  def _backbone_params(self):
    # Read from this module's scope so it also works when the backbone was
    # not run (precomputed features).
    return jax.lax.stop_gradient(self.variables["params"]["backbone"])

  def tap_key(self) -> TapKey:
    """(tap, tap_every, dtype) of this side model's taps (see `tap_key`)."""
    if self.method in SIDE_MODULES:
      return SIDE_MODULES[self.method].tap_key(self.side_config())
    return tap_key(self.losa)

  def side_config(self) -> dict:
    """The checked options of an LST or LAST model."""
    return side_options(self.method, getattr(self, self.method))

  def init_from_backbone(self, params):
    """params with the side network initialised from the loaded backbone
    params where the side method's options ask for it (its module's
    `init_from_backbone`: LST's init="prune"), else params as given."""
    hook = getattr(SIDE_MODULES.get(self.method), "init_from_backbone", None)
    if hook is None:
      return params
    return {**params, "side": hook(params["side"], params["backbone"],
                                   self.side_config(), self.depth())}

  def _side(self, out):
    """Pooled features [B, D'] of this model's side network."""
    if self.method == "losa":
      return self._losa(out)
    cfg, bb_kw = self.side_config(), self.backbone_kwargs()
    bb_params = self._backbone_params()
    taps = jax.lax.stop_gradient(out["taps"])
    if out.get("layer_axis", 0):
      taps = jnp.moveaxis(taps, out["layer_axis"], 0)
    final = jax.lax.stop_gradient(out["final"])
    delta = SIDE_MODULES[self.method].Network(cfg, bb_kw, name="side")(
        taps, final)
    enc_norm = bb_params["Transformer"]["encoder_norm"]
    f = nn.LayerNorm().apply({"params": enc_norm}, final + delta)
    return self._pool(cfg["pool"], bb_kw.get("pool_type", "gap"), f, bb_kw,
                      bb_params)

  def depth(self) -> int:
    """The backbone's number of blocks."""
    return self.backbone_kwargs().get("depth", 12)

  def _losa(self, out):
    cfg = losa_options(self.losa, "losa")
    bb_kw = self.backbone_kwargs()
    pool_type = bb_kw.get("pool_type", "gap")
    bb_params = self._backbone_params()
    enc_norm = bb_params["Transformer"]["encoder_norm"]
    frozen_ln = lambda x: nn.LayerNorm().apply({"params": enc_norm}, x)
    mixer = dict(
        rank_channel=cfg["rank_channel"] or cfg["rank"],
        rank_token=cfg["rank_token"] or cfg["rank"],
        num_prefix=1 if pool_type == "tok" else 0, grid=self._token_grid(out),
        **{k: cfg[k] for k in ("rank_time", "mixer_order", "num_pairs",
                               "token_mixer", "norms", "zero_init",
                               "video_token_mixing", "fused")})
    side = side_lib.SideNetwork(mixer=mixer, name="side", **{
        k: cfg[k] for k in ("combine", "state", "share_weights", "head_input",
                            "out_norm", "remat", "dtype")})
    f, out["side_state"] = side(
        jax.lax.stop_gradient(out["taps"]),
        jax.lax.stop_gradient(out["final"]), frozen_ln,
        layer_axis=out.get("layer_axis", 0))
    return self._pool(cfg["pool"], pool_type, f, bb_kw, bb_params)

  def _token_grid(self, out):
    """(n_t, n_s) of a video backbone's tokens (static ints); None for images."""
    if "token_grid" in out or self.backbone_module() is not vivit._Model:  # pylint: disable=protected-access
      return out.get("token_grid")
    # Precomputed taps: the grid follows from num_frames and the token count.
    kw = self.backbone_kwargs()
    if not kw.get("num_frames"):
      raise ValueError("Precomputed taps of a video backbone need "
                       "model.backbone.num_frames to recover the (time, "
                       "space) token grid.")
    n_t = kw["num_frames"] // kw.get("temporal_patch_size", 2)
    n = out["final"].shape[1] - (kw.get("pool_type", "gap") == "tok")
    return (n_t, n // n_t)

  def _pool(self, pool, pool_type, f, bb_kw, bb_params):
    """Pools refined tokens [B, N, D'] like the backbone's head: -> [B, D']."""
    if pool == "auto":
      pool = {"tok": "tok", "0": "tok", "gap": "gap", "map": "map"}.get(
          pool_type)
      if pool is None:
        raise ValueError(f"LoSA cannot pool a backbone with pool_type="
                         f"{pool_type!r}; set model.losa.pool to 'tok' or 'gap'.")
    prefix = 1 if pool_type == "tok" else 0
    if pool == "tok":
      x = f[:, 0]
    elif pool == "gap":
      x = jnp.mean(f[:, prefix:], axis=1)
    else:                  # "map" (losa_options checked the choice)
      if f.shape[-1] != bb_kw["width"]:
        raise ValueError("LoSA pool='map' uses the frozen MAP head, which "
                         "needs head_input 'sum' or 'side'.")
      x = vit.MAPHead(num_heads=bb_kw.get("num_heads", 12),
                      mlp_dim=bb_kw.get("mlp_dim")).apply(
                          {"params": bb_params["MAPHead_0"]}, f)
    if "pre_logits" in bb_params:
      # The backbone's frozen pre-logits, on each width-D part of the pooled
      # features: head_input="concat" pools [LN(b_L), LN_out(a_L)], and its
      # first half then is exactly a linear probe's input.
      p, width = bb_params["pre_logits"], bb_kw["width"]
      parts = jnp.split(x, x.shape[-1] // width, axis=-1)
      x = jnp.concatenate([jnp.tanh(h @ p["kernel"] + p["bias"])
                           for h in parts], axis=-1)
    return x
