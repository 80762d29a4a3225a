"""The cell diagnosis that grounds findings: its rules on hand-made maps, and the bundled critic's boxes."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest

from qds_lite import protocol as P
from qds_lite.critic import Critic
from qds_lite.diagnosis import CLEAN, CellMap, Diagnosis
from qds_lite.io import load_image

NOISE, BANDING, HAZE, OVER, CAST = (P.FINDING_TYPES.index(t)
                                    for t in ("noise", "banding", "haze", "overexposure", "color_cast"))
CELL = 640  # px per grid cell of the hand-made images: a 2560 px photo, sampled, not downscaled, for evidence


def cell_map(cells: dict[int, tuple[int, float]], support: float = 0.3, spread: float = 0.5,
             image: np.ndarray | None = None) -> CellMap:
    """A map whose probabilities are set by hand: ``cells[c] = (type, p)``, the rest of each cell clean;
    ``image`` (HxWx3 uint8) is what its pixel evidence reads."""
    m = CellMap.__new__(CellMap)
    m.diagnosis = Diagnosis({}, support, spread)
    m.glance_alone = False
    m.pixels = None if image is None else load_image(image).sample
    m._borne_out = {}
    m.probs = np.zeros((P.N_CELLS, CLEAN + 1))
    m.probs[:, CLEAN] = 1.0
    for c, (t, p) in cells.items():
        m.probs[c, t], m.probs[c, CLEAN] = p, 1.0 - p
    return m


def grammar_at(state: str, findings: tuple[P.Finding, ...] = (), pending: int | None = None) -> P.Grammar:
    g = P.Grammar()
    g.findings = list(findings)
    g.state = state
    g._pending = [] if pending is None else [pending]
    return g


def test_box_covers_the_connected_cells_that_show_the_type():
    # noise strong in cells 5, 6 and 10 (an L), weak in 7, and in cell 15 (not connected): box 5..10
    m = cell_map({5: (NOISE, 0.9), 6: (NOISE, 0.6), 10: (NOISE, 0.5), 7: (NOISE, 0.2), 15: (NOISE, 0.8)})
    assert m.region(NOISE) == (5, 10)
    m.diagnosis.spread = 0.2  # a looser spread takes in the weak neighbour too
    assert m.region(NOISE) == (5, 11)


def test_only_supported_unreported_types_may_be_named():
    m = cell_map({0: (NOISE, 0.8), 3: (HAZE, 0.25), 9: (BANDING, 0.5)})
    allowed = m.restrict(grammar_at("find_type"), P.TYPE_IDS)
    assert allowed == (P.TYPE0 + NOISE, P.TYPE0 + BANDING)  # haze under the support threshold
    reported = (P.Finding(NOISE, 3, 0, 0),)
    assert m.restrict(grammar_at("find_type", reported), P.TYPE_IDS) == (P.TYPE0 + BANDING,)


def image_with(cell: int, patch: np.ndarray) -> np.ndarray:
    """A mid-grey textured image whose grid ``cell`` holds ``patch`` (CxCx3 uint8, C = CELL px)."""
    rng = np.random.default_rng(0)
    g = np.clip(rng.normal(110, 30, (CELL * P.GRID, CELL * P.GRID, 1)), 0, 200).repeat(3, axis=2).astype(np.uint8)
    r, k = divmod(cell, P.GRID)
    g[r * CELL:(r + 1) * CELL, k * CELL:(k + 1) * CELL] = patch
    return g


def test_overexposure_and_colour_cast_need_their_pixel_signature_in_the_box():
    ramp = np.linspace(40, 240, CELL * CELL * 3).reshape(CELL, CELL, 3).astype(np.uint8)
    ramp[..., 1] = ramp[..., 2] = ramp[..., 0]  # a neutral (grey) ramp
    blown = ramp.copy()
    blown[::40, ::40] = 255  # specular highlights: one pixel in 1,600 blown white
    yellow = np.zeros((CELL, CELL, 3), np.uint8)
    yellow[..., 0], yellow[..., 1] = 250, 235  # bright saturated yellow: nothing clipped
    cast = np.clip(ramp * np.array([1.0, 0.75, 0.6]), 0, 255).astype(np.uint8)  # the grey ramp, warm cast
    maps = {"blown": (blown, OVER), "yellow": (yellow, OVER), "cast": (cast, CAST), "grey": (ramp, CAST)}
    allowed = {name: cell_map({6: (t, 0.9)}, image=image_with(6, patch)).restrict(grammar_at("find_type"), P.TYPE_IDS)
               for name, (patch, t) in maps.items()}
    assert allowed["blown"] == (P.TYPE0 + OVER,) and allowed["cast"] == (P.TYPE0 + CAST,)
    assert allowed["yellow"] == () and allowed["grey"] == ()
    # only the finding's own box is read: the same clipped cell elsewhere does not support it in cell 6
    elsewhere = cell_map({6: (OVER, 0.9)}, image=image_with(0, blown))
    assert elsewhere.restrict(grammar_at("find_type"), P.TYPE_IDS) == ()
    # a type without a pixel signature (noise) is left to the map alone
    assert cell_map({6: (NOISE, 0.9)}, image=image_with(6, ramp)).restrict(
        grammar_at("find_type"), P.TYPE_IDS) == (P.TYPE0 + NOISE,)


def test_findings_end_when_nothing_is_left_to_ground():
    clean = cell_map({})
    assert clean.restrict(grammar_at("findings"), (P.FIND, P.EOS)) == (P.EOS,)
    noisy = cell_map({2: (NOISE, 0.9)})
    assert noisy.restrict(grammar_at("findings"), (P.FIND, P.EOS)) == (P.FIND, P.EOS)
    done = (P.Finding(NOISE, 2, 2, 2),)
    assert noisy.restrict(grammar_at("findings", done), (P.FIND, P.EOS)) == (P.EOS,)


def test_the_box_tokens_are_forced_from_the_map():
    m = cell_map({12: (BANDING, 0.9), 13: (BANDING, 0.9)})
    assert m.restrict(grammar_at("find_tl", pending=BANDING), P.CELL_IDS) == (P.CELL0 + 12,)
    assert m.restrict(grammar_at("find_br", pending=BANDING), P.CELL_IDS) == (P.CELL0 + 13,)
    # severity and the choice between zooming and stopping stay the reasoner's
    assert m.restrict(grammar_at("find_sev", pending=BANDING), P.SEV_IDS) == P.SEV_IDS
    assert m.restrict(grammar_at("looking"), (P.ZOOM, P.STOP)) == (P.ZOOM, P.STOP)


def test_evidence_weighs_type_and_zoom_choices_only_where_set():
    m = cell_map({0: (NOISE, 0.9), 5: (BANDING, 0.4)}, support=0.3)
    logits = np.zeros(P.VOCAB_SIZE)
    assert m.weigh("find_type", logits) is logits and m.weigh("after_zoom", logits) is logits  # weights 0
    m.diagnosis.type_weight, m.diagnosis.zoom_weight = 3.0, 1.0
    typed = m.weigh("find_type", logits)
    assert typed[P.TYPE0 + NOISE] > typed[P.TYPE0 + BANDING] > typed[P.TYPE0 + HAZE]
    zoomed = m.weigh("after_zoom", logits)
    assert np.argmax(zoomed[list(P.CELL_IDS)]) == 0 and zoomed[P.CELL0 + 5] > zoomed[P.CELL0 + 9]
    assert np.array_equal(m.weigh("level", logits), logits)


def test_find_margin_lowers_only_the_logit_that_opens_a_finding():
    m = cell_map({0: (NOISE, 0.9)}, support=0.3)
    logits = np.zeros(P.VOCAB_SIZE)
    assert m.weigh("findings", logits) is logits  # margin 0: as decoded
    m.diagnosis.find_margin = 2.0
    weighed = m.weigh("findings", logits)
    assert weighed[P.FIND] == -2.0 and np.count_nonzero(weighed) == 1


def test_check_cells_are_the_most_suspect_ones_not_yet_zoomed():
    m = cell_map({5: (NOISE, 0.9), 6: (BANDING, 0.6), 9: (HAZE, 0.4), 10: (NOISE, 0.35)})
    m.diagnosis.check_zooms = 2
    assert m.to_check({5}) == [6, 9]
    assert m.to_check(set()) == [5, 6]
    m.diagnosis.check_zooms = 0
    assert m.to_check(set()) == []


def test_checks_ground_the_findings_and_leave_the_verdict_alone():
    """The shipped critic reads its most suspect unseen cells after the verdict: the verdict and the
    reasoner's zooms are those of a run without checks; the checks are other cells, and --zooms 0 (the
    glance alone) makes none. The score reads the map the checks informed (qds_lite/scale.py)."""
    from PIL import Image

    import qds_lite
    from export import synth

    from .conftest import DATA

    photo = np.asarray(Image.open(DATA / "coffee_clean.jpg").convert("RGB"))
    image = synth.apply(photo, [synth.Degradation("luma_noise", 0.7, (2, 0, 4, 2), seed=3)])
    critic = qds_lite.load(backend="onnx")
    checks = critic.files.config["diagnosis"]["check_zooms"]
    with_checks = critic.score(image)
    critic._reasoner.diagnosis.check_zooms = 0
    without = critic.score(image)
    assert with_checks.level_probs == without.level_probs
    for r in (with_checks, without):
        assert r.score == pytest.approx(critic.scale.score_of(r.level_probs, r.damage_map))
    looks = {tool: [s["box"] for s in with_checks.steps if s["tool"] == tool] for tool in ("zoom", "check")}
    assert looks["zoom"] == [s["box"] for s in without.steps if s["tool"] == "zoom"]
    assert len(looks["check"]) == checks > 0 and not set(map(tuple, looks["check"])) & set(map(tuple, looks["zoom"]))
    assert not any(s["tool"] == "check" for s in without.steps)
    critic._reasoner.diagnosis.check_zooms = checks
    assert not any(s["tool"] in ("zoom", "check") for s in critic.score(image, zooms=0).steps)


def _evidence(maps: list[CellMap], applied: list[tuple[int, float] | None]):
    """Evidence of hand-made maps, each image with its applied (type, severity) or None (clean)."""
    from export.diagnosis import Evidence

    return Evidence(np.stack([m.probs for m in maps]), [[] if a is None else [(*a, None)] for a in applied])


def test_support_is_chosen_per_type():
    """Noise: damaged images read 0.9, clean ones 0.6 (confident false alarms); banding: damaged 0.4,
    clean 0.2. No single threshold separates both; one per type does, and a type the images never show
    gets the pooled best."""
    pytest.importorskip("torch")
    from export.diagnosis import choose_support

    maps, applied = [], []
    for i in range(40):
        damaged = i % 2 == 0
        t = (NOISE, BANDING)[i // 2 % 2]
        p = {NOISE: (0.9, 0.6), BANDING: (0.4, 0.2)}[t][0 if damaged else 1]
        maps.append(cell_map({3: (t, p)}))
        applied.append((t, 0.8) if damaged else None)
    support, balanced = choose_support(_evidence(maps, applied))
    assert 0.6 < support[NOISE] <= 0.9 and 0.2 < support[BANDING] <= 0.4
    assert balanced == pytest.approx(1.0)
    assert support[HAZE] == support[P.FINDING_TYPES.index("upscale_artifacts")]  # both unseen: the pooled best


@pytest.mark.parametrize(("weight", "chosen"), [(1.0, "low"), (2.0, "high")])
def test_a_false_alarm_weighs_false_alarm_weight_hits(monkeypatch, weight, chosen):
    """Noise in 10 images: 7 read 0.8, 3 read 0.4; of 8 clean ones, 2 read 0.4 too. A low threshold finds all
    10 and flags 2 of 8 clean (1 - 0.25, balanced-accuracy style, beats 0.7); weighing a false alarm twice,
    the high one (0.7 - 0) beats it (1 - 0.5)."""
    pytest.importorskip("torch")
    from export import diagnosis

    monkeypatch.setattr(diagnosis, "FALSE_ALARM_WEIGHT", weight)
    reads = [0.8] * 7 + [0.4] * 3 + [0.4] * 2 + [0.05] * 6
    maps = [cell_map({0: (NOISE, p)}) for p in reads]
    applied = [(NOISE, 0.6)] * 10 + [None] * 8
    support, _ = diagnosis.choose_support(_evidence(maps, applied))
    assert (support[NOISE] <= 0.4) == (chosen == "low") and support[NOISE] <= 0.8


def test_thresholds_are_read_from_a_benchmark_run_as_from_samples():
    """The runtime's maps recorded by the accuracy benchmark give the same evidence as cached samples'."""
    pytest.importorskip("torch")
    from export.diagnosis import METHOD, Evidence, choose_thresholds
    from export.samples import KIND_NAMES
    from export.synth import KINDS

    maps = [cell_map({5: (NOISE, 0.9), 6: (NOISE, 0.7)}), cell_map({}), cell_map({10: (BANDING, 0.8)})]
    samples = {"kinds": np.array([[KIND_NAMES.index("luma_noise"), -1, -1], [-1] * 3,
                                  [KIND_NAMES.index("banding"), -1, -1]], np.int8),
               "severity": np.array([[0.6, 0, 0], [0] * 3, [0.6, 0, 0]], np.float32),
               "region": np.array([[(1, 1, 3, 2), (-1,) * 4, (-1,) * 4], [(-1,) * 4] * 3,
                                   [(-1,) * 4] * 3], np.int8)}
    records = [{"kind": k, "finding": KINDS.get(k or ""), "severity": s, "region": r,
                "cells": {METHOD: m.probs.tolist()}}
               for k, s, r, m in (("luma_noise", 0.6, [1, 1, 3, 2], maps[0]), (None, 0.0, None, maps[1]),
                                  ("banding", 0.6, None, maps[2]))]
    from_samples = choose_thresholds(Evidence.of_samples(maps, samples), log=lambda _: None)
    assert choose_thresholds(Evidence.of_records(records, METHOD), log=lambda _: None) == from_samples
    assert from_samples["dev_box_hit"] == 1.0  # cells 5 and 6: columns 1-2 of row 1, the noise region


def _dev_run(root, with_maps: bool = True) -> dict:
    """A dev-split accuracy run of the critic in ``root`` whose maps show noise in cells 5 and 6 of the noisy
    images and nothing on the clean ones."""
    from export.diagnosis import METHOD

    manifest = json.loads((root / "manifest.json").read_text())
    noisy, clean = cell_map({5: (NOISE, 0.9), 6: (NOISE, 0.7)}), cell_map({})
    records = [{"kind": "luma_noise", "finding": "noise", "severity": 0.6, "region": [1, 1, 3, 2],
                "cells": {METHOD: noisy.probs.tolist()} if with_maps else {}}] * 3
    records += [{"kind": None, "finding": None, "severity": 0.0, "region": None,
                 "cells": {METHOD: clean.probs.tolist()} if with_maps else {}}] * 3
    return {"command": "python -m benchmarks.accuracy --split dev --seed 1", "settings": {"split": "dev"},
            "model": {"files": {f["path"]: f["sha256"] for f in manifest["files"]}}, "methods": [METHOD],
            "records": records}


def test_choosing_on_a_dev_run_writes_the_thresholds_into_the_manifest(tmp_path):
    pytest.importorskip("torch")
    from export import diagnosis
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL

    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    (tmp_path / "run.json").write_text(json.dumps(_dev_run(root)))
    diagnosis.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json")])
    entry = json.loads((root / "manifest.json").read_text())["config"]["diagnosis"]
    assert 0.0 < entry["support"][NOISE] <= 0.9 and entry["chosen_on"].endswith("--seed 1")
    noisy = cell_map({5: (NOISE, 0.9), 6: (NOISE, 0.7)}, spread=entry["spread"])
    assert noisy.region(NOISE) == (5, 6)  # the box the spread grows covers the noisy region exactly
    critic = Critic.load(root, backend="onnx")  # files untouched: it still verifies, and reads the new thresholds
    assert critic._reasoner.diagnosis.support[NOISE] == entry["support"][NOISE]
    glance_run = _dev_run(root)
    glance_run["settings"]["zooms"] = 0  # a --zooms 0 run: the glance alone's thresholds, the critic's untouched
    (tmp_path / "glance.json").write_text(json.dumps(glance_run))
    diagnosis.main(["--model-dir", str(root), "--records", str(tmp_path / "glance.json"), "--glance"])
    config = json.loads((root / "manifest.json").read_text())["config"]
    assert config["diagnosis"] == entry and config["glance"]["support"] == entry["support"]
    assert config["glance"]["spread"] == entry["spread"]


def test_the_glance_alone_is_grounded_with_its_own_thresholds(tmp_path):
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL

    critic = Critic.load(backend="onnx")
    d = critic._reasoner.diagnosis
    glance = json.loads((BUNDLED_DIR / DEFAULT_MODEL / "manifest.json").read_text())["config"]["glance"]
    assert list(d.glance_support) == glance["support"] and d.glance_spread == glance["spread"]
    assert list(d.glance_support) != list(d.support)
    features = np.zeros((P.N_CELLS, critic.files.config["feat_dim"]), np.float32)
    assert list(d.start(features, glance_alone=True).support) == glance["support"]
    assert d.start(features).support is d.support and d.start(features).spread == d.spread
    m = cell_map({5: (NOISE, 0.9), 6: (NOISE, 0.4)}, support=0.5, spread=0.5)
    m.diagnosis.glance_support, m.diagnosis.glance_spread = np.full(len(P.FINDING_TYPES), 0.95), 0.4
    m.glance_alone = True  # the same map read as the glance alone's: noise 0.9 is not enough there
    assert not m.supported(NOISE) and m.region(NOISE) == (5, 6)


def test_the_accuracy_benchmark_records_the_maps_thresholds_are_chosen_from():
    pytest.importorskip("torch")
    import qds_lite
    from benchmarks.accuracy import score_all
    from export.diagnosis import METHOD, Evidence

    from .conftest import DATA

    critic = qds_lite.load(backend="onnx")
    records, _, _ = score_all([DATA / "coffee_clean.jpg"], DATA, {METHOD: critic}, [], ["luma_noise"], (0.5,),
                              seed=0, grid=P.GRID)
    assert [r["kind"] for r in records] == [None, "luma_noise", "luma_noise"]  # pristine, global, local
    evidence = Evidence.of_records(records, METHOD)
    assert evidence.maps.shape == (3, P.N_CELLS, CLEAN + 1) and np.allclose(evidence.maps.sum(-1), 1, atol=1e-3)
    assert evidence.degradations[0] == [] and evidence.degradations[2][0][2] == tuple(records[2]["region"])


def test_choosing_refuses_a_run_without_maps(tmp_path):
    pytest.importorskip("torch")
    from export import diagnosis
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL

    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    (tmp_path / "run.json").write_text(json.dumps(_dev_run(root, with_maps=False)))
    before = (root / "manifest.json").read_bytes()
    with pytest.raises(SystemExit, match="no diagnosis maps"):
        diagnosis.main(["--model-dir", str(root), "--records", str(tmp_path / "run.json")])
    assert (root / "manifest.json").read_bytes() == before


def test_pending_type_outside_a_finding_is_an_error():
    with pytest.raises(RuntimeError):
        _ = grammar_at("looking").pending_type


def test_bundled_critic_has_a_diagnosis(weights, model_files):
    d = Diagnosis.of_model(weights, model_files.config)
    assert d is not None and d.support.shape == (len(P.FINDING_TYPES),) and 0 < d.spread <= 1
    assert np.all((0 < d.support) & (d.support < 1))
    probs = d.glance(np.zeros((P.N_CELLS, model_files.config["feat_dim"]), np.float32))
    assert probs.shape == (P.N_CELLS, CLEAN + 1) and np.allclose(probs.sum(1), 1)


def test_a_diagnosis_that_does_not_fit_the_critic_is_refused(weights, model_files):
    from qds_lite.errors import ModelError

    config = model_files.config
    short = config | {"diagnosis": config["diagnosis"] | {"support": [0.3] * 5}}
    with pytest.raises(ModelError, match="5 support thresholds"):
        Diagnosis.of_model(weights, short)
    on_tokens = dict(weights) | {"diag.glance.w1": weights["diag.glance.w1"][:, :config["d_model"]]}
    with pytest.raises(ModelError, match="encoder's 345 features"):
        Diagnosis.of_model(on_tokens, config)


def test_a_critic_without_diagnosis_decodes_findings_as_before(weights, model_files):
    config = {k: v for k, v in model_files.config.items() if k != "diagnosis"}
    assert Diagnosis.of_model(weights, config) is None


CASES = [(kind, region) for kind in ("jpeg", "luma_noise", "chroma_noise", "banding", "gaussian_blur", "underexposure")
         for region in ((0, 0, 2, 2), (2, 2, 4, 4))]


def test_bundled_critic_boxes_local_damage_where_it_is():
    """Strong local damage on the test photos: the finding of its type is boxed on it (IoU >= 0.5) in
    most cases. Before findings were grounded, their decoded corners hit 11 % of held-out local damage."""
    from PIL import Image

    import qds_lite
    from benchmarks.accuracy import box_iou
    from export import synth

    from .conftest import DATA

    critic = qds_lite.load(backend="onnx")
    hits, seen = 0, []
    for name in ("coffee_clean.jpg", "rocket_clean.jpg"):
        photo = np.asarray(Image.open(DATA / name).convert("RGB"))
        for i, (kind, region) in enumerate(CASES):
            deg = synth.Degradation(kind, 0.8, region, seed=i)
            r = critic.score(synth.apply(photo, [deg]))
            named = [f for f in r.findings if f.type == deg.finding]
            hit = any(box_iou(f.box, deg.box) >= 0.5 for f in named)
            hits += hit
            seen.append(f"{name} {kind} {region}: {[(f.type, f.box) for f in r.findings]}")
    assert hits >= len(seen) // 2, "\n".join(seen)


def test_results_carry_the_damage_map_the_findings_were_grounded_in():
    """Strong noise in the top-left quarter: the map reads those cells as damaged more than the rest, and every
    finding's box is where its type reads highest. The map is a read-only (grid, grid, types + clean) array of
    probabilities, left out of the trace and of Result equality."""
    from PIL import Image

    import qds_lite
    from export import synth

    from .conftest import DATA

    photo = np.asarray(Image.open(DATA / "coffee_clean.jpg").convert("RGB"))
    r = qds_lite.load(backend="onnx").score(synth.apply(photo, [synth.Degradation("luma_noise", 0.8, (0, 0, 2, 2), 0)]))
    m = r.damage_map
    assert m.shape == (P.GRID, P.GRID, CLEAN + 1) and np.allclose(m.sum(-1), 1, atol=1e-5) and not m.flags.writeable
    assert m[:2, :2, CLEAN].mean() < m[2:, 2:, CLEAN].mean()
    for f in r.findings:
        row, col = np.unravel_index(np.argmax(m[..., P.FINDING_TYPES.index(f.type)]), (P.GRID, P.GRID))
        assert f.box[0] <= (col + 0.5) / P.GRID <= f.box[2] and f.box[1] <= (row + 0.5) / P.GRID <= f.box[3]
    assert "damage_map" not in r.trace and dataclasses.replace(r, damage_map=None) == r


def _fake_samples(n: int, seed: int, feat: int = 12) -> dict[str, np.ndarray]:
    """Cached-sample arrays in export.samples' layout where a region's cells carry a marker feature:
    feature 0 for luma noise, feature 1 for banding (the rest is noise), so a head can learn it."""
    from export.samples import KIND_NAMES

    rng = np.random.default_rng(seed)
    glance = rng.normal(0, 1, (n, P.N_CELLS, feat)).astype(np.float32)
    zooms = rng.normal(0, 1, (n, 6, 4, feat)).astype(np.float32)
    kinds = np.full((n, 3), -1, np.int8)
    severity = np.zeros((n, 3), np.float32)
    region = np.full((n, 3, 4), -1, np.int8)
    cells = np.stack([rng.permutation(P.N_CELLS)[:6] for _ in range(n)]).astype(np.int8)
    for i in range(n):
        if i % 3 == 2:
            continue  # clean
        kind = ("luma_noise", "banding")[i % 3]
        c0, r0 = int(rng.integers(0, 3)), int(rng.integers(0, 3))
        kinds[i, 0], severity[i, 0], region[i, 0] = KIND_NAMES.index(kind), 0.8, (c0, r0, c0 + 2, r0 + 2)
        marked = [r * P.GRID + c for r in range(r0, r0 + 2) for c in range(c0, c0 + 2)]
        glance[i, marked, i % 3] += 4.0
        for z, cell in enumerate(cells[i]):
            zooms[i, z, :, i % 3] += 4.0 * (cell in marked)
    return {"glance": glance.astype(np.float16), "zooms": zooms.astype(np.float16), "zoom_cells": cells,
            "kinds": kinds, "severity": severity, "region": region}


def test_training_learns_the_cells_and_chooses_thresholds():
    pytest.importorskip("torch")
    from export.diagnosis import train_diagnosis

    weights, log = train_diagnosis(_fake_samples(1500, 1), _fake_samples(90, 2), log=lambda _: None)
    assert {k.rsplit(".", 1)[0] for k in weights} == {"diag.glance", "diag.zoom"}
    assert max(h["dev_cell_accuracy"] for h in log["history"] if h["head"] == "diag.glance") > 0.9
    assert log["dev_type_balanced_accuracy"] > 0.9 and log["dev_box_hit"] > 0.8
    assert len(log["support"]) == len(P.FINDING_TYPES) and all(0 < v < 1 for v in log["support"])
    assert 0 < log["spread"] <= 1


def test_folded_standardization_gives_the_same_logits_on_raw_features():
    """The heads learn on standardized features and ship folded: raw in, the same logits out."""
    from export.diagnosis import fold_standardization
    from qds_lite.diagnosis import zoom_evidence
    from qds_lite.numpy_ops import mlp

    rng = np.random.default_rng(3)
    f, hidden = 6, 5
    mean, std = rng.normal(0, 3, f).astype(np.float32), rng.uniform(0.5, 4, f).astype(np.float32)
    head = {"h.w1": rng.normal(0, 1, (hidden, 3 * f)).astype(np.float32),
            "h.b1": rng.normal(0, 1, hidden).astype(np.float32),
            "h.w2": rng.normal(0, 1, (4, hidden)).astype(np.float32), "h.b2": np.zeros(4, np.float32)}
    glance_cell, zoom_cells = rng.normal(2, 3, f), rng.normal(2, 3, (4, f))
    standardized = zoom_evidence((glance_cell - mean) / std, (zoom_cells - mean) / std)
    folded = fold_standardization(head, "h", mean, std, (True, True, False))
    np.testing.assert_allclose(mlp(folded, "h", zoom_evidence(glance_cell, zoom_cells)), mlp(head, "h", standardized),
                               rtol=1e-4, atol=1e-4)


def test_scoring_reads_the_evidence_from_the_native_pixels_of_the_findings_box(monkeypatch):
    """The runtime hands the map the photo's own pixels: a gate that refuses underexposure removes the dark
    coffee's finding, and it was shown the native pixels of the box the map grounded (not the glance)."""
    from qds_lite import diagnosis, load

    critic = load(backend="numpy")
    path = "tests/data/coffee_dark.jpg"  # 600 x 400, underexposed everywhere
    assert "underexposure" in {f.type for f in critic.score(path).findings}
    seen = []
    monkeypatch.setitem(diagnosis.EVIDENCE, "underexposure", (lambda px: seen.append(px.shape) or 0.0, 0.5))
    assert "underexposure" not in {f.type for f in critic.score(path).findings}
    assert seen and all(h * P.GRID >= 100 and w * P.GRID >= 150 for h, w, _ in seen)  # >= a cell of 600 x 400
    assert max(w for _, w, _ in seen) > P.GLANCE_SIZE // 2  # wider than half the glance: native pixels


def constant_head(prefix: str, logits: np.ndarray, n_in: int) -> dict[str, np.ndarray]:
    """An MLP whose output is ``logits`` whatever its input."""
    return {f"{prefix}.w1": np.zeros((2, n_in), np.float32), f"{prefix}.b1": np.zeros(2, np.float32),
            f"{prefix}.w2": np.zeros((len(logits), 2), np.float32), f"{prefix}.b2": logits.astype(np.float32)}


def test_a_zoomed_cell_reads_the_zoom_head_times_the_cue_head():
    """With a cue head the zoomed cell's probabilities are the zoom head's times the cue head's to the
    cue_weight, renormalized; without a window, or with weight 0, the zoom head's alone."""
    from qds_lite.numpy_ops import softmax
    from qds_lite.pixel_cues import NAMES

    f = 4
    rng = np.random.default_rng(5)
    zoom_logits, cue_logits = rng.normal(0, 2, CLEAN + 1), rng.normal(0, 2, CLEAN + 1)
    weights = (constant_head("diag.glance", np.zeros(CLEAN + 1), f) | constant_head("diag.zoom", zoom_logits, 3 * f)
               | constant_head("diag.cues", cue_logits, len(NAMES)))
    window = np.random.default_rng(6).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    glance, zoom = np.zeros((P.N_CELLS, f), np.float32), np.zeros((4, f), np.float32)
    for cue_weight, with_window, expected in [
            (0.75, True, softmax(zoom_logits + 0.75 * np.log(softmax(cue_logits)))),
            (0.75, False, softmax(zoom_logits)), (0.0, True, softmax(zoom_logits))]:
        m = Diagnosis(weights, 0.3, 0.5, cue_weight=cue_weight).start(glance)
        m.zoomed(3, zoom, window if with_window else None)
        np.testing.assert_allclose(m.probs[3], expected, rtol=1e-5, atol=1e-7)
    no_head = {k: v for k, v in weights.items() if not k.startswith("diag.cues.")}
    assert Diagnosis(no_head, 0.3, 0.5, cue_weight=0.75).cue_weight == 0.0  # a weight without a head is ignored


def test_cue_head_learns_cues_and_joins_the_critic_that_scores_with_it(tmp_path, monkeypatch):
    """export.cue_head on rows where two cues mark two types: the head learns them, its weight is chosen
    from CUE_WEIGHTS on the dev rows, and added to a critic it is read on every zoom and check window."""
    pytest.importorskip("torch")
    import qds_lite
    from export import cue_head
    from qds_lite import diagnosis
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL
    from qds_lite.pixel_cues import NAMES

    def fake_rows(n: int, seed: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        labels = rng.choice([NOISE, BANDING, CLEAN], n)
        cues = rng.normal(0, 1, (n, len(NAMES))).astype(np.float32)
        cues[labels == NOISE, 0] += 4.0
        cues[labels == BANDING, 1] += 4.0
        zoom = np.full((n, CLEAN + 1), 0.5 / CLEAN)
        zoom[np.arange(n), np.where(rng.random(n) < 0.6, labels, CLEAN)] += 0.5  # a zoom head right 60 % of the time
        return {"cues": cues, "labels": labels, "zoom": zoom}

    monkeypatch.setattr(cue_head, "EPOCHS", 30)
    weights, record = cue_head.train_cue_head(fake_rows(3000, 1), fake_rows(300, 2), log=lambda _: None)
    assert {k.rsplit(".", 1)[0] for k in weights} == {"diag.cues"}
    assert record["dev_cell_accuracy"]["cue_head"] > 0.9 > record["dev_cell_accuracy"]["zoom_head"]
    assert record["cue_weight"] in cue_head.CUE_WEIGHTS

    model = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, model)
    cue_head.add_to_critic(model, weights, record)
    critic = qds_lite.load(model, backend="numpy")
    assert critic.files.config["diagnosis"]["cue_weight"] == record["cue_weight"]
    seen = []
    real = diagnosis.window_cues
    monkeypatch.setattr(diagnosis, "window_cues", lambda w: seen.append(w.shape) or real(w))
    result = critic.score("tests/data/coffee_jpeg_local.jpg")
    looked = [s for s in result.steps if s["tool"] in ("zoom", "check")]
    assert seen == [(128, 128, 3)] * len(looked) and looked
