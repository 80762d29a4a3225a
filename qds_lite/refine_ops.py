"""The image operations `qds refine` chooses from, and its naturalness guard (NIQE).

Every operation takes and returns an ``HxWx3`` uint8 sRGB array and never modifies its input. Tone and
colour work happens in linear light (the sRGB transfer function, IEC 61966-2-1), filtering on the
encoded values, as a photo editor does. The heavy lifting is OpenCV's (``opencv-python-headless``, the
``refine`` extra), imported on first use so that ``import qds_lite`` stays light.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from .errors import QdsError
from .model_store import check_package_data

REFINE_EXTRA_HINT = "pip install 'qds-lite[refine]'"
# Package data: the NIQE authors' pristine model (the Apache-2.0 copy described in qds_lite/data/README.md).
NIQE_MODEL_PATH = Path(__file__).resolve().parent / "data" / "niqe_pris_params.npz"
_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec.709 luminance of linear sRGB
_LUMA_601 = np.array([0.299, 0.587, 0.114], np.float32)  # BT.601 luma of encoded values (Pillow's "L")


def cv2() -> ModuleType:
    """OpenCV, or a QdsError naming the extra that installs it."""
    try:
        import cv2 as module
    except ImportError:
        raise QdsError("qds refine needs OpenCV (opencv-python-headless)", hint=REFINE_EXTRA_HINT) from None
    return module


# --- colour helpers --------------------------------------------------------------------------------
_TO_LINEAR = np.where((v := np.arange(256) / 255.0) <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
_TO_LINEAR = _TO_LINEAR.astype(np.float32)


def to_linear(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear light in [0, 1] (exact, by table)."""
    return _TO_LINEAR[rgb]


def to_srgb(lin: np.ndarray) -> np.ndarray:
    """Linear light -> uint8 sRGB, clipped."""
    x = np.clip(lin, 0.0, 1.0)
    y = np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4, dtype=np.float32) - 0.055)
    return _u8(y * 255.0)


def luminance(lin: np.ndarray) -> np.ndarray:
    return lin @ _LUMA


def luma_601(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma of encoded sRGB values (what Pillow's "L" mode holds), float32, on the same scale."""
    return rgb.astype(np.float32, copy=False) @ _LUMA_601


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _bgr(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(rgb[..., ::-1])


# --- measurements that set the strength of an operation ---------------------------------------------
def noise_sigma(rgb: np.ndarray) -> float:
    """Standard deviation of white noise on the grey image, 8-bit units (Immerkaer 1996), measured on the
    flattest half of the image so that texture is not taken for noise."""
    cv = cv2()
    grey = cv.cvtColor(_bgr(rgb), cv.COLOR_BGR2GRAY).astype(np.float32)
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    resp = np.abs(cv.filter2D(grey, -1, kernel))[1:-1, 1:-1]
    gx, gy = cv.Sobel(grey, cv.CV_32F, 1, 0), cv.Sobel(grey, cv.CV_32F, 0, 1)
    grad = cv.blur(np.hypot(gx, gy), (7, 7))[1:-1, 1:-1]
    flat = resp[grad <= np.median(grad)]
    return float(math.sqrt(math.pi / 2) * flat.mean() / 6.0) if flat.size else 0.0


def chroma_noise(rgb: np.ndarray) -> float:
    """RMS of the fine detail (below ~4 px) of Cb and Cr in the flattest 30 % of the image, 8-bit units:
    colour blotches, which the luma estimate does not see."""
    cv = cv2()
    ycc = cv.cvtColor(_bgr(rgb), cv.COLOR_BGR2YCrCb).astype(np.float32)
    grad = cv.blur(np.hypot(cv.Sobel(ycc[..., 0], cv.CV_32F, 1, 0), cv.Sobel(ycc[..., 0], cv.CV_32F, 0, 1)), (7, 7))
    flat = grad <= np.percentile(grad, 30)
    fine = [ycc[..., c] - cv.GaussianBlur(ycc[..., c], (0, 0), 4) for c in (1, 2)]
    return float(np.mean([np.sqrt(np.mean(f[flat] ** 2)) for f in fine]))


def blockiness(rgb: np.ndarray) -> float:
    """How much the grey steps at the strongest of the 8 column (and row) phases exceed the mean step at the
    other seven: ~1 for an image without JPEG blocks, wherever its block grid starts (a photo cropped after
    compression, or a region whose edge is not on the grid, puts the block edges off the 8 px grid)."""
    grey = luma_601(rgb)
    ratios = []
    for d in (np.abs(np.diff(grey, axis=1)), np.abs(np.diff(grey, axis=0)).T):
        n = d.shape[1] // 8 * 8
        if n == 0:
            return 1.0
        phases = d[:, :n].reshape(d.shape[0], -1, 8).mean(axis=(0, 1))
        k = int(phases.argmax())
        ratios.append(float(phases[k] / max(float(np.delete(phases, k).mean()), 1e-3)))
    return float(np.mean(ratios))


def tonal_range(rgb: np.ndarray) -> float:
    """From the 0.1 percentile of all values to the highest channel's 99.9 percentile, in 8-bit levels."""
    lo, hi = stretch_levels(rgb)
    return hi - lo


def largest_log_gain(gains: np.ndarray) -> float:
    """The largest absolute log of per-channel gains: how far a balance moves its most moved channel."""
    return float(np.abs(np.log(np.maximum(gains, 1e-12))).max())  # black: no channel to balance


def cast_strength(rgb: np.ndarray) -> float:
    """Largest absolute log-gain :func:`white_balance` (p = 12) would apply."""
    return largest_log_gain(_wb_gains(rgb, 12.0))


def key(rgb: np.ndarray) -> float:
    """Log-average linear luminance (Reinhard's key) of uint8 sRGB pixels (any shape ending in 3): how bright
    a photo, or a part of it, reads."""
    return math.exp(float(np.log(luminance(to_linear(rgb)) + 1e-4).mean()))


def key_gain(rgb: np.ndarray, target: float = 0.18) -> float:
    """Linear gain that brings the key (:func:`key`) to ``target`` (mid-grey)."""
    return target / key(rgb)


def clipped_share(rgb: np.ndarray) -> float:
    """Share of pixels white (all channels within 5 levels of 255): the evidence of blown highlights."""
    return float((np.minimum(np.minimum(rgb[..., 0], rgb[..., 1]), rgb[..., 2]) >= 250).mean())


def white_gain(rgb: np.ndarray, pct: float = 99.5) -> float:
    """Linear gain that takes the ``pct`` percentile of the brightest channel to white."""
    top = float(np.percentile(to_linear(rgb).max(axis=-1), pct))
    return 1.0 / max(top, 1e-3)


# --- operations ------------------------------------------------------------------------------------
def denoise(rgb: np.ndarray, h_luma: float, h_chroma: float) -> np.ndarray:
    """Non-local means on L and on a, b separately (OpenCV ``fastNlMeansDenoisingColored``); an 11 px search
    window denoises as well as the default 21 px on photos here, 2.5x faster."""
    cv = cv2()
    out = cv.fastNlMeansDenoisingColored(_bgr(rgb), None, float(h_luma), float(h_chroma), 7, 11)
    return np.ascontiguousarray(out[..., ::-1])


def unsharp(rgb: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """Unsharp mask on luma only (no colour fringes): out = x + amount * (Y - blur(Y))."""
    cv = cv2()
    x = rgb.astype(np.float32)
    y = luma_601(x)
    detail = y - cv.GaussianBlur(y, (0, 0), sigma)
    return _u8(x + amount * detail[..., None])


def _psf(kind: str, size: float) -> np.ndarray:
    if kind == "gaussian":
        r = max(1, math.ceil(3 * size))
        g = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * size * size))
        k = np.outer(g, g)
    else:  # disk (defocus) of radius ``size``, anti-aliased by pixel coverage
        r = math.ceil(size + 0.5)
        yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
        k = np.clip(size + 0.5 - np.hypot(xx, yy), 0.0, 1.0)
    return (k / k.sum()).astype(np.float32)


def deconvolve(rgb: np.ndarray, kernel: str, size: float, nsr: float) -> np.ndarray:
    """Wiener deconvolution in the Fourier domain with a ``gaussian`` (sigma) or ``disk`` (radius) point-spread
    function; ``nsr`` is the assumed noise-to-signal power ratio (larger = gentler, less ringing).
    The image is mirror-padded so that the borders do not ring."""
    k = _psf(kernel, size)
    pad = 2 * k.shape[0]
    x = np.pad(rgb.astype(np.float32), ((pad, pad), (pad, pad), (0, 0)), mode="symmetric")
    h, w = x.shape[:2]
    big = np.zeros((h, w), np.float32)
    kh, kw = k.shape
    big[:kh, :kw] = k
    big = np.roll(big, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    hf = np.fft.rfft2(big)
    wiener = np.conj(hf) / (np.abs(hf) ** 2 + nsr)
    out = np.fft.irfft2(np.fft.rfft2(x, axes=(0, 1)) * wiener[..., None], s=(h, w), axes=(0, 1))
    return _u8(out[pad:-pad, pad:-pad])


def exposure(rgb: np.ndarray, gain: float, shoulder: bool = False) -> np.ndarray:
    """Multiply linear light by ``gain``. Without ``shoulder`` values above white clip (the inverse of a
    camera's exposure); with it, a Reinhard-style curve g*x / (1 + (g-1)*x) keeps white at white and
    rolls highlights off instead of clipping them."""
    lin = to_linear(rgb)
    out = gain * lin / (1.0 + (gain - 1.0) * lin) if shoulder else lin * np.float32(gain)
    return to_srgb(out)


def stretch_levels(rgb: np.ndarray, low: float = 0.1, high: float = 99.9) -> tuple[float, float]:
    """The levels :func:`stretch` takes to black and white: the ``low`` percentile of all values and the
    highest channel's ``high`` percentile."""
    flat = rgb.reshape(-1, 3)
    return float(np.percentile(flat, low)), float(np.percentile(flat, high, axis=0).max())


def stretch(rgb: np.ndarray, amount: float = 1.0, levels: Sequence[float] | None = None,
            target: Sequence[float] = (0.0, 255.0)) -> np.ndarray:
    """Contrast stretch of the encoded values: ``levels`` (black, white; default :func:`stretch_levels` of
    ``rgb``) go to ``target``, one mapping for all channels so that colours keep their balance. ``amount``
    blends between the input (0) and the full stretch (1). Close to the identity on a photo that already
    spans the range. A local edit passes the levels measured in its box, since the pixels it is handed
    reach beyond the box (the margin its mask feathers into)."""
    x = rgb.astype(np.float32)
    lo, hi = stretch_levels(rgb) if levels is None else levels
    black, white = target
    y = black + (x - lo) * ((white - black) / max(hi - lo, 8.0))
    return _u8(x + amount * (y - x))


@functools.cache
def _linear_power(p: float) -> np.ndarray:
    return _TO_LINEAR.astype(np.float64) ** p


def _wb_gains(rgb: np.ndarray, p: float) -> np.ndarray:
    """Per-channel gains that equalise the Minkowski ``p``-means of the linear values of uint8 ``rgb``,
    leaving out pixels whose brightest channel is near clipping. Counted by level (a histogram per channel
    against a 256-entry table of linear**p), so a window costs a few hundred microseconds."""
    flat = rgb.reshape(-1, 3)
    ok = _TO_LINEAR[np.maximum(np.maximum(flat[:, 0], flat[:, 1]), flat[:, 2])] < 0.98
    sample = flat[ok] if ok.sum() > 100 else flat
    means = np.array([np.bincount(sample[:, c], minlength=256) @ _linear_power(p) for c in range(3)]) / len(sample)
    norm = np.power(means, 1.0 / p)
    return norm.mean() / np.maximum(norm, 1e-6)


def balance_gains(rgb: np.ndarray, reference: np.ndarray, p: float = 12.0) -> np.ndarray:
    """Per-channel gains that give ``rgb`` the shades-of-grey balance (Minkowski ``p``-means of the linear
    channels, in proportion) of ``reference`` (uint8 pixels, any shape ending in 3), geometric mean 1."""
    gains = _wb_gains(rgb, p) / _wb_gains(reference, p)
    return gains / float(np.exp(np.log(np.maximum(gains, 1e-12)).mean()))


def white_balance(rgb: np.ndarray, p: float, amount: float = 1.0, gains: Sequence[float] | None = None) -> np.ndarray:
    """Shades-of-grey white balance in linear light (Finlayson & Trezzi 2004): the Minkowski ``p``-mean of
    each channel is made equal (p = 1 is grey-world; large p tends to white-patch), or, with ``gains``, the
    channels are scaled by those (a part of the photo brought to the balance of the rest: :func:`balance_gains`).
    Clipped pixels are left out of the estimate; the gains keep the luminance of grey, and ``amount`` scales
    them in log space."""
    lin = to_linear(rgb)
    gains = (_wb_gains(rgb, p) if gains is None else np.asarray(gains, np.float64)) ** amount
    gains /= float(gains @ _LUMA)
    return to_srgb(lin * gains.astype(np.float32))


def deblock(rgb: np.ndarray, h: float) -> np.ndarray:
    """JPEG deblocking: non-local means with the same strength on luma and chroma; 8x8 block edges and
    ringing are noise-like, structure that repeats across the search window survives."""
    return denoise(rgb, h, h)


def deband(rgb: np.ndarray, sigma: float, flat: float = 2.0) -> np.ndarray:
    """Debanding: a wide Gaussian blur applied only where the image is flat (local standard deviation of
    grey below ~``flat`` levels, where the steps of a posterised gradient show), then re-quantised with
    dither so that new steps do not appear."""
    cv = cv2()
    x = rgb.astype(np.float32)
    grey = luma_601(x)
    mean = cv.blur(grey, (9, 9))
    std = np.sqrt(np.maximum(cv.blur(grey * grey, (9, 9)) - mean * mean, 0.0))
    weight = np.clip(2.0 - std / flat, 0.0, 1.0)[..., None]  # 1 below flat, 0 above 2*flat
    smooth = cv.GaussianBlur(x, (0, 0), sigma)
    y = (x + weight * (smooth - x)) / 255.0
    rng = np.random.default_rng(0)
    y = y * 255.0 + (rng.random(y.shape, np.float32) - rng.random(y.shape, np.float32)) * weight
    return _u8(y)


def soften(rgb: np.ndarray, sigma: float, amount: float) -> np.ndarray:
    """Undo over-sharpening: take ``amount`` of the luma detail at scale ``sigma`` back out (halos and
    crunchy edges live there)."""
    return unsharp(rgb, sigma, -amount)


# --- applying an operation in a region -------------------------------------------------------------
def _feather_sigma(shape_hw: tuple[int, int]) -> float:
    return max(1.0, 0.03 * min(shape_hw))


def box_pixels(shape_hw: tuple[int, int], box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Pixel rectangle (x0, y0, x1, y1) of a fractional box."""
    h, w = shape_hw
    return round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)


def full_strength_rect(shape_hw: tuple[int, int], box: tuple[float, float, float, float]
                       ) -> tuple[int, int, int, int]:
    """The part of ``box`` that :func:`feathered_mask` edits at (nearly) full strength: the box shrunk by
    twice the feather's sigma on every side that is not an image border."""
    h, w = shape_hw
    x0, y0, x1, y1 = box_pixels(shape_hw, box)
    d = round(2 * _feather_sigma(shape_hw))
    return x0 + d * (x0 > 0), y0 + d * (y0 > 0), x1 - d * (x1 < w), y1 - d * (y1 < h)


def feathered_mask(shape_hw: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """Float32 HxW mask: 1 inside the fractional ``box`` but for a Gaussian-blurred edge (sigma 3 % of the
    short side) that falls to ~0 at the box's sides, and 0 outside it; image borders are not feathered.

    The feather lies inside the box, so a local edit never touches pixels outside the box the critic flagged:
    its boxes are whole grid cells, already larger than the damage they hold."""
    cv = cv2()
    h, w = shape_hw
    x0, y0, x1, y1 = full_strength_rect(shape_hw, box)  # the blurred edge is at ~2 % at the box's sides
    m = np.zeros((h, w), np.float32)
    m[y0:y1, x0:x1] = 1.0
    m = cv.GaussianBlur(m, (0, 0), _feather_sigma(shape_hw), borderType=cv.BORDER_REPLICATE)
    bx0, by0, bx1, by1 = box_pixels(shape_hw, box)
    inside = np.zeros((h, w), np.float32)
    inside[by0:by1, bx0:bx1] = 1.0
    return m * inside


def blend(base: np.ndarray, edited: np.ndarray, mask: np.ndarray) -> np.ndarray:
    x = base.astype(np.float32)
    return _u8(x + mask[..., None] * (edited.astype(np.float32) - x))


# --- the naturalness guard: NIQE -------------------------------------------------------------------
def _niqe_model() -> tuple[np.ndarray, np.ndarray]:
    return _load_niqe_model(NIQE_MODEL_PATH)


@functools.lru_cache(maxsize=2)
def _load_niqe_model(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(mu, cov) of the authors' pristine multivariate Gaussian, shapes (36,) and (36, 36), once the file's
    sha256 matches ``qds_lite/data/manifest.json``."""
    check_package_data(path, "the NIQE model")
    try:
        with np.load(path, allow_pickle=False) as params:
            mu = np.asarray(params["mu_pris_param"], np.float64).reshape(36)
            cov = np.asarray(params["cov_pris_param"], np.float64).reshape(36, 36)
    except (OSError, KeyError, ValueError) as e:
        raise QdsError(f"the NIQE model {path} is missing or unreadable ({type(e).__name__})",
                       hint="reinstall qds-lite") from None
    return mu, cov


_AGGD_GAM = np.arange(0.2, 10.0 + 5e-4, 0.001)
_AGGD_R = np.exp(2 * np.vectorize(math.lgamma)(2 / _AGGD_GAM) - np.vectorize(math.lgamma)(1 / _AGGD_GAM)
                 - np.vectorize(math.lgamma)(3 / _AGGD_GAM))
_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])


def _aggd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric generalised Gaussian fit of each row (moment matching on a grid, as ``estimateaggdparam.m``)."""
    neg, pos, sq = x < 0, x > 0, x * x
    with np.errstate(invalid="ignore", divide="ignore"):
        left = np.sqrt((sq * neg).sum(1) / neg.sum(1))
        right = np.sqrt((sq * pos).sum(1) / pos.sum(1))
        g = left / right
        r = np.abs(x).mean(1) ** 2 / sq.mean(1) * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
    idx = np.clip(np.searchsorted(_AGGD_R, r), 1, _AGGD_R.size - 1)
    idx -= (r - _AGGD_R[idx - 1]) ** 2 <= (_AGGD_R[idx] - r) ** 2
    idx[np.isnan(r)] = 0
    alpha = _AGGD_GAM[idx]
    ratio = np.exp(0.5 * (_lgamma(1 / alpha) - _lgamma(3 / alpha)))
    return alpha, left * ratio, right * ratio


def _niqe_features(grey: np.ndarray, block: int) -> np.ndarray:
    cv = cv2()
    mu = cv.GaussianBlur(grey, (7, 7), 7 / 6, borderType=cv.BORDER_REPLICATE)
    var = cv.GaussianBlur(grey * grey, (7, 7), 7 / 6, borderType=cv.BORDER_REPLICATE) - mu * mu
    c = (grey - mu) / (np.sqrt(np.abs(var)) + 1.0)
    h, w = c.shape[0] // block * block, c.shape[1] // block * block
    tiles = c[:h, :w].reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3).reshape(-1, block, block)
    flat = tiles.reshape(len(tiles), -1)
    a, bl, br = _aggd(flat)
    feats = [a, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a, bl, br = _aggd(flat * np.roll(tiles, shift, axis=(1, 2)).reshape(flat.shape))
        feats += [a, (br - bl) * np.exp(_lgamma(2 / a) - _lgamma(1 / a)), bl, br]
    return np.stack(feats, 1)


def niqe(rgb: np.ndarray) -> float:
    """NIQE (Mittal, Soundararajan & Bovik 2013; lower = more natural) of an RGB uint8 image of at least
    96 x 96 px, with the authors' pristine model: within ~0.1 of the MATLAB release (checked against the
    reference port ``benchmarks/baselines.py`` in the tests); Pillow's antialiased
    bicubic resize stands in for MATLAB's ``imresize``. NaN for an image without texture."""
    grey = np.round(rgb.astype(np.float64) @ [0.298936021293775, 0.587043074451121, 0.114020904255103])
    h, w = grey.shape[0] // 96 * 96, grey.shape[1] // 96 * 96
    if h == 0 or w == 0:
        raise ValueError(f"NIQE needs at least 96 x 96 px, got {rgb.shape[1]} x {rgb.shape[0]}")
    grey = grey[:h, :w]
    half = Image.fromarray(grey.astype(np.float32), mode="F").resize((w // 2, h // 2), Image.BICUBIC)
    feats = np.concatenate([_niqe_features(grey, 96), _niqe_features(np.asarray(half, np.float64), 48)], axis=1)
    mu_p, cov_p = _niqe_model()
    complete = feats[~np.isnan(feats).any(1)]
    if len(complete) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        d = mu_p - np.nanmean(feats, axis=0)
    pooled = (cov_p + np.cov(complete, rowvar=False)) / 2
    return float(np.sqrt(d @ np.linalg.pinv(pooled, rcond=36 * np.finfo(np.float64).eps) @ d))
