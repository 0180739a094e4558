"""``--mask holes``: seeded free-form holes inside each image (masked_torch.analysis.masks).

The specification: a hole mask is a bool (h, w) tensor, True = valid; it depends on (seed, index, h, w) and on
nothing else; its hole fraction lies in ``coverage`` with at least one valid pixel (where no whole number of
pixels lands in the range: the count nearest its middle, 0 for an image too small to hold a hole); in a padded
batch each image gets exactly the mask it gets alone, at its top-left corner, and the padding is left as it was.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from masked_torch.analysis.choices import MASKS
from masked_torch.analysis.masks import apply_holes, hole_counts, hole_mask


def _hole_fraction(m: torch.Tensor) -> float:
    return (~m).sum().item() / m.numel()


def _in_range_counts(h: int, w: int, low: float, high: float) -> list[int]:
    """Independently of the module: the whole numbers of hole pixels k with low*hw <= k <= high*hw and k < hw
    (exact integer arithmetic on a coverage given in thousandths)."""
    total = h * w
    lo, hi = round(low * 1000), round(high * 1000)
    return [k for k in range(0, total) if lo * total <= 1000 * k <= hi * total]


def _nearest_middle(h: int, w: int, low: float, high: float) -> int:
    """The count for a range that holds no whole count: nearest the middle (halves round up), < hw."""
    total = h * w
    twice_mid = (round(low * 1000) + round(high * 1000)) * total  # 2000 * middle * total
    return min((twice_mid + 1000) // 2000, total - 1)


def test_masks_choices():
    assert MASKS == ("padding", "holes")


def test_shape_dtype_and_determinism():
    a = hole_mask(48, 64, seed=7, index=3)
    b = hole_mask(48, 64, seed=7, index=3)
    assert a.shape == (48, 64) and a.dtype == torch.bool
    assert torch.equal(a, b)
    assert not a.all() and a.any()


def test_global_random_streams_are_left_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    expect_t, expect_n = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    hole_mask(64, 64, seed=1, index=0)
    assert torch.equal(torch.rand(3), expect_t) and np.array_equal(np.random.rand(3), expect_n)


def test_seeds_indices_and_sizes_differ():
    base = hole_mask(64, 64, seed=0, index=0)
    assert not torch.equal(base, hole_mask(64, 64, seed=1, index=0))
    assert not torch.equal(base, hole_mask(64, 64, seed=0, index=1))
    # twenty images of one run: all different
    masks = [hole_mask(40, 40, seed=5, index=i) for i in range(20)]
    assert len({m.numpy().tobytes() for m in masks}) == 20
    # (seed, index) pairs are not confused: (1, 2) and (2, 1) differ
    assert not torch.equal(hole_mask(40, 40, seed=1, index=2), hole_mask(40, 40, seed=2, index=1))
    # another size is another draw, not a crop of this one
    assert not torch.equal(hole_mask(64, 63, seed=0, index=0), base[:, :63])


def test_holes_are_strokes_not_salt():
    """Free-form holes are thick connected shapes: almost every hole pixel has a hole 4-neighbour (scattered
    single pixels would have almost none)."""
    m = ~hole_mask(256, 256, seed=2, index=0)
    padded = np.pad(m.numpy(), 1)
    neighbours = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (neighbours & m.numpy()).sum() >= 0.99 * m.sum().item()


@pytest.mark.parametrize("coverage", [(0.1, 0.3), (0.0, 0.05), (0.5, 0.9)])
def test_coverage_within_range_over_many_draws(coverage):
    low, high = coverage
    fractions = [_hole_fraction(hole_mask(37, 53, seed=11, index=i, coverage=coverage)) for i in range(60)]
    assert min(fractions) >= low - 1e-12 and max(fractions) <= high + 1e-12
    if high - low > 0.1:  # the target is drawn from the range: the fractions spread over it
        assert max(fractions) - min(fractions) > 0.4 * (high - low)


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 48), w=st.integers(1, 48), seed=st.integers(0, 2**32), index=st.integers(0, 10**6),
       low=st.integers(0, 900), width=st.integers(0, 400))
def test_coverage_property(h, w, seed, index, low, width):
    """Any size, thin 1xN and Nx1 images included: the fraction lands in the range with one pixel left valid;
    where no whole count does, the count is the one nearest the range's middle (0 for an image too small to hold
    a hole: all valid)."""
    coverage = (low / 1000, min(low + width, 999) / 1000)
    m = hole_mask(h, w, seed=seed, index=index, coverage=coverage)
    assert m.shape == (h, w) and m.dtype == torch.bool
    assert m.any(), "at least one pixel stays valid"
    counts = _in_range_counts(h, w, *coverage)
    holes = (~m).sum().item()
    if counts:
        assert coverage[0] - 1e-12 <= _hole_fraction(m) <= coverage[1] + 1e-12
        assert hole_counts(h, w, coverage) == (counts[0], counts[-1])
    else:
        assert holes == _nearest_middle(h, w, *coverage)
        assert hole_counts(h, w, coverage) == (holes, holes)
        assert coverage[0] * h * w - 1 < holes < coverage[1] * h * w + 1, "within one pixel of the range"


@pytest.mark.parametrize("h, w, expect", [
    (1, 1, (0, 0)),    # no room: no holes
    (1, 2, (0, 0)),    # no k with 0.2 <= k <= 0.6; nearest the middle 0.4: 0, no holes
    (1, 3, (1, 1)),    # no k with 0.3 <= k <= 0.9; nearest the middle 0.6: 1
    (3, 1, (1, 1)),
    (1, 4, (1, 1)),    # 0.4 <= k <= 1.2: exactly one hole pixel
    (2, 5, (1, 3)),    # 1 <= k <= 3
])
def test_tiny_images(h, w, expect):
    assert hole_counts(h, w) == expect
    seen = set()
    for index in range(20):
        m = hole_mask(h, w, seed=0, index=index)
        seen.add((~m).sum().item())
    assert min(seen) >= expect[0] and max(seen) <= expect[1]
    if expect == (1, 3):
        assert len(seen) >= 2  # the target is drawn from the range


def test_narrow_range_on_a_large_image():
    # 0.4 * 37 * 53 = 784.4: no whole count in [0.4, 0.4]; the nearest is 784 pixels
    for index in range(5):
        assert (~hole_mask(37, 53, seed=0, index=index, coverage=(0.4, 0.4))).sum().item() == 784
    # 1.2 <= k <= 1.8 on a 1x6 image: the middle 1.5 rounds up to 2
    assert hole_counts(1, 6, (0.2, 0.3)) == (2, 2)


def test_one_pixel_always_valid_even_for_a_full_range():
    for index in range(10):
        m = hole_mask(1, 2, seed=0, index=index, coverage=(0.5, 0.99))
        assert (~m).sum().item() == 1
    # 1.2 <= k <= 1.98 holds no whole count; 2 would leave nothing valid: one hole pixel
    assert hole_counts(1, 2, (0.6, 0.99)) == (1, 1)
    assert (~hole_mask(1, 2, seed=0, index=0, coverage=(0.6, 0.99))).sum().item() == 1


def test_batch_equals_alone_and_padding_is_untouched():
    sizes = [(20, 30), (32, 17), (1, 9), (5, 1), (32, 32), (0, 4)]
    index = [4, 0, 9, 2, 7, 1]
    H, W = 32, 32
    padding = torch.zeros(len(sizes), 1, H, W)
    for i, (h, w) in enumerate(sizes):
        padding[i, 0, :h, :w] = 1.0
    out = apply_holes(padding, sizes, index, seed=3)
    assert out.shape == padding.shape and out.dtype == padding.dtype
    for i, ((h, w), idx) in enumerate(zip(sizes, index)):
        if h and w:
            alone = hole_mask(h, w, seed=3, index=idx)
            assert torch.equal(out[i, 0, :h, :w], alone.float()), i
        # outside the image: exactly the padding mask (holes only inside the image)
        outside = torch.ones(H, W, dtype=torch.bool)
        outside[:h, :w] = False
        assert torch.equal(out[i, 0][outside], padding[i, 0][outside])
    assert torch.equal(padding[:, :, :0], out[:, :, :0])
    # the input is not modified
    assert padding.sum().item() == sum(h * w for h, w in sizes)


def test_apply_holes_multiplies_the_given_mask_and_keeps_its_dtype():
    sizes, index = [(16, 16), (10, 12)], [0, 1]
    base = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    out = apply_holes(base, sizes, index, seed=1)
    assert out.dtype == torch.float64
    holes = torch.ones(2, 1, 16, 16, dtype=torch.float64)
    holes[0, 0] = hole_mask(16, 16, seed=1, index=0).double()
    holes[1, 0, :10, :12] = hole_mask(10, 12, seed=1, index=1).double()
    assert torch.equal(out, base * holes)
    as_bool = apply_holes(base > 0.5, sizes, index, seed=1)
    assert as_bool.dtype == torch.bool and torch.equal(as_bool, (base > 0.5) & holes.bool())
    # a multi-channel mask: the same holes in every channel
    three = apply_holes(torch.ones(2, 3, 16, 16), sizes, index, seed=1)
    assert torch.equal(three, holes.float().expand(2, 3, 16, 16))


def test_coverage_is_passed_through():
    sizes, index = [(40, 40)], [0]
    out = apply_holes(torch.ones(1, 1, 40, 40), sizes, index, seed=0, coverage=(0.5, 0.6))
    assert torch.equal(out[0, 0].bool(), hole_mask(40, 40, seed=0, index=0, coverage=(0.5, 0.6)))
    assert 0.5 <= 1 - out.mean().item() <= 0.6


@pytest.mark.parametrize("kwargs, match", [
    (dict(h=0, w=4, seed=0, index=0), "h must be an integer >= 1, got 0"),
    (dict(h=4, w=2.5, seed=0, index=0), "w must be an integer >= 1, got 2.5"),
    (dict(h=4, w=4, seed=-1, index=0), "seed must be an integer >= 0, got -1"),
    (dict(h=4, w=4, seed=0, index=True), "index must be an integer >= 0, got True"),
    (dict(h=4, w=4, seed=0, index=0, coverage=(0.3, 0.1)), r"0 <= low <= high < 1, got \(0.3, 0.1\)"),
    (dict(h=4, w=4, seed=0, index=0, coverage=(0.1, 1.0)), r"0 <= low <= high < 1, got \(0.1, 1.0\)"),
    (dict(h=4, w=4, seed=0, index=0, coverage=0.2), "coverage must be a pair"),
])
def test_hole_mask_refuses_bad_input(kwargs, match):
    h, w = kwargs.pop("h"), kwargs.pop("w")
    with pytest.raises(ValueError, match=match):
        hole_mask(h, w, **kwargs)


@pytest.mark.parametrize("mask, sizes, index, match", [
    (torch.ones(2, 8, 8), [(8, 8)] * 2, [0, 1], r"mask must be a tensor \(N, C, H, W\), got \(2, 8, 8\)"),
    (torch.ones(2, 1, 8, 8), [(8, 8)], [0, 1], "one entry per image \\(N = 2\\), got 1 sizes and 2 indices"),
    (torch.ones(2, 1, 8, 8), [(8, 8)] * 2, [0], "got 2 sizes and 1 indices"),
    (torch.ones(1, 1, 8, 8), [(9, 8)], [0], r"sizes\[0\] = \(9, 8\) is not a size \(h, w\) that fits the canvas 8x8"),
    (torch.ones(1, 1, 8, 8), [8], [0], r"sizes\[0\] must be a pair \(h, w\), got 8"),
    (torch.ones(1, 1, 8, 8), [(8, 8)], [-1], "index must be an integer >= 0, got -1"),
])
def test_apply_holes_refuses_bad_input(mask, sizes, index, match):
    with pytest.raises(ValueError, match=match):
        apply_holes(mask, sizes, index, seed=0)
