"""The classifiers the training experiment trains: a small CNN (the default) or any model of the suite with a
classification head, seeded without touching the global random stream.

* ``small`` -- three 3x3 convs, each followed by BatchNorm and ReLU (``width``, ``2 width``, ``4 width`` channels;
  the first with stride 2, a 2x2 max pool after the second: a receptive field of 17 pixels), then the head: global
  average pool, flatten, linear. It runs on an image of any size, so "alone" is the image exactly;
* ``stack`` / ``unet`` (:mod:`~masked_torch.analysis.models`) -- the suite's network (``depth`` levels) followed by
  a 1x1 convolution to one channel per class (the U-Net's own ``outc``) and the global average pool: the linear map
  before the pool, because mconv's stack ends on fractional per-channel masks that a linear layer after the pool
  would mix (for the plain network the order makes no difference); their canvases must be a multiple of
  ``2**depth``, also alone;
* ``resnet18`` -- the suite's ResNet-18 with ``num_classes`` outputs (its own global pool and ``fc``).

The global pool of the head is what the three kinds differ in at the end: the plain network averages over its
whole padded canvas, the partial and masked ones over the image's positions only.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
from torch import nn

from .choices import MODEL_NAMES
from .models import build_model, canvas_multiple, load_weights, reference_multiple

__all__ = ["TRAIN_MODELS", "small_cnn", "build_classifier", "multiples"]

TRAIN_MODELS = ("small", *MODEL_NAMES)


def _head(channels: int, num_classes: int) -> "OrderedDict[str, nn.Module]":
    return OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(), fc=nn.Linear(channels, num_classes))


def small_cnn(num_classes: int, width: int = 16, in_channels: int = 3) -> nn.Sequential:
    """The default classifier (module docstring): 6.2 k parameters at ``width=8`` and 3 classes."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    c = in_channels
    for i, out in enumerate((width, 2 * width, 4 * width), start=1):
        layers[f"conv{i}"] = nn.Conv2d(c, out, 3, stride=2 if i == 1 else 1, padding=1, bias=False)
        layers[f"bn{i}"] = nn.BatchNorm2d(out)
        layers[f"relu{i}"] = nn.ReLU()
        if i == 2:
            layers[f"pool{i}"] = nn.MaxPool2d(2)
        c = out
    layers.update(_head(c, num_classes))
    return nn.Sequential(layers)


def build_classifier(name: str, num_classes: int, *, width: Optional[int] = None, depth: int = 3, seed: int = 0,
                     weights=None) -> nn.Module:
    """Plain classifier ``name`` (:data:`TRAIN_MODELS`) in train mode, drawn after ``torch.manual_seed(seed)``
    with the caller's random state restored; ``weights``: a checkpoint of the same classifier, loaded strict
    (:func:`~masked_torch.analysis.models.load_weights`: one line naming the file and the mismatched keys)."""
    if name not in TRAIN_MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {TRAIN_MODELS}")
    options = {} if width is None else {"width": width}
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if name == "small":
            model = small_cnn(num_classes, **options)
        elif name == "resnet18":
            model = build_model("resnet18", seed=seed, num_classes=num_classes, **options)
        elif name == "unet":
            model = build_model("unet", depth=depth, seed=seed, num_classes=num_classes, **options)
            model = nn.Sequential(OrderedDict(net=model, pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
        else:
            features = build_model("stack", depth=depth, seed=seed, **options)
            channels = [m for m in features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
            # linear before the pool (a 1x1 conv: the same map for the plain network): mconv's stack ends on
            # fractional per-channel masks, which a linear layer after the pool would mix
            model = nn.Sequential(OrderedDict(features=features, classify=nn.Conv2d(channels, num_classes, 1),
                                              pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten()))
    finally:
        torch.random.set_rng_state(state)
    if weights is not None:
        load_weights(model, weights)
    return model.train()


def multiples(name: str, depth: int = 3) -> tuple[int, int]:
    """``(batch canvas multiple, alone multiple)``: what a padded batch's canvas, and an image run alone, are
    padded up to. The small CNN: ``(1, 1)`` (the batch's largest image; the image exactly); the suite's models:
    :func:`~masked_torch.analysis.models.canvas_multiple` and
    :func:`~masked_torch.analysis.models.reference_multiple` (the ResNet-18 runs alone on the exact image)."""
    if name == "small":
        return 1, 1
    return canvas_multiple(name, depth), reference_multiple(name, depth)
