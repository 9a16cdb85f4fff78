# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Real multi-process training: two JAX processes on 127.0.0.1, 2 CPU devices
each, joined by `jax.distributed` (gloo collectives), running the trainer.

The processes are started with `tests/multihost_worker.py`; every launch has
a timeout and kills its process groups on failure. A persistent compilation
cache shared by the launches keeps the reruns cheap. The two tests share
their launches (a module fixture): each process start costs ~10 s of CPU.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import xla_flags
from losa_jax.parallel import distributed

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")
TIMEOUT_S = 150   # one launch; the cold one compiles on a shared 2-core CPU
# Test-only: cheaper LLVM codegen (the losses agree with the default -O2).
FAST_XLA = xla_flags("--xla_llvm_disable_expensive_passes=true")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, steps, *, tmp_path, cache_dir, num_processes=2,
            ckpt_every=0, dump=None, nan_workdir=None, nan_at_step=0,
            expect_ok=True, timeout_s=TIMEOUT_S, local_devices=2, extra=()):
  """Starts the processes, waits for all; returns [(returncode, log text)].

  Process 1 connects through the LOSA_* environment variables, process 0
  through config.distributed: both routes of distributed.initialize. With
  nan_workdir, the processes train again there after the run, with the loss
  NaN at nan_at_step (multihost_worker.py --nan_workdir).
  """
  t0 = time.time()
  port = _free_port()
  env = dict(os.environ, XLA_FLAGS=FAST_XLA, JAX_PLATFORMS="cpu",
             PYTHONUNBUFFERED="1")
  env.pop("LOSA_COORDINATOR", None)
  procs, logs = [], []
  try:
    for i in range(num_processes):
      cmd = [sys.executable, WORKER, "--workdir", str(workdir),
             "--steps", str(steps), "--ckpt_every", str(ckpt_every),
             "--local_devices", str(local_devices),
             "--num_processes", str(num_processes),
             "--process_id", str(i), "--port", str(port),
             "--cache_dir", str(cache_dir)]
      cmd += [str(a) for a in extra]
      if nan_workdir:
        cmd += ["--nan_workdir", str(nan_workdir),
                "--then_nan_at_step", str(nan_at_step)]
      if dump and i == 0:
        cmd += ["--dump", str(dump)]
      if i == 1:
        cmd.append("--via_env")
      log = open(tmp_path / f"log_{os.path.basename(workdir)}_{steps}_{i}",
                 "w+")
      logs.append(log)
      procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env=env, cwd=os.path.dirname(HERE),
                                    start_new_session=True))
    deadline = time.time() + timeout_s
    while any(p.poll() is None for p in procs):
      if time.time() > deadline:
        raise TimeoutError(f"workers still running after {timeout_s} s")
      if expect_ok and any(p.poll() not in (None, 0) for p in procs):
        time.sleep(2)   # let the others print their view, then stop them
        break
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)   # only the group we started
        p.wait()
    out = []
    for p, log in zip(procs, logs):
      log.seek(0)
      out.append((p.returncode, log.read()))
      log.close()
  print(f"launch of {num_processes} processes, {steps} steps: "
        f"{time.time() - t0:.1f} s", flush=True)
  if expect_ok:
    for i, (rc, text) in enumerate(out):
      assert rc == 0, f"process {i} exited with {rc}:\n{text[-4000:]}"
  return out


def _params(npz, prefix):
  return {k[len(prefix) + 1:]: npz[k] for k in npz.files
          if k.startswith(prefix + "/") and not k.endswith("/_step")}


RTOL, ATOL = 2e-4, 2e-6
# The leaves a few steps of training move far (measured ratio of the move to
# the tolerance of _assert_close, at step N and 2N): the head (> 3000x), the
# side network's output LayerNorm bias (224x, 915x) and its up projections
# (> 100x, > 580x). The down projections and the mixers' LayerNorms get no
# gradient while the zero-init up projections are zero, and move about the
# tolerance or less in 2N steps: their equality alone would prove nothing.
MOVES = ("head/kernel", "head/bias", "side/LN_out/bias",
         "side/layers/mixer/channel_0/mlp/up/kernel",
         "side/layers/mixer/token_1/mlp/up/kernel")
MOVED_X_TOL = 50


def _assert_close(a, b, what):
  assert sorted(a) == sorted(b), what
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=RTOL, atol=ATOL,
                               err_msg=f"{what}: {k}")


def _assert_moved(final, init, what):
  """Each of MOVES moved from init by over MOVED_X_TOL x the tolerance at
  which _assert_close compares it: the equality is one of trained params."""
  for k in MOVES:
    moved = float(np.abs(final[k] - init[k]).max())
    tol = float((ATOL + RTOL * np.abs(final[k])).max())
    assert moved > MOVED_X_TOL * tol, (
        f"{what}: {k} moved {moved:.3g} from init, tolerance {tol:.3g}")


def _reference(tmp_path, steps, ckpt_every, records=""):
  """The same config, one process, in this pytest process."""
  sys.path.insert(0, HERE)
  import jax  # pylint: disable=g-import-not-at-top
  import multihost_worker  # pylint: disable=g-import-not-at-top
  from losa_jax.checkpointing import manager as checkpointing  # pylint: disable=g-import-not-at-top
  from losa_jax import train  # pylint: disable=g-import-not-at-top
  from losa_jax.utils import tree as tree_lib  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(steps=steps, ckpt_every=ckpt_every,
                            num_processes=1, process_id=0, port=0,
                            via_env=False, nan_at_step=0, records=records)
  config = multihost_worker.make_config(args)
  config.mesh = [("data", -1)]
  workdir = tmp_path / ("ref_records" if records else "ref")
  out = train.train_and_evaluate(config, str(workdir))
  state, built = out["state"], out["built"]
  trainable, _ = tree_lib.partition(state["params"], built.mask)
  init, _ = tree_lib.partition(built.init_loaded(
      jax.random.key(config.seed), config)["params"], built.mask)
  params = {name: {k: np.asarray(v) for k, v in tree_lib.flatten(p).items()}
            for name, p in (("final", trainable), ("init", init))}
  ckpt = checkpointing.Checkpointer(str(workdir / "checkpoints"))
  abstract = checkpointing.abstract_trainable_state(state, built.mask)
  for step in ckpt.all_steps():
    restored, _ = ckpt.restore(step, abstract)
    params[f"ckpt{step}"] = {k: np.asarray(v) for k, v in
                             tree_lib.flatten(restored["params"]).items()}
  ckpt.close()
  return params, out["results"]


def _metric_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line)["step"] for line in f
            if "loss" in json.loads(line)]


N = 2   # steps of the first launch; the rerun goes to 2N


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The single-process reference, then two launches of two processes: N
  steps; a rerun to 2N in the same workdir (it resumes from the checkpoint)
  whose processes then train again in another workdir with a NaN loss at
  step 3 (a row of process 1's share). Returns paths and logs; the tests
  below assert."""
  tmp = tmp_path_factory.mktemp("multihost")
  cache_dir = tmp / "jax_cache"
  t0 = time.time()
  ref = _reference(tmp, steps=2 * N, ckpt_every=N)
  print(f"single-process reference: {time.time() - t0:.1f} s", flush=True)
  workdir = tmp / "two"
  _launch(workdir, N, tmp_path=tmp, cache_dir=cache_dir, ckpt_every=N,
          dump=tmp / "a.npz")
  # No early stop on a failing process: the NaN run must fail on each.
  second = _launch(workdir, 2 * N, tmp_path=tmp, cache_dir=cache_dir,
                   ckpt_every=N, dump=tmp / "b.npz", nan_workdir=tmp / "nan",
                   nan_at_step=3, expect_ok=False, timeout_s=2 * TIMEOUT_S)
  return dict(tmp=tmp, workdir=workdir, ref=ref, second=second)


@pytest.mark.slow
def test_two_processes_train_resume_and_match_one_process(runs):
  tmp, workdir, (ref, ref_results) = runs["tmp"], runs["workdir"], runs["ref"]
  # The rerun's own training ended on every process (the NaN run follows).
  for i, (_, text) in enumerate(runs["second"]):
    assert f"process {i} done" in text, f"process {i}:\n{text[-4000:]}"
  a, b = np.load(tmp / "a.npz"), np.load(tmp / "b.npz")
  assert json.loads(str(a["mesh"])) == {"data": 2, "fsdp": 2}

  # The same init, then the same params as the single-process run after N
  # and after 2N steps, params that training moved far from that init.
  for npz in (a, b):
    init = _params(npz, "init")
    assert sorted(init) == sorted(ref["init"])
    for k in init:
      np.testing.assert_array_equal(init[k], ref["init"][k], err_msg=k)
  _assert_close(_params(a, "final"), ref[f"ckpt{N}"], "2 processes, step N")
  _assert_close(_params(b, "final"), ref["final"], "2 processes, resumed 2N")
  _assert_moved(ref[f"ckpt{N}"], ref["init"], "1 process, step N")
  _assert_moved(_params(a, "final"), _params(a, "init"), "2 processes, N")
  _assert_moved(_params(b, "final"), _params(b, "init"), "2 processes, 2N")
  _assert_close(_params(b, f"ckpt{2 * N}"), _params(b, "final"),
                "checkpoint 2N written across the 2 processes")
  assert int(b[f"ckpt{2 * N}/_step"]) == 2 * N
  results = json.loads(str(b["results"]))
  for k in ("train/loss", "test/loss", "test/accuracy"):
    np.testing.assert_allclose(results[k], ref_results[k], rtol=1e-4,
                               atol=1e-6, err_msg=k)
  assert results["test/count"] == 20.0   # padding rows of each host dropped

  # Only process 0 logs: each step once; the resume is announced once.
  assert _metric_steps(workdir) == list(range(1, 2 * N + 1))
  (_, log0), (_, log1) = runs["second"]
  log0 = log0.split("process 0 done")[0]    # the resumed run's part
  log1 = log1.split("process 1 done")[0]
  assert f"Resumed from step {N}" in log0
  for line in ("Resumed", "Training losa", "| loss", "Final:"):
    assert line not in log1, f"process 1 printed {line!r}"


@pytest.mark.slow
def test_nan_stops_every_process_at_the_same_step(runs):
  # The NaN example is a row of process 1's share of step 3; process 0's own
  # rows are finite, yet it must stop too (the loss is the global mean).
  for i, (rc, text) in enumerate(runs["second"]):
    assert rc != 0, f"process {i} did not fail:\n{text[-3000:]}"
    text = text.split(f"process {i} done")[-1]    # the NaN run's part
    assert "NonFiniteLossError" in text and "at step 3" in text, (
        f"process {i}:\n{text[-3000:]}")


# --- pod-scale input: an ArrayRecord split, 2 and 4 processes ---------------

NUM_RECORDS = 20_000
R_STEPS = 4


@pytest.fixture(scope="module")
def record_runs(tmp_path_factory):
  """A 20,000-example ArrayRecord dataset; the one-process reference on it;
  4 processes (1 device each) that probe 1.2 epochs of the input and then
  train; 4 and 2 processes that train from a feature cache (the 2 probe
  too). The tests below assert."""
  from losa_jax.datasets import records  # pylint: disable=g-import-not-at-top
  tmp = tmp_path_factory.mktemp("records")
  data_dir = tmp / "tfds"
  records.synthetic(str(data_dir), NUM_RECORDS, num_classes=5)
  cache_dir = tmp / "jax_cache"
  ref, _ = _reference(tmp, steps=R_STEPS, ckpt_every=0, records=str(data_dir))
  runs = {"ref": ref, "tmp": tmp}
  for name, procs, extra in (
      ("four", 4, ["--probe", tmp / "probe4"]),
      ("four_cached", 4, ["--feature_cache", tmp / "fc4"]),
      ("two_cached", 2, ["--feature_cache", tmp / "fc2",
                         "--probe", tmp / "probe2"])):
    _launch(tmp / name, R_STEPS, tmp_path=tmp, cache_dir=cache_dir,
            num_processes=procs, local_devices=4 // procs,
            dump=tmp / f"{name}.npz", timeout_s=3 * TIMEOUT_S,
            extra=["--records", data_dir, *extra])
    runs[name] = np.load(tmp / f"{name}.npz")
  return runs


@pytest.mark.slow
@pytest.mark.parametrize("procs", [2, 4])
def test_records_each_process_reads_only_its_rows(record_runs, procs):
  import multihost_worker  # pylint: disable=g-import-not-at-top
  from losa_jax.assembly import input_pipeline  # pylint: disable=g-import-not-at-top
  probes = [np.load(record_runs["tmp"] / f"probe{procs}.{p}.npz")
            for p in range(procs)]
  b = multihost_worker.PROBE_BATCH
  steps = NUM_RECORDS // b
  # Process p's rows of each global batch, side by side: the global order.
  order = np.concatenate([pr["epoch"] for pr in probes], axis=1).reshape(-1)
  assert order.size == steps * b == len(np.unique(order))
  expected = input_pipeline.epoch_permutation(5, 0, NUM_RECORDS).numpy()
  np.testing.assert_array_equal(order, expected[:steps * b])
  for p, pr in enumerate(probes):
    # Read ahead: the prefetched batches of the next epoch (<= 4 batches).
    read, share = int(pr["records_read"]), steps * b // procs
    assert share <= read <= share + 4 * b // procs, (p, read, share)
    assert all(json.loads(str(pr["resumed"])).values()), pr["resumed"]


@pytest.mark.slow
def test_records_four_processes_equal_one(record_runs):
  ref, four = record_runs["ref"], record_runs["four"]
  assert json.loads(str(four["mesh"])) == {"data": 4}
  _assert_close(_params(four, "final"), ref["final"], "4 processes, records")
  _assert_moved(_params(four, "final"), _params(four, "init"), "4 processes")


@pytest.mark.slow
@pytest.mark.parametrize("name,procs", [("four_cached", 4),
                                        ("two_cached", 2)])
def test_records_cached_processes_equal_uncached(record_runs, name, procs):
  from losa_jax import feature_cache as fc  # pylint: disable=g-import-not-at-top
  run = record_runs[name]
  _assert_close(_params(run, "final"), record_runs["ref"]["final"],
                f"{procs} processes from the feature cache")
  _assert_moved(_params(run, "final"), _params(run, "init"), name)
  root = record_runs["tmp"] / f"fc{procs}"
  (key,) = os.listdir(root)
  assert fc.read_marker(str(root / key)) == key
  assert sorted(n for n in os.listdir(root / key) if n.startswith("part")) == [
      fc.part_name(p, procs) for p in range(procs)]


# --- distributed.resolve: where the settings come from (no processes) --------


def test_resolve_single_process_by_default():
  assert distributed.resolve(None, {}) is None
  assert distributed.resolve({"auto": False}, {"SLURM_NTASKS": "4"}) is None
  assert distributed.resolve(None, {"LOSA_DISTRIBUTED": "off",
                                    "LOSA_COORDINATOR": "h:1"}) is None


def test_resolve_explicit_from_config_and_env():
  cfg = dict(coordinator_address="10.0.0.1:1234", num_processes=4,
             process_id=2, local_device_ids=[0, 1], initialization_timeout=60)
  assert distributed.resolve(cfg, {}) == cfg
  env = {"LOSA_COORDINATOR": "h:99", "LOSA_NUM_PROCESSES": "2",
         "LOSA_PROCESS_ID": "1", "LOSA_LOCAL_DEVICE_IDS": "0,1"}
  assert distributed.resolve(None, env) == dict(
      coordinator_address="h:99", num_processes=2, process_id=1,
      local_device_ids=[0, 1])
  # Config fields win over the environment, missing ones come from it.
  assert distributed.resolve({"process_id": 0}, env)["process_id"] == 0


def test_resolve_cluster_auto_detection():
  slurm = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]",
           "SLURM_NTASKS": "8", "SLURM_PROCID": "3", "SLURM_LOCALID": "3"}
  assert distributed.detect_cluster(slurm) == "slurm"
  assert distributed.resolve(None, slurm) == {}
  assert distributed.detect_cluster({**slurm, "SLURM_NTASKS": "1"}) is None
  tpu = {"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}
  assert distributed.detect_cluster(tpu) == "tpu"
  assert distributed.resolve({"initialization_timeout": 30}, tpu) == {
      "initialization_timeout": 30}
  assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "w0"}) is None
  assert distributed.resolve({"auto": True}, {}) == {}
  assert distributed.resolve(None, {"LOSA_DISTRIBUTED": "auto"}) == {}


@pytest.mark.parametrize("cfg, env, match", [
    ({"coordinator": "h:1"}, {}, "Unknown config.distributed"),
    ({"coordinator_address": "h"}, {}, "host:port"),
    ({"coordinator_address": "h:1", "num_processes": 2}, {}, "process_id"),
    ({"coordinator_address": "h:1", "num_processes": 2, "process_id": 2}, {},
     "must be < num_processes"),
    ({"num_processes": 2, "process_id": 1}, {}, "coordinator_address"),
    (None, {"LOSA_PROCESS_ID": "x", "LOSA_COORDINATOR": "h:1"},
     "LOSA_PROCESS_ID"),
    ({"auto": False, "process_id": 1}, {}, "contradicts"),
    (None, {"LOSA_DISTRIBUTED": "yes"}, "LOSA_DISTRIBUTED"),
])
def test_resolve_errors_name_the_field(cfg, env, match):
  with pytest.raises(ValueError, match=match):
    distributed.resolve(cfg, env)
