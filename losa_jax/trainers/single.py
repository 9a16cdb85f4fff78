# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""A single run: one model's state and step in the shared loop (common)."""
import time
from typing import Any, Dict

import jax
import numpy as np

from losa_jax import evaluators
from losa_jax.assembly import build
from losa_jax.assembly import input_pipeline
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.checkpointing import resume
from losa_jax.config import schema as config_lib
from losa_jax.config import workdir as workdir_lib
from losa_jax.parallel import distributed
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.trainers import common


def run_evaluators(evals, params, *, step: int) -> Dict[str, float]:
  """`{name/metric: value}` of every evaluator due at `step` (0 = all)."""
  results = {}
  for name, (every, ev) in evals.items():
    if step and (not every or step % every):
      continue
    for k, v in ev.run(params).items():
      results[f"{name}/{k}"] = v
  return results


class SingleTrainer(common.Trainer):
  """`build.build`'s state and step; a NaN/Inf loss stops the run."""
  check_each_step = True

  def __init__(self, config, workdir: str):
    super().__init__(config, workdir)
    self.built = build.build(config, total_steps=self.total)
    sharding_lib.check_batch_size(config.input.batch_size, self.built.mesh)
    self.evals = evaluators.from_config(self.built, config)
    self.progress = common.Progress(self.total, config.input.batch_size)
    self.state = None
    self.metrics = {}     # the last checked step's

  def restore(self) -> int:
    config, built, ckpt = self.config, self.built, self.ckpt
    # init + load_backbone, without computing the random backbone.
    self.state = built.init_loaded(jax.random.key(config.seed), config)
    # Every host resumes from the same step (`agree`), or their collectives
    # would pair up different steps.
    start, restored, _ = ckpt.restore_newest(
        checkpointing.abstract_trainable_state(self.state, built.mask),
        check=lambda meta: resume.check_meta(
            meta, {**self.expected_meta,
                   "hparams": resume.config_hparams(config),
                   "opt_layout": resume.opt_layout(self.state["opt"])},
            ckpt.directory),
        agree=distributed.agree)
    if start is not None:
      self.state = checkpointing.merge_restored(self.state, restored,
                                                built.mask)
      common.say(f"Resumed from step {start} in {ckpt.directory}")
    if jax.process_index() == 0:
      # After the metadata check, so a refused resume leaves the workdir's
      # config as it was. The workdir then serves without its config file
      # (losa_jax.serving.multitask, predict --workdirs, export).
      workdir_lib.write_config(self.workdir, config)
    return int(start or 0)

  def batches(self, start: int):
    config, built = self.config, self.built
    self.train_step = built.train_step
    if (config.get("feature_cache") or {}).get("enabled"):
      self.check_cached_pp()
      # Backbone taps computed once per example; same order as below.
      from losa_jax import feature_cache  # pylint: disable=g-import-not-at-top
      self.train_step, batches = feature_cache.for_trainer(
          config, built, self.state["params"], self.train_src, self.train_pp,
          self.workdir, start_step=start,
          backbone_id=self.expected_meta["backbone"]["sha256"])
    else:
      it, = self.host_batches([config_lib.data_seed_of(config)], start)
      batches = input_pipeline.device_batches(it, built.mesh)
    common.say(f"Training {config.model.method} for {self.total} steps "
               f"({built.num_trainable():,} trainable params) from step "
               f"{start} on {jax.process_count()} process(es), mesh "
               f"{dict(built.mesh.shape)}.")
    return batches

  def step(self, batch):
    self.state, metrics = self.train_step(self.state, batch)
    return metrics

  def _advice(self) -> str:
    return (f"Lower config.lr (now {self.config.get('lr')}) or set "
            f"config.grad_clip_norm (now {self.config.get('grad_clip_norm')}).")

  def check(self, step, metrics, unchecked):
    # The loss is the replicated global mean, identical on every host, so
    # all processes raise at the same step and none hangs in a collective.
    loss = float(metrics["loss"])
    if np.isfinite(loss):
      self.metrics = metrics
      return metrics
    dropped = ""
    if unchecked and unchecked[0] == step - 1:
      # That step's params gave this loss: resuming would repeat it.
      self.ckpt.discard(unchecked.pop())
      dropped = (f"Checkpoint step {step - 1}, whose params gave this "
                 "loss, was deleted. ")
    self.ckpt.wait()
    raise common.NonFiniteLossError(
        f"Loss is {loss} at step {step}; stopping. {dropped}"
        f"{common.nonfinite_report(self.ckpt)} {self._advice()}")

  def log(self, step, metrics):
    self.writer.write(step, metrics)
    common.say(self.progress.line(step, metrics))

  def evaluate(self, step):
    ev = run_evaluators(self.evals, self.state["params"], step=step)
    if ev:
      self.writer.write(step, ev)
      common.say("  eval " + " ".join(f"{k}={v:.4f}" for k, v in ev.items()))

  def save(self, step, *, final=False):
    saved = checkpointing.trainable_state(self.state, self.built.mask)
    # The loss and max |param| let a NaN message judge this step.
    health = common.health_meta(saved["params"], self.metrics.get("loss"))
    if final and health["max_abs_param"] is None:
      # The last step's loss is never computed: its params must be finite.
      raise common.NonFiniteLossError(
          f"The params are not finite after the last step {step}; not "
          f"saved. {common.nonfinite_report(self.ckpt)} {self._advice()}")
    meta = {**self.expected_meta, "step": step, "data_step": step,
            "hparams": resume.config_hparams(self.config), **health}
    # Kept only once the next step has shown its loss to be finite.
    self.ckpt.save(step, saved, meta, force=final, checked=final)

  def finish(self) -> Dict[str, Any]:
    final = run_evaluators(self.evals, self.state["params"], step=0)
    self.writer.append({"step": self.total, **final})
    results = {
        "method": self.config.model.method, "steps": self.total,
        "trainable_params": self.built.num_trainable(),
        "train_time_s": time.time() - self.t_start,
        **{f"train/{k}": float(v) for k, v in self.metrics.items()},
        **final, **common.peak_memory(),
    }
    common.write_results(self.workdir, results)
    common.say("Final: " + " ".join(f"{k}={v:.4f}" for k, v in final.items()
                                    if isinstance(v, float)))
    return {"results": results, "state": self.state, "built": self.built}


def train(config, workdir: str) -> Dict[str, Any]:
  """Trains `config` (no population) in `workdir`, resuming if possible.

  Returns:
    {"results" (also in <workdir>/results.json), "state", "built"}.
  """
  config_lib.validate(config)
  return SingleTrainer(config_lib.with_defaults(config), workdir).train()
