"""utils.io: a reader sees the old file or the new one, never half of one."""
import json
import os

import pytest

from losa_jax.utils import io as io_lib


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
  path = tmp_path / "results.json"
  io_lib.write_json(str(path), {"step": 1})
  with pytest.raises(RuntimeError, match="killed"):
    with io_lib.atomic_write(str(path)) as f:
      f.write('{"step": 2, "half')
      raise RuntimeError("killed mid-write")
  assert json.loads(path.read_text()) == {"step": 1}
  assert os.listdir(tmp_path) == ["results.json"]


def test_write_replaces_makes_the_folder_and_ends_with_a_newline(tmp_path):
  path = tmp_path / "new" / "folder" / "a.md"
  io_lib.write_text(str(path), "old\n")
  io_lib.write_text(str(path), "new\n")
  assert path.read_text() == "new\n"
  io_lib.write_json(str(path), [1, 2], indent=None)
  assert path.read_text() == "[1, 2]\n"
  with io_lib.atomic_write(str(path), "wb") as f:
    f.write(b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01"
  assert sorted(os.listdir(path.parent)) == ["a.md"]


def test_text_and_binary_only(tmp_path):
  with pytest.raises(ValueError, match="'a'"):
    with io_lib.atomic_write(str(tmp_path / "x"), "a"):
      pass
