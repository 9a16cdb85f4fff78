# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The training loop that single runs and populations share (`Trainer`);
what both write (metrics.jsonl, TensorBoard events, results.json, peak
memory); the NaN diagnostics a checkpoint's metadata carries
(`health_meta`) and a NaN stop's message reads back (`nonfinite_report`).
"""
import itertools
import json
import math
import os
import resource
import time
from typing import Any, Dict, Iterator, List, Optional

from absl import logging
import jax
import jax.numpy as jnp

from losa_jax import datasets
from losa_jax.assembly import build as build_lib
from losa_jax.assembly import input_pipeline
from losa_jax.checkpointing import integrity
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.checkpointing import resume
from losa_jax.config import input_check
from losa_jax.parallel import distributed
from losa_jax.utils import io

# `nonfinite_report` calls a step's params suspect above this max |param|, or
# when they grew more than GROWTH times since the earliest kept step.
HUGE_PARAM = 1e4
GROWTH = 100.0


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf (the message names the step)."""


# --- NaN diagnostics ----------------------------------------------------------


@jax.jit
def _max_abs(leaves):
  return jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32)
                            for x in leaves]))


def _finite_or_none(x) -> Optional[float]:
  # JSON has no NaN/Inf; None reads as "unknown" in the reports.
  return float(x) if x is not None and math.isfinite(float(x)) else None


def health_meta(params, loss) -> Dict[str, Optional[float]]:
  """A checkpoint's metadata for `nonfinite_report`: {"loss", "max_abs_param"}.

  Every process must call it (max |param| is one jitted reduction).

  Args:
    params: the trainable params being saved (arrays, maybe sharded).
    loss: the last finite training loss (a scalar), or None.
  """
  leaves = [x for x in jax.tree.leaves(params) if getattr(x, "size", 0)]
  top = float(jax.device_get(_max_abs(leaves))) if leaves else None
  return {"loss": _finite_or_none(loss), "max_abs_param": _finite_or_none(top)}


def _fmt(v: Optional[float]) -> str:
  return "unknown" if v is None else f"{v:.3g}"


def nonfinite_report(ckpt: checkpointing.Checkpointer) -> str:
  """What the kept steps of `ckpt` hold, for the message of a NaN/Inf loss.

  Names the newest step with its last finite loss and max |param|
  (`health_meta`); when that is huge (> HUGE_PARAM, or GROWTH times the
  earliest kept step's), lists the kept steps and suggests the newest sane
  one or a fresh start.
  """
  steps = ckpt.all_steps()
  if not steps:
    return (f"No checkpoint is kept in {ckpt.directory}: fix the config "
            "and start again.")
  info = {}
  for s in steps:
    try:
      m = ckpt.read_meta(s)
    except integrity.CheckpointError:
      m = {}
    info[s] = (m.get("max_abs_param"), m.get("loss"))
  first = info[steps[0]][0]

  def why_suspect(s) -> Optional[str]:
    v = info[s][0]
    if v is None:
      return None
    if v > HUGE_PARAM:
      return f"above {HUGE_PARAM:g}"
    if first and v > GROWTH * first:
      return f"{v / first:.3g}x step {steps[0]}'s"
    return None

  newest = steps[-1]
  head = (f"The newest checkpoint, step {newest} in {ckpt.directory}, "
          f"holds max|param| {_fmt(info[newest][0])} (last finite loss "
          f"{_fmt(info[newest][1])})")
  why = why_suspect(newest)
  if why is None:
    return head + "."
  kept = ", ".join(f"{s} (max|param| {_fmt(info[s][0])})" for s in steps)
  sane = [s for s in steps if info[s][0] is not None and not why_suspect(s)]
  if sane:
    later = [s for s in steps if s > sane[-1]]
    advice = (f"Step {sane[-1]} looks sane: move the later steps {later} "
              f"out of {ckpt.directory} to resume from it, or start afresh "
              "with a new --workdir.")
  else:
    advice = ("No kept step looks sane: start afresh with a new --workdir "
              "(or move the checkpoints folder away).")
  return (f"{head}: too large ({why}), so resuming from it would likely "
          f"diverge again. Kept steps: {kept}. {advice}")


# --- what a run writes --------------------------------------------------------


class MetricWriter:
  """metrics.jsonl + TensorBoard events (process 0 only).

  A record of a population member carries its name ("member") and goes to
  its own TensorBoard run (tensorboard/<member>).
  """

  def __init__(self, workdir: str):
    self.active = jax.process_index() == 0
    self.workdir = workdir
    self._tf, self._tb, self._jsonl = None, {}, None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      try:
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        self._tf = tf
      except ImportError:
        logging.warning("TensorFlow missing: no TensorBoard events.")

  def write(self, step: int, metrics: Dict[str, float],
            member: Optional[str] = None):
    if not self.active:
      return
    tag = {} if member is None else {"member": member}
    self.append({"step": step, **tag, "time": time.time(),
                 **{k: float(v) for k, v in metrics.items()}})
    if self._tf is None:
      return
    if member not in self._tb:
      self._tb[member] = self._tf.summary.create_file_writer(
          os.path.join(self.workdir, "tensorboard", *filter(None, [member])))
    with self._tb[member].as_default(step=step):
      for k, v in metrics.items():
        self._tf.summary.scalar(k, float(v))
    self._tb[member].flush()

  def append(self, record: Dict[str, Any]):
    """One line of metrics.jsonl as it is (the final metrics)."""
    if self.active:
      self._jsonl.write(json.dumps(record) + "\n")
      self._jsonl.flush()

  def close(self):
    if self._jsonl:
      self._jsonl.close()


class Progress:
  """The terminal's progress line: loss, accuracy, examples/s and ETA."""

  def __init__(self, total_steps: int, batch_size: int):
    self.total, self.batch_size = total_steps, batch_size
    self._t0, self._s0 = time.time(), None

  def line(self, step: int, metrics: Dict[str, float]) -> str:
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
    return (f"step {step:>6}/{self.total} | loss {metrics['loss']:.4f}{acc}"
            f"{speed}")


def peak_memory() -> Dict[str, float]:
  """Host peak RSS and, where the backend reports it, device peak bytes."""
  out = {"host_peak_rss_mib": resource.getrusage(
      resource.RUSAGE_SELF).ru_maxrss / 1024}
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  return out


def write_results(workdir: str, results: Dict[str, Any]):
  """<workdir>/results.json (process 0), written atomically."""
  if jax.process_index() == 0:
    io.write_json(os.path.join(workdir, "results.json"), results, default=str)


def say(text: str):
  """A terminal line from process 0."""
  if jax.process_index() == 0:
    print(text, flush=True)


# --- the loop -----------------------------------------------------------------


class Trainer:
  """The loop; a subclass is a state and a step. It defines

    restore() -> start step: builds the state (from the newest usable
        checkpoint);
    batches(start) -> the training batches from step start + 1 (iterator);
    step(batch) -> metrics: one step of the state (device values);
    check(step, metrics, unchecked) -> host metrics: raises on a NaN/Inf
        that stops the run, discarding the checkpoint in `unchecked` that
        gave it;
    log(step, metrics), evaluate(step), save(step, final=...);
    after_step(step): after a step's eval, before its checkpoint (rungs);
    finish() -> what `train` returns: final eval and results.json.

  Set up here: the distributed runtime, the training data, `total` steps,
  the Checkpointer, the MetricWriter and the metadata every checkpoint must
  match (`expected_meta`), for a validated config with defaults.
  """
  # Check every step's metrics at the next step (a single run names the
  # exact step of a NaN), or only at sync steps (a population's dead
  # members are frozen anyway).
  check_each_step = False

  def __init__(self, config, workdir: str):
    # Before any JAX computation: afterwards the backend exists and can no
    # longer join other processes (no-op for a single process).
    distributed.initialize(config.get("distributed"))
    self.config, self.workdir = config, workdir
    self.t_start = time.time()
    os.makedirs(workdir, exist_ok=True)
    self.train_src, self.train_pp = datasets.training_source(config)
    num_examples = (self.train_src.num_examples() or
                    self.train_src.count())
    total = config.get("total_steps") or math.ceil(
        config.total_epochs * num_examples / config.input.batch_size)
    self.total = distributed.agree(int(total),
                                   "total_steps (same data on every host?)")
    self.ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_ckpts)
    self.writer = MetricWriter(workdir)
    self.expected_meta = {
        "backbone": build_lib.backbone_record(config),
        "config": resume.config_fingerprint(config)}
    self.sync_steps = set()

  def after_step(self, step: int):
    del step  # a single run has nothing to do here

  def check_cached_pp(self):
    """A feature cache runs the pp itself: one batch of it is checked
    against the model before the cache is built."""
    input_check.check_batch(next(iter(input_pipeline.evaluation(
        self.train_src, batch_size=self.config.input.batch_size,
        pp=self.train_pp))), self.config)

  def host_batches(self, seeds: List[int], start: int) -> List[Iterator]:
    """One host batch iterator per data seed, from step `start` + 1 on.

    A batch that does not fit the model fails here, by name, instead of as
    a shape error deep inside the first compiled step.
    """
    its = [input_pipeline.training(
        self.train_src, batch_size=self.config.input.batch_size,
        pp=self.train_pp, seed=seed,
        shuffle=self.config.input.get("shuffle", True), start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count())[0] for seed in seeds]
    first = next(its[0])
    input_check.check_batch(first, self.config)
    its[0] = itertools.chain([first], its[0])
    return its

  def train(self) -> Dict[str, Any]:
    """Restores or initialises, trains to `total`, evaluates; the results."""
    try:
      try:
        start = self.restore()
        self._loop(start, self.batches(start))
      finally:
        # Orbax saves asynchronously: wait for the last save even on errors.
        self.ckpt.close()
      out = self.finish()
    finally:
      self.writer.close()
    # No host leaves (and tears down the runtime) while others still write.
    distributed.sync(f"losa_{type(self).__name__}_done")
    return out

  def _loop(self, start: int, batches):
    """Steps `start` + 1 to `total`. A step's metrics are fetched at log,
    checkpoint, sync and last steps and after a checkpoint, whose step is
    kept once the next step's loss is finite (`Checkpointer.confirm`).
    Then eval, `after_step`, checkpoint."""
    config, total = self.config, self.total
    pending, unchecked = None, []
    for step in range(start + 1, total + 1):
      metrics = self.step(next(batches))
      # The previous step's metrics are ready by now: checking them every
      # step names the exact step without stalling the device pipeline.
      if pending is not None:
        self.check(*pending, unchecked)
      pending = (step, metrics) if self.check_each_step else None
      is_log = step % config.log_every == 0 or step == total
      is_ckpt = config.ckpt_every and step % config.ckpt_every == 0
      # This step's metrics judge the params saved at the previous step.
      if (is_log or is_ckpt or step == total or step in self.sync_steps or
          unchecked):
        metrics = self.check(step, jax.device_get(metrics), unchecked)
        pending = None
      if unchecked:
        self.ckpt.confirm(unchecked.pop())
      if is_log:
        self.log(step, metrics)
      if config.eval_every and step % config.eval_every == 0 and \
          step != total:
        self.evaluate(step)
      self.after_step(step)
      if is_ckpt and step != total:
        self.save(step)
        unchecked.append(step)
    if start < total:
      self.save(total, final=True)
