"""The experiment's passes: each consumes the forward outputs of every batch and returns one tidy frame.

The driver (:func:`masked_torch.analysis.run.run_experiment`) runs each stack once on a padded batch and once
on each of its images *alone* (a crop of the batch canvas to the image's own size rounded up to the canvas
multiple), capturing every recorded layer's ``(output, mask)``. The passes only read those outputs:

* :class:`StatsPass`   -- per-channel statistics of every layer over the valid positions of every image
  (:class:`~masked_torch.analysis.recorder.ActivationRecorder`), one row per (stack, layer, channel); the
  pseudo-stack ``conv_alone`` is the plain model on each image alone.
* :class:`PaddingPass` -- per (stack, reference, layer, image): ``rel_error = ||batch - ref|| / ||ref||``
  over the image's region at that layer, with ``ref`` the same stack alone or the plain model alone.
* :class:`ImageStatsPass` -- per (stack, layer, image): mean and variance over the image's valid positions
  (all channels) in its batch and alone, against the padded share of its batch canvas (``pad_fraction``).
* :class:`MapsPass`    -- the channel-mean map and output mask of a few layers for one image (figure 1).

The per-image passes keep their rows column by column in typed arrays (:class:`Columns`, about 100 bytes a
row where a dict took 600) and build their frame once, at the end: a run over many images stays flat.

An image's *region* at a layer: the positions whose receptive block touches the image, i.e. the first
``ceil(h * H_layer / H_canvas)`` rows and ``ceil(w * W_layer / W_canvas)`` columns; a layer without spatial
dimensions (a classifier's logits) is compared as a whole.
"""
from __future__ import annotations

import array
import math
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch

import masked_torch.functional as MF

from .recorder import ActivationRecorder

__all__ = ["REFERENCE", "Columns", "capture_outputs", "region", "StatsPass", "PaddingPass", "ImageStatsPass",
           "MapsPass", "map_layers", "display_rgb"]

REFERENCE = "conv_alone"


@contextmanager
def capture_outputs(model: torch.nn.Module, names: Sequence[str]) -> Iterator[dict]:
    """Forward hooks keeping ``{name: (output, mask)}`` of the named modules during the block (``mask`` is
    ``None`` for a module that returns a plain tensor)."""
    store: dict = {}
    modules = dict(model.named_modules())
    handles = []

    def hook_for(name):
        def hook(mod, args, output):
            out, mask = output if isinstance(output, tuple) else (output, None)
            store[name] = (out.detach(), None if mask is None else mask.detach())
        return hook

    try:
        for name in names:
            handles.append(modules[name].register_forward_hook(hook_for(name)))
        yield store
    finally:
        for h in handles:
            h.remove()


def region(out: torch.Tensor, size: tuple[int, int], canvas: tuple[int, int]) -> tuple[slice, ...]:
    """Index of an image's region in one sample's layer output ``out`` (``(C, *S)`` or ``(F,)``)."""
    if out.dim() < 3:
        return (slice(None),)
    spatial = out.shape[-2:]
    return (slice(None),) * (out.dim() - 2) + tuple(
        slice(0, math.ceil(s * n / c)) for s, n, c in zip(size, spatial, canvas))


def _errors(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """``(||a - ref|| / ||ref||, max |a - ref|)``; norms accumulated in float64."""
    diff = a - ref
    denom = float(torch.linalg.vector_norm(ref, dtype=torch.float64))
    num = float(torch.linalg.vector_norm(diff, dtype=torch.float64))
    max_abs = float(diff.abs().max()) if diff.numel() else 0.0
    if denom == 0:
        return (0.0 if num == 0 else float("inf")), max_abs
    return num / denom, max_abs


class StatsPass:
    """Per-channel statistics of every recorded layer (one recorder per stack, one for ``conv_alone``)."""

    def __init__(self, models: dict, stacks: Sequence[str], layers: Sequence[str]) -> None:
        self.stacks = list(stacks)
        self.recorders = {s: ActivationRecorder(models[s], list(layers)) for s in self.stacks}
        self.reference = ActivationRecorder(models["conv"], list(layers))

    def recorder(self, stack: str) -> ActivationRecorder:
        return self.reference if stack == REFERENCE else self.recorders[stack]

    def reduce(self) -> None:
        for rec in [*self.recorders.values(), self.reference]:
            rec.reduce()

    def frame(self) -> pd.DataFrame:
        frames = []
        for s in self.stacks + [REFERENCE]:
            f = self.recorder(s).to_frame()
            f.insert(0, "stack", s)
            frames.append(f)
        return pd.concat(frames, ignore_index=True)


class Columns:
    """Rows appended one at a time and kept column by column in typed arrays: 8 bytes a number, 1 a flag, 4 a
    string (a code into the column's distinct strings), where a list of dicts costs about 600 bytes a row (a
    run's per-image passes add 72 rows an image). :meth:`frame` gives the frame ``pd.DataFrame(rows)`` would.

    ``schema``: column name -> kind, ``"f"`` (float64), ``"i"`` (int64), ``"b"`` (bool) or ``"s"`` (string), in
    the frame's column order; every row gives every column."""

    _TYPECODES = {"f": "d", "i": "q", "b": "b", "s": "i"}

    def __init__(self, schema: dict[str, str]) -> None:
        self.schema = dict(schema)
        self._values = {name: array.array(self._TYPECODES[kind]) for name, kind in self.schema.items()}
        self._codes: dict[str, dict[str, int]] = {n: {} for n, kind in self.schema.items() if kind == "s"}

    def __len__(self) -> int:
        return len(next(iter(self._values.values()))) if self._values else 0

    def append(self, **row) -> None:
        if row.keys() != self.schema.keys():
            raise ValueError(f"a row has the columns {sorted(row)}, expected {sorted(self.schema)}")
        for name, value in row.items():
            codes = self._codes.get(name)
            self._values[name].append(codes.setdefault(value, len(codes)) if codes is not None else value)

    def frame(self) -> pd.DataFrame:
        columns = {}
        for name, kind in self.schema.items():
            values = np.array(self._values[name])
            if kind == "s":  # the strings themselves, for pandas to infer the column's type as from dicts
                strings = list(self._codes[name])
                columns[name] = [strings[c] for c in values.tolist()]
            else:
                columns[name] = values.astype({"f": np.float64, "i": np.int64, "b": bool}[kind])
        return pd.DataFrame(columns, columns=list(self.schema))


_IMAGE_COLUMNS = dict(image="s", batch="i", h="i", w="i", batch_h="i", batch_w="i", pad_fraction="f",
                      extra_pad_fraction="f")


class _PerImagePass:
    """A pass with one group of rows per image of a batch, compared with the image alone; the rows are kept
    compactly (:class:`Columns`) until :meth:`frame`."""

    _COLUMNS: dict[str, str] = {}  # the frame's columns and their kinds (:class:`Columns`)

    def __init__(self, stacks: Sequence[str], layers: Sequence[str]) -> None:
        self.stacks, self.layers = list(stacks), list(layers)
        self.rows = Columns(self._COLUMNS)

    @staticmethod
    def image(batch, k: int, alone) -> tuple[dict, tuple, tuple]:
        """The columns every row of image ``k`` carries, its batch canvas and its canvas alone.
        ``pad_fraction``: the share of its batch canvas that is padding; ``extra_pad_fraction``: the share that
        the batch adds to the image's own canvas alone (0 where the batch pads it no further)."""
        (h, w), canvas, alone_canvas = batch.sizes[k], tuple(batch.x.shape[-2:]), tuple(alone.x.shape[-2:])
        area = canvas[0] * canvas[1]
        cols = dict(image=batch.names[k], batch=batch.batch_index, h=h, w=w, batch_h=canvas[0], batch_w=canvas[1],
                    pad_fraction=1.0 - h * w / area,
                    extra_pad_fraction=1.0 - alone_canvas[0] * alone_canvas[1] / area)
        return cols, canvas, alone_canvas

    def frame(self) -> pd.DataFrame:
        """The rows as a frame (with every column, also when there are no rows)."""
        return self.rows.frame()


class PaddingPass(_PerImagePass):
    """Batch vs alone: the relative error of each image's region, per stack, reference and layer."""

    _COLUMNS = dict(stack="s", reference="s", layer="s", **_IMAGE_COLUMNS, rel_error="f", max_abs_error="f",
                    padded="b", alone_h="i", alone_w="i")

    def add(self, batch, k: int, alone, ref, batch_out: dict, alone_out: dict) -> None:
        """``alone``: the image alone as the stacks ran it; ``ref``: as the reference (``conv_alone``) ran it."""
        cols, canvas, alone_canvas = self.image(batch, k, alone)
        size = batch.sizes[k]
        canvases = {"alone": alone_canvas, REFERENCE: tuple(ref.x.shape[-2:])}
        for layer in self.layers:
            for s in self.stacks:
                out = batch_out[s][layer][0][k]
                got = out[region(out, size, canvas)]
                for ref_name, ref_key in (("alone", s), (REFERENCE, REFERENCE)):
                    ref_out = alone_out[ref_key][layer][0][0]
                    ref_canvas = canvases[ref_name]
                    expected = ref_out[region(ref_out, size, ref_canvas)]
                    if expected.shape != got.shape:  # an op whose output size is not proportional to the canvas
                        raise RuntimeError(f"layer {layer!r}: the region of image {cols['image']!r} is "
                                           f"{tuple(got.shape)} in the batch but {tuple(expected.shape)} alone")
                    rel_error, max_abs_error = _errors(got, expected)
                    self.rows.append(stack=s, reference=ref_name, layer=layer, **cols, rel_error=rel_error,
                                          max_abs_error=max_abs_error, padded=canvas != alone_canvas,
                                          alone_h=ref_canvas[0], alone_w=ref_canvas[1])


def _region_moments(out: torch.Tensor, mask: Optional[torch.Tensor], index) -> tuple[float, float, int]:
    """Mean and variance (float64, :func:`masked_torch.functional.masked_moments`) of one sample's output over
    its region and, where the layer gives a mask, the positions that mask marks valid (all channels together),
    and how many values that is."""
    x = out[index].double()[None]
    dims = tuple(range(1, x.dim()))
    valid = None if mask is None or mask.dim() != out.dim() else (mask[index] != 0)[None]
    if valid is None or all(valid.shape[d] == 1 for d in dims):  # every entry of the region counts (or none)
        if valid is not None and not bool(valid.all()) or x.numel() == 0:
            return float("nan"), float("nan"), 0
        return float(x.mean()), float(x.var(correction=0)), x.numel()
    count, mean, _, var = MF.masked_moments(torch.where(valid, x, 0.0), valid, dims)
    if int(count) == 0:
        return float("nan"), float("nan"), 0
    return float(mean), float(var), int(count)


def _ratio(var: float, var_alone: float) -> float:
    """``var / var_alone``; 1 where both are 0, NaN where either is undefined (no valid position)."""
    if math.isnan(var) or math.isnan(var_alone):
        return float("nan")
    if var_alone == 0:
        return 1.0 if var == 0 else float("inf")
    return var / var_alone


class ImageStatsPass(_PerImagePass):
    """Per image: a layer's mean and variance in the batch and alone (the same stack), against the padded
    share of its canvas."""

    _COLUMNS = dict(stack="s", layer="s", **_IMAGE_COLUMNS, values="i", mean="f", var="f", mean_alone="f",
                    var_alone="f", rel_var="f")

    def add(self, batch, k: int, alone, ref, batch_out: dict, alone_out: dict) -> None:
        cols, canvas, alone_canvas = self.image(batch, k, alone)
        size = batch.sizes[k]
        for s in self.stacks:
            for layer in self.layers:
                out, mask = batch_out[s][layer]
                mean, var, n = _region_moments(out[k], None if mask is None else mask[k],
                                              region(out[k], size, canvas))
                aout, amask = alone_out[s][layer]
                mean_a, var_a, _ = _region_moments(aout[0], None if amask is None else amask[0],
                                                  region(aout[0], size, alone_canvas))
                self.rows.append(stack=s, layer=layer, **cols, values=n, mean=mean, var=var, mean_alone=mean_a,
                                 var_alone=var_a, rel_var=_ratio(var, var_a))


def map_layers(table: pd.DataFrame, model: str, limit: int = 6) -> list[str]:
    """The layers figure 1 shows: for the stack every conv and activation (one column per level); for other
    models each resolution level's output along the forward order (the U-Net's way down and up), at most
    ``limit`` (:func:`masked_torch.analysis.plot.level_outputs`)."""
    if model == "stack":
        table = table.sort_values("order")
        return list(table.loc[table["kind"].isin(("conv", "act")), "layer"])
    from .plot import level_outputs

    return level_outputs(table, max_layers=limit)


def display_rgb(x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The normalised input canvas ``(3, H, W)`` as an RGB picture: the 1st..99th percentile of the image's
    own pixels mapped to [0, 1]; the zero padding shows as whatever 0 (the image mean) maps to."""
    h, w = size
    x = x.detach().float().cpu()
    inside = x[:, :h, :w].numpy()
    lo, hi = np.percentile(inside, [1, 99])
    rgb = (x.numpy() - lo) / max(hi - lo, 1e-6)
    return np.clip(rgb, 0, 1).transpose(1, 2, 0)


class MapsPass:
    """The channel-mean activation map and output mask of ``layers`` for one image (the figure-1 image)."""

    def __init__(self, stacks: Sequence[str], layers: Sequence[str], wanted: Optional[str] = None) -> None:
        self.stacks, self.layers, self.wanted = list(stacks), list(layers), wanted
        self.rows: list[dict] = []
        self.rgb: Optional[np.ndarray] = None

    @property
    def done(self) -> bool:
        return bool(self.rows)

    def pick(self, batch) -> Optional[int]:
        """The wanted image if it is in ``batch``, else (no image named) the most padded one."""
        if self.wanted is not None:
            return batch.names.index(self.wanted) if self.wanted in batch.names else None
        canvas = batch.x.shape[-2] * batch.x.shape[-1]
        return int(np.argmin([h * w / canvas for h, w in batch.sizes]))

    def add(self, batch, batch_out: dict) -> None:
        if self.done:
            return
        k = self.pick(batch)
        if k is None:
            return
        name, size, canvas = batch.names[k], batch.sizes[k], tuple(batch.x.shape[-2:])
        for s in self.stacks:
            for layer in self.layers:
                out, mask = batch_out[s][layer]
                if out.dim() != 4:
                    continue
                m = out[k].float().mean(dim=0).cpu().numpy()
                mk = np.ones_like(m) if mask is None else mask[k].float().mean(dim=0).cpu().numpy()
                self.rows.append(dict(image=name, stack=s, layer=layer, map=m, mask=mk, h=size[0], w=size[1],
                                      canvas_h=canvas[0], canvas_w=canvas[1],
                                      scale=canvas[0] / m.shape[0]))
        self.rgb = display_rgb(batch.x[k], size)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)
