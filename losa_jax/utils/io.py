# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Atomic file writes: a reader sees the old file or the new one, never half.

Every file losa_jax writes for a later reader goes through `atomic_write`. A
crash or kill mid-write leaves the previous file and at worst a `.*.tmp-*`.
"""
import contextlib
import json
import os
from typing import Any, Iterator, IO
import uuid


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **open_kwargs) -> Iterator[IO]:
  """Yields a temporary sibling of `path` opened with `mode` ("w" or "wb")
  and `open_kwargs`; on a clean exit it is fsynced and replaces `path` (its
  folder made if missing), on an exception it is removed."""
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_write mode {mode!r}: use 'w' or 'wb'.")
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # A unique hidden name in the same folder, so concurrent writers never share
  # it and the rename stays within one filesystem (atomic); opened with "x"
  # (not mkstemp) so the file gets the usual umask permissions.
  tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-"
                     f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
  try:
    with open(tmp, mode.replace("w", "x"), **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
  fsync_folder(folder)


def fsync_folder(folder: str) -> None:
  """Persists a rename in `folder`; best effort (not every platform can)."""
  with contextlib.suppress(OSError):
    fd = os.open(folder, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically."""
  with atomic_write(path) as f:
    f.write(text)


def read_json(path: str) -> Any:
  """The JSON value in the file `path`."""
  with open(path) as f:
    return json.load(f)


def write_json(path: str, obj: Any, *, indent: int = 2, **dump_kwargs) -> None:
  """Writes `obj` as JSON (with a final newline) to `path` atomically."""
  with atomic_write(path) as f:
    json.dump(obj, f, indent=indent, **dump_kwargs)
    f.write("\n")
