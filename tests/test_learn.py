"""export.learn: the small critic fine-tuned on a teacher's distill records says what the teacher said.

A stand-in teacher (the same trajectory for every photo: one zoom on the top-left cell, severe banding
along the bottom row, an "excellent" verdict) writes records with export.distill; the critic learned from
them must decode that trajectory on the photos, where the bundled critic says something else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch")
pytest.importorskip("jsonschema")
pytest.importorskip("onnx")

from export import distill as D  # noqa: E402
from export import learn as L  # noqa: E402
from qds_lite import load  # noqa: E402
from qds_lite import protocol as P  # noqa: E402
from tests.conftest import SAMPLES  # noqa: E402

LEVEL_PROBS = (0.0, 0.02, 0.08, 0.2, 0.7)
BANDING_BOX = (0.0, 0.75, 1.0, 1.0)  # the bottom row of cells: 12..15


class ConstantTeacher:
    """Quacks like a VLMCritic: the same verdict for every photo."""

    temperature, seed, glance_side, zoom_max_side, think_chars, max_zooms = 0.0, 0, 896, 896, 600, 3

    def run(self, loaded):
        from tests.test_distill import fake_run

        return fake_run([(0.05, 0.05, 0.2, 0.2)], [("banding", 0.7, BANDING_BOX)], LEVEL_PROBS)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> tuple[Path, Path]:
    """Ten photos (the test samples and their mirror images) and the stand-in teacher's records of them."""
    root = tmp_path_factory.mktemp("learn")
    images = root / "photos"
    images.mkdir()
    for p in SAMPLES:
        with Image.open(p) as im:
            im.convert("RGB").save(images / f"{p.stem}.png")
            im.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(images / f"{p.stem}_flip.png")
    out = root / "teacher.jsonl"
    summary = D.distill(ConstantTeacher(), images, out, quiet=True)
    assert summary.failed == 0 and summary.images == 2 * len(SAMPLES)
    return out, images


def test_sequences_replay_the_records_with_visual_tokens_inserted(records):
    path, _ = records
    recs = D.load_records(path)[:2]
    data = {"tokens": np.array([[P.TOKEN_ID[t] for t in r["tokens"]] for r in recs]),
            "zooms": np.zeros((2, 1, P.ZOOM_TOKENS, 4), np.float16),
            "max_zooms": np.array([r["max_zooms"] for r in recs]),
            "level_probs": np.array([r["level_probs"] for r in recs], np.float32)}
    seq = L.record_sequences(data, np.random.default_rng(0), augment=True)
    for i, r in enumerate(recs):
        fed = [P.VOCAB[t] for t, s in zip(seq["tok"][i], seq["slot"][i]) if s < 0]
        assert fed[:len(r["tokens"])] == r["tokens"]
        assert (seq["slot"][i] >= 0).sum() == P.GLANCE_TOKENS + P.ZOOM_TOKENS * len(r["zoom_cells"])
        taught = [P.VOCAB[t] for t in seq["target"][i] if t != -100]
        assert taught == [t for t in r["tokens"][1:] if not t.startswith("<level_")]  # the level: by the KL
        np.testing.assert_allclose(seq["level_target"][i], r["level_probs"])
        assert P.VOCAB[seq["tok"][i, seq["level_pos"][i]]] == "<stop>"


def test_learned_critic_says_what_the_teacher_said(records, tmp_path, capsys):
    path, images = records
    photo = images / f"{SAMPLES[0].stem}.png"
    before = load().score(photo)
    assert (before.level, [f.type for f in before.findings][:1]) != ("excellent", ["banding"])
    assert L.main(["--records", str(path), "--images", str(images), "--out", str(tmp_path / "critic"),
                   "--work", str(tmp_path / "work"), "--epochs", "30", "--lr", "3e-3"]) == 0
    said = capsys.readouterr()
    assert "learned from 10 records (0 skipped); kept epoch" in said.out
    assert said.err.count("learn: epoch {") == 30  # progress: the held-out figures of every epoch
    critic = load(tmp_path / "critic", backend="onnx")
    for p in (photo, images / f"{SAMPLES[-1].stem}_flip.png"):
        r = critic.score(p)
        assert r.level == "excellent" and r.findings and r.findings[0].type == "banding", p.name
        assert tuple(r.findings[0].box) == BANDING_BOX
        assert [s["box"] for s in r.steps if s["tool"] == "zoom"][:1] == [list(P.cell_box(0))]
    manifest = json.loads((tmp_path / "critic" / "manifest.json").read_text())
    assert manifest["training"]["records_used"]["train"] == 10 and manifest["training"]["teachers"] == ["teacher"]


def test_changed_photos_are_skipped_with_a_warning(records, tmp_path, capsys):
    path, images = records
    changed = tmp_path / "photos"
    changed.mkdir()
    for p in images.iterdir():
        (changed / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (64, 64)).save(changed / f"{SAMPLES[0].stem}.png")
    data, kept = L.record_features(D.load_records(path), changed, trunk=_runner(tmp_path), quiet=True)
    assert len(kept) == len(data["glance"]) == 2 * len(SAMPLES) - 1
    assert f"{SAMPLES[0].stem}.png: changed since the teacher saw it" in capsys.readouterr().err


def test_no_readable_photo_is_a_clear_error(records, tmp_path, capsys):
    path, _ = records
    empty = tmp_path / "empty"
    empty.mkdir()
    assert L.main(["--records", str(path), "--images", str(empty), "--out", str(tmp_path / "c"),
                   "--work", str(tmp_path / "w")]) == 2
    assert "none of the records' photos could be read" in capsys.readouterr().err


def _runner(tmp_path: Path):
    from export.onnx_export import export_trunk
    from export.samples import TrunkRunner
    from qds_lite.model_store import load_weights, resolve

    trunk = {k: np.asarray(v, np.float32) for k, v in load_weights(resolve()).items() if k.startswith("enc.")}
    export_trunk(trunk, tmp_path / "trunk.onnx")
    return TrunkRunner(str(tmp_path / "trunk.onnx"))
