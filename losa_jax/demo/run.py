# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""The README's main job: adapt the shipped ViT to real digits, three ways.

  python -m losa_jax.demo.run [--workdir /tmp/losa_demo] [--steps 600]

Trains LoSA, a linear probe and full fine-tuning with `configs/default.py`
(same data, steps, batch and schedule; full fine-tuning at a lower learning
rate, as is usual) through the real trainer, then prints one table: test
accuracy, trainable params, wall time and the XLA-compiled memory of each
train step. Needs no download: the backbone ships in losa_jax/assets and the
digits ship in scikit-learn.
"""
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
if REPO not in sys.path:     # configs/ lives beside the package
  sys.path.insert(0, REPO)

from configs import default as default_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from losa_jax import build  # pylint: disable=g-import-not-at-top,wrong-import-position
from losa_jax import cost  # pylint: disable=g-import-not-at-top,wrong-import-position
from losa_jax import steps as steps_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from losa_jax import train  # pylint: disable=g-import-not-at-top,wrong-import-position


def define_flags():
  """Defined on demand so importing this module claims no flag names."""
  flags.DEFINE_string("workdir", "/tmp/losa_demo", "One subfolder per method; "
                      "delete it to retrain from scratch.")
  flags.DEFINE_integer("steps", 600, "Training steps per method.")
  flags.DEFINE_list("methods", ["losa", "linear", "full"], "Methods to compare.")
  flags.DEFINE_string("task", "digits", "Demo task (digits, digits_parity).")


# Full fine-tuning moves every weight: a smaller step is the usual choice.
LR = {"full": 0.0003}


def run_demo(workdir, steps, methods, task="digits"):
  """Trains each method; returns a list of result rows."""
  rows = []
  for method in methods:
    arg = f"method={method},steps={steps},task={task}"
    if method in LR:
      arg += f",lr={LR[method]}"
    config = default_config.get_config(arg)
    print(f"\n=== {method} ({arg}) ===", flush=True)
    t0 = time.time()
    out = train.train_and_evaluate(config, os.path.join(workdir, method))
    res = out["results"]
    b = out["built"]
    mem = cost.compiled_cost(b.train_step, b.state_shape,
                             steps_lib.abstract_batch(config.input.batch_size,
                                                      b.image_shape))
    rows.append({"method": method, "accuracy": res["test/accuracy"],
                 "trainable": res["trainable_params"],
                 "time_s": time.time() - t0,
                 "step_mem_mib": mem["peak_bytes"] / 2**20,
                 "temp_mib": mem["temp_bytes"] / 2**20})
  return rows


def format_table(rows, steps):
  lines = [f"Adapting the shipped MNIST ViT to sklearn digits ({steps} steps,"
           f" batch 64, {jax.devices()[0].platform.upper()}):", "",
           "| method | test top-1 | trainable params | wall time | "
           "train-step memory (XLA) | of which temporaries |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {100 * r['accuracy']:.1f}% | "
                 f"{r['trainable']:,} | {r['time_s']:.0f} s | "
                 f"{r['step_mem_mib']:.1f} MiB | {r['temp_mib']:.1f} MiB |")
  return "\n".join(lines)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  rows = run_demo(f.workdir, f.steps, f.methods, f.task)
  print("\n" + format_table(rows, f.steps))


if __name__ == "__main__":
  define_flags()
  app.run(main)
