"""qds explain: the annotated picture and the HTML page, from the real critic (numpy backend)."""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qds_lite.errors import QdsError
from qds_lite.explain import (
    CHECK_COLOUR,
    ZOOM_COLOUR,
    render_explanation,
    render_html,
    severity_colour,
    write_explanation,
    write_explanation_html,
)
from qds_lite.io import load_image
from qds_lite.result import Finding

DATA = Path(__file__).parent / "data"
DARK = DATA / "coffee_dark.jpg"  # 600 x 400


@pytest.fixture(scope="module")
def critic():
    import qds_lite

    return qds_lite.load(backend="numpy")


@pytest.fixture(scope="module")
def dark(critic):
    return critic.score(DARK)


def photo_height(width: int, path: Path = DARK) -> int:
    w, h = Image.open(path).size
    return round(width * h / w)


def has_colour(pixels: np.ndarray, colour) -> bool:
    return bool((pixels.reshape(-1, 3) == np.array(colour, np.uint8)).all(axis=1).any())


def test_size_and_photo_area(dark):
    out = render_explanation(load_image(DARK), dataclasses.replace(dark, findings=(), steps=dark.steps[:1]), width=800)
    assert out.mode == "RGB" and out.width == 800 and out.height > photo_height(800) + 200  # panel below
    # away from the boxes, the top part is the photo itself
    ref = np.asarray(Image.open(DARK).convert("RGB").resize((800, photo_height(800)), Image.LANCZOS), np.int16)
    got = np.asarray(out, np.int16)[: photo_height(800)]
    assert np.abs(got[250:300, 300:500] - ref[250:300, 300:500]).mean() < 3


def test_finding_boxes_drawn_where_the_findings_are(dark):
    box = (0.5, 0.5, 1.0, 1.0)
    found = dataclasses.replace(dark, findings=(Finding("noise", 0.9, box, None),), steps=dark.steps[:1])
    bare = dataclasses.replace(dark, findings=(), steps=dark.steps[:1])
    colour = severity_colour(0.9)
    got = np.asarray(render_explanation(DARK, found, width=1200))
    ref = np.asarray(render_explanation(DARK, bare, width=1200))
    x0, y0, x1, y1 = 600, photo_height(1200) // 2, 1199, photo_height(1200) - 1
    band = 12  # the frame lies within this many pixels inside each edge
    edges = {"left": got[y0 + 60:y1 - 60, x0:x0 + band], "right": got[y0 + 60:y1 - 60, x1 - band:x1 + 1],
             "top": got[y0:y0 + band, x0 + 60:x1 - 60], "bottom": got[y1 - band:y1 + 1, x0 + 60:x1 - 60]}
    for name, strip in edges.items():
        assert has_colour(strip, colour), name
        frac = (strip.reshape(-1, 3) == np.array(colour, np.uint8)).all(axis=1).mean()
        assert frac > 0.2, name  # a solid line, not a stray pixel
    assert not has_colour(ref[y0:y1, x0:x1], colour)
    # the label sits just above the box, on the severity colour
    assert has_colour(got[y0 - 60:y0, x0:x0 + 400], colour)
    # nothing of that colour in the other quadrants, where there is no finding
    assert not has_colour(got[: y0 - 60, : x0 - 1], colour)


def test_zoom_boxes_and_insets(dark):
    zooms = [st for st in dark.steps if st["tool"] == "zoom"]
    assert zooms, "the critic zoomed"
    got = np.asarray(render_explanation(DARK, dataclasses.replace(dark, findings=()), width=1200))
    h = photo_height(1200)
    for z in zooms:
        x0, y0 = round(z["box"][0] * 1200), round(z["box"][1] * h)
        assert has_colour(got[y0:y0 + 12, x0 + 60:x0 + 200], ZOOM_COLOUR)  # the box's top edge
    assert has_colour(got[h:], ZOOM_COLOUR)  # the numbered insets in the panel


def test_check_boxes_drawn_apart_from_the_zooms(dark):
    checks = [st for st in dark.steps if st["tool"] == "check"]
    assert checks, "the critic checked suspect cells after its verdict"
    got = np.asarray(render_explanation(DARK, dataclasses.replace(dark, findings=()), width=1200))
    bare = np.asarray(render_explanation(DARK, dataclasses.replace(dark, findings=(), steps=dark.steps[:1]),
                                         width=1200))
    h = photo_height(1200)
    for c in checks:
        x0, y0 = round(c["box"][0] * 1200), round(c["box"][1] * h)
        assert has_colour(got[y0:y0 + 12, x0 + 80:x0 + 200], CHECK_COLOUR)  # the box's top edge
    assert not has_colour(bare[:h], CHECK_COLOUR)
    assert not has_colour(got[h:], CHECK_COLOUR)  # the panel's insets are the zooms' alone


def test_photo_without_findings_renders(critic):
    clean = critic.score(DATA / "coffee_clean.jpg")
    out = render_explanation(Image.open(DATA / "coffee_clean.jpg"), clean)  # a PIL image is fine too
    assert out.width == 1200
    nothing = dataclasses.replace(clean, findings=(), steps=clean.steps[:1], rationale="")
    assert render_explanation(DATA / "coffee_clean.jpg", nothing, width=400).width == 400


def test_result_of_another_image_is_refused(dark):
    with pytest.raises(QdsError, match="600 x 400"):
        render_explanation(DATA / "rocket_clean.jpg", dark)


def test_never_overwrites_the_input(dark, tmp_path):
    src = tmp_path / "photo.jpg"
    shutil.copy(DARK, src)
    before = src.read_bytes()
    link = tmp_path / "link.png"
    link.symlink_to(src)
    os.link(src, tmp_path / "hard.jpg")
    for out in (src, tmp_path / "sub" / ".." / "photo.jpg", link, tmp_path / "hard.jpg"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(QdsError, match="overwrite the input"):
            write_explanation(src, dark, out)
        with pytest.raises(QdsError, match="overwrite the input"):
            write_explanation_html(src, dark, out)
    with pytest.raises(QdsError, match="overwrite the input"):  # a loaded image with its path named
        write_explanation(load_image(src), dark, link, input_path=src)
    assert src.read_bytes() == before


def test_atomic_write(dark, tmp_path, monkeypatch):
    out = tmp_path / "explained.png"
    write_explanation(DARK, dark, out, width=600)
    assert Image.open(out).size[0] == 600 and Image.open(out).format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explained.png"]
    before = out.read_bytes()

    def crash(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qds_lite.atomic.os.fsync", crash)
    with pytest.raises(QdsError, match="cannot write"):
        write_explanation(DARK, dark, out, width=800)
    assert out.read_bytes() == before  # the old file is untouched ...
    assert sorted(p.name for p in tmp_path.iterdir()) == ["explained.png"]  # ... and no temporary file is left


def test_html_embeds_crops_and_nothing_external(dark):
    page = render_html(DARK, dark)
    zooms = [st for st in dark.steps if st["tool"] == "zoom"]
    checks = [st for st in dark.steps if st["tool"] == "check"]
    assert checks, "the critic checked suspect cells after its verdict"
    crops = dict(re.findall(r'<img id="crop-(\w+)" src="data:image/jpeg;base64,([^"]+)"', page))
    unseen = [n for n, f in enumerate(dark.findings) if f.evidence_zoom is None]  # boxed where no zoom looked
    assert sorted(crops) == sorted([f"z{n}" for n in range(1, len(zooms) + 1)] +
                                   [f"c{n}" for n in range(1, len(checks) + 1)] + [f"f{n}" for n in unseen])
    native = np.asarray(Image.open(DARK).convert("RGB"), np.int16)
    for key, z in [(f"z{n}", z) for n, z in enumerate(zooms, 1)] + [(f"c{n}", c) for n, c in enumerate(checks, 1)]:
        x0, y0, x1, y1 = z["window"]
        crop = Image.open(io.BytesIO(base64.b64decode(crops[key])))
        assert crop.size == (x1 - x0, y1 - y0)  # native pixels, not the downscaled photo
        assert np.abs(np.asarray(crop, np.int16) - native[y0:y1, x0:x1]).mean() < 4
    for n, f in enumerate(dark.findings):  # hovering a finding shows the zoom that saw it, else its own box
        crop = f"f{n}" if n in unseen else f"z{f.evidence_zoom}"
        assert f'data-crop="{crop}" data-caption="{html.escape(f.describe())}"' in page
    assert page.count('class="box zoom"') == len(zooms) and page.count('class="box check"') == len(checks)
    text = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"(src|href)=\"(?!data:)", page) and "http" not in text and "@import" not in text


def test_html_escapes_a_hostile_file_name(critic, tmp_path):
    name = '<img src=x onerror="alert(1)">&.jpg'
    src = tmp_path / name
    shutil.copy(DARK, src)
    result = critic.score(src)
    assert result.file == name
    out = tmp_path / "page.html"
    write_explanation_html(src, result, out)
    page = out.read_text(encoding="utf-8")
    assert name not in page and "<img src=x" not in page and html.escape(name) in page
    assert page.startswith("<!doctype html>")
