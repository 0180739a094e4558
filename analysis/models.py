"""The plain models the suite runs, defined here (nothing is downloaded), and what the suite needs to know about them.

* ``"stack"``    -- the seed-style stack: ``depth`` levels of PixelUnshuffle(2) + 3x3 conv (+ activation)
  (:func:`masked_torch.analysis.stacks.build_plain`; the default, with the same weights for a seed as before);
* ``"resnet18"`` -- a ResNet-18 classifier as torchvision defines it (BasicBlock, ``[2, 2, 2, 2]``, 7x7/2 stem
  conv + BN + ReLU + 3x3/2 max pool, global average pool, ``fc``), with torchvision's ``state_dict`` keys, so a
  torchvision ``resnet18`` checkpoint loads strict at ``width=64`` (the default) and ``num_classes=1000``. One
  difference: every use of an activation is its own module (``relu1``, ``relu2`` in a block; torchvision calls
  one ``relu`` twice), so the recorder sees each activation once; activations have no parameters, so the keys
  are the same;
* ``"unet"``     -- a U-Net (Ronneberger et al. 2015, laid out as the widely used ``milesial/Pytorch-UNet``):
  ``inc`` = double (3x3 conv + BN + activation), ``levels`` steps ``down{i}`` = 2x2 max pool + double conv,
  ``levels`` steps ``up{i}`` = 2x2 stride-2 transposed conv halving the channels + concat with the skip +
  double conv, and a 1x1 conv ``outc``; ``width`` channels at full resolution, doubled per level.

:func:`build_model` builds one (plain, eval mode, seeded without touching the global random stream);
:func:`build_variants` makes its ``conv`` / ``pconv`` / ``mconv`` stacks with identical weights;
:func:`canvas_multiple` is what a batch canvas must be a multiple of; :func:`load_weights` loads a checkpoint
strict; :func:`layer_table` lists the layers the recorder records, in execution order, with their resolution
level (``depth``), type, block, channels and stride.
"""
from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Optional

import pandas as pd
import torch
from torch import Tensor, nn

from masked_torch.nn import ELEMENTWISE, Masked, MaskedModule, Unmasked

from .choices import INITS, MODEL_NAMES
from .data import DataError
from .settings import SettingsError
from .stacks import ACTIVATIONS, build_plain, build_variants

from .selection import select_layers

__all__ = ["MODEL_NAMES", "MAX_PARAMETERS", "build_model", "check_parameters", "build_variants", "canvas_multiple", "reference_multiple", "load_weights",
           "layer_table",
           "LAYER_TABLE_COLUMNS", "module_kind", "default_block", "ResNet", "BasicBlock", "UNet", "resnet18", "unet"]

#: Columns of :func:`layer_table`, in order.
LAYER_TABLE_COLUMNS = ("layer", "order", "depth", "kind", "block", "channels", "stride")


def _activation(name: str) -> nn.Module:
    """A fresh activation module (``nn.Identity`` for ``"none"``); never in-place, so that a hook that keeps a
    layer's output (the run's maps) does not see it overwritten by the activation after it."""
    layer = ACTIVATIONS[name]
    return nn.Identity() if layer is None else layer()


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


# ------------------------------------------------------------------------------------------------ ResNet-18
class BasicBlock(nn.Module):
    """torchvision's ResNet basic block (two 3x3 convs, identity or 1x1-projected shortcut), with one
    activation module per use: ``relu1`` after ``bn1``, ``relu2`` after the residual sum."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None,
                 activation: str = "relu") -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = _activation(activation)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.relu2 = _activation(activation)
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out = out + identity
        return self.relu2(out)


class ResNet(nn.Module):
    """torchvision's ``ResNet`` (for basic blocks): ``conv1`` 7x7/2 + ``bn1`` + ``relu`` + ``maxpool`` 3x3/2
    (the stem), ``layer1..4`` of ``layers[i]`` blocks with ``width * 2**i`` channels (strides 1, 2, 2, 2),
    ``avgpool`` (global) and ``fc``. ``init="default"`` is torchvision's: Kaiming-normal (fan-out, ReLU gain)
    convs, BN weight 1 and bias 0, ``nn.Linear``'s own init for ``fc``. ``bias`` is ``fc``'s bias (the convs
    have none: a BN follows each, as in torchvision)."""

    def __init__(self, layers=(2, 2, 2, 2), *, width: int = 64, num_classes: int = 1000, in_channels: int = 3,
                 activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if width < 1 or num_classes < 1:
            raise ValueError(f"ResNet: width and num_classes must be >= 1, got {width} and {num_classes}")
        self.inplanes = width
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = _activation(activation)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, blocks in enumerate(layers):
            stage = self._make_layer(width * 2**i, blocks, stride=1 if i == 0 else 2, activation=activation)
            self.add_module(f"layer{i + 1}", stage)
        self.n_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 2 ** (len(layers) - 1) * BasicBlock.expansion, num_classes, bias=bias)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int, activation: str) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(_conv1x1(self.inplanes, planes * BasicBlock.expansion, stride),
                                       nn.BatchNorm2d(planes * BasicBlock.expansion))
        stage = [BasicBlock(self.inplanes, planes, stride, downsample, activation)]
        self.inplanes = planes * BasicBlock.expansion
        stage += [BasicBlock(self.inplanes, planes, activation=activation) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)


def resnet18(*, width: int = 64, num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18: basic blocks ``[2, 2, 2, 2]``."""
    return ResNet((2, 2, 2, 2), width=width, num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------------------------ U-Net
def double_conv(c_in: int, c_out: int, activation: str = "relu") -> nn.Sequential:
    """``conv1`` 3x3 + ``bn1`` + ``relu1`` + ``conv2`` 3x3 + ``bn2`` + ``relu2`` (convs without bias: BN follows)."""
    return nn.Sequential(OrderedDict([
        ("conv1", _conv3x3(c_in, c_out)), ("bn1", nn.BatchNorm2d(c_out)), ("relu1", _activation(activation)),
        ("conv2", _conv3x3(c_out, c_out)), ("bn2", nn.BatchNorm2d(c_out)), ("relu2", _activation(activation)),
    ]))


class Down(nn.Sequential):
    """``pool`` (2x2 max) then ``conv`` (:func:`double_conv`)."""

    def __init__(self, c_in: int, c_out: int, activation: str = "relu") -> None:
        super().__init__(OrderedDict([("pool", nn.MaxPool2d(2)), ("conv", double_conv(c_in, c_out, activation))]))


class Up(nn.Module):
    """``up``: 2x2 stride-2 transposed conv halving the channels; concat ``[skip, up(x)]``; ``conv``."""

    def __init__(self, c_in: int, c_out: int, activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in // 2, kernel_size=2, stride=2, bias=bias)
        self.conv = double_conv(c_in // 2 + c_out, c_out, activation)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


class UNet(nn.Module):
    """U-Net with ``levels`` down and up steps: level ``i`` (0 = full resolution) has ``width * 2**i``
    channels; ``up1`` comes back from the bottom (level ``levels``) to level ``levels - 1``, ``up{levels}``
    to full resolution. Inputs must be multiples of ``2**levels`` (each max pool halves, each transposed conv
    doubles, and the skip must match): :func:`canvas_multiple`. ``bias`` is the bias of the layers no BN
    follows (the transposed convs and ``outc``). ``init="default"``: PyTorch's own init of every layer."""

    def __init__(self, levels: int = 4, *, width: int = 32, in_channels: int = 3, num_classes: int = 2,
                 activation: str = "relu", bias: bool = True) -> None:
        super().__init__()
        if levels < 1 or width < 1 or num_classes < 1:
            raise ValueError(f"UNet: levels, width and num_classes must be >= 1, got {levels}, {width}, "
                             f"{num_classes}")
        self.levels = levels
        self.inc = double_conv(in_channels, width, activation)
        for i in range(1, levels + 1):
            self.add_module(f"down{i}", Down(width * 2 ** (i - 1), width * 2**i, activation))
        for i in range(1, levels + 1):
            level = levels - i  # the level this step comes up to
            self.add_module(f"up{i}", Up(width * 2 ** (level + 1), width * 2**level, activation, bias))
        self.outc = nn.Conv2d(width, num_classes, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        skips = [self.inc(x)]
        for i in range(1, self.levels + 1):
            skips.append(getattr(self, f"down{i}")(skips[-1]))
        x = skips.pop()
        for i in range(1, self.levels + 1):
            x = getattr(self, f"up{i}")(x, skips.pop())
        return self.outc(x)


def unet(levels: int = 4, **kwargs) -> UNet:
    return UNet(levels, **kwargs)


# ------------------------------------------------------------------------------------------------ registry
def _reinit(model: nn.Module, init: str) -> None:
    """``kaiming``: He-normal (fan-in, ReLU gain), ``xavier``: Glorot-normal, on every conv and transposed
    conv weight (as the stack does); ``default``: the model's own init, untouched."""
    if init == "default":
        return
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.xavier_normal_(m.weight)


def canvas_multiple(name: str, depth: int = 4) -> int:
    """What a batch canvas (and an image padded alone) must be a multiple of for model ``name``: ``2**depth``
    for the stack (each level unshuffles by 2), ``2**depth`` for the U-Net (``depth`` = levels: the skips must
    match after each pool and transposed conv), 32 for the ResNet-18 (five stride-2 steps: not needed for it
    to run, masked or not, but then every level's grid lines up with the image's and ``depth`` is exact)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")
    if name == "resnet18":
        return 32
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return 2**depth


def reference_multiple(name: str, depth: int = 4) -> int:
    """What the plain model's canvas must be a multiple of to run at all: 1 for the ResNet-18 (it runs on an
    image of any size, so its reference run is on the image exactly, no padding), :func:`canvas_multiple`
    for the stack and the U-Net (unshuffle and the skips need it: their reference carries that rounding
    padding)."""
    return 1 if name == "resnet18" else canvas_multiple(name, depth)


def build_model(name: str = "stack", *, depth: int = 4, bias: bool = True, activation: str = "relu",
                init: str = "default", seed: int = 0, weights=None, **options) -> nn.Module:
    """Plain model ``name`` (one of :data:`MODEL_NAMES`) in eval mode, its weights drawn after
    ``torch.manual_seed(seed)`` with the caller's global random state restored afterwards.

    * ``depth``: the stack's levels and the U-Net's ``levels``; **ignored** by ``resnet18``, whose depth is
      fixed (five resolution levels);
    * ``bias``: the stack's conv biases; for ``resnet18`` the bias of ``fc``, for ``unet`` those of the
      transposed convs and ``outc`` (their convs have no bias: a BN follows each, as in torchvision);
    * ``activation``: one of ``relu, gelu, silu, tanh, none`` (``none``: ``nn.Identity``, not recorded);
    * ``init``: ``default`` (the model's own: ``nn.Conv2d``'s for the stack and the U-Net, torchvision's
      Kaiming fan-out for the ResNet), ``kaiming`` (He-normal fan-in), ``xavier`` (Glorot-normal) on every conv;
    * ``weights``: a checkpoint file loaded strict after building (:func:`load_weights`);
    * ``options``: passed to the model: ``width`` (stack 16, resnet18 64, unet 32), ``num_classes`` (resnet18
      1000, unet 2), ``in_channels`` (3).

    The stack is :func:`masked_torch.analysis.stacks.build_plain` unchanged: the same weights for a seed.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if name == "stack":
        model = build_plain(depth, bias=bias, activation=activation, init=init, seed=seed, **options)
    else:
        factories: dict[str, Callable[[], nn.Module]] = {
            "resnet18": lambda: resnet18(activation=activation, bias=bias, **options),
            "unet": lambda: unet(depth, activation=activation, bias=bias, **options),
        }
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        try:
            model = factories[name]()
            _reinit(model, init)
        finally:
            torch.random.set_rng_state(state)
    model.eval()
    if weights is not None:
        load_weights(model, weights)
    return model


#: The most parameters a run's plain model may have: 2**27, 512 MiB of float32 weights, of which a run holds four
#: copies (the plain model and its conv, pconv and mconv stacks). ResNet-18 has 11.7 M, the stack at depth 8
#: 1.6 M, the U-Net 7.8 M at depth 4 and 124 M at depth 6 (its width doubles at each level: 498 M at depth 7).
MAX_PARAMETERS = 2**27


def _parameters(name: str, depth: int, **kwargs) -> int:
    with torch.device("meta"):  # shapes only: nothing is allocated, nothing drawn
        model = build_model(name, depth=depth, **kwargs)
    return sum(p.numel() for p in model.parameters())


def check_parameters(name: str = "stack", *, depth: int = 4, bias: bool = True, activation: str = "relu",
                     **options) -> None:
    """:class:`~masked_torch.analysis.settings.SettingsError` (one line, with the limit) if plain model ``name``
    has more than :data:`MAX_PARAMETERS` parameters, counted on the ``meta`` device before any weight is
    allocated. The ResNet-18's size does not depend on ``depth`` (and its init on ``meta`` would load the
    compiler): nothing to check."""
    if name == "resnet18":
        return
    count = _parameters(name, depth, bias=bias, activation=activation, **options)
    if count > MAX_PARAMETERS:
        fits = [d for d in range(depth - 1, 0, -1)
                if _parameters(name, d, bias=bias, activation=activation, **options) <= MAX_PARAMETERS]
        raise SettingsError(
            f"setting 'depth' {depth} gives the {name} {count:,} parameters, more than the limit of "
            f"{MAX_PARAMETERS:,} (2**27: 512 MiB of float32 weights, and a run holds four copies)"
            + (f"; the deepest {name} within it is {fits[0]}" if fits else ""))


# ------------------------------------------------------------------------------------------------ weights
def _first(keys, n: int = 3) -> str:
    keys = list(keys)
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(model: nn.Module, path) -> nn.Module:
    """Load a checkpoint into ``model`` strict (every key, every shape) and return ``model``.

    The file is a ``torch.save``d ``state_dict``, or a checkpoint dict holding one under ``"state_dict"`` or
    ``"model"``; read with ``weights_only=True`` (tensors and plain containers only: no code runs). A
    ``"module."`` prefix on every key (saved from ``DataParallel``/``DistributedDataParallel``) is dropped.
    Raises :class:`~masked_torch.analysis.data.DataError` with one line naming the file and the first keys
    when the file cannot be read, keys are missing or unexpected, or shapes differ."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any reason the file cannot be read is the same error for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"weights {path}: cannot read it as a torch.save'd state_dict "
                        f"({type(e).__name__}{': ' + reason[:160] if reason else ''})") from None
    state = obj
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                state = obj[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise DataError(f"weights {path}: not a state_dict (a dict of tensors, or a checkpoint dict with one under "
                        f"'state_dict' or 'model'); got {type(obj).__name__}"
                        + (f" with keys {_first(obj.keys())}" if isinstance(obj, Mapping) else ""))
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = ([f"missing {len(missing)} key(s): {_first(missing)}"] if missing else []) + (
            [f"unexpected {len(unexpected)} key(s): {_first(unexpected)}"] if unexpected else [])
        raise DataError(f"weights {path}: do not fit the model ({type(model).__name__}): {'; '.join(parts)}")
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in own.items()
              if tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise DataError(f"weights {path}: shapes differ from the model's ({type(model).__name__}) for "
                        f"{len(shapes)} key(s): {_first(shapes)}")
    model.load_state_dict(state, strict=True)
    return model


# ------------------------------------------------------------------------------------------------ layer table
_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
          nn.modules.pooling._AdaptiveMaxPoolNd)
_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def module_kind(module: nn.Module) -> str:
    """Short type of a layer from its class (a masked layer's or wrapper's as the plain layer's): ``conv``,
    ``upconv`` (transposed conv), ``norm``, ``act``, ``pool``, ``linear``, ``upsample``, ``unshuffle``,
    ``shuffle``, ``flatten``; else the class name in lower case."""
    inner = module.module if isinstance(module, (Masked, Unmasked)) else module
    if isinstance(inner, nn.modules.conv._ConvTransposeNd):
        return "upconv"
    if isinstance(inner, nn.modules.conv._ConvNd):
        return "conv"
    if isinstance(inner, _NORM_TYPES):
        return "norm"
    if isinstance(inner, _POOLS):
        return "pool"
    if isinstance(inner, nn.Linear):
        return "linear"
    if isinstance(inner, nn.Upsample):
        return "upsample"
    if isinstance(inner, nn.PixelShuffle):
        return "shuffle"
    if isinstance(inner, nn.Flatten):
        return "flatten"
    name = type(inner).__name__.lower()
    if "unshuffle" in name:
        return "unshuffle"
    if "pool" in name or "spatialmean" in name:
        return "pool"
    if isinstance(inner, tuple(ELEMENTWISE)):
        return "act"
    return name


_DIGITS = re.compile(r"\d+")


def default_block(names: list[str], depths: Optional[list] = None) -> list[str]:
    """Readable groups of layer names (in execution order): a dotted name's first part, with the second too when
    it is an index (``layer1.0.conv1`` -> ``layer1.0``, ``down2.conv.bn1`` -> ``down2``); an undotted name
    before the first dotted one is in ``stem``, after the last in ``head``, between them its own group. A model
    whose layers are all undotted (a chain such as the seed stack) is grouped by resolution level:
    ``level{depth}``."""
    dotted = [i for i, n in enumerate(names) if "." in n]
    if not dotted:
        return [f"level{d}" if depths is not None and not pd.isna(d) else n for n, d in
                zip(names, depths if depths is not None else [None] * len(names))]
    out = []
    for i, n in enumerate(names):
        parts = n.split(".")
        if len(parts) > 1:
            out.append(parts[0] + (f".{parts[1]}" if _DIGITS.fullmatch(parts[1]) else ""))
        elif i < dotted[0]:
            out.append("stem")
        elif i > dotted[-1]:
            out.append("head")
        else:
            out.append(n)
    return out


def _first_tensor(output):
    """The output tensor of a layer: a plain layer's output, or the first of a masked layer's ``(out, mask)``."""
    while isinstance(output, (tuple, list)) and output:
        output = output[0]
    return output if isinstance(output, Tensor) else None


def layer_table(model: nn.Module, example: Tensor, mask: Optional[Tensor] = None, *, include=None,
                block: Optional[Callable[[list, list], list]] = None) -> pd.DataFrame:
    """One row per layer the recorder records in ``model`` (``select_layers(model, include)``; ``include`` as
    the recorder's), from one forward of ``example`` (``(N, C, H, W)``; best a multiple of
    :func:`canvas_multiple` in size, so that the ratios are exact; zeros will do: only shapes are read) with
    ``mask`` for a converted model (plain models take none). Columns (:data:`LAYER_TABLE_COLUMNS`):

    * ``layer``    -- module name (the same in the plain model and each stack);
    * ``order``    -- 0-based position in *execution* order (when the layer's forward returned);
    * ``depth``    -- resolution level of the output: ``round(log2(H / h))`` with ``H`` the example's height and
      ``h`` the output's (for the stack: the level number; a U-Net goes down then up). ``<NA>`` (pandas
      ``Int64``) for an output without spatial dims, such as logits;
    * ``kind``     -- short type from the module class (:func:`module_kind`): conv, upconv, norm, act, pool, ...;
    * ``block``    -- readable group (:func:`default_block`, or ``block(names, depths)`` if given): ``stem``,
      ``layer1.0``, ``down2``, ``up1``, ``head``; ``level{i}`` for a chain such as the stack;
    * ``channels`` -- output channels (dim 1);
    * ``stride``   -- the layer's input height over its output height (2.0 for a stride-2 conv, 0.5 for a
      stride-2 transposed conv), NaN for a non-spatial output.

    A selected layer that runs more than once per forward (one activation module called twice) is refused with
    ``ValueError``: its statistics would mix two places in the network; give each use its own module."""
    if not isinstance(example, Tensor) or example.dim() < 3:
        raise ValueError(f"layer_table: example must be a tensor (N, C, *spatial), got "
                         f"{tuple(example.shape) if isinstance(example, Tensor) else type(example).__name__}")
    masked = isinstance(model, MaskedModule)
    if mask is not None and not masked:
        raise ValueError(f"layer_table: a mask was given but {type(model).__name__} is a plain model "
                         f"(convert it first, or pass mask=None)")
    selected = select_layers(model, include)
    calls: dict[str, list] = {name: [] for name, _ in selected}
    counter = [0]
    height = example.shape[2]

    def hook_for(name):
        def hook(mod, args, output):
            x = _first_tensor(args)
            out = _first_tensor(output)
            calls[name].append((counter[0], None if x is None else tuple(x.shape), None if out is None
                                else tuple(out.shape)))
            counter[0] += 1
        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in selected]
    try:
        with torch.no_grad():
            model(example, mask) if masked else model(example)
    finally:
        for h in handles:
            h.remove()
    twice = [n for n, c in calls.items() if len(c) > 1]
    if twice:
        raise ValueError(f"layer_table: layer(s) {twice[:5]} ran {max(len(calls[n]) for n in twice)} times in one "
                         f"forward; the recorder would merge those uses into one layer: give each use its own module")
    never = [n for n, c in calls.items() if not c]
    if never:
        raise ValueError(f"layer_table: layer(s) {never[:5]} did not run in the example's forward")
    kinds = {name: module_kind(module) for name, module in selected}
    rows = []
    for name, [(order, in_shape, out_shape)] in sorted(calls.items(), key=lambda kv: kv[1][0][0]):
        spatial = out_shape is not None and len(out_shape) >= 3
        depth = round(math.log2(height / out_shape[2])) if spatial and out_shape[2] > 0 else pd.NA
        stride = (in_shape[2] / out_shape[2] if spatial and in_shape is not None and len(in_shape) >= 3
                  and out_shape[2] > 0 else float("nan"))
        rows.append(dict(layer=name, order=order, depth=depth, kind=kinds[name], block="",
                         channels=out_shape[1] if out_shape is not None and len(out_shape) >= 2 else pd.NA,
                         stride=stride))
    table = pd.DataFrame(rows, columns=list(LAYER_TABLE_COLUMNS))
    table["order"] = range(len(table))  # 0-based among the recorded layers
    table["depth"] = table["depth"].astype("Int64")
    table["channels"] = table["channels"].astype("Int64")
    table["stride"] = table["stride"].astype(float)
    names, depths = list(table["layer"]), list(table["depth"])
    table["block"] = (block or default_block)(names, depths)
    return table
