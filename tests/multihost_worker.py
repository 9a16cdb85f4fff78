# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""One process of a (multi-process) CPU training run, started by the tests.

  python tests/multihost_worker.py --workdir W --steps 4 --local_devices 2 \
      [--num_processes 2 --process_id 0 --port 12345 [--via_env]] \
      [--ckpt_every 2] [--dump out.npz]

Runs the real trainer (`losa_jax.train.train_and_evaluate`) on a tiny LoSA
model and deterministic in-memory data, on a ("data", 2) x ("fsdp", rest)
mesh over the devices of all processes. Processes connect over 127.0.0.1
through `config.distributed` or, with --via_env, the LOSA_* environment
variables (both routes of `losa_jax.parallel.distributed.initialize`).

--dump (process 0 writes it; every process takes part in the collectives):
an npz with "final/<param>" (the trainable params after the run),
"init/<param>" (the trainable params the trainer starts from),
"ckpt<step>/<param>" for every checkpoint in the workdir, and "results"
(the results dict as JSON).

--nan_workdir W --then_nan_at_step K: after the run (and its dump), the same
processes train the same config again in W with the loss made NaN at step K,
so one launch serves two checks (each process start costs ~10 s of CPU);
that second run is expected to end the process with NonFiniteLossError.
"""
import argparse
import json
import os
import sys

# Quiet TF and never download; must precede the imports below.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TFDS_DISABLE_DOWNLOAD", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [_HERE, os.path.dirname(_HERE)]

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

NUM_TRAIN, NUM_TEST, NUM_CLASSES, RES, BATCH = 64, 20, 5, 32, 8
PP = "value_range(-1, 1)|keep('image', 'label')"
RECORDS = "losa_synthetic_records"
RECORDS_PP = f"decode|resize({RES})|value_range(-1, 1)|keep('image', 'label')"
PROBE_BATCH = 64
# FSDP everything big enough to shard in the tiny model (threshold 0) so the
# cross-host paths (sharded params, sharded Adam moments) are exercised.
STRATEGY = [("backbone/.*", "fsdp(axis='fsdp', min_size_mb=0)"),
            ("side/.*/kernel", "fsdp(axis='fsdp', min_size_mb=0)"),
            (".*", "replicate")]


def arrays(n: int, seed: int, nan_example: int = -1):
  """Images whose label is the brightest quadrant (+1 class for noise).

  Returns {"image": uint8 [n, RES, RES, 3], "label": int32 [n]}; with
  nan_example >= 0 the images are float32 and that example is all NaN.
  """
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 120, (n, RES, RES, 3), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  h = RES // 2
  for i, y in enumerate(labels):
    if y < 4:
      r, c = divmod(int(y), 2)
      images[i, r * h:(r + 1) * h, c * h:(c + 1) * h] += 120
  if nan_example >= 0:
    images = images.astype(np.float32)
    images[nan_example] = np.nan
  return {"image": images, "label": labels}


def make_config(args) -> ml_collections.ConfigDict:
  from conftest import tiny_config  # pylint: disable=g-import-not-at-top
  c = tiny_config(num_classes=NUM_CLASSES, image_size=RES)
  # SGD with momentum, not Adam: Adam's first steps divide tiny gradients by
  # their own magnitude, which turns float reduction-order noise between
  # meshes into visible differences.
  c.optax_name = "momentum"
  c.lr = 0.1
  c.seed = 3
  c.total_steps = args.steps
  c.log_every = 1
  c.ckpt_every = args.ckpt_every
  c.keep_ckpts = 10
  c.input = dict(data=dict(name="arrays", arrays=arrays(NUM_TRAIN, 0)),
                 batch_size=BATCH, pp=PP)
  if args.nan_at_step:
    # Unshuffled, so global batch k holds examples [(k-1)B, kB); the last
    # row of the batch belongs to the last process only.
    c.input.data = dict(name="arrays", arrays=arrays(
        NUM_TRAIN, 0, nan_example=args.nan_at_step * BATCH - 1))
    c.input.shuffle = False
  c.evals = dict(test=dict(
      data=dict(name="arrays", arrays=arrays(NUM_TEST, 1)), pp=PP,
      batch_size=BATCH))
  c.mesh = [("data", 2), ("fsdp", -1)]
  c.sharding_strategy = STRATEGY
  if getattr(args, "records", ""):
    # The ArrayRecord dataset (losa_jax.datasets.records.synthetic): read by
    # index, each process its own rows; a data-parallel mesh over them all.
    data = dict(name="tfds", dataset=RECORDS, data_dir=args.records)
    c.input = dict(data=dict(data, split="train"), batch_size=BATCH,
                   pp=RECORDS_PP)
    c.evals = dict(test=dict(data=dict(data, split="test[:40]"),
                             pp=RECORDS_PP, batch_size=BATCH))
    c.mesh = [("data", -1)]
    c.sharding_strategy = [(".*", "replicate")]
  if getattr(args, "feature_cache", ""):
    c.feature_cache = dict(enabled=True, dir=args.feature_cache)
  if args.num_processes > 1 and not args.via_env:
    c.distributed = dict(coordinator_address=f"127.0.0.1:{args.port}",
                         num_processes=args.num_processes,
                         process_id=args.process_id,
                         initialization_timeout=60,
                         heartbeat_timeout_seconds=100)
  elif args.num_processes == 1:
    c.distributed = dict(auto=False)
  return c


def probe(args):
  """One epoch and a fifth of the records' train order as this process
  reads it (PROBE_BATCH global rows per step, only the "index" feature),
  the records it read, and resumes at several steps compared with the
  uninterrupted stream."""
  from losa_jax.assembly import input_pipeline  # pylint: disable=g-import-not-at-top
  from losa_jax.datasets import tfds as ds_tfds  # pylint: disable=g-import-not-at-top

  def source():
    return ds_tfds.TfdsSource(RECORDS, "train", data_dir=args.records)
  kw = dict(batch_size=PROBE_BATCH, pp="keep('index')", seed=5,
            process_index=jax.process_index(),
            process_count=jax.process_count())
  src = source()
  it, n = input_pipeline.training(src, **kw)
  steps = n // PROBE_BATCH
  epoch = np.stack([next(it)["index"] for _ in range(steps)])
  read = src.table().records_read
  more = np.stack([next(it)["index"] for _ in range(steps // 5)])
  stream = np.concatenate([epoch, more])
  resumed = {}
  for s in (1, 37, steps - 1, steps, steps + 3):
    again, _ = input_pipeline.training(source(), start_step=s, **kw)
    resumed[s] = bool(np.array_equal(next(again)["index"], stream[s]))
  np.savez(f"{args.probe}.{jax.process_index()}.npz", epoch=epoch,
           records_read=read, resumed=json.dumps(resumed))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, required=True)
  p.add_argument("--ckpt_every", type=int, default=0)
  p.add_argument("--local_devices", type=int, default=2)
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--port", type=int, default=0)
  p.add_argument("--via_env", action="store_true")
  p.add_argument("--nan_at_step", type=int, default=0,
                 help="make the loss NaN at this step (on one process's rows)")
  p.add_argument("--dump", default="")
  p.add_argument("--nan_workdir", default="",
                 help="after the run, train again here with a NaN loss")
  p.add_argument("--then_nan_at_step", type=int, default=3,
                 help="the step of --nan_workdir's run whose loss is NaN")
  p.add_argument("--records", default="",
                 help="train on the synthetic ArrayRecord dataset in this "
                 "TFDS data dir")
  p.add_argument("--feature_cache", default="",
                 help="train from a feature cache in this folder")
  p.add_argument("--probe", default="",
                 help="first read 1.2 epochs of --records' train split "
                 "(indices only) and write what this process read to "
                 "PROBE.<process>.npz")
  p.add_argument("--cache_dir", default="",
                 help="JAX persistent compilation cache (reruns skip XLA)")
  p.add_argument("--stack_dump_s", type=float, default=0,
                 help="print every thread's stack after this many seconds "
                 "(to debug a hang)")
  args = p.parse_args()
  if args.stack_dump_s:
    import faulthandler  # pylint: disable=g-import-not-at-top
    faulthandler.dump_traceback_later(args.stack_dump_s, exit=False)

  jax.config.update("jax_num_cpu_devices", args.local_devices)
  if args.cache_dir:
    jax.config.update("jax_compilation_cache_dir", args.cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  if args.via_env:
    os.environ.update(LOSA_COORDINATOR=f"127.0.0.1:{args.port}",
                      LOSA_NUM_PROCESSES=str(args.num_processes),
                      LOSA_PROCESS_ID=str(args.process_id))

  from losa_jax.checkpointing import manager as checkpointing  # pylint: disable=g-import-not-at-top
  from losa_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  from losa_jax.utils import tree as tree_lib  # pylint: disable=g-import-not-at-top

  config = make_config(args)
  if args.probe:
    distributed.initialize(config.get("distributed"))
    probe(args)
  out = train.train_and_evaluate(config, args.workdir)
  assert jax.process_count() == args.num_processes, jax.process_count()
  state, built = out["state"], out["built"]
  trainable, _ = tree_lib.partition(state["params"], built.mask)
  dump = {f"final/{k}": v for k, v in
          tree_lib.flatten(distributed.fetch(trainable)).items()}
  # The trainer's initial state, to show the params moved from it.
  init = built.init_loaded(jax.random.key(config.seed), config)
  init, _ = tree_lib.partition(init["params"], built.mask)
  dump.update({f"init/{k}": v for k, v in
               tree_lib.flatten(distributed.fetch(init)).items()})

  ckpt = checkpointing.Checkpointer(os.path.join(args.workdir, "checkpoints"))
  abstract = checkpointing.abstract_trainable_state(state, built.mask)
  for step in ckpt.all_steps():
    restored, _ = ckpt.restore(step, abstract)
    dump.update({f"ckpt{step}/{k}": v for k, v in tree_lib.flatten(
        distributed.fetch(restored["params"])).items()})
    dump[f"ckpt{step}/_step"] = np.asarray(distributed.fetch(
        restored["step"]))
  ckpt.close()

  if args.dump and distributed.is_chief():
    dump["results"] = np.asarray(json.dumps(out["results"]))
    dump["mesh"] = np.asarray(json.dumps(dict(built.mesh.shape)))
    np.savez(args.dump + ".tmp.npz", **dump)
    os.replace(args.dump + ".tmp.npz", args.dump)
  distributed.sync("worker_done")
  print(f"process {jax.process_index()} done", flush=True)

  if args.nan_workdir:
    nan_args = argparse.Namespace(**{**vars(args),
                                     "nan_at_step": args.then_nan_at_step})
    train.train_and_evaluate(make_config(nan_args), args.nan_workdir)


if __name__ == "__main__":
  main()
