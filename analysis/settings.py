"""One :class:`Settings`: everything that determines a run, checked once, when it is made.

The command line (:mod:`masked_torch.analysis.cli`) and the sweep (:mod:`masked_torch.analysis.sweep`) both
build their runs from it: the command line from parsed flags, the sweep from grid values given as text
(:meth:`Settings.from_text`). A value that is out of range or not among the choices raises
:class:`SettingsError` (a ``ValueError``) with one line naming the setting, the value and what it takes; nothing
later checks settings again. Torch-free, so ``--help`` and flag checking stay instant.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Optional

from .choices import ACTIVATION_NAMES, INITS, MASKS, MODEL_NAMES, NORMALIZE, STACKS

__all__ = ["Settings", "SettingsError", "IGNORED_BY_MODEL", "check_depth", "deepest"]

#: The settings a model does not use, by model. A run's rows carry ``<NA>`` for them (the parquet metadata
#: keeps the settings as given). The ResNet-18's depth is fixed (five resolution levels); its ``bias`` is only
#: that of ``fc``, which is not a recorded layer (the recorder takes convolutions, norms and activations), so no
#: row depends on it.
IGNORED_BY_MODEL: dict[str, tuple[str, ...]] = {"resnet18": ("depth", "bias")}


class SettingsError(ValueError):
    """A setting with a value it does not take (one line: the setting, the value, what it takes)."""


#: Models whose ``depth`` halves the image ``depth`` times (the canvas is a multiple of ``2**depth``).
_HALVING = ("stack", "unet")


def deepest(side: int) -> int:
    """The deepest ``depth`` for images of at most ``side`` pixels a side: the level at which such an image
    is one position (``2**depth >= side``), at least 1. Every level deeper only doubles the padded canvas."""
    return max(1, (int(side) - 1).bit_length())


def check_depth(model: str, depth: int, side: int, what: str = "max_side") -> None:
    """:class:`SettingsError` (one line, with the limit) if ``depth`` is deeper than :func:`deepest` for
    ``side``, the longest side an image of the run can have (``max_side``, or the largest image's when nothing
    shrinks them). The stack and the U-Net halve the image ``depth`` times, so every batch canvas is a multiple
    of ``2**depth`` pixels a side: beyond the images' own size a canvas is padding and grows as ``4**depth``
    (``--depth 20``: 2**20 pixels a side, terabytes). The ResNet-18's depth is fixed: nothing to check."""
    limit = deepest(side)
    if model not in _HALVING or depth <= limit:
        return
    raise SettingsError(
        f"setting 'depth' {depth} is too deep for images of at most {side} pixels a side ({what}): the {model} "
        f"halves the image at each level, at depth {limit} such an image is one position and each level "
        f"deeper only doubles the padded canvas (2**{depth} = {2**depth} pixels a side); the deepest for "
        f"{side} pixels is {limit}")


_BOOL_WORDS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
_CHOICES = {"model": MODEL_NAMES, "activation": ACTIVATION_NAMES, "init": INITS, "normalize": NORMALIZE,
            "mask": MASKS}
_POSITIVE = ("depth", "batch_size", "num_images", "max_side", "threads")
_OPTIONAL_INT = ("num_images", "max_side", "threads")


@dataclass(frozen=True)
class Settings:
    """Everything that determines a run (all of it is kept with the results, in the parquet metadata)."""

    model: str = "stack"  # MODEL_NAMES: the plain network whose conv / pconv / mconv variants are recorded
    weights: Optional[str] = None  # a checkpoint file for the plain model (loaded strict); None: seeded init
    data: str = "photos"  # "synthetic", "photos", or a folder (read recursively) or image file
    depth: int = 4  # levels of the stack / the U-Net; the ResNet has its fixed 5
    num_images: Optional[int] = None  # None: every photo / every image of the folder; 8 synthetic
    batch_size: int = 4
    bucket: bool = False  # batches of images of similar size (less padding) instead of in file order
    mask: str = "padding"  # "padding": images are valid everywhere; "holes": seeded free-form holes inside
    seed: int = 0
    bias: bool = True
    activation: str = "relu"
    init: str = "default"
    stacks: tuple[str, ...] = STACKS
    # pconv's output mask: False keeps the image's own mask (padding use: the suite's runs); True is the paper's
    # rule, valid wherever the window saw a valid input, so holes close with depth (the seed's PartialConv2d)
    update_mask: bool = False
    max_side: Optional[int] = 256
    normalize: str = "image"
    figure_image: Optional[str] = None  # None: the most padded image of the first batch
    workers: int = 0  # DataLoader worker processes that decode images (0: in the main process)
    strict: bool = False  # an unreadable image is an error instead of a warning and a skip
    threads: Optional[int] = None  # None: 1 (see run.run_experiment)
    device: str = "cpu"  # "cuda" (or "cuda:1") where CUDA is present: layers, recorder and data all move

    def __post_init__(self) -> None:
        stacks = self.stacks.split("+") if isinstance(self.stacks, str) else self.stacks
        object.__setattr__(self, "stacks", tuple(stacks))
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise SettingsError(f"setting {name!r} must be one of {', '.join(allowed)}; got {value!r}")
        bad = [s for s in self.stacks if s not in STACKS]
        if bad or not self.stacks or len(set(self.stacks)) != len(self.stacks):
            raise SettingsError(f"setting 'stacks' takes distinct names from {', '.join(STACKS)}; "
                                f"got {'+'.join(map(str, self.stacks)) or 'none'!r}")
        for name in _POSITIVE:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_INT:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SettingsError(f"setting {name!r} must be a positive integer; got {value!r}")
        for name in ("seed", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise SettingsError(f"setting {name!r} must be a non-negative integer; got {value!r}")
        for name in ("bias", "bucket", "strict", "update_mask"):
            if not isinstance(getattr(self, name), bool):
                raise SettingsError(f"setting {name!r} takes true or false; got {getattr(self, name)!r}")
        for name in ("data", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise SettingsError(f"setting {name!r} takes a non-empty text; got {getattr(self, name)!r}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise SettingsError(f"setting 'weights' takes a file path; got {self.weights!r}")
        if self.max_side is not None:  # without max_side the run checks against its largest image
            check_depth(self.model, self.depth, self.max_side)

    def applies(self, name: str) -> bool:
        """Whether setting ``name`` changes anything for this run's model (:data:`IGNORED_BY_MODEL`)."""
        return name not in IGNORED_BY_MODEL.get(self.model, ())

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stacks"] = list(self.stacks)
        return d

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def coerce(cls, name: str, value: Any) -> Any:
        """A value given as text (a ``--set`` / ``--vary`` item, a TOML grid entry) as the type of setting
        ``name``: ``true``/``false`` for flags, integers, ``none`` for an optional value, ``a+b`` for stacks."""
        field = {f.name: f for f in fields(cls)}.get(name)
        if field is None:
            raise SettingsError(f"unknown setting {name!r}; settings are: {', '.join(sorted(cls.names()))}")
        default = field.default
        if isinstance(value, str) and value.strip().lower() == "none" and (default is None or name in _OPTIONAL_INT):
            return None
        if name == "stacks":
            return tuple(value.split("+")) if isinstance(value, str) else tuple(value)
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
                return _BOOL_WORDS[value.strip().lower()]
            raise SettingsError(f"setting {name!r} takes true or false; got {value!r}")
        if isinstance(default, int) or name in _OPTIONAL_INT:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise SettingsError(f"setting {name!r} takes an integer; got {value!r}")
            try:
                return int(value)
            except (TypeError, ValueError):
                raise SettingsError(f"setting {name!r} takes an integer; got {value!r}") from None
        return value

    @classmethod
    def from_text(cls, values: Mapping[str, Any], base: Optional["Settings"] = None) -> "Settings":
        """Settings from ``{name: value}`` with values as text or already typed, on top of ``base``."""
        typed = {name: cls.coerce(name, value) for name, value in values.items()}
        return dataclasses.replace(base, **typed) if base is not None else cls(**typed)
