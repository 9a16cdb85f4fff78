# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""From a config to a model, an optimizer and jitted, sharded steps.

Shared by the trainer, the benchmarks and the tests, so all three compile
exactly the same step. Shapes first: params and optimizer state are built
with `jax.eval_shape`, shardings are derived from names, and the real state
is created directly into its shardings by `jax.jit(..., out_shardings=...)`.
"""
import dataclasses
import os
from typing import Any, Callable, Dict, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp

from losa_jax.assembly import optim
from losa_jax.assembly import steps
from losa_jax.checkpointing import integrity
from losa_jax.config import schema as config_lib
from losa_jax.models import model as model_lib
from losa_jax.models import porting
from losa_jax.models import vit
from losa_jax.models import vivit
from losa_jax.parallel import distributed
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.utils import tree as tree_lib


def model_from_config(config) -> model_lib.Model:
  """config.num_classes + config.model.{method, backbone} and the methods'
  options (losa, lora, adapter, st_adapter, lst, last)."""
  m = config.model
  options = {k: dict(m.get(k, {}))
             for k in ("losa", "lora", "adapter", "st_adapter", "lst", "last")}
  return model_lib.Model(
      num_classes=config.num_classes, method=m.get("method", "losa"),
      backbone=dict(m.get("backbone", {})), **options)


@dataclasses.dataclass
class Built:
  model: Any
  tx: Any
  mask: Dict[str, bool]
  schedule_fns: Dict[str, Callable]
  mesh: Any
  state_shape: Any
  state_sharding: Any
  image_shape: Tuple[int, ...]
  train_step: Callable       # jitted (state, batch) -> (state, metrics)
  eval_step: Callable        # jitted (params, batch) -> sums
  init: Callable             # jitted rng -> state, in its shardings
  # jitted (rng, {flat param name: array}) -> init(rng) with those params
  # replaced; the random values it replaces are dead code to XLA.
  init_with: Optional[Callable] = None

  def num_trainable(self) -> int:
    flat = tree_lib.flatten(self.state_shape["params"])
    return sum(int(v.size) for n, v in flat.items() if self.mask[n])

  def init_loaded(self, rng, config):
    """The trainer's initial state: init(rng), backbone from config.model_init.

    Equal, bit for bit and in its shardings, to `init(rng)` with its params
    replaced by `load_backbone` and `device_put` back, but only the params
    the checkpoint does not replace (side network, new head, LoRA / adapter
    leaves, dont_load'ed ones) are initialised, and nothing goes through
    the host. Without a model_init it is init(rng). A side network that
    starts from the backbone's weights (LST's init="prune") is made here,
    from the loaded ones (`Model.init_from_backbone`).
    """
    params_shape = self.state_shape["params"]
    loaded = tree_lib.flatten(self.model.init_from_backbone(
        load_backbone(params_shape, config)))
    # load_backbone keeps the init leaves it does not replace: here, the
    # ShapeDtypeStructs of the leaves init_with must still initialise.
    overrides = {n: v for n, v in loaded.items()
                 if not isinstance(v, jax.ShapeDtypeStruct)}
    if not overrides:
      return self.init(rng)
    shardings = tree_lib.flatten(self.state_sharding["params"])
    # device_put, as the trainer places a loaded state: on several hosts each
    # one holds the same host copy and keeps its shards.
    overrides = jax.device_put(overrides, {n: shardings[n] for n in overrides})
    return self.init_with(rng, overrides)


FROZEN_PARAM_DTYPES = ("float32", "bfloat16", "float16")


def frozen_param_dtype(config):
  """config.model_load.param_dtype (storage dtype of FROZEN params) or None."""
  name = (config.get("model_load") or {}).get("param_dtype")
  if name in (None, "", "float32"):
    return None
  if name not in FROZEN_PARAM_DTYPES:
    raise ValueError(f"config.model_load.param_dtype={name!r}: use one of "
                     f"{FROZEN_PARAM_DTYPES}.")
  return jnp.dtype(name)


def cast_floats(tree, dtype):
  """Every float leaf of `tree` (arrays, or ShapeDtypeStructs for shapes) in
  `dtype`; other leaves, and everything when `dtype` is None, as they are."""
  if dtype is None:
    return tree

  def cast(x):
    if not jnp.issubdtype(x.dtype, jnp.floating):
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype)
    return jnp.asarray(x, dtype)
  return jax.tree.map(cast, tree)


def cast_frozen(params, mask: Dict[str, bool], dtype):
  """Frozen float leaves -> `dtype`; trainable leaves keep their dtype.

  Storing the frozen backbone in bf16 halves its memory (it is never
  updated, so no precision accumulates); the side net and head stay f32.
  """
  return tree_lib.map_with_names(
      lambda n, v: v if mask[n] else cast_floats(v, dtype), params)


def mesh_and_state_sharding(config, state_shape, mesh=None):
  """(mesh, state shardings): config.mesh, and config.sharding_strategy."""
  if mesh is None:
    mesh = sharding_lib.make_mesh(config.get("mesh", [("data", -1)]))
  return mesh, sharding_lib.infer_state_sharding(
      state_shape, mesh, config.get("sharding_strategy") or None)


def build(config, *, total_steps: int, mesh=None, donate: bool = True) -> Built:
  """Everything needed to train `config`; nothing is materialised.

  With config.model_load.param_dtype="bfloat16" the frozen params of the
  state are stored in bf16 (init, state_shape and the steps all see bf16).
  """
  model = model_from_config(config)
  image_shape = config_lib.input_shape(config)
  params_shape = jax.eval_shape(
      lambda r: model.init(r, jnp.zeros((1, *image_shape), jnp.float32)),
      jax.random.key(0))["params"]
  tx, schedule_fns, mask = optim.make(config, params_shape, total_steps)
  param_dtype = frozen_param_dtype(config)

  def init_fn(rng):
    state = steps.init_state(model, tx, rng, (1, *image_shape))
    # Cast after tx.init: frozen leaves carry no optimizer state.
    state["params"] = cast_frozen(state["params"], mask, param_dtype)
    return state

  state_shape = jax.eval_shape(init_fn, jax.random.key(0))
  mesh, state_sharding = mesh_and_state_sharding(config, state_shape, mesh)
  step = steps.train_step_fn(model, tx, mask,
                             label_smoothing=config.get("label_smoothing", 0.0),
                             schedule_fns=schedule_fns)
  train_step = steps.jit_train_step(step, mesh, state_sharding, donate=donate)
  eval_step = jax.jit(
      steps.eval_step_fn(model),
      in_shardings=(state_sharding["params"], sharding_lib.batch_sharding(mesh)),
      out_shardings=sharding_lib.replicated(mesh))
  init = jax.jit(init_fn, out_shardings=state_sharding)

  def init_with_fn(rng, overrides):
    # The same program as init_fn, then params replaced; tx.init still sees
    # the random values as in `init` (Adam's zeros do not read them, so XLA
    # drops their computation).
    state = init_fn(rng)
    flat = tree_lib.flatten(state["params"])
    flat.update(overrides)
    state["params"] = tree_lib.unflatten(flat)
    return state

  init_with = jax.jit(init_with_fn, out_shardings=state_sharding)
  return Built(model, tx, mask, schedule_fns, mesh, state_shape,
               state_sharding, image_shape, train_step, eval_step, init,
               init_with)


def backbone_forward(config) -> Tuple[Callable, Any]:
  """The frozen backbone alone, in inference mode: (fn, params_shape).

  fn(params, images [B, H, W, 3]) -> pre-logits [B, D]; the baseline that
  LoSA's train step is compared with. params_shape follows
  config.model_load.param_dtype (all backbone params are frozen here).
  """
  model = model_from_config(config)
  bb = vit.Model(None, **model.backbone_kwargs())
  shape = jax.eval_shape(
      lambda r: bb.init(r, jnp.zeros((1, *config_lib.input_shape(config)),
                                     jnp.float32)),
      jax.random.key(0))["params"]
  shape = cast_floats(shape, frozen_param_dtype(config))
  return (lambda p, x: bb.apply({"params": p}, x, train=False)[0]), shape


# --- the frozen backbone ------------------------------------------------------


def backbone_record(config) -> Dict[str, Optional[str]]:
  """{"path", "sha256"} of config.model_init (None, None when it is empty).

  Checkpoints store it, and a resume or a `predict` refuses another file.
  """
  path = config.get("model_init") or ""
  if not path:
    return {"path": None, "sha256": None}
  file_path = path.split(":")[0] if ":" in os.path.basename(path) else path
  if not os.path.exists(file_path):
    raise FileNotFoundError(f"config.model_init: no checkpoint file at "
                            f"{file_path!r}.")
  return {"path": path, "sha256": integrity.file_sha256(file_path)}


def load_backbone(params, config):
  """Replaces the initial backbone (and head, if it fits) by model_init's."""
  if not config.get("model_init"):
    logging.warning("config.model_init is empty: the backbone is random.")
    return params
  backbone = dict(config.model.get("backbone", {}))
  model_load = dict(config.get("model_load") or {})
  source = config.model_init
  if model_load.get("inflate"):
    # An image checkpoint for a video backbone, inflated in memory at load
    # time (nothing is written; the checkpoint's sha256 stays the record).
    if backbone.get("kind") != "vivit":
      raise ValueError("config.model_load.inflate needs "
                       "config.model.backbone.kind='vivit' (it inflates an "
                       "image checkpoint into a video backbone).")
    source = vivit.inflate_from_image(
        config.model_init, backbone, model_load["inflate"],
        clip_shape=tuple(config.image_size))
  # fetch, not device_get: an FSDP-sharded backbone spans several hosts.
  return porting.load_into_model(
      distributed.fetch(params), source, backbone,
      dont_load=tuple(model_load.get("dont_load", ())))
