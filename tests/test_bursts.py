from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from qds_lite.bursts import EXIF_IFD, Frame, Group, capture_time, dhash, group_bursts, hamming

ROOT = Path(__file__).parent.parent
COFFEE = ROOT / "tests" / "data" / "coffee_clean.jpg"
ROCKET = ROOT / "tests" / "data" / "rocket_clean.jpg"
MTIME = 1_000_000_000.0


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=timezone.utc).timestamp()


def write_jpeg(path: Path, img: Image.Image | None = None, *, ifd0: dict | None = None, **exif_ifd: object) -> Path:
    """Save ``img`` (default: 16x16 grey) with the given IFD0 tags and Exif-IFD tags (``t<tag>=value``)."""
    exif = Image.Exif()
    exif.update(ifd0 or {})
    sub = exif.get_ifd(EXIF_IFD)
    sub.update({int(k[1:]): v for k, v in exif_ifd.items()})
    (img or Image.new("RGB", (16, 16), (128, 128, 128))).save(path, exif=exif)
    os.utime(path, (MTIME, MTIME))
    return path


# --- capture_time -------------------------------------------------------------------------------------------------

def test_original_time_with_subseconds_and_offset(tmp_path):
    p = write_jpeg(tmp_path / "a.jpg", t36867="2024:05:01 12:00:00", t37521="25", t36881="+02:00",
                   t36868="2000:01:01 00:00:00")
    t, source = capture_time(None, p)
    assert source == "exif"
    assert t == pytest.approx(utc(2024, 5, 1, 10, 0, 0) + 0.25, abs=1e-6)
    with Image.open(p) as img:  # an already opened image gives the same answer
        assert capture_time(img, p) == (t, "exif")


@pytest.mark.skipif(not hasattr(time, "tzset"), reason="time.tzset is POSIX-only")
def test_naive_time_is_read_as_utc_whatever_the_machine_zone(tmp_path, monkeypatch):
    p = write_jpeg(tmp_path / "a.jpg", t36867="2024:05:01 12:00:00", t37521="5", t36881="+99:00")  # bad offset
    expected = (utc(2024, 5, 1, 12, 0, 0) + 0.5, "exif")
    assert capture_time(None, p) == pytest.approx(expected)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert capture_time(None, p) == pytest.approx(expected)
    finally:
        monkeypatch.undo()
        time.tzset()


def test_falls_back_to_digitized_then_datetime(tmp_path):
    p = write_jpeg(tmp_path / "a.jpg", t36867="0000:00:00 00:00:00", t36868="2023:12:31 23:59:59", t37522="123")
    assert capture_time(None, p) == pytest.approx((utc(2023, 12, 31, 23, 59, 59) + 0.123, "exif"))
    p = write_jpeg(tmp_path / "b.jpg", ifd0={306: "2022:02:03 04:05:06"}, t36867="garbage", t36880="-05:30")
    assert capture_time(None, p) == pytest.approx((utc(2022, 2, 3, 9, 35, 6), "exif"))


@pytest.mark.parametrize("value", ["0000:00:00 00:00:00", "    :  :     :  :  ", "garbage", "2024:13:45 25:61:00", ""])
def test_malformed_exif_falls_back_to_mtime(tmp_path, value):
    p = write_jpeg(tmp_path / "a.jpg", t36867=value, t37521="xx", t36881="nonsense")
    assert capture_time(None, p) == (MTIME, "mtime")


def test_no_exif_damaged_exif_and_non_images_use_mtime(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    damaged = tmp_path / "damaged.jpg"
    Image.new("RGB", (8, 8)).save(damaged, exif=b"Exif\x00\x00garbage-not-tiff")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for p in (plain, damaged, text):
        os.utime(p, (MTIME, MTIME))
        assert capture_time(None, p) == (MTIME, "mtime")
    assert capture_time(Image.new("RGB", (8, 8)), plain) == (MTIME, "mtime")  # pixels without EXIF
    with pytest.raises(OSError):
        capture_time(None, tmp_path / "missing.jpg")


# --- dhash --------------------------------------------------------------------------------------------------------

def test_dhash_neighbourhoods_on_real_photos():
    coffee, rocket = Image.open(COFFEE).convert("RGB"), Image.open(ROCKET).convert("RGB")
    w, h = coffee.size
    variants = [
        coffee.crop((6, 4, w, h)),  # shifted
        ImageEnhance.Brightness(coffee).enhance(1.25),
        coffee.resize((256, 171)),  # the glance-sized view triage passes
        np.asarray(coffee.resize((256, 256))),
        Image.open(ROOT / "examples" / "coffee.jpg"),
    ]
    ref = dhash(coffee)
    for v in variants:
        assert hamming(ref, dhash(v)) <= 6
    assert hamming(ref, dhash(rocket)) >= 20
    assert hamming(ref, dhash(ImageOps.mirror(coffee))) >= 20


def test_dhash_bits_inputs_and_known_values():
    ramp = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (20, 1))  # brighter to the right: every bit set
    assert dhash(ramp) == 2**64 - 1
    assert dhash(ramp[:, ::-1]) == 0
    assert dhash(ramp, bits=16) == 2**16 - 1 and dhash(ramp, bits=9) == 2**9 - 1
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    assert dhash(rgb) == dhash(Image.fromarray(rgb)) == dhash(np.dstack([rgb, rgb[..., :1]]))
    for bad in (10, 1, 0):
        with pytest.raises(ValueError):
            dhash(rgb, bits=bad)
    with pytest.raises(ValueError):
        dhash(rgb.astype(np.float32))
    assert hamming(0b1011, 0b0110) == 3 and hamming(2**64 - 1, 0) == 64


# --- group_bursts -------------------------------------------------------------------------------------------------

A, B, C = 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210, 0x0F0F_F0F0_3C3C_C3C3  # far apart (>= 32 bits)


def flip(h: int, n: int, start: int = 0) -> int:
    """``h`` with ``n`` bits flipped from bit ``start`` (distance exactly ``n``)."""
    return h ^ (((1 << n) - 1) << start)


def fr(key: str, t: float, h: int | None, score: float | None = 50.0, src: str = "exif", **kw: float) -> Frame:
    return Frame(key, t, src, h, score, **kw)


def members(groups: list[Group]) -> list[tuple[str, ...]]:
    return [g.members for g in groups]


def test_two_bursts_separated_by_a_gap():
    items = [fr("a1", 0.0, A), fr("a2", 0.4, flip(A, 3)), fr("a3", 0.8, flip(A, 5)),
             fr("b1", 10.8, B), fr("b2", 11.0, flip(B, 2, 40))]
    groups = group_bursts(items[::-1])  # input order does not matter
    assert members(groups) == [("a1", "a2", "a3"), ("b1", "b2")]
    assert [g.id for g in groups] == [1, 2]


def test_burst_needs_both_short_gap_and_close_hash():
    items = [fr("a1", 0.0, A), fr("a2", 2.0, flip(A, 10)),  # gap 2.0 s (inclusive) and 10 bits: one burst
             fr("a3", 4.5, flip(A, 10, 20)),  # same scene (9..12 bits away) but 2.5 s later: new group
             fr("c1", 5.0, C)]  # right after it in time but another scene
    assert members(group_bursts(items)) == [("a1", "a2"), ("a3",), ("c1",)]
    assert members(group_bursts(items, max_gap_s=3.0)) == [("a1", "a2", "a3"), ("c1",)]
    assert members(group_bursts(items, max_distance=5)) == [("a1",), ("a2",), ("a3",), ("c1",)]


def test_frame_of_another_scene_does_not_split_a_burst():
    items = [fr("a1", 0.0, A), fr("a2", 0.5, flip(A, 8)), fr("x", 1.0, B), fr("a3", 1.5, flip(A, 9, 30)),
             fr("a4", 2.0, flip(A, 7, 50)), fr("x2", 2.2, flip(B, 9))]
    groups = group_bursts(items)
    assert members(groups) == [("a1", "a2", "a3", "a4"), ("x", "x2")]


def test_frame_goes_to_the_closest_open_burst_then_the_older():
    p, q = A, flip(A, 20)  # two bursts open at once (two cameras)
    items = [fr("p", 0.0, p), fr("q", 0.1, q), fr("f", 0.5, flip(A, 10, 10)),  # 10 bits from both
             fr("g", 0.6, flip(q, 9, 40))]  # 9 bits from q, 10 + 9 from f
    assert members(group_bursts(items)) == [("p", "f"), ("q", "g")]


def test_near_duplicates_far_apart_in_time_and_untrusted_mtimes():
    items = [fr("a", 0.0, A), fr("b", 100.0, B), fr("a_again", 3600.0, flip(A, 6)),
             fr("a_copy", 7.0, A, src="mtime"),  # identical hash, time meaningless
             fr("m1", 50.0, flip(C, 10), src="mtime"), fr("m2", 50.5, C, src="mtime")]
    assert members(group_bursts(items)) == [("a", "a_copy", "a_again"), ("m1",), ("m2",), ("b",)]
    # mtime bursts only when asked; near-duplicates can be switched off
    assert ("m1", "m2") in members(group_bursts(items, trust_mtime=True))
    assert members(group_bursts(items, dup_distance=None)) == [("a",), ("a_copy",), ("m1",), ("m2",), ("b",),
                                                               ("a_again",)]
    # just beyond the near-duplicate threshold
    assert len(group_bursts([fr("a", 0.0, A), fr("far", 100.0, flip(A, 7))])) == 2


def test_best_pick_ties_and_failed_frames():
    def best(*items: Frame) -> str | None:
        groups = group_bursts([fr(f.key, i * 0.1, A, f.score, sharpness=f.sharpness) for i, f in enumerate(items)])
        assert len(groups) == 1
        return groups[0].best

    assert best(fr("a", 0, 0, 40.0), fr("b", 0, 0, 70.0), fr("c", 0, 0, 55.0)) == "b"
    assert best(fr("a", 0, 0, 70.0, sharpness=1.0), fr("b", 0, 0, 70.0, sharpness=3.0)) == "b"
    assert best(fr("a", 0, 0, 70.0), fr("b", 0, 0, 70.0, sharpness=0.0)) == "b"  # known sharpness beats unknown
    assert best(fr("a", 0, 0, 70.0), fr("b", 0, 0, 70.0)) == "a"  # full tie: earliest
    assert best(fr("a", 0, 0, None), fr("b", 0, 0, 1.0), fr("c", 0, 0, float("nan"))) == "b"
    assert best(fr("a", 0, 0, None), fr("b", 0, 0, None)) is None
    # same time: smallest key, whatever the input order
    groups = group_bursts([fr("z", 0.0, A, 9.0), fr("y", 0.0, A, 9.0)])
    assert groups == [Group(1, ("y", "z"), "y")]


def test_frames_without_hash_stay_alone_and_bad_input_raises():
    groups = group_bursts([fr("a", 0.0, A), fr("nohash", 0.1, None, None), fr("a2", 0.2, A)])
    assert groups == [Group(1, ("a", "a2"), "a"), Group(2, ("nohash",), None)]
    assert group_bursts([]) == []
    with pytest.raises(ValueError, match="unique"):
        group_bursts([fr("a", 0.0, A), fr("a", 1.0, B)])
    with pytest.raises(ValueError, match="2\\*\\*64"):
        group_bursts([fr("a", 0.0, 1 << 64)])
    for bad in (-1, 12):
        with pytest.raises(ValueError, match="dup_distance"):
            group_bursts([fr("a", 0.0, A)], dup_distance=bad)


def test_near_duplicates_link_to_a_representative_not_a_chain():
    # b is 5 bits from a, c is 5 bits from b but 10 from a: c is not a near-duplicate of the group's a
    items = [fr("a", 0.0, A), fr("b", 100.0, flip(A, 5)), fr("c", 200.0, flip(A, 10))]
    assert members(group_bursts(items)) == [("a", "b"), ("c",)]
    # a frame within reach of two representatives joins the closer one
    items = [fr("a", 0.0, A), fr("d", 50.0, flip(A, 7)), fr("e", 300.0, flip(A, 6))]
    assert members(group_bursts(items)) == [("a",), ("d", "e")]
    # many identical (e.g. black) frames are one group and stay cheap
    assert len(group_bursts([fr(f"k{i}", 10.0 * i, 0) for i in range(2000)])) == 1


def test_end_to_end_from_files(tmp_path):
    coffee = Image.open(COFFEE).convert("RGB")
    rocket = Image.open(ROCKET).convert("RGB")
    w, h = coffee.size
    shots = {  # name: (image, subseconds of 12:00:00, score)
        "c0": (coffee, "00", 60.0),
        "c1": (coffee.crop((5, 3, w, h)), "30", 75.0),
        "r0": (rocket, "45", 80.0),  # another camera's frame in the middle of the coffee burst
        "c2": (ImageEnhance.Brightness(coffee).enhance(1.2), "60", 75.0),
    }
    frames = []
    for name, (img, sub, score) in shots.items():
        p = write_jpeg(tmp_path / f"{name}.jpg", img, t36867="2024:06:01 12:00:00", t37521=sub)
        with Image.open(p) as opened:
            t, src = capture_time(opened, p)
            frames.append(Frame(name, t, src, dhash(opened.convert("RGB").resize((256, 256))), score))
    copy = tmp_path / "r_copy.png"  # a smaller re-export without EXIF, saved later
    rocket.resize((320, 213)).save(copy)
    os.utime(copy, (utc(2025, 1, 1), utc(2025, 1, 1)))
    t, src = capture_time(None, copy)
    assert src == "mtime"
    frames.append(Frame("r_copy", t, src, dhash(np.asarray(Image.open(copy).convert("RGB"))), None))
    assert group_bursts(frames) == [Group(1, ("c0", "c1", "c2"), "c1"), Group(2, ("r0", "r_copy"), "r0")]


def test_50k_frames():
    rng = np.random.default_rng(0)
    n_bursts, size = 10_000, 5
    bases = [int(h) for h in rng.integers(0, 2**64, n_bursts, dtype=np.uint64)]
    items = [fr(f"b{k}_{j}", 10.0 * k + 0.3 * j, flip(bases[k], j, 7 * j), float((k * 7 + j * 3) % 11))
             for k in range(n_bursts) for j in range(size)]
    # copies with untrusted times, each a near-duplicate of one burst
    items += [fr(f"copy{k}", 2e9 + k, flip(bases[k], 3, 60), None, "mtime") for k in range(0, n_bursts, 100)]
    groups = group_bursts(items)
    assert len(items) == 50_100 and len(groups) == n_bursts
    assert groups[0].members == ("b0_0", "b0_1", "b0_2", "b0_3", "b0_4", "copy0")
    assert groups[1].members == tuple(f"b1_{j}" for j in range(size))
    assert groups[200].members[-1] == "copy200" and groups[201].id == 202
    assert groups[0].best == "b0_3"  # scores 0, 3, 6, 9, 1; the copy is unscored
