"""Image sources that decode lazily, one image at a time, for :mod:`masked_torch.analysis.loader` to stream.

:func:`open_source` gives an :class:`ImageSource`, a map-style :class:`torch.utils.data.Dataset`: ``source[i]``
decodes image ``i`` only when asked (so ``DataLoader`` worker processes do the decoding), and nothing is held
in memory but the names, the sizes and, for ``normalize="dataset"``, six numbers. Three kinds, all offline:

* ``synthetic`` -- Gaussian noise images N(0, 1), each side uniform in ``[max_side // 4, max_side]``; image
  ``i`` is drawn from a generator seeded with ``(seed, i)`` only, so it does not depend on which other images
  are read, in which order, or in which process;
* ``photos``    -- real photographs that ship with scikit-image and matplotlib (see :data:`PHOTOS`);
  nothing is downloaded: every one of them is a file inside the installed packages;
* a folder      -- the user's own images, read recursively (class sub-folders: ``root/cat/a.jpg`` is named
  ``cat/a.jpg``), sorted by that relative path; files and folders whose name starts with ``.`` are left out,
  and so are files without an image suffix (:data:`IMAGE_SUFFIXES`). A single image file works too.

Every image becomes a float32 ``(3, H, W)`` array: grey is repeated to 3 channels, an alpha channel is
dropped (not blended), a palette is looked up, integer images are scaled to [0, 1] by their type's range
(8 bit by 255, 16 bit by 65535). Files are decoded by Pillow, without applying EXIF orientation; Pillow
reduces 16-bit *colour* PNG and TIFF files to 8 bits per channel (16-bit grey stays 16 bit). ``max_side``
shrinks an image (anti-aliased, aspect ratio kept) so that its longer side is at most ``max_side``; smaller
images are never enlarged; a file at least 4x larger than that is decoded reduced (a JPEG by its decoder's
1/2-1/8 scaling, any file by block means) and then shrunk as the full image would be (:func:`read_image`).
:attr:`ImageSource.sizes` gives every image's size after that shrink without
decoding pixels (the file headers are read; a file Pillow cannot read the header of is decoded).

A file that cannot be decoded is not an error: ``source[i]`` returns a :class:`Skipped` record instead of an
:class:`Image`, and whoever receives it in the main process (the loader, :func:`dataset_stats`) reports it
once per source with a :class:`SkippedImageWarning` (or a callback) and counts it. With ``strict=True`` the
same file is a :class:`DataError` naming it.

Normalisation (``normalize=``): ``"image"`` (the default) standardises each image on its own, over all its
pixels and channels together (mean 0, variance 1; colour balance within the image is kept). It does not
depend on which other images are loaded or batched, so an image has the same values in a padded batch as
alone, and photos are on the same footing as the N(0, 1) synthetic images. ``"dataset"`` uses one mean and
standard deviation per channel over all images of the source: :func:`dataset_stats` computes them in one
streamed pass, and :meth:`ImageSource.set_stats` hands them to the source (``make_loader`` does both).
``"none"`` keeps [0, 1] (synthetic: N(0, 1)).

Batches: :func:`masked_torch.analysis.loader.make_loader` streams a source in padded batches
(:func:`masked_torch.utils.pad_batch`), and :func:`~masked_torch.analysis.loader.crop_alone` gives an image of a
batch alone; ``[source.load(i) for i in range(len(source))]`` holds a (small) source's images in memory.
"""
from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .choices import NORMALIZE
from .moments import Moments, merge_moments

__all__ = [
    "DataError", "SkippedImageWarning", "Image", "Skipped", "Batch", "PHOTOS", "IMAGE_SUFFIXES", "NORMALIZE",
    "round_up", "shrunk_size", "to_rgb_float", "read_image", "resize_max_side", "standardize",
    "paste_masks", "ImageSource", "SyntheticSource", "PhotoSource", "FolderSource", "open_source",
    "list_images", "dataset_stats",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
SYNTHETIC_DEFAULT = 8  # synthetic images when num_images is not given
EPS = 1e-6  # smallest standard deviation divided by


class DataError(ValueError):
    """An image source that cannot be used (unreadable file, empty folder, bad option); the message names it."""


class SkippedImageWarning(UserWarning):
    """An image file that cannot be decoded was skipped (the message names the file and the reason)."""


@dataclass
class Image:
    """One image: ``pixels`` is float32 ``(3, H, W)``; ``mask`` (optional) float32 ``(1 or 3, H, W)``, 1 = valid,
    the image's own validity (a source that carries one, such as ``--preset seed``'s); ``None``: valid everywhere."""

    name: str
    pixels: np.ndarray
    mask: Optional[np.ndarray] = None

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])


@dataclass(frozen=True)
class Skipped:
    """An image that could not be decoded: its index in the source, its name and why."""

    index: int
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass
class Batch:
    """A padded batch: ``x`` ``(N, 3, H, W)`` float32, ``mask`` ``(N, 1, H, W)`` float32 (1 = inside the image;
    ``(N, 3, H, W)`` where the images carry a per-channel mask of their own, :func:`paste_masks`).

    ``names`` / ``sizes`` (``(h, w)`` of each image) / ``index`` (the image's index in its source) are per
    image; ``skipped`` lists the images of this batch that could not be decoded (they are not in ``x``);
    ``batch_index`` is the batch's place in the run (batch ``i`` of the run is on rank ``i % world``).
    """

    x: torch.Tensor
    mask: torch.Tensor
    names: list[str]
    sizes: list[tuple[int, int]]
    index: list[int] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    batch_index: Optional[int] = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.x.shape[2]), int(self.x.shape[3])

    @property
    def padding_fraction(self) -> float:
        """Padded canvas pixels / all canvas pixels of this batch (0 for an empty batch)."""
        canvas = len(self) * self.shape[0] * self.shape[1]
        return 0.0 if canvas == 0 else 1.0 - sum(h * w for h, w in self.sizes) / canvas


# ----------------------------------------------------------------------------------------------- conversion
def paste_masks(x: torch.Tensor, mask: torch.Tensor, masks: Sequence[Optional[np.ndarray]]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch (``x`` ``(N, C, H, W)``, ``mask`` ``(N, 1, H, W)``) with each image's own mask
    (``masks[j]``: ``(1 or C, h, w)`` at the image's place, the canvas origin; ``None``: valid everywhere) put in:
    the mask becomes ``(N, C, H, W)`` if any image's has ``C`` channels, and ``x`` is 0 wherever it is 0 (as
    ``--mask holes`` zeroes its holes)."""
    channels = max((m.shape[0] for m in masks if m is not None), default=1)
    mask = mask.expand(-1, channels, -1, -1).clone()
    for j, m in enumerate(masks):
        if m is not None:
            h, w = m.shape[1:]
            mask[j, :, :h, :w] *= torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)).to(mask.dtype)
    return x * mask, mask


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ``>= n``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    return int(math.ceil(n / multiple) * multiple)


def shrunk_size(h: int, w: int, max_side: Optional[int]) -> tuple[int, int]:
    """The size ``(h, w)`` becomes under :func:`resize_max_side` (longer side at most ``max_side``)."""
    if max_side is None or max(h, w) <= max_side:
        return int(h), int(w)
    scale = max_side / max(h, w)
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def to_rgb_float(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Any image array as float32 ``(3, H, W)``: grey -> 3 channels, alpha dropped, integers scaled to [0, 1].

    Accepts ``(H, W)``, ``(H, W, 1|2|3|4)`` (2 = grey + alpha) and, for multi-frame files, ``(F, H, W, C)``
    (the first frame is taken). Integers are scaled by their type's range: ``uint8`` by 255, ``uint16`` by
    65535; floats are kept as they are.
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
    new = shrunk_size(h, w, max_side)
    from skimage.transform import resize

    out = resize(pixels.transpose(1, 2, 0), new, order=1, anti_aliasing=True, preserve_range=True)
    return np.ascontiguousarray(out.transpose(2, 0, 1).astype(np.float32))


def _shrink_reduced(pixels: np.ndarray, full: tuple[int, int], factor: int, max_side: int) -> np.ndarray:
    """:func:`resize_max_side` of an image of size ``full`` from ``pixels`` ``(C, h, w)``, that image decoded
    reduced by ``factor`` (each pixel the mean of a ``factor x factor`` block, the last ones partial): the same
    anti-aliased shrink, to the same size :func:`shrunk_size` ``(*full, max_side)``. The Gaussian blur is what
    is left of the full image's (variance ``((scale - 1) / 2)**2`` full pixels, ``scale = full / new``) after
    the block mean's (variance ``(factor**2 - 1) / 12``); output pixel ``o`` samples (linear) the full image at
    ``(o + 0.5) * scale - 0.5``, i.e. the reduced image at that minus ``(factor - 1) / 2``, divided by
    ``factor``. On a smooth image this is the full image's shrink to within 1% (tests/test_loader.py)."""
    from scipy import ndimage

    new = shrunk_size(*full, max_side)
    sigma = [math.sqrt(max(0.0, ((n_full / n_new - 1) / 2) ** 2 - (factor * factor - 1) / 12)) / factor
             for n_full, n_new in zip(full, new)]
    coords = [((np.arange(n_new) + 0.5) * (n_full / n_new) - 0.5 - (factor - 1) / 2) / factor
              for n_full, n_new in zip(full, new)]
    grid = np.stack(np.meshgrid(*coords, indexing="ij"))
    out = [ndimage.map_coordinates(ndimage.gaussian_filter(channel.astype(np.float64), sigma, mode="mirror"),
                                   grid, order=1, mode="nearest") for channel in pixels]
    return np.ascontiguousarray(np.stack(out).astype(np.float32))


_AS_IS = {"1", "L", "LA", "RGB", "RGBA", "F", "I;16", "I;16L", "I;16B", "I;16N"}
_CONVERT = {"La": "LA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB", "YCbCr": "RGB", "HSV": "RGB"}


def _pil_array(im) -> np.ndarray:
    """The pixels of an opened Pillow image in a mode :func:`to_rgb_float` understands."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in _CONVERT:
        im = im.convert(_CONVERT[mode])
    elif mode == "I":  # 32-bit integers: Pillow's mode for some 16-bit files; anything wider is refused
        a = np.asarray(im)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise DataError(f"unsupported 32-bit integer image (values {a.min()}..{a.max()}, not 16 bit)")
        return a.astype(np.uint16)
    elif mode not in _AS_IS:
        raise DataError(f"unsupported image mode {mode}")
    a = np.asarray(im)
    return a.astype(a.dtype.newbyteorder("=")) if not a.dtype.isnative else a


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


REDUCED_MARGIN = 2  # a reduced decode keeps the longer side at least this many times max_side
_REDUCIBLE = {"1": "L", "L": "L", "LA": "L", "RGB": "RGB", "RGBA": "RGB", "I": "I", "F": "F", "I;16": "I",
              "I;16L": "I", "I;16B": "I", "I;16N": "I"}  # mode -> the mode it is box-reduced in (alpha dropped)


def _decode_reduced(im, max_side: int) -> tuple:
    """The opened Pillow image ``im`` decoded at a reduced size when it is at least ``2 * REDUCED_MARGIN``
    times larger than ``max_side``: a JPEG by its decoder's DCT scaling (``draft``: 1/2, 1/4 or 1/8; the full
    image is never decoded), then any format by averaging ``f x f`` blocks (``Image.reduce``, integer ``f``)
    so that the longer side stays at least ``REDUCED_MARGIN * max_side``. The anti-aliased shrink to
    ``max_side`` (:func:`_shrink_reduced`) follows on the reduced image. Returns the loaded image and the
    factor it was reduced by (1: not reduced)."""
    w, h = im.size
    keep = REDUCED_MARGIN * max_side
    factor = 1
    if im.format == "JPEG" and max(h, w) // keep >= 2:
        f = max(h, w) // keep
        drafted = im.draft(None, (max(1, -(-w // f)), max(1, -(-h // f))))  # a size at least w / f, h / f
        if drafted is not None:  # (mode, (0, 0, w / scale, h / scale)), scale 1, 2, 4 or 8
            factor = round(w / drafted[1][2])
    im.load()  # a truncated file fails here, not later
    f = max(im.size) // keep
    if f >= 2:
        if im.mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif im.mode in _CONVERT:
            im = im.convert(_CONVERT[im.mode])
        if im.mode in _REDUCIBLE:
            if im.mode != _REDUCIBLE[im.mode]:
                im = im.convert(_REDUCIBLE[im.mode])  # exact: alpha dropped (as always), 16 bit held in 32
            im, factor = im.reduce(f), factor * f
    return im, factor


def read_image(path: Union[str, os.PathLike], max_side: Optional[int] = None) -> np.ndarray:
    """Decode an image file into an array ``(H, W[, C])`` of its own pixel type (Pillow; for a TIFF file Pillow
    cannot read, tifffile where installed). :class:`DataError` with the reason on failure (the caller names
    the file). With ``max_side``, a file much larger than that is decoded reduced (:func:`_decode_reduced`):
    a 10000 x 10000 JPEG shrunk to 256 is never held at full size (0.25 GB and 1 s instead of 3.9 GB and
    minutes; a PNG is decoded whole by Pillow, 0.3 GB, but never converted at full size)."""
    return _read_image(path, max_side)[0]


def _read_image(path: Union[str, os.PathLike], max_side: Optional[int] = None) -> tuple[np.ndarray, tuple, int]:
    """:func:`read_image`, the image's full ``(h, w)`` (its size in the file) and the factor it was decoded
    reduced by (1: full size)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            full, factor = (im.size[1], im.size[0]), 1
            if max_side is None:
                im.load()  # a truncated file fails here, not later
            else:
                im, factor = _decode_reduced(im, max_side)
            return _pil_array(im), full, factor
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoder error is a reason to skip the file
        first = exc
    if Path(path).stat().st_size == 0:
        raise DataError("empty file (0 bytes)")
    if Path(path).suffix.lower() in (".tif", ".tiff"):  # compressions / layouts Pillow does not read
        try:
            import tifffile

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = np.asarray(tifffile.imread(path, key=0))
            return a, a.shape[:2], 1  # full size (the size is only used for a reduced image)
        except Exception:  # noqa: BLE001 - not installed or not readable either: report Pillow's reason
            pass
    raise DataError(f"{type(first).__name__}: {_reason(first)}")


def _header_size(path: Path) -> tuple[int, int]:
    """``(h, w)`` of an image file from its header (Pillow, lazy), or by decoding it; :class:`DataError`."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception:  # noqa: BLE001 - Pillow cannot read the header: decode (and fail with the reason)
        shape = to_rgb_float(read_image(path), str(path)).shape
        return int(shape[1]), int(shape[2])


# ---------------------------------------------------------------------------------------------- normalising
def standardize(pixels: np.ndarray, eps: float = EPS) -> np.ndarray:
    """``(pixels - mean) / std`` over all pixels and channels of one image (float64 statistics), float32."""
    p = pixels.astype(np.float64)
    return ((p - p.mean()) / max(p.std(), eps)).astype(np.float32)


def _apply_stats(pixels: np.ndarray, mean: np.ndarray, std: np.ndarray, eps: float = EPS) -> np.ndarray:
    std = np.maximum(np.asarray(std, np.float64), eps)
    return ((pixels - np.asarray(mean, np.float64)[:, None, None]) / std[:, None, None]).astype(np.float32)


# ------------------------------------------------------------------------------------------------- sources
class ImageSource(Dataset):
    """A map-style dataset of images that decodes lazily: ``source[i]`` is an :class:`Image` (float32
    ``(3, H, W)``, shrunk to ``max_side`` and normalised) or a :class:`Skipped` record for a file that cannot be
    decoded. ``names`` (one per image) are known at once; ``sizes`` (``(h, w)`` after the shrink) are read
    from the file headers on first use, and files whose header cannot be read either are listed in
    ``unreadable`` (index -> reason; their size is ``(0, 0)``). Pickles (for ``spawn`` workers) with its
    sizes and dataset statistics.

    Subclasses provide ``_decode(i)`` (float32 ``(3, H, W)`` before the shrink), ``_header(i)`` (``(h, w)``
    before the shrink) and ``location(i)`` (what an error message names).
    """

    kind = "images"

    def __init__(self, names: Sequence[str], *, max_side: Optional[int], normalize: str, strict: bool):
        if normalize not in NORMALIZE:
            raise DataError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        if max_side is not None and max_side < 1:
            raise DataError(f"max_side must be >= 1, got {max_side}")
        self.names: list[str] = list(names)
        self.max_side = max_side
        self.normalize = normalize
        self.strict = bool(strict)
        self.stats: Optional[tuple[np.ndarray, np.ndarray]] = None  # (mean[3], std[3]) for "dataset"
        self._sizes: Optional[list[tuple[int, int]]] = None
        self._unreadable: dict[int, str] = {}
        self._reported: set[str] = set()  # names already reported (main process only; shared by copies)

    # -- what subclasses provide
    def _decode(self, i: int) -> np.ndarray:
        raise NotImplementedError

    def _header(self, i: int) -> tuple[int, int]:
        raise NotImplementedError

    def location(self, i: int) -> str:
        """What an error message names for image ``i`` (a file path, or the image's name)."""
        return self.names[i]

    def _mask(self, i: int) -> Optional[np.ndarray]:
        """Image ``i``'s own mask, float32 ``(1 or 3, H, W)`` at the size :meth:`_decode` gives (``None``: valid
        everywhere, every source but one)."""
        return None

    # -- the dataset
    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} images, max_side={self.max_side}, "
                f"normalize={self.normalize!r}, strict={self.strict})")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reported"] = set()
        return state

    @property
    def sizes(self) -> list[tuple[int, int]]:
        """``(h, w)`` of every image after the ``max_side`` shrink, from the file headers (computed once)."""
        if self._sizes is None:
            sizes, unreadable = [], {}
            for i in range(len(self)):
                try:
                    h, w = self._header(i)
                    sizes.append(shrunk_size(h, w, self.max_side))
                except Exception as exc:  # noqa: BLE001 - reported as a skipped image
                    reason = _reason(exc)
                    if self.strict:
                        raise DataError(f"cannot read image {self.location(i)}: {reason}") from exc
                    sizes.append((0, 0))
                    unreadable[i] = reason
            self._sizes, self._unreadable = sizes, unreadable
        return self._sizes

    @property
    def unreadable(self) -> dict[int, str]:
        """Images whose size could not be read (their header nor their pixels): index -> reason."""
        self.sizes  # noqa: B018 - computes them
        return dict(self._unreadable)

    def set_stats(self, mean: Sequence[float], std: Sequence[float]) -> "ImageSource":
        """Use ``mean[3]`` / ``std[3]`` (from :func:`dataset_stats`) for ``normalize="dataset"``; returns self."""
        mean, std = np.asarray(mean, np.float64).reshape(-1), np.asarray(std, np.float64).reshape(-1)
        if mean.shape != (3,) or std.shape != (3,) or not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise DataError(f"dataset statistics must be 3 finite means and 3 finite stds, got {mean}, {std}")
        self.stats = (mean, std)
        return self

    def with_normalize(self, normalize: str) -> "ImageSource":
        """A copy that normalises differently (sharing the sizes and what was reported)."""
        if normalize not in NORMALIZE:
            raise DataError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
        other = object.__new__(type(self))
        other.__dict__.update(self.__dict__)  # not copy.copy: that goes through __getstate__
        other.normalize = normalize
        return other

    def load(self, i: int) -> Image:
        """Image ``i``, decoded, shrunk and normalised; :class:`DataError` naming it when it cannot be decoded."""
        if not 0 <= i < len(self):
            raise IndexError(f"image index {i} out of range for {len(self)} images")
        if self.normalize == "dataset" and self.stats is None:
            raise DataError("normalize='dataset' needs the dataset statistics first: "
                            "source.set_stats(*dataset_stats(source)) (make_loader does this)")
        try:
            pixels = resize_max_side(self._decode(i), self.max_side)
        except Exception as exc:  # noqa: BLE001 - any decoder error names the file
            raise DataError(f"cannot read image {self.location(i)}: {_reason(exc)}") from exc
        mask = self._mask(i)
        if mask is not None and mask.shape[1:] != pixels.shape[1:]:
            raise DataError(f"image {self.location(i)}: its mask {mask.shape[1:]} does not fit its pixels "
                            f"{pixels.shape[1:]} (a source with masks is not shrunk: max_side=None)")
        if self.normalize == "image":
            pixels = standardize(pixels)
        elif self.normalize == "dataset":
            pixels = _apply_stats(pixels, *self.stats)
        return Image(self.names[i], pixels, mask)

    def __getitem__(self, i: int) -> Union[Image, Skipped]:
        if self._sizes is not None and i in self._unreadable:
            return Skipped(i, self.names[i], self._unreadable[i])
        try:
            return self.load(i)
        except DataError as exc:
            if exc.__cause__ is None:  # not a decoding failure: a misuse, raise it
                raise
            return Skipped(i, self.names[i], _reason(exc.__cause__))

    def report(self, record: Skipped, on_skip: Optional[Callable[[Skipped], None]] = None) -> None:
        """Deal with a skipped image in the main process: with ``strict`` a :class:`DataError` naming the file;
        otherwise report it once per source (``on_skip(record)``, or a :class:`SkippedImageWarning`)."""
        if self.strict:
            raise DataError(f"cannot read image {self.location(record.index)}: {record.reason}")
        if record.name in self._reported:
            return
        self._reported.add(record.name)
        if on_skip is not None:
            on_skip(record)
        else:
            warnings.warn(f"skipped image {self.location(record.index)}: {record.reason}", SkippedImageWarning,
                          stacklevel=3)


class SyntheticSource(ImageSource):
    """``num_images`` N(0, 1) noise images, each side uniform in ``[min_side, max_side]``; image ``i`` is drawn
    from ``numpy.random.default_rng((seed, i))``: its size first, then its pixels. Named ``noise007_53x60``."""

    kind = "synthetic"

    def __init__(self, num_images: int = SYNTHETIC_DEFAULT, *, seed: int = 0, max_side: int = 256,
                 min_side: Optional[int] = None, normalize: str = "image", strict: bool = False):
        if num_images < 1:
            raise DataError(f"num_images must be >= 1, got {num_images}")
        if max_side < 1:
            raise DataError(f"max_side must be >= 1, got {max_side}")
        lo = max(1, max_side // 4) if min_side is None else int(min_side)
        if not 1 <= lo <= max_side:
            raise DataError(f"min_side must be in [1, max_side={max_side}], got {lo}")
        if seed < 0:
            raise DataError(f"seed must be >= 0 for synthetic images, got {seed}")
        self.seed, self.min_side = int(seed), lo
        self._raw_sizes = [self._draw_size(np.random.default_rng((self.seed, i)), max_side)
                           for i in range(num_images)]
        names = [f"noise{i:03d}_{h}x{w}" for i, (h, w) in enumerate(self._raw_sizes)]
        super().__init__(names, max_side=max_side, normalize=normalize, strict=strict)

    def _draw_size(self, rng: np.random.Generator, max_side: int) -> tuple[int, int]:
        h, w = (int(v) for v in rng.integers(self.min_side, max_side + 1, size=2))
        return h, w

    def _header(self, i: int) -> tuple[int, int]:
        return self._raw_sizes[i]

    def _decode(self, i: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        h, w = self._draw_size(rng, self.max_side)
        return rng.standard_normal((3, h, w), dtype=np.float32)


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

#: The file each photo is read from, for its size without decoding it (skimage.data's folder unless noted).
_PHOTO_FILES = {
    "astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.jpg",
    "camera": "camera.png", "immunohistochemistry": "ihc.png", "coins": "coins.png",
    "hubble_deep_field": "hubble_deep_field.jpg", "motorcycle": "motorcycle_left.png", "retina": "retina.jpg",
}


def _photo_file(name: str) -> Optional[Path]:
    if name == "grace_hopper":
        import matplotlib

        path = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    elif name in _PHOTO_FILES:
        import skimage.data

        path = Path(skimage.data.__file__).parent / _PHOTO_FILES[name]
    else:
        return None
    return path if path.is_file() else None


def _first(items: list, num_images: Optional[int], what: str) -> list:
    """The first ``num_images`` of ``items`` (all for ``None``); too many asked for is a :class:`DataError`."""
    if num_images is None:
        return items
    if num_images < 1:
        raise DataError(f"num_images must be >= 1, got {num_images}")
    if num_images > len(items):
        raise DataError(f"num_images={num_images} but only {len(items)} {what}")
    return items[:num_images]


class PhotoSource(ImageSource):
    """The bundled photos (all of :data:`PHOTOS`, or ``names``), the first ``num_images`` of them."""

    kind = "photos"

    def __init__(self, names: Optional[Sequence[str]] = None, *, num_images: Optional[int] = None,
                 max_side: Optional[int] = 256, normalize: str = "image", strict: bool = False):
        names = list(PHOTOS) if names is None else list(names)
        unknown = [n for n in names if n not in PHOTOS]
        if unknown:
            raise DataError(f"unknown photos {unknown}; available: {', '.join(PHOTOS)}")
        super().__init__(_first(names, num_images, "bundled photos are available"), max_side=max_side,
                         normalize=normalize, strict=strict)

    def location(self, i: int) -> str:
        return f"bundled photo {self.names[i]!r}"

    def _decode(self, i: int) -> np.ndarray:
        return to_rgb_float(PHOTOS[self.names[i]](), self.names[i])

    def _header(self, i: int) -> tuple[int, int]:
        path = _photo_file(self.names[i])
        if path is not None:
            return _header_size(path)
        shape = self._decode(i).shape
        return int(shape[1]), int(shape[2])


def list_images(root: Union[str, os.PathLike]) -> list[str]:
    """The image files under the folder ``root``, recursively, as paths relative to it with ``/``, sorted;
    hidden files and folders (name starting with ``.``) and files without an image suffix left out."""
    root = Path(root)
    found: list[str] = []

    def fail(exc: OSError) -> None:
        raise DataError(f"cannot list folder {exc.filename or root}: {exc.strerror or exc}") from exc

    for folder, dirs, files in os.walk(root, onerror=fail):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(folder).relative_to(root)
        for f in files:
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES:
                found.append((rel / f).as_posix())
    return sorted(found)


class FolderSource(ImageSource):
    """The images under a folder (recursively, see :func:`list_images`), or the single image file ``path``;
    the first ``num_images`` of them. Names are the paths relative to the folder (the file name for a file),
    as valid UTF-8 text: a byte of a file name that is not UTF-8 is written ``\\xNN``
    (:func:`~masked_torch.analysis.files.safe_text`: ``b'caf\\xe9.png'`` is named ``caf\\xe9.png``); the file
    is opened by its own name."""

    kind = "folder"

    def __init__(self, path: Union[str, os.PathLike], *, num_images: Optional[int] = None,
                 max_side: Optional[int] = 256, normalize: str = "image", strict: bool = False):
        p = Path(path)
        if p.is_file():
            root, names = p.parent, [p.name]
        elif p.is_dir():
            root, names = p, list_images(p)
            if not names:
                raise DataError(f"no images ({' '.join(IMAGE_SUFFIXES)}) in folder {p} or its sub-folders")
        elif p.exists():
            raise DataError(f"{p} is neither a folder nor an image file")
        else:
            raise DataError(f"no such folder or image file: {p}")
        from .files import safe_text

        self.root = root
        self.files = _first(names, num_images, f"images are in {p}")
        super().__init__([safe_text(n) for n in self.files], max_side=max_side, normalize=normalize, strict=strict)

    def path(self, i: int) -> Path:
        return self.root / self.files[i]

    def location(self, i: int) -> str:
        return str(self.path(i))

    def _decode(self, i: int) -> np.ndarray:
        array, full, factor = _read_image(self.path(i), self.max_side)  # a large file decoded reduced
        pixels = to_rgb_float(array, self.names[i])
        return pixels if factor == 1 else _shrink_reduced(pixels, full, factor, self.max_side)

    def _header(self, i: int) -> tuple[int, int]:
        return _header_size(self.path(i))


def open_source(
    data: Union[str, os.PathLike],
    *,
    num_images: Optional[int] = None,
    max_side: Optional[int] = 256,
    seed: int = 0,
    normalize: str = "image",
    strict: bool = False,
) -> ImageSource:
    """The images of ``data``: ``"synthetic"``, ``"photos"`` or a folder / image file, decoded lazily.

    ``num_images=None`` means all photos / all images of the folder, and 8 synthetic images. Synthetic images
    have sides in ``[max_side // 4, max_side]`` (``max_side=None``: 256) and are already N(0, 1): they are
    only re-standardised if ``normalize`` asks for it. ``seed`` only matters for synthetic images. With
    ``normalize="dataset"`` the statistics are not computed here: :func:`dataset_stats` streams them (the
    loader of :mod:`masked_torch.analysis.loader` does this when it is made).
    """
    if normalize not in NORMALIZE:
        raise DataError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    if data == "synthetic":
        return SyntheticSource(SYNTHETIC_DEFAULT if num_images is None else num_images, seed=seed,
                               max_side=256 if max_side is None else max_side, normalize=normalize, strict=strict)
    if data == "photos":
        return PhotoSource(num_images=num_images, max_side=max_side, normalize=normalize, strict=strict)
    return FolderSource(data, num_images=num_images, max_side=max_side, normalize=normalize, strict=strict)


# ------------------------------------------------------------------------------------------- dataset stats
def _image_moments(pixels: np.ndarray) -> np.ndarray:
    """The per-channel moments of one ``(C, H, W)`` image, float64, packed as
    :meth:`~masked_torch.analysis.moments.Moments.to_tensor` lays them out (``(6, C)``: count, mean, m2, min,
    max, zeros), as numpy: a worker hands it over pickled, not as a shared-memory tensor."""
    p = pixels.reshape(pixels.shape[0], -1).astype(np.float64)
    mean = p.mean(axis=1)
    return np.stack([np.full_like(mean, p.shape[1]), mean, ((p - mean[:, None]) ** 2).sum(axis=1),
                     p.min(axis=1), p.max(axis=1), (p == 0).sum(axis=1).astype(np.float64)])


class _MomentsCollate:
    """Collate for :func:`dataset_stats`: per image its packed moments (computed in the worker) or its record."""

    def __call__(self, items: list) -> list:
        return [item if isinstance(item, Skipped) else _image_moments(item.pixels) for item in items]


def dataset_stats(
    source: ImageSource,
    *,
    workers: int = 0,
    batch_size: int = 8,
    on_skip: Optional[Callable[[Skipped], None]] = None,
    start_method: Optional[str] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean[3], std[3])`` (float64, population std) over every pixel of every image of
    ``source`` before normalisation (after the ``max_side`` shrink), in one streamed pass: ``workers`` worker
    processes decode and reduce each image to its moments, which are merged in image order (Chan et al.), so
    the result does not depend on ``workers`` or ``batch_size``. Images that cannot be decoded are reported
    (see :meth:`ImageSource.report`) and left out; with ``strict`` they are a :class:`DataError`."""
    if batch_size < 1 or workers < 0:
        raise ValueError(f"batch_size must be >= 1 and workers >= 0, got {batch_size} and {workers}")
    raw = source.with_normalize("none")
    unreadable = raw.unreadable
    for i, reason in unreadable.items():
        raw.report(Skipped(i, raw.names[i], reason), on_skip)
    readable = [i for i in range(len(raw)) if i not in unreadable]
    loader = DataLoader(raw, batch_size=batch_size, sampler=readable, collate_fn=_MomentsCollate(),
                        num_workers=workers, persistent_workers=False, prefetch_factor=2 if workers else None,
                        multiprocessing_context=start_method if workers else None)
    total = Moments.empty(3)
    for part in loader:
        for item in part:
            if isinstance(item, Skipped):
                raw.report(item, on_skip)
            else:
                total = merge_moments(total, Moments.from_tensor(torch.from_numpy(item)))
    if not bool((total.count > 0).all()):
        raise DataError(f"no readable image to compute dataset statistics from ({len(raw)} images, all skipped)")
    return total.mean.numpy(), total.std.numpy()
