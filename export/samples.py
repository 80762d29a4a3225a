"""Training samples: a pristine photo, randomly framed and degraded, with everything the oracle needs.

Building is the slow part of training, so its output is cached on disk as .npz shards (one per
worker): the pooled trunk features of the glance and of zooms on ORACLE_CELLS + RANDOM_CELLS cells (the oracle's top
cells by full-reference damage, then random others so the reasoner also learns from zooms that missed),
the activation entering the fine-tunable trunk blocks for the same views (kernels.model.FINETUNE_FROM),
the full-reference damage per cell, per-cell texture, and the degradations applied. Features come
from the trunk's fp32 ONNX graph (same maths as kernels.model.trunk_features, checked to ~2e-6, and
4x faster than torch here).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from export import synth
from export.data import pristine_photos
from qds_lite import protocol
from qds_lite.io import glance_view, zoom_window

KIND_NAMES = tuple(synth.KINDS)
MAX_DEGS = 3
ORACLE_CELLS, RANDOM_CELLS = 4, 2  # zooms cached per sample


# Optional scene colour jitter of the clean photo before it is degraded (export.build --colour-jitter DEG):
# hue turned by up to DEG degrees, saturation scaled by SATURATION^U(-1, 1). Neither moves a neutral grey,
# which a white-balance error (synth.color_cast) does. Off by default: on dev it named findings better and
# ranked worse, colour casts most of all (README, *Training the critic*).
SATURATION = 1.3
_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)


def jitter_colour(rgb: np.ndarray, rng: np.random.Generator, hue_deg: float) -> np.ndarray:
    """Rotate the chroma of an HxWx3 uint8 photo in YCbCr (BT.601) by U(-hue_deg, hue_deg) degrees and
    scale it by SATURATION^U(-1, 1); luma unchanged."""
    angle = np.deg2rad(rng.uniform(-hue_deg, hue_deg))
    gain = SATURATION ** rng.uniform(-1.0, 1.0)
    c, s = np.cos(angle) * gain, np.sin(angle) * gain
    turn = np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)
    m = np.linalg.inv(_YCC) @ turn @ _YCC  # one 3x3 map in RGB: back from YCbCr after the chroma turn
    out = rgb.astype(np.float32) @ m.T.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def frame(photo: np.ndarray, rng: np.random.Generator, colour_jitter: float = 0.0) -> np.ndarray:
    """Random scale (long side 384..1024 px, never upscaled), crop (70-100 % per side), flip, and with
    ``colour_jitter`` > 0 :func:`jitter_colour` by up to that many degrees of hue."""
    h, w = photo.shape[:2]
    long_side = rng.uniform(384, 1024)
    scale = min(1.0, long_side / max(h, w))
    img = Image.fromarray(photo)
    if scale < 1.0:
        img = img.resize((max(64, round(w * scale)), max(64, round(h * scale))), Image.LANCZOS)
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    ch, cw = int(h * rng.uniform(0.7, 1.0)), int(w * rng.uniform(0.7, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    arr = arr[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    return jitter_colour(arr, rng, colour_jitter) if colour_jitter else np.ascontiguousarray(arr)


def zoom_order(damage: np.ndarray, texture: np.ndarray) -> list[int]:
    """The oracle's zoom preference: most full-reference damage first; texture breaks ties, so a clean
    photo is inspected where blur or noise would show."""
    score = damage.ravel() + 1e-3 * texture.ravel() / (texture.max() + 1e-6)
    return [int(c) for c in np.argsort(-score, kind="stable")]


def cell_texture(rgb: np.ndarray) -> np.ndarray:
    """Mean gradient magnitude of luma per grid cell: where blur and noise would show."""
    y = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    g = np.abs(np.diff(y, axis=0))[:, :-1] + np.abs(np.diff(y, axis=1))[:-1, :]
    h, w = g.shape
    out = np.zeros((protocol.GRID, protocol.GRID), np.float32)
    for r in range(protocol.GRID):
        for c in range(protocol.GRID):
            rows = slice(r * h // protocol.GRID, (r + 1) * h // protocol.GRID)
            cell = g[rows, c * w // protocol.GRID:(c + 1) * w // protocol.GRID]
            out[r, c] = cell.mean() if cell.size else 0.0
    return out


def to_nchw(views: list[np.ndarray]) -> np.ndarray:
    return np.stack(views).astype(np.float32).transpose(0, 3, 1, 2) / 255.0


class TrunkRunner:
    """The trunk's fp32 ONNX graph in onnxruntime, one thread (one runner per worker process)."""

    def __init__(self, onnx_path: str) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

    def __call__(self, views: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """-> pooled features (N, cells, F) and the fine-tunable blocks' input (N, C, h, w), both float16."""
        features, finetune_input = self.session.run(None, {"pixels": to_nchw(views)})
        return features.astype(np.float16), finetune_input.astype(np.float16)


def make_sample(photo: np.ndarray, rng: np.random.Generator, trunk: TrunkRunner, p_clean: float,
                colour_jitter: float = 0.0) -> dict:
    clean = frame(photo, rng, colour_jitter)
    degs = synth.sample(rng, max_degradations=2, p_clean=p_clean)
    degraded = synth.apply(clean, degs)
    damage = synth.full_reference_damage(clean, degraded)
    texture = cell_texture(clean)
    order = zoom_order(damage, texture)
    cells = order[:ORACLE_CELLS] + list(rng.choice(order[ORACLE_CELLS:], RANDOM_CELLS, replace=False))
    zooms = [zoom_window(degraded, c)[0] for c in cells]
    kinds = np.full(MAX_DEGS, -1, np.int8)
    sev = np.zeros(MAX_DEGS, np.float32)
    region = np.full((MAX_DEGS, 4), -1, np.int8)
    for i, d in enumerate(degs):
        kinds[i], sev[i] = KIND_NAMES.index(d.kind), d.severity
        if d.region is not None:
            region[i] = d.region
    glance, glance_map = trunk([glance_view(degraded)])
    zoom_feats, zoom_maps = trunk(zooms)
    return {
        "glance": glance[0], "zooms": zoom_feats, "glance_map": glance_map[0], "zoom_maps": zoom_maps,
        "zoom_cells": np.array(cells, np.int8),
        "damage": damage, "texture": texture,
        "kinds": kinds, "severity": sev, "region": region,
        "size": np.array(degraded.shape[:2], np.int32),
    }


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from any values, the same in every process and run (``hash()`` is salted)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def build_shard(args: tuple[list[str], int, int, str, str, float, float]) -> str:
    photos, variants, seed, trunk_path, out, p_clean, colour_jitter = args
    trunk = TrunkRunner(trunk_path)
    rows: dict[str, list] = {}
    for path in photos:
        photo = np.asarray(Image.open(path).convert("RGB"))
        for v in range(variants):
            rng = np.random.default_rng(stable_seed(seed, Path(path).name, v))
            s = make_sample(photo, rng, trunk, p_clean, colour_jitter)
            s["photo"] = np.int32(stable_seed(path) % 2**31)
            for k, val in s.items():
                rows.setdefault(k, []).append(val)
    np.savez(out, **{k: np.stack(v) for k, v in rows.items()})
    return out


def build(split: str, variants: int, out_dir: Path, trunk_path: str, seed: int = 0, workers: int = 2,
          p_clean: float = 0.12, colour_jitter: float = 0.0) -> list[Path]:
    """Build (or reuse) the cached shards of one split; returns their paths."""
    photos = [str(p) for p in pristine_photos(split)]
    out_dir.mkdir(parents=True, exist_ok=True)
    trunk_sha = hashlib.sha256(Path(trunk_path).read_bytes()).hexdigest()  # features change with the trunk
    jitter = [colour_jitter, SATURATION] if colour_jitter else []  # without it, the keys of older caches
    key = hashlib.sha256(json.dumps([photos, variants, seed, p_clean, KIND_NAMES, trunk_sha, *jitter]).encode()
                         ).hexdigest()[:12]
    n_shards = max(workers, len(photos) // 10)
    jobs = [(photos[i::n_shards], variants, seed, trunk_path, str(out_dir / f"{split}-{key}-{i:03d}.npz"), p_clean,
             colour_jitter)
            for i in range(n_shards)]
    todo = [j for j in jobs if not Path(j[4]).exists()]
    t0 = time.time()
    with ProcessPoolExecutor(workers) as pool:
        for done, out in enumerate(pool.map(build_shard, todo), start=1):
            print(f"[{split}] shard {done}/{len(todo)} {Path(out).name} ({time.time() - t0:.0f} s)", flush=True)
    return [Path(j[4]) for j in jobs]


def load_shards(paths: list[Path]) -> dict[str, np.ndarray]:
    parts = [dict(np.load(p, allow_pickle=False)) for p in paths]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--split", default="train")
    ap.add_argument("--variants", type=int, default=40)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trunk", required=True)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    build(a.split, a.variants, a.out, a.trunk, workers=a.workers)


if __name__ == "__main__":
    main()
