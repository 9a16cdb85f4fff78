# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Inference from a finished workdir: backbone file + side checkpoint.

  python -m losa_jax.predict --workdir /tmp/losa_demo \
      --config configs/default.py --images a.png b.png
  python -m losa_jax.predict --workdir /tmp/losa_demo \
      --config configs/default.py --split test --out preds.csv

The config must be the one the workdir was trained with (the checkpoint's
metadata is checked against it, as on resume).
"""
import csv
import os
import sys
from typing import Dict, Iterable, List, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
from ml_collections import config_flags
import numpy as np

from losa_jax import build
from losa_jax import checkpointing
from losa_jax import config_lib
from losa_jax import input_pipeline
from losa_jax import pp as pp_lib
from losa_jax import steps
from losa_jax import train


class Predictor:
  """Loads a workdir once; `__call__(images [B, H, W, 3] float) -> probs [B, C]`."""

  def __init__(self, config, workdir: str, step: Optional[int] = None):
    config_lib.validate(config)
    self.config = config = config_lib.with_defaults(config)
    # The schedule is irrelevant here but must be valid for the config.
    self.built = built = build.build(
        config, total_steps=int(config.get("total_steps") or 10**9))
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"),
                                      async_save=False)
    step = step if step is not None else ckpt.latest_step()
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {ckpt.directory}: train first "
                              "(python -m losa_jax.train ...).")
    state = built.init(jax.random.key(0))
    state["params"] = train.load_backbone(state["params"], config)
    state = jax.device_put(state, built.state_sharding)
    checkpointing.check_meta(ckpt.read_meta(step), {
        "backbone": train.backbone_record(config),
        "config": checkpointing.config_fingerprint(config)}, ckpt.directory)
    abstract = checkpointing.abstract_trainable_state(state, built.mask)
    restored, _ = ckpt.restore(step, abstract)
    self.params = checkpointing.merge_restored(state, restored,
                                               built.mask)["params"]
    ckpt.close()
    self.step = step
    self._fn = jax.jit(steps.predict_fn(built.model))

  def __call__(self, images) -> np.ndarray:
    return np.asarray(self._fn(self.params, jnp.asarray(images, jnp.float32)))

  def preprocess(self, examples: Iterable[Dict]) -> np.ndarray:
    """Applies the config's eval pp to raw examples ({"image": ...})."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    fn = pp_lib.get_preprocess_fn(self.config.input.pp)
    out = []
    for ex in examples:
      ex = {"label": tf.constant(0, tf.int64),
            **{k: tf.constant(v) for k, v in ex.items()}}
      out.append(np.asarray(fn(ex)["image"]))
    return np.stack(out)


def predict_files(predictor: Predictor, paths: Sequence[str]) -> List[Dict]:
  """Classifies image files (png/jpg); returns one record per file."""
  images = []
  for p in paths:
    if not os.path.exists(p):
      raise FileNotFoundError(f"Image file not found: {p}")
    with open(p, "rb") as f:
      images.append({"image": f.read()})
  probs = predictor(predictor.preprocess(images))
  return [{"file": p, "label": int(np.argmax(pr)), "prob": float(np.max(pr))}
          for p, pr in zip(paths, probs)]


def predict_split(predictor: Predictor, data: Dict) -> List[Dict]:
  """Classifies a whole split (config data dict), in order."""
  cfg = predictor.config
  src = train.make_source(data)
  records, index = [], 0
  for batch in input_pipeline.evaluation(
      src, batch_size=cfg.input.batch_size, pp=train.make_pp(data, cfg.input.pp)):
    probs = predictor(batch["image"])
    mask = batch.get("_mask", np.ones(len(probs)))
    for pr, m, y in zip(probs, mask, batch.get("label", [None] * len(probs))):
      if m:
        records.append({"index": index, "label": int(np.argmax(pr)),
                        "prob": float(np.max(pr)),
                        "true": None if y is None else int(y)})
        index += 1
  return records


def define_flags():
  """Defined on demand so importing this module claims no flag names."""
  config_flags.DEFINE_config_file("config", None, "The training config.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "A finished training workdir.")
  flags.DEFINE_multi_string("images", [], "Image files to classify.")
  flags.DEFINE_string("split", None, "Split of the config's training data to "
                      "classify instead of files, e.g. 'test'.")
  flags.DEFINE_string("out", None, "CSV file for the predictions (default: "
                      "print them).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")


def main(argv):
  del argv
  cfg = flags.FLAGS
  if cfg.config is None or cfg.workdir is None:
    raise app.UsageError("--config and --workdir are required.")
  predictor = Predictor(cfg.config, cfg.workdir, cfg.step)
  if cfg.images:
    records = predict_files(predictor, cfg.images)
  elif cfg.split:
    data = dict(cfg.config.input.data, split=cfg.split)
    records = predict_split(predictor, data)
  else:
    raise app.UsageError("Give --images FILE... or --split NAME.")
  if cfg.out:
    tmp = cfg.out + ".tmp"
    with open(tmp, "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=list(records[0]))
      w.writeheader()
      w.writerows(records)
    os.replace(tmp, cfg.out)
    print(f"Wrote {len(records)} predictions to {cfg.out}")
  else:
    for r in records:
      print(r)
  if "true" in records[0] and records[0]["true"] is not None:
    acc = np.mean([r["label"] == r["true"] for r in records])
    print(f"accuracy {acc:.4f} over {len(records)} examples")


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
