"""The Python API as an app would use it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from threadpoolctl import threadpool_info, threadpool_limits

import qds_lite
from qds_lite import Critic, ImageLoadError, QdsError

from .conftest import DATA, SAMPLES


@pytest.fixture(scope="module")
def critic():
    return qds_lite.load()


def test_every_input_kind_gives_the_same_result(critic):
    path = SAMPLES[0]
    by_path = critic.score(path)
    rgb = np.asarray(Image.open(path).convert("RGB"))
    for source in (str(path), path.read_bytes(), Image.open(path), rgb):
        r = critic.score(source)
        assert r.score == pytest.approx(by_path.score, abs=1e-6)
        assert r.findings == by_path.findings


def test_result_is_frozen_and_complete(critic):
    r = critic.score(SAMPLES[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.score = 100.0
    assert 0 <= r.score <= 100 and r.level in qds_lite.protocol.LEVELS
    assert sum(r.level_probs) == pytest.approx(1.0, abs=1e-6)
    assert r.model["name"] == "qds-small-v1" and len(r.model["sha256"]) == 64
    assert r.backend in qds_lite.available_backends()
    assert r.trace["score"] == round(r.score, 2)
    assert set(r.timings_ms) >= {"decode", "model"}


def test_zoom_budget_is_respected(critic):
    for n in (0, 1, 5):
        r = critic.score(SAMPLES[0], zooms=n)
        assert sum(s["tool"] == "zoom" for s in r.steps) <= n
    with pytest.raises(QdsError):
        critic.score(SAMPLES[0], zooms=99)


def test_a_glance_from_a_draft_decode_scores_as_the_full_decode_and_cannot_be_zoomed(critic, tmp_path):
    from qds_lite.io import load_image

    for src in (DATA / "rocket_clean.jpg", DATA / "coffee_dark.jpg"):
        with Image.open(src) as im:  # a camera-sized JPEG, which a draft decode reads at 1/8 scale
            big = im.convert("RGB").resize((im.width * 6, im.height * 6), Image.LANCZOS)
        path = tmp_path / f"{src.stem}_big.jpg"
        big.save(path, quality=92)
        quick = load_image(path, glance_only=True)
        assert not quick.native and max(quick.full.size) * 8 >= max(big.size) > max(quick.full.size) * 4
        exact = load_image(path)
        assert np.abs(quick.glance.astype(int) - exact.glance).mean() < 2  # the same view, filtered differently
        full, glanced = critic.score(exact, zooms=0), critic.score(quick, zooms=0)
        # a DCT-scaled decode is not the glance's filter: on 14 photos of 5-12 MP the glance alone moved by 0.5
        # points on average, 2.6 at most, where the glance alone and the full critic differ by 8.5 on average
        assert abs(glanced.score - full.score) <= 3.0
        assert glanced.steps[0]["native_px"] == list(big.size)
        with pytest.raises(QdsError, match="glance only"):
            critic.score(quick)


def test_score_many_streams_and_survives_bad_inputs(critic, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = list(critic.score_many([SAMPLES[0], bad, SAMPLES[1]]))
    assert isinstance(out[1], ImageLoadError) and "bad.jpg" in str(out[1])
    assert out[0].file == SAMPLES[0].name and out[2].file == SAMPLES[1].name
    # decoded ahead in another thread, the images still report what decoding them took
    assert out[0].timings_ms["decode"] > 0.1 and out[2].timings_ms["decode"] > 0.1


def test_load_ahead_keeps_order_and_yields_errors(tmp_path):
    from qds_lite.critic import load_ahead
    from qds_lite.io import LoadedImage

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    sources = [SAMPLES[0], bad, SAMPLES[1], SAMPLES[0]]
    out = list(load_ahead(iter(sources), depth=2))
    assert [type(x).__name__ for x in out] == ["LoadedImage", "ImageLoadError", "LoadedImage", "LoadedImage"]
    assert [x.name for x in out if isinstance(x, LoadedImage)] == [SAMPLES[0].name, SAMPLES[1].name, SAMPLES[0].name]
    assert list(load_ahead([])) == []


def test_critic_load_alias_and_listing():
    assert isinstance(Critic.load(backend="numpy"), Critic)
    assert "qds-small-v1" in qds_lite.available_models()
    assert "numpy" in qds_lite.available_backends()


DEGRADED_PAIRS = [
    ("coffee_clean.jpg", "coffee_dark.jpg", {"underexposure"}),
    ("coffee_clean.jpg", "coffee_jpeg_local.jpg", {"jpeg", "banding"}),
    ("rocket_clean.jpg", "rocket_blur.jpg", {"blur", "motion_blur", "defocus"}),
]


@pytest.mark.parametrize("clean, degraded, types", DEGRADED_PAIRS)
def test_degraded_photos_score_below_their_clean_source(critic, clean, degraded, types):
    clean_r, bad_r = critic.score(DATA / clean), critic.score(DATA / degraded)
    assert bad_r.score < clean_r.score - 10
    named = [f.type for f in bad_r.findings]
    assert set(named) & types, f"{degraded}: findings {named}"


@pytest.mark.parametrize("clean, degraded, types", DEGRADED_PAIRS)
def test_degraded_photos_name_their_fault_first(critic, clean, degraded, types):
    named = [f.type for f in critic.score(DATA / degraded).findings]
    assert named and named[0] in types, f"{degraded}: findings {named}"


def test_importing_qds_lite_never_imports_torch():
    code = "import sys, qds_lite; qds_lite.load(backend='numpy'); assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_zooms_encode_native_pixels_not_the_glance(monkeypatch):
    """Every zoom the reasoner asks for, and every cell checked after the verdict, is a 128 px window cut
    from the full-resolution image."""
    from qds_lite.io import load_image

    critic = qds_lite.load(backend="numpy")
    image = load_image(SAMPLES[0])
    seen = []
    encode = critic.backend.encode
    monkeypatch.setattr(critic.backend, "encode", lambda view: seen.append(view.copy()) or encode(view))
    r = critic.score(image)
    zooms = [s for s in r.steps if s["tool"] in ("zoom", "check")]  # in the order they were encoded
    assert len(seen) == 1 + len(zooms) and np.array_equal(seen[0], image.glance)
    assert sum(s["tool"] == "check" for s in r.steps) == critic.files.config["diagnosis"]["check_zooms"] > 0
    for view, step in zip(seen[1:], zooms):
        x0, y0, x1, y1 = step["window"]
        assert np.array_equal(view, image.pixels[y0:y1, x0:x1])
        bx0, by0, bx1, by1 = step["box"]  # the window sits inside the zoomed cell's box, at its centre
        cx, cy = (x0 + x1) / 2 / image.pixels.shape[1], (y0 + y1) / 2 / image.pixels.shape[0]
        assert bx0 <= cx <= bx1 and by0 <= cy <= by1


@pytest.mark.parametrize("threads", [None, 2, 3])
def test_only_the_encoder_takes_threads(model_files, threads):
    """Two multi-threaded onnxruntime sessions spin against each other (onnx_backend's docstring): the
    reasoner's session runs on one thread whatever the encoder is given."""
    from qds_lite.backends.onnx_backend import OnnxBackend

    backend = OnnxBackend(model_files, threads)
    options = backend.encode.session.get_session_options()
    assert options.intra_op_num_threads == (threads or 1)
    assert backend.reasoner.get_session_options().intra_op_num_threads == 1


def test_an_encoder_exported_with_its_projection_is_refused(tmp_path):
    """Critics exported before the runtime projected the features itself output tokens: a clear error."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from qds_lite.backends.onnx_backend import OnnxEncoder
    from qds_lite.errors import ModelError

    graph = helper.make_graph([helper.make_node("Identity", ["pixels"], ["tokens"])], "old",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, None, None])],
                              [helper.make_tensor_value_info("tokens", TensorProto.FLOAT, [1, 3, None, None])])
    path = tmp_path / "encoder.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    with pytest.raises(ModelError, match="not the pooled 'features'"):
        OnnxEncoder(path, 1)


def test_blas_runs_on_the_critics_threads_while_it_scores_and_is_restored_after(monkeypatch):
    """The loop's small NumPy products must not spread over every core (qds_lite.blas); the app's own
    BLAS setting comes back once a score is done. NumPy's own BLAS is the one checked: SciPy's, loaded
    later by other tests, never runs the loop's products."""
    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info()
                if i["user_api"] == "blas" and "numpy" in Path(i["filepath"]).parent.name}

    if not blas_threads():
        pytest.skip("NumPy has no BLAS library threadpoolctl can see")
    critic = qds_lite.load(backend="numpy", threads=2)
    seen = []
    encode = critic.backend.encode
    monkeypatch.setattr(critic.backend, "encode", lambda x: seen.append(blas_threads()) or encode(x))
    with threadpool_limits(limits=3, user_api="blas"):
        critic.score(SAMPLES[0])
        assert seen and all(s == {2} for s in seen)
        assert blas_threads() == {3}
        critic.threads = None
        critic.score(SAMPLES[0])
        assert seen[-1] == {1}
