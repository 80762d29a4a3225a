"""Fast tests of the metric functions of ``benchmarks/accuracy.py`` on tiny hand-made inputs with known
answers. Nothing here scores an image or loads a critic."""

from __future__ import annotations

import importlib
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
acc = importlib.import_module("benchmarks.accuracy")


def test_importing_the_benchmark_is_light():
    code = ("import sys, benchmarks.accuracy, benchmarks.speed; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('qds_lite', 'export', 'onnxruntime', 'torch')]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=_ROOT, check=True, timeout=60)


# --- SRCC / PLCC -----------------------------------------------------------------------------


def test_srcc_known_values():
    assert acc.srcc([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert acc.srcc([1, 2, 3, 4], [40, 30, 20, 10]) == pytest.approx(-1.0)
    assert acc.srcc([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # rank, not linear
    # one swapped neighbour pair among 4: rho = 1 - 6*2/(4*15) = 0.8
    assert acc.srcc([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


def test_srcc_edge_cases():
    assert acc.srcc([5, 5, 5], [1, 2, 3]) == 0.0  # a constant method ranks nothing
    assert math.isnan(acc.srcc([1], [1]))
    assert acc.srcc([1, 2, float("nan"), 4], [1, 2, 0, 4]) == pytest.approx(1.0)  # non-finite pairs dropped
    with pytest.raises(ValueError):
        acc.srcc([1, 2], [1, 2, 3])


def test_logistic4_shape():
    assert acc.logistic4(np.array([0.0]), 10.0, 2.0, 0.0, 1.0)[0] == pytest.approx(6.0)  # midpoint
    assert acc.logistic4(np.array([1e6]), 10.0, 2.0, 0.0, 1.0)[0] == pytest.approx(10.0)
    assert acc.logistic4(np.array([-1e6]), 10.0, 2.0, 0.0, 1.0)[0] == pytest.approx(2.0)


def test_plcc_of_monotone_linear_relation_is_one():
    x = np.linspace(0, 100, 40)
    r, fitted = acc.plcc_logistic(x, 0.3 * x - 7)
    assert fitted and r == pytest.approx(1.0, abs=1e-3)
    r, fitted = acc.plcc_logistic(x, -0.3 * x + 7)  # a method ranking backwards reads negative
    assert fitted and r == pytest.approx(-1.0, abs=1e-3)


def test_plcc_logistic_linearises_a_sigmoid():
    x = np.linspace(-5, 5, 60)
    y = 1.0 / (1.0 + np.exp(-2.0 * x))
    r, fitted = acc.plcc_logistic(x, y)
    assert fitted and r == pytest.approx(1.0, abs=1e-6)
    assert acc.pearson(x, y) < 0.98  # the plain linear correlation is clearly lower


def test_plcc_falls_back_to_pearson():
    r, fitted = acc.plcc_logistic([1.0, 2.0, 4.0], [1.0, 2.0, 3.0])  # too few points to fit 4 parameters
    assert not fitted and r == pytest.approx(acc.pearson([1, 2, 4], [1, 2, 3]))
    r, fitted = acc.plcc_logistic([3.0] * 10, list(range(10)))  # constant method
    assert not fitted and r == 0.0


# --- D-test AUC ------------------------------------------------------------------------------


def test_auc_known_values():
    assert acc.roc_auc([3, 4, 5], [0, 1, 2]) == 1.0
    assert acc.roc_auc([0, 1, 2], [3, 4, 5]) == 0.0
    assert acc.roc_auc([1, 1], [1, 1, 1]) == 0.5
    assert acc.roc_auc([2, 3], [1, 2]) == pytest.approx(3.5 / 4)  # one tied pair counts 1/2
    assert math.isnan(acc.roc_auc([], [1.0]))
    assert acc.roc_auc([3, float("nan")], [1]) == 1.0


def test_auc_matches_brute_force():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 25).astype(float), rng.integers(0, 6, 17).astype(float)
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert acc.roc_auc(pos, neg) == pytest.approx(brute)


# --- P-test ----------------------------------------------------------------------------------


def test_pair_counts():
    sev = [0.0, 0.2, 0.4, 0.6, 0.8]
    # pairs >= 0.4 apart: (0,.4) (0,.6) (0,.8) (.2,.6) (.2,.8) (.4,.8); 0.6-0.2 is 0.3999... in floats
    assert acc.pair_counts(sev, [5, 4, 3, 2, 1]) == (6.0, 6)
    assert acc.pair_counts(sev, [1, 2, 3, 4, 5]) == (0.0, 6)
    assert acc.pair_counts(sev, [1, 1, 1, 1, 1]) == (3.0, 6)  # ties count 1/2
    assert acc.pair_counts(sev[::-1], [1, 2, 3, 4, 5]) == (6.0, 6)  # order does not matter
    assert acc.pair_counts([0.0, 0.2], [1, 2]) == (0.0, 0)  # no pair far enough apart
    assert acc.pair_counts(sev, [5, float("nan"), 3, 2, 1]) == (4.0, 4)


def test_pair_accuracy_pools_groups():
    groups = [([0.0, 0.5], [2.0, 1.0]), ([0.0, 0.5, 1.0], [0.0, 1.0, 2.0])]
    assert acc.pair_accuracy(groups) == pytest.approx(1 / 4)  # 1 right of 1, 0 right of 3
    assert math.isnan(acc.pair_accuracy([]))


# --- localisation ----------------------------------------------------------------------------


def test_box_iou():
    assert acc.box_iou((0.1, 0.2, 0.5, 0.9), (0.1, 0.2, 0.5, 0.9)) == pytest.approx(1.0)
    assert acc.box_iou((0, 0, 0.5, 0.5), (0.5, 0.5, 1, 1)) == 0.0  # touching corners
    assert acc.box_iou((0, 0, 0.25, 0.25), (0.5, 0.5, 1, 1)) == 0.0
    assert acc.box_iou((0, 0, 1, 1), (0.5, 0, 1.5, 1)) == pytest.approx(1 / 3)
    assert acc.box_iou((0, 0, 1, 1), (0, 0, 0.5, 0.5)) == pytest.approx(0.25)
    assert acc.box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0


def test_region_box():
    assert acc.region_box((1, 2, 3, 4), 4) == (0.25, 0.5, 0.75, 1.0)
    assert acc.region_box(None, 4) == (0.0, 0.0, 1.0, 1.0)


def test_top_finding_is_most_severe_first_on_ties():
    fs = [{"type": "a", "severity": 0.3}, {"type": "b", "severity": 0.7}, {"type": "c", "severity": 0.7}]
    assert acc.top_finding(fs)["type"] == "b"
    assert acc.top_finding([]) is None


def test_localisation_metrics():
    recs = [
        {"kind": "jpeg", "finding": "jpeg", "region": (0, 0, 2, 2),  # right type, exact box
         "findings": {"m": [{"type": "jpeg", "severity": 0.7, "box": (0, 0, 0.5, 0.5)}]}},
        {"kind": "haze", "finding": "haze", "region": (0, 0, 1, 1),  # right type second, half-size box
         "findings": {"m": [{"type": "noise", "severity": 0.9, "box": (0.5, 0.5, 1, 1)},
                            {"type": "haze", "severity": 0.3, "box": (0, 0, 0.25, 0.125)}]}},
        {"kind": "banding", "finding": "banding", "region": (3, 3, 4, 4), "findings": {"m": []}},  # nothing
    ]
    m = acc.localisation(recs, "m", 4)
    assert m["n"] == 3
    assert m["type_top1"] == pytest.approx(1 / 3)
    assert m["type_any"] == pytest.approx(2 / 3)
    assert m["other_types"] == pytest.approx(1 / 3)  # the noise finding on the haze image
    assert m["iou_hit"] == pytest.approx(2 / 3)  # IoU exactly 0.5 counts as a hit
    assert m["mean_iou"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert math.isnan(acc.localisation([], "m", 4)["type_top1"])


# --- everything together on a hand-made set ---------------------------------------------------


def _toy_set(quality_of):
    photo, kind, sev, q = [], [], [], []
    for p in ("a", "b", "c"):
        photo.append(p), kind.append(None), sev.append(0.0), q.append(quality_of(p, None, 0.0))
        for k in ("blur", "noise"):
            for s in (0.2, 0.4, 0.6, 0.8):
                photo.append(p), kind.append(k), sev.append(s), q.append(quality_of(p, k, s))
    return photo, kind, sev, q


def test_severity_metrics_of_a_perfect_method():
    res = acc.severity_metrics(*_toy_set(lambda p, k, s: 100 - 100 * s), kinds=("blur", "noise"))
    summ = res["summary"]
    for key in ("srcc", "srcc_kind_mean", "l_srcc", "d_auc", "p_acc", "cross_srcc"):
        assert summ[key] == pytest.approx(1.0), key
    assert summ["plcc"] == pytest.approx(1.0, abs=1e-3)
    assert summ["n"] == 27 and summ["n_failed"] == 0
    assert res["per_kind"]["blur"]["n"] == 15  # 3 pristine + 3 photos x 4 levels


def test_severity_metrics_separate_within_photo_and_pooled_figures():
    offset = {"a": 0.0, "b": 15.0, "c": -15.0}  # photo content shifts every score of a photo
    res = acc.severity_metrics(*_toy_set(lambda p, k, s: 100 - 100 * s + offset[p]), kinds=("blur", "noise"))
    summ = res["summary"]
    for key in ("l_srcc", "p_acc", "cross_srcc"):  # within one photo the ranking is still perfect
        assert summ[key] == pytest.approx(1.0), key
    assert 0.9 < summ["srcc"] < 1.0  # pooled over photos the offsets cost some rank agreement
    assert summ["d_auc"] == pytest.approx(1.0)  # pristine 85..115 vs severity >= 0.4: at most 75


def test_severity_metrics_of_a_method_blind_to_one_kind():
    res = acc.severity_metrics(*_toy_set(lambda p, k, s: 50.0 if k == "noise" else 50.0 - 10 * s),
                               kinds=("blur", "noise"))
    assert res["per_kind"]["blur"]["srcc"] == pytest.approx(1.0)
    assert res["per_kind"]["noise"]["srcc"] == 0.0
    assert res["per_kind"]["noise"]["d_auc"] == 0.5
    assert res["per_kind"]["noise"]["p_acc"] == 0.5
    assert res["summary"]["d_auc"] == pytest.approx(0.75)  # blur: all 6 below pristine, noise: 6 ties


def test_backend_gap():
    gap = acc.backend_gap({"numpy": np.array([10.0, 20.0, 30.0]), "onnx": np.array([10.5, 18.0, 30.0])})
    assert set(gap) == {"onnx"}
    assert gap["onnx"]["max_abs"] == pytest.approx(2.0)
    assert gap["onnx"]["mean_abs"] == pytest.approx(2.5 / 3)
    assert gap["onnx"]["share_over_1"] == pytest.approx(1 / 3)
    assert acc.backend_gap({"onnx": np.zeros(2)}) == {}


# --- the test-set plan -----------------------------------------------------------------------


def test_parse_levels():
    assert acc.parse_levels("4") == (0.2, 0.4, 0.6, 0.8)
    assert acc.parse_levels("0.7,0.3") == (0.3, 0.7)
    for bad in ("0", "1.5", "0,0.5"):
        with pytest.raises(ValueError):
            acc.parse_levels(bad)


def test_build_items_is_deterministic_and_complete():
    kinds = ("gaussian_blur", "jpeg", "haze")
    items = acc.build_items("x/photo.jpg", kinds, (0.2, 0.6), seed=0, grid=4)
    assert items == acc.build_items("x/photo.jpg", kinds, (0.2, 0.6), seed=0, grid=4)
    glob = [i for i in items if i.set == "global"]
    local = [i for i in items if i.set == "local"]
    assert len(glob) == 1 + len(kinds) * 2 and glob[0].kind is None and glob[0].severity == 0.0
    assert len(local) == len(kinds) and all(i.severity == acc.LOCAL_SEVERITY for i in local)
    for k in kinds:  # one seed per (photo, kind): levels differ only in strength
        assert len({i.seed for i in glob if i.kind == k}) == 1
    for i in local:
        c0, r0, c1, r1 = i.region
        assert 0 <= c0 < c1 <= 4 and 0 <= r0 < r1 <= 4 and 1 <= c1 - c0 <= 2 and 1 <= r1 - r0 <= 2
    other = acc.build_items("x/photo.jpg", kinds, (0.2, 0.6), seed=1, grid=4)
    assert [i.seed for i in other] != [i.seed for i in items]


def test_random_region_covers_all_sizes():
    rng = np.random.default_rng(0)
    sizes = {(c1 - c0, r1 - r0) for c0, r0, c1, r1 in (acc.random_region(rng, 4) for _ in range(200))}
    assert sizes == {(1, 1), (1, 2), (2, 1), (2, 2)}


def test_compare_benchmark_pairs_and_accuracy():
    from benchmarks import compare as C

    def rec(photo, kind, sev, **scores):
        return {"photo": photo, "kind": kind, "severity": sev, "scores": scores}

    records = [rec("a", None, 0.0, good=3.0, bad=0.0, flat=1.0), rec("a", "blur", 0.6, good=1.0, bad=2.0, flat=1.0),
               rec("a", "noise", 0.2, good=2.0, bad=1.0, flat=1.0), rec("b", "blur", 0.8, good=0.5, bad=9.0, flat=1.0)]
    same = C.same_content_pairs(records)
    assert sorted(same) == [(0, 1), (2, 1)]  # gap 0.4 counts despite float rounding; (0, 2) is only 0.2 apart
    assert all(records[a]["photo"] == records[b]["photo"] and records[a]["kind"] != records[b]["kind"] for a, b in same)
    cross = C.cross_content_pairs(records, max_pairs=100, seed=0)
    assert sorted(cross) == [(0, 3), (2, 3)]  # different photos, gap >= 0.6, better first
    assert C.accuracy(records, same, "good") == (1.0, len(same))
    assert C.accuracy(records, same, "bad") == (0.0, len(same))
    assert C.accuracy(records, same, "flat") == (0.5, len(same))  # ties count half
    assert np.isnan(C.brier(records, same, "good"))  # no level distributions stored
    for r, p in zip(records, ([0, 0, 0, 0, 1], [1, 0, 0, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 0])):
        r["level_probs"] = {"good": p}
    assert C.brier(records, same, "good") < 0.01  # confident and right


def test_speed_tables_show_peak_memory_against_the_budgets():
    speed = importlib.import_module("benchmarks.speed")
    proc = {k: {"median_s": 0.2, "min_s": 0.1, "peak_rss_mb": 50.0} for k in speed.PROCESS_LABELS}
    models = {"onnx": {"median_ms": 40.0, "min_ms": 38.0, "score": 50.0},
              "_decode": {"median_ms": 70.0, "min_ms": 60.0}}
    memory = {name: {"size": list(size), "megapixels": round(size[0] * size[1] / 1e6, 1), "budget_mb": budget,
                     "qds_score_rss_mb": 123.4, "pillow_decode_rss_mb": 99.0}
              for name, size, budget in speed.MEMORY_CASES}
    header, rows = speed.build_tables(proc, models, memory)["memory"]
    assert header[1:] == ["qds score RSS MB", "Pillow decode RSS MB", "budget MB"]
    assert rows == [["6000x4000 JPEG (24 MP)", "123", "99", "400"], ["12500x8000 JPEG (100 MP)", "123", "99", "1500"]]
    assert "memory" not in speed.build_tables(proc, models, {})  # --no-memory


def test_more_local_items_keep_the_first_and_add_new_regions():
    kinds = ("gaussian_blur", "jpeg")
    one = [i for i in acc.build_items("x/photo.jpg", kinds, (0.5,), seed=0, grid=4) if i.set == "local"]
    three = [i for i in acc.build_items("x/photo.jpg", kinds, (0.5,), seed=0, grid=4, local_per_kind=3)
             if i.set == "local"]
    assert len(three) == 3 * len(kinds)
    assert [i for i in three if i.seed in {o.seed for o in one}] == one  # the default test is unchanged
    assert len({i.seed for i in three}) == len(three)


def test_zoom_hits_and_clean_photos_given_findings():
    cell = 0.25
    local = [
        {"kind": "jpeg", "finding": "jpeg", "region": (1, 1, 3, 3), "findings": {"m": []},  # zoom centred inside
         "zooms": {"m": [[0, 0, cell, cell], [0.3, 0.3, 0.45, 0.45]]}},
        {"kind": "haze", "finding": "haze", "region": (0, 0, 1, 1), "findings": {"m": []},  # zooms elsewhere
         "zooms": {"m": [[0.5, 0.5, 0.75, 0.75], [0.2, 0.2, 0.4, 0.4]]}},  # the second's centre is at 0.3
        {"kind": "noise", "finding": "noise", "region": (3, 3, 4, 4), "findings": {"m": []}, "zooms": {"m": []}},
    ]
    assert acc.localisation(local, "m", 4)["zoom_hit"] == pytest.approx(1 / 3)
    glob = [{"set": "global", "kind": None, "findings": {"m": [{"type": "haze"}]}},
            {"set": "global", "kind": None, "findings": {"m": []}},
            {"set": "global", "kind": "jpeg", "findings": {"m": [{"type": "jpeg"}]}}]  # degraded: not counted
    assert acc.clean_flagged(glob, "m") == pytest.approx(0.5)
    assert math.isnan(acc.clean_flagged(glob[2:], "m"))


def test_whole_image_damage_named_counts_any_finding_of_the_type_from_the_d_test_severity():
    def rec(kind, finding, severity, found):
        return {"set": "global", "kind": kind, "finding": finding, "severity": severity,
                "findings": {"m": [{"type": t} for t in found]}}

    glob = [rec("jpeg", "jpeg", 0.4, ["haze", "jpeg"]),  # named second: counts
            rec("defocus", "defocus", 0.8, ["blur"]),  # another type: missed
            rec("haze", "haze", 0.6, []),  # nothing: missed
            rec("haze", "haze", 0.2, []),  # too mild: not counted
            rec(None, None, 0.0, ["haze"]),  # pristine: not counted
            rec("jp2k", None, 0.8, [])]  # damage no type of ours names (benchmarks.waterloo): not counted
    assert acc.whole_image_named(glob, "m") == pytest.approx(1 / 3)
    assert math.isnan(acc.whole_image_named([{**glob[0], "set": "local"}], "m"))  # the local set is not its job


def test_whole_process_timings_run_the_package_from_bytecode():
    from importlib.util import cache_from_source

    import qds_lite.critic

    speed = importlib.import_module("benchmarks.speed")
    pyc = Path(cache_from_source(qds_lite.critic.__file__))
    pyc.unlink(missing_ok=True)
    speed.byte_compile_qds()
    assert pyc.is_file()  # as `pip install .` leaves it, even where Python itself writes no bytecode


def test_score_by_severity_averages_each_level_with_pristine_as_zero():
    records = [{"severity": None, "scores": {"qds/onnx": 90.0}}, {"severity": 0.0, "scores": {"qds/onnx": 70.0}},
               {"severity": 0.4, "scores": {"qds/onnx": 50.0}}, {"severity": 0.4, "scores": {"qds/onnx": 40.0}}]
    assert acc.score_by_severity(records, "qds/onnx") == {0.0: 80.0, 0.4: 45.0}


def test_scale_fit_measures_scores_against_the_trained_for_scale():
    m = "qds/onnx"
    records = [{"set": "global", "severity": 0.0, "kind": None, "region": None, "scores": {m: 90.0}},  # 100: excellent
               {"set": "global", "severity": 0.4, "kind": "jpeg", "region": None, "scores": {m: 70.0}},  # 60: fair
               {"set": "local", "severity": 0.6, "kind": "noise", "region": [0, 0, 2, 2],
                "scores": {m: 10.0}}]  # a quarter: 65.5, good
    assert acc.trained_for(records[2]) == pytest.approx(100 * (1 - 0.6 * 0.25 ** 0.4))
    fit = acc.scale_fit(records, m)
    assert fit["mae"] == pytest.approx((10 + 10 + abs(10 - acc.trained_for(records[2]))) / 3)
    assert fit["level_match"] == pytest.approx(1 / 3)
    assert fit["pristine_levels"] == {"excellent": 1, "good": 0, "fair": 0, "poor": 0, "bad": 0}
    # XMP: the pristine photo gets 5 stars; the local image scored 10 would be rejected but is not counted
    assert fit["pristine_stars"] == {"5": 1, "4": 0, "3": 0, "2": 0, "1": 0, "-1": 0}
    assert fit["rejected_by_severity"] == {"0": [0, 1], "0.4": [0, 1]}
    records[1]["scores"][m] = 19.9  # below the default --reject-below 20
    assert acc.scale_fit(records, m)["rejected_by_severity"]["0.4"] == [1, 1]


def test_speed_models_table_shows_steady_state_and_first_image_times():
    speed = importlib.import_module("benchmarks.speed")
    proc = {k: {"median_s": 0.2, "min_s": 0.1, "peak_rss_mb": 50.0} for k in speed.PROCESS_LABELS}
    models = {"onnx": {"median_ms": 20.0, "min_ms": 18.0, "score": 50.0, "first_image_ms": 27.5},
              "numpy": {"median_ms": 60.0, "min_ms": 55.0, "score": 50.0},
              speed.TWO_THREADS: {"median_ms": 30.0, "min_ms": 28.0, "score": 50.0},
              "_decode": {"median_ms": 70.0, "min_ms": 60.0}}
    header, rows = speed.build_tables(proc, models, {})["models"]
    first = header.index("first image ms (fresh process)")
    assert rows[0][:4] == ["onnx", "20.0", "18.0", "1.00"] and rows[0][first] == "27.5"
    assert rows[1][3] == "3.00" and rows[1][first] == "n/a"  # not measured: said so, not left blank
    assert rows[2][:4] == [speed.TWO_THREADS, "30.0", "28.0", "1.50"]  # the threads option, same run


def test_speed_times_the_critic_without_its_pixel_cues_from_a_copy(tmp_path, monkeypatch):
    """The "without pixel cues" row scores a copy of the critic whose manifest sets cue_weight 0, so the
    runtime computes no cues; the shipped folder is untouched."""
    import qds_lite
    from qds_lite import diagnosis
    from qds_lite.model_store import resolve

    speed = importlib.import_module("benchmarks.speed")
    shipped = resolve()
    if not shipped.config["diagnosis"].get("cue_weight"):
        pytest.skip("the bundled critic has no pixel cues")
    before = (shipped.root / "manifest.json").read_bytes()
    folder = speed.without_pixel_cues(None, tmp_path)
    assert (shipped.root / "manifest.json").read_bytes() == before
    assert resolve(folder).config["diagnosis"]["cue_weight"] == 0
    calls = []
    real = diagnosis.window_cues
    monkeypatch.setattr(diagnosis, "window_cues", lambda w: calls.append(1) or real(w))
    qds_lite.load(folder, backend="numpy").score("tests/data/coffee_clean.jpg")
    assert not calls
    qds_lite.load(backend="numpy").score("tests/data/coffee_clean.jpg")
    assert calls
