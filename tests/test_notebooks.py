"""The notebooks under notebooks/, executed top to bottom in CPU mode.

Each notebook's parameter cell reads ``JAXFSL_CPU_DEMO=1`` (a tiny
random-init model on generated data, instead of a Hugging Face checkpoint
and a TFDS-catalog dataset) and ``JAXFSL_NOTEBOOK_DIR`` (its output folder).
The kernel is this interpreter (a kernel spec written to a temporary
JUPYTER_PATH), so the notebooks import this checkout's jaxfsl; the install
cell then finds jaxfsl and installs nothing.
"""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
NAMES = [p.stem for p in NOTEBOOKS]
# Notebooks whose plots are part of what they promise.
MUST_PLOT = {"quickstart": 1, "analysis": 3, "own_data": 1}


def test_the_notebooks_exist():
  assert set(NAMES) == set(MUST_PLOT), NAMES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for i, cell in enumerate(nb.cells):
    if cell.cell_type == "code":
      assert cell.outputs == [], (path.name, i)
      assert cell.execution_count is None, (path.name, i)
  assert nb.metadata.kernelspec.name == "python3"


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory):
  """A JUPYTER_PATH whose ``python3`` kernel is this interpreter."""
  root = tmp_path_factory.mktemp("jupyter")
  spec = root / "kernels" / "python3"
  spec.mkdir(parents=True)
  (spec / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
               "{connection_file}"],
      "display_name": "Python 3 (jaxfsl tests)", "language": "python"}))
  return root


def image_outputs(nb):
  return sum("image/png" in out.get("data", {})
             for cell in nb.cells if cell.cell_type == "code"
             for out in cell.outputs)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=NAMES)
def test_notebook_runs_in_cpu_mode(path, kernel_env, tmp_path, monkeypatch):
  monkeypatch.setenv("JUPYTER_PATH", str(kernel_env))
  monkeypatch.setenv("JAXFSL_CPU_DEMO", "1")
  monkeypatch.setenv("JAXFSL_NOTEBOOK_DIR", str(tmp_path / "work"))
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]))
  # The inline backend (image/png outputs), not a headless one.
  monkeypatch.delenv("MPLBACKEND", raising=False)
  nb = nbformat.read(path, as_version=4)
  client = NotebookClient(nb, kernel_name="python3", timeout=900,
                          startup_timeout=300,
                          resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # Raises CellExecutionError naming the failing cell.
  assert image_outputs(nb) >= MUST_PLOT[path.stem], (
      f"{path.name}: {image_outputs(nb)} plot(s)")
  errors = [out for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if out.output_type == "error"]
  assert not errors, errors
