# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Input section: does the input pipeline (`input_pipeline.training`) feed
LoSA's step? Against a plain `tf.data` reference on the same pp and encoded
data; pipelines run one at a time, the order rotated per round, so only
ratios within one run mean anything.
"""
import contextlib
import os
import shutil
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from losa_jax import pp as pp_lib
from losa_jax.assembly import input_pipeline as ip
from losa_jax.bench import common
from losa_jax.datasets import arrays
from losa_jax.datasets import records
from losa_jax.datasets import tfds as ds_tfds

IMAGE_PP = ("decode|inception_crop(224)|flip_lr|value_range(-1, 1)|"
            "keep('image', 'label')")
VIDEO_PP = ("video_sample(16, stride=2, mode='random')|video_decode|"
            "video_scale_jitter(224, 1.0, 1.33)|video_random_crop(224)|"
            "video_flip_lr|value_range(-1, 1, key='video')|"
            "copy('video', 'image')|keep('image', 'label')")
_NAME = "losa_bench_jpeg"


@contextlib.contextmanager
def pinned(cores: int):
  """Every thread of this process (and those it starts) on `cores` CPUs."""
  allowed = sorted(os.sched_getaffinity(0))
  tids = [int(t) for t in os.listdir("/proc/self/task")]
  for t in tids:
    with contextlib.suppress(OSError):
      os.sched_setaffinity(t, allowed[:cores])
  try:
    yield
  finally:
    for t in [int(t) for t in os.listdir("/proc/self/task")]:
      with contextlib.suppress(OSError):
        os.sched_setaffinity(t, allowed)


def _jpegs(n: int, h: int, w: int, seed: int) -> Iterator[np.ndarray]:
  """Smooth gradients with blocky noise: JPEG sizes of natural photos."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w]
  for _ in range(n):
    base = rng.uniform(0, 255, 3)[None, None] + 0.3 * (yy + xx)[..., None]
    blocks = rng.integers(0, 60, (h // 8 + 1, w // 8 + 1, 3))
    noise = np.repeat(np.repeat(blocks, 8, 0), 8, 1)[:h, :w]
    yield np.clip(base + noise, 0, 255).astype(np.uint8)


def _image_data(root: str, n: int, size: int) -> Dict[str, Any]:
  """The same JPEGs as ArrayRecord (read by index) and TFRecord (what a
  plain tf.data pipeline streams)."""
  h, w = size, size * 4 // 3
  feats = {"image": tfds.features.Image(shape=(h, w, 3),
                                        encoding_format="jpeg"),
           "label": tfds.features.ClassLabel(num_classes=100)}

  def split():
    for i, im in enumerate(_jpegs(n, h, w, 0)):
      yield {"image": im, "label": i % 100}
  for fmt in ("array_record", "tfrecord"):
    records.write(os.path.join(root, fmt), _NAME, {"train": split}, feats,
                  file_format=fmt)
  return {"h": h, "w": w}


def _video_arrays(n: int, frames: int, size: int) -> Dict[str, np.ndarray]:
  """Clips of `frames` encoded JPEG frames, as a frames folder holds them."""
  h, w = size, size * 4 // 3
  clips = [[tf.io.encode_jpeg(f).numpy() for f in _jpegs(frames, h, w, i)]
           for i in range(n)]
  return {"video": np.array(clips, dtype=object),
          "label": np.arange(n, dtype=np.int64) % 10}


def _reference(ds, pp: str, batch: int):
  """The plain tf.data pipeline: shuffle, map(pp, AUTOTUNE), batch,
  prefetch; the random ops get a fixed seed per example."""
  fn = pp_lib.get_preprocess_fn(pp)

  def with_seed(i, ex):
    return pp_lib.run_seeded(fn, ex, tf.stack([tf.cast(i, tf.int64),
                                               tf.constant(7, tf.int64)]))
  ds = ds.repeat().shuffle(1024, seed=0).enumerate()
  return ds.map(with_seed, num_parallel_calls=tf.data.AUTOTUNE).batch(
      batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _examples_per_s(makers: Dict[str, Callable[[], Iterator]], *, batch: int,
                    batches: int, reps: int) -> Dict[str, float]:
  """Median examples (images or clips) per second of each pipeline over
  `reps` rounds; each round builds it afresh, takes 2 untimed batches
  (buffers fill), then `batches` timed."""
  rates: Dict[str, List[float]] = {k: [] for k in makers}
  names = list(makers)
  for r in range(reps):
    for name in names[r % len(names):] + names[:r % len(names)]:
      it = makers[name]()
      for _ in range(2):
        next(it)
      t0 = time.perf_counter()
      for _ in range(batches):
        next(it)
      rates[name].append(batch * batches / (time.perf_counter() - t0))
      del it
  return {k: float(np.median(v)) for k, v in rates.items()}


def _bytes_per_process(data_dir: str, batch: int) -> List[Dict[str, Any]]:
  """Records and bytes each process of P reads in one epoch, as a fraction
  of the split's bytes (pp keeps only the label, so nothing is decoded; the
  counts include the few batches tf.data reads ahead into the next epoch)."""
  rows = []
  total = tfds.builder(_NAME, data_dir=data_dir).info.splits["train"].num_bytes
  for procs in (1, 2, 4):
    read = []
    for p in range(procs):
      src = ds_tfds.TfdsSource(_NAME, "train", data_dir=data_dir)
      it, n = ip.training(src, batch_size=batch, pp="keep('label')", seed=0,
                          process_index=p, process_count=procs, prefetch=0,
                          num_parallel_calls=1)
      for _ in range(n // batch):
        next(it)
      read.append((src.table().records_read, src.table().bytes_read))
      del it
    rows.append({"part": "bytes", "processes": procs, "examples": n,
                 "kib_per_example": total / n / 1024,
                 "records_read_max": max(r for r, _ in read),
                 "mib_read_max": max(b for _, b in read) / common.MIB,
                 "fraction_of_epoch_max": max(b for _, b in read) / total})
    common.log(f"input: P={procs}: each process read <= "
               f"{rows[-1]['fraction_of_epoch_max']:.3f} of the epoch's bytes")
  return rows


def section_input(a) -> List[Dict[str, Any]]:
  """Image and video pp throughput (ours vs plain tf.data, 1 and all cores),
  bytes read per process, host cores per accelerator."""
  root = tempfile.mkdtemp(prefix="losa_bench_input_")
  try:
    _image_data(root, a.input_images, a.image_px)
    ar_dir = os.path.join(root, "array_record")
    tfr = ds_tfds.TfdsSource(_NAME, "train", data_dir=os.path.join(
        root, "tfrecord"), in_memory=False)
    clips = _video_arrays(a.clips, 2 * 16, a.image_px)
    b, bv = a.batch, a.video_batch
    cases = {
        "image": (b, {
            "ours": lambda: ip.training(ds_tfds.TfdsSource(
                _NAME, "train", data_dir=ar_dir), batch_size=b, pp=IMAGE_PP,
                                        seed=0)[0],
            "tf.data": lambda: _reference(tfr.as_dataset(), IMAGE_PP,
                                          b).as_numpy_iterator()}),
        "video16": (bv, {
            "ours": lambda: ip.training(arrays.ArraySource(clips), batch_size=bv,
                                        pp=VIDEO_PP, seed=0)[0],
            "tf.data": lambda: _reference(tf.data.Dataset.from_tensor_slices(
                clips), VIDEO_PP, bv).as_numpy_iterator()}),
    }
    rows = []
    cores_all = len(os.sched_getaffinity(0))
    for kind, (bsz, makers) in cases.items():
      for cores in sorted({1, cores_all}):
        with pinned(cores):
          rate = _examples_per_s(makers, batch=bsz, batches=a.timed_batches,
                               reps=a.reps)
        for name, ips in rate.items():
          rows.append({"part": "throughput", "pp": kind, "pipeline": name,
                       "cores": cores, "examples_per_s": ips,
                       "examples_per_s_per_core": ips / cores,
                       "vs_tf_data": ips / rate["tf.data"]})
          common.log(f"input: {kind} {name} on {cores} core(s): "
                     f"{ips:.1f} examples/s ({ips / rate['tf.data']:.2f}x "
                     "tf.data)")
    rows += _bytes_per_process(ar_dir, b)
    one = next(r for r in rows if r["part"] == "throughput" and
               r["pp"] == "image" and r["pipeline"] == "ours" and
               r["cores"] == 1)
    need = a.accel_images_per_s / one["examples_per_s"]
    rows.append({"part": "cores_needed", "pp": "image",
                 "accel_images_per_s": a.accel_images_per_s,
                 "examples_per_s_per_core": one["examples_per_s"],
                 "cores_needed": need})
    common.log(f"input: {a.accel_images_per_s:.0f} images/s need "
               f"{need:.1f} host cores of this machine")
    return rows
  finally:
    shutil.rmtree(root, ignore_errors=True)
