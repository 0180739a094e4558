"""The notebooks are committed with their outputs (small: a reader on a code host sees the figures) and run top
to bottom headless on the project's python (nbclient, kernel 'python3'), the way ``notebooks/refresh.py``
re-executes them; 01 says what to run when its results file is missing, and still runs."""
import base64
import importlib.util
import struct
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
NAMES = ["01_explore_stats.ipynb", "02_masked_layer_walkthrough.ipynb"]
# figures each notebook draws: 01 channel stats, padding sensitivity, stats vs padding, two of the ResNet run;
# 02 the photos, one conv, the masks through the stack, the holes
MIN_IMAGES = {NAMES[0]: 5, NAMES[1]: 4}
MAX_PNG_WIDTH = 1400  # pixels: figures are saved at ~75 dpi
MACHINE_PATHS = ("/work/", "/tmp/", str(ROOT))


def _load_refresh():
    spec = importlib.util.spec_from_file_location("notebooks_refresh", NOTEBOOKS / "refresh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


refresh = _load_refresh()


def _outputs(nb):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _stream_text(nb) -> str:
    return "".join(o.get("text", "") for o in _outputs(nb) if o.get("output_type") == "stream")


def _all_text(output) -> str:
    """Every piece of text an output shows: streams, text/plain and text/html reprs, tracebacks."""
    parts = [output.get("text", ""), *output.get("traceback", []), output.get("evalue", "")]
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/"):
            parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts)


def _pngs(nb) -> list[bytes]:
    return [base64.b64decode(o["data"]["image/png"]) for o in _outputs(nb) if "image/png" in o.get("data", {})]


def _png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", png[16:24])


def _kernel_python(nb) -> Path:
    """The kernel's python as the notebook printed it (relative to the repository root when inside it)."""
    for line in _stream_text(nb).splitlines():
        if line.startswith("kernel python:"):
            path = Path(line.split(":", 1)[1].strip())
            return path if path.is_absolute() else ROOT / path
    raise AssertionError("the notebook did not print its kernel's python")


def _check_outputs(nb, name: str) -> None:
    errors = [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors, f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    pngs = _pngs(nb)
    assert len(pngs) >= MIN_IMAGES[name], f"{name}: {len(pngs)} figures"
    widths = [_png_size(p)[0] for p in pngs]
    assert max(widths) <= MAX_PNG_WIDTH, f"{name}: figure widths {widths} px"
    for o in _outputs(nb):
        text = _all_text(o)
        leaked = [p for p in MACHINE_PATHS if p in text]
        assert not leaked, f"{name}: an output shows {leaked}: {text[:300]!r}"


@pytest.mark.parametrize("name", NAMES)
def test_committed_with_small_outputs(name):
    path = NOTEBOOKS / name
    assert path.stat().st_size < refresh.MAX_BYTES, f"{name}: {path.stat().st_size} bytes"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    # saved from one run top to bottom: every code cell ran, in order
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    _check_outputs(nb, name)
    # no volatile metadata: re-running on the same results changes nothing else
    assert not [c.id for c in nb.cells if "execution" in c.metadata]
    assert nb.metadata["language_info"] == {"name": "python"}


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_headless(name):
    nb, seconds = refresh.execute(NOTEBOOKS / name, timeout=120)
    assert seconds < 60, f"{name} took {seconds:.0f} s"
    _check_outputs(nb, name)  # what refresh.py would commit passes the test above
    # the kernel is this project's python (the venv), not some other python3 on the machine
    assert _kernel_python(nb).absolute().parent == Path(sys.executable).absolute().parent
    nbformat.validate(refresh.strip_volatile(nb))
    assert not [c.id for c in nb.cells if "execution" in c.metadata]


def test_explore_notebook_says_what_to_run_when_results_are_missing(tmp_path):
    missing = tmp_path / "no_results_here"
    nb, seconds = refresh.execute(NOTEBOOKS / NAMES[0], timeout=120, env={"ACTIVATION_RESULTS": str(missing)})
    text = _stream_text(nb)
    assert f"results file missing: {missing / 'activation_stats.parquet'} does not exist" in text
    assert f"python visualize_activations_2d.py --out {missing}" in text
    assert "make figures" in text
    assert "running a tiny experiment" in text  # ... and the notebook still ran to the end, with its figures
    errors = [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors
    assert len(_pngs(nb)) >= MIN_IMAGES[NAMES[0]]
    assert seconds < 60
    assert not missing.exists()  # the fallback writes nothing
