# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Video LoSA demo, offline: does the side network's temporal mixing matter?

  python -m losa_jax.video.demo                 # the table in docs/video.md
  python -m losa_jax.video.demo --steps 20      # a quick smoke run
  python -m losa_jax.video.demo --only 0 --seeds 0,1,2 \
      --extra side_dtype=float32                # one row, three seeds

Task: `losa_jax.datasets.moving_digits` (8 frames of 28x28; the label is the
direction a real MNIST digit moves in). Backbone: the shipped MNIST ViT
inflated in memory to a ViViT (2x4x4 tubelets, average-frame kernels; why:
docs/video.md). Every row (`RUNS`: one config arg of
configs/video_moving_digits.py each) trains with the normal trainer; LoSA
rows train from the trainer's backbone feature cache unless --no_cache or
the row's own `cache=False`. Rows 4-6 and 8 train inside the frozen
backbone (ST-Adapter, LoRA, adapters, sized by the config's rank: 8, and 48
in row 8), so they run the backbone forward and backward at every step.

Prints a table (test accuracy, trainable params, wall time incl. compile and
cache building, seconds per train step between the first and last logged
steps) and writes it as JSON next to the workdirs.
"""
import os
import tempfile
import time
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags

from losa_jax.bench import common
from losa_jax.demo import run as demo_run
from losa_jax.utils import io as io_lib

FLAGS = flags.FLAGS

# (row name, config arg)
RUNS = (
    ("LoSA, space+time mixing", "method=losa,mixing=space_time"),
    ("LoSA, space-only mixing", "method=losa,mixing=space"),
    ("LoSA, space+time, CLS pooled", "method=losa,mixing=space_time,pool=tok"),
    ("linear probe", "method=linear"),
    ("ST-Adapter (bottleneck 8, (3,1,1) conv before attention, every block)",
     "method=st_adapter"),
    ("LoRA (rank 8)", "method=lora"),
    ("adapter (dim 8)", "method=adapter"),
    ("LoSA, space+time mixing, no feature cache",
     "method=losa,mixing=space_time,cache=False"),
    ("ST-Adapter, bottleneck 48 (width / 2, the paper's 384 on ViT-B's 768)",
     "method=st_adapter,rank=48"),
)


def run(steps: Optional[int] = None, runs: Sequence = RUNS,
        root: Optional[str] = None, extra_arg: str = "",
        cache: bool = True) -> List[Dict]:
  """Trains each row with the trainer; returns one result dict per row.

  The config arg of a row is `cache` (if `cache`), the row's own arg, then
  `steps=` and `extra_arg`: a later key wins, so a row's `cache=False`
  overrides `cache` and `extra_arg` overrides every row.
  """
  from losa_jax.config import schema as config_lib  # pylint: disable=g-import-not-at-top
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  path = config_lib.config_path("video_moving_digits")
  root = root or tempfile.mkdtemp(prefix="losa_video_demo_")
  rows = []
  for name, arg in runs:
    full_arg = ",".join(a for a in (
        "cache" if cache else "", arg, f"steps={steps}" if steps else "",
        extra_arg) if a)
    config = config_lib.load_config(f"{path}:{full_arg}")
    workdir = os.path.join(root, arg.replace(",", "_").replace("=", "-"))
    t0 = time.time()
    res = train.train_and_evaluate(config, workdir)["results"]
    rows.append({"run": name, "config_arg": full_arg,
                 "test_accuracy": res["test/accuracy"],
                 "trainable_params": res["trainable_params"],
                 "steps": res["steps"], "time_s": time.time() - t0,
                 "step_s": demo_run.step_seconds(workdir)})
    print(f"-> {name}: test accuracy {res['test/accuracy']:.3f}", flush=True)
  io_lib.write_json(os.path.join(root, "video_demo_results.json"), rows)
  return rows


def table(rows: Sequence[Dict]) -> str:
  lines = ["| run | test accuracy | trainable params | steps | time (s) | "
           "s / step |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['run']} | {r['test_accuracy']:.3f} | "
                 f"{r['trainable_params']:,} | {r['steps']} | "
                 f"{r['time_s']:.0f} | {r['step_s']:.3f} |")
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = FLAGS):
  """The demo's flags; defined on demand, so importing claims no names."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_integer("steps", None, "Training steps per run (default: the "
                       "config's).", **fv)
  flags.DEFINE_string("root", None, "Where the workdirs go (default: a new "
                      "temporary folder).", **fv)
  flags.DEFINE_list("only", [], "Row numbers to run (0-based, comma list); "
                    f"default: all {len(RUNS)}.", **fv)
  flags.DEFINE_bool("no_cache", False, "Run the backbone at every LoSA step "
                    "(no feature cache).", **fv)
  flags.DEFINE_string("extra", "", "Config args added to every row, e.g. "
                      "side_dtype=float32.", **fv)
  flags.DEFINE_list("seeds", [], "Run every row once per seed (config arg "
                    "seed=); default: the config's seed only.", **fv)
  flags.register_validator(
      "only", lambda v: all(x.isdigit() and int(x) < len(RUNS) for x in v),
      message=f"--only takes row numbers 0..{len(RUNS) - 1}.", **fv)


def main(argv):
  common.start_flags_only_main(argv)
  runs = [RUNS[int(i)] for i in FLAGS.only] if FLAGS.only else RUNS
  if FLAGS.seeds:
    runs = [(f"{name}, seed {s}", f"{arg},seed={int(s)}")
            for name, arg in runs for s in FLAGS.seeds]
  rows = run(FLAGS.steps, runs, FLAGS.root, extra_arg=FLAGS.extra,
             cache=not FLAGS.no_cache)
  print()
  print(table(rows))


if __name__ == "__main__":
  define_flags()
  app.run(main)
