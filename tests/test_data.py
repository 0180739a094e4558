"""masked_torch.analysis.data: lazy sources (synthetic, photos, folders read recursively), pixel modes and their
scaling, header sizes, unreadable files, streamed dataset statistics; conversion, resizing, normalisation, folder
errors."""
import io
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage

import masked_torch.analysis.data as data_mod
from masked_torch.analysis.data import (
    PHOTOS, DataError, FolderSource, Image, PhotoSource, Skipped, SkippedImageWarning, SyntheticSource, dataset_stats,
    open_source, resize_max_side, round_up, standardize, to_rgb_float,
)


def _held(source):
    """Every image of ``source``, decoded (a file that cannot be read is a DataError naming it)."""
    return [source.load(i) for i in range(len(source))]


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array).save(path)
    return path


def test_round_up():
    assert [round_up(n, 16) for n in (1, 15, 16, 17, 32)] == [16, 16, 16, 32, 32]
    assert round_up(7, 1) == 7


@pytest.mark.parametrize("shape", [(5, 7), (5, 7, 1), (5, 7, 2), (5, 7, 3), (5, 7, 4), (2, 5, 7, 3)])
def test_to_rgb_float_shapes(shape):
    a = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    out = to_rgb_float(a)
    assert out.shape == (3, 5, 7) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    if len(shape) == 2 or shape[-1] in (1, 2):  # grey: three equal channels
        assert np.array_equal(out[0], out[1]) and np.array_equal(out[1], out[2])
    if len(shape) == 3 and shape[-1] == 4:  # alpha dropped, not blended
        np.testing.assert_allclose(out, a[..., :3].transpose(2, 0, 1) / 255.0, rtol=1e-6)


def test_to_rgb_float_dtypes_and_errors():
    assert to_rgb_float(np.full((2, 2), 65535, np.uint16)).max() == 1.0
    assert to_rgb_float(np.ones((2, 2), bool)).min() == 1.0
    with pytest.raises(DataError, match="not a 2d"):
        to_rgb_float(np.zeros((2, 2, 5)))
    with pytest.raises(DataError, match="NaN"):
        to_rgb_float(np.full((2, 2), np.nan, np.float32))


def test_resize_max_side_keeps_aspect_and_never_enlarges():
    p = np.random.default_rng(0).random((3, 100, 40), dtype=np.float32)
    out = resize_max_side(p, 50)
    assert out.shape == (3, 50, 20) and out.dtype == np.float32
    assert resize_max_side(p, 200) is p
    assert resize_max_side(p, None) is p
    assert resize_max_side(np.zeros((3, 1000, 3), np.float32), 10).shape == (3, 10, 1)  # at least 1 pixel


def test_synthetic_seeded_sizes_and_distribution():
    a = _held(SyntheticSource(6, seed=3, max_side=64, normalize="none"))
    b = _held(SyntheticSource(6, seed=3, max_side=64, normalize="none"))
    c = _held(SyntheticSource(6, seed=4, max_side=64, normalize="none"))
    assert [im.size for im in a] == [im.size for im in b]
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert [im.size for im in a] != [im.size for im in c]
    assert all(16 <= s <= 64 for im in a for s in im.size)
    big = np.concatenate([im.pixels.ravel() for im in _held(SyntheticSource(4, seed=0, max_side=128,
                                                                               normalize="none"))])
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02
    with pytest.raises(DataError):
        SyntheticSource(0)


def test_per_image_standardisation():
    rng = np.random.default_rng(0)
    for pixels in ((rng.random((3, 8, 9)) * 5 + 2).astype(np.float32), (rng.random((3, 4, 6)) * 0.1).astype(np.float32)):
        out = standardize(pixels)
        assert out.dtype == np.float32
        p = pixels.astype(np.float64)
        np.testing.assert_allclose(out, (p - p.mean()) / p.std(), rtol=1e-6, atol=1e-6)  # float32 rounding
    assert np.all(standardize(np.full((3, 3, 3), 0.5, np.float32)) == 0)  # constant image: no division by zero
    with pytest.raises(DataError):
        open_source("synthetic", normalize="batch")


def test_photos_are_offline_and_rgb():
    ims = _held(PhotoSource(num_images=3, max_side=64, normalize="none", strict=True))
    assert [im.name for im in ims] == list(PHOTOS)[:3]
    for im in ims:
        assert im.pixels.shape[0] == 3 and max(im.size) == 64 and im.pixels.dtype == np.float32
    with pytest.raises(DataError, match="only"):
        PhotoSource(num_images=len(PHOTOS) + 1)
    with pytest.raises(DataError, match="unknown"):
        PhotoSource(["nope"])


def test_photos_normalised():
    ims = _held(open_source("photos", num_images=2, max_side=48, strict=True))
    for im in ims:
        assert abs(im.pixels.mean()) < 1e-4 and abs(im.pixels.std() - 1) < 1e-3


def test_folder_reads_grey_rgba_and_sorts(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "b_rgba.png", rng.integers(0, 256, (10, 12, 4), dtype=np.uint8))
    _save(tmp_path / "a_grey.png", rng.integers(0, 256, (9, 7), dtype=np.uint8))
    _save(tmp_path / "c.jpg", rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")  # ignored: no image suffix
    ims = _held(FolderSource(tmp_path, max_side=16, normalize="none", strict=True))
    assert [im.name for im in ims] == ["a_grey.png", "b_rgba.png", "c.jpg"]
    assert [im.size for im in ims] == [(9, 7), (10, 12), (16, 11)]
    assert all(im.pixels.shape[0] == 3 for im in ims)
    assert len(_held(FolderSource(tmp_path, num_images=2))) == 2
    assert len(_held(FolderSource(tmp_path / "c.jpg"))) == 1  # a single file works too
    assert len(_held(open_source(str(tmp_path), max_side=None))) == 3


def test_folder_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="no images"):
        FolderSource(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        FolderSource(tmp_path / "missing")
    _save(tmp_path / "good.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match="broken.png"):
        _held(FolderSource(tmp_path, strict=True))
    with pytest.raises(DataError, match="only 2 images"):
        FolderSource(tmp_path, num_images=3)


# ---------------------------------------------------------------------------------------------- the sources
def _png16(array):
    """A 16-bit PNG written byte by byte (Pillow cannot write 16-bit colour): grey (H, W) or RGB (H, W, 3)."""
    a = array if array.ndim == 3 else array[..., None]
    h, w, c = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 3: 2}[c], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _broken(folder):
    """A truncated JPEG, a zero-byte PNG and a text file named .png, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not an image")


def test_folder_is_read_recursively_sorted_by_relative_path(tmp_path):
    z = np.zeros((6, 5, 3), np.uint8)
    for rel in ["top.png", "cat/b.png", "cat/a.jpg", "dog/sub/c.PNG", "cat/.dot.png", ".hidden/x.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        _save(tmp_path / rel, z)
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "cat" / "readme.md").write_text("ignored")
    src = open_source(str(tmp_path))
    assert src.names == ["cat/a.jpg", "cat/b.png", "dog/sub/c.PNG", "top.png"]
    assert src[2].name == "dog/sub/c.PNG" and src[2].size == (6, 5)
    assert open_source(str(tmp_path / "cat" / "b.png")).names == ["b.png"]  # a single file
    assert open_source(str(tmp_path), num_images=2).names == ["cat/a.jpg", "cat/b.png"]
    with pytest.raises(DataError, match="only 4 images"):
        open_source(str(tmp_path), num_images=5)
    empty = tmp_path / "cat" / "empty"
    (empty / ".git").mkdir(parents=True)
    _save(empty / ".git" / "hidden.png", z)
    with pytest.raises(DataError, match=r"no images .* in folder .*empty"):
        open_source(str(empty))


def test_pixel_modes_load_and_scale_by_their_range(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    la = rng.integers(0, 256, (9, 7, 2), dtype=np.uint8)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    g16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (9, 7, 3), dtype=np.uint16)
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [10, 20, 30]], np.uint8)
    indices = rng.integers(0, 4, (9, 7), dtype=np.uint8)
    pal = PILImage.fromarray(indices, "P")
    pal.putpalette(palette.ravel().tolist())
    pal.save(tmp_path / "palette.png")
    pal.save(tmp_path / "palette_alpha.png", transparency=0)
    _save(tmp_path / "grey.png", grey)
    _save(tmp_path / "grey_alpha.png", la)
    _save(tmp_path / "rgba.png", rgba)
    _save(tmp_path / "grey16.png", g16)
    _save(tmp_path / "grey16.tif", g16)
    (tmp_path / "rgb16.png").write_bytes(_png16(rgb16))
    PILImage.fromarray(grey > 128).save(tmp_path / "bits.png")
    src = open_source(str(tmp_path), max_side=None, normalize="none", strict=True)
    got = {src.names[i]: src[i].pixels for i in range(len(src))}
    assert all(p.shape == (3, 9, 7) and p.dtype == np.float32 for p in got.values())

    def rgb(a):  # (H, W) or (H, W, 3) reference, as float32 (3, H, W)
        return np.ascontiguousarray(np.broadcast_to(a if a.ndim == 3 else a[..., None], (9, 7, 3))
                                    .transpose(2, 0, 1)).astype(np.float32)

    np.testing.assert_array_equal(got["grey.png"], rgb(grey / 255.0))
    np.testing.assert_array_equal(got["grey_alpha.png"], rgb(la[..., 0] / 255.0))  # alpha dropped
    np.testing.assert_array_equal(got["rgba.png"], rgb(rgba[..., :3] / 255.0))
    np.testing.assert_array_equal(got["palette.png"], rgb(palette[indices] / 255.0))  # looked up
    np.testing.assert_array_equal(got["palette_alpha.png"], rgb(palette[indices] / 255.0))
    np.testing.assert_array_equal(got["bits.png"], rgb((grey > 128).astype(np.float64)))
    # 16 bit: divided by 65535, not 255
    np.testing.assert_array_equal(got["grey16.png"], rgb(g16 / 65535.0))
    np.testing.assert_array_equal(got["grey16.tif"], rgb(g16 / 65535.0))
    assert got["grey16.png"].max() <= 1.0 and got["grey16.png"].max() > 0.9
    # 16-bit colour: Pillow keeps the top 8 bits; the scale is still [0, 1]
    np.testing.assert_array_equal(got["rgb16.png"], rgb((rgb16 >> 8) / 255.0))
    assert np.abs(got["rgb16.png"] - rgb(rgb16 / 65535.0)).max() <= 1 / 255


def test_sizes_come_from_headers_and_equal_decoded_sizes(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    shapes = [(100, 37), (37, 100), (64, 64), (10, 200), (20, 25), (33, 17)]
    for k, (h, w) in enumerate(shapes):
        _save(tmp_path / f"d{k % 2}" / f"{k}.{'jpg' if k % 3 == 0 else 'png'}",
              rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    src = open_source(str(tmp_path), max_side=32, normalize="none")

    def no_decoding(path):
        raise AssertionError(f"decoded {path} to read its size")

    monkeypatch.setattr(data_mod, "read_image", no_decoding)
    sizes = src.sizes
    monkeypatch.undo()
    decoded = [src[i].size for i in range(len(src))]
    assert sizes == decoded
    by_name = dict(zip(src.names, sizes))
    assert by_name["d0/0.jpg"] == (32, 12) and by_name["d1/3.jpg"] == (2, 32) and by_name["d0/4.png"] == (20, 25)
    assert max(max(s) for s in sizes) == 32
    # a pickled source (spawn workers) keeps its sizes
    assert pickle.loads(pickle.dumps(src))._sizes == sizes


def test_photo_sizes_from_their_files():
    src = open_source("photos", max_side=None, normalize="none")
    for name in PHOTOS:
        assert data_mod._photo_file(name) is not None, name  # every photo has a file to read the header of
    assert src.sizes == [PHOTOS[n]().shape[:2] for n in PHOTOS]
    small = open_source("photos", num_images=3, max_side=64)
    assert small.sizes == [small[i].size for i in range(3)]


def test_unreadable_files_are_skipped_with_their_reason(tmp_path):
    _save(tmp_path / "good.png", np.zeros((5, 6, 3), np.uint8))
    _broken(tmp_path)
    src = open_source(str(tmp_path), normalize="none")
    assert src.names == ["good.png", "text.png", "trunc.jpg", "zero.png"]
    assert set(src.unreadable) == {1, 3}  # no header: text file, zero bytes
    assert src.sizes[2] == (40, 40) and src.sizes[1] == src.sizes[3] == (0, 0)  # truncated: the header is fine
    items = [src[i] for i in range(4)]
    assert isinstance(items[0], Image)
    assert [type(it) for it in items[1:]] == [Skipped] * 3
    assert [it.index for it in items[1:]] == [1, 2, 3] and [it.name for it in items[1:]] == src.names[1:]
    assert "cannot identify" in items[1].reason and "truncated" in items[2].reason.lower()
    assert "0 bytes" in items[3].reason
    # reported once per file, in the main process: a warning, or the callback
    with pytest.warns(SkippedImageWarning) as record:
        src.report(items[2])
        src.report(items[2])
    assert len(record) == 1 and "trunc.jpg" in str(record[0].message) and "truncated" in str(record[0].message).lower()
    seen = []
    src.report(items[3], seen.append)
    assert seen == [items[3]]
    # strict: the same files are errors naming them
    strict = open_source(str(tmp_path), normalize="none", strict=True)
    with pytest.raises(DataError, match=r"text\.png: .*cannot identify"):
        strict.sizes
    with pytest.raises(DataError, match=r"(?i)trunc\.jpg: .*truncated"):
        strict.load(2)
    with pytest.raises(DataError, match=r"trunc\.jpg"):
        strict.report(strict[2])


def test_synthetic_image_i_depends_only_on_seed_and_i():
    big = open_source("synthetic", num_images=10, max_side=40, seed=7, normalize="none")
    small = open_source("synthetic", num_images=3, max_side=40, seed=7, normalize="none")
    forward = [big[i].pixels for i in range(10)]
    backward = [big[i].pixels for i in reversed(range(10))][::-1]
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward))
    assert all(np.array_equal(small[i].pixels, forward[i]) for i in range(3))
    assert big.sizes == [big[i].size for i in range(10)] and all(10 <= s <= 40 for hw in big.sizes for s in hw)
    assert big.names[4] == "noise004_{}x{}".format(*big.sizes[4])
    assert len(open_source("synthetic")) == 8
    assert SyntheticSource(3, seed=7, max_side=40).names == small.names
    other = open_source("synthetic", num_images=3, max_side=40, seed=8, normalize="none")
    assert other.sizes != small.sizes
    per_image = open_source("synthetic", num_images=3, max_side=40, seed=7)  # "image": re-standardised
    p = per_image[1].pixels
    np.testing.assert_allclose(p, (forward[1] - forward[1].astype(np.float64).mean())
                               / forward[1].astype(np.float64).std(), rtol=1e-5, atol=1e-6)


def _raw_pixels(src):
    raw = src.with_normalize("none")
    return [raw[i].pixels for i in range(len(raw)) if isinstance(raw[i], Image)]


def test_dataset_stats_stream_equals_numpy_over_all_pixels(tmp_path):
    rng = np.random.default_rng(2)
    for k, (h, w) in enumerate([(30, 20), (12, 50), (40, 40), (7, 9), (25, 60)]):
        _save(tmp_path / f"c{k % 2}" / f"{k}.png", (rng.random((h, w, 3)) ** (1 + k) * 255).astype(np.uint8))
    _broken(tmp_path / "bad")
    src = open_source(str(tmp_path), max_side=32, normalize="dataset")
    with pytest.warns(SkippedImageWarning) as record:
        mean, std = dataset_stats(src, batch_size=2)
    assert sorted(str(r.message).split(":")[0].rsplit("/", 1)[-1] for r in record) == \
        ["text.png", "trunc.jpg", "zero.png"]  # one warning each
    allpix = np.concatenate([p.reshape(3, -1).astype(np.float64) for p in _raw_pixels(src)], axis=1)
    assert allpix.shape[1] == sum(h * w for n, (h, w) in zip(src.names, src.sizes) if not n.startswith("bad/"))
    np.testing.assert_allclose(mean, allpix.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, allpix.std(axis=1), rtol=1e-12)
    # the merge runs in image order: batch size does not change a bit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkippedImageWarning)
        again = dataset_stats(src, batch_size=5)
    assert np.array_equal(again[0], mean) and np.array_equal(again[1], std)
    with pytest.raises(DataError, match="dataset statistics first"):
        src.load(3)
    src.set_stats(mean, std)
    raw0 = src.with_normalize("none")[3].pixels
    np.testing.assert_array_equal(src[3].pixels, ((raw0 - mean[:, None, None]) / std[:, None, None])
                                  .astype(np.float32))
    restored = pickle.loads(pickle.dumps(src))  # spawn workers get the statistics
    assert np.array_equal(restored.stats[0], mean) and np.array_equal(restored[4].pixels, src[4].pixels)
    strict = open_source(str(tmp_path), max_side=32, normalize="dataset", strict=True)
    with pytest.raises(DataError, match="text.png"):
        dataset_stats(strict)


def test_dataset_stats_synthetic_and_dataset_normalisation():
    src = open_source("synthetic", num_images=4, max_side=24, seed=3, normalize="dataset")
    mean, std = dataset_stats(src)
    raw = _raw_pixels(src)
    allpix = np.concatenate([p.reshape(3, -1).astype(np.float64) for p in raw], axis=1)
    np.testing.assert_allclose(mean, allpix.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(std, allpix.std(axis=1), rtol=1e-12)
    src.set_stats(mean, std)
    for im, p in zip(_held(src), raw):  # each channel standardised with the dataset's numbers (float32 result)
        want = (p.astype(np.float64) - allpix.mean(axis=1)[:, None, None]) / allpix.std(axis=1)[:, None, None]
        np.testing.assert_allclose(im.pixels, want, rtol=1e-6, atol=1e-6)
