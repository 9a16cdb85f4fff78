# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Inference from finished workdirs: backbone file + side checkpoints.

  python -m losa_jax.predict --workdir /tmp/losa_demo \
      --config configs/default.py --images a.png b.png   # or a.png,b.png
  python -m losa_jax.predict --workdir /tmp/losa_demo \
      --config configs/default.py --split test --out preds.csv
  # Several tasks on one backbone pass (losa_jax.serving.multitask): one CSV with a
  # column group <task>/label, <task>/prob per task.
  python -m losa_jax.predict --workdirs /tmp/digits,/tmp/parity \
      --split test --out preds.csv

Without --config (--configs with --workdirs) the config is read from
`<workdir>/config.json`, which the trainer writes. A line names the eval pp
the images go through. The library: `losa_jax.serving.predict`.
"""
import csv
import sys
from typing import Dict, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import numpy as np

from losa_jax.config import flags as config_flags
from losa_jax.config import workdir as workdir_lib
from losa_jax.serving import multitask
from losa_jax.serving import predict as predict_lib
from losa_jax.utils import io as io_lib


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined on demand so importing this module claims no flag names."""
  fv = dict(flag_values=flag_values)
  config_flags.define_config_flag("config", "The training config (default: "
                                  "<workdir>/config.json).", flag_values)
  flags.DEFINE_string("workdir", None, "A finished training workdir.", **fv)
  define_workdirs_flags(flag_values, "Several finished workdirs served on "
                        "one backbone pass (then --names, --configs, "
                        "--data_task); the CSV gets a column group per task.")
  flags.DEFINE_string("data_task", None, "With --workdirs --split: whose "
                      "config.input.data to read (default: the first task).",
                      **fv)
  flags.DEFINE_multi_string("images", [], "Image files to classify: "
                            "--images a.png b.png (the files after it), a "
                            "comma list, or the flag repeated.", **fv)
  flags.DEFINE_string("split", None, "Split of the config's training data to "
                      "classify instead of files, e.g. 'test'.", **fv)
  flags.DEFINE_integer("batch_size", 256, "With --workdirs: images per "
                       "batch.", **fv)
  flags.DEFINE_string("out", None, "CSV file for the predictions (default: "
                      "print them).", **fv)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).",
                       **fv)


def define_workdirs_flags(flag_values: flags.FlagValues, workdirs_help: str):
  """--workdirs, --names and --configs of the commands that serve finished
  workdirs together (predict, export)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_list("workdirs", None, workdirs_help, **fv)
  flags.DEFINE_list("names", None, "Task names (default: each workdir's "
                    "base name).", **fv)
  flags.DEFINE_multi_string(
      "configs", [], "The training config of each workdir, in order (repeat "
      "the flag; '' reads that workdir's config.json). Default: every "
      "<workdir>/config.json.", **fv)


def _write(records: List[Dict], out: Optional[str]):
  if out:
    with io_lib.atomic_write(out, newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(records[0]))
      w.writeheader()
      w.writerows(records)
    print(f"Wrote {len(records)} predictions to {out}")
  else:
    for r in records:
      print(r)


def image_paths(images: Sequence[str], extra: Sequence[str]) -> List[str]:
  """Every image file given: --images values (comma lists split) and the
  positional arguments after them (`--images a.png b.png`); raises
  app.UsageError naming positional arguments given without --images."""
  paths = [p for v in images for p in v.split(",") if p]
  if extra and not paths:
    raise app.UsageError(f"Unexpected arguments {list(extra)}: image files "
                         "go after --images (--images a.png b.png).")
  return paths + list(extra)


def _main_multi(cfg, images: Sequence[str]):
  if cfg.workdir or cfg.config is not None:
    raise app.UsageError("--workdirs reads each config from "
                         "<workdir>/config.json or --configs: drop --workdir "
                         "/ --config.")
  mt = multitask.load(cfg.workdirs, cfg.names, configs=workdir_lib.
                      config_specs(cfg.workdirs, cfg.configs))
  print(f"Serving {mt.names} with {mt.num_backbone_passes} backbone "
        f"pass(es) per batch; eval pp {mt.pp!r}.")
  if images:
    records = predict_lib.multi_predict_files(mt, images)
  elif cfg.split:
    by_name = {t.name: t for t in mt.tasks}
    task = by_name.get(cfg.data_task or mt.names[0])
    if task is None:
      raise app.UsageError(f"--data_task={cfg.data_task!r}: use one of "
                           f"{mt.names}.")
    data = dict(task.config.input.data, split=cfg.split)
    records = predict_lib.multi_predict_split(mt, data,
                                              batch_size=cfg.batch_size)
  else:
    raise app.UsageError("Give --images FILE... or --split NAME.")
  _write(records, cfg.out)
  if "true" in records[0]:
    acc = np.mean([r[f"{task.name}/label"] == r["true"] for r in records])
    print(f"{task.name} accuracy {acc:.4f} over {len(records)} examples")


def run_main(cfg: flags.FlagValues, argv: Sequence[str]):
  """The CLI on parsed flags `cfg` (`define_flags`); argv[1:] are the
  positional arguments (image files after --images)."""
  if not flags.FLAGS["verbosity"].present:
    # Like train's terminal: Orbax logs every restore at INFO.
    logging.set_verbosity(logging.WARNING)
  images = image_paths(cfg.images, argv[1:])
  if cfg.workdirs:
    return _main_multi(cfg, images)
  if cfg.workdir is None:
    raise app.UsageError("--workdir (or --workdirs a,b,...) is required.")
  if cfg.configs:
    raise app.UsageError("--configs goes with --workdirs; with --workdir "
                         "give --config.")
  config = cfg.config
  if config is None:
    config = workdir_lib.read_config(cfg.workdir)
  predictor = predict_lib.Predictor(config, cfg.workdir, cfg.step)
  print(f"Step {predictor.step} of {cfg.workdir}; eval pp {predictor.pp!r}.")
  if images:
    records = predict_lib.predict_files(predictor, images)
  elif cfg.split:
    data = dict(config.input.data, split=cfg.split)
    records = predict_lib.predict_split(predictor, data)
  else:
    raise app.UsageError("Give --images FILE... or --split NAME.")
  _write(records, cfg.out)
  if "true" in records[0] and records[0]["true"] is not None:
    acc = np.mean([r["label"] == r["true"] for r in records])
    print(f"accuracy {acc:.4f} over {len(records)} examples")


def main(argv):
  run_main(flags.FLAGS, argv)


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
