"""One rule table for both front ends: a rule is filed once under every way its op appears (torch function,
Tensor method, ATen op), and the public ways to add one (``register_elementwise``, ``register_rule``) file into
the same table. Each test: refused before the rule exists, exact per image (float64, NaN in the padding) after."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.nn as mnn
from masked_torch.nn.rules import ATEN, FUNCTIONS, METHODS, Val, aten_to_torch
from masked_torch.utils import pad_batch
from test_convert_models import assert_per_image


def nan_padded(imgs):
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    return torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


def assert_exact(model, converted, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randn(3, 9, 12, generator=g, dtype=torch.float64),
            torch.randn(3, 13, 7, generator=g, dtype=torch.float64)]
    x, m = nan_padded(imgs)
    with torch.no_grad():
        out, out_mask = converted(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


def example():
    return torch.randn(2, 3, 10, 10, dtype=torch.float64)


def test_a_function_its_method_and_its_aten_op_share_one_rule():
    assert FUNCTIONS[torch.add] == METHODS["add"]
    assert FUNCTIONS[F.conv2d].fn is FUNCTIONS[F.conv1d].fn and FUNCTIONS[F.conv2d].options == {"nd": 2}
    # the ATen call of a torch.export capture becomes the function whose rule it takes
    _, fn, _, _ = ATEN[torch.ops.aten.conv2d](
        {"input": 0, "weight": 1, "bias": None, "stride": [1], "padding": [0], "dilation": [1], "groups": 1})
    assert FUNCTIONS[fn] == FUNCTIONS[F.conv2d]
    assert aten_to_torch(torch.ops.aten.add.Tensor, (1, 2), {})[:2] == ("call_method", "add")


class Around(nn.Module):
    """A conv, the op under test (in each subclass's forward), a conv."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 2, 3, padding=1)


class SinhNet(Around):
    def forward(self, x):
        return self.out(self.conv(x).sinh())


def test_register_elementwise_takes_a_tensor_method_name():
    model = SinhNet().double().eval()
    with pytest.raises(TypeError, match="sinh"):
        mnn.convert(model, "masked", capture="fx")
    assert mnn.register_elementwise("sinh", preserves_zero=True) == "sinh"
    assert_exact(model, mnn.convert(model, "masked", capture="fx"))


@torch.library.custom_op("masked_torch_test::scaled_tanh", mutates_args=())
def scaled_tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x) * 2


@scaled_tanh.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOpNet(Around):
    def forward(self, x):
        return self.out(torch.ops.masked_torch_test.scaled_tanh(self.conv(x)))


def test_register_elementwise_takes_a_custom_aten_op_for_both_front_ends():
    model = CustomOpNet().double().eval()
    with pytest.raises(TypeError, match="scaled_tanh"):
        mnn.convert(model, "masked", capture="export", example=example())
    mnn.register_elementwise(torch.ops.masked_torch_test.scaled_tanh, preserves_zero=True)
    for capture in ("fx", "export"):
        converted = mnn.convert(model, "masked", capture=capture, example=example())
        assert converted.capture == capture
        assert_exact(model, converted)


@torch.fx.wrap
def resize(x, scale_factor=None, mode="nearest"):
    return F.interpolate(x, scale_factor=scale_factor, mode=mode)


class ResizeNet(Around):
    def forward(self, x):
        return self.out(resize(self.conv(x), scale_factor=2))


def test_register_rule_like_an_op_with_the_same_arguments():
    model = ResizeNet().double().eval()
    with pytest.raises(TypeError, match="resize"):
        mnn.convert(model, "masked", capture="fx")
    mnn.register_rule(resize, like=F.interpolate)
    assert_exact(model, mnn.convert(model, "masked", capture="fx"))


@torch.fx.wrap
def gate(x, g):
    return x * g


class GateNet(Around):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        return self.out(gate(self.conv(x), torch.sigmoid(self.scale)))


def test_register_rule_as_a_decorator_with_a_rule_of_ones_own():
    model = GateNet().double().eval()
    with pytest.raises(TypeError, match="gate"):
        mnn.convert(model, "masked", capture="fx")
    calls = []

    @mnn.register_rule(gate)
    def gate_rule(rw, node, env, args, kwargs):
        x = env[node.args[0]]  # a per-channel gate: the mask of x, and 0 stays 0
        calls.append(node.name)
        return Val(rw.copy_node(node, args, kwargs), x.mask, True, x.clean)

    assert_exact(model, mnn.convert(model, "masked", capture="fx"))
    assert calls and set(calls) == {"gate"}  # the rule wrote the node


def test_register_rule_refuses_what_is_not_an_op_or_has_no_rule():
    with pytest.raises(TypeError, match="a target is"):
        mnn.register_rule(42, like=F.relu)
    with pytest.raises(ValueError, match="no mask rule to share"):
        mnn.register_rule(resize, like=torch.fft.fft)
    with pytest.raises(TypeError, match="not both"):
        mnn.register_rule(resize, rule=gate, like=F.relu)


def test_a_layer_type_is_filed_with_its_ops_rule():
    """nn.Conv2d sits in the same table as F.conv2d and aten.conv2d, with its masked layers per kind."""
    from masked_torch.nn.rules.table import LAYERS, layer_for

    assert layer_for(nn.Conv2d, "masked") is mnn.MaskedConv2d and layer_for(nn.Conv2d, "partial") is mnn.PartialConv2d
    assert layer_for(nn.BatchNorm2d) is mnn.MaskedBatchNorm2d and layer_for(nn.Flatten) is mnn.MaskedFlatten
    assert LAYERS[nn.GroupNorm]["partial"] is mnn.MaskedGroupNorm  # one masked layer serves both kinds


class Shift(nn.Module):
    """A layer of one's own: ``x + b`` per channel, then a mean over its 3x3 neighbourhood (zero padded)."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.linspace(-1, 1, channels))

    def forward(self, x):
        y = x + self.bias[:, None, None]
        return F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)


class MaskedShift(mnn.MaskedModule, Shift):
    """Its masked form: the bias on the valid positions, the mean over the valid neighbours only."""

    input_zeroed = False

    @classmethod
    def from_plain(cls, module):
        return cls(module.bias.numel()).to(module.bias)

    def forward(self, input, mask=None):
        if mask is None:
            return super().forward(input), None
        y = (input + self.bias[:, None, None]) * mask
        return _valid_mean(y, mask), mask


def _valid_mean(y, mask):
    total = F.avg_pool2d(y, 3, 1, 1, divisor_override=1)
    count = F.avg_pool2d(mask.expand_as(y[:, :1]), 3, 1, 1, divisor_override=1)
    return torch.where(mask != 0, total / count.clamp_min(1), torch.zeros_like(total))


class WithShift(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shift = Shift(4)

    def forward(self, x):
        return torch.relu(self.shift(self.conv(x)))


@pytest.mark.parametrize("capture", ["fx", "export"])
def test_register_rule_files_a_layer_of_ones_own(capture):
    model = WithShift().double().eval()
    mnn.register_rule(Shift, layer=MaskedShift)
    try:
        converted = mnn.convert(model, "masked", capture=capture)
        assert_exact(model, converted)
        assert isinstance(converted.shift, MaskedShift)
        model.load_state_dict(converted.state_dict(), strict=True)
    finally:
        from masked_torch.nn.rules.table import LAYERS
        del LAYERS[Shift]
    with pytest.raises(TypeError, match="needs layer="):
        mnn.register_rule(Shift)
