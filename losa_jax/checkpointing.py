# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Orbax checkpoints of the trainable state; the backbone is referenced.

A checkpoint holds the trainable params, the optimizer state, the step, the
rng and the data iterator's position, plus JSON metadata naming the backbone
file by path and sha256 and fingerprinting the config. The frozen backbone is
never copied: on resume it is re-read from `model_init` and its hash must
match. Orbax writes each step into a temporary folder and renames it when
complete, so a killed run never leaves a half-written step that looks valid.
This module is the only one that imports Orbax (a V1 move is one file).
"""
import hashlib
import json
import os
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

from losa_jax import tree as tree_lib

# Config keys whose change makes an old checkpoint meaningless for this run.
FINGERPRINT_KEYS = ("model", "num_classes", "image_size", "optax_name",
                    "schedule", "seed", "lr_mults")


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used for this run (the message says why)."""


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def config_fingerprint(config) -> Dict[str, Any]:
  """The parts of the config a resume must agree on, as plain JSON."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps({k: d.get(k) for k in FINGERPRINT_KEYS},
                               sort_keys=True, default=str))


class Checkpointer:
  """Thin wrapper of `ocp.CheckpointManager` for {trainable state, meta}."""

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self):
    return list(self._mngr.all_steps())

  def save(self, step: int, state: Dict[str, Any], meta: Dict[str, Any],
           *, force: bool = False) -> bool:
    """Saves {"params" (trainable only), "opt", "step", "rng"} + meta."""
    return self._mngr.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave(meta)), force=force)

  def read_meta(self, step: int) -> dict:
    """The JSON metadata of a step, read without touching the arrays."""
    path = os.path.join(self.directory, str(step))
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"Cannot read the metadata of checkpoint step {step} at {path}: "
          f"{type(e).__name__}: {e}. Move {path} out of the way to resume "
          "from an earlier step.") from e

  def restore(self, step: int, abstract_state) -> Tuple[Dict[str, Any], dict]:
    """Restores into the shapes/shardings of `abstract_state`."""
    path = os.path.join(self.directory, str(step))
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      others = [s for s in self.all_steps() if s != step]
      raise CheckpointError(
          f"Cannot read checkpoint step {step} at {path}: {type(e).__name__}:"
          f" {e}. The other checkpoints ({others or 'none'}) are untouched; "
          f"to resume from an earlier one, move {path} out of the way.") from e
    return restored["state"], restored["meta"]

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.wait_until_finished()
    self._mngr.close()


def trainable_state(state: Dict[str, Any], mask: Dict[str, bool]):
  """The part of the train state worth saving (no frozen backbone)."""
  trainable, _ = tree_lib.partition(state["params"], mask)
  return {"params": trainable, "opt": state["opt"], "step": state["step"],
          "rng": jax.random.key_data(state["rng"])}


def abstract_trainable_state(state: Dict[str, Any], mask: Dict[str, bool]):
  """ShapeDtypeStructs (with shardings) to restore `trainable_state` into."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=getattr(x, "sharding", None)),
      trainable_state(state, mask))


def merge_restored(state: Dict[str, Any], restored: Dict[str, Any],
                   mask: Dict[str, bool]):
  """Puts restored trainable leaves back beside the (re-loaded) frozen ones."""
  _, frozen = tree_lib.partition(state["params"], mask)
  return {"params": tree_lib.combine(restored["params"], frozen),
          "opt": restored["opt"], "step": restored["step"],
          "rng": jax.random.wrap_key_data(restored["rng"])}


def _dotted(d, prefix=""):
  """{"model": {"losa": {"rank": 4}}} -> {"model.losa.rank": 4}."""
  out = {}
  for k, v in (d or {}).items():
    if isinstance(v, dict) and v:
      out.update(_dotted(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def check_meta(meta: dict, expected: dict, directory: str):
  """Refuses a resume with another backbone file or an incompatible config."""
  old_bb, new_bb = meta.get("backbone", {}), expected.get("backbone", {})
  if old_bb.get("sha256") != new_bb.get("sha256"):
    raise CheckpointError(
        f"The checkpoints in {directory} were trained on backbone "
        f"{old_bb.get('path')!r} (sha256 {str(old_bb.get('sha256'))[:12]}), "
        f"but this run loads {new_bb.get('path')!r} (sha256 "
        f"{str(new_bb.get('sha256'))[:12]}). Use the original model_init or a "
        "new --workdir.")
  old_cfg = _dotted(meta.get("config", {}))
  new_cfg = _dotted(expected.get("config", {}))
  diff = sorted(k for k in set(old_cfg) | set(new_cfg)
                if old_cfg.get(k) != new_cfg.get(k))
  if diff:
    detail = "; ".join(f"{k}: was {old_cfg.get(k)!r}, now {new_cfg.get(k)!r}"
                       for k in diff)
    raise CheckpointError(
        f"The checkpoints in {directory} come from an incompatible config "
        f"({detail}). Resume with the original config or use a new --workdir.")
  logging.info("Checkpoint metadata matches this run.")
