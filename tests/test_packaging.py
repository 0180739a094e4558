"""What a user meets first: the licence text, the package metadata and the citation file agree."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LICENSE = ROOT / "LICENSE"
CITATION = ROOT / "CITATION.cff"


@pytest.fixture(scope="module")
def project():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def test_license_file_is_the_apache_2_text():
    assert LICENSE.is_file(), "LICENSE is missing"
    text = LICENSE.read_text(encoding="ascii")
    words = " ".join(text.split())
    assert words.startswith("Apache License Version 2.0, January 2004 http://www.apache.org/licenses/")
    for clause in ("TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "2. Grant of Copyright License.",
                   "3. Grant of Patent License.", "9. Accepting Warranty or Additional Liability.",
                   "END OF TERMS AND CONDITIONS"):
        assert clause in words, clause
    assert "MIT License" not in text


def test_pyproject_licence_agrees_with_the_license_file(project):
    # PEP 639: an SPDX expression plus the file that holds the text; no contradicting classifier
    assert project["license"] == "Apache-2.0"
    assert project.get("license-files") == ["LICENSE"]
    assert not [c for c in project.get("classifiers", []) if c.startswith("License ::")]
    assert "MIT" not in str(project["license"])


def test_built_metadata_says_apache(tmp_path):
    """The metadata a wheel would carry (setuptools' PEP 517 hook, run in a fresh process)."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} predates PEP 639 license metadata")
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.prepare_metadata_for_build_wheel(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    dist_info = tmp_path / proc.stdout.strip().splitlines()[-1]
    metadata = (dist_info / "METADATA").read_text()
    assert re.search(r"^License-Expression: Apache-2\.0$", metadata, re.M), metadata[:1500]
    assert re.search(r"^License-File: LICENSE$", metadata, re.M)
    assert not re.search(r"^License: ", metadata, re.M)  # the legacy free-text field (was "MIT")
    assert (dist_info / "licenses" / "LICENSE").read_bytes() == LICENSE.read_bytes()


def test_citation_cff_parses_and_agrees(project):
    assert CITATION.is_file(), "CITATION.cff is missing"
    text = CITATION.read_text(encoding="utf-8")
    assert re.search(r"^cff-version: 1\.2\.0$", text, re.M)
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the YAML parse is skipped")
    cff = yaml.safe_load(text)
    assert cff["cff-version"] == "1.2.0"
    assert cff["license"] == project["license"] == "Apache-2.0"
    assert str(cff["version"]) == project["version"]
    assert cff["title"] and cff["abstract"] and cff["message"]
    assert cff["authors"] == [{"name": "The masked_torch developers"}]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(cff["date-released"]))
