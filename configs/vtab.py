# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""VTAB-1k transfer of a big_vision ViT with LoSA (or any method of the zoo).

The PETL-literature protocol (docs/method.md 4.1-4.2): 800 train + 200 val
images for tuning, train800val200 for the final run, top-1 on the official
test split; 224 px resize, no augmentation; AdamW lr 1e-3, wd 1e-4, batch
64, 100 epochs with 10 warm-up epochs and cosine decay. The TFDS data must
already be prepared in `data_dir` (downloads stay off).

One task:
  python -m losa_jax.train --workdir /tmp/vtab/cifar100 \
    --config configs/vtab.py:task=cifar100,init=/ckpts/ViT-B_16.npz,data_dir=/data/tfds
All 19 tasks and a results table (Markdown + CSV):
  python -m losa_jax.vtab_sweep --workdir /tmp/vtab \
    --config configs/vtab.py:init=/ckpts/ViT-B_16.npz,data_dir=/data/tfds

A population (many LoSA side networks on one backbone pass, tuned on val),
and AutoLoSA (search on train800 -> val200, pick the best, retrain it on
train800val200 -> test; docs/population.md):
  python -m losa_jax.train --workdir /tmp/vtab_pop/dtd \
    --config configs/vtab.py:task=dtd,population=default,init=...,data_dir=...
  python -m losa_jax.auto --workdir /tmp/vtab_auto/dtd \
    --config configs/vtab.py:task=dtd,population=default,init=...,data_dir=...
  python -m losa_jax.vtab_sweep --auto --workdir /tmp/vtab_auto \
    --config configs/vtab.py:population=default,init=...,data_dir=...

Args: task (a VTAB key, see losa_jax/datasets/vtab.py), method, variant (default
B/16), pool (tok for the original i21k ViT-B/16 release, gap for big_vision
SigLIP-style models), init (npz path; 'path.npz:img' for two-tower files),
data_dir, protocol ('final': train800val200 -> test; 'tune': train800 ->
val200, the eval named "val"; default: 'tune' with a population, else
'final'), population (''|default|random|mixed, see configs/common.py), rank, lr,
epochs, batch, res, seed, runlocal (tiny, for smoke tests on mock data: a
random 2-block backbone at 32 px, 2 steps, a 4-member population).
No result is quoted here: none has been produced on real VTAB data with
this code yet (the machines that built it have neither the data nor the
checkpoints).
"""
import math

import ml_collections

from configs import common
from losa_jax.datasets import vtab

# The args losa_jax.auto adds to the command's for its two phases: the
# population searches on train800 -> val200, the chosen member is retrained
# on train800val200 and tested on test (the PETL protocol, docs/method.md).
AUTO_ARGS = dict(search="protocol=tune", final="protocol=final")

def get_config(arg=None):
  arg = common.parse_arg(
      arg, task="cifar100", method="losa", variant="B/16", pool="tok",
      init="", data_dir="", protocol="", population="", rank=8, lr=1e-3,
      epochs=100, batch=64, res=224, seed=0, runlocal=False)
  task = vtab.task(arg["task"])
  # A population is a search: it is ranked on val unless told otherwise.
  protocol = arg["protocol"] or ("tune" if arg["population"] else "final")
  if protocol not in ("final", "tune"):
    raise ValueError(f"protocol={protocol!r}: use 'final' or 'tune'.")
  train_split, eval_split, eval_name = (
      ("train800val200", "test", "test") if protocol == "final"
      else ("train800", "val200", "val"))
  res = 32 if arg["runlocal"] else arg["res"]

  c = ml_collections.ConfigDict()
  c.seed = arg["seed"]
  c.num_classes = task["num_classes"]
  c.image_size = res
  data = dict(name="vtab", task=task["name"], split=train_split)
  if arg["data_dir"]:
    data["data_dir"] = arg["data_dir"]
  pp = (f"decode(channels=3)|resize({res})|value_range(-1, 1)|"
        "keep('image', 'label')")
  c.input = dict(data=data, batch_size=4 if arg["runlocal"] else arg["batch"],
                 pp=pp, shuffle=True)
  c.evals = {eval_name: dict(data=dict(data, split=eval_split), pp=pp,
                             batch_size=4 if arg["runlocal"] else 256)}
  if arg["runlocal"]:
    c.total_steps = 2
    backbone = dict(width=32, depth=2, mlp_dim=64, num_heads=2,
                    patch_size=(8, 8), pool_type=arg["pool"])
  else:
    c.total_epochs = arg["epochs"]
    backbone = dict(variant=arg["variant"], pool_type=arg["pool"])
  c.model_init = arg["init"]
  c.model = common.model(arg["method"], backbone, arg["rank"])
  # Checkpoints carry their pretraining head (e.g. i21k's 21,843 classes).
  c.model_load = dict(dont_load=["head/.*"])
  common.adamw_cosine(c, lr=arg["lr"], warmup=dict(warmup_percent=0.1),
                      log_every=1 if arg["runlocal"] else 50,
                      ckpt_every=0 if arg["runlocal"] else 500)
  if arg["population"]:
    c.population = common.population(arg["population"], arg["seed"],
                                     arg["runlocal"])
    # About 10 points on every member's val curve.
    steps = c.get("total_steps") or math.ceil(
        arg["epochs"] * (800 if protocol == "tune" else 1000) /
        c.input.batch_size)
    c.eval_every = max(1, steps // 10)
  return c
