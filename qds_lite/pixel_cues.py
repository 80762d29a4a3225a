"""Hand-made pixel cues of a zoom window: what a photo technician would measure in a crop.

The diagnosis heads read the encoder's features of a zoomed window and call content damage now and then
(fine foliage "noisy", a smooth sky "banded"). These cues are classical measurements of the same native
pixels - noise from the Immerkaer operator on luma and chroma, sharpness and ringing from band energies,
JPEG blocks from the 8-px periodicity of the steps, banding from the levels a gradient uses - and a small
head (``diag.cues``, trained by ``export.cue_head`` on synthetic damage of the training photos) turns them
into a second opinion over the same classes, which :class:`qds_lite.diagnosis.CellMap` multiplies into the
zoom head's (README, "Pixel cues").

Tone and colour (luma percentiles, clipped shares, saturation, chroma means, cast), gradient statistics and
structure-tensor coherence were measured too and left out: on the dev windows the product classified better
without them (the tone and colour cues describe the scene more than its damage; README, "Pixel cues").

NumPy only, a few milliseconds per 128 x 128 window; the same code makes the training rows, so the head
sees at run time exactly what it learned from.
"""

from __future__ import annotations

import numpy as np

from . import refine_ops as measure

# The operator of Immerkaer (1996), "Fast noise variance estimation": zero on any plane, so mostly noise.
_NOISE = ((0, 0, 1.0), (0, 1, -2.0), (0, 2, 1.0), (1, 0, -2.0), (1, 1, 4.0), (1, 2, -2.0),
          (2, 0, 1.0), (2, 1, -2.0), (2, 2, 1.0))
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_EPS = 1e-2  # 8-bit units: floors the logs of energies a flat window has none of
NAMES = (
    "noise_y_mean", "noise_y_median", "noise_y_p10", "noise_cb_mean", "noise_cb_median", "noise_cb_p10",
    "noise_cr_mean", "noise_cr_median", "noise_cr_p10",
    "band_fine", "band_mid", "band_coarse", "fine_over_mid", "mid_over_coarse", "fine_kurtosis",
    "blockiness", "flat_zero_steps", "flat_share", "levels_per_range", "empty_levels",
)


def _noise_response(planes: np.ndarray) -> np.ndarray:
    """|Immerkaer operator| over each of (n, H, W) planes, valid part: (n, H - 2, W - 2)."""
    n, h, w = planes.shape
    out = np.zeros((n, h - 2, w - 2), np.float32)
    for i, j, k in _NOISE:
        out += np.float32(k) * planes[:, i:i + h - 2, j:j + w - 2]
    return np.abs(out)


def _box_means(x: np.ndarray, radii: tuple[int, ...]) -> list[np.ndarray]:
    """Means over (2r+1)^2 neighbourhoods for each r, valid parts only, from one integral image."""
    c = np.pad(x, ((1, 0), (1, 0))).cumsum(0, dtype=np.float64).cumsum(1)
    out = []
    for r in radii:
        n = 2 * r + 1
        out.append(((c[n:, n:] - c[:-n, n:] - c[n:, :-n] + c[:-n, :-n]) / (n * n)).astype(np.float32))
    return out


def _ranks(n: int, qs: tuple[float, ...]) -> list[int]:
    """The order statistics that stand for quantiles ``qs`` of n values (nearest rank)."""
    return [min(n - 1, int(q * (n - 1) + 0.5)) for q in qs]


def window_cues(window: np.ndarray) -> np.ndarray:
    """An HxWx3 uint8 window (at least 24 px a side) -> its cues, float32 in the order of :data:`NAMES`."""
    ycc = np.moveaxis(window.astype(np.float32) @ _YCC.T, -1, 0)
    y = ycc[0]
    resp = _noise_response(ycc).reshape(3, -1)
    ranks = _ranks(resp.shape[1], (0.1, 0.5))
    p10, p50 = np.partition(resp, ranks, axis=1)[:, ranks].T
    cues = []
    for plane in range(3):
        cues += [np.log(resp[plane].mean() + _EPS), np.log(p50[plane] + _EPS), np.log(p10[plane] + _EPS)]
    b1, b3, b7 = _box_means(y, (1, 3, 7))
    fine, middle, coarse = y[1:-1, 1:-1] - b1, b1[2:-2, 2:-2] - b3, b3[4:-4, 4:-4] - b7
    e_fine, e_mid, e_coarse = (float(np.abs(v).mean()) for v in (fine, middle, coarse))
    fine2 = fine * fine
    var = float(fine2.mean(dtype=np.float64)) + 1e-6  # the fine band has zero mean
    cues += [np.log(e_fine + _EPS), np.log(e_mid + _EPS), np.log(e_coarse + _EPS),
             np.log((e_fine + _EPS) / (e_mid + _EPS)), np.log((e_mid + _EPS) / (e_coarse + _EPS)),
             np.log(float((fine2 * fine2).mean(dtype=np.float64)) / var ** 2 + 1e-6)]
    cues.append(np.log(max(measure.blockiness(window), 1e-3)))
    levels = np.rint(y).astype(np.int64)
    steps = np.diff(levels, axis=1)
    flat = np.abs(steps) <= 3
    cues += [float((steps[flat] == 0).mean()) if flat.any() else 0.0, float(flat.mean())]
    counts = np.bincount(levels.ravel().clip(0, 255), minlength=256)
    lo_level, hi_level = np.searchsorted(np.cumsum(counts), np.array(_ranks(levels.size, (0.02, 0.98))), "right")
    hist = counts[lo_level:hi_level + 1]
    cues += [float((hist > 0).sum()) / len(hist), float((hist == 0).mean())]
    return np.asarray(cues, np.float32)
