# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Offline demo: real digit data from installed wheels + a shipped tiny ViT.

* `pretrain`: the script that produced `losa_jax/assets/vit_mnist5k_tiny.npz`
  (data: `losa_jax.datasets.digits`).
* `run`: the README's main job.
"""
import os

from losa_jax.utils import io

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
BACKBONE_NPZ = os.path.join(ASSETS_DIR, "vit_mnist5k_tiny.npz")
BACKBONE_JSON = os.path.join(ASSETS_DIR, "vit_mnist5k_tiny.json")


def backbone_info(json_path: str = BACKBONE_JSON) -> dict:
  """The provenance record of the shipped backbone (config, accuracy, sha256)."""
  return io.read_json(json_path)


# The shipped backbone's `vit.Model` kwargs (its JSON's "model" entry), a
# constant so that config files need no file I/O.
BACKBONE_MODEL = dict(depth=6, mlp_dim=384, num_heads=3, patch_size=(4, 4),
                      pool_type="tok", posemb="learn", width=96)


def backbone_model_kwargs(json_path: str = None) -> dict:
  """`vit.Model` kwargs of the shipped backbone (patch_size as a tuple).

  Without `json_path`: `BACKBONE_MODEL` (no I/O); with it: read from the
  provenance JSON of a (re)pretrained backbone.
  """
  if json_path is None:
    return dict(BACKBONE_MODEL)
  kw = dict(backbone_info(json_path)["model"])
  if "patch_size" in kw:
    kw["patch_size"] = tuple(kw["patch_size"])
  return kw
