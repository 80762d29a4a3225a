"""Full-size critic path end to end on a tiny random Qwen2.5-VL: build -> export.vlm_convert -> llama.cpp loop.

The checkpoint (tests/vlm_tiny.py) has random weights, so what it *says* is noise; what is tested is
that the grammar makes every turn parseable anyway, that zooms get the right full-resolution pixels,
that the zoom budget holds, and that the trace validates against qds_lite/trace.schema.json.
llama.cpp runs with one thread: on a busy 2-core machine two threads made a run 100x slower.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qds_lite import protocol as P
from qds_lite import vlm_protocol as V
from qds_lite.errors import ModelError
from tests.vlm_tiny import FAST, QUANTS

ROOT = Path(__file__).resolve().parent.parent


def pattern(w: int = 640, h: int = 480) -> np.ndarray:
    """Every pixel names its own position: R = x mod 256, G = y mod 256, B = 16 * (x // 256) + y // 256."""
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx % 256, yy % 256, 16 * (xx // 256) + yy // 256], -1).astype(np.uint8)


# --- protocol (no llama.cpp) ---------------------------------------------------------------------
def test_parse_turn_zoom_and_verdict():
    assert V.parse_turn("<think>noisy sky</think>\n<zoom>[550,100,800,350]</zoom>").zoom == (550, 100, 800, 350)
    t = V.parse_turn("<think>x</think><find>noise 0.6 [550,100,800,350]</find>\n<answer>3.45</answer>")
    assert t.zoom is None and t.answer == 3.45 and t.findings == (("noise", 0.6, (550, 100, 800, 350)),)
    for bad in ("<zoom>[1,2,3,4]</zoom>", "<think>a</think><answer>3</answer> trailing", "<think>a</think>"):
        with pytest.raises(ValueError):
            V.parse_turn(bad)


def test_grammar_follows_the_budget():
    assert "zoom" in V.grammar(allow_zoom=True).splitlines()[0]
    assert "zoom" not in V.grammar(allow_zoom=False).splitlines()[0]
    assert "verdict" not in V.grammar(allow_zoom=True, allow_verdict=False).splitlines()[0]
    with pytest.raises(ValueError):
        V.grammar(allow_zoom=False, allow_verdict=False)


def test_box_window_geometry():
    assert V.box_window((0, 0, 1000, 1000), (640, 480)) == (0, 0, 640, 480)
    assert V.box_window((500, 250, 250, 500), (640, 480)) == (160, 120, 320, 240)  # corners in any order
    x0, y0, x1, y1 = V.box_window((999, 1000, 999, 1000), (640, 480), min_px=32)  # degenerate, at the edge
    assert (x1 - x0, y1 - y0) == (32, 32) and x1 <= 640 and y1 <= 480
    assert V.box_window((10, 10, 20, 20), (20, 10), min_px=32) == (0, 0, 20, 10)  # image smaller than min_px


def test_score_mapping():
    assert V.score_of(3.45, V.level_probs(None, 3.45)) == pytest.approx(61.25)
    assert V.score_of(5.0, V.level_probs(None, 5.0)) == 100.0
    probs = V.level_probs([0.0, 0.0, 0.0, 0.0, 0.0], 2.0)
    assert probs == pytest.approx([0.2] * 5) and V.score_of(2.0, probs) == pytest.approx(50.0)


# --- tiny model end to end (the tiny_vlm fixture is in conftest.py) -------------------------------
@pytest.fixture(scope="module")
def critic(tiny_vlm):
    from qds_lite.vlm import VLMCritic

    with VLMCritic(tiny_vlm, max_zooms=3, zoom_max_side=1024, **FAST) as c:
        yield c


@pytest.fixture(scope="module")
def schema():
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads((ROOT / "qds_lite" / "trace.schema.json").read_text())
    return jsonschema.Draft202012Validator(doc)


@pytest.mark.slow
def test_manifest(tiny_vlm):
    from qds_lite.model_store import sha256_file

    m = json.loads((tiny_vlm / "manifest.json").read_text())
    assert (m["kind"], m["protocol_version"], m["default_quant"]) == ("vlm", V.PROTOCOL_VERSION, "Q4_K_M")
    assert "<|im_start|>" in m["chat_template"] and m["converter"]["llama_cpp_python"]
    llm = {f["quant"]: f for f in m["files"] if f["role"] == "llm"}
    assert tuple(llm) == QUANTS and [f["role"] for f in m["files"]].count("mmproj") == 1
    assert llm["Q4_K_M"]["size"] < llm["Q5_K_M"]["size"] < llm["Q8_0"]["size"]
    for f in m["files"]:
        path = tiny_vlm / f["path"]
        assert (sha256_file(path), path.stat().st_size) == (f["sha256"], f["size"])
    assert not (tiny_vlm / "qds-tiny-vlm-F16.gguf").exists()  # the unquantized conversion is dropped


@pytest.mark.slow
def test_unsupported_architecture_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    done = subprocess.run([sys.executable, "-m", "export.vlm_convert", str(tmp_path), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1
    assert "unsupported architecture LlamaForCausalLM" in done.stderr and "Qwen2_5_VL" in done.stderr


@pytest.mark.slow
def test_corrupt_file_is_refused(tiny_vlm, tmp_path):
    from qds_lite.vlm import resolve_vlm

    copy = shutil.copytree(tiny_vlm, tmp_path / "c")
    mmproj = next(copy.glob("mmproj-*.gguf"))
    data = bytearray(mmproj.read_bytes())
    data[-1] ^= 1
    mmproj.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        resolve_vlm(copy)
    with pytest.raises(ModelError, match="no Q6_K"):
        resolve_vlm(tiny_vlm, quant="Q6_K")


@pytest.mark.slow
def test_zooms_get_full_resolution_crops(critic, schema, monkeypatch):
    from qds_lite.vlm import VLMCritic

    img = pattern()
    sent: list[np.ndarray] = []
    feed = VLMCritic._feed
    monkeypatch.setattr(VLMCritic, "_feed", lambda self, text, images, first=False: (
        sent.extend(images), feed(self, text, images, first))[1])
    monkeypatch.setattr(critic, "min_zooms", 3)
    run = critic.run(img)
    assert len(run.zooms) == 3 and len(run.turns) == 4 and len(sent) == 4
    assert sent[0].shape == (168, 224, 3)  # the glance: whole image, long side glance_side
    for z, crop in zip(run.zooms, sent[1:]):
        x0, y0, x1, y1 = z.window
        assert z.window == V.box_window(z.box, (640, 480))
        fx0, fy0, fx1, fy1 = V.box_fractions(z.box)  # the window covers the box, rounded outwards
        assert x0 <= fx0 * 640 and y0 <= fy0 * 480 and x1 >= fx1 * 640 and y1 >= fy1 * 480
        assert np.array_equal(crop, img[y0:y1, x0:x1])  # native pixels of exactly that region
        assert z.sent_size == (x1 - x0, y1 - y0) and z.n_image_tokens > 0
    trace = run.result.trace
    schema.validate(trace)
    assert [s["tool"] for s in trace["steps"]] == ["glance", "zoom", "zoom", "zoom"]
    assert [s["window"] for s in trace["steps"][1:]] == [list(z.window) for z in run.zooms]


@pytest.mark.slow
def test_large_zooms_are_downscaled_for_the_model(tiny_vlm):
    from qds_lite.vlm import VLMCritic

    with VLMCritic(tiny_vlm, max_zooms=2, min_zooms=2, zoom_max_side=64, **FAST) as c:
        run = c.run(pattern(1600, 1200))
    for z in run.zooms:
        w, h = z.window[2] - z.window[0], z.window[3] - z.window[1]
        assert max(z.sent_size) == min(64, max(w, h))
        assert abs(z.sent_size[0] / z.sent_size[1] - w / h) < 0.1 or min(z.sent_size) <= 4
    assert [s["native_px"] for s in run.result.trace["steps"][1:]] == [
        [z.window[2] - z.window[0], z.window[3] - z.window[1]] for z in run.zooms]


@pytest.mark.slow
@pytest.mark.parametrize("max_zooms", [0, 1, 2])
def test_zoom_budget_and_grammar_hold_under_sampling(critic, schema, monkeypatch, max_zooms):
    monkeypatch.setattr(critic, "max_zooms", max_zooms)
    monkeypatch.setattr(critic, "temperature", 1.5)  # a random model sampled hot: anything the grammar allows
    img = pattern()
    for seed in range(4):
        monkeypatch.setattr(critic, "seed", seed)
        run = critic.run(img)
        assert len(run.zooms) <= max_zooms and len(run.turns) == len(run.zooms) + 1
        for raw in run.turns:
            V.parse_turn(raw)  # every turn is a protocol turn
        assert 1.0 <= run.answer <= 5.0
        schema.validate(run.result.trace)


@pytest.mark.slow
@pytest.mark.parametrize("quant", QUANTS)
def test_every_quantization_scores(tiny_vlm, schema, quant):
    from qds_lite.vlm import VLMCritic

    with VLMCritic(tiny_vlm, quant=quant, max_zooms=1, **FAST) as c:
        run = c.run(pattern())
    r = run.result
    schema.validate(r.trace)
    assert r.model["quant"] == quant and r.backend == "gguf" and r.file == "<array>"
    assert run.logprobs_used and sum(r.level_probs) == pytest.approx(1.0)
    assert r.score == pytest.approx(V.score_of(run.answer, r.level_probs)) and r.level == P.level_of(r.score)
    assert {"decode", "model", "loop"} <= set(r.timings_ms)


@pytest.mark.slow
@pytest.mark.parametrize("by", ["folder", "pulled name"])
def test_qds_score_runs_a_vlm_folder(tiny_vlm, schema, tmp_path, monkeypatch, by):
    from click.testing import CliRunner
    from PIL import Image

    from qds_lite.cli import main
    from qds_lite.model_store import pulled_dir

    photo = tmp_path / "p.png"
    Image.fromarray(pattern()).save(photo)
    model = str(tiny_vlm)
    if by == "pulled name":  # where `qds models pull NAME` leaves a critic's manifest
        monkeypatch.setenv("QDS_CACHE_DIR", str(tmp_path / "cache"))
        pulled_dir("tiny-critic").parent.mkdir(parents=True)
        pulled_dir("tiny-critic").symlink_to(tiny_vlm, target_is_directory=True)
        model = "tiny-critic"
        monkeypatch.chdir(tmp_path)  # no folder of that name here
    r = CliRunner().invoke(main, ["score", str(photo), "--json", "--model", model, "--zooms", "1",
                                  "--threads", "1", "--ctx", "4096", "--quant", "Q8_0"])
    assert r.exit_code == 0, r.output
    trace = json.loads(r.stdout.splitlines()[-1])
    schema.validate(trace)
    assert trace["file"] == str(photo) and trace["backend"] == "gguf"
    assert sum(s["tool"] == "zoom" for s in trace["steps"]) <= 1


@pytest.mark.slow
def test_models_verify_checks_every_quantization(tiny_vlm):
    from qds_lite.registry import verify

    lines = verify(tiny_vlm)
    assert [line.split()[1].rstrip(":") for line in lines] == list(QUANTS)
