"""Fit the edit gate of `qds refine` (:mod:`qds_lite.refine_gate`) on synthetic degradations of held-in photos.
The shipped gate: every train photo, from train-0, train-1 and train8-K for K = 1, 2, 5
(build/refine-gate/s21/) and train8-K for K = 0, 3, 4, 6, 7 (build/refine-gate/s22/); dev rows from
build/refine-gate/s22/dev.json. The s22 collections and dev rows were made after local exposure fixes were
bounded by the rest of the photo, the s21 ones before (read first, their items win where photos overlap).

    python -m export.refine_gate collect --split train --photos 60 --shard 0/2 --out build/refine-gate/train-0.json
    python -m export.refine_gate collect --split train --photos 60 --shard 1/2 --out build/refine-gate/train-1.json
    python -m export.refine_gate collect --split train --photos 193 --shard K/8 --out build/refine-gate/train8-K.json
    python -m export.refine_gate collect --split dev --photos 26 --out build/refine-gate/dev.json
    python -m export.refine_gate fit --train build/refine-gate/train*.json --dev build/refine-gate/dev*.json \\
        [--threshold 0.5] [--trees 150 --depth 5 ...] [--out qds_lite/data/refine_gate.json]

``collect --kinds none --clean-views mirrored,cropped,larger`` collects the clean inputs alone, as the refine
benchmark makes them (``benchmarks.refine.clean_view``); rows of them did not make a gate that spares clean
photos (``docs/refine-experiments.md``, session 24), so the shipped gate has none.

``collect`` builds, per photo, the refine benchmark's items (the pristine photo and one degradation of every
kind, global and on a quarter: ``benchmarks.refine.items_for``, with its own seed), lets the shipped critic
find their faults, and applies *every* candidate edit of every finding refine would try first (scored as
refine scores it: a local edit with the critic looking at its region), recording what the gate reads of
each (:func:`qds_lite.refine_gate.edit_features`) and whether the edit raised SSIM against the pristine photo
(the label); collections over overlapping photo lists are read with each item
once. ``fit`` fits the gate's trees on the train rows (scikit-learn, the ``train`` extra) and reports, on the
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
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from qds_lite.refine_gate import EditGate

COLLECT_SEED = 7  # degradations differ from the refine benchmark's (seed 0) even on the same photo
# The trees (chosen on the dev rows: log-loss and what refine's first step does; README, "Refine")
TREES, DEPTH, LEARNING_RATE, MIN_LEAF, SUBSAMPLE = 150, 5, 0.05, 40, 0.8


def collect(split: str, photos: int, shard: tuple[int, int], out: Path, model: str | None = None,
            kinds: Sequence[str] | None = None, clean_views: Sequence[str] = ()) -> None:
    """Write one JSON list of items, each with its findings' candidate edits (features, score, SSIM gain):
    per photo the pristine item, its ``clean_views`` and the degradations of ``kinds`` (None: every kind)."""
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
    kinds = list(synth.KINDS) if kinds is None else list(kinds)
    for base, it, img in degraded_items(chosen, root, kinds, COLLECT_SEED, label=f"collect {split}",
                                        clean_views=clean_views):
        before, s0 = critic.score(img), ssim(base, img)
        findings = []
        for f, plan, region in R.fixes(before, img):
            candidates = R.candidate_edits(f, plan, img, region)
            tried = R.try_candidates(critic, img, before, f, region, candidates)[2] if candidates else []
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

    gains: dict[str, list[float]] = {"degraded": [], "pristine": []}
    for r in records:
        d = 0.0
        for cands in r["findings"]:
            pick = choose([c for c in cands if c["features"]["gain"] >= margin])
            if pick is not None:
                d = pick["dssim"]
                break
        gains["pristine" if r["kind"] is None else "degraded"].append(d)
    g, p = np.array(gains["degraded"] or [0.0]), np.array(gains["pristine"] or [0.0])
    return {"improved": float((g > IMPROVED).mean()), "worse": float((g < -IMPROVED).mean()),
            "mean_dssim": float(g.mean()), "pristine_max_drop": float(max(0.0, -p.min()))}


def load_records(paths: Sequence[Path]) -> list[dict]:
    """The items of collected files, each (photo, kind, set) once: collections over overlapping photo lists
    made the same items with the same seed."""
    seen, out = set(), []
    for path in paths:
        for r in json.loads(path.read_text()):
            key = (r["photo"], r["kind"], r["set"])
            if key not in seen:
                seen.add(key)
                out.append(r)
    return out


def fit(rows: Sequence[dict], labels: Sequence[bool], *, trees: int = TREES, depth: int = DEPTH,
        learning_rate: float = LEARNING_RATE, min_leaf: int = MIN_LEAF, subsample: float = SUBSAMPLE,
        threshold: float = 0.5, info: dict | None = None) -> EditGate:
    """Gradient-boosted trees (scikit-learn's, log-loss) over :data:`qds_lite.refine_gate.FEATURES`, turned into
    the runtime's :class:`~qds_lite.refine_gate.EditGate` (each leaf value times the learning rate; the
    ensemble's starting log-odds as the bias). Seeded: the same rows give the same gate."""
    from sklearn.ensemble import GradientBoostingClassifier

    from qds_lite.refine_gate import FEATURES, EditGate

    x = np.array([[r[n] for n in FEATURES] for r in rows], np.float64)
    model = GradientBoostingClassifier(n_estimators=trees, max_depth=depth, learning_rate=learning_rate,
                                       min_samples_leaf=min_leaf, subsample=subsample, random_state=0)
    model.fit(x, np.asarray(labels, bool))
    nodes = []
    for (tree,) in model.estimators_:
        t = tree.tree_
        leaf = t.children_left < 0
        nodes.append({"feature": np.where(leaf, -1, t.feature).tolist(),
                      "split": np.where(leaf, 0.0, t.threshold).tolist(),
                      "left": np.where(leaf, 0, t.children_left).tolist(),
                      "right": np.where(leaf, 0, t.children_right).tolist(),
                      "value": np.where(leaf, learning_rate * t.value[:, 0, 0], 0.0).tolist()})
    summed = sum(learning_rate * tree.predict(x) for (tree,) in model.estimators_)
    bias = float(np.mean(model.decision_function(x) - summed))  # the same for every row: the prior's log-odds
    return EditGate.from_trees(FEATURES, nodes, bias, threshold, info)


def fit_gate(train: Sequence[Path], dev: Sequence[Path], threshold: float, out: Path, command: str,
             **params) -> dict:
    """Fit on the ``train`` rows (``params``: :func:`fit`'s tree settings); report on the ``dev`` rows."""
    from qds_lite.refine import SCORE_MARGIN
    from qds_lite.refine_gate import GATE_PATH

    train_records = load_records(train)
    dev_records = load_records(dev)
    x, y = _rows(train_records)
    gate = fit(x, y, threshold=threshold, **params)
    xd, yd = _rows(dev_records)
    p = np.clip([gate.probability(f) for f in xd], 1e-6, 1 - 1e-6)
    yd = np.asarray(yd, float)
    held_out = {"rows": len(yd), "log_loss": float(-np.mean(yd * np.log(p) + (1 - yd) * np.log(1 - p))),
                "accuracy": float(np.mean((p >= threshold) == (yd > 0))), "base_rate": float(yd.mean())}

    def by_score(cands):
        return max(cands, key=lambda c: c["score"]) if cands else None

    p_of = {id(c): gate.probability(c["features"]) for r in dev_records for f in r["findings"] for c in f}

    def by_gate(t):
        def choose(cands):
            best = max(cands, key=lambda c: p_of[id(c)], default=None)
            return best if best is not None and p_of[id(best)] >= t else None
        return choose

    sweep = {"best score (no gate)": first_step(dev_records, by_score, SCORE_MARGIN)}
    for t in (0.5, 0.6, 0.7, 0.8):
        sweep[f"gate >= {t:g}"] = first_step(dev_records, by_gate(t), SCORE_MARGIN)
    info = {"command": command, "train_rows": len(y), "train_photos": len({r["photo"] for r in train_records}),
            "dev_photos": len({r["photo"] for r in dev_records}), "dev": held_out, "dev_first_step": sweep,
            "trees": params}
    gate = dataclasses.replace(gate, info=info)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(gate.to_json(), separators=(",", ":")) + "\n")
    if out.resolve() == GATE_PATH.resolve():  # the shipped gate: record its new sha256 for the runtime's check
        record_sha256(out)
    return info


def record_sha256(path: Path) -> None:
    """Write ``path``'s sha256 into the ``manifest.json`` beside it (qds_lite.model_store.check_package_data)."""
    from qds_lite.model_store import sha256_file

    manifest = path.parent / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["files"][path.name] = sha256_file(path)
    manifest.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    from benchmarks.refine import CLEAN_VIEWS, names_arg
    from export import synth

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m export.refine_gate", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect", help="score every first-step candidate edit on synthetic degradations")
    c.add_argument("--split", default="train", choices=("train", "dev"))
    c.add_argument("--photos", type=int, default=60)
    c.add_argument("--shard", default="0/1", help="K/N: this process takes every N-th photo from the K-th")
    c.add_argument("--model", default=None)
    c.add_argument("--kinds", type=names_arg(synth.KINDS), default=list(synth.KINDS),
                   help="comma-separated synth kinds (default: all; 'none': clean items only)")
    c.add_argument("--clean-views", type=names_arg(CLEAN_VIEWS), default=[],
                   help=f"clean views of each photo as items too, comma-separated ({', '.join(CLEAN_VIEWS)}; "
                        "default none)")
    c.add_argument("--out", type=Path, required=True)
    f = sub.add_parser("fit", help="fit the gate on collected train rows, report it on dev rows")
    f.add_argument("--train", type=Path, nargs="+", required=True)
    f.add_argument("--dev", type=Path, nargs="+", required=True)
    f.add_argument("--threshold", type=float, default=0.5, help="least P(better) at which refine keeps an edit")
    f.add_argument("--trees", type=int, default=TREES)
    f.add_argument("--depth", type=int, default=DEPTH)
    f.add_argument("--learning-rate", type=float, default=LEARNING_RATE)
    f.add_argument("--min-leaf", type=int, default=MIN_LEAF, help="least training edits in a leaf")
    f.add_argument("--subsample", type=float, default=SUBSAMPLE, help="share of rows each tree is fit on")
    f.add_argument("--out", type=Path, default=Path("qds_lite") / "data" / "refine_gate.json")
    args = p.parse_args(argv)
    if args.cmd == "collect":
        k, n = (int(v) for v in args.shard.split("/"))
        collect(args.split, args.photos, (k, n), args.out, args.model, args.kinds, args.clean_views)
        return 0
    info = fit_gate(args.train, args.dev, args.threshold, args.out, "python -m export.refine_gate " + " ".join(argv),
                    trees=args.trees, depth=args.depth, learning_rate=args.learning_rate, min_leaf=args.min_leaf,
                    subsample=args.subsample)
    print(json.dumps(info, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
