# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
r"""Per-device memory of a LoSA train step under FSDP, from the compiler.

  python -m losa_jax.bench.fsdp_memory [--variant e/14] [--fsdp 1,4,8] \
      [--batch_per_device 4] [--depths 56] [--json out.json]
  python -m losa_jax.bench.fsdp_memory --help     # every flag

Compiles the real train step (`build.build` + `steps.train_step_fn`) of a
LoSA model (scanned blocks, bf16 matmuls via `dtype_mm`, frozen backbone
stored in bf16, side network + head + AdamW state in f32) on abstract
inputs - nothing is materialised - for meshes [("fsdp", n)] over n of 8
fake CPU devices, with the default strategy (backbone FSDP over "fsdp",
everything else replicated) and batches split over the same axis, so each
device always sees `--batch_per_device` images. XLA's memory analysis of
an SPMD executable is per device.

Columns: params / opt = bytes of this device's shards of the params and
optimizer state (from the shardings); args, temp, out = XLA's argument,
temporary and output bytes; peak = args + out + temp - aliased (the state
is donated). With several --depths the script fits peak ~ a + b * depth per
mesh and extrapolates to the variant's full depth, for machines where the
full model takes too long to compile.

Like losa_jax.bench.suite, compiles run with XLA's while-loop-invariant
code motion disabled (--licm keeps it): XLA:CPU has no bf16 GEMM, converts
bf16 weights to f32, and that pass hoists the conversion of the whole
scanned weight stack out of the layer loop - a copy that GPU/TPU (native
bf16 dots) never make.
"""
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import app
from absl import flags

from losa_jax.bench import common

MIB, GIB = common.MIB, common.GIB
LICM_OFF = common.LICM_OFF
NUM_DEVICES = 8
FLAG_NAMES = ("variant", "fsdp", "depths", "batch_per_device", "licm", "json")


def make_config(variant: str, depth: int = 0, num_classes: int = 1000):
  """LoSA on `variant` at 224 px, scanned, bf16 matmuls; AdamW, rank 8."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from losa_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  bb = dict(variant=variant, pool_type="tok", scan=True, dtype_mm="bfloat16")
  if depth:
    bb["depth"] = depth
  c = ml_collections.ConfigDict()
  c.num_classes = num_classes
  c.image_size = 224
  c.model = dict(method="losa", backbone=bb, losa=dict(rank=8))
  c.optax_name = "adamw"
  c.lr = 1e-3
  c.wd = 1e-4
  c.grad_clip_norm = 1.0
  c.schedule = dict(warmup_steps=0, decay_type="cosine")
  c.sharding_strategy = sharding.DEFAULT_STRATEGY
  return c


def _bf16_frozen(state_shape, mask):
  """Abstract state with the frozen float params in bf16 (their storage)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from losa_jax.utils import tree as tree_lib  # pylint: disable=g-import-not-at-top
  params = tree_lib.unflatten({
      n: v if mask[n] or not jnp.issubdtype(v.dtype, jnp.floating)
      else jax.ShapeDtypeStruct(v.shape, jnp.bfloat16)
      for n, v in tree_lib.flatten(state_shape["params"]).items()})
  return {**state_shape, "params": params}


def _local_bytes(tree_shape, tree_sharding) -> int:
  """Bytes one device holds of a tree, from each leaf's shard shape."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  total = 0
  for x, s in zip(jax.tree.leaves(tree_shape), jax.tree.leaves(tree_sharding)):
    shard = s.shard_shape(x.shape)
    total += int(np.prod(shard, dtype=np.int64)) * np.dtype(x.dtype).itemsize
  return total


def measure(variant: str, depth: int, fsdp: int,
            batch_per_device: int) -> Dict[str, Any]:
  """Compiled per-device memory of one train step on a ("fsdp", n) mesh."""
  import jax  # pylint: disable=g-import-not-at-top
  from losa_jax.assembly import build  # pylint: disable=g-import-not-at-top
  from losa_jax.utils import cost  # pylint: disable=g-import-not-at-top
  from losa_jax.parallel import sharding  # pylint: disable=g-import-not-at-top
  from losa_jax.assembly import steps  # pylint: disable=g-import-not-at-top
  from losa_jax.utils import tree as tree_lib  # pylint: disable=g-import-not-at-top
  config = make_config(variant, depth)
  mesh = sharding.make_mesh([("fsdp", fsdp)], devices=jax.devices()[:fsdp])
  built = build.build(config, total_steps=1000, mesh=mesh)
  state_shape = _bf16_frozen(built.state_shape, built.mask)
  # Shardings from the bf16 shapes (the fsdp size threshold counts bytes).
  state_sh = sharding.infer_state_sharding(state_shape, mesh,
                                           config.sharding_strategy)
  step = steps.train_step_fn(built.model, built.tx, built.mask,
                             schedule_fns=built.schedule_fns)
  jitted = steps.jit_train_step(step, mesh, state_sh, donate=True)
  abstract_state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state_shape, state_sh)
  batch = steps.abstract_batch(batch_per_device * fsdp, built.image_shape)
  t0 = time.time()
  c = cost.compiled_cost(jitted, abstract_state, batch)
  params = state_shape["params"]
  frozen = {n: not m for n, m in built.mask.items()}
  return {
      "variant": variant, "depth": depth or None, "fsdp": fsdp,
      "global_batch": batch_per_device * fsdp,
      "total_params": tree_lib.count(params),
      "trainable_params": built.num_trainable(),
      "params_bytes": _local_bytes(params, state_sh["params"]),
      "frozen_bytes_total": sum(
          int(v.size) * v.dtype.itemsize
          for n, v in tree_lib.flatten(params).items() if frozen[n]),
      "opt_bytes": _local_bytes(state_shape["opt"], state_sh["opt"]),
      "argument_bytes": c["argument_bytes"], "temp_bytes": c["temp_bytes"],
      "output_bytes": c["output_bytes"], "alias_bytes": c["alias_bytes"],
      "peak_bytes": c["peak_bytes"], "compile_s": time.time() - t0,
  }


def fit(rows: Sequence[Dict[str, Any]], full_depth: int):
  """Per fsdp size: least squares peak ~ a + b * depth; predicted full."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = []
  for n in sorted({r["fsdp"] for r in rows}):
    rs = sorted((r for r in rows if r["fsdp"] == n), key=lambda r: r["depth"])
    if len(rs) < 2:
      continue
    d = np.array([r["depth"] for r in rs], float)
    row = {"fsdp": n, "depths": d.tolist()}
    for key in ("peak_bytes", "params_bytes", "temp_bytes"):
      y = np.array([r[key] for r in rs], float)
      b, a = np.polyfit(d, y, 1)
      resid = float(np.max(np.abs(a + b * d - y)) / max(np.max(y), 1.0))
      row[key] = {"per_block": float(b), "intercept": float(a),
                  "max_rel_residual": resid,
                  "at_full_depth": float(a + b * full_depth)}
    out.append(row)
  return out


def table(rows: Sequence[Dict[str, Any]]) -> str:
  base = {r["depth"]: r["peak_bytes"] for r in rows if r["fsdp"] == 1}
  lines = ["| depth | devices (fsdp) | global batch | params/dev | "
           "opt/dev | XLA args | XLA temp | XLA out | peak/dev | vs 1 dev |",
           "|" + "---|" * 10]
  for r in rows:
    ratio = (f"{r['peak_bytes'] / base[r['depth']]:.2f}x"
             if r["depth"] in base else "")
    lines.append(
        f"| {r['depth']} | {r['fsdp']} | {r['global_batch']} | "
        f"{r['params_bytes'] / GIB:.2f} GiB | {r['opt_bytes'] / MIB:.1f} MiB | "
        f"{r['argument_bytes'] / GIB:.2f} GiB | {r['temp_bytes'] / GIB:.2f} GiB"
        f" | {r['output_bytes'] / GIB:.2f} GiB | "
        f"**{r['peak_bytes'] / GIB:.2f} GiB** | {ratio} |")
  return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """This tool's flags; defined on demand, so importing claims no names."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string("variant", "e/14", "ViT variant of the LoSA backbone.",
                      **fv)
  flags.DEFINE_list("fsdp", ["1", "4", "8"], "Mesh sizes (devices on the "
                    f"'fsdp' axis) to compile for, each <= {NUM_DEVICES}.",
                    **fv)
  flags.DEFINE_list("depths", [], "Depths to compile at; empty: the "
                    "variant's own. Several depths fit peak ~ a + b * depth "
                    "and extrapolate to the full depth.", **fv)
  flags.DEFINE_integer("batch_per_device", 4, "Images per device (the global "
                       "batch is this times the mesh size).", lower_bound=1,
                       **fv)
  flags.DEFINE_bool("licm", False, "Keep XLA's while-loop-invariant code "
                    "motion (see the module docstring).", **fv)
  flags.DEFINE_string("json", "", "If set, a JSON file for the rows, fits "
                      "and provenance.", **fv)


def run(variant: str, fsdp: Sequence[int], depths: Sequence[int],
        batch_per_device: int, licm: bool = False, json_path: str = "",
        command: str = ""):
  """Compiles every (depth, mesh size), prints the table; returns
  (rows, fits). Must run before anything starts JAX's backend."""
  bad = [n for n in fsdp if not 1 <= n <= NUM_DEVICES]
  if bad:
    raise ValueError(f"--fsdp sizes {bad} are outside 1..{NUM_DEVICES} (the "
                     "fake CPU devices); pass smaller mesh sizes.")
  # Before JAX's backend starts: 8 fake devices and the XLA flags.
  if not licm:
    common.with_xla_flags(LICM_OFF)
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_platforms", "cpu")
  jax.config.update("jax_num_cpu_devices", NUM_DEVICES)
  from losa_jax.models import vit  # pylint: disable=g-import-not-at-top

  full_depth = vit.decode_variant(variant)["depth"]
  depths = list(depths) or [full_depth]
  rows: List[Dict[str, Any]] = []
  for depth in depths:
    for n in fsdp:
      r = measure(variant, depth if depth != full_depth else 0, n,
                  batch_per_device)
      r["depth"] = depth
      rows.append(r)
      print(f"depth {depth} fsdp {n}: peak {r['peak_bytes'] / GIB:.2f} GiB/dev"
            f" (params {r['params_bytes'] / GIB:.2f} GiB/dev), compiled in "
            f"{r['compile_s']:.0f} s", file=sys.stderr, flush=True)
  fits = fit(rows, full_depth) if len(depths) > 1 else []
  print(f"LoSA {variant} (full depth {full_depth}), 224 px, scanned, bf16 "
        f"matmuls and frozen params, {batch_per_device} images/device")
  print(table(rows))
  for f in fits:
    pk = f["peak_bytes"]
    print(f"fsdp {f['fsdp']}: peak = {pk['intercept'] / GIB:.3f} GiB + "
          f"{pk['per_block'] / MIB:.1f} MiB x depth (max residual "
          f"{100 * pk['max_rel_residual']:.2f}%) -> depth {full_depth}: "
          f"{pk['at_full_depth'] / GIB:.2f} GiB/dev")
  if json_path:
    meta = common.provenance(command, variant=variant, full_depth=full_depth,
                             batch_per_device=batch_per_device)
    common.write_json(json_path, {"meta": meta, "rows": rows, "fits": fits})
  return rows, fits


def _run_flags(fv: flags.FlagValues, argv: Sequence[str]):
  try:
    sizes, depths = common.int_list(",".join(fv.fsdp)), common.int_list(
        ",".join(fv.depths))
  except ValueError as e:
    raise app.UsageError(f"--fsdp / --depths: {e}") from None
  return run(fv.variant, sizes, depths, fv.batch_per_device, fv.licm,
             fv.json, "python -m losa_jax.bench.fsdp_memory " + " ".join(argv))


def main(argv: Optional[Sequence[str]] = None):
  """Programmatic entry: `argv` = the flags (a private FlagValues parses
  them); returns (rows, fits)."""
  return _run_flags(*common.parse_private_flags(
      "losa_jax.bench.fsdp_memory", define_flags, argv))


if __name__ == "__main__":
  define_flags()
  app.run(common.absl_main(_run_flags))
