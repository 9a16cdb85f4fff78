# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Orbax checkpoints of the trainable state; the backbone is referenced.

A checkpoint holds the trainable params, the optimizer state, the step and
the rng, plus JSON metadata naming the backbone file by path and sha256 and
fingerprinting the config (`resume`): the frozen backbone is never copied.
Orbax writes each step into a temporary folder and renames it when
complete. This module is the only one that imports Orbax.

Each step, once on disk and its loss checked, gets a manifest (`integrity`);
a discarded step (its loss was not finite) is deleted, and old steps go
beyond `max_to_keep` checked ones: a step whose check is still due never
pushes out an older one.

The optimizer state is stored as its list of leaves (meta `layout` = 2) and
restored into this run's tree structure, so hyper-parameters that only add
or remove leafless optax states (`config.wd` 0 <-> non-zero,
`config.grad_clip_norm` unset <-> set) resume; `resume.check_opt_layout`
refuses the changes it cannot hold. Steps of the older nested layout (no
`layout` key) are restored as saved.
"""
import os
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

from losa_jax.checkpointing import integrity
from losa_jax.checkpointing import resume
from losa_jax.utils import tree as tree_lib

WATCH_S = 0.05          # how often the manifest thread asks Orbax
LAYOUT = 2              # meta["layout"]: the opt state is a list of leaves


class CheckpointNotFoundError(integrity.CheckpointError, FileNotFoundError):
  """A read-only Checkpointer was pointed at a folder that does not exist."""


class Checkpointer:
  """Thin wrapper of `ocp.CheckpointManager` for {trainable state, meta}.

  Args:
    directory: the checkpoints folder (`<workdir>/checkpoints`).
    max_to_keep: newest steps kept; older ones are deleted after a save.
    async_save: save in a background thread (`wait`/`close` to finish).
    read_only: never write (no folder created, no save, no manifest, damaged
      steps left in place); the folder must exist.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3,
               async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointNotFoundError(
          f"No checkpoint folder {self.directory}: check --workdir (it must "
          "be the workdir of a training run).")
    self.max_to_keep = max_to_keep
    self._pending: List[int] = []   # saved steps still without a manifest
    self._unchecked = set()         # saved steps awaiting confirm / discard
    self._lock = threading.Lock()   # _pending, with the manifest thread
    self._watcher: Optional[threading.Thread] = None
    self._mngr = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            # Old steps are deleted here (_prune), not by Orbax: a step whose
            # loss is not yet checked must not push out the last good one.
            max_to_keep=None,
            save_interval_steps=0 if read_only else 1,
            create=not read_only, read_only=read_only,
            enable_async_checkpointing=async_save and not read_only),
        item_names=("state", "meta"))

  def latest_step(self) -> Optional[int]:
    return self._mngr.latest_step()

  def all_steps(self) -> List[int]:
    return sorted(self._mngr.all_steps())

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # --- saving -----------------------------------------------------------------

  def save(self, step: int, state: Dict[str, Any], meta: Dict[str, Any],
           *, force: bool = False, checked: bool = True) -> bool:
    """Saves {"params" (trainable only), "opt", "step", "rng"} + meta.

    Args:
      step: the step number (the folder name).
      state: arrays; `state["opt"]` (if any) may be any optax state tree.
      meta: JSON-able metadata (the trainer adds loss / max_abs_param).
      force: save even if Orbax's policy would skip this step.
      checked: whether the step's loss is known to be finite. If not, the
        step gets no manifest and pushes out no older step until
        `confirm(step)`; `discard(step)` deletes it.

    Returns:
      Whether a save was started.
    """
    if self.read_only:
      raise integrity.CheckpointError(
          f"Checkpointer({self.directory}) is read-only: cannot save step "
          f"{step}.")
    # Orbax itself waits for the previous save here; meanwhile the finished
    # steps get their manifests and old steps go.
    self.wait()
    state = dict(state)
    if "opt" in state:
      meta = {"opt_layout": resume.opt_layout(state["opt"]), **meta}
      state["opt"] = jax.tree.leaves(state["opt"])
    started = self._mngr.save(
        step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            meta=ocp.args.JsonSave({**meta, "layout": LAYOUT})), force=force)
    if started:
      # After Orbax's save has begun: the manifest thread then never takes
      # this step for a finished one (see _watch_loop).
      with self._lock:
        if not checked:
          self._unchecked.add(step)
        self._pending.append(step)
      self._watch()
    return started

  def confirm(self, step: int):
    """The loss of saved step `step` is finite: it gets its manifest as soon
    as Orbax has finished writing it."""
    with self._lock:
      self._unchecked.discard(step)
    self._watch()

  def discard(self, step: int):
    """Deletes saved step `step`, whose loss turned out not to be finite.

    Every process calls it at the same step (the loss is replicated).
    """
    self._mngr.wait_until_finished()
    with self._lock:
      self._unchecked.discard(step)
      self._pending = [s for s in self._pending if s != step]
    if step in self.all_steps():
      self._mngr.delete(step)

  def _ready(self) -> List[int]:
    """Saved steps without a manifest whose loss is checked (under _lock)."""
    return [s for s in self._pending if s not in self._unchecked]

  def _watch(self):
    """Starts the manifest thread (process 0) if a checked step awaits its
    manifest."""
    if jax.process_index() != 0 or self.read_only:
      return
    with self._lock:
      if not self._ready() or self._watcher is not None:
        return
      self._watcher = threading.Thread(target=self._watch_loop, daemon=True,
                                       name="losa_manifests")
      self._watcher.start()

  def _watch_loop(self):
    """Writes the ready manifests once no save is in progress. A step joins
    _pending (under the lock) only after its save has begun, so with no save
    in progress every pending step is final. Asking Orbax needs no
    collective, so this thread never meets the main thread's."""
    while True:
      with self._lock:
        if self._ready() and not self._mngr.is_saving_in_progress():
          self._write_ready_locked()
        if not self._ready():
          self._watcher = None      # _watch starts another when needed
          return
      time.sleep(WATCH_S)

  def _write_ready_locked(self):
    """Writes the manifests of the checked steps (holding _lock, with every
    save finished)."""
    ready = self._ready()
    self._pending = [s for s in self._pending if s not in ready]
    if jax.process_index() != 0:
      return
    for step in ready:
      if os.path.isdir(self.step_dir(step)):     # else deleted meanwhile
        integrity.write_manifest(self.step_dir(step), step)

  def _prune(self):
    """Deletes the oldest checked steps beyond max_to_keep. Called by every
    process at the same point (Orbax's delete syncs them), with no save in
    flight (its finalisation syncs too)."""
    if self.max_to_keep is None or self.read_only:
      return
    checked = [s for s in self.all_steps() if s not in self._unchecked]
    for step in checked[:max(len(checked) - self.max_to_keep, 0)]:
      self._mngr.delete(step)

  def verify(self, step: int) -> bool:
    """`integrity.verify` of a step: False if it has no manifest."""
    return integrity.verify(self.step_dir(step), step)

  # --- reading ----------------------------------------------------------------

  def read_meta(self, step: int) -> dict:
    """The JSON metadata of a step, read without touching the arrays."""
    path = self.step_dir(step)
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(
          meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # pylint: disable=broad-except
      raise integrity.unreadable(step, path, e, "the metadata of ") from e

  def restore(self, step: int, abstract_state,
              check: Optional[Callable[[dict], None]] = None,
              ) -> Tuple[Dict[str, Any], dict]:
    """Restores a step into the shapes/shardings of `abstract_state`.

    Args:
      step: the step to read.
      abstract_state: `abstract_trainable_state(...)` of this run, or a
        function of the step's (verified) metadata that returns it (a
        population's state depends on the members the step holds); it may
        raise CheckpointError.
      check: called with the step's metadata before any array is read (e.g.
        `check_meta`); may raise CheckpointError.

    Returns:
      (state, meta); `state["opt"]` has this run's optimizer tree structure.

    Raises:
      DamagedCheckpointError: the step's files are damaged or unreadable.
      CheckpointError: the step is intact but does not fit this run.
    """
    path = self.step_dir(step)
    verified = self.verify(step)
    meta = self.read_meta(step)
    if check is not None:
      check(meta)
    target = dict(abstract_state(meta) if callable(abstract_state)
                  else abstract_state)
    treedef = None
    if "opt" in target and meta.get("layout") == LAYOUT:
      treedef = jax.tree.structure(target["opt"])
      target["opt"] = jax.tree.leaves(target["opt"])
    try:
      state = self._mngr.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target)))["state"]
    except Exception as e:  # pylint: disable=broad-except
      if not verified:
        raise integrity.unreadable(step, path, e) from e
      raise integrity.CheckpointError(
          f"Checkpoint step {step} at {path} is intact but does not fit this "
          f"run's state: {integrity.cause(e)}. A config change the "
          "fingerprint does not cover (e.g. config.optax) can cause this: "
          "resume with the original config or use a new --workdir.") from e
    if treedef is not None:
      if len(state["opt"]) != treedef.num_leaves:
        raise integrity.CheckpointError(
            f"Checkpoint step {step} at {path} holds {len(state['opt'])} "
            f"optimizer-state arrays, this run's optimizer has "
            f"{treedef.num_leaves} (config.optax changed?). Resume with the "
            "original config or use a new --workdir.")
      state["opt"] = jax.tree.unflatten(treedef, state["opt"])
    return state, meta

  def restore_newest(self, abstract_state,
                     check: Optional[Callable[[dict], None]] = None,
                     agree: Optional[Callable[[int, str], int]] = None,
                     ) -> Tuple[Optional[int], Optional[Dict[str, Any]],
                                Optional[dict]]:
    """Restores the newest undamaged step, falling back over damaged ones.

    Args:
      abstract_state: as for `restore`.
      check: as for `restore` (its errors are not damage: they propagate).
      agree: `distributed.agree`, for several processes: every process then
        tries the same steps and they all fall back together.

    Returns:
      (step, state, meta), or (None, None, None) if there is no step at all.

    Raises:
      CheckpointError: every step is damaged, or one does not fit this run.
    """
    agree = agree or (lambda value, what: value)
    damaged = {}
    while True:
      # A read-only Checkpointer leaves damaged steps in place: skip them.
      steps = [s for s in self.all_steps() if s not in damaged]
      step = agree(steps[-1] if steps else -1,
                   f"the newest checkpoint step in {self.directory}")
      if step < 0:
        break
      error = None
      try:
        state, meta = self.restore(step, abstract_state, check=check)
      except integrity.DamagedCheckpointError as e:
        error = e
      agree(int(error is None), f"whether checkpoint step {step} is readable")
      if error is None:
        return step, state, meta
      damaged[step] = str(error)
      aside = None if self.read_only else integrity.set_aside(
          self.directory, step, move=jax.process_index() == 0)
      logging.warning("%s %s Falling back to the previous step.", error,
                      f"Moved it to {aside}." if aside else "")
      agree(step, f"the damaged checkpoint step set aside in {self.directory}")
      self._mngr.reload()
    if damaged:
      raise integrity.CheckpointError(
          f"No usable checkpoint in {self.directory}: " +
          " ".join(damaged.values()) +
          " Restore the files from a backup, or start afresh with a new "
          "--workdir.")
    return None, None, None

  def wait(self):
    """Waits for the saves in flight; writes their manifests, prunes."""
    if not self.read_only:
      self._mngr.wait_until_finished()
      with self._lock:
        self._write_ready_locked()
      self._prune()

  def close(self):
    self.wait()
    with self._lock:
      watcher = self._watcher
    if watcher is not None:
      watcher.join()
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
