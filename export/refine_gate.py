"""Fit the edit gate of `qds refine` (:mod:`qds_lite.refine_gate`) on synthetic degradations of held-in photos.

    python -m export.refine_gate collect --split train --photos 60 --shard 0/2 --out build/refine-gate/train-0.json
    python -m export.refine_gate collect --split train --photos 60 --shard 1/2 --out build/refine-gate/train-1.json
    python -m export.refine_gate collect --split dev --photos 26 --out build/refine-gate/dev.json
    python -m export.refine_gate fit --train build/refine-gate/train-*.json --dev build/refine-gate/dev.json \\
        [--threshold 0.5] [--l2 1] [--cross FEATURE ...] [--out qds_lite/data/refine_gate.json]

``collect`` builds, per photo, the refine benchmark's items (the pristine photo and one degradation of every
kind, global and on a quarter: ``benchmarks.refine.items_for``, with its own seed), lets the shipped critic
find their faults, and applies *every* candidate edit of every finding refine would try first, recording
what the gate reads of each (:func:`qds_lite.refine_gate.edit_features`) and whether the edit raised SSIM
against the pristine photo (the label). ``fit`` fits the logistic gate on the train rows and reports, on the
dev rows (photos it never saw), its log-loss and accuracy at its threshold, and what refine's first step
would do to dev images under the gate at each threshold next to the rule it replaces (keep the
best-scoring edit). The rows come from first steps at the benchmark's 768 px; refine applies the gate at
every step and at any size.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

COLLECT_SEED = 7  # degradations differ from the refine benchmark's (seed 0) even on the same photo


def collect(split: str, photos: int, shard: tuple[int, int], out: Path, model: str | None = None) -> None:
    """Write one JSON list of items, each with its findings' candidate edits (features, score, SSIM gain)."""
    from benchmarks.accuracy import pick_photos
    from benchmarks.refine import degraded_items, ssim
    from export import synth
    from export.data import pristine_dir, pristine_photos
    from qds_lite import load
    from qds_lite import refine as R

    root = pristine_dir()
    chosen = pick_photos(pristine_photos(split, root), photos)[shard[0]::shard[1]]
    critic = load(model, backend="onnx")
    records = []
    for base, it, img in degraded_items(chosen, root, list(synth.KINDS), COLLECT_SEED, label=f"collect {split}"):
        before, s0 = critic.score(img), ssim(base, img)
        findings = []
        for f, plan, region in R.fixes(before, img):
            tried = R.try_candidates(critic, img, before, f, region, R.candidate_edits(f, plan, img, region))
            findings.append([{"op": t.op, "score": t.result.score, "features": t.features,
                              "dssim": ssim(base, t.edited) - s0} for t in tried])
        records.append({"photo": it["photo"], "kind": it["kind"], "set": it["set"], "score": before.score,
                        "findings": findings})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records) + "\n")


def _rows(records: Sequence[dict]) -> tuple[list[dict], list[bool]]:
    from benchmarks.refine import IMPROVED

    rows = [c for r in records for f in r["findings"] for c in f]
    return [c["features"] for c in rows], [c["dssim"] > IMPROVED for c in rows]


def first_step(records: Sequence[dict], choose: Callable[[list[dict]], dict | None], margin: float) -> dict:
    """What refine's first step does to each item when ``choose(candidates)`` picks the edit to keep (or None)
    among those of a finding that raise the score by ``margin``: shares of degraded items closer to / further
    from the original, and the largest SSIM drop on a pristine one. NIQE's guard is left out."""
    from benchmarks.refine import IMPROVED

    gains = {"degraded": [], "pristine": []}
    for r in records:
        d = 0.0
        for cands in r["findings"]:
            pick = choose([c for c in cands if c["score"] >= r["score"] + margin])
            if pick is not None:
                d = pick["dssim"]
                break
        gains["pristine" if r["kind"] is None else "degraded"].append(d)
    g, p = np.array(gains["degraded"] or [0.0]), np.array(gains["pristine"] or [0.0])
    return {"improved": float((g > IMPROVED).mean()), "worse": float((g < -IMPROVED).mean()),
            "pristine_max_drop": float(max(0.0, -p.min()))}


def fit_gate(train: Sequence[Path], dev: Path, threshold: float, l2: float, cross: Sequence[str], out: Path,
             command: str) -> dict:
    """Fit on ``train`` rows with each feature in ``cross`` also crossed with every operation; report on ``dev``."""
    from qds_lite.refine import SCORE_MARGIN
    from qds_lite.refine_gate import FEATURES, OPS, fit

    train_records = [r for f in train for r in json.loads(f.read_text())]
    dev_records = json.loads(dev.read_text())
    x, y = _rows(train_records)
    names = [*FEATURES, *(f"{c}*op={o}" for c in cross for o in OPS)]
    gate = fit(x, y, names=names, l2=l2, threshold=threshold)
    xd, yd = _rows(dev_records)
    p = np.clip([gate.probability(f) for f in xd], 1e-6, 1 - 1e-6)
    yd = np.asarray(yd, float)
    held_out = {"rows": len(yd), "log_loss": float(-np.mean(yd * np.log(p) + (1 - yd) * np.log(1 - p))),
                "accuracy": float(np.mean((p >= threshold) == (yd > 0))), "base_rate": float(yd.mean())}

    def by_score(cands):
        return max(cands, key=lambda c: c["score"]) if cands else None

    def by_gate(t):
        def choose(cands):
            if not cands:
                return None
            best = max(cands, key=lambda c: gate.probability(c["features"]))
            return best if gate.probability(best["features"]) >= t else None
        return choose

    sweep = {"best score (no gate)": first_step(dev_records, by_score, SCORE_MARGIN)}
    for t in (0.3, 0.4, 0.5, 0.6, 0.7):
        sweep[f"gate >= {t:g}"] = first_step(dev_records, by_gate(t), SCORE_MARGIN)
    info = {"command": command, "train_rows": len(y), "train_photos": len({r["photo"] for r in train_records}),
            "dev_photos": len({r["photo"] for r in dev_records}), "dev": held_out, "dev_first_step": sweep}
    gate = dataclasses.replace(gate, info=info)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(gate.to_json(), indent=1) + "\n")
    return info


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m export.refine_gate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="score every first-step candidate edit on synthetic degradations")
    c.add_argument("--split", default="train", choices=("train", "dev"))
    c.add_argument("--photos", type=int, default=60)
    c.add_argument("--shard", default="0/1", help="K/N: this process takes every N-th photo from the K-th")
    c.add_argument("--model", default=None)
    c.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("fit", help="fit the gate on collected train rows, report it on dev rows")
    f.add_argument("--train", type=Path, nargs="+", required=True)
    f.add_argument("--dev", type=Path, required=True)
    f.add_argument("--threshold", type=float, default=0.5)
    f.add_argument("--l2", type=float, default=1.0)
    f.add_argument("--cross", nargs="*", default=[],
                   help="features also crossed with every operation (what a score gain means depends on the edit)")
    f.add_argument("--out", type=Path, default=Path("qds_lite") / "data" / "refine_gate.json")
    args = p.parse_args(argv)
    if args.cmd == "collect":
        k, n = (int(v) for v in args.shard.split("/"))
        collect(args.split, args.photos, (k, n), args.out, args.model)
        return 0
    info = fit_gate(args.train, args.dev, args.threshold, args.l2, args.cross, args.out,
                    "python -m export.refine_gate " + " ".join(argv))
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
