"""Masked layers: ``import masked_torch.nn as mnn``.

Every module here has ``forward(input, mask=None) -> (output, out_mask)``.
"""
from .base import MaskedModule
from .batchnorm import MaskedBatchNorm1d, MaskedBatchNorm2d, MaskedBatchNorm3d
from .container import Masked, MaskedSequential
from .conv import (
    LazyMaskedConv1d, LazyMaskedConv2d, LazyMaskedConv3d,
    LazyPartialConv1d, LazyPartialConv2d, LazyPartialConv3d,
    MaskedConv1d, MaskedConv2d, MaskedConv3d,
    PartialConv1d, PartialConv2d, PartialConv3d,
)
from .convert import ELEMENTWISE, convert
from .pooling import MaskedSpatialMean
from .shuffle import MaskedUnshuffle1d, MaskedUnshuffle2d, MaskedUnshuffle3d

__all__ = [
    "MaskedModule", "MaskedSequential", "Masked", "convert", "ELEMENTWISE",
    "PartialConv1d", "PartialConv2d", "PartialConv3d",
    "MaskedConv1d", "MaskedConv2d", "MaskedConv3d",
    "LazyPartialConv1d", "LazyPartialConv2d", "LazyPartialConv3d",
    "LazyMaskedConv1d", "LazyMaskedConv2d", "LazyMaskedConv3d",
    "MaskedBatchNorm1d", "MaskedBatchNorm2d", "MaskedBatchNorm3d",
    "MaskedUnshuffle1d", "MaskedUnshuffle2d", "MaskedUnshuffle3d",
    "MaskedSpatialMean",
]
