"""Triage throughput: `qds triage` on a folder of 12 MP JPEGs against decoding the same files with Pillow.

    python -m benchmarks.triage [--photos N] [--workers W] [--repeat R] [--out build/bench]

Measured in one run, round-robin, whole processes (start-up included on both sides):

(a) Pillow alone: a process that decodes every file fully (``Image.open(f).load()``) in a pool of W worker
    processes, the floor for any tool that must look at the pixels;
(b) ``qds triage DIR --workers W --no-xmp --cache FRESH``: the first run of a shoot (nothing cached);
(c) the same command again on the unchanged folder (everything cached);
(d) ``qds triage DIR --zooms 0 ...`` with a fresh cache: the glance alone, from a JPEG decoded at 1/8 scale.

Reported: images/s of each, (b)/(a) (the bar: >= 0.8) and (d)/(a), (b) wall / (c) wall (the bar: >= 20), and the peak
RSS of the largest process of each run (``RUSAGE_CHILDREN``: the parent or one worker). The folder is made
deterministically from the held-out test photos (then their mirror images), each centre-cropped to 4:3 and
upscaled to 4000x3000 (JPEG q92), as in benchmarks.speed, and qds_lite's bytecode is written first, as an
install does (``benchmarks.speed.byte_compile_qds``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.speed import byte_compile_qds, upscaled_jpeg

DEFAULT_OUT = Path("build") / "bench"
_WRAP = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)
wall = time.perf_counter() - t
print(json.dumps({"wall_s": wall, "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "rc": rc}))
"""


def _decode(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
    return 1


def pillow_baseline(folder: Path, workers: int) -> None:
    """Decode every JPEG in ``folder`` fully with a pool of ``workers`` processes (what (a) runs)."""
    from multiprocessing import get_context

    files = sorted(folder.glob("*.jpg"))
    with get_context("spawn").Pool(workers) as pool:
        if sum(pool.imap_unordered(_decode, files)) != len(files):
            raise SystemExit("pillow baseline: some files did not decode")


def make_shoot(folder: Path, n: int) -> list[Path]:
    from export.data import pristine_photos

    photos = sorted(pristine_photos("test"))
    files = []
    for i in range(n):  # past the held-out photos, their mirror images (distinct content for the cache)
        src, mirror = photos[i % len(photos)], (i // len(photos)) % 2 == 1
        path = folder / f"{i:03d}_{src.stem}{'_m' if mirror else ''}.jpg"
        files.append(path if path.is_file() else upscaled_jpeg(src, path, mirror=mirror))
    return files


def measure(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _WRAP, *cmd], capture_output=True, text=True, check=True)
    doc = json.loads(out.stdout)
    if doc["rc"] != 0:
        raise SystemExit(f"benchmark command failed ({doc['rc']}): {' '.join(cmd)}")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=int, default=80)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--pillow-baseline", type=Path, default=None, help=argparse.SUPPRESS)  # run (a) only
    a = ap.parse_args()
    if a.pillow_baseline:
        return pillow_baseline(a.pillow_baseline, a.workers)
    shoot = a.out / "triage_shoot"
    files = make_shoot(shoot, a.photos)
    n = len(files)
    rows: dict[str, list[dict]] = {"pillow": [], "first": [], "cached": [], "glance": []}
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        triage = [sys.executable, "-m", "qds_lite", "triage", str(shoot), "--workers", str(a.workers), "--no-xmp",
                  "--quiet"]
        pillow = [sys.executable, "-m", "benchmarks.triage", "--pillow-baseline", str(shoot), "--workers",
                  str(a.workers)]
        byte_compile_qds()
        measure(pillow)  # warm the disk cache
        for r in range(a.repeat):
            cache = Path(tmp) / f"run{r}.sqlite3"
            rows["pillow"].append(measure(pillow))
            rows["first"].append(measure([*triage, "--cache", str(cache)]))
            rows["cached"].append(measure([*triage, "--cache", str(cache)]))
            rows["glance"].append(measure([*triage, "--zooms", "0", "--cache", str(Path(tmp) / f"glance{r}.sqlite3")]))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]['wall_s']:.2f} s" for k, v in rows.items()),
                  file=sys.stderr)
    wall = {k: statistics.median(x["wall_s"] for x in v) for k, v in rows.items()}
    rss = {k: max(x["maxrss_kb"] for x in v) / 1024 for k, v in rows.items()}
    result = {
        "photos": n, "size": "4000x3000 JPEG q92", "workers": a.workers, "repeat": a.repeat,
        "wall_s": wall, "images_per_s": {k: n / w for k, w in wall.items()}, "peak_rss_mb": rss,
        "triage_vs_pillow": wall["pillow"] / wall["first"], "first_vs_cached": wall["first"] / wall["cached"],
        "glance_vs_pillow": wall["pillow"] / wall["glance"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load": [load0, os.getloadavg()]},
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": f"python -m benchmarks.triage --photos {a.photos} --workers {a.workers} --repeat {a.repeat}",
    }
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "triage.json").write_text(json.dumps(result, indent=1) + "\n")
    md = "\n".join([
        "<!-- produced by benchmarks/triage.py; do not edit by hand -->",
        f"{n} photos ({result['size']}), {a.workers} workers, median of {a.repeat}; all rows from the same run.",
        "", "```", result["command"], "```", "",
        "| whole process | median s | images/s | peak RSS MB (largest process) |", "|---|---:|---:|---:|",
        *(f"| {label} | {wall[k]:.2f} | {n / wall[k]:.1f} | {rss[k]:.0f} |" for k, label in (
            ("pillow", "Pillow decode only (same files, same workers)"), ("first", "qds triage, first run"),
            ("cached", "qds triage, second run (nothing changed)"),
            ("glance", "qds triage --zooms 0 (the glance alone, draft decode), first run"))),
        "", f"triage / Pillow throughput: **{result['triage_vs_pillow']:.2f}x** (bar >= 0.8); "
        f"first / second run: **{result['first_vs_cached']:.1f}x** (bar >= 20); "
        f"`--zooms 0` / Pillow: **{result['glance_vs_pillow']:.2f}x**.", "",
        f"_{result['date']}, {result['machine']['platform']}, {result['machine']['cpus']} CPUs, load {load0}._", ""])
    (a.out / "triage.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
