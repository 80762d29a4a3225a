"""The encoder's natural-scene statistics: NumPy == PyTorch, and each one reacts to what it is for."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from qds_lite import numpy_ops as ops

CELL = 64
NSS = ops.NSSConstants.from_config({"taps": 7, "sigma": 7 / 6, "c": 1 / 255, "flat": 2 / 255, "still": 0.5 / 255,
                                    "block": 8})
# index of each statistic in scene_statistics' output (see kernels.model.scene_statistics)
MSCN_ENERGY, CHROMA_DETAIL_CB, BLOCK_X, BLOCK_Y, STILL, GRAD_ENERGY, COHERENCE = 0, 26, 28, 29, 30, 31, 32


def photo_like(size: int = 256, seed: int = 0) -> np.ndarray:
    """Smooth gradients, edges and mild texture: enough structure for every statistic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.stack([xx, yy, (xx + yy) / 2], -1) * (200 / size) + 20
    img[40:120, 60:180] = [180, 60, 70]
    img += 8 * np.sin(xx / 5 + yy / 7)[..., None] + rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def stats(rgb: np.ndarray) -> np.ndarray:
    pixels = rgb.astype(np.float32).transpose(2, 0, 1) / np.float32(255)
    luma = np.tensordot(np.float32([0.299, 0.587, 0.114]), pixels, axes=1)
    return ops.scene_statistics(pixels, luma, CELL, NSS).mean(axis=(1, 2))


def jpeg(rgb: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf).convert("RGB"))


def test_numpy_matches_pytorch():
    torch = pytest.importorskip("torch")
    from kernels import model

    rgb = photo_like()
    rgb[:64, :64] = 90  # a flat cell: the soft thresholds must agree there too
    pixels = rgb.astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    t = torch.from_numpy(pixels)
    luma = (t * t.new_tensor(model.LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
    ref = model.scene_statistics(t, luma)[0].numpy()
    got = ops.scene_statistics(pixels[0], luma[0, 0].numpy(), CELL, NSS)
    assert ref.shape == got.shape == (model.NSS_STATS, 4, 4)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_blocking_shows_in_block_contrast():
    clean, blocky = stats(photo_like()), stats(jpeg(photo_like(), 8))
    assert blocky[BLOCK_X] > clean[BLOCK_X] + 0.2 and blocky[BLOCK_Y] > clean[BLOCK_Y] + 0.2


def test_posterisation_shows_in_still_share():
    rgb = photo_like()
    posterised = (rgb // 32 * 32).astype(np.uint8)
    assert stats(posterised)[STILL] > stats(rgb)[STILL] + 0.1


def test_noise_and_blur_move_mscn_energy_and_gradients_apart():
    rgb = photo_like()
    noisy = np.clip(rgb + np.random.default_rng(1).normal(0, 12, rgb.shape), 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(rgb).resize((64, 64), Image.BILINEAR).resize((256, 256), Image.BILINEAR))
    s, n, b = stats(rgb), stats(noisy), stats(blurred)
    assert n[GRAD_ENERGY] > s[GRAD_ENERGY] > b[GRAD_ENERGY]
    assert n[CHROMA_DETAIL_CB] > s[CHROMA_DETAIL_CB]


def test_directional_blur_raises_coherence():
    rgb = np.random.default_rng(2).integers(0, 256, (256, 256, 3)).astype(np.uint8)
    streaks = np.cumsum(rgb.astype(np.float32), axis=1)
    streaks = (streaks[:, 15:] - streaks[:, :-15]) / 15  # a 15 px horizontal box blur
    streaks = np.pad(streaks, ((0, 0), (0, 15), (0, 0)), mode="edge").astype(np.uint8)
    assert stats(streaks)[COHERENCE] > stats(rgb)[COHERENCE] + 0.3
