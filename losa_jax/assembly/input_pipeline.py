# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Deterministic, resumable, per-process batches from any `datasets` source.

Sources (what the examples are and where they come from) live in
`losa_jax.datasets` and are found by name; this module only decides the
order, the seeds and the sharding of the stream over processes.

Training order (`training`): epoch e visits the examples in a permutation
derived from (seed, e), and example k of the epoch gets the augmentation
seed f(seed, e, k) (int64 [2], used by the random pp ops). Global step s
therefore maps to fixed (epoch, position) pairs, so `start_step=s` resumes
by arithmetic, without replaying earlier batches. Random-access sources
visit the exact `epoch_permutation`, cut to this process's rows before any
example is read; big TFRecord-only TFDS splits are streamed, each process a
windowed shuffle of its own share (docs/scaling.md, "Input at pod scale").

Batches. A global batch holds `batch_size` examples; process p of P receives
rows [p * b, (p + 1) * b) with b = batch_size // P, as numpy dicts with the
keys the pp produces (typically "image" float32 [b, H, W, 3] and "label" int
[b]). `evaluation` also adds "_mask" float32 [b] (1 real, 0 padding).
"""
import math
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple, Union

import jax
import numpy as np
import tensorflow as tf

from losa_jax.datasets import core
from losa_jax.parallel import sharding as sharding_lib
from losa_jax import pp as pp_lib

Source = core.Source

AUTOTUNE = tf.data.AUTOTUNE
PpSpec = Union[None, str, Sequence[str], Callable]

# --- Seeds and order --------------------------------------------------------


def _check_seed(seed: int) -> int:
  seed = int(seed)
  if not 0 <= seed < 2**62:
    raise ValueError(f"seed must be in [0, 2**62), got {seed}.")
  return seed


def _fold(seed: int, *data) -> tf.Tensor:
  """Stateless seed (int64 [2]) derived from `seed` and int scalars."""
  s = tf.constant([seed, 0x5EED], tf.int64)
  for d in data:
    s = tf.random.experimental.stateless_fold_in(s, tf.cast(d, tf.int64))
  return tf.cast(s, tf.int64)


def epoch_permutation(seed: int, epoch, n: int) -> tf.Tensor:
  """The visiting order of epoch `epoch`: a permutation of [0, n), int64."""
  return tf.random.experimental.stateless_shuffle(
      tf.range(n, dtype=tf.int64), seed=_fold(seed, 0, epoch))


def _make_pp(pp: PpSpec) -> Callable:
  return pp if callable(pp) else pp_lib.get_preprocess_fn(pp)


def _with_pp(pp_fn, seed, epoch, k):
  """Returns map fn(raw example) -> preprocessed example."""
  return lambda ex: pp_lib.run_seeded(pp_fn, ex, _fold(seed, 1, epoch, k))


def _options() -> tf.data.Options:
  opts = tf.data.Options()
  opts.deterministic = True
  return opts


def _check_processes(batch_size: int, process_index: int,
                     process_count: int):
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be positive and divisible"
                     f" by process_count {process_count}.")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in "
                     f"[0, {process_count}).")


def _own_rows(ds: tf.data.Dataset, batch_size: int, lo: int, hi: int):
  """Keeps elements whose row (position % batch_size) is in [lo, hi).

  The dataset must start at a global batch boundary. Filtering happens
  before the pp, so each process only preprocesses its own rows.
  """
  if (lo, hi) == (0, batch_size):
    return ds
  ds = ds.enumerate()
  return ds.filter(lambda j, _: tf.logical_and(j % batch_size >= lo,
                                               j % batch_size < hi)).map(
                                                   lambda j, x: x)


# --- Training ---------------------------------------------------------------


class TrainIterator:
  """Infinite iterator of numpy batches; `step` = global batches consumed.

  Checkpoint `it.step` (or `it.state()`); `training(..., start_step=it.step)`
  rebuilds an iterator that continues with exactly the batches this one
  would have yielded next.
  """

  def __init__(self, ds: tf.data.Dataset, *, start_step: int,
               num_examples: int, steps_per_epoch: float, random_access: bool,
               source: Source):
    self._ds, self._source, self._it = ds, source, None
    self.step, self.num_examples = start_step, num_examples
    self.steps_per_epoch, self.random_access = steps_per_epoch, random_access

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    if self._it is None:
      self._it = self._ds.as_numpy_iterator()
    try:
      batch = next(self._it)
    except tf.errors.InvalidArgumentError as e:
      # A decode failure inside tf.data names no file: ask the source.
      core.raise_diagnosed(self._source, e)
    self.step += 1
    return batch

  def state(self) -> Dict[str, int]:
    return {"step": self.step}


def start_position(step: int, batch_size: int, n: int,
                   drop_remainder: bool) -> Tuple[int, int]:
  """(epoch, position in epoch) of the first example of global batch `step`.

  The resume arithmetic of every stream in this project (the feature cache's
  batches follow the same order).
  """
  if drop_remainder:
    spe = n // batch_size
    return step // spe, (step % spe) * batch_size
  return divmod(step * batch_size, n)


def training(source: Source, *, batch_size: int, pp: PpSpec, seed: int,
             shuffle: bool = True, start_step: int = 0, process_index: int = 0,
             process_count: int = 1, drop_remainder: bool = True,
             shuffle_buffer_size: int = 50_000,
             num_parallel_calls: int = AUTOTUNE,
             prefetch: int = 2) -> Tuple[TrainIterator, int]:
  """Infinite, deterministic, resumable training batches for one process.

  Args:
    source: the data.
    batch_size: GLOBAL batch size; must be divisible by process_count.
    pp: pp spec (string / list of strings) or a callable on one example.
    seed: data seed, in [0, 2**62): epoch orders and augmentation.
    shuffle: if False, every epoch is in source order.
    start_step: number of global batches already consumed (resume point).
    process_index, process_count: this process and the number of processes;
      each process gets rows [p * b, (p + 1) * b) of every global batch,
      b = batch_size // process_count.
    drop_remainder: True - each epoch yields n // batch_size full batches and
      its last n % batch_size examples (random ones, as the order changes)
      are skipped, like PyTorch's drop_last in the PETL literature; False -
      epochs are concatenated, so a batch may straddle two epochs and no
      example is ever skipped. Batches are full either way.
    shuffle_buffer_size: streaming mode only (big TFDS splits).
    num_parallel_calls, prefetch: tf.data parallelism.

  Returns:
    (iterator, num_examples): the iterator yields dicts of numpy arrays with
    the pp's keys and leading dim batch_size // process_count; `it.step`
    counts the global batches consumed (start_step included).
  """
  _check_processes(batch_size, process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  seed = _check_seed(seed)
  pp_fn = _make_pp(pp)
  local = batch_size // process_count

  table = source.table()
  shard = None if table is not None or process_count == 1 else source.shard(
      process_index, process_count)
  n = table.num_examples if table is not None else source.count()
  if n == 0:
    raise ValueError(f"{source.name} has no examples.")
  if drop_remainder and n < batch_size:
    raise ValueError(
        f"{source.name} has {n} examples, fewer than batch_size {batch_size}:"
        " use a smaller batch or drop_remainder=False.")
  if shard is not None:
    ds, spe = _streamed_shard(shard, n, local=local, process_count=process_count,
                              seed=seed, shuffle=shuffle, start_step=start_step,
                              shuffle_buffer_size=shuffle_buffer_size,
                              salt=process_index)
  else:
    ds = _global_stream(source, table, n, batch_size=batch_size, seed=seed,
                        shuffle=shuffle, start_step=start_step,
                        drop_remainder=drop_remainder,
                        shuffle_buffer_size=shuffle_buffer_size)
    ds = _own_rows(ds, batch_size, process_index * local,
                   (process_index + 1) * local)
    spe = n // batch_size if drop_remainder else n / batch_size
  ds, fetch = _fetcher(ds, table, local)
  ds = ds.map(lambda e, k, x: _with_pp(pp_fn, seed, e, k)(fetch(x)),
              num_parallel_calls=num_parallel_calls)
  ds = ds.batch(local, drop_remainder=True).prefetch(prefetch)
  ds = ds.with_options(_options())
  it = TrainIterator(ds, start_step=start_step, num_examples=n,
                     steps_per_epoch=spe, random_access=table is not None,
                     source=source)
  return it, n


def _fetcher(ds: tf.data.Dataset, table, chunk: int):
  """(ds, fetch): `fetch(x)` maps the last element of ds's (.., x) tuples to
  the raw example. ArrayRecord tables read `chunk` records per call."""
  if table is None:
    return ds, lambda ex: ex
  if not hasattr(table, "read"):
    return ds, table.lookup
  ds = ds.batch(chunk).map(lambda *t: (*t[:-1], table.read(t[-1])),
                           num_parallel_calls=AUTOTUNE).unbatch()
  return ds, table.decode


def raw_examples(source: Source, start: int, stop: int) -> tf.data.Dataset:
  """The raw examples [start, stop) of `source`'s order, reading only those
  where the source has random access."""
  table = source.table()
  if table is None:
    return source.as_dataset().skip(start).take(stop - start)
  ds = tf.data.Dataset.range(start, stop).map(lambda i: (i,))
  ds, fetch = _fetcher(ds, table, 256)
  return ds.map(lambda i: fetch(i))


def _global_stream(source, table, n, *, batch_size, seed, shuffle, start_step,
                   drop_remainder, shuffle_buffer_size) -> tf.data.Dataset:
  """(epoch, position, index or raw example) of the global order from
  `start_step` on: a permutation of indices, or a windowed shuffle."""
  per_epoch = (n // batch_size) * batch_size if drop_remainder else n
  e0, k0 = start_position(start_step, batch_size, n, drop_remainder)
  if table is not None:
    def epoch_ds(e):
      order = (epoch_permutation(seed, e, n) if shuffle
               else tf.range(n, dtype=tf.int64))
      d = tf.data.Dataset.from_tensor_slices(order[:per_epoch]).enumerate()
      return d.map(lambda k, i: (e, k, i))
    return tf.data.Dataset.range(e0, 2**62).flat_map(epoch_ds).skip(k0)
  return _windowed_epochs(source.as_dataset(), per_epoch, e0, k0, seed=seed,
                          shuffle=shuffle, buffer=shuffle_buffer_size)


def _windowed_epochs(raw: tf.data.Dataset, per_epoch: int, e0: int, k0: int,
                     *, seed: int, shuffle: bool, buffer: int, salt: int = 0
                     ) -> tf.data.Dataset:
  """(epoch, position, raw example) from position k0 of epoch e0 on: each
  epoch takes `per_epoch` examples of a windowed shuffle of `raw`."""
  base = (seed * 1_000_003 + salt * 7_919) % 2**61   # Epoch e: seed base + e.

  def epoch_ds(e):
    d = raw
    if shuffle:
      d = d.shuffle(buffer, seed=base + e, reshuffle_each_iteration=False)
    return d.take(per_epoch).enumerate().map(lambda k, ex: (e, k, ex))
  # Jump straight to epoch e0; skipping k0 within it reads k0 raw examples.
  return tf.data.Dataset.range(e0, 2**62).flat_map(epoch_ds).skip(k0)


def _streamed_shard(shard: Source, n: int, *, local, process_count, seed,
                    shuffle, start_step, shuffle_buffer_size, salt
                    ) -> Tuple[tf.data.Dataset, int]:
  """This process's own stream: (epoch, position, raw example), and steps
  per epoch. Every process takes the same whole number of local batches per
  epoch from its share (the smallest share has at least n // P - terms)."""
  split = getattr(shard, "split", None)   # A `+` term's share may be short.
  terms = len(core.parse_split(split)) if split else 1
  per_epoch = (max(n // process_count - terms, 0) // local) * local
  if per_epoch == 0:
    raise ValueError(f"{shard.name}: {n} examples over {process_count} "
                     f"processes leave no full batch of {local} per process.")
  e0, k0 = divmod(start_step * local, per_epoch)
  ds = _windowed_epochs(shard.as_dataset(), per_epoch, e0, k0, seed=seed,
                        shuffle=shuffle, buffer=shuffle_buffer_size,
                        salt=salt)
  return ds, per_epoch // local


# --- Evaluation -------------------------------------------------------------


class EvalIterable:
  """One ordered pass per `iter()`; every process yields `num_batches`.

  Each batch is a numpy dict with leading dim batch_size // process_count
  and "_mask" float32 (1 real, 0 padding); over all processes and batches
  every example appears exactly once with mask 1.
  """

  def __init__(self, source: Source, *, batch_size: int, pp_fn: Callable,
               process_index: int, process_count: int, seed: int,
               num_parallel_calls: int, prefetch: int):
    self._source, self._pp_fn, self._seed = source, pp_fn, seed
    self._bs = batch_size
    self._local = batch_size // process_count
    self._lo = process_index * self._local
    self._npc, self._prefetch = num_parallel_calls, prefetch
    self.num_examples = source.count()
    self.num_batches = math.ceil(self.num_examples / batch_size)
    self._template = None

  def _dataset(self) -> tf.data.Dataset:
    # With random access, rows are cut before they are read.
    table = self._source.table()
    ds = (tf.data.Dataset.range(self.num_examples).map(lambda j: (j, j))
          if table is not None else self._source.as_dataset().enumerate())
    ds = _own_rows(ds, self._bs, self._lo, self._lo + self._local)
    ds, fetch = _fetcher(ds, table, self._local)
    ds = ds.map(
        lambda j, x: _with_pp(self._pp_fn, self._seed, 0, j)(fetch(x)),
        num_parallel_calls=self._npc)
    ds = ds.batch(self._local).prefetch(self._prefetch)
    return ds.with_options(_options())

  def _zeros(self) -> Dict[str, np.ndarray]:
    """One padding row, shaped like a preprocessed example."""
    if self._template is None:
      raw = raw_examples(self._source, 0, 1)
      ex = next(raw.map(_with_pp(self._pp_fn, self._seed, 0, 0))
                .as_numpy_iterator())
      self._template = tf.nest.map_structure(_zeros_like, ex)
    return self._template

  def _pad(self, batch, num_real):
    def pad(x, z):
      fill = np.repeat(z[None], self._local - len(x), axis=0)
      return np.concatenate([x, fill]) if len(x) else fill
    if num_real == self._local:
      out = dict(batch)
    elif num_real == 0:
      out = tf.nest.map_structure(
          lambda z: np.repeat(z[None], self._local, axis=0), self._zeros())
    else:
      out = tf.nest.map_structure(pad, dict(batch), self._zeros())
    mask = np.zeros(self._local, np.float32)
    mask[:num_real] = 1.0
    out["_mask"] = mask
    return out

  def __iter__(self) -> Iterator[Dict[str, np.ndarray]]:
    count = 0
    it = self._dataset().as_numpy_iterator()
    while True:
      try:
        batch = next(it)
      except StopIteration:
        break
      except tf.errors.InvalidArgumentError as e:
        core.raise_diagnosed(self._source, e)
      n = len(next(iter(tf.nest.flatten(batch))))
      yield self._pad(batch, n)
      count += 1
    for _ in range(count, self.num_batches):
      yield self._pad(None, 0)

  def __len__(self) -> int:
    return self.num_batches


def _zeros_like(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.dtype.kind in "OSU":
    return np.full_like(x, b"" if x.dtype.kind in "OS" else "")
  return np.zeros_like(x)


def evaluation(source: Source, *, batch_size: int, pp: PpSpec,
               process_index: int = 0, process_count: int = 1, seed: int = 0,
               num_parallel_calls: int = AUTOTUNE,
               prefetch: int = 2) -> EvalIterable:
  """One in-order pass in padded batches, sharded like `training`.

  Args:
    source: the data.
    batch_size: GLOBAL batch size; must be divisible by process_count.
    pp: pp spec or callable (random ops get `_seed` = f(seed, 0, index)).
    process_index, process_count: as in `training`.
    seed: only matters for random pp ops.
    num_parallel_calls, prefetch: tf.data parallelism.

  Returns:
    A re-iterable: each `iter()` is one pass of ceil(n / batch_size)
    batches (the same count on every process), each a numpy dict with the
    pp's keys plus "_mask" float32 [batch_size // process_count]. Padding
    rows are zeros with mask 0.
  """
  _check_processes(batch_size, process_index, process_count)
  return EvalIterable(source, batch_size=batch_size, pp_fn=_make_pp(pp),
                      process_index=process_index,
                      process_count=process_count, seed=_check_seed(seed),
                      num_parallel_calls=num_parallel_calls,
                      prefetch=prefetch)


# --- Device arrays ----------------------------------------------------------

# The keys a model step reads; pp may leave more (file names, ids).
BATCH_KEYS = ("image", "label", "_mask")


def device_batches(it: Iterator, mesh,
                   keys: Optional[Sequence[str]] = BATCH_KEYS) -> Iterator:
  """Per-process numpy batches -> global arrays sharded over the data axes.

  Each input batch holds this process's rows ([batch_size // P, ...]); the
  output arrays are global [batch_size, ...] on `mesh`. Only `keys` are kept
  (None: all, e.g. the feature cache's taps). Labels become int32 (TFDS
  labels are int64; JAX runs 32-bit).
  """
  sh = sharding_lib.batch_sharding(mesh)
  for batch in it:
    if keys is not None:
      batch = {k: v for k, v in batch.items() if k in keys}
    if "label" in batch:
      batch["label"] = np.asarray(batch["label"], np.int32)
    yield jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sh, np.asarray(x)),
        batch)
