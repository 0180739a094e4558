"""Adaptive pooling to sizes other than 1 (PSP pyramid pooling, ``AdaptiveAvgPool2d((7, 7))``) per image: each
image of a padded batch gets exactly what the plain pool gives it alone."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import masked_torch.functional as MF
import masked_torch.nn as mnn
from masked_torch.utils import pad_batch
from test_convert_models import assert_per_image

# float64 throughout: the converted model runs the same kernels on each image's own box (the bins are the image's),
# so the only difference from the image alone is summation order in the convolutions; 1e-9 relative is the
# suite's float64 bound (assert_per_image).


class PSPHead(nn.Module):
    """A PSP-style head: pyramid pooling to 1, 2, 3, 6 bins, each branch a 1x1 conv + BN + ReLU, upsampled back
    to the feature map's size with bilinear interpolation and concatenated."""

    def __init__(self, channels=4, bins=(1, 2, 3, 6), classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU())
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(channels, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU())
            for b in bins)
        self.classify = nn.Conv2d(channels + 2 * len(bins), classes, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        branches = [F.interpolate(stage(x), size=x.shape[-2:], mode="bilinear") for stage in self.stages]
        return self.classify(torch.cat([x] + branches, dim=1))


class FunctionalPyramid(nn.Module):
    """The functional forms: ``F.adaptive_avg_pool2d(x, (k, k))``, adaptive max pooling, a ``None`` dim."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        h, w = x.shape[-2:]
        a = F.interpolate(F.adaptive_avg_pool2d(x, (3, 2)), size=(h, w), mode="nearest")
        b = F.interpolate(F.adaptive_max_pool2d(x, 4), size=(h, w), mode="bilinear", align_corners=True)
        c = F.adaptive_avg_pool2d(x, (2, None))  # pools the height only: the width stays each image's
        return x + a + b, c


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in [*model.parameters(), *model.buffers()]:
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5 + (1.0 if p.dim() == 1 else 0.0))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.abs_()
    return model.double().eval()


# image sizes: one larger than every bin count, one smaller than the 6-bin stage (4 x 5 and 2 x 3), one tall
SIZES = [(13, 17), (4, 5), (20, 9), (2, 3)]


def images(channels=3, sizes=SIZES, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(channels, *s, generator=g, dtype=torch.float64) for s in sizes]


def nan_padded(imgs, mask_dtype=torch.float64):
    x, m = pad_batch(imgs, mask_dtype=mask_dtype)
    return torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


@pytest.mark.parametrize("model", [PSPHead, FunctionalPyramid])
def test_masked_pyramid_pooling_equals_the_unmodified_model_on_each_image_alone(model):
    model = randomize(model())
    imgs = images()
    masked = mnn.convert(model, "masked")
    x, m = nan_padded(imgs)
    with torch.no_grad():
        out, out_mask = masked(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


def test_partial_pyramid_pooling_is_padding_invariant():
    model = randomize(PSPHead())
    imgs = images()
    partial = mnn.convert(model, "partial", update_mask=False)
    x, m = nan_padded(imgs)
    with torch.no_grad():
        out, out_mask = partial(x, m)
        assert_per_image(out, out_mask, lambda k: partial(*pad_batch([imgs[k]], mask_dtype=torch.float64))[0])


def test_plain_kind_runs_the_pools_on_the_canvas_with_the_masked_kinds_mask():
    model = randomize(PSPHead())
    x, m = pad_batch(images(), mask_dtype=torch.float64)
    with torch.no_grad():
        out, out_mask = mnn.convert(model, "plain")(x, m)
        _, masked_mask = mnn.convert(model, "masked")(x, m)
        assert torch.equal(out, model(x))
    assert torch.equal(out_mask, masked_mask)


@pytest.mark.parametrize("nd,mode", [(1, "mean"), (1, "amax"), (2, "mean"), (2, "amax"), (3, "mean"), (3, "amax")])
@pytest.mark.parametrize("output_size", [3, 5, "with_none"])
def test_layer_pools_each_image_alone_any_rank_and_mode(nd, mode, output_size):
    """The module form (``MaskedAdaptive{Avg,Max}Pool{1,2,3}d``, as convert makes it) against the plain layer on
    each image alone; 5 bins is more than some images' sides (bins then overlap, as in PyTorch)."""
    plain_cls = {"mean": [nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d],
                 "amax": [nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d]}[mode][nd - 1]
    size = (2,) + (None,) * (nd - 1) if output_size == "with_none" else output_size
    if output_size == "with_none" and nd == 1:
        size = (4,)  # AdaptiveAvgPool1d takes no None
    plain = plain_cls(size)
    layer = mnn.convert(plain, "masked")
    assert isinstance(layer, mnn.MaskedModule)
    sizes = {1: [(11,), (3,), (7,)], 2: [(9, 6), (3, 4), (7, 11)], 3: [(5, 3, 6), (2, 4, 3), (6, 6, 2)]}[nd]
    imgs = images(2, sizes)
    x, m = nan_padded(imgs)
    out, out_mask = layer(x, m)
    x0 = pad_batch(imgs)[0]
    assert torch.equal(layer(x0)[0], plain(x0)), "mask=None is the plain layer"
    for k, img in enumerate(imgs):
        ref = plain(img[None])
        got = out[(slice(k, k + 1), slice(None)) + tuple(slice(0, s) for s in ref.shape[2:])]
        assert torch.equal(got, ref), "the same kernel on the image's own box"
        full = out_mask.expand(out.shape[:1] + out_mask.shape[1:2] + out.shape[2:])[k]
        inside = torch.zeros_like(full, dtype=torch.bool)
        inside[(slice(None),) + tuple(slice(0, s) for s in ref.shape[2:])] = True
        assert bool((full[inside] == 1).all()) and not bool(full[~inside].any())
        assert bool((out[k][~inside.expand_as(out[k])] == 0).all())


def test_vgg_style_classifier_after_a_7x7_pool_is_per_image():
    """``AdaptiveAvgPool2d((7, 7))`` + flatten + Linear (VGG, AlexNet): once refused, now per image."""
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((7, 7)),
                                    nn.Flatten(), nn.Linear(4 * 49, 5)))
    imgs = images(sizes=[(9, 12), (5, 6), (14, 8)])
    masked = mnn.convert(model, "masked")
    x, m = nan_padded(imgs)
    with torch.no_grad():
        out, out_mask = masked(x, m)
    assert out_mask.shape == (3, 1)
    with torch.no_grad():
        for k, img in enumerate(imgs):
            ref = model(img[None])
            assert float((out[k:k + 1] - ref).abs().max() / ref.abs().max()) <= 1e-9


@pytest.mark.parametrize("convert_first", [True, False])
def test_a_mask_with_holes_is_refused_when_the_model_runs(convert_first):
    imgs = images()
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    m[0, 0, 2, 3] = 0  # a hole inside the first image
    if convert_first:
        masked = mnn.convert(randomize(PSPHead()), "masked")
        call = lambda: masked(x, m)  # noqa: E731
    else:
        call = lambda: mnn.MaskedAdaptiveAvgPool2d(3)(x, m)  # noqa: E731
    with pytest.raises(ValueError, match=r"box at the canvas origin .* sample 0's mask \(4, 1, 20, 17\) has "
                                         r"holes") as info:
        call()
    assert "\n" not in str(info.value)
    # a hole is fine for global pooling: it pools the valid positions of any mask
    out, _ = mnn.MaskedAdaptiveAvgPool2d(1)(x, m)
    valid = m[0, 0] != 0
    assert torch.allclose(out[0, :, 0, 0], x[0][:, valid].mean(-1), rtol=1e-12, atol=0)


def test_channels_that_differ_are_refused():
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    m = torch.ones(1, 2, 5, 5, dtype=torch.float64)
    m[0, 1, 3:] = 0
    with pytest.raises(ValueError, match="differs between channels"):
        MF.masked_adaptive_pool(x, m, 2, nd=2)


def test_a_sample_without_valid_positions_gives_zeros_and_mask_zero():
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    m = torch.ones(2, 1, 6, 6, dtype=torch.float64)
    m[1] = 0
    x[1] = float("nan")
    out, out_mask = MF.masked_adaptive_pool(x, m, (2, 3), nd=2)
    assert torch.equal(out[0], F.adaptive_avg_pool2d(x[:1], (2, 3))[0])
    assert torch.equal(out[1], torch.zeros(3, 2, 3, dtype=torch.float64))
    assert out_mask.flatten().tolist() == [1.0, 0.0]


def test_output_size_from_the_canvas_is_refused_at_conversion():
    class FromCanvas(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            x = self.conv(x)
            return F.adaptive_avg_pool2d(x, x.shape[-1] // 2)

    with pytest.raises(ValueError, match="uses a spatial size of a masked tensor"):
        mnn.convert(FromCanvas(), "masked")


@pytest.mark.parametrize("size", [0, (2, 3, 4), "7", (2, -1)])
def test_bad_output_sizes_are_refused_at_construction(size):
    with pytest.raises(ValueError, match="output_size must be"):
        mnn.MaskedAdaptiveAvgPool2d(size)


@pytest.mark.parametrize("kind", ["masked", "partial"])
def test_training_step_through_pyramid_pooling_gives_finite_gradients(kind):
    model = randomize(PSPHead()).train()
    masked = mnn.convert(model, kind)
    x, m = nan_padded(images())
    x.requires_grad_(True)
    out, out_mask = masked(x, m)
    ((out * out_mask) ** 2).mean().backward()
    for name, param in masked.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), name
    assert bool(torch.isfinite(x.grad).all())
    assert bool((x.grad[~m.bool().expand_as(x)] == 0).all()), "nothing flows into the padding"
