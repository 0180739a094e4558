"""Figures of the activation-statistics suite. Every function takes a tidy frame and returns a matplotlib
``Figure`` made with pyplot in whatever backend is active (the command line uses Agg; in Jupyter the figures
show inline); nothing is shown or saved here, close the figures when done.

* :func:`plot_activation_maps`     -- frame of maps (:attr:`analysis.run.Results.maps`): per stack one row of
  channel-mean activation maps per depth, with the masks, one colour scale per depth shared by the stacks.
* :func:`plot_channel_stats`       -- the stats frame (one row per stack, layer, channel): per-channel mean and
  variance by depth, every channel a point, a box per stack and depth.
* :func:`plot_padding_sensitivity` -- the padding frame (stack, reference, layer, depth, image, rel_error):
  relative error of each image in its padded batch against the same image alone.

Every statistic drawn (medians, quartiles, percentiles) is computed on the data, never on drawn positions: on
a log axis an exact 0 is drawn on a floor band whose tick reads "0", and a median of 0 sits on that band.
Matplotlib only (seaborn's statistics would add scipy's second of import time to every run).
"""
from __future__ import annotations

import math
import textwrap
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatterSciNotation, NullLocator

__all__ = ["plot_activation_maps", "plot_channel_stats", "plot_padding_sensitivity", "STACK_ORDER",
           "STACK_COLORS", "STACK_LABELS", "FLOAT32_EPS", "level_layers", "zero_floor"]

STACK_ORDER = ("conv", "pconv", "mconv", "conv_alone")
# seaborn's "colorblind" palette (entries 3, 0, 2), as RGB tuples
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
    "pconv": "PartialConv2d: window sum\nrescaled by valid count\n(update_mask=False)",
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


def _offsets(n: int) -> np.ndarray:
    """x offsets of ``n`` stacks within a depth's group (seaborn's dodge)."""
    w = _GROUP_WIDTH / n
    return w * (np.arange(n) - (n - 1) / 2)


def _strip(ax: Axes, x: float, values: np.ndarray, color, rng: np.random.Generator, *, half_width: float,
           size: float, alpha: float) -> None:
    """One dot per value at ``x``, jittered sideways."""
    if len(values):
        ax.scatter(x + rng.uniform(-half_width, half_width, len(values)), values, s=size, color=color,
                   alpha=alpha, linewidths=0, zorder=3)


def _log_axis_with_zero(ax: Axes, floor: float, top: float) -> None:
    """Log y axis from ``floor / 3`` to ``top`` whose ticks are decades plus the floor, which is labelled "0"
    and shaded: the exact zeros drawn there are zeros, not small values."""
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


# ------------------------------------------------------------------------------------------------ figure 1
def plot_activation_maps(maps: pd.DataFrame, rgb: Optional[np.ndarray] = None, *,
                         stacks: Optional[Sequence[str]] = None, mask_stack: str = "mconv") -> Figure:
    """Channel-mean activation maps per depth (columns) and stack (rows) for one image of a padded batch.

    ``maps``: columns ``image, stack, layer, depth, kind, map, mask, h, w, canvas_h, canvas_w`` (``map`` and
    ``mask`` are 2d arrays over the whole batch canvas at that depth; ``mask`` is the channel-mean output mask).
    ``rgb``: optional ``(H, W, 3)`` picture of the input canvas for the first panel. The top row shows the
    input and the output mask of ``mask_stack`` (if present, else of the first stack) at each depth; the dashed
    red rectangle is the image boundary (exact, also where it cuts a ``2**depth`` block). One colour scale per
    depth column, shared by every stack, with its colour bar under the column.
    """
    if maps.empty:
        raise ValueError("plot_activation_maps: empty frame")
    images = pd.unique(maps["image"])
    if len(images) != 1:
        raise ValueError(f"plot_activation_maps: expected the maps of one image, got {list(images)}")
    stacks = _stacks_in(maps, stacks)
    maps = level_layers(maps[maps["stack"].isin(stacks)])
    depths = sorted(maps["depth"].unique())
    first = maps.iloc[0]
    h, w, ch, cw = (int(first[k]) for k in ("h", "w", "canvas_h", "canvas_w"))
    mstack = mask_stack if mask_stack in stacks else stacks[0]
    layer_names = {d: maps.loc[maps["depth"] == d, "layer"].iloc[0] for d in depths}

    ncols, nrows = len(depths) + 1, len(stacks) + 1
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
    for j, d in enumerate(depths, start=1):
        row = maps[(maps["stack"] == mstack) & (maps["depth"] == d)].iloc[0]
        mask_im = axes[0, j].imshow(row["mask"], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        boundary(axes[0, j], d)
        hh, ww = row["map"].shape
        axes[0, j].set_title(f"depth {d}: {layer_names[d]}, {hh}x{ww}\n{mstack} output mask", fontsize=9)
    axes[0, 1].set_ylabel("mask", fontsize=10)
    fig.colorbar(mask_im, ax=axes[0, -1], location="right", shrink=0.85, label="mask (channel mean)")

    # stack rows
    for j, d in enumerate(depths, start=1):
        col = maps[maps["depth"] == d]
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
        fig.colorbar(im, ax=list(axes[1:, j]), location="bottom", shrink=0.9, aspect=18, pad=0.01,
                     label=f"channel mean, depth {d}", extend="both")
    for i, s in enumerate(stacks, start=1):
        ax = axes[i, 0]
        ax.axis("off")
        ax.text(0.5, 0.62, s, ha="center", va="center", fontsize=15, weight="bold",
                color=STACK_COLORS.get(s, "k"), transform=ax.transAxes)
        ax.text(0.5, 0.28, _STACK_NOTES.get(s, ""), ha="center", va="center", fontsize=8,
                transform=ax.transAxes, linespacing=1.3)
    fig.suptitle(
        f"Channel-mean activation of each level, image '{images[0]}' in its padded batch. "
        "One colour scale per depth (column), shared by the stacks; red dashes: image boundary; "
        "values outside it are what the layer writes into the padding.",
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 2
_LOG_STATS = ("var", "std")  # scale statistics: always on a log axis (they span decades over depth)


def _box_stats(values: np.ndarray) -> dict:
    """Median, quartiles and 5th / 95th percentiles of ``values``, computed on the values themselves."""
    q05, q25, q50, q75, q95 = np.percentile(values, [5, 25, 50, 75, 95])
    return dict(med=q50, q1=q25, q3=q75, whislo=q05, whishi=q95, fliers=[])


def _legend(fig: Figure, stacks: Sequence[str], marker: str = "o") -> None:
    handles = [Line2D([], [], marker=marker, ls="none", markersize=6, color=STACK_COLORS.get(s, "k"))
               for s in stacks]
    fig.legend(handles, [STACK_LABELS.get(s, s) for s in stacks], loc="outside lower center",
               ncols=len(stacks), frameon=False, fontsize=9)


def plot_channel_stats(stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                       statistics: Sequence[str] = ("mean", "var"), kinds: Optional[Sequence[str]] = None) -> Figure:
    """Per-channel statistics by depth: one column of panels per statistic, one row per layer kind (conv
    output, activation output); x = depth, colour = stack; every dot is one channel (over all valid positions
    of all images). Boxes: quartiles over channels, the line in the box their median, whiskers the 5th and
    95th percentiles, all computed on the values.

    One scale rule: variance and std are always drawn on a log axis (they shrink by decades with depth);
    channels whose value is exactly 0 (a dead ReLU channel) are drawn on a shaded band at the bottom whose
    tick reads "0", and counted in the panel. Every other statistic is drawn on a linear axis."""
    if stats.empty:
        raise ValueError("plot_channel_stats: empty frame")
    stacks = _stacks_in(stats, stacks)
    data = stats[stats["stack"].isin(stacks) & (stats["depth"] > 0)]
    if kinds is None:
        kinds = [k for k in ("conv", "act") if (data["kind"] == k).any()] or list(pd.unique(data["kind"]))
    depths = sorted(data["depth"].unique())
    offsets = _offsets(len(stacks))
    width = _GROUP_WIDTH / len(stacks)
    rng = np.random.default_rng(_JITTER_SEED)
    nrows, ncols = len(kinds), len(statistics)
    fig_width = max(6.0, 1.1 * len(depths) * max(1, len(stacks)) ** 0.5 + 1.5) * ncols
    fig = plt.figure(figsize=(min(fig_width, 13.5), 2.0 + 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    kind_names = {"conv": "conv output (pre-activation)", "act": "activation output"}
    stat_names = {"mean": "per-channel mean", "var": "per-channel variance", "std": "per-channel std",
                  "zero_frac": "fraction of exact zeros"}
    for i, kind in enumerate(kinds):
        sub = data[data["kind"] == kind]
        for j, stat in enumerate(statistics):
            ax = axes[i, j]
            values = sub[stat].to_numpy(dtype=float)
            log = stat in _LOG_STATS
            n_zero = int((values == 0).sum()) if log else 0
            floor = zero_floor(values, at_most=None) if n_zero else None
            lift = -np.inf if floor is None else floor  # drawn at max(value, lift); statistics use the values
            for di, d in enumerate(depths):
                for si, s in enumerate(stacks):
                    v = sub.loc[(sub["depth"] == d) & (sub["stack"] == s), stat].to_numpy(dtype=float)
                    v = v[np.isfinite(v)]
                    if not v.size:
                        continue
                    x, color = di + offsets[si], STACK_COLORS.get(s, "k")
                    box = {k: (max(val, lift) if k != "fliers" else val) for k, val in _box_stats(v).items()}
                    line = dict(color=color, lw=1.0)
                    art = ax.bxp([box], positions=[x], widths=0.8 * width, showfliers=False, manage_ticks=False,
                                 boxprops=line, whiskerprops=line, capprops=line,
                                 medianprops=dict(color=color, lw=1.8))
                    for median in art["medians"]:
                        median.set_gid(f"median {s} depth {d}")
                    _strip(ax, x, np.maximum(v, lift), color, rng, half_width=0.3 * width, size=5, alpha=0.5)
            ax.set_xticks(range(len(depths)), [str(d) for d in depths])
            ax.set_xlim(-0.5, len(depths) - 0.5)
            if floor is not None:
                _log_axis_with_zero(ax, floor, top=float(np.nanmax(values)) * 3)
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
    _legend(fig, stacks)
    fig.suptitle(
        "Per-channel activation statistics by depth over the valid (in-image) positions of all images; "
        "one dot per channel, boxes = quartiles over channels with the median, whiskers = 5th-95th percentile"
        + (" (" + ", ".join(f"{s}" for s in stacks if s != "conv_alone")
           + " on padded batches; conv_alone = plain conv on each image alone)" if "conv_alone" in stacks else ""),
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 3
def plot_padding_sensitivity(padding: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                             only_padded: bool = True, floor: Optional[float] = None) -> Figure:
    """Relative error ``||batch - reference|| / ||reference||`` over each image's valid positions, per depth
    (level output) and stack; one dot per image, a bar at the median of the errors (computed on the errors:
    the median of ``[0, 0, 0.0086, 0.028]`` is 0.0043). One panel per reference: the same stack on the image
    alone (``alone``) and the plain conv stack on the image alone (``conv_alone``). Log y axis; the dotted
    line is float32 epsilon; exact zeros (bit-identical), and a median of 0, are drawn on a shaded band whose
    tick reads "0" (at ``floor``; default: see :func:`zero_floor`). With ``only_padded`` only images that the
    batch pads beyond their own canvas are drawn."""
    if padding.empty:
        raise ValueError("plot_padding_sensitivity: empty frame")
    stacks = _stacks_in(padding, stacks)
    data = level_layers(padding[padding["stack"].isin(stacks)])
    only_padded = bool(only_padded and "padded" in data and data["padded"].any())
    if only_padded:
        data = data[data["padded"]]
    refs = [r for r in ("alone", "conv_alone") if r in set(data["reference"])] or list(pd.unique(data["reference"]))
    depths = sorted(data["depth"].unique())
    errors = data["rel_error"].to_numpy(dtype=float)
    floor = zero_floor(errors, floor)
    top = max(1.0, float(np.nanmax(errors)) * 3)
    offsets = _offsets(len(stacks))
    width = _GROUP_WIDTH / len(stacks)
    rng = np.random.default_rng(_JITTER_SEED)
    fig = plt.figure(figsize=(5.2 * len(refs) + 0.6, 5.4), layout="constrained")
    axes = fig.subplots(1, len(refs), squeeze=False, sharey=True)[0]
    titles = {"alone": "vs the same stack on the image alone\n(padding sensitivity)",
              "conv_alone": "vs plain conv on the image alone\n(distance from the unmasked network)"}
    for ax, ref in zip(axes, refs):
        sub = data[data["reference"] == ref]
        _log_axis_with_zero(ax, floor, top)
        ax.text(-0.45, floor * 3.5, "0 = bit-identical", fontsize=7, color="0.35", va="bottom")
        ax.axhline(FLOAT32_EPS, color="0.3", ls=":", lw=1.0, zorder=1)
        ax.text(-0.45, FLOAT32_EPS * 1.3, "float32 eps", fontsize=7, color="0.3", ha="left", va="bottom")
        for di, d in enumerate(depths):
            for si, s in enumerate(stacks):
                v = sub.loc[(sub["depth"] == d) & (sub["stack"] == s), "rel_error"].to_numpy(dtype=float)
                v = v[~np.isnan(v)]
                if not v.size:
                    continue
                x, color = di + offsets[si], STACK_COLORS.get(s, "k")
                _strip(ax, x, np.maximum(v, floor), color, rng, half_width=0.3 * width, size=16, alpha=0.75)
                median = float(np.median(v))  # on the data; drawn on the 0 band if it is 0
                ax.hlines(max(median, floor), x - 0.4 * width, x + 0.4 * width, colors=[color], lw=2.6,
                          zorder=4, gid=f"median {s} depth {d}")
        ax.set_xticks(range(len(depths)), [str(d) for d in depths])
        ax.set_xlim(-0.5, len(depths) - 0.5)
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
        ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    axes[0].set_ylabel("relative error  ||batch - ref|| / ||ref||  (log scale)")
    _legend(fig, stacks)
    n_img = data["image"].nunique()
    fig.suptitle(
        f"Padding sensitivity: each image's activations in its padded batch against the image alone "
        f"(padded only to its own size rounded up to 2^depth), over the image's positions; "
        f"{n_img} image(s){' that the batch pads further' if only_padded else ' (none is padded beyond its own canvas)'}"
        f"; one dot per image, bar = median of the errors (on the 0 band when it is 0)",
        fontsize=10, wrap=True)
    return fig
