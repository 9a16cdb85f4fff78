# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Config schema and validation: fail before any compilation, name the key.

A trainer config is an `ml_collections.ConfigDict` (see configs/*.py). The
schema below lists every field the trainer reads; anything else is a typo
and is refused with the list of valid keys.
"""
import difflib
from typing import Any, Dict

import ml_collections

from losa_jax import distributed as distributed_lib
from losa_jax import sharding as sharding_lib
from losa_jax.models import model as model_lib
from losa_jax.models import vit

# field -> default (None: required or optional without default).
TOP_LEVEL: Dict[str, Any] = dict(
    seed=0,
    num_classes=None,
    image_size=224,
    total_steps=None,
    total_epochs=None,
    input=None,
    evals=None,
    model=None,
    model_init="",
    model_load=None,
    optax_name="adamw",
    optax=None,
    lr=1e-3,
    wd=0.0,
    wd_mults=None,
    lr_mults=None,
    schedule=None,
    grad_clip_norm=None,
    label_smoothing=0.0,
    log_every=10,
    eval_every=0,
    ckpt_every=0,
    keep_ckpts=3,
    # [(axis, size)], one size may be -1; None = [("data", -1)]. Batches are
    # split over "data" and "fsdp"; see losa_jax.sharding.
    mesh=None,
    # [(regex over param names, rule)], first match wins; the default
    # FSDP-shards the frozen backbone over a "fsdp" mesh axis if there is one.
    sharding_strategy=sharding_lib.DEFAULT_STRATEGY,
    # Multi-process launch (losa_jax.distributed): None = from the
    # environment (LOSA_* variables, or a TPU pod / SLURM / Open MPI cluster);
    # or dict(coordinator_address="host:port", num_processes=N, process_id=i,
    # local_device_ids=[...]), dict(auto=True) or dict(auto=False).
    distributed=None,
    feature_cache=None,
)
INPUT_KEYS = ("data", "batch_size", "pp", "shuffle")
EVAL_KEYS = ("data", "pp", "batch_size", "every")
MODEL_KEYS = ("method", "backbone", "losa", "lora", "adapter")
MODEL_LOAD_KEYS = ("dont_load", "param_dtype")
# config.feature_cache: see losa_jax.feature_cache.DEFAULTS.
FEATURE_CACHE_KEYS = ("enabled", "dir", "dtype", "memory_budget_mb",
                      "storage", "batch_size")
BACKBONE_KEYS = ("variant", "width", "depth", "mlp_dim", "num_heads",
                 "patch_size", "posemb", "rep_size", "dropout", "pool_type",
                 "head_zeroinit", "scan", "remat_policy", "dtype_mm",
                 # Video (model.backbone.kind="vivit", losa_jax.models.vivit).
                 "kind", "temporal_patch_size", "num_frames")


def _unknown(keys, valid, where):
  bad = sorted(set(keys) - set(valid))
  if bad:
    hints = {b: difflib.get_close_matches(b, valid, n=1) for b in bad}
    hint = "; ".join(f"{b!r} (did you mean {h[0]!r}?)" if h else repr(b)
                     for b, h in hints.items())
    raise ValueError(f"Unknown config field(s) in {where}: {hint}. Valid: "
                     f"{sorted(valid)}.")


def _as_dict(x):
  if x is None:
    return {}
  return x.to_dict() if isinstance(x, ml_collections.ConfigDict) else dict(x)


def validate(config) -> None:
  """Raises ValueError naming the first bad field; cheap (no compilation)."""
  _unknown(config.keys(), TOP_LEVEL, "config")
  for key in ("num_classes", "input", "model"):
    if config.get(key) is None:
      raise ValueError(f"config.{key} is required.")
  if not config.get("total_steps") and not config.get("total_epochs"):
    raise ValueError("Set config.total_steps or config.total_epochs.")
  inp = _as_dict(config.input)
  _unknown(inp, INPUT_KEYS, "config.input")
  for key in ("data", "batch_size", "pp"):
    if key not in inp:
      raise ValueError(f"config.input.{key} is required.")
  for name, ev in _as_dict(config.get("evals")).items():
    _unknown(_as_dict(ev), EVAL_KEYS, f"config.evals.{name}")
    if "data" not in ev:
      raise ValueError(f"config.evals.{name}.data is required.")
  model = _as_dict(config.model)
  _unknown(model, MODEL_KEYS, "config.model")
  method = model.get("method", "losa")
  if method not in model_lib.METHODS:
    raise ValueError(f"config.model.method={method!r} is not a method; "
                     f"choose one of {list(model_lib.METHODS)}.")
  backbone = _as_dict(model.get("backbone"))
  _unknown(backbone, BACKBONE_KEYS, "config.model.backbone")
  vit.decode_variant(backbone.get("variant"))
  if backbone.get("pool_type", "gap") not in vit.POOL_TYPES:
    raise ValueError(f"config.model.backbone.pool_type="
                     f"{backbone['pool_type']!r}: use one of {vit.POOL_TYPES}.")
  model_lib.merged(model_lib.LOSA_DEFAULTS, _as_dict(model.get("losa")),
                   "config.model.losa")
  model_lib.merged(model_lib.LORA_DEFAULTS, _as_dict(model.get("lora")),
                   "config.model.lora")
  model_lib.merged(model_lib.ADAPTER_DEFAULTS, _as_dict(model.get("adapter")),
                   "config.model.adapter")
  if method == "lora":
    vit.lora_targets(_as_dict(model.get("lora")).get("targets", "qv"))
  model_load = _as_dict(config.get("model_load"))
  _unknown(model_load, MODEL_LOAD_KEYS, "config.model_load")
  if model_load.get("param_dtype") not in (None, "", "float32", "bfloat16",
                                           "float16"):
    raise ValueError(f"config.model_load.param_dtype="
                     f"{model_load['param_dtype']!r}: use 'float32', "
                     "'bfloat16' or 'float16'.")
  cache = _as_dict(config.get("feature_cache"))
  _unknown(cache, FEATURE_CACHE_KEYS, "config.feature_cache")
  if cache.get("enabled") and method != "losa":
    raise ValueError(f"config.feature_cache.enabled needs model.method='losa' "
                     f"(got {method!r}): other methods change the backbone's "
                     "features, so there is nothing fixed to cache.")
  bs = int(inp["batch_size"])
  if bs <= 0:
    raise ValueError(f"config.input.batch_size={bs} must be positive.")
  # Scale-out fields: their form only; sizes are checked against the devices
  # when the mesh is built.
  sharding_lib.check_mesh(config.get("mesh"))
  if config.get("sharding_strategy") is not None:
    sharding_lib.check_strategy(config.sharding_strategy)
  distributed_lib.validate(config.get("distributed"))


def with_defaults(config) -> ml_collections.ConfigDict:
  """A copy with every optional top-level field present."""
  c = ml_collections.ConfigDict(_as_dict(config))
  for k, v in TOP_LEVEL.items():
    if k not in c and v is not None:
      c[k] = v
  return c
