# Copyright 2026 The losa_jax Authors.
# Licensed under the Apache License, Version 2.0.
"""Runs every notebook in colabs/ top to bottom on CPU, tiny settings.

Parameters are injected the papermill way, by appending assignments to the
cell tagged "parameters" (in memory; the committed notebooks keep the
outputs of their full-size run). A failing cell raises with its traceback.
"""
import glob
import json
import os
import subprocess
import sys
import sysconfig

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


def run_notebook(name: str, kernel_name: str = "python3", cwd: str = REPO,
                 **params):
  """Executes colabs/<name>.ipynb with `params` injected; returns the nb.

  The kernel starts in `cwd`.
  """
  nb = nbformat.read(os.path.join(COLABS, f"{name}.ipynb"), as_version=4)
  cell = parameters_cell(nb)
  cell.source += "\n# Injected by tests/test_notebooks.py\n" + "\n".join(
      f"{k} = {v!r}" for k, v in params.items())
  # In the repo root the install cell finds the checkout and never
  # pip-installs; the kernel inherits conftest's XLA_FLAGS and compilation
  # cache.
  client = nbclient.NotebookClient(
      nb, timeout=TIMEOUT_S, kernel_name=kernel_name,
      resources={"metadata": {"path": cwd}})
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
  check_outputs(nb, texts, min_images, written, tmp_path)


def check_outputs(nb, texts, min_images, written, workdir):
  text = outputs_text(nb)
  for t in texts:
    assert t in text
  assert num_images(nb) >= min_images
  for path in written:
    found = (os.path.isdir if path.endswith("/") else os.path.exists)(
        workdir / path.rstrip("/"))
    assert found, path


def colab_like_python(folder) -> str:
  """A fresh virtualenv in `folder` in which, as on Colab, jax, TensorFlow,
  matplotlib, ... are installed but losa_jax is not; returns its python.

  Its packages are this environment's: their folder is put on its sys.path
  by a .pth line, which leaves the .pth files there (this environment's
  editable losa_jax among them) unread.
  """
  base = getattr(sys, "_base_executable", sys.executable)
  subprocess.run([base, "-m", "venv", str(folder)], check=True, timeout=300)
  python = os.path.join(folder, "bin", "python")
  site = subprocess.run(
      [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      check=True, capture_output=True, text=True).stdout.strip()
  with open(os.path.join(site, "preinstalled.pth"), "w") as f:
    f.write(sysconfig.get_paths()["purelib"] + "\n")
  return python


def kernel_spec(folder, python: str) -> str:
  """A Jupyter kernel running `python`, under `folder`/kernels; its name."""
  os.makedirs(os.path.join(folder, "kernels", "colab"))
  with open(os.path.join(folder, "kernels", "colab", "kernel.json"), "w") as f:
    json.dump({"argv": [python, "-m", "ipykernel_launcher", "-f",
                        "{connection_file}"],
               "display_name": "colab-like", "language": "python"}, f)
  return "colab"


@pytest.mark.slow(reason="a fresh virtualenv, a pip install and a notebook")
@pytest.mark.skipif(sys.version_info < (3, 12),
                    reason="Colab runs Python 3.12: CI runs this in its "
                    "Python 3.12 environment (.ci/run)")
def test_quickstart_installs_and_runs_as_on_colab(tmp_path, monkeypatch):
  # The install cell's own commands: losa_jax is not importable, so it
  # pip-installs LOSA_JAX_SOURCE (here the checkout) with its [notebooks]
  # extra into the kernel's environment; then the notebook runs headless.
  python = colab_like_python(tmp_path / "venv")
  probe = [python, "-c", "import importlib.util as u; "
           "print(u.find_spec('losa_jax') is None, u.find_spec('jax') is None)"]
  before = subprocess.run(probe, check=True, capture_output=True, text=True,
                          cwd=tmp_path)
  assert before.stdout.split() == ["True", "False"]
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  kernel = kernel_spec(tmp_path / "jupyter", python)
  workdir = tmp_path / "work"
  workdir.mkdir()
  nb = run_notebook("quickstart", kernel_name=kernel, cwd=str(workdir),
                    RUNLOCAL=True, LOSA_JAX_SOURCE=REPO, WORKDIR=str(workdir))
  _, _, texts, min_images, written = NOTEBOOK_RUNS[0].values
  check_outputs(nb, texts, min_images, written, workdir)
  assert f"losa_jax from {os.path.join(REPO, 'losa_jax')}" in outputs_text(nb)
  # Installed by the notebook, into the fresh environment only.
  site = os.path.dirname(glob.glob(str(tmp_path / "venv" / "lib" / "*" /
                                       "site-packages" / "preinstalled.pth"))[0])
  assert glob.glob(os.path.join(site, "losa_jax-*.dist-info"))
  after = subprocess.run(probe, check=True, capture_output=True, text=True,
                         cwd=tmp_path)
  assert after.stdout.split() == ["False", "False"]
