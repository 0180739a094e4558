"""masked_torch: masked and partial convolutions for padded batches of differently sized images.

The submodules load on first use (PEP 562), so ``import masked_torch.analysis.cli`` (the command line's
``--help``) does not import torch; ``masked_torch.nn``, ``masked_torch.functional`` and ``masked_torch.utils``
behave as if imported here.
"""
import importlib
from pathlib import Path

from . import _suite

_suite.install(Path(__file__).resolve().parent)  # a source checkout: masked_torch.analysis is the clone's analysis/

__version__ = "0.1.0"
__all__ = ["functional", "nn", "utils", "__version__"]
_SUBMODULES = frozenset(("functional", "nn", "utils"))


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
