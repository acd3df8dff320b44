"""Image loading (onnxattr.images) and pictures (onnxattr.viz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxattr.errors import InputError
from onnxattr.images import expand_paths, input_geometry, layout_of, load_images
from onnxattr.viz import colorize, grid, overlay, save_png, to_map

FIXTURE_IMAGES = Path(__file__).resolve().parent.parent / "fixtures" / "images"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def write_png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def gradient_image(h: int, w: int) -> np.ndarray:
    """A deterministic non-constant RGB image."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) % 256], axis=2)


def blob(h: int = 32, w: int = 32) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - h / 3) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 8) ** 2))


# --- expand_paths ---------------------------------------------------------------------------

def test_expand_paths_folder_is_sorted_images_only(tmp_path):
    for name in ["b.png", "a.JPG", "c.webp", "notes.txt", ".hidden.png"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert [p.name for p in expand_paths([str(tmp_path)])] == ["a.JPG", "b.png", "c.webp"]


def test_expand_paths_files_and_folders_keep_order():
    """Files as given, then each folder's images sorted; a file named twice (by name and in its
    folder) once: both would write the same output files."""
    circle, square = FIXTURE_IMAGES / "circle.png", FIXTURE_IMAGES / "square.png"
    got = expand_paths([str(square), str(FIXTURE_IMAGES), str(circle)])
    assert got[0] == square
    assert [p.name for p in got] == ["square.png", "circle.png", "cross.png", "triangle.png"]


def test_expand_paths_missing_path_is_named(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InputError, match="nope.png"):
        expand_paths([str(FIXTURE_IMAGES / "circle.png"), str(missing)])


def test_expand_paths_no_images(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(InputError, match="no images"):
        expand_paths([str(tmp_path)])
    with pytest.raises(InputError):
        expand_paths([])


# --- layout_of ------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, layout", [
    ([1, 3, 224, 224], "NCHW"),
    (["batch", 3, 224, 224], "NCHW"),
    ([None, 1, 28, 28], "NCHW"),
    (["N", 224, 224, 3], "NHWC"),
    ([None, "h", "w", 1], "NHWC"),
    ([1, 3, 3, 3], "NCHW"),  # ambiguous: NCHW preferred
])
def test_layout_of(shape, layout):
    assert layout_of(shape) == layout


@pytest.mark.parametrize("shape", [[1, 10], [1, 3, 224], [1, 64, 224, 224], ["n", "c", "h", "w"], None])
def test_layout_of_rejects_non_images(shape):
    with pytest.raises(InputError):
        layout_of(shape)


def test_input_geometry():
    assert input_geometry(["batch", 3, 64, 48]) == ("NCHW", 3, (64, 48))
    assert input_geometry([1, "h", "w", 1]) == ("NHWC", 1, (None, None))


# --- load_images ----------------------------------------------------------------------------

def test_load_images_shape_dtype_and_exact_normalisation(tmp_path):
    pixels = gradient_image(40, 50)
    path = write_png(tmp_path / "g.png", pixels)
    batch, shown = load_images([path, path], (40, 50), MEAN, STD, "NCHW")
    assert batch.shape == (2, 3, 40, 50) and batch.dtype == np.float32
    assert len(shown) == 2 and shown[0].shape == (40, 50, 3) and shown[0].dtype == np.uint8
    np.testing.assert_array_equal(shown[0], pixels)  # size == image size: no resampling
    y, x = 17, 31
    for c in range(3):
        expected = (np.float32(pixels[y, x, c]) / np.float32(255.0) - np.float32(MEAN[c])) / np.float32(STD[c])
        assert batch[1, c, y, x] == expected


def test_load_images_nhwc_matches_nchw(tmp_path):
    path = write_png(tmp_path / "g.png", gradient_image(30, 30))
    nchw, _ = load_images([path], (24, 24), MEAN, STD, "NCHW", resize=28)
    nhwc, _ = load_images([path], (24, 24), MEAN, STD, "NHWC", resize=28)
    assert nhwc.shape == (1, 24, 24, 3)
    np.testing.assert_array_equal(nhwc, nchw.transpose(0, 2, 3, 1))


def test_load_images_resize_and_center_crop(tmp_path):
    # 100 x 200 (H x W): the shorter side goes to 50, so the resized image is 50 x 100;
    # the center 50 x 50 crop is the middle half of the width.
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :50] = 255   # left quarter white: cropped away
    pixels[:, 50:150] = 128
    path = write_png(tmp_path / "wide.png", pixels)
    batch, shown = load_images([path], (50, 50), 0.0, 1.0, "NCHW")
    assert batch.shape == (1, 3, 50, 50) and shown[0].shape == (50, 50, 3)
    inner = (slice(None), slice(2, -2))  # bilinear blends the pixels next to the crop edge
    assert np.all(shown[0][inner] == 128)
    assert np.allclose(batch[0][(slice(None),) + inner], 128 / 255)
    # a larger resize leaves a margin: the crop is still (50, 50)
    batch, shown = load_images([path], (50, 50), 0.0, 1.0, "NHWC", resize=64)
    assert batch.shape == (1, 50, 50, 3)


def test_load_images_grayscale_model(tmp_path):
    path = write_png(tmp_path / "g.png", np.full((8, 8, 3), 51, np.uint8))
    batch, shown = load_images([path], (8, 8), [0.5], [0.5], "NCHW", channels=1)
    assert batch.shape == (1, 1, 8, 8)
    assert np.allclose(batch, (51 / 255 - 0.5) / 0.5)
    assert shown[0].shape == (8, 8, 3)


def test_load_images_fixtures():
    paths = expand_paths([str(FIXTURE_IMAGES)])
    batch, shown = load_images(paths, (64, 64), [0.5] * 3, [0.5] * 3, "NCHW")
    assert batch.shape == (4, 3, 64, 64)
    assert batch.min() >= -1.0 and batch.max() <= 1.0
    assert [s.shape for s in shown] == [(64, 64, 3)] * 4


def test_load_images_corrupt_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(InputError, match=r"cannot decode image '.*bad\.png'") as info:
        load_images([bad], (8, 8), MEAN, STD, "NCHW")
    assert "\n" not in str(info.value)


def test_load_images_wrong_mean_length(tmp_path):
    path = write_png(tmp_path / "g.png", gradient_image(8, 8))
    with pytest.raises(InputError, match="mean"):
        load_images([path], (8, 8), [0.5, 0.5], STD, "NCHW")


# --- to_map / colorize / overlay ------------------------------------------------------------

def test_to_map_gradient():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 32, 32)) * blob()
    m = to_map(a, "gradient", "NCHW")
    assert m.shape == (32, 32) and m.dtype == np.float32
    assert m.min() >= 0.0 and m.max() == 1.0
    assert np.mean(m == 1.0) <= 0.02  # clipped only above the 99th percentile
    np.testing.assert_array_equal(to_map(a.transpose(1, 2, 0), "gradient", "NHWC"), m)


def test_to_map_signed():
    a = np.stack([blob() - np.roll(blob(), 16, axis=1)] * 3)
    m = to_map(a, "signed", "NCHW")
    assert m.shape == (32, 32)
    assert m.min() == -1.0 and m.max() == 1.0
    np.testing.assert_array_equal(to_map(a.transpose(1, 2, 0), "signed", "NHWC"), m)


def test_to_map_cam():
    cam = 3.0 * blob(7, 7)[None]
    m = to_map(cam, "cam", "NCHW")
    assert m.shape == (7, 7)
    assert m.min() >= 0.0 and m.max() == pytest.approx(1.0)
    np.testing.assert_allclose(to_map(cam.transpose(1, 2, 0), "cam", "NHWC"), m)
    with pytest.raises(ValueError):
        to_map(np.ones((3, 7, 7)), "cam", "NCHW")


@pytest.mark.parametrize("kind", ["gradient", "signed", "cam"])
def test_to_map_all_zero_stays_zero(kind):
    shape = (1, 16, 16) if kind == "cam" else (3, 16, 16)
    m = to_map(np.zeros(shape, np.float32), kind, "NCHW")
    assert m.shape == (16, 16)
    assert not np.isnan(m).any() and np.all(m == 0)


def test_to_map_sparse_attribution_uses_max():
    a = np.zeros((3, 32, 32))
    a[0, 5, 5] = 2.0  # fewer than 1% non-zero: the 99th percentile is 0
    m = to_map(a, "gradient", "NCHW")
    assert m[5, 5] == 1.0 and m.sum() == 1.0


def test_colorize_ranges():
    ramp = np.linspace(0, 1, 11)[None]
    c = colorize(ramp, "gradient")
    assert c.shape == (1, 11, 3) and c.dtype == np.uint8
    assert c[0, 0].sum() < c[0, -1].sum()  # dark -> bright
    s = colorize(np.array([[-1.0, 0.0, 1.0]]), "signed")
    assert s[0, 0, 2] > s[0, 0, 0]  # blue
    assert np.all(s[0, 1] == 255)   # white
    assert s[0, 2, 0] > s[0, 2, 2]  # red


@pytest.mark.parametrize("kind", ["gradient", "signed", "cam"])
def test_overlay_keeps_size_and_shows_the_map(kind):
    image = np.full((64, 48, 3), 90, np.uint8)
    raw = np.stack([blob(16, 16) - (kind == "signed") * np.roll(blob(16, 16), 8, axis=1)] * (1 if kind == "cam" else 3))
    out = overlay(image, to_map(raw, kind, "NCHW"), kind)
    assert out.shape == (64, 48, 3) and out.dtype == np.uint8
    assert out.min() != out.max()


def test_overlay_low_attribution_shows_the_image():
    image = gradient_image(32, 32).astype(np.uint8)
    out = overlay(image, np.zeros((32, 32)), "gradient")
    np.testing.assert_array_equal(out, image)


# --- grid / save_png ------------------------------------------------------------------------

def test_grid_grows_with_rows_and_columns():
    img = np.asarray(Image.open(FIXTURE_IMAGES / "circle.png").convert("RGB"))
    panel = overlay(img, blob(64, 64), "gradient")
    one = grid([img], [("saliency", [panel])], ["circle (0.98)"])
    two_rows = grid([img, img], [("saliency", [panel, panel])], ["circle (0.98)", "square (0.51)"])
    two_cols = grid([img], [("saliency", [panel]), ("guided", [panel])], ["circle (0.98)"])
    assert isinstance(one, Image.Image) and one.mode == "RGB"
    assert two_rows.height > one.height and two_rows.width == one.width
    assert two_cols.width > one.width and two_cols.height == one.height
    assert one.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError):
        grid([img, img], [("saliency", [panel])], ["a", "b"])


def test_save_png_roundtrip(tmp_path):
    arr = gradient_image(10, 12).astype(np.uint8)
    out = tmp_path / "x.png"
    save_png(arr, out)
    np.testing.assert_array_equal(np.asarray(Image.open(out)), arr)
    save_png(grid([arr], [], ["t"]), tmp_path / "g.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png", "x.png"]  # no temp files left


def test_load_images_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.full((8, 8), 257 * 100, np.uint16)).save(path)
    _, shown = load_images([path], (8, 8), 0.0, 1.0, "NCHW")
    assert np.all(shown[0] == 100)


@pytest.mark.parametrize("wh, resize, crop", [
    ((640, 427), 256, 224),  # torchvision: 383 x 256, crop at x 80 (onnxattr resized to 384)
    ((500, 334), 256, 224),  # torchvision: 383 x 256, crop at x round(79.5) = 80 (onnxattr cropped at 79)
    ((332, 500), 256, 224),  # portrait: 256 x 385, crop at y round(80.5) = 80 (onnxattr: 386, 81)
    ((640, 427), None, 224),  # no --resize: as Resize(224) + CenterCrop(224) (onnxattr resized to 336)
    ((120, 90), 256, 224),  # sizes where both agreed already
])
def test_load_images_resize_and_crop_are_torchvision_s(tmp_path, wh, resize, crop):
    """--resize N with a centre crop is torchvision's ImageNet evaluation (README): Resize(N) sets the
    shorter side to N and the longer to int(N * long / short) (rounded towards zero), CenterCrop
    starts at int(round((n - crop) / 2)); the default (no --resize) is Resize(crop). onnxattr rounded
    the longer side to nearest and floored the offset, so a 640 x 427 photo came out 1.9 off in the
    normalised input."""
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(0)
    path = write_png(tmp_path / "photo.png", rng.integers(0, 256, (wh[1], wh[0], 3)))
    batch, shown = load_images([path], (crop, crop), MEAN, STD, "NCHW", resize=resize)
    pipeline = transforms.Compose([transforms.Resize(resize or crop), transforms.CenterCrop(crop)])
    with Image.open(path) as im:
        want = np.asarray(pipeline(im.convert("RGB")))
    np.testing.assert_array_equal(shown[0], want)
    expected = (want.astype(np.float32) / np.float32(255.0) - np.float32(MEAN)) / np.float32(STD)
    np.testing.assert_array_equal(batch[0], expected.transpose(2, 0, 1))


def test_load_images_refuses_an_upscale_past_pillows_limit(tmp_path, monkeypatch):
    """Without --resize, an image of extreme aspect is enlarged until its shorter side covers the
    crop before the crop is taken: a 141-byte 1 x 20000 PNG became 4,480,000 x 224 pixels for a
    224-px model (4.5 GB; 1 x 50000 ran out of memory). That is refused, as a --resize past Pillow's
    limit is (the limit lowered here so that the test runs small)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    path = write_png(tmp_path / "line.png", np.full((1, 400, 3), 100))
    with pytest.raises(InputError, match=r"'.*line\.png' \(400x1\) would be resized to 25600x64 pixels") as info:
        load_images([path], (64, 64), MEAN, STD, "NCHW")
    assert "\n" not in str(info.value)
    batch, _ = load_images([write_png(tmp_path / "ok.png", np.full((2, 40, 3), 100))], (64, 64), MEAN, STD, "NCHW")
    assert batch.shape == (1, 3, 64, 64)  # 1280 x 64 is under the limit (200,000)


@pytest.mark.parametrize("wh, resize, crop", [
    ((641, 480), None, (224, 320)),  # non-square crop: covering it by scale gave 320 x 239, no Resize(n)'s size
    ((480, 641), None, (320, 224)),
    ((300, 500), None, (64, 48)),
    ((333, 333), None, (48, 64)),
    ((640, 427), 100, (224, 224)),  # a --resize that does not cover the crop is raised to the least that does
    ((500, 332), 200, (224, 300)),
])
def test_load_images_are_torchvision_s_for_any_crop(tmp_path, wh, resize, crop):
    """Resize(n) + CenterCrop((H, W)) for every crop: n is --resize where it covers the crop, else the
    least n whose Resize(n) covers it (found here by trying torchvision's Resize itself)."""
    transforms = pytest.importorskip("torchvision.transforms")
    rng = np.random.default_rng(1)
    path = write_png(tmp_path / "photo.png", rng.integers(0, 256, (wh[1], wh[0], 3)))
    batch, shown = load_images([path], crop, MEAN, STD, "NCHW", resize=resize)
    with Image.open(path) as im:
        im = im.convert("RGB")

        def covers(n):
            rw, rh = transforms.Resize(n)(im).size
            return rw >= crop[1] and rh >= crop[0]

        n = resize if resize is not None and covers(resize) else next(k for k in range(1, 2000) if covers(k))
        want = np.asarray(transforms.CenterCrop(crop)(transforms.Resize(n)(im)))
    np.testing.assert_array_equal(shown[0], want)


def test_a_resize_past_pillows_limit_is_blamed_only_where_a_smaller_one_would_do(tmp_path, monkeypatch):
    """An image of extreme aspect with --resize 256 (torchvision's ImageNet evaluation) was refused
    saying to give a smaller --resize, without naming the image; --resize 224 (the crop, the smallest
    that covers it) said the same, and only one below the crop, raised to cover it, named the image's
    aspect. The --resize refusal now comes only where the size that just covers the crop is under the
    limit, and names the image too (the limit lowered so that the test runs small)."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
    line = write_png(tmp_path / "line.png", np.full((1, 400, 3), 100))
    for resize in (None, 32, 64, 80):
        with pytest.raises(InputError, match=r"'.*line\.png' \(400x1\) would be resized to .* less extreme aspect"):
            load_images([line], (64, 64), MEAN, STD, "NCHW", resize=resize)
    square = write_png(tmp_path / "square.png", np.full((64, 64, 3), 100))
    with pytest.raises(InputError, match=r"--resize 1000 makes a 64x64 image \('.*square\.png'\) 1000x1000 pixels"
                                         r".*give a smaller --resize"):
        load_images([square], (64, 64), MEAN, STD, "NCHW", resize=1000)
