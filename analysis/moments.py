"""Per-channel moments of a set of positions and their exact merge: the leaf of the statistics modules (torch, numpy).

A :class:`Moments` holds, per channel, the number of positions, their mean, ``m2`` (the sum of squared deviations
from that mean), min, max and the number of exact zeros, all float64. :func:`merge_moments` combines two disjoint
sets with the parallel formula of Chan, Golub & LeVeque; :func:`add_shifted_sums` adds one batch given as sums of
``x - shift`` (what a reduction kernel computes) to a running state in the same way: a :class:`Moments` packed
as one ``(6, C)`` numpy array (:meth:`Moments.to_tensor`'s layout), which is what a recorder keeps per layer.

Precision: each merge is a handful of float64 operations (IEEE, the same on every machine). One
:func:`merge_moments` of two exact sets of moments keeps ``mean`` within ``MERGE_ROUNDING * (|mean| +
|delta|)`` and ``m2`` (all of its terms non-negative) within ``MERGE_ROUNDING`` relative, with
:data:`MERGE_ROUNDING` ``= 8 * 2**-53``; errors of successive merges add up. :func:`add_shifted_sums` keeps
``m2`` within ``2 * MERGE_ROUNDING * (m2_a + s2 + n_a * (mean_a - shift)**2 + t**2 / n)`` of the exact
value (``t``: the sum of ``x - shift`` over both sets): relative to ``m2`` that is small where ``shift`` is
near the mean, which is why batches are summed around it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Union

import numpy as np
import torch
from torch import Tensor

__all__ = ["ACC", "MERGE_ROUNDING", "Moments", "merge_moments", "add_shifted_sums", "empty_state"]

ACC = torch.float64  #: dtype of every accumulated statistic
MERGE_ROUNDING = 8 * 2.0**-53  #: relative rounding of ``m2`` (and, with ``|delta|``, of ``mean``) in one merge


@dataclass(frozen=True, eq=False)
class Moments:
    """Per-channel moments of a set of positions; every field is a float64 tensor of shape ``(C,)``.

    ``count`` positions, their ``mean``, ``m2`` = sum of squared deviations from that mean, ``min``,
    ``max`` (``+inf``/``-inf`` for a channel without positions) and ``zeros`` = number of exact zeros.
    Merge two with :func:`merge_moments`; :meth:`to_tensor`/:meth:`from_tensor` pack them into one
    ``(6, C)`` tensor (e.g. for ``torch.distributed.all_gather``).
    """

    count: Tensor
    mean: Tensor
    m2: Tensor
    min: Tensor
    max: Tensor
    zeros: Tensor

    @classmethod
    def empty(cls, channels: int, device: Union[str, torch.device, None] = None) -> "Moments":
        """No positions: the identity of :func:`merge_moments`."""
        z = torch.zeros(channels, dtype=ACC, device=device)
        inf = torch.full((channels,), float("inf"), dtype=ACC, device=device)
        return cls(z, z.clone(), z.clone(), inf, -inf, z.clone())

    @property
    def channels(self) -> int:
        return self.count.shape[0]

    @property
    def var(self) -> Tensor:
        """Population variance (``m2 / count``); NaN for a channel without positions."""
        return torch.where(self.count > 0, self.m2 / self.count.clamp_min(1), float("nan"))

    @property
    def std(self) -> Tensor:
        return self.var.sqrt()

    @property
    def zero_frac(self) -> Tensor:
        """Fraction of exact zeros among the positions; NaN for a channel without positions."""
        return torch.where(self.count > 0, self.zeros / self.count.clamp_min(1), float("nan"))

    def to_tensor(self) -> Tensor:
        """``(6, C)``: count, mean, m2, min, max, zeros."""
        return torch.stack([getattr(self, f.name) for f in fields(self)])

    @classmethod
    def from_tensor(cls, packed: Tensor) -> "Moments":
        if packed.dim() != 2 or packed.shape[0] != len(fields(cls)):
            raise ValueError(f"Moments.from_tensor: expected shape (6, C), got {tuple(packed.shape)}")
        return cls(*packed.to(ACC).unbind(0))

    def to(self, device: Union[str, torch.device]) -> "Moments":
        return Moments(*(getattr(self, f.name).to(device) for f in fields(self)))

    def clone(self) -> "Moments":
        return Moments(*(getattr(self, f.name).clone() for f in fields(self)))


def merge_moments(a: Moments, b: Moments) -> Moments:
    """The moments of the union of two disjoint sets of positions (Chan, Golub & LeVeque's parallel formula).

    Pure (``a`` and ``b`` are left as they are); exact for counts and extrema, and ``m2`` stays a centred
    sum: ``m2 = m2_a + m2_b + delta**2 * n_a * n_b / n`` with ``delta = mean_b - mean_a``. Either side may
    be empty (count 0) in any channel.
    """
    if a.channels != b.channels:
        raise ValueError(f"merge_moments: channel counts differ ({a.channels} vs {b.channels})")
    n = a.count + b.count
    a_empty, b_empty = a.count == 0, b.count == 0
    delta = b.mean - a.mean
    w = b.count / n.clamp_min(1)
    # a side without positions contributes nothing, exactly (whatever its ``mean`` holds)
    mean = torch.where(a_empty, b.mean, torch.where(b_empty, a.mean, a.mean + delta * w))
    m2 = torch.where(a_empty, b.m2, torch.where(b_empty, a.m2, a.m2 + b.m2 + delta * delta * (a.count * w)))
    return Moments(
        count=n,
        mean=mean,
        m2=m2,
        min=torch.minimum(a.min, b.min),
        max=torch.maximum(a.max, b.max),
        zeros=a.zeros + b.zeros,
    )


def add_shifted_sums(state: np.ndarray, shift: np.ndarray, sums: np.ndarray) -> np.ndarray:
    """A packed running state plus one batch given by its per-channel sums around ``shift``: all float64
    numpy arrays, so that the per-batch bookkeeping costs microseconds (torch's per-op overhead on ``(C,)``
    tensors would cost more than reducing a small layer's output).

    ``state``: ``(6, C)`` rows count, mean, m2, min, max, zeros (the layout of :meth:`Moments.to_tensor`;
    :func:`empty_state`). ``sums``: ``(6, C)`` rows count, ``s1`` = sum of ``x - shift``, ``s2`` = sum of
    ``(x - shift)**2``, min, max (``+inf``/``-inf`` without positions) and the number of positions that are
    not exactly 0. Returns a new state; the inputs are left as they are.

    The union's mean and centred ``m2`` come from sums around ``shift`` over both sets (the state's own are
    ``n_a * (mean_a - shift)`` and ``m2_a + n_a * (mean_a - shift)**2``): with ``shift`` near the running
    mean no term is large, so ``m2`` keeps its relative precision however far the mean is from 0 (the same
    result as :func:`merge_moments` of the two sets' moments). A channel without positions on either side
    keeps mean and ``m2`` 0.
    """
    count_a, mean_a, m2_a, lo_a, hi_a, zeros_a = state
    count_b, s1, s2, lo_b, hi_b, nonzero = sums
    delta = mean_a - shift
    n_delta = count_a * delta
    t = n_delta + s1  # sum of (x - shift) over both sets
    out = np.empty_like(state)
    n = np.add(count_a, count_b, out=out[0])
    q = t / np.maximum(n, 1.0)
    np.add(shift, q, out=out[1])
    out[1][n == 0] = 0.0
    np.maximum(m2_a + s2 + n_delta * delta - t * q, 0.0, out=out[2])
    np.minimum(lo_a, lo_b, out=out[3])
    np.maximum(hi_a, hi_b, out=out[4])
    np.add(zeros_a, count_b - nonzero, out=out[5])
    return out


def empty_state(channels: int) -> np.ndarray:
    """The packed state (see :func:`add_shifted_sums`) of no positions: :meth:`Moments.empty` as numpy."""
    state = np.zeros((6, channels))
    state[3], state[4] = np.inf, -np.inf
    return state
