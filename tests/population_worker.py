# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""A population step on 8 fake CPU devices vs. on one, in a fresh process.

  python tests/population_worker.py OUT.json

Started by tests/test_population.py in a subprocess, because the device
count is fixed when JAX's backend starts and the pytest process already has
one with a single device. Trains the same two-group population for a few
steps on one device and on a (data 4, fsdp 2) mesh (backbone FSDP-sharded,
batch data-parallel) and writes the measurements to OUT.json; the test
asserts.
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]

import jax  # pylint: disable=g-import-not-at-top

jax.config.update("jax_num_cpu_devices", 8)

import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from conftest import tiny_config  # pylint: disable=g-import-not-at-top
from losa_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
from losa_jax.utils import tree as tree_lib  # pylint: disable=g-import-not-at-top
from losa_jax.population import (  # pylint: disable=g-import-not-at-top
    build as pop_lib)

BATCH = 16
STEPS = 3
# Threshold 0: the tiny backbone's tensors are far below the default 4 MiB,
# and the point is a really FSDP-sharded backbone.
STRATEGY = [("backbone/.*", "fsdp(axis='fsdp', min_size_mb=0)"),
            (".*", "replicate")]
KERNEL = "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"


def config():
  # Momentum, not Adam: Adam normalises the LoSA token-MLP output bias's
  # zero gradient (a null direction, see test_population.py), which would
  # turn the two programs' different rounding into lr-sized differences.
  c = tiny_config(optax_name="momentum", lr=0.1, wd=1e-4)
  c.total_steps = 10
  c.input = dict(data=dict(name="demo", task="digits"), batch_size=BATCH,
                 pp="")
  c.sharding_strategy = STRATEGY
  # Two structures (two groups of one step), two members each.
  c.population = dict(grid=dict(lr=[0.1, 0.3]), losa=dict(rank=[2, 4]))
  return c


def batches():
  rng = np.random.default_rng(0)
  return [{"image": rng.normal(size=(1, BATCH, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 5, (1, BATCH)).astype(np.int32)}
          for _ in range(STEPS)]


def run(mesh_axes, devices=None):
  mesh = sharding.make_mesh(mesh_axes, devices=devices)
  pop = pop_lib.build(config(), total_steps=10, mesh=mesh, donate=False)
  model = pop.groups[0].model
  params = jax.jit(lambda r: model.init(
      r, jnp.zeros((1, *pop.image_shape), jnp.float32))["params"])(
          jax.random.key(0))
  backbone = jax.device_put(params["backbone"],
                            pop.state_sharding["params"]["backbone"])
  state = pop.init(backbone)
  init = [pop_lib.member_params(pop, state, m.index) for m in pop.members]
  slot = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      None, *sharding.batch_sharding(mesh).spec))
  losses = []
  for b in batches():
    state, metrics = pop.train_step(state, jax.device_put(b, slot))
    losses.append([m["loss"] for m in pop_lib.per_member(pop, metrics)])
  eval_batch = {k: v[0] for k, v in batches()[0].items()}
  eval_batch["_mask"] = np.ones((BATCH,), np.float32)
  sums = pop_lib.per_member(pop, pop.eval_step(
      state, jax.device_put(eval_batch, sharding.batch_sharding(mesh))))
  bb = tree_lib.flatten(state["params"]["backbone"])
  final = {m.name: {k: np.asarray(v).tolist() for k, v in tree_lib.flatten(
      pop_lib.member_params(pop, state, m.index)).items()}
           for m in pop.members}
  moved = max(float(np.max(np.abs(np.asarray(final[m.name][k]) - v)))
              for m, p in zip(pop.members, init)
              for k, v in tree_lib.flatten(p).items())
  return {
      "mesh": dict(mesh.shape),
      "groups": len(pop.groups),
      "losses": losses,
      "eval": sums,
      "params": final,
      "max_param_change": moved,
      "kernel_spec": str(bb[KERNEL].sharding.spec),
      "backbone_bytes_total": int(sum(v.nbytes for v in bb.values())),
      "backbone_bytes_per_device": int(sum(
          v.addressable_shards[0].data.nbytes for v in bb.values())),
      "batch_spec": str(slot.spec),
  }


def main():
  out_path = sys.argv[1]
  assert jax.device_count() == 8, jax.devices()
  out = {"1": run([("data", 1)], devices=jax.devices()[:1]),
         "4x2": run([("data", 4), ("fsdp", 2)])}
  with open(out_path, "w") as f:
    json.dump(out, f)
  print("done", flush=True)


if __name__ == "__main__":
  main()
