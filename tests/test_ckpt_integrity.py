# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Checkpoint integrity on plain folders (no Orbax): manifest, check, set aside.

tests/test_ckpt_reliability.py runs the same rules through the Checkpointer
and the trainer.
"""
import json
import os

import pytest

from losa_jax.checkpointing import integrity


@pytest.fixture
def step_dir(tmp_path):
  """A step folder as Orbax leaves it: files in nested folders."""
  root = tmp_path / "checkpoints" / "7"
  (root / "state").mkdir(parents=True)
  (root / "state" / "a.bin").write_bytes(b"\x00" * 64)
  (root / "meta.json").write_text('{"step": 7}')
  # A temporary file of an interrupted manifest write is not a step file.
  (root / f".{integrity.MANIFEST}.tmp-1-dead").write_text("{")
  integrity.write_manifest(str(root), 7)
  return root


def test_manifest_lists_every_step_file_and_verifies(step_dir):
  manifest = json.loads((step_dir / integrity.MANIFEST).read_text())
  assert manifest["step"] == 7
  assert sorted(manifest["files"]) == sorted(
      [os.path.join("state", "a.bin"), "meta.json"])
  assert manifest["files"]["meta.json"]["size"] == 11
  assert integrity.verify(str(step_dir), 7)


@pytest.mark.parametrize("damage,why", [
    (lambda d: (d / "state" / "a.bin").write_bytes(b"\x01" + b"\x00" * 63),
     "sha256 mismatch"),
    (lambda d: (d / "state" / "a.bin").write_bytes(b"\x00"),
     "has 1 bytes, 64 when saved"),
    (lambda d: (d / "meta.json").unlink(), "meta.json is missing"),
    (lambda d: (d / integrity.MANIFEST).write_text("{"), "is unreadable"),
])
def test_damage_is_named_with_the_step_and_file(step_dir, damage, why):
  damage(step_dir)
  with pytest.raises(integrity.DamagedCheckpointError,
                     match=rf"step 7 at {step_dir} is damaged: .*{why}"):
    integrity.verify(str(step_dir), 7)


def test_a_step_without_manifest_is_accepted_with_a_warning(step_dir,
                                                            caplog):
  (step_dir / integrity.MANIFEST).unlink()
  assert not integrity.verify(str(step_dir), 7)
  assert any(integrity.MANIFEST in r.getMessage() and "unverified" in
             r.getMessage() for r in caplog.records)


def test_set_aside_moves_the_step_beside_the_checkpoints(step_dir):
  directory = str(step_dir.parent)
  dest = integrity.set_aside(directory, 7, move=False)
  assert step_dir.exists() and not os.path.exists(dest)
  dest = integrity.set_aside(directory, 7, move=True)
  assert not step_dir.exists()
  assert os.path.dirname(dest) == os.path.join(
      os.path.dirname(directory), "damaged_checkpoints")
  assert integrity.verify(dest, 7)
