"""HEIF/AVIF and camera RAW input, decided by content (qds_lite.io + qds_lite.raw_preview).

The DNGs are built here, at test time, with a small TIFF writer (LibRaw accepts them). Other RAW
formats cannot be made without a camera, so their sniffing and the preview path are checked with a
stand-in ``rawpy`` module. data/formats/rot6.heic (680 bytes) was written by pillow-heif 1.8.1:
``pillow_heif.from_pillow(Image.fromarray(reference())).save(f, quality=95, exif=exif_bytes(6))``
(a 64x48 picture stored with a 90-degree ``irot``), so the HEIF reader is tested without an encoder.
"""

from __future__ import annotations

import importlib.util
import io
import os
import struct
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin, features

from qds_lite import io as qio
from qds_lite import raw_preview
from qds_lite.errors import ImageLoadError

from .test_io import STORED, exif_bytes, reference

FORMATS = Path(__file__).parent / "data" / "formats"
HAVE_HEIF = any(importlib.util.find_spec(m) is not None for m in ("pi_heif", "pillow_heif"))
needs_heif = pytest.mark.skipif(not HAVE_HEIF, reason="heif extra (pi-heif or pillow-heif) not installed")
HEIF_HINT = "HEIF image needs the heif extra (pip install 'qds-lite[heif]')"
RAW_HINT = "camera RAW file needs the raw extra (pip install 'qds-lite[raw]')"


def load_err(source, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        qio.load_image(source, **kw)
    return str(info.value)


def close_to(got: np.ndarray, want: np.ndarray, mean: float, peak: int) -> None:
    assert got.shape == want.shape
    diff = np.abs(got.astype(int) - want)
    assert diff.mean() <= mean and diff.max() <= peak, (diff.mean(), diff.max())


def jpeg_bytes(a: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "JPEG", quality=100, subsampling=0, **kw)
    data = buf.getvalue()
    if kw.get("exif") and data[2:4] == b"\xff\xe0":  # drop JFIF's APP0: EXIF first, as cameras write it
        data = data[:2] + data[4 + struct.unpack(">H", data[4:6])[0]:]
    return data


# --- a tiny TIFF/DNG writer -----------------------------------------------------------------------
_TYPES = {1: "B", 3: "H", 4: "I", 5: "II", 10: "ii"}  # BYTE, SHORT, LONG, RATIONAL, SRATIONAL; 2 = ASCII


class Tiff:
    """Blobs and IFDs appended in order; ``ifd`` takes (tag, type, values or bytes) entries."""

    def __init__(self, bo: str = "<") -> None:
        self.bo = bo
        self.buf = bytearray((b"II*\0" if bo == "<" else b"MM\0*") + bytes(4))

    def blob(self, data: bytes) -> int:
        self.buf += bytes(len(self.buf) % 2)
        off = len(self.buf)
        self.buf += data
        return off

    def ifd(self, entries: list[tuple[int, int, list | bytes]], first: bool = False) -> int:
        packed = []
        for tag, typ, values in sorted(entries):
            raw = values if isinstance(values, bytes) else b"".join(
                struct.pack(self.bo + _TYPES[typ], *(v if isinstance(v, tuple) else (v,))) for v in values)
            packed.append((tag, typ, len(values), raw, self.blob(raw) if len(raw) > 4 else None))
        off = self.blob(struct.pack(self.bo + "H", len(packed)))
        for tag, typ, count, raw, at in packed:
            value = struct.pack(self.bo + "I", at) if at is not None else raw.ljust(4, b"\0")
            self.buf += struct.pack(self.bo + "HHI", tag, typ, count) + value
        self.buf += bytes(4)  # no next IFD
        if first:
            struct.pack_into(self.bo + "I", self.buf, 4, off)
        return off


IDENTITY = [(1, 1), (0, 1), (0, 1), (0, 1), (1, 1), (0, 1), (0, 1), (0, 1), (1, 1)]


def cfa_ifd(t: Tiff, subfile: int = 0) -> list:
    w, h = 64, 48
    at = t.blob((np.arange(w * h).reshape(h, w) * 7 % 4000 + 100).astype(t.bo + "u2").tobytes())
    return [(254, 4, [subfile]), (256, 4, [w]), (257, 4, [h]), (258, 3, [16]), (259, 3, [1]), (262, 3, [32803]),
            (273, 4, [at]), (277, 3, [1]), (278, 4, [h]), (279, 4, [w * h * 2]), (33421, 3, [2, 2]),
            (33422, 1, [0, 1, 1, 2]), (50717, 4, [4095])]


def dng(preview: np.ndarray | None, orientation: int = 1, jpeg: bool = True, jpeg_exif: bytes | None = None) -> bytes:
    """A DNG 1.4: IFD0 is the preview (JPEG or uncompressed RGB), its SubIFD a 64x48 16-bit Bayer CFA."""
    t = Tiff()
    tags = [(271, 2, b"Canon\0"), (272, 2, b"Canon EOS 5D\0"), (274, 3, [orientation]), (50706, 1, [1, 4, 0, 0]),
            (50707, 1, [1, 1, 0, 0]), (50708, 2, b"Test camera\0"), (50721, 10, IDENTITY)]
    if preview is None:  # the CFA data in IFD0 itself, nothing else
        t.ifd(cfa_ifd(t) + tags, first=True)
        return bytes(t.buf)
    sub = t.ifd(cfa_ifd(t))
    h, w = preview.shape[:2]
    if jpeg:
        data = jpeg_bytes(preview, **({"exif": jpeg_exif} if jpeg_exif else {}))
        image = [(259, 3, [7]), (262, 3, [6])]
    else:
        data = preview.tobytes()
        image = [(259, 3, [1]), (262, 3, [2])]
    image += [(254, 4, [1]), (256, 4, [w]), (257, 4, [h]), (258, 3, [8, 8, 8]), (273, 4, [t.blob(data)]),
              (277, 3, [3]), (278, 4, [h]), (279, 4, [len(data)]), (330, 4, [sub])]
    t.ifd(image + tags, first=True)
    return bytes(t.buf)


def tiff(mode: str, make: str | None = None) -> tuple[bytes, np.ndarray]:
    """A plain TIFF written by Pillow, and the RGB pixels it should load as."""
    ref = reference()
    grey16 = ref[:, :, 0].astype(np.uint16) * 257
    img = Image.fromarray(grey16) if mode == "I;16" else Image.fromarray(ref).convert(mode)
    info = TiffImagePlugin.ImageFileDirectory_v2()
    if make:
        info[271], info[272] = make, "D850"
    buf = io.BytesIO()
    img.save(buf, "TIFF", tiffinfo=info)
    grey = np.asarray(img) if mode == "L" else ref[:, :, 0]
    want = ref if mode == "RGB" else np.repeat(grey[:, :, None], 3, axis=2)
    return buf.getvalue(), want


# --- sniffing -------------------------------------------------------------------------------------
def ftyp(major: bytes, *compatible: bytes) -> bytes:
    box = major + bytes(4) + b"".join(compatible)
    return struct.pack(">I", 8 + len(box)) + b"ftyp" + box + bytes(64)


@pytest.mark.parametrize("data, kind", [
    (ftyp(b"heic", b"mif1", b"heic"), "heif"),
    (ftyp(b"mif1", b"heic"), "heif"),
    (ftyp(b"heix", b"mif1"), "heif"),
    (ftyp(b"msf1", b"iso8"), "heif"),
    (ftyp(b"avif", b"mif1", b"miaf"), "avif"),
    (ftyp(b"mif1", b"avif", b"miaf"), "avif"),
    (ftyp(b"avis", b"msf1"), "avif"),
    (ftyp(b"crx ", b"isom"), "raw"),
    (ftyp(b"isom", b"mp42"), None),  # a video
    (b"FUJIFILMCCD-RAW 0201FF393501" + bytes(64), "raw"),
    (b"IIRO\x08\0\0\0" + bytes(64), "raw"),
    (b"MMOR\0\0\0\x08" + bytes(64), "raw"),
    (b"IIU\0\x08\0\0\0" + bytes(64), "raw"),
    (b"II\x1a\0\0\0HEAPCCDR" + bytes(64), "raw"),
    (b"II*\0\x10\0\0\0CR\x02\0" + bytes(64), "raw"),  # CR2
    (b"\xff\xd8\xff\xe0\0\x10JFIF\0" + bytes(64), None),
    (b"\x89PNG\r\n\x1a\n" + bytes(64), None),
])
def test_container_kind(data, kind):
    assert qio._container_kind(data) == kind


def test_tiff_structure_decides_raw():
    assert not raw_preview.tiff_is_raw(tiff("RGB", make="NIKON CORPORATION")[0])
    assert not raw_preview.tiff_is_raw(tiff("I;16")[0])
    assert raw_preview.tiff_is_raw(dng(reference()))
    for bo in "<>":  # NEF/ARW-like: a thumbnail IFD0, the CFA data in a SubIFD, no DNG tags
        t = Tiff(bo)
        t.ifd([(256, 4, [8]), (257, 4, [8]), (262, 3, [2]), (330, 4, [t.ifd(cfa_ifd(t))])], first=True)
        assert raw_preview.tiff_is_raw(bytes(t.buf))
    t = Tiff()  # PEF-like: Pentax compression in IFD0, photometric not CFA
    t.ifd([(256, 4, [8]), (257, 4, [8]), (259, 3, [65535]), (262, 3, [2])], first=True)
    assert raw_preview.tiff_is_raw(bytes(t.buf))


def test_tiff_structure_check_survives_garbage():
    rng = np.random.default_rng(0)
    good = dng(reference())
    for i in range(300):
        data = bytearray(good[: rng.integers(4, len(good))])
        for at in rng.integers(0, len(data), 8):
            data[at] = rng.integers(0, 256)
        raw_preview.tiff_is_raw(b"MM\0*" + bytes(data[4:]) if i % 2 else bytes(data))  # never raises
    t = Tiff()  # an IFD pointing at itself, and SubIFDs pointing back at IFD0
    off = t.ifd([(256, 4, [8]), (330, 4, [8, 8])], first=True)
    struct.pack_into("<I", t.buf, len(t.buf) - 4, off)
    assert not raw_preview.tiff_is_raw(bytes(t.buf))


def test_jpeg_and_plain_tiff_import_no_extra():
    code = ("import sys, io; from PIL import Image; import qds_lite.io as q\n"
            "for fmt in ('JPEG', 'PNG', 'TIFF'):\n"
            "    b = io.BytesIO(); Image.new('RGB', (40, 30)).save(b, fmt); q.load_image(b.getvalue())\n"
            "sys.exit(sorted(m for m in ('rawpy', 'pi_heif', 'pillow_heif') if m in sys.modules) or 0)")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, check=False, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- HEIF and AVIF --------------------------------------------------------------------------------
@needs_heif
def test_heic_loads_upright_whatever_its_name(tmp_path):
    want = STORED[8](reference())  # stored upright with irot 90: shown turned clockwise
    for name in ("photo.heic", "photo.jpg"):
        path = tmp_path / name
        path.write_bytes((FORMATS / "rot6.heic").read_bytes())
        out = qio.load_image(path)
        assert out.name == name and out.original_size == (48, 64)
        close_to(out.pixels, want, mean=3, peak=16)
        assert qio.load_image(path, glance_only=True).glance.shape == out.glance.shape


def test_heic_written_by_pillow_heif():
    pillow_heif = pytest.importorskip("pillow_heif")
    ref = reference(96, 64)
    for orientation in (1, 6):
        buf = io.BytesIO()
        pillow_heif.from_pillow(Image.fromarray(ref)).save(buf, quality=95, exif=exif_bytes(orientation))
        out = qio.load_image(buf.getvalue())
        close_to(out.pixels, ref if orientation == 1 else STORED[8](ref), mean=3, peak=16)


@pytest.mark.skipif(not features.check("avif"), reason="Pillow built without AVIF")
def test_avif(tmp_path):
    ref = reference()
    path = tmp_path / "photo.png"  # content decides
    Image.fromarray(ref).save(path, "AVIF", quality=95)
    close_to(qio.load_image(path).pixels, ref, mean=4, peak=32)


def test_heif_without_the_extra_names_it(tmp_path, monkeypatch):
    monkeypatch.setattr(qio, "_heif_registered", False)
    for module in ("pi_heif", "pillow_heif"):
        monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError
    path = tmp_path / "photo.heic"
    path.write_bytes((FORMATS / "rot6.heic").read_bytes())
    assert load_err(path) == f"photo.heic: {HEIF_HINT}"


@needs_heif
def test_truncated_heic(tmp_path):
    path = tmp_path / "cut.heic"
    path.write_bytes((FORMATS / "rot6.heic").read_bytes()[:300])
    assert load_err(path) == "cut.heic: corrupt or truncated HEIF data"


def test_mp4_is_still_not_an_image(tmp_path):
    path = tmp_path / "clip.jpg"
    path.write_bytes(ftyp(b"isom", b"mp42"))
    assert "not an image file" in load_err(path)


# --- camera RAW through LibRaw (real DNGs) --------------------------------------------------------
@pytest.mark.parametrize("jpeg", [True, False], ids=["jpeg-preview", "bitmap-preview"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_dng_preview_is_oriented_by_the_raw(tmp_path, orientation, jpeg):
    pytest.importorskip("rawpy")
    ref = reference()
    path = tmp_path / "IMG_0001.DNG"
    path.write_bytes(dng(np.ascontiguousarray(STORED[orientation](ref)), orientation, jpeg=jpeg))
    out = qio.load_image(path)
    assert out.name == "IMG_0001.DNG" and out.original_size == (64, 48)
    close_to(out.pixels, ref, mean=1, peak=8 if jpeg else 0)
    assert qio.load_image(path, glance_only=True).glance.shape == out.glance.shape


@pytest.mark.parametrize("own", [None, 3], ids=["no-orientation-tag", "orientation-3"])
def test_preview_with_its_own_exif(own):
    """LibRaw passes a preview that starts with EXIF through as is (one without gets LibRaw's EXIF,
    orientation included): the RAW's flag applies unless that EXIF has an orientation of its own."""
    pytest.importorskip("rawpy")
    ref = reference()
    exif = Image.Exif()
    exif[0x010F] = "Canon"
    if own:
        exif[0x0112] = own
    data = dng(np.ascontiguousarray(STORED[own or 6](ref)), orientation=6, jpeg_exif=exif.tobytes())
    close_to(qio.load_image(data).pixels, ref, mean=1, peak=8)


def test_dng_without_preview(tmp_path):
    pytest.importorskip("rawpy")
    path = tmp_path / "x.dng"
    path.write_bytes(dng(None))
    assert load_err(path) == "x.dng: camera RAW without an embedded preview"


def test_bomb_guard_applies_to_the_preview():
    pytest.importorskip("rawpy")
    assert "image too large (64 x 48 = 3072 pixels > limit 3000)" in load_err(dng(reference()), max_pixels=3000)


def test_garbage_with_a_raw_signature(tmp_path):
    pytest.importorskip("rawpy")
    path = tmp_path / "x.raf"
    path.write_bytes(b"FUJIFILMCCD-RAW 0201FF393501" + bytes(600))
    assert load_err(path).startswith("x.raf: ")


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16"])
def test_plain_tiff_goes_to_pillow_even_with_rawpy(tmp_path, mode, monkeypatch):
    fake = types.ModuleType("rawpy")
    fake.imread = lambda *a, **k: pytest.fail("LibRaw was asked about a plain TIFF")
    monkeypatch.setitem(sys.modules, "rawpy", fake)
    data, want = tiff(mode, make="NIKON CORPORATION")  # LibRaw itself would take the 16-bit one as RAW
    path = tmp_path / "scan.nef"
    path.write_bytes(data)
    np.testing.assert_array_equal(qio.load_image(path).pixels, want)


# --- without the raw extra, and other RAW formats through a stand-in rawpy --------------------------
@pytest.mark.parametrize("name, data", [
    ("x.nef", dng(reference())),
    ("x.raf", b"FUJIFILMCCD-RAW 0201FF393501" + bytes(64)),
    ("x.cr3", ftyp(b"crx ", b"isom")),
    ("x.orf", b"IIRO\x08\0\0\0" + bytes(64)),
    ("x.rw2", b"IIU\0\x08\0\0\0" + bytes(64)),
    ("x.crw", b"II\x1a\0\0\0HEAPCCDR" + bytes(64)),
])
def test_raw_without_the_extra_names_it(tmp_path, monkeypatch, name, data):
    monkeypatch.setitem(sys.modules, "rawpy", None)
    path = tmp_path / name
    path.write_bytes(data)
    assert load_err(path) == f"{name}: {RAW_HINT}"


class _LibRawError(Exception):
    pass


def fake_rawpy(thumb=None, flip: int = 0, error: str | None = None) -> types.ModuleType:
    """Just what raw_preview uses of rawpy: imread -> context manager with sizes.flip and extract_thumb."""
    m = types.ModuleType("rawpy")
    for n in ("LibRawError", "LibRawFileUnsupportedError", "LibRawTooBigError", "LibRawUnsufficientMemoryError",
              "LibRawMemPoolOverflowError", "LibRawNoThumbnailError", "LibRawUnsupportedThumbnailError"):
        setattr(m, n, type(n, (_LibRawError,), {}))
    m.ThumbFormat = types.SimpleNamespace(JPEG=1, BITMAP=2)

    class Raw:
        sizes = types.SimpleNamespace(flip=flip)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def extract_thumb(self):
            if error is not None:
                raise getattr(m, error)()
            return thumb

    m.imread = lambda f: Raw()
    return m


RAW_HEADERS = [ftyp(b"crx ", b"isom"), b"FUJIFILMCCD-RAW 0201FF393501", b"IIRS\x08\0\0\0", b"MMOR\0\0\0\x08",
               b"IIU\0\x08\0\0\0", b"II\x1a\0\0\0HEAPCCDR"]


@pytest.mark.parametrize("head", RAW_HEADERS)
def test_other_raw_formats_use_the_preview(monkeypatch, head):
    ref = reference()
    thumb = types.SimpleNamespace(format=1, data=jpeg_bytes(np.ascontiguousarray(STORED[6](ref))))
    monkeypatch.setitem(sys.modules, "rawpy", fake_rawpy(thumb, flip=6))
    out = qio.load_image(head + bytes(64))
    close_to(out.pixels, ref, mean=1, peak=8)


def test_sixteen_bit_bitmap_preview(monkeypatch):
    ref = reference()
    thumb = types.SimpleNamespace(format=2, data=ref.astype(np.uint16) * 257)
    monkeypatch.setitem(sys.modules, "rawpy", fake_rawpy(thumb))
    np.testing.assert_array_equal(qio.load_image(RAW_HEADERS[1] + bytes(64)).pixels, ref)


@pytest.mark.parametrize("error, message", [
    ("LibRawNoThumbnailError", "x.cr3: camera RAW without an embedded preview"),
    ("LibRawUnsupportedThumbnailError", "x.cr3: camera RAW without an embedded preview"),
    ("LibRawFileUnsupportedError", "x.cr3: camera RAW format not supported by LibRaw"),
    ("LibRawTooBigError", "x.cr3: not enough memory to read the camera RAW file"),
    ("LibRawError", "x.cr3: corrupt camera RAW data (LibRawError)"),
])
def test_libraw_errors(tmp_path, monkeypatch, error, message):
    monkeypatch.setitem(sys.modules, "rawpy", fake_rawpy(error=error))
    path = tmp_path / "x.cr3"
    path.write_bytes(RAW_HEADERS[0])
    assert load_err(path) == message


def test_corrupt_jpeg_preview(monkeypatch):
    thumb = types.SimpleNamespace(format=1, data=b"\xff\xd8\xff" + bytes(40))
    monkeypatch.setitem(sys.modules, "rawpy", fake_rawpy(thumb))
    assert load_err(RAW_HEADERS[1] + bytes(64)).startswith("<bytes>: ")
