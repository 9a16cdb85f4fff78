# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Shared test fixtures: tiny configs that compile in seconds on a CPU."""
import importlib.metadata
import os
import subprocess
import sys
from typing import Sequence, Tuple

# torch (the timm parity tests) probes for triton on import; triton's bundled
# LLVM segfaults when loaded into a process that already holds jaxlib's and
# TensorFlow's. The tests run on CPU and never need triton.
sys.modules.setdefault("triton", None)

# Tests never download: TFDS must fail fast instead of retrying DNS for minutes.
os.environ.setdefault("TFDS_DISABLE_DOWNLOAD", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests run tiny models: compile time dominates, execution speed does not.
# Two XLA:CPU code-generation settings cut compile time: LLVM's -O0 and the
# classic loop emitters instead of the MLIR fusion emitters (the latter saves
# about a third of the compile CPU time of a tiny train step, a quarter of
# the CPU time of tests/test_losa.py). The HLO passes, and so the compiled
# FLOP and memory figures the cost guard and benchmarks assert, are the same
# (checked on ViT-S/16). Tests that start subprocesses with their own
# XLA_FLAGS append to these (`xla_flags`). An XLA build aborts at start-up on
# a flag it does not know, and releases drop flags: `probe_xla_flags` keeps
# only those the installed XLA accepts.
WANTED_XLA_FLAGS = ("--xla_backend_optimization_level=0",
                    "--xla_cpu_use_fusion_emitters=false")
# The probe's answer, "<jaxlib version>|<kept flags>|<dropped flags>", shared
# with xdist workers and subprocesses through the environment: one probe per
# test run and jaxlib.
PROBE_ENV = "LOSA_TEST_XLA_FLAGS_PROBED"
_PROBE = "import jax; jax.devices('cpu')"


def _xla_accepts(flags: Sequence[str]) -> bool:
  """Whether a fresh process starts jax's CPU backend with these XLA_FLAGS."""
  env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", _PROBE], env=env,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                        timeout=300, check=False).returncode == 0


def probe_xla_flags(flags: Sequence[str], cache: bool = True
                    ) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
  """Splits `flags` into (kept, dropped) by what the installed XLA accepts.

  One subprocess starts jax with all of them; only if that fails, one per
  flag. With `cache`, the answer is read from / written to $PROBE_ENV.
  """
  version = importlib.metadata.version("jaxlib")
  cached = os.environ.get(PROBE_ENV, "").split("|")
  if (cache and len(cached) == 3 and cached[0] == version
      and sorted(" ".join(cached[1:]).split()) == sorted(flags)):
    return tuple(cached[1].split()), tuple(cached[2].split())
  if _xla_accepts(flags):
    kept = tuple(flags)
  else:
    kept = tuple(f for f in flags if _xla_accepts([f]))
  dropped = tuple(f for f in flags if f not in kept)
  for flag in dropped:
    print(f"conftest: jaxlib {version} does not know XLA flag {flag}: "
          "dropped from the test flags", file=sys.stderr)
  if cache:
    os.environ[PROBE_ENV] = "|".join(
        (version, " ".join(kept), " ".join(dropped)))
  return kept, dropped


TEST_XLA_FLAGS, DROPPED_XLA_FLAGS = probe_xla_flags(WANTED_XLA_FLAGS)


def xla_flags(*extra: str, base=None) -> str:
  """`base` (default: this process's XLA_FLAGS) + TEST_XLA_FLAGS + `extra`,
  each flag once (a flag already set in `base` keeps its value)."""
  flags = (os.environ.get("XLA_FLAGS", "") if base is None else base).split()
  for flag in TEST_XLA_FLAGS + tuple(" ".join(extra).split()):
    if not any(f.split("=")[0] == flag.split("=")[0] for f in flags):
      flags.append(flag)
  return " ".join(flags)


os.environ["XLA_FLAGS"] = xla_flags()
# A persistent compilation cache shared by xdist workers and subprocesses:
# many tests compile the same tiny configs.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import ml_collections  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

TINY_BACKBONE = dict(width=32, depth=2, mlp_dim=64, num_heads=2,
                     patch_size=(8, 8), pool_type="tok")


def tiny_config(method="losa", *, num_classes=5, image_size=32, losa=None,
                backbone=None, **kw):
  """A complete training config for a 2-block width-32 ViT at 32 px."""
  c = ml_collections.ConfigDict()
  c.num_classes = num_classes
  c.image_size = image_size
  c.model = ml_collections.ConfigDict(dict(
      method=method, backbone={**TINY_BACKBONE, **(backbone or {})},
      losa={"rank": 4, **(losa or {})}, lora=dict(rank=4),
      adapter=dict(dim=4)))
  c.optax_name = "adam"
  c.lr = 1e-2
  c.wd = 0.0
  c.schedule = kw.pop("schedule", dict(warmup_steps=0,
                                       decay_type="constant"))
  c.grad_clip_norm = 1.0
  c.mesh = [("data", -1)]
  c.update(kw)
  return c


@pytest.fixture
def tiny():
  return tiny_config

# Python 3.12 runs the newest releases (requirements-lock-py312.txt): there a
# DeprecationWarning is an error where it is attributed to jax, flax, optax or
# orbax, or to this project's code (whose calls into them are what a library
# attributes its deprecations to), so an API that goes away next is left
# before it does. The 3.11 lock keeps pytest's default: shown, not raised.
DEPRECATIONS_RAISE_IN = (
    r"(jax|flax|optax|orbax|losa_jax|configs)(\..*)?\Z",
    r"(test_.*|conftest|.*_worker)\Z")
# Deprecated uses inside those libraries that this project cannot change:
# orbax-checkpoint 0.12.8 annotates a parameter with
# jax.sharding.SingleDeviceSharding (deprecated in jax 0.12) at import.
UPSTREAM_DEPRECATIONS = (
    r"jax\.sharding\.SingleDeviceSharding is deprecated:DeprecationWarning:"
    r"orbax\..*",)


def pytest_configure(config):
  if sys.version_info >= (3, 12):
    # Later lines take precedence.
    for module in DEPRECATIONS_RAISE_IN:
      config.addinivalue_line("filterwarnings",
                              f"error::DeprecationWarning:{module}")
    for spec in UPSTREAM_DEPRECATIONS:
      config.addinivalue_line("filterwarnings", f"ignore:{spec}")


def pytest_report_header():
  if DROPPED_XLA_FLAGS:
    return (f"XLA flags unknown to jaxlib "
            f"{importlib.metadata.version('jaxlib')}, dropped: "
            + " ".join(DROPPED_XLA_FLAGS))
  return None
