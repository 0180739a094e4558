"""Figures of the training experiment (:mod:`~masked_torch.analysis.train_loop`), seaborn on its tidy frames; each
function returns the ``Figure`` and, with ``path=``, saves it as a PNG atomically (:func:`~masked_torch.analysis.plot.save_figure`,
under :data:`~masked_torch.analysis.plot.PNG_CAP` bytes):

* :func:`plot_learning_curves`  -- training loss, held-out loss and held-out accuracy per epoch, one line per kind
  (the mean over seeds) and its band (the lowest to the highest seed); the language model: both losses in bits
  per byte, with the unigram baseline, and the next-byte accuracy;
* :func:`plot_training_stats`   -- per layer and epoch, on the probe set: the median channel variance, the median
  channel mean and the share of dead channels; one column of panels per kind;
* :func:`plot_train_sensitivity` -- batch-composition sensitivity per kind: the share of held-out predictions that
  change when the image is batched instead of alone, the largest change of a logit, and the accuracy alone against
  batched at the last epoch; the language model: the same per next-byte prediction.

The colours of the kinds are the suite's (:data:`~masked_torch.analysis.plot.STACK_COLORS`).
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from .plot import ROUNDING, STACK_COLORS, STACK_LABELS, _finish, _note, _symlog, _title

__all__ = ["plot_learning_curves", "plot_training_stats", "plot_train_sensitivity", "sensitivity_summary",
           "layer_summary", "TRAIN_FIGURES"]

#: Figure files, under ``OUT/figures``.
TRAIN_FIGURES = {"curves": "train_curves.png", "stats": "train_stats.png", "sensitivity": "train_sensitivity.png"}

_KINDS = ("conv", "pconv", "mconv")
_BAND = ("pi", 100)  # seaborn errorbar: the band from the lowest to the highest seed


def _kinds(frame: pd.DataFrame) -> list[str]:
    present = set(frame["stack"])
    return [k for k in _KINDS if k in present]


def _seeds(frame: pd.DataFrame) -> str:
    seeds = sorted(frame["seed"].unique())
    return f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"


def _kind_legend(fig: Figure, kinds, caption: str) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=STACK_COLORS[k], lw=2) for k in kinds]
    fig.legend(handles, [STACK_LABELS[k] for k in kinds], loc="outside lower center", ncols=1, frameon=False,
               fontsize=9, title=caption, title_fontsize=9, alignment="left")


def _text(frame: pd.DataFrame) -> bool:
    """Frames of the language model (``--data stdlib``): its curves and sensitivity frames by their columns,
    any frame by ``frame.attrs["data"] == "stdlib"``."""
    return "heldout_bpb" in frame or "positions" in frame or frame.attrs.get("data") == "stdlib"


def _same(frame: pd.DataFrame, keys: list, columns: list) -> str:
    """A sentence naming the kinds whose ``columns`` are equal, row for row by ``keys`` (NaN equal to NaN) -- one
    line drawn over the other -- or ``""``."""
    kinds = _kinds(frame)
    parts = {k: frame[frame["stack"] == k].set_index(keys).sort_index()[columns] for k in kinds}
    pairs = [(a, b) for i, a in enumerate(kinds) for b in kinds[i + 1:]
             if parts[a].index.equals(parts[b].index) and parts[a].equals(parts[b])]
    return "".join(f" {a} and {b} give identical numbers: {a}'s line lies under {b}'s." for a, b in pairs)


def _epochs(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_learning_curves(curves: pd.DataFrame, *, path=None, dpi: int = 120) -> Figure:
    """Training loss, held-out loss and held-out accuracy against the epoch, per kind: the line is the mean over
    the seeds, the band the range from the lowest to the highest seed (epoch 0: before training). The language
    model's curves (``heldout_bpb``): the losses in bits per byte, a dotted line at ``curves.attrs["unigram_bpb"]``
    (if given), and the next-byte accuracy."""
    kinds = _kinds(curves)
    palette = {k: STACK_COLORS[k] for k in kinds}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    text = _text(curves)
    if text:
        panels = (("train_bpb", "training loss, bits per byte (mean over\nthe epoch's predicted bytes)"),
                  ("heldout_bpb", "held-out loss, bits per byte\n(padded batches)"),
                  ("heldout_acc", "held-out next-byte accuracy\n(padded batches)"))
    else:
        panels = (("train_loss", "training loss (mean cross-entropy\nover the epoch's padded batches)"),
                  ("heldout_loss", "held-out loss (cross-entropy,\npadded batches)"),
                  ("heldout_acc", "held-out accuracy (padded batches)"))
    for ax, (column, label) in zip(axes, panels):
        sns.lineplot(data=curves, x="epoch", y=column, hue="stack", hue_order=kinds, palette=palette,
                     errorbar=_BAND, marker="o", markersize=4, ax=ax, legend=False)
        ax.set_xlabel("epoch (0 = before training)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        _epochs(ax)
    classes = curves.attrs.get("classes")
    baseline = curves.attrs.get("unigram_bpb")
    if text and baseline is not None:
        for ax in axes[:2]:
            ax.axhline(baseline, color="0.5", ls=":", lw=1)
        _note(axes[1], f"dotted: unigram baseline ({baseline:.2f} bits)\nuniform guess: 8 bits", loc="upper right")
    if classes:
        axes[2].axhline(1 / len(classes), color="0.5", ls=":", lw=1)
        _note(axes[2], f"dotted: chance ({1 / len(classes):.2f})", loc="lower right")
    _title(fig, "Learning curves: the same causal byte model trained three ways on the same padded batches" if text
           else "Learning curves: the same network trained three ways on the same padded batches",
           f"Same initial weights, data order, batches, optimizer and schedule for every kind; line: mean over "
           f"{_seeds(curves)}, band: lowest to highest seed."
           + _same(curves, ["seed", "epoch"], [c for c, _ in panels]))
    _kind_legend(fig, kinds, "")
    return _finish(fig, path, dpi)


def layer_summary(stats: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, stack, epoch, layer): ``median_var`` and ``median_mean`` over the layer's channels and
    ``dead_frac``, the share of its channels that are exactly 0 at every valid position of the probe set."""
    keys = ["seed", "stack", "epoch", "order", "layer", "kind"]
    out = stats.groupby(keys, sort=True, observed=True).agg(
        median_var=("var", "median"), median_mean=("mean", "median"), dead_frac=("dead", "mean")).reset_index()
    return out


def plot_training_stats(stats: pd.DataFrame, *, path=None, dpi: int = 120) -> Figure:
    """Rows: median channel variance, median channel mean (conv and ReLU outputs) and the share of dead ReLU
    channels, against the epoch; one column per kind; one line per layer (the mean over seeds), darker = deeper."""
    kinds = _kinds(stats)
    item = "document" if _text(stats) else "image"
    summary = layer_summary(stats)
    summary = summary[summary["kind"].isin(["conv", "act"])]
    layers = list(summary.sort_values("order")["layer"].unique())
    palette = dict(zip(layers, sns.color_palette("viridis_r", len(layers))))
    fig, axes = plt.subplots(3, len(kinds), figsize=(4.3 * len(kinds), 8.5), layout="constrained", sharex=True,
                             sharey="row", squeeze=False)
    rows = (("median_var", "median channel variance\n(symmetric log scale)"),
            ("median_mean", "median channel mean"),
            ("dead_frac", "share of dead ReLU channels\n(0 at every probe position)"))
    for j, kind in enumerate(kinds):
        part = summary[summary["stack"] == kind]
        for i, (column, label) in enumerate(rows):
            ax = axes[i, j]
            data = part if column != "dead_frac" else part[part["kind"] == "act"]
            data = data.assign(output=data["kind"].map({"conv": "conv output", "act": "ReLU output"}))
            sns.lineplot(data=data, x="epoch", y=column, hue="layer", hue_order=[l for l in layers if l in
                         set(data["layer"])], palette=palette, style="output",
                         style_order=["conv output", "ReLU output"],
                         errorbar=None, marker="o", markersize=3, ax=ax, legend=(i == 0 and j == len(kinds) - 1))
            if column == "median_var":
                _symlog(ax, summary["median_var"])
            if column == "dead_frac":
                ax.set_ylim(-0.03, max(0.2, float(summary.loc[summary["kind"] == "act", "dead_frac"].max()) * 1.1))
            ax.set_ylabel(label if j == 0 else "")
            ax.set_xlabel("epoch (0 = before training)" if i == 2 else "")
            ax.grid(alpha=0.3)
            _epochs(ax)
            if i == 0:
                ax.set_title(textwrap.fill(STACK_LABELS[kind], 40), fontsize=10)
    legend = axes[0, len(kinds) - 1].get_legend()
    if legend is not None:
        sns.move_legend(axes[0, len(kinds) - 1], "upper left", bbox_to_anchor=(1.02, 1), fontsize=8,
                        title="layer (solid: conv output,\ndashed: ReLU output)", title_fontsize=8)
    _title(fig, "Activation statistics through training, layer by layer",
           f"On a fixed probe set of held-out {item}s in padded batches (statistics over each {item}'s own "
           f"positions only); per layer, the median over its channels; line: mean over {_seeds(stats)}. A kind whose "
           f"variance runs away or collapses, or whose channels die, shows it here."
           + _same(summary, ["seed", "epoch", "layer"], ["median_var", "median_mean", "dead_frac"]))
    return _finish(fig, path, dpi)


def sensitivity_summary(sensitivity: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, stack, epoch): ``changed`` (share of predictions -- of (image, batching) pairs, or of the
    language model's next-byte predictions over (document, batching) pairs -- that differ from the image's
    (document's) alone), ``max_logit_change`` (largest over images and batchings), ``acc_alone`` and
    ``acc_batched`` (over the batchings); the language model also ``max_relative_change``, the largest
    ``max_logit_change / logit_scale`` of a document."""
    if "positions" in sensitivity:  # the language model: counts per document
        s = sensitivity.assign(relative_change=sensitivity["max_logit_change"] / sensitivity["logit_scale"])
    else:  # an image: one prediction
        s = sensitivity.assign(positions=1, changed=sensitivity["pred"] != sensitivity["pred_alone"],
                               correct_batched=sensitivity["pred"] == sensitivity["label"],
                               correct_alone=sensitivity["pred_alone"] == sensitivity["label"])
    extra = {"max_relative_change": ("relative_change", "max")} if "relative_change" in s else {}
    out = s.groupby(["seed", "stack", "epoch"], sort=True).agg(
        positions=("positions", "sum"), changed=("changed", "sum"), max_logit_change=("max_logit_change", "max"),
        acc_alone=("correct_alone", "sum"), acc_batched=("correct_batched", "sum"), **extra).reset_index()
    for column in ("changed", "acc_alone", "acc_batched"):
        out[column] = out[column] / out["positions"]
    return out.drop(columns="positions")


def plot_train_sensitivity(sensitivity: pd.DataFrame, *, path=None, dpi: int = 120) -> Figure:
    """Left: share of held-out predictions that change between the image alone and the image in a random padded
    batch; middle: the largest change of a logit (symmetric log: an exact 0 is drawn at 0; the language model:
    relative to the document's largest logit); right: accuracy alone and batched at the last epoch, one dot per
    seed. The language model: every next-byte prediction of a held-out document."""
    kinds = _kinds(sensitivity)
    text = _text(sensitivity)
    item = "document" if text else "image"
    palette = {k: STACK_COLORS[k] for k in kinds}
    summary = sensitivity_summary(sensitivity)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), layout="constrained")
    sns.lineplot(data=summary, x="epoch", y="changed", hue="stack", hue_order=kinds, palette=palette,
                 errorbar=_BAND, marker="o", ax=axes[0], legend=False)
    axes[0].set_ylabel(f"share of {'next-byte ' if text else ''}predictions that change\n(alone vs in a padded "
                       f"batch)")
    change = "max_relative_change" if text else "max_logit_change"
    sns.lineplot(data=summary, x="epoch", y=change, hue="stack", hue_order=kinds, palette=palette,
                 errorbar=_BAND, marker="o", ax=axes[1], legend=False)
    _symlog(axes[1], summary[change])
    axes[1].axhspan(0, ROUNDING, color="0.85", zorder=0)
    _note(axes[1], f"grey: below {ROUNDING:g}, float32 rounding", loc="lower right")
    axes[1].set_ylabel("largest change of a logit, relative to the\ndocument's largest |logit| (symmetric log)"
                       if text else "largest change of a logit\n(symmetric log scale)")
    for ax in axes[:2]:
        ax.set_xlabel("epoch (0 = before training)")
        ax.grid(alpha=0.3)
        _epochs(ax)
    last = summary[summary["epoch"] == summary["epoch"].max()]
    long = last.melt(id_vars=["seed", "stack"], value_vars=["acc_alone", "acc_batched"], var_name="how",
                     value_name="accuracy")
    long["how"] = long["how"].map({"acc_alone": f"each {item} alone", "acc_batched": "in random padded batches"})
    sns.stripplot(data=long, x="stack", y="accuracy", hue="how", order=kinds, dodge=True, jitter=False,
                  palette=["0.25", "0.65"], ax=axes[2], size=6)
    sns.pointplot(data=long, x="stack", y="accuracy", hue="how", order=kinds, dodge=0.4, errorbar=None,
                  palette=["0.25", "0.65"], markers="_", linestyles="none", ax=axes[2], legend=False)
    axes[2].set_xlabel("")
    axes[2].set_ylabel(f"held-out {'next-byte ' if text else ''}accuracy at epoch {int(summary['epoch'].max())}")
    axes[2].legend(fontsize=8, title="dots: seeds, dash: mean", title_fontsize=8, loc="lower right")
    axes[2].grid(alpha=0.3, axis="y")
    n = sensitivity.groupby(["seed", "stack", "epoch"]).size().max()
    where = "length and inside two random batchings padded on the right" if text else \
        "size and inside two random padded batchings"
    _title(fig, f"Does a {'next-byte ' if text else ''}prediction depend on what the {item} is batched with?",
           f"Every held-out {item} predicted alone at its own {where} "
           f"({n} {item}-batchings per kind and epoch{', every position with a next byte' if text else ''}); "
           f"line: mean over {_seeds(sensitivity)}, band: lowest to highest seed."
           + _same(summary, ["seed", "epoch"], ["changed", change, "acc_alone", "acc_batched"]))
    _kind_legend(fig, kinds, "")
    return _finish(fig, path, dpi)
