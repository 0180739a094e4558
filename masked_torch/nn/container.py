"""Containers: a Sequential that threads ``(input, mask)``, and a wrapper for plain modules."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from .. import functional as MF
from .base import MaskedModule

__all__ = ["MaskedSequential", "Masked"]


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


class Masked(MaskedModule, nn.Module):
    """Run a plain module that keeps the spatial grid and pass the mask on.

    Meant for elementwise modules (ReLU, GELU, Dropout, ...). It also lets a plain stride-1 'same'
    convolution run *unmasked* with the mask riding alongside (the baseline the analysis compares
    against): where the module changes the channel count, a C-channel mask is reduced to one channel
    (valid where any channel is). Values under the mask are whatever the module makes of the input there;
    masked layers downstream never read them.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, input: Tensor, mask: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            return self.module(input), None
        MF.check_mask(input, mask, input.dim() - 2, f"Masked({type(self.module).__name__})")
        out = self.module(input)
        if out.dim() != mask.dim() or out.shape[0] != mask.shape[0] or out.shape[2:] != mask.shape[2:]:
            raise ValueError(
                f"Masked({type(self.module).__name__}): the module changed the grid from input "
                f"{tuple(input.shape)} to output {tuple(out.shape)}, so the mask {tuple(mask.shape)} no longer "
                f"fits; only modules that keep the spatial grid can be wrapped"
            )
        if mask.shape[1] not in (1, out.shape[1]):
            mask = mask.amax(dim=1, keepdim=True)
        return out, mask
