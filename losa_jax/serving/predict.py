# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Inference from finished workdirs: backbone file + side checkpoints.

`Predictor(config, workdir)` maps images to class probabilities (the config
is checked against the checkpoint's metadata, as on resume); `predict_*`
give one record per example, `multi_predict_*` the same for several tasks
on one backbone pass (`serving.multitask`). Images go through the eval pp
(`multitask.serving_pp`). The command is `python -m losa_jax.predict`.
"""
import os
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import steps
from losa_jax.config import schema as config_lib
from losa_jax.evaluators import classification
from losa_jax.evaluators import video as video_eval
from losa_jax import pp as pp_lib
from losa_jax.serving import multitask
from losa_jax.utils import tree as tree_lib


class Predictor:
  """Loads a workdir once; `__call__(images [B, H, W, 3] float) -> probs [B, C]`.

  `pp` is the eval pp that `preprocess` and `predict_split` apply
  (`multitask.serving_pp`): the training pp may hold random ops.
  """

  def __init__(self, config, workdir: str, step: Optional[int] = None):
    config_lib.validate(config)
    self.config = config = config_lib.with_defaults(config)
    # Read-only, and first: a mistyped --workdir fails fast, creating nothing.
    self.built, trainable, self.step = multitask.restore_checked(
        config, workdir, step, advice="check --workdir and --step, or train "
        "first (python -m losa_jax.train ...).")
    # The frozen params, loaded from config.model_init as the trainer does.
    state = self.built.init_loaded(jax.random.key(0), config)
    _, frozen = tree_lib.partition(state["params"], self.built.mask)
    self.params = tree_lib.combine(trainable, frozen)
    self._fn = jax.jit(steps.predict_fn(self.built.model))
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


def _top1(pr, prefix: str = "") -> Dict:
  """{"<prefix>label", "<prefix>prob"} of one row of probabilities."""
  return {f"{prefix}label": int(np.argmax(pr)),
          f"{prefix}prob": float(np.max(pr))}


def predict_files(predictor: Predictor, paths: Sequence[str]) -> List[Dict]:
  """Classifies image files (png/jpg); returns one record per file."""
  probs = predictor(predictor.preprocess(_read_files(paths)))
  return [{"file": p, **_top1(pr)} for p, pr in zip(paths, probs)]


def _split_rows(data: Dict, pp, batch_size: int, probs_of: Callable):
  """(index, true label, probs_of(batch images), row) per example of a split
  (config data dict), in order."""
  batches = classification.eval_batches(
      dict(data), pp=pp, batch_size=batch_size, process_index=0,
      process_count=1)
  index = 0
  for batch in batches:
    probs = probs_of(batch["image"])
    for i, m in enumerate(batch["_mask"]):
      if m:
        yield index, int(batch["label"][i]), probs, i
        index += 1


def predict_split(predictor: Predictor, data: Dict) -> List[Dict]:
  """Classifies a whole split (config data dict), in order: records
  {"index", "label", "prob", "true"}."""
  return [{"index": n, **_top1(pr[i]), "true": y}
          for n, y, pr, i in _split_rows(data, predictor.pp,
                                         predictor.config.input.batch_size,
                                         predictor)]


def _task_columns(probs: Dict[str, np.ndarray], i: int) -> Dict:
  return {k: v for name, pr in probs.items()
          for k, v in _top1(pr[i], f"{name}/").items()}


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
  return [{"index": n, "true": y, **_task_columns(probs, i)}
          for n, y, probs, i in _split_rows(data, mt.pp, batch_size,
                                            mt.probs)]


def multiview_eval(config, workdir: str, *, pp: str,
                   data: Optional[Dict] = None,
                   batch_size: Optional[int] = None,
                   average: str = "logits") -> Dict[str, float]:
  """{"accuracy", "count", "views"} of a finished video training workdir.

  Args:
    config, workdir: as for `Predictor`.
    pp: a multi-view pp spec (`video_multiview` op), e.g. the config
      module's `multiview_pp(arg)`.
    data: source dict; default the config's first eval's data.
    batch_size: videos per batch (each is V clips); default the eval batch
      size divided by V, at least 1.
    average: "logits" or "probs".
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
