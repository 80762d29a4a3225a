"""Capture times, perceptual hashes and burst / near-duplicate grouping for ``qds triage``.

Pure logic on small values: triage computes one ``Frame`` per file (capture time, ``dhash`` of the glance
view it already has, the critic's score) and ``group_bursts`` groups them and picks the best of each group.

Two kinds of link put frames in one group (groups are the connected sets):

* burst: EXIF-timed frames of the same scene shot in quick succession (time gap and hash distance);
* near-duplicate: a hash within a tighter distance of an earlier representative's, whatever the times
  (copies, re-exports, the same scene shot again later, files whose only time is an untrustworthy mtime).

Only numpy, Pillow and the standard library are imported here.
"""

from __future__ import annotations

import math
import os
import re
import struct
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import combinations
from pathlib import Path

import numpy as np
from PIL import Image

EXIF_IFD = 0x8769
# (date, subseconds, offset) tag triples, most to least trusted. DateTime (306) lives in IFD0, the rest in the
# Exif IFD; SubSecTime (37520) and OffsetTime (36880) belong to DateTime.
_TIME_TAGS = ((36867, 37521, 36881), (36868, 37522, 36882), (306, 37520, 36880))
_DATE_RE = re.compile(r"\s*(\d{4})[:\-/.](\d{1,2})[:\-/.](\d{1,2})[ T]+(\d{1,2}):(\d{1,2}):(\d{1,2})(?:[.,](\d+))?")
_OFFSET_RE = re.compile(r"([+-])(\d{2}):?(\d{2})")
# What Pillow raises on damaged headers / EXIF blocks (UnidentifiedImageError is an OSError).
_EXIF_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, struct.error,
                Image.DecompressionBombError)

_RECENT = 4  # a burst candidate is compared with this many of a burst's latest frames
_MAX_ACTIVE = 32  # at most this many open bursts are considered per frame (bounds the cost when times collide)
_BUCKET = 8  # near-duplicate representatives kept per band value (bounds the cost of degenerate hashes)


@dataclass(frozen=True)
class Frame:
    key: str  # unique id, e.g. the file path
    time: float  # seconds since the epoch, from capture_time
    time_source: str  # "exif" or "mtime"; only EXIF times take part in bursts (see group_bursts)
    phash: int | None  # dhash (< 2**64), or None when there are no pixels: the frame then stays alone
    score: float | None  # critic score; None (or NaN) = failed to score, never the best of a group
    sharpness: float | None = None  # optional tie-breaker between equal scores, higher wins


@dataclass(frozen=True)
class Group:
    id: int  # 1.. in order of each group's first capture time
    members: tuple[str, ...]  # keys in time order
    best: str | None  # key of the best-scored member; None when no member was scored


def capture_time(img: Image.Image | None, path: Path) -> tuple[float, str]:
    """Return ``(seconds since epoch, source)`` with source ``"exif"`` or ``"mtime"``.

    Tries DateTimeOriginal, then DateTimeDigitized, then DateTime, each with its SubSecTime and OffsetTime
    tags. A time without an offset is naive camera-local time and is read *as if* it were UTC: frames are
    only compared within one shoot, so a consistent interpretation matters and the machine's time zone
    must not. When ``img`` is None the file's header is opened to read its EXIF (no pixels are decoded).
    Missing or malformed EXIF (``0000:00:00 00:00:00``, garbage, a damaged block) falls back to the file's
    mtime; only a path that cannot be stat'ed raises (``OSError``).
    """
    for date, subsec, offset in _exif_time_tags(img, path):
        t = _parse_exif_time(date, subsec, offset)
        if t is not None:
            return t, "exif"
    return os.stat(path).st_mtime, "mtime"


def _exif_time_tags(img: Image.Image | None, path: Path) -> list[tuple[object, object, object]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if img is None:
                with Image.open(path) as opened:
                    exif = opened.getexif()
            else:
                exif = img.getexif()
            ifd = exif.get_ifd(EXIF_IFD)
            return [((ifd if d != 306 else exif).get(d), ifd.get(s), ifd.get(o)) for d, s, o in _TIME_TAGS]
    except _EXIF_ERRORS:
        return []


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value.strip("\x00 \t") if isinstance(value, str) else None


def _parse_exif_time(date: object, subsec: object, offset: object) -> float | None:
    text = _text(date)
    m = _DATE_RE.match(text) if text else None
    if m is None:
        return None
    off, sub = _OFFSET_RE.fullmatch(_text(offset) or ""), _text(subsec) or ""
    try:
        tz = timezone.utc
        if off and int(off[2]) < 24 and int(off[3]) < 60:
            tz = timezone((1 if off[1] == "+" else -1) * timedelta(hours=int(off[2]), minutes=int(off[3])))
        t = datetime(*(int(g) for g in m.groups()[:6]), tzinfo=tz).timestamp()
    except (ValueError, OverflowError):  # month 0, hour 25, year 0 ...
        return None
    fraction = m[7] or (sub if sub.isdigit() else "")
    return t + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


def dhash(image: Image.Image | np.ndarray, bits: int = 64) -> int:
    """Difference hash: grayscale, BOX-resize to (s+1) x s with s*s == ``bits``, one bit per horizontal step.

    Bit i (row-major, most significant first) is set where a pixel is brighter than its left neighbour.
    Written here (a dozen lines) rather than taken from ``ImageHash``, which would pull scipy and PyWavelets
    into the runtime. Cost is dominated by the grayscale conversion and resize, so pass the small glance view
    (a PIL image or an HxWx3 / HxW uint8 array) rather than the full-resolution image.
    """
    side = math.isqrt(bits)
    if side < 2 or side * side != bits:
        raise ValueError(f"dhash bits must be a square >= 4, got {bits}")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise ValueError(f"dhash needs an HxW or HxWxC uint8 array, got {image.dtype} {image.shape}")
        if image.ndim == 3:
            image = image[..., :3] if image.shape[2] >= 3 else image[..., 0]
        image = Image.fromarray(np.ascontiguousarray(image))
    gray = image if image.mode == "L" else image.convert("L")
    small = np.asarray(gray.resize((side + 1, side), Image.Resampling.BOX), dtype=np.int16)
    diff = small[:, 1:] > small[:, :-1]
    return int.from_bytes(np.packbits(diff).tobytes(), "big") >> (-bits % 8)


def hamming(a: int, b: int) -> int:
    """Number of differing bits between two hashes."""
    return (a ^ b).bit_count()


def group_bursts(
    items: Sequence[Frame],
    max_gap_s: float = 2.0,
    max_distance: int = 12,
    dup_distance: int | None = 6,
    trust_mtime: bool = False,
) -> list[Group]:
    """Group bursts and near-duplicates; every frame ends up in exactly one group (singletons included).

    Frames are taken in (time, key) order. Two kinds of link join frames, and groups are closed over both:

    Burst: a frame joins an open burst when it comes at most ``max_gap_s`` after that burst's latest frame
    and is within ``max_distance`` bits of any of its last few frames. Comparing with a few recent frames,
    not just the previous one, keeps a burst whole when one frame of another scene (a passer-by, a misfired
    flash, a second camera) lands in the middle; not comparing with *all* members bounds the cost and lets a
    long burst follow a moving subject. Among several matching bursts the closest hash wins, then the older.
    Only ``"exif"`` times take part unless ``trust_mtime``: copying a card rewrites mtimes, which would
    otherwise make one "burst" of unrelated files.

    Near-duplicate (``dup_distance`` None disables, 0..11): whatever the times, a frame joins the closest
    earlier *representative* within ``dup_distance`` bits, or becomes a representative itself. Linking to
    fixed representatives instead of to any close frame stops chains (a slow pan, a timelapse, a studio
    series against one backdrop) from collapsing a whole shoot into one group: hiding a distinct photo behind
    a "best" is worse than leaving two similar ones apart. Representatives are found by multi-index hashing:
    split the 64 bits into four 16-bit bands; hashes within d bits have a band within d // 4 bits
    (pigeonhole), so only representatives whose band value is that close to the frame's are compared
    (17 lookups per band for d = 4..7, 137 for 8..11). Each band value keeps only its newest ``_BUCKET``
    representatives, which bounds the cost of dense or degenerate hashes (timelapses, flat or black frames);
    the cap can miss a pair whose close bands are all crowded, never invent one.

    Cost: O(n log n) for the sort, then a bounded amount per frame: ``_MAX_ACTIVE`` open bursts of
    ``_RECENT`` hashes, 4 x 17 index lookups and at most 4 x 17 x ``_BUCKET`` candidates (d <= 7).
    Members are listed in time order, groups numbered from 1 by their first member. Best = highest score,
    then highest sharpness, then earliest, then smallest key; unscored frames never win.
    """
    keys = {f.key for f in items}
    if len(keys) != len(items):
        raise ValueError("group_bursts: frame keys must be unique")
    if dup_distance is not None and not 0 <= dup_distance <= 11:  # from 12 on: 4 x 697 index probes per frame
        raise ValueError(f"group_bursts: dup_distance must be None or 0..11 bits of 64, got {dup_distance}")
    if any(f.phash is not None and not 0 <= f.phash < 1 << 64 for f in items):
        raise ValueError("group_bursts: phash must be a non-negative int below 2**64 (a dhash of <= 64 bits)")
    frames = sorted(items, key=lambda f: (f.time, f.key))
    parent = list(range(len(frames)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        parent[max(ri, rj)] = min(ri, rj)

    _link_bursts(frames, max_gap_s, max_distance, trust_mtime, union)
    if dup_distance is not None:
        _link_near_duplicates(frames, dup_distance, union)

    members: dict[int, list[Frame]] = {}
    for i, f in enumerate(frames):  # frames are time-sorted, so member lists and roots come out in order
        members.setdefault(find(i), []).append(f)
    return [Group(gid, tuple(f.key for f in fs), _best(fs)) for gid, fs in enumerate(members.values(), start=1)]


@dataclass
class _Burst:
    first: int  # index of its first frame (the union-find handle)
    last_time: float
    recent: list[int] = field(default_factory=list)  # hashes of its latest frames


def _link_bursts(
    frames: list[Frame], max_gap_s: float, max_distance: int, trust_mtime: bool, union: Callable[[int, int], None]
) -> None:
    active: list[_Burst] = []  # open bursts, oldest first
    for i, f in enumerate(frames):
        h = f.phash
        if h is None or (f.time_source != "exif" and not trust_mtime):
            continue
        active = [b for b in active[-_MAX_ACTIVE:] if f.time - b.last_time <= max_gap_s]
        best, best_d = None, max_distance + 1
        for b in active:
            d = min([(h ^ r).bit_count() for r in b.recent])
            if d < best_d:  # strict: among equally close bursts the older one wins
                best, best_d = b, d
        if best is None:
            active.append(_Burst(i, f.time, [h]))
        else:
            union(best.first, i)
            best.last_time = f.time
            best.recent = (best.recent + [h])[-_RECENT:]


def _link_near_duplicates(frames: list[Frame], dup_distance: int, union: Callable[[int, int], None]) -> None:
    # Multi-index hashing: four 16-bit bands; hashes within d bits have some band within d // 4 bits.
    radius = dup_distance // 4
    flips = [sum(1 << b for b in bits) for k in range(radius + 1) for bits in combinations(range(16), k)]
    index: dict[int, list[tuple[int, int]]] = {}  # band << 16 | band value -> newest (frame, hash) representatives
    get = index.get
    for i, f in enumerate(frames):
        h = f.phash
        if h is None:
            continue
        keys = [band << 16 | (h >> 16 * band) & 0xFFFF for band in range(4)]
        candidates = {rep for key in keys for flip in flips for rep in get(key ^ flip, ())}
        if candidates:
            d, r = min(((h ^ rh).bit_count(), r) for r, rh in candidates)  # closest, then oldest
            if d <= dup_distance:
                union(r, i)
                continue
        for key in keys:
            reps = index.setdefault(key, [])
            reps.append((i, h))
            if len(reps) > _BUCKET:
                del reps[0]


def _best(members: list[Frame]) -> str | None:
    def rank(f: Frame) -> tuple[float, float, float, str]:
        sharp = -math.inf if f.sharpness is None or math.isnan(f.sharpness) else f.sharpness
        return -f.score, -sharp, f.time, f.key  # type: ignore[operator]  # only scored frames are ranked

    scored = [f for f in members if f.score is not None and not math.isnan(f.score)]
    return min(scored, key=rank).key if scored else None
