# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Train and eval steps, jit-compiled with explicit shardings over a mesh.

The train state is a plain dict {"params", "opt", "step", "rng"}. Only the
trainable half of the params (by the optimizer's mask) is differentiated; the
frozen half is closed over under `stop_gradient`, so XLA never builds the
backbone's backward pass for LoSA / linear probing. Nothing here reads the
frozen params' gradients: those are literal zeros handed to the frozen
`set_to_zero` group.
"""
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import optax

from losa_jax.parallel import sharding as sharding_lib
from losa_jax.utils import tree as tree_lib


def softmax_xent(logits, labels, *, label_smoothing: float = 0.0,
                 mask=None):
  """Mean cross-entropy. logits [B, C] float, labels [B] int, mask [B] 0/1."""
  num_classes = logits.shape[-1]
  onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  # A traced value (a population's per-member array) is always applied; 0
  # then leaves the one-hot unchanged to the bit.
  if isinstance(label_smoothing, jax.Array) or label_smoothing:
    onehot = onehot * (1 - label_smoothing) + label_smoothing / num_classes
  per_ex = -jnp.sum(onehot * jax.nn.log_softmax(
      logits.astype(jnp.float32)), axis=-1)
  if mask is None:
    return jnp.mean(per_ex), per_ex
  mask = mask.astype(jnp.float32)
  return jnp.sum(per_ex * mask) / jnp.maximum(jnp.sum(mask), 1.0), per_ex


def init_state(model, tx, rng, image_shape, *, params=None):
  """Builds {"params", "opt", "step", "rng"} (call under jit with
  out_shardings to create the state directly in its shardings)."""
  init_rng, state_rng = jax.random.split(rng)
  if params is None:
    params = model.init(init_rng, jnp.zeros(image_shape, jnp.float32))["params"]
  return {"params": params, "opt": tx.init(params),
          "step": jnp.zeros((), jnp.int32), "rng": state_rng}


def train_step_fn(model, tx, trainable_mask: Dict[str, bool], *,
                  label_smoothing: float = 0.0,
                  schedule_fns: Optional[Dict[str, Callable]] = None):
  """Returns step(state, batch) -> (state, metrics); pure, not yet jitted.

  batch: {"image": [B, H, W, 3] float, "label": [B] int, optional "_mask"}.
  metrics: loss, accuracy, grad_norm / param_norm over trainable params only,
  and the learning rate of each optimizer group.
  """

  def loss_fn(trainable, frozen, batch, rng):
    params = tree_lib.combine(trainable, frozen)
    logits, _ = model.apply({"params": params}, batch["image"], train=True,
                            rngs={"dropout": rng})
    loss, _ = softmax_xent(logits, batch["label"],
                           label_smoothing=label_smoothing,
                           mask=batch.get("_mask"))
    return loss, logits

  def step(state, batch):
    params = state["params"]
    trainable, frozen = tree_lib.partition(params, trainable_mask)
    rng = jax.random.fold_in(state["rng"], state["step"])
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        trainable, jax.lax.stop_gradient(frozen), batch, rng)
    # Frozen params get literal zeros: no backbone gradient is ever computed.
    full_grads = tree_lib.combine(grads, jax.tree.map(jnp.zeros_like, frozen))
    updates, opt = tx.update(full_grads, state["opt"], params)
    train_updates, _ = tree_lib.partition(updates, trainable_mask)
    new_trainable = optax.apply_updates(trainable, train_updates)
    new_params = tree_lib.combine(new_trainable, frozen)
    correct = jnp.argmax(logits, -1) == batch["label"]
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(correct.astype(jnp.float32)),
        "grad_norm": optax.tree.norm(grads),
        "param_norm": optax.tree.norm(new_trainable),
    }
    for name, fn in (schedule_fns or {}).items():
      metrics[f"lr/{name}"] = fn(state["step"])
    return {"params": new_params, "opt": opt, "step": state["step"] + 1,
            "rng": state["rng"]}, metrics

  return step


def eval_step_fn(model):
  """step(params, batch) -> per-batch sums {loss_sum, correct, count}."""

  def step(params, batch):
    logits, _ = model.apply({"params": params}, batch["image"], train=False)
    mask = batch.get("_mask")
    if mask is None:
      mask = jnp.ones(logits.shape[:1], jnp.float32)
    mask = mask.astype(jnp.float32)
    _, per_ex = softmax_xent(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {"loss_sum": jnp.sum(per_ex * mask),
            "correct": jnp.sum(correct * mask), "count": jnp.sum(mask)}

  return step


def predict_fn(model):
  """fn(params, images [B, H, W, 3]) -> probabilities [B, C]."""
  def fn(params, images):
    logits, _ = model.apply({"params": params}, images, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return fn


def jit_train_step(step, mesh, state_sharding, *, donate: bool = True):
  """jax.jit with the state's shardings and the batch over the data axes."""
  batch_sh = sharding_lib.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(state_sharding, batch_sh),
                 out_shardings=(state_sharding, sharding_lib.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def abstract_batch(batch_size: int, image_shape, *, with_mask=False) -> Dict[str, Any]:
  """ShapeDtypeStructs of a batch, for compile-only cost analysis."""
  b = {"image": jax.ShapeDtypeStruct((batch_size, *image_shape), jnp.float32),
       "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  if with_mask:
    b["_mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
  return b
