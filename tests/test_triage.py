"""`qds triage` end to end on a small hostile shoot: scoring, cache, bursts, sidecars, reports, picks, Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from qds_lite import triage as T
from qds_lite.cli import main
from qds_lite.xmp import QDS_NS

from .conftest import DATA

PHOTOS = sorted(DATA.glob("*.jpg")) + sorted(Path(__file__).parents[1].glob("examples/*.jpg"))


@pytest.fixture()
def shoot(tmp_path) -> Path:
    """Two subfolders of real photos, plus the junk a real card dump holds."""
    root = tmp_path / "shoot"
    (root / "day 1").mkdir(parents=True)
    (root / "день2").mkdir()
    for i, src in enumerate(PHOTOS):
        shutil.copy(src, root / ("day 1" if i % 2 else "день2") / src.name)
    (root / "day 1" / "empty.jpg").write_bytes(b"")
    (root / "day 1" / "text.jpg").write_text("not a photo")
    (root / "notes.txt").write_text("companion, ignored")
    (root / ".hidden.jpg").write_bytes(b"")
    (root / "day 1" / "loop").symlink_to("..")  # a symlink loop must end
    (root / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    return root


def triage(*args: str, cache: Path | None = None):
    extra = ["--cache", str(cache)] if cache else ["--no-cache"]
    return CliRunner().invoke(main, ["triage", "--workers", "1", *extra, *args])


def test_discover_skips_hidden_and_companions_and_ends_symlink_loops(shoot):
    photos, ignored = T.discover([shoot])
    names = sorted(p.path.name for p in photos)
    assert ignored == 1  # notes.txt
    assert ".hidden.jpg" not in names and "notes.txt" not in names
    assert names.count("coffee.jpg") == 1  # the loop did not make the folder appear twice
    errors = {p.path.name: p.error for p in photos if p.error}
    assert errors == {"dangling.jpg": "broken symbolic link"}
    assert len(photos) == len(PHOTOS) + 3  # + empty.jpg, text.jpg, dangling.jpg


def test_triage_scores_groups_and_writes_everything(shoot, tmp_path):
    out = tmp_path / "out"
    r = triage(str(shoot), "--csv", str(out / "all.csv"), "--jsonl", str(out / "all.jsonl"),
               "--html", str(out / "sheet.html"), "--copy-picks", str(tmp_path / "picks"), cache=tmp_path / "c.db")
    assert r.exit_code == 1, r.output  # some inputs failed, after the rest was done
    assert "empty.jpg: empty file" in r.stderr
    assert "text.jpg: not an image file" in r.stderr
    assert "dangling.jpg: broken symbolic link" in r.stderr
    listed = [line for line in r.stdout.splitlines() if line.strip()]
    assert len(listed) == len(PHOTOS)
    scores = [float(line.split()[0]) for line in listed]
    assert scores == sorted(scores, reverse=True)

    rows = list(csv.DictReader((out / "all.csv").open()))
    assert len(rows) == len(PHOTOS) + 3 and sum(bool(r["error"]) for r in rows) == 3
    records = [json.loads(line) for line in (out / "all.jsonl").read_text().splitlines()]
    good = [rec for rec in records if "error" not in rec]
    # the coffee variants are one scene: grouped, exactly one pick per group, the pick scores highest
    groups: dict[int, list[dict]] = {}
    for rec in good:
        groups.setdefault(rec["group"], []).append(rec)
    for members in groups.values():
        assert sum(m["pick"] for m in members) == 1
        pick = next(m for m in members if m["pick"])
        assert pick["score"] == max(m["score"] for m in members)
        assert all(m["group_size"] == len(members) for m in members)
    coffee = {rec["group"] for rec in good if "coffee" in rec["file"]}
    assert len(coffee) == 1 and len(groups[coffee.pop()]) == 4

    for rec in good:  # a sidecar per scored photo, with the rating the record reports
        text = Path(rec["file"] + ".xmp").read_text()  # files are listed as found under the folder given
        assert f'Rating="{rec["rating"]}"' in text and QDS_NS in text
    html = (out / "sheet.html").read_text()
    assert html.count("<img") >= len(PHOTOS) and (out / "sheet_files").is_dir()
    picks = sorted(p.name for p in (tmp_path / "picks").rglob("*.jpg"))
    assert picks == sorted(Path(rec["file"]).name for rec in good if rec["pick"] and rec["rating"] != -1)
    for src in shoot.rglob("*.jpg"):  # originals untouched
        if src.name in {p.name for p in PHOTOS}:
            assert src.read_bytes() == next(p for p in PHOTOS if p.name == src.name).read_bytes()


def test_rerun_is_cached_and_scores_only_new_files(shoot, tmp_path):
    cache = tmp_path / "c.db"
    first = triage(str(shoot), "--no-xmp", cache=cache)
    assert f"{len(PHOTOS)} new, 0 cached" in first.stderr
    again = triage(str(shoot), "--no-xmp", cache=cache)
    assert f"0 new, {len(PHOTOS)} cached" in again.stderr
    assert again.stdout == first.stdout  # the same ranking
    Image.open(PHOTOS[0]).rotate(90, expand=True).save(shoot / "new.jpg")  # one new photo
    shutil.copy(PHOTOS[1], shoot / "renamed copy.jpg")  # same content under a new name: no re-scoring
    third = triage(str(shoot), "--no-xmp", cache=cache)
    assert f"1 new, {len(PHOTOS) + 1} cached" in third.stderr


def test_options_and_model_are_part_of_the_cache_key(shoot, tmp_path):
    cache = tmp_path / "c.db"
    triage(str(shoot), "--no-xmp", cache=cache)
    other = triage(str(shoot), "--no-xmp", "--zooms", "1", cache=cache)
    assert f"{len(PHOTOS)} new, 0 cached" in other.stderr


def test_the_glance_alone_reads_a_draft_decode(tmp_path):
    """--zooms 0 needs no native pixels: a camera-sized JPEG is decoded at reduced size, and its record is
    what the critic says of that decode, with the photo's own size in the trace."""
    import qds_lite
    from qds_lite.io import load_image

    folder = tmp_path / "big"
    folder.mkdir()
    with Image.open(DATA / "rocket_clean.jpg") as im:
        im.convert("RGB").resize((im.width * 5, im.height * 5), Image.LANCZOS).save(folder / "big.jpg", quality=92)
    r = triage(str(folder), "--no-xmp", "--zooms", "0", "--jsonl", str(tmp_path / "all.jsonl"))
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "all.jsonl").read_text())
    quick = load_image(folder / "big.jpg", glance_only=True)
    assert not quick.native
    assert rec["score"] == round(qds_lite.load().score(quick, zooms=0).score, 2)
    assert rec["steps"] == [{"tool": "glance", "size": [256, 256], "native_px": list(quick.original_size)}]


def test_dry_run_writes_nothing(shoot, tmp_path):
    before = {p: p.read_bytes() for p in shoot.rglob("*") if p.is_file() and not p.is_symlink()}
    r = triage(str(shoot), "--dry-run", "--copy-picks", str(tmp_path / "picks"), cache=tmp_path / "c.db")
    assert "dry run: would create" in r.stderr and "dry run: would copy" in r.stderr
    after = {p: p.read_bytes() for p in shoot.rglob("*") if p.is_file() and not p.is_symlink()}
    assert after == before and not (tmp_path / "picks").exists()


def test_existing_sidecars_are_merged_and_human_ratings_kept(shoot, tmp_path):
    photo = next(shoot.rglob("coffee.jpg"))
    side = photo.with_name("coffee.jpg.xmp")
    side.write_text(
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dc="http://purl.org/dc/elements/1.1/"'
        ' xmp:Rating="2"><dc:subject><rdf:Bag><rdf:li>wedding</rdf:li></rdf:Bag></dc:subject>'
        '</rdf:Description></rdf:RDF></x:xmpmeta>')
    r = triage(str(photo), cache=tmp_path / "c.db")
    assert r.exit_code == 0, r.output
    text = side.read_text()
    assert 'Rating="2"' in text and "wedding" in text and QDS_NS in text
    assert "1 existing ratings kept" in r.stderr
    r = triage(str(photo), "--overwrite-ratings", cache=tmp_path / "c.db")
    assert 'Rating="2"' not in side.read_text()


def test_xmp_dir_mirrors_subfolders_and_replace_style(shoot, tmp_path):
    r = triage(str(shoot), "--xmp-dir", str(tmp_path / "side"), "--xmp-style", "replace", cache=tmp_path / "c.db")
    assert r.exit_code == 1  # the junk files
    assert (tmp_path / "side" / "day 1").is_dir() and (tmp_path / "side" / "день2").is_dir()
    assert not list(shoot.rglob("*.xmp"))
    assert sorted(p.name for p in (tmp_path / "side").rglob("*.xmp")) == sorted(p.stem + ".xmp" for p in PHOTOS)


def test_copy_picks_never_overwrites_another_file(shoot, tmp_path):
    photo = next(shoot.rglob("rocket_clean.jpg"))
    dest = tmp_path / "picks"
    (dest).mkdir()
    (dest / "rocket_clean.jpg").write_bytes(b"someone else's file")
    r = triage(str(photo), "--copy-picks", str(dest), cache=tmp_path / "c.db")
    assert r.exit_code == 1 and "already exists" in r.stderr
    assert (dest / "rocket_clean.jpg").read_bytes() == b"someone else's file"
    r = triage(str(photo), "--link-picks", str(tmp_path / "links"), cache=tmp_path / "c.db")
    assert r.exit_code == 0 and os.path.realpath(tmp_path / "links" / "rocket_clean.jpg") == str(photo.resolve())


def test_file_vanishing_mid_run_is_reported_and_the_run_goes_on(shoot, tmp_path):
    victims = sorted(shoot.rglob("rocket_*.jpg"))

    def progress(total):
        def done(photo):
            if victims[-1].exists() and photo.path != victims[-1]:
                victims[-1].unlink()
        return done

    run = T.run([shoot], workers=1, cache_path=tmp_path / "c.db", progress=progress)
    gone = [p for p in run.photos if p.path == victims[-1]]
    assert gone and gone[0].error == "file vanished during the run"
    assert len(run.scored) == len(PHOTOS) - 1


def test_interrupt_keeps_what_was_scored(shoot, tmp_path, monkeypatch):
    cache = tmp_path / "c.db"
    real = T._score_one
    calls = []

    def flaky(task):
        calls.append(task)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(T, "_score_one", flaky)
    r = triage(str(shoot), "--no-xmp", cache=cache)
    assert r.exit_code == 130 and "interrupted" in r.stderr
    monkeypatch.setattr(T, "_score_one", real)
    again = triage(str(shoot), "--no-xmp", cache=cache)
    assert f"{len(PHOTOS) - 2} new, 2 cached" in again.stderr


@pytest.mark.slow
def test_worker_processes_give_the_same_results(shoot, tmp_path):
    one = T.run([shoot], workers=1, cache_path=tmp_path / "a.db")
    two = T.run([shoot], workers=2, cache_path=tmp_path / "b.db")
    key = lambda run: sorted((p.display, p.score, p.error) for p in run.photos)  # noqa: E731
    assert key(one) == key(two)
