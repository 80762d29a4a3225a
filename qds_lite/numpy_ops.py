"""Every operation of the critic in plain NumPy: the readable specification the other backends match.

Layouts follow PyTorch (NCHW activations without the batch axis, i.e. (C, H, W); conv weights
(out, in/groups, kh, kw); linear weights (out, in)). All maths in float32.
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def relu6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0, out=x)


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


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


def cell_mean(x: np.ndarray, cell: int) -> np.ndarray:
    """Mean over non-overlapping cell x cell windows: (C, H, W) -> (C, H/cell, W/cell)."""
    c, h, w = x.shape
    return x.reshape(c, h // cell, cell, w // cell, cell).mean(axis=(2, 4))


def cell_mean_std(x: np.ndarray, cell: int) -> list[np.ndarray]:
    """Mean and std over non-overlapping cell x cell windows: (C, H, W) -> 2 x (C, H/cell, W/cell)."""
    m = cell_mean(x, cell)
    v = np.maximum(cell_mean(x * x, cell) - m * m, 0.0)
    return [m, np.sqrt(v + 1e-6)]


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
