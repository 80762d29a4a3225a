"""Accuracy benchmark: the critic against known degradation severity, side by side with BRISQUE/NIQE/PIQE.

    python -m benchmarks.accuracy [--model M] [--backends onnx,numpy,gguf] [--photos N] [--levels 4]
                                  [--out build/bench] [--seed 0] [--threads T]

A held-out test in the Waterloo Exploration style is built from the TEST split of the pristine photos
(``export.data.pristine_photos("test")``, never trained on):

* each photo is loaded oriented (``qds_lite.io.load_image``) and downscaled with Pillow LANCZOS so that
  its long side is 768 px (photos already smaller are kept as they are: upscaling would itself blur);
* the *global* set: the pristine photo, plus every kind of ``export.synth.KINDS`` at every severity level
  (default 0.2, 0.4, 0.6, 0.8) applied to the whole image; one seed per (photo, kind), so changing the
  severity changes only the strength of the damage;
* the *local* set: per photo and kind one degradation of severity 0.6 on a random grid-aligned region of
  1x1 to 2x2 cells (seeded), for localisation.

Every image of the global set is scored by each requested critic backend and each available baseline
(the classical BRISQUE, NIQE, PIQE and the frozen-feature MobileNetV2+ridge, ``benchmarks.baselines``)
in the same run (the local set by the critic only), and the metrics below are computed with
scipy.stats. The metric functions at the top of this module are pure and cheap to import (the tests
use them); the heavy imports (the critic, the synthesizer, the baselines) happen inside :func:`run`.

Quality is "higher is better" for every method (baselines are sign-normalised by
``benchmarks.baselines.quality``); the target everywhere is ``-severity`` (pristine = severity 0).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import optimize, stats

DEFAULT_LEVELS = (0.2, 0.4, 0.6, 0.8)
LONG_SIDE = 768  # px, long side of every benchmark image (never upscaled)
LOCAL_SEVERITY = 0.6
D_TEST_MIN_SEVERITY = 0.4  # D-test: pristine vs images at least this damaged
P_TEST_MIN_GAP = 0.4  # P-test: pairs whose severities differ by at least this much
IOU_HIT = 0.5  # a finding box "hits" the damaged region at IoU >= this
TOL = 1e-6  # float slack for severity comparisons (0.6 - 0.2 == 0.39999999999999997)
DEFAULT_OUT = Path("build") / "bench"
CRITIC_PREFIX = "qds/"

# ------------------------------------------------------------------------------------------------
# Metric functions (pure; numpy/scipy only)


def _finite_pairs(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {x.shape} vs {y.shape}")
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def _correlation(fn, x: Sequence[float], y: Sequence[float]) -> float:
    """``fn`` (a scipy.stats correlation) of the finite pairs. NaN with fewer than 2 pairs; 0.0 when
    either side is constant (a method that gives every image the same score ranks nothing)."""
    x, y = _finite_pairs(x, y)
    if x.size < 2:
        return float("nan")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(fn(x, y).statistic)


def srcc(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (see :func:`_correlation` for the edge cases)."""
    return _correlation(stats.spearmanr, x, y)


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson linear correlation (see :func:`_correlation` for the edge cases)."""
    return _correlation(stats.pearsonr, x, y)


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The standard 4-parameter logistic of VQEG-style IQA evaluation:
    ``b2 + (b1 - b2) / (1 + exp(-(x - b3) / |b4|))``."""
    z = np.clip(-(np.asarray(x, dtype=np.float64) - b3) / (abs(b4) + 1e-12), -500.0, 500.0)
    return b2 + (b1 - b2) / (1.0 + np.exp(z))


def fit_logistic(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float, float] | None:
    """Least-squares fit of :func:`logistic4` mapping ``x`` onto ``y``; None when the fit fails.

    ``x`` is standardised before fitting (the logistic family is invariant to affine changes of ``x``,
    and the optimiser is not); the returned parameters are for the original ``x``."""
    x, y = _finite_pairs(x, y)
    if x.size < 5 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    mu, sd = float(x.mean()), float(x.std())
    z = (x - mu) / sd
    increasing = srcc(x, y) >= 0
    hi, lo = float(y.max()), float(y.min())
    p0 = [hi, lo, 0.0, 1.0] if increasing else [lo, hi, 0.0, 1.0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = optimize.curve_fit(logistic4, z, y, p0=p0, maxfev=20000)
    except (RuntimeError, ValueError, optimize.OptimizeWarning, FloatingPointError):
        return None
    if not np.all(np.isfinite(params)):
        return None
    b1, b2, b3, b4 = (float(v) for v in params)
    return (b1, b2, b3 * sd + mu, abs(b4) * sd)


def plcc_logistic(x: Sequence[float], y: Sequence[float]) -> tuple[float, bool]:
    """PLCC after the 4-parameter logistic fit: ``(plcc, fitted)``.

    The value is the Pearson correlation between ``logistic4(x)`` and ``y``, *signed*: negative when the
    best-fitting logistic decreases in ``x`` (the method ranks backwards), so it reads like SRCC. When
    the fit fails or is degenerate (flat), it falls back to the plain Pearson correlation of ``x`` and
    ``y`` and ``fitted`` is False."""
    xs, ys = _finite_pairs(x, y)
    if xs.size < 2:
        return float("nan"), False
    params = fit_logistic(xs, ys)
    if params is not None:
        pred = logistic4(xs, *params)
        if np.ptp(pred) > 1e-9 * max(1.0, float(np.abs(ys).max())):
            r = pearson(pred, ys)
            sign = 1.0 if params[0] >= params[1] else -1.0
            if math.isfinite(r):
                return sign * abs(r), True
    return pearson(xs, ys), False


def roc_auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC AUC of telling ``positive`` scores (should be higher) from ``negative`` ones: the
    Mann-Whitney probability that a random positive scores above a random negative, ties counting 1/2.
    1 = perfectly separated, 0.5 = chance, 0 = perfectly reversed. Non-finite scores are dropped."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    ranks = stats.rankdata(np.concatenate([pos, neg]))  # average ranks for ties
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


def pair_counts(severity: Sequence[float], quality: Sequence[float],
                min_gap: float = P_TEST_MIN_GAP) -> tuple[float, int]:
    """P-test counts within one group (one photo, one kind): over all pairs whose severities differ by at
    least ``min_gap``, ``(correct, pairs)`` where a pair is correct when the less damaged image has the
    higher quality; a tie counts 1/2. Pairs with a non-finite quality are left out."""
    q, s = _finite_pairs(quality, severity)
    correct, n = 0.0, 0
    for i in range(s.size):
        for j in range(i + 1, s.size):
            gap = s[j] - s[i]
            if abs(gap) < min_gap - TOL:
                continue
            n += 1
            better, worse = (i, j) if gap > 0 else (j, i)
            if q[better] > q[worse]:
                correct += 1.0
            elif q[better] == q[worse]:
                correct += 0.5
    return correct, n


def pair_accuracy(groups: Iterable[tuple[Sequence[float], Sequence[float]]], min_gap: float = P_TEST_MIN_GAP) -> float:
    """P-test accuracy pooled over groups of ``(severity, quality)``: correct pairs / all pairs."""
    correct, n = 0.0, 0
    for sev, q in groups:
        c, k = pair_counts(sev, q, min_gap)
        correct, n = correct + c, n + k
    return correct / n if n else float("nan")


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes (0 when they do not overlap)."""
    ax0, ay0, ax1, ay1 = (float(v) for v in a)
    bx0, by0, bx1, by1 = (float(v) for v in b)
    iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
    ih = max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def region_box(region: Sequence[int] | None, grid: int) -> tuple[float, float, float, float]:
    """Fractional box of a grid-cell region ``(col0, row0, col1, row1)`` (end-exclusive); None = whole."""
    if region is None:
        return (0.0, 0.0, 1.0, 1.0)
    c0, r0, c1, r1 = region
    return (c0 / grid, r0 / grid, c1 / grid, r1 / grid)


def top_finding(findings: Sequence[dict]) -> dict | None:
    """The most severe finding (the first one on a tie: the critic lists the most severe first)."""
    best = None
    for f in findings:
        if best is None or f["severity"] > best["severity"]:
            best = f
    return best


def zoomed_on(zooms: Sequence[Sequence[float]], box: Sequence[float]) -> bool:
    """Whether the centre of any zoom box (the cell the critic chose) lies inside ``box``."""
    return any(box[0] <= (z[0] + z[2]) / 2 < box[2] and box[1] <= (z[1] + z[3]) / 2 < box[3] for z in zooms)


def localisation(records: Sequence[dict], method: str, grid: int) -> dict:
    """Localisation figures of one critic method over local-set records (each with ``kind``, ``finding``
    (the expected finding type), ``region``, ``findings[method]`` = list of {type, severity, box} and
    ``zooms[method]`` = the boxes it zoomed into)."""
    type_hits, any_type, others, iou_hits, ious, zoom_hits = [], [], [], [], [], []
    for r in records:
        found = r["findings"][method]
        top = top_finding(found)
        type_hits.append(top is not None and top["type"] == r["finding"])
        any_type.append(any(f["type"] == r["finding"] for f in found))
        others.append(sum(f["type"] != r["finding"] for f in found))
        truth = region_box(r["region"], grid)
        best = max((box_iou(f["box"], truth) for f in found), default=0.0)
        ious.append(best)
        iou_hits.append(best >= IOU_HIT - TOL)
        zoom_hits.append(zoomed_on(r.get("zooms", {}).get(method, []), truth))
    n = len(records)
    if n == 0:
        return {"n": 0, "type_top1": float("nan"), "type_any": float("nan"), "other_types": float("nan"),
                "iou_hit": float("nan"), "mean_iou": float("nan"), "zoom_hit": float("nan")}
    return {"n": n, "type_top1": float(np.mean(type_hits)), "type_any": float(np.mean(any_type)),
            "other_types": float(np.mean(others)), "iou_hit": float(np.mean(iou_hits)),
            "mean_iou": float(np.mean(ious)), "zoom_hit": float(np.mean(zoom_hits))}


def clean_flagged(records: Sequence[dict], method: str) -> float:
    """Share of the pristine images (global set, no degradation) given at least one finding."""
    clean = [r for r in records if r["set"] == "global" and r["kind"] is None]
    return float(np.mean([bool(r["findings"][method]) for r in clean])) if clean else float("nan")


def whole_image_named(records: Sequence[dict], method: str) -> float:
    """Share of the globally degraded images (severity >= D_TEST_MIN_SEVERITY) among whose findings one names
    their degradation: the local set measures where, this whether a fault over the whole photo is named.
    Damage no finding type of ours names (``finding`` None) is left out."""
    damaged = [r for r in records if r["set"] == "global" and r["finding"] is not None
               and r["severity"] >= D_TEST_MIN_SEVERITY - TOL]
    hits = [any(f["type"] == r["finding"] for f in r["findings"][method]) for r in damaged]
    return float(np.mean(hits)) if hits else float("nan")


def by_severity(records: Iterable[dict], value: Callable[[dict], float]) -> dict[float, list[float]]:
    """``value`` of each record, grouped by severity (0 = pristine), in order of severity."""
    groups: dict[float, list[float]] = {}
    for r in records:
        groups.setdefault(round(float(r["severity"] or 0.0), 3), []).append(float(value(r)))
    return dict(sorted(groups.items()))


def score_by_severity(records: Sequence[dict], method: str) -> dict[float, float]:
    """Mean score of the globally degraded images at each severity level (0 = pristine): the critic's scale
    on unseen photos, to set against the one it is trained for (one whole-image defect of severity s scores
    about 100 (1 - s), ``export.oracle``)."""
    return {s: float(np.mean(v)) for s, v in by_severity(records, lambda r: r["scores"][method]).items()}


def model_files_sha256(manifest: dict) -> dict[str, str]:
    """The sha256 of each of a critic's files: what identifies its outputs (its manifest's own sha256 also
    changes when figures or a calibration are written into it)."""
    return {f["path"]: f["sha256"] for f in manifest["files"]}


def trained_for(record: dict) -> float:
    """The score the critic is trained to give a benchmark image (``export.oracle.quality``: one defect of
    severity s over a share a of the image scores 100 (1 - s a^0.4); pristine 100)."""
    from export.oracle import quality

    if not record["severity"]:
        return 100.0
    region = tuple(record["region"]) if record["region"] else None
    return 25.0 * (quality([(record["kind"], float(record["severity"]), region)]) - 1.0)


def scale_fit(records: Sequence[dict], method: str) -> dict:
    """How far the scores are from the scale the critic is trained for, over every image (global and local
    sets): mean absolute difference, share whose level word is the trained-for one, and the level words of
    the pristine images; and what ``qds triage`` would rate them in XMP with its defaults: the pristine
    images' stars, and how many images of each severity it would reject (-1)."""
    from qds_lite.protocol import LEVELS, level_of
    from qds_lite.xmp import rating_for

    scores = [float(r["scores"][method]) for r in records]
    targets = [trained_for(r) for r in records]
    pristine = [level_of(s) for s, r in zip(scores, records) if not r["severity"]]
    stars = [rating_for(s) for s, r in zip(scores, records) if not r["severity"]]
    rejected = by_severity((r for r in records if r["set"] == "global"),
                           lambda r: rating_for(float(r["scores"][method])) == -1)
    return {"mae": float(np.mean(np.abs(np.subtract(scores, targets)))),
            "level_match": float(np.mean([level_of(s) == level_of(t) for s, t in zip(scores, targets)])),
            "pristine_levels": {name: pristine.count(name) for name in reversed(LEVELS)},
            "pristine_stars": {str(k): stars.count(k) for k in (5, 4, 3, 2, 1, -1)},
            "rejected_by_severity": {f"{sev:g}": [int(sum(v)), len(v)] for sev, v in rejected.items()}}


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def severity_metrics(photo: Sequence, kind: Sequence, severity: Sequence[float], quality: Sequence[float],
                     kinds: Sequence[str]) -> dict:
    """All severity-ranking metrics of one method on the global set.

    ``photo``/``kind``/``severity``/``quality`` are parallel per-image arrays; pristine images have kind
    None (or "") and severity 0 and take part in every kind's figures."""
    photo = np.asarray(photo, dtype=object)
    kind = np.asarray([k or "" for k in kind], dtype=object)
    sev = np.asarray(severity, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    target = -sev
    pristine = kind == ""
    photos = list(dict.fromkeys(photo.tolist()))

    per_kind = {}
    for k in kinds:
        m = pristine | (kind == k)
        plcc_k, fitted_k = plcc_logistic(q[m], target[m])
        within = [srcc(q[m & (photo == p)], target[m & (photo == p)]) for p in photos]
        dmask = (kind == k) & (sev >= D_TEST_MIN_SEVERITY - TOL)
        groups = [(sev[m & (photo == p)], q[m & (photo == p)]) for p in photos]
        per_kind[k] = {
            "srcc": srcc(q[m], target[m]), "plcc": plcc_k, "plcc_fitted": fitted_k,
            "l_srcc": _nanmean(within), "d_auc": roc_auc(q[pristine], q[dmask]),
            "p_acc": pair_accuracy(groups), "n": int(m.sum()),
        }
    plcc_all, fitted_all = plcc_logistic(q, target)
    kind_groups = [(sev[(pristine | (kind == k)) & (photo == p)], q[(pristine | (kind == k)) & (photo == p)])
                   for k in kinds for p in photos]
    summary = {
        "srcc": srcc(q, target),
        "plcc": plcc_all, "plcc_fitted": fitted_all,
        "srcc_kind_mean": _nanmean(v["srcc"] for v in per_kind.values()),
        "plcc_kind_mean": _nanmean(v["plcc"] for v in per_kind.values()),
        "l_srcc": _nanmean(v["l_srcc"] for v in per_kind.values()),
        "d_auc": roc_auc(q[pristine], q[~pristine & (sev >= D_TEST_MIN_SEVERITY - TOL)]),
        "p_acc": pair_accuracy(kind_groups),
        "cross_srcc": _nanmean(srcc(q[photo == p], target[photo == p]) for p in photos),
        "n": int(q.size), "n_failed": int((~np.isfinite(q)).sum()),
    }
    return {"summary": summary, "per_kind": per_kind}


def backend_gap(scores: dict[str, np.ndarray], reference: str = "numpy") -> dict:
    """Score differences of every other critic backend against ``reference`` on the same images."""
    out = {}
    if reference not in scores:
        return out
    ref = np.asarray(scores[reference], dtype=np.float64)
    for name, s in scores.items():
        if name == reference:
            continue
        d = np.abs(np.asarray(s, dtype=np.float64) - ref)
        d = d[np.isfinite(d)]
        out[name] = {"max_abs": float(d.max()) if d.size else float("nan"),
                     "mean_abs": float(d.mean()) if d.size else float("nan"),
                     "share_over_1": float((d > 1.0).mean()) if d.size else float("nan"), "n": int(d.size)}
    return out


def parse_levels(text: str) -> tuple[float, ...]:
    """``"4"`` -> 4 evenly spaced levels k/(n+1) (0.2, 0.4, 0.6, 0.8); ``"0.3,0.7"`` -> those levels."""
    text = text.strip()
    if "," in text or "." in text:
        levels = tuple(float(v) for v in text.split(",") if v.strip())
    else:
        n = int(text)
        if n < 1:
            raise ValueError("need at least one severity level")
        levels = tuple(round(k / (n + 1), 4) for k in range(1, n + 1))
    if not levels or any(not 0.0 < v <= 1.0 for v in levels):
        raise ValueError(f"severity levels must be in (0, 1]: {text!r}")
    return tuple(sorted(set(levels)))


# ------------------------------------------------------------------------------------------------
# The test set


@dataclass(frozen=True)
class Item:
    photo: str  # photo path relative to the pristine root
    kind: str | None  # synth kind; None = the pristine image
    severity: float
    region: tuple[int, int, int, int] | None  # grid cells, end-exclusive; None = global
    seed: int
    set: str  # "global" or "local"


def _stable_int(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:4], "big")


def random_region(rng: np.random.Generator, grid: int) -> tuple[int, int, int, int]:
    """A grid-aligned rectangle of 1x1 to 2x2 cells, uniformly sized and placed."""
    w, h = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    c0, r0 = int(rng.integers(0, grid - w + 1)), int(rng.integers(0, grid - h + 1))
    return (c0, r0, c0 + w, r0 + h)


def build_items(photo: str, kinds: Sequence[str], levels: Sequence[float], seed: int, grid: int,
                local_per_kind: int = 1) -> list[Item]:
    """The global and local items of one photo (deterministic in the photo's name and ``seed``); the first
    local item of each kind is the same whatever ``local_per_kind``."""
    items = [Item(photo, None, 0.0, None, 0, "global")]
    for k in kinds:
        s = _stable_int("qds-accuracy", seed, photo, k)
        items += [Item(photo, k, float(v), None, s, "global") for v in levels]
    for k in kinds:
        for j in range(local_per_kind):
            s = _stable_int("qds-accuracy-local", seed, photo, k, *([j] if j else []))
            region = random_region(np.random.default_rng(s), grid)
            items.append(Item(photo, k, LOCAL_SEVERITY, region, s, "local"))
    return items


def pick_photos(photos: Sequence[Path], n: int | None) -> list[Path]:
    """``n`` photos spread evenly over the sorted list (all of them when n is None or too large)."""
    if n is None or n >= len(photos):
        return list(photos)
    idx = sorted({int(round(i)) for i in np.linspace(0, len(photos) - 1, max(1, n))})
    return [photos[i] for i in idx]


def prepare_photo(path: Path, long_side: int = LONG_SIDE) -> np.ndarray:
    """Oriented sRGB pixels, LANCZOS-downscaled so that the long side is ``long_side`` px (photos
    already smaller are returned as they are)."""
    from PIL import Image

    from qds_lite.io import load_image

    px = load_image(path).pixels
    h, w = px.shape[:2]
    if max(h, w) <= long_side:
        return np.ascontiguousarray(px)
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(px).resize(size, Image.Resampling.LANCZOS))


# ------------------------------------------------------------------------------------------------
# Progress


class _Progress:
    """tqdm on stderr when installed, else a counter line with elapsed time and ETA."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.n, self.t0, self.desc = total, 0, time.monotonic(), desc
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                            mininterval=0.5 if sys.stderr.isatty() else 5.0)
        except ImportError:
            self.bar = None

    def update(self, note: str = "") -> None:
        self.n += 1
        if self.bar is not None:
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.update(1)
            return
        el = time.monotonic() - self.t0
        eta = el / self.n * (self.total - self.n)
        sys.stderr.write(f"\r{self.desc}: {self.n}/{self.total}  {el:6.0f}s elapsed  ETA {eta:6.0f}s  {note[:40]:<40}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        else:
            sys.stderr.write("\n")


# ------------------------------------------------------------------------------------------------
# Running


def _finding_dicts(result) -> list[dict]:
    return [{"type": f.type, "severity": float(f.severity), "box": [float(v) for v in f.box]}
            for f in result.findings]


def _load_critics(model: str | None, names: Sequence[str], threads: int | None,
                  zooms: int | None = None) -> tuple[dict, dict, dict]:
    """One critic per backend that loads here, each with a budget of ``zooms`` (None: the default); (critics,
    skipped backends with reasons, model info). Raises QdsError when the model itself cannot be found or
    verified."""
    import qds_lite
    from qds_lite.model_store import resolve
    from qds_lite.protocol import DEFAULT_ZOOMS

    from . import variants

    files = resolve(model)  # model problems are fatal; backend problems only skip that backend
    zooms = DEFAULT_ZOOMS if zooms is None else zooms
    info = {"name": files.name, "root": str(files.root), "sha256": files.sha256,
            "version": files.manifest.get("version"), "files": model_files_sha256(files.manifest)}
    critics, skipped = {}, {}
    for name in names:
        try:
            critics[CRITIC_PREFIX + name] = (variants.load(name, model, threads, zooms=zooms)
                                             if name in variants.VARIANTS
                                             else qds_lite.load(model, backend=name, threads=threads, zooms=zooms))
        except Exception as e:  # noqa: BLE001  a missing or broken optional engine only drops that backend
            skipped[name] = f"{type(e).__name__}: {getattr(e, 'message', e)}"
            print(f"accuracy: skipping backend {name}: {skipped[name]}", file=sys.stderr)
    return critics, skipped, info


def score_all(photos: Sequence[Path], root: Path, critics: dict, baselines: Sequence, kinds: Sequence[str],
              levels: Sequence[float], seed: int, grid: int, local_per_kind: int = 1
              ) -> tuple[list[dict], list[dict], dict]:
    """Synthesize (``export.synth``) and score every image; returns (records, photo info, seconds per method)."""
    from export import synth

    def degrade(base: np.ndarray, it: Item) -> np.ndarray:
        return synth.apply(base, [synth.Degradation(it.kind, it.severity, it.region, it.seed)])

    plans = [(p, build_items(p.relative_to(root).as_posix(), kinds, levels, seed, grid, local_per_kind))
             for p in photos]
    return score_plans(plans, critics, baselines, degrade, lambda kind: synth.KINDS.get(kind or ""), grid, "accuracy")


def score_plans(plans: Sequence[tuple[Path, Sequence[Item]]], critics: dict, baselines: Sequence,
                degrade: Callable[[np.ndarray, Item], np.ndarray], finding_of: Callable[[str | None], str | None],
                grid: int, label: str) -> tuple[list[dict], list[dict], dict]:
    """Score the items of each photo (``degrade`` makes an item's image from the prepared photo; pristine items,
    kind None, are the photo itself) with every critic, and the global set with every baseline; each record
    names the finding type ``finding_of(kind)`` that should report its damage (None: no type of ours)."""
    from PIL import Image

    from qds_lite.io import load_image

    from .baselines import quality

    total = sum(len(items) for _, items in plans)
    progress = _Progress(total, label)
    seconds: dict[str, list[float]] = {m: [] for m in list(critics) + [b.name for b in baselines]}
    records, photo_info = [], []
    try:
        for path, items in plans:
            base = prepare_photo(path)
            with Image.open(path) as im:
                stored = list(im.size)
            photo_info.append({"file": items[0].photo, "stored_size": stored,
                               "bench_size": [int(base.shape[1]), int(base.shape[0])]})
            for it in items:
                img = base if it.kind is None else degrade(base, it)
                rec = {"photo": it.photo, "set": it.set, "kind": it.kind, "finding": finding_of(it.kind),
                       "severity": it.severity, "region": list(it.region) if it.region else None,
                       "seed": it.seed, "scores": {}, "findings": {}, "zooms": {}, "level_probs": {}, "cells": {},
                       "damage_penalty": {}}
                loaded = load_image(img)
                for name, critic in critics.items():
                    t = time.perf_counter()
                    r = critic.score(loaded)
                    seconds[name].append(time.perf_counter() - t)
                    rec["scores"][name] = float(r.score)
                    rec["findings"][name] = _finding_dicts(r)
                    rec["zooms"][name] = [[float(v) for v in st["box"]] for st in r.steps if st["tool"] == "zoom"]
                    rec["level_probs"][name] = [round(float(p), 5) for p in r.level_probs]
                    rec["damage_penalty"][name] = round(float(r.damage_penalty), 4)
                    if r.damage_map is not None:  # export.diagnosis chooses the grounding thresholds from these
                        rec["cells"][name] = np.round(r.damage_map.reshape(grid * grid, -1), 4).tolist()
                if it.set == "global":
                    for b in baselines:
                        t = time.perf_counter()
                        try:
                            v = float(quality(b, img))
                        except Exception:  # noqa: BLE001  e.g. BRISQUE on an image without contrast
                            v = float("nan")
                        seconds[b.name].append(time.perf_counter() - t)
                        rec["scores"][b.name] = v if math.isfinite(v) else float("nan")
                records.append(rec)
                progress.update(f"{Path(it.photo).name} {it.kind or 'pristine'}")
    finally:
        progress.close()
    per_image = {m: (float(np.mean(v)) if v else float("nan")) for m, v in seconds.items()}
    return records, photo_info, per_image


def compute(records: Sequence[dict], methods: Sequence[str], kinds: Sequence[str], grid: int,
            trained_scale: bool = True) -> dict:
    """Every metric of every method from the scored records; ``trained_scale``: also how far the critic's scores
    are from those it is trained to give (only for ``export.synth``'s kinds, whose trained-for score is known)."""
    glob = [r for r in records if r["set"] == "global"]
    local = [r for r in records if r["set"] == "local"]
    out = {}
    for m in methods:
        res = severity_metrics([r["photo"] for r in glob], [r["kind"] for r in glob], [r["severity"] for r in glob],
                               [r["scores"][m] for r in glob], kinds)
        if m.startswith(CRITIC_PREFIX):
            res["localisation"] = localisation(local, m, grid) | {"clean_flagged": clean_flagged(glob, m),
                                                                  "global_named": whole_image_named(glob, m)}
            res["score_by_severity"] = score_by_severity(glob, m)
            if trained_scale:
                res["scale"] = scale_fit(records, m)
            res["localisation_per_kind"] = {
                k: localisation([r for r in local if r["kind"] == k], m, grid)
                | {"global_named": whole_image_named([r for r in glob if r["kind"] == k], m)} for k in kinds}
        out[m] = res
    critic_scores = {m[len(CRITIC_PREFIX):]: np.array([r["scores"][m] for r in records])
                     for m in methods if m.startswith(CRITIC_PREFIX)}
    gap = backend_gap(critic_scores, "numpy")
    for name, g in gap.items():
        a, b = out[CRITIC_PREFIX + name], out[CRITIC_PREFIX + "numpy"]
        g["srcc_delta"] = a["summary"]["srcc"] - b["summary"]["srcc"]
        g["srcc_kind_max_abs_delta"] = float(max(abs(a["per_kind"][k]["srcc"] - b["per_kind"][k]["srcc"])
                                                 for k in kinds))
    return {"methods": out, "backend_gap": gap}


# ------------------------------------------------------------------------------------------------
# Reporting

SUMMARY_ROWS: tuple[tuple[str, str, str], ...] = (
    ("summary", "srcc", "SRCC, all images pooled"),
    ("summary", "plcc", "PLCC (logistic), all pooled"),
    ("summary", "srcc_kind_mean", "SRCC per kind, mean over kinds"),
    ("summary", "plcc_kind_mean", "PLCC per kind, mean over kinds"),
    ("summary", "l_srcc", "L-test: within-photo SRCC"),
    ("summary", "d_auc", f"D-test AUC (pristine vs sev>={D_TEST_MIN_SEVERITY})"),
    ("summary", "p_acc", f"P-test pair accuracy (gap>={P_TEST_MIN_GAP})"),
    ("summary", "cross_srcc", "cross-distortion SRCC per photo"),
    ("localisation", "type_top1", "finding type, top-1 accuracy"),
    ("localisation", "type_any", "finding type, any finding"),
    ("localisation", "other_types", "findings of another type per local image (lower is better)"),
    ("localisation", "iou_hit", f"finding box IoU>={IOU_HIT} share"),
    ("localisation", "mean_iou", "finding box, mean best IoU"),
    ("localisation", "zoom_hit", "a zoom lands on the local damage"),
    ("localisation", "clean_flagged", "pristine images given a finding (lower is better)"),
    ("localisation", "global_named", f"whole-image damage (sev>={D_TEST_MIN_SEVERITY}) named"),
)


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "n/a"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}"


def summary_rows(report: dict, methods: Sequence[str], seconds: dict,
                 which: Sequence[tuple[str, str, str]] = SUMMARY_ROWS) -> list[list[str]]:
    rows = []
    for section, key, label in which:
        row = [label]
        for m in methods:
            sec = report["methods"][m].get(section)
            row.append(_fmt(sec[key]) if sec is not None else "-")
        rows.append(row)
    rows.append(["seconds per image"] + [_fmt(seconds.get(m), 3) for m in methods])
    rows.append(["images scored / failed"] + [f"{report['methods'][m]['summary']['n']}"
                                               f"/{report['methods'][m]['summary']['n_failed']}" for m in methods])
    return rows


def per_kind_rows(report: dict, methods: Sequence[str], kinds: Sequence[str], key: str) -> list[list[str]]:
    return [[k] + [_fmt(report["methods"][m]["per_kind"][k][key]) for m in methods] for k in kinds]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in pairs)

    lines = [line(row) for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def gap_rows(gap: dict) -> list[list[str]]:
    return [[f"{CRITIC_PREFIX}{name} vs {CRITIC_PREFIX}numpy", _fmt(g["max_abs"], 2), _fmt(g["mean_abs"], 3),
             _fmt(g["share_over_1"], 3), f"{g['srcc_delta']:+.4f}", _fmt(g["srcc_kind_max_abs_delta"], 4)]
            for name, g in gap.items()]


GAP_HEADER = ("backend", "max abs score diff", "mean abs diff", "share > 1.0", "SRCC delta",
              "max per-kind SRCC delta")


def plot_per_kind(path: Path, report: dict, methods: Sequence[str], kinds: Sequence[str]) -> str:
    """Grouped bars of per-kind SRCC, one group per kind, one bar per method. Returns the engine used."""
    values = [[report["methods"][m]["per_kind"][k]["srcc"] for m in methods] for k in kinds]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_pillow(path, values, methods, kinds)
        return "pillow"
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(kinds) + 2), 4.5))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(kinds))]
        ax.bar(xs, [np.nan_to_num(v[j]) for v in values], width, label=m)
    ax.set_xticks(range(len(kinds)), kinds, rotation=40, ha="right")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylim(-1, 1)
    ax.set_ylabel("SRCC vs -severity")
    ax.set_title("Per-kind SRCC (pristine + global levels, pooled over photos)")
    ax.legend(fontsize=8, ncol=len(methods))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return "matplotlib"


_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127))


def _plot_pillow(path: Path, values, methods, kinds) -> None:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
        small = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1: bitmap font only
        font = small = ImageFont.load_default()
    group_w, left, right, top, bottom = 90, 70, 20, 60, 110
    plot_h = 360
    width = left + right + group_w * len(kinds)
    height = top + plot_h + bottom
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)

    def y_of(v: float) -> float:  # SRCC in [-1, 1] -> pixel row
        return top + (1.0 - v) / 2.0 * plot_h

    d.text((left, 10), "Per-kind SRCC vs -severity (pristine + global levels, pooled over photos)", fill="black",
           font=font)
    for t in (-1.0, -0.5, 0.0, 0.5, 1.0):
        y = y_of(t)
        d.line([(left, y), (width - right, y)], fill=(0, 0, 0) if t == 0 else (225, 225, 225), width=1)
        d.text((left - 8, y), f"{t:+.1f}", fill="black", font=small, anchor="rm")
    d.line([(left, top), (left, top + plot_h)], fill="black")
    bar_w = (group_w - 16) / max(1, len(methods))
    for i, k in enumerate(kinds):
        x0 = left + i * group_w + 8
        for j in range(len(methods)):
            v = values[i][j]
            if not math.isfinite(v):
                continue
            xa = x0 + j * bar_w
            ya, yb = sorted((y_of(0.0), y_of(v)))
            d.rectangle([xa, ya, xa + bar_w - 1, max(yb, ya + 1)], fill=_COLOURS[j % len(_COLOURS)])
        label = Image.new("RGB", (bottom - 10, 18), "white")
        ImageDraw.Draw(label).text((bottom - 12, 9), k, fill="black", font=small, anchor="rm")
        label = label.rotate(50, resample=Image.Resampling.BICUBIC, expand=True, fillcolor="white")
        img.paste(label, (int(x0 + group_w / 2 - label.width + 8), int(top + plot_h + 4)))
    lx = left
    for j, m in enumerate(methods):
        d.rectangle([lx, 36, lx + 12, 48], fill=_COLOURS[j % len(_COLOURS)])
        d.text((lx + 16, 42), m, fill="black", font=small, anchor="lm")
        lx += 24 + int(d.textlength(m, font=small))
    img.save(path)


def _environment() -> dict:
    env = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    try:
        env["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    for mod in ("numpy", "scipy", "onnxruntime", "PIL", "llama_cpp"):
        try:
            env[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    return env


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def open_run(args: argparse.Namespace, label: str, what: str) -> tuple | None:
    """Everything a held-out-photo benchmark scores with: (critics, skipped backends, model info, baselines
    prepared, pristine root, photos of the split); None, said on stderr, when no critic loads."""
    from export.data import pristine_dir, pristine_photos
    from qds_lite.errors import QdsError

    from .baselines import available_baselines

    names = [b.strip() for b in args.backends.split(",") if b.strip()]
    try:
        critics, skipped, model_info = _load_critics(args.model, names, args.threads, args.zooms)
    except QdsError as e:
        print(f"{label}: {e.message} (the trained critic may not be there yet: try --model build/tmpmodel)",
              file=sys.stderr)
        return None
    if not critics:
        print(f"{label}: no critic backend could be loaded", file=sys.stderr)
        return None
    baselines = [] if args.no_baselines else available_baselines()
    root = pristine_dir()
    photos = pick_photos(pristine_photos(args.split, root), args.photos)
    print(f"{label}: model {model_info['name']} ({model_info['root']}), backends {', '.join(critics)}, "
          f"baselines {', '.join(b.name for b in baselines) or 'none'}, {len(photos)} {args.split}-split photos, "
          f"{what}", file=sys.stderr)
    for b in baselines:
        if b.prepare is not None:  # one-time setup (the MobileNetV2+ridge fit), kept out of the timings
            b.prepare()
    return critics, skipped, model_info, baselines, root, photos


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from export import synth
    from qds_lite.protocol import GRID

    started = _dt.datetime.now(_dt.timezone.utc)
    levels = parse_levels(args.levels)
    kinds = list(synth.KINDS)
    setup = open_run(args, "accuracy", f"levels {levels}")
    if setup is None:
        return 2
    critics, skipped, model_info, baselines, root, photos = setup
    methods = list(critics) + [b.name for b in baselines]

    records, photo_info, seconds = score_all(photos, root, critics, baselines, kinds, levels, args.seed, GRID,
                                             args.local_per_kind)
    report = compute(records, methods, kinds, GRID)
    finished = _dt.datetime.now(_dt.timezone.utc)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.accuracy" + ("" if not argv else " " + shlex.join(argv))
    n_global = sum(r["set"] == "global" for r in records)
    n_local = len(records) - n_global

    header = ["metric"] + methods
    rows = summary_rows(report, methods, seconds)
    kind_header = ["kind (SRCC)"] + methods
    kind_rows = per_kind_rows(report, methods, kinds, "srcc")
    lkind_rows = per_kind_rows(report, methods, kinds, "l_srcc")
    crit = [m for m in methods if m.startswith(CRITIC_PREFIX)]
    loc_cols = {"type_top1": "type top-1", "iou_hit": f"IoU>={IOU_HIT}", "mean_iou": "mean IoU",
                "global_named": f"whole image, sev>={D_TEST_MIN_SEVERITY}: named"}
    loc_header = ["kind"] + [f"{m} {col}" for m in crit[:1] for col in loc_cols.values()]
    loc_rows = [[k] + [_fmt(report["methods"][m]["localisation_per_kind"][k][key])
                       for m in crit[:1] for key in loc_cols] for k in kinds]
    gaps = gap_rows(report["backend_gap"])

    plot_methods = crit[:1] + [b.name for b in baselines]
    plot_engine = plot_per_kind(out / "accuracy_per_kind.png", report, plot_methods, kinds)

    print(text_table(header, rows))
    print()
    print(text_table(kind_header, kind_rows))
    if gaps:
        print()
        print(text_table(GAP_HEADER, gaps))
    print()

    placeholder = model_info["name"] != "qds-small-v1"
    md = [
        "<!-- produced by benchmarks/accuracy.py; do not edit by hand -->",
        ("Held-out synthetic test" if args.split == "test" else "Development-split check (for choosing settings, "
         "not an accuracy figure)") + f" (Waterloo Exploration style) on {len(photos)} {args.split}-split photos "
        f"(long side {LONG_SIDE} px): {n_global} globally degraded images ({len(kinds)} kinds x levels "
        f"{', '.join(f'{v:g}' for v in levels)} + pristine) and {n_local} locally degraded ones "
        f"(severity {LOCAL_SEVERITY}, 1x1..2x2 grid cells). Critic `{model_info['name']}` "
        f"(sha256 {model_info['sha256'][:12]}); quality is higher-is-better for every method.",
        "",
        "```",
        command,
        "```",
        "",
    ]
    if placeholder:
        md += [f"**Note: model `{model_info['name']}` is not the shipped critic; these numbers are not results.**", ""]
    md += [md_table(header, rows), "", "Per-kind SRCC (pristine + that kind's levels, pooled over photos):", "",
           md_table(kind_header, kind_rows), "",
           "Per-kind L-test (mean over photos of the within-photo SRCC):", "",
           md_table(["kind (L-test SRCC)"] + methods, lkind_rows), ""]
    if crit:
        md += [f"Findings per kind ({crit[0]}): on the local set, and on the whole-image damage of the global set:",
               "", md_table(loc_header, loc_rows), ""]
        levels_seen = list(report["methods"][crit[0]]["score_by_severity"])
        md += ["Scale on unseen photos: mean score of the globally degraded images by severity, against the "
               "score the critic is trained to give one whole-image defect of that severity, 100 (1 - s):", "",
               md_table(["severity", "trained for"] + crit,
                        [[f"{s:g}", f"{100 * (1 - s):.0f}"]
                         + [f"{report['methods'][m]['score_by_severity'][s]:.1f}" for m in crit]
                         for s in levels_seen]), ""]
        md += [f"Against the trained-for score of every image (global and local sets; `trained_for`): "
               f"{m} is {report['methods'][m]['scale']['mae']:.1f} points off on average and names the same "
               f"level for {report['methods'][m]['scale']['level_match']:.0%} of them; pristine photos by level: "
               + ", ".join(f"{k} {n}" for k, n in report["methods"][m]["scale"]["pristine_levels"].items()) + "."
               for m in crit] + [""]
        md += [f"XMP ratings `qds triage` would write with its defaults ({m}): pristine photos "
               + ", ".join(f"{'rejected' if k == '-1' else '★' + k} {n}"
                           for k, n in report["methods"][m]["scale"]["pristine_stars"].items())
               + "; rejected, by severity: "
               + ", ".join(f"{sev} {n} of {total}"
                           for sev, (n, total) in report["methods"][m]["scale"]["rejected_by_severity"].items()) + "."
               for m in crit] + [""]
    if gaps:
        md += ["Quantized backends against the fp32 numpy reference (same images):", "",
               md_table(list(GAP_HEADER), gaps), ""]
    md += [f"_{finished.strftime('%Y-%m-%d %H:%M UTC')}, {platform.platform()}, {os.cpu_count()} CPUs; "
           f"wall time {(finished - started).total_seconds() / 60:.1f} min._", ""]

    doc = {
        "command": command, "argv": [sys.executable, "-m", "benchmarks.accuracy", *argv],
        "started": started.isoformat(), "finished": finished.isoformat(),
        "duration_s": (finished - started).total_seconds(),
        "model": model_info, "backends": [m[len(CRITIC_PREFIX):] for m in critics], "skipped_backends": skipped,
        "baselines": [b.name for b in baselines], "methods": methods,
        "settings": {"levels": list(levels), "kinds": kinds, "long_side": LONG_SIDE, "local_severity": LOCAL_SEVERITY,
                     "local_per_kind": args.local_per_kind,
                     "seed": args.seed, "grid": GRID, "d_test_min_severity": D_TEST_MIN_SEVERITY,
                     "split": args.split, "p_test_min_gap": P_TEST_MIN_GAP, "iou_hit": IOU_HIT,
                     "threads": args.threads, "zooms": args.zooms},
        "n_images": {"global": n_global, "local": n_local, "total": len(records), "photos": len(photos)},
        "photos": photo_info, "seconds_per_image": seconds,
        "results": report["methods"], "backend_gap": report["backend_gap"],
        "plot": {"file": "accuracy_per_kind.png", "engine": plot_engine, "methods": plot_methods},
        "environment": _environment(), "records": records,
    }
    write_report(out, "accuracy", md, doc)
    return 0


def write_report(out: Path, stem: str, md: Sequence[str], doc: dict) -> None:
    """``stem.md`` (the markdown lines) and ``stem.json`` (``doc``, NaN as null) in ``out``, beside the plot."""
    (out / f"{stem}.md").write_text("\n".join(md))
    (out / f"{stem}.json").write_text(json.dumps(_jsonable(doc), indent=1) + "\n")
    print(f"wrote {out / f'{stem}.json'}, {out / f'{stem}.md'}, {out / f'{stem}_per_kind.png'}", file=sys.stderr)


def benchmark_parser(name: str, doc: str, default_out: Path) -> argparse.ArgumentParser:
    """The options every held-out-photo benchmark shares (critic, photos, output, threads, baselines)."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="bundled critic name or folder (default: the bundled qds-small-v1)")
    p.add_argument("--split", choices=("test", "dev"), default="test",
                   help="pristine photos to degrade: test (reported figures) or dev (choosing settings; "
                   "never report it as accuracy) (default: %(default)s)")
    p.add_argument("--photos", type=int, default=None,
                   help="number of photos of the split, spread evenly (default: all)")
    p.add_argument("--out", default=str(default_out), help="output folder (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="threads per critic backend (default: the backend's)")
    p.add_argument("--no-baselines", action="store_true", help="score with the critic only (quick checks)")
    p.add_argument("--zooms", type=int, choices=range(17), default=None, metavar="N",  # 16: protocol.N_CELLS
                   help="the critic's zoom budget, 0 to 16; 0: the glance alone, as `qds triage --zooms 0` scores "
                   "(default: the critic's, 3)")
    return p


def _parser() -> argparse.ArgumentParser:
    p = benchmark_parser("accuracy", __doc__, DEFAULT_OUT)
    p.add_argument("--backends", default="onnx,numpy,gguf",
                   help="comma-separated critic backends (onnx, gguf, numpy) and variants built from the same weights "
                   "(torch: the fp32 reference, onnx-int8, onnx-int8-reasoner, gguf-q4_0; benchmarks/variants.py); "
                   "ones that cannot load are skipped (default: %(default)s)")
    p.add_argument("--levels", default=str(len(DEFAULT_LEVELS)),
                   help="N evenly spaced severity levels k/(N+1), or a comma list such as 0.3,0.7 "
                   "(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the degradations and regions (default: %(default)s)")
    p.add_argument("--local-per-kind", type=int, default=1, metavar="N",
                   help="locally degraded images per kind and photo, each in its own random region: more make "
                   "the finding figures steadier (default: %(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        parse_levels(args.levels)
    except ValueError as e:
        _parser().error(str(e))
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
