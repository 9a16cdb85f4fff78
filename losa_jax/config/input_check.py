# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Checks a batch of the data against the input the model is built for."""
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from losa_jax.config import schema as config_lib


def check_batch(batch: Mapping[str, Any], config, *,
                where: str = "config.input", multiview: bool = False) -> None:
  """Checks the first (per-process) batch of a split, before the first step.

  A mismatch would otherwise surface as a flax ScopeParamShapeError deep in
  the first step, or, for labels >= num_classes, not at all (one_hot of an
  out-of-range label is all zeros).

  Args:
    batch: numpy (or jax) arrays: "image" float [B, H, W, C], or
      [B, T, H, W, C] for a video backbone (config.model.backbone.kind=
      "vivit"); "label" int [B]; optional "_mask" [B] (1 = real example,
      0 = padding, whose labels are not checked).
    config: the trainer config (config.image_size, config.num_classes and
      config.model.backbone.kind give the expected input; see
      `input_shape`).
    where: the config entry whose data and pp made the batch, named in the
      errors: "config.input" or "config.evals.<name>".
    multiview: the batch has a views axis after B ([B, V, ...]; multi-view
      video evaluation).

  Raises:
    ValueError: naming both shapes and the config keys to change.
  """
  keep = f"end {where}.pp with keep('image', 'label')"
  for key in ("image", "label"):
    if key not in batch:
      raise ValueError(f"The first batch of {where}.data has no {key!r} "
                       f"(keys {sorted(batch)}): {keep}.")
  image = batch["image"]
  shape = tuple(np.shape(image))
  _check_shape(shape, config, where, multiview)
  dtype = image.dtype if hasattr(image, "dtype") else np.asarray(image).dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"{where}: the images are {dtype}, but the model takes "
                     f"floats: scale them in {where}.pp, e.g. "
                     "value_range(-1, 1).")
  label = np.asarray(batch["label"])
  if label.shape != shape[:1]:
    raise ValueError(f"{where}: the first batch has labels of shape "
                     f"{label.shape} for images {shape}; the model takes one "
                     f"class index per example, [{shape[0]}] (no one-hot "
                     f"in {where}.pp).")
  if not np.issubdtype(label.dtype, np.integer):
    raise ValueError(f"{where}: the labels are {label.dtype}; the model takes "
                     f"integer class indices (check {where}.pp).")
  if "_mask" in batch:
    label = label[np.asarray(batch["_mask"]).astype(bool)]
  num_classes = int(config.num_classes)
  if label.size and (label.min() < 0 or label.max() >= num_classes):
    fix = (f"map the labels to 0..{num_classes - 1} in {where}.pp"
           if label.min() < 0 else
           f"set config.num_classes to the data's class count (at least "
           f"{label.max() + 1}), or map the labels in {where}.pp")
    raise ValueError(
        f"{where}: the first batch has labels in [{label.min()}, "
        f"{label.max()}] but config.num_classes={num_classes} allows 0.."
        f"{num_classes - 1}: {fix}.")


def _check_shape(shape, config, where: str, multiview: bool) -> None:
  """The image shape against `input_shape(config)`, with the fix to make."""
  want = config_lib.input_shape(config)
  got = shape[2 if multiview else 1:]
  if got == want:
    return
  video = len(want) == 4
  layout = ("[B, V, " if multiview else "[B, ") + (
      "T, H, W, C]" if video else "H, W, C]")
  op = "video_" if video else ""
  model = (f"the model is built for {layout} with per-example {want} "
           f"(config.image_size={config.get('image_size', 224)!r}, "
           f"config.model.backbone.kind={'vivit' if video else 'vit'!r}, "
           "3 channels)")
  if len(got) != len(want):
    fix = (f"make {where}.pp give {layout} batches" +
           (" (for clips, set config.model.backbone.kind='vivit' and "
            "config.image_size=(T, H, W))" if len(got) == 4 else ""))
  elif got[-1] != want[-1]:
    fix = (f"the data has {got[-1]} channel(s): decode it to 3 channels in "
           f"{where}.pp, e.g. {op}decode(channels=3)")
  elif video and got[0] != want[0]:
    fix = (f"sample {want[0]} frames in {where}.pp (e.g. video_sample("
           f"{want[0]})), or set config.image_size={got[:-1]} (and "
           "config.model.backbone.num_frames) to build the model for them")
  else:
    hw = want[-3] if want[-3] == want[-2] else want[-3:-1]
    size = (got[0] if not video and got[0] == got[1] else got[:-1])
    fix = (f"resize/crop to {want[-3:-1]} in {where}.pp (e.g. "
           f"{op}resize({hw})), or set config.image_size={size} to build "
           "the model for this data")
  raise ValueError(f"{where}: the first batch has image shape {shape} but "
                   f"{model}: {fix}.")
