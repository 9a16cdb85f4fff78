# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The test harness itself: XLA flags are probed against the installed XLA."""
import os

import conftest

KNOWN = "--xla_backend_optimization_level=0"
UNKNOWN = "--xla_losa_no_such_flag=true"


def test_an_unknown_xla_flag_is_dropped_and_a_known_one_kept(capfd):
  kept, dropped = conftest.probe_xla_flags([KNOWN, UNKNOWN], cache=False)
  assert kept == (KNOWN,)
  assert dropped == (UNKNOWN,)
  err = capfd.readouterr().err.splitlines()
  assert [l for l in err if UNKNOWN in l] == [
      f"conftest: jaxlib {conftest.importlib.metadata.version('jaxlib')} "
      f"does not know XLA flag {UNKNOWN}: dropped from the test flags"]


def test_the_probe_runs_once_per_test_run(monkeypatch):
  # conftest probed at import and left its answer for workers and
  # subprocesses; a second call reads it back instead of starting jax again.
  assert conftest.PROBE_ENV in os.environ
  calls = []
  monkeypatch.setattr(conftest, "_xla_accepts",
                      lambda flags: calls.append(flags) or True)
  kept, dropped = conftest.probe_xla_flags(conftest.WANTED_XLA_FLAGS)
  assert not calls
  assert (kept, dropped) == (conftest.TEST_XLA_FLAGS,
                             conftest.DROPPED_XLA_FLAGS)
  assert sorted(kept + dropped) == sorted(conftest.WANTED_XLA_FLAGS)
  for flag in kept:
    assert flag in os.environ["XLA_FLAGS"].split()
  for flag in dropped:
    assert flag not in os.environ["XLA_FLAGS"].split()
