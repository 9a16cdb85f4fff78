# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""`python -m losa_jax.train` in a subprocess, optionally killed mid-run."""
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_train(cfg, workdir, *, kill_after_ckpt=None, extra=(),
              timeout_s: int = 300, what: str = "training"):
  """Runs the trainer on config file `cfg` in `workdir` on CPU.

  With `kill_after_ckpt`, SIGKILLs it (no clean shutdown at all) as soon as
  checkpoint step `kill_after_ckpt` exists; `what` names the run in the
  error if it never gets there within `timeout_s`. Returns (returncode,
  stdout and stderr as one text).
  """
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-m", "losa_jax.train", f"--config={cfg}",
         f"--workdir={workdir}", *extra]
  proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  if kill_after_ckpt is None:
    out, _ = proc.communicate(timeout=timeout_s)
    return proc.returncode, out
  ckdir = os.path.join(workdir, "checkpoints", str(kill_after_ckpt))
  deadline = time.time() + timeout_s
  while not os.path.isdir(ckdir) and proc.poll() is None:
    if time.time() > deadline:
      proc.kill()
      raise TimeoutError(f"{what} never reached its first checkpoint")
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  out, _ = proc.communicate(timeout=60)
  return proc.returncode, out
