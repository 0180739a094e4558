"""Which layers of a model a recorder hooks, and which models it cannot hook (compiled ones).

:func:`select_layers` picks ``(name, module)`` pairs: by default (:func:`default_selection`) every
convolution, normalisation, :class:`~masked_torch.nn.Masked`/:class:`~masked_torch.nn.Unmasked` wrapper and
activation; or a list of names; or a predicate. :func:`refuse_compiled` raises for a ``torch.compile``'d
model (or one holding compiled submodules): PyTorch silently ignores forward hooks added to those. Neither
imports the compiler: without ``torch._dynamo`` loaded, no module can have been compiled.
"""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from masked_torch.nn import ELEMENTWISE, Masked, Unmasked

__all__ = ["Include", "default_selection", "select_layers", "compiled_modules", "refuse_compiled"]

_NORMS: tuple[type, ...] = tuple(
    t for t in (
        torch.nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm, masked BN
        nn.GroupNorm,
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
    ) if t is not None
)
_SKIP_ELEMENTWISE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.FeatureAlphaDropout)
_ACTIVATIONS: tuple[type, ...] = tuple(t for t in ELEMENTWISE if not issubclass(t, _SKIP_ELEMENTWISE))

#: What a recorder records: ``None`` (:func:`default_selection`), names of ``model.named_modules()``, or a
#: predicate ``(name, module) -> bool``.
Include = Union[None, Sequence[str], Callable[[str, nn.Module], bool]]


def default_selection(name: str, module: nn.Module) -> bool:
    """Convolutions, normalisations, :class:`~masked_torch.nn.Masked` and :class:`~masked_torch.nn.Unmasked`
    wrappers and plain activations (``ELEMENTWISE`` without Identity and dropouts). Containers are not
    selected; an ``Unmasked`` wrapper is selected where the layer it wraps is."""
    if isinstance(module, Unmasked):
        return default_selection(name, module.module)
    return isinstance(module, (torch.nn.modules.conv._ConvNd, Masked) + _NORMS + _ACTIVATIONS)


def select_layers(model: nn.Module, include: Include = None) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers a recorder records, in ``model.named_modules()`` order.

    ``include=None``: :func:`default_selection`; a predicate ``(name, module) -> bool``: the modules it
    accepts. Either way a module inside a selected :class:`~masked_torch.nn.Masked` wrapper is skipped (the
    wrapper's output *is* its output, with the mask). A list of names: exactly those (unknown names raise
    ``KeyError``).
    """
    modules = list(model.named_modules())
    if include is None or callable(include):
        accept = default_selection if include is None else include
        chosen, wrappers = [], []
        for name, module in modules:
            if any(name.startswith(w + ".") if w else True for w in wrappers):
                continue
            if accept(name, module):
                chosen.append((name, module))
                if isinstance(module, (Masked, Unmasked)):
                    wrappers.append(name)
        return chosen
    if isinstance(include, str):
        include = [include]
    by_name = dict(modules)
    unknown = [name for name in include if name not in by_name]
    if unknown:
        raise KeyError(f"ActivationRecorder: no modules named {unknown} in the model; "
                       f"names are those of model.named_modules()")
    wanted = set(include)
    return [(name, module) for name, module in modules if name in wanted]


def _optimized_module_type() -> Optional[type]:
    """``torch._dynamo.eval_frame.OptimizedModule`` if the compiler is loaded, else ``None``: without
    ``torch._dynamo`` imported no module can have been compiled, and importing it costs 1-2 s."""
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def compiled_modules(model: nn.Module) -> list[str]:
    """Names of the ``torch.compile``'d modules in ``model`` (``"<model>"`` for the model itself):
    ``OptimizedModule`` wrappers and modules compiled in place with ``nn.Module.compile``."""
    optimized = _optimized_module_type()
    found = []
    for name, module in model.named_modules():
        if ((optimized is not None and isinstance(module, optimized))
                or getattr(module, "_compiled_call_impl", None) is not None):
            found.append(name or "<model>")
    return found


def refuse_compiled(model: nn.Module) -> None:
    """``RuntimeError`` naming the compiled modules and the eager model to record instead, if any."""
    compiled = compiled_modules(model)
    if not compiled:
        return
    optimized = _optimized_module_type()
    hint = ("record the eager model `model._orig_mod` instead (same parameters), or the model before "
            "torch.compile" if optimized is not None and isinstance(model, optimized) else
            "record an eager copy (use `._orig_mod` of each compiled submodule) or the model before "
            "torch.compile")
    raise RuntimeError(
        f"ActivationRecorder: cannot record a torch.compile'd model (compiled: {compiled}): PyTorch "
        f"ignores forward hooks added to compiled modules, so the statistics would be silently empty "
        f"or partial; {hint}"
    )
