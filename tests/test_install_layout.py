"""What ``pip install masked_torch`` puts on a user's path: the suite ships as ``masked_torch.analysis`` (the
source folder stays the top-level ``analysis/``), never as a top-level package ``analysis`` that would collide with
other projects' and PyPI's; the console script and ``python -m`` point at it.

And the suite imports however it is installed: with a wheel installed (``pip install '.[analysis]'``, not
editable), a command run from the clone's root imports the clone's ``masked_torch/``, which hides the installed
package; ``masked_torch.analysis`` must then be the clone's ``analysis/`` folder (layers and suite from one tree),
and run anywhere else, the installed copy. The wheel is "installed" by unpacking it into a folder on
``PYTHONPATH`` (what pip does for a pure-Python wheel, less the console script), and marked, so that the two
copies never pass for each other.

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


MARK = "INSTALLED_FROM_THE_WHEEL = True\n"


@pytest.fixture(scope="module")
def site(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked into a folder (a site-packages of its own); its suite carries a marker line."""
    folder = tmp_path_factory.mktemp("site")
    wheel.extractall(folder)
    init = folder / "masked_torch" / "analysis" / "__init__.py"
    init.write_text(init.read_text(encoding="utf-8") + MARK, encoding="utf-8")
    return folder


# masked_torch.nn is located, not imported (it imports torch, which -S leaves out); the command line is imported
WHERE = ("import importlib.util, masked_torch, masked_torch.analysis as a, masked_torch.analysis.cli as c\n"
         "print(masked_torch.__file__); print(importlib.util.find_spec('masked_torch.nn').origin)\n"
         "print(a.__file__); print(c.__file__)\n"
         "print(getattr(a, 'INSTALLED_FROM_THE_WHEEL', False))\n")


def _run(args: list[str], cwd: Path, site: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -S`` (no site-packages: this environment may hold an editable install of the project, whose
    finder would answer for masked_torch.analysis) with ``site`` alone on ``PYTHONPATH``; what runs here (the
    command line's ``--help``, imports of the suite's package) needs neither torch nor any other package."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def _files(proc: subprocess.CompletedProcess) -> tuple[list[Path], bool]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    *paths, marked = proc.stdout.split("\n")[:5]
    return [Path(p).resolve() for p in paths], marked == "True"


def test_from_the_clones_root_the_suite_is_the_clones_analysis_folder(site):
    paths, marked = _files(_run(["-c", WHERE], ROOT, site))
    assert paths == [ROOT / "masked_torch" / "__init__.py", ROOT / "masked_torch" / "nn" / "__init__.py",
                     ROOT / "analysis" / "__init__.py", ROOT / "analysis" / "cli.py"]
    assert not marked


def test_elsewhere_the_suite_is_the_installed_one(site, tmp_path):
    paths, marked = _files(_run(["-c", WHERE], tmp_path, site))
    installed = site.resolve() / "masked_torch"
    assert paths == [installed / "__init__.py", installed / "nn" / "__init__.py",
                     installed / "analysis" / "__init__.py", installed / "analysis" / "cli.py"]
    assert marked


def test_a_folder_named_analysis_that_is_not_this_project_is_left_alone(site, tmp_path):
    """A masked_torch/ beside an unrelated analysis/ (no pyproject of this project): no finder, the installed
    suite is not replaced by someone else's folder."""
    (tmp_path / "masked_torch").mkdir()
    for name in ("__init__.py", "_suite.py"):
        shutil.copy2(ROOT / "masked_torch" / name, tmp_path / "masked_torch" / name)
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "__init__.py").write_text("raise RuntimeError('not the suite')\n")
    code = ("import sys, masked_torch\ntry:\n    import masked_torch.analysis\nexcept ImportError as e:\n"
            "    print('ImportError')\nelse:\n    print(masked_torch.analysis.__file__)\n")
    proc = _run(["-c", code], tmp_path, tmp_path / "no-site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "ImportError"


@pytest.mark.parametrize("notebook", ["01_explore_stats.ipynb", "02_masked_layer_walkthrough.ipynb"])
def test_a_notebooks_kernel_imports_the_clones_suite(site, notebook):
    """A notebook's kernel starts in notebooks/; its first cell puts the clone's root on sys.path (those lines,
    taken from the notebook), after which the suite must be the clone's, not the installed wheel's."""
    import json

    cells = json.loads((ROOT / "notebooks" / notebook).read_text(encoding="utf-8"))["cells"]
    source = "".join(next(c for c in cells if c["cell_type"] == "code")["source"])
    setup = source[:source.index("sys.path.insert(0, str(ROOT))")] + "sys.path.insert(0, str(ROOT))\n"
    paths, marked = _files(_run(["-c", setup + WHERE], ROOT / "notebooks", site))
    assert paths[2:] == [ROOT / "analysis" / "__init__.py", ROOT / "analysis" / "cli.py"]
    assert not marked


@pytest.mark.parametrize("how", ["script", "module", "script-from-elsewhere"])
def test_the_commands_answer_from_the_clone_with_a_wheel_installed(site, tmp_path, how):
    args = {"script": ["visualize_activations_2d.py", "--help"],
            "module": ["-m", "masked_torch.analysis", "--help"],
            "script-from-elsewhere": [str(ROOT / "visualize_activations_2d.py"), "--help"]}[how]
    proc = _run(args, tmp_path if how == "script-from-elsewhere" else ROOT, site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout and "--model" in proc.stdout


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
