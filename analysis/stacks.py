"""The experiment's three stacks: ``depth`` levels of PixelUnshuffle(2) + 3x3 conv (+ ReLU), with identical
weights, built as a plain ``nn.Sequential`` and converted three ways with :func:`masked_torch.nn.convert`.

* ``conv``  -- plain ``nn.Conv2d`` run unmasked; the mask only rides alongside so that statistics are taken
  over the same valid positions as in the other stacks.
* ``pconv`` -- :class:`~masked_torch.nn.PartialConv2d` (padding use: ``update_mask=False``; per-channel
  validity of the unshuffled mask: ``multichannel=True``).
* ``mconv`` -- :class:`~masked_torch.nn.MaskedConv2d`.

:func:`build_variants` makes the three stacks of any plain model the same way
(:mod:`masked_torch.analysis.models` holds the registry of plain models: this stack, a ResNet-18, a U-Net).

Children are named ``unshuffle{i}``, ``conv{i}``, ``act{i}`` (level ``i`` from 1), identically in every stack,
so a layer name means the same layer in each.
"""
from __future__ import annotations

import re
from collections import OrderedDict

import torch
from torch import nn

from masked_torch.nn import convert

from .choices import ACTIVATION_NAMES, INITS, STACKS

_ACTIVATION_LAYERS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "none": None}
ACTIVATIONS = {name: _ACTIVATION_LAYERS[name] for name in ACTIVATION_NAMES}  # the names of masked_torch.analysis.choices


def channel_plan(depth: int, in_channels: int = 3, width: int = 16) -> list[tuple[int, int]]:
    """``(in, out)`` channels of each level's conv: level ``i`` outputs ``width * i`` channels
    (16, 32, 48, 64 for depth 4) from the unshuffled ``4 x`` previous channels."""
    plan, c = [], in_channels
    for i in range(1, depth + 1):
        plan.append((4 * c, width * i))
        c = width * i
    return plan


def build_plain(
    depth: int = 4,
    *,
    bias: bool = True,
    activation: str = "relu",
    init: str = "default",
    seed: int = 0,
    in_channels: int = 3,
    width: int = 16,
) -> nn.Sequential:
    """The plain stack, seeded. ``init='default'`` is ``nn.Conv2d``'s own initialisation;
    ``'kaiming'`` is He-normal (fan-in, ReLU gain), ``'xavier'`` Glorot-normal; biases stay as
    ``nn.Conv2d`` draws them."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        for i, (c_in, c_out) in enumerate(channel_plan(depth, in_channels, width), start=1):
            layers[f"unshuffle{i}"] = nn.PixelUnshuffle(2)
            conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=bias)
            if init == "kaiming":
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_normal_(conv.weight)
            layers[f"conv{i}"] = conv
            if ACTIVATIONS[activation] is not None:
                layers[f"act{i}"] = ACTIVATIONS[activation]()
        return nn.Sequential(layers).eval()
    finally:
        torch.random.set_rng_state(gen_state)


def build_variants(plain: nn.Module, stacks=STACKS, *, update_mask: bool = False) -> "OrderedDict[str, nn.Module]":
    """The stacks of any plain model, in eval mode, all with ``plain``'s weights (``plain`` is left as it is):

    * ``conv``  -- ``convert(plain, "plain")``: every layer as it is on the padded batch, the mask rides along;
    * ``pconv`` -- ``convert(plain, "partial", update_mask=False, multichannel=True)``: every convolution a
      :class:`~masked_torch.nn.PartialConv2d` in its padding use (the output mask stays the image's:
      ``update_mask=False``) counting valid inputs per channel (``multichannel=True``: the unshuffled mask of the
      seed stack has a channel per sub-position; for a 1-channel mask, as in a ResNet or a U-Net, it is the same
      as ``multichannel=False``); other layers (norms, pools, transposed convs) as in ``mconv``.
      ``update_mask=True``: the paper's rule instead (valid wherever the window saw a valid input, holes close
      with depth), as the seed's ``PartialConv2d`` (``--preset seed``);
    * ``mconv`` -- ``convert(plain, "masked")``: :class:`~masked_torch.nn.MaskedConv2d` and every other layer's
      masked counterpart.

    Layer names are the plain model's in every stack."""
    kinds = {
        "conv": lambda: convert(plain, "plain"),
        "pconv": lambda: convert(plain, "partial", update_mask=update_mask, multichannel=True),
        "mconv": lambda: convert(plain, "masked"),
    }
    stacks = tuple(stacks)
    unknown = [s for s in stacks if s not in kinds]
    if unknown:
        raise ValueError(f"unknown stacks {unknown}; choose from {STACKS}")
    return OrderedDict((name, kinds[name]().eval()) for name in stacks)


def build_stacks(depth: int = 4, *, stacks=STACKS, **kwargs) -> "OrderedDict[str, nn.Module]":
    """``{"conv": ..., "pconv": ..., "mconv": ...}`` of the seed-style stack (:func:`build_plain`), identical
    weights (:func:`build_variants`)."""
    unknown = [s for s in stacks if s not in STACKS]
    if unknown:  # before building anything, as before
        raise ValueError(f"unknown stacks {sorted(unknown)}; choose from {STACKS}")
    return build_variants(build_plain(depth, **kwargs), stacks)


_LEVEL = re.compile(r"(\d+)$")


def layer_depth(name: str) -> int:
    """Level of a layer from its name (``conv3`` -> 3); 0 for a name without a level."""
    match = _LEVEL.search(name.split(".")[0])
    return int(match.group(1)) if match else 0


def layer_kind(name: str) -> str:
    """``unshuffle``, ``conv`` or ``act`` from a layer name."""
    return _LEVEL.sub("", name.split(".")[0])
