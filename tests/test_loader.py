"""masked_torch.analysis.loader: streamed padded batches -- placement and masks, bucketing and the padding
fraction, the rank/world split, skipped files (warned once, counted, strict), streamed dataset normalisation,
worker processes (default start method and spawn) and crop_alone; what keeps a long run's memory flat (rows
kept column-wise, the heap given back, a bounded kernel cache) and large images decoded reduced."""
import io
import math
import os
import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageFile

from masked_torch.analysis.data import (DataError, SkippedImageWarning, open_source, read_image, resize_max_side,
                                        shrunk_size, to_rgb_float)
from masked_torch.analysis.loader import (crop_alone, limit_heap_growth, limit_kernel_cache, make_loader,
                                          plan_batches, release_heap)
from masked_torch.analysis.passes import Columns, PaddingPass
from masked_torch.utils import pad_batch

MIXED = [(9, 30), (31, 8), (16, 16), (30, 28), (8, 9), (12, 29), (29, 10), (15, 14), (28, 31), (10, 11),
         (27, 9), (13, 30), (30, 30), (9, 8), (14, 27), (26, 12)]


def _folder(root, sizes, *, broken=False):
    """PNG / JPEG files of the given ``(h, w)`` in class sub-folders (first half ``a/``, then ``b/``), named so
    that their sorted order is the order of ``sizes``; with ``broken``: a truncated JPEG, a zero-byte PNG and a text
    file named .png in ``zz_bad/`` (sorted last)."""
    rng = np.random.default_rng(0)
    for k, (h, w) in enumerate(sizes):
        path = root / ("a" if 2 * k < len(sizes) else "b") / f"{k:03d}.{'jpg' if k % 5 == 4 else 'png'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        PILImage.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    if broken:
        bad = root / "zz_bad"
        bad.mkdir()
        buf = io.BytesIO()
        PILImage.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(buf, "JPEG")
        (bad / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 2 // 3])  # the header is whole
        (bad / "zero.png").write_bytes(b"")
        (bad / "text.png").write_text("not an image")
    return str(root)


def _reference_padding(batches):
    """Padded share of canvas pixels over the batches that arrived, from their tensors."""
    canvas = sum(b.mask.numel() for b in batches)
    return 1.0 - sum(float(b.mask.sum()) for b in batches) / canvas


def _as_tuples(batches):
    return [(b.names, b.index, b.sizes, b.x, b.mask) for b in batches]


def _same(a, b):
    assert len(a) == len(b)
    for (na, ia, sa, xa, ma), (nb, ib, sb, xb, mb) in zip(_as_tuples(a), _as_tuples(b)):
        assert (na, ia, sa) == (nb, ib, sb)
        assert torch.equal(xa, xb) and torch.equal(ma, mb)


def test_batches_are_padded_top_left_with_masks_in_source_order(tmp_path):
    src = open_source(_folder(tmp_path, MIXED[:7]), max_side=None, normalize="image")
    loader = make_loader(src, batch_size=3, multiple=8)
    got = list(loader)
    assert len(loader) == len(got) == 3 and [len(b) for b in got] == [3, 3, 1]
    assert [i for b in got for i in b.index] == list(range(7))
    for b in got:
        assert b.x.dtype == torch.float32 and b.mask.dtype == torch.float32 and b.skipped == []
        hmax, wmax = max(h for h, _ in b.sizes), max(w for _, w in b.sizes)
        assert b.shape == (math.ceil(hmax / 8) * 8, math.ceil(wmax / 8) * 8)
        for k, i in enumerate(b.index):
            image = src[i]
            h, w = image.size
            assert b.names[k] == src.names[i] and b.sizes[k] == (h, w) == src.sizes[i]
            assert torch.equal(b.x[k, :, :h, :w], torch.from_numpy(image.pixels))
            assert torch.all(b.x[k, :, h:] == 0) and torch.all(b.x[k, :, :, w:] == 0)  # zero beyond the image
            assert b.mask[k].sum() == h * w and torch.all(b.mask[k, :, :h, :w] == 1)
    assert loader.skipped == []


def test_bucketing_reduces_the_padding_fraction(tmp_path):
    # two sizes, alternating: plain batches of 2 pair a small and a large image, buckets pair equals
    src = open_source(_folder(tmp_path / "two", [(8, 8), (32, 32)] * 2), max_side=None)
    plain = make_loader(src, batch_size=2, multiple=8)
    bucket = make_loader(src, batch_size=2, multiple=8, bucket=True)
    assert plain.padding_fraction() == pytest.approx(1 - (64 + 1024) / (2 * 1024))  # 0.46875
    assert bucket.padding_fraction() == 0.0
    assert sorted(sorted(b.sizes) for b in bucket) == [[(8, 8), (8, 8)], [(32, 32), (32, 32)]]
    # a mixed set: the fraction computed from header sizes before the run is what the batches show
    mixed = open_source(_folder(tmp_path / "mixed", MIXED), max_side=None)
    plain = make_loader(mixed, batch_size=4, multiple=4)
    bucket = make_loader(mixed, batch_size=4, multiple=4, bucket=True, seed=1)
    p_plain, p_bucket = plain.padding_fraction(), bucket.padding_fraction()
    assert p_plain == pytest.approx(_reference_padding(list(plain)), abs=1e-12)
    assert p_bucket == pytest.approx(_reference_padding(list(bucket)), abs=1e-12)
    assert p_plain == pytest.approx(0.6341, abs=1e-4) and p_bucket == pytest.approx(0.3328, abs=1e-4)  # pinned
    # every image exactly once; the plan is deterministic, the batch order follows the seed
    plan = plan_batches(mixed.sizes, 4, bucket=True, seed=1)
    assert sorted(i for b in plan for i in b) == list(range(len(MIXED)))
    assert plan == bucket.plan == plan_batches(mixed.sizes, 4, bucket=True, seed=1)
    other = plan_batches(mixed.sizes, 4, bucket=True, seed=2)
    assert sorted(map(sorted, other)) == sorted(map(sorted, plan)) and other != plan


def test_rank_world_split_covers_every_batch_once():
    src = open_source("synthetic", num_images=11, max_side=24, seed=1)
    for bucket in (False, True):
        whole = [(tuple(b.index), b.x) for b in make_loader(src, batch_size=2, multiple=4, bucket=bucket)]
        assert len(whole) == 6
        parts = {}
        for rank in range(4):
            loader = make_loader(src, batch_size=2, multiple=4, bucket=bucket, rank=rank, world=4)
            got = list(loader)
            assert len(loader) == len(got) == len(range(rank, 6, 4))
            assert [b.batch_index for b in got] == list(range(rank, 6, 4))  # batch j goes to rank j % world
            for b in got:
                parts[b.batch_index] = (tuple(b.index), b.x)
        assert sorted(parts) == list(range(6))
        for j, (index, x) in enumerate(whole):
            assert parts[j][0] == index and torch.equal(parts[j][1], x)
    with pytest.raises(DataError, match="6 batch.* for 7 processes"):
        make_loader(src, batch_size=2, multiple=4, rank=0, world=7)
    with pytest.raises(ValueError, match="rank"):
        make_loader(src, batch_size=2, multiple=4, rank=2, world=2)


def test_unreadable_files_are_skipped_warned_once_and_counted(tmp_path):
    src = open_source(_folder(tmp_path, MIXED[:5], broken=True), max_side=None)
    assert len(src) == 8
    loader = make_loader(src, batch_size=2, multiple=4)
    assert len(loader) == 3  # the two files without a header are not planned; the truncated JPEG is
    with pytest.warns(SkippedImageWarning) as record:
        got = list(loader)
    messages = sorted(str(r.message) for r in record)
    assert len(messages) == 3
    for name, reason in zip(["text.png", "trunc.jpg", "zero.png"], ["cannot identify", "truncated", "0 bytes"]):
        assert any(name in m and reason in m.lower() for m in messages)
    assert [name for name, _ in loader.skipped] == ["zz_bad/text.png", "zz_bad/trunc.jpg", "zz_bad/zero.png"]
    assert [i for b in got for i in b.index] == list(range(5)) and [b.batch_index for b in got] == [0, 1, 2]
    assert got[-1].skipped and got[-1].skipped[0].name == "zz_bad/trunc.jpg"  # in its batch, not in x
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass warns no more, and counts the same
        list(loader)
    assert len(loader.skipped) == 3
    # a batch whose every image is skipped is dropped; a callback instead of warnings
    seen = []
    alone = open_source(str(tmp_path / "zz_bad"), max_side=None)
    one = make_loader(alone, batch_size=1, multiple=4, on_skip=seen.append)
    assert len(one) == 1 and list(one) == []
    mixed = make_loader(open_source(str(tmp_path), max_side=None), batch_size=1, multiple=4,
                        on_skip=lambda r: None)
    assert [b.batch_index for b in mixed] == [0, 1, 2, 3, 4]  # batch 5 (the truncated JPEG alone) dropped
    assert len(mixed) == 6
    assert sorted(r.name for r in seen) == ["text.png", "trunc.jpg", "zero.png"]


def test_strict_makes_an_unreadable_file_an_error_naming_it(tmp_path):
    root = _folder(tmp_path, MIXED[:3], broken=True)
    with pytest.raises(DataError, match=r"cannot read image .*zz_bad/text\.png: .*cannot identify"):
        make_loader(open_source(root, strict=True), batch_size=2, multiple=4)
    (tmp_path / "zz_bad" / "text.png").unlink()
    (tmp_path / "zz_bad" / "zero.png").unlink()
    loader = make_loader(open_source(root, strict=True), batch_size=2, multiple=4)  # headers all fine
    with pytest.raises(DataError, match=r"(?i)cannot read image .*zz_bad/trunc\.jpg: .*truncated"):
        list(loader)


def test_dataset_normalisation_is_streamed_before_the_run(tmp_path):
    src = open_source(_folder(tmp_path, MIXED[:6]), max_side=16, normalize="dataset")
    raw = src.with_normalize("none")
    pixels = [raw[i].pixels for i in range(len(raw))]
    allpix = np.concatenate([p.reshape(3, -1).astype(np.float64) for p in pixels], axis=1)
    loader = make_loader(src, batch_size=4, multiple=4)
    mean, std = src.stats
    np.testing.assert_allclose(mean, allpix.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, allpix.std(axis=1), rtol=1e-12)
    valid = torch.cat([b.x.permute(1, 0, 2, 3)[:, b.mask[:, 0] > 0] for b in loader], dim=1).double()
    assert valid.shape[1] == allpix.shape[1]
    np.testing.assert_allclose(valid.mean(dim=1).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(valid.std(dim=1, correction=0).numpy(), 1, atol=1e-5)


@pytest.mark.parametrize("start_method", [None, "spawn"])
def test_workers_give_the_same_batches(tmp_path, start_method):
    src = open_source(_folder(tmp_path, MIXED[:9], broken=True), max_side=24)
    serial = make_loader(src, batch_size=3, multiple=8, bucket=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        expected = list(serial)
    seen = []
    loader = make_loader(src, batch_size=3, multiple=8, bucket=True, workers=2, start_method=start_method,
                         on_skip=seen.append)
    got = list(loader)
    _same(got, expected)
    assert loader.skipped == serial.skipped and len(loader.skipped) == 3
    assert seen == []  # already reported by this source in the serial pass: not again


def test_workers_stream_dataset_statistics(tmp_path):
    src = open_source(_folder(tmp_path, MIXED[:8]), max_side=24, normalize="dataset")
    serial = src.with_normalize("dataset")  # a copy without statistics yet
    _same(list(make_loader(src, batch_size=3, multiple=8, workers=2)),
          list(make_loader(serial, batch_size=3, multiple=8)))
    assert np.array_equal(src.stats[0], serial.stats[0]) and np.array_equal(src.stats[1], serial.stats[1])


def test_crop_alone_equals_padding_the_image_alone(tmp_path):
    src = open_source(_folder(tmp_path, MIXED[:8]), max_side=None)
    for b in make_loader(src, batch_size=4, multiple=8):
        for k, i in enumerate(b.index):
            alone = crop_alone(b, k, 8)
            x, mask = pad_batch([torch.from_numpy(src[i].pixels)], 8)
            assert torch.equal(alone.x, x) and torch.equal(alone.mask, mask)
            assert alone.names == [src.names[i]] and alone.index == [i] and alone.sizes == [src.sizes[i]]
        with pytest.raises(ValueError, match="larger than the batch canvas"):
            crop_alone(b, 0, 64)


def test_bucketing_never_pads_more_than_file_order():
    """On random size mixes (tall, wide and square images), the bucketed plan pads at most as much as the
    plan in file order, and every image is planned exactly once."""
    from masked_torch.analysis.loader import padding_fraction, plan_batches

    rng = np.random.default_rng(0)
    for trial in range(30):
        n = int(rng.integers(5, 60))
        sizes = [(int(rng.integers(16, 300)), int(rng.integers(16, 300))) for _ in range(n)]
        for batch_size in (2, 4, 8):
            plain = plan_batches(sizes, batch_size)
            bucketed = plan_batches(sizes, batch_size, bucket=True, seed=trial)
            assert sorted(i for b in bucketed for i in b) == list(range(n))
            assert padding_fraction(bucketed, sizes, 1) <= padding_fraction(plain, sizes, 1) + 1e-12


# ------------------------------------------------------------------------------------ memory of a long run
def test_columns_give_the_frame_of_a_list_of_dicts():
    schema = dict(stack="s", layer="s", batch="i", rel_error="f", padded="b", count="i")
    rows = [dict(stack=s, layer=l, batch=b, rel_error=e, padded=p, count=c)
            for s, l, b, e, p, c in [("conv", "c1", 0, 0.5, True, 3), ("mconv", "c1", 0, float("nan"), False, 0),
                                     ("conv", "c2", 2, float("inf"), True, 2**40), ("pconv", "c1", 7, -0.0, False, 1)]]
    cols = Columns(schema)
    for row in rows:
        cols.append(**row)
    assert len(cols) == 4
    pd.testing.assert_frame_equal(cols.frame(), pd.DataFrame(rows))
    empty = Columns(schema).frame()
    assert empty.empty and list(empty.columns) == list(schema)
    with pytest.raises(ValueError, match="columns"):
        cols.append(stack="conv")


def test_columns_hold_a_row_in_about_its_typed_size():
    """A run keeps 72 rows an image (section 4 of issue 16: a dict a row was ~40 KB an image): each row of
    the padding pass now costs its typed values (4 strings as 4-byte codes, 7 ints, 4 floats, a flag:
    105 bytes), plus the arrays' over-allocation (CPython grows an array by at most ~1/8)."""
    schema = PaddingPass._COLUMNS
    itemsize = sum({"s": 4, "i": 8, "f": 8, "b": 1}[k] for k in schema.values())
    assert itemsize == 105
    names = [f"class{i % 12:02d}/img{i:05d}.jpg" for i in range(300)]  # the images' names exist anyway
    cols, n = Columns(schema), 300 * 72
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for r in range(n):
            cols.append(stack="mconv", reference="alone", layer="conv3", image=names[r // 72], batch=r // 288,
                        h=r % 97, w=r % 89, batch_h=96, batch_w=112, pad_fraction=r / n, extra_pad_fraction=0.5,
                        rel_error=r * 1e-7, max_abs_error=r * 1e-6, padded=bool(r % 2), alone_h=64, alone_w=80)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used <= n * itemsize * 1.25 + 64 * 1024  # + the code tables (300 names)
    frame = cols.frame()
    assert len(frame) == n and frame["image"].nunique() == 300 and frame["padded"].sum() == n // 2


def test_the_main_process_gives_freed_heap_back_after_every_batch(tmp_path, monkeypatch):
    import masked_torch.analysis.loader as loader_mod

    calls = []
    monkeypatch.setattr(loader_mod, "release_heap", lambda: calls.append("trim") or True)
    monkeypatch.setattr(loader_mod, "limit_heap_growth", lambda *a: calls.append("limit") or True)
    source = open_source(_folder(tmp_path, MIXED), max_side=None, normalize="none")
    batches = list(make_loader(source, batch_size=4, multiple=8))
    assert len(batches) == 4 and calls == ["limit"] + ["trim"] * 4
    calls.clear()
    loader = make_loader(source, batch_size=4, multiple=8)
    loader.release_memory = False
    assert len(list(loader)) == 4 and calls == []
    monkeypatch.undo()
    on_glibc = loader_mod._glibc() is not None
    assert release_heap() in (True, False) and limit_heap_growth() == on_glibc


def test_the_kernel_cache_bound_is_set_only_where_the_user_set_none(monkeypatch):
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    assert limit_kernel_cache(64) is True and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "512")
    assert limit_kernel_cache(64) is False and os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "512"


# ------------------------------------------------------------------------------------ large images, reduced
def _smooth(h, w, seed=0, cell=40):
    """A smooth random colour field ``(h, w, 3)`` uint8 (noise on a ``cell``-pixel grid, bilinear)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // cell), max(2, w // cell), 3), dtype=np.uint8)
    return np.asarray(PILImage.fromarray(small).resize((w, h), PILImage.BILINEAR))


@pytest.mark.parametrize("suffix", ["jpg", "png"])
def test_a_large_image_is_never_decoded_into_a_full_size_array(tmp_path, monkeypatch, suffix):
    """Issue 16, section 5: one 10000 x 10000 image took 4.25 GB and 62 s though --max-side shrinks it to 256.
    Here 6000 x 4000: no numpy array of the decode is ever full size (tracemalloc sees every numpy buffer),
    and a JPEG is not even decoded at full size (its decoder scales by 1/8)."""
    h, w = 4000, 6000
    path = tmp_path / f"big.{suffix}"
    PILImage.fromarray(_smooth(h, w, cell=200)).save(path, **({"compress_level": 1} if suffix == "png" else {}))
    loaded_sizes = []
    real_load = ImageFile.ImageFile.load

    def spy(self):
        loaded_sizes.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    source = open_source(str(path), max_side=64, normalize="none")
    tracemalloc.start()
    try:
        image = source[0]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.size == source.sizes[0] == shrunk_size(h, w, 64) == (43, 64)
    assert peak < h * w * 3 / 2, peak  # a full-size uint8 copy alone would be h * w * 3 bytes (float64: 8x more)
    if suffix == "jpg":
        assert loaded_sizes and max(max(s) for s in loaded_sizes) <= w // 8 + 1


@pytest.mark.parametrize("mode,suffix", [("RGB", "jpg"), ("RGB", "png"), ("L", "png"), ("RGBA", "png"),
                                         ("P", "png"), ("I;16", "png"), ("L", "jpg")])
def test_a_reduced_decode_shrinks_as_the_full_image_would(tmp_path, mode, suffix):
    """Decoded reduced (block means), then blurred the rest of the way and sampled where the full image's
    shrink samples: on an image smooth at the output's scale, within 1% of the pixel range on average and 6%
    at any pixel of shrinking the full decode (data._shrink_reduced); the same size as the header plans."""
    h, w, max_side = 1203, 902, 64  # reduced 9x (JPEG: 8x by the decoder), sides not multiples of it
    rgb = _smooth(h, w, seed=3)
    if mode == "RGBA":  # alpha is dropped, never blended: transparent pixels keep their colour
        im = PILImage.fromarray(np.dstack([rgb, rgb[..., :1] // 3]))
    elif mode == "I;16":
        im = PILImage.fromarray(rgb[..., 0].astype(np.uint16) * 257 + 100)
    else:
        im = PILImage.fromarray(rgb).convert(mode)
    path = tmp_path / f"image.{suffix}"
    im.save(path)
    reference = resize_max_side(to_rgb_float(read_image(path)), max_side)  # the full-size decode, shrunk
    source = open_source(str(path), max_side=max_side, normalize="none")
    got = source[0].pixels
    assert got.shape == reference.shape == (3, *source.sizes[0]) == (3, 64, 48)
    diff = np.abs(got - reference)
    assert diff.mean() <= 0.01 and diff.max() <= 0.06, (diff.mean(), diff.max())
