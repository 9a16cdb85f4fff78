# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Video support: clip pp ops and sources, a procedural demo task, the demo.

* `data`: registered pp ops on a `video` uint8 [F, H, W, C] tensor (frame
  sampling, crops, multi-view), multi-view evaluation, the frame-folder
  source (`root/<split>/<class>/<video_id>/*.png`) and `make_source`.
* `moving_digits`: Moving-MNIST-style clips whose label is the direction of
  motion (needs temporal mixing), built offline from real MNIST digits.
* `demo`: `python -m losa_jax.video.demo`, LoSA space+time vs space-only vs
  a linear probe on an inflated ViViT (see docs/video.md).

The backbone itself is `losa_jax.models.vivit`.
"""
