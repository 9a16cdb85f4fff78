# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Inflates an image ViT checkpoint to a ViViT npz the trainer can load.

  python -m losa_jax.tools.inflate_vivit --image_ckpt vit.npz \
      --out vivit.npz --variant B/16 --num_frames 32 --image_size 224 \
      --pool_type tok
  python -m losa_jax.tools.inflate_vivit --help     # every flag

Writes a big_vision-layout npz that `config.model_init` loads like any ViT
checkpoint: the stem becomes a 3-D tubelet kernel (central-frame or
average-frame inflation) and the position embedding is resampled to the new
patch grid and tiled over time (losa_jax.models.vivit.inflate_from_image).
"""
from typing import Dict, Optional, Sequence, Tuple, Union

from absl import app
from absl import flags

from losa_jax.bench import common
from losa_jax.models import vit
from losa_jax.models import vivit

def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """This tool's flags; defined on demand, so importing claims no names."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("image_ckpt", None, "Image ViT checkpoint to inflate "
                      "(any format losa_jax.models.porting loads).", **fv)
  flags.DEFINE_string("out", None, "Path of the ViViT npz to write.", **fv)
  flags.DEFINE_string("variant", None, "ViT variant of the checkpoint "
                      "(e.g. B/16); empty: vivit.Model's defaults.", **fv)
  flags.DEFINE_list("patch_size", [], "Spatial patch size, one value (square)"
                    " or two (h,w); empty: the variant's.", **fv)
  flags.DEFINE_enum("pool_type", "tok", list(vit.POOL_TYPES), "Pooling of "
                    "the checkpoint's backbone (tok: it has a CLS token).",
                    **fv)
  flags.DEFINE_integer("temporal_patch_size", 2, "Frames per tubelet.",
                       lower_bound=1, **fv)
  flags.DEFINE_integer("num_frames", None, "Frames per clip the model will "
                       "see (sets the time steps of the position "
                       "embedding).", lower_bound=1, **fv)
  flags.DEFINE_list("image_size", None, "Clip frame size, one value (square)"
                    " or two (h,w).", **fv)
  flags.DEFINE_enum("method", "central", list(vivit.INFLATE_METHODS),
                    "Kernel inflation: the image kernel in the central frame"
                    " (zeros elsewhere) or averaged over frames.", **fv)
  flags.DEFINE_enum("posemb", "resize_tile", list(vivit.POSEMB_INIT),
                    "Position embedding: resampled to the new grid and tiled "
                    "over time, or only tiled.", **fv)
  flags.DEFINE_bool("scan", False, "Write the scanned-blocks layout "
                    "(model.backbone.scan=True).", **fv)
  flags.mark_flags_as_required(["image_ckpt", "out", "num_frames",
                                "image_size"], flag_values=flag_values)


def _pair(name: str, values: Sequence[str]) -> Tuple[int, ...]:
  """["224"] -> (224, 224); ["224", "320"] -> (224, 320)."""
  try:
    ints = tuple(int(v) for v in values)
    if len(ints) not in (1, 2):
      raise ValueError
  except ValueError:
    raise app.UsageError(f"--{name}={','.join(values)}: expected one or two "
                         f"integers (square, or h,w), e.g. --{name}=224 or "
                         f"--{name}=224,320.") from None
  return ints * 2 if len(ints) == 1 else ints


def inflate(fv: flags.FlagValues, argv=None) -> str:
  """Inflates as the flags say; prints and returns the path written (argv:
  what `common.absl_main` passes, unused)."""
  del argv
  cfg: Dict[str, Union[str, int, bool, Tuple[int, ...]]] = dict(
      pool_type=fv.pool_type, temporal_patch_size=fv.temporal_patch_size,
      scan=fv.scan)
  if fv.variant:
    cfg["variant"] = fv.variant
  if fv.patch_size:
    cfg["patch_size"] = _pair("patch_size", fv.patch_size)
  hw = _pair("image_size", fv.image_size)
  path = vivit.inflate_checkpoint(fv.image_ckpt, fv.out, cfg, fv.method,
                                  clip_shape=(fv.num_frames, *hw),
                                  posemb=fv.posemb)
  print(f"Wrote {path}")
  return path


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Programmatic entry: `argv` = the flags (a private FlagValues parses
  them); returns the path written."""
  return inflate(*common.parse_private_flags(
      "losa_jax.tools.inflate_vivit", define_flags, argv))


if __name__ == "__main__":
  define_flags()
  app.run(common.absl_main(inflate))
