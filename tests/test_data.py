"""masked_torch.analysis.data: sources, conversion, resizing, normalisation, padding and masks, folder errors."""
import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from masked_torch.analysis.data import (
    PHOTOS, DataError, Image, batches, folder_images, load_images, normalize_images, pad_alone, pad_batch,
    photo_images, resize_max_side, round_up, synthetic_images, to_rgb_float,
)


def _save(path, array):
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
    a = synthetic_images(6, seed=3, max_side=64)
    b = synthetic_images(6, seed=3, max_side=64)
    c = synthetic_images(6, seed=4, max_side=64)
    assert [im.size for im in a] == [im.size for im in b]
    assert all(np.array_equal(x.pixels, y.pixels) for x, y in zip(a, b))
    assert [im.size for im in a] != [im.size for im in c]
    assert all(16 <= s <= 64 for im in a for s in im.size)
    big = np.concatenate([im.pixels.ravel() for im in synthetic_images(4, seed=0, max_side=128)])
    assert abs(big.mean()) < 0.02 and abs(big.std() - 1) < 0.02
    with pytest.raises(DataError):
        synthetic_images(0)


def test_normalisation_per_image_and_dataset():
    rng = np.random.default_rng(0)
    ims = [Image("a", (rng.random((3, 8, 9)) * 5 + 2).astype(np.float32)),
           Image("b", (rng.random((3, 4, 6)) * 0.1).astype(np.float32)),
           Image("flat", np.full((3, 3, 3), 0.5, np.float32))]
    per_image = normalize_images(ims, "image")
    for im in per_image[:2]:
        assert abs(im.pixels.mean()) < 1e-5 and abs(im.pixels.std() - 1) < 1e-4
    assert np.all(per_image[2].pixels == 0)  # constant image: no division by zero
    ds = normalize_images(ims, "dataset")
    allpix = np.concatenate([im.pixels.reshape(3, -1) for im in ds], axis=1)
    np.testing.assert_allclose(allpix.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(allpix.std(axis=1), 1, atol=1e-4)
    assert normalize_images(ims, "none")[0] is ims[0]
    with pytest.raises(DataError):
        normalize_images(ims, "batch")


def test_photos_are_offline_and_rgb():
    ims = photo_images(num_images=3, max_side=64)
    assert [im.name for im in ims] == list(PHOTOS)[:3]
    for im in ims:
        assert im.pixels.shape[0] == 3 and max(im.size) == 64 and im.pixels.dtype == np.float32
    with pytest.raises(DataError, match="only"):
        photo_images(num_images=len(PHOTOS) + 1)
    with pytest.raises(DataError, match="unknown"):
        photo_images(["nope"])


def test_load_images_photos_normalised():
    ims = load_images("photos", num_images=2, max_side=48)
    for im in ims:
        assert abs(im.pixels.mean()) < 1e-4 and abs(im.pixels.std() - 1) < 1e-3


def test_pad_batch_shapes_masks_and_placement():
    rng = np.random.default_rng(1)
    ims = [Image(f"i{k}", rng.standard_normal((3, h, w)).astype(np.float32))
           for k, (h, w) in enumerate([(20, 33), (17, 8), (40, 12)])]
    b = pad_batch(ims, depth=3)
    assert b.x.shape == (3, 3, 40, 40) and b.mask.shape == (3, 1, 40, 40)
    assert b.x.dtype == torch.float32 and b.mask.dtype == torch.float32
    assert b.sizes == [(20, 33), (17, 8), (40, 12)] and b.names == ["i0", "i1", "i2"]
    for k, im in enumerate(ims):
        h, w = im.size
        assert b.mask[k].sum() == h * w
        assert torch.all(b.mask[k, :, :h, :w] == 1)
        assert torch.equal(b.x[k, :, :h, :w], torch.from_numpy(im.pixels))
        assert torch.all(b.x[k][b.mask[k].expand(3, -1, -1) == 0] == 0)
    # rounding is per dimension, to 2**depth
    assert pad_batch(ims, depth=4).shape == (48, 48)
    assert pad_batch(ims[:2], depth=2).shape == (20, 36)
    assert pad_batch(ims[:2], depth=0).shape == (20, 33)
    with pytest.raises(ValueError):
        pad_batch(ims, depth=3, size=(40, 36))
    with pytest.raises(ValueError):
        pad_batch([], depth=1)


def test_pad_alone_and_batches():
    ims = synthetic_images(5, seed=0, max_side=40)
    alone = pad_alone(ims[1], depth=3, index=1)
    h, w = ims[1].size
    assert alone.shape == (round_up(h, 8), round_up(w, 8)) and len(alone) == 1 and alone.index == [1]
    assert alone.mask.sum() == h * w
    got = list(batches(ims, 2, depth=3))
    assert [len(b) for b in got] == [2, 2, 1]
    assert [i for b in got for i in b.index] == [0, 1, 2, 3, 4]
    # in its batch, an image has the same values at the same place as alone
    b = got[0]
    assert torch.equal(b.x[1, :, :h, :w], alone.x[0, :, :h, :w])
    with pytest.raises(ValueError):
        list(batches(ims, 0, depth=3))


def test_folder_reads_grey_rgba_and_sorts(tmp_path):
    rng = np.random.default_rng(0)
    _save(tmp_path / "b_rgba.png", rng.integers(0, 256, (10, 12, 4), dtype=np.uint8))
    _save(tmp_path / "a_grey.png", rng.integers(0, 256, (9, 7), dtype=np.uint8))
    _save(tmp_path / "c.jpg", rng.integers(0, 256, (30, 20, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")  # ignored: no image suffix
    ims = folder_images(tmp_path, max_side=16)
    assert [im.name for im in ims] == ["a_grey.png", "b_rgba.png", "c.jpg"]
    assert [im.size for im in ims] == [(9, 7), (10, 12), (16, 11)]
    assert all(im.pixels.shape[0] == 3 for im in ims)
    assert len(folder_images(tmp_path, num_images=2)) == 2
    assert len(folder_images(tmp_path / "c.jpg")) == 1  # a single file works too
    assert len(load_images(str(tmp_path), max_side=None)) == 3


def test_folder_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataError, match="no images"):
        folder_images(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        folder_images(tmp_path / "missing")
    _save(tmp_path / "good.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(DataError, match="broken.png"):
        folder_images(tmp_path)
    with pytest.raises(DataError, match="only 2 images"):
        folder_images(tmp_path, num_images=3)
