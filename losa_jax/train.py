# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Trainer: `python -m losa_jax.train --config configs/X.py:args --workdir W`.

Resumes from the newest checkpoint in the workdir automatically. Writes
`metrics.jsonl` and TensorBoard events to the workdir, a progress line to the
terminal, and `results.json` (final metrics, trainable params, time, memory)
at the end.
"""
import json
import math
import os
import resource
import sys
import time
from typing import Any, Dict, Iterator, Optional

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from losa_jax import build
from losa_jax import checkpointing
from losa_jax import config_lib
from losa_jax import distributed
from losa_jax import input_pipeline
from losa_jax import sharding as sharding_lib
from losa_jax import tree as tree_lib
from losa_jax.models import porting

FLAGS = flags.FLAGS


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf (the message names the step)."""


# --- data ---------------------------------------------------------------------


def make_source(data: Dict[str, Any]):
  """config data dict -> input_pipeline.Source.

  Forms: dict(demo="digits", split="train"), dict(vtab="cifar100",
  split="train800", data_dir=...), dict(name=<tfds>, split=..., data_dir=...,
  download=False), dict(root=<folder>, split=...), and for video
  dict(frames_root=<folder>, split=...), dict(video_demo="moving_digits",
  split=...).
  """
  data = dict(data)
  if "demo" in data:
    from losa_jax.demo import data as demo_data  # pylint: disable=g-import-not-at-top
    name = data.pop("demo")
    task = demo_data.get_task(name)
    return input_pipeline.ArraySource(task, data.pop("split", "train"),
                                      name=f"demo:{name}", **data)
  if "vtab" in data:
    from losa_jax import vtab  # pylint: disable=g-import-not-at-top
    return vtab.source(data.pop("vtab"), data.pop("split", "train800val200"),
                       **data)
  if "frames_root" in data or "video_demo" in data:
    # Video frame folders / the procedural video demo (losa_jax.video.data).
    from losa_jax.video import data as video_data  # pylint: disable=g-import-not-at-top
    return video_data.make_source(**data)
  return input_pipeline.make_source(**data)


def make_pp(data: Dict[str, Any], pp):
  if "vtab" in data:
    from losa_jax import vtab  # pylint: disable=g-import-not-at-top
    return vtab.pp_spec(data["vtab"], pp)
  return pp


def total_steps_of(config, num_examples: int) -> int:
  if config.get("total_steps"):
    return int(config.total_steps)
  return int(math.ceil(config.total_epochs * num_examples /
                       config.input.batch_size))


def device_batches(it: Iterator, mesh) -> Iterator:
  """Per-process numpy batches -> global arrays sharded over the data axes."""
  sh = sharding_lib.batch_sharding(mesh)
  for batch in it:
    batch = {k: v for k, v in batch.items() if k in ("image", "label", "_mask")}
    if "label" in batch:    # TFDS labels are int64; JAX runs 32-bit
      batch["label"] = np.asarray(batch["label"], np.int32)
    yield jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)),
        batch)


# --- evaluation ---------------------------------------------------------------


def evaluate(built, params, config, *, step: int) -> Dict[str, float]:
  """Top-1 and loss on every config.evals split due at `step` (0 = all)."""
  results = {}
  for name, ev in (config.get("evals") or {}).items():
    every = ev.get("every", config.get("eval_every", 0))
    if step and (not every or step % every):
      continue
    data = dict(ev["data"])
    src = make_source(data)
    batches = input_pipeline.evaluation(
        src, batch_size=ev.get("batch_size", config.input.batch_size),
        pp=make_pp(data, ev.get("pp", config.input.pp)),
        process_index=jax.process_index(),
        process_count=jax.process_count())
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in device_batches(batches, built.mesh):
      sums = built.eval_step(params, batch)
      for k in totals:
        totals[k] += float(sums[k])
    n = max(totals["count"], 1.0)
    results[f"{name}/accuracy"] = totals["correct"] / n
    results[f"{name}/loss"] = totals["loss_sum"] / n
    results[f"{name}/count"] = totals["count"]
  return results


# --- logging ------------------------------------------------------------------


class MetricWriter:
  """JSON lines + TensorBoard events (process 0 only) + a progress line."""

  def __init__(self, workdir: str, total_steps: int, batch_size: int):
    self.active = jax.process_index() == 0
    self.total, self.batch_size = total_steps, batch_size
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        self._tb = tf.summary.create_file_writer(
            os.path.join(workdir, "tensorboard"))
      except ImportError:
        logging.warning("TensorFlow missing: no TensorBoard events.")
    self._t0, self._s0 = time.time(), None

  def write(self, step: int, metrics: Dict[str, float]):
    if not self.active:
      return
    rec = {"step": step, "time": time.time(), **{
        k: float(v) for k, v in metrics.items()}}
    self._jsonl.write(json.dumps(rec) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      with self._tb.as_default(step=step):
        for k, v in metrics.items():
          tf.summary.scalar(k, float(v))
      self._tb.flush()

  def progress(self, step: int, metrics: Dict[str, float]):
    if not self.active:
      return
    now = time.time()
    if self._s0 is None:      # the first steps include compilation
      self._s0, self._t0 = step, now
      rate = float("nan")
      eta = "?"
    else:
      rate = (step - self._s0) * self.batch_size / max(now - self._t0, 1e-9)
      left = (self.total - step) * self.batch_size / max(rate, 1e-9)
      eta = time.strftime("%H:%M:%S", time.gmtime(left))
    print(f"step {step:>6}/{self.total} | loss {metrics['loss']:.4f} | "
          f"acc {metrics.get('accuracy', float('nan')):.3f} | "
          f"{rate:8.1f} ex/s | ETA {eta}", flush=True)

  def close(self):
    if self._jsonl:
      self._jsonl.close()


def peak_memory() -> Dict[str, float]:
  """Host peak RSS and, where the backend reports it, device peak bytes."""
  out = {"host_peak_rss_mib": resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024}
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  return out


# --- the loop -----------------------------------------------------------------


def backbone_record(config) -> Dict[str, Optional[str]]:
  path = config.get("model_init") or ""
  if not path:
    return {"path": None, "sha256": None}
  file_path = path.split(":")[0] if ":" in os.path.basename(path) else path
  if not os.path.exists(file_path):
    raise FileNotFoundError(f"config.model_init: no checkpoint file at "
                            f"{file_path!r}.")
  return {"path": path, "sha256": checkpointing.file_sha256(file_path)}


def load_backbone(params, config):
  """Replaces the initial backbone (and head, if it fits) by model_init's."""
  if not config.get("model_init"):
    logging.warning("config.model_init is empty: the backbone is random.")
    return params
  backbone = dict(config.model.get("backbone", {}))
  # fetch, not device_get: an FSDP-sharded backbone spans several hosts.
  return porting.load_into_model(
      distributed.fetch(params), config.model_init, backbone,
      dont_load=tuple((config.get("model_load") or {}).get("dont_load", ())))


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns results."""
  config_lib.validate(config)
  config = config_lib.with_defaults(config)
  # Before any JAX computation: afterwards the backend exists and can no
  # longer join other processes (no-op for a single process).
  distributed.initialize(config.get("distributed"))
  chief = distributed.is_chief()
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)

  data = dict(config.input.data)
  train_src = make_source(data)
  num_examples = train_src.num_examples() or train_src.count()
  total = distributed.agree(total_steps_of(config, num_examples),
                           "total_steps (same data on every host?)")
  built = build.build(config, total_steps=total)
  sharding_lib.check_batch_size(config.input.batch_size, built.mesh)
  expected_meta = {"backbone": backbone_record(config),
                   "config": checkpointing.config_fingerprint(config)}

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.keep_ckpts)
  writer = MetricWriter(workdir, total, config.input.batch_size)
  try:
    state = built.init(jax.random.key(config.seed))
    state["params"] = load_backbone(state["params"], config)
    state = jax.device_put(state, built.state_sharding)

    # Every host must resume from the same step, or their collectives would
    # pair up different steps; `agree` raises on all hosts otherwise.
    start = distributed.agree(
        -1 if ckpt.latest_step() is None else ckpt.latest_step(),
        f"the latest checkpoint step in {ckpt.directory}")
    start = None if start < 0 else start
    if start is not None:
      # Check the metadata first: a changed model would otherwise fail later
      # with a less helpful shape error from Orbax.
      checkpointing.check_meta(ckpt.read_meta(start), expected_meta,
                               ckpt.directory)
      abstract = checkpointing.abstract_trainable_state(state, built.mask)
      restored, _ = ckpt.restore(start, abstract)
      state = checkpointing.merge_restored(state, restored, built.mask)
      if chief:
        print(f"Resumed from step {start} in {ckpt.directory}", flush=True)
    start = int(start or 0)

    train_step = built.train_step
    if (config.get("feature_cache") or {}).get("enabled"):
      # Backbone taps computed once per example; same order as below.
      from losa_jax import feature_cache  # pylint: disable=g-import-not-at-top
      train_step, batches = feature_cache.for_trainer(
          config, built, state["params"], train_src,
          make_pp(data, config.input.pp), workdir, start_step=start,
          backbone_id=expected_meta["backbone"]["sha256"])
    else:
      it, _ = input_pipeline.training(
          train_src, batch_size=config.input.batch_size,
          pp=make_pp(data, config.input.pp), seed=config.seed,
          shuffle=config.input.get("shuffle", True), start_step=start,
          process_index=jax.process_index(),
          process_count=jax.process_count())
      batches = device_batches(it, built.mesh)
    if chief:
      print(f"Training {config.model.method} for {total} steps "
            f"({built.num_trainable():,} trainable params) from step {start} "
            f"on {jax.process_count()} process(es), mesh "
            f"{dict(built.mesh.shape)}.", flush=True)

    def save(step, force=False):
      ckpt.save(step, checkpointing.trainable_state(state, built.mask),
                {**expected_meta, "step": step, "data_step": step},
                force=force)

    def check_finite(step, loss):
      # `loss` is the replicated global mean, identical on every host, so
      # all processes raise at the same step and none hangs in a collective.
      loss = float(loss)
      if not np.isfinite(loss):
        ckpt.wait()
        raise NonFiniteLossError(
            f"Loss is {loss} at step {step}; stopping. The last good "
            f"checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is "
            "kept; lower config.lr or set config.grad_clip_norm.")

    metrics, pending = {}, None
    for step in range(start + 1, total + 1):
      state, metrics = train_step(state, next(batches))
      # The previous step's loss is ready by now: checking it every step
      # names the exact step without stalling the device pipeline.
      if pending is not None:
        check_finite(*pending)
      pending = (step, metrics["loss"])
      is_log = step % config.log_every == 0 or step == total
      is_ckpt = config.ckpt_every and step % config.ckpt_every == 0
      if is_log or is_ckpt or step == total:
        # A checkpoint never holds the params of a step whose loss was bad.
        metrics = jax.device_get(metrics)
        check_finite(step, metrics["loss"])
        pending = None
      if is_log:
        writer.write(step, metrics)
        writer.progress(step, metrics)
      if is_ckpt and step != total:
        save(step)
      if config.eval_every and step % config.eval_every == 0 and step != total:
        ev = evaluate(built, state["params"], config, step=step)
        if ev and chief:
          writer.write(step, ev)
          print("  eval " + " ".join(f"{k}={v:.4f}" for k, v in ev.items()),
                flush=True)

    if start < total:
      save(total, force=True)
  finally:
    # Orbax saves asynchronously: wait for the last save even on errors.
    ckpt.close()
    writer.close()
  final = evaluate(built, state["params"], config, step=0)
  if chief:
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps({"step": total, **final}) + "\n")
  results = {
      "method": config.model.method, "steps": total,
      "trainable_params": built.num_trainable(),
      "train_time_s": time.time() - t_start,
      **{f"train/{k}": float(v) for k, v in metrics.items()},
      **final, **peak_memory(),
  }
  if chief:
    tmp = os.path.join(workdir, "results.json.tmp")
    with open(tmp, "w") as f:
      json.dump(results, f, indent=2)
    os.replace(tmp, os.path.join(workdir, "results.json"))
    print("Final: " + " ".join(f"{k}={v:.4f}" for k, v in final.items()
                               if isinstance(v, float)), flush=True)
  # No host leaves (and tears down the runtime) while others still write.
  distributed.sync("losa_train_and_evaluate_done")
  return {"results": results, "state": state, "built": built}


def define_flags():
  """--config and --workdir; defined on demand so that importing this module
  (predict, vtab_sweep, tests) does not claim those flag names."""
  config_flags.DEFINE_config_file(
      "config", None, "Training config file (configs/*.py[:args]).",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints and logs go; a run "
                      "resumes from the newest checkpoint found there.")


def main(argv):
  del argv
  if not FLAGS["verbosity"].present:
    # Keep the terminal to progress lines; Orbax logs every write at INFO.
    logging.set_verbosity(logging.WARNING)
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required.")
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run():
  """Console-script entry point (`losa-train`)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
