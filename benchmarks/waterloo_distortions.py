"""Degradation code the critic never trained on: published distortions at their published levels.

``export.synth`` makes every image the critic learns from and every image of ``benchmarks.accuracy``, so a
critic that had learnt that code's habits (its noise spectrum, its JPEG settings, its exposure curve) would
look better there than on anybody else's images. This module re-implements, from the papers' public code
and parameters, the distortions other researchers used, so that ``benchmarks.waterloo`` can measure the
critic on them:

* the four of the Waterloo Exploration Database (K. Ma et al., "Waterloo Exploration Database: New
  Challenges for Image Quality Assessment Models", IEEE TIP 26(2), 2017), five levels each: Gaussian blur,
  white Gaussian noise, JPEG and JPEG 2000;
* the five that DBCNN added to them for its synthetic pre-training (W. Zhang et al., "Blind Image Quality
  Assessment Using a Deep Bilinear Convolutional Neural Network", IEEE TCSVT 30(1), 2020): contrast
  change, pink noise, colour quantization with dither, over- and underexposure.

The levels are those of DBCNN's MATLAB ``distortion_generator.m`` (github.com/zwx8981/DBCNN, which lists
the Waterloo four with the Waterloo paper's parameters). Written here in NumPy, SciPy and Pillow from that
description, not translated line by line; where MATLAB and Pillow differ the docstrings say how.
Level 1 is the mildest, level 5 the strongest; every function takes and returns HxWx3 uint8 RGB.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

LEVELS = (1, 2, 3, 4, 5)
_BLUR_SIZES = (7, 15, 39, 91, 199)  # Gaussian kernel size; sigma = size / 6
_NOISE_LOG2_VARIANCE = (-10.0, -7.5, -5.5, -3.5, 0.0)  # variance on the [0, 1] scale, as a power of two
_JPEG_QUALITY = (43, 12, 7, 4, 0)  # IJG quality (libjpeg treats 0 as 1, in MATLAB as in Pillow)
_JP2K_BPP = (0.46, 0.16, 0.07, 0.04, 0.02)  # bits per pixel: compression ratio 24 / bpp
_CONTRAST_RANGE = ((0.2, 0.8), (0.3, 0.7), (0.4, 0.6), (0.45, 0.55), (0.49, 0.51))
_PINK_WEIGHT = (0.3, 0.7, 1.2, 2.0, 4.0)
_DITHER_COLOURS = (64, 32, 16, 8, 4)
_EXPOSURE_SHIFT = (0.15, 0.3, 0.45, 0.6, 0.75)  # 0.1 g, g = 1.5 ... 7.5, on the [0, 1] scale


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB's conversion of doubles to uint8: round half away from zero, saturate."""
    return np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), 0, 255).astype(np.uint8)


def gaussian_blur(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """``imfilter(img, fspecial('gaussian', n, n / 6), 'symmetric')``: the n-tap kernel (not truncated
    further), edges mirrored with the edge pixel repeated (SciPy's "reflect")."""
    from scipy import ndimage

    n = _BLUR_SIZES[level - 1]
    x = np.arange(n) - (n - 1) / 2
    k = np.exp(-x * x / (2 * (n / 6) ** 2))
    k /= k.sum()
    out = img.astype(np.float64)
    for axis in (0, 1):
        out = ndimage.correlate1d(out, k, axis=axis, mode="reflect")
    return _to_uint8(out)


def white_noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """``imnoise(img, 'gaussian', 0, v)``: independent N(0, v) on every channel of every pixel, on the [0, 1]
    scale, clipped to it."""
    sigma = np.sqrt(2.0 ** _NOISE_LOG2_VARIANCE[level - 1])
    x = img / 255.0 + sigma * rng.standard_normal(img.shape)
    return _to_uint8(255.0 * np.clip(x, 0.0, 1.0))


def _pillow_round_trip(img: np.ndarray, **save: object) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, **save)
    buf.seek(0)
    with Image.open(buf) as out:
        return np.asarray(out.convert("RGB"))


def jpeg(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """``imwrite(img, f, 'jpg', 'Quality', q)`` and read back: libjpeg through Pillow, 4:2:0 chroma."""
    return _pillow_round_trip(img, format="JPEG", quality=_JPEG_QUALITY[level - 1], subsampling="4:2:0")


def jpeg2000(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """``imwrite(img, f, 'jp2', 'CompressionRatio', 24 / bpp)`` and read back: OpenJPEG through Pillow, the
    irreversible 9/7 wavelet of lossy JPEG 2000, one quality layer at that ratio."""
    return _pillow_round_trip(img, format="JPEG2000", quality_mode="rates",
                              quality_layers=[24.0 / _JP2K_BPP[level - 1]], irreversible=True)


def contrast_change(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """``imadjust(img, stretchlim(img), [lo hi])``: each channel's 1st..99th percentile mapped linearly onto
    [lo, hi] (values beyond them clipped), so the stronger levels squeeze the whole photo towards mid-grey.
    A channel without spread keeps [0, 1] as its input range, as stretchlim does."""
    lo, hi = _CONTRAST_RANGE[level - 1]
    x = img / 255.0
    low = np.percentile(x.reshape(-1, 3), 1, axis=0)
    high = np.percentile(x.reshape(-1, 3), 99, axis=0)
    flat = high <= low
    low, high = np.where(flat, 0.0, low), np.where(flat, 1.0, high)
    t = np.clip((x - low) / (high - low), 0.0, 1.0)
    return _to_uint8(255.0 * (lo + (hi - lo) * t))


def _pink_field(rng: np.random.Generator, n: int = 512) -> np.ndarray:
    """An n x n field of 1/f noise (amplitude falling as 1/|k|, no DC), scaled to a maximum magnitude of 1."""
    k = np.fft.fftfreq(n) * n
    radius = np.hypot(k[:, None], k[None, :])
    radius[0, 0] = np.inf  # no DC
    field = np.real(np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) / radius))
    return field / np.abs(field).max()


def pink_noise(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """One 512 x 512 1/f field per channel, resized to the image (bicubic), times 255 w, added, floored."""
    from PIL import Image

    h, w = img.shape[:2]
    noise = np.stack([np.asarray(Image.fromarray(_pink_field(rng).astype(np.float32), mode="F")
                                 .resize((w, h), Image.Resampling.BICUBIC)) for _ in range(3)], axis=-1)
    return np.clip(np.floor(img + _PINK_WEIGHT[level - 1] * 255.0 * noise), 0, 255).astype(np.uint8)


def colour_quantization(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """``rgb2ind(img, n)``: n colours with Floyd-Steinberg dithering. Pillow's median cut stands in for
    MATLAB's minimum-variance quantizer (both split the colour cube into n boxes)."""
    from PIL import Image

    pal = Image.fromarray(img).quantize(colors=_DITHER_COLOURS[level - 1], method=Image.Quantize.MEDIANCUT,
                                        dither=Image.Dither.FLOYDSTEINBERG)
    return np.asarray(pal.convert("RGB"))


def overexposure(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Every value raised by a constant on the [0, 1] scale (not in linear light), clipped at white."""
    return _to_uint8(255.0 * np.minimum(1.0, img / 255.0 + _EXPOSURE_SHIFT[level - 1]))


def underexposure(img: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Every value lowered by the same constants, clipped at black."""
    return _to_uint8(255.0 * np.maximum(0.0, img / 255.0 - _EXPOSURE_SHIFT[level - 1]))


Distortion = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

# name -> (function, the finding type of ours that names it, or None where we have no such type)
DISTORTIONS: dict[str, tuple[Distortion, str | None]] = {
    "gblur": (gaussian_blur, "blur"),
    "wn": (white_noise, "noise"),
    "jpeg": (jpeg, "jpeg"),
    "jp2k": (jpeg2000, None),  # blur and ringing together: no finding type of ours is that
    "contrast": (contrast_change, "low_contrast"),
    "pink_noise": (pink_noise, "noise"),
    "dither": (colour_quantization, None),  # few colours, dithered: neither banding nor noise
    "overexposure": (overexposure, "overexposure"),
    "underexposure": (underexposure, "underexposure"),
}


def apply(img: np.ndarray, kind: str, level: int, seed: int) -> np.ndarray:
    """Distortion ``kind`` at ``level`` (1..5) of an HxWx3 uint8 image; random ones are seeded by ``seed``."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level}")
    fn, _ = DISTORTIONS[kind]
    return fn(np.ascontiguousarray(img, dtype=np.uint8), level, np.random.default_rng(seed))
