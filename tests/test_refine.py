"""`qds refine`: the diagnosis-guided enhancement loop, its step log, and how it writes its output."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from qds_lite import refine_ops
from qds_lite.errors import QdsError
from qds_lite.refine import SCORE_MARGIN, refine, write_refined

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]

pytest.importorskip("cv2")


@pytest.fixture(scope="module")
def critic():
    import qds_lite

    return qds_lite.load(backend="onnx")


@pytest.fixture(scope="module")
def dark(critic):
    return refine(critic, DATA / "coffee_dark.jpg")


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    from benchmarks.refine import ssim

    return ssim(a, b)


def test_dark_photo_gets_brighter_and_scores_higher(dark):
    before = np.asarray(Image.open(DATA / "coffee_dark.jpg").convert("RGB"), np.float64)
    after = np.asarray(dark.image, np.float64)
    assert dark.changed
    assert after.mean() > before.mean() + 10
    assert dark.final.score > dark.initial.score + SCORE_MARGIN
    assert any(s.kept and s.op in ("exposure", "stretch") for s in dark.steps)


def test_step_log_is_consistent(dark):
    score = dark.initial.score  # the critic's own verdict of the current image (None: not in the log)
    for s in dark.steps:
        if not s.looked and score is not None:
            assert s.score_before == pytest.approx(score)  # every try starts from the current image
        if s.kept:
            assert s.score_after >= s.score_before + SCORE_MARGIN
            assert not s.niqe_after > s.niqe_before + 0.1
            score = None if s.looked else s.score_after  # a local step was judged looking at its region
        else:
            assert s.reason
    assert score is None or dark.final.score == pytest.approx(score)
    assert sum(s.kept for s in dark.steps) <= 4
    js = dark.to_json()
    assert js["changed"] and len(js["steps"]) == len(dark.steps)
    assert all(set(s) >= {"op", "params", "where", "score_before", "score_after", "kept"} for s in js["steps"])


def test_clean_photo_is_left_alone(critic, tmp_path):
    src = DATA / "coffee_clean.jpg"
    r = refine(critic, src)
    before = np.asarray(Image.open(src).convert("RGB"))
    assert not r.changed or _ssim(before, np.asarray(r.image)) >= 1 - 0.005
    out = tmp_path / "same.jpg"
    write_refined(r, out, input_path=src)
    if not r.changed:  # nothing to do: the file is copied, not re-encoded
        assert out.read_bytes() == src.read_bytes()


def test_cautious_leaves_a_clean_dusk_sky_whose_underexposure_the_reframed_photo_does_not_show(critic):
    """The critic reads the clean dusk photo's dark upper-left sky as underexposed, and lifting it raises the
    score; the photo reframed by a twentieth of each side does not show the fault there, so it is left."""
    r = refine(critic, DATA / "rocket_clean.jpg", cautious=True)
    assert not r.changed
    assert any(s.finding == "underexposure" and s.region is not None and "reframed" in s.reason
               and s.score_after >= s.score_before + SCORE_MARGIN for s in r.steps)


def test_max_steps_zero_changes_nothing(critic):
    r = refine(critic, DATA / "coffee_dark.jpg", max_steps=0)
    assert not r.steps and r.final.score == r.initial.score


def test_never_writes_over_the_input(critic, dark, tmp_path):
    src = tmp_path / "in.jpg"
    src.write_bytes((DATA / "coffee_dark.jpg").read_bytes())
    before = src.read_bytes()
    r = refine(critic, src)
    assert r.changed and r.source_path == str(src)
    with pytest.raises(QdsError, match="overwrite the input"):
        write_refined(r, src)  # the input path is remembered
    with pytest.raises(QdsError, match="overwrite the input"):
        write_refined(dark, tmp_path / "." / "in.jpg", input_path=src)
    link = tmp_path / "link.jpg"
    os.link(src, link)
    with pytest.raises(QdsError, match="overwrite the input"):
        write_refined(r, link)  # same file under another name
    assert src.read_bytes() == before
    with pytest.raises(QdsError, match="unsupported output format"):
        write_refined(dark, tmp_path / "out.xyz", input_path=src)


def test_keeps_exif_and_icc(critic, tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = Image.open(DATA / "coffee_dark.jpg").convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x010F] = "QdsCam"  # Make
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to view
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:00:00"  # DateTimeOriginal, in the Exif sub-IFD
    src = tmp_path / "tagged.jpg"
    img.save(src, quality=95, exif=exif.tobytes(), icc_profile=srgb)
    r = refine(critic, src)
    assert r.changed
    for name in ("out.jpg", "out.png", "out.webp"):
        out = tmp_path / name
        write_refined(r, out, input_path=src)
        with Image.open(out) as o:
            assert o.size == (600, 400)  # upright pixels ...
            assert o.getexif().get(0x0112) == 1  # ... so orientation 1
            assert o.getexif().get(0x010F) == "QdsCam"
            assert o.getexif().get_ifd(0x8769).get(0x9003) == "2024:05:01 10:00:00"
            assert o.info.get("icc_profile") == srgb
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_untagged_input_gets_srgb(dark, tmp_path):
    out = tmp_path / "out.jpg"
    write_refined(dark, out, input_path=DATA / "coffee_dark.jpg")
    with Image.open(out) as o:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(o.info["icc_profile"]))
        assert "sRGB" in ImageCms.getProfileDescription(profile)
        assert 0x0112 not in o.getexif()  # the input had no EXIF: none is invented


def test_missing_opencv_names_the_extra(critic, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 now raises ImportError
    with pytest.raises(QdsError) as e:
        refine(critic, DATA / "coffee_dark.jpg")
    assert "OpenCV" in e.value.message and "qds-lite[refine]" in e.value.hint


def test_local_edit_stays_in_its_box():
    m = refine_ops.feathered_mask((400, 600), (0.5, 0.5, 1.0, 1.0))
    assert m[320, 470] == pytest.approx(1.0, abs=1e-3)  # inside
    assert m[:200].max() == 0.0 and m[:, :300].max() == 0.0  # outside: untouched
    assert 0.0 < m[205, 470] < 0.2 and 0.0 < m[320, 305] < 0.2  # feathered inside the box's sides
    assert m[399, 470] == pytest.approx(1.0, abs=1e-3) and m[320, 599] == pytest.approx(1.0, abs=1e-3)  # borders


def test_a_kind_of_fix_is_not_made_again_over_most_of_its_region():
    from qds_lite.refine import _covers

    made = (0.25, 0.25, 0.75, 1.0)
    assert _covers(made, (0.25, 0.25, 0.5, 1.0))  # the critic's box shifted inside the edited one
    assert _covers(made, (0.5, 0.5, 1.0, 1.0))  # half of it inside
    assert not _covers(made, (0.75, 0.0, 1.0, 0.5)) and not _covers(made, None)  # elsewhere; the whole image
    assert _covers(None, (0.0, 0.0, 0.25, 0.25))  # after a global edit, no local one of the same kind


def test_niqe_matches_the_reference_port():
    from benchmarks.baselines import niqe_score

    for name in ("coffee_clean.jpg", "rocket_blur.jpg"):
        rgb = np.asarray(Image.open(DATA / name).convert("RGB"))
        assert refine_ops.niqe(rgb) == pytest.approx(niqe_score(rgb), abs=0.1)


def test_missing_niqe_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(refine_ops, "NIQE_MODEL_PATH", tmp_path / "nope.npz")
    with pytest.raises(QdsError, match="NIQE model"):
        refine_ops.niqe(np.zeros((200, 200, 3), np.uint8) + 128)


def test_benchmark_ssim_and_psnr():
    from benchmarks.refine import psnr, ssim

    rgb = np.asarray(Image.open(DATA / "coffee_clean.jpg").convert("RGB"))
    noisy = np.clip(rgb + np.random.default_rng(0).normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    assert ssim(rgb, rgb) == pytest.approx(1.0) and psnr(rgb, rgb) == float("inf")
    assert 0.5 < ssim(rgb, noisy) < 0.99 and 25 < psnr(rgb, noisy) < 35


def test_blockiness_finds_jpeg_blocks_off_the_8px_grid():
    from qds_lite.refine import MIN_BLOCKINESS

    clean = np.asarray(Image.open(DATA / "coffee_clean.jpg").convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(clean).save(buf, format="JPEG", quality=8)
    blocky = np.asarray(Image.open(buf).convert("RGB"))
    assert refine_ops.blockiness(clean) < MIN_BLOCKINESS < refine_ops.blockiness(blocky)
    assert refine_ops.blockiness(blocky[3:, 5:]) > MIN_BLOCKINESS  # cropped after compression: the grid moved
    assert refine_ops.blockiness(blocky[:5, :5]) == 1.0  # too small to tell


def mirrored_scene() -> np.ndarray:
    """The coffee photo's left half beside its mirror image: two halves alike, so that a fault put in the
    right half is the only difference between the box (0.5, 0, 1, 1) and the rest."""
    clean = np.asarray(Image.open(DATA / "coffee_clean.jpg").convert("RGB"))
    half = clean[:, : clean.shape[1] // 2]
    return np.ascontiguousarray(np.concatenate([half, half[:, ::-1]], axis=1))


def right_core_error(img: np.ndarray, scene: np.ndarray) -> float:
    """Mean absolute difference from ``scene`` in the right half's core, where a local edit acts in full."""
    core = np.s_[:, round(0.65 * scene.shape[1]):round(0.85 * scene.shape[1])]
    return float(np.abs(img[core].astype(np.float64) - scene[core]).mean())


def test_a_tonal_or_colour_fault_is_fixed_where_it_is():
    from qds_lite.refine import _fault_region
    from qds_lite.result import Finding

    scene = mirrored_scene()
    box = (0.5, 0.0, 1.0, 1.0)

    def edited(fn, right_half_only: bool) -> np.ndarray:
        out = scene.copy()
        sl = np.s_[:, scene.shape[1] // 2:] if right_half_only else np.s_[:, :]
        out[sl] = fn(np.ascontiguousarray(scene[sl]))
        return out

    def where(kind: str, rgb: np.ndarray):
        return _fault_region(Finding(type=kind, severity=0.7, box=box, evidence_zoom=None), rgb)

    faults = {"underexposure": lambda x: refine_ops.exposure(x, 0.25),
              "overexposure": lambda x: refine_ops.exposure(x, 3.0),
              "low_contrast": lambda x: (96 + 0.4 * x).astype(np.uint8),
              "color_cast": lambda x: refine_ops.to_srgb(refine_ops.to_linear(x) * np.float32([1.0, 0.8, 0.6]))}
    for kind, fault in faults.items():
        assert where(kind, edited(fault, True)) == box, kind  # the right half only: fixed there
        assert where(kind, edited(fault, False)) is None, kind  # the whole photo: fixed as a whole
    assert where("noise", scene) == box  # other faults stay in their box
    assert _fault_region(Finding(type="noise", severity=0.5, box=(0.0, 0.0, 1.0, 1.0), evidence_zoom=None),
                         scene) is None


def test_a_local_exposure_fix_stops_at_the_rest_of_the_photo():
    """A box darker than the rest is lifted no further than the rest's key, whatever the severity says (the
    severity's gain alone took the dusk sky of a clean photo far above the rest of it); a box brighter than
    the rest is darkened no further than the rest either; the bound never turns a fix around (a box brighter
    than the rest is not darkened for underexposure); a whole-image fix has no rest to stop at."""
    from qds_lite.refine import _crop, _exposure_ops, candidate_edits
    from qds_lite.result import Finding

    scene = mirrored_scene()
    box = (0.5, 0.0, 1.0, 1.0)
    left, right = np.s_[:, : scene.shape[1] // 2], np.s_[:, scene.shape[1] // 2:]

    def gains(kind: str, rest: float, inside: float, region=box, bounded: bool = True) -> list[float]:
        rgb = scene.copy()
        rgb[left] = refine_ops.exposure(np.ascontiguousarray(scene[left]), rest)
        rgb[right] = refine_ops.exposure(np.ascontiguousarray(scene[right]), inside)
        found = Finding(type=kind, severity=0.9, box=box, evidence_zoom=None)
        edits = (candidate_edits(found, _exposure_ops, rgb, region) if bounded
                 else _exposure_ops(found, _crop(rgb, region)))
        return [params["gain"] for _, params in edits]

    lifted = gains("underexposure", 0.5, 0.125)[0]  # two stops below the rest
    assert 3.4 < lifted < 4.6 and gains("underexposure", 0.5, 0.125, bounded=False)[0] > 7.0  # white: 3 stops
    darkened = gains("overexposure", 4.0, 16.0)[0]  # a bright rest, the box two stops above it before clipping
    assert 0.45 < darkened < 0.62 and gains("overexposure", 4.0, 16.0, bounded=False)[0] < 0.4  # mid-grey key
    assert gains("underexposure", 0.125, 0.125, region=None)[0] > 7.0  # the whole photo: only white bounds it
    assert gains("underexposure", 1.0, 2.0) == []  # a box above the rest: nothing to lift, and never darkened
    assert all(g <= 1.0 for g in gains("overexposure", 4.0, 2.0))  # a box below a brighter rest: never brightened


def test_a_local_cast_is_brought_to_the_balance_of_the_rest():
    """A box lit unlike the rest of the photo is white-balanced towards the rest, not towards grey: the half
    given a cast comes back close to the original, keeping the scene's own colour that balancing the box by
    itself takes away; a cast box balanced like the rest is the photo's cast, fixed as a whole."""
    from qds_lite.refine import _colour_ops, _edit, _fault_region, candidate_edits
    from qds_lite.result import Finding

    scene = mirrored_scene()
    box = (0.5, 0.0, 1.0, 1.0)
    cast = np.float32([0.8, 1.0, 1.25])  # cool (a warm one here clips the bright half's red: a biased estimate)
    cast /= cast @ np.float32([0.2126, 0.7152, 0.0722])  # grey keeps its luminance, as in a white-balance error
    rgb = scene.copy()
    rgb[:, scene.shape[1] // 2:] = refine_ops.to_srgb(refine_ops.to_linear(scene[:, scene.shape[1] // 2:]) * cast)
    found = Finding(type="color_cast", severity=0.7, box=box, evidence_zoom=None)
    assert _fault_region(found, rgb) == box
    name, params = candidate_edits(found, _colour_ops, rgb, box)[0]
    expected = (1.0 / cast) / np.exp(np.log(1.0 / cast).mean())
    np.testing.assert_allclose(params["gains"], expected, rtol=0.08)
    def error(img: np.ndarray) -> float:
        return right_core_error(img, scene)

    matched = error(_edit(rgb, box, name, params))
    by_itself = error(_edit(rgb, box, "white_balance", {"p": 12.0, "amount": 1.0}))
    assert matched < 0.3 * error(rgb) and matched < 0.5 * by_itself
    whole = refine_ops.to_srgb(refine_ops.to_linear(scene) * cast)
    assert _fault_region(found, whole) is None


def test_a_local_stretch_widens_its_box_by_what_the_severity_took():
    """A box flatter than the rest is stretched with the levels measured inside it (measured on the pixels the
    edit is handed, which reach into the clean margin the mask feathers into, they made it near the
    identity), about its middle and by no more than the finding's severity takes away; a whole photo goes
    to the full range as before."""
    from qds_lite.refine import CONTRAST_LOSS, _contrast_ops, _crop, _edit, candidate_edits
    from qds_lite.result import Finding

    scene = mirrored_scene()
    box, right = (0.5, 0.0, 1.0, 1.0), np.s_[:, scene.shape[1] // 2:]
    flat = scene.copy()
    m = float(scene[right].mean())
    flat[right] = np.clip(m + (scene[right].astype(np.float32) - m) * 0.7, 0, 255).astype(np.uint8)
    severity = 0.3 / CONTRAST_LOSS["low_contrast"]  # what took 30 % of the range away
    found = Finding(type="low_contrast", severity=severity, box=box, evidence_zoom=None)
    name, params = candidate_edits(found, _contrast_ops, flat, box)[0]
    lo, hi = params["levels"]
    assert (lo, hi) == tuple(round(v, 1) for v in refine_ops.stretch_levels(_crop(flat, box)))
    black, white = params["target"]
    width = (hi - lo) / 0.7
    assert white - black == pytest.approx(width, abs=0.2)
    assert black == pytest.approx(min(max((lo + hi - width) / 2, 0.0), 255.0 - width), abs=0.2)  # about the middle
    def error(img: np.ndarray) -> float:
        return right_core_error(img, scene)

    assert error(_edit(flat, box, name, params)) < 0.5 * error(flat)
    assert error(_edit(flat, box, name, {"amount": 1.0})) > 0.9 * error(flat)  # its own levels: near the identity
    assert candidate_edits(found, _contrast_ops, flat, None) == []  # the left half spans the range already
    all_flat = np.clip(m + (scene.astype(np.float32) - m) * 0.7, 0, 255).astype(np.uint8)
    whole = candidate_edits(found, _contrast_ops, all_flat, None)[0][1]
    assert "target" not in whole and whole["levels"] == [round(v, 1) for v in refine_ops.stretch_levels(all_flat)]


def test_a_local_fault_is_measured_where_its_edit_acts_in_full():
    """The evidence for a local edit is read inside the box's feather, as its mask edits: the synthesizer's
    local haze fades out towards the quarter's sides, and the tonal range of the whole quarter read its
    clean edges (haze of severity 0.6 was never stretched)."""
    from export import synth
    from qds_lite.refine import MAX_RANGE, _contrast_ops, _crop
    from qds_lite.result import Finding

    clean = np.asarray(Image.open(DATA / "coffee_clean.jpg").convert("RGB"))
    box = (0.5, 0.5, 1.0, 1.0)
    hazy = synth.apply(clean, [synth.Degradation("haze", 0.6, (2, 2, 4, 4), 3)])
    h, w = hazy.shape[:2]
    quarter = hazy[h // 2:, w // 2:]
    assert refine_ops.tonal_range(quarter) > MAX_RANGE  # the whole quarter still spans the range ...
    core = _crop(hazy, box)
    x0, y0, x1, y1 = refine_ops.full_strength_rect((h, w), box)
    assert core.shape[:2] == (y1 - y0, x1 - x0) and x0 > w // 2 and y0 > h // 2 and (x1, y1) == (w, h)
    assert refine_ops.tonal_range(core) <= MAX_RANGE  # ... where the edit acts in full, it does not
    assert _contrast_ops(Finding(type="haze", severity=0.6, box=box, evidence_zoom=None), core)
    assert _crop(clean, None) is clean


def test_refine_benchmark_pairs_are_two_different_whole_image_faults_kept_apart_from_the_bars():
    from benchmarks.refine import degradations, items_for

    kinds = ["luma_noise", "jpeg", "haze", "banding"]
    singles = items_for("a/photo.jpg", kinds, seed=0, grid=4)
    items = items_for("a/photo.jpg", kinds, seed=0, grid=4, pairs=3)
    assert items[:len(singles)] == singles  # adding pairs leaves the bars' images as they were
    pairs = items[len(singles):]
    assert len(pairs) == 3 and pairs == items_for("a/photo.jpg", kinds, seed=0, grid=4, pairs=3)[len(singles):]
    for it in pairs:
        (a, sa), (b, sb) = it["faults"]
        assert it["set"] == "pair" and it["kind"] == f"{a}+{b}" and a != b and {a, b} <= set(kinds)
        assert 0.3 <= min(sa, sb) and max(sa, sb) <= 0.6 and it["region"] is None
        assert [d.kind for d in degradations(it)] == [a, b] and all(d.region is None for d in degradations(it))
    assert degradations(singles[0]) == [] and len(degradations(singles[1])) == 1


def test_refine_benchmark_clean_views_are_more_clean_inputs_of_each_photo(tmp_path):
    from benchmarks.refine import CLEAN_VIEWS, clean_view, degraded_items, items_for

    kinds = ["jpeg", "haze"]
    plain = items_for("a/photo.jpg", kinds, seed=0, grid=4)
    items = items_for("a/photo.jpg", kinds, seed=0, grid=4, clean_views=CLEAN_VIEWS)
    views = items[1:1 + len(CLEAN_VIEWS)]
    assert [it["set"] for it in views] == [f"pristine {v}" for v in CLEAN_VIEWS]
    assert all(it["kind"] is None for it in views) and [items[0], *items[1 + len(CLEAN_VIEWS):]] == plain

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (1200, 1600, 3), dtype=np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(big).save(tmp_path / "a" / "photo.png")
    base = np.asarray(Image.fromarray(big).resize((768, 576), Image.Resampling.LANCZOS))
    path = tmp_path / "a" / "photo.png"
    assert np.array_equal(clean_view(path, base, "mirrored"), base[:, ::-1])
    assert np.array_equal(clean_view(path, base, "cropped"), base[57:576 - 57, 76:768 - 76])
    assert clean_view(path, base, "larger").shape == (768, 1024, 3)
    with pytest.raises(ValueError, match="unknown clean view"):
        clean_view(path, base, "rotated")
    got = list(degraded_items([path], tmp_path, [], seed=0, clean_views=("mirrored",)))
    assert [it["set"] for _, it, _ in got] == ["pristine", "pristine mirrored"]
    (ref, _, img), (ref_m, _, img_m) = got
    assert ref is img and ref_m is img_m and np.array_equal(ref_m, ref[:, ::-1])  # each view its own original


def test_refine_benchmark_reports_clean_drops_over_all_clean_inputs_and_per_view():
    from benchmarks.refine import summarise

    def record(kind, set_, refined, kept):
        m = {"ssim": 1.0 if kind is None else 0.8, "psnr": 30.0, "score": 50.0, "niqe": 3.0}
        return {"kind": kind, "set": set_, "before": m, "refine": m | {"ssim": refined}, "generic": m | {"ssim": 0.9},
                "steps": [{"kept": kept}]}

    records = [record(None, "pristine", 1.0, False), record(None, "pristine", 0.998, True),
               record(None, "pristine mirrored", 0.99, True), record(None, "pristine mirrored", 1.0, False),
               record("jpeg", "global", 0.85, True)]
    clean = summarise(records, ["jpeg"])["pristine"]
    assert clean["n"] == 4 and clean["max_drop"] == pytest.approx(0.01) and clean["share_over_bar"] == 0.25
    assert clean["changed"] == 0.5 and clean["mean_drop"] == pytest.approx(0.003)
    photos, mirrored = clean["by_set"]["pristine"], clean["by_set"]["pristine mirrored"]
    assert photos["n"] == 2 and photos["max_drop"] == pytest.approx(0.002) and photos["share_over_bar"] == 0.0
    assert mirrored["max_drop"] == pytest.approx(0.01) and mirrored["share_over_bar"] == 0.5


def test_refine_benchmark_lists_are_known_names_or_none(tmp_path, capsys):
    from benchmarks.refine import CLEAN_VIEWS, main, names_arg

    views = names_arg(CLEAN_VIEWS)
    assert views("mirrored,larger") == ["mirrored", "larger"] and views("none") == []
    with pytest.raises(SystemExit):
        main(["--clean-views", "mirrored,rotated", "--out", str(tmp_path)])
    assert "unknown rotated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--kinds", "jpeg,fog", "--out", str(tmp_path)])
    assert "unknown fog" in capsys.readouterr().err


def test_refine_benchmark_takes_a_gate_file_or_none_not_both(tmp_path, capsys):
    from benchmarks.refine import main

    with pytest.raises(SystemExit):
        main(["--no-gate", "--gate", str(tmp_path / "gate.json"), "--out", str(tmp_path)])
    assert "choose one" in capsys.readouterr().err
