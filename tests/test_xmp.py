"""XMP sidecars: every check of what other tools see goes through exiv2 (pyexiv2), the library digiKam and
darktable read sidecars with, not through our own parser."""

from __future__ import annotations

import os
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import pytest

from qds_lite.errors import QdsError
from qds_lite.result import Finding
from qds_lite.xmp import QDS_NS, SidecarError, Verdict, rating_for, sidecar_path, write_sidecar

XMP_DATA = Path(__file__).parent / "data" / "xmp"
FIXTURES = sorted(p.name for p in XMP_DATA.glob("*.xmp"))
FINDINGS = (Finding("motion_blur", 0.7, (0.1, 0.2, 0.55, 0.60004), 1),
            Finding("noise", 0.3, (0.0, 0.0, 1.0, 1.0), None))


def verdict(**kw) -> Verdict:
    base = dict(score=77.25, level="good", rating=4, model="qds-tiny", model_sha256="0123abcd" * 8,
                findings=FINDINGS, burst_group="burst-007", pick=True)
    return Verdict(**{**base, **kw})


@pytest.fixture
def exiv2():
    """Read a sidecar's XMP the way digiKam/darktable do: a dict like {'Xmp.xmp.Rating': '4', ...}."""
    pyexiv2 = pytest.importorskip("pyexiv2", reason="the independent XMP reader: pip install -e .[test]")

    def read(path: Path) -> dict[str, str]:
        img = pyexiv2.Image(str(path))
        try:
            return img.read_xmp()
        finally:
            img.close()

    read.module = pyexiv2
    return read


def copy_fixture(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copyfile(XMP_DATA / name, dst)
    return dst


def foreign(data: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in data.items() if not k.startswith("Xmp.qds.")}


def test_create_new(tmp_path, exiv2):
    path = tmp_path / "IMG_0001.jpg.xmp"
    ch = write_sidecar(path, verdict())
    assert (ch.created, ch.changed, ch.wrote, ch.old_rating, ch.new_rating, ch.kept_existing_rating) == (
        True, True, True, None, 4, False)
    assert path.read_bytes().startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<x:xmpmeta')
    x = exiv2(path)
    assert x["Xmp.xmp.Rating"] == "4" and x["Xmp.xmp.Label"] == "Green"
    assert (x["Xmp.qds.Score"], x["Xmp.qds.Level"], x["Xmp.qds.Model"]) == ("77.25", "good", "qds-tiny")
    assert x["Xmp.qds.ModelSHA256"] == "0123abcd" * 8 and x["Xmp.qds.BurstGroup"] == "burst-007"
    assert x["Xmp.qds.Pick"] == "True" and x["Xmp.qds.Rating"] == "4"
    assert x["Xmp.qds.Findings[1]/qds:type"] == "motion_blur" and x["Xmp.qds.Findings[1]/qds:severity"] == "0.70"
    assert x["Xmp.qds.Findings[1]/qds:box"] == "0.1,0.2,0.55,0.6"
    assert x["Xmp.qds.Findings[2]/qds:box"] == "0,0,1,1"
    assert "Xmp.qds.Findings[3]/qds:type" not in x


def foreign_items(elem: ET.Element) -> list[tuple]:
    """Every non-qds element (tag, non-qds attributes, text), depth first; qds subtrees are skipped."""
    if not isinstance(elem.tag, str) or elem.tag.startswith("{" + QDS_NS):
        return []
    attrs = sorted((k, v) for k, v in elem.attrib.items() if not k.startswith("{" + QDS_NS))
    return [(elem.tag, attrs, (elem.text or "").strip())] + [i for child in elem for i in foreign_items(child)]


@pytest.mark.parametrize("name", FIXTURES)
def test_merge_keeps_everything_foreign(tmp_path, exiv2, name):
    path = copy_fixture(name, tmp_path)
    before_text, before_x, before_xml = path.read_text("utf-8"), exiv2(path), foreign_items(ET.parse(path).getroot())
    ch = write_sidecar(path, verdict(pick=False))
    after_text, after_x = path.read_text("utf-8"), exiv2(path)
    assert not ch.created and ch.wrote and ch.kept_existing_rating
    # the human rating (and Lightroom's "Red" label) stays: every non-qds property is exactly as before ...
    assert foreign(after_x) == foreign(before_x)
    assert after_x["Xmp.qds.Score"] == "77.25" and after_x["Xmp.qds.Findings[2]/qds:type"] == "noise"
    # ... and so is every foreign element, attribute and text, in document order
    assert foreign_items(ET.parse(path).getroot()) == before_xml
    for prefix in re.findall(r"xmlns:(\w+)=", before_text):  # prefixes as the other tool wrote them
        assert f"xmlns:{prefix}=" in after_text
    assert "xmlns:ns0" not in after_text


def test_prefixes_of_unknown_namespaces_survive(tmp_path, exiv2):
    path = tmp_path / "a.xmp"
    path.write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax'
                    '-ns#"><rdf:Description rdf:about="" xmlns:acme="http://acme.example/ns/1.0/" acme:Mood="calm">'
                    '<acme:Tags><rdf:Bag><rdf:li>a</rdf:li></rdf:Bag></acme:Tags></rdf:Description></rdf:RDF>'
                    '</x:xmpmeta>', encoding="utf-8")
    write_sidecar(path, verdict())
    text = path.read_text(encoding="utf-8")
    assert 'xmlns:acme="http://acme.example/ns/1.0/"' in text and 'acme:Mood="calm"' in text
    x = exiv2(path)
    assert x["Xmp.acme.Mood"] == "calm" and x["Xmp.acme.Tags"] == ["a"] and x["Xmp.xmp.Rating"] == "4"


@pytest.mark.parametrize("name", [*FIXTURES, None])
def test_rerun_is_idempotent(tmp_path, name):
    path = copy_fixture(name, tmp_path) if name else tmp_path / "new.jpg.xmp"
    assert write_sidecar(path, verdict()).changed
    data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    ch = write_sidecar(path, verdict())
    assert (ch.changed, ch.wrote, ch.created) == (False, False, False)
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime


def test_old_qds_data_is_replaced(tmp_path, exiv2):
    path = tmp_path / "a.jpg.xmp"
    write_sidecar(path, verdict())
    ch = write_sidecar(path, verdict(score=41.0, level="fair", rating=2, findings=FINDINGS[1:], burst_group=None,
                                     pick=False))
    x = exiv2(path)
    assert ch.changed and ch.new_rating == 2 and not ch.kept_existing_rating
    assert (x["Xmp.xmp.Rating"], x["Xmp.qds.Score"], x["Xmp.qds.Pick"]) == ("2", "41.00", "False")
    assert x["Xmp.qds.Findings[1]/qds:type"] == "noise" and "Xmp.qds.Findings[2]/qds:type" not in x
    assert "Xmp.qds.BurstGroup" not in x
    assert "Xmp.xmp.Label" not in x, "qds removes the pick label it wrote itself"
    assert path.read_text(encoding="utf-8").count("qds:Findings>") == 2  # one element (open + close tag)


def test_human_rating_kept_unless_told(tmp_path, exiv2):
    path = tmp_path / "a.jpg.xmp"
    write_sidecar(path, verdict(rating=4))
    img = exiv2.module.Image(str(path))  # a person re-rates it in an exiv2-based tool (digiKam)
    img.modify_xmp({"Xmp.xmp.Rating": "2"})
    img.close()

    ch = write_sidecar(path, verdict(rating=5))
    assert (ch.old_rating, ch.new_rating, ch.kept_existing_rating) == (2, 2, True)
    x = exiv2(path)
    assert x["Xmp.xmp.Rating"] == "2" and x["Xmp.qds.SuggestedRating"] == "5" and "Xmp.qds.Rating" not in x
    assert write_sidecar(path, verdict(rating=5)).kept_existing_rating, "still the human's on the next run"

    ch = write_sidecar(path, verdict(rating=5), respect_existing_rating=False)
    assert (ch.old_rating, ch.new_rating, ch.kept_existing_rating) == (2, 5, False)
    assert exiv2(path)["Xmp.xmp.Rating"] == "5"
    ch = write_sidecar(path, verdict(rating=3))  # qds's own rating is qds's to update
    assert (ch.new_rating, ch.kept_existing_rating) == (3, False) and exiv2(path)["Xmp.xmp.Rating"] == "3"


@pytest.mark.parametrize("existing", ['xmp:Rating="0"', '<xmp:Rating>0</xmp:Rating>', ""])
def test_rating_zero_or_absent_means_unrated(tmp_path, exiv2, existing):
    attr, elem = (existing, "") if existing.startswith("xmp:") else ("", existing)
    path = tmp_path / "a.xmp"
    path.write_text(f'<?xml version="1.0"?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.o'
                    f'rg/1999/02/22-rdf-syntax-ns#"><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/'
                    f'1.0/" {attr}>{elem}</rdf:Description></rdf:RDF></x:xmpmeta>', encoding="utf-8")
    ch = write_sidecar(path, verdict(rating=-1))
    assert not ch.kept_existing_rating and ch.new_rating == -1 and exiv2(path)["Xmp.xmp.Rating"] == "-1"
    assert path.read_text(encoding="utf-8").count("xmp:Rating") == (2 if elem else 1), "updated in place"


def test_labels(tmp_path, exiv2):
    lr = copy_fixture("lightroom.xmp", tmp_path)
    assert write_sidecar(lr, verdict(pick=True)).kept_existing_label and exiv2(lr)["Xmp.xmp.Label"] == "Red"
    assert write_sidecar(lr, verdict(pick=False)).kept_existing_label and exiv2(lr)["Xmp.xmp.Label"] == "Red"
    write_sidecar(lr, verdict(pick=True), respect_existing_rating=False)
    assert exiv2(lr)["Xmp.xmp.Label"] == "Green"

    new = tmp_path / "b.jpg.xmp"
    write_sidecar(new, verdict(pick=True), pick_label="Purple")
    assert exiv2(new)["Xmp.xmp.Label"] == "Purple"
    write_sidecar(new, verdict(pick=False), pick_label=None)  # None: labels are not qds's business
    assert exiv2(new)["Xmp.xmp.Label"] == "Purple"


def test_dry_run_writes_nothing(tmp_path):
    path = copy_fixture("darktable.NEF.xmp", tmp_path)
    data, mtime = path.read_bytes(), path.stat().st_mtime_ns
    ch = write_sidecar(path, verdict(), respect_existing_rating=False, dry_run=True)
    assert (ch.changed, ch.wrote, ch.old_rating, ch.new_rating) == (True, False, 3, 4)
    assert path.read_bytes() == data and path.stat().st_mtime_ns == mtime
    missing = tmp_path / "sub" / "new.jpg.xmp"
    ch = write_sidecar(missing, verdict(), dry_run=True)
    assert ch.created and ch.changed and not ch.wrote and not missing.parent.exists()
    assert sorted(os.listdir(tmp_path)) == ["darktable.NEF.xmp"]


CORRUPT = {
    "binary": b"\x00\x01\x02garbage",
    "truncated": (XMP_DATA / "darktable.NEF.xmp").read_bytes()[:700],
    "not_xmp": b"<html><body>hello</body></html>",
    "empty": b"",
    "billion_laughs": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
                      b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&b;</x:xmpmeta>',
    "external_entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                       b'<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>',
}


@pytest.mark.parametrize("kind", CORRUPT)
def test_corrupt_sidecar_is_refused_and_untouched(tmp_path, kind):
    path = tmp_path / "bad file.jpg.xmp"
    path.write_bytes(CORRUPT[kind])
    with pytest.raises(SidecarError, match="bad file.jpg.xmp: not an XMP sidecar") as err:
        write_sidecar(path, verdict())
    assert isinstance(err.value, QdsError) and err.value.hint
    assert path.read_bytes() == CORRUPT[kind] and os.listdir(tmp_path) == [path.name]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions and a non-root user")
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(SidecarError, match=r"ro/a\.jpg\.xmp: cannot write sidecar"):
            write_sidecar(folder / "a.jpg.xmp", verdict())
    finally:
        folder.chmod(0o755)


def test_unwritable_destination(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(SidecarError, match=r"not_a_dir/a\.jpg\.xmp: cannot write sidecar") as err:
        write_sidecar(blocker / "a.jpg.xmp", verdict())
    assert err.value.hint


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    path = copy_fixture("lightroom.xmp", tmp_path)
    data = path.read_bytes()

    def boom(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(SidecarError, match="No space left on device"):
        write_sidecar(path, verdict())
    assert path.read_bytes() == data and os.listdir(tmp_path) == ["lightroom.xmp"]


def test_no_temp_files_and_permissions_kept(tmp_path):
    path = copy_fixture("darktable.NEF.xmp", tmp_path)
    path.chmod(0o640)
    write_sidecar(path, verdict())
    write_sidecar(tmp_path / "b.jpg.xmp", verdict())
    assert sorted(os.listdir(tmp_path)) == ["b.jpg.xmp", "darktable.NEF.xmp"]
    assert path.stat().st_mode & 0o777 == 0o640


def test_refuses_to_touch_the_photo(tmp_path):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(SidecarError, match="does not end in .xmp"):
        write_sidecar(photo, verdict())
    assert photo.read_bytes() == b"\xff\xd8\xff\xe0 not really a jpeg"


def test_xpacket_wrapper_and_split_descriptions(tmp_path, exiv2):
    """Older Adobe files: an xpacket wrapper and one rdf:Description per namespace, rating as an element."""
    path = tmp_path / "old.xmp"
    path.write_text('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
                    '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                    '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:format>image/jpeg'
                    '</dc:format></rdf:Description><rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/'
                    '1.0/"><xmp:Rating>0</xmp:Rating></rdf:Description></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>',
                    encoding="utf-8")
    write_sidecar(path, verdict())
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<?xpacket begin=") and text.rstrip().endswith('<?xpacket end="w"?>')
    assert text.count("xmp:Rating") == 2 and text.count("<rdf:Description") == 2
    x = exiv2(path)
    assert x["Xmp.xmp.Rating"] == "4" and x["Xmp.dc.format"] == "image/jpeg" and x["Xmp.qds.Level"] == "good"


def test_non_ascii_and_spaces(tmp_path, exiv2):
    folder = tmp_path / "Shoot 2023 — Ålesund"
    folder.mkdir()
    photo = folder / "Zoë café 01.JPG"
    photo.write_bytes(b"photo")
    path = sidecar_path(photo, "append")
    assert path.name == "Zoë café 01.JPG.xmp"
    write_sidecar(path, verdict(model="critique-é", burst_group="rafale «1» & <2>"))
    x = exiv2(path)
    assert x["Xmp.qds.Model"] == "critique-é" and x["Xmp.qds.BurstGroup"] == "rafale «1» & <2>"
    assert photo.read_bytes() == b"photo"
    assert not write_sidecar(path, verdict(model="critique-é", burst_group="rafale «1» & <2>")).changed


@pytest.mark.parametrize(("score", "rating"), [
    (100, 5), (85, 5), (84.99, 4), (70, 4), (69.99, 3), (50, 3), (49.99, 2), (35, 2), (34.99, 1), (20, 1),
    (19.99, -1), (0, -1)])
def test_rating_for_boundaries(score, rating):
    assert rating_for(score) == rating


def test_rating_for_options():
    assert rating_for(5, reject_below=0) == 1
    assert rating_for(30, reject_below=40) == -1
    assert [rating_for(s, thresholds=(90, 80, 60, 40)) for s in (95, 85, 65, 45, 39)] == [5, 4, 3, 2, 1]
    with pytest.raises(QdsError, match="descending"):
        rating_for(50, thresholds=(35, 50, 70, 85))
    with pytest.raises(QdsError, match="4 descending"):
        rating_for(50, thresholds=(80, 60))
    with pytest.raises(QdsError, match="NaN"):
        rating_for(float("nan"))


def test_sidecar_path_styles(tmp_path):
    shoot = tmp_path / "shoot"
    photo = shoot / "day1" / "IMG_0001.CR2"
    assert sidecar_path(photo, "append") == shoot / "day1" / "IMG_0001.CR2.xmp"
    assert sidecar_path(photo, "replace") == shoot / "day1" / "IMG_0001.xmp"
    assert sidecar_path(shoot / "README", "replace") == shoot / "README.xmp"
    out = tmp_path / "xmp"
    assert sidecar_path(photo, "append", out) == out / "IMG_0001.CR2.xmp"
    assert sidecar_path(photo, "replace", out, relative_to=shoot) == out / "day1" / "IMG_0001.xmp"
    other = shoot / "day2" / "IMG_0001.CR2"
    assert sidecar_path(other, "append", out, relative_to=shoot) != sidecar_path(photo, "append", out,
                                                                                 relative_to=shoot)
    with pytest.raises(QdsError, match="not inside"):
        sidecar_path(tmp_path / "elsewhere" / "a.jpg", "append", out, relative_to=shoot)
    with pytest.raises(QdsError, match="unknown XMP sidecar style") as err:
        sidecar_path(photo, "lightroom")
    assert "append" in err.value.hint


def test_xmp_dir_mirrors_subfolders_when_writing(tmp_path, exiv2):
    shoot, out = tmp_path / "shoot", tmp_path / "sidecars"
    paths = [sidecar_path(shoot / d / "a.jpg", "append", out, relative_to=shoot) for d in ("x", "y/z")]
    for i, p in enumerate(paths):
        write_sidecar(p, verdict(rating=i + 1))
    assert [exiv2(p)["Xmp.xmp.Rating"] for p in paths] == ["1", "2"]


def test_verdict_from_result():
    result = SimpleNamespace(score=88.0, level="excellent", model={"name": "qds-tiny", "sha256": "ff" * 32},
                             findings=list(FINDINGS))
    v = Verdict.from_result(result, burst_group="b1", pick=True)
    assert (v.rating, v.model, v.model_sha256, v.findings, v.pick) == (5, "qds-tiny", "ff" * 32, FINDINGS, True)
    assert Verdict.from_result(result, rating=-1).rating == -1
    with pytest.raises(QdsError, match="1..5"):
        Verdict.from_result(result, rating=0)
