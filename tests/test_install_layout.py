"""What ``pip install masked_torch`` puts on a user's path: the suite ships as ``masked_torch.analysis`` (the
source folder stays the top-level ``analysis/``), never as a top-level package ``analysis`` that would collide with
other projects' and PyPI's; the console script and ``python -m`` point at it.

The wheel is built offline by setuptools' PEP 517 hook (no build isolation: the setuptools of this environment)
from a copy of the sources, so that the checkout gets no build/ or egg-info folder."""
import configparser
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "masked_torch", "analysis")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates PEP 639 license metadata")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = proc.stdout.strip().splitlines()[-1]
    assert name.startswith("masked_torch-") and name.endswith(".whl"), name
    with zipfile.ZipFile(out / name) as zf:
        yield zf


def _dist_info(wheel: zipfile.ZipFile, file: str) -> str:
    [path] = [n for n in wheel.namelist() if n.endswith(f".dist-info/{file}")]
    return wheel.read(path).decode()


def test_the_suite_ships_under_the_projects_namespace(wheel):
    names = set(wheel.namelist())
    for module in ("__init__.py", "__main__.py", "cli.py", "_extras.py", "masks.py", "choices.py", "run.py"):
        assert f"masked_torch/analysis/{module}" in names, module
    # every module of the source folder is shipped, none under another name
    shipped = {n.removeprefix("masked_torch/analysis/") for n in names if n.startswith("masked_torch/analysis/")}
    assert {p.name for p in (ROOT / "analysis").glob("*.py")} <= shipped


def test_no_top_level_analysis_package(wheel):
    tops = {n.split("/")[0] for n in wheel.namelist()}
    assert "analysis" not in tops
    assert {t for t in tops if not t.endswith(".dist-info")} == {"masked_torch"}
    assert _dist_info(wheel, "top_level.txt").split() == ["masked_torch"]


def test_console_script_points_at_the_namespaced_cli(wheel):
    entry_points = configparser.ConfigParser()
    entry_points.read_string(_dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == {"masked-torch-activations": "masked_torch.analysis.cli:main"}


def test_the_analysis_extra_is_declared(wheel):
    metadata = _dist_info(wheel, "METADATA")
    assert "Provides-Extra: analysis" in metadata.splitlines()
    required = [line.split(": ", 1)[1] for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    extra = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
             for r in required if "extra == \"analysis\"" in r}
    assert {"pandas", "pyarrow", "matplotlib", "seaborn", "tqdm", "scikit-image"} <= extra
    core = {r.split(";")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
            for r in required if "extra ==" not in r}
    assert core == {"torch", "numpy"}
