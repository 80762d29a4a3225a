"""The accuracy benchmark's critic variants (``benchmarks/variants.py``): the PyTorch reference behind the
runtime loop, the int8 encoder, the int8 ONNX reasoner and the Q4_0 reasoner, each built from the shipped
weights."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
variants = importlib.import_module("benchmarks.variants")
IMAGE = _ROOT / "tests" / "data" / "coffee_jpeg_local.jpg"


@pytest.fixture(scope="module")
def numpy_result():
    import qds_lite

    return qds_lite.load(backend="numpy").score(IMAGE)


def test_torch_reference_runs_the_same_loop_as_numpy(numpy_result):
    got = variants.load("torch").score(IMAGE)
    assert got.backend == "torch"
    assert [(f.type, f.box) for f in got.findings] == [(f.type, f.box) for f in numpy_result.findings]
    assert got.score == pytest.approx(numpy_result.score, abs=1e-3)  # fp32 on both sides


def test_q4_0_reasoner_is_built_once_and_keeps_findings(numpy_result, tmp_path):
    pytest.importorskip("llama_cpp")
    got = variants.load("gguf-q4_0", cache=tmp_path).score(IMAGE)
    built = sorted(tmp_path.rglob("reasoner.q4_0.gguf"))
    assert len(built) == 1
    assert [f.type for f in got.findings] == [f.type for f in numpy_result.findings]
    # a 4-bit reasoner, not shipped: looser than the 1.0 of Q8_0 (3.0 points here); its accuracy is measured
    # by the benchmark instead (README: within 0.005 SRCC of fp32 on every ranking figure)
    assert abs(got.score - numpy_result.score) < 5.0
    mtime = built[0].stat().st_mtime_ns
    variants.load("gguf-q4_0", cache=tmp_path)
    assert built[0].stat().st_mtime_ns == mtime  # reused, not rebuilt


def test_int8_encoder_is_calibrated_on_dev_photos(numpy_result, tmp_path):
    from export.data import pristine_photos

    try:
        pristine_photos("dev")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    got = variants.load("onnx-int8", cache=tmp_path).score(IMAGE)
    assert sorted(tmp_path.rglob("encoder.int8.onnx"))
    assert [f.type for f in got.findings] == [f.type for f in numpy_result.findings]


def test_int8_reasoner_is_quantized_except_its_output_head(numpy_result, tmp_path):
    import onnx

    got = variants.load("onnx-int8-reasoner", cache=tmp_path).score(IMAGE)
    (built,) = tmp_path.rglob("reasoner.int8.onnx")
    graph = onnx.load(str(built)).graph
    kinds = {n.op_type for n in graph.node}
    assert "MatMulInteger" in kinds or "DynamicQuantizeMatMul" in kinds  # int8 products, not fp32 ones
    head = [n for n in graph.node if "logits" in n.output]
    assert [n.op_type for n in head] == ["MatMul"]  # the output head stays fp32
    assert [f.type for f in got.findings] == [f.type for f in numpy_result.findings]
    assert got.score == pytest.approx(numpy_result.score, abs=1.0)  # the parity contract of quantized backends


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="unknown variant"):
        variants.load("onnx-int4")
