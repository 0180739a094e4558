"""Attention on a padded batch, as segmentation libraries write it (tests/attention_models.py: smp MAnet's
position attention, Segformer's Mix Transformer): matrix products of masked tensors, a softmax over each image's
own entries, and reshapes that turn a map into tokens and back, each image reshaped alone where the padded
canvas's sizes would move its values (functional.masked_reshape).

float64, NaN in the padding, images of different sizes: ``"masked"`` == the unmodified model on each image alone
(<= 1e-9 relative: float64 rounding through these few layers is ~1e-15), ``"partial"`` does not depend on the
padding, a training step gives finite gradients, state_dict loads strict both ways."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import masked_torch.functional as MF
import masked_torch.nn as mnn
from attention_models import MiniSegformer, PositionAttention
from masked_torch.utils import pad_batch
from test_convert_models import assert_per_image, assert_training_step

#: (model, front ends that capture it, image sizes); MiniSegformer's LayerNorm branches on x.ndim, as smp's
#: does, which torch.fx cannot trace
MODELS = {
    "position_attention": (PositionAttention, ["fx", "export"], [(5, 6), (7, 8), (4, 3)]),
    "mini_segformer": (MiniSegformer, ["export"], [(10, 12), (14, 16), (8, 6)]),
}
CASES = [(name, front) for name, (_, fronts, _) in MODELS.items() for front in fronts]


def _build(name, seed=0):
    torch.manual_seed(seed)
    return MODELS[name][0]().double()


def _images(name, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=g, dtype=torch.float64) for h, w in MODELS[name][2]]


def _padded(imgs, extra=0):
    x, m = pad_batch(imgs, mask_dtype=torch.float64)
    if extra:
        x, m = torch.nn.functional.pad(x, (0, extra, 0, extra)), torch.nn.functional.pad(m, (0, extra, 0, extra))
    return torch.where(m.bool().expand_as(x), x, torch.full_like(x, float("nan"))), m


@pytest.mark.parametrize("name,front", CASES)
def test_masked_batch_equals_the_unmodified_model_on_each_image_alone(name, front):
    model = _build(name).eval()
    imgs = _images(name)
    converted = mnn.convert(model, "masked", capture=front)
    with torch.no_grad():
        out, out_mask = converted(*_padded(imgs))
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))
        # the same images in a larger canvas: still each image's own
        out, out_mask = converted(*_padded(imgs, extra=3))
        assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


@pytest.mark.parametrize("name,front", CASES)
def test_partial_does_not_depend_on_the_padding(name, front):
    converted = mnn.convert(_build(name).eval(), "partial", capture=front, update_mask=False)
    imgs = _images(name)
    with torch.no_grad():
        a, _ = converted(*_padded(imgs))
        b, _ = converted(*_padded(imgs, extra=3))
    b = b[tuple(slice(0, n) for n in a.shape)]
    assert not bool(torch.isnan(a).any() or torch.isnan(b).any()), "no NaN of the padding reaches the output"
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,front", CASES)
@pytest.mark.parametrize("kind", ["masked", "partial"])
def test_training_step_gives_finite_gradients(name, front, kind):
    """(partial: update_mask=False, the padding use; with True the mask grows into the padding by each window,
    so the sizes of a map and of its tokens disagree, and a reshape of each image alone is refused)"""
    options = {"update_mask": False} if kind == "partial" else {}
    converted = mnn.convert(_build(name).train(), kind, capture=front, **options)
    assert_training_step(converted, *_padded(_images(name)))
    torch.optim.SGD(converted.parameters(), lr=0.01).step()


@pytest.mark.parametrize("name,front", CASES)
def test_state_dict_loads_strict_both_ways(name, front):
    model = _build(name).eval()
    converted = mnn.convert(model, "masked", capture=front)
    with torch.no_grad():
        converted(*_padded(_images(name)))  # a capture that waited for the first call has it now
    assert list(converted.state_dict()) == list(model.state_dict())
    converted.load_state_dict(model.state_dict(), strict=True)
    model.load_state_dict(converted.state_dict(), strict=True)


class ComputedSize(torch.nn.Module):
    """``interpolate(size=...)`` to sizes computed from the input's (Segformer's head: ``[d // 4 for d in
    x.shape[2:]]``; here twice the size, and a quarter): each image alone is resized to its own."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        up = torch.nn.functional.interpolate(y, size=(x.shape[2] * 2, x.shape[3] * 2), mode="bilinear")
        return torch.nn.functional.interpolate(up, size=(x.shape[2] // 4, x.shape[3] // 4), mode="nearest")


@pytest.mark.parametrize("front", ["fx", "export"])
def test_interpolate_to_a_size_computed_from_the_canvas_is_each_images_own(front):
    torch.manual_seed(0)
    model = ComputedSize().double().eval()
    imgs = [torch.randn(3, h, w, dtype=torch.float64) for h, w in [(9, 13), (16, 8), (12, 12)]]
    converted = mnn.convert(model, "masked", capture=front)
    with torch.no_grad():
        out, out_mask = converted(*_padded(imgs))
    assert_per_image(out, out_mask, lambda k: model(imgs[k][None]))


# -- the pieces, against independent references --

def _box_mask(n, shape, extents):
    m = torch.zeros((n,) + tuple(shape))
    for k, e in enumerate(extents):
        m[(k,) + tuple(slice(0, s) for s in e)] = 1
    return m


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_masked_reshape_is_each_image_reshaped_alone(data):
    """Maps of different sizes in one canvas, flattened to tokens (``flatten(2)``), viewed back, and
    ``(N, HW, C) -> (N, C, H, W)``: each image's box of the output is its own box reshaped alone (a loop over
    images: crop, reshape, compare), 0 elsewhere, and the mask valid exactly there."""
    n, c = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    h, w = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    ext = [(data.draw(st.integers(0, h)), data.draw(st.integers(0, w))) for _ in range(n)]
    mask = _box_mask(n, (1, h, w), [(1, a, b) for a, b in ext]).double()
    x = torch.randn(n, c, h, w, dtype=torch.float64) * mask
    if h > 1:  # a spatial size read from the mask: each image's own height (0 for an empty image)
        assert MF.image_sizes(mask, x, 2).tolist() == [a if b else 0 for a, b in ext]
    layout = data.draw(st.sampled_from(["flatten", "flatten_back", "channels_from_positions"]))
    if layout == "flatten":
        src, src_mask = x, mask
        out, out_mask = MF.masked_reshape(src, src_mask, src.flatten(2), ("flatten", 2, -1))
        alone = lambda t: t.flatten(2)  # noqa: E731
    else:
        src, src_mask = MF.masked_reshape(x, mask, x.flatten(2), ("flatten", 2, -1))
        if layout == "flatten_back":
            shape = [n, c, ("size", mask, 2, h), ("size", mask, 3, w)]
            out, out_mask = MF.masked_reshape(src, src_mask, src.view(n, c, h, w), shape)
            alone = lambda t: t.flatten(2).view(t.shape)  # noqa: E731
        else:
            src, src_mask = src.transpose(1, 2), src_mask.transpose(1, 2)
            shape = [n, c, ("size", mask, 2, h), ("size", mask, 3, w)]
            out, out_mask = MF.masked_reshape(src, src_mask, src.reshape(n, c, h, w), shape)
            alone = lambda t: t.flatten(2).transpose(1, 2).reshape(t.shape)  # noqa: E731
    full = out_mask.expand_as(out)
    for k, (a, b) in enumerate(ext):
        a, b = (a, b) if a * b else (0, 0)
        mine = alone(x[k:k + 1, :, :a, :b])
        box = (slice(k, k + 1),) + tuple(slice(0, s) for s in mine.shape[1:])
        assert torch.equal(out[box], mine)
        inside = torch.zeros_like(full[k:k + 1], dtype=torch.bool)
        inside[(slice(None),) + box[1:]] = True
        assert bool((full[k:k + 1][inside] != 0).all()) and not bool(full[k:k + 1][~inside].any())
        assert bool((out[k:k + 1][~inside] == 0).all())


def test_masked_reshape_keeps_the_plain_reshape_where_no_image_is_narrower():
    """Images as wide as the canvas: ``flatten(2)`` keeps their values in place; the output is the plain
    reshape's own tensor (no copy), the recipes are never evaluated (None would be refused)."""
    mask = _box_mask(2, (1, 3, 4), [(1, 2, 4), (1, 3, 4)])
    x = torch.randn(2, 5, 3, 4)
    y = x.flatten(2)
    out, out_mask = MF.masked_reshape(x, mask, y, [None, None, None])
    assert out is y and torch.equal(out_mask.expand(2, 5, 12), mask.expand_as(x).flatten(2))


def test_masked_reshape_refuses_what_has_no_per_image_meaning():
    mask = _box_mask(2, (1, 3, 4), [(1, 2, 3), (1, 3, 4)])
    x = torch.randn(2, 5, 3, 4) * mask
    with pytest.raises(ValueError, match=r"output dim 2 has a size computed from the canvas"):
        MF.masked_reshape(x, mask, x.flatten(2), [2, 5, None])
    rows = x.permute(0, 2, 1, 3)  # (N, H, C, W) -> (N * H, C, W): rows as a batch
    with pytest.raises(ValueError, match=r"moves the batch dim"):
        MF.masked_reshape(rows, mask.permute(0, 2, 1, 3), rows.reshape(6, 5, 4), ("flatten", 0, 1))
    holes = mask.clone()
    holes[1, 0, 1, 1] = 0
    with pytest.raises(ValueError, match=r"sample 1's mask .* has holes"):
        MF.masked_reshape(x, holes, x.flatten(2), ("flatten", 2, -1))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_masked_softmax_is_the_softmax_of_each_images_own_entries(data):
    """Rows of different valid lengths (a packed token sequence) and a mask that varies along both dims: each
    valid row is the softmax (log_softmax) of its valid entries alone, every other entry exactly 0; a row
    with no valid entry is 0, never NaN."""
    n, rows, cols = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    lengths = [(data.draw(st.integers(0, rows)), data.draw(st.integers(0, cols))) for _ in range(n)]
    mask = _box_mask(n, (rows, cols), lengths).double()
    x = torch.randn(n, rows, cols, dtype=torch.float64)
    x = torch.where(mask.bool(), x, torch.full_like(x, float("nan")))
    log = data.draw(st.booleans())
    out, out_mask = MF.masked_softmax(x, mask, -1, log=log)
    assert out_mask is mask
    for k, (a, b) in enumerate(lengths):
        own = x[k, :a, :b]
        expected = torch.log_softmax(own, -1) if log else torch.softmax(own, -1)
        assert torch.allclose(out[k, :a, :b], expected, rtol=1e-12, atol=1e-15)
        rest = torch.ones(rows, cols, dtype=torch.bool)
        rest[:a, :b] = False
        assert bool((out[k][rest] == 0).all())


def test_masked_matmul_sums_each_images_own_terms():
    """``attn (N, L, L) @ v (N, L, C)`` and ``q (N, L, d) @ k^T (N, d, L)`` over packed sequences of different
    lengths with NaN after them: each image's own product; a fixed matrix over the canvas positions is refused."""
    lengths, big, c = [3, 5, 1], 6, 4
    seq = _box_mask(3, (big, 1), [(s, 1) for s in lengths]).double()
    q = torch.where(seq.bool(), torch.randn(3, big, c, dtype=torch.float64), float("nan"))
    k = torch.where(seq.bool(), torch.randn(3, big, c, dtype=torch.float64), float("nan"))
    scores, smask = MF.masked_matmul(q, seq, k.transpose(1, 2), seq.transpose(1, 2))
    attn, amask = MF.masked_softmax(scores, smask, -1)
    out, omask = MF.masked_matmul(attn, amask, k, seq)
    for i, s in enumerate(lengths):
        alone = torch.softmax(q[i, :s] @ k[i, :s].T, -1) @ k[i, :s]
        assert torch.allclose(out[i, :s], alone, rtol=1e-12, atol=1e-14)
        assert bool((out[i, s:] == 0).all()) and omask[i, :s].bool().all() and not omask[i, s:].any()
    with pytest.raises(ValueError, match=r"fixed matrix over the canvas"):
        MF.masked_matmul(q.transpose(1, 2), seq.transpose(1, 2), torch.randn(big, 2, dtype=torch.float64), None)


def test_an_int_index_on_dim_0_that_is_not_the_batch_keeps_the_batch():
    """``kv[0]`` after ``permute(2, 0, 3, 1, 4)``: the mask has size 1 along dim 0; an int on the real batch dim
    is still refused."""
    mask = torch.ones(1, 3, 1, 5, 1)
    kv = torch.randn(2, 3, 4, 5, 6)
    assert MF.index_mask(mask, kv, 0).shape == (3, 1, 5, 1)
    with pytest.raises(ValueError, match=r"on the batch dim drops it"):
        MF.index_mask(torch.ones(3, 1, 5), torch.randn(3, 4, 5), 0)
