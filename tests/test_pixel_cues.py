"""The pixel cues a zoom window is measured by (qds_lite.pixel_cues): each moves with the damage it is for."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from qds_lite.io import load_image, zoom_window
from qds_lite.pixel_cues import NAMES, window_cues


@pytest.fixture(scope="module")
def window() -> np.ndarray:
    """A 128 x 128 native window of a clean photo (the rocket: sky, structure, edges)."""
    return zoom_window(load_image("tests/data/rocket_clean.jpg").full, 5)[0]


def cue(win: np.ndarray) -> dict[str, float]:
    return dict(zip(NAMES, window_cues(win).tolist()))


def u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def jpeg(win: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(win).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.mark.parametrize("pixels", [np.zeros((128, 128, 3)), np.full((128, 128, 3), 255),
                                    np.tile([255, 0, 0], (128, 128, 1)), np.full((128, 128, 3), 128),
                                    np.random.default_rng(0).integers(0, 256, (24, 40, 3))],
                         ids=["black", "white", "pure red", "flat grey", "small noise"])
def test_every_cue_is_finite_on_degenerate_windows(pixels):
    cues = window_cues(pixels.astype(np.uint8))
    assert cues.shape == (len(NAMES),) and cues.dtype == np.float32 and np.isfinite(cues).all()


def test_luma_noise_raises_the_luma_noise_cues_more_than_the_chroma_ones(window):
    rng = np.random.default_rng(1)
    noisy = u8(window + rng.normal(0, 8, window.shape[:2])[..., None])
    before, after = cue(window), cue(noisy)
    assert after["noise_y_median"] - before["noise_y_median"] > 1.0
    assert after["noise_y_median"] - before["noise_y_median"] > after["noise_cb_median"] - before["noise_cb_median"]


def test_chroma_noise_raises_the_chroma_cues_more_than_the_luma_one(window):
    rng = np.random.default_rng(2)
    ycc = np.asarray(Image.fromarray(window).convert("YCbCr")).astype(np.float64)
    ycc[..., 1:] += rng.normal(0, 6, (*window.shape[:2], 2))
    noisy = np.asarray(Image.fromarray(u8(ycc), "YCbCr").convert("RGB"))
    before, after = cue(window), cue(noisy)
    rise = {k: after[k] - before[k] for k in ("noise_y_median", "noise_cb_median", "noise_cr_median")}
    assert min(rise["noise_cb_median"], rise["noise_cr_median"]) > 1.0
    assert rise["noise_cb_median"] > rise["noise_y_median"] + 0.5


def test_blur_takes_the_fine_band_away(window):
    blurred = np.asarray(Image.fromarray(window).filter(ImageFilter.GaussianBlur(2)))
    before, after = cue(window), cue(blurred)
    assert after["band_fine"] < before["band_fine"] - 1.0
    assert after["fine_over_mid"] < before["fine_over_mid"] - 0.5


def test_oversharpening_lifts_the_fine_band(window):
    sharpened = np.asarray(Image.fromarray(window).filter(ImageFilter.UnsharpMask(radius=2, percent=300)))
    before, after = cue(window), cue(sharpened)
    assert after["band_fine"] > before["band_fine"] + 0.5 and after["fine_over_mid"] > before["fine_over_mid"]


def test_jpeg_blocks_show_as_eight_pixel_periodicity(window):
    assert cue(jpeg(window, 5))["blockiness"] > cue(jpeg(window, 95))["blockiness"] + 0.3


def test_banding_empties_levels(window):
    smooth = np.asarray(Image.fromarray(window).filter(ImageFilter.GaussianBlur(3)))
    posterized = (smooth // 24) * 24 + 12
    assert cue(posterized)["empty_levels"] > cue(smooth)["empty_levels"] + 0.5
