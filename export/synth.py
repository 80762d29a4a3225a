"""Synthetic, *localized* image degradations with known type, region and severity.

This makes the training data for the critic: a clean photo plus a list of :class:`Degradation` s gives a
degraded photo whose damage is known exactly (what kind, which grid cells, how bad).

Conventions
-----------
* Images are ``HxWx3`` ``uint8`` sRGB at the API boundary; internally ``float32`` in [0, 1].
* ``severity`` s in [0, 1] is meant to read the same across kinds: 0 = invisible, 0.2 = mild but visible
  to a careful viewer at 100 %, 0.5 = clearly bothersome, 1.0 = very bad.  Every kind maps s to its
  parameters with the formula in its docstring, and the damage is monotone in s within a kind (the
  kind's own randomness - noise field, shake trajectory, cast direction - depends only on ``seed``, so
  changing s changes only the strength).
* ``region`` is a rectangle of grid cells ``(col0, row0, col1, row1)``, end-exclusive, on the
  ``protocol.GRID`` x ``protocol.GRID`` grid; cell boundaries are at ``floor(i * W / GRID)`` pixels.
  A local degradation is computed on the whole image and blended in with :func:`region_mask`, which is
  1 inside the pixel rectangle, ramps down to 0 over a feather *inside* the rectangle along the sides
  that are not image borders, and is exactly 0 outside, so pixels outside the box are untouched.
* Linear-light work uses the sRGB transfer function (:func:`srgb_to_linear`, :func:`linear_to_srgb`).

Only numpy, scipy and Pillow are used.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from qds_lite.protocol import FINDING_TYPES, GRID

__all__ = [
    "KINDS", "PIPELINE_ORDER", "Degradation", "apply", "sample", "region_mask", "region_pixels",
    "full_reference_damage", "srgb_to_linear", "linear_to_srgb", "srgb_to_lab", "feather_width",
]

# synth kind -> finding type (protocol.FINDING_TYPES)
KINDS: dict[str, str] = {
    "gaussian_blur": "blur",
    "motion_blur": "motion_blur",
    "defocus": "defocus",
    "luma_noise": "noise",
    "chroma_noise": "noise",
    "jpeg": "jpeg",
    "overexposure": "overexposure",
    "underexposure": "underexposure",
    "low_contrast": "low_contrast",
    "color_cast": "color_cast",
    "banding": "banding",
    "oversharpen": "oversharpen",
    "haze": "haze",
}
assert all(t in FINDING_TYPES for t in KINDS.values())

# A realistic capture -> processing -> storage order; :func:`sample` returns its lists in this order.
PIPELINE_ORDER: tuple[str, ...] = (
    "haze", "defocus", "motion_blur", "gaussian_blur",  # scene and optics
    "overexposure", "underexposure",  # exposure
    "luma_noise", "chroma_noise",  # sensor
    "color_cast", "low_contrast", "oversharpen",  # processing
    "banding", "jpeg",  # storage
)
assert sorted(PIPELINE_ORDER) == sorted(KINDS)

_LUMA = np.array([0.2126, 0.7152, 0.0722], np.float32)  # Rec.709 luminance weights (linear light)


@dataclass(frozen=True)
class Degradation:
    """One degradation: ``kind`` (key of :data:`KINDS`), ``severity`` in [0, 1], ``region`` (grid-cell
    rectangle ``(col0, row0, col1, row1)``, end-exclusive, or None for the whole image) and ``seed`` for
    the kind's own randomness."""

    kind: str
    severity: float
    region: tuple[int, int, int, int] | None
    seed: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown degradation kind {self.kind!r}")
        if not 0.0 <= float(self.severity) <= 1.0:
            raise ValueError(f"severity {self.severity} not in [0, 1]")
        if self.region is not None:
            c0, r0, c1, r1 = self.region
            if not (0 <= c0 < c1 <= GRID and 0 <= r0 < r1 <= GRID):
                raise ValueError(f"bad region {self.region} for a {GRID}x{GRID} grid")

    @property
    def finding(self) -> str:
        """The protocol finding type this degradation should be reported as."""
        return KINDS[self.kind]

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Fractional box (x0, y0, x1, y1) of the region; (0, 0, 1, 1) when global."""
        if self.region is None:
            return (0.0, 0.0, 1.0, 1.0)
        c0, r0, c1, r1 = self.region
        return (c0 / GRID, r0 / GRID, c1 / GRID, r1 / GRID)


# --- colour helpers --------------------------------------------------------------------------


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1), float32."""
    x = np.asarray(x, dtype=np.float32)
    out = np.power((x + np.float32(0.055)) * np.float32(1 / 1.055), np.float32(2.4), out=np.empty_like(x))
    lo = x <= 0.04045
    out[lo] = x[lo] * np.float32(1 / 12.92)
    return out


def linear_to_srgb(y: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB-encoded values, float32 (input clipped to [0, 1])."""
    y = np.clip(np.asarray(y, dtype=np.float32), 0.0, 1.0)
    out = np.power(y, np.float32(1 / 2.4), out=np.empty_like(y))
    out *= np.float32(1.055)
    out -= np.float32(0.055)
    lo = y <= 0.0031308
    out[lo] = y[lo] * np.float32(12.92)
    return out


_RGB2XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                     [0.2126729, 0.7151522, 0.0721750],
                     [0.0193339, 0.1191920, 0.9503041]], np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)  # D65


_LIN_LUT = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)  # exact for uint8 input


def _lab_f_exact(t: np.ndarray) -> np.ndarray:
    d = 6.0 / 29.0
    return np.where(t > d ** 3, np.cbrt(t), t / (3 * d * d) + 4.0 / 29.0).astype(np.float32)


_F_N = 65536
_F_LUT = _lab_f_exact(np.linspace(0.0, 1.25, _F_N + 1, dtype=np.float32))


def _lab_f(t: np.ndarray) -> np.ndarray:
    """CIELAB f(t) by nearest lookup in a 65537-entry table over [0, 1.25] (|error| < 0.02 L* units,
    4x faster than cbrt); XYZ/white of in-gamut sRGB stays below 1.1."""
    u = t * np.float32(_F_N / 1.25)
    np.clip(u, 0, _F_N, out=u)
    return _F_LUT[(u + 0.5).astype(np.int32)]


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (uint8, or float in [0, 1]) -> CIELAB (D65), float32 HxWx3."""
    x = np.asarray(rgb)
    lin = _LIN_LUT[x] if x.dtype == np.uint8 else srgb_to_linear(x)
    f = _lab_f((lin @ (_RGB2XYZ / _WHITE[:, None]).T).astype(np.float32))
    L = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1).astype(np.float32)


def _luma(x: np.ndarray) -> np.ndarray:
    return (x @ _LUMA).astype(np.float32)


# --- geometry --------------------------------------------------------------------------------


def _edges(n: int) -> list[int]:
    return [(i * n) // GRID for i in range(GRID + 1)]


def region_pixels(shape_hw: tuple[int, int], region) -> tuple[int, int, int, int]:
    """Pixel rectangle (x0, y0, x1, y1), end-exclusive, of a grid-cell region (None = whole image)."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    if region is None:
        return (0, 0, w, h)
    c0, r0, c1, r1 = region
    xs, ys = _edges(w), _edges(h)
    return (xs[c0], ys[r0], xs[c1], ys[r1])


def feather_width(shape_hw: tuple[int, int]) -> int:
    """Feather (ramp) width in pixels: 3 % of the shorter side, at least 2."""
    return max(2, int(round(0.03 * min(shape_hw[0], shape_hw[1]))))


def _ramp(n: int, lo: int, hi: int, f: int) -> np.ndarray:
    """1-D profile: 0 outside [lo, hi), smoothstep from 0 at the rectangle edge up to 1 at ``f`` pixels
    inside it, on every side that is not an image border."""
    i = np.arange(n, dtype=np.float32) + 0.5
    p = np.ones(n, np.float32)
    if lo > 0:
        p = np.minimum(p, np.clip((i - lo) / f, 0, 1))
    if hi < n:
        p = np.minimum(p, np.clip((hi - i) / f, 0, 1))
    p[:lo] = 0.0
    p[hi:] = 0.0
    return (p * p * (3 - 2 * p)).astype(np.float32)  # smoothstep


def region_mask(shape_hw: tuple[int, int], region) -> np.ndarray:
    """Float32 HxW blending mask in [0, 1] for a grid-cell region: 1 inside the region's pixel rectangle,
    fading to 0 over :func:`feather_width` pixels *inside* the rectangle (sides on the image border are
    not feathered) and exactly 0 outside it.  ``None`` -> all ones."""
    h, w = int(shape_hw[0]), int(shape_hw[1])
    if region is None:
        return np.ones((h, w), np.float32)
    x0, y0, x1, y1 = region_pixels((h, w), region)
    f = feather_width((h, w))
    return np.outer(_ramp(h, y0, y1, f), _ramp(w, x0, x1, f)).astype(np.float32)


# --- filtering helpers -----------------------------------------------------------------------


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two spatial axes (HxW or HxWxC)."""
    s = (sigma, sigma) + (0,) * (x.ndim - 2)
    return ndimage.gaussian_filter(x, s, mode="reflect", truncate=3.5)


def _convolve(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Convolve HxWx3 with an odd-sized 2-D kernel via FFT, reflect-padded so borders stay bright."""
    ph, pw = k.shape[0] // 2, k.shape[1] // 2
    xp = np.pad(x, ((ph, ph), (pw, pw), (0, 0)), mode="symmetric")
    y = signal.fftconvolve(xp, k.astype(np.float32)[:, :, None], mode="valid", axes=(0, 1))
    return y.astype(np.float32)


def _unit_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """White Gaussian noise low-pass filtered with ``sigma`` px and rescaled to unit std per pixel."""
    n = rng.standard_normal(shape, dtype=np.float32)
    if sigma <= 0:
        return n
    d = np.zeros((31, 31), np.float32)
    d[15, 15] = 1.0
    norm = float(np.sqrt((_blur(d, sigma) ** 2).sum()))  # std of the filtered unit white noise
    return (_blur(n, sigma) / norm).astype(np.float32)


# --- the kinds -------------------------------------------------------------------------------
# Every kind: f(x, s, rng, mask) -> degraded image, x float32 HxWx3 sRGB in [0, 1] (not modified),
# s = severity, rng seeded from the degradation's seed, mask = region mask (None when global; only
# used by kinds whose parameters depend on image statistics).


def gaussian_blur(x, s, rng, mask):
    """Gaussian blur, sigma = 0.2 + 3.3*s px (native resolution)."""
    return _blur(x, 0.2 + 3.3 * s)


def _shake_path(rng: np.random.Generator, n: int = 96) -> np.ndarray:
    """Random camera-shake trajectory: a 2-D random walk with momentum, sampled uniformly in time (so
    the kernel is denser where the camera dwelt), centred on its time-average and scaled to unit length."""
    v = np.zeros(2)
    ang = rng.uniform(0, 2 * np.pi)
    v[:] = (math.cos(ang), math.sin(ang))
    pts = [np.zeros(2)]
    for _ in range(n - 1):
        v = 0.9 * v + 0.45 * rng.standard_normal(2)
        pts.append(pts[-1] + v)
    p = np.array(pts)
    length = np.linalg.norm(np.diff(p, axis=0), axis=1).sum()
    p = (p - p.mean(axis=0)) / max(length, 1e-6)
    return p


def _motion_kernel(path: np.ndarray, length: float) -> np.ndarray:
    p = path * length
    # resample densely (>= 4 samples per pixel of path) by linear interpolation in time
    m = max(len(p), int(4 * length) + 2)
    t = np.linspace(0, len(p) - 1, m)
    q = np.stack([np.interp(t, np.arange(len(p)), p[:, i]) for i in range(2)], axis=1)
    r = int(math.ceil(np.abs(q).max())) + 1
    k = np.zeros((2 * r + 1, 2 * r + 1), np.float64)
    fx, fy = q[:, 0] + r, q[:, 1] + r
    ix, iy = np.floor(fx).astype(int), np.floor(fy).astype(int)
    ax, ay = fx - ix, fy - iy
    for dx, dy, wt in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)),
                       (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
        np.add.at(k, (iy + dy, ix + dx), wt)  # bilinear splat
    return (k / k.sum()).astype(np.float32)


def motion_blur(x, s, rng, mask):
    """Camera-shake blur: kernel = a random-walk-with-momentum trajectory (shape from the seed) of path
    length 1 + 19*s px, bilinearly rasterised, normalised, centred; FFT-convolved per channel."""
    return _convolve(x, _motion_kernel(_shake_path(rng), 1.0 + 19.0 * s))


def _disk(radius: float) -> np.ndarray:
    r = int(math.ceil(radius + 0.5))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = np.clip(radius + 0.5 - np.hypot(xx, yy), 0.0, 1.0)  # anti-aliased edge (pixel coverage)
    return (k / k.sum()).astype(np.float32)


def defocus(x, s, rng, mask):
    """Defocus: convolution with an anti-aliased disk of radius 0.4 + 5*s px (FFT)."""
    return _convolve(x, _disk(0.4 + 5.0 * s))


# sRGB slope d(srgb)/d(linear) at mid-grey (sRGB 0.5), to express noise std in 8-bit sRGB units
_MID_LIN = float(srgb_to_linear(np.float32(0.5)))
_MID_SLOPE = 1.055 / 2.4 * _MID_LIN ** (1 / 2.4 - 1)


def luma_noise(x, s, rng, mask):
    """Sensor (luminance) noise in linear light: variance = sd_mid^2 * (0.98*Y/Y_mid + 0.02), i.e.
    shot noise (signal-dependent, 98 % of the variance at mid-grey) plus read noise (2 %; after the sRGB
    curve the shadows end up ~1.6x noisier than mid-grey, as in real photos), where Y is the pixel's
    linear luminance and sd_mid is chosen so that the std at sRGB mid-grey is 1 + 20*s in 8-bit
    units.  The noise field is smoothed like a demosaic would (sigma 0.5 px, rescaled to unit std) and
    added to luminance only: channel c gets n * (lin_c + 0.01) / (Y + 0.01), so grey pixels get the
    same noise in R, G, B and coloured pixels keep their chromaticity; clipped, re-encoded to sRGB."""
    lin = srgb_to_linear(x)
    y = _luma(lin)
    sd_mid = (1.0 + 20.0 * s) / 255.0 / _MID_SLOPE
    sd = sd_mid * np.sqrt(0.98 * y / _MID_LIN + 0.02)
    n = _unit_noise(rng, y.shape, 0.5) * sd
    return linear_to_srgb(lin + (n / (y + 0.01))[..., None] * (lin + 0.01))


def chroma_noise(x, s, rng, mask):
    """Chroma noise: two independent noise fields, low-pass filtered (sigma 1.5 px, colour blotches) and
    rescaled to unit std, added to the Cb and Cr channels (BT.601, sRGB) with std 1 + 14*s 8-bit units at
    mid-grey, growing in the shadows (x1.4 at black, x0.6 at white: factor 1.4 - 0.8*luma)."""
    h, w = x.shape[:2]
    sd = (1.0 + 14.0 * s) / 255.0 * (1.4 - 0.8 * (x @ np.float32([0.299, 0.587, 0.114])))
    cb = _unit_noise(rng, (h, w), 1.5) * sd
    cr = _unit_noise(rng, (h, w), 1.5) * sd
    d = np.stack([1.402 * cr, -0.344136 * cb - 0.714136 * cr, 1.772 * cb], axis=-1)
    return np.clip(x + d, 0.0, 1.0).astype(np.float32)


def jpeg_quality(s: float) -> int:
    """JPEG quality for severity s: round(3 + 87*exp(-3.3*s)) (90 at s=0, 48 at 0.2, 20 at 0.5, 7 at
    0.9, 6 at 1): roughly even steps in perceived damage, which grows with log(quality)."""
    return int(np.clip(round(3.0 + 87.0 * math.exp(-3.3 * s)), 3, 95))


def jpeg(x, s, rng, mask):
    """JPEG re-encode of the whole image with Pillow, quality = :func:`jpeg_quality` (90..3), 4:2:0."""
    buf = io.BytesIO()
    Image.fromarray(_to_uint8(x)).save(buf, format="JPEG", quality=jpeg_quality(s), subsampling=2)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float32) / 255.0


def overexposure(x, s, rng, mask):
    """Overexposure: linear light x 2**(0.1 + 2.0*s) (+0.1 to +2.1 EV), clipped at 1 (highlights blow
    out per channel, as a sensor does), re-encoded to sRGB and re-quantised to 8 bits."""
    y = linear_to_srgb(srgb_to_linear(x) * 2.0 ** (0.1 + 2.0 * s))
    return np.round(y * 255.0) / 255.0


def underexposure(x, s, rng, mask):
    """Underexposure: linear light x 2**-(0.15 + 2.85*s) (-0.15 to -3 EV), re-encoded to sRGB and
    re-quantised to 8 bits (the shadows lose levels, so they posterise when brightened)."""
    y = linear_to_srgb(srgb_to_linear(x) * 2.0 ** -(0.15 + 2.85 * s))
    return np.round(y * 255.0) / 255.0


def low_contrast(x, s, rng, mask):
    """Low contrast: out = m + (x - m)*(1 - 0.85*s) in sRGB, where m is the mean over all channels of
    the affected area (the mask-weighted mean for a local degradation, so its brightness is kept)."""
    if mask is None:
        m = float(x.mean())
    else:
        m = float((x.mean(axis=-1) * mask).sum() / max(float(mask.sum()), 1e-6))
    return (m + (x - m) * (1.0 - 0.85 * s)).astype(np.float32)


_WARM_COOL = np.array([1.0, 0.0, -1.0]) / math.sqrt(2.0)
_GREEN_MAGENTA = np.array([-1.0, 2.0, -1.0]) / math.sqrt(6.0)


def color_cast(x, s, rng, mask):
    """White-balance error: in linear light multiply channels by g = exp(m*(cos(a)*u1 + sin(a)*u2)),
    u1 = warm/cool axis (R up, B down), u2 = green/magenta axis, direction a ~ U(0, 2*pi) from the seed,
    magnitude m = 0.05 + 0.45*s (log-gain norm); g is renormalised to unit luminance gain; clipped at 1."""
    a = rng.uniform(0.0, 2.0 * np.pi)
    m = 0.05 + 0.45 * s
    g = np.exp(m * (math.cos(a) * _WARM_COOL + math.sin(a) * _GREEN_MAGENTA))
    g = (g / float(g @ _LUMA)).astype(np.float32)
    return linear_to_srgb(srgb_to_linear(x) * g)


def banding(x, s, rng, mask):
    """Banding / posterisation: quantise each channel to L = round(64 * 2**(-3.3*s)) levels
    (64 at s=0, 41 at 0.2, 20 at 0.5, 6 at 1; perceived banding goes with log(levels)).
    Before quantising, flat areas are smoothed (Gaussian sigma 1.5 px) so that their fine grain no
    longer dithers the steps and smooth gradients show bands; textured areas (local detail energy above
    ~1.5-6 levels of 255) keep their detail."""
    levels = int(round(64.0 * 2.0 ** (-3.3 * s)))
    low = _blur(x, 1.5)
    detail = x - low
    energy = np.sqrt(_blur(_luma(detail * detail), 3.0))
    keep = np.clip((energy - 1.5 / 255.0) / (4.5 / 255.0), 0.0, 1.0)[..., None]
    y = low + keep * detail
    q = levels - 1
    return (np.round(np.clip(y, 0.0, 1.0) * q) / q).astype(np.float32)


def oversharpen(x, s, rng, mask):
    """Over-sharpening with halos: unsharp mask on sRGB luma, amount 0.2 + 2.8*s, Gaussian radius
    sigma = 1.5 + 0.5*s px; the luma detail is added equally to R, G, B; clipped."""
    y = x @ np.float32([0.299, 0.587, 0.114])
    detail = y - _blur(y, 1.5 + 0.5 * s)
    return np.clip(x + (0.2 + 2.8 * s) * detail[..., None], 0.0, 1.0).astype(np.float32)


def haze(x, s, rng, mask):
    """Haze / veiling glare (sRGB atmospheric-scattering model): out = x*t + A*(1-t), airlight
    A = grey level U(0.85, 0.95) tinted slightly blue (B +0..3 %), transmission t = 1 - 0.75*s*d(y),
    with d = 1 (uniform, half the seeds) or a smooth vertical gradient d(y) = 1.2 - 0.4*y/H over the
    affected area (denser at the top, mean 1)."""
    grey = rng.uniform(0.85, 0.95)
    tint = rng.uniform(0.0, 0.03)
    a = np.float32([grey - tint / 2, grey, min(1.0, grey + tint)])
    h = x.shape[0]
    if rng.uniform() < 0.5:
        d = np.ones((h, 1, 1), np.float32)
    else:
        d = (1.2 - 0.4 * (np.arange(h, dtype=np.float32) + 0.5) / h)[:, None, None]
    t = 1.0 - 0.75 * s * d
    return np.clip(x * t + a * (1.0 - t), 0.0, 1.0).astype(np.float32)


_REGISTRY: dict[str, Callable] = {
    "gaussian_blur": gaussian_blur, "motion_blur": motion_blur, "defocus": defocus,
    "luma_noise": luma_noise, "chroma_noise": chroma_noise, "jpeg": jpeg,
    "overexposure": overexposure, "underexposure": underexposure, "low_contrast": low_contrast,
    "color_cast": color_cast, "banding": banding, "oversharpen": oversharpen, "haze": haze,
}
assert set(_REGISTRY) == set(KINDS)


def _gr(sigma: float) -> int:
    """Radius in pixels of :func:`_blur`'s Gaussian kernel."""
    return int(3.5 * sigma + 0.5)


# Pixels of context around a local region that each kind needs for the result inside the region to
# equal the whole-image result (filter support); a local degradation is computed on that crop only.
_CONTEXT: dict[str, Callable[[float], int]] = {
    "gaussian_blur": lambda s: _gr(0.2 + 3.3 * s) + 1,
    "motion_blur": lambda s: int(math.ceil(1.0 + 19.0 * s)) + 2,
    "defocus": lambda s: int(math.ceil(0.9 + 5.0 * s)) + 1,
    "luma_noise": lambda s: 0,
    "chroma_noise": lambda s: 0,
    "jpeg": lambda s: 16,  # and the crop origin is aligned to the 16x16 MCU grid (see apply)
    "overexposure": lambda s: 0,
    "underexposure": lambda s: 0,
    "low_contrast": lambda s: 0,
    "color_cast": lambda s: 0,
    "banding": lambda s: _gr(1.5) + _gr(3.0) + 2,
    "oversharpen": lambda s: _gr(1.5 + 0.5 * s) + 1,
    "haze": lambda s: 0,
}
assert set(_CONTEXT) == set(KINDS)


# --- public API ------------------------------------------------------------------------------


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8, rounding half up."""
    y = x * np.float32(255.0)
    np.clip(y, 0.0, 255.0, out=y)
    y += np.float32(0.5)
    return y.astype(np.uint8)


def apply(rgb: np.ndarray, degs: Sequence[Degradation]) -> np.ndarray:
    """Apply ``degs`` in the given order to a clean HxWx3 uint8 image; returns a new uint8 image.

    A global degradation is computed on the whole (current) image.  A local one is computed on the
    region's pixel rectangle plus the context its filters need (:data:`_CONTEXT`; the same result as
    computing it on the whole image, only faster; noise fields are drawn for the crop) and blended in
    with :func:`region_mask`, so pixels outside the rectangle are untouched.  Deterministic given the
    seeds; the input is never modified."""
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"expected HxWx3 uint8, got {a.shape} {a.dtype}")
    x = a.astype(np.float32)  # a fresh array: updated in place below
    x *= np.float32(1.0 / 255.0)
    h, w = x.shape[:2]
    for d in degs:
        rng = np.random.default_rng(d.seed)
        fn, s = _REGISTRY[d.kind], float(d.severity)
        if d.region is None:
            x = fn(x, s, rng, None).astype(np.float32, copy=False)
            continue
        x0, y0, x1, y1 = region_pixels((h, w), d.region)
        c = _CONTEXT[d.kind](s)
        cx0, cy0, cx1, cy1 = max(0, x0 - c), max(0, y0 - c), min(w, x1 + c), min(h, y1 + c)
        if d.kind == "jpeg":  # keep the crop's 8x8 blocks / 16x16 MCUs on the image's grid
            cx0, cy0 = cx0 - cx0 % 16, cy0 - cy0 % 16
        mask = region_mask((h, w), d.region)[cy0:cy1, cx0:cx1]
        y = fn(x[cy0:cy1, cx0:cx1], s, rng, mask)
        inner = (slice(y0 - cy0, y1 - cy0), slice(x0 - cx0, x1 - cx0))
        rect = x[y0:y1, x0:x1]
        rect += mask[inner][..., None] * (y[inner] - rect)
    return _to_uint8(x)


def _random_region(rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A grid rectangle of 1x1 up to 3x3 cells (never the whole grid), uniformly placed."""
    big = min(3, GRID - 1)
    w, h = int(rng.integers(1, big + 1)), int(rng.integers(1, big + 1))
    c0, r0 = int(rng.integers(0, GRID - w + 1)), int(rng.integers(0, GRID - h + 1))
    return (c0, r0, c0 + w, r0 + h)


_TYPES = tuple(dict.fromkeys(KINDS.values()))  # the finding types the synthesizer can make
_EXCLUSIVE = ({"overexposure", "underexposure"},)  # never together (they would cancel out)


def sample(rng: np.random.Generator, *, max_degradations: int = 2, p_clean: float = 0.12,
           p_local: float = 0.5) -> list[Degradation]:
    """A random degradation list: with probability ``p_clean`` an empty list (a clean image), else
    1..``max_degradations`` degradations of distinct finding types (types uniform; a type with several
    kinds - noise - picks one uniformly; over- and underexposure never together), severity ~ U(0.05, 1),
    each local with probability ``p_local`` (region from :func:`_random_region`) else global.
    Returned in :data:`PIPELINE_ORDER`."""
    if rng.uniform() < p_clean:
        return []
    n = int(rng.integers(1, max_degradations + 1))
    types: list[str] = []
    for t in rng.permutation(len(_TYPES)):
        cand = _TYPES[int(t)]
        if any(cand in ex and any(o in ex for o in types) for ex in _EXCLUSIVE):
            continue
        types.append(cand)
        if len(types) == n:
            break
    out = []
    for t in types:
        kinds = [k for k, v in KINDS.items() if v == t]
        kind = kinds[int(rng.integers(len(kinds)))]
        sev = float(rng.uniform(0.05, 1.0))
        region = _random_region(rng) if rng.uniform() < p_local else None
        out.append(Degradation(kind, sev, region, int(rng.integers(0, 2**31 - 1))))
    out.sort(key=lambda d: PIPELINE_ORDER.index(d.kind))
    return out


def full_reference_damage(clean: np.ndarray, degraded: np.ndarray) -> np.ndarray:
    """Per-cell damage, GRID x GRID float32: mean over the cell's pixels of
    |dL*| + 0.5*(|da*| + |db*|) in CIELAB (D65) between the two sRGB images."""
    if clean.shape != degraded.shape:
        raise ValueError(f"shape mismatch {clean.shape} vs {degraded.shape}")
    d = np.abs(srgb_to_lab(clean) - srgb_to_lab(degraded))
    e = d[..., 0] + 0.5 * (d[..., 1] + d[..., 2])
    h, w = e.shape
    ys, xs = _edges(h), _edges(w)
    sums = np.add.reduceat(np.add.reduceat(e, ys[:-1], axis=0), xs[:-1], axis=1)
    counts = np.outer(np.diff(ys), np.diff(xs))
    return (sums / np.maximum(counts, 1)).astype(np.float32)
