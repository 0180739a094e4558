"""Which masked layer stands for a plain ``torch.nn`` layer (filed with each op's rule in the rule table,
:mod:`masked_torch.nn.rules`), and where the mask of a plain layer goes (for the ``"plain"`` baseline). It does
not import the containers, so that :mod:`~masked_torch.nn.container` (``Masked`` names the layer to use
instead; ``Unmasked`` carries the mask) and :mod:`~masked_torch.nn.registry` (``convert_module``, which builds
containers) both import it, without a cycle."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .. import functional as MF
from .base import MaskedModule
from .elementwise import is_elementwise
from .rules.table import LAYERS, layer_for

__all__ = ["LAYERS", "masked_counterpart", "has_rule", "grid_mask"]


def masked_counterpart(module: nn.Module, kind: str = "masked") -> Optional[type]:
    """The masked layer filed for a plain layer's type (``None`` where there is none); the table is filled
    where each op's rule is registered (:mod:`masked_torch.nn.rules`)."""
    return layer_for(type(module), kind)


def has_rule(module: nn.Module) -> bool:
    """Whether ``convert`` has a rule for this module as a whole (a leaf of the converted graph)."""
    return isinstance(module, MaskedModule) or type(module) in LAYERS or is_elementwise(module)


def grid_mask(module: nn.Module, input: Tensor, mask: Tensor, output: Tensor, *, name: str = "") -> Tensor:
    """Where the mask goes through a plain layer that ran on the padded batch as it is (the ``"plain"``
    baseline): the output mask its masked counterpart would give."""
    name = name or type(module).__name__
    nd = input.dim() - 2
    if isinstance(module, _ConvTransposeNd):
        return MF.conv_transpose_mask(mask, module.kernel_size, module.stride, module.padding, module.output_padding,
                                      module.dilation, output.shape[2:])
    if isinstance(module, _ConvNd):
        m = mask if mask.shape[1] == 1 else mask.amax(dim=1, keepdim=True)
        pad = MF.resolve_padding(module.padding, module.kernel_size, module.dilation, name)
        return MF.window_anchor(m, module.kernel_size, module.stride, pad, module.dilation, anchor="end",
                                out_shape=output.shape[2:])
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        stride = module.stride if module.stride else module.kernel_size
        return MF.window_anchor(mask, MF._ntuple(module.kernel_size, nd), stride, module.padding,
                                getattr(module, "dilation", 1), anchor="end", ceil_mode=module.ceil_mode,
                                out_shape=output.shape[2:])
    if isinstance(module, (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)):
        sizes = MF.adaptive_sizes(module.output_size, nd, name)  # the mask of the per-image rule
        dims = tuple(2 + i for i, s in enumerate(sizes) if s is not None)
        return mask.amax(dim=dims, keepdim=True) if dims else mask
    if isinstance(module, nn.Upsample):
        MF.check_interpolate(module.size, module.scale_factor, module.mode, module.align_corners,
                             module.recompute_scale_factor, name=name)
        m = mask.amax(dim=1, keepdim=True) if module.mode not in ("nearest", "nearest-exact") else mask
        return MF.interpolate_mask(m, module.scale_factor, output.shape[2:])
    if isinstance(module, nn.PixelShuffle):
        return MF.masked_pixel_shuffle(input, mask, module.upscale_factor, name=name)[1]
    if isinstance(module, nn.PixelUnshuffle):
        return MF.masked_unshuffle(input, mask, module.downscale_factor, name=name)[1]
    if isinstance(module, nn.Flatten):
        return MF.reshape_mask(mask, input.shape, output.shape, name=name)
    if output.shape == input.shape or (output.dim() == input.dim() and output.shape[2:] == input.shape[2:]
                                        and output.shape[0] == input.shape[0]):
        return mask if mask.shape[1] in (1, output.shape[1]) else mask.amax(dim=1, keepdim=True)
    if isinstance(module, nn.Linear) and mask.shape[-1] == 1:
        return mask
    raise ValueError(f"{name}: no rule for where the mask goes from input {tuple(input.shape)} to output "
                     f"{tuple(output.shape)}")
