# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Multi-view video evaluation: logits averaged over clips x crops.

A multi-view pp (`video_multiview` in losa_jax.pp.video) turns each test
video into V = clips x crops views [V, T, H, W, C]; the model scores every
view and the logits (Scenic's protocol) or probabilities are averaged per
video before the argmax.
"""
from typing import Any, Callable, Dict, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax import datasets
from losa_jax.evaluators import classification
from losa_jax import pp as pp_lib

def logits_fn(model) -> Callable:
  """fn(params, clips [N, T, H, W, 3]) -> logits [N, C] of an adapted model."""
  return lambda params, x: model.apply({"params": params}, x, train=False)[0]


def multiview_logits(predict_fn: Callable, params: Any, views,
                     average: str = "logits"):
  """Scores of V views per example, averaged: [B, V, T, H, W, C] -> [B, K].

  predict_fn(params, clips [N, T, H, W, C]) -> logits [N, K]. average:
  "logits" (mean logits, Scenic's test protocol) or "probs" (mean softmax
  probabilities, returned as their log so argmax still works).
  """
  if average not in ("logits", "probs"):
    raise ValueError(f"multiview average={average!r}: use 'logits' or "
                     "'probs'.")
  if views.ndim != 6:
    raise ValueError(f"multiview_logits expects views [B, V, T, H, W, C], "
                     f"got shape {views.shape}.")
  b, v = views.shape[:2]
  logits = predict_fn(params, views.reshape(b * v, *views.shape[2:]))
  logits = logits.reshape(b, v, -1).astype(jnp.float32)
  if average == "logits":
    return logits.mean(axis=1)
  return jnp.log(jax.nn.softmax(logits, axis=-1).mean(axis=1))


def evaluate_multiview(predict_fn: Callable, params: Any,
                       batches: Iterable[Dict[str, Any]], *,
                       average: str = "logits",
                       jit: bool = True) -> Dict[str, float]:
  """{"accuracy", "count"}: top-1 of view-averaged predictions.

  predict_fn, params, average: as in `multiview_logits`; batches: dicts with
  "image" [B, V, T, H, W, C], "label" [B] and optional "_mask" [B]; jit:
  compile the view-averaging forward once.
  """
  fn = lambda p, x: multiview_logits(predict_fn, p, x, average)
  fn = jax.jit(fn) if jit else fn
  correct = count = 0.0
  for batch in batches:
    pred = np.asarray(jnp.argmax(fn(params, jnp.asarray(batch["image"])), -1))
    mask = np.asarray(batch.get("_mask", np.ones(len(pred), np.float32)))
    correct += float(np.sum((pred == np.asarray(batch["label"])) * mask))
    count += float(np.sum(mask))
  return {"accuracy": correct / max(count, 1.0), "count": count}


def num_views(data: Dict[str, Any], pp) -> int:
  """V of a multi-view pp on the first example of `data`."""
  src = datasets.get_source(data)
  fn = pp_lib.get_preprocess_fn(datasets.pp_for(data, pp))
  for ex in src.as_dataset().take(1):
    return int(pp_lib.run_seeded(fn, ex, [0, 0])["image"].shape[0])
  raise ValueError(f"{src.name} has no examples.")


class Evaluator:
  """`config.evals.X = dict(type="video_multiview", data=..., pp=<a
  video_multiview pp>, batch_size=<videos per batch, None: 1>,
  average="logits")`; predict_fn as in `multiview_logits` (`logits_fn`).
  """

  def __init__(self, predict_fn: Callable, *, data: Dict[str, Any], pp,
               batch_size: int = 1, average: str = "logits", seed: int = 0):
    self._predict_fn, self._average = predict_fn, average
    self.views = num_views(dict(data), pp)
    # Views of one video stay in one process: no cross-host gather needed.
    self.batches = classification.eval_batches(
        dict(data), pp=pp, batch_size=batch_size or 1, seed=seed,
        process_index=0, process_count=1)

  def run(self, params) -> Dict[str, float]:
    """{"accuracy", "count", "views"}."""
    res = evaluate_multiview(self._predict_fn, params, self.batches,
                             average=self._average)
    return {**res, "views": float(self.views)}


def from_built(built, *, data, pp, batch_size=1, **kw) -> Evaluator:
  """The trainer's form: scores views with `built.model` (jitted)."""
  return Evaluator(logits_fn(built.model), data=data, pp=pp,
                   batch_size=batch_size, **kw)
