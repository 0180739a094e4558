"""``--preset seed``: the seed README's own experiment, reproduced exactly.

* one 256x256 image of N(0, 1) noise, 3 channels;
* ``depth = 8`` levels, level ``i = 0..7`` (named ``unshuffle{i+1}``, ``conv{i+1}``: ``depth`` i+1 in the frame):
  ``PixelUnshuffle(2)`` then a 3x3 conv, padding 1, no bias, no activation, ``nn.Conv2d``'s default init; the
  seed's channel plan ``in = 12`` for ``i = 0`` and ``2**(i+1) * 4`` after, ``out = 2**i * 4`` (4, 8, ... 512).
  It agrees with the unshuffle: ``unshuffle(2)`` of ``C`` channels gives ``4C``, so level 0 reads ``3 * 4 = 12``
  channels, level ``i > 0`` reads ``4 * 2**(i-1) * 4 = 2**(i+1) * 4``;
* ``torch.manual_seed(1337)`` immediately before the conv stack is built; the image is then drawn from the same
  global stream (``torch.randn(1, 3, 256, 256)`` right after the last conv is made). The caller's RNG state is
  restored afterwards;
* the seed's 3-channel mask (:func:`seed_mask`), and every stack is fed the masked input ``x * mask``;
* stacks: conv (plain ``nn.Conv2d``, the mask rides along), pconv (``PartialConv2d(multichannel=True,
  update_mask=False)``, as in the suite), mconv (``MaskedConv2d``), all from one plain stack by
  :func:`masked_torch.nn.convert`, so with identical weights.

Statistics are taken by :class:`~masked_torch.analysis.recorder.ActivationRecorder` over the positions of each stack's *own*
output mask, as in the default run. Unlike the default run these are not the same positions in every stack:
with a per-channel mask, mconv's output mask is per channel (an output channel is valid where its window saw a
valid input in any channel), while conv and pconv carry a 1-channel mask; the ``count`` column says how many
positions each statistic is over. There is no ``conv_alone`` reference (the mask has holes inside the image: no
"unpadded image" exists to run the plain network on) and no padding-sensitivity frame (one image, no batch).
"""
from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np
import pandas as pd
import torch
from torch import nn

from .choices import STACKS

SEED = 1337
SIZE = 256
DEPTH = 8


def seed_channel_plan(depth: int = DEPTH) -> list[tuple[int, int]]:
    """``(in, out)`` of level ``i = 0..depth-1``: ``in = 12`` for ``i = 0``, ``2**(i+1) * 4`` after;
    ``out = 2**i * 4``."""
    return [(12 if i == 0 else 2 ** (i + 1) * 4, 2**i * 4) for i in range(depth)]


def on_grid(n: int) -> torch.Tensor:
    """Boolean ``(n,)``: index ``r`` lies on the seed's grid when ``r % 2 == 0`` or ``r % 3 == 0`` (every 2nd and
    every 3rd row or column, counting from 0: 0, 2, 3, 4, 6, 8, 9, 10, 12, ...)."""
    r = torch.arange(n)
    return (r % 2 == 0) | (r % 3 == 0)


def seed_mask(size: int = SIZE) -> torch.Tensor:
    """The seed's mask, float ``(1, 3, size, size)``, 1 = valid:

    * channel 0 invalid in the top-right quarter (rows ``< size/2``, columns ``>= size/2``);
    * channels 0 and 1 invalid in the bottom-right quarter;
    * all channels invalid in the bottom-left quarter;
    * all channels invalid at every position *on the grid*: a position ``(r, c)`` is invalid when its row OR its
      column is on the grid (:func:`on_grid`: a multiple of 2 or of 3). So only rows and columns that are
      ``1`` or ``5 mod 6`` survive (1/3 of the rows, 1/3 of the columns: 1/9 of the positions before the
      quarters are taken out).
    """
    h = size // 2
    mask = torch.ones(1, 3, size, size)
    mask[:, 0, :h, h:] = 0
    mask[:, :2, h:, h:] = 0
    mask[:, :, h:, :h] = 0
    grid = on_grid(size)
    mask[:, :, grid[:, None] | grid[None, :]] = 0
    return mask


def build_seed_plain(depth: int = DEPTH, *, seed: int = SEED, size: int = SIZE) -> tuple[nn.Sequential, torch.Tensor]:
    """The seed's plain stack and its image: ``torch.manual_seed(seed)``, the ``depth`` levels built in order,
    then ``x = torch.randn(1, 3, size, size)`` from the same stream. The caller's global RNG state is restored."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        for i, (c_in, c_out) in enumerate(seed_channel_plan(depth)):
            layers[f"unshuffle{i + 1}"] = nn.PixelUnshuffle(2)
            layers[f"conv{i + 1}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        plain = nn.Sequential(layers).eval()
        x = torch.randn(1, 3, size, size)
        return plain, x
    finally:
        torch.random.set_rng_state(state)


def seed_settings(stacks=STACKS, threads=None, device: str = "cpu"):
    """The :class:`~masked_torch.analysis.settings.Settings` that describe the preset (kept with its results)."""
    from .settings import Settings

    return Settings(data="seed", depth=DEPTH, num_images=1, batch_size=1, seed=SEED, bias=False,
                    activation="none", init="default", stacks=tuple(stacks), max_side=SIZE, normalize="none",
                    figure_image="seed_noise", threads=threads, device=device)


def run_seed(settings=None, *, progress: bool = False):
    """Run the preset; returns :class:`~masked_torch.analysis.run.Results` with the stats frame (one row per
    stack, layer, channel, as in the default run), the figure maps, and an empty padding frame. The caller's
    global torch RNG state is left as it was."""
    state = torch.random.get_rng_state()  # convert() draws fresh layers' init: leave the caller's stream alone
    try:
        return _run_seed(settings)
    finally:
        torch.random.set_rng_state(state)


def _run_seed(settings):
    from .models import build_variants, layer_table
    from .passes import MapsPass, capture_outputs, display_rgb
    from .recorder import ActivationRecorder
    from .run import Results, recorded_layers, stats_frame

    start = time.perf_counter()
    settings = settings or seed_settings()
    torch.set_num_threads(settings.threads or 1)
    device = torch.device(settings.device)
    plain, x = build_seed_plain(settings.depth, seed=settings.seed, size=SIZE)
    mask = seed_mask(SIZE)
    models = {s: m.to(device) for s, m in build_variants(plain, settings.stacks).items()}
    xm, mask = (x * mask).to(device), mask.to(device)
    names = recorded_layers(next(iter(models.values())))
    table = layer_table(plain, x)
    table = table[table["layer"].isin(names)]
    frames, outputs = [], {}
    with torch.no_grad():
        for s, model in models.items():
            rec = ActivationRecorder(model, names)
            with capture_outputs(model, names) as store, rec:
                model(xm, mask)
            outputs[s] = store
            f = rec.to_frame()
            f.insert(0, "stack", s)
            frames.append(f)
    maps = MapsPass(list(models), names, "seed_noise")
    maps.add(_OneImage(xm, mask), outputs)
    stats = stats_frame(pd.concat(frames, ignore_index=True), settings, table)
    maps_frame = maps.frame()
    for col in ("order", "depth", "kind", "block"):
        maps_frame[col] = maps_frame["layer"].map(table.set_index("layer")[col])
    return Results(settings=settings, stats=stats, padding=pd.DataFrame(), maps=maps_frame,
                   rgb=display_rgb(xm[0], (SIZE, SIZE)), images=[dict(name="seed_noise", h=SIZE, w=SIZE)],
                   num_images=1, seconds=time.perf_counter() - start, preset="seed")


class _OneImage:
    """The preset's single image as a one-image batch for :class:`~masked_torch.analysis.passes.MapsPass`."""

    def __init__(self, x, mask):
        self.x, self.mask, self.names, self.sizes = x, mask, ["seed_noise"], [(SIZE, SIZE)]
