"""Models load only from safe formats and only when their sha256 matches the manifest."""

from __future__ import annotations

import json
import shutil

import pytest

import qds_lite
from qds_lite.errors import ModelError
from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL, resolve


@pytest.fixture
def model_copy(tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, dst)
    return dst


def test_bundled_model_is_small_and_verified():
    files = resolve()
    assert files.manifest["total_size"] <= 10_000_000
    assert {e["role"] for e in files.manifest["files"]} == {"weights", "encoder_onnx", "reasoner_onnx", "reasoner_gguf"}


def test_tampered_file_is_refused(model_copy):
    p = model_copy / "critic.npz"
    data = bytearray(p.read_bytes())
    data[-100] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256"):
        qds_lite.load(model_copy, backend="numpy")


def test_unsafe_format_is_refused(model_copy):
    m = json.loads((model_copy / "manifest.json").read_text())
    m["files"][0]["path"] = "weights.pkl"
    (model_copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="safe"):
        resolve(model_copy)


def test_unknown_model_names_the_bundled_ones():
    with pytest.raises(ModelError, match=DEFAULT_MODEL):
        resolve("nope")


def test_recording_an_evaluation_checks_the_run_and_the_files(tmp_path):
    """Figures go into a manifest only from a run that scored that very critic, whose files are intact."""
    import json
    import shutil

    from export.manifest import record_evaluation
    from qds_lite.errors import ModelError
    from qds_lite.model_store import BUNDLED_DIR, DEFAULT_MODEL

    root = tmp_path / "critic"
    shutil.copytree(BUNDLED_DIR / DEFAULT_MODEL, root)
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"model": {"files": {"critic.npz": "0" * 64}}}))
    before = (root / "manifest.json").read_bytes()
    with pytest.raises(ValueError, match="did not score the critic"):
        record_evaluation(root, run)
    with (root / "encoder.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="sha256"):
        record_evaluation(root, run)
    assert (root / "manifest.json").read_bytes() == before
