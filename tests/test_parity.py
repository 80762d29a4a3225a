"""Parity contract: NumPy backend == PyTorch reference (fp32), quantized backends close to it.

The reference is computed live when torch is installed (on CUDA when present), else read from the
golden vectors that export/golden.py wrote. Tolerances, and how each was chosen:
"""

from __future__ import annotations

import numpy as np
import pytest

from qds_lite import load
from qds_lite.backends.numpy_backend import NumpyBackend
from qds_lite.model_store import sha256_file

from .conftest import SAMPLES, torch_device

# fp32 maths in a different order (im2col/BLAS vs oneDNN, cached vs full attention): the contract's
# 1e-4 on logits, and 1e-4 relative to the token scale on encoder tokens (|tokens| ~ 1-10).
ATOL_LOGITS = 1e-4
RTOL_TOKENS = 1e-4
# quantized vs fp32, end to end (issue contract): same findings, score within 1.0 point.
SCORE_TOL = 1.0


@pytest.fixture(scope="module", params=["live", "golden"])
def reference(request, model_files, weights):
    """Live PyTorch reference where torch is installed (CUDA when present); the golden file always."""
    from export.golden import GOLDEN, GOLDEN_VERSION

    if request.param == "live":
        pytest.importorskip("torch")
        from export.build import critic_config
        from export.golden import compute

        return compute(weights, critic_config(), torch_device())
    z = dict(np.load(GOLDEN, allow_pickle=False))
    assert int(z["version"]) == GOLDEN_VERSION, "golden file version mismatch: re-run python -m export.golden"
    assert str(z["weights_sha256"]) == sha256_file(model_files.path("weights")), (
        "golden vectors were made for other weights: re-run python -m export.golden")
    return z


def check_close(name: str, got: np.ndarray, ref: np.ndarray, atol: float, rtol: float = 0.0) -> None:
    err = np.abs(got - ref)
    bound = atol + rtol * np.abs(ref)
    worst = np.unravel_index(np.argmax(err - bound), err.shape)
    assert (err <= bound).all(), (f"{name}: max abs err {err.max():.3g} (bound {bound[worst]:.3g}) at {worst}: "
                                  f"got {got[worst]:.6g}, ref {ref[worst]:.6g}")


def test_numpy_encoder_matches_reference(model_files, weights, reference):
    """The encoder's pooled features, and the visual tokens the runtime projects from them."""
    from qds_lite.numpy_ops import mlp

    enc = NumpyBackend(model_files, weights).encode
    for view in ("glance", "zoom"):
        features, ref = enc(reference[view]), reference[f"{view}_features"]
        check_close(f"{view} features", features, ref, atol=RTOL_TOKENS * np.abs(ref).max())
        ref = reference[f"{view}_tokens"]
        check_close(f"{view} tokens", mlp(weights, "proj", features), ref, atol=RTOL_TOKENS * np.abs(ref).max())


def test_numpy_diagnosis_matches_reference(model_files, weights, reference):
    """The cell diagnosis' logits on the reference features (the runtime's NumPy heads, every backend)."""
    from export.golden import ZOOM_CELL
    from qds_lite.diagnosis import zoom_evidence
    from qds_lite.numpy_ops import mlp

    glance, zoom = reference["glance_features"], reference["zoom_features"]
    check_close("glance diagnosis", mlp(weights, "diag.glance", glance), reference["glance_diagnosis"], ATOL_LOGITS)
    check_close("zoom diagnosis", mlp(weights, "diag.zoom", zoom_evidence(glance[ZOOM_CELL], zoom)),
                reference["zoom_diagnosis"], ATOL_LOGITS)


def test_numpy_cue_head_matches_reference(weights, reference):
    """The pixel-cue head's logits on the golden zoom's cues, and the cues themselves as written (NumPy is
    their specification: a change to them must come with a retrained head and new golden vectors)."""
    from qds_lite.numpy_ops import mlp
    from qds_lite.pixel_cues import window_cues

    if "diag.cues.w1" not in weights:
        pytest.skip("this critic has no pixel-cue head")
    check_close("zoom cues", window_cues(reference["zoom"]), reference["zoom_cues"], 1e-5, rtol=1e-5)
    check_close("cue diagnosis", mlp(weights, "diag.cues", reference["zoom_cues"]), reference["cue_diagnosis"],
                ATOL_LOGITS)


def test_numpy_reasoner_matches_reference_incrementally(model_files, weights, reference):
    session = NumpyBackend(model_files, weights).start()
    emb, ref = reference["embeddings"], reference["logits"]
    for lo, hi in ((0, 17), (17, 18), (18, 30), (30, len(emb))):  # glance block, single tokens, zoom blocks
        check_close(f"logits at {hi - 1}", session.step(emb[lo:hi]), ref[hi - 1], ATOL_LOGITS)


@pytest.fixture(scope="module")
def numpy_results():
    critic = load(backend="numpy")
    return {p.name: critic.score(p) for p in SAMPLES}


@pytest.mark.parametrize("backend", ["onnx", "gguf"])
def test_quantized_backends_keep_findings_and_score(backend, numpy_results):
    if backend == "gguf":
        pytest.importorskip("llama_cpp")
    critic = load(backend=backend)
    for p in SAMPLES:
        r, ref = critic.score(p), numpy_results[p.name]
        assert abs(r.score - ref.score) <= SCORE_TOL, f"{p.name}: {backend} {r.score:.2f} vs fp32 {ref.score:.2f}"
        assert [f.type for f in r.findings] == [f.type for f in ref.findings], p.name
        assert r.backend == backend
