# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Exports served tasks: a StableHLO artifact and a TF SavedModel.

  python -m losa_jax.export --workdirs /tmp/digits,/tmp/parity --out /tmp/srv
  python -m losa_jax.export --workdirs /tmp/digits --out /tmp/srv_one

One or several finished workdirs (`losa_jax.multitask.load`: one backbone
pass for every LoSA / linear task) are written to --out as

  model.jax_export   `jax.export` serialized StableHLO of
                     images [b, H, W, 3] float32 -> {task: logits [b, C]},
                     params embedded, batch b symbolic. Runs without the
                     model code: jax.export.deserialize(bytes).call(images).
  saved_model/       TF SavedModel (jax2tf, params as variables), signatures
                     "serving_default": images float32 [b, H, W, 3] ->
                     {task: logits}, and "serve_image_bytes": encoded
                     png/jpeg strings [b] -> {task: logits}, the tasks'
                     eval pp (decode, resize, value_range, ...) inside.
  tasks/<task>.npz   each task's own params (side network + head; the
                     whole model for LoRA / adapters / full), params only.
  serving.json       tasks, classes, input shape, pp, backbone sha256,
                     source workdirs and steps, platforms, versions.

docs/serving.md says how to put the SavedModel behind TF Serving.
"""
import contextlib
import datetime
import json
import os
import shutil
import sys
from typing import Any, Dict, Optional, Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from losa_jax import multitask
from losa_jax import npz as npz_lib
from losa_jax import pp as pp_lib

JAX_FILE = "model.jax_export"
SAVED_MODEL = "saved_model"
MANIFEST = "serving.json"


def polymorphic_spec(mt: multitask.MultiTask) -> str:
  """"(b, H, W, 3)": the batch dimension is symbolic, the rest fixed."""
  return "(b, " + ", ".join(map(str, mt.image_shape)) + ")"


def export_jax(mt: multitask.MultiTask,
               platforms: Optional[Sequence[str]] = None) -> bytes:
  """The multi-task function as serialized `jax.export` StableHLO.

  Args:
    mt: the tasks.
    platforms: lowering platforms, e.g. ("cpu", "cuda"); default the
      current backend. One artifact may carry several.

  Returns:
    bytes for `jax.export.deserialize(...).call(images [b, *image_shape])`,
    valid for every batch size b >= 1 (shape-polymorphic).
  """
  shape = jax.export.symbolic_shape(polymorphic_spec(mt)[1:-1])
  exp = jax.export.export(jax.jit(mt.bound()), platforms=platforms)(
      jax.ShapeDtypeStruct(shape, jnp.float32))
  return bytes(exp.serialize())


def load_jax(path: str):
  """A `jax.export.Exported` from a file written by `export_jax`."""
  with open(path, "rb") as f:
    return jax.export.deserialize(bytearray(f.read()))


def serving_image_fn(pp, image_shape, pp_modules: Sequence[str] = ()):
  """TF fn: one encoded image (string scalar) -> float32 [H, W, 3] through
  the tasks' eval pp. Refuses a pp with random ops (serving must be
  deterministic)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  for module in pp_modules:
    pp_lib.import_ops(module)
  if pp is None:
    raise ValueError("The tasks have no pp (built from parts): the "
                     "image-bytes signature needs one.")
  random = pp_lib.random_ops(pp)
  if random:
    raise ValueError(f"The tasks' eval pp {pp!r} has random ops {random}: "
                     "serving must be deterministic; give the config an "
                     "eval (config.evals) with a deterministic pp.")
  fn = pp_lib.get_preprocess_fn(pp)

  def one(data):
    ex = fn({"image": data, "label": tf.constant(0, tf.int64)})
    return tf.ensure_shape(tf.cast(ex["image"], tf.float32), image_shape)

  return one


def _version(v: str):
  return tuple(int(p) for p in v.split("."))


@contextlib.contextmanager
def stablehlo_for_tf():
  """Within it, jax serializes StableHLO that the installed TensorFlow reads.

  jax writes the StableHLO version of about 4 weeks before its release, and
  TensorFlow's XlaCallModule reads versions up to its own (jax 0.12.1 writes
  1.22.0; TensorFlow 2.21 reads up to 1.13.7). jax 0.12 has no public knob
  for the version, so its serializer (`_export._module_to_bytecode`) is
  replaced, inside the block, by one that targets the older of the two.
  Yields that version. Raises RuntimeError naming both versions if the model
  cannot be written for the TensorFlow's version.
  """
  from jax._src.export import _export  # pylint: disable=g-import-not-at-top
  from jax._src.lib.mlir.dialects import hlo  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow.compiler.mlir.stablehlo import stablehlo as tf_hlo  # pylint: disable=g-import-not-at-top
  jax_v = hlo.get_version_from_compatibility_requirement(
      hlo.StablehloCompatibilityRequirement.WEEK_4)
  tf_v = tf_hlo.get_current_version()
  target = min(jax_v, tf_v, key=_version)
  versions = (f"jax {jax.__version__} writes StableHLO {jax_v}, TensorFlow "
              f"{tf.__version__} reads up to {tf_v}")
  serialize = getattr(_export, "_module_to_bytecode", None)
  if target == jax_v:
    yield target
    return
  if serialize is None:
    raise RuntimeError(f"No SavedModel that TensorFlow can read: {versions}, "
                       "and this jax has no _module_to_bytecode to target "
                       f"{tf_v}. Install a TensorFlow that reads {jax_v}, or "
                       "export with saved_model=False (--nosaved_model).")

  def to_bytecode(module):
    try:
      return _export._jax.mlir.serialize_portable_artifact(  # pylint: disable=protected-access
          module, target, _export.xb.get_backend().serialize_with_sdy)
    except Exception as e:  # pylint: disable=broad-except
      raise RuntimeError(
          f"The model cannot be written as StableHLO {target}: {versions}. "
          f"Install a TensorFlow that reads {jax_v}, or export with "
          f"saved_model=False (--nosaved_model). ({e})") from e

  _export._module_to_bytecode = to_bytecode  # pylint: disable=protected-access
  try:
    yield target
  finally:
    _export._module_to_bytecode = serialize  # pylint: disable=protected-access


def save_tf(mt: multitask.MultiTask, path: str, *,
            platforms: Optional[Sequence[str]] = None,
            image_bytes: bool = True) -> str:
  """Writes a TF SavedModel of `mt` (see the module doc); returns `path`.

  The params are tf.Variables (saved under variables/, not inlined in the
  graph, so there is no 2 GiB GraphDef limit); the computation is the
  jax2tf-serialized StableHLO, polymorphic in the batch.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  spec = polymorphic_spec(mt)
  kw = {} if platforms is None else {
      "native_serialization_platforms": tuple(platforms)}
  tf_apply = jax2tf.convert(mt.apply, polymorphic_shapes=[None, spec],
                            with_gradient=False, **kw)
  # A plain dict of variables for the call (tf.Module wraps what it
  # tracks), the same variables tracked by the module for saving.
  variables = jax.tree.map(
      lambda x: tf.Variable(np.asarray(x), trainable=False), mt.params)
  module = tf.Module()
  module.params = variables

  @tf.function(autograph=False, input_signature=[tf.TensorSpec(
      (None, *mt.image_shape), tf.float32, name="images")])
  def serve(images):
    return tf_apply(variables, images)

  signatures = {"serving_default": serve}
  module.serve = serve
  if image_bytes:
    pp_modules = sorted({m for t in mt.tasks if t.config is not None
                         for m in (t.config.get("pp_modules") or ())})
    one = serving_image_fn(mt.pp, mt.image_shape, pp_modules)

    @tf.function(input_signature=[tf.TensorSpec((None,), tf.string,
                                                name="image_bytes")])
    def serve_bytes(data):
      images = tf.map_fn(one, data, fn_output_signature=tf.TensorSpec(
          mt.image_shape, tf.float32))
      return serve(images)

    module.serve_bytes = serve_bytes
    signatures["serve_image_bytes"] = serve_bytes
  tmp = path.rstrip("/") + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  with stablehlo_for_tf():   # traced (and serialized) here
    tf.saved_model.save(module, tmp, signatures=signatures)
  shutil.rmtree(path, ignore_errors=True)
  os.replace(tmp, path)
  return path


def save_task_params(mt: multitask.MultiTask, folder: str) -> Dict[str, int]:
  """tasks/<name>.npz per task (params only); returns {name: bytes}."""
  sizes = {}
  for name, p in mt.params["tasks"].items():
    path = npz_lib.save_npz(jax.device_get(p), os.path.join(folder,
                                                            f"{name}.npz"))
    sizes[name] = os.path.getsize(path)
  return sizes


def _write_bytes(path: str, data: bytes):
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def export(mt: multitask.MultiTask, out: str, *,
           platforms: Optional[Sequence[str]] = None,
           saved_model: bool = True, image_bytes: bool = True
           ) -> Dict[str, Any]:
  """Writes every artifact of the module doc to `out`; returns the manifest."""
  os.makedirs(out, exist_ok=True)
  data = export_jax(mt, platforms)
  _write_bytes(os.path.join(out, JAX_FILE), data)
  sizes = save_task_params(mt, os.path.join(out, "tasks"))
  counts = mt.param_counts()
  manifest = {
      "tasks": [{"name": t.name, "method": t.method,
                 "num_classes": t.num_classes, "workdir": t.workdir,
                 "step": t.step, "shared_backbone": t.group is not None,
                 "merged_lora": t.merged_lora,
                 "params": counts["tasks"][t.name],
                 "npz_bytes": sizes[t.name]} for t in mt.tasks],
      "input": {"shape": ["b", *mt.image_shape], "dtype": "float32",
                "pp": mt.pp},
      "backbone": mt.backbone, "backbone_params": counts["backbones"],
      "backbone_passes_per_batch": mt.num_backbone_passes,
      "jax_export": {"file": JAX_FILE, "bytes": len(data),
                     "platforms": list(platforms or [jax.default_backend()])},
      "date": datetime.date.today().isoformat(), "jax": jax.__version__,
  }
  if saved_model:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    save_tf(mt, os.path.join(out, SAVED_MODEL), platforms=platforms,
            image_bytes=image_bytes)
    manifest["saved_model"] = {
        "dir": SAVED_MODEL, "tensorflow": tf.__version__,
        "signatures": ["serving_default"] +
                      (["serve_image_bytes"] if image_bytes else [])}
  tmp = os.path.join(out, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump(manifest, f, indent=1)
  os.replace(tmp, os.path.join(out, MANIFEST))
  return manifest


def define_flags(flag_values: flags.FlagValues = flags.FLAGS):
  """Defined on demand so importing this module claims no flag names."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_list("workdirs", None, "Finished training workdirs (configs "
                    "from <workdir>/config.json); one is fine.", **fv)
  flags.DEFINE_list("names", None, "Task names (default: each workdir's "
                    "base name).", **fv)
  flags.DEFINE_string("out", None, "Output folder.", **fv)
  flags.DEFINE_list("platforms", None, "Lowering platforms of the artifacts "
                    "(cpu, cuda, rocm, tpu); default: this machine's.", **fv)
  flags.DEFINE_bool("merge_lora", True, "Serve LoRA tasks merged into the "
                    "weights (a plain ViT's cost).", **fv)
  flags.DEFINE_bool("saved_model", True, "Also write the TF SavedModel.",
                    **fv)


def main(argv):
  del argv
  cfg = flags.FLAGS
  if not cfg.workdirs or not cfg.out:
    raise app.UsageError("--workdirs and --out are required.")
  mt = multitask.load(cfg.workdirs, cfg.names, merge_lora=cfg.merge_lora)
  manifest = export(mt, cfg.out, platforms=cfg.platforms,
                    saved_model=cfg.saved_model)
  print(f"Exported {mt.names} ({mt.num_backbone_passes} backbone pass(es) "
        f"per batch) to {cfg.out}: {JAX_FILE} "
        f"({manifest['jax_export']['bytes'] / 2**20:.1f} MiB)"
        + (f", {SAVED_MODEL}/" if cfg.saved_model else "") + ", tasks/, "
        f"{MANIFEST}")


def run():
  define_flags()
  app.run(main)


if __name__ == "__main__":
  sys.exit(run())
