"""Training speed of the three kinds next to the plain network, and what recording statistics costs per epoch.

    python benchmarks/training.py [--repeats 15] [--threads 1] [--images 180] [--batch 16] [--width 8]

One training epoch (forward, backward, Adam step) of the training experiment's default classifier
(``masked_torch.analysis.train_model``) over ``--images`` shapes images (sides 24-160; 180 and 60 held out, as the default run) in padded batches of
``--batch``, always the same batches in the same order. Interleaved (``_interleaved.py``: every round runs every
variant once in a rotating order; the median of the per-round ratios to the baseline, with the interquartile range):

* ``plain network``: the unconverted ``nn.Sequential`` on the padded batch, no mask (the baseline);
* ``conv``, ``pconv``, ``mconv``: the kinds the experiment trains (``convert(..., "plain" | "partial" | "masked")``);

then, against one ``mconv`` epoch, what the experiment adds per epoch: the gradient norms at every step
(``GradNorms``), the activation statistics on the probe set (16 images, ``probe_stats``: "recording
statistics"), the held-out loss and accuracy (``--heldout`` images) and the batch-composition check (every held-out
image alone and in two batchings; every ``--sensitivity-every`` epochs in a run).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from _interleaved import interleaved, print_rows
from masked_torch.analysis.stacks import build_variants
from masked_torch.analysis.train_data import shapes_data
from masked_torch.analysis.train_measure import GradNorms, heldout, pad, probe_stats, sensitivity
from masked_torch.analysis.train_model import build_classifier


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--images", type=int, default=180)
    p.add_argument("--heldout", type=int, default=60)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--width", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    data = shapes_data(args.images + args.heldout)
    train, held = data.subset(range(args.images)), data.subset(range(args.images, args.images + args.heldout))
    probe = held.subset(range(16))
    batches = []
    for i in range(0, args.images, args.batch):
        x, mask = pad(train.images[i:i + args.batch], 1, torch.float32)
        batches.append((x, mask, torch.tensor(train.labels[i:i + args.batch])))
    plain = build_classifier("small", 3, width=args.width)
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
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grads:
                norms.add(model)
            opt.step()
        return time.perf_counter() - t

    print(f"one training epoch: {args.images} images (sides 24-160, {len(batches)} padded batches of {args.batch}), "
          f"width {args.width}, {args.threads} thread(s), {args.repeats} rounds")
    kinds = ["plain network", "conv", "pconv", "mconv"]
    rows = interleaved(kinds, lambda n: epoch(n), args.repeats, base="plain network")
    print("time per epoch / the plain network's in the same round:")
    print_rows(rows)
    for name, _, _, _, ms in rows:
        print(f"  {name:42s} {args.images / (ms / 1e3):7.1f} images/s")

    mconv = models["mconv"]
    extras = {
        "mconv epoch": lambda: epoch("mconv"),
        "mconv epoch with gradient norms": lambda: epoch("mconv", grads=True),
        "probe statistics (16 images)": lambda: _timed(lambda: probe_stats(mconv, probe, args.batch, 1,
                                                                           torch.float32)),
        f"held-out loss and accuracy ({args.heldout} images)": lambda: _timed(
            lambda: heldout(mconv, held, args.batch, 1, torch.float32)),
        "batch-composition check (alone + 2 batchings)": lambda: _timed(
            lambda: sensitivity(mconv, held, args.batch, 1, 1, torch.float32, seed=0, epoch=0)),
    }
    rows = interleaved(list(extras), lambda n: extras[n](), args.repeats, base="mconv epoch")
    print("\nwhat a run adds per epoch and kind, as a fraction of one mconv training epoch over the images above:")
    print_rows(rows, width=48)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
