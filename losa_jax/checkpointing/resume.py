# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""What a resume must agree on: the config fingerprint, the hyper-parameters
a resume may change, and the optimizer state's layout.

The trainers record these in every step's metadata and check them (with
`check_meta`) before any array is read.
"""
import json
from typing import Any, Dict, List

from absl import logging
import jax
import jax.numpy as jnp

from losa_jax.checkpointing.integrity import CheckpointError

# Config keys whose change makes an old checkpoint meaningless for this run.
FINGERPRINT_KEYS = ("model", "num_classes", "image_size", "optax_name",
                    "schedule", "seed", "data_seed", "lr_mults",
                    "population")
# Config keys recorded in each checkpoint whose change a resume accepts (the
# optimizer state does not depend on their values); a change is logged.
HPARAM_KEYS = ("lr", "wd", "wd_mults", "grad_clip_norm", "optax")


def _plain(config, keys) -> Dict[str, Any]:
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  return json.loads(json.dumps({k: d.get(k) for k in keys}, sort_keys=True,
                               default=str))


def config_fingerprint(config) -> Dict[str, Any]:
  """The parts of the config a resume must agree on, as plain JSON."""
  return _plain(config, FINGERPRINT_KEYS)


def config_hparams(config) -> Dict[str, Any]:
  """The hyper-parameters a resume may change (HPARAM_KEYS), as plain JSON."""
  return _plain(config, HPARAM_KEYS)


def _dotted(d, prefix=""):
  """{"model": {"losa": {"rank": 4}}} -> {"model.losa.rank": 4}."""
  out = {}
  for k, v in (d or {}).items():
    if isinstance(v, dict) and v:
      out.update(_dotted(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _diff(old: dict, new: dict) -> str:
  old, new = _dotted(old), _dotted(new)
  return "; ".join(f"{k}: was {old.get(k)!r}, now {new.get(k)!r}"
                   for k in sorted(set(old) | set(new))
                   if old.get(k) != new.get(k))


def opt_layout(opt) -> List[str]:
  """Every array of an optimizer state, "path: dtype[shape]", in leaf order.

  The path leaves out sequence positions (`optax.chain`'s), so transforms
  without state (weight decay, clipping) do not change the layout; a change
  of what the state holds (another optimizer, `config.optax`'s `mu_dtype`,
  momentum on or off) does.
  """
  out = []
  for path, x in jax.tree_util.tree_flatten_with_path(opt)[0]:
    keys = tuple(k for k in path
                 if not isinstance(k, jax.tree_util.SequenceKey))
    shape = ",".join(str(d) for d in x.shape)
    out.append(f"{jax.tree_util.keystr(keys)}: {jnp.dtype(x.dtype).name}"
               f"[{shape}]")
  return out


# The config keys that decide the optimizer state's structure.
OPTIMIZER_KEYS = ("optax_name", "optax", "schedule", "lr_mults", "wd",
                  "grad_clip_norm")


def check_opt_layout(meta: dict, layout: List[str], hparams: dict,
                     directory: str):
  """Refuses, by name, an optimizer change the stored state cannot hold.

  Args:
    meta: a step's metadata (its `opt_layout`, if recorded, and `hparams`).
    layout: `opt_layout` of this run's optimizer state.
    hparams: `config_hparams` of this run, to name what changed.
    directory: the checkpoints folder, for the message.
  """
  old = meta.get("opt_layout")
  if old is None or old == layout:
    return
  i = next((i for i, (a, b) in enumerate(zip(old, layout)) if a != b),
           min(len(old), len(layout)))
  first = (f"array {i}: saved {old[i] if i < len(old) else 'none'}, now "
           f"{layout[i] if i < len(layout) else 'none'}")
  pick = lambda d: {k: v for k, v in (d or {}).items()
                    if k in OPTIMIZER_KEYS}
  changed = _diff({"config": pick(meta.get("hparams"))},
                  {"config": pick(hparams)}) if "hparams" in meta else ""
  keys = ", ".join(f"config.{k}" for k in OPTIMIZER_KEYS)
  raise CheckpointError(
      f"The checkpoints in {directory} hold an optimizer state this run's "
      f"optimizer cannot take ({len(old)} arrays saved, {len(layout)} now; "
      f"{first}). Changed: {changed or 'one of ' + keys}. Resume with the "
      "original optimizer config or use a new --workdir.")


def check_meta(meta: dict, expected: dict, directory: str):
  """Refuses a resume with another backbone file or an incompatible config.

  With `expected["opt_layout"]`, also an optimizer state the stored one
  cannot fill (`check_opt_layout`). Other changed `hparams` (HPARAM_KEYS,
  when both sides record them) are allowed and logged.
  """
  old_bb, new_bb = meta.get("backbone", {}), expected.get("backbone", {})
  if old_bb.get("sha256") != new_bb.get("sha256"):
    raise CheckpointError(
        f"The checkpoints in {directory} were trained on backbone "
        f"{old_bb.get('path')!r} (sha256 {str(old_bb.get('sha256'))[:12]}), "
        f"but this run loads {new_bb.get('path')!r} (sha256 "
        f"{str(new_bb.get('sha256'))[:12]}). Use the original model_init or a "
        "new --workdir.")
  detail = _diff(meta.get("config", {}), expected.get("config", {}))
  if detail:
    raise CheckpointError(
        f"The checkpoints in {directory} come from an incompatible config "
        f"({detail}). Resume with the original config or use a new --workdir.")
  if "opt_layout" in expected:
    check_opt_layout(meta, expected["opt_layout"],
                     expected.get("hparams") or {}, directory)
  if "hparams" in meta and "hparams" in expected:
    detail = _diff({"config": meta["hparams"]},
                   {"config": expected["hparams"]})
    if detail:
      logging.warning("Resuming from step %s in %s with changed "
                      "hyper-parameters (%s).", meta.get("step"), directory,
                      detail)
  logging.info("Checkpoint metadata matches this run.")
