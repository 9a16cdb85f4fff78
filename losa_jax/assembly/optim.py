# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Optimizer with big_vision-style freezing rules over param names.

`config.schedule` is either one schedule dict (then the method decides what is
frozen, see `default_rules`) or a list of `(regex, schedule_dict | None)`:
first full match wins, every param must be covered, `None` freezes. Frozen
params go to an `optax.set_to_zero()` group of `optax.multi_transform`, so
they carry no optimizer state and get no weight decay. Gradient clipping is
masked to the trainable params: a global norm over all params would make XLA
compute the backbone's gradients (docs/method.md, section 3.2).
"""
import re
from typing import Any, Callable, List, Optional, Tuple

from absl import logging
import jax
import jax.numpy as jnp
import optax

from losa_jax.models import model as model_lib
from losa_jax.utils import tree as tree_lib

FROZEN = "frozen"
DECAY_TYPES = ("cosine", "linear", "constant", "rsqrt")
BASE_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum", "lion", "adafactor")


def default_rules(method: str, schedule: dict) -> List[Tuple[str, Any]]:
  """Freezing rules implied by a method: the backbone is frozen except what
  the method trains inside it (LoRA / adapter leaves, or all for `full`)."""
  if method not in model_lib.METHODS:
    raise ValueError(f"Unknown method {method!r}: use one of "
                     f"{model_lib.METHODS}.")
  trainable = model_lib.TRAINABLE_IN_BACKBONE.get(method)
  if trainable == r".*":
    return [(".*", schedule)]
  rules = []
  if trainable:
    rules.append((f"backbone/{trainable}", schedule))
  return rules + [("backbone/.*", None), (".*", schedule)]


def create_schedule(lr: float, total_steps: int, warmup_steps: int = 0,
                    warmup_percent: Optional[float] = None,
                    decay_type: str = "cosine", mult: float = 1.0,
                    linear_end: float = 0.0, timescale: int = 10_000,
                    ) -> Callable[[Any], Any]:
  """Linear warmup then cosine/linear/constant/rsqrt decay: step -> lr."""
  if decay_type not in DECAY_TYPES:
    raise ValueError(f"schedule decay_type={decay_type!r}: use one of "
                     f"{DECAY_TYPES}.")
  if warmup_percent is not None:
    warmup_steps = int(round(warmup_percent * total_steps))
  if warmup_steps > total_steps:
    raise ValueError(f"schedule warmup_steps={warmup_steps} exceeds "
                     f"total_steps={total_steps}.")
  peak = lr * mult

  def fn(step):
    step = jnp.asarray(step, jnp.float32)
    decay_steps = max(total_steps - warmup_steps, 1)
    frac = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
    if decay_type == "cosine":
      v = linear_end + (peak - linear_end) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    elif decay_type == "linear":
      v = peak + (linear_end - peak) * frac
    elif decay_type == "rsqrt":
      v = peak * jnp.sqrt(timescale / jnp.maximum(step - warmup_steps + timescale, 1.0))
    else:
      v = jnp.full((), peak)
    if warmup_steps:
      v = v * jnp.minimum(1.0, (step + 1) / warmup_steps)
    return v
  return fn


def _base(name: str, kw: dict) -> optax.GradientTransformation:
  """Update direction without lr or weight decay (those come after)."""
  kw = dict(kw)
  if name in ("adam", "adamw"):
    return optax.scale_by_adam(**kw)
  if name in ("sgd", "momentum"):
    momentum = kw.pop("momentum", 0.9 if name == "momentum" else None)
    if kw:
      raise ValueError(f"optax options {sorted(kw)} not understood for {name}.")
    return optax.trace(decay=momentum, nesterov=False) if momentum else (
        optax.identity())
  if name == "lion":
    return optax.scale_by_lion(**kw)
  if name == "adafactor":
    return optax.scale_by_factored_rms(**kw)
  raise ValueError(f"Unknown optax_name {name!r}: use one of {BASE_OPTIMIZERS}.")


def make(config, params, total_steps: int, hparams=None, *,
         log_rules: bool = True):
  """Builds the optimizer for a param tree (arrays or ShapeDtypeStructs).

  Returns (tx, schedule_fns {label: step->lr}, trainable_mask {name: bool}).
  Reads config.{optax_name, optax, lr, wd, wd_mults, lr_mults,
  grad_clip_norm, schedule, model.method}.

  hparams: optional {"lr", "wd", "grad_clip_norm"} values (scalars, possibly
  traced: a population vmaps one optimizer over members' values) that
  replace the config's. The config still decides the structure: weight
  decay exists if config.wd is non-zero, clipping if config.grad_clip_norm
  is set; a member's wd of 0 or clip norm of inf then changes nothing, to
  the bit, so the optimizer state has one structure for every member.
  """
  hparams = dict(hparams or {})
  sched = config.get("schedule", {})
  rules = ([(r, None if s is None else dict(s)) for r, s in sched]
           if isinstance(sched, (list, tuple))
           else default_rules(config.model.method, dict(sched)))
  assignment, matched = tree_lib.match_rules(params, rules, "config.schedule")
  for i, (pattern, sched) in enumerate(rules if log_rules else ()):
    what = "frozen" if sched is None else f"trained ({sched})"
    if matched[i]:
      logging.info("Rule %r (%s) matched %d params, e.g. %s", pattern, what,
                   len(matched[i]), matched[i][:3])
    else:
      logging.warning("Rule %r (%s) matched no param.", pattern, what)
  label_of = {n: FROZEN if rules[i][1] is None else f"rule{i}"
              for n, i in assignment.items()}
  mask = {n: l != FROZEN for n, l in label_of.items()}
  if not any(mask.values()):
    raise ValueError("config.schedule freezes every param: nothing to train.")

  lr_mults = list(config.get("lr_mults", []) or [])
  wd_mults = list(config.get("wd_mults", [(".*/kernel$", 1.0)]) or [])
  tree_lib.check_patterns([r for r, _ in lr_mults], "config.lr_mults")
  tree_lib.check_patterns([r for r, _ in wd_mults], "config.wd_mults")
  for r, m in lr_mults:
    if m <= 0:
      raise ValueError(f"config.lr_mults rule {r!r} has mult {m}: to freeze, "
                       "use a None schedule rule instead.")

  def first(name, rules_, default):
    for r, v in rules_:
      if re.fullmatch(r, name):
        return v
    return default

  # One optimizer group per (schedule rule, lr mult) so mults stay exact.
  labels, sched_fns = {}, {}
  name = config.get("optax_name", "adamw")
  wd = float(config.get("wd", 0.0))
  lr = hparams.get("lr", config.lr)
  wd_value = hparams.get("wd", wd)
  for n, label in label_of.items():
    if label == FROZEN:
      labels[n] = FROZEN
      continue
    mult = first(n, lr_mults, 1.0)
    key = f"{label}_x{mult:g}" if mult != 1.0 else label
    labels[n] = key
    if key not in sched_fns:
      fn = create_schedule(lr, total_steps, **rules[assignment[n]][1])
      sched_fns[key] = (lambda f, m: (lambda s: f(s) * m))(fn, mult)

  transforms = {FROZEN: optax.set_to_zero()}
  for key in sched_fns:
    parts = [_base(name, config.get("optax", {}) or {})]
    if wd:
      parts.append(_decay(wd_value, lambda n: first(n, wd_mults, 0.0)))
    parts += [optax.scale_by_schedule(sched_fns[key]), optax.scale(-1.0)]
    transforms[key] = optax.chain(*parts)

  label_tree = tree_lib.unflatten(labels)
  chain = []
  if config.get("grad_clip_norm"):
    mask_tree = tree_lib.unflatten(mask)
    chain.append(optax.masked(optax.clip_by_global_norm(
        hparams.get("grad_clip_norm", config.grad_clip_norm)), mask_tree))
  chain.append(optax.multi_transform(transforms, label_tree))
  return optax.chain(*chain), sched_fns, mask


def _decay(wd: float, mult_of: Callable[[str], float]
           ) -> optax.GradientTransformation:
  """Decoupled weight decay: update += wd * mult(name) * param.

  Names come from the tree paths, so this also works inside
  `multi_transform`, whose groups see the other params as empty nodes.
  """
  def update(updates, state, params):
    def one(path, u, p):
      m = mult_of("/".join(str(getattr(k, "key", k)) for k in path))
      return u + wd * m * p if m else u
    return jax.tree_util.tree_map_with_path(one, updates, params), state
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)
