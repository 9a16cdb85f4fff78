# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""The README's main job: adapt the shipped ViT to real digits, three ways.

  python -m losa_jax.demo.run [--workdir /tmp/losa_demo] [--steps 300]

Trains LoSA, a linear probe and full fine-tuning with `configs/default.py`
through the trainer, then prints one table: test accuracy, trainable params,
steps, time per step, wall time and the XLA-compiled memory of each train
step. Full fine-tuning runs at a lower learning rate and for fewer steps
(`--full_steps`): each of its steps costs several LoSA steps. Needs no
download (the backbone ships in losa_jax/assets, the digits in sklearn).
"""
import contextlib
import json
import os
import shutil
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
import jax
from jax.experimental.compilation_cache import compilation_cache

from losa_jax.assembly import steps as steps_lib
from losa_jax.bench import common
from losa_jax.config import schema as config_lib
from losa_jax import train
from losa_jax.utils import cost

FLAGS = flags.FLAGS

# Full fine-tuning moves every weight: a smaller step is the usual choice.
LR = {"full": 0.0003}
METHOD_NAMES = {"losa": "LoSA (rank 8)", "linear": "linear probe",
                "full": "full fine-tuning"}
# One padded eval batch for the 797 test digits instead of four of 256.
EVAL_BATCH = 800


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """Defined on demand, so that importing this module claims no flag names."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("workdir", "/tmp/losa_demo", "One subfolder per method;"
                      " delete it to retrain from scratch.", **fv)
  flags.DEFINE_integer("steps", 300, "Training steps of LoSA and the linear "
                       "probe.", **fv)
  flags.DEFINE_integer("full_steps", 150, "Training steps of full "
                       "fine-tuning.", **fv)
  flags.DEFINE_list("methods", ["losa", "linear", "full"], "Methods to "
                    "compare (losa, linear, full, lora, adapter).", **fv)
  flags.DEFINE_string("task", "digits", "Demo task (digits, digits_parity).",
                      **fv)
  flags.DEFINE_string("config", None, "Config file (default: the repo's "
                      "configs/default.py); the demo appends "
                      ":method=...,steps=...,task=... to it.", **fv)


def demo_config(method: str, steps: int, task: str = "digits",
                config_file: Optional[str] = None):
  """configs/default.py (or `config_file`) for one row of the table."""
  arg = f"method={method},steps={steps},task={task}"
  if method in LR:
    arg += f",lr={LR[method]}"
  config = config_lib.load_config(
      (config_file or config_lib.config_path("default")) + ":" + arg)
  config.evals.test.batch_size = EVAL_BATCH
  # One checkpoint, at the end (a rerun of the same workdir resumes from it);
  # the intermediate ones only cost time in a run of a few hundred steps.
  config.ckpt_every = 0
  return config


def step_seconds(workdir: str) -> float:
  """Seconds per train step between the first and last logged steps of
  metrics.jsonl (so without compilation, evaluation and checkpointing), in
  the last training session only (a resumed run appends its logs)."""
  recs = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      if "time" in r and "loss" in r:
        if recs and r["step"] <= recs[-1]["step"]:
          recs = []
        recs.append(r)
  if len(recs) < 2 or recs[-1]["step"] <= recs[0]["step"]:
    return float("nan")
  return ((recs[-1]["time"] - recs[0]["time"]) /
          (recs[-1]["step"] - recs[0]["step"]))


@contextlib.contextmanager
def _private_compilation_cache():
  """JAX's compilation cache in a new temporary folder, deleted afterwards:
  `cost.compiled_cost` reads the trainer's compiled step back from it
  instead of compiling it again, and no run starts warm."""
  if jax.config.jax_compilation_cache_dir:   # the user's own cache: keep it
    yield
    return
  cache_dir = tempfile.mkdtemp(prefix="losa_demo_xla_")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  try:
    yield
  finally:
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()
    shutil.rmtree(cache_dir, ignore_errors=True)


def run_demo(workdir: str, steps: int, methods: Sequence[str],
             task: str = "digits", full_steps: Optional[int] = None,
             config_file: Optional[str] = None) -> List[Dict]:
  """Trains each method with the trainer; returns one result row per method."""
  rows = []
  with _private_compilation_cache():
    for method in methods:
      n = full_steps if method == "full" and full_steps else steps
      config = demo_config(method, n, task, config_file)
      print(f"\n=== {method} ({n} steps) ===", flush=True)
      t0 = time.time()
      method_dir = os.path.join(workdir, method)
      out = train.train_and_evaluate(config, method_dir)
      res, b = out["results"], out["built"]
      mem = cost.compiled_cost(
          b.train_step, b.state_shape,
          steps_lib.abstract_batch(config.input.batch_size, b.image_shape))
      rows.append({"method": method, "steps": res["steps"],
                   "batch": config.input.batch_size,
                   "accuracy": res["test/accuracy"],
                   "trainable": res["trainable_params"],
                   "step_ms": 1e3 * step_seconds(method_dir),
                   "time_s": time.time() - t0,
                   "step_mem_mib": mem["peak_bytes"] / 2**20,
                   "temp_mib": mem["temp_bytes"] / 2**20})
  return rows


def format_table(rows: Sequence[Dict], task: str = "digits") -> str:
  batch = rows[0]["batch"] if rows else 64
  lines = [f"Adapting the shipped MNIST ViT to sklearn {task} (batch {batch}, "
           f"{jax.devices()[0].platform.upper()}):", "",
           "| method | test top-1 | trainable params | steps | time / step | "
           "wall time | train-step memory (XLA) | of which temporaries |",
           "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    name = METHOD_NAMES.get(r["method"], r["method"])
    if r["method"] in LR:    # "full fine-tuning (lr 3e-4)"
      name += " (lr " + f"{LR[r['method']]:.0e}".replace("e-0", "e-") + ")"
    lines.append(
        f"| {name} | "
        f"{100 * r['accuracy']:.1f}% | {r['trainable']:,} | {r['steps']} | "
        f"{r['step_ms']:.0f} ms | {r['time_s']:.0f} s | "
        f"{r['step_mem_mib']:.1f} MiB | {r['temp_mib']:.1f} MiB |")
  return "\n".join(lines)


def main(argv):
  common.start_flags_only_main(argv)
  rows = run_demo(FLAGS.workdir, FLAGS.steps, FLAGS.methods, FLAGS.task,
                  full_steps=FLAGS.full_steps, config_file=FLAGS.config)
  print("\n" + format_table(rows, FLAGS.task))


if __name__ == "__main__":
  define_flags()
  app.run(main)
