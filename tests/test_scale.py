"""The score scale: the calibration a critic's manifest carries, how it is fitted, and that the shipped
critic's scores go through it."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from export import calibrate
from qds_lite import Critic
from qds_lite import protocol as P
from qds_lite.errors import ModelError
from qds_lite.io import load_image
from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL
from qds_lite.runtime import Reasoner
from qds_lite.scale import CAP_AT_FLAT, FLAT_DETAIL, ScoreScale, detail_cap, glance_detail

from .conftest import DATA


def test_without_an_entry_the_scale_is_the_identity():
    scale = ScoreScale.of_config({})
    assert [scale(x) for x in (0.0, 12.5, 63.0, 100.0)] == [0.0, 12.5, 63.0, 100.0]


def test_the_map_interpolates_between_anchors_and_keeps_order():
    scale = ScoreScale((0.0, 20.0, 60.0, 100.0), (0.0, 40.0, 90.0, 100.0))
    assert scale(10.0) == pytest.approx(20.0) and scale(40.0) == pytest.approx(65.0)
    assert scale(80.0) == pytest.approx(95.0)
    raw = np.random.default_rng(0).uniform(0, 100, 200)
    assert np.array_equal(np.argsort(raw), np.argsort([scale(x) for x in raw]))


@pytest.mark.parametrize("raw, score", [((0.0, 50.0, 40.0, 100.0), (0.0, 30.0, 60.0, 100.0)),  # not rising
                                        ((0.0, 50.0, 100.0), (0.0, 60.0, 60.0)),  # flat, ends below 100
                                        ((5.0, 100.0), (0.0, 100.0)),  # does not start at 0
                                        ((0.0, 50.0, 100.0), (0.0, 100.0)),  # lengths differ
                                        ((0.0, float("nan"), 100.0), (0.0, 50.0, 100.0))])  # NaN compares false
def test_a_malformed_calibration_is_a_model_error(raw, score):
    with pytest.raises(ModelError, match="calibration"):
        ScoreScale.of_config({"calibration": {"raw": list(raw), "score": list(score)}})


def test_a_critic_with_a_broken_calibration_entry_does_not_load(tmp_path):
    root = tmp_path / "broken"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    doc = json.loads((root / "manifest.json").read_text())
    doc["config"]["calibration"] = {"raw": [0, 100]}
    (root / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="calibration"):
        Critic.load(root, backend="numpy")


def test_the_shipped_critic_reports_calibrated_scores():
    critic = Critic.load(backend="onnx")
    entry = critic.files.config["calibration"]
    assert entry["fitted"]["on"].startswith("python -m benchmarks.accuracy --split dev")  # never the test split
    settings = critic.files.config["score"]
    for name in ("coffee_clean.jpg", "coffee_dark.jpg"):
        r = critic.score(DATA / name)
        damage = np.sort(1 - r.damage_map[..., -1].ravel())[-settings["damage_cells"]:].mean()
        raw = P.level_score(r.level_probs) * (1 - settings["damage_share"] * damage)
        assert r.score == pytest.approx(np.interp(raw, entry["raw"], entry["score"]))
        assert r.damage_penalty == pytest.approx(P.level_score(r.level_probs) - raw)
        assert r.level == P.level_of(r.score) and r.trace["damage_penalty"] == round(r.damage_penalty, 2)


def test_the_penalty_is_a_share_of_the_verdict_by_the_most_damaged_cells():
    head = ScoreScale(damage_share=0.5, damage_cells=2)
    probs = (0.0, 0.0, 0.0, 0.0, 1.0)  # raw 100
    cells = np.zeros((P.N_CELLS, len(P.FINDING_TYPES) + 1))
    cells[:, -1] = 1.0  # clean everywhere
    assert head.penalty(probs, cells) == 0.0 and head.raw_of(probs, cells) == 100.0
    cells[3, -1], cells[7, -1], cells[9, -1] = 0.2, 0.6, 0.9  # damage 0.8, 0.4, 0.1: the top two mean 0.6
    assert head.penalty(probs, cells) == pytest.approx(30.0) and head.raw_of(probs, cells) == pytest.approx(70.0)
    assert head.raw_of((1.0, 0, 0, 0, 0), cells) == 0.0  # a share of 0 stays 0: no clipping, no ties below it
    assert head.penalty(probs, None) == 0.0 and ScoreScale().penalty(probs, cells) == 0.0
    cells[:, -1] = 0.0
    assert ScoreScale(damage_share=1.0, damage_cells=16).raw_of(probs, cells) == 0.0


@pytest.mark.parametrize("settings", [{"damage_share": 1.5}, {"damage_share": -0.1}, {"damage_cells": 0},
                                      {"damage_cells": P.N_CELLS + 1}, {"damage_share": "much"}, []])
def test_malformed_score_settings_are_a_model_error(settings):
    with pytest.raises(ModelError, match="score"):
        ScoreScale.of_config({"score": settings})


def _probs(raw: float) -> list[float]:
    """A level distribution on two neighbouring levels whose raw score is ``raw``."""
    e = raw / 25.0  # expected level - 1
    lo = int(min(e, 3.0))
    probs = [0.0] * 5
    probs[lo], probs[lo + 1] = lo + 1 - e, e - lo
    return probs


def _records(medians: dict[float, float], damage: float | None = None) -> list[dict]:
    """Three global records per severity whose verdicts' raw scores have the given medians; with ``damage``,
    a diagnosis map that puts that much damage in every cell."""
    out = []
    for sev, med in medians.items():
        for raw in (med - 5.0, med, med + 9.0):
            out.append({"set": "global", "severity": sev, "level_probs": {calibrate.METHOD: _probs(raw)}})
    out.append({"set": "local", "severity": 0.6, "level_probs": {calibrate.METHOD: [0, 0, 0, 0, 1.0]}})  # ignored
    if damage is not None:
        for r in out:
            r["cells"] = {calibrate.METHOD: [[0.0] * len(P.FINDING_TYPES) + [1.0 - damage]] * P.N_CELLS}
    return out


def test_fit_anchors_each_severity_median_to_its_trained_for_score():
    scale = calibrate.fit(_records({0.0: 62.0, 0.2: 55.0, 0.4: 40.0, 0.6: 26.0, 0.8: 14.0}))
    assert scale.raw == pytest.approx((0.0, 14.0, 26.0, 40.0, 55.0, 100.0))  # clean photos anchor nothing
    assert scale.score == (0.0, 20.0, 40.0, 60.0, 80.0, 100.0)


def test_fit_refuses_a_critic_that_does_not_rank_severities():
    with pytest.raises(ValueError, match="not strictly in order"):
        calibrate.fit(_records({0.0: 62.0, 0.2: 40.0, 0.4: 55.0, 0.6: 30.0}))


def test_cross_validation_measures_each_variant_on_held_out_photos():
    """Raw scores squeezed the same way on every photo (raw = 20 + t / 2 for a trained-for score t): the raw
    scale is off by |20 - t / 2| (14 on average over t = 100, 80, 60, 40, 20); anchors fitted on the other
    photos undo the squeeze on the degraded images and leave clean ones at 85 instead of 100 (15 off on one
    image in five: 3); anchoring the clean median at 94 as well leaves them 6 off (1.2)."""
    from benchmarks.accuracy import trained_for

    records = []
    for photo in ("a.jpg", "b.jpg", "c.jpg", "d.jpg"):
        for sev in (0.0, 0.2, 0.4, 0.6, 0.8):
            r = {"photo": photo, "set": "global", "kind": "gaussian_blur" if sev else None, "severity": sev,
                 "region": None}
            r["level_probs"] = {calibrate.METHOD: _probs(20.0 + 0.5 * trained_for(r))}
            records.append(r)
    rows = {r["variant"]: r for r in calibrate.cross_validate(records)}
    assert rows["raw"]["mae"] == pytest.approx(14.0)
    assert rows[None]["mae"] == pytest.approx(3.0) and rows["clean at 94"]["mae"] == pytest.approx(1.2)
    assert rows[None]["level_match"] == pytest.approx(0.8)  # clean photos read good (85), not excellent


def _run(split: str = "dev", files: dict | None = None, damage: float | None = 0.2) -> dict:
    """A dev-split accuracy run of the bundled critic, as benchmarks.accuracy writes it."""
    manifest = json.loads((BUNDLED_DIR / DEFAULT_MODEL / "manifest.json").read_text())
    return {"command": "python -m benchmarks.accuracy --split dev", "settings": {"split": split},
            "model": {"name": DEFAULT_MODEL, "files": files or {f["path"]: f["sha256"] for f in manifest["files"]}},
            "methods": [calibrate.METHOD], "n_images": {"photos": 3},
            "records": _records({0.0: 62.0, 0.2: 55.0, 0.4: 40.0, 0.6: 26.0, 0.8: 14.0}, damage)}


def test_calibration_is_fitted_on_the_dev_split_only():
    with pytest.raises(SystemExit, match="dev only"):
        calibrate.check_run(_run(split="test"), BUNDLED_DIR / DEFAULT_MODEL)


def test_calibration_refuses_a_run_of_other_weights():
    with pytest.raises(SystemExit, match="did not score the critic"):
        calibrate.check_run(_run(files={"critic.npz": "0" * 64}), BUNDLED_DIR / DEFAULT_MODEL)


def test_calibrate_writes_the_fitted_map_into_the_manifest(tmp_path):
    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    (tmp_path / "run.json").write_text(json.dumps(_run()))
    calibrate.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json"), "--damage-share", "0.5",
                    "--damage-cells", "4"])
    config = json.loads((root / "manifest.json").read_text())["config"]
    entry = config["calibration"]
    assert config["score"] == {"damage_share": 0.5, "damage_cells": 4}
    assert entry["raw"] == pytest.approx([0.0, 12.6, 23.4, 36.0, 49.5, 100.0])  # raw less 0.5 x damage 0.2 of it
    assert entry["fitted"]["on"] == "python -m benchmarks.accuracy --split dev" and entry["fitted"]["images"] == 12
    assert entry["fitted"]["command"] == "python -m export.calibrate --damage-share 0.5 --damage-cells 4"
    critic = Critic.load(root, backend="onnx")  # the files are untouched, so it still verifies and loads
    r = critic.score(DATA / "coffee_dark.jpg")
    assert r.score == pytest.approx(np.interp(critic.scale.raw_of(r.level_probs, r.damage_map), entry["raw"],
                                              entry["score"]))
    calibrate.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json"), "--damage-share", "0"])
    config = json.loads((root / "manifest.json").read_text())["config"]
    assert "score" not in config and config["calibration"]["raw"] == pytest.approx([0.0, 14.0, 26.0, 40.0, 55.0,
                                                                                     100.0])


def test_a_damage_share_needs_the_runs_maps(tmp_path):
    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    (tmp_path / "run.json").write_text(json.dumps(_run(damage=None)))
    with pytest.raises(SystemExit, match="no diagnosis maps"):
        calibrate.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json"), "--damage-share", "0.5"])


def test_the_sweep_ranks_severities_with_each_share_and_writes_nothing(tmp_path, capsys):
    """Two photos whose verdicts tie across severities; the map's damage grows with severity, so any share
    breaks the ties the right way."""
    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    before = (root / "manifest.json").read_bytes()
    records = []
    for photo in ("a.jpg", "b.jpg"):
        for sev in (0.0, 0.2, 0.4, 0.6, 0.8):
            r = _records({sev: 50.0}, damage=sev)[0]
            records.append(r | {"photo": photo, "kind": "haze" if sev else None, "region": None})
    run = _run() | {"records": records}
    (tmp_path / "run.json").write_text(json.dumps(run))
    rows = calibrate.sweep(records, (0.0, 0.5), (1, 4))
    assert [(r["damage_share"], r["damage_cells"]) for r in rows] == [(0.0, 1), (0.5, 1), (0.5, 4)]
    assert rows[0]["l_srcc"] == 0.0  # no share: every score ties
    assert rows[1]["l_srcc"] == pytest.approx(1.0) and rows[2]["cross_srcc"] == pytest.approx(1.0)
    calibrate.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json"), "--sweep"])
    assert "damage share" in capsys.readouterr().out
    assert (root / "manifest.json").read_bytes() == before


def test_calibrate_refuses_a_folder_whose_files_do_not_match_its_manifest(tmp_path):
    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    (tmp_path / "run.json").write_text(json.dumps(_run()))
    with (root / "reasoner.onnx").open("ab") as f:
        f.write(b"\0")
    before = (root / "manifest.json").read_bytes()
    with pytest.raises(SystemExit, match="sha256"):
        calibrate.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json")])
    assert (root / "manifest.json").read_bytes() == before


def test_calibrate_cv_writes_nothing(tmp_path, capsys):
    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    before = (root / "manifest.json").read_bytes()
    run = _run()
    run["records"] = [r | {"photo": f"p{i % 2}.jpg", "kind": "gaussian_blur" if r["severity"] else None,
                           "region": None} for i, r in enumerate(run["records"]) if r["set"] == "global"]
    (tmp_path / "run.json").write_text(json.dumps(run))
    calibrate.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json"), "--cv"])
    assert "anchors (shipped)" in capsys.readouterr().out
    assert (root / "manifest.json").read_bytes() == before


@pytest.mark.parametrize("score, level", [(-3.0, "bad"), (12.4, "bad"), (12.5, "poor"), (37.5, "fair"),
                                          (62.5, "good"), (87.5, "excellent"), (104.0, "excellent")])
def test_level_words_follow_the_documented_bands(score, level):
    assert P.level_of(score) == level  # a boundary goes up, as the README's bands say


def test_the_glance_alone_has_its_own_calibration_where_the_manifest_gives_one():
    config = {"calibration": {"raw": [0.0, 40.0, 100.0], "score": [0.0, 60.0, 100.0]},
              "score": {"damage_share": 0.5, "damage_cells": 4}}
    assert ScoreScale.of_config(config, glance_alone=True) == ScoreScale.of_config(config)  # none: the critic's
    config["glance"] = {"calibration": {"raw": [0.0, 30.0, 100.0], "score": [0.0, 60.0, 100.0]}}
    glance = ScoreScale.of_config(config, glance_alone=True)
    assert glance(30.0) == pytest.approx(60.0) and ScoreScale.of_config(config)(30.0) == pytest.approx(45.0)
    assert (glance.damage_share, glance.damage_cells) == (0.5, 4)  # the damage settings stay the critic's


def test_the_bundled_critic_scores_the_glance_alone_on_its_own_scale():
    critic = Critic.load()
    r = critic.score(DATA / "coffee_dark.jpg", zooms=0)
    assert critic.glance_scale != critic.scale
    assert r.score == pytest.approx(critic.glance_scale.score_of(r.level_probs, r.damage_map))
    assert r.score != pytest.approx(critic.scale.score_of(r.level_probs, r.damage_map))


def test_glance_detail_reads_how_much_detail_a_photo_holds():
    rng = np.random.default_rng(0)
    grey = np.full((P.GLANCE_SIZE, P.GLANCE_SIZE, 3), 128, np.uint8)
    textured = rng.integers(0, 256, grey.shape, dtype=np.uint8)
    ramp = np.broadcast_to(np.linspace(0, 255, P.GLANCE_SIZE, dtype=np.float32)[None, :, None], grey.shape)
    assert glance_detail(grey) == pytest.approx(np.log(1e-3))  # no detail at all
    assert glance_detail(ramp.round().astype(np.uint8)) < FLAT_DETAIL < glance_detail(textured)  # a smooth gradient


def test_the_detail_cap_leaves_detailed_photos_alone_and_falls_with_the_detail():
    assert detail_cap(FLAT_DETAIL) == detail_cap(3.0) == 100.0
    below = [detail_cap(d) for d in (-0.01, -0.3, -1.0, -5.0)]
    assert below[0] == pytest.approx(CAP_AT_FLAT, abs=0.1) and below[-1] == 0.0
    assert all(a > b for a, b in zip(below, below[1:-1])) and below[-2] >= below[-1]


_reason = Reasoner.run


def _blurred(radius: float) -> np.ndarray:
    from PIL import Image, ImageFilter

    with Image.open(DATA / "rocket_clean.jpg") as im:
        return np.asarray(im.convert("RGB").filter(ImageFilter.GaussianBlur(radius)))


def test_a_photo_blurred_into_colour_fields_scores_no_higher_than_the_cap():
    """Blur far past the trained range (Gaussian sigma 3.5 px) used to score higher than blur half as strong;
    the cap keeps scores falling as the blur grows (README, *Other degradation code*)."""
    critic = Critic.load(backend="onnx")
    photos = [_blurred(r) for r in (2, 15, 33)]
    results = [critic.score(p) for p in photos]
    details = [glance_detail(load_image(p).glance) for p in photos]
    assert details[0] > FLAT_DETAIL > details[1] > details[2]
    assert "almost no detail anywhere" not in results[0].rationale
    for r, d in zip(results[1:], details[1:]):
        assert r.findings and r.score <= detail_cap(d) <= CAP_AT_FLAT and r.level == "bad"
        assert "almost no detail anywhere" in r.rationale
    assert results[0].score > results[1].score > results[2].score


def test_the_cap_needs_a_finding_and_leaves_ordinary_photos_alone(monkeypatch):
    critic = Critic.load(backend="onnx")
    clean = critic.score(DATA / "coffee_clean.jpg")
    assert glance_detail(load_image(DATA / "coffee_clean.jpg").glance) > FLAT_DETAIL
    assert clean.score == pytest.approx(critic.scale.score_of(clean.level_probs, clean.damage_map))
    blurred = _blurred(33)
    capped = critic.score(blurred)
    monkeypatch.setattr(Reasoner, "run", lambda self, *a, **k: dataclasses.replace(_reason(self, *a, **k), findings=[]))
    seen_nothing = critic.score(blurred)  # the same verdict, no finding: a featureless photo the critic finds fine
    assert not seen_nothing.findings and "almost no detail" not in seen_nothing.rationale
    assert seen_nothing.score == pytest.approx(critic.scale.score_of(capped.level_probs, capped.damage_map))
    assert seen_nothing.score > capped.score
