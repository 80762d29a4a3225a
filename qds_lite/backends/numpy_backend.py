"""The NumPy backend: every operation written out in qds_lite.numpy_ops; no engine needed."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .. import numpy_ops as ops
from ..model_store import ModelFiles


class NumpyEncoder:
    """MobileNetV2 trunk -> cell pooling and scene statistics, as in kernels.model.trunk_features."""

    def __init__(self, cfg: dict, w: Mapping[str, np.ndarray]) -> None:
        self.blocks = [tuple(b) for b in cfg["encoder_blocks"]]
        self.taps = dict(zip(cfg["tap_blocks"], cfg["tap_cells"]))
        self.pixel_cell, self.clip, self.luma = cfg["pixel_cell"], cfg["clip"], cfg["luma"]
        self.nss = ops.NSSConstants.from_config(cfg["nss"])
        self.w = w

    def __call__(self, view: np.ndarray) -> np.ndarray:
        w = self.w
        pixels = np.ascontiguousarray((view.astype(np.float32) / np.float32(255.0)).transpose(2, 0, 1))
        x = (pixels - ops.IMAGENET_MEAN[:, None, None]) / ops.IMAGENET_STD[:, None, None]
        x = ops.relu6(ops.conv3x3(x, w["enc.conv0.w"], w["enc.conv0.b"], 2))
        pooled = []
        for i, (cin, cout, t, s) in enumerate(self.blocks, start=1):
            h = x
            if t != 1:
                h = ops.relu6(ops.conv1x1(h, w[f"enc.b{i}.expand.w"], w[f"enc.b{i}.expand.b"]))
            h = ops.relu6(ops.depthwise3x3(h, w[f"enc.b{i}.dw.w"], w[f"enc.b{i}.dw.b"], s))
            h = ops.conv1x1(h, w[f"enc.b{i}.project.w"], w[f"enc.b{i}.project.b"])
            x = x + h if (s == 1 and cin == cout) else h
            if i in self.taps:
                pooled += ops.cell_mean_std(x, self.taps[i])
        pooled += ops.cell_mean_std(pixels, self.pixel_cell)
        luma = np.tensordot(np.asarray(self.luma, np.float32), pixels, axes=1)[None]
        pooled += [ops.cell_mean((luma >= self.clip[0]).astype(np.float32), self.pixel_cell),
                   ops.cell_mean((luma <= self.clip[1]).astype(np.float32), self.pixel_cell),
                   ops.scene_statistics(pixels, luma[0], self.pixel_cell, self.nss)]
        f = np.concatenate(pooled, axis=0)  # (feat_dim, gh, gw)
        return f.reshape(f.shape[0], -1).T  # (cells, feat_dim), cells row-major


class NumpySession:
    """Incremental decoding with a key/value cache."""

    def __init__(self, cfg: dict, w: Mapping[str, np.ndarray]) -> None:
        self.cfg, self.w = cfg, w
        self.cache: list[tuple[np.ndarray, np.ndarray]] = []
        self.pos = 0

    def step(self, embeddings: np.ndarray) -> np.ndarray:
        cfg, w = self.cfg, self.w
        heads, eps = cfg["n_heads"], cfg["rms_eps"]
        x = embeddings.astype(np.float32)
        n, d = x.shape
        positions = np.arange(self.pos, self.pos + n)
        for li in range(cfg["n_layers"]):
            h = ops.rms_norm(x, w[f"dec.{li}.attn_norm"], eps)
            q, k, v = ((h @ w[f"dec.{li}.w{c}"].T).reshape(n, heads, -1) for c in "qkv")
            q, k = ops.rope(q, positions, cfg["rope_theta"]), ops.rope(k, positions, cfg["rope_theta"])
            if li < len(self.cache):
                k = np.concatenate([self.cache[li][0], k])
                v = np.concatenate([self.cache[li][1], v])
                self.cache[li] = (k, v)
            else:
                self.cache.append((k, v))
            o = ops.attention(q, k, v, self.pos).reshape(n, d)
            x = x + o @ w[f"dec.{li}.wo"].T
            h = ops.rms_norm(x, w[f"dec.{li}.ffn_norm"], eps)
            x = x + (ops.silu(h @ w[f"dec.{li}.w_gate"].T) * (h @ w[f"dec.{li}.w_up"].T)) @ w[f"dec.{li}.w_down"].T
        self.pos += n
        last = ops.rms_norm(x[-1], w["dec.out_norm"], eps)
        return (w["dec.output"] @ last).astype(np.float32)


class NumpyBackend:
    name = "numpy"

    def __init__(self, files: ModelFiles, weights: Mapping[str, np.ndarray]) -> None:
        self.cfg = files.config
        self.w = weights
        self.encode = NumpyEncoder(self.cfg, weights)

    def start(self) -> NumpySession:
        return NumpySession(self.cfg, self.w)
