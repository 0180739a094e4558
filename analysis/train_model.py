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
* ``resnet18`` -- the suite's ResNet-18 with ``num_classes`` outputs (its own global pool and ``fc``);
* ``bytelm`` -- the causal next-byte language model of ``--data stdlib`` (:class:`ByteLM`): ``num_classes`` (256)
  logits at every position of a one-hot byte sequence ``(N, 256, L)``.

The global pool of the head is what the three kinds differ in at the end: the plain network averages over its
whole padded canvas, the partial and masked ones over the image's positions only.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .choices import MODEL_NAMES
from .models import build_model, canvas_multiple, load_weights, reference_multiple

__all__ = ["TRAIN_MODELS", "IMAGE_MODELS", "small_cnn", "CausalBlock", "ByteLM", "lm_recorded", "build_classifier",
           "multiples"]

#: The classifiers of images, and every model the training experiment trains.
IMAGE_MODELS = ("small", *MODEL_NAMES)
TRAIN_MODELS = (*IMAGE_MODELS, "bytelm")


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


class CausalBlock(nn.Module):
    """``x + relu(bn(conv(x)))`` with a causal dilated ``Conv1d``: the sequence is padded with ``(kernel - 1) *
    dilation`` zeros on the left (``F.pad``) and convolved without padding, so output ``t`` sees inputs ``t -
    (kernel - 1) dilation .. t`` only. ``convert`` gives each sequence exactly this per-sequence padding (a constant
    ``F.pad`` by fixed amounts is part of each image's computation), so a converted block computes on every
    valid position what the plain block computes on the sequence alone."""

    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.left = (kernel - 1) * dilation
        self.conv = nn.Conv1d(channels, channels, kernel, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.relu(self.bn(self.conv(F.pad(x, (self.left, 0)))))


class ByteLM(nn.Module):
    """A fully convolutional causal next-byte model: ``embed`` (a 1x1 ``Conv1d`` from the one-hot bytes: the same
    map as ``nn.Embedding`` plus a bias), ``depth`` blocks (:class:`CausalBlock`) of kernel ``kernel`` and dilations
    1, 2, 4, ..., and ``out``, a 1x1 ``Conv1d`` to ``vocab`` logits. Output ``t`` predicts byte ``t + 1`` from
    bytes ``t - R + 1 .. t``, ``R = 1 + (kernel - 1)(2^depth - 1)`` (31 at ``kernel=3, depth=4``)."""

    def __init__(self, vocab: int = 256, width: int = 32, depth: int = 4, kernel: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv1d(vocab, width, 1)
        self.blocks = nn.Sequential(*(CausalBlock(width, kernel, 2 ** i) for i in range(depth)))
        self.out = nn.Conv1d(width, vocab, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.embed(x)))


def lm_recorded(name: str, module: nn.Module) -> bool:
    """The layers the training experiment records of :class:`ByteLM`: the recorder's default selection
    (:func:`~masked_torch.analysis.selection.default_selection`) without ``out``, the 256 logits per position,
    which are the model's prediction rather than an activation (and would be 40% of the frame's rows)."""
    from .selection import default_selection

    return name != "out" and default_selection(name, module)


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
        elif name == "bytelm":
            model = ByteLM(num_classes, depth=depth, **options)
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
    if name in ("small", "bytelm"):
        return 1, 1
    return canvas_multiple(name, depth), reference_multiple(name, depth)
