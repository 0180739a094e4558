"""Tiny CNNs written in the style of common model zoos (torchvision, timm), for conversion tests.

Every ``forward`` is ``torch.fx.symbolic_trace``-able: no Python control flow on tensor values and no
reads of spatial sizes (only batch/channel sizes and ``ndim``). ``MODELS`` maps a name to a zero-arg
factory returning the model in eval mode; ``INPUTS`` maps the same name to an :class:`InputSpec`;
``build(name)`` returns a deterministic float64 eval model whose BatchNorms are not the identity.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# --------------------------------------------------------------------------- shared building blocks

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dim: int = 2) -> nn.Module:
    """3x3 (x3) convolution with padding, no bias."""
    return _CONV[dim](in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, dim: int = 2) -> nn.Module:
    """1x1 (x1) convolution, no bias."""
    return _CONV[dim](in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class ConvNormActivation(nn.Sequential):
    """Conv -> norm -> optional activation, 'same' padding for odd kernels (torchvision.ops style)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1,
                 norm_layer=nn.BatchNorm2d, activation_layer=nn.ReLU, conv_layer=nn.Conv2d):
        padding = (kernel_size - 1) // 2
        layers = [conv_layer(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False),
                  norm_layer(out_channels)]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)


def drop_path(x: Tensor, p: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth (timm style): drop whole samples of a residual branch while training."""
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    return x * x.new_empty(shape).bernoulli_(keep) / keep


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path`."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)


# --------------------------------------------------------------------------- ResNet (torchvision, also r3d)

class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 convs and an identity (or projected) shortcut; ``dim`` in 1, 2, 3."""
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, dim=2):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, dim)
        self.bn1 = _BN[dim](planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, dim=dim)
        self.bn2 = _BN[dim](planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    """ResNet bottleneck block: 1x1 reduce, 3x3 (strided), 1x1 expand by 4."""
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, dim=2):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes, dim=dim)
        self.bn1 = _BN[dim](planes)
        self.conv2 = conv3x3(planes, planes, stride, dim)
        self.bn2 = _BN[dim](planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, dim=dim)
        self.bn3 = _BN[dim](planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """ResNet with three stages (strides 1, 2, 2), global average pool and a linear classifier.

    ``dim=2``: torchvision image ResNet (7x7/2 stem + 3x3/2 max pool). ``dim=3``: r3d video ResNet on
    (N, 3, T, H, W) with a (3, 7, 7)/(1, 2, 2) stem and no max pool.
    """

    def __init__(self, block, layers=(1, 1, 1), widths=(8, 16, 32), num_classes=10, dim=2):
        super().__init__()
        self.inplanes, self.dim = 8, dim
        if dim == 3:
            self.stem = nn.Sequential(
                nn.Conv3d(3, 8, kernel_size=(3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
                nn.BatchNorm3d(8), nn.ReLU(inplace=True))
            self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(3, 8, kernel_size=7, stride=2, padding=3, bias=False),
                                      nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.fc = nn.Linear(widths[2] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride, self.dim),
                                       _BN[self.dim](planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample, dim=self.dim)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dim=self.dim) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def resnet_basic() -> ResNet:
    """ResNet with one BasicBlock per stage, widths 8/16/32."""
    return ResNet(BasicBlock, [1, 1, 1], (8, 16, 32))


def resnet_bottleneck() -> ResNet:
    """ResNet with one Bottleneck per stage, bottleneck widths 4/8/16 (outputs 16/32/64)."""
    return ResNet(Bottleneck, [1, 1, 1], (4, 8, 16))


def r3d() -> ResNet:
    """r3d_18-style video ResNet with one 3x3x3 BasicBlock per stage, widths 8/16/32."""
    return ResNet(BasicBlock, [1, 1, 1], (8, 16, 32), dim=3)


# --------------------------------------------------------------------------- MobileNetV3 (torchvision)

class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation with 1x1 convs and a hard-sigmoid gate."""

    def __init__(self, input_channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        scale = F.adaptive_avg_pool2d(x, 1)
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(scale))))
        return scale * x


class InvertedResidual(nn.Module):
    """MobileNetV3 block: expand 1x1, depthwise 3x3, optional SE, linear project 1x1."""

    def __init__(self, cin, expanded, cout, stride, use_se, activation):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expanded != cin:
            layers.append(ConvNormActivation(cin, expanded, 1, activation_layer=activation))
        layers.append(ConvNormActivation(expanded, expanded, 3, stride, groups=expanded, activation_layer=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4)))
        layers.append(ConvNormActivation(expanded, cout, 1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result += x
        return result


class MobileNetV3(nn.Module):
    """Small MobileNetV3: hardswish stem, four inverted residuals (total stride 8), MLP classifier."""

    def __init__(self, num_classes=10):
        super().__init__()
        hs, re = nn.Hardswish, nn.ReLU
        self.features = nn.Sequential(
            ConvNormActivation(3, 8, 3, stride=2, activation_layer=hs),
            InvertedResidual(8, 8, 8, 1, True, re),
            InvertedResidual(8, 24, 16, 2, False, re),
            InvertedResidual(16, 32, 16, 1, True, hs),
            InvertedResidual(16, 48, 24, 2, True, hs),
            ConvNormActivation(24, 48, 1, activation_layer=hs),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(48, 64), nn.Hardswish(inplace=True),
                                        nn.Dropout(p=0.2, inplace=True), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --------------------------------------------------------------------------- EfficientNet (timm)

class SqueezeExcite(nn.Module):
    """timm-style SE: spatial mean, reduce/expand 1x1 convs, sigmoid gate."""

    def __init__(self, channels: int, rd_channels: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, rd_channels, 1)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(rd_channels, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: Tensor) -> Tensor:
        x_se = x.mean((2, 3), keepdim=True)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x_se)))
        return x * self.gate(x_se)


class MBConv(nn.Module):
    """EfficientNet MBConv: SiLU expand, depthwise kxk, SE, project, residual with stochastic depth."""

    def __init__(self, cin, cout, expand_ratio, kernel_size, stride, drop_path_rate=0.0):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        expanded = cin * expand_ratio
        layers = []
        if expanded != cin:
            layers.append(ConvNormActivation(cin, expanded, 1, activation_layer=nn.SiLU))
        layers += [ConvNormActivation(expanded, expanded, kernel_size, stride, groups=expanded, activation_layer=nn.SiLU),
                   SqueezeExcite(expanded, max(1, cin // 4)),
                   ConvNormActivation(expanded, cout, 1, activation_layer=None)]
        self.block = nn.Sequential(*layers)
        self.drop_path = DropPath(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        result = self.block(x)
        if self.use_res_connect:
            result = self.drop_path(result) + x
        return result


class EfficientNet(nn.Module):
    """Small EfficientNet: SiLU stem, four MBConvs (total stride 8), conv head, dropout, linear."""

    def __init__(self, num_classes=10, drop_path_rate=0.2):
        super().__init__()
        cfg = [(8, 8, 1, 3, 1), (8, 16, 4, 3, 2), (16, 16, 4, 5, 1), (16, 24, 4, 5, 2)]
        self.stem = ConvNormActivation(3, 8, 3, stride=2, activation_layer=nn.SiLU)
        self.blocks = nn.Sequential(*[MBConv(*c, drop_path_rate=drop_path_rate * i / len(cfg))
                                      for i, c in enumerate(cfg)])
        self.head = ConvNormActivation(24, 64, 1, activation_layer=nn.SiLU)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


# --------------------------------------------------------------------------- DenseNet (torchvision)

class _DenseLayer(nn.Module):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3 on the concatenation of all previous features."""

    def __init__(self, num_input_features, growth_rate, bn_size):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(num_input_features)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(num_input_features, bn_size * growth_rate, kernel_size=1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, kernel_size=3, padding=1, bias=False)

    def bn_function(self, inputs: list[Tensor]) -> Tensor:
        concated_features = torch.cat(inputs, 1)
        return self.conv1(self.relu1(self.norm1(concated_features)))

    def forward(self, prev_features: list[Tensor]) -> Tensor:
        bottleneck_output = self.bn_function(prev_features)
        return self.conv2(self.relu2(self.norm2(bottleneck_output)))


class _DenseBlock(nn.ModuleDict):
    """Dense block: every layer sees the concatenation of the block input and all earlier outputs."""

    def __init__(self, num_layers, num_input_features, bn_size, growth_rate):
        super().__init__()
        for i in range(num_layers):
            layer = _DenseLayer(num_input_features + i * growth_rate, growth_rate, bn_size)
            self.add_module(f"denselayer{i + 1}", layer)

    def forward(self, init_features: Tensor) -> Tensor:
        features = [init_features]
        for _name, layer in self.items():
            features.append(layer(features))
        return torch.cat(features, 1)


class _Transition(nn.Sequential):
    """BN-ReLU-conv1x1 then 2x2 average pooling."""

    def __init__(self, num_input_features, num_output_features):
        super().__init__()
        self.add_module("norm", nn.BatchNorm2d(num_input_features))
        self.add_module("relu", nn.ReLU(inplace=True))
        self.add_module("conv", nn.Conv2d(num_input_features, num_output_features, kernel_size=1, bias=False))
        self.add_module("pool", nn.AvgPool2d(kernel_size=2, stride=2))


class DenseNet(nn.Module):
    """Small DenseNet: 7x7/2 stem + max pool, two dense blocks (growth 8) with a transition."""

    def __init__(self, growth_rate=8, block_config=(3, 3), num_init_features=16, bn_size=2, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(3, num_init_features, kernel_size=7, stride=2, padding=3, bias=False)),
            ("norm0", nn.BatchNorm2d(num_init_features)),
            ("relu0", nn.ReLU(inplace=True)),
            ("pool0", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
        ]))
        num_features = num_init_features
        for i, num_layers in enumerate(block_config):
            self.features.add_module(f"denseblock{i + 1}", _DenseBlock(num_layers, num_features, bn_size, growth_rate))
            num_features += num_layers * growth_rate
            if i != len(block_config) - 1:
                self.features.add_module(f"transition{i + 1}", _Transition(num_features, num_features // 2))
                num_features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(num_features))
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        features = self.features(x)
        out = F.relu(features, inplace=True)
        out = F.adaptive_avg_pool2d(out, (1, 1))
        out = torch.flatten(out, 1)
        return self.classifier(out)


# --------------------------------------------------------------------------- ConvNeXt (timm / torchvision)

class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor (permute to channels-last and back)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm + MLP, layer scale, residual with stochastic depth."""

    def __init__(self, dim, drop_path=0.0, layer_scale_init_value=0.5):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        # Real ConvNeXt uses 1e-6; a large value keeps the branch visible in tests.
        self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        x = self.gamma * x
        x = x.permute(0, 3, 1, 2)
        return shortcut + self.drop_path(x)


class ConvNeXt(nn.Module):
    """Small ConvNeXt: 4x4/4 patchify stem, two stages (16, 32) with a 2x2/2 downsample."""

    def __init__(self, depths=(2, 1), dims=(16, 32), drop_path_rate=0.1, num_classes=10):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(nn.Conv2d(3, dims[0], kernel_size=4, stride=4),
                                                              LayerNorm2d(dims[0], eps=1e-6))])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(nn.Sequential(LayerNorm2d(dims[i], eps=1e-6),
                                                        nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*[ConvNeXtBlock(dims[i], rates[start + j]) for j in range(depth)]))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(len(self.stages)):
            x = self.stages[i](self.downsample_layers[i](x))
        x = self.norm(x.mean([-2, -1]))
        return self.head(x)


# --------------------------------------------------------------------------- U-Net

def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    """(conv3x3 -> BN -> ReLU) x 2."""
    return nn.Sequential(conv3x3(in_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True),
                         conv3x3(out_channels, out_channels), nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


def down(in_channels: int, out_channels: int) -> nn.Sequential:
    """2x2 max pool then double conv."""
    return nn.Sequential(nn.MaxPool2d(2), double_conv(in_channels, out_channels))


class Up(nn.Module):
    """Upsample x2 halving channels (transposed conv, or bilinear + conv3x3), concat skip, double conv."""

    def __init__(self, in_channels, out_channels, bilinear=False):
        super().__init__()
        if bilinear:
            self.up = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                    nn.Conv2d(in_channels, in_channels // 2, kernel_size=3, padding=1))
        else:
            self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = double_conv(in_channels, out_channels)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        x = torch.cat([skip, x], dim=1)
        return self.conv(x)


class UNet(nn.Module):
    """U-Net with three down/up steps (inputs must be multiples of 8); ``aux=True`` returns a dict."""

    def __init__(self, n_channels=3, n_classes=3, bilinear=False, aux=False, widths=(8, 16, 32, 64)):
        super().__init__()
        w = widths
        self.inc = double_conv(n_channels, w[0])
        self.down1, self.down2, self.down3 = down(w[0], w[1]), down(w[1], w[2]), down(w[2], w[3])
        self.up1, self.up2, self.up3 = Up(w[3], w[2], bilinear), Up(w[2], w[1], bilinear), Up(w[1], w[0], bilinear)
        self.outc = nn.Conv2d(w[0], n_classes, kernel_size=1)
        self.aux_classifier = nn.Conv2d(w[3], n_classes, kernel_size=1) if aux else None

    def forward(self, x: Tensor):
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        logits = self.outc(self.up3(self.up2(self.up1(x4, x3), x2), x1))
        if self.aux_classifier is None:
            return logits
        result = OrderedDict()
        result["out"] = logits
        aux = self.aux_classifier(x4)
        result["aux"] = F.interpolate(aux, scale_factor=8, mode="bilinear", align_corners=False)
        return result


# --------------------------------------------------------------------------- 1d CNN

class CNN1d(nn.Module):
    """1d CNN over (N, 4, L) sequences: strided conv, ceil-mode max pool, residual block, global max."""

    def __init__(self, in_channels=4, num_classes=10):
        super().__init__()
        kw = dict(norm_layer=nn.BatchNorm1d, conv_layer=nn.Conv1d)
        self.features = nn.Sequential(
            ConvNormActivation(in_channels, 16, 5, **kw),
            ConvNormActivation(16, 32, 3, stride=2, **kw),
            nn.MaxPool1d(2, ceil_mode=True),
            BasicBlock(32, 32, dim=1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = x.amax(dim=-1)
        return self.fc(x)


# --------------------------------------------------------------------------- registry

class InputSpec(NamedTuple):
    """Per-sample input description: spatial rank, channels, required size multiple, example sizes."""
    rank: int
    channels: int
    multiple: int
    sizes: list[tuple[int, ...]]


def init_weights(model: nn.Module) -> nn.Module:
    """Variance-preserving conv init (kaiming normal, fan_in) so untrained nets stay input-sensitive."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def _eval(factory: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    """Zero-arg factory: build, initialize, switch to eval mode."""
    return lambda: init_weights(factory()).eval()


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet_basic": _eval(resnet_basic),
    "resnet_bottleneck": _eval(resnet_bottleneck),
    "mobilenetv3": _eval(MobileNetV3),
    "efficientnet": _eval(EfficientNet),
    "densenet": _eval(DenseNet),
    "convnext": _eval(ConvNeXt),
    "unet": _eval(UNet),
    "unet_bilinear": _eval(lambda: UNet(bilinear=True)),
    "unet_dict": _eval(lambda: UNet(aux=True)),
    "r3d": _eval(r3d),
    "cnn1d": _eval(CNN1d),
}

_IMAGE = [(40, 50), (37, 45), (23, 31)]
_UNET = [(40, 48), (56, 32), (24, 40)]
INPUTS: dict[str, InputSpec] = {
    "resnet_basic": InputSpec(2, 3, 1, _IMAGE),
    "resnet_bottleneck": InputSpec(2, 3, 1, _IMAGE),
    "mobilenetv3": InputSpec(2, 3, 1, _IMAGE),
    "efficientnet": InputSpec(2, 3, 1, _IMAGE),
    "densenet": InputSpec(2, 3, 1, _IMAGE),
    "convnext": InputSpec(2, 3, 1, [(40, 50), (35, 45), (27, 22)]),
    "unet": InputSpec(2, 3, 8, _UNET),
    "unet_bilinear": InputSpec(2, 3, 8, _UNET),
    "unet_dict": InputSpec(2, 3, 8, _UNET),
    "r3d": InputSpec(3, 3, 1, [(5, 17, 21), (8, 20, 26), (3, 13, 11)]),
    "cnn1d": InputSpec(1, 4, 1, [(37,), (50,), (23,)]),
}


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running stats and affine params so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                if m.running_mean is not None:
                    m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
                    m.running_var.copy_(0.5 + 1.5 * torch.rand(n, generator=g))
                if m.weight is not None:
                    m.weight.copy_(1 + 0.2 * torch.randn(n, generator=g))
                    m.bias.copy_(0.2 * torch.randn(n, generator=g))
    return model


def build(name: str, seed: int = 0) -> nn.Module:
    """Deterministic float64 eval-mode model ``name`` (weights from ``seed``; global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name]()
    return randomize_batchnorm(model, seed).double().eval()
