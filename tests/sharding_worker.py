# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""8 fake CPU devices in a fresh process: meshes, rules, resharded restore.

  python tests/sharding_worker.py OUT.json CKPT_DIR

Started by tests/test_sharding.py in a subprocess, because the device count
is fixed when JAX's backend starts and the pytest process may already have
one with a single device. Writes measurements to OUT.json; the test asserts.
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

import numpy as np  # pylint: disable=g-import-not-at-top

from conftest import tiny_config  # pylint: disable=g-import-not-at-top
from losa_jax.assembly import build  # pylint: disable=g-import-not-at-top
from losa_jax.checkpointing import manager as checkpointing  # pylint: disable=g-import-not-at-top
from losa_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
from losa_jax.utils import tree as tree_lib  # pylint: disable=g-import-not-at-top

BATCH = 16
# Threshold 0 so the tiny model's tensors are sharded at all; one rule of
# each kind: fsdp on the backbone and side kernels, shard_dim on the head.
STRATEGY = [("backbone/.*", "fsdp(axis='fsdp', min_size_mb=0)"),
            ("side/.*/kernel", "fsdp(axis='fsdp', min_size_mb=0)"),
            ("head/kernel", "shard_dim(axis='fsdp', dim=0)"),
            (".*", "replicate")]
WATCH = ("backbone/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
         "backbone/Transformer/encoderblock_0/MultiHeadDotProductAttention_0/"
         "key/bias",
         "backbone/cls", "backbone/embedding/kernel",
         "side/layers/mixer/token_1/mlp/down/kernel",
         "side/layers/mixer/channel_0/LayerNorm/scale",
         "head/kernel", "head/bias")


def config():
  c = tiny_config(optax_name="momentum", lr=0.1)
  c.sharding_strategy = STRATEGY
  return c


def batches(n):
  rng = np.random.default_rng(0)
  return [{"image": rng.normal(size=(BATCH, 32, 32, 3)).astype(np.float32),
           "label": rng.integers(0, 5, BATCH).astype(np.int32)}
          for _ in range(n)]


def put_batch(b, mesh):
  sh = sharding.batch_sharding(mesh)
  return {k: jax.device_put(v, sh) for k, v in b.items()}


def trainable(state, built):
  t, _ = tree_lib.partition(state["params"], built.mask)
  return {k: np.asarray(v) for k, v in tree_lib.flatten(t).items()}


def opt_specs(state_sharding, name):
  """Specs of the optimizer leaves that belong to param `name`."""
  out = []
  def visit(path, s):
    keys = "/".join(str(getattr(k, "key", getattr(k, "name", k)))
                    for k in path)
    if keys.endswith(name):
      out.append(str(s.spec))
  jax.tree_util.tree_map_with_path(visit, state_sharding["opt"])
  return out


def run(mesh_axes, data, devices=None):
  mesh = sharding.make_mesh(mesh_axes, devices=devices)
  built = build.build(config(), total_steps=10, mesh=mesh, donate=False)
  state = built.init(jax.random.key(0))
  res = {"mesh": dict(mesh.shape)}
  # Created in place: every leaf already has its target sharding and each
  # device holds only its shard (nothing went through one device whole).
  flat_state = jax.tree_util.tree_flatten_with_path(state)[0]
  flat_sh = jax.tree.leaves(built.state_sharding)
  res["init_shardings_match"] = all(
      x.sharding.is_equivalent_to(s, x.ndim)
      for (_, x), s in zip(flat_state, flat_sh))
  compiled = built.init.lower(jax.random.key(0)).compile()
  res["compiled_init_shardings_match"] = all(
      a.is_equivalent_to(b, x.ndim) for a, b, (_, x) in zip(
          jax.tree.leaves(compiled.output_shardings), flat_sh, flat_state))
  bb = {k: v for k, v in tree_lib.flatten(state["params"]).items()
        if k.startswith("backbone/")}
  res["backbone_bytes_total"] = int(sum(v.nbytes for v in bb.values()))
  res["backbone_bytes_per_device"] = int(sum(
      v.addressable_shards[0].data.nbytes for v in bb.values()))
  res["specs"] = {n: str(s.spec) for n, s in tree_lib.flatten(
      built.state_sharding["params"]).items() if n in WATCH}
  res["opt_specs"] = {n: opt_specs(built.state_sharding, n) for n in WATCH
                      if built.mask[n]}
  res["batch_spec"] = str(sharding.batch_sharding(mesh).spec)
  before = trainable(state, built)
  losses = []
  for b in data:
    state, metrics = built.train_step(state, put_batch(b, mesh))
    losses.append(float(metrics["loss"]))
  res["losses"] = losses
  after = trainable(state, built)
  # The comparison across meshes is only meaningful if training moved them.
  res["max_param_change"] = max(float(np.max(np.abs(after[k] - before[k])))
                                for k in after)
  return res, built, state


def main():
  out_path, ckpt_dir = sys.argv[1], sys.argv[2]
  assert jax.device_count() == 8, jax.devices()
  data = batches(3)
  out = {}

  ref, ref_built, ref_state = run([("data", 1)], data[:2],
                                  devices=jax.devices()[:1])
  ref_params = trainable(ref_state, ref_built)
  out["1"] = ref
  for axes in ([("data", 8), ("fsdp", 1)], [("data", 4), ("fsdp", 2)],
               [("data", 2), ("fsdp", 4)]):
    res, built, state = run(axes, data[:2])
    params = trainable(state, built)
    res["max_param_diff"] = max(float(np.max(np.abs(params[k] -
                                                    ref_params[k])))
                                for k in params)
    out["x".join(str(s) for _, s in axes)] = res
    if axes[1][1] == 2:
      saved_built, saved_state = built, state

  # Save on (4, 2) with the trainer's Checkpointer ...
  ckpt = checkpointing.Checkpointer(ckpt_dir, async_save=False)
  ckpt.save(2, checkpointing.trainable_state(saved_state, saved_built.mask),
            {"step": 2})
  ckpt.wait()
  saved = trainable(saved_state, saved_built)
  saved_state, m = saved_built.train_step(
      saved_state, put_batch(data[2], saved_built.mesh))
  out["continued_loss"] = float(m["loss"])

  # ... restore on (1, 8) and on one device, into those meshes' shardings.
  restores = {}
  for name, axes, devices in (("1x8", [("data", 1), ("fsdp", 8)], None),
                              ("1", [("data", 1)], jax.devices()[:1])):
    if name == "1":
      built = ref_built
    else:
      built = build.build(config(), total_steps=10, donate=False,
                          mesh=sharding.make_mesh(axes, devices=devices))
    # Same init key: the frozen backbone is not in checkpoints (the trainer
    # reloads it from model_init); the trainable leaves come from the save.
    state = built.init(jax.random.key(0))
    abstract = checkpointing.abstract_trainable_state(state, built.mask)
    restored, _ = ckpt.restore(2, abstract)
    state = checkpointing.merge_restored(state, restored, built.mask)
    got = trainable(state, built)
    r = {"max_diff": max(float(np.max(np.abs(got[k] - saved[k])))
                         for k in saved),
         "step": int(state["step"]),
         "shardings_match": all(
             x.sharding.is_equivalent_to(s, x.ndim) for x, s in zip(
                 jax.tree.leaves(restored), jax.tree.leaves(
                     jax.tree.map(lambda a: a.sharding, abstract)))),
         "specs": {n: str(x.sharding.spec) for n, x in tree_lib.flatten(
             restored["params"]).items() if n in WATCH}}
    if name == "1":
      _, m = built.train_step(state, put_batch(data[2], built.mesh))
      r["next_loss"] = float(m["loss"])
    restores[name] = r
  ckpt.close()
  out["restore"] = restores
  with open(out_path, "w") as f:
    json.dump(out, f, indent=1)
  print("done", flush=True)


if __name__ == "__main__":
  main()
