# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""What the timed and memory sections measure with: random states made in
place, random batches, one (variant, method) compiled per batch and run once
or caught out of memory (`first_call`), and the step-time loop
(`time_methods`). Imports no TensorFlow (a GPU image may lack it)."""
import gc
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from losa_jax.assembly import build
from losa_jax.bench import common
from losa_jax.bench import configs
from losa_jax.parallel import sharding as sharding_lib
from losa_jax.utils import cost

GIB = common.GIB


def is_oom(err: BaseException) -> bool:
  """Whether an exception is XLA's out-of-memory (any backend, any jax)."""
  s = str(err).lower()
  return any(k in s for k in ("resource_exhausted", "out of memory",
                              "out_of_memory", "failed to allocate"))


def mem_stats(device=None) -> Dict[str, int]:
  """device.memory_stats() (default: the first device), {} where the
  backend keeps none (XLA:CPU)."""
  try:
    return dict((device or jax.devices()[0]).memory_stats() or {})
  except Exception:  # pylint: disable=broad-except
    return {}


_CACHE: Dict[Any, Any] = {}
_BIG = 2**26   # elements above which a leaf is made row by row (256 MiB f32)


def cached(key, make: Callable) -> Any:
  """make() cached by `key` (what it makes): the jitted makers of equal
  ViT blocks compile once, and sections share built steps."""
  if key not in _CACHE:
    _CACHE[key] = make()
  return _CACHE[key]


def _noise(shape, dtype, offset):
  """A [shape] array of `dtype`, uniform-looking in [-0.035, 0.035] (std
  0.02): a sine hash of the element index + offset, which compiles far
  faster than threefry (values do not matter for time or memory)."""
  n = int(np.prod(shape))
  u = jnp.sin((jax.lax.iota(jnp.float32, n) + offset) * 12.9898) * 43758.5453
  return (0.035 * (2.0 * (u - jnp.floor(u)) - 1.0)).reshape(shape).astype(
      dtype)


def _leaf(shape, dtype, offset):
  """One leaf of random_tree: noise, zeros for a non-float dtype, and a big
  stack ([L, ...] above _BIG elements) row by row into a donated buffer."""
  key = (shape, dtype)
  zeros = cached(("zeros",) + key, lambda: jax.jit(
      lambda: jnp.zeros(shape, dtype)))
  if not jnp.issubdtype(dtype, jnp.floating):
    return zeros()
  if np.prod(shape) <= _BIG or len(shape) < 2 or shape[0] == 1:
    return cached(("noise",) + key, lambda: jax.jit(
        lambda off: _noise(shape, dtype, off)))(offset)
  fill = cached(("row",) + key, lambda: jax.jit(
      lambda buf, r, off: buf.at[r].set(_noise(shape[1:], dtype, off)),
      donate_argnums=0))
  x = zeros()
  for r in range(shape[0]):
    x = fill(x, r, offset + r)
  return x


def random_tree(shape_tree, shardings=None, seed: int = 0):
  """Random-looking arrays (_noise; zeros for non-float leaves) of
  `shape_tree`'s shapes and dtypes, made on the device in `shardings`. A big
  leaf is made row by row, so making a ViT-e/14 state does not set the peak
  its step is measured by."""
  leaves, treedef = jax.tree.flatten(shape_tree)
  shs = (jax.tree.leaves(shardings, is_leaf=lambda x: x is None)
         if shardings is not None else [None] * len(leaves))
  out = []
  for i, (leaf, sh) in enumerate(zip(leaves, shs)):
    x = _leaf(tuple(leaf.shape), jnp.dtype(leaf.dtype),
              float(seed * 7919 + i * 131))
    out.append(x if sh is None else jax.device_put(x, sh))
  return jax.tree.unflatten(treedef, out)


def state_from_params(built, params, seed: int = 0):
  """A train state of `built` around `params` (already in its sharding):
  the optimizer's fresh state, step 0, rng key `seed`."""
  sh = built.state_sharding
  return {"params": params,
          "opt": jax.jit(built.tx.init, out_shardings=sh["opt"])(params),
          "step": jax.device_put(jnp.zeros((), jnp.int32), sh["step"]),
          "rng": jax.device_put(jax.random.key(seed), sh["rng"])}


def abstract_state(built):
  """built's train state as ShapeDtypeStructs in its shardings."""
  return cost.abstract(built.state_shape, built.state_sharding)


def random_state(built, seed: int = 0):
  """A train state like built.init's, with random params made in their
  final dtype (built.init makes f32 params, then casts the frozen ones: a
  transient 1.5x the state that would mask a small step's peak)."""
  state = state_from_params(built, random_tree(
      built.state_shape["params"], built.state_sharding["params"], seed),
                            seed)
  same = jax.tree.structure(state) == jax.tree.structure(built.state_shape)
  if not same:  # an optimizer whose state depends on the init path
    del state
    return built.init(jax.random.key(seed))
  return state


def make_batch(built, bsz: int, num_classes: int, seed: int = 0):
  """A random {"image": [bsz, H, W, 3] f32 in [-1, 1], "label": [bsz]
  int32} made on the device in the train step's batch sharding."""
  sh = sharding_lib.batch_sharding(built.mesh)
  shape = (bsz, *built.image_shape)
  make = cached(("batch", shape, num_classes, sh), lambda: jax.jit(
      lambda k: {
          "image": jax.random.uniform(k, shape, jnp.float32, -1.0, 1.0),
          "label": jax.random.randint(k, (bsz,), 0, num_classes, jnp.int32)},
      out_shardings=sh))
  return make(jax.random.key(seed))


class Method:
  """One (variant, method): its config, state and compiled calls per batch;
  "forward" is the frozen backbone's inference forward (on LoSA's config),
  every other method the real train step, its state donated."""

  def __init__(self, variant: str, method: str, spec: Dict[str, Any], *,
               scan: Optional[bool] = None, remat: Optional[bool] = None):
    self.variant, self.method = variant, method
    self.remat = spec["remat"] if remat is None else remat
    self.config = configs.make_config(
        variant, "losa" if method == "forward" else method, bf16=spec["bf16"],
        scan=spec["scan"] if scan is None else scan, remat=self.remat,
        depth=spec.get("depth"))
    self.built = build.build(self.config, total_steps=1000)
    if method == "forward":
      fn, self.shape = build.backbone_forward(self.config)
      self.jitted, self.trainable = jax.jit(fn), 0
    else:
      self.jitted = self.built.train_step
      self.trainable = self.built.num_trainable()
    self.reset_state()

  def reset_state(self):
    """(Re)makes the state (a failed donated call may have deleted it)."""
    self.state = None
    gc.collect()
    self.state = (random_tree(self.shape) if self.method == "forward"
                  else random_state(self.built))

  def state_deleted(self) -> bool:
    return any(x.is_deleted() for x in jax.tree.leaves(self.state))

  def batch(self, bsz: int):
    b = make_batch(self.built, bsz, self.config.num_classes)
    return b["image"] if self.method == "forward" else b

  def compile(self, batch):
    """(compiled executable, losa_jax.utils.cost fields of it) for this batch."""
    compiled = self.jitted.lower(self.state, batch).compile()
    return compiled, cost.cost_of_compiled(compiled)

  def runner(self, compiled, batch) -> Callable[[], Any]:
    """A zero-argument call that runs one blocking step (returning its
    metrics) or forward."""

    def run():
      if self.method == "forward":
        return jax.block_until_ready(compiled(self.state, batch))
      self.state, metrics = compiled(self.state, batch)
      return jax.block_until_ready((self.state, metrics))[1]

    return run


class Stepper:
  """Holds a donated train state and runs one blocking step per call, on
  `batch` or, if it is an iterator, on its next batch."""

  def __init__(self, step, state, batch):
    self.step, self.state, self.batch = step, state, batch

  def __call__(self):
    batch = (next(self.batch) if hasattr(self.batch, "__next__")
             else self.batch)
    self.state, metrics = self.step(self.state, batch)
    jax.block_until_ready((self.state, metrics))


def first_call(m: Method, bsz: int, *, runs: int = 1,
               max_peak: Optional[float] = None):
  """Compiles `m` at `bsz` and runs it `runs` times: (blocking runner, cost
  fields, device bytes in use before compiling), or None where it ran out
  of memory (the state is remade if the failed call deleted it) or its
  compiled peak is above `max_peak` (then it never runs)."""
  try:
    batch = m.batch(bsz)
    resident = mem_stats().get("bytes_in_use") or 0
    compiled, c = m.compile(batch)
    if max_peak is not None and c["peak_bytes"] > max_peak:
      return None
    fn = m.runner(compiled, batch)
    for _ in range(runs):
      fn()
    return fn, c, resident
  except Exception as e:  # pylint: disable=broad-except
    if not is_oom(e):
      raise
    if m.state_deleted():
      m.reset_state()
    return None


def _ready(variant, methods, remats, spec, bsz):
  """name -> (runner, cost fields, status) of every method that runs at
  `bsz`; a train step out of memory is retried with per-block remat
  (status "ok+remat": it then pays a second backbone forward)."""
  out = {}
  for name, m in methods.items():
    got, status = first_call(m, bsz), "ok"
    if got is None:
      common.log(f"timing {variant} b{bsz} {name}: out of memory")
      if name == "forward" or m.remat or not spec["scan"]:
        continue
      if name not in remats:
        remats[name] = Method(variant, name, spec, remat=True)
      got, status = first_call(remats[name], bsz), "ok+remat"
    if got is not None:
      out[name] = (*got[:2], status)
    gc.collect()
  return out


def time_methods(variant: str, names, spec: Dict[str, Any], *,
                 extra: Optional[Callable] = None):
  """Interleaved step times of the methods `names` of `variant` (Method;
  "forward" among them for the vs_forward ratios) at each of
  spec["batches"], with spec's bf16, scan, remat, depth, reps and warmup;
  extra(methods, bsz): more name -> (runner, cost fields, trainable) timed
  in the same rounds. One row per (batch, name): status ("ok", "ok+remat",
  "oom"), trainable_params, time statistics, images_per_s, vs_forward,
  compiled_peak_gib and, unrolled, gflop, tflops_per_s, flops_vs_forward."""
  methods = {m: Method(variant, m, spec) for m in names}
  remats: Dict[str, Method] = {}
  rows = []
  for bsz in spec["batches"]:
    ready = _ready(variant, methods, remats, spec, bsz)
    trainable = {n: m.trainable for n, m in methods.items()}
    if extra is not None:
      for name, (fn, c, n) in extra(methods, bsz).items():
        ready[name], trainable[name] = (fn, c, "ok"), n
    common.log(f"timing {variant} b{bsz}: {list(ready)}")
    times = common.interleaved({n: r[0] for n, r in ready.items()},
                               reps=spec["reps"], warmup=spec["warmup"]
                               ) if ready else {}
    rows += [_time_row(variant, bsz, name, trainable[name], ready, times,
                       spec["scan"]) for name in trainable]
    del ready
    gc.collect()
  return rows


def _time_row(variant, bsz, name, trainable, ready, times, scan):
  """One row of time_methods."""
  row = {"variant": variant, "method": name, "batch": bsz,
         "status": ready[name][2] if name in ready else "oom",
         "trainable_params": trainable}
  if name not in times:
    return row
  t, c = times[name], ready[name][1]
  med = t["median_s"]
  row.update({k: v for k, v in t.items() if k != "times_s"},
             images_per_s=bsz / med, compiled_peak_gib=c["peak_bytes"] / GIB)
  fwd = times.get("forward", {}).get("median_s")
  if fwd:
    row["vs_forward"] = med / fwd
  # XLA counts a scanned (while-loop) backbone's body once: its FLOPs are
  # one block's, so they are only reported for unrolled blocks.
  if not scan:
    row.update(gflop=c["flops"] / 1e9, tflops_per_s=c["flops"] / med / 1e12)
    if "forward" in ready:
      row["flops_vs_forward"] = c["flops"] / ready["forward"][1]["flops"]
  return row
