# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""LoSA on Something-Something v2 with a ViViT inflated from an image ViT.

The data must be prepared locally; nothing is downloaded. tensorflow-datasets
4.9.10 has no Something-Something builder (`something_something_v2` is not a
TFDS name), so the default source is a frame folder
`<frames_root>/<split>/<class>/<video_id>/*.jpg|png` with splits `train` and
`validation` (the 174 class folders named after the template labels, sorted;
SSv2's webm files are 12 fps, extract every frame). A TFDS dataset you built
yourself works too: `tfds=<name>,data_dir=...`.

SSv2 labels depend on direction ("pushing something from left to right"), so
there is no horizontal flip, and on the order of events, which is what the
side network's temporal mixer is for. Clips are short (~4 s), so the frames
are spread uniformly over the whole video (TSN-style), and the test views are
1 temporal clip x 3 spatial crops.

Exact commands:

  python -m losa_jax.tools.inflate_vivit --image_ckpt /ckpts/ViT-L_16.npz \
      --out /ckpts/vivit_L16_32f.npz --variant L/16 --pool_type tok \
      --num_frames 32 --image_size 224 --method central
  python -m losa_jax.train --workdir /tmp/ssv2_losa_L16 \
      --config configs/video_ssv2.py:variant=L/16,frames_root=/data/ssv2_frames,init=/ckpts/vivit_L16_32f.npz
  python -c "from losa_jax.serving import predict; \
  from configs import video_ssv2 as c; \
  a = 'variant=L/16,frames_root=/data/ssv2_frames,init=/ckpts/vivit_L16_32f.npz'; \
  print(predict.multiview_eval(c.get_config(a), '/tmp/ssv2_losa_L16', \
                          pp=c.multiview_pp(a)))"

Args and memory-saving settings: as configs/video_kinetics400.py.
"""
from configs import video_kinetics400 as k400


def get_config(arg=None):
  """SSv2 (174 classes), splits train / validation (see module docs)."""
  return k400.make_config(arg, dataset="ssv2", num_classes=174,
                          train_split="train", eval_split="validation",
                          flip=False, sample="uniform", default_stride=1,
                          epochs=35, views="1x3")


def multiview_pp(arg=None) -> str:
  """SSv2 test views: 1 uniform clip x 3 crops by default (`views=1x3`)."""
  return k400.make_multiview_pp(arg, sample="uniform", default_stride=1,
                                views="1x3")
