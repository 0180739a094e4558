"""Labelled images for the training experiment (:mod:`masked_torch.analysis.train_loop`), held in memory.

* ``shapes`` (the default; nothing is downloaded): small filled shapes of one class scattered over a plain
  background -- horizontal bars, vertical bars or disks, the label -- drawn with scikit-image's
  ``skimage.draw.polygon`` / ``ellipse`` (:func:`draw_shape`). Each side of an image is uniform in
  ``[min_side, max_side]`` (24-160 by default: aspect ratios up to 6.7), drawn from its own generator, seeded
  ``(seed, i, 0)``, *before and apart from* the label (``(seed, i, 1)``): **the label cannot be guessed from the
  image size**, which the padding of a batch tells a plain network. The shapes have the same sizes in every image
  and their number grows with the image's area, so a CNN has to learn the label from the content. (One large
  rotated rectangle, ellipse or triangle per image, as ``skimage.draw.random_shapes`` draws, was not learned
  above chance by the small CNN in the few hundred steps a CPU run affords; a bar's orientation and a disk are.
  The plain network also meets the padding's own horizontal and vertical edges here, which look like a bar's.)
* ``--data FOLDER``: one sub-folder per class (``root/cat/a.jpg`` is class ``cat``; images further down count for
  their top folder), decoded by the suite's reader (:class:`~masked_torch.analysis.data.FolderSource`: any
  format it reads, ``max_side`` shrink, unreadable files skipped with a warning). A folder with fewer than two
  classes, a class without images, a class with one image, or an image outside a class folder is a
  :class:`~masked_torch.analysis.data.DataError` from :func:`folder_classes`, which only lists files (called
  before any work).

Every image is standardised on its own (mean 0, variance 1 over its pixels and channels:
:func:`~masked_torch.analysis.data.standardize`), as the suite's default, so it has the same values alone as in any
batch. :func:`holdout_split` holds out, per class, the images whose names hash lowest (CRC-32): the same split for
every seed and run, and adding images to a class never moves an old one between the parts.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from masked_torch.utils import pad_batch

from .data import DataError, FolderSource, Skipped, list_images, standardize

__all__ = ["IGNORE", "SHAPES", "Labelled", "shape_size", "shape_label", "draw_shape", "shapes_data", "folder_classes",
           "folder_data", "pad", "lowest_hashes", "holdout_split", "load_data"]

#: A target that is not predicted (``F.cross_entropy``'s ``ignore_index``): a document's last byte, the padding.
IGNORE = -100

#: The classes of the default data, in label order.
SHAPES = ("horizontal_bar", "vertical_bar", "disk")


@dataclass
class Labelled:
    """Images ``(3, h, w)`` float32 with their labels (indices into ``classes``) and names."""

    names: list[str]
    images: list[torch.Tensor]
    labels: list[int]
    classes: tuple[str, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason) of unreadable files

    def __len__(self) -> int:
        return len(self.images)

    @property
    def sizes(self) -> list[tuple[int, int]]:
        return [(int(x.shape[1]), int(x.shape[2])) for x in self.images]

    def subset(self, index: Sequence[int]) -> "Labelled":
        return Labelled([self.names[i] for i in index], [self.images[i] for i in index],
                        [self.labels[i] for i in index], self.classes)

    def batch(self, index: Sequence[int], multiple: int, dtype: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x, mask, labels)``: images ``index`` padded with zeros at the origin of a canvas of the largest
        image's size rounded up to ``multiple`` (:func:`masked_torch.utils.pad_batch`), ``x`` and the mask in
        ``dtype``, and their labels ``(N,)``."""
        x, mask = pad([self.images[i] for i in index], multiple, dtype)
        return x, mask, torch.tensor([self.labels[i] for i in index])

    def compare(self, i: int, alone: torch.Tensor, batched: torch.Tensor, canvas: Sequence[int]) -> dict:
        """One row of the batch-composition check (:func:`~masked_torch.analysis.train_measure.sensitivity`):
        image ``i``'s logits alone and inside a batch of canvas ``(H, W)``, both float64."""
        h, w = self.images[i].shape[1:]
        H, W = canvas
        return dict(image=self.names[i], label=self.labels[i], h=int(h), w=int(w), batch_h=int(H), batch_w=int(W),
                    pad_fraction=1.0 - h * w / (H * W), pred_alone=int(alone.argmax()), pred=int(batched.argmax()),
                    max_logit_change=float((batched - alone).abs().max()))

    def split(self, fraction: float) -> tuple[list[int], list[int]]:
        """:func:`holdout_split`."""
        return holdout_split(self, fraction)


def pad(tensors: Sequence[torch.Tensor], multiple: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, mask)`` of ``tensors`` ``(C, *spatial)`` padded with zeros at the origin
    (:func:`masked_torch.utils.pad_batch`), both in ``dtype``."""
    x, mask = pad_batch(list(tensors), multiple)
    return x.to(dtype), mask.to(dtype)


# ------------------------------------------------------------------------------------------------ shapes
def shape_size(seed: int, i: int, min_side: int = 24, max_side: int = 160) -> tuple[int, int]:
    """``(h, w)`` of shapes image ``i``: each side uniform in ``[min_side, max_side]``, from a generator of its own
    (``(seed, i, 0)``) that the label never reads."""
    rng = np.random.default_rng([seed, i, 0])
    h, w = rng.integers(min_side, max_side + 1, size=2)
    return int(h), int(w)


def shape_label(seed: int, i: int, classes: int = len(SHAPES)) -> int:
    """The label of shapes image ``i``, uniform over the classes, from its own generator ``(seed, i, 1)``."""
    return int(np.random.default_rng([seed, i, 1]).integers(classes))


def draw_shape(label: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(3, h, w)`` float32 image in [0, 1]: a background colour and ``max(1, round(h w / 300))`` shapes of
    class ``SHAPES[label]`` in the opposite colour (each channel shifted by 0.5, modulo 1), placed at random (they
    may overlap), then noise of standard deviation 0.03. A bar is 8-16 pixels long and a third of that wide
    (``horizontal_bar``: long side along the width; ``vertical_bar``: along the height); a disk has a radius of 3-6
    pixels. The number of shapes grows with the area, so how crowded an image is says nothing about its label."""
    from skimage.draw import ellipse, polygon

    back = rng.uniform(0, 1, size=3)
    fore = (back + 0.5) % 1.0
    image = np.empty((3, h, w), np.float64)
    image[:] = back[:, None, None]
    name = SHAPES[label]
    for _ in range(max(1, round(h * w / 300))):
        long = rng.uniform(8, 16)
        if name == "horizontal_bar":
            ry, rx = long / 6, long / 2
        elif name == "vertical_bar":
            ry, rx = long / 2, long / 6
        else:
            ry = rx = rng.uniform(3, 6)
        ry, rx = min(ry, h / 2), min(rx, w / 2)
        cy, cx = rng.uniform(ry, h - ry), rng.uniform(rx, w - rx)
        if name == "disk":
            rr, cc = ellipse(cy, cx, ry, rx, shape=(h, w))
        else:
            rr, cc = polygon(np.array([cy - ry, cy - ry, cy + ry, cy + ry]),
                             np.array([cx - rx, cx + rx, cx + rx, cx - rx]), shape=(h, w))
        image[:, rr, cc] = fore[:, None]
    image += rng.normal(0, 0.03, size=image.shape)
    return image.astype(np.float32)


def shapes_data(num_images: int, seed: int = 0, min_side: int = 24, max_side: int = 160) -> Labelled:
    """The default data: ``num_images`` shapes images (see the module docstring); image ``i`` depends on
    ``(seed, i)`` only."""
    if not 2 <= min_side <= max_side:
        raise DataError(f"shapes: sides must satisfy 2 <= min_side <= max_side, got {min_side}, {max_side}")
    names, images, labels = [], [], []
    for i in range(num_images):
        h, w = shape_size(seed, i, min_side, max_side)
        label = shape_label(seed, i)
        pixels = draw_shape(label, h, w, np.random.default_rng([seed, i, 2]))
        names.append(f"{SHAPES[label]}/{i:05d}")
        images.append(torch.from_numpy(standardize(pixels)))
        labels.append(label)
    return Labelled(names, images, labels, SHAPES)


# ------------------------------------------------------------------------------------------------ a folder
def folder_classes(root) -> tuple[list[str], list[str]]:
    """``(classes, files)`` of a class folder: the sorted sub-folder names (hidden ones left out), and every image
    file below them (paths relative to ``root``, :func:`~masked_torch.analysis.data.list_images`). Lists files
    only (nothing decoded). :class:`DataError`, one line, for: not a folder, an image outside a class folder,
    fewer than two classes, a class with fewer than two images (one to train on, one held out)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"--data {root}: not a folder (give a folder with one sub-folder of images per class)")
    files = list_images(root)
    loose = [f for f in files if "/" not in f]
    if loose:
        raise DataError(f"--data {root}: image {loose[0]!r} is not in a class sub-folder (one sub-folder per class)")
    classes = sorted(d.name for d in os.scandir(root) if d.is_dir() and not d.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"--data {root}: {len(classes)} class sub-folder(s) ({', '.join(classes) or 'none'}); "
                        f"classification needs at least 2")
    counts = {c: 0 for c in classes}
    for f in files:
        counts[f.split("/", 1)[0]] += 1
    few = [c for c in classes if counts[c] < 2]
    if few:
        raise DataError(f"--data {root}: class {few[0]!r} has {counts[few[0]]} image(s); every class needs at "
                        f"least 2 (one to train on, one held out)")
    return classes, files


def folder_data(root, max_side: Optional[int] = 160, strict: bool = False) -> Labelled:
    """Every image of a class folder (:func:`folder_classes`), decoded and shrunk by the suite's reader;
    unreadable files skipped (a warning each, listed in ``skipped``) unless ``strict``."""
    classes, _ = folder_classes(root)
    source = FolderSource(root, max_side=max_side, normalize="image", strict=strict)
    index = {c: k for k, c in enumerate(classes)}
    out = Labelled([], [], [], tuple(classes))
    for i in range(len(source)):
        item = source[i]
        if isinstance(item, Skipped):
            source.report(item)
            out.skipped.append((item.name, item.reason))
            continue
        out.names.append(item.name)
        out.images.append(torch.from_numpy(np.ascontiguousarray(item.pixels)))
        out.labels.append(index[source.files[i].split("/", 1)[0]])
    left = {c: 0 for c in classes}
    for label in out.labels:
        left[classes[label]] += 1
    few = [c for c in classes if left[c] < 2]
    if few:
        raise DataError(f"--data {root}: class {few[0]!r} has {left[few[0]]} readable image(s); every class needs "
                        f"at least 2")
    return out


# ------------------------------------------------------------------------------------------------ the split
def _name_hash(name: str) -> int:
    return zlib.crc32(name.encode("utf-8", "surrogateescape"))


def lowest_hashes(members: Sequence[int], names: Sequence[str], fraction: float) -> list[int]:
    """The ``round(fraction * n)`` of the ``n`` indices ``members`` (at least 1, at most n - 1) whose
    ``names[i]`` hash lowest (CRC-32, ties by name): the held-out part of a split by name."""
    k = min(len(members) - 1, max(1, round(fraction * len(members))))
    return sorted(members, key=lambda i: (_name_hash(names[i]), names[i]))[:k]


def holdout_split(data: Labelled, fraction: float) -> tuple[list[int], list[int]]:
    """``(train, held_out)`` indices: per class, the ``round(fraction * n)`` images (at least 1, at most n - 1)
    whose names hash lowest (CRC-32, ties by name) are held out. Both lists in index order."""
    if not 0 < fraction < 1:
        raise DataError(f"held-out fraction must be in (0, 1), got {fraction}")
    held: set[int] = set()
    for label in range(len(data.classes)):
        members = [i for i, y in enumerate(data.labels) if y == label]
        if len(members) < 2:
            raise DataError(f"class {data.classes[label]!r} has {len(members)} image(s); every class needs at "
                            f"least 2 (one to train on, one held out)")
        held.update(lowest_hashes(members, data.names, fraction))
    train = [i for i in range(len(data)) if i not in held]
    return train, sorted(held)


def load_data(data: str, *, num_images: int, seed: int = 0, min_side: int = 24, max_side: int = 160,
              strict: bool = False) -> Labelled:
    """``"shapes"`` (``num_images`` of them, data seed ``seed``) or a class folder (every image; ``max_side``
    shrinks larger ones)."""
    if data == "shapes":
        return shapes_data(num_images, seed, min_side, max_side)
    return folder_data(data, max_side=max_side, strict=strict)
