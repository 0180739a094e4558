"""Converted models next to the plain model, each front end: eval forward and training step, per-round ratios.

    python benchmarks/models.py [--rounds 5] [--quick] [--threads 2] [--batch 8] [--side 224]
                                [--models resnet18 densenet121 ...] [--captures fx export]
                                [--kinds masked partial] [--no-train] [--mask-none]

``resnet18`` and ``densenet121`` are ImageNet networks laid out as torchvision's (``resnet18``: ``BasicBlock``
[2, 2, 2, 2], 7x7/2 stem + 3x3/2 max pool, 64-512 channels, ``fc`` to 1000; ``densenet121``: growth 32, blocks
[6, 12, 24, 16], 64 stem channels, bottleneck 4x), random weights (built here from ``tests/zoo.py``'s blocks:
nothing is downloaded, torchvision is not needed). Their batch: ``--batch`` images whose sides are drawn between
150/224 of ``--side`` and ``--side`` (seeded), padded to one ``--side`` x ``--side`` canvas (float32, CPU).
The small test networks of ``tests/zoo.py`` (``resnet_basic``, ``unet``, ...) can be named too (their own sizes,
longest side ``--side``).

Each model is converted by every front end in ``--captures`` (``convert(model, kind, capture=...)``) for every
``--kind``; the time of ``convert()`` and of the first call (eval, no grad: the capture's check against the model
on the batch; for ``capture="export"`` also the capture itself, which waits for the first call) are printed, and
the outputs of the captures are compared with each other and, for ``"masked"``, with the plain model on each
image alone. Then, in ``--rounds`` interleaved rounds (every variant once per round, in a rotating order):

* **eval forward** (no grad): the plain model on the padded batch (the baseline), each converted model on the
  same batch with its mask, and the plain model on each image alone, one after another (the per-image loop
  that a padded batch replaces);
* **training step** (``train()``: forward, a loss, backward, an SGD step with momentum): the same variants; the
  per-image loop accumulates the gradients of the images run one by one and takes one step.

A variant's time is divided by the baseline's time *in the same round*; the median ratio over rounds and its
interquartile range are printed (``_interleaved.py``), with the median time and images/s. ``export / fx``: the
per-round ratio of the two captures of the same kind.
"""
from __future__ import annotations

import argparse
import copy
import os
import pathlib
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.nn as mnn
from masked_torch.utils import pad_batch
from _interleaved import interleaved

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from zoo import INPUTS, MODELS, BasicBlock, DenseNet, conv1x1, init_weights, randomize_batchnorm  # noqa: E402


class ResNet18(nn.Module):
    """torchvision's ``resnet18`` layout (module names and ``state_dict`` keys), ``tests/zoo.py``'s
    ``BasicBlock`` (in-place ReLU, ``out += identity``, as torchvision's)."""

    def __init__(self, layers=(2, 2, 2, 2), num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes))
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


IMAGENET = {
    "resnet18": ResNet18,
    "densenet121": lambda: DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                                    bn_size=4, num_classes=1000),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """The float32 eval-mode model ``name``, random weights from ``seed`` (the global random stream untouched);
    batch norms get random statistics, so that none is the identity."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = init_weights(IMAGENET[name]()) if name in IMAGENET else MODELS[name]()
    return randomize_batchnorm(model, seed).float().eval()


def images(name: str, batch: int, side: int, seed: int = 0) -> tuple[list[torch.Tensor], int]:
    """``batch`` images ``(C, *size)`` and the canvas multiple: ImageNet nets get sides in
    ``[side * 150 / 224, side]`` (a ``side`` canvas); zoo nets, 60-100% of ``side`` in their own layout."""
    g = torch.Generator().manual_seed(seed)
    if name in IMAGENET:
        low = round(side * 150 / 224)
        sizes = [tuple(int(torch.randint(low, side + 1, (), generator=g)) for _ in range(2)) for _ in range(batch)]
        return [torch.randn(3, *s, generator=g) for s in sizes], side
    spec = INPUTS[name]
    out = []
    for _ in range(batch):
        dims = []
        for d in range(spec.rank):
            s = int(side * (0.6 + 0.4 * torch.rand((), generator=g).item())) if d >= spec.rank - 2 else 8
            dims.append(max(spec.multiple, s // spec.multiple * spec.multiple))
        out.append(torch.randn(spec.channels, *dims, generator=g))
    return out, spec.multiple


def leaves(out) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, tuple, list or dict)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for o in out for t in leaves(o)]


def loss_of(out) -> torch.Tensor:
    return sum(t.float().square().mean() for t in leaves(out))


def rel_diff(a, b) -> float:
    """max |a - b| / max |b| over the output tensors."""
    la, lb = leaves(a), leaves(b)
    return max(float((x - y).abs().max()) / max(float(y.abs().max()), 1e-30) for x, y in zip(la, lb))


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def convert_all(plain: nn.Module, x, m, captures, kinds) -> tuple[dict, list]:
    """``{(kind, capture): converted}`` and the conversion rows ``(kind, capture, convert s, first call s)``."""
    converted, rows = {}, []
    for kind in kinds:
        options = {"update_mask": False} if kind == "partial" else {}
        for capture in captures:
            t_convert = seconds(lambda: converted.__setitem__(
                (kind, capture), mnn.convert(plain, kind, capture=capture, **options)))
            model = converted[(kind, capture)]
            with torch.no_grad():
                t_first = seconds(lambda: model(x, m))
            if model.capture != capture:
                raise RuntimeError(f"{kind}: asked for capture={capture!r}, got {model.capture!r}")
            rows.append((kind, capture, t_convert, t_first))
    return converted, rows


def agreement(plain, converted, x, m, imgs, captures, kinds) -> list[str]:
    """Lines: the captures' outputs against each other, ``"masked"`` against each image alone."""
    lines = []
    with torch.no_grad():
        outs = {key: model(x, m)[0] for key, model in converted.items()}
        for kind in kinds:
            if "fx" in captures and "export" in captures:
                d = rel_diff(outs[(kind, "export")], outs[(kind, "fx")])
                lines.append(f"{kind}: export vs fx capture, same batch: max rel. diff {d:.1e} "
                             f"({'ok' if d <= 1e-5 else 'ABOVE'} 1e-5)")
        if "masked" in kinds and all(o.dim() == 2 for o in leaves(plain(x))):  # classifiers: one row per image
            alone = torch.cat([leaves(plain(i[None]))[0] for i in imgs])
            for capture in captures:
                d = rel_diff(outs[("masked", capture)], alone)
                lines.append(f"masked ({capture}) vs plain model on each image alone: max rel. diff {d:.1e}")
    return lines


def timing(variants: dict, rounds: int, base: str):
    """Interleaved rounds: rows of :func:`interleaved` and the raw per-round times ``{name: [s]}``."""
    raw = {name: [] for name in variants}

    def once(name: str) -> float:
        t = seconds(variants[name])
        raw[name].append(t)
        return t

    rows = interleaved(list(variants), once, rounds, base=base, warmup=1)
    return rows, {name: ts[-rounds:] for name, ts in raw.items()}


def export_over_fx(raw: dict, kinds, label: str) -> list:
    rows = []
    for kind in kinds:
        fx, ex = raw.get(f"{kind}, fx"), raw.get(f"{kind}, export")
        if fx and ex:
            r = [e / f for e, f in zip(ex, fx)]
            q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0], r[0], r[0]]
            rows.append((f"{kind}: export / fx ({label})", statistics.median(r), q[0], q[2]))
    return rows


def eval_variants(plain, converted, x, m, imgs, mask_none: bool = False) -> dict:
    fns = {"plain, padded": lambda: plain(x)}
    for (kind, capture), model in converted.items():
        fns[f"{kind}, {capture}"] = lambda model=model: model(x, m)
    if mask_none:
        (kind, capture), model = next(iter(converted.items()))
        fns[f"{kind}, {capture}, mask=None"] = lambda: model(x)
    fns["plain, each image alone"] = lambda: [plain(i[None]) for i in imgs]
    return fns


def train_variants(plain, converted, x, m, imgs) -> dict:
    def step(model, opt, batch):
        opt.zero_grad(set_to_none=True)
        for args in batch:
            loss_of(model(*args)).backward()
        opt.step()

    fns = {}
    models = {"plain, padded": (plain, [(x,)])}
    models.update({f"{kind}, {capture}": (model, [(x, m)]) for (kind, capture), model in converted.items()})
    loop = copy.deepcopy(plain)
    models["plain, each image alone"] = (loop, [(i[None],) for i in imgs])
    for name, (model, batch) in models.items():
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        fns[name] = lambda model=model, opt=opt, batch=batch: step(model, opt, batch)
    return fns


def load() -> str:
    """The 1-minute load average (other processes on the machine widen the IQRs)."""
    return f"load {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "load unknown"


def print_table(rows, batch: int, extra=()) -> None:
    for name, med, lo, hi, ms in rows:
        print(f"  {name:32s} {med:5.2f}x [{lo:4.2f}-{hi:4.2f}]  {ms:9.1f} ms  {batch / ms * 1e3:7.1f} images/s")
    for name, med, lo, hi in extra:
        print(f"  {name:36s} {med:5.2f}x [{lo:4.2f}-{hi:4.2f}]")


def warm_up(captures) -> None:
    """One conversion per front end of a small zoo network, so that the one-time costs of a process (imports
    of ``torch.fx``/``torch.export`` internals, their first-use set-up) do not land on the first model timed."""
    small = build("resnet_basic")
    x, m = pad_batch(images("resnet_basic", 2, 32)[0])
    for capture in captures:
        with torch.no_grad():
            mnn.convert(small, "masked", capture=capture)(x, m)


def run(name: str, args) -> None:
    plain = build(name)
    imgs, multiple = images(name, args.batch, args.side)
    x, m = pad_batch(imgs, multiple)
    sides = sorted(s for i in imgs for s in i.shape[-2:])
    print(f"\n== {name}: {sum(p.numel() for p in plain.parameters()) / 1e6:.2f} M parameters; padded batch "
          f"{tuple(x.shape)}, image sides {sides[0]}-{sides[-1]}, {1 - float(m.mean()):.0%} of the canvas padding")
    converted, conv_rows = convert_all(plain, x, m, args.captures, args.kinds)
    with torch.no_grad():
        t_plain = seconds(lambda: plain(x))
    print(f"conversion (s; plain eval forward {t_plain:.2f} s, {load()}): convert() / first call (eval: the "
          f"check against the model; export: the capture too)")
    for kind, capture, t_convert, t_first in conv_rows:
        print(f"  {kind + ', ' + capture:26s} {t_convert:7.2f} s  {t_first:7.2f} s")
    for line in agreement(plain, converted, x, m, imgs, args.captures, args.kinds):
        print("  " + line)

    for model in converted.values():
        model.eval()
    with torch.no_grad():
        rows, raw = timing(eval_variants(plain, converted, x, m, imgs, args.mask_none), args.rounds, "plain, padded")
    print(f"eval forward, no grad ({args.rounds} rounds, {load()} after them; goal <= 1.10x):")
    print_table(rows, args.batch, export_over_fx(raw, args.kinds, "eval"))
    if not args.no_train:
        rows, raw = timing(train_variants(plain, converted, x, m, imgs), args.rounds, "plain, padded")
        print(f"training step: forward + backward + SGD step ({args.rounds} rounds, {load()} after them; "
              f"goal <= 1.30x):")
        print_table(rows, args.batch, export_over_fx(raw, args.kinds, "train"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", "--repeats", type=int, default=5, help="interleaved rounds per table (default 5)")
    parser.add_argument("--quick", action="store_true",
                        help="a fast look: 3 rounds, --side 128, ResNet-18 only unless --models is given")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--side", type=int, default=None, help="canvas side (default 224; --quick: 128)")
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(IMAGENET) + sorted(MODELS),
                        help="default: resnet18 densenet121")
    parser.add_argument("--captures", nargs="+", default=["fx", "export"], choices=["fx", "export"])
    parser.add_argument("--kinds", nargs="+", default=["masked", "partial"], choices=["masked", "partial"])
    parser.add_argument("--no-train", action="store_true", help="eval forward only")
    parser.add_argument("--mask-none", action="store_true",
                        help="also time the first converted model called without a mask (the plain computation)")
    args = parser.parse_args(argv)
    if args.rounds < 3:
        parser.error("--rounds must be >= 3 (the quartiles of fewer ratios are extrapolated)")
    if args.quick:
        args.rounds = min(args.rounds, 3)
    args.side = args.side or (128 if args.quick else 224)
    args.models = args.models or (["resnet18"] if args.quick else list(IMAGENET))
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads, "
          f"float32, CPU; ratio = variant time / plain model on the padded batch in the same round, "
          f"median [IQR] over {args.rounds} rounds")
    warm_up(args.captures)
    for name in args.models:
        run(name, args)


if __name__ == "__main__":
    main()
