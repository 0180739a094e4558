"""Figures of the activation-statistics suite. Every function takes a tidy frame and returns a matplotlib
``Figure`` made with pyplot in whatever backend is active (the command line uses Agg; in Jupyter the figures
show inline); nothing is shown or saved here, close the figures when done.

* :func:`plot_activation_maps`     -- frame of maps (:attr:`analysis.run.Results.maps`): per stack one row of
  channel-mean activation maps per depth, with the masks, one colour scale per depth shared by the stacks.
* :func:`plot_channel_stats`       -- the stats frame (one row per stack, layer, channel): per-channel mean and
  variance by depth, every channel a point, a box per stack and depth.
* :func:`plot_padding_sensitivity` -- the padding frame (stack, reference, layer, depth, image, rel_error):
  relative error of each image in its padded batch against the same image alone.
"""
from __future__ import annotations

import textwrap
import warnings
from contextlib import contextmanager
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import MatplotlibDeprecationWarning
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

__all__ = ["plot_activation_maps", "plot_channel_stats", "plot_padding_sensitivity", "STACK_ORDER",
           "STACK_COLORS", "STACK_LABELS", "FLOAT32_EPS", "level_layers"]

STACK_ORDER = ("conv", "pconv", "mconv", "conv_alone")
_cb = sns.color_palette("colorblind")
STACK_COLORS = {"conv": _cb[3], "pconv": _cb[0], "mconv": _cb[2], "conv_alone": (0.45, 0.45, 0.45)}
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


@contextmanager
def _fixed_jitter(seed: int = 0):
    """Seaborn's strip-plot jitter draws from numpy's global generator: seed it for the figure (so the same
    frame gives the same PNG) and put the caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


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
def _needs_log(values: np.ndarray) -> bool:
    pos = values[np.isfinite(values) & (values > 0)]
    return bool(pos.size > 0 and pos.max() / pos.min() > 100)


def plot_channel_stats(stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                       statistics: Sequence[str] = ("mean", "var"), kinds: Optional[Sequence[str]] = None) -> Figure:
    """Per-channel statistics by depth: one column of panels per statistic, one row per layer kind (conv
    output, activation output); x = depth, colour = stack; every dot is one channel (over all valid positions
    of all images), boxes show the quartiles over channels (whiskers 1.5 IQR). The variance axis is
    logarithmic only when the values span more than two orders of magnitude (said on the axis)."""
    if stats.empty:
        raise ValueError("plot_channel_stats: empty frame")
    stacks = _stacks_in(stats, stacks)
    data = stats[stats["stack"].isin(stacks) & (stats["depth"] > 0)].copy()
    if kinds is None:
        kinds = [k for k in ("conv", "act") if (data["kind"] == k).any()] or list(pd.unique(data["kind"]))
    depths = sorted(data["depth"].unique())
    palette = {s: STACK_COLORS.get(s, "k") for s in stacks}
    nrows, ncols = len(kinds), len(statistics)
    width = max(6.0, 1.1 * len(depths) * max(1, len(stacks)) ** 0.5 + 1.5) * ncols
    fig = plt.figure(figsize=(min(width, 13.5), 2.0 + 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    kind_names = {"conv": "conv output (pre-activation)", "act": "activation output"}
    stat_names = {"mean": "per-channel mean", "var": "per-channel variance", "std": "per-channel std",
                  "zero_frac": "fraction of exact zeros"}
    for i, kind in enumerate(kinds):
        sub = data[data["kind"] == kind]
        for j, stat in enumerate(statistics):
            ax = axes[i, j]
            vals = sub[stat].to_numpy(dtype=float)
            log = stat in ("var", "std") and _needs_log(vals)
            plotted = sub
            n_zero = 0
            if log:
                floor = np.nanmin(vals[vals > 0]) / 2
                n_zero = int((vals <= 0).sum())
                plotted = sub.assign(**{stat: np.maximum(vals, floor)})
            with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11's deprecated `vert`
                warnings.simplefilter("ignore", MatplotlibDeprecationWarning)
                sns.boxplot(data=plotted, x="depth", y=stat, hue="stack", hue_order=stacks, order=depths,
                            palette=palette, ax=ax, showfliers=False, fill=False, width=0.8, linewidth=1.0,
                            log_scale=log, legend=False)
            with _fixed_jitter():
                sns.stripplot(data=plotted, x="depth", y=stat, hue="stack", hue_order=stacks, order=depths,
                              palette=palette, ax=ax, dodge=True, jitter=0.18, size=2.2, alpha=0.55,
                              legend=(i == 0 and j == 0), log_scale=log)
            if stat == "mean" and (vals < 0).any():
                ax.axhline(0, color="0.6", lw=0.8, zorder=0)
            scale = "log scale" if log else "linear scale"
            ax.set_ylabel(f"{stat_names.get(stat, stat)} ({scale})")
            ax.set_xlabel("depth (level)")
            ax.set_title(f"{kind_names.get(kind, kind)}: {stat_names.get(stat, stat)}", fontsize=10)
            ax.grid(axis="y", which="major", color="0.9", lw=0.6)
            if n_zero:
                ax.text(0.99, 0.01, f"{n_zero} channel(s) with {stat} = 0 drawn at the bottom",
                        ha="right", va="bottom", fontsize=7, transform=ax.transAxes)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if axes[0, 0].get_legend() is not None:
        axes[0, 0].get_legend().remove()
    fig.legend(handles, [STACK_LABELS.get(lb, lb) for lb in labels], loc="outside lower center",
               ncols=len(stacks), markerscale=2.5, frameon=False, fontsize=9)
    fig.suptitle(
        "Per-channel activation statistics by depth over the valid (in-image) positions of all images; "
        "one dot per channel, boxes = quartiles over channels"
        + (" (" + ", ".join(f"{s}" for s in stacks if s != "conv_alone")
           + " on padded batches; conv_alone = plain conv on each image alone)" if "conv_alone" in stacks else ""),
        fontsize=10, wrap=True)
    return fig


# ------------------------------------------------------------------------------------------------ figure 3
def plot_padding_sensitivity(padding: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                             only_padded: bool = True, floor: float = 1e-10) -> Figure:
    """Relative error ``||batch - reference|| / ||reference||`` over each image's valid positions, per depth
    (level output) and stack; one dot per image, a bar at the median. One panel per reference: the same stack
    on the image alone (``alone``) and the plain conv stack on the image alone (``conv_alone``). Log y axis;
    the dotted line is float32 epsilon; exact zeros (bit-identical) are drawn at ``floor``. With
    ``only_padded`` only images that the batch pads beyond their own canvas are drawn."""
    if padding.empty:
        raise ValueError("plot_padding_sensitivity: empty frame")
    stacks = _stacks_in(padding, stacks)
    data = level_layers(padding[padding["stack"].isin(stacks)])
    only_padded = bool(only_padded and "padded" in data and data["padded"].any())
    if only_padded:
        data = data[data["padded"]]
    refs = [r for r in ("alone", "conv_alone") if r in set(data["reference"])] or list(pd.unique(data["reference"]))
    depths = sorted(data["depth"].unique())
    palette = {s: STACK_COLORS.get(s, "k") for s in stacks}
    data = data.assign(shown=np.maximum(data["rel_error"].to_numpy(dtype=float), floor))
    fig = plt.figure(figsize=(5.2 * len(refs) + 0.6, 5.4), layout="constrained")
    axes = fig.subplots(1, len(refs), squeeze=False, sharey=True)[0]
    titles = {"alone": "vs the same stack on the image alone\n(padding sensitivity)",
              "conv_alone": "vs plain conv on the image alone\n(distance from the unmasked network)"}
    top = max(1.0, float(np.nanmax(data["shown"])) * 3)
    for ax, ref in zip(axes, refs):
        sub = data[data["reference"] == ref]
        ax.axhspan(floor / 3, floor * 3, color="0.93", zorder=0)
        ax.text(-0.45, floor * 1.6, "= 0 (bit-identical)", fontsize=7, color="0.35", va="bottom")
        ax.axhline(FLOAT32_EPS, color="0.3", ls=":", lw=1.0, zorder=1)
        ax.text(-0.45, FLOAT32_EPS * 1.3, "float32 eps", fontsize=7, color="0.3", ha="left", va="bottom")
        with _fixed_jitter():
            sns.stripplot(data=sub, x="depth", y="shown", hue="stack", hue_order=stacks, order=depths,
                          palette=palette, dodge=True, jitter=0.2, size=4, alpha=0.75, ax=ax, log_scale=True,
                          legend=(ref == refs[0]))
        sns.pointplot(data=sub, x="depth", y="shown", hue="stack", hue_order=stacks, order=depths,
                      palette=palette, dodge=0.8 - 0.8 / len(stacks), estimator="median", errorbar=None,
                      markers="_", markersize=16, linestyles="none", ax=ax, legend=False, log_scale=True)
        ax.set_ylim(floor / 3, top)
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
        ax.set_ylabel("relative error  ||batch - ref|| / ||ref||  (log scale)")
        ax.grid(axis="y", which="major", color="0.9", lw=0.6)
    handles, labels = axes[0].get_legend_handles_labels()
    if axes[0].get_legend() is not None:
        axes[0].get_legend().remove()
    fig.legend(handles, [STACK_LABELS.get(lb, lb) for lb in labels], loc="outside lower center",
               ncols=len(stacks), markerscale=1.5, frameon=False, fontsize=9)
    n_img = data["image"].nunique()
    fig.suptitle(
        f"Padding sensitivity: each image's activations in its padded batch against the image alone "
        f"(padded only to its own size rounded up to 2^depth), over the image's positions; "
        f"{n_img} image(s){' that the batch pads further' if only_padded else ' (none is padded beyond its own canvas)'}"
        f"; one dot per image, bar = median",
        fontsize=10, wrap=True)
    return fig
