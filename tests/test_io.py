"""qds_lite.io: every input kind of DESIGN.md section 7. All test images are made here, at test time."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, features

from qds_lite import io as qio
from qds_lite.errors import ImageLoadError
from qds_lite.protocol import GLANCE_SIZE, GRID, N_CELLS, ZOOM_SIZE

WHITE = (255, 255, 255)


def reference(w: int = 64, h: int = 48) -> np.ndarray:
    """An asymmetric upright image of flat 16x16 blocks (JPEG-friendly), no two blocks alike."""
    ys, xs = np.mgrid[0:h, 0:w]
    bx, by = xs // 16, ys // 16
    return np.stack([bx * 60 + 10, by * 70 + 20, (bx * 3 + by) * 20 + 5], axis=-1).astype(np.uint8)


def save(img: Image.Image, path, fmt: str | None = None, **kw) -> str:
    img.save(path, fmt, **kw)
    return str(path)


def load_err(source, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        qio.load_image(source, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, raw: bytes) -> bytes:
    """A minimal PNG written by hand (Pillow cannot write 16-bit RGB, nor lie about its size)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
            + chunk(b"IEND", b""))


# --- EXIF orientation -----------------------------------------------------------------------------
def transverse(a: np.ndarray) -> np.ndarray:
    return np.flip(a.transpose(1, 0, 2), (0, 1))


# How the stored pixels relate to the upright picture, for each EXIF orientation (from the spec:
# e.g. 6 means "rotate the stored image 90 degrees clockwise to display it").
STORED = {
    1: lambda a: a,
    2: np.fliplr,
    3: lambda a: np.rot90(a, 2),
    4: np.flipud,
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, 1),
    7: transverse,
    8: lambda a: np.rot90(a, -1),
}


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation(tmp_path, orientation, fmt):
    ref = reference()
    stored = Image.fromarray(np.ascontiguousarray(STORED[orientation](ref)))
    kw = {"quality": 100, "subsampling": 0} if fmt == "JPEG" else {}
    path = save(stored, tmp_path / f"o{orientation}.{fmt.lower()}", fmt, exif=exif_bytes(orientation), **kw)
    before = (Path(path).read_bytes(), os.stat(path).st_mtime_ns)
    out = qio.load_image(path)
    assert out.original_size == (ref.shape[1], ref.shape[0])
    assert out.pixels.shape == ref.shape
    diff = np.abs(out.pixels.astype(int) - ref)
    assert diff.max() <= (0 if fmt == "PNG" else 8), diff.max()
    assert (Path(path).read_bytes(), os.stat(path).st_mtime_ns) == before  # input untouched


def test_pil_input_is_oriented_but_not_modified(tmp_path):
    ref = reference()
    path = save(Image.fromarray(np.ascontiguousarray(STORED[6](ref))), tmp_path / "o6.png",
                exif=exif_bytes(6))
    with Image.open(path) as img:
        out = qio.load_image(img)
        assert img.size == (ref.shape[0], ref.shape[1])  # caller's image not transposed
        assert img.getexif().get(0x0112) == 6
    assert out.name == "<PIL.Image>"
    np.testing.assert_array_equal(out.pixels, ref)


# --- colour modes and formats ---------------------------------------------------------------------
def test_cmyk_jpeg(tmp_path):
    img = Image.new("CMYK", (32, 16), (0, 255, 255, 0))  # red
    out = qio.load_image(save(img, tmp_path / "cmyk.jpg", quality=100))
    r, g, b = out.pixels.reshape(-1, 3).mean(0)
    assert r > 240 and g < 15 and b < 15


def test_palette_png_with_transparency(tmp_path):
    img = Image.new("P", (4, 2))
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.putdata([0, 1, 2, 1, 0, 2, 1, 0])
    out = qio.load_image(save(img, tmp_path / "p.png", transparency=0))
    assert tuple(out.pixels[0, 0]) == WHITE  # transparent index -> white, not black
    assert tuple(out.pixels[0, 1]) == (255, 0, 0)
    assert tuple(out.pixels[0, 2]) == (0, 0, 255)


def test_la_and_rgba_composite_on_white(tmp_path):
    la = Image.new("LA", (3, 1))
    la.putdata([(0, 0), (0, 255), (0, 128)])
    out = qio.load_image(save(la, tmp_path / "la.png"))
    assert tuple(out.pixels[0, 0]) == WHITE
    assert tuple(out.pixels[0, 1]) == (0, 0, 0)
    assert abs(int(out.pixels[0, 2, 0]) - 127) <= 2

    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(255, 0, 0, 0), (0, 0, 255, 255)])
    out = qio.load_image(save(rgba, tmp_path / "rgba.png"))
    assert tuple(out.pixels[0, 0]) == WHITE
    assert tuple(out.pixels[0, 1]) == (0, 0, 255)


def test_16bit_grey_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 128, 1000, 32896, 65535 - 257, 65535]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode.startswith("I;16")
    path = save(img, tmp_path / "g16.png")
    with Image.open(path) as check:
        assert check.mode in ("I;16", "I")  # really stored and read as 16-bit
    out = qio.load_image(path)
    np.testing.assert_array_equal(out.pixels[0, :, 0], [0, 0, 4, 128, 254, 255])
    assert (out.pixels == out.pixels[..., :1]).all()  # grey stays grey


def test_16bit_grey_png_with_transparent_value(tmp_path):
    img = Image.fromarray(np.array([[0, 1000, 32896, 65535]], dtype=np.uint16))
    out = qio.load_image(save(img, tmp_path / "g16t.png", transparency=1000))
    np.testing.assert_array_equal(out.pixels[0, :, 0], [0, 255, 128, 255])


def test_16bit_rgb_png(tmp_path):
    # Pillow cannot write 16-bit RGB PNGs, so write one by hand: one row, two pixels.
    px = [(0x1234, 0xFF00, 0x0000), (0xFFFF, 0x8080, 0x00FF)]
    raw = b"\x00" + b"".join(struct.pack(">HHH", *p) for p in px)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(2, 1, 16, 2, raw))
    out = qio.load_image(path)
    expected = np.array([[[c / 257 for c in p] for p in px]])
    assert np.abs(out.pixels.astype(float) - expected).max() <= 1.0  # >>8 or /257 both fine


def test_float_and_bilevel_and_int_modes():
    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    np.testing.assert_array_equal(qio.load_image(f).pixels[0, :, 0], [0, 128, 255])
    bilevel = Image.new("1", (2, 1))
    bilevel.putpixel((1, 0), 1)
    np.testing.assert_array_equal(qio.load_image(bilevel).pixels[0, :, 0], [0, 255])
    i32 = Image.fromarray(np.array([[0, 65535, 70000, -5]], dtype=np.int32))
    assert i32.mode == "I"
    np.testing.assert_array_equal(qio.load_image(i32).pixels[0, :, 0], [0, 255, 255, 0])


@pytest.mark.parametrize("fmt, ext, kw", [
    ("TIFF", "tif", {}),
    ("TIFF", "tiff", {"compression": "tiff_lzw"}),
    ("WEBP", "webp", {"lossless": True}),
    ("BMP", "bmp", {}),
    ("PNG", "png", {}),
    ("JPEG", "jpg", {"quality": 100, "subsampling": 0, "progressive": True}),
])
def test_formats_roundtrip(tmp_path, fmt, ext, kw):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    ref = reference()
    out = qio.load_image(save(Image.fromarray(ref), tmp_path / f"img.{ext}", fmt, **kw))
    assert out.pixels.dtype == np.uint8 and out.pixels.flags.c_contiguous
    assert np.abs(out.pixels.astype(int) - ref).max() <= (8 if fmt == "JPEG" else 0)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_first_frame(tmp_path, fmt):
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("Pillow built without WebP")
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    kw = {"lossless": True} if fmt == "WEBP" else {}
    path = tmp_path / f"anim.{fmt.lower()}"
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **kw)
    with Image.open(path) as check:
        assert getattr(check, "n_frames", 1) == 3
    out = qio.load_image(path)
    assert (np.abs(out.pixels.astype(int) - [255, 0, 0]) <= 2).all()


def test_wrong_extension_is_fine(tmp_path):
    ref = reference()
    out = qio.load_image(save(Image.fromarray(ref), tmp_path / "really_a_png.jpg", "PNG"))
    np.testing.assert_array_equal(out.pixels, ref)


# --- ICC profiles ---------------------------------------------------------------------------------
def srgb_icc() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def swapped_primaries_icc() -> bytes:
    """The sRGB profile with its red and green primaries exchanged: a valid, very different RGB space."""
    data = bytearray(srgb_icc())
    (count,) = struct.unpack_from(">I", data, 128)
    entries = {}
    for i in range(count):
        pos = 132 + 12 * i
        entries[bytes(data[pos:pos + 4])] = pos
    r, g = entries[b"rXYZ"], entries[b"gXYZ"]
    data[r + 4:r + 12], data[g + 4:g + 12] = data[g + 4:g + 12], data[r + 4:r + 12]
    data[84:100] = bytes(16)  # profile ID (MD5) no longer matches: zero means "not computed"
    return bytes(data)


def test_icc_srgb_profile_keeps_colours(tmp_path):
    ref = reference()
    out = qio.load_image(save(Image.fromarray(ref), tmp_path / "srgb.png", icc_profile=srgb_icc()))
    assert np.abs(out.pixels.astype(int) - ref).max() <= 2


def test_icc_other_rgb_profile_is_converted(tmp_path):
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    out = qio.load_image(save(red, tmp_path / "swapped.jpg", quality=100, icc_profile=swapped_primaries_icc()))
    r, g, b = out.pixels.reshape(-1, 3).mean(0)
    assert g > 200 and r < 100, (r, g, b)  # "red" in that space is sRGB green


def test_icc_profile_of_a_palette_image_is_converted(tmp_path):
    red = Image.new("RGB", (8, 8), (255, 0, 0)).quantize(colors=4)
    out = qio.load_image(save(red, tmp_path / "swapped.png", icc_profile=swapped_primaries_icc()))
    r, g, b = out.pixels.reshape(-1, 3).mean(0)
    assert g > 200 and r < 100, (r, g, b)


@pytest.mark.parametrize("icc", [
    ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes(),  # wrong colour space for RGB
    b"this is not an ICC profile at all" * 4,
])
def test_icc_unusable_profile_falls_back(tmp_path, icc):
    ref = reference()
    out = qio.load_image(save(Image.fromarray(ref), tmp_path / "bad_icc.png", icc_profile=icc))
    np.testing.assert_array_equal(out.pixels, ref)


def test_icc_rgb_profile_on_grey_image_falls_back(tmp_path):
    grey = reference()[:, :, 0]
    out = qio.load_image(save(Image.fromarray(grey), tmp_path / "grey.png", icc_profile=srgb_icc()))
    np.testing.assert_array_equal(out.pixels[:, :, 1], grey)


# --- errors ---------------------------------------------------------------------------------------
def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    msg = load_err(tmp_path / "empty.jpg")
    assert msg.startswith("empty.jpg: ") and "empty file" in msg


def test_load_error_survives_pickling(tmp_path):
    import pickle

    err = pickle.loads(pickle.dumps(qio.ImageLoadError("a.jpg", "empty file")))
    assert (err.file, err.reason, str(err)) == ("a.jpg", "empty file", "a.jpg: empty file")


def test_truncated_jpeg(tmp_path):
    ref = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    full = (tmp_path / "full.jpg")
    save(Image.fromarray(ref), full, quality=90)
    data = full.read_bytes()
    (tmp_path / "photo.jpg").write_bytes(data[: len(data) // 2])
    msg = load_err(tmp_path / "photo.jpg")
    assert msg.startswith("photo.jpg: ") and "truncated" in msg, msg


def test_text_file_named_jpg(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello, this is not a picture\n" * 10)
    msg = load_err(tmp_path / "notes.jpg")
    assert msg.startswith("notes.jpg: ") and "not an image file (unrecognised format)" in msg


def test_postscript_is_not_handed_to_ghostscript(tmp_path):
    (tmp_path / "doc.eps").write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    msg = load_err(tmp_path / "doc.eps")
    assert msg.startswith("doc.eps: ") and "not an image file" in msg


def test_corrupt_png_data(tmp_path):
    ref = reference()
    good = bytearray(png_bytes(64, 48, 8, 2, b"".join(b"\x00" + row.tobytes() for row in ref)))
    idat = good.index(b"IDAT") + 4
    good[idat:idat + 20] = b"\xff" * 20  # garbage zlib stream (CRC left wrong on purpose)
    (tmp_path / "bad.png").write_bytes(bytes(good))
    msg = load_err(tmp_path / "bad.png")
    assert msg.startswith("bad.png: ") and ("corrupt" in msg or "truncated" in msg), msg


def test_directory(tmp_path):
    (tmp_path / "album").mkdir()
    msg = load_err(tmp_path / "album")
    assert msg.startswith("album: ") and "is a directory" in msg


def test_missing_path(tmp_path):
    msg = load_err(str(tmp_path / "nope.jpg"))
    assert msg.startswith("nope.jpg: ") and "file not found" in msg


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root can read a chmod 000 file")
def test_unreadable_file(tmp_path):
    path = save(Image.fromarray(reference()), tmp_path / "locked.png")
    os.chmod(path, 0)
    try:
        msg = load_err(path)
    finally:
        os.chmod(path, 0o644)
    assert msg.startswith("locked.png: ") and "permission denied" in msg


def test_bomb_guard_before_decoding(tmp_path):
    path = save(Image.fromarray(reference(64, 48)), tmp_path / "big.png")
    msg = load_err(path, max_pixels=1000)
    assert msg.startswith("big.png: ") and "image too large" in msg
    assert "64 x 48 = 3072 pixels > limit 1000" in msg and "QDS_MAX_PIXELS" in msg
    assert qio.load_image(path, max_pixels=3072).original_size == (64, 48)


def test_bomb_guard_env(tmp_path, monkeypatch):
    path = save(Image.fromarray(reference(64, 48)), tmp_path / "big.png")
    monkeypatch.setenv("QDS_MAX_PIXELS", "3000")
    assert "image too large" in load_err(path)
    monkeypatch.setenv("QDS_MAX_PIXELS", "3072")
    assert qio.load_image(path).original_size == (64, 48)


def test_real_bomb_is_refused_by_us_not_pillow(tmp_path):
    # A 20000 x 20000 PNG header (400 MP) with almost no data: Pillow alone would raise its own error.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000, 8, 0, b"\x00" * 10))
    msg = load_err(path)
    assert msg.startswith("bomb.png: image too large (20000 x 20000 = 400000000 pixels > limit 200000000)")


def test_pillow_global_limit_does_not_decide(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow would refuse anything > 200 px
    path = save(Image.fromarray(reference(64, 48)), tmp_path / "ok.png")
    assert qio.load_image(path).original_size == (64, 48)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored


def test_pillow_bomb_errors_are_translated():
    def boom():
        raise Image.DecompressionBombError("Image size (1 pixels) exceeds limit")

    with pytest.raises(ImageLoadError, match=r"^x\.png: image too large"):
        qio._pillow_call("x.png", None, boom)


# --- other inputs ---------------------------------------------------------------------------------
def test_bytes_input(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(reference()).save(buf, "PNG")
    out = qio.load_image(buf.getvalue())
    assert out.name == "<bytes>"
    np.testing.assert_array_equal(out.pixels, reference())
    assert load_err(b"").startswith("<bytes>: empty file")
    assert "not an image" in load_err(b"GIF? no")


def test_path_objects_and_names(tmp_path):
    path = tmp_path / "photo.png"
    save(Image.fromarray(reference()), path)
    assert qio.load_image(path).name == "photo.png"
    assert qio.load_image(str(path)).name == "photo.png"


def test_ndarray_inputs():
    rgb = reference()
    out = qio.load_image(rgb)
    assert out.name == "<array>" and out.original_size == (64, 48)
    np.testing.assert_array_equal(out.pixels, rgb)

    grey = rgb[:, :, 1].copy()
    out = qio.load_image(grey)
    assert out.pixels.shape == (48, 64, 3)
    np.testing.assert_array_equal(out.pixels[:, :, 2], grey)

    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    out = qio.load_image(rgba)
    assert tuple(out.pixels[0, 0]) == (10, 20, 30) and tuple(out.pixels[1, 1]) == WHITE

    view = np.asfortranarray(rgb)[::1, ::-1]  # non-contiguous input
    assert qio.load_image(view).pixels.flags.c_contiguous

    with pytest.raises(ImageLoadError, match="dtype"):
        qio.load_image(rgb.astype(np.float32))
    with pytest.raises(ImageLoadError, match="shape"):
        qio.load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ImageLoadError, match="empty image"):
        qio.load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError):
        qio.load_image(12345)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [(1, 1), (8, 8), (31, 20), (20, 31), (200, 3)])
def test_tiny_images(tmp_path, size):
    arr = (np.random.default_rng(1).random((size[1], size[0], 3)) * 255).astype(np.uint8)
    out = qio.load_image(save(Image.fromarray(arr), tmp_path / "tiny.png"))
    assert out.original_size == size
    np.testing.assert_array_equal(out.pixels, arr)
    assert out.glance.shape == (GLANCE_SIZE, GLANCE_SIZE, 3)
    for cell in range(N_CELLS):
        window, (x0, y0, x1, y1) = qio.zoom_window(out.pixels, cell)
        assert window.shape == (ZOOM_SIZE, ZOOM_SIZE, 3) and window.flags.c_contiguous
        assert 0 <= x0 < x1 <= size[0] and 0 <= y0 < y1 <= size[1]
        from_pillow = qio.zoom_window(out.full, cell)  # what scoring crops from
        np.testing.assert_array_equal(from_pillow[0], window)
        assert from_pillow[1] == (x0, y0, x1, y1)


def test_zoom_from_pillow_image_equals_zoom_from_array(tmp_path):
    arr = (np.random.default_rng(3).random((300, 457, 3)) * 255).astype(np.uint8)
    out = qio.load_image(save(Image.fromarray(arr), tmp_path / "z.png"))
    assert isinstance(out.full, Image.Image)  # no full-size array is made unless asked for
    for cell in range(N_CELLS):
        a, box_a = qio.zoom_window(arr, cell)
        b, box_b = qio.zoom_window(out.full, cell)
        np.testing.assert_array_equal(a, b)
        assert box_a == box_b
    with pytest.raises(ValueError, match="RGB"):
        qio.zoom_window(Image.new("L", (200, 200)), 0)


def test_sample_picks_native_pixels_of_a_box_one_in_k_rows_and_columns(tmp_path):
    arr = coord_image(457, 300)  # each pixel holds its own x (R) and y (G)
    out = qio.load_image(save(Image.fromarray(arr), tmp_path / "s.png"))
    box = (0.25, 0.5, 1.0, 1.0)  # x 114..457, y 150..300
    np.testing.assert_array_equal(out.sample(box), arr[150:300, 114:457])  # small enough: every pixel
    picked = out.sample(box, max_pixels=1_000)  # one in 7 rows and columns, picked as they are
    px = picked.astype(int)
    xs, ys = px[0, :, 0] + 256 * (px[0, :, 2] // 16), px[:, 0, 1] + 256 * (px[:, 0, 2] % 16)
    assert picked.shape == (22, 49, 3) and 114 <= xs.min() and xs.max() < 457 and 150 <= ys.min()
    assert set(np.diff(xs)) <= {6, 7, 8} and set(np.diff(ys)) <= {6, 7, 8}
    np.testing.assert_array_equal(picked, arr[np.ix_(ys, xs)])
    np.testing.assert_array_equal(qio.load_image(arr).sample(box, max_pixels=1_000), picked)  # array = Pillow
    assert out.sample((0.999, 0.999, 1.0, 1.0)).shape == (1, 1, 3)  # never empty


def test_caller_pil_image_is_not_kept(tmp_path):
    img = Image.new("RGB", (64, 64), (10, 20, 30))
    out = qio.load_image(img)
    img.paste((255, 255, 255), (0, 0, 64, 64))  # the caller keeps using their image
    assert tuple(out.pixels[0, 0]) == (10, 20, 30)


@pytest.mark.parametrize("fmt", ["TIFF", "WEBP"])
def test_formats_outside_pillow_preinit_still_load(tmp_path, fmt):
    arr = np.full((40, 50, 3), 90, np.uint8)
    path = save(Image.fromarray(arr), tmp_path / "a.bin", fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert qio.load_image(path).original_size == (50, 40)


# --- views ----------------------------------------------------------------------------------------
def test_glance_shape_dtype_and_consistency(tmp_path):
    ref = (np.random.default_rng(2).random((300, 500, 3)) * 255).astype(np.uint8)
    out = qio.load_image(save(Image.fromarray(ref), tmp_path / "g.png"))
    assert out.glance.shape == (GLANCE_SIZE, GLANCE_SIZE, 3) and out.glance.dtype == np.uint8
    np.testing.assert_array_equal(out.glance, qio.glance_view(out.pixels))  # training == runtime
    np.testing.assert_array_equal(qio.glance_view(ref), qio.glance_view(ref))  # pure
    flat = np.full((10, 1000, 3), 77, np.uint8)
    assert (qio.glance_view(flat) == 77).all()
    with pytest.raises(ValueError):
        qio.glance_view(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("size", [(4000, 3000), (1001, 777), (513, 2049), (256, 256), (300, 20)])
def test_glance_is_pillow_reducing_gap_resize_and_thumbnail_keeps_aspect(size):
    img = Image.fromarray((np.random.default_rng(4).random((size[1], size[0], 3)) * 255).astype(np.uint8))
    out = qio.load_image(img)
    expected = np.array(img.resize((GLANCE_SIZE, GLANCE_SIZE), Image.BILINEAR, reducing_gap=2.0))
    np.testing.assert_array_equal(out.glance, expected)  # the view the critic was trained on
    thumb = out.thumbnail(320)
    scale = min(1.0, 320 / max(size))
    assert thumb.size == (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
    direct = np.array(img.resize(thumb.size, Image.BILINEAR), dtype=float)
    assert np.abs(np.array(thumb, dtype=float) - direct).mean() < 12  # same picture, resampled differently


def test_glance_only_load_decodes_a_jpeg_small_and_keeps_its_size(tmp_path):
    ys, xs = np.mgrid[0:1200, 0:1600]
    smooth = np.stack([xs * 255 // 1600, ys * 255 // 1200, (xs + ys) * 255 // 2800], -1).astype(np.uint8)
    path = save(Image.fromarray(smooth), tmp_path / "big.jpg", quality=95, exif=exif_bytes(6))
    exact = qio.load_image(path)
    quick = qio.load_image(path, glance_only=True)
    assert exact.native and exact.original_size == (1200, 1600)  # orientation 6: turned upright
    assert not quick.native and quick.original_size == exact.original_size  # the photo's size, not the decode's
    assert quick.full.size == (300, 400)  # DCT-scaled by 4: the smallest decode that still covers the glance
    assert quick.glance.shape == exact.glance.shape and quick.glance.dtype == np.uint8
    assert np.abs(quick.glance.astype(int) - exact.glance).mean() < 3  # the same view, orientation honoured
    corner = quick.sample((0.0, 0.0, 0.25, 0.25))  # boxes map onto the reduced decode
    assert corner.shape == (100, 75, 3)
    assert np.abs(corner.astype(int).mean((0, 1)) - exact.sample((0.0, 0.0, 0.25, 0.25)).mean((0, 1))).max() < 3
    assert quick.thumbnail(320).size == exact.thumbnail(320).size


def test_glance_only_load_of_a_small_jpeg_or_a_png_is_a_full_one(tmp_path):
    img = Image.fromarray(coord_image(300, 200))
    for path in (save(img, tmp_path / "small.jpg", quality=95), save(img, tmp_path / "big.png")):
        quick = qio.load_image(path, glance_only=True)
        assert quick.native and quick.original_size == (300, 200)


def coord_image(w: int, h: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return np.stack([xs % 256, ys % 256, (xs // 256) * 16 + ys // 256], -1).astype(np.uint8)


def test_zoom_window_centre_and_clamping():
    img = coord_image(300, 200)
    cases = {0: (0, 0), GRID - 1: (172, 0), N_CELLS - GRID: (0, 72), N_CELLS - 1: (172, 72),
             GRID + 1: (49, 11)}  # cell 5: centre (112.5, 75) -> x0 = 49, y0 = 11
    for cell, (x0, y0) in cases.items():
        window, box = qio.zoom_window(img, cell)
        assert box == (x0, y0, x0 + ZOOM_SIZE, y0 + ZOOM_SIZE), (cell, box)
        np.testing.assert_array_equal(window, img[y0:y0 + ZOOM_SIZE, x0:x0 + ZOOM_SIZE])
        assert window.flags.c_contiguous and window.flags.owndata


def test_zoom_window_exactly_zoom_size_and_small_images():
    img = coord_image(ZOOM_SIZE, ZOOM_SIZE)
    for cell in range(N_CELLS):
        window, box = qio.zoom_window(img, cell)
        assert box == (0, 0, ZOOM_SIZE, ZOOM_SIZE)
        np.testing.assert_array_equal(window, img)

    small = coord_image(40, 20)  # upscaled x6.4 to 256 x 128 first
    left, box_l = qio.zoom_window(small, 0)
    right, box_r = qio.zoom_window(small, N_CELLS - 1)
    assert left.shape == right.shape == (ZOOM_SIZE, ZOOM_SIZE, 3)
    assert box_l == (0, 0, 20, 20) and box_r == (20, 0, 40, 20)
    assert left[:, :, 0].mean() < right[:, :, 0].mean()  # x coordinate channel: left < right

    with pytest.raises(ValueError):
        qio.zoom_window(img, N_CELLS)


def test_import_does_not_pull_torch():
    code = "import sys, qds_lite.io; sys.exit('torch' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0
