# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Training from the cache: the trainer's step fed features instead of images."""
import os
from typing import Callable, Optional

from losa_jax.assembly import input_pipeline
from losa_jax.assembly import steps
from losa_jax.config import schema as config_lib
from losa_jax.feature_cache import keys
from losa_jax.feature_cache import store
from losa_jax.models import model as model_lib
from losa_jax.models import side as side_lib

# --- the step -----------------------------------------------------------------------


class FeatureModel:
  """`Model.apply` look-alike whose "images" are cached features.

  `apply(variables, {"taps": [B, L', N, D], ("final": [B, N, D])}, **kw)`
  -> the LoSA model's (logits, out) with `precomputed=` (no backbone). The
  taps stay in the cache's dtype (a bf16 cache crosses host->device at half
  the size) until the side network casts each layer's to its own `dtype`
  as it reads it (layer_axis=1: no transposed or converted copy of the
  [B, L', N, D] batch). Used with `steps.train_step_fn`, so the cached step
  is the same code as the uncached one.
  """

  def __init__(self, model: model_lib.Model):
    self.model = model

  def apply(self, variables, features, **kw):
    taps = features["taps"]                                # [B, L', N, D]
    final = features["final"] if "final" in features else taps[:, -1]
    pre = {"taps": taps, "layer_axis": 1,
           "final": side_lib.as_float32(final)}
    return self.model.apply(variables, None, precomputed=pre, **kw)


def train_step(config, built, *, donate: bool = True) -> Callable:
  """Jitted (state, feature batch) -> (state, metrics), as built.train_step.

  The batch is `FeatureCache.gather`'s dict placed on the devices.
  """
  step = steps.train_step_fn(
      FeatureModel(built.model), built.tx, built.mask,
      label_smoothing=config.get("label_smoothing", 0.0),
      schedule_fns=built.schedule_fns)
  return steps.jit_train_step(step, built.mesh, built.state_sharding,
                              donate=donate)


def for_trainer(config, built, params, source, pp, workdir: str, *,
                start_step: int, backbone_id: Optional[str] = None):
  """The trainer's cached path: (train_step, device batch iterator).

  Builds or loads the cache for the loaded backbone `params`, then streams
  batches in the uncached order from `start_step` (resume included).
  """
  opts = keys.options(config)
  cache = store.FeatureCache.get_or_create(
      model=built.model, params=params, source=source, pp=pp,
      root=opts["dir"] or os.path.join(workdir, "feature_cache"),
      dtype=opts["dtype"], storage=opts["storage"],
      memory_budget_mb=opts["memory_budget_mb"],
      batch_size=opts["batch_size"] or config.input.batch_size,
      backbone_id=backbone_id)
  it = cache.batches(batch_size=config.input.batch_size,
                     seed=config_lib.data_seed_of(config),
                     shuffle=config.input.get("shuffle", True),
                     start_step=start_step)
  return train_step(config, built), input_pipeline.device_batches(
      it, built.mesh, keys=None)
