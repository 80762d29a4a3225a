"""export.distill: a VLM teacher's trajectories as the small critic's training records.

The fast tests use a stand-in teacher (grid mapping, records, rejection, Ctrl-C); the slow ones run the tiny
random Qwen2.5-VL (the ``tiny_vlm`` fixture in conftest.py) through llama.cpp over a folder of photos.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from export import distill as D
from export.oracle import region_cells
from qds_lite import protocol as P
from qds_lite.result import Finding, Result
from tests.vlm_tiny import FAST

TEACHER = {"name": "teacher", "sha256": "0" * 64, "quant": "Q8_0", "protocol_version": 1}


@pytest.fixture(scope="module", autouse=True)
def _jsonschema():
    pytest.importorskip("jsonschema")


def photos(root: Path) -> Path:
    """Three small photos (one in a subfolder), a corrupt JPEG and a companion file that is passed over."""
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(root / "a.png")
    Image.fromarray(rng.integers(0, 256, (120, 80, 3), dtype=np.uint8)).save(root / "sub" / "b.jpg")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "c.webp")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    (root / "notes.json").write_text("{}")
    return root


def fake_run(zoom_boxes=(), findings=(), probs=(0.1, 0.2, 0.4, 0.2, 0.1)) -> SimpleNamespace:
    steps = [{"tool": "glance", "size": [64, 64]}] + [{"tool": "zoom", "box": list(b)} for b in zoom_boxes]
    result = Result(file="x", score=P.level_score(probs), level="fair", level_probs=probs,
                    findings=tuple(Finding(t, s, b, None) for t, s, b in findings), steps=tuple(steps),
                    rationale="", model=TEACHER, backend="gguf", timings_ms={})
    return SimpleNamespace(result=result, answer=3.0, logprobs_used=True)


class FakeTeacher:
    """Quacks like a VLMCritic; ``interrupt_at`` raises KeyboardInterrupt on that call (0-based)."""

    temperature, seed, glance_side, zoom_max_side, think_chars, max_zooms = 0.0, 0, 896, 896, 600, 3

    def __init__(self, interrupt_at: int | None = None) -> None:
        self.calls, self.interrupt_at = 0, interrupt_at

    def run(self, loaded):
        self.calls += 1
        if self.calls - 1 == self.interrupt_at:
            raise KeyboardInterrupt
        return fake_run([(0.6, 0.1, 0.9, 0.3)], [("noise", 0.6, (0.55, 0.1, 0.8, 0.35))])


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- fast ------------------------------------------------------------------------------------------
def test_schema_follows_the_protocol():
    props = json.loads(D.SCHEMA_PATH.read_text())["properties"]
    finding = props["findings"]["items"]["properties"]
    assert finding["type"]["enum"] == list(P.FINDING_TYPES) and props["level"]["enum"] == list(P.LEVELS)
    assert finding["cell_tl"]["maximum"] == props["zoom_cells"]["items"]["maximum"] == P.N_CELLS - 1
    assert props["findings"]["maxItems"] == P.MAX_FINDINGS and props["level_probs"]["maxItems"] == len(P.LEVELS)


def test_boxes_map_onto_the_grid():
    for tl in range(P.N_CELLS):  # a box spanning cells comes back as those cells (oracle.region_cells)
        for br in range(P.N_CELLS):
            if divmod(br, P.GRID)[0] >= divmod(tl, P.GRID)[0] and br % P.GRID >= tl % P.GRID:
                assert D.box_cells(P.span_box(tl, br)) == (tl, br)
    assert D.box_cells((0.0, 0.0, 1.0, 1.0)) == region_cells(None)
    assert D.box_cells((0.3, 0.3, 0.3, 0.3)) == (5, 5)  # degenerate: the cell it lies in
    assert D.box_cells((0.99, 1.0, 1.0, 1.0)) == (15, 15)
    assert D.cell_at(0.0, 0.0) == 0 and D.cell_at(1.0, 1.0) == P.N_CELLS - 1 and D.cell_at(0.6, 0.1) == 2
    boxes = [(0.5, 0.0, 0.75, 0.25), (0.55, 0.05, 0.7, 0.2), (0.0, 0.5, 0.5, 1.0), (0.8, 0.8, 0.9, 0.9)]
    assert D.zoom_cells(boxes, 3) == [2, 13, 15] and D.zoom_cells(boxes, 1) == [2]


def test_record_maps_findings_and_replays(tmp_path):
    run = fake_run(zoom_boxes=[(0.5, 0.0, 0.75, 0.25), (0.55, 0.05, 0.7, 0.2)], findings=[
        ("noise", 0.3, (0.55, 0.1, 0.8, 0.35)), ("sparkles", 0.9, (0.0, 0.0, 1.0, 1.0)),
        ("blur", 0.9, (0.0, 0.5, 0.5, 1.0)), ("haze", 0.5, (0.0, 0.0, 1.0, 1.0)), ("jpeg", 0.1, (0.0, 0.0, 0.2, 0.2))])
    r = D.make_record(run, "a/b.jpg", "f" * 64, (640, 480), 3, {"temperature": 0.0, "seed": 0})
    assert r["zoom_cells"] == [2]
    assert [(f["type"], f["cell_tl"], f["cell_br"]) for f in r["findings"]] == [
        ("blur", 8, 13), ("haze", 0, 15), ("noise", 2, 7)]  # most severe first
    assert [(f["type"], f["reason"]) for f in r["dropped_findings"]] == [
        ("sparkles", "type not in protocol.FINDING_TYPES"), ("jpeg", "more than 3 findings")]
    assert r["tokens"] == ["<bos>", "<zoom>", "<cell_2>", "<stop>", "<level_fair>",
                           "<find>", "<type_blur>", "<sev_4>", "<cell_8>", "<cell_13>",
                           "<find>", "<type_haze>", "<sev_2>", "<cell_0>", "<cell_15>",
                           "<find>", "<type_noise>", "<sev_1>", "<cell_2>", "<cell_7>", "<eos>"]
    assert D.load_records(write(tmp_path / "r.jsonl", [r])) == [r]


@pytest.mark.parametrize("damage, message", [
    (lambda r: r["tokens"].remove("<eos>"), "ends in grammar state"),
    (lambda r: r["tokens"].insert(3, "<stop>"), "not allowed"),
    (lambda r: r.update(tokens=["<bos>", "<zoom>", "<cell_2>", "<zoom>", "<cell_2>", "<stop>", "<level_fair>",
                                "<eos>"]), "not allowed"),  # the same cell twice
    (lambda r: r.update(max_zooms=0), "not allowed"),  # more zooms than the budget
    (lambda r: r["tokens"].append("<eos>"), "after <eos>"),
    (lambda r: r["tokens"].__setitem__(2, "<cell_99>"), "not in protocol.VOCAB"),
    (lambda r: r.update(zoom_cells=[3]), "do not match"),
    (lambda r: r.update(level_probs=[0.9, 0.1, 0.0, 0.0, 0.0]), "do not match"),
    (lambda r: r.update(source="oracle"), "'teacher' was expected"),
    (lambda r: r["findings"].append({"type": "sparkles", "severity": 0.5, "box": [0, 0, 1, 1], "cell_tl": 0,
                                     "cell_br": 15}), "is not one of"),
])
def test_load_records_rejects_bad_records(tmp_path, damage, message):
    good = D.make_record(fake_run([(0.5, 0.0, 0.75, 0.25)]), "a.png", "f" * 64, (64, 64), 3,
                         {"temperature": 0.0, "seed": 0})
    bad = json.loads(json.dumps(good))
    damage(bad)
    with pytest.raises(ValueError, match=message) as err:
        D.load_records(write(tmp_path / "r.jsonl", [good, bad]))
    assert ":2: " in str(err.value)


def test_ctrl_c_keeps_the_complete_records(tmp_path):
    root, out = photos(tmp_path / "photos"), tmp_path / "out" / "d.jsonl"
    out.parent.mkdir()
    out.write_text("old\n")
    teacher = FakeTeacher(interrupt_at=1)
    s = D.distill(teacher, root, out)
    assert s.interrupted and (s.images, s.failed) == (1, 0) and teacher.calls == 2
    assert [r["image"] for r in D.load_records(out)] == ["a.png"]
    assert [p.name for p in out.parent.iterdir()] == ["d.jsonl"]  # no temporary file left


def test_limit_and_the_folder_walk(tmp_path, capsys):
    root = photos(tmp_path / "photos")
    s = D.distill(FakeTeacher(), root, tmp_path / "d.jsonl")
    assert (s.images, s.failed) == (4, 1)  # notes.json is passed over by name, broken.jpg fails on content
    assert [r["image"] for r in D.load_records(tmp_path / "d.jsonl")] == ["a.png", "c.webp", "sub/b.jpg"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("distill: sub/broken.jpg: ")
    s = D.distill(FakeTeacher(), root, tmp_path / "d.jsonl", limit=2)
    assert s.images == 2 and len(D.load_records(tmp_path / "d.jsonl")) == 2


def test_a_teacher_that_is_not_a_vlm_folder_is_a_clear_error(tmp_path, capsys):
    root = photos(tmp_path / "photos")
    assert D.main(["--teacher", str(root), "--images", str(root), "--out", str(tmp_path / "d.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no readable manifest.json" in err and "export.vlm_convert" in err
    assert D.main(["--teacher", str(root), "--images", str(root / "a.png")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert not (tmp_path / "d.jsonl").exists()


# --- tiny VLM end to end ---------------------------------------------------------------------------
@pytest.mark.slow
def test_distill_cli_over_a_folder(tiny_vlm, tmp_path, capsys):
    root, out = photos(tmp_path / "photos"), tmp_path / "d.jsonl"
    rc = D.main(["--teacher", str(tiny_vlm), "--images", str(root), "--out", str(out), "--quant", "Q8_0",
                 "--threads", "1", "--ctx", "4096"])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1, err
    assert [line for line in err if "broken.jpg" in line] == [err[0]] and err[0].startswith("distill: sub/broken.jpg: ")
    assert err[-1].startswith("distill: 4 images, 1 failed, ") and "images/s" in err[-1]
    records = D.load_records(out)  # schema + grammar replay of every line
    assert [r["image"] for r in records] == ["a.png", "c.webp", "sub/b.jpg"]
    manifest_sha = hashlib.sha256((tiny_vlm / "manifest.json").read_bytes()).hexdigest()
    for r in records:
        path = root / r["image"]
        assert r["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert tuple(r["size"]) == Image.open(path).size
        assert r["teacher"] == {"name": "qds-tiny-vlm", "sha256": manifest_sha, "quant": "Q8_0",
                                "protocol_version": 1}
        assert sum(r["level_probs"]) == pytest.approx(1.0) and r["level_probs_from_logits"]
        assert r["source"] == "teacher" and r["max_zooms"] == P.DEFAULT_ZOOMS


@pytest.mark.slow
def test_zoom_cells_match_the_boxes_and_runs_repeat(tiny_vlm, tmp_path):
    from qds_lite.vlm import VLMCritic

    root = photos(tmp_path / "photos")
    texts = []
    for n, seed in enumerate((7, 7, 8)):  # sampled hot, so the seed decides the trajectory
        with VLMCritic(tiny_vlm, max_zooms=3, min_zooms=2, temperature=1.5, seed=seed, **FAST) as teacher:
            s = D.distill(teacher, root, tmp_path / f"d{n}.jsonl")
        assert (s.images, s.failed) == (4, 1)
        texts.append((tmp_path / f"d{n}.jsonl").read_text())
    assert texts[0] == texts[1] and texts[2] != texts[0]
    for r in D.load_records(tmp_path / "d0.jsonl"):
        assert 2 <= len(r["zoom_boxes"]) <= 3 and 1 <= len(r["zoom_cells"]) <= len(r["zoom_boxes"])
        centres = [D.cell_at((x0 + x1) / 2, (y0 + y1) / 2) for x0, y0, x1, y1 in r["zoom_boxes"]]
        assert r["zoom_cells"] == list(dict.fromkeys(centres))  # each box's centre cell, in order, once
        assert all(0 <= c < P.N_CELLS for c in r["zoom_cells"])
        for f in r["findings"]:
            assert (f["cell_tl"], f["cell_br"]) == D.box_cells(f["box"])
        assert sum(r["level_probs"]) == pytest.approx(1.0)
        assert r["decoding"]["seed"] == 7 and r["decoding"]["temperature"] == 1.5


@pytest.mark.slow
def test_missing_llama_cpp_is_a_clear_error(tiny_vlm, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now raises ImportError
    root = photos(tmp_path / "photos")
    assert D.main(["--teacher", str(tiny_vlm), "--images", str(root), "--out", str(tmp_path / "d.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "llama-cpp-python is not installed" in err and "qds-lite[gguf]" in err
