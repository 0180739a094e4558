"""What the training experiment measures on a model, each as a tidy frame (:mod:`~masked_torch.analysis.train_loop`
adds ``seed``, ``stack`` and ``epoch``):

* :func:`heldout` -- loss and accuracy on the held-out images (or, for the language model, next bytes), in
  padded batches of the run's batch size, in index order (the way a model is usually evaluated);
* :func:`probe_stats` -- per-channel activation statistics of every recorded layer on a fixed probe set, with the
  suite's :class:`~masked_torch.analysis.recorder.ActivationRecorder` (eval mode), and ``dead``: a channel whose
  every valid output on the probe set is exactly 0;
* :func:`sensitivity` -- batch-composition sensitivity: every held-out image predicted alone (padded only to the
  model's alone multiple: the image exactly for the small CNN) and inside two random padded batchings; one row
  per (batching, image): the prediction alone and batched and the largest change of a logit (a document: over
  its positions, how many next-byte predictions change, how many are right alone and batched, the largest
  change of a logit: :meth:`~masked_torch.analysis.train_text.Documents.compare`);
* :class:`GradNorms` -- per layer, the L2 norm of the gradient of its parameters at every step, averaged over an
  epoch (and its largest).

The data is a :class:`~masked_torch.analysis.train_data.Labelled` or a
:class:`~masked_torch.analysis.train_text.Documents`: each makes its padded batches (``batch``: ``x, mask,
target``; a target of ``IGNORE`` is not predicted) and its rows of the batch-composition check (``compare``).
All run on ``torch.no_grad()`` in eval mode (BatchNorm on its running statistics) and leave the model's mode as
they found it.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .recorder import ActivationRecorder
from .train_data import IGNORE, pad

__all__ = ["pad", "evaluating", "heldout", "probe_stats", "sensitivity", "batchings", "GradNorms",
           "SENSITIVITY_COLUMNS", "IGNORE"]

SENSITIVITY_COLUMNS = ("batching", "image", "label", "h", "w", "batch_h", "batch_w", "pad_fraction", "pred_alone",
                       "pred", "max_logit_change")


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without autograd inside the block; its mode restored after."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was)


def _chunks(index: Sequence[int], size: int) -> list[list[int]]:
    index = list(index)
    return [index[i:i + size] for i in range(0, len(index), size)]


def heldout(model: nn.Module, data, batch_size: int, multiple: int, dtype: torch.dtype) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` over the targets of ``data`` (an image's label; a document's next
    bytes) in padded batches of ``batch_size``, in index order."""
    loss = correct = count = 0.0
    with evaluating(model):
        for chunk in _chunks(range(len(data)), batch_size):
            x, mask, y = data.batch(chunk, multiple, dtype)
            logits, _ = model(x, mask)
            loss += float(F.cross_entropy(logits.double(), y, reduction="sum", ignore_index=IGNORE))
            correct += int(((logits.argmax(1) == y) & (y != IGNORE)).sum())
            count += int((y != IGNORE).sum())
    return loss / count, correct / count


def probe_stats(model: nn.Module, probe, batch_size: int, multiple: int, dtype: torch.dtype, include=None
                ) -> pd.DataFrame:
    """The recorder's frame (one row per layer and channel, :data:`~masked_torch.analysis.recorder.COLUMNS`) over the
    probe images (documents) in padded batches of ``batch_size``, plus ``dead`` (``zero_frac == 1``); ``include``
    as the recorder's (``None``: its default selection)."""
    with evaluating(model), ActivationRecorder(model, include) as rec:
        for chunk in _chunks(range(len(probe)), batch_size):
            x, mask, _ = probe.batch(chunk, multiple, dtype)
            model(x, mask)
    frame = rec.to_frame()
    frame["dead"] = frame["zero_frac"] == 1.0
    return frame


def batchings(n: int, batch_size: int, seed: int, epoch: int, which: int) -> list[list[int]]:
    """Random batching ``which`` of ``n`` images at ``epoch``: a permutation from a generator seeded with
    ``(seed, epoch, which)``, cut into batches of ``batch_size``; the same for every kind."""
    g = np.random.default_rng([seed, epoch, which, 7])
    return _chunks(g.permutation(n).tolist(), batch_size)


def sensitivity(model: nn.Module, data, batch_size: int, canvas_multiple: int, alone_multiple: int,
                dtype: torch.dtype, *, seed: int, epoch: int, count: int = 2) -> pd.DataFrame:
    """Every image (document) of ``data`` alone and in ``count`` random padded batchings (:func:`batchings`); one
    row per (batching, image): ``batching`` and the columns of ``data.compare`` (images:
    :data:`SENSITIVITY_COLUMNS`), sorted by batching and name. ``max_logit_change`` = ``max |logit(batched) -
    logit(alone)|``, in the model's dtype, computed in float64."""
    with evaluating(model):
        alone = [model(*data.batch([i], alone_multiple, dtype)[:2])[0][0].double() for i in range(len(data))]
        rows = []
        for which in range(1, count + 1):
            for chunk in batchings(len(data), batch_size, seed, epoch, which):
                x, mask, _ = data.batch(chunk, canvas_multiple, dtype)
                logits = model(x, mask)[0].double()
                rows.extend(dict(batching=which, **data.compare(i, alone[i], logits[k], x.shape[2:]))
                            for k, i in enumerate(chunk))
    frame = pd.DataFrame(rows)
    frame = frame.sort_values(["batching", frame.columns[1]], kind="stable", ignore_index=True)
    return frame


class GradNorms:
    """Per layer (the module that owns a parameter; names as in the plain model), the L2 norm of the gradient of
    its parameters together, collected at every :meth:`add` (after ``backward``); :meth:`frame` gives the mean
    and the largest over the steps, and the norm of the layer's weights now."""

    def __init__(self) -> None:
        self.norms: dict[str, list[float]] = {}

    def add(self, model: nn.Module) -> None:
        squares: dict[str, torch.Tensor] = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                layer = name.rsplit(".", 1)[0]
                g = p.grad.detach().double().pow(2).sum()
                squares[layer] = squares[layer] + g if layer in squares else g
        for layer, sq in squares.items():
            self.norms.setdefault(layer, []).append(float(sq.sqrt()))

    def frame(self, model: nn.Module) -> pd.DataFrame:
        weights: dict[str, float] = {}
        for name, p in model.named_parameters():
            layer = name.rsplit(".", 1)[0]
            weights[layer] = weights.get(layer, 0.0) + float(p.detach().double().pow(2).sum())
        layers = [layer for layer in weights if layer in self.norms]
        return pd.DataFrame({
            "layer": layers,
            "grad_norm": [float(np.mean(self.norms[layer])) for layer in layers],
            "grad_norm_max": [float(np.max(self.norms[layer])) for layer in layers],
            "weight_norm": [weights[layer] ** 0.5 for layer in layers],
        })
