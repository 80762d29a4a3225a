"""The edit gate of `qds refine`: its features, its fit, its file, and that refine obeys it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from qds_lite.errors import ModelError
from qds_lite.refine_gate import FEATURES, GATE_PATH, OPS, EditGate, edit_features, fit, overlap
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


def test_fit_learns_a_separable_rule_and_round_trips_through_json(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"gain": float(g), "change": float(c), "severity": float(n)}
            for g, c, n in rng.normal(size=(400, 3)) * [5.0, 1.0, 1.0] + [2.0, 1.0, 0.0]]
    labels = [r["gain"] - 4 * r["change"] > -2 for r in rows]
    gate = fit(rows[:300], labels[:300], threshold=0.6, info={"why": "test"})
    held = np.mean([(gate.probability(r) >= 0.5) == y for r, y in zip(rows[300:], labels[300:])])
    assert held > 0.9
    assert gate.weights[gate.names.index("gain")] > 0 > gate.weights[gate.names.index("change")]
    assert abs(gate.weights[gate.names.index("severity")]) < 0.5 * abs(gate.weights[gate.names.index("gain")])
    path = tmp_path / "gate.json"
    path.write_text(json.dumps(gate.to_json()))
    again = EditGate.load(path)
    assert again.threshold == 0.6 and again.info == {"why": "test"}
    assert all(again.probability(r) == pytest.approx(gate.probability(r)) for r in rows[:20])


def test_interactions_are_products_of_features():
    rng = np.random.default_rng(1)
    rows = [{"gain": float(g), "blur": float(b)} for g, b in zip(rng.normal(size=300), rng.integers(0, 2, 300))]
    labels = [(r["gain"] > 0) == (r["blur"] == 1) for r in rows]  # a gain means the opposite for blur edits
    plain = fit(rows, labels)
    crossed = fit(rows, labels, names=["gain", "blur", "gain*blur"])
    assert crossed.names == ("gain", "blur", "gain*blur")
    hits = [np.mean([(g.probability(r) >= 0.5) == y for r, y in zip(rows, labels)]) for g in (plain, crossed)]
    assert hits[1] > 0.9 > hits[0]


def test_a_malformed_gate_is_a_clear_error(tmp_path):
    bad = tmp_path / "gate.json"
    bad.write_text(json.dumps({"names": ["a", "b"], "mean": [0], "scale": [1, 1], "weights": [1, 1],
                               "bias": 0, "threshold": 0.5}))
    with pytest.raises(ModelError, match="one value per feature"):
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
    assert {factor for name in gate.names for factor in name.split("*")} <= set(feats)
    assert 0.0 < gate.probability(feats) < 1.0 and 0.0 < gate.threshold < 1.0
    dev = gate.info["dev"]
    assert dev["accuracy"] > max(dev["base_rate"], 1 - dev["base_rate"])  # better than always saying one thing


def test_refine_keeps_nothing_the_gate_refuses():
    pytest.importorskip("cv2")
    import qds_lite
    from qds_lite.refine import refine

    critic = qds_lite.load(backend="onnx")
    shipped = EditGate.load(GATE_PATH)
    never = EditGate(shipped.names, shipped.mean, shipped.scale, shipped.weights, shipped.bias, 1.01, {})
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
    assert r == pytest.approx({"improved": 1 / 3, "worse": 1 / 3, "pristine_max_drop": 0.008})
    assert first_step(records, best, margin=0.1)["improved"] == pytest.approx(2 / 3)  # now the deblock is kept
    assert first_step(records, lambda c: None, margin=0.5) == {"improved": 0.0, "worse": 0.0,
                                                                 "pristine_max_drop": 0.0}


def test_fit_gate_writes_a_gate_that_learned_which_edits_help(tmp_path):
    from export.refine_gate import fit_gate

    rng = np.random.default_rng(2)

    def records(n: int) -> list[dict]:
        out = []
        for _ in range(n):
            op = str(rng.choice(["deconvolve", "denoise"]))
            gain = float(rng.uniform(0, 10))
            helps = op == "denoise"  # in this world only denoising brings a photo back
            out.append({"photo": f"p{rng.integers(5)}", "kind": "noise", "score": 50.0,
                        "findings": [[_row(gain, op, 0.01 if helps else -0.01)]]})
        return out

    train, dev = tmp_path / "train.json", tmp_path / "dev.json"
    train.write_text(json.dumps(records(200)))
    dev.write_text(json.dumps(records(100)))
    out = tmp_path / "gate.json"
    info = fit_gate([train], dev, 0.5, 1.0, ["gain"], out, "test")
    gate = EditGate.load(out)
    assert "gain*op=denoise" in gate.names and gate.info["command"] == "test"
    assert info["dev"]["accuracy"] == 1.0
    sweep = info["dev_first_step"]
    assert sweep["gate >= 0.5"]["worse"] == 0.0 < sweep["best score (no gate)"]["worse"]


class _BrightnessCritic:
    """Scores a photo by its mean level: every brightening raises the score, the strongest the most."""

    def score(self, rgb: np.ndarray) -> Result:
        return _result(float(np.asarray(rgb, np.float64).mean()))


def _gate_preferring_milder() -> EditGate:
    return EditGate(("milder",), np.zeros(1), np.ones(1), np.array([5.0]), -1.0, 0.5, {})


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
    bad.write_text(json.dumps({"names": ["gain", "bogus*gain"], "mean": [0, 0], "scale": [1, 1],
                               "weights": [1, 1], "bias": 0, "threshold": 0.5}))
    with pytest.raises(ModelError, match="bogus"):
        EditGate.load(bad)


def test_probability_does_not_overflow():
    gate = EditGate(("gain",), np.zeros(1), np.ones(1), np.array([1.0]), 0.0, 0.5, {})
    assert gate.probability({"gain": -1e6}) == 0.0 and gate.probability({"gain": 1e6}) == 1.0
