"""Reference formulas, written from the issue's definitions with explicit windows (``Tensor.unfold``),
independently of ``masked_torch.functional`` and of ``F.convNd``. All in float64."""
from __future__ import annotations

import itertools
import math

import torch


def windows(t: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """``(N, C, *S) -> (N, C, *out, *kernel)``: every convolution window, zero padded."""
    nd = t.dim() - 2
    pad = []
    for p in reversed(padding):
        pad += [p, p]
    t = torch.nn.functional.pad(t, pad)
    for d in range(nd):
        extent = dilation[d] * (kernel[d] - 1) + 1
        t = t.unfold(2 + d, extent, stride[d])[..., :: dilation[d]]
    # unfold appends the window dims at the end in order d=0..nd-1
    return t


def conv_ref(x, w, groups, stride, padding, dilation):
    """Grouped convolution as an explicit sum over windows (no bias)."""
    nd = x.dim() - 2
    kernel = w.shape[2:]
    win = windows(x, kernel, stride, padding, dilation)  # (N, Cin, *out, *k)
    n, c_in = x.shape[:2]
    c_out = w.shape[0]
    win = win.reshape(n, groups, c_in // groups, *win.shape[2:])
    wg = w.reshape(groups, c_out // groups, c_in // groups, *kernel)
    letters = "uvw"[:nd]
    kl = "xyz"[:nd]
    eq = f"ngc{letters}{kl},goc{kl}->ngo{letters}"
    return torch.einsum(eq, win, wg).reshape(n, c_out, *win.shape[3:3 + nd])


def centre_ref(mask, kernel, stride, padding, dilation, out_shape, anchor="centre"):
    """mask[..., i*stride - padding + dilation*(k//2)], 0 outside the input.

    ``anchor="end"``: mask[..., max(0, i*stride - padding + dilation*(k-1) - padding)], the last input of
    the window less the right padding: valid where the layer on the image alone has an output."""
    out = torch.zeros(mask.shape[:2] + tuple(out_shape), dtype=mask.dtype)
    for idx in itertools.product(*(range(s) for s in out_shape)):
        if anchor == "centre":
            src = [i * stride[d] - padding[d] + dilation[d] * (kernel[d] // 2) for d, i in enumerate(idx)]
        else:
            src = [max(0, i * stride[d] + dilation[d] * (kernel[d] - 1) - 2 * padding[d]) for d, i in enumerate(idx)]
        if all(0 <= s < mask.shape[2 + d] for d, s in enumerate(src)):
            out[(slice(None), slice(None)) + idx] = mask[(slice(None), slice(None)) + tuple(src)]
    return out


def partial_ref(x, m, w, b, groups, stride, padding, dilation, multichannel, update_mask, anchor="centre"):
    """Partial convolution counts valid inputs: M is the 0/1 validity ``mask != 0``."""
    x, m, w = x.double(), (m != 0).double(), w.double()
    nd = x.dim() - 2
    kernel = tuple(w.shape[2:])
    c_in, c_out = x.shape[1], w.shape[0]
    if not multichannel and m.shape[1] > 1:
        m = m.amax(1, keepdim=True)
    xm = torch.where(m != 0, x * m, torch.zeros((), dtype=x.dtype))
    raw = conv_ref(xm, w, groups, stride, padding, dilation)
    mwin = windows(m, kernel, stride, padding, dilation)  # (N, 1|C, *out, *k)
    kdims = tuple(range(-nd, 0))
    if m.shape[1] == 1:
        msum = mwin.sum(dim=kdims)  # (N, 1, *out)
        winsize = math.prod(kernel)
        msum_o = msum.expand(-1, c_out, *msum.shape[2:])
    else:
        per = mwin.sum(dim=kdims).reshape(m.shape[0], groups, c_in // groups, *raw.shape[2:]).sum(2)
        winsize = (c_in // groups) * math.prod(kernel)
        msum_o = per.repeat_interleave(c_out // groups, dim=1)
    y = raw * winsize / msum_o.clamp_min(1e-300)
    if b is not None:
        y = y + b.double().view(1, -1, *([1] * nd))
    y = torch.where(msum_o > 0, y, torch.zeros((), dtype=y.dtype))
    if update_mask:
        out_mask = (msum_o > 0).double()
    else:
        anyv = m.amax(1, keepdim=True)
        out_mask = centre_ref(anyv, kernel, stride, padding, dilation, raw.shape[2:], anchor) * (msum_o > 0)
    y = y * out_mask  # the output is 0 wherever the output mask is 0
    return y, out_mask


def masked_ref(x, m, w, b, groups, stride, padding, dilation, anchor="centre"):
    x, m, w = x.double(), m.double(), w.double()
    nd = x.dim() - 2
    kernel = tuple(w.shape[2:])
    c_in, c_out = x.shape[1], w.shape[0]
    xz = torch.where(m != 0, x, torch.zeros((), dtype=x.dtype))
    y = conv_ref(xz, w, groups, stride, padding, dilation)
    if b is not None:
        y = y + b.double().view(1, -1, *([1] * nd))
    cen = centre_ref(m, kernel, stride, padding, dilation, y.shape[2:], anchor)  # (N, 1|C, *out)
    if m.shape[1] == 1:
        mp = cen.expand(-1, c_out, *cen.shape[2:])
    else:
        a = w.abs().sum(dim=tuple(range(2, w.dim())))  # (Cout, Cin/G)
        mp = torch.zeros_like(y)
        cg = c_in // groups
        for o in range(c_out):
            g = o // (c_out // groups)
            num = (cen[:, g * cg:(g + 1) * cg] * a[o].view(1, cg, *([1] * nd))).sum(1)
            mp[:, o] = num / a[o].sum()
    return y * mp, mp
