"""Containers: a Sequential that threads ``(input, mask)``, and wrappers that give a plain module the
masked-module protocol without renaming its parameters."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule
from .elementwise import is_elementwise, preserves_zero
from .layers import grid_mask, masked_counterpart

__all__ = ["MaskedSequential", "Masked", "Unmasked"]


class MaskedSequential(MaskedModule, nn.Sequential):
    """``nn.Sequential`` for masked modules: ``forward(input, mask=None) -> (output, mask)``.

    Every child must be a masked module (wrap plain elementwise modules in :class:`Masked`); children
    keep their names, so ``named_modules()`` matches the plain ``nn.Sequential`` it was converted from.
    """

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        for name, module in self._modules.items():
            if not isinstance(module, MaskedModule):
                raise TypeError(
                    f"MaskedSequential: child {name!r} ({type(module).__name__}) is not a masked module; "
                    f"wrap elementwise modules in masked_torch.nn.Masked(...) or use masked_torch.nn.convert"
                )
            input, mask = module(input, mask)
        return input, mask


class _Wrapper(MaskedModule, nn.Module):
    """Holds a plain module *as itself*: the wrapper shares the module's parameters, buffers and children
    (same dicts), so ``state_dict`` keys, ``named_parameters`` and checkpoints are the module's own, with no
    ``module.`` prefix; ``.module`` is the wrapped module."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_wrapped", module)
        self._parameters = module._parameters
        self._buffers = module._buffers
        self._non_persistent_buffers_set = module._non_persistent_buffers_set
        self._modules = module._modules
        self.training = module.training

    @property
    def module(self) -> nn.Module:
        return self._wrapped

    def train(self, mode: bool = True):
        super().train(mode)
        self._wrapped.training = mode
        return self

    def extra_repr(self) -> str:
        return repr(self._wrapped)

    def _name(self) -> str:
        return f"{type(self).__name__}({type(self._wrapped).__name__})"


class Masked(_Wrapper):
    """Run an elementwise module (ReLU, GELU, sigmoid, dropout, ...) and pass the mask on.

    The output is 0 under the mask, as every masked module's: unless the module maps 0 to 0 and the input is
    already 0 there (``input_zeroed``, set inside converted models), the output is selected there. A module
    that is not elementwise is refused with ``TypeError`` (its statistics or windows would read the padding),
    naming the masked layer to use; ``elementwise=True`` vouches for a custom module that acts on each
    position alone.
    """

    input_zeroed = False

    def __init__(self, module: nn.Module, *, elementwise: bool = False) -> None:
        if not (elementwise or is_elementwise(module)):
            instead = masked_counterpart(module)
            hint = (f"use masked_torch.nn.{instead.__name__} instead" if instead is not None else
                    "pass elementwise=True if it acts on each position alone, or use masked_torch.nn.convert")
            raise TypeError(f"Masked: {type(module).__name__} is not elementwise (it would read the padding); {hint}")
        super().__init__(module)
        self._keeps_zero = preserves_zero(module)

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            return self._wrapped(input), None
        MF.check_broadcast_mask(input, mask, self._name())
        out = self._wrapped(input)
        if out.shape != input.shape:
            raise ValueError(f"{self._name()}: the module changed input {tuple(input.shape)} into output "
                             f"{tuple(out.shape)}; only elementwise modules can be wrapped")
        if not (self.input_zeroed and self._keeps_zero):
            out = MF.zero_masked(out, mask)
        return out, mask


class Unmasked(_Wrapper):
    """Run a plain module on the padded batch as it is, and carry the mask along: the baseline that masking
    is compared against (``convert(model, "plain")``). Values under the mask are whatever the module makes of
    the padding; the output mask is the one its masked counterpart would give (the "end" rule for windows,
    one channel where the module mixes channels), so statistics can be taken over the same positions."""

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        out = self._wrapped(input)
        if mask is None:
            return out, None
        return out, grid_mask(self._wrapped, input, mask, out, name=self._name())
