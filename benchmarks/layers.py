"""Masked layers next to nn.Conv2d: median of per-round time ratios, variants interleaved in one run.

    python benchmarks/layers.py [--repeats 40] [--threads 2] [--no-backward] [--malloc keep]

Each round runs every variant once (in a rotating order) on the same input; the ratio of a variant's
time to nn.Conv2d's time *in the same round* is recorded, and the median over rounds is printed with its
interquartile range. Masks cut every sample of the batch to a different size.

``--malloc keep`` first tells glibc's malloc (``mallopt``) to keep freed memory instead of handing every
large buffer back to the kernel: by default each fresh activation buffer is page-faulted in anew, which
costs nn.Conv2d itself up to 2x here and weighs on every extra buffer a masked layer allocates.
"""
from __future__ import annotations

import argparse
import ctypes
import time

import torch
from torch import nn

import masked_torch.nn as mnn
from _interleaved import interleaved, print_rows

CONFIGS = [(8, 64, 64, 64), (16, 32, 96, 96)]


def masks(n, c, h, w):
    m = torch.zeros(n, 1, h, w)
    for i in range(n):
        m[i, :, : h - (i * h) // (2 * n), : w - (i * w) // (3 * n)] = 1
    return m, m.expand(n, c, h, w).contiguous()


def variants(c):
    torch.manual_seed(0)
    conv = nn.Conv2d(c, c, 3, padding=1)
    sd = conv.state_dict()

    def make(cls, **kw):
        layer = cls(c, c, 3, padding=1, **kw)
        layer.load_state_dict(sd)
        return layer

    mconv, pconv = make(mnn.MaskedConv2d), make(mnn.PartialConv2d)
    pconv_mc = make(mnn.PartialConv2d, multichannel=True)
    pconv_pad = make(mnn.PartialConv2d, update_mask=False)
    return {
        "nn.Conv2d": lambda x, m1, mc: conv(x),
        "MaskedConv2d mask=None": lambda x, m1, mc: mconv(x)[0],
        "MaskedConv2d 1-ch mask": lambda x, m1, mc: mconv(x, m1)[0],
        "MaskedConv2d C-ch mask": lambda x, m1, mc: mconv(x, mc)[0],
        "PartialConv2d 1-ch mask": lambda x, m1, mc: pconv(x, m1)[0],
        "PartialConv2d 1-ch, update_mask=False": lambda x, m1, mc: pconv_pad(x, m1)[0],
        "PartialConv2d C-ch mask (multichannel)": lambda x, m1, mc: pconv_mc(x, mc)[0],
        "PartialConv2d C-ch mask (any-channel)": lambda x, m1, mc: pconv(x, mc)[0],
    }, [conv, mconv, pconv, pconv_mc, pconv_pad]


def run(config, repeats, backward):
    n, c, h, w = config
    fns, modules = variants(c)
    x = torch.randn(n, c, h, w, requires_grad=backward)
    m1, mc = masks(n, c, h, w)
    names = list(fns)

    def once(name):
        if backward:
            for mod in modules:
                mod.zero_grad(set_to_none=True)
            x.grad = None
            start = time.perf_counter()
            fns[name](x, m1, mc).sum().backward()
        else:
            with torch.no_grad():
                start = time.perf_counter()
                fns[name](x, m1, mc)
        return time.perf_counter() - start

    return interleaved(names, once, repeats, base="nn.Conv2d")


def keep_freed_memory() -> bool:
    """glibc: serve large allocations from the heap and do not trim it (process-wide; benchmark only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    return bool(ok)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-backward", action="store_true", help="skip the forward+backward table")
    parser.add_argument("--malloc", choices=["default", "keep"], default="default",
                        help="keep: mallopt so that freed buffers are reused instead of page-faulted in anew")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.malloc == "keep" and not keep_freed_memory():
        parser.exit(2, "benchmarks/layers.py: --malloc keep needs glibc's mallopt\n")
    print(f"torch {torch.__version__}, malloc {args.malloc}, {args.threads} threads, {args.repeats} interleaved rounds; "
          f"ratio = variant time / nn.Conv2d time in the same round (median [IQR])")
    passes = [False] if args.no_backward else [False, True]
    for backward in passes:
        for config in CONFIGS:
            n, c, h, w = config
            label = "forward+backward" if backward else "forward, no grad"
            print(f"\n{label}: N={n} C={c} {h}x{w}, 3x3 pad 1")
            print_rows(run(config, args.repeats, backward))


if __name__ == "__main__":
    main()
