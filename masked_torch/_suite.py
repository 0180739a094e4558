"""Where ``masked_torch.analysis`` lives when masked_torch is imported from a source checkout.

Installed (a wheel, ``pip install .``), the suite is the sub-package ``masked_torch/analysis/``. In a clone its
source is the top-level folder ``analysis/`` beside ``masked_torch/``, and setuptools maps the one onto the other
only for an installed or editable copy. Run from the clone's root (``python visualize_activations_2d.py``,
``python -m masked_torch.analysis``, the notebooks), the clone's ``masked_torch/`` comes first on ``sys.path``
and hides the installed package; :func:`install` then points ``masked_torch.analysis`` at the clone's
``analysis/`` folder, so that the layers and the suite always come from the same tree.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

NAME = "masked_torch.analysis"


class SourceSuiteFinder(importlib.abc.MetaPathFinder):
    """Finds ``masked_torch.analysis`` (the package only; its submodules are found through its ``__path__``)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != NAME:
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)])


def install(package_dir: Path) -> None:
    """Put a :class:`SourceSuiteFinder` first on ``sys.meta_path`` when ``package_dir`` (masked_torch's folder)
    has no ``analysis`` sub-package and its parent is a checkout of this project with an ``analysis/`` folder."""
    root = package_dir.parent
    folder = root / "analysis"
    if (package_dir / "analysis").is_dir() or not (folder / "__init__.py").is_file():
        return
    if not (root / "pyproject.toml").is_file() or 'name = "masked_torch"' not in (root / "pyproject.toml").read_text(
            encoding="utf-8", errors="replace"):
        return
    if not any(isinstance(f, SourceSuiteFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, SourceSuiteFinder(folder))
