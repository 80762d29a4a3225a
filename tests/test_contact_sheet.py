"""The triage contact sheet: escaping, files beside the page, atomic streaming write, and a real headless browser."""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qds_lite.contact_sheet import write_contact_sheet

ROOT = Path(__file__).resolve().parent.parent
EVIL = "<script>alert(1)</script>.jpg"


def _thumb(path: Path) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((320, 320))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
        return buf.getvalue()


def _rec(src: str, file: str, score: float, group: int, group_size: int, pick: bool, rating: int, **kw) -> dict:
    level = ("bad", "poor", "fair", "good", "excellent")[min(4, int(score // 20))]
    probs = [0.05] * 5
    probs[min(4, int(score // 20))] = 0.8
    return {"src": src, "file": file, "score": score, "level": level, "level_probs": probs, "rationale": kw.pop(
        "rationale", f"{level} overall."), "rating": rating, "group": group, "group_size": group_size, "pick": pick,
        "error": None, "findings": kw.pop("findings", []), **kw}


def records() -> Iterator[dict]:
    """A small shoot from the repository's real photos: two bursts, a rejected single, a hostile name, a failure."""
    noise = {"type": "noise", "severity": 0.62, "box": [0.55, 0.10, 0.80, 0.35], "evidence_zoom": 1}
    blur = {"type": "motion_blur", "severity": 0.9, "box": [0.2, 0.2, 0.7, 0.8], "evidence_zoom": 1}
    dark = {"type": "underexposure", "severity": 0.5, "box": [0.0, 0.0, 1.0, 1.0], "evidence_zoom": 0}
    yield _rec("tests/data/coffee_clean.jpg", "coffee/IMG_0001.jpg", 88.0, 0, 4, True, 5)
    yield _rec("examples/coffee.jpg", "coffee/IMG_0002.jpg", 79.5, 0, 4, False, 3, findings=[noise])
    yield _rec("tests/data/coffee_jpeg_local.jpg", "coffee/IMG_0003.jpg", 52.0, 0, 4, False, 2,
               findings=[{**noise, "type": "jpeg", "severity": 0.4}])
    yield _rec("tests/data/coffee_dark.jpg", "coffee/IMG_0004.jpg", 31.0, 0, 4, False, 1, findings=[dark])
    yield _rec("tests/data/rocket_clean.jpg", "rocket/DSC_0100.jpg", 71.0, 1, 2, True, 4, link="rocket/DSC_0100.jpg")
    yield _rec("tests/data/rocket_blur.jpg", "rocket/DSC_0101.jpg", 24.0, 1, 2, False, -1, findings=[blur])
    yield _rec("examples/rocket_shake.jpg", EVIL, 12.0, 2, 1, True, -1, findings=[blur],
               rationale='Shaky "hand" & <b>blur</b> — überall.')
    yield {"file": "broken/ärger<1>.jpg", "error": "truncated JPEG data"}


def thumbnail(rec: dict) -> bytes | None:
    return _thumb(ROOT / rec["src"])


@pytest.fixture
def sheet(tmp_path: Path) -> Path:
    return write_contact_sheet(records(), tmp_path / "report.html", thumbnail, title="Shoot <2024> & co")


def test_escapes_everything_from_the_user(sheet: Path) -> None:
    page = sheet.read_text(encoding="utf-8")
    assert EVIL not in page and "<b>blur</b>" not in page and "<2024>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in page
    assert "Shoot &lt;2024&gt; &amp; co" in page and "überall" in page
    assert page.count("<script") == 2  # the JSON summary and the page's own script, nothing from the data


def test_thumbnails_beside_the_page_named_by_index(sheet: Path) -> None:
    files = sorted(p.name for p in (sheet.parent / "report_files").iterdir())
    assert len(files) == 7 and all(re.fullmatch(rf"[0-9a-f]{{8}}-{i:06d}\.jpg", n) for i, n in enumerate(files))
    page = sheet.read_text(encoding="utf-8")
    assert all(f'src="report_files/{name}"' in page for name in files)  # the failed 8th record gets none
    assert 'href="rocket/DSC_0100.jpg"' in page


def test_failed_files_have_their_own_section(sheet: Path) -> None:
    page = sheet.read_text(encoding="utf-8")
    failed = page[page.index('<section id="failed">'):]
    assert "Failed (1)" in failed and "broken/ärger&lt;1&gt;.jpg" in failed and "truncated JPEG data" in failed
    assert '"failed": 1' in page and '"total": 8' in page and '"picks": 3' in page and '"rejected": 2' in page


def test_streams_from_a_generator_and_writes_atomically(tmp_path: Path) -> None:
    seen = []

    def gen() -> Iterator[dict]:
        for rec in records():
            seen.append(rec["file"])
            yield rec

    out = write_contact_sheet(gen(), tmp_path / "r.html", lambda r: None if "coffee" in r["file"] else thumbnail(r))
    assert len(seen) == 8 and "no preview" in out.read_text(encoding="utf-8")
    assert sorted(os.listdir(tmp_path)) == ["r.html", "r_files"]  # no temporary file left behind
    before = (out.read_bytes(), sorted(os.listdir(tmp_path / "r_files")))
    assert len(before[1]) == 3

    def boom() -> Iterator[dict]:
        yield from records()
        raise RuntimeError("scoring crashed")

    with pytest.raises(RuntimeError):
        write_contact_sheet(boom(), tmp_path / "r.html", thumbnail)
    # the old report and exactly its thumbnails survive, whole; nothing of the failed run remains
    assert sorted(os.listdir(tmp_path)) == ["r.html", "r_files"]
    assert (out.read_bytes(), sorted(os.listdir(tmp_path / "r_files"))) == before

    (tmp_path / "r_files" / "mine.jpg").write_bytes(b"not ours")
    write_contact_sheet(records(), tmp_path / "r.html", thumbnail)  # a re-run replaces the old thumbnails
    page, now = out.read_text(encoding="utf-8"), sorted(os.listdir(tmp_path / "r_files"))
    assert len(now) == 8 and "mine.jpg" in now and not set(before[1]) & set(now)
    assert all(f"r_files/{n}" in page for n in now if n != "mine.jpg")


def _chrome():
    """A headless Debian chromium driven by Debian's matching chromedriver, or a skip saying what to install."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("QDS_REQUIRE_BROWSER"):
            pytest.fail("QDS_REQUIRE_BROWSER is set but chromium/chromedriver are missing")
        pytest.skip("needs a headless browser: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium: pip install 'qds-lite[test]'")
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,900"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))  # never Selenium Manager's download
    return webdriver.Chrome(options=opts, service=service)


def screenshot_sheet(sheet: Path, png: Path) -> None:
    driver = _chrome()
    try:
        driver.get(sheet.as_uri())
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight); window.scrollTo(0, 0)")
        # every thumbnail loaded (a missing one would be a failed request), and nothing logged as an error
        broken = driver.execute_script(
            "return [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
        assert broken == []
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        assert errors == []
        visible = "return [...document.querySelectorAll('.card')].filter(c => c.offsetParent !== null).length"
        assert driver.execute_script(visible) == 7
        assert driver.find_element("id", "shown").text == "7"
        driver.find_element("css selector", "[data-mode=picks]").click()
        assert driver.execute_script(visible) == 3
        driver.find_element("css selector", "[data-mode=all]").click()
        driver.find_element("css selector", "[data-filter-level=good]").click()
        assert driver.execute_script(visible) == 5
        driver.find_element("css selector", "[data-filter-level=good]").click()
        slide = "const m = document.getElementById('min'); m.value = arguments[0]; m.dispatchEvent(new Event('input'))"
        driver.execute_script(slide, 50)
        assert driver.execute_script(visible) == 4
        driver.execute_script(slide, 0)
        assert driver.find_element("css selector", "[data-n=failed]").text == "1"
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the whole page, not just the window
                               {"width": 1400, "height": height, "deviceScaleFactor": 1, "mobile": False})
        assert driver.get_screenshot_as_file(str(png))
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


def test_opens_in_a_real_browser(sheet: Path, tmp_path: Path) -> None:
    png = tmp_path / "sheet.png"
    screenshot_sheet(sheet, png)
    pixels = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert pixels.shape[1] >= 1000 and pixels.std() > 20  # photos and text, not a blank page
