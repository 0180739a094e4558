"""``--preset seed``: the seed's own experiment (its ``examples/visualize_activations_2d.py``), run through the one
experiment of :func:`masked_torch.analysis.run.run_experiment` with the settings, the network and the image source
below.

What the seed's script does, and how the preset follows it:

* **draws**: ``torch.manual_seed(1337)``, then three stacks built in this order: conv (``nn.Conv2d``), pconv (the
  seed's ``PartialConv2d``) and mconv (its ``MaskedConv2d``). Both are ``nn.Conv2d`` subclasses, so each stack
  draws the same default initialisation from the global stream; pconv and mconv then load conv's weights, and only
  then is the image drawn, ``x = torch.randn(1, 3, 256, 256)``: after 3 x 8 convolutions' draws
  (:func:`seed_draws`). The caller's global RNG state is left as it was;
* **network**: ``depth = 8`` levels, level ``i = 0..7`` (``unshuffle{i+1}``, ``conv{i+1}``; ``depth`` ``i+1`` in the
  frames): ``PixelUnshuffle(2)`` then a 3x3 conv, padding 1, no bias, no activation; channels ``12 -> 4`` for
  ``i = 0``, ``2**(i+1) * 4 -> 2**i * 4`` after (:func:`seed_channel_plan`);
* **mask** (:func:`seed_mask`), 3 channels, written as the seed's slices: channel 0 invalid in the top-right
  quarter, channels 0-1 in the bottom-right, all three in the bottom-left, then ``[..., 0:256:2, 0:256:2] = 0`` and
  ``[..., 0:256:3, 0:256:3] = 0``: the positions whose row *and* column are both even (then both multiples of 3),
  a lattice of points, 1/3 of the positions. Every stack gets ``x * mask`` (the image source carries the mask;
  the batch's collate zeroes ``x`` under it, :func:`masked_torch.analysis.data.paste_masks`);
* **layers**: conv = plain ``nn.Conv2d`` (the mask rides along), pconv = ``PartialConv2d(multichannel=True,
  update_mask=True)``: the seed's layer counts the valid inputs of each window over all input channels, rescales
  by ``in * 3 * 3 / count`` and clamps the count at 1 for its output mask, so an output is valid wherever its
  window saw any valid input and the holes close with depth (``Settings.update_mask``; the suite's own runs keep
  ``False``); mconv = ``MaskedConv2d``: ``conv(x) * m'`` with ``m'`` the mask at the window centre mixed over the
  input channels by ``sum_kernel |W|`` (a fractional mask). The seed adds ``eps = 1e-8`` to its divisors; these
  layers divide exactly and give 0 where nothing is valid;
* **recorded**: the outputs of the convolutions (the seed records every ``nn.Conv2d`` instance), and the input at
  depth 0.

Statistics, two kinds:

* the suite's (``activation_stats.parquet``, as every run): per channel, over the positions each stack's own
  output mask keeps (``mask != 0``; conv: where mconv's would be); ``count`` says how many. With update_mask=True
  pconv's valid region grows with depth, so its positions differ from conv's and mconv's;
* the seed's own (``tensor_stats.parquet``, :class:`TensorStatsPass`): what its script prints, per stack and depth,
  over the *whole* output tensor of the image, every channel and position, masked zeros included (its "Warning:
  calculating activation statistics does not take into account the mask"): mean, population std, skewness and
  kurtosis (the standardised 3rd and 4th moments; the seed adds 1e-8 to ``std**3`` and ``std**4``, which only
  matters where ``std`` is below about 0.01, so here the exact moments, NaN where ``std`` is 0).

The image fills its 256x256 canvas: "alone" is the batch itself, so the experiment's ``conv_alone`` rows would
repeat conv's, its padding errors are all 0 and its per-image statistics equal their alone values; the preset
drops those three (there is no padding-sensitivity file).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import nn

from .choices import STACKS
from .data import ImageSource
from .stacks import layer_depth, layer_kind

SEED = 1337
SIZE = 256
DEPTH = 8
IMAGE = "seed_noise"
INPUT = "input"  # the layer name of depth 0 in the tensor statistics


def seed_channel_plan(depth: int = DEPTH) -> list[tuple[int, int]]:
    """``(in, out)`` of level ``i = 0..depth-1``: ``in = 12`` for ``i = 0``, ``2**(i+1) * 4`` after;
    ``out = 2**i * 4``."""
    return [(12 if i == 0 else 2 ** (i + 1) * 4, 2**i * 4) for i in range(depth)]


def seed_mask(size: int = SIZE) -> torch.Tensor:
    """The seed's mask, float ``(1, 3, size, size)``, 1 = valid, as its slices write it (``h = size // 2``):
    channel 0 invalid in the top-right quarter, channels 0-1 in the bottom-right, all in the bottom-left; then every
    position whose row and column are both even, and every one whose row and column are both multiples of 3."""
    h = size // 2
    mask = torch.ones(1, 3, size, size)
    mask[:, :1, :h, h:] = 0
    mask[:, :2, h:, h:] = 0
    mask[:, :3, h:, :h] = 0
    mask[:, :, 0:size:2, 0:size:2] = 0
    mask[:, :, 0:size:3, 0:size:3] = 0
    return mask


def seed_levels(depth: int = DEPTH) -> nn.Sequential:
    """One unseeded stack of the seed's levels (draws ``depth`` convolutions' default init from the global stream)."""
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    for i, (c_in, c_out) in enumerate(seed_channel_plan(depth)):
        layers[f"unshuffle{i + 1}"] = nn.PixelUnshuffle(2)
        layers[f"conv{i + 1}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    return nn.Sequential(layers).eval()


def seed_draws(depth: int = DEPTH, *, seed: int = SEED, size: int = SIZE) -> tuple[nn.Sequential, torch.Tensor]:
    """The seed's plain stack and image, in its order of draws: ``torch.manual_seed(seed)``, the conv stack, two
    more stacks' worth of the same draws (the seed builds its pconv and mconv stacks next, whose weights are then
    replaced by conv's), then ``x = torch.randn(1, 3, size, size)``. The caller's global RNG state is restored."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        plain = seed_levels(depth)
        for _ in ("pconv", "mconv"):
            seed_levels(depth)
        return plain, torch.randn(1, 3, size, size)
    finally:
        torch.random.set_rng_state(state)


class SeedSource(ImageSource):
    """The seed's image with its 3-channel mask (:func:`seed_mask`), as a one-image source: ``source[0]`` is the
    N(0, 1) image ``x`` of :func:`seed_draws` (``(3, size, size)``, not yet masked) carrying ``mask``; ``image``:
    that image, when the caller has drawn it already (``(1, 3, size, size)``)."""

    kind = "seed"

    def __init__(self, depth: int = DEPTH, *, seed: int = SEED, size: int = SIZE,
                 image: Optional[torch.Tensor] = None):
        super().__init__([IMAGE], max_side=None, normalize="none", strict=True)
        self.size = int(size)
        if image is None:
            image = seed_draws(depth, seed=seed, size=size)[1]
        self._pixels = image[0].numpy()
        self._mask_pixels = seed_mask(size)[0].numpy()

    def _header(self, i: int) -> tuple[int, int]:
        return self.size, self.size

    def _decode(self, i: int) -> np.ndarray:
        return self._pixels.copy()

    def _mask(self, i: int) -> np.ndarray:
        return self._mask_pixels.copy()


def tensor_moments(t: torch.Tensor) -> dict:
    """The seed's printed statistics of one sample's tensor, over every entry, in float64: ``values`` (the number of
    entries: positions x channels; ``count`` is kept for positions per channel, as in the stats frame), ``mean``,
    population ``std``, ``skewness`` and ``kurtosis`` (standardised 3rd and 4th moments; NaN where ``std`` is 0)."""
    x = t.detach().double().flatten()
    mean = x.mean()
    d = x - mean
    var = float((d * d).mean())
    std = math.sqrt(var)
    skew = float((d**3).mean()) / std**3 if std > 0 else float("nan")
    kurt = float((d**4).mean()) / var**2 if std > 0 else float("nan")
    return dict(values=x.numel(), mean=float(mean), std=std, skewness=skew, kurtosis=kurt)


class TensorStatsPass:
    """The seed's own statistics (:func:`tensor_moments`) of every image, per stack: the input at depth 0 and each
    convolution's output, over the whole tensor, masked zeros included. A pass of
    :func:`~masked_torch.analysis.run.run_experiment` (``passes=``)."""

    def __init__(self, stacks) -> None:
        self.stacks = list(stacks)
        self.rows: list[dict] = []

    def add(self, batch, batch_out: dict) -> None:
        for k, name in enumerate(batch.names):
            given = tensor_moments(batch.x[k])  # the same input for every stack
            for s in self.stacks:
                self.rows.append(dict(stack=s, layer=INPUT, depth=0, image=name, **given))
                for layer, (out, _) in batch_out[s].items():
                    if layer_kind(layer) == "conv":
                        self.rows.append(dict(stack=s, layer=layer, depth=layer_depth(layer), image=name,
                                              **tensor_moments(out[k])))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def seed_settings(stacks=STACKS, threads=None, device: str = "cpu"):
    """The :class:`~masked_torch.analysis.settings.Settings` that describe the preset (kept with its results)."""
    from .settings import Settings

    return Settings(data="seed", depth=DEPTH, num_images=1, batch_size=1, seed=SEED, bias=False,
                    activation="none", init="default", stacks=tuple(stacks), max_side=SIZE, normalize="none",
                    figure_image=IMAGE, update_mask=True, threads=threads, device=device)


def run_seed(settings=None, *, progress: bool = False):
    """Run the preset through :func:`~masked_torch.analysis.run.run_experiment`; returns its
    :class:`~masked_torch.analysis.run.Results` with the suite's stats frame (no ``conv_alone``), the figure maps,
    no padding or per-image frames, and ``tensor_stats`` (the seed's own statistics). The caller's global torch RNG
    state is left as it was."""
    from .passes import REFERENCE
    from .run import run_experiment

    settings = settings or seed_settings()
    state = torch.random.get_rng_state()  # convert() draws fresh layers' init: leave the caller's stream alone
    try:
        plain, x = seed_draws(settings.depth, seed=settings.seed, size=SIZE)
        source = SeedSource(settings.depth, seed=settings.seed, size=SIZE, image=x)
        tensor_stats = TensorStatsPass(settings.stacks)
        results = run_experiment(settings, progress=progress, plain=plain, source=source, passes=[tensor_stats])
    finally:
        torch.random.set_rng_state(state)
    # the image fills its canvas: conv_alone repeats conv, and the padding and per-image frames say nothing
    results.stats = results.stats[results.stats["stack"] != REFERENCE].reset_index(drop=True)
    results.padding, results.image_stats = pd.DataFrame(), pd.DataFrame()
    results.tensor_stats = tensor_stats.frame()
    results.preset = "seed"
    return results
