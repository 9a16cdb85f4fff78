# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Trainer: `python -m losa_jax.train --config configs/X.py:args --workdir W`.

Resumes from the newest checkpoint in the workdir automatically. Writes the
run's config (`config.json`, see losa_jax.config.workdir), `metrics.jsonl` and
TensorBoard events to the workdir, a progress line to the terminal, and
`results.json` (final metrics, trainable params, time, memory) at the end.
The loop is losa_jax.trainers (`single` runs and `population`s).
"""
import sys
from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging

from losa_jax.config import flags as config_flags
from losa_jax.trainers import common
from losa_jax.trainers import population
from losa_jax.trainers import single

FLAGS = flags.FLAGS

NonFiniteLossError = common.NonFiniteLossError


def train_and_evaluate(config, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if possible); returns
  {"results" (also written to <workdir>/results.json), "state", "built"}; for
  a config with a `population` (every member trains), "population" instead
  of "built" and results with the leaderboard."""
  if config.get("population"):
    return population.train(config, workdir)
  return single.train(config, workdir)


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """--config and --workdir; defined on demand so that importing this module
  does not claim those flag names."""
  define_config_and_workdir_flags(
      flag_values, config_help="Training config file (configs/*.py[:args]).",
      workdir_help="Where checkpoints and logs go; a run resumes from the "
      "newest checkpoint found there.")


def define_config_and_workdir_flags(flag_values: flags.FlagValues, *,
                                    config_help: str, workdir_help: str):
  """--config (`config_flags.define_config_flag`) and --workdir, the flags
  of the commands that train (train, auto)."""
  config_flags.define_config_flag("config", config_help, flag_values)
  flags.DEFINE_string("workdir", None, workdir_help, flag_values=flag_values)


def start_config_and_workdir_main():
  """Requires --config and --workdir; unless --verbosity was given keeps the
  terminal to progress lines (Orbax logs every write at INFO)."""
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
