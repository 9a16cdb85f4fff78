# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Backbone feature cache: run the frozen backbone once per example, not once per epoch.

A side network never changes the backbone, so when the training pp has no
random op the taps are a fixed function of the (preprocessed) image: they
are computed once and reused (docs/method.md, section 3.2), and training
runs only the side network and the head. What is stored, per example i
(the index in the source's fixed order):

    taps[i]    [L', N, D]  backbone taps (`Model(..., taps_only=True)`),
                           in `dtype` (bfloat16 by default)
    final[i]   [N, D]      the last block's residual stream, float32 (what
                           the head reads); only stored when the last tap
                           does not hold it exactly (tap != "block", or a
                           cache dtype other than float32)
    labels[i]  []          int32, the pp's "label"

docs/benchmarks.md ("The pieces") has the options (`config.feature_cache`,
DEFAULTS), the key, the storage and the training order; docs/scaling.md
how several processes build, verify and share the parts.
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
