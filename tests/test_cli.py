"""`qds` end to end: text and JSON output, schema, exit codes, hostile inputs (DESIGN.md section 7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from qds_lite import __version__
from qds_lite.cli import main

from .conftest import ROOT, SAMPLES

SCHEMA = json.loads((Path(__file__).parents[1] / "qds_lite" / "trace.schema.json").read_text())


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    photo = (rng.random((300, 400, 3)) * 255).astype(np.uint8)
    files = {
        "empty.jpg": b"",
        "truncated.jpg": Path(SAMPLES[0]).read_bytes()[:5000],
        "notes.jpg": b"this is not an image\n",
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
    Image.fromarray(photo).save(d / "png_named.jpg", format="PNG")
    Image.fromarray(photo[:8, :8]).save(d / "tiny.png")
    Image.fromarray(photo).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(photo[..., 0].astype(np.uint16) * 257).save(d / "grey16.png")
    frames = [Image.fromarray(np.roll(photo, i * 10, axis=1)).convert("P") for i in range(3)]
    frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo).save(d / "rotated.jpg", exif=exif)
    Image.fromarray(photo).save(d / "name with spaces é.webp")
    (d / "folder.jpg").mkdir()
    return {p.name: p for p in d.iterdir()}


BAD = {"empty.jpg": "empty", "truncated.jpg": "truncated", "notes.jpg": "not an image", "folder.jpg": "directory"}


def test_version():
    r = run("--version")
    assert r.exit_code == 0 and __version__ in r.output


def test_score_text_one_line_per_image():
    r = run("score", *map(str, SAMPLES))
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == len(SAMPLES)
    for line, path in zip(lines, SAMPLES):
        name, score, level = line.split()[:3]
        assert name == str(path) and 0 <= float(score) <= 100
        assert level in ("bad", "poor", "fair", "good", "excellent")


def test_readme_shows_what_scoring_the_samples_prints(monkeypatch):
    """README.md's first command scores examples/*.jpg; the output it shows must be what the bundled critic
    prints, so that a new critic cannot ship with stale figures on the first screen."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("Output (one line per photo", 1)[1].split("```", 2)[1]
    shown = [line.split() for line in block.strip().splitlines()]
    monkeypatch.chdir(ROOT)
    r = run("score", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "examples").glob("*.jpg")))
    assert r.exit_code == 0, r.output
    assert [line.split() for line in r.output.strip().splitlines()] == shown


def test_readme_shows_what_the_json_trace_of_a_sample_holds(monkeypatch):
    """README.md's --json example must be the bundled critic's trace of that sample (verdict and findings;
    its steps are abridged and its timings vary)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("`qds score --json` prints one trace per line", 1)[1].split("```", 2)[1]
    monkeypatch.chdir(ROOT)
    r = run("score", "--json", "tests/data/coffee_dark.jpg")
    assert r.exit_code == 0, r.output
    trace = json.loads(r.stdout)
    for key in ("file", "score", "level", "level_probs", "findings", "rationale", "backend"):
        assert f'"{key}": {json.dumps(trace[key])}' in block, key
    assert json.dumps(trace["steps"][1]) in block  # the first zoom


def test_json_traces_validate_against_schema():
    r = run("score", "--json", "--zooms", "2", *map(str, SAMPLES))
    assert r.exit_code == 0, r.output
    for line in r.output.strip().splitlines():
        trace = json.loads(line)
        jsonschema.validate(trace, SCHEMA)
        zooms = [s for s in trace["steps"] if s["tool"] == "zoom"]
        assert len(zooms) <= 2
        assert all(z["native_px"] == [128, 128] for z in zooms)  # full-resolution windows, not glance crops


def test_hostile_inputs_are_reported_and_the_batch_goes_on(hostile):
    paths = [str(p) for p in hostile.values()] + ["does/not/exist.jpg"]
    r = CliRunner().invoke(main, ["score", "--json", *paths])
    assert r.exit_code == 1
    records = {Path(json.loads(line)["file"]).name: json.loads(line) for line in r.stdout.strip().splitlines()}
    assert set(records) == {Path(p).name for p in paths}
    for name, rec in records.items():
        jsonschema.validate(rec, SCHEMA)
        if name in BAD:
            assert BAD[name] in rec["error"], rec
        elif name == "exist.jpg":
            assert "not found" in rec["error"] or "No such file" in rec["error"]
        else:
            assert "error" not in rec, rec
    assert r.stderr.count("qds: ") == len(BAD) + 1  # one clear line per bad input


def test_a_failed_input_is_named_by_the_path_given(tmp_path):
    """Two bad files of the same name in two folders of a shoot must be told apart."""
    for folder, data in (("day1", b""), ("day2", b"not a picture at all")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "IMG_1.jpg").write_bytes(data)
    paths = [str(tmp_path / "day1" / "IMG_1.jpg"), str(tmp_path / "day2" / "IMG_1.jpg")]
    r = CliRunner().invoke(main, ["score", "--json", *paths])
    assert r.exit_code == 1
    assert f"qds: {paths[0]}: empty file" in r.stderr
    assert f"qds: {paths[1]}: not an image file" in r.stderr
    assert [json.loads(line)["error"].split(": ")[0] for line in r.stdout.splitlines()] == paths


def test_exit_code_2_on_usage_errors():
    assert run("score").exit_code == 2
    assert run("score", "--backend", "tpu", str(SAMPLES[0])).exit_code == 2
    assert run("score", "--zooms", "-1", str(SAMPLES[0])).exit_code == 2
    assert run("score", "--model", "no-such-model", str(SAMPLES[0])).exit_code == 2


def test_inputs_are_never_modified(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(SAMPLES[0].read_bytes())
    before = (p.read_bytes(), p.stat().st_mtime_ns)
    assert run("score", str(p)).exit_code == 0
    assert (p.read_bytes(), p.stat().st_mtime_ns) == before
    assert sorted(tmp_path.iterdir()) == [p]


def test_backends_and_models_list():
    r = run("backends")
    assert r.exit_code == 0 and "numpy" in r.output and "onnx" in r.output
    r = run("models", "list")
    assert r.exit_code == 0 and "qds-small-v1" in r.output and "MB" in r.output


def test_python_m_entry_point_runs_in_a_real_process():
    out = subprocess.run([sys.executable, "-m", "qds_lite", "score", "--backend", "numpy", str(SAMPLES[0])],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(str(SAMPLES[0]))


def test_explicit_backend_never_falls_back(monkeypatch):
    import qds_lite.backends.onnx_backend as onnx_backend
    from qds_lite.errors import BackendUnavailable

    def unavailable(*args, **kwargs):
        raise BackendUnavailable("onnxruntime is not installed")

    monkeypatch.setattr(onnx_backend, "OnnxBackend", unavailable)
    r = run("score", "--backend", "onnx", str(SAMPLES[0]))
    assert r.exit_code == 2 and "onnxruntime is not installed" in r.stderr
    r = run("score", "--backend", "auto", str(SAMPLES[0]))
    assert r.exit_code == 0 and "qds: using the gguf backend" in r.stderr or "qds: using the numpy backend" in r.stderr


def test_bench_reports_every_backend_against_the_pillow_baseline():
    r = run("bench", "--repeat", "1", str(SAMPLES[0]))
    assert r.exit_code == 0, r.output
    assert "Pillow decode only" in r.output
    for name in ("onnx", "numpy"):
        assert f"{name}: model (glance + zooms)" in r.output and f"{name}: decode + model" in r.output
    assert "1.00x onnx" in r.output


def test_explain_compare_and_refine_commands(tmp_path):
    clean, dark = str(Path(SAMPLES[0]).parent / "coffee_clean.jpg"), str(Path(SAMPLES[0]).parent / "coffee_dark.jpg")
    r = run("explain", dark, "-o", str(tmp_path / "e.png"))
    assert r.exit_code == 0 and Image.open(tmp_path / "e.png").width == 1200
    r = run("explain", dark, "-o", str(tmp_path / "e.html"), "--html")
    assert r.exit_code == 0 and "<html" in (tmp_path / "e.html").read_text()
    assert run("explain", dark, "-o", dark).exit_code == 2  # never over the input

    r = run("compare", clean, dark, "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["ranking"][0]["file"] == clean and doc["prob_better"][0][1] > 0.5
    assert run("compare", clean).exit_code == 2
    r = run("compare", clean, str(tmp_path / "missing.jpg"), dark)
    assert r.exit_code == 1 and "missing.jpg: file not found" in r.stderr and "#1" in r.stdout

    pytest.importorskip("cv2")
    r = run("refine", dark, "-o", str(tmp_path / "better.jpg"), "--json")
    doc = json.loads(r.stdout)
    assert r.exit_code == 0 and doc["score_after"] > doc["score_before"]
    assert all(s["score_after"] > s["score_before"] for s in doc["steps"] if s["kept"])
    assert all(s["p_better"] is not None for s in doc["steps"] if s["kept"])  # the edit gate judged them
    r = run("refine", dark, "-o", str(tmp_path / "bold.jpg"), "--json", "--no-gate")
    assert r.exit_code == 0 and all(s["p_better"] is None for s in json.loads(r.stdout)["steps"])
    assert run("refine", dark, "-o", dark).exit_code == 2
    dusk = str(Path(SAMPLES[0]).parent / "rocket_clean.jpg")
    r = run("refine", dusk, "-o", str(tmp_path / "dusk.jpg"), "--cautious")
    assert r.exit_code == 0 and "not found there in the photo reframed" in r.stdout and " kept " not in r.stdout
    r = run("refine", str(tmp_path / "missing.jpg"), "-o", str(tmp_path / "o.jpg"))
    assert r.exit_code == 1
    assert f"{tmp_path / 'missing.jpg'}: file not found" in r.stderr  # the path as given, as score prints it


def test_models_list_and_verify(tmp_path):
    import shutil

    from qds_lite.model_store import BUNDLED_DIR

    r = run("models", "list")
    assert r.exit_code == 0 and "qds-small-v1" in r.stdout and "L-test SRCC" in r.stdout
    assert "visualquality-r1-7b" in r.stdout and "unverified" in r.stdout and "needs ~" in r.stdout
    r = run("models", "verify")
    assert r.exit_code == 0 and r.stdout.startswith("ok  qds-small-v1")
    copy = tmp_path / "copy"
    shutil.copytree(BUNDLED_DIR / "qds-small-v1", copy)
    assert run("models", "verify", str(copy)).exit_code == 0
    data = bytearray((copy / "reasoner.onnx").read_bytes())
    data[-10] ^= 0xFF  # same size, one byte flipped
    (copy / "reasoner.onnx").write_bytes(bytes(data))
    r = run("models", "verify", str(copy))
    assert r.exit_code == 1 and "sha256" in r.stderr
