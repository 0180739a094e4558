"""Converted models next to the plain model: median of per-round time ratios, variants interleaved in one run.

    python benchmarks/models.py [--repeats 20] [--threads 2] [--batch 8] [--side 96] [--models resnet_basic ...]

The models are the zoo-style test networks of ``tests/zoo.py`` (float32, eval, no grad). A batch of ``--batch``
images of different sizes (longest side ``--side``) is padded into one canvas; each round times, in a rotating
order:

* ``plain, padded``: the plain model on the padded batch (the baseline: what masking costs on top of it);
* ``masked``, ``partial``: the converted models on the padded batch with its mask;
* ``masked, mask=None``: the converted model without a mask (should be the plain model);
* ``plain, one by one``: the plain model on each image alone at its own size, one after another (what a
  padded batch replaces when images differ in size).

The ratio of a variant's time to the baseline's *in the same round* is recorded; medians [IQR] are printed.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

import masked_torch.nn as mnn
from masked_torch.utils import pad_batch
from _interleaved import interleaved, print_rows

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from zoo import INPUTS, MODELS, build  # noqa: E402


def sizes(name: str, batch: int, side: int) -> list[tuple[int, ...]]:
    """``batch`` per-image sizes between 60% and 100% of ``side`` (multiples of what the model needs)."""
    spec = INPUTS[name]
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(batch):
        dims = []
        for d in range(spec.rank):
            s = int(side * (0.6 + 0.4 * torch.rand((), generator=g).item())) if d >= spec.rank - 2 else 8
            dims.append(max(spec.multiple, s // spec.multiple * spec.multiple))
        out.append(tuple(dims))
    return out


def run(name: str, batch: int, side: int, repeats: int):
    plain = build(name).float()
    variants = {"plain, padded": plain, "masked": mnn.convert(plain, "masked"),
                "partial": mnn.convert(plain, "partial", update_mask=False)}
    spec = INPUTS[name]
    imgs = [torch.randn(spec.channels, *s) for s in sizes(name, batch, side)]
    x, m = pad_batch(imgs, spec.multiple)
    fns = {
        "plain, padded": lambda: plain(x),
        "masked": lambda: variants["masked"](x, m),
        "partial": lambda: variants["partial"](x, m),
        "masked, mask=None": lambda: variants["masked"](x),
        "plain, one by one": lambda: [plain(i[None]) for i in imgs],
    }
    def once(name: str) -> float:
        start = time.perf_counter()
        fns[name]()
        return time.perf_counter() - start

    with torch.no_grad():
        rows = interleaved(list(fns), once, repeats, base="plain, padded")
    padding = 1 - float(m.mean())
    return rows, tuple(x.shape), padding


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=96)
    parser.add_argument("--models", nargs="+", default=["resnet_basic", "mobilenetv3", "convnext", "unet"],
                        choices=sorted(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {args.repeats} interleaved rounds, float32, eval, "
          f"no grad; ratio = variant time / plain model on the padded batch, same round (median [IQR])")
    for name in args.models:
        rows, shape, padding = run(name, args.batch, args.side, args.repeats)
        print(f"\n{name}: padded batch {shape}, {padding:.0%} of it padding")
        print_rows(rows, 20)


if __name__ == "__main__":
    main()
