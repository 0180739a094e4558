"""A missing package of the ``analysis`` extra is one line naming it and install commands that work, not a
traceback; importing the command line stays light (no torch, no pandas)."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from masked_torch.analysis._extras import MissingExtraError, require

ROOT = Path(__file__).resolve().parents[1]
CLI = ROOT / "analysis" / "cli.py"
FROM_CLONE = "or pip install '.[analysis]' in a clone of masked_torch"


def _python(code: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_nothing_missing_is_silent():
    assert require("pandas", "seaborn", "matplotlib.pyplot", "skimage", "pyarrow", "tqdm") is None


def test_missing_modules_are_named_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "seaborn", None)  # import of seaborn halted
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(MissingExtraError) as info:
        require("pandas", "seaborn", "skimage", "skimage.data")
    err = info.value
    assert isinstance(err, ImportError)
    # the distributions' names (scikit-image, not skimage), each once, in the order asked
    assert str(err) == ("masked_torch.analysis needs the 'analysis' extra (missing: seaborn, scikit-image): "
                        f"pip install seaborn scikit-image, {FROM_CLONE}")
    assert err.missing == ("seaborn", "scikit-image")
    assert "\n" not in str(err)


def test_feature_is_named_when_given(monkeypatch):
    monkeypatch.setitem(sys.modules, "seaborn", None)
    with pytest.raises(MissingExtraError, match=r"^masked_torch\.analysis needs the 'analysis' extra for figures "
                                                r"\(missing: seaborn\): pip install seaborn, or pip install "
                                                r"'\.\[analysis\]' in a clone of masked_torch$"):
        require("seaborn", feature="figures")


def test_the_named_distributions_are_the_extras_so_the_pip_command_installs_it(monkeypatch):
    """Every package the command line requires, all missing: ``pip install <missing>`` names exactly the
    distributions of the ``analysis`` extra in pyproject.toml (the command that works without a clone)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        extra = tomllib.load(f)["project"]["optional-dependencies"]["analysis"]
    names = {re.split(r"[<>=!~ ;\[]", requirement, maxsplit=1)[0].lower() for requirement in extra}
    modules = re.search(r"require\(([^)]*)\)", CLI.read_text(encoding="utf-8")).group(1)
    modules = [m.strip().strip("'\"") for m in modules.split(",")]
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingExtraError) as info:
        require(*modules)
    assert {m.lower() for m in info.value.missing} == names
    assert f"pip install {' '.join(info.value.missing)}, " in str(info.value)


def test_in_a_fresh_process_with_packages_blocked():
    """As a user without pandas and seaborn meets it: a fresh interpreter in which both cannot be imported."""
    code = ("import sys; sys.modules['pandas'] = None; sys.modules['seaborn'] = None\n"
            "from masked_torch.analysis._extras import MissingExtraError, require\n"
            "try:\n    require('pandas', 'seaborn', 'matplotlib')\n"
            "except MissingExtraError as e:\n    print(e)\n    sys.exit(3)\n")
    proc = _python(code)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == ("masked_torch.analysis needs the 'analysis' extra (missing: pandas, seaborn): "
                           f"pip install pandas seaborn, {FROM_CLONE}\n")


def test_importing_the_command_line_imports_neither_torch_nor_pandas():
    code = ("import sys, masked_torch.analysis, masked_torch.analysis._extras, masked_torch.analysis.cli\n"
            "heavy = sorted(m for m in ('torch', 'pandas', 'numpy', 'matplotlib', 'seaborn') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    proc = _python(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "", f"imported at import time: {proc.stdout.strip()}"


_WIRED = "MissingExtraError" in CLI.read_text(encoding="utf-8")


@pytest.mark.xfail(not _WIRED, reason="analysis/cli.py does not catch MissingExtraError yet (require(...) in main, "
                                      "one line on stderr, exit 2)", run=False, strict=False)
def test_command_line_says_one_line_and_exits_2_without_seaborn(tmp_path):
    code = ("import sys; sys.modules['seaborn'] = None\n"
            "from masked_torch.analysis.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    out = tmp_path / "out"
    proc = _python(code, "--out", str(out), "--data", "synthetic", "--depth", "1", "--num-images", "2",
                   "--max-side", "32", "--quiet")
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "masked_torch.analysis needs the 'analysis' extra (missing: seaborn)" in lines[0]
    assert lines[0].endswith(f"pip install seaborn, {FROM_CLONE}")
    assert "Traceback" not in proc.stderr
    assert not (out / "activation_stats.parquet").exists()
