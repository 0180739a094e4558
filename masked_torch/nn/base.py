"""The masked-module protocol."""
from __future__ import annotations


class MaskedModule:
    """Marker for modules whose ``forward(input, mask=None)`` returns ``(output, out_mask)``.

    :class:`~masked_torch.nn.MaskedSequential` passes ``(input, mask)`` through every such module;
    ``mask=None`` means "everything is valid" and every masked module then behaves exactly as its
    plain :mod:`torch.nn` counterpart and returns ``None`` as mask.
    """
