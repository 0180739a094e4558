"""The ``analysis`` extra: a missing package is one line naming it and the install commands, not a traceback.

The core of masked_torch needs only torch and numpy; the suite also needs the packages of the ``analysis`` extra
of ``pyproject.toml``. :func:`require` imports the ones a command needs and, if any is missing, raises
:class:`MissingExtraError` with a one-line message that the command line prints as it is (exit status 2)::

    masked_torch.analysis needs the 'analysis' extra (missing: pandas, seaborn): pip install pandas seaborn, or pip install '.[analysis]' in a clone of masked_torch

Two commands that work: the missing distributions by name (on any index), or the extra from a clone of the
project (masked_torch is installed from its source; no index serves ``masked_torch[analysis]``).

No third-party import here: this module is imported by ``--help``.
"""
from __future__ import annotations

import importlib

EXTRA = "analysis"
FROM_CLONE = "pip install '.[analysis]' in a clone of masked_torch"
# import name -> the distribution pip installs it from, where the two differ
_DISTRIBUTIONS = {"skimage": "scikit-image", "PIL": "pillow", "yaml": "PyYAML"}


class MissingExtraError(ImportError):
    """A package of the ``analysis`` extra cannot be imported. ``str(error)`` is the one line to show (what is
    missing, ``pip install`` of those distributions, and the extra from a clone); ``error.missing`` the
    distributions' names, in the order asked."""

    def __init__(self, missing: tuple[str, ...], feature: str | None = None):
        self.missing = tuple(missing)
        self.feature = feature
        needs = f"masked_torch.analysis needs the '{EXTRA}' extra" + (f" for {feature}" if feature else "")
        super().__init__(f"{needs} (missing: {', '.join(self.missing)}): pip install {' '.join(self.missing)}, "
                         f"or {FROM_CLONE}")


def require(*modules: str, feature: str | None = None) -> None:
    """Import each of ``modules`` (import names: ``"pandas"``, ``"skimage"``, ``"matplotlib.pyplot"``).

    Raises:
        MissingExtraError: one or more cannot be imported (not installed, or broken); the message names all of
            them by their distribution name, once each, and the install commands. ``feature`` (e.g.
            ``"figures"``) is named in it when given.
    """
    missing: list[str] = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            top = module.split(".")[0]
            name = _DISTRIBUTIONS.get(top, top)
            if name not in missing:
                missing.append(name)
    if missing:
        raise MissingExtraError(tuple(missing), feature)
