"""The notebooks run top to bottom, headless, on the project's python (nbclient, kernel 'python3'), and are
committed without outputs."""
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_explore_stats.ipynb", "02_masked_layer_walkthrough.ipynb"]


def _execute(name: str, timeout: int = 120):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def _stream_text(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def _kernel_python(nb) -> str:
    for line in _stream_text(nb).splitlines():
        if line.startswith("kernel python:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("the notebook did not print its kernel's python")


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless(name, monkeypatch):
    monkeypatch.delenv("ACTIVATION_RESULTS", raising=False)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # let the notebook use the inline backend
    nb, seconds = _execute(name)
    assert seconds < 60, f"{name} took {seconds:.0f} s"
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # the kernel is this project's python (the venv), not some other python3 on the machine
    assert Path(_kernel_python(nb)).absolute().parent == Path(sys.executable).absolute().parent
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3


def test_explore_notebook_falls_back_to_a_tiny_run(tmp_path, monkeypatch):
    monkeypatch.setenv("ACTIVATION_RESULTS", str(tmp_path / "no_results_here"))
    monkeypatch.delenv("MPLBACKEND", raising=False)
    nb, seconds = _execute(NAMES[0])
    assert "running a tiny experiment" in _stream_text(nb)
    assert seconds < 60
    assert not os.path.exists(tmp_path / "no_results_here")
