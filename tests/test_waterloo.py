"""The other people's distortions of ``benchmarks.waterloo_distortions`` and the item plan of
``benchmarks.waterloo``: published parameters, growing with the level, seeded, inputs untouched."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))
W = importlib.import_module("benchmarks.waterloo_distortions")
waterloo = importlib.import_module("benchmarks.waterloo")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 96 x 128 stand-in photo: smooth colour ramps, a textured patch and hard edges."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:96, 0:128]
    img = np.stack([40 + 1.4 * x, 60 + 1.2 * y, 200 - 0.8 * x], axis=-1)
    img[20:60, 30:90] += rng.normal(0, 25, (40, 60, 3))
    img[70:90, 10:50] = (230, 40, 30)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", list(W.DISTORTIONS))
def test_each_distortion_grows_with_its_level_and_is_seeded(kind, photo):
    before = photo.copy()
    outs = [W.apply(photo, kind, level, seed=7) for level in W.LEVELS]
    assert np.array_equal(photo, before)  # the input is never modified
    assert all(o.shape == photo.shape and o.dtype == np.uint8 for o in outs)
    damage = [np.abs(o.astype(np.int64) - photo).mean() for o in outs]
    assert damage[0] > 0.5, damage  # even level 1 changes the photo
    assert all(b >= a - 0.5 for a, b in zip(damage, damage[1:])), damage  # never milder at a higher level
    assert damage[-1] > 2 * damage[0], damage
    assert np.array_equal(W.apply(photo, kind, 3, seed=7), outs[2])


def test_random_distortions_differ_with_the_seed(photo):
    for kind in ("wn", "pink_noise"):
        assert not np.array_equal(W.apply(photo, kind, 2, seed=1), W.apply(photo, kind, 2, seed=2))


def test_published_parameters(photo):
    grey = np.full((64, 64, 3), 128, np.uint8)
    # white noise: variance 2^-10 on the [0, 1] scale at level 1, so sigma = 255 / 32 in 8-bit units
    assert W.apply(grey, "wn", 1, seed=0).std() == pytest.approx(255 / 32, rel=0.05)
    # exposure: a shift of 0.15 on the [0, 1] scale at level 1, clipped at the ends
    assert W.apply(np.full((2, 2, 3), 100, np.uint8), "overexposure", 1, 0)[0, 0, 0] == round(100 + 0.15 * 255)
    assert W.apply(np.full((2, 2, 3), 20, np.uint8), "underexposure", 1, 0).max() == 0
    # contrast: level 5 maps every channel's 1..99th percentile onto [0.49, 0.51]
    squeezed = W.apply(photo, "contrast", 5, 0)
    assert squeezed.min() >= round(0.49 * 255) and squeezed.max() <= round(0.51 * 255)
    # colour quantization: at most 4 colours at level 5
    assert len(np.unique(W.apply(photo, "dither", 5, 0).reshape(-1, 3), axis=0)) <= 4
    # a Gaussian blur leaves a flat image flat
    assert np.array_equal(W.apply(grey, "gblur", 5, 0), grey)


def test_pink_field_falls_as_one_over_frequency():
    field = W._pink_field(np.random.default_rng(0), 256)
    assert np.abs(field).max() == pytest.approx(1.0)
    power = np.abs(np.fft.fft2(field)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(256), np.fft.fftfreq(256), indexing="ij"))
    low, high = power[(f > 0.02) & (f < 0.04)].mean(), power[(f > 0.2) & (f < 0.4)].mean()
    assert 20 < low / high < 500  # 1/f^2 in power: (0.3 / 0.03)^2 = 100


def test_items_cover_every_distortion_and_level_with_one_seed_each():
    items = waterloo.build_items("x/photo.jpg", seed=0)
    assert len(items) == 1 + len(W.DISTORTIONS) * len(W.LEVELS)
    assert items[0].kind is None and items[0].severity == 0
    for kind in W.DISTORTIONS:
        mine = [i for i in items if i.kind == kind]
        assert [waterloo.level_of(i.severity) for i in mine] == list(W.LEVELS)
        assert len({i.seed for i in mine}) == 1
    assert items == waterloo.build_items("x/photo.jpg", seed=0)
    assert [i.seed for i in items] != [i.seed for i in waterloo.build_items("x/photo.jpg", seed=1)]


def test_unknown_level_is_refused(photo):
    with pytest.raises(ValueError, match="level"):
        W.apply(photo, "jpeg", 6, 0)


def test_the_benchmark_scores_every_image_and_reports(tmp_path, monkeypatch):
    """End to end on one photo with the bundled critic: every distortion and level scored, the report
    written, and strong noise and JPEG scored below the pristine photo."""
    import json
    import shutil

    from export.data import PRISTINE_DIR_ENV, split_of

    from .conftest import DATA

    root = tmp_path / "pristine"
    root.mkdir()
    name = "photo8.jpg"  # a name of the test split (the split is a hash of the path)
    assert split_of(name) == "test"
    shutil.copy(DATA / "coffee_clean.jpg", root / name)
    monkeypatch.setenv(PRISTINE_DIR_ENV, str(root))
    out = tmp_path / "out"
    assert waterloo.main(["--no-baselines", "--out", str(out)]) == 0
    doc = json.loads((out / "waterloo.json").read_text())
    records = doc["records"]
    assert len(records) == 1 + len(W.DISTORTIONS) * len(W.LEVELS)
    summary = doc["results"]["qds/onnx"]["summary"]
    assert summary["n"] == len(records) and summary["n_failed"] == 0
    score = {(r["kind"], waterloo.level_of(r["severity"])): r["scores"]["qds/onnx"] for r in records}
    assert score[("wn", 5)] < score[(None, 0)] - 20 and score[("jpeg", 5)] < score[(None, 0)] - 20
    md = (out / "waterloo.md").read_text()
    assert "python -m benchmarks.waterloo" in md and "| jp2k | - | n/a |" in md
    assert (out / "waterloo_per_kind.png").stat().st_size > 0
