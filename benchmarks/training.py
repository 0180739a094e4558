"""Training speed of the three kinds next to the plain network, and what recording statistics costs per epoch.

    python benchmarks/training.py [--task images|lm|both] [--repeats 15] [--threads 1] [--images 180] [--batch 16]
                                  [--width 8] [--docs 240] [--lm-batch 8] [--lm-width 32] [--lm-depth 4]

``images``: one training epoch (forward, backward, Adam step) of the training experiment's default classifier
(``masked_torch.analysis.train_model``) over ``--images`` shapes images (sides 24-160; 180 and 60 held out, as the
default run) in padded batches of ``--batch``. ``lm``: one epoch of the causal byte model (``ByteLM``, ``--lm-width``,
``--lm-depth`` blocks) over the training documents of ``train --data stdlib`` (``--docs`` functions of the standard
library, a quarter held out) in batches of ``--lm-batch`` padded on the right; reported in sequences (documents) per
second. Always the same batches in the same order. Interleaved (``_interleaved.py``: every round runs every
variant once in a rotating order; the median of the per-round ratios to the baseline, with the interquartile range):

* ``plain network``: the unconverted model on the padded batch, no mask (the baseline);
* ``conv``, ``pconv``, ``mconv``: the kinds the experiment trains (``convert(..., "plain" | "partial" | "masked")``);

then, against one ``mconv`` epoch, what the experiment adds per epoch: the gradient norms at every step
(``GradNorms``), the activation statistics on the probe set (16 images or documents, ``probe_stats``: "recording
statistics"), the held-out loss and accuracy and the batch-composition check (every held-out image or document
alone and in two batchings; every ``--sensitivity-every`` epochs in a run).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _interleaved import interleaved, print_rows
from masked_torch.analysis.stacks import build_variants
from masked_torch.analysis.train_data import IGNORE, shapes_data
from masked_torch.analysis.train_measure import GradNorms, heldout, probe_stats, sensitivity
from masked_torch.analysis.train_model import build_classifier, lm_recorded
from masked_torch.analysis.train_text import stdlib_documents


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("images", "lm", "both"), default="both")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=180)
    p.add_argument("--heldout", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--docs", type=int, default=240)
    p.add_argument("--lm-batch", type=int, default=8)
    p.add_argument("--lm-width", type=int, default=32)
    p.add_argument("--lm-depth", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.task in ("images", "both"):
        data = shapes_data(args.images + args.heldout)
        train = data.subset(range(args.images))
        held = data.subset(range(args.images, args.images + args.heldout))
        plain = build_classifier("small", 3, width=args.width)
        print(f"one training epoch: {args.images} images (sides 24-160, padded batches of {args.batch}), width "
              f"{args.width}, {args.threads} thread(s), {args.repeats} rounds")
        run(plain, train, held, args.batch, args.repeats, "images", include=None)
    if args.task in ("lm", "both"):
        docs = stdlib_documents(args.docs)
        train_index, held_index = docs.split(0.25)
        train, held = docs.subset(train_index), docs.subset(held_index)
        plain = build_classifier("bytelm", 256, width=args.lm_width, depth=args.lm_depth)
        print(f"\none training epoch of the byte model: {len(train)} documents ({sum(train.sizes)} bytes, "
              f"{min(train.sizes)}-{max(train.sizes)} each, padded on the right in batches of {args.lm_batch}), "
              f"width {args.lm_width}, {args.lm_depth} blocks, {args.threads} thread(s), {args.repeats} rounds")
        run(plain, train, held, args.lm_batch, args.repeats, "sequences", include=lm_recorded)


def run(plain, train, held, batch_size: int, repeats: int, unit: str, include) -> None:
    """The kinds' epochs against the plain network's, then what a run adds to an mconv epoch."""
    probe = held.subset(range(min(16, len(held))))
    batches = [train.batch(range(i, min(i + batch_size, len(train))), 1, torch.float32)
               for i in range(0, len(train), batch_size)]
    models = {"plain network": plain, **build_variants(plain, ("conv", "pconv", "mconv"))}
    for m in models.values():
        m.train()
    optimizers = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}

    def epoch(name: str, grads: bool = False) -> float:
        model, opt = models[name], optimizers[name]
        norms = GradNorms()
        t = time.perf_counter()
        for x, mask, y in batches:
            logits = model(x) if name == "plain network" else model(x, mask)[0]
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grads:
                norms.add(model)
            opt.step()
        return time.perf_counter() - t

    kinds = ["plain network", "conv", "pconv", "mconv"]
    rows = interleaved(kinds, lambda n: epoch(n), repeats, base="plain network")
    print("time per epoch / the plain network's in the same round:")
    print_rows(rows)
    for name, _, _, _, ms in rows:
        print(f"  {name:42s} {len(train) / (ms / 1e3):7.1f} {unit}/s")

    mconv = models["mconv"]
    extras = {
        "mconv epoch": lambda: epoch("mconv"),
        "mconv epoch with gradient norms": lambda: epoch("mconv", grads=True),
        f"probe statistics ({len(probe)} {unit})": lambda: _timed(
            lambda: probe_stats(mconv, probe, batch_size, 1, torch.float32, include)),
        f"held-out loss and accuracy ({len(held)} {unit})": lambda: _timed(
            lambda: heldout(mconv, held, batch_size, 1, torch.float32)),
        "batch-composition check (alone + 2 batchings)": lambda: _timed(
            lambda: sensitivity(mconv, held, batch_size, 1, 1, torch.float32, seed=0, epoch=0)),
    }
    rows = interleaved(list(extras), lambda n: extras[n](), repeats, base="mconv epoch")
    print(f"what a run adds per epoch and kind, as a fraction of one mconv training epoch over the {unit} above:")
    print_rows(rows, width=48)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
