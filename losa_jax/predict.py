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

The config must be the one the workdir was trained with (the checkpoint's
metadata is checked against it, as on resume); without --config (--configs
with --workdirs) it is read from `<workdir>/config.json`, which the trainer
writes. Images go through the eval pp (`multitask.serving_pp`: the first
eval's pp, else input.pp), as in `losa_jax.serving.export`'s artifacts; a line
names it.
"""
import csv
import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import steps
from losa_jax.checkpointing import manager as checkpointing
from losa_jax.config import flags as config_flags
from losa_jax.config import schema as config_lib
from losa_jax.config import workdir as workdir_lib
from losa_jax.evaluators import classification
from losa_jax.evaluators import video as video_eval
from losa_jax import pp as pp_lib
from losa_jax.serving import multitask
from losa_jax.utils import io as io_lib


class Predictor:
  """Loads a workdir once; `__call__(images [B, H, W, 3] float) -> probs [B, C]`.

  `pp` is the eval pp that `preprocess` and `predict_split` apply
  (`multitask.serving_pp`): the training pp may hold random ops.
  """

  def __init__(self, config, workdir: str, step: Optional[int] = None):
    config_lib.validate(config)
    self.config = config = config_lib.with_defaults(config)
    state = None

    def abstract_of(built):
      # The full state (frozen backbone loaded) that the restored trainable
      # leaves are merged into.
      nonlocal state
      state = built.init_loaded(jax.random.key(0), config)
      return checkpointing.abstract_trainable_state(state, built.mask)

    # Read-only, and first: a mistyped --workdir fails fast, creating nothing.
    built, restored, self.step = multitask.restore_checked(
        config, workdir, step, abstract_of, advice="check --workdir and "
        "--step, or train first (python -m losa_jax.train ...).")
    self.built = built
    self.params = checkpointing.merge_restored(state, restored,
                                               built.mask)["params"]
    self._fn = jax.jit(steps.predict_fn(built.model))
    self.pp = multitask.serving_pp(config)

  def __call__(self, images) -> np.ndarray:
    return np.asarray(self._fn(self.params, jnp.asarray(images, jnp.float32)))

  def preprocess(self, examples: Iterable[Dict]) -> np.ndarray:
    """Applies the eval pp (`self.pp`) to raw examples ({"image": ...})."""
    return preprocess(self.pp, examples)


def preprocess(pp, examples: Iterable[Dict]) -> np.ndarray:
  """Applies a pp spec to raw examples ({"image": bytes or array}) ->
  stacked model input [N, ...]."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  fn = pp_lib.get_preprocess_fn(pp)
  out = []
  for ex in examples:
    ex = {"label": tf.constant(0, tf.int64),
          **{k: tf.constant(v) for k, v in ex.items()}}
    out.append(np.asarray(fn(ex)["image"]))
  return np.stack(out)


def _read_files(paths: Sequence[str]) -> List[Dict]:
  examples = []
  for p in paths:
    if not os.path.exists(p):
      raise FileNotFoundError(f"Image file not found: {p}")
    with open(p, "rb") as f:
      examples.append({"image": f.read()})
  return examples


def predict_files(predictor: Predictor, paths: Sequence[str]) -> List[Dict]:
  """Classifies image files (png/jpg); returns one record per file."""
  probs = predictor(predictor.preprocess(_read_files(paths)))
  return [{"file": p, "label": int(np.argmax(pr)), "prob": float(np.max(pr))}
          for p, pr in zip(paths, probs)]


def predict_split(predictor: Predictor, data: Dict) -> List[Dict]:
  """Classifies a whole split (config data dict), in order."""
  batches = classification.eval_batches(
      dict(data), pp=predictor.pp,
      batch_size=predictor.config.input.batch_size,
      process_index=0, process_count=1)
  return list(classification.predictions(lambda _, x: predictor(x), None,
                                         batches))


def _task_columns(probs: Dict[str, np.ndarray], i: int) -> Dict:
  out = {}
  for name, pr in probs.items():
    out[f"{name}/label"] = int(np.argmax(pr[i]))
    out[f"{name}/prob"] = float(np.max(pr[i]))
  return out


def multi_predict_files(mt: multitask.MultiTask, paths: Sequence[str]
                        ) -> List[Dict]:
  """Every task on image files: {"file", "<task>/label", "<task>/prob"}."""
  probs = mt.probs(preprocess(mt.pp, _read_files(paths)))
  return [{"file": p, **_task_columns(probs, i)} for i, p in enumerate(paths)]


def multi_predict_split(mt: multitask.MultiTask, data: Dict, *,
                        batch_size: int = 256) -> List[Dict]:
  """Every task on one split, in order (one backbone pass per batch).

  Records: {"index", "true" (the split's label), "<task>/label",
  "<task>/prob" for every task}.
  """
  batches = classification.eval_batches(
      dict(data), pp=mt.pp, batch_size=batch_size, process_index=0,
      process_count=1)
  records, index = [], 0
  for batch in batches:
    probs = mt.probs(batch["image"])
    for i, m in enumerate(batch["_mask"]):
      if m:
        records.append({"index": index, "true": int(batch["label"][i]),
                        **_task_columns(probs, i)})
        index += 1
  return records


def multiview_eval(config, workdir: str, *, pp: str,
                   data: Optional[Dict] = None,
                   batch_size: Optional[int] = None,
                   average: str = "logits") -> Dict[str, float]:
  """Multi-view accuracy of a finished video training workdir.

  Args:
    config: the config the workdir was trained with.
    workdir: the training workdir (backbone from config.model_init + the
      side/head checkpoint).
    pp: a multi-view pp spec (`video_multiview` op), e.g. the config
      module's `multiview_pp(arg)`.
    data: source dict; default the config's first eval's data.
    batch_size: videos per batch (each is V clips); default the eval batch
      size divided by V, at least 1.
    average: "logits" or "probs".

  Returns:
    {"accuracy", "count", "views"}.
  """
  predictor = Predictor(config, workdir)
  first = next(iter(config.evals.values()))
  data = dict(data if data is not None else first["data"])
  if batch_size is None:
    views = video_eval.num_views(data, pp)
    batch_size = max(1, first.get("batch_size", config.input.batch_size) //
                     max(views, 1))
  ev = video_eval.Evaluator(video_eval.logits_fn(predictor.built.model),
                            data=data, pp=pp, batch_size=batch_size,
                            average=average)
  return ev.run(predictor.params)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined on demand so importing this module claims no flag names.

  --config is checked like train's (config_flags.define_config_flag).
  """
  fv = dict(flag_values=flag_values)
  config_flags.define_config_flag("config", "The training config (default: "
                                  "<workdir>/config.json).", flag_values)
  flags.DEFINE_string("workdir", None, "A finished training workdir.", **fv)
  flags.DEFINE_list("workdirs", None, "Several finished workdirs served on "
                    "one backbone pass (configs from <workdir>/config.json); "
                    "the CSV gets a column group per task.", **fv)
  flags.DEFINE_list("names", None, "With --workdirs: the task names "
                    "(default: each workdir's base name).", **fv)
  flags.DEFINE_multi_string(
      "configs", [], "With --workdirs: the training config of each workdir, "
      "in order (repeat the flag; '' reads that workdir's config.json). "
      "Default: every <workdir>/config.json.", **fv)
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
  positional arguments after them (`--images a.png b.png`).

  Raises:
    app.UsageError: positional arguments without --images, named.
  """
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
    records = multi_predict_files(mt, images)
  elif cfg.split:
    by_name = {t.name: t for t in mt.tasks}
    task = by_name.get(cfg.data_task or mt.names[0])
    if task is None:
      raise app.UsageError(f"--data_task={cfg.data_task!r}: use one of "
                           f"{mt.names}.")
    data = dict(task.config.input.data, split=cfg.split)
    records = multi_predict_split(mt, data, batch_size=cfg.batch_size)
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
  predictor = Predictor(config, cfg.workdir, cfg.step)
  print(f"Step {predictor.step} of {cfg.workdir}; eval pp {predictor.pp!r}.")
  if images:
    records = predict_files(predictor, images)
  elif cfg.split:
    data = dict(config.input.data, split=cfg.split)
    records = predict_split(predictor, data)
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
