# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""ViViT ("Model 1": joint space-time attention) with the image ViT's params.

A clip [B, T, H, W, 3] is cut into tubelets by one 3-D convolution; the
n_t * n_s tokens (TIME-MAJOR: row i * n_s + j is time step i, spatial cell
j; an optional CLS first) go through the unchanged image encoder
(`vit.Encoder`), so every param but `embedding/kernel` (t, ph, pw, 3, D)
and `pos_embedding` (1, n_t * n_s, D) has the image ViT's name and shape.
`Model(...).apply` returns what `vit.Model` does, and `out["token_grid"] =
(n_t, n_s)` (static ints) for the LoSA side network's space and time
mixing. `inflate_from_image` turns an image checkpoint into these params.
docs/video.md ("The backbone" and "Inflation from an image checkpoint")
has the param layout and the inflation rules.
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.models import layouts
from losa_jax.models import porting
from losa_jax.models import vit
from losa_jax.utils import npz as npz_lib

INFLATE_METHODS = ("central", "average")
POSEMB_INIT = ("resize_tile", "tile")


def token_grid(clip_shape: Sequence[int], patch_size: Sequence[int],
               temporal_patch_size: int) -> Tuple[int, int, int, int]:
  """(T, H, W) clip -> (n_t, gh, gw, n_s) tubelet grid; checks divisibility."""
  if len(clip_shape) != 3:
    raise ValueError(f"clip_shape must be (num_frames, height, width), got "
                     f"{tuple(clip_shape)}.")
  t_len, h, w = (int(s) for s in clip_shape)
  ph, pw = (int(p) for p in patch_size)
  tp = int(temporal_patch_size)
  bad = [f"{what} {n} is not divisible by the {name} {p}" for what, n, name, p
         in (("num_frames", t_len, "temporal_patch_size", tp),
             ("height", h, "patch height", ph), ("width", w, "patch width", pw))
         if p <= 0 or n % p]
  if bad:
    raise ValueError("ViViT tubelets do not tile the clip "
                     f"{(t_len, h, w)}: " + "; ".join(bad) +
                     ". Crop/sample the clip or change the patch sizes.")
  gh, gw = h // ph, w // pw
  return t_len // tp, gh, gw, gh * gw


class _Model(vit._Model):  # pylint: disable=protected-access
  """ViViT; every field of `vit._Model` (LoRA/adapters included) plus:

  Attributes:
    temporal_patch_size: frames per tubelet (t).
    num_frames: if set, clips must have exactly this many frames (makes the
      token grid known without an input, e.g. for precomputed LoSA taps).
  """
  temporal_patch_size: int = 2
  num_frames: Optional[int] = None

  def embed(self, video, out):
    """video [B, T, H, W, 3] -> (time-major tokens [B, n_t * n_s, D], the
    grid (n_t, gh, gw) of the `*_2d` outputs); out["token_grid"] = (n_t, n_s)."""
    if jnp.ndim(video) != 5:
      raise ValueError(f"ViViT expects clips [B, T, H, W, 3], got shape "
                       f"{jnp.shape(video)}; images go to vit.Model.")
    if self.num_frames is not None and video.shape[1] != self.num_frames:
      raise ValueError(f"The ViViT backbone has num_frames={self.num_frames} "
                       f"but the clips have {video.shape[1]} frames (shape "
                       f"{video.shape}); sample that many frames in the pp.")
    n_t, gh, gw, n_s = token_grid(video.shape[1:4], self.patch_size,
                                  self.temporal_patch_size)
    out["token_grid"] = (n_t, n_s)
    video = jnp.asarray(video, self.dtype_mm)
    tube = (self.temporal_patch_size, *self.patch_size)
    x = out["stem"] = nn.Conv(self.width, tube, strides=tube, padding="VALID",
                              name="embedding", dtype=self.dtype_mm)(video)
    n, _, _, _, c = x.shape
    x = jnp.reshape(x, [n, n_t * n_s, c])
    if self.posemb == "sincos2d":
      # A fixed 2-D table has no time axis: the same table for every frame.
      pe = jnp.tile(vit.posemb_sincos_2d(gh, gw, c, dtype=x.dtype),
                    [1, n_t, 1])
    else:
      pe = vit.get_posemb(self, self.posemb, (n_t, gh, gw), c,
                          "pos_embedding", x.dtype)
    # Posemb before cls, as in the image model (no cls slot).
    x = out["with_posemb"] = x + pe
    return x, (n_t, gh, gw)


def Model(num_classes=None, *, variant=None, **kw):  # pylint: disable=invalid-name
  """Factory: `Model(400, variant="B/16", temporal_patch_size=2)`."""
  return _Model(num_classes, **{**vit.decode_variant(variant), **kw})


def _kw(video_cfg: Any) -> Dict[str, Any]:
  kw = dict(video_cfg or {})
  kw.pop("kind", None)
  kw = {**vit.decode_variant(kw.pop("variant", None)), **kw}
  if "patch_size" in kw:
    kw["patch_size"] = tuple(kw["patch_size"])
  return kw


# --- Inflation ------------------------------------------------------------


def inflate_kernel(kernel: Any, t: int, method: str = "central") -> np.ndarray:
  """2-D patch kernel (h, w, c, D) -> 3-D tubelet kernel (t, h, w, c, D).

  central: the 2-D kernel at time index t // 2 of axis 0, zeros elsewhere
    (each tubelet initially embeds its central frame exactly like the image
    model embeds that frame).
  average: the 2-D kernel on every time index, divided by t (a tubelet of t
    identical frames is embedded exactly like one frame).
  """
  k = np.asarray(kernel)
  if k.ndim != 4:
    raise ValueError(f"inflate_kernel: embedding/kernel must be 2-D "
                     f"(h, w, c, D), got shape {k.shape}.")
  if method not in INFLATE_METHODS:
    raise ValueError(f"Unknown inflation method {method!r}: use one of "
                     f"{INFLATE_METHODS}.")
  work = np.float64 if k.dtype == np.float64 else np.float32
  if method == "central":
    out = np.zeros((t, *k.shape), work)
    out[t // 2] = k.astype(work)
  else:
    out = np.repeat(k.astype(work)[None], t, axis=0) / t
  return out.astype(k.dtype)


def inflate_posemb(posemb: Any, n_t: int, grid: Tuple[int, int], *,
                   mode: str = "resize_tile",
                   image_grid: Optional[Sequence[int]] = None) -> np.ndarray:
  """Image posemb [1, n_img, D] (no cls row) -> video [1, n_t * gh * gw, D].

  resize_tile: bilinear resample to `grid` (layouts.resample_posemb), then
  tile over time (time-major); tile: only tile (the grids must agree).
  """
  pe = np.asarray(posemb)
  if mode not in POSEMB_INIT:
    raise ValueError(f"Unknown posemb inflation {mode!r}: use one of "
                     f"{POSEMB_INIT}.")
  if mode == "resize_tile":
    pe = layouts.resample_posemb(pe, grid, image_grid)
  elif pe.shape[1] != grid[0] * grid[1]:
    raise ValueError(f"posemb inflation 'tile': the checkpoint posemb has "
                     f"{pe.shape[1]} positions but the clip's patch grid "
                     f"{tuple(grid)} has {grid[0] * grid[1]}; use "
                     "'resize_tile'.")
  return np.tile(pe, (1, n_t, 1))


def inflate_from_image(image_params: Any, video_cfg: Any,
                       method: str = "central", *,
                       clip_shape: Sequence[int],
                       posemb: str = "resize_tile",
                       image_grid: Optional[Sequence[int]] = None,
                       num_classes: Optional[int] = None) -> Dict[str, Any]:
  """Image ViT params -> params of `vivit.Model(num_classes, **video_cfg)`:
  `inflate_kernel`, `inflate_posemb`, everything else copied by name
  (docs/video.md, "Inflation from an image checkpoint").

  Args:
    image_params: an image ViT param tree or an npz path (`path.npz[:key]`).
    video_cfg: `vivit.Model` kwargs (variant, patch_size, pool_type,
      temporal_patch_size, scan, ...; a `kind` key is ignored).
    method: "central" or "average" kernel inflation.
    clip_shape: (num_frames, height, width) of the model's clips.
    posemb: "resize_tile" or "tile" (see `inflate_posemb`).
    image_grid: the checkpoint's (h, w) patch grid, needed only if it is
      not square.
    num_classes: of the target head, if the target should have one.

  Returns:
    A nested dict of numpy arrays in the target's dtypes (plus passed-through
    extras such as the image head).

  Raises:
    ValueError: naming every param whose name or shape does not fit.
  """
  kw = _kw(video_cfg)
  target = npz_lib.flatten(jax.eval_shape(
      _Model(num_classes, **kw).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, *clip_shape, 3), jnp.float32))["params"])
  n_t, gh, gw, _ = token_grid(clip_shape, kw.get("patch_size", (16, 16)),
                              kw.get("temporal_patch_size", 2))
  tree = layouts.fix_old_checkpoints(
      porting.read_checkpoint(image_params)[0],
      expected_posemb_len=None if image_grid is None else int(
          np.prod(image_grid)))
  scan = any(k.startswith("Transformer/encoderblock/") for k in target)
  depth = kw.get("depth", 12)
  tree = layouts.loop_to_scan(tree) if scan else layouts.scan_to_loop(
      tree, depth)
  src = npz_lib.flatten(tree)

  out, errors = {}, []
  for name, spec in target.items():
    want = tuple(spec.shape)
    if name not in src:
      errors.append(f"model param {name} {want} is missing from the image "
                    "checkpoint")
      continue
    value = np.asarray(src[name])
    have = tuple(value.shape)
    try:
      if name == "embedding/kernel" and have != want:
        if len(have) != 4 or have != want[1:]:
          raise ValueError(
              f"embedding/kernel: the image kernel {have} cannot be inflated "
              f"to the tubelet kernel {want} (patch size, channels and width "
              "must match: use the checkpoint's variant and patch size)")
        value = inflate_kernel(value, want[0], method)
      elif name == "pos_embedding" and have != want:
        if len(have) != 3 or have[2] != want[2]:
          raise ValueError(f"pos_embedding: image posemb {have} has another "
                           f"width than the video posemb {want}")
        value = inflate_posemb(value, n_t, (gh, gw), mode=posemb,
                               image_grid=image_grid)
    except ValueError as e:
      errors.append(str(e))
      continue
    if tuple(value.shape) != want:
      errors.append(f"checkpoint param {name} has shape {tuple(value.shape)}"
                    f" but the video model expects {want}")
      continue
    out[name] = value.astype(spec.dtype)
  extras = sorted(set(src) - set(target))
  passthrough = [k for k in extras if k.startswith(("head/", "pre_logits/"))]
  unexpected = [k for k in extras if k not in passthrough]
  if unexpected:
    errors.append(f"image checkpoint params the video model does not have: "
                  f"{unexpected}")
  if errors:
    raise ValueError("Cannot inflate the image checkpoint into the ViViT "
                     f"model {kw}:\n  - " + "\n  - ".join(errors) +
                     "\nUse the image checkpoint's variant, patch size, "
                     "pool_type and rep_size for the video backbone.")
  for k in passthrough:
    out[k] = np.asarray(src[k])
  return npz_lib.unflatten(out)


def inflate_checkpoint(image_ckpt: Any, out_path: str, video_cfg: Any,
                       method: str = "central", **kw) -> str:
  """`inflate_from_image` and write the result as a big_vision npz."""
  params = inflate_from_image(image_ckpt, video_cfg, method, **kw)
  return npz_lib.save_npz(params, out_path)
