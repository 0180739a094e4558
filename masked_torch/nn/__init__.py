"""Masked layers: ``import masked_torch.nn as mnn``.

Every module here has ``forward(input, mask=None) -> (output, out_mask)``.
"""
from .base import MaskedModule
from .batchnorm import MaskedBatchNorm1d, MaskedBatchNorm2d, MaskedBatchNorm3d
from .container import Masked, MaskedSequential, Unmasked
from .conv import (
    LazyMaskedConv1d, LazyMaskedConv2d, LazyMaskedConv3d,
    LazyPartialConv1d, LazyPartialConv2d, LazyPartialConv3d,
    MaskedConv1d, MaskedConv2d, MaskedConv3d,
    MaskedConvTranspose1d, MaskedConvTranspose2d, MaskedConvTranspose3d,
    PartialConv1d, PartialConv2d, PartialConv3d,
)
from .convert import convert
from .elementwise import ELEMENTWISE
from .graph_module import MaskedGraphModule
from .linear import MaskedFlatten, MaskedLinear
from .norm import MaskedGroupNorm, MaskedInstanceNorm1d, MaskedInstanceNorm2d, MaskedInstanceNorm3d, MaskedLayerNorm
from .rules import register_elementwise, register_rule
from .pooling import (
    MaskedAdaptiveAvgPool1d, MaskedAdaptiveAvgPool2d, MaskedAdaptiveAvgPool3d,
    MaskedAdaptiveMaxPool1d, MaskedAdaptiveMaxPool2d, MaskedAdaptiveMaxPool3d,
    MaskedAvgPool1d, MaskedAvgPool2d, MaskedAvgPool3d,
    MaskedMaxPool1d, MaskedMaxPool2d, MaskedMaxPool3d,
    MaskedSpatialMean,
)
from .resample import MaskedPixelShuffle, MaskedUpsample
from .shuffle import MaskedUnshuffle1d, MaskedUnshuffle2d, MaskedUnshuffle3d

__all__ = [
    "MaskedModule", "MaskedSequential", "Masked", "Unmasked", "convert", "ELEMENTWISE", "MaskedGraphModule",
    "register_elementwise", "register_rule",
    "PartialConv1d", "PartialConv2d", "PartialConv3d",
    "MaskedConv1d", "MaskedConv2d", "MaskedConv3d",
    "LazyPartialConv1d", "LazyPartialConv2d", "LazyPartialConv3d",
    "LazyMaskedConv1d", "LazyMaskedConv2d", "LazyMaskedConv3d",
    "MaskedConvTranspose1d", "MaskedConvTranspose2d", "MaskedConvTranspose3d",
    "MaskedBatchNorm1d", "MaskedBatchNorm2d", "MaskedBatchNorm3d",
    "MaskedGroupNorm", "MaskedInstanceNorm1d", "MaskedInstanceNorm2d", "MaskedInstanceNorm3d", "MaskedLayerNorm",
    "MaskedMaxPool1d", "MaskedMaxPool2d", "MaskedMaxPool3d",
    "MaskedAvgPool1d", "MaskedAvgPool2d", "MaskedAvgPool3d",
    "MaskedAdaptiveAvgPool1d", "MaskedAdaptiveAvgPool2d", "MaskedAdaptiveAvgPool3d",
    "MaskedAdaptiveMaxPool1d", "MaskedAdaptiveMaxPool2d", "MaskedAdaptiveMaxPool3d",
    "MaskedUpsample", "MaskedPixelShuffle", "MaskedLinear", "MaskedFlatten",
    "MaskedUnshuffle1d", "MaskedUnshuffle2d", "MaskedUnshuffle3d",
    "MaskedSpatialMean",
]
