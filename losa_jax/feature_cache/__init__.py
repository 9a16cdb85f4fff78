# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Backbone feature cache: run the frozen backbone once per example, not once per epoch.

LoSA's backbone never sees the side network, so its taps are a fixed function
of the (preprocessed) image. When the training pp has no random op, every
epoch feeds the backbone exactly the same inputs, and the taps can be
computed once and reused (docs/method.md, section 3.2). Training then runs
only the side network and the head.

What is stored, per example i (the index in the source's fixed order):

    taps[i]    [L', N, D]  backbone taps (`Model(..., taps_only=True)`),
                           in `dtype` (bfloat16 by default)
    final[i]   [N, D]      the last block's residual stream, float32 (what
                           the head reads); only stored when the last tap
                           does not hold it exactly (tap != "block", or a
                           cache dtype other than float32)
    labels[i]  []          int32, the pp's "label"

Where: in host memory when the whole cache fits `memory_budget_mb`
(`storage="auto"`), else as memory-mapped .npy files under
`<dir>/<key>/`. `key` hashes everything the features depend on: the backbone
params (their bytes), the data source (name, split, count, a hash of the raw
examples), the pp spec, the model's backbone and tap config, the image shape
and the cache dtype; any change gives a new key and therefore a rebuild.

On disk, `<dir>/<key>/` holds one part per building process,
`part-<p>-of-<P>/` (taps.npy, final.npy, labels.npy and indices.npy, the
rows it holds), plus `meta.json` and a `COMPLETE` marker holding the key;
docs/scaling.md says how P processes build, verify and share them. A folder
or part without a valid marker is never read. In-memory storage is for one
process.

Training order: `batch_indices` reproduces `input_pipeline.training`'s
random-access order (`epoch_permutation(seed, epoch, n)`, the same
drop-remainder and resume arithmetic), so a cached run visits the same
examples in the same order as an uncached one and the two can resume each
other. `train_step` is `steps.train_step_fn` itself (same loss, optimizer,
masks, metrics), fed features instead of images.

Config (`config.feature_cache`, see DEFAULTS):
  enabled: train from the cache (LoSA only).
  dir: cache root; default `<workdir>/feature_cache`.
  dtype: "bfloat16" | "float16" | "float32".
  memory_budget_mb: in-memory limit for storage="auto".
  storage: "auto" | "memory" | "disk".
  batch_size: backbone batch size while building (default input.batch_size).
"""
from losa_jax.feature_cache.keys import CacheError
from losa_jax.feature_cache.keys import check_deterministic
from losa_jax.feature_cache.keys import COMPLETE
from losa_jax.feature_cache.keys import DEFAULTS
from losa_jax.feature_cache.keys import find_random_ops
from losa_jax.feature_cache.keys import options
from losa_jax.feature_cache.keys import RandomPreprocessingError
from losa_jax.feature_cache.order import batch_indices
from losa_jax.feature_cache.store import FeatureCache
from losa_jax.feature_cache.store import features_fn
from losa_jax.feature_cache.store import part_name
from losa_jax.feature_cache.store import read_marker
from losa_jax.feature_cache.training import FeatureModel
from losa_jax.feature_cache.training import for_trainer
from losa_jax.feature_cache.training import train_step
