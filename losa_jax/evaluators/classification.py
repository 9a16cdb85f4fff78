# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Top-1 accuracy and mean cross-entropy over one split."""
from typing import Any, Callable, Dict, Optional

import jax

from losa_jax.assembly import input_pipeline
from losa_jax import datasets


def eval_batches(data: Dict[str, Any], *, pp, batch_size: int, seed: int = 0,
                 process_index: Optional[int] = None,
                 process_count: Optional[int] = None
                 ) -> input_pipeline.EvalIterable:
  """One in-order, padded pass over a config data dict (numpy batches).

  Each batch: "image" [b, ...], "label" int [b], "_mask" float32 [b] with
  b = batch_size // process_count; see `input_pipeline.evaluation`.
  """
  return input_pipeline.evaluation(
      datasets.get_source(data), batch_size=batch_size,
      pp=datasets.pp_for(data, pp), seed=seed,
      process_index=(jax.process_index() if process_index is None
                     else process_index),
      process_count=(jax.process_count() if process_count is None
                     else process_count))


class Evaluator:
  """Accuracy and loss of `eval_step` on one split.

  eval_step(params, batch) -> {"loss_sum", "correct", "count"} of one global
  batch sharded over `mesh` (`build.Built.eval_step`); data, pp, batch_size:
  the config entry (`config.evals.<name>`).
  """

  def __init__(self, eval_step: Callable, mesh, *, data: Dict[str, Any],
               pp, batch_size: int, seed: int = 0):
    self._step, self._mesh = eval_step, mesh
    self.batches = eval_batches(dict(data), pp=pp, batch_size=batch_size,
                                seed=seed)

  def run(self, params) -> Dict[str, float]:
    """{"accuracy", "loss", "count"} over the whole split."""
    totals = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    for batch in input_pipeline.device_batches(self.batches, self._mesh):
      sums = self._step(params, batch)
      for k in totals:
        totals[k] += float(sums[k])
    n = max(totals["count"], 1.0)
    return {"accuracy": totals["correct"] / n,
            "loss": totals["loss_sum"] / n, "count": totals["count"]}


def from_built(built, *, data, pp, batch_size, **kw) -> Evaluator:
  """The trainer's form: uses `built.eval_step` and `built.mesh`."""
  return Evaluator(built.eval_step, built.mesh, data=data, pp=pp,
                   batch_size=batch_size, **kw)
