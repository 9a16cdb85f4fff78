# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""`name="folder"`: images in `root/<split>/<class_name>/*.png|jpg`."""
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging
import numpy as np
import tensorflow as tf

from losa_jax.datasets import core

# How many bad file names a message or a log line lists.
_LISTED = 10


def image_problem(path: str) -> Optional[str]:
  """Why `path` is not a readable image (None if it decodes).

  Decodes the whole file (a truncated PNG only fails at its end), with PIL
  so no TensorFlow graph is involved.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      im.load()
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {e}"
  return None


def image_files(folder: str, extensions: Sequence[str]) -> List[str]:
  """Sorted names of the files in `folder` ending in `extensions` (any case)."""
  ext = tuple(e.lower() for e in extensions)
  return sorted(f for f in os.listdir(folder) if f.lower().endswith(ext))


def scan(root: str, split: str, class_names: Optional[Sequence[str]],
         entries, kind: str, layout: str):
  """`core.scan_class_folders`, naming the expected `layout` when root is
  missing or the split has no `kind` examples."""
  if not os.path.isdir(root):
    raise FileNotFoundError(f"{kind} folder root {root!r} does not exist; "
                            f"expected {layout} (nothing is downloaded).")
  class_names, items = core.scan_class_folders(root, split, class_names,
                                               entries)
  if not items:
    raise ValueError(f"No {kind.lower()} examples found for split {split!r} "
                     f"under {root!r} (expected {layout}).")
  return class_names, items


class ClassFolderSource(core.Source):
  """A source over `root/<split>/<class>/...`: only `columns` (paths and
  labels, [N] each) live in memory; `_read` reads a gathered row's files."""

  columns: Dict[tuple, Any]

  def num_examples(self) -> int:
    return len(self.columns[("label",)])

  def table(self) -> core.Table:
    if getattr(self, "_table", None) is None:
      self._table = core.Table(self.columns, self.num_examples(),
                               finalize=self._read)
    return self._table

  def as_dataset(self) -> tf.data.Dataset:
    return tf.data.Dataset.range(self.num_examples()).map(self.table().lookup)


class FolderSource(ClassFolderSource):
  """Images in `root/<split>/<class_name>/*.png|jpg`, one folder per class.

  Raw examples: {"image": encoded bytes (tf.string), "label": int64 index of
  the class in `class_names`, "file_name": path relative to root}. Files are
  ordered by (class, file name), so `train[:100]` cuts that order.

  Args:
    root: dataset root.
    split: split expression over the sub-folders of root.
    class_names: the label order (default: see `core.scan_class_folders`).
    extensions: accepted file suffixes (case-insensitive).
    skip_bad_images: decode every file once up front and leave out those
      that do not decode (non-images, truncated files), logging how many and
      which; `skipped` lists them. Off by default: a bad file then stops the
      input pipeline with an error naming it (see `diagnose`).
  """

  def __init__(self, root: str, split: str, *,
               class_names: Optional[Sequence[str]] = None,
               extensions: Sequence[str] = core.IMAGE_EXTENSIONS,
               skip_bad_images: bool = False):
    self.name = f"folder:{root}:{split}"
    self.root = root
    images = lambda cdir, rel: [os.path.join(rel, f)
                                for f in image_files(cdir, extensions)]
    self.class_names, items = scan(root, split, class_names, images, "Image",
                                   "root/<split>/<class>/<image>")
    files = [f for f, _ in items]
    labels = [l for _, l in items]
    self.skipped: List[Tuple[str, str]] = []
    if skip_bad_images:
      problems = self._problems(files)
      self.skipped = [(f, p) for f, p in zip(files, problems) if p]
      if self.skipped:
        logging.warning(
            "%s: skipped %d of %d files that do not decode (skip_bad_images):"
            " %s", self.name, len(self.skipped), len(files),
            _listed([f for f, _ in self.skipped], ", "))
      files = [f for f, p in zip(files, problems) if not p]
      labels = [l for l, p in zip(labels, problems) if not p]
      if not files:
        raise ValueError(f"{self.name}: none of the files decodes as an "
                         f"image; e.g. {self.skipped[0][0]}: "
                         f"{self.skipped[0][1]}")
    self._files = np.array(files, dtype=object)
    self.columns = {("file_name",): self._files,
                    ("label",): np.array(labels, dtype=np.int64)}

  def _read(self, ex):
    path = tf.strings.join([self.root, ex["file_name"]], separator=os.sep)
    return {"image": tf.io.read_file(path), "label": ex["label"],
            "file_name": ex["file_name"]}

  def diagnose(self, error: Exception) -> Optional[str]:
    """Names the split's files that do not decode (decoding them all only
    after the pipeline failed, so a healthy run pays nothing)."""
    del error
    bad = [f"{os.path.join(self.root, f)} ({p})"
           for f, p in zip(self._files, self._problems(self._files)) if p]
    if not bad:
      return None
    return (f"{len(bad)} file(s) of {self.name} do not decode as images: "
            f"{_listed(bad, '; ')}. Remove or replace them, or set "
            "skip_bad_images=True in the data config to leave them out.")

  def _problems(self, files) -> List[Optional[str]]:
    return [image_problem(os.path.join(self.root, f)) for f in files]


def _listed(items: Sequence[str], sep: str) -> str:
  """The first _LISTED items joined, with " ..." when there are more."""
  return sep.join(items[:_LISTED]) + (" ..." if len(items) > _LISTED else "")


PP_MODULES = ("image",)
make = FolderSource  # dict(name="folder", root=..., split=...)
