"""Every operation of the critic in plain NumPy: the readable specification the other backends match.

Layouts follow PyTorch (NCHW activations without the batch axis, i.e. (C, H, W); conv weights
(out, in/groups, kh, kw); linear weights (out, in)). All maths in float32.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclass(frozen=True)
class NSSConstants:
    """The natural-scene-statistics constants a model was trained with (its config's ``nss`` entry)."""

    window: np.ndarray  # the separable Gaussian window
    c: np.float32  # MSCN stabiliser
    flat: np.float32  # local std that reads as flat
    still: np.float32  # neighbour difference that reads as no change
    block: int  # JPEG block size

    @classmethod
    def from_config(cls, cfg: dict) -> NSSConstants:
        return cls(gaussian_window(cfg["taps"], cfg["sigma"]), np.float32(cfg["c"]), np.float32(cfg["flat"]),
                   np.float32(cfg["still"]), int(cfg["block"]))


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0, out=x)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def mlp(w: Mapping[str, np.ndarray], prefix: str, x: np.ndarray) -> np.ndarray:
    """Two-layer SiLU MLP ``{prefix}.w1/b1/w2/b2`` over the last axis (kernels.model.mlp)."""
    h = silu(x @ w[f"{prefix}.w1"].T + w[f"{prefix}.b1"])
    return (h @ w[f"{prefix}.w2"].T + w[f"{prefix}.b2"]).astype(np.float32)


def conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pointwise convolution as one matrix product: (C, H, W) -> (O, H, W)."""
    c, h, wd = x.shape
    return (w.reshape(w.shape[0], c) @ x.reshape(c, h * wd) + b[:, None]).reshape(-1, h, wd)


def _pad1(x: np.ndarray) -> np.ndarray:
    return np.pad(x, ((0, 0), (1, 1), (1, 1)))


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Dense 3x3 convolution, padding 1, via im2col: (C, H, W) -> (O, H', W')."""
    c, h, wd = x.shape
    xp = _pad1(x)
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    cols = np.empty((c, 3, 3, ho, wo), np.float32)
    for i in range(3):
        for j in range(3):
            cols[:, i, j] = xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return (w.reshape(w.shape[0], -1) @ cols.reshape(c * 9, ho * wo) + b[:, None]).reshape(-1, ho, wo)


def depthwise3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Depthwise 3x3 convolution, padding 1: nine shifted multiply-adds, one per tap."""
    c, h, wd = x.shape
    xp = _pad1(x)
    ho, wo = (h - 1) // stride + 1, (wd - 1) // stride + 1
    out = np.broadcast_to(b[:, None, None], (c, ho, wo)).copy()
    for i in range(3):
        for j in range(3):
            out += w[:, 0, i, j][:, None, None] * xp[:, i:i + stride * ho:stride, j:j + stride * wo:stride]
    return out


def cell_mean(x: np.ndarray, ch: int, cw: int | None = None) -> np.ndarray:
    """Mean over non-overlapping ch x cw (default ch x ch) windows of the last two axes:
    (..., H, W) -> (..., H/ch, W/cw)."""
    cw = ch if cw is None else cw
    h, w = x.shape[-2:]
    return x.reshape(*x.shape[:-2], h // ch, ch, w // cw, cw).mean(axis=(-3, -1))


def cell_mean_std(x: np.ndarray, cell: int) -> list[np.ndarray]:
    """Mean and std over non-overlapping cell x cell windows: (..., H, W) -> 2 x (..., H/cell, W/cell)."""
    m = cell_mean(x, cell)
    v = np.maximum(cell_mean(x * x, cell) - m * m, 0.0)
    return [m, np.sqrt(v + 1e-6)]


def gaussian_window(taps: int, sigma: float) -> np.ndarray:
    x = np.arange(taps, dtype=np.float64) - taps // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return (g / g.sum()).astype(np.float32)


def local_mean(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable window ``g`` over (H, W), reflect-padded (the edge not repeated, as PyTorch's reflect)."""
    r = len(g) // 2
    xp = np.pad(x, r, mode="reflect")
    h, w = x.shape
    rows = sum(g[i] * xp[:, i:i + w] for i in range(len(g)))
    return sum(g[i] * rows[i:i + h] for i in range(len(g)))


def neighbour_products(m: np.ndarray) -> list[np.ndarray]:
    """m times its right, lower, lower-right and lower-left neighbour (zero beyond the border)."""
    z = np.pad(m, ((0, 1), (1, 1)))
    return [m * z[:-1, 2:], m * z[1:, 1:-1], m * z[1:, 2:], m * z[1:, :-2]]


def mscn_statistics(y: np.ndarray, cell: int, nss: NSSConstants) -> list[np.ndarray]:
    """kernels.model.mscn_statistics on one luma plane (H, W) -> 13 maps (gh, gw)."""
    d = y - local_mean(y, nss.window)
    var = local_mean(d * d, nss.window)  # local energy of the residual: no E[y^2] - mu^2 cancellation
    sigma = np.sqrt(var)
    m = d / (sigma + nss.c)
    out = [cell_mean(m * m, cell), cell_mean(np.abs(m), cell)]
    for p in neighbour_products(m):
        out += [cell_mean(p, cell), cell_mean(np.abs(p), cell)]
    out += cell_mean_std(sigma, cell)
    out.append(cell_mean(nss.flat ** 2 / (var + nss.flat ** 2), cell))
    return out


def block_contrast(col_means: np.ndarray, cell: int, nss: NSSConstants) -> np.ndarray:
    """(gh, W) column means of |differences| over each cell's rows -> (gh, gw): how far the strongest
    of the block's column phases stands above their mean (JPEG block edges, wherever the grid starts)."""
    gh = col_means.shape[0]
    phases = col_means.reshape(gh, -1, cell // nss.block, nss.block).mean(axis=2)
    mean = phases.mean(axis=-1)
    return (phases.max(axis=-1) - mean) / (mean + nss.c)


def scene_statistics(pixels: np.ndarray, luma: np.ndarray, cell: int, nss: NSSConstants) -> np.ndarray:
    """kernels.model.scene_statistics: pixels (3, H, W) and luma (H, W) in [0, 1] -> (33, gh, gw)."""
    h, w = luma.shape
    half = luma.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    feats = mscn_statistics(luma, cell, nss) + mscn_statistics(half, cell // 2, nss)
    r, _, b = pixels
    for chroma in (np.float32(0.564) * (b - luma), np.float32(0.713) * (r - luma)):
        detail = chroma - local_mean(chroma, nss.window)
        feats.append(np.sqrt(cell_mean(detail * detail, cell) + np.float32(1e-6)))
    dx = np.pad(luma[:, 1:] - luma[:, :-1], ((0, 0), (0, 1)))
    dy = np.pad(luma[1:] - luma[:-1], ((0, 1), (0, 0)))
    feats.append(block_contrast(cell_mean(np.abs(dx), cell, 1), cell, nss))
    feats.append(block_contrast(cell_mean(np.abs(dy), 1, cell).T, cell, nss).T)
    still = nss.still ** 2
    feats.append(cell_mean(still / (dx * dx + still) * still / (dy * dy + still), cell))
    jxx, jyy, jxy = (cell_mean(v, cell) for v in (dx * dx, dy * dy, dx * dy))
    energy = jxx + jyy
    feats.append(np.sqrt(energy + np.float32(1e-8)))
    feats.append(np.sqrt((jxx - jyy) ** 2 + 4 * jxy * jxy + np.float32(1e-12)) / (energy + np.float32(1e-6)))
    return np.stack(feats).astype(np.float32)


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope(x: np.ndarray, positions: np.ndarray, theta: float) -> np.ndarray:
    """Rotary embedding on (T, heads, head_dim), rotating adjacent pairs (llama.cpp's normal mode)."""
    hd = x.shape[-1]
    inv = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = positions[:, None].astype(np.float64) * inv[None, :]
    cos, sin = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, q_offset: int) -> np.ndarray:
    """Causal attention. q: (Tq, heads, hd) at positions q_offset.., k/v: (Tk, heads, hd) from 0.."""
    hd = q.shape[-1]
    scores = np.einsum("thd,shd->hts", q, k) / np.float32(np.sqrt(hd))
    tq, tk = q.shape[0], k.shape[0]
    future = np.arange(tk)[None, :] > (q_offset + np.arange(tq))[:, None]
    scores[:, future] = -np.inf
    return np.einsum("hts,shd->thd", softmax(scores), v)
