# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Trainer: `python -m losa_jax.train --config configs/X.py:args --workdir W`.

Resumes from the newest checkpoint in the workdir automatically. Writes the
run's config (`config.json`, see losa_jax.config.workdir), `metrics.jsonl` and
TensorBoard events to the workdir, a progress line to the terminal, and
`results.json` (final metrics, trainable params, time, memory) at the end.
"""
import itertools
import json
import os
import resource
import sys
import time
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from losa_jax.assembly import build
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.config import schema as config_lib
from losa_jax.config import input_check
from losa_jax import datasets
from losa_jax.parallel import distributed
from losa_jax import evaluators
from losa_jax.assembly import input_pipeline
from losa_jax.trainers import population as population_train
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.config import workdir as workdir_lib

FLAGS = flags.FLAGS


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf (the message names the step)."""


# --- data ---------------------------------------------------------------------


total_steps_of = config_lib.total_steps_of


def run_evaluators(evals, params, *, step: int) -> Dict[str, float]:
  """`{name/metric: value}` of every evaluator due at `step` (0 = all)."""
  results = {}
  for name, (every, ev) in evals.items():
    if step and (not every or step % every):
      continue
    for k, v in ev.run(params).items():
      results[f"{name}/{k}"] = v
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
    speed = ""
    if self._s0 is None:      # the first steps include compilation
      self._s0, self._t0 = step, now
    elif step > self._s0:     # a rate is known only after a timed interval
      rate = (step - self._s0) * self.batch_size / max(now - self._t0, 1e-9)
      left = (self.total - step) * self.batch_size / max(rate, 1e-9)
      speed = (f" | {rate:8.1f} ex/s | ETA "
               f"{time.strftime('%H:%M:%S', time.gmtime(left))}")
    acc = metrics.get("accuracy")
    acc = "" if acc is None else f" | acc {float(acc):.3f}"
    print(f"step {step:>6}/{self.total} | loss {metrics['loss']:.4f}{acc}"
          f"{speed}", flush=True)

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


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns results.

  A config with a `population` trains every member
  (losa_jax.trainers.population); its result has "results" with the
  leaderboard.
  """
  if config.get("population"):
    return population_train.train_population(
        config, workdir, single_run=train_and_evaluate)
  config_lib.validate(config)
  config = config_lib.with_defaults(config)
  # Before any JAX computation: afterwards the backend exists and can no
  # longer join other processes (no-op for a single process).
  distributed.initialize(config.get("distributed"))
  chief = distributed.is_chief()
  t_start = time.time()
  os.makedirs(workdir, exist_ok=True)

  train_src, train_pp = datasets.training_source(config)
  num_examples = train_src.num_examples() or train_src.count()
  total = distributed.agree(total_steps_of(config, num_examples),
                           "total_steps (same data on every host?)")
  built = build.build(config, total_steps=total)
  sharding_lib.check_batch_size(config.input.batch_size, built.mesh)
  expected_meta = {"backbone": build.backbone_record(config),
                   "config": checkpointing.config_fingerprint(config)}

  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                    max_to_keep=config.keep_ckpts)
  writer = MetricWriter(workdir, total, config.input.batch_size)
  evals = evaluators.from_config(built, config)
  try:
    # init + load_backbone, without computing the random backbone.
    state = built.init_loaded(jax.random.key(config.seed), config)

    # Every host must resume from the same step, or their collectives would
    # pair up different steps; `agree` raises on all hosts otherwise.
    # Damaged steps (named in a warning) are set aside, falling back to the
    # previous one. The metadata is checked before any array is read: a
    # changed model would otherwise fail with a less helpful Orbax error.
    start, restored, _ = ckpt.restore_newest(
        checkpointing.abstract_trainable_state(state, built.mask),
        check=lambda meta: checkpointing.check_meta(
            meta, {**expected_meta,
                   "hparams": checkpointing.config_hparams(config),
                   "opt_layout": checkpointing.opt_layout(state["opt"])},
            ckpt.directory),
        agree=distributed.agree)
    if start is not None:
      state = checkpointing.merge_restored(state, restored, built.mask)
      if chief:
        print(f"Resumed from step {start} in {ckpt.directory}", flush=True)
    start = int(start or 0)
    if chief:
      # After the metadata check, so a refused resume leaves the workdir's
      # config as it was. The workdir then serves without its config file
      # (losa_jax.serving.multitask, predict --workdirs, export).
      workdir_lib.write_config(workdir, config)

    train_step = built.train_step
    if (config.get("feature_cache") or {}).get("enabled"):
      # The cache runs the pp itself: check one batch of it before building.
      input_check.check_batch(next(iter(input_pipeline.evaluation(
          train_src, batch_size=config.input.batch_size, pp=train_pp))),
                             config)
      # Backbone taps computed once per example; same order as below.
      from losa_jax import feature_cache  # pylint: disable=g-import-not-at-top
      train_step, batches = feature_cache.for_trainer(
          config, built, state["params"], train_src, train_pp, workdir,
          start_step=start,
          backbone_id=expected_meta["backbone"]["sha256"])
    else:
      it, _ = input_pipeline.training(
          train_src, batch_size=config.input.batch_size, pp=train_pp,
          seed=config_lib.data_seed_of(config),
          shuffle=config.input.get("shuffle", True), start_step=start,
          process_index=jax.process_index(),
          process_count=jax.process_count())
      # A batch that does not fit the model fails here, by name, instead of
      # as a shape error deep inside the first compiled step.
      first = next(it)
      input_check.check_batch(first, config)
      batches = input_pipeline.device_batches(itertools.chain([first], it),
                                              built.mesh)
    if chief:
      print(f"Training {config.model.method} for {total} steps "
            f"({built.num_trainable():,} trainable params) from step {start} "
            f"on {jax.process_count()} process(es), mesh "
            f"{dict(built.mesh.shape)}.", flush=True)

    def save(step, *, final=False):
      saved = checkpointing.trainable_state(state, built.mask)
      # The loss and max |param| let a NaN message judge this step.
      health = checkpointing.health_meta(saved["params"], metrics.get("loss"))
      if final and health["max_abs_param"] is None:
        # The last step's loss is never computed: its params must be finite.
        raise NonFiniteLossError(
            f"The params are not finite after the last step {step}; not "
            f"saved. {ckpt.nonfinite_report()} {advice()}")
      meta = {**expected_meta, "step": step, "data_step": step,
              "hparams": checkpointing.config_hparams(config), **health}
      # Kept only once the next step has shown its loss to be finite.
      ckpt.save(step, saved, meta, force=final, checked=final)

    def advice():
      return (f"Lower config.lr (now {config.get('lr')}) or set "
              f"config.grad_clip_norm (now {config.get('grad_clip_norm')}).")

    def check_finite(step, loss):
      # `loss` is the replicated global mean, identical on every host, so
      # all processes raise at the same step and none hangs in a collective.
      loss = float(loss)
      if np.isfinite(loss):
        return
      dropped = ""
      if unchecked and unchecked[0] == step - 1:
        # That step's params gave this loss: resuming would repeat it.
        ckpt.discard(unchecked.pop())
        dropped = (f"Checkpoint step {step - 1}, whose params gave this "
                   "loss, was deleted. ")
      ckpt.wait()
      raise NonFiniteLossError(
          f"Loss is {loss} at step {step}; stopping. {dropped}"
          f"{ckpt.nonfinite_report()} {advice()}")

    metrics, pending, unchecked = {}, None, []
    for step in range(start + 1, total + 1):
      state, metrics = train_step(state, next(batches))
      # The previous step's loss is ready by now: checking it every step
      # names the exact step without stalling the device pipeline.
      if pending is not None:
        check_finite(*pending)
      pending = (step, metrics["loss"])
      is_log = step % config.log_every == 0 or step == total
      is_ckpt = config.ckpt_every and step % config.ckpt_every == 0
      # This step's loss is that of the params saved at the previous step.
      if is_log or is_ckpt or step == total or unchecked:
        metrics = jax.device_get(metrics)
        check_finite(step, metrics["loss"])
        pending = None
      if unchecked:
        ckpt.confirm(unchecked.pop())
      if is_log:
        writer.write(step, metrics)
        writer.progress(step, metrics)
      if is_ckpt and step != total:
        save(step)
        unchecked.append(step)
      if config.eval_every and step % config.eval_every == 0 and step != total:
        ev = run_evaluators(evals, state["params"], step=step)
        if ev and chief:
          writer.write(step, ev)
          print("  eval " + " ".join(f"{k}={v:.4f}" for k, v in ev.items()),
                flush=True)

    if start < total:
      save(total, final=True)
  finally:
    # Orbax saves asynchronously: wait for the last save even on errors.
    ckpt.close()
    writer.close()
  final = run_evaluators(evals, state["params"], step=0)
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


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """--config and --workdir; defined on demand so that importing this module
  (predict, vtab_sweep, tests) does not claim those flag names.

  --config is ml_collections' config-file flag, except that an override of a
  key the config lacks (--config.bogus=1) is a flag error naming the full
  key and the valid ones (config_lib.define_config_flag).
  """
  define_config_and_workdir_flags(
      flag_values, config_help="Training config file (configs/*.py[:args]).",
      workdir_help="Where checkpoints and logs go; a run resumes from the "
      "newest checkpoint found there.")


def define_config_and_workdir_flags(flag_values: flags.FlagValues, *,
                                    config_help: str, workdir_help: str):
  """--config (a config file, `config_lib.define_config_flag`) and
  --workdir, the two flags of the commands that train (train, auto)."""
  config_lib.define_config_flag("config", config_help, flag_values)
  flags.DEFINE_string("workdir", None, workdir_help, flag_values=flag_values)


def start_config_and_workdir_main():
  """The first lines of the main of a --config / --workdir command: unless
  --verbosity was given keeps the terminal to progress lines (Orbax logs
  every write at INFO), and requires both flags."""
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required.")


def main(argv):
  del argv
  start_config_and_workdir_main()
  train_and_evaluate(FLAGS.config, FLAGS.workdir)


def run():
  """Console-script entry point (`losa-train`)."""
  define_flags()
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
