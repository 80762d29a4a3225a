"""The edit gate of `qds refine`: its features, its fit, its file, and that refine obeys it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from qds_lite.errors import ModelError
from qds_lite.refine_gate import FEATURES, GATE_PATH, OPS, EditGate, edit_features, overlap
from qds_lite.result import Finding, Result

DATA = Path(__file__).parent / "data"


def _result(score: float, *findings: Finding) -> Result:
    return Result("x", score, "fair", (0.2,) * 5, tuple(findings), (), "", {}, "onnx", {})


def _finding(kind: str, box=(0.0, 0.0, 0.5, 0.5), severity: float = 0.5) -> Finding:
    return Finding(kind, severity, box, None)


def test_overlap_is_the_share_of_the_second_box_covered():
    assert overlap((0, 0, 0.5, 0.5), (0, 0, 0.5, 0.5)) == pytest.approx(1.0)
    assert overlap((0, 0, 0.5, 0.5), (0.25, 0, 0.75, 0.5)) == pytest.approx(0.5)
    assert overlap(None, (0.5, 0.5, 1, 1)) == pytest.approx(1.0)  # the whole image covers any box
    assert overlap((0, 0, 0.5, 0.5), None) == pytest.approx(0.25)
    assert overlap((0, 0, 0.25, 0.25), (0.5, 0.5, 1, 1)) == 0.0


def test_features_say_whether_the_fault_is_still_found_and_what_is_new():
    noise = _finding("noise")
    rgb = np.full((40, 40, 3), 100, np.uint8)
    edited = rgb.copy()
    edited[:20, :20] += 8  # 8 levels over the quarter that was edited
    before = _result(40.0, noise)
    fixed = edit_features(noise, noise.box, "denoise", 2, 3, before, _result(55.0), rgb, edited)
    assert fixed["gain"] == pytest.approx(15.0) and fixed["score_before"] == 40.0
    assert fixed["still_found"] == 0.0 and fixed["new_faults"] == 0.0 and fixed["faults_after"] == 0.0
    assert fixed["milder"] == 1.0 and fixed["area"] == pytest.approx(0.25)
    assert fixed["change"] == pytest.approx(np.log1p(8.0))  # per pixel of the region, not of the image
    assert fixed["op=denoise"] == 1.0 and sum(fixed[f"op={o}"] for o in OPS) == 1.0
    assert "finding=noise" not in fixed and tuple(fixed) == FEATURES  # denoising says it: no second column
    worse = edit_features(noise, noise.box, "denoise", 0, 3, before,
                          _result(45.0, _finding("noise", (0.25, 0.0, 0.5, 0.5)), _finding("blur")), rgb, edited)
    assert worse["still_found"] == 1.0  # the same type over at least half of the edited region
    assert worse["new_faults"] == 1.0 and worse["faults_after"] == 2.0 and worse["milder"] == 0.0
    moved = edit_features(noise, noise.box, "denoise", 0, 3, before,
                          _result(45.0, _finding("noise", (0.5, 0.5, 1.0, 1.0))), rgb, edited)
    assert moved["still_found"] == 0.0  # elsewhere: not this fault


def _rows(n: int, seed: int) -> list[dict[str, float]]:
    """Edits with every feature: gain and change drawn at random, one operation each."""
    rng = np.random.default_rng(seed)
    out = []
    for g, c, op in zip(rng.normal(2.0, 5.0, n), rng.normal(1.0, 1.0, n), rng.choice(OPS, n)):
        out.append(dict.fromkeys(FEATURES, 0.0) | {"gain": float(g), "change": float(c), f"op={op}": 1.0})
    return out


def test_fit_is_sklearns_boosting_to_the_last_digit_and_round_trips_through_json(tmp_path):
    pytest.importorskip("sklearn")
    from sklearn.ensemble import GradientBoostingClassifier

    from export.refine_gate import fit

    rows = _rows(800, 0)
    labels = [r["gain"] - 4 * r["change"] > -2 for r in rows]
    gate = fit(rows[:600], labels[:600], trees=40, depth=3, learning_rate=0.1, min_leaf=5, subsample=0.8,
               threshold=0.6, info={"why": "test"})
    held = np.mean([(gate.probability(r) >= 0.5) == y for r, y in zip(rows[600:], labels[600:])])
    assert held > 0.9
    x = np.array([[r[n] for n in FEATURES] for r in rows])
    same = GradientBoostingClassifier(n_estimators=40, max_depth=3, learning_rate=0.1, min_samples_leaf=5,
                                      subsample=0.8, random_state=0).fit(x[:600], labels[:600])
    assert [gate.probability(r) for r in rows] == pytest.approx(same.predict_proba(x)[:, 1], abs=1e-9)
    path = tmp_path / "gate.json"
    path.write_text(json.dumps(gate.to_json()))
    again = EditGate.load(path)
    assert again.threshold == 0.6 and again.info == {"why": "test"} and len(again.feature) == 40
    assert all(again.probability(r) == gate.probability(r) for r in rows[:50])


def test_the_trees_learn_what_a_gain_means_for_each_operation():
    pytest.importorskip("sklearn")
    from export.refine_gate import fit

    rows = _rows(600, 1)
    labels = [(r["gain"] > 2) == (r["op=deconvolve"] == 0) for r in rows]  # a gain means the opposite here
    gate = fit(rows[:400], labels[:400], trees=60, depth=2, min_leaf=5)
    assert np.mean([(gate.probability(r) >= 0.5) == y for r, y in zip(rows[400:], labels[400:])]) > 0.9


def _tree(feature, split, left, right, value) -> dict:
    return {"feature": feature, "split": split, "left": left, "right": right, "value": value}


def test_a_malformed_gate_is_a_clear_error(tmp_path):
    bad = tmp_path / "gate.json"
    stump = _tree([0, -1, -1], [0.5, 0, 0], [1, 0, 0], [2, 0, 0], [0, -1, 1])
    for tree, message in ((stump | {"value": [0, -1]}, "every node needs"),
                          (stump | {"left": [0, 0, 0]}, "out of order"),
                          (stump | {"right": [3, 0, 0]}, "out of range"),
                          (stump | {"feature": [1, -1, -1]}, "does not name")):
        bad.write_text(json.dumps({"names": ["gain"], "trees": [tree], "bias": 0, "threshold": 0.5}))
        with pytest.raises(ModelError, match=message):
            EditGate.load(bad)
    bad.write_text(json.dumps({"names": ["gain"], "trees": [], "bias": 0, "threshold": 0.5}))
    with pytest.raises(ModelError, match="no trees"):
        EditGate.load(bad)
    bad.write_text("{")
    with pytest.raises(ModelError, match="refine gate"):
        EditGate.load(bad)
    with pytest.raises(ModelError, match="refine gate") as err:
        EditGate.load(tmp_path / "missing.json")
    assert "--no-gate" in err.value.hint  # what the user can do about it


def test_the_shipped_gate_reads_exactly_the_features_refine_computes():
    gate = EditGate.load(GATE_PATH)
    f = _finding("jpeg")
    rgb = np.zeros((8, 8, 3), np.uint8)
    feats = edit_features(f, None, "deblock", 0, 3, _result(50.0, f), _result(52.0), rgb, rgb)
    assert set(gate.names) <= set(feats)
    assert 0.0 < gate.probability(feats) < 1.0 and 0.0 < gate.threshold < 1.0
    dev = gate.info["dev"]
    assert dev["accuracy"] > max(dev["base_rate"], 1 - dev["base_rate"])  # better than always saying one thing


def test_refine_keeps_nothing_the_gate_refuses():
    pytest.importorskip("cv2")
    import qds_lite
    from qds_lite.refine import refine

    critic = qds_lite.load(backend="onnx")
    shipped = EditGate.load(GATE_PATH)
    never = dataclasses.replace(shipped, threshold=1.01)
    r = refine(critic, DATA / "coffee_dark.jpg", gate=never)
    assert not r.changed and r.steps
    from qds_lite.refine import SCORE_MARGIN

    rising = [s for s in r.steps if s.score_after >= s.score_before + SCORE_MARGIN]
    assert rising and all("P(better)" in s.reason and s.p_better is not None for s in rising)
    kept = refine(critic, DATA / "coffee_dark.jpg")  # the shipped gate lets the plain fix through
    assert kept.changed and all(s.p_better >= shipped.threshold for s in kept.steps if s.kept)
    plain = refine(critic, DATA / "coffee_dark.jpg", gate=False)
    assert plain.changed and all(s.p_better is None for s in plain.steps)


def _row(gain: float, op: str, dssim: float) -> dict:
    feats = dict.fromkeys(FEATURES, 0.0) | {"gain": gain, f"op={op}": 1.0, "area": 1.0}
    return {"op": op, "score": 50.0 + gain, "features": feats, "dssim": dssim}


def test_first_step_keeps_the_first_finding_whose_pick_passes_the_margin():
    from export.refine_gate import first_step

    records = [
        {"kind": "jpeg", "score": 50.0, "findings": [[_row(0.2, "deblock", 0.01)],  # under the margin
                                                      [_row(3.0, "unsharp", -0.02)]]},  # kept: made worse
        {"kind": "haze", "score": 50.0, "findings": [[_row(4.0, "stretch", 0.05), _row(2.0, "stretch", 0.02)]]},
        {"kind": None, "score": 50.0, "findings": [[_row(1.0, "exposure", -0.008)]]},
        {"kind": "noise", "score": 50.0, "findings": []},
    ]

    def best(cands):
        return max(cands, key=lambda c: c["score"]) if cands else None

    r = first_step(records, best, margin=0.5)
    assert r == pytest.approx({"improved": 1 / 3, "worse": 1 / 3, "mean_dssim": 0.01, "pristine_max_drop": 0.008})
    assert first_step(records, best, margin=0.1)["improved"] == pytest.approx(2 / 3)  # now the deblock is kept
    assert first_step(records, lambda c: None, margin=0.5) == {"improved": 0.0, "worse": 0.0, "mean_dssim": 0.0,
                                                                 "pristine_max_drop": 0.0}


def test_fit_gate_writes_a_gate_that_learned_which_edits_help(tmp_path):
    pytest.importorskip("sklearn")
    from export.refine_gate import fit_gate

    rng = np.random.default_rng(2)

    def records(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            op = str(rng.choice(["deconvolve", "denoise"]))
            gain = float(rng.uniform(0, 10))
            helps = op == "denoise"  # in this world only denoising brings a photo back
            out.append({"photo": f"p{len(out)}", "kind": "noise", "set": "global", "score": 50.0,
                        "findings": [[_row(gain, op, 0.01 if helps else -0.01)]]})
        return out

    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps(records(200)))
    dev.write_text(json.dumps(records(100)))
    out = tmp_path / "gate.json"
    info = fit_gate([train, train], [dev], 0.5, out, "test", trees=20, depth=2, min_leaf=5)
    gate = EditGate.load(out)
    assert gate.info["command"] == "test" and info["train_rows"] == 200  # the file given twice is read once
    assert info["dev"]["accuracy"] == 1.0
    sweep = info["dev_first_step"]
    assert sweep["gate >= 0.5"]["worse"] == 0.0 < sweep["best score (no gate)"]["worse"]


class _BrightnessCritic:
    """Scores a photo by its mean level: every brightening raises the score, the strongest the most. Told
    where to look, by the mean level there (the cells of the look, on refine's 4 x 4 grid)."""

    max_zooms = 3

    def __init__(self) -> None:
        self.looks: list[tuple[int, ...]] = []

    def score(self, rgb: np.ndarray, look: tuple[int, ...] = ()) -> Result:
        self.looks.append(tuple(look))
        a = np.asarray(rgb, np.float64)
        if look:
            h, w = a.shape[0] // 4, a.shape[1] // 4
            a = np.stack([a[c // 4 * h:(c // 4 + 1) * h, c % 4 * w:(c % 4 + 1) * w] for c in look])
        return _result(float(a.mean()))


class _DarkCritic(_BrightnessCritic):
    """Scores as :class:`_BrightnessCritic` and reports underexposure over the cells (of the whole photo, on
    the 4 x 4 grid) darker than 80, as one box around them: it finds the fault wherever it is."""

    def score(self, rgb: np.ndarray, look: tuple[int, ...] = ()) -> Result:
        a = np.asarray(rgb, np.float64).mean(axis=2)
        h, w = a.shape
        dark = [(r, c) for r in range(4) for c in range(4)
                if a[r * h // 4:(r + 1) * h // 4, c * w // 4:(c + 1) * w // 4].mean() < 80]
        found = ()
        if dark:
            rows, cols = [r for r, _ in dark], [c for _, c in dark]
            box = (min(cols) / 4, min(rows) / 4, (max(cols) + 1) / 4, (max(rows) + 1) / 4)
            found = (_finding("underexposure", box),)
        return dataclasses.replace(super().score(rgb, look), findings=found)


def _gate_preferring_milder() -> EditGate:
    """P(better) 0.27 for a finding's strongest candidate, 0.82 for the middle ones, 0.98 for the mildest."""
    tree = _tree([0, -1, 0, -1, -1], [0.25, 0, 0.75, 0, 0], [1, 0, 3, 0, 0], [2, 0, 4, 0, 0], [0, -1, 0, 1.5, 4])
    return EditGate.from_trees(("milder",), [tree], 0.0, 0.5)


def test_the_gate_not_the_score_chooses_and_a_niqe_veto_falls_through_to_its_next_choice(monkeypatch):
    from qds_lite import refine as R

    rgb = np.full((64, 64, 3), 60, np.uint8)
    finding = _finding("underexposure", box=(0.0, 0.0, 1.0, 1.0))
    gains = [("exposure", {"gain": g}) for g in (4.0, 2.0, 1.5)]  # strongest first
    before = _result(60.0, finding)
    monkeypatch.setattr(R, "_naturalness", lambda img: 0.0)
    step, *_ = R._try(_BrightnessCritic(), rgb, before, 0.0, finding, None, gains, 0.5, 0.3, None)
    assert step.kept and step.params == {"gain": 4.0} and step.p_better is None  # no gate: the best score
    gate = _gate_preferring_milder()
    step, *_ = R._try(_BrightnessCritic(), rgb, before, 0.0, finding, None, gains, 0.5, 0.3, gate)
    assert step.kept and step.params == {"gain": 1.5} and step.p_better > 0.9  # the gate's pick, not the score's
    mildest = float(R._edit(rgb, None, "exposure", {"gain": 1.5}).mean())
    monkeypatch.setattr(R, "_naturalness", lambda img: 5.0 if abs(float(img.mean()) - mildest) < 1e-9 else 0.0)
    step, *_ = R._try(_BrightnessCritic(), rgb, before, 0.0, finding, None, gains, 0.5, 0.3, gate)
    assert step.kept and step.params == {"gain": 2.0}  # NIQE vetoed the gate's first choice: its second
    strict = dataclasses.replace(gate, threshold=0.99)
    step, *_ = R._try(_BrightnessCritic(), rgb, before, 0.0, finding, None, gains, 0.5, 0.3, strict)
    assert not step.kept and "P(better)" in step.reason and step.p_better is not None
    dark = _result(1000.0, finding)  # nothing can raise this score: the gate had no say
    step, *_ = R._try(_BrightnessCritic(), rgb, dark, 0.0, finding, None, gains, 0.5, 0.3, gate)
    assert not step.kept and step.p_better is None and "<" in step.reason


def test_a_gate_asking_for_a_feature_the_runtime_lacks_is_refused(tmp_path):
    bad = tmp_path / "gate.json"
    tree = _tree([0, -1, -1], [0.5, 0, 0], [1, 0, 0], [2, 0, 0], [0, -1, 1])
    bad.write_text(json.dumps({"names": ["bogus"], "trees": [tree], "bias": 0, "threshold": 0.5}))
    with pytest.raises(ModelError, match="bogus"):
        EditGate.load(bad)


def test_probability_does_not_overflow():
    tree = _tree([0, -1, -1], [0.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, -1e6, 1e6])
    gate = EditGate.from_trees(("gain",), [tree], 0.0, 0.5)
    assert gate.probability({"gain": -1.0}) == 0.0 and gate.probability({"gain": 1.0}) == 1.0


def test_the_shipped_learned_files_are_read_only_once_their_sha256_matches(tmp_path, monkeypatch):
    from qds_lite import refine as R
    from qds_lite import refine_ops
    from qds_lite.model_store import check_package_data

    for name in ("refine_gate.json", "niqe_pris_params.npz"):
        check_package_data(GATE_PATH.parent / name, name)  # the manifest matches what ships
    copy = tmp_path / "refine_gate.json"
    copy.write_bytes(GATE_PATH.read_bytes() + b" ")
    (tmp_path / "manifest.json").write_text((GATE_PATH.parent / "manifest.json").read_text())
    monkeypatch.setattr(R, "GATE_PATH", copy)
    R.default_gate.cache_clear()
    try:
        with pytest.raises(ModelError, match="sha256") as err:
            R.default_gate()
        assert "--no-gate" in err.value.hint
    finally:
        R.default_gate.cache_clear()
    npz = tmp_path / "niqe_pris_params.npz"
    npz.write_bytes((GATE_PATH.parent / "niqe_pris_params.npz").read_bytes()[:-1])
    refine_ops._load_niqe_model.cache_clear()
    with pytest.raises(ModelError, match="NIQE model .* sha256"):
        refine_ops._load_niqe_model(npz)


def test_fit_gate_records_the_shipped_gates_sha256(tmp_path):
    from export.refine_gate import record_sha256
    from qds_lite.model_store import check_package_data, sha256_file

    gate = tmp_path / "refine_gate.json"
    gate.write_text("{}")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": {"refine_gate.json": "0" * 64, "other": "x"}}))
    record_sha256(gate)
    check_package_data(gate, "gate")
    assert json.loads((tmp_path / "manifest.json").read_text())["files"] == {
        "refine_gate.json": sha256_file(gate), "other": "x"}


def test_a_local_edit_is_judged_by_the_critic_looking_at_it(monkeypatch):
    """A brightened quarter moves the whole photo's score little; scored looking at the quarter, a lot. The
    kept step records where both verdicts looked, and refine goes on from the critic's own verdict."""
    from qds_lite import refine as R

    rgb = np.full((64, 64, 3), 120, np.uint8)
    rgb[:32, :32] = 40
    finding = _finding("underexposure", box=(0.0, 0.0, 0.5, 0.5))
    before = _result(float(rgb.mean()), finding)
    critic = _BrightnessCritic()
    monkeypatch.setattr(R, "_naturalness", lambda img: 0.0)
    step, edited, after, _ = R._try(critic, rgb, before, 0.0, finding, finding.box,
                                    [("exposure", {"gain": 2.0})], 0.5, 0.3, None)
    assert step.kept and step.looked == (0, 1, 4)  # the quarter's cells, as many as the zoom budget
    assert step.score_before == pytest.approx(40.0) and step.score_after > 50.0  # the quarter's own levels
    assert critic.looks == [(0, 1, 4), (0, 1, 4), ()]  # before and the edit looking there, then a free verdict
    assert after.score == pytest.approx(float(edited.mean()))
    assert step.score_after - step.score_before > 2 * (after.score - before.score)
    assert step.to_json()["looked"] == [[0.0, 0.0, 0.25, 0.25], [0.25, 0.0, 0.5, 0.25], [0.0, 0.25, 0.25, 0.5]]
    critic.looks.clear()
    step, *_ = R._try(critic, rgb, before, 0.0, finding, None, [("exposure", {"gain": 2.0})], 0.5, 0.3, None)
    assert step.looked == () and critic.looks == [()]  # a whole-image edit: the critic's own verdict, once


def test_cautious_edits_a_local_fault_only_where_the_critic_finds_it_again_in_the_photo_reframed(monkeypatch):
    """A dark corner is found again when the photo loses a twentieth of each side (the grid then falls a fifth
    of a cell away); an underexposure reported over a quarter no darker than the rest is not, and is left."""
    from qds_lite import refine as R

    monkeypatch.setattr(R, "_naturalness", lambda img: 0.0)
    lift = [("exposure", {"gain": 2.0})]
    rgb = np.full((80, 80, 3), 120, np.uint8)
    rgb[:20, :20] = 40  # one cell, dark: in the reframed photo it spans 16 of its 18 px cell
    corner = _finding("underexposure", box=(0.0, 0.0, 0.25, 0.25))
    assert R.seen_reframed(_DarkCritic(), rgb, corner, corner.box)
    critic = _DarkCritic()
    step, *_ = R._try(critic, rgb, _result(100.0, corner), 0.0, corner, corner.box, lift, 0.5, 0.3, None, True)
    assert step.kept and critic.looks == [(0,), (0,), (), (0,), ()]  # the reframed photo freely, then looking
    grey = np.full((80, 80, 3), 120, np.uint8)
    false = _finding("underexposure", box=(0.5, 0.5, 1.0, 1.0))
    assert not R.seen_reframed(_DarkCritic(), grey, false, false.box)
    step, edited, after, _ = R._try(_DarkCritic(), grey, _result(120.0, false), 0.0, false, false.box, lift,
                                    0.5, 0.3, None, True)
    assert not step.kept and "reframed" in step.reason and step.score_after > step.score_before + 0.5
    assert edited is grey and after.score == 120.0  # the photo and the verdict as they were
    step, *_ = R._try(_DarkCritic(), grey, _result(120.0, false), 0.0, false, false.box, lift, 0.5, 0.3, None)
    assert step.kept  # not cautious: the score rose, nothing else asked
    rgb[:20, :20] = 120
    rgb[60:, 60:] = 40  # a dark cell in the opposite corner: not where the corner's finding is,
    assert not R.seen_reframed(_DarkCritic(), rgb, corner, corner.box)
    assert not R.seen_reframed(_DarkCritic(), rgb, false, false.box)  # and a quarter of the quarter: not most of it
    rgb[40:, 40:] = 40
    assert R.seen_reframed(_DarkCritic(), rgb, false, false.box)


def test_the_cells_to_look_at_are_the_regions_most_damaged_first():
    from qds_lite import protocol as P
    from qds_lite.refine import look_cells

    finding = _finding("noise", box=(0.5, 0.5, 1.0, 1.0))
    damage = np.zeros((P.GRID, P.GRID, len(P.FINDING_TYPES) + 1), np.float32)
    damage[3, 3, P.FINDING_TYPES.index("noise")] = 0.9
    damage[2, 3, P.FINDING_TYPES.index("noise")] = 0.5
    damage[0, 0, P.FINDING_TYPES.index("noise")] = 1.0  # outside the region
    result = dataclasses.replace(_result(50.0, finding), damage_map=damage)
    assert look_cells(result, finding, finding.box, 3) == (15, 11, 10)
    assert look_cells(_result(50.0, finding), finding, finding.box, 3) == (10, 11, 14)  # no map: in order
    assert look_cells(result, finding, finding.box, 0) == () and look_cells(result, finding, None, 3) == ()
