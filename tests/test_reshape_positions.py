"""Reshapes that merge or split dims of a masked tensor (functional.reshape_mask, functional.masked_reshape): the
plain reshape where each image's values keep their places; each image reshaped alone where the padded canvas's
size would move them; refused where no image can be reshaped alone (the batch dim merged). Both front ends."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import masked_torch.functional as MF
import masked_torch.nn as mnn
from masked_torch.utils import pad_batch
from test_convert_models import assert_per_image

FRONTS = ["fx", "export"]


class RowsAsSequence(nn.Module):
    """A Conv1d over ``x.flatten(2)``: neighbours along the sequence are the next row's first pixel only where
    the image is as wide as the canvas."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.seq = nn.Conv1d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        return self.seq(y.flatten(2)).view(n, c, h, w)


class ChannelsFromPositions(nn.Module):
    """``(N, HW, C).reshape(N, C, H, W)`` without the transpose back (as smp's MAnet position attention does):
    which values meet in a channel depends on ``H * W``."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        return self.out(y.flatten(2).transpose(1, 2).reshape(n, c, h, w))


class ChannelsLastMerge(nn.Module):
    """``(N, H, W, C) -> (N, H, W * C)`` and back: a merge of the channels after the positions keeps every
    image's values in place (the index ``x * C + c`` does not depend on the canvas)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.out = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        z = y.permute(0, 2, 3, 1).reshape(n, h, w * c)
        z = torch.relu(z) * 2.0
        return self.out(z.view(n, h, w, c).permute(0, 3, 1, 2))


class BatchTimesChannels(nn.Module):
    """``(N, C, H, W) -> (N * C, 1, H, W)``, a depthwise filter as a one-channel conv, and back."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        return self.shared(y.reshape(n * c, 1, h, w)).reshape(n, c, h, w)


def _batch(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.randn(3, *s, generator=g, dtype=torch.float64) for s in sizes]
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    return imgs, torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("cls", [RowsAsSequence, ChannelsFromPositions])
def test_a_reshape_that_would_move_an_images_values_reshapes_each_image_alone(cls, front):
    """Was silently wrong (0.29 and 0.79 absolute against each image alone), then refused: now each image is
    reshaped alone where the canvas's sizes would move its values (``x.flatten(2)`` packs each image's positions
    first, in its own row-major order; the view back unpacks them), so the Conv1d over the sequence and the
    channels mixed by ``H * W`` are each image's own. Images that fill the canvas keep the plain reshape."""
    torch.manual_seed(0)
    model = cls().double().eval()
    converted = mnn.convert(model, "masked", capture=front)
    for sizes in ([(5, 6), (7, 8)], [(5, 8), (7, 8), (3, 8)], [(7, 8), (7, 8)]):
        imgs, x, m = _batch(sizes)
        with torch.no_grad():
            out, out_mask = converted(x, m)
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("cls", [RowsAsSequence, ChannelsFromPositions])
def test_partial_is_padding_invariant_through_a_reshape_of_each_image_alone(cls, front):
    torch.manual_seed(0)
    converted = mnn.convert(cls().double().eval(), "partial", capture=front, update_mask=False)
    imgs, x, m = _batch([(5, 6), (7, 8)])
    # the same two images in a larger canvas (a third, larger image sets it; then it is left out)
    xb, mb = pad_batch(imgs + [torch.zeros(3, 10, 11, dtype=torch.float64)], mask_dtype=torch.float64)
    xb, mb = xb[:2], mb[:2]
    xb = torch.where(mb.bool().expand_as(xb), xb, torch.full_like(xb, float("nan")))
    with torch.no_grad():
        a, _ = converted(x, m)
        b, _ = converted(xb, mb)
    assert not bool(torch.isnan(a).any() or torch.isnan(b).any())
    torch.testing.assert_close(a, b[tuple(slice(0, n) for n in a.shape)], rtol=1e-9, atol=1e-12)


class RowsAsBatch(RowsAsSequence):
    """``(N, H, C, W) -> (N * H, C, W)``: rows as a batch of sequences (axial attention's layout). Merging the
    batch dim with a dim where images are narrower leaves no image to reshape alone: refused."""

    def forward(self, x):
        y = self.conv(x)
        n, c, h, w = y.shape
        rows = self.seq(y.permute(0, 2, 1, 3).reshape(n * h, c, w))
        return rows.reshape(n, h, c, w).permute(0, 2, 1, 3)


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("kind", ["masked", "partial"])
def test_a_reshape_that_merges_the_batch_with_a_dim_images_do_not_fill_is_refused(kind, front):
    torch.manual_seed(0)
    converted = mnn.convert(RowsAsBatch().double().eval(), kind, capture=front)
    _, x, m = _batch([(5, 6), (7, 8)])
    with pytest.raises(ValueError, match=r"node 'reshape'.*reshape \(2, 7, 4, 8\) -> \(14, 4, 8\).*narrower than "
                                         r"the padded canvas along dim 1.*moves the batch dim"):
        converted(x, m)


@pytest.mark.parametrize("front", FRONTS)
@pytest.mark.parametrize("cls", [ChannelsLastMerge, BatchTimesChannels])
def test_merges_that_keep_each_images_values_in_place_stay_exact(cls, front):
    torch.manual_seed(0)
    model = cls().double().eval()
    imgs, x, m = _batch([(5, 6), (7, 8), (4, 3)])
    converted = mnn.convert(model, "masked", capture=front)
    with torch.no_grad():
        out, out_mask = converted(x, m)
    assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


def _box_mask(n, h, w, heights, widths):
    m = torch.zeros(n, 1, h, w)
    for k, (a, b) in enumerate(zip(heights, widths)):
        m[k, :, :a, :b] = 1
    return m


@settings(max_examples=80, deadline=None)
@given(st.data())
def test_reshape_mask_refuses_exactly_the_merges_that_move_an_images_values(data):
    """Against an independent reference: each image reshaped alone must equal the padded batch reshaped the
    same way, cut at the origin to the image's shape; reshape_mask accepts exactly those reshapes (images at
    least 2 rows tall: a one-row image keeps its values whatever the width, which the rule does not ask)."""
    n = data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    heights = [data.draw(st.integers(min(2, h), h)) for _ in range(n)]
    widths = [data.draw(st.integers(1, w)) for _ in range(n)]
    c = data.draw(st.integers(1, 3))
    layout = data.draw(st.sampled_from(["flatten_hw", "channels_last_wc", "c_times_h", "batch_times_c"]))
    mask = _box_mask(n, h, w, heights, widths)
    value = torch.arange(n * c * h * w, dtype=torch.float64).reshape(n, c, h, w)
    if layout == "channels_last_wc":
        value, mask = value.permute(0, 2, 3, 1), mask.permute(0, 2, 3, 1)
    shape = {"flatten_hw": lambda nn_, hh, ww: (nn_, c, hh * ww),
             "channels_last_wc": lambda nn_, hh, ww: (nn_, hh, ww * c),
             "c_times_h": lambda nn_, hh, ww: (nn_, c * hh, ww),
             "batch_times_c": lambda nn_, hh, ww: (nn_ * c, hh, ww)}[layout]
    try:
        out_mask = MF.reshape_mask(mask, value.shape, shape(n, h, w))
    except ValueError as exc:
        assert "narrower than the padded canvas" in str(exc)
        refused = True
    else:
        refused = False
        assert torch.equal(out_mask.expand(shape(n, h, w)), mask.expand_as(value).reshape(shape(n, h, w)))
    exact = True
    batched = value.reshape(shape(n, h, w))
    for k in range(n):
        a, b = heights[k], widths[k]
        alone = value[k:k + 1, :a, :b] if layout == "channels_last_wc" else value[k:k + 1, :, :a, :b]
        mine = alone.reshape(shape(1, a, b))
        rows = batched[k * mine.shape[0]:(k + 1) * mine.shape[0]]
        exact &= torch.equal(rows[(slice(None),) + tuple(slice(0, s) for s in mine.shape[1:])], mine)
    assert refused == (not exact), ("refused a reshape that keeps every image's values in place" if refused
                                    else "accepted a reshape that moves an image's values")
