"""convert(), gradients, and the padded-batch promise on real photos."""
import numpy as np
import pytest
import torch
from torch import nn

import masked_torch.nn as mnn
from masked_torch.functional import masked_conv, partial_conv


def plain_model():
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(32, 4, 3, padding=1, bias=False), nn.GELU()),
        nn.Dropout(0.1),
    ).eval()


@pytest.mark.parametrize("kind,conv_cls", [("masked", mnn.MaskedConv2d), ("mconv", mnn.MaskedConv2d),
                                           ("partial", mnn.PartialConv2d), ("pconv", mnn.PartialConv2d)])
def test_convert_carries_weights_and_structure(kind, conv_cls):
    model = plain_model()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
    masked = mnn.convert(model, kind)
    assert isinstance(masked, mnn.MaskedSequential) and isinstance(masked[3], mnn.MaskedSequential)
    assert type(masked[0]) is conv_cls and type(masked[3][1]) is conv_cls
    assert type(masked[1]) is mnn.MaskedBatchNorm2d and isinstance(masked[3][0], mnn.MaskedUnshuffle2d)
    assert isinstance(masked[2], mnn.Masked) and isinstance(masked[2].module, nn.ReLU)
    assert not masked.training
    # same names, same tensors
    plain_sd, masked_sd = model.state_dict(), masked.state_dict()
    assert set(masked_sd) == set(plain_sd)
    for key in plain_sd:
        assert torch.equal(plain_sd[key], masked_sd[key])
    x = torch.randn(2, 3, 8, 10)
    y, out_mask = masked(x)
    assert out_mask is None and torch.allclose(y, model(x), atol=1e-6)
    # the original is untouched
    assert type(model[0]) is nn.Conv2d


def test_convert_partial_options_and_plain_kind():
    model = plain_model()
    pconv = mnn.convert(model, "partial", update_mask=False, multichannel=True)
    assert pconv[0].update_mask is False and pconv[3][1].multichannel is True
    plain = mnn.convert(model, "plain")
    assert isinstance(plain[0], mnn.Unmasked) and type(plain[0].module) is nn.Conv2d
    assert set(plain.state_dict()) == set(model.state_dict()), "the plain kind keeps the names too"
    x, m = torch.randn(2, 3, 8, 10), torch.ones(2, 1, 8, 10)
    m[1, :, 4:] = 0
    y, out_mask = plain(x, m)
    assert torch.allclose(y, model(x), atol=1e-6), "plain kind runs the convolutions unmasked"
    assert out_mask.shape[1] == 1
    with pytest.raises(ValueError, match="only apply"):
        mnn.convert(model, "masked", update_mask=False)
    with pytest.raises(ValueError, match="kind"):
        mnn.convert(model, "fancy")


class CumSum(nn.Module):
    def forward(self, x):
        return torch.cumsum(x, 2)


def test_convert_names_the_module_it_cannot_convert():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Sequential(nn.ReLU(), CumSum()))
    with pytest.raises(TypeError, match=r"cumsum.*in module '1\.1' \(CumSum\)"):
        mnn.convert(model, "masked")
    with pytest.raises(TypeError, match=r"bilinear\) in Bilinear\.forward"):
        mnn.convert(nn.Bilinear(3, 3, 3), "masked")


# --- gradients -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_channels", [1, 4])
@pytest.mark.parametrize("fn,options", [(masked_conv, {}), (partial_conv, {}),
                                        (partial_conv, {"multichannel": True}),
                                        (partial_conv, {"update_mask": False})])
def test_gradcheck(fn, options, mask_channels):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    m = (torch.rand(2, mask_channels, 5, 6) > 0.3).double()
    m[1, :, :, 4:] = 0

    def f(x, w, b):
        return fn(x, m, w, b, 1, 1, 1, 2, **options)[0]

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_gradients_flow_to_weight_and_bias_through_a_stack():
    model = mnn.convert(plain_model().train(), "masked")
    x = torch.randn(2, 3, 8, 10)
    m = torch.ones(2, 1, 8, 10)
    m[1, :, 5:] = 0
    y, out_mask = model(x, m)
    (y * out_mask).sum().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_masked_batch_norm_gradcheck():
    bn = mnn.MaskedBatchNorm2d(3).double().train()
    m = (torch.rand(2, 1, 4, 5) > 0.3).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: bn(x, m)[0], (x,))


# --- the promise: inside each image, the image's own output ---------------------------------------------

def photos():
    from skimage import data

    out = []
    for name, crop in [("astronaut", (200, 232)), ("chelsea", (160, 248)), ("coffee", (184, 136)),
                       ("rocket", (120, 200))]:
        img = getattr(data, name)()[: crop[0], : crop[1], :3]
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
        out.append((t - 0.5) / 0.25)
    return out


def photo_stack():
    torch.manual_seed(0)
    layers = []
    c = 3
    for i in range(1, 5):
        layers += [nn.PixelUnshuffle(2), nn.Conv2d(4 * c, 16 * i, 3, padding=1, bias=True), nn.ReLU()]
        c = 16 * i
    model = nn.Sequential(*layers).eval()
    with torch.no_grad():
        for mod in model:
            if isinstance(mod, nn.Conv2d):
                mod.bias.uniform_(-0.5, 0.5)  # a clearly visible bias
    return model


def pad_batch(images, multiple=16):
    h = max(i.shape[1] for i in images)
    w = max(i.shape[2] for i in images)
    h, w = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = torch.zeros(len(images), 3, h, w)
    m = torch.zeros(len(images), 1, h, w)
    for k, img in enumerate(images):
        x[k, :, : img.shape[1], : img.shape[2]] = img
        m[k, :, : img.shape[1], : img.shape[2]] = 1
    return x, m


@pytest.mark.parametrize("kind,options", [("masked", {}), ("partial", {"update_mask": False}),
                                          ("partial", {"update_mask": False, "multichannel": True})])
def test_padded_photos_give_each_photo_its_own_output(kind, options):
    images = photos()
    model = mnn.convert(photo_stack(), kind, **options)
    x, m = pad_batch(images)
    x = torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan")))  # garbage padding
    with torch.no_grad():
        y, out_mask = model(x, m)
        for k, img in enumerate(images):
            alone, alone_mask = model(*pad_batch([img]))
            h, w = alone.shape[2:]
            valid = alone_mask.amax(1, keepdim=True) > 0
            assert valid.any()
            got = y[k:k + 1, :, :h, :w]
            assert torch.equal(out_mask[k:k + 1, :, :h, :w].amax(1, keepdim=True) > 0, valid)
            diff = (got - alone).abs()[valid.expand_as(alone)]
            assert diff.max() <= 1e-4 * alone.abs().max(), (kind, k, float(diff.max()))


def test_plain_conv_leaks_on_the_same_photos():
    """The baseline really does differ (otherwise the test above would prove nothing)."""
    images = photos()
    model = photo_stack()
    x, m = pad_batch(images)
    with torch.no_grad():
        y = model(x)
        alone = model(pad_batch([images[3]])[0])
    h, w = alone.shape[2:]
    assert (y[3:4, :, :h, :w] - alone).abs().max() > 1e-2


def test_convert_keeps_dtype_device_and_frozen_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False)).double()
    model[0].weight.requires_grad_(False)
    masked = mnn.convert(model, "masked")
    assert masked[1].running_mean.dtype == torch.float64 and masked[0].weight.dtype == torch.float64
    assert masked[0].weight.requires_grad is False and masked[0].bias.requires_grad is True
