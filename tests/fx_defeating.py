"""Small CNNs whose forward defeats ``torch.fx.symbolic_trace``, written the way model libraries write them.

Each model is one pattern found in segmentation, medical-imaging and model-hub code (the docstring names the
pattern and the style it imitates; no library code is copied). They are ordinary, correct models: they run
eagerly on every size their constraints allow. What torch.fx makes of each today is :attr:`Pattern.fx`:

- ``"raises"``: ``symbolic_trace`` raises (Python control flow or ``int()``/iteration on a size);
- ``"crashes"``: it traces, and the traced graph fails when run (a branch was recorded wrongly);
- ``"differs"``: it traces, and the traced graph runs and computes something else, silently;
- ``"traces"``: it traces faithfully (the pattern is one the converter's *rules* must handle: per-image pyramid
  pooling, FPN sums of upsampled maps, a dataclass output).

``PATTERNS`` maps a name to a :class:`Pattern` (factory, example input shape, allowed sizes, three image sizes
for a padded batch). ``build(name)`` returns a deterministic float64 eval model whose batch norms are not the
identity, as ``tests/zoo.py``'s ``build`` does.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo import init_weights, randomize_batchnorm


# --------------------------------------------------------------------------- shared blocks

def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> nn.Sequential:
    """Conv -> BatchNorm -> ReLU with 'same' padding, the block every library below is built of."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, projected shortcut when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn_relu(in_channels, out_channels, 3, stride)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (nn.Identity() if stride == 1 and in_channels == out_channels else nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)))

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn2(self.conv2(self.conv1(x))) + self.shortcut(x))


class Encoder(nn.Module):
    """A ResNet-like encoder returning the feature maps of every stage (strides 2, 4, 8), as the encoders of
    segmentation libraries do (``features[0]`` is the stride-2 map)."""

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (8, 12, 16)):
        super().__init__()
        self.stem = conv_bn_relu(in_channels, widths[0], 3, 2)
        self.stages = nn.ModuleList(ResidualBlock(a, b, 2) for a, b in zip(widths[:-1], widths[1:]))
        self.out_channels = widths

    def forward(self, x: Tensor) -> list[Tensor]:
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features


# --------------------------------------------------------------------------- 1. shape assertion in forward

class OutputStrideSegmenter(nn.Module):
    """Pattern: a shape assertion in forward, ``if h % self.output_stride != 0: raise ValueError(...)``.

    Style: the encoder-decoder segmentation libraries (DeepLab-like heads behind an encoder whose forward
    checks that the input divides by its output stride before running). A stride-8 encoder, a 3x3 head and a
    bilinear x8 upsampling back to the input's size (exact only when the sides are multiples of 8, hence the
    check). torch.fx: ``h % 8 != 0`` on a Proxy cannot be turned into a bool (TraceError)."""

    def __init__(self, in_channels: int = 3, classes: int = 4):
        super().__init__()
        self.output_stride = 8
        self.encoder = Encoder(in_channels)
        self.head = nn.Sequential(conv_bn_relu(16, 16), nn.Conv2d(16, classes, 1))

    def check_input_shape(self, x: Tensor) -> None:
        h, w = x.shape[-2:]
        if h % self.output_stride != 0 or w % self.output_stride != 0:
            new_h = (h // self.output_stride + 1) * self.output_stride
            new_w = (w // self.output_stride + 1) * self.output_stride
            raise ValueError(f"Wrong input shape height={h}, width={w}. Expected image height and width "
                             f"divisible by {self.output_stride}. Consider padding your images to shape "
                             f"({new_h}, {new_w}).")

    def forward(self, x: Tensor) -> Tensor:
        self.check_input_shape(x)
        features = self.encoder(x)
        logits = self.head(features[-1])
        return F.interpolate(logits, scale_factor=self.output_stride, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- 2. channel check against a config

class ChannelCheckedClassifier(nn.Module):
    """Pattern: a channel check against a config value, ``if x.shape[1] != self.in_channels: raise``.

    Style: model-hub classifiers built from a config object (the forward of the patch/stem embedding checks
    the pixel values' channel count against ``config.num_channels``). A strided stem, two residual stages,
    global average pooling and a linear classifier. torch.fx: comparing ``x.shape[1]`` (a Proxy) with an int
    and branching on it raises TraceError."""

    def __init__(self, in_channels: int = 3, num_classes: int = 5):
        super().__init__()
        self.in_channels = in_channels
        self.embedder = nn.Sequential(conv_bn_relu(in_channels, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
        self.stages = nn.Sequential(ResidualBlock(8, 8), ResidualBlock(8, 16, 2))
        self.pooler = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, pixel_values: Tensor) -> Tensor:
        num_channels = pixel_values.shape[1]
        if num_channels != self.in_channels:
            raise ValueError("Make sure that the channel dimension of the pixel values match with the one set "
                             f"in the configuration: expected {self.in_channels}, got {num_channels}.")
        hidden = self.stages(self.embedder(pixel_values))
        return self.classifier(torch.flatten(self.pooler(hidden), 1))


# --------------------------------------------------------------------------- 3. iteration over x.shape

class ShapeIteratingSegmenter(nn.Module):
    """Pattern: iteration over ``x.shape``, building a size list: ``size = [s for s in x.shape[2:]]``.

    Style: the medical-imaging libraries, whose networks are written for any ``spatial_dims`` and so build the
    output size of the final resampling from the input's spatial dims in a loop, whatever their number. A
    stride-4 encoder, a head, and a bilinear resize to the input's own size (any size runs). torch.fx: a
    Proxy cannot be iterated (TraceError)."""

    def __init__(self, in_channels: int = 3, classes: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(conv_bn_relu(in_channels, 8, 3, 2), ResidualBlock(8, 12, 2))
        self.head = nn.Sequential(conv_bn_relu(12, 12), nn.Conv2d(12, classes, 1))

    def forward(self, x: Tensor) -> Tensor:
        spatial_size = [s for s in x.shape[2:]]
        y = self.head(self.encoder(x))
        return F.interpolate(y, size=spatial_size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- 4. int() of a size

class IntSizeFCN(nn.Module):
    """Pattern: ``int()`` of a size while building a layer's arguments,
    ``F.interpolate(x, size=(int(skip.size(2)), int(skip.size(3))))``.

    Style: FCN / U-Net code from research repositories, which casts sizes to ``int`` (a habit from tracing and
    ONNX export code) before resizing a coarse map onto a skip connection. Encoder at strides 2, 4, 8; the
    stride-8 map is resized onto the stride-4 one and summed, then onto the stride-2 one; a 1x1 classifier at
    stride 2 (any size runs). torch.fx: ``int()`` of a Proxy raises TypeError."""

    def __init__(self, in_channels: int = 3, classes: int = 3):
        super().__init__()
        self.encoder = Encoder(in_channels, (8, 8, 8))
        self.refine = nn.ModuleList([conv_bn_relu(8, 8), conv_bn_relu(8, 8)])
        self.classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        f2, f4, f8 = self.encoder(x)
        y = f8
        for skip, refine in zip((f4, f2), self.refine):
            size = (int(skip.size(2)), int(skip.size(3)))
            y = refine(F.interpolate(y, size=size, mode="bilinear", align_corners=False) + skip)
        return self.classifier(y)


# --------------------------------------------------------------------------- 5. torch.jit.isinstance on a skip

class JitUpCat(nn.Module):
    """Decoder block: upsample, then convs on ``cat([skip, up])``, or on ``up`` alone when no skip is given;
    the skip test is written for TorchScript (``torch.jit.isinstance``), as medical-imaging U-Nets write it."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, in_channels, 2, stride=2)
        self.convs = nn.Sequential(conv_bn_relu(in_channels + skip_channels, out_channels),
                                   conv_bn_relu(out_channels, out_channels))

    def forward(self, x: Tensor, x_e: Optional[Tensor]) -> Tensor:
        x_0 = self.upsample(x)
        if x_e is not None and torch.jit.isinstance(x_e, torch.Tensor):
            x = self.convs(torch.cat([x_e, x_0], dim=1))
        else:
            x = self.convs(x_0)
        return x


class JitIsinstanceUNet(nn.Module):
    """Pattern: ``torch.jit.isinstance(x_e, torch.Tensor)`` on a decoder block's optional skip input; the
    channel counts differ (the convs take the skip's and the upsampled map's channels together).

    Style: the medical-imaging libraries' basic U-Net (TorchScript-compatible decoder blocks). Sides must be
    multiples of 4 (two 2x2 transposed convolutions undo two stride-2 stages exactly). torch.fx: for a Proxy
    ``torch.jit.isinstance`` is False, so the trace records the branch without the skip; the traced graph's
    convs then get too few channels and it fails at run time (RuntimeError)."""

    def __init__(self, in_channels: int = 3, classes: int = 2):
        super().__init__()
        self.conv_0 = nn.Sequential(conv_bn_relu(in_channels, 8), conv_bn_relu(8, 8))
        self.down_1 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(8, 12))
        self.down_2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(12, 16))
        self.upcat_2 = JitUpCat(16, 12, 12)
        self.upcat_1 = JitUpCat(12, 8, 8)
        self.final_conv = nn.Conv2d(8, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        u2 = self.upcat_2(x2, x1)
        u1 = self.upcat_1(u2, x0)
        return self.final_conv(u1)


class JitUpAdd(nn.Module):
    """Decoder block: upsample to the skip's channels, then convs on ``skip + up``, or on ``up`` alone when no
    skip is given; the skip test written for TorchScript (``torch.jit.isinstance``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.upsample = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.convs = nn.Sequential(conv_bn_relu(out_channels, out_channels), conv_bn_relu(out_channels, out_channels))

    def forward(self, x: Tensor, x_e: Optional[Tensor]) -> Tensor:
        x_0 = self.upsample(x)
        if x_e is not None and torch.jit.isinstance(x_e, torch.Tensor):
            x = self.convs(x_e + x_0)
        else:
            x = self.convs(x_0)
        return x


class JitIsinstanceAddUNet(nn.Module):
    """Pattern: ``torch.jit.isinstance(x_e, torch.Tensor)`` on a decoder block's optional skip input, with
    matching channel counts (the skip is *added* to the upsampled map, as LinkNet-like decoders do).

    Style: the same TorchScript-compatible U-Net decoder as :class:`JitIsinstanceUNet`. Sides must be
    multiples of 4. torch.fx: the trace records the branch without the skip, and since the convs take the
    upsampled map's channels the traced graph runs, and silently computes another network (no skips)."""

    def __init__(self, in_channels: int = 3, classes: int = 2):
        super().__init__()
        self.conv_0 = nn.Sequential(conv_bn_relu(in_channels, 8), conv_bn_relu(8, 8))
        self.down_1 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(8, 12))
        self.down_2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(12, 16))
        self.upadd_2 = JitUpAdd(16, 12)
        self.upadd_1 = JitUpAdd(12, 8)
        self.final_conv = nn.Conv2d(8, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        return self.final_conv(self.upadd_1(self.upadd_2(x2, x1), x0))


# --------------------------------------------------------------------------- 6. plain isinstance on a second input

class AttentionGate(nn.Module):
    """Additive attention gate: the skip ``x`` is scaled by a sigmoid map computed from ``x`` and the gating
    signal ``g`` when one is given (``isinstance(g, Tensor)``), and passes unchanged otherwise."""

    def __init__(self, channels: int, gate_channels: int, inter_channels: int):
        super().__init__()
        self.theta = nn.Conv2d(channels, inter_channels, 1, bias=False)
        self.phi = nn.Conv2d(gate_channels, inter_channels, 1)
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1), nn.BatchNorm2d(1), nn.Sigmoid())

    def forward(self, x: Tensor, g: Optional[Tensor] = None) -> Tensor:
        if isinstance(g, torch.Tensor):
            g = F.interpolate(self.phi(g), scale_factor=2, mode="nearest")
            return x * self.psi(F.relu(self.theta(x) + g))
        return x


class IsinstanceAttentionUNet(nn.Module):
    """Pattern: plain ``isinstance(g, torch.Tensor)`` on an optional second input (the gating signal of an
    attention gate).

    Style: attention U-Nets of the medical-imaging libraries, whose gate blocks accept an optional gating
    signal. Sides must be multiples of 4. torch.fx: a Proxy is not a ``torch.Tensor``, so the trace records
    the ungated branch: the traced graph runs and silently skips every attention gate."""

    def __init__(self, in_channels: int = 3, classes: int = 2):
        super().__init__()
        self.enc0 = nn.Sequential(conv_bn_relu(in_channels, 8), conv_bn_relu(8, 8))
        self.enc1 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(8, 12))
        self.enc2 = nn.Sequential(nn.MaxPool2d(2), conv_bn_relu(12, 16))
        self.gate1 = AttentionGate(12, 16, 8)
        self.gate0 = AttentionGate(8, 12, 4)
        self.up2 = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dec1 = conv_bn_relu(24, 12)
        self.up1 = nn.ConvTranspose2d(12, 8, 2, stride=2)
        self.dec0 = conv_bn_relu(16, 8)
        self.final_conv = nn.Conv2d(8, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        x0 = self.enc0(x)
        x1 = self.enc1(x0)
        x2 = self.enc2(x1)
        d1 = self.dec1(torch.cat([self.gate1(x1, x2), self.up2(x2)], dim=1))
        d0 = self.dec0(torch.cat([self.gate0(x0, d1), self.up1(d1)], dim=1))
        return self.final_conv(d0)


# --------------------------------------------------------------------------- 7. dataclass / ModelOutput outputs

@dataclass
class SegOutput:
    """A segmentation model's output: class logits at the input's size and the encoder's deepest features."""
    logits: Tensor
    features: Tensor


class DataclassOutputSegmenter(nn.Module):
    """Pattern: a dataclass output, ``return SegOutput(logits=..., features=...)``.

    Style: the model-hub libraries, whose models return a typed output object rather than a tensor. A
    stride-4 encoder, a head upsampled x4 (nearest; sides multiples of 4) and the deepest features. torch.fx
    traces it (the dataclass constructor becomes a ``call_function`` node and the traced graph returns a
    ``SegOutput``); the converter must keep the structure."""

    def __init__(self, in_channels: int = 3, classes: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(conv_bn_relu(in_channels, 8, 3, 2), ResidualBlock(8, 12, 2))
        self.head = nn.Sequential(conv_bn_relu(12, 12), nn.Conv2d(12, classes, 1), nn.Upsample(scale_factor=4))

    def forward(self, x: Tensor) -> SegOutput:
        features = self.encoder(x)
        return SegOutput(logits=self.head(features), features=features)


class ModelOutput(OrderedDict):
    """An ordered dict whose items are also attributes, filled from its dataclass fields that are not None
    (the shape of the model-hub libraries' output base class, written from scratch)."""

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                self[f.name] = value

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        super().__setattr__(key, value)

    def __setattr__(self, name, value):
        if name in self.keys() and value is not None:
            super().__setitem__(name, value)
        super().__setattr__(name, value)

    def to_tuple(self) -> tuple:
        return tuple(self[k] for k in self.keys())


@dataclass
class ClassifierOutput(ModelOutput):
    """Logits and the pooled features of an image classifier."""
    logits: Optional[Tensor] = None
    pooler_output: Optional[Tensor] = None


class ModelOutputClassifier(nn.Module):
    """Pattern: a ``ModelOutput``-like output (an ``OrderedDict`` subclass that is also a dataclass).

    Style: model-hub image classifiers (``outputs.logits``, ``outputs["pooler_output"]``, ``to_tuple()``). A
    residual stem and stage, global average pooling, a linear classifier. torch.fx traces it but returns a
    plain ``dict``: the output type (attributes, ``to_tuple``) is lost, silently."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4):
        super().__init__()
        self.embedder = conv_bn_relu(in_channels, 8, 3, 2)
        self.stage = ResidualBlock(8, 16, 2)
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, pixel_values: Tensor) -> ClassifierOutput:
        pooled = self.stage(self.embedder(pixel_values)).mean((2, 3))
        return ClassifierOutput(logits=self.classifier(pooled), pooler_output=pooled)


# --------------------------------------------------------------------------- 8. PSP pyramid pooling

class PyramidPooling(nn.Module):
    """Pyramid pooling module: the map average-pooled to 1x1, 2x2, 3x3 and 6x6 bins, each reduced by a 1x1
    conv, upsampled back to the map's size (bilinear) and concatenated with the map."""

    def __init__(self, in_channels: int, bins: tuple[int, ...] = (1, 2, 3, 6)):
        super().__init__()
        reduced = in_channels // len(bins)
        self.stages = nn.ModuleList(nn.Sequential(
            nn.AdaptiveAvgPool2d(b), nn.Conv2d(in_channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced),
            nn.ReLU(inplace=True)) for b in bins)
        self.out_channels = in_channels + reduced * len(bins)

    def forward(self, x: Tensor) -> Tensor:
        pyramids = [x]
        for stage in self.stages:
            pyramids.append(F.interpolate(stage(x), size=x.shape[-2:], mode="bilinear", align_corners=False))
        return torch.cat(pyramids, dim=1)


class PSPNet(nn.Module):
    """Pattern: a PSP-style pyramid pooling head (``AdaptiveAvgPool2d`` to 1, 2, 3, 6 bins, each upsampled with
    ``F.interpolate(size=x.shape[-2:], mode="bilinear", align_corners=False)``, concatenated).

    Style: scene-parsing networks of the segmentation libraries. A stride-8 encoder, the pyramid pooling
    module, a 3x3 fusion conv, a classifier, and a bilinear resize to the input's size (any size runs).
    torch.fx traces it faithfully; the non-global adaptive pools are the converter's concern (per image)."""

    def __init__(self, in_channels: int = 3, classes: int = 3):
        super().__init__()
        self.encoder = Encoder(in_channels, (8, 12, 16))
        self.ppm = PyramidPooling(16)
        self.fuse = conv_bn_relu(self.ppm.out_channels, 16)
        self.classifier = nn.Conv2d(16, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.classifier(self.fuse(self.ppm(self.encoder(x)[-1])))
        return F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- 9. FPN

class FPN(nn.Module):
    """Pattern: an FPN that adds upsampled maps, ``F.interpolate(top, size=lateral.shape[-2:],
    mode="nearest") + lateral``.

    Style: feature pyramid necks of detection and segmentation libraries. Lateral 1x1 convs on the stride-2,
    4 and 8 maps, a top-down path resizing each coarser map onto the next lateral (nearest) and adding, a 3x3
    smoothing conv per level; the segmentation head sums the levels resized to the finest one and classifies
    at stride 2 (any size runs). torch.fx traces it faithfully."""

    def __init__(self, in_channels: int = 3, classes: int = 3, width: int = 8):
        super().__init__()
        self.encoder = Encoder(in_channels, (8, 12, 16))
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in self.encoder.out_channels)
        self.smooth = nn.ModuleList(conv_bn_relu(width, width) for _ in self.encoder.out_channels)
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        laterals = [conv(f) for conv, f in zip(self.lateral, features)]
        for i in range(len(laterals) - 1, 0, -1):
            top = laterals[i]
            laterals[i - 1] = F.interpolate(top, size=laterals[i - 1].shape[-2:], mode="nearest") + laterals[i - 1]
        pyramid = [smooth(p) for smooth, p in zip(self.smooth, laterals)]
        fused = pyramid[0]
        for p in pyramid[1:]:
            fused = fused + F.interpolate(p, size=pyramid[0].shape[-2:], mode="nearest")
        return self.classifier(fused)


# --------------------------------------------------------------------------- registry

class Pattern(NamedTuple):
    """One pattern's model and inputs.

    ``factory``: zero-arg, a fresh model (train mode, default init); use :func:`build` for tests.
    ``example``: an example input shape ``(N, C, H, W)`` (for ``convert(..., example=...)``).
    ``multiple``: every side must be a multiple of it (1: any size runs).
    ``sizes``: three image sizes ``(H, W)`` for a padded batch, different and allowed (odd where allowed).
    ``fx``: what ``torch.fx.symbolic_trace`` does today (see the module docstring).
    """
    factory: Callable[[], nn.Module]
    example: tuple[int, int, int, int]
    multiple: int
    sizes: list[tuple[int, int]]
    fx: str


_ODD = [(37, 45), (29, 22), (40, 33)]
_BY4 = [(36, 44), (28, 20), (40, 32)]
PATTERNS: dict[str, Pattern] = {
    "shape_assert": Pattern(OutputStrideSegmenter, (2, 3, 40, 48), 8, [(40, 48), (24, 32), (32, 16)], "raises"),
    "channel_check": Pattern(ChannelCheckedClassifier, (2, 3, 37, 45), 1, _ODD, "raises"),
    "shape_iteration": Pattern(ShapeIteratingSegmenter, (2, 3, 37, 45), 1, _ODD, "raises"),
    "int_size": Pattern(IntSizeFCN, (2, 3, 37, 45), 1, _ODD, "raises"),
    "jit_isinstance_cat": Pattern(JitIsinstanceUNet, (2, 3, 36, 44), 4, _BY4, "crashes"),
    "jit_isinstance_add": Pattern(JitIsinstanceAddUNet, (2, 3, 36, 44), 4, _BY4, "differs"),
    "isinstance_gate": Pattern(IsinstanceAttentionUNet, (2, 3, 36, 44), 4, _BY4, "differs"),
    "dataclass_output": Pattern(DataclassOutputSegmenter, (2, 3, 36, 44), 4, _BY4, "traces"),
    "model_output": Pattern(ModelOutputClassifier, (2, 3, 37, 45), 1, _ODD, "differs"),
    "psp": Pattern(PSPNet, (2, 3, 37, 45), 1, _ODD, "traces"),
    "fpn": Pattern(FPN, (2, 3, 37, 45), 1, _ODD, "traces"),
}


def build(name: str, seed: int = 0) -> nn.Module:
    """Deterministic float64 eval-mode model ``name`` (weights from ``seed``; global RNG untouched), batch
    norms with random running statistics and affine parameters."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = init_weights(PATTERNS[name].factory())
    return randomize_batchnorm(model, seed).double().eval()
