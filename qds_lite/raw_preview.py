"""Camera RAW files, read through their embedded preview (the camera's own JPEG) with rawpy/LibRaw.

qds judges the photo the camera showed, so it never demosaics: the preview is what the photographer
saw on the back of the camera and is what most RAW workflows cull from. ``rawpy`` (the ``raw`` extra)
is imported only when a file's content is a camera RAW.

Which files are RAW is decided by content, not by extension:

- own signatures: Fujifilm RAF, Olympus ORF, Panasonic RW2/RWL, Canon CRW, Minolta MRW, Sigma X3F
  (Canon CR3 is ISO-BMFF with the ``crx`` brand; ``qds_lite.io`` reads the ``ftyp`` box);
- TIFF-based RAWs (DNG, CR2, NEF, NRW, ARW, PEF, SRW, 3FR, ERF, KDC, DCR, MOS, ...) start like any
  TIFF, so :func:`tiff_is_raw` looks at the structure: a DNGVersion tag, Canon's ``CR\\x02`` marker,
  or an IFD holding colour-filter-array / linear raw data or a RAW-only compression. Any other TIFF
  is left to Pillow. (LibRaw's own test is not used for this: it also accepts plain 16-bit grey TIFFs.)
"""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import ExifTags, Image

from .errors import ImageLoadError

RAW_EXTRA_HINT = "camera RAW file needs the raw extra (pip install 'qds-lite[raw]')"

# Signatures at offset 0 of RAW formats that are not TIFF-shaped.
RAW_SIGNATURES = (
    b"FUJIFILMCCD-RAW",  # Fujifilm RAF
    b"IIRO", b"IIRS", b"MMOR",  # Olympus ORF (TIFF-like, with its own magic number)
    b"IIU\0",  # Panasonic RW2 / Leica RWL
    b"\0MRM",  # Minolta MRW
    b"FOVb",  # Sigma X3F
)
CRW_SIGNATURE = b"HEAPCCDR"  # Canon CRW (CIFF), at offset 6
TIFF_SIGNATURES = (b"II*\0", b"MM\0*")

_TAG_COMPRESSION = 259
_TAG_PHOTOMETRIC = 262
_TAG_SUBIFDS = 330
_TAG_DNG_VERSION = 50706
_RAW_PHOTOMETRIC = {32803, 34892}  # CFA, LinearRaw
# Compression codes only camera RAWs use: Sony ARW, Nikon/Samsung packed, Nikon NEF, Kodak, Pentax PEF.
_RAW_COMPRESSION = {32767, 32769, 32770, 34713, 65000, 65535}
_MAX_IFDS = 32  # IFDs visited per file (IFD0 chain and SubIFDs); real RAWs have a handful
_MAX_ENTRIES = 1024  # entries read per IFD

# LibRaw's ``flip`` (dcraw's bits: 1 mirror x, 2 mirror y, 4 transpose) -> EXIF orientation.
# LibRaw maps EXIF -> flip with "50132467"[orientation & 7]; this is its inverse.
FLIP_TO_ORIENTATION = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def has_raw_signature(head: bytes) -> bool:
    """True for the non-TIFF RAW formats recognisable from their first 16 bytes."""
    return head.startswith(RAW_SIGNATURES) or head[6:14] == CRW_SIGNATURE


def tiff_is_raw(data: bytes) -> bool:
    """Whether a TIFF-magic file is a camera RAW (see the module docstring). Never raises."""
    if data[8:11] == b"CR\x02":  # Canon CR2 header
        return True
    bo = "<" if data[:2] == b"II" else ">"
    size = len(data)

    def u16(off: int) -> int:
        return struct.unpack_from(bo + "H", data, off)[0]

    def u32(off: int) -> int:
        return struct.unpack_from(bo + "I", data, off)[0]

    todo, seen = [u32(4)] if size >= 8 else [], set()
    while todo and len(seen) < _MAX_IFDS:
        off = todo.pop()
        if off in seen or off < 8 or off + 2 > size:
            continue
        seen.add(off)
        count = min(u16(off), _MAX_ENTRIES, (size - off - 2) // 12)
        for e in range(off + 2, off + 2 + 12 * count, 12):
            tag, typ, n = struct.unpack_from(bo + "HHI", data, e)
            if tag == _TAG_DNG_VERSION:
                return True
            if tag in (_TAG_PHOTOMETRIC, _TAG_COMPRESSION) and n == 1 and typ in (3, 4):
                value = u16(e + 8) if typ == 3 else u32(e + 8)
                if value in (_RAW_PHOTOMETRIC if tag == _TAG_PHOTOMETRIC else _RAW_COMPRESSION):
                    return True
            elif tag == _TAG_SUBIFDS and typ in (4, 13) and 0 < n <= 16:
                at = e + 8 if n == 1 else u32(e + 8)
                if at + 4 * n <= size:
                    todo.extend(u32(at + 4 * i) for i in range(n))
        end = off + 2 + 12 * count
        if end + 4 <= size:
            todo.append(u32(end))  # next IFD in the chain (0 ends it and is skipped above)
    return False


def open_preview(data: bytes, name: str) -> Image.Image:
    """The embedded preview of camera RAW ``data`` as a Pillow image, not yet decoded when it is a JPEG.

    The preview carries the RAW's orientation as EXIF orientation (unless it has its own), so the
    caller's usual EXIF handling turns it upright. Raises ImageLoadError for every failure.
    """
    try:
        import rawpy
    except ImportError:
        raise ImageLoadError(name, RAW_EXTRA_HINT) from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip = raw.sizes.flip
            thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        raise ImageLoadError(name, "camera RAW without an embedded preview") from None
    except rawpy.LibRawFileUnsupportedError:
        raise ImageLoadError(name, "camera RAW format not supported by LibRaw") from None
    except (rawpy.LibRawTooBigError, rawpy.LibRawUnsufficientMemoryError, rawpy.LibRawMemPoolOverflowError,
            MemoryError):
        raise ImageLoadError(name, "not enough memory to read the camera RAW file") from None
    except (rawpy.LibRawError, OSError, ValueError) as e:
        detail = " ".join(str(e).split()) or type(e).__name__
        raise ImageLoadError(name, f"corrupt camera RAW data ({detail})") from e
    if thumb.format == rawpy.ThumbFormat.JPEG:
        try:
            img = Image.open(io.BytesIO(thumb.data), formats=["JPEG"])
        except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
            raise ImageLoadError(name, f"corrupt embedded preview in camera RAW ({e})") from e
    else:
        img = _bitmap(np.asarray(thumb.data), name)
    orientation = FLIP_TO_ORIENTATION.get(flip, 1)
    if orientation != 1:
        try:
            exif = img.getexif()  # cached by Pillow: what is set here is what orientation handling reads
        except (OSError, SyntaxError, ValueError, TypeError, KeyError, IndexError, struct.error):
            return img  # unreadable EXIF in the preview: shown as stored
        if ExifTags.Base.Orientation not in exif:
            exif[ExifTags.Base.Orientation] = orientation
    return img


def _bitmap(a: np.ndarray, name: str) -> Image.Image:
    """LibRaw's decoded (bitmap) preview, HxWxC uint8 or uint16, as an RGB or L image."""
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (1, 3):
        raise ImageLoadError(name, f"unsupported embedded preview in camera RAW ({a.dtype} {a.shape})")
    return Image.fromarray(np.ascontiguousarray(a[:, :, 0] if a.shape[2] == 1 else a))
