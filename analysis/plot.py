"""Figures of the activation-statistics suite. Every function takes a tidy frame and returns a matplotlib
``Figure`` made with pyplot in whatever backend is active (the command line uses Agg; in Jupyter the figures
show inline); nothing is shown or saved here, close the figures when done.

* :func:`plot_activation_maps`     -- frame of maps (:attr:`masked_torch.analysis.run.Results.maps`): per stack one row of
  channel-mean activation maps per depth, with the masks, one colour scale per depth shared by the stacks.
* :func:`plot_channel_stats`       -- the stats frame (one row per stack, layer, channel): per-channel mean and
  variance by depth, every channel a point, a box per stack and depth.
* :func:`plot_padding_sensitivity` -- the padding frame (stack, reference, layer, depth, image, rel_error):
  relative error of each image in its padded batch against the same image alone.
* :func:`plot_stats_vs_padding`    -- the image-statistics frame (stack, layer, image, pad_fraction, var,
  var_alone[, rel_var, order, depth, block]): each image's variance in its batch over its variance alone,
  against the padded share of its batch canvas, for a few layers.

Networks that are not a chain (a ResNet, a U-Net: frames with the ``order``, ``block`` columns of
:func:`masked_torch.analysis.models.layer_table` and several layers per depth; :func:`is_chain`) get figures with
the layers in execution order on x (:func:`plot_channel_stats_by_layer`): block names as tick labels (upright
where they fit, else vertical, thinned where they would still overlap), the resolution level over the top and a
dashed line where it changes, per stack a median line with an interquartile band. The seed stack (one conv and one
activation per depth) keeps the figures by depth.

Figures 2 and 3 are seaborn plots of tidy frames (``hue="stack"``, dodged, colours from seaborn's "colorblind"
palette); seaborn is imported inside those functions only, so importing this module (and the command line's
``--help``) stays light. Every statistic drawn (medians, quartiles, percentiles) is computed on the data, never
on drawn positions: seaborn draws on a linear y axis, where it aggregates the values themselves (on a log axis
it would aggregate their logarithms: the median of ``[0, 0, 0.0086, 0.028]`` would become 0 instead of 0.0043),
and the axis is switched to log afterwards. On that log axis an exact 0 is drawn on a floor band whose tick
reads "0": the dots are floored to it, and a statistic that is 0 is lifted onto it after it was computed.
"""
from __future__ import annotations

import math
import textwrap
import warnings
from contextlib import contextmanager
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, LogFormatterSciNotation, NullLocator

__all__ = ["plot_activation_maps", "plot_channel_stats", "plot_channel_stats_by_layer", "plot_padding_sensitivity",
           "plot_stats_vs_padding", "STACK_ORDER", "STACK_COLORS", "STACK_LABELS", "FLOAT32_EPS", "level_layers",
           "level_outputs", "layer_rows", "is_chain", "rel_var", "thin_tick_labels", "zero_floor"]

STACK_ORDER = ("conv", "pconv", "mconv", "conv_alone")
# seaborn's "colorblind" palette (entries 3, 0, 2; tests/test_plot.py checks them against seaborn), as RGB
# tuples so that this module and figure 1 need no seaborn import
_PALETTE_INDEX = {"conv": 3, "pconv": 0, "mconv": 2}
STACK_COLORS = {"conv": to_rgb("#d55e00"), "pconv": to_rgb("#0173b2"), "mconv": to_rgb("#029e73"),
                "conv_alone": (0.45, 0.45, 0.45)}
STACK_LABELS = {
    "conv": "conv (plain Conv2d)",
    "pconv": "pconv (PartialConv2d)",
    "mconv": "mconv (MaskedConv2d)",
    "conv_alone": "conv on each image alone",
}
_STACK_NOTES = {
    "conv": "plain nn.Conv2d, run on\nthe padded batch; the\nmask only rides along",
    "pconv": "PartialConv2d: window sum\nrescaled by valid count\n(update_mask={update_mask})",
    "mconv": "MaskedConv2d: input 0\noutside, output x centre\nmask (bias too)",
}
FLOAT32_EPS = float(np.finfo(np.float32).eps)
_BOUNDARY = dict(edgecolor="#ff2a2a", facecolor="none", lw=1.1, ls="--")


def _stacks_in(frame: pd.DataFrame, stacks: Optional[Sequence[str]]) -> list[str]:
    present = list(pd.unique(frame["stack"]))
    if stacks is None:
        return [s for s in STACK_ORDER if s in present] + [s for s in present if s not in STACK_ORDER]
    missing = [s for s in stacks if s not in present]
    if missing:
        raise ValueError(f"stacks {missing} are not in the frame (it has {present})")
    return list(stacks)


def level_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each depth's *level output*: the activation layer of the level if there is one, else its conv."""
    rows = frame[frame["depth"] > 0]
    kinds = rows.groupby("depth")["kind"].agg(lambda k: "act" if (k == "act").any() else "conv")
    return rows[rows["kind"].to_numpy() == kinds.reindex(rows["depth"]).to_numpy()]


_JITTER_SEED = 0  # the dots' horizontal jitter: the same frame gives the same PNG; numpy's global RNG untouched
_GROUP_WIDTH = 0.8  # width of one depth's group of stacks on the x axis


def zero_floor(values, floor: Optional[float] = None, *, at_most: Optional[float] = 1e-10) -> float:
    """Where a log axis draws exact zeros: ``floor`` if given, else the power of ten two decades below the
    smallest positive value, and no higher than ``at_most`` (1e-10 for relative errors, so that float32
    rounding errors stay well clear of the zeros; ``None``: no cap)."""
    if floor is not None:
        return float(floor)
    v = np.asarray(values, dtype=float)
    pos = v[np.isfinite(v) & (v > 0)]
    low = float(pos.min()) if pos.size else 1.0
    below = 10.0 ** (math.floor(math.log10(low)) - 2)
    return below if at_most is None else min(at_most, below)


def _palette(stacks: Sequence[str]) -> dict:
    """Colour of each stack: seaborn's "colorblind" palette (conv 3, pconv 0, mconv 2, conv_alone grey), other
    stacks the palette's unused entries in turn."""
    import seaborn as sns

    cb = sns.color_palette("colorblind")
    spare = iter([c for i, c in enumerate(cb) if i not in _PALETTE_INDEX.values() and i != 7] * 2)  # 7: grey
    return {s: STACK_COLORS[s] if s in STACK_COLORS else next(spare) for s in stacks}


@contextmanager
def _fixed_jitter(seed: int = _JITTER_SEED):
    """seaborn's stripplot jitters with numpy's global generator: seed it for the call (the same frame gives
    the same PNG) and put the caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def _quiet_bxp():
    """seaborn 0.13's boxplot passes matplotlib >= 3.10's deprecated ``vert`` to ``Axes.bxp``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=MatplotlibDeprecationWarning)
        warnings.filterwarnings("ignore", category=PendingDeprecationWarning, message=".*vert.*")
        yield


def _slot(x: float, n_stacks: int) -> tuple[int, int]:
    """(depth index, stack index) of a dodged x position (seaborn's dodge: ``n_stacks`` slots of
    ``_GROUP_WIDTH / n_stacks`` centred on each depth)."""
    d = int(round(x))
    w = _GROUP_WIDTH / n_stacks
    return d, int(round((x - d) / w + (n_stacks - 1) / 2))


def _lift_onto_band(lines, floor: float) -> None:
    """Move the points of already drawn statistics (box edges, whiskers, medians) that are below ``floor``,
    i.e. exact zeros, onto the 0 band; the statistics were computed on the values, only their drawn position
    changes (a 0 has no place on a log axis otherwise). NaN (no data) stays NaN."""
    for line in lines:
        y = np.asarray(line.get_ydata(), dtype=float)
        line.set_ydata(np.where(y < floor, floor, y))


def _figure_legend(fig: Figure, ax: Axes, *, markerscale: float) -> None:
    """Move seaborn's hue legend of ``ax`` under the figure, with the stacks' long names."""
    legend = ax.get_legend()
    if legend is None:
        return
    handles, labels = legend.legend_handles, [t.get_text() for t in legend.get_texts()]
    legend.remove()
    for handle in handles:
        handle.set_alpha(1.0)  # the dots' transparency would make the key pale
    fig.legend(handles, [STACK_LABELS.get(lb, lb) for lb in labels], loc="outside lower center",
               ncols=len(labels), markerscale=markerscale, frameon=False, fontsize=9)


def _log_axis_with_zero(ax: Axes, floor: float, top: float) -> None:
    """Log y axis from ``floor / 3`` to ``top`` whose ticks are decades plus the floor, which is labelled "0"
    and shaded: the exact zeros drawn there are zeros, not small values. Plain matplotlib: seaborn has no
    notion of a zero on a log axis (its ``log_scale`` drops or mis-aggregates zeros)."""
    lo = floor / 3
    ax.set_yscale("log")
    ax.set_ylim(lo, top)
    first, last = math.floor(math.log10(floor)) + 1, math.floor(math.log10(top))
    step = max(1, math.ceil((last - first + 1) / 7))
    decades = [10.0 ** k for k in range(last, first - 1, -step)][::-1]
    ax.yaxis.set_major_locator(FixedLocator([floor] + [d for d in decades if d > floor * 3]))
    ax.yaxis.set_minor_locator(NullLocator())
    sci = LogFormatterSciNotation()
    sci.set_axis(ax.yaxis)
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda v, pos: "0" if math.isclose(v, floor, rel_tol=1e-9) else sci(v, pos)))
    ax.axhspan(lo, floor * 3, color="0.93", zorder=0)
    ax.axhline(floor * 3, color="0.7", lw=0.6, ls=(0, (4, 3)), zorder=1)  # where the axis is cut


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


# ------------------------------------------------------------------------------------------------ layer axis
def is_chain(frame: pd.DataFrame) -> bool:
    """Whether ``x = depth`` names one layer per kind: the frame has no ``order`` column (an older frame), or
    every (depth, kind) holds at most one layer and every depth is known (the seed stack: conv{i}, act{i} at
    depth i). A ResNet (several convs per level), a U-Net (every level twice, down and up) or a frame with a
    non-spatial layer (depth NA) is not a chain: its figures put the layers in execution order on x."""
    if "order" not in frame.columns:
        return True
    rows = frame.drop_duplicates("layer")
    depth = rows["depth"]
    if depth.isna().any():
        return False
    return not rows.duplicated(["depth", "kind"]).any()


def layer_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per layer (``layer, order, depth, kind, block``; ``block`` the layer name where the frame has
    none), in execution order (``order``)."""
    cols = [c for c in ("layer", "order", "depth", "kind", "block") if c in frame.columns]
    rows = frame[cols].drop_duplicates("layer").copy()
    if "order" not in rows:
        rows["order"] = range(len(rows))
    if "block" not in rows:
        rows["block"] = rows["layer"]
    return rows.sort_values("order", kind="stable").reset_index(drop=True)


def _runs(values: Sequence) -> list[tuple[int, int]]:
    """``(start, stop)`` index ranges of runs of equal consecutive values (NA equal to NA)."""
    runs, start = [], 0
    keys = ["<NA>" if pd.isna(v) else v for v in values]
    for i in range(1, len(keys) + 1):
        if i == len(keys) or keys[i] != keys[start]:
            runs.append((start, i))
            start = i
    return runs


def level_outputs(frame: pd.DataFrame, max_layers: Optional[int] = None, *, first: bool = False) -> list[str]:
    """Names of each resolution level's output layer: the last layer (in execution order) of every run of
    layers at one depth (a U-Net's levels come twice: on the way down and on the way up; a non-spatial layer,
    depth NA, is a run of its own). ``first``: the first recorded layer too. ``max_layers``: at most that many,
    evenly spaced through the network, the first and the last kept."""
    rows = layer_rows(frame)
    names = [rows["layer"].iloc[stop - 1] for _, stop in _runs(list(rows["depth"]))]
    if first and len(rows) and rows["layer"].iloc[0] not in names:
        names.insert(0, rows["layer"].iloc[0])
    if max_layers is not None and len(names) > max_layers:
        keep = np.unique(np.round(np.linspace(0, len(names) - 1, max_layers)).astype(int))
        names = [names[i] for i in keep]
    return names


def _dodge(stacks: Sequence[str], width: float = 0.5) -> dict:
    """x offset of each stack around a layer's position (stacks side by side, ``width`` apart in all)."""
    n = len(stacks)
    return {s: (i - (n - 1) / 2) * (width / max(1, n - 1) if n > 1 else 0.0) for i, s in enumerate(stacks)}


def _overlaps(a, b, pad: float = 1.0) -> bool:
    return not (a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0 or a.y1 + pad <= b.y0 or b.y1 + pad <= a.y0)


def _boxes(renderer, axis) -> list:
    return [(t, t.get_window_extent(renderer)) for t in axis.get_ticklabels() if t.get_visible() and t.get_text()]


def thin_tick_labels(fig: Figure, *axes, draw: bool = True) -> int:
    """Hide the tick labels of each x ``axes`` (``Axis`` objects) that would overlap the last one kept, left to
    right, as drawn (after one ``fig.canvas.draw()``, or the last one with ``draw=False``); returns how many
    were hidden. The positions stay marked by their ticks."""
    if draw:
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    hidden = 0
    for axis in axes:
        kept = None
        for label, box in sorted(_boxes(renderer, axis), key=lambda lb: lb[1].x0):
            if kept is not None and _overlaps(box, kept):
                label.set_visible(False)
                hidden += 1
            else:
                kept = box
    return hidden


def _upright_or_vertical(fig: Figure, axes: Sequence) -> None:
    """Block names horizontal where they all fit side by side (easiest to read), else vertical (each label
    then takes only a line's height of the axis). Draws the figure once; the labels' extents after a rotation
    are measured at the positions of that draw."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    crowded = False
    for axis in axes:
        boxes = sorted((box for _, box in _boxes(renderer, axis)), key=lambda b: b.x0)
        crowded = crowded or any(_overlaps(a, b) for a, b in zip(boxes, boxes[1:]))
    if crowded:
        for axis in axes:
            for label in axis.get_ticklabels():
                label.set_rotation(90)
                label.set_ha("center")
                label.set_va("top")


def _layer_axis(axes: Sequence[Axes], rows: pd.DataFrame, *, top: Sequence[Axes], bottom: Sequence[Axes]) -> None:
    """Decorate panels whose x is the layer ``order``: faint shading of every other block, a dashed line where
    the resolution level (``depth``) changes, a minor tick per layer; block names as tick labels of the
    ``bottom`` panels (one per run of a block, at its centre, rotated), the depth of each level's run over the
    ``top`` panel."""
    x = rows["order"].to_numpy(dtype=float)
    blocks = _runs(list(rows["block"]))
    levels = _runs(list(rows["depth"]))
    lo, hi = x.min() - 0.7, x.max() + 0.7
    for ax in axes:
        for i, (a, b) in enumerate(blocks):
            if i % 2:
                ax.axvspan(x[a] - 0.5, x[b - 1] + 0.5, color="0.95", zorder=0, lw=0)
        for a, _ in levels[1:]:
            ax.axvline((x[a - 1] + x[a]) / 2, color="0.55", lw=0.8, ls=(0, (4, 3)), zorder=1)
        ax.set_xlim(lo, hi)
        ax.xaxis.set_minor_locator(FixedLocator(x))
        ax.xaxis.remove_overlapping_locs = False  # a layer tick where a block label sits too
        ax.tick_params(axis="x", which="minor", length=2.5, color="0.5")
        centres = [(x[a] + x[b - 1]) / 2 for a, b in blocks]
        ax.xaxis.set_major_locator(FixedLocator(centres))
        ax.tick_params(axis="x", which="major", length=0)
        if ax in bottom:
            ax.set_xticklabels([rows["block"].iloc[a] for a, _ in blocks], fontsize=7.5)
            ax.set_xlabel("layers in execution order, named by block (dashed: the resolution level changes)",
                          fontsize=8.5)
        else:
            ax.tick_params(axis="x", which="major", labelbottom=False)
            ax.set_xlabel("")
    labels = ["no spatial dims" if pd.isna(rows["depth"].iloc[a]) else f"depth {int(rows['depth'].iloc[a])}"
              for a, _ in levels]
    for ax in top:
        sec = ax.secondary_xaxis("top")
        sec.xaxis.set_major_locator(FixedLocator([(x[a] + x[b - 1]) / 2 for a, b in levels]))
        sec.set_xticklabels(labels, fontsize=7.5, color="0.35")
        sec.tick_params(axis="x", length=0, pad=1)
        ax._depth_axis = sec  # for thin_tick_labels


def _lift_band(collections, floor: float) -> None:
    """As :func:`_lift_onto_band`, for the IQR bands (filled polygons) of seaborn's lineplot."""
    for coll in collections:
        coll.set_verts([np.column_stack([p.vertices[:, 0], np.maximum(p.vertices[:, 1], floor)])
                        for p in coll.get_paths()])


def _stack_handles(stacks: Sequence[str], palette: dict, marker: str = "o") -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], color=palette[s], marker=marker, markersize=5, lw=1.6) for s in stacks]


def _legend_below(fig: Figure, stacks: Sequence[str], palette: dict, extra: Sequence = ()) -> None:
    handles = _stack_handles(stacks, palette) + [h for h, _ in extra]
    labels = [STACK_LABELS.get(s, s) for s in stacks] + [lb for _, lb in extra]
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False, fontsize=9)


# ------------------------------------------------------------------------------------------------ figure 1
def plot_activation_maps(maps: pd.DataFrame, rgb: Optional[np.ndarray] = None, *,
                         stacks: Optional[Sequence[str]] = None, mask_stack: str = "mconv",
                         max_columns: int = 8, update_mask: bool = False) -> Figure:
    """Channel-mean activation maps per depth (columns) and stack (rows) for one image of a padded batch.

    ``maps``: columns ``image, stack, layer, depth, kind, map, mask, h, w, canvas_h, canvas_w`` (``map`` and
    ``mask`` are 2d arrays over the whole batch canvas at that depth; ``mask`` is the channel-mean output mask).
    ``rgb``: optional ``(H, W, 3)`` picture of the input canvas for the first panel. The top row shows the
    input and the output mask of ``mask_stack`` (if present, else of the first stack) at each depth; the dashed
    red rectangle is the image boundary (exact, also where it cuts a ``2**depth`` block). One colour scale per
    depth column, shared by every stack, with its colour bar under the column.

    A frame of a network that is not a chain (with ``order``: a ResNet, a U-Net; :func:`is_chain`) gets one
    column per resolution level's output (:func:`level_outputs`: the last layer of each run of layers at one
    depth, in execution order, at most ``max_columns``; a U-Net's levels come on the way down and up), titled
    by layer; layers without spatial dims are left out. ``update_mask``: pconv's rule, for its note.
    """
    if maps.empty:
        raise ValueError("plot_activation_maps: empty frame")
    images = pd.unique(maps["image"])
    if len(images) != 1:
        raise ValueError(f"plot_activation_maps: expected the maps of one image, got {list(images)}")
    stacks = _stacks_in(maps, stacks)
    maps = maps[maps["stack"].isin(stacks)]
    chain = is_chain(maps)
    if chain:
        maps = level_layers(maps)
        columns = [(maps.loc[maps["depth"] == d, "layer"].iloc[0], int(d)) for d in sorted(maps["depth"].unique())]
    else:
        maps = maps[maps["depth"].notna()]
        info = layer_rows(maps).set_index("layer")
        columns = [(layer, int(info.loc[layer, "depth"])) for layer in level_outputs(maps, max_columns)]
    first = maps.iloc[0]
    h, w, ch, cw = (int(first[k]) for k in ("h", "w", "canvas_h", "canvas_w"))
    mstack = mask_stack if mask_stack in stacks else stacks[0]

    ncols, nrows = len(columns) + 1, len(stacks) + 1
    panel = 2.3 * min(1.6, max(0.6, cw / ch)) ** 0.5  # panel width in inches
    fig = plt.figure(figsize=(1.0 + panel * ncols, 1.4 + 0.9 * panel * ch / cw * nrows + 0.7),
                     layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)

    def boundary(ax, d):
        f = 2**d
        ax.add_patch(Rectangle((-0.5, -0.5), w / f, h / f, **_BOUNDARY))
        ax.set_xticks([])
        ax.set_yticks([])

    # top row: the input and the masks
    ax = axes[0, 0]
    if rgb is not None:
        ax.imshow(rgb, interpolation="nearest")
    else:
        ax.imshow(np.zeros((ch, cw)), cmap="gray", vmin=0, vmax=1)
    boundary(ax, 0)
    ax.set_title(f"input {h}x{w}\nin a {ch}x{cw} batch canvas", fontsize=9)
    mask_im = None
    for j, (layer, d) in enumerate(columns, start=1):
        row = maps[(maps["stack"] == mstack) & (maps["layer"] == layer)].iloc[0]
        mask_im = axes[0, j].imshow(row["mask"], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        boundary(axes[0, j], d)
        hh, ww = row["map"].shape
        axes[0, j].set_title(f"depth {d}: {layer}, {hh}x{ww}\n{mstack} output mask", fontsize=9)
    axes[0, 1].set_ylabel("mask", fontsize=10)
    fig.colorbar(mask_im, ax=axes[0, -1], location="right", shrink=0.85, label="mask (channel mean)")

    # stack rows
    for j, (layer, d) in enumerate(columns, start=1):
        col = maps[maps["layer"] == layer]
        values = np.concatenate([np.ravel(m) for m in col["map"]])
        lo, hi = np.percentile(values, [0.5, 99.5])
        if lo >= 0:  # non-negative (ReLU): sequential scale from 0
            norm, cmap = Normalize(0.0, max(hi, 1e-12)), "viridis"
        else:
            v = max(abs(lo), abs(hi), 1e-12)
            norm, cmap = Normalize(-v, v), "RdBu_r"
        im = None
        for i, s in enumerate(stacks, start=1):
            ax = axes[i, j]
            m = col.loc[col["stack"] == s, "map"].iloc[0]
            im = ax.imshow(m, cmap=cmap, norm=norm, interpolation="nearest")
            boundary(ax, d)
        bar = fig.colorbar(im, ax=list(axes[1:, j]), location="bottom", shrink=0.9, aspect=18, pad=0.01,
                           label=f"channel mean, depth {d}" if chain else "channel mean", extend="both")
        bar.ax.xaxis.set_major_locator(MaxNLocator(3))  # few ticks: tick labels of narrow columns never collide
        bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    for i, s in enumerate(stacks, start=1):
        ax = axes[i, 0]
        ax.axis("off")
        ax.text(0.5, 0.62, s, ha="center", va="center", fontsize=15, weight="bold",
                color=STACK_COLORS.get(s, "k"), transform=ax.transAxes)
        ax.text(0.5, 0.28, _STACK_NOTES.get(s, "").format(update_mask=update_mask), ha="center", va="center",
                fontsize=8, transform=ax.transAxes, linespacing=1.3)
    fig.suptitle(
        f"Channel-mean activation of each level, image '{images[0]}' in its padded batch. "
        "One colour scale per depth (column), shared by the stacks; red dashes: image boundary; "
        "values outside it are what the layer writes into the padding.",
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 2
_LOG_STATS = ("var", "std")  # scale statistics: always on a log axis (they span decades over depth)


def plot_channel_stats(stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                       statistics: Sequence[str] = ("mean", "var"), kinds: Optional[Sequence[str]] = None,
                       layout: str = "auto") -> Figure:
    """Per-channel statistics of each layer.

    ``layout="auto"`` picks ``"depth"`` for a chain (no ``order`` column, or at most one layer of each kind per
    depth: the seed stack) and ``"layer"`` otherwise (a ResNet, a U-Net: :func:`plot_channel_stats_by_layer`,
    x = the layers in execution order).

    ``"depth"``: per-channel statistics by depth: one column of panels per statistic, one row per layer kind (conv
    output, activation output); x = depth, colour = stack; every dot is one channel (over all valid positions
    of all images). Boxes (seaborn, on the values): quartiles over channels, the line in the box their median,
    whiskers out to the most extreme channel within the 5th-95th percentiles (``whis=(5, 95)``).

    One scale rule: variance and std are always drawn on a log axis (they shrink by decades with depth);
    channels whose value is exactly 0 (a dead ReLU channel) are drawn on a shaded band at the bottom whose
    tick reads "0", and counted in the panel. Every other statistic is drawn on a linear axis."""
    import seaborn as sns

    if stats.empty:
        raise ValueError("plot_channel_stats: empty frame")
    if layout not in ("auto", "depth", "layer"):
        raise ValueError(f"plot_channel_stats: layout must be 'auto', 'depth' or 'layer', got {layout!r}")
    if layout == "layer" or (layout == "auto" and not is_chain(stats)):
        return plot_channel_stats_by_layer(stats, stacks=stacks, statistics=statistics, kinds=kinds)
    stacks = _stacks_in(stats, stacks)
    data = stats[stats["stack"].isin(stacks) & (stats["depth"].fillna(0) > 0)]
    if kinds is None:
        kinds = [k for k in ("conv", "act") if (data["kind"] == k).any()] or list(pd.unique(data["kind"]))
    depths = sorted(data["depth"].unique())
    palette = _palette(stacks)
    nrows, ncols = len(kinds), len(statistics)
    fig_width = max(6.0, 1.1 * len(depths) * max(1, len(stacks)) ** 0.5 + 1.5) * ncols
    fig = plt.figure(figsize=(min(fig_width, 13.5), 2.0 + 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    kind_names = {"conv": "conv output (pre-activation)", "act": "activation output"}
    stat_names = {"mean": "per-channel mean", "var": "per-channel variance", "std": "per-channel std",
                  "zero_frac": "fraction of exact zeros"}
    common = dict(x="depth", hue="stack", order=depths, hue_order=stacks, palette=palette, dodge=True)
    with _fixed_jitter():
        for i, kind in enumerate(kinds):
            for j, stat in enumerate(statistics):
                ax = axes[i, j]
                sub = data[(data["kind"] == kind) & np.isfinite(data[stat].to_numpy(dtype=float))]
                values = sub[stat].to_numpy(dtype=float)
                log = stat in _LOG_STATS
                n_zero = int((values == 0).sum()) if log else 0
                floor = zero_floor(values, at_most=None) if n_zero else None
                # the dots: every channel, exact zeros floored onto the 0 band (only their drawn position)
                dots = sub.assign(**{stat: np.maximum(values, floor)}) if floor is not None else sub
                # The boxes are computed by seaborn on the values while the y axis is still linear (on a log
                # axis seaborn takes the percentiles of log10(value), and a 0 becomes -inf); log comes after.
                n_before = len(ax.containers)
                with _quiet_bxp():
                    sns.boxplot(data=sub, y=stat, **common, whis=(5, 95), showfliers=False, fill=False,
                                width=_GROUP_WIDTH, gap=0.2, linewidth=1.0, medianprops=dict(linewidth=1.8),
                                legend=False, ax=ax)
                sns.stripplot(data=dots, y=stat, **common, jitter=0.24, size=2.2, alpha=0.5, linewidth=0,
                              zorder=3, legend=(i == 0 and j == 0), ax=ax)
                boxes = ax.containers[n_before:]
                for container in boxes:
                    for median in container.medians:
                        d, si = _slot(float(np.mean(median.get_xdata())), len(stacks))
                        median.set_gid(f"median {stacks[si]} depth {depths[d]}")
                if floor is not None:
                    _lift_onto_band([ln for c in boxes for ln in (*c.boxes, *c.medians, *c.whiskers, *c.caps)],
                                    floor)
                    _log_axis_with_zero(ax, floor, top=float(values.max()) * 3)
                    ax.text(0.99, 0.01, f"{n_zero} channel(s) with {stat} = 0, drawn on the 0 band", ha="right",
                            va="bottom", fontsize=7, transform=ax.transAxes)
                elif log:
                    ax.set_yscale("log")
                if stat == "mean" and (values < 0).any():
                    ax.axhline(0, color="0.6", lw=0.8, zorder=0)
                ax.set_ylabel(f"{stat_names.get(stat, stat)} ({'log' if log else 'linear'} scale)")
                ax.set_xlabel("depth (level)")
                ax.set_title(f"{kind_names.get(kind, kind)}: {stat_names.get(stat, stat)}", fontsize=10)
                ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    _figure_legend(fig, axes[0, 0], markerscale=2.5)
    fig.suptitle(
        "Per-channel activation statistics by depth over the valid (in-image) positions of all images; "
        "one dot per channel, boxes = quartiles over channels with the median, whiskers to the most extreme "
        "channel within the 5th-95th percentiles"
        + (" (" + ", ".join(f"{s}" for s in stacks if s != "conv_alone")
           + " on padded batches; conv_alone = plain conv on each image alone)" if "conv_alone" in stacks else ""),
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 3
def plot_padding_sensitivity(padding: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                             only_padded: bool = True, floor: Optional[float] = None,
                             layout: str = "auto") -> Figure:
    """Relative error ``||batch - reference|| / ||reference||`` over each image's valid positions, per depth
    (level output) and stack; one dot per image, a bar at the median of the errors (seaborn's pointplot with
    ``estimator="median"`` on the errors themselves: the median of ``[0, 0, 0.0086, 0.028]`` is 0.0043). One
    panel per reference: the same stack on the image alone (``alone``) and the plain conv stack on the image
    alone (``conv_alone``). Log y axis; the dotted line is float32 epsilon; exact zeros (bit-identical), and a
    median of 0, are drawn on a shaded band whose tick reads "0" (at ``floor``; default: see
    :func:`zero_floor`). With ``only_padded`` only images that the batch pads beyond their own canvas are drawn.

    ``layout="auto"``: as above for a chain (:func:`is_chain`); for any other network (a frame with ``order``,
    ``block`` and several layers per depth) one panel per reference, stacked, x = every activation output
    (every conv output if there is no activation) in execution order, labelled by block as in
    :func:`plot_channel_stats_by_layer`, one dot per image, the line the median over the images and the band
    their interquartile range (computed on the errors; zeros and a zero median on the 0 band)."""
    import seaborn as sns

    if padding.empty:
        raise ValueError("plot_padding_sensitivity: empty frame")
    if layout not in ("auto", "depth", "layer"):
        raise ValueError(f"plot_padding_sensitivity: layout must be 'auto', 'depth' or 'layer', got {layout!r}")
    stacks = _stacks_in(padding, stacks)
    if layout == "layer" or (layout == "auto" and not is_chain(padding)):
        return _padding_by_layer(padding, stacks, only_padded, floor)
    data = level_layers(padding[padding["stack"].isin(stacks)])
    only_padded = bool(only_padded and "padded" in data and data["padded"].any())
    if only_padded:
        data = data[data["padded"]]
    data = data[data["rel_error"].notna()]
    refs = [r for r in ("alone", "conv_alone") if r in set(data["reference"])] or list(pd.unique(data["reference"]))
    depths = sorted(data["depth"].unique())
    errors = data["rel_error"].to_numpy(dtype=float)
    floor = zero_floor(errors, floor)
    top = max(1.0, float(np.nanmax(errors)) * 3)
    # the dots: exact zeros floored onto the 0 band (their drawn position only; the medians use rel_error)
    data = data.assign(drawn=np.maximum(errors, floor))
    palette = _palette(stacks)
    common = dict(x="depth", hue="stack", order=depths, hue_order=stacks, palette=palette)
    fig = plt.figure(figsize=(5.2 * len(refs) + 0.6, 5.4), layout="constrained")
    axes = fig.subplots(1, len(refs), squeeze=False, sharey=True)[0]
    # median bar as wide as 80% of a stack's slot: 4.6 in of panel shared by the depths, then by the stacks
    bar_pt = float(np.clip(0.8 * _GROUP_WIDTH * 4.6 * 72 / len(depths) / len(stacks), 6, 24))
    titles = {"alone": "vs the same stack on the image alone\n(padding sensitivity)",
              "conv_alone": "vs plain conv on the image alone\n(distance from the unmasked network)"}
    for ax, ref in zip(axes, refs):
        sub = data[data["reference"] == ref]
        with _fixed_jitter():
            sns.stripplot(data=sub, y="drawn", **common, dodge=True, jitter=0.24, size=4, alpha=0.75,
                          linewidth=0, zorder=3, legend=(ref == refs[0]), ax=ax)
        # The median on the unfloored errors, aggregated while the y axis is still linear (on a log axis
        # seaborn takes the median of log10(error): -inf for a 0, a geometric mean for an even count).
        # pointplot's dodge spreads the hues over `dodge`; this puts each bar on its stack's strip.
        n_before = len(ax.lines)
        sns.pointplot(data=sub, y="rel_error", **common, dodge=_GROUP_WIDTH * (len(stacks) - 1) / len(stacks),
                      estimator="median", errorbar=None, markers="_", markersize=bar_pt, markeredgewidth=2.6,
                      linestyles="none", zorder=4, legend=False, ax=ax)
        bars = ax.lines[n_before:]  # one line per stack, in hue order, one point per depth (NaN: no data)
        for line, s in zip(bars, stacks):
            line.set_gid(f"median {s}")
        _lift_onto_band(bars, floor)  # a median of 0 is drawn on the 0 band
        _log_axis_with_zero(ax, floor, top)
        ax.text(-0.45, floor * 3.5, "0 = bit-identical", fontsize=7, color="0.35", va="bottom")
        ax.axhline(FLOAT32_EPS, color="0.3", ls=":", lw=1.0, zorder=1)
        ax.text(-0.45, FLOAT32_EPS * 1.3, "float32 eps", fontsize=7, color="0.3", ha="left", va="bottom")
        if ref == "alone":
            ax.text(0.99, 0.12, _wrap(
                "conv: the padding holds the bias and image content that earlier convolutions smeared "
                "outwards; later layers read it back into the image.", 52),
                ha="right", va="bottom", fontsize=7, color="0.25", transform=ax.transAxes)
        if ref == "conv_alone":
            ax.text(0.99, 0.12, _wrap(
                "Not a padding effect: pconv rescales every window that reaches past the image (canvas "
                "borders too); mconv scales a 2^depth block that the image only partly covers by its "
                "mask fraction; and plain conv alone reads back what its own rounding padding picks up.", 58),
                ha="right", va="bottom", fontsize=7, color="0.25", transform=ax.transAxes)
        ax.set_title(titles.get(ref, ref), fontsize=10)
        ax.set_xlabel("depth (level output)")
        ax.set_ylabel("")
        ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    axes[0].set_ylabel("relative error  ||batch - ref|| / ||ref||  (log scale)")
    _figure_legend(fig, axes[0], markerscale=1.5)
    n_img = data["image"].nunique()
    fig.suptitle(
        f"Padding sensitivity: each image's activations in its padded batch against the image alone "
        f"(padded only to its own size rounded up to 2^depth), over the image's positions; "
        f"{n_img} image(s){' that the batch pads further' if only_padded else ' (none is padded beyond its own canvas)'}"
        f"; one dot per image, bar = median of the errors (on the 0 band when it is 0)",
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 2, by layer
_KIND_GROUPS = (("conv", ("conv", "upconv")), ("norm", ("norm",)), ("act", ("act",)))
_KIND_TITLES = {"conv": "conv outputs", "upconv": "transposed-conv outputs", "norm": "norm outputs",
                "act": "activation outputs", "linear": "linear outputs", "pool": "pool outputs"}
_STAT_NAMES = {"mean": "per-channel mean", "var": "per-channel variance", "std": "per-channel std",
               "zero_frac": "fraction of exact zeros"}


def _kind_groups(present: Sequence[str], kinds: Optional[Sequence[str]]) -> list[tuple[str, list[str]]]:
    if kinds is not None:
        missing = [k for k in kinds if k not in present]
        if missing:
            raise ValueError(f"kinds {missing} are not in the frame (it has {list(present)})")
        return [(k, [k]) for k in kinds]
    groups = [(name, [k for k in members if k in present]) for name, members in _KIND_GROUPS]
    groups = [(name, members) for name, members in groups if members]
    grouped = {k for _, members in groups for k in members}
    return groups + [(k, [k]) for k in present if k not in grouped]


def _median_band(ax: Axes, part: pd.DataFrame, y: str, colour, gid: str) -> tuple[list, list]:
    """seaborn's median line with the interquartile band (``errorbar=("pi", 50)``: 25th-75th percentile) of
    ``y`` at each ``x``, computed on the values (the y axis is still linear); returns the new lines and bands,
    tagged ``median <gid>`` / ``iqr <gid>``."""
    import seaborn as sns

    n_lines, n_colls = len(ax.lines), len(ax.collections)
    sns.lineplot(data=part, x="x", y=y, estimator="median", errorbar=("pi", 50), color=colour, marker="o",
                 markersize=3.5, markeredgewidth=0, lw=1.2, err_kws=dict(alpha=0.2, lw=0), legend=False,
                 sort=True, ax=ax)
    lines, bands = list(ax.lines[n_lines:]), list(ax.collections[n_colls:])
    for artist in lines:
        artist.set_gid(f"median {gid}")
    for artist in bands:
        artist.set_gid(f"iqr {gid}")
    return lines, bands


def _finish_layer_figure(fig: Figure, axes: np.ndarray, rows: pd.DataFrame) -> None:
    _layer_axis(list(axes.ravel()), rows, top=list(axes[0]), bottom=list(axes[-1]))
    _upright_or_vertical(fig, [ax.xaxis for ax in axes[-1]])
    thin_tick_labels(fig, *[ax.xaxis for ax in axes[-1]], *[ax._depth_axis.xaxis for ax in axes[0]], draw=False)


def plot_channel_stats_by_layer(stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                                statistics: Sequence[str] = ("mean", "var"),
                                kinds: Optional[Sequence[str]] = None) -> Figure:
    """Per-channel statistics layer by layer, for a network that is not a chain (a ResNet's 57 recorded layers,
    a U-Net's way down and up).

    x = the layer's place in execution order (``order``), tick labels = its block (``block``: ``stem``,
    ``layer1.0``, ``down2``, ...; labels that would overlap are left out, every layer keeps a small tick), the
    resolution level (``depth``) over the top panels and a dashed line where it changes. One row of panels per
    layer kind (conv and transposed-conv outputs; norm outputs; activation outputs; any other kind), one column
    per statistic. Per stack (one colour, the stacks side by side at each layer): the line is the median over
    the layer's channels, the band their interquartile range (25th-75th percentile), both computed on the
    values. Variance and std on a log axis, channels with exactly 0 on the 0 band as in
    :func:`plot_channel_stats`; other statistics linear.

    ``stats``: one row per (stack, layer, channel) with ``stack, layer, order, depth, kind, block`` (from
    :func:`masked_torch.analysis.models.layer_table`) and the statistics."""
    if stats.empty:
        raise ValueError("plot_channel_stats_by_layer: empty frame")
    missing = [c for c in ("order", "depth", "kind", "layer", "stack") if c not in stats.columns]
    if missing:
        raise ValueError(f"plot_channel_stats_by_layer: the frame lacks columns {missing} (merge "
                         f"masked_torch.analysis.models.layer_table into it)")
    stacks = _stacks_in(stats, stacks)
    data = stats[stats["stack"].isin(stacks)]
    groups = _kind_groups(list(pd.unique(data["kind"])), kinds)
    data = data[data["kind"].isin([k for _, members in groups for k in members])]
    rows = layer_rows(data)
    offsets = _dodge(stacks)
    data = data.assign(x=data["order"].to_numpy(dtype=float) + data["stack"].map(offsets).to_numpy(dtype=float))
    palette = _palette(stacks)
    nrows, ncols = len(groups), len(statistics)
    width = float(np.clip(0.12 * len(rows) * ncols + 2.2 * ncols, 9.0, 17.0))
    fig = plt.figure(figsize=(width, 1.9 + 2.5 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True)
    for i, (group, members) in enumerate(groups):
        for j, stat in enumerate(statistics):
            ax = axes[i, j]
            sub = data[data["kind"].isin(members) & np.isfinite(data[stat].to_numpy(dtype=float))]
            values = sub[stat].to_numpy(dtype=float)
            log = stat in _LOG_STATS
            n_zero = int((values == 0).sum()) if log else 0
            floor = zero_floor(values, at_most=None) if n_zero else None
            lines, bands = [], []
            for s in stacks:
                part = sub[sub["stack"] == s]
                if not part.empty:
                    ln, bd = _median_band(ax, part, stat, palette[s], s)
                    lines += ln
                    bands += bd
            if floor is not None:
                _lift_onto_band(lines, floor)
                _lift_band(bands, floor)
                _log_axis_with_zero(ax, floor, top=float(values.max()) * 3)
                ax.text(0.99, 0.01, f"{n_zero} channel(s) with {stat} = 0 (on the 0 band)", ha="right",
                        va="bottom", fontsize=7, transform=ax.transAxes)
            elif log and values.size:
                ax.set_yscale("log")
            if stat == "mean" and (values < 0).any():
                ax.axhline(0, color="0.6", lw=0.8, zorder=1)
            title = " and ".join(_KIND_TITLES.get(k, f"{k} outputs") for k in members)
            ax.set_title(f"{title[0].upper() + title[1:]}: {_STAT_NAMES.get(stat, stat)}", fontsize=9.5)
            ax.set_ylabel(f"{_STAT_NAMES.get(stat, stat)}\n({'log' if log else 'linear'} scale)", fontsize=8.5)
            ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    _finish_layer_figure(fig, axes, rows)
    _legend_below(fig, stacks, palette)
    fig.suptitle(
        f"Per-channel activation statistics of {len(rows)} layers, in execution order, over the valid (in-image) "
        "positions of all images. Line: median over the layer's channels; band: their interquartile range "
        "(25th-75th percentile); the stacks side by side at each layer",
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 3, by layer
def _padding_by_layer(padding: pd.DataFrame, stacks: Sequence[str], only_padded: bool,
                      floor: Optional[float]) -> Figure:
    data = padding[padding["stack"].isin(stacks)]
    kind = "act" if (data["kind"] == "act").any() else "conv"
    data = data[data["kind"] == kind]
    only_padded = bool(only_padded and "padded" in data and data["padded"].any())
    if only_padded:
        data = data[data["padded"]]
    data = data[data["rel_error"].notna()]
    refs = [r for r in ("alone", "conv_alone") if r in set(data["reference"])] or list(pd.unique(data["reference"]))
    rows = layer_rows(data)
    errors = data["rel_error"].to_numpy(dtype=float)
    floor = zero_floor(errors, floor)
    top = max(1.0, float(np.nanmax(errors)) * 3)
    offsets = _dodge(stacks)
    data = data.assign(x=data["order"].to_numpy(dtype=float) + data["stack"].map(offsets).to_numpy(dtype=float))
    palette = _palette(stacks)
    width = float(np.clip(0.28 * len(rows) + 3.0, 8.0, 16.0))
    fig = plt.figure(figsize=(width, 1.9 + 3.0 * len(refs)), layout="constrained")
    axes = fig.subplots(len(refs), 1, squeeze=False, sharex=True, sharey=True)
    titles = {"alone": "vs the same stack on the image alone (padding sensitivity)",
              "conv_alone": "vs plain conv on the image alone (distance from the unmasked network)"}
    rng = np.random.default_rng(_JITTER_SEED)  # the dots' jitter: seeded, numpy's global state untouched
    for ax, ref in zip(axes[:, 0], refs):
        sub = data[data["reference"] == ref]
        lines, bands = [], []
        for s in stacks:
            part = sub[sub["stack"] == s]
            if part.empty:
                continue
            ax.scatter(part["x"] + rng.uniform(-0.06, 0.06, len(part)), np.maximum(part["rel_error"], floor),
                       s=7, color=palette[s], alpha=0.45, linewidths=0, zorder=3)
            ln, bd = _median_band(ax, part, "rel_error", palette[s], s)
            lines += ln
            bands += bd
        _lift_onto_band(lines, floor)
        _lift_band(bands, floor)
        _log_axis_with_zero(ax, floor, top)
        ax.axhline(FLOAT32_EPS, color="0.3", ls=":", lw=1.0, zorder=1)
        ax.text(0.005, FLOAT32_EPS * 1.3, "float32 eps", fontsize=7, color="0.3", ha="left", va="bottom",
                transform=ax.get_yaxis_transform())
        ax.text(0.005, floor * 3.5, "0 = bit-identical", fontsize=7, color="0.35", va="bottom",
                transform=ax.get_yaxis_transform())
        ax.set_title(titles.get(ref, ref), fontsize=9.5)
        ax.set_ylabel("relative error\n||batch - ref|| / ||ref||  (log)", fontsize=8.5)
        ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    _finish_layer_figure(fig, axes, rows)
    _legend_below(fig, stacks, palette)
    n_img = data["image"].nunique()
    fig.suptitle(
        f"Padding sensitivity of the {len(rows)} {'activation' if kind == 'act' else 'conv'} outputs, in execution "
        f"order: each image's activations in its padded batch against the image alone, over the image's positions; "
        f"{n_img} image(s){' that the batch pads further' if only_padded else ''}. Dots: images; line: median "
        f"over the images; band: their interquartile range (0 band: bit-identical)",
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 4
_RATIOS = (1.01, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0, 5.0) + tuple(10.0 ** k for k in range(1, 31))


def _ratio_ticks(hi: float, per_side: int = 4) -> list[float]:
    """Ticks of a log axis from ``1 / hi`` to ``hi``: 1 and the same ratios ``r`` and ``1 / r`` on either side
    (at most ``per_side`` of them, the largest that fit)."""
    span = math.log10(hi)
    up = [r for r in _RATIOS if r <= hi * (1 + 1e-9) and math.log10(r) >= 0.15 * span][-per_side:]
    return sorted([1 / r for r in up] + [1.0] + up)


def _ratio_label(v: float, pos=None) -> str:
    """``1``, ``×2``, ``÷2``, ``×1e6``: a ratio and its inverse read the same distance from 1."""
    if math.isclose(v, 1.0, rel_tol=1e-9):
        return "1"
    r, sign = (v, "×") if v > 1 else (1 / v, "÷")
    k = math.log10(r)
    text = f"1e{round(k)}" if r >= 1e4 and math.isclose(k, round(k), abs_tol=1e-9) else f"{r:g}"
    return f"{sign}{text}"


def rel_var(image_stats: pd.DataFrame) -> np.ndarray:
    """``var / var_alone``: 1 where padding changed nothing; 1 where both are 0; ``inf`` where only the image
    alone has no variance."""
    var = image_stats["var"].to_numpy(dtype=float)
    alone = image_stats["var_alone"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = var / alone
    out[(var == 0) & (alone == 0)] = 1.0
    return out


def plot_stats_vs_padding(image_stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                          layers: Optional[Sequence[str]] = None, max_facets: int = 6, bins: int = 5) -> Figure:
    """How a layer's statistics depend on how much of an image's batch canvas is padding: the seed's concern.

    ``image_stats``: one row per (stack, layer, image) with ``stack, layer, image, pad_fraction`` (0..1: the
    padded share of the image's batch canvas), ``var`` (over the image's valid positions and all channels of the
    layer, in the batch), ``var_alone`` (the same image run alone), optionally ``rel_var = var / var_alone``
    (else computed: :func:`rel_var`), ``order``, ``depth``, ``block``. Each panel is one layer: by default the
    first recorded layer and each resolution level's output (:func:`level_outputs`), at most ``max_facets``,
    evenly spaced through the network; ``layers`` names them instead.

    y = ``rel_var`` on a log axis centred on 1 (the solid line: the image's variance is what it is alone; a
    ratio r and 1/r are equally far from it), x = ``pad_fraction``; one dot per image, one colour per stack; the
    line joins, per stack, the medians of ``rel_var`` in ``bins`` equal-width bins of ``pad_fraction`` (computed
    on the values, drawn at the median padding share of the bin). Exact zeros sit on a 0 band; ratios that are
    not finite (the image alone had no variance) are left out and counted in the panel."""
    if image_stats.empty:
        raise ValueError("plot_stats_vs_padding: empty frame")
    needed = ["stack", "layer", "image", "pad_fraction"] + ([] if "rel_var" in image_stats else ["var", "var_alone"])
    missing = [c for c in needed if c not in image_stats.columns]
    if missing:
        raise ValueError(f"plot_stats_vs_padding: the frame lacks columns {missing}")
    pf = image_stats["pad_fraction"].to_numpy(dtype=float)
    if np.any((pf < 0) | (pf > 1)):
        raise ValueError(f"plot_stats_vs_padding: pad_fraction must be in [0, 1], got values from {np.nanmin(pf)} "
                         f"to {np.nanmax(pf)}")
    stacks = _stacks_in(image_stats, stacks)
    data = image_stats[image_stats["stack"].isin(stacks)]
    if "rel_var" not in data:
        data = data.assign(rel_var=rel_var(data))
    known = list(pd.unique(data["layer"]))
    if layers is None:
        layers = level_outputs(data, max_facets, first=True) if "depth" in data else known[:max_facets]
    else:
        unknown = [lay for lay in layers if lay not in known]
        if unknown:
            raise ValueError(f"plot_stats_vs_padding: layers {unknown} are not in the frame")
    ratio = data["rel_var"].to_numpy(dtype=float)
    finite = np.isfinite(ratio)
    positive = ratio[finite & (ratio > 0)]
    spread = float(np.max(np.abs(np.log10(positive)))) if positive.size else 0.0
    half = max(spread * 1.15, math.log10(1.1))  # at least 1/1.1 .. 1.1
    lo, hi = 10.0 ** -half, 10.0 ** half
    has_zero = bool((ratio[finite] == 0).any())
    floor = min(lo, float(positive.min()) if positive.size else 1.0) / 10 if has_zero else None
    palette = _palette(stacks)
    # the stacks often coincide (every masked stack at exactly 1): hollow markers of different shapes and
    # dashed lines keep each visible where they overlap
    markers = dict(zip(stacks, "osD^vP*X" * 2))
    styles = dict(zip(stacks, ["-", (0, (5, 2)), (0, (1, 1.5)), "-."] * 4))
    n = len(layers)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig = plt.figure(figsize=(1.2 + 4.3 * ncols, 1.9 + 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    info = layer_rows(data).set_index("layer")
    x_max = max(0.05, float(np.nanmax(data["pad_fraction"])))
    edges = np.linspace(0.0, x_max, bins + 1)
    rng = np.random.default_rng(_JITTER_SEED)
    for ax, layer in zip(axes.ravel(), layers):
        sub = data[data["layer"] == layer]
        values = sub["rel_var"].to_numpy(dtype=float)
        n_bad = int((~np.isfinite(values)).sum())
        sub = sub[np.isfinite(values)]
        ax.axhline(1.0, color="0.55", lw=0.9, zorder=2)
        for s in stacks:
            part = sub[sub["stack"] == s]
            if part.empty:
                continue
            y = part["rel_var"].to_numpy(dtype=float)
            x = part["pad_fraction"].to_numpy(dtype=float)
            drawn = np.maximum(y, floor) if floor is not None else y
            ax.scatter(x + rng.uniform(-0.004, 0.004, len(x)) * x_max, drawn, s=22, marker=markers[s],
                       facecolors="none", edgecolors=[palette[s]], alpha=0.75, linewidths=0.9, zorder=3)
            which = np.clip(np.digitize(x, edges[1:-1]), 0, bins - 1)
            mx, my = [], []
            for b in range(bins):
                inside = which == b
                if inside.any():
                    mx.append(float(np.median(x[inside])))
                    my.append(float(np.median(y[inside])))
            my_drawn = np.maximum(my, floor) if floor is not None else my
            ax.plot(mx, my_drawn, color=palette[s], lw=1.4, ls=styles[s], marker=markers[s], markersize=5,
                    zorder=4, gid=f"median {s}")
        if floor is not None:
            _log_axis_with_zero(ax, floor, hi)
        else:
            ax.set_yscale("log")
            ax.set_ylim(lo, hi)
            ax.yaxis.set_major_locator(FixedLocator(_ratio_ticks(hi)))
            ax.yaxis.set_minor_locator(NullLocator())
            ax.yaxis.set_major_formatter(FuncFormatter(_ratio_label))
        if n_bad:
            ax.text(0.99, 0.99, f"{n_bad} ratio(s) not finite (no variance alone), left out", ha="right",
                    va="top", fontsize=7, transform=ax.transAxes)
        row = info.loc[layer] if layer in info.index else None
        where = []
        if row is not None and "depth" in info and not pd.isna(row["depth"]):
            where.append(f"depth {int(row['depth'])}")
        if row is not None and "block" in info and row["block"] != layer:
            where.append(str(row["block"]))
        ax.set_title(f"{layer}" + (f"  ({', '.join(where)})" if where else ""), fontsize=9.5)
        ax.set_xlim(-0.02 * x_max, x_max * 1.04)
        ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("variance in the batch / alone\n(log scale; 1 = unchanged)", fontsize=8.5)
    for ax in axes.ravel()[max(0, n - ncols):n]:
        ax.set_xlabel("padding share of the image's batch canvas", fontsize=8.5)
        ax.xaxis.set_tick_params(labelbottom=True)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette[s], ls=styles[s], marker=markers[s], markerfacecolor="none", lw=1.4)
               for s in stacks]
    fig.legend(handles, [STACK_LABELS.get(s, s) for s in stacks], loc="outside lower center", ncols=len(stacks),
               frameon=False, fontsize=9)
    fig.suptitle(
        f"Each image's activation variance (all channels, its valid positions) in its padded batch over the same "
        f"image alone, against how much of its batch canvas is padding; {data['image'].nunique()} image(s), one dot "
        f"each; line: median per bin of padding share",
        fontsize=10, wrap=True)
    return fig
