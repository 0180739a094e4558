"""Figures of the activation-statistics suite, in seaborn's two levels.

**Axes-level functions** take a tidy frame ``data`` and an ``ax``, draw on that axes only (the data layers with
seaborn, summaries computed beforehand with pandas) and return the axes; they add no figure-wide legend or title:

* :func:`channel_stat_points`  -- one dot per channel and, per stack and x position, the median over the channels
  with their interquartile range (x: levels of a chain network);
* :func:`channel_stat_lines`   -- per stack the median over the channels of each layer as a line and the
  interquartile range as a band (x: the layers of any network in execution order);
* :func:`relative_error_points` -- one dot per image: its relative difference from a reference run, with the median
  and interquartile range per stack at each layer;
* :func:`variance_change_points` -- one dot per image: how much its activation variance in the padded batch
  differs from the same image alone, against the padded share of its batch canvas;
* :func:`activation_map`       -- one channel-mean map with the image's border.

**Figure-level functions** lay out the panels, write a title and a caption in words, one legend for the figure,
and with ``path=`` save the PNG atomically (:func:`save_figure`); each returns the ``Figure`` (pyplot, any
backend; close it when done):

* :func:`plot_activation_maps`, :func:`plot_channel_stats` (chain: by level; any other network:
  :func:`plot_channel_stats_by_layer`), :func:`plot_padding_sensitivity`, :func:`plot_stats_vs_padding`.

**Zeros.** Scale statistics (variances, relative differences, changes in percent) span many decades and contain
exact zeros (a dead ReLU channel; an image whose output is bit-identical to its reference). They are drawn on
matplotlib's ``symlog`` axis: linear within ``±linthresh`` and logarithmic outside it, so an exact 0 is drawn at 0
and every other value at its place. ``linthresh`` is chosen from the data (:func:`symlog_threshold`): the largest
power of ten not above the smallest non-zero magnitude in the panel, so that every non-zero value lies on the
logarithmic part (the padding figure shares one threshold between its panels, at most ``ROUNDING / 100``, so
that the float32-rounding strip shows). The stacks stand side by side at x positions computed here from the
category and the stack (no seaborn dodge to reverse-engineer). Statistics are always computed on the values
(pandas), never on drawn positions, and only over the positions where the image is (the recorder and the passes
already restrict them; the colour scale of a map is taken over the image's region only). NaN values are left out
and counted on the panel; a panel without data says so instead of raising.
"""
from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

__all__ = [
    "plot_activation_maps", "plot_channel_stats", "plot_channel_stats_by_layer", "plot_padding_sensitivity",
    "plot_stats_vs_padding", "channel_stat_points", "channel_stat_lines", "relative_error_points",
    "variance_change_points", "activation_map", "save_figure", "symlog_threshold", "summarize", "STACK_ORDER",
    "STACK_COLORS", "STACK_LABELS", "FLOAT32_EPS", "ROUNDING", "level_layers", "level_outputs", "layer_rows",
    "is_chain", "rel_var", "layer_title",
]

STACK_ORDER = ("conv", "pconv", "mconv", "conv_alone")
# seaborn's "colorblind" palette, entries 3, 0, 2 (tests/test_plot.py checks them against seaborn), and grey
STACK_COLORS = {"conv": to_rgb("#d55e00"), "pconv": to_rgb("#0173b2"), "mconv": to_rgb("#029e73"),
                "conv_alone": (0.45, 0.45, 0.45)}
STACK_LABELS = {
    "conv": "conv: plain convolution on the padded batch",
    "pconv": "pconv: partial convolution (rescaled by the valid share of each window)",
    "mconv": "mconv: masked convolution (zero outside the image)",
    "conv_alone": "conv_alone: plain convolution on each image alone",
}
_STACK_SHORT = {"conv": "plain convolution,\npadded batch", "pconv": "partial convolution,\npadded batch",
                "mconv": "masked convolution,\npadded batch", "conv_alone": "plain convolution,\neach image alone"}
FLOAT32_EPS = float(np.finfo(np.float32).eps)
# Relative differences at or below this are float32 rounding: about 100 eps, what a few dozen layers of float32
# sums in another order (another canvas size, another kernel) accumulate; the figures shade it, nothing depends on it
ROUNDING = 1e-5
PNG_CAP = 480_000  # bytes: a figure the README embeds stays below ~500 KB
_SEED = 0  # the dots' horizontal jitter: the same frame gives the same PNG (numpy's global generator untouched)
_KIND_WORDS = {"conv": "convolution output", "upconv": "transposed-convolution output", "norm": "normalisation output",
               "act": "activation output", "linear": "linear-layer output", "pool": "pooling output"}
_STAT_WORDS = {"mean": "channel mean", "var": "channel variance", "std": "channel standard deviation",
               "zero_frac": "share of exact zeros in the channel", "min": "channel minimum", "max": "channel maximum"}
_SCALE_STATS = ("var", "std")  # span decades over depth: symlog
_MIN_BIN = 3  # images a bin of padding share needs for its median to be drawn (figure 4)


# ------------------------------------------------------------------------------------------------ frames
def _stacks_in(frame: pd.DataFrame, stacks: Optional[Sequence[str]]) -> list[str]:
    present = list(pd.unique(frame["stack"]))
    if stacks is None:
        return [s for s in STACK_ORDER if s in present] + [s for s in present if s not in STACK_ORDER]
    missing = [s for s in stacks if s not in present]
    if missing:
        raise ValueError(f"stacks {missing} are not in the frame (it has {present})")
    return list(stacks)


def _require(frame: pd.DataFrame, columns: Sequence[str], who: str) -> None:
    if frame.empty:
        raise ValueError(f"{who}: empty frame")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{who}: the frame lacks columns {missing} (it has {list(frame.columns)})")


def _palette(stacks: Sequence[str]) -> dict:
    """Colour of each stack: :data:`STACK_COLORS`, other stacks seaborn's "colorblind" entries not used there."""
    spare = iter([c for c in ("#de8f05", "#cc78bc", "#ca9161", "#fbafe4", "#ece133", "#56b4e9")] * 3)
    return {s: STACK_COLORS[s] if s in STACK_COLORS else to_rgb(next(spare)) for s in stacks}


def level_layers(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of each depth's *level output*: the activation layer of the level if there is one, else its conv."""
    rows = frame[frame["depth"].fillna(0) > 0]
    kinds = rows.groupby("depth")["kind"].agg(lambda k: "act" if (k == "act").any() else "conv")
    return rows[rows["kind"].to_numpy() == kinds.reindex(rows["depth"]).to_numpy()]


def is_chain(frame: pd.DataFrame) -> bool:
    """Whether ``x = depth`` names one layer per kind: the frame has no ``order`` column (an older frame), or
    every (depth, kind) holds at most one layer and every depth is known (the seed stack: conv{i}, act{i} at
    depth i). A ResNet, a U-Net or a frame with a non-spatial layer (depth NA) is not a chain."""
    if "order" not in frame.columns:
        return True
    rows = frame.drop_duplicates("layer")
    if rows["depth"].isna().any():
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


def rel_var(image_stats: pd.DataFrame) -> np.ndarray:
    """``var / var_alone``: 1 where padding changed nothing; 1 where both are 0; ``inf`` where only the image
    alone has no variance; NaN where either is NaN."""
    var = image_stats["var"].to_numpy(dtype=float)
    alone = image_stats["var_alone"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = var / alone
    out[(var == 0) & (alone == 0)] = 1.0
    return out


def _resolution(depth) -> str:
    if pd.isna(depth):
        return "no spatial dimensions"
    d = int(depth)
    return "full resolution" if d == 0 else f"1/{2 ** d} resolution"


def layer_title(row) -> str:
    """A panel title in words for one layer (a row of :func:`layer_rows`): block, what the layer outputs,
    its name and resolution, e.g. ``"level3: activation output (act3), 1/8 resolution"``."""
    kind = _KIND_WORDS.get(row.get("kind"), f"{row.get('kind', 'layer')} output")
    block = row.get("block", row["layer"])
    head = f"{block}: {kind}" if block != row["layer"] else kind[0].upper() + kind[1:]
    depth = row.get("depth", float("nan"))
    return f"{head} ({row['layer']}), {_resolution(depth)}"


def summarize(data: pd.DataFrame, value: str, by: Sequence[str]) -> pd.DataFrame:
    """Per group of ``by``: ``n`` (finite values), ``median``, ``q25``, ``q75`` and ``max_abs`` of ``value``,
    computed by pandas on the values (NaN and infinities left out)."""
    finite = data[np.isfinite(data[value].to_numpy(dtype=float))]
    grouped = finite.groupby(list(by), sort=False, observed=True)[value]
    out = grouped.agg(n="count", median="median", q25=lambda v: v.quantile(0.25),
                      q75=lambda v: v.quantile(0.75), max_abs=lambda v: v.abs().max())
    return out.reset_index()


# ------------------------------------------------------------------------------------------------ scales
def symlog_threshold(values) -> float:
    """``linthresh`` of a symlog axis for ``values``: the largest power of ten not above the smallest non-zero
    finite magnitude (every non-zero value then lies on the logarithmic part); 1 where there is none."""
    v = np.abs(np.asarray(values, dtype=float).ravel())
    v = v[np.isfinite(v) & (v > 0)]
    return 10.0 ** math.floor(math.log10(float(v.min()))) if v.size else 1.0


def _symlog(ax: Axes, values, *, percent: bool = False, linthresh: Optional[float] = None,
            headroom: float = 3.0) -> float:
    """Put ``ax``'s y axis on symlog with ``linthresh`` (default :func:`symlog_threshold` of ``values``; the
    linear part as tall as one decade); an exact zero is drawn at 0 (labelled "0"), non-negative data get a
    little room below 0. Returns the threshold."""
    t = symlog_threshold(values) if linthresh is None else float(linthresh)
    ax.set_yscale("symlog", linthresh=t, linscale=1.0)
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    lo = float(v.min()) if v.size else 0.0
    hi = float(v.max()) if v.size else t
    top = max(hi, t) * headroom
    bottom = -0.6 * t if lo >= 0 else min(lo, -t) * headroom
    ax.set_ylim(bottom, top)
    ax.yaxis.set_major_locator(FixedLocator(_symlog_ticks(t, bottom, top)))
    ax.yaxis.set_minor_locator(FixedLocator([]))
    if percent:
        ax.yaxis.set_major_formatter(FuncFormatter(_percent_label))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return t


def _symlog_ticks(t: float, bottom: float, top: float, most: int = 9) -> list[float]:
    """0 and the powers of ten from ``t`` outwards to the limits, every k-th decade so that at most about
    ``most`` ticks remain."""
    first = round(math.log10(t))
    up = [10.0 ** k for k in range(first, math.floor(math.log10(top)) + 1)] if top >= t else []
    down = [-(10.0 ** k) for k in range(first, math.floor(math.log10(-bottom)) + 1)] if -bottom >= t else []
    step = max(1, math.ceil((len(up) + len(down)) / most))
    return sorted([0.0] + up[::step] + down[::step])


def _percent_label(v: float, pos=None) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    text = f"{a:.0f}%" if a >= 1 else f"{a:.{max(0, -math.floor(math.log10(a)))}f}%"
    return ("-" if v < 0 else "+") + text


def _note(ax: Axes, text: str, *, loc: str = "upper left", size: float = 7.5) -> None:
    x, ha = (0.01, "left") if "left" in loc else (0.99, "right")
    y, va = (0.98, "top") if "upper" in loc else (0.02, "bottom")
    ax.text(x, y, text, transform=ax.transAxes, ha=ha, va=va, fontsize=size, color="0.2", zorder=6,
            bbox=dict(boxstyle="round,pad=0.3", fc="white", ec="0.8", alpha=0.9))


def _no_data(ax: Axes, why: str) -> Axes:
    ax.text(0.5, 0.5, why, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.3", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _finite(data: pd.DataFrame, value: str) -> tuple[pd.DataFrame, int]:
    """The rows with a finite ``value`` and how many were not."""
    ok = np.isfinite(data[value].to_numpy(dtype=float))
    return data[ok], int((~ok).sum())


def _dodge(stacks: Sequence[str], width: float = 0.8) -> dict:
    """x offset of each stack within a slot of ``width`` (the stacks side by side)."""
    n = len(stacks)
    step = width / n
    return {s: (i - (n - 1) / 2) * step for i, s in enumerate(stacks)}


def _with_x(data: pd.DataFrame, positions: dict, column: str, stacks: Sequence[str], *, jitter: float = 0.0,
            width: float = 0.8) -> pd.DataFrame:
    """``data`` with ``x``: the position of its ``column`` value, moved to its stack's slot, jittered (seeded)."""
    offsets = _dodge(stacks, width)
    x = data[column].map(positions).to_numpy(dtype=float) + data["stack"].map(offsets).to_numpy(dtype=float)
    if jitter:
        x = x + np.random.default_rng(_SEED).uniform(-jitter, jitter, len(x))
    return data.assign(x=x)


def _median_and_iqr(ax: Axes, summary: pd.DataFrame, palette: dict, half: float) -> None:
    """Each group's median (a dark-edged bar ``2 * half`` wide) and interquartile range (a vertical bar), from
    :func:`summarize`'s columns."""
    colours = [palette[s] for s in summary["stack"]]
    ax.vlines(summary["x"], summary["q25"], summary["q75"], colors=colours, lw=3.2, alpha=0.45, zorder=4)
    ax.hlines(summary["median"], summary["x"] - half, summary["x"] + half, colors="0.1", lw=3.4, zorder=5)
    ax.hlines(summary["median"], summary["x"] - half, summary["x"] + half, colors=colours, lw=2.0, zorder=5)


def _category_axis(ax: Axes, labels: Sequence[str]) -> None:
    """x = categories 0..n-1 labelled ``labels``, a faint line between neighbours."""
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_xlim(-0.6, len(labels) - 0.4)
    for i in range(1, len(labels)):
        ax.axvline(i - 0.5, color="0.9", lw=0.8, zorder=0)


def _layer_axis(ax: Axes, rows: pd.DataFrame, *, labels: bool = True) -> None:
    """x = the layers' positions 0..n-1 (``rows`` from :func:`layer_rows`, in that order): a small tick per
    layer, block names under the centre of each run of a block, a dashed line where the resolution changes and
    the resolution of each level written inside the top of the panel."""
    x = np.arange(len(rows), dtype=float)
    ax.set_xlim(-0.7, len(rows) - 0.3)
    ax.xaxis.set_minor_locator(FixedLocator(x))
    ax.tick_params(axis="x", which="minor", length=2.5, color="0.5")
    blocks = _runs(list(rows["block"]))
    ax.xaxis.set_major_locator(FixedLocator([(a + b - 1) / 2 for a, b in blocks]))
    ax.xaxis.remove_overlapping_locs = False
    ax.tick_params(axis="x", which="major", length=0)
    if labels:
        names = [str(rows["block"].iloc[a]) for a, _ in blocks]
        fits = ax.figure.get_figwidth() * ax.get_position().width * 72 / (0.6 * 7.5)  # characters across the axes
        rotate = sum(len(n) + 3 for n in names) > fits
        ax.set_xticklabels(names, fontsize=7.5, rotation=90 if rotate else 0)
    else:
        ax.set_xticklabels([])
    for i, (a, b) in enumerate(blocks):
        if i % 2:
            ax.axvspan(a - 0.5, b - 0.5, color="0.96", zorder=0, lw=0)
    levels = _runs(list(rows["depth"]))
    for a, _ in levels[1:]:
        ax.axvline(a - 0.5, color="0.55", lw=0.8, ls=(0, (4, 3)), zorder=1)
    top = ax.secondary_xaxis("top")
    top.set_xticks([(a + b - 1) / 2 for a, b in levels])
    top.set_xticklabels(["no spatial dims" if pd.isna(d) else ("full" if int(d) == 0 else f"1/{2 ** int(d)}")
                         for d in (rows["depth"].iloc[a] for a, _ in levels)], fontsize=7, color="0.4")
    top.tick_params(axis="x", length=0, pad=1)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.fill(part, width) if part else "" for part in text.split("\n"))


def _chars(fig: Figure, size: float) -> int:
    """About how many characters of ``size`` points fit across the figure."""
    return int(fig.get_figwidth() * 72 / (0.6 * size)) - 4


def _title(fig: Figure, title: str, subtitle: str) -> None:
    """The figure's title (bold) and under it a subtitle saying what is compared with what, in a strip that the
    figure grows by and the layout leaves free."""
    text = _wrap(subtitle, _chars(fig, 10))
    strip = 0.5 + 0.19 * (text.count("\n") + 1)  # inches
    height = fig.get_figheight() + strip
    fig.set_figheight(height)
    fig.get_layout_engine().set(rect=(0, 0, 1, 1 - strip / height))
    fig.text(0.5, 1 - 0.1 / height, title, ha="center", va="top", fontsize=13, fontweight="bold")
    fig.text(0.5, 1 - 0.45 / height, text, ha="center", va="top", fontsize=10, color="0.15")


def _stack_handles(stacks: Sequence[str], palette: dict, markers: Optional[dict] = None) -> list:
    markers = markers or {}
    return [Line2D([], [], color=palette[s], marker=markers.get(s, "o"), ls="", markersize=6) for s in stacks]


def _legend(fig: Figure, stacks: Sequence[str], palette: dict, caption: str = "", *, summary: bool = True,
            markers: Optional[dict] = None, lines: bool = False) -> None:
    """The stacks named in words (and the summary marks), under the panels, with ``caption`` (how to read the
    figure) over them."""
    handles = _stack_handles(stacks, palette, markers)
    if lines:
        for h in handles:
            h.set_linestyle("-")
    labels = [STACK_LABELS.get(s, s) for s in stacks]
    if summary:
        handles += [Line2D([], [], color="0.2", lw=2.6), Patch(color="0.6", alpha=0.5)]
        labels += ["median over the dots", "middle half of the dots (25th-75th percentile)"]
    long = sum(len(lb) + 6 for lb in labels) > _chars(fig, 9)
    fig.legend(handles, labels, loc="outside lower center", ncols=2 if long else len(labels),
               frameon=False, fontsize=9, title=_wrap(caption, _chars(fig, 9)) if caption else None,
               title_fontsize=9, alignment="left")


# ------------------------------------------------------------------------------------------------ saving
def save_figure(fig: Figure, path, *, dpi: int = 120, cap: int = PNG_CAP, min_dpi: int = 60) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically: written to a temporary file beside it, lowered in resolution
    while over ``cap`` bytes (down to ``min_dpi``), then renamed into place; nothing is left behind on error."""
    from .files import atomic_write

    return atomic_write(path, lambda tmp: save_png(fig, tmp, dpi=dpi, cap=cap, min_dpi=min_dpi))


def save_png(fig: Figure, path, *, dpi: int = 120, cap: int = PNG_CAP, min_dpi: int = 60) -> None:
    """Save ``fig`` as PNG at ``dpi``; while the file is over ``cap`` bytes, save it again at a lower resolution
    until it fits or ``min_dpi`` is reached (not atomic: :func:`save_figure` is)."""
    path = Path(path)
    fig.savefig(path, dpi=dpi, format="png")
    while path.stat().st_size > cap and dpi > min_dpi:
        dpi = max(min_dpi, int(dpi * 0.85))
        fig.savefig(path, dpi=dpi, format="png")


def _finish(fig: Figure, path, dpi: int) -> Figure:
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig


# ------------------------------------------------------------------------------------------------ axes level
def _prepare(data: pd.DataFrame, y: str, stacks: Optional[Sequence[str]], palette: Optional[dict]):
    """``(rows of the stacks with a finite y, stacks, palette, how many rows had none)``."""
    stacks = _stacks_in(data, stacks) if len(data) else list(stacks or [])
    palette = palette or _palette(stacks)
    if not len(data):
        return data, stacks, palette, 0
    data, n_bad = _finite(data[data["stack"].isin(stacks)], y)
    return data, stacks, palette, n_bad


def _stat_axis(ax: Axes, drawn, values: pd.Series, y: str, scale: str, n_bad: int) -> None:
    """The y scale of a channel statistic (symlog over ``drawn`` for scale statistics or ``scale="symlog"``,
    else linear with a line at 0 for signed values) and the notes: how many channels are exactly 0, how many
    values were not finite."""
    if scale == "symlog" or (scale == "auto" and y in _SCALE_STATS):
        _symlog(ax, drawn)
        if (values == 0).any():
            _note(ax, f"{int((values == 0).sum())} channel(s) exactly 0 (drawn at 0)", loc="upper right", size=7)
    elif (values < 0).any():
        ax.axhline(0, color="0.6", lw=0.8, zorder=1)
    if n_bad:
        _note(ax, f"{n_bad} value(s) not finite, left out", loc="upper left", size=7)


def channel_stat_points(data: pd.DataFrame, *, ax: Axes, y: str = "var", x: str = "depth",
                        order: Optional[Sequence] = None, stacks: Optional[Sequence[str]] = None,
                        palette: Optional[dict] = None, scale: str = "auto") -> Axes:
    """One dot per row of ``data`` (one channel of one layer, one stack) at its ``x`` category, the stacks side
    by side; per stack and category the median over the channels and their interquartile range (pandas).
    ``scale``: ``"symlog"`` (:func:`symlog_threshold`; exact zeros at 0), ``"linear"``, or ``"auto"``: symlog for
    variance and std. Rows whose ``y`` is NaN are left out and counted on the panel."""
    import seaborn as sns

    data, stacks, palette, n_bad = _prepare(data, y, stacks, palette)
    if data.empty:
        return _no_data(ax, f"no finite {_STAT_WORDS.get(y, y)}")
    order = list(order) if order is not None else sorted(pd.unique(data[x]))
    positions = {v: i for i, v in enumerate(order)}
    data = data[data[x].isin(order)]
    width = 0.8
    dots = _with_x(data, positions, x, stacks, jitter=0.3 * width / len(stacks), width=width)
    sns.scatterplot(data=dots, x="x", y=y, hue="stack", hue_order=stacks, palette=palette, s=6, alpha=0.45,
                    linewidth=0, legend=False, ax=ax, zorder=3)
    summary = _with_x(summarize(data, y, ["stack", x]), positions, x, stacks, width=width)
    _median_and_iqr(ax, summary, palette, half=0.4 * width / len(stacks))
    _stat_axis(ax, data[y], data[y], y, scale, n_bad)
    _category_axis(ax, [str(v) for v in order])
    ax.set_xlabel(x)
    ax.set_ylabel(_STAT_WORDS.get(y, y))
    ax.grid(axis="y", color="0.92", lw=0.6)
    return ax


def channel_stat_lines(data: pd.DataFrame, *, ax: Axes, y: str = "var", stacks: Optional[Sequence[str]] = None,
                       palette: Optional[dict] = None, scale: str = "auto", labels: bool = True) -> Axes:
    """For data with ``layer, order, depth, block``: x = the layers in execution order (:func:`layer_rows`),
    per stack a line through the median over the layer's channels and a band over their interquartile range
    (pandas; seaborn draws the lines, the stacks side by side). ``scale`` as in :func:`channel_stat_points`;
    ``labels``: block names under the axis."""
    import seaborn as sns

    data, stacks, palette, n_bad = _prepare(data, y, stacks, palette)
    if data.empty:
        return _no_data(ax, f"no finite {_STAT_WORDS.get(y, y)}")
    rows = layer_rows(data)
    positions = {layer: i for i, layer in enumerate(rows["layer"])}
    summary = _with_x(summarize(data, y, ["stack", "layer"]), positions, "layer", stacks, width=0.5)
    summary = summary.sort_values(["stack", "x"])
    for s in stacks:
        part = summary[summary["stack"] == s]
        ax.fill_between(part["x"], part["q25"], part["q75"], color=palette[s], alpha=0.2, lw=0, zorder=2)
    sns.lineplot(data=summary, x="x", y="median", hue="stack", hue_order=stacks, palette=palette,
                 estimator=None, sort=False, marker="o", markersize=3.5, markeredgewidth=0, lw=1.3, legend=False,
                 ax=ax, zorder=3)
    _stat_axis(ax, pd.concat([summary["q25"], summary["q75"], summary["median"]]), data[y], y, scale, n_bad)
    _layer_axis(ax, rows, labels=labels)
    ax.set_xlabel("")
    ax.set_ylabel(_STAT_WORDS.get(y, y))
    ax.grid(axis="y", color="0.92", lw=0.6)
    return ax


def relative_error_points(data: pd.DataFrame, *, ax: Axes, layers: Optional[Sequence[str]] = None,
                          stacks: Optional[Sequence[str]] = None, palette: Optional[dict] = None,
                          tick_labels: Optional[Sequence[str]] = None, linthresh: Optional[float] = None,
                          ylim: Optional[tuple] = None) -> Axes:
    """``data``: rows of one reference (``stack, layer, image, rel_error``). x = ``layers`` in that order (default:
    :func:`layer_rows`), the stacks side by side; one dot per image, the median over the images and their
    interquartile range (pandas). y on symlog (an exact 0, bit-identical, at 0); the shaded strip up to
    :data:`ROUNDING` is float32 rounding. ``tick_labels``: the x labels (default: block names, see
    :func:`channel_stat_lines`). ``linthresh``, ``ylim``: share one scale between panels (default: from
    the data)."""
    import seaborn as sns

    data, stacks, palette, n_bad = _prepare(data, "rel_error", stacks, palette)
    if data.empty:
        return _no_data(ax, "no relative difference to show")
    rows = layer_rows(data)
    if layers is not None:
        rows = rows.set_index("layer").loc[[lay for lay in layers if lay in set(rows["layer"])]].reset_index()
    data = data[data["layer"].isin(rows["layer"])]
    positions = {layer: i for i, layer in enumerate(rows["layer"])}
    width = 0.8
    dots = _with_x(data, positions, "layer", stacks, jitter=0.25 * width / len(stacks), width=width)
    sns.scatterplot(data=dots, x="x", y="rel_error", hue="stack", hue_order=stacks, palette=palette, s=14,
                    alpha=0.6, linewidth=0, legend=False, ax=ax, zorder=3)
    summary = _with_x(summarize(data, "rel_error", ["stack", "layer"]), positions, "layer", stacks, width=width)
    _median_and_iqr(ax, summary, palette, half=0.4 * width / len(stacks))
    _symlog(ax, data["rel_error"] if ylim is None else list(ylim), linthresh=linthresh, headroom=1000.0)
    ax.axhspan(0, ROUNDING, color="#d9eed9", alpha=0.7, zorder=0.5, lw=0)
    ax.text(0.005, 0, " 0: bit-identical", transform=ax.get_yaxis_transform(), fontsize=7, color="0.3",
            va="bottom", ha="left")
    ax.text(0.005, ROUNDING, f" up to {ROUNDING:.0e}: float32 rounding", fontsize=7, color="#2e6b2e", va="top",
            ha="left", transform=ax.get_yaxis_transform())
    if n_bad:
        _note(ax, f"{n_bad} value(s) not finite, left out", loc="lower right", size=7)
    if tick_labels is not None:
        _category_axis(ax, tick_labels)
    else:
        _layer_axis(ax, rows)
    ax.set_xlabel("")
    ax.set_ylabel("relative difference ‖batch − reference‖ / ‖reference‖")
    ax.grid(axis="y", color="0.92", lw=0.6)
    return ax


def variance_change_points(data: pd.DataFrame, *, ax: Axes, stacks: Optional[Sequence[str]] = None,
                           palette: Optional[dict] = None, markers: Optional[dict] = None, bins: int = 5,
                           ylim: Optional[tuple] = None) -> Axes:
    """``data``: rows of one layer (``stack, image, pad_fraction, rel_var``). x = the padded share of the
    image's batch canvas (percent), y = the change of the image's activation variance in the batch from the
    same image alone, ``100 * (rel_var - 1)`` percent, on symlog (0: unchanged). One marker per image; per stack
    a line through the medians of those of ``bins`` equal-width bins of padding share that hold at least
    ``_MIN_BIN`` images (pandas). ``ylim``: share one
    range between panels (then the scale's threshold comes from it)."""
    import seaborn as sns

    stacks = _stacks_in(data, stacks) if len(data) else list(stacks or [])
    palette = palette or _palette(stacks)
    markers = markers or dict(zip(stacks, "osD^vP*X" * 2))
    data = data[data["stack"].isin(stacks)] if len(data) else data
    if len(data):
        data = data.assign(change=100.0 * (data["rel_var"].to_numpy(dtype=float) - 1.0),
                           padding=100.0 * data["pad_fraction"].to_numpy(dtype=float))
        data, n_bad = _finite(data, "change")
    else:
        n_bad = 0
    if data.empty:
        return _no_data(ax, "no variance ratio to show" + (f" ({n_bad} not finite)" if n_bad else ""))
    x_max = max(5.0, float(data["padding"].max()))
    jitter = pd.Series(np.random.default_rng(_SEED).uniform(-0.006, 0.006, len(data)) * x_max, index=data.index)
    for i, s in enumerate(stacks):  # the stacks often coincide (all at 0): larger markers underneath
        part = data[data["stack"] == s]
        sns.scatterplot(x=part["padding"] + jitter[part.index], y=part["change"], color=palette[s],
                        marker=markers[s], s=max(12.0, 60.0 - 18.0 * i), alpha=0.8, linewidth=0.4, edgecolor="white",
                        legend=False, ax=ax, zorder=3 + i)
    edges = np.linspace(0.0, x_max, bins + 1)
    binned = data.assign(bin=pd.cut(data["padding"], edges, include_lowest=True))
    med = binned.groupby(["stack", "bin"], observed=True).agg(padding=("padding", "median"),
                                                              change=("change", "median"),
                                                              n=("change", "size")).reset_index()
    med = med[med["n"] >= _MIN_BIN]
    if not med.empty:
        sns.lineplot(data=med, x="padding", y="change", hue="stack", hue_order=stacks, palette=palette,
                     estimator=None, sort=True, lw=1.4, legend=False, ax=ax, zorder=2)
    ax.axhline(0, color="0.35", lw=0.9, zorder=2)
    _symlog(ax, list(ylim) if ylim is not None else data["change"], percent=True)
    if n_bad:
        _note(ax, f"{n_bad} image(s) without variance alone, left out", loc="upper right", size=7)
    ax.set_xlim(-0.03 * x_max, x_max * 1.04)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}%"))
    ax.set_xlabel("padded share of the image's batch canvas")
    ax.set_ylabel("variance change, batch vs alone")
    ax.grid(axis="y", color="0.92", lw=0.6)
    return ax


def activation_map(data, *, ax: Axes, value: str = "map", norm: Optional[Normalize] = None,
                   cmap: str = "viridis") -> Axes:
    """One 2-d array (``data[value]``; ``data`` a row of the maps frame: ``h, w, canvas_h, canvas_w`` and the
    array) drawn over the batch canvas at its layer's resolution, the image's border dashed red (exact, also
    where it cuts a downsampled pixel). The axes' image is ``ax.images[0]`` (for a colour bar)."""
    row = data.iloc[0] if isinstance(data, pd.DataFrame) else data
    m = np.asarray(row[value], dtype=float)
    ax.imshow(m, cmap=cmap, norm=norm, interpolation="nearest")
    if m.ndim >= 2 and m.shape[0]:
        f_h, f_w = row["canvas_h"] / m.shape[0], row["canvas_w"] / m.shape[1]
        ax.add_patch(Rectangle((-0.5, -0.5), row["w"] / f_w, row["h"] / f_h, edgecolor="#ff2a2a", facecolor="none",
                               lw=1.1, ls="--"))
    ax.set_xticks([])
    ax.set_yticks([])
    return ax


def _image_values(row) -> np.ndarray:
    """The map's values inside the image's region and, where the mask says so, its valid positions: what the
    colour scale is computed over (never the padding)."""
    m = np.asarray(row["map"], dtype=float)
    if m.ndim != 2 or not m.size:
        return np.empty(0)
    rh, rw = (math.ceil(row["h"] * m.shape[0] / row["canvas_h"]), math.ceil(row["w"] * m.shape[1] / row["canvas_w"]))
    inside = m[:rh, :rw]
    mask = np.asarray(row["mask"], dtype=float)
    if mask.shape == m.shape and (mask[:rh, :rw] > 0).any():
        inside = inside[mask[:rh, :rw] > 0]
    inside = np.ravel(inside)
    return inside[np.isfinite(inside)]


# ------------------------------------------------------------------------------------------------ figure 1
def plot_activation_maps(maps: pd.DataFrame, rgb: Optional[np.ndarray] = None, *,
                         stacks: Optional[Sequence[str]] = None, mask_stack: str = "mconv", max_columns: int = 8,
                         update_mask: bool = False, path=None, dpi: int = 120) -> Figure:
    """Channel-mean activation maps for one image in its padded batch: one row per stack, one column per
    resolution level's output (a chain: each level's activation; any other network: :func:`level_outputs`, at
    most ``max_columns``); the top row the input (``rgb``, ``(H, W, 3)``) and the output mask of ``mask_stack``.
    ``maps``: ``image, stack, layer, depth, kind, map, mask, h, w, canvas_h, canvas_w``. One colour scale per
    column, shared by the stacks and taken over the image's valid positions only. ``update_mask``: which mask rule
    pconv ran with, for its row's note."""
    _require(maps, ["image", "stack", "layer", "depth", "map", "mask", "h", "w", "canvas_h", "canvas_w"],
             "plot_activation_maps")
    images = pd.unique(maps["image"])
    if len(images) != 1:
        raise ValueError(f"plot_activation_maps: expected the maps of one image, got {list(images)}")
    stacks = _stacks_in(maps, stacks)
    maps = maps[maps["stack"].isin(stacks)]
    if is_chain(maps):
        maps = level_layers(maps)
        columns = [maps.loc[maps["depth"] == d, "layer"].iloc[0] for d in sorted(maps["depth"].unique())]
    else:
        maps = maps[maps["depth"].notna()]
        columns = level_outputs(maps, max_columns)
    if not columns:
        raise ValueError("plot_activation_maps: no layer with spatial dimensions in the frame")
    info = layer_rows(maps).set_index("layer")
    first = maps.iloc[0]
    h, w, ch, cw = (int(first[k]) for k in ("h", "w", "canvas_h", "canvas_w"))
    mstack = mask_stack if mask_stack in stacks else stacks[0]
    ncols, nrows = len(columns) + 1, len(stacks) + 1
    panel = 2.2 * min(1.6, max(0.6, cw / ch)) ** 0.5
    fig = plt.figure(figsize=(max(9.0, 1.0 + panel * ncols), 2.4 + 0.92 * panel * ch / cw * nrows),
                     layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    canvas = dict(h=h, w=w, canvas_h=ch, canvas_w=cw)
    activation_map(pd.Series({**canvas, "map": rgb if rgb is not None else np.zeros((ch, cw))}), ax=axes[0, 0],
                   cmap="gray", norm=None if rgb is not None else Normalize(0, 1))
    axes[0, 0].set_title(f"input: {h}x{w} image\nin a {ch}x{cw} batch canvas", fontsize=9)
    for j, layer in enumerate(columns, start=1):
        row = maps[(maps["stack"] == mstack) & (maps["layer"] == layer)]
        if row.empty:
            _no_data(axes[0, j], f"no {mstack} map")
            continue
        activation_map(row, ax=axes[0, j], value="mask", norm=Normalize(0, 1), cmap="gray")
        r = info.loc[layer]
        hh, ww = np.shape(row["map"].iloc[0])
        where = f"level {int(r['depth'])}" if "order" not in maps or is_chain(maps) else str(r["block"])
        axes[0, j].set_title(f"{where} output ({layer})\n{hh}x{ww}, {_resolution(r['depth'])}", fontsize=8.5)
    axes[0, 1].set_ylabel(f"{mstack} mask\n(white: image)", fontsize=8.5)
    for j, layer in enumerate(columns, start=1):
        col = maps[maps["layer"] == layer]
        values = np.concatenate([_image_values(r) for _, r in col.iterrows()] or [np.empty(0)])
        lo, hi = np.percentile(values, [0.5, 99.5]) if values.size else (0.0, 1.0)
        if lo >= 0:  # non-negative (after a ReLU): a sequential scale from 0
            norm, cmap = Normalize(0.0, max(hi, 1e-12)), "viridis"
        else:
            v = max(abs(lo), abs(hi), 1e-12)
            norm, cmap = Normalize(-v, v), "RdBu_r"
        for i, s in enumerate(stacks, start=1):
            part = col[col["stack"] == s]
            if part.empty:
                _no_data(axes[i, j], "not recorded")
                continue
            activation_map(part, ax=axes[i, j], norm=norm, cmap=cmap)
        mappable = next((ax.images[0] for ax in axes[1:, j] if ax.images), None)
        if mappable is not None:
            bar = fig.colorbar(mappable, ax=list(axes[1:, j]), location="bottom", shrink=0.9, aspect=18, pad=0.01,
                               extend="both")
            bar.set_label("mean over channels", fontsize=8)
            bar.ax.xaxis.set_major_locator(MaxNLocator(3))
            bar.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    for i, s in enumerate(stacks, start=1):
        ax = axes[i, 0]
        ax.axis("off")
        ax.text(0.5, 0.62, s, ha="center", va="center", fontsize=15, weight="bold",
                color=_palette(stacks)[s], transform=ax.transAxes)
        note = _STACK_SHORT.get(s, "")
        if s == "pconv":
            note += "\nmask grows at each layer\n(update_mask=True)" if update_mask else \
                "\nmask kept at each layer\n(update_mask=False)"
        ax.text(0.5, 0.3, note, ha="center", va="center", fontsize=8.5, transform=ax.transAxes)
    padded = (h, w) != (ch, cw)
    where = "the padded batch" if padded else "the same masked input"
    _title(fig, f"What each network computes for image '{images[0]}'" + (" in a padded batch" if padded else ""),
           f"Rows: the same network as plain, partial and masked convolutions, all on {where}; columns: "
           "the output of each resolution level, averaged over its channels.")
    border = ("Red dashes: the image's border; beyond it lies the batch padding. A value beyond the border is what "
              "the layer writes into the padding; plain convolutions read it back into the image at the next layer, "
              "masked ones do not." if padded else
              f"The image fills its canvas: there is no padding here; the mask's holes lie inside the image (top "
              f"row: {mstack}'s output mask averaged over its channels, white = valid). Plain convolutions read the "
              "zeros in the holes as values; masked ones do not.")
    fig.legend([], [], loc="outside lower center", frameon=False, alignment="left", title_fontsize=9, title=_wrap(
        border + " One colour scale per column (its range taken over the image's valid pixels only), shared by the "
        "rows.", _chars(fig, 9)))
    return _finish(fig, path, dpi)


# ------------------------------------------------------------------------------------------------ figure 2
def _kind_groups(present: Sequence[str], kinds: Optional[Sequence[str]]) -> list[tuple[str, list[str]]]:
    if kinds is not None:
        missing = [k for k in kinds if k not in present]
        if missing:
            raise ValueError(f"kinds {missing} are not in the frame (it has {list(present)})")
        return [(k, [k]) for k in kinds]
    order = (("conv", ("conv", "upconv")), ("norm", ("norm",)), ("act", ("act",)))
    groups = [(name, [k for k in members if k in present]) for name, members in order]
    groups = [(name, members) for name, members in groups if members]
    grouped = {k for _, members in groups for k in members}
    return groups + [(k, [k]) for k in present if k not in grouped]


def _stats_caption(stacks: Sequence[str]) -> str:
    imgs = " of all images"
    ref = (" conv, pconv and mconv run the images in padded batches; conv_alone runs the plain network on each "
           "image alone (the reference)." if "conv_alone" in stacks else "")
    return (f"A channel's statistic is taken over the valid (in-image) pixels{imgs}, never over padding.{ref} "
            "Variance on a symmetric-log axis: logarithmic above the smallest non-zero value, linear below it, so "
            "an exactly-zero channel is drawn at 0.")


def plot_channel_stats(stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                       statistics: Sequence[str] = ("mean", "var"), kinds: Optional[Sequence[str]] = None,
                       layout: str = "auto", path=None, dpi: int = 120) -> Figure:
    """Per-channel statistics of each layer, the stacks side by side. ``layout="auto"``: ``"depth"`` for a chain
    (:func:`is_chain`), ``"layer"`` otherwise (:func:`plot_channel_stats_by_layer`). ``"depth"``: one row of
    panels per layer kind (convolution outputs, activation outputs), one column per statistic, x = the level;
    :func:`channel_stat_points` in each."""
    if layout not in ("auto", "depth", "layer"):
        raise ValueError(f"plot_channel_stats: layout must be 'auto', 'depth' or 'layer', got {layout!r}")
    _require(stats, ["stack", "layer", "depth", "kind", *statistics], "plot_channel_stats")
    if layout == "layer" or (layout == "auto" and not is_chain(stats)):
        return plot_channel_stats_by_layer(stats, stacks=stacks, statistics=statistics, kinds=kinds, path=path,
                                           dpi=dpi)
    stacks = _stacks_in(stats, stacks)
    data = stats[stats["stack"].isin(stacks) & (stats["depth"].fillna(0) > 0)]
    if data.empty:
        raise ValueError("plot_channel_stats: no layer below the input resolution (depth > 0) in the frame")
    if kinds is None:
        kinds = [k for k in ("conv", "act") if (data["kind"] == k).any()] or list(pd.unique(data["kind"]))
    depths = sorted(int(d) for d in pd.unique(data["depth"]))
    palette = _palette(stacks)
    nrows, ncols = len(kinds), len(statistics)
    fig = plt.figure(figsize=(min(14.0, max(6.5, 1.2 * len(depths) * len(stacks) ** 0.5 + 1.8) * ncols),
                     2.6 + 3.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, kind in enumerate(kinds):
        for j, stat in enumerate(statistics):
            ax = axes[i, j]
            channel_stat_points(data[data["kind"] == kind].assign(depth=lambda f: f["depth"].astype(int)), ax=ax,
                                y=stat, x="depth", order=depths, stacks=stacks, palette=palette)
            ax.set_title(f"{_KIND_WORDS.get(kind, kind).capitalize()}s: {_STAT_WORDS.get(stat, stat)}", fontsize=10)
            if ax.get_xticks().size:
                ax.set_xticklabels([f"level {d}\n1/{2 ** d}" for d in depths], fontsize=8)
            ax.set_xlabel("network level and its resolution (each level halves it)", fontsize=8.5)
    _title(fig, "Per-channel activation statistics, level by level",
           "How the mean and the variance of each channel change with depth, for each way of running the network.")
    _legend(fig, stacks, palette, "Each dot is one channel. " + _stats_caption(stacks))
    return _finish(fig, path, dpi)


def plot_channel_stats_by_layer(stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                                statistics: Sequence[str] = ("mean", "var"),
                                kinds: Optional[Sequence[str]] = None, path=None, dpi: int = 120) -> Figure:
    """Per-channel statistics layer by layer for a network that is not a chain (a ResNet, a U-Net): one row of
    panels per layer kind (convolution and transposed-convolution outputs; normalisation outputs; activation
    outputs; any other kind), one column per statistic, x = the layers in execution order;
    :func:`channel_stat_lines` in each. ``stats`` needs ``stack, layer, order, depth, kind`` (``block``
    optional: from :func:`masked_torch.analysis.models.layer_table`)."""
    _require(stats, ["stack", "layer", "order", "depth", "kind", *statistics], "plot_channel_stats_by_layer")
    stacks = _stacks_in(stats, stacks)
    data = stats[stats["stack"].isin(stacks)]
    groups = _kind_groups(list(pd.unique(data["kind"])), kinds)
    data = data[data["kind"].isin([k for _, members in groups for k in members])]
    palette = _palette(stacks)
    nrows, ncols = len(groups), len(statistics)
    n_layers = data["layer"].nunique()
    fig = plt.figure(figsize=(float(np.clip(0.1 * n_layers * ncols + 3.0 * ncols, 9.0, 17.0)), 2.6 + 2.6 * nrows),
                     layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for i, (_, members) in enumerate(groups):
        for j, stat in enumerate(statistics):
            ax = axes[i, j]
            channel_stat_lines(data[data["kind"].isin(members)], ax=ax, y=stat, stacks=stacks, palette=palette,
                               labels=True)
            words = " and ".join(_KIND_WORDS.get(k, k) + "s" for k in members)
            ax.set_title(f"{words[0].upper() + words[1:]}: {_STAT_WORDS.get(stat, stat)}", fontsize=10)
    _title(fig, f"Per-channel activation statistics of {n_layers} layers, in the order the network runs them",
           "How the mean and the variance of each channel change through the network, for each way of running it.")
    _legend(fig, stacks, palette,
            "Line: the median over a layer's channels; band: the middle half of its channels (25th-75th "
            "percentile). Tick labels: the network's blocks; dashed lines: the resolution changes (written at the "
            "top of each panel as a fraction of the input size). " + _stats_caption(stacks), summary=False,
            lines=True)
    return _finish(fig, path, dpi)


# ------------------------------------------------------------------------------------------------ figure 3
def _relative(v: float) -> str:
    """A relative difference in words: percent below 1, else a multiple of the reference's size."""
    return f"{100 * v:.2g}%" if v < 1 else f"{v:.2g} times the reference"


def _verdict(errors: pd.Series) -> str:
    """A stack's relative differences in words: bit-identical, rounding, or how large (percent)."""
    e = errors[np.isfinite(errors.to_numpy(dtype=float))]
    if e.empty:
        return "no data"
    top = float(e.max())
    if top == 0:
        return "bit-identical for every image and layer"
    if top <= ROUNDING:
        return f"equal up to float32 rounding (at most {top:.0e})"
    return f"differs by {_relative(float(e.median()))} (median), up to {_relative(top)}"


def _reference_padding(part: pd.DataFrame) -> int:
    """How many pixels the reference run added to an image's own size (0: it ran each image at its own size);
    needs ``h, w, alone_h, alone_w``."""
    if not {"h", "w", "alone_h", "alone_w"} <= set(part.columns) or part.empty:
        return 0
    return int(max((part["alone_h"] - part["h"]).max(), (part["alone_w"] - part["w"]).max(), 0))


def plot_padding_sensitivity(padding: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                             only_padded: bool = True, layout: str = "auto", path=None, dpi: int = 120) -> Figure:
    """Does an image's result depend on the batch it is in? Per reference one panel of
    :func:`relative_error_points`: each image's output in its padded batch against a run of the image alone,
    ``||batch - reference|| / ||reference||`` over the image's region, per level output (a chain: each level's
    activation; any other network: every activation output in execution order, ``layout`` forces one).
    References: ``alone`` (the same network on the image alone: 0 means padding changed nothing) and
    ``conv_alone`` (the plain network on the image alone: how far the masked networks are from the unmasked
    one). With ``only_padded``, the images that the batch pads beyond their own canvas (``padded``) where
    there are any."""
    _require(padding, ["stack", "reference", "layer", "image", "rel_error"], "plot_padding_sensitivity")
    if layout not in ("auto", "depth", "layer"):
        raise ValueError(f"plot_padding_sensitivity: layout must be 'auto', 'depth' or 'layer', got {layout!r}")
    stacks = _stacks_in(padding, stacks)
    data = padding[padding["stack"].isin(stacks)]
    chain = layout == "depth" or (layout == "auto" and is_chain(data))
    if "depth" in data and "kind" in data:
        if chain:
            data = level_layers(data)
        else:
            kind = "act" if (data["kind"] == "act").any() else "conv"
            data = data[data["kind"] == kind]
    some_padded = bool(only_padded and "padded" in data and data["padded"].any())
    if some_padded:
        data = data[data["padded"]]
    refs = [r for r in ("alone", "conv_alone") if r in set(data["reference"])] or list(pd.unique(data["reference"]))
    palette = _palette(stacks)
    rows = layer_rows(data)
    n_layers = len(rows)
    fig = plt.figure(figsize=(float(np.clip(0.55 * n_layers * len(stacks) ** 0.5 + 3.5, 9.0, 16.0)),
                              2.3 + 3.4 * len(refs)), layout="constrained")
    axes = fig.subplots(len(refs), 1, squeeze=False, sharex=True, sharey=True)[:, 0]
    labels = ([f"level {int(d)} output\n({_resolution(d)})" for d in rows["depth"]]
              if chain and "depth" in rows else None)
    titles = {"alone": "Against the same network on the image alone: does the padding change the result?",
              "conv_alone": "Against the plain network (conv) on the image alone: does the network compute the "
                            "same as without masking?"}
    # one scale for both panels, below float32 rounding so that the rounding strip shows
    linthresh = min(symlog_threshold(data["rel_error"]), ROUNDING / 100)
    for ax, ref in zip(axes, refs):
        part = data[data["reference"] == ref]
        relative_error_points(part, ax=ax, layers=list(rows["layer"]), stacks=stacks, palette=palette,
                              tick_labels=labels, linthresh=linthresh, ylim=(data["rel_error"].min(),
                                                                             data["rel_error"].max()))
        title = titles.get(ref, f"Against reference {ref!r}")
        extra = _reference_padding(part) if ref == "conv_alone" else 0
        if extra:  # the reference is not the image at its own size: say so where the panel is read
            title += "\n" + _wrap(
                f"Read with care: this network cannot run an image at its own size (every level halves it), so this "
                f"reference pads each image by up to {extra} pixels itself, and its plain convolutions read that "
                "padding (and any holes in the mask) as zeros where the masked networks leave them out. They differ "
                "from this reference for that reason, not because of their batch (see the panel above).",
                _chars(fig, 9.5))
        ax.set_title(title, fontsize=9.5, loc="left")
        ax.set_ylabel("relative difference\nfrom the reference", fontsize=9)
        verdicts = "\n".join(f"{s}: {_verdict(part.loc[part['stack'] == s, 'rel_error'])}" for s in stacks
                             if (part["stack"] == s).any())
        _note(ax, verdicts, loc="upper left", size=7.5)
    if labels is None:
        axes[-1].set_xlabel("layers in the order the network runs them, named by block (dashed: the resolution "
                            "changes; top: resolution as a fraction of the input)", fontsize=8.5)
        for ax in axes[:-1]:
            ax.tick_params(axis="x", which="both", labelbottom=False)
    n_img = data["image"].nunique()
    which = (f"the {n_img} image(s) that their batch pads beyond their own size" if some_padded
             else f"{n_img} image(s)")
    _title(fig, "Is an image's result the same in a padded batch as on its own?",
           "Each image's output in its padded batch, compared with a run of the same image alone: top, the same "
           "network alone; bottom, the plain network alone." if len(refs) > 1 else
           "Each image's output in its padded batch, compared with a run of the same image alone.")
    _legend(fig, stacks, palette,
            f"Each dot: one of {which}; y: ||batch - reference|| / ||reference|| over the image's own pixels "
            f"(0.01 = 1%). 0 means bit-identical; the green strip is what float32 rounding alone gives (up to "
            f"{ROUNDING:.0e}). Symmetric-log axis: logarithmic above {linthresh:.0e}, linear below it, so exact "
            "zeros are drawn at 0.")
    return _finish(fig, path, dpi)


# ------------------------------------------------------------------------------------------------ figure 4
def _change_verdict(change: pd.Series) -> str:
    c = change[np.isfinite(change.to_numpy(dtype=float))].abs()
    if c.empty:
        return "no data"
    if float(c.max()) == 0:
        return "unchanged, exactly, for every image"
    return f"changes by up to {float(c.max()):.2g}% (median {float(c.median()):.2g}%)"


def plot_stats_vs_padding(image_stats: pd.DataFrame, *, stacks: Optional[Sequence[str]] = None,
                          layers: Optional[Sequence[str]] = None, max_facets: int = 6, bins: int = 5,
                          path=None, dpi: int = 120) -> Figure:
    """Does padding change an image's activation statistics, and does it grow with the amount of padding? One
    panel per layer (default: the first recorded layer and each resolution level's output, at most
    ``max_facets``; ``layers`` names them) of :func:`variance_change_points`: each image's activation variance
    (over its valid pixels and all channels) in its padded batch against the same image alone, in percent,
    against the padded share of its batch canvas. ``image_stats``: ``stack, layer, image, pad_fraction`` and
    ``rel_var`` or ``var, var_alone`` (optional ``order, depth, kind, block``)."""
    needed = ["stack", "layer", "image", "pad_fraction"] + ([] if "rel_var" in image_stats else ["var", "var_alone"])
    _require(image_stats, needed, "plot_stats_vs_padding")
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
        layers = level_outputs(data, max_facets) if "depth" in data else known[:max_facets]
    else:
        unknown = [lay for lay in layers if lay not in known]
        if unknown:
            raise ValueError(f"plot_stats_vs_padding: layers {unknown} are not in the frame")
    data = data.assign(change=100.0 * (data["rel_var"].to_numpy(dtype=float) - 1.0))
    palette = _palette(stacks)
    markers = dict(zip(stacks, "osD^vP*X" * 2))
    change = data.loc[data["layer"].isin(layers), "change"].to_numpy(dtype=float)
    change = change[np.isfinite(change)]
    ylim = (float(change.min()), float(change.max())) if change.size else None
    n = len(layers)
    ncols = 2 if n == 4 else min(3, n)
    nrows = math.ceil(n / ncols)
    fig = plt.figure(figsize=(max(9.0, 1.2 + 4.4 * ncols), 3.2 + 3.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=True, sharey=True)
    info = layer_rows(data).set_index("layer")
    for ax, layer in zip(axes.ravel(), layers):
        variance_change_points(data[data["layer"] == layer], ax=ax, stacks=stacks, palette=palette, markers=markers,
                               bins=bins, ylim=ylim)
        row = {"layer": layer, **(info.loc[layer].to_dict() if layer in info.index else {})}
        ax.set_title(_wrap(layer_title(row), 52), fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    for k, ax in enumerate(axes.ravel()[:n]):
        if k % ncols:
            ax.set_ylabel("")
        if k < n - ncols:
            ax.set_xlabel("")
            ax.xaxis.set_tick_params(labelbottom=False)
        else:
            ax.xaxis.set_tick_params(labelbottom=True)
    shown = data[data["layer"].isin(layers)]
    verdicts = "; ".join(f"{s}: {_change_verdict(shown.loc[shown['stack'] == s, 'change'])}" for s in stacks
                         if (shown["stack"] == s).any())
    _title(fig, "Does the amount of padding change an image's activation statistics?",
           "The variance of each image's activations in its padded batch, compared with the same network on the "
           "image alone, against how much of the batch canvas is padding. Over the panels shown: " + verdicts + ".")
    _legend(fig, stacks, palette,
            f"Each marker: one image ({data['image'].nunique()} in all); y: how much the variance of its activations "
            "(all channels, its own pixels only) in the padded batch differs from the same image run alone, in "
            "percent (0: the same); x: how much of its batch canvas is padding. Line: the median per range of "
            f"padding share with at least {_MIN_BIN} images. Symmetric-log axis: logarithmic away from 0, linear "
            "near it, so an unchanged image is drawn at 0.", summary=False, markers=markers)
    return _finish(fig, path, dpi)
