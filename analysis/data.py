"""Padded batches of differently sized images, with masks.

Three sources, all offline:

* ``synthetic`` -- Gaussian noise images N(0, 1) of random sizes (seeded);
* ``photos``    -- real photographs that ship with scikit-image and matplotlib (see :data:`PHOTOS`);
  nothing is downloaded: every one of them is a file inside the installed packages;
* a folder      -- the user's own images (``.png .jpg .jpeg .tif .tiff .bmp .gif .webp``, sorted by name;
  other files are ignored). A file that cannot be read, or a folder without images, raises
  :class:`DataError` naming the file or folder.

Every image becomes a float32 ``(3, H, W)`` array: grey is repeated to 3 channels, an alpha channel is
dropped, integer images are scaled to [0, 1] first. ``max_side`` shrinks an image (anti-aliased, aspect
ratio kept) so that its longer side is at most ``max_side``; smaller images are never enlarged.

Normalisation (``normalize=``): ``"image"`` (the default) standardises each image on its own, over all its
pixels and channels together (mean 0, variance 1; colour balance within the image is kept). It does not
depend on which other images are loaded or batched, so an image has the same values in a padded batch as
alone, and photos are on the same footing as the N(0, 1) synthetic images. ``"dataset"`` uses one mean and
standard deviation per channel over all loaded images; ``"none"`` keeps [0, 1] (synthetic: N(0, 1)).

A batch (:func:`pad_batch`) puts each image at the top-left corner of a zero canvas as large as the largest
image, rounded up to a multiple of ``2**depth`` (so ``depth`` levels of 2x2 space-to-depth divide it), with a
``(N, 1, H, W)`` float mask that is 1 inside the image and 0 in the padding. :func:`pad_alone` gives one image
padded only to its own size rounded up to ``2**depth``: the reference a padded batch is compared against.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "DataError", "Image", "Batch", "PHOTOS", "IMAGE_SUFFIXES", "NORMALIZE",
    "round_up", "to_rgb_float", "resize_max_side", "normalize_images",
    "synthetic_images", "photo_images", "folder_images", "load_images",
    "pad_batch", "pad_alone", "batches",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
NORMALIZE = ("image", "dataset", "none")


class DataError(ValueError):
    """An image source that cannot be used (unreadable file, empty folder, bad option); the message names it."""


@dataclass
class Image:
    """One image: ``pixels`` is float32 ``(3, H, W)``."""

    name: str
    pixels: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


@dataclass
class Batch:
    """A padded batch: ``x`` ``(N, 3, H, W)`` float32, ``mask`` ``(N, 1, H, W)`` float32 (1 = inside the image).

    ``names`` / ``sizes`` (``(h, w)`` of each image) / ``index`` (position in the loaded image list) are per image.
    """

    x: torch.Tensor
    mask: torch.Tensor
    names: list[str]
    sizes: list[tuple[int, int]]
    index: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.x.shape[2]), int(self.x.shape[3])


# ----------------------------------------------------------------------------------------------- conversion
def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= n``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return int(math.ceil(n / multiple) * multiple)


def to_rgb_float(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Any image array as float32 ``(3, H, W)``: grey -> 3 channels, alpha dropped, integers scaled to [0, 1].

    Accepts ``(H, W)``, ``(H, W, 1|2|3|4)`` (2 = grey + alpha) and, for multi-frame files, ``(F, H, W, C)``
    (the first frame is taken).
    """
    a = np.asarray(array)
    if a.ndim == 4 and a.shape[-1] in (1, 2, 3, 4):  # frames of an animation / multi-page file
        a = a[0]
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[-1] not in (1, 2, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise DataError(f"{name}: not a 2d grey, RGB or RGBA image (array of shape {tuple(np.shape(array))})")
    if a.shape[-1] in (2, 4):  # drop alpha
        a = a[..., :-1]
    if a.dtype == bool:
        a = a.astype(np.float32)
    elif np.issubdtype(a.dtype, np.integer):
        info = np.iinfo(a.dtype)
        a = (a.astype(np.float64) - min(info.min, 0)) / (info.max - min(info.min, 0))
    elif not np.issubdtype(a.dtype, np.floating):
        raise DataError(f"{name}: unsupported pixel type {a.dtype}")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise DataError(f"{name}: the image contains NaN or infinite values")
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def resize_max_side(pixels: np.ndarray, max_side: Optional[int]) -> np.ndarray:
    """Shrink ``(C, H, W)`` so that ``max(H, W) <= max_side`` (anti-aliased, aspect kept); never enlarges."""
    if max_side is None:
        return pixels
    if max_side < 1:
        raise DataError(f"max_side must be >= 1, got {max_side}")
    h, w = pixels.shape[1:]
    if max(h, w) <= max_side:
        return pixels
    scale = max_side / max(h, w)
    new = (max(1, int(round(h * scale))), max(1, int(round(w * scale))))
    from skimage.transform import resize

    out = resize(pixels.transpose(1, 2, 0), new, order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(out.transpose(2, 0, 1).astype(np.float32))


def normalize_images(images: list[Image], how: str = "image", eps: float = 1e-6) -> list[Image]:
    """Standardise the images (see the module docstring); returns new :class:`Image` objects."""
    if how not in NORMALIZE:
        raise DataError(f"normalize must be one of {NORMALIZE}, got {how!r}")
    if how == "none" or not images:
        return list(images)
    out = []
    if how == "image":
        for im in images:
            p = im.pixels.astype(np.float64)
            out.append(Image(im.name, ((p - p.mean()) / max(p.std(), eps)).astype(np.float32)))
        return out
    total = sum(im.pixels.shape[1] * im.pixels.shape[2] for im in images)
    mean = sum(im.pixels.astype(np.float64).sum(axis=(1, 2)) for im in images) / total
    var = sum(((im.pixels.astype(np.float64) - mean[:, None, None]) ** 2).sum(axis=(1, 2)) for im in images) / total
    std = np.maximum(np.sqrt(var), eps)
    for im in images:
        out.append(Image(im.name, ((im.pixels - mean[:, None, None]) / std[:, None, None]).astype(np.float32)))
    return out


# ------------------------------------------------------------------------------------------------- sources
def synthetic_images(
    num_images: int, *, seed: int = 0, max_side: int = 256, min_side: Optional[int] = None
) -> list[Image]:
    """``num_images`` N(0, 1) noise images (float32, 3 channels), each side uniform in ``[min_side, max_side]``
    (``min_side`` defaults to ``max_side // 4``, at least 1). Seeded: the same seed gives the same images."""
    if num_images < 1:
        raise DataError(f"num_images must be >= 1, got {num_images}")
    if max_side < 1:
        raise DataError(f"max_side must be >= 1, got {max_side}")
    lo = max(1, max_side // 4) if min_side is None else int(min_side)
    if not 1 <= lo <= max_side:
        raise DataError(f"min_side must be in [1, max_side={max_side}], got {lo}")
    rng = np.random.default_rng(seed)
    images = []
    for i in range(num_images):
        h, w = (int(v) for v in rng.integers(lo, max_side + 1, size=2))
        images.append(Image(f"noise{i:03d}_{h}x{w}", rng.standard_normal((3, h, w), dtype=np.float32)))
    return images


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle() -> np.ndarray:
    import skimage.data

    return skimage.data.stereo_motorcycle()[0]


def _grace_hopper() -> np.ndarray:
    import matplotlib.cbook
    import matplotlib.pyplot as plt

    return plt.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


#: The bundled photographs, in the order they are loaded (and batched). All are files inside the
#: installed scikit-image / matplotlib packages (checked offline); ``camera`` and ``coins`` are grey.
#: The order mixes square, landscape and portrait images so that every batch of 4 is padded.
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),             # 512 x 512 RGB
    "chelsea": _skimage("chelsea"),                 # 300 x 451 RGB (a cat)
    "grace_hopper": _grace_hopper,                  # 600 x 512 RGB (matplotlib sample data)
    "coffee": _skimage("coffee"),                   # 400 x 600 RGB
    "rocket": _skimage("rocket"),                   # 427 x 640 RGB
    "camera": _skimage("camera"),                   # 512 x 512 grey
    "immunohistochemistry": _skimage("immunohistochemistry"),  # 512 x 512 RGB (microscopy)
    "coins": _skimage("coins"),                     # 303 x 384 grey
    "hubble_deep_field": _skimage("hubble_deep_field"),  # 872 x 1000 RGB
    "motorcycle": _motorcycle,                      # 500 x 741 RGB (stereo_motorcycle, left view)
    "retina": _skimage("retina"),                   # 1411 x 1411 RGB
}


def _first(items: list, num_images: Optional[int], what: str) -> list:
    """The first ``num_images`` of ``items`` (all for ``None``); too many asked for is a :class:`DataError`."""
    if num_images is None:
        return items
    if num_images < 1:
        raise DataError(f"num_images must be >= 1, got {num_images}")
    if num_images > len(items):
        raise DataError(f"num_images={num_images} but only {len(items)} {what}")
    return items[:num_images]


def photo_images(
    names: Optional[Sequence[str]] = None, *, num_images: Optional[int] = None, max_side: Optional[int] = None
) -> list[Image]:
    """The bundled photos (all of :data:`PHOTOS`, or ``names``), the first ``num_images`` of them."""
    names = list(PHOTOS) if names is None else list(names)
    unknown = [n for n in names if n not in PHOTOS]
    if unknown:
        raise DataError(f"unknown photos {unknown}; available: {', '.join(PHOTOS)}")
    names = _first(names, num_images, "bundled photos are available")
    images = []
    for n in names:
        try:
            array = PHOTOS[n]()
        except Exception as exc:  # pragma: no cover - depends on the installed packages
            raise DataError(f"bundled photo {n!r} cannot be loaded offline: {exc}") from exc
        images.append(Image(n, resize_max_side(to_rgb_float(array, n), max_side)))
    return images


def _read_file(path: Path) -> np.ndarray:
    """Read an image file (scikit-image / imageio, then Pillow); :class:`DataError` naming the file on failure."""
    errors = []
    try:
        import skimage.io

        return np.asarray(skimage.io.imread(str(path)))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    try:
        from PIL import Image as PILImage

        with PILImage.open(path) as im:
            return np.asarray(im.convert("RGBA" if "A" in im.getbands() else "RGB"))
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    reason = errors[-1].splitlines()[0] if errors else "unknown error"
    raise DataError(f"cannot read image {path}: {reason}")


def folder_images(
    path: Union[str, os.PathLike], *, num_images: Optional[int] = None, max_side: Optional[int] = None
) -> list[Image]:
    """Images in the folder ``path`` (files with an image suffix, sorted by name; not recursive), or the single
    image file ``path``. The first ``num_images`` of them if given."""
    p = Path(path)
    if p.is_file():
        files = [p]
    elif p.is_dir():
        try:
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        except OSError as exc:
            raise DataError(f"cannot list folder {p}: {exc.strerror or exc}") from exc
        if not files:
            raise DataError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in folder {p}")
    elif p.exists():
        raise DataError(f"{p} is neither a folder nor an image file")
    else:
        raise DataError(f"no such folder or image file: {p}")
    files = _first(files, num_images, f"images are in {p}")
    images = []
    for f in files:
        array = _read_file(f)
        try:
            pixels = to_rgb_float(array, str(f))
        except DataError as exc:
            raise DataError(f"cannot use image {f}: {str(exc).split(': ', 1)[-1]}") from exc
        images.append(Image(f.name, resize_max_side(pixels, max_side)))
    return images


def load_images(
    data: str,
    *,
    num_images: Optional[int] = None,
    max_side: Optional[int] = 256,
    seed: int = 0,
    normalize: str = "image",
) -> list[Image]:
    """Images from ``data``: ``"synthetic"``, ``"photos"`` or a folder / image path, normalised.

    ``num_images=None`` means all photos / all images of the folder, and 8 synthetic images. Synthetic images
    have sides in ``[max_side // 4, max_side]`` (``max_side=None``: 256) and are already N(0, 1): they are
    only re-standardised if ``normalize`` asks for it.
    """
    if normalize not in NORMALIZE:
        raise DataError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if data == "synthetic":
        images = synthetic_images(8 if num_images is None else num_images, seed=seed,
                                  max_side=256 if max_side is None else max_side)
    elif data == "photos":
        images = photo_images(num_images=num_images, max_side=max_side)
    else:
        images = folder_images(data, num_images=num_images, max_side=max_side)
    return normalize_images(images, normalize)


# ------------------------------------------------------------------------------------------------- padding
def pad_batch(
    images: Sequence[Image], depth: int, *, size: Optional[tuple[int, int]] = None,
    index: Optional[Sequence[int]] = None,
) -> Batch:
    """Pad ``images`` top-left onto one zero canvas: the largest height and width, each rounded up to a
    multiple of ``2**depth`` (or ``size``, which must fit them and be such multiples). Mask 1 inside each image."""
    if not images:
        raise ValueError("pad_batch: no images")
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    m = 2**depth
    hmax = max(im.size[0] for im in images)
    wmax = max(im.size[1] for im in images)
    if size is None:
        size = (round_up(hmax, m), round_up(wmax, m))
    H, W = size
    if H < hmax or W < wmax or H % m or W % m:
        raise ValueError(f"pad_batch: size {size} must hold {hmax}x{wmax} and be multiples of 2**depth={m}")
    x = torch.zeros(len(images), 3, H, W, dtype=torch.float32)
    mask = torch.zeros(len(images), 1, H, W, dtype=torch.float32)
    for i, im in enumerate(images):
        h, w = im.size
        x[i, :, :h, :w] = torch.from_numpy(np.ascontiguousarray(im.pixels, dtype=np.float32))
        mask[i, :, :h, :w] = 1.0
    return Batch(x, mask, [im.name for im in images], [im.size for im in images],
                 list(range(len(images))) if index is None else list(index))


def pad_alone(image: Image, depth: int, *, index: int = 0) -> Batch:
    """One image "alone": a batch of 1 padded only to its own size rounded up to ``2**depth``."""
    return pad_batch([image], depth, index=[index])


def batches(images: Sequence[Image], batch_size: int, depth: int) -> Iterator[Batch]:
    """Consecutive padded batches of ``batch_size`` images (the last may be smaller), in order."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(images), batch_size):
        chunk = list(images[start:start + batch_size])
        yield pad_batch(chunk, depth, index=range(start, start + len(chunk)))
