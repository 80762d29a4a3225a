"""`qds bench`: speed of the critic on this machine, as ratios against baselines measured in the same run.

For each available backend: model time per image (glance + zooms, decoding excluded), and the whole
`score` call against decoding the same file with Pillow alone. Accuracy benchmarks live in
benchmarks/ in the source tree (they need the pristine photos and the classical baselines).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from PIL import Image

from . import available_backends, load
from .io import load_image

WARMUP = 3  # untimed calls first: a process's first model runs are slower while onnxruntime's memory grows


def _median_ms(fn, repeat: int) -> float:
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def pillow_decode(path: Path) -> None:
    with Image.open(path) as im:
        im.load()


def run(image: Path, repeat: int = 10, threads: int | None = None) -> list[dict]:
    """Rows of {what, ms, vs_decode[, vs_onnx_model]}; the first row is the Pillow baseline."""
    decode_ms = _median_ms(lambda: pillow_decode(image), repeat)
    rows = [{"what": "Pillow decode only", "ms": decode_ms}]
    loaded = load_image(image)
    model_rows = {}
    for name in available_backends():
        critic = load(backend=name, threads=threads)
        model_ms = _median_ms(lambda c=critic: c.score(loaded), repeat)
        total_ms = _median_ms(lambda c=critic: c.score(image), repeat)
        model_rows[name] = {"what": f"{name}: model (glance + zooms)", "ms": model_ms}
        rows += [model_rows[name], {"what": f"{name}: decode + model", "ms": total_ms}]
    for r in rows:
        r["vs_decode"] = r["ms"] / decode_ms
    if "onnx" in model_rows:
        for r in model_rows.values():
            r["vs_onnx_model"] = r["ms"] / model_rows["onnx"]["ms"]
    return rows
