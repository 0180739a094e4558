"""Figures of the activation-statistics suite. Every function takes a tidy frame and returns a matplotlib
``Figure`` made with pyplot in whatever backend is active (the command line uses Agg; in Jupyter the figures
show inline); nothing is shown or saved here, close the figures when done.

* :func:`plot_activation_maps`     -- frame of maps (:attr:`masked_torch.analysis.run.Results.maps`): per stack one row of
  channel-mean activation maps per depth, with the masks, one colour scale per depth shared by the stacks.
* :func:`plot_channel_stats`       -- the stats frame (one row per stack, layer, channel): per-channel mean and
  variance by depth, every channel a point, a box per stack and depth.
* :func:`plot_padding_sensitivity` -- the padding frame (stack, reference, layer, depth, image, rel_error):
  relative error of each image in its padded batch against the same image alone.

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
from matplotlib.ticker import FixedLocator, FuncFormatter, LogFormatterSciNotation, NullLocator

__all__ = ["plot_activation_maps", "plot_channel_stats", "plot_padding_sensitivity", "STACK_ORDER",
           "STACK_COLORS", "STACK_LABELS", "FLOAT32_EPS", "level_layers", "zero_floor"]

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


def plot_channel_stats(stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                       statistics: Sequence[str] = ("mean", "var"), kinds: Optional[Sequence[str]] = None) -> Figure:
    """Per-channel statistics by depth: one column of panels per statistic, one row per layer kind (conv
    output, activation output); x = depth, colour = stack; every dot is one channel (over all valid positions
    of all images). Boxes (seaborn, on the values): quartiles over channels, the line in the box their median,
    whiskers out to the most extreme channel within the 5th-95th percentiles (``whis=(5, 95)``).

    One scale rule: variance and std are always drawn on a log axis (they shrink by decades with depth);
    channels whose value is exactly 0 (a dead ReLU channel) are drawn on a shaded band at the bottom whose
    tick reads "0", and counted in the panel. Every other statistic is drawn on a linear axis."""
    import seaborn as sns

    if stats.empty:
        raise ValueError("plot_channel_stats: empty frame")
    stacks = _stacks_in(stats, stacks)
    data = stats[stats["stack"].isin(stacks) & (stats["depth"] > 0)]
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
                             only_padded: bool = True, floor: Optional[float] = None) -> Figure:
    """Relative error ``||batch - reference|| / ||reference||`` over each image's valid positions, per depth
    (level output) and stack; one dot per image, a bar at the median of the errors (seaborn's pointplot with
    ``estimator="median"`` on the errors themselves: the median of ``[0, 0, 0.0086, 0.028]`` is 0.0043). One
    panel per reference: the same stack on the image alone (``alone``) and the plain conv stack on the image
    alone (``conv_alone``). Log y axis; the dotted line is float32 epsilon; exact zeros (bit-identical), and a
    median of 0, are drawn on a shaded band whose tick reads "0" (at ``floor``; default: see
    :func:`zero_floor`). With ``only_padded`` only images that the batch pads beyond their own canvas are drawn."""
    import seaborn as sns

    if padding.empty:
        raise ValueError("plot_padding_sensitivity: empty frame")
    stacks = _stacks_in(padding, stacks)
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
