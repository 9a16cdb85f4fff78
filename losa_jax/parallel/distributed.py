# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Multi-process (multi-host) JAX on JAX's own distributed runtime.

Every host runs the same program; `initialize` connects the processes before
JAX touches a device, after which one mesh spans the devices of all hosts.
The settings come, first found wins, from `config.distributed`, the LOSA_*
environment variables (`ENV`, `ENV_MODE`), a cluster JAX detects itself
(SLURM, Open MPI, TPU), else a single process: docs/scaling.md, "Multi-host".
`agree`, `sync` and `fetch` keep the processes in lockstep.
"""
import os
import re
from typing import Any, Dict, Mapping, Optional

from absl import logging
import jax
import numpy as np
from jax.experimental import multihost_utils

EXPLICIT_KEYS = ("coordinator_address", "num_processes", "process_id",
                 "local_device_ids")
OPTION_KEYS = ("initialization_timeout", "heartbeat_timeout_seconds",
               "cluster_detection_method")
KEYS = EXPLICIT_KEYS + OPTION_KEYS + ("auto",)
ENV = {"coordinator_address": "LOSA_COORDINATOR",
       "num_processes": "LOSA_NUM_PROCESSES",
       "process_id": "LOSA_PROCESS_ID",
       "local_device_ids": "LOSA_LOCAL_DEVICE_IDS"}
ENV_MODE = "LOSA_DISTRIBUTED"


def _as_dict(cfg) -> Dict[str, Any]:
  if cfg is None:
    return {}
  if hasattr(cfg, "to_dict"):
    return cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise ValueError(f"config.distributed must be a dict (or None), got "
                     f"{cfg!r}; e.g. dict(coordinator_address='10.0.0.1:1234',"
                     " num_processes=2, process_id=0).")
  return dict(cfg)


def validate(cfg) -> None:
  """Raises ValueError naming the bad `config.distributed` field."""
  d = _as_dict(cfg)
  unknown = sorted(set(d) - set(KEYS))
  if unknown:
    raise ValueError(f"Unknown config.distributed field(s) {unknown}; valid: "
                     f"{sorted(KEYS)}.")
  addr = d.get("coordinator_address")
  if addr is not None and (not isinstance(addr, str) or
                           not re.fullmatch(r"\S+:\d+", addr)):
    raise ValueError(f"config.distributed.coordinator_address={addr!r} must "
                     "be 'host:port' of process 0, e.g. '10.0.0.1:1234'.")
  for key in ("num_processes", "process_id", "initialization_timeout",
              "heartbeat_timeout_seconds"):
    v = d.get(key)
    low = 0 if key == "process_id" else 1
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or
                          v < low):
      raise ValueError(f"config.distributed.{key}={v!r} must be an int "
                       f">= {low}.")
  n, p = d.get("num_processes"), d.get("process_id")
  if n is not None and p is not None and p >= n:
    raise ValueError(f"config.distributed.process_id={p} must be < "
                     f"num_processes={n}.")
  if d.get("auto") not in (None, True, False):
    raise ValueError(f"config.distributed.auto={d['auto']!r} must be True, "
                     "False or absent.")
  if d.get("auto") is False and any(d.get(k) is not None
                                    for k in EXPLICIT_KEYS):
    raise ValueError("config.distributed.auto=False (single process) "
                     "contradicts the explicit fields given "
                     f"{[k for k in EXPLICIT_KEYS if d.get(k) is not None]}.")


def detect_cluster(environ: Mapping[str, str] = os.environ) -> Optional[str]:
  """Names the cluster launcher whose processes JAX can wire up by itself.

  Only multi-process launches count: a single SLURM task or a lone TPU VM
  needs no distributed runtime.
  """
  def count(key):
    try:
      return int(environ.get(key, "0"))
    except ValueError:
      return 0
  slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS",
           "SLURM_PROCID", "SLURM_LOCALID")
  if all(k in environ for k in slurm) and count("SLURM_NTASKS") > 1:
    return "slurm"
  if "OMPI_MCA_orte_hnp_uri" in environ and count("OMPI_COMM_WORLD_SIZE") > 1:
    return "ompi"
  hosts = environ.get("TPU_PROCESS_ADDRESSES") or environ.get(
      "TPU_WORKER_HOSTNAMES") or ""
  if len([h for h in hosts.split(",") if h.strip()]) > 1:
    return "tpu"
  if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "tpu"   # multislice TPU
  return None


def _env_value(key: str, environ) -> Any:
  raw = environ.get(ENV[key])
  if raw is None or raw == "":
    return None
  try:
    if key == "coordinator_address":
      return raw
    if key == "local_device_ids":
      return [int(x) for x in raw.split(",") if x.strip()]
    return int(raw)
  except ValueError:
    raise ValueError(f"Environment variable {ENV[key]}={raw!r} is not "
                     f"valid for {key}.") from None


def resolve(cfg=None, environ: Mapping[str, str] = os.environ
            ) -> Optional[Dict[str, Any]]:
  """kwargs for `jax.distributed.initialize`, or None for a single process.

  Returns {} (with only the options) when JAX should auto-detect the
  cluster. Pure: reads `environ` and never touches JAX.
  """
  d = _as_dict(cfg)
  validate(d)
  options = {k: d[k] for k in OPTION_KEYS if d.get(k) is not None}
  mode = environ.get(ENV_MODE, "").strip().lower()
  if mode not in ("", "auto", "off"):
    raise ValueError(f"{ENV_MODE}={mode!r}: use 'auto' or 'off'.")
  auto = d.get("auto")
  if auto is None and mode:
    auto = mode == "auto"
  if auto is False:
    return None
  given = {k: _env_value(k, environ) if d.get(k) is None else d[k]
           for k in EXPLICIT_KEYS}
  given = {k: v for k, v in given.items() if v is not None}
  if given.get("coordinator_address") is not None:
    missing = [k for k in ("num_processes", "process_id") if k not in given]
    if missing:
      raise ValueError(
          f"Multi-process launch with coordinator "
          f"{given['coordinator_address']!r} needs {missing} too: set "
          f"config.distributed.{missing[0]} or ${ENV[missing[0]]}.")
    if given["process_id"] >= given["num_processes"]:
      raise ValueError(f"process_id={given['process_id']} must be < "
                       f"num_processes={given['num_processes']}.")
    return {**given, **options}
  if given and auto is None:
    raise ValueError(
        f"config.distributed / environment set {sorted(given)} but no "
        f"coordinator_address: set config.distributed.coordinator_address or "
        f"${ENV['coordinator_address']} ('host:port' of process 0), or "
        "auto=True to let JAX detect the cluster.")
  if auto or detect_cluster(environ):
    # Let JAX fill in what it can read from the cluster; keep what was given.
    return {**given, **options}
  return None


def initialize(cfg=None, environ: Mapping[str, str] = os.environ) -> bool:
  """Connects this process to the others; call before any JAX computation.

  Returns True if the distributed runtime is up (now or from an earlier
  call), False for a single process without it.
  """
  if jax.distributed.is_initialized():
    return True
  kwargs = resolve(cfg, environ)
  if kwargs is None:
    return False
  logging.info("jax.distributed.initialize(%s)", kwargs)
  try:
    jax.distributed.initialize(**kwargs)
  except RuntimeError as e:
    raise RuntimeError(
        f"jax.distributed.initialize({kwargs}) failed: {e}. It must run "
        "before any JAX computation (call losa_jax.parallel.distributed.initialize "
        "first), and every process must reach the coordinator.") from e
  logging.info("Process %d of %d; %d local of %d global devices.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def is_chief() -> bool:
  """Process 0 writes logs, summaries and result files."""
  return jax.process_index() == 0


def agree(value: int, what: str) -> int:
  """Checks that every process holds the same int; returns it.

  A disagreement (e.g. hosts seeing different checkpoint folders because the
  workdir is not on a shared filesystem) would otherwise deadlock or silently
  diverge later; here every process raises the same error.
  """
  if jax.process_count() == 1:
    return value
  values = np.asarray(multihost_utils.process_allgather(
      np.asarray(value, np.int64))).reshape(-1)
  if len(set(values.tolist())) != 1:
    raise RuntimeError(
        f"Processes disagree on {what}: {values.tolist()} (by process "
        "index). Put the workdir on a filesystem all hosts share, and start "
        "every process with the same config.")
  return value


def sync(name: str) -> None:
  """Barrier: returns once every process has reached `sync(name)`."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def fetch(tree) -> Any:
  """Host numpy copies of (possibly cross-host sharded) global arrays.

  Every process must call it (it may run a collective) and gets the whole
  value. Fully addressable arrays are simply copied.
  """
  def one(x):
    if not isinstance(x, jax.Array):
      return x
    if x.is_fully_addressable or x.is_fully_replicated:
      return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(one, tree)


def shutdown() -> None:
  if jax.distributed.is_initialized():
    jax.distributed.shutdown()
