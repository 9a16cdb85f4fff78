# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""The order a cached run visits examples in (the uncached pipeline's)."""
import queue
import threading
from typing import Iterator

import numpy as np

from losa_jax.assembly import input_pipeline


def batch_indices(n: int, *, batch_size: int, seed: int, shuffle: bool = True,
                  start_step: int = 0, drop_remainder: bool = True
                  ) -> Iterator[np.ndarray]:
  """Example indices [batch_size] of global batches start_step, start_step+1, ...

  The order of `input_pipeline.training` on a random-access source: epoch e
  visits `epoch_permutation(seed, e, n)` (truncated to whole batches with
  drop_remainder, else epochs are concatenated), and step s starts at the
  same (epoch, offset) as there.
  """
  if batch_size <= 0 or (drop_remainder and n < batch_size):
    raise ValueError(f"batch_size {batch_size} does not fit {n} examples.")
  per_epoch = (n // batch_size) * batch_size if drop_remainder else n
  epoch, offset = input_pipeline.start_position(start_step, batch_size, n,
                                                drop_remainder)
  pending = np.zeros((0,), np.int64)
  while True:
    order = (input_pipeline.epoch_permutation(seed, epoch, n).numpy()
             if shuffle else np.arange(n, dtype=np.int64))
    pending = np.concatenate([pending, order[offset:per_epoch]])
    offset = 0
    epoch += 1
    while len(pending) >= batch_size:
      yield pending[:batch_size]
      pending = pending[batch_size:]


def prefetched(it: Iterator, depth: int) -> Iterator:
  """Runs `it` in a daemon thread, `depth` items ahead (gathers overlap
  the device step)."""
  if depth <= 0:
    yield from it
    return
  q: "queue.Queue" = queue.Queue(maxsize=depth)
  done = object()
  stop = threading.Event()

  def work():
    try:
      for item in it:
        while not stop.is_set():
          try:
            q.put(item, timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
      q.put(done)
    except BaseException as e:  # pylint: disable=broad-except
      q.put(e)

  threading.Thread(target=work, daemon=True).start()
  try:
    while True:
      item = q.get()
      if item is done:
        return
      if isinstance(item, BaseException):
        raise item
      yield item
  finally:
    stop.set()
