# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""`name="frames"`: videos stored as frame images in class folders.

TFDS datasets with a `video` feature go through `datasets.tfds` like any
TFDS name; docs/video.md says which exist (no Kinetics, no SSv2).
"""
import os
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from losa_jax.datasets import core
from losa_jax.datasets import folder


class FrameFolderSource(folder.ClassFolderSource):
  """Videos stored as frame images: `root/<split>/<class>/<video_id>/*.png`.

  Raw examples: {"video": tf.string [F] encoded frames in file-name order,
  "label": int64 index of the class in `class_names`, "video_id":
  "<class>/<video_id>"}. Put `video_sample` before `video_decode` in the pp
  so only the sampled frames are decoded.

  Args:
    root: dataset root.
    split: split expression over the sub-folders of root (TFDS syntax, e.g.
      "train[:90%]"); videos are ordered by (class, video_id).
    class_names: the label order (default: see `core.scan_class_folders`).
    extensions: frame file suffixes (case-insensitive).
  """

  def __init__(self, root: str, split: str, *,
               class_names: Optional[Sequence[str]] = None,
               extensions: Sequence[str] = core.IMAGE_EXTENSIONS):
    self.name = f"frames:{root}:{split}"
    self.root = root

    def videos(cdir, rel):
      out = []
      for vid in sorted(os.listdir(cdir)):
        vdir = os.path.join(cdir, vid)
        if not os.path.isdir(vdir):
          continue
        files = folder.image_files(vdir, extensions)
        if not files:
          raise ValueError(f"Video folder {vdir!r} has no {extensions} "
                           "frames.")
        out.append(([os.path.join(rel, vid, f) for f in files],
                    f"{os.path.basename(rel)}/{vid}"))
      return out

    self.class_names, items = folder.scan(
        root, split, class_names, videos, "Frame",
        "root/<split>/<class>/<video_id>/<frame>.png")
    self.columns = {
        ("frames",): [np.array(f, dtype=object) for (f, _), _ in items],
        ("label",): np.array([l for _, l in items], np.int64),
        ("video_id",): np.array([i for (_, i), _ in items], dtype=object)}

  def _read(self, ex):
    paths = tf.strings.join([self.root, os.sep, ex["frames"]])
    video = tf.map_fn(tf.io.read_file, paths)
    return {"video": video, "label": ex["label"], "video_id": ex["video_id"]}


PP_MODULES = ("image", "video")
make = FrameFolderSource  # dict(name="frames", root=..., split=...)
