# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Checkpoint integrity: each step's manifest, its check, and damaged steps.

Once a step is final (Orbax saves asynchronously) and its loss is known to
be finite (`Checkpointer.confirm`), a thread of process 0 writes
`<step>/losa_manifest.json` (`write_manifest`): the size and sha256 of
every other file of the step. `Checkpointer.restore` checks it (`verify`)
before reading any array; `restore_newest` falls back over damaged steps
with a warning and moves them to `<workdir>/damaged_checkpoints/`
(`set_aside`), so damaged values are never trained on and the evidence is
kept.

A step without a manifest (killed before it was checked, or a deleted
manifest) is used with a warning: Orbax's atomic rename guarantees it is
complete, but bit-level damage goes undetected, and an Orbax read error on
it is treated as damage.
"""
import hashlib
import os
import time

from absl import logging

from losa_jax.utils import io as io_lib

MANIFEST = "losa_manifest.json"


class CheckpointError(RuntimeError):
  """A checkpoint cannot be used for this run (the message says why)."""


class DamagedCheckpointError(CheckpointError):
  """A step's files are missing, changed or unreadable (others may be fine)."""


def file_sha256(path: str, chunk: int = 1 << 20) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(chunk), b""):
      h.update(block)
  return h.hexdigest()


def cause(e: BaseException, limit: int = 300) -> str:
  """The innermost error's first line: Orbax wraps TensorStore errors in
  messages with kilobytes of spec dump."""
  seen = set()
  while id(e) not in seen and (e.__cause__ or e.__context__) is not None:
    seen.add(id(e))
    e = e.__cause__ or e.__context__
  text = (str(e).strip().splitlines() or [""])[0]
  text = text if len(text) <= limit else text[:limit] + " ..."
  return f"{type(e).__name__}: {text}"


def unreadable(step: int, root: str, e: BaseException,
               what: str = "") -> DamagedCheckpointError:
  """The error for step `step` at `root` that Orbax failed to read."""
  return DamagedCheckpointError(
      f"Cannot read {what}checkpoint step {step} at {root}: {cause(e)}. "
      f"Move {root} out of the way to resume from an earlier step.")


def write_manifest(root: str, step: int) -> None:
  """Writes `<root>/MANIFEST`: the size and sha256 of the step's other files.

  Args:
    root: the step's folder, final (Orbax has renamed it).
    step: the step number, recorded in the manifest.
  """
  files = {}
  for dirpath, _, names in os.walk(root):
    for name in names:
      path = os.path.join(dirpath, name)
      if MANIFEST not in name:        # itself, or its temporary file
        files[os.path.relpath(path, root)] = {
            "size": os.path.getsize(path), "sha256": file_sha256(path)}
  io_lib.write_json(os.path.join(root, MANIFEST),
                    {"step": step, "files": files}, indent=1, sort_keys=True)


def verify(root: str, step: int) -> bool:
  """Checks a step's files against its manifest.

  Returns:
    True if verified, False if the step has no manifest (accepted, with a
    warning: see the module docstring).

  Raises:
    DamagedCheckpointError: naming the step's path and the bad file.
  """
  manifest = os.path.join(root, MANIFEST)
  if not os.path.exists(manifest):
    logging.warning(
        "Checkpoint step %d at %s has no %s: its files cannot be checked "
        "and nothing records that its loss was finite; it is used "
        "unverified. (A run writes the manifest once a step is on disk "
        "and its loss is checked: a kill before that, an older version or "
        "a deleted manifest leaves none.)", step, root, MANIFEST)
    return False
  try:
    files = io_lib.read_json(manifest)["files"]
  except (OSError, ValueError, KeyError) as e:
    raise DamagedCheckpointError(
        f"Checkpoint step {step} at {root} is damaged: its {MANIFEST} is "
        f"unreadable ({cause(e)}).") from e
  for rel, want in sorted(files.items()):
    path = os.path.join(root, rel)
    if not os.path.exists(path):
      why = "is missing"
    elif os.path.getsize(path) != want["size"]:
      why = f"has {os.path.getsize(path)} bytes, {want['size']} when saved"
    elif file_sha256(path) != want["sha256"]:
      why = "has changed since it was saved (sha256 mismatch)"
    else:
      continue
    raise DamagedCheckpointError(
        f"Checkpoint step {step} at {root} is damaged: file {rel} {why}.")
  return True


def set_aside(directory: str, step: int, *, move: bool) -> str:
  """Where damaged step `step` of `directory` goes (moved there if `move`).

  `<workdir>/damaged_checkpoints/<step>.<time>`: beside the checkpoints
  folder, so that Orbax no longer sees the step and the rerun can save it
  again. Only process 0 moves it (`move`); every process gets the path.
  """
  dest = os.path.join(os.path.dirname(directory), "damaged_checkpoints",
                      f"{step}.{time.strftime('%Y%m%d-%H%M%S')}")
  if move:
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(os.path.join(directory, str(step)), dest)
  return dest
