# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""What keeps the suite and exports working on the newest releases: XLA
flags probed against the installed XLA, StableHLO that the installed
TensorFlow reads."""
import os
import sys
import warnings

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from losa_jax.serving import export

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


def _saved_model(path, fun, params):
  """A jax2tf SavedModel of fun(params, x [b, 4]) written like save_tf's."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  tf_fun = jax2tf.convert(fun, polymorphic_shapes=[None, "(b, 4)"],
                          with_gradient=False)
  module = tf.Module()
  module.params = jax.tree.map(tf.Variable, params)

  @tf.function(autograph=False, input_signature=[
      tf.TensorSpec((None, 4), tf.float32)])
  def serve(x):
    return tf_fun(module.params, x)

  module.serve = serve
  with export.stablehlo_for_tf() as version:
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
  return version


def _fun(p, x):
  return {"probs": jax.nn.softmax(x @ p["w"]), "sorted": jnp.sort(x, -1)}


def test_a_jax2tf_saved_model_loads_in_the_installed_tensorflow(tmp_path):
  # jax 0.12 writes StableHLO 1.22 by default, which TensorFlow 2.21
  # (StableHLO 1.13.7) refuses to deserialize.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_hlo  # pylint: disable=g-import-not-at-top
  params = {"w": np.random.RandomState(0).normal(size=(4, 3)).astype(
      np.float32)}
  version = _saved_model(str(tmp_path / "sm"), _fun, params)
  assert export._version(version) <= export._version(
      tf_hlo.get_current_version())
  x = np.random.RandomState(1).normal(size=(2, 4)).astype(np.float32)
  got = tf.saved_model.load(str(tmp_path / "sm")).signatures[
      "serving_default"](tf.constant(x))
  want = _fun(params, x)
  for k in want:
    np.testing.assert_allclose(got[k].numpy(), want[k], atol=1e-6)


def test_a_version_tensorflow_cannot_take_is_refused_naming_both(
    tmp_path, monkeypatch):
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_hlo  # pylint: disable=g-import-not-at-top
  from jax._src.export import _export  # pylint: disable=g-import-not-at-top
  serialize = _export._module_to_bytecode
  # A TensorFlow whose StableHLO predates every version jax can write.
  monkeypatch.setattr(tf_hlo, "get_current_version", lambda: "0.0.1")
  with pytest.raises(RuntimeError, match=(
      r"cannot be written as StableHLO 0\.0\.1: jax .* writes StableHLO "
      r"[0-9.]+, TensorFlow .* reads up to 0\.0\.1\. Install a TensorFlow "
      r"that reads")):
    _saved_model(str(tmp_path / "sm"), _fun, {"w": np.ones((4, 3),
                                                           np.float32)})
  assert _export._module_to_bytecode is serialize   # restored


NEWEST = sys.version_info >= (3, 12)


@pytest.mark.parametrize("module,raises", [
    ("losa_jax.train", True), ("configs.vtab", True), ("test_losa", True),
    ("jax._src.numpy", True), ("flax.linen.module", True),
    ("optax._src.alias", True), ("orbax.checkpoint", True),
    ("tensorflow_datasets.core", False), ("jaxtyping", False)])
def test_deprecations_raise_in_the_newest_releases_environment(module,
                                                               raises):
  # What a deprecated API does when called from `module`.
  def call():
    warnings.warn_explicit("x is deprecated", DeprecationWarning, "m.py", 1,
                           module=module)
  if raises and NEWEST:
    with pytest.raises(DeprecationWarning):
      call()
  else:
    with warnings.catch_warnings(record=True) as seen:
      call()
    assert [type(w.message) for w in seen] in ([DeprecationWarning], [])


@pytest.mark.skipif(not NEWEST, reason="the filters apply on Python 3.12")
def test_upstream_deprecations_are_not_errors():
  warnings.warn_explicit(
      "jax.sharding.SingleDeviceSharding is deprecated; use ...",
      DeprecationWarning, "colocated_transport.py", 225,
      module="orbax.checkpoint._src.multihost.colocated_transport")
