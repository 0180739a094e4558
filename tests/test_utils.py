"""masked_torch.utils: pad_batch / unpad round trips, rounding, fill, errors, and PadCollate in a DataLoader."""
import multiprocessing as mp
import pickle
from collections import namedtuple

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import masked_torch.nn as mnn
from masked_torch.utils import PadCollate, collate, pad_batch, unpad


def _images(sizes, channels=2, dtype=torch.float32):
    return [torch.randn(channels, *s).to(dtype) for s in sizes]


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert torch.equal(g, w)


# ------------------------------------------------------------------------------------------- pad_batch
@st.composite
def _batches(draw):
    nd = draw(st.integers(1, 3))
    n = draw(st.integers(1, 4))
    side = st.integers(0 if nd == 1 else 1, 9)
    sizes = [tuple(draw(side) for _ in range(nd)) for _ in range(n)]
    multiple = draw(st.one_of(st.integers(1, 5), st.tuples(*[st.integers(1, 5)] * nd)))
    channels = draw(st.integers(1, 3))
    mask_dtype = draw(st.sampled_from([torch.float32, torch.bool, torch.float16]))
    return sizes, multiple, channels, mask_dtype


@given(_batches())
def test_round_trip_random_sizes(batch):
    sizes, multiple, channels, mask_dtype = batch
    images = _images(sizes, channels)
    x, mask = pad_batch(images, multiple, value=7.0, mask_dtype=mask_dtype)
    nd = len(sizes[0])
    ms = (multiple,) * nd if isinstance(multiple, int) else multiple
    size = tuple(-(-max(s[d] for s in sizes) // ms[d]) * ms[d] for d in range(nd))
    assert x.shape == (len(images), channels, *size)
    assert mask.shape == (len(images), 1, *size) and mask.dtype == mask_dtype
    assert int((mask != 0).sum()) == sum(torch.Size(s).numel() for s in sizes)
    assert torch.all(x[(mask == 0).expand_as(x)] == 7.0)
    _assert_same(unpad(x, mask), images)


@pytest.mark.parametrize("sizes", [[(5,), (9,), (1,)], [(3, 7), (6, 2)], [(2, 3, 4), (4, 1, 2), (1, 1, 1)]])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.int64, torch.bool])
def test_round_trip_1d_2d_3d_dtypes(sizes, dtype):
    images = _images(sizes, 3, dtype)
    x, mask = pad_batch(images)
    assert x.dtype == dtype and x.shape[2:] == tuple(max(s) for s in zip(*sizes))
    _assert_same(unpad(x, mask), images)
    _assert_same(unpad(x, mask.bool()), images)
    _assert_same(unpad(x, mask.expand_as(x).contiguous()), images)  # (N, C, *S) mask


def test_placement_value_and_mask():
    a, b = torch.ones(1, 2, 3), torch.full((1, 3, 1), 2.0)
    x, mask = pad_batch([a, b], value=-1.0)
    assert x.shape == mask.shape == (2, 1, 3, 3) and mask.dtype == torch.float32
    assert torch.equal(x[0, 0], torch.tensor([[1.0, 1, 1], [1, 1, 1], [-1, -1, -1]]))
    assert torch.equal(x[1, 0], torch.tensor([[2.0, -1, -1], [2, -1, -1], [2, -1, -1]]))
    assert torch.equal(mask[0, 0], torch.tensor([[1.0, 1, 1], [1, 1, 1], [0, 0, 0]]))
    assert torch.equal(mask[1, 0], (x[1, 0] == 2).float())


def test_multiple_int_and_tuple():
    images = _images([(17, 5), (3, 33)])
    assert pad_batch(images, 16)[0].shape == (2, 2, 32, 48)
    assert pad_batch(images, (4, 1))[0].shape == (2, 2, 20, 33)
    assert pad_batch(images, [1, 8])[1].shape == (2, 1, 17, 40)
    assert pad_batch(_images([(16, 16)]), 16)[0].shape == (1, 2, 16, 16)  # already a multiple: unchanged
    assert pad_batch(_images([(5, 2, 3)]), (2, 4, 8))[0].shape == (1, 2, 6, 4, 8)


def test_bool_mask_and_zero_size_images():
    images = [torch.randn(2, 0, 4), torch.randn(2, 3, 2)]
    x, mask = pad_batch(images, mask_dtype=torch.bool)
    assert mask.dtype == torch.bool and x.shape == (2, 2, 3, 4)
    assert not mask[0].any() and mask[1, 0, :3, :2].all() and int(mask.sum()) == 6
    out = unpad(x, mask)
    assert out[0].shape == (2, 0, 0) and torch.equal(out[1], images[1])  # an all-zero mask: empty
    x, mask = pad_batch([torch.randn(1, 0, 0)], 4)
    assert x.shape == (1, 1, 0, 0) and unpad(x, mask)[0].shape == (1, 0, 0)


def test_pad_batch_keeps_gradients():
    images = [torch.randn(2, 3, 4, requires_grad=True), torch.randn(2, 5, 2, requires_grad=True)]
    x, mask = pad_batch(images, 8)
    (x * torch.arange(x.numel()).view_as(x)).sum().backward()
    for i, im in enumerate(images):
        h, w = im.shape[1:]
        assert torch.equal(im.grad, torch.arange(x.numel()).view_as(x)[i, :, :h, :w].float())


@pytest.mark.parametrize("bad, match", [
    ([], r"pad_batch: expected at least one tensor"),
    (torch.zeros(2, 3, 4, 4), r"pad_batch: .*got one tensor \(2, 3, 4, 4\)"),
    (5, r"pad_batch: expected a sequence of tensors"),
    ([torch.zeros(3, 4, 4), "image"], r"pad_batch: every element must be a tensor .*\(3, 4, 4\), str"),
    ([torch.zeros(3, 4, 4), torch.zeros(1, 4, 4)],
     r"same number of dimensions and channels .*\(3, 4, 4\), \(1, 4, 4\)"),
    ([torch.zeros(3, 4, 4), torch.zeros(3, 4)], r"same number of dimensions and channels .*\(3, 4, 4\), \(3, 4\)"),
    ([torch.zeros(3)], r"1, 2 or 3 spatial dimensions, got shapes \[\(3,\)\]"),
    ([torch.zeros(1, 2, 2, 2, 2)], r"1, 2 or 3 spatial dimensions"),
    ([torch.zeros(3, 4), torch.zeros(3, 4, dtype=torch.float64)], r"same dtype and device"),
])
def test_pad_batch_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        pad_batch(bad)


@pytest.mark.parametrize("multiple", [0, -2, (1, 0), (2,), (2, 2, 2), 1.5, True, "16"])
def test_pad_batch_bad_multiple(multiple):
    with pytest.raises(ValueError, match=r"pad_batch: multiple must"):
        pad_batch([torch.zeros(1, 4, 4)], multiple)


def test_pad_batch_bad_mask_dtype():
    with pytest.raises(ValueError, match=r"mask_dtype must be a torch.dtype"):
        pad_batch([torch.zeros(1, 4)], mask_dtype="bool")


# ------------------------------------------------------------------------------------------------ unpad
def test_unpad_bounding_box_from_origin():
    x = torch.arange(2 * 1 * 5 * 6.0).view(2, 1, 5, 6)
    mask = torch.zeros(2, 1, 5, 6)
    mask[0, 0, 1, 3] = 1  # one valid pixel away from the origin: the box reaches back to the origin
    mask[1, 0, 0:2, 0] = 0.5  # a soft mask counts where it is non-zero
    mask[1, 0, 3, 1] = 1
    a, b = unpad(x, mask)
    assert torch.equal(a, x[0, :, :2, :4]) and torch.equal(b, x[1, :, :4, :2])
    c = torch.zeros(2, 3, 5, 6)  # a C-channel mask: valid on any channel
    c[0, 2, 4, 0] = 1
    assert [t.shape for t in unpad(x.expand(2, 3, 5, 6), c)] == [(3, 5, 1), (3, 0, 0)]


def test_unpad_without_spatial_dims():
    logits = torch.randn(3, 10)
    for mask in (torch.tensor([[1.0], [0.0], [1.0]]), torch.tensor([True, False, True])):
        _assert_same(unpad(logits, mask), list(logits))  # a sample with mask 0 is still returned
    _assert_same(unpad(torch.arange(3), torch.ones(3, 1)), list(torch.arange(3)))
    # through a real model ending in MaskedSpatialMean, whose mask is (N, 1)
    images = _images([(6, 9), (4, 4)], 3)
    x, mask = pad_batch(images, 4)
    net = mnn.MaskedSequential(mnn.MaskedConv2d(3, 5, 3, padding=1), mnn.MaskedSpatialMean())
    feats, out_mask = net(x, mask)
    assert out_mask.shape == (2, 1)
    _assert_same(unpad(feats, out_mask), list(feats))


def test_unpad_through_a_masked_network():
    images = _images([(12, 20), (7, 9)], 3)
    x, mask = pad_batch(images, 4)
    net = mnn.MaskedSequential(mnn.MaskedConv2d(3, 4, 3, padding=1), mnn.Masked(torch.nn.ReLU()))
    out, out_mask = net(x, mask)
    per_sample = unpad(out, out_mask)
    assert [t.shape for t in per_sample] == [(4, 12, 20), (4, 7, 9)]
    alone, _ = net(images[1][None], torch.ones(1, 1, 7, 9))  # the image on its own
    torch.testing.assert_close(per_sample[1], alone[0])


def test_unpad_none_mask():
    x = torch.randn(2, 3, 4, 5)
    _assert_same(unpad(x, None), list(x))


def test_unpad_dict_and_tuple_outputs():
    images = _images([(5, 7), (8, 3)], 3)
    x, mask = pad_batch(images, 8)
    labels = torch.randn(2, 4)
    label_mask = torch.ones(2, 1)
    out = unpad({"seg": x, "logits": labels}, {"seg": mask, "logits": label_mask})
    assert len(out) == 2 and all(list(o) == ["seg", "logits"] for o in out)
    _assert_same([o["seg"] for o in out], images)
    _assert_same([o["logits"] for o in out], list(labels))

    out = unpad((x, labels), (mask, label_mask))
    assert all(isinstance(o, tuple) and len(o) == 2 for o in out)
    _assert_same([o[0] for o in out], images)
    _assert_same([o[1] for o in out], list(labels))

    out = unpad([x, x[:, :1]], mask)  # one mask for every entry; a list stays a list
    assert all(isinstance(o, list) for o in out)
    _assert_same([o[1] for o in out], [im[:1] for im in images])

    Heads = namedtuple("Heads", "seg aux")
    out = unpad(Heads(x, {"a": x}), Heads(mask, {"a": mask}))  # named and nested
    assert all(type(o) is Heads for o in out)
    _assert_same([o.aux["a"] for o in out], images)


@pytest.mark.parametrize("output, mask, match", [
    (torch.zeros(2, 3, 4, 4), torch.zeros(3, 1, 4, 4),
     r"unpad: output \(2, 3, 4, 4\) and mask \(3, 1, 4, 4\) must have the same batch size"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 5),
     r"unpad: mask \(2, 1, 4, 5\) does not fit output \(2, 3, 4, 4\)"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 4), r"mask \(2, 2, 4, 4\) does not fit"),
    (torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4), r"mask \(2, 1, 4\) does not fit"),
    (torch.zeros(2, 3), torch.zeros(2, 3), r"mask \(2, 3\) does not fit output \(2, 3\)"),
    (torch.zeros(2, 3), torch.zeros(3, 1), r"same batch size"),
    ({"a": torch.zeros(2, 3)}, {"b": torch.ones(2, 1)}, r"unpad: the output and mask dicts must have the same keys"),
    ((torch.zeros(2, 3),), (torch.ones(2, 1), torch.ones(2, 1)), r"same length, got 1 and 2"),
    ({"a": (torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))}, {"a": (torch.ones(2, 1, 4), torch.ones(2, 1, 5))},
     r"unpad: \['a'\]: \[1\]: mask \(2, 1, 5\) does not fit output \(2, 3, 4\)"),
    ((torch.zeros(2, 3), torch.zeros(3, 3)), None, r"same batch size N, got \[2, 3\]"),
    ("x", torch.ones(2, 1), r"expected a tensor output"),
])
def test_unpad_errors(output, mask, match):
    with pytest.raises(ValueError, match=match):
        unpad(output, mask)


# ---------------------------------------------------------------------------------------------- collate
class _Images(Dataset):
    """Images (3, h, w) of different sizes, an int label and a segmentation map (h, w) or (1, h, w)."""

    def __init__(self, n=6, seg_channel=False):
        g = torch.Generator().manual_seed(1)
        self.sizes = [tuple(torch.randint(3, 12, (2,), generator=g).tolist()) for _ in range(n)]
        self.seg_channel = seg_channel

    def __len__(self):
        return len(self.sizes)

    def image(self, i):
        h, w = self.sizes[i]
        return torch.arange(3 * h * w, dtype=torch.float32).view(3, h, w) + i

    def seg(self, i):
        h, w = self.sizes[i]
        seg = torch.full((h, w), i % 4, dtype=torch.long)
        return seg[None] if self.seg_channel else seg

    def __getitem__(self, i):
        return self.image(i), i % 3, self.seg(i), {"boxes": torch.zeros(i, 4), "name": f"im{i}"}


class _Bare(_Images):
    def __getitem__(self, i):
        return self.image(i)


def test_collate_bare_tensors_and_default_instance():
    ds = _Bare(3)
    x, mask = collate([ds[i] for i in range(3)])
    _assert_same(unpad(x, mask), [ds[i] for i in range(3)])
    assert repr(collate) == "PadCollate(multiple=1, value=0.0, mask_dtype=torch.float32, target_value=None)"


def test_collate_fields_without_target_padding():
    ds = _Images(4)
    x, mask, labels, segs, extra = PadCollate(8, value=-1.0, mask_dtype=torch.bool)([ds[i] for i in range(4)])
    assert x.shape[2] % 8 == 0 and x.shape[3] % 8 == 0 and mask.dtype == torch.bool
    assert torch.all(x[~mask.expand_as(x)] == -1.0)
    assert labels.dtype == torch.long and labels.tolist() == [0, 1, 2, 0]
    assert isinstance(segs, list) and [s.shape for s in segs] == [ds.sizes[i] for i in range(4)]  # left as a list
    assert isinstance(extra, list) and [e["name"] for e in extra] == ["im0", "im1", "im2", "im3"]


def test_collate_same_size_fields_are_stacked():
    batch = [(torch.zeros(1, 4, 4), torch.ones(2), "a"), (torch.zeros(1, 2, 3), torch.zeros(2), "b")]
    x, mask, vectors, names = collate(batch)
    assert vectors.shape == (2, 2) and names == ["a", "b"]


@pytest.mark.parametrize("seg_channel", [False, True])
def test_collate_pads_segmentation_targets(seg_channel):
    ds = _Images(5, seg_channel)
    x, mask, labels, segs, extra = PadCollate(16, target_value=-100)([ds[i] for i in range(5)])
    assert segs.shape == ((5, 1) if seg_channel else (5,)) + tuple(x.shape[2:]) and segs.dtype == torch.long
    seg_mask = mask if seg_channel else mask[:, 0]
    assert torch.all(segs[seg_mask == 0] == -100)
    _assert_same(unpad(segs if seg_channel else segs[:, None], mask),
                 [ds.seg(i) if seg_channel else ds.seg(i)[None] for i in range(5)])
    torch.nn.functional.cross_entropy(torch.randn(5, 4, *x.shape[2:]), segs if not seg_channel else segs[:, 0])


def test_collate_1d_and_mismatched_targets():
    batch = [(torch.randn(2, 5), torch.ones(5)), (torch.randn(2, 3), torch.zeros(3))]
    x, mask, target = PadCollate(4, target_value=0)(batch)  # 1d dense targets (L,)
    assert x.shape == (2, 2, 8) and target.shape == (2, 8) and target.sum() == 5
    batch = [(torch.randn(2, 5, 5), torch.ones(4, 4)), (torch.randn(2, 3, 3), torch.zeros(3, 3))]
    *_, target = PadCollate(target_value=0)(batch)  # not the image's size: not padded, a list
    assert isinstance(target, list)


def test_collate_errors_and_pickle():
    with pytest.raises(ValueError, match=r"PadCollate: got an empty batch"):
        collate([])
    with pytest.raises(ValueError, match=r"PadCollate: every sample must be an image tensor"):
        collate([(1, torch.zeros(1, 2, 2))])
    with pytest.raises(ValueError, match=r"same number of fields, got \[2, 3\]"):
        collate([(torch.zeros(1, 2, 2), 1), (torch.zeros(1, 2, 2), 1, 2)])
    with pytest.raises(ValueError, match=r"pad_batch: every tensor must have the same number of dimensions"):
        collate([torch.zeros(1, 2, 2), torch.zeros(2, 2, 2)])
    with pytest.raises(ValueError, match=r"multiple must be >= 1"):
        PadCollate(0)
    with pytest.raises(ValueError, match=r"mask_dtype must be a torch.dtype"):
        PadCollate(mask_dtype=bool)
    c = pickle.loads(pickle.dumps(PadCollate((2, 4), 1.0, torch.bool, -100)))
    assert (c.multiple, c.value, c.mask_dtype, c.target_value) == ((2, 4), 1.0, torch.bool, -100)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_dataloader(num_workers):
    ds = _Images(6)
    # fork (cheap) where the platform has it; one loader below checks spawn, which pickles the collate_fn
    context = ("fork" if "fork" in mp.get_all_start_methods() else "spawn") if num_workers else None
    seen = []
    for target_value in (None, -100):
        loader = DataLoader(ds, batch_size=4, collate_fn=PadCollate(4, target_value=target_value),
                            num_workers=num_workers, multiprocessing_context=context)
        for x, mask, labels, segs, extra in loader:
            assert x.shape[2] % 4 == 0 and x.shape[3] % 4 == 0 and labels.dtype == torch.long
            assert isinstance(extra, list) and isinstance(segs, list if target_value is None else torch.Tensor)
            seen += unpad(x, mask)
    _assert_same(seen, [ds.image(i) for i in range(6)] * 2)
    loader = DataLoader(_Bare(5), batch_size=2, collate_fn=collate, num_workers=num_workers,
                        multiprocessing_context=context)
    _assert_same([t for x, mask in loader for t in unpad(x, mask)], [_Bare(5)[i] for i in range(5)])


def test_dataloader_spawn_workers():
    ds = _Images(6, seg_channel=True)
    loader = DataLoader(ds, batch_size=3, collate_fn=PadCollate((2, 4), target_value=-100, mask_dtype=torch.bool),
                        num_workers=2, multiprocessing_context="spawn")
    batches = list(loader)
    assert len(batches) == 2
    images, segs = [], []
    for x, mask, labels, seg, extra in batches:
        assert mask.dtype == torch.bool and labels.tolist() == [0, 1, 2] and seg.shape[2:] == x.shape[2:]
        images += unpad(x, mask)
        segs += unpad(seg, mask)
    _assert_same(images, [ds.image(i) for i in range(6)])
    _assert_same(segs, [ds.seg(i) for i in range(6)])
