"""Interpolation modes with no rule on the canvas (align_corners=True, bicubic, area, recompute_scale_factor,
antialias) are interpolated per image: each image of a padded batch gets exactly what the plain op gives it
alone (float64, NaN in the padding), as the segmentation heads of model libraries use them
(``nn.Upsample(scale_factor=4, mode="bilinear", align_corners=True)``). A zero pad is the identity in any mode."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.functional as MF
import masked_torch.nn as mnn
from masked_torch.utils import pad_batch
from test_convert_models import assert_per_image

SIZES = [(13, 17), (9, 6), (16, 11)]


def padded(imgs):
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    return torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


def images(c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(c, h, w, generator=g, dtype=torch.float64) for h, w in SIZES]


CASES = [
    dict(scale_factor=2, mode="bilinear", align_corners=True),
    dict(scale_factor=3, mode="bilinear", align_corners=True),
    dict(scale_factor=0.5, mode="bilinear", align_corners=True),
    dict(scale_factor=1.5, mode="bilinear", align_corners=True),
    dict(scale_factor=2, mode="bicubic", align_corners=False),
    dict(scale_factor=2, mode="bicubic", align_corners=True),
    dict(scale_factor=0.5, mode="area"),
    dict(scale_factor=1.5, mode="bilinear", align_corners=False, recompute_scale_factor=True),
    dict(scale_factor=0.5, mode="bilinear", align_corners=False, antialias=True),
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_functional_rule_is_each_image_alone(kw):
    imgs = images()
    x, m = padded(imgs)
    out, out_mask = MF.masked_interpolate(x, m, **kw)
    assert_per_image(out, out_mask, lambda k: F.interpolate(imgs[k][None], **kw))


class Head(nn.Module):
    """A segmentation head as the libraries write it: conv, norm, upsampling to the input's scale."""

    def __init__(self, up):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.up = up
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.out(self.up(self.body(x)))


class FunctionalHead(Head):
    def __init__(self, kw):
        super().__init__(nn.Identity())
        self.kw = kw

    def forward(self, x):
        return self.out(F.interpolate(self.body(x), **self.kw))


@pytest.mark.parametrize("capture", ["fx", "export"])
@pytest.mark.parametrize("module", [True, False], ids=["nn.Upsample", "F.interpolate"])
def test_converted_head_is_each_image_alone(capture, module):
    kw = dict(scale_factor=2, mode="bilinear", align_corners=True)
    torch.manual_seed(0)
    model = (Head(nn.Upsample(**kw)) if module else FunctionalHead(kw)).double().eval()
    imgs = images()
    x, m = padded(imgs)
    masked = mnn.convert(model, "masked", capture=capture, example=x.nan_to_num())
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


def test_holes_are_refused_when_it_runs():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    m = torch.ones(2, 1, 8, 8, dtype=torch.float64)
    m[1, :, 2, 2] = 0
    with pytest.raises(ValueError, match="interpolates each image's own region, which must be a box"):
        MF.masked_interpolate(x, m, 2, "bilinear", True)


def test_a_zero_pad_is_the_identity_in_any_mode():
    """MONAI's UpCat pads by zero amounts with mode='replicate' (its sizes already match)."""
    class UpCat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            return F.pad(self.conv(x), [0, 0, 0, 0], mode="replicate")

    model = UpCat().double().eval()
    imgs = images()
    with torch.no_grad():
        out, out_mask = mnn.convert(model, "masked")(*padded(imgs))
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))
