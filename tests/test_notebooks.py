# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Runs every notebook in colabs/ top to bottom on CPU, tiny settings.

Parameters are injected the papermill way, by appending assignments to the
cell tagged "parameters" (in memory; the committed notebooks keep the
outputs of their full-size run). A failing cell raises with its traceback.
"""
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")
TIMEOUT_S = 600      # per cell; a shared 2-core machine can be slow


def parameters_cell(nb):
  cells = [c for c in nb.cells
           if "parameters" in c.get("metadata", {}).get("tags", [])]
  assert len(cells) == 1, "a notebook needs exactly one 'parameters' cell"
  return cells[0]


def run_notebook(name: str, **params):
  """Executes colabs/<name>.ipynb with `params` injected; returns the nb."""
  nb = nbformat.read(os.path.join(COLABS, f"{name}.ipynb"), as_version=4)
  cell = parameters_cell(nb)
  cell.source += "\n# Injected by tests/test_notebooks.py\n" + "\n".join(
      f"{k} = {v!r}" for k, v in params.items())
  # The kernel starts in the repo root, so the install cell finds the
  # checkout and never pip-installs; it inherits conftest's XLA_FLAGS and
  # compilation cache.
  client = nbclient.NotebookClient(
      nb, timeout=TIMEOUT_S, kernel_name="python3",
      resources={"metadata": {"path": REPO}})
  client.execute()
  return nb


def outputs_text(nb) -> str:
  parts = []
  for c in nb.cells:
    for o in c.get("outputs", []):
      if "text" in o:
        parts.append(o["text"])
      parts.extend(str(v) for k, v in o.get("data", {}).items()
                   if k.startswith("text/"))
  return "\n".join(parts)


def num_images(nb) -> int:
  return sum("image/png" in o.get("data", {})
             for c in nb.cells for o in c.get("outputs", []))


def test_committed_notebooks_are_valid_and_executed():
  # The committed notebooks carry the outputs of a real run, not tiny ones.
  names = sorted(f for f in os.listdir(COLABS) if f.endswith(".ipynb"))
  assert {"quickstart.ipynb", "efficiency.ipynb"} <= set(names)
  for name in names:
    nb = nbformat.read(os.path.join(COLABS, name), as_version=4)
    nbformat.validate(nb)
    parameters_cell(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), name
    assert not any(o.get("output_type") == "error"
                   for c in code for o in c.get("outputs", [])), name
    assert num_images(nb) >= 2, name
    assert "RUNLOCAL = True" not in "".join(c.source for c in code), name


# Per notebook: whether it takes a WORKDIR (then run in tmp_path), the texts
# its outputs must show, how many plots at least, and the files it must leave
# in WORKDIR (a trailing "/": a folder).
NOTEBOOK_RUNS = [
    pytest.param("quickstart", True, [
        "max |p_restored - p_in_memory|",
        "restored model on the test split"],
                 3,   # curves, predictions, confusion matrix
                 # The trainer's logs and the side network's checkpoint.
                 ["metrics.jsonl", "checkpoints/"], id="quickstart"),
    pytest.param("efficiency", False, [
        "losa r=8", "linear", "full", "lora r=8", "adapter d=8",
        "x the frozen forward"], 3, [], id="efficiency"),
    pytest.param("video", False, ["| run | test accuracy |"], 3, [],
                 id="video", marks=pytest.mark.skipif(
                     not os.path.exists(os.path.join(COLABS, "video.ipynb")),
                     reason="no video notebook")),
    pytest.param("serving", True, [
        "backbone passes per batch: 1", "jax.export, batch 5: max |diff|",
        "| N | LoSA images/s |"],
                 2,   # throughput and FLOPs vs N
                 ["export/serving.json"], id="serving"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,takes_workdir,texts,min_images,written",
                         NOTEBOOK_RUNS)
def test_notebook_runs(name, takes_workdir, texts, min_images, written,
                       tmp_path):
  params = dict(WORKDIR=str(tmp_path)) if takes_workdir else {}
  nb = run_notebook(name, RUNLOCAL=True, **params)
  text = outputs_text(nb)
  for t in texts:
    assert t in text
  assert num_images(nb) >= min_images
  for path in written:
    found = (os.path.isdir if path.endswith("/") else os.path.exists)(
        tmp_path / path.rstrip("/"))
    assert found, path
