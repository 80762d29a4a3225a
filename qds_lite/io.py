"""Turn whatever the user hands us into oriented sRGB uint8 pixels, or one clear ImageLoadError.

Also defines the two views the critic looks at: the glance (whole image, squashed to a square) and
the zoom (a window of native pixels around a grid cell). Training uses the same two functions.

Only numpy, Pillow and the standard library are imported here (never torch); the optional HEIF
reader (pi-heif or pillow-heif) and rawpy are imported only when a file's content needs them.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import math
import os
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
from PIL import ExifTags, Image, ImageOps

from . import raw_preview
from .errors import ImageLoadError, QdsError
from .protocol import GLANCE_SIZE, N_CELLS, ZOOM_SIZE, cell_box
from .refine_ops import box_pixels

try:  # LittleCMS is optional in some Pillow builds; without it ICC profiles are ignored.
    from PIL import ImageCms
except ImportError:  # pragma: no cover - depends on the Pillow build
    ImageCms = None  # type: ignore[assignment]

MAX_PIXELS_DEFAULT = 200_000_000  # refuse larger images before decoding; env QDS_MAX_PIXELS overrides

_STRIP_PIXELS = 4_000_000  # pixels copied out of Pillow per strip (bounds the extra memory)
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N", "I"}
_STORED_SIZE = "qds_stored_size"  # Image.info key: a draft-decoded image's size in the file
_REFUSED_FORMATS = {"EPS"}  # Pillow decodes these by running an external program (Ghostscript)
# Pillow's plugins raise any of these on malformed input, depending on the format and the damage.
_DECODE_ERRORS = (
    OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
    ZeroDivisionError, NotImplementedError,
)


@dataclass(frozen=True)
class LoadedImage:
    name: str  # display name (file name, or "<bytes>", "<array>", "<PIL.Image>")
    full: Image.Image | np.ndarray  # full-resolution oriented RGB: a Pillow "RGB" image or HxWx3 uint8 array
    original_size: tuple[int, int]  # (width, height) after orientation
    glance: np.ndarray  # GLANCE_SIZE x GLANCE_SIZE x 3 uint8 view of the whole image
    # the glance's intermediate integer reduction of ``full`` (None for arrays), reused by thumbnail()
    reduced: Image.Image | None = field(default=None, repr=False, compare=False)
    # what loading took (decode, orientation, colour conversion, glance): reported in a score's timings even
    # when the image was loaded ahead in another thread (Critic.score_many, the CLI)
    load_ms: float = field(default=0.0, compare=False)
    # False when ``full`` is a reduced decode (load_image(glance_only=True)): enough for a glance, not for zooms
    native: bool = True

    @cached_property
    def pixels(self) -> np.ndarray:
        """Full-resolution oriented RGB uint8, HxWx3, C-contiguous.

        Made on first use only: scoring crops its zooms straight from ``full``, which spares a
        12 MP photo a 36 MB copy (about a fifth of the whole ``qds score`` run).
        """
        return self.full if isinstance(self.full, np.ndarray) else _to_array(self.full)

    def sample(self, box: tuple[float, float, float, float], max_pixels: int = 250_000) -> np.ndarray:
        """Native pixels of the fractional ``box`` (x0, y0, x1, y1), one in every k rows and columns so that
        at most about ``max_pixels`` remain (HxWx3 uint8; picked, not averaged): shares of pixels measured
        on it (how many are blown white) are those of the full resolution, which a downscaled view would
        average away. (Of a ``glance_only`` load: pixels of its reduced decode.)"""
        w, h = self.full.size if isinstance(self.full, Image.Image) else (self.full.shape[1], self.full.shape[0])
        x0, y0, x1, y1 = box_pixels((h, w), box)
        x0, y0 = min(x0, w - 1), min(y0, h - 1)
        x1, y1 = max(x0 + 1, x1), max(y0 + 1, y1)  # never empty
        step = max(1, math.isqrt((x1 - x0) * (y1 - y0) // max_pixels))
        size = (-(-(x1 - x0) // step), -(-(y1 - y0) // step))
        if isinstance(self.full, np.ndarray):  # the pixels Pillow's nearest-neighbour resize picks below
            cols = x0 + ((np.arange(size[0]) + 0.5) * ((x1 - x0) / size[0])).astype(np.intp)
            rows = y0 + ((np.arange(size[1]) + 0.5) * ((y1 - y0) / size[1])).astype(np.intp)
            return self.full[np.ix_(rows, cols)]
        # reads only the pixels it keeps: no copy of the box at full resolution (a whole 12 MP photo: 36 MB)
        return np.asarray(self.full.resize(size, Image.NEAREST, box=(x0, y0, x1, y1)))

    def thumbnail(self, long_side: int) -> Image.Image:
        """The whole image at ``long_side`` px (aspect kept), resized from the glance's intermediate reduction
        of the full image where that is large enough, so a thumbnail costs no second pass over 12 MP."""
        w, h = self.original_size
        s = min(1.0, long_side / max(w, h))
        size = (max(1, round(w * s)), max(1, round(h * s)))
        base = self.reduced
        if base is None or base.width < size[0] or base.height < size[1]:
            base = self.full if isinstance(self.full, Image.Image) else Image.fromarray(self.full)
        return base.resize(size, Image.BILINEAR, reducing_gap=2.0)


Source = str | os.PathLike | bytes | bytearray | memoryview | Image.Image | np.ndarray


def load_image(source: Source, *, max_pixels: int | None = None, glance_only: bool = False) -> LoadedImage:
    """Load ``source`` as oriented sRGB RGB uint8 pixels plus its glance view.

    Files and bytes are identified by content, decoded once at full resolution (zooms need native
    pixels), EXIF-oriented, converted to sRGB when they carry an ICC profile, and flattened onto
    white when they have alpha. Images above ``max_pixels`` (default: env ``QDS_MAX_PIXELS`` or
    ``MAX_PIXELS_DEFAULT``) are refused before decoding. An ndarray input is used as is (no copy
    when it is already C-contiguous HxWx3 uint8, so do not modify it while the result is in use).

    ``glance_only``: for a critic that will not zoom (``zooms=0``): a JPEG is decoded at the smallest
    DCT scale (1/2 to 1/8) that still covers the glance, a quarter of the time of a full decode for a
    12 MP photo (README, *Triage*); ``full`` is then that reduced image, ``native`` False, and
    ``original_size`` still the photo's. Other formats decode in full as usual.
    """
    t0 = time.perf_counter()
    loaded = _load(source, max_pixels, glance_only)
    return dataclasses.replace(loaded, load_ms=(time.perf_counter() - t0) * 1e3)


def _load(source: Source, max_pixels: int | None, glance_only: bool = False) -> LoadedImage:
    if isinstance(source, np.ndarray):
        return _from_array(source)
    if isinstance(source, Image.Image):
        name, img, owned = "<PIL.Image>", source, False
        _check_size(img.size, name, _pixel_limit(max_pixels))
        _pillow_call(name, img, img.load)
    else:
        name, data = _read_source(source)
        img, owned = _open(data, name, _pixel_limit(max_pixels), draft=glance_only), True
    if not owned:  # never keep a reference to the caller's image: they may change it later
        img = img.copy()
    stored = img.info.get(_STORED_SIZE, img.size)  # the file's own size, before a draft decode reduced it
    turned = _orientation(img) >= 5  # EXIF orientations 5-8 swap width and height (read before orienting)
    img = _to_srgb(img, name, owned=True)
    glance, reduced = _glance_and_reduced(img)
    size = tuple(stored[::-1]) if turned else tuple(stored)  # the photo's own size, oriented
    return LoadedImage(name, img, size, glance, reduced, native=img.size == size)


def glance_view(pixels: np.ndarray) -> np.ndarray:
    """The whole image resized (aspect not kept) to GLANCE_SIZE x GLANCE_SIZE x 3 uint8."""
    return _glance_of(Image.fromarray(_check_rgb(pixels)))


def zoom_window(pixels: np.ndarray | Image.Image, cell: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The ZOOM_SIZE x ZOOM_SIZE window of native pixels centred on grid cell ``cell``.

    ``pixels`` is an HxWx3 uint8 array or a Pillow RGB image (the same window either way).
    The window is shifted as needed to lie inside the image. Returns a C-contiguous copy and its
    box (x0, y0, x1, y1) in ``pixels`` coordinates. An image smaller than ZOOM_SIZE in either
    dimension is first upscaled (bicubic, aspect kept) so that its short side is ZOOM_SIZE; the
    returned box then maps the window back onto the original image (rounded outwards), so it is
    smaller than ZOOM_SIZE there.
    """
    if isinstance(pixels, Image.Image):
        if pixels.mode != "RGB":
            raise ValueError(f"expected an RGB image, got mode {pixels.mode}")
        w, h = pixels.size
    else:
        pixels = _check_rgb(pixels)
        h, w = pixels.shape[:2]
    if not 0 <= cell < N_CELLS:
        raise ValueError(f"cell must be in 0..{N_CELLS - 1}, got {cell}")
    scale = max(1.0, ZOOM_SIZE / min(h, w))
    view = pixels
    if scale > 1.0:
        small = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
        view = small.resize((max(ZOOM_SIZE, round(w * scale)), max(ZOOM_SIZE, round(h * scale))), Image.BICUBIC)
    vw, vh = view.size if isinstance(view, Image.Image) else (view.shape[1], view.shape[0])
    fx0, fy0, fx1, fy1 = cell_box(cell)
    x0 = min(max(math.floor((fx0 + fx1) / 2 * vw - ZOOM_SIZE / 2 + 0.5), 0), vw - ZOOM_SIZE)
    y0 = min(max(math.floor((fy0 + fy1) / 2 * vh - ZOOM_SIZE / 2 + 0.5), 0), vh - ZOOM_SIZE)
    if isinstance(view, Image.Image):
        window = np.array(view.crop((x0, y0, x0 + ZOOM_SIZE, y0 + ZOOM_SIZE)), dtype=np.uint8, order="C")
    else:
        window = np.array(view[y0:y0 + ZOOM_SIZE, x0:x0 + ZOOM_SIZE], order="C")
    if scale == 1.0:
        return window, (x0, y0, x0 + ZOOM_SIZE, y0 + ZOOM_SIZE)
    sx, sy = w / vw, h / vh
    box = (
        math.floor(x0 * sx), math.floor(y0 * sy),
        min(w, math.ceil((x0 + ZOOM_SIZE) * sx)), min(h, math.ceil((y0 + ZOOM_SIZE) * sy)),
    )
    return window, box


# --- internals ---------------------------------------------------------------------------------
def _pixel_limit(max_pixels: int | None) -> int:
    if max_pixels is not None:
        if max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {max_pixels}")
        return max_pixels
    env = os.environ.get("QDS_MAX_PIXELS")
    if env is None or not env.strip():
        return MAX_PIXELS_DEFAULT
    try:
        limit = int(env)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise QdsError(f"QDS_MAX_PIXELS must be a positive integer, got {env!r}")
    return limit


def _check_size(size: tuple[int, int], name: str, limit: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageLoadError(name, f"empty image ({w} x {h} pixels)")
    if w * h > limit:
        raise ImageLoadError(
            name, f"image too large ({w} x {h} = {w * h} pixels > limit {limit}); set QDS_MAX_PIXELS to raise the limit"
        )


def _read_source(source: str | os.PathLike | bytes | bytearray | memoryview) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, data = "<bytes>", bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = os.fsdecode(source)
        name = os.path.basename(path.rstrip("/" + os.sep)) or path
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ImageLoadError(name, "file not found") from None
        except PermissionError:
            raise ImageLoadError(name, "permission denied") from None
        except IsADirectoryError:
            raise ImageLoadError(name, "is a directory") from None
        except OSError as e:
            raise ImageLoadError(name, f"cannot read file ({e.strerror or e})") from e
    else:
        raise TypeError(f"cannot load an image from {type(source).__name__}")
    if not data:
        raise ImageLoadError(name, "empty file")
    return name, data


_bomb_lock = threading.Lock()
_bomb_depth = 0
_bomb_saved: int | None = None


@contextmanager
def _pillow_bomb_check_off() -> Iterator[None]:
    """Switch off Pillow's global MAX_IMAGE_PIXELS check while we decode: our own limit decides.

    Reference-counted so that concurrent loads in threads neither serialise nor restore early.
    """
    global _bomb_depth, _bomb_saved
    with _bomb_lock:
        if _bomb_depth == 0:
            _bomb_saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        _bomb_depth += 1
    try:
        yield
    finally:
        with _bomb_lock:
            _bomb_depth -= 1
            if _bomb_depth == 0:
                Image.MAX_IMAGE_PIXELS = _bomb_saved


def _pillow_call(name: str, img: Image.Image | None, fn, *args, **kwargs):
    """Run a Pillow call, translating what it raises on bad input into ImageLoadError."""
    fmt = getattr(img, "format", None) or "image"
    try:
        with _pillow_bomb_check_off():
            return fn(*args, **kwargs)
    except ImageLoadError:
        raise
    except Image.UnidentifiedImageError:
        raise ImageLoadError(name, "not an image file (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageLoadError(name, f"image too large ({e}); set QDS_MAX_PIXELS to raise the limit") from e
    except MemoryError:
        size = f" ({img.size[0]} x {img.size[1]})" if img is not None else ""
        raise ImageLoadError(name, f"not enough memory to decode the image{size}") from None
    except _DECODE_ERRORS as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        if "truncat" in detail.lower():
            raise ImageLoadError(name, f"truncated {fmt} data") from e
        raise ImageLoadError(name, f"corrupt {fmt} data ({detail})") from e


def _open(data: bytes, name: str, limit: int, draft: bool = False) -> Image.Image:
    """Identify by content, refuse oversize images from the header, then decode fully (first frame); with
    ``draft``, a JPEG at the smallest DCT scale that still covers the glance (its stored size is then kept in
    ``info[_STORED_SIZE]``)."""
    img = _identify(data, name)
    _check_size(img.size, name, limit)
    if draft:
        stored = img.size
        if _pillow_call(name, img, img.draft, "RGB", (GLANCE_SIZE, GLANCE_SIZE)) is not None:
            img.info[_STORED_SIZE] = stored
    _pillow_call(name, img, img.load)  # full decode now, so truncation shows up here
    return img


def _identify(data: bytes, name: str) -> Image.Image:
    """Image.open by content, trying the common formats before importing every Pillow plugin.

    ``Image.init()`` imports some forty plugin modules (about 0.1 s, a fifth of scoring one photo);
    ``Image.preinit()`` registers only JPEG, PNG, GIF, BMP and PPM, which covers most photos.
    HEIF, AVIF and camera RAW (its embedded preview) are recognised from the first bytes and
    opened directly; plain TIFFs go through Pillow as before.
    """
    kind = _container_kind(data)
    if kind is not None:  # HEIF, AVIF or camera RAW; JPEG, PNG, plain TIFF etc. go on below
        return _identify_container(data, name, kind)
    Image.preinit()
    try:
        with _pillow_bomb_check_off():  # our own limit decides, after this
            return Image.open(io.BytesIO(data), formats=[f for f in Image.ID if f not in _REFUSED_FORMATS])
    except (Image.UnidentifiedImageError, *_DECODE_ERRORS):
        pass  # not one of the common formats, or a damaged one: let the full pass below decide
    Image.init()  # registers every plugin, so Image.ID lists them (and any added by third parties)
    formats = [f for f in Image.ID if f not in _REFUSED_FORMATS]
    return _pillow_call(name, None, Image.open, io.BytesIO(data), formats=formats)


# ISO-BMFF (``ftyp`` box) brands: HEIF still images (HEVC-coded or generic), AVIF, Canon CR3.
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"}
_HEIF_BRANDS = _HEIC_BRANDS | {b"mif1", b"msf1"}
_AVIF_BRANDS = {b"avif", b"avis"}
_CR3_BRAND = b"crx "
HEIF_EXTRA_HINT = "HEIF image needs the heif extra (pip install 'qds-lite[heif]')"
AVIF_PILLOW_HINT = "AVIF image needs Pillow 11.3 or later with AVIF support (pip install -U pillow)"
_heif_lock = threading.Lock()
_heif_registered = False


def _container_kind(data: bytes) -> str | None:
    """'heif', 'avif' or 'raw' from the content; None (cheaply) for everything else, plain TIFF included."""
    if data[4:8] == b"ftyp":
        return _ftyp_kind(data)
    if data[:4] in raw_preview.TIFF_SIGNATURES:
        return "raw" if raw_preview.tiff_is_raw(data) else None
    return "raw" if raw_preview.has_raw_signature(data[:16]) else None


def _ftyp_kind(data: bytes) -> str | None:
    """Classify an ISO-BMFF file by its ``ftyp`` box: major brand first, then the compatible ones."""
    size = struct.unpack(">I", data[:4])[0]
    end = min(max(size, 16), 16 + 4 * 64, len(data))
    major = data[8:12]
    brands = {major, *(data[i:i + 4] for i in range(16, end - 3, 4))}
    if _CR3_BRAND in brands:
        return "raw"
    if major in _AVIF_BRANDS:
        return "avif"
    if brands & _HEIC_BRANDS:
        return "heif"
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heif"
    return None  # a video or other ISO-BMFF file: Pillow decides (and refuses it)


def _identify_container(data: bytes, name: str, kind: str) -> Image.Image:
    """Open a HEIF or AVIF file, or a camera RAW's embedded preview (not decoded yet where possible)."""
    if kind == "raw":
        return _pillow_call(name, None, raw_preview.open_preview, data, name)
    if kind == "avif":
        try:
            from PIL import AvifImagePlugin  # registers the format; Pillow >= 11.3
        except ImportError:
            raise ImageLoadError(name, AVIF_PILLOW_HINT) from None
        if not getattr(AvifImagePlugin, "SUPPORTED", False):
            raise ImageLoadError(name, AVIF_PILLOW_HINT)
        fmt = "AVIF"
    else:
        _register_heif(name)
        fmt = "HEIF"
    return _pillow_call(name, None, _open_as, data, name, fmt)


def _open_as(data: bytes, name: str, fmt: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[fmt])
    except Image.UnidentifiedImageError:  # the plugin could not parse what the ftyp box announced
        raise ImageLoadError(name, f"corrupt or truncated {fmt} data") from None


def _register_heif(name: str) -> None:
    """Register a HEIF opener with Pillow on first use: pi-heif (decoder only), else pillow-heif."""
    global _heif_registered
    with _heif_lock:
        if _heif_registered:
            return
        for module in ("pi_heif", "pillow_heif"):
            try:
                plugin = importlib.import_module(module)
            except ImportError:
                continue
            plugin.register_heif_opener()
            _heif_registered = True
            return
    raise ImageLoadError(name, HEIF_EXTRA_HINT)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:  # unreadable EXIF: the pixels are still fine, show them unrotated
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_srgb(img: Image.Image, name: str, owned: bool) -> Image.Image:
    """Orient, flatten alpha onto white, reduce bit depth and colour-manage to sRGB 8-bit RGB.

    ``owned`` says whether ``img`` may be modified in place (never a caller's PIL image).
    """
    icc = img.info.get("icc_profile")
    if _orientation(img) != 1:
        if owned:
            _pillow_call(name, img, ImageOps.exif_transpose, img, in_place=True)
        else:
            img, owned = _pillow_call(name, img, ImageOps.exif_transpose, img), True
    if img.mode in _SIXTEEN_BIT_MODES or img.mode == "F":
        values, key = np.asarray(img), img.info.get("transparency")
        img, owned = Image.fromarray(_high_depth_to_u8(values, img.mode)), True
        if isinstance(key, int):  # 16-bit PNG tRNS: one grey value is transparent
            img = _on_white(img, Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8)))
    elif img.mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = _convert(img, "RGBA", name)
        img, owned = _on_white(rgba, rgba.getchannel("A")), True
    if icc and img.mode in ("P", "1"):  # a palette's entries are in the profile's space: expand them first
        img, owned = _convert(img, "RGB" if img.mode == "P" else "L", name), True
    if icc and ImageCms is not None and img.mode in ("RGB", "L", "CMYK"):
        transform = _icc_transform(bytes(icc), img.mode)
        if transform is not None:
            img = ImageCms.applyTransform(img, transform, inPlace=owned and img.mode == "RGB") or img
    return img if img.mode == "RGB" else _convert(img, "RGB", name)


def _convert(img: Image.Image, mode: str, name: str) -> Image.Image:
    try:
        return img.convert(mode)
    except ValueError as e:
        raise ImageLoadError(name, f"unsupported pixel mode {img.mode}") from e


def _on_white(img: Image.Image, alpha: Image.Image) -> Image.Image:
    """Composite onto white: what a viewer shows for transparent areas of a photo."""
    out = Image.new("RGB", img.size, (255, 255, 255))
    out.paste(img, mask=alpha)
    return out


def _high_depth_to_u8(a: np.ndarray, mode: str) -> np.ndarray:
    """16-bit (I;16*, and I, read as 0..65535) or float (F) grey -> 8-bit grey.

    16-bit values are scaled by 255/65535 (= /257, rounded), so 65535 -> 255, not clipped.
    Float data whose maximum is <= 1 is taken as 0..1, otherwise as 0..255.
    """
    if mode == "F":
        a = np.nan_to_num(a.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and float(a.max()) <= 1.0:
            a = a * 255.0
        return np.clip(np.rint(a), 0, 255).astype(np.uint8)
    a = np.clip(a, 0, 65535).astype(np.uint32)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


@lru_cache(maxsize=8)
def _icc_transform(icc: bytes, mode: str):
    """Transform from an embedded profile to sRGB, or None when the profile is unusable."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        dst = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
        return ImageCms.buildTransform(src, dst, mode, "RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None  # broken or mismatched profile (e.g. a CMYK profile on RGB data): keep values


def _to_array(img: Image.Image) -> np.ndarray:
    """Copy an RGB image into a fresh HxWx3 array strip by strip (no whole-image bytes copy)."""
    w, h = img.size
    out = np.empty((h, w, 3), np.uint8)
    step = max(1, _STRIP_PIXELS // w)
    for y0 in range(0, h, step):
        y1 = min(h, y0 + step)
        strip = img if (y0, y1) == (0, h) else img.crop((0, y0, w, y1))
        out[y0:y1] = np.frombuffer(strip.tobytes(), np.uint8).reshape(y1 - y0, w, 3)
    return out


def _glance_of(img: Image.Image) -> np.ndarray:
    return _glance_and_reduced(img)[0]


def _glance_and_reduced(img: Image.Image) -> tuple[np.ndarray, Image.Image]:
    """``img.resize((G, G), BILINEAR, reducing_gap=2.0)`` spelled out (bit-identical, a test checks it) so that
    its intermediate integer reduction of the image can be kept and reused for thumbnails."""
    w, h = img.size
    fx, fy = max(1, int(w / GLANCE_SIZE / 2.0)), max(1, int(h / GLANCE_SIZE / 2.0))
    reduced = img.reduce((fx, fy)) if fx > 1 or fy > 1 else img
    small = reduced.resize((GLANCE_SIZE, GLANCE_SIZE), Image.BILINEAR, box=(0, 0, w / fx, h / fy))
    return np.array(small, dtype=np.uint8), reduced


def _check_rgb(pixels: np.ndarray) -> np.ndarray:
    if not (isinstance(pixels, np.ndarray) and pixels.dtype == np.uint8 and pixels.ndim == 3
            and pixels.shape[2] == 3 and pixels.shape[0] > 0 and pixels.shape[1] > 0):
        shape = getattr(pixels, "shape", None)
        raise ValueError(f"expected an HxWx3 uint8 array, got {type(pixels).__name__} {shape}")
    return np.ascontiguousarray(pixels)


def _from_array(a: np.ndarray) -> LoadedImage:
    name = "<array>"
    if a.dtype != np.uint8:
        raise ImageLoadError(name, f"unsupported array dtype {a.dtype} (expected uint8)")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ImageLoadError(name, f"unsupported array shape {a.shape} (expected HxW, HxWx3 or HxWx4)")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ImageLoadError(name, f"empty image ({a.shape[1]} x {a.shape[0]} pixels)")
    if a.ndim == 2:
        pixels = np.repeat(a[:, :, None], 3, axis=2)
    elif a.shape[2] == 4:
        pixels = _to_array(_to_srgb(Image.fromarray(np.ascontiguousarray(a)), name, owned=True))
    else:
        pixels = np.ascontiguousarray(a)
    return LoadedImage(name, pixels, (pixels.shape[1], pixels.shape[0]), glance_view(pixels))
