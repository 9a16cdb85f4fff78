# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Writes served tasks as a StableHLO artifact and a TF SavedModel.

`python -m losa_jax.export` (losa_jax/export.py) writes the tasks of
`multitask.load` to --out: `model.jax_export` (StableHLO, params embedded,
batch symbolic), `saved_model/` (jax2tf; signatures "serving_default" on
float32 images and "serve_image_bytes" on encoded images through the eval
pp), `tasks/<task>.npz` (each task's own params) and `serving.json` (the
manifest). docs/serving.md describes each file and TF Serving. The files
are written into a temporary sibling folder that then takes --out's place
(`export`), so --out never holds half an export.
"""
import contextlib
import datetime
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence
import uuid

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax import pp as pp_lib
from losa_jax.serving import multitask
from losa_jax.utils import io as io_lib
from losa_jax.utils import npz as npz_lib

JAX_FILE = "model.jax_export"
SAVED_MODEL = "saved_model"
MANIFEST = "serving.json"


def polymorphic_spec(mt: multitask.MultiTask) -> str:
  """"(b, H, W, 3)": the batch dimension is symbolic, the rest fixed."""
  return "(b, " + ", ".join(map(str, mt.image_shape)) + ")"


def export_jax(mt: multitask.MultiTask,
               platforms: Optional[Sequence[str]] = None) -> bytes:
  """The multi-task function as serialized `jax.export` StableHLO, for
  `jax.export.deserialize(...).call(images [b, *image_shape])` at every
  batch size b >= 1. platforms: e.g. ("cpu", "cuda"); default the current
  backend."""
  shape = jax.export.symbolic_shape(polymorphic_spec(mt)[1:-1])
  # The params are closed over: the artifact embeds them as constants.
  fn = jax.jit(lambda images: mt.apply(mt.params, images))
  exp = jax.export.export(fn, platforms=platforms)(
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


def checked_images(images, image_shape, pp):
  """TF: `images` once its shape is [b, *image_shape], else an
  InvalidArgumentError naming both shapes in one line (the XLA call would
  fail with a dump of its whole program)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  dims = ", ".join(map(str, image_shape))
  got = tf.strings.reduce_join(tf.strings.as_string(tf.shape(images)),
                               separator=", ")
  ok = tf.equal(got, tf.strings.join(
      [tf.strings.as_string(tf.shape(images)[0]), dims], separator=", "))
  message = tf.strings.join([
      "images have shape [", got, f"]; this model takes [b, {dims}] "
      f"float32 images, preprocessed by {pp!r} (signature "
      "serve_image_bytes takes encoded images)."])
  with tf.control_dependencies([tf.debugging.Assert(ok, [message],
                                                    name="image_shape")]):
    return tf.identity(images)


def _version(v: str):
  return tuple(int(p) for p in v.split("."))


@contextlib.contextmanager
def stablehlo_for_tf():
  """Within it, jax serializes StableHLO that the installed TensorFlow reads.

  jax writes the StableHLO version of about 4 weeks before its release, and
  TensorFlow's XlaCallModule reads versions up to its own (README.md names
  a pair that differ). jax has no public knob for the version, so its
  serializer (`_export._module_to_bytecode`) is replaced, inside the block,
  by one that targets the older of the two. Yields that version; raises
  RuntimeError naming both versions if the model cannot be written for it.
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
  """Writes a TF SavedModel of `mt` to `path`, a new or empty folder;
  returns `path`. The params are tf.Variables (under variables/: no 2 GiB
  GraphDef limit); images are shape-checked (`checked_images`) first."""
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
    return tf_apply(variables, checked_images(images, mt.image_shape, mt.pp))

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
  if _files(path):
    raise FileExistsError(f"{path} holds files: save_tf writes a new or "
                          "empty folder (export() swaps a whole folder in).")
  with stablehlo_for_tf():   # traced (and serialized) here
    tf.saved_model.save(module, path, signatures=signatures)
  return path


def save_task_params(mt: multitask.MultiTask, folder: str) -> Dict[str, int]:
  """tasks/<name>.npz per task (params only); returns {name: bytes}."""
  sizes = {}
  for name, p in mt.params["tasks"].items():
    path = npz_lib.save_npz(jax.device_get(p), os.path.join(folder,
                                                            f"{name}.npz"))
    sizes[name] = os.path.getsize(path)
  return sizes


def _files(folder: str) -> List[str]:
  """What `folder` holds, relative and sorted: files, and folders with a
  trailing "/" ([] for a missing folder)."""
  out = []
  for root, dirs, names in os.walk(folder):
    rel = lambda n, r=root: os.path.relpath(os.path.join(r, n), folder)
    out += [rel(d) + "/" for d in dirs] + [rel(n) for n in names]
  return sorted(out)


def _few(paths: Sequence[str]) -> str:
  return ", ".join(paths[:5]) + (f" and {len(paths) - 5} more"
                                 if len(paths) > 5 else "")


def check_out(out: str, overwrite: bool = False):
  """Refuses an `out` that holds anything unless `overwrite`, and even then
  anything that a previous export there did not write (serving.json's
  "files"): export deletes nothing else."""
  if os.path.exists(out) and not os.path.isdir(out):
    raise FileExistsError(f"--out {out} is a file: give a folder.")
  held = _files(out)
  if held and not overwrite:
    raise FileExistsError(
        f"--out {out} is not empty ({_few(held)}): give a new or empty "
        "folder, or --overwrite (overwrite=True) to replace the export "
        "there.")
  try:   # what a previous export lists in its serving.json
    written = list(io_lib.read_json(os.path.join(out, MANIFEST)).get(
        "files") or [])
  except (OSError, ValueError, AttributeError):
    written = []
  foreign = sorted(set(held) - set(written))
  if foreign:
    raise FileExistsError(
        f"--out {out} holds what no export wrote there ({_few(foreign)}): "
        f"--overwrite replaces only the files its {MANIFEST} lists and "
        "deletes nothing else. Move them away or give another --out.")


def _sibling(out: str, what: str) -> str:
  return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}."
                      f"{what}-{uuid.uuid4().hex[:8]}")


def export(mt: multitask.MultiTask, out: str, *,
           platforms: Optional[Sequence[str]] = None,
           saved_model: bool = True, image_bytes: bool = True,
           overwrite: bool = False) -> Dict[str, Any]:
  """Writes every artifact of the module doc to `out` (see `check_out`);
  returns the manifest. On an error the temporary folder is removed and
  `out` is left as it was."""
  out = os.path.normpath(out)
  check_out(out, overwrite)
  tmp = _sibling(out, "tmp")
  os.makedirs(tmp)
  try:
    manifest = _write_all(mt, tmp, platforms=platforms,
                          saved_model=saved_model, image_bytes=image_bytes)
    check_out(out, overwrite)   # what --out holds now, just before the swap
    if not _files(out):
      os.replace(tmp, out)    # atomic; replaces an empty folder
    else:
      old = _sibling(out, "old")
      os.rename(out, old)
      os.rename(tmp, out)
      shutil.rmtree(old)      # a previous export's files only (check_out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def _write_all(mt: multitask.MultiTask, out: str, *, platforms,
               saved_model: bool, image_bytes: bool) -> Dict[str, Any]:
  """Writes the artifacts into the new folder `out`; returns the manifest."""
  data = export_jax(mt, platforms)
  with open(os.path.join(out, JAX_FILE), "wb") as f:
    f.write(data)
  sizes = save_task_params(mt, os.path.join(out, "tasks"))
  counts = mt.param_counts()
  manifest = {
      "tasks": [{"name": t.name, "method": t.method,
                 "num_classes": t.model.num_classes, "workdir": t.workdir,
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
  # What a later --overwrite may replace (and nothing else).
  manifest["files"] = sorted(_files(out) + [MANIFEST])
  io_lib.write_json(os.path.join(out, MANIFEST), manifest, indent=1)
  return manifest
